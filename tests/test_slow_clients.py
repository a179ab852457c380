"""Slow clients before authentication: 16 connections that send their headers a byte at a time stopped every
answer of gunicorn (its threads wait for them). Behind the deployment's buffering nginx
(deploy/nginx.conf.template, the real nginx) a click is still served. Loopback only, bounded in time."""

from __future__ import annotations

import os
import shutil
import socket
import string
import subprocess
import threading
import time

import pytest
import requests

from tests.helpers import data_uri, disk_image, encode_image, free_port, keypoint, predict_body
from tests.processes import ROOT, start_gunicorn, stop

SLOW_CLIENTS = 16
IMAGE, _ = disk_image(320, 240)


def start_nginx(folder, upstream: str) -> tuple[subprocess.Popen, str]:
    """nginx in the foreground with the deployment's server block; (process, URL)."""
    binary = shutil.which("nginx") or "/usr/sbin/nginx"
    port = free_port()
    server = string.Template((ROOT / "deploy" / "nginx.conf.template").read_text()).safe_substitute(
        BACKEND=upstream, LISTEN=f"127.0.0.1:{port}")
    (folder / "server.conf").write_text(server)
    user = "user root;" if os.geteuid() == 0 else ""  # its workers write the buffered bodies into `folder`
    (folder / "nginx.conf").write_text(f"""
{user}
worker_processes 1;
daemon off;
pid {folder}/nginx.pid;
error_log {folder}/error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {folder}/body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    include {folder}/server.conf;
}}
""")
    proc = subprocess.Popen([binary, "-p", str(folder), "-c", str(folder / "nginx.conf")], stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"nginx did not start: {proc.stderr.read().decode()[-2000:]}")


def trickle(url: str, stop_at: float, opened: list) -> None:
    """Send a request's headers one byte every 0.5 s until `stop_at`."""
    host, port = url.removeprefix("http://").split(":")
    request = f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n" + "X-Pad: a\r\n" * 100
    try:
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            opened.append(1)
            for byte in request.encode():
                if time.monotonic() > stop_at:
                    return
                sock.sendall(bytes([byte]))
                time.sleep(0.5)
    except OSError:  # cut by the server: what a timeout is for
        return


def click_seconds(url: str, limit: float) -> float | None:
    """Seconds a good click took, None when it got no answer within `limit`."""
    started = time.monotonic()
    try:
        response = requests.post(f"{url}/predict", json=predict_body(data_uri(encode_image(IMAGE)),
                                                                      [keypoint(40, 50)]), timeout=limit)
    except requests.RequestException:
        return None
    assert response.status_code == 200, response.text
    return time.monotonic() - started


@pytest.fixture
def backend_behind_nginx(tmp_path):
    if not shutil.which("nginx") and not os.path.exists("/usr/sbin/nginx"):
        pytest.fail("nginx is missing: run ./run test (it installs nginx-light)")
    port = free_port()
    gunicorn = start_gunicorn({"SAM_ENGINE": "grabcut"}, tmp_path, port, workers=1)
    (tmp_path / "nginx").mkdir()
    nginx, url = start_nginx(tmp_path / "nginx", f"127.0.0.1:{port}")
    yield f"http://127.0.0.1:{port}", url
    stop(nginx)
    stop(gunicorn)


def test_slow_clients_starve_gunicorn_alone_but_not_the_nginx_front(backend_behind_nginx):
    direct, proxied = backend_behind_nginx
    assert click_seconds(direct, 30) is not None and click_seconds(proxied, 30) is not None  # both serve

    for target, expect_served in ((direct, False), (proxied, True)):
        stop_at = time.monotonic() + 25
        opened: list = []
        threads = [threading.Thread(target=trickle, args=(target, stop_at, opened), daemon=True)
                   for _ in range(SLOW_CLIENTS)]
        for thread in threads:
            thread.start()
        time.sleep(2)
        assert len(opened) == SLOW_CLIENTS
        seconds = click_seconds(proxied if expect_served else direct, 8)
        if expect_served:
            assert seconds is not None and seconds < 5, seconds  # nginx holds the slow ones, gunicorn serves
        else:
            assert seconds is None, seconds  # the baseline: gunicorn's threads all wait for slow headers
        for thread in threads:
            thread.join(30)
        assert click_seconds(direct, 30) is not None  # the slow clients gone, the backend serves again
