"""Revoke safety (issue 13): every path that used to revoke a key something still served, or
report a failure as a success, replayed against the real emulator and real file stores.

Each test ends with I1 (every target holds a key the issuer accepts) and with the keys left live
at the issuer: exactly the ones the targets serve (plus a previous key only inside its grace).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from datetime import timedelta

import pytest

from rotator.models import KeyRef, Phase, Secret
from rotator.runtime import Runtime
from rotator.timeutil import format_instant
from tests.world import ADMIN_EMAIL, to_toml, wait_for

ISSUE = "POST /accounts/api-key"
AUTH = "POST /accounts/auth-with-api-key"
AGENTS = "GET /v1/agents"


def live_named(emulator, secret: str) -> list[dict]:
    return [k for k in emulator.keys() if k["name"].startswith(f"{secret} [") and not k["deleted_on"]]


def served(world, name: str) -> set[str]:
    return {snap.current.reveal() for snap in world.snapshots(name).values()}


# --- 1. a key shared by two managed secrets ----------------------------------------------------

def test_a_shared_key_is_revoked_only_by_the_last_secret_to_move_away(world, emulator, clock):
    """A and B hold the same hand-made key. A is due and rotates; after A's grace window its old
    key is still B's current key, so the revoke is held (A finishes otherwise, and says why).
    When B rotates and its grace ends, B revokes the key; A's next run drops the held entry."""
    world.add_secret("a")
    world.add_secret("b", lead_time="1d", grace="12h")          # b is not due yet (grace < lead_time)
    shared = world.seed("a", age=timedelta(days=80))
    world.seed_value("b", shared)
    first = world.rotate()
    assert first.exit_code == 0, [(o.secret, o.error) for o in first.outcomes]
    assert world.record("a").phase is Phase.GRACE and world.record("b").phase is Phase.IDLE

    clock.advance(timedelta(hours=49))
    second = world.rotate()
    assert second.exit_code == 0, [(o.secret, o.error) for o in second.outcomes]
    a = world.record("a")
    assert a.phase is Phase.IDLE and a.previous is None, "a's rotation finished otherwise"
    assert len(a.held) == 1 and a.held[0].key.last4 == shared[-4:]
    assert "still served by secret b" in a.held[0].reason
    assert emulator.is_active(shared), "b still serves it: not revoked"
    held = [e for e in world.events if e.action == "revoke-held" and e.secret == "a"]
    assert held and held[-1].result == "held" and "secret b" in held[-1].detail
    outcome_a = next(o for o in second.outcomes if o.secret == "a")
    assert "held" in outcome_a.detail
    world.assert_i1("a")
    world.assert_i1("b")

    assert world.rotate(["b"], force=True).exit_code == 0       # b moves away from the shared key
    clock.advance(timedelta(hours=49))
    third = world.rotate()
    assert third.exit_code == 0, [(o.secret, o.error) for o in third.outcomes]
    assert not emulator.is_active(shared), "the last secret to move away revoked it"
    assert world.record("b").phase is Phase.IDLE
    assert world.rotate().exit_code == 0
    assert world.record("a").held == (), "a's held revoke is settled: the key is gone"
    for name in ("a", "b"):
        world.assert_i1(name)
        assert {k["value_fingerprint"] for k in live_named(emulator, name)} == \
            {fp(v) for v in served(world, name)}


def test_two_shared_keys_rotating_in_the_same_run_end_with_one_revoke(world, emulator, clock):
    """Both secrets due at once: each holds the other's old key back until the last one moves."""
    world.add_secret("a")
    world.add_secret("b")
    shared = world.seed("a", age=timedelta(days=80))
    world.seed_value("b", shared)
    assert world.rotate().exit_code == 0
    clock.advance(timedelta(hours=49))
    assert world.rotate().exit_code == 0
    assert not emulator.is_active(shared)
    revoked = [e for e in world.events if e.action in ("revoked", "already-revoked") and e.last4 == shared[-4:]]
    assert [e.action for e in revoked].count("revoked") == 1, "revoked once, by whichever moved last"
    assert emulator.delete_count(next(k["id"] for k in emulator.keys() if k["last_4_characters"] == shared[-4:])) == 1
    clock.advance(timedelta(minutes=1))
    assert world.rotate().exit_code == 0
    assert world.record("a").held == () and world.record("b").held == ()


