"""Finds issuer and backend classes through entry points, lazily.

Built-ins are registered in ``pyproject.toml`` exactly like third-party plugins. A provider
module is imported only when the config names its type, so a file-only setup never imports
boto3 or hvac. Two distributions registering the same name are refused, naming both.
"""

from __future__ import annotations

import functools
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from rotator.errors import ConfigError

GROUPS = {"issuer": "rotator.issuers", "backend": "rotator.backends", "emulator": "rotator.emulators"}
_EXTRAS = {"boto3": "aws", "botocore": "aws", "hvac": "vault"}


@functools.cache
def available(kind: str) -> dict[str, EntryPoint]:
    """Every registered provider of ``kind`` ("issuer" or "backend"), by type name."""
    found: dict[str, EntryPoint] = {}
    for point in entry_points(group=GROUPS[kind]):
        twin = found.get(point.name)
        if twin is not None and twin.value != point.value:
            raise ConfigError(
                f"two plugins register {kind} type {point.name!r}: {twin.value} and {point.value};"
                " uninstall one"
            )
        found[point.name] = point
    return dict(sorted(found.items()))


def load(kind: str, type_name: str, where: str) -> Any:
    """The class registered as ``type_name``; ConfigError naming ``where`` if there is none."""
    points = available(kind)
    point = points.get(type_name)
    if point is None:
        known = ", ".join(points) or "none: is rotator installed (pip install -e .)?"
        raise ConfigError(f"{where}.type: unknown {kind} type {type_name!r} (installed: {known})")
    try:
        return point.load()
    except ImportError as exc:
        extra = _EXTRAS.get((exc.name or "").split(".")[0])
        hint = f" (pip install 'rotator[{extra}]')" if extra else ""
        raise ConfigError(f"{where}.type: {type_name!r} could not be loaded from {point.value}: {exc}{hint}") from None
