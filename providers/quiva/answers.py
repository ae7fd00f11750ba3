"""What the QuivaWorks account API answered, checked before anyone acts on it ("parse, don't trust").

Each parser takes a decoded JSON body (or :data:`NOT_JSON`) and returns a validated value or
raises a :mod:`rotator.errors` class — never another exception type. Messages name the call (the
``where`` the caller passes: operation, method, path, status) and what was wrong; they never
quote a key value or a token, and any text taken from the answer is masked and shortened.

Nothing here does I/O or reads a clock: the caller passes ``now``. The checks, by answer:

* session (sign-in, refresh): ``data.auth_token`` and ``data.refresh_token`` non-empty strings;
* verify: ``data.auth_token`` a non-empty string ("auth"), or a ``data`` member and no ``error``
  ("agents");
* issue: a usable key value (:func:`key_value_problem`), else :class:`UnusableKey`; dates that
  cannot be trusted are replaced by ``created_on`` + the documented lifetime, with a note;
* listing: ``{"data": [...]}``; each entry checked (:func:`listing_entry`), the ones without a
  usable id or last 4 characters, and every entry of an id listed twice, kept out and named in
  ``Listing.problems``; dates checked as for issue, untrusted ones become None (due, not dead).
"""

from __future__ import annotations

import calendar
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from rotator import redact
from rotator.errors import UnusableKey, UntrustedAnswer
from rotator.models import KeyInfo, Listing

UTC = timezone.utc
#: Dates before this are not QuivaWorks dates (the product is far younger).
FLOOR = datetime(2000, 1, 1, tzinfo=UTC)
#: How far a reported instant may sit from what the rotator expects and still be taken as given.
SKEW = timedelta(days=1)
#: A reported expiry further ahead than this many months is absurd.
HORIZON_MONTHS = 120
#: A key value must be this long (characters) and printable ASCII without spaces (0x21-0x7E).
MIN_KEY_LENGTH, MAX_KEY_LENGTH = 8, 512

_MAX = datetime.max.replace(tzinfo=UTC)
_MIN = datetime.min.replace(tzinfo=UTC)
_SHOWN = 40                # characters of answer text quoted in a message, at most
_INSTANT = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d{1,9}))?)?"
    r"(?:([Zz])|([+-])(\d{2})(?::?(\d{2}))?)", re.ASCII)


class _NotJson:
    """The body of an answer that was empty or not JSON."""

    def __repr__(self) -> str:
        return "NOT_JSON"


NOT_JSON: Any = _NotJson()


