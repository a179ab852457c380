"""Turning Label Studio's interactive `context` into segmenter prompts."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from numbers import Real

import numpy as np

from backend.core.errors import InputError

POINT_TYPES = ("keypointlabels", "keypoint")
NEGATIVE_LABELS = ("negative", "exclude")  # a prompt with such a label (or "Not ...") marks what to leave out
BOX_TYPES = ("rectanglelabels", "rectangle")
_SLACK = 1e-6  # percent; Label Studio may send 100.00000000001


@dataclass
class Prompt:
    """Segmenter input in pixels of the image: clicks (label 1 positive, 0 negative) and/or one XYXY box."""

    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    box: np.ndarray | None = None

    @property
    def is_single_click(self) -> bool:
        return len(self.points) == 1 and self.box is None


@dataclass(frozen=True)
class ContextPrompt:
    """The prompt as Label Studio sends it: percent coordinates and the label the annotator chose."""

    points: tuple[tuple[float, float, bool], ...]  # (x %, y %, is_positive)
    box: tuple[float, float, float, float] | None  # (x0 %, y0 %, x1 %, y1 %)
    label: str | None
    from_name: str | None

    def to_prompt(self, width: int, height: int) -> Prompt:
        """Pixel prompt for an image of `width` x `height` (the image as displayed, EXIF applied)."""
        sx, sy = width / 100.0, height / 100.0
        points = np.array([[x * sx, y * sy] for x, y, _ in self.points], np.float32).reshape(-1, 2)
        labels = np.array([int(positive) for _, _, positive in self.points], np.int64)
        box = None
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            box = np.array([x0 * sx, y0 * sy, x1 * sx, y1 * sy], np.float32)
        return Prompt(points=points, labels=labels, box=box)


def _number(value: object, where: str, name: str) -> float:
    try:
        number = float(value) if isinstance(value, Real) and not isinstance(value, bool) else math.nan
    except OverflowError:  # an int beyond float range, e.g. 10**400
        number = math.nan
    if not math.isfinite(number):
        raise InputError(f"'{name}' must be a finite number, got {str(value)[:40]}", where)
    return number


def _percent(value: object, where: str, name: str) -> float:
    number = _number(value, where, name)
    if not -_SLACK <= number <= 100 + _SLACK:
        raise InputError(f"{name}={number:g}% is outside the image (0..100%)", where)
    return min(max(number, 0.0), 100.0)


def _rotated_bounds(x: float, y: float, w: float, h: float, degrees: float) -> tuple[float, float, float, float]:
    """Axis-aligned bounds of a rectangle rotated about its top-left corner (Label Studio's convention)."""
    if not degrees:
        return x, y, x + w, y + h
    a = math.radians(degrees)
    corners = [(0, 0), (w, 0), (0, h), (w, h)]
    xs = [x + cx * math.cos(a) - cy * math.sin(a) for cx, cy in corners]
    ys = [y + cx * math.sin(a) + cy * math.cos(a) for cx, cy in corners]
    return min(xs), min(ys), max(xs), max(ys)


def rectangle_bounds(value: dict, where: str) -> tuple[float, float, float, float]:
    """A Label Studio rectangle's (x0, y0, x1, y1) in percent of the image, rotation applied; InputError naming
    `where` for a missing, infinite, empty or outside value."""
    x, y = _percent(value.get("x"), where, "x"), _percent(value.get("y"), where, "y")
    w = _number(value.get("width"), where, "width")
    h = _number(value.get("height"), where, "height")
    if w <= 0 or h <= 0:
        raise InputError(f"rectangle has no area (width={w:g}%, height={h:g}%)", where)
    x0, y0, x1, y1 = _rotated_bounds(x, y, w, h, _number(value.get("rotation", 0) or 0, where, "rotation"))
    for name, edge in (("x + width", x1), ("y + height", y1)):
        _percent(edge, where, name)
    return max(x0, 0.0), max(y0, 0.0), min(x1, 100.0), min(y1, 100.0)


MAX_PHRASE_CHARS = 200  # one text prompt (a typed phrase, a caption's phrase)


def checked_phrase(text: str, where: str) -> str:
    """A text prompt as the tokenizers take it: InputError for one too long or not encodable as UTF-8 (a lone
    surrogate made the tokenizer raise TypeError)."""
    if len(text) > MAX_PHRASE_CHARS:
        raise InputError(f"the phrase has {len(text)} characters; at most {MAX_PHRASE_CHARS}", where)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError("the phrase is not valid text (it holds a lone surrogate)", where)
    return text


def is_negative(item: dict, label: str | None) -> bool:
    """A negative prompt: Alt/Option-clicked (`is_positive: false`), or labeled Negative / Exclude / Not ..."""
    lowered = (label or "").strip().lower()
    return item.get("is_positive") is False or lowered in NEGATIVE_LABELS or lowered.startswith("not ")


def _label_of(item: dict, kind: str, where: str) -> str | None:
    labels = item["value"].get(kind)
    if labels is None:
        return None
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise InputError(f"'value.{kind}' must be a list of label names, got {labels!r}", where)
    return labels[0] if labels else None


def parse_context(context: object, max_points: int = 64) -> ContextPrompt:
    """Validate an interactive context and return its prompt. InputError says which item is wrong and why;
    more than `max_points` clicks (MAX_PROMPT_POINTS) are refused before any work."""
    if not isinstance(context, dict):
        raise InputError(f"context must be an object with a 'result' list, got {type(context).__name__}", "context")
    items = context.get("result")
    if not isinstance(items, list) or not items:
        raise InputError("context.result must be a non-empty list of keypoints or rectangles", "context")
    if len(items) > max_points + 1:  # the clicks plus one rectangle
        raise InputError(f"{len(items)} prompts in one request; at most MAX_PROMPT_POINTS={max_points} clicks and "
                         "one rectangle", "context")
    points: list[tuple[float, float, bool]] = []
    box = None
    label = from_name = None
    for i, item in enumerate(items):
        where = f"context.result[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("value"), dict):
            raise InputError("each item needs a 'value' object", where)
        kind = item.get("type")
        value = item["value"]
        item_label = _label_of(item, kind, where) if kind in POINT_TYPES + BOX_TYPES else None
        if kind in POINT_TYPES:
            x, y = _percent(value.get("x"), where, "x"), _percent(value.get("y"), where, "y")
            negative = is_negative(item, item_label)
            points.append((x, y, not negative))
            if negative:
                continue  # an Exclude point does not name the mask's label
        elif kind in BOX_TYPES:
            if box is not None:
                raise InputError("only one rectangle per request; send each box on its own", where)
            box = rectangle_bounds(value, where)
        else:
            raise InputError(f"unsupported prompt type {kind!r}; use KeyPointLabels or RectangleLabels", where)
        if label is None:
            label, from_name = item_label, item.get("from_name")
    if len(points) > max_points:
        raise InputError(f"{len(points)} clicks in one request; at most MAX_PROMPT_POINTS={max_points}", "context")
    if box is None and not any(positive for _, _, positive in points):
        raise InputError("at least one positive click or a rectangle is needed", "context")
    return ContextPrompt(points=tuple(points), box=box, label=label, from_name=from_name)
