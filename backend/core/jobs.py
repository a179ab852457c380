"""Background jobs: an in-process worker thread by default, RQ on Redis when REDIS_URL is set.

Jobs are named by dotted function path ("backend.learning.training.train_project") so an `rq worker` on any
machine with this code runs them: `rq worker backend --url $REDIS_URL`. A job never runs inside a
request: `/predict` and `/webhook` only enqueue.

Every worker process answers `GET /jobs/<id>` for any job: in-process jobs record their state in a
bounded folder that the gunicorn workers share (MODEL_DIR/jobs); RQ jobs live in Redis. An RQ job
whose worker died (no heartbeat for JOB_HEARTBEAT_TIMEOUT seconds) is retried JOB_RETRIES times, then
reported failed, instead of staying "started".
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import socket
import threading
import time
import traceback
import uuid
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from backend.core.errors import BackendError
from backend.core.files import BoundedFolder
from backend.core.settings import Settings, get_settings

logger = logging.getLogger(__name__)
QUEUE_NAME = "backend"
KEEP_IN_MEMORY = 1000  # futures of this process's most recent jobs
ACTIVE = ("queued", "started", "deferred", "scheduled")  # a job in these states has yet to end


class QueueFullError(BackendError):
    """MAX_QUEUED_JOBS jobs wait already: the caller should try again later."""

    status = 503


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


class OnceByKey:
    """`enqueue_once`: at most one active job per key (e.g. one pre-labeling job per task), on either queue."""

    def enqueue_once(self, key: str, func_path: str, *args) -> str:
        """The active job of `key`, else a new job of `func_path(*args)` remembered under `key`."""
        with self._once_lock:
            existing = self.active_job(key)
            if existing:
                return existing
            job_id = self.enqueue(func_path, *args)
            self._remember(key, job_id)
            return job_id

    def active_job(self, key: str) -> str | None:
        """The id of `key`'s job while it is queued or running, else None."""
        job_id = self._recalled(key)
        return job_id if job_id and self.status(job_id)["status"] in ACTIVE else None


def finished(body: dict, result) -> dict:
    """A finished job's status: `failed` when it reports tasks and every one of them failed."""
    if isinstance(result, dict) and result.get("failed") and not result.get("done") and not result.get("skipped"):
        errors = result.get("errors") or {}
        first = next(iter(errors.values()), "")
        return {**body, "status": "failed", "result": result,
                "error": f"all {result['failed']} tasks failed" + (f"; the first: {first}" if first else "")}
    return {**body, "status": "finished", "result": result}


def resolve(path: str):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


