"""QuivaWorks client and issuer over a scripted API (``FakeApi``, answering httpx.Request objects
with httpx.Response objects, reached through ``FakeWire``): retries, session, settings, the checks
on every answer, leaks.

No sockets and no real waits: ``RecordingSleep`` captures every back-off. (The real wire — urllib3,
its failures, and the per-attempt deadline against a server that trickles — is proven over real
sockets in tests/integration/test_quiva_issuer.py.) The parsers themselves: tests/unit/test_quiva_answers.py.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter, defaultdict, deque
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any, Callable

import httpx
import pytest

from rotator_providers.quiva import wire
from rotator_providers.quiva.issuer import QuivaIssuer, match_issued
from rotator.errors import (
    ConfigError,
    IssuerAuthError,
    IssuerError,
    IssuerPermissionError,
    IssuerUnavailable,
    KeyNotFound,
    RateLimited,
    RotatorError,
    UnusableKey,
    UntrustedAnswer,
)
from rotator.models import KeyInfo, Listing, Secret
from rotator.testing import FakeClock, RecordingSleep, provider_context

ADMIN_KEY = "ms-0123456789abcdef0123456789admin"
ISSUED_KEY = "ms-fedcba9876543210fedcba98765c0de"
ISSUE = "POST /accounts/api-key"
LIST = "GET /accounts/api-keys"
DELETE = "DELETE /accounts/api-key"
AUTH = "POST /accounts/auth-with-api-key"
REFRESH = "POST /accounts/refresh-token"

Reply = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


def reply(status: int, body: Any = None, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json={} if body is None else body, headers=headers)


def raw(status: int, content: str, content_type: str = "text/html") -> httpx.Response:
    return httpx.Response(status, content=content.encode(), headers={"Content-Type": content_type})


HTML = "<html><body><h1>Welcome to the proxy</h1></body></html>"


def error(status: int, name: str, **extra: Any) -> httpx.Response:
    return reply(status, {"error": name, "message": "details", **extra})


def listing_entry(**overrides: Any) -> dict[str, Any]:
    entry = {"id": "k1", "name": "prod-web r-1", "last_4_characters": ISSUED_KEY[-4:],
             "created_on": "2026-01-01T00:00:00.000Z", "expires_on": "2026-04-01T00:00:00.000Z",
             "account": "svc@example.com"}
    return {**entry, **overrides}


class FakeApi:
    """A scripted QuivaWorks: sessions are tracked, routes answer from per-route queues."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.count: Counter[str] = Counter()
        self.queues: dict[str, deque[Reply]] = defaultdict(deque)
        self.valid: set[str] = set()
        self._tokens = 0
        self._lock = threading.Lock()

    def queue(self, route: str, *replies: Reply) -> None:
        self.queues[route].extend(replies)

    def new_pair(self) -> httpx.Response:
        with self._lock:
            self._tokens += 1
            token = f"tok-{self._tokens}"
            self.valid.add(token)
        return reply(200, {"data": {"auth_token": token, "refresh_token": f"re-{token}",
                                    "passkey_enabled": False, "totp_enabled": False}})

    def __call__(self, request: httpx.Request) -> httpx.Response:
        route = f"{request.method} {request.url.path}"
        with self._lock:
            self.requests.append(request)
            self.count[route] += 1
            scripted = self.queues[route].popleft() if self.queues[route] else None
        if isinstance(scripted, Exception):
            raise scripted
        if callable(scripted) and not isinstance(scripted, httpx.Response):
            return scripted(request)
        if scripted is not None:
            return scripted
        if route in (AUTH, REFRESH):
            return self.new_pair()
        if route == "GET /v1/agents":
            return reply(200, {"data": []})
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token not in self.valid:
            return error(401, "Invalid API key")
        if route == ISSUE:
            name = json.loads(request.content)["key_name"]
            return reply(200, {"data": {"key": ISSUED_KEY, "name": name,
                                        "created_on": "2026-01-01T00:00:00.000Z",
                                        "expires_on": "2026-04-01T00:00:00.000Z", "creds": "c"}})
        if route == LIST:
            return reply(200, {"data": [listing_entry()]})
        if route == DELETE:
            return reply(200, {"data": listing_entry()})
        return error(404, "Not found")


class FakeWire:
    """The network of these tests: each request, as :func:`wire.build` made it, goes to the
    scripted API as an ``httpx.Request``; its ``httpx.Response`` comes back as a ``wire.Reply``.
    A scripted exception (``wire.Failed``, or anything else) is raised as a wire would raise it."""

    def __init__(self, api: FakeApi, base_url: str = "https://quiva.test") -> None:
        self.api = api
        self.base_url = base_url

    def exchange(self, request: wire.Request, deadline: float) -> wire.Reply:
        answer = self.api(httpx.Request(request.method, self.base_url + request.target,
                                        headers=dict(request.headers), content=request.body))
        content = answer.read()
        return wire.Reply(answer.status_code, content if len(content) <= wire.MAX_BODY else None,
                          answer.headers.get("Retry-After"))

    def close(self) -> None:
        pass


REFUSED = wire.Failed("could not connect", sent=False)
CONNECT_TIMEOUT = wire.Failed("connect timed out", sent=False)
READ_TIMEOUT = wire.Failed("read timed out", sent=True)
DROPPED = wire.Failed("the connection dropped", sent=True)


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sleep(clock) -> RecordingSleep:
    """Records each wait and moves the fake clock by it, as a real sleep moves time: the pace a
    429 sets is kept on this clock, so a retry after ``retry_after`` finds its turn free."""
    return RecordingSleep(clock)


