"""Transform names timm's data module imports; using one says torchvision is missing."""

from .._absent import absent
from .functional import InterpolationMode

__all__ = ["InterpolationMode"]


def __getattr__(name: str):
    return absent(__name__, name)
