"""COCO instance segmentation: annotations/instances_<split>.json, images/<split>/.

Brush regions become COCO RLE (pycocotools' compressed counts, exact), polygon regions COCO polygons in
pixels as drawn; bbox and area are pycocotools' own of that segmentation (what a COCO loader decodes);
categories are the labeling config's labels in order (ids 1..N).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pycocotools import mask as coco_mask

from backend.export.images import ExportImage
from backend.export.samples import SPLITS, Instance


class CocoWriter:
    name = "coco"

    def __init__(self, root: Path, classes: list[str]):
        self.root = root
        self.category = {name: index for index, name in enumerate(classes, start=1)}
        self.categories = [{"id": i, "name": name, "supercategory": ""} for name, i in self.category.items()]
        self.images: dict[str, list[dict]] = {split: [] for split in SPLITS}
        self.annotations: dict[str, list[dict]] = {split: [] for split in SPLITS}
        self.next_id = 1

    def add(self, split: str, image_id: int, image: ExportImage, instances: list[Instance]) -> None:
        height, width = image.size
        name = image.write(self.root / "images" / split, str(image_id))
        self.images[split].append({"id": image_id, "file_name": name, "width": width, "height": height})
        for instance in instances:
            shape = segmentation(instance)
            rle = coco_mask.merge(coco_mask.frPyObjects(shape, height, width)) if isinstance(shape, list) else {
                "size": shape["size"], "counts": shape["counts"].encode("ascii")}
            self.annotations[split].append({
                "id": self.next_id, "image_id": image_id, "category_id": self.category[instance.label],
                "segmentation": shape, "area": int(coco_mask.area(rle)),
                "bbox": [round(float(v), 2) for v in coco_mask.toBbox(rle)], "iscrowd": 0})
            self.next_id += 1

    def finish(self, destination: Path) -> None:
        folder = self.root / "annotations"
        folder.mkdir(parents=True, exist_ok=True)
        for split in SPLITS:
            document = {"info": {"description": "Label Studio export (sam-label-studio-backend)"},
                        "images": self.images[split], "annotations": self.annotations[split],
                        "categories": self.categories}
            (folder / f"instances_{split}.json").write_text(json.dumps(document))


def segmentation(instance: Instance) -> dict | list[list[float]]:
    """COCO polygons ([x1, y1, x2, y2, ...] in pixels) for a polygon region, compressed RLE for a brush one."""
    if instance.polygon is not None:
        return [[round(float(v), 2) for v in instance.polygon.reshape(-1)]]
    rle = coco_mask.encode(np.asfortranarray(instance.mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