@pytest.fixture
def calls() -> list[tuple[str, str, str]]:
    return []


@pytest.fixture
def environ() -> dict[str, str]:
    return {"QUIVA_API_KEY": ADMIN_KEY}


@pytest.fixture
def make(api, clock, sleep, calls, environ):
    made: list[QuivaIssuer] = []

    def build(**settings: Any) -> QuivaIssuer:
        context = provider_context(clock=clock, sleep=sleep, environ=environ, calls=calls)
        issuer = QuivaIssuer("quiva-test", {"base_url": "https://quiva.test", **settings}, context,
                             wire=FakeWire(api))
        made.append(issuer)
        return issuer

    yield build
    for issuer in made:
        issuer.close()


# ---- rate limits --------------------------------------------------------------------------

def test_429_body_retry_after_is_honoured(api, make, sleep):
    api.queue(ISSUE, error(429, "Rate limit exceeded", retry_after=7))
    key = make().issue("prod-web r-1")
    assert key.value.reveal() == ISSUED_KEY
    assert sleep.waits == [7]
    assert api.count[ISSUE] == 2


def test_429_retry_after_header_in_seconds_is_honoured(api, make, sleep):
    api.queue(LIST, reply(429, {"error": "Rate limit exceeded"}, {"Retry-After": "3"}))
    assert len(make().list_keys()) == 1
    assert sleep.waits == [3]


def test_429_retry_after_header_as_http_date_is_honoured(api, make, sleep, clock):
    when = format_datetime(clock.now() + timedelta(seconds=12), usegmt=True)
    api.queue(LIST, reply(429, {"error": "Rate limit exceeded"}, {"Retry-After": when}))
    make().list_keys()
    assert sleep.waits == [12]


def test_server_imposed_wait_is_capped_by_max_retry_wait(api, make, sleep):
    api.queue(LIST, error(429, "Rate limit exceeded", retry_after=3600))
    make(max_retry_wait="30s").list_keys()
    assert sleep.waits == [30]


def test_burst_of_429s_then_success(api, make, sleep):
    api.queue(ISSUE, *[error(429, "Rate limit exceeded", retry_after=1) for _ in range(5)])
    key = make(retries=6).issue("prod-web r-1")
    assert key.name == "prod-web r-1"
    assert sleep.waits == [1] * 5
    assert api.count[ISSUE] == 6


def test_429_without_a_hint_backs_off_with_jitter(api, make, sleep):
    api.queue(LIST, *[error(429, "Rate limit exceeded") for _ in range(3)])
    make().list_keys()
    assert len(sleep.waits) == 3
    assert all(0 <= w <= 0.5 * 2 ** n for n, w in enumerate(sleep.waits))


def test_429s_outlasting_the_budget_raise_rate_limited(api, make, sleep):
    api.queue(ISSUE, *[error(429, "Rate limit exceeded", retry_after=2) for _ in range(10)])
    with pytest.raises(RateLimited) as info:
        make(retries=4).issue("prod-web r-1")
    assert info.value.transient is True
    assert info.value.retry_after == 2
    assert api.count[ISSUE] == 4
    assert sleep.waits == [2, 2, 2]
    assert "quiva-test" in str(info.value) and "429" in str(info.value)


# ---- 5xx, timeouts, connection errors -----------------------------------------------------

def test_5xx_then_success_with_bounded_jittered_waits(api, make, sleep):
    api.queue(LIST, *[error(503, "Service unavailable") for _ in range(5)])
    assert len(make(retries=6).list_keys()) == 1
    assert len(sleep.waits) == 5
    # RetryPolicy defaults: base 0.5 s, cap 30 s; the n-th wait is drawn from [0, base * 2**n].
    assert all(0 <= w <= min(30.0, 0.5 * 2 ** n) for n, w in enumerate(sleep.waits))


def test_5xx_outlasting_the_budget_raise_issuer_unavailable(api, make, sleep):
    api.queue(LIST, *[error(502, "Bad gateway") for _ in range(10)])
    with pytest.raises(IssuerUnavailable) as info:
        make(retries=3).list_keys()
    assert info.value.transient is True
    assert not isinstance(info.value, RateLimited)
    assert api.count[LIST] == 3 and len(sleep.waits) == 2
    assert "GET /accounts/api-keys returned 502 (Bad gateway)" in str(info.value)


@pytest.mark.parametrize("exc", [REFUSED, READ_TIMEOUT])
def test_transport_errors_are_retried_then_unavailable(api, make, sleep, calls, exc):
    api.queue(LIST, *[exc] * 10)
    with pytest.raises(IssuerUnavailable) as info:
        make(retries=3).list_keys()
    assert info.value.transient is True
    assert f"failed ({exc.reason}) after 3 tries" in str(info.value)
    assert [c for c in calls if c[1] == "list"] == [("quiva-test", "list", "error")] * 3


def test_transport_error_then_success(api, make, sleep):
    api.queue(LIST, REFUSED)
    assert len(make().list_keys()) == 1
    assert len(sleep.waits) == 1


# ---- may a retried issue have minted a twin? ---------------------------------------------

