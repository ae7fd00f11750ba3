"""Every revoke of one run: evidence gathered, the gate asked, the revoke made and confirmed.

This is the only module that calls ``Issuer.revoke``. For each revoke it

1. fetches a fresh listing of the issuer's keys (shared with other threads asking at the same
   time, see :mod:`rotator.listings`) and the usage of every managed secret of that issuer
   (:mod:`rotator.evidence`), and resolves the issuer's own credential;
2. asks :func:`rotator.gate.judge`;
3. on "revoke": writes an *intent* audit line, sends the DELETE, and confirms with a listing
   requested after the DELETE returned. Only a confirmed revoke is reported as ``revoked`` (or
   ``already-revoked`` when the issuer answered 404); a key still listed is a failed revoke
   (:class:`RevokeNotConfirmed`), whatever the DELETE answered.

A "gone" verdict for an old key is checked against a second listing before it is believed: a
key missing from one listing may be a transient omission.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Callable

from rotator import gate
from rotator.errors import IssuerError, KeyNotFound, RotatorError
from rotator.evidence import Usage
from rotator.gate import Purpose, Request, Verdict
from rotator.interfaces import Clock, Issuer, TwoStageRevoke, UsageEvidence
from rotator.listings import Listings
from rotator.models import KeyInfo, KeyRef, KeyUse, Listing, Secret, Snapshot
from rotator.readahead import ReadAhead
from rotator.redact import redact
from rotator.runtime import ManagedSecret

if TYPE_CHECKING:
    from rotator.runtime import Runtime

log = logging.getLogger("rotator.engine")

#: How long an issue request may still complete at the issuer after it was sent, when the issuer
#: does not say (``Issuer.in_flight_bound``): keys younger than this are not swept as strays.
DEFAULT_IN_FLIGHT = timedelta(minutes=10)


class RevokeNotConfirmed(IssuerError):
    """A revoke was sent but a fresh listing still shows the key: it is not revoked."""

    transient = True


class Revoker:
    """Revokes for one run. ``emit(action, detail, key, result, secret, rotation_id)`` reports
    each intent and result to the engine's event stream (the audit trail)."""

    def __init__(self, runtime: Runtime, listings: Listings, clock: Clock, emit: Callable[..., None],
                 ahead: ReadAhead | None = None) -> None:
        self.runtime = runtime
        self.ahead = ahead
        self.listings = listings
        self.clock = clock
        self._emit = emit
        self._lock = threading.Lock()
        self._usage: dict[str, Usage] = {}
        self._admin: dict[str, KeyRef | None] = {}

    # --- evidence ------------------------------------------------------------------------------

    def usage(self, issuer: Issuer) -> Usage:
        with self._lock:
            found = self._usage.get(issuer.name)
            if found is None:
                mine = [s for s in self.runtime.secrets if s.issuer is issuer]
                found = self._usage[issuer.name] = Usage(mine, self.clock, self.ahead)
            return found

    def wrote(self, secret: ManagedSecret, label: str, snapshot: Snapshot) -> None:
        """The run wrote ``label`` of ``secret``: the usage follows it."""
        self.usage(secret.issuer).wrote(secret.name, label, snapshot)

    def saw(self, secret: ManagedSecret, label: str, snapshot: Snapshot) -> None:
        """The run read ``label`` of ``secret``: evidence the usage may reuse."""
        self.usage(secret.issuer).saw(secret.name, label, snapshot)

    def recent(self, secret: ManagedSecret, label: str) -> Snapshot | None:
        """A read of ``label`` made in this run moments ago (for the evidence), if any."""
        return self.usage(secret.issuer).recent(secret.name, label)

    def admin(self, issuer: Issuer) -> KeyRef | None:
        """The issuer's own credential as a key reference (its id when a managed record knows it)."""
        with self._lock:
            if issuer.name in self._admin:
                return self._admin[issuer.name]
        value = self.runtime.credential_of(issuer.name)
        ref = KeyRef.of(value) if value is not None else None
        with self._lock:
            self._admin[issuer.name] = ref
        return ref

    def forget_admin(self, issuer: Issuer) -> None:
        """The issuer's credential was just rotated (self-rotation): resolve it again."""
        with self._lock:
            self._admin.pop(issuer.name, None)

    def evidence(self, issuer: Issuer, listing: Listing | None, now: datetime,
                 use: KeyUse | None = None) -> gate.Evidence:
        found = self.usage(issuer).evidence(now)
        admin = self.admin(issuer)
        if admin is not None:      # a managed record may know the admin key's id (self-rotation)
            ids = {h.key_id for h in found.holders_for(gate.key_tokens(None, admin))
                   if h.fingerprint == admin.fingerprint and h.key_id}
            if len(ids) == 1:
                admin = replace(admin, key_id=ids.pop())
        bound = getattr(issuer, "in_flight_bound", None) or DEFAULT_IN_FLIGHT
        return gate.Evidence(now=now, listing=listing, unknown=found.unknown, claims=found.claims,
                             holders_for=found.holders_for, admin=admin, admin_issuer=issuer.name,
                             in_flight_since=now - bound, use=use,
                             usage=issuer.usage_policy if isinstance(issuer, UsageEvidence) else None)

    def last_use(self, request: Request, issuer: Issuer) -> KeyUse | None:
        """The old key's last use, where the issuer reports it (usage evidence, I3). Asked only
        for the revoke of an old key whose replacement's deploy time is known."""
        if (request.purpose not in (Purpose.OLD, Purpose.HELD) or request.replaced_at is None
                or request.key is None or not request.key.key_id or not isinstance(issuer, UsageEvidence)):
            return None
        return issuer.last_used(request.key.key_id)

    # --- the one way to revoke -----------------------------------------------------------------

    def revoke(self, request: Request, issuer: Issuer, *, listing: Listing | None = None,
               value: Secret | None = None, rotation_id: str | None = None) -> Verdict:
        """Ask the gate and act on its verdict. Returns the verdict (a ``revoke`` verdict only
        once confirmed); raises :class:`RevokeNotConfirmed` when the key is still listed after
        the revoke, and the issuer's error when the DELETE itself failed."""
        now = self.clock.now()
        use = self.last_use(request, issuer)
        # Any listing of this run will do to find the key (the revoke itself is confirmed by a
        # fresh one); "not listed" is only believed from fresh listings, twice for an old key.
        verdict = self._judge(request, issuer, listing or self.listings.any(issuer), now, value, use)
        if verdict.gone and listing is None:
            verdict = self._judge(request, issuer, self.listings.fresh(issuer), now, value, use)
        if verdict.gone and request.purpose in (Purpose.OLD, Purpose.HELD, Purpose.ROLLBACK):
            verdict = self._judge(request, issuer, self.listings.fresh(issuer), now, value, use)
        if verdict.gone:
            self._emit("already-revoked", f"{_what(request, verdict)}: {verdict.reason}", request.secret, key=request.key,
                       entry=request.entry, rotation_id=rotation_id)
            if request.purpose in (Purpose.OLD, Purpose.HELD) and request.key is not None and request.key.key_id:
                self._note_deactivation(issuer, request.key.key_id)
            return verdict
        if verdict.hold:
            log.info("%s: revoke of %s held: %s", request.secret, _what(request, verdict), verdict.reason)
            return verdict
        slack = issuer.usage_policy.slack if isinstance(issuer, UsageEvidence) else timedelta(0)
        if use is not None and request.replaced_at is not None and use.when is not None \
                and use.when > request.replaced_at + slack:
            self._emit("used-after-replacement", f"{_what(request, verdict)}: {use.describe()}, after its"
                       " replacement was deployed; revoked as the issuer's usage policy allows", request.secret,
                       key=request.key, entry=verdict.entry, rotation_id=rotation_id, result="error")
        verdict = self._revoke(request, issuer, verdict, value, rotation_id)
        if request.purpose is Purpose.COMPROMISED and verdict.key_id and isinstance(issuer, TwoStageRevoke):
            self.purge(request, issuer, verdict.key_id, rotation_id=rotation_id)
        return verdict

    def _judge(self, request: Request, issuer: Issuer, listing: Listing, now: datetime,
               value: Secret | None, use: KeyUse | None = None) -> Verdict:
        if value is not None and request.key is not None:
            request = replace(request, by_value=True)
        return gate.judge(request, self.evidence(issuer, listing, now, use))

    # --- two-stage revokes: deleting what a revoke deactivated ---------------------------------

    def _note_deactivation(self, issuer: Issuer, key_id: str) -> None:
        """An old key found already revoked may have been deactivated by a revoke that stopped
        before it noted the time (a crash between its two steps): revoke it again, which notes
        it, so it is deleted after ``delete_after`` rather than only when room is needed."""
        if not isinstance(issuer, TwoStageRevoke):
            return
        try:
            unnoted = any(k.key_id == key_id and k.deactivated_on is None for k in issuer.dormant_keys())
            if unnoted:
                issuer.revoke(key_id=key_id)
                log.info("%s: deactivated key …%s had no deactivation time noted; noted now", issuer.name,
                         key_id[-4:])
        except RotatorError as exc:      # the note is for the later purge; the revoke itself stands
            log.warning("%s: could not note the deactivation of key …%s: %s", issuer.name, key_id[-4:],
                        redact(str(exc)))

    def dormant(self, issuer: Issuer) -> Listing:
        """The issuer's deactivated keys (two-stage revokes, AWS IAM) as a listing; empty for an
        issuer whose revoke deletes at once."""
        if not isinstance(issuer, TwoStageRevoke):
            return Listing()
        lifetime = getattr(issuer, "key_lifetime", None)
        return Listing(key.entry(issuer.owner, lifetime) for key in issuer.dormant_keys())

    def purge(self, request: Request, issuer: Issuer, key_id: str, *, rotation_id: str | None = None) -> str | None:
        """Delete a deactivated key for good (the second stage of a two-stage revoke), asking the
        gate first with the deactivated keys as the listing: nothing may serve or name it. None
        once deleted (confirmed: no longer among the deactivated keys), else why not."""
        dormant = self.dormant(issuer)
        entry = dormant.by_id(key_id)
        if entry is None:
            return "it is not among the issuer's deactivated keys"
        if request.purpose is not Purpose.COMPROMISED:
            # judged as a purge whatever it is for: a deactivated key is no issue request in flight
            verdict = gate.judge(replace(request, purpose=Purpose.PURGE, key=None, entry=entry),
                                 self.evidence(issuer, dormant, self.clock.now()))
            if not verdict.revoke:
                log.info("%s: deleting deactivated key %s held: %s", request.secret, entry.label(), verdict.reason)
                return verdict.reason
        self._emit("delete", f"{entry.label()} ({request.purpose.value})", request.secret, key=request.key,
                   entry=entry, rotation_id=rotation_id, result="intent")
        try:
            issuer.purge(key_id)
        except KeyNotFound:
            pass
        if self.dormant(issuer).by_id(key_id) is not None or self.listings.fresh(issuer).by_id(key_id) is not None:
            message = f"delete of deactivated key {entry.label()} not confirmed: the issuer still lists it"
            self._emit("delete-failed", message, request.secret, key=request.key, entry=entry,
                       rotation_id=rotation_id, result="error")
            raise RevokeNotConfirmed(message, provider=issuer.name)
        self._emit("deleted", f"{entry.label()} ({request.purpose.value})", request.secret, key=request.key,
                   entry=entry, rotation_id=rotation_id)
        return None

    def _revoke(self, request: Request, issuer: Issuer, verdict: Verdict, value: Secret | None,
                rotation_id: str | None) -> Verdict:
        key, entry = request.key, verdict.entry
        label = _what(request, verdict)
        detail = f"{label} ({request.purpose.value})"
        self._emit("revoke", detail, request.secret, key=key, entry=entry, rotation_id=rotation_id, result="intent")
        before = self.listings.at_hand(issuer)
        answer = "200"
        try:
            if verdict.key_id is not None:
                issuer.revoke(key_id=verdict.key_id)
            else:
                assert value is not None
                issuer.revoke(value=value)
        except KeyNotFound:
            answer = "404"
        except RotatorError as exc:
            answer = type(exc).__name__
            log.warning("%s: revoke of %s: %s; checking the listing", request.secret, label, redact(str(exc)))
        confirm = self.listings.after(issuer, self.listings.ticket(issuer))
        if _still_listed(request, verdict, confirm, before):
            message = (f"revoke of {label} not confirmed: a fresh listing still shows it"
                       f" (the DELETE answered {answer})")
            self._emit("revoke-failed", message, request.secret, key=key, entry=entry, rotation_id=rotation_id,
                       result="error")
            raise RevokeNotConfirmed(message, provider=issuer.name)
        action = "already-revoked" if answer == "404" else "revoked"
        self._emit(action, detail, request.secret, key=key, entry=entry, rotation_id=rotation_id)
        return verdict

    def revoke_named(self, secret: str, issuer: Issuer, name: str, purpose: Purpose, *,
                     claim: str | None = None, listing: Listing | None = None) -> list[tuple[KeyInfo, Verdict]]:
        """Revoke every listed key called ``name`` (a rotation's unique name)."""
        listing = listing if listing is not None else self.listings.fresh(issuer)
        done = []
        for entry in listing.named(name):
            verdict = self.revoke(Request(secret, purpose, entry=entry, claim=claim), issuer,
                                  listing=listing, rotation_id=claim)
            done.append((entry, verdict))
        return done


def _still_listed(request: Request, verdict: Verdict, confirm: Listing, before: Listing | None) -> bool:
    if not confirm.usable:
        return True                     # no proof either way: not confirmed
    if verdict.key_id is not None:
        return confirm.by_id(verdict.key_id) is not None
    assert request.key is not None      # by value: one fewer key can be it
    now_count = len(gate.matching(request.key, confirm))
    then_count = len(gate.matching(request.key, before)) if before is not None else now_count + 1
    return now_count >= then_count


def _label(entry: KeyInfo | None) -> str:
    return entry.label() if entry is not None else "the key"


def _what(request: Request, verdict: Verdict) -> str:
    if verdict.entry is not None:
        return _label(verdict.entry)
    if request.key is not None:
        return request.key.label()
    return _label(request.entry)
