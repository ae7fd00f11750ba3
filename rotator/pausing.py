"""``rotator pause`` and ``rotator resume``: a pause lives in the rotation record in the primary,
written by compare-and-swap, so every replica, CronJob and person running rotator sees it.

A pause stops rotations from starting and old keys from being revoked; a rotation already in
flight finishes (stopping it half-way would leave two keys and a claim behind), and
``revoke --compromised`` still works. It lapses by itself at ``--until``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Callable

from rotator.errors import Conflict, RotatorError, UsageError
from rotator.models import Pause, RotationRecord
from rotator.runtime import ManagedSecret
from rotator.timeutil import parse_duration, parse_instant, short_instant

ATTEMPTS = 3


def parse_until(text: str | None, now: datetime) -> datetime | None:
    """``--until``: an instant (2027-01-10T09:00Z) or a duration from now (3d, 12h)."""
    if text is None:
        return None
    try:
        until = parse_instant(text)
    except (ValueError, TypeError):
        try:
            until = now + parse_duration(text)
        except (ValueError, TypeError):
            raise UsageError(f"--until {text!r}: expected an instant like 2027-01-10T09:00Z or a duration like"
                             " 3d or 12h") from None
    if until <= now:
        raise UsageError(f"--until {text!r} is in the past ({short_instant(until)}; now is {short_instant(now)})")
    return until


def pause(secret: ManagedSecret, *, by: str, now: datetime, until: datetime | None = None,
          reason: str = "") -> RotationRecord:
    """Pause ``secret``; pausing a paused secret replaces its pause (a new --until or reason)."""
    return _update(secret, lambda record: record.evolve(paused=Pause(by=by, at=now, until=until, reason=reason)))


def resume(secret: ManagedSecret) -> tuple[RotationRecord, Pause | None]:
    """Lift the pause; returns the record and the pause that was lifted (None: it was not paused)."""
    lifted: list[Pause | None] = [None]

    def change(record: RotationRecord) -> RotationRecord:
        lifted[0] = record.paused
        return record.evolve(paused=None)

    return _update(secret, change), lifted[0]


def _update(secret: ManagedSecret, change: Callable[[RotationRecord], RotationRecord]) -> RotationRecord:
    bound = secret.primary
    for _ in range(ATTEMPTS):
        snap = bound.backend.read(bound.target)
        if not snap.exists:
            raise UsageError(f"{secret.name}: its primary {bound.label} holds nothing yet; run `rotator rotate"
                             f" {secret.name}` first (or set create_if_missing = false to keep it from being"
                             " created)")
        record = change(snap.record or RotationRecord())
        try:
            bound.backend.write_record(bound.target, record, expect=snap.version)
            return record
        except Conflict:
            continue          # another runner wrote the record meanwhile: apply the change to its record
    raise RotatorError(f"{secret.name}: the rotation record in {bound.label} kept changing; try again",
                       transient=True)


__all__ = ["parse_until", "pause", "resume"]
