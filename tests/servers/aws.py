"""moto server fixtures (AWS Secrets Manager and Parameter Store backend tests).

One ``ThreadedMotoServer`` on 127.0.0.1 and a free port per test session, started lazily by the
first test that needs it (the ``moto_server`` fixture, or ``server()`` for code such as the
contract cases that cannot ask for fixtures) and stopped at the end of the session.

Credentials: boto3 finds dummy credentials through the standard chain (environment variables), so
they are set only while a test needs them: the function-scoped ``aws_env`` fixture (monkeypatch),
or ``dummy_credentials()`` (a MonkeyPatch the caller undoes). The shared ``~/.aws`` files and the
instance metadata service are switched off for that time, so nothing on the host is picked up.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.request
from dataclasses import dataclass, field
from http.client import HTTPConnection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

REGION = "us-east-1"
ACCOUNT = "123456789012"
DUMMY_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/nonexistent/rotator-tests/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/rotator-tests/aws-credentials",
}
CLEARED_ENV = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_REGION", "AWS_ROLE_ARN",
               "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
               "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SECRETS_MANAGER",
               "AWS_ENDPOINT_URL_SSM")

_lock = threading.Lock()
_server: MotoServer | None = None


@dataclass
class MotoServer:
    """The session's moto server: ``url``, ``reset()``, and a boto3 ``client()`` for test setup."""

    handle: Any
    url: str

    def reset(self) -> None:
        """POST /moto-api/reset: every service's state is cleared."""
        request = urllib.request.Request(f"{self.url}/moto-api/reset", data=b"", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()

    def client(self, service: str = "secretsmanager", region: str = REGION) -> Any:
        """A boto3 client with explicit dummy credentials (needs no environment)."""
        import boto3

        return boto3.client(service, region_name=region, endpoint_url=self.url,
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def settings(self, **extra: Any) -> dict[str, Any]:
        """A backend section pointing at this server."""
        return {"region": REGION, "endpoint_url": self.url, "max_attempts": 2, **extra}

    def read_current(self, secret_id: str, field: str = "api_key", region: str = REGION) -> str | None:
        """What an application reads: GetSecretValue(VersionStage=AWSCURRENT), then the field."""
        client = self.client(region=region)
        try:
            answer = client.get_secret_value(SecretId=secret_id, VersionStage="AWSCURRENT")
        except client.exceptions.ResourceNotFoundException:
            return None
        return json.loads(answer["SecretString"]).get(field)


def server() -> MotoServer:
    """The session's moto server, started on first use."""
    global _server
    with _lock:
        if _server is None:
            from moto.server import ThreadedMotoServer

            from tests.servers import moto_fidelity

            moto_fidelity.apply()

            logging.getLogger("werkzeug").setLevel(logging.WARNING)   # one line per request otherwise
            handle = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            handle.start()
            host, port = handle.get_host_and_port()
            _server = MotoServer(handle, f"http://{host}:{port}")
        return _server


def dummy_credentials() -> pytest.MonkeyPatch:
    """Set the dummy credentials in the environment; the caller calls ``.undo()`` when done."""
    patch = pytest.MonkeyPatch()
    for name in CLEARED_ENV:
        patch.delenv(name, raising=False)
    for name, value in DUMMY_ENV.items():
        patch.setenv(name, value)
    return patch


@dataclass
class _Rule:
    operation: str
    times: int
    status: int
    code: str
    message: str
    forward: bool          # True: the request reaches moto, then the answer is replaced (a lost reply)
    drop: bool = False     # with forward: no answer at all, the connection is closed instead


@dataclass
class FaultProxy:
    """An HTTP proxy in front of the moto server that can answer chosen operations with an error.

    ``fail(op, times, status, code)`` answers the next ``times`` calls of ``op`` with that error
    without forwarding them; ``lose_reply(op)`` forwards the next call (moto applies it) and then
    answers 500, as when a reply is lost (``close=True``: closes the connection without any answer,
    botocore raises ``ConnectionClosedError``). ``seen`` lists every operation that came through.

    An operation is the JSON protocol's ``X-Amz-Target`` suffix (``PutSecretValue``) or the query
    protocol's ``Action`` form field (IAM, STS: ``CreateAccessKey``). Requests are forwarded
    unchanged, ``Host`` header included: SigV4 signs the host the client addressed (this proxy), so
    a server that checks signatures (``tests/servers/aws_signing.py``) must see that same header.
    """

    upstream: str
    url: str = ""
    seen: list[str] = field(default_factory=list)
    _rules: list[_Rule] = field(default_factory=list)
    _server: Any = None
    _lock: Any = field(default_factory=threading.Lock)

    def fail(self, operation: str, times: int = 1, status: int = 400, code: str = "ThrottlingException",
             message: str = "Rate exceeded") -> FaultProxy:
        with self._lock:
            self._rules.append(_Rule(operation, times, status, code, message, forward=False))
        return self

    def lose_reply(self, operation: str, times: int = 1, close: bool = False) -> FaultProxy:
        with self._lock:
            self._rules.append(_Rule(operation, times, 500, "InternalServiceError", "reply lost", forward=True,
                                     drop=close))
        return self

    def _take(self, operation: str) -> _Rule | None:
        with self._lock:
            self.seen.append(operation)
            for rule in self._rules:
                if rule.operation == operation and rule.times > 0:
                    rule.times -= 1
                    return rule
        return None

    def start(self) -> FaultProxy:
        proxy = self
        upstream = urlsplit(self.upstream)

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                target = self.headers.get("X-Amz-Target", "")
                operation = target.split(".")[-1] if target else parse_qs(body.decode()).get("Action", ["?"])[0]
                rule = proxy._take(operation)
                if rule is None or rule.forward:
                    connection = HTTPConnection(upstream.hostname, upstream.port, timeout=30)
                    # Host stays as received (http.client then adds none): it is part of the signature
                    connection.request("POST", self.path, body=body, headers=dict(self.headers.items()))
                    reply = connection.getresponse()
                    status, payload, kind = reply.status, reply.read(), reply.getheader("Content-Type", "")
                    connection.close()
                if rule is not None and rule.drop:
                    self.close_connection = True         # the client sees the connection closed, no answer
                    return
                if rule is not None:
                    status = rule.status
                    if target:
                        kind = "application/x-amz-json-1.1"
                        payload = json.dumps({"__type": rule.code, "message": rule.message}).encode()
                    else:
                        kind = "text/xml"
                        payload = (f"<ErrorResponse><Error><Type>Sender</Type><Code>{rule.code}</Code>"
                                   f"<Message>{rule.message}</Message></Error><RequestId>r</RequestId>"
                                   "</ErrorResponse>").encode()
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    global _server
    with _lock:
        if _server is not None:
            _server.handle.stop()
            _server = None


@pytest.fixture(scope="session")
def moto_server() -> MotoServer:
    return server()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Dummy AWS credentials in the environment for this test only."""
    for name in CLEARED_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in DUMMY_ENV.items():
        monkeypatch.setenv(name, value)
    return dict(DUMMY_ENV)


@pytest.fixture
def aws_reset(moto_server: MotoServer) -> MotoServer:
    """The session's moto server with all state cleared before this test."""
    moto_server.reset()
    return moto_server


@pytest.fixture
def fault_proxy(aws_reset: MotoServer):
    """A :class:`FaultProxy` in front of a clean moto server, for this test only."""
    proxy = FaultProxy(aws_reset.url).start()
    yield proxy
    proxy.stop()


@pytest.fixture
def moto_url(aws_reset: MotoServer, aws_env: dict[str, str]) -> str:
    """A clean moto server and dummy credentials: the endpoint_url to configure a backend with."""
    return aws_reset.url
