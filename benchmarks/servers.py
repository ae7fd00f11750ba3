"""The servers a benchmark talks to, each in its own process on a free loopback port.

* the QuivaWorks emulator (``python -m rotator_providers.quiva.emulator``), driven through its
  ``/_emulator/`` knobs (users, seeded keys, clock, faults, counters);
* moto in server mode (``python -m moto.server``) for AWS Secrets Manager;
* an OpenBao dev server (``providers.vault.dev.start_dev_server``);
* optionally a :mod:`latency_proxy` in front of any of them.

Separate processes keep the servers off the benchmark's GIL, as real services would be. Every
process is started here, stopped by :meth:`Servers.close` (also at exit), and bounded in time.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
REGION = "us-east-1"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION,
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/nonexistent/rotator-bench/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/rotator-bench/aws-credentials",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(process: subprocess.Popen, timeout: float = 10.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)


def _read_line(process: subprocess.Popen, prefix: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            if process.poll() is not None:
                break
            continue
        if prefix in line:
            return line.strip()
    raise RuntimeError(f"{process.args!r} did not print {prefix!r}")


def _wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                reply.read()
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


class EmulatorProcess:
    """``python -m rotator_providers.quiva.emulator`` and a client for its knobs."""

    def __init__(self) -> None:
        self._keyfile = Path(tempfile.mkdtemp(prefix="rotator-bench-")) / "admin-key"
        env = {k: v for k, v in os.environ.items() if k != "QUIVA_API_KEY"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "rotator_providers.quiva.emulator", "--port", "0",
             "--admin-key-file", str(self._keyfile)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = _read_line(self.process, "listening on")
        self.url = line.rsplit(" ", 1)[-1]
        self._http = httpx.Client(base_url=self.url, timeout=30)

    @property
    def pid(self) -> int:
        return self.process.pid

    def _knob(self, method: str, path: str, body: Any = None) -> Any:
        reply = self._http.request(method, f"/_emulator/{path}", json=body)
        reply.raise_for_status()
        return reply.json()

    def add_user(self, email: str, role: str = "admin") -> str:
        return self._knob("POST", "users", {"email": email, "role": role})["key"]

    def create_key(self, email: str, name: str, created_on: datetime) -> str:
        data = self._knob("POST", "keys", {"email": email, "name": name, "created_on": created_on.isoformat()})
        return data["data"]["key"]

    def keys(self, email: str | None = None) -> list[dict[str, Any]]:
        return self._knob("GET", f"keys?email={email}" if email else "keys")["keys"]

    def now(self) -> datetime:
        return datetime.fromisoformat(self._knob("GET", "clock")["now"].replace("Z", "+00:00"))

    def advance(self, seconds: float) -> None:
        self._knob("POST", "clock", {"advance_seconds": seconds})

    def counters(self) -> dict[str, int]:
        return self._knob("GET", "counters")["counters"]

    def reset_counters(self) -> None:
        self._knob("POST", "counters/reset")

    def faults(self, **faults: Any) -> dict[str, Any]:
        return self._knob("POST", "faults", faults)

    def close(self) -> None:
        self._http.close()
        _stop(self.process)
        try:
            self._keyfile.unlink()
            self._keyfile.parent.rmdir()
        except OSError:
            pass


class MotoProcess:
    def __init__(self) -> None:
        port = free_port()
        env = {**os.environ, **AWS_ENV}
        self.process = subprocess.Popen(
            # moto's own server, corrected to answer BatchGetSecretValue with AWSCURRENT as AWS does
            [sys.executable, "-m", "tests.servers.moto_fidelity", "-H", "127.0.0.1", "-p", str(port)],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{port}"
        _wait_http(f"{self.url}/moto-api/data.json")

    @property
    def pid(self) -> int:
        return self.process.pid

    def close(self) -> None:
        _stop(self.process)


class ProxyProcess:
    def __init__(self, upstream_url: str, delay_ms: float) -> None:
        hostport = upstream_url.split("//", 1)[-1].rstrip("/")
        self.process = subprocess.Popen(
            [sys.executable, str(HERE / "latency_proxy.py"), "--upstream", hostport, "--delay-ms", str(delay_ms)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = _read_line(self.process, "listening on")
        self.url = "http://" + line.rsplit(" ", 1)[-1]

    @property
    def pid(self) -> int:
        return self.process.pid

    def close(self) -> None:
        _stop(self.process)


@dataclass
class Servers:
    """Everything a fleet run needs; ``proxied(delay_ms)`` gives latency-shim URLs."""

    emulator: EmulatorProcess
    moto: MotoProcess
    bao: Any
    proxies: list[ProxyProcess] = field(default_factory=list)

    @classmethod
    def start(cls, *, aws: bool = True, vault: bool = True) -> Servers:
        from rotator_providers.vault.dev import start_dev_server

        emulator = EmulatorProcess()
        moto = MotoProcess() if aws else None
        bao = start_dev_server() if vault else None
        servers = cls(emulator, moto, bao)
        atexit.register(servers.close)
        return servers

    def proxy(self, url: str, delay_ms: float) -> str:
        if not delay_ms:
            return url
        proxy = ProxyProcess(url, delay_ms)
        self.proxies.append(proxy)
        return proxy.url

    def pids(self) -> list[int]:
        found = [self.emulator.pid]
        if self.moto is not None:
            found.append(self.moto.pid)
        if self.bao is not None:
            found.append(self.bao.pid)
        return found + [p.pid for p in self.proxies]

    def close_proxies(self) -> None:
        for proxy in self.proxies:
            proxy.close()
        self.proxies.clear()

    def close(self) -> None:
        atexit.unregister(self.close)
        self.close_proxies()
        self.emulator.close()
        if self.moto is not None:
            self.moto.close()
        if self.bao is not None:
            self.bao.stop()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (children not included), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def context_switches(pid: int) -> int:
    """Voluntary + involuntary context switches summed over every thread: each is a wake-up."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            lines = (task / "status").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                total += int(line.split()[1])
    return total
