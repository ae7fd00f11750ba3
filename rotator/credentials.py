"""Where the rotator's own credentials come from. Never from the config file itself.

A reference in the config is one of::

    { env = "QUIVA_API_KEY" }                       # an environment variable
    { file = "/var/run/secrets/quiva/admin-key" }   # a file (its content, stripped)
    { backend = "vault", path = "rotator/admin" }   # the current value of a backend target
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping

from rotator.errors import ConfigError
from rotator.models import Secret

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
        value = env.get(str(ref["env"]), "").strip()
        if not value:
            raise ConfigError(f"{where}: environment variable {ref['env']} is not set")
        return Secret(value)
    if "file" in ref:
        path = Path(str(ref["file"])).expanduser()
        try:
            value = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read {path}: {exc.strerror}") from None
        if not value:
            raise ConfigError(f"{where}: {path} is empty")
        return Secret(value)
    if read_backend is None:
        raise ConfigError(f"{where}: backend references are not available here")
    spec = {k: v for k, v in ref.items() if k != "backend"}
    return read_backend(str(ref["backend"]), spec)
