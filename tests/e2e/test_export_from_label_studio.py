"""`python -m backend export` against the real Label Studio: COCO, YOLO and PNG masks of brush and polygon
annotations, a synthetic task, a prediction-only task and a broken task."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from label_studio_sdk.converter.brush import mask2rle
from PIL import Image
from pycocotools.coco import COCO

from backend.segmentation.masks import polygon_to_mask
from tests.e2e.conftest import make_project
from tests.helpers import iou
from tests.processes import ROOT

CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="tag" toName="image">
    <Label value="Object" background="#FF2D95"/>
    <Label value="Vehicle" background="#00E5FF"/>
  </BrushLabels>
  <PolygonLabels name="poly" toName="image">
    <Label value="Object" background="#FF2D95"/>
    <Label value="Vehicle" background="#00E5FF"/>
  </PolygonLabels>
</View>"""
SQUARE = [[70.0, 10.0], [90.0, 10.0], [90.0, 35.0], [70.0, 35.0]]  # percent


def brush(mask: np.ndarray, label: str) -> dict:
    return {"from_name": "tag", "to_name": "image", "type": "brushlabels", "original_width": 320,
            "original_height": 240, "value": {"format": "rle", "rle": mask2rle(mask.astype(np.uint8) * 255),
                                              "brushlabels": [label]}}


def polygon(points: list[list[float]], label: str) -> dict:
    return {"from_name": "poly", "to_name": "image", "type": "polygonlabels", "original_width": 320,
            "original_height": 240, "value": {"points": points, "closed": True, "polygonlabels": [label]}}


@pytest.fixture(scope="module")
def labeled(label_studio, tmp_path_factory):
    """Two uploaded images annotated (brush + polygon), a synthetic copy, a task with only a prediction, and a
    task whose image is gone; the source masks by (task id, class)."""
    project, tasks, masks, _ = make_project(label_studio, label_config=CONFIG)
    client = label_studio.client
    square = polygon_to_mask(np.array(SQUARE), 240, 320)
    truth: dict[int, dict[str, np.ndarray]] = {}
    client.annotations.create(id=tasks[0].id, result=[brush(masks[tasks[0].id], "Object"), polygon(SQUARE, "Vehicle")])
    truth[tasks[0].id] = {"Object": masks[tasks[0].id], "Vehicle": square}
    client.annotations.create(id=tasks[1].id, result=[brush(masks[tasks[1].id], "Vehicle")])
    truth[tasks[1].id] = {"Vehicle": masks[tasks[1].id]}
    synthetic = client.tasks.create(project=project.id, data={"image": tasks[1].data["image"],
                                                              "synthetic": {"source_task": tasks[1].id}})
    client.annotations.create(id=synthetic.id, result=[brush(masks[tasks[1].id], "Object")])
    truth[synthetic.id] = {"Object": masks[tasks[1].id]}
    predicted = client.tasks.create(project=project.id, data={"image": tasks[0].data["image"]})
    client.predictions.create(task=predicted.id, result=[brush(masks[tasks[0].id], "Vehicle")], model_version="m1")
    broken = client.tasks.create(project=project.id, data={"image": "/data/upload/999999/gone.png"})
    client.annotations.create(id=broken.id, result=[brush(masks[tasks[0].id], "Object")])
    yield project, truth, {"synthetic": synthetic.id, "predicted": predicted.id, "broken": broken.id}
    client.projects.delete(id=project.id)


