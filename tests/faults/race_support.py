"""Machinery for ``test_race.py``: the seeded schedule, the fault menu, the ``rotator rotate``
processes, and the invariant checks, each written as evidence a person can read.

Nothing here knows the engine's internals: the checks look only at what an application and an
operator can see — the target files (through the same backends rotator uses) and the issuer's
own model of its keys (the emulator). Key values never appear in a message: keys are shown by
their last 4 characters, the emulator's name and id, and whether the issuer still accepts them.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

from rotator import config
from rotator.models import KeyRef, Secret, Snapshot
from rotator.runtime import ManagedSecret, Runtime
from tests.world import to_toml

ADMIN_EMAIL = "race-admin@example.com"
SECRET_NAMES = ("alpha", "bravo", "charlie", "delta")

# Request filters of the emulator's faults (method + path, as Faults matches them).
ISSUE = "POST /accounts/api-key"
DELETE = "DELETE /accounts/api-key"
LIST = "GET /accounts/api-keys"
AUTH = "POST /accounts/auth-with-api-key"

LEASE_S = 3.0               # [rotator] lease
ISSUER_TIMEOUT_S = 2.0      # the issuer's per-request timeout
MAX_RETRY_WAIT_S = 3.0
PROCESS_DEADLINE_S = 40.0   # a step's processes still running after this are killed (and noted)
STARTUP_S = 0.35            # roughly how long `rotator rotate` takes to import and start


def env_seed() -> int:
    """RACE_SEED if set, else a fresh one (printed by the test so a failure can be replayed)."""
    raw = os.environ.get("RACE_SEED", "").strip()
    return int(raw) if raw else random.SystemRandom().randrange(1, 1_000_000)


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    return float(raw) if raw else default


def env_int(name: str) -> int | None:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else None


def clock_text() -> str:
    """Now, UTC, to the millisecond: comparable with the emulator's created_on / deleted_on."""
    now = datetime.now(timezone.utc)
    return now.strftime("%H:%M:%S.") + f"{now.microsecond // 1000:03d}"


def fp(value: str) -> str:
    """The emulator's fingerprint of a key value (``value_fingerprint`` in ``emu.keys()``)."""
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- the fault menu

@dataclass(frozen=True)
class Fault:
    """One entry of the menu: ``arm(faults, rng)`` arms it on the emulator and says what it did.

    Faults stay armed until the step's ``clear_at`` (countdowns may be used up earlier).
    ``needs`` names the emulator knob it uses: an emulator without it leaves the entry out."""

    name: str
    weight: int
    arm: Callable[[Any, random.Random], str]
    needs: str | None = None


def _none(f: Any, rng: random.Random) -> str:
    return "no fault"


def _slow_issuer(f: Any, rng: random.Random) -> str:
    seconds = round(rng.uniform(0.4, 1.8), 2)
    f.set_latency(seconds, path=ISSUE)
    return f"set_latency({seconds}, {ISSUE!r})"


def _issuer_timeout(f: Any, rng: random.Random) -> str:
    # Longer than the issuer timeout: the client gives up, the emulator still mints, the retry
    # mints a twin; one run with retries can outlive the lease.
    seconds = round(rng.uniform(ISSUER_TIMEOUT_S + 0.2, ISSUER_TIMEOUT_S + 2.0), 2)
    f.set_latency(seconds, path=ISSUE)
    return f"set_latency({seconds}, {ISSUE!r}) > timeout"


def _slow_everything(f: Any, rng: random.Random) -> str:
    seconds = round(rng.uniform(0.1, 0.6), 2)
    f.set_latency(seconds)
    return f"set_latency({seconds}) on every request"


def _slow_revoke(f: Any, rng: random.Random) -> str:
    seconds = round(rng.uniform(0.5, 1.5), 2)
    f.set_latency(seconds, path=DELETE)
    return f"set_latency({seconds}, {DELETE!r})"


def _throttle(f: Any, rng: random.Random) -> str:
    n, retry_after = rng.randint(2, 8), rng.randint(1, 2)
    f.throttle_next(n, retry_after=retry_after)
    return f"throttle_next({n}, retry_after={retry_after})"


