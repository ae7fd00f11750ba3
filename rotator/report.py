"""What a run reports: events (for the timeline, the audit trail, metrics and alerts), each
secret's outcome, and the run's report. Never a key value."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rotator.models import KeyInfo, KeyRef


@dataclass(frozen=True)
class Event:
    """One thing that happened, for the timeline, the audit trail and metrics. Never a value.

    ``result``: ``ok``, ``error``, ``alert``, or ``intent`` — written *before* an effect, so the
    audit trail has a line for every effect even when the process dies right after it.
    """

    at: datetime
    secret: str
    action: str
    detail: str = ""
    rotation_id: str | None = None
    key: str | None = None          # KeyRef.label(): last 4 characters and id, for people
    fingerprint: str | None = None
    key_id: str | None = None
    last4: str | None = None
    result: str = "ok"
    runner: str | None = None


def key_event(at: datetime, secret: str, action: str, detail: str = "", *, key: KeyRef | None = None,
              entry: KeyInfo | None = None, rotation_id: str | None = None, result: str = "ok",
              runner: str | None = None) -> Event:
    """An event about a key known by its reference (``key``) or by a listing entry."""
    return Event(
        at=at, secret=secret, action=action, detail=detail, rotation_id=rotation_id,
        key=key.label() if key else (entry.label() if entry else None),
        fingerprint=key.fingerprint if key else None,
        key_id=(key.key_id if key and key.key_id else entry.key_id if entry else None),
        last4=key.last4 if key else (entry.last4 if entry else None),
        result=result, runner=runner,
    )


@dataclass
class Outcome:
    """How one secret's run ended. ``error`` is the run's *first* error: cleanup after it (a
    revoke of what the run minted, releasing the claim) never replaces it, and an outcome with
    an error is ``failed`` whatever else happened."""

    secret: str
    status: str = "ok"              # ok | changed | waiting | failed
    phase: str | None = None
    detail: str = ""
    next_at: datetime | None = None
    actions: list[str] = field(default_factory=list)
    error: str | None = None
    retry: bool = True

    def fail(self, error: str, *, retry: bool = True) -> None:
        if self.error is None:
            self.error, self.retry = error, retry
            self.detail = error
        self.status = "failed"

    def did(self, action: str) -> None:
        self.actions.append(action)
        if self.status == "ok":
            self.status = "changed"


@dataclass
class RunReport:
    outcomes: list[Outcome]
    problems: list[str] = field(default_factory=list)     # run-level: the stray sweep's failed revokes

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def exit_code(self) -> int:
        return 1 if self.failed or self.problems else 0
