"""`resize` and `to_pil_image` as segment_anything's ResizeLongestSide uses them (PIL in, PIL out), and the
`InterpolationMode` names timm imports."""

from __future__ import annotations

import enum

import numpy as np
from PIL import Image

from .._absent import absent


class InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


def __getattr__(name: str):
    return absent(__name__, name)


def to_pil_image(pic: np.ndarray) -> Image.Image:
    """An HxWxC (or HxW) uint8 array as a PIL image."""
    array = np.asarray(pic)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return Image.fromarray(array)


def resize(img: Image.Image, size: tuple[int, int] | list[int], *args, **kwargs) -> Image.Image:
    """Resize a PIL image to (height, width) with bilinear filtering, as torchvision does for PIL."""
    height, width = int(size[0]), int(size[1])
    return img.resize((width, height), Image.BILINEAR)
