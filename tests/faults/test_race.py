"""A randomized, seeded race: several `rotator rotate` processes at once on the same secrets, with
a 3 s lease, a slow issuer, 429 bursts, 5xx (before and after the effect) and random SIGKILLs.

After every step: I1 (every target of every secret holds a key the issuer accepts) and the admin
key still live; while the processes run, a monitor samples I1 as well. At the end, after rotator
converges without faults: each secret idle with exactly one live key, held by every target and
named for it; no other live key at all besides the admin key (no twin, no orphan, no forgotten
old key: I2/I4); no key value in any process's output (I2).

Replay a failure with the seed it prints (and the step count, to stop where it stopped)::

    RACE_SEED=123456 RACE_STEPS=9 python -m pytest -q tests/faults/test_race.py

Run longer locally with a bigger budget (seconds of schedule, 45 by default)::

    RACE_SECONDS=600 python -m pytest -q -s tests/faults/test_race.py

Converging takes ~10 s (lease, grace, plain runs) plus, when stray keys are left, up to the
issuer's ``in_flight_bound`` (timeout x retries + 1 min): rotator does not sweep a stray younger
than that, so the test waits it out and runs once more before judging. A failure names the seed,
the step, the invariant, what every target and the issuer held, and what each process logged
about every stray key.

The schedule (faults, processes, their arguments, start offsets and kill times) is a pure
function of the seed; only process timing varies between runs of one seed.
"""

from __future__ import annotations

import os
import random
import time
from datetime import datetime, timezone

import pytest

from rotator_providers.quiva.emulator import Emulator
from tests.faults.race_support import (
    ADMIN_EMAIL, LEASE_S, I1Monitor, Journal, KeyBook, Proc, Reader, check_final, check_i1,
    clock_text, compact_state, describe_secret, env_float, env_int, env_seed, forensics, in_flight_bound,
    make_world, plan_faults, plan_processes, run_plain, run_step, scan_leaks, seed_hand_made_keys, youngest,
)

DEFAULT_SECONDS = 45.0
CONVERGE_RUNS = 5
MAX_IN_FLIGHT_WAIT_S = 150.0


