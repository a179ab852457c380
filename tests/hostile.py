"""A loopback HTTP server that misbehaves on request, for the security tests: redirect chains, endless and
dripping bodies, lying Content-Length, gzip bombs; it records every request (path and Authorization)."""

from __future__ import annotations

import gzip
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

MAX_SECONDS = 30  # no response of this server lasts longer, whatever the client does


class HostileServer:
    def __init__(self, image: bytes):
        self.image = image
        self.requests: list[dict] = []
        self.files: dict[str, bytes] = {}
        self.redirects: dict[str, str] = {}
        self.delays: dict[str, float] = {}  # path -> seconds to wait before answering (a slow storage)
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802
                server.requests.append({"path": self.path, "auth": self.headers.get("Authorization")})
                time.sleep(server.delays.get(self.path, 0.0))
                try:
                    server.answer(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def paths(self, prefix: str = "") -> list[str]:
        return [r["path"] for r in self.requests if r["path"].startswith(prefix)]

    def answer(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path
        if path in self.files:
            return self._send(h, 200, self.files[path])
        if path in self.redirects:
            return self._send(h, 302, b"", {"Location": self.redirects[path]})
        if path.startswith("/redirect/"):  # /redirect/N: N more hops, then the image
            hops = int(path.rsplit("/", 1)[1])
            if hops == 0:
                return self._send(h, 200, self.image)
            return self._send(h, 302, b"", {"Location": f"/redirect/{hops - 1}"})
        if path.startswith("/to/"):  # /to/<url-quoted location>: one redirect anywhere
            return self._send(h, 302, b"", {"Location": unquote(path[len("/to/"):])})
        if path == "/endless":  # no Content-Length, bytes until the client hangs up
            h.send_response(200)
            h.send_header("Connection", "close")
            h.end_headers()
            chunk, until = b"\0" * 65536, time.monotonic() + MAX_SECONDS
            while time.monotonic() < until:
                h.wfile.write(chunk)
            return None
        if path == "/drip":  # one byte a second of a declared 1000
            h.send_response(200)
            h.send_header("Content-Length", "1000")
            h.end_headers()
            for _ in range(MAX_SECONDS):
                h.wfile.write(b"x")
                h.wfile.flush()
                time.sleep(1.0)
            return None
        if path == "/huge-length":
            h.send_response(200)
            h.send_header("Content-Length", str(10 << 30))
            h.end_headers()
            h.wfile.write(b"\x89PNG")
            return None
        if path == "/gzip-bomb":  # 64 KB on the wire, 64 MB after decoding
            return self._send(h, 200, gzip.compress(b"\0" * (64 << 20)), {"Content-Encoding": "gzip"})
        if path.startswith("/truncated"):  # declares more than it sends, then hangs up
            h.send_response(200)
            h.send_header("Content-Length", str(len(self.image) * 2))
            h.send_header("Connection", "close")
            h.end_headers()
            h.wfile.write(self.image)
            return None
        return self._send(h, 200, self.image) if path.startswith("/image") else self._send(h, 404, b"")

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict | None = None) -> None:
        h.send_response(status)
        for key, value in (headers or {}).items():
            h.send_header(key, value)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)
