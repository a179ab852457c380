"""Pre-labeling without clicks: the config's categories -> labeled masks, by one of the routes in ROUTES
(PRELABEL_DETECTOR=boxes: detector boxes -> segmenter masks; sam3: SAM 3 concept masks; PRELABEL_MODE=
everything: the engine's automatic masks). A route is a function returning Regions; adding one is a file
and a row.

Used by `predict` (batch.py) when Label Studio asks without an interactive context (batch pre-annotation,
"Retrieve predictions", auto-annotation on import), by the queue jobs, and by

    python -m backend prelabel --project ID [--limit N]

which pre-labels every task of a project through the API, skips tasks that already have this model
version's predictions (so a rerun resumes after an interruption), and reports done/skipped/failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from backend.core.errors import ConfigError, InputError, is_configuration_problem
from backend.core.label_config import LabelConfig, parse_label_config
from backend.core.logs import failure_text
from backend.core.settings import Settings, get_settings
from backend.core.versions import project_model_version
from backend.io.images import TaskImage, read_task_image
from backend.io.ls_client import call, has_note, make_client, note_task, read_task, read_tasks
from backend.prelabel.detector import get_detector, non_max_suppression
from backend.prelabel.regions import Region, prediction
from backend.segmentation.prompts import Prompt, checked_phrase
from backend.segmentation.registry import EVERYTHING
from backend.segmentation.service import SegmentationService, get_segmentation, task_image_url

logger = logging.getLogger(__name__)


def category_prompts(config: LabelConfig, settings: Settings, task: dict | None = None) -> list[tuple[str, str]]:
    """(label, prompt text) pairs: every label of the mask controls, through CATEGORY_ALIASES; plus the
    task's PROMPT_FIELD text (e.g. a caption) as prompts for the first label."""
    aliases = settings.aliases
    pairs, seen = [], set()
    for control in config.outputs:
        for label in control.labels:
            if label in seen:
                continue
            seen.add(label)
            texts = aliases.get(label, label)
            for text in [texts] if isinstance(texts, str) else texts:
                pairs.append((label, str(text)))
    if len(pairs) > settings.max_prompt_phrases:
        raise ConfigError(f"the labeling config and CATEGORY_ALIASES give {len(pairs)} text prompts; at most "
                          f"MAX_PROMPT_PHRASES={settings.max_prompt_phrases}", "label_config")
    data = (task or {}).get("data") or {}
    extra = data.get(settings.prompt_field) if settings.prompt_field else None
    if isinstance(extra, str) and extra.strip() and pairs:
        where = f"task {(task or {}).get('id')} {settings.prompt_field}"
        texts = [t.strip() for t in extra.replace(";", ",").split(",") if t.strip()]
        if len(pairs) + len(texts) > settings.max_prompt_phrases:
            raise InputError(f"{len(texts)} phrases in the {settings.prompt_field} field; with the labels' "
                             f"{len(pairs)} at most MAX_PROMPT_PHRASES={settings.max_prompt_phrases}", where)
        label = config.outputs[0].labels[0] if len(config.outputs[0].labels) == 1 else None
        for text in texts:
            pairs.append((label or _closest_label(text, config), checked_phrase(text, where)))
    return pairs


def _closest_label(text: str, config: LabelConfig) -> str:
    """The label named in a free-text prompt ("a red car" -> "Car"), else the first label."""
    lowered = text.lower()
    for control in config.outputs:
        for label in control.labels:
            if label.lower() in lowered:
                return label
    return config.outputs[0].labels[0]


Route = Callable[[SegmentationService, TaskImage, LabelConfig, Settings, dict, str], list[Region]]


def labeled_prompts(config: LabelConfig, settings: Settings, task: dict) -> list[tuple[str, str]]:
    """category_prompts, refused when there is nothing to look for."""
    pairs = category_prompts(config, settings, task)
    if not pairs:
        raise ConfigError("the labeling config has no labels to detect", "label_config")
    return pairs


