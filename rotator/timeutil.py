"""Instants and durations as rotator reads and writes them: UTC, ISO-8601 with ``Z``; "14d", "48h"."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

_UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([wdhms])")


def parse_duration(text: str | int | float | timedelta) -> timedelta:
    """Parse "14d", "48h", "1h30m", "90s" (or a number of seconds) into a timedelta."""
    if isinstance(text, timedelta):
        return text
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return timedelta(seconds=text)
    if not isinstance(text, str):
        raise ValueError(f"expected a duration like '14d' or '48h', got {type(text).__name__}")
    compact = text.strip().lower().replace(" ", "")
    parts = _DURATION.findall(compact)
    if not compact or "".join(n + u for n, u in parts) != compact:
        raise ValueError(f"not a duration: {text!r} (use e.g. '14d', '48h', '1h30m', '90s')")
    return timedelta(seconds=sum(float(n) * _UNITS[u] for n, u in parts))


def format_duration(delta: timedelta) -> str:
    """Render a timedelta compactly: 1209600s -> '14d', 5400s -> '1h30m', negatives with '-'."""
    seconds = int(delta.total_seconds())
    sign, seconds = ("-", -seconds) if seconds < 0 else ("", seconds)
    if seconds == 0:
        return "0s"
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            out.append(f"{count}{unit}")
    return sign + "".join(out[:2])


def parse_instant(value: str | datetime) -> datetime:
    """Parse an ISO-8601 instant leniently (``Z``, offsets, fractions); naive means UTC. Anything
    that is not one (a number, an instant out of range in UTC) raises ValueError."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        moment = datetime.fromisoformat(text)
    else:
        raise ValueError(f"an instant must be an ISO-8601 string, not {type(value).__name__}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    try:
        return moment.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError("the instant lies outside the representable range once moved to UTC") from None


def format_instant(moment: datetime | None) -> str | None:
    """Render an instant as ISO-8601 UTC with ``Z`` and whole seconds."""
    if moment is None:
        return None
    return moment.astimezone(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def short_instant(moment: datetime | None) -> str:
    """For people: ``2027-02-12 14:00Z`` ("-" for none); never raises on an extreme date."""
    if moment is None:
        return "-"
    try:
        return moment.strftime("%Y-%m-%d %H:%MZ")
    except ValueError:
        return moment.isoformat()


_MONTH_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def shortest_months(months: int) -> timedelta:
    """The shortest time ``months`` calendar months can span: 3 -> 89 days (February to April of
    a common year), 1 -> 28 days, 12 -> 365 days. A key that lives "3 months" lives at least this."""
    if months <= 0:
        return timedelta(0)
    years, rest = divmod(months, 12)
    spans = [sum(_MONTH_DAYS[(start + i) % 12] for i in range(rest)) for start in range(12)]
    return timedelta(days=365 * years + min(spans))
