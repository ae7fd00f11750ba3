"""Twins and strays: keys minted under a rotation's name that nothing relies on are revoked.

Issuing is not idempotent: when the reply to ``POST /accounts/api-key`` is lost, the retry mints a
second key under the same (rotation-tagged) name. The run that issued finds it when it confirms
its new key in a listing requested after the issue, and revokes it through the gate. A twin whose
request completes at the issuer even later (after its client timed out and the retry was served)
is found by the sweep of a later run, once it is older than an issue request can be in flight.
"""

from __future__ import annotations

from datetime import timedelta

ISSUE = "/accounts/api-key"


def _named(emulator, name):
    return [k for k in emulator.keys() if k["name"] == name]


def _live_named(emulator, name):
    return [k for k in _named(emulator, name) if not k["deleted_on"]]


def test_one_run_rotation_revokes_the_twin_of_its_new_key(world, emulator):
    world.defaults["grace"] = "0s"
    world.add_secret("web")
    old = world.seed("web", age=timedelta(days=80))         # due: adopted and rotated in one run
    emulator.faults.fail_after_effect_next(1, 503, path=ISSUE)
    report = world.rotate()
    assert report.exit_code == 0, report.outcomes

    record = world.record("web")
    name = record.current.name
    assert len(_named(emulator, name)) == 2, "the lost reply minted a twin"
    live = _live_named(emulator, name)
    assert len(live) == 1, "the twin is revoked at the end of the run"
    world.assert_i1("web")                                    # ... and the one left is the one in use
    assert not emulator.is_active(old)
    swept = [e for e in world.events if e.action == "revoked" and "(twin)" in e.detail]
    assert len(swept) == 1 and swept[0].key_id != live[0]["id"] and swept[0].last4
    intents = [e for e in world.events if e.action == "revoke" and e.result == "intent"]
    assert [e.key_id for e in intents if "(twin)" in e.detail] == [swept[0].key_id], "intent written first"


def test_bootstrap_revokes_the_twin_of_the_first_key(world, emulator):
    world.add_secret("api")
    emulator.faults.fail_after_effect_next(1, 503, path=ISSUE)
    assert world.rotate().exit_code == 0
    name = world.record("api").current.name
    assert len(_named(emulator, name)) == 2
    assert len(_live_named(emulator, name)) == 1
    world.assert_i1("api")


def test_issues_are_confirmed_by_listings_and_every_run_sweeps_once(world, emulator):
    """Each new key is looked up in a listing requested after it was issued (its id, its twins, and
    whether the reply's value is the key created); a run lists once more at its end for the sweep
    of strays, and a run with nothing due lists only for that."""
    lists = "GET /accounts/api-keys"
    world.defaults["grace"] = "0s"
    for name in ("a", "b", "c"):
        world.add_secret(name)
    emulator.faults.throttle_next(1, retry_after=0)
    world.rotate()                                            # three bootstraps, one 429 on the way
    assert emulator.counters().get(lists, 0) == 3 + 1         # one confirmation each (one worker), one sweep
    assert all(world.record(n).current.key_id is not None for n in "abc")   # ids learnt at issue time

    world.add_secret("d")
    world.add_secret("e")
    emulator.faults.fail_after_effect_next(1, 503, path=ISSUE)
    world.rotate()                                            # two more; one issue answered 503 after minting
    assert all(len(_live_named(emulator, world.record(n).current.name)) == 1 for n in "de")

    emulator.reset_counters()
    world.rotate()                                            # nothing due: the sweep's one listing
    assert emulator.counters().get(lists, 0) == 1


def test_a_late_twin_is_swept_by_a_later_run_once_no_request_can_be_in_flight(world, emulator, clock):
    """The issue request times out on the client but completes at the issuer after the retry was
    served and after the run's own check: the key is young, so the run's sweep leaves it (its
    request could still be in flight); a run later than the issuer's in-flight bound revokes it,
    even with grace 0 and nothing else due."""
    world.defaults["grace"] = "0s"
    world.issuer.update(timeout="1s", retries=3)
    world.add_secret("web")
    emulator.faults.latency_next(1, seconds=1.6, path="POST " + ISSUE)   # first try: effect lands late
    assert world.rotate().exit_code == 0
    name = world.record("web").current.name
    import time
    deadline = time.monotonic() + 5
    while len(_named(emulator, name)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)                                      # the slow request's key appears now
    assert len(_live_named(emulator, name)) == 2, "a late twin is live"

    assert world.rotate().exit_code == 0                      # too young to be swept yet
    assert len(_live_named(emulator, name)) == 2
    clock.advance(timedelta(minutes=11))
    report = world.rotate()
    assert report.exit_code == 0
    live = _live_named(emulator, name)
    assert len(live) == 1 and world.record("web").current.key_id == live[0]["id"]
    world.assert_i1("web")
    swept = [e for e in world.events if e.action == "revoked" and "(stray)" in e.detail]
    assert len(swept) == 1 and swept[0].key_id and swept[0].last4


def test_a_compromised_key_replacement_revokes_the_twin_of_its_new_key(world, emulator):
    """`revoke --compromised` runs one secret without the end-of-run sweep: its revoke step
    sweeps instead, with a listing fetched after the issue."""
    from rotator.incident import revoke_compromised

    world.add_secret("web")
    compromised = world.seed("web", age=timedelta(days=10))
    world.rotate()                                            # adopted; not due
    emulator.faults.fail_after_effect_next(1, 503, path=ISSUE)
    engine = world.engine("incident")
    report = revoke_compromised(engine, world.secret("web", engine.runtime))

    assert report.contained
    assert not emulator.is_active(compromised)
    name = world.record("web").current.name
    assert len(_named(emulator, name)) == 2 and len(_live_named(emulator, name)) == 1
    world.assert_i1("web")
