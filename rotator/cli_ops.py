"""Operations commands: ``sync``, ``verify``, ``review`` (``audit``, its deprecated alias),
``revoke --compromised``, ``pause`` and ``resume``.

The tasks the QuivaWorks guide asks people to do by hand. Same conventions as ``rotator.cli``:
exit 0 healthy, 1 problem found or failed, 2 usage/config; nothing printed contains a key value.
Output helpers come from :mod:`rotator.output`; this module never imports ``rotator.cli``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable

from rotator import output
from rotator.errors import ConfigError, RotatorError, UsageError
from rotator.output import credential_row, print_json, table
from rotator.redact import redact
from rotator.timeutil import format_duration, format_instant

if TYPE_CHECKING:
    from rotator.models import Listing

AUDIT_DEPRECATED = ("rotator: 'audit' is deprecated, use 'review'; from the next release 'audit' means only"
                    " the audit trail")


def add_parsers(sub: Any, output_option: Callable[[argparse.ArgumentParser], None]) -> None:
    sync = sub.add_parser("sync", help="compare every target with its primary; --repair pushes the primary's key")
    sync.add_argument("secrets", nargs="*", metavar="SECRET")
    sync.add_argument("--repair", action="store_true",
                      help="write the primary's key to drifted targets (default: [rotator] repair_drift)")
    output_option(sync)

    verify = sub.add_parser("verify", help="every target readable and agreeing, and the key authenticates")
    verify.add_argument("secrets", nargs="*", metavar="SECRET")
    output_option(verify)

    _review_arguments(sub.add_parser(
        "review", help="the monthly review: every key the issuers list, flagged (--fix revokes orphans)",
        description="The monthly key review: every key the issuers list, classified and flagged.\n\n"
                    "Roles: current, pending, previous, held, credential, orphan, unmanaged. Flags: expired,\n"
                    "expiring, unused-30d, unclear-name, shared, served, would-sweep, in-flight.\n"
                    "--fix and --revoke-* revoke through the same gate as rotations.",
        epilog="exit status: 0 reviewed (and every chosen revoke done or held); 1 a target or listing could\n"
               "not be read, or a revoke failed; 2 usage or configuration error."))
    # one release of grace for scripts that still say `audit`; then "audit" is only the audit trail
    _review_arguments(sub.add_parser("audit", help="deprecated alias of 'review' (for one release)"))

    revoke = sub.add_parser("revoke", help="incident: replace and immediately revoke a compromised key")
    revoke.add_argument("secret", metavar="SECRET")
    revoke.add_argument("--compromised", action="store_true", required=True,
                        help="the current key of SECRET is compromised (required: says what you mean)")
    revoke.add_argument("--force", action="store_true",
                        help="revoke the compromised key even if the replacement did not reach every target")
    output_option(revoke)

    pause = sub.add_parser("pause", help="stop rotating SECRET (every runner sees it) until resumed or --until")
    pause.add_argument("secret", metavar="SECRET")
    pause.add_argument("--until", metavar="TIME", help="lapse by itself then: 2027-01-10T09:00Z, or 3d / 12h from now")
    pause.add_argument("--reason", default="", help="shown by status, plan and alerts")
    output_option(pause)

    resume = sub.add_parser("resume", help="lift a pause: SECRET rotates again when due")
    resume.add_argument("secret", metavar="SECRET")
    output_option(resume)


def _review_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--issuer", action="append", help="only this issuer (repeatable)")
    parser.add_argument("-o", "--output", default="text", choices=["text", "json", "markdown"])
    parser.add_argument("--fix", action="store_true",
                        help="revoke orphans (keys rotator named but nothing uses) the run's sweep would revoke")
    parser.add_argument("--revoke-unmanaged", action="store_true", help="also revoke keys no managed secret uses")
    parser.add_argument("--revoke-unused", action="store_true", help="also revoke keys unused for 30+ days")
    parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    parser.add_argument("--audit-file", metavar="PATH",
                        help="append audit records of revokes here (default: [audit] path)")


def runtime_for(args: argparse.Namespace, **options: Any):
    """The Runtime every command works on, from ``--config`` (or ``$ROTATOR_CONFIG``);
    ``options`` go to :class:`Runtime` (``on_call``)."""
    from rotator import config
    from rotator.runtime import Runtime

    return Runtime(config.load(args.config), **{k: v for k, v in options.items() if v is not None})


_runtime = runtime_for


def cmd_sync(args: argparse.Namespace) -> int:
    from rotator.readahead import ReadAhead

    runtime = _runtime(args)
    rows, bad = [], 0
    try:
        secrets = runtime.select(args.secrets or None)
        ahead = ReadAhead(secrets, runtime.clock)
        with output.progress(len(secrets), "syncing", quiet=args.quiet) as tick:
            for secret in secrets:
                bad += _sync_one(args, runtime, secret, ahead, rows)
                tick(secret.name)
    finally:
        runtime.close()
    if args.output == "json":
        print_json({"targets": rows, "drifted_secrets": bad})
    else:
        print(table(rows, ["secret", "target", "state", "detail"]) if rows else "no secondary targets")
    return 1 if bad else 0


def _sync_one(args: argparse.Namespace, runtime: Any, secret: Any, ahead: Any, rows: list[dict[str, Any]]) -> int:
    """Check (and repair) one secret's targets, adding their rows; 1 when it is not healthy."""
    from rotator import drift

    try:
        primary, report = drift.check(secret, ahead)
        if args.repair or runtime.settings.rotator.repair_drift:
            drift.repair(secret, primary, report)
    except Exception as exc:  # noqa: BLE001 - one secret never stops the others (I6)
        rows.append({"secret": secret.name, "target": secret.primary.label, "state": "unreadable",
                     "detail": describe(exc)})
        return 1
    if report.primary_state != "ok":
        rows.append({"secret": secret.name, "target": report.primary, "state": f"primary {report.primary_state}",
                     "detail": "rotate adopts it" if report.primary_state != "empty" else ""})
    for t in report.targets:
        state = "repaired" if t.target in report.repaired else t.state
        detail = report.repair_errors.get(t.target) or t.detail or report.note
        rows.append({"secret": secret.name, "target": t.target, "state": state, "detail": detail})
    return int(not report.healthy)


