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


def test_the_sweep_costs_one_listing_per_run_and_none_when_nothing_was_issued(world, emulator):
    world.defaults["grace"] = "0s"
    for name in ("a", "b", "c"):
        world.add_secret(name)
    world.rotate()                                            # three bootstraps
    assert emulator.counters().get("GET /accounts/api-keys", 0) == 1
    world.rotate()                                            # nothing due: no issue, no sweep
    assert emulator.counters().get("GET /accounts/api-keys", 0) == 1
