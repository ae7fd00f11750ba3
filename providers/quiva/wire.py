"""One HTTP exchange with the QuivaWorks API, over urllib3.

:func:`build` turns a call into a :class:`Request` (URL, JSON body, headers), refusing what cannot
be sent; :class:`Urllib3Wire` sends it on a pooled connection and reads the whole answer by a
deadline, on the caller's thread (:mod:`.watchdog` ends it there if the server trickles). The
client (:mod:`.client`) retries and reads the answers; tests replace the wire with one of their
own (the :class:`Wire` Protocol).

Why urllib3 and not httpx: a plain urllib3 request costs about half the CPU of a plain
``httpx.Client`` one (0.20 against 0.38 ms in one run of ``python benchmarks/run.py --only
probes``, ``issuer_request``; the issuer's whole request, checks and deadline included, 0.27 ms),
and issuer requests were the largest single item of a rotation's CPU. urllib3 is already installed with boto3
and requests. What httpx gave and this keeps: a verifying TLS context (``SSL_CERT_FILE`` /
``SSL_CERT_DIR`` or certifi's bundle), ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``NO_PROXY`` from the
environment, no redirects, no retries below the client's own.

A failure is raised as :class:`Failed`: what failed, in words that never quote the URL or a
header, and whether the request may have reached the server (``sent``). Only failures before a
byte of the request can have left — no connection, a refused certificate, a proxy that could not be
reached — are ``sent=False``; a retry after them cannot duplicate an effect.
"""

from __future__ import annotations

import json
import os
import re
import ssl
import threading
import time
import urllib.request
from dataclasses import dataclass
from typing import Any, Mapping, Protocol
from urllib.parse import urlencode, urlsplit

from rotator_providers.quiva.watchdog import ConnectTimedOut, Watchdog, connect_by

#: A body longer than this (bytes) is not read further and counts as "not JSON".
MAX_BODY = 16 * 1024 * 1024
#: Connections kept per pool: every worker thread, and the listing that relieves a stalled one.
POOL_SIZE = 16
_CHUNK = 64 * 1024
USER_AGENT = "rotator"
#: A character a request path may not hold as it is: a space, a control or a non-ASCII character.
_UNSAFE_IN_PATH = re.compile(r"[^!-~]")


@dataclass(frozen=True)
class Request:
    """A request ready to go: ``target`` is the path and query below the base URL."""

    method: str
    target: str
    body: bytes | None
    headers: Mapping[str, str]


@dataclass(frozen=True)
class Reply:
    """What one exchange brought back, read in full (``content`` None: over MAX_BODY)."""

    status: int
    content: bytes | None
    retry_after: str | None


