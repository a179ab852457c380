"""Names timm imports from here (images, feature extraction); using one says torchvision is missing."""

from ._absent import absent


def __getattr__(name: str):
    return absent(__name__, name)
