"""Ultralytics YOLO segmentation: images/<split>/, labels/<split>/<stem>.txt, data.yaml.

Each line is `class x1 y1 x2 y2 ...` with coordinates normalised to 0..1. A polygon region is written as drawn;
a brush region as the outer outline of each connected part (a mask in two parts gives two lines of its class;
holes are filled, as YOLO polygons have none), through the edge pixels' centres, unsimplified, so that a
loader that fills the polygon (Ultralytics' polygon2mask, supervision) gets the mask's pixels back.

data.yaml names the export folder's absolute path (Ultralytics resolves a relative `path` against its own
datasets folder, not against the file), a split without images is left out; with no validation images, `val`
names the training images (Ultralytics needs a `val` entry).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from backend.export.images import ExportImage
from backend.export.samples import SPLITS, Instance
from backend.segmentation.masks import centre_outlines


class YoloWriter:
    name = "yolo"

    def __init__(self, root: Path, classes: list[str]):
        self.root = root
        self.classes = classes
        self.index = {name: i for i, name in enumerate(classes)}
        self.images = dict.fromkeys(SPLITS, 0)

    def add(self, split: str, image_id: int, image: ExportImage, instances: list[Instance]) -> None:
        image.write(self.root / "images" / split, str(image_id))
        self.images[split] += 1
        height, width = image.size
        lines = []
        for instance in instances:
            parts = [instance.polygon] if instance.polygon is not None else centre_outlines(instance.mask)
            for part in parts:
                normalised = np.clip(np.asarray(part, np.float64) / (width, height), 0.0, 1.0)
                lines.append(f"{self.index[instance.label]} " + " ".join(f"{v:.6f}" for v in normalised.reshape(-1)))
        folder = self.root / "labels" / split
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{image_id}.txt").write_text("".join(line + "\n" for line in lines))

    def finish(self, destination: Path) -> None:
        splits = {split: f"images/{split}" for split in SPLITS if self.images[split]}
        splits.setdefault("train", "images/train")
        splits.setdefault("val", splits["train"])
        for folder in set(splits.values()):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        data = {"path": str(destination), **splits, "names": dict(enumerate(self.classes))}
        (self.root / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
