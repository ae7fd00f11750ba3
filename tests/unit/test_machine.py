"""Every transition of the rotation state machine, table-driven, with explicit instants."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from rotator import machine as m
from rotator.machine import Observations, Policy, View
from rotator.models import HeldKey, KeyRef, Phase, RotationRecord

NOW = datetime(2027, 3, 1, 12, 0, tzinfo=timezone.utc)
P, S1, S2 = "store:p", "app:s1", "aws:s2"
POLICY = Policy(lead_time=timedelta(days=14), grace=timedelta(hours=48), lease=timedelta(minutes=15),
                create_if_missing=True, primary=P, secondaries=(S1, S2))
ME, OTHER = "me:1", "other:2"

OLD = KeyRef(fingerprint="f-old", last4="0ld0", key_id="7", expires_on=NOW + timedelta(days=30))
NEW = KeyRef(fingerprint="f-new", last4="new1", name="app [r-1]", expires_on=NOW + timedelta(days=90), rotation_id="1")


def rec(phase: Phase, **kw) -> RotationRecord:
    defaults = dict(phase=phase, current=OLD, rotation_id="1" if phase is not Phase.IDLE else None)
    defaults.update(kw)
    return RotationRecord(**defaults)


def views(p: View | None = None, **secondaries: View) -> dict[str, View]:
    out = {P: p or View(exists=True, current="f-old")}
    out.update({ {"s1": S1, "s2": S2}[k]: v for k, v in secondaries.items()})
    return out


def obs(record, v=None, **facts) -> Observations:
    return Observations(me=ME, record=record, views=v if v is not None else views(), **facts)


STAGED_P = View(exists=True, current="f-old", pending="f-new", fresh=False)
STAGED_P_READ = replace(STAGED_P, fresh=True)
ON_NEW = View(exists=True, current="f-new", previous="f-old")
GRACE_P = View(exists=True, current="f-new", previous="f-old")
staged = rec(Phase.STAGED, pending=NEW, owner=ME, lease_until=NOW + timedelta(minutes=10))
grace = rec(Phase.GRACE, current=NEW, previous=OLD, grace_until=NOW - timedelta(seconds=1))
HELD = HeldKey(replace(OLD, key_id="5"), "still served by secret other at app:x", NOW - timedelta(days=1))
rolling = rec(Phase.ROLLING_BACK, pending=NEW, owner=ME, lease_until=NOW + timedelta(minutes=10),
              last_error="the issuer refused the new key")

CASES = [
    # --- no record yet ---
    ("bootstrap: empty primary", obs(None, views(View(exists=False))), m.Claim, {"bootstrap": True}),
    ("adopt a hand-made key", obs(None), m.Adopt, {}),
    ("pending without record", obs(None, views(View(exists=True, pending="x"))), m.Fail, {"retry": False}),
    # --- idle ---
    ("idle, not due", obs(rec(Phase.IDLE)), m.Rest, {"next_at": OLD.expires_on - timedelta(days=14)}),
    ("idle, due", obs(rec(Phase.IDLE, current=replace(OLD, expires_on=NOW + timedelta(days=13)))), m.Claim, {}),
    ("idle, exactly at due", obs(rec(Phase.IDLE, current=replace(OLD, expires_on=NOW + timedelta(days=14)))), m.Claim, {}),
    ("idle, expired", obs(rec(Phase.IDLE, current=replace(OLD, expires_on=NOW - timedelta(days=1)))), m.Claim,
     {"reason": "the current key has EXPIRED"}),
    ("idle, forced", obs(rec(Phase.IDLE), force=True), m.Claim, {"reason": "forced"}),
    ("idle after a rollback in this run", obs(rec(Phase.IDLE, current=replace(OLD, expires_on=NOW), last_error="refused"),
                                             rolled_back=True), m.Fail, {"reason": "refused"}),
    ("idle, unknown expiry", obs(rec(Phase.IDLE, current=replace(OLD, expires_on=None))), m.Claim, {}),
    ("idle, value changed by hand", obs(rec(Phase.IDLE), views(View(exists=True, current="f-hand"))), m.Adopt, {}),
    ("idle, value deleted by hand", obs(rec(Phase.IDLE), views(View(exists=True))), m.Claim, {"bootstrap": True}),
    # --- claimed ---
    ("claimed by me", obs(rec(Phase.CLAIMED, owner=ME, lease_until=NOW + timedelta(minutes=5))), m.IssueAndStage, {}),
    ("claimed by a live runner", obs(rec(Phase.CLAIMED, owner=OTHER, lease_until=NOW + timedelta(minutes=5))),
     m.Wait, {"until": NOW + timedelta(minutes=5)}),
    ("claimed, lease expired: take over first", obs(rec(Phase.CLAIMED, owner=OTHER, lease_until=NOW - timedelta(seconds=1))),
     m.TakeOver, {}),
    ("claimed, released after failure", obs(rec(Phase.CLAIMED, owner=None)), m.TakeOver, {}),
    ("claimed, taken over: sweep what the owner minted", obs(rec(Phase.CLAIMED, owner=ME, lease_until=NOW + timedelta(1)),
                                                             took_over=True), m.SweepOrphans, {}),
    ("claimed, taken over and swept", obs(rec(Phase.CLAIMED, owner=ME, lease_until=NOW + timedelta(1)), took_over=True,
                                          orphans_swept=True), m.IssueAndStage, {}),
    # --- staged: confirm, verify, then deploy ---
    ("staged by a live runner", obs(replace(staged, owner=OTHER)), m.Wait, {}),
    ("staged, owner gone", obs(replace(staged, owner=OTHER, lease_until=NOW), views(STAGED_P)), m.TakeOver, {}),
    ("staged, confirm the issue first", obs(staged, views(STAGED_P)), m.ConfirmIssued, {}),
    ("staged, id known: verify", obs(replace(staged, pending=replace(NEW, key_id="9")), views(STAGED_P)),
     m.VerifyNewKey, {}),
    ("staged, the issue reply was not the created key", obs(staged, views(STAGED_P), issue_confirmed=True,
                                                            issue_problem="mismatch"), m.BeginRollback,
     {"reason": "mismatch"}),
    ("staged, verify before any deploy", obs(staged, views(STAGED_P), issue_confirmed=True), m.VerifyNewKey, {}),
    ("staged, refused: nothing deployed", obs(staged, views(STAGED_P), issue_confirmed=True, new_key_accepted=False),
     m.BeginRollback, {}),
    ("staged, verified: deploy", obs(staged, views(STAGED_P), issue_confirmed=True, new_key_accepted=True), m.Deploy,
     {"targets": (S1, S2)}),
    ("staged, deploy the rest", obs(staged, views(STAGED_P), issue_confirmed=True, new_key_accepted=True,
                                    deployed=frozenset({S1})), m.Deploy, {"targets": (S2,)}),
    ("staged, read back everything", obs(staged, views(STAGED_P), issue_confirmed=True, new_key_accepted=True,
                                         deployed=frozenset({S1, S2})), m.ReadBack, {"targets": (P, S1, S2)}),
    ("staged, read back mismatch", obs(staged, views(STAGED_P_READ, s1=ON_NEW, s2=View(exists=True, current="f-old")),
                                       issue_confirmed=True, new_key_accepted=True, deployed=frozenset({S1, S2})),
     m.Fail, {"retry": True}),
    ("staged, everything agrees", obs(staged, views(STAGED_P_READ, s1=ON_NEW, s2=ON_NEW), issue_confirmed=True,
                                      new_key_accepted=True, deployed=frozenset({S1, S2})), m.Promote, {}),
    ("staged, pending lost", obs(staged, views(View(exists=True, current="f-old"))), m.BeginRollback, {}),
    # --- grace ---
    ("grace, running", obs(replace(grace, grace_until=NOW + timedelta(hours=1)), views(GRACE_P)), m.Rest,
     {"next_at": NOW + timedelta(hours=1)}),
    ("grace never cut short by a past expiry date alone", obs(replace(grace, grace_until=NOW + timedelta(hours=1),
                                                                      previous=replace(OLD, expires_on=NOW)),
                                                              views(GRACE_P)),
     m.Rest, {"next_at": NOW + timedelta(hours=1)}),
    ("grace, old key dated 1970", obs(replace(grace, grace_until=NOW + timedelta(hours=1),
                                              previous=replace(OLD, expires_on=datetime(1970, 1, 1, tzinfo=timezone.utc))),
                                      views(GRACE_P)), m.Rest, {"next_at": NOW + timedelta(hours=1)}),
    ("grace cut short by a shorter policy", obs(replace(grace, grace_until=NOW + timedelta(hours=40),
                                                        verified_at=NOW - timedelta(hours=49)), views(GRACE_P)),
     m.ReadBack, {"targets": (S1, S2)}),
    ("grace over, read secondaries", obs(grace, views(GRACE_P)), m.ReadBack, {"targets": (S1, S2)}),
    ("grace over, evidence complete", obs(grace, views(GRACE_P, s1=ON_NEW, s2=ON_NEW)), m.RevokeOld, {}),
    ("grace over, drift repaired", obs(grace, views(GRACE_P, s1=ON_NEW, s2=View(exists=True, current="f-old"))),
     m.Deploy, {"targets": (S2,)}),
    ("grace over, drift persists", obs(grace, views(GRACE_P, s1=ON_NEW, s2=View(exists=True, current="f-old")),
                                       deployed=frozenset({S2})), m.Fail, {}),
    ("grace over, primary changed", obs(grace, views(View(exists=True, current="f-hand"))), m.Fail, {"retry": False}),
    ("grace over, revoked", obs(grace, views(GRACE_P, s1=ON_NEW, s2=ON_NEW), old_revoke="revoked"), m.Finish, {}),
    ("grace over, revoke held", obs(grace, views(GRACE_P, s1=ON_NEW, s2=ON_NEW), old_revoke="held"), m.Finish, {}),
    ("grace, nothing to revoke", obs(replace(grace, previous=None), views(GRACE_P, s1=ON_NEW, s2=ON_NEW)), m.Finish, {}),
    # --- held revokes ---
    ("idle with a held revoke: ask the gate again", obs(rec(Phase.IDLE, held=(HELD,))), m.RevokeHeld, {}),
    ("idle with a held revoke, asked", obs(rec(Phase.IDLE, held=(HELD,)), held_checked=True), m.Rest, {}),
    # --- one rotation per run ---
    ("idle, rotated in this run, due again by its dates", obs(rec(Phase.IDLE, current=replace(NEW, expires_on=NOW - timedelta(1))),
                                                              views(View(exists=True, current="f-new")), rotated=True),
     m.Rest, {"next_at": None}),
    ("idle, rotated in this run, forced", obs(rec(Phase.IDLE), rotated=True, force=True), m.Rest, {}),
    # --- extreme dates never raise ---
    ("idle, expiry in year 1", obs(rec(Phase.IDLE, current=replace(OLD, expires_on=datetime(1, 1, 1, tzinfo=timezone.utc)))),
     m.Claim, {}),
    ("idle, expiry in year 9999", obs(rec(Phase.IDLE, current=replace(OLD, expires_on=datetime.max.replace(tzinfo=timezone.utc)))),
     m.Rest, {}),
    # --- rolling back ---
    ("rollback by a live runner", obs(replace(rolling, owner=OTHER)), m.Wait, {}),
    ("rollback, restore", obs(rolling, views(STAGED_P)), m.Restore, {"targets": (S1, S2)}),
    ("grace with an old key dated year 1: never raises", obs(replace(grace, verified_at=datetime(1, 1, 1, 1, tzinfo=timezone.utc),
                                                                    grace_until=None), views(GRACE_P)), m.ReadBack, {}),
    ("rollback, revoke new", obs(rolling, views(STAGED_P), deployed=frozenset({S1, S2})), m.RevokeNew, {}),
    ("rollback, finish", obs(rolling, views(STAGED_P), deployed=frozenset({S1, S2}), new_revoked=True),
     m.FinishRollback, {"reason": "the issuer refused the new key"}),
]


@pytest.mark.parametrize("label, observations, expected, attrs", CASES, ids=[c[0] for c in CASES])
def test_transition(label, observations, expected, attrs):
    step = m.decide(POLICY, observations, NOW)
    assert type(step) is expected, step
    for name, value in attrs.items():
        assert getattr(step, name) == value


def test_create_if_missing_off_fails_without_retry():
    step = m.decide(replace(POLICY, create_if_missing=False), obs(None, views(View(exists=False))), NOW)
    assert isinstance(step, m.Fail) and not step.retry and "create_if_missing" in step.reason


def test_no_secondaries_goes_straight_to_read_back_of_primary():
    policy = replace(POLICY, secondaries=())
    step = m.decide(policy, obs(staged, {P: STAGED_P}, issue_confirmed=True, new_key_accepted=True), NOW)
    assert step == m.ReadBack((P,))


def test_decide_is_pure_and_repeatable():
    o = obs(staged, views(STAGED_P))
    assert m.decide(POLICY, o, NOW) == m.decide(POLICY, o, NOW)


def test_due_at_is_expiry_minus_lead():
    assert m.due_at(POLICY, rec(Phase.IDLE)) == OLD.expires_on - timedelta(days=14)
    assert m.due_at(POLICY, rec(Phase.IDLE, current=None)) is None