def _fail_before(f: Any, rng: random.Random) -> str:
    n, status = rng.randint(1, 3), rng.choice([500, 502, 503])
    path = rng.choice([ISSUE, DELETE, LIST, AUTH, None])
    f.fail_next(n, status=status, path=path)
    return f"fail_next({n}, {status}, {path!r})"


def _twin_issue(f: Any, rng: random.Random) -> str:
    n = rng.randint(1, 2)
    f.fail_after_effect_next(n, status=503, path=ISSUE)
    return f"fail_after_effect_next({n}, 503, {ISSUE!r}) (retry mints a twin)"


def _lost_revoke(f: Any, rng: random.Random) -> str:
    f.fail_after_effect_next(1, status=502, path=DELETE)
    return f"fail_after_effect_next(1, 502, {DELETE!r})"


def _late_twin(f: Any, rng: random.Random) -> str:
    # The first issue sleeps past the client's timeout BEFORE minting: the retry is served first
    # and the slow request mints its key later, after whatever listing the run took meanwhile.
    seconds = round(rng.uniform(ISSUER_TIMEOUT_S + 0.3, ISSUER_TIMEOUT_S + 2.5), 2)
    f.latency_next(1, seconds, path=ISSUE)
    return f"latency_next(1, {seconds}, {ISSUE!r}) (a late twin)"


def _trickled_issue(f: Any, rng: random.Random) -> str:
    # The key is minted at once, its reply body crawls in: no read timeout fires, and the run
    # that asked holds the key only after the lease may have run out.
    rate = round(rng.uniform(40, 150), 1)
    f.trickle_next(1, rate, path=ISSUE)
    return f"trickle_next(1, {rate} B/s, {ISSUE!r})"


def _trickled_listing(f: Any, rng: random.Random) -> str:
    n, rate = rng.randint(1, 2), round(rng.uniform(150, 600), 1)
    f.trickle_next(n, rate, path=LIST)
    return f"trickle_next({n}, {rate} B/s, {LIST!r})"


#: The fault menu. Add new emulator knobs here (one entry each); the schedule picks 0-2 per step.
FAULTS: list[Fault] = [
    Fault("none", 2, _none),
    Fault("slow-issuer", 3, _slow_issuer),
    Fault("issuer-timeout", 3, _issuer_timeout),
    Fault("slow-everything", 2, _slow_everything),
    Fault("slow-revoke", 1, _slow_revoke),
    Fault("429-burst", 3, _throttle),
    Fault("5xx", 2, _fail_before),
    Fault("5xx-after-issue", 3, _twin_issue),
    Fault("5xx-after-revoke", 1, _lost_revoke),
    Fault("late-twin", 3, _late_twin, needs="latency_next"),
    Fault("trickled-issue", 2, _trickled_issue, needs="trickle_next"),
    Fault("trickled-listing", 1, _trickled_listing, needs="trickle_next"),
    # Not here on purpose: mangle_next, lying_deletes and endless_pages test whether rotator
    # believes a wrong answer (tests/integration, tests/unit); this test is about timing.
]


# --------------------------------------------------------------------------- the configuration

@dataclass
class RaceWorld:
    names: tuple[str, ...]
    seeding: dict[str, str]                # secret -> bootstrap | adopt | adopt-due
    data: dict[str, Any]
    path: Path
    grace_s: float

    def describe(self) -> str:
        r = self.data["rotator"]
        shape = ", ".join(f"{n}({len(s['targets'])} targets, {self.seeding[n]})"
                          for n, s in zip(self.names, self.data["secrets"]))
        return f"lease={r['lease']} grace={r['grace']} workers={r['workers']}; secrets: {shape}"


