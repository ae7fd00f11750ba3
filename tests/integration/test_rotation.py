"""End-to-end rotations over HTTP: the QuivaWorks emulator and two file backends."""

from __future__ import annotations

from datetime import timedelta

from rotator.models import Phase


def test_bootstrap_issues_and_deploys_a_first_key(world):
    world.add_secret("web")
    report = world.rotate()
    assert report.exit_code == 0, report.outcomes
    record = world.record("web")
    assert record.phase is Phase.IDLE and record.rotations == 1 and record.previous is None
    world.assert_i1("web")
    snaps = world.snapshots("web")
    assert len({s.current.fingerprint for s in snaps.values()}) == 1


def test_due_key_is_adopted_rotated_and_retired_after_grace(world, emulator, clock):
    world.add_secret("web")
    old = world.seed("web", age=timedelta(days=80))           # expires in ~12 days: due now

    first = world.rotate()
    assert first.exit_code == 0 and first.outcomes[0].status == "changed"
    record = world.record("web")
    assert record.phase is Phase.GRACE
    assert record.previous.key_id is not None                # adopted: matched in the listing
    world.assert_i1("web")
    assert emulator.is_active(old), "the old key stays valid during the grace window"
    assert all(s.previous.reveal() == old for s in world.snapshots("web").values())

    clock.advance(timedelta(hours=47))
    assert world.rotate().outcomes[0].status == "ok"            # grace not over: nothing to do
    assert emulator.is_active(old)

    clock.advance(timedelta(hours=2))
    done = world.rotate()
    assert done.exit_code == 0
    assert not emulator.is_active(old)
    record = world.record("web")
    assert record.phase is Phase.IDLE and record.previous is None and record.rotations == 1
    assert record.current.key_id is not None, "the new key's id is learnt from the listing"
    world.assert_i1("web")

    again = world.rotate()                                   # I5: a second run changes nothing
    assert again.outcomes[0].status == "ok" and not again.outcomes[0].actions


def test_key_not_due_is_left_alone(world, emulator):
    world.add_secret("web")
    world.seed("web", age=timedelta(days=10))
    world.rotate()                                           # adopts
    before = emulator.counters().get("POST /accounts/api-key", 0)
    outcome = world.rotate().outcomes[0]
    assert outcome.status == "ok" and outcome.next_at is not None
    assert emulator.counters().get("POST /accounts/api-key", 0) == before


def test_force_rotates_now(world):
    world.add_secret("web")
    world.seed("web", age=timedelta(days=1))
    outcome = world.rotate(force=True).outcomes[0]
    assert outcome.status == "changed"
    assert world.record("web").phase is Phase.GRACE


def test_a_year_of_rotations_without_outage(world, emulator, clock, admin_key):
    # The admin key expires like any other: the rotator manages it too, and reads it from there.
    world.issuer["admin_key"] = {"backend": "store", "path": "admin.json"}
    world.add_secret("admin", targets=[{"backend": "store", "path": "admin.json"}])
    world.seed_value("admin", admin_key)
    world.add_secret("web")
    world.add_secret("batch")
    world.seed("web", age=timedelta(days=85))
    world.seed("batch", age=timedelta(days=5))
    end = clock.now() + timedelta(days=365)
    while clock.now() < end:
        report = world.rotate()
        assert report.exit_code == 0, [o.error for o in report.outcomes]
        for name in ("admin", "web", "batch"):
            world.assert_i1(name)
        wake = min((o.next_at for o in report.outcomes if o.next_at and o.next_at > clock.now()),
                   default=clock.now() + timedelta(days=1))
        clock.set(min(wake, clock.now() + timedelta(days=1)))
    for name in ("admin", "web", "batch"):
        assert world.record(name).rotations >= 4
    assert len(world.live_values()) == 3, "exactly one live key per secret, the admin key included"


