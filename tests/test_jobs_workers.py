"""Jobs seen from every worker, and RQ jobs whose worker died: retried, then failed (issue 12)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from redis import Redis

from backend.core.jobs import InProcessQueue, RedisQueue
from tests.helpers import LABEL_CONFIG, data_uri, disk_image, encode_image, free_port, sam_env
from tests.processes import ROOT, start_gunicorn, stop


def test_in_process_jobs_are_answered_by_every_worker(tmp_path, tiny_checkpoints):
    env = {**sam_env("vit_t", tiny_checkpoints["vit_t"]), "PRECOMPUTE_ON_IMPORT": "true"}
    port = free_port()
    proc = start_gunicorn(env, tmp_path, port, workers=2)
    try:
        url = f"http://127.0.0.1:{port}"
        image = data_uri(encode_image(disk_image(seed=41)[0]))
        event = {"action": "TASKS_CREATED", "project": {"id": 5, "label_config": LABEL_CONFIG},
                 "tasks": [{"id": 1, "data": {"image": image}}]}
        job = requests.post(url + "/webhook", json=event, timeout=30).json()["job"]
        deadline, answers = time.monotonic() + 60, []
        while time.monotonic() < deadline:
            answers = [requests.get(f"{url}/jobs/{job}", timeout=10).json()["status"] for _ in range(10)]
            if all(a == "finished" for a in answers):
                break
            time.sleep(0.3)
        assert answers == ["finished"] * 10, answers  # never "unknown", whichever worker answers
    finally:
        stop(proc)


def test_in_process_job_records_are_bounded(tmp_path):
    queue = InProcessQueue(folder=tmp_path / "jobs", max_bytes=4096)
    jobs = [queue.enqueue("json.loads", '{"a": 1}') for _ in range(100)]
    queue.wait(jobs[-1], timeout=30)
    time.sleep(0.2)
    assert sum(p.stat().st_size for p in (tmp_path / "jobs").iterdir()) <= 4096
    other_process = InProcessQueue(folder=tmp_path / "jobs", max_bytes=4096)  # what another worker sees
    assert other_process.status(jobs[-1])["status"] == "finished"


KEEPING = "backend.core.worker.ModelKeepingWorker"
CLASSES = [KEEPING, "rq.worker.Worker"]  # ours (docker-compose's) and RQ's forking default


def rq_worker(redis_url: str, log: Path, worker_class: str = KEEPING) -> subprocess.Popen:
    rq = Path(sys.executable).with_name("rq")
    return subprocess.Popen([str(rq), "worker", "backend", "--url", redis_url, "--job-monitoring-interval", "1",
                             "--worker-class", worker_class],
                            cwd=ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)


def kill_worker_and_horse(worker: subprocess.Popen) -> None:
    """SIGKILL an rq worker and its work horse (RQ starts the horse in its own session), as a dying machine."""
    children = Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split()
    for pid in [worker.pid, *map(int, children)]:
        os.kill(pid, signal.SIGKILL)
    worker.wait()


def wait_status(queue, job: str, wanted: set[str], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = queue.status(job)
        if status["status"] in wanted:
            return status
        time.sleep(0.2)
    raise AssertionError(f"job {job} never reached {wanted}: {status}")


@pytest.mark.parametrize("worker_class", CLASSES)
def test_a_job_whose_rq_worker_is_killed_is_retried_then_failed(redis_url, tmp_path, worker_class):
    url = redis_url.rsplit("/", 1)[0] + "/3"
    Redis.from_url(url).flushdb()
    queue = RedisQueue(url, timeout=60, retries=1, heartbeat_timeout=3)
    job = queue.enqueue("time.sleep", 4)
    worker = rq_worker(url, tmp_path / "w1.log", worker_class)
    wait_status(queue, job, {"started"})
    time.sleep(0.5)
    kill_worker_and_horse(worker)  # mid-job
    retried = wait_status(queue, job, {"queued", "scheduled", "deferred"}, timeout=20)
    assert retried["status"] != "started"
    second = rq_worker(url, tmp_path / "w2.log", worker_class)
    try:
        assert wait_status(queue, job, {"finished", "failed"})["status"] == "finished"
    finally:
        kill_worker_and_horse(second)

    no_retry = RedisQueue(url, timeout=60, retries=0, heartbeat_timeout=3)
    job = no_retry.enqueue("time.sleep", 30)
    worker = rq_worker(url, tmp_path / "w3.log", worker_class)
    wait_status(no_retry, job, {"started"})
    time.sleep(0.5)
    kill_worker_and_horse(worker)
    failed = wait_status(no_retry, job, {"failed"}, timeout=20)
    assert "died" in failed["error"] or "Abandoned" in failed["error"], failed


def test_the_backend_worker_keeps_what_jobs_load_and_beats_during_a_long_job(redis_url, tmp_path):
    """Jobs run in the worker's own process (a model one job loads serves the next: the bench's 2x), and a job
    longer than JOB_HEARTBEAT_TIMEOUT is not taken for abandoned, because heartbeats go on while it runs."""
    url = redis_url.rsplit("/", 1)[0] + "/4"
    Redis.from_url(url).flushdb()
    queue = RedisQueue(url, timeout=60, retries=0, heartbeat_timeout=3)
    worker = rq_worker(url, tmp_path / "keep.log")
    try:
        loads = [queue.enqueue("tests.job_probe.load_once") for _ in range(2)]
        first, second = (wait_status(queue, job, {"finished", "failed"})["result"] for job in loads)
        assert first["pid"] == second["pid"] and (first["loads"], second["loads"]) == (1, 1)
        long_job = queue.enqueue("time.sleep", 6)  # twice the heartbeat timeout
        seen = []
        while not seen or seen[-1] not in ("finished", "failed"):
            seen.append(queue.status(long_job)["status"])
            time.sleep(0.2)
        assert seen[-1] == "finished" and "queued" not in seen[seen.index("started"):], seen
    finally:
        kill_worker_and_horse(worker)


def test_prelabel_polls_with_a_deadline(monkeypatch):
    """A bulk run whose job never answers ends at its deadline with that task failed, not polling forever."""
    from types import SimpleNamespace

    from backend.core import jobs
    from backend.prelabel import run as prelabel

    class Stuck(InProcessQueue):
        def enqueue(self, func_path, *args, **kwargs):
            return super().enqueue("time.sleep", 5)

    fake = SimpleNamespace(
        projects=SimpleNamespace(get=lambda id: SimpleNamespace(label_config=LABEL_CONFIG)),
        predictions=SimpleNamespace(list=lambda project: []),
        tasks=SimpleNamespace(list=lambda **kwargs: [SimpleNamespace(id=7, data={}, meta={}, predictions=[])]))
    monkeypatch.setattr(prelabel, "make_client", lambda settings: fake)
    monkeypatch.setattr(jobs, "_queue", Stuck())
    started = time.monotonic()
    report = prelabel.run_project(3, "grabcut", deadline=1.0)
    assert time.monotonic() - started < 4
    assert report["failed"] == 1 and "no answer within 1 s" in report["errors"]["7"], report
