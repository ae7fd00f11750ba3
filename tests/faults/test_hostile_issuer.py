"""Issue 14: rotator against an issuer whose answers are malformed, inconsistent or slow.

One test (or one parametrized family) per case of the issue, through the real engine over real
HTTP (the QuivaWorks emulator's misbehaviour knobs, file backends). Each checks, after the faulty
run and after a rerun without faults: every target holds a key the issuer accepts, nothing a
target serves was revoked, the exit code and outcome are truthful, no key left live that should
not be, and no key value in any event, outcome or record. Simulated time is the FakeClock; only
trickles spend real seconds.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import pytest

from rotator_providers.quiva.answers import add_months
from rotator.cli import main as cli_main
from rotator.models import Phase
from rotator.timeutil import parse_instant
from tests.faults.hostile_support import (
    AGENTS, AUTH, ISSUE, LIST, PAST_GRACE, after_effect, assert_no_leak, assert_serving,
    assert_settled, assert_truthful, deletes, key_named, live_rotation_keys, order,
    rerun_clean, revoke_events, served, spy, write_record_field,
)
from tests.world import to_toml

DUE = timedelta(days=80)          # a hand-made key with ~12 days left: rotated on the first run
FRESH = timedelta(days=10)        # a hand-made key with ~80 days left: adopted, not rotated


def _only(report, name):
    """``report`` narrowed to one secret's outcome (the run-level problems kept)."""
    return type(report)([o for o in report.outcomes if o.secret == name], report.problems)


def in_grace(world, emulator, clock, name="web"):
    """A secret rotated once (hand-made key adopted and replaced), now past its grace window:
    the next run revokes the old key. Returns the old value."""
    world.add_secret(name)
    old = world.seed(name, age=DUE)
    first = world.rotate()
    assert first.exit_code == 0 and world.record(name).phase is Phase.GRACE
    clock.advance(PAST_GRACE)
    return old


# --- 1. "verified" only on the documented success --------------------------------------------------

@pytest.mark.parametrize("verify_with, path", [("auth", AUTH), ("agents", AGENTS)])
@pytest.mark.parametrize("mode", ["error_200", "html"])
def test_1_a_2xx_that_is_not_the_documented_success_never_verifies(world, emulator, clock, verify_with, path, mode):
    world.issuer.update(verify_with=verify_with)
    world.add_secret("web")
    old = world.seed("web", age=DUE)
    engine = world.engine()
    seen = spy(engine)
    # every live check of the NEW key in this run answers 200 with a body that is no success
    after_effect(engine, "stage", lambda: emulator.faults.mangle_next(10, mode, path=path))
    report = engine.run()

    assert_truthful(report, ok=False)
    assert "verify" in report.outcomes[0].error and path.split()[1] in report.outcomes[0].error
    assert "verified" not in [a for a, r in order(world, "web") if r == "ok"]
    assert "app" not in seen.deployed or all(v == old for v in seen.deployed["app"]), \
        "a key that was never verified reached the secondary"
    assert seen.staged and seen.staged[0] not in (world.root / "app" / "web.json").read_text()
    assert set(served(world, "web").values()) == {old}
    assert_serving(world, emulator, "web")
    assert emulator.is_active(old)
    assert world.record("web").phase is not Phase.GRACE, "an unverified key was promoted"

    reports = rerun_clean(world, emulator, clock, "web")
    assert not emulator.is_active(old), "the rerun finished the rotation and revoked the old key"
    assert_settled(world, emulator, clock, "web")
    assert_no_leak(world, emulator, [report, *reports], seen.values())


# --- 2. verify before deploy ---------------------------------------------------------------------

def test_2_the_new_key_is_verified_live_before_any_deploy(world, emulator, clock):
    world.add_secret("web")
    world.seed("web", age=DUE)
    report = world.rotate()
    assert_truthful(report, ok=True)
    events = order(world, "web")
    verified = events.index(("verified", "ok"))
    deploy = events.index(("deploy", "intent"))
    staged = events.index(("staged", "ok"))
    assert staged < verified < deploy, events


