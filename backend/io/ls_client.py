"""The Label Studio API client (label-studio-sdk) from the settings, with errors that say what is missing."""

from __future__ import annotations

import base64
import json
import logging
import threading

from backend.core.errors import BackendError, InputError
from backend.core.logs import redact_paths
from backend.core.settings import Settings

logger = logging.getLogger(__name__)


class LabelStudioUnreachableError(BackendError):
    status = 502


def make_client(settings: Settings):
    from label_studio_sdk import LabelStudio

    if not settings.label_studio_url or not settings.label_studio_api_key:
        raise InputError("LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY must be set to read and update tasks",
                         "settings")
    return LabelStudio(base_url=settings.label_studio_url, api_key=settings.label_studio_api_key,
                       timeout=settings.download_timeout)


def call(what: str, function, *args, **kwargs):
    """Run one SDK call; connection problems and API errors become one clear error naming `what`."""
    import httpx
    from label_studio_sdk.core.api_error import ApiError

    try:
        return function(*args, **kwargs)
    except ApiError as exc:
        raise LabelStudioUnreachableError(f"Label Studio answered {exc.status_code}: {str(exc.body)[:300]}", what)
    except httpx.HTTPError as exc:
        raise LabelStudioUnreachableError(f"Label Studio is unreachable ({type(exc).__name__}: {exc})", what)


def read_tasks(client, project_id: int, ids: list[int] | None = None) -> list[dict]:
    """Tasks of a project ({"id", "data", "meta", "predictions", "annotations"}), all or those in `ids`, read
    through the Data Manager with review=true: unlike GET /api/tasks/<id> and a plain task list, that never
    makes Label Studio run pre-labeling on this backend (with "Use predictions to prelabel tasks" on, it
    would)."""
    query = None
    if ids is not None:
        items = [{"filter": "filter:tasks:id", "operator": "equal", "type": "Number", "value": int(i)} for i in ids]
        query = json.dumps({"filters": {"conjunction": "or", "items": items}})

    def fetch() -> list[dict]:
        pager = client.tasks.list(project=project_id, fields="all", review=True, query=query, resolve_uri=False)
        return [{"id": t.id, "data": dict(t.data or {}), "meta": dict(t.meta or {}),
                 "predictions": list(t.predictions or []),
                 "annotations": list(getattr(t, "annotations", None) or [])} for t in pager]

    return call(f"project {project_id}", fetch)


def read_task(client, project_id: int, task_id: int) -> dict:
    """One task of a project, read as `read_tasks` does; InputError when the project has no such task."""
    tasks = [t for t in read_tasks(client, project_id, [task_id]) if t["id"] == task_id]
    if not tasks:
        raise InputError(f"project {project_id} has no task {task_id}", f"task {task_id}")
    return tasks[0]


ERROR_FIELD = "backend_error"  # task data fields the Data Manager shows as columns: why a feature failed,
STATUS_FIELD = "backend_status"  # and work queued for the task (cleared when it ends)
NOTE_FIELDS = (ERROR_FIELD, STATUS_FIELD)


def without_note(data: dict, feature: str, field: str = ERROR_FIELD) -> dict:
    """Task data without `feature`'s note in `field` (a note of another feature stays)."""
    if str(data.get(field, "")).startswith(feature):
        return {key: value for key, value in data.items() if key != field}
    return data


def has_note(task: object, feature: str = "") -> bool:
    """Whether a task's data carries a backend note (of `feature`, if given): a success has something to clear."""
    data = task.get("data") if isinstance(task, dict) else None
    return isinstance(data, dict) and any(str(data.get(field, "")).startswith(feature) for field in NOTE_FIELDS
                                          if field in data)


def _same_source(stored: object, sent: object, task_id: int) -> bool:
    """Whether a request's copy of a task field is the stored one, or Label Studio's presigned form of it (it
    resolves cloud storage URIs before sending a task to the backend)."""
    if stored == sent:
        return True
    if not isinstance(stored, str) or not isinstance(sent, str):
        return False
    fileuri = base64.urlsafe_b64encode(stored.encode()).decode()
    return sent.endswith(f"/tasks/{task_id}/presign/?fileuri={fileuri}")


def note_task(client, project_id: int, task_id: int, feature: str, error: str | None = None,
              status: str | None = None, only_if: dict | None = None) -> None:
    """Show `feature`'s ("pre-labeling", "depth", "synthesis") state on a task, merged into its current data:
    `error` in `backend_error` ("<feature> failed: ..."), `status` in `backend_status` ("<feature> queued ...");
    None clears that feature's note (a note of another feature stays). `only_if`: data fields the stored task
    must hold (a request's own copy of the task is the caller's word: it may not write on another task). One
    read, at most one write; never raises: the reason is in the log and the job result as well."""
    try:
        task = read_task(client, project_id, task_id)
        if only_if and not all(_same_source(task["data"].get(key), value, task_id) for key, value in only_if.items()):
            logger.warning("task %s of project %s does not hold what the request said: %s not noted", task_id,
                           project_id, feature)
            return
        data = task["data"]
        for field, text in ((ERROR_FIELD, error and f"{feature} failed: {redact_paths(error)}"),
                            (STATUS_FIELD, status and f"{feature} {status}")):
            data = {**data, field: text} if text else without_note(data, feature, field)
        if data != task["data"]:
            call(f"task {task_id}", client.tasks.update, id=task_id, data=data)
    except BackendError as exc:
        logger.warning("could not note on task %s how %s went: %s", task_id, feature, exc)


def note_later(settings: Settings, project_id: str, task: object, feature: str, error: str | None,
               image_key: str = "image") -> None:
    """`note_task` in a background thread (the answer does not wait for it), where the API settings are there and
    the project and task ids are valid; nothing to do for a success on a task without `feature`'s note."""
    task_id = task.get("id") if isinstance(task, dict) else None
    if not (settings.label_studio_url and settings.label_studio_api_key and str(project_id).isdigit()
            and isinstance(task_id, int) and (error or has_note(task, feature))):
        return
    data = task.get("data") if isinstance(task.get("data"), dict) else {}
    only_if = {image_key: data.get(image_key)}
    threading.Thread(target=note_task, args=(make_client(settings), int(project_id), task_id, feature, error),
                     kwargs={"only_if": only_if}, name="note-task", daemon=True).start()
