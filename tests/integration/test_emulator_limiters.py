"""The emulator's two rate-limiter models over real HTTP.

* token bucket: ``per_second`` tokens a second, ``burst`` at once; a refused request's 429 says a
  constant ``retry_after`` (the emulator's default 1 s, whatever the refill time);
* fixed window: ``limit`` requests per ``window`` seconds, windows aligned on the Unix clock; a
  refused request's 429 says the time left until the window resets (the body to the millisecond,
  the ``Retry-After`` header rounded up to whole seconds).

rotator's client against each model: tests/integration/test_emulator_limiters_pacing.py.
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from rotator_providers.quiva.emulator import Emulator
from rotator_providers.quiva.emulator.state import SettableClock

REPO_ROOT = Path(__file__).resolve().parents[2]
ADMIN = "admin@example.com"
AGENTS = "/v1/agents"


@pytest.fixture(scope="module")
def server():
    with Emulator(port=0, clock=RealClock()) as emu:
        yield emu


@pytest.fixture
def emu(server):
    server.reset()
    yield server
    server.reset()


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=5, verify=False) as http:
        yield http


class RealClock(SettableClock):
    """Real UTC time; sleeping really sleeps (the pace is kept in real time, as the limiter's)."""

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def knob(client: httpx.Client, **faults) -> httpx.Response:
    return client.post("/_emulator/faults", json=faults)


def start_of_a_window(seconds: float) -> None:
    """Sleep until just after the next multiple of ``seconds`` on the Unix clock."""
    time.sleep(seconds - time.time() % seconds + 0.01)


# ---- the models over HTTP ---------------------------------------------------------------------

def test_token_bucket_over_the_knob_endpoint(emu, client):
    key = emu.add_user(ADMIN)
    armed = knob(client, rate_limit={"per_second": 2, "burst": 2, "retry_after": 3})
    assert armed.status_code == 200
    assert armed.json()["faults"]["rate_limit"] == {"model": "token_bucket", "per_second": 2.0, "burst": 2,
                                                     "retry_after": 3}
    statuses = [client.get(AGENTS, headers=bearer(key)) for _ in range(3)]
    assert [r.status_code for r in statuses] == [200, 200, 429]
    refused = statuses[-1]
    assert refused.json() == {"error": "Rate limit exceeded", "message": "Too many requests; slow down",
                              "retry_after": 3}
    assert refused.headers["Retry-After"] == "3"          # a constant, whatever the refill (0.5 s)
    time.sleep(0.55)
    assert client.get(AGENTS, headers=bearer(key)).status_code == 200
    lifted = knob(client, rate_limit={"per_second": None})
    assert lifted.json()["faults"]["rate_limit"] is None
    assert all(client.get(AGENTS, headers=bearer(key)).status_code == 200 for _ in range(5))


def test_fixed_window_refuses_until_the_window_resets_and_says_when(emu, client):
    key = emu.add_user(ADMIN)
    armed = knob(client, rate_limit={"model": "fixed_window", "limit": 3, "window": 2})
    assert armed.json()["faults"]["rate_limit"] == {
        "model": "fixed_window", "limit": 3, "window": 2.0, "retry_after": "the time left until the window resets"}
    start_of_a_window(2.0)
    reset = (time.time() // 2 + 1) * 2
    answers = []
    for _ in range(6):
        reply = client.get(AGENTS, headers=bearer(key))
        answers.append((time.time(), reply))
    assert [r.status_code for _, r in answers] == [200, 200, 200, 429, 429, 429]
    waits = []
    for at, reply in answers[3:]:
        body = reply.json()
        assert set(body) == {"error", "message", "retry_after"} and body["error"] == "Rate limit exceeded"
        wait = body["retry_after"]
        assert isinstance(wait, float) and 0 < wait <= 2 and round(wait, 3) == wait     # to the millisecond
        assert reply.headers["Retry-After"] == str(math.ceil(wait))                     # whole seconds
        assert at + wait == pytest.approx(reset, abs=0.05)                             # the window's end
        waits.append(wait)
    assert waits == sorted(waits, reverse=True)            # the same end: less to wait each time
    time.sleep(max(0.0, reset - time.time()) + 0.01)
    assert [client.get(AGENTS, headers=bearer(key)).status_code for _ in range(4)] == [200, 200, 200, 429]


def test_fixed_window_counts_every_caller_and_every_path(emu, client):
    key = emu.add_user(ADMIN)
    emu.faults.rate_limit(model="fixed_window", limit=2, window=60)
    start_of_a_window(1.0) if time.time() % 60 < 59 else time.sleep(1.5)
    assert client.post("/accounts/auth-with-api-key", json={"api_key": key}).status_code == 200
    assert client.get(AGENTS, headers=bearer(key)).status_code == 200
    refused = client.post("/accounts/auth-with-api-key", json={"api_key": key})
    assert refused.status_code == 429 and 0 < refused.json()["retry_after"] <= 60
    assert emu.counters()["status:429"] == 1


@pytest.mark.parametrize("spec, message", [
    ({"model": "leaky"}, "model must be one of token_bucket, fixed_window"),
    ({"model": "fixed_window", "limit": 5}, "window must be a positive number"),
    ({"model": "fixed_window", "limit": 0, "window": 1}, "limit must be a positive integer"),
    ({"model": "fixed_window", "limit": 5, "window": 1, "retry_after": 2}, "fixed_window model takes limit and window"),
    ({"per_second": 5, "window": 1}, "token_bucket model takes per_second"),
    ({"per_second": 5, "burst": 0}, "burst must be a positive integer"),
    ({"per_second": 5, "speed": 1}, "unknown field(s) speed"),
])
def test_limiter_settings_are_checked(emu, client, spec, message):
    refused = knob(client, rate_limit=spec)
    assert refused.status_code == 400 and message in refused.json()["message"], refused.text
    assert emu.faults.snapshot()["rate_limit"] is None


def test_the_standalone_emulator_takes_a_limiter_on_its_command_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "QUIVA_API_KEY"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    for flags, expected in (
            (["--fixed-window", "50/1"], {"model": "fixed_window", "limit": 50, "window": 1.0,
                                          "retry_after": "the time left until the window resets"}),
            (["--token-bucket", "50,10"], {"model": "token_bucket", "per_second": 50.0, "burst": 10,
                                           "retry_after": 1})):
        proc = subprocess.Popen(
            [sys.executable, "-m", "rotator_providers.quiva.emulator", "--port", "0", "--quiet",
             "--admin-key-file", str(tmp_path / "admin.key"), *flags],
            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            url = re.fullmatch(r"QuivaWorks emulator listening on (http://\S+)\n", proc.stdout.readline()).group(1)
            assert httpx.get(f"{url}/_emulator/faults").json()["faults"]["rate_limit"] == expected
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=5)
    bad = subprocess.run([sys.executable, "-m", "rotator_providers.quiva.emulator", "--fixed-window", "50"],
                         cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "expected LIMIT/SECONDS" in bad.stderr
