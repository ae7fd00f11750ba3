"""The emulator's in-memory model: users, API keys, sessions, clock, faults and counters.

Nothing here speaks HTTP. Domain failures are raised as :class:`ApiError` subclasses and
``server.py`` turns them into status codes and bodies. Key values are secrets even in an
emulator: they are never put in exception text, ``repr`` output or fault snapshots.

Thread safety: :class:`State` owns one re-entrant lock; every public method takes it, and the
:class:`Faults` object shares it. Nothing in this module sleeps while holding it.

Fault knobs (:class:`Faults`): failures without effect (``fail_next``, ``throttle_next``,
``rate_limit`` with one of two limiter models: :class:`TokenBucket` or :class:`FixedWindow`),
failures after the effect (``fail_after_effect_next``), slowness before the
effect (``latency``, ``latency_next``) or while the reply is written (``trickle_next``), and
misbehaviour of a server that answers wrongly (``mangle_next``, ``endless_pages``,
``lying_deletes``). ``server.py`` applies them; this module only holds and hands them out.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import math
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

UTC = timezone.utc
ROLES = ("admin", "member", "viewer")
_KEY_WRITERS = frozenset({"admin", "member"})
_KEY_PREFIX = "ms-"
STATE_SCHEMA = "quiva-emulator-state/1"


# --------------------------------------------------------------------------- time helpers

def as_utc(moment: datetime) -> datetime:
    """Return ``moment`` as an aware UTC datetime; a naive one is taken to be UTC already."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def to_millis(moment: datetime) -> datetime:
    """Drop sub-millisecond precision, so a stored instant equals its rendered form."""
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def iso(moment: datetime | None) -> str | None:
    """Render an instant as ISO-8601 UTC with milliseconds and ``Z``: ``2026-11-26T14:00:00.123Z``."""
    if moment is None:
        return None
    moment = as_utc(moment)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_iso(text: str) -> datetime:
    """Parse an ISO-8601 instant (``Z`` or an offset; naive means UTC) into aware UTC."""
    if not isinstance(text, str):
        raise ValueError("an instant must be an ISO-8601 string")
    return as_utc(datetime.fromisoformat(text.strip()))


def add_months(moment: datetime, months: int) -> datetime:
    """Add calendar months, clamping the day to the target month's length (Nov 30 + 3 = Feb 28/29)."""
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def fingerprint(value: str) -> str:
    """The sha256 hex digest of a key value: lets tests identify a key without holding it."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


class SettableClock:
    """Real UTC time plus an adjustable offset: the emulator's default clock. Thread-safe."""

    def __init__(self) -> None:
        self._offset = timedelta(0)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            offset = self._offset
        return datetime.now(UTC) + offset

    def set(self, moment: datetime) -> None:
        """Make ``now()`` read ``moment`` from here on (time keeps running from there)."""
        with self._lock:
            self._offset = as_utc(moment) - datetime.now(UTC)

    def advance(self, delta: timedelta) -> datetime:
        with self._lock:
            self._offset += delta
        return self.now()

    def reset(self) -> None:
        """Back to real time."""
        with self._lock:
            self._offset = timedelta(0)


# --------------------------------------------------------------------------- errors

class ApiError(Exception):
    """A refusal the API reports to the caller. Messages never contain key or token values."""


class BadRequest(ApiError):
    """The request is malformed (400)."""


class InvalidCredentials(ApiError):
    """Unknown, deleted, expired or malformed key or token (401)."""


class Forbidden(ApiError):
    """The caller's role may not do this (403)."""


class NotFound(ApiError):
    """No such key, user or route (404)."""


# --------------------------------------------------------------------------- records

@dataclass
class User:
    email: str
    role: str


@dataclass
class KeyRecord:
    """One API key. ``value`` and ``creds`` are kept out of ``repr`` so they cannot leak via logs."""

    id: str
    name: str
    account: str
    value: str = field(repr=False)
    creds: str = field(repr=False)
    created_on: datetime
    expires_on: datetime
    deleted_on: datetime | None = None
    last_used_on: datetime | None = None
    delete_count: int = 0

    def is_live(self, now: datetime) -> bool:
        """Not deleted and not yet expired."""
        return self.deleted_on is None and now < self.expires_on

    def issue_view(self) -> dict[str, Any]:
        """The ``data`` of an issue response: the only place a value is ever shown. No id."""
        return {"key": self.value, "name": self.name, "created_on": iso(self.created_on),
                "expires_on": iso(self.expires_on), "creds": self.creds}

    def listing_view(self, with_last_used: bool = False) -> dict[str, Any]:
        """An entry of the list endpoint (also the ``data`` of a delete response)."""
        view = {"id": self.id, "name": self.name, "last_4_characters": self.value[-4:],
                "created_on": iso(self.created_on), "expires_on": iso(self.expires_on),
                "account": self.account}
        if with_last_used:
            view["last_used_on"] = iso(self.last_used_on)
        return view

    def record_view(self) -> dict[str, Any]:
        """The test-side view: everything but the value, which is replaced by its fingerprint."""
        view = self.listing_view(with_last_used=True)
        view.update(deleted_on=iso(self.deleted_on), value_fingerprint=fingerprint(self.value),
                    delete_count=self.delete_count)
        return view


