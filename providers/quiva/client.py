"""HTTP client for the QuivaWorks account API: transport, bounded retries and the admin session.

Errors leave this module as classes of :mod:`rotator.errors`. Their messages (and every log line)
are built from the method, the path without its query, the status and the body's ``error`` field
only: never a request body, a query string, a header or a token.
"""

from __future__ import annotations

import logging
import ssl
import sys
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Callable, Mapping

from rotator import redact
from rotator.errors import (
    IssuerAuthError,
    IssuerError,
    IssuerPermissionError,
    IssuerUnavailable,
    KeyNotFound,
    RateLimited,
)
from rotator.interfaces import Clock
from rotator.models import Secret
from rotator.retry import Backoff, RetryPolicy, Throttle

if TYPE_CHECKING:        # httpx is imported on the first request: `plan` and `status` never pay for it
    import httpx

log = logging.getLogger(__name__)

AUTH_PATH = "/accounts/auth-with-api-key"
REFRESH_PATH = "/accounts/refresh-token"
# Session lifetimes are not documented. A session no answer has confirmed for this long may have
# expired: the next call goes alone, and the others wait for its answer (and the one renewal a
# 401 brings) instead of all drawing a 401 at once after an idle gap.
CONFIRM_AFTER = 60.0


class _HideQuery(logging.Filter):
    """Drops the query string from the URLs httpx logs ("HTTP Request: DELETE ...?key=...")."""

    def filter(self, record: logging.LogRecord) -> bool:
        httpx = sys.modules.get("httpx")
        if httpx is None:
            return True
        if isinstance(record.args, tuple) and any(isinstance(a, httpx.URL) for a in record.args):
            record.args = tuple(a.copy_with(query=None) if isinstance(a, httpx.URL) else a
                                for a in record.args)
        return True


def _hide_httpx_queries() -> None:
    logger = logging.getLogger("httpx")
    if not any(isinstance(f, _HideQuery) for f in logger.filters):
        logger.addFilter(_HideQuery())


_ssl_lock = threading.Lock()
_ssl_context: ssl.SSLContext | None = None


def _shared_ssl_context() -> ssl.SSLContext:
    """One verifying SSL context per process: building one costs ~60 ms, sharing it is safe."""
    global _ssl_context
    with _ssl_lock:
        if _ssl_context is None:
            import httpx

            _ssl_context = httpx.create_ssl_context()
        return _ssl_context


@dataclass
class _Session:
    auth_token: str
    refresh_token: str


# Transport failures raised before the request can have reached the server: a retry after one of
# them cannot duplicate an effect. Every other failure (a read timeout, a dropped connection, a
# 5xx) may have come after the server acted.
_NOT_SENT = ("ConnectError", "ConnectTimeout", "PoolTimeout")


@dataclass(frozen=True)
class Answer:
    """A response the retry loop did not swallow: its status and parsed JSON body (or {}).
    ``doubt``: an earlier attempt failed in a way that may have followed the server's effect."""

    status: int
    body: Any
    doubt: bool = False

    @property
    def error(self) -> str:
        """The body's ``error`` string, masked and shortened: the only body text put in messages."""
        text = self.body.get("error") if isinstance(self.body, Mapping) else None
        return redact.redact(str(text))[:200] if text else ""


