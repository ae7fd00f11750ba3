"""HTTP layer of the QuivaWorks emulator, and :class:`Emulator`, the handle tests hold.

The API endpoints follow ``shared/reference/quivaworks-api.md``; the model behind them lives in
``state.py``. Knob endpoints under ``/_emulator/`` drive the same model over HTTP (for a rotator
running in a subprocess, and for the standalone CLI); they take no auth, see no faults and are
not counted. ``POST /_emulator/faults`` arms the fault knobs of ``state.Faults`` by name
(``_FAULT_KNOBS``): besides failures and slowness, a misbehaving server whose answers a client
must check: replies altered after the effect (``mangle_next``), bodies written slowly
(``trickle_next``), listings that never end (``endless_pages``), deletes that lie
(``lying_deletes``) and one-off latency before the effect (``latency_next``). ``rate_limit``
takes a ``model``: ``token_bucket`` (``per_second``, ``burst``, ``retry_after``) or ``fixed_window``
(``limit``, ``window``); see ``state.Faults.rate_limit``.

Nothing here logs: request lines carry ``key=`` values in their query strings.
"""

from __future__ import annotations

import copy
import json
import math
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from rotator_providers.quiva.emulator.state import (
    WHOLE_REPLY_MODES, ApiError, BadRequest, Forbidden, Injected, InvalidCredentials, Mangle, NotFound,
    SettableClock, State, iso, parse_iso,
)

KNOB_PREFIX = "/_emulator/"
_MAX_BODY = 1 << 20

_ERROR_NAMES = {
    400: "Bad request", 401: "Invalid API key", 403: "Insufficient permissions", 404: "Not found",
    405: "Method not allowed", 413: "Payload too large",
    429: "Rate limit exceeded",
}
_STATUS_OF: dict[type[ApiError], int] = {
    BadRequest: 400, InvalidCredentials: 401, Forbidden: 403, NotFound: 404,
}


# --------------------------------------------------------------------------- request / reply

