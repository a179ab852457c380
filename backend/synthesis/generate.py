"""Synthetic labeled samples: an annotation on a generation task becomes new, pre-labeled tasks.

The annotator marks a region (brush or rectangle) with the class of the new object, writes a prompt
and a negative prompt, picks the number of samples, the engine and the mode (label_configs/synthesis.xml).
Submitting it reaches `fit`, which queues `run_generation`; each sample is inpainted, saved to
storage, and imported into the project (or SYNTHESIS_TARGET_PROJECT) as a new task with a prediction:
the generated object's mask (the segmenter re-run on the new image inside the region) with its label,
and the provenance (source task, prompt, engine, seed) in the task data. In remove mode the cleaned
image is imported without that label. A failed generation is written to the source task's `meta`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cv2
import numpy as np

from backend.core.errors import BackendError, InputError
from backend.core.label_config import parse_label_config
from backend.core.settings import Settings, get_settings
from backend.io.images import TaskImage, read_task_image
from backend.io.ls_client import ERROR_FIELD, call, make_client, note_task, read_task
from backend.io.storage import make_storage
from backend.segmentation.masks import bounding_box, mask_results, region_mask
from backend.segmentation.prompts import Prompt
from backend.segmentation.service import get_segmentation
from backend.synthesis.inpainting import ENGINES, InpaintRequest, get_inpainter, inpaint, use_generator

logger = logging.getLogger(__name__)
MODES = ("add", "remove")


@dataclass(frozen=True)
class GenerationRequest:
    label: str | None
    prompt: str
    negative_prompt: str
    samples: int
    engine: str
    mode: str
    mask: np.ndarray  # region, image pixels


def is_generation_annotation(annotation: dict) -> bool:
    return any(r.get("from_name") == "prompt" and r.get("type") == "textarea" for r in annotation.get("result") or [])


def _text(value: dict) -> str:
    text = value.get("text")
    return " ".join(text) if isinstance(text, list) else str(text or "")


def parse_generation(annotation: dict, height: int, width: int, settings: Settings) -> GenerationRequest:
    """Read the region, label, texts and choices of a generation annotation (InputError says what is wrong)."""
    mask = np.zeros((height, width), bool)
    label, prompt, negative, samples = None, "", "", 1
    engine, mode = settings.synthesis_engine, "add"
    for result in annotation.get("result") or []:
        value, name, kind = result.get("value") or {}, result.get("from_name"), result.get("type")
        if kind in ("brushlabels", "polygonlabels"):
            try:
                mask |= region_mask(result, height, width)
            except ValueError as exc:
                raise InputError(f"region unusable: {exc}", f"annotation {annotation.get('id')}")
            label = (value.get(kind) or [label])[0]
        elif kind == "rectanglelabels":
            x0, y0 = value.get("x", 0) * width / 100, value.get("y", 0) * height / 100
            x1, y1 = x0 + value.get("width", 0) * width / 100, y0 + value.get("height", 0) * height / 100
            mask[int(max(y0, 0)):int(np.ceil(min(y1, height))), int(max(x0, 0)):int(np.ceil(min(x1, width)))] = True
            label = (value.get("rectanglelabels") or [label])[0]
        elif kind == "textarea" and name == "prompt":
            prompt = _text(value)
        elif kind == "textarea" and name == "negative_prompt":
            negative = _text(value)
        elif kind == "number" and name == "samples":
            samples = int(value.get("number") or 1)
        elif kind == "choices" and name in ("engine", "mode"):
            choice = (value.get("choices") or [""])[0].lower()
            if name == "engine":
                engine = choice
            else:
                mode = choice
    where = f"annotation {annotation.get('id')}"
    if not mask.any():
        raise InputError("mark the region to inpaint with a brush or a rectangle", where)
    if engine not in ENGINES:
        raise InputError(f"unknown engine {engine!r}; use one of {list(ENGINES)}", where)
    if mode not in MODES:
        raise InputError(f"unknown mode {mode!r}; use add or remove", where)
    if mode == "add" and not prompt.strip():
        raise InputError("write what should appear in the region (the prompt)", where)
    if not 1 <= samples <= settings.synthesis_max_samples:
        raise InputError(f"samples must be 1..{settings.synthesis_max_samples}, got {samples}", where)
    if mode == "remove" and not prompt.strip():
        prompt = settings.synthesis_remove_prompt
    return GenerationRequest(label, prompt, negative, samples, engine, mode, mask)


def refine_mask(image: TaskImage, region: np.ndarray) -> np.ndarray:
    """The generated object's mask: the segmenter with the region's box, kept inside the region."""
    box = np.array(bounding_box(region), np.float32)
    result = get_segmentation().segment(image, Prompt(box=box))
    mask = result.mask & region
    return mask if mask.sum() >= 0.05 * region.sum() else region  # the segmenter lost it: keep the region


def generate_samples(task: dict, annotation: dict, label_config: str, settings: Settings,
                     project_id: int | None = None) -> list[dict]:
    """The new tasks (data + prediction) for one generation annotation, made with the project's active domain
    LoRA of the engine if it has one (its version goes into each sample's `synthetic.generator`)."""
    config = parse_label_config(label_config)
    url = (task.get("data") or {}).get(config.image_key)
    if not isinstance(url, str):
        raise InputError(f"task data has no field '{config.image_key}'", f"task {task.get('id')}")
    image = read_task_image(url, settings, task.get("id")).pixels(settings)
    height, width = image.shape[:2]
    request = parse_generation(annotation, height, width, settings)
    inpainter = get_inpainter(request.engine, settings)
    storage = make_storage(settings)
    control, label = (config.output_for(request.label) if request.mode == "add" else (None, None))
    new_tasks = []
    for index in range(request.samples):
        seed = settings.synthesis_seed + index
        guidance = settings.synthesis_guidance or (7.5 if request.engine == "sd2" else 4.0)
        params = InpaintRequest(request.prompt, request.negative_prompt, seed, settings.synthesis_steps, guidance,
                                settings.synthesis_size)
        with inpainter.lock:
            generator = use_generator(inpainter, project_id, settings) or "base"
            painted, region = inpaint(image, request.mask, inpainter, params, settings.synthesis_dilate,
                                      settings.synthesis_feather)
        png = cv2.imencode(".png", cv2.cvtColor(painted, cv2.COLOR_RGB2BGR))[1].tobytes()
        name = f"synthetic/{task.get('id')}_{annotation.get('id')}_{request.engine}_{seed}.png"
        _, image_url = storage.save(name, png)
        data = {config.image_key: image_url, "synthetic": {
            "source_task": task.get("id"), "source_annotation": annotation.get("id"), "prompt": request.prompt,
            "negative_prompt": request.negative_prompt, "engine": request.engine, "seed": seed,
            "mode": request.mode, "steps": params.steps, "guidance": params.guidance, "generator": generator}}
        results = []
        if request.mode == "add":
            results = mask_results(refine_mask(TaskImage(png, name), region), 1.0, control, label,
                                   settings.polygon_epsilon)
        new_tasks.append({"data": data, "predictions": [
            {"model_version": f"synthesis-{request.engine}", "score": 1.0, "result": results}]})
        logger.info("annotation %s: sample %d/%d generated (%s, seed %d)", annotation.get("id"), index + 1,
                    request.samples, request.engine, seed)
    return new_tasks


def run_generation(project_id: int, task_id: int, annotation_id: int) -> dict:
    """Job: generate the samples of one annotation and import them; a failure is shown on the source task
    (its `backend_error` data field, a Data Manager column), a success clears it."""
    settings = get_settings()
    client = make_client(settings)
    try:
        project = call(f"project {project_id}", client.projects.get, id=project_id)
        task = read_task(client, project_id, task_id)
        annotation = call(f"annotation {annotation_id}", client.annotations.get, id=annotation_id)
        new_tasks = generate_samples(task, {"id": annotation.id, "result": annotation.result},
                                     project.label_config, settings, project_id)
        target = settings.synthesis_target_project or project_id
        call(f"project {target}", client.projects.import_tasks, id=target, request=new_tasks)
        logger.info("annotation %s: %d synthetic tasks imported into project %s", annotation_id, len(new_tasks),
                    target)
        if ERROR_FIELD in task["data"]:
            note_task(client, project_id, task_id, "synthesis")
        return {"annotation": annotation_id, "status": "done", "tasks": len(new_tasks), "project": target}
    except BackendError as exc:
        logger.warning("generation for annotation %s failed: %s", annotation_id, exc)
        note_task(client, project_id, task_id, "synthesis", f"annotation {annotation_id}: {exc}")
        raise
