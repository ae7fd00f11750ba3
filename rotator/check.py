"""``rotator check``: is this configuration ready to run? Read-only, for an init container, a
pre-deploy pipeline step and a person's first run (docs/check.md).

It loads and validates the configuration, resolves every credential reference, then reaches
every issuer and store with read-only calls and prints one row per issuer, store (a secret's
target in a backend) and secret:

* **issuer** — signs in with the admin key (:class:`rotator.interfaces.IssuerAccessCheck`),
  lists the keys (a listing that contradicts itself is flagged), the admin key's expiry (the same
  assessment as ``status``) and the key lifetime rotator plans with;
* **store** — reads the target (exists? parses? holds a key and, on a primary, the record?), then
  asks the backend what a write needs without writing (:class:`rotator.interfaces.BackendAccessCheck`:
  compare-and-swap support on a primary, write permission where the store can say so);
* **secret** — the primary's phase and key, drift between its targets (:mod:`rotator.drift`) and
  the next action (:mod:`rotator.planner`, as ``plan`` shows it).

Every check runs in parallel on daemon threads, each bounded by its provider's own timeouts, and
the whole check by ``--timeout``: a store that hangs is reported as such and never holds the
command (nor the process's exit) past it.

Exit status: 0 everything passed (warnings allowed); 1 something failed (unreachable, refused,
permission denied, a missing primary that may not be created, ...); 2 a configuration, credential
or usage error. Nothing printed contains a key value: keys are shown as their last 4 characters
and id.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from collections.abc import Mapping
from concurrent.futures import Future
from concurrent.futures import wait as wait_for
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Iterator

from rotator.errors import BackendUnavailable, ConfigError, UsageError
from rotator.interfaces import Finding
from rotator.redact import redact
from rotator.timeutil import format_instant, parse_duration

log = logging.getLogger("rotator.check")

DEFAULT_TIMEOUT = "60s"
MAX_THREADS = 16
#: Healths of a secret (rotator.planner) that fail the check: a run cannot help, or a person must.
FAIL_HEALTHS = frozenset({"error", "unreadable", "expired", "rejected", "blocked"})
#: Healths worth a warning: rotator will act, or someone chose this (a pause).
WARN_HEALTHS = frozenset({"paused", "expiring", "failing", "stale-claim", "held"})
CREDENTIAL_RESULT = {"managed": "ok", "healthy": "ok", "expiring": "warn", "unknown": "warn",
                     "expired": "fail", "unreadable": "fail"}

DESCRIPTION = """\
Is the configuration ready to run? Loads and validates it, resolves every credential reference,
then reaches every issuer and store with read-only calls: signs in to each issuer and lists its
keys, reads every target of every secret, and asks each store whether it can compare-and-swap
(primaries) and whether rotator may write, where the store can tell without writing. Prints one
row per issuer, store and secret. Changes nothing: no key is issued or revoked, nothing is written."""

EXIT = """exit status:
  0  every check passed (warnings allowed)
  1  something failed: an issuer or store unreachable or refusing rotator's credential, no write
     permission, no compare-and-swap on a primary, a missing primary that may not be created,
     an expired or rejected key, a check that did not answer within --timeout
  2  configuration, credential or usage error (an unset variable, an unreadable file, ...)"""


# --- the command line ---------------------------------------------------------------------------

def add_parser(sub: Any, output_option: Callable[[argparse.ArgumentParser], None]) -> argparse.ArgumentParser:
    """Register ``rotator check`` on the subparsers ``sub`` (``output_option`` adds ``-o``)."""
    parser = sub.add_parser(
        "check", help="is the configuration ready? reach every issuer and store read-only; exit 1 if anything fails",
        description=DESCRIPTION, epilog=EXIT, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("secrets", nargs="*", metavar="SECRET",
                        help="only these secrets (with their issuers and stores)")
    parser.add_argument("--timeout", default=DEFAULT_TIMEOUT, metavar="DURATION",
                        help="give up on a check still running after this long, e.g. 30s, 2m (default 60s);"
                             " each provider also keeps its own timeouts and retries")
    output_option(parser)
    return parser


def cmd_check(args: argparse.Namespace) -> int:
    timeout = _timeout(getattr(args, "timeout", None) or DEFAULT_TIMEOUT)
    runtime = _runtime(args)
    try:
        report = run_check(runtime, getattr(args, "secrets", None) or None, timeout=timeout)
    finally:
        runtime.close()
    if getattr(args, "output", "text") == "json":
        _output()[1](report.to_json())
    else:
        print(render(report))
    return report.exit_code


def _timeout(text: Any) -> float:
    try:
        seconds = parse_duration(text).total_seconds()
    except ValueError as exc:
        raise UsageError(f"--timeout: {exc}") from None
    if seconds <= 0:
        raise UsageError("--timeout: must be longer than 0s")
    return seconds


def _runtime(args: argparse.Namespace) -> Any:
    """The Runtime, built as every other command builds it."""
    try:
        from rotator.cli import _runtime as build
    except ImportError:                         # pragma: no cover - the CLI moved it
        from rotator import config
        from rotator.runtime import Runtime

        return Runtime(config.load(getattr(args, "config", None)))
    return build(args)


def _output() -> tuple[Callable[..., str], Callable[[Any], None]]:
    """The shared table and JSON printers (rotator.output; rotator.cli before it existed)."""
    try:
        from rotator.output import print_json, table
    except ImportError:                         # pragma: no cover - older layout
        from rotator.cli import print_json, table
    return table, print_json


# --- the report ----------------------------------------------------------------------------------

def worst(findings: list[Finding]) -> str:
    """A row's result: ``fail``, ``warn`` or ``ok`` (``unknown`` alone does not fail a row)."""
    statuses = {f.status for f in findings}
    for status in ("fail", "warn"):
        if status in statuses:
            return status
    return "ok"


