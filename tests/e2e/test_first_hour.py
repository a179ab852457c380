"""A team's first hour through Label Studio's own screens (headless Chromium): connect the backend from the
Settings form, Retrieve Predictions on a whole project from the Data Manager, a batch with a broken task, click
errors. Screenshots: test-artifacts/first-hour-*.png."""

from __future__ import annotations

import time

import numpy as np
import pytest
import requests

from tests.e2e.conftest import ARTIFACTS, LABEL_CONFIG, in_browser, upload_images
from tests.helpers import disk_grid, disk_image, free_port, save_tiny_owlv2
from tests.processes import start_gunicorn, stop

ONE_PIXEL = np.full((1, 1, 3), 200, np.uint8)


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    return save_tiny_owlv2(tmp_path_factory.mktemp("first-hour") / "detector")


def start_backend(label_studio, folder, detector, **env: str):
    """The backend as `./run serve` starts it (one gunicorn worker, in-process cache and queue), on GrabCut with
    a tiny detector; (process, URL)."""
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    env = {"SAM_ENGINE": "grabcut", "REDIS_URL": "", "LABEL_STUDIO_URL": label_studio.url,
           "LABEL_STUDIO_API_KEY": label_studio.token, "DETECTOR_MODEL": str(detector), "DETECTOR_THRESHOLD": "0",
           "MAX_DETECTIONS": "2", "HF_HUB_OFFLINE": "1", **env}
    return start_gunicorn(env, folder, port, workers=1), f"http://127.0.0.1:{port}"


@pytest.fixture
def project_of(label_studio):
    """make(images, connect=URL or None): a project of the shipped config with these uploaded images."""
    made = []

    def make(images: list[np.ndarray], backend_url: str | None = None):
        client = label_studio.client
        project = client.projects.create(title="first hour", label_config=LABEL_CONFIG)
        made.append(project.id)
        for start in range(0, len(images), 20):
            upload_images(label_studio, project.id, [(f"image{i}.png", image) for i, image in
                                                     enumerate(images[start:start + 20], start)])
        if backend_url:
            client.ml.create(url=backend_url, project=project.id, is_interactive=True, title="SAM")
        return project, sorted(client.tasks.list(project=project.id), key=lambda t: t.id)

    yield make
    for project_id in made:
        label_studio.client.projects.delete(id=project_id)


def test_connect_model_through_the_settings_form(label_studio, project_of, detector, tmp_path):
    """No auth, edit and save (extra params typed in the form), basic auth with a wrong and the right password, a
    bad extra param: each as Label Studio's form shows it."""
    plain, plain_url = start_backend(label_studio, tmp_path / "plain", detector)
    locked, locked_url = start_backend(label_studio, tmp_path / "locked", detector, BASIC_AUTH_USER="team",
                                       BASIC_AUTH_PASS="s3cret")
    try:
        project, _ = project_of([])
        shot = ARTIFACTS / "first-hour-connect"
        first = in_browser("connect_model.mjs", label_studio, project.id, f"{shot}-plain.png",
                           f'{{"url": "{plain_url}", "title": "SAM"}}')
        assert first["status"] == 201 and first["closed"] and "Connected" in first["card"], first  # was 400
        edited = in_browser("connect_model.mjs", label_studio, project.id, f"{shot}-edit.png",
                            '{"edit": true, "title": "SAM clicks", "extra": "{\\"threshold\\": 0.4}"}')
        assert edited["status"] == 200 and edited["closed"] and "SAM clicks" in edited["card"], edited
        bad = in_browser("connect_model.mjs", label_studio, project.id, f"{shot}-bad-extra.png",
                         '{"edit": true, "extra": "[1, 2"}')
        assert bad["status"] == 400 and "must be a JSON object" in bad["shown"], bad  # the reason, not just "400"

        other, _ = project_of([])
        wrong = in_browser("connect_model.mjs", label_studio, other.id, f"{shot}-wrong-password.png",
                           f'{{"url": "{locked_url}", "title": "SAM", "user": "team", "pass": "nope"}}')
        assert wrong["status"] == 400 and "authentication parameters were either not provided or are incorrect" in \
            wrong["shown"], wrong  # was "Successfully connected ... Reason: 401"
        right = in_browser("connect_model.mjs", label_studio, other.id, f"{shot}-basic-auth.png",
                           f'{{"url": "{locked_url}", "title": "SAM", "user": "team", "pass": "s3cret"}}')
        assert right["status"] == 201 and "Connected" in right["card"], right
    finally:
        stop(plain)
        stop(locked)


def task_data(label_studio, project, task) -> dict:
    """A task's data as the Data Manager lists it (a GET of the task would make Label Studio pre-label it again
    when it has no prediction, with "Use predictions to prelabel tasks" on)."""
    from backend.io.ls_client import read_task

    return read_task(label_studio.client, project.id, task.id)["data"]


def predictions_by_task(label_studio, project_id: int) -> dict[int, list]:
    found: dict[int, list] = {}
    for prediction in label_studio.client.predictions.list(project=project_id):
        found.setdefault(prediction.task, []).append(prediction)
    return found


