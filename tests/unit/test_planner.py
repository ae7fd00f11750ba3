"""The planner, pure: one health per secret by a documented precedence, each with its reason; a
key the listing no longer shows; the issuer credential's health; keys shared by several secrets."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from rotator.machine import Policy, View
from rotator.models import HeldKey, KeyInfo, KeyRef, Listing, Phase, RotationRecord, Secret, Snapshot
from rotator.planner import HEALTHY, PRECEDENCE, assess, assess_credential, shared_keys, unlisted

NOW = datetime(2027, 3, 1, 12, 0, tzinfo=timezone.utc)
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
POLICY = Policy(lead_time=14 * DAY, grace=48 * HOUR, lease=15 * timedelta(minutes=1), create_if_missing=True,
                primary="store:web.json", secondaries=())
CURRENT = KeyRef(fingerprint="f" * 16, last4="c0de", key_id="42", name="web [r-1]", created_on=NOW - 30 * DAY,
                 expires_on=NOW + 60 * DAY)
OLD = KeyRef(fingerprint="e" * 16, last4="ab12", key_id="41", expires_on=NOW + 20 * DAY)
LISTED = Listing([KeyInfo("42", "web [r-1]", "c0de", NOW - 30 * DAY, NOW + 60 * DAY)])


def record(**changes) -> RotationRecord:
    return RotationRecord(phase=Phase.IDLE, current=CURRENT).evolve(**changes)


def health(rec: RotationRecord | None, *, listing: Listing | None = LISTED, primary: str | None = "f" * 16,
           check_interval: timedelta | None = HOUR) -> tuple[str, str]:
    a = assess(POLICY, rec, View(exists=primary is not None, current=primary), NOW, listing=listing,
               check_interval=check_interval)
    assert a.health in PRECEDENCE
    return a.health, a.reason


def test_precedence_lists_every_health_once_and_the_healthy_ones_last():
    assert len(set(PRECEDENCE)) == len(PRECEDENCE)
    assert PRECEDENCE[-len(HEALTHY):] == ("rotating", "grace", "due", "healthy")
    assert set(HEALTHY) == {"healthy", "due", "rotating", "grace"}


@pytest.mark.parametrize("rec, expected, words", [
    (record(), "healthy", "nothing to do"),
    (record(current=CURRENT.__class__(**{**CURRENT.__dict__, "expires_on": NOW + 10 * DAY})), "due", "lead time"),
    (record(phase=Phase.GRACE, previous=OLD, verified_at=NOW - HOUR, grace_until=NOW + DAY), "grace", "old one"),
    (record(phase=Phase.CLAIMED, rotation_id="abcdef12" * 4, owner="host:1:a", lease_until=NOW + 10 * timedelta(minutes=1)),
     "rotating", "in flight by host:1:a"),
    (record(phase=Phase.STAGED, rotation_id="abcdef12" * 4, owner=None), "rotating", "released"),
    (record(phase=Phase.CLAIMED, rotation_id="abcdef12" * 4, owner="host:1:a", lease_until=NOW - timedelta(minutes=1)),
     "stale-claim", "the owner died"),
    (record(last_error="quiva: 503", attempts=2, error_since=NOW - DAY), "failing",
     "the last run failed since 2027-02-28 12:00Z (2 attempt(s)): quiva: 503"),
    (record(held=(HeldKey(OLD, "still served by secret batch at app:batch.json", NOW - DAY),)), "held",
     "revoke of old key …ab12 (id 41) held: still served by secret batch at app:batch.json"),
    (None, "unmanaged", "adopts"),
])
def test_each_state_has_its_own_health_and_reason(rec, expected, words):
    found, reason = health(rec)
    assert found == expected and words in reason, (found, reason)


def test_expired_beats_everything_then_rejected_then_blocked_then_expiring_then_failing():
    dying = record(current=KeyRef(**{**CURRENT.__dict__, "expires_on": NOW + timedelta(minutes=20)}),
                   last_error="quiva: 503", attempts=1, held=(HeldKey(OLD, "shared", NOW),))
    assert health(dying)[0] == "expiring"
    assert health(dying, check_interval=None)[0] == "failing"          # no interval known: not judged
    assert health(dying, listing=Listing([]))[0] == "rejected"
    gone = dying.evolve(current=KeyRef(**{**CURRENT.__dict__, "expires_on": NOW - HOUR}))
    assert health(gone, listing=Listing([]))[0] == "expired"
    # a rotation whose new key is no longer in the primary, after grace: needs a person
    lost = record(phase=Phase.GRACE, previous=OLD, verified_at=NOW - 3 * DAY, grace_until=NOW - DAY,
                  last_error="x", attempts=1)
    assert health(lost, primary="0" * 16)[0] == "blocked"
    assert health(lost, primary="0" * 16, listing=Listing([]))[0] == "rejected"


def test_a_live_claim_is_rotating_even_with_a_key_about_to_expire():
    soon = KeyRef(**{**CURRENT.__dict__, "expires_on": NOW + timedelta(minutes=20)})
    live = record(current=soon, phase=Phase.CLAIMED, rotation_id="a" * 32, owner="host:1:a",
                  lease_until=NOW + timedelta(minutes=10))
    assert health(live)[0] == "rotating"


def test_a_held_revoke_is_planned_apart_and_the_next_rotation_is_still_planned():
    a = assess(POLICY, record(held=(HeldKey(OLD, "shared", NOW),)), View(exists=True, current="f" * 16), NOW)
    assert a.action == "rotate" and a.at == NOW + 46 * DAY and a.held[0].key == OLD


@pytest.mark.parametrize("ref, listing, words", [
    (CURRENT, LISTED, None),
    (CURRENT, Listing([]), "no longer lists the current key …c0de (id 42) (looked up by id)"),
    (KeyRef("f" * 16, "c0de", name="web [r-1]"), LISTED, None),
    (KeyRef("f" * 16, "c0de", name="web [r-2]"), LISTED, "by name and last 4 characters"),
    (KeyRef("f" * 16, "c0de"), LISTED, None),
    (KeyRef("f" * 16, "beef"), LISTED, "by last 4 characters"),
    (CURRENT, Listing([KeyInfo("42", "web [r-1]", "c0de", NOW - 95 * DAY, NOW - 5 * DAY)]), "as expired at"),
    (CURRENT, Listing([KeyInfo("42", "web [r-1]", "c0de", None, None)]), None),        # untrusted dates: live
    (CURRENT, Listing([], problems=["a page repeats"]), None),         # absence in a bad listing proves nothing
])
def test_unlisted(ref, listing, words):
    found = unlisted(ref, listing, NOW)
    assert found is None if words is None else words in found, found


ADMIN = [KeyInfo("7", "admin", "a1b2", NOW - 80 * DAY, NOW + 10 * DAY)]


@pytest.mark.parametrize("listing, managed_as, expected, words", [
    (Listing(ADMIN), None, "expiring", "not managed: rotator cannot rotate it; replace it by hand before 2027-03-11"),
    (Listing([KeyInfo("7", "admin", "a1b2", NOW - 10 * DAY, NOW + 80 * DAY)]), None, "healthy", "by hand before"),
    (Listing([KeyInfo("7", "admin", "a1b2", NOW - 95 * DAY, NOW - DAY)]), None, "expired", "replace it by hand now"),
    (Listing(ADMIN), "rotator-admin", "managed", "managed as secret rotator-admin"),
    (Listing([]), None, "unknown", "no key ending in …a1b2"),
    (None, None, "unknown", "cannot tell when it expires: boom"),
    (Listing(ADMIN + [KeyInfo("8", "other", "a1b2", NOW, NOW + 90 * DAY)]), None, "expiring", "ambiguous: 2 keys"),
    (Listing([KeyInfo("7", "admin", "a1b2", None, None)]), None, "expiring", "expiry is unknown"),
])
def test_the_issuer_credential(listing, managed_as, expected, words):
    c = assess_credential("quiva", "a1b2", listing, NOW, lead_time=14 * DAY, managed_as=managed_as, problem="boom")
    assert c.health == expected and words in c.reason, c
    assert c.healthy is (expected in ("managed", "healthy"))


def test_an_ambiguous_credential_shows_the_earliest_expiry_and_no_guessed_id():
    c = assess_credential("quiva", "a1b2", Listing(ADMIN + [KeyInfo("8", "other", "a1b2", NOW, NOW + 90 * DAY)]), NOW,
                          lead_time=14 * DAY)
    assert c.expires_on == NOW + 10 * DAY and c.key_id is None and c.matches == 2


def test_an_unresolvable_credential_is_unreadable():
    c = assess_credential("quiva", None, None, NOW, lead_time=14 * DAY, problem="issuers.quiva: does not resolve")
    assert c.health == "unreadable" and not c.healthy


def test_shared_keys_by_fingerprint_never_by_value():
    one, two, other = Secret("ms-" + "1" * 32), Secret("ms-" + "1" * 32), Secret("ms-" + "2" * 32)
    found = shared_keys({"beta": Snapshot("v", current=two), "alpha": Snapshot("v", current=one),
                         "gamma": Snapshot("v", current=other), "empty": Snapshot(), "gone": None})
    assert [(s.secrets, s.last4) for s in found] == [(("alpha", "beta"), "1111")]
    assert found[0].warning == ("secrets alpha and beta hold the same key …1111: its revoke waits until both have"
                                " moved away")
    three = shared_keys({n: Snapshot("v", current=Secret("ms-" + "1" * 32)) for n in ("c", "a", "b")})
    assert three[0].warning.startswith("secrets a, b and c hold the same key") and "all of them" in three[0].warning


def test_the_next_action_of_a_claim_says_whose_lease_ran_out_or_that_it_was_released():
    stale = record(phase=Phase.STAGED, rotation_id="a" * 32, owner="host:1:a", lease_until=NOW - HOUR)
    a = assess(POLICY, stale, View(exists=True, current="f" * 16), NOW)
    assert a.action == "take the rotation over from host:1:a (its lease ran out) and resume it" and a.at == NOW
    released = stale.evolve(owner=None, lease_until=None, last_error="store: 503", attempts=1)
    a = assess(POLICY, released, View(exists=True, current="f" * 16), NOW)
    assert a.action == "resume the rotation (its claim was released)" and a.health == "failing"