class InProcessQueue(OnceByKey):
    """One worker thread (jobs are CPU-heavy; more threads would only slow the clicks). Each job's state is
    also written to `folder` (LRU-bounded), so that any worker process can answer for it."""

    kind = "in-process"

    def __init__(self, workers: int = 1, folder: Path | str | None = None, max_bytes: int = 64 << 20,
                 max_queued: int = 1000):
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="job")
        self.max_queued = max_queued
        self._jobs: OrderedDict[str, tuple[str, Future]] = OrderedDict()
        self._lock = threading.Lock()
        self._once_lock = threading.Lock()
        self._keys: OrderedDict[str, str] = OrderedDict()  # enqueue_once's keys -> job ids (bounded)
        self.records = BoundedFolder(folder, max_bytes, ".job") if folder else None

    def _remember(self, key: str, job_id: str) -> None:
        self._keys[key] = job_id
        while len(self._keys) > KEEP_IN_MEMORY:
            self._keys.popitem(last=False)

    def _recalled(self, key: str) -> str | None:
        return self._keys.get(key)

    def _record(self, job_id: str, body: dict) -> None:
        """Write the job's state for every worker process; a queued or started one names its process, so that
        another process can tell a job whose process died from one still under way."""
        if self.records is not None:
            if body["status"] in ACTIVE:
                body = {**body, "pid": os.getpid(), "host": socket.gethostname()}
            self.records.write(job_id, json.dumps(body, default=str).encode())

    def _recorded(self, job_id: str) -> dict:
        blob = self.records.read(job_id) if self.records is not None else None
        if not blob:
            return {"id": job_id, "status": "unknown"}
        body = json.loads(blob)
        pid, host = body.pop("pid", None), body.pop("host", None)
        if body["status"] in ACTIVE and host == socket.gethostname() and isinstance(pid, int) and not _alive(pid):
            return {**body, "status": "failed", "error": "the worker process that held this job ended before it "
                                                         "did (killed or restarted); run it again"}
        return body

    def shutdown(self) -> bool:
        """The worker process is stopping: jobs not started are canceled, a running one is recorded as failed
        (the process need not wait for it: gunicorn.conf.py's worker_exit). True when one was running."""
        running = False
        with self._lock:
            entries = list(self._jobs.items())
        for job_id, (func_path, future) in entries:
            if future.cancel():
                self._record(job_id, {"id": job_id, "function": func_path, "status": "canceled"})
            elif future.running():
                running = True
                self._record(job_id, {"id": job_id, "function": func_path, "status": "failed",
                                      "error": "the worker process stopped while this job ran; run it again"})
        self._executor.shutdown(wait=False, cancel_futures=True)
        return running

    def enqueue(self, func_path: str, *args, **kwargs) -> str:
        job_id = uuid.uuid4().hex[:12]
        function = resolve(func_path)
        base = {"id": job_id, "function": func_path}

        def run():
            self._record(job_id, {**base, "status": "started"})
            try:
                result = function(*args, **kwargs)
            except Exception as exc:
                logger.error("job %s %s failed:\n%s", job_id, func_path, traceback.format_exc())
                self._record(job_id, {**base, "status": "failed", "error": f"{type(exc).__name__}: {exc}"})
                raise
            self._record(job_id, finished(base, result))
            return result

        with self._lock:
            waiting = sum(not future.done() for _, future in self._jobs.values())
            if waiting >= self.max_queued:
                raise QueueFullError(f"{waiting} jobs are queued in this worker; at most MAX_QUEUED_JOBS="
                                     f"{self.max_queued}: try again when some have run", "queue")
            self._record(job_id, {**base, "status": "queued"})
            self._jobs[job_id] = (func_path, self._executor.submit(run))
            while len(self._jobs) > KEEP_IN_MEMORY:
                oldest, (_, future) = next(iter(self._jobs.items()))
                if not future.done():
                    break
                self._jobs.pop(oldest)
        logger.info("job %s queued: %s%s", job_id, func_path, args)
        return job_id

    def status(self, job_id: str) -> dict:
        with self._lock:
            entry = self._jobs.get(job_id)
        if entry is None:  # another worker process's job, or one this process no longer holds
            return self._recorded(job_id)
        func_path, future = entry
        if future.running():
            return {"id": job_id, "function": func_path, "status": "started"}
        if future.cancelled():
            return {"id": job_id, "function": func_path, "status": "canceled"}
        if not future.done():
            return {"id": job_id, "function": func_path, "status": "queued"}
        error = future.exception()
        if error is not None:
            message = f"{type(error).__name__}: {error}"
            return {"id": job_id, "function": func_path, "status": "failed", "error": message}
        return finished({"id": job_id, "function": func_path}, future.result())

    def cancel(self, job_id: str) -> bool:
        """Cancel a job that has not started; True when it was."""
        with self._lock:
            entry = self._jobs.get(job_id)
        if entry is None or not entry[1].cancel():
            return False
        self._record(job_id, {"id": job_id, "function": entry[0], "status": "canceled"})
        return True

    def wait(self, job_id: str, timeout: float | None = None):
        """The job's result (tests and CLIs)."""
        return self._jobs[job_id][1].result(timeout=timeout)


