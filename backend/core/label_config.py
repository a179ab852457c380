"""What a project's labeling config asks of the backend: which image, which mask control, which labels."""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass

from cachetools import LRUCache, cached
from label_studio_sdk.label_interface import LabelInterface

from backend.core.errors import InputError

DATA_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}\Z")  # a task data field name ($image), safe in file names
OUTPUT_TAGS = ("BrushLabels", "PolygonLabels")  # in order of preference
PROMPT_TAGS = ("KeyPointLabels", "RectangleLabels", "KeyPoint", "Rectangle")


@dataclass(frozen=True)
class OutputControl:
    name: str
    to_name: str
    tag: str  # BrushLabels | PolygonLabels
    labels: tuple[str, ...]

    @property
    def result_type(self) -> str:
        return self.tag.lower()


@dataclass(frozen=True)
class LabelConfig:
    image_name: str  # the Image tag's name
    image_key: str  # the task data field holding the image URL
    outputs: tuple[OutputControl, ...]

    def output_for(self, label: str | None) -> tuple[OutputControl, str]:
        """The mask control and label a prompt labelled `label` produces."""
        if label is None:
            first = self.outputs[0]
            if len(first.labels) == 1:
                return first, first.labels[0]
            raise InputError(f"the prompt has no label; choose one of {list(first.labels)}", "context")
        for control in self.outputs:
            if label in control.labels:
                return control, label
        known = sorted({name for control in self.outputs for name in control.labels})
        names = ", ".join(f"{c.tag} '{c.name}'" for c in self.outputs)
        raise InputError(f"unknown label '{label}': not in {names} (labels: {known})", "context")


MAX_CONFIG_BYTES = 1 << 20  # Label Studio's configs are a few KB; a 9 MB one is an attack on memory


def _digest(config: str) -> str:
    return hashlib.sha256(config.encode("utf-8", "surrogatepass")).hexdigest()


@cached(LRUCache(maxsize=64), key=_digest, lock=threading.Lock())  # keyed by digest: configs are not kept
def parse_label_config(config: str) -> LabelConfig:
    """Parse a labeling config; InputError when it has no Image with a BrushLabels or PolygonLabels control."""
    if not config or not config.strip():
        raise InputError("empty labeling config", "label_config")
    if len(config) > MAX_CONFIG_BYTES:
        raise InputError(f"labeling config of {len(config) >> 10} KB is larger than {MAX_CONFIG_BYTES >> 10} KB",
                         "label_config")
    try:
        interface = LabelInterface(config)
    except Exception as exc:
        raise InputError(f"labeling config cannot be parsed: {exc}", "label_config")
    images = {obj.name: obj for obj in interface.objects if obj.tag == "Image"}
    if not images:
        raise InputError("labeling config has no <Image> tag", "label_config")
    outputs = []
    for tag in OUTPUT_TAGS:
        for control in interface.controls:
            if control.tag != tag:
                continue
            targets = [name for name in control.to_name if name in images]
            if targets:
                outputs.append(OutputControl(control.name, targets[0], tag, tuple(control.labels or ())))
    if not outputs:
        raise InputError("labeling config has no <BrushLabels> or <PolygonLabels> for an <Image>", "label_config")
    image = images[outputs[0].to_name]
    return LabelConfig(image_name=image.name, image_key=image.value.lstrip("$"), outputs=tuple(outputs))
