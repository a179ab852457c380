"""Faults degrade instead of erroring (issue 12): cache and folder faults with the real parts (a read-only
mount, a folder replaced by a file, corrupt values and a paused redis-server), each followed by a good click."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from backend.segmentation.masks import rle_to_mask
from tests.helpers import LABEL_CONFIG, data_uri, disk_image, encode_image, iou, keypoint, predict_body, sam_env

IMAGE, TRUTH = disk_image(320, 240)


def good_click(client, url: str) -> float:
    """The seconds a click took; asserts its mask covers the disk (GrabCut) or decodes (SAM)."""
    started = time.monotonic()
    response = client.post("/predict", json=predict_body(url, [keypoint(40, 50)]))
    took = time.monotonic() - started
    assert response.status_code == 200, response.json
    item = response.json["results"][0]["result"][0]
    mask = rle_to_mask(item["value"]["rle"], 240, 320)
    assert mask.shape == (240, 320)
    return took


@pytest.fixture
def read_only_dir(tmp_path):
    """A real read-only file system (a tmpfs remounted read-only; the tests run as root, where chmod does
    not stop writes)."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs for the read-only test: {mounted.stderr.decode()}")
    (folder / "models").mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
    yield folder
    subprocess.run(["umount", str(folder)], check=False)


def test_embedding_folder_replaced_by_a_file_still_serves_clicks(configure, tiny_checkpoints, tmp_path):
    blocker = tmp_path / "embeddings"
    blocker.write_text("not a folder")
    configure(**sam_env("vit_t", tiny_checkpoints["vit_t"]), EMBEDDING_DISK_DIR=str(blocker))
    import _wsgi

    client = _wsgi.app.test_client()
    image = data_uri(encode_image(IMAGE))
    good_click(client, image)
    good_click(client, image)
    assert client.get("/metrics").json["cache"]["errors"] >= 1  # counted, not raised


def test_read_only_file_system_serves_url_images_and_answers_webhooks_clearly(configure, read_only_dir,
                                                                             file_server):
    url = file_server.serve("/photo.png", encode_image(IMAGE))
    configure(SAM_ENGINE="grabcut", IMAGE_CACHE_DIR=str(read_only_dir / "images"),
              MODEL_DIR=str(read_only_dir / "models"), IMAGE_URL_HOSTS="127.0.0.1")
    import _wsgi

    client = _wsgi.app.test_client()
    response = client.post("/predict", json=predict_body(url, [keypoint(40, 50)]))
    assert response.status_code == 200, response.json
    item = response.json["results"][0]["result"][0]
    assert iou(rle_to_mask(item["value"]["rle"], 240, 320), TRUTH) > 0.9
    event = {"action": "ANNOTATION_CREATED", "project": {"id": 4, "label_config": LABEL_CONFIG},
             "annotation": {"id": 17, "result": []}, "task": {"id": 1, "data": {"image": url}}}
    response = client.post("/webhook", json=event)
    assert response.status_code == 507 and "Read-only file system" in response.json["error"]
    assert client.post("/predict", json=predict_body(url, [keypoint(40, 50)])).status_code == 200


def test_a_corrupt_redis_embedding_is_recomputed(configure, tiny_checkpoints, redis_url):
    import redis

    configure(**sam_env("vit_t", tiny_checkpoints["vit_t"]), REDIS_URL=redis_url, EMBEDDING_CACHE_LOCAL_MB="0")
    import _wsgi

    client = _wsgi.app.test_client()
    image = data_uri(encode_image(disk_image(seed=31)[0]))
    good_click(client, image)
    connection = redis.Redis.from_url(redis_url)
    for key in connection.keys("sam:emb:*"):
        connection.set(key, b"\x05\x00garbage")
    good_click(client, image)  # recomputed, not a 500
    good_click(client, image)
    metrics = client.get("/metrics").json
    assert metrics["counts"]["encoder_runs"] == 2 and metrics["cache"]["errors"] >= 1


def test_a_paused_redis_costs_a_click_half_a_second_once_then_nothing(configure, tiny_checkpoints, tmp_path):
    """SIGSTOP on the real redis-server: clicks go on at once (short timeout, then Redis is left alone)."""
    from tests.helpers import free_port

    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        configure(**sam_env("vit_t", tiny_checkpoints["vit_t"]), REDIS_URL=f"redis://127.0.0.1:{port}/0",
                  EMBEDDING_CACHE_LOCAL_MB="0")
        import _wsgi

        client = _wsgi.app.test_client()
        image = data_uri(encode_image(IMAGE))
        good_click(client, image)
        os.kill(proc.pid, signal.SIGSTOP)
        seconds = [good_click(client, image) for _ in range(5)]
        assert seconds[0] < 3 and max(seconds[1:]) < 1.5, seconds
        os.kill(proc.pid, signal.SIGCONT)
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.terminate()
        proc.wait(10)
