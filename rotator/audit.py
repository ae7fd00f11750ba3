"""The audit trail: one JSON line per engine action, appended to a file and/or printed to stdout.

Both ``rotator rotate`` and ``rotator daemon`` write it, from the engine's :class:`Event`\\ s, so
the two modes leave the same records. A record names the secret, the action, the rotation id,
the key (id, last 4 characters, fingerprint), the runner, the result and the error — never a
value: the key fields come from ``KeyRef``\\ s, which hold no value, and every line passes the
redactor besides.

Durability: the file is opened with ``O_APPEND`` (each record is one ``write(2)`` at the end of
the file, so several processes can share it without interleaving) and, with ``fsync = true``
(the default), fsynced after every record; a rotation writes about ten, so the cost is small.
The trail is never truncated or rewritten by rotator. Rotate it with ``logrotate``'s
``copytruncate``: after a rename a running daemon keeps appending to the renamed file until it
restarts.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path
from typing import Any, TextIO

from rotator.engine import Event
from rotator.errors import ConfigError
from rotator.redact import redact
from rotator.timeutil import format_instant

SCHEMA = "rotator.audit/1"


def record_of(event: Event) -> dict[str, Any]:
    """The audit record of one event (a plain dict, ready for ``json.dumps``)."""
    key_id, last4 = event.key_id, event.last4
    failed = event.result == "error"
    return {
        "schema": SCHEMA,
        "time": format_instant(event.at),
        "runner": event.runner,
        "secret": event.secret,
        "action": event.action,
        "rotation_id": event.rotation_id,
        "key_id": key_id,
        "key_last4": last4,
        "fingerprint": event.fingerprint,
        "result": event.result,
        "error": event.detail if failed else None,
        "detail": event.detail,
    }


def line_of(event: Event) -> str:
    return redact(json.dumps(record_of(event), ensure_ascii=False, separators=(",", ":"))) + "\n"


class AuditSink:
    """Callable event observer that appends audit records. Thread-safe; ``close()`` when done."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *, stdout: bool = False,
                 fsync: bool = True, stream: TextIO | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.fsync = fsync
        self._stream = stream if stream is not None else (sys.stdout if stdout else None)
        self._lock = threading.Lock()
        self._fd: int | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def __call__(self, event: Event) -> None:
        self.write(event)

    def write(self, event: Event) -> None:
        line = line_of(event)
        data = line.encode("utf-8")
        with self._lock:
            if self._fd is not None:
                written = os.write(self._fd, data)
                while written < len(data):            # a short write (rare): finish the record
                    written += os.write(self._fd, data[written:])
                if self.fsync:
                    os.fsync(self._fd)
            if self._stream is not None:
                self._stream.write(line)
                self._stream.flush()

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def open_sink(settings: Any, path: str | os.PathLike[str] | None = None) -> AuditSink | None:
    """The sink ``[audit]`` asks for (``path`` overrides the file); None when auditing is off."""
    path = path or settings.path
    if path is None and not settings.stdout:
        return None
    try:
        return AuditSink(path, stdout=settings.stdout, fsync=settings.fsync)
    except OSError as exc:
        raise ConfigError(f"audit.path: cannot open {path} for appending: {exc.strerror}") from None
