"""Batch /predict (Retrieve Predictions): every task judged alone, a time budget, configuration problems once."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest

from backend.prelabel.regions import Region
from tests.helpers import (
    LABEL_CONFIG,
    data_uri,
    disk_image,
    encode_image,
    keypoint,
    predict_body,
    save_tiny_omdet_turbo,
)

IMAGE, TRUTH = disk_image(320, 240)
IMAGE_URL = data_uri(encode_image(IMAGE))
ONE_PIXEL = data_uri(encode_image(np.full((1, 1, 3), 200, np.uint8)))


def batch_body(urls: list[str]) -> dict:
    body = predict_body(IMAGE_URL, None)
    body["tasks"] = [{"id": i + 1, "data": {"image": url}} for i, url in enumerate(urls)]
    return body


@pytest.fixture
def notes(monkeypatch) -> list[tuple]:
    """What the batch writes on tasks through Label Studio's API (a client is configured; its calls recorded)."""
    from backend.prelabel import batch

    written: list[tuple] = []
    monkeypatch.setattr(batch, "optional_client", lambda settings: "client")
    monkeypatch.setattr(batch, "note_task", lambda client, project, task, feature, error=None, status=None,
                        only_if=None: written.append((project, task, feature, error)))
    return written


def disk_route(fail_on: int | None = None, seconds: float = 0.0):
    """A pre-labeling route that finds the disk (ValueError on task `fail_on`), taking `seconds`."""
    def route(service, image, config, settings, task, project_id):
        time.sleep(seconds)
        if task["id"] == fail_on:
            raise ValueError("a bug that is no BackendError")
        return [Region(config.outputs[0], "Disk", TRUTH, 0.9)]
    return route


def test_one_tasks_unexpected_failure_is_that_tasks_error_and_the_others_are_answered(grabcut_client, notes,
                                                                                       monkeypatch, caplog):
    from backend.prelabel import run

    monkeypatch.setitem(run.ROUTES, "boxes", disk_route(fail_on=2))
    response = grabcut_client.post("/predict", json=batch_body([IMAGE_URL] * 3))
    assert response.status_code == 200, response.json
    first, second, third = response.json["results"]
    assert first["result"] and third["result"] and second == []  # Label Studio stores nothing for task 2
    [(project, task, feature, error)] = notes
    assert (project, task, feature) == (1, 2, "pre-labeling")
    assert error.startswith("internal error ValueError (incident ")
    assert error.split("incident ")[1].split()[0] in caplog.text and "a bug that is no" in caplog.text


def test_a_1x1_image_in_a_batch_is_that_tasks_error(configure, notes, tmp_path):
    """The issue's case on a real (tiny) OmDet-Turbo: a 1x1 PNG gave 'mean must have 1 elements' and a 500 for the
    whole batch; now that task's note says why, and the other tasks ran (the tiny detector may find nothing)."""
    configure(SAM_ENGINE="grabcut", DETECTOR_MODEL=str(save_tiny_omdet_turbo(tmp_path / "omdet")),
              DETECTOR_THRESHOLD="0", MAX_DETECTIONS="1")
    import _wsgi

    response = _wsgi.app.test_client().post("/predict", json=batch_body([IMAGE_URL, ONE_PIXEL, IMAGE_URL]))
    assert response.status_code == 200, response.json
    assert len(response.json["results"]) == 3 and response.json["results"][1] == []
    [(_, task, _, error)] = notes  # tasks 1 and 3 ran without a failure
    assert task == 2 and "1x1 pixels: too small to segment" in error


def test_a_click_on_a_1x1_image_is_a_clear_error(grabcut_client):
    response = grabcut_client.post("/predict", json=predict_body(ONE_PIXEL, [keypoint(50, 50, width=1, height=1)]))
    assert response.status_code == 422 and "too small to segment" in response.json["error"]
    assert "too small to segment" in response.status  # the status line: what Label Studio keeps of an error


def test_a_configuration_problem_is_reported_once_and_never_written_on_tasks(grabcut_client, notes, monkeypatch,
                                                                             tmp_path, caplog):
    monkeypatch.setenv("DETECTOR_MODEL", str(tmp_path / "no-detector-here"))
    from backend.core.settings import get_settings

    get_settings.cache_clear()
    caplog.set_level(logging.WARNING)
    for _ in range(2):  # e.g. two tasks opened with "Use predictions to prelabel tasks" on
        response = grabcut_client.post("/predict", json=batch_body([IMAGE_URL] * 3))
        assert response.status_code == 200 and response.json["results"] == [[], [], []]
    assert notes == []  # no task is marked with the server's problem
    assert caplog.text.count("pre-labeling cannot run") == 1 and "DETECTOR_MODEL" in caplog.text
    health = grabcut_client.get("/health").json
    assert "DETECTOR_MODEL" in health["problems"]["pre-labeling"]
    assert str(tmp_path) not in health["problems"]["pre-labeling"]  # no server path


def test_a_batch_answers_within_its_budget_and_leaves_the_rest_unanswered(grabcut_client, monkeypatch):
    """Without Label Studio's API settings the rest cannot be stored by jobs: they get no prediction now, and
    Label Studio's next Retrieve Predictions asks only for them."""
    from backend.core.settings import get_settings
    from backend.prelabel import run

    monkeypatch.setenv("PREDICT_BUDGET", "0.5")
    get_settings.cache_clear()
    monkeypatch.setitem(run.ROUTES, "boxes", disk_route(seconds=0.2))
    started = time.monotonic()
    response = grabcut_client.post("/predict", json=batch_body([IMAGE_URL] * 8))
    took = time.monotonic() - started
    results = response.json["results"]
    assert response.status_code == 200 and len(results) == 8  # one entry per task: Label Studio pairs by position
    answered = [bool(r) for r in results]
    assert answered[:2] == [True, True] and not any(answered[3:]), answered
    assert took < 1.5, took


def test_the_rest_of_a_batch_continues_as_one_queued_job(grabcut_client, notes, monkeypatch):
    from backend.core import jobs
    from backend.core.settings import get_settings
    from backend.prelabel import run

    monkeypatch.setenv("PREDICT_BUDGET", "0.3")
    get_settings.cache_clear()
    monkeypatch.setitem(run.ROUTES, "boxes", disk_route(seconds=0.2))
    queued = []

    class Queue:
        kind = "test"

        def active_job(self, key):
            return "job-1" if key == "prelabel:1:6" else None  # task 6 already has its job

        def enqueue(self, func_path, *args):
            queued.append((func_path, *args))
            return "job-2"

    monkeypatch.setattr(jobs, "_queue", Queue())
    results = grabcut_client.post("/predict", json=batch_body([IMAGE_URL] * 6)).json["results"]
    done = sum(bool(r) for r in results)
    assert 1 <= done <= 3 and results[done:] == [[]] * (6 - done)
    [(func_path, project, ids, label_config)] = queued
    assert func_path == "backend.prelabel.batch.queue_tasks" and project == 1 and label_config == LABEL_CONFIG
    assert ids == list(range(done + 1, 7))  # task 6 too: queue_tasks finds its active job and keeps it