def test_retrieve_predictions_on_40_tasks_never_loses_work_to_the_timeout(label_studio, project_of, detector,
                                                                          tmp_path):
    """More work than PREDICT_BUDGET allows: the Data Manager's action answers in time, the finished tasks are
    stored by Label Studio, the rest continue as jobs (their backend_status column says so) and store theirs;
    every task ends with exactly one prediction of the model version."""
    proc, url = start_backend(label_studio, tmp_path / "backend", detector, PREDICT_BUDGET="3")
    try:
        project, tasks = project_of([disk_grid(seed=i) for i in range(40)], url)
        report = in_browser("retrieve_predictions.mjs", label_studio, project.id,
                            ARTIFACTS / "first-hour-retrieve-40.png")
        assert report["status"] == 200 and report["seconds"] < 60, report  # well within ML_TIMEOUT_PREDICT
        stored_by_label_studio = len(predictions_by_task(label_studio, project.id))
        assert 0 < stored_by_label_studio < 40, stored_by_label_studio
        assert any(text.startswith("pre-labeling queued") for text in report["columns"]), report
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and len(predictions_by_task(label_studio, project.id)) < 40:
            time.sleep(1)
        time.sleep(2)  # nothing more may arrive
        found = predictions_by_task(label_studio, project.id)
        assert sorted(found) == [t.id for t in tasks]
        assert all(len(p) == 1 and p[0].model_version == "grabcut" and p[0].result for p in found.values())
        for task in tasks:
            data = task_data(label_studio, project, task)
            assert "backend_status" not in data and "backend_error" not in data, data
        # asking again finds nothing left to do: Label Studio skips tasks with this model version's prediction
        again = in_browser("retrieve_predictions.mjs", label_studio, project.id, ARTIFACTS / "first-hour-again.png")
        assert again["status"] == 200 and again["seconds"] < 10, again
        assert all(len(p) == 1 for p in predictions_by_task(label_studio, project.id).values())
    finally:
        stop(proc)


def test_a_broken_task_in_a_batch_is_that_tasks_note(label_studio, project_of, detector, tmp_path):
    """Retrieve Predictions on three tasks, the middle one a 1x1 PNG: the two good tasks get their predictions,
    the broken one none and its reason in its backend_error column (was: a 500 for the whole batch)."""
    proc, url = start_backend(label_studio, tmp_path / "backend", detector)
    try:
        project, tasks = project_of([disk_grid(seed=1), ONE_PIXEL, disk_grid(seed=2)], url)
        report = in_browser("retrieve_predictions.mjs", label_studio, project.id,
                            ARTIFACTS / "first-hour-broken-task.png")
        assert report["status"] == 200, report
        assert sorted(predictions_by_task(label_studio, project.id)) == [tasks[0].id, tasks[2].id]
        broken = task_data(label_studio, project, tasks[1])
        assert "1x1 pixels: too small to segment" in broken["backend_error"], broken
        assert any("1x1 pixels" in text for text in report["columns"]), report  # shown in the Data Manager
    finally:
        stop(proc)


def test_click_errors_reach_the_task_and_a_backend_that_is_down_is_survived(label_studio, project_of, detector,
                                                                            tmp_path):
    """Label Studio 1.23.2's labeling page drops an interactive error (its frontend reads only `data.result` of
    the answer): a click's error is written on the task (backend_error, a Data Manager column) and cleared by the
    next good click; with the backend down the page stays usable and the next click after a restart works."""
    limits = {"MAX_IMAGE_PIXELS": "60000"}  # the browser shows the 320x240 photo, the backend refuses it
    proc, url = start_backend(label_studio, tmp_path / "backend", detector, **limits)
    large, _ = disk_image(320, 240)
    small, _ = disk_image(240, 200)
    project, tasks = project_of([large, small], url)
    try:
        refused = in_browser("click_once.mjs", label_studio, project.id, tasks[0].id, "Object", "0.4", "0.5",
                             ARTIFACTS / "first-hour-click-error.png")
        assert refused["status"] == 200 and "MAX_IMAGE_PIXELS" in str(refused["answer"]["errors"]), refused
        assert refused["suggestions"] == 0, refused
        deadline = time.monotonic() + 20  # opening the task pre-labeled it (failed too): the click's note follows
        while not str(task_data(label_studio, project, tasks[0]).get("backend_error")).startswith("click") \
                and time.monotonic() < deadline:
            time.sleep(0.3)
        note = task_data(label_studio, project, tasks[0])["backend_error"]
        assert note.startswith("click failed:") and "MAX_IMAGE_PIXELS" in note, note

        stop(proc)  # the backend goes down
        down = in_browser("click_once.mjs", label_studio, project.id, tasks[1].id, "Object", "0.4", "0.5",
                          ARTIFACTS / "first-hour-click-backend-down.png")
        assert down["status"] == 200 and down["answer"]["errors"] and down["suggestions"] == 0, down
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{url}/health", timeout=2)
    finally:
        stop(proc)
    proc, url = start_backend(label_studio, tmp_path / "again", detector)  # back, without the limit
    try:
        [ml] = label_studio.client.ml.list(project=project.id)
        label_studio.client.ml.update(id=ml.id, url=url, project=project.id)
        back = in_browser("click_once.mjs", label_studio, project.id, tasks[0].id, "Object", "0.4", "0.5",
                          ARTIFACTS / "first-hour-click-back.png")
        assert back["status"] == 200 and back["suggestions"] == 1, back
        deadline = time.monotonic() + 20
        while "backend_error" in task_data(label_studio, project, tasks[0]) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert "backend_error" not in task_data(label_studio, project, tasks[0])  # the good click cleared it
    finally:
        stop(proc)
