"""d2ext heads modules; each registers itself on import."""
