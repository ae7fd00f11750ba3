"""A fleet of managed secrets: its layout, its seeding, and the rotator config that manages it.

Every secret lives in ``targets`` — pairs (store, locator) with store one of ``file``, ``file2``
(another file), ``aws`` (Secrets Manager), ``vault``, ``ssm`` (a Parameter Store SecureString: a
secondary only, on the same moto server as ``aws``); the first is the rotator's primary. Two
copies of a fleet are seeded in the same servers under different prefixes and different
QuivaWorks users: one for rotator, one for the sequential peer (:mod:`baseline`), so neither sees
the other's keys or writes.

Time: the emulator runs on real time plus an offset (its ``/_emulator/clock`` knob), and rotator
gets an :class:`OffsetClock` moved by the same amounts, so "80 days later" is one call while every
wait (retry back-off, rate-limit pacing) is real.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

from rotator import config
from rotator.models import KeyRef, Secret
from rotator.runtime import Runtime
from rotator_providers.quiva.emulator.state import SettableClock

ROTATOR_USER = "ops@example.com"
PEER_USER = "peer@example.com"
KEY_ENV = "BENCH_QUIVA_KEY"
VAULT_ENV = "BENCH_VAULT_TOKEN"

#: Layouts of the fleet benchmark, used in turn (primary first). Each secret lives in two stores,
#: as in the peer's guide (issue, write two stores, read both back, authenticate, delete).
FLEET_LAYOUTS: tuple[tuple[str, ...], ...] = (("file", "aws"), ("vault", "aws"), ("aws", "vault"))
STORES = ("file", "file2", "aws", "vault", "ssm")
#: Stores that cannot be a primary (no compare-and-swap to hold the rotation record).
SECONDARY_ONLY = ("ssm",)


class OffsetClock(SettableClock):
    """The emulator's clock (real UTC time plus an offset that only moves when told), with a
    ``sleep`` that really sleeps, for the rotator's retry waits."""

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


@dataclass(frozen=True)
class SecretSpec:
    name: str
    targets: tuple[tuple[str, str], ...]      # (store, locator)


def layout_name(stores: Iterable[str]) -> str:
    return " → ".join(stores)


def parse_layouts(text: str) -> tuple[tuple[str, ...], ...]:
    """``"file/aws,vault/ssm"`` → (("file", "aws"), ("vault", "ssm")): primary first."""
    layouts = tuple(tuple(part.strip() for part in layout.split("/")) for layout in text.split(",") if layout.strip())
    for layout in layouts:
        unknown = [s for s in layout if s not in STORES]
        if unknown or not layout:
            raise ValueError(f"layout {'/'.join(layout)!r}: stores are {', '.join(STORES)}")
        if layout[0] in SECONDARY_ONLY:
            raise ValueError(f"layout {'/'.join(layout)!r}: {layout[0]} cannot be a primary")
    return layouts


def build(prefix: str, count: int, layouts: Iterable[tuple[str, ...]]) -> list[SecretSpec]:
    """``count`` secrets named ``<prefix>-0001`` ..., the layouts used in turn."""
    layouts = list(layouts)
    specs = []
    for i in range(count):
        name = f"{prefix}-{i + 1:04d}"
        stores = layouts[i % len(layouts)]
        specs.append(SecretSpec(name, tuple((store, _locator(store, prefix, name)) for store in stores)))
    return specs


def _locator(store: str, prefix: str, name: str) -> str:
    # a parameter name's first level must not start with "aws" or "ssm" (AWS reserves them): mind the prefix
    return {"file": f"{prefix}/{name}.json", "file2": f"{prefix}/copy/{name}.json", "aws": f"{prefix}/{name}/quiva",
            "vault": f"{prefix}/{name}/quiva", "ssm": f"/{prefix}/{name}/quiva"}[store]


@dataclass
class Endpoints:
    """Where each service is (possibly behind a latency proxy)."""

    quiva: str
    aws: str | None
    vault: str | None
    vault_token: str | None
    files: Path


