"""The job queue: in-process by default, RQ with a real redis-server and a real `rq worker` process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from backend.core.jobs import InProcessQueue, RedisQueue
from backend.core.versions import ModelVersions
from backend.learning.annotations import AnnotationStore
from tests.helpers import data_uri, encode_image, sam_env
from tests.processes import ROOT
from tests.test_training import brush, disks


def test_in_process_queue_reports_a_failed_job_and_runs_the_next():
    queue = InProcessQueue()
    bad = queue.enqueue("json.loads", "{not json")
    good = queue.enqueue("json.loads", '{"ok": 1}')
    assert queue.wait(good, timeout=10) == {"ok": 1}
    status = queue.status(bad)
    assert status["status"] == "failed" and "JSONDecodeError" in status["error"]
    assert queue.status("nope")["status"] == "unknown"


def rq_worker(redis_url: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    rq = Path(sys.executable).with_name("rq")
    return subprocess.run([str(rq), "worker", "backend", "--burst", "--url", redis_url], cwd=ROOT,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout)


def test_training_job_runs_on_an_rq_worker_process(tiny_checkpoints, redis_url, tmp_path):
    model_dir = tmp_path / "models"
    store = AnnotationStore(model_dir)
    for index, (image, mask) in enumerate(disks(5, seed=4), start=1):
        store.save("12", {"id": index, "data": {"image": data_uri(encode_image(image))}},
                   {"id": index, "result": [brush(mask)]})
    queue = RedisQueue(redis_url, timeout=600)
    job = queue.enqueue("backend.learning.training.train_project", "12")
    assert queue.status(job)["status"] == "queued"
    env = {**sam_env("vit_b", tiny_checkpoints["vit_b"]), "MODEL_DIR": str(model_dir), "REDIS_URL": redis_url,
           "TRAIN_EPOCHS": "2", "IMAGE_CACHE_DIR": str(tmp_path / "images")}
    worker = rq_worker(redis_url, env)
    assert worker.returncode == 0, worker.stderr[-3000:]
    status = queue.status(job)
    assert status["status"] == "finished", (status, worker.stderr[-3000:])
    assert status["result"]["version"] == "v1"
    assert [v.name for v in ModelVersions(model_dir, "12").list()] == ["v1"]


def test_a_job_whose_every_task_failed_is_failed_not_finished():
    from backend.core.jobs import finished

    all_failed = {"project": 3, "done": 0, "skipped": 0, "failed": 2, "errors": {"7": "task 7: broken image"}}
    status = finished({"id": "j"}, all_failed)
    assert status["status"] == "failed" and "all 2 tasks failed; the first: task 7: broken image" in status["error"]
    assert finished({"id": "j"}, {**all_failed, "done": 1})["status"] == "finished"
    assert finished({"id": "j"}, {"ok": 1})["status"] == "finished"


def test_unknown_job_is_404(grabcut_client):
    response = grabcut_client.get("/jobs/0123456789ab")
    assert response.status_code == 404 and response.json["status"] == "unknown"


def hold(event) -> None:
    event.wait(10)


def test_once_per_key_and_cancel_on_both_queues(redis_url):
    """One active job per key (a task's pre-labeling), a job that has not started can be canceled."""
    import threading

    local = InProcessQueue()
    gate = threading.Event()
    blocker = local.enqueue("tests.test_jobs.hold", gate)  # holds the only worker thread
    first = local.enqueue_once("prelabel:1:7", "json.loads", "1")
    assert local.enqueue_once("prelabel:1:7", "json.loads", "2") == first  # still queued: the same job
    assert local.active_job("prelabel:1:7") == first and local.cancel(first)
    assert local.status(first)["status"] == "canceled" and local.active_job("prelabel:1:7") is None
    assert local.enqueue_once("prelabel:1:7", "json.loads", "3") != first
    gate.set()
    local.wait(blocker, timeout=10)
    assert not local.cancel(blocker)  # finished: nothing to cancel

    remote = RedisQueue(redis_url.rsplit("/", 1)[0] + "/5", timeout=60)
    job = remote.enqueue_once("prelabel:2:8", "json.loads", "1")  # no worker runs it: stays queued
    assert remote.enqueue_once("prelabel:2:8", "json.loads", "1") == job
    assert remote.cancel(job) and remote.status(job)["status"] == "canceled"
    assert remote.enqueue_once("prelabel:2:8", "json.loads", "1") != job


def test_a_job_that_queued_jobs_shows_their_progress(grabcut_client):
    from backend.core.jobs import get_queue

    queue = get_queue()
    done = queue.enqueue("json.loads", "1")
    queue.wait(done, timeout=10)
    parent = queue.enqueue("json.loads", json.dumps({"jobs": {"3": done, "4": "0123456789ab"}}))
    queue.wait(parent, timeout=10)
    body = grabcut_client.get(f"/jobs/{parent}").json
    assert body["status"] == "finished" and body["progress"] == {"finished": 1, "unknown": 1}


def test_queues_are_bounded_and_trainings_are_one_per_project(grabcut_client, monkeypatch):
    """50 /train-generator calls queued 50 trainings; /depth took 100k task ids into the only job thread."""
    import threading

    from backend.core import jobs

    gate = threading.Event()
    queue = InProcessQueue(max_queued=3)
    monkeypatch.setattr(jobs, "_queue", queue)
    queue.enqueue("tests.test_jobs.hold", gate)  # runs, holding the only thread
    answers = [grabcut_client.post("/train-generator", json={"project": 5, "engine": "sd2"}) for _ in range(50)]
    assert {a.status_code for a in answers} == {202} and len({a.json["jobs"][0] for a in answers}) == 1
    other = grabcut_client.post("/train-generator", json={"project": 6, "engine": "sd2"})
    assert other.status_code == 202 and other.json["jobs"] != answers[0].json["jobs"]
    full = grabcut_client.post("/depth", json={"project": 7})
    assert full.status_code == 503 and "MAX_QUEUED_JOBS=3" in full.json["error"]
    many = grabcut_client.post("/depth", json={"project": 7, "tasks": list(range(100_001))})
    assert many.status_code == 400 and "at most 10000" in many.json["error"]
    queue.shutdown()
    gate.set()


def test_a_job_whose_process_died_reads_failed_from_any_worker(tmp_path):
    """After kill -9 jobs stayed started or queued forever; a stopping worker's jobs said nothing."""
    import json
    import subprocess
    import sys

    folder = tmp_path / "jobs"
    script = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); import threading, time\n"
              "from backend.core.jobs import InProcessQueue\n"
              f"q = InProcessQueue(folder={str(folder)!r})\n"
              "gate = threading.Event()\n"
              "print(q.enqueue('tests.test_jobs.hold', gate), q.enqueue('json.loads', '1'), flush=True)\n"
              "time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    started, queued = proc.stdout.readline().split()
    other_worker = InProcessQueue(folder=folder)
    assert other_worker.status(started)["status"] == "started"
    proc.kill()
    proc.wait()
    for job in (started, queued):
        status = other_worker.status(job)
        assert status["status"] == "failed" and "ended before it did" in status["error"], status

    stopping = InProcessQueue(folder=folder)
    import threading

    gate = threading.Event()
    running = stopping.enqueue("tests.test_jobs.hold", gate)
    waiting = stopping.enqueue("json.loads", "1")
    import time

    time.sleep(0.2)
    assert stopping.shutdown() is True
    assert json.loads(stopping.records.read(running))["status"] == "failed"  # (its process exits right after)
    assert other_worker.status(waiting)["status"] == "canceled"
    gate.set()


