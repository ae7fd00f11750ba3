"""Rotation windows: when a rotation may start (issue 15). PURE: no I/O; the clock is read once, by
:meth:`Window.parse`, only to check that a window opens from today too.

Two forms, from ``window = {...}`` in ``[rotator]`` or a secret (``rotator.config.WindowSpec``)::

    { days = "mon-fri", start = "09:00", end = "16:00", timezone = "Europe/Amsterdam" }
    { cron = "0 9 * * mon-fri", duration = "7h", timezone = "Europe/Amsterdam" }

A window is a union of half-open intervals ``[open, close)`` of real time; every instant this
module returns is in UTC.

Days/start/end: each allowed local date gets one interval, from ``start`` on that date to ``end``
on that date, or on the next date when ``end <= start`` (an overnight window). ``days`` is the
weekday of the START date, so "fri" 22:00-02:00 contains Saturday 01:00 and "sat" does not. Without
``days`` the window is every day; ``days`` without ``start``/``end`` means whole days. The
times are local wall-clock times resolved per date with zoneinfo, so 09:00-16:00 stays
09:00-16:00 local across DST changes; its real length is 7 h most days and differs on a
transition day only when the window spans the transition (01:00-04:00 lasts 2 h on a
spring-forward day, 4 h on a fall-back day). Times that do not exist or exist twice follow
Python's ``fold=0``:

* a time in a skipped hour (spring forward) is shifted forward by the gap, so the window still
  opens that day: 02:30 on the last Sunday of March in Europe/Amsterdam is 03:30 CEST, and
  02:15-02:45 becomes 03:15-03:45. Should that put the end at or before the shifted start
  (02:30-03:10 that night), the window runs its wall-clock length (40 min) from the shifted start;
* an ambiguous time (fall back) means its first occurrence.

Cron/duration: the window opens at each fire time of the 5-field crontab expression (APScheduler's
``CronTrigger.from_crontab``, no parser here) and stays open for ``duration`` of elapsed time. The
fire times are computed on the local wall clock, not by asking ``CronTrigger`` in the time zone
itself: APScheduler 3.x walks zoneinfo time zones by adding wall-clock differences as elapsed time,
which skips the day after a spring-forward ("0 0 * * *" in America/New_York never fires at
midnight of 10 March 2025) and finds a fire time in the skipped hour only from before the gap.
Wall-clock fire times then become instants like CronTrigger means them: in a skipped hour shifted
forward by the gap (as above), in a repeated hour at both occurrences (so "*/15 * * * *" has no
hole on the night the clocks go back). Two rules of crontab that APScheduler 3.x does not keep
are refused rather than silently read differently: a numeric day of week (APScheduler counts
0 = Monday, crontab 0 = Sunday) and a day of month together with a day of week (crontab means
either, APScheduler both).

Rotation start (:func:`start_at`, :func:`may_start`): a rotation waits for the window, but never
past its deadline (``expires_on - safety_margin``): then it starts outside the window, and says so.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from apscheduler.triggers.cron import CronTrigger

from rotator.timeutil import format_duration

#: How far ahead a window is looked for: four years for a window on 29 February, and a day.
HORIZON = timedelta(days=4 * 365 + 2)
#: A fixed instant from which every window must open once (so the check does not depend on today only).
REFERENCE = datetime(2024, 1, 1, tzinfo=timezone.utc)
#: A cron window is open at most this long after each fire time.
MAX_DURATION = timedelta(days=7)
#: How many back-to-back intervals :meth:`Window.closing` merges before it gives up (a window that
#: never closes, say "* * * * *" for 1h, would otherwise be walked for four years).
MAX_MERGED = 5000

_DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_DAY_NUMBERS = {**{n: i for i, n in enumerate(_DAY_NAMES)},
                **{n: i for i, n in enumerate(("monday", "tuesday", "wednesday", "thursday", "friday",
                                                "saturday", "sunday"))}}
_DAYS_HELP = "use mon, tue, ... sun, ranges like mon-fri, lists like sat,sun, or *"
_HHMM = re.compile(r"(\d{1,2}):(\d{2})")
_DAY_MINUTES = 24 * 60
# Offsets never differ by more than 26 h (UTC-12 .. UTC+14); sampling a zone this far either side
# of an instant sees every offset in force near it (transitions are months apart).
_NEAR = timedelta(hours=26)
_Span = tuple[datetime, datetime]


@dataclass(frozen=True)
class Window:
    """When rotations may start. Build it with :meth:`parse`; the fields are the parsed form.

    ``days``/``start``/``end`` (minutes after local midnight, ``end`` up to 1440) for the first
    form, ``cron``/``duration`` for the second; ``timezone`` is an IANA name.
    """

    timezone: str = "UTC"
    days: frozenset[int] = frozenset()   # 0 = Monday
    start: int | None = None
    end: int | None = None
    cron: str | None = None
    duration: timedelta | None = None
    days_text: str = "*"                 # as given, for describe()

    # --- building ------------------------------------------------------------------------------

    @classmethod
    def parse(cls, *, days: str | None = None, start: str | None = None, end: str | None = None,
              cron: str | None = None, duration: timedelta | None = None, timezone: str = "UTC",
              now: datetime | None = None) -> Window:
        """Validate a window as configured. Every problem is a ValueError naming the sub-field,
        because the config turns it into an error at load. ``now`` (default: the clock) is the
        second instant from which the window must open (the first is :data:`REFERENCE`)."""
        zone_name = _zone_name(timezone)
        daily = days is not None or start is not None or end is not None
        if daily and (cron is not None or duration is not None):
            raise ValueError("give days/start/end or cron/duration, not both")
        if daily:
            window = cls._daily(days, start, end, zone_name)
        elif cron is not None or duration is not None:
            window = cls._cron(cron, duration, zone_name)
        else:
            raise ValueError("give days/start/end (e.g. days = \"mon-fri\", start = \"09:00\", end = \"16:00\") "
                             "or cron/duration (e.g. cron = \"0 9 * * mon-fri\", duration = \"7h\")")
        for moment in (REFERENCE, now or datetime.now(tz=_UTC)):
            if window.opening(moment) is None:
                raise ValueError("the window never opens")
        return window

    @classmethod
    def _daily(cls, days: str | None, start: str | None, end: str | None, zone: str) -> Window:
        if (start is None) != (end is None):
            raise ValueError("end: required with start" if end is None else "start: required with end")
        text = "*" if days is None else str(days)
        weekdays = _parse_days(text)
        if not weekdays:
            raise ValueError("the window never opens: days names no day")
        first = 0 if start is None else _parse_time("start", start, latest=_DAY_MINUTES - 1)
        last = _DAY_MINUTES if end is None else _parse_time("end", end, latest=_DAY_MINUTES)
        if first == last:
            raise ValueError(f"start and end are both {_hhmm(first)}: an empty window "
                             "(for whole days use 00:00-24:00)")
        compact = ",".join(p.strip() for p in text.strip().lower().split(","))
        return cls(timezone=zone, days=weekdays, start=first, end=last, days_text=compact)

    @classmethod
    def _cron(cls, cron: str | None, duration: timedelta | None, zone: str) -> Window:
        if cron is None:
            raise ValueError("cron: required with duration (e.g. cron = \"0 9 * * mon-fri\")")
        if duration is None:
            raise ValueError("duration: required with cron: how long the window stays open after "
                             "each fire time (e.g. \"7h\")")
        if duration <= timedelta(0):
            raise ValueError("duration: must be positive")
        if duration > MAX_DURATION:
            raise ValueError(f"duration: at most {format_duration(MAX_DURATION)}, got {format_duration(duration)}")
        expr = " ".join(str(cron).split())
        fields = expr.split(" ")
        if len(fields) == 5:
            if re.search(r"\d", fields[4]):
                raise ValueError(f"cron: write the day of week {fields[4]!r} with names (mon-fri, sat,sun): "
                                 "APScheduler counts 0 = Monday where crontab counts 0 = Sunday")
            if fields[2] != "*" and fields[4] != "*":
                raise ValueError("cron: restrict the day of month or the day of week, not both "
                                 "(crontab means either, APScheduler would read both)")
        try:
            _trigger(expr)
        except ValueError as exc:
            raise ValueError(f"cron: {exc} in {expr!r}") from None
        return cls(timezone=zone, cron=expr, duration=duration)

    # --- questions -----------------------------------------------------------------------------

    def contains(self, moment: datetime) -> bool:
        """Whether ``moment`` (aware, any zone; naive means UTC) lies inside the window."""
        moment = _utc(moment)
        for start, end in self._spans_from(moment - self._longest()):
            if start > moment:
                return False
            if end > moment:
                return True
        return False

    def opening(self, moment: datetime) -> datetime | None:
        """The first instant at or after ``moment`` inside the window (``moment`` itself when it is
        inside), in UTC; None when the window does not open within :data:`HORIZON`."""
        moment = _utc(moment)
        for start, end in self._spans_from(moment - self._longest()):
            if start > moment + HORIZON:
                return None
            if end > moment:        # spans come by start: the first that is still open
                return max(start, moment)
        return None

    def closing(self, moment: datetime) -> datetime | None:
        """When the window that contains ``moment`` closes (intervals that touch or overlap count
        as one), in UTC; None when ``moment`` is outside. A window still open after
        :data:`MAX_MERGED` intervals or :data:`HORIZON` reports where the walk stopped: it is open
        at least until then."""
        moment = _utc(moment)
        reach: datetime | None = None
        for count, (start, end) in enumerate(self._spans_from(moment - self._longest())):
            if reach is None:
                if start > moment:
                    return None
                if end > moment:
                    reach = end
            elif start > reach or count > MAX_MERGED or start > moment + HORIZON:
                break
            else:
                reach = max(reach, end)
        return reach

    def describe(self) -> str:
        """For people: "mon-fri 09:00-16:00 Europe/Amsterdam", "cron '0 9 * * mon-fri' for 7h (UTC)"."""
        if self.cron is not None:
            assert self.duration is not None
            return f"cron '{self.cron}' for {format_duration(self.duration)} ({self.timezone})"
        assert self.start is not None and self.end is not None
        overnight = " (into the next day)" if self.end <= self.start else ""
        days = "every day" if self.days_text == "*" else self.days_text
        return f"{days} {_hhmm(self.start)}-{_hhmm(self.end)}{overnight} {self.timezone}"

    # --- intervals -----------------------------------------------------------------------------

    def _longest(self) -> timedelta:
        """No interval lasts longer: where to start looking for one that contains an instant."""
        return self.duration if self.duration is not None else timedelta(days=3)

    def _walls(self, since: datetime) -> Iterator[datetime]:
        """Local wall-clock opening times (naive) at or after ``since``, in order."""
        if self.cron is not None:
            trigger = _trigger(self.cron)
            probe = since.replace(tzinfo=_UTC)   # UTC has no DST: the trigger walks a plain clock
            while (fire := trigger.get_next_fire_time(None, probe)) is not None:
                yield fire.replace(tzinfo=None)
                probe = fire + timedelta(seconds=1)
            return
        assert self.start is not None
        day = since.date() - timedelta(days=1)
        while day < date.max:
            wall = datetime.combine(day, time()) + timedelta(minutes=self.start)
            if day.weekday() in self.days and wall >= since:
                yield wall
            day += timedelta(days=1)

    def _spans_at(self, wall: datetime, zone: ZoneInfo) -> list[_Span]:
        """The real intervals that open at local ``wall`` time."""
        first = _instant(wall, zone, fold=0)
        if self.duration is not None:
            second = _instant(wall, zone, fold=1)   # later only for a repeated hour; in a gap, earlier
            return [(first, first + self.duration)] + ([(second, second + self.duration)] if second > first else [])
        assert self.start is not None and self.end is not None
        length = timedelta(minutes=(self.end - self.start) % _DAY_MINUTES or _DAY_MINUTES)
        end = _instant(wall + length, zone, fold=0)
        return [(first, end if end > first else first + length)]

    def _spans_from(self, since: datetime) -> Iterator[_Span]:
        """Every interval that opens at or after ``since``, ordered by opening instant.

        Local wall-clock order is real order except near a DST change, where a later wall-clock
        time may map to an earlier instant (a repeated hour, a shifted skipped one). Intervals are
        therefore held back until no later wall-clock time can open before them.
        """
        zone = ZoneInfo(self.timezone)
        low, _ = _offsets(zone, since)
        pending: list[_Span] = []
        for wall in self._walls((since + low).replace(tzinfo=None)):
            for span in self._spans_at(wall, zone):
                if span[0] >= since:
                    heapq.heappush(pending, span)
            while pending:
                _, high = _offsets(zone, pending[0][0])
                if pending[0][0] > wall.replace(tzinfo=_UTC) - high:
                    break
                yield heapq.heappop(pending)
        while pending:
            yield heapq.heappop(pending)


# --- when a rotation starts ---------------------------------------------------------------------

def start_at(window: Window | None, due: datetime, deadline: datetime) -> tuple[datetime, bool]:
    """When a rotation that falls due at ``due`` may start, and whether it is forced outside the
    window.

    ``deadline`` is ``expires_on - safety_margin``: waiting for the window must never let a key get
    closer to expiry than that. So:

    * no window: ``(due, False)``;
    * ``due`` inside the window: ``(due, False)``;
    * the window opens at or before the deadline: ``(that opening, False)``;
    * otherwise (no opening in time, or ``due`` already past the deadline): the rotation starts at
      the deadline, or at ``due`` if that is later, outside the window: ``(max(due, deadline), True)``.
    """
    due, deadline = _utc(due), _utc(deadline)
    if window is None or window.contains(due):
        return due, False
    if due < deadline:
        opens = window.opening(due)
        if opens is not None and opens <= deadline:
            return opens, False
    return max(due, deadline), True


def may_start(window: Window | None, now: datetime, due: datetime, deadline: datetime) -> bool:
    """Whether a rotation due at ``due`` may start at ``now``: it is due, and the window is open or
    the deadline (``expires_on - safety_margin``) has come. Agrees with :func:`start_at`."""
    return now >= due and (window is None or window.contains(now) or now >= deadline)


# --- helpers ------------------------------------------------------------------------------------

_UTC = timezone.utc


def _utc(moment: datetime) -> datetime:
    """An instant in UTC; naive means UTC (as in rotator.timeutil)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=_UTC)
    return moment.astimezone(_UTC)