def box_regions(service: SegmentationService, image: TaskImage, config: LabelConfig, settings: Settings,
                task: dict, project_id: str) -> list[Region]:
    """PRELABEL_DETECTOR=boxes: DETECTOR_MODEL boxes for every category, each segmented by SAM_ENGINE (the
    project's fine-tuned decoder if any)."""
    pairs = labeled_prompts(config, settings, task)
    detector = get_detector(settings.detector_model, settings.device, settings.encoder_runtime,
                            str(Path(settings.model_dir) / "onnx"))
    started = time.perf_counter()
    found = detector.detect(image.pixels(settings), [text for _, text in pairs], settings.detector_threshold)
    service.counters.add("detector_runs", time.perf_counter() - started)
    found = non_max_suppression(found, group=lambda d: pairs[d.prompt][0])[: settings.max_detections]
    segmenter = service.segmenter_for(project_id)
    regions = []
    for detection in found:
        control, label = config.output_for(pairs[detection.prompt][0])
        result = service.segment(image, Prompt(box=np.array(detection.box, np.float32)), segmenter)
        regions.append(Region(control, label, result.mask, float(detection.score)))
    log_found(task.get("id"), [pairs[d.prompt][0] for d in found])
    return regions


def everything_regions(service: SegmentationService, image: TaskImage, config: LabelConfig, settings: Settings,
                       task: dict, project_id: str) -> list[Region]:
    """PRELABEL_MODE=everything: the engine's automatic masks, with the first label of the first mask control."""
    control = config.outputs[0]
    found = everything_masks(service, image, settings)
    return [Region(control, control.labels[0], mask, score) for mask, score in found]


def _concept_regions(*args) -> list[Region]:
    from backend.prelabel.concepts import concept_regions

    return concept_regions(*args)


ROUTES: dict[str, Route] = {"boxes": box_regions, "sam3": _concept_regions, "everything": everything_regions}


def route_name(settings: Settings) -> str:
    """PRELABEL_MODE=everything, else the PRELABEL_DETECTOR route of the categories mode."""
    return "everything" if settings.prelabel_mode == "everything" else settings.prelabel_detector


def prelabel_task(task: dict, config: LabelConfig, settings: Settings,
                  service: SegmentationService | None = None, project_id: str = "") -> dict:
    """One task's prediction: a mask (brush or polygons) per found object, labeled and scored."""
    service = service or get_segmentation()
    url, task_id = task_image_url(task, config)
    image = read_task_image(url, settings, task_id)  # a prefetched download comes from the image cache
    regions = ROUTES[route_name(settings)](service, image, config, settings, task, project_id)
    version = service.version_of(service.segmenter_for(project_id))
    return prediction(regions, version, settings.polygon_epsilon)


def log_found(task_id, labels: list[str]) -> None:
    counts = Counter(labels)
    logger.info("task %s: %s", task_id, ", ".join(f"{n} {label}" for label, n in counts.items()) or "nothing found")


def everything_masks(service: SegmentationService, image, settings: Settings) -> list[tuple[np.ndarray, float]]:
    """Automatic mask generation (a point grid) for configs without categories to detect."""
    if not service.engine.spec().can(EVERYTHING):
        raise ConfigError(f"PRELABEL_MODE=everything needs a SAM engine; SAM_ENGINE={settings.sam_engine} cannot "
                         "segment everything", "PRELABEL_MODE")
    segmenter = service.engine.get()
    found = segmenter.everything(image.pixels(settings), lambda: service.embedding(image), settings)
    return found[: settings.max_detections]


def prefetch_image(task: object, config: LabelConfig, settings: Settings) -> threading.Thread:
    """Download a task's image into the image cache (IMAGE_CACHE_DIR, shared by the machine's workers) in a
    background thread, so that its turn reads it from disk. Failures are left for that turn to report."""
    def fetch() -> None:
        try:
            url, task_id = task_image_url(task, config)
            read_task_image(url, settings, task_id)
        except Exception as exc:  # the task's own turn reports it with the task named
            logger.debug("prefetching an image failed: %s", exc)

    thread = threading.Thread(target=fetch, name="prefetch-image", daemon=True)
    thread.start()
    return thread


