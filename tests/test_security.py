"""Issue 11's probes replayed against the backend served by gunicorn, with loopback servers for hostile URLs:
each is refused with a clear status, nothing is written outside the output folder, the worker's memory stays
bounded, and the next good click is served."""

from __future__ import annotations

import base64
import contextlib
import os
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

from backend.core.errors import ImageError
from backend.core.settings import Settings
from backend.io.download import Download, UrlRefusedError
from backend.io.images import read_task_image
from tests.helpers import LABEL_CONFIG, data_uri, disk_image, encode_image, free_port, iou, keypoint, predict_body
from tests.hostile import HostileServer
from tests.processes import ROOT, start_gunicorn, stop

IMAGE, TRUTH = disk_image(320, 240)
PNG = encode_image(IMAGE)
TOKEN = "secret-token"


def huge_png_header(width: int, height: int) -> bytes:
    """A few hundred bytes that claim to be a width x height PNG (a decompression bomb's header)."""
    small = encode_image(IMAGE[:1, :1])
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return small[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + small[33:]


def rss_peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def worker_pid(master: int) -> int:
    [child] = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return int(child)


@pytest.fixture(scope="module")
def servers():
    hostile, label_studio, bystander = HostileServer(PNG), HostileServer(PNG), HostileServer(PNG)
    yield hostile, label_studio, bystander
    for server in (hostile, label_studio, bystander):
        server.close()


@pytest.fixture(scope="module")
def backend(servers, tmp_path_factory):
    """One gunicorn worker with 4 threads (so that starving it is visible), GrabCut engine."""
    hostile, label_studio, _ = servers
    folder = tmp_path_factory.mktemp("security")
    root = folder / "files"
    (root / "outputs").mkdir(parents=True)
    (root / "a.png").write_bytes(PNG)
    (root / "link").symlink_to("/etc/passwd")
    env = {"SAM_ENGINE": "grabcut", "IMAGE_URL_HOSTS": f"127.0.0.1:{hostile.port}",
           "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": TOKEN, "DOWNLOAD_TIMEOUT": "3",
           "MAX_DOWNLOAD_MB": "2", "MAX_REDIRECTS": "3", "LOCAL_FILES_DOCUMENT_ROOT": str(root),
           "OUTPUT_DIR": str(root / "outputs"), "MAX_IMAGE_MEMORY_MB": "256", "MAX_REQUEST_MB": "4",
           "DETECTOR_MODEL": str(folder / "no-detector"), "LOG_LEVEL": "INFO"}
    port = free_port()
    proc = start_gunicorn(env, folder, port, workers=1)
    yield type("Backend", (), {"url": f"http://127.0.0.1:{port}", "proc": proc, "folder": folder, "root": root})
    stop(proc)


def predict(backend, image_url: str, items=None, **overrides) -> requests.Response:
    body = {**predict_body(image_url, [keypoint(40, 50)] if items is None else items), **overrides}
    return requests.post(backend.url + "/predict", json=body, timeout=60)


def assert_good_click(backend) -> None:
    from backend.segmentation.masks import rle_to_mask

    response = predict(backend, data_uri(PNG))
    assert response.status_code == 200, response.text
    item = response.json()["results"][0]["result"][0]
    assert iou(rle_to_mask(item["value"]["rle"], 240, 320), TRUTH) > 0.9


def refused(response: requests.Response, status: int, text: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == "ERROR" and text in body["error"], body
    return body


# --- paths built from request data ---

def test_depth_image_key_cannot_leave_the_output_folder(backend):
    body = {"project": 1, "tasks": [6], "image_key": "/../../../../tmp/x"}
    response = requests.post(backend.url + "/depth", json=body, timeout=30)
    refused(response, 400, "image_key")
    for key in ("../x", "a/../../x", "/abs", "", ".hidden", "a\0b"):
        from backend.io.storage import LocalStorage

        with pytest.raises(Exception, match="not a safe storage key"):
            LocalStorage(Settings(output_dir=str(backend.root / "outputs"), output_url="http://x/")).save(key, b"1")
    assert_good_click(backend)


def test_storage_refuses_a_symlink_that_leads_out(tmp_path):
    from backend.io.storage import LocalStorage, StorageError

    (tmp_path / "out").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out" / "depth").symlink_to(tmp_path / "elsewhere")
    storage = LocalStorage(Settings(output_dir=str(tmp_path / "out"), output_url="http://files/"))
    with pytest.raises(StorageError, match="outside OUTPUT_DIR"):
        storage.save("depth/1_image.png", b"x")
    assert list((tmp_path / "elsewhere").iterdir()) == []
    assert storage.save("masks/1.png", b"x")[1] == "http://files/masks/1.png"


# --- URLs from task data ---

def test_hosts_outside_the_allow_list_are_never_contacted(backend, servers):
    _, _, bystander = servers
    before = len(bystander.requests)
    for url in (f"{bystander.url}/image.png", f"http://localhost:{bystander.port}/image.png",
                f"http://2130706433:{bystander.port}/image.png", f"http://0.0.0.0:{bystander.port}/image.png",
                f"http://[::1]:{bystander.port}/image.png", "ftp://127.0.0.1/image.png",
                f"http://user:pw@127.0.0.1:{bystander.port}/image.png"):
        refused(predict(backend, url), 403, "")
    assert len(bystander.requests) == before
    assert_good_click(backend)


def test_wildcard_hosts_must_resolve_to_public_addresses(servers, tmp_path):
    """'*' allows any public host; loopback, private and odd spellings of them are refused at connect time."""
    _, _, bystander = servers
    settings = Settings(image_url_hosts="*", image_cache_dir=str(tmp_path), download_timeout=3)
    before = len(bystander.requests)
    for host in ("127.0.0.1", "localhost", "2130706433", "0x7f000001", "0.0.0.0", "127.1", "[::1]",
                 "[::ffff:127.0.0.1]"):
        with pytest.raises(UrlRefusedError, match="private, loopback or link-local"):
            Download(settings).fetch(f"http://{host}:{bystander.port}/image.png")
    assert len(bystander.requests) == before


def test_redirects_are_capped_and_each_hop_is_checked(backend, servers):
    hostile, _, bystander = servers
    assert predict(backend, f"{hostile.url}/redirect/3").status_code == 200
    refused(predict(backend, f"{hostile.url}/redirect/30"), 422, "MAX_REDIRECTS=3")
    assert len(hostile.paths("/redirect/")) <= 4 + 4  # 4 hops each, never 30
    before = len(bystander.requests)
    refused(predict(backend, f"{hostile.url}/to/{quote(bystander.url + '/image.png', safe='')}"), 403,
            "IMAGE_URL_HOSTS")
    refused(predict(backend, f"{hostile.url}/to/{quote('file:///etc/passwd', safe='')}"), 403, "http")
    assert len(bystander.requests) == before
    assert_good_click(backend)


def test_bodies_are_capped_in_bytes_and_time_and_memory_stays_bounded(backend, servers):
    hostile, _, _ = servers
    assert_good_click(backend)
    pid = worker_pid(backend.proc.pid)
    peak = rss_peak_mb(pid)
    started = time.monotonic()
    refused(predict(backend, f"{hostile.url}/endless"), 422, "MAX_DOWNLOAD_MB=2")
    refused(predict(backend, f"{hostile.url}/huge-length"), 422, "MAX_DOWNLOAD_MB=2")
    refused(predict(backend, f"{hostile.url}/gzip-bomb"), 422, "MAX_DOWNLOAD_MB=2")
    assert time.monotonic() - started < 10
    hostile.files["/bomb.png"] = huge_png_header(14000, 14000)
    refused(predict(backend, f"{hostile.url}/bomb.png"), 422, "MAX_IMAGE_MEMORY_MB=256")
    assert rss_peak_mb(pid) - peak < 100, (peak, rss_peak_mb(pid))
    assert_good_click(backend)


def test_a_dripping_body_is_cut_at_the_deadline_and_cannot_starve_the_worker(backend, servers):
    hostile, _, _ = servers
    results: list[tuple[int, float]] = []

    def drip():
        started = time.monotonic()
        response = predict(backend, f"{hostile.url}/drip")
        results.append((response.status_code, time.monotonic() - started))

    threads = [threading.Thread(target=drip) for _ in range(4)]  # as many as the worker has threads
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    started = time.monotonic()
    assert_good_click(backend)
    assert time.monotonic() - started < 3 + 3  # waits at most for one deadline (DOWNLOAD_TIMEOUT=3)
    for thread in threads:
        thread.join(30)
    assert [status for status, _ in results] == [422] * 4
    assert max(seconds for _, seconds in results) < 3 + 2


def test_the_token_goes_only_to_label_studio_media_paths(backend, servers):
    hostile, label_studio, _ = servers
    label_studio.files["/storage-data/uploaded/?filepath=upload/1/a.png"] = PNG
    label_studio.files["/api/projects/image.png"] = PNG
    label_studio.redirects["/data/upload/2/b.png"] = f"{hostile.url}/image-from-ls.png"
    label_studio.redirects["/storage-data/uploaded/?filepath=upload/2/b.png"] = f"{hostile.url}/image-from-ls.png"
    assert predict(backend, "/data/upload/1/a.png").status_code == 200
    assert predict(backend, f"{label_studio.url}/api/projects/image.png").status_code == 200
    assert predict(backend, "/data/upload/2/b.png").status_code == 200
    auth = {r["path"]: r["auth"] for r in label_studio.requests}
    assert auth["/storage-data/uploaded/?filepath=upload/1/a.png"] == f"Token {TOKEN}"
    assert auth["/api/projects/image.png"] is None
    assert [r["auth"] for r in hostile.requests if r["path"] == "/image-from-ls.png"] == [None]
    for sneaky in ("/data/upload/../../api/current-user/whoami/", "/data/upload/%2e%2e/%2E%2E/api/current-user/whoami/",
                   "/data/upload/./../../api/current-user/whoami/"):  # the media-path check must see what is sent
        predict(backend, sneaky)
    whoami = [r["auth"] for r in label_studio.requests if r["path"].startswith("/api/current-user/whoami")]
    assert whoami and set(whoami) == {None}, whoami


def test_dot_segments_are_resolved_before_the_policy_judges_a_url():
    from backend.io.download import without_dot_segments

    assert without_dot_segments("http://ls/data/upload/../../api/x/?a=1") == "http://ls/api/x/?a=1"
    assert without_dot_segments("http://ls/data/upload/%2e%2E/../api") == "http://ls/api"
    assert without_dot_segments("http://ls/a/b/..") == "http://ls/a/"
    assert without_dot_segments("http://ls/../../etc") == "http://ls/etc"
    assert without_dot_segments("http://ls/data/upload/1/a.png") == "http://ls/data/upload/1/a.png"


def test_a_label_studio_redirect_may_go_to_public_hosts_only(backend, servers):
    _, label_studio, bystander = servers
    label_studio.redirects["/tasks/5/presign/?fileuri=" + base64.urlsafe_b64encode(b"s3://b/k.png").decode()] = (
        bystander.url + "/image.png")
    before = len(bystander.requests)
    body = predict_body("s3://b/k.png", [keypoint(40, 50)], task_id=5)
    refused(requests.post(backend.url + "/predict", json=body, timeout=30), 403, "private, loopback")
    assert len(bystander.requests) == before


def test_download_errors_of_unnamed_hosts_do_not_tell_closed_ports_from_live_ones(servers, tmp_path):
    """Behind a wildcard (any public host) a refused connection and a silent server read alike."""
    route_texts = set()
    settings = Settings(image_url_hosts="*", download_timeout=1)
    download = Download(settings)
    from backend.io.download import Route

    wildcard = Route(public_only=True, token=False, label_studio=False, detailed_errors=False)
    route_texts.add(download._failure("ConnectionError: [Errno 111] refused", wildcard, "http://a/x").message)
    route_texts.add(download._failure("timed out", wildcard, "http://a/x").message)
    assert len(route_texts) == 1 and "111" not in route_texts.pop()


# --- the download cache ---

def test_image_cache_is_collision_free_atomic_and_self_healing(servers, tmp_path):
    hostile, _, _ = servers
    settings = Settings(image_url_hosts=f"127.0.0.1:{hostile.port}", image_cache_dir=str(tmp_path / "cache"),
                        download_timeout=3)
    other = encode_image(disk_image(64, 48, seed=3)[0])
    hostile.files["/one/photo.png"], hostile.files["/two/photo.png"] = PNG, other
    assert read_task_image(f"{hostile.url}/one/photo.png", settings).data == PNG
    assert read_task_image(f"{hostile.url}/two/photo.png", settings).data == other  # same file name, own entry
    with pytest.raises(ImageError):
        read_task_image(f"{hostile.url}/truncated", settings)
    assert len(list((tmp_path / "cache").iterdir())) == 2  # nothing of the broken download was kept
    cached = read_task_image(f"{hostile.url}/one/photo.png", settings)
    cached.cache.path(cached.cache_key).write_bytes(b"garbage")  # a file damaged on disk
    with pytest.raises(ImageError, match="not a readable image"):
        read_task_image(f"{hostile.url}/one/photo.png", settings).decode()
    assert read_task_image(f"{hostile.url}/one/photo.png", settings).data == PNG  # fetched again


def test_image_cache_is_bounded(servers, tmp_path):
    hostile, _, _ = servers
    settings = Settings(image_url_hosts=f"127.0.0.1:{hostile.port}", image_cache_dir=str(tmp_path / "cache"),
                        image_cache_mb=1)
    for index in range(40):  # 40 x ~190 KB
        hostile.files[f"/many/{index}.png"] = encode_image(disk_image(320, 240, seed=index)[0])
        read_task_image(f"{hostile.url}/many/{index}.png", settings)
    assert sum(p.stat().st_size for p in (tmp_path / "cache").iterdir()) <= 1 << 20


# --- local files ---

def test_symlinks_cannot_lead_out_of_the_document_root(backend):
    refused(predict(backend, "/data/local-files/?d=link"), 422, "outside LOCAL_FILES_DOCUMENT_ROOT")
    refused(predict(backend, str(backend.root / "link")), 422, "outside LOCAL_FILES_DOCUMENT_ROOT")
    refused(predict(backend, "/data/local-files/?d=../../etc/passwd"), 422, "outside LOCAL_FILES_DOCUMENT_ROOT")
    assert predict(backend, "/data/local-files/?d=a.png").status_code == 200
    assert_good_click(backend)


# --- bounded work and state ---

def test_request_size_clicks_and_project_strings_are_bounded(backend):
    refused(requests.post(backend.url + "/predict", data=b"{" + b" " * (5 << 20) + b"}",
                          headers={"Content-Type": "application/json"}, timeout=30), 413, "MAX_REQUEST_MB=4")
    clicks = [keypoint(40, 50)] * 10_000
    refused(predict(backend, data_uri(PNG), clicks), 400, "MAX_PROMPT_POINTS=64")
    refused(requests.post(backend.url + "/setup", json={"project": "1" * 100_000, "schema": LABEL_CONFIG},
                          timeout=30), 400, "project")
    refused(requests.post(backend.url + "/setup", json={"project": "3", "extra_params": {"x": "y" * 100_000}},
                          timeout=30), 400, "extra_params")
    assert_good_click(backend)


def test_per_project_state_is_bounded():
    from backend.serving import ml_base

    for project in range(ml_base.MAX_PROJECTS + 50):
        ml_base.LabelStudioMLBase(project_id=str(project)).set("model_version", "x")
    assert len(ml_base._STORE) == ml_base.MAX_PROJECTS


def test_a_request_waits_a_bounded_time_for_a_model_load(configure, monkeypatch, caplog):
    """A model that takes long to load (an unreachable hub) holds a request MODEL_LOAD_WAIT seconds, not more."""
    import backend.prelabel.detector as detector_module
    from backend.core.model_cache import ModelCache

    def slow(*args):
        time.sleep(5)
        raise AssertionError("not reached in time")

    monkeypatch.setattr(detector_module, "_detectors", ModelCache(slow), raising=False)
    configure(SAM_ENGINE="grabcut", MODEL_LOAD_WAIT="1", DETECTOR_MODEL="some/hub-id")
    import _wsgi

    started = time.monotonic()
    response = _wsgi.app.test_client().post("/predict", json=predict_body(data_uri(PNG), None))
    assert time.monotonic() - started < 3 and "MODEL_LOAD_WAIT=1" in caplog.text
    assert response.json["results"] == [[]]


def test_thin_images_are_a_clear_error_on_sam(sam_client):
    thin = data_uri(encode_image(disk_image(5000, 240)[0][:1]))
    response = sam_client.post("/predict", json=predict_body(thin, [keypoint(40, 50, width=5000, height=1)]))
    assert response.status_code == 422 and "too thin" in response.json["error"]


# --- webhooks and training ---

ANNOTATION = {"action": "ANNOTATION_CREATED", "project": {"id": 4, "label_config": LABEL_CONFIG},
              "annotation": {"id": 17, "result": [{"type": "brushlabels", "value": {"format": "rle", "rle": [1, 2],
                                                                                      "brushlabels": ["Disk"]}}]},
              "task": {"id": 1, "data": {"image": "data:image/png;base64,"}}}


def test_training_webhooks_need_an_authenticated_caller(configure, tmp_path):
    configure(SAM_ENGINE="grabcut")
    import _wsgi

    client = _wsgi.app.test_client()
    remote = {"REMOTE_ADDR": "10.1.2.3"}  # a caller on the network (no traffic: Flask's test client)
    for action in ("ANNOTATION_CREATED", "START_TRAINING"):
        response = client.post("/webhook", json={**ANNOTATION, "action": action}, environ_base=remote)
        assert response.status_code == 403 and "BASIC_AUTH_USER" in response.json["error"]
    assert not (tmp_path / "models" / "projects").exists()
    configure(SAM_ENGINE="grabcut", BASIC_AUTH_USER="ls", BASIC_AUTH_PASS="pw")
    assert client.post("/webhook", json=ANNOTATION, environ_base=remote).status_code == 401
    right = {"Authorization": "Basic " + base64.b64encode(b"ls:pw").decode()}
    assert client.post("/webhook", json=ANNOTATION, environ_base=remote, headers=right).status_code == 201


def test_training_data_is_capped(configure, tmp_path):
    configure(SAM_ENGINE="grabcut", MAX_ANNOTATION_KB="64", MAX_PROJECT_ANNOTATIONS="2", TRAIN_EVERY="0")
    import _wsgi

    client = _wsgi.app.test_client()
    big = {**ANNOTATION, "annotation": {"id": 1, "result": [{"value": {"rle": [0] * 50_000}}]}}
    response = client.post("/webhook", json=big)
    assert response.status_code == 413 and "MAX_ANNOTATION_KB=64" in response.json["error"]
    for annotation_id in (2, 3):
        assert client.post("/webhook", json={**ANNOTATION, "annotation": {**ANNOTATION["annotation"],
                                                                          "id": annotation_id}}).status_code == 201
    response = client.post("/webhook", json={**ANNOTATION, "annotation": {**ANNOTATION["annotation"], "id": 4}})
    assert response.status_code == 413 and "MAX_PROJECT_ANNOTATIONS=2" in response.json["error"]
    assert sorted(p.stem for p in (tmp_path / "models/projects/4/annotations").iterdir()) == ["2", "3"]


# --- authentication ---

def start_refused(env: dict, tmp_path: Path, bind: str) -> str:
    """Run gunicorn with `env` bound to `bind`; it must exit at once. Returns what it printed."""
    cmd = [sys.executable, "-m", "gunicorn", "--bind", bind, "_wsgi:app"]
    result = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "MODEL_DIR": str(tmp_path), **env},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    return result.stdout + result.stderr


def test_unsafe_auth_settings_refuse_to_start(tmp_path):
    port = free_port()
    text = start_refused({"SAM_ENGINE": "grabcut", "BASIC_AUTH_PASS": "only-the-password"}, tmp_path,
                         f"127.0.0.1:{port}")
    assert "BASIC_AUTH_USER and BASIC_AUTH_PASS must be set together" in text
    text = start_refused({"SAM_ENGINE": "grabcut"}, tmp_path, f"0.0.0.0:{port}")  # refused before binding
    assert "refusing to serve on 0.0.0.0 without authentication" in text


@pytest.mark.parametrize("user, password", [("ls", "pw"), ("łukasz", "pässwörd")])
def test_basic_auth_with_any_characters_never_errors(configure, user, password):
    configure(SAM_ENGINE="grabcut", BASIC_AUTH_USER=user, BASIC_AUTH_PASS=password)
    import _wsgi

    client = _wsgi.app.test_client()

    def header(u: str, p: str) -> dict:
        return {"Authorization": "Basic " + base64.b64encode(f"{u}:{p}".encode()).decode()}

    assert client.get("/metrics", headers=header(user, password)).status_code == 200
    assert client.get("/metrics", headers=header("żółw", "ß")).status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Basic !!!"}).status_code == 401
    assert client.get("/health").json == {"status": "UP", "model_class": "SamBackend"}


# --- malformed requests ---

MALFORMED = [
    ("/predict", {"tasks": [], "label_config": 5}),
    ("/predict", {"tasks": [], "label_config": ["<View/>"]}),
    ("/predict", {"tasks": [{"id": 1, "data": {"image": "x"}}], "params": []}),
    ("/predict", {"tasks": [{"id": 1, "data": {"image": "x"}}], "params": "nope"}),
    ("/predict", {**predict_body("x", None), "params": {"context": []}}),
    ("/predict", {**predict_body("x", None), "params": {"context": "x"}}),
    ("/predict", predict_body(data_uri(PNG), [{**keypoint(40, 50), "value": {"x": 10**400, "y": 5}}])),
    ("/predict", predict_body(data_uri(PNG), [{**keypoint(40, 50), "value": {"x": "1e999", "y": 5}}])),
    ("/predict", predict_body(data_uri(PNG), [{**keypoint(40, 50), "value": {"x": 10, "y": 5,
                                                                              "keypointlabels": "Disk"}}])),
    ("/predict", {**predict_body(data_uri(PNG), [keypoint(40, 50)]), "project": {"id": 1}}),
    ("/predict", {**predict_body(data_uri(PNG), [keypoint(40, 50)]), "project": "../../1"}),
    ("/predict", predict_body("/data/local-files/?d=a\0b.png", [keypoint(40, 50)])),
    ("/predict", predict_body("/tmp/a\0b.png", [keypoint(40, 50)])),
    ("/predict", {"tasks": [None]}),
    ("/predict", {"tasks": [{"id": 1, "data": None}], "params": {"context": {"result": [keypoint(1, 1)]}}}),
    ("/setup", {"project": "1", "extra_params": ["a"]}),
    ("/setup", {"project": "1", "extra_params": "a"}),
    ("/setup", {"project": "1", "schema": {"a": 1}}),
    ("/setup", {"project": [1]}),
    ("/webhook", {"action": "ANNOTATION_CREATED", "project": {"id": "x"}}),
    ("/webhook", {"action": "ANNOTATION_CREATED", "project": {"id": 1, "label_config": 7}}),
    ("/webhook", {"action": "TASKS_CREATED", "project": {"id": [1]}}),
    ("/depth", {"tasks": [1]}),
    ("/depth", {"project": 1, "tasks": ["1"]}),
    ("/depth", {"project": 1, "image_key": 5}),
]


def test_malformed_requests_answer_400_and_the_next_click_works(backend):
    for path, body in MALFORMED:
        response = requests.post(backend.url + path, json=body, timeout=30)
        assert response.status_code == 400, (path, body, response.text)
        assert response.json()["status"] == "ERROR"
    nested = "[" * 100_000 + "]" * 100_000
    for path in ("/predict", "/setup", "/webhook"):
        response = requests.post(backend.url + path, data=nested, headers={"Content-Type": "application/json"},
                                 timeout=30)
        assert response.status_code == 400, response.text
    assert requests.get(backend.url + "/jobs/..%2F..%2Fetc", timeout=30).status_code in (400, 404)
    assert_good_click(backend)


def test_log_lines_cannot_be_forged_and_errors_show_no_server_paths(backend):
    forged = "Cat\n[2026-01-01 00:00:00] [INFO] [backend] forged line"
    refused(predict(backend, data_uri(PNG), [keypoint(40, 50, forged)]), 400, "unknown label")
    log = (backend.folder / "gunicorn.log").read_text()
    assert "\n[2026-01-01 00:00:00] [INFO] [backend] forged line" not in log
    assert "Cat\\n[2026-01-01" in log
    body = refused(predict(backend, "/etc/passwd"), 422, "LOCAL_FILES_DOCUMENT_ROOT")
    body = refused(predict(backend, str(backend.root / "gone.png")), 422, "cannot read local file")
    assert str(backend.root) not in body["error"] + body["where"]
    assert "LOCAL_FILES_DOCUMENT_ROOT/gone.png" in body["where"]


def test_no_debugger_switch(tmp_path):
    """`python _wsgi.py -d` means debug logging; the Werkzeug debugger (and its /console) never runs."""
    from tests.processes import start_server

    port = free_port()
    proc = start_server([sys.executable, "_wsgi.py", "-d", "--port", str(port), "--with", "sam_engine=grabcut"],
                        {"MODEL_DIR": str(tmp_path)}, tmp_path / "wsgi.log", f"http://127.0.0.1:{port}/health")
    try:
        response = requests.get(f"http://127.0.0.1:{port}/console", timeout=10)
        assert response.status_code == 404 and "Werkzeug" not in response.text
    finally:
        stop(proc)


def test_docker_image_runs_as_a_user_on_a_pinned_base():
    text = (ROOT / "Dockerfile").read_text()
    [base] = [line.split()[1] for line in text.splitlines() if line.startswith("FROM ")]
    assert base.count(".") >= 2 or "@sha256:" in base, base  # python:3.11.x-..., not python:3.11-slim
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0"), users


def test_bad_setting_values_are_named_at_start(tmp_path):
    text = start_refused({"SAM_ENGINE": "grabcut", "PRELABEL_MODE": "bogus", "DEVICE": "gpu",
                          "MAX_DOWNLOAD_MB": "0", "IMAGE_URL_HOSTS": "ok.example.com,bad host"}, tmp_path,
                         f"127.0.0.1:{free_port()}")
    for expected in ("PRELABEL_MODE='bogus' is not one of categories, everything, off", "DEVICE='gpu'",
                     "MAX_DOWNLOAD_MB must be positive", "IMAGE_URL_HOSTS entry 'bad host'"):
        assert expected in text, text


def test_patterns_take_no_trailing_newline_and_ipv4_inside_ipv6_is_not_public(grabcut_client):
    from backend.io.download import DownloadPolicy, UrlRefusedError

    assert grabcut_client.get("/jobs/abc%0a").status_code == 400  # was accepted: `$` matches before a newline
    assert grabcut_client.post("/setup", json={"project": "3\n"}).status_code == 400
    policy = DownloadPolicy(Settings(image_url_hosts="*"))
    for host in ("[::127.0.0.1]", "[::ffff:127.0.0.1]", "[::ffff:10.0.0.1]", "[::10.0.0.1]", "127.0.0.1"):
        with pytest.raises(UrlRefusedError, match="private, loopback"):
            policy.route(f"http://{host}/a.png")
    assert policy.route("http://[2606:4700::1111]/a.png").public_only  # a public one goes on to the connect check


def test_train_generator_refuses_zero_steps(capsys):
    from backend.synthesis.lora import main

    with pytest.raises(SystemExit) as exit_:
        main(["--project", "1", "--steps", "0"])
    assert exit_.value.code == 2 and "--steps must be at least 1" in capsys.readouterr().err


def _dds_of_unknown_pixel_format() -> bytes:
    import struct

    return (b"DDS " + struct.pack("<7I", 124, 0x1007, 8, 8, 0, 0, 0) + b"\0" * 44 + struct.pack("<2I", 32, 0x4)
            + b"ZZZZ" + b"\0" * 20 + struct.pack("<5I", 0x1000, 0, 0, 0, 0) + b"\0" * 256)


def _webhook(**fields) -> dict:
    return {"action": "ANNOTATION_CREATED", "project": {"id": 1, "label_config": LABEL_CONFIG}, **fields}


GENERATION = {"id": 3, "result": [{"type": "textarea", "from_name": "prompt", "value": {"text": ["a cat"]}}]}


@pytest.mark.parametrize("path, body, status, message", [
    ("/depth", "[" * 100000 + "]" * 100000, 400, "nested too deeply"),
    ("/train-generator", "[" * 100000 + "]" * 100000, 400, "nested too deeply"),
    ("/webhook", _webhook(annotation="x", task={"id": 1}), 400, "'annotation' must be an object"),
    ("/webhook", _webhook(annotation={"id": 1, "result": []}, task="x"), 400, "'task' must be an object"),
    ("/webhook", {**_webhook(), "action": "ANNOTATIONS_DELETED", "annotations": "x"}, 400, "must be a list"),
    ("/webhook", {**_webhook(annotation=GENERATION, task={"id": 1}), "project": {"id": "", "label_config": ""}},
     400, "needs its project's and task's ids"),
    ("/predict", predict_body("http://127.0.0.1:a:b/x.png", [keypoint(40, 50)]), 403, "port is not a number"),
    ("/predict", predict_body("http://127.0.0.1:1.2/x.png", [keypoint(40, 50)]), 403, "port is not a number"),
    ("/predict", predict_body(data_uri(_dds_of_unknown_pixel_format(), "image/x-dds"), [keypoint(40, 50)]), 422,
     "not a readable image"),
])
def test_malformed_requests_are_clear_4xx_not_500(grabcut_client, path, body, status, message):
    """Each answered 500 before (RecursionError, AttributeError, ValueError, NotImplementedError)."""
    import json

    data = body if isinstance(body, str) else json.dumps(body)
    response = grabcut_client.post(path, data=data, content_type="application/json")
    assert response.status_code == status and message in response.json["error"], response.json
    assert grabcut_client.post("/predict", json=predict_body(data_uri(PNG), [keypoint(40, 50)])).status_code == 200


def test_start_training_with_an_unwritable_model_dir_is_a_503_naming_it(configure, tmp_path):
    """(Read-only for root too: MODEL_DIR is a file where a folder should be.)"""
    models = tmp_path / "models"
    models.write_text("not a folder")
    configure(SAM_ENGINE="grabcut", MODEL_DIR=str(models))
    import _wsgi

    response = _wsgi.app.test_client().post("/webhook", json={"action": "START_TRAINING",
                                                              "project": {"id": 4, "label_config": LABEL_CONFIG}})
    assert response.status_code == 503 and "MODEL_DIR" in response.json["error"], response.json
    assert str(tmp_path) not in response.get_data(as_text=True)


def test_no_server_path_in_metrics_job_errors_or_task_notes(configure, tmp_path, monkeypatch):
    configure(SAM_ENGINE="vit_b", MODEL_DIR=str(tmp_path / "models"), PRELOAD_MODEL="false")
    import _wsgi

    client = _wsgi.app.test_client()
    client.get("/health")
    metrics = client.get("/metrics").get_data(as_text=True)
    assert "SAM_CHECKPOINT" in metrics and str(tmp_path) not in metrics  # engine.problem named the full path

    from backend.core.jobs import get_queue

    job = get_queue().enqueue("os.listdir", str(tmp_path / "no" / "such" / "folder"))
    with contextlib.suppress(FileNotFoundError):
        get_queue().wait(job, timeout=10)
    body = client.get(f"/jobs/{job}").json
    assert body["status"] == "failed" and "folder" in body["error"] and str(tmp_path) not in body["error"], body

    from backend.io import ls_client

    written = []

    class Tasks:
        def update(self, id, data):  # noqa: A002 - the SDK's keyword
            written.append(data)

    class Client:
        tasks = Tasks()

    monkeypatch.setattr(ls_client, "read_task", lambda client, project, task: {"id": task, "data": {"image": "a"}})
    ls_client.note_task(Client(), 1, 2, "depth", f"cannot read {tmp_path}/models/x.npy")
    assert written == [{"image": "a", "backend_error": "depth failed: cannot read MODEL_DIR/x.npy"}]
    # a batch /predict names task ids and brings its own copy of their data: a note goes only on a task that
    # holds that data (the caller could write its text on any task of the project, 6000 calls for 2000 ids)
    ls_client.note_task(Client(), 1, 3, "pre-labeling", "caller's text", only_if={"image": "http://else/x.png"})
    assert len(written) == 1


def test_one_memory_budget_across_concurrent_requests(configure):
    """8 concurrent clicks on 16-bit 6000x6000 PNGs (80 KB each) took a worker to 4.8 GB, each within the
    per-request limit. Decoding reserves its estimate in the worker's MEMORY_BUDGET_MB: while other requests
    hold it, a click waits briefly, then answers 503 "busy" naming the setting; the next one is served."""
    import numpy as np

    from backend.core.memory_budget import memory_budget

    configure(SAM_ENGINE="grabcut", MEMORY_BUDGET_MB="1100", MAX_IMAGE_MEMORY_MB="1024")
    import _wsgi

    client = _wsgi.app.test_client()
    big = data_uri(encode_image(np.zeros((6000, 6000), np.uint16)))  # a 16-bit PNG: tens of KB, 504 MB to decode
    body = predict_body(big, [keypoint(40, 50, width=6000, height=6000)])
    held, release = threading.Event(), threading.Event()

    def other_requests() -> None:  # two requests' worth of decoding in flight elsewhere in this worker
        with memory_budget(1100).reserve(900 << 20, "other requests"):
            held.set()
            release.wait(10)

    holder = threading.Thread(target=other_requests)
    holder.start()
    held.wait(5)
    started = time.monotonic()
    response = client.post("/predict", json=body)
    waited = time.monotonic() - started
    release.set()
    holder.join()
    assert response.status_code == 503 and "busy" in response.json["error"], response.json
    assert "MEMORY_BUDGET_MB" in response.json["error"] and "busy" in response.status
    assert 1.5 < waited < 10, waited  # it waited for memory to come back before refusing
    assert client.post("/predict", json=body).status_code == 200  # the budget free again: served
    assert memory_budget(1100).used == 0


def test_a_request_that_fits_once_others_finish_waits_instead_of_failing():
    from backend.core.memory_budget import BusyError, MemoryBudget

    budget = MemoryBudget(100)
    done = []

    def hold() -> None:
        with budget.reserve(80, "first"):
            time.sleep(0.5)

    thread = threading.Thread(target=hold)
    thread.start()
    time.sleep(0.1)
    with budget.reserve(50, "second"):  # waits ~0.4 s for the first to finish, then runs
        done.append(budget.used)
    thread.join()
    assert done == [50] and budget.used == 0
    with pytest.raises(BusyError, match="more than MEMORY_BUDGET_MB"):
        with budget.reserve(101, "too much"):
            pass


def test_the_probe_set_gets_no_5xx_and_the_server_stays_responsive():
    """`./run probe` (bench/probe.py): every hostile probe refused with a clear 4xx or served, none a 5xx."""
    run = subprocess.run([sys.executable, "bench/probe.py"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    row = [line for line in run.stdout.splitlines() if line.startswith("| ") and line[2].isdigit()][0]
    tried, refused, ok, failed, unresponsive = (cell.strip() for cell in row.strip("|").split("|"))
    assert int(tried) >= 35 and int(failed) == 0 and float(unresponsive) == 0.0, run.stdout
    assert int(refused) == int(tried) - int(ok) and int(ok) <= 1, run.stdout  # /metrics is the one 2xx