def test_a_stopping_gunicorn_worker_does_not_wait_for_its_running_job(tmp_path):
    """After SIGTERM a worker running a job outlived its master by 13 min; now it ends with it, and the job
    reads failed."""
    import signal
    import time

    import requests

    from tests.helpers import free_port
    from tests.processes import start_server

    port = free_port()
    env = {"MODEL_DIR": str(tmp_path / "models"), "REDIS_URL": "", "PRELOAD_MODEL": "false",
           "SAM_ENGINE": "grabcut"}
    cmd = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1",
           "--graceful-timeout", "60", "tests.sleepy_app:app"]
    master = start_server(cmd, env, tmp_path / "gunicorn.log", f"http://127.0.0.1:{port}/")
    job, worker = requests.get(f"http://127.0.0.1:{port}/", timeout=10).text.split()  # a second job queued
    time.sleep(1)  # the first job runs
    started = time.monotonic()
    master.send_signal(signal.SIGTERM)
    master.wait(timeout=60)
    assert time.monotonic() - started < 20  # not the graceful timeout, nor the job's 10 minutes
    try:
        os.kill(int(worker), 0)
        alive = True
    except ProcessLookupError:
        alive = False
    assert not alive
    records = InProcessQueue(folder=tmp_path / "models" / "jobs")
    assert records.status(job)["status"] in ("failed", "canceled")
