"""PURE: what state each secret is in and what happens next, for ``plan``, ``status`` and the
daemon. It asks the same ``machine.decide`` the engine uses, as a runner that holds no lease,
so the plan can never disagree with what a run would do.

Each secret gets exactly one health, with its own reason. When several apply, the first of
:data:`PRECEDENCE` wins — the most urgent for the applications reading the secret first:

==============  ==========================================================================  =======
health          when                                                                        healthy
==============  ==========================================================================  =======
``error``       assessing the secret raised (a corrupt record, a date out of range, a bug)  no
``unreadable``  the primary could not be read                                               no
``expired``     the current key's ``expires_on`` has passed                                 no
``rejected``    the issuer no longer lists the current key (absent by id — or by name and   no
                last 4 when its id is unknown —, or listed with an ``expires_on`` passed)
``blocked``     the next step needs a person (adoption refused, no key and no bootstrap)    no
``paused``      ``rotator pause``: no rotation starts and no old key is revoked until it    no
                lapses or ``rotator resume`` (the reason says how long the key has left)
``expiring``    the current key expires before the next possible rotation (within one       no
                check interval) and no live claim is rotating it
``failing``     the last run failed (``last_error`` with ``attempts`` > 0), since when      no
``stale-claim`` a claim (claimed, staged, rolling_back) whose lease ran out: its owner      no
                died; the next run takes it over
``held``        the revoke of an old key was held by the revoke gate (``record.held``)      no
``unmanaged``   no rotation record yet: the next run adopts (or issues) a key               no
``rotating``    a rotation is in flight (a live claim, or one released for the next run)    yes
``grace``       the new key is current everywhere; the old one is revoked at grace's end    yes
``due``         the key falls due at the next run                                           yes
``healthy``     nothing to do before the due instant                                        yes
==============  ==========================================================================  =======

Also pure here: the issuer credential's assessment (:func:`assess_credential`), which key a
listing no longer shows (:func:`unlisted`), and keys shared by several secrets
(:func:`shared_keys`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Iterable, Mapping

from rotator import machine
from rotator.machine import Observations, Policy, View
from rotator.models import HeldKey, KeyInfo, KeyRef, Listing, Pause, Phase, RotationRecord, Snapshot
from rotator.timeutil import format_duration, short_instant

PLANNER = "(planner)"

#: Every health, most urgent first: when several apply, the first wins.
PRECEDENCE = ("error", "unreadable", "expired", "rejected", "blocked", "paused", "expiring", "failing", "stale-claim",
              "held", "unmanaged", "rotating", "grace", "due", "healthy")
#: The healths ``status`` counts as healthy (exit code 0).
HEALTHY = ("healthy", "due", "rotating", "grace")
#: Credential healths: ``managed`` (rotated as a secret), ``healthy``, ``expiring`` (an unmanaged
#: credential within the lead time, or one whose expiry is unknown), ``expired``, ``unknown`` (the
#: listing failed or does not show it), ``unreadable`` (its reference does not resolve).
CREDENTIAL_HEALTHS = ("managed", "healthy", "expiring", "expired", "unknown", "unreadable")
CREDENTIAL_HEALTHY = ("managed", "healthy")
OWNED = (Phase.CLAIMED, Phase.STAGED, Phase.ROLLING_BACK)


@dataclass(frozen=True)
class Assessment:
    health: str                 # one of PRECEDENCE
    action: str                 # what the next run does, in words
    at: datetime | None         # when (None: now)
    phase: str | None
    key: str | None             # label of the current key: '…c0de (id 42)'
    expires_on: datetime | None
    last_error: str | None = None
    attempts: int = 0
    reason: str = ""            # why this health, in words
    key_id: str | None = None
    last4: str | None = None
    created_on: datetime | None = None
    error_since: datetime | None = None
    owner: str | None = None
    lease_until: datetime | None = None
    held: tuple[HeldKey, ...] = ()
    paused: Pause | None = None         # the pause in force
    outside_window: bool = False        # the next rotation starts outside the rotation window

    @property
    def healthy(self) -> bool:
        return self.health in HEALTHY


def assess(policy: Policy, record: RotationRecord | None, primary: View, now: datetime, *,
           listing: Listing | None = None, check_interval: timedelta | None = None) -> Assessment:
    """Health and next action of one secret, from its record and a read of its primary.

    ``listing``: the issuer's listing, requested *after* the primary was read (so a key promoted
    before the read is in it); None when it was not (or could not be) fetched — then ``rejected``
    is not judged. ``check_interval``: how far away the next possible rotation may be, for
    ``expiring``.
    """
    # held revokes are shown on their own (held_checked): the step after them is the one to plan
    step = machine.decide(policy, Observations(me=PLANNER, record=record, views={policy.primary: primary},
                                               held_checked=True, deliver_hooks=False), now)
    current = record.current if record else None
    action, at = _describe(step, record, now)
    outside = False
    if record is not None and record.current is not None and policy.window is not None \
            and record.paused_now(now) is None:
        start, outside = machine.starts_at(policy, record, now)
        if outside and action == "rotate":
            action = (f"rotate OUTSIDE the rotation window ({policy.window.describe()}): it does not open before"
                      f" {format_duration(policy.safety_margin)} ahead of the key's expiry")
    health, reason = _health(step, record, now, listing, check_interval)
    return Assessment(
        health=health, action=action, at=at, reason=reason,
        phase=record.phase.value if record else None,
        key=current.label() if current else None, key_id=current.key_id if current else None,
        last4=current.last4 if current else None, created_on=current.created_on if current else None,
        expires_on=current.expires_on if current else None,
        last_error=record.last_error if record else None, attempts=record.attempts if record else 0,
        error_since=record.error_since if record else None,
        owner=record.owner if record else None, lease_until=record.lease_until if record else None,
        held=record.held if record else (), paused=record.paused_now(now) if record else None,
        outside_window=outside,
    )


def failed(health: str, message: str, record: RotationRecord | None = None) -> Assessment:
    """The assessment of a secret that could not be assessed: ``unreadable`` (its primary could
    not be read) or ``error`` (assessing it raised). ``message`` must already be redacted."""
    current = record.current if record else None
    return Assessment(health=health, reason=message, action="fix the primary" if health == "unreadable"
                      else "look at the record and the log", at=None,
                      phase=record.phase.value if record else None,
                      key=current.label() if current else None, key_id=current.key_id if current else None,
                      last4=current.last4 if current else None, expires_on=None,
                      last_error=record.last_error if record else None)


def _describe(step: machine.Step, record: RotationRecord | None, now: datetime) -> tuple[str, datetime | None]:
    if isinstance(step, machine.Rest) and record is not None and record.paused_now(now) is not None:
        return "nothing until resumed (rotator resume)", step.next_at
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
    if isinstance(step, machine.TakeOver):
        if record is not None and record.owner:
            return f"take the rotation over from {record.owner} (its lease ran out) and resume it", now
        return "resume the rotation (its claim was released)", now
    if isinstance(step, machine.RevokeOld | machine.Finish | machine.ReadBack | machine.Announce) \
            and record and record.phase is Phase.GRACE:
        return "revoke the old key (grace is over)", now
    return "resume the rotation in flight", now


def _health(step: machine.Step, record: RotationRecord | None, now: datetime, listing: Listing | None,
            check_interval: timedelta | None) -> tuple[str, str]:
    """The first health of PRECEDENCE that applies (``error`` and ``unreadable`` are decided by
    the caller, which could not get this far)."""
    if record is None:
        if isinstance(step, machine.Fail):
            return "blocked", step.reason
        if isinstance(step, machine.Adopt):
            return "unmanaged", "no rotation record yet: the next run adopts the key in the primary"
        return "unmanaged", "no key and no rotation record yet: the next run issues the first key"
    current = record.current
    expires = current.expires_on if current else None
    if expires is not None and expires <= now:
        return "expired", f"the current key {current.label()} expired at {short_instant(expires)}"  # type: ignore[union-attr]
    if current is not None and listing is not None:
        problem = unlisted(current, listing, now)
        if problem:
            return "rejected", problem
    if isinstance(step, machine.Fail) and not step.retry:
        return "blocked", step.reason
    paused = record.paused_now(now)
    if paused is not None:
        left = f"; the current key {current.label()} expires at {short_instant(expires)} ({_span(expires - now)} left)" \
            if current is not None and expires is not None else ""
        return "paused", f"{machine.paused_reason(paused)}{left}"
    live_claim = (record.phase in OWNED and record.owner is not None and record.lease_until is not None
                  and record.lease_until > now)
    if (expires is not None and check_interval is not None and not live_claim
            and expires < machine.later(now, check_interval)):
        return "expiring", (f"the current key {current.label()} expires at {short_instant(expires)}, before"  # type: ignore[union-attr]
                            f" the next possible rotation (within {_span(check_interval)}), and nothing is"
                            " rotating it")
    if record.last_error and record.attempts > 0:
        since = f" since {short_instant(record.error_since)}" if record.error_since else ""
        return "failing", f"the last run failed{since} ({record.attempts} attempt(s)): {record.last_error}"
    if isinstance(step, machine.Fail):
        return "failing", step.reason
    if record.phase in OWNED and record.owner is not None and not live_claim:
        return "stale-claim", (f"rotation {(record.rotation_id or '')[:8]} claimed by {record.owner}, whose lease"
                               f" ran out at {short_instant(record.lease_until)}: the owner died; the next run takes"
                               " it over")
    if record.held:
        first = record.held[0]
        more = f" (and {len(record.held) - 1} more)" if len(record.held) > 1 else ""
        return "held", f"revoke of old key {first.key.label()} held: {first.reason}{more}"
    if record.phase in OWNED or isinstance(step, machine.Wait):
        who = f" by {record.owner}" if live_claim else " (released: the next run resumes it)"
        return "rotating", f"rotation {(record.rotation_id or '')[:8]} in flight{who}"
    if record.phase is Phase.GRACE:
        return "grace", "the new key is current everywhere; the old one is revoked when grace ends"
    if isinstance(step, machine.Claim):
        return "due", step.reason
    if isinstance(step, machine.Rest) and step.window:
        return "due", f"{step.reason}: it opens at {short_instant(step.next_at)}"
    return "healthy", "nothing to do before the due instant"


def unlisted(ref: KeyRef, listing: Iterable[KeyInfo], now: datetime) -> str | None:
    """Why the issuer's ``listing`` says ``ref`` is no longer a working key, or None.

    By id when the id is known; else by last 4 characters (and name, when known). Absence in a
    listing that contradicts itself (``Listing.problems``) proves nothing and is not reported.
    """
    entries = [k for k in listing if ref.refers_to(k)]
    if not entries:
        if isinstance(listing, Listing) and listing.problems:
            return None
        how = "by id" if ref.key_id else "by name and last 4 characters" if ref.name else "by last 4 characters"
        return f"the issuer no longer lists the current key {ref.label()} (looked up {how})"
    if all(k.expires_on is not None and k.expires_on <= now for k in entries):
        latest = max(k.expires_on for k in entries if k.expires_on is not None)
        return f"the issuer lists the current key {ref.label()} as expired at {short_instant(latest)}"
    return None


# --- the issuer's own credential --------------------------------------------------------------------

@dataclass(frozen=True)
class CredentialAssessment:
    """The key an issuer signs in with (its admin key), as its listing shows it."""

    issuer: str
    health: str                         # one of CREDENTIAL_HEALTHS
    reason: str
    last4: str | None = None
    key_id: str | None = None
    name: str | None = None
    created_on: datetime | None = None
    expires_on: datetime | None = None
    managed_as: str | None = None       # the secret that rotates it, if any
    matches: int = 0                    # listing entries ending in the same 4 characters

    @property
    def healthy(self) -> bool:
        return self.health in CREDENTIAL_HEALTHY

    @property
    def key(self) -> str | None:
        if self.last4 is None:
            return None
        return f"…{self.last4}" + (f" (id {self.key_id})" if self.key_id else "")


def assess_credential(issuer: str, last4: str | None, listing: Listing | None, now: datetime, *,
                      lead_time: timedelta, managed_as: str | None = None,
                      problem: str | None = None) -> CredentialAssessment:
    """Health of issuer ``issuer``'s credential, found in its ``listing`` by its last 4 characters.

    ``problem``: why there is no listing or no value (already redacted). A credential rotator does
    not manage is ``expiring`` from ``lead_time`` before it expires on, ``expired`` after: nobody
    else will replace it. Several entries ending in the same 4 characters: the earliest expiry
    counts (as adoption does).
    """
    base = dict(issuer=issuer, last4=last4, managed_as=managed_as)
    if last4 is None:
        return CredentialAssessment(health="unreadable", reason=problem or "its reference does not resolve", **base)
    if listing is None:
        return CredentialAssessment(health="unknown", reason=f"cannot tell when it expires: {problem or 'no listing'}",
                                    **base)
    found = [k for k in listing if k.last4 == last4]
    if not found:
        return CredentialAssessment(
            health="unknown", reason=f"no key ending in …{last4} in the issuer's listing: cannot tell when it expires",
            **base)
    dated = [k for k in found if k.expires_on is not None]
    entry = min(dated, key=lambda k: k.expires_on) if dated else found[0]      # type: ignore[arg-type, return-value]
    meta = dict(key_id=entry.key_id if len(found) == 1 else None, name=entry.name if len(found) == 1 else None,
                created_on=entry.created_on if len(found) == 1 else None, matches=len(found), **base)
    expires = entry.expires_on if len(dated) == len(found) else None
    ambiguous = (f"; ambiguous: {len(found)} keys end in …{last4}, the earliest expiry counts"
                 if len(found) > 1 else "")
    if expires is None:
        return CredentialAssessment(
            health="managed" if managed_as else "expiring", expires_on=None,
            reason=(f"managed as secret {managed_as}" if managed_as else
                    "not managed: rotator cannot rotate it, and its expiry is unknown (the issuer's dates"
                    " could not be trusted): replace it by hand") + ambiguous, **meta)
    if expires <= now:
        return CredentialAssessment(
            health="expired", expires_on=expires,
            reason=(f"expired at {short_instant(expires)}" + (f" (managed as secret {managed_as})" if managed_as else
                    ": every issuer call fails; replace it by hand now")) + ambiguous, **meta)
    if managed_as:
        return CredentialAssessment(health="managed", expires_on=expires,
                                    reason=f"managed as secret {managed_as}{ambiguous}", **meta)
    by_hand = f"not managed: rotator cannot rotate it; replace it by hand before {short_instant(expires)}"
    if expires - now <= lead_time:
        return CredentialAssessment(health="expiring", expires_on=expires,
                                    reason=f"{by_hand} ({_span(expires - now)} left){ambiguous}", **meta)
    return CredentialAssessment(health="healthy", expires_on=expires, reason=by_hand + ambiguous, **meta)


def credential_due(expires_on: datetime | None, lead_time: timedelta) -> datetime | None:
    """When an unmanaged credential starts to be ``expiring``."""
    return None if expires_on is None else machine.earlier(expires_on, lead_time)


# --- keys shared by several secrets -------------------------------------------------------------------

@dataclass(frozen=True)
class SharedKey:
    """One key value held by the primaries of several managed secrets."""

    fingerprint: str
    last4: str
    secrets: tuple[str, ...]

    @property
    def warning(self) -> str:
        names = self.secrets
        listed = f"{names[0]} and {names[1]}" if len(names) == 2 else f"{', '.join(names[:-1])} and {names[-1]}"
        every = "both" if len(names) == 2 else "all of them"
        return (f"secrets {listed} hold the same key …{self.last4}: its revoke waits until {every} have moved"
                " away")


def shared_keys(primaries: Mapping[str, Snapshot | None]) -> list[SharedKey]:
    """Keys held as current by the primaries of two or more secrets (by fingerprint: values are
    never compared). ``primaries``: secret name -> a read of its primary (None: not read)."""
    holders: dict[str, list[str]] = {}
    last4: dict[str, str] = {}
    for name, snap in primaries.items():
        if snap is None or snap.current is None:
            continue
        fp = snap.current.fingerprint
        holders.setdefault(fp, []).append(name)
        last4[fp] = snap.current.last4
    return sorted((SharedKey(fp, last4[fp], tuple(sorted(names))) for fp, names in holders.items()
                   if len(names) > 1), key=lambda shared: shared.secrets)


# --- words --------------------------------------------------------------------------------------------

def _span(delta: timedelta) -> str:
    return format_duration(delta)


__all__ = ["Assessment", "CredentialAssessment", "SharedKey", "HEALTHY", "PRECEDENCE", "CREDENTIAL_HEALTHS",
           "CREDENTIAL_HEALTHY", "assess", "assess_credential", "credential_due", "failed", "shared_keys",
           "unlisted"]