def test_2_a_refused_new_key_never_reaches_the_secondary_file(world, emulator, clock):
    world.add_secret("web")
    old = world.seed("web", age=DUE)
    engine = world.engine()
    seen = spy(engine)
    # a refusal is tried 4 times (with waits) before it is believed
    after_effect(engine, "stage", lambda: emulator.faults.fail_next(4, status=401, path=AUTH))
    report = engine.run()

    assert_truthful(report, ok=False)
    assert "refused the new key" in report.outcomes[0].error
    new = seen.staged[0]
    assert new != old and not emulator.is_active(new), "the refused key is revoked"
    assert new not in seen.deployed.get("app", []) and new not in seen.previous.get("app", [])
    app_file = world.root / "app" / "web.json"
    assert new not in app_file.read_text(), "the refused key reached the secondary's file"
    events = order(world, "web")
    assert ("deploy", "intent") not in events
    assert events.index(("verify-failed", "error")) < events.index(("rollback", "error"))
    assert_serving(world, emulator, "web")

    reports = rerun_clean(world, emulator, clock, "web")
    assert_settled(world, emulator, clock, "web")
    assert_no_leak(world, emulator, [report, *reports])


# --- 3. dates are checked, never taken on trust ----------------------------------------------------

def test_3_a_listed_expiry_in_year_9999_plans_with_created_on_plus_three_months(world, emulator, clock):
    world.add_secret("web")
    world.seed("web", age=FRESH)
    hand = key_named(emulator, "web (by hand)")
    emulator.faults.mangle_next(20, "set", path=LIST, field="expires_on", value="9999-12-31T23:59:59.999Z")
    report = world.rotate()

    assert_truthful(report, ok=True)
    record = world.record("web")
    lifetime = add_months(parse_instant(hand["created_on"]), 3)
    assert record.current.expires_on == lifetime, "planned with created_on + the documented lifetime"
    assert "9999" in (record.adoption or "") and "3 months" in record.adoption, record.adoption
    assert report.outcomes[0].next_at == lifetime - timedelta(days=14)
    assert emulator.counters().get(ISSUE, 0) == 0, "not due yet"
    assert_serving(world, emulator, "web")

    clock.set(lifetime - timedelta(days=13))          # the real schedule, not year 9999
    reports = rerun_clean(world, emulator, clock, "web")
    assert emulator.counters().get(ISSUE, 0) == 1
    assert_settled(world, emulator, clock, "web")
    assert_no_leak(world, emulator, [report, *reports])


@pytest.mark.parametrize("expires_on", ["1970-01-01T00:00:00.000Z", "0001-01-01T00:00:00.000Z"])
def test_3_a_listed_expiry_in_the_past_is_due_never_dead(world, emulator, clock, expires_on):
    world.add_secret("web")
    old = world.seed("web", age=FRESH)               # really valid for ~80 more days
    emulator.faults.mangle_next(50, "set", path=LIST, field="expires_on", value=expires_on)
    report = world.rotate()

    assert_truthful(report, ok=True)
    record = world.record("web")
    assert record.phase is Phase.GRACE, "treated as due: rotated"
    assert record.grace_until == record.verified_at + timedelta(hours=48), "with the whole grace window"
    assert "treated as due" in (record.adoption or ""), record.adoption
    assert emulator.is_active(old), "a listed expiry in the past is no proof the key is dead"
    assert not revoke_events(world, old[-4:])
    assert_serving(world, emulator, "web")

    clock.advance(timedelta(hours=47))
    assert world.rotate().exit_code == 0 and emulator.is_active(old), "still inside the grace window"
    emulator.faults.clear()
    clock.advance(timedelta(hours=2))
    reports = rerun_clean(world, emulator, clock, "web", grace=False)
    assert not emulator.is_active(old) and world.record("web").phase is Phase.IDLE
    assert_settled(world, emulator, clock, "web")
    assert_no_leak(world, emulator, [report, *reports])


def test_3_an_issued_expiry_before_created_on_mints_one_key_not_a_dozen(world, emulator, clock):
    world.add_secret("web")
    world.seed("web", age=DUE)
    emulator.faults.mangle_next(20, "set", path=ISSUE, field="expires_on", value="2026-01-01T00:00:00.000Z")
    report = world.rotate()

    assert_truthful(report, ok=True)
    assert emulator.counters().get(ISSUE, 0) == 1, "one run mints one key"
    record = world.record("web")
    assert record.phase is Phase.GRACE
    assert record.current.expires_on == add_months(record.current.created_on, 3), record.current
    assert record.current.expires_on > clock.now() + timedelta(days=80)
    assert_serving(world, emulator, "web")

    reports = rerun_clean(world, emulator, clock, "web")
    assert emulator.counters().get(ISSUE, 0) == 1
    assert_settled(world, emulator, clock, "web")
    assert_no_leak(world, emulator, [report, *reports])


