"""The Issuer contract (rotator/interfaces.py), run against every issuer implementation.

To add an implementation: write a ``<param>_issuer`` fixture below that yields a fresh, working
issuer against a real (or server-mode emulated) service, and add ``<param>`` to ``ISSUERS``.
"""

from __future__ import annotations

import uuid
from dataclasses import astuple
from datetime import timedelta

import pytest

from rotator.errors import KeyNotFound, RotatorError
from rotator.interfaces import Issuer
from rotator.models import IssuedKey, KeyInfo, Listing, Secret
from rotator.testing import RecordingSleep, provider_context

ISSUERS = ["quivaworks"]


# ---- implementations --------------------------------------------------------------------

@pytest.fixture(scope="module")
def quiva_emulator():
    from rotator_providers.quiva.emulator import Emulator

    emu = Emulator(port=0).start()
    yield emu
    emu.stop()


@pytest.fixture
def quivaworks_issuer(quiva_emulator):
    from rotator_providers.quiva.issuer import QuivaIssuer

    quiva_emulator.reset()
    admin_key = quiva_emulator.add_user("contract@example.com", role="admin")
    # The issuer checks the dates it is given against its clock: it must read the API's time.
    context = provider_context(clock=quiva_emulator.clock, sleep=RecordingSleep(),
                               environ={"QUIVA_API_KEY": admin_key})
    issuer = QuivaIssuer("contract-quiva", {"base_url": quiva_emulator.url}, context)
    yield issuer
    issuer.close()
    quiva_emulator.reset()


@pytest.fixture(params=ISSUERS)
def issuer(request) -> Issuer:
    return request.getfixturevalue(f"{request.param}_issuer")


# ---- helpers ----------------------------------------------------------------------------

def fresh_name() -> str:
    return f"contract r-{uuid.uuid4().hex[:8]}"


def listed(issuer: Issuer, key: IssuedKey) -> KeyInfo:
    """The listing entry of ``key``: by id when the issuer returned one, else name + last 4."""
    if key.key_id:
        matches = [k for k in issuer.list_keys() if k.key_id == key.key_id]
    else:
        matches = [k for k in issuer.list_keys()
                   if k.name == key.name and k.last4 == key.value.last4]
    assert len(matches) == 1, f"expected one listing entry for {key.name}, got {len(matches)}"
    return matches[0]


def text_of(*things: object) -> str:
    return "\n".join(f"{t}\n{t!r}" for t in things)


# ---- the contract -----------------------------------------------------------------------

def test_issue_returns_a_value_and_the_listing_never_does(issuer):
    key = issuer.issue(fresh_name())
    assert isinstance(key, IssuedKey) and isinstance(key.value, Secret)
    assert key.value.reveal()
    assert key.expires_on > key.created_on
    assert key.value.reveal() not in text_of(key, key.value)
    listing = issuer.list_keys()
    assert listing and all(isinstance(k, KeyInfo) for k in listing)
    for entry in listing:
        assert key.value.reveal() not in text_of(entry, *astuple(entry))


def test_each_issue_mints_a_distinct_value(issuer):
    name = fresh_name()
    first, second = issuer.issue(name), issuer.issue(name)
    assert first.value != second.value


def test_listed_entry_matches_the_issued_key(issuer):
    key = issuer.issue(fresh_name())
    entry = listed(issuer, key)
    assert (entry.name, entry.last4) == (key.name, key.value.last4)
    assert entry.key_id
    if entry.expires_on is not None:
        assert abs(entry.expires_on - key.expires_on) <= timedelta(seconds=5)


def test_verify_accepts_a_live_key_and_refuses_a_revoked_one(issuer):
    key = issuer.issue(fresh_name())
    assert issuer.verify(key.value) is True
    issuer.revoke(key_id=listed(issuer, key).key_id)
    assert issuer.verify(key.value) is False


def test_revoke_by_id_removes_the_key_from_the_listing(issuer):
    key = issuer.issue(fresh_name())
    entry = listed(issuer, key)
    issuer.revoke(key_id=entry.key_id)
    assert all(k.key_id != entry.key_id for k in issuer.list_keys())


def test_revoking_an_already_revoked_key_raises_key_not_found(issuer):
    key = issuer.issue(fresh_name())
    key_id = listed(issuer, key).key_id
    issuer.revoke(key_id=key_id)
    with pytest.raises(KeyNotFound):
        issuer.revoke(key_id=key_id)


def test_revoke_by_value_when_supported(issuer):
    if not issuer.capabilities.revoke_by_value:
        pytest.skip(f"{issuer.name} cannot revoke by value")
    key = issuer.issue(fresh_name())
    issuer.revoke(value=key.value)
    assert issuer.verify(key.value) is False
    with pytest.raises(KeyNotFound):
        issuer.revoke(value=key.value)


def test_owner_is_known_after_a_call(issuer):
    issuer.issue(fresh_name())
    issuer.list_keys()
    assert isinstance(issuer.owner, str) and issuer.owner


def test_no_value_in_any_error_message(issuer):
    key = issuer.issue(fresh_name())
    key_id = listed(issuer, key).key_id
    issuer.revoke(key_id=key_id)
    errors: list[RotatorError] = []
    attempts = [lambda: issuer.revoke(key_id=key_id), lambda: issuer.revoke(key_id="no-such-key")]
    if issuer.capabilities.revoke_by_value:
        attempts.append(lambda: issuer.revoke(value=key.value))
    for attempt in attempts:
        try:
            attempt()
        except RotatorError as exc:
            errors.append(exc)
    assert len(errors) == len(attempts), "revoking a gone key must raise a RotatorError"
    for exc in errors:
        assert key.value.reveal() not in text_of(exc, *exc.args)


def test_a_healthy_issuer_gives_a_usable_listing_of_checked_entries(issuer):
    issuer.issue(fresh_name())
    listing = issuer.list_keys()
    assert isinstance(listing, Listing) and listing.usable and listing.problems == ()
    ids = [k.key_id for k in listing]
    assert len(ids) == len(set(ids))
    for entry in listing:
        assert isinstance(entry.key_id, str) and entry.key_id and len(entry.last4) == 4
        assert entry.note is None                  # a truthful service needs no repair


def test_an_issued_key_has_trusted_dates(issuer):
    key = issuer.issue(fresh_name())
    assert key.created_on.tzinfo is not None and key.expires_on.tzinfo is not None
    assert key.created_on < key.expires_on <= key.created_on + timedelta(days=366)
    assert key.note is None


def test_verify_refuses_a_value_never_issued(issuer):
    assert issuer.verify(Secret("ms-" + uuid.uuid4().hex)) is False


def test_close_is_safe_twice(issuer):
    issuer.list_keys()
    issuer.close()
    issuer.close()