def _finding_json(f: Finding) -> dict[str, str]:
    return {"check": f.check, "status": f.status, "detail": redact(f.detail)}


class _Findings:
    """What a row found: its result is the worst of its findings."""

    findings: list[Finding]

    @property
    def result(self) -> str:
        return worst(self.findings)

    def find(self, check: str) -> Finding | None:
        return next((f for f in self.findings if f.check == check), None)


@dataclass
class IssuerRow(_Findings):
    name: str
    type: str
    findings: list[Finding] = field(default_factory=list)
    keys: int | None = None
    owner: str | None = None
    credential: Any = None              # rotator.planner.CredentialAssessment
    listing: Any = None                 # rotator.models.Listing (None: not listed)

    def to_json(self) -> dict[str, Any]:
        c = self.credential
        return {
            "issuer": self.name, "type": self.type, "result": self.result, "keys": self.keys, "owner": self.owner,
            "admin_key": None if c is None else {
                "health": c.health, "key": c.key, "last4": c.last4, "key_id": c.key_id,
                "expires": format_instant(c.expires_on), "managed_as": c.managed_as, "reason": redact(c.reason)},
            "key_lifetime": _detail(self.find("key lifetime")),
            "findings": [_finding_json(f) for f in self.findings],
        }


@dataclass
class StoreRow(_Findings):
    backend: str
    type: str
    secret: str | None                  # None: a backend no checked secret uses
    target: str | None
    role: str                           # primary | secondary | unused
    findings: list[Finding] = field(default_factory=list)
    read: Any = None                    # Snapshot | Exception | None (not read)

    def to_json(self) -> dict[str, Any]:
        snapshot = self.read if _is_snapshot(self.read) else None
        return {
            "backend": self.backend, "type": self.type, "secret": self.secret, "target": self.target,
            "role": self.role, "result": self.result,
            "exists": None if snapshot is None else snapshot.exists,
            "key": None if snapshot is None or snapshot.current is None else f"…{snapshot.current.last4}",
            "record": None if snapshot is None else snapshot.record is not None,
            "findings": [_finding_json(f) for f in self.findings],
        }


