"""Hook deliveries for real: exec hooks are small Python scripts run with ``sys.executable``,
http hooks POST to a loopback ``ThreadingHTTPServer``. What must hold: the key value only ever on
an exec hook's stdin (and only with ``pass_value``), a hanging hook and everything it started
killed at its timeout or at shutdown, the concurrency bound across callers, a signature the
receiver can check on its own, and no URL or value in any result."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import socket
import sys
import textwrap
import threading
import time
from datetime import datetime, timezone
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rotator import __version__, credentials
from rotator.config import HookSpec
from rotator.hooks import Context, Hook, HookRunner, Result, build
from rotator.models import KeyRef, Secret
from rotator.testing import FakeClock

AT = datetime(2027, 3, 1, 9, 30, tzinfo=timezone.utc)
NEW = KeyRef(fingerprint="f" * 16, last4="c0de", key_id="42", expires_on=datetime(2027, 6, 1, tzinfo=timezone.utc))


def context(**changes) -> Context:
    values = dict(event="deployed", secret="web-api", hook="reload", rotation_id="r-1234abcd", attempt=1, at=AT,
                  issuer="quiva-prod", targets=("vault:kv/web",), runner="host:1:abcd", key=NEW)
    values.update(changes)
    return Context(**values)


def resolve(ref, where):
    return credentials.resolve(ref, where)


def hook(**values) -> Hook:
    values.setdefault("name", "reload")
    values.setdefault("events", ["deployed"])
    return build(HookSpec(**values), resolve, "hooks[0]")


def script(tmp_path: Path, name: str, code: str, *args: str) -> list[str]:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(code))
    return [sys.executable, str(path), *args]


def deliver(h: Hook, value: Secret | None = None, runner: HookRunner | None = None, **changes) -> Result:
    return (runner or HookRunner()).deliver([(h, context(**changes), value)])[0]


def alive(pid: int) -> bool:
    """A zombie counts as dead: orphans here may never be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def wait_for(path: Path, seconds: float = 5.0) -> None:
    """Readiness, not time: returns as soon as the hook says it is running."""
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.01)


# --- exec ----------------------------------------------------------------------------------------

DUMP = """
    import json, os, sys, pathlib
    out = pathlib.Path(sys.argv[1])
    (out / "env.json").write_text(json.dumps(dict(os.environ)))
    (out / "argv.json").write_text(json.dumps(sys.argv))
    (out / "cwd.txt").write_text(os.getcwd())
    (out / "stdin.txt").write_text(sys.stdin.read())
"""


def test_hook_exec_success_runs_in_its_working_dir_with_the_context(tmp_path):
    out, workdir = tmp_path / "out", tmp_path / "wd"
    out.mkdir(), workdir.mkdir()
    h = hook(kind="exec", command=script(tmp_path, "dump", DUMP, str(out)), working_dir=workdir,
             env={"APP": "web"})
    result = deliver(h)
    assert result.ok, result
    assert result.detail.startswith("exit 0 in ") and result.detail.endswith("s") and result.seconds < 5
    env = json.loads((out / "env.json").read_text())
    assert env["ROTATOR_EVENT"] == "deployed" and env["ROTATOR_KEY_ID"] == "42" and env["APP"] == "web"
    assert env["ROTATOR_DELIVERY_ID"] == context().delivery_id
    assert (out / "cwd.txt").read_text() == str(workdir)
    assert (out / "stdin.txt").read_text() == ""                     # /dev/null without pass_value


def test_hook_exec_nonzero_exit_reports_the_code_and_the_last_stderr_line(tmp_path):
    h = hook(kind="exec", command=script(tmp_path, "fail", """
        import sys
        print("rolling out web", flush=True)
        print("warning: slow rollout", file=sys.stderr)
        print("error: deployment web not found\\n\\n", file=sys.stderr)
        sys.exit(3)
    """))
    result = deliver(h)
    assert not result.ok
    assert result.detail.startswith("exit 3 in ")
    assert result.detail.endswith("s: error: deployment web not found")


