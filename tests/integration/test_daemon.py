"""``rotator daemon`` as a real process on the real clock, against the emulator and file backends:
it rotates a due key, reports it on /metrics and /readyz, stops mid-rotation on SIGTERM within its
timeout and the next start finishes the rotation; two daemons never double-rotate; alerts reach a
local webhook sink once; and no key value shows up in logs, audit trail, metrics or webhooks."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from rotator.models import Phase
from rotator.timeutil import format_instant
from tests.world import ADMIN_EMAIL, to_toml, wait_for

ISSUE = "POST /accounts/api-key"


# --- helpers --------------------------------------------------------------------------------------

class Daemon:
    """One ``rotator daemon`` subprocess; its stderr (JSON log lines) is collected as it comes."""

    def __init__(self, config_file: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rotator.cli", "--config", str(config_file), "--log-level", "debug",
             "--log-format", "json", "daemon", "--http-address", "127.0.0.1:0"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.stdout: list[str] = []
        self._readers = [
            threading.Thread(target=lambda s=stream, out=sink: out.extend(iter(s.readline, "")), daemon=True)
            for stream, sink in ((self.proc.stderr, self.lines), (self.proc.stdout, self.stdout))
        ]
        for thread in self._readers:
            thread.start()
        self._url: str | None = None

    @property
    def log(self) -> str:
        return "".join(self.lines)

    @property
    def url(self) -> str:
        if self._url is None:
            found = wait_for(lambda: re.search(r"serving /healthz /readyz /metrics on (http://[\d.:]+)", self.log),
                             what=f"the daemon's HTTP address\n{self.log[-2000:]}")
            self._url = found.group(1)
        return self._url

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metric(self, name: str, **labels: str) -> float | None:
        """One sample from /metrics (labels must match exactly those given, in any order)."""
        _, page = self.get("/metrics")
        for line in page.splitlines():
            match = re.match(r"^([a-z_]+)(?:\{(.*)\})? (\S+)$", line)
            if not match or match.group(1) != name:
                continue
            found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
            if found == labels:
                return float(match.group(3))
        return None

    def stop(self, timeout: float = 10) -> tuple[int, float]:
        """SIGTERM; (exit status, seconds until the process was gone)."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        return code, time.monotonic() - started

    def close(self) -> None:
        """Kill if still running; collect the rest of its output; close the pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        for thread in self._readers:
            thread.join(timeout=5)
        for stream in (self.proc.stdout, self.proc.stderr):
            stream.close()




class WebhookSink:
    """A local HTTP server standing in for a webhook receiver (generic and Slack)."""

    def __init__(self) -> None:
        self.received: list[tuple[str, bytes]] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                sink.received.append((self.path, body))
                self.send_response(200)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def bodies(self, prefix: str) -> list[dict[str, Any]]:
        return [json.loads(body) for path, body in self.received if path.startswith(prefix)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def real_time(world, clock, emulator, tmp_path, monkeypatch):
    """The world on the real clock (the daemons use it), and a config writer for subprocesses.
    The admin key is made now: the session's is as old as the fake clock's start, and the daemon
    alerts on an admin key it does not manage once it comes within the lead time of expiry."""
    clock.set(datetime.now(timezone.utc))
    admin_key = emulator.add_user(ADMIN_EMAIL, role="admin")
    monkeypatch.setenv("QUIVA_API_KEY", admin_key)
    daemons: list[Daemon] = []

    def start(extra_toml: str = "", env: dict[str, str] | None = None) -> Daemon:
        config_file = tmp_path / "rotator.toml"
        config_file.write_text(to_toml(world.config_data()) + extra_toml)
        daemon = Daemon(config_file, {**os.environ, "QUIVA_API_KEY": admin_key, **(env or {})})
        daemons.append(daemon)
        return daemon

    yield start
    for daemon in daemons:
        daemon.close()


def reader(world, name: str):
    """A cheap way to read one secret's record repeatedly (one runtime, reused)."""
    secret = world.secret(name)
    return lambda: secret.primary.backend.read(secret.primary.target).record