def test_force_with_zero_grace_rotates_exactly_once(world, emulator):
    world.defaults["grace"] = "0s"
    world.add_secret("web")
    old = world.seed("web", age=timedelta(days=1))
    report = world.rotate(force=True)
    assert report.exit_code == 0
    assert emulator.counters().get("POST /accounts/api-key", 0) == 1, "force is consumed by one claim"
    record = world.record("web")
    assert record.phase is Phase.IDLE and record.rotations == 1 and not emulator.is_active(old)
    world.assert_i1("web")


def test_a_new_key_the_issuer_refuses_is_rolled_back(world, emulator, clock):
    """Verification fails (the issuer answers 401 for the new key): secondaries get the old key
    back, the new key is revoked, the run fails; the next run rotates cleanly."""
    from rotator.testing import EffectCounter

    world.add_secret("web")
    old = world.seed("web", age=timedelta(days=80))
    engine = world.engine("A")

    armed = []

    def refuse_next_auth(number, provider, method):
        if method == "stage" and not armed:      # the live check comes next, before any deploy
            armed.append(number)                 # a refusal is tried 4 times before it is believed
            emulator.faults.fail_next(4, status=401, path="/accounts/auth-with-api-key")

    EffectCounter(on_effect=refuse_next_auth).instrument(engine.runtime)
    report = engine.run()
    outcome = report.outcomes[0]
    assert report.exit_code == 1 and "refused the new key" in outcome.error
    assert [a.split()[0] for a in outcome.actions][-5:] == ["verify-failed", "rollback", "restored", "rolled-back",
                                                            "failed"]
    revoked = [e for e in world.events if e.action == "revoked"]
    assert len(revoked) == 1 and "rollback" in revoked[0].detail
    record = world.record("web")
    assert record.phase is Phase.IDLE and record.pending is None and record.attempts == 1
    assert all(s.current.reveal() == old for s in world.snapshots("web").values())
    refused = [r for r in emulator.keys() if r["name"].startswith("web [")]
    assert len(refused) == 1 and refused[0]["deleted_on"] is not None, "the refused key was revoked"
    assert emulator.counters().get("POST /accounts/api-key") == 1, "no second attempt in the same run"
    world.assert_i1("web")

    assert world.rotate().exit_code == 0                                # retried on the next run
    assert world.record("web").phase is Phase.GRACE and world.record("web").last_error is None
    world.assert_i1("web")


def test_compromise_during_a_grace_window_kills_both_old_keys(world, emulator):
    """Starting in GRACE, the incident procedure revokes the previous key, rotates again and
    revokes the compromised (current) key in the same run: facts of the first rotation must not
    leak into the second."""
    from rotator.incident import revoke_compromised

    world.add_secret("web")
    oldest = world.seed("web", age=timedelta(days=80))
    world.rotate()
    assert world.record("web").phase is Phase.GRACE
    compromised = world.snapshots("web")[world.secret("web").primary.label].current.reveal()
    engine = world.engine("incident")
    report = revoke_compromised(engine, world.secret("web", engine.runtime))
    assert report.contained and not report.forced
    assert not emulator.is_active(compromised) and not emulator.is_active(oldest)
    world.assert_i1("web")
    assert world.record("web").phase is Phase.IDLE


def test_a_stage_that_landed_but_reported_conflict_keeps_the_new_key(world, emulator):
    """A backend whose reply was lost may report Conflict for a write that landed. The engine
    re-reads before revoking what it minted: the staged key must survive and the rotation go on."""
    from rotator.errors import Conflict

    world.add_secret("web")
    world.seed("web", age=timedelta(days=80))
    engine = world.engine("A")
    primary = world.secret("web", engine.runtime).primary.backend
    real_stage = primary.stage

    def stage_then_lose_the_reply(*args, **kwargs):
        real_stage(*args, **kwargs)
        raise Conflict("reply lost")

    primary.stage = stage_then_lose_the_reply
    assert engine.run().exit_code == 0
    assert emulator.counters().get("POST /accounts/api-key") == 1
    assert world.record("web").phase is Phase.GRACE
    world.assert_i1("web")