def test_hook_exec_a_long_stderr_line_is_cut_to_300_characters(tmp_path):
    h = hook(kind="exec", command=script(tmp_path, "long", """
        import sys
        sys.stderr.write("x" * 10000)
        sys.exit(1)
    """))
    result = deliver(h)
    line = result.detail.split(": ", 1)[1]
    assert not result.ok and len(line) <= 300 and set(line.strip("…")) == {"x"}


@pytest.mark.parametrize("pass_value", [True, False])
def test_hook_exec_value_is_on_stdin_only_with_pass_value_never_in_env_or_argv(tmp_path, pass_value):
    out = tmp_path / "out"
    out.mkdir()
    value = Secret("ms-" + secrets.token_hex(16))
    h = hook(kind="exec", command=script(tmp_path, "dump", DUMP, str(out)), pass_value=pass_value)
    assert deliver(h, value).ok
    holding = sorted(p.name for p in out.iterdir() if value.reveal() in p.read_text())
    assert holding == (["stdin.txt"] if pass_value else [])
    assert (out / "stdin.txt").read_text() == (value.reveal() + "\n" if pass_value else "")
    assert value.reveal()[-4:] not in (out / "argv.json").read_text()


def test_hook_exec_stderr_carrying_the_value_is_redacted_in_the_result_and_the_log(tmp_path, caplog):
    value = Secret("ms-" + secrets.token_hex(16))
    h = hook(kind="exec", pass_value=True, command=script(tmp_path, "leak", """
        import sys
        key = sys.stdin.readline().strip()
        print(f"refused key {key} by the app", file=sys.stderr)
        sys.exit(2)
    """))
    with caplog.at_level("INFO", logger="rotator.hooks"):
        result = deliver(h, value)
    assert not result.ok and result.detail.endswith(": refused key [REDACTED] by the app")
    assert value.reveal() not in result.detail
    assert caplog.records and all(value.reveal() not in r.getMessage() for r in caplog.records)


def test_hook_exec_a_missing_program_cannot_run(tmp_path):
    result = deliver(hook(kind="exec", command=[str(tmp_path / "no-such-hook")]))
    assert not result.ok
    assert result.detail.startswith("cannot run: [Errno 2] No such file or directory")
    assert "no-such-hook" in result.detail


def test_hook_exec_killed_by_a_signal_says_which(tmp_path):
    result = deliver(hook(kind="exec", command=script(tmp_path, "die", """
        import os, signal
        os.kill(os.getpid(), signal.SIGKILL)
    """)))
    assert not result.ok and result.detail.startswith("killed by SIGKILL in ")


HANG = """
    import os, subprocess, sys, time, pathlib
    out = pathlib.Path(sys.argv[1])
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    (out / "grandchild.pid").write_text(str(child.pid))
    (out / "hook.pid").write_text(str(os.getpid()))
    time.sleep(60)
"""


def test_hook_exec_timeout_kills_the_hook_and_its_grandchild(tmp_path):
    h = hook(kind="exec", timeout="1s", command=script(tmp_path, "hang", HANG, str(tmp_path)))
    started = time.monotonic()
    result = deliver(h)
    took = time.monotonic() - started
    assert result == Result(False, "timed out after 1s", result.seconds)
    assert 1.0 <= took < 2.0
    assert not alive(int((tmp_path / "hook.pid").read_text()))
    assert not alive(int((tmp_path / "grandchild.pid").read_text()))


def test_hook_exec_stop_during_a_hanging_hook_returns_promptly_and_kills_it(tmp_path):
    h = hook(kind="exec", timeout="30s", command=script(tmp_path, "hang", HANG, str(tmp_path)))
    runner = HookRunner()
    out: list[Result] = []
    thread = threading.Thread(target=lambda: out.append(deliver(h, runner=runner)))
    thread.start()
    wait_for(tmp_path / "hook.pid")
    stopping = time.monotonic()
    runner.stop()
    thread.join(5)
    assert not thread.is_alive() and time.monotonic() - stopping < 1.0
    assert out[0].detail == "stopped: shutting down" and not out[0].ok
    assert not alive(int((tmp_path / "grandchild.pid").read_text()))
    assert deliver(h, runner=runner) == Result(False, "not run: shutting down", 0.0)


