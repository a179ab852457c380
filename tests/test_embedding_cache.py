import os
import threading
import time

import numpy as np
import pytest

from backend.core.label_config import parse_label_config
from backend.core.settings import Settings
from backend.segmentation.embedding_cache import DiskStore, MemoryCache, deserialize, make_cache, serialize
from backend.segmentation.segmenter import Embedding
from backend.segmentation.service import SegmentationService
from tests.helpers import LABEL_CONFIG, data_uri, disk_image, encode_image, free_port, keypoint, predict_body, sam_env

CONFIG = parse_label_config(LABEL_CONFIG)


def embedding(nbytes: int = 4096, value: float = 0.0) -> Embedding:
    return Embedding(np.full(nbytes // 4, value, np.float32), (10, 20), (5, 10))


def test_serialization_round_trip():
    original = Embedding(np.random.rand(1, 256, 8, 8).astype(np.float32), (480, 640), (768, 1024))
    restored = deserialize(serialize(original))
    assert np.array_equal(restored.features, original.features)
    assert restored.original_size == (480, 640) and restored.input_size == (768, 1024)


def test_memory_cache_is_bounded_lru():
    cache = MemoryCache(max_bytes=3 * 4096)
    for key in "abc":
        cache.put(key, embedding())
    cache.get("a")  # a is now the most recent
    cache.put("d", embedding())
    assert cache.get("b") is None  # least recently used went first
    assert all(cache.get(key) is not None for key in "acd")
    assert cache.stats()["bytes"] <= 3 * 4096
    cache.put("huge", embedding(10 * 4096))
    assert cache.get("huge") is None and cache.get("a") is not None


def count_encoder_calls(service: SegmentationService) -> list:
    calls = []
    segmenter = service.engine.get()
    original = segmenter.embed

    def spy(image):
        calls.append(image.shape)
        return original(image)

    segmenter.embed = spy
    return calls


def task(url: str) -> dict:
    return {"id": 1, "data": {"image": url}}


@pytest.fixture
def image_url():
    image, _ = disk_image()
    return data_uri(encode_image(image))


def tiny_settings(tmp_path, tiny_checkpoints, **extra) -> Settings:
    env = {k.lower(): v for k, v in sam_env("vit_t", tiny_checkpoints["vit_t"]).items()}
    env["sam_download"] = False
    return Settings(model_dir=str(tmp_path), **env, **extra)


def test_repeated_clicks_run_the_encoder_once(tmp_path, tiny_checkpoints, image_url):
    service = SegmentationService(tiny_settings(tmp_path, tiny_checkpoints))
    calls = count_encoder_calls(service)
    for x in (40, 42, 45):
        service.predict(task(image_url), {"result": [keypoint(x, 50)]}, CONFIG)
    assert len(calls) == 1
    other, _ = disk_image(seed=5)
    service.predict(task(data_uri(encode_image(other))), {"result": [keypoint(40, 50)]}, CONFIG)
    assert len(calls) == 2


def test_concurrent_first_clicks_share_one_encoder_run(tmp_path, tiny_checkpoints, image_url):
    service = SegmentationService(tiny_settings(tmp_path, tiny_checkpoints))
    calls = count_encoder_calls(service)
    threads = [threading.Thread(target=service.predict, args=(task(image_url), {"result": [keypoint(40, 50)]},
                                                                CONFIG)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1


def test_redis_cache_is_shared_between_workers(tmp_path, tiny_checkpoints, image_url, redis_url):
    settings = tiny_settings(tmp_path, tiny_checkpoints, redis_url=redis_url)
    first, second = SegmentationService(settings), SegmentationService(settings)  # two worker processes
    first_calls, second_calls = count_encoder_calls(first), count_encoder_calls(second)
    a = first.predict(task(image_url), {"result": [keypoint(40, 50)]}, CONFIG)
    b = second.predict(task(image_url), {"result": [keypoint(40, 50)]}, CONFIG)
    assert len(first_calls) == 1 and len(second_calls) == 0
    assert a["result"][0]["value"]["rle"] == b["result"][0]["value"]["rle"]
    assert second.cache.stats()["hits"] == 1


def test_redis_cache_round_trip_and_expiry(redis_url):
    cache = make_cache(Settings(redis_url=redis_url, embedding_cache_ttl=100))
    cache.put("k", embedding(value=3.0))
    assert 0 < cache.back.client.ttl("k") <= 100
    other_worker = make_cache(Settings(redis_url=redis_url, embedding_cache_ttl=100))
    first = other_worker.get("k")
    assert first.features[0] == 3.0 and other_worker.stats()["hits"] == 1
    assert other_worker.get("k") is first  # the second read comes from the worker's own front cache
    assert other_worker.stats()["hits"] == 1


def test_unreachable_redis_still_serves(tmp_path, tiny_checkpoints, image_url, caplog):
    settings = tiny_settings(tmp_path, tiny_checkpoints, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    service = SegmentationService(settings)
    prediction = service.predict(task(image_url), {"result": [keypoint(40, 50)]}, CONFIG)
    assert prediction["result"][0]["value"]["rle"]
    assert service.cache.stats()["errors"] >= 1
    assert "embedding cache unreachable" in caplog.text


def test_imported_tasks_are_embedded_before_the_first_click(configure, tiny_checkpoints):
    configure(**sam_env("vit_t", tiny_checkpoints["vit_t"]), PRECOMPUTE_ON_IMPORT="true")
    from backend.core.jobs import get_queue, reset_queue

    reset_queue()
    import _wsgi

    client = _wsgi.app.test_client()
    images = [data_uri(encode_image(disk_image(seed=s)[0])) for s in (21, 22)]
    event = {"action": "TASKS_CREATED", "project": {"id": 5, "label_config": LABEL_CONFIG},
             "tasks": [{"id": 1, "data": {"image": images[0]}}, {"id": 2, "data": {"image": images[1]}},
                       {"id": 3, "data": {"image": "data:image/png;base64,AAAA"}}]}
    response = client.post("/webhook", json=event)
    assert response.status_code == 201 and response.json["images"] == 3
    result = get_queue().wait(response.json["job"], timeout=120)
    assert result["embedded"] == 2 and len(result["failed"]) == 1
    assert client.get("/metrics").json["counts"]["encoder_runs"] == 2
    assert client.post("/predict", json=predict_body(images[1], [keypoint(40, 50)])).status_code == 200
    assert client.get("/metrics").json["counts"]["encoder_runs"] == 2  # the first click was a warm click
    reset_queue()


def test_without_redis_workers_share_embeddings_on_disk_and_keep_them_across_restarts(
        tmp_path, tiny_checkpoints, image_url):
    settings = tiny_settings(tmp_path, tiny_checkpoints)
    first = SegmentationService(settings)
    first_calls = count_encoder_calls(first)
    a = first.predict(task(image_url), {"result": [keypoint(40, 50)]}, CONFIG)
    assert len(list((tmp_path / "embeddings").glob("*.emb"))) == 1
    restarted = SegmentationService(settings)  # another worker, or the same one after a restart
    restarted_calls = count_encoder_calls(restarted)
    b = restarted.predict(task(image_url), {"result": [keypoint(40, 50)]}, CONFIG)
    assert len(first_calls) == 1 and len(restarted_calls) == 0
    assert a["result"][0]["value"]["rle"] == b["result"][0]["value"]["rle"]
    assert restarted.cache.stats()["kind"] == "disk" and restarted.cache.stats()["hits"] == 1
    off = SegmentationService(tiny_settings(tmp_path / "off", tiny_checkpoints, embedding_disk_mb=0))
    off.predict(task(image_url), {"result": [keypoint(40, 50)]}, CONFIG)
    assert off.cache.stats()["kind"] == "memory" and not (tmp_path / "off" / "embeddings").exists()


def test_disk_store_deletes_the_least_recently_used_files_first(tmp_path):
    one = len(serialize(embedding()))
    store = DiskStore(tmp_path, max_bytes=3 * one)
    now = time.time()
    for age, key in ((30, "a"), (20, "b"), (10, "c")):
        store.put(key, embedding(value=age))
        os.utime(store._path(key), (now - age, now - age))
    assert store.get("a").features[0] == 30  # a is now the most recently used
    store.put("d", embedding())
    assert store.get("b") is None
    assert all(store.get(key) is not None for key in "acd")
    assert store.stats()["files"] == 3 and store.stats()["bytes"] <= 3 * one


def test_disk_store_drops_an_unreadable_file_and_misses(tmp_path, caplog):
    store = DiskStore(tmp_path, max_bytes=1 << 20)
    store.put("k", embedding(value=1.0))
    store._path("k").write_bytes(b"\x05\x00")  # truncated
    assert store.get("k") is None and not store._path("k").exists()
    assert store.stats()["errors"] == 1 and "unusable" in caplog.text
    store.put("k", embedding(value=2.0))
    assert store.get("k").features[0] == 2.0


def test_an_embedding_is_a_set_of_named_arrays_stored_without_pickle():
    """SAM 2 keeps high-resolution maps beside the image embedding: every named array survives the caches,
    each in its own dtype; a blob of another format (or a lying header) is refused, so stores drop it."""
    import json
    import struct

    original = Embedding(np.random.rand(1, 256, 8, 8).astype(np.float16), (480, 640), (768, 1024),
                         extra={"high_res_0": np.random.rand(1, 32, 32, 32).astype(np.float32),
                                "high_res_1": np.arange(6, dtype=np.int64).reshape(2, 3)})
    blob = serialize(original)
    restored = deserialize(blob)
    assert list(restored.arrays) == ["features", "high_res_0", "high_res_1"]
    for name, array in original.arrays.items():
        assert restored.arrays[name].dtype == array.dtype and np.array_equal(restored.arrays[name], array)
    assert restored.nbytes == original.nbytes == sum(a.nbytes for a in original.arrays.values())
    (length,) = struct.unpack_from("<I", blob)
    assert b"pickle" not in blob[: 4 + length] and json.loads(blob[4 : 4 + length])["format"] == 2
    with pytest.raises(ValueError, match="describes"):
        deserialize(blob[:-8])
    old = json.dumps({"dtype": "<f4", "shape": [2], "original_size": [1, 1], "input_size": [1, 1]}).encode()
    with pytest.raises(ValueError, match="format"):
        deserialize(struct.pack("<I", len(old)) + old + np.zeros(2, np.float32).tobytes())
