"""Background jobs: an in-process worker thread by default, RQ on Redis when REDIS_URL is set.

Jobs are named by dotted function path ("backend.training.train_project") so an `rq worker` on any
machine with this code runs them: `rq worker backend --url $REDIS_URL`. A job never runs inside a
request: `/predict` and `/webhook` only enqueue.
"""

from __future__ import annotations

import importlib
import logging
import threading
import traceback
import uuid
from concurrent.futures import Future, ThreadPoolExecutor

from .settings import Settings, get_settings

logger = logging.getLogger(__name__)
QUEUE_NAME = "backend"


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


class InProcessQueue:
    """One worker thread (jobs are CPU-heavy; more threads would only slow the clicks)."""

    kind = "in-process"

    def __init__(self, workers: int = 1):
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="job")
        self._jobs: dict[str, tuple[str, Future]] = {}
        self._lock = threading.Lock()

    def enqueue(self, func_path: str, *args, **kwargs) -> str:
        job_id = uuid.uuid4().hex[:12]
        function = resolve(func_path)

        def run():
            try:
                return function(*args, **kwargs)
            except Exception:
                logger.error("job %s %s failed:\n%s", job_id, func_path, traceback.format_exc())
                raise

        with self._lock:
            self._jobs[job_id] = (func_path, self._executor.submit(run))
        logger.info("job %s queued: %s%s", job_id, func_path, args)
        return job_id

    def status(self, job_id: str) -> dict:
        with self._lock:
            entry = self._jobs.get(job_id)
        if entry is None:
            return {"id": job_id, "status": "unknown"}
        func_path, future = entry
        if future.running():
            return {"id": job_id, "function": func_path, "status": "started"}
        if not future.done():
            return {"id": job_id, "function": func_path, "status": "queued"}
        error = future.exception()
        if error is not None:
            message = f"{type(error).__name__}: {error}"
            return {"id": job_id, "function": func_path, "status": "failed", "error": message}
        return finished({"id": job_id, "function": func_path}, future.result())

    def wait(self, job_id: str, timeout: float | None = None):
        """The job's result (tests and CLIs)."""
        return self._jobs[job_id][1].result(timeout=timeout)


class RedisQueue:
    """RQ jobs on Redis; `rq worker backend --url REDIS_URL` processes run them on any machine."""

    kind = "rq"

    def __init__(self, url: str, timeout: int):
        import redis
        from rq import Queue

        self.connection = redis.Redis.from_url(url)
        self.queue = Queue(QUEUE_NAME, connection=self.connection)
        self.timeout = timeout

    def enqueue(self, func_path: str, *args, **kwargs) -> str:
        job = self.queue.enqueue(func_path, args=args, kwargs=kwargs or None, job_timeout=self.timeout,
                                 result_ttl=7 * 24 * 3600, failure_ttl=7 * 24 * 3600)
        logger.info("job %s queued on RQ: %s%s", job.id, func_path, args)
        return job.id

    def status(self, job_id: str) -> dict:
        from rq.exceptions import NoSuchJobError
        from rq.job import Job

        try:
            job = Job.fetch(job_id, connection=self.connection)
        except NoSuchJobError:
            return {"id": job_id, "status": "unknown"}
        body = {"id": job_id, "function": job.func_name, "status": job.get_status(refresh=True).value}
        if body["status"] == "finished":
            return finished({"id": job_id, "function": job.func_name}, job.return_value())
        elif body["status"] == "failed":
            body["error"] = (job.exc_info or "").strip().splitlines()[-1:] or ["failed"]
            body["error"] = body["error"][0]
        return body


_queue: InProcessQueue | RedisQueue | None = None
_queue_lock = threading.Lock()


def get_queue(settings: Settings | None = None) -> InProcessQueue | RedisQueue:
    global _queue
    with _queue_lock:
        if _queue is None:
            settings = settings or get_settings()
            _queue = RedisQueue(settings.redis_url, settings.job_timeout) if settings.redis_url else InProcessQueue()
        return _queue


def reset_queue() -> None:
    global _queue
    with _queue_lock:
        _queue = None
