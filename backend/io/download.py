"""Downloading task images from URLs that task data (so any user of Label Studio) can choose.

Policy (README "Security"): a URL is fetched only when its host is Label Studio's own (LABEL_STUDIO_URL)
or is named in IMAGE_URL_HOSTS. A host named exactly ("images.lan", "10.0.0.7:8000") is trusted
whatever its address; a host matched by a wildcard ("*.example.com", "*") must resolve to a public
address, checked at connect time on the address actually used (requests-hardened), so private,
loopback, link-local and odd spellings of them ("2130706433", "0.0.0.0") are refused. Redirects are
followed by hand, at most MAX_REDIRECTS, and each hop is judged again (a hop that Label Studio itself
answered with, such as a cloud storage presign, may go to any public host). Every download has one
deadline (DOWNLOAD_TIMEOUT, in seconds, for all hops and the whole body) and a byte cap
(MAX_DOWNLOAD_MB). The Label Studio token is sent only to Label Studio's media paths.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import logging
import re
import time
import zlib
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit, urlunsplit

import requests
import urllib3
from requests_hardened import Config
from requests_hardened.client import HTTPSession
from requests_hardened.ip_filter import InvalidIPAddress

from backend.core.errors import BackendError, ImageError
from backend.core.settings import Settings

logger = logging.getLogger(__name__)

# Label Studio's media paths: uploads, local-files serving, the storage proxy, cloud presigning.
_LS_MEDIA_PATH = re.compile(r"^/(data/upload/|data/local-files/?\Z|storage-data/|tasks/\d+/presign/?\Z)")
_CHUNK = 1 << 16


class UrlRefusedError(BackendError):
    """The URL is outside what the download policy allows."""

    status = 403


@dataclass(frozen=True)
class Route:
    """How one URL is fetched: `public_only` re-checks the connected address, `token` sends LS's token."""

    public_only: bool
    token: bool
    label_studio: bool
    detailed_errors: bool  # errors of hosts the team named say what happened; others say only that it failed


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, (parts.hostname or "").rstrip(".").lower(), port


def _public_literal(host: str) -> bool:
    """False for an IP literal that is not public, IPv4 inside IPv6 included (`::127.0.0.1`, which Python calls
    global, and `::ffff:10.0.0.1`); True for names (their addresses are checked on connecting)."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return True
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or (ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
                                           if int(address) >> 32 == 0 else None)  # ::a.b.c.d (IPv4-compatible)
        if embedded is not None:
            return embedded.is_global
    return address.is_global


def _split_pattern(pattern: str) -> tuple[str, int | None]:
    """'host', 'host:port', '[::1]:8000', '*.example.com' -> (host, port or None)."""
    parts = urlsplit("//" + pattern.strip().lower())
    return (parts.hostname or "").rstrip("."), parts.port


class DownloadPolicy:
    """Which URLs may be fetched and how (see the module docstring)."""

    def __init__(self, settings: Settings):
        self.label_studio = _origin(settings.label_studio_url) if settings.label_studio_url else None
        self.patterns = [_split_pattern(p) for p in settings.image_url_hosts.split(",") if p.strip()]

    def route(self, url: str, after_label_studio: bool = False) -> Route:
        """The route of `url`, or UrlRefusedError saying why and which setting allows it."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UrlRefusedError("only http:// and https:// URLs with a host are fetched", short_url(url))
        try:
            parts.port  # noqa: B018 - urllib raises ValueError for ':a:b', ':1.2', ':99999'
        except ValueError:
            raise UrlRefusedError("the URL's port is not a number from 1 to 65535", short_url(url))
        if parts.username is not None or parts.password is not None:
            raise UrlRefusedError("URLs with credentials in them are not fetched", short_url(url))
        origin = _origin(url)
        if origin == self.label_studio:
            return Route(False, bool(_LS_MEDIA_PATH.match(parts.path)), True, True)
        host, port = origin[1], origin[2]
        for pattern, pattern_port in self.patterns:
            if pattern_port not in (None, port):
                continue
            if "*" not in pattern and pattern == host:
                return Route(False, False, False, True)
            if "*" in pattern and fnmatch.fnmatchcase(host, pattern):
                if not _public_literal(host):
                    raise UrlRefusedError("the host is a private, loopback or link-local address; name it exactly "
                                          "in IMAGE_URL_HOSTS to allow it", short_url(url))
                return Route(True, False, False, False)
        if after_label_studio:  # e.g. a presigned cloud storage URL that Label Studio redirected to
            return Route(True, False, False, False)
        raise UrlRefusedError(
            f"host {host}:{port} is not allowed; images are fetched from Label Studio (LABEL_STUDIO_URL) and the "
            "hosts named in IMAGE_URL_HOSTS (e.g. IMAGE_URL_HOSTS=images.example.com,*.cdn.example.com)",
            short_url(url))


def without_dot_segments(url: str) -> str:
    """`url` with its path's `.` and `..` segments resolved (RFC 3986, 5.2.4), percent-encoded dots included:
    the URL the policy judges is the one requested (urllib3 would resolve them after the check, so
    /data/upload/../../api/... reached Label Studio's API with its token)."""
    parts = urlsplit(url)
    segments = re.sub(r"%2[eE]", ".", parts.path).split("/")
    kept: list[str] = []
    for segment in segments:
        if segment == "..":
            if len(kept) > 1:
                kept.pop()
        elif segment != ".":
            kept.append(segment)
    path = "/".join(kept) + ("/" if segments[-1] in (".", "..") else "")
    return urlunsplit(parts._replace(path=path)) if path != parts.path else url