EXTREME_RECORD_DATES = [
    ("current", "expires_on", "0001-01-01T00:00:00Z"),
    ("current", "expires_on", "9999-12-31T23:59:59Z"),
    ("current", "created_on", "0001-01-01T00:00:00Z"),
    ("", "last_rotated_at", "9999-12-31T23:59:59Z"),
    ("current", "expires_on", "0001-01-01T00:00:00+01:00"),     # out of range once moved to UTC
    ("current", "expires_on", "9999-12-31T23:59:59-01:00"),
]


def _id(param) -> str:
    ref, field_name, value = getattr(param, "values", param)
    return f"{ref or 'record'}.{field_name}={value}"


@pytest.mark.parametrize("ref, field_name, value", EXTREME_RECORD_DATES, ids=[_id(p) for p in EXTREME_RECORD_DATES])
def test_3_status_and_plan_never_raise_on_a_record_with_extreme_dates(world, emulator, clock, tmp_path,
                                                                      capsys, ref, field_name, value):
    world.add_secret("web")
    world.seed("web", age=FRESH)
    assert world.rotate().exit_code == 0                    # adopted: a record exists
    write_record_field(world.root / "store" / "web.json", ref, field_name, value)
    config = tmp_path / "rotator.toml"
    config.write_text(to_toml(world.config_data()))

    for argv in (["status"], ["status", "-o", "json"], ["plan"], ["plan", "-o", "json"],
                 ["plan", "--at", "0001-01-01T00:00:00Z"], ["plan", "--at", "9999-12-31T23:59:59Z"]):
        code = cli_main(["--config", str(config), "--log-level", "error", *argv])
        out, err = capsys.readouterr()
        assert code in (0, 1), (argv, code, err)
        assert "web" in out and "Traceback" not in out + err, (argv, out, err)


# --- 4. ids are checked, never taken on trust -----------------------------------------------------

def _old_key_kept(world, emulator, report, old):
    """After a run whose listing could not be trusted to revoke the old key: the key is live, the
    outcome failed or held, nothing says it was revoked."""
    outcome = report.outcomes[0]
    assert emulator.is_active(old), "the old key was revoked on a listing that contradicts itself"
    assert not revoke_events(world, old[-4:]), "an event says revoked while the key is live"
    assert outcome.status == "failed" or "held" in outcome.detail, outcome
    assert not any(a.startswith(("revoked", "already-revoked")) for a in outcome.actions), outcome.actions
    if outcome.status == "failed":
        assert report.exit_code == 1


@pytest.mark.parametrize("mode, extra", [
    ("set", {"field": "id", "value": None}),
    ("drop", {"field": "id"}),
    ("set", {"field": "id", "value": ""}),
    ("duplicate_entry", {}),
], ids=["id-null", "id-missing", "id-empty", "duplicate-id"])
def test_4_a_listing_with_a_bad_or_duplicate_id_never_revokes(world, emulator, clock, mode, extra):
    old = in_grace(world, emulator, clock)
    index = [k["name"] for k in emulator.keys()].index("web (by hand)")      # the old key's entry
    before = deletes(emulator)
    emulator.faults.mangle_next(50, mode, path=LIST, index=index, **extra)
    report = world.rotate()

    assert deletes(emulator) == before, "a DELETE was sent on a listing that contradicts itself"
    _old_key_kept(world, emulator, report, old)
    assert_serving(world, emulator, "web")
    assert world.record("web").phase is Phase.GRACE or world.record("web").held

    reports = rerun_clean(world, emulator, clock, "web", grace=False)
    assert not emulator.is_active(old), "the rerun revokes the old key for real"
    assert world.record("web").phase is Phase.IDLE and not world.record("web").held
    assert_settled(world, emulator, clock, "web")
    assert_no_leak(world, emulator, [report, *reports])


