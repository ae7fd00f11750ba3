"""Self-rotation: the admin key the rotator signs in with is itself a managed secret. Over
several key lifetimes, with a crash after every effect of its rotation, the admin key never
expires and the rotator never locks itself out."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest

from rotator.testing import EffectCounter, SimulatedCrash
from tests.world import ADMIN_EMAIL

EFFECTS = 8   # adopt, claim, issue, stage, deploy, promote | revoke, finish


@pytest.fixture
def admin_world(world, emulator, clock):
    aged = emulator.create_key(ADMIN_EMAIL, name="rotator admin (by hand)", created_on=clock.now() - timedelta(days=80))
    world.issuer["admin_key"] = {"backend": "store", "path": "admin.json"}
    world.add_secret("admin", targets=[{"backend": "store", "path": "admin.json"},
                                       {"backend": "app", "path": "admin-copy.json"}])
    world.add_secret("web")
    world.seed_value("admin", aged["key"])
    return world


@pytest.mark.parametrize("k", range(1, EFFECTS + 1))
def test_admin_key_rotation_survives_a_crash_at_every_step(admin_world, emulator, clock, k):
    world = admin_world
    counter = EffectCounter(crash_after=k)
    with pytest.raises(SimulatedCrash):
        for _ in range(3):
            engine = world.engine("A")
            counter.instrument(engine.runtime)
            engine.run(["admin"])
            clock.advance(timedelta(hours=49))
    world.assert_i1("admin")

    end = clock.now() + timedelta(days=300)                 # more than three key lifetimes
    while clock.now() < end:
        clock.advance(timedelta(days=3))                    # well inside the 14-day lead time
        report = world.rotate(identity="B")
        assert report.exit_code == 0, [o.error for o in report.outcomes]   # never locked out
        world.assert_i1("admin")
        world.assert_i1("web")
    assert world.record("admin").rotations >= 3
    managed = [r for r in emulator.keys() if r["name"].startswith(("admin [", "rotator admin"))]
    assert sum(r["deleted_on"] is None for r in managed) == 1, "exactly one live managed admin key"


def test_the_session_switches_to_the_new_admin_key_before_the_old_is_revoked(admin_world, emulator, clock):
    world = admin_world
    engine = world.engine("A")
    old = world.snapshots("admin")[world.secret("admin").primary.label].current.reveal()
    engine.run(["admin"])                                   # adopt, rotate, promote
    new = world.snapshots("admin")[world.secret("admin").primary.label].current.reveal()
    assert new != old
    engine.run(["web"])                                     # needs the issuer: signs in again
    used = {r["value_fingerprint"]: r["last_used_on"] for r in emulator.keys()}
    assert used[hashlib.sha256(new.encode()).hexdigest()] is not None, "signed in with the new key"
    clock.advance(timedelta(hours=49))
    assert engine.run().exit_code == 0                      # the same process revokes the old key
    assert not emulator.is_active(old) and emulator.is_active(new)
    assert engine.run(["web"], force=True).exit_code == 0   # and keeps working afterwards
