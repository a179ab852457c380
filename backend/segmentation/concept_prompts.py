"""Label Studio's interactive concept requests (SAM 3): a phrase typed in a TextArea, or example boxes drawn
with an exemplar rectangle control, into one concept query and the label its regions get.

* Exemplar control: a `RectangleLabels smart="true"` whose name contains "exemplar". A box is a negative
  exemplar (exclude look-alikes) when Label Studio marks it `is_positive: false` (drawn with Alt) or when its
  label is `Negative` / `Exclude` / starts with `Not `; the regions get the label of the positive boxes.
* Phrase: a `TextArea` bound to the image (`showSubmitButton="true"`). Its regions get the label named
  after a final underscore ("red car_Car"), else the label the phrase names ("red car" -> "Car"), else the
  mask control's only label; otherwise the request is refused with the labels to choose from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from backend.core.errors import InputError
from backend.core.label_config import LabelConfig
from backend.segmentation.prompts import BOX_TYPES, checked_phrase, is_negative, rectangle_bounds
from backend.segmentation.sam3 import ConceptQuery

TEXT_TYPES = ("textarea",)
EXEMPLAR_MARK = "exemplar"  # in the name of the exemplar RectangleLabels control


@dataclass(frozen=True)
class ConceptRequest:
    """A phrase and/or exemplar boxes (percent of the image, positive or not) and the label of the answer."""

    text: str | None
    boxes: tuple[tuple[float, float, float, float, bool], ...]
    label: str

    def to_query(self) -> ConceptQuery:
        """The query, boxes in fractions of the image."""
        boxes = np.array([box[:4] for box in self.boxes], np.float32).reshape(-1, 4) / 100.0
        labels = np.array([int(box[4]) for box in self.boxes], np.int64)
        return ConceptQuery(text=self.text or "visual", boxes=boxes, box_labels=labels)


def is_exemplar_control(name: object) -> bool:
    return isinstance(name, str) and EXEMPLAR_MARK in name.lower()


def _phrase_label(text: str, config: LabelConfig) -> tuple[str, str]:
    """(phrase, label) of a typed phrase: see the module docstring."""
    labels = [label for control in config.outputs for label in control.labels]
    head, _, tail = text.rpartition("_")
    if head.strip() and tail.strip():
        if tail.strip() not in labels:
            raise InputError(f"unknown label '{tail.strip()}' after '_' in the phrase (labels: {sorted(labels)})",
                             "context")
        return head.strip(), tail.strip()
    named = [label for label in labels if label.lower() in text.lower()]
    if named:
        return text, max(named, key=len)
    if len(config.outputs[0].labels) == 1:
        return text, config.outputs[0].labels[0]
    raise InputError(f"the phrase '{text}' names none of the labels {sorted(labels)}; end it with _<label>, e.g. "
                     f"'{text}_{labels[0]}'", "context")


def parse_concept_context(context: object, config: LabelConfig, max_boxes: int = 64) -> ConceptRequest | None:
    """The concept request in an interactive context, or None when it holds no phrase and no exemplar box (an
    ordinary click / box request). InputError says which item is wrong and why."""
    if not isinstance(context, dict) or not isinstance(context.get("result"), list):
        return None
    texts: list[str] = []
    boxes: list[tuple[float, float, float, float, bool]] = []
    box_label = None
    for i, item in enumerate(context["result"]):
        if not isinstance(item, dict) or not isinstance(item.get("value"), dict):
            continue  # parse_context reports it if this is not a concept request
        where = f"context.result[{i}]"
        if item.get("type") in TEXT_TYPES:
            text = item["value"].get("text")
            values = text if isinstance(text, list) else [text]
            if not all(isinstance(v, str) for v in values):
                raise InputError(f"'value.text' must be a list of strings, got {text!r}", where)
            texts += [v.strip() for v in values if v.strip()]
        elif item.get("type") in BOX_TYPES and is_exemplar_control(item.get("from_name")):
            labels = item["value"].get("rectanglelabels") or []
            label = labels[0] if isinstance(labels, list) and labels and isinstance(labels[0], str) else None
            positive = not is_negative(item, label)
            boxes.append((*rectangle_bounds(item["value"], where), positive))
            if positive and box_label is None:
                box_label = label
    if not texts and not boxes:
        return None
    if len(boxes) > max_boxes:
        raise InputError(f"{len(boxes)} exemplar boxes in one request; at most MAX_PROMPT_POINTS={max_boxes}",
                         "context")
    text = texts[-1] if texts else None  # the phrase just submitted
    if text is not None:
        checked_phrase(text, "context")
    if text is None and not any(box[4] for box in boxes):
        raise InputError("exemplar boxes are all negative: draw at least one box around an example to find", "context")
    if text is not None and box_label is None:
        text, label = _phrase_label(text, config)
    else:  # the exemplars' label (InputError for one the mask control does not have)
        _, label = config.output_for(box_label)
    return ConceptRequest(text=text, boxes=tuple(boxes), label=label)