def optional_client(settings: Settings):
    """The Label Studio client, or None where LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY are not set."""
    return make_client(settings) if settings.label_studio_url and settings.label_studio_api_key else None


# ---------------------------------------------------------------- project-wide runs through the API
def task_job_key(project_id: int, task_id: int) -> str:
    """The queue key of a task's pre-labeling job: one active job per task (CLI runs and Retrieve Predictions)."""
    return f"prelabel:{project_id}:{task_id}"


def run_prelabel_task(project_id: int, task_id: int, label_config: str, prefetch: int | None = None) -> dict:
    """Job: pre-label one task and store the prediction in Label Studio (none when nothing is found, or when the
    task already has a non-empty prediction of this model version); the task's `backend_status` note (queued)
    is cleared, and a failure shown in its `backend_error`. `prefetch`: a task id queued after this one, whose
    image is downloaded meanwhile (into the cache the machine's workers share)."""
    from backend.prelabel.batch import FEATURE

    settings = get_settings()
    client = make_client(settings)
    config = parse_label_config(label_config)
    if prefetch is not None:
        threading.Thread(target=_prefetch_task, args=(client, project_id, prefetch, config, settings),
                         name="prefetch-task", daemon=True).start()
    task = read_task(client, project_id, task_id)
    try:
        prediction = prelabel_task(task, config, settings, project_id=str(project_id))
    except Exception as exc:
        reason = failure_text(exc, f"pre-labeling task {task_id}", logger)
        note_task(client, project_id, task_id, FEATURE, None if is_configuration_problem(exc) else reason)
        raise
    if has_note(task, FEATURE):
        note_task(client, project_id, task_id, FEATURE)
    if not prediction["result"]:
        return {"task": task_id, "status": "empty", "regions": 0}
    fresh = read_task(client, project_id, task_id)  # stored meanwhile (another job, a Retrieve Predictions)?
    if any(_of_version(p, prediction["model_version"]) for p in fresh["predictions"]):
        return {"task": task_id, "status": "done", "regions": len(prediction["result"]), "stored": False}
    call(f"task {task_id}", client.predictions.create, task=task_id, result=prediction["result"],
         score=prediction["score"], model_version=prediction["model_version"])
    return {"task": task_id, "status": "done", "regions": len(prediction["result"])}


def _of_version(prediction, model_version: str) -> bool:
    """Whether a prediction (an SDK record, or a dict in a task listing) is a non-empty one of `model_version`
    (read field by field: dumping every record of a project would copy all their masks)."""
    field = prediction.get if isinstance(prediction, dict) else lambda name: getattr(prediction, name, None)
    return field("model_version") == model_version and bool(field("result"))


def _prefetch_task(client, project_id: int, task_id: int, config: LabelConfig, settings: Settings) -> None:
    try:
        prefetch_image(read_task(client, project_id, task_id), config, settings).join()
    except Exception as exc:  # that task's own job reports it
        logger.debug("prefetching task %s failed: %s", task_id, exc)


def tasks_to_do(client, project_id: int, model_version: str) -> tuple[list[int], list[int]]:
    """(task ids without a non-empty prediction of `model_version`, ids that have one)."""
    done = {p.task for p in call(f"project {project_id}", client.predictions.list, project=project_id)
            if _of_version(p, model_version)}
    todo = [t["id"] for t in read_tasks(client, project_id) if t["id"] not in done]
    return todo, sorted(done)