@dataclass
class SecretRow(_Findings):
    name: str
    issuer: str
    targets: list[str]
    assessment: Any = None              # rotator.planner.Assessment
    drift: Any = None                   # rotator.drift.DriftReport (None: the primary was not read)
    findings: list[Finding] = field(default_factory=list)
    key: str | None = None

    def to_json(self) -> dict[str, Any]:
        a = self.assessment
        return {
            "secret": self.name, "issuer": self.issuer, "targets": self.targets, "result": self.result,
            "health": a.health if a else None, "phase": a.phase if a else None, "key": self.key,
            "key_id": a.key_id if a else None, "last4": a.last4 if a else None,
            "expires": format_instant(a.expires_on) if a else None,
            "next": redact(a.action) if a else None, "at": format_instant(a.at) if a else None,
            "drift": None if self.drift is None else [
                {"target": t.target, "state": t.state, "detail": redact(t.detail)} for t in self.drift.targets],
            "findings": [_finding_json(f) for f in self.findings],
        }


@dataclass
class CheckReport:
    issuers: list[IssuerRow] = field(default_factory=list)
    stores: list[StoreRow] = field(default_factory=list)
    secrets: list[SecretRow] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    config_errors: list[str] = field(default_factory=list)
    timeout: float = 0.0
    seconds: float = 0.0
    now: datetime | None = None

    def rows(self) -> Iterator[tuple[str, Any]]:
        for row in self.issuers:
            yield f"issuer {row.name}", row
        for row in self.stores:
            where = f"store {row.backend}" + (f" {row.target} ({row.secret}, {row.role})" if row.target else "")
            yield where, row
        for row in self.secrets:
            yield f"secret {row.name}", row

    def lines(self, status: str) -> list[str]:
        return [redact(f"{where}: {f.check}: {f.detail}") for where, row in self.rows()
                for f in row.findings if f.status == status]

    @property
    def failed(self) -> int:
        return sum(row.result == "fail" for _, row in self.rows())

    @property
    def ok(self) -> bool:
        return not self.failed and not self.config_errors

    @property
    def exit_code(self) -> int:
        return 2 if self.config_errors else 1 if self.failed else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "issuers": [r.to_json() for r in self.issuers],
            "backends": [r.to_json() for r in self.stores],
            "secrets": [r.to_json() for r in self.secrets],
            "warnings": [redact(w) for w in self.warnings],
            "problems": self.lines("fail"),
            "config_errors": [redact(e) for e in self.config_errors],
            "ok": self.ok,
        }


# --- running the checks --------------------------------------------------------------------------

class _TimedOut(Exception):
    """A check that had not answered when the deadline came."""


def _parallel(tasks: Mapping[Any, Callable[[], Any]], deadline: float, threads: int) -> dict[Any, Any]:
    """Run every task on daemon threads; each key maps to its result, the exception it raised, or
    :class:`_TimedOut` when it had not finished by ``deadline`` (monotonic). A hung task is left
    behind on its daemon thread: neither this call nor the process's exit waits for it."""
    futures: dict[Any, Future[Any]] = {key: Future() for key in tasks}
    pending = list(tasks.items())
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if not pending:
                    return
                key, task = pending.pop(0)
            future = futures[key]
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(task())
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
                future.set_exception(exc)

    for number in range(min(threads, len(tasks))):
        threading.Thread(target=worker, name=f"rotator-check-{number}", daemon=True).start()
    wait_for(list(futures.values()), timeout=max(0.0, deadline - time.monotonic()))
    out: dict[Any, Any] = {}
    for key, future in futures.items():
        if future.done():
            exc = future.exception()
            out[key] = exc if exc is not None else future.result()
        else:
            future.cancel()                     # not started yet: never starts
            out[key] = _TimedOut()
    return out


