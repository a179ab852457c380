"""The backend served the way it runs in production: gunicorn, real HTTP, a separate process."""

import time

import pytest
import requests

from backend.segmentation.masks import rle_to_mask
from tests.helpers import data_uri, disk_image, encode_image, free_port, iou, keypoint, predict_body, sam_env
from tests.processes import start_gunicorn, stop


@pytest.fixture
def served(tmp_path, tiny_checkpoints, redis_url):
    procs = []

    def serve(env):
        port = free_port()
        procs.append(start_gunicorn(env, tmp_path, port))
        return f"http://127.0.0.1:{port}"

    yield serve
    for proc in procs:
        stop(proc)


def test_gunicorn_grabcut_mask_covers_object(served):
    url = served({"SAM_ENGINE": "grabcut"})
    image, truth = disk_image()
    body = predict_body(data_uri(encode_image(image)), [keypoint(40, 50)])
    response = requests.post(url + "/predict", json=body, timeout=60)
    assert response.status_code == 200
    item = response.json()["results"][0]["result"][0]
    assert iou(rle_to_mask(item["value"]["rle"], 240, 320), truth) > 0.9
    bad = requests.post(url + "/predict", json=predict_body("data:image/png;base64,AAAA", [keypoint(4, 5)]), timeout=60)
    assert bad.status_code == 422 and "not a readable image" in bad.json()["error"]
    assert requests.post(url + "/predict", json=body, timeout=60).status_code == 200


def per_worker(url: str, route: str, until, timeout: float = 60, load=None) -> dict[int, dict]:
    """`route`'s JSON from each gunicorn worker (by pid), polled (with `load()` in between) until `until(seen)`."""
    seen: dict[int, dict] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if load:
            load()
        for _ in range(8):
            body = requests.get(url + route, timeout=10).json()
            seen[body["worker"]] = body
        if until(seen):
            break
    return seen


def test_two_gunicorn_workers_share_embeddings_through_redis(served, tiny_checkpoints, redis_url):
    from concurrent.futures import ThreadPoolExecutor

    import redis

    own_db = redis_url.rsplit("/", 1)[0] + "/5"  # other tests share database 0
    redis.Redis.from_url(own_db).flushdb()
    url = served({**sam_env("vit_t", tiny_checkpoints["vit_t"]), "REDIS_URL": own_db})
    image, _ = disk_image(seed=11)
    body = predict_body(data_uri(encode_image(image)), [keypoint(40, 50)])

    def clicks() -> None:  # concurrent clicks, so that both workers serve the image
        with ThreadPoolExecutor(4) as pool:
            statuses = list(pool.map(lambda _: requests.post(url + "/predict", json=body, timeout=60).status_code,
                                     range(4)))
        assert statuses == [200] * 4

    # One worker encodes the new image (two workers missing it at the same instant may both encode it: the
    # in-flight lock is per process), then concurrent clicks make both workers serve it.
    assert requests.post(url + "/predict", json=body, timeout=60).status_code == 200
    workers = per_worker(url, "/metrics", lambda seen: len(seen) == 2 and all(
        m["counts"].get("decoder_runs", 0) for m in seen.values()), load=clicks)
    assert len(workers) == 2 and all(m["counts"].get("decoder_runs", 0) >= 1 for m in workers.values()), workers
    assert sum(m["counts"].get("encoder_runs", 0) for m in workers.values()) == 1  # one encoder run in all
    assert len(redis.Redis.from_url(own_db).keys("sam:emb:*")) == 1


def test_started_the_way_label_studio_ml_start_runs_it(tmp_path):
    """`label-studio-ml start DIR --port P --with k=v` runs `python DIR/_wsgi.py --port P --with k=v`."""
    import sys

    from tests.processes import ROOT, start_server

    port = free_port()
    cmd = [sys.executable, "_wsgi.py", "--port", str(port), "--host", "127.0.0.1", "--with", "sam_engine=grabcut",
           "--log-level", "WARNING", "--model-dir", str(tmp_path / "models")]
    proc = start_server(cmd, {"IMAGE_CACHE_DIR": str(tmp_path / "img")}, tmp_path / "wsgi.log",
                        f"http://127.0.0.1:{port}/health", cwd=ROOT)
    try:
        url = f"http://127.0.0.1:{port}"
        assert requests.get(url + "/health", timeout=10).json()["engine"]["engine"] == "grabcut"
        image, truth = disk_image()
        response = requests.post(url + "/predict", json=predict_body(data_uri(encode_image(image)),
                                                                      [keypoint(40, 50)]), timeout=60)
        item = response.json()["results"][0]["result"][0]
        assert iou(rle_to_mask(item["value"]["rle"], 240, 320), truth) > 0.9
    finally:
        stop(proc)


def test_workers_load_the_model_at_start_not_on_the_first_click(served, tiny_checkpoints):
    url = served(sam_env("vit_t", tiny_checkpoints["vit_t"]))
    workers = per_worker(url, "/health", lambda seen: len(seen) == 2 and all(
        h["engine"]["loaded"] for h in seen.values()), load=lambda: time.sleep(0.2))
    assert len(workers) == 2 and all(h["engine"]["loaded"] for h in workers.values()), workers
    metrics = per_worker(url, "/metrics", lambda seen: len(seen) == 2)
    assert len(metrics) == 2 and all(m["counts"].get("decoder_runs", 0) == 0 for m in metrics.values())


def test_prometheus_metrics_add_up_across_workers(served, tmp_path):
    """With PROMETHEUS_MULTIPROC_DIR, any worker's /metrics counts the requests of both."""
    from prometheus_client.parser import text_string_to_metric_families

    folder = tmp_path / "prometheus"
    folder.mkdir()
    url = served({"SAM_ENGINE": "grabcut", "PROMETHEUS_MULTIPROC_DIR": str(folder)})
    for _ in range(20):
        assert requests.get(url + "/versions?project=1", timeout=10).status_code == 200
    for _ in range(4):  # whichever worker answers
        page = requests.get(url + "/metrics?format=prometheus", timeout=10).text
        counts = [s.value for f in text_string_to_metric_families(page) for s in f.samples
                  if s.name == "backend_requests_total" and s.labels.get("route") == "/versions"]
        assert counts == [20], counts


def test_the_command_line_works_from_any_folder(tmp_path):
    import subprocess
    import sys

    for args, code in ((["depth", "--help"], 0), (["prelabel", "--help"], 0), ([], 2)):
        run = subprocess.run([sys.executable, "-m", "backend", *args], cwd=tmp_path, capture_output=True, text=True,
                             timeout=120)
        assert run.returncode == code, run.stderr[-2000:]
        assert "No module named" not in run.stderr
