"""The revoke gate, table-driven: every rule, with the reason it gives."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from rotator.gate import Evidence, Holder, LiveClaim, Purpose, Request, judge, rotation_tag
from rotator.models import KeyInfo, KeyRef, Listing

NOW = datetime(2027, 3, 1, 12, 0, tzinfo=timezone.utc)
OLD = KeyRef(fingerprint="f-old", last4="0ld0", key_id="7", name="web (by hand)")
OLD_ENTRY = KeyInfo("7", "web (by hand)", "0ld0", NOW - timedelta(days=80), NOW + timedelta(days=10))
OTHER_ENTRY = KeyInfo("8", "batch [r-1234abcd]", "b8b8", NOW - timedelta(days=1), NOW + timedelta(days=89))
STRAY = KeyInfo("9", "web [r-deadbeef]", "57a7", NOW - timedelta(hours=2), NOW + timedelta(days=89))
ADMIN = KeyRef(fingerprint="f-admin", last4="adm1")
ADMIN_ENTRY = KeyInfo("1", "admin", "adm1", NOW - timedelta(days=5), NOW + timedelta(days=85))
LISTING = Listing([OLD_ENTRY, OTHER_ENTRY, STRAY, ADMIN_ENTRY])


def evidence(**kw) -> Evidence:
    base = dict(now=NOW, listing=LISTING, admin=ADMIN, admin_issuer="quiva",
                in_flight_since=NOW - timedelta(minutes=10))
    base.update(kw)
    return Evidence(**base)


def old(**kw) -> Request:
    return Request("web", Purpose.OLD, key=kw.pop("key", OLD), own=frozenset({"previous"}), **kw)


def stray(entry: KeyInfo = STRAY, **kw) -> Request:
    return Request("web", kw.pop("purpose", Purpose.STRAY), entry=entry, **kw)


CASES = [
    # --- the listing ---
    ("no listing", old(), evidence(listing=None), "hold", False, "no listing"),
    ("a listing that contradicts itself", old(), evidence(listing=Listing([OLD_ENTRY], ["id '8' appears twice"])),
     "hold", False, "contradicts itself"),
    ("the recorded id now ends otherwise: a foreign id", old(key=KeyRef("f-old", "zzzz", key_id="7")), evidence(),
     "hold", False, "carries another key's id"),
    ("not listed", old(key=KeyRef("f-x", "xxxx", key_id="77")), evidence(), "gone", False, "no longer"),
    ("nothing relies on it", old(), evidence(), "revoke", False, "nothing relies"),
    # --- who relies on it ---
    ("another secret's target serves it", old(),
     evidence(holders=(Holder("batch", "serves", "app:/b.json", "f-old", "0ld0"),)),
     "hold", True, "still served by secret batch at app:/b.json"),
    ("this secret's own previous role does not protect it", old(),
     evidence(holders=(Holder("web", "previous", "record", "f-old", "0ld0", "7"),)), "revoke", False, ""),
    ("this secret's own target still serving it does", old(),
     evidence(holders=(Holder("web", "serves", "app:/w.json", "f-old", "0ld0"),)), "hold", True, "secret web"),
    ("a record names its id, whatever the fingerprints say", old(),
     evidence(holders=(Holder("batch", "current", "record", "f-else", "0ld0", "7"),)),
     "hold", True, "current key of secret batch"),
    ("another key with the same last 4 does not protect it", old(),
     evidence(holders=(Holder("batch", "serves", "app:/b.json", "f-else", "0ld0"),)), "revoke", False, ""),
    ("another secret keeps it as its previous key in grace", old(),
     evidence(holders=(Holder("batch", "previous", "record", "f-old", "0ld0", "7"),)),
     "hold", True, "previous key during its grace"),
    ("a secret whose targets cannot be read", old(), evidence(unknown=("secret batch: its primary could not be read",)),
     "hold", True, "cannot prove it unused"),
    ("a consumer has not confirmed", old(consumers=("reload-web",)), evidence(), "hold", True, "reload-web"),
    ("compromised: a consumer gate does not hold it", Request("web", Purpose.COMPROMISED, key=OLD,
                                                               consumers=("reload-web",)), evidence(), "revoke",
     False, "nothing relies"),
    # --- the admin key ---
    ("the admin key by value", old(key=KeyRef("f-admin", "adm1", key_id="1")), evidence(), "hold", True, "admin key"),
    ("an entry that may be the admin key (id unknown, same last 4)", stray(ADMIN_ENTRY), evidence(),
     "hold", True, "admin key"),
    ("the admin key by its known id", stray(ADMIN_ENTRY),
     evidence(admin=KeyRef("f-admin", "adm1", key_id="1")), "hold", True, "admin key"),
    # --- claims ---
    ("minted by a rotation a live runner owns", stray(OTHER_ENTRY, purpose=Purpose.ORPHAN),
     evidence(claims=(LiveClaim("batch", "1234abcd" + "0" * 24, "runner-2", NOW + timedelta(minutes=5)),)),
     "hold", True, "runner-2 still owns"),
    ("... unless the requester took that claim over", stray(OTHER_ENTRY, purpose=Purpose.ORPHAN, claim="1234abcd" + "0" * 24),
     evidence(claims=(LiveClaim("batch", "1234abcd" + "0" * 24, "me", NOW + timedelta(minutes=5)),)),
     "revoke", False, ""),
    ("an expired claim protects nothing", stray(OTHER_ENTRY, purpose=Purpose.ORPHAN),
     evidence(claims=(LiveClaim("batch", "1234abcd" + "0" * 24, "dead", NOW - timedelta(seconds=1)),)),
     "revoke", False, ""),
    # --- strays and age ---
    ("a stray old enough", stray(), evidence(), "revoke", False, ""),
    ("a stray that may come from an issue still in flight", stray(),
     evidence(in_flight_since=NOW - timedelta(hours=3)), "hold", True, "still be in flight"),
    ("a stray of unknown age", stray(KeyInfo("9", "web [r-deadbeef]", "57a7", None, None)),
     evidence(listing=Listing([OLD_ENTRY, KeyInfo("9", "web [r-deadbeef]", "57a7", None, None)])),
     "hold", True, "creation time is unknown"),
    ("a key a person chose in the review: no age rule", stray(purpose=Purpose.REVIEW),
     evidence(in_flight_since=NOW - timedelta(hours=3)), "revoke", False, ""),
    ("an entry whose id now shows another key", stray(KeyInfo("9", "x", "zzzz", None, None)), evidence(),
     "hold", False, "other last 4"),
    # --- compromised ---
    ("compromised: served or not, it goes", Request("web", Purpose.COMPROMISED, key=OLD),
     evidence(holders=(Holder("batch", "serves", "app:/b.json", "f-old", "0ld0"),),
              unknown=("secret x: unreadable",)), "revoke", False, ""),
    ("compromised, but the admin key: never", Request("web", Purpose.COMPROMISED, key=KeyRef("f-admin", "adm1", key_id="1")),
     evidence(), "hold", True, "admin key"),
]


@pytest.mark.parametrize("label, request_, evidence_, action, about_use, reason", CASES, ids=[c[0] for c in CASES])
def test_verdict(label, request_, evidence_, action, about_use, reason):
    verdict = judge(request_, evidence_)
    assert verdict.action == action, verdict
    assert verdict.reason and reason in verdict.reason
    if action == "hold":
        assert verdict.about_use is about_use
    if action == "revoke":
        assert verdict.key_id is not None


def test_several_look_alikes_are_revoked_by_value_only_when_the_value_is_held():
    twin = KeyInfo("70", "web (by hand)", "0ld0", None, None)
    listing = Listing([OLD_ENTRY, twin])
    ref = KeyRef("f-old", "0ld0", name="web (by hand)")
    held = judge(Request("web", Purpose.OLD, key=ref), evidence(listing=listing))
    assert held.hold and not held.about_use and "not guessing" in held.reason
    by_value = judge(Request("web", Purpose.OLD, key=ref, by_value=True), evidence(listing=listing))
    assert by_value.revoke and by_value.key_id is None and "by value" in by_value.reason
    # ... and what relies on the value itself still holds it (not what relies on a look-alike's id)
    served = judge(Request("web", Purpose.OLD, key=ref, by_value=True),
                   evidence(listing=listing, holders=(Holder("batch", "current", "record", "f-other", "0ld0", "70"),)))
    assert served.revoke
    served = judge(Request("web", Purpose.OLD, key=ref, by_value=True),
                   evidence(listing=listing, holders=(Holder("batch", "serves", "app:/b", "f-old", "0ld0"),)))
    assert served.hold and served.about_use


def test_rotation_tags_are_read_from_key_names():
    assert rotation_tag("web [r-7f3c2a1b]") == "7f3c2a1b"
    assert rotation_tag("web (by hand)") is None
    assert rotation_tag(None) is None


def test_the_gate_is_pure_and_repeatable():
    request, ev = old(), evidence(holders=(Holder("batch", "serves", "app:/b.json", "f-old", "0ld0"),))
    assert judge(request, ev) == judge(request, ev)


# --- the holder index: the same verdicts as looking at every holder -----------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from rotator.gate import holder_tokens, key_tokens  # noqa: E402

_IDS = st.sampled_from([None, "7", "8", "9", "1"])
_FPS = st.sampled_from([None, "f-old", "f-x", "f-admin"])
_LAST4 = st.sampled_from([None, "0ld0", "b8b8", "57a7", "adm1"])
_HOLDERS = st.lists(st.builds(Holder, secret=st.sampled_from(["web", "api", "batch"]),
                              role=st.sampled_from(["serves", "pending", "current", "previous"]),
                              where=st.just("app:x"), fingerprint=_FPS, last4=_LAST4, key_id=_IDS), max_size=8)
_REQUESTS = st.one_of(
    st.builds(lambda key, own: Request("web", Purpose.OLD, key=key, own=own),
              st.builds(KeyRef, fingerprint=st.sampled_from(["f-old", "f-x"]), last4=_LAST4, key_id=_IDS),
              st.sampled_from([frozenset(), frozenset({"previous"})])),
    st.builds(lambda entry, purpose: Request("web", purpose, entry=entry),
              st.sampled_from([OLD_ENTRY, OTHER_ENTRY, STRAY]), st.sampled_from([Purpose.STRAY, Purpose.ORPHAN])),
    st.builds(lambda last4: Request("web", Purpose.OLD, key=KeyRef("f-old", last4), by_value=True),
              st.sampled_from(["0ld0", "b8b8"])))


@settings(max_examples=400, deadline=None)
@given(holders=_HOLDERS, request_=_REQUESTS,
       twins=st.booleans())
def test_the_holder_index_gives_the_verdicts_of_every_holder(holders, request_, twins):
    """Evidence with ``holders_for`` (Usage's index: every holder of a secret that has a holder
    sharing a token with the key) judges exactly as Evidence listing every holder."""
    listing = Listing([OLD_ENTRY, OTHER_ENTRY, STRAY, ADMIN_ENTRY]
                      + ([KeyInfo("17", "web (twin)", "0ld0", None, None)] if twins else []))
    order = {name: i for i, name in enumerate(dict.fromkeys(h.secret for h in holders))}

    def holders_for(tokens):
        wanted = set(tokens)
        names = {h.secret for h in holders if wanted & set(holder_tokens(h))}
        return [h for h in holders if h.secret in names]      # (holders are grouped by secret below)

    holders = sorted(holders, key=lambda h: order[h.secret])
    every = judge(request_, evidence(listing=listing, holders=tuple(holders)))
    indexed = judge(request_, evidence(listing=listing, holders_for=holders_for))
    assert indexed == every
    assert set(key_tokens(OLD_ENTRY, OLD)) == {"fp:f-old", "id:7", "l4:0ld0"}
