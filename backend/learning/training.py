"""Fine-tune SAM's mask decoder on a project's own annotations: the learning half of `fit`.

The image encoder and prompt encoder stay frozen (so cached embeddings stay valid and a version is a
few MB); the mask decoder learns from prompts simulated on the team's masks with the evaluation's
click protocol. A validation split scores every epoch; the best epoch is kept, training stops early
when it stops improving, and the new version becomes active only if it beats the current one on a
held-out split that neither trained it nor picked its epoch.

    python -m backend train --project 3            # train now (as the job does)
    python -m backend train --project 3 --list     # versions and scores
    python -m backend train --project 3 --activate v2   # roll back / forward (--activate base)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import fcntl
import logging
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from backend.core.errors import BackendError
from backend.core.settings import Settings, get_settings
from backend.core.versions import ModelVersions
from backend.evaluation.clicks import mask_iou, next_click
from backend.io.images import read_task_image
from backend.learning.annotations import AnnotationStore, StoredAnnotation
from backend.segmentation.masks import bounding_box, region_mask
from backend.segmentation.prompts import Prompt
from backend.segmentation.registry import TRAINABLE_DECODER
from backend.segmentation.segmenter import Embedding

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int = 20
    patience: int = 3  # epochs without validation gain before stopping
    learning_rate: float = 5e-5
    prompts_per_step: int = 4  # simulated prompts per image per step
    val_fraction: float = 0.2  # picks the best epoch and stops early
    holdout_fraction: float = 0.2  # judges activation only: never seen by training or epoch selection
    min_holdout: int = 2  # regions
    min_examples: int = 5
    seed: int = 0


@dataclass
class Example:
    name: str  # "<annotation id>/<region index>"
    embedding: Embedding
    mask: np.ndarray  # bool, original image size


# ---------------------------------------------------------------- annotations -> examples
def collect_examples(items: list[StoredAnnotation], service, settings: Settings) -> tuple[list[Example], list[str]]:
    """Examples (one per region) with their cached embeddings, and the reasons of what was skipped."""
    examples, skipped = [], []
    for item in items:
        annotation_id = item.annotation.get("id")
        regions = [r for r in item.result if r.get("type") in ("brushlabels", "polygonlabels")]
        if not regions:
            continue
        try:
            image = read_task_image(item.task["data"][item.image_key], settings, item.task.get("id"))
            embedding = service.embedding(image)
        except (BackendError, KeyError, TypeError) as exc:
            skipped.append(f"annotation {annotation_id}: image unusable ({exc})")
            continue
        height, width = embedding.original_size
        for index, result in enumerate(regions):
            try:
                examples.append(Example(f"{annotation_id}/{index}", embedding, region_mask(result, height, width)))
            except ValueError as exc:
                skipped.append(f"annotation {annotation_id} region {index}: {exc}")
    for reason in skipped:
        logger.warning("training skips %s", reason)
    return examples, skipped


def split(examples: list[Example], config: TrainingConfig) -> tuple[list[Example], list[Example], list[Example]]:
    """(train, validation, held-out): a stable split by annotation id (regions of one annotation stay
    together). Held-out gets at least `min_holdout` regions and validation at least one."""
    groups: dict[str, list[Example]] = {}
    for example in examples:
        groups.setdefault(example.name.split("/")[0], []).append(example)
    order = sorted(groups, key=lambda name: (zlib.crc32(name.encode()), name))
    want_holdout = max(config.min_holdout, round(config.holdout_fraction * len(examples)))
    want_val = max(1, round(config.val_fraction * len(examples)))
    holdout: list[Example] = []
    val: list[Example] = []
    train: list[Example] = []
    for name in order:
        target = holdout if len(holdout) < want_holdout else val if len(val) < want_val else train
        target.extend(groups[name])
    return train, val, holdout


# ---------------------------------------------------------------- prompts and targets
def simulate_prompts(mask: np.ndarray, rng: np.random.Generator, count: int) -> list[Prompt]:
    """Single clicks drawn inside the object (deeper points likelier), and jittered boxes."""
    distance = cv2.distanceTransform(np.pad(mask.astype(np.uint8), 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    weights = distance.ravel() ** 2
    weights = weights / weights.sum()
    prompts = []
    x0, y0, x1, y1 = bounding_box(mask)
    for index in range(count):
        if index % 2 == 0:
            flat = rng.choice(weights.size, p=weights)
            y, x = divmod(int(flat), mask.shape[1])
            prompts.append(Prompt(points=np.array([[x + 0.5, y + 0.5]], np.float32), labels=np.array([1])))
        else:
            jitter = 0.05 * np.array([x1 - x0, y1 - y0, x1 - x0, y1 - y0]) * rng.standard_normal(4)
            box = np.array([x0, y0, x1, y1], np.float32) + jitter.astype(np.float32)
            prompts.append(Prompt(box=box))
    return prompts


def mask_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-mask BCE + Dice (logits, target: ...xHxW)."""
    bce = F.binary_cross_entropy_with_logits(logits, target.expand_as(logits), reduction="none").mean((-2, -1))
    prob = logits.sigmoid()
    inter = (prob * target).sum((-2, -1))
    dice = 1 - (2 * inter + 1) / (prob.sum((-2, -1)) + target.sum((-2, -1)) + 1)
    return bce + dice