def seed_file(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"api_key": value}) + "\n")


# --- tests ----------------------------------------------------------------------------------------

def test_rotates_reports_stops_mid_rotation_on_sigterm_and_the_next_start_finishes(world, emulator, real_time):
    world.defaults.update(check_interval="1h")
    world.add_secret("web")
    old = world.seed("web", age=timedelta(days=80))
    record = reader(world, "web")
    daemon_toml = '\n[daemon]\nshutdown_timeout = "5s"\n'

    emulator.faults.set_latency(0.4)                        # every issuer call takes 0.4 s
    first = real_time(daemon_toml)
    wait_for(lambda: (r := record()) is not None and r.phase in (Phase.CLAIMED, Phase.STAGED),
             what="the rotation to start")
    code, took = first.stop()                               # SIGTERM mid-rotation
    assert code == 0, first.log[-3000:]
    assert took < 5, f"exited after {took:.1f}s, beyond the 5s shutdown timeout"
    left = record()
    assert left.phase in (Phase.CLAIMED, Phase.STAGED), left
    assert left.owner is None and left.lease_until is None, "the lease was released for the next start"
    assert '"interrupted' in first.log or "stopped before" in first.log
    world.assert_i1("web")                                  # no outage: the old key is still everywhere
    assert emulator.is_active(old)

    emulator.faults.clear()
    second = real_time(daemon_toml)
    wait_for(lambda: record().phase is Phase.GRACE, what="the restarted daemon to finish the rotation")
    world.assert_i1("web")
    done = record()
    assert done.rotations == 1 and done.current.fingerprint != left.current.fingerprint

    assert second.get("/healthz") == (200, "ok\n")
    status, body = wait_for(lambda: (r := second.get("/readyz"))[0] == 200 and r, what="/readyz to say ready")
    ready = json.loads(body)
    assert ready["ready"] is True and ready["providers"] == {"app": "ok", "quiva": "ok", "store": "ok"}
    # (records keep whole seconds; the daemon's own copy of the instants is finer)
    expiry = second.metric("rotator_key_expiry_timestamp_seconds", secret="web")
    assert abs(expiry - done.current.expires_on.timestamp()) < 1
    next_action = second.metric("rotator_next_action_timestamp_seconds", secret="web")
    assert abs(next_action - done.grace_until.timestamp()) < 1          # the end of the grace window
    assert second.metric("rotator_secret_phase", secret="web", phase="grace") == 1
    assert second.metric("rotator_secret_phase", secret="web", phase="staged") == 0
    assert second.metric("rotator_rotations_total", secret="web", result="completed") == 1
    assert second.metric("rotator_provider_calls_total", provider="quiva", operation="issue", status="201") \
        in (None, 1.0)                                    # issued by the first daemon if it got that far
    assert (second.metric("rotator_last_successful_reconcile_timestamp_seconds") or 0) > time.time() - 60

    code, took = second.stop()
    assert code == 0 and took < 5
    assert emulator.counters().get(ISSUE, 0) == 1, "one new key across both daemons"
    live = [k for k in emulator.keys() if k["name"].startswith("web [") and k["deleted_on"] is None]
    assert len(live) == 1, "no orphan"
    world.assert_i1("web")


