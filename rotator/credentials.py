"""Where the rotator's own credentials come from. Never from the config file itself.

A reference in the config is one of::

    { env = "QUIVA_API_KEY" }                       # an environment variable
    { file = "/var/run/secrets/quiva/admin-key" }   # a file (its content, stripped)
    { backend = "vault", path = "rotator/admin" }   # the current value of a backend target

:class:`rotator.runtime.Runtime` checks every ``env`` and ``file`` reference where it is declared,
before any effect (:func:`check`); a ``backend`` reference is read when it is needed. A credential
file that its group or other users may read or write is warned about, once per file per process.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from pathlib import Path
from typing import Any, Callable, Mapping

from rotator.errors import ConfigError
from rotator.models import Secret

log = logging.getLogger(__name__)
_warned: set[str] = set()
_warned_lock = threading.Lock()

#: Reads the current value of a backend target: (backend name, target spec) -> Secret.
BackendReader = Callable[[str, Mapping[str, Any]], Secret]


def check_reference(ref: Any, where: str) -> Mapping[str, Any]:
    """Validate a credential reference's shape without resolving it."""
    if isinstance(ref, str):
        raise ConfigError(
            f"{where}: key values never live in the config file; use {{ env = \"NAME\" }},"
            " { file = \"/path\" } or { backend = \"NAME\", ... }"
        )
    if not isinstance(ref, Mapping):
        raise ConfigError(f"{where}: expected a table like {{ env = \"NAME\" }}")
    kinds = [k for k in ("env", "file", "backend") if k in ref]
    if len(kinds) != 1:
        raise ConfigError(f"{where}: give exactly one of env, file or backend")
    if kinds[0] in ("env", "file") and set(ref) != {kinds[0]}:
        extra = ", ".join(sorted(set(ref) - {kinds[0]}))
        raise ConfigError(f"{where}: unknown setting(s) beside {kinds[0]}: {extra}")
    return ref


def resolve(ref: Any, where: str, read_backend: BackendReader | None = None,
            environ: Mapping[str, str] | None = None) -> Secret:
    """Resolve a credential reference to a Secret, or raise ConfigError saying what is missing."""
    ref = check_reference(ref, where)
    env = os.environ if environ is None else environ
    if "env" in ref:
        value = env.get(str(ref["env"]))
        if value is None:
            raise ConfigError(f"{where}: environment variable {ref['env']} is not set")
        value = value.strip()
        if not value:
            raise ConfigError(f"{where}: environment variable {ref['env']} is empty")
        return Secret(value)
    if "file" in ref:
        path = Path(str(ref["file"])).expanduser()
        try:
            value = path.read_text(encoding="utf-8").strip()
        except IsADirectoryError:
            raise ConfigError(f"{where}: cannot read {path}: it is a directory") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{where}: {path} is not UTF-8 text (bad byte at offset {exc.start})") from None
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read {path}: {exc.strerror or exc}") from None
        if not value:
            raise ConfigError(f"{where}: {path} is empty")
        warning = file_warning(path, where)
        if warning:
            warn_once(warning)
        return Secret(value)
    if read_backend is None:
        raise ConfigError(f"{where}: backend references are not available here")
    spec = {k: v for k, v in ref.items() if k != "backend"}
    return read_backend(str(ref["backend"]), spec)


def check(ref: Any, where: str, environ: Mapping[str, str] | None = None) -> str | None:
    """Raise ConfigError if an ``env`` or ``file`` reference cannot be resolved now (an unset or
    empty variable; a missing, unreadable or empty file); return the warning about a credential
    file others may read, if any. A ``backend`` reference is only checked for its shape here."""
    ref = check_reference(ref, where)
    if "backend" in ref:
        return None
    resolve(ref, where, environ=environ)
    return file_warning(Path(str(ref["file"])).expanduser(), where) if "file" in ref else None


def file_warning(path: Path, where: str) -> str | None:
    """The warning for a credential file its group or other users may access, or None."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None
    if not mode & 0o077:
        return None
    who = " and ".join(w for w, bits in (("its group", 0o070), ("other users", 0o007)) if mode & bits)
    return (f"{where}: the credential file {path} can be accessed by {who} (mode {mode:04o});"
            f" make it private to rotator's user: chmod 600 {path} (Kubernetes: defaultMode: 0400)")


def warn_once(message: str) -> bool:
    """Log ``message`` at warning level unless this process already has; True if logged now."""
    with _warned_lock:
        if message in _warned:
            return False
        _warned.add(message)
    log.warning("%s", message)
    return True
