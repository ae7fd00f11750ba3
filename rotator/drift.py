"""Drift between a secret's primary and its other targets: found by fingerprint, repaired by
pushing the primary's state, never by guessing.

Used by ``rotator sync`` (report, ``--repair``), ``rotator verify`` and the daemon. A target that
cannot be read or parsed is reported and left alone: a repair never overwrites what it could not
read, and never pushes a key the issuer refuses over one it might accept.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rotator.errors import BackendUnavailable, CorruptPayload, RotatorError
from rotator.models import Phase, Snapshot
from rotator.readahead import ReadAhead
from rotator.redact import redact
from rotator.runtime import Bound, ManagedSecret

IN_FLIGHT = (Phase.CLAIMED, Phase.STAGED, Phase.ROLLING_BACK)


@dataclass(frozen=True)
class TargetDrift:
    target: str
    state: str          # ok | missing | different | stale-previous | corrupt | unreachable | error
    detail: str = ""

    @property
    def repairable(self) -> bool:
        return self.state in ("missing", "different", "stale-previous")


@dataclass
class DriftReport:
    secret: str
    phase: str | None
    primary: str
    primary_state: str = "ok"          # ok | unmanaged | changed-by-hand | empty | corrupt | unreachable
    targets: list[TargetDrift] = field(default_factory=list)
    note: str = ""
    repaired: list[str] = field(default_factory=list)
    repair_errors: dict[str, str] = field(default_factory=dict)

    @property
    def drifted(self) -> list[TargetDrift]:
        return [t for t in self.targets if t.state != "ok" and t.target not in self.repaired]

    @property
    def healthy(self) -> bool:
        return self.primary_state == "ok" and not self.drifted


def compare(secret: ManagedSecret, primary: Snapshot, others: dict[str, Snapshot | Exception]) -> DriftReport:
    """Classify every secondary against the primary (pure: takes reads, does none)."""
    record = primary.record
    report = DriftReport(secret.name, record.phase.value if record else None, secret.primary.label)
    if primary.current is None:
        report.primary_state = "empty"
    elif record is None:
        report.primary_state = "unmanaged"
    elif record.current is None or record.current.fingerprint != primary.current.fingerprint:
        report.primary_state = "changed-by-hand"
    if record is not None and record.phase in IN_FLIGHT:
        report.note = f"rotation {record.rotation_id} in flight ({record.phase.value}): secondaries are expected to differ"
    grace = record is not None and record.phase is Phase.GRACE
    for label, read in others.items():
        report.targets.append(_classify(label, primary, read, grace))
    return report


def _classify(label: str, primary: Snapshot, read: Snapshot | Exception, grace: bool) -> TargetDrift:
    if isinstance(read, CorruptPayload):
        return TargetDrift(label, "corrupt", redact(str(read)))
    if isinstance(read, BackendUnavailable):
        return TargetDrift(label, "unreachable", redact(str(read)))
    if isinstance(read, Exception):
        return TargetDrift(label, "error", redact(str(read)))
    if read.current is None:
        return TargetDrift(label, "missing", "no key")
    want = primary.current.fingerprint if primary.current else None
    if read.current.fingerprint != want:
        return TargetDrift(label, "different", f"holds …{read.current.last4}, primary holds …{primary.current.last4 if primary.current else '-'}")
    if grace and primary.previous is not None and (read.previous is None or read.previous != primary.previous):
        return TargetDrift(label, "stale-previous", "previous key differs during the grace window")
    return TargetDrift(label, "ok")


def check(secret: ManagedSecret, ahead: ReadAhead | None = None) -> tuple[Snapshot, DriftReport]:
    """Read every target of ``secret`` and compare. The primary must be readable.

    ``ahead``: a pass over many secrets (the daemon's reconcile, ``sync``, ``verify``) reads through
    one :class:`ReadAhead`, so targets on a batch-reading backend cost one request per 20."""
    def read(bound: Bound) -> Snapshot:
        return ahead.read_target(secret, bound) if ahead else bound.backend.read(bound.target)

    primary = read(secret.primary)
    others: dict[str, Snapshot | Exception] = {}
    for bound in secret.secondaries:
        try:
            others[bound.label] = read(bound)
        except RotatorError as exc:
            others[bound.label] = exc
    return primary, compare(secret, primary, others)


def repair(secret: ManagedSecret, primary: Snapshot, report: DriftReport) -> DriftReport:
    """Push the primary's current (and, in grace, previous) key to the drifted targets.

    Refuses when a rotation is in flight, when the primary itself is not in the state rotator
    recorded, or when the issuer does not accept the primary's key (pushing it would destroy a
    working key elsewhere). Corrupt or unreachable targets are reported, never overwritten.
    """
    record = primary.record
    todo = [t for t in report.targets if t.repairable]
    if not todo:
        return report
    if report.note or report.primary_state != "ok" or record is None or primary.current is None:
        report.repair_errors = {t.target: "not repaired: " + (report.note or f"primary is {report.primary_state}")
                                for t in todo}
        return report
    if not secret.issuer.verify(primary.current):
        report.repair_errors = {t.target: "not repaired: the issuer refuses the primary's key" for t in todo}
        return report
    previous = primary.previous if record.phase is Phase.GRACE else None
    for item in todo:
        bound: Bound = secret.bound(item.target)
        try:
            bound.backend.deploy(bound.target, primary.current, previous, record.current)
            report.repaired.append(item.target)
        except RotatorError as exc:
            report.repair_errors[item.target] = redact(str(exc))
    return report
