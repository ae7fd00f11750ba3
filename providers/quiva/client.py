"""HTTP client for the QuivaWorks account API: transport, bounded retries and the admin session.

Errors leave this module as classes of :mod:`rotator.errors`. Their messages (and every log line)
are built from the method, the path without its query, the status and the body's ``error`` field
only: never a request body, a query string, a header or a token.

Every wait is bounded. One attempt — connecting, sending, the status line, the headers and the
whole body — ends by a monotonic deadline ``timeout`` seconds after it starts (:mod:`.watchdog`:
a server that trickles its headers or its body cannot stretch it); a missed deadline counts as a
read timeout: transient, and the server may have acted. Worst case of one
:meth:`QuivaClient.send` with ``retries`` attempts: ``retries x timeout`` in requests, plus
``retries - 1`` waits between them, each at most ``max_retry_wait`` when the server asked for it
(429) and at most 30 s otherwise (jittered back-off), plus the pacing of a configured or learnt
rate limit. A management call
(:meth:`QuivaClient.call`) may make up to ten such requests: the call itself up to three times, one
refresh, and up to three sign-ins of up to two requests each.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, Callable, Mapping

from rotator.errors import (
    IssuerAuthError,
    IssuerError,
    IssuerPermissionError,
    IssuerUnavailable,
    KeyNotFound,
    RateLimited,
    UntrustedAnswer,
)
from rotator.interfaces import Clock
from rotator.models import Secret
from rotator.retry import Backoff, RetryPolicy, Throttle

from rotator_providers.quiva import answers, wire

log = logging.getLogger(__name__)

AUTH_PATH = "/accounts/auth-with-api-key"
REFRESH_PATH = "/accounts/refresh-token"
# Session lifetimes are not documented. A session no answer has confirmed for this long may have
# expired: the next call goes alone, and the others wait for its answer (and the one renewal a
# 401 brings) instead of all drawing a 401 at once after an idle gap.
CONFIRM_AFTER = 60.0


class _HideQuery(logging.Filter):
    """Drops the query string from the paths urllib3 logs at debug ('"DELETE /accounts/api-key?
    key=... HTTP/1.1" 200'): a revoke by value carries the key there."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(isinstance(a, str) and "?" in a for a in record.args):
            record.args = tuple(a.split("?", 1)[0] if isinstance(a, str) else a for a in record.args)
        return True


def _hide_logged_queries() -> None:
    logger = logging.getLogger("urllib3.connectionpool")
    if not any(isinstance(f, _HideQuery) for f in logger.filters):
        logger.addFilter(_HideQuery())


@dataclass(frozen=True)
class Answer:
    """A response the retry loop did not swallow: its status and decoded JSON body
    (:data:`answers.NOT_JSON` when empty or not JSON). ``doubt``: an earlier attempt failed in a
    way that may have followed the server's effect. ``retry_after``: the Retry-After header."""

    status: int
    body: Any
    doubt: bool = False
    retry_after: str | None = None

    @property
    def error(self) -> str:
        """The body's ``error`` string, masked and shortened: the only body text put in messages."""
        return answers.error_text(self.body)

    def where(self, operation: str, method: str, path: str) -> str:
        """'verify: POST /accounts/auth-with-api-key returned 200', for messages."""
        return f"{operation}: {method} {path} returned {self.status}"


class QuivaClient:
    """The pooled connections (:mod:`.wire`, built on the first request) plus the admin
    session, shared by worker threads.

    ``admin_key`` is called at each (re-)authentication, so a rotated admin key is picked up.
    ``wire`` replaces the network, for tests.
    """

    def __init__(self, *, provider: str, base_url: str, admin_key: Callable[[], Secret],
                 timeout: float, policy: RetryPolicy, sleep: Callable[[float], None],
                 clock: Clock, on_call: Callable[[str, str, str], None],
                 wire: wire.Wire | None = None, throttle: Throttle | None = None) -> None:
        self.provider = provider
        self._base_url = base_url
        self._admin_key = admin_key
        self._timeout = timeout
        self._policy = policy
        self._sleep = sleep
        self._clock = clock
        self._on_call = on_call
        # Shared by every worker thread using this client: pacing and 429 pauses.
        self.throttle = throttle or Throttle(None, 1, lambda: clock.now().timestamp(), sleep)
        self._wire = wire
        self._wire_lock = threading.Lock()
        self._session: answers.Session | None = None
        self._session_lock = threading.Lock()
        self._probe_done = threading.Condition(self._session_lock)
        self._probing = False          # a call is testing a session that may have expired
        self._confirmed_at = 0.0       # clock time of the last answer other than 401
        _hide_logged_queries()

    def drop_session(self) -> None:
        """Forget the session so the next call authenticates with the admin key as it is now."""
        with self._session_lock:
            self._session = None

    # ---- public calls --------------------------------------------------------------------

    def call(self, operation: str, method: str, path: str, *, json: Any = None,
             params: Mapping[str, str] | None = None) -> Answer:
        """A management call under the admin session; returns the 2xx answer, its body unchecked
        (the caller parses it). ``doubt`` on the answer says whether an earlier attempt may have
        taken effect too (a 5xx, or a reply lost after the request went out): for a call that is
        not idempotent, such as issuing.

        A 401 refreshes the session once, then re-authenticates once, then raises IssuerAuthError.
        """
        token, probing = self._token()
        doubt = False
        try:
            for step in ("refresh", "auth", None):
                answer = self.send(operation, method, path, json=json, params=params,
                                   headers={"Authorization": f"Bearer {token}"})
                doubt = doubt or answer.doubt
                if answer.status != 401:
                    self._confirmed_at = self._now()
                    self.check(operation, method, path, answer)
                    return answer if answer.doubt == doubt else replace(answer, doubt=doubt)
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

        Each attempt ends by its deadline (``timeout`` after it starts, see the module docstring).
        Returns the first other answer (2xx, 401, 403, 404, other 4xx) unchecked. Raises
        RateLimited or IssuerUnavailable (both transient) when the tries run out.
        """
        backoff = Backoff(self._policy, self._sleep)
        doubt = False
        while True:
            turn = self.throttle.acquire()
            reply, failure, sent = self._attempt(method, path, json=json, params=params,
                                                 headers=headers)
            if reply is not None and reply.status != 429:
                self.throttle.answered(turn)       # the server had room for it, whatever it said
            if reply is None:
                doubt = doubt or sent
                self._on_call(self.provider, operation, "error")
                log.debug("%s: %s %s failed: %s", self.provider, method, path, failure)
                backoff.wait(IssuerUnavailable(
                    f"{operation}: {method} {path} failed ({failure}) after"
                    f" {backoff.tries + 1} tries", provider=self.provider))
                continue
            status = reply.status
            self._on_call(self.provider, operation, str(status))
            log.debug("%s: %s %s -> %d", self.provider, method, path, status)
            body = answers.NOT_JSON if reply.content is None else answers.decode(reply.content)
            answer = Answer(status, body, doubt, reply.retry_after)
            if status == 429:
                # Only this request waits the server's retry_after; the others keep to the pace,
                # which the throttle cuts (rotator.retry.Throttle).
                wait = self._retry_after(answer)
                self.throttle.refused(turn, wait)
                backoff.wait(RateLimited(
                    f"{operation}: {method} {path} still rate limited (429) after"
                    f" {backoff.tries + 1} tries", provider=self.provider, retry_after=wait),
                    retry_after=wait)
            elif status >= 500:
                doubt = True
                backoff.wait(IssuerUnavailable(
                    f"{operation}: {method} {path} returned {status}{_paren(answer.error)} after"
                    f" {backoff.tries + 1} tries", provider=self.provider))
            else:
                return answer

    def _attempt(self, method: str, path: str, *, json: Any = None,
                 params: Mapping[str, str] | None = None,
                 headers: Mapping[str, str] | None = None) -> tuple[wire.Reply | None, str, bool]:
        """One attempt, over by its deadline: (reply, "", False) or (None, what failed, whether
        the request may have reached the server)."""
        link = self._link()
        unsendable = ""
        try:
            request = wire.build(method, path, params=params, json_body=json, headers=headers)
            return link.exchange(request, time.monotonic() + self._timeout), "", False
        except wire.Late:
            return None, f"no complete answer within {self._timeout:g}s", True
        except wire.Failed as exc:
            return None, exc.reason, exc.sent
        except (wire.Unsendable, ValueError) as exc:     # refused by build() or below: never sent
            unsendable = exc.reason if isinstance(exc, wire.Unsendable) else type(exc).__name__
        except Exception as exc:  # noqa: BLE001 - a wire's own failure: named by its type only
            return None, type(exc).__name__, True         # (its text may quote the request)
        # raised outside ``except``: no chained error that may quote the request
        raise IssuerError(f"{method} {path} could not be sent ({unsendable})", provider=self.provider)

    def check(self, operation: str, method: str, path: str, answer: Answer) -> Answer:
        """Return a 2xx answer as it is; translate any other status into the error tree."""
        if 200 <= answer.status < 300:
            return answer
        where = answer.where(operation, method, path) + _paren(answer.error)
        if answer.status == 401:
            raise IssuerAuthError(where, provider=self.provider)
        if answer.status == 403:
            raise IssuerPermissionError(where + "; the issuer's user lacks the permission",
                                        provider=self.provider)
        if answer.status == 404 and operation == "revoke":
            raise KeyNotFound(where, provider=self.provider)
        raise IssuerError(where, provider=self.provider)

    def close(self) -> None:
        with self._wire_lock:
            link, self._wire = self._wire, None
        if link is not None:
            link.close()

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

    def _authenticate(self) -> answers.Session:
        """Sign in with the admin key. One 401 is tried again after a jittered back-off (the key
        may have just been rotated, and not every server knows it yet); a second is final."""
        backoff = Backoff(replace(self._policy, attempts=2), self._sleep)
        while True:
            answer = self.send("auth", "POST", AUTH_PATH,
                               json={"api_key": self._admin_key().reveal()})
            if answer.status != 401:
                break
            backoff.wait(IssuerAuthError(
                f"the admin key was refused: POST {AUTH_PATH} returned 401 twice"
                f"{_paren(answer.error)}", provider=self.provider))
            log.info("%s: POST %s returned 401; signing in once more", self.provider, AUTH_PATH)
        self.check("auth", "POST", AUTH_PATH, answer)
        return answers.session(answer.body, where=answer.where("auth", "POST", AUTH_PATH),
                               provider=self.provider)

    def _refresh(self, session: answers.Session) -> answers.Session | None:
        """A renewed pair, or None when the refresh was refused or its answer is not the
        documented shape (the caller then signs in again)."""
        answer = self.send("refresh", "POST", REFRESH_PATH, json={
            "auth_token": session.auth_token, "refresh_token": session.refresh_token})
        if not 200 <= answer.status < 300:
            log.info("%s: POST %s returned %d; re-authenticating", self.provider, REFRESH_PATH,
                     answer.status)
            return None
        try:
            return answers.session(answer.body, where=answer.where("refresh", "POST", REFRESH_PATH),
                                   provider=self.provider)
        except UntrustedAnswer as exc:
            log.info("%s; re-authenticating", exc)
            return None

    # ---- plumbing --------------------------------------------------------------------------

    def _link(self) -> wire.Wire:
        with self._wire_lock:
            if self._wire is None:
                self._wire = wire.Urllib3Wire(self._base_url)
            return self._wire

    def _retry_after(self, answer: Answer) -> float | None:
        """The longest wait the server asked for: body ``retry_after`` or a Retry-After header.

        A header in whole seconds that is the body's value rounded up (HTTP's ``Retry-After``
        takes no fractions) says nothing more: the body's exact value is used, so a limiter that
        names the moment its window resets is taken at its word."""
        body = answers.retry_after(answer.body)
        waits = [body]
        header = answer.retry_after
        if header:
            seconds = answers.seconds(header)
            if seconds is not None and body is not None and seconds == math.ceil(body):
                return body
            waits.append(seconds)
            if seconds is None:
                waits.append(self._until(header))
        known = [w for w in waits if w is not None]
        return max(known) if known else None

    def _until(self, http_date: str) -> float | None:
        try:
            moment = parsedate_to_datetime(http_date)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=timezone.utc)
        now: datetime = self._clock.now()
        return max(0.0, (moment - now).total_seconds())


def _paren(text: str) -> str:
    return f" ({text})" if text else ""