@dataclass
class Reply:
    """A response. ``body`` is JSON-encoded, unless it is ``bytes`` (sent as is, as
    ``content_type``); ``trickle`` writes the body at that many bytes per second."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"
    trickle: float | None = None


def error_reply(status: int, message: str, retry_after: float | None = None,
                retry_after_header: bool = False) -> Reply:
    """An error in the reference's shape: ``{"error": ..., "message": ...}`` (+ ``retry_after``,
    in seconds; the ``Retry-After`` header carries it rounded up to whole seconds)."""
    name = _ERROR_NAMES.get(status) or ("Internal error" if status >= 500 else "Error")
    body: dict[str, Any] = {"error": name, "message": message}
    headers: dict[str, str] = {}
    if status == 429:
        body["retry_after"] = 1 if retry_after is None else retry_after
        if retry_after_header:
            headers["Retry-After"] = str(math.ceil(body["retry_after"]))
    return Reply(status, body, headers)


def _injected_reply(injected: Injected) -> Reply:
    return error_reply(injected.status, injected.message, injected.retry_after,
                       injected.retry_after_header)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: Message
    body: bytes

    def json(self) -> dict[str, Any]:
        """The body as a JSON object; an empty body reads as ``{}``."""
        if not self.body.strip():
            return {}
        try:
            parsed = json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            raise BadRequest("Request body is not valid JSON") from None
        if not isinstance(parsed, dict):
            raise BadRequest("Request body must be a JSON object")
        return parsed

    def param(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def bearer(self) -> str:
        """The token of an ``Authorization: Bearer <token>`` header, or 401."""
        header = self.headers.get("Authorization")
        if header is None:
            raise InvalidCredentials("Missing Authorization header")
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise InvalidCredentials("Malformed Authorization header; expected 'Bearer <token>'")
        return token.strip()


# --------------------------------------------------------------------------- API endpoints

def _session_data(session: Any) -> dict[str, Any]:
    return {"data": {"auth_token": session.auth_token, "refresh_token": session.refresh_token,
                     "passkey_enabled": False, "totp_enabled": False}}


def _auth_with_api_key(emu: Emulator, req: Request) -> Reply:
    return Reply(200, _session_data(emu.state.authenticate(req.json().get("api_key"))))


def _refresh_token(emu: Emulator, req: Request) -> Reply:
    body = req.json()
    return Reply(200, _session_data(emu.state.refresh(body.get("auth_token"), body.get("refresh_token"))))


def _issue_key(emu: Emulator, req: Request) -> Reply:
    user = emu.state.session_user(req.bearer())
    record = emu.state.issue_key(user, req.json().get("key_name"))
    return Reply(200, {"data": record.issue_view()})


def _list_keys(emu: Emulator, req: Request) -> Reply:
    user = emu.state.session_user(req.bearer())
    records = emu.state.list_keys(user, req.param("email") or None)
    return Reply(200, {"data": [r.listing_view(emu.report_last_used) for r in records]})


def _delete_key(emu: Emulator, req: Request) -> Reply:
    user = emu.state.session_user(req.bearer())
    record = emu.state.delete_key(user, key_id=req.param("id"), value=req.param("key"))
    return Reply(200, {"data": record.listing_view(emu.report_last_used)})


def _agents(emu: Emulator, req: Request) -> Reply:
    emu.state.use_key(req.bearer())
    return Reply(200, {"data": []})


Route = Callable[["Emulator", Request], Reply]

_API_ROUTES: dict[tuple[str, str], Route] = {
    ("POST", "/accounts/auth-with-api-key"): _auth_with_api_key,
    ("POST", "/accounts/refresh-token"): _refresh_token,
    ("POST", "/accounts/api-key"): _issue_key,
    ("DELETE", "/accounts/api-key"): _delete_key,
    ("GET", "/accounts/api-keys"): _list_keys,
    ("GET", "/v1/agents"): _agents,
}


# --------------------------------------------------------------------------- knob endpoints

def _options(spec: Any, allowed: set[str], what: str) -> dict[str, Any]:
    """Keyword arguments for a fault knob, refusing unknown names."""
    if not isinstance(spec, dict):
        raise BadRequest(f"{what} must be a JSON object")
    unknown = set(spec) - allowed
    if unknown:
        raise BadRequest(f"{what}: unknown field(s) {', '.join(sorted(unknown))}")
    return spec


def _knob_clock_get(emu: Emulator, req: Request) -> Reply:
    return Reply(200, {"now": iso(emu.clock.now())})


def _knob_clock_post(emu: Emulator, req: Request) -> Reply:
    body = req.json()
    if "now" in body:
        emu.set_clock(parse_iso(body["now"]))
    elif "advance_seconds" in body:
        seconds = body["advance_seconds"]
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise BadRequest("advance_seconds must be a number")
        emu.advance_clock(timedelta(seconds=seconds))
    else:
        raise BadRequest("Give 'now' (ISO-8601) or 'advance_seconds'")
    return _knob_clock_get(emu, req)


def _knob_counters(emu: Emulator, req: Request) -> Reply:
    return Reply(200, {"counters": emu.counters()})


def _knob_counters_reset(emu: Emulator, req: Request) -> Reply:
    emu.reset_counters()
    return Reply(200, {"counters": emu.counters()})


def _knob_faults_get(emu: Emulator, req: Request) -> Reply:
    return Reply(200, {"faults": emu.faults.snapshot()})


_FAULT_KNOBS: dict[str, tuple[str, set[str]]] = {
    "fail_next": ("fail_next", {"n", "status", "path"}),
    "fail_after_effect_next": ("fail_after_effect_next", {"n", "status", "path"}),
    "throttle_next": ("throttle_next", {"n", "retry_after", "header"}),
    "rate_limit": ("rate_limit", {"model", "per_second", "burst", "retry_after", "limit", "window"}),
    "latency": ("set_latency", {"seconds", "path"}),
    "latency_next": ("latency_next", {"n", "seconds", "path"}),
    "trickle_next": ("trickle_next", {"n", "bytes_per_second", "path"}),
    "mangle_next": ("mangle_next", {"n", "mode", "path", "field", "value", "index"}),
    "endless_pages": ("endless_pages", {"mode", "path"}),
    "lying_deletes": ("lying_deletes", {"n", "mode"}),
}


def _knob_faults_post(emu: Emulator, req: Request) -> Reply:
    """Arm faults: ``{"clear": true, "fail_next": {"n": 2, "status": 503, "path": ...}, ...}``.

    ``clear`` is applied first, then the others; each maps onto the ``emu.faults`` method of
    the same name (``latency`` onto ``set_latency``).
    """
    body = req.json()
    unknown = set(body) - set(_FAULT_KNOBS) - {"clear"}
    if unknown:
        raise BadRequest(f"unknown fault(s) {', '.join(sorted(unknown))}")
    if body.get("clear"):
        emu.faults.clear()
    for name, (method, allowed) in _FAULT_KNOBS.items():
        if name in body:
            getattr(emu.faults, method)(**_options(body[name], allowed, name))
    return _knob_faults_get(emu, req)


def _knob_users(emu: Emulator, req: Request) -> Reply:
    """Create a user. A supplied ``admin_key`` is registered and NOT echoed; a minted one is."""
    body = req.json()
    supplied = body.get("admin_key")
    role = body.get("role", "admin")
    value = emu.add_user(body.get("email"), role=role, key=supplied)
    reply = {"email": body["email"], "role": role}
    if supplied is None:
        reply["key"] = value
    return Reply(200, reply)


def _knob_keys_post(emu: Emulator, req: Request) -> Reply:
    body = req.json()
    created_on = body.get("created_on")
    info = emu.create_key(body.get("email"), name=body.get("name", "seeded key"),
                          created_on=parse_iso(created_on) if created_on is not None else None)
    return Reply(200, {"data": info})


def _knob_keys_get(emu: Emulator, req: Request) -> Reply:
    return Reply(200, {"keys": emu.keys(email=req.param("email") or None)})


def _knob_reset(emu: Emulator, req: Request) -> Reply:
    emu.reset()
    return Reply(200, {"reset": True})


_KNOB_ROUTES: dict[tuple[str, str], Route] = {
    ("GET", "/_emulator/clock"): _knob_clock_get,
    ("POST", "/_emulator/clock"): _knob_clock_post,
    ("GET", "/_emulator/counters"): _knob_counters,
    ("POST", "/_emulator/counters/reset"): _knob_counters_reset,
    ("GET", "/_emulator/faults"): _knob_faults_get,
    ("POST", "/_emulator/faults"): _knob_faults_post,
    ("POST", "/_emulator/users"): _knob_users,
    ("GET", "/_emulator/keys"): _knob_keys_get,
    ("POST", "/_emulator/keys"): _knob_keys_post,
    ("POST", "/_emulator/reset"): _knob_reset,
}


# --------------------------------------------------------------------------- dispatch

def _route(emu: Emulator, req: Request, routes: dict[tuple[str, str], Route]) -> Reply:
    """Run the matching route; domain errors become their status, a wrong method 405, else 404."""
    handler = routes.get((req.method, req.path))
    if handler is None:
        allowed = sorted(m for m, p in routes if p == req.path)
        if allowed:
            return Reply(405, error_reply(405, "Method not allowed here").body,
                         {"Allow": ", ".join(allowed)})
        return error_reply(404, "No such endpoint")
    try:
        return handler(emu, req)
    except ApiError as exc:
        return error_reply(_STATUS_OF.get(type(exc), 400), str(exc))


def serve_api(emu: Emulator, req: Request) -> Reply:
    """Answer an API request: count it, apply faults around the real handler, count the status."""
    emu.state.count_request(req.method, req.path)
    trickle = emu.faults.take_trickle(req.method, req.path)
    reply = _faulted(emu, req)
    reply.trickle = trickle
    emu.state.count_status(reply.status)
    return reply


def _faulted(emu: Emulator, req: Request) -> Reply:
    delay = emu.faults.latency_for(req.method, req.path) + \
        emu.faults.take_latency_next(req.method, req.path)
    if delay:
        time.sleep(delay)  # outside the state lock: other requests proceed meanwhile
    injected = emu.faults.before_effect(req.method, req.path)
    if injected is not None:
        return _injected_reply(injected)
    reply = _lying_delete(emu, req) or _route(emu, req, _API_ROUTES)
    injected = emu.faults.after_effect(req.method, req.path)
    if injected is not None:
        return _injected_reply(injected)
    return _misbehaved(emu, req, reply)


# --------------------------------------------------------------------------- misbehaviour

_HTML_PAGE = (b"<html><head><title>Proxy Authentication Required</title></head><body>"
              b"<h1>Corporate web proxy</h1><p>Please sign in to the proxy to continue.</p>"
              b"</body></html>")
_GARBAGE = b'upstream said: ok?? \x1b[0m <<<garbage>>> {"data": [{"id": '  # cut off mid-JSON


def _lying_delete(emu: Emulator, req: Request) -> Reply | None:
    """A ``lying_deletes`` answer for a delete that would succeed, nothing deleted; else None."""
    if (req.method, req.path) != ("DELETE", "/accounts/api-key"):
        return None
    found: list[Any] = []

    def would_succeed() -> bool:
        try:
            user = emu.state.session_user(req.bearer())
            found.append(emu.state.find_deletable(user, key_id=req.param("id"), value=req.param("key")))
        except ApiError:
            return False  # the real handler gives the same refusal
        return True

    mode = emu.faults.take_lie(would_succeed)
    if mode is None:
        return None
    if mode == "not_found":
        return error_reply(404, "API key not found")
    return Reply(200, {"data": found[0].listing_view(emu.report_last_used)})


def _misbehaved(emu: Emulator, req: Request, reply: Reply) -> Reply:
    """A successful JSON reply with an endless ``next`` cursor and/or one ``mangle_next`` rule
    applied; any other reply as it is."""
    if not 200 <= reply.status < 300 or not isinstance(reply.body, dict):
        return reply
    cursor = emu.faults.next_cursor(req.method, req.path)
    if cursor is not None:
        reply = Reply(reply.status, {**reply.body, "next": cursor}, reply.headers)
    body = reply.body
    rule = emu.faults.take_mangle(req.method, req.path, lambda r: _fits(r, body))
    return reply if rule is None else _mangled(emu, reply, rule)


def _entry_index(rule: Mangle) -> int | None:
    """The listing entry a rule alters; None means every entry (``set``/``drop`` only)."""
    if rule.index is None and rule.mode in ("duplicate_entry", "foreign_id"):
        return 0
    return rule.index


def _fits(rule: Mangle, body: dict[str, Any]) -> bool:
    """Whether ``rule`` can alter this successful reply (a rule that cannot is not used up)."""
    if rule.mode in WHOLE_REPLY_MODES:
        return True
    data = body.get("data")
    if rule.mode == "swap_value":
        return isinstance(data, dict) and isinstance(data.get("key"), str)
    if isinstance(data, dict):
        return rule.mode in ("set", "drop")
    if not isinstance(data, list) or not data or not all(isinstance(e, dict) for e in data):
        return False
    index = _entry_index(rule)
    if index is None:
        return True
    if index >= len(data):
        return False
    return rule.mode != "foreign_id" or rule.value is not None or len(data) >= 2


def _mangled(emu: Emulator, reply: Reply, rule: Mangle) -> Reply:
    """``reply`` altered by ``rule`` (which fits it). The action has been performed already."""
    mode = rule.mode
    if mode == "html":
        return Reply(200, _HTML_PAGE, content_type="text/html")
    if mode == "not_json":
        return Reply(200, _GARBAGE, content_type="text/plain")
    if mode == "error_200":
        return Reply(200, {"error": "Invalid API key", "message": "The API key is invalid, deleted or expired"})
    if mode == "empty":
        return Reply(200, {})
    if mode == "data_type":
        return Reply(200, {"data": "unexpected"})
    body = copy.deepcopy(reply.body)
    data = body["data"]
    if mode == "swap_value":
        data["key"] = rule.value if rule.value is not None else emu.state.decoy_value(unlike=data["key"])
    elif isinstance(data, dict):
        _set_or_drop(data, rule)
    else:
        index = _entry_index(rule)
        if mode == "duplicate_entry":
            data.append(copy.deepcopy(data[index]))
        elif mode == "foreign_id":
            data[index]["id"] = rule.value if rule.value is not None else data[(index + 1) % len(data)].get("id")
        else:
            for entry in data if index is None else [data[index]]:
                _set_or_drop(entry, rule)
    return Reply(reply.status, body, dict(reply.headers))


def _set_or_drop(obj: dict[str, Any], rule: Mangle) -> None:
    if rule.mode == "set":
        obj[rule.field_name] = copy.deepcopy(rule.value)
    else:
        obj.pop(rule.field_name, None)


def serve_knob(emu: Emulator, req: Request) -> Reply:
    """Answer a knob request: no faults, no counters; bad arguments are 400."""
    try:
        return _route(emu, req, _KNOB_ROUTES)
    except (ValueError, TypeError) as exc:
        return error_reply(400, f"Bad knob arguments: {exc}")


class _BodyError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so pooled clients behave as against the real API
    server_version = "QuivaWorksEmulator/1.0"
    timeout = 30  # an idle keep-alive connection is dropped after this many seconds

    def version_string(self) -> str:
        return self.server_version

    def setup(self) -> None:
        """Disable Nagle: headers and body go out in two writes, which would otherwise meet the
        client's delayed ACK and cost ~40 ms per keep-alive request."""
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Stay silent: request lines carry key values (``DELETE /accounts/api-key?key=...``)."""

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Parser-level refusals (bad request line, unknown method) as JSON.

        The stdlib message may quote the request line, which can hold a key: it is dropped.
        """
        self.close_connection = True
        self._send(error_reply(code, "The request could not be handled"))

    def _handle(self) -> None:
        url = urlsplit(self.path)
        try:
            body = self._read_body()
        except _BodyError as exc:
            self.close_connection = True
            self._send(error_reply(exc.status, str(exc)))
            return
        req = Request(self.command, url.path, parse_qs(url.query, keep_blank_values=True),
                      self.headers, body)
        emu: Emulator = self.server.emulator  # type: ignore[attr-defined]
        try:
            reply = serve_knob(emu, req) if url.path.startswith(KNOB_PREFIX) else serve_api(emu, req)
        except Exception as exc:  # noqa: BLE001 - the type name only; text could hold a value
            reply = error_reply(500, f"Unexpected emulator error ({type(exc).__name__})")
        self._send(reply)

    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _handle

    def _read_body(self) -> bytes:
        """The whole request body, by Content-Length or chunked transfer coding."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        try:
            size = int(length)
        except ValueError:
            raise _BodyError(400, "Invalid Content-Length") from None
        if size < 0:
            raise _BodyError(400, "Invalid Content-Length")
        if size > _MAX_BODY:
            raise _BodyError(413, "Request body too large")
        return self.rfile.read(size)

    def _read_chunked(self) -> bytes:
        body = bytearray()
        while True:
            size_line = self.rfile.readline(1024).split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                raise _BodyError(400, "Invalid chunked body") from None
            if size == 0:
                break
            if len(body) + size > _MAX_BODY:
                raise _BodyError(413, "Request body too large")
            body += self.rfile.read(size)
            self.rfile.readline(8)  # the CRLF closing the chunk
        while self.rfile.readline(8192).strip():  # trailers, up to the blank line
            pass
        return bytes(body)

    def _send(self, reply: Reply) -> None:
        """Write ``reply``. A client that has gone (it timed out while a slow request slept, or
        gave up on a trickle) only closes the connection: nothing is raised, nothing printed."""
        data = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode("utf-8")
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        try:
            self.end_headers()
            if self.command == "HEAD":
                return
            if reply.trickle:
                self._write_slowly(data, reply.trickle)
            else:
                self.wfile.write(data)
        except OSError:
            self.close_connection = True

    def _write_slowly(self, data: bytes, bytes_per_second: float) -> None:
        """Write ``data`` in small pieces about 20 times a second, at ``bytes_per_second`` overall.
        Runs in this request's thread, holding no lock."""
        piece = max(1, int(bytes_per_second / 20))
        start, sent = time.monotonic(), 0
        while sent < len(data):
            chunk = data[sent:sent + piece]
            wait = start + (sent + len(chunk)) / bytes_per_second - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self.wfile.write(chunk)
            sent += len(chunk)


