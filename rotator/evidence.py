"""The evidence a revoke needs about the managed secrets: which keys they rely on.

Keys can be shared (one key copied into two applications before a team adopted rotator), so
before any key is revoked the gate must know that no target of *any* managed secret of the same
issuer serves it, and that no record names it. :class:`Usage` reads every target of every
managed secret of one issuer once per run — the first time a revoke needs it, batched where the
backend can — and then follows this run's own writes, so a rotation that moves away from a
shared key in this run is seen moving. Targets the run itself read within the last few seconds
(``readahead.EVIDENCE_AGE``) are not read again. Writes by other processes during the run are not seen;
what that could hide is always a reason to hold, never one to revoke (another runner only ever
deploys a secret's *own* new key), and the next run reads afresh. A target that cannot be read
of a secret whose primary was read is taken to serve what that secret's record and primary name;
a secret whose primary cannot be read proves nothing, and the gate holds until it can be. A target
whose payload cannot be parsed serves no key anyone could read from it and is left out.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Iterable

from rotator.errors import CorruptPayload
from rotator.gate import Holder, LiveClaim, holder_tokens
from rotator.models import Phase, RotationRecord, Snapshot
from rotator.readahead import EVIDENCE_AGE, ReadAhead
from rotator.redact import redact
from rotator.runtime import ManagedSecret

log = logging.getLogger("rotator.engine")

OWNED = (Phase.CLAIMED, Phase.STAGED, Phase.ROLLING_BACK)


class Usage:
    """What the managed secrets of one issuer rely on, as this run knows it."""

    def __init__(self, secrets: Iterable[ManagedSecret], clock, ahead: ReadAhead | None = None) -> None:
        self._secrets = list(secrets)
        self._clock = clock
        self._ahead = ahead           # the run's read-ahead: targets of the run's secrets read in its batches
        self._lock = threading.Lock()
        self._built = False
        self._reads: dict[tuple[str, str], Snapshot | Exception] = {}
        self._written: dict[tuple[str, str], Snapshot] = {}    # this run's own writes win over reads
        self._seen: dict[tuple[str, str], tuple[Snapshot, datetime]] = {}   # reads the run made anyway
        self._parts: dict[str, tuple[list[Holder], list[str], list[LiveClaim]]] = {}   # survey, per secret
        self._order = {secret.name: index for index, secret in enumerate(self._secrets)}
        self._by_name = {secret.name: secret for secret in self._secrets}
        self._missing = set(self._order)                # secrets whose part is to be worked out
        self._by_token: dict[str, set[str]] = {}        # holder token -> secrets with such a holder
        self._some: dict[str, set[str]] = {"unknown": set(), "claims": set()}   # secrets that have any

    def wrote(self, secret: str, label: str, snapshot: Snapshot) -> None:
        """This run wrote ``label`` of ``secret``; ``snapshot`` is what it holds now."""
        with self._lock:
            self._written[(secret, label)] = snapshot
            self._forget(secret)

    def saw(self, secret: str, label: str, snapshot: Snapshot) -> None:
        """This run read ``label`` of ``secret`` just now: no need to read it again soon."""
        with self._lock:
            self._seen[(secret, label)] = (snapshot, self._clock.now())

    def recent(self, secret: str, label: str) -> Snapshot | None:
        """A read of ``label`` this run made within ``EVIDENCE_AGE`` (and no write of it since)."""
        with self._lock:
            if (secret, label) in self._written:
                return None
            seen = self._seen.get((secret, label))
        if seen is None or self._clock.now() - seen[1] > EVIDENCE_AGE:
            return None
        return seen[0]

    def _build(self) -> None:
        now = self._clock.now()           # called with the lock held
        recent = {entry: snap for entry, (snap, at) in self._seen.items() if now - at <= EVIDENCE_AGE}
        known = set(recent) | set(self._written)      # this run's own writes win over any read anyway
        wanted = [s for s in self._secrets if any((s.name, b.label) not in known for b in s.targets)]
        run_ahead = self._ahead
        others = ReadAhead([s for s in wanted if run_ahead is None or not run_ahead.knows(s)], self._clock)
        reads: dict[tuple[str, str], Snapshot | Exception] = dict(recent)
        for secret in wanted:
            ahead = run_ahead if run_ahead is not None and run_ahead.knows(secret) else others
            for bound in secret.targets:
                if (secret.name, bound.label) in known:
                    continue
                try:
                    reads[(secret.name, bound.label)] = snap = ahead.read_target(secret, bound)
                    self._seen[(secret.name, bound.label)] = (snap, now)
                except Exception as exc:  # noqa: BLE001 - an unreadable target is missing evidence
                    reads[(secret.name, bound.label)] = exc
        self._reads = reads
        self._built = True

    def survey(self, now: datetime) -> tuple[tuple[Holder, ...], tuple[str, ...], tuple[LiveClaim, ...]]:
        """Every holder, the secrets nothing can be proved about, and the live claims. Each
        secret's part is worked out once and again only after this run writes one of its targets."""
        holders: list[Holder] = []
        unknown: list[str] = []
        claims: list[LiveClaim] = []
        with self._lock:
            self._bring_up_to_date()
            for secret in self._secrets:
                part = self._parts[secret.name]
                holders.extend(part[0])
                unknown.extend(part[1])
                claims.extend(part[2])
        return tuple(holders), tuple(unknown), tuple(claims)

    def evidence(self, now: datetime) -> Found:
        """What a revoke asks (a run of many revokes asks once per revoke): the unknowns and live
        claims, and the holders that may rely on a given key, found by its id, fingerprint and
        last 4 characters in an index kept per secret, so asking costs what the key touches, not
        the fleet. In the same order as :meth:`survey` lists them."""
        with self._lock:
            self._bring_up_to_date()
            unknown = tuple(u for name in self._ordered(self._some["unknown"]) for u in self._parts[name][1])
            claims = tuple(c for name in self._ordered(self._some["claims"]) for c in self._parts[name][2])
        return Found(unknown, claims, self._holders_for)

    def _holders_for(self, tokens: Iterable[str]) -> list[Holder]:
        """Every holder of the secrets that have a holder with one of ``tokens``: a superset of
        those relying on the key (the gate decides), in survey order."""
        with self._lock:
            names: set[str] = set()
            for token in tokens:
                names |= self._by_token.get(token, set())
            return [h for name in self._ordered(names) for h in self._parts[name][0]]

    def _ordered(self, names: Iterable[str]) -> list[str]:
        return sorted(names, key=self._order.__getitem__)

    def _bring_up_to_date(self) -> None:
        """Read what the first revoke needs, and work out the parts writes made stale (lock held)."""
        if not self._built:
            self._build()
        for name in self._missing:
            part = self._parts[name] = self._part(self._by_name[name])
            for holder in part[0]:
                for token in holder_tokens(holder):
                    self._by_token.setdefault(token, set()).add(name)
            for kind, items in (("unknown", part[1]), ("claims", part[2])):
                if items:
                    self._some[kind].add(name)
        self._missing.clear()

    def _forget(self, name: str) -> None:
        """``name``'s part is stale (lock held): out of the index until worked out again."""
        part = self._parts.pop(name, None)
        if part is not None:
            for holder in part[0]:
                for token in holder_tokens(holder):
                    self._by_token.get(token, set()).discard(name)
            for kind in self._some.values():
                kind.discard(name)
        if name in self._order:
            self._missing.add(name)

    def _part(self, secret: ManagedSecret) -> tuple[list[Holder], list[str], list[LiveClaim]]:
        """One secret's holders (its serving targets first), unknowns and live claim."""
        def seen(label: str) -> Snapshot | Exception | None:
            return self._written.get((secret.name, label)) or self._reads.get((secret.name, label))

        holders: list[Holder] = []
        primary = seen(secret.primary.label)
        if isinstance(primary, CorruptPayload):
            primary = Snapshot()      # no key can be read from it: it serves none
        if isinstance(primary, Exception) or primary is None:
            return [], [f"secret {secret.name}: its primary could not be read"
                        f" ({redact(str(primary)) if primary else 'not read'})"], []
        record = primary.record
        unknown: list[str] = []
        claims = []
        if record is not None and record.phase in OWNED and record.owner and record.rotation_id \
                and record.lease_until is not None:
            claims.append(LiveClaim(secret.name, record.rotation_id, record.owner, record.lease_until))
        for bound in secret.targets:
            snap = seen(bound.label)
            if isinstance(snap, CorruptPayload):
                continue          # no key can be read from it: it serves none (reported as drift)
            if isinstance(snap, Exception) or snap is None:
                if record is None:
                    unknown.append(f"secret {secret.name}: {bound.label} could not be read")
                else:           # assumed to hold what the secret's record says it holds
                    holders.extend(_assumed(secret.name, bound.label, record, primary))
                continue
            if snap.current is not None:
                holders.append(Holder(secret.name, "serves", bound.label,
                                      snap.current.fingerprint, snap.current.last4))
        if primary.pending is not None:
            holders.append(Holder(secret.name, "pending", secret.primary.label,
                                  primary.pending.fingerprint, primary.pending.last4))
        holders.extend(_from_record(secret.name, record))
        return holders, unknown, claims


