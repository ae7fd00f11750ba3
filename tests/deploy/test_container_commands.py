"""The containers' command lines, run without Docker.

Each test reads what the kubelet would run FROM THE FILES — the image's ENTRYPOINT, CMD, ENV and
WORKDIR from the Dockerfile, the container's command/args/env from the manifest, the config's
non-provider sections from the ConfigMap — and runs it as a subprocess against the QuivaWorks
emulator and file backends. Only what must differ outside a cluster is substituted: the config
path, the emulator URL and file directories (the providers), HOME/TMPDIR/WORKDIR (a temporary
directory for the emptyDir at /tmp), the Secret's value and the listening port.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from rotator.models import Phase
from tests.deploy import container, dockerfile_stages, exec_form, image_env, manifests, pod_spec
from tests.world import to_toml, wait_for

pytest.importorskip("yaml", reason="PyYAML is not installed (pip install pyyaml)")

BIN = Path(sys.executable).parent             # where `pip install` put the `rotator` console script


# --- building the container's process from the files ----------------------------------------------

def _toml_table(name: str, table: dict[str, Any]) -> str:
    def scalar(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            return str(value)
        if isinstance(value, list):
            return "[" + ", ".join(scalar(v) for v in value) + "]"
        return json.dumps(str(value))
    return f"\n[{name}]\n" + "".join(f"{k} = {scalar(v)}\n" for k, v in table.items())


def write_config(world, path: Path) -> None:
    """The ConfigMap's config with its providers swapped for the emulator and file backends."""
    shipped = tomllib.loads(manifests()["configmap.yaml"]["data"]["config.toml"])
    data = world.config_data()
    data["rotator"] = {**shipped["rotator"], "workers": shipped["rotator"].get("workers", 4)}
    text = to_toml(data)
    for section in ("daemon", "audit", "alerts"):
        if section in shipped:
            text += _toml_table(section, shipped[section])
    path.write_text(text)


def process(resource: dict[str, Any], *, config: Path, scratch: Path, secrets: dict[tuple[str, str], str],
            address: str | None = None) -> tuple[list[str], dict[str, str], Path]:
    """(argv, environment, working directory) of the manifest's container, as the kubelet makes them."""
    _, stages = dockerfile_stages()
    image = stages[-1]
    spec = container(resource)
    argv = spec.get("command") or exec_form(image.last("ENTRYPOINT"))
    argv = argv + (spec["args"] if "args" in spec else ([] if "command" in spec else exec_form(image.last("CMD"))))
    mounts = {m["mountPath"] for m in spec["volumeMounts"]}

    env = image_env(image)
    env["PATH"] = f"{BIN}{os.pathsep}{os.defpath}"           # the image's venv, here: this interpreter's
    for name in ("HOME", "TMPDIR"):
        assert env[name] in mounts, f"{name}={env[name]} is not on a writable mount"
        env[name] = str(scratch)
    for entry in spec.get("env", []):
        name = entry["name"]
        if "value" in entry:
            env[name] = entry["value"]
        elif "secretKeyRef" in entry.get("valueFrom", {}):
            ref = entry["valueFrom"]["secretKeyRef"]
            env[name] = secrets[(ref["name"], ref["key"])]
        else:
            raise AssertionError(f"env {name}: no substitute for {entry['valueFrom']}")
    assert Path(env["ROTATOR_CONFIG"]).parent.as_posix() in mounts
    env["ROTATOR_CONFIG"] = str(config)
    argv = [str(config) if arg == spec_config(resource) else arg for arg in argv]
    if address is not None:
        env["ROTATOR_DAEMON__HTTP_ADDRESS"] = address
    assert image.last("WORKDIR") in mounts
    return argv, env, scratch


def spec_config(resource: dict[str, Any]) -> str:
    return next(e["value"] for e in container(resource)["env"] if e["name"] == "ROTATOR_CONFIG")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""




