import numpy as np
import pytest

from backend.core.errors import InputError
from backend.segmentation.prompts import parse_context
from tests.helpers import keypoint, rectangle


def test_clicks_and_box_become_pixels():
    context = {"result": [keypoint(50, 25), keypoint(10, 90, positive=False), rectangle(10, 20, 30, 40)]}
    parsed = parse_context(context)
    assert parsed.label == "Disk" and parsed.from_name == "kp"
    prompt = parsed.to_prompt(width=200, height=100)
    np.testing.assert_allclose(prompt.points, [[100, 25], [20, 90]])
    assert prompt.labels.tolist() == [1, 0]
    np.testing.assert_allclose(prompt.box, [20, 20, 80, 60])
    assert not prompt.is_single_click


def test_single_click_is_ambiguous_prompt():
    prompt = parse_context({"result": [keypoint(10, 10)]}).to_prompt(100, 100)
    assert prompt.is_single_click and prompt.box is None


def test_missing_is_positive_means_positive():
    item = keypoint(10, 10)
    del item["is_positive"]
    assert parse_context({"result": [item]}).points[0][2] is True


def test_rotated_box_uses_its_bounds():
    item = rectangle(50, 10, 20, 10)
    item["value"]["rotation"] = 90
    x0, y0, x1, y1 = parse_context({"result": [item]}).box
    assert (x0, y0, x1, y1) == pytest.approx((40, 10, 50, 30))


@pytest.mark.parametrize(
    "context, message",
    [
        (None, "context must be an object"),
        ({"result": []}, "non-empty list"),
        ({"result": "x"}, "non-empty list"),
        ({"result": [{"type": "keypointlabels"}]}, "needs a 'value' object"),
        ({"result": [keypoint(120, 10)]}, "x=120% is outside the image"),
        ({"result": [keypoint(10, -3)]}, "y=-3% is outside the image"),
        ({"result": [keypoint(float("nan"), 10)]}, "finite number"),
        ({"result": [keypoint("5", 10)]}, "finite number"),
        ({"result": [keypoint(10, 10, positive=False)]}, "at least one positive click"),
        ({"result": [rectangle(10, 10, 5, 5), rectangle(20, 20, 5, 5)]}, "only one rectangle"),
        ({"result": [rectangle(90, 10, 20, 5)]}, "x + width=110% is outside"),
        ({"result": [rectangle(10, 10, 0, 5)]}, "no area"),
        ({"result": [{"type": "polygonlabels", "value": {"points": []}}]}, "unsupported prompt type"),
    ],
)
def test_bad_context_says_what_and_where(context, message):
    with pytest.raises(InputError) as info:
        parse_context(context)
    assert message in str(info.value)
    assert info.value.where.startswith("context")


def test_a_point_labeled_exclude_is_negative_and_does_not_name_the_mask():
    """The shipped configs' Exclude label: a negative point that shows as such in Label Studio's Regions list."""
    context = {"result": [keypoint(40, 50, "Exclude"), keypoint(20, 30, "Object"), keypoint(60, 70, "Not this")]}
    prompt = parse_context(context).to_prompt(100, 100)
    assert prompt.labels.tolist() == [0, 1, 0]
    assert parse_context(context).label == "Object"
    with pytest.raises(InputError, match="at least one positive click"):
        parse_context({"result": [keypoint(40, 50, "Exclude")]})
