"""PURE: what state each secret is in and what happens next, for ``plan``, ``status`` and the
scheduler. It asks the same ``machine.decide`` the engine uses, as a runner that holds no lease,
so the plan can never disagree with what a run would do.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from rotator import machine
from rotator.machine import Observations, Policy, View
from rotator.models import Phase, RotationRecord

PLANNER = "(planner)"


@dataclass(frozen=True)
class Assessment:
    health: str                 # healthy | due | rotating | grace | failing | expired | unmanaged | blocked
    action: str                 # what the next run does, in words
    at: datetime | None         # when (None: now)
    phase: str | None
    key: str | None             # label of the current key
    expires_on: datetime | None
    last_error: str | None = None
    attempts: int = 0


def assess(policy: Policy, record: RotationRecord | None, primary: View, now: datetime) -> Assessment:
    """Health and next action of one secret, from its record and a read of its primary."""
    step = machine.decide(policy, Observations(me=PLANNER, record=record, views={policy.primary: primary}), now)
    current = record.current if record else None
    expires = current.expires_on if current else None
    base = dict(phase=record.phase.value if record else None, key=current.label() if current else None,
                expires_on=expires, last_error=record.last_error if record else None,
                attempts=record.attempts if record else 0)
    action, at = _describe(step, record, now)
    return Assessment(health=_health(step, record, now), action=action, at=at, **base)


def _describe(step: machine.Step, record: RotationRecord | None, now: datetime) -> tuple[str, datetime | None]:
    if isinstance(step, machine.Rest):
        in_grace = record is not None and record.phase is Phase.GRACE
        return ("revoke the old key" if in_grace else "rotate"), step.next_at
    if isinstance(step, machine.Wait):
        return f"wait: {step.reason}", step.until
    if isinstance(step, machine.Fail):
        return f"blocked: {step.reason}", None
    if isinstance(step, machine.Adopt):
        return "adopt the key found in the primary", now
    if isinstance(step, machine.Claim):
        return f"rotate now ({step.reason})", now
    if isinstance(step, machine.RevokeOld | machine.Finish | machine.ReadBack) and record and record.phase is Phase.GRACE:
        return "revoke the old key (grace is over)", now
    return "resume the rotation in flight", now


def _health(step: machine.Step, record: RotationRecord | None, now: datetime) -> str:
    if record is None:
        return "blocked" if isinstance(step, machine.Fail) else "unmanaged"
    current = record.current
    if current is not None and current.expires_on is not None and current.expires_on <= now:
        return "expired"
    if isinstance(step, machine.Fail) or (record.last_error and record.attempts > 0):
        return "failing"
    if record.phase is Phase.GRACE:
        return "grace"
    if record.phase is not Phase.IDLE or isinstance(step, machine.Wait):
        return "rotating"
    if isinstance(step, machine.Claim):
        return "due"
    return "healthy"
