"""Bulk pre-labeling: Label Studio's own "Retrieve predictions", and `python -m backend prelabel` on the
job queue (RQ with a real worker, and in-process), skipping done tasks and reporting broken ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import requests

from backend.segmentation.masks import rle_to_mask
from tests.processes import ROOT


def retrieve_predictions(label_studio, project_id: int) -> None:
    response = requests.post(f"{label_studio.url}/api/dm/actions?id=retrieve_tasks_predictions&project={project_id}",
                             json={"selectedItems": {"all": True, "excluded": []}},
                             headers={"Authorization": f"Token {label_studio.token}"}, timeout=300)
    assert response.status_code == 200, response.text


def test_retrieve_predictions_stores_labeled_masks_with_the_model_version(label_studio, grid_project):
    labeled, tasks, _, _ = grid_project
    retrieve_predictions(label_studio, labeled.id)
    for task in tasks:
        [prediction] = label_studio.client.predictions.list(task=task.id)
        assert prediction.model_version == "grabcut"
        # The tiny random detector picks 2 of its grid boxes (MAX_DETECTIONS=2), each around a disk of the
        # grid image; each region is a labeled, non-empty brush mask (box -> mask quality: tests/test_prelabel.py).
        assert 1 <= len(prediction.result) <= 2
        for region in prediction.result:
            assert region["type"] == "brushlabels" and region["value"]["brushlabels"][0] in ("Object", "Person",
                                                                                            "Vehicle")
            assert rle_to_mask(region["value"]["rle"], 320, 320).any()


def prelabel_cli(backend, project_id: int, redis: bool) -> dict:
    env = {**os.environ, **backend.env}
    if not redis:
        env.pop("REDIS_URL")
    run = subprocess.run([sys.executable, "-m", "backend", "prelabel", "--project", str(project_id)], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode in (0, 1), run.stderr[-3000:]
    return json.loads(run.stdout)


def test_prelabel_command_on_rq_reports_broken_tasks_and_resumes(label_studio, unconnected_project, backend):
    labeled, tasks, _, _ = unconnected_project
    label_studio.client.projects.import_tasks(id=labeled.id, request=[{"image": "http://127.0.0.1:9/gone.png"}])
    first = prelabel_cli(backend, labeled.id, redis=True)
    assert (first["done"], first["skipped"], first["failed"]) == (2, 0, 1), first
    [(broken_id, reason)] = first["errors"].items()
    assert "gone.png" in reason or "unreachable" in reason.lower() or "download" in reason.lower(), reason
    for task in tasks:
        assert [p.model_version for p in label_studio.client.predictions.list(task=task.id)] == ["grabcut"]
    again = prelabel_cli(backend, labeled.id, redis=True)  # a rerun resumes: done tasks are skipped
    assert (again["done"], again["skipped"], again["failed"]) == (0, 2, 1), again
    assert list(again["errors"]) == [broken_id]


def test_prelabel_command_runs_in_process_without_redis(label_studio, unconnected_project, backend):
    labeled, tasks, _, _ = unconnected_project
    report = prelabel_cli(backend, labeled.id, redis=False)
    assert (report["done"], report["failed"]) == (2, 0), report
    assert all(label_studio.client.predictions.list(task=t.id) for t in tasks)


def test_ctrl_c_stops_the_prelabel_command_cleanly(label_studio, backend):
    """The first Ctrl-C cancels the queued tasks, lets the running one finish and prints the report (exit 130,
    no traceback); no prediction is written after the command has ended."""
    import signal
    import time

    from tests.e2e.conftest import LABEL_CONFIG, upload_images
    from tests.helpers import disk_grid

    client = label_studio.client
    project = client.projects.create(title="ctrl-c", label_config=LABEL_CONFIG)
    try:
        upload_images(label_studio, project.id, [(f"grid{i}.png", disk_grid(seed=i)) for i in range(30)])
        env = {**os.environ, **backend.env}
        env.pop("REDIS_URL")  # the in-process queue: the jobs run in the command's own process
        proc = subprocess.Popen([sys.executable, "-m", "backend", "prelabel", "--project", str(project.id)],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def stored() -> int:
            return len(list(client.predictions.list(project=project.id)))

        deadline = time.monotonic() + 120
        while stored() == 0 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, err[-3000:]
        assert "Traceback" not in err and "terminate called" not in err, err[-3000:]
        report = json.loads(out)
        assert report["interrupted"]["canceled"] > 0, report
        at_exit = stored()  # the tasks done, and those that were running at the Ctrl-C
        assert report["done"] <= at_exit <= report["done"] + len(report["interrupted"]["running"]) < 30, report
        time.sleep(3)
        assert stored() == at_exit  # nothing goes on writing after the command ended
    finally:
        client.projects.delete(id=project.id)