def make_world(rng: random.Random, emulator_url: str, root: Path) -> RaceWorld:
    count = rng.choice([3, 4])
    names = SECRET_NAMES[:count]
    grace_s = rng.choice([2, 3])
    workers = rng.choice([1, 2])
    wide = rng.choice(names)               # the secret with two secondaries
    seeding = {n: rng.choice(["bootstrap", "adopt", "adopt-due"]) for n in names}
    secrets = []
    for name in names:
        targets = [{"backend": "store", "path": f"{name}.json"}, {"backend": "app", "path": f"{name}.json"}]
        if name == wide:
            targets.append({"backend": "edge", "path": f"{name}.json"})
        secrets.append({"name": name, "issuer": "quiva", "targets": targets})
    data = {
        "rotator": {"lead_time": "14d", "grace": f"{grace_s}s", "lease": f"{int(LEASE_S)}s", "workers": workers},
        "issuers": {"quiva": {"type": "quivaworks", "base_url": emulator_url,
                              "admin_key": {"env": "QUIVA_API_KEY"}, "timeout": f"{int(ISSUER_TIMEOUT_S)}s",
                              "retries": 3, "max_retry_wait": f"{int(MAX_RETRY_WAIT_S)}s"}},
        "backends": {b: {"type": "file", "directory": str(root / b)} for b in ("store", "app", "edge")},
        "secrets": secrets,
    }
    path = root / "rotator.toml"
    path.write_text(to_toml(data))
    return RaceWorld(names, seeding, data, path, float(grace_s))


def seed_hand_made_keys(world: RaceWorld, emu: Any, reader: Reader) -> None:
    """Keys made by hand, written to every target, for the secrets that start by adoption."""
    now = emu.clock.now()
    for name in world.names:
        mode = world.seeding[name]
        if mode == "bootstrap":
            continue
        age = timedelta(days=80 if mode == "adopt-due" else 1)
        raw = emu.create_key(ADMIN_EMAIL, name=f"{name} (by hand)", created_on=now - age)["key"]
        value = Secret(raw)
        for bound in reader.secret(name).targets:
            bound.backend.deploy(bound.target, value, None, KeyRef.of(value))


# --------------------------------------------------------------------------- looking

class Reader:
    """Reads every target through the backends rotator itself uses (one Runtime per thread)."""

    def __init__(self, config_path: Path) -> None:
        self.runtime = Runtime(config.load(config_path))
        self.secrets = {s.name: s for s in self.runtime.secrets}

    def secret(self, name: str) -> ManagedSecret:
        return self.secrets[name]

    def snapshots(self, name: str) -> dict[str, Snapshot]:
        return {b.label: b.backend.read(b.target) for b in self.secret(name).targets}

    def close(self) -> None:
        self.runtime.close()


class KeyBook:
    """The emulator's keys, looked up by value without ever printing one."""

    def __init__(self, emu: Any) -> None:
        self.emu = emu
        self.refresh()

    def refresh(self) -> None:
        self.by_fp = {r["value_fingerprint"]: r for r in self.emu.keys()}
        self.values = {fp(v): v for v in self.emu.issued_values()}

    def record(self, value: str) -> dict[str, Any] | None:
        found = self.by_fp.get(fp(value))
        if found is None:
            self.refresh()
            found = self.by_fp.get(fp(value))
        return found

    def record_by_fp(self, value_fp: str) -> dict[str, Any] | None:
        return self.by_fp.get(value_fp)

    def describe(self, value: str | None) -> str:
        if value is None:
            return "no key"
        rec = self.record(value)
        if rec is None:
            return f"…{value[-4:]} (unknown to the issuer)"
        state = "live" if self.emu.is_active(value) else f"DEAD (deleted_on {rec['deleted_on']})"
        return f"…{value[-4:]} {rec['name']!r} id={rec['id'][:8]} {state}"

    def live_records(self) -> list[dict[str, Any]]:
        self.refresh()
        return [r for f, r in self.by_fp.items() if f in self.values and self.emu.is_active(self.values[f])]


def _reveal(secret: Secret | None) -> str | None:
    return secret.reveal() if secret is not None else None


def describe_secret(name: str, reader: Reader, book: KeyBook, pids: dict[int, int] | None = None) -> str:
    """The primary's record and every target's slots, in words (last 4 + issuer view)."""
    lines = []
    snaps = reader.snapshots(name)
    primary = reader.secret(name).primary.label
    rec = snaps[primary].record
    if rec is None:
        lines.append(f"  {name}: no record")
    else:
        lease = ""
        if rec.lease_until is not None:
            lease = f" lease {(rec.lease_until - datetime.now(timezone.utc)).total_seconds():+.1f}s"
        owner = owner_label(rec.owner, pids or {}) if rec.owner else "-"
        lines.append(f"  {name}: phase={rec.phase.value} rotation={(rec.rotation_id or '-')[:8]}"
                     f" owner={owner}{lease} rotations={rec.rotations}"
                     f" current={rec.current.label() if rec.current else '-'}"
                     f" pending={rec.pending.label() if rec.pending else '-'}"
                     f" previous={rec.previous.label() if rec.previous else '-'}"
                     f" last_error={rec.last_error!r}")
    for label, snap in snaps.items():
        slots = [f"current={book.describe(_reveal(snap.current))}"]
        if snap.pending is not None:
            slots.append(f"pending={book.describe(_reveal(snap.pending))}")
        if snap.previous is not None:
            slots.append(f"previous={book.describe(_reveal(snap.previous))}")
        lines.append(f"    {short_label(label)}: " + "; ".join(slots))
    return "\n".join(lines)


