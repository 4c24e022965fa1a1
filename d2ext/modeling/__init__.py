"""Backbones, meta-architectures and heads; importing this registers them all."""
from . import backbone, heads, meta_arch, weight_import  # noqa: F401
