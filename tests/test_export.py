"""Export pieces that need no Label Studio: the split, the class list, which labeling is used, bad input."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from backend.core.label_config import parse_label_config
from backend.core.settings import Settings
from backend.export.run import EXPORT_MARKER, ExportTargetError, export_tasks, main
from backend.export.samples import Options, chosen_labeling, class_names, split_of
from backend.segmentation.masks import mask_to_rle
from tests.helpers import LABEL_CONFIG, POLYGON_CONFIG, data_uri, disk_image, encode_image


def test_the_split_follows_the_ratios_and_depends_only_on_the_task_id():
    counts = Counter(split_of(task_id, (0.8, 0.1, 0.1)) for task_id in range(1, 5001))
    assert abs(counts["train"] / 5000 - 0.8) < 0.03 and abs(counts["val"] / 5000 - 0.1) < 0.02
    assert [split_of(i, (0.8, 0.1, 0.1)) for i in range(50)] == [split_of(i, (8, 1, 1)) for i in range(50)]
    assert {split_of(i, (1, 0, 0)) for i in range(200)} == {"train"}


def test_classes_come_from_the_config_in_order_and_unknown_labels_are_named():
    config = parse_label_config(LABEL_CONFIG)
    assert class_names(config, Options()) == ["Disk", "Background"]
    assert class_names(config, Options(labels=("Background",))) == ["Background"]
    with pytest.raises(ValueError, match=r"\['Cat'\] are not in the labeling config"):
        class_names(config, Options(labels=("Cat",)))


def test_the_latest_submitted_annotation_wins_and_predictions_only_when_asked():
    task = {"annotations": [{"id": 1, "updated_at": "2026-01-02", "result": ["old"]},
                            {"id": 2, "updated_at": "2026-01-03", "result": ["new"]},
                            {"id": 3, "updated_at": "2026-01-04", "result": ["skip"], "was_cancelled": True}],
            "predictions": [{"id": 9, "model_version": "m", "result": ["p"]}]}
    assert chosen_labeling(task, Options()) == ("annotation 2", ["new"])
    only_prediction = {"annotations": [], "predictions": task["predictions"]}
    assert chosen_labeling(only_prediction, Options()) is None
    assert chosen_labeling(only_prediction, Options(predictions=True)) == ("prediction m", ["p"])


def export_cli(monkeypatch, out: Path) -> int:
    """`python -m backend export --project 1 --format coco --out OUT` against a Label Studio at the discard
    port (tests replace read_project where they need tasks); its exit status."""
    from backend.core.settings import get_settings

    monkeypatch.setenv("LABEL_STUDIO_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "x")
    get_settings.cache_clear()
    try:
        return main(["--project", "1", "--format", "coco", "--out", str(out), "--quiet"])
    finally:
        get_settings.cache_clear()


def test_an_unknown_format_or_unreachable_label_studio_is_a_clear_error(tmp_path, monkeypatch, capsys):
    with pytest.raises(ValueError, match="unknown format 'voc'"):
        export_tasks([], parse_label_config(POLYGON_CONFIG), "voc", tmp_path / "out", Options(), Settings())
    assert export_cli(monkeypatch, tmp_path / "out") == 1  # nothing listens on the discard port
    assert "error: " in capsys.readouterr().out and not (tmp_path / "out").exists()


def test_a_region_annotated_at_another_size_is_reported_and_the_image_still_exported(tmp_path):
    image, mask = disk_image(160, 120)
    rle = mask_to_rle(mask)
    region = {"type": "brushlabels", "original_width": 320, "original_height": 240,
              "value": {"format": "rle", "rle": rle, "brushlabels": ["Disk"]}}
    task = {"id": 4, "data": {"image": data_uri(encode_image(image))}, "annotations": [{"id": 1, "result": [region]}]}
    summary = export_tasks([task], parse_label_config(LABEL_CONFIG), "masks", tmp_path / "out", Options(),
                           Settings(model_dir=str(tmp_path / "m"), image_cache_dir=str(tmp_path / "c")))
    assert sum(summary.images.values()) == 1 and "annotated at 320x240" in summary.skipped_regions[0]
    assert np.asarray(Image.open(next((tmp_path / "out" / "masks").rglob("4_classes.png")))).max() == 0


def _settings(tmp_path) -> Settings:
    return Settings(model_dir=str(tmp_path / "m"), image_cache_dir=str(tmp_path / "c"))


def _brush(mask: np.ndarray, label: str = "Disk") -> dict:
    height, width = mask.shape
    return {"type": "brushlabels", "original_width": width, "original_height": height,
            "value": {"format": "rle", "rle": mask_to_rle(mask), "brushlabels": [label]}}


def _polygon(points: list[list[float]], width: int, height: int, label: str = "Disk") -> dict:
    return {"type": "polygonlabels", "original_width": width, "original_height": height,
            "value": {"points": points, "closed": True, "polygonlabels": [label]}}


def _fill_like_ultralytics(line: str, width: int, height: int) -> np.ndarray:
    """A YOLO segment line drawn as Ultralytics' polygon2mask and supervision do: scaled, truncated to int32,
    cv2.fillPoly."""
    import cv2

    coords = np.array(line.split()[1:], np.float64).reshape(-1, 2) * (width, height)
    mask = np.zeros((height, width), np.uint8)
    cv2.fillPoly(mask, [coords.astype(np.int32)], 1)
    return mask.astype(bool)


BOTH_CONFIG = """<View><Image name="image" value="$image"/>
  <BrushLabels name="tag" toName="image"><Label value="Disk"/></BrushLabels>
  <PolygonLabels name="poly" toName="image"><Label value="Disk"/></PolygonLabels></View>"""


def test_yolo_outlines_fill_back_to_the_exact_mask_and_polygons_are_copied_as_drawn(tmp_path):
    import yaml

    image = np.full((120, 200, 3), 128, np.uint8)
    block = np.zeros((120, 200), bool)
    block[30:70, 50:130] = True  # 80 x 40: came back 81 x 42 (IoU 0.94) from outlines on pixel corners
    speck = np.zeros((120, 200), bool)
    speck[100:103, 10:13] = True  # 9 pixels: was dropped while the summary counted it
    speck[5, 190] = True  # a second, one-pixel part of the same region
    drawn = [[10.5, 20.25], [40.0, 22.0], [30.0, 60.5]]
    task = {"id": 7, "data": {"image": data_uri(encode_image(image))}, "annotations": [
        {"id": 1, "result": [_brush(block), _brush(speck), _polygon(drawn, 200, 120)]}]}
    out = tmp_path / "yolo"
    summary = export_tasks([task], parse_label_config(BOTH_CONFIG), "yolo", out, Options(ratios=(1, 0, 0)),
                           _settings(tmp_path))
    assert summary.instances[("train", "Disk")] == 3
    lines = (out / "labels" / "train" / "7.txt").read_text().splitlines()
    assert len(lines) == 4  # the block, the speck's two parts, the polygon
    assert np.array_equal(_fill_like_ultralytics(lines[0], 200, 120), block)
    assert np.array_equal(_fill_like_ultralytics(lines[1], 200, 120) | _fill_like_ultralytics(lines[2], 200, 120),
                          speck)
    polygon = np.array(lines[3].split()[1:], float).reshape(-1, 2)
    assert np.allclose(polygon * 100, drawn, atol=1e-4)  # as drawn, not re-traced from a raster

    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data["path"] == str(out.absolute())  # Ultralytics reads it from any working folder
    assert data["train"] == "images/train" and data["val"] == "images/train" and "test" not in data
    assert (out / data["path"] / data["train"] / "7.png").is_file()


def test_coco_area_and_bbox_are_what_pycocotools_decodes(tmp_path):
    import json

    from pycocotools.coco import COCO

    image, mask = disk_image(200, 120)
    task = {"id": 3, "data": {"image": data_uri(encode_image(image))}, "annotations": [
        {"id": 1, "result": [_brush(mask), _polygon([[10.5, 20.25], [40.0, 22.0], [30.0, 60.5]], 200, 120)]}]}
    out = tmp_path / "coco"
    export_tasks([task], parse_label_config(BOTH_CONFIG), "coco", out, Options(ratios=(1, 0, 0)), _settings(tmp_path))
    coco = COCO(str(out / "annotations" / "instances_train.json"))
    anns = coco.loadAnns(coco.getAnnIds())
    assert len(anns) == 2
    for ann in anns:
        decoded = coco.annToMask(ann).astype(bool)
        ys, xs = np.nonzero(decoded)
        assert ann["area"] == int(decoded.sum()), ann["area"]
        assert np.allclose(ann["bbox"], [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1])
    assert json.loads((out / "export.json").read_text())["images"] == {"train": 1}


def test_export_never_replaces_what_it_did_not_write(tmp_path, monkeypatch, capsys):
    """--out of a folder with other files, a file, a symlink, the working folder: refused (exit 2), untouched."""
    image, mask = disk_image(160, 120)
    task = {"id": 4, "data": {"image": data_uri(encode_image(image))}, "annotations": [{"id": 1,
                                                                                       "result": [_brush(mask)]}]}
    config = parse_label_config(LABEL_CONFIG)
    precious = tmp_path / "d"
    precious.mkdir()
    (precious / "precious").write_text("keep me")
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me too")
    link = tmp_path / "link"
    link.symlink_to(precious)
    monkeypatch.chdir(precious)
    for target in (precious, a_file, link, Path(".")):
        assert main(["--project", "1", "--format", "coco", "--out", str(target), "--quiet"]) == 2
        assert "error: --out" in capsys.readouterr().out
        with pytest.raises(ExportTargetError):
            export_tasks([task], config, "coco", target, Options(), _settings(tmp_path))
    assert (precious / "precious").read_text() == "keep me" and a_file.read_text() == "keep me too"
    assert sorted(p.name for p in precious.iterdir()) == ["precious"] and link.is_symlink()

    out = tmp_path / "export"
    export_tasks([task], config, "coco", out, Options(), _settings(tmp_path))
    (out / "stale.txt").write_text("from the first export")
    export_tasks([task], config, "coco", out, Options(), _settings(tmp_path))  # an earlier export: replaced
    assert not (out / "stale.txt").exists() and (out / EXPORT_MARKER).is_file()


def test_hostile_task_ids_write_nothing_outside_the_export(tmp_path):
    image, mask = disk_image(160, 120)
    task = {"id": "../../../escaped", "data": {"image": data_uri(encode_image(image))},
            "annotations": [{"id": 1, "result": [_brush(mask)]}]}
    out = tmp_path / "a" / "b" / "out"
    summary = export_tasks([task], parse_label_config(LABEL_CONFIG), "yolo", out, Options(), _settings(tmp_path))
    assert sum(summary.images.values()) == 0
    assert not [p for p in tmp_path.rglob("*escaped*")]


def test_an_export_where_every_task_failed_exits_non_zero(tmp_path, monkeypatch, capsys):
    from backend.export import run

    broken = {"id": 5, "data": {"image": "data:image/png;base64,bm90IGFuIGltYWdl"},
              "annotations": [{"id": 1, "result": [_brush(disk_image(160, 120)[1])]}]}
    monkeypatch.setattr(run, "read_project", lambda client, project: (parse_label_config(LABEL_CONFIG), [broken]))
    assert export_cli(monkeypatch, tmp_path / "out") == 1
    printed = capsys.readouterr().out
    assert "skipped task 5" in printed and "nothing was exported (every task failed)" in printed