def export(label_studio, project_id: int, fmt: str, out: Path, *extra: str) -> tuple[dict, str]:
    env = {**os.environ, "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token,
           "IMAGE_CACHE_DIR": str(out.parent / "image-cache"), "MODEL_DIR": str(out.parent / "models")}
    done = subprocess.run([sys.executable, "-m", "backend", "export", "--project", str(project_id), "--format", fmt,
                           "--out", str(out), "--quiet", *extra], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads((out / "export.json").read_text()), done.stdout


def test_coco_export_decodes_to_the_source_masks_and_reruns_stably(label_studio, labeled, tmp_path):
    project, truth, ids = labeled
    out = tmp_path / "coco"
    summary, printed = export(label_studio, project.id, "coco", out, "--split", "0.5", "0.5", "0")
    assert str(ids["broken"]) in summary["failed"] and f"skipped task {ids['broken']}" in printed
    assert str(ids["predicted"]) not in summary["tasks"]  # no annotation, and --predictions not given
    checked = 0
    for split in ("train", "val", "test"):
        coco = COCO(str(out / "annotations" / f"instances_{split}.json"))
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["Object", "Vehicle"]
        for ann in coco.loadAnns(coco.getAnnIds()):
            image = coco.loadImgs(ann["image_id"])[0]
            assert (out / "images" / split / image["file_name"]).is_file()
            assert summary["tasks"][str(ann["image_id"])]["split"] == split
            name = coco.loadCats(ann["category_id"])[0]["name"]
            source = truth[ann["image_id"]][name]
            decoded = coco.annToMask(ann).astype(bool)
            if isinstance(ann["segmentation"], dict):  # brush: COCO RLE, exact
                assert np.array_equal(decoded, source)
            else:  # polygon
                assert iou(decoded, source) >= 0.98
            assert ann["area"] == int(decoded.sum())  # pycocotools' own area of what it decodes
            checked += 1
    assert checked == 4  # 2 + 1 regions of the annotated tasks, 1 of the synthetic one

    (out / "stale.txt").write_text("from an earlier export")
    again, _ = export(label_studio, project.id, "coco", out, "--split", "0.5", "0.5", "0")
    assert again["tasks"] == summary["tasks"]  # the same splits on a re-run
    assert not (out / "stale.txt").exists()  # the folder was replaced, not merged into
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".coco.")]  # no building folder left


def test_yolo_polygons_rasterise_back_to_the_source_masks(label_studio, labeled, tmp_path):
    project, truth, ids = labeled
    out = tmp_path / "yolo"
    summary, _ = export(label_studio, project.id, "yolo", out, "--synthetic", "exclude")
    assert str(ids["synthetic"]) not in summary["tasks"]
    data = (out / "data.yaml").read_text()
    assert "0: Object" in data and "1: Vehicle" in data and "train: images/train" in data
    assert f"path: {out}" in data  # usable from any working folder
    names = ["Object", "Vehicle"]
    square = polygon_to_mask(np.array(SQUARE), 240, 320)
    for task_id, info in summary["tasks"].items():
        if int(task_id) == ids["broken"]:
            continue
        label_file = out / "labels" / info["split"] / f"{task_id}.txt"
        drawn = {name: np.zeros((240, 320), np.uint8) for name in names}
        for line in label_file.read_text().splitlines():  # drawn as Ultralytics' polygon2mask does
            klass, *coords = line.split()
            points = np.array(coords, float).reshape(-1, 2) * (320, 240)
            cv2.fillPoly(drawn[names[int(klass)]], [points.astype(np.int32)], 1)
        for name, source in truth[int(task_id)].items():
            if np.array_equal(source, square):  # the polygon region: written as drawn
                assert iou(drawn[name].astype(bool), source) >= 0.95, (task_id, name)
            else:  # a brush region: its outline fills back to the exact mask
                assert np.array_equal(drawn[name].astype(bool), source), (task_id, name)


def test_png_masks_hold_instances_and_classes(label_studio, labeled, tmp_path):
    project, truth, ids = labeled
    out = tmp_path / "masks"
    summary, _ = export(label_studio, project.id, "masks", out, "--synthetic", "only", "--predictions")
    assert set(summary["tasks"]) == {str(ids["synthetic"])}
    assert json.loads((out / "classes.json").read_text()) == {"0": "background", "1": "Object", "2": "Vehicle"}
    split = summary["tasks"][str(ids["synthetic"])]["split"]
    instances = np.asarray(Image.open(out / "masks" / split / f"{ids['synthetic']}_instances.png"))
    classes = np.asarray(Image.open(out / "masks" / split / f"{ids['synthetic']}_classes.png"))
    assert np.array_equal(instances == 1, truth[ids["synthetic"]]["Object"])
    assert np.array_equal(classes == 1, truth[ids["synthetic"]]["Object"]) and classes.max() == 1

    everything, _ = export(label_studio, project.id, "masks", tmp_path / "all", "--predictions")
    assert everything["tasks"][str(ids["predicted"])]["source"] == "prediction m1"