class QuivaClient:
    """One pooled httpx client plus the admin session, shared by worker threads.

    ``admin_key`` is called at each (re-)authentication, so a rotated admin key is picked up.
    """

    def __init__(self, *, provider: str, base_url: str, admin_key: Callable[[], Secret],
                 timeout: float, policy: RetryPolicy, sleep: Callable[[float], None],
                 clock: Clock, on_call: Callable[[str, str, str], None],
                 transport: httpx.BaseTransport | None = None, throttle: Throttle | None = None) -> None:
        self.provider = provider
        self._base_url = base_url
        self._admin_key = admin_key
        self._timeout = timeout
        self._policy = policy
        self._sleep = sleep
        self._clock = clock
        self._on_call = on_call
        self._transport = transport
        # Shared by every worker thread using this client: pacing and 429 pauses.
        self.throttle = throttle or Throttle(None, 1, lambda: clock.now().timestamp(), sleep)
        self._http: httpx.Client | None = None
        self._http_lock = threading.Lock()
        self._session: _Session | None = None
        self._session_lock = threading.Lock()
        self._probe_done = threading.Condition(self._session_lock)
        self._probing = False          # a call is testing a session that may have expired
        self._confirmed_at = 0.0       # clock time of the last answer other than 401
        _hide_httpx_queries()

    def drop_session(self) -> None:
        """Forget the session so the next call authenticates with the admin key as it is now."""
        with self._session_lock:
            self._session = None

    # ---- public calls --------------------------------------------------------------------

    def call(self, operation: str, method: str, path: str, *, json: Any = None,
             params: Mapping[str, str] | None = None) -> Any:
        """A management call under the admin session; returns the body (a dict) on 2xx.

        A 401 refreshes the session once, then re-authenticates once, then raises IssuerAuthError.
        """
        return self.call_with_doubt(operation, method, path, json=json, params=params)[0]

    def call_with_doubt(self, operation: str, method: str, path: str, *, json: Any = None,
                        params: Mapping[str, str] | None = None) -> tuple[Any, bool]:
        """:meth:`call`, plus whether an earlier attempt may have taken effect too (a 5xx, or a
        reply lost after the request went out): for a call that is not idempotent, such as issuing."""
        token, probing = self._token()
        doubt = False
        try:
            for step in ("refresh", "auth", None):
                answer = self.send(operation, method, path, json=json, params=params,
                                   headers={"Authorization": f"Bearer {token}"})
                doubt = doubt or answer.doubt
                if answer.status != 401:
                    self._confirmed_at = self._now()
                    return self.check(operation, method, path, answer), doubt
                if step is None:
                    break
                log.debug("%s: %s %s returned 401; renewing the session (%s)",
                          self.provider, method, path, step)
                token = self._renew(token, step)
                if probing:                    # the renewed session is good to share
                    self._end_probe()
                    probing = False
        finally:
            if probing:
                self._end_probe()
        raise IssuerAuthError(f"{operation}: {method} {path} still returned 401 after"
                              " re-authenticating", provider=self.provider)

    def send(self, operation: str, method: str, path: str, *, json: Any = None,
             params: Mapping[str, str] | None = None,
             headers: Mapping[str, str] | None = None) -> Answer:
        """One logical request with bounded retries on 429, 5xx, timeouts and connection errors.

        Returns the first other answer (2xx, 401, 403, 404, other 4xx) unchecked. Raises
        RateLimited or IssuerUnavailable (both transient) when the tries run out.
        """
        import httpx

        backoff = Backoff(self._policy, self._sleep)
        doubt = False
        while True:
            self.throttle.acquire()
            try:
                response = self._client().request(method, path, json=json, params=params,
                                                  headers=headers)
            except httpx.TransportError as exc:
                failure = type(exc).__name__   # only the type: its text may quote the URL
            else:
                failure = None
            if failure is not None:            # outside ``except``: no chained httpx error
                doubt = doubt or failure not in _NOT_SENT
                self._on_call(self.provider, operation, "error")
                log.debug("%s: %s %s failed: %s", self.provider, method, path, failure)
                backoff.wait(IssuerUnavailable(
                    f"{operation}: {method} {path} failed ({failure}) after"
                    f" {backoff.tries + 1} tries", provider=self.provider))
                continue
            status = response.status_code
            self._on_call(self.provider, operation, str(status))
            log.debug("%s: %s %s -> %d", self.provider, method, path, status)
            answer = Answer(status, _json(response), doubt)
            if status == 429:
                wait = self._retry_after(response, answer.body)
                backoff.wait(RateLimited(
                    f"{operation}: {method} {path} still rate limited (429) after"
                    f" {backoff.tries + 1} tries", provider=self.provider, retry_after=wait),
                    retry_after=wait, pause=self.throttle.pause)
            elif status >= 500:
                doubt = True
                backoff.wait(IssuerUnavailable(
                    f"{operation}: {method} {path} returned {status}{_paren(answer.error)} after"
                    f" {backoff.tries + 1} tries", provider=self.provider))
            else:
                return answer

    def check(self, operation: str, method: str, path: str, answer: Answer) -> Any:
        """Return the body of a 2xx answer; translate any other status into the error tree."""
        if 200 <= answer.status < 300:
            return answer.body
        where = f"{operation}: {method} {path} returned {answer.status}{_paren(answer.error)}"
        if answer.status == 401:
            raise IssuerAuthError(where, provider=self.provider)
        if answer.status == 403:
            raise IssuerPermissionError(where + "; the issuer's user lacks the permission",
                                        provider=self.provider)
        if answer.status == 404 and operation == "revoke":
            raise KeyNotFound(where, provider=self.provider)
        raise IssuerError(where, provider=self.provider)

    def close(self) -> None:
        with self._http_lock:
            http, self._http = self._http, None
        if http is not None:
            http.close()

    # ---- session ---------------------------------------------------------------------------

    def _token(self) -> tuple[str, bool]:
        """The session token, and whether this call must test it alone (see CONFIRM_AFTER)."""
        with self._session_lock:
            while self._probing:
                self._probe_done.wait()
            if self._session is None:
                self._session = self._authenticate()
                self._confirmed_at = self._now()
                return self._session.auth_token, False
            self._probing = self._now() - self._confirmed_at > CONFIRM_AFTER
            return self._session.auth_token, self._probing

    def _end_probe(self) -> None:
        with self._session_lock:
            self._probing = False
            self._probe_done.notify_all()

    def _now(self) -> float:
        return self._clock.now().timestamp()

    def _renew(self, failed: str, step: str) -> str:
        """Replace the session whose token ``failed``; once, however many threads saw it fail."""
        with self._session_lock:
            current = self._session
            if current is not None and current.auth_token != failed:
                return current.auth_token          # another thread renewed it already
            session = self._refresh(current) if step == "refresh" and current else None
            if session is None:
                self._session = None               # a failed re-auth leaves no stale token
                session = self._authenticate()
            self._session = session
            self._confirmed_at = self._now()
            return session.auth_token

    def _authenticate(self) -> _Session:
        key = self._admin_key()
        answer = self.send("auth", "POST", AUTH_PATH, json={"api_key": key.reveal()})
        if answer.status == 401:
            raise IssuerAuthError(f"the admin key was refused: POST {AUTH_PATH} returned 401"
                                  f"{_paren(answer.error)}", provider=self.provider)
        return self._session_from(self.check("auth", "POST", AUTH_PATH, answer), "auth")

    def _refresh(self, session: _Session) -> _Session | None:
        answer = self.send("refresh", "POST", REFRESH_PATH, json={
            "auth_token": session.auth_token, "refresh_token": session.refresh_token})
        if not 200 <= answer.status < 300:
            log.info("%s: POST %s returned %d; re-authenticating", self.provider, REFRESH_PATH,
                     answer.status)
            return None
        return self._session_from(answer.body, "refresh")

    def _session_from(self, body: Any, operation: str) -> _Session:
        data = body.get("data") if isinstance(body, Mapping) else None
        if not isinstance(data, Mapping) or not data.get("auth_token") or not data.get("refresh_token"):
            raise IssuerError(f"{operation}: the response carried no token pair",
                              provider=self.provider)
        return _Session(str(data["auth_token"]), str(data["refresh_token"]))

    # ---- plumbing --------------------------------------------------------------------------

    def _client(self) -> httpx.Client:
        import httpx

        with self._http_lock:
            if self._http is None:
                self._http = httpx.Client(base_url=self._base_url, timeout=self._timeout,
                                          transport=self._transport, follow_redirects=False,
                                          verify=_shared_ssl_context(),
                                          headers={"Accept": "application/json"})
            return self._http

    def _retry_after(self, response: httpx.Response, body: Any) -> float | None:
        """The longest wait the server asked for: body ``retry_after`` or a Retry-After header."""
        waits = []
        if isinstance(body, Mapping):
            waits.append(_seconds(body.get("retry_after")))
        header = response.headers.get("Retry-After")
        if header:
            waits.append(_seconds(header))
            if waits[-1] is None:
                waits.append(self._until(header))
        known = [w for w in waits if w is not None]
        return max(known) if known else None

    def _until(self, http_date: str) -> float | None:
        try:
            moment = parsedate_to_datetime(http_date)
        except (TypeError, ValueError, IndexError):
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        now: datetime = self._clock.now()
        return max(0.0, (moment - now).total_seconds())


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return {}


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    return seconds if seconds >= 0 else None


def _paren(text: str) -> str:
    return f" ({text})" if text else ""