class _Server(ThreadingHTTPServer):
    """Threaded server that remembers open connections so :meth:`close_connections` can cut them."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], emulator: Emulator) -> None:
        self.emulator = emulator
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Cut idle keep-alive connections, so no pooled client is served after stop()."""
        with self._open_lock:
            sockets = list(self._open)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


# --------------------------------------------------------------------------- the handle

class Emulator:
    """An emulated QuivaWorks API on a real loopback HTTP server.

    ``with Emulator() as emu:`` starts it on a free port; ``emu.url`` is its base URL. The test
    side (``add_user``, ``create_key``, ``keys``, ``faults``...) acts on the model directly.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, clock: Any = None,
                 key_lifetime_months: int = 3, session_ttl: timedelta = timedelta(minutes=30),
                 report_last_used: bool = False) -> None:
        self.host = host
        self.port = port
        self._own_clock = clock is None
        self.clock = SettableClock() if clock is None else clock
        self.report_last_used = report_last_used
        self.state = State(self.clock, key_lifetime_months=key_lifetime_months, session_ttl=session_ttl)
        self.faults = self.state.faults
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle
    def start(self) -> Emulator:
        """Bind (port 0 picks a free port) and serve in a background thread."""
        if self._server is not None:
            raise RuntimeError("emulator already started")
        self._server = _Server((self.host, self.port), self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"quiva-emulator-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, cut open connections, close the socket and join the thread."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._server = self._thread = None
        server.shutdown()
        server.close_connections()
        server.server_close()
        if thread is not None:
            thread.join()

    def __enter__(self) -> Emulator:
        return self if self._server is not None else self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("emulator not started")
        return f"http://{self.host}:{self.port}"

    # ---- clock
    def set_clock(self, moment: datetime) -> None:
        """Set the clock via its ``set``, or ``advance`` by the difference if only that exists."""
        if hasattr(self.clock, "set"):
            self.clock.set(moment)
        elif hasattr(self.clock, "advance"):
            self.clock.advance(moment - self.clock.now())
        else:
            raise ValueError("the clock in use cannot be set")

    def advance_clock(self, delta: timedelta) -> None:
        """Move the clock via its ``advance``, or ``set`` to now + delta if only that exists."""
        if hasattr(self.clock, "advance"):
            self.clock.advance(delta)
        elif hasattr(self.clock, "set"):
            self.clock.set(self.clock.now() + delta)
        else:
            raise ValueError("the clock in use cannot be moved")

    # ---- test-side model access
    def add_user(self, email: str, role: str = "admin", key: str | None = None) -> str:
        """Create a user (or change its role) and return a key value for it, named "admin".

        ``key`` registers that value instead of minting one (e.g. a key taken from the env).
        """
        return self.state.add_user(email, role=role, key=key)

    def create_key(self, email: str, name: str = "seeded key",
                   created_on: datetime | None = None) -> dict[str, Any]:
        """Seed a key with a chosen creation instant: the issue response's fields plus ``id``."""
        record = self.state.create_key(email, name, created_on=created_on)
        return {**record.issue_view(), "id": record.id}

    def is_active(self, value: str) -> bool:
        """The key exists, is not deleted and has not expired by the emulator's clock."""
        return self.state.is_active(value)

    def keys(self, email: str | None = None) -> list[dict[str, Any]]:
        """Every key record, deleted ones included, with a fingerprint instead of the value."""
        return [r.record_view() for r in self.state.key_records(email)]

    def issued_values(self) -> list[str]:
        """Every key value minted (or registered) by this emulator, for leak scans."""
        return self.state.issued_values()

    def delete_count(self, key_id: str) -> int:
        return self.state.delete_count(key_id)

    def counters(self) -> dict[str, int]:
        return self.state.counters()

    def reset_counters(self) -> None:
        self.state.reset_counters()

    def reset(self) -> None:
        """Drop users, keys, sessions, faults and counters; an internal clock goes back to real time."""
        self.state.reset()
        if self._own_clock:
            self.clock.reset()