def fp(value: str) -> str:
    import hashlib
    return hashlib.sha256(value.encode()).hexdigest()


# --- 3. lease takeover racing the live owner -----------------------------------------------------

def test_a_takeover_never_sweeps_the_key_a_slow_live_owner_is_issuing(world, emulator, clock):
    """The owner's issue request is slow; its lease runs out meanwhile and another runner takes
    the rotation over (by compare-and-swap first) and completes it. The slow owner's late key then
    loses its stage write and is revoked by the owner itself; the new owner's key is never touched."""
    world.defaults["lease"] = "30s"
    world.add_secret("web")
    old = world.seed("web", age=timedelta(days=80))
    emulator.faults.latency_next(1, seconds=1.0, path=ISSUE)
    slow = world.engine("slow-owner")
    result: dict = {}
    owner = threading.Thread(target=lambda: result.update(report=slow.run()))
    owner.start()
    wait_for(lambda: emulator.counters().get(ISSUE, 0) >= 1, what="the slow issue in flight")
    clock.advance(timedelta(minutes=2))                          # its lease runs out
    taker = world.rotate(identity="taker")
    owner.join(20)
    assert not owner.is_alive()
    assert taker.exit_code == 0, [(o.secret, o.error) for o in taker.outcomes]
    actions = [a.split()[0] for a in taker.outcomes[0].actions]
    assert actions[:1] == ["resumed"], actions                   # the claim taken over before anything else
    record = world.record("web")
    assert record.phase is Phase.GRACE and record.owner is None
    world.assert_i1("web")
    new = next(iter(served(world, "web")))
    assert emulator.is_active(new) and emulator.is_active(old)
    slow_outcome = result["report"].outcomes[0]
    assert slow_outcome.status in ("waiting", "ok", "changed", "failed")
    issued = [k for k in emulator.keys() if k["name"].startswith("web [")]
    live = [k for k in issued if not k["deleted_on"]]
    assert len(issued) == 2 and [k["value_fingerprint"] for k in live] == [fp(new)], "the late key was revoked"

    clock.advance(timedelta(hours=49))
    assert world.rotate().exit_code == 0
    world.assert_i1("web")
    assert not emulator.is_active(old)


def test_an_owner_keeps_its_lease_through_a_long_429_wait(world, emulator, clock):
    """A 429 asks for a wait longer than the lease: the owner renews its lease while it waits, so
    no other runner can take the rotation over meanwhile."""
    world.defaults["lease"] = "30s"
    world.add_secret("web")
    world.seed("web", age=timedelta(days=80))
    seen: list = []
    runtime = Runtime(world.runtime().settings, clock=clock, identity="owner",
                      sleep=lambda s: (seen.append((clock.now(), world.record("web"))), clock.sleep(s)))
    from rotator.engine import Engine
    from rotator.testing import EffectCounter

    armed: list = []

    def after_claim(number, provider, method):
        if method == "write_record" and not armed and world.record("web").phase is Phase.CLAIMED:
            armed.append(True)
            emulator.faults.throttle_next(1, retry_after=300)    # the issue waits 10 leases long

    EffectCounter(on_effect=after_claim).instrument(runtime)
    report = Engine(runtime, on_event=world.events.append).run()
    assert report.exit_code == 0, [(o.secret, o.error) for o in report.outcomes]
    waits = [(at, r.lease_until) for at, r in seen if r is not None and r.phase is Phase.CLAIMED]
    assert len(waits) >= 10, "slept a third of the lease at a time"
    assert all(until > at for at, until in waits), "the lease never ran out during the wait"
    assert waits[-1][1] - waits[0][1] >= timedelta(seconds=250), "renewed across the whole wait"
    world.assert_i1("web")
    runtime.close()