# ---------------------------------------------------------------- training
def validation_iou(segmenter, examples: list[Example]) -> float:
    """Mean IoU of the protocol's first click and of the tight box, through the serving decoder."""
    scores = []
    for example in examples:
        click = next_click(None, example.mask)
        prompts = [Prompt(points=np.array([[click.x + 0.5, click.y + 0.5]], np.float32), labels=np.array([1])),
                   Prompt(box=np.array(bounding_box(example.mask), np.float32))]
        scores += [mask_iou(segmenter.decode(example.embedding, p).mask, example.mask) for p in prompts]
    return float(np.mean(scores)) if scores else 0.0


def train_step(segmenter, decoder, example: Example, prompts: list[Prompt], target: torch.Tensor) -> torch.Tensor:
    """The loss of one image's prompts (clicks train the 3 ambiguity masks, boxes the single mask), through the
    engine's own decoder call (`decoder_logits`), so every family with a trainable decoder trains the same way."""
    device = segmenter.device
    losses = []
    for prompt in prompts:
        multimask = prompt.is_single_click
        logits, iou_pred = segmenter.decoder_logits(decoder, example.embedding, [prompt], multimask)
        per_mask = mask_loss(logits[0], target.to(device))
        with torch.no_grad():
            hard = (logits[0] > 0).float()
            t = (target.to(device) > 0.5).float()
            true_iou = (hard * t).sum((-2, -1)) / ((hard + t).clamp(max=1).sum((-2, -1)) + 1e-6)
        losses.append(per_mask.min() + F.mse_loss(iou_pred[0], true_iou))
    return torch.stack(losses).mean()