@pytest.mark.parametrize("whose", ["admin", "other-secret"])
def test_4_an_old_key_entry_carrying_another_keys_id_never_revokes_that_key(world, emulator, clock, admin_key,
                                                                            whose):
    world.add_secret("batch")
    world.seed("batch", age=FRESH)
    old = in_grace(world, emulator, clock)            # batch adopted in the same run
    batch_key = next(iter(served(world, "batch").values()))
    names = [k["name"] for k in emulator.keys()]
    foreign = key_named(emulator, "admin" if whose == "admin" else "batch (by hand)")["id"]
    emulator.faults.mangle_next(50, "foreign_id", path=LIST, index=names.index("web (by hand)"), value=foreign)
    report = world.rotate()

    assert emulator.is_active(admin_key), "the admin key was revoked"
    assert emulator.is_active(batch_key), "another secret's served key was revoked"
    assert not [k for k in emulator.keys() if k["id"] == foreign and k["deleted_on"]]
    _old_key_kept(world, emulator, _only(report, "web"), old)
    assert_serving(world, emulator, "web")
    assert_serving(world, emulator, "batch")

    reports = rerun_clean(world, emulator, clock, "web", grace=False)
    assert not emulator.is_active(old) and emulator.is_active(admin_key) and emulator.is_active(batch_key)
    assert_settled(world, emulator, clock, "web")
    assert_no_leak(world, emulator, [report, *reports])


def _twin_with_foreign_id(world, emulator, whose):
    """batch adopted; web due. web's run: the issue's reply is lost after the effect (the retry
    mints a twin) and every listing from then on gives the twin's entry the admin key's id (or
    batch's served key's id). Returns (report, old key of web, batch's key, foreign id)."""
    world.add_secret("batch")
    world.seed("batch", age=FRESH)
    world.add_secret("web")
    old = world.seed("web", age=DUE)
    assert world.rotate(["batch"]).exit_code == 0
    batch_key = next(iter(served(world, "batch").values()))
    foreign = key_named(emulator, "admin" if whose == "admin" else "batch (by hand)")["id"]
    engine = world.engine()
    twin_index = len(emulator.keys())                 # the twin is the next key created

    def arm():
        emulator.faults.fail_after_effect_next(1, status=503, path=ISSUE)      # the retry mints a twin
        emulator.faults.mangle_next(50, "foreign_id", path=LIST, index=twin_index, value=foreign)

    after_effect(engine, "write_record", arm)         # web's adoption: before its claim and issue
    report = engine.run(["web"])
    assert emulator.counters().get(ISSUE, 0) == 2, "the scenario minted a twin"
    return report, old, batch_key, foreign


@pytest.mark.parametrize("whose", ["admin", "other-secret"])
def test_4_a_twin_entry_carrying_another_keys_id_never_revokes_that_key(world, emulator, clock, admin_key, whose):
    """A lost issue reply mints a twin; the listings that should show it give the twin's entry the
    admin key's id (or another secret's served key's id): the twin sweep must not revoke that id."""
    report, old, batch_key, foreign = _twin_with_foreign_id(world, emulator, whose)
    assert emulator.is_active(admin_key), "the admin key was revoked"
    assert emulator.is_active(batch_key), "another secret's served key was revoked"
    assert_serving(world, emulator, "web")
    assert_serving(world, emulator, "batch")
    assert emulator.is_active(old)

    clock.advance(timedelta(minutes=5))               # no issue can still be in flight: the twin is a stray
    reports = rerun_clean(world, emulator, clock, "web")
    assert emulator.is_active(admin_key) and emulator.is_active(batch_key)
    assert_settled(world, emulator, clock, "web")
    assert_no_leak(world, emulator, [report, *reports])


def test_4_a_twin_hidden_by_a_contradictory_listing_is_reported_not_silently_kept(world, emulator, clock, admin_key):
    report, old, batch_key, foreign = _twin_with_foreign_id(world, emulator, "admin")
    live = live_rotation_keys(emulator, clock, "web")
    assert len(live) == 2, "the twin is live (it cannot be revoked on a listing that contradicts itself)"
    assert report.exit_code == 1 and (report.problems or report.outcomes[0].status == "failed"), \
        "a twin this run minted is left live, unswept, and nothing says so"


# --- 5. a revoke is confirmed by a fresh listing, never assumed ------------------------------------

