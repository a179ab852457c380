"""SAM 3 meets Label Studio: a typed phrase, an exemplar box and "Retrieve predictions" through the real server,
answered by a tiny SAM 3 (facebook/sam3's layout) under gunicorn with label_configs/concepts.xml."""

from __future__ import annotations

import json
import subprocess
import time

import numpy as np
import pytest
import requests

from backend.core.settings import Settings
from backend.segmentation.masks import rle_to_mask
from backend.segmentation.registry import load_segmenter
from backend.segmentation.sam3 import ConceptQuery
from tests.e2e.conftest import embedded_backend, make_project
from tests.e2e.test_label_studio import interactive
from tests.e2e.test_prelabel_in_label_studio import retrieve_predictions
from tests.helpers import disk_grid, save_tiny_sam3
from tests.processes import ROOT

CONFIG = (ROOT / "label_configs" / "concepts.xml").read_text()
THRESHOLD, MAX_DETECTIONS = 0.2, 3


@pytest.fixture(scope="module")
def sam3_backend(label_studio, tmp_path_factory):
    """The backend on SAM_ENGINE=sam3 (concepts for pre-labeling too), one gunicorn worker, embedded cache."""
    folder = tmp_path_factory.mktemp("sam3-backend")
    checkpoint = save_tiny_sam3(folder / "tiny-sam3")
    with embedded_backend(label_studio, folder, "sam3", checkpoint, PRELABEL_DETECTOR="sam3",
                          DETECTOR_THRESHOLD=str(THRESHOLD), MAX_DETECTIONS=str(MAX_DETECTIONS),
                          EMBEDDING_FLOAT16="false") as url:
        yield url, checkpoint


def test_a_phrase_and_an_exemplar_in_label_studio_come_back_as_every_instance(label_studio, sam3_backend):
    url, checkpoint = sam3_backend
    project, tasks, _, _ = make_project(label_studio, label_config=CONFIG, grid=True)
    try:
        ml = label_studio.client.ml.create(url=url, project=project.id, is_interactive=True, title="SAM 3")
        assert ml.readable_state == "Connected", ml
        segmenter = load_segmenter(Settings(sam_engine="sam3", sam_checkpoint=str(checkpoint), sam_download=False,
                                            embedding_float16=False))
        embedding = segmenter.embed(disk_grid(seed=0))  # the first task's image
        phrase = {"id": "t1", "from_name": "phrase", "to_name": "image", "type": "textarea", "origin": "manual",
                  "value": {"text": ["disk_Vehicle"]}}
        exemplar = {"id": "e1", "from_name": "exemplar", "to_name": "image", "type": "rectanglelabels",
                    "origin": "manual", "original_width": 320, "original_height": 320, "image_rotation": 0,
                    "value": {"x": 5, "y": 5, "width": 20, "height": 20, "rotation": 0, "rectanglelabels": ["Person"]}}
        for item, label, query in (
                (phrase, "Vehicle", ConceptQuery(text="disk")),
                (exemplar, "Person", ConceptQuery(boxes=np.array([[0.05, 0.05, 0.25, 0.25]], np.float32),
                                                  box_labels=np.array([1])))):
            response = interactive(label_studio, ml.id, tasks[0].id, [item])
            assert response.status_code == 200, response.text
            regions = response.json()["data"]["result"]
            [found] = segmenter.concepts(embedding, [query], THRESHOLD, MAX_DETECTIONS)
            assert 1 <= len(regions) <= MAX_DETECTIONS
            for region in regions:
                assert region["type"] == "brushlabels" and region["from_name"] == "tag"
                assert region["value"]["brushlabels"] == [label]
            # the best region Label Studio received is the engine's best instance for that phrase / exemplar
            assert np.array_equal(rle_to_mask(regions[0]["value"]["rle"], 320, 320), found[0].mask)

        retrieve_predictions(label_studio, project.id)  # bulk pre-labeling by concept (PRELABEL_DETECTOR=sam3)
        for task in tasks:
            [prediction] = label_studio.client.predictions.list(task=task.id)
            assert prediction.model_version == "sam3-tiny-sam3"
            assert 1 <= len(prediction.result) <= MAX_DETECTIONS
            assert all(r["value"]["brushlabels"][0] in ("Object", "Person", "Vehicle") for r in prediction.result)
        health = requests.get(f"{url}/health", timeout=30).json()
        assert health["status"] == "UP" and health["engine"]["engine"] == "sam3"
    finally:
        label_studio.client.projects.delete(id=project.id)


def test_a_phrase_typed_in_the_browser_shows_every_instance_and_submits(label_studio, sam3_backend):
    """Chromium: Auto-Annotation on, "disk_Vehicle" typed into the phrase box, Add; Label Studio sends the TextArea
    to the backend and shows its regions as suggestions (screenshot: test-artifacts/browser-phrase.png)."""
    from tests.e2e.test_browser import ARTIFACTS, BROWSER_DIR

    url, _ = sam3_backend
    project, tasks, _, _ = make_project(label_studio, label_config=CONFIG, grid=True)
    try:
        ml = label_studio.client.ml.create(url=url, project=project.id, is_interactive=True, title="SAM 3")
        assert ml.readable_state == "Connected", ml
        ARTIFACTS.mkdir(exist_ok=True)
        screenshot = ARTIFACTS / "browser-phrase.png"
        run = subprocess.run(["node", "label_with_phrase.mjs", label_studio.url, label_studio.email,
                              label_studio.password, str(project.id), str(tasks[0].id), "disk_Vehicle",
                              "e.g. red car_Vehicle", str(screenshot)],
                             cwd=BROWSER_DIR, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout + run.stderr
        report = json.loads(run.stdout.strip().splitlines()[-1])
        assert "textarea" in report["sent"] and report["status"] == 200, report
        assert 1 <= report["suggestions"] <= MAX_DETECTIONS, report
        # the task opened with its pre-labeling prediction (PRELABEL_DETECTOR=sam3); the phrase's regions follow
        before, regions = report["before"], report["regions"]
        assert regions[:len(before)] == before, report
        assert regions[len(before):] == ["Vehicle"] * report["suggestions"], report
        assert report["submitted"], report
        for _ in range(50):
            annotations = list(label_studio.client.annotations.list(id=tasks[0].id))
            if annotations:
                break
            time.sleep(0.2)
        [annotation] = annotations
        labels = [r["value"]["brushlabels"][0] for r in annotation.result if r["type"] == "brushlabels"]
        assert len(labels) == len(regions) and labels.count("Vehicle") == regions.count("Vehicle")
    finally:
        label_studio.client.projects.delete(id=project.id)