def cmd_verify(args: argparse.Namespace) -> int:
    from rotator import drift, survey
    from rotator.readahead import ReadAhead

    runtime = _runtime(args)
    rows, bad = [], 0
    now = runtime.clock.now()
    try:
        secrets = runtime.select(args.secrets or None)
        ahead = ReadAhead(secrets, runtime.clock)
        with output.progress(len(secrets), "verifying", quiet=args.quiet) as tick:
            for secret in secrets:
                problems: list[str] = []
                key = expires = None
                try:
                    primary, report = drift.check(secret, ahead)
                    problems += [f"{t.target}: {t.state}" for t in report.drifted]
                    if report.primary_state != "ok":
                        problems.append(f"{secret.primary.label}: primary {report.primary_state}")
                    if primary.current is not None:
                        key = f"…{primary.current.last4}"
                        if not secret.issuer.verify(primary.current):
                            problems.append(f"the issuer refuses the current key {key}")
                    record = primary.record
                    if record and record.current and record.current.expires_on:
                        expires = record.current.expires_on
                        if expires <= now:
                            problems.append("the current key has expired")
                except Exception as exc:  # noqa: BLE001 - one secret never stops the others (I6)
                    problems.append(describe(exc))
                bad += bool(problems)
                rows.append({"secret": secret.name, "ok": not problems, "key": key,
                             "expires": format_instant(expires), "problems": problems})
                tick(secret.name)
        # the key rotator itself signs in with: expired, or expiring with nobody to rotate it
        wanted = [s.issuer.name for s in secrets] if args.secrets else list(runtime.issuers)
        credentials = survey.credentials(runtime, survey.list_issuers(runtime, wanted), now)
    finally:
        runtime.close()
    failing = [c for c in credentials if not c.healthy]
    if args.output == "json":
        print_json({"secrets": rows, "failed": bad + len(failing),
                    "credentials": [credential_row(c) for c in credentials]})
    else:
        print(table([{**r, "ok": "yes" if r["ok"] else "NO", "problems": "; ".join(r["problems"])} for r in rows],
                    ["secret", "ok", "key", "expires", "problems"]))
        for c in failing:
            print(f"issuer {c.issuer}: admin key {c.key or '-'} {c.health}: {redact(c.reason)}")
    return 1 if bad or failing else 0


