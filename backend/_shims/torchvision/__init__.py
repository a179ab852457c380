"""Minimal stand-in for torchvision: only what segment_anything and mobile_sam import."""

__version__ = "0.0.0+backend-shim"
