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


def _vault(world: Any, request: pytest.FixtureRequest, name: str) -> dict[str, Any]:
    """KV v2 on the session's OpenBao dev server (tests/servers/vault.py), a fresh path per test."""
    bao = request.getfixturevalue("openbao")
    prefix = request.getfixturevalue("vault_prefix")
    request.getfixturevalue("monkeypatch").setenv("VAULT_TOKEN", bao.root_token)
    world.backends["vault"] = {"type": "vault_kv", "url": bao.url,
                               "auth": {"method": "token", "token": {"env": "VAULT_TOKEN"}}}
    return {"backend": "vault", "path": f"{prefix}/apps/{name}/quiva"}


PRIMARIES.append(PrimarySetup("vault", _vault))


def _aws(world: Any, request: pytest.FixtureRequest, name: str) -> dict[str, Any]:
    """AWS Secrets Manager on the session's moto server (tests/servers/aws.py), reset per test;
    dummy credentials in the environment for this test only."""
    moto_url = request.getfixturevalue("moto_url")
    world.backends["aws"] = {"type": "aws_secrets_manager", "region": "us-east-1", "endpoint_url": moto_url,
                             "max_attempts": 2}
    return {"backend": "aws", "secret_id": f"prod/{name}/quiva"}


PRIMARIES.append(PrimarySetup("aws", _aws))