class Running:
    """A subprocess whose output is collected while it runs."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [threading.Thread(target=lambda s=s, o=o: o.extend(iter(s.readline, "")), daemon=True)
                         for s, o in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for reader in self._readers:
            reader.start()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        for reader in self._readers:
            reader.join(timeout=5)
        for stream in (self.proc.stdout, self.proc.stderr):
            stream.close()


# --- fixtures -------------------------------------------------------------------------------------

@pytest.fixture
def due(world, clock, tmp_path, admin_key):
    """On the real clock (the subprocess uses it): one secret whose hand-made key is due."""
    clock.set(datetime.now(timezone.utc))
    # As the ConfigMap ships it: the admin key kept in a store rotator writes, managed as a secret.
    world.issuer["admin_key"] = {"backend": "store", "path": "quiva-admin.json"}
    world.add_secret("quiva-admin", targets=[{"backend": "store", "path": "quiva-admin.json"}])
    world.seed_value("quiva-admin", admin_key)
    world.add_secret("web")
    old = world.seed("web", age=timedelta(days=80))
    config = tmp_path / "config.toml"
    write_config(world, config)
    scratch = tmp_path / "emptydir-tmp"
    scratch.mkdir()
    return config, scratch, old


def audit_records(lines: list[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in lines if line.startswith('{"schema": "rotator.audit/')
            or line.startswith('{"schema":"rotator.audit/')]


# --- the tests ------------------------------------------------------------------------------------

def test_the_cronjobs_command_rotates_a_due_key(world, emulator, admin_key, due):
    config, scratch, old = due
    argv, env, cwd = process(manifests()["cronjob.yaml"], config=config, scratch=scratch,
                             secrets={})
    assert argv == ["rotator", "rotate"]
    result = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]

    record = world.record("web")
    assert record.phase is Phase.GRACE and record.rotations == 1, record
    world.assert_i1("web")
    assert emulator.is_active(old), "the old key stays valid through the grace window"
    # The ConfigMap's [audit] stdout = true: the log collector gets one JSON line per action.
    actions = [r["action"] for r in audit_records(result.stdout.splitlines()) if r["secret"] == "web"]
    assert {"adopted", "issued", "deployed", "verified", "promoted"} <= set(actions), result.stdout
    assert "2 secret(s): 2 changed, 0 failed" in result.stdout      # web rotated, the admin key adopted
    for value in emulator.issued_values() + [admin_key]:
        assert value not in result.stdout + result.stderr
    assert not list(scratch.iterdir()), "nothing written to HOME/TMPDIR"


def test_the_deployments_command_becomes_ready_and_stops_on_sigterm(world, emulator, admin_key, due):
    config, scratch, _ = due
    deployment = manifests()["deployment.yaml"]
    spec = container(deployment)
    port = free_port()
    argv, env, cwd = process(deployment, config=config, scratch=scratch,
                             secrets={}, address=f"127.0.0.1:{port}")
    assert argv == ["rotator", "daemon"]
    daemon = Running(argv, env, cwd)
    try:
        base = f"http://127.0.0.1:{port}"
        ready = spec["readinessProbe"]["httpGet"]["path"]
        live = spec["livenessProbe"]["httpGet"]["path"]
        wait_for(lambda: get(base + live)[0] == 200, what=f"{live}\n{''.join(daemon.err)[-2000:]}")
        status, body = wait_for(lambda: (r := get(base + ready))[0] == 200 and r,
                                what=f"{ready}\n{''.join(daemon.err)[-2000:]}")
        assert json.loads(body)["providers"] == {"app": "ok", "quiva": "ok", "store": "ok"}
        record = world.record("web")
        assert record.phase is Phase.GRACE and record.rotations == 1, "ready after a reconcile that rotated"
        page = get(base + "/metrics")[1]
        assert 'rotator_rotations_total{result="completed",secret="web"} 1.0' in page
        assert any(r["action"] == "promoted" for r in audit_records(daemon.out))

        grace = pod_spec(deployment)["terminationGracePeriodSeconds"]
        started = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        code = daemon.proc.wait(timeout=grace)
        took = time.monotonic() - started
    finally:
        daemon.close()
    assert code == 0, "".join(daemon.err)[-3000:]
    assert took < grace, f"stopped after {took:.1f}s, beyond terminationGracePeriodSeconds ({grace}s)"
    assert "stopped" in "".join(daemon.err)
    assert not list(scratch.iterdir()), "nothing written to HOME/TMPDIR"


def _unshare_works() -> bool:
    try:
        return subprocess.run(["unshare", "--pid", "--fork", "--kill-child", "true"],
                              capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_the_daemon_as_pid_1_stops_on_sigterm(world, emulator, admin_key, due):
    """The image has no init: the kernel gives PID 1 only the signals it installed handlers for,
    so this checks that the daemon, as PID 1 of its own PID namespace, stops cleanly on SIGTERM."""
    if not _unshare_works():
        pytest.skip("no PID namespace here (unshare --pid needs root or user namespaces)")
    config, scratch, _ = due
    deployment = manifests()["deployment.yaml"]
    port = free_port()
    argv, env, cwd = process(deployment, config=config, scratch=scratch,
                             secrets={}, address=f"127.0.0.1:{port}")
    argv = ["unshare", "--pid", "--fork", "--kill-child", "--", *argv]
    daemon = Running(argv, env, cwd)
    try:
        wait_for(lambda: get(f"http://127.0.0.1:{port}/readyz")[0] == 200, what="/readyz")
        children = Path(f"/proc/{daemon.proc.pid}/task/{daemon.proc.pid}/children").read_text().split()
        (pid,) = children
        ns_pids = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                       if line.startswith("NSpid:")).split()[1:]
        assert ns_pids[-1] == "1", "the daemon is PID 1 in its namespace"
        os.kill(int(pid), signal.SIGTERM)
        code = daemon.proc.wait(timeout=pod_spec(deployment)["terminationGracePeriodSeconds"])
    finally:
        daemon.close()
    assert code == 0, "".join(daemon.err)[-3000:]
    assert "SIGTERM received: shutting down" in "".join(daemon.err)


def test_the_daemon_as_pid_1_reaps_what_a_hook_leaves_behind(world, emulator, admin_key, due, tmp_path):
    """Without an init, a process a hook leaves running is re-parented to rotator when the hook
    exits; as PID 1 rotator must reap it, or it stays a zombie for the pod's lifetime."""
    if not _unshare_works():
        pytest.skip("no PID namespace here (unshare --pid needs root or user namespaces)")
    config, scratch, _ = due
    ran = tmp_path / "hook-ran"
    world.secrets[-1]["hooks"] = [{"name": "leave-a-child", "kind": "exec", "events": ["deployed"],
                                   "command": ["/bin/sh", "-c", f"(sleep 0.3 >/dev/null 2>&1 </dev/null &); touch {ran}"]}]
    write_config(world, config)
    deployment = manifests()["deployment.yaml"]
    port = free_port()
    argv, env, cwd = process(deployment, config=config, scratch=scratch, secrets={}, address=f"127.0.0.1:{port}")
    daemon = Running(["unshare", "--pid", "--fork", "--kill-child", "--", *argv], env, cwd)
    try:
        wait_for(ran.exists, timeout=30, what="the hook to run")
        (pid,) = Path(f"/proc/{daemon.proc.pid}/task/{daemon.proc.pid}/children").read_text().split()

        def zombies() -> list[str]:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            states = []
            for child in children:
                try:
                    states.append(Path(f"/proc/{child}/stat").read_text().split(") ", 1)[1][0])
                except OSError:
                    pass
            return [s for s in states if s == "Z"]

        time.sleep(0.6)                                   # the orphan has exited ...
        wait_for(lambda: not zombies(), timeout=5, what="the orphan to be reaped")   # ... and is gone
        os.kill(int(pid), signal.SIGTERM)
        code = daemon.proc.wait(timeout=30)
    finally:
        daemon.close()
    assert code == 0, "".join(daemon.err)[-3000:]
