"""A real SIGKILL of a rotating process after the issue and after the stage, then a fresh engine
in this process finishes the job: no outage, no orphan, no lost key."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import timedelta

import pytest

from rotator.models import Phase
from rotator.timeutil import format_instant
from tests.world import to_toml


@pytest.mark.parametrize("k, phase_left", [(3, Phase.CLAIMED), (4, Phase.STAGED)],
                         ids=["after-issue", "after-stage"])
def test_sigkill_mid_rotation_then_resume(world, emulator, clock, admin_key, tmp_path, k, phase_left):
    world.add_secret("web")
    old = world.seed("web", age=timedelta(days=80))
    config_file = tmp_path / "rotator.toml"
    config_file.write_text(to_toml(world.config_data()))
    child = subprocess.run(
        [sys.executable, "-m", "tests.faults.crash_child", str(config_file), str(k), format_instant(clock.now())],
        env={**os.environ, "QUIVA_API_KEY": admin_key}, capture_output=True, text=True, timeout=60,
        cwd=os.getcwd(),
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert world.record("web").phase is phase_left
    assert emulator.counters().get("POST /accounts/api-key", 0) == 1
    world.assert_i1("web")

    clock.advance(timedelta(minutes=16))                     # the dead runner's lease runs out
    assert world.rotate(identity="survivor").exit_code == 0
    world.assert_i1("web")
    assert world.record("web").phase is Phase.GRACE
    clock.advance(timedelta(hours=49))
    assert world.rotate(identity="survivor-2").exit_code == 0

    live = [r for r in emulator.keys() if r["name"].startswith("web") and r["deleted_on"] is None]
    assert len(live) == 1, "the orphan (if any) was revoked and exactly one key remains"
    assert not emulator.is_active(old)
    (current,) = {s.current.reveal() for s in world.snapshots("web").values()}
    assert emulator.is_active(current)


def test_sigterm_stops_a_one_shot_rotate_at_a_step_boundary(world, emulator, clock, admin_key, tmp_path):
    """`rotator rotate` terminated mid-rotation (a CronJob pod stopped): the step in flight ends,
    the lease is released, the process exits 0, and the next run resumes at once."""
    import json
    import time
    from datetime import datetime, timezone

    clock.set(datetime.now(timezone.utc))                   # the subprocess runs on the real clock
    world.defaults["lead_time"] = "30d"
    world.add_secret("web")
    world.seed("web", age=timedelta(days=80))
    config_file = tmp_path / "rotator.toml"
    config_file.write_text(to_toml(world.config_data()))
    emulator.faults.set_latency(1.5, path="/accounts/api-key")  # the issue call is slow
    record_file = world.root / "store" / "web.json"
    try:
        proc = subprocess.Popen([sys.executable, "-m", "rotator.cli", "--config", str(config_file), "rotate"],
                                env={**os.environ, "QUIVA_API_KEY": admin_key}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            doc = json.loads(record_file.read_text())
            if doc.get("rotator", {}).get("record", {}).get("phase") == "claimed":
                break
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)                    # while the issue request is in flight
        out, err = proc.communicate(timeout=30)
    finally:
        emulator.faults.clear()
    assert proc.returncode == 0, err
    record = world.record("web")
    # Stopped at the boundary before the issue (CLAIMED) or after the issue and stage (STAGED),
    # depending on when the signal landed; either way the lease is released.
    assert record.phase in (Phase.CLAIMED, Phase.STAGED) and record.owner is None, record
    world.assert_i1("web")
    assert world.rotate(identity="next").exit_code == 0       # resumes without waiting for a lease
    assert world.record("web").phase is Phase.GRACE
