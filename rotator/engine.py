"""Performs the steps ``machine.decide`` chooses, one secret at a time, many secrets at once.

The engine owns the I/O: it reads the primary, asks the machine for the next step, performs it,
records what it saw and did, and asks again. Every primary write is a compare-and-swap that
carries the updated rotation record, so a crash after any effect resumes from the record (I5),
and a lost CAS means another runner moved first (I4): the engine re-reads and decides again.

One secret's failure never stops the others (I6): each secret runs inside its own guard and ends
with an :class:`Outcome`.
"""

from __future__ import annotations

import logging
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Callable, Iterable

from rotator import machine
from rotator.errors import AdoptionError, Conflict, KeyNotFound, RotatorError
from rotator.interfaces import Issuer
from rotator.machine import Observations
from rotator.models import KeyInfo, KeyRef, Phase, RotationRecord, Secret, Snapshot
from rotator.readahead import ReadAhead
from rotator.redact import redact
from rotator.runtime import ManagedSecret, Runtime, short_id

log = logging.getLogger("rotator.engine")

MAX_STEPS = 48          # a rotation needs about a dozen; more means two runners keep colliding
MATCH_SKEW_SECONDS = 120


@dataclass(frozen=True)
class Event:
    """One thing that happened, for the timeline, the audit trail and metrics. Never a value."""

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


@dataclass
class Outcome:
    """How one secret's run ended."""

    secret: str
    status: str = "ok"              # ok | changed | waiting | failed
    phase: str | None = None
    detail: str = ""
    next_at: datetime | None = None
    actions: list[str] = field(default_factory=list)
    error: str | None = None
    retry: bool = True


@dataclass
class RunReport:
    outcomes: list[Outcome]

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


class ListingCache:
    """One key listing per issuer per run, shared by every secret (and thread) of the run.

    A key issued after the listing was fetched is not in it: ``issued()`` notes its name, and a
    lookup that needs that key (``need=name``) fetches the listing again, once.
    """

    def __init__(self, *, sweeps_at_end: bool = False) -> None:
        self.sweeps_at_end = sweeps_at_end    # Engine.run sweeps the twins of the keys staged in the run
        self._lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._listings: dict[str, list[KeyInfo]] = {}
        self._unseen: dict[str, set[str]] = {}
        self._suspects: list[tuple[str, Issuer, KeyRef]] = []

    def get(self, issuer: Issuer, need: str | None = None) -> list[KeyInfo]:
        with self._lock:
            lock = self._locks.setdefault(issuer.name, threading.Lock())
        with lock:
            with self._lock:
                unseen = set(self._unseen.get(issuer.name, ()))
            if issuer.name not in self._listings or (need is not None and need in unseen):
                listing = issuer.list_keys()
                with self._lock:   # names issued while the listing was in flight stay unseen
                    self._listings[issuer.name] = listing
                    self._unseen[issuer.name] = self._unseen.get(issuer.name, set()) - unseen
            return self._listings[issuer.name]

    def at_hand(self, issuer: Issuer) -> list[KeyInfo] | None:
        """The listing fetched in this run, if any; never fetches."""
        with self._lock:
            return self._listings.get(issuer.name)

    def issued(self, issuer: Issuer, name: str) -> None:
        with self._lock:
            self._unseen.setdefault(issuer.name, set()).add(name)

    def may_have_twin(self, secret: str, issuer: Issuer, ref: KeyRef) -> None:
        """A key issued and staged in this run whose issue was retried in a way that may have
        minted a twin: the twin gets swept at the end of the run."""
        with self._lock:
            self._suspects.append((secret, issuer, ref))

    def twin_suspects(self) -> list[tuple[str, Issuer, KeyRef]]:
        with self._lock:
            return list(self._suspects)

    def forget(self, issuer: Issuer) -> None:
        with self._lock:
            self._listings.pop(issuer.name, None)