def _instant(wall: datetime, zone: ZoneInfo, fold: int) -> datetime:
    """A local wall-clock time as a UTC instant; ``fold=0``: the first occurrence of a repeated time,
    a skipped time shifted forward by the gap."""
    return wall.replace(tzinfo=zone, fold=fold).astimezone(_UTC)


def _offsets(zone: ZoneInfo, moment: datetime) -> tuple[timedelta, timedelta]:
    """The lowest and highest UTC offsets ``zone`` has within a day or so of ``moment``."""
    found = []
    for shift in (-_NEAR, timedelta(0), _NEAR):
        try:
            offset = (moment + shift).astimezone(zone).utcoffset()
        except OverflowError:
            continue
        if offset is not None:
            found.append(offset)
    return (min(found), max(found)) if found else (timedelta(0), timedelta(0))


@lru_cache(maxsize=256)
def _trigger(expr: str) -> CronTrigger:
    """The cron expression on a plain (UTC) clock: local wall-clock fire times, DST handled here."""
    return CronTrigger.from_crontab(expr, timezone=_UTC)


def _zone_name(name: str) -> str:
    text = str(name).strip()
    try:
        ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"timezone: unknown time zone {name!r} (use an IANA name like "
                         "Europe/Amsterdam, America/New_York or UTC)") from None
    return text