def run_project(project_id: int, model_version: str, limit: int | None = None, progress=None,
                deadline: float | None = None) -> dict:
    """Pre-label a project: one queue job per task (RQ workers share the work), polled to the end or to
    `deadline` seconds (JOB_TIMEOUT), after which the tasks still pending count as failed."""
    from backend.core.jobs import get_queue

    settings = get_settings()
    deadline = settings.job_timeout if deadline is None else deadline
    client = make_client(settings)
    label_config = call(f"project {project_id}", client.projects.get, id=project_id).label_config
    todo, done = tasks_to_do(client, project_id, model_version)
    todo = todo[:limit] if limit else todo
    report: dict = {"project": project_id, "model_version": model_version, "done": 0, "empty": 0,
                    "skipped": len(done), "failed": 0, "errors": {}}
    queue = get_queue()
    following = {task_id: todo[i + 1] if i + 1 < len(todo) else None for i, task_id in enumerate(todo)}
    jobs = {queue.enqueue_once(task_job_key(project_id, task_id), "backend.prelabel.run.run_prelabel_task",
                               project_id, task_id, label_config, following[task_id]): task_id for task_id in todo}
    started = time.perf_counter()
    pending, pause = dict(jobs), 0.2
    try:
        while pending and time.perf_counter() - started < deadline:
            for job_id in list(pending):
                status = queue.status(job_id)
                if status["status"] in ("finished", "failed", "unknown", "stopped", "canceled"):
                    _count(report, pending.pop(job_id), status)
                    if progress:
                        progress(len(jobs) - len(pending), len(jobs))
            if pending:
                time.sleep(min(pause, max(0.0, deadline - (time.perf_counter() - started))))
                pause = min(pause * 1.5, 2.0)  # long runs poll every 2 s
    except KeyboardInterrupt:  # Ctrl-C: no new task starts; the ones running finish; the report says which
        report["interrupted"] = {"canceled": 0, "running": []}
        for job_id, task_id in list(pending.items()):
            if queue.cancel(job_id):
                report["interrupted"]["canceled"] += 1
                pending.pop(job_id)
            else:
                report["interrupted"]["running"].append(task_id)
        report["seconds"] = round(time.perf_counter() - started, 1)
        return report
    for job_id, task_id in pending.items():
        report["failed"] += 1
        report["errors"][str(task_id)] = f"job {job_id}: no answer within {deadline:g} s (JOB_TIMEOUT)"
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


def _count(report: dict, task_id: int, status: dict) -> None:
    """Count one ended job in a project run's report."""
    outcome = (status.get("result") or {}).get("status") if status["status"] == "finished" else None
    if outcome == "empty":
        report["empty"] += 1
    elif status["status"] == "finished":
        report["done"] += 1
    else:
        report["failed"] += 1
        report["errors"][str(task_id)] = status.get("error") or status["status"]


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    parser = argparse.ArgumentParser(prog="python -m backend prelabel", description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=int, required=True)
    parser.add_argument("--limit", type=int, help="at most N tasks this run")
    parser.add_argument("--model-version", help="default: the backend's current model version")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    version = args.model_version or project_model_version(get_settings(), args.project)
    bar = tqdm(unit="task", desc=f"pre-labeling project {args.project}")

    def progress(finished: int, total: int) -> None:
        bar.total = total
        bar.n = finished
        bar.refresh()

    try:
        report = run_project(args.project, version, args.limit, progress)
    except KeyboardInterrupt:  # before any job was queued
        print("interrupted before any task was queued", file=sys.stderr)
        return 130
    bar.close()
    if "interrupted" in report:  # a second Ctrl-C quits at once, without waiting for the running tasks
        signal.signal(signal.SIGINT, lambda *_: os._exit(130))
        running = report["interrupted"]["running"]
        print(f"interrupted: {report['interrupted']['canceled']} queued tasks canceled"
              + (f", waiting for {len(running)} running (Ctrl-C again to quit now)" if running else ""),
              file=sys.stderr, flush=True)
    print(json.dumps(report, indent=2), flush=True)
    return 130 if "interrupted" in report else 1 if report["failed"] else 0
