"""Logging set-up: readable lines on a terminal, JSON lines otherwise; everything redacted.

Every handler carries :class:`rotator.redact.RedactingFilter`, so any key value the process has
held (and any string shaped like a key) is masked in messages, arguments and tracebacks. The
formatters mask what they produce again only for a record that filter did not see (the rest of a
line is the time, the level and the logger's name): each record is scanned once.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import TextIO

from rotator.redact import RedactingFilter, redact

#: Set on a record once :class:`RedactingFilter` (this module's subclass) has masked it.
REDACTED = "_rotator_redacted"


class _Redacting(RedactingFilter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, REDACTED, False):
            super().filter(record)
            setattr(record, REDACTED, True)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (+ exception text)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_text:
            entry["exception"] = record.exc_text
        line = json.dumps(entry, ensure_ascii=False)
        return line if getattr(record, REDACTED, False) else redact(line)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        return line if getattr(record, REDACTED, False) else redact(line)


def setup(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> logging.Handler:
    """Route rotator's and the providers' logs through one redacting handler."""
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "text" if stream.isatty() else "json"
    handler = logging.StreamHandler(stream)
    handler.addFilter(_Redacting())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
    handler.formatter.converter = __import__("time").gmtime
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_rotator", False):
            root.removeHandler(old)
    handler._rotator = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Third-party loggers print URLs (httpx: ?key=...) and headers; keep them to warnings.
    for noisy in ("httpx", "httpcore", "botocore", "boto3", "urllib3", "hvac"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return handler