def _parse_days(text: str) -> frozenset[int]:
    """ "mon-fri", "sat,sun", "fri-mon" (wraps), "*"; an empty text names no day."""
    chosen: set[int] = set()
    for part in (p.strip() for p in text.strip().lower().split(",")):
        if not part:
            continue
        if part == "*":
            chosen.update(range(7))
            continue
        first, dash, last = part.partition("-")
        ends = [_day(first.strip())] + ([_day(last.strip())] if dash else [])
        if len(ends) == 1:
            chosen.add(ends[0])
        else:
            span = (ends[1] - ends[0]) % 7
            chosen.update((ends[0] + i) % 7 for i in range(span + 1))
    return frozenset(chosen)


def _day(name: str) -> int:
    if name not in _DAY_NUMBERS:
        raise ValueError(f"days: unknown day {name!r} ({_DAYS_HELP})")
    return _DAY_NUMBERS[name]


def _parse_time(field: str, value: str, *, latest: int) -> int:
    """ "HH:MM" as minutes after midnight, at most ``latest`` (24:00 only for an end)."""
    match = _HHMM.fullmatch(str(value).strip())
    minutes = int(match[1]) * 60 + int(match[2]) if match and int(match[2]) < 60 else None
    if minutes is None or minutes > latest:
        raise ValueError(f"{field}: expected HH:MM from 00:00 to {_hhmm(latest)}, got {value!r}")
    return minutes


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"