@pytest.mark.parametrize("lie", ["ok", "not_found"])
def test_5_a_delete_that_lies_is_never_reported_as_revoked(world, emulator, clock, lie):
    world.add_secret("web")
    old = world.seed("web", age=DUE)
    assert world.rotate().exit_code == 0
    clock.advance(PAST_GRACE)
    before = deletes(emulator)
    emulator.faults.lying_deletes(10, lie)
    report = world.rotate()

    assert deletes(emulator) > before, "the revoke was sent"
    assert emulator.is_active(old), "the lie deleted nothing"
    assert_truthful(report, ok=False)
    assert "not confirmed" in report.outcomes[0].error, report.outcomes[0].error
    assert not revoke_events(world, old[-4:]), "an event says revoked while the key is live"
    assert [e for e in world.events if e.action == "revoke-failed" and e.last4 == old[-4:]]
    assert not any(a.startswith(("revoked", "already-revoked", "finished")) for a in report.outcomes[0].actions)
    assert world.record("web").phase is Phase.GRACE, "the rotation is not finished on a revoke not confirmed"
    assert_serving(world, emulator, "web")

    reports = rerun_clean(world, emulator, clock, "web", grace=False)
    assert not emulator.is_active(old), "the rerun revokes it for real"
    assert revoke_events(world, old[-4:])
    assert world.record("web").phase is Phase.IDLE
    assert_settled(world, emulator, clock, "web")
    assert_no_leak(world, emulator, [report, *reports])


@pytest.mark.parametrize("lie", ["ok", "not_found"])
def test_5_a_lying_delete_of_a_refused_new_key_is_not_a_finished_rollback(world, emulator, clock, lie):
    world.add_secret("web")
    old = world.seed("web", age=DUE)
    engine = world.engine()
    seen = spy(engine)

    def refuse_and_lie():
        emulator.faults.fail_next(4, status=401, path=AUTH)       # the new key is refused ...
        emulator.faults.lying_deletes(10, lie)                    # ... and its revoke is a lie

    after_effect(engine, "stage", refuse_and_lie)
    report = engine.run()
    new = seen.staged[0]

    assert_truthful(report, ok=False)
    assert emulator.is_active(new), "the lie deleted nothing"
    assert not revoke_events(world, new[-4:]), "an event says the refused key was revoked while it is live"
    assert world.record("web").phase is Phase.ROLLING_BACK, "the rollback is not finished"
    assert new not in seen.deployed.get("app", [])
    assert_serving(world, emulator, "web")
    assert set(served(world, "web").values()) == {old}

    emulator.faults.clear()
    finish = world.rotate()                           # finishes the rollback: the refused key revoked
    assert not emulator.is_active(new) and revoke_events(world, new[-4:])
    assert_truthful(finish, ok=False)                 # a rolled-back rotation is reported as such
    assert world.record("web").phase is Phase.IDLE
    assert_serving(world, emulator, "web")
    reports = rerun_clean(world, emulator, clock, "web")
    assert_settled(world, emulator, clock, "web")
    assert_no_leak(world, emulator, [report, finish, *reports])


# --- 6. a minted key never leaks: the value returned must be the key created ------------------------

@pytest.mark.parametrize("swap", ["random", "admin-key"])
def test_6_an_issue_reply_with_another_value_revokes_the_created_key_and_deploys_nothing(
        world, emulator, clock, admin_key, swap):
    world.add_secret("web")
    old = world.seed("web", age=DUE)
    engine = world.engine()
    seen = spy(engine)
    emulator.faults.mangle_next(1, "swap_value", path=ISSUE, value=admin_key if swap == "admin-key" else None)
    report = engine.run()

    assert emulator.counters().get(ISSUE, 0) == 1
    (created,) = [k for k in emulator.keys() if k["name"].startswith("web [r-")]
    assert created["deleted_on"] is not None, "the key the issuer really created was found by name and revoked"
    assert emulator.is_active(admin_key), "the admin key was revoked"
    assert emulator.is_active(old)
    assert_truthful(report, ok=False)
    returned = seen.staged[0]
    assert returned[-4:] != created["last_4_characters"]
    assert returned not in seen.deployed.get("app", []) and returned not in seen.previous.get("app", []), \
        "the value the reply carried was deployed"
    assert set(served(world, "web").values()) == {old}
    assert not live_rotation_keys(emulator, clock, "web")
    assert world.record("web").pending is None
    assert_serving(world, emulator, "web")

    emulator.faults.clear()
    reports = rerun_clean(world, emulator, clock, "web")
    assert emulator.is_active(admin_key)
    assert_settled(world, emulator, clock, "web")
    assert_no_leak(world, emulator, [report, *reports], {returned})


# --- 7. every wait has a deadline ----------------------------------------------------------------

