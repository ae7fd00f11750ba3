"""Operations commands: ``sync``, ``verify``, ``audit`` and ``revoke --compromised``.

The tasks the QuivaWorks guide asks people to do by hand. Same conventions as ``rotator.cli``:
exit 0 healthy, 1 problem found or failed, 2 usage/config; nothing printed contains a key value.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

from rotator.errors import ConfigError, RotatorError
from rotator.redact import redact
from rotator.timeutil import format_instant


def add_parsers(sub: Any, output_option: Callable[[argparse.ArgumentParser], None]) -> None:
    sync = sub.add_parser("sync", help="compare every target with its primary; --repair pushes the primary's key")
    sync.add_argument("secrets", nargs="*", metavar="SECRET")
    sync.add_argument("--repair", action="store_true",
                      help="write the primary's key to drifted targets (default: [rotator] repair_drift)")
    output_option(sync)

    verify = sub.add_parser("verify", help="every target readable and agreeing, and the key authenticates")
    verify.add_argument("secrets", nargs="*", metavar="SECRET")
    output_option(verify)

    audit = sub.add_parser("audit", help="review every key the issuers list (the monthly review)")
    audit.add_argument("--issuer", action="append", help="only this issuer (repeatable)")
    audit.add_argument("-o", "--output", default="text", choices=["text", "json", "markdown"])
    audit.add_argument("--fix", action="store_true", help="revoke orphans (keys rotator named but nothing uses)")
    audit.add_argument("--revoke-unmanaged", action="store_true", help="also revoke keys no managed secret uses")
    audit.add_argument("--revoke-unused", action="store_true", help="also revoke keys unused for 30+ days")
    audit.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    revoke = sub.add_parser("revoke", help="incident: replace and immediately revoke a compromised key")
    revoke.add_argument("secret", metavar="SECRET")
    revoke.add_argument("--compromised", action="store_true", required=True,
                        help="the current key of SECRET is compromised (required: says what you mean)")
    revoke.add_argument("--force", action="store_true",
                        help="revoke the compromised key even if the replacement did not reach every target")
    output_option(revoke)


def _runtime(args: argparse.Namespace):
    from rotator.cli import _runtime as build

    return build(args)


def cmd_sync(args: argparse.Namespace) -> int:
    from rotator import drift
    from rotator.readahead import ReadAhead
    from rotator.cli import print_json, table

    runtime = _runtime(args)
    rows, bad = [], 0
    try:
        secrets = runtime.select(args.secrets or None)
        ahead = ReadAhead(secrets, runtime.clock)
        for secret in secrets:
            try:
                primary, report = drift.check(secret, ahead)
                if args.repair or runtime.settings.rotator.repair_drift:
                    drift.repair(secret, primary, report)
            except RotatorError as exc:
                rows.append({"secret": secret.name, "target": secret.primary.label, "state": "unreadable",
                             "detail": redact(str(exc))})
                bad += 1
                continue
            if report.primary_state != "ok":
                rows.append({"secret": secret.name, "target": report.primary, "state": f"primary {report.primary_state}",
                             "detail": "rotate adopts it" if report.primary_state != "empty" else ""})
            for t in report.targets:
                state = "repaired" if t.target in report.repaired else t.state
                detail = report.repair_errors.get(t.target) or t.detail or report.note
                rows.append({"secret": secret.name, "target": t.target, "state": state, "detail": detail})
            bad += not report.healthy
    finally:
        runtime.close()
    if args.output == "json":
        print_json({"targets": rows, "drifted_secrets": bad})
    else:
        print(table(rows, ["secret", "target", "state", "detail"]) if rows else "no secondary targets")
    return 1 if bad else 0


def cmd_verify(args: argparse.Namespace) -> int:
    from rotator import drift
    from rotator.readahead import ReadAhead
    from rotator.cli import print_json, table

    runtime = _runtime(args)
    rows, bad = [], 0
    now = runtime.clock.now()
    try:
        secrets = runtime.select(args.secrets or None)
        ahead = ReadAhead(secrets, runtime.clock)
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
            except RotatorError as exc:
                problems.append(redact(str(exc)))
            bad += bool(problems)
            rows.append({"secret": secret.name, "ok": not problems, "key": key,
                         "expires": format_instant(expires), "problems": problems})
    finally:
        runtime.close()
    if args.output == "json":
        print_json({"secrets": rows, "failed": bad})
    else:
        print(table([{**r, "ok": "yes" if r["ok"] else "NO", "problems": "; ".join(r["problems"])} for r in rows],
                    ["secret", "ok", "key", "expires", "problems"]))
    return 1 if bad else 0


def cmd_audit(args: argparse.Namespace) -> int:
    import json

    from rotator import review
    from rotator.cli import table

    runtime = _runtime(args)
    now = runtime.clock.now()
    findings: list[review.Finding] = []
    try:
        wanted = args.issuer or list(runtime.issuers)
        unknown = [n for n in wanted if n not in runtime.issuers]
        if unknown:
            raise ConfigError(f"unknown issuer(s): {', '.join(unknown)} (configured: {', '.join(runtime.issuers)})")
        for name in wanted:
            issuer = runtime.issuers[name]
            managed = []
            for secret in runtime.secrets:
                if secret.issuer is issuer:
                    record = secret.primary.backend.read(secret.primary.target).record
                    managed.append(review.Managed(secret.name, secret.spec.key_name, secret.policy.lead_time, record))
            findings += review.classify(name, issuer.list_keys(), managed, now, runtime.credential_of(name))
        chosen = review.selected_for_revocation(findings, orphans=args.fix, unmanaged=args.revoke_unmanaged,
                                                unused=args.revoke_unused)
        revoked = _revoke_chosen(runtime, chosen, args.yes) if chosen else []
    finally:
        runtime.close()

    rows = [{"issuer": f.issuer, "key_id": f.key_id, "name": f.name or "(empty)", "key": f"…{f.last4}",
             "expires": format_instant(f.expires_on), "role": f.role, "secret": f.secret,
             "flags": ",".join(f.flags), "revoked": f.key_id in revoked} for f in findings]
    if args.output == "json":
        print(redact(json.dumps({"at": format_instant(now), "keys": rows}, indent=2)))
    elif args.output == "markdown":
        print(redact(review.markdown(findings, now)), end="")
    else:
        print(table(rows, ["issuer", "key_id", "name", "key", "expires", "role", "secret", "flags", "revoked"]))
    return 0


def _revoke_chosen(runtime: Any, chosen: list, yes: bool) -> list[str]:
    from rotator.errors import KeyNotFound

    print(f"{len(chosen)} key(s) selected for revocation:", file=sys.stderr)
    for f in chosen:
        print(f"  {f.issuer} {f.key_id} {f.name!r} ({f.role}{', ' + ','.join(f.flags) if f.flags else ''})",
              file=sys.stderr)
    if not yes:
        if not sys.stdin.isatty():
            raise ConfigError("refusing to revoke without confirmation: pass --yes")
        if input("Revoke them? [y/N] ").strip().lower() not in ("y", "yes"):
            return []
    done = []
    for f in chosen:
        try:
            runtime.issuers[f.issuer].revoke(key_id=f.key_id)
        except KeyNotFound:
            pass
        done.append(f.key_id)
    return done


def cmd_revoke(args: argparse.Namespace) -> int:
    from rotator.cli import print_json, table
    from rotator.engine import Engine
    from rotator.incident import revoke_compromised

    from rotator import audit, notify

    runtime = _runtime(args)
    sink = audit.open_sink(runtime.settings.audit, None)        # the incident belongs in the trail
    hooks = notify.webhooks_from_settings(runtime.settings.alerts, runtime.context.resolve_credential)
    notifier = notify.Notifier(hooks, timeout=runtime.settings.alerts.timeout.total_seconds()) if hooks else None
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


COMMANDS = {"sync": cmd_sync, "verify": cmd_verify, "audit": cmd_audit, "revoke": cmd_revoke}
