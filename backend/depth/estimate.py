"""Depth Anything depth maps stored as task data: `depth` (colour preview URL), `depth_raw`, `depth_meta`.

    python -m backend depth --project 3 [--task 17 ...] [--force]

Relative models give a 16-bit PNG (inverse relative depth, min..max of the map stretched to 0..65535;
`depth_meta` holds min/max); metric models (the Metric-Indoor/Outdoor variants) give a float32 .npy in
metres. A task whose data already has `depth` is left alone (a depth map can be given with the data).
A task that carries a low-resolution metric depth (a sensor's, in DEPTH_PROMPT_FIELD; or, with --force, the
metric `depth_raw` of an earlier run) goes through Prompt Depth Anything instead: image + prompt depth ->
metric depth at the image's resolution; `depth_meta.source` says what each map was made from.
Files are written before the task is updated, and the update merges into the task's current data, so
a failure leaves the task as it was.
"""

from __future__ import annotations

import argparse
import io
import logging
import threading

import cv2
import numpy as np
from PIL import Image

from backend.core.errors import BackendError
from backend.core.logs import failure_text
from backend.core.model_cache import ModelCache
from backend.core.pretrained import from_pretrained, public_name, resolve_device
from backend.core.settings import Settings, get_settings
from backend.depth.depth_map import DepthMap
from backend.depth.prompt_depth import get_prompt_estimator, read_prompt_depth
from backend.io.images import read_task_image
from backend.io.ls_client import call, make_client, note_task, read_task, read_tasks, without_note
from backend.io.storage import LocalStorage, S3Storage, make_storage

logger = logging.getLogger(__name__)
FIELDS = ("depth", "depth_raw", "depth_meta")


class DepthEstimator:
    """A transformers depth-estimation model (Depth Anything V1/V2, any size) from a hub id or a folder."""

    def __init__(self, name: str, device: str = "cpu"):
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        def load(path: str):
            return AutoImageProcessor.from_pretrained(path), AutoModelForDepthEstimation.from_pretrained(path).eval()

        self.processor, self.model = from_pretrained(load, name, "depth model", "DEPTH_MODEL",
                                                     "depth-anything/Depth-Anything-V2-Small-hf")
        self.device = resolve_device(device)
        self.model.to(self.device)
        self.name = name
        self.metric = getattr(self.model.config, "depth_estimation_type", "relative") == "metric"
        self._lock = threading.Lock()

    def estimate(self, image: np.ndarray) -> DepthMap:
        import torch

        inputs = self.processor(images=image, return_tensors="pt", input_data_format="channels_last")
        inputs = inputs.to(self.device)
        with self._lock, torch.inference_mode():
            output = self.model(**inputs)
        depth = self.processor.post_process_depth_estimation(output, target_sizes=[image.shape[:2]])
        values = depth[0]["predicted_depth"].float().cpu().numpy().astype(np.float32)
        return DepthMap(values, self.metric, self.name)


_estimators: ModelCache[DepthEstimator] = ModelCache(DepthEstimator)


def get_estimator(settings: Settings) -> DepthEstimator:
    return _estimators.get(settings.depth_model, settings.device)


def png16(depth: np.ndarray) -> tuple[bytes, float, float]:
    """Depth stretched min..max to a 16-bit grayscale PNG; (bytes, min, max)."""
    low, high = float(depth.min()), float(depth.max())
    scaled = (depth - low) / (high - low) if high > low else np.zeros_like(depth)
    ok, data = cv2.imencode(".png", np.round(scaled * 65535).astype(np.uint16))
    if not ok:
        raise BackendError("PNG encoding of the depth map failed", "depth")
    return data.tobytes(), low, high


def preview(depth: np.ndarray, metric: bool) -> bytes:
    """A colour-mapped PNG (near = bright: relative maps are inverse depth, metric ones are flipped)."""
    low, high = float(depth.min()), float(depth.max())
    scaled = (depth - low) / (high - low) if high > low else np.zeros_like(depth)
    if metric:
        scaled = 1 - scaled
    colours = cv2.applyColorMap(np.round(scaled * 255).astype(np.uint8), cv2.COLORMAP_INFERNO)
    buffer = io.BytesIO()
    Image.fromarray(cv2.cvtColor(colours, cv2.COLOR_BGR2RGB)).save(buffer, format="PNG")
    return buffer.getvalue()


def depth_outputs(task_id: int, image_key: str, depth: DepthMap, storage: LocalStorage | S3Storage) -> dict:
    """Write the files of one task's depth; the task data fields that point to them."""
    raw_bytes, low, high = png16(depth.depth)
    if depth.metric:
        buffer = io.BytesIO()
        np.save(buffer, depth.depth)
        raw_path, raw_url = storage.save(f"depth/{task_id}_{image_key}.npy", buffer.getvalue())
    else:
        raw_path, raw_url = storage.save(f"depth/{task_id}_{image_key}.png", raw_bytes)
    _, preview_url = storage.save(f"depth/{task_id}_{image_key}_preview.png", preview(depth.depth, depth.metric))
    meta = {"model": public_name(depth.model), "kind": "metric" if depth.metric else "relative",
            "unit": "m" if depth.metric else "relative inverse depth (larger is nearer)",
            "min": round(low, 6), "max": round(high, 6), "width": int(depth.depth.shape[1]),
            "height": int(depth.depth.shape[0]), "raw_format": raw_path.suffix.lstrip(".")}
    return {"depth": preview_url, "depth_raw": raw_url, "depth_meta": meta}


