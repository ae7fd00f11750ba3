"""The audit trail: one JSON line per engine action, appended to a file and/or printed to stdout.

Both ``rotator rotate`` and ``rotator daemon`` write it, from the engine's :class:`Event`\\ s, so
the two modes leave the same records. A record names the secret, the action, the rotation id,
the key (id, last 4 characters, fingerprint), the runner, the result and the error — never a
value: the key fields come from ``KeyRef``\\ s, which hold no value, and every line passes the
redactor besides.

Durability: the file is opened with ``O_APPEND`` (each record is one ``write(2)`` at the end of
the file, so several processes can share it without interleaving) and, with ``fsync = true``
(the default), every record is on disk before :meth:`AuditSink.write` returns, so an intent
record is durable before its effect starts. Writers that arrive together share one ``fsync``
(a group commit: a worker whose record an fsync in flight did not cover waits for it, then
fsyncs everything written so far once), so a run with many workers pays far fewer fsyncs than
records.
The trail is never truncated or rewritten by rotator.

Log rotation (logrotate, newsyslog, a person with ``mv``): before each record the sink compares
the path with the file it holds open (the ``logging.handlers.WatchedFileHandler`` pattern, one
``stat(2)`` per record). Moved away or deleted (logrotate ``create``): it finishes nothing on the
old file, opens the path afresh (creating it, mode 0600, when logrotate has not) and writes the
record there — a record is in the old file or in the new one, never lost and never in both.
Truncated in place (``copytruncate``): ``O_APPEND`` already puts the next record at the new end,
so nothing needs reopening; logrotate's own copy-then-truncate window can still lose what is
written between the two, which is why docs/operations.md recommends ``create``. No signal and no
daemon change is involved, so ``rotate``, the daemon and several processes sharing the file all
follow a rotation by themselves.
"""

from __future__ import annotations

import json
import logging
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

log = logging.getLogger("rotator.audit")


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
    """Callable event observer that appends audit records. Thread-safe; ``close()`` when done.

    Follows a log rotation of its file by itself (see the module docstring): :meth:`write`
    reopens the path when it no longer names the open file.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, stdout: bool = False,
                 fsync: bool = True, stream: TextIO | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.fsync = fsync
        self._stream = stream if stream is not None else (sys.stdout if stdout else None)
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None      # (st_dev, st_ino) of the open file
        self.reopened = 0                                   # how often a rotation was followed
        self._written = 0                                   # records written to the file so far
        self._synced = 0                                    # ... of which an fsync has covered
        self._syncing = False                               # an fsync is in flight
        self._durable = threading.Condition()               # guards the three above's sync side
        self.fsyncs = 0
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd, self._identity = self._open()

    def __call__(self, event: Event) -> None:
        self.write(event)

    def write(self, event: Event) -> None:
        line = line_of(event)
        data = line.encode("utf-8")
        mine = 0
        with self._lock:
            if self._fd is not None:
                self._follow_rotation()
                written = os.write(self._fd, data)
                while written < len(data):            # a short write (rare): finish the record
                    written += os.write(self._fd, data[written:])
                self._written += 1
                mine = self._written
            if self._stream is not None:
                self._stream.write(line)
                self._stream.flush()
        if mine and self.fsync:
            self._durable_through(mine)

    def _durable_through(self, mine: int) -> None:
        """Return once an fsync begun after record ``mine`` was written has completed."""
        with self._durable:
            while self._synced < mine and self._syncing:
                self._durable.wait()
            if self._synced >= mine:
                return
            self._syncing = True
        covered = 0
        try:
            with self._lock:                  # the file open now, and how many records it holds
                fd, covered = self._fd, self._written
            if fd is not None:
                try:
                    os.fsync(fd)
                except OSError:
                    with self._lock:        # rotated meanwhile: the old file was fsynced before its close
                        if self._fd == fd:
                            raise
                self.fsyncs += 1
        finally:
            with self._durable:
                self._synced = max(self._synced, covered)
                self._syncing = False
                self._durable.notify_all()

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    # --- log rotation ------------------------------------------------------------------------------

    def _open(self) -> tuple[int, tuple[int, int]]:
        assert self.path is not None
        created = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        st = os.fstat(fd)
        if created and self.fsync:
            _fsync_directory(self.path.parent)      # the new file's name survives a crash too
        return fd, (st.st_dev, st.st_ino)

    def _follow_rotation(self) -> None:
        """Reopen the path when it names another file than the one open (moved, deleted). Called
        with the lock held, before each record. A truncated file needs nothing: O_APPEND writes
        at its new end. If the path cannot be opened (a directory made read-only), the record
        goes to the file still open — kept rather than lost — and the next record tries again."""
        assert self.path is not None and self._fd is not None
        try:
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == self._identity:
                return
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("audit trail %s: cannot check for a log rotation: %s", self.path, exc.strerror)
            return
        try:
            fd, identity = self._open()
        except OSError as exc:
            log.error("audit trail %s was moved or deleted and cannot be reopened (%s); writing to the"
                      " file still open", self.path, exc.strerror)
            return
        old, self._fd, self._identity = self._fd, fd, identity
        self.reopened += 1
        try:
            if self.fsync:                    # what the old file holds is durable before it is let go
                os.fsync(old)
                with self._durable:
                    self._synced = max(self._synced, self._written)
            os.close(old)
        except OSError:
            pass
        log.info("audit trail %s was rotated: writing to the new file", self.path)


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def open_sink(settings: Any, path: str | os.PathLike[str] | None = None) -> AuditSink | None:
    """The sink ``[audit]`` asks for (``path`` overrides the file); None when auditing is off."""
    path = path or settings.path
    if path is None and not settings.stdout:
        return None
    try:
        return AuditSink(path, stdout=settings.stdout, fsync=settings.fsync)
    except OSError as exc:
        raise ConfigError(f"audit.path: cannot open {path} for appending: {exc.strerror}") from None
