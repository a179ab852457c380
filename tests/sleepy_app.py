"""A WSGI app for tests/test_jobs.py: GET / queues a 10-minute in-process job (as the backend's routes queue
theirs) and answers its id; served by gunicorn with the repository's gunicorn.conf.py."""

from __future__ import annotations

import os


def app(environ, start_response):
    from backend.core.jobs import get_queue

    job = get_queue().enqueue("time.sleep", 600)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"{job} {os.getpid()}".encode()]
