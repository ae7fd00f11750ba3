"""A small test world: config + runtime + engine around a real emulator and real backends.

Tests describe the backends and secrets they want; the world builds the config exactly as a user
would write it, so the same code path as ``rotator rotate`` runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

from rotator import config
from rotator.engine import Engine, Event, RunReport
from rotator.models import KeyRef, Secret, Snapshot
from rotator.runtime import ManagedSecret, Runtime
from rotator.testing import FakeClock

ADMIN_EMAIL = "ops@example.com"


class Runs:
    """Runtime, engine and run from a world's ``config_data()`` on its clock, recording calls
    and events (``calls``, ``events``, ``_runtimes`` and ``clock`` are the world's fields)."""

    def runtime(self, identity: str | None = None) -> Runtime:
        runtime = Runtime(config.load(data=self.config_data()), clock=self.clock, sleep=self.clock.sleep,
                          identity=identity, on_call=lambda *call: self.calls.append(call))
        self._runtimes.append(runtime)
        return runtime

    def engine(self, identity: str | None = None) -> Engine:
        return Engine(self.runtime(identity), on_event=self.events.append)

    def rotate(self, names: list[str] | None = None, *, force: bool = False, identity: str | None = None) -> RunReport:
        return self.engine(identity).run(names, force=force)

    def close(self) -> None:
        for runtime in self._runtimes:
            runtime.close()


@dataclass
class World(Runs):
    emulator: Any
    clock: FakeClock
    root: Path
    defaults: dict[str, Any] = field(default_factory=lambda: {"lead_time": "14d", "grace": "48h", "workers": 1})
    backends: dict[str, dict[str, Any]] = field(default_factory=dict)
    secrets: list[dict[str, Any]] = field(default_factory=list)
    issuer: dict[str, Any] = field(default_factory=dict)
    hooks: list[dict[str, Any]] = field(default_factory=list)     # [[hooks]]
    events: list[Event] = field(default_factory=list)
    calls: list[tuple[str, str, str]] = field(default_factory=list)
    _runtimes: list[Runtime] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.backends.setdefault("store", {"type": "file", "directory": str(self.root / "store")})
        self.backends.setdefault("app", {"type": "file", "directory": str(self.root / "app")})
        self.issuer = {"type": "quivaworks", "base_url": self.emulator.url, **self.issuer}

    # --- configuration -----------------------------------------------------------------------

    def add_secret(self, name: str, targets: list[dict[str, Any]] | None = None, **options: Any) -> None:
        targets = targets or [{"backend": "store", "path": f"{name}.json"}, {"backend": "app", "path": f"{name}.json"}]
        self.secrets.append({"name": name, "issuer": "quiva", "targets": targets, **options})

    def config_data(self) -> dict[str, Any]:
        data = {"rotator": self.defaults, "issuers": {"quiva": self.issuer},
                "backends": self.backends, "secrets": self.secrets}
        if self.hooks:
            data["hooks"] = self.hooks
        return data

    # --- seeding and looking ---------------------------------------------------------------

    def seed(self, name: str, age: timedelta) -> str:
        """A key made by hand ``age`` ago, written to every target of ``name`` (the value)."""
        info = self.emulator.create_key(ADMIN_EMAIL, name=f"{name} (by hand)", created_on=self.clock.now() - age)
        return self.seed_value(name, info["key"])

    def seed_value(self, name: str, raw: str) -> str:
        """Write ``raw`` as the current value of every target of ``name``, as a person would."""
        value = Secret(raw)
        for bound in self.secret(name).targets:
            bound.backend.deploy(bound.target, value, None, KeyRef.of(value))
        return raw

    def secret(self, name: str, runtime: Runtime | None = None) -> ManagedSecret:
        runtime = runtime or self.runtime()
        return next(s for s in runtime.secrets if s.name == name)

    def snapshots(self, name: str) -> dict[str, Snapshot]:
        secret = self.secret(name)
        return {b.label: b.backend.read(b.target) for b in secret.targets}

    def record(self, name: str):
        secret = self.secret(name)
        return secret.primary.backend.read(secret.primary.target).record

    def live_values(self) -> set[str]:
        """Values of every live (not deleted, not expired) key at the emulator."""
        return {v for v in self.emulator.issued_values() if self.emulator.is_active(v)}

    def assert_i1(self, name: str) -> None:
        """No outage: every target's current key is accepted by the issuer right now."""
        for label, snap in self.snapshots(name).items():
            assert snap.current is not None, f"{label} holds no key"
            assert self.emulator.is_active(snap.current.reveal()), f"{label} holds a key the issuer refuses"

def to_toml(data: dict[str, Any]) -> str:
    """Just enough TOML for test configs: tables, arrays of tables, inline tables, scalars."""
    def scalar(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (int, float)):
            return str(value)
        if isinstance(value, dict):
            return "{ " + ", ".join(f"{k} = {scalar(v)}" for k, v in value.items()) + " }"
        if isinstance(value, list):
            return "[" + ", ".join(scalar(v) for v in value) + "]"
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines: list[str] = []
    for section in ("rotator",):
        if data.get(section):
            lines.append(f"[{section}]")
            lines.extend(f"{k} = {scalar(v)}" for k, v in data[section].items())
    for group in ("issuers", "backends"):
        for name, table in data.get(group, {}).items():
            lines.append(f"\n[{group}.{name}]")
            lines.extend(f"{k} = {scalar(v)}" for k, v in table.items())
    for group in ("secrets", "hooks"):
        for entry in data.get(group, []):
            lines.append(f"\n[[{group}]]")
            lines.extend(f"{k} = {scalar(v)}" for k, v in entry.items())
    return "\n".join(lines) + "\n"


def wait_for(check: Callable[[], Any], *, timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll ``check`` until it returns something truthy (for subprocess tests on real time)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