def short_label(label: str) -> str:
    """``app:/tmp/.../app/alpha.json`` -> ``app:alpha.json``."""
    backend, _, path = label.partition(":")
    return f"{backend}:{Path(path).name}" if path else label


def compact_state(names: tuple[str, ...], reader: Reader, pids: dict[int, int]) -> str:
    """One line: each secret's phase, rotation id and owner (as a process number when known)."""
    parts = []
    for name in names:
        secret = reader.secret(name)
        rec = secret.primary.backend.read(secret.primary.target).record
        if rec is None:
            parts.append(f"{name}=unmanaged")
            continue
        part = f"{name}={rec.phase.value}"
        if rec.rotation_id:
            part += f" r-{rec.rotation_id[:8]}"
        if rec.owner:
            part += f" owner={owner_label(rec.owner, pids)}"
        if rec.last_error:
            part += f" last_error={rec.last_error[:80]!r}"
        parts.append(part)
    return " | ".join(parts)


def owner_label(owner: str, pids: dict[int, int]) -> str:
    """``host:pid:xxxx`` -> ``p<n>`` for the processes this test started."""
    try:
        pid = int(owner.split(":")[1])
    except (IndexError, ValueError):
        return owner
    return f"p{pids[pid]}" if pid in pids else owner


def check_i1(names: tuple[str, ...], reader: Reader, book: KeyBook, emu: Any) -> list[str]:
    """I1 right now (nothing is running): every target's current key is accepted by the issuer."""
    problems = []
    for name in names:
        for label, snap in reader.snapshots(name).items():
            value = _reveal(snap.current)
            if value is None or not emu.is_active(value):
                problems.append(f"I1: {name} target {short_label(label)} holds {book.describe(value)}")
    return problems


class I1Monitor(threading.Thread):
    """I1 at every instant, sampled while processes run: a target whose current key the issuer
    refuses, confirmed by reading the target again after the refusal (keys never come back to
    life, so a target still holding that key then held a dead key at that instant)."""

    def __init__(self, names: tuple[str, ...], config_path: Path, emu: Any, interval: float = 0.05) -> None:
        super().__init__(name="race-i1-monitor", daemon=True)
        self.names, self.emu, self.interval = names, emu, interval
        self.reader = Reader(config_path)
        self.book = KeyBook(emu)
        self.step = "seed"
        self.samples = 0
        self.violations: list[str] = []
        self._seen: set[tuple[str, str]] = set()
        self._halt = threading.Event()
        self._mutex = threading.Lock()

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                self._sample()
                self._halt.wait(self.interval)
        except Exception as exc:  # noqa: BLE001 - reported, never swallowed
            with self._mutex:
                self.violations.append(f"monitor crashed: {type(exc).__name__}: {exc}")

    def _sample(self) -> None:
        for name in self.names:
            for bound in self.reader.secret(name).targets:
                snap = bound.backend.read(bound.target)
                value = _reveal(snap.current)
                if value is not None and self.emu.is_active(value):
                    continue
                again = bound.backend.read(bound.target)
                if again.version != snap.version:
                    continue                      # changed meanwhile: not conclusive
                key = (bound.label, fp(value) if value else "-")
                if key in self._seen:
                    continue
                self._seen.add(key)
                with self._mutex:
                    self.violations.append(
                        f"I1 (in flight, {self.step}, at {clock_text()}): {name} target {short_label(bound.label)}"
                        f" holds {self.book.describe(value)}")
        self.samples += 1

    def stop(self) -> list[str]:
        self._halt.set()
        self.join(timeout=10)
        self.reader.close()
        with self._mutex:
            return list(self.violations)