@pytest.mark.slow
def test_racing_processes_with_faults_and_kills_keep_the_invariants(tmp_path, monkeypatch):
    seed = env_seed()
    budget = env_float("RACE_SECONDS", DEFAULT_SECONDS)
    fixed_steps = env_int("RACE_STEPS")
    print(f"RACE_SEED={seed} RACE_SECONDS={budget} RACE_STEPS={fixed_steps}")
    rng = random.Random(seed)
    journal = Journal(seed)
    violations: list[str] = []
    procs: list[Proc] = []
    pids: dict[int, int] = {}
    outdir = tmp_path / "out"
    outdir.mkdir()
    emu = Emulator(port=0).start()                      # its own real-time clock
    reader = monitor = None
    steps = 0
    started = time.monotonic()
    try:
        admin_key = emu.add_user(ADMIN_EMAIL, role="admin")
        monkeypatch.setenv("QUIVA_API_KEY", admin_key)
        world = make_world(rng, emu.url, tmp_path)
        journal.add(f"seed {seed}: {world.describe()}")
        env = {**os.environ, "QUIVA_API_KEY": admin_key, "ROTATOR_CONFIG": str(world.path)}
        reader = Reader(world.path)
        book = KeyBook(emu)
        seed_hand_made_keys(world, emu, reader)

        def track(p: Proc) -> Proc:
            procs.append(p)
            if p.popen is not None:
                pids[p.popen.pid] = p.spec.number
            return p

        def state() -> str:
            return compact_state(world.names, reader, pids)

        # Every secret managed first: adopted (and rotated at once if due) or bootstrapped.
        first = track(run_plain(0, env, tmp_path, outdir))
        journal.add(f"seed run: {first.summary()}")
        journal.add(f"  state: {state()}")
        assert first.returncode == 0, _report(seed, steps, ["the seed run failed"], journal, first.text())
        violations += [f"after the seed run: {v}" for v in check_i1(world.names, reader, book, emu)]

        monitor = I1Monitor(world.names, world.path, emu)
        monitor.start()
        number = 1
        while not violations:
            if fixed_steps is not None and steps >= fixed_steps:
                break
            if fixed_steps is None and time.monotonic() - started >= budget:
                break
            steps += 1
            monitor.step = f"step {steps}"
            armed, clear_at = plan_faults(rng, emu.faults)
            specs = plan_processes(rng, world.names, number)
            number += len(specs)
            step_procs = [Proc(s, outdir / f"p{s.number}.out", outdir / f"p{s.number}.err") for s in specs]
            journal.add(f"step {steps} at {clock_text()}: faults [{'; '.join(armed)}] until +{clear_at:.2f}s")
            journal.add("\n".join(f"  {s.describe()}" for s in specs))
            procs.extend(step_procs)                     # killed at teardown whatever happens
            took = run_step(step_procs, env, tmp_path, clear_at, emu)
            emu.faults.clear()
            for p in step_procs:
                if p.popen is not None:
                    pids[p.popen.pid] = p.spec.number
                journal.add(f"  -> {p.summary()}")
                if not p.killed and p.returncode not in (0, 1):
                    violations.append(f"step {steps}: p{p.spec.number} exited {p.returncode} (only 0 or 1 expected)")
                if p.killed == "deadline":
                    journal.add(f"  !! p{p.spec.number} still ran after the step's deadline and was killed")
            journal.add(f"  state after {took:.1f}s: {state()}")
            violations += [f"step {steps}: {v}" for v in check_i1(world.names, reader, book, emu)]
            if not emu.is_active(admin_key):
                violations.append(f"step {steps}: the admin key was revoked: {book.describe(admin_key)}")

        # Converge without faults: let every lease and grace window run out, then plain runs.
        monitor.step = "converge"
        emu.faults.clear()
        journal.add(f"converge: {steps} step(s) in {time.monotonic() - started:.1f}s; waiting out lease and grace")
        time.sleep(LEASE_S + world.grace_s + 1.0)
        settled = False
        for _ in range(CONVERGE_RUNS):
            p = track(run_plain(number, env, tmp_path, outdir))
            number += 1
            journal.add(f"  plain {p.summary()}\n  state: {state()}")
            if p.returncode == 0 and not p.killed and all(ph == "idle" for ph in phases(world.names, reader).values()):
                settled = True
                break
            time.sleep(world.grace_s + 0.5)
        if not settled:
            violations.append(f"converge: not every secret idle with a clean plain run after {CONVERGE_RUNS} runs")
        # Rotator leaves stray keys younger than the issuer's in-flight bound alone (an issue request
        # may still be running); converging includes that window: wait it out, then one more run.
        _, strays = check_final(world.names, reader, book, emu, admin_key)
        bound = in_flight_bound(reader)
        if strays and bound is not None:
            wait = (youngest(strays) + bound - datetime.now(timezone.utc)).total_seconds() + 1.0
            journal.add(f"  {len(strays)} stray key(s) live; the issuer's in-flight bound is {bound}: "
                        f"waiting {max(wait, 0):.1f}s for the sweep")
            if wait > MAX_IN_FLIGHT_WAIT_S:
                violations.append(f"converge: the in-flight bound ({bound}) is longer than this test waits")
            else:
                time.sleep(max(wait, 0.0))
                p = track(run_plain(number, env, tmp_path, outdir))
                number += 1
                journal.add(f"  plain {p.summary()}\n  state: {state()}")
        violations += [f"during the race: {v}" for v in monitor.stop()]
        final, strays = check_final(world.names, reader, book, emu, admin_key)
        violations += [f"final: {v}" for v in final]
        violations += scan_leaks(procs, emu)
        journal.add("final state:\n" + "\n".join(describe_secret(n, reader, book, pids) for n in world.names))
        journal.add(f"emulator: {len(emu.keys())} keys, counters {_counters(emu)}; I1 monitor took"
                    f" {monitor.samples} samples; total {time.monotonic() - started:.1f}s")
        if strays:
            journal.add(forensics(strays, procs))
        if not violations:
            print(journal.text())                        # shown with -s / -rP; a failure shows it below
        assert not violations, _report(seed, steps, violations, journal)
    finally:
        for p in procs:
            p.kill("teardown")
            p.reap(10)
        if monitor is not None and monitor.is_alive():
            monitor.stop()
        if reader is not None:
            reader.close()
        emu.stop()


def phases(names, reader: Reader) -> dict[str, str]:
    found = {}
    for name in names:
        secret = reader.secret(name)
        record = secret.primary.backend.read(secret.primary.target).record
        found[name] = record.phase.value if record else "unmanaged"
    return found


def _counters(emu: Emulator) -> str:
    counts = emu.counters()
    return ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))


def _report(seed: int, steps: int, violations: list[str], journal: Journal, extra: str = "") -> str:
    head = (f"race failed with RACE_SEED={seed} after {steps} step(s); replay:"
            f" RACE_SEED={seed} RACE_STEPS={steps} python -m pytest -q tests/faults/test_race.py")
    return "\n".join([head, *(f"  - {v}" for v in violations), "--- journal ---", journal.text(), extra])
