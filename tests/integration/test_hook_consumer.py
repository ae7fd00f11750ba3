"""End to end: an application that reads its key only at start keeps working through a whole
rotation — revoke included — because an exec hook restarts it, and the hook gates the revoke.

The consumer is a real process authenticating against the emulator in a loop with the key it
read when it started; it counts refusals. The hook restarts it and waits until the new process
has authenticated once, so its success means "the consumer is on the new key".
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from tests.world import wait_for

CONSUMER = r"""
import json, os, signal, sys, time, urllib.request, urllib.error
key_file, base_url, status_file = sys.argv[1], sys.argv[2], sys.argv[3]
key = json.load(open(key_file))["api_key"]          # read ONCE, at start, like many applications
stats = {"pid": os.getpid(), "ok": 0, "refused": 0, "last4": key[-4:]}
running = True
def stop(*_):
    global running
    running = False
signal.signal(signal.SIGTERM, stop)
def write():
    tmp = status_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump(stats, f)
    os.replace(tmp, status_file)
while running:
    body = json.dumps({"api_key": key}).encode()
    req = urllib.request.Request(base_url + "/accounts/auth-with-api-key", data=body,
                                 headers={"content-type": "application/json"})
    try:
        urllib.request.urlopen(req, timeout=5).read()
        stats["ok"] += 1
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            stats["refused"] += 1
    write()
    time.sleep(0.01)
"""

RESTART = r"""
import json, os, signal, subprocess, sys, time
consumer, key_file, base_url, status_file, pid_file, ledger = sys.argv[1:7]
with open(ledger, "a") as f:
    f.write(os.environ["ROTATOR_EVENT"] + " " + os.environ["ROTATOR_KEY_LAST4"] + "\n")
old = int(open(pid_file).read())
os.kill(old, signal.SIGTERM)                        # stop the old process ...
for _ in range(500):
    try:
        os.kill(old, 0)
        time.sleep(0.01)
    except ProcessLookupError:
        break
new = subprocess.Popen([sys.executable, consumer, key_file, base_url, status_file],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       start_new_session=True)      # ... start the new one, outside the hook's process group
open(pid_file, "w").write(str(new.pid))
for _ in range(1000):                               # confirm only once the new process works
    try:
        stats = json.load(open(status_file))
        if stats["pid"] == new.pid and stats["ok"] > 0:
            sys.exit(0)
    except (OSError, ValueError):
        pass
    time.sleep(0.01)
sys.exit(1)
"""


class App:
    def __init__(self, root: Path, key_file: Path, base_url: str) -> None:
        self.root = root
        self.consumer = root / "consumer.py"
        self.consumer.write_text(CONSUMER)
        self.restart = root / "restart.py"
        self.restart.write_text(RESTART)
        self.key_file, self.base_url = key_file, base_url
        self.status_file, self.pid_file, self.ledger = root / "status.json", root / "app.pid", root / "ledger"
        self.proc = None

    def start(self) -> None:
        import subprocess

        proc = subprocess.Popen([sys.executable, str(self.consumer), str(self.key_file), self.base_url,
                                 str(self.status_file)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        self.proc = proc
        self.pid_file.write_text(str(proc.pid))
        wait_for(lambda: self.stats().get("ok", 0) > 0, what="the consumer's first authentication")

    def stats(self) -> dict:
        try:
            return json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            return {}

    def hook(self) -> dict:
        return {"name": "restart-app", "kind": "exec", "events": ["deployed"], "gate": True, "timeout": "30s",
                "command": [sys.executable, str(self.restart), str(self.consumer), str(self.key_file),
                            self.base_url, str(self.status_file), str(self.pid_file), str(self.ledger)]}

    def keeps_working(self, seconds: float = 0.3) -> dict:
        """Let it run a little, then return its counters (it must still be authenticating)."""
        before = self.stats().get("ok", 0)
        pid = self.stats().get("pid")
        wait_for(lambda: self.stats().get("ok", 0) > before + 3 or self.stats().get("pid") != pid,
                 what="the consumer to keep authenticating")
        time.sleep(seconds)
        return self.stats()

    def stop(self) -> None:
        try:
            os.kill(int(self.pid_file.read_text()), signal.SIGTERM)   # the one running now (maybe the hook's)
        except (OSError, ValueError):
            pass
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
            self.proc.wait(5)


@pytest.fixture
def app(world, tmp_path):
    world.defaults["grace"] = "0s"              # the revoke follows the deploy at once: the hook must be in time
    world.add_secret("web")
    key_file = Path(world.secret("web").targets[1].target.path)
    made = App(tmp_path, key_file, world.emulator.url)
    yield made
    made.stop()


def test_hook_restarts_a_consumer_that_reads_its_key_only_at_start_through_a_whole_rotation(world, app, emulator):
    old = world.seed("web", age=timedelta(days=80))          # due: the next run rotates
    world.secrets[0]["hooks"] = [app.hook()]
    app.start()
    assert app.stats()["last4"] == old[-4:]

    report = world.rotate()
    assert report.exit_code == 0, report.outcomes
    assert not emulator.is_active(old), "the old key was revoked in the same run (grace 0)"
    new = world.snapshots("web")[world.secret("web").targets[1].label].current.reveal()
    stats = app.keeps_working()
    assert stats["last4"] == new[-4:], "the consumer runs on the new key"
    assert stats["refused"] == 0, "the consumer was refused during the rotation"
    assert app.ledger.read_text().split() == ["deployed", new[-4:]]
    record = world.record("web")
    assert not record.held and [d.state for d in record.deliveries] == ["done"]


def test_hook_missing_the_same_consumer_breaks_at_revoke(world, app, emulator):
    """The control: without the hook the test above would catch the outage."""
    old = world.seed("web", age=timedelta(days=80))
    app.start()
    assert world.rotate().exit_code == 0
    assert not emulator.is_active(old)
    wait_for(lambda: app.stats().get("refused", 0) > 0, what="the consumer to be refused")
