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

_lock = threading.Lock()
_values: set[str] = set()
_pattern: re.Pattern[str] | None = None


def remember(value: str) -> None:
    """Mask ``value`` from now on. Very short values are not masked (they would mangle text)."""
    global _pattern
    if len(value) < 8:
        return
    with _lock:
        if value not in _values:
            _values.add(value)
            _pattern = None


def _known() -> re.Pattern[str] | None:
    global _pattern
    with _lock:
        if _pattern is None and _values:
            alternatives = sorted(_values, key=len, reverse=True)
            _pattern = re.compile("|".join(re.escape(v) for v in alternatives))
        return _pattern


def redact(text: str) -> str:
    """Return ``text`` with every remembered value and every known key shape masked."""
    if not text:
        return text
    known = _known()
    if known is not None:
        text = known.sub(MASK, text)
    return _SHAPES.sub(MASK, text)


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