@dataclass
class Session:
    auth_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    email: str
    expires_at: datetime


# --------------------------------------------------------------------------- faults

@dataclass
class Injected:
    """A response forced by a fault instead of (or after) the real one."""

    status: int
    message: str
    retry_after: float | None = None       # seconds; the header carries it rounded up
    retry_after_header: bool = False


@dataclass
class _Countdown:
    """``remaining`` more requests matching ``path`` get ``status``."""

    remaining: int
    status: int
    path: str | None


MANGLE_MODES = ("html", "not_json", "error_200", "empty", "data_type", "set", "drop",
                "duplicate_entry", "foreign_id", "swap_value")
WHOLE_REPLY_MODES = frozenset({"html", "not_json", "error_200", "empty", "data_type"})
_FIELD_MODES = frozenset({"set", "drop"})
_INDEXED_MODES = frozenset({"set", "drop", "duplicate_entry", "foreign_id"})
_SECRET_FIELDS = frozenset({"key", "creds", "api_key", "auth_token", "refresh_token"})
ENDLESS_MODES = ("new", "repeat")
LIE_MODES = ("ok", "not_found")


@dataclass
class Mangle:
    """``remaining`` more successful replies to ``path`` that this rule fits are altered.

    ``value`` may be a key value (``swap_value``), so it is kept out of ``repr``.
    """

    remaining: int
    mode: str
    path: str | None
    field_name: str | None = None
    value: Any = field(default=None, repr=False)
    index: int | None = None

    def shown_value(self) -> Any:
        """``value`` for a snapshot: hidden where it may be a key or another secret."""
        if self.value is not None and (self.mode == "swap_value" or self.field_name in _SECRET_FIELDS):
            return "<hidden>"
        return json.loads(json.dumps(self.value))  # a copy: the armed rule stays as armed


@dataclass
class _Paced:
    """``remaining`` more requests matching ``path`` are slowed by ``amount`` (seconds or bytes/s)."""

    remaining: int
    amount: float
    path: str | None


@dataclass
class _Lie:
    """``remaining`` more deletes that would succeed are answered ``mode`` without deleting."""

    remaining: int
    mode: str