@pytest.mark.parametrize("first, twinned", [
    (None, False),                                        # the first reply came back
    (error(429, "Rate limit exceeded", retry_after=1), False),   # refused: nothing was done
    (error(401, "Invalid API key"), False),               # refused; the session is renewed
    (REFUSED, False),                                     # never reached the server
    (CONNECT_TIMEOUT, False),
    (error(503, "Unavailable"), True),                    # the server may have acted first
    (READ_TIMEOUT, True),                                 # the reply was lost
    (DROPPED, True),
    (OSError("a wire's own failure"), True),              # not a wire.Failed: may have been sent
])
def test_an_issue_says_whether_a_retry_may_have_minted_a_twin(api, make, first, twinned):
    issuer = make()
    issuer.list_keys()                                     # a session first, so a 401 is the issue's
    if first is not None:
        api.queue(ISSUE, first)
    key = issuer.issue("prod-web r-1")
    assert key.maybe_twinned is twinned
    assert api.count[ISSUE] == (1 if first is None else 2)


# ---- other statuses ---------------------------------------------------------------------

def test_403_is_not_retried(api, make, sleep):
    api.queue(ISSUE, error(403, "Insufficient permissions"))
    with pytest.raises(IssuerPermissionError) as info:
        make().issue("prod-web r-1")
    assert api.count[ISSUE] == 1 and sleep.waits == []
    assert info.value.transient is False
    message = str(info.value)
    assert "issue" in message and "Insufficient permissions" in message and "403" in message


def test_other_4xx_is_an_issuer_error_naming_the_status(api, make, sleep):
    api.queue(ISSUE, error(400, "key_name is required"))
    with pytest.raises(IssuerError) as info:
        make().issue("x")
    assert type(info.value) is IssuerError
    assert "400" in str(info.value) and sleep.waits == []


def test_404_on_delete_is_key_not_found(api, make):
    api.queue(DELETE, error(404, "Not found"))
    with pytest.raises(KeyNotFound) as info:
        make().revoke(key_id="k1")
    assert "404" in str(info.value)


def test_404_elsewhere_is_not_key_not_found(api, make):
    api.queue(LIST, error(404, "Not found"))
    with pytest.raises(IssuerError) as info:
        make().list_keys()
    assert not isinstance(info.value, KeyNotFound)


# ---- session ----------------------------------------------------------------------------

def test_authentication_is_lazy_and_reused(api, make):
    issuer = make()
    assert api.requests == []
    issuer.list_keys()
    issuer.list_keys()
    assert api.count[AUTH] == 1
    sent = json.loads(api.requests[0].content)
    assert sent == {"api_key": ADMIN_KEY}
    assert api.requests[1].headers["Authorization"] == "Bearer tok-1"


def test_401_refreshes_then_succeeds(api, make):
    issuer = make()
    issuer.list_keys()
    api.valid.discard("tok-1")                     # the session expired
    assert len(issuer.list_keys()) == 1
    assert (api.count[AUTH], api.count[REFRESH]) == (1, 1)
    refresh = json.loads(next(r for r in api.requests if r.url.path.endswith("refresh-token")).content)
    assert refresh == {"auth_token": "tok-1", "refresh_token": "re-tok-1"}
    assert api.requests[-1].headers["Authorization"] == "Bearer tok-2"


def test_401_refresh_fails_then_reauthenticates(api, make, calls):
    issuer = make()
    issuer.list_keys()
    api.valid.discard("tok-1")
    api.queue(REFRESH, error(401, "Invalid API key"))
    assert len(issuer.list_keys()) == 1
    assert (api.count[AUTH], api.count[REFRESH]) == (2, 1)
    ops = [(op, outcome) for _, op, outcome in calls]
    assert ops == [("auth", "200"), ("list", "200"), ("list", "401"), ("refresh", "401"),
                   ("auth", "200"), ("list", "200")]


def test_401_after_refresh_reauthenticates_once_more(api, make):
    issuer = make()
    issuer.list_keys()
    api.valid.discard("tok-1")
    api.queue(LIST, error(401, "Invalid API key"), error(401, "Invalid API key"))
    assert len(issuer.list_keys()) == 1
    assert (api.count[AUTH], api.count[REFRESH], api.count[LIST]) == (2, 1, 4)


def test_reauthentication_refused_raises_issuer_auth_error(api, make, sleep):
    issuer = make()
    issuer.list_keys()
    api.valid.discard("tok-1")
    api.queue(REFRESH, error(401, "Invalid API key"))
    api.queue(AUTH, error(401, "Invalid API key"), error(401, "Invalid API key"))
    with pytest.raises(IssuerAuthError) as info:
        issuer.list_keys()
    message = str(info.value)
    assert "quiva-test" in message and "401" in message
    assert ADMIN_KEY not in message and ADMIN_KEY not in repr(info.value)
    assert info.value.transient is False


def test_persistent_401_gives_up_after_refresh_and_reauth(api, make):
    issuer = make()
    api.queue(LIST, *[error(401, "Invalid API key")] * 5)
    with pytest.raises(IssuerAuthError):
        issuer.list_keys()
    assert (api.count[LIST], api.count[REFRESH], api.count[AUTH]) == (3, 1, 2)


def test_first_authentication_refused(api, make, sleep):
    api.queue(AUTH, error(401, "Invalid API key"), error(401, "Invalid API key"))
    with pytest.raises(IssuerAuthError) as info:
        make().issue("x")
    assert "admin key was refused" in str(info.value) and "401 twice" in str(info.value)
    assert api.count[ISSUE] == 0 and api.count[AUTH] == 2
    assert len(sleep.waits) == 1 and 0 <= sleep.waits[0] <= 0.5


def test_one_401_on_the_admin_sign_in_is_tried_again_after_a_back_off(api, make, sleep, environ):
    """A just-rotated admin key may not be known to every server yet: one refusal is retried
    (through the injected sleep, with the admin key resolved again), a second is final."""
    api.queue(AUTH, error(401, "Invalid API key"))
    key = make().issue("prod-web r-1")
    assert key.name == "prod-web r-1"
    assert api.count[AUTH] == 2 and len(sleep.waits) == 1


