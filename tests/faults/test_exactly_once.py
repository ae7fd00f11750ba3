"""I4: two runners on the same due secret at once — threads and processes. Exactly one new key
survives at the issuer, and the old key is revoked exactly once."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone

import pytest

from rotator.models import Phase
from tests.faults.setups import add_secret, primary_params
from tests.world import to_toml

GRACE = timedelta(hours=48)


@pytest.fixture(params=primary_params())
def setup(request):
    return request.param


def race(world, identities: list[str]):
    """Start one engine per identity at the same instant; return their reports."""
    engines = [world.engine(identity) for identity in identities]
    barrier = threading.Barrier(len(engines))
    reports: dict[str, object] = {}

    def go(identity, engine):
        barrier.wait()
        reports[identity] = engine.run()

    threads = [threading.Thread(target=go, args=pair) for pair in zip(identities, engines)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return reports


@pytest.mark.parametrize("round_", range(3))
def test_two_threads_rotate_a_due_secret_once(world, emulator, clock, request, setup, round_):
    add_secret(world, request, setup)
    old = world.seed("web", age=timedelta(days=80))
    old_id = next(r["id"] for r in emulator.keys() if r["name"] == "web (by hand)")
    emulator.faults.set_latency(0.005)            # widen the window in which both runners act
    try:
        first = race(world, ["A", "B"])
        assert all(r.exit_code == 0 for r in first.values()), first
        assert emulator.counters().get("POST /accounts/api-key", 0) == 1, "exactly one key issued"
        issuers = [name for name, r in first.items() if any(a.startswith("issued") for a in r.outcomes[0].actions)]
        assert len(issuers) == 1, first
        world.assert_i1("web")

        clock.advance(GRACE + timedelta(hours=1))
        second = race(world, ["A2", "B2"])
        assert all(r.exit_code == 0 for r in second.values()), second
    finally:
        emulator.faults.clear()
    assert emulator.delete_count(old_id) == 1 and not emulator.is_active(old)
    live = [r for r in emulator.keys() if r["name"].startswith("web") and r["deleted_on"] is None]
    assert len(live) == 1
    world.assert_i1("web")
    assert world.record("web").phase is Phase.IDLE


def test_two_processes_rotate_a_due_secret_once(world, emulator, clock, admin_key, tmp_path):
    """Two `rotator rotate` processes at once, on the real clock, sharing file backends."""
    clock.set(datetime.now(timezone.utc))          # the subprocesses use the real clock
    world.defaults.update(lead_time="30d", grace="0s")
    world.add_secret("web")
    old = world.seed("web", age=timedelta(days=80))
    config_file = tmp_path / "rotator.toml"
    config_file.write_text(to_toml(world.config_data()))
    env = {**os.environ, "QUIVA_API_KEY": admin_key, "ROTATOR_CONFIG": str(config_file)}
    emulator.faults.set_latency(0.005)
    try:
        procs = [subprocess.Popen([sys.executable, "-m", "rotator.cli", "rotate", "-o", "json"],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        results = [p.communicate(timeout=60) for p in procs]
    finally:
        emulator.faults.clear()
    for proc, (out, err) in zip(procs, results):
        assert proc.returncode == 0, err
        assert old not in out + err
    assert emulator.counters().get("POST /accounts/api-key", 0) == 1
    old_id = next(r["id"] for r in emulator.keys() if r["name"] == "web (by hand)")
    assert emulator.delete_count(old_id) == 1
    live = [r for r in emulator.keys() if r["name"].startswith("web") and r["deleted_on"] is None]
    assert len(live) == 1
    world.assert_i1("web")


def test_a_runner_whose_key_was_revoked_mid_adoption_rereads_instead_of_failing(world, emulator):
    """B verifies the unmanaged key, then A adopts, rotates and revokes it before B's listing:
    B finds the key missing from the listing because the primary changed, not because the key
    belongs to another user. It re-reads and sees A's finished rotation."""
    world.defaults["grace"] = "0s"
    world.add_secret("web")
    old = world.seed("web", age=timedelta(days=80))
    b = world.engine("B")
    issuer = world.secret("web", b.runtime).issuer
    list_keys = issuer.list_keys

    def list_after_a_rotated():
        assert world.rotate(identity="A").exit_code == 0
        return list_keys()

    issuer.list_keys = list_after_a_rotated
    report = b.run()

    assert report.exit_code == 0, [(o.secret, o.error) for o in report.outcomes]
    assert not emulator.is_active(old)
    assert emulator.counters().get("POST /accounts/api-key", 0) == 1
    assert world.record("web").phase is Phase.IDLE
    world.assert_i1("web")