def test_hook_exec_a_child_left_holding_the_output_does_not_hang_the_runner(tmp_path):
    h = hook(kind="exec", timeout="30s", command=script(tmp_path, "daemonize", """
        import subprocess, sys, pathlib
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])   # inherits stdout
        pathlib.Path(sys.argv[1], "child.pid").write_text(str(child.pid))
    """, str(tmp_path)))
    started = time.monotonic()
    result = deliver(h)
    assert result.ok and result.detail.startswith("exit 0 in ")
    assert time.monotonic() - started < 2.0
    assert not alive(int((tmp_path / "child.pid").read_text()))


COUNT = """
    import fcntl, sys, time, pathlib
    out = pathlib.Path(sys.argv[1])

    def bump(delta):
        with open(out / "lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            running = out / "running"
            now = (int(running.read_text()) if running.exists() else 0) + delta
            running.write_text(str(now))
            peak = out / "peak"
            peak.write_text(str(max(now, int(peak.read_text()) if peak.exists() else 0)))

    bump(1)
    time.sleep(0.15)      # hold the slot, so that deliveries would overlap if they could
    bump(-1)
    sys.exit(int(sys.argv[2]))
"""


def test_hook_runner_bounds_concurrency_across_callers_and_keeps_job_order(tmp_path):
    runner = HookRunner(concurrency=2)
    hooks = [hook(kind="exec", name=f"h{i}", command=script(tmp_path, "count", COUNT, str(tmp_path), str(i % 2)))
             for i in range(6)]
    results: dict[str, list[Result]] = {}

    def caller(label: str, mine: list[Hook]) -> None:
        results[label] = runner.deliver([(h, context(hook=h.name), None) for h in mine])

    callers = [threading.Thread(target=caller, args=("a", hooks[:3])),
               threading.Thread(target=caller, args=("b", hooks[3:]))]
    for t in callers:
        t.start()
    for t in callers:
        t.join(10)
    assert (tmp_path / "peak").read_text() == "2"
    assert (tmp_path / "running").read_text() == "0"
    assert [r.ok for r in results["a"]] == [True, False, True]           # exit i % 2, in job order
    assert [r.ok for r in results["b"]] == [False, True, False]


# --- http ----------------------------------------------------------------------------------------

class Receiver:
    """What the loopback server answers, and what it received."""

    def __init__(self) -> None:
        self.status = 200
        self.requests: list[tuple[Message, bytes, str]] = []
        self.signing: bytes | None = None
        self.hold = False
        self.arrived = threading.Event()
        self.release = threading.Event()
        self.url = ""


