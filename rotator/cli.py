"""The ``rotator`` command line.

Exit codes: 0 every secret healthy (whether or not anything changed), 1 some secret failed,
2 usage or configuration error. Nothing printed here ever contains a key value: keys are shown
as their last four characters and id.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from datetime import datetime
from typing import Any, Callable, Sequence

from rotator import __version__
from rotator.errors import ConfigError, RotatorError
from rotator.redact import redact
from rotator.timeutil import format_instant, parse_instant

log = logging.getLogger("rotator.cli")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rotator",
        description="Rotates API keys before they expire and keeps every secret store in sync.",
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

    status = sub.add_parser("status", help="health of every managed secret; changes nothing")
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
    from rotator import audit
    from rotator.engine import Engine

    runtime = _runtime(args)
    sink = audit.open_sink(runtime.settings.audit, args.audit_file)    # the same records as the daemon
    engine = Engine(runtime, on_event=sink)
    # SIGTERM (a CronJob pod stopped, `docker stop`): finish the step in flight, release the lease.
    previous = _on_signals(lambda signum, frame: engine.request_stop())
    try:
        report = engine.run(args.secrets or None, force=args.force)
    finally:
        _on_signals(previous)
        runtime.close()
        if sink is not None:
            sink.close()
    rows = [{
        "secret": o.secret, "result": o.status, "phase": o.phase,
        "did": "; ".join(o.actions) if o.actions else "-",
        "next": format_instant(o.next_at), "detail": o.detail, "error": o.error,
    } for o in report.outcomes]
    if args.output == "json":
        print_json({"outcomes": rows, "failed": len(report.failed)})
    else:
        print(table(rows, ["secret", "result", "phase", "did", "next"]))
        changed = sum(o.status == "changed" for o in report.outcomes)
        print(f"\n{len(rows)} secret(s): {changed} changed, {len(report.failed)} failed")
        for o in report.failed:
            print(f"  {o.secret}: {o.error}")
    return report.exit_code


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


def _assessments(args: argparse.Namespace, at: datetime | None) -> tuple[list[dict[str, Any]], int]:
    from rotator import planner
    from rotator.machine import view_of

    runtime = _runtime(args)
    now = at or runtime.clock.now()
    rows, bad = [], 0
    try:
        for secret in runtime.select(args.secrets or None):
            row: dict[str, Any] = {"secret": secret.name, "issuer": secret.issuer.name,
                                   "targets": [b.label for b in secret.targets]}
            try:
                snap = secret.primary.backend.read(secret.primary.target)
                a = planner.assess(secret.policy, snap.record, view_of(snap), now)
                row.update(health=a.health, phase=a.phase, key=a.key, expires=format_instant(a.expires_on),
                           next=a.action, at=format_instant(a.at), error=a.last_error)
            except RotatorError as exc:
                row.update(health="unreadable", next="fix the primary", error=redact(str(exc)))
            bad += row["health"] in ("expired", "failing", "unreadable", "blocked")
            rows.append(row)
    finally:
        runtime.close()
    return rows, bad


def cmd_plan(args: argparse.Namespace) -> int:
    at = parse_instant(args.at) if args.at else None
    rows, _ = _assessments(args, at)
    if args.output == "json":
        print_json({"at": format_instant(at), "plan": rows})
    else:
        print(table(rows, ["secret", "health", "key", "expires", "next", "at"]))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    rows, bad = _assessments(args, None)
    if args.output == "json":
        print_json({"secrets": rows, "unhealthy": bad})
    else:
        print(table(rows, ["secret", "health", "phase", "key", "expires", "error"]))
    return 1 if bad else 0


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