def _describe(exc: BaseException) -> str:
    from rotator.survey import describe

    return describe(exc)


def _is_snapshot(value: Any) -> bool:
    from rotator.models import Snapshot

    return isinstance(value, Snapshot)


def _detail(finding: Finding | None) -> str | None:
    return None if finding is None else finding.detail


def run_check(runtime: Any, names: list[str] | None = None, *, timeout: float = 60.0) -> CheckReport:
    """Every check of ``rotator check`` against ``runtime``; returns the report (prints nothing).

    Raises ConfigError before any network call when a credential reference (an environment
    variable, a file) does not resolve; a reference that turns out broken during the checks (a
    backend's default token variable) is reported in ``config_errors`` (exit 2)."""
    started = time.monotonic()
    chosen = runtime.select(names)
    _resolve_references(runtime)
    now = runtime.clock.now()
    report = CheckReport(timeout=timeout, warnings=list(getattr(runtime, "warnings", None) or []), now=now)
    insecure = _insecure_http(runtime)
    for kind, lines in insecure.items():        # the runtime may warn about it already
        for name, line in lines.items():
            if not any("insecure_http" in w and f"{kind}.{name}" in w for w in report.warnings):
                report.warnings.append(line)
    issuer_names = list(dict.fromkeys(s.issuer.name for s in chosen)) if names else list(runtime.issuers)
    threads = max(1, min(MAX_THREADS, max(runtime.settings.rotator.workers, 8)))

    # 1. sign in to every issuer, read every target and ask its backend, all at once
    first: dict[Any, Callable[[], Any]] = {}
    for name in issuer_names:
        issuer = runtime.issuers[name]
        if callable(getattr(issuer, "check_access", None)):
            first[("issuer", name)] = issuer.check_access
    for secret in chosen:
        for index, bound in enumerate(secret.targets):
            first[("target", secret.name, index)] = _target_task(bound, primary=index == 0)
    done = _parallel(first, started + timeout, threads)

    # 2. list the keys of every issuer that signed in, after the reads (a key promoted before a
    #    read is in the listing, as status does it); a store that hung does not eat its time
    issuers: dict[str, IssuerRow] = {}
    second: dict[Any, Callable[[], Any]] = {}
    for name in issuer_names:
        row = issuers[name] = IssuerRow(name, runtime.settings.issuers[name].type)
        if ("issuer", name) in first:
            row.findings.extend(_findings_of(done[("issuer", name)], "sign-in", report, timeout))
        if (sign_in := row.find("sign-in")) is not None and sign_in.status == "fail" or row.find("config"):
            continue
        second[("listing", name)] = _listing_task(runtime, name, now)
    listed = _parallel(second, time.monotonic() + timeout, threads)
    for name, row in issuers.items():
        if ("listing", name) in listed:
            _add_listing(row, listed[("listing", name)], report, timeout)
        if name in insecure.get("issuers", {}):
            row.findings.append(Finding("transport", "warn", insecure["issuers"][name]))
    report.issuers = list(issuers.values())

    # 3. one row per store, one per secret
    used: set[str] = set()
    for secret in chosen:
        reads: list[Any] = []
        for index, bound in enumerate(secret.targets):
            used.add(bound.backend.name)
            row = StoreRow(bound.backend.name, runtime.settings.backends[bound.backend.name].type, secret.name,
                           bound.target.label, "primary" if index == 0 else "secondary")
            result = done[("target", secret.name, index)]
            if isinstance(result, tuple):
                row.read, found = result
                row.findings.extend(found)
            else:
                row.read = result
                row.findings.extend(_findings_of(result, "read", report, timeout))
            if bound.backend.name in insecure.get("backends", {}):
                row.findings.append(Finding("transport", "warn", insecure["backends"][bound.backend.name]))
            report.stores.append(row)
            reads.append(row.read)
        view = issuers.get(secret.issuer.name)
        report.secrets.append(_secret_row(runtime, secret, reads, view.listing if view else None, now, timeout))
    if not names:
        for name in runtime.backends:
            if name not in used:
                row = StoreRow(name, runtime.settings.backends[name].type, None, None, "unused",
                               [Finding("use", "ok", "no managed secret uses this backend")])
                if name in insecure.get("backends", {}):
                    row.findings.append(Finding("transport", "warn", insecure["backends"][name]))
                report.stores.append(row)
    report.seconds = time.monotonic() - started
    return report


