"""Label Studio itself talks to the backend: interactive masks, annotations reaching `fit`, versions."""

from __future__ import annotations

import json
import time

import numpy as np
import requests
from label_studio_sdk.converter.brush import mask2rle

from backend.segmentation.masks import rle_to_mask
from tests.helpers import iou


def interactive(server, ml_id: int, task_id: int, items: list[dict]) -> requests.Response:
    return requests.post(f"{server.url}/api/ml/{ml_id}/interactive-annotating",
                         json={"task": task_id, "context": {"result": items}},
                         headers={"Authorization": f"Token {server.token}"}, timeout=120)


def keypoint(x: float, y: float, label: str = "Object") -> dict:
    return {"original_width": 320, "original_height": 240, "image_rotation": 0, "id": "k1", "from_name": "kp",
            "to_name": "image", "type": "keypointlabels", "is_positive": True, "origin": "manual",
            "value": {"x": x, "y": y, "width": 0.6, "keypointlabels": [label]}}


def box(x: float, y: float, w: float, h: float, label: str = "Object") -> dict:
    return {"original_width": 320, "original_height": 240, "image_rotation": 0, "id": "r1", "from_name": "rect",
            "to_name": "image", "type": "rectanglelabels", "origin": "manual",
            "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": [label]}}


def only_brush(response: requests.Response) -> dict:
    assert response.status_code == 200, response.text
    [item] = response.json()["data"]["result"]
    assert item["type"] == "brushlabels" and item["from_name"] == "tag" and item["to_name"] == "image"
    return item


def test_click_and_box_in_label_studio_give_the_objects_mask(label_studio, project):
    _, tasks, masks, ml = project
    task = tasks[0]
    item = only_brush(interactive(label_studio, ml.id, task.id, [keypoint(40, 50)]))
    assert item["value"]["brushlabels"] == ["Object"]
    assert iou(rle_to_mask(item["value"]["rle"], 240, 320), masks[task.id]) > 0.9

    task = tasks[1]  # disk centred at (62 %, 45 %), radius 60 px
    item = only_brush(interactive(label_studio, ml.id, task.id, [box(40, 16, 44, 58, label="Vehicle")]))
    assert item["value"]["brushlabels"] == ["Vehicle"]
    assert iou(rle_to_mask(item["value"]["rle"], 240, 320), masks[task.id]) > 0.9


def test_bad_prompt_is_refused_and_the_next_click_is_served(label_studio, project, backend):
    _, tasks, masks, ml = project
    bad = interactive(label_studio, ml.id, tasks[0].id, [keypoint(40, 50, label="Unicorn")])
    # Label Studio answers 200 with the backend's status in "errors" (it drops the backend's message body).
    assert "data" not in bad.json() and "400" in bad.json()["errors"][0]
    item = only_brush(interactive(label_studio, ml.id, tasks[0].id, [keypoint(40, 50)]))
    assert iou(rle_to_mask(item["value"]["rle"], 240, 320), masks[tasks[0].id]) > 0.9


def test_submitted_annotation_reaches_fit(label_studio, project, backend):
    labeled, tasks, masks, _ = project
    task = tasks[0]
    rle = mask2rle(masks[task.id].astype(np.uint8) * 255)
    result = [{"from_name": "tag", "to_name": "image", "type": "brushlabels", "original_width": 320,
               "original_height": 240, "value": {"format": "rle", "rle": rle, "brushlabels": ["Object"]}}]
    annotation = label_studio.client.annotations.create(id=task.id, result=result)
    kept = backend.model_dir / "projects" / str(labeled.id) / "annotations" / f"{annotation.id}.json"
    for _ in range(100):
        if kept.exists():
            break
        time.sleep(0.1)
    stored = json.loads(kept.read_text())
    assert stored["task"]["id"] == task.id
    [region] = stored["annotation"]["result"]
    assert np.array_equal(rle_to_mask(region["value"]["rle"], 240, 320), masks[task.id])

    label_studio.client.annotations.delete(id=annotation.id)
    for _ in range(100):
        if not kept.exists():
            break
        time.sleep(0.1)
    assert not kept.exists()


def test_label_studio_lists_the_backends_versions(label_studio, project):
    _, _, _, ml = project
    response = requests.get(f"{label_studio.url}/api/ml/{ml.id}/versions",
                            headers={"Authorization": f"Token {label_studio.token}"}, timeout=30)
    assert response.status_code == 200, response.text
    assert "grabcut" in json.dumps(response.json())