def test_7_a_trickled_listing_is_bounded_by_timeout_times_retries(world, emulator, clock):
    world.issuer.update(timeout="1s", retries=2)
    world.add_secret("web")
    world.seed("web", age=DUE)
    emulator.faults.trickle_next(2, bytes_per_second=20, path=LIST)     # the listing body takes ~30 s each
    started = time.monotonic()
    report = world.rotate()
    took = time.monotonic() - started

    assert 1.5 <= took < 6, f"a 1 s x 2 tries configuration waited {took:.1f} s for a trickled body"
    assert_truthful(report, ok=False)
    assert "list" in report.outcomes[0].error, report.outcomes[0].error
    assert emulator.counters().get(ISSUE, 0) == 0 and deletes(emulator) == 0
    assert_serving(world, emulator, "web")

    reports = rerun_clean(world, emulator, clock, "web")
    assert_settled(world, emulator, clock, "web")
    assert_no_leak(world, emulator, [report, *reports])


def test_7_a_trickled_issue_reply_is_bounded_and_its_keys_are_swept(world, emulator, clock):
    """The issue is performed but its reply trickles: each try misses its deadline (and may have
    minted a key). The run ends within timeout x retries; the next run sweeps what was minted."""
    world.issuer.update(timeout="1s", retries=2)
    world.add_secret("web")
    old = world.seed("web", age=DUE)
    emulator.faults.trickle_next(2, bytes_per_second=20, path=ISSUE)
    started = time.monotonic()
    report = world.rotate()
    took = time.monotonic() - started

    assert 1.5 <= took < 6, f"a 1 s x 2 tries configuration waited {took:.1f} s for a trickled body"
    assert_truthful(report, ok=False)
    assert "issue" in report.outcomes[0].error, report.outcomes[0].error
    assert emulator.counters().get(ISSUE, 0) == 2
    assert set(served(world, "web").values()) == {old}
    assert_serving(world, emulator, "web")

    clock.advance(timedelta(minutes=5))               # no issue can still be in flight
    reports = rerun_clean(world, emulator, clock, "web")
    assert_settled(world, emulator, clock, "web")
    assert_no_leak(world, emulator, [report, *reports])


@pytest.mark.parametrize("mode, message", [("new", "did not end"), ("repeat", "repeats")])
def test_7_a_listing_that_never_ends_is_an_error_and_decides_no_revoke(world, emulator, clock, mode, message):
    old = in_grace(world, emulator, clock)
    before = deletes(emulator)
    emulator.faults.endless_pages(mode)
    started = time.monotonic()
    report = world.rotate()
    took = time.monotonic() - started

    assert took < 10, f"an endless listing took {took:.1f} s"
    assert_truthful(report, ok=False)
    assert message in report.outcomes[0].error, report.outcomes[0].error
    assert deletes(emulator) == before, "a revoke was decided on a listing that never ended"
    assert emulator.is_active(old) and not revoke_events(world, old[-4:])
    assert world.record("web").phase is Phase.GRACE
    assert_serving(world, emulator, "web")

    emulator.faults.endless_pages(None)
    reports = rerun_clean(world, emulator, clock, "web", grace=False)
    assert not emulator.is_active(old)
    assert_settled(world, emulator, clock, "web")
    assert_no_leak(world, emulator, [report, *reports])


# --- 8. values that cannot be used are refused at issue --------------------------------------------

UNUSABLE = {
    "non-ascii": "ms-" + "k\u00e9y" * 8 + "\u00fc9f3",
    "space": "ms-0123456789abcdef 0123456789abcd",
    "2000-chars": "ms-" + "7" * 1993 + "zq8x",
    "control": "ms-0123456789abcdef\x070123456789abcd",
    "surrounding-space": " ms-0123456789abcdef0123456789abcd ",
}