# --------------------------------------------------------------------------- processes

@dataclass
class ProcSpec:
    number: int
    force: bool
    secrets: tuple[str, ...]          # empty: all
    start_at: float                   # seconds after the step starts
    kill: str                         # "-" | "early" | "mid"
    kill_after: float | None          # seconds after its own start
    debug: bool

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "rotator.cli"]
        if self.debug:
            argv += ["--log-level", "debug"]
        argv += ["rotate", "-o", "json"]
        if self.force:
            argv.append("--force")
        return argv + list(self.secrets)

    def describe(self) -> str:
        what = "rotate" + (" --force" if self.force else "") + (" " + " ".join(self.secrets) if self.secrets else "")
        kill = "" if self.kill == "-" else f", SIGKILL {self.kill_after:.2f}s after its start ({self.kill})"
        return f"p{self.number} `{what}` start +{self.start_at:.2f}s{kill}"


@dataclass
class Proc:
    spec: ProcSpec
    out: Path
    err: Path
    popen: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    ended: float | None = None
    returncode: int | None = None
    killed: str = ""                  # "", "scheduled", "deadline", "teardown"
    wall: str = ""                    # wall-clock start, as the emulator writes instants

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self, env: dict[str, str], cwd: Path) -> None:
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.popen = subprocess.Popen(self.spec.argv(), env=env, cwd=cwd, stdout=out, stderr=err,
                                          stdin=subprocess.DEVNULL)
        self.started = time.monotonic()
        self.wall = clock_text()

    def kill(self, why: str) -> bool:
        """SIGKILL this process (by its own pid) if it still runs; True if the signal was sent."""
        if not self.alive():
            return False
        assert self.popen is not None
        self.popen.send_signal(signal.SIGKILL)
        self.killed = why
        return True

    def reap(self, timeout: float) -> None:
        if self.popen is None:
            return
        try:
            self.returncode = self.popen.wait(timeout=max(timeout, 0.01))
        except subprocess.TimeoutExpired:
            self.kill("deadline")
            self.returncode = self.popen.wait(timeout=10)
        if self.ended is None:
            self.ended = time.monotonic()

    def poll(self) -> None:
        if self.popen is not None and self.ended is None and self.popen.poll() is not None:
            self.ended = time.monotonic()
            self.returncode = self.popen.returncode

    def text(self) -> str:
        return self.out.read_text(errors="replace") + "\n" + self.err.read_text(errors="replace")

    def log_lines(self) -> list[str]:
        """Its stderr log as short lines: ``time level message`` (JSON lines) or the raw line."""
        lines = []
        for raw in self.err.read_text(errors="replace").splitlines() if self.err.exists() else []:
            try:
                entry = json.loads(raw)
                lines.append(f"{entry.get('time', '')[11:23]} {entry.get('level', '')} {entry.get('message', '')}")
            except (ValueError, AttributeError):
                lines.append(raw)
        return lines

    def outcomes(self) -> str:
        """``secret=result/phase`` from its JSON summary, when it printed one."""
        try:
            rows = json.loads(self.out.read_text())["outcomes"]
        except (ValueError, KeyError, TypeError):
            return ""
        return " ".join(f"{r['secret']}={r['result']}/{r['phase']}" for r in rows)

    def summary(self) -> str:
        took = f"{self.ended - self.started:.2f}s" if self.ended and self.started else "?"
        if self.killed:
            how = f"SIGKILLed ({self.killed}) after {took}"
        else:
            how = f"exit {self.returncode} after {took}"
        outcomes = self.outcomes()
        err = self.err.read_text(errors="replace") if self.err.exists() else ""
        notes = []
        if "Traceback (most recent call last)" in err:
            notes.append("TRACEBACK in stderr")
        if "unexpected error" in err:
            notes.append("'unexpected error' logged")
        pid = self.popen.pid if self.popen else "-"
        return (f"p{self.spec.number} (pid {pid}, from {self.wall}): {how}"
                + (f" [{outcomes}]" if outcomes else "") + (f" !! {'; '.join(notes)}" if notes else ""))


