"""A project's domain LoRAs per inpainting engine, as versions beside the decoder versions, with an active pointer.

    MODEL_DIR/projects/<id>/generators/<engine>/v2/pytorch_lora_weights.safetensors   (diffusers' LoRA format)
    MODEL_DIR/projects/<id>/generators/<engine>/v2/meta.json                         (losses, pairs, settings)
    MODEL_DIR/projects/<id>/generators/<engine>/active.json                          {"version": "v2"} or null

A version folder is written under a temporary name and renamed when complete; the pointer is written
atomically after it, so a crash leaves the previous active version in use.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from backend.core.errors import InputError
from backend.core.files import write_atomic
from backend.core.versions import ActivePointer

_NAME = re.compile(r"^v(\d+)\Z")
WEIGHTS = "pytorch_lora_weights.safetensors"


@dataclass(frozen=True)
class GeneratorVersion:
    name: str
    folder: Path
    meta: dict


class GeneratorVersions(ActivePointer):
    def __init__(self, model_dir: Path | str, project_id: str | int, engine: str):
        if not str(project_id).isdigit():
            raise InputError(f"project id must be a number, got {project_id!r}", "project")
        self.root = Path(model_dir) / "projects" / str(project_id) / "generators" / engine
        self.pointer = self.root / "active.json"

    def list(self) -> list[GeneratorVersion]:
        """Complete versions (weights and metadata), oldest first."""
        found = []
        for folder in self.root.glob("v*"):
            match = _NAME.match(folder.name)
            if match and (folder / WEIGHTS).is_file() and (folder / "meta.json").is_file():
                try:
                    meta = json.loads((folder / "meta.json").read_text())
                except ValueError:
                    continue
                found.append((int(match.group(1)), GeneratorVersion(folder.name, folder, meta)))
        return [version for _, version in sorted(found, key=lambda item: item[0])]

    def get(self, name: str) -> GeneratorVersion:
        for version in self.list():
            if version.name == name:
                return version
        raise InputError(f"no generator version {name!r}; known: {[v.name for v in self.list()]}", "version")

    def save(self, write_weights: Callable[[Path], None], meta: dict, activate: bool) -> GeneratorVersion:
        """A new version: `write_weights(folder)` writes the LoRA file into a fresh folder, then the metadata."""
        versions = self.list()
        name = f"v{int(_NAME.match(versions[-1].name).group(1)) + 1 if versions else 1}"
        self.root.mkdir(parents=True, exist_ok=True)
        partial = self.root / f".{name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        write_weights(partial)
        write_atomic(partial / "meta.json", json.dumps({**meta, "version": name}, indent=2).encode())
        os.replace(partial, self.root / name)
        if activate:
            self.activate(name)
        return self.get(name)

