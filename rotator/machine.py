"""The rotation state machine. PURE: no I/O, no clock; ``now`` is an argument.

``decide(policy, obs, now)`` looks at the rotation record (the journal in the primary backend)
and at what this run has observed and done so far, and returns the one next :class:`Step`. The
engine performs it, updates the observations and asks again, until a terminal step (``Rest``,
``Wait``, ``Fail``). Because every decision is a function of the persisted record plus facts the
current run gathered itself, a run that dies after any effect is resumed by the next run from
the record alone (I5).

Phases (see ARCHITECTURE.md §4)::

    IDLE ─due─▶ CLAIMED ─issue+stage─▶ STAGED ─confirm, authenticate, deploy, read back─▶ GRACE ─▶ IDLE
                  │                      │                               (revoke old or hold it, finish)
                  └ runner died: take    └ new key refused: ROLLING_BACK ─restore, revoke new─▶ IDLE
                    over (CAS), sweep
                    its orphans, issue

The new key is confirmed (found in the issuer's listing under this rotation's unique name, with
the last 4 characters of the value the issuer returned) and authenticated live before it reaches
any secondary: a key that does not work is never served. Every revoke passes the revoke gate
(``rotator.gate``); the engine gathers its evidence.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Mapping

from rotator.models import Delivery, Phase, RotationRecord, Secret, Snapshot


@dataclass(frozen=True)
class Policy:
    """The per-secret settings decisions depend on."""

    lead_time: timedelta
    grace: timedelta
    lease: timedelta
    create_if_missing: bool
    primary: str                  # label of the primary target
    secondaries: tuple[str, ...]  # labels of the other targets, in config order
    window: Any = None            # rotator.window.Window: when a rotation may start (None: any time)
    safety_margin: timedelta = timedelta(days=3)  # ... and the latest it may wait for one
    hook_events: tuple[tuple[str, tuple[str, ...]], ...] = ()   # event -> hook names (rotator.hooks)

    def hooks_for(self, event: str) -> tuple[str, ...]:
        for name, hooks in self.hook_events:
            if name == event:
                return hooks
        return ()


@dataclass(frozen=True)
class View:
    """What one target holds, as fingerprints. ``fresh``: read from the backend in this run
    (False when inferred from this run's own write and not yet read back)."""

    exists: bool = False
    current: str | None = None
    pending: str | None = None
    previous: str | None = None
    fresh: bool = True


def view_of(snap: Snapshot, fresh: bool = True) -> View:
    """Reduce a backend read to fingerprints: the machine never sees values."""
    def fp(value: Secret | None) -> str | None:
        return value.fingerprint if value is not None else None

    return View(exists=snap.exists, current=fp(snap.current), pending=fp(snap.pending),
                previous=fp(snap.previous), fresh=fresh)


@dataclass(frozen=True)
class Observations:
    """The record plus everything this run has seen and done for one secret."""

    me: str                                   # this runner's identity
    record: RotationRecord | None
    views: Mapping[str, View] = field(default_factory=dict)   # by target label; absent = not read
    force: bool | str = False                 # rotate now (a string says why)
    deployed: frozenset[str] = frozenset()    # secondaries written by this run in this phase
    took_over: bool = False                   # this run took the claim over from another runner
    orphans_swept: bool = False
    issue_confirmed: bool = False             # the pending key was found in the issuer's listing
    issue_problem: str | None = None          # ... or what was wrong with it (roll back)
    new_key_accepted: bool | None = None      # live authentication of the pending key
    old_revoke: str | None = None             # revoked | gone | held: what the gate let happen to the old key
    new_revoked: bool = False
    held_checked: bool = False                # the held revokes of this secret were tried in this run
    rolled_back: bool = False                 # this run rolled a rotation back: no new one now
    rotated: bool = False                     # this run promoted a new key: no second rotation now
    deliver_hooks: bool = True                # deliver owed hooks when due (the planner only looks)
    incident: bool = False                    # revoke --compromised: a pause does not stop it


# --- steps -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Step:
    """Base class. ``terminal`` steps end the run for this secret."""

    terminal = False

    @property
    def name(self) -> str:
        return type(self).__name__


@dataclass(frozen=True)
class Rest(Step):
    """Nothing to do now; the next thing happens at ``next_at``."""

    reason: str
    next_at: datetime | None = None
    window: bool = False          # due, and waiting for the rotation window to open
    terminal = True


@dataclass(frozen=True)
class Wait(Step):
    """Another runner holds the lease; look again at ``until``."""

    reason: str
    until: datetime | None = None
    terminal = True


@dataclass(frozen=True)
class Fail(Step):
    """This run cannot make progress for this secret. ``retry`` False: needs a person."""

    reason: str
    retry: bool = True
    terminal = True


@dataclass(frozen=True)
class Adopt(Step):
    """The primary holds a key rotator has no record of: match it at the issuer, record it."""

    reason: str


@dataclass(frozen=True)
class Claim(Step):
    """Take the lease for a new rotation (CAS on the record). ``bootstrap``: no key exists yet."""

    reason: str
    bootstrap: bool = False
    outside_window: bool = False  # due, and no opening of the window comes before the safety margin


@dataclass(frozen=True)
class SweepOrphans(Step):
    """After taking a claim over: revoke (through the gate) any key the previous owner minted
    under this rotation's name."""


@dataclass(frozen=True)
class IssueAndStage(Step):
    """Issue the new key and write it to the primary's pending slot in one breath (I2)."""


@dataclass(frozen=True)
class TakeOver(Step):
    """The lease holder is gone (lease expired or released): take the claim by compare-and-swap
    before touching anything it owned."""


@dataclass(frozen=True)
class ConfirmIssued(Step):
    """Find the pending key in a listing fetched after it was issued: learn its id, revoke its
    twins, and make sure the value the issuer returned is the key it created."""


@dataclass(frozen=True)
class Deploy(Step):
    """Write the new key as current (old as previous) to these secondaries."""

    targets: tuple[str, ...]


@dataclass(frozen=True)
class ReadBack(Step):
    """Read these targets to compare fingerprints."""

    targets: tuple[str, ...]


@dataclass(frozen=True)
class VerifyNewKey(Step):
    """Authenticate at the issuer with the pending key."""


@dataclass(frozen=True)
class Promote(Step):
    """Primary: pending → current, current → previous; the grace window starts."""


@dataclass(frozen=True)
class BeginRollback(Step):
    reason: str


@dataclass(frozen=True)
class Restore(Step):
    """Rollback: put the old key back as current on these secondaries."""

    targets: tuple[str, ...]


@dataclass(frozen=True)
class RevokeNew(Step):
    """Rollback: revoke the key that failed verification."""


@dataclass(frozen=True)
class FinishRollback(Step):
    reason: str


@dataclass(frozen=True)
class RevokeOld(Step):
    """Grace is over and every target holds the new key: ask the revoke gate about the old key,
    and revoke it or hold it (I3)."""


@dataclass(frozen=True)
class RevokeHeld(Step):
    """Ask the gate again about old keys whose revoke an earlier run held."""


@dataclass(frozen=True)
class DeliverHooks(Step):
    """Deliver the hook deliveries the record owes and that are due (rotator.hooks): at least
    once, before anything else, so a crash between an effect and its hooks re-delivers them."""


@dataclass(frozen=True)
class Announce(Step):
    """Record deliveries owed for ``event`` (``before_revoke``) so they are made before the
    effect they announce."""

    event: str


@dataclass(frozen=True)
class Finish(Step):
    """Close the rotation: record back to IDLE (a held old key moves to the record's held list)."""


# --- decisions ---------------------------------------------------------------------------------

def decide(policy: Policy, obs: Observations, now: datetime) -> Step:
    """The next step for one secret."""
    record = obs.record
    primary = obs.views.get(policy.primary, View(exists=False))
    if record is None:
        return _unmanaged(policy, primary)
    owned = record.phase in (Phase.CLAIMED, Phase.STAGED, Phase.ROLLING_BACK)
    if owned and record.owner != obs.me:
        if record.owner and record.lease_until and record.lease_until > now:
            return Wait(f"rotation {record.rotation_id} in progress by {record.owner}", record.lease_until)
    if obs.deliver_hooks and (not owned or record.owner == obs.me) and any(d.due(now) for d in record.deliveries):
        return DeliverHooks()
    step = _PHASES[record.phase](policy, obs, record, primary, now)
    if isinstance(step, Rest):     # wake for the next retry of a hook delivery, too
        retry = next_delivery(record, now)
        if retry is not None and (step.next_at is None or retry < step.next_at):
            step = replace(step, next_at=retry)
    return step


def next_delivery(record: RotationRecord, now: datetime) -> datetime | None:
    """When the next owed hook delivery may be tried again (None: none owed later)."""
    times = [d.next_at for d in record.deliveries if d.owed and d.next_at is not None and d.next_at > now]
    return min(times) if times else None


def owed_consumers(record: RotationRecord, rotation_id: str | None) -> tuple[str, ...]:
    """The gate hooks of rotation ``rotation_id`` that have not confirmed yet: while any has not,
    the key that rotation replaced may not be revoked."""
    return tuple(dict.fromkeys(d.hook for d in record.deliveries
                               if d.gate and d.owed and d.rotation_id == rotation_id))


def owe(record: RotationRecord, policy: Policy, event: str, *, gates: frozenset[str] = frozenset(),
        **context: Any) -> tuple[Delivery, ...]:
    """``record.deliveries`` plus one owed delivery per hook subscribed to ``event`` for the
    record's rotation (none twice: the key is (rotation id, event, hook))."""
    rotation = record.rotation_id or "-"
    have = {d.ident for d in record.deliveries}
    new = tuple(Delivery(rotation, event, hook, gate=hook in gates, **context)
                for hook in policy.hooks_for(event) if (rotation, event, hook) not in have)
    return record.deliveries + new


def starts_at(policy: Policy, record: RotationRecord, now: datetime) -> tuple[datetime | None, bool]:
    """When the current key's rotation may start, as seen at ``now``, and whether that is
    outside the rotation window: the first opening at or after the due instant (expiry − lead
    time) — or after ``now``, once that has passed —; if none comes before expiry − safety
    margin, at that deadline, outside the window (a key never expires because of a window)."""
    due = due_at(policy, record)
    if due is None or policy.window is None:
        return due, False
    assert record.current is not None and record.current.expires_on is not None
    deadline = earlier(record.current.expires_on, policy.safety_margin)
    from rotator.window import start_at

    return start_at(policy.window, max(due, now), deadline)


def due_at(policy: Policy, record: RotationRecord) -> datetime | None:
    """When the current key must be replaced: its real expiry minus the lead time."""
    if record.current is None or record.current.expires_on is None:
        return None
    return earlier(record.current.expires_on, policy.lead_time)


def grace_ends(policy: Policy, record: RotationRecord) -> datetime | None:
    """The end of the grace window: as recorded, or sooner if the policy's grace is now shorter
    (a config change, or the incident procedure's zero grace)."""
    ends = record.grace_until
    if record.verified_at is not None:
        by_policy = later(record.verified_at, policy.grace)
        ends = by_policy if ends is None else min(ends, by_policy)
    return ends


def earlier(moment: datetime, delta: timedelta) -> datetime:
    """``moment - delta``, clamped at the earliest instant: planning never raises on a date."""
    try:
        return moment - delta
    except OverflowError:
        return datetime.min.replace(tzinfo=moment.tzinfo)


def later(moment: datetime, delta: timedelta) -> datetime:
    """``moment + delta``, clamped at the latest instant."""
    try:
        return moment + delta
    except OverflowError:
        return datetime.max.replace(tzinfo=moment.tzinfo)


def _unmanaged(policy: Policy, primary: View) -> Step:
    if primary.current is not None:
        return Adopt("first run: the primary holds a key rotator has not recorded yet")
    if primary.pending is not None:
        return Fail("primary holds a pending value but no rotation record; inspect it by hand", retry=False)
    if not policy.create_if_missing:
        return Fail(f"{policy.primary} holds no key and create_if_missing is off", retry=False)
    return Claim("bootstrap: no key yet", bootstrap=True)


def _idle(policy: Policy, obs: Observations, record: RotationRecord, primary: View, now: datetime) -> Step:
    recorded = record.current.fingerprint if record.current else None
    paused = None if obs.incident else record.paused_now(now)
    if primary.current != recorded:
        if primary.current is not None:
            return Adopt("the primary's key was changed outside rotator")
        if paused is None:
            return Claim("the primary lost its key: issuing a new one", bootstrap=True)
    if paused is not None:       # nothing starts, nothing is revoked; --force does not override a pause
        return Rest(paused_reason(paused), next_at=paused.until)
    if record.held and not obs.held_checked:
        return RevokeHeld()
    if obs.rolled_back:
        return Fail(record.last_error or "the new key was rolled back")
    start, outside = starts_at(policy, record, now)
    if obs.rotated:       # at most one rotation per secret per run, whatever the dates say
        return Rest("rotated in this run", next_at=start if start is not None and start > now else None)
    if obs.force:
        return Claim(obs.force if isinstance(obs.force, str) else "forced")
    if start is None:
        return Claim("expiry of the current key is unknown")
    expired = record.current is not None and record.current.expires_on and now >= record.current.expires_on
    if expired:
        return Claim("the current key has EXPIRED")
    due = due_at(policy, record)
    assert due is not None
    if now >= due and policy.window is not None and not policy.window.contains(now):
        if now < start:
            return Rest(f"due; waiting for the rotation window ({policy.window.describe()})", next_at=start,
                        window=True)
        return Claim(f"due, and no opening of the rotation window ({policy.window.describe()}) comes before"
                     f" the safety margin ({_days(policy.safety_margin)} before expiry): rotating outside it",
                     outside_window=True)
    if now >= due:
        return Claim("due: expires within the lead time")
    return Rest("healthy", next_at=start)


def paused_reason(pause: Any) -> str:
    """'paused by ops@host until 2027-01-10 09:00Z: change freeze'."""
    from rotator.timeutil import short_instant

    until = f" until {short_instant(pause.until)}" if pause.until else ""
    why = f": {pause.reason}" if pause.reason else ""
    return f"paused by {pause.by}{until}{why}"


def _days(delta: timedelta) -> str:
    from rotator.timeutil import format_duration

    return format_duration(delta)


def _claimed(policy: Policy, obs: Observations, record: RotationRecord, primary: View, now: datetime) -> Step:
    if record.owner != obs.me:
        return TakeOver()            # decide() already waited for a live lease
    if obs.took_over and not obs.orphans_swept:
        return SweepOrphans()
    return IssueAndStage()


def _staged(policy: Policy, obs: Observations, record: RotationRecord, primary: View, now: datetime) -> Step:
    if record.owner != obs.me:
        return TakeOver()
    if record.pending is None or primary.pending != record.pending.fingerprint:
        return BeginRollback("the pending key is no longer in the primary")
    if not obs.issue_confirmed and record.pending.key_id is None:
        return ConfirmIssued()
    if obs.issue_problem:
        return BeginRollback(obs.issue_problem)
    if obs.new_key_accepted is None:
        return VerifyNewKey()
    if not obs.new_key_accepted:
        return BeginRollback("the issuer refused the new key")
    todo = tuple(t for t in policy.secondaries if t not in obs.deployed)
    if todo:
        return Deploy(todo)
    unread = tuple(t for t in (policy.primary, *policy.secondaries) if not _fresh(obs, t))
    if unread:
        return ReadBack(unread)
    wanted = record.pending.fingerprint
    wrong = [t for t in policy.secondaries if obs.views[t].current != wanted]
    if primary.pending != wanted:
        wrong.insert(0, policy.primary)
    if wrong:
        return Fail(f"read-back does not show the new key on {', '.join(wrong)}")
    return Promote()


def _grace(policy: Policy, obs: Observations, record: RotationRecord, primary: View, now: datetime) -> Step:
    current = record.current.fingerprint if record.current else None
    old = record.previous
    ends = grace_ends(policy, record)
    if ends and now < ends:       # never cut short by a date alone: the key counts as dead only by listing
        return Rest("grace window: both keys valid", next_at=ends)
    paused = None if obs.incident else record.paused_now(now)
    if paused is not None and old is not None:
        return Rest(f"{paused_reason(paused)}; the old key's revoke waits", next_at=paused.until)
    if primary.current != current:
        return Fail(f"{policy.primary} no longer holds the new key; not revoking the old one", retry=False)
    unread = tuple(t for t in policy.secondaries if not _fresh(obs, t))
    if unread:
        return ReadBack(unread)
    drifted = tuple(t for t in policy.secondaries if obs.views[t].current != current)
    if drifted:
        again = tuple(t for t in drifted if t not in obs.deployed)
        if again:
            return Deploy(again)
        return Fail(f"{', '.join(drifted)} still not holding the new key; old key kept")
    if old is not None and obs.old_revoke is None:
        if policy.hooks_for("before_revoke") and not any(
                d.event == "before_revoke" and d.rotation_id == record.rotation_id for d in record.deliveries):
            return Announce("before_revoke")
        return RevokeOld()
    return Finish()


def _rolling_back(policy: Policy, obs: Observations, record: RotationRecord, primary: View, now: datetime) -> Step:
    if record.owner != obs.me:
        return TakeOver()
    todo = tuple(t for t in policy.secondaries if t not in obs.deployed)
    if todo and primary.current is not None:
        return Restore(todo)
    if record.pending is not None and not obs.new_revoked:
        return RevokeNew()
    return FinishRollback(record.rollback_reason or record.last_error or "rollback")


def _fresh(obs: Observations, label: str) -> bool:
    view = obs.views.get(label)
    return view is not None and view.fresh


_PHASES = {
    Phase.IDLE: _idle,
    Phase.CLAIMED: _claimed,
    Phase.STAGED: _staged,
    Phase.GRACE: _grace,
    Phase.ROLLING_BACK: _rolling_back,
}
