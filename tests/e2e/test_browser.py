"""A labeling team's real path: Chromium opens the task, the annotator clicks, the mask appears, submit."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import pytest

from backend.mask_encoding import rle_to_mask
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
         str(labeled.id), str(task.id), "Object", "0.62", "0.45", str(screenshot)],
        cwd=BROWSER_DIR, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["ml_requests"] >= 1 and report["suggestions"] == 1, report
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
