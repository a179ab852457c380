"""Placeholders for the torchvision names timm imports at load time but the backend never calls."""

from __future__ import annotations


def absent(module: str, name: str):
    """A module `__getattr__` result: a class that says what is missing when someone uses it."""
    if name.startswith("__"):
        raise AttributeError(name)

    def refuse(*args, **kwargs):
        raise RuntimeError(f"{module}.{name} is not available: torchvision is not installed and the backend's "
                           "import shim only covers the names timm imports")

    return type(name, (), {"__init__": refuse, "__call__": refuse, "__module__": module})