def test_a_sign_in_answer_without_a_token_pair_is_untrusted(api, make):
    api.queue(AUTH, reply(200, {"data": {"auth_token": "tok-x", "refresh_token": ""}}))
    with pytest.raises(UntrustedAnswer) as info:
        make().list_keys()
    assert info.value.transient is True
    assert "POST /accounts/auth-with-api-key returned 200" in str(info.value)
    assert "data.refresh_token is an empty string" in str(info.value)
    assert "tok-x" not in str(info.value)
    assert api.count[LIST] == 0


def test_a_refresh_answer_without_a_token_pair_leads_to_a_new_sign_in(api, make):
    issuer = make()
    issuer.list_keys()
    api.valid.discard("tok-1")
    api.queue(REFRESH, raw(200, HTML))
    assert len(issuer.list_keys()) == 1
    assert (api.count[AUTH], api.count[REFRESH]) == (2, 1)


def _lister(issuer: QuivaIssuer, results: list[Any]) -> Callable[[], None]:
    """A thread body: list the keys, record the count (or the error) in ``results``."""
    def work() -> None:
        try:
            results.append(len(issuer.list_keys()))
        except Exception as exc:  # noqa: BLE001 - reported through the callers' assertions
            results.append(exc)
    return work


def test_concurrent_401s_cause_a_single_refresh(api, make):
    issuer = make()
    issuer.list_keys()
    barrier = threading.Barrier(8, timeout=5)

    def expired(request: httpx.Request) -> httpx.Response:
        barrier.wait()                              # all 8 hold the old token when refused
        return error(401, "Invalid API key")

    api.valid.discard("tok-1")
    api.queue(LIST, *[expired] * 8)
    results: list[Any] = []
    work = _lister(issuer, results)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == [1] * 8
    assert api.count[REFRESH] == 1 and api.count[AUTH] == 1


def test_after_an_idle_gap_one_call_tests_the_session_and_the_others_wait(api, make, clock):
    """Session lifetimes are unknown. After a gap longer than CONFIRM_AFTER the first call goes
    alone; if its token was refused, the others use the renewed one: one 401 in all, not one per
    worker (7 of 12 rotations drew a 401 after the 49 h grace in the benchmark before)."""
    from rotator_providers.quiva.client import CONFIRM_AFTER

    issuer = make()
    issuer.list_keys()
    clock.advance(timedelta(seconds=CONFIRM_AFTER + 1))
    api.valid.discard("tok-1")                      # the session expired during the gap
    probe_sent, release = threading.Event(), threading.Event()

    def expired(request: httpx.Request) -> httpx.Response:
        probe_sent.set()
        release.wait(5)
        return error(401, "Invalid API key")

    api.queue(LIST, expired)
    results: list[Any] = []
    work = _lister(issuer, results)

    first = threading.Thread(target=work)
    first.start()
    assert probe_sent.wait(5)
    others = [threading.Thread(target=work) for _ in range(7)]
    for t in others:
        t.start()
    time.sleep(0.2)                                 # room for a broken gate to let them through
    release.set()
    for t in [first, *others]:
        t.join(10)
    assert results == [1] * 8
    refused = [r for r in api.requests if r.url.path == "/accounts/api-keys"
               and r.headers["Authorization"] == "Bearer tok-1"]
    assert len(refused) == 2                        # the first listing, and the lone probe
    assert (api.count[REFRESH], api.count[AUTH], api.count[LIST]) == (1, 1, 10)


def test_a_failed_probe_lets_the_next_call_test_the_session(api, make, clock, sleep):
    from rotator_providers.quiva.client import CONFIRM_AFTER

    issuer = make(retries=2)
    issuer.list_keys()
    clock.advance(timedelta(seconds=CONFIRM_AFTER + 1))
    api.queue(LIST, error(503, "Unavailable"), error(503, "Unavailable"))
    with pytest.raises(IssuerUnavailable):
        issuer.list_keys()
    assert len(issuer.list_keys()) == 1             # not stuck behind a probe that never ended


def test_admin_key_is_resolved_lazily_and_again_on_reauth(api, make, environ):
    environ.clear()
    issuer = make()                                   # no variable yet: construction still fine
    environ["QUIVA_API_KEY"] = ADMIN_KEY
    issuer.list_keys()
    environ["QUIVA_API_KEY"] = ADMIN_KEY + "2"        # the admin key was rotated meanwhile
    api.valid.clear()
    api.queue(REFRESH, error(401, "Invalid API key"))
    issuer.list_keys()
    auths = [json.loads(r.content)["api_key"] for r in api.requests
             if r.url.path == "/accounts/auth-with-api-key"]
    assert auths == [ADMIN_KEY, ADMIN_KEY + "2"]


def test_missing_admin_key_variable_is_a_config_error_at_first_call(api, make, environ):
    environ.clear()
    with pytest.raises(ConfigError, match=r"issuers\.quiva-test\.admin_key"):
        make().list_keys()
    assert api.requests == []


# ---- settings ---------------------------------------------------------------------------

def test_literal_admin_key_is_refused(api, make):
    with pytest.raises(ConfigError) as info:
        make(admin_key=ADMIN_KEY)
    assert "issuers.quiva-test.admin_key" in str(info.value)
    assert ADMIN_KEY not in str(info.value)
    assert api.requests == []


