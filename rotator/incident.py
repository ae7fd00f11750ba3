"""``rotator revoke --compromised``: the incident procedure, done in one command.

Issue a replacement, deploy it everywhere, verify it, and revoke the compromised key at once —
no grace window. It is the one operation allowed to break I1 on purpose: if the replacement
cannot be deployed everywhere, the compromised key is revoked anyway only with ``force``, and
the report says exactly which target holds what.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import timedelta

from rotator.engine import Engine, Event, Outcome, RunShared
from rotator.errors import RotationError, RotatorError
from rotator.gate import Purpose, Request
from rotator.models import KeyRef, Phase, Secret
from rotator.redact import redact
from rotator.runtime import ManagedSecret

IN_FLIGHT = (Phase.CLAIMED, Phase.STAGED, Phase.ROLLING_BACK)


@dataclass
class IncidentReport:
    secret: str
    compromised: str                    # label of the compromised key (last 4 + id)
    outcome: Outcome
    revoked: bool = False
    forced: bool = False
    holdings: dict[str, str] = field(default_factory=dict)

    @property
    def contained(self) -> bool:
        """The compromised key is dead and no target holds it any more."""
        return self.revoked and not any(h.startswith("COMPROMISED") for h in self.holdings.values())


def revoke_compromised(engine: Engine, secret: ManagedSecret, *, force: bool = False) -> IncidentReport:
    snap = secret.primary.backend.read(secret.primary.target)
    bad = snap.current
    if bad is None:
        raise RotationError(f"{secret.name}: the primary holds no key; nothing to revoke")
    record = snap.record
    known = record.current if record and record.current and record.current.fingerprint == bad.fingerprint else None
    label = known.label() if known else f"…{bad.last4}"
    ref = known or KeyRef.of(bad)
    _alert(engine, secret, "compromised", f"key {label} reported compromised: replacing it and revoking it now", ref)

    urgent = replace(secret, policy=replace(secret.policy, grace=timedelta(0)))
    in_flight = record is not None and record.phase in IN_FLIGHT
    shared = RunShared(engine)
    outcome = engine.run_secret(urgent, force=not in_flight, shared=shared, compromised=bad.fingerprint)

    report = IncidentReport(secret.name, label, outcome, holdings=_holdings(secret, bad))
    report.revoked = not _accepted(secret, bad)
    if not report.revoked and force:
        report.revoked = _revoke(shared, secret, bad, ref)
        report.forced = report.revoked
        _alert(engine, secret, "revoked-compromised",
               f"key {label} revoked by --force although some targets still hold it", ref)
    elif report.revoked:
        _alert(engine, secret, "revoked-compromised", f"key {label} revoked", ref)
    else:
        _alert(engine, secret, "compromised-still-valid",
               f"key {label} is STILL VALID: the replacement did not reach every target; rerun, or use --force",
               ref, result="error")
    return report


def _holdings(secret: ManagedSecret, bad: Secret) -> dict[str, str]:
    out = {}
    for bound in secret.targets:
        try:
            current = bound.backend.read(bound.target).current
        except RotatorError as exc:
            out[bound.label] = f"unreadable: {redact(str(exc))}"
            continue
        if current is None:
            out[bound.label] = "no key"
        elif current == bad:
            out[bound.label] = f"COMPROMISED key …{bad.last4}"
        else:
            out[bound.label] = f"new key …{current.last4}"
    return out


def _accepted(secret: ManagedSecret, value: Secret) -> bool:
    try:
        return secret.issuer.verify(value)
    except RotatorError:
        return True       # unknown: assume it still works, so the report does not claim success


def _revoke(shared: RunShared, secret: ManagedSecret, value: Secret, ref: KeyRef) -> bool:
    """``--force``: revoke the compromised key even though some target still holds it — through
    the gate all the same (it still refuses the admin key and a listing it cannot trust)."""
    verdict = shared.revoker.revoke(Request(secret.name, Purpose.COMPROMISED, key=ref), secret.issuer, value=value)
    return verdict.revoke or verdict.gone


def _alert(engine: Engine, secret: ManagedSecret, action: str, detail: str, key: KeyRef,
           result: str = "alert") -> None:
    engine.emit(Event(at=engine.clock.now(), secret=secret.name, action=action, detail=detail, result=result,
                      runner=engine.me, key=key.label(), fingerprint=key.fingerprint, key_id=key.key_id,
                      last4=key.last4))