def describe(exc: BaseException) -> str:
    from rotator.survey import describe as text

    return text(exc)


def cmd_audit(args: argparse.Namespace) -> int:
    """``rotator audit``: the deprecated name of ``review``, for one release."""
    print(AUDIT_DEPRECATED, file=sys.stderr)
    return cmd_review(args)


def cmd_review(args: argparse.Namespace) -> int:
    import json

    from rotator import review
    from rotator.engine import Engine, RunShared
    from rotator.interfaces import TwoStageRevoke
    from rotator.readahead import ReadAhead
    from rotator.revoker import DEFAULT_IN_FLIGHT

    runtime = _runtime(args)
    now = runtime.clock.now()
    findings: list[review.Finding] = []
    problems: list[str] = []
    results: dict[tuple[str, str], tuple[str, str]] = {}
    trail = _AuditTrail(runtime, args)
    try:
        wanted = args.issuer or list(runtime.issuers)
        unknown = [n for n in wanted if n not in runtime.issuers]
        if unknown:
            raise UsageError(f"unknown issuer(s): {', '.join(unknown)} (configured: {', '.join(runtime.issuers)})")
        # Every revoke goes through the gate: the run's revoker gathers fresh evidence for each,
        # reusing the reads below while they are fresh, and confirms each revoke by a listing.
        shared = RunShared(Engine(runtime, on_event=trail))
        total = sum(secret.issuer.name in wanted for secret in runtime.secrets)
        with output.progress(total, "reviewing", quiet=args.quiet) as tick:
            for name in wanted:
                issuer = runtime.issuers[name]
                mine = [secret for secret in runtime.secrets if secret.issuer is issuer]
                ahead = ReadAhead(mine, runtime.clock)        # batched where the backend can
                managed = []
                for secret in mine:
                    managed.append(_read_managed(secret, shared, problems, ahead))
                    tick(secret.name)
                listing = shared.listings.fresh(issuer)
                if not listing.usable:
                    problems.append(f"issuer {name}: its listing contradicts itself"
                                    f" ({'; '.join(listing.problems[:3])}); nothing is revoked on it")
                bound = getattr(issuer, "in_flight_bound", None) or DEFAULT_IN_FLIGHT
                listed, uses = _with_last_use(issuer, listing, problems)
                found = review.classify(name, listed, managed, now, runtime.credential_of(name), in_flight=bound,
                                        named_keys=issuer.capabilities.named_keys)
                findings += [replace(f, last_use=uses.get(f.key_id)) for f in found]
                if isinstance(issuer, TwoStageRevoke):
                    findings += review.dormant(name, issuer.dormant_keys(), managed, now, issuer.delete_after)
        flags = {"orphans": args.fix, "unmanaged": args.revoke_unmanaged, "unused": args.revoke_unused}
        for f in review.withheld(findings, **flags):
            results[(f.issuer, f.key_id)] = ("held", f.hold or "")
            print(redact(f"not revoked: {f.issuer} {_key(f)}: {f.hold}"), file=sys.stderr)
        chosen = review.selected_for_revocation(findings, **flags)
        if chosen:
            results.update(_revoke_chosen(runtime, shared, chosen, args.yes, trail))
    finally:
        runtime.close()
        trail.close()

    for problem in problems:
        print(f"problem: {redact(problem)}", file=sys.stderr)
    rows = [{"issuer": f.issuer, "key_id": f.key_id, "name": f.name or "(empty)", "key": f"…{f.last4}",
             "status": f.status, "created": format_instant(f.created_on),
             "age": format_duration(now - f.created_on) if f.created_on else None, "last_use": f.last_use,
             "expires": format_instant(f.expires_on), "role": f.role, "secret": f.secret,
             "shared_by": list(f.shared_by), "flags": ",".join(f.flags), "revocable": f.revocable,
             "hold": f.hold, "notes": f.notes,
             "revoked": results.get((f.issuer, f.key_id), ("", ""))[0] == "revoked",
             "revoke": _outcome(results.get((f.issuer, f.key_id)))} for f in findings]
    failed = sum(result == "failed" for result, _ in results.values())
    if args.output == "json":
        print(redact(json.dumps({"at": format_instant(now), "keys": rows, "problems": problems,
                                 "revoke_failures": failed}, indent=2)))
    elif args.output == "markdown":
        print(redact(review.markdown(findings, now)), end="")
    else:
        print(table([{**r, "secret": f.owners, "revoked": r["revoke"]["result"] if r["revoke"] else None}
                     for r, f in zip(rows, findings)],
                    ["issuer", "key_id", "name", "key", "expires", "role", "secret", "flags", "revoked"]))
        noted = [(f, f.notes) for f in findings if f.notes]
        if noted:
            print("\nnotes:")
            for f, notes in noted:
                print(redact(f"  {f.issuer} {_key(f)}: {'; '.join(notes)}"))
    return 1 if failed or problems else 0