def _findings_of(result: Any, check: str, report: CheckReport, timeout: float) -> list[Finding]:
    """What a task returned, or why it returned nothing, as findings."""
    if isinstance(result, _TimedOut):
        return [Finding(check, "fail", f"no answer within {timeout:g}s (--timeout): unreachable or hanging;"
                                       " check the address and the network path")]
    if isinstance(result, ConfigError):
        if redact(str(result)) not in report.config_errors:
            report.config_errors.append(redact(str(result)))
        return [Finding("config", "fail", str(result))]
    if isinstance(result, BaseException):
        return [Finding(check, "fail", _describe(result))]
    return list(result or [])


# --- stores ----------------------------------------------------------------------------------------

def _target_task(bound: Any, *, primary: bool) -> Callable[[], tuple[Any, list[Finding]]]:
    def task() -> tuple[Any, list[Finding]]:
        try:
            snapshot = bound.backend.read(bound.target)
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - shown as the failed read
            return exc, [Finding("read", "fail", _describe(exc))]
        layout = getattr(bound.target, "layout", None)     # a key with parts: every field it occupies
        where = layout.describe() if layout is not None else f"field '{bound.target.field}'"
        findings = [_read_finding(snapshot, primary=primary, where=where)]
        probe = getattr(bound.backend, "check_access", None)
        if callable(probe):
            try:
                findings.extend(probe(bound.target, primary=primary, exists=snapshot.exists))
            except ConfigError:
                raise
            except Exception as exc:  # noqa: BLE001 - a probe that broke is a failed check
                findings.append(Finding("write", "fail", f"cannot check: {_describe(exc)}"))
        else:
            findings.append(Finding("write", "unknown", "read only checked: this backend cannot tell rotator"
                                                        " whether it may write without writing"))
        if primary and not any(f.check == "cas" for f in findings):
            holds = bound.backend.capabilities.holds_record
            findings.append(Finding("cas", "ok" if holds else "fail",
                                    "the backend declares compare-and-swap (holds_record)" if holds else
                                    "the backend has no compare-and-swap: it cannot be a primary"))
        return snapshot, findings

    return task


def _read_finding(snapshot: Any, *, primary: bool, where: str) -> Finding:
    if not snapshot.exists:
        return Finding("read", "ok", "does not exist yet: the first run writes it" if primary
                       else "does not exist yet: the next run deploys the key here")
    if snapshot.current is None:
        return Finding("read", "warn", f"exists but holds no key in its {where}")
    key = f"…{snapshot.current.last4}"
    record = snapshot.record
    if not primary:
        return Finding("read", "ok", f"holds key {key}")
    if record is None:
        return Finding("read", "ok", f"holds key {key}; no rotation record yet: the next run adopts the key")
    if record.current is not None and record.current.key_id:
        key = record.current.label()
    return Finding("read", "ok", f"holds key {key} and the rotation record (phase {record.phase.value})")


# --- issuers ---------------------------------------------------------------------------------------

def _listing_task(runtime: Any, name: str, now: datetime) -> Callable[[], tuple[Any, list[Any]]]:
    def task() -> tuple[Any, list[Any]]:
        from rotator import survey
        from rotator.models import Listing

        issuer = runtime.issuers[name]
        try:
            listing = issuer.list_keys()
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 - said in the row
            view = survey.IssuerView(name, None, f"cannot list its keys: {_describe(exc)}")
        else:
            if not isinstance(listing, Listing):
                listing = Listing(listing)
            problem = ("its listing contradicts itself: " + redact("; ".join(listing.problems))
                       if listing.problems else None)
            view = survey.IssuerView(name, listing, problem)
        return view, survey.credentials(runtime, {name: view}, now)

    return task


