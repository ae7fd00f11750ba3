"""A run that issues a key and finishes in one go still revokes the twin a retried issue minted.

Issuing is not idempotent: when the reply to ``POST /accounts/api-key`` is lost, the retry mints a
second key under the same (rotation-tagged) name. A two-run rotation sweeps it when it revokes the
old key; a one-run rotation (grace 0, a bootstrap) sweeps it at the end of the run, with one key
listing per issuer.
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
    swept = [e for e in world.events if e.action == "swept" and e.secret == "web"]
    assert len(swept) == 1 and swept[0].key_id != live[0]["id"]


def test_bootstrap_revokes_the_twin_of_the_first_key(world, emulator):
    world.add_secret("api")
    emulator.faults.fail_after_effect_next(1, 503, path=ISSUE)
    assert world.rotate().exit_code == 0
    name = world.record("api").current.name
    assert len(_named(emulator, name)) == 2
    assert len(_live_named(emulator, name)) == 1
    world.assert_i1("api")


def test_the_sweep_lists_once_per_run_and_only_after_a_doubtful_issue(world, emulator):
    """No listing when every issue got its first reply (a 429 or a 401 is a refusal, not an
    effect), one per run when some issue was retried after a 5xx or a lost reply."""
    lists = "GET /accounts/api-keys"
    world.defaults["grace"] = "0s"
    for name in ("a", "b", "c"):
        world.add_secret(name)
    emulator.faults.throttle_next(1, retry_after=0)
    world.rotate()                                            # three bootstraps, one 429 on the way
    assert emulator.counters().get(lists, 0) == 0
    assert all(world.record(n).current.key_id is None for n in "abc")   # ids stay unknown: not needed

    world.add_secret("d")
    world.add_secret("e")
    emulator.faults.fail_after_effect_next(1, 503, path=ISSUE)
    emulator.reset_counters()
    world.rotate()                                            # two more; one issue answered 503 after minting
    assert emulator.counters().get(lists, 0) == 1
    assert all(len(_live_named(emulator, world.record(n).current.name)) == 1 for n in "de")

    emulator.reset_counters()
    world.rotate()                                            # nothing due: no issue, no sweep
    assert emulator.counters().get(lists, 0) == 0


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
