"""A labeling team's real path: Chromium opens the task, the annotator clicks, the mask appears, submit."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import numpy as np
import pytest

from backend.segmentation.masks import rle_to_mask
from tests.helpers import iou
from tests.processes import ROOT

BROWSER_DIR = ROOT / "tests" / "e2e" / "browser"
ARTIFACTS = ROOT / "test-artifacts"


def test_click_in_the_browser_shows_the_mask_and_submits_it(label_studio, project, backend):
    if not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir() or not shutil.which("chromium"):
        pytest.fail("playwright-core or chromium is missing: run ./run test (it installs both)")
    labeled, tasks, masks, _ = project
    task = tasks[1]  # disk centred at (62 %, 45 %)
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "browser-click-mask.png"
    run = subprocess.run(
        ["node", "label_with_click.mjs", label_studio.url, label_studio.email, label_studio.password,
         str(labeled.id), str(task.id), "Object", "0.62", "0.45", str(screenshot), "0.70", "0.40"],
        cwd=BROWSER_DIR, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    # The refining click (label picked again) re-segments with both clicks of the region.
    assert report["clicks_sent"] == [1, 2] and report["statuses"] == [200, 200], report
    assert report["suggestions"] == 1, report
    assert report["regions"] == ["Object"], report  # the accepted mask took the place of the clicked point
    assert report["submitted"] and screenshot.stat().st_size > 10_000

    for _ in range(50):  # the submitted annotation, as Label Studio stored it
        annotations = list(label_studio.client.annotations.list(id=task.id))
        if annotations:
            break
        time.sleep(0.2)
    [annotation] = annotations
    brush = [r for r in annotation.result if r["type"] == "brushlabels"]
    assert len(brush) == 1 and brush[0]["value"]["brushlabels"] == ["Object"]
    assert iou(rle_to_mask(brush[0]["value"]["rle"], 240, 320), masks[task.id]) > 0.9
    kept = backend.model_dir / "projects" / str(labeled.id) / "annotations" / f"{annotation.id}.json"
    for _ in range(50):
        if kept.exists():
            break
        time.sleep(0.2)
    assert kept.exists(), "the submitted annotation did not reach fit"


SHIPPED_CONFIGS = {  # config file -> texts its page must show
    "label_config.xml": ["Click: pick a label", "Box: pick a label", "Masks", "Exclude"],
    "label_configs/polygon.xml": ["Click: pick a label", "Box: pick a label", "Polygons", "Exclude"],
    "label_configs/depth.xml": ["Depth (Depth Anything", "Click: pick the label"],
    "label_configs/concepts.xml": ["Find all like this", "Find all by phrase", "Masks"],
    "label_configs/synthesis.xml": ["1. Mark the region", "2. What should appear", "Number of new images", "Engine",
                                    "Mode"],
}


@pytest.mark.parametrize("name", list(SHIPPED_CONFIGS))
def test_every_shipped_config_loads_into_label_studio_and_renders(label_studio, name):
    """Each config is accepted by the real Label Studio, imported as the README says, and its page renders
    with its titles (screenshots: test-artifacts/config-*.png)."""
    from tests.e2e.conftest import LABEL_CONFIG, upload_images
    from tests.helpers import disk_image

    client = label_studio.client
    config = (ROOT / name).read_text()
    image, _ = disk_image(320, 240)
    if name.endswith("depth.xml"):  # as the README says: import with label_config.xml, depth job, switch
        project = client.projects.create(title=name, label_config=LABEL_CONFIG)
        upload_images(label_studio, project.id, [("photo.png", image)])
        [task] = client.tasks.list(project=project.id)
        client.tasks.update(id=task.id, data={**task.data, "depth": task.data["image"]})  # what the job writes
        client.projects.update(id=project.id, label_config=config)
    else:
        project = client.projects.create(title=name, label_config=config)
        upload_images(label_studio, project.id, [("photo.png", image)])
        [task] = client.tasks.list(project=project.id)
    try:
        assert client.projects.get(id=project.id).label_config.strip() == config.strip()
        ARTIFACTS.mkdir(exist_ok=True)
        screenshot = ARTIFACTS / f"config-{name.replace('/', '-').removesuffix('.xml')}.png"
        run = subprocess.run(["node", "render_task.mjs", label_studio.url, label_studio.email, label_studio.password,
                              str(project.id), str(task.id), str(screenshot), *SHIPPED_CONFIGS[name]],
                             cwd=BROWSER_DIR, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout + run.stderr
        report = json.loads(run.stdout.strip().splitlines()[-1])
        assert report["images"] == (2 if name.endswith("depth.xml") else 1), report
        assert all(report["texts"].values()), report
    finally:
        client.projects.delete(id=project.id)


@pytest.mark.parametrize("name", ["label_config.xml", "label_configs/polygon.xml"])
def test_a_portrait_photo_is_in_view_on_a_laptop_screen(label_studio, name):
    """The click configs' rows leave the whole photo on screen at 1920x960 (three header rows pushed a portrait
    photo 223 px below the fold). Screenshot: test-artifacts/portrait-*.png."""
    from tests.e2e.conftest import upload_images

    client = label_studio.client
    project = client.projects.create(title=f"portrait {name}", label_config=(ROOT / name).read_text())
    try:
        portrait = np.full((1500, 1000, 3), 90, np.uint8)
        portrait[300:1200, 250:750] = (230, 120, 40)
        upload_images(label_studio, project.id, [("portrait.png", portrait)])
        [task] = client.tasks.list(project=project.id)
        ARTIFACTS.mkdir(exist_ok=True)
        screenshot = ARTIFACTS / f"portrait-{name.replace('/', '-').removesuffix('.xml')}.png"
        run = subprocess.run(["node", "render_task.mjs", label_studio.url, label_studio.email, label_studio.password,
                              str(project.id), str(task.id), str(screenshot)], cwd=BROWSER_DIR, capture_output=True,
                             text=True, timeout=300, env={**os.environ, "VIEWPORT": "1920x960"})
        assert run.returncode == 0, run.stdout + run.stderr
        report = json.loads(run.stdout.strip().splitlines()[-1])
        box = report["image_box"]
        assert box["y"] >= 0 and box["y"] + box["height"] <= 960 - 50, report  # above the Submit bar
        assert box["height"] > 400, report  # still a usable size
    finally:
        client.projects.delete(id=project.id)
