"""The ``rotator`` command line.

Exit codes (the same for every command; ``EXIT_CODES`` is what ``--help`` shows):

* 0 — nothing failed (whether or not anything changed); ``status``/``check``: all healthy;
* 1 — a run whose rotations failed, or a command that found a problem (``status`` something not
  healthy, ``check`` a check that did not pass, ``sync`` drift, ``verify``/``review`` a problem);
* 2 — a configuration, credential or usage error: an unusable config file or field, a credential
  reference that does not resolve, a bad option or argument (argparse's own errors too);
* 70 — an internal error, i.e. a bug: one line says so, ``--debug`` shows the traceback;
* 130 — interrupted (Ctrl-C).

No user error prints a traceback: one line on stderr says what is wrong and where (``--debug``,
or ``--log-level debug``, adds the traceback for a bug report). Global options (``-c``,
``--log-level``, ``--log-format``, ``--debug``, ``-q``) are accepted before or after the command.
Nothing printed here ever contains a key value: keys are shown as their last four characters and
id.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from datetime import datetime
from typing import Any, Callable, Sequence

from rotator import __version__, output
from rotator.errors import ConfigError, RotatorError, UsageError
from rotator.output import (brief, credential_row, held_rows, last4, print_credentials, print_json,
                            print_notes, secret_row, short, table)
from rotator.redact import redact
from rotator.timeutil import format_instant

__all__ = ["main", "table", "print_json", "credential_row", "EXIT_CODES"]

log = logging.getLogger("rotator.cli")

EX_SOFTWARE = 70           # sysexits.h: an internal software error (a bug), not a failed run
EX_INTERRUPTED = 130       # 128 + SIGINT, what shells report for Ctrl-C

STATUS_EXIT = """exit status:
  0  every secret is healthy, due, rotating or in grace, and every issuer credential is
     managed by rotator or not yet within the lead time of its expiry
  1  some secret or credential is not (failing, expired, rejected, expiring, held, paused,
     stale-claim, blocked, unmanaged, unreadable, error), or an issuer's listing failed
  2  usage or configuration error"""

EXIT_CODES = """exit status (every command):
  0    nothing failed (status/check: everything healthy and passing)
  1    a run whose rotations failed, or a problem found (status: something not healthy,
       check: a check failed, sync: drift, verify/review: a problem); the output says which
  2    configuration, credential or usage error: the message names the file, the field
       and the problem
  70   internal error (a bug): run again with --debug and report the traceback
  130  interrupted (Ctrl-C)

Global options (-c, --log-level, --log-format, --debug, -q) go before or after the command.
'rotator status --help' lists what counts as healthy; 'rotator completion --help' sets up
tab completion."""

#: Applied once after parsing, whichever position (or none) gave the global options.
GLOBAL_DEFAULTS: dict[str, Any] = {"config": None, "log_level": None, "log_format": "auto", "debug": False,
                                   "quiet": False}
#: Global options that take a value (to find the command word in a raw command line).
_VALUED = frozenset({"-c", "--config", "--log-level", "--log-format"})
COMPLETE_SECRETS = "__complete-secrets"      # hidden helper the completion scripts call


def _add_global_options(parser: argparse.ArgumentParser) -> None:
    """The options every command accepts before or after its name. ``SUPPRESS`` as the default:
    an option not given leaves no attribute, so a value given after the command is not undone
    by the main parser's default nor the reverse; :data:`GLOBAL_DEFAULTS` fills in the rest once."""
    group = parser.add_argument_group("global options (before or after the command)")
    group.add_argument("-c", "--config", metavar="FILE", default=argparse.SUPPRESS,
                       help="TOML config file (default: $ROTATOR_CONFIG)")
    group.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default=argparse.SUPPRESS,
                       help="default: info (warning for demo); debug implies --debug")
    group.add_argument("--log-format", choices=["auto", "text", "json"], default=argparse.SUPPRESS,
                       help="auto (default): text on a terminal, JSON lines otherwise")
    group.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the traceback of an error (for bug reports); logs at debug level")
    group.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                       help="no progress bar (demo: only the final table)")


