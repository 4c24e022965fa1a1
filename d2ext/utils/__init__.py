"""Small shared utilities (visualisation, atomic file writes)."""
