"""Depth pre-annotation: a tiny Depth Anything saved and loaded like a real one, files and task data."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from backend.core.errors import BackendError, ImageError, ModelUnavailableError
from backend.core.settings import Settings
from backend.depth.estimate import DepthEstimator, depth_for_task
from tests.helpers import data_uri, disk_image, encode_image, save_tiny_depth_anything, save_tiny_prompt_depth_anything


@pytest.fixture(scope="module")
def tiny_depth(tmp_path_factory):
    folder = tmp_path_factory.mktemp("depth")
    return {"relative": save_tiny_depth_anything(folder / "relative"),
            "metric": save_tiny_depth_anything(folder / "metric", metric=True)}


def settings_for(model, tmp_path, **extra) -> Settings:
    root = tmp_path / "files"
    return Settings(depth_model=str(model), output_dir=str(root / "outputs"), local_files_document_root=str(root),
                    image_cache_dir=str(tmp_path / "images"), **extra)


def test_relative_depth_is_a_16_bit_png_of_the_images_size_with_a_preview(tiny_depth, tmp_path):
    settings = settings_for(tiny_depth["relative"], tmp_path)
    image, _ = disk_image(width=200, height=130)
    task = {"id": 5, "data": {"image": data_uri(encode_image(image))}}
    fields = depth_for_task(task, settings)
    assert fields["depth"] == "/data/local-files/?d=outputs/depth/5_image_preview.png"
    assert fields["depth_raw"] == "/data/local-files/?d=outputs/depth/5_image.png"
    raw = cv2.imread(str(tmp_path / "files/outputs/depth/5_image.png"), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16 and raw.shape == (130, 200) and raw.max() == 65535 and raw.min() == 0
    colour = cv2.imread(str(tmp_path / "files/outputs/depth/5_image_preview.png"))
    assert colour.shape == (130, 200, 3)
    meta = fields["depth_meta"]
    assert meta["kind"] == "relative" and meta["min"] < meta["max"] and meta["raw_format"] == "png"
    assert "/" not in meta["model"]  # a folder's own name: task data shows no server path to labelers
    json.dumps(fields)  # task data must be JSON


def test_metric_depth_is_float_metres_in_npy(tiny_depth, tmp_path):
    settings = settings_for(tiny_depth["metric"], tmp_path, output_url="http://files.example/out")
    image, _ = disk_image(width=90, height=60)
    fields = depth_for_task({"id": 6, "data": {"img": data_uri(encode_image(image))}}, settings, image_key="img")
    assert fields["depth_raw"] == "http://files.example/out/depth/6_img.npy"
    values = np.load(tmp_path / "files/outputs/depth/6_img.npy")
    assert values.dtype == np.float32 and values.shape == (60, 90)
    assert fields["depth_meta"]["kind"] == "metric" and fields["depth_meta"]["unit"] == "m"
    assert np.isclose(values.max(), fields["depth_meta"]["max"], atol=1e-5)


def test_task_with_depth_is_not_recomputed(tiny_depth, tmp_path):
    task = {"id": 7, "data": {"image": "data:broken", "depth": "/given/depth.png"}}
    assert depth_for_task(task, settings_for(tiny_depth["relative"], tmp_path)) is None


def test_bad_image_and_unwritable_storage_are_clear_errors(tiny_depth, tmp_path):
    settings = settings_for(tiny_depth["relative"], tmp_path)
    with pytest.raises(ImageError, match="not a readable image"):
        depth_for_task({"id": 8, "data": {"image": "data:image/png;base64,AAAA"}}, settings)
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where a folder should be")
    settings = Settings(depth_model=str(tiny_depth["relative"]), output_dir=str(blocked), output_url="http://x")
    image, _ = disk_image(width=40, height=30)
    with pytest.raises(BackendError, match="cannot write") as error:
        depth_for_task({"id": 9, "data": {"image": data_uri(encode_image(image))}}, settings)
    assert error.value.where == "OUTPUT_DIR"


def test_missing_model_names_the_setting(tmp_path):
    with pytest.raises(ModelUnavailableError, match="DEPTH_MODEL") as error:
        DepthEstimator(str(tmp_path / "no-such-model"))
    assert "Depth-Anything-V2-Small-hf" in str(error.value)
    with pytest.raises(ModelUnavailableError, match="HF_HUB_OFFLINE is set") as error:  # tests run offline
        DepthEstimator("someone/a-depth-model-with-a-long-name-" + "x" * 200)
    assert "x" * 200 in str(error.value)  # the whole reason, not cut mid-sentence


def test_depth_goes_to_an_s3_compatible_bucket_by_setting(tiny_depth, tmp_path, monkeypatch):
    import boto3
    from moto import mock_aws

    for key, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    image, _ = disk_image(width=64, height=48)
    task = {"id": 11, "data": {"image": data_uri(encode_image(image))}}
    with mock_aws():
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="labels")
        settings = Settings(depth_model=str(tiny_depth["relative"]), output_s3_bucket="labels",
                            output_s3_prefix="team")
        fields = depth_for_task(task, settings)
        assert fields["depth_raw"] == "s3://labels/team/depth/11_image.png"
        body = s3.get_object(Bucket="labels", Key="team/depth/11_image.png")["Body"].read()
        raw = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_UNCHANGED)
        assert raw.dtype == np.uint16 and raw.shape == (48, 64)
        missing = Settings(depth_model=str(tiny_depth["relative"]), output_s3_bucket="no-such-bucket")
        with pytest.raises(BackendError, match="cannot write s3://no-such-bucket") as error:
            depth_for_task(task, missing)
        assert error.value.where == "OUTPUT_S3_BUCKET"


@pytest.fixture(scope="module")
def tiny_prompt_depth(tmp_path_factory):
    return save_tiny_prompt_depth_anything(tmp_path_factory.mktemp("prompt-depth") / "promptda")


def sensor_png(millimetres: np.ndarray) -> str:
    return data_uri(cv2.imencode(".png", millimetres.astype(np.uint16))[1].tobytes())


def test_a_sensor_depth_in_the_task_is_refined_by_prompt_depth_anything(tiny_depth, tiny_prompt_depth, tmp_path):
    settings = settings_for(tiny_depth["relative"], tmp_path, prompt_depth_model=str(tiny_prompt_depth))
    image, _ = disk_image(width=120, height=90)
    near = np.full((24, 32), 1500, np.uint16)  # a phone's low-resolution LiDAR map, millimetres
    near[8:16, 10:20] = 800
    task = {"id": 11, "data": {"image": data_uri(encode_image(image)), "depth_prompt": sensor_png(near)}}
    fields = depth_for_task(task, settings)
    meta = fields["depth_meta"]
    assert meta["kind"] == "metric" and meta["unit"] == "m" and meta["source"] == "image + depth_prompt"
    assert meta["model"] == tiny_prompt_depth.name  # the folder's name, no server path
    refined = np.load(tmp_path / "files/outputs/depth/11_image.npy")
    assert refined.shape == (90, 120) and 0.5 < refined.mean() < 2.0  # metres, on the prompt's scale

    far = sensor_png(near.astype(np.float32) * 3)  # the same scene three times as far: the output follows
    depth_for_task({"id": 12, "data": {**task["data"], "depth_prompt": far}}, settings)
    assert np.load(tmp_path / "files/outputs/depth/12_image.npy").mean() > 2 * refined.mean()

    # a .npy in metres below the local-files root works the same
    np.save(tmp_path / "files" / "sensor.npy", near.astype(np.float32) / 1000)
    fields = depth_for_task({"id": 13, "data": {"image": task["data"]["image"], "depth_prompt": "sensor.npy"}},
                            settings)
    assert fields["depth_meta"]["source"] == "image + depth_prompt"
    assert np.allclose(np.load(tmp_path / "files/outputs/depth/13_image.npy"), refined, atol=1e-4)


def test_without_a_prompt_depth_the_ordinary_model_runs_and_force_refines_a_metric_map(tiny_depth, tiny_prompt_depth,
                                                                                      tmp_path):
    settings = settings_for(tiny_depth["metric"], tmp_path, prompt_depth_model=str(tiny_prompt_depth))
    image, _ = disk_image(width=80, height=60)
    task = {"id": 14, "data": {"image": data_uri(encode_image(image))}}
    fields = depth_for_task(task, settings)
    assert fields["depth_meta"]["source"] == "image" and fields["depth_meta"]["model"] == tiny_depth["metric"].name
    raw = fields["depth_raw"].removeprefix("/data/local-files/?d=")
    task["data"].update(fields, depth_raw=raw)  # as the task now carries it (a path below the root)
    assert depth_for_task(task, settings) is None  # it has depth: left alone
    again = depth_for_task(task, settings, force=True)  # refined with its own metric map as the prompt
    assert again["depth_meta"]["source"] == "image + depth_raw"
    assert again["depth_meta"]["model"] == tiny_prompt_depth.name


def test_a_bad_prompt_depth_is_a_clear_error(tiny_depth, tiny_prompt_depth, tmp_path):
    settings = settings_for(tiny_depth["relative"], tmp_path, prompt_depth_model=str(tiny_prompt_depth))
    image, _ = disk_image(width=40, height=30)
    colour = data_uri(encode_image(image))  # a colour image is not a depth map
    for bad, message in ((colour, "one-channel PNG"), (sensor_png(np.zeros((8, 8))), "positive values")):
        with pytest.raises(ImageError, match=message) as error:
            depth_for_task({"id": 15, "data": {"image": colour, "depth_prompt": bad}}, settings)
        assert "task 15 prompt depth" in error.value.where


def test_prompt_depths_are_held_to_the_image_limits_before_decoding(tmp_path):
    """A 792 KB 16-bit 20000x20000 PNG took a worker from 0.57 to 6.7 GB; a .npy of strings or records stopped
    a depth job with an error of no kind the job knew."""
    import io
    import resource

    from backend.depth.prompt_depth import decode_prompt_depth

    big = cv2.imencode(".png", np.zeros((20000, 20000), np.uint16))[1].tobytes()
    assert len(big) < 2 << 20
    for limits, message in (({"max_pixels": 10_000_000}, "MAX_IMAGE_PIXELS"),
                            ({"max_pixels": 10**9, "max_memory_mb": 512}, "MAX_IMAGE_MEMORY_MB")):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with pytest.raises(ImageError, match=message):
            decode_prompt_depth(big, 0.001, "task 1 prompt depth", **limits)
        assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: nothing decoded
    for array, message in ((np.array(["a", "b"]), "must hold numbers"),
                           (np.zeros(4, [("a", "f4"), ("b", "f4")]), "must hold numbers"),
                           (np.zeros((2, 3), np.float32), "positive values")):
        buffer = io.BytesIO()
        np.save(buffer, array)
        with pytest.raises(ImageError, match=message):
            decode_prompt_depth(buffer.getvalue(), 0.001, "task 1 prompt depth")
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (50000, 50000)})
    with pytest.raises(ImageError, match="MAX_IMAGE_PIXELS"):  # a header that promises 10 GB, and no data
        decode_prompt_depth(b"\x93NUMPY\x01\x00" + header.getvalue()[8:], 0.001, "where", max_pixels=10**9)


def test_a_depth_job_goes_on_after_a_task_fails_with_any_error(monkeypatch):
    """A .npy of strings stopped the whole job at its task (an error of no kind the job knew)."""
    from backend.depth import estimate

    ran = []

    def run_task(project_id, task_id, *args):
        ran.append(task_id)
        if task_id == 2:
            raise TypeError("a bug, not a BackendError")
        return {"task": task_id, "status": "done"}

    monkeypatch.setattr(estimate, "make_client", lambda settings: None)
    monkeypatch.setattr(estimate, "make_storage", lambda settings: None)
    monkeypatch.setattr(estimate, "run_depth_task", run_task)
    report = estimate.run_depth_project(9, task_ids=[1, 2, 3])
    assert ran == [1, 2, 3] and (report["done"], report["failed"]) == (2, 1)
    assert report["errors"]["2"].startswith("internal error TypeError (incident ")
