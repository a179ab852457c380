"""From Label Studio tasks to training samples: which labeling to use, its regions as masks, the split."""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field

import numpy as np

from backend.core.label_config import LabelConfig
from backend.segmentation.masks import region_mask

logger = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")
MASK_TYPES = ("brushlabels", "polygonlabels")


@dataclass
class Instance:
    """One region: its class, its mask (image size) and, for a polygon region, its points in pixels."""

    label: str
    mask: np.ndarray
    polygon: np.ndarray | None = None  # N x 2 pixel coordinates (polygon regions only)


@dataclass
class Sample:
    """One task to export: where its labeling came from and its instances."""

    task_id: int
    image_url: str
    split: str
    source: str  # "annotation <id>" or "prediction <model version>"
    regions: list[dict] = field(default_factory=list)  # Label Studio results (brush / polygon)


@dataclass(frozen=True)
class Options:
    """What goes into an export (the CLI's flags)."""

    predictions: bool = False  # tasks without an annotation use their latest model version's prediction
    synthetic: str = "include"  # include | exclude | only (tasks with data.synthetic)
    labels: tuple[str, ...] = ()  # a subset of the config's labels (empty: all)
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train / val / test


def class_names(config: LabelConfig, options: Options) -> list[str]:
    """The classes in the labeling config's order (brush and polygon controls), limited to `options.labels`."""
    names = list(dict.fromkeys(label for control in config.outputs for label in control.labels))
    if options.labels:
        unknown = sorted(set(options.labels) - set(names))
        if unknown:
            raise ValueError(f"labels {unknown} are not in the labeling config (it has {names})")
        names = [name for name in names if name in options.labels]
    return names


def split_of(task_id: int, ratios: tuple[float, float, float]) -> str:
    """A task's split, fixed by its id (stable across runs and machines, independent of the other tasks)."""
    position = zlib.crc32(f"task-{task_id}".encode()) / 2**32
    total = sum(ratios)
    bound = 0.0
    for name, ratio in zip(SPLITS, ratios, strict=True):
        bound += ratio / total
        if position < bound:
            return name
    return SPLITS[-1]


def _as_dict(item) -> dict:
    if isinstance(item, dict):
        return item
    return item.model_dump() if hasattr(item, "model_dump") else dict(item)


def chosen_labeling(task: dict, options: Options) -> tuple[str, list[dict]] | None:
    """(source, results): the task's latest submitted annotation (not skipped), else with `predictions` its
    prediction of the newest model version; None when it has neither."""
    annotations = [_as_dict(a) for a in task.get("annotations") or []]
    annotations = [a for a in annotations if not a.get("was_cancelled")]
    if annotations:
        latest = max(annotations, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""),
                                                 a.get("id") or 0))
        return f"annotation {latest.get('id')}", list(latest.get("result") or [])
    if options.predictions:
        predictions = [_as_dict(p) for p in task.get("predictions") or []]
        if predictions:
            latest = max(predictions, key=lambda p: (str(p.get("created_at") or ""), p.get("id") or 0))
            return f"prediction {latest.get('model_version') or latest.get('id')}", list(latest.get("result") or [])
    return None


def is_synthetic(task: dict) -> bool:
    return bool((task.get("data") or {}).get("synthetic"))


def select_samples(tasks: list[dict], config: LabelConfig, options: Options) -> list[Sample]:
    """The tasks to export, in id order, with their labeling's mask regions and split."""
    samples = []
    numbered = [t for t in tasks if isinstance(t.get("id"), int) and not isinstance(t.get("id"), bool)]
    if len(numbered) < len(tasks):  # ids name the exported files: only Label Studio's integer ids are used
        logger.warning("%d tasks without an integer id left out", len(tasks) - len(numbered))
    for task in sorted(numbered, key=lambda t: t["id"]):
        synthetic = is_synthetic(task)
        if (options.synthetic == "exclude" and synthetic) or (options.synthetic == "only" and not synthetic):
            continue
        chosen = chosen_labeling(task, options)
        if chosen is None:
            continue
        source, results = chosen
        regions = [r for r in results if r.get("type") in MASK_TYPES]
        url = (task.get("data") or {}).get(config.image_key)
        samples.append(Sample(task["id"], url, split_of(task["id"], options.ratios), source, regions))
    return samples


def region_label(region: dict) -> str | None:
    labels = (region.get("value") or {}).get(region.get("type")) or []
    return labels[0] if labels else None


def instances(sample: Sample, height: int, width: int, classes: list[str]) -> tuple[list[Instance], list[str]]:
    """The sample's regions as masks (classes outside `classes` left out); the reasons of regions skipped."""
    found, skipped = [], []
    for index, region in enumerate(sample.regions):
        label = region_label(region)
        if label not in classes:
            continue
        try:
            mask = region_mask(region, height, width)
        except ValueError as exc:
            skipped.append(f"task {sample.task_id} region {index}: {exc}")
            continue
        polygon = None
        if region["type"] == "polygonlabels":
            points = np.array(region["value"]["points"], np.float64)
            polygon = points * np.array([width / 100.0, height / 100.0])
        found.append(Instance(label, mask, polygon))
    return found, skipped