class Failed(Exception):
    """No answer. ``reason`` is safe to put in messages; ``sent``: the request may have reached
    the server, so the server may have acted on it."""

    def __init__(self, reason: str, *, sent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.sent = sent


class Late(Exception):
    """The deadline passed before the whole answer had arrived."""


class Unsendable(Exception):
    """A request that cannot be put on the wire (``reason``: what, never the value)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Wire(Protocol):
    def exchange(self, request: Request, deadline: float) -> Reply:
        """Send ``request`` and read its whole answer by ``deadline`` (``time.monotonic()``).
        Raises :class:`Failed` or :class:`Late`."""
        ...

    def close(self) -> None:
        ...


def build(method: str, path: str, *, params: Mapping[str, str] | None = None, json_body: Any = None,
          headers: Mapping[str, str] | None = None) -> Request:
    """The request, or :class:`Unsendable`: a header value that is not printable ASCII, a body
    that is not JSON (NaN included), a path that is not plain ASCII (a next-page link is
    percent-encoded before it gets here)."""
    if _UNSAFE_IN_PATH.search(path):
        raise Unsendable("the path holds a space, a control character or a non-ASCII character")
    target = f"{path}?{urlencode(params)}" if params else path
    merged = {"Accept": "application/json", "User-Agent": USER_AGENT}
    body = None
    if json_body is not None:
        try:
            body = json.dumps(json_body, ensure_ascii=False, allow_nan=False,
                              separators=(",", ":")).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise Unsendable(f"the body is not JSON ({type(exc).__name__})") from None
        merged["Content-Type"] = "application/json"
    for name, value in (headers or {}).items():
        if not (value.isascii() and value.isprintable()):
            raise Unsendable(f"the {name} header is not printable ASCII")
        merged[name] = value
    return Request(method, target, body, merged)


_ssl_lock = threading.Lock()
_ssl_context: ssl.SSLContext | None = None


def verifying_context() -> ssl.SSLContext:
    """One verifying TLS context per process (building one costs ~60 ms; sharing it is safe):
    ``SSL_CERT_FILE`` or ``SSL_CERT_DIR`` when set, else certifi's bundle, as httpx does."""
    global _ssl_context
    with _ssl_lock:
        if _ssl_context is None:
            if os.environ.get("SSL_CERT_FILE"):
                _ssl_context = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
            elif os.environ.get("SSL_CERT_DIR"):
                _ssl_context = ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
            else:
                import certifi

                _ssl_context = ssl.create_default_context(cafile=certifi.where())
        return _ssl_context


def environment_proxy(base_url: str) -> str | None:
    """The proxy the environment names for ``base_url`` (``HTTPS_PROXY``, ``HTTP_PROXY``,
    ``ALL_PROXY``, honouring ``NO_PROXY``), or None."""
    split = urlsplit(base_url)
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(split.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass_environment(split.hostname or "", proxies):
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


class Urllib3Wire:
    """The pooled connections to one base URL (one origin: a next-page link to another is refused
    before it gets here), through the environment's proxy when it names one."""

    def __init__(self, base_url: str, *, pool_size: int = POOL_SIZE, max_body: int = MAX_BODY) -> None:
        import urllib3

        self._urllib3 = urllib3
        self.base_url = base_url
        split = urlsplit(base_url)
        self._prefix = split.path.rstrip("/")
        self._max_body = max_body
        options: dict[str, Any] = {"maxsize": pool_size, "block": False, "retries": False}
        if split.scheme == "https":
            options["ssl_context"] = verifying_context()
        proxy = environment_proxy(base_url)
        if proxy is None:
            self._manager: Any = urllib3.PoolManager(num_pools=1, **options)
        else:
            auth = urllib3.util.parse_url(proxy).auth
            self._manager = urllib3.ProxyManager(
                proxy, num_pools=1,
                proxy_headers=urllib3.make_headers(proxy_basic_auth=auth) if auth else None, **options)
        self._pool = self._manager.connection_from_url(base_url)
        self._dog = Watchdog("quiva")
        self._pool.ConnectionCls = _watched(self._pool.ConnectionCls, self._dog)
        # A plain-http request through a proxy names the whole URL; otherwise the path does.
        self._origin = f"{split.scheme}://{split.netloc}" if proxy and split.scheme == "http" else ""

    def exchange(self, request: Request, deadline: float) -> Reply:
        urllib3 = self._urllib3
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Late()
        watch = self._dog.watch(deadline)
        response = None
        done = False
        try:
            response = self._pool.urlopen(
                request.method, self._origin + self._prefix + request.target, body=request.body,
                headers=request.headers, retries=False, redirect=False, assert_same_host=False,
                timeout=urllib3.Timeout(connect=remaining, read=remaining), preload_content=False,
                release_conn=False)
            chunks: list[bytes] = []
            size = 0
            for chunk in response.stream(_CHUNK):
                if time.monotonic() > deadline:
                    raise Late()
                size += len(chunk)
                if size > self._max_body:
                    return Reply(response.status, None, response.headers.get("Retry-After"))
                chunks.append(chunk)
            done = True
            return Reply(response.status, b"".join(chunks), response.headers.get("Retry-After"))
        except urllib3.exceptions.LocationValueError:
            raise Unsendable("the URL is not valid") from None
        except urllib3.exceptions.HTTPError as exc:
            failure = _failed(exc)
            # after sending, a read that outlived the deadline: its timeout (the time left) or
            # the watchdog's cut; a failure before anything was sent stays what it was
            if failure.sent and (watch.cut or isinstance(exc, urllib3.exceptions.ReadTimeoutError)):
                raise Late() from None
            raise failure from None
        finally:
            cut = self._dog.over(watch)
            if response is not None:
                if cut or not done:
                    response.close()       # not at a message boundary, or shut: not reused
                response.release_conn()

    def close(self) -> None:
        self._dog.close()
        self._manager.clear()


def _watched(base: type, dog: Watchdog) -> type:
    """``base`` (urllib3's connection class) telling ``dog`` which connection an exchange uses,
    and connecting by the exchange's deadline (:func:`.watchdog.connect_by`)."""
    import urllib3

    class Watched(base):  # type: ignore[misc, valid-type]
        def connect(self) -> None:
            watch = dog.current()
            if watch is None:
                super().connect()
                return
            dog.claim(self)
            try:
                connect_by(watch.deadline, super().connect, self.close, "quiva")
            except ConnectTimedOut:
                raise urllib3.exceptions.ConnectTimeoutError(
                    self, "connecting did not finish by the deadline") from None

        def request(self, *args: Any, **kwargs: Any) -> None:
            dog.claim(self)
            super().request(*args, **kwargs)

    return Watched


#: urllib3's errors by what happened, in the order they are tried (subclasses first), and whether
#: the request may have reached the server by then. TLS errors are told apart below.
_FAILURES = (
    ("ProxyError", "the proxy could not be reached", False),
    ("NameResolutionError", "the host name did not resolve", False),
    ("NewConnectionError", "could not connect", False),
    ("ConnectTimeoutError", "connect timed out", False),
    ("ReadTimeoutError", "read timed out", True),
    ("ProtocolError", "the connection dropped", True),
    ("DecodeError", "the answer's content encoding is broken", True),
)


def _failed(exc: BaseException) -> Failed:
    """urllib3's error as :class:`Failed`, named by what happened (its text may quote the URL)."""
    import urllib3.exceptions as e

    if isinstance(exc, e.SSLError):
        inner = exc.args[0] if exc.args else None
        if isinstance(inner, ssl.SSLCertVerificationError):      # in the handshake: nothing sent
            return Failed(f"TLS: the server's certificate was refused ({inner.verify_message})",
                          sent=False)
        return Failed(f"TLS failed ({getattr(inner, 'reason', None) or type(inner).__name__})", sent=True)
    for name, reason, sent in _FAILURES:
        if isinstance(exc, getattr(e, name)):
            return Failed(reason, sent=sent)
    return Failed(type(exc).__name__, sent=True)
