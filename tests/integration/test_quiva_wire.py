"""The QuivaWorks issuer's wire (urllib3) over real sockets: how each way an exchange can fail is
named and classified (may the request have reached the server?), TLS verification, the
environment's proxy, the body limit, and no query string in urllib3's debug log.

``sent`` decides whether a retried issue may have minted a twin (tests/unit/test_quiva_client.py
covers the client's side of that with a scripted wire)."""

from __future__ import annotations

import datetime
import http.client
import logging
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable

import pytest

from rotator.errors import IssuerUnavailable
from rotator.testing import FakeClock, RecordingSleep, provider_context

from rotator_providers.quiva import wire
from rotator_providers.quiva.issuer import QuivaIssuer


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RawServer:
    """A loopback TCP server handing each connection to ``handle`` on a thread of its own."""

    def __init__(self, handle: Callable[[socket.socket], None], wrap: ssl.SSLContext | None = None) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._handle = handle
        self._wrap = wrap
        self._stop = threading.Event()
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        try:
            if self._wrap is not None:
                conn = self._wrap.wrap_socket(conn, server_side=True)
            self._handle(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._listener.close()


def read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def answering(headers: bytes = b"") -> Callable[[socket.socket], None]:
    """Answers every request on a kept-alive connection with ``{"data":[]}`` and ``headers``."""
    def handle(conn: socket.socket) -> None:
        while read_request(conn):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n" + headers + b'\r\n{"data":[]}')
    return handle


@pytest.fixture
def servers():
    started: list[RawServer] = []

    def start(handle: Callable[[socket.socket], None], wrap: ssl.SSLContext | None = None) -> RawServer:
        server = RawServer(handle, wrap)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


def exchange(url: str, deadline: float = 2.0, **options) -> wire.Reply:
    link = wire.Urllib3Wire(url, **options)
    try:
        return link.exchange(wire.build("GET", "/accounts/api-keys", params={"key": "ms-secret-in-query"}),
                             time.monotonic() + deadline)
    finally:
        link.close()


def test_no_listener_is_a_failure_before_anything_was_sent():
    with pytest.raises(wire.Failed) as info:
        exchange(f"http://127.0.0.1:{closed_port()}")
    assert (info.value.reason, info.value.sent) == ("could not connect", False)


def test_a_connection_dropped_after_the_request_may_have_been_acted_on(servers):
    server = servers(read_request)                     # reads the request, then hangs up
    with pytest.raises(wire.Failed) as info:
        exchange(f"http://127.0.0.1:{server.port}")
    assert (info.value.reason, info.value.sent) == ("the connection dropped", True)


def test_a_server_that_never_answers_is_late_at_the_deadline(servers):
    release = threading.Event()
    server = servers(lambda conn: (read_request(conn), release.wait(10)))
    started = time.monotonic()
    with pytest.raises(wire.Late):
        exchange(f"http://127.0.0.1:{server.port}", deadline=0.5)
    release.set()
    assert 0.45 <= time.monotonic() - started < 1.5


HEAD = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n"
BODY = b'{"data":[]}'


def trickling(part: str, every: float = 0.2) -> Callable[[socket.socket], None]:
    """Answers each request with ``part`` (the headers and the body, or the body alone) one byte
    every ``every`` seconds: each byte well within any read timeout."""
    def handle(conn: socket.socket) -> None:
        while read_request(conn):
            fast, slow = (b"", HEAD + BODY) if part == "headers" else (HEAD, BODY)
            conn.sendall(fast)
            for byte in slow:
                conn.sendall(bytes([byte]))
                time.sleep(every)
    return handle


@pytest.mark.parametrize("part", ["headers", "body"])
def test_a_trickling_server_is_cut_at_the_deadline_and_its_connection_not_reused(servers, part):
    """The whole answer would take over 2 s; only the watchdog ends the exchange at 0.4 s (the
    read timeout, the time left, never fires between bytes)."""
    server = servers(trickling(part))
    link = wire.Urllib3Wire(f"http://127.0.0.1:{server.port}")
    started = time.monotonic()
    with pytest.raises(wire.Late):
        link.exchange(wire.build("GET", "/a"), started + 0.4)
    assert 0.35 <= time.monotonic() - started < 1.2
    with pytest.raises(wire.Late):                         # on a new connection, cut again
        link.exchange(wire.build("GET", "/a"), time.monotonic() + 0.3)
    link.close()
    assert server.connections == 2


def test_an_exchange_that_ends_in_time_is_not_cut_later(servers):
    """The watchdog wakes at the finished exchange's deadline and leaves its pooled connection."""
    server = servers(answering())
    link = wire.Urllib3Wire(f"http://127.0.0.1:{server.port}")
    assert link.exchange(wire.build("GET", "/a"), time.monotonic() + 0.2).status == 200
    time.sleep(0.35)                                       # past that deadline
    assert link.exchange(wire.build("GET", "/a"), time.monotonic() + 2).status == 200
    link.close()
    assert server.connections == 1


def test_connecting_is_bounded_by_the_deadline_too(servers, monkeypatch):
    """Name resolution has no timeout of its own: a resolver that hangs is given up at the
    deadline, as a connect timeout (nothing was sent)."""
    import urllib3.util.connection

    hang = threading.Event()
    real = urllib3.util.connection.create_connection

    def slow_resolver(*args, **kwargs):
        hang.wait(5)
        return real(*args, **kwargs)

    monkeypatch.setattr(urllib3.util.connection, "create_connection", slow_resolver)
    monkeypatch.setattr("urllib3.connection.connection.create_connection", slow_resolver)
    server = servers(read_request)
    started = time.monotonic()
    with pytest.raises(wire.Failed) as info:
        exchange(f"http://127.0.0.1:{server.port}", deadline=0.3)
    hang.set()
    assert time.monotonic() - started < 1.0
    assert (info.value.reason, info.value.sent) == ("connect timed out", False)


def test_a_body_over_the_limit_is_not_read_and_the_connection_not_reused(servers):
    def big(conn: socket.socket) -> None:
        while read_request(conn):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 300000\r\n\r\n" + b"x" * 300000)

    server = servers(big)
    link = wire.Urllib3Wire(f"http://127.0.0.1:{server.port}", max_body=100_000)
    first = link.exchange(wire.build("GET", "/a"), time.monotonic() + 2)
    second = link.exchange(wire.build("GET", "/a"), time.monotonic() + 2)
    link.close()
    assert (first.status, first.content) == (200, None) and second.content is None
    assert server.connections == 2


def test_a_kept_alive_connection_is_reused(servers):
    server = servers(answering(b"Retry-After: 3\r\n"))
    link = wire.Urllib3Wire(f"http://127.0.0.1:{server.port}")
    replies = [link.exchange(wire.build("GET", "/a"), time.monotonic() + 2) for _ in range(3)]
    link.close()
    assert replies == [wire.Reply(200, b'{"data":[]}', "3")] * 3
    assert server.connections == 1


# --- TLS ----------------------------------------------------------------------------------------

def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
def tls_server(tmp_path, servers, monkeypatch):
    cert, key = self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    monkeypatch.setattr(wire, "_ssl_context", None)    # built again from this test's environment
    yield servers(answering(), wrap=context), cert
    monkeypatch.setattr(wire, "_ssl_context", None)


def test_a_certificate_no_trusted_ca_signed_is_refused_before_anything_was_sent(tls_server):
    server, _ = tls_server
    with pytest.raises(wire.Failed) as info:
        exchange(f"https://localhost:{server.port}")
    assert info.value.sent is False
    assert info.value.reason.startswith("TLS: the server's certificate was refused (")


def test_ssl_cert_file_names_the_cas_to_trust(tls_server, monkeypatch):
    server, cert = tls_server
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    assert exchange(f"https://localhost:{server.port}") == wire.Reply(200, b'{"data":[]}', None)


# --- the environment's proxy ----------------------------------------------------------------

class _ForwardProxy(BaseHTTPRequestHandler):
    """A plain-http forward proxy: records each request line's URL and relays it."""

    protocol_version = "HTTP/1.1"
    seen: list[str] = []

    def _relay(self) -> None:
        self.seen.append(self.path)
        split = http.client.urlsplit(self.path)
        upstream = http.client.HTTPConnection(split.hostname, split.port, timeout=5)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) or None
        upstream.request(self.command, split.path + (f"?{split.query}" if split.query else ""), body=body,
                         headers={k: v for k, v in self.headers.items() if k.lower() != "proxy-connection"})
        answer = upstream.getresponse()
        content = answer.read()
        self.send_response(answer.status)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)
        upstream.close()

    do_GET = do_POST = do_DELETE = _relay

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def forward_proxy():
    handler = type("Proxy", (_ForwardProxy,), {"seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield server, handler.seen
    server.shutdown()
    server.server_close()


def _issuer(url: str, clock: FakeClock, admin_key: str, **settings) -> QuivaIssuer:
    context = provider_context(clock=clock, sleep=RecordingSleep(clock), environ={"QUIVA_API_KEY": admin_key})
    return QuivaIssuer("quiva-wire", {"base_url": url, **settings}, context)


def test_the_environments_proxy_carries_every_request(emulator, clock, forward_proxy, monkeypatch):
    server, seen = forward_proxy
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    issuer = _issuer(emulator.url, clock, emulator.add_user("proxied@example.com"))
    key = issuer.issue("proxied r-1")
    assert issuer.verify(key.value) is True
    issuer.close()
    assert [url.split("?")[0] for url in seen] == [f"{emulator.url}/accounts/auth-with-api-key",
                                                    f"{emulator.url}/accounts/api-key",
                                                    f"{emulator.url}/accounts/auth-with-api-key"]


def test_no_proxy_bypasses_it(emulator, clock, forward_proxy, monkeypatch):
    server, seen = forward_proxy
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    issuer = _issuer(emulator.url, clock, emulator.add_user("direct@example.com"))
    issuer.list_keys()
    issuer.close()
    assert seen == []


# --- no query string in urllib3's log -----------------------------------------------------------

def test_urllib3_debug_lines_never_carry_the_query(emulator, clock, caplog):
    """A revoke by value puts the key in the query; urllib3 logs each request's path at debug
    (when something turns its logger up: rotator keeps it at warnings)."""
    caplog.set_level(logging.DEBUG, logger="urllib3")
    issuer = _issuer(emulator.url, clock, emulator.add_user("quiet@example.com"))
    key = issuer.issue("quiet r-1")
    issuer.revoke(value=key.value)
    issuer.close()
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("urllib3")]
    assert any("DELETE /accounts/api-key " in line for line in lines), lines
    assert not any(key.value.reveal() in line or "?key=" in line for line in lines)


def test_an_issuer_that_is_down_names_what_failed(clock):
    issuer = _issuer(f"http://127.0.0.1:{closed_port()}", clock, "ms-" + "a" * 30, retries=2)
    with pytest.raises(IssuerUnavailable, match=r"failed \(could not connect\) after 2 tries"):
        issuer.list_keys()
    issuer.close()
