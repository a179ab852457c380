"""What a labeler sees in Label Studio when something fails: no empty or duplicate predictions, the reason in
a Data Manager column, the model card's error on connect, and shipped configs that Label Studio accepts."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import requests

from backend.io.ls_client import read_tasks
from tests.e2e.conftest import Backend, make_project
from tests.e2e.test_depth_in_label_studio import wait_job
from tests.e2e.test_prelabel_in_label_studio import retrieve_predictions
from tests.helpers import free_port, save_tiny_owlv2
from tests.processes import ROOT, start_gunicorn, stop


def dm_columns(label_studio, project_id: int) -> set[str]:
    response = requests.get(f"{label_studio.url}/api/dm/columns?project={project_id}",
                            headers={"Authorization": f"Token {label_studio.token}"}, timeout=30)
    return {column["id"] for column in response.json()["columns"]}


@pytest.fixture
def late_detector_backend(label_studio, tmp_path):
    """A backend whose detector folder is empty at first (MODEL_RETRY_SECONDS=1, so a fixed model is seen)."""
    env = {"SAM_ENGINE": "grabcut", "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token,
           "DETECTOR_MODEL": str(tmp_path / "detector"), "DETECTOR_THRESHOLD": "0", "MAX_DETECTIONS": "2",
           "MODEL_RETRY_SECONDS": "1", "HF_HUB_OFFLINE": "1", "MODEL_DIR": str(tmp_path / "models")}
    port = free_port()
    proc = start_gunicorn(env, tmp_path, port, workers=1)
    yield Backend(f"http://127.0.0.1:{port}", tmp_path / "models", env), tmp_path / "detector"
    stop(proc)


def test_a_failed_prelabel_stores_nothing_says_why_once_and_a_retry_fills_the_tasks(label_studio,
                                                                                   late_detector_backend):
    """A detector that cannot load is the server's problem, not each task's: nothing stored, no task marked,
    /health names it; once the model is there, Retrieve Predictions fills the tasks."""
    backend, detector = late_detector_backend
    labeled, tasks, _, _ = make_project(label_studio, backend, grid=True)
    client = label_studio.client
    try:
        retrieve_predictions(label_studio, labeled.id)
        for task in tasks:
            assert list(client.predictions.list(task=task.id)) == []  # nothing stored: Label Studio asks again
        errors = {t["id"]: t["data"].get("backend_error") for t in read_tasks(client, labeled.id)}
        assert not any(errors.values()), errors  # was: the detector's error on every task
        assert "DETECTOR_MODEL" in requests.get(f"{backend.url}/health", timeout=10).json()["problems"]["pre-labeling"]

        save_tiny_owlv2(detector)  # the team fixes the model
        time.sleep(1.5)
        retrieve_predictions(label_studio, labeled.id)
        for task in tasks:
            [prediction] = client.predictions.list(task=task.id)
            assert 1 <= len(prediction.result) <= 2
        assert all("backend_error" not in t["data"] for t in read_tasks(client, labeled.id))
        assert requests.get(f"{backend.url}/health", timeout=10).json()["problems"] == {}
    finally:
        client.projects.delete(id=labeled.id)


def test_jobs_leave_exactly_one_prediction_per_task(label_studio, grid_project, backend):
    """With "Use predictions to prelabel tasks" on (Label Studio's default), reading a task with GET
    /api/tasks/<id> would make Label Studio pre-label it through this backend a second time."""
    labeled, tasks, _, _ = grid_project
    client = label_studio.client
    project = client.projects.get(id=labeled.id)
    assert project.show_collab_predictions  # the default this test is about
    run = subprocess.run([sys.executable, "-m", "backend", "prelabel", "--project", str(labeled.id)], cwd=ROOT,
                         env={**os.environ, **backend.env}, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    response = requests.post(f"{backend.url}/depth", json={"project": labeled.id}, timeout=10)
    assert wait_job(backend, response.json()["jobs"][0])["status"] == "finished"
    for task in tasks:
        assert len(list(client.predictions.list(task=task.id))) == 1


def test_the_model_card_shows_a_missing_checkpoint_on_connect(label_studio, tmp_path):
    env = {"SAM_ENGINE": "vit_b", "SAM_DOWNLOAD": "false", "MODEL_DIR": str(tmp_path / "models"),
           "PRELOAD_MODEL": "false"}
    port = free_port()
    cmd = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "_wsgi:app"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    project = label_studio.client.projects.create(title="no checkpoint")
    try:
        for _ in range(100):
            try:
                health = requests.get(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except requests.ConnectionError:
                time.sleep(0.2)
        assert health.status_code == 503 and "SAM_CHECKPOINT" in health.json()["error"]
        response = requests.post(f"{label_studio.url}/api/ml", json={
            "url": f"http://127.0.0.1:{port}", "project": project.id, "title": "SAM", "is_interactive": True},
            headers={"Authorization": f"Token {label_studio.token}"}, timeout=60)
        assert response.status_code == 400, response.text  # Label Studio refuses to connect, and says why
        assert "SAM_CHECKPOINT" in response.text and "sam_vit_b_01ec64.pth" in response.text
        assert str(tmp_path) not in response.text
    finally:
        label_studio.client.projects.delete(id=project.id)
        stop(proc)
