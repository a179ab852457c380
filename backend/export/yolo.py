"""Ultralytics YOLO segmentation: images/<split>/, labels/<split>/<stem>.txt, data.yaml.

Each line is `class x1 y1 x2 y2 ...` with coordinates normalised to 0..1: the outer contour of one
connected part of an instance (a mask in two parts gives two lines of its class; holes are filled, as
YOLO polygons have none). Outlines run along the pixels' outer edges (segmentation/masks.py)."""

from __future__ import annotations

from pathlib import Path

import yaml

from backend.export.images import ExportImage
from backend.export.samples import SPLITS, Instance
from backend.segmentation.masks import mask_to_polygons

OUTLINE_EPSILON = 0.7  # pixels of contour simplification


class YoloWriter:
    name = "yolo"

    def __init__(self, root: Path, classes: list[str]):
        self.root = root
        self.classes = classes
        self.index = {name: i for i, name in enumerate(classes)}

    def add(self, split: str, image_id: int, image: ExportImage, instances: list[Instance]) -> None:
        image.write(self.root / "images" / split, str(image_id))
        lines = []
        for instance in instances:
            for part in mask_to_polygons(instance.mask, OUTLINE_EPSILON):
                coords = " ".join(f"{min(max(v / 100.0, 0.0), 1.0):.6f}" for point in part for v in point)
                lines.append(f"{self.index[instance.label]} {coords}")
        folder = self.root / "labels" / split
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{image_id}.txt").write_text("".join(line + "\n" for line in lines))

    def finish(self) -> None:
        for split in SPLITS:
            (self.root / "images" / split).mkdir(parents=True, exist_ok=True)
        data = {"path": ".", **{split: f"images/{split}" for split in SPLITS},
                "names": dict(enumerate(self.classes))}
        (self.root / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