def test_an_owner_whose_renewal_loses_stops_before_any_further_effect(world, emulator, clock):
    """While the owner waits out a 429, its lease is taken over (the clock jumped past it). The
    owner's renewal then loses its compare-and-swap: it stops, issues nothing, and the new owner's
    rotation is the only one."""
    from rotator.engine import Engine

    from rotator.testing import EffectCounter

    world.defaults["lease"] = "3s"
    world.add_secret("web")
    world.seed("web", age=timedelta(days=80))
    taken: list = []
    armed: list = []

    def after_claim(number, provider, method):
        if method == "write_record" and not armed and world.record("web").phase is Phase.CLAIMED:
            armed.append(True)
            emulator.faults.throttle_next(1, retry_after=5)      # the issue must wait

    def sleep(seconds: float) -> None:
        if armed and not taken:
            taken.append(True)
            clock.advance(timedelta(seconds=10))                 # the owner was stalled past its lease
            emulator.faults.clear()
            taken.append(world.rotate(identity="taker"))
        clock.sleep(seconds)

    runtime = Runtime(world.runtime().settings, clock=clock, identity="owner", sleep=sleep)
    EffectCounter(on_effect=after_claim).instrument(runtime)
    report = Engine(runtime, on_event=world.events.append).run()
    runtime.close()
    outcome = report.outcomes[0]
    assert not [a for a in outcome.actions if a.startswith(("issued", "staged", "deployed", "promoted"))], outcome
    assert outcome.phase == "grace" and outcome.error is None      # it found the taker's finished work
    assert taken[1].exit_code == 0
    minted = [k for k in emulator.keys() if k["name"].startswith("web [")]
    assert len(minted) == 1 and len(live_named(emulator, "web")) == 1, "only the new owner minted a key"
    world.assert_i1("web")


# --- 4. one 401 is not "the key is dead" ---------------------------------------------------------

def test_a_single_401_on_adoption_does_not_kill_a_live_key(world, emulator, clock):
    world.issuer.update(verify_with="agents")                    # the live check goes to /v1/agents
    world.add_secret("web")
    key = world.seed("web", age=timedelta(days=30))             # 61 days left
    emulator.faults.fail_next(1, status=401, path=AGENTS)
    report = world.rotate()
    assert report.exit_code == 0, report.outcomes
    record = world.record("web")
    assert record.phase is Phase.IDLE and record.adoption == "matched"
    assert emulator.is_active(key) and served(world, "web") == {key}
    assert emulator.counters().get(ISSUE, 0) == 0, "nothing rotated on one refusal"


def test_a_key_the_issuer_refuses_but_lists_live_fails_the_run_and_is_never_revoked(world, emulator):
    world.issuer.update(verify_with="agents")
    world.add_secret("web")
    key = world.seed("web", age=timedelta(days=30))
    emulator.faults.fail_next(10, status=401, path=AGENTS)
    report = world.rotate()
    assert report.exit_code == 1
    error = report.outcomes[0].error
    assert "shows it live" in error and "not treating it as dead" in error
    assert emulator.is_active(key) and emulator.counters().get(ISSUE, 0) == 0
    assert not [e for e in world.events if e.action == "revoke"]
    emulator.faults.clear()
    assert world.rotate().exit_code == 0                          # the next run adopts it normally
    assert world.record("web").adoption == "matched"


# --- 5. a failure reported as a failure -----------------------------------------------------------

def test_a_run_that_fails_after_issuing_is_a_failure_even_when_its_cleanup_works(world, emulator, clock):
    """The key is issued, then the primary cannot be written: the run's first error is the
    outcome's error, the run exits 1, and the unstaged key is not left live."""
    from rotator.testing import EffectCounter

    world.add_secret("web")
    world.seed("web", age=timedelta(days=80))
    engine = world.engine("A")
    store = world.root / "store"

    def break_primary(number, provider, method):
        if method == "issue":                                    # the stage comes next
            (store / "web.json").rename(store / "web.json.bak")
            (store / "web.json").mkdir()

    EffectCounter(on_effect=break_primary).instrument(engine.runtime)
    report = engine.run()
    outcome = report.outcomes[0]
    assert report.exit_code == 1 and outcome.status == "failed"
    assert "web.json" in outcome.error and "revoke" not in outcome.error
    assert [e for e in world.events if e.action == "failed" and e.result == "error"]
    (store / "web.json").rmdir()
    (store / "web.json.bak").rename(store / "web.json")
    clock.advance(timedelta(minutes=16))                          # past any lease; and past the in-flight bound
    assert world.rotate().exit_code == 0
    world.assert_i1("web")
    assert len(live_named(emulator, "web")) == 1, "the unstaged key was swept, the new one is served"