def plan_processes(rng: random.Random, names: tuple[str, ...], first: int) -> list[ProcSpec]:
    specs = []
    for i in range(rng.randint(2, 4)):
        force = rng.random() < 0.7
        subset: tuple[str, ...] = ()
        if rng.random() < 0.25:
            subset = tuple(sorted(rng.sample(names, rng.randint(1, len(names) - 1))))
        when = rng.random()
        if when < 0.35:
            start_at = 0.0                                              # together
        elif when < 0.7:
            start_at = round(rng.uniform(0.0, 1.0), 2)                  # staggered
        else:
            start_at = round(rng.uniform(LEASE_S - 0.5, LEASE_S + 2.5), 2)   # late: around lease expiry
        roll = rng.random()
        if roll < 0.2:
            kill, after = "early", round(rng.uniform(0.0, STARTUP_S), 2)
        elif roll < 0.6:
            kill, after = "mid", round(rng.uniform(STARTUP_S, 2.5), 2)
        else:
            kill, after = "-", None
        specs.append(ProcSpec(first + i, force, subset, start_at, kill, after, debug=rng.random() < 0.3))
    return specs


def plan_faults(rng: random.Random, faults: Any) -> tuple[list[str], float]:
    """Arm 0-2 faults from the menu; return what was armed and when to clear them."""
    menu = [f for f in FAULTS if f.needs is None or hasattr(faults, f.needs)]
    count = rng.choice([1, 1, 1, 2])
    chosen = rng.choices(menu, weights=[f.weight for f in menu], k=count)
    armed = [f"{f.name}: {f.arm(faults, rng)}" for f in chosen]
    return armed, round(rng.uniform(1.0, 5.0), 2)


def run_step(procs: list[Proc], env: dict[str, str], cwd: Path, clear_at: float, emu: Any,
             deadline_s: float = PROCESS_DEADLINE_S) -> float:
    """Start, kill and reap one step's processes on its timeline; return how long it took.

    Every wait is bounded: whatever still runs after ``deadline_s`` is SIGKILLed and noted."""
    t0 = time.monotonic()
    events: list[tuple[float, int, str, Proc | None]] = [(clear_at, 0, "clear", None)]
    for order, p in enumerate(procs):
        events.append((p.spec.start_at, 1 + order, "start", p))
    events.sort(key=lambda e: (e[0], e[1]))
    kills: list[tuple[float, Proc]] = []
    pending = list(events)
    while pending or kills:
        now = time.monotonic() - t0
        due_kills = [k for k in kills if k[0] <= now]
        for k in due_kills:
            kills.remove(k)
            k[1].poll()
            k[1].kill("scheduled")
        while pending and pending[0][0] <= now:
            _, _, what, p = pending.pop(0)
            if what == "clear":
                emu.faults.clear()
            else:
                assert p is not None
                p.start(env, cwd)
                if p.spec.kill_after is not None:
                    kills.append((now + p.spec.kill_after, p))
        for p in procs:
            p.poll()
        nexts = [e[0] for e in pending[:1]] + [k[0] for k in kills]
        if not nexts:
            break
        time.sleep(max(0.0, min(min(nexts) - (time.monotonic() - t0), 0.02)))
    for p in procs:
        p.reap(deadline_s - (time.monotonic() - t0))
    return time.monotonic() - t0


def run_plain(number: int, env: dict[str, str], cwd: Path, outdir: Path, timeout: float = 60.0) -> Proc:
    """One plain `rotator rotate` (no faults, no kill), waited for with a bound."""
    spec = ProcSpec(number, force=False, secrets=(), start_at=0.0, kill="-", kill_after=None, debug=False)
    p = Proc(spec, outdir / f"p{number}.out", outdir / f"p{number}.err")
    p.start(env, cwd)
    p.reap(timeout)
    return p


# --------------------------------------------------------------------------- the end state

