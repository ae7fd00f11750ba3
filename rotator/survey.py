"""The reads behind ``plan``, ``status``, ``rotate``'s summary and the daemon's observation: each
secret's primary, then each issuer's key listing once (after the reads, so a key promoted before
a read is in the listing), then the pure assessments of :mod:`rotator.planner`.

One secret never stops the others (I6): any exception while reading or assessing one secret
becomes that secret's ``unreadable`` or ``error`` assessment, with a redacted message. A listing
that fails is reported as a problem of its issuer; no health is inferred from it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Iterable, Mapping

from rotator import planner
from rotator.errors import RotatorError
from rotator.machine import view_of
from rotator.models import Listing, Snapshot
from rotator.planner import Assessment, CredentialAssessment, SharedKey
from rotator.readahead import ReadAhead
from rotator.redact import redact
from rotator.runtime import ManagedSecret, Runtime

log = logging.getLogger("rotator.survey")


def describe(exc: BaseException) -> str:
    """An exception as one redacted line: rotator errors by their message, others by type too."""
    text = str(exc)
    if not isinstance(exc, RotatorError):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return redact(text) or type(exc).__name__


@dataclass
class IssuerView:
    """One issuer's listing, fetched once (None when it failed), and what was wrong with it."""

    name: str
    listing: Listing | None
    problem: str | None = None       # the listing failed, or contradicts itself

    @property
    def line(self) -> str | None:
        return f"issuer {self.name}: {self.problem}" if self.problem else None


@dataclass
class SecretView:
    secret: ManagedSecret
    snapshot: Snapshot | None        # None: the primary could not be read
    assessment: Assessment


@dataclass
class Survey:
    now: datetime
    secrets: list[SecretView] = field(default_factory=list)
    issuers: dict[str, IssuerView] = field(default_factory=dict)
    credentials: list[CredentialAssessment] = field(default_factory=list)
    shared: list[SharedKey] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        return [line for view in self.issuers.values() if (line := view.line)]

    @property
    def unhealthy(self) -> int:
        """Secrets and credentials that are not healthy, plus issuers whose listing failed."""
        return (sum(not v.assessment.healthy for v in self.secrets)
                + sum(not c.healthy for c in self.credentials) + len(self.problems))


# --- the pieces -----------------------------------------------------------------------------------

def read_primaries(secrets: Iterable[ManagedSecret], ahead: ReadAhead | None) -> dict[str, Snapshot | Exception]:
    """Each secret's primary (batched where the backend can); an exception stands for a failed read."""
    reads: dict[str, Snapshot | Exception] = {}
    for secret in secrets:
        try:
            reads[secret.name] = (ahead.read(secret) if ahead is not None
                                  else secret.primary.backend.read(secret.primary.target))
        except Exception as exc:  # noqa: BLE001 - one secret never stops the others (I6)
            reads[secret.name] = exc
    return reads


def list_issuers(runtime: Runtime, names: Iterable[str]) -> dict[str, IssuerView]:
    """One listing per issuer. A failure, or a listing that contradicts itself, is a problem."""
    views: dict[str, IssuerView] = {}
    for name in dict.fromkeys(names):
        issuer = runtime.issuers[name]
        try:
            listing = issuer.list_keys()
        except Exception as exc:  # noqa: BLE001 - said in a line; no health is invented from it
            views[name] = IssuerView(name, None, f"cannot list its keys: {describe(exc)}")
            continue
        if not isinstance(listing, Listing):
            listing = Listing(listing)
        problem = None
        if listing.problems:
            problem = "its listing contradicts itself: " + redact("; ".join(listing.problems))
        views[name] = IssuerView(name, listing, problem)
    return views


def assess_secret(secret: ManagedSecret, read: Snapshot | Exception | None, listing: Listing | None,
                  now: datetime, check_interval) -> Assessment:
    """The planner's assessment of one secret; never raises."""
    if read is None:
        return planner.failed("unreadable", "its primary was not read")
    if isinstance(read, BaseException):
        return planner.failed("unreadable", describe(read))
    try:
        return planner.assess(secret.policy, read.record, view_of(read), now, listing=listing,
                              check_interval=check_interval)
    except Exception as exc:  # noqa: BLE001 - a corrupt record, a date out of range: this secret only
        log.error("%s: cannot assess: %s", secret.name, describe(exc))
        record = read.record if isinstance(read, Snapshot) else None
        try:
            return planner.failed("error", f"cannot assess: {describe(exc)}", record)
        except Exception:  # noqa: BLE001 - even the record cannot be shown
            return planner.failed("error", f"cannot assess: {describe(exc)}")


def managers(runtime: Runtime) -> dict[str, str]:
    """Issuer name -> the managed secret that holds (and rotates) its credential."""
    found: dict[str, str] = {}
    for secret in runtime.secrets:
        for issuer in secret.signs_in:
            found.setdefault(issuer.name, secret.name)
    return found


def credentials(runtime: Runtime, issuers: Mapping[str, IssuerView], now: datetime) -> list[CredentialAssessment]:
    """One assessment per issuer in ``issuers`` that signs in with a credential."""
    lead_time = runtime.settings.rotator.lead_time
    managed = managers(runtime)
    out = []
    for name, view in issuers.items():
        if getattr(runtime.issuers[name], "credential", None) is None:
            continue
        try:
            value = runtime.credential_of(name)
            last4 = value.last4 if value is not None else None
            problem = None if value is not None else f"issuers.{name}: its admin key reference does not resolve"
            if last4 is not None and view.listing is None:
                problem = view.problem
            out.append(planner.assess_credential(name, last4, view.listing, now, lead_time=lead_time,
                                                 managed_as=managed.get(name), problem=problem))
        except Exception as exc:  # noqa: BLE001 - one issuer never stops the others
            out.append(CredentialAssessment(issuer=name, health="unknown", reason=f"cannot assess: {describe(exc)}",
                                            managed_as=managed.get(name)))
    return out


def shared(reads: Mapping[str, Snapshot | Exception]) -> list[SharedKey]:
    return planner.shared_keys({name: read for name, read in reads.items() if isinstance(read, Snapshot)})


# --- all of it -----------------------------------------------------------------------------------------

def survey(runtime: Runtime, names: list[str] | None, now: datetime) -> Survey:
    """Everything ``status`` and ``plan`` show for the secrets ``names`` (all by default) and their
    issuers (every issuer when no secret is named). Reads every primary (for keys shared with a
    secret not named too), then lists each issuer once."""
    chosen = runtime.select(names)
    ahead = ReadAhead(runtime.secrets, runtime.clock)
    reads = read_primaries(runtime.secrets, ahead)
    wanted = [s.issuer.name for s in chosen] if names else list(runtime.issuers)
    issuers = list_issuers(runtime, wanted)
    check_interval = runtime.settings.rotator.check_interval
    result = Survey(now=now, issuers=issuers)
    for secret in chosen:
        view = issuers.get(secret.issuer.name)
        result.secrets.append(SecretView(secret, _snapshot(reads.get(secret.name)),
                                         assess_secret(secret, reads.get(secret.name),
                                                       view.listing if view else None, now, check_interval)))
    result.credentials = credentials(runtime, issuers, now)
    chosen_names = {s.name for s in chosen}
    result.shared = [s for s in shared(reads) if chosen_names & set(s.secrets)]
    return result


def _snapshot(read: Snapshot | Exception | None) -> Snapshot | None:
    return read if isinstance(read, Snapshot) else None
