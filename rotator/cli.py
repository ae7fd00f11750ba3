"""The ``rotator`` command line.

Exit codes: ``rotate`` (and the operations commands) 0 when nothing failed (whether or not
anything changed), 1 when some secret failed; ``status`` 0 when every secret and issuer
credential is healthy (``healthy``, ``due``, ``rotating``, ``grace``; a credential ``managed`` or
``healthy``), 1 when any is not or an issuer's listing failed; ``plan`` 0; every command 2 on a
usage or configuration error. Nothing printed here ever contains a key value: keys are shown as
their last four characters and id.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import datetime
from typing import Any, Callable, Sequence

from rotator import __version__
from rotator.errors import ConfigError, RotatorError, UsageError
from rotator.redact import redact
from rotator.timeutil import format_instant, parse_instant

log = logging.getLogger("rotator.cli")

STATUS_EXIT = """exit status:
  0  every secret is healthy, due, rotating or in grace, and every issuer credential is
     managed by rotator or not yet within the lead time of its expiry
  1  some secret or credential is not (failing, expired, rejected, expiring, held, paused,
     stale-claim, blocked, unmanaged, unreadable, error), or an issuer's listing failed
  2  usage or configuration error"""

EXIT_CODES = """exit status: 0 success (status: everything healthy); 1 some secret failed
(status: something is not healthy); 2 usage or configuration error.
'rotator status --help' lists what counts as healthy."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rotator",
        description="Rotates API keys before they expire and keeps every secret store in sync.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"rotator {__version__}")
    parser.add_argument("-c", "--config", help="TOML config file (default: $ROTATOR_CONFIG)")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"],
                        help="default: info (warning for demo)")
    parser.add_argument("--log-format", default="auto", choices=["auto", "text", "json"],
                        help="auto: text on a terminal, JSON lines otherwise")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    rotate = sub.add_parser("rotate", help="do whatever is due now (one shot; what a CronJob runs)")
    rotate.add_argument("secrets", nargs="*", metavar="SECRET", help="only these secrets")
    rotate.add_argument("--force", action="store_true", help="rotate now even if not due")
    rotate.add_argument("--audit-file", metavar="PATH", help="append audit records here (default: [audit] path)")
    _output_option(rotate)

    plan = sub.add_parser("plan", help="what would happen and when; changes nothing")
    plan.add_argument("secrets", nargs="*", metavar="SECRET")
    plan.add_argument("--at", help="evaluate as of this instant (ISO-8601, e.g. 2027-02-01T00:00Z)")
    _output_option(plan)

    status = sub.add_parser(
        "status", help="health of every managed secret and issuer credential; changes nothing; exit 1 if any is unhealthy",
        description="Health of every managed secret (and of each issuer's own admin key): key, expiry,\n"
                    "phase, next action, last error. Reads every primary and lists each issuer's keys\n"
                    "once; changes nothing.",
        epilog=STATUS_EXIT, formatter_class=argparse.RawDescriptionHelpFormatter)
    status.add_argument("secrets", nargs="*", metavar="SECRET")
    _output_option(status)

    demo = sub.add_parser("demo", help="simulate a year of rotations against a built-in emulator")
    demo.add_argument("--days", type=int, default=365, help="how long to simulate (default 365)")
    demo.add_argument("--quiet", action="store_true", help="print only the final table")

    daemon = sub.add_parser("daemon", help="run continuously: rotate on schedule, serve /healthz /readyz /metrics")
    daemon.add_argument("--http-address", metavar="HOST:PORT",
                        help='health and metrics endpoint (default: [daemon] http_address; "off" disables)')
    daemon.add_argument("--audit-file", metavar="PATH", help="append audit records here (default: [audit] path)")

    from rotator import cli_ops

    cli_ops.add_parsers(sub, _output_option)

    sub.add_parser("emulator", add_help=False,
                   help="serve the QuivaWorks emulator (for trying rotator out); options: see 'rotator emulator --help'")
    return parser