def test_a_step_outlasting_the_shutdown_timeout_is_abandoned_in_time_and_resumed_after_its_lease(
        world, emulator, real_time):
    world.defaults.update(check_interval="1h", lease="4s")
    world.add_secret("web")
    world.seed("web", age=timedelta(days=80))
    record = reader(world, "web")
    toml = '\n[daemon]\nshutdown_timeout = "1s"\n'
    emulator.faults.set_latency(2, path=ISSUE)               # the issue call outlasts the timeout
    first = real_time(toml)
    wait_for(lambda: (r := record()) is not None and r.phase is Phase.CLAIMED, what="the claim")
    time.sleep(0.3)                                          # the issue request is in flight now
    code, took = first.stop()
    assert code == 1 and took < 2, (code, took)
    assert "shutdown timeout (1s) passed with a step in flight" in first.log
    left = record()
    assert left.phase is Phase.CLAIMED and left.owner is not None, "the dead runner still holds the lease"
    emulator.faults.clear()
    world.assert_i1("web")

    second = real_time(toml)                                 # waits for the lease, wakes exactly then
    wait_for(lambda: record().phase is Phase.GRACE, timeout=10, what="the rotation resumed after the lease")
    assert "swept 1 orphan key(s)" in second.log
    taken = [json.loads(line) for line in second.lines if ": resumed " in line]      # the claim taken over by CAS
    assert taken and taken[0]["time"] >= format_instant(left.lease_until)[:-1], "not before the lease ran out"
    assert second.stop()[0] == 0
    assert emulator.counters().get(ISSUE, 0) == 2, "the abandoned request minted a key too"
    live = [k for k in emulator.keys() if k["name"].startswith("web [") and k["deleted_on"] is None]
    assert len(live) == 1, "its key was found by its rotation-tagged name and revoked: no orphan"
    world.assert_i1("web")


def test_two_daemons_on_the_same_secrets_never_double_rotate(world, emulator, real_time, tmp_path):
    world.defaults.update(check_interval="1s", workers=2)
    names = ["web", "batch", "admin-tool", "fresh"]
    for name in names:
        world.add_secret(name)
    for name in names[:3]:
        world.seed(name, age=timedelta(days=80))              # three due keys; "fresh" has none yet
    trail = tmp_path / "audit.jsonl"
    toml = f'\n[audit]\npath = "{trail}"\nfsync = false\n'
    emulator.faults.set_latency(0.05)                       # widen the window in which both act
    try:
        daemons = [real_time(toml), real_time(toml)]
        records = {name: reader(world, name) for name in names}
        wait_for(lambda: all((r := read()) is not None and r.rotations == 1 for read in records.values()),
                 what="every secret rotated (or bootstrapped)")
        for daemon in daemons:                              # both keep reconciling afterwards
            wait_for(lambda d=daemon: (d.metric("rotator_reconciles_total", result="ok") or 0) >= 3,
                     what="three reconciles per daemon")
    finally:
        emulator.faults.clear()
    for daemon in daemons:
        code, _ = daemon.stop()
        assert code == 0, daemon.log[-2000:]

    assert emulator.counters().get(ISSUE, 0) == len(names), "exactly one new key per secret"
    for name in names:
        assert records[name]().rotations == 1
        assert records[name]().phase is (Phase.IDLE if name == "fresh" else Phase.GRACE)
        live = [k for k in emulator.keys() if k["name"].startswith(f"{name} [") and k["deleted_on"] is None]
        assert len(live) == 1, name
        world.assert_i1(name)
    audit = [json.loads(line) for line in trail.read_text().splitlines()]
    assert sorted(r["secret"] for r in audit if r["action"] == "promoted") == sorted(names)
    assert all(r["action"] != "failed" for r in audit)
    # they really contended: both rotated some secrets, or one found the other's lease or lost a CAS
    contended = [d for d in daemons if "in progress by" in d.log or "re-reading the primary" in d.log]
    promoters = {r["runner"] for r in audit if r["action"] == "promoted"}
    assert contended or len(promoters) == 2, "the two daemons never overlapped"