def depth_for_task(task: dict, settings: Settings, image_key: str = "image", force: bool = False,
                   storage: LocalStorage | S3Storage | None = None) -> dict | None:
    """The depth fields for a task, or None when it already has depth (BackendError on a bad image/storage)."""
    data = task.get("data") or {}
    if data.get("depth") and not force:
        return None
    if image_key not in data:
        raise BackendError(f"task data has no field '{image_key}'", f"task {task.get('id')}")
    image = read_task_image(data[image_key], settings, task.get("id")).pixels(settings)
    prompt = prompt_depth_of(task, settings)
    if prompt is None:
        depth, source = get_estimator(settings).estimate(image), "image"
    else:
        values, field = prompt
        depth, source = get_prompt_estimator(settings).estimate(image, values), f"image + {field}"
    fields = depth_outputs(int(task.get("id") or 0), image_key, depth, storage or make_storage(settings))
    fields["depth_meta"]["source"] = source
    return fields


def prompt_depth_of(task: dict, settings: Settings) -> tuple[np.ndarray, str] | None:
    """The low-resolution metric depth a task carries, and the field it came from: a sensor's map in
    DEPTH_PROMPT_FIELD, else a metric `depth_raw` an earlier depth job wrote. None: the task has none."""
    data = task.get("data") or {}
    url = data.get(settings.depth_prompt_field) if settings.depth_prompt_field else None
    if isinstance(url, str) and url.strip():
        return read_prompt_depth(url, settings, task.get("id")), settings.depth_prompt_field
    meta = data.get("depth_meta")
    if isinstance(data.get("depth_raw"), str) and isinstance(meta, dict) and meta.get("kind") == "metric":
        return read_prompt_depth(data["depth_raw"], settings, task.get("id")), "depth_raw"
    return None


def run_depth_task(project_id: int, task_id: int, image_key: str = "image", force: bool = False, client=None,
                   storage: LocalStorage | S3Storage | None = None) -> dict:
    """Job: compute and store one task's depth through the Label Studio API (a project run passes its one
    API client and storage). A failure is also shown in the task's `backend_error` data field."""
    settings = get_settings()
    client = client or make_client(settings)
    task = read_task(client, project_id, task_id)
    try:
        fields = depth_for_task(task, settings, image_key, force, storage)
    except Exception as exc:  # whatever it is, it is this task's: noted on it, and the project run goes on
        reason = failure_text(exc, f"depth for task {task_id}", logger)
        note_task(client, project_id, task_id, "depth", reason)
        if isinstance(exc, BackendError):
            raise
        raise BackendError(reason, f"task {task_id}") from exc
    if fields is None:
        return {"task": task_id, "status": "skipped", "reason": "already has depth"}
    current = without_note(read_task(client, project_id, task_id)["data"], "depth")  # the freshest data
    call(f"task {task_id}", client.tasks.update, id=task_id, data={**current, **fields})
    return {"task": task_id, "status": "done", "depth": fields["depth"]}


def run_depth_project(project_id: int, image_key: str = "image", force: bool = False, progress=None,
                      task_ids: list[int] | None = None) -> dict:
    """Job: depth for every task of a project (or those in `task_ids`); counts of done / skipped / failed
    (with reasons)."""
    settings = get_settings()
    client = make_client(settings)
    storage = make_storage(settings)
    task_ids = task_ids or [t["id"] for t in read_tasks(client, project_id)]
    report: dict = {"project": project_id, "done": 0, "skipped": 0, "failed": 0, "errors": {}}
    for index, task_id in enumerate(task_ids, 1):
        try:
            result = run_depth_task(project_id, task_id, image_key, force, client, storage)
            report["done" if result["status"] == "done" else "skipped"] += 1
        except Exception as exc:  # one task's failure, of any kind, never stops the others
            report["failed"] += 1
            report["errors"][str(task_id)] = failure_text(exc, f"depth for task {task_id}", logger)
            logger.warning("depth for task %s failed: %s", task_id, report["errors"][str(task_id)])
        logger.info("depth: project %s, %d/%d tasks", project_id, index, len(task_ids))
        if progress:
            progress(index, len(task_ids))
    return report


def main(argv: list[str] | None = None) -> int:
    import json

    from tqdm import tqdm

    parser = argparse.ArgumentParser(description="Depth Anything depth maps for Label Studio tasks")
    parser.add_argument("--project", type=int, required=True)
    parser.add_argument("--task", type=int, action="append", help="only this task (repeat for more)")
    parser.add_argument("--image-key", default="image", help="the task data field of the image")
    parser.add_argument("--force", action="store_true", help="recompute tasks that already have depth")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    bar = tqdm(unit="task")

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(1)

    report = run_depth_project(args.project, args.image_key, args.force, progress, args.task)
    bar.close()
    print(json.dumps(report, indent=2))
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
