"""PNG masks: per image masks/<split>/<stem>_instances.png (16-bit instance ids, 0 background) and
<stem>_classes.png (8-bit class ids 1..N, 0 background), images/<split>/, and classes.json.

Where instances overlap, the later region of the task wins (Label Studio draws later regions on top)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from backend.export.images import ExportImage
from backend.export.samples import Instance


class PngMaskWriter:
    name = "masks"

    def __init__(self, root: Path, classes: list[str]):
        if len(classes) > 255:
            raise ValueError(f"{len(classes)} classes do not fit an 8-bit class mask")
        self.root = root
        self.classes = classes
        self.index = {name: i for i, name in enumerate(classes, start=1)}

    def add(self, split: str, image_id: int, image: ExportImage, instances: list[Instance]) -> None:
        image.write(self.root / "images" / split, str(image_id))
        height, width = image.size
        instance_ids = np.zeros((height, width), np.uint16)
        class_ids = np.zeros((height, width), np.uint8)
        for number, instance in enumerate(instances, start=1):
            instance_ids[instance.mask] = number
            class_ids[instance.mask] = self.index[instance.label]
        folder = self.root / "masks" / split
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(instance_ids).save(folder / f"{image_id}_instances.png")
        Image.fromarray(class_ids).save(folder / f"{image_id}_classes.png")

    def finish(self, destination: Path) -> None:
        classes = {"0": "background", **{str(i): name for name, i in self.index.items()}}
        (self.root / "classes.json").write_text(json.dumps(classes, indent=2, ensure_ascii=False))
