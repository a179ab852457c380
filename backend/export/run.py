"""Export a project's masks as a training set.

    python -m backend export --project 3 --format coco --out exports/coco
        [--predictions] [--synthetic include|exclude|only] [--labels Car Person] [--split 0.8 0.1 0.1]

Tasks, annotations and predictions are read through label-studio-sdk (LABEL_STUDIO_URL and
LABEL_STUDIO_API_KEY); images through the backend's own reader (the same storage rules and limits as
/predict). The export is built in a sibling folder and takes the place of `--out` only when complete.
`--out` must be a new folder or one this command wrote before (it holds the marker file EXPORT_MARKER):
anything else (a folder of other files, a file, a symlink) is refused, never replaced. A task whose image
cannot be read (or whose regions do not fit it) is reported and skipped; the summary counts images and
instances per split and class; the exit status is 1 when nothing could be exported.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from backend.core.errors import BackendError
from backend.core.label_config import LabelConfig, parse_label_config
from backend.core.settings import Settings, get_settings
from backend.export.coco import CocoWriter
from backend.export.images import export_image
from backend.export.png_masks import PngMaskWriter
from backend.export.samples import SPLITS, Options, class_names, instances, select_samples
from backend.export.yolo import YoloWriter
from backend.io.images import read_task_image

logger = logging.getLogger(__name__)
FORMATS = {writer.name: writer for writer in (CocoWriter, YoloWriter, PngMaskWriter)}
EXPORT_MARKER = ".label-studio-backend-export"  # in every export folder: what --out may replace


class ExportTargetError(ValueError):
    """`--out` names something an export must not replace."""


def check_target(out: Path) -> Path:
    """`out` as an absolute path, if an export may be written there: nothing there yet, or a real folder
    (not a symlink) that an earlier export wrote (EXPORT_MARKER); ExportTargetError otherwise."""
    if out.is_symlink():
        raise ExportTargetError(f"--out {out} is a symbolic link; name a new folder")
    out = out.absolute()
    if not out.exists():
        return out
    if not out.is_dir():
        raise ExportTargetError(f"--out {out} is a file; name a new folder (an export never replaces other files)")
    if not (out / EXPORT_MARKER).is_file():
        raise ExportTargetError(f"--out {out} exists and is not an earlier export (no {EXPORT_MARKER} in it); name "
                                "a new folder: an export replaces only a folder it wrote itself")
    return out


@dataclass
class Summary:
    images: Counter = field(default_factory=Counter)  # per split
    instances: Counter = field(default_factory=Counter)  # per (split, class)
    failed: dict[int, str] = field(default_factory=dict)  # task id -> why it was skipped
    skipped_regions: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"images": dict(self.images),
                "instances": {f"{split}/{name}": n for (split, name), n in sorted(self.instances.items())},
                "failed": {str(k): v for k, v in self.failed.items()}, "skipped_regions": self.skipped_regions}

    def table(self, classes: list[str]) -> str:
        rows = [" | ".join(["split", "images", *classes]), " | ".join(["---"] * (2 + len(classes)))]
        for split in SPLITS:
            counts = [str(self.instances[(split, name)]) for name in classes]
            rows.append(" | ".join([split, str(self.images[split]), *counts]))
        return "\n".join(rows)


def export_tasks(tasks: list[dict], config: LabelConfig, fmt: str, out: Path, options: Options,
                 settings: Settings, progress: Callable[[int, int], None] | None = None) -> Summary:
    """Write `tasks` (Label Studio task dicts with annotations / predictions) as `fmt` into `out`, replacing
    what is there only once the whole export is written."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {list(FORMATS)}")
    out = check_target(out)
    classes = class_names(config, options)
    samples = select_samples(tasks, config, options)
    out.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".building", dir=out.parent))
    summary = Summary()
    try:
        writer = FORMATS[fmt](building, classes)
        for done, sample in enumerate(samples, start=1):
            try:
                image = export_image(read_task_image(sample.image_url, settings, sample.task_id), settings)
            except BackendError as exc:
                summary.failed[sample.task_id] = str(exc)
                logger.warning("task %s skipped: %s", sample.task_id, exc)
            else:
                found, skipped = instances(sample, *image.size, classes)
                summary.skipped_regions += skipped
                writer.add(sample.split, sample.task_id, image, found)
                summary.images[sample.split] += 1
                for instance in found:
                    summary.instances[(sample.split, instance.label)] += 1
            if progress:
                progress(done, len(samples))
        writer.finish(out)
        (building / EXPORT_MARKER).write_text("written by python -m backend export; --out may replace this folder\n")
        (building / "export.json").write_text(json.dumps(
            {"format": fmt, "classes": classes, "options": {**options.__dict__},
             "tasks": {str(s.task_id): {"split": s.split, "source": s.source} for s in samples},
             **summary.as_dict()}, indent=2, ensure_ascii=False))
        _replace(building, check_target(out))  # checked again: nothing may have taken its place meanwhile
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return summary


def _replace(new: Path, out: Path) -> None:
    """Put the finished folder `new` at `out`: the old export is moved aside first and removed after."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        old.rmdir()
        out.rename(old)
    new.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_project(client, project_id: int) -> tuple[LabelConfig, list[dict]]:
    """The project's labeling config and its tasks with annotations and predictions (via the SDK)."""
    from backend.io.ls_client import call, read_tasks

    project = call(f"project {project_id}", client.projects.get, id=project_id)
    return parse_label_config(project.label_config), read_tasks(client, project_id)


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    from backend.io.ls_client import make_client

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=int, required=True)
    parser.add_argument("--format", choices=list(FORMATS), required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--predictions", action="store_true",
                        help="tasks without an annotation use their latest model version's prediction")
    parser.add_argument("--synthetic", choices=("include", "exclude", "only"), default="include",
                        help="tasks made by the synthesis feature (data.synthetic)")
    parser.add_argument("--labels", nargs="+", default=[], help="export only these classes")
    parser.add_argument("--split", nargs=3, type=float, default=[0.8, 0.1, 0.1], metavar=("TRAIN", "VAL", "TEST"))
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="[%(levelname)s] %(message)s")
    if min(args.split) < 0 or sum(args.split) <= 0:
        parser.error("--split needs three non-negative ratios with a positive sum")
    settings = get_settings()
    options = Options(args.predictions, args.synthetic, tuple(args.labels), tuple(args.split))
    try:
        check_target(args.out)
        config, tasks = read_project(make_client(settings), args.project)
        classes = class_names(config, options)
    except (BackendError, ValueError) as exc:
        print(f"error: {exc}")
        return 2 if isinstance(exc, ExportTargetError) else 1
    bar = tqdm(total=0, unit="task", disable=args.quiet)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(1)

    try:
        summary = export_tasks(tasks, config, args.format, args.out, options, settings, progress)
    except ExportTargetError as exc:
        print(f"error: {exc}")
        return 2
    bar.close()
    print(summary.table(classes))
    for task_id, reason in summary.failed.items():
        print(f"skipped task {task_id}: {reason}")
    for reason in summary.skipped_regions:
        print(f"skipped {reason}")
    written = sum(summary.images.values())
    print(f"{written} images written to {args.out} ({args.format})")
    if not written:
        print("error: nothing was exported" + (" (every task failed)" if summary.failed else
                                                " (no task has a labeling to export)"))
        return 1
    return 0