def train_decoder(segmenter, train: list[Example], val: list[Example], config: TrainingConfig) -> tuple[dict, dict]:
    """Fine-tune a copy of the segmenter's decoder; (best decoder state, report)."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    decoder = segmenter.trainable_decoder()  # the encoders stay frozen and shared
    base_state = copy.deepcopy(decoder.state_dict())
    targets = [segmenter.logits_target(e.mask, e.embedding) for e in train]
    before = validation_iou(segmenter, val)
    best_state, best, stale, history = base_state, before, 0, []
    trainable = [parameter for parameter in decoder.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=1e-4)
    started = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        decoder.train()
        order = rng.permutation(len(train))
        total = 0.0
        for index in order:
            prompts = simulate_prompts(train[index].mask, rng, config.prompts_per_step)
            loss = train_step(segmenter, decoder, train[index], prompts, targets[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
        decoder.eval()
        score = validation_iou(segmenter.with_decoder(decoder.state_dict(), "candidate"), val)
        history.append({"epoch": epoch, "loss": round(total / max(1, len(train)), 4), "val_iou": round(score, 4)})
        logger.info("training epoch %d/%d: loss %.4f, validation IoU %.4f (before %.4f)",
                    epoch, config.epochs, history[-1]["loss"], score, before)
        if score > best + 1e-4:
            best, best_state, stale = score, copy.deepcopy(decoder.state_dict()), 0
        else:
            stale += 1
            if stale >= config.patience:
                break
    report = {"val_iou_before": round(before, 4), "val_iou_after": round(best, 4), "epochs": history,
              "train_examples": len(train), "val_examples": len(val),
              "seconds": round(time.perf_counter() - started, 1)}
    return best_state, report


@contextlib.contextmanager
def project_lock(folder: Path):
    """One training per project at a time (across processes); raises BlockingIOError when taken."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "train.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def train_project(project_id: str, config: TrainingConfig | None = None, settings: Settings | None = None) -> dict:
    """The training job: the project's stored annotations -> a new decoder version (active if better)."""
    from backend.segmentation.service import get_segmentation

    settings = settings or get_settings()
    config = config or TrainingConfig(epochs=settings.train_epochs)
    service = get_segmentation()
    segmenter = service.engine.get()
    if not service.engine.spec().can(TRAINABLE_DECODER):
        return {"project": project_id, "status": "skipped", "reason": f"{settings.sam_engine} has no trainable decoder"}
    versions = ModelVersions(settings.model_dir, project_id)
    try:
        with project_lock(versions.folder):
            current = service.segmenter_for(project_id)
            items = AnnotationStore(settings.model_dir).load(project_id)
            examples, skipped = collect_examples(items, service, settings)
            if len(examples) < config.min_examples:
                return {"project": project_id, "status": "skipped", "skipped": skipped,
                        "reason": f"{len(examples)} usable regions, {config.min_examples} needed"}
            train, val, holdout = split(examples, config)
            if not train:
                return {"project": project_id, "status": "skipped", "skipped": skipped,
                        "reason": f"{len(examples)} usable regions leave none to train on after validation "
                                  f"({len(val)}) and held-out ({len(holdout)})"}
            logger.info("project %s: training on %d regions, validating on %d, %d held out", project_id,
                        len(train), len(val), len(holdout))
            state, report = train_decoder(current, train, val, config)
            # Activation is judged on regions that neither trained the decoder nor picked its epoch.
            report["holdout_iou_before"] = round(validation_iou(current, holdout), 4)
            report["holdout_iou_after"] = round(validation_iou(current.with_decoder(state, "candidate"), holdout), 4)
            report["holdout_examples"] = len(holdout)
            improved = report["holdout_iou_after"] > report["holdout_iou_before"]
            base = getattr(current, "version", None) or "base"
            meta = {"base": base, "engine_fingerprint": segmenter.fingerprint, "annotations": len(items),
                    "skipped": skipped, "config": asdict(config), "created": time.time(), **report}
            version = versions.save(state, meta, activate=improved)
            logger.info("project %s: saved %s (%s)", project_id, version.name,
                        "active" if improved else "not better than the active decoder: kept inactive")
            return {"project": project_id, "status": "trained", "version": version.name, "active": improved,
                    "skipped": skipped, **report}
    except BlockingIOError:
        return {"project": project_id, "status": "skipped", "reason": "a training of this project is running"}


def main(argv: list[str] | None = None) -> int:
    import json

    parser = argparse.ArgumentParser(description="Fine-tune the mask decoder on a project's annotations")
    parser.add_argument("--project", required=True)
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--activate", help="a version name, or 'base'")
    parser.add_argument("--epochs", type=int, default=TrainingConfig.epochs)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] [%(levelname)s] %(message)s")
    versions = ModelVersions(get_settings().model_dir, args.project)
    if args.activate:
        versions.activate(None if args.activate == "base" else args.activate)
    if args.list or args.activate:
        active = versions.active()
        for version in versions.list():
            mark = "*" if active and active.name == version.name else " "
            print(f"{mark} {version.name}  val IoU {version.meta.get('val_iou_before')} -> "
                  f"{version.meta.get('val_iou_after')}  ({version.meta.get('annotations')} annotations)")
        print(("* " if active is None else "  ") + "base")
        return 0
    print(json.dumps(train_project(args.project, TrainingConfig(epochs=args.epochs)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
