"""QuivaIssuer against the QuivaWorks emulator, a real HTTP server on a loopback port.

The emulator and the issuer share one FakeClock; back-off waits go to a RecordingSleep that
advances that clock, so no test waits in real time — except the deadline tests at the end, whose
servers trickle their answers in real time (about 6 s in all).
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rotator_providers.quiva.answers import add_months
from rotator_providers.quiva.emulator import Emulator
from rotator_providers.quiva.issuer import QuivaIssuer, match_issued
from rotator.errors import (
    IssuerPermissionError,
    IssuerUnavailable,
    KeyNotFound,
    UnusableKey,
    UntrustedAnswer,
)
from rotator.models import Secret
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


# ---- what the issuer makes of answers that are not what the API documents -----------------

@pytest.mark.parametrize("mode", ["html", "not_json", "error_200", "empty", "data_type"])
def test_verify_never_reads_a_mangled_answer_as_success(emu, issuer, mode):
    key = issuer.issue("verify r-1")
    emu.faults.mangle_next(1, mode, path="/accounts/auth-with-api-key")
    with pytest.raises(UntrustedAnswer) as info:
        issuer.verify(key.value)
    assert "verify: POST /accounts/auth-with-api-key returned 200" in str(info.value)
    assert key.value.reveal() not in str(info.value)
    assert issuer.verify(key.value) is True                     # the next, honest answer


def test_verify_with_agents_never_reads_an_error_200_as_success(emu, issuer_for):
    issuer = issuer_for(verify_with="agents")
    key = issuer.issue("agents r-2")
    emu.faults.mangle_next(1, "error_200", path="/v1/agents")
    with pytest.raises(UntrustedAnswer, match="GET /v1/agents returned 200"):
        issuer.verify(key.value)


def test_an_issued_value_that_cannot_be_deployed_is_refused_with_its_name(emu, issuer):
    emu.faults.mangle_next(1, "swap_value", path="/accounts/api-key", value="ms-not a usable key")
    with pytest.raises(UnusableKey) as info:
        issuer.issue("prod-web [r-5a5a5a5a]")
    assert info.value.name == "prod-web [r-5a5a5a5a]"
    assert "ms-not a usable key" not in str(info.value)
    minted = [k for k in issuer.list_keys() if k.name == info.value.name]
    assert len(minted) == 1                                     # the caller can find and revoke it
    issuer.revoke(key_id=minted[0].key_id)


def test_an_absurd_issued_expiry_is_replaced_by_the_documented_lifetime(emu, issuer, clock):
    emu.faults.mangle_next(1, "set", path="/accounts/api-key", field="expires_on", value="9999-12-31T00:00:00Z")
    key = issuer.issue("absurd r-1")
    assert key.expires_on == add_months(key.created_on, 3)
    assert "expires_on 9999-12-31 is implausible" in key.note


@pytest.mark.parametrize("mode, extra, problem", [
    ("duplicate_entry", {"index": 0}, "appears twice"),
    ("set", {"field": "id", "value": None, "index": 1}, "entry 1: id is null"),
    ("set", {"field": "last_4_characters", "value": "abcde", "index": 0}, "entry 0: last_4_characters has 5"),
    ("foreign_id", {"index": 0}, "appears twice"),
])
def test_a_contradictory_listing_reports_its_problems(emu, issuer, mode, extra, problem):
    issuer.issue("one r-1")
    emu.faults.mangle_next(1, mode, path="/accounts/api-keys", **extra)
    listing = issuer.list_keys()
    assert not listing.usable and any(problem in p for p in listing.problems)
    assert issuer.list_keys().usable                            # the next, honest listing


@pytest.mark.parametrize("mode", ["html", "error_200", "data_type", "empty"])
def test_a_listing_that_is_not_the_documented_shape_is_untrusted(emu, issuer, mode):
    emu.faults.mangle_next(1, mode, path="/accounts/api-keys")
    with pytest.raises(UntrustedAnswer, match="GET /accounts/api-keys returned 200"):
        issuer.list_keys()


@pytest.mark.parametrize("mode, message", [("new", "did not end after 5 pages"),
                                           ("repeat", "next cursor repeats")])
def test_endless_pages_are_not_a_complete_listing(emu, issuer_for, mode, message):
    issuer = issuer_for(max_pages=5)
    emu.faults.endless_pages(mode)
    with pytest.raises(UntrustedAnswer, match=message):
        issuer.list_keys()
    emu.faults.endless_pages(None)
    assert issuer.list_keys().usable


def test_a_listed_expiry_beyond_the_lifetime_is_capped(emu, issuer):
    key = issuer.issue("capped r-1")
    emu.faults.mangle_next(1, "set", path="/accounts/api-keys", field="expires_on", value="2030-01-01T00:00:00Z")
    [entry] = [k for k in issuer.list_keys() if k.name == "capped r-1"]
    assert entry.expires_on == key.expires_on
    assert entry.note.startswith("reported expires_on 2030-01-01; planning with created_on + 3 months")


def test_a_revoke_answer_is_not_proof(emu, issuer):
    key = issuer.issue("lied-to r-1")
    entry = issuer.find(key)
    emu.faults.lying_deletes(1, "ok")
    issuer.revoke(key_id=entry.key_id)                          # 200, yet nothing was deleted
    assert issuer.find(key) is not None                         # only a listing tells


# ---- every wait has a deadline (real time) -------------------------------------------------

class _Trickler(BaseHTTPRequestHandler):
    """Answers every request with a 200 whose headers or body arrive one byte every 0.1 s."""

    protocol_version = "HTTP/1.1"
    mode = "body"
    stop = threading.Event()

    def _answer(self) -> None:
        self.server.requests += 1
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b'{"data": {"auth_token": "t", "refresh_token": "r"}}'.ljust(100)
        head = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body))
        slow, fast = (head, b"") if self.mode == "headers" else (b"", head)
        try:
            self.wfile.write(fast)
            for byte in (slow + body if self.mode == "headers" else body):
                if self.stop.wait(0.1):
                    return
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
        except OSError:
            return                                   # the client left: that is the point

    do_GET = do_POST = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def trickler():
    def start(mode: str) -> ThreadingHTTPServer:
        handler = type("Handler", (_Trickler,), {"mode": mode, "stop": threading.Event()})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        server.requests = 0
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        started.append(server)
        return server

    started: list[ThreadingHTTPServer] = []
    yield start
    for server in started:
        server.RequestHandlerClass.stop.set()
        server.shutdown()
        server.server_close()


def _slow_issuer(server: ThreadingHTTPServer, **settings) -> QuivaIssuer:
    context = provider_context(clock=FakeClock(), sleep=RecordingSleep(), environ={"QUIVA_API_KEY": "k" * 16})
    host, port = server.server_address
    return QuivaIssuer("quiva-slow", {"base_url": f"http://{host}:{port}", **settings}, context)


def test_a_trickled_body_cannot_stretch_an_attempt_beyond_its_timeout(trickler):
    """Per-read timeouts never fire on a body arriving one byte every 0.1 s (10 s for 100
    bytes); the deadline ends each attempt after 1 s, so 3 tries give up after about 3 s."""
    server = trickler("body")
    issuer = _slow_issuer(server, timeout="1s", retries=3)
    started = time.monotonic()
    with pytest.raises(IssuerUnavailable) as info:
        issuer.verify(Secret("ms-0123456789abcdef"))
    elapsed = time.monotonic() - started
    issuer.close()
    assert 2.9 <= elapsed < 4.0, elapsed
    assert server.requests == 3
    assert "failed (no complete answer within 1s) after 3 tries" in str(info.value)


def test_trickled_headers_cannot_stretch_an_attempt_either(trickler):
    server = trickler("headers")
    issuer = _slow_issuer(server, timeout="0.5s", retries=2)
    started = time.monotonic()
    with pytest.raises(IssuerUnavailable):
        issuer.verify(Secret("ms-0123456789abcdef"))
    assert 0.9 <= time.monotonic() - started < 1.8
    issuer.close()


def test_a_deadline_missed_on_issue_leaves_doubt(emu, issuer_for, calls):
    """The emulator trickles the first issue reply after minting the key: the retry mints a
    second one, and the issuer says a twin may exist."""
    issuer = issuer_for(timeout="0.5s")
    issuer.list_keys()
    emu.faults.trickle_next(1, bytes_per_second=20, path="/accounts/api-key")
    key = issuer.issue("trickled r-1")
    assert key.maybe_twinned is True
    assert [outcome for _, op, outcome in calls if op == "issue"] == ["error", "200"]
    assert len([k for k in issuer.list_keys() if k.name == "trickled r-1"]) == 2
