"""Masks key values wherever text leaves the process.

Every ``Secret`` registers its value here when it is created, so anything that has ever been held
as a secret in this process is masked in log records, exception text and CLI output. Known key
shapes are masked too, as a second line of defence for values that never became a ``Secret``.
"""

from __future__ import annotations

import logging
import re
import threading

MASK = "[REDACTED]"

# QuivaWorks shapes (ms-<hex>, ms_<...>) and AWS secret access keys (40 chars of base64 alphabet).
_SHAPES = re.compile(r"\bms[-_][A-Za-z0-9]{12,}|(?<![A-Za-z0-9/+=])[A-Za-z0-9/+=]{40}(?![A-Za-z0-9/+=])")

_PREFIX = 8          # values shorter than this are not masked (they would mangle ordinary text)

_lock = threading.Lock()
# first 8 characters -> values starting with them, longest first. Replaced, never mutated, so
# readers need no lock: a scan of the text costs one dict lookup per character it looks at, however
# many values are remembered (an alternation regex of thousands of values costs seconds to compile).
_by_prefix: dict[str, tuple[str, ...]] = {}
# Runs of 8 or more characters that occur in some remembered value: a remembered value lies
# wholly inside one, so only they are scanned (in a log line, a few words, not every position).
_chars: frozenset[str] = frozenset()
_runs: re.Pattern[str] | None = None


# value -> what it is shown as instead of MASK (an identifier that is part of a value: an AWS
# access key id shows as "AKIA…WXYZ", enough to find it in the console, never the whole of it)
_shown: dict[str, str] = {}


def remember(value: str, *, shown: str | None = None) -> None:
    """Mask ``value`` from now on (as ``shown`` when given, else as MASK). Values under 8
    characters are not masked."""
    global _by_prefix, _chars, _runs
    if len(value) < _PREFIX:
        return
    head = value[:_PREFIX]
    with _lock:
        if shown is not None:
            _shown[value] = shown
        known = _by_prefix.get(head, ())
        if value in known:
            return
        if not _chars.issuperset(value):
            _chars = _chars.union(value)
            _runs = re.compile("[" + "".join(map(re.escape, sorted(_chars))) + "]{%d,}" % _PREFIX)
        updated = dict(_by_prefix)
        updated[head] = tuple(sorted((*known, value), key=len, reverse=True))
        _by_prefix = updated


def _mask_known(text: str) -> str:
    table, runs = _by_prefix, _runs      # in this order: remember() publishes _runs before _by_prefix
    if not table or runs is None:
        return text
    out: list[str] = []
    start = 0
    for run in runs.finditer(text):
        i, stop = run.start(), run.end() - _PREFIX
        while i <= stop:
            candidates = table.get(text[i:i + _PREFIX])
            if candidates:
                match = next((v for v in candidates if text.startswith(v, i)), None)
                if match is not None:
                    out.append(text[start:i])
                    out.append(_shown.get(match, MASK))
                    i += len(match)
                    start = i
                    continue
            i += 1
    if not out:
        return text
    out.append(text[start:])
    return "".join(out)


def redact(text: str) -> str:
    """Return ``text`` with every remembered value and every known key shape masked."""
    if not text:
        return text
    return _SHAPES.sub(MASK, _mask_known(text))


class RedactingFilter(logging.Filter):
    """A logging filter that renders the message and any traceback, then masks them."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg, record.args = redact(message), None
        if record.exc_info:
            formatter = logging.Formatter()
            record.exc_text = redact(formatter.formatException(record.exc_info))
            record.exc_info = None
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True
