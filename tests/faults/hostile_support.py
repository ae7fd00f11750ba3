"""Helpers for tests/faults/test_hostile_issuer.py: arming a fault at the right moment of a real
run, watching what reached the stores, and the checks every hostile-issuer case repeats after the
faulty run and after a clean rerun (issue 14, "How to prove it").

Nothing here keeps a key value beyond the test's memory; messages show last 4 characters only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable

from rotator.engine import Engine, RunReport
from rotator.testing import EffectCounter
from rotator.timeutil import parse_instant

AUTH = "POST /accounts/auth-with-api-key"
ISSUE = "POST /accounts/api-key"
LIST = "GET /accounts/api-keys"
DELETE = "DELETE /accounts/api-key"
AGENTS = "GET /v1/agents"

GRACE = timedelta(hours=48)
PAST_GRACE = GRACE + timedelta(hours=1)


# --- arming faults inside a run -------------------------------------------------------------------

def after_effect(engine: Engine, method: str, action: Callable[[], None], *, times: int = 1) -> list[int]:
    """Run ``action`` right after the first ``times`` effects named ``method`` (``stage``,
    ``issue``, ``deploy``, ``revoke``...) of ``engine``'s run. Returns the effect numbers it fired at."""
    fired: list[int] = []

    def hook(number: int, provider: str, name: str) -> None:
        if name == method and len(fired) < times:
            fired.append(number)
            action()

    EffectCounter(on_effect=hook).instrument(engine.runtime)
    return fired


@dataclass
class Spy:
    """What a run handed to the stores: every value staged in a primary and every value deployed
    (as current and as previous) to each backend, in order."""

    staged: list[str] = field(default_factory=list)
    deployed: dict[str, list[str]] = field(default_factory=dict)
    previous: dict[str, list[str]] = field(default_factory=dict)

    def values(self) -> set[str]:
        out = set(self.staged)
        for values in (*self.deployed.values(), *self.previous.values()):
            out.update(values)
        return out


def spy(engine: Engine) -> Spy:
    """Wrap ``stage`` and ``deploy`` of every backend of ``engine`` (in place)."""
    seen = Spy()
    for name, backend in engine.runtime.backends.items():
        stage, deploy = backend.stage, backend.deploy

        def staged(target, value, record, *, __stage=stage, **kw):
            seen.staged.append(value.reveal())
            return __stage(target, value, record, **kw)

        def deployed(target, current, previous, meta, *, __deploy=deploy, __name=name):
            seen.deployed.setdefault(__name, []).append(current.reveal())
            if previous is not None:
                seen.previous.setdefault(__name, []).append(previous.reveal())
            return __deploy(target, current, previous, meta)

        backend.stage, backend.deploy = staged, deployed
    return seen


# --- looking at the issuer ------------------------------------------------------------------------

def live_keys(emulator: Any, clock: Any, prefix: str | None = None) -> list[dict[str, Any]]:
    """Keys the issuer still accepts (not deleted, not expired), optionally by name prefix."""
    now = clock.now()
    return [k for k in emulator.keys() if k["deleted_on"] is None and parse_instant(k["expires_on"]) > now
            and (prefix is None or k["name"].startswith(prefix))]


def live_rotation_keys(emulator: Any, clock: Any, secret: str) -> list[dict[str, Any]]:
    """Live keys named "<secret> [r-…]": the keys rotations of ``secret`` minted."""
    return live_keys(emulator, clock, f"{secret} [r-")


def key_named(emulator: Any, name: str) -> dict[str, Any]:
    (found,) = [k for k in emulator.keys() if k["name"] == name]
    return found


def deletes(emulator: Any) -> int:
    return emulator.counters().get(DELETE, 0)


def revoke_events(world: Any, last4: str, actions: tuple[str, ...] = ("revoked", "already-revoked")) -> list:
    """Events that claim a key ending in ``last4`` was revoked."""
    return [e for e in world.events if e.action in actions and e.result != "intent"
            and (e.last4 == last4 or (e.key or "").startswith(f"…{last4}") or f"…{last4}" in e.detail)]


def order(world: Any, secret: str) -> list[tuple[str, str]]:
    """(action, result) of the events of ``secret``, in order."""
    return [(e.action, e.result) for e in world.events if e.secret == secret]


# --- the checks every case repeats ----------------------------------------------------------------

