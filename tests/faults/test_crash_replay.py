"""Crash replay: stop a rotation right after every effect, resume with a fresh engine, and check
I1 (no outage), I2 (no orphan, no lost key), I3 (revoke only after grace), I5 (idempotent)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from rotator.models import Phase
from rotator.testing import EffectCounter, SimulatedCrash
from tests.faults.setups import add_secret, primary_params

GRACE = timedelta(hours=48)
LEASE = timedelta(minutes=15)
# adopt, claim, issue, stage, deploy (1 secondary), promote | grace | revoke, finish
EFFECTS_PER_ROTATION = 8


@pytest.fixture(params=primary_params())
def setup(request):
    return request.param


@pytest.fixture
def due_world(world, request, setup):
    add_secret(world, request, setup)
    world.seed("web", age=timedelta(days=80))     # expires in 10 days: due
    return world


def rotate_with(world, counter: EffectCounter, identity: str):
    engine = world.engine(identity)
    counter.instrument(engine.runtime)
    return engine.run()


def run_scenario(world, counter: EffectCounter, identity: str) -> None:
    """One rotation as it happens across two scheduled runs: issue ... promote, then revoke."""
    rotate_with(world, counter, identity)
    world.clock.advance(GRACE + timedelta(hours=1))
    rotate_with(world, counter, identity)


def test_a_clean_rotation_has_the_expected_effects(due_world):
    counter = EffectCounter()
    run_scenario(due_world, counter, "runner-A")
    assert [m for _, m in counter.log] == [
        "write_record", "write_record", "issue", "stage", "deploy", "promote", "revoke", "write_record",
    ]
    assert counter.count == EFFECTS_PER_ROTATION


@pytest.mark.parametrize("k", range(1, EFFECTS_PER_ROTATION + 1))
def test_crash_after_every_effect_then_resume(due_world, emulator, clock, k):
    world = due_world
    old = world.snapshots("web")[world.secret("web").primary.label].current.reveal()
    old_id = next(r["id"] for r in emulator.keys() if r["name"] == "web (by hand)")

    counter = EffectCounter(crash_after=k)
    with pytest.raises(SimulatedCrash):
        run_scenario(world, counter, "runner-A")
    assert counter.crashed
    world.assert_i1("web")                                  # I1 right after the crash

    # Resume with fresh engines (another process) until the rotation is complete.
    for attempt in range(20):
        clock.advance(timedelta(hours=6))
        report = world.rotate(identity=f"runner-B{attempt}")
        assert report.exit_code == 0, [o.error for o in report.outcomes]
        world.assert_i1("web")
        record = world.record("web")
        if record.phase is Phase.IDLE and record.rotations == 1 and not emulator.is_active(old):
            break
    else:
        pytest.fail(f"rotation never completed after a crash at effect {k}: {world.record('web')}")

    current = world.snapshots("web")
    values = {snap.current.reveal() for snap in current.values()}
    assert len(values) == 1, "every target holds the same key"
    (new,) = values
    # I2: exactly one live key for this secret: the one in the backends. No orphan.
    live = [r for r in emulator.keys() if r["name"].startswith("web") and r["deleted_on"] is None]
    assert len(live) == 1 and emulator.is_active(new)
    assert not emulator.is_active(old) and emulator.delete_count(old_id) == 1
    # I3: the old key died no earlier than grace after the new key was minted.
    new_record = next(r for r in live)
    old_record = next(r for r in emulator.keys() if r["id"] == old_id)
    assert _ts(old_record["deleted_on"]) >= _ts(new_record["created_on"]) + GRACE
    # I5: one more run changes nothing.
    clock.advance(timedelta(hours=1))
    again = world.rotate(identity="runner-C").outcomes[0]
    assert again.status == "ok" and again.actions == []


def _ts(text):
    from rotator.timeutil import parse_instant

    return parse_instant(text)


def test_graceful_stop_mid_rotation_releases_the_lease_and_resumes(due_world, emulator, clock):
    """A stop requested after the stage (as on SIGTERM) ends the run at the next step boundary;
    the lease is released so a fresh runner resumes at once, without waiting for it to expire."""
    world = due_world
    engine = world.engine("stopping")

    def stop_after_stage(number, provider, method):
        if method == "stage":
            engine.request_stop()

    EffectCounter(on_effect=stop_after_stage).instrument(engine.runtime)
    outcome = engine.run().outcomes[0]
    assert outcome.status in ("waiting", "changed") and "shutting down" in outcome.detail
    record = world.record("web")
    assert record.phase is Phase.STAGED and record.owner is None
    world.assert_i1("web")

    assert world.rotate(identity="next-start").exit_code == 0       # no clock advance needed
    assert world.record("web").phase is Phase.GRACE
    world.assert_i1("web")