def short_url(url: str) -> str:
    return url if len(url) <= 120 else url[:100] + "..." + url[-15:]


def _session(route: Route) -> requests.Session:
    if not route.public_only:
        return requests.Session()
    return HTTPSession(Config(ip_filter_enable=True, ip_filter_allow_loopback_ips=False, never_redirect=True,
                              default_timeout=None))


def _authorization(token: str) -> str:
    """'Token <key>' for Label Studio's legacy keys; 'Bearer <jwt>' for its JWT tokens (as label-studio-sdk)."""
    return f"Bearer {token}" if token.count(".") == 2 and token.startswith("ey") else f"Token {token}"


class Download:
    """One download under one deadline and byte cap (`fetch`)."""

    def __init__(self, settings: Settings, policy: DownloadPolicy | None = None):
        self.settings = settings
        self.policy = policy or DownloadPolicy(settings)
        self.max_bytes = settings.max_download_mb << 20

    def fetch(self, url: str) -> bytes:
        """The body of `url` after at most MAX_REDIRECTS policy-checked redirects; ImageError/UrlRefusedError."""
        deadline = time.monotonic() + self.settings.download_timeout
        original, after_label_studio = url, False
        for _ in range(self.settings.max_redirects + 1):
            url = without_dot_segments(url)
            route = self.policy.route(url, after_label_studio)
            response = self._get(url, route, deadline, original)
            with response:
                if response.is_redirect:
                    url = urljoin(url, response.headers.get("location", ""))
                    after_label_studio = after_label_studio or route.label_studio
                    continue
                if response.status_code >= 400:
                    hint = " (check LABEL_STUDIO_API_KEY)" if route.label_studio and response.status_code in (
                        401, 403) else ""
                    raise ImageError(f"download failed with HTTP {response.status_code}{hint}", short_url(original))
                return self._body(response, route, deadline, original)
        raise ImageError(f"more than MAX_REDIRECTS={self.settings.max_redirects} redirects", short_url(original))

    def _get(self, url: str, route: Route, deadline: float, original: str) -> requests.Response:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise self._failure("timed out", route, original)
        headers = {"Accept-Encoding": "identity", "User-Agent": "label-studio-sam-backend"}
        if route.token and self.settings.label_studio_api_key:
            headers["Authorization"] = _authorization(self.settings.label_studio_api_key)
        try:
            return _session(route).get(url, headers=headers, stream=True, allow_redirects=False,
                                       timeout=(min(remaining, 10.0), remaining))
        except InvalidIPAddress:
            raise UrlRefusedError(
                "the host resolves to a private, loopback or link-local address; name the host exactly in "
                "IMAGE_URL_HOSTS to allow it", short_url(original))
        except requests.RequestException as exc:
            raise self._failure(f"{type(exc).__name__}: {exc}", route, original)

    def _body(self, response: requests.Response, route: Route, deadline: float, original: str) -> bytes:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise self._too_large(original)
        chunks, size = [], 0
        try:
            while True:
                chunk = response.raw.read1(_CHUNK, decode_content=False)
                if not chunk:
                    break
                size += len(chunk)
                if size > self.max_bytes:
                    raise self._too_large(original)
                if time.monotonic() > deadline:
                    raise self._failure("timed out", route, original)
                chunks.append(chunk)
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            raise self._failure(f"{type(exc).__name__}: {exc}", route, original)
        body = b"".join(chunks)
        if declared.isdigit() and len(body) != int(declared):
            raise self._failure(f"body ended after {len(body)} of {declared} bytes", route, original)
        return self._decoded(body, response.headers.get("content-encoding", "identity").lower(), original)

    def _decoded(self, body: bytes, encoding: str, original: str) -> bytes:
        """Undo gzip/deflate transfer encoding without letting a small body expand past the byte cap."""
        if encoding in ("", "identity"):
            return body
        if encoding not in ("gzip", "deflate", "x-gzip"):
            raise ImageError(f"unsupported Content-Encoding {encoding!r}", short_url(original))
        decoder = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header
        try:
            data = decoder.decompress(body, self.max_bytes + 1)
        except zlib.error as exc:
            raise ImageError(f"broken {encoding} body ({exc})", short_url(original))
        if len(data) > self.max_bytes:
            raise self._too_large(original)
        return data

    def _too_large(self, original: str) -> ImageError:
        return ImageError(f"image is larger than MAX_DOWNLOAD_MB={self.settings.max_download_mb}", short_url(original))

    def _failure(self, detail: str, route: Route, original: str) -> ImageError:
        logger.warning("download of %s failed: %s", short_url(original), detail)
        limit = f"DOWNLOAD_TIMEOUT={self.settings.download_timeout:g} s"
        if route.detailed_errors:
            return ImageError(f"download failed within {limit}: {detail}", short_url(original))
        return ImageError(f"download failed: no complete answer within {limit}", short_url(original))
