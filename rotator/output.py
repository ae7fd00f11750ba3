"""What the commands print, shared by ``rotator.cli``, ``rotator.cli_ops`` and ``rotator.demo``:
tables, JSON, the rows that describe secrets and issuer credentials, and the progress bar.

Everything here is redacted on the way out: a key is shown as its last four characters and id,
and any string shaped like a key is masked. Nothing here imports the command modules, so they
can all import it (no import cycle between them).
"""

from __future__ import annotations

import json
import logging
import sys
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Callable, Iterator, TextIO

from rotator.redact import redact
from rotator.timeutil import format_instant


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain aligned table; cells are redacted and cut to a readable width."""
    def cell(value: Any) -> str:
        text = "-" if value in (None, "", []) else str(value)
        text = redact(text)
        return text if len(text) <= 60 else text[:57] + "..."

    grid = [[c.upper() for c in columns]] + [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(line[i]) for line in grid) for i in range(len(columns))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in grid)


def print_json(data: Any, out: TextIO | None = None) -> None:
    print(redact(json.dumps(data, indent=2, default=str)), file=out or sys.stdout)


def secret_row(view: Any) -> dict[str, Any]:
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
    """One issuer's own credential (the admin key rotator signs in with), for ``-o json``."""
    return {
        "issuer": c.issuer, "health": c.health, "healthy": c.healthy, "reason": c.reason, "key": c.key,
        "key_id": c.key_id, "last4": c.last4, "name": c.name, "created": format_instant(c.created_on),
        "expires": format_instant(c.expires_on), "managed_as": c.managed_as, "matches": c.matches,
    }


def held_rows(view: Any) -> list[dict[str, Any]]:
    """A held revoke as its own plan line: the next run asks the gate again."""
    return [{"secret": view.secret.name, "health": "held", "key": f"old …{h.key.last4}", "expires": h.key.expires_on,
             "next": "revoke the old key once nothing holds it", "at": "next run",
             "why": f"{view.secret.name}: revoke of old key {h.key.label()} held since {short(h.since)}: {h.reason}"}
            for h in view.assessment.held]


def print_credentials(credentials: list[Any]) -> None:
    """The issuers' admin keys under a command's table (nothing when there are none)."""
    if not credentials:
        return
    print("\n" + table([{
        "issuer": c.issuer, "credential": last4(c.last4), "key id": c.key_id, "health": c.health,
        "expires": short(c.expires_on), "managed": f"as secret {c.managed_as}" if c.managed_as else "no",
    } for c in credentials], ["issuer", "credential", "key id", "health", "expires", "managed"]))
    for c in credentials:
        print(f"  {c.issuer}: {redact(c.reason)}")


def print_notes(why: list[str], problems: list[str], warnings: list[str], *, why_title: str = "why") -> None:
    for title, lines in ((why_title, why), ("problems", problems), ("warnings", warnings)):
        if lines:
            print(f"\n{title}:")
            for line in lines:
                print(f"  {redact(line)}")


def brief(action: str) -> str:
    """The gist of a next action for a text table ('rotate now (due: ...)' -> 'rotate now')."""
    return action.split(" (", 1)[0].split(":", 1)[0]


def last4(value: str | None) -> str | None:
    return f"…{value}" if value else None


def short(moment: datetime | None, *, date_only: bool = False) -> str | None:
    """An instant for a text table: '2027-03-04 22:11Z' (or the date alone)."""
    if moment is None:
        return None
    try:
        return moment.strftime("%Y-%m-%d" if date_only else "%Y-%m-%d %H:%MZ")
    except ValueError:
        return format_instant(moment)


# --- progress --------------------------------------------------------------------------------

def wants_progress(quiet: bool = False, stream: TextIO | None = None) -> bool:
    """A bar only for a person watching: stderr is a terminal and ``--quiet`` was not given.
    A CronJob's or a pipe's stderr gets nothing extra."""
    stream = stream if stream is not None else sys.stderr
    try:
        return not quiet and stream.isatty()
    except (AttributeError, ValueError):      # a closed or unusual stream
        return False


@contextmanager
def progress(total: int, description: str, *, quiet: bool = False,
             stream: TextIO | None = None) -> Iterator[Callable[[str | None], None]]:
    """A progress bar on stderr over ``total`` secrets when :func:`wants_progress`; yields
    ``tick(name)``, to call once per secret done (a name counted twice counts once; the bar never
    runs past ``total``). Without a terminal ``tick`` does nothing and nothing is imported.

    rich's ``Progress`` draws it (rather than tqdm): a maintained library whose live display
    redraws the bar below whatever is written to stderr while it runs — log lines (the log
    handler is pointed at its console for that time) and notes printed to ``sys.stderr`` (rich
    redirects it) — so they do not tear each other; the bar is transient: it is erased when
    done, leaving only the command's own output.
    """
    stream = stream if stream is not None else sys.stderr
    if total <= 0 or not wants_progress(quiet, stream):
        yield lambda name=None: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(file=stream, force_terminal=True, highlight=False)
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[last]}"), TimeElapsedColumn(), console=console, transient=True,
                   redirect_stderr=True, redirect_stdout=False)
    task = bar.add_task(description, total=total, last="")
    seen: set[str] = set()
    done = [0]

    def tick(name: str | None = None) -> None:
        if name is not None:
            if name in seen:
                return
            seen.add(name)
        if done[0] >= total:
            return
        done[0] += 1
        bar.update(task, advance=1, last=redact(name or ""))

    handlers = _log_handlers_on(stream)
    with bar:
        for handler in handlers:               # log lines go above the bar, not through it
            handler.setStream(_ConsoleWriter(console))
        bar.refresh()
        try:
            yield tick
        finally:
            for handler in handlers:
                handler.setStream(stream)


def _log_handlers_on(stream: TextIO) -> list[logging.StreamHandler]:
    return [h for h in logging.getLogger().handlers
            if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is stream]


class _ConsoleWriter:
    """A file-like object that prints through a rich console (above its live display)."""

    def __init__(self, console: Any) -> None:
        self._console = console

    def write(self, text: str) -> int:
        if text.strip():
            self._console.print(text.rstrip("\n"), markup=False, highlight=False, soft_wrap=True)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return True