def test_alerts_reach_the_webhooks_once_and_nothing_leaks(world, emulator, real_time, tmp_path, admin_key):
    sink = WebhookSink()
    slack_url = f"{sink.url}/slack/T0000/B0000/sLaCkToKeN0123456789"
    trail = tmp_path / "audit.jsonl"
    world.defaults.update(check_interval="1s")
    world.add_secret("web", grace="0s")                     # a full rotation, revocation included
    world.add_secret("stuck", targets=[{"backend": "store", "path": "stuck.json"},
                                       {"backend": "app", "path": "stuck-dir"}])   # deploy fails
    world.add_secret("broken")                              # its primary is not JSON
    world.add_secret("drifty")                              # its secondary holds another key
    world.seed("web", age=timedelta(days=80))
    stuck = emulator.create_key("ops@example.com", name="stuck (by hand)",
                                created_on=datetime.now(timezone.utc) - timedelta(days=86))
    seed_file(world.root / "store" / "stuck.json", stuck["key"])
    (world.root / "app" / "stuck-dir").mkdir(parents=True)
    (world.root / "store" / "broken.json").write_text("{not json")
    world.seed("drifty", age=timedelta(days=5))
    other = emulator.create_key("ops@example.com", name="drifty (other)")
    seed_file(world.root / "app" / "drifty.json", other["key"])
    toml = (f'\n[audit]\npath = "{trail}"\n\n[alerts]\nwebhooks = ['
            f'{{ url = "{sink.url}/generic" }}, {{ url = {{ env = "SLACK_HOOK" }}, format = "slack" }}]\n')
    try:
        daemon = real_time(toml, env={"SLACK_HOOK": slack_url})
        record = reader(world, "web")
        wait_for(lambda: (r := record()) is not None and r.phase is Phase.IDLE and r.rotations == 1,
                 what="web rotated and its old key revoked")
        wait_for(lambda: (daemon.metric("rotator_reconciles_total", result="ok") or 0) >= 4,
                 what="four reconciles")
        metrics_page = daemon.get("/metrics")[1]
        readyz = daemon.get("/readyz")[1]
        assert daemon.metric("rotator_backend_drift", secret="drifty", backend="app",
                             target=f"app:{world.root / 'app' / 'drifty.json'}") == 1
        assert daemon.metric("rotator_secret_health", secret="broken", health="unreadable") == 1
        assert daemon.metric("rotator_secret_health", secret="stuck", health="failing") == 1
        assert (daemon.metric("rotator_alerts_total", kind="failure", outcome="suppressed") or 0) >= 4
        code, _ = daemon.stop()
        assert code == 0
    finally:
        sink.close()

    generic, slack = sink.bodies("/generic"), sink.bodies("/slack")
    summary = sorted((a["secret"], a["kind"], a["step"]) for a in generic)
    assert summary == [("broken", "failure", ""), ("drifty", "drift", f"app:{world.root / 'app' / 'drifty.json'}"),
                       ("stuck", "escalation", "7d"), ("stuck", "failure", "")], summary
    assert len(slack) == len(generic) and all(s["text"].startswith((":warning:", ":rotating_light:")) for s in slack)
    escalation = next(a for a in generic if a["kind"] == "escalation")
    assert escalation["severity"] == "critical" and "still not rotated" in escalation["summary"]

    produced = {
        "log": daemon.log, "stdout": "".join(daemon.stdout), "audit": trail.read_text(), "metrics": metrics_page,
        "readyz": readyz, "webhooks": "\n".join(body.decode() for _, body in sink.received),
    }
    audit = [json.loads(line) for line in produced["audit"].splitlines()]
    assert {"adopted", "claimed", "issued", "deployed", "verified", "promoted", "revoked", "finished",
            "failed"} <= {r["action"] for r in audit}
    assert '"level": "debug"' in produced["log"]
    values = emulator.issued_values() + [admin_key]
    assert len(values) >= 6
    for where, text in produced.items():
        leaked = [v[-4:] for v in values if v in text]
        assert not leaked, f"key values in {where} (last 4 shown): {leaked}"
        assert "sLaCkToKeN" not in text, f"the Slack webhook URL appears in {where}"