def test_unknown_setting_is_named(make):
    with pytest.raises(ConfigError, match=r"issuers\.quiva-test\.bogus: unknown field"):
        make(bogus=1)


@pytest.mark.parametrize("field,value", [("timeout", "soon"), ("max_retry_wait", "5 parsecs"),
                                         ("retries", 0), ("verify_with", "magic"),
                                         ("base_url", "ftp://x"), ("admin_key", {"env": "A", "file": "b"}),
                                         ("key_lifetime_months", 0), ("max_pages", 0)])
def test_bad_settings_name_their_field(make, field, value):
    with pytest.raises(ConfigError, match=rf"issuers\.quiva-test\.{field}"):
        make(**{field: value})


def test_defaults_and_capabilities(make):
    issuer = make()
    settings = issuer.settings
    assert settings.timeout == timedelta(seconds=10) and settings.retries == 6
    assert settings.max_retry_wait == timedelta(minutes=5) and settings.verify_with == "auth"
    assert settings.admin_key == {"env": "QUIVA_API_KEY"}
    assert settings.key_lifetime_months == 3 and settings.max_pages == 100
    assert issuer.capabilities.revoke_by_value and not issuer.capabilities.reports_last_used


# ---- operations -------------------------------------------------------------------------

def test_issue_maps_the_response(api, make):
    key = make().issue("prod-web r-1")
    assert json.loads(api.requests[-1].content) == {"key_name": "prod-web r-1"}
    assert key.key_id is None and key.name == "prod-web r-1"
    assert key.created_on == datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert key.expires_on == datetime(2026, 4, 1, tzinfo=timezone.utc)


def test_issue_without_a_key_in_the_response_is_an_unusable_key(api, make):
    api.queue(ISSUE, reply(200, {"data": {"name": "x r-1"}}))
    with pytest.raises(UnusableKey, match="the key value is missing") as info:
        make().issue("x r-1")
    assert info.value.name == "x r-1"


def _issued_with(**data: Any) -> Callable[[httpx.Request], httpx.Response]:
    """An issue reply whose data fields are overridden (None: the field is left out)."""
    def answer(request: httpx.Request) -> httpx.Response:
        body = {"key": ISSUED_KEY, "name": json.loads(request.content)["key_name"],
                "created_on": "2026-01-01T00:00:00.000Z", "expires_on": "2026-04-01T00:00:00.000Z",
                "creds": "c", **data}
        return reply(200, {"data": {k: v for k, v in body.items() if v is not None}})
    return answer


@pytest.mark.parametrize("value, problem", [
    ("short", "has 5 characters"),
    ("ms-" + "a" * 600, "has 603 characters"),
    ("ms-0123 456789abcdef", "has whitespace at position 7"),
    ("ms-0123456789abcdef\n", "has whitespace at position 19"),
    ("ms-0123456789\x00bcdef", "has a control character at position 13"),
    ("ms-0123456789abcdéf", "has a non-ASCII character at position 17"),
    (12345678901, "is a number, not a string"),
    ("", "has 0 characters"),
])
def test_a_key_value_that_cannot_be_deployed_is_refused_at_issue(api, make, value, problem, caplog):
    caplog.set_level(logging.DEBUG)
    api.queue(ISSUE, _issued_with(key=value))
    with pytest.raises(UnusableKey) as info:
        make().issue("prod-web r-1")
    message = str(info.value)
    assert problem in message and "prod-web r-1" in message and "POST /accounts/api-key" in message
    assert info.value.name == "prod-web r-1" and info.value.provider == "quiva-test"
    if isinstance(value, str) and len(value) >= 8:
        assert value not in message and value not in caplog.text
        assert value[:-4] not in message


def test_an_unusable_key_carries_the_name_the_reply_gave_it(api, make):
    api.queue(ISSUE, _issued_with(key="ms-has a space-c0de", name="prod-web r-1 (renamed)"))
    with pytest.raises(UnusableKey) as info:
        make().issue("prod-web r-1")
    assert info.value.name == "prod-web r-1 (renamed)"
    assert "(…c0de)" in str(info.value)                 # the last 4 are printable: shown


@pytest.mark.parametrize("reply_", [raw(200, HTML), reply(200, {"error": "Invalid API key"}),
                                    reply(200, {"data": "unexpected"}), raw(200, "")])
def test_an_issue_answer_that_is_not_the_documented_shape_is_an_unusable_key(api, make, reply_):
    api.queue(ISSUE, reply_)
    with pytest.raises(UnusableKey) as info:
        make().issue("prod-web r-1")
    assert info.value.name == "prod-web r-1"            # a key may exist under it: find, revoke
    assert "POST /accounts/api-key returned 200" in str(info.value)


def test_issue_uses_the_reply_name_and_notes_a_rename(api, make):
    api.queue(ISSUE, _issued_with(name="prod-web r-1 (1)"))
    key = make().issue("prod-web r-1")
    assert key.name == "prod-web r-1 (1)"
    assert "not the requested 'prod-web r-1'" in key.note


def test_issue_without_a_name_keeps_the_requested_one(api, make):
    api.queue(ISSUE, _issued_with(name=""))
    key = make().issue("prod-web r-1")
    assert key.name == "prod-web r-1" and "name is an empty string" in key.note