def _key(f: Any) -> str:
    return f"…{f.last4} (id {f.key_id})"


def _outcome(result: tuple[str, str] | None) -> dict[str, str] | None:
    return None if result is None else {"result": result[0], "reason": redact(result[1])}


def _with_last_use(issuer: Any, listing: Listing, problems: list[str]) -> tuple[Listing, dict[str, str]]:
    """Where the issuer reports last use per key (AWS IAM ``GetAccessKeyLastUsed``): the listing
    with ``last_used_on`` filled in, and each key's last use in words (service, region)."""
    from rotator.interfaces import UsageEvidence
    from rotator.models import Listing

    if not isinstance(issuer, UsageEvidence):
        return listing, {}
    keys, uses = [], {}
    for key in listing:
        try:
            use = issuer.last_used(key.key_id)
        except RotatorError as exc:
            problems.append(f"issuer {issuer.name}: last use of {key.label()}: {exc}")
            keys.append(key)
            continue
        uses[key.key_id] = use.describe()
        keys.append(replace(key, last_used_on=use.when))
    return Listing(keys, listing.problems), uses


def _read_managed(secret: Any, shared: Any, problems: list[str], ahead: Any = None) -> Any:
    """What the review needs of one managed secret: its record and the key every target serves
    (fingerprints and last 4 characters). The reads are handed to the run's revoker, so a revoke
    decided moments later judges on them (it reads again when they are no longer fresh)."""
    from rotator import review
    from rotator.errors import CorruptPayload
    from rotator.gate import Holder
    from rotator.models import Snapshot

    primary = record = None
    served: list[Holder] = []
    unreadable: list[str] = []
    for bound in secret.targets:
        is_primary = bound is secret.primary
        try:
            snap = ahead.read_target(secret, bound) if ahead is not None else bound.backend.read(bound.target)
        except CorruptPayload as exc:       # no key can be read from it: it serves none
            problems.append(f"secret {secret.name}: {bound.label}: {redact(str(exc))}")
            snap = Snapshot()
        except RotatorError as exc:
            message = redact(str(exc))
            problems.append(f"secret {secret.name}: {bound.label} could not be read: {message}")
            if is_primary:
                return review.Managed(secret.name, secret.spec.key_name, secret.policy.lead_time, None,
                                      primary_error=message)
            unreadable.append(bound.label)
            continue
        else:
            shared.revoker.saw(secret, bound.label, snap)
        if is_primary:
            record = snap.record
            if snap.pending is not None:
                served.append(Holder(secret.name, "pending", bound.label, snap.pending.fingerprint,
                                     snap.pending.last4))
        if snap.current is not None:
            holder = Holder(secret.name, "serves", bound.label, snap.current.fingerprint, snap.current.last4)
            if is_primary:
                primary = holder
            else:
                served.append(holder)
    return review.Managed(secret.name, secret.spec.key_name, secret.policy.lead_time, record,
                          primary=primary, served=tuple(served), unreadable=tuple(unreadable))


