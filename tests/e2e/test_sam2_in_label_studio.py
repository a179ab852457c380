"""A SAM family meets Label Studio: a click through the real server, answered by a tiny SAM 2.1 under gunicorn."""

from __future__ import annotations

import numpy as np
import pytest
import requests

from backend.core.settings import Settings
from backend.segmentation.masks import rle_to_mask
from backend.segmentation.prompts import Prompt
from backend.segmentation.registry import load_segmenter
from tests.e2e.conftest import embedded_backend, make_project
from tests.e2e.test_label_studio import interactive, keypoint, only_brush
from tests.helpers import disk_image, iou, save_tiny_sam2


@pytest.fixture(scope="module")
def sam2_backend(label_studio, tmp_path_factory):
    """The backend on SAM_ENGINE=sam2 with a tiny random-weight SAM 2.1 folder: one gunicorn worker, the
    embedded in-process cache and queue (no Redis), as `./run serve` starts it."""
    folder = tmp_path_factory.mktemp("sam2-backend")
    checkpoint = save_tiny_sam2(folder / "tiny-sam2")
    with embedded_backend(label_studio, folder, "sam2", checkpoint, PRELABEL_MODE="off") as url:
        yield url, checkpoint


def test_a_click_in_label_studio_is_answered_by_sam2(label_studio, sam2_backend):
    url, checkpoint = sam2_backend
    project, tasks, _, _ = make_project(label_studio)
    try:
        ml = label_studio.client.ml.create(url=url, project=project.id, is_interactive=True, title="SAM 2.1")
        assert ml.readable_state == "Connected", ml
        health = requests.get(f"{url}/health", timeout=30).json()
        assert health["status"] == "UP"
        task = tasks[0]
        item = only_brush(interactive(label_studio, ml.id, task.id, [keypoint(40, 50)]))
        mask = rle_to_mask(item["value"]["rle"], 240, 320)

        # The mask Label Studio received is the engine's own mask for that click on that image (the weights are
        # random, so the object itself is not the yardstick: the SAM 2.1 path end to end is).
        image, _ = disk_image(width=320, height=240, center=(0.4, 0.5), seed=0)
        segmenter = load_segmenter(Settings(sam_engine="sam2", sam_checkpoint=str(checkpoint), sam_download=False))
        click = Prompt(points=np.array([[0.40 * 320, 0.50 * 240]], np.float32), labels=np.array([1]))
        expected = segmenter.decode(segmenter.embed(image), click).mask
        assert expected.any() and iou(mask, expected) > 0.99
        versions = requests.post(f"{url}/setup", json={"project": f"{project.id}.1", "schema": project.label_config},
                                 timeout=30).json()
        assert versions["model_version"] == "sam2-tiny-sam2"
    finally:
        label_studio.client.projects.delete(id=project.id)