def _add_listing(row: IssuerRow, result: Any, report: CheckReport, timeout: float) -> None:
    if not isinstance(result, tuple):
        row.findings.extend(_findings_of(result, "keys", report, timeout))
        return
    view, credentials = result
    row.listing = view.listing
    if view.listing is None:
        row.findings.append(Finding("keys", "fail", view.problem or "cannot list its keys"))
    else:
        row.keys = len(view.listing)
        owners = sorted({k.account for k in view.listing if k.account})
        row.owner = ", ".join(owners) or None
        whose = f" (user {row.owner})" if row.owner else ""
        if view.problem:
            row.findings.append(Finding("keys", "warn", f"{row.keys} key(s) listed{whose}, but {view.problem};"
                                                        " rotator revokes nothing on such a listing"))
        else:
            row.findings.append(Finding("keys", "ok", f"{row.keys} key(s) listed{whose}"))
    for credential in credentials:
        row.credential = credential
        row.findings.append(Finding("admin key", CREDENTIAL_RESULT.get(credential.health, "warn"),
                                    f"{credential.health}: {credential.reason}"))


# --- secrets ---------------------------------------------------------------------------------------

def _secret_row(runtime: Any, secret: Any, reads: list[Any], listing: Any, now: datetime,
                timeout: float) -> SecretRow:
    from rotator import drift, survey

    row = SecretRow(secret.name, secret.issuer.name, [b.label for b in secret.targets])
    primary = reads[0]
    if isinstance(primary, _TimedOut):
        primary = BackendUnavailable(f"{secret.primary.label}: no answer within {timeout:g}s")
    if isinstance(primary, BaseException) or primary is None:
        why = _describe(primary) if primary is not None else "not read"
        row.findings.append(Finding("primary", "fail", f"{secret.primary.label} cannot be read: {why}"))
        row.assessment = survey.assess_secret(secret, primary, listing, now, runtime.settings.rotator.check_interval)
        return row
    assessment = row.assessment = survey.assess_secret(secret, primary, listing, now,
                                                       runtime.settings.rotator.check_interval)
    row.key = assessment.key or (f"…{primary.current.last4}" if primary.current is not None else None)
    status = "fail" if assessment.health in FAIL_HEALTHS else "warn" if assessment.health in WARN_HEALTHS else "ok"
    detail = f"{assessment.health}: {assessment.reason}" if assessment.reason else assessment.health
    if primary.current is None and not secret.spec.create_if_missing:
        status = "fail"
        detail = (f"{secret.primary.label} holds no key and create_if_missing is false: put the current key"
                  " there (rotator adopts it) or set create_if_missing = true")
    row.findings.append(Finding("health", status, detail))
    others: dict[str, Any] = {}
    for bound, read in zip(secret.secondaries, reads[1:], strict=True):
        if isinstance(read, _TimedOut) or read is None:
            read = BackendUnavailable(f"{bound.target.label}: no answer within {timeout:g}s")
        others[bound.label] = read
    report = row.drift = drift.compare(secret, primary, others)
    row.findings.append(_drift_finding(report))
    return row


def _drift_finding(report: Any) -> Finding:
    if report.note:
        return Finding("drift", "ok", report.note)
    if report.primary_state in ("empty", "unmanaged"):
        return Finding("drift", "ok", "not compared: the primary is not managed yet (the first run writes every"
                                      " target)")
    lines = [f"{t.target}: {t.state}" + (f" ({t.detail})" if t.detail else "") for t in report.drifted]
    if report.primary_state == "changed-by-hand":
        lines.insert(0, "the primary holds a key its rotation record does not describe (changed by hand?)")
    if lines:
        return Finding("drift", "warn", "; ".join(lines) + " (rotator sync --repair pushes the primary's key)")
    return Finding("drift", "ok", "every target holds the primary's key" if report.targets else "one target only")


