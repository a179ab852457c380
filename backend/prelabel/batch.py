"""Batch `/predict` (Label Studio's *Retrieve Predictions*, and pre-labeling when a task is opened): every task
judged alone, within PREDICT_BUDGET seconds; the tasks left then continue as queued jobs that store their
predictions through Label Studio's API.

What Label Studio 1.23.2 does with the answer (ml/models.py, `MLBackend.predict_tasks` and
`_get_predictions_from_ml_backend`): it first drops the tasks that already have a prediction of the current
model version; it gives up on the request after ML_TIMEOUT_PREDICT (100 s) and then stores nothing; it pairs
`results` with its tasks by position when the counts are equal and stores one prediction per entry with a
`result` (none for an empty list); a list of another length is refused (of length 1: asked again task by
task). So the answer has one entry per task, in order: the finished tasks' predictions, `[]` for the rest.
The jobs store their predictions with the same model version, so asking again skips those tasks.
"""

from __future__ import annotations

import logging
import time

from backend.core.errors import BackendError, is_configuration_problem
from backend.core.jobs import QueueFullError, get_queue
from backend.core.label_config import LabelConfig, parse_label_config
from backend.core.logs import failure_text
from backend.core.memory_budget import BusyError
from backend.core.problems import configuration_problems
from backend.core.settings import Settings, get_settings
from backend.io.ls_client import has_note, make_client, note_task
from backend.prelabel.run import optional_client, prefetch_image, prelabel_task, task_job_key

logger = logging.getLogger(__name__)
FEATURE = "pre-labeling"


def predict_batch(tasks: list, label_config: str, config: LabelConfig, project_id: str = "") -> list:
    """One answer entry per task, in order: its prediction, or [] (failed, nothing found, or continued as a
    job). A task's failure, whatever the exception, is that task's (its `backend_error` note); a configuration
    problem (a model that cannot load, a config without labels) is reported once and ends the batch."""
    settings = get_settings()
    client = optional_client(settings)
    project = int(project_id) if str(project_id).isdigit() else None
    queue = get_queue()
    started, last = time.monotonic(), 0.0
    answers: list = []
    for index, task in enumerate(tasks):
        task_id = _task_id(task)
        if project is not None and task_id is not None and queue.active_job(task_job_key(project, task_id)):
            answers.append([])  # its queued job stores it
            continue
        if answers and time.monotonic() - started + last > settings.predict_budget:
            rest = tasks[index:]
            continue_later(rest, label_config, project, client is not None, settings)
            return answers + [[]] * len(rest)
        if index + 1 < len(tasks):  # the next image downloads while this one is computed
            prefetch_image(tasks[index + 1], config, settings)
        began = time.monotonic()
        try:
            answers.append(_predict_one(task, task_id, config, settings, client, project, project_id))
        except BackendError as exc:  # a configuration problem: the same for every task
            configuration_problems.report(FEATURE, exc)
            return answers + [[]] * (len(tasks) - index)
        last = time.monotonic() - began
    return answers


def _task_id(task: object) -> int | None:
    task_id = task.get("id") if isinstance(task, dict) else None
    return task_id if isinstance(task_id, int) and not isinstance(task_id, bool) else None


def _predict_one(task: object, task_id: int | None, config: LabelConfig, settings: Settings, client,
                 project: int | None, project_id: str) -> dict | list:
    """The task's prediction, or [] with the reason noted on the task. Raises only configuration problems."""
    error = None
    try:
        prediction = prelabel_task(task, config, settings, project_id=project_id)
        configuration_problems.clear(FEATURE)
    except Exception as exc:
        if is_configuration_problem(exc):
            raise
        if isinstance(exc, BusyError):  # the worker's moment, not the task's: no prediction, no note; asked again
            logger.warning("pre-labeling task %s put off: %s", task_id, exc)
            return []
        error = failure_text(exc, f"pre-labeling task {task_id}", logger)
        logger.warning("pre-labeling task %s failed: %s", task_id, error)
        prediction = {"result": []}
    if client is not None and project is not None and task_id is not None and (error or has_note(task, FEATURE)):
        image = task["data"].get(config.image_key) if isinstance(task.get("data"), dict) else None
        note_task(client, project, task_id, FEATURE, error, only_if={config.image_key: image})
    return prediction if prediction["result"] else []


def continue_later(tasks: list, label_config: str, project: int | None, can_store: bool,
                   settings: Settings) -> str | None:
    """Queue the tasks a batch had no time for (one job that notes them as queued, then queues one job per
    task); None when the predictions could not be stored (no Label Studio API settings, or no project id)."""
    ids = [task_id for task_id in map(_task_id, tasks) if task_id is not None]
    if not ids:
        return None
    if not can_store or project is None:
        logger.warning("%d tasks left unanswered after PREDICT_BUDGET=%g s; run Retrieve Predictions again (Label "
                       "Studio asks only for tasks without this model version's prediction), or set "
                       "LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY so that they continue as jobs", len(ids),
                       settings.predict_budget)
        return None
    job = get_queue().enqueue("backend.prelabel.batch.queue_tasks", project, ids, label_config)
    logger.info("project %s: %d tasks continue as jobs after PREDICT_BUDGET=%g s (job %s)", project, len(ids),
                settings.predict_budget, job)
    return job


def queue_tasks(project_id: int, task_ids: list[int], label_config: str) -> dict:
    """Job: note each task as queued (its `backend_status` column in the Data Manager) and queue its own
    pre-labeling job (at most one active per task); {"jobs": {task id: job id}} for `GET /jobs/<id>`."""
    settings = get_settings()
    client = make_client(settings)
    parse_label_config(label_config)  # a broken config fails here once, not in every task's job
    queue = get_queue()
    jobs: dict[str, str] = {}
    for index, task_id in enumerate(task_ids):
        key = task_job_key(project_id, task_id)
        active = queue.active_job(key)
        if active:
            jobs[str(task_id)] = active
            continue
        note_task(client, project_id, task_id, FEATURE, status="queued")
        following = task_ids[index + 1] if index + 1 < len(task_ids) else None
        try:
            jobs[str(task_id)] = queue.enqueue_once(key, "backend.prelabel.run.run_prelabel_task", project_id,
                                                    task_id, label_config, following)
        except QueueFullError as exc:  # the rest waits for the next Retrieve Predictions, unmarked
            note_task(client, project_id, task_id, FEATURE)
            logger.warning("project %s: %d tasks not queued: %s", project_id, len(task_ids) - index, exc)
            return {"project": project_id, "jobs": jobs, "not_queued": task_ids[index:]}
    return {"project": project_id, "jobs": jobs}
