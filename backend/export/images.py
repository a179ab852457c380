"""The image file of an exported sample: the task's own bytes when they show as the browser shows them."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from backend.core.settings import Settings
from backend.io.images import TaskImage

COPIED_FORMATS = {"JPEG": ".jpg", "PNG": ".png"}
ORIENTATION = 0x0112


@dataclass
class ExportImage:
    data: bytes
    suffix: str
    pixels: np.ndarray  # HxWx3, as the browser shows the image (what the masks were drawn on)

    @property
    def size(self) -> tuple[int, int]:
        return int(self.pixels.shape[0]), int(self.pixels.shape[1])

    def write(self, folder: Path, stem: str) -> str:
        """Write the file into `folder`; its name."""
        folder.mkdir(parents=True, exist_ok=True)
        name = stem + self.suffix
        (folder / name).write_bytes(self.data)
        return name


def export_image(image: TaskImage, settings: Settings) -> ExportImage:
    """JPEG and PNG files without an EXIF rotation are copied byte for byte; anything else (another format,
    a rotated JPEG) is written as the PNG of its pixels as shown, so that masks and image line up in any
    training framework, whether or not it applies EXIF orientation."""
    pixels = image.pixels(settings)
    with Image.open(io.BytesIO(image.data)) as opened:
        kind = opened.format
        rotated = opened.getexif().get(ORIENTATION, 1) not in (1, None)
    if kind in COPIED_FORMATS and not rotated:
        return ExportImage(image.data, COPIED_FORMATS[kind], pixels)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return ExportImage(buffer.getvalue(), ".png", pixels)