# --- credentials and warnings ---------------------------------------------------------------------

def _is_reference(value: Any) -> bool:
    return isinstance(value, Mapping) and set(value) in ({"env"}, {"file"})


def _walk(value: Any, where: str) -> Iterator[tuple[str, Any]]:
    """Every environment or file reference inside a raw config value, with its field path."""
    if _is_reference(value):
        yield where, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _walk(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _walk(item, f"{where}[{index}]")


def references(runtime: Any) -> list[tuple[str, Mapping[str, Any]]]:
    """Every ``{ env = ... }`` and ``{ file = ... }`` credential reference of the configuration:
    in the issuers' and backends' sections, the issuers' own credentials (defaults included), the
    hooks and the alert channels. (``{ backend = ... }`` references are read by the checks.)"""
    settings = runtime.settings
    found: list[tuple[str, Mapping[str, Any]]] = []
    for kind, providers in (("issuers", runtime.issuers), ("backends", runtime.backends)):
        for name, section in getattr(settings, kind).items():
            declared = getattr(providers.get(name), "references", None)    # field path -> reference
            if isinstance(declared, Mapping):
                found.extend((where, ref) for where, ref in declared.items() if _is_reference(ref))
            else:
                found.extend(_walk(section.options(), f"{kind}.{name}"))
    for name, issuer in runtime.issuers.items():
        ref = getattr(issuer, "credential", None)
        if _is_reference(ref) and not any(r == ref and w.startswith(f"issuers.{name}") for w, r in found):
            found.append((f"issuers.{name} (its credential, by default)", ref))
    hooks = [(f"hooks[{i}]", h) for i, h in enumerate(getattr(settings, "hooks", None) or ())]
    for index, spec in enumerate(settings.secrets):
        hooks += [(f"secrets[{index}].hooks[{i}]", h) for i, h in enumerate(getattr(spec, "hooks", None) or ())
                  if not isinstance(h, str)]
    for where, hook in hooks:
        for name in ("url", "signing_secret"):
            found.extend(_walk(getattr(hook, name, None), f"{where}.{name}"))
    alerts = getattr(settings, "alerts", None)
    for index, channel in enumerate(getattr(alerts, "webhooks", None) or ()):
        found.extend(_walk(getattr(channel, "url", None), f"alerts.webhooks[{index}].url"))
    return found


def _resolve_references(runtime: Any) -> None:
    """Resolve every environment and file reference; raise one ConfigError listing all that do not."""
    from rotator import credentials

    problems = []
    for where, ref in references(runtime):
        try:
            credentials.resolve(ref, where)
        except ConfigError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError("\n".join(dict.fromkeys(problems)))


def _insecure_http(runtime: Any) -> dict[str, dict[str, str]]:
    """``{"issuers": {name: line}, "backends": {name: line}}`` for every section that sets
    ``insecure_http``."""
    out: dict[str, dict[str, str]] = {"issuers": {}, "backends": {}}
    for kind in ("issuers", "backends"):
        for name, section in getattr(runtime.settings, kind).items():
            options = section.options()
            if str(options.get("insecure_http", "")).strip().lower() not in ("true", "1", "yes"):
                continue
            url = str(options.get("base_url") or options.get("url") or options.get("endpoint_url") or "")
            if url and not url.lower().startswith("http://"):
                continue                # https after all: nothing travels in clear
            line = (f"{kind}.{name}: insecure_http = true: its credential travels unencrypted over"
                    f" {url or 'plain http'}; use https:// outside a loopback or sidecar setup")
            out[kind][name] = line
    return out


# --- text output -------------------------------------------------------------------------------------

_WORD = {"ok": "ok", "warn": "warn", "fail": "FAIL", "unknown": "unknown"}


def _word(finding: Finding | None, default: str = "-") -> str:
    return default if finding is None else _WORD.get(finding.status, finding.status)


def _when(moment: datetime | None) -> str:
    if moment is None:
        return "now"
    try:
        return moment.strftime("%Y-%m-%d %H:%MZ")
    except ValueError:
        return format_instant(moment) or "-"


def _read_word(row: StoreRow) -> str:
    read = row.find("read")
    if read is None or read.status == "fail" or not _is_snapshot(row.read):
        return _word(read)
    snapshot = row.read
    if not snapshot.exists:
        return "absent"
    if snapshot.current is None:
        return "no key"
    return "record" if snapshot.record is not None else "key"


def render(report: CheckReport) -> str:
    """The text form: a table per kind, then the problems, warnings and what cannot be told."""
    table = _output()[0]
    parts = []
    if report.issuers:
        parts.append(table([{
            "issuer": r.name, "sign-in": _word(r.find("sign-in"), "via listing"),
            "keys": r.keys if r.keys is not None else _word(r.find("keys")),
            "admin key": (r.credential.key or r.credential.health) if r.credential else "-",
            "expires": _when(r.credential.expires_on) if r.credential and r.credential.expires_on else "-",
            "lifetime": (_detail(r.find("key lifetime")) or "-").split(" (", 1)[0],
            "result": _WORD[r.result],
        } for r in report.issuers], ["issuer", "sign-in", "keys", "admin key", "expires", "lifetime", "result"]))
    if report.stores:
        parts.append(table([{
            "backend": r.backend, "target": r.target or "-", "secret": r.secret or "-", "role": r.role,
            "read": _read_word(r) if r.target else "-",
            "cas": _word(r.find("cas")) if r.role == "primary" else "-",
            "write": _word(r.find("write")), "result": _WORD[r.result],
        } for r in report.stores], ["backend", "target", "secret", "role", "read", "cas", "write", "result"]))
    if report.secrets:
        parts.append(table([{
            "secret": r.name, "issuer": r.issuer, "phase": (r.assessment.phase or "unmanaged") if r.assessment else "-",
            "key": r.key, "health": r.assessment.health if r.assessment else "-",
            "drift": _drift_word(r), "next": _next(r, report.now), "result": _WORD[r.result],
        } for r in report.secrets], ["secret", "issuer", "phase", "key", "health", "drift", "next", "result"]))
    for title, lines in (("problems", report.lines("fail")),
                         ("warnings", [redact(w) for w in report.warnings] + report.lines("warn")),
                         ("cannot tell without writing", report.lines("unknown"))):
        if lines:
            parts.append(f"{title}:\n" + "\n".join(f"  {line}" for line in lines))
    failed, warned = report.failed, sum(row.result == "warn" for _, row in report.rows())
    verdict = ("configuration error" if report.config_errors else "not ready" if failed else "ready")
    parts.append(f"check: {len(report.issuers)} issuer(s), {len(report.stores)} store(s), {len(report.secrets)}"
                 f" secret(s): {failed} failed, {warned} with warnings, in {report.seconds:.1f}s: {verdict}")
    return "\n\n".join(parts)


def _drift_word(row: SecretRow) -> str:
    if row.drift is None:
        return "-"
    if row.drift.note:
        return "in flight"
    if row.drift.primary_state in ("empty", "unmanaged"):
        return "not yet"
    drifted = len(row.drift.drifted)
    return f"{drifted} target(s)" if drifted else "none"


def _next(row: SecretRow, now: datetime | None) -> str:
    """The next action's gist and when: 'rotate, 2027-02-15 09:00Z', 'adopt the key ..., now'."""
    a = row.assessment
    if a is None:
        return "-"
    gist = a.action.split(" (", 1)[0].split(":", 1)[0]
    if a.health in ("blocked", "unreadable", "error"):
        return gist
    if a.at is None or (now is not None and a.at <= now):
        return gist if gist.endswith(" now") else f"{gist} now"
    return f"{gist} at {_when(a.at)}"