class RedisQueue(OnceByKey):
    """RQ jobs on Redis; `rq worker backend --url REDIS_URL` processes run them on any machine."""

    kind = "rq"
    _once_lock = threading.Lock()  # within a process; across processes the job itself checks before it writes

    def __init__(self, url: str, timeout: int, retries: int = 1, heartbeat_timeout: float = 120.0,
                 max_queued: int = 1000):
        import redis
        from rq import Queue

        self.connection = redis.Redis.from_url(url)
        self.queue = Queue(QUEUE_NAME, connection=self.connection)
        self.timeout = timeout
        self.retries = retries
        self.heartbeat_timeout = heartbeat_timeout
        self.max_queued = max_queued

    def _remember(self, key: str, job_id: str) -> None:
        self.connection.set(f"{QUEUE_NAME}:once:{key}", job_id, ex=self.timeout)

    def _recalled(self, key: str) -> str | None:
        value = self.connection.get(f"{QUEUE_NAME}:once:{key}")
        return value.decode() if value else None

    def enqueue(self, func_path: str, *args, **kwargs) -> str:
        from rq import Retry

        waiting = self.queue.count
        if waiting >= self.max_queued:
            raise QueueFullError(f"{waiting} jobs are queued on RQ; at most MAX_QUEUED_JOBS={self.max_queued}: try "
                                 "again when some have run", "queue")
        job = self.queue.enqueue(func_path, args=args, kwargs=kwargs or None, job_timeout=self.timeout,
                                 result_ttl=7 * 24 * 3600, failure_ttl=7 * 24 * 3600,
                                 retry=Retry(max=self.retries) if self.retries > 0 else None)
        logger.info("job %s queued on RQ: %s%s", job.id, func_path, args)
        return job.id

    def _abandoned(self, job) -> bool:
        """A started job whose worker stopped sending heartbeats: handed to RQ's own clean-up of abandoned
        jobs (retried while it has retries left, else failed). True when it was."""
        from rq.registry import StartedJobRegistry

        beat = job.last_heartbeat or job.started_at
        if beat is None or time.time() - beat.timestamp() < self.heartbeat_timeout:
            return False
        registry = StartedJobRegistry(queue=self.queue)
        scores = [score for member, score in self.connection.zrange(registry.key, 0, -1, withscores=True)
                  if registry.parse_job_id(member.decode()) == job.id]  # members are "<job id>:<execution>"
        if not scores:
            return False
        score = max(scores)
        logger.warning("job %s: no heartbeat for %.0f s, its worker is gone", job.id, time.time() - beat.timestamp())
        registry.cleanup(timestamp=score + 0.001)  # jobs with older heartbeats are just as abandoned
        return True

    def cancel(self, job_id: str) -> bool:
        """Cancel a job that has not started; True when it was."""
        from rq.exceptions import NoSuchJobError
        from rq.job import Job

        try:
            job = Job.fetch(job_id, connection=self.connection)
            if job.get_status(refresh=True).value not in ("queued", "deferred", "scheduled"):
                return False
            job.cancel()
        except (NoSuchJobError, ValueError):
            return False
        return True

    def status(self, job_id: str) -> dict:
        from rq.exceptions import NoSuchJobError
        from rq.job import Job

        try:
            job = Job.fetch(job_id, connection=self.connection)
        except NoSuchJobError:
            return {"id": job_id, "status": "unknown"}
        status = job.get_status(refresh=True).value
        if status == "started" and self._abandoned(job):
            status = job.get_status(refresh=True).value
        body = {"id": job_id, "function": job.func_name, "status": status}
        if status == "finished":
            return finished(body, job.return_value())
        if status == "failed":
            error = (job.exc_info or "").strip().splitlines()[-1:] or ["failed"]
            body["error"] = error[0] if job.exc_info else "the job's worker died (no heartbeat) and no retry was left"
        return body


_queue: InProcessQueue | RedisQueue | None = None
_queue_lock = threading.Lock()


def get_queue(settings: Settings | None = None) -> InProcessQueue | RedisQueue:
    global _queue
    with _queue_lock:
        if _queue is None:
            settings = settings or get_settings()
            if settings.redis_url:
                _queue = RedisQueue(settings.redis_url, settings.job_timeout, settings.job_retries,
                                    settings.job_heartbeat_timeout, settings.max_queued_jobs)
            else:
                _queue = InProcessQueue(folder=Path(settings.model_dir) / "jobs", max_queued=settings.max_queued_jobs)
        return _queue


def reset_queue() -> None:
    global _queue
    with _queue_lock:
        _queue = None