def test_an_unmanaged_admin_key_close_to_expiry_is_exported_alerted_and_escalated(world, emulator, real_time):
    sink = WebhookSink()
    world.defaults.update(check_interval="1h")
    world.add_secret("web")
    world.seed("web", age=timedelta(days=5))
    admin = emulator.create_key(ADMIN_EMAIL, name="rotator admin",      # given as { env = ... }: not managed
                                created_on=datetime.now(timezone.utc) - timedelta(days=85))
    expires = next(k for k in emulator.keys() if k["id"] == admin["id"])["expires_on"]
    toml = f'\n[alerts]\nwebhooks = [{{ url = "{sink.url}/hook" }}]\nescalate_at = ["13d", "10d", "7d"]\n'
    try:
        daemon = real_time(toml, env={"QUIVA_API_KEY": admin["key"]})
        alerts = wait_for(lambda: sink.bodies("/hook"), what=f"the credential alert\n{daemon_log(daemon)}")
        exported = wait_for(lambda: daemon.metric("rotator_issuer_credential_expiry_timestamp_seconds",
                                                  issuer="quiva"), what="the credential's expiry gauge")
        health = daemon.metric("rotator_secret_health", secret="web", health="healthy")
        log, metrics_page = daemon.log, daemon.get("/metrics")[1]
        assert daemon.stop()[0] == 0
    finally:
        sink.close()
    (alert,) = alerts
    assert alert["kind"] == "credential" and alert["issuer"] == "quiva" and alert["secret"] == "quiva (admin key)"
    assert alert["step"] == "7d" and alert["severity"] == "critical", alert      # ~5 days left: the last step
    assert alert["key"] == f"…{admin['key'][-4:]} (id {admin['id']})"
    assert "rotator cannot rotate it" in alert["summary"] and "replace it by hand before" in alert["detail"]
    assert abs(exported - datetime.fromisoformat(expires.replace("Z", "+00:00")).timestamp()) < 1
    assert health == 1, "the secrets themselves are healthy"
    for text in (log, metrics_page, json.dumps(alerts)):
        assert admin["key"] not in text


def daemon_log(daemon: Daemon) -> str:
    return daemon.log[-2000:]


def test_one_shot_rotate_does_not_load_the_daemon_stack(world, clock, admin_key, tmp_path):
    clock.set(datetime.now(timezone.utc))
    world.add_secret("web")
    world.seed("web", age=timedelta(days=80))
    config_file = tmp_path / "rotator.toml"
    config_file.write_text(to_toml(world.config_data()) + f'\n[audit]\npath = "{tmp_path / "audit.jsonl"}"\n')
    code = ("import sys; from rotator.cli import main\n"
            "assert main(['--log-level', 'error', 'rotate']) == 0\n"
            "heavy = [m for m in ('apscheduler', 'prometheus_client', 'http.server', 'rotator.daemon',"
            " 'rotator.health', 'rotator.metrics', 'rotator.scheduler') if m in sys.modules]\n"
            "assert not heavy, heavy")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "QUIVA_API_KEY": admin_key, "ROTATOR_CONFIG": str(config_file)})
    assert result.returncode == 0, result.stderr
    assert "promoted" in (tmp_path / "audit.jsonl").read_text()


def test_hook_that_hangs_does_not_hold_the_daemon_shutdown_beyond_its_timeout(world, emulator, real_time, tmp_path):
    started = tmp_path / "hook-started"
    hang = tmp_path / "hang.py"
    hang.write_text("import os, sys, time\nopen(sys.argv[1], 'w').write(str(os.getpid()))\ntime.sleep(600)\n")
    world.defaults.update(check_interval="1h")
    world.add_secret("web", hooks=[{"name": "slow-consumer", "kind": "exec", "events": ["deployed"], "gate": True,
                                    "timeout": "5m", "command": [sys.executable, str(hang), str(started)]}])
    world.seed("web", age=timedelta(days=80))
    record = reader(world, "web")
    daemon = real_time('\n[daemon]\nshutdown_timeout = "3s"\n')
    wait_for(lambda: started.exists() and started.read_text(), what="the hook to start")
    hook_pid = int(started.read_text())
    code, took = daemon.stop()
    assert code == 0 and took < 3, (code, took)             # the hook was stopped, the run ended in time
    wait_for(lambda: not _alive(hook_pid), timeout=5, what="the hook's process to be killed")
    (owed,) = record().deliveries
    assert owed.owed and owed.attempts == 0 and "shutting down" in owed.last_error   # not counted against it
    world.assert_i1("web")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"     # a zombie is dead, only not reaped
    except OSError:
        return False