def check_final(names: tuple[str, ...], reader: Reader, book: KeyBook, emu: Any,
                admin_key: str) -> tuple[list[str], list[dict[str, Any]]]:
    """After convergence: each secret idle, one key on every target, that key live and named for
    the secret; no other live key named for any secret, nor any other live key at all besides the
    admin key (every key rotator minted is either current or revoked); the admin key live."""
    problems: list[str] = []
    strays: list[dict[str, Any]] = []
    book.refresh()
    current: dict[str, str] = {}
    for name in names:
        snaps = reader.snapshots(name)
        rec = snaps[reader.secret(name).primary.label].record
        if rec is None or rec.phase.value != "idle":
            problems.append(f"converge: {name} is in phase {rec.phase.value if rec else 'none'} after the plain runs")
        values = {_reveal(s.current) for s in snaps.values()}
        if len(values) != 1 or None in values:
            held = ", ".join(f"{short_label(label)}={book.describe(_reveal(s.current))}" for label, s in snaps.items())
            problems.append(f"final I1: the targets of {name} disagree: {held}")
            continue
        (value,) = values
        assert value is not None
        record = book.record(value)
        if not emu.is_active(value):
            problems.append(f"final I1: {name}'s targets hold {book.describe(value)}")
        elif record is None or not _named_for(record["name"], name):
            problems.append(f"final: {name}'s current key {book.describe(value)} is not named for {name}")
        current[name] = fp(value)
    if not emu.is_active(admin_key):
        problems.append(f"admin key revoked: {book.describe(admin_key)}")
    expected = set(current.values()) | {fp(admin_key)}
    rotation_of = {n: (book.record_by_fp(current[n]) or {}).get("name", "") for n in current}
    for rec in book.live_records():
        if rec["value_fingerprint"] in expected:
            continue
        owner = next((n for n in names if _named_for(rec["name"], n)), None)
        if owner is None:
            kind = "a live key named for no secret"
        elif rec["name"] == rotation_of.get(owner):
            kind = f"a TWIN of {owner}'s current key (same name)"
        elif rec["name"].endswith("(by hand)"):
            kind = f"{owner}'s hand-made key, never revoked"
        else:
            kind = f"an ORPHAN of {owner} (rotation-tagged name, not its current key)"
        problems.append(f"I2/I4: {kind}: …{rec['last_4_characters']} {rec['name']!r} id={rec['id'][:8]}"
                        f" created {rec['created_on']}")
        strays.append(rec)
    return problems, strays


def _named_for(key_name: str, secret: str) -> bool:
    return key_name == secret or key_name.startswith(secret + " ")


def forensics(strays: list[dict[str, Any]], procs: list[Proc], limit: int = 40) -> str:
    """For each stray key: every log line of every process that names its rotation or its id."""
    out = []
    for rec in strays:
        needles = [rec["id"]]
        tag = rec["name"].rsplit("[r-", 1)
        if len(tag) == 2:
            needles.append(tag[1].rstrip("]"))
        out.append(f"what the processes said about {rec['name']!r} (id {rec['id'][:8]}, created {rec['created_on']}):")
        found = 0
        for p in procs:
            for line in p.log_lines():
                if any(n in line for n in needles):
                    found += 1
                    if found <= limit:
                        out.append(f"  p{p.spec.number}: {line}")
        if found > limit:
            out.append(f"  ... {found - limit} more")
        if not found:
            out.append("  (nothing: the process that minted it died before saying so)")
    return "\n".join(out)


def in_flight_bound(reader: Reader) -> timedelta | None:
    """How long after it was sent an issue request may still mint a key, as the issuer says
    (``Issuer.in_flight_bound``, optional): rotator leaves strays younger than this alone."""
    bounds = [getattr(issuer, "in_flight_bound", None) for issuer in reader.runtime.issuers.values()]
    known = [b for b in bounds if isinstance(b, timedelta)]
    return max(known) if known else None


def youngest(strays: list[dict[str, Any]]) -> datetime:
    return max(datetime.fromisoformat(r["created_on"].replace("Z", "+00:00")) for r in strays)


def scan_leaks(procs: list[Proc], emu: Any) -> list[str]:
    """I2: no key value the emulator minted appears in any process's stdout or stderr."""
    minted = emu.issued_values()
    problems = []
    for p in procs:
        text = p.text()
        leaked = [v[-4:] for v in minted if v in text]
        if leaked:
            problems.append(f"I2 leak: p{p.spec.number} printed key value(s) ending {leaked}")
    return problems


@dataclass
class Journal:
    """What happened, step by step, printed with every failure."""

    seed: int
    lines: list[str] = field(default_factory=list)

    def add(self, line: str) -> None:
        self.lines.append(line)

    def text(self) -> str:
        return "\n".join(self.lines)
