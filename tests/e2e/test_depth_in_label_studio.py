"""Depth jobs through the real queue (Redis + rq worker) update task data in a real Label Studio."""

from __future__ import annotations

import time

import cv2
import numpy as np
import requests


def wait_job(backend, job_id: str, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = requests.get(f"{backend.url}/jobs/{job_id}", timeout=10).json()
        if status["status"] in ("finished", "failed"):
            return status
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish: {status}")


def test_depth_for_a_project_is_stored_in_task_data_and_served_by_label_studio(label_studio, project, backend):
    labeled, tasks, _, _ = project
    client = label_studio.client
    outputs = label_studio.files_root / "outputs"  # the backend's OUTPUT_DIR
    outputs.mkdir(exist_ok=True)
    client.import_storage.local.create(project=labeled.id, path=str(outputs), title="backend outputs")
    given = {**tasks[1].data, "depth": "/data/local-files/?d=given.png"}
    client.tasks.update(id=tasks[1].id, data=given)  # a task that already carries depth

    response = requests.post(f"{backend.url}/depth", json={"project": labeled.id}, timeout=10)
    assert response.status_code == 202 and response.json()["queue"] == "rq"
    status = wait_job(backend, response.json()["jobs"][0])
    assert status["status"] == "finished", status
    assert status["result"]["done"] == 1 and status["result"]["skipped"] == 1 and status["result"]["failed"] == 0

    data = client.tasks.get(id=tasks[0].id).data
    assert data["image"] == tasks[0].data["image"]  # the original data is kept
    assert data["depth_meta"]["kind"] == "relative" and data["depth_meta"]["width"] == 320
    session = requests.Session()
    session.headers["Authorization"] = f"Token {label_studio.token}"
    raw = session.get(label_studio.url + data["depth_raw"], timeout=30)
    assert raw.status_code == 200, raw.text[:300]
    depth = cv2.imdecode(np.frombuffer(raw.content, np.uint8), cv2.IMREAD_UNCHANGED)
    assert depth.dtype == np.uint16 and depth.shape == (240, 320)
    assert session.get(label_studio.url + data["depth"], timeout=30).status_code == 200
    assert client.tasks.get(id=tasks[1].id).data["depth"] == "/data/local-files/?d=given.png"


def test_bad_depth_requests_are_refused_clearly(backend):
    response = requests.post(f"{backend.url}/depth", json={"project": 1, "tasks": ["seven"]}, timeout=10)
    assert response.status_code == 400 and response.json()["where"] == "/depth tasks"
    assert requests.post(f"{backend.url}/depth", json={}, timeout=10).status_code == 400
    unknown = requests.get(f"{backend.url}/jobs/nope", timeout=10)
    assert unknown.status_code == 404 and unknown.json()["status"] == "unknown"