@pytest.mark.parametrize("fields, created, expires, note", [
    ({}, datetime(2026, 1, 1), datetime(2026, 4, 1), None),
    ({"expires_on": "garbage"}, datetime(2026, 1, 1), datetime(2026, 4, 1), "'garbage' is not"),
    ({"expires_on": "9999-12-31T23:59:59Z"}, datetime(2026, 1, 1), datetime(2026, 4, 1),
     "implausible"),
    ({"expires_on": "2025-12-31T00:00:00Z"}, datetime(2026, 1, 1), datetime(2026, 4, 1),
     "not after created_on"),
    ({"expires_on": 1767225600}, datetime(2026, 1, 1), datetime(2026, 4, 1), "is a number"),
    ({"expires_on": "2027-01-01T00:00:00Z"}, datetime(2026, 1, 1), datetime(2026, 4, 1),
     "reported expires_on 2027-01-01; planning with created_on + 3 months = 2026-04-01"),
    ({"expires_on": "2026-02-01T00:00:00Z"}, datetime(2026, 1, 1), datetime(2026, 2, 1),
     "reported expires_on 2026-02-01; planning with it"),
    ({"created_on": "2020-06-01T00:00:00Z", "expires_on": "2020-09-01T00:00:00Z"},
     datetime(2026, 1, 1), datetime(2026, 4, 1), "created_on 2020-06-01 is not within a day of now"),
    ({"created_on": None, "expires_on": None}, datetime(2026, 1, 1), datetime(2026, 4, 1),
     "created_on is missing"),
    ({"created_on": "2026-01-01T05:30:00+05:30"}, datetime(2026, 1, 1), datetime(2026, 4, 1), None),
])
def test_issue_dates_are_checked_and_never_left_empty(api, make, clock, fields, created, expires, note):
    api.queue(ISSUE, _issued_with(**fields))
    key = make().issue("prod-web r-1")
    assert key.created_on == created.replace(tzinfo=timezone.utc)
    assert key.expires_on == expires.replace(tzinfo=timezone.utc)
    assert key.note is None if note is None else note in key.note


def test_issue_follows_the_key_lifetime_setting(api, make):
    api.queue(ISSUE, _issued_with(expires_on=None))
    key = make(key_lifetime_months=1).issue("prod-web r-1")
    assert key.expires_on == datetime(2026, 2, 1, tzinfo=timezone.utc)


def test_listing_is_checked_strictly_and_passes_last_used_through(api, make):
    api.queue(LIST, reply(200, {"data": [
        listing_entry(created_on="2026-01-01T02:00:00.123456+02:00", expires_on="garbage",
                      last_used_on="2026-01-01T00:00:00Z")]}))
    issuer = make()
    assert issuer.owner is None
    listing = issuer.list_keys()
    assert isinstance(listing, Listing) and listing.usable
    [info] = listing
    assert info.created_on == datetime(2026, 1, 1, 0, 0, 0, 123456, tzinfo=timezone.utc)
    assert info.expires_on is None and "'garbage' is not an ISO-8601 instant" in info.note
    assert info.last_used_on == datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert (info.key_id, info.last4, info.account) == ("k1", ISSUED_KEY[-4:], "svc@example.com")
    assert issuer.owner == "svc@example.com"


def test_listing_keeps_bad_entries_out_and_names_them(api, make):
    api.queue(LIST, reply(200, {"data": [
        listing_entry(id="a"), listing_entry(id=None), listing_entry(id="b", last_4_characters="abc"),
        listing_entry(id=7), listing_entry(id="d"), listing_entry(id="d"), "not an entry"]}))
    listing = make().list_keys()
    assert [k.key_id for k in listing] == ["a", "7"]
    assert listing.problems == ("entry 1: id is null", "entry 2: last_4_characters has 3 characters, not 4",
                                "entry 6: the entry is a string, not an object", "id 'd' appears twice")
    assert not listing.usable


@pytest.mark.parametrize("body", [HTML, "", '{"data": {"keys": []}}', '{"error": "Invalid API key"}',
                                  '{"data": [], "error": "Invalid API key"}', "[]"])
def test_a_listing_that_is_not_the_documented_shape_is_untrusted(api, make, body):
    api.queue(LIST, raw(200, body, "application/json"))
    with pytest.raises(UntrustedAnswer) as info:
        make().list_keys()
    assert info.value.transient is True
    assert "list: GET /accounts/api-keys returned 200" in str(info.value)


def test_listing_follows_next_links_and_cursors(api, make):
    api.queue(LIST,
              reply(200, {"data": [listing_entry(id="a")], "next": "/accounts/api-keys?page=2"}),
              reply(200, {"data": [listing_entry(id="b")], "cursor": "c3"}),
              reply(200, {"data": [listing_entry(id="c")], "next": None}))
    keys = make(list_email="svc@example.com").list_keys()
    assert [k.key_id for k in keys] == ["a", "b", "c"]
    lists = [r for r in api.requests if r.url.path == "/accounts/api-keys"]
    assert [dict(r.url.params) for r in lists] == [
        {"email": "svc@example.com"}, {"page": "2"}, {"page": "2", "cursor": "c3"}]


def test_listing_refuses_a_next_link_to_another_host(api, make):
    api.queue(LIST, reply(200, {"data": [], "next": "https://evil.test/accounts/api-keys"}))
    with pytest.raises(UntrustedAnswer, match="another host"):
        make().list_keys()


def test_a_listing_that_never_ends_is_untrusted(api, make):
    pages = iter(range(1000))
    api.queue(LIST, *[lambda request: reply(200, {"data": [listing_entry()], "cursor": f"c{next(pages)}"})] * 6)
    with pytest.raises(UntrustedAnswer, match="the listing did not end after 5 pages"):
        make(max_pages=5).list_keys()
    assert api.count[LIST] == 5