# --- no stale claim after a failed run -----------------------------------------------------------

def test_a_failed_run_releases_its_claim_so_the_next_run_resumes_at_once(world, emulator, clock):
    world.issuer.update(retries=2)
    world.add_secret("web")
    world.seed("web", age=timedelta(days=80))
    emulator.faults.fail_next(2, status=503, path=ISSUE)
    report = world.rotate()
    assert report.exit_code == 1 and "503" in report.outcomes[0].error
    record = world.record("web")
    assert record.phase is Phase.CLAIMED and record.owner is None and record.last_error
    assert record.error_since is not None and record.error_since <= clock.now()
    again = world.rotate()                                        # no clock advance: no lease to wait out
    assert again.exit_code == 0 and again.outcomes[0].status == "changed", again.outcomes
    record = world.record("web")
    assert record.phase is Phase.GRACE and record.last_error is None and record.error_since is None
    world.assert_i1("web")


# --- the audit trail survives SIGKILL ------------------------------------------------------------

@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 6])
def test_every_effect_has_its_intent_line_even_under_sigkill(world, emulator, clock, admin_key, tmp_path, k):
    """Killed right after effect k: the trail holds exactly k intent lines, the k-th naming that
    effect, each written before its effect."""
    world.add_secret("web")
    world.seed("web", age=timedelta(days=80))
    config_file = tmp_path / "rotator.toml"
    config_file.write_text(to_toml(world.config_data()))
    trail = tmp_path / "audit.jsonl"
    child = subprocess.run(
        [sys.executable, "-m", "tests.faults.crash_child", str(config_file), str(k), format_instant(clock.now()),
         str(trail)],
        env={**os.environ, "QUIVA_API_KEY": admin_key}, capture_output=True, text=True, timeout=60, cwd=os.getcwd(),
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    lines = [json.loads(line) for line in trail.read_text().splitlines()]
    intents = [r["action"] for r in lines if r["result"] == "intent"]
    effects = ["adopt", "claim", "issue", "stage", "deploy", "promote"]
    assert intents == effects[:k], lines
    values = emulator.issued_values()
    assert not [v for v in values if v in trail.read_text()]


def test_an_already_revoked_key_is_recorded_as_such_not_revoked_twice(world, emulator, clock):
    """Two runners both come to revoke the same old key: one revokes it, the other finds it gone
    and records "already-revoked" — the trail has one "revoked"."""
    world.defaults["grace"] = "1h"
    world.add_secret("web")
    old = world.seed("web", age=timedelta(days=80))
    assert world.rotate().exit_code == 0
    clock.advance(timedelta(hours=2))
    a, b = world.engine("A"), world.engine("B")
    # B lists first (nothing revoked yet), then A revokes, then B judges on a fresh listing
    info = next(k for k in emulator.keys() if k["last_4_characters"] == old[-4:])
    emulator.state.delete_key(emulator.state._users[ADMIN_EMAIL], key_id=info["id"])   # another runner's revoke
    report = b.run()
    assert report.exit_code == 0, report.outcomes
    assert [e.action for e in world.events if e.last4 == old[-4:] and e.action.endswith("revoked")] == \
        ["already-revoked"]
    assert world.record("web").phase is Phase.IDLE
    del a


# --- a current key deleted at the issuer is replaced at once ----------------------------------

def test_a_current_key_deleted_at_the_issuer_is_replaced_in_the_same_run(world, emulator, clock, caplog):
    """Someone deletes the managed key in the QuivaWorks UI: its applications fail from then on.
    The run's listing no longer shows it (twice), so the secret is rotated now, not at its due
    date; the dead key counts as gone (absent from the listing), never revoked again."""
    world.add_secret("web")
    key = world.seed("web", age=timedelta(days=10))            # adopted; 80 days to go
    assert world.rotate().exit_code == 0
    record = world.record("web")
    emulator.state.delete_key(emulator.state._users[ADMIN_EMAIL], key_id=record.current.key_id)
    report = world.rotate()
    assert report.exit_code == 0, report.outcomes
    outcome = report.outcomes[0]
    assert any("no longer lists the current key" in a for a in outcome.actions), outcome.actions
    world.assert_i1("web")
    assert world.record("web").phase is Phase.GRACE
    clock.advance(timedelta(hours=49))
    assert world.rotate().exit_code == 0
    assert [e.action for e in world.events if e.last4 == key[-4:] and e.action.endswith("revoked")] == \
        ["already-revoked"]


def test_a_shared_key_is_warned_about_when_a_run_sees_it(world, emulator, caplog):
    world.add_secret("a")
    world.add_secret("b")
    shared = world.seed("a", age=timedelta(days=10))
    world.seed_value("b", shared)
    with caplog.at_level("WARNING", logger="rotator.engine"):
        assert world.rotate().exit_code == 0
    warnings = [r.getMessage() for r in caplog.records if "hold the same key" in r.getMessage()]
    assert warnings == [f"secrets a and b hold the same key …{shared[-4:]}: its revoke waits until both have"
                        " moved away from it"] or (len(warnings) == 1 and "secrets a and b" in warnings[0])
    assert shared not in caplog.text


# --- a repair decided from a read that went stale ------------------------------------------------

def test_a_slow_runner_does_not_repair_a_secondary_with_a_key_that_is_no_longer_current(world, emulator, clock,
                                                                                       monkeypatch):
    """In the grace window a secondary lost the new key, and a slow runner decided to put it
    back. Before it wrote, another runner rotated again and deployed a newer key there. The slow
    runner's repair re-reads the primary first and decides again: it never writes back the key
    that is now only the previous one (which the other rotation revokes after its grace: I1)."""
    from rotator.rotation import SecretRun as Rotation

    world.add_secret("a")
    by_hand = world.seed("a", age=timedelta(days=80))
    assert world.rotate().exit_code == 0
    first = world.record("a")
    assert first.phase is Phase.GRACE
    app = next(b for b in world.secret("a").targets if b.label != world.secret("a").primary.label)
    app.backend.deploy(app.target, Secret(by_hand), None, KeyRef.of(Secret(by_hand)))   # lost by hand
    clock.advance(timedelta(hours=49))

    real = Rotation._do_Deploy
    overtaken = []

    def overtaken_first(self, step, now):
        if not overtaken and self.record.phase is Phase.GRACE:
            overtaken.append(None)
            overtaken[0] = world.rotate(["a"], force=True, identity="fast")    # meanwhile, elsewhere
        return real(self, step, now)

    monkeypatch.setattr(Rotation, "_do_Deploy", overtaken_first)
    slow = world.rotate(["a"], identity="slow")
    assert overtaken and overtaken[0].exit_code == 0, [(o.secret, o.error) for o in overtaken[0].outcomes]
    assert slow.exit_code == 0, [(o.secret, o.error) for o in slow.outcomes]
    record = world.record("a")
    assert record.current.fingerprint != first.current.fingerprint, "the fast runner's rotation stands"
    for label, snap in world.snapshots("a").items():
        assert snap.current.fingerprint == record.current.fingerprint, f"{label} holds the current key"
    assert not any(a.startswith("deployed") and first.current.last4 in a
                   for o in slow.outcomes for a in o.actions), "no repair with the stale key"
    monkeypatch.setattr(Rotation, "_do_Deploy", real)
    clock.advance(timedelta(hours=49))
    assert world.rotate().exit_code == 0
    world.assert_i1("a")
    assert {k["value_fingerprint"] for k in live_named(emulator, "a")} == {fp(v) for v in served(world, "a")}
