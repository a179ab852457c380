"""Minimal stand-in for timm: only what MobileSAM's TinyViT imports."""

__version__ = "0.0.0+backend-shim"