class TokenBucket:
    """A token bucket: ``burst`` tokens, refilled at ``rate`` per second. A refused request is
    told to come back after ``retry_after`` seconds, a constant, whatever the refill time (as
    many APIs do: the emulator's default of 1 s against a token every 20 ms at 50/s).

    ``now`` is a monotonic clock in seconds (real time by default; a simulation passes its own).
    """

    model = "token_bucket"

    def __init__(self, rate: float, burst: int, retry_after: float = 1,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.retry_after = rate, burst, retry_after
        self._now = now
        self._tokens = float(burst)
        self._stamp = now()

    def admit(self) -> float | None:
        """None when the request may proceed (a token taken), else the ``retry_after`` to answer."""
        now = self._now()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= 1:
            self._tokens -= 1
            return None
        return self.retry_after

    def describe(self) -> dict[str, Any]:
        return {"model": self.model, "per_second": self.rate, "burst": self.burst,
                "retry_after": self.retry_after}


class FixedWindow:
    """A fixed-window counter: at most ``limit`` requests per ``window`` seconds, the windows
    aligned on multiples of ``window`` (on the Unix clock by default: a 60 s window resets at each
    full minute, as "N per minute" plans do). A refused request is told the time left until the
    window resets (``retry_after``): every request before then is refused too.

    ``now`` is a clock in seconds (``time.time`` by default; a simulation passes its own).
    """

    model = "fixed_window"

    def __init__(self, limit: int, window: float, now: Callable[[], float] = time.time) -> None:
        self.limit, self.window = limit, window
        self._now = now
        self._index: int | None = None
        self._count = 0

    def admit(self) -> float | None:
        """None when the request may proceed (counted in its window), else the seconds until the
        window resets."""
        now = self._now()
        index = int(now // self.window)
        if index != self._index:
            self._index, self._count = index, 0
        if self._count < self.limit:
            self._count += 1
            return None
        return max(0.0, (index + 1) * self.window - now)

    def describe(self) -> dict[str, Any]:
        return {"model": self.model, "limit": self.limit, "window": self.window,
                "retry_after": "the time left until the window resets"}


LIMITER_MODELS = (TokenBucket.model, FixedWindow.model)


def _to_millis(seconds: float) -> float:
    """``seconds`` rounded up to the millisecond; a whole number stays an int (``1``, not ``1.0``)."""
    if float(seconds).is_integer():
        return int(seconds)
    return math.ceil(seconds * 1000) / 1000


def _path_matches(wanted: str | None, method: str, path: str) -> bool:
    """A fault's path filter: None matches all, "/p" matches any method, "POST /p" one method."""
    if wanted is None:
        return True
    if " " in wanted:
        return wanted == f"{method} {path}"
    return wanted == path


def _count(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError("n must be a non-negative integer")
    return n


def _status(status: Any) -> int:
    if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
        raise ValueError("status must be an integer from 400 to 599")
    return status


def _seconds(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{what} must be a non-negative number")
    return float(value)


def _path_filter(path: Any) -> str | None:
    if path is not None and (not isinstance(path, str) or not path.strip()):
        raise ValueError("path must be a string like '/accounts/api-key' or 'DELETE /accounts/api-key'")
    return path.strip() if path else None


def _choice(value: Any, allowed: tuple[str, ...], what: str) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(allowed)}")
    return value


def _mangle_rule(n: Any, mode: Any, path: Any, field_name: Any, value: Any, index: Any) -> Mangle:
    """A validated :class:`Mangle`; messages name the argument, never its value."""
    mode = _choice(mode, MANGLE_MODES, "mode")
    if mode in _FIELD_MODES:
        if not isinstance(field_name, str) or not field_name.strip():
            raise ValueError(f"mode {mode!r} needs field, a non-empty string")
    elif field_name is not None:
        raise ValueError(f"mode {mode!r} takes no field")
    if mode == "set":
        try:  # a private copy, and proof that it is JSON
            value = json.loads(json.dumps(value, allow_nan=False))
        except (TypeError, ValueError):
            raise ValueError("value must be a JSON value (null, bool, number, string, list, object)") from None
    elif mode in ("foreign_id", "swap_value"):
        if value is not None and (not isinstance(value, str) or not value):
            raise ValueError(f"mode {mode!r} takes value as a non-empty string (or none)")
    elif value is not None:
        raise ValueError(f"mode {mode!r} takes no value")
    if index is not None:
        if mode not in _INDEXED_MODES:
            raise ValueError(f"mode {mode!r} takes no index")
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ValueError("index must be a non-negative integer")
    return Mangle(_count(n), mode, _path_filter(path), field_name, value, index)


class Faults:
    """Fault injection and knobs. Shares the state lock; never sleeps itself.

    Per request the server asks, in this order: :meth:`take_trickle` (how to write the reply),
    :meth:`latency_for` and :meth:`take_latency_next` (then sleeps outside the lock),
    :meth:`before_effect` (rate limit, then throttle, then fail-without-effect), the lying-delete
    rules (instead of a delete that would succeed), and after performing the action
    :meth:`after_effect` (lost response); a successful reply then gets :meth:`next_cursor`
    (endless pages) and :meth:`take_mangle` (one altered answer).

    ``fail_next``, ``fail_after_effect_next``, ``latency_next``, ``trickle_next``, ``mangle_next``
    and ``lying_deletes`` queue: each call adds a rule, and a request uses the first armed rule
    that matches it (one rule of each kind per request). ``throttle_next``, ``rate_limit``,
    ``set_latency`` and ``endless_pages`` replace their previous setting.
    """

    def __init__(self, lock: threading.RLock) -> None:
        self._lock = lock
        self.clear()

    # ---- knobs
    def fail_next(self, n: int, status: int = 503, path: str | None = None) -> None:
        """The next ``n`` matching requests get ``status`` WITHOUT the action being performed."""
        with self._lock:
            self._before.append(_Countdown(_count(n), _status(status), _path_filter(path)))

    def fail_after_effect_next(self, n: int, status: int = 503, path: str | None = None) -> None:
        """The next ``n`` matching requests ARE performed, then answered with ``status``."""
        with self._lock:
            self._after.append(_Countdown(_count(n), _status(status), _path_filter(path)))

    def throttle_next(self, n: int, retry_after: int = 1, header: bool = True) -> None:
        """The next ``n`` requests get 429 with ``retry_after`` (and a Retry-After header if asked)."""
        with self._lock:
            self._throttle_left = _count(n)
            self._throttle_retry_after = int(_seconds(retry_after, "retry_after"))
            self._throttle_header = bool(header)

    def rate_limit(self, per_second: float | None = None, burst: int | None = None,
                   retry_after: float | None = None, model: str = "token_bucket",
                   limit: int | None = None, window: float | None = None) -> None:
        """Limit all requests, in real time, with one of two models (``None`` disables the limit):

        * ``model="token_bucket"`` (the default): ``per_second`` tokens a second, ``burst`` at
          most at once (default 1); a refused request's 429 says ``retry_after`` seconds
          (default 1), a constant whatever the refill time;
        * ``model="fixed_window"``: at most ``limit`` requests in each ``window`` seconds, the
          windows aligned on multiples of ``window`` on the Unix clock; a refused request's 429
          says the time left until the window resets (in the body to the millisecond, in the
          ``Retry-After`` header rounded up to whole seconds, as HTTP wants).
        """
        with self._lock:
            model = _choice(model, LIMITER_MODELS, "model")
            if model == TokenBucket.model:
                if limit is not None or window is not None:
                    raise ValueError("the token_bucket model takes per_second, burst and retry_after"
                                     " (limit and window are the fixed_window model's)")
                if per_second is None:
                    self._limiter = None
                    return
                if _seconds(per_second, "per_second") <= 0:
                    raise ValueError("per_second must be positive (or None to disable)")
                burst = 1 if burst is None else burst
                if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
                    raise ValueError("burst must be a positive integer")
                wait = 1 if retry_after is None else _seconds(retry_after, "retry_after")
                self._limiter = TokenBucket(float(per_second), burst,
                                            int(wait) if float(wait).is_integer() else wait)
                return
            if per_second is not None or burst is not None or retry_after is not None:
                raise ValueError("the fixed_window model takes limit and window (its retry_after"
                                 " is the time to the window's reset)")
            if limit is None and window is None:
                self._limiter = None
                return
            if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
                raise ValueError("limit must be a positive integer")
            if window is None or _seconds(window, "window") <= 0:
                raise ValueError("window must be a positive number of seconds")
            self._limiter = FixedWindow(limit, float(window))

    def set_latency(self, seconds: float, path: str | None = None) -> None:
        """Sleep ``seconds`` (real time) before answering requests to ``path`` (all if None); 0 removes."""
        with self._lock:
            seconds = _seconds(seconds, "seconds")
            key = _path_filter(path)
            if seconds:
                self._latency[key] = seconds
            else:
                self._latency.pop(key, None)

    def latency_next(self, n: int, seconds: float, path: str | None = None) -> None:
        """The next ``n`` matching requests sleep ``seconds`` (real time) BEFORE their effect.

        Added to any ``set_latency`` delay. The sleep holds no lock, so a client that times out
        and retries is served first and the slow request's effect lands later (a late twin).
        """
        with self._lock:
            self._latency_next.append(_Paced(_count(n), _seconds(seconds, "seconds"), _path_filter(path)))

    def trickle_next(self, n: int, bytes_per_second: float, path: str | None = None) -> None:
        """The next ``n`` matching requests get their real reply with the body written slowly.

        About 20 writes a second at ``bytes_per_second`` after the headers (which carry the true
        Content-Length): a client whose timeout applies per read never times out.
        """
        with self._lock:
            rate = _seconds(bytes_per_second, "bytes_per_second")
            if rate <= 0:
                raise ValueError("bytes_per_second must be positive")
            self._trickle.append(_Paced(_count(n), rate, _path_filter(path)))

    def mangle_next(self, n: int, mode: str, path: str | None = None, field: str | None = None,
                    value: Any = None, index: int | None = None) -> None:
        """The next ``n`` matching successful replies are altered AFTER the action was performed.

        Whole-reply modes (any successful reply, status stays 200): ``html`` (a proxy's HTML
        page), ``not_json`` (text/plain garbage), ``error_200`` (an error body), ``empty``
        (``{}``), ``data_type`` (``{"data": "unexpected"}``). Modes on ``data``: ``set`` (``field``
        to the JSON ``value``; None is null), ``drop`` (remove ``field``); on an object reply
        the object, on a listing the entry at ``index`` or every entry if None.
        Listing only: ``duplicate_entry`` (append a copy of entry ``index``, default 0),
        ``foreign_id`` (entry ``index``, default 0, gets the id ``value``, or the next entry's).
        Issue only: ``swap_value`` (the reply's ``key`` becomes ``value``, or a random value that
        is no key and whose last 4 characters differ; the created key keeps its real value).

        A reply a rule cannot alter (an error, a listing for ``swap_value``, an index past the
        end, ``foreign_id`` without value on a one-entry listing) does not use the rule up.
        """
        with self._lock:
            self._mangle.append(_mangle_rule(n, mode, path, field, value, index))

    def endless_pages(self, mode: str | None, path: str | None = "/accounts/api-keys") -> None:
        """Until cleared, every successful reply to ``path`` carries a ``next`` cursor.

        ``new``: a fresh cursor each time; ``repeat``: always the same one; None: off. The API
        ignores ``cursor=``, so every page repeats the first one's data.
        """
        with self._lock:
            if mode is None:
                self._endless = None
                return
            mode = _choice(mode, ENDLESS_MODES, "mode")
            self._endless = (mode, _path_filter(path))
            self._endless_cursor = "page-" + secrets.token_hex(8)

    def lying_deletes(self, n: int, mode: str) -> None:
        """The next ``n`` DELETE /accounts/api-key that would succeed do NOT delete and answer
        ``ok`` (200, the key's listing view) or ``not_found`` (404). A delete that would be
        refused anyway gets its real answer and does not use the rule up."""
        with self._lock:
            self._lies.append(_Lie(_count(n), _choice(mode, LIE_MODES, "mode")))

    def clear(self) -> None:
        """Remove every fault, limit and latency."""
        with self._lock:
            self._before: list[_Countdown] = []
            self._after: list[_Countdown] = []
            self._throttle_left = 0
            self._throttle_retry_after = 1
            self._throttle_header = True
            self._limiter: TokenBucket | FixedWindow | None = None
            self._latency: dict[str | None, float] = {}
            self._latency_next: list[_Paced] = []
            self._trickle: list[_Paced] = []
            self._mangle: list[Mangle] = []
            self._endless: tuple[str, str | None] | None = None
            self._endless_cursor = ""
            self._lies: list[_Lie] = []

    def snapshot(self) -> dict[str, Any]:
        """What is currently armed, for the knob endpoint."""
        with self._lock:
            return {
                "fail_next": self._armed(self._before),
                "fail_after_effect_next": self._armed(self._after),
                "throttle_next": {"n": self._throttle_left, "retry_after": self._throttle_retry_after,
                                  "header": self._throttle_header},
                "rate_limit": None if self._limiter is None else self._limiter.describe(),
                "latency": [{"path": p, "seconds": s} for p, s in self._latency.items()],
                "latency_next": [{"n": r.remaining, "seconds": r.amount, "path": r.path}
                                 for r in self._latency_next if r.remaining],
                "trickle_next": [{"n": r.remaining, "bytes_per_second": r.amount, "path": r.path}
                                 for r in self._trickle if r.remaining],
                "mangle_next": [{"n": r.remaining, "mode": r.mode, "path": r.path,
                                 "field": r.field_name, "value": r.shown_value(), "index": r.index}
                                for r in self._mangle if r.remaining],
                "endless_pages": None if self._endless is None else {
                    "mode": self._endless[0], "path": self._endless[1]},
                "lying_deletes": [{"n": r.remaining, "mode": r.mode} for r in self._lies if r.remaining],
            }

    # ---- used by the server for each API request
    def latency_for(self, method: str, path: str) -> float:
        """Seconds to sleep before answering: the most specific matching latency wins."""
        with self._lock:
            for key in (f"{method} {path}", path, None):
                if key in self._latency:
                    return self._latency[key]
            return 0.0

    def take_latency_next(self, method: str, path: str) -> float:
        """Seconds of one-off latency for this request (uses up one ``latency_next``); 0 if none."""
        with self._lock:
            rule = self._consume(self._latency_next, method, path)
            return rule.amount if rule is not None else 0.0

    def take_trickle(self, method: str, path: str) -> float | None:
        """Bytes per second to write this request's reply at (uses up one rule); None: at once."""
        with self._lock:
            rule = self._consume(self._trickle, method, path)
            return rule.amount if rule is not None else None

    def take_mangle(self, method: str, path: str, fits: Callable[[Mangle], bool]) -> Mangle | None:
        """The first armed rule matching the request that ``fits`` the reply, used up; or None."""
        with self._lock:
            for rule in self._mangle:
                if rule.remaining and _path_matches(rule.path, method, path) and fits(rule):
                    rule.remaining -= 1
                    return rule
            return None

    def next_cursor(self, method: str, path: str) -> str | None:
        """The ``next`` cursor an endless listing carries on this reply, or None."""
        with self._lock:
            if self._endless is None or not _path_matches(self._endless[1], method, path):
                return None
            if self._endless[0] == "new":
                return "page-" + secrets.token_hex(8)
            return self._endless_cursor

    def take_lie(self, would_succeed: Callable[[], bool]) -> str | None:
        """For a delete: the armed lying mode, used up only if ``would_succeed()``; else None.

        ``would_succeed`` runs under the shared lock, so the check and the lie are one step.
        """
        with self._lock:
            rule = next((r for r in self._lies if r.remaining), None)
            if rule is None or not would_succeed():
                return None
            rule.remaining -= 1
            return rule.mode

    def before_effect(self, method: str, path: str) -> Injected | None:
        """A response that replaces the real one, the action not performed; None to proceed."""
        with self._lock:
            wait = None if self._limiter is None else self._limiter.admit()
            if wait is not None:
                return Injected(429, "Too many requests; slow down", _to_millis(wait),
                                retry_after_header=True)
            if self._throttle_left:
                self._throttle_left -= 1
                return Injected(429, "Too many requests; slow down",
                                self._throttle_retry_after, self._throttle_header)
            rule = self._consume(self._before, method, path)
            if rule is not None:
                return Injected(rule.status, "Injected failure; the request was not performed")
            return None

    def after_effect(self, method: str, path: str) -> Injected | None:
        """A response that replaces the real one after the action was performed; None if none."""
        with self._lock:
            rule = self._consume(self._after, method, path)
            if rule is None:
                return None
            return Injected(rule.status, "Injected failure")

    @staticmethod
    def _armed(rules: list[_Countdown]) -> list[dict[str, Any]]:
        return [{"n": r.remaining, "status": r.status, "path": r.path} for r in rules if r.remaining]

    @staticmethod
    def _consume(rules: list[Any], method: str, path: str) -> Any:
        """The first armed rule matching the request, its count taken down by one (or None)."""
        for rule in rules:
            if rule.remaining and _path_matches(rule.path, method, path):
                rule.remaining -= 1
                return rule
        return None


# --------------------------------------------------------------------------- the model

class State:
    """Users, keys and sessions of one emulated QuivaWorks deployment, plus faults and counters."""

    def __init__(self, clock: Any, key_lifetime_months: int = 3,
                 session_ttl: timedelta = timedelta(minutes=30)) -> None:
        if key_lifetime_months < 1:
            raise ValueError("key_lifetime_months must be at least 1")
        self.lock = threading.RLock()
        self.clock = clock
        self.key_lifetime_months = key_lifetime_months
        self.session_ttl = session_ttl
        self.faults = Faults(self.lock)
        self.reset()

    def reset(self) -> None:
        """Drop all users, keys, sessions, faults and counters."""
        with self.lock:
            self._users: dict[str, User] = {}
            self._keys: dict[str, KeyRecord] = {}          # id -> record, in creation order
            self._key_ids_by_value: dict[str, str] = {}
            self._issued: list[str] = []
            self._sessions: dict[str, Session] = {}        # auth token -> session
            self._refresh: dict[str, str] = {}             # unused refresh token -> auth token
            self._counters: Counter[str] = Counter()
            self.faults.clear()

    def now(self) -> datetime:
        return as_utc(self.clock.now())

    # ---- counters
    def count_request(self, method: str, path: str) -> None:
        with self.lock:
            self._counters[f"{method} {path}"] += 1

    def count_status(self, status: int) -> None:
        with self.lock:
            self._counters[f"status:{status}"] += 1

    def counters(self) -> dict[str, int]:
        with self.lock:
            return dict(self._counters)

    def reset_counters(self) -> None:
        with self.lock:
            self._counters.clear()

    # ---- users and keys (test-side)
    def add_user(self, email: str, role: str = "admin", key: str | None = None) -> str:
        """Create (or re-role) a user and give it a key named "admin"; returns the key value.

        ``key`` registers a value supplied by the caller instead of minting one.
        """
        if not isinstance(email, str) or not email.strip():
            raise BadRequest("email must be a non-empty string")
        if role not in ROLES:
            raise BadRequest(f"role must be one of {', '.join(ROLES)}")
        if key is not None and (not isinstance(key, str) or not key.strip()):
            raise BadRequest("a supplied key must be a non-empty string")
        with self.lock:
            if key is not None and key in self._key_ids_by_value:
                raise BadRequest("that key value is already registered")
            self._users[email] = User(email, role)
            return self._new_key(email, "admin", value=key).value

    def create_key(self, email: str, name: str, created_on: datetime | None = None) -> KeyRecord:
        """Seed a key for an existing user, optionally back-dated (or future-dated)."""
        with self.lock:
            if email not in self._users:
                raise NotFound("User not found")
            if not isinstance(name, str) or not name.strip():
                raise BadRequest("name must be a non-empty string")
            return self._new_key(email, name, created_on=created_on)

    def _new_key(self, email: str, name: str, created_on: datetime | None = None,
                 value: str | None = None) -> KeyRecord:
        created = to_millis(as_utc(created_on) if created_on is not None else self.now())
        value = value if value is not None else _KEY_PREFIX + secrets.token_hex(16)
        record = KeyRecord(id=secrets.token_hex(12), name=name, account=email, value=value,
                           creds=secrets.token_urlsafe(24), created_on=created,
                           expires_on=add_months(created, self.key_lifetime_months))
        self._keys[record.id] = record
        self._key_ids_by_value[value] = record.id
        self._issued.append(value)
        return record

    def is_active(self, value: str) -> bool:
        with self.lock:
            key_id = self._key_ids_by_value.get(value) if isinstance(value, str) else None
            return key_id is not None and self._keys[key_id].is_live(self.now())

    def key_records(self, email: str | None = None) -> list[KeyRecord]:
        """Every key, deleted ones included, optionally of one account."""
        with self.lock:
            return [r for r in self._keys.values() if email is None or r.account == email]

    def issued_values(self) -> list[str]:
        with self.lock:
            return list(self._issued)

    def delete_count(self, key_id: str) -> int:
        with self.lock:
            record = self._keys.get(key_id)
            return record.delete_count if record else 0

    # ---- the API's operations
    def authenticate(self, api_key: Any) -> Session:
        """Exchange a live key for a session; records the key's last use."""
        with self.lock:
            record = self._live_key(api_key)
            record.last_used_on = to_millis(self.now())
            return self._new_session(record.account)

    def refresh(self, auth_token: Any, refresh_token: Any) -> Session:
        """Trade a matching, unused (auth, refresh) pair for a new pair; the refresh token is spent.

        The old auth token stays valid until its own expiry (the reference is silent on this).
        """
        with self.lock:
            if not isinstance(auth_token, str) or not isinstance(refresh_token, str):
                raise InvalidCredentials("auth_token and refresh_token are required")
            if self._refresh.get(refresh_token) != auth_token:
                raise InvalidCredentials("Invalid or already used refresh token")
            del self._refresh[refresh_token]
            return self._new_session(self._sessions[auth_token].email)

    def session_user(self, auth_token: str) -> User:
        """The user behind a session token, or InvalidCredentials if unknown or expired."""
        with self.lock:
            session = self._sessions.get(auth_token)
            if session is None:
                raise InvalidCredentials("Invalid session token")
            if self.now() >= session.expires_at:
                raise InvalidCredentials("Session token expired")
            return self._users[session.email]

    def use_key(self, api_key: Any) -> KeyRecord:
        """Product-API use of a key (e.g. GET /v1/agents): must be live; records last use."""
        with self.lock:
            record = self._live_key(api_key)
            record.last_used_on = to_millis(self.now())
            return record

    def issue_key(self, user: User, key_name: Any) -> KeyRecord:
        with self.lock:
            if user.role not in _KEY_WRITERS:
                raise Forbidden(f"Role '{user.role}' cannot create API keys")
            if not isinstance(key_name, str) or not key_name.strip():
                raise BadRequest("key_name is required")
            return self._new_key(user.email, key_name)

    def list_keys(self, user: User, email: str | None = None) -> list[KeyRecord]:
        """Live (not deleted) keys of ``email`` (default: the caller), expired ones included."""
        with self.lock:
            target = email or user.email
            if target != user.email and user.role != "admin":
                raise Forbidden("Only admins may list another user's API keys")
            return [r for r in self._keys.values() if r.account == target and r.deleted_on is None]

    def delete_key(self, user: User, key_id: str | None = None, value: str | None = None) -> KeyRecord:
        """Revoke a key at once, found by id or by full value.

        A key of another user is reported as 404, not 403, to a non-admin: the reference is
        silent here, and 404 does not reveal that the id exists. Admins may delete any key.
        An already deleted key is 404 as well, so a retried delete can never count twice.
        """
        with self.lock:
            found = self.find_deletable(user, key_id=key_id, value=value)
            found.deleted_on = to_millis(self.now())
            found.delete_count += 1
            return found

    def find_deletable(self, user: User, key_id: str | None = None, value: str | None = None) -> KeyRecord:
        """The key :meth:`delete_key` would revoke, or the refusal it would raise; changes nothing."""
        with self.lock:
            if user.role not in _KEY_WRITERS:
                raise Forbidden(f"Role '{user.role}' cannot delete API keys")
            if (key_id is None) == (value is None):
                raise BadRequest("Give exactly one of the query parameters id or key")
            found = self._keys.get(key_id) if key_id is not None else \
                self._keys.get(self._key_ids_by_value.get(value, ""))
            if found is None or found.deleted_on is not None or \
                    (found.account != user.email and user.role != "admin"):
                raise NotFound("API key not found")
            return found

    def decoy_value(self, unlike: str) -> str:
        """A key-shaped value that is no key (minted or registered) and does not end like ``unlike``."""
        with self.lock:
            while True:
                value = _KEY_PREFIX + secrets.token_hex(16)
                if value not in self._key_ids_by_value and value[-4:] != unlike[-4:]:
                    return value

    # ---- persistence (``--state-file``): users and keys survive a restart
    def dump(self) -> dict[str, Any]:
        """Users and keys as JSON-ready data, key values included (an emulator's keys are
        throwaway keys; the file is written readable by its owner only). Sessions, faults,
        counters and the clock are not kept: clients sign in again after a restart."""
        with self.lock:
            return {
                "schema": STATE_SCHEMA,
                "users": [{"email": u.email, "role": u.role} for u in self._users.values()],
                "keys": [{"id": r.id, "name": r.name, "account": r.account, "value": r.value, "creds": r.creds,
                          "created_on": iso(r.created_on), "expires_on": iso(r.expires_on),
                          "deleted_on": iso(r.deleted_on), "last_used_on": iso(r.last_used_on),
                          "delete_count": r.delete_count} for r in self._keys.values()],
            }

    def restore(self, data: Any) -> None:
        """Replace users and keys with ``data`` (what :meth:`dump` made); ValueError, naming what
        is wrong, for anything else (and nothing is changed then)."""
        if not isinstance(data, dict) or data.get("schema") != STATE_SCHEMA:
            raise ValueError(f"not an emulator state file (expected \"schema\": \"{STATE_SCHEMA}\")")
        try:
            users = {u["email"]: User(str(u["email"]), str(u["role"])) for u in data["users"]}
            keys = {}
            for k in data["keys"]:
                keys[str(k["id"])] = KeyRecord(
                    id=str(k["id"]), name=str(k["name"]), account=str(k["account"]), value=str(k["value"]),
                    creds=str(k["creds"]), created_on=parse_iso(k["created_on"]), expires_on=parse_iso(k["expires_on"]),
                    deleted_on=parse_iso(k["deleted_on"]) if k.get("deleted_on") else None,
                    last_used_on=parse_iso(k["last_used_on"]) if k.get("last_used_on") else None,
                    delete_count=int(k.get("delete_count", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"a user or key entry is malformed ({type(exc).__name__}: {exc})") from None
        if any(u.role not in ROLES for u in users.values()):
            raise ValueError(f"a user's role is not one of {', '.join(ROLES)}")
        with self.lock:
            self.reset()
            self._users = users
            self._keys = keys
            self._key_ids_by_value = {r.value: r.id for r in keys.values()}
            self._issued = [r.value for r in keys.values()]

    def live_key_named(self, email: str, name: str) -> str | None:
        """The value of the newest live key of ``email`` named ``name`` (None if there is none)."""
        with self.lock:
            now = self.now()
            found = [r for r in self._keys.values() if r.account == email and r.name == name and r.is_live(now)]
            return max(found, key=lambda r: r.created_on).value if found else None

    def has_user(self, email: str) -> bool:
        with self.lock:
            return email in self._users

    def is_registered(self, value: str) -> bool:
        with self.lock:
            return value in self._key_ids_by_value

    # ---- internals
    def _live_key(self, api_key: Any) -> KeyRecord:
        if not isinstance(api_key, str) or not api_key.strip():
            raise InvalidCredentials("Malformed API key")
        key_id = self._key_ids_by_value.get(api_key)
        if key_id is None:
            raise InvalidCredentials("Unknown API key")
        record = self._keys[key_id]
        if record.deleted_on is not None:
            raise InvalidCredentials("API key has been deleted")
        if self.now() >= record.expires_on:
            raise InvalidCredentials("API key has expired")
        return record

    def _new_session(self, email: str) -> Session:
        session = Session(auth_token=secrets.token_urlsafe(32), refresh_token=secrets.token_urlsafe(32),
                          email=email, expires_at=self.now() + self.session_ttl)
        self._sessions[session.auth_token] = session
        self._refresh[session.refresh_token] = session.auth_token
        return session


# --------------------------------------------------------------------------- the state file

def save_state(state: State, path: str) -> None:
    """Write ``state``'s users and keys to ``path`` atomically (a temporary file renamed over
    it), readable by the owner only: it holds key values."""
    import os

    data = json.dumps(state.dump(), indent=1).encode("utf-8")
    temporary = f"{path}.tmp-{os.getpid()}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)


def load_state(state: State, path: str) -> bool:
    """Restore ``state`` from ``path``; False when there is no such file yet. ValueError, naming
    the file and the problem, when it cannot be read or is not a state file."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    try:
        state.restore(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    return True