@pytest.mark.parametrize("verify_with", ["auth", "agents"])
@pytest.mark.parametrize("kind", list(UNUSABLE))
def test_8_an_unusable_issued_value_is_refused_and_the_minted_key_revoked(world, emulator, clock, caplog,
                                                                         kind, verify_with):
    world.issuer.update(verify_with=verify_with)
    world.add_secret("web")
    old = world.seed("web", age=DUE)
    engine = world.engine()
    seen = spy(engine)
    emulator.faults.mangle_next(1, "set", path=ISSUE, field="key", value=UNUSABLE[kind])
    with caplog.at_level("DEBUG"):
        report = engine.run()

    assert_truthful(report, ok=False)
    error = report.outcomes[0].error
    assert "Traceback" not in error and len(error) < 600, error
    assert "issue" in error and "key value" in error and "must not be deployed" in error, error
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert not seen.staged and not seen.deployed, "an unusable value reached a store"
    (minted,) = [k for k in emulator.keys() if k["name"].startswith("web [r-")]
    assert minted["deleted_on"] is not None, "the key minted under the rotation's name was revoked"
    assert world.record("web").phase is not Phase.STAGED, "stuck in STAGED"
    assert set(served(world, "web").values()) == {old}
    assert_serving(world, emulator, "web")

    reports = rerun_clean(world, emulator, clock, "web")
    assert_settled(world, emulator, clock, "web")
    assert_no_leak(world, emulator, [report, *reports], {UNUSABLE[kind].strip()})


# --- 9. messages name the real cause ---------------------------------------------------------------
# No knob leaves an entry out of a listing. The closest: the entry's id dropped (the entry is
# refused, the listing carries a problem) or its last 4 characters changed (it no longer
# matches): to a reader both are "the key is missing from this listing".

@pytest.mark.parametrize("mode, extra", [
    ("drop", {"field": "id"}),
    ("set", {"field": "last_4_characters", "value": "zzzz"}),
], ids=["entry-refused", "entry-unrecognisable"])
def test_9_a_key_missing_from_one_listing_at_adoption_is_checked_again(world, emulator, clock, mode, extra):
    world.add_secret("web")
    world.seed("web", age=FRESH)
    index = [k["name"] for k in emulator.keys()].index("web (by hand)")
    emulator.faults.mangle_next(1, mode, path=LIST, index=index, **extra)
    report = world.rotate()

    assert_truthful(report, ok=True)
    assert "another user" not in (report.outcomes[0].error or "") + report.outcomes[0].detail
    record = world.record("web")
    assert record.current.key_id == key_named(emulator, "web (by hand)")["id"], "adopted from the second listing"
    assert emulator.counters().get(LIST, 0) >= 2
    assert_serving(world, emulator, "web")
    reports = rerun_clean(world, emulator, clock, "web", grace=False)
    assert_no_leak(world, emulator, [report, *reports])


def test_9_a_new_key_missing_from_one_listing_is_checked_again_before_any_conclusion(world, emulator, clock):
    world.add_secret("web")
    old = world.seed("web", age=DUE)
    engine = world.engine()
    new_index = len(emulator.keys())                  # the key the rotation issues
    after_effect(engine, "stage", lambda: emulator.faults.mangle_next(
        1, "set", path=LIST, index=new_index, field="last_4_characters", value="zzzz"))
    report = engine.run()

    assert_truthful(report, ok=True)
    assert world.record("web").phase is Phase.GRACE
    assert emulator.counters().get(ISSUE, 0) == 1 and emulator.is_active(old)
    assert not [e for e in world.events if e.action in ("revoked", "already-revoked")]
    assert_serving(world, emulator, "web")
    reports = rerun_clean(world, emulator, clock, "web", grace=False)
    assert_settled(world, emulator, clock, "web")
    assert_no_leak(world, emulator, [report, *reports])


def test_9_a_single_401_on_the_admin_sign_in_is_tried_again(world, emulator, clock):
    world.add_secret("web")
    world.seed("web", age=FRESH)
    assert world.rotate().exit_code == 0                        # adopted
    emulator.faults.fail_next(1, status=401, path=AUTH)         # the next run's sign-in is refused once
    report = world.rotate(force=True)

    assert emulator.faults.snapshot()["fail_next"] == [], "the 401 was served"
    assert emulator.counters().get("status:401", 0) == 1
    assert_truthful(report, ok=True)
    assert world.record("web").phase is Phase.GRACE
    assert_serving(world, emulator, "web")
    reports = rerun_clean(world, emulator, clock, "web", grace=False)
    assert_settled(world, emulator, clock, "web")
    assert_no_leak(world, emulator, [report, *reports])