def signature_ok(secret: bytes, header: str, body: bytes) -> bool:
    """The receiver's own check, written from the documented format, not with rotator.hooks.sign."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    if not fields.get("t", "").isdigit() or "v1" not in fields:
        return False
    expected = hmac.new(secret, fields["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields["v1"])


class Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        receiver: Receiver = self.server.receiver         # type: ignore[attr-defined]
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        receiver.requests.append((self.headers, body, self.path))
        receiver.arrived.set()
        if receiver.hold:
            receiver.release.wait(5)
        status = receiver.status
        if receiver.signing is not None and not signature_ok(
                receiver.signing, self.headers.get("X-Rotator-Signature", ""), body):
            status = 401
        self.send_response(status)
        if 300 <= status < 400:
            self.send_header("Location", "/elsewhere")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args) -> None:
        pass


@pytest.fixture
def receiver():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.receiver = Receiver()                          # type: ignore[attr-defined]
    server.receiver.url = f"http://127.0.0.1:{server.server_address[1]}/reload?token=tok-{secrets.token_hex(8)}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server.receiver
    server.receiver.release.set()
    server.shutdown()
    server.server_close()
    thread.join(5)


def test_hook_http_2xx_is_ok_and_posts_the_context_with_its_headers(receiver):
    receiver.status = 204
    h = hook(kind="http", url=receiver.url, headers={"Authorization": "Bearer app-token"})
    result = deliver(h, Secret("ms-" + secrets.token_hex(16)))
    assert result.ok and result.detail.startswith("HTTP 204 in ")
    [(headers, body, path)] = receiver.requests
    assert json.loads(body) == context().to_json()
    assert path.startswith("/reload?token=tok-")
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"] == f"rotator/{__version__}"
    assert headers["X-Rotator-Event"] == "deployed"
    assert headers["X-Rotator-Delivery"] == context().delivery_id
    assert headers["Authorization"] == "Bearer app-token"
    assert headers["X-Rotator-Signature"] is None


@pytest.mark.parametrize("status", [500, 302, 404])
def test_hook_http_anything_but_2xx_is_not_ok_and_redirects_are_not_followed(receiver, status):
    receiver.status = status
    result = deliver(hook(kind="http", url=receiver.url))
    assert not result.ok and result.detail.startswith(f"HTTP {status} in ")
    assert len(receiver.requests) == 1


def test_hook_http_connection_refused_is_not_ok_and_never_names_the_url(caplog):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/reload?token=tok-{secrets.token_hex(8)}"
    with caplog.at_level("DEBUG", logger="rotator.hooks"):
        result = deliver(hook(kind="http", url=url))
    assert not result.ok
    assert result.detail.startswith("http hook reload: Connection refused after ")
    for text in [result.detail, *(r.getMessage() for r in caplog.records)]:
        assert "127.0.0.1" not in text and str(port) not in text and "tok-" not in text


def test_hook_http_signature_is_verified_by_the_receiver_and_a_tampered_body_fails(receiver, monkeypatch):
    signing = "whsec-" + secrets.token_hex(16)
    monkeypatch.setenv("HOOK_SIGNING_SECRET", signing)
    receiver.signing = signing.encode()
    clock = FakeClock(datetime(2027, 3, 1, 9, 30, 7, tzinfo=timezone.utc))
    h = hook(kind="http", url=receiver.url, signing_secret={"env": "HOOK_SIGNING_SECRET"})
    result = deliver(h, runner=HookRunner(clock=clock))
    assert result.ok, result                                    # the receiver answered 401 to a bad one
    [(headers, body, _)] = receiver.requests
    header = headers["X-Rotator-Signature"]
    assert header.startswith(f"t={int(clock.now().timestamp())},v1=")
    assert signature_ok(signing.encode(), header, body)
    assert not signature_ok(signing.encode(), header, body.replace(b"deployed", b"revoked"))
    assert not signature_ok(b"another-secret", header, body)

    receiver.signing = b"the-receiver-has-another-secret"
    assert deliver(h).detail.startswith("HTTP 401 in ")


def test_hook_http_timeout_ends_the_delivery(receiver):
    receiver.hold = True
    started = time.monotonic()
    result = deliver(hook(kind="http", url=receiver.url, timeout="0.5s"))
    assert result == Result(False, "timed out after 0.5s", result.seconds)
    assert time.monotonic() - started < 1.5


def test_hook_http_stop_during_a_delivery_returns_promptly(receiver):
    receiver.hold = True
    runner = HookRunner()
    out: list[Result] = []
    thread = threading.Thread(target=lambda: out.append(deliver(hook(kind="http", url=receiver.url),
                                                                runner=runner)))
    thread.start()
    assert receiver.arrived.wait(5)
    stopping = time.monotonic()
    runner.stop()
    thread.join(5)
    assert not thread.is_alive() and time.monotonic() - stopping < 0.5
    assert out == [Result(False, "stopped: shutting down", out[0].seconds)]


def test_hook_http_an_unreadable_ca_bundle_fails_the_delivery_with_a_clear_detail(tmp_path, receiver):
    result = deliver(hook(kind="http", url=receiver.url, ca_cert=tmp_path / "missing-ca.pem"))
    assert not result.ok
    assert result.detail.startswith("hooks[0].ca_cert: cannot load ") and "missing-ca.pem" in result.detail
    assert receiver.requests == []
