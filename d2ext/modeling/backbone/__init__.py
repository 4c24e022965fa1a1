"""d2ext backbone modules; each registers itself on import."""