def test_9_a_single_401_on_the_new_keys_verify_is_tried_again_not_rolled_back(world, emulator, clock):
    world.add_secret("web")
    world.seed("web", age=DUE)
    engine = world.engine()
    after_effect(engine, "stage", lambda: emulator.faults.fail_next(1, status=401, path=AUTH))
    report = engine.run()

    assert emulator.counters().get("status:401", 0) == 1, "the new key's live check was refused once"
    assert_truthful(report, ok=True)
    actions = [a for a, r in order(world, "web")]
    assert "verified" in actions and "rollback" not in actions and "verify-failed" not in actions
    assert world.record("web").phase is Phase.GRACE
    assert_serving(world, emulator, "web")
    reports = rerun_clean(world, emulator, clock, "web", grace=False)
    assert_settled(world, emulator, clock, "web")
    assert_no_leak(world, emulator, [report, *reports])


def test_9_the_run_that_finishes_a_rollback_names_the_real_cause(world, emulator, clock):
    world.add_secret("web")
    world.seed("web", age=DUE)
    engine = world.engine()

    def refuse_and_lie():
        emulator.faults.fail_next(4, status=401, path=AUTH)
        emulator.faults.lying_deletes(1, "ok")

    after_effect(engine, "stage", refuse_and_lie)
    assert engine.run().exit_code == 1                # refused; the refused key's revoke not confirmed
    finish = world.rotate()                           # revokes it (confirmed) and finishes the rollback
    assert finish.exit_code == 1
    assert [e for e in world.events if e.action == "revoked" and "rollback" in e.detail]
    error = finish.outcomes[0].error
    assert "not confirmed" not in error and "refused" in error, error
    assert "not confirmed" not in (world.record("web").last_error or "")


# --- 10. one bad secret never stops the others -----------------------------------------------------

BAD_PRIMARIES = {
    "corrupt-json": None,
    "unparseable-date": ("current", "expires_on", "next tuesday"),
    "numeric-date": ("current", "expires_on", 1798761600),
    "year-1": ("current", "expires_on", "0001-01-01T00:00:00Z"),
    "year-1-offset": ("current", "expires_on", "0001-01-01T00:00:00+01:00"),
    "year-9999-offset": ("current", "expires_on", "9999-12-31T23:59:59-01:00"),
    "bad-phase": ("", "phase", "exploded"),
}
def _cli(capsys, config, *argv):
    code = cli_main(["--config", str(config), "--log-level", "error", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("bad", list(BAD_PRIMARIES))
def test_10_one_bad_primary_never_stops_the_others(world, emulator, clock, tmp_path, capsys, bad):
    clock.set(datetime.now(timezone.utc))            # the CLI runs on the real clock
    world.add_secret("batch")
    world.add_secret("web")
    world.seed("batch", age=FRESH)
    old = world.seed("web", age=DUE)
    assert world.rotate(["batch"]).exit_code == 0     # batch adopted: a record to spoil
    path = world.root / "store" / "batch.json"
    if BAD_PRIMARIES[bad] is None:
        path.write_text("{not json")
    else:
        write_record_field(path, *BAD_PRIMARIES[bad])
    config = tmp_path / "rotator.toml"
    config.write_text(to_toml(world.config_data()))

    for argv in (["status", "-o", "json"], ["plan", "-o", "json"]):
        code, out, err = _cli(capsys, config, *argv)
        rows = {r["secret"]: r for r in json.loads(out)["secrets" if argv[0] == "status" else "plan"]}
        assert set(rows) == {"batch", "web"}, (argv, out, err)
        assert rows["web"]["health"] not in ("unreadable", "blocked") and not rows["web"]["error"], rows["web"]
        assert rows["batch"]["health"] != "healthy" or BAD_PRIMARIES[bad][0] == "current", rows["batch"]

    code, out, err = _cli(capsys, config, "rotate", "-o", "json")
    rows = {r["secret"]: r for r in json.loads(out)["outcomes"]}
    assert rows["web"]["result"] == "changed" and world.record("web").phase is Phase.GRACE, rows["web"]
    assert emulator.is_active(old)
    assert_serving(world, emulator, "web")
    leaked = [v[-4:] for v in emulator.issued_values() if v in out + err]
    assert not leaked, f"key values in the CLI output (last 4 shown): {leaked}"
    code_status, out_status, _ = _cli(capsys, config, "status", "-o", "json")
    status = {r["secret"]: r for r in json.loads(out_status)["secrets"]}
    assert status["web"]["health"] == "grace", status["web"]
    if rows["batch"]["result"] == "failed":     # a clear per-secret error: which secret, which file
        assert code == 1 and "batch.json" in rows["batch"]["error"], rows["batch"]
    assert "Traceback" not in out + err, err[-2000:]
