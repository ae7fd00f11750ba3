"""The primaries the fault tests run against: one ``PrimarySetup`` per backend that can hold the
rotation record.

To add one, append a ``PrimarySetup`` to ``PRIMARIES``: ``configure(world, request)`` adds the
backend section to ``world.backends`` (starting its server through ``request.getfixturevalue``
if it needs one) and returns the target entry of the primary, for a secret called ``name``.
The secondary is always a file target, so a failure points at the primary under test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import pytest


@dataclass(frozen=True)
class PrimarySetup:
    name: str
    configure: Callable[[Any, pytest.FixtureRequest, str], dict[str, Any]]
    marks: tuple[Any, ...] = ()


def _file(world: Any, request: pytest.FixtureRequest, name: str) -> dict[str, Any]:
    return {"backend": "store", "path": f"{name}.json"}


PRIMARIES: list[PrimarySetup] = [
    PrimarySetup("file", _file),
]


def primary_params() -> list[Any]:
    return [pytest.param(p, id=p.name, marks=p.marks) for p in PRIMARIES]


def add_secret(world: Any, request: pytest.FixtureRequest, setup: PrimarySetup, name: str = "web") -> None:
    """A secret with the setup's primary and a file secondary."""
    primary = setup.configure(world, request, name)
    world.add_secret(name, targets=[primary, {"backend": "app", "path": f"{name}.json"}])
