"""Fine-tuned mask-decoder versions per project, next to the base checkpoint, with an active pointer.

    MODEL_DIR/projects/<id>/versions/v3.pth    mask-decoder state dict
    MODEL_DIR/projects/<id>/versions/v3.json   metadata (base, scores, annotations, time)
    MODEL_DIR/projects/<id>/versions/active.json  {"version": "v3"} (absent or null: the base model)

Every file is written atomically, weights before metadata before the pointer, so a crash at any
point leaves the previous active version in use.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from backend.core.errors import InputError
from backend.core.files import write_atomic
from backend.core.settings import Settings

_NAME = re.compile(r"^v(\d+)\Z")


@dataclass(frozen=True)
class ModelVersion:
    name: str
    weights: Path
    meta: dict


class ActivePointer:
    """Which of a set of versions is in use: `pointer` ({"version": name}, or null for the base model), written
    atomically after the version it names. Subclasses give `get(name)`."""

    pointer: Path

    def get(self, name: str):
        raise NotImplementedError

    def activate(self, name: str | None) -> None:
        """Make `name` the version in use (None: back to the base model)."""
        if name is not None:
            self.get(name)
        write_atomic(self.pointer, json.dumps({"version": name}).encode())

    def active(self):
        """The version in use, or None for the base model (also when the pointer names a missing version)."""
        try:
            name = json.loads(self.pointer.read_text()).get("version")
        except (OSError, ValueError, AttributeError):
            return None
        if not name:
            return None
        try:
            return self.get(name)
        except InputError:
            return None


class ModelVersions(ActivePointer):
    def __init__(self, model_dir: Path | str, project_id: str):
        if not str(project_id).isdigit():
            raise InputError(f"project id must be a number, got {project_id!r}", "project")
        self.folder = Path(model_dir) / "projects" / str(project_id) / "versions"
        self.pointer = self.folder / "active.json"

    def list(self) -> list[ModelVersion]:
        """Complete versions (weights and metadata present), oldest first."""
        found = []
        for meta_path in self.folder.glob("v*.json"):
            match = _NAME.match(meta_path.stem)
            weights = meta_path.with_suffix(".pth")
            if match and weights.exists():
                try:
                    found.append((int(match.group(1)), ModelVersion(meta_path.stem, weights,
                                                                     json.loads(meta_path.read_text()))))
                except ValueError:
                    continue
        return [version for _, version in sorted(found, key=lambda item: item[0])]

    def get(self, name: str) -> ModelVersion:
        for version in self.list():
            if version.name == name:
                return version
        raise InputError(f"no model version {name!r}; known: {[v.name for v in self.list()]}", "version")

    def save(self, decoder_state: dict, meta: dict, activate: bool = True) -> ModelVersion:
        versions = self.list()
        number = int(_NAME.match(versions[-1].name).group(1)) + 1 if versions else 1
        name = f"v{number}"
        buffer = io.BytesIO()
        torch.save(decoder_state, buffer)
        write_atomic(self.folder / f"{name}.pth", buffer.getvalue())
        write_atomic(self.folder / f"{name}.json", json.dumps({**meta, "version": name}, indent=2).encode())
        if activate:
            self.activate(name)
        return self.get(name)

    def load_weights(self, version: ModelVersion) -> dict:
        return torch.load(version.weights, map_location="cpu", weights_only=True)


def model_version(settings: Settings, tuned: str | None = None) -> str:
    """The one name of a model version: engine and checkpoint ('vit_t-mobile_sam', 'sam2-sam2.1-hiera-tiny',
    'grabcut'), plus a fine-tuned decoder's version ('vit_t-mobile_sam-v3'). Predictions, /setup, /versions
    and the resume of `python -m backend prelabel` all name versions with it."""
    base = "grabcut" if settings.sam_engine == "grabcut" else f"{settings.sam_engine}-{settings.checkpoint_name}"
    return f"{base}-{tuned}" if tuned else base


def project_model_version(settings: Settings, project_id: str | int) -> str:
    """The version a project's predictions carry now: the base, or the project's active fine-tuned decoder."""
    if not str(project_id).isdigit() or settings.sam_engine == "grabcut":
        return model_version(settings)
    active = ModelVersions(settings.model_dir, str(project_id)).active()
    return model_version(settings, active.name if active else None)
