"""QuivaIssuer against the QuivaWorks emulator, a real HTTP server on a loopback port.

The emulator and the issuer share one FakeClock; back-off waits go to a RecordingSleep that
advances that clock, so no test waits in real time.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from providers.quiva.emulator import Emulator
from providers.quiva.issuer import QuivaIssuer, match_issued
from rotator.errors import IssuerPermissionError, KeyNotFound
from rotator.testing import FakeClock, RecordingSleep, provider_context

USER = "svc-prod@example.com"
SESSION_TTL = timedelta(minutes=5)


@pytest.fixture(scope="module")
def clock() -> FakeClock:
    """Module-scoped (overrides tests/conftest.py's): shared by this module's emulator and issuers."""
    return FakeClock()


@pytest.fixture(scope="module")
def short_session_emulator(clock):
    """A private emulator whose sessions expire after SESSION_TTL on the shared FakeClock."""
    emu = Emulator(port=0, clock=clock, session_ttl=SESSION_TTL).start()
    yield emu
    emu.stop()


@pytest.fixture
def emu(short_session_emulator):
    short_session_emulator.reset()
    yield short_session_emulator
    short_session_emulator.reset()


@pytest.fixture
def sleep(clock) -> RecordingSleep:
    return RecordingSleep(clock)


@pytest.fixture
def calls() -> list[tuple[str, str, str]]:
    return []


@pytest.fixture
def issuer_for(emu, clock, sleep, calls):
    made: list[QuivaIssuer] = []

    def build(email: str = USER, role: str = "admin", **settings) -> QuivaIssuer:
        admin_key = emu.add_user(email, role=role)
        context = provider_context(clock=clock, sleep=sleep, environ={"QUIVA_API_KEY": admin_key},
                                   calls=calls)
        issuer = QuivaIssuer("quiva-prod", {"base_url": emu.url, **settings}, context)
        made.append(issuer)
        return issuer

    yield build
    for issuer in made:
        issuer.close()


@pytest.fixture
def issuer(issuer_for) -> QuivaIssuer:
    return issuer_for()


def test_full_lifecycle(emu, issuer):
    key = issuer.issue("prod-web · r-7f3c2a")
    assert emu.is_active(key.value.reveal())
    listing = issuer.list_keys()
    entry = match_issued(listing, key.name, key.value.last4, key.created_on)
    assert entry is not None and entry.account == USER
    assert entry.expires_on == key.expires_on and entry.created_on == key.created_on
    assert issuer.owner == USER
    assert issuer.verify(key.value) is True
    issuer.revoke(key_id=entry.key_id)
    assert not emu.is_active(key.value.reveal())
    assert issuer.verify(key.value) is False
    with pytest.raises(KeyNotFound):
        issuer.revoke(key_id=entry.key_id)


def test_revoke_by_value(emu, issuer):
    key = issuer.issue("by-value r-1")
    issuer.revoke(value=key.value)
    assert not emu.is_active(key.value.reveal())
    assert issuer.find(key) is None


def test_verify_with_agents(emu, issuer_for):
    issuer = issuer_for(verify_with="agents")
    key = issuer.issue("agents r-1")
    assert issuer.verify(key.value) is True
    issuer.revoke(value=key.value)
    assert issuer.verify(key.value) is False
    assert emu.counters().get("GET /v1/agents") == 2


def test_survives_a_throttle_burst(emu, issuer, sleep):
    emu.faults.throttle_next(5, retry_after=2)
    key = issuer.issue("throttled r-1")
    assert emu.is_active(key.value.reveal())
    assert sleep.waits[:5] == [2] * 5                  # the server's retry_after, honoured
    assert all(w < 0.5 for w in sleep.waits[5:])       # later calls only paced at the learnt rate
    assert emu.counters()["status:429"] == 5


def test_survives_a_503_burst(emu, issuer, sleep, calls):
    issuer.list_keys()
    emu.faults.fail_next(3, 503)
    assert [k.name for k in issuer.list_keys()] == ["admin"]
    assert len(sleep.waits) == 3 and all(0 <= w <= 2 for w in sleep.waits)
    assert [outcome for _, op, outcome in calls if op == "list"] == ["200", "503", "503", "503", "200"]


def test_lost_issue_response_is_retried_and_mints_twice(emu, issuer):
    """Issue is not idempotent: the first POST mints a key but its response is lost (503 after
    the effect), so the retry mints a second key under the same name. The caller gets the
    second; the first is an orphan the engine recognises by its rotation-tagged name and
    revokes on its next sweep. match_issued still finds the right entry by last 4 + name."""
    emu.faults.fail_after_effect_next(1, 503, path="/accounts/api-key")
    key = issuer.issue("prod-web · r-lost")
    same_name = [k for k in emu.keys(USER) if k["name"] == "prod-web · r-lost"]
    assert len(same_name) == 2
    assert emu.counters()["POST /accounts/api-key"] == 2
    entry = issuer.find(key)
    assert entry is not None and entry.last4 == key.value.last4
    orphan = next(k for k in same_name if k["id"] != entry.key_id)
    issuer.revoke(key_id=orphan["id"])
    assert issuer.verify(key.value) is True


def test_expired_session_is_refreshed(emu, issuer, clock):
    issuer.list_keys()
    clock.advance(SESSION_TTL + timedelta(seconds=1))
    issuer.issue("after-expiry r-1")
    counters = emu.counters()
    assert counters["POST /accounts/refresh-token"] == 1
    assert counters["POST /accounts/auth-with-api-key"] == 1
    assert counters["status:401"] == 1


def test_viewer_cannot_issue(emu, issuer_for, sleep):
    issuer = issuer_for("viewer@example.com", role="viewer")
    with pytest.raises(IssuerPermissionError, match="issue"):
        issuer.issue("nope r-1")
    assert emu.counters()["POST /accounts/api-key"] == 1 and sleep.waits == []


def test_keys_are_user_scoped(emu, issuer_for):
    alice = issuer_for("alice@example.com")
    bob = issuer_for("bob@example.com")
    key = alice.issue("alice-app r-1")
    alice.list_keys()
    bob.list_keys()
    assert (alice.owner, bob.owner) == ("alice@example.com", "bob@example.com")
    assert bob.find(key) is None and alice.find(key) is not None