def _output_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", default="text", choices=["text", "json"])


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    passthrough: list[str] = []
    if "emulator" in raw:                       # everything after it belongs to the emulator
        cut = raw.index("emulator") + 1
        raw, passthrough = raw[:cut], raw[cut:]
    args = _parser().parse_args(raw)
    args.args = passthrough
    from rotator import log as logsetup

    logsetup.setup(args.log_level or ("warning" if args.command == "demo" else "info"), args.log_format)
    handler: Callable[[argparse.Namespace], int] = COMMANDS[args.command]
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"rotator: configuration error:\n{redact(str(exc))}", file=sys.stderr)
        return 2
    except UsageError as exc:
        print(f"rotator: {redact(str(exc))}", file=sys.stderr)
        return 2
    except RotatorError as exc:
        print(f"rotator: {redact(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _runtime(args: argparse.Namespace):
    from rotator import config
    from rotator.runtime import Runtime

    return Runtime(config.load(args.config))


def cmd_rotate(args: argparse.Namespace) -> int:
    from rotator import audit, notify
    from rotator.engine import Engine

    runtime = _runtime(args)
    sink = audit.open_sink(runtime.settings.audit, args.audit_file)    # the same records as the daemon
    # [alerts] webhooks: a failed run pages from here as from the daemon (one-shot: no reminders)
    notifier = notify.Notifier.from_settings(runtime.settings.alerts, runtime.context.resolve_credential)
    events: list[Any] = []

    def on_event(event: Any) -> None:
        if sink is not None:
            sink(event)
        events.append(event)

    engine = Engine(runtime, on_event=on_event)
    # SIGTERM (a CronJob pod stopped, `docker stop`): finish the step in flight, release the lease.
    previous = _on_signals(lambda signum, frame: engine.request_stop())
    credentials: list[Any] = []
    try:
        report = engine.run(args.secrets or None, force=args.force)
        if notifier is not None:
            notify.Alerts(notifier.send).on_run(events, report.outcomes, runtime.clock.now())
        if not engine.stopping:
            credentials = _credentials_after_run(runtime, args.secrets or None)
    finally:
        _on_signals(previous)
        runtime.close()
        if sink is not None:
            sink.close()
        if notifier is not None:
            notifier.close()
    rows = [{
        "secret": o.secret, "result": o.status, "phase": o.phase,
        "did": "; ".join(o.actions) if o.actions else "-",
        "next": format_instant(o.next_at), "detail": o.detail, "error": o.error,
    } for o in report.outcomes]
    if args.output == "json":
        print_json({"outcomes": rows, "failed": len(report.failed), "problems": report.problems,
                    "credentials": [credential_row(c) for c in credentials]})
    else:
        print(table(rows, ["secret", "result", "phase", "did", "next"]))
        _print_credentials(credentials)
        changed = sum(o.status == "changed" for o in report.outcomes)
        print(f"\n{len(rows)} secret(s): {changed} changed, {len(report.failed)} failed")
        for o in report.failed:
            print(f"  {o.secret}: {redact(o.error or o.detail or 'failed')}")
        for problem in report.problems:
            print(f"  {redact(problem)}")
    return report.exit_code


def _credentials_after_run(runtime: Any, names: list[str] | None) -> list[Any]:
    """The issuers' own credentials for the summary: one listing per issuer of the run."""
    from rotator import survey

    try:
        chosen = runtime.select(names)
        wanted = [s.issuer.name for s in chosen] if names else list(runtime.issuers)
        return survey.credentials(runtime, survey.list_issuers(runtime, wanted), runtime.clock.now())
    except Exception as exc:  # noqa: BLE001 - the summary never fails the run
        log.warning("could not assess the issuers' credentials: %s", redact(str(exc)))
        return []


def _on_signals(handler: Any) -> Any:
    """Install ``handler`` for SIGTERM (main thread only); return the old one. SIGINT stays
    KeyboardInterrupt: a person at a terminal wants it to stop now."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    if handler is None:
        return None
    old = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, handler)
    return old


def _survey(args: argparse.Namespace, at: datetime | None):
    from rotator import survey

    runtime = _runtime(args)
    try:
        return survey.survey(runtime, args.secrets or None, at or runtime.clock.now())
    finally:
        runtime.close()


def _secret_row(view: Any) -> dict[str, Any]:
    """Everything about one secret, for ``-o json`` (the text table shows a readable part)."""
    secret, a = view.secret, view.assessment
    return {
        "secret": secret.name, "issuer": secret.issuer.name, "targets": [b.label for b in secret.targets],
        "health": a.health, "healthy": a.healthy, "reason": redact(a.reason),
        "phase": a.phase, "key": a.key, "key_id": a.key_id, "last4": a.last4,
        "created": format_instant(a.created_on), "expires": format_instant(a.expires_on),
        "next": a.action, "at": format_instant(a.at),
        "error": redact(a.last_error) if a.last_error else None, "error_since": format_instant(a.error_since),
        "attempts": a.attempts, "owner": a.owner, "lease_until": format_instant(a.lease_until),
        "held": [{"key": h.key.label(), "key_id": h.key.key_id, "last4": h.key.last4, "reason": h.reason,
                  "since": format_instant(h.since), "waiting_for": list(h.consumers)} for h in a.held],
        "paused": None if a.paused is None else {
            "by": a.paused.by, "at": format_instant(a.paused.at), "until": format_instant(a.paused.until),
            "reason": a.paused.reason},
        "outside_window": a.outside_window,
    }


def credential_row(c: Any) -> dict[str, Any]:
    return {
        "issuer": c.issuer, "health": c.health, "healthy": c.healthy, "reason": c.reason, "key": c.key,
        "key_id": c.key_id, "last4": c.last4, "name": c.name, "created": format_instant(c.created_on),
        "expires": format_instant(c.expires_on), "managed_as": c.managed_as, "matches": c.matches,
    }


def _held_rows(view: Any) -> list[dict[str, Any]]:
    """A held revoke as its own plan line: the next run asks the gate again."""
    return [{"secret": view.secret.name, "health": "held", "key": f"old …{h.key.last4}", "expires": h.key.expires_on,
             "next": "revoke the old key once nothing holds it", "at": "next run",
             "why": f"{view.secret.name}: revoke of old key {h.key.label()} held since {_short(h.since)}: {h.reason}"}
            for h in view.assessment.held]


def cmd_plan(args: argparse.Namespace) -> int:
    at = parse_instant(args.at) if args.at else None
    found = _survey(args, at)
    rows = [_secret_row(v) for v in found.secrets]
    warnings = [s.warning for s in found.shared]
    credentials = [credential_row(c) for c in found.credentials]
    if args.output == "json":
        print_json({"at": format_instant(at), "plan": rows, "credentials": credentials, "warnings": warnings,
                    "problems": found.problems})
        return 0
    lines, why = [], []
    for view, row in zip(found.secrets, rows):
        lines.append({**row, "key": _last4(row["last4"]), "expires": _short(view.assessment.expires_on),
                      "at": _short(view.assessment.at) if view.assessment.at else "now"})
        for held in _held_rows(view):
            lines.append({**held, "expires": _short(held["expires"])})
            why.append(held["why"])
    print(table(lines, ["secret", "health", "key", "expires", "next", "at"]))
    _print_credentials(found.credentials)
    for view in found.secrets:
        a = view.assessment
        if a.paused is not None:
            warnings.append(f"{view.secret.name}: {a.reason}")
        if a.outside_window:
            warnings.append(f"{view.secret.name}: {a.action}")
    _print_notes(why, found.problems, warnings, why_title="held revokes")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    found = _survey(args, None)
    rows = [_secret_row(v) for v in found.secrets]
    warnings = [s.warning for s in found.shared]
    bad = found.unhealthy
    if args.output == "json":
        print_json({"secrets": rows, "credentials": [credential_row(c) for c in found.credentials],
                    "warnings": warnings, "problems": found.problems, "unhealthy": bad, "healthy": not bad})
        return 1 if bad else 0
    print(table([{
        "secret": r["secret"], "health": r["health"], "phase": r["phase"], "key": _last4(r["last4"]),
        "key id": r["key_id"], "created": _short(v.assessment.created_on, date_only=True),
        "expires": _short(v.assessment.expires_on),
        "next": f"{_brief(r['next'])}, {_short(v.assessment.at) if v.assessment.at else 'now'}",
    } for v, r in zip(found.secrets, rows)], ["secret", "health", "phase", "key", "key id", "created", "expires",
                                              "next"]))
    why = []
    for v in found.secrets:
        a = v.assessment
        if not a.healthy:
            why.append(f"{v.secret.name}: {a.health}: {a.reason}")
        for h in a.held[1:] if a.health == "held" else a.held:
            why.append(f"{v.secret.name}: revoke of old key {h.key.label()} held since {_short(h.since)}: {h.reason}")
        if a.last_error and a.health != "failing":
            since = f" (since {_short(a.error_since)})" if a.error_since else ""
            why.append(f"{v.secret.name}: last error{since}: {a.last_error}")
    _print_credentials(found.credentials)
    _print_notes(why, found.problems, warnings)
    sick = sum(not v.assessment.healthy for v in found.secrets)
    sick_credentials = sum(not c.healthy for c in found.credentials)
    print(f"\n{len(found.secrets)} secret(s): {sick} not healthy; {len(found.credentials)} issuer credential(s):"
          f" {sick_credentials} not healthy" + (f"; {len(found.problems)} issuer problem(s)" if found.problems else ""))
    return 1 if bad else 0


def _print_credentials(credentials: list[Any]) -> None:
    if not credentials:
        return
    print("\n" + table([{
        "issuer": c.issuer, "credential": _last4(c.last4), "key id": c.key_id, "health": c.health,
        "expires": _short(c.expires_on), "managed": f"as secret {c.managed_as}" if c.managed_as else "no",
    } for c in credentials], ["issuer", "credential", "key id", "health", "expires", "managed"]))
    for c in credentials:
        print(f"  {c.issuer}: {redact(c.reason)}")


def _print_notes(why: list[str], problems: list[str], warnings: list[str], *, why_title: str = "why") -> None:
    for title, lines in ((why_title, why), ("problems", problems), ("warnings", warnings)):
        if lines:
            print(f"\n{title}:")
            for line in lines:
                print(f"  {redact(line)}")


def _brief(action: str) -> str:
    """The gist of a next action for a text table ('rotate now (due: ...)' -> 'rotate now')."""
    return action.split(" (", 1)[0].split(":", 1)[0]


def _last4(last4: str | None) -> str | None:
    return f"…{last4}" if last4 else None


def _short(moment: datetime | None, *, date_only: bool = False) -> str | None:
    """An instant for a text table: '2027-03-04 22:11Z' (or the date alone)."""
    if moment is None:
        return None
    try:
        return moment.strftime("%Y-%m-%d" if date_only else "%Y-%m-%d %H:%MZ")
    except ValueError:
        return format_instant(moment)


def cmd_demo(args: argparse.Namespace) -> int:
    from rotator.demo import run_demo

    return run_demo(days=args.days, quiet=args.quiet)


def cmd_emulator(args: argparse.Namespace) -> int:
    from rotator import registry

    serve = registry.load("emulator", "quivaworks-cli", "emulator")
    return int(serve(args.args) or 0)


def cmd_daemon(args: argparse.Namespace) -> int:
    from rotator import config
    from rotator.daemon import run_daemon

    return run_daemon(config.load(args.config), http_address=args.http_address, audit_path=args.audit_file)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "rotate": cmd_rotate, "plan": cmd_plan, "status": cmd_status, "demo": cmd_demo,
    "emulator": cmd_emulator, "daemon": cmd_daemon,
}


def _ops_commands() -> None:
    from rotator import cli_ops

    COMMANDS.update(cli_ops.COMMANDS)


_ops_commands()


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain aligned table; cells are redacted and cut to a readable width."""
    def cell(value: Any) -> str:
        text = "-" if value in (None, "", []) else str(value)
        text = redact(text)
        return text if len(text) <= 60 else text[:57] + "..."

    grid = [[c.upper() for c in columns]] + [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(line[i]) for line in grid) for i in range(len(columns))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in grid)


def print_json(data: Any) -> None:
    print(redact(json.dumps(data, indent=2, default=str)))


if __name__ == "__main__":
    sys.exit(main())
