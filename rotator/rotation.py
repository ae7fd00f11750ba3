"""One secret during one run: the steps ``machine.decide`` chooses, performed.

The run reads the primary, asks the machine for the next step, performs it, records what it saw
and did, and asks again. Every primary write is a compare-and-swap carrying the updated rotation
record, so a crash after any effect resumes from the record (I5), and a lost CAS means another
runner moved first (I4): the run re-reads and decides again. An *intent* event is emitted before
every effect, so the audit trail shows it even if the process dies right after.

Revokes go through :class:`rotator.revoker.Revoker` and its gate; nothing here calls
``Issuer.revoke``.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Callable, Iterable

from rotator import deliveries, machine
from rotator.errors import (
    AdoptionError, Conflict, IssuerError, LeaseLost, RotationError, RotatorError, UnusableKey,
)
from rotator.gate import Purpose, Request, Verdict, matching, rotation_tag, waiting_for
from rotator.hooks import VALUE_EVENTS, Context
from rotator.lease import LeaseKeeper, keeping
from rotator.machine import Observations, owe, owed_consumers
from rotator.models import Delivery, HeldKey, KeyInfo, KeyRef, Phase, RotationRecord, Secret, Snapshot, renewed
from rotator.readahead import ReadAhead
from rotator.redact import redact
from rotator.report import Outcome, key_event
from rotator.timeutil import short_instant
from rotator.runtime import ManagedSecret, short_id

if TYPE_CHECKING:
    from rotator.engine import Engine, RunShared

log = logging.getLogger("rotator.engine")

MAX_STEPS = 48          # a rotation needs about a dozen; more means two runners keep colliding
OWNED = (Phase.CLAIMED, Phase.STAGED, Phase.ROLLING_BACK)
#: Waits between tries of a live authentication that was refused: a new key may take a moment to
#: be accepted everywhere at the issuer, and one refusal of a key in use is not proof it is dead.
VERIFY_RETRY_WAITS = (1.0, 3.0, 9.0)
MATCH_SKEW = timedelta(seconds=120)


class SecretRun:
    """The state of one secret during one run: snapshots (with values), record, run facts."""

    def __init__(self, engine: Engine, secret: ManagedSecret, force: bool | str, shared: RunShared,
                 ahead: ReadAhead | None = None, *, compromised: str | None = None) -> None:
        self.engine = engine
        self.compromised = compromised        # fingerprint of a key reported compromised (revoke --compromised)
        self.clock = engine.clock
        self.secret = secret
        self.shared = shared
        self.issuer = secret.issuer
        self.ahead = ahead                    # batched reads: the first of the primary, secondaries unwritten
        self.primary_read = False
        self.written: set[str] = set()        # secondaries this run deployed to (read back alone)
        self.outcome = Outcome(secret.name)
        self.snapshots: dict[str, Snapshot] = {}
        self.fresh: set[str] = set()
        self.obs = Observations(me=engine.me, record=None, force=force, incident=compromised is not None)
        self.minted: Secret | None = None     # a key issued by this run and not yet staged
        self.minted_name: str | None = None
        self.minted_rotation: str | None = None   # the rotation it was minted under (our own claim)
        self.minted_id: str | None = None         # its id, when the issuer said (keys without names)
        self.issue_ticket = 0                 # listings after this ticket show the key this run issued
        self.held_reason: str | None = None   # why the gate held the old key's revoke
        self.held_consumers: tuple[str, ...] = ()   # ... when it was held for consumer gates
        self.confirmed: KeyRef | None = None  # the pending key as found in the listing (with its id)
        self.keeper = LeaseKeeper(lease=secret.policy.lease, clock=self.clock, renew=self._renew_lease,
                                  until=self._lease_until)

    # --- the loop ------------------------------------------------------------------------------

    def drive(self) -> Outcome:
        self._read_primary()
        with keeping(self.keeper):
            for _ in range(MAX_STEPS):
                now = self.clock.now()
                step = machine.decide(self.secret.policy, self._observations(), now)
                if step.terminal:
                    return self._finish(step)
                if self.engine.stopping:
                    return self._interrupted(step)
                log.debug("%s: %s", self.secret.name, step)
                try:
                    self.keeper.renew_if_due()
                    getattr(self, f"_do_{step.name}")(step, now)
                except Conflict as exc:
                    log.info("%s: %s; re-reading the primary", self.secret.name, exc)
                    self._read_primary(reset=True)
                    if self.minted is not None:   # I4: a loser revokes what it minted ...
                        if self.primary.pending == self.minted:
                            self.minted = None    # ... unless its write landed after all
                        else:
                            self._revoke_minted(Purpose.LOSER)
        raise RotatorError(f"gave up after {MAX_STEPS} steps: other runners keep changing the record")

    def _observations(self) -> Observations:
        views = {
            label: machine.view_of(snap, fresh=label in self.fresh) for label, snap in self.snapshots.items()
        }
        return renewed(self.obs, views=views, record=self.record)

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
        self.shared.revoker.saw(self.secret, bound.label, self.snapshots[bound.label])
        if reset:
            self.obs = Observations(me=self.engine.me, record=None, force=self.obs.force,
                                    rotated=self.obs.rotated, rolled_back=self.obs.rolled_back,
                                    incident=self.obs.incident)
            for label in list(self.snapshots):
                if label != bound.label:
                    del self.snapshots[label]
                    self.fresh.discard(label)

    def _write_primary(self, write: Callable[[str | None], str], record: RotationRecord,
                       **slots: Secret | None) -> None:
        """One compare-and-swap of the primary (``write(expect)`` returns the new version), then
        remember what it left there. No lease renewal runs from inside it.

        What the write left counts as read (the primary stays *fresh*), so the staged phase's
        read-back reads the secondaries only: the compare-and-swap succeeded, so the new version
        holds exactly what this run sent (versions are immutable; a file's version is the digest
        of its bytes), and any later change by someone else makes this run's next
        compare-and-swap (promote) fail, after which the run reads the primary again and decides
        again. A re-read could only return that same version, or show a change the next write
        catches anyway (docs/rotation.md, "Crashes and retries")."""
        with self.keeper.paused():
            version = write(self.primary.version)
        label = self.secret.policy.primary
        before = self.snapshots[label]
        changed = before.record is None or before.record.phase != record.phase
        self.snapshots[label] = renewed(before, version=version, record=record, **slots)
        if changed:
            self.obs = renewed(self.obs, deployed=frozenset())
        self.shared.revoker.wrote(self.secret, label, self.snapshots[label])

    def _write_record(self, record: RotationRecord) -> None:
        bound = self.secret.primary
        self._write_primary(lambda expect: bound.backend.write_record(bound.target, record, expect=expect), record)

    # --- the lease -----------------------------------------------------------------------------

    def _lease_until(self) -> datetime | None:
        record = self.record
        if record is None or record.owner != self.engine.me or record.phase not in OWNED:
            return None
        return record.lease_until

    def _lease_end(self, now: datetime) -> datetime:
        """``now`` + the lease, rounded up to a whole second (records keep whole seconds: rounding
        down would shorten a short lease by up to a second)."""
        end = now + self.secret.policy.lease
        return end if not end.microsecond else end.replace(microsecond=0) + timedelta(seconds=1)

    def _renew_lease(self) -> None:
        record = self.record
        assert record is not None
        renewed = record.evolve(lease_until=self._lease_end(self.clock.now()))
        try:
            self._write_record(renewed)
        except Conflict:
            raise LeaseLost(f"{self.secret.primary.label}: another runner took rotation"
                            f" {short_id(record.rotation_id or '')} over; stopping before any further effect") from None
        log.debug("%s: lease renewed until %s", self.secret.name, short_instant(renewed.lease_until))

    # --- events --------------------------------------------------------------------------------

    def _event(self, action: str, detail: str = "", *, key: KeyRef | None = None, result: str = "ok") -> None:
        record = self.record
        self.engine.emit(key_event(self.clock.now(), self.secret.name, action, detail, key=key,
                                   rotation_id=record.rotation_id if record else None, result=result,
                                   runner=self.engine.me))

    def _intent(self, action: str, detail: str = "", *, key: KeyRef | None = None) -> None:
        """Written before an effect: the audit trail shows it even if the process dies during it."""
        self._event(action, detail, key=key, result="intent")

    def _note(self, action: str, detail: str = "", *, key: KeyRef | None = None, result: str = "ok") -> None:
        """An effect done (or failed): the outcome's actions, the event (audit trail), and a log
        line at debug for a step that went as planned — the engine logs one line per secret at
        the end of its run with all of them (``Engine.run_secret``) — at info otherwise."""
        text = f"{action} {detail}".strip()
        if result == "ok" and action not in ("read-back", "interrupted"):
            self.outcome.did(text)
        else:
            self.outcome.actions.append(text)
        log.log(logging.DEBUG if result == "ok" else logging.INFO, "%s: %s %s", self.secret.name, action, detail)
        self._event(action, detail, key=key, result=result)

    # --- endings -------------------------------------------------------------------------------

    def _finish(self, step: machine.Step) -> Outcome:
        out = self.outcome
        record = self.record
        out.phase = record.phase.value if record else None
        if isinstance(step, machine.Rest):
            if out.error is None:
                out.detail = step.reason
                self._clear_failure()
            out.next_at = step.next_at
        elif isinstance(step, machine.Wait):
            if out.error is None:
                out.status, out.detail = "waiting", step.reason
            out.next_at = step.until
        else:
            assert isinstance(step, machine.Fail)
            out.fail(step.reason, retry=step.retry)
            self._note("failed", step.reason, result="error")
            self._release(step.reason)
        if record is not None and record.held:
            out.detail = f"{out.detail}; old key revoke held: {record.held[0].reason}" if out.detail \
                else f"old key revoke held: {record.held[0].reason}"
        return out

    def _clear_failure(self) -> None:
        """A run that ends healthy in ``idle`` after an earlier failure (a held revoke that failed
        to go through, a rollback whose rotation is not due again) clears it, so ``status`` stops
        saying ``failing`` for what the next run no longer finds wrong."""
        record = self.record
        if record is None or record.phase is not Phase.IDLE or not (record.last_error or record.attempts):
            return
        try:
            self._write_record(record.evolve(last_error=None, attempts=0, error_since=None,
                                             deliveries=deliveries.forget_failures(record.deliveries)))
        except RotatorError as exc:     # a note, not an effect: the next run tries again
            log.info("%s: could not clear the last error: %s", self.secret.name, redact(str(exc)))

    def _interrupted(self, step: machine.Step) -> Outcome:
        """Shutting down: leave the rotation where it stands, lease released."""
        out = self.outcome
        record = self.record
        if record is not None and record.owner == self.engine.me:
            self._write_record(record.evolve(owner=None, lease_until=None))
        if out.status == "ok":
            out.status = "waiting"
        out.detail = f"stopped before {step.name} (shutting down); the next run resumes"
        out.phase = record.phase.value if record else None
        self._note("interrupted", out.detail)
        return out

    def failed(self, exc: Exception) -> Outcome:
        message = redact(str(exc)) or type(exc).__name__
        out = self.outcome
        out.fail(message, retry=getattr(exc, "transient", False) or not isinstance(exc, RotatorError))
        if not isinstance(exc, RotatorError):
            log.error("%s: unexpected error", self.secret.name, exc_info=exc)
        self._note("failed", message, result="error")
        if self.minted is not None:
            self._cleanup_minted()
        try:
            self._release(message)
        except Exception as note_exc:  # noqa: BLE001 - the primary may be what failed
            log.warning("%s: could not record the failure: %s", self.secret.name, redact(str(note_exc)))
        record = self.record
        out.phase = record.phase.value if record else None
        return out

    def _release(self, error: str) -> None:
        """After a failure: note it in the record and let go of the claim (if this run holds it),
        so the next run resumes at once instead of waiting out the lease."""
        if self.record is None or self.secret.policy.primary not in self.snapshots:
            return
        for attempt in (1, 2):
            record = self.record
            assert record is not None
            mine = record.owner == self.engine.me
            if not mine and record.last_error == error:
                return
            note = record.evolve(last_error=error[:500], attempts=record.attempts + 1,
                                 error_since=record.error_since or self.clock.now())
            note = note.evolve(deliveries=self._owe(note, "failed", key=note.pending or note.current,
                                                    old_key=note.current if note.pending else None,
                                                    detail=error[:500]))
            if mine:
                note = note.evolve(owner=None, lease_until=None)
            try:
                self._write_record(note)
                self._deliver_quietly()
                return
            except Conflict:
                if attempt == 2 or not mine:
                    raise
                self._read_primary()          # a write of ours may have landed after all
                if self.record is None or self.record.owner != self.engine.me:
                    return

    # --- hooks ---------------------------------------------------------------------------------

    def _owe(self, record: RotationRecord, event: str, **context) -> tuple[Delivery, ...]:
        return owe(record, self.secret.policy, event, gates=self.secret.gates, **context)

    def _do_Announce(self, step: machine.Announce, now: datetime) -> None:
        record = self.record
        assert record is not None
        owed = self._owe(record, step.event, key=record.current, old_key=record.previous)
        self._write_record(record.evolve(deliveries=owed))

    def _do_DeliverHooks(self, step: machine.DeliverHooks, now: datetime) -> None:
        self._deliver(now)

    def _deliver(self, now: datetime) -> None:
        """Deliver every due delivery of the record: claim them (one compare-and-swap), run the
        hooks (in parallel, within the shared concurrency bound), record the results."""
        record = self.record
        assert record is not None
        due = [d for d in record.deliveries if d.due(now)]
        hooks = self.secret.hooks
        runnable = [d for d in due if d.hook in hooks]
        timeouts = {name: timedelta(seconds=hook.timeout) for name, hook in hooks.items()}
        claimed = deliveries.claim(record.deliveries, {d.ident for d in runnable}, now, timeouts)
        if runnable:                  # (deliveries of hooks no longer configured are only given up)
            self._write_record(record.evolve(deliveries=claimed))
        attempts = {d.ident: d.attempts for d in claimed}
        jobs = []
        for d in runnable:
            hook = hooks[d.hook]
            self._intent("hook", f"{d.hook} ({hook.kind}) {d.event}, attempt {attempts[d.ident]}", key=d.key)
            jobs.append((hook, self._context(d, attempts[d.ident], now),
                         self._value_for(d) if hook.pass_value and d.event in VALUE_EVENTS else None))
        results = self.engine.runtime.hook_runner.deliver(jobs) if jobs else []
        done = {}
        for d, result in zip(runnable, results):
            done[d.ident] = (result.ok, result.detail)
            gate = " (gate)" if d.gate else ""
            self._note("hook", f"{d.hook}{gate} {d.event}: {'ok' if result.ok else 'failed'}: {result.detail}",
                       key=d.key, result="ok" if result.ok else "error")
        self._settle(done, self.clock.now())

    def _settle(self, results: dict, now: datetime) -> None:
        """Record the results; a concurrent write (a pause, a lease renewal by the owner) is read
        and the results applied to it."""
        for _ in range(3):
            record = self.record
            assert record is not None
            settled = deliveries.settle(record.deliveries, results, now, self.secret.hooks)
            try:
                self._write_record(record.evolve(deliveries=settled))
            except Conflict:
                self._read_primary()
                continue
            for d in settled:
                if d.state == "given-up" and d.ident in results:
                    log.warning("%s: hook %s gave up on %s after %d attempt(s): %s", self.secret.name, d.hook,
                                d.event, d.attempts, d.last_error)
                    self._event("hook-given-up", f"{d.hook} {d.event} after {d.attempts} attempt(s): {d.last_error}",
                                key=d.key, result="error")
            return
        raise Conflict(f"{self.secret.primary.label}: hook results not recorded (the record keeps changing);"
                       " the hooks are delivered again when their claim lapses")

    def _deliver_quietly(self) -> None:
        """After a failure was recorded: tell its hooks now (a failure here is only logged; the
        deliveries stay owed for the next run)."""
        try:
            record = self.record
            if record is not None and any(d.due(self.clock.now()) for d in record.deliveries):
                self._deliver(self.clock.now())
        except Exception as exc:  # noqa: BLE001 - already failing: the next run delivers them
            log.warning("%s: hooks of the failure not delivered now: %s", self.secret.name, redact(str(exc)))

    def _context(self, d: Delivery, attempt: int, now: datetime) -> Context:
        return Context(event=d.event, secret=self.secret.name, hook=d.hook,
                       rotation_id=None if d.rotation_id == "-" else d.rotation_id, attempt=attempt, at=now,
                       issuer=self.issuer.name, targets=tuple(b.label for b in self.secret.targets),
                       runner=self.engine.me, key=d.key, old_key=d.old_key, detail=d.detail)

    def _value_for(self, d: Delivery) -> Secret | None:
        """The value of the key a delivery is about, as the primary holds it (for ``pass_value``)."""
        if d.key is None or self.secret.policy.primary not in self.snapshots:
            return None
        snap = self.primary
        for value in (snap.current, snap.pending, snap.previous):
            if value is not None and value.fingerprint == d.key.fingerprint:
                return value
        return None

    # --- steps ---------------------------------------------------------------------------------

    def _do_Adopt(self, step: machine.Adopt, now: datetime) -> None:
        value = self.primary.current
        assert value is not None
        issuer = self.issuer
        listing = self.shared.listings.any(issuer)
        accepted = self._verify(value)
        previous = self.record or RotationRecord()
        if not accepted:
            live = self._listed_live(value, now, listing)
            if live:
                raise RotationError(
                    f"the issuer refuses the key in {self.secret.primary.label} (…{value.last4}: 401 after"
                    f" {len(VERIFY_RETRY_WAITS) + 1} tries) but its listing shows it live (id {live[0].key_id},"
                    f" expires {short_instant(live[0].expires_on)}): not treating it as dead; nothing revoked",
                    transient=True)
            ref = KeyRef.of(value, expires_on=now)
            adoption = "refused by the issuer and absent from its listing (deleted or expired): replacing it now"
        else:
            matches = self._candidates_for(value, now, listing)
            if not matches:                 # one omission proves nothing: ask again
                matches = self._candidates_for(value, now, self.shared.listings.fresh(issuer))
            if not matches:
                bound = self.secret.primary   # another runner may have adopted, rotated and revoked it meanwhile
                if bound.backend.read(bound.target).version != self.primary.version:
                    raise Conflict("changed while its key was being looked up at the issuer")
                raise AdoptionError(
                    f"the key in {self.secret.primary.label} (…{value.last4}) is valid but is not among the"
                    f" keys of issuer {issuer.name!r} (user {issuer.owner or 'unknown'}); it belongs to another"
                    " user. Refusing to manage it: rotating would change who owns the key and what it may do."
                )
            if len(matches) == 1:
                m = matches[0]
                ref = KeyRef.of(value, key_id=m.key_id, name=m.name, created_on=m.created_on, expires_on=m.expires_on)
                adoption = "matched" + (f" ({m.note})" if m.note else "")
            else:
                dates = [m.expires_on for m in matches if m.expires_on]
                ref = KeyRef.of(value, expires_on=min(dates) if len(dates) == len(matches) else None)
                adoption = (f"ambiguous: {len(matches)} keys end in …{value.last4}; earliest expiry used,"
                            " revoked by value")
        record = RotationRecord(
            phase=Phase.IDLE, current=ref, adoption=adoption, rotations=previous.rotations,
            last_rotated_at=previous.last_rotated_at, held=previous.held, paused=previous.paused,
            deliveries=previous.deliveries,
        )
        self._intent("adopt", ref.label(), key=ref)
        self._write_record(record)
        self._note("adopted", f"{ref.label()} ({adoption})", key=ref)

    def _candidates_for(self, value: Secret, now: datetime, listing: Iterable[KeyInfo]) -> list[KeyInfo]:
        matches = [k for k in listing if k.last4 == value.last4]
        return _live(matches, now) or matches     # a key the issuer accepts is not one of the expired look-alikes

    def _listed_live(self, value: Secret, now: datetime, listing: Iterable[KeyInfo]) -> list[KeyInfo]:
        """Entries that may be ``value`` and that the issuer lists as live; a second listing
        confirms any found (the conclusive-evidence rule needs the listing to say a key is dead)."""
        if not _live([k for k in listing if k.last4 == value.last4], now):
            return []
        return _live([k for k in self.shared.listings.fresh(self.issuer) if k.last4 == value.last4], now)

    def _do_Claim(self, step: machine.Claim, now: datetime) -> None:
        before = self.record or RotationRecord()
        rotation_id = uuid.uuid4().hex
        record = RotationRecord(
            phase=Phase.CLAIMED, current=before.current, rotation_id=rotation_id, owner=self.engine.me,
            lease_until=self._lease_end(now), started_at=now, attempts=before.attempts,
            last_error=before.last_error, error_since=before.error_since, last_rotated_at=before.last_rotated_at,
            rotations=before.rotations, adoption=before.adoption, held=before.held, paused=before.paused,
            deliveries=deliveries.settled_away(before.deliveries),
        )
        if step.outside_window:
            log.warning("%s: %s", self.secret.name, step.reason)
        self._intent("claim", f"{short_id(rotation_id)}: {step.reason}")
        self._write_record(record)
        # A new rotation: forget what this run learnt about the last one (--force rotates once).
        self.obs = Observations(me=self.engine.me, record=None, rotated=self.obs.rotated, incident=self.obs.incident)
        self._note("claimed", f"{short_id(rotation_id)}: {step.reason}")

    def _do_TakeOver(self, step: machine.TakeOver, now: datetime) -> None:
        record = self.record
        assert record is not None
        taken = record.evolve(owner=self.engine.me, lease_until=self._lease_end(now))
        left_by = record.owner or "a stopped runner"
        self._intent("take-over", f"{short_id(record.rotation_id or '')} left by {left_by}")
        self._write_record(taken)      # the claim is ours before anything it owned is touched
        self.obs = renewed(self.obs, deployed=frozenset(), took_over=True)
        self._note("resumed", f"{short_id(record.rotation_id or '')} left by {left_by}")

    def _do_SweepOrphans(self, step: machine.SweepOrphans, now: datetime) -> None:
        record = self.record
        assert record is not None and record.rotation_id
        name = self.secret.key_name(record.rotation_id)
        if self.issuer.capabilities.named_keys:
            done = self.shared.revoker.revoke_named(self.secret.name, self.issuer, name, Purpose.ORPHAN,
                                                    claim=record.rotation_id)
            what = f"named {name!r}"
        else:           # keys without names: what the owner minted since the claim that no record knows
            done = self._revoke_unknown(record, Purpose.ORPHAN, since=record.started_at)
            what = "no record knows"
        self.obs = renewed(self.obs, orphans_swept=True)
        revoked = sum(1 for _, verdict in done if verdict.revoke)
        if done:
            self._note("swept", f"{revoked} orphan key(s) {what} left by the previous owner")

    def _make_room(self, record: RotationRecord, limit: int) -> None:
        """An owner may hold at most ``limit`` keys (AWS IAM: 2, deactivated ones included). When
        it holds that many, delete one that nothing relies on before issuing: a deactivated key
        first (the oldest), else a live key no record knows (deactivated, then deleted), each
        through the gate. When every key is relied on (the previous key in its grace window, a
        held revoke, a key a person reactivated), wait: a RotationError says which."""
        revoker, issuer = self.shared.revoker, self.issuer
        listing = self.shared.listings.fresh(issuer)
        dormant = revoker.dormant(issuer)
        if len(listing) + len(dormant) < limit:
            return
        request = Request(self.secret.name, Purpose.ROOM, claim=record.rotation_id)
        epoch = datetime.min.replace(tzinfo=self.clock.now().tzinfo)
        busy: list[str] = []
        for entry in sorted(dormant, key=lambda k: k.created_on or epoch):
            held = revoker.purge(request, issuer, entry.key_id, rotation_id=record.rotation_id)
            if held is None:
                self._note("made-room", f"deleted deactivated key {entry.label()}: {issuer.owner} had {limit}"
                           " keys, the most it may have")
                return
            busy.append(f"deactivated key {entry.label()}: {held}")
        roles = (("current", record.current), ("pending", record.pending), ("previous", record.previous),
                 *(("held", h.key) for h in record.held))
        for entry in listing:
            role = next((r for r, ref in roles if ref is not None and ref.refers_to(entry)), None)
            if role is not None:
                busy.append(f"{entry.label()} is this secret's {role} key")
                continue
            verdict = revoker.revoke(replace(request, entry=entry), issuer, listing=listing,
                                     rotation_id=record.rotation_id)
            if verdict.hold:
                busy.append(f"{entry.label()}: {verdict.reason}")
            elif entry.key_id and revoker.purge(request, issuer, entry.key_id, rotation_id=record.rotation_id) is None:
                self._note("made-room", f"deactivated and deleted key {entry.label()}, which no record knows:"
                           f" {issuer.owner} had {limit} keys, the most it may have")
                return
        raise RotationError(f"waiting: {issuer.owner} already has {len(listing) + len(dormant)} keys, the most it may"
                            f" have, and none can go yet ({'; '.join(busy)}); the rotation starts once one can",
                            transient=True)

    def _revoke_unknown(self, record: RotationRecord, purpose: Purpose, *, since: datetime | None,
                        ids: Iterable[str] | None = None) -> list[tuple[KeyInfo, Verdict]]:
        """For an issuer whose keys have no names: revoke, through the gate, the listed keys that
        this record does not know (``ids``: only those), created since ``since``."""
        listing = self.shared.listings.fresh(self.issuer)
        known = [ref for ref in (record.current, record.pending, record.previous, *(h.key for h in record.held))
                 if ref is not None]
        wanted = set(ids) if ids is not None else None
        done = []
        for entry in listing:
            if any(ref.refers_to(entry) for ref in known) or (wanted is not None and entry.key_id not in wanted):
                continue
            if since is not None and entry.created_on is not None and entry.created_on < since - MATCH_SKEW:
                continue
            verdict = self.shared.revoker.revoke(Request(self.secret.name, purpose, entry=entry,
                                                         claim=record.rotation_id), self.issuer,
                                                 listing=listing, rotation_id=record.rotation_id)
            done.append((entry, verdict))
        return done

    def _do_IssueAndStage(self, step: machine.IssueAndStage, now: datetime) -> None:
        record = self.record
        assert record is not None and record.rotation_id
        name = self.secret.key_name(record.rotation_id)
        if self.issuer.capabilities.max_keys_per_owner:
            self._make_room(record, self.issuer.capabilities.max_keys_per_owner)
        self._intent("issue", f"a key named {name!r}")
        self.minted_name, self.minted_rotation = name, record.rotation_id
        try:
            issued = self.issuer.issue(name)
        except UnusableKey as exc:
            self.issue_ticket = self.shared.listings.ticket(self.issuer)
            self._event("issue-refused", redact(str(exc)), result="error")
            if exc.key_ids:                      # the issuer knows the minted keys' ids
                self._revoke_unknown(record, Purpose.UNUSABLE, since=None, ids=exc.key_ids)
                raise
            self._revoke_unusable(name)         # by the unique name asked for ...
            if exc.name and exc.name != name and rotation_tag(exc.name) == record.rotation_id[:8]:
                self._revoke_unusable(exc.name)     # ... or another carrying this rotation's tag
            raise
        self.issue_ticket = self.shared.listings.ticket(self.issuer)
        self.minted, self.minted_id = issued.value, issued.key_id
        ref = issued.ref(record.rotation_id)
        note = f"; {issued.note}" if issued.note else ""
        if issued.maybe_twinned:      # the confirmation in a listing finds the twin, if there is one
            note += "; its request was retried after a lost reply: a twin may exist and is looked for"
        if issued.note:
            log.warning("%s: new key %s: %s", self.secret.name, ref.label(), issued.note)
        self._note("issued", f"{ref.label()} named {issued.name!r}, expires {short_instant(issued.expires_on)}{note}", key=ref)
        staged = record.evolve(phase=Phase.STAGED, pending=ref, lease_until=self._lease_end(self.clock.now()))
        staged = staged.evolve(deliveries=self._owe(staged, "staged", key=ref, old_key=record.current))
        bound = self.secret.primary
        self._intent("stage", f"{ref.label()} in {bound.label}", key=ref)
        self._write_primary(lambda expect: bound.backend.stage(bound.target, issued.value, staged, expect=expect),
                            staged, pending=issued.value)
        self.minted = None
        self._note("staged", f"{ref.label()} pending in {bound.label}", key=ref)

    def _do_ConfirmIssued(self, step: machine.ConfirmIssued, now: datetime) -> None:
        """The new key in the issuer's listing: its id, its twins, and whether the value the
        issuer returned is the key it created (a value that is not would be deployed while the
        real key leaked)."""
        record = self.record
        assert record is not None and record.pending is not None
        pending = record.pending
        listings = self.shared.listings
        listing = listings.after(self.issuer, self.issue_ticket)
        named, ours = self._find_issued(pending, listing)
        if not ours:                 # one omission proves nothing: ask again
            listing = listings.fresh(self.issuer)
            named, ours = self._find_issued(pending, listing)
        if not listing.usable:
            self.shared.problem(f"{self.secret.name}: the issuer's listing contradicts itself ("
                                + "; ".join(listing.problems[:3]) + f"): twins of the new key {pending.label()}"
                                " may hide behind it; a later run's sweep looks again")
        if len(ours) > 1:
            raise RotationError(f"{len(ours)} listed keys named {pending.name!r} end in …{pending.last4};"
                                " cannot tell which is the new key", transient=True)
        if not ours and named:
            for entry in named:
                self.shared.revoker.revoke(Request(self.secret.name, Purpose.UNUSABLE, entry=entry,
                                                   claim=record.rotation_id), self.issuer,
                                           rotation_id=record.rotation_id)
            listed = ", ".join(f"…{k.last4}" for k in named)
            self.obs = renewed(self.obs, issue_confirmed=True, new_revoked=True, issue_problem=(
                f"the value the issuer returned (…{pending.last4}) is not the key it created under"
                f" {pending.name!r} (listed as {listed}); that key was revoked"))
            return
        if not ours:
            raise RotationError(f"the new key {pending.label()} named {pending.name!r} is not in the issuer's"
                                " listing (checked twice); not deploying a key rotator cannot identify",
                                transient=True)
        mine = ours[0]
        expires = pending.expires_on
        if mine.expires_on is not None and (expires is None or mine.expires_on < expires):
            expires = mine.expires_on
        # saved with the promotion (a run that stops before it confirms again)
        self.confirmed = replace(pending, key_id=mine.key_id, expires_on=expires)
        self.obs = renewed(self.obs, issue_confirmed=True)
        for twin in (k for k in named if k.key_id != mine.key_id):
            self.shared.revoker.revoke(Request(self.secret.name, Purpose.TWIN, entry=twin, claim=record.rotation_id),
                                       self.issuer, rotation_id=record.rotation_id)

    def _find_issued(self, pending: KeyRef, listing: Iterable[KeyInfo]) -> tuple[list[KeyInfo], list[KeyInfo]]:
        entries = list(listing)
        if pending.key_id:           # the issuer said which key it created (AWS IAM): by that id alone
            return [], [k for k in entries if k.key_id == pending.key_id and k.last4 == pending.last4]
        named = [k for k in entries if pending.name and k.name == pending.name]
        ours = [k for k in named if k.last4 == pending.last4]
        if not named:                # the issuer may have altered the name: last 4 and creation time
            ours = [k for k in matching(replace(pending, name=None), entries)
                    if k.created_on is not None and pending.created_on is not None
                    and abs(k.created_on - pending.created_on) <= MATCH_SKEW]
        if len(ours) > 1 and pending.created_on is not None:
            ours = [k for k in ours if k.created_on is not None
                    and abs(k.created_on - pending.created_on) <= MATCH_SKEW] or ours
        return named, ours

    def _do_VerifyNewKey(self, step: machine.VerifyNewKey, now: datetime) -> None:
        pending = self.primary.pending
        assert pending is not None
        accepted = self._verify(pending)
        self.obs = renewed(self.obs, new_key_accepted=accepted)
        self._note("verified" if accepted else "verify-failed", f"…{pending.last4} at {self.issuer.name}",
                   result="ok" if accepted else "error")

    def _verify(self, value: Secret) -> bool:
        """Live authentication; a refusal is tried again (with waits) before it is believed.
        An answer that is neither the documented success nor a refusal raises."""
        for wait in (*VERIFY_RETRY_WAITS, None):
            if self.issuer.verify(value):
                return True
            if wait is None:
                return False
            log.info("%s: the issuer refused …%s; trying again in %ss", self.secret.name, value.last4, wait)
            self.engine.runtime.context.sleep(wait)
        return False

    def _do_Deploy(self, step: machine.Deploy, now: datetime) -> None:
        record = self.record
        assert record is not None
        if record.phase is Phase.STAGED:
            new, old, ref = self.primary.pending, self.primary.current, record.pending
        else:   # GRACE: repair a secondary that lost the new key
            self._confirm_primary("repairing")
            new, old, ref = self.primary.current, self.primary.previous, record.current
        assert new is not None and ref is not None
        self._intent("deploy", f"{ref.label()} to {', '.join(step.targets)}", key=ref)
        self._deploy(step.targets, new, old, ref)
        self._note("deployed", f"{ref.label()} to {', '.join(step.targets)}", key=ref)

    def _confirm_primary(self, doing: str) -> None:
        """Raise Conflict (the run re-reads the primary and decides again) unless the primary is
        still at the version this run's decision came from. A deploy outside a claim (the grace
        window's repair) has no lease to lose: a slow runner could otherwise write back, long
        after it read the record, a key that another rotation has since made the previous one,
        and that rotation then revokes it. One read, on a path only drift takes."""
        bound = self.secret.primary
        now = bound.backend.read(bound.target)
        if now.version != self.primary.version:
            raise Conflict(f"{bound.label} changed since this run read it; not {doing} from that read")

    def _deploy(self, labels: Iterable[str], current: Secret, previous: Secret | None, ref: KeyRef) -> None:
        for label in labels:
            bound = self.secret.bound(label)
            self.keeper.renew_if_due()
            self._read_before_deploy(label, bound)
            bound.backend.deploy(bound.target, current, previous, ref)
            self.written.add(label)
            self.snapshots.pop(label, None)
            self.fresh.discard(label)
            self.obs = renewed(self.obs, deployed=self.obs.deployed | {label})
            self.shared.revoker.wrote(self.secret, label, Snapshot(version="written", current=current,
                                                                   previous=previous))

    def _read_before_deploy(self, label: str, bound) -> None:
        """A deploy rewrites its target from a read of it (to keep the application's other fields
        and skip a write that changes nothing). On a batch-reading backend that read comes from
        the run's read-ahead when a batch serves it (one request for the next secrets'
        secondaries too), and the backend's deploy starts from it (AWS: ``providers/aws/common.py``,
        ``_take_base``); a read that would be alone is left to the deploy. Not when this run read
        or wrote the target already (the backend has it), nor when the revoke's evidence read it
        moments ago. Best effort: if it fails, the deploy reads for itself (and fails, if it
        does, with its own error)."""
        if (self.ahead is None or label in self.written or label in self.fresh
                or not self.ahead.batched(self.secret, bound)
                or self.shared.revoker.recent(self.secret, label) is not None):
            return
        try:
            snap = self.ahead.read_batched(self.secret, bound)
            if snap is not None:
                self.shared.revoker.saw(self.secret, label, snap)
        except RotatorError as exc:
            log.debug("%s: reading %s before the deploy failed: %s", self.secret.name, label, redact(str(exc)))

    def _do_ReadBack(self, step: machine.ReadBack, now: datetime) -> None:
        primary = self.secret.policy.primary
        for label in step.targets:
            bound = self.secret.bound(label)
            if label != primary and label not in self.written:     # I3's re-read: batched, or just read
                snap = self.shared.revoker.recent(self.secret, label) or (  # for a revoke's evidence
                    self.ahead.read_target(self.secret, bound) if self.ahead else bound.backend.read(bound.target))
            else:                                                   # after our own write: now, alone
                snap = bound.backend.read(bound.target)
            if label == primary and snap.version != self.primary.version:
                raise Conflict(f"{label} changed since this run wrote it")
            self.snapshots[label] = snap
            self.fresh.add(label)
            self.shared.revoker.saw(self.secret, label, snap)

    def _do_Promote(self, step: machine.Promote, now: datetime) -> None:
        record = self.record
        assert record is not None and record.pending is not None
        if self.confirmed is not None and self.confirmed.fingerprint == record.pending.fingerprint:
            record = record.evolve(pending=self.confirmed)
        has_old = record.current is not None
        promoted = record.evolve(
            phase=Phase.GRACE if has_old else Phase.IDLE, current=record.pending,
            previous=record.current, pending=None, verified_at=now,
            grace_until=now + self.secret.policy.grace if has_old else None,
            owner=None, lease_until=None, last_rotated_at=now, rotations=record.rotations + 1,
            attempts=0, last_error=None, error_since=None,
        )
        promoted = promoted.evolve(deliveries=deliveries.forget_failures(promoted.deliveries))
        promoted = promoted.evolve(deliveries=self._owe(promoted, "deployed", key=record.pending,
                                                       old_key=record.current))
        bound = self.secret.primary
        snap = self.primary
        self._intent("promote", f"{record.pending.label()} in {bound.label}", key=record.pending)
        self._write_primary(lambda expect: bound.backend.promote(bound.target, promoted, expect=expect),
                            promoted, current=snap.pending, previous=snap.current, pending=None)
        self.obs = renewed(self.obs, rotated=True)
        for issuer in self.secret.signs_in:       # self-rotation: sign in with the new key from now on
            issuer.credential_changed()
            self.shared.revoker.forget_admin(issuer)
        until = f"; old key revoked after {short_instant(promoted.grace_until)}" if has_old else ""
        self._note("promoted", f"{record.pending.label()} is current on every target{until}", key=record.pending)

    def _do_BeginRollback(self, step: machine.BeginRollback, now: datetime) -> None:
        record = self.record
        assert record is not None
        rolling = record.evolve(phase=Phase.ROLLING_BACK, last_error=step.reason, rollback_reason=step.reason,
                                owner=self.engine.me, lease_until=self._lease_end(now))
        self._intent("rollback", step.reason)
        self._write_record(rolling)
        self.outcome.fail(step.reason)
        self._note("rollback", step.reason, result="error")

    def _do_Restore(self, step: machine.Restore, now: datetime) -> None:
        record = self.record
        old = self.primary.current
        assert record is not None and old is not None and record.current is not None
        self._intent("restore", f"{record.current.label()} on {', '.join(step.targets)}", key=record.current)
        self._deploy(step.targets, old, None, record.current)
        self._note("restored", f"{record.current.label()} on {', '.join(step.targets)}", key=record.current)

    def _do_RevokeNew(self, step: machine.RevokeNew, now: datetime) -> None:
        record = self.record
        assert record is not None and record.pending is not None
        value = self.primary.pending if self.primary.pending is not None \
            and self.primary.pending.fingerprint == record.pending.fingerprint else None
        verdict = self.shared.revoker.revoke(
            Request(self.secret.name, Purpose.ROLLBACK, key=record.pending, own=frozenset({"pending"}),
                    claim=record.rotation_id), self.issuer, value=value, rotation_id=record.rotation_id)
        if verdict.hold and not verdict.about_use:
            raise RotationError(f"refused new key {record.pending.label()} not revoked yet: {verdict.reason}",
                                transient=True)
        if verdict.hold:
            self._note("revoke-held", f"refused new key {record.pending.label()}: {verdict.reason}",
                       key=record.pending, result="held")
        self.obs = renewed(self.obs, new_revoked=True)

    def _do_FinishRollback(self, step: machine.FinishRollback, now: datetime) -> None:
        record = self.record
        assert record is not None
        done = record.evolve(phase=Phase.IDLE, pending=None, owner=None, lease_until=None,
                             attempts=record.attempts + 1, last_error=step.reason, rollback_reason=None,
                             error_since=record.error_since or now)
        done = done.evolve(deliveries=self._owe(done, "rolled_back", key=record.pending, old_key=record.current,
                                                detail=step.reason))
        bound = self.secret.primary
        self._intent("finish-rollback", step.reason)
        self._write_primary(lambda expect: bound.backend.discard_pending(bound.target, done, expect=expect),
                            done, pending=None)
        self.obs = renewed(self.obs, rolled_back=True)
        self.outcome.fail(step.reason)
        self._note("rolled-back", f"old key {record.current.label() if record.current else '-'} kept",
                   result="error")

    def _do_RevokeOld(self, step: machine.RevokeOld, now: datetime) -> None:
        record = self.record
        assert record is not None and record.previous is not None and record.current is not None
        old = record.previous
        value = self.primary.previous
        if value is not None and value.fingerprint != old.fingerprint:
            value = None
        consumers = owed_consumers(record, record.rotation_id)
        verdict = self.shared.revoker.revoke(
            Request(self.secret.name, Purpose.COMPROMISED if old.fingerprint == self.compromised else Purpose.OLD,
                    key=old, own=frozenset({"previous"}), consumers=consumers, replaced_at=record.verified_at),
            self.issuer, value=value, rotation_id=record.rotation_id)
        if verdict.hold and not verdict.about_use:
            raise RotationError(f"old key {old.label()} not revoked: {verdict.reason}", transient=True)
        if verdict.hold:
            self.held_reason = verdict.reason
            self.held_consumers = consumers if verdict.reason == waiting_for(consumers) else ()
            self._note("revoke-held", f"old key {old.label()}: {verdict.reason}", key=old, result="held")
        self.obs = renewed(self.obs, old_revoke="held" if verdict.hold else "gone" if verdict.gone else "revoked")

    def _do_RevokeHeld(self, step: machine.RevokeHeld, now: datetime) -> None:
        record = self.record
        assert record is not None
        keep: list[HeldKey] = []
        deliveries = record.deliveries
        for held in record.held:
            consumers = owed_consumers(record, held.rotation_id)
            if consumers:         # no listing needed to know the answer: the consumers have not confirmed
                keep.append(replace(held, reason=waiting_for(consumers), consumers=consumers))
                continue
            verdict = self.shared.revoker.revoke(Request(self.secret.name, Purpose.HELD, key=held.key,
                                                         replaced_at=held.replaced_at), self.issuer)
            if verdict.hold:
                keep.append(replace(held, reason=verdict.reason, consumers=()))
            elif held.rotation_id:                    # revoked now, or found gone (revoked before a crash)
                deliveries = owe(record.evolve(rotation_id=held.rotation_id, deliveries=deliveries),
                                 self.secret.policy, "revoked", gates=self.secret.gates, old_key=held.key)
        self.obs = renewed(self.obs, held_checked=True)
        if tuple(keep) != record.held:
            self._intent("update-held", f"{len(record.held) - len(keep)} held revoke(s) done")
            self._write_record(record.evolve(held=tuple(keep), deliveries=deliveries))
            self._note("held-revokes", f"{len(record.held) - len(keep)} done, {len(keep)} still held")

    def _do_Finish(self, step: machine.Finish, now: datetime) -> None:
        record = self.record
        assert record is not None
        held = record.held
        if self.obs.old_revoke == "held" and record.previous is not None:
            held = (*held, HeldKey(record.previous, self.held_reason or "held", now, rotation_id=record.rotation_id,
                                   consumers=self.held_consumers, replaced_at=record.verified_at))
        done = record.evolve(phase=Phase.IDLE, previous=None, grace_until=None, held=held,
                             attempts=0, last_error=None, error_since=None)
        if self.obs.old_revoke in ("revoked", "gone"):    # gone: revoked before a crash, or expired
            done = done.evolve(deliveries=self._owe(done, "revoked", key=record.current, old_key=record.previous))
        self._intent("finish", f"rotation {short_id(record.rotation_id or '')}")
        self._write_record(done)
        extra = f"; revoke of the old key held: {self.held_reason}" if self.obs.old_revoke == "held" else ""
        self._note("finished", f"rotation {short_id(record.rotation_id or '')} complete{extra}")

    # --- minted keys that never reached the primary ---------------------------------------------

    def _revoke_minted(self, purpose: Purpose) -> None:
        """A key this run issued but did not stage: revoke it through the gate; if that cannot be
        done now, its rotation-tagged name lets the sweep of a later run find it."""
        value, self.minted = self.minted, None
        assert value is not None
        ref = KeyRef.of(value, name=self.minted_name, rotation_id=self.minted_rotation, key_id=self.minted_id)
        try:
            verdict = self.shared.revoker.revoke(Request(self.secret.name, purpose, key=ref,
                                                         claim=self.minted_rotation), self.issuer, value=value)
            if verdict.hold:
                log.info("%s: unstaged key %s kept: %s", self.secret.name, ref.label(), verdict.reason)
        except Exception as exc:  # noqa: BLE001 - the sweep of a later run finds it by its name
            log.warning("%s: could not revoke an unstaged key: %s", self.secret.name, redact(str(exc)))

    def _cleanup_minted(self) -> None:
        """After a failure with a key minted but (maybe) not staged: read the primary again — a
        stage that failed may have landed — and revoke the key only if it did not."""
        try:
            self._read_primary()
        except Exception as exc:  # noqa: BLE001 - cannot tell: leave the key to a later sweep
            log.warning("%s: minted key …%s left for a later sweep (primary unreadable: %s)", self.secret.name,
                        self.minted.last4 if self.minted else "", redact(str(exc)))
            self.minted = None
            return
        if self.primary.pending is not None and self.primary.pending == self.minted:
            self.minted = None
            return
        self._revoke_minted(Purpose.LOSER)

    def _revoke_unusable(self, name: str) -> None:
        """The issuer minted a key rotator must not use: revoke it by its unique name."""
        record = self.record
        try:
            listing = self.shared.listings.after(self.issuer, self.issue_ticket)
            done = self.shared.revoker.revoke_named(self.secret.name, self.issuer, name, Purpose.UNUSABLE,
                                                    claim=record.rotation_id if record else None, listing=listing)
            if not done:
                log.warning("%s: the unusable key named %r is not in the issuer's listing; a later sweep"
                            " looks again", self.secret.name, name)
        except IssuerError as exc:
            log.warning("%s: could not revoke the unusable key named %r: %s", self.secret.name, name,
                        redact(str(exc)))


def _live(keys: list[KeyInfo], now: datetime) -> list[KeyInfo]:
    """The listed keys not past their expiry (an unknown expiry counts as live)."""
    return [k for k in keys if k.expires_on is None or k.expires_on > now]
