"""Hostile-input probes against the backend under gunicorn (loopback only): prints a table of probes tried, refused
cleanly (4xx), answered 5xx, answered 2xx, and the seconds /health was unresponsive meanwhile.

    ./run probe [--repeat N]

Each probe is one HTTP request a careless or hostile caller could send; a probe "refused cleanly" got a 4xx JSON
error naming what and where. The server must keep answering /health within a second after every probe.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.helpers import (  # noqa: E402
    LABEL_CONFIG,
    data_uri,
    disk_image,
    encode_image,
    free_port,
    keypoint,
    predict_body,
    rectangle,
)
from tests.processes import start_gunicorn, stop  # noqa: E402

IMAGE = data_uri(encode_image(disk_image(320, 240)[0]))
DEEP = "[" * 100_000 + "]" * 100_000


def dds_of_unknown_pixel_format() -> bytes:
    return (b"DDS " + struct.pack("<7I", 124, 0x1007, 8, 8, 0, 0, 0) + b"\0" * 44 + struct.pack("<2I", 32, 0x4)
            + b"ZZZZ" + b"\0" * 20 + struct.pack("<5I", 0x1000, 0, 0, 0, 0) + b"\0" * 256)


def webhook(**fields) -> dict:
    return {"action": "ANNOTATION_CREATED", "project": {"id": 1, "label_config": LABEL_CONFIG}, **fields}


def probes() -> list[tuple[str, str, str, object]]:
    """(name, method, path, JSON body or raw text)."""
    click = [keypoint(40, 50)]
    return [
        ("deep JSON /predict", "POST", "/predict", DEEP),
        ("deep JSON /depth", "POST", "/depth", DEEP),
        ("deep JSON /train-generator", "POST", "/train-generator", DEEP),
        ("not JSON", "POST", "/predict", "{oops"),
        ("tasks not a list", "POST", "/predict", {**predict_body(IMAGE, click), "tasks": "x"}),
        ("context not an object", "POST", "/predict", {**predict_body(IMAGE, None), "params": {"context": [1]}}),
        ("unknown label", "POST", "/predict", predict_body(IMAGE, [keypoint(40, 50, "Cat")])),
        ("click outside the image", "POST", "/predict", predict_body(IMAGE, [keypoint(140, 50)])),
        ("box with no area", "POST", "/predict", predict_body(IMAGE, [rectangle(10, 10, 0, 5)])),
        ("10**400 coordinate", "POST", "/predict", '{"tasks": [{"id": 1, "data": {"image": "x"}}], "params": '
         '{"context": {"result": [{"type": "keypointlabels", "value": {"x": 1' + "0" * 400 + ', "y": 1}}]}}}'),
        ("1000 clicks", "POST", "/predict", predict_body(IMAGE, [keypoint(40, 50)] * 1000)),
        ("empty image", "POST", "/predict", predict_body("data:image/png;base64,", click)),
        ("broken PNG", "POST", "/predict", predict_body(data_uri(b"\x89PNG\r\n\x1a\n broken"), click)),
        ("DDS of unknown pixel format", "POST", "/predict",
         predict_body(data_uri(dds_of_unknown_pixel_format(), "image/x-dds"), click)),
        ("1x1 image", "POST", "/predict", predict_body(data_uri(encode_image(np.zeros((1, 1, 3), np.uint8))),
                                                      click)),
        ("loopback URL", "POST", "/predict", predict_body("http://127.0.0.1:9/a.png", click)),
        ("IPv4 inside IPv6", "POST", "/predict", predict_body("http://[::127.0.0.1]:9/a.png", click)),
        ("port :a:b", "POST", "/predict", predict_body("http://127.0.0.1:a:b/a.png", click)),
        ("port :1.2", "POST", "/predict", predict_body("http://127.0.0.1:1.2/a.png", click)),
        ("file: URL", "POST", "/predict", predict_body("file:///etc/passwd", click)),
        ("local path outside the root", "POST", "/predict", predict_body("/etc/passwd", click)),
        ("storage path without Label Studio", "POST", "/predict", predict_body("/data/upload/../../api/x", click)),
        ("config without an image", "POST", "/predict", {**predict_body(IMAGE, click), "label_config": "<View/>"}),
        ("2 MB config", "POST", "/predict", {**predict_body(IMAGE, click),
                                            "label_config": LABEL_CONFIG + "<!--" + "x" * (2 << 20) + "-->"}),
        ("lone surrogate phrase", "POST", "/predict", predict_body(IMAGE, [
            {"type": "textarea", "from_name": "phrase", "to_name": "image", "value": {"text": ["a \ud800 car"]}}])),
        ("project id with newline", "POST", "/setup", {"project": "3\n", "schema": LABEL_CONFIG}),
        ("extra_params not an object", "POST", "/setup", {"project": "3", "schema": LABEL_CONFIG,
                                                         "extra_params": "[1, 2"}),
        ("job id with newline", "GET", "/jobs/abc%0a", None),
        ("unknown job", "GET", "/jobs/0123456789ab", None),
        ("webhook annotation a string", "POST", "/webhook", webhook(annotation="x", task={"id": 1})),
        ("webhook task a string", "POST", "/webhook", webhook(annotation={"id": 1, "result": []}, task="x")),
        ("webhook annotations a string", "POST", "/webhook",
         {**webhook(), "action": "ANNOTATIONS_DELETED", "annotations": "x"}),
        ("webhook without project", "POST", "/webhook", {"action": "ANNOTATION_CREATED"}),
        ("depth with 100k task ids", "POST", "/depth", {"project": 1, "tasks": list(range(100_001))}),
        ("depth with bad ids", "POST", "/depth", {"project": 1, "tasks": ["1"]}),
        ("train-generator unknown engine", "POST", "/train-generator", {"project": 1, "engine": "dalle"}),
        ("metrics", "GET", "/metrics", None),
    ]


def send(base: str, method: str, path: str, body: object) -> requests.Response:
    if body is None:
        return requests.request(method, base + path, timeout=60)
    data = body if isinstance(body, str) else json.dumps(body)
    return requests.request(method, base + path, data=data, headers={"Content-Type": "application/json"},
                            timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=1, help="run the probe set this many times")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="probe-"))
    port = free_port()
    proc = start_gunicorn({"SAM_ENGINE": "grabcut", "REDIS_URL": "", "HF_HUB_OFFLINE": "1"}, folder, port)
    base = f"http://127.0.0.1:{port}"
    counts = {"tried": 0, "4xx": 0, "5xx": 0, "2xx": 0}
    unresponsive, failures = 0.0, []
    try:
        for _ in range(args.repeat):
            for name, method, path, body in probes():
                counts["tried"] += 1
                try:
                    status = send(base, method, path, body).status_code
                except requests.RequestException as exc:
                    status = 0
                    failures.append(f"{name}: {type(exc).__name__}")
                kind = f"{status // 100}xx" if status else "5xx"
                counts[kind if kind in counts else "5xx"] += 1
                if status >= 500 or not status:
                    failures.append(f"{name}: HTTP {status}")
                started = time.monotonic()
                try:
                    requests.get(base + "/health", timeout=30)
                except requests.RequestException:
                    pass
                unresponsive += max(0.0, time.monotonic() - started - 1.0)
    finally:
        stop(proc)
    print("| probes tried | refused cleanly (4xx) | 2xx | 5xx | server unresponsive (s) |")
    print("|---|---|---|---|---|")
    print(f"| {counts['tried']} | {counts['4xx']} | {counts['2xx']} | {counts['5xx']} | {unresponsive:.1f} |")
    for failure in failures:
        print(f"  5xx or no answer: {failure}")


if __name__ == "__main__":
    main()