def rotator_config(specs: list[SecretSpec], endpoints: Endpoints, *, workers: int, grace: str = "0s",
                   issuer: dict[str, Any] | None = None) -> config.Settings:
    """The config a user would write for this fleet."""
    backends: dict[str, Any] = {"files": {"type": "file", "directory": str(endpoints.files)}}
    if endpoints.aws:
        backends["aws"] = {"type": "aws_secrets_manager", "region": "us-east-1", "endpoint_url": endpoints.aws,
                           "max_attempts": 5}
    if endpoints.aws and any(store == "ssm" for s in specs for store, _ in s.targets):
        # Parameter Store on the same moto server (and behind the same latency proxy, if any)
        backends["ssm"] = {"type": "ssm_parameter", "region": "us-east-1", "endpoint_url": endpoints.aws,
                           "max_attempts": 5}
    if endpoints.vault:
        backends["vault"] = {"type": "vault_kv", "url": endpoints.vault,
                             "auth": {"method": "token", "token": {"env": VAULT_ENV}}}
    secrets = [{"name": s.name, "issuer": "quiva", "targets": [_target(store, where) for store, where in s.targets]}
               for s in specs]
    data = {
        "rotator": {"lead_time": "14d", "grace": grace, "workers": workers},
        "issuers": {"quiva": {"type": "quivaworks", "base_url": endpoints.quiva, "admin_key": {"env": KEY_ENV},
                              **(issuer or {})}},
        "backends": backends,
        "secrets": secrets,
    }
    return config.load(data=data)


def _target(store: str, where: str) -> dict[str, str]:
    backend = {"file": "files", "file2": "files", "aws": "aws", "vault": "vault", "ssm": "ssm"}[store]
    key = {"file": "path", "file2": "path", "aws": "secret_id", "vault": "path", "ssm": "name"}[store]
    return {"backend": backend, key: where}


def seed_for_rotator(runtime: Runtime, emulator: Any, specs: list[SecretSpec], created_on: datetime,
                     threads: int = 8, user: str = ROTATOR_USER) -> None:
    """A key made by hand for every secret, written to each of its targets (as a person would)."""
    by_name = {s.name: s for s in runtime.secrets}

    def seed(spec: SecretSpec) -> None:
        value = Secret(emulator.create_key(user, f"{spec.name} (by hand)", created_on))
        for bound in by_name[spec.name].targets:
            bound.backend.deploy(bound.target, value, None, KeyRef.of(value))

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(seed, specs))


def seed_for_peer(peer: Any, emulator: Any, specs: list[SecretSpec], created_on: datetime,
                  threads: int = 8, user: str = PEER_USER) -> None:
    """The peer's copy: keys named after the secret, values written with the plain libraries."""
    def seed(spec: SecretSpec) -> None:
        value = emulator.create_key(user, spec.name, created_on)
        for store, where in spec.targets:
            peer.create(store, where, value)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(seed, specs))


def set_env(admin_key: str, vault_token: str | None) -> None:
    """Credentials the way rotator takes them: references to the environment (and the standard
    AWS chain, here dummy credentials for moto; nothing on the host is picked up)."""
    from servers import AWS_ENV

    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_ROLE_ARN", "AWS_ENDPOINT_URL",
                 "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ENDPOINT_URL_SECRETS_MANAGER", "AWS_ENDPOINT_URL_SSM"):
        os.environ.pop(name, None)
    os.environ.update(AWS_ENV)
    os.environ[KEY_ENV] = admin_key
    if vault_token:
        os.environ[VAULT_ENV] = vault_token


def read_current(runtime: Runtime, name: str) -> dict[str, str | None]:
    """label → current value of every target of one secret (for end-of-run checks)."""
    secret = next(s for s in runtime.secrets if s.name == name)
    return {b.label: (lambda snap: snap.current.reveal() if snap.current else None)(b.backend.read(b.target))
            for b in secret.targets}


def dump(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
