"""Runs the rotation of many secrets at once: one :class:`rotator.rotation.SecretRun` per secret,
in a worker pool, each isolated (I6), then the run's sweep of stray keys.

Shared by the secrets of one run (:class:`RunShared`): the issuer listings (one request serves
every thread that needs a fresh one at the same time) and the :class:`rotator.revoker.Revoker`,
through which every revoke passes the revoke gate.

The sweep: at the end of every run (and so of every daemon reconcile), each issuer of the run's
secrets is listed once, and keys named like the keys of one of the run's secrets ("<secret> [r-…]") that
nothing relies on — no target serves them, no record names them, no live claim owns their
rotation — and that are older than the longest an issue request can still be in flight are
revoked through the gate. That catches what a run could not clean up itself: a twin whose issue
completed after its run's own check, the key of a runner killed between issuing and staging.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from rotator import gate, planner, review
from rotator.errors import RotatorError
from rotator.gate import Purpose, Request
from rotator.interfaces import Issuer, TwoStageRevoke
from rotator.listings import Listings
from rotator.models import KeyInfo, KeyRef, Phase, RotationRecord, Snapshot
from rotator.readahead import ReadAhead
from rotator.redact import redact
from rotator.report import Event, Outcome, RunReport, key_event
from rotator.revoker import Revoker
from rotator.rotation import SecretRun
from rotator.runtime import ManagedSecret, Runtime

__all__ = ["Engine", "Event", "Outcome", "RunReport", "RunShared"]

log = logging.getLogger("rotator.engine")


class RunShared:
    """What the secrets of one run share: listings and the revoker (with its evidence)."""

    def __init__(self, engine: Engine, ahead: ReadAhead | None = None) -> None:
        self.listings = Listings()
        self.revoker = Revoker(engine.runtime, self.listings, engine.clock, engine.revoke_event, ahead)
        self._lock = threading.Lock()
        self.records: dict[str, RotationRecord | None] = {}     # each secret's record as its run left it
        self.problems: list[str] = []        # worth a non-zero exit though no secret failed
        self.primaries: dict[str, Snapshot | None] = {}      # each primary as its run last saw it

    def ran(self, secret: str, primary: Snapshot | None) -> None:
        with self._lock:
            self.records[secret] = primary.record if primary is not None else None
            self.primaries[secret] = primary

    def known(self, names: set[str]) -> list[RotationRecord]:
        """The records this run left for the secrets ``names`` (those it ran)."""
        with self._lock:
            return [r for n, r in self.records.items() if n in names and r is not None]

    def problem(self, text: str) -> None:
        log.warning("%s", text)
        with self._lock:
            self.problems.append(text)


class Engine:
    def __init__(self, runtime: Runtime, *, on_event: Callable[[Event], None] | None = None,
                 on_outcome: Callable[[Outcome], None] | None = None) -> None:
        self.runtime = runtime
        self._on_outcome = on_outcome or (lambda outcome: None)   # each secret's run as it ends (progress)
        self.clock = runtime.clock
        self.me = runtime.identity
        self._on_event = on_event or (lambda event: None)
        self._stop = threading.Event()

    def request_stop(self) -> None:
        """Graceful shutdown: no new step starts; each secret stops at its next step boundary,
        releasing its lease so the next start resumes at once; running hooks are stopped."""
        self._stop.set()
        self.runtime.stop_hooks()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self, names: list[str] | None = None, *, force: bool = False) -> RunReport:
        """Do whatever is due for the named secrets (all by default), then sweep strays, and
        replace at once a current key the issuer no longer lists."""
        secrets = self.runtime.select(names)
        ahead = ReadAhead(secrets, self.clock)
        shared = RunShared(self, ahead)
        workers = min(self.runtime.settings.rotator.workers, max(len(secrets), 1))

        def one(secret: ManagedSecret) -> Outcome:
            return self.run_secret(secret, force=force, shared=shared, ahead=ahead)

        if workers == 1:
            outcomes = [one(s) for s in secrets]
        else:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rotator") as pool:
                outcomes = list(pool.map(one, secrets))
        self.sweep(secrets, shared)
        gone = [] if self.stopping else self.gone_keys(secrets, shared)
        if gone:                 # the issuer no longer has their key: replace it now, not at its due date
            redo = {s.name: self.run_secret(s, force=f"the issuer no longer lists the current key {ref.label()}",
                                            shared=shared) for s, ref in gone}
            outcomes = [_merged(o, redo[o.secret]) if o.secret in redo else o for o in outcomes]
        for shared_key in planner.shared_keys(shared.primaries):
            log.warning("%s", shared_key.warning)
        return RunReport(outcomes, shared.problems)

    def run_secret(self, secret: ManagedSecret, *, force: bool | str = False, shared: RunShared | None = None,
                   ahead: ReadAhead | None = None, compromised: str | None = None) -> Outcome:
        """One secret, isolated: any error becomes a failed Outcome, never an exception.
        ``compromised``: the fingerprint of a key reported compromised (the incident procedure):
        when the rotation revokes it, the gate does not hold it for targets that still serve it."""
        shared = shared or RunShared(self)
        run = SecretRun(self, secret, force, shared, ahead, compromised=compromised)
        try:
            outcome = run.drive()
        except Exception as exc:   # noqa: BLE001 - per-secret isolation (I6)
            outcome = run.failed(exc)
        finally:
            shared.ran(secret.name, run.snapshots.get(secret.policy.primary))
        if outcome.actions or outcome.status != "ok":
            # one line per secret that did something (its steps are at debug level)
            log.info("%s: %s: %s%s", secret.name, outcome.status, "; ".join(outcome.actions) or "-",
                     f" ({outcome.detail})" if outcome.detail and outcome.status != "changed" else "")
        self._on_outcome(outcome)
        return outcome

    # --- the sweep -------------------------------------------------------------------------------

    def sweep(self, secrets: list[ManagedSecret], shared: RunShared) -> None:
        """Revoke stray keys of the issuers of ``secrets`` (see the module docstring). What is
        worth a non-zero exit goes to ``shared.problems``: a revoke sent and not confirmed, a
        listing that contradicts itself (strays may hide behind it)."""
        issuers = {s.issuer.name: s.issuer for s in secrets}
        for issuer in issuers.values():
            if self.stopping:
                break
            try:
                strays = self.strays(issuer, shared, {s.name for s in secrets if s.issuer is issuer})
            except RotatorError as exc:
                log.warning("could not list the keys of issuer %s to sweep strays: %s", issuer.name,
                            redact(str(exc)))
                strays = []
            for secret, entry in strays:
                try:
                    shared.revoker.revoke(Request(secret, Purpose.STRAY, entry=entry), issuer,
                                          listing=shared.listings.at_hand(issuer))
                except RotatorError as exc:
                    shared.problem(f"{secret}: stray key {entry.label()}: {redact(str(exc))}")
            owners = [s.name for s in secrets if s.issuer is issuer]
            if isinstance(issuer, TwoStageRevoke) and owners:
                self.purge_dormant(issuer, shared, owners[0])

    def purge_dormant(self, issuer: TwoStageRevoke, shared: RunShared, secret: str) -> None:
        """The second stage of a two-stage revoke (AWS IAM): delete the keys rotator deactivated
        at least the issuer's ``delete_after`` ago, each through the gate. Keys deactivated by
        someone else (no time noted) are not deleted here; ``rotator review`` shows them, and a
        rotation that needs room at the owner's key limit deletes a deactivated key first
        (rotation.Rotation._make_room)."""
        after = issuer.delete_after
        now = self.clock.now()
        try:
            dormant = issuer.dormant_keys()
        except RotatorError as exc:
            log.warning("could not list the deactivated keys of issuer %s: %s", issuer.name, redact(str(exc)))
            return
        for key in dormant:
            if key.deactivated_on is None or key.deactivated_on + after > now:
                continue
            try:
                shared.revoker.purge(Request(secret, Purpose.PURGE), issuer, key.key_id)
            except RotatorError as exc:
                shared.problem(f"{secret}: deleting deactivated key …{key.key_id[-4:]}: {redact(str(exc))}")
        try:
            issuer.tidy()
        except RotatorError as exc:
            log.warning("issuer %s: could not forget notes of deleted keys: %s", issuer.name, redact(str(exc)))

    def strays(self, issuer: Issuer, shared: RunShared, names: set[str]) -> list[tuple[str, KeyInfo]]:
        """Keys of ``issuer`` named like the keys of the secrets ``names`` (the run's) that no
        record or target is known to rely on: the candidates of the sweep (the gate has the last
        word). Lists the issuer once."""
        listing = shared.listings.fresh(issuer)
        if not listing.usable:
            shared.problem(f"issuer {issuer.name}: its listing contradicts itself ("
                           + "; ".join(listing.problems[:3]) + "): stray keys may hide behind it; sweep not done")
            return []
        managed = [s for s in self.runtime.secrets if s.issuer is issuer and s.name in names]
        if not issuer.capabilities.named_keys:     # no names (AWS IAM): every key of the owner is rotator's
            named = [(managed[0].name, k) for k in listing] if managed else []
        else:                # (one look-up per key, not one per key and secret: fleets are large)
            owner_of = review.name_owners([(s.name, s.spec.key_name) for s in managed])
            named = [(owner, k) for k in listing for owner in [owner_of(k.name)] if owner]
        refers = _referred([ref for record in shared.known(names) for ref in _refs(record)])
        named = [(owner, k) for owner, k in named if not refers(k)]
        if not named:            # every rotation-named key is one a record of this run names
            return []
        holders, _, _ = shared.revoker.usage(issuer).survey(self.clock.now())
        ids = {h.key_id for h in holders if h.key_id}           # a holder relies on a key by its id,
        last4s = {h.last4 for h in holders if not h.key_id}     # or, without one, by its last 4
        return [(owner, k) for owner, k in named if k.key_id not in ids and k.last4 not in last4s]

    def gone_keys(self, secrets: list[ManagedSecret], shared: RunShared) -> list[tuple[ManagedSecret, KeyRef]]:
        """Secrets resting in ``idle`` whose current key two fresh listings no longer show: it was
        deleted at the issuer (by hand, or it expired), so what their targets serve is refused."""
        found = []
        for secret in secrets:
            record = shared.records.get(secret.name)
            if record is None or record.phase is not Phase.IDLE or record.current is None:
                continue
            ref = record.current
            if not (ref.key_id or ref.name):
                continue                  # adopted among look-alikes: nothing to look it up by
            listing = shared.listings.at_hand(secret.issuer)
            if listing is None or not listing.usable or _listed(ref, listing):
                continue
            try:
                again = shared.listings.fresh(secret.issuer)   # absent from two listings, or not at all
            except RotatorError:
                continue
            if again.usable and not _listed(ref, again):
                found.append((secret, ref))
        return found

    # --- events ----------------------------------------------------------------------------------

    def revoke_event(self, action: str, detail: str, secret: str, *, key: KeyRef | None = None,
                     entry: KeyInfo | None = None, rotation_id: str | None = None, result: str = "ok") -> None:
        """The revoker's intents and results, as events of ``secret``."""
        if result != "intent":
            log.info("%s: %s %s", secret, action, detail)
        self.emit(key_event(self.clock.now(), secret, action, detail, key=key, entry=entry,
                            rotation_id=rotation_id, result=result, runner=self.me))

    def emit(self, event: Event) -> None:
        try:
            self._on_event(event)
        except Exception:  # noqa: BLE001 - observers never break a rotation
            log.exception("event observer failed")


def _listed(ref: KeyRef, listing) -> bool:
    return bool(gate.candidates(Request("", Purpose.OLD, key=ref), listing)[0])


def _merged(first: Outcome, second: Outcome) -> Outcome:
    """The outcome of a secret run twice in one run (its key was found gone after the first)."""
    second.actions[:0] = first.actions
    if first.error is not None and second.error is None:
        second.fail(first.error, retry=first.retry)
    return second


def _refs(record: RotationRecord) -> list[KeyRef]:
    refs = [record.current, record.pending, record.previous, *(h.key for h in record.held)]
    return [ref for ref in refs if ref is not None]


def _referred(refs: list[KeyRef]) -> Callable[[KeyInfo], bool]:
    """Does any of ``refs`` refer to a listing entry (``KeyRef.refers_to``)? By a set of ids and
    the id-less refs by last 4, not one comparison per ref."""
    ids = {ref.key_id for ref in refs if ref.key_id}
    by_last4: dict[str | None, list[KeyRef]] = {}
    for ref in refs:
        if not ref.key_id:
            by_last4.setdefault(ref.last4, []).append(ref)
    return lambda entry: (entry.key_id in ids
                          or any(ref.refers_to(entry) for ref in by_last4.get(entry.last4, ())))
