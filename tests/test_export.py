"""Export pieces that need no Label Studio: the split, the class list, which labeling is used, bad input."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from PIL import Image

from backend.core.label_config import parse_label_config
from backend.core.settings import Settings
from backend.export.run import export_tasks, main
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


def test_an_unknown_format_or_unreachable_label_studio_is_a_clear_error(tmp_path, monkeypatch, capsys):
    with pytest.raises(ValueError, match="unknown format 'voc'"):
        export_tasks([], parse_label_config(POLYGON_CONFIG), "voc", tmp_path / "out", Options(), Settings())
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "x")
    from backend.core.settings import get_settings

    get_settings.cache_clear()
    try:
        assert main(["--project", "1", "--format", "coco", "--out", str(tmp_path / "out"), "--quiet"]) == 1
    finally:
        get_settings.cache_clear()
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