class Engine:
    def __init__(self, runtime: Runtime, *, on_event: Callable[[Event], None] | None = None) -> None:
        self.runtime = runtime
        self.clock = runtime.clock
        self.me = runtime.identity
        self._on_event = on_event or (lambda event: None)
        self._stop = threading.Event()

    def request_stop(self) -> None:
        """Graceful shutdown: no new step starts; each secret stops at its next step boundary,
        releasing its lease so the next start resumes at once."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self, names: list[str] | None = None, *, force: bool = False) -> RunReport:
        """Do whatever is due for the named secrets (all by default)."""
        secrets = self.runtime.select(names)
        cache = ListingCache(sweeps_at_end=True)
        ahead = ReadAhead(secrets, self.clock)
        workers = min(self.runtime.settings.rotator.workers, max(len(secrets), 1))

        def one(secret: ManagedSecret) -> Outcome:
            return self.run_secret(secret, force=force, cache=cache, ahead=ahead)

        if workers == 1:
            outcomes = [one(s) for s in secrets]
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rotator") as pool:
                outcomes = list(pool.map(one, secrets))
        self._sweep_twins(cache)
        return RunReport(outcomes)

    def run_secret(self, secret: ManagedSecret, *, force: bool = False,
                   cache: ListingCache | None = None, ahead: ReadAhead | None = None) -> Outcome:
        """One secret, isolated: any error becomes a failed Outcome, never an exception."""
        run = _SecretRun(self, secret, force, cache or ListingCache(), ahead)
        try:
            return run.drive()
        except Exception as exc:   # noqa: BLE001 - per-secret isolation (I6)
            return run.failed(exc)

    def _sweep_twins(self, cache: ListingCache) -> None:
        """Revoke the twins of the keys this run staged after a doubtful issue: one listing per
        issuer that had one, none at all in a run whose issues all got their first reply.

        An issue whose reply was lost and was retried mints a second key under the same name (the
        name carries the rotation id). A key staged in this run is swept here, once every issue of
        the run is done (a listing fetched earlier in the run may predate the twin); a rotation
        whose second run revokes the old key sweeps again then (the first run may have stopped
        before its end). Ours is told apart by its last 4 characters (and creation time); when
        that is not conclusive nothing is revoked and ``rotator audit`` reports the stray key.
        """
        suspects = cache.twin_suspects()
        issuers = {issuer.name: issuer for _, issuer, _ in suspects}
        for issuer in issuers.values():
            if self.stopping:
                return
            try:
                listing = issuer.list_keys()
            except Exception as exc:  # noqa: BLE001 - the next run's sweeps (and the audit) find them
                log.warning("could not list the keys of issuer %s to sweep twins: %s", issuer.name, redact(str(exc)))
                continue
            by_name: dict[str, list[KeyInfo]] = {}
            for key in listing:
                by_name.setdefault(key.name or "", []).append(key)
            for secret, _, ref in (entry for entry in suspects if entry[1] is issuer):
                same = by_name.get(ref.name or "", [])
                if not ref.name or len(same) < 2:
                    continue
                ours = _entries_of(ref, same)
                if len(ours) != 1:
                    log.info("%s: %d keys named %r and none is surely ours; left for `rotator audit`",
                             secret, len(same), ref.name)
                    continue
                for key in same:
                    if key.key_id != ours[0].key_id:
                        self._revoke_twin(secret, issuer, ref, key)

    def _revoke_twin(self, secret: str, issuer: Issuer, ref: KeyRef, key: KeyInfo) -> None:
        try:
            issuer.revoke(key_id=key.key_id)
        except KeyNotFound:
            return
        except Exception as exc:  # noqa: BLE001 - per-key isolation; the audit reports what is left
            log.warning("%s: could not revoke twin key id %s: %s", secret, key.key_id, redact(str(exc)))
            return
        detail = f"twin key id {key.key_id} of {ref.name!r}"
        log.info("%s: swept %s", secret, detail)
        self.emit(Event(at=self.clock.now(), secret=secret, action="swept", detail=detail,
                        rotation_id=ref.rotation_id, key_id=key.key_id, last4=key.last4, runner=self.me))

    def emit(self, event: Event) -> None:
        try:
            self._on_event(event)
        except Exception:  # noqa: BLE001 - observers never break a rotation
            log.exception("event observer failed")


class _SecretRun:
    """The state of one secret during one run: snapshots (with values), record, run facts."""

    def __init__(self, engine: Engine, secret: ManagedSecret, force: bool, cache: ListingCache,
                 ahead: ReadAhead | None = None) -> None:
        self.engine = engine
        self.secret = secret
        self.cache = cache
        self.ahead = ahead                    # batched reads: the first of the primary, secondaries unwritten
        self.primary_read = False
        self.written: set[str] = set()        # secondaries this run deployed to (read back alone)
        self.outcome = Outcome(secret.name)
        self.snapshots: dict[str, Snapshot] = {}
        self.fresh: set[str] = set()
        self.obs = Observations(me=engine.me, record=None, force=force)
        self.minted: Secret | None = None     # a key issued by this run and not yet staged
        self.staged_here: KeyRef | None = None  # the key this run issued and staged

    # --- the loop ------------------------------------------------------------------------------

    def drive(self) -> Outcome:
        self._read_primary()
        for _ in range(MAX_STEPS):
            now = self.engine.clock.now()
            step = machine.decide(self.secret.policy, self._observations(), now)
            if step.terminal:
                return self._finish(step)
            if self.engine.stopping:
                return self._interrupted(step)
            log.debug("%s: %s", self.secret.name, step)
            try:
                getattr(self, f"_do_{step.name}")(step, now)
            except Conflict as exc:
                log.info("%s: %s; re-reading the primary", self.secret.name, exc)
                self._read_primary(reset=True)
                if self.minted is not None:   # I4: a loser revokes what it minted ...
                    if self.primary.pending == self.minted:
                        self.minted = None    # ... unless its write landed after all
                    else:
                        self._revoke_minted()
        raise RotatorError(f"gave up after {MAX_STEPS} steps: other runners keep changing the record")

    def _observations(self) -> Observations:
        views = {
            label: machine.view_of(snap, fresh=label in self.fresh) for label, snap in self.snapshots.items()
        }
        return replace(self.obs, views=views, record=self.record)

    @property
    def record(self) -> RotationRecord | None:
        snap = self.snapshots.get(self.secret.policy.primary)
        return snap.record if snap else None

    @property
    def primary(self) -> Snapshot:
        return self.snapshots[self.secret.policy.primary]

    def _read_primary(self, reset: bool = False) -> None:
        bound = self.secret.primary
        first, self.primary_read = not self.primary_read, True    # only the run's first read is read ahead
        self.snapshots[bound.label] = (self.ahead.read(self.secret) if first and self.ahead
                                       else bound.backend.read(bound.target))
        self.fresh.add(bound.label)
        if reset:
            self.obs = Observations(me=self.engine.me, record=None, force=self.obs.force)
            for label in list(self.snapshots):
                if label != bound.label:
                    del self.snapshots[label]
                    self.fresh.discard(label)

    def _wrote_primary(self, version: str, record: RotationRecord, **slots: Secret | None) -> None:
        """Remember what our own CAS write left in the primary (not yet read back)."""
        label = self.secret.policy.primary
        before = self.snapshots[label]
        phase_changed = before.record is None or before.record.phase != record.phase
        self.snapshots[label] = replace(before, version=version, record=record, **slots)
        self.fresh.discard(label)
        if phase_changed:
            self.obs = replace(self.obs, deployed=frozenset())

    def _note(self, action: str, detail: str = "", *, key: KeyRef | None = None, result: str = "ok") -> None:
        record = self.record
        self.outcome.actions.append(f"{action} {detail}".strip())
        if result == "ok" and action not in ("read-back", "interrupted"):
            self.outcome.status = "changed"
        log.info("%s: %s %s", self.secret.name, action, detail)
        self.engine.emit(Event(
            at=self.engine.clock.now(), secret=self.secret.name, action=action, detail=detail,
            rotation_id=record.rotation_id if record else None,
            key=key.label() if key else None, fingerprint=key.fingerprint if key else None,
            key_id=key.key_id if key else None, last4=key.last4 if key else None,
            result=result, runner=self.engine.me,
        ))

    def _finish(self, step: machine.Step) -> Outcome:
        out = self.outcome
        record = self.record
        out.phase = record.phase.value if record else None
        if isinstance(step, machine.Rest):
            out.detail, out.next_at = step.reason, step.next_at
        elif isinstance(step, machine.Wait):
            out.status, out.detail, out.next_at = "waiting", step.reason, step.until
        else:
            assert isinstance(step, machine.Fail)
            out.status, out.detail, out.error, out.retry = "failed", step.reason, step.reason, step.retry
            self._note("failed", step.reason, result="error")
            self._release(step.reason)
        return out

    def _interrupted(self, step: machine.Step) -> Outcome:
        """Shutting down: leave the rotation where it stands, lease released."""
        out = self.outcome
        record = self.record
        if record is not None and record.owner == self.engine.me:
            released = record.evolve(owner=None, lease_until=None)
            bound = self.secret.primary
            version = bound.backend.write_record(bound.target, released, expect=self.primary.version)
            self._wrote_primary(version, released)
        out.status = "waiting" if out.status == "ok" else out.status
        out.detail = f"stopped before {step.name} (shutting down); the next run resumes"
        out.phase = record.phase.value if record else None
        self._note("interrupted", out.detail)
        return out

    def failed(self, exc: Exception) -> Outcome:
        message = redact(str(exc)) or type(exc).__name__
        out = self.outcome
        out.status, out.error, out.detail = "failed", message, message
        out.retry = getattr(exc, "transient", False) or not isinstance(exc, RotatorError)
        if not isinstance(exc, RotatorError):
            log.error("%s: unexpected error", self.secret.name, exc_info=exc)
        self._note("failed", message, result="error")
        if self.minted is not None:
            self._revoke_minted()
        try:
            self._release(message)
        except Exception as note_exc:  # noqa: BLE001 - the primary may be what failed
            log.warning("%s: could not record the failure: %s", self.secret.name, redact(str(note_exc)))
        record = self.record
        out.phase = record.phase.value if record else None
        return out

    def _release(self, error: str) -> None:
        """After a failure: note it in the record and let go of the lease (if we hold one)."""
        record = self.record
        if record is None or self.secret.policy.primary not in self.snapshots:
            return
        mine = record.owner == self.engine.me
        if not mine and record.last_error == error:
            return
        note = record.evolve(last_error=error[:500], attempts=record.attempts + 1)
        if mine:
            note = note.evolve(owner=None, lease_until=None)
        bound = self.secret.primary
        version = bound.backend.write_record(bound.target, note, expect=self.primary.version)
        self._wrote_primary(version, note)

    # --- steps ---------------------------------------------------------------------------------

    def _do_Adopt(self, step: machine.Adopt, now: datetime) -> None:
        value = self.primary.current
        assert value is not None
        issuer = self.secret.issuer
        accepted = issuer.verify(value)
        listing = self.cache.get(issuer)
        matches = [k for k in listing if k.last4 == value.last4]
        if accepted:   # a key the issuer accepts is not one of the expired ones sharing its last 4
            matches = [k for k in matches if k.expires_on is None or k.expires_on > now] or matches
        previous = self.record or RotationRecord()
        if not accepted:
            ref = KeyRef.of(value, expires_on=now)
            adoption = "refused by the issuer (expired or deleted): replacing it now"
        elif not matches:
            bound = self.secret.primary   # another runner may have adopted, rotated and revoked it meanwhile
            if bound.backend.read(bound.target).version != self.primary.version:
                raise Conflict("changed while its key was being looked up at the issuer")
            raise AdoptionError(
                f"the key in {self.secret.primary.label} (…{value.last4}) is valid but is not among the"
                f" keys of issuer {issuer.name!r} (user {issuer.owner or 'unknown'}); it belongs to another"
                " user. Refusing to manage it: rotating would change who owns the key and what it may do."
            )
        elif len(matches) == 1:
            m = matches[0]
            ref = KeyRef.of(value, key_id=m.key_id, name=m.name, created_on=m.created_on, expires_on=m.expires_on)
            adoption = "matched"
        else:
            soonest = min((m.expires_on for m in matches if m.expires_on), default=now)
            ref = KeyRef.of(value, expires_on=soonest)
            adoption = f"ambiguous: {len(matches)} keys end in …{value.last4}; earliest expiry used, revoked by value"
        record = RotationRecord(
            phase=Phase.IDLE, current=ref, adoption=adoption, rotations=previous.rotations,
            last_rotated_at=previous.last_rotated_at,
        )
        bound = self.secret.primary
        version = bound.backend.write_record(bound.target, record, expect=self.primary.version)
        self._wrote_primary(version, record)
        self._note("adopted", f"{ref.label()} ({adoption})", key=ref)

    def _do_Claim(self, step: machine.Claim, now: datetime) -> None:
        before = self.record or RotationRecord()
        rotation_id = uuid.uuid4().hex
        record = RotationRecord(
            phase=Phase.CLAIMED, current=before.current, rotation_id=rotation_id, owner=self.engine.me,
            lease_until=now + self.secret.policy.lease, started_at=now, attempts=before.attempts,
            last_error=before.last_error, last_rotated_at=before.last_rotated_at,
            rotations=before.rotations, adoption=before.adoption,
        )
        bound = self.secret.primary
        version = bound.backend.write_record(bound.target, record, expect=self.primary.version)
        self._wrote_primary(version, record)
        # A new rotation: forget what this run learnt about the last one (--force rotates once).
        self.obs = Observations(me=self.engine.me, record=None)
        self._note("claimed", f"{short_id(rotation_id)}: {step.reason}")

    def _do_IssueAndStage(self, step: machine.IssueAndStage, now: datetime) -> None:
        record = self.record
        assert record is not None and record.rotation_id
        issued = self.secret.issuer.issue(self.secret.key_name(record.rotation_id))
        self.minted = issued.value
        self.cache.issued(self.secret.issuer, issued.name)
        ref = issued.ref(record.rotation_id)
        staged = record.evolve(phase=Phase.STAGED, pending=ref, lease_until=now + self.secret.policy.lease)
        bound = self.secret.primary
        version = bound.backend.stage(bound.target, issued.value, staged, expect=self.primary.version)
        self.minted = None
        self.staged_here = ref
        if issued.maybe_twinned:
            self.cache.may_have_twin(self.secret.name, self.secret.issuer, ref)
        self._wrote_primary(version, staged, pending=issued.value)
        self._note("issued", f"{ref.label()} named {issued.name!r}, expires {_day(issued.expires_on)}", key=ref)

    def _revoke_minted(self) -> None:
        """A loser or a failed stage revokes what it minted; if that fails too, the rotation-tagged
        name lets the next run's orphan sweep find it."""
        value, self.minted = self.minted, None
        try:
            self.secret.issuer.revoke(value=value)
            self._note("revoked-unstaged", f"…{value.last4}")
        except KeyNotFound:
            pass
        except Exception as exc:  # noqa: BLE001
            log.warning("%s: could not revoke an unstaged key: %s", self.secret.name, redact(str(exc)))

    def _do_SweepOrphans(self, step: machine.SweepOrphans, now: datetime) -> None:
        record = self.record
        assert record is not None and record.rotation_id
        self.cache.forget(self.secret.issuer)
        name = self.secret.key_name(record.rotation_id)
        keep = record.current.key_id if record.current else None
        stray = [k for k in self.cache.get(self.secret.issuer) if k.name == name and k.key_id != keep]
        for key in stray:
            self._revoke(key_id=key.key_id)
        self.obs = replace(self.obs, orphans_swept=True)
        self._note("swept", f"{len(stray)} stray key(s) named {name!r}")

    def _do_TakeOver(self, step: machine.TakeOver, now: datetime) -> None:
        record = self.record
        assert record is not None
        taken = record.evolve(owner=self.engine.me, lease_until=now + self.secret.policy.lease)
        bound = self.secret.primary
        version = bound.backend.write_record(bound.target, taken, expect=self.primary.version)
        self._wrote_primary(version, taken)
        self.obs = replace(self.obs, deployed=frozenset())
        self._note("resumed", f"{short_id(record.rotation_id or '')} left by {record.owner or 'a stopped runner'}")

    def _do_Deploy(self, step: machine.Deploy, now: datetime) -> None:
        record = self.record
        assert record is not None
        if record.phase is Phase.STAGED:
            new, old, ref = self.primary.pending, self.primary.current, record.pending
        else:   # GRACE: repair a secondary that lost the new key
            new, old, ref = self.primary.current, self.primary.previous, record.current
        assert new is not None and ref is not None
        self._deploy(step.targets, new, old, ref)
        self._note("deployed", f"{ref.label()} to {', '.join(step.targets)}", key=ref)

    def _deploy(self, labels: Iterable[str], current: Secret, previous: Secret | None, ref: KeyRef) -> None:
        for label in labels:
            bound = self.secret.bound(label)
            bound.backend.deploy(bound.target, current, previous, ref)
            self.written.add(label)
            self.snapshots.pop(label, None)
            self.fresh.discard(label)
            self.obs = replace(self.obs, deployed=self.obs.deployed | {label})

    def _do_ReadBack(self, step: machine.ReadBack, now: datetime) -> None:
        primary = self.secret.policy.primary
        for label in step.targets:
            bound = self.secret.bound(label)
            if self.ahead and label != primary and label not in self.written:    # I3's re-read: batched
                snap = self.ahead.read_target(self.secret, bound)
            else:                                                   # after our own write: now, alone
                snap = bound.backend.read(bound.target)
            if label == primary and snap.version != self.primary.version:
                raise Conflict(f"{label} changed since this run wrote it")
            self.snapshots[label] = snap
            self.fresh.add(label)

    def _do_VerifyNewKey(self, step: machine.VerifyNewKey, now: datetime) -> None:
        pending = self.primary.pending
        assert pending is not None
        accepted = self.secret.issuer.verify(pending)
        self.obs = replace(self.obs, new_key_accepted=accepted)
        self._note("verified" if accepted else "verify-failed", f"…{pending.last4} at {self.secret.issuer.name}",
                   result="ok" if accepted else "error")

    def _do_Promote(self, step: machine.Promote, now: datetime) -> None:
        record = self.record
        assert record is not None and record.pending is not None
        has_old = record.current is not None
        promoted = record.evolve(
            phase=Phase.GRACE if has_old else Phase.IDLE, current=record.pending,
            previous=record.current, pending=None, verified_at=now,
            grace_until=now + self.secret.policy.grace if has_old else None,
            owner=None, lease_until=None, last_rotated_at=now, rotations=record.rotations + 1,
            attempts=0, last_error=None,
        )
        bound = self.secret.primary
        snap = self.primary
        version = bound.backend.promote(bound.target, promoted, expect=snap.version)
        self._wrote_primary(version, promoted, current=snap.pending, previous=snap.current, pending=None)
        for issuer in self.secret.signs_in:       # self-rotation: sign in with the new key from now on
            issuer.credential_changed()
        until = f"; old key revoked after {_day(promoted.grace_until)}" if has_old else ""
        self._note("promoted", f"{record.pending.label()} is current on every target{until}", key=record.pending)

    def _do_BeginRollback(self, step: machine.BeginRollback, now: datetime) -> None:
        record = self.record
        assert record is not None
        rolling = record.evolve(phase=Phase.ROLLING_BACK, last_error=step.reason, owner=self.engine.me,
                                lease_until=now + self.secret.policy.lease)
        bound = self.secret.primary
        version = bound.backend.write_record(bound.target, rolling, expect=self.primary.version)
        self._wrote_primary(version, rolling)
        self._note("rollback", step.reason, result="error")

    def _do_Restore(self, step: machine.Restore, now: datetime) -> None:
        record = self.record
        old = self.primary.current
        assert record is not None and old is not None and record.current is not None
        self._deploy(step.targets, old, None, record.current)
        self._note("restored", f"{record.current.label()} on {', '.join(step.targets)}", key=record.current)

    def _do_RevokeNew(self, step: machine.RevokeNew, now: datetime) -> None:
        record = self.record
        assert record is not None and record.pending is not None
        self._revoke_ref(record.pending, self.primary.pending)
        self.obs = replace(self.obs, new_revoked=True)
        self._note("revoked", f"refused new key {record.pending.label()}", key=record.pending)

    def _do_FinishRollback(self, step: machine.FinishRollback, now: datetime) -> None:
        record = self.record
        assert record is not None
        done = record.evolve(phase=Phase.IDLE, pending=None, owner=None, lease_until=None,
                             attempts=record.attempts + 1, last_error=step.reason)
        bound = self.secret.primary
        version = bound.backend.discard_pending(bound.target, done, expect=self.primary.version)
        self._wrote_primary(version, done, pending=None)
        self.obs = replace(self.obs, rolled_back=True)
        self._note("rolled-back", f"old key {record.current.label() if record.current else '-'} kept",
                   result="error")
        self.outcome.status = "failed"
        self.outcome.error = step.reason

    def _do_RevokeOld(self, step: machine.RevokeOld, now: datetime) -> None:
        record = self.record
        assert record is not None and record.previous is not None and record.current is not None
        old_value = self.primary.previous
        if old_value is not None and old_value.fingerprint != record.previous.fingerprint:
            old_value = None
        self._revoke_ref(record.previous, old_value)
        swept_at_end = (self.cache.sweeps_at_end and self.staged_here is not None
                        and self.staged_here.fingerprint == record.current.fingerprint)
        if not swept_at_end:        # the key was staged by an earlier run (or nobody sweeps after this one)
            self._sweep_duplicates(record.current)
        self.obs = replace(self.obs, old_revoked=True)
        self._note("revoked", f"old key {record.previous.label()}", key=record.previous)

    def _do_Finish(self, step: machine.Finish, now: datetime) -> None:
        record = self.record
        assert record is not None
        current = record.current
        if current is not None and current.key_id is None:
            match = self._find(current)
            if match is not None:
                current = replace(current, key_id=match.key_id)
        done = record.evolve(phase=Phase.IDLE, current=current, previous=None, grace_until=None)
        bound = self.secret.primary
        version = bound.backend.write_record(bound.target, done, expect=self.primary.version)
        self._wrote_primary(version, done)
        self._note("finished", f"rotation {short_id(record.rotation_id or '')} complete")

    # --- issuer helpers --------------------------------------------------------------------------

    def _candidates(self, ref: KeyRef) -> list[KeyInfo]:
        """Listing entries that may be ``ref``. If ``ref`` was issued after the run's listing was
        fetched, the listing is fetched again: needed before concluding that a key is gone."""
        return _entries_of(ref, self.cache.get(self.secret.issuer, need=ref.name))

    def _find(self, ref: KeyRef, fetch: bool = False) -> KeyInfo | None:
        """The one listing entry of ``ref`` in the run's listing, if it is there. Without ``fetch``
        only a listing already at hand is searched (for nice-to-haves such as the id in the record,
        which would otherwise cost a listing per rotation in a run that issues and finishes)."""
        issuer = self.secret.issuer
        listing = self.cache.get(issuer) if fetch else self.cache.at_hand(issuer)
        found = _entries_of(ref, listing or [])
        return found[0] if len(found) == 1 else None

    def _revoke_ref(self, ref: KeyRef, value: Secret | None) -> None:
        """Revoke by id when the id is known or matches one listing entry; else by value; never guess."""
        if ref.key_id:
            self._revoke(key_id=ref.key_id)
            return
        found = self._candidates(ref)
        if len(found) == 1:
            self._revoke(key_id=found[0].key_id)
        elif not found:
            log.info("%s: %s is no longer listed by the issuer: already revoked", self.secret.name, ref.label())
        elif value is not None and self.secret.issuer.capabilities.revoke_by_value:
            self._revoke(value=value)
        else:
            raise RotatorError(f"{len(found)} keys at the issuer could be {ref.label()}; revoke it by hand")

    def _revoke(self, *, key_id: str | None = None, value: Secret | None = None) -> None:
        try:
            self.secret.issuer.revoke(key_id=key_id, value=value)
        except KeyNotFound:
            log.info("%s: key %s already revoked", self.secret.name, key_id or "by value")

    def _sweep_duplicates(self, current: KeyRef) -> None:
        """A retried issue may have minted a twin under the same name: revoke all but ours."""
        mine = self._find(current, fetch=True)
        if mine is None or not current.name:
            return
        for key in self.cache.get(self.secret.issuer):
            if key.name == current.name and key.key_id != mine.key_id:
                self._revoke(key_id=key.key_id)
                self._note("swept", f"twin key id {key.key_id} of {current.name!r}")


def _entries_of(ref: KeyRef, listing: Iterable[KeyInfo]) -> list[KeyInfo]:
    """Listing entries that may be ``ref``: by id when known, else by name + last 4 (+ creation time)."""
    if ref.key_id:
        return [k for k in listing if k.key_id == ref.key_id]
    return _matching(ref, listing)


def _matching(ref: KeyRef, listing: Iterable[KeyInfo]) -> list[KeyInfo]:
    """Listing entries that may be ``ref`` (whose id is unknown): name + last 4 (+ creation time)."""
    found = [k for k in listing if k.last4 == ref.last4 and (ref.name is None or k.name == ref.name)]
    if len(found) > 1 and ref.created_on is not None:
        found = [k for k in found if k.created_on and
                 abs((k.created_on - ref.created_on).total_seconds()) <= MATCH_SKEW_SECONDS]
    return found


def _day(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%MZ") if moment else "-"
