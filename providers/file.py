"""A backend that keeps each target in a local JSON file. See docs/backends/file.md.

Compare-and-swap: the version token is the sha256 of the file's bytes, compared under an exclusive
``flock`` on a sidecar lock file; the new content goes to a private temp file that is fsynced and
renamed over the old one, so readers see the old file or the new one, never a mix.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import re
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from pydantic import Field, field_validator

from rotator.errors import (
    BackendError,
    BackendPermissionError,
    Conflict,
    CorruptPayload,
    SecretMissing,
)
from rotator.interfaces import Finding, ProviderContext
from rotator.models import BackendCapabilities, KeyRef, RotationRecord, Secret, Snapshot
from rotator.validation import StrictModel, parse
from rotator.values import Layout

from rotator_providers.document import (
    Document,
    LayoutMismatch,
    NothingPending,
    PayloadError,
    TargetFields,
    describe,
    frozen_fields,
    kind,
    layout_of,
    meta_fields,
    reserved_field,
)

_TRANSIENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EAGAIN, errno.EBUSY, errno.EINTR, errno.EIO})
_MODE = re.compile(r"0?o?([0-7]{3})")


class FileSettings(StrictModel):
    directory: Path | None = None
    create_if_missing: bool = True
    mode: str = "0600"

    @field_validator("directory")
    @classmethod
    def _no_nul(cls, path: Path | None) -> Path | None:
        if path is not None and "\0" in str(path):
            raise ValueError("must not contain a NUL character")
        return path

    @field_validator("mode")
    @classmethod
    def _private_octal(cls, text: str) -> str:
        bits = _mode_bits(text)
        if bits is None:
            raise ValueError("expected an octal file mode such as '0600'")
        if bits & 0o007:
            raise ValueError("must not grant any access to other users (the file holds key values)")
        if bits & 0o600 != 0o600:
            raise ValueError("the owner needs read and write access")
        return text

    @property
    def mode_bits(self) -> int:
        return _mode_bits(self.mode)  # type: ignore[return-value]  # validated above


def _mode_bits(text: str) -> int | None:
    match = _MODE.fullmatch(text)
    return None if match is None else int(match.group(1), 8)


class FileTargetSpec(StrictModel):
    path: str = Field(min_length=1)
    field: str = Field(default="api_key", min_length=1)
    fields: TargetFields = None

    @field_validator("path")
    @classmethod
    def _no_nul(cls, text: str) -> str:
        if "\0" in text:
            raise ValueError("must not contain a NUL character")
        if text.endswith(("/", "/.", "/..")) or text.strip() in (".", ".."):
            raise ValueError("names a directory, not a file (give a file's path, e.g. 'web/quiva.json')")
        return text

    @field_validator("field")
    @classmethod
    def _not_reserved(cls, text: str) -> str:
        return reserved_field(text)


@dataclasses.dataclass(frozen=True)
class FileTarget:
    path: Path
    field: str
    #: (part, JSON field) pairs when the value has several parts; None for a plain value.
    fields: tuple[tuple[str, str], ...] | None = None

    @property
    def label(self) -> str:
        return f"file:{self.path}"

    @property
    def layout(self) -> Layout:
        return layout_of(self.field, self.fields)

    @property
    def addresses(self) -> frozenset[tuple[str, ...]]:
        """The file this target addresses (see :class:`rotator.interfaces.Target`): its path with
        every symlink and ``..`` resolved, so ``a/../b.json``, ``./b.json``, a path through a
        symlinked directory and the absolute path (from any backend's ``directory``) are one place.
        Resolved when asked, so equality and hashing stay those of ``path`` and the fields."""
        return frozenset({("file", os.path.realpath(self.path))})

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(f".{self.path.name}.lock")


class _Problem(Exception):
    """Raised inside the backend; turned into ``kind`` (a BackendError class) at the edge."""

    def __init__(self, kind: type[BackendError], message: str) -> None:
        super().__init__(message)
        self.kind = kind


class FileBackend:
    """Backend ``file``: one JSON file per target, on a local filesystem."""

    capabilities = BackendCapabilities(holds_record=True, keeps_previous=True)

    def __init__(self, name: str, settings: Mapping[str, Any], context: ProviderContext) -> None:
        self.name = name
        self._settings = parse(FileSettings, settings, f"backends.{name}")
        directory = self._settings.directory or Path.cwd()
        self._directory = Path(os.path.abspath(directory.expanduser()))
        self._mode = self._settings.mode_bits
        self._context = context

    def target(self, spec: Mapping[str, Any]) -> FileTarget:
        entry = {key: value for key, value in spec.items() if key != "backend"}
        parsed = parse(FileTargetSpec, entry, f"backends.{self.name} target")
        path = Path(os.path.abspath(self._directory / Path(parsed.path).expanduser()))
        return FileTarget(path=path, field=parsed.field, fields=frozen_fields(parsed.fields))

    def read(self, target: FileTarget) -> Snapshot:
        with self._edge("read", target):
            raw = _read_bytes(target.path)
            if raw is None:
                return Snapshot()
            return _parse(raw, target.layout).snapshot(_digest(raw))

    def write_record(self, target: FileTarget, record: RotationRecord, *, expect: str | None) -> str:
        return self._commit("write_record", target, record, expect, lambda doc: doc)

    def stage(self, target: FileTarget, value: Secret, record: RotationRecord, *,
              expect: str | None) -> str:
        return self._commit("stage", target, record, expect, lambda doc: doc.evolve(pending=value))

    def promote(self, target: FileTarget, record: RotationRecord, *, expect: str) -> str:
        return self._commit("promote", target, record, expect, Document.promoted)

    def discard_pending(self, target: FileTarget, record: RotationRecord, *, expect: str) -> str:
        return self._commit("discard_pending", target, record, expect, lambda doc: doc.evolve(pending=None))

    def deploy(self, target: FileTarget, current: Secret, previous: Secret | None, meta: KeyRef) -> None:
        def apply(doc: Document) -> Document:
            return doc.evolve(current=current, previous=previous, meta=meta_fields(meta, last4=True))

        self._update("deploy", target, apply, cas=False)

    def delete(self, target: FileTarget) -> None:
        with self._edge("delete", target):
            if not target.path.parent.is_dir():
                return
            with _held(_lock(target.lock_path)):
                _remove_stale_temps(target.path)
                _unlink_if_present(target.path)
                _unlink_if_present(target.lock_path)

    def close(self) -> None:
        pass

    def check_access(self, target: FileTarget, *, primary: bool, exists: bool) -> list[Finding]:
        """For ``rotator check`` (:class:`rotator.interfaces.BackendAccessCheck`): what a write
        here needs, found without writing: the directory (it must take a lock file, a temp file
        and a rename), the lock file's flock, and the file's mode."""
        findings: list[Finding] = []
        directory = target.path.parent
        creatable = self._settings.create_if_missing
        if not directory.is_dir():
            if not creatable:
                why = f"directory {directory} does not exist and create_if_missing is false"
                findings.append(Finding("write", "fail", f"{why}; create it (mode 0700) or set create_if_missing"))
                return findings + ([Finding("cas", "fail", why)] if primary else [])
            ancestor = _existing_ancestor(directory)
            ok, why = _writable_directory(ancestor)
            detail = (f"directory {directory} does not exist; the first write creates it under {ancestor}"
                      if ok else f"directory {directory} does not exist and {ancestor} {why}")
            findings.append(Finding("write", "ok" if ok else "fail", detail))
            if primary:
                findings.append(Finding("cas", "ok" if ok else "fail", "flock on a lock file beside the file,"
                                        " sha256 of the content as the version, atomic rename" if ok else detail))
            return findings
        ok, why = _writable_directory(directory)
        if not exists and not creatable:
            findings.append(Finding("write", "fail", f"{target.path} does not exist and create_if_missing is false;"
                                                     " put the file there or set create_if_missing = true"))
        elif ok:
            findings.append(Finding("write", "ok", f"directory {directory} is writable (lock file, temp file,"
                                                   " atomic rename)"))
        else:
            findings.append(Finding("write", "fail", f"directory {directory} {why}: rotator writes a lock file and a"
                                                     " temp file there, then renames it over the file"))
        if primary:
            findings.append(self._check_lock(target, ok, why))
        if exists:
            findings.extend(self._check_mode(target))
        return findings

    # --- internals -------------------------------------------------------------------------

    def _check_lock(self, target: FileTarget, writable: bool, why: str) -> Finding:
        """The primary's compare-and-swap: flock on the lock file, then an atomic rename. The lock
        file is created by the first write; when it exists, try a shared, non-blocking flock."""
        lock = target.lock_path
        if not writable:
            return Finding("cas", "fail", f"directory {target.path.parent} {why}: no lock file, no rename")
        try:
            fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            return Finding("cas", "ok", "flock on a lock file beside the file (made by the first write),"
                                        " sha256 of the content as the version, atomic rename")
        except OSError as exc:
            return Finding("cas", "fail", f"cannot open the lock file {lock}: {exc.strerror}")
        try:
            if not os.access(lock, os.R_OK | os.W_OK):
                return Finding("cas", "fail", f"the lock file {lock} is not readable and writable by rotator;"
                                              " remove it (rotator makes a new one) or fix its owner")
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                fcntl.flock(fd, fcntl.LOCK_UN)
            except BlockingIOError:
                pass                    # another runner holds it right now: flock works here
            except OSError as exc:
                return Finding("cas", "fail", f"flock does not work on {lock} ({exc.strerror}); put the"
                                              " file on a filesystem that supports it")
        finally:
            os.close(fd)
        return Finding("cas", "ok", "flock on the lock file, sha256 of the content as the version, atomic rename")

    def _check_mode(self, target: FileTarget) -> list[Finding]:
        """The file's permission bits against the configured mode (the next write sets them)."""
        try:
            bits = os.stat(target.path).st_mode & 0o777
        except OSError as exc:
            return [Finding("mode", "warn", f"cannot stat {target.path}: {exc.strerror}")]
        if bits & ~self._mode & 0o077:
            return [Finding("mode", "warn", f"{target.path} has mode {bits:04o}, more open than the configured"
                                            f" {self._mode:04o} (it holds key values); the next write sets"
                                            f" {self._mode:04o}, or chmod it now")]
        return [Finding("mode", "ok", f"mode {bits:04o}")]


    def _commit(self, op: str, target: FileTarget, record: RotationRecord, expect: str | None,
                change: Callable[[Document], Document]) -> str:
        """A primary write: apply ``change``, save ``record``, describe current in the meta."""

        def apply(doc: Document) -> Document:
            doc = change(doc)
            meta = meta_fields(describe(doc.current, record.current), last4=True)
            return doc.evolve(record=record.to_dict(), meta=meta or None)

        return self._update(op, target, apply, cas=True, expect=expect)

    def _update(self, op: str, target: FileTarget, change: Callable[[Document], Document], *,
                cas: bool, expect: str | None = None) -> str:
        """Read, compare (when ``cas``), change and atomically replace, all under the lock."""
        with self._edge(op, target):
            with _held(self._lock_in_place(target)):
                raw = _read_bytes(target.path)
                found = _version(raw)
                if cas and found != expect:
                    raise _Problem(Conflict, f"changed since it was read (expected {_short(expect)},"
                                             f" found {_short(found)})")
                if raw is None and not self._settings.create_if_missing:
                    raise _Problem(SecretMissing, "does not exist and create_if_missing is false")
                before = Document() if raw is None else _parse(raw, target.layout)
                data = _encode(change(before), target.layout)
                if data != raw:
                    _replace_atomically(target.path, data, self._mode)
                return _digest(data)

    def _lock_in_place(self, target: FileTarget) -> int:
        """:func:`_lock` on the target's lock file, making its directory first when it is missing
        (and allowed): the directory is looked at only when the lock file cannot be opened, not
        on every write."""
        try:
            return _lock(target.lock_path)
        except FileNotFoundError:
            directory = target.path.parent
            if not directory.is_dir():       # (else another writer made it since: try again)
                if not self._settings.create_if_missing:
                    raise _Problem(SecretMissing, f"directory {directory} does not exist and"
                                                  " create_if_missing is false") from None
                _make_private_dirs(directory)
            return _lock(target.lock_path)

    @contextmanager
    def _edge(self, op: str, target: FileTarget) -> Iterator[None]:
        """Report the call and translate every failure into the rotator error tree."""
        try:
            yield
        except BaseException as exc:
            self._context.on_call(self.name, op, "error")
            translated = self._translate(op, target, exc)
            if translated is None:
                raise
            raise translated from (None if isinstance(exc, (_Problem, PayloadError)) else exc)
        else:
            self._context.on_call(self.name, op, "ok")

    def _translate(self, op: str, target: FileTarget, exc: BaseException) -> BackendError | None:
        where = target.label
        if isinstance(exc, _Problem):
            return exc.kind(f"{where}: {exc}", provider=self.name)
        if isinstance(exc, (NothingPending, LayoutMismatch)):
            return BackendError(f"{where}: {exc}", provider=self.name)
        if isinstance(exc, PayloadError):
            return CorruptPayload(f"{where}: {exc}", provider=self.name)
        if isinstance(exc, PermissionError):
            return BackendPermissionError(
                f"{where}: permission denied on {_culprit(exc, target)} during {op};"
                f" rotator needs {_access(op, target)}",
                provider=self.name,
            )
        if isinstance(exc, OSError):
            return BackendError(
                f"{where}: {op} failed on {_culprit(exc, target)}: {exc.strerror or type(exc).__name__}",
                provider=self.name, transient=exc.errno in _TRANSIENT_ERRNOS,
            )
        return None


# --- the payload -------------------------------------------------------------------------------

def _decode_object(raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise _Problem(CorruptPayload, f"not UTF-8 (bad byte at offset {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise _Problem(CorruptPayload,
                       f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    if not isinstance(doc, dict):
        raise _Problem(CorruptPayload, f"the top level is a JSON {kind(doc)}, expected an object")
    return doc


def _parse(raw: bytes, layout: Layout) -> Document:
    return Document.parse(_decode_object(raw), layout)


def _encode(doc: Document, layout: Layout) -> bytes:
    return (json.dumps(doc.encode(layout), indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _version(raw: bytes | None) -> str | None:
    return None if raw is None else _digest(raw)


def _short(version: str | None) -> str:
    return "absent" if version is None else f"version {version[:12]}"


def _culprit(exc: OSError, target: FileTarget) -> str:
    """The file the OS complained about (the lock or temp file, say); the target when unnamed."""
    return str(exc.filename) if isinstance(exc.filename, (str, os.PathLike)) else str(target.path)


def _access(op: str, target: FileTarget) -> str:
    if op == "read":
        return f"read permission on {target.path} and search permission on its directories"
    return (f"read and write permission on the directory {target.path.parent}"
            " (it writes a lock file and a temp file there, then renames)")


# --- the filesystem ----------------------------------------------------------------------------

def _read_bytes(path: Path) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        return _read_all(fd)
    finally:
        os.close(fd)


#: Read in chunks of this size: one read for any payload rotator writes (and one that finds the end).
_CHUNK = 1 << 16


def _read_all(fd: int) -> bytes:
    """Everything from ``fd``: with raw reads, not a buffered file object (which costs an fstat,
    an ioctl and a seek per open, and releases the GIL for each). Read until a read returns
    nothing: a local file reads short only at its end, but a FUSE or network file system may
    return less at any point, and a document cut there would look corrupt."""
    chunks = []
    while chunk := os.read(fd, _CHUNK):
        chunks.append(chunk)
    return b"".join(chunks)


def _lock(lock_path: Path) -> int:
    """An open descriptor of ``lock_path`` holding an exclusive flock; closing it releases it."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextmanager
def _held(lock_fd: int) -> Iterator[None]:
    """Keep the lock ``lock_fd`` holds for the block; closing it releases it."""
    try:
        yield
    finally:
        os.close(lock_fd)


def _replace_atomically(path: Path, data: bytes, mode: int) -> None:
    """Write a private temp file beside ``path``, fsync it, rename it over ``path``, fsync the dir.

    The temp file is created exclusively: one already there can only be a crash's leftover (it
    lives only while the lock is held), so it is removed and the create tried once more."""
    temp = _temp_of(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd = os.open(temp, flags, mode)
    except FileExistsError:
        _unlink_if_present(temp)
        fd = os.open(temp, flags, mode)
    try:
        try:
            os.fchmod(fd, mode)  # exactly the configured mode, whatever the umask
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        _unlink_if_present(temp)
        raise
    _fsync_directory(path.parent)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_of(path: Path) -> Path:
    """The one temp file of ``path``: writes hold the lock, so one name is enough, and a crash's
    leftover is found without listing the directory (which grows with the secrets in it)."""
    return path.with_name(f".{path.name}.rotator.tmp")


def _remove_stale_temps(path: Path) -> None:
    """The temp file only lives while the lock is held; one found under the lock is a crash's leftover."""
    _unlink_if_present(_temp_of(path))


def _make_private_dirs(directory: Path) -> None:
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for each in reversed(missing):
        with suppress(FileExistsError):
            os.mkdir(each, 0o700)


def _unlink_if_present(path: Path) -> None:
    with suppress(FileNotFoundError):
        os.unlink(path)


def _existing_ancestor(directory: Path) -> Path:
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    return directory


def _writable_directory(directory: Path) -> tuple[bool, str]:
    """Can this process make and rename files in ``directory``? (and if not, why, in words)."""
    if not directory.is_dir():
        return False, "is not a directory"
    if not os.access(directory, os.W_OK | os.X_OK):
        return False, "is not writable by rotator's user (no write and search permission)"
    try:
        if os.statvfs(directory).f_flag & os.ST_RDONLY:
            return False, "is on a read-only filesystem"
    except OSError:
        pass
    return True, ""
