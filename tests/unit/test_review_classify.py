"""review.classify is pure: shared keys, held revokes and what the gate would hold, from records
and what the targets serve (fingerprints, never values)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from rotator import review
from rotator.gate import Holder
from rotator.models import HeldKey, KeyInfo, KeyRef, Listing, Phase, RotationRecord

NOW = datetime(2027, 3, 1, 9, 0, tzinfo=timezone.utc)
LEAD = timedelta(days=14)


def key(key_id, name, last4, age=timedelta(days=5)):
    return KeyInfo(key_id, name, last4, NOW - age, NOW - age + timedelta(days=91), "ops@example.com")


def managed(name, record=None, primary=None, served=()):
    return review.Managed(name, "{secret} [{rotation}]", LEAD, record, primary=primary, served=tuple(served))


def by_id(findings):
    return {f.key_id: f for f in findings}


def test_a_key_two_records_name_by_last4_and_name_is_shared():
    ref = KeyRef("fp-1", "c0de", name="legacy")            # adopted without an id
    listing = [key("k1", "legacy", "c0de"), key("k2", "other", "beef")]
    found = by_id(review.classify("q", listing, [managed("web", RotationRecord(current=ref)),
                                                 managed("batch", RotationRecord(current=ref))], NOW))
    assert found["k1"].role == "current" and found["k1"].shared_by == ("web", "batch")
    assert "shared" in found["k1"].flags and found["k1"].owners == "web, batch"
    assert "shared" not in found["k2"].flags and found["k2"].shared_by == ()


def test_two_primaries_holding_one_value_share_it_and_the_listing_entry_is_found_by_the_record():
    web = KeyRef("fp-1", "c0de", key_id="k1")
    listing = Listing([key("k1", "web (by hand)", "c0de"), key("k9", "someone else", "c0de")])
    primary = Holder("web", "serves", "store:web.json", "fp-1", "c0de")
    found = by_id(review.classify("q", listing, [
        managed("web", RotationRecord(current=web), primary=primary),
        managed("batch", None, primary=Holder("batch", "serves", "store:batch.json", "fp-1", "c0de"))], NOW))
    assert found["k1"].shared_by == ("web", "batch")
    assert found["k9"].shared_by == ()                      # same last 4, but the record says which key it is
    assert not found["k9"].revocable                        # ... though the gate, by last 4, would hold it
    assert found["k9"].hold.startswith("still served by secret")


def test_held_revokes_are_held_and_never_selected():
    old = KeyRef("fp-0", "aaaa", key_id="k0")
    record = RotationRecord(phase=Phase.IDLE, current=KeyRef("fp-1", "c0de", key_id="k1"),
                            held=(HeldKey(old, "still served by secret batch at app:batch.json", NOW),))
    findings = review.classify("q", [key("k0", "web (by hand)", "aaaa"), key("k1", "web [r-0badc0de]", "c0de")],
                               [managed("web", record)], NOW)
    held = by_id(findings)["k0"]
    assert held.role == "held" and held.secret == "web" and not held.revocable
    assert held.hold == "still served by secret batch at app:batch.json" and held.held_since == NOW
    flags = {"orphans": True, "unmanaged": True, "unused": True}
    assert review.selected_for_revocation(findings, **flags) == []


def test_orphans_would_be_swept_only_past_the_in_flight_bound_and_when_no_claim_owns_them():
    claim = RotationRecord(phase=Phase.CLAIMED, rotation_id="5eedf00d" + "0" * 24, owner="runner-2",
                           lease_until=NOW + timedelta(minutes=5))
    listing = [key("old", "web [r-0badc0de]", "1111", age=timedelta(minutes=15)),
               key("young", "web [r-12345678]", "2222", age=timedelta(seconds=30)),
               key("claimed", "batch [r-5eedf00d]", "3333", age=timedelta(hours=1))]
    found = by_id(review.classify("q", listing, [managed("web"), managed("batch", claim)], NOW,
                                  in_flight=timedelta(minutes=2)))
    assert "would-sweep" in found["old"].flags and found["old"].revocable and found["old"].purpose.value == "stray"
    assert "in-flight" in found["young"].flags and not found["young"].revocable
    assert "in-flight" in found["claimed"].flags and "runner-2 still owns" in found["claimed"].hold


# --- whose key a name is: one match per template (the sweep's look-up) --------------------------

_NAME_CHARS = st.sampled_from(["a", "b", "-", " ", "[", "]", "r", "0", "f", ".", "\n", "{", "}"])


@settings(max_examples=300, deadline=None)
@given(secrets=st.lists(st.tuples(st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,5}\Z"),   # config._NAME
                                  st.sampled_from(["{secret} [{rotation}]", "{secret}-{rotation}",
                                                   "{rotation}.{secret}", "x{secret}{rotation}{secret}",
                                                   "{secret}"])),
                        min_size=1, max_size=6, unique_by=lambda t: t[0]),
       names=st.lists(st.text(_NAME_CHARS, max_size=24), max_size=8),
       rotation=st.sampled_from(["r-0123abcd", "r-ffffffff"]))
def test_name_owners_agrees_with_each_secrets_pattern(secrets, names, rotation):
    """The first secret (in order) whose name_pattern matches, for random names and for the
    names each secret's keys really get."""
    owner_of = review.name_owners(secrets)
    real = [template.replace("{secret}", name).replace("{rotation}", rotation) for name, template in secrets]
    for key_name in [*names, *real, *(n + "\n" for n in real)]:
        expected = next((name for name, template in secrets
                         if review.name_pattern(template, name).match(key_name)), None)
        assert owner_of(key_name) == expected, key_name
    assert owner_of(None) is None