@dataclass(frozen=True)
class Found:
    """:meth:`Usage.evidence`: the unknowns and live claims, and the holders for given tokens."""

    unknown: tuple[str, ...]
    claims: tuple[LiveClaim, ...]
    holders_for: Callable[[Iterable[str]], list[Holder]]


def _from_record(secret: str, record: RotationRecord | None) -> list[Holder]:
    if record is None:
        return []
    roles = [("current", record.current), ("pending", record.pending)]
    if record.phase is Phase.GRACE:
        roles.append(("previous", record.previous))
    return [Holder(secret, role, "record", ref.fingerprint, ref.last4, ref.key_id)
            for role, ref in roles if ref is not None]


def _assumed(secret: str, label: str, record: RotationRecord, primary: Snapshot) -> list[Holder]:
    """What an unreadable target of a secret whose primary was read is taken to serve: the keys its
    record and primary name (current, pending, and in grace the previous one). Only a target
    changed by hand to another secret's key escapes this, and drift is reported on its own."""
    refs = [record.current, record.pending] + ([record.previous] if record.phase is Phase.GRACE else [])
    holders = [Holder(secret, "serves", f"{label} (unreadable; assumed from the record)", ref.fingerprint,
                      ref.last4, ref.key_id) for ref in refs if ref is not None]
    if primary.current is not None:
        holders.append(Holder(secret, "serves", f"{label} (unreadable; assumed from the primary)",
                              primary.current.fingerprint, primary.current.last4))
    return holders