def _global_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    _add_global_options(parent)
    return parent


def _parser() -> argparse.ArgumentParser:
    common = _global_parent()

    def command_parser(**kwargs: Any) -> argparse.ArgumentParser:
        """Every subcommand's parser (ours, cli_ops', check's) carries the global options."""
        kwargs["parents"] = [*kwargs.get("parents", ()), common]
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        return argparse.ArgumentParser(**kwargs)

    parser = argparse.ArgumentParser(
        prog="rotator", parents=[common],
        description="Rotates API keys before they expire and keeps every secret store in sync.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"rotator {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=command_parser)

    rotate = sub.add_parser("rotate", help="do whatever is due now (one shot; what a CronJob runs)",
                            epilog=EXIT_CODES)
    rotate.add_argument("secrets", nargs="*", metavar="SECRET", help="only these secrets")
    rotate.add_argument("--force", action="store_true", help="rotate now even if not due")
    rotate.add_argument("--audit-file", metavar="PATH", help="append audit records here (default: [audit] path)")
    rotate.add_argument("--metrics-file", metavar="PATH",
                        help="write the run's metrics here in the Prometheus text format (for node-exporter's "
                             "textfile collector; written atomically)")
    rotate.add_argument("--pushgateway", metavar="URL",
                        help="push the run's metrics to this Prometheus Pushgateway (job 'rotator')")
    _output_option(rotate)

    plan = sub.add_parser("plan", help="what would happen and when; changes nothing")
    plan.add_argument("secrets", nargs="*", metavar="SECRET")
    plan.add_argument("--at", type=_instant, metavar="TIME",
                      help="evaluate as of this instant (ISO-8601, e.g. 2027-02-01T00:00Z)")
    _output_option(plan)

    status = sub.add_parser(
        "status", help="health of every managed secret and issuer credential; changes nothing; exit 1 if any is unhealthy",
        description="Health of every managed secret (and of each issuer's own admin key): key, expiry,\n"
                    "phase, next action, last error. Reads every primary and lists each issuer's keys\n"
                    "once; changes nothing.",
        epilog=STATUS_EXIT)
    status.add_argument("secrets", nargs="*", metavar="SECRET")
    _output_option(status)

    _add_check(sub)

    demo = sub.add_parser("demo", help="simulate a year of rotations against a built-in emulator")
    demo.add_argument("--days", type=_positive_int, default=365, help="how long to simulate (default 365)")
    _output_option(demo)

    daemon = sub.add_parser("daemon", help="run continuously: rotate on schedule, serve /healthz /readyz /metrics",
                            epilog=EXIT_CODES)
    daemon.add_argument("--http-address", metavar="HOST:PORT",
                        help='health and metrics endpoint (default: [daemon] http_address; "off" disables)')
    daemon.add_argument("--audit-file", metavar="PATH", help="append audit records here (default: [audit] path)")

    from rotator import cli_ops

    cli_ops.add_parsers(sub, _output_option)

    sub.add_parser("emulator", add_help=False,
                   help="serve the QuivaWorks emulator to try rotator against; prints its URL, an admin key and "
                        "a config to start from (options: 'rotator emulator --help')")

    completion = sub.add_parser(
        "completion", help="print the tab-completion script for bash, zsh or fish",
        description="Print a tab-completion script for SHELL, generated from rotator's own options.\n"
                    "Secret names complete from the configuration (-c/--config on the line, or\n"
                    "$ROTATOR_CONFIG). Install:\n"
                    "  bash:  rotator completion bash > ~/.local/share/bash-completion/completions/rotator\n"
                    "  zsh:   rotator completion zsh > \"${fpath[1]}/_rotator\"   (then: compinit)\n"
                    "  fish:  rotator completion fish > ~/.config/fish/completions/rotator.fish\n"
                    "or, for the current shell only: source <(rotator completion bash)")
    completion.add_argument("shell", choices=["bash", "zsh", "fish"], metavar="SHELL", help="bash, zsh or fish")

    sub.add_parser(COMPLETE_SECRETS)       # no help: hidden from --help and from the completion
    return parser


def _add_check(sub: Any) -> None:
    """``rotator check`` comes from :mod:`rotator.check` (its own parser and command); a build
    without that module still lists the command and says why it cannot run."""
    import importlib.util

    if importlib.util.find_spec("rotator.check") is not None:
        from rotator import check

        check.add_parser(sub, _output_option)
        return
    placeholder = sub.add_parser("check", help="validate the configuration and reach every issuer and store"
                                               " (not available in this build)")
    _output_option(placeholder)


def _output_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", default="text", choices=["text", "json"])


def _instant(text: str) -> datetime:
    """``--at``: an ISO-8601 instant, or a usage error naming the expected form."""
    from rotator.timeutil import parse_instant

    try:
        return parse_instant(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an ISO-8601 instant: {text!r} (e.g. 2027-02-01T00:00Z or 2027-02-01T09:30:00+01:00)") from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


# --- running a command -----------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in raw or _says_debug(raw)       # before parsing: a bug in parsing shows it too
    try:
        args = _parse(raw)
        debug = args.debug
        from rotator import log as logsetup

        level = args.log_level or ("debug" if args.debug else "warning" if args.command == "demo" else "info")
        logsetup.setup(level, args.log_format)
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        _debug_traceback(debug)
        print("rotator: interrupted", file=sys.stderr)
        return EX_INTERRUPTED
    except BrokenPipeError:            # `rotator status | head`: the reader left; say nothing more
        _silence_stdout()
        return 141
    except ConfigError as exc:
        _debug_traceback(debug)
        message = redact(str(exc)).strip()
        joiner = "\n" if "\n" in message else " "
        print(f"rotator: configuration error:{joiner}{message}", file=sys.stderr)
        return 2
    except UsageError as exc:
        _debug_traceback(debug)
        print(f"rotator: {redact(str(exc))}", file=sys.stderr)
        return 2
    except RotatorError as exc:
        _debug_traceback(debug)
        print(f"rotator: {redact(str(exc))}", file=sys.stderr)
        return 1
    except OSError as exc:
        _debug_traceback(debug)
        if exc.filename is None:         # the environment failed us (a socket, a full disk): not a bug
            print(f"rotator: {redact(exc.strerror or str(exc))}", file=sys.stderr)
            return 1
        print(f"rotator: {redact(str(exc.filename))}: {redact(exc.strerror or str(exc))}", file=sys.stderr)
        return 2
    except UnicodeError as exc:
        _debug_traceback(debug)
        print(f"rotator: a file is not valid UTF-8 text: {redact(str(exc))}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the last line of defence: a bug, said so in one line
        _debug_traceback(debug)
        what = redact(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        hint = "" if debug else "; run again with --debug to see the traceback,"
        print(f"rotator: internal error (a bug in rotator): {what}{hint} and please report it", file=sys.stderr)
        return EX_SOFTWARE


def _parse(raw: list[str]) -> argparse.Namespace:
    """Parse the command line; everything after ``emulator`` is the emulator's, except the
    global options, which are taken out of it as from any command's."""
    passthrough: list[str] = []
    at = _command_index(raw)
    if at is not None and raw[at] == "emulator":
        raw, passthrough = raw[:at + 1], raw[at + 1:]
    args = _parser().parse_args(raw)
    if passthrough:
        passthrough = _global_parent().parse_known_args(passthrough, namespace=args)[1]
    args.args = passthrough
    for name, default in GLOBAL_DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, default)
    if args.log_level == "debug":
        args.debug = True
    return args


def _command_index(raw: list[str]) -> int | None:
    """Where the command word is in ``raw``: the first word that is neither an option nor an
    option's value."""
    i = 0
    while i < len(raw):
        word = raw[i]
        if word == "--":
            return i + 1 if i + 1 < len(raw) else None
        if word.startswith("-") and word != "-":
            i += 2 if word in _VALUED else 1
            continue
        return i
    return None


def _says_debug(raw: list[str]) -> bool:
    return any(a == "--log-level=debug" or (a == "--log-level" and b == "debug") for a, b in zip(raw, raw[1:] + [""]))


def _debug_traceback(debug: bool) -> None:
    if debug:
        import traceback

        print(redact(traceback.format_exc()).rstrip(), file=sys.stderr)


def _silence_stdout() -> None:
    """After a broken pipe, point stdout at /dev/null so the interpreter's final flush is quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _runtime(args: argparse.Namespace, **options: Any):
    from rotator.cli_ops import runtime_for

    return runtime_for(args, **options)


# --- rotate ----------------------------------------------------------------------------------

def cmd_rotate(args: argparse.Namespace) -> int:
    from rotator import audit, notify

    _check_metrics_options(args)                     # a bad --metrics-file fails before any effect
    recorder = None
    if args.metrics_file or args.pushgateway:       # what the events do not say: calls, 429s, deliveries
        from rotator.metrics_export import Recorder

        recorder = Recorder()
    runtime = _runtime(args, on_call=recorder.on_call if recorder else None)
    sink = audit.open_sink(runtime.settings.audit, args.audit_file)    # the same records as the daemon
    # [alerts] webhooks: a failed run pages from here as from the daemon (one-shot: no reminders)
    notifier = notify.Notifier.from_settings(runtime.settings.alerts, runtime.context.resolve_credential,
                                             **({"metrics": recorder, "on_delivery": recorder.delivered}
                                                if recorder else {}))
    events: list[Any] = []

    def on_event(event: Any) -> None:
        if sink is not None:
            sink(event)
        events.append(event)

    credentials: list[Any] = []
    try:
        chosen = runtime.select(args.secrets or None)
        with output.progress(len(chosen), "rotating", quiet=args.quiet) as tick:
            engine = _counting_engine(runtime, on_event, tick)
            # SIGTERM (a CronJob pod stopped, `docker stop`): finish the step in flight, release the
            # lease. Ctrl-C: the same, and the command ends as interrupted (130) once they have.
            previous = _on_signals(lambda signum, frame: engine.request_stop(),
                                   interrupt=lambda signum, frame: _interrupt(engine))
            started = time.monotonic()
            try:
                report = engine.run(args.secrets or None, force=args.force)
            finally:
                _restore_signals(previous)
            took = time.monotonic() - started
        if notifier is not None:
            notify.Alerts(notifier.send).on_run(events, report.outcomes, runtime.clock.now())
        found = None
        if recorder is not None and not engine.stopping:   # per-secret expiry and health, as the daemon exports
            from rotator import survey

            try:
                found = survey.survey(runtime, args.secrets or None, runtime.clock.now())
                credentials = found.credentials
            except Exception as exc:  # noqa: BLE001 - the metrics never fail the run
                log.warning("could not assess the secrets for the metrics: %s", redact(str(exc)))
        if not engine.stopping and found is None:
            credentials = _credentials_after_run(runtime, args.secrets or None)
    finally:
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
        print_credentials(credentials)
        changed = sum(o.status == "changed" for o in report.outcomes)
        print(f"\n{len(rows)} secret(s): {changed} changed, {len(report.failed)} failed")
        for o in report.failed:
            print(f"  {o.secret}: {redact(o.error or o.detail or 'failed')}")
        for problem in report.problems:
            print(f"  {redact(problem)}")
    sys.stdout.flush()
    return _export_metrics(args, report, events, credentials=credentials, duration=took, recorder=recorder,
                           survey=found) or report.exit_code


def _counting_engine(runtime: Any, on_event: Callable[[Any], None], tick: Callable[[str | None], None]) -> Any:
    """An Engine that ticks the progress bar as each secret's run ends. A secret run twice in
    one run (its key found gone) ticks once."""
    from rotator.engine import Engine

    return Engine(runtime, on_event=on_event, on_outcome=lambda outcome: tick(outcome.secret))


def _check_metrics_options(args: argparse.Namespace) -> None:
    """``--metrics-file`` and ``--pushgateway``, checked before the run (by
    ``rotator.metrics_export.check_destinations``): a typo must not cost a run's metrics after its
    effects. Exit 2 for a bad one, as for any usage error."""
    if not (args.metrics_file or args.pushgateway):
        return
    import importlib.util

    if importlib.util.find_spec("rotator.metrics_export") is None:
        raise UsageError("--metrics-file/--pushgateway: this build of rotator cannot export a run's metrics"
                         " (rotator.metrics_export is missing)")
    from rotator import metrics_export

    check = getattr(metrics_export, "check_destinations", None)
    if check is not None:
        check(metrics_file=args.metrics_file, pushgateway=args.pushgateway)


def _export_metrics(args: argparse.Namespace, report: Any, events: list[Any], **more: Any) -> int:
    """Export the run's metrics when asked; 0, or the exit code of a failed export (the run's
    summary is printed already): 2 for a bad path or URL, 1 when the export itself failed.
    ``more`` (the issuers' credentials, the run's duration) is passed where ``export_run`` takes it."""
    if not (args.metrics_file or args.pushgateway):
        return 0
    import inspect

    from rotator.metrics_export import export_run

    accepted = inspect.signature(export_run).parameters
    extra = {name: value for name, value in more.items() if name in accepted}
    try:
        export_run(report, events, metrics_file=args.metrics_file, pushgateway=args.pushgateway, job="rotator",
                   **extra)
    except ConfigError as exc:
        print(f"rotator: could not export the run's metrics: {redact(str(exc))}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the run happened; its metrics failing is said, not raised
        from rotator.survey import describe

        print(f"rotator: could not export the run's metrics: {describe(exc)}", file=sys.stderr)
        return max(report.exit_code, 1)
    return 0


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


def _on_signals(handler: Any, *, interrupt: Any = None) -> dict[int, Any] | None:
    """Install ``handler`` for SIGTERM and ``interrupt`` (if given) for SIGINT, in the main
    thread only; return the old handlers for :func:`_restore_signals`."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or handler is None:
        return None
    old = {signal.SIGTERM: signal.getsignal(signal.SIGTERM)}
    signal.signal(signal.SIGTERM, handler)
    if interrupt is not None:
        old[signal.SIGINT] = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, interrupt)
    return old


def _restore_signals(old: dict[int, Any] | None) -> None:
    import signal

    for signum, handler in (old or {}).items():
        signal.signal(signum, handler)


def _interrupt(engine: Any) -> None:
    """Ctrl-C during a run: every secret stops at its next step boundary (releasing its lease, so
    the next run resumes at once), then KeyboardInterrupt ends the command as interrupted. A
    second Ctrl-C while they finish is an ordinary KeyboardInterrupt."""
    import signal

    engine.request_stop()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    raise KeyboardInterrupt


# --- plan and status -------------------------------------------------------------------------

def _survey(args: argparse.Namespace, at: datetime | None):
    from rotator import survey

    runtime = _runtime(args)
    try:
        return survey.survey(runtime, args.secrets or None, at or runtime.clock.now())
    finally:
        runtime.close()


def cmd_plan(args: argparse.Namespace) -> int:
    at = args.at
    found = _survey(args, at)
    rows = [secret_row(v) for v in found.secrets]
    warnings = [s.warning for s in found.shared]
    for view in found.secrets:              # said ahead: a pause, a rotation forced outside its window
        a = view.assessment
        if a.paused is not None:
            warnings.append(f"{view.secret.name}: {a.reason}")
        if a.outside_window:
            warnings.append(f"{view.secret.name}: {a.action}")
    credentials = [credential_row(c) for c in found.credentials]
    if args.output == "json":
        print_json({"at": format_instant(at), "plan": rows, "credentials": credentials, "warnings": warnings,
                    "problems": found.problems})
        return 0
    lines, why = [], []
    for view, row in zip(found.secrets, rows):
        lines.append({**row, "key": last4(row["last4"]), "expires": short(view.assessment.expires_on),
                      "at": short(view.assessment.at) if view.assessment.at else "now"})
        for held in held_rows(view):
            lines.append({**held, "expires": short(held["expires"])})
            why.append(held["why"])
    print(table(lines, ["secret", "health", "key", "expires", "next", "at"]))
    print_credentials(found.credentials)
    print_notes(why, found.problems, warnings, why_title="held revokes")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    found = _survey(args, None)
    rows = [secret_row(v) for v in found.secrets]
    warnings = [s.warning for s in found.shared]
    bad = found.unhealthy
    if args.output == "json":
        print_json({"secrets": rows, "credentials": [credential_row(c) for c in found.credentials],
                    "warnings": warnings, "problems": found.problems, "unhealthy": bad, "healthy": not bad})
        return 1 if bad else 0
    print(table([{
        "secret": r["secret"], "health": r["health"], "phase": r["phase"], "key": last4(r["last4"]),
        "key id": r["key_id"], "created": short(v.assessment.created_on, date_only=True),
        "expires": short(v.assessment.expires_on),
        "next": f"{brief(r['next'])}, {short(v.assessment.at) if v.assessment.at else 'now'}",
    } for v, r in zip(found.secrets, rows)], ["secret", "health", "phase", "key", "key id", "created", "expires",
                                              "next"]))
    why = []
    for v in found.secrets:
        a = v.assessment
        if not a.healthy:
            why.append(f"{v.secret.name}: {a.health}: {a.reason}")
        for h in a.held[1:] if a.health == "held" else a.held:
            why.append(f"{v.secret.name}: revoke of old key {h.key.label()} held since {short(h.since)}: {h.reason}")
        if a.last_error and a.health != "failing":
            since = f" (since {short(a.error_since)})" if a.error_since else ""
            why.append(f"{v.secret.name}: last error{since}: {a.last_error}")
    print_credentials(found.credentials)
    print_notes(why, found.problems, warnings)
    sick = sum(not v.assessment.healthy for v in found.secrets)
    sick_credentials = sum(not c.healthy for c in found.credentials)
    print(f"\n{len(found.secrets)} secret(s): {sick} not healthy; {len(found.credentials)} issuer credential(s):"
          f" {sick_credentials} not healthy" + (f"; {len(found.problems)} issuer problem(s)" if found.problems else ""))
    return 1 if bad else 0


# --- the other commands ----------------------------------------------------------------------

def cmd_check(args: argparse.Namespace) -> int:
    import importlib.util

    if importlib.util.find_spec("rotator.check") is None:
        raise UsageError("'rotator check' is not available in this build (rotator.check is missing);"
                         " 'rotator plan' loads and validates the configuration meanwhile")
    from rotator import check

    return check.cmd_check(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from rotator.demo import run_demo

    return run_demo(days=args.days, quiet=args.quiet, output=args.output)


def cmd_emulator(args: argparse.Namespace) -> int:
    from rotator import registry

    serve = registry.load("emulator", "quivaworks-cli", "emulator")
    return int(serve([*args.args, *(["--quiet"] if args.quiet else [])], prog="rotator emulator") or 0)


def cmd_daemon(args: argparse.Namespace) -> int:
    from rotator import config
    from rotator.daemon import run_daemon

    return run_daemon(config.load(args.config), http_address=args.http_address, audit_path=args.audit_file)


def cmd_completion(args: argparse.Namespace) -> int:
    """The completion script for ``args.shell``, generated by shtab from this very parser."""
    import shtab

    parser = _parser()
    _mark_completions(parser, shtab)
    print(shtab.complete(parser, shell=args.shell), end="")
    return 0


#: Secret names for SECRET arguments: the hidden helper command lists them from the config
#: named on the command line being completed (-c/--config), else from $ROTATOR_CONFIG.
_SECRET_NAMES = {
    "bash": "_rotator_secret_names",
    "zsh": "_rotator_secret_names",
    "fish": "(__rotator_secret_names)",
    "preamble": {
        "bash": """\
_rotator_secret_names() {
  local i config=()
  for ((i = 1; i < COMP_CWORD; i++)); do
    case "${COMP_WORDS[i]}" in
      -c|--config) config=(--config "${COMP_WORDS[i+1]}") ;;
      --config=*) config=(--config "${COMP_WORDS[i]#--config=}") ;;
    esac
  done
  compgen -W "$(command rotator "${config[@]}" %(helper)s 2>/dev/null)" -- "$1"
}""",
        "zsh": """\
_rotator_secret_names() {
  local -a names config
  local i
  for ((i = 2; i < CURRENT; i++)); do
    case ${words[i]} in
      -c|--config) config=(--config ${words[i+1]}) ;;
      --config=*) config=(--config ${words[i]#--config=}) ;;
    esac
  done
  names=(${(f)"$(command rotator $config %(helper)s 2>/dev/null)"})
  compadd -a names
}""",
        "fish": """\
function __rotator_secret_names
  set -l tokens (commandline -opc)
  set -l config
  set -l i 1
  while test $i -le (count $tokens)
    switch $tokens[$i]
      case -c --config
        set i (math $i + 1)
        set config --config $tokens[$i]
      case '--config=*'
        set config --config (string replace -- '--config=' '' $tokens[$i])
    end
    set i (math $i + 1)
  end
  command rotator $config %(helper)s 2>/dev/null
end""",
    },
}


def _mark_completions(parser: argparse.ArgumentParser, shtab: Any) -> None:
    """SECRET arguments complete secret names; -c/--config and the path options complete files."""
    secret_names = {**_SECRET_NAMES, "preamble": {shell: text % {"helper": COMPLETE_SECRETS}
                                                  for shell, text in _SECRET_NAMES["preamble"].items()}}
    paths = {"--config", "--audit-file", "--metrics-file", "--state-file", "--admin-key-file"}
    for action in _all_actions(parser):
        if not action.option_strings and action.dest in ("secrets", "secret"):
            action.complete = secret_names  # type: ignore[attr-defined]
        elif paths & set(action.option_strings):
            action.complete = shtab.FILE  # type: ignore[attr-defined]


def _all_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    found = []
    for action in parser._actions:
        found.append(action)
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                found += _all_actions(child)
    return found


def cmd_complete_secrets(args: argparse.Namespace) -> int:
    """The names of the configured secrets, one a line, for the completion scripts: read straight
    from the TOML file (no validation, no credential, no network), nothing at all on any error."""
    import tomllib

    path = args.config or os.environ.get("ROTATOR_CONFIG")      # rotator.config.CONFIG_ENV, not imported: fast
    try:
        with open(os.path.expanduser(path), "rb") as f:
            data = tomllib.load(f)
        names = [s["name"] for s in data.get("secrets", []) if isinstance(s, dict) and isinstance(s.get("name"), str)]
    except Exception:  # noqa: BLE001 - completion offers nothing rather than an error mid-line
        return 0
    print("\n".join(names))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "rotate": cmd_rotate, "plan": cmd_plan, "status": cmd_status, "check": cmd_check, "demo": cmd_demo,
    "emulator": cmd_emulator, "daemon": cmd_daemon, "completion": cmd_completion,
    COMPLETE_SECRETS: cmd_complete_secrets,
}


def _ops_commands() -> None:
    from rotator import cli_ops

    COMMANDS.update(cli_ops.COMMANDS)


_ops_commands()


if __name__ == "__main__":
    sys.exit(main())
