"""A generation annotation submitted in Label Studio becomes new, pre-labeled tasks in the project."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest
import requests

from backend.segmentation.masks import rle_to_mask
from tests.e2e.conftest import make_project
from tests.processes import ROOT

SYNTHESIS_CONFIG = (ROOT / "label_configs" / "synthesis.xml").read_text()


@pytest.fixture
def generation_project(label_studio, backend):
    made = make_project(label_studio, backend, SYNTHESIS_CONFIG)
    outputs = label_studio.files_root / "outputs"
    outputs.mkdir(exist_ok=True)
    label_studio.client.import_storage.local.create(project=made[0].id, path=str(outputs), title="outputs")
    yield made
    label_studio.client.projects.delete(id=made[0].id)


def request_result(engine: str) -> list[dict]:
    return [
        {"from_name": "box", "to_name": "image", "type": "rectanglelabels", "original_width": 320,
         "original_height": 240,
         "value": {"x": 60, "y": 10, "width": 30, "height": 40, "rectanglelabels": ["Vehicle"]}},
        {"from_name": "prompt", "to_name": "image", "type": "textarea", "value": {"text": ["yellow block of wood"]}},
        {"from_name": "samples", "to_name": "image", "type": "number", "value": {"number": 2}},
        {"from_name": "engine", "to_name": "image", "type": "choices", "value": {"choices": [engine]}},
    ]


def wait_for(condition, timeout: float = 180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError("timed out")


def test_generation_imports_new_tasks_with_the_objects_mask(label_studio, generation_project):
    project, tasks, _, _ = generation_project
    client = label_studio.client
    source = tasks[0]
    client.annotations.create(id=source.id, result=request_result("kandinsky"))
    new = wait_for(lambda: [t for t in client.tasks.list(project=project.id, fields="all")
                            if (t.data.get("synthetic") or {}).get("source_task") == source.id] or None)
    assert len(new) == 2 and {t.data["synthetic"]["seed"] for t in new} == {0, 1}
    session = requests.Session()
    session.headers["Authorization"] = f"Token {label_studio.token}"
    for task in new:
        served = session.get(label_studio.url + task.data["image"], timeout=30)
        assert served.status_code == 200
        assert cv2.imdecode(np.frombuffer(served.content, np.uint8), cv2.IMREAD_COLOR).shape == (240, 320, 3)
        [prediction] = task.predictions
        [region] = prediction.result
        assert prediction.model_version == "synthesis-kandinsky" and region["value"]["brushlabels"] == ["Vehicle"]
        mask = rle_to_mask(region["value"]["rle"], 240, 320)
        ys, xs = np.nonzero(mask)
        assert mask.any() and xs.min() >= 180 and xs.max() < 300 and ys.max() < 130  # inside the (dilated) box


def test_a_failed_generation_is_noted_on_the_source_task(label_studio, generation_project):
    project, tasks, _, _ = generation_project
    client = label_studio.client
    annotation = client.annotations.create(id=tasks[1].id, result=request_result("dalle"))
    error = wait_for(lambda: client.tasks.get(id=tasks[1].id).data.get("backend_error"))
    assert f"annotation {annotation.id}" in error and "unknown engine 'dalle'" in error
    columns = requests.get(f"{label_studio.url}/api/dm/columns?project={project.id}",
                           headers={"Authorization": f"Token {label_studio.token}"}, timeout=30).json()
    assert "backend_error" in {c["id"] for c in columns["columns"]}  # a Data Manager column
    assert [a.id for a in client.annotations.list(id=tasks[1].id)] == [annotation.id]  # nothing lost
