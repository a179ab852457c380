"""FX feature extraction names timm imports lazily; using one says torchvision is missing."""

from .._absent import absent


def __getattr__(name: str):
    return absent(__name__, name)