def test_a_listing_whose_next_cursor_repeats_is_untrusted(api, make):
    api.queue(LIST, reply(200, {"data": [listing_entry(id="a")], "next_cursor": "c2"}),
              reply(200, {"data": [listing_entry(id="b")], "next_cursor": "c2"}))
    with pytest.raises(UntrustedAnswer, match="the listing's next cursor repeats"):
        make().list_keys()


def test_the_same_id_on_two_pages_is_a_problem(api, make):
    api.queue(LIST, reply(200, {"data": [listing_entry(id="a")], "cursor": "c2"}),
              reply(200, {"data": [listing_entry(id="a"), listing_entry(id="x", name=5)]}))
    listing = make().list_keys()
    assert [k.key_id for k in listing] == ["x"] and listing[0].name == ""
    assert listing.problems == ("id 'a' appears twice",)
    assert "name is a number" in listing[0].note


def test_listing_page_problems_name_the_page(api, make):
    api.queue(LIST, reply(200, {"data": [listing_entry(id="a")], "cursor": "c2"}),
              reply(200, {"data": [listing_entry(id=" b")]}))
    assert make().list_keys().problems == ("page 2 entry 0: id ' b' has surrounding whitespace",)


def test_revoke_by_id_is_preferred_and_by_value_works(api, make):
    issuer = make()
    issuer.revoke(key_id="k1", value=Secret(ISSUED_KEY))
    issuer.revoke(value=Secret(ISSUED_KEY))
    deletes = [dict(r.url.params) for r in api.requests if r.method == "DELETE"]
    assert deletes == [{"id": "k1"}, {"key": ISSUED_KEY}]
    with pytest.raises(ValueError):
        issuer.revoke()


def test_verify_uses_its_own_auth_call_and_leaves_the_session_alone(api, make, calls):
    issuer = make()
    assert issuer.verify(Secret(ISSUED_KEY)) is True
    api.queue(AUTH, error(401, "Invalid API key"))
    assert issuer.verify(Secret(ISSUED_KEY)) is False
    assert all("Authorization" not in r.headers for r in api.requests)
    assert [json.loads(r.content) for r in api.requests] == [{"api_key": ISSUED_KEY}] * 2
    assert [(op, outcome) for _, op, outcome in calls] == [("verify", "200"), ("verify", "401")]
    issuer.list_keys()                                # the admin session starts only now
    assert api.count[AUTH] == 3 and api.count[REFRESH] == 0


def test_verify_with_agents_sends_the_key_as_bearer(api, make):
    issuer = make(verify_with="agents")
    assert issuer.verify(Secret(ISSUED_KEY)) is True
    assert api.requests[-1].url.path == "/v1/agents"
    assert api.requests[-1].headers["Authorization"] == f"Bearer {ISSUED_KEY}"
    api.queue("GET /v1/agents", error(401, "Invalid API key"))
    assert issuer.verify(Secret(ISSUED_KEY)) is False


def test_verify_raises_transient_errors_when_the_answer_is_unknown(api, make):
    api.queue(AUTH, *[error(503, "Unavailable")] * 3)
    with pytest.raises(IssuerUnavailable) as info:
        make(retries=3).verify(Secret(ISSUED_KEY))
    assert info.value.transient is True


@pytest.mark.parametrize("answer, problem", [
    (reply(200, {"error": "Invalid API key"}), "the body carries an error (Invalid API key)"),
    (raw(200, HTML), "the body is not JSON"),
    (raw(200, ""), "the body is not JSON"),
    (raw(200, "not json at all", "text/plain"), "the body is not JSON"),
    (reply(200, {}), "the body has no data member"),
    (reply(200, {"data": {}}), "data.auth_token is missing"),
    (reply(200, {"data": {"auth_token": ""}}), "data.auth_token is an empty string"),
    (reply(200, {"data": {"auth_token": 1}}), "data.auth_token is a number"),
    (reply(200, []), "the body is an array, not a JSON object"),
    (httpx.Response(204), "the body is not JSON"),
    (reply(404, {"error": "Not found"}), "neither the documented success nor a refusal"),
    (reply(302), "neither the documented success nor a refusal"),
])
def test_verify_by_auth_is_true_only_on_the_documented_success(api, make, answer, problem):
    api.queue(AUTH, answer)
    with pytest.raises(UntrustedAnswer) as info:
        make().verify(Secret(ISSUED_KEY))
    message = str(info.value)
    assert f"verify: POST /accounts/auth-with-api-key returned {answer.status_code}" in message
    assert problem in message and info.value.transient is True
    assert ISSUED_KEY not in message


@pytest.mark.parametrize("answer, verified", [
    (reply(200, {"data": []}), True),
    (reply(200, []), True),
    (reply(200, {"data": None}), True),
    (reply(200, {"data": [], "error": "Invalid API key"}), None),
    (reply(200, {"error": "Invalid API key"}), None),
    (reply(200, {}), None),
    (raw(200, HTML), None),
    (raw(200, ""), None),
    (reply(200, "data"), None),
    (error(401, "Invalid API key"), False),
])
def test_verify_by_agents_is_true_only_on_the_documented_success(api, make, answer, verified):
    api.queue("GET /v1/agents", answer)
    issuer = make(verify_with="agents")
    if verified is None:
        with pytest.raises(UntrustedAnswer, match=r"verify: GET /v1/agents returned 200"):
            issuer.verify(Secret(ISSUED_KEY))
    else:
        assert issuer.verify(Secret(ISSUED_KEY)) is verified