class _AuditTrail:
    """The audit sink of ``[audit]`` (or ``--audit-file``), opened when the first revoke is about
    to be asked for: every intent and result of the gate's revokes is recorded, as ``rotate``
    records them. With ``[audit] stdout`` and ``-o json``/``markdown`` the lines go to stderr, so
    stdout stays one document."""

    def __init__(self, runtime: Any, args: argparse.Namespace) -> None:
        self._settings = runtime.settings.audit
        self._path = getattr(args, "audit_file", None)
        self._to_stderr = args.output != "text"
        self._sink: Any = None

    def open(self) -> None:
        from rotator import audit

        if self._sink is not None:
            return
        settings = self._settings
        if settings.stdout and self._to_stderr:
            path = self._path or settings.path
            try:
                self._sink = audit.AuditSink(path, fsync=settings.fsync, stream=sys.stderr)
            except OSError as exc:
                raise ConfigError(f"audit.path: cannot open {path} for appending: {exc.strerror}") from None
        else:
            self._sink = audit.open_sink(settings, self._path)

    def __call__(self, event: Any) -> None:
        if self._sink is not None:
            self._sink(event)

    def close(self) -> None:
        if self._sink is not None:
            self._sink.close()


def _revoke_chosen(runtime: Any, shared: Any, chosen: list, yes: bool,
                   trail: _AuditTrail | None = None) -> dict[tuple[str, str], tuple[str, str]]:
    """Revoke what a person chose, each through the revoke gate: orphans as strays (the sweep's
    rules, including the in-flight age), anything else as a review revoke (every protection but
    the age rule). Returns (issuer, key id) -> (revoked | held | gone | failed, reason)."""
    from rotator.gate import Request
    from rotator.review import UNMANAGED

    print(f"{len(chosen)} key(s) selected for revocation:", file=sys.stderr)
    for f in chosen:
        print(f"  {f.issuer} {f.key_id} {f.name!r} ({f.role}{', ' + ','.join(f.flags) if f.flags else ''})",
              file=sys.stderr)
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError("refusing to revoke without confirmation: pass --yes")
        if input("Revoke them? [y/N] ").strip().lower() not in ("y", "yes"):
            return {}
    if trail is not None:
        trail.open()
    done: dict[tuple[str, str], tuple[str, str]] = {}
    for f in chosen:
        issuer = runtime.issuers[f.issuer]
        request = Request(f.secret or UNMANAGED, f.purpose, entry=f.entry())
        try:
            verdict = shared.revoker.revoke(request, issuer)
        except RotatorError as exc:        # RevokeNotConfirmed, or the issuer failed: not revoked
            reason = redact(str(exc))
            done[(f.issuer, f.key_id)] = ("failed", reason)
            print(f"revoke FAILED: {f.issuer} {_key(f)}: {reason}", file=sys.stderr)
            continue
        if verdict.revoke:
            done[(f.issuer, f.key_id)] = ("revoked", verdict.reason)
            print(f"revoked: {f.issuer} {_key(f)}", file=sys.stderr)
        elif verdict.gone:
            done[(f.issuer, f.key_id)] = ("gone", verdict.reason)
            print(f"already gone: {f.issuer} {_key(f)}: {verdict.reason}", file=sys.stderr)
        else:
            done[(f.issuer, f.key_id)] = ("held", verdict.reason)
            print(f"not revoked: {f.issuer} {_key(f)}: {verdict.reason}", file=sys.stderr)
    return done