class _Missing:
    """A member the answer does not have (told apart from null in messages)."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


def member(body: Mapping[str, Any], name: str) -> Any:
    """``body[name]``, or :data:`MISSING`."""
    return body.get(name, MISSING)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def decode(content: bytes) -> Any:
    """The JSON value of a body, or :data:`NOT_JSON` (empty, not UTF-8, not JSON, NaN, too deep)."""
    if not content.strip():
        return NOT_JSON
    try:
        return json.loads(content, parse_constant=_no_constants)
    except (ValueError, RecursionError):
        return NOT_JSON


# ---- describing what came back, safely ----------------------------------------------------

def describe(value: Any) -> str:
    """The kind of a JSON value, for messages: never the value itself."""
    if value is NOT_JSON:
        return "not JSON"
    if value is MISSING:
        return "missing"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "a number"
    if isinstance(value, float):
        return "a floating-point number"
    if isinstance(value, str):
        return "an empty string" if not value else "a string"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def show(text: str) -> str:
    """A string from an answer, fit for a message: remembered key values masked, control
    characters escaped, at most about 40 characters."""
    if len(text) > 10_000:
        return f"a string of {len(text)} characters"
    masked = redact.redact(text)
    cut = masked[:_SHOWN] + ("…" if len(masked) > _SHOWN else "")
    return repr(cut)


def _day(moment: datetime) -> str:
    return moment.date().isoformat()


# ---- instants ---------------------------------------------------------------------------

def instant(value: Any, name: str) -> datetime:
    """An ISO-8601 instant with ``Z`` or an offset (fractions allowed) as aware UTC.

    Anything else (a number, a date without time or zone, an impossible date, an instant that
    leaves the representable range when moved to UTC) raises :class:`UntrustedAnswer` naming
    ``name``.
    """
    if not isinstance(value, str):
        suffix = "" if value is MISSING else ", not an ISO-8601 instant"
        raise UntrustedAnswer(f"{name} is {describe(value)}{suffix}")
    match = _INSTANT.fullmatch(value)
    if match is None:
        raise UntrustedAnswer(f"{name} {show(value)} is not an ISO-8601 instant with a zone")
    year, month, day, hour, minute, second, fraction, zulu, sign, off_h, off_m = match.groups()
    try:
        offset = timedelta(0) if zulu else (1 if sign == "+" else -1) * timedelta(
            hours=int(off_h), minutes=int(off_m or 0))
        micro = int((fraction or "0").ljust(6, "0")[:6])
        local = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second or 0),
                         micro, tzinfo=timezone(offset))
        return local.astimezone(UTC)
    except (ValueError, OverflowError):
        raise UntrustedAnswer(f"{name} {show(value)} is not a valid instant") from None


def add_months(moment: datetime, months: int) -> datetime:
    """Calendar months later, the day clamped to the month's length (Nov 30 + 3 = Feb 28/29).
    Saturates at the largest representable instant instead of overflowing."""
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    if year > 9999:
        return _MAX
    if year < 1:
        return _MIN
    return moment.replace(year=year, month=month, day=min(moment.day, calendar.monthrange(year, month)[1]))


def _shift(moment: datetime, delta: timedelta) -> datetime:
    try:
        return moment + delta
    except OverflowError:
        return _MAX if delta > timedelta(0) else _MIN


def _aware(now: datetime) -> datetime:
    """``now`` as aware UTC (naive means UTC; a zone pushing it out of range is dropped)."""
    if now.tzinfo is None:
        return now.replace(tzinfo=UTC)
    try:
        return now.astimezone(UTC)
    except OverflowError:
        return now.replace(tzinfo=UTC)


def _past_instant(value: Any, name: str, now: datetime) -> datetime:
    """A strict instant between 2000-01-01 and ``now`` + 1 day (a creation or last-use date)."""
    moment = instant(value, name)
    if moment < FLOOR:
        raise UntrustedAnswer(f"{name} {_day(moment)} is before {_day(FLOOR)}")
    if moment > _shift(now, SKEW):
        raise UntrustedAnswer(f"{name} {_day(moment)} is in the future")
    return moment


def _expiry(value: Any, created_on: datetime | None, now: datetime) -> datetime:
    """A strict, plausible reported ``expires_on``: after ``created_on`` (when known), from 2000
    on, and no more than 10 years ahead of ``now``."""
    moment = instant(value, "expires_on")
    if created_on is not None and moment <= created_on:
        raise UntrustedAnswer(f"expires_on {_day(moment)} is not after created_on {_day(created_on)}")
    if moment < FLOOR:
        raise UntrustedAnswer(f"expires_on {_day(moment)} is implausible: before {_day(FLOOR)}")
    if moment > add_months(now, HORIZON_MONTHS):
        raise UntrustedAnswer(f"expires_on {_day(moment)} is implausible: more than"
                              f" {HORIZON_MONTHS // 12} years ahead")
    return moment


def _planned(reported: datetime, created_on: datetime | None, months: int) -> tuple[datetime, str | None]:
    """The expiry to plan with: the earlier of the reported one and ``created_on`` + lifetime,
    and a note when the two disagree by more than a day."""
    if created_on is None:
        return reported, None
    lifetime = add_months(created_on, months)
    if abs(reported - lifetime) <= SKEW:
        return min(reported, lifetime), None
    planned = min(reported, lifetime)
    note = (f"reported expires_on {_day(reported)}; planning with "
            + (f"created_on + {months} months = {_day(lifetime)}" if planned == lifetime
               else f"it, not created_on + {months} months = {_day(lifetime)}"))
    return planned, note


def _message(exc: UntrustedAnswer) -> str:
    return str(exc.args[0]) if exc.args else str(exc)


def _join(notes: Iterable[str | None]) -> str | None:
    kept = [n for n in notes if n]
    return "; ".join(kept) if kept else None


# ---- bodies -----------------------------------------------------------------------------

def _fail(where: str, provider: str, what: str) -> UntrustedAnswer:
    return UntrustedAnswer(f"{where}: {what}; the answer is not trusted", provider=provider)


def _body_problem(body: Any) -> str | None:
    """What keeps ``body`` from being a success body, or None: it must be a JSON object with a
    ``data`` member and no ``error`` member (a 2xx carrying an error is not a success)."""
    if body is NOT_JSON:
        return "the body is not JSON"
    if not isinstance(body, Mapping):
        return f"the body is {describe(body)}, not a JSON object"
    if "error" in body:
        return f"the body carries an error{_shown_error(body)}"
    if "data" not in body:
        return "the body has no data member"
    return None


def data_of(body: Any, *, where: str, provider: str) -> Any:
    """The ``data`` member of a success body (see :func:`_body_problem`), else UntrustedAnswer."""
    problem = _body_problem(body)
    if problem is not None:
        raise _fail(where, provider, problem)
    return body["data"]


def _shown_error(body: Mapping[str, Any]) -> str:
    text = error_text(body)
    return f" ({text})" if text else ""


def error_text(body: Any) -> str:
    """The ``error`` string of an error body, masked and shortened; "" when there is none.
    The only text of an error answer that goes into messages."""
    text = body.get("error") if isinstance(body, Mapping) else None
    if not isinstance(text, str) or not text:
        return ""
    printable = "".join(c if c.isprintable() else "?" for c in redact.redact(text[:1000]))
    return printable[:200]


def seconds(value: Any) -> float | None:
    """A wait in seconds (a number or a numeric string, finite, >= 0), else None."""
    if isinstance(value, bool) or value is None:
        return None
    if not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return None
    return number if math.isfinite(number) and number >= 0 else None


def retry_after(body: Any) -> float | None:
    """The ``retry_after`` of a 429 body, in seconds, if it is a usable number."""
    return seconds(body.get("retry_after")) if isinstance(body, Mapping) else None


# ---- session ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Session:
    """A session token pair (never shown by ``repr``)."""

    auth_token: str = field(repr=False)
    refresh_token: str = field(repr=False)


def _token(data: Mapping[str, Any], name: str, *, where: str, provider: str) -> str:
    value = member(data, name)
    if not isinstance(value, str) or not value:
        raise _fail(where, provider, f"data.{name} is {describe(value)}")
    return value


def header_safe(value: str) -> bool:
    """True when ``value`` is printable ASCII without spaces (0x21-0x7E): it fits in a header."""
    return all("\x21" <= c <= "\x7e" for c in value)


def session(body: Any, *, where: str, provider: str) -> Session:
    """A sign-in or refresh answer: ``data.auth_token`` and ``data.refresh_token`` non-empty
    strings; the auth token must also travel in an ``Authorization`` header (printable ASCII)."""
    data = data_of(body, where=where, provider=provider)
    if not isinstance(data, Mapping):
        raise _fail(where, provider, f"data is {describe(data)}, not an object")
    auth = _token(data, "auth_token", where=where, provider=provider)
    refresh = _token(data, "refresh_token", where=where, provider=provider)
    if not header_safe(auth):
        raise _fail(where, provider, "data.auth_token has characters an HTTP header cannot carry")
    return Session(auth, refresh)


# ---- verify -----------------------------------------------------------------------------

def verified_by_auth(body: Any, *, where: str, provider: str) -> bool:
    """A 2xx to ``POST /accounts/auth-with-api-key`` with the key under test: True when
    ``data.auth_token`` is a non-empty string, else :class:`UntrustedAnswer`."""
    data = data_of(body, where=where, provider=provider)
    if not isinstance(data, Mapping):
        raise _fail(where, provider, f"data is {describe(data)}, not an object")
    _token(data, "auth_token", where=where, provider=provider)
    return True


def verified_by_agents(body: Any, *, where: str, provider: str) -> bool:
    """A 2xx to ``GET /v1/agents`` with the key as bearer: True for a JSON array, or an object
    with a ``data`` member and no ``error`` member; else :class:`UntrustedAnswer`."""
    if isinstance(body, list):
        return True
    data_of(body, where=where, provider=provider)
    return True


# ---- issue ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Issued:
    """A checked issue answer. ``value`` is the key (never shown by ``repr``)."""

    value: str = field(repr=False)
    name: str
    created_on: datetime
    expires_on: datetime
    note: str | None = None


def key_value_problem(value: Any) -> str | None:
    """Why ``value`` cannot be deployed, or None: it must be a string of 8 to 512 characters,
    each printable ASCII without spaces (0x21-0x7E), so it travels in any header or file."""
    if not isinstance(value, str):
        return f"is {describe(value)}, not a string"
    if not MIN_KEY_LENGTH <= len(value) <= MAX_KEY_LENGTH:
        return (f"has {len(value)} characters (a usable key has {MIN_KEY_LENGTH} to"
                f" {MAX_KEY_LENGTH})")
    for position, char in enumerate(value):
        if not "\x21" <= char <= "\x7e":
            kind = ("whitespace" if char.isspace() else "a control character" if char < "\x80"
                    else "a non-ASCII character")
            return f"has {kind} at position {position}"
    return None


def _last4(value: Any) -> str:
    """' (…c0de)' when the last 4 characters of a long enough value are printable ASCII."""
    if isinstance(value, str) and len(value) >= MIN_KEY_LENGTH and header_safe(value[-4:]):
        return f" (…{value[-4:]})"
    return ""


def issued(body: Any, *, requested: str, now: datetime, lifetime_months: int, where: str,
           provider: str) -> Issued:
    """An answer to ``POST /accounts/api-key``.

    The key value must be usable (:func:`key_value_problem`), else :class:`UnusableKey` carrying
    the name the key was issued under (so the caller can find and revoke it). ``name`` is the
    reply's if it is a non-empty string, else ``requested``. ``created_on`` is taken if valid and
    within a day of ``now``, else ``now``; ``expires_on`` is the earlier of a valid reported value
    and ``created_on`` + ``lifetime_months``, never None. Every replacement is explained in
    ``note``.
    """
    now = _aware(now)
    data = _issue_data(body, requested=requested, where=where, provider=provider)
    value = member(data, "key")
    name, name_note = _issued_name(data, requested, value)
    problem = "is missing" if value is MISSING else key_value_problem(value)
    if problem is not None:
        raise UnusableKey(_masked(f"{where}: the key value{_last4(value)} {problem}; the key issued"
                                  f" as {show(_masked(name, value))} must not be deployed", value),
                          provider=provider, name=name)
    created_on, created_note = _issued_created(data, now)
    expires_on, expires_note = _issued_expires(data, created_on, now, lifetime_months)
    note = _join((name_note, created_note, expires_note))
    return Issued(value=value, name=name, created_on=created_on, expires_on=expires_on,
                  note=None if note is None else _masked(note, value))


def _masked(text: str, value: Any) -> str:
    """``text`` without ``value`` (a reply may echo the key in another field, e.g. its name)."""
    if isinstance(value, str) and len(value) >= MIN_KEY_LENGTH:
        return text.replace(value, redact.MASK)
    return text


def _issue_data(body: Any, *, requested: str, where: str, provider: str) -> Mapping[str, Any]:
    """The ``data`` object of an issue answer. A 2xx without one may still have minted a key
    under ``requested``, so the refusal is an UnusableKey carrying that name."""
    problem = _body_problem(body)
    if problem is None and not isinstance(body["data"], Mapping):
        problem = f"data is {describe(body['data'])}, not an object"
    if problem is not None:
        raise UnusableKey(f"{where}: {problem}; a key may have been issued as {show(requested)}",
                          provider=provider, name=requested)
    return body["data"]


def _issued_name(data: Mapping[str, Any], requested: str, value: Any) -> tuple[str, str | None]:
    name = member(data, "name")
    if not isinstance(name, str) or not name:
        return requested, f"name is {describe(name)}; using the requested name"
    if name != requested:
        return name, f"issued as {show(_masked(name, value))}, not the requested {show(requested)}"
    return name, None


def _issued_created(data: Mapping[str, Any], now: datetime) -> tuple[datetime, str | None]:
    try:
        created_on = instant(member(data, "created_on"), "created_on")
    except UntrustedAnswer as exc:
        return now, f"{_message(exc)}; using now ({_day(now)})"
    if abs(created_on - now) > SKEW:
        return now, f"created_on {_day(created_on)} is not within a day of now; using now ({_day(now)})"
    return created_on, None


def _issued_expires(data: Mapping[str, Any], created_on: datetime, now: datetime,
                    months: int) -> tuple[datetime, str | None]:
    lifetime = add_months(created_on, months)
    try:
        reported = _expiry(member(data, "expires_on"), created_on, now)
    except UntrustedAnswer as exc:
        return lifetime, (f"{_message(exc)}; planning with created_on + {months} months"
                          f" = {_day(lifetime)}")
    return _planned(reported, created_on, months)


# ---- listing ----------------------------------------------------------------------------

def _key_id(entry: Mapping[str, Any]) -> str:
    value = member(entry, "id")
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise UntrustedAnswer("id is a negative number")
        if value > 10 ** 40:
            raise UntrustedAnswer("id is an implausibly large number")
        return str(value)
    if not isinstance(value, str):
        raise UntrustedAnswer(f"id is {describe(value)}")
    if not value:
        raise UntrustedAnswer("id is an empty string")
    if value.strip() != value:
        raise UntrustedAnswer(f"id {show(value)} has surrounding whitespace")
    if not value.isprintable():
        raise UntrustedAnswer(f"id {show(value)} has control characters")
    return value


def _last_four(entry: Mapping[str, Any]) -> str:
    value = member(entry, "last_4_characters")
    if not isinstance(value, str):
        raise UntrustedAnswer(f"last_4_characters is {describe(value)}")
    if len(value) != 4:
        raise UntrustedAnswer(f"last_4_characters has {len(value)} characters, not 4")
    return value


def _listed_name(entry: Mapping[str, Any]) -> tuple[str, str | None]:
    value = member(entry, "name")
    if isinstance(value, str):
        return value, None
    return "", f"name is {describe(value)}; taken as \"\""


def _listed_account(entry: Mapping[str, Any]) -> tuple[str | None, str | None]:
    value = member(entry, "account")
    if value is MISSING or value is None or value == "":
        return None, None
    if isinstance(value, str):
        return value, None
    return None, f"account is {describe(value)}, not a string; ignored"


def _listed_past(entry: Mapping[str, Any], name: str, now: datetime,
                 optional: bool) -> tuple[datetime | None, str | None]:
    value = member(entry, name)
    if optional and (value is MISSING or value is None):
        return None, None
    try:
        return _past_instant(value, name, now), None
    except UntrustedAnswer as exc:
        return None, f"{_message(exc)}; taken as unknown"


def _listed_expiry(entry: Mapping[str, Any], created_on: datetime | None, now: datetime,
                   months: int) -> tuple[datetime | None, str | None]:
    try:
        reported = _expiry(member(entry, "expires_on"), created_on, now)
    except UntrustedAnswer as exc:
        if created_on is not None and _far_ahead(member(entry, "expires_on"), now):
            # the documented lifetime bounds it anyway: plan with that, never with "never"
            lifetime = add_months(created_on, months)
            return lifetime, f"{_message(exc)}; planning with created_on + {months} months = {_day(lifetime)}"
        return None, f"{_message(exc)}; the key is treated as due"
    return _planned(reported, created_on, months)


def _far_ahead(value: Any, now: datetime) -> bool:
    """A valid instant beyond the plausible horizon (e.g. 9999-12-31)."""
    try:
        return instant(value, "expires_on") > add_months(now, HORIZON_MONTHS)
    except UntrustedAnswer:
        return False


def listing_entry(entry: Any, *, now: datetime, lifetime_months: int) -> KeyInfo:
    """One entry of a listing.

    Refused (:class:`UntrustedAnswer`, the message says why): an entry that is not an object, an
    ``id`` that is not a non-empty string without surrounding whitespace or control characters
    (an integer >= 0 is taken as its decimal string), a ``last_4_characters`` that is not a
    string of exactly 4 characters. Everything else is repaired and explained in ``note``: a
    missing or non-string ``name`` becomes "", a non-string ``account`` None, an untrusted
    ``created_on`` or ``last_used_on`` None, an untrusted ``expires_on`` None (the key is then
    due, never dead); a trusted one is capped at ``created_on`` + ``lifetime_months``.
    """
    if not isinstance(entry, Mapping):
        raise UntrustedAnswer(f"the entry is {describe(entry)}, not an object")
    now = _aware(now)
    key_id, last4 = _key_id(entry), _last_four(entry)
    name, name_note = _listed_name(entry)
    account, account_note = _listed_account(entry)
    created_on, created_note = _listed_past(entry, "created_on", now, optional=False)
    expires_on, expires_note = _listed_expiry(entry, created_on, now, lifetime_months)
    used_on, used_note = _listed_past(entry, "last_used_on", now, optional=True)
    return KeyInfo(key_id=key_id, name=name, last4=last4, created_on=created_on,
                   expires_on=expires_on, account=account, last_used_on=used_on,
                   note=_join((name_note, account_note, created_note, expires_note, used_note)))


class Checked:
    """Listing entries already checked, so that a listing pays the checks only for the entries
    that changed since the previous one (an issuer lists the same few hundred keys again and
    again; the checks cost ~12 µs an entry, taking one from here ~1 µs).

    An entry is taken from here only when its ``id`` is a string or an integer (not a boolean or
    a float, which equal integers in Python), it equals (``==``) an entry with the same ``id``
    checked before, that one was a JSON object whose other values were all strings or null and
    was accepted without a note, and ``now`` is not earlier than when it was checked. Those
    conditions make the reuse exact: a string or null equals only a string or null, so the two
    entries have the same members with the same values; every check of a clean entry that
    depends on ``now`` (a date not in the future, an expiry within the horizon) stays true as
    ``now`` advances; and no other input changes the result. Only the entries of the last two
    listings are kept.
    """

    def __init__(self) -> None:
        self._previous: dict[tuple[str, int], tuple[dict[str, Any], KeyInfo, datetime]] = {}
        self._current: dict[tuple[str, int], tuple[dict[str, Any], KeyInfo, datetime]] = {}

    def entry(self, raw: Any, *, now: datetime, lifetime_months: int) -> KeyInfo:
        """:func:`listing_entry`, taken from an earlier equal entry where that is exact."""
        key_id = raw.get("id") if type(raw) is dict else None
        if type(key_id) is not str and type(key_id) is not int:
            return listing_entry(raw, now=now, lifetime_months=lifetime_months)
        if now.tzinfo is not UTC:
            now = _aware(now)
        key = (key_id, lifetime_months)
        known = self._current.get(key) or self._previous.get(key)
        if known is not None and known[2] <= now and known[0] == raw:
            self._current[key] = known
            return known[1]
        info = listing_entry(raw, now=now, lifetime_months=lifetime_months)
        if info.note is None and all(value is None or type(value) is str
                                     for name, value in raw.items() if name != "id"):
            self._current[key] = (raw, info, now)
        return info

    def listing_done(self) -> None:
        """A whole listing went through: forget the entries it did not have."""
        self._previous, self._current = self._current, {}


@dataclass(frozen=True)
class Page:
    """One checked page of a listing: the entries that passed, the entries refused and why, and
    the cursor of the next page (None: the last page)."""

    entries: tuple[KeyInfo, ...]
    problems: tuple[str, ...]
    next: str | None


def listing_page(body: Any, *, now: datetime, lifetime_months: int, where: str, provider: str,
                 page: int = 1, checked: Checked | None = None) -> Page:
    """A listing answer: ``{"data": [...]}`` (else :class:`UntrustedAnswer`), each entry checked
    by :func:`listing_entry` (or taken from ``checked``); refused entries become problems
    ("entry 3: id is null", entries counted from 0 as in ``data[3]``; "page 2 entry 3" after the
    first page)."""
    data = data_of(body, where=where, provider=provider)
    if not isinstance(data, list):
        raise _fail(where, provider, f"data is {describe(data)}, not an array")
    cursor = next_cursor(body, where=where, provider=provider)
    check = listing_entry if checked is None else checked.entry
    entries, problems = [], []
    now = _aware(now)
    for index, raw in enumerate(data):
        try:
            entries.append(check(raw, now=now, lifetime_months=lifetime_months))
        except UntrustedAnswer as exc:
            place = f"entry {index}" if page == 1 else f"page {page} entry {index}"
            problems.append(f"{place}: {_message(exc)}")
    return Page(tuple(entries), tuple(problems), cursor)


def next_cursor(body: Mapping[str, Any], *, where: str, provider: str) -> str | None:
    """The first of ``next``, ``next_cursor``, ``cursor`` that is set (None, "" and false mean
    "no next page"): a string without surrounding whitespace or control characters, or an
    integer >= 0. Anything else raises :class:`UntrustedAnswer`."""
    for name in ("next", "next_cursor", "cursor"):
        value = body.get(name)
        if value is None or value == "" or value is False:
            continue
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 10 ** 40:
            return str(value)
        if not isinstance(value, str):
            raise _fail(where, provider, f"{name} is {describe(value)}, not a cursor")
        if value.strip() != value or not value.isprintable():
            raise _fail(where, provider, f"{name} {show(value)} is not a usable cursor")
        return value
    return None


def listing(pages: Iterable[Page]) -> Listing:
    """The whole listing: every entry that passed, except those whose id appears more than once
    (all of them are kept out: which one is real cannot be told), with every problem named."""
    entries = [entry for page in pages for entry in page.entries]
    problems = [problem for page in pages for problem in page.problems]
    counts: dict[str, int] = {}
    for key in entries:
        counts[key.key_id] = counts.get(key.key_id, 0) + 1
    for key_id, count in counts.items():
        if count > 1:
            times = "twice" if count == 2 else f"{count} times"
            problems.append(f"id {show(key_id)} appears {times}")
    kept = [key for key in entries if counts[key.key_id] == 1]
    return Listing(kept, problems)
