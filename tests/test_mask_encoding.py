import numpy as np

from backend.core.label_config import parse_label_config
from backend.segmentation.masks import mask_results, mask_to_polygons, mask_to_rle, rle_to_mask
from tests.helpers import LABEL_CONFIG, POLYGON_CONFIG, disk_image


def test_rle_round_trip_is_exact():
    _, mask = disk_image(333, 211)
    mask[0, :7] = True  # a run at the very start
    mask[-1, -3:] = True  # and at the very end
    assert np.array_equal(rle_to_mask(mask_to_rle(mask), 211, 333), mask)


def test_numpy_rle_writes_the_sdk_encoders_bytes():
    """Our numpy brush encoder gives exactly label-studio-sdk's mask2rle bytes: single pixels, every run-size
    class, runs longer than 65536 (split), empty and full masks, and streams already byte-aligned."""
    from label_studio_sdk.converter.brush import mask2rle

    rng = np.random.default_rng(0)
    cases = [np.zeros((5, 7), bool), np.ones((5, 7), bool), np.ones((300, 500), bool), np.ones((1, 1), bool),
             np.ones((514, 129), bool), rng.random((50, 60)) > 0.5]
    for _ in range(80):
        height, width = rng.integers(1, 120, 2)
        cases.append(rng.random((height, width)) > rng.random())
        corner = np.zeros((height, width), bool)
        corner[rng.integers(0, height):, rng.integers(0, width):] = True
        cases.append(corner)
    for mask in cases:
        assert mask_to_rle(mask) == mask2rle(np.where(mask, 255, 0).astype(np.uint8)), mask.shape


def test_brush_result_decodes_to_the_mask():
    _, mask = disk_image()
    control, label = parse_label_config(LABEL_CONFIG).output_for("Disk")
    [item] = mask_results(mask, 0.9, control, label)
    assert item["type"] == "brushlabels" and item["value"]["brushlabels"] == ["Disk"]
    assert (item["original_width"], item["original_height"]) == (320, 240)
    assert np.array_equal(rle_to_mask(item["value"]["rle"], 240, 320), mask)


def test_polygons_outline_each_part_in_percent():
    mask = np.zeros((100, 200), bool)
    mask[10:50, 20:60] = True  # big square
    mask[70:80, 150:160] = True  # small square
    polygons = mask_to_polygons(mask, epsilon=1.0)
    assert len(polygons) == 2
    xs = [p[0] for p in polygons[0]]
    ys = [p[1] for p in polygons[0]]
    assert min(xs) == 10.0 and max(xs) == 30.0 and min(ys) == 10.0 and max(ys) == 50.0  # the pixels' outer edges
    control, label = parse_label_config(POLYGON_CONFIG).output_for("Disk")
    items = mask_results(mask, 0.5, control, label)
    assert [item["type"] for item in items] == ["polygonlabels", "polygonlabels"]
    assert items[0]["value"]["polygonlabels"] == ["Disk"] and items[0]["value"]["closed"] is True


def test_polygons_run_along_the_mask_outline_and_decode_back():
    """Vertices sit on pixel edges (not pixel centres, which made polygons 1 px narrower than the mask)."""
    import numpy as np

    from backend.segmentation.masks import mask_to_polygons, polygon_to_mask
    from tests.helpers import disk_image

    box = np.zeros((240, 320), bool)
    box[50:100, 30:200] = True
    [points] = mask_to_polygons(box, 1.5)
    xs, ys = {round(p[0] * 3.2, 6) for p in points}, {round(p[1] * 2.4, 6) for p in points}
    assert xs == {30.0, 200.0} and ys == {50.0, 100.0}  # 170 x 50 pixels wide, as the mask
    assert (polygon_to_mask(np.array(points), 240, 320) == box).all()
    _, disk = disk_image(320, 240)
    [points] = mask_to_polygons(disk, 1.5)
    back = polygon_to_mask(np.array(points), 240, 320)
    assert (back & disk).sum() / (back | disk).sum() > 0.98