def cmd_revoke(args: argparse.Namespace) -> int:
    from rotator.engine import Engine
    from rotator.incident import revoke_compromised

    from rotator import audit, notify

    runtime = _runtime(args)
    sink = audit.open_sink(runtime.settings.audit, None)        # the incident belongs in the trail
    notifier = notify.Notifier.from_settings(runtime.settings.alerts, runtime.context.resolve_credential)
    alerts = notify.Alerts(notifier.send) if notifier else None  # an incident pages once, from here too
    events: list = []

    def record(event) -> None:
        events.append(event)
        if sink is not None:
            sink(event)

    try:
        (secret,) = runtime.select([args.secret])
        report = revoke_compromised(Engine(runtime, on_event=record), secret, force=args.force)
        if alerts is not None:
            alerts.on_events(events)
    finally:
        runtime.close()
        if sink is not None:
            sink.close()
        if notifier is not None:
            notifier.close()
    rows = [{"target": label, "holds": holds} for label, holds in report.holdings.items()]
    summary = {"secret": report.secret, "compromised_key": report.compromised, "revoked": report.revoked,
               "forced": report.forced, "contained": report.contained, "rotation": report.outcome.status,
               "error": report.outcome.error, "targets": rows}
    if args.output == "json":
        print_json(summary)
    else:
        state = "REVOKED" if report.revoked else "STILL VALID"
        print(f"compromised key {report.compromised} of {report.secret}: {state}"
              f"{' (forced)' if report.forced else ''}")
        print(table(rows, ["target", "holds"]))
        if report.outcome.error:
            print(f"replacement: {report.outcome.error}")
    return 0 if report.contained else 1


def cmd_pause(args: argparse.Namespace) -> int:
    from rotator import pausing

    runtime = _runtime(args)
    try:
        (secret,) = runtime.select([args.secret])
        now = runtime.clock.now()
        until = pausing.parse_until(args.until, now)
        record = pausing.pause(secret, by=runtime.identity, now=now, until=until, reason=args.reason)
        _trail(runtime, secret.name, "paused", _pause_words(record.paused), now)
    finally:
        runtime.close()
    current = record.current
    left = (f"; its key {current.label()} expires {format_instant(current.expires_on)}"
            if current is not None and current.expires_on else "")
    if args.output == "json":
        print_json({"secret": secret.name, "paused": _pause_json(record.paused),
                    "key_expires_on": format_instant(current.expires_on) if current else None})
    else:
        print(f"{secret.name}: {_pause_words(record.paused)}{left}")
        print("no rotation starts and no old key is revoked while paused (a rotation in flight finishes);"
              f" `rotator resume {secret.name}` lifts it")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from rotator import pausing

    runtime = _runtime(args)
    try:
        (secret,) = runtime.select([args.secret])
        record, lifted = pausing.resume(secret)
        if lifted is not None:
            _trail(runtime, secret.name, "resumed", f"lifted: {_pause_words(lifted)}", runtime.clock.now())
    finally:
        runtime.close()
    if args.output == "json":
        print_json({"secret": secret.name, "resumed": lifted is not None, "lifted": _pause_json(lifted)})
    else:
        print(f"{secret.name}: resumed (was {_pause_words(lifted)})" if lifted else f"{secret.name}: was not paused")
    return 0


def _pause_words(pause: Any) -> str:
    from rotator.machine import paused_reason

    return paused_reason(pause) if pause is not None else "not paused"


def _pause_json(pause: Any) -> dict[str, Any] | None:
    return None if pause is None else {"by": pause.by, "at": format_instant(pause.at),
                                       "until": format_instant(pause.until), "reason": pause.reason}


def _trail(runtime: Any, secret: str, action: str, detail: str, now: Any) -> None:
    """One audit record for a person's action (pause, resume)."""
    from rotator import audit
    from rotator.report import Event

    sink = audit.open_sink(runtime.settings.audit, None)
    if sink is not None:
        try:
            sink(Event(at=now, secret=secret, action=action, detail=detail, runner=runtime.identity))
        finally:
            sink.close()


COMMANDS = {"sync": cmd_sync, "verify": cmd_verify, "review": cmd_review, "audit": cmd_audit,
            "revoke": cmd_revoke, "pause": cmd_pause, "resume": cmd_resume}
