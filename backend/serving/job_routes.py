"""Routes beyond the label-studio-ml contract: queue depth and generator-training jobs, read any job's status."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter

from flask import Flask, jsonify

from backend.core.errors import InputError
from backend.core.jobs import get_queue
from backend.core.label_config import DATA_KEY
from backend.core.logs import redact_paths
from backend.core.settings import get_settings
from backend.serving.protocol import json_body

MAX_TASKS_PER_JOB = 10_000  # task ids in one /depth request (100k held the only in-process job thread)
JOB_ID = re.compile(r"^[A-Za-z0-9-]{1,64}\Z")  # ours are 12 hex digits, RQ's are UUIDs


def _ids(value: object, where: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise InputError("must be a list of integer ids", where)
    return value


def register(app: Flask) -> None:
    @app.post("/depth")
    def depth():
        """{"project": 3}, optionally "tasks": [17, 18], "image_key", "force": queue a depth job."""
        body = json_body()
        if "project" not in body:
            raise InputError('send {"project": ID} or {"project": ID, "tasks": [ID, ...]}', "/depth")
        image_key, force = body.get("image_key", "image"), bool(body.get("force", False))
        if not isinstance(image_key, str) or not DATA_KEY.match(image_key):
            raise InputError("'image_key' must be a task data field name (letters, digits, '_', '-')", "/depth")
        [project] = _ids([body["project"]], "/depth project")
        tasks = _ids(body["tasks"], "/depth tasks") if "tasks" in body else None
        if tasks is not None and len(tasks) > MAX_TASKS_PER_JOB:
            raise InputError(f"{len(tasks)} task ids; at most {MAX_TASKS_PER_JOB} per request", "/depth tasks")
        queue = get_queue()  # the same request again while its job is active gets that job
        key = hashlib.sha256(json.dumps([project, image_key, force, tasks]).encode()).hexdigest()[:16]
        jobs = [queue.enqueue_once(f"depth:{key}", "backend.depth.estimate.run_depth_project", project, image_key,
                                   force, None, tasks)]
        return jsonify({"jobs": jobs, "queue": queue.kind}), 202

    @app.post("/train-generator")
    def train_generator():
        """{"project": 3, "engine": "kandinsky"|"sd2"}: queue a domain LoRA training of the inpainting engine."""
        from backend.synthesis.inpainting import ENGINES

        body = json_body()
        if "project" not in body:
            raise InputError('send {"project": ID, "engine": "kandinsky" or "sd2"}', "/train-generator")
        [project] = _ids([body["project"]], "/train-generator project")
        engine = body.get("engine", get_settings().synthesis_engine)
        if engine not in ENGINES:
            raise InputError(f"unknown engine {engine!r}; use one of {list(ENGINES)}", "/train-generator engine")
        queue = get_queue()  # one training per project and engine at a time (50 calls queued 50 trainings)
        jobs = [queue.enqueue_once(f"train-generator:{project}:{engine}", "backend.synthesis.lora.train_generator",
                                   project, engine)]
        return jsonify({"jobs": jobs, "queue": queue.kind}), 202

    @app.get("/jobs/<job_id>")
    def job(job_id: str):
        if not JOB_ID.match(job_id):
            raise InputError("not a job id", "/jobs")
        queue = get_queue()
        status = queue.status(job_id)
        if status.get("error"):  # no server paths for the caller
            status["error"] = redact_paths(str(status["error"]))
        children = (status.get("result") or {}).get("jobs") if isinstance(status.get("result"), dict) else None
        if isinstance(children, dict):  # a job that queued one job per task: their states, counted
            status["progress"] = dict(Counter(queue.status(child)["status"] for child in children.values()))
        return jsonify(status), 404 if status["status"] == "unknown" else 200