def served(world: Any, secret: str) -> dict[str, str]:
    """The current value each target of ``secret`` serves, by label."""
    return {label: snap.current.reveal() for label, snap in world.snapshots(secret).items() if snap.current}


def assert_serving(world: Any, emulator: Any, secret: str) -> None:
    """I1, and nothing a target serves was revoked: every target holds a key the issuer accepts
    (and, during a grace window, the previous key the secondaries keep is still accepted too)."""
    world.assert_i1(secret)
    record = world.record(secret)
    if record is not None and record.phase.value == "grace":
        for label, snap in world.snapshots(secret).items():
            if snap.previous is not None:
                assert emulator.is_active(snap.previous.reveal()), \
                    f"{label}: the previous key was revoked during the grace window"


def assert_truthful(report: RunReport, *, ok: bool, secret: str | None = None) -> None:
    """A failed step is exit 1 and ``failed``; a success is exit 0 and not ``failed``."""
    outcome = _outcome(report, secret)
    if ok:
        assert report.exit_code == 0, _show(report)
        assert outcome.status in ("ok", "changed"), _show(report)
        assert outcome.error is None, _show(report)
    else:
        assert report.exit_code == 1, _show(report)
        assert outcome.status == "failed" and outcome.error, _show(report)


def assert_no_leak(world: Any, emulator: Any, reports: list[RunReport], extra: set[str] = frozenset()) -> None:
    """No key value (any the issuer minted, plus ``extra`` values a hostile answer handed out)
    in an event, an outcome or a rotation record."""
    texts = [json.dumps([e.__dict__ for e in world.events], default=str)]
    for report in reports:
        texts.append(json.dumps([o.__dict__ for o in report.outcomes], default=str))
        texts.extend(report.problems)
    for secret in world.secrets:
        record = world.record(secret["name"])
        if record is not None:
            texts.append(json.dumps(record.to_dict()))
    text = "\n".join(texts)
    values = {v for v in (*emulator.issued_values(), *extra) if v and len(v) >= 8}
    leaked = sorted(v[-4:] for v in values if v in text)
    assert not leaked, f"key values leaked (last 4 shown): {leaked}"


def rerun_clean(world: Any, emulator: Any, clock: Any, secret: str, *, grace: bool = True) -> list[RunReport]:
    """Faults off; a rerun completes whatever is in flight, and (``grace``) a run after the grace
    window finishes it. Each run: exit 0, targets serving accepted keys. Returns the reports."""
    emulator.faults.clear()
    reports = [world.rotate()]
    assert_truthful(reports[-1], ok=True, secret=secret)
    assert_serving(world, emulator, secret)
    if grace:
        clock.advance(PAST_GRACE)
        reports.append(world.rotate())
        assert_truthful(reports[-1], ok=True, secret=secret)
        assert_serving(world, emulator, secret)
        assert world.record(secret).phase.value == "idle", _show(reports[-1])
    return reports


def assert_settled(world: Any, emulator: Any, clock: Any, secret: str) -> None:
    """After the clean reruns: exactly one live key of ``secret``'s rotations, and it is the one
    every target serves."""
    live = live_rotation_keys(emulator, clock, secret)
    values = set(served(world, secret).values())
    assert len(values) == 1, "targets disagree"
    assert len(live) == 1, f"{len(live)} live keys named {secret!r} [r-…]: {[k['last_4_characters'] for k in live]}"
    assert live[0]["last_4_characters"] == next(iter(values))[-4:]


def write_record_field(path: Any, ref: str, field_name: str, value: Any) -> None:
    """Edit the rotation record stored in a file target by hand (``ref``: current/previous/pending,
    or "" for the record itself)."""
    doc = json.loads(path.read_text())
    record = doc["rotator"]["record"]
    place = record[ref] if ref else record
    place[field_name] = value
    path.write_text(json.dumps(doc))


def _outcome(report: RunReport, secret: str | None):
    if secret is None:
        assert len(report.outcomes) == 1, _show(report)
        return report.outcomes[0]
    return next(o for o in report.outcomes if o.secret == secret)


def _show(report: RunReport) -> str:
    return "; ".join(f"{o.secret}: {o.status} ({o.error or o.detail}) {o.actions}" for o in report.outcomes) + \
        (f"; problems: {report.problems}" if report.problems else "")
