"""d2ext meta_arch modules; each registers itself on import."""