def test_verify_by_agents_refuses_a_value_no_header_can_carry(api, make):
    with pytest.raises(IssuerError, match="cannot carry") as info:
        make(verify_with="agents").verify(Secret("ms-0123 4567\u00e9abcdef"))
    assert "0123" not in str(info.value) and api.requests == []


def test_a_request_that_cannot_be_encoded_is_an_issuer_error(api, make):
    """A stored key with non-ASCII characters cannot go in a header: a rotator error, not a
    UnicodeEncodeError from deep inside the HTTP library, and nothing is retried."""
    issuer = make()
    with pytest.raises(IssuerError, match=r"could not be sent \(the Authorization header is not"
                                          r" printable ASCII\)") as info:
        issuer.client.send("verify", "GET", "/v1/agents", headers={"Authorization": "Bearer ms-é0123456789"})
    assert "é0123" not in str(info.value) and api.requests == []


def test_verify_by_agents_403_is_a_permission_error(api, make):
    api.queue("GET /v1/agents", error(403, "Insufficient permissions"))
    with pytest.raises(IssuerPermissionError, match='use verify_with = "auth"'):
        make(verify_with="agents").verify(Secret(ISSUED_KEY))


def test_revoke_does_not_read_its_answer(api, make):
    issuer = make()
    api.queue(DELETE, raw(200, HTML), reply(204))
    assert issuer.revoke(key_id="k1") is None
    assert issuer.revoke(key_id="k2") is None


def test_every_call_is_reported(api, make, calls):
    issuer = make()
    issuer.issue("n")
    issuer.list_keys()
    issuer.revoke(key_id="k1")
    assert calls == [("quiva-test", "auth", "200"), ("quiva-test", "issue", "200"),
                     ("quiva-test", "list", "200"), ("quiva-test", "revoke", "200")]


def test_close_is_idempotent(make):
    issuer = make()
    issuer.list_keys()
    issuer.close()
    issuer.close()


# ---- matching ---------------------------------------------------------------------------

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def info(key_id: str, name: str = "n r-1", last4: str = "c0de", created: datetime | None = T0):
    return KeyInfo(key_id=key_id, name=name, last4=last4, created_on=created, expires_on=None)


def test_match_by_name_and_last4():
    listing = [info("a", last4="aaaa"), info("b"), info("c", name="other")]
    assert match_issued(listing, "n r-1", "c0de", T0).key_id == "b"
    assert match_issued(listing, "n r-1", "zzzz", T0) is None


def test_match_disambiguates_by_created_on_within_skew():
    listing = [info("old", created=T0 - timedelta(days=30)), info("new", created=T0 + timedelta(seconds=3))]
    assert match_issued(listing, "n r-1", "c0de", T0).key_id == "new"


def test_match_returns_none_when_ambiguous():
    listing = [info("a", created=T0), info("b", created=T0 + timedelta(seconds=1))]
    assert match_issued(listing, "n r-1", "c0de", T0) is None
    assert match_issued(listing, "n r-1", "c0de", None) is None


def test_find_uses_the_issued_key(api, make):
    issuer = make()
    key = issuer.issue("prod-web r-1")
    assert issuer.find(key).key_id == "k1"


# ---- no key value anywhere ----------------------------------------------------------------

def test_no_key_value_in_errors_or_logs(api, make, caplog):
    caplog.set_level(logging.DEBUG)
    issuer = make(retries=2)
    issued = issuer.issue("prod-web r-1")
    raised: list[BaseException] = []
    scenarios = [
        (DELETE, error(404, f"Not found: {ISSUED_KEY}"), lambda: issuer.revoke(value=issued.value)),
        (DELETE, error(403, "Insufficient permissions"), lambda: issuer.revoke(value=issued.value)),
        (DELETE, [error(500, "boom")] * 2, lambda: issuer.revoke(value=issued.value)),
        (DELETE, [error(429, "Rate limit exceeded")] * 2, lambda: issuer.revoke(value=issued.value)),
        (DELETE, [OSError(f"no route for key={ISSUED_KEY}")] * 2,
         lambda: issuer.revoke(value=issued.value)),
        (AUTH, [error(503, "x")] * 2, lambda: issuer.verify(issued.value)),
        (LIST, [error(401, "Invalid API key")] * 3, lambda: issuer.list_keys()),
        (LIST, error(401, "Invalid API key"), lambda: (
            api.queue(REFRESH, error(401, "Invalid API key")),
            api.queue(AUTH, *[error(401, f"Invalid API key {ADMIN_KEY}")] * 2),
            issuer.list_keys())),
        (AUTH, reply(200, {"error": f"bad key {ISSUED_KEY}"}), lambda: issuer.verify(issued.value)),
        (ISSUE, _issued_with(key=ISSUED_KEY + " "), lambda: issuer.issue("prod-web r-2")),
    ]
    for route, replies, action in scenarios:
        api.queue(route, *(replies if isinstance(replies, list) else [replies]))
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - every error is inspected below
            raised.append(exc)
    assert len(raised) == 10
    assert all(isinstance(exc, RotatorError) for exc in raised)
    assert any("DELETE /accounts/api-key" in r.getMessage() for r in caplog.records)
    for secret in (ADMIN_KEY, ISSUED_KEY):
        for exc in raised:
            assert secret not in str(exc) and secret not in repr(exc)
            for linked in (exc.__cause__, exc.__context__):
                assert linked is None or secret not in str(linked)
        assert secret not in caplog.text
        assert all(secret not in r.getMessage() for r in caplog.records)
    assert "key=" not in caplog.text
