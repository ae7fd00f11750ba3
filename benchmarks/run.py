#!/usr/bin/env python
"""rotator's performance, measured in one command: ``python benchmarks/run.py`` (``--quick``).

Six measurements, each against servers this script starts on loopback and stops itself (the
QuivaWorks emulator and moto in their own processes, an OpenBao dev server, latency proxies):

1. ``calls``  — calls per rotation for each primary/secondary combination against the crash-safe
   minimum, counted three ways (engine → Protocol calls, request hooks on urllib3/httpx/boto3/hvac, the
   emulator's own counters and what each provider reports per remote call); and Parameter Store's
   batched reads: ``GetParameters`` per read pass for fleets of N SSM secondaries, against
   ceil(N / 10);
2. ``cpu``    — own CPU per rotation against the peer's, one layout at a time (``--cpu-layouts``),
   with a cProfile of every thread of a further round: where rotator's CPU goes, per component;
3. ``fleet``  — a fleet (``--fleet``, default 1000; its layouts ``--fleet-layouts``) across file,
   moto and OpenBao: rotator's wall time against :mod:`baseline`, the sequential peer, in the same
   process run, all local and again with latency (25 ms per issuer call, 10 ms per backend request);
4. ``rate``   — with the emulator limiting to R requests/s (a token bucket, then a fixed window;
   R = 50 and 100 by default): total time against calls / R, with ``rate_limit`` and with a
   pace learnt from 429s (:mod:`rate`);
5. ``idle``   — a ``rotator daemon`` process: RSS and CPU over 60 s of idling;
6. ``cold``   — ``rotator --help`` and ``rotator plan`` (100 secrets) as whole processes.

Prints a Markdown table and writes ``benchmarks/results.json``. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import probes  # noqa: E402
from baseline import Peer  # noqa: E402
from counting import OnCall, ProtocolCounter, WireCounter, aws_operations  # noqa: E402
from fleet import (  # noqa: E402
    FLEET_LAYOUTS, PEER_USER, ROTATOR_USER, Endpoints, OffsetClock, build, layout_name, parse_layouts,
    rotator_config, seed_for_peer, seed_for_rotator, set_env,
)
from rate import CLIENTS, measure_rate  # noqa: E402
from servers import EmulatorProcess, Servers, context_switches, cpu_seconds, rss_mib  # noqa: E402

from rotator import drift  # noqa: E402
from rotator import log as rotator_log  # noqa: E402
from rotator.engine import Engine, RunReport  # noqa: E402
from rotator.models import Phase  # noqa: E402
from rotator.readahead import ReadAhead  # noqa: E402
from rotator.runtime import Runtime  # noqa: E402

CALL_COMBOS: tuple[tuple[str, ...], ...] = (
    ("file",), ("aws",), ("vault",),
    ("file", "aws"), ("file", "vault"), ("aws", "file"), ("vault", "file"), ("aws", "vault"), ("vault", "aws"),
    ("file", "aws", "vault"),
    # Parameter Store (``ssm``) is a secondary only: behind each primary that can hold the record
    ("file", "ssm"), ("vault", "ssm"), ("aws", "ssm"),
)
DAY = timedelta(days=1)
SSM = "AmazonSSM."              # X-Amz-Target prefix of Parameter Store's requests
SSM_BATCH = 10                  # names per GetParameters (AWS's limit; the backend's read_batch)
SSM_BATCH_SIZES = (1, 10, 11, 25, 45)        # fleets of N SSM secondaries: GetParameters per read pass


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def own_cpu() -> float:
    return own_usage()[0]


def own_usage() -> tuple[float, float, int]:
    """This process's CPU seconds, the kernel's part of them (system calls, thread hand-offs)
    and its context switches (a thread that blocks, or waits for the GIL, is one)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, usage.ru_stime, usage.ru_nvcsw + usage.ru_nivcsw


def _add_usage(side: dict[str, Any], before: tuple[float, float, int]) -> None:
    for key, start, now in zip(("cpu", "sys", "switches"), before, own_usage()):
        side[key] += now - start


class Bench:
    """The servers, the two QuivaWorks users and the shared clock offset."""

    def __init__(self, servers: Servers, workdir: Path) -> None:
        self.servers = servers
        self.emulator = servers.emulator
        self.workdir = workdir
        self.clock = OffsetClock()
        self.rotator_user, self.peer_user = ROTATOR_USER, PEER_USER
        self.use(ROTATOR_USER, PEER_USER)
        WireCounter.install()

    def use(self, rotator_user: str, peer_user: str | None = None) -> None:
        """QuivaWorks users of the next measurement (created if new), each with a fresh admin key.
        One user per measurement: its listing holds only that measurement's keys."""
        self.rotator_user, self.peer_user = rotator_user, peer_user or self.peer_user
        self.rotator_key = self.emulator.add_user(self.rotator_user)
        self.peer_key = self.emulator.add_user(self.peer_user)
        set_env(self.rotator_key, self.servers.bao.root_token if self.servers.bao else None)

    def shift(self, delta: timedelta) -> None:
        """Move the emulator's clock and rotator's by the same amount. Admin keys expire after three
        months like any other: each shift gives both users a fresh one (minted "now")."""
        self.emulator.advance(delta.total_seconds())
        self.clock.advance(delta)
        self.use(self.rotator_user, self.peer_user)

    def endpoints(self, prefix: str, backend_latency_ms: float = 0) -> Endpoints:
        servers = self.servers
        return Endpoints(
            quiva=self.emulator.url,
            aws=servers.proxy(servers.moto.url, backend_latency_ms) if servers.moto else None,
            vault=servers.proxy(servers.bao.url, backend_latency_ms) if servers.bao else None,
            vault_token=servers.bao.root_token if servers.bao else None,
            files=self.workdir / prefix,
        )

    def runtime(self, settings: Any, on_call: Any = None) -> Runtime:
        return Runtime(settings, clock=self.clock, sleep=self.clock.sleep, on_call=on_call)

    def cpu(self) -> dict[str, float]:
        found = {"rotator/peer process": own_cpu(), "emulator": cpu_seconds(self.emulator.pid)}
        if self.servers.moto:
            found["moto"] = cpu_seconds(self.servers.moto.pid)
        if self.servers.bao:
            found["openbao"] = cpu_seconds(self.servers.bao.pid)
        found["latency proxies"] = sum(cpu_seconds(p.pid) for p in self.servers.proxies)
        return found

    def live_keys(self, email: str, prefix: str) -> list[dict[str, Any]]:
        """Keys not deleted whose name starts with ``prefix`` (one fleet's keys)."""
        return [k for k in self.emulator.keys(email) if k["deleted_on"] is None and k["name"].startswith(prefix)]


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: round(after[k] - before.get(k, 0.0), 3) for k in after}


def check(report: RunReport, what: str) -> None:
    if report.failed:
        raise SystemExit(f"{what}: {len(report.failed)} secret(s) failed, e.g. "
                         f"{report.failed[0].secret}: {report.failed[0].error}")


# --- 1. calls per rotation --------------------------------------------------------------------

def minimum(backends: int, normal: bool = False) -> int:
    """The crash-safe minimum of docs/PERFORMANCE.md for one run: issuer 3 + primary 4 + (B - 1)
    + B. A normal rotation revokes in a second run, after the grace window, and I3 revokes only
    when every target reads back the new key *then*: + B reads (docs/performance.md)."""
    return 3 + 4 + (backends - 1) + backends + (backends if normal else 0)


def batches(n: int, size: int = SSM_BATCH) -> int:
    return -(-n // size)


def ssm_wire_minimum(n: int, normal: bool) -> float:
    """Parameter Store requests per rotation of one SSM secondary, the least a crash-safe rotation
    of ``n`` secrets needs (docs/performance.md): the deploy's pre-deploy comparison read, batched
    (``ceil(n / 10)`` GetParameters for the ``n``), one PutParameter, the read-back after the write
    (one GetParameter: it must follow the write, so it cannot come from a batch), and, in a normal
    rotation, the re-read before the revoke two days later, batched again."""
    batched_passes = 2 if normal else 1
    return round(1 + 1 + batched_passes * batches(n) / n, 2)


def measure_calls(bench: Bench, per_combo: int, workers: int) -> list[dict[str, Any]]:
    """Per combination: ``two_runs`` — the normal rotation (run 1 issues … promotes; run 2, after
    the 48 h grace, revokes and finishes), one process for both as in the daemon; ``one_run`` —
    the same secrets rotated again with grace 0 (everything in one run, as the peer does)."""
    rows = []
    for index, combo in enumerate(CALL_COMBOS):
        prefix = f"calls{index}"
        bench.use(f"{prefix}@example.com")
        specs = build(prefix, per_combo, [combo])
        endpoints = bench.endpoints(prefix)
        settings = rotator_config(specs, endpoints, workers=workers, grace="48h")
        seeding = bench.runtime(settings)
        seed_for_rotator(seeding, bench.emulator, specs, bench.emulator.now() - 70 * DAY, user=bench.rotator_user)
        check(Engine(seeding).run(), f"calls {combo}: adoption")            # adopts; not due yet
        seeding.close()
        bench.shift(10 * DAY)                                              # now due
        two = _counted(bench, settings, endpoints, combo, per_combo, [timedelta(hours=49)], rotations=1)
        bench.shift(80 * DAY)                                              # due again
        one = _counted(bench, rotator_config(specs, endpoints, workers=workers, grace="0s"), endpoints, combo,
                       per_combo, [], rotations=2)
        b = len(combo)
        row = {"combo": layout_name(combo), "backends": b, "secrets": per_combo, "minimum": minimum(b),
               "two_runs": two, "one_run": one}
        for mode, normal in ((two, True), (one, False)):
            mode["minimum"] = minimum(b, normal)
            mode["over_minimum"] = round(mode["logical_per_rotation"] - mode["minimum"], 2)
        if "ssm" in combo:
            two["ssm_wire_minimum"] = ssm_wire_minimum(per_combo, normal=True)
            one["ssm_wire_minimum"] = ssm_wire_minimum(per_combo, normal=False)
            for mode in (two, one):
                mode["ssm_over_wire_minimum"] = round(mode["ssm_requests_per_rotation"] - mode["ssm_wire_minimum"], 2)
        rows.append(row)
        for mode in (two, one):
            hooks, served = mode["issuer_requests_hooks_vs_emulator"]
            if hooks != served:
                say(f"WARNING calls {row['combo']}: the request hooks counted {hooks} issuer requests, the emulator {served}")
            hooks, reported = mode["ssm_requests_hooks_vs_provider"]
            if hooks != reported:
                say(f"WARNING calls {row['combo']}: botocore hook counted {hooks} Parameter Store requests,"
                    f" the backend reported {reported}")
        say(f"calls {row['combo']}: {two['logical_per_rotation']} / {one['logical_per_rotation']} logical"
            f" (min {two['minimum']} / {one['minimum']}), {two['wire_per_rotation']} / {one['wire_per_rotation']} wire per rotation")
    return rows


def _counted(bench: Bench, settings: Any, endpoints: Endpoints, combo: tuple[str, ...], n: int,
             shifts: list[timedelta], rotations: int) -> dict[str, Any]:
    """Run the engine (once, then once more after each shift) in one runtime; count everything."""
    on_call = OnCall()
    runtime = bench.runtime(settings, on_call=on_call)
    protocol = ProtocolCounter(runtime)
    WireCounter.take()
    bench.emulator.reset_counters()
    reported: Counter[tuple[str, str, str]] = Counter()
    ssm_runs: list[dict[str, int]] = []           # Parameter Store requests of each run (a read pass or not)

    def after_run() -> None:
        part = on_call.take()
        reported.update(part)
        if "ssm" in combo:
            ssm_runs.append(dict(sorted(Counter({op: c for (p, op, _), c in part.items() if p == "ssm"}).items())))

    check(Engine(runtime).run(), f"calls {combo}: run 1")
    after_run()
    for delta in shifts:
        bench.shift(delta)
        check(Engine(runtime).run(), f"calls {combo}: run after {delta}")
        after_run()
    logical = protocol.take()
    (wire, operations), served = WireCounter.take_both(), bench.emulator.counters()
    for secret in runtime.secrets[:3]:
        record = secret.primary.backend.read(secret.primary.target).record
        assert record.phase is Phase.IDLE and record.rotations == rotations, record
    runtime.close()
    issuer_wire = sum(v for k, v in served.items() if not k.startswith("status:"))
    hooks_issuer = WireCounter.for_url(wire, endpoints.quiva)
    # Secrets Manager and Parameter Store share the moto server: told apart by X-Amz-Target
    ssm_ops = aws_operations(operations, SSM)
    ssm_wire = sum(ssm_ops.values())
    moto_wire = WireCounter.for_url(wire, endpoints.aws) if {"aws", "ssm"} & set(combo) else 0
    aws_wire = moto_wire - ssm_wire
    vault_wire = WireCounter.for_url(wire, endpoints.vault) if "vault" in combo else 0
    file_ops = sum(v for (provider, _, _), v in reported.items() if provider == "files")
    ssm_reported = sum(v for (provider, _, _), v in reported.items() if provider == "ssm")
    per_method: Counter[str] = Counter()
    for (provider, method), count in logical.items():
        per_method[f"{provider}.{method}"] += count
    per_operation: Counter[str] = Counter()
    for (provider, operation, outcome), count in reported.items():
        per_operation[f"{provider}.{operation}" + ("" if outcome in ("ok", "200") else f" ({outcome})")] += count
    listings = sum(c for (_, method), c in logical.items() if method == "list_keys")
    return {
        # The minimum counts the key listing as amortised (one per issuer per run): it is reported
        # per run, and the per-rotation count leaves it out.
        "logical_per_rotation": round((sum(logical.values()) - listings) / n, 2),
        "listings_per_run": round(listings / (1 + len(shifts)), 2),
        "wire_per_rotation": round((issuer_wire + aws_wire + ssm_wire + vault_wire + file_ops) / n, 2),
        "issuer_requests_per_rotation": round(issuer_wire / n, 2),
        "issuer_requests_hooks_vs_emulator": [hooks_issuer, issuer_wire],
        "aws_requests_per_rotation": round(aws_wire / n, 2),
        "ssm_requests_per_rotation": round(ssm_wire / n, 2),
        "ssm_requests_hooks_vs_provider": [ssm_wire, ssm_reported],
        # Parameter Store requests of each run, as the backend reported them (counts, not per rotation)
        "ssm_requests_per_run": ssm_runs,
        "vault_requests_per_rotation": round(vault_wire / n, 2),
        "file_ops_per_rotation": round(file_ops / n, 2),
        "logical_breakdown": {k: round(v / n, 2) for k, v in sorted(per_method.items())},
        "issuer_endpoints": {k: round(v / n, 2) for k, v in sorted(served.items())},
        "aws_operations_on_wire": {k: round(v / n, 2) for k, v in sorted(operations.items())},
        "provider_operations": {k: round(v / n, 2) for k, v in sorted(per_operation.items())},
    }


def measure_ssm_batching(bench: Bench, sizes: tuple[int, ...], workers: int) -> list[dict[str, Any]]:
    """Parameter Store's batched reads, for fleets of N secrets file → ssm (the primary reads alone,
    so every GetParameters is the secondaries'). One runtime for three passes, as in the daemon:

    * ``rotate``  — run 1: deploy and read back (the read-back follows the write: one GetParameter
      each, never from a batch);
    * ``revoke``  — run 2, 49 h later: I3's re-read of every secondary before the old key is
      revoked, and the revoke's evidence reads, through the run's read-ahead: a read pass;
    * ``verify``  — a drift pass (what ``rotator verify`` / ``sync`` and the daemon's reconcile
      do): one :class:`ReadAhead` over the N secrets, read in turn: a read pass.

    Counted three ways: the engine's ``read_many`` calls on the backend, the backend's reports
    (``on_call``) and the botocore hook (X-Amz-Target)."""
    rows = []
    for n in sizes:
        row = _ssm_batching_row(bench, n, workers)
        rows.append(row)
        passes = row["passes"]
        say(f"ssm batching {n}: GetParameters rotate/revoke/verify "
            f"{passes['rotate']['GetParameters']}/{passes['revoke']['GetParameters']}/{passes['verify']['GetParameters']}"
            f" (ceil(N/10) = {batches(n)}), GetParameter {passes['rotate']['GetParameter']}/"
            f"{passes['revoke']['GetParameter']}/{passes['verify']['GetParameter']}")
        for label, counts in passes.items():
            hooks, reported = counts["hooks_vs_provider"]
            if hooks != reported:
                say(f"WARNING ssm batching {n} {label}: botocore hook counted {hooks} requests, the backend {reported}")
    return rows


def _ssm_batching_row(bench: Bench, n: int, workers: int) -> dict[str, Any]:
    prefix = f"pstore{n}"                 # not "ssm…": AWS reserves names starting aws/ssm
    bench.use(f"{prefix}@example.com")
    specs = build(prefix, n, [("file", "ssm")])
    endpoints = bench.endpoints(prefix)
    settings = rotator_config(specs, endpoints, workers=workers, grace="48h")
    seeding = bench.runtime(settings)
    seed_for_rotator(seeding, bench.emulator, specs, bench.emulator.now() - 70 * DAY, user=bench.rotator_user)
    check(Engine(seeding).run(), f"ssm batching {n}: adoption")
    seeding.close()
    bench.shift(10 * DAY)
    on_call = OnCall()
    runtime = bench.runtime(settings, on_call=on_call)
    protocol = ProtocolCounter(runtime)
    WireCounter.take()
    passes: dict[str, Any] = {}

    def counted(label: str, what: Any) -> None:
        what()
        logical, reported = protocol.take(), on_call.take()
        _, operations = WireCounter.take_both()
        wire = aws_operations(operations, SSM)
        provider = Counter({op: c for (p, op, _), c in reported.items() if p == "ssm"})
        passes[label] = {
            "GetParameters": provider["GetParameters"], "GetParameter": provider["GetParameter"],
            "PutParameter": provider["PutParameter"],
            "engine_read_many": logical[("ssm", "read_many")], "engine_read": logical[("ssm", "read")],
            "engine_deploy": logical[("ssm", "deploy")],
            "hooks_vs_provider": [sum(wire.values()), sum(provider.values())],
        }

    def verify() -> None:
        ahead = ReadAhead(runtime.secrets, runtime.clock)
        for secret in runtime.secrets:
            _, report = drift.check(secret, ahead)
            assert report.healthy, (secret.name, report)

    counted("rotate", lambda: check(Engine(runtime).run(), f"ssm batching {n}: run 1"))
    bench.shift(timedelta(hours=49))
    counted("revoke", lambda: check(Engine(runtime).run(), f"ssm batching {n}: run 2"))
    counted("verify", verify)
    runtime.close()
    return {"secrets": n, "workers": workers, "expected_get_parameters_per_pass": batches(n), "passes": passes}


# --- 2. fleet against the sequential peer -------------------------------------------------------

def measure_fleet(bench: Bench, size: int, latency_size: int, workers: int, issuer_latency_ms: float,
                  backend_latency_ms: float, rounds: int,
                  layouts: tuple[tuple[str, ...], ...] = FLEET_LAYOUTS) -> list[dict[str, Any]]:
    biggest = max(size, latency_size)
    rot_specs, peer_specs = build("rot", biggest, layouts), build("peer", biggest, layouts)
    base = bench.endpoints("fleet")
    peer_files = base.files / "peer"
    bench.use("fleet@example.com", PEER_USER)
    say(f"fleet: seeding {biggest} secrets for rotator and {biggest} for the peer")
    settings = rotator_config(rot_specs, base, workers=workers)
    seeding = bench.runtime(settings)
    created = bench.emulator.now() - 70 * DAY
    seed_for_rotator(seeding, bench.emulator, rot_specs, created, user=bench.rotator_user)
    peer = Peer(quiva=base.quiva, admin_key=bench.peer_key, aws=base.aws, vault=base.vault,
                vault_token=base.vault_token, files=peer_files)
    seed_for_peer(peer, bench.emulator, peer_specs, created, user=bench.peer_user)
    peer.close()
    started = time.perf_counter()
    adoption = Engine(seeding).run()
    check(adoption, "fleet: adoption")
    early = [o.secret for o in adoption.outcomes if any(a.startswith("issued") for a in o.actions)]
    say(f"fleet: adopted {biggest} in {time.perf_counter() - started:.1f}s ({len(early)} rotated at adoption)")
    seeding.close()

    rows = []
    scenarios = [("all local", size, 0.0, 0.0), ("with latency", latency_size, issuer_latency_ms, backend_latency_ms)]
    for label, n, issuer_ms, backend_ms in scenarios:
        if n <= 0:
            continue
        bench.shift(10 * DAY if not rows else 80 * DAY)                  # every key due (none expired)
        bench.emulator.faults(clear=True, **({"latency": {"seconds": issuer_ms / 1000}} if issuer_ms else {}))
        endpoints = bench.endpoints("fleet", backend_ms)
        endpoints.files = base.files
        load = [os.getloadavg()[0]]
        totals: dict[str, Any] = {"peer_seconds": 0.0, "rotator_seconds": 0.0, "peer_wire": 0, "rotator_wire": 0,
                                  "listings": 0, "failed": 0, "peer_cpu": Counter(), "rotator_cpu": Counter(),
                                  "calls": Counter(), "thread_cpu": Counter(), "statuses": Counter()}
        # Interleaved rounds (peer, rotator, peer, rotator, ...): drift in this shared machine's load
        # hits both alike. Each round is a fresh process-like start for both: new clients, new session.
        for part in range(rounds):
            peers, rot = peer_specs[:n][part::rounds], rot_specs[:n][part::rounds]
            WireCounter.take()
            cpu0 = bench.cpu()
            peer = Peer(quiva=endpoints.quiva, admin_key=bench.peer_key, aws=endpoints.aws, vault=endpoints.vault,
                        vault_token=endpoints.vault_token, files=peer_files)
            started = time.perf_counter()
            totals["failed"] += peer.run((s.name, s.targets) for s in peers)
            totals["peer_seconds"] += time.perf_counter() - started
            peer.close()
            totals["peer_cpu"].update(cpu_delta(cpu0, bench.cpu()))
            totals["peer_wire"] += sum(WireCounter.take().values())

            bench.emulator.reset_counters()
            with (bench.workdir / f"rotator-{label.replace(' ', '-')}-{part}.log").open("w") as stream:
                rotator_log.setup("info", "json", stream=stream)        # as `rotator rotate` logs
                cpu0 = bench.cpu()
                started = time.perf_counter()
                runtime = bench.runtime(rotator_config(rot, endpoints, workers=workers))
                protocol = ProtocolCounter(runtime)
                report = Engine(runtime).run()
                runtime.close()
                totals["rotator_seconds"] += time.perf_counter() - started
                totals["rotator_cpu"].update(cpu_delta(cpu0, bench.cpu()))
                totals["calls"].update(protocol.calls)
                totals["thread_cpu"].update(protocol.cpu)
                logging.getLogger().handlers.clear()
            totals["rotator_wire"] += sum(WireCounter.take().values())
            totals["listings"] += bench.emulator.counters().get("GET /accounts/api-keys", 0)
            totals["statuses"].update(o.status for o in report.outcomes)
            totals.setdefault("unchanged", []).extend(
                describe_outcome(runtime, o) for o in report.outcomes if o.status != "changed")
            check(report, f"fleet {label}: rotator round {part + 1}")
        load.append(os.getloadavg()[0])
        peer_live = len(bench.live_keys(bench.peer_user, "peer-"))
        assert totals["failed"] == 0 and peer_live == biggest, (totals["failed"], peer_live)
        live = bench.live_keys(bench.rotator_user, "rot-")
        bench.emulator.faults(clear=True)
        unknown_ids = check_fleet(bench, bench.runtime(rotator_config(rot_specs[:n], base, workers=workers)),
                                  rot_specs[:n][:: max(1, n // 25)], live, expected=biggest)
        peer_seconds, rotator_seconds = totals["peer_seconds"], totals["rotator_seconds"]
        peer_cpu, rotator_cpu = dict(totals["peer_cpu"]), dict(totals["rotator_cpu"])
        ratio = peer_seconds / rotator_seconds
        row = {
            "scenario": label, "secrets": n, "workers": workers, "rounds": rounds,
            "issuer_latency_ms": issuer_ms, "backend_latency_ms": backend_ms,
            "layouts": [layout_name(x) for x in layouts],
            "peer_seconds": round(peer_seconds, 2), "rotator_seconds": round(rotator_seconds, 2),
            "speedup": round(ratio, 2),
            "peer_ms_per_rotation": round(peer_seconds / n * 1000, 1),
            "rotator_ms_per_rotation": round(rotator_seconds / n * 1000, 1),
            "peer_requests_per_rotation": round(totals["peer_wire"] / n, 2),
            "rotator_requests_per_rotation": round(totals["rotator_wire"] / n, 2),
            "rotator_key_listings": totals["listings"],
            "peer_failed": totals["failed"], "rotator_outcomes": dict(totals["statuses"]),
            "peer_live_keys": peer_live, "rotator_live_keys": len(live),
            "peer_cpu_seconds": {k: round(v, 2) for k, v in peer_cpu.items()},
            "rotator_cpu_seconds": {k: round(v, 2) for k, v in rotator_cpu.items()},
            "peer_cpu_ms_per_rotation": round(sum(peer_cpu.values()) / n * 1000, 1),
            "rotator_cpu_ms_per_rotation": round(sum(rotator_cpu.values()) / n * 1000, 1),
            "rotator_own_cpu_ms_per_rotation": round(rotator_cpu["rotator/peer process"] / n * 1000, 1),
            "peer_own_cpu_ms_per_rotation": round(peer_cpu["rotator/peer process"] / n * 1000, 1),
            "rotator_calls_per_rotation": {f"{p}.{m}": round(c / n, 2) for (p, m), c in sorted(totals["calls"].items())},
            "rotator_thread_cpu_ms_per_rotation": {f"{p}.{m}": round(c / n * 1000, 2)
                                                  for (p, m), c in sorted(totals["thread_cpu"].items())},
            "load_average_1m": load,
            "unchanged_outcomes": totals.get("unchanged", [])[:10],
            "rotated_at_adoption": early,
            "records_without_key_id": unknown_ids,
        }
        rows.append(row)
        bench.servers.close_proxies()
        say(f"fleet {label}: peer {peer_seconds:.1f}s ({totals['failed']} failed), rotator {rotator_seconds:.1f}s"
            f" ({dict(totals['statuses'])}); {ratio:.2f}x the peer")
    return rows


def describe_outcome(runtime: Runtime, outcome: Any) -> dict[str, Any]:
    """A secret the run did not rotate, with what its record says (never a value)."""
    secret = next(s for s in runtime.secrets if s.name == outcome.secret)
    record = secret.primary.backend.read(secret.primary.target).record
    current = record.current if record else None
    return {"secret": outcome.secret, "status": outcome.status, "detail": outcome.detail,
            "next_at": str(outcome.next_at), "rotations": record.rotations if record else None,
            "adoption": record.adoption if record else None,
            "last_rotated_at": str(record.last_rotated_at) if record else None,
            "current": {"name": current.name, "created_on": str(current.created_on),
                        "expires_on": str(current.expires_on)} if current else None}


def check_fleet(bench: Bench, runtime: Runtime, sample: list[Any], live: list[dict[str, Any]],
                expected: int) -> int:
    """No stray live keys; every sampled secret rotated, every one of its targets holding a live key.
    Returns how many records (all secrets) do not know their current key's id."""
    assert len(live) == expected, f"{len(live)} live keys, expected {expected} (one per secret)"
    fingerprints = {k["value_fingerprint"] for k in live}
    by_name = {s.name: s for s in runtime.secrets}
    for spec in sample:
        secret = by_name[spec.name]
        snaps = [b.backend.read(b.target) for b in secret.targets]
        record = snaps[0].record
        assert record is not None and record.phase is Phase.IDLE and record.rotations >= 1, (spec.name, record)
        for snap in snaps:
            value = snap.current.reveal()
            assert hashlib.sha256(value.encode()).hexdigest() in fingerprints, f"{spec.name}: not a live key"
    with ThreadPoolExecutor(8) as pool:
        records = list(pool.map(lambda s: s.primary.backend.read(s.primary.target).record, runtime.secrets))
    runtime.close()
    return sum(1 for r in records if r is not None and r.current is not None and r.current.key_id is None)


# --- 2b. CPU per rotation, one layout at a time ----------------------------------------------------

#: The layouts of the CPU measurement (primary first): every store file-only, and the two mixes of
#: issue 18. ``--cpu-layouts`` chooses others.
CPU_LAYOUTS: tuple[tuple[str, ...], ...] = (("file", "file2"), ("vault", "aws"), ("aws", "vault"))

#: Where the profile attributes CPU: (component, file suffix, function name or "*"). A component's
#: time is the cumulative time of its boundary functions, entered from outside the component, less
#: what boundaries of other components nested inside took (:func:`_components`); threads are profiled
#: apart, so the issuer client's connecting threads count under "issuer requests".
PROFILE_BOUNDARIES: tuple[tuple[str, str, str], ...] = (
    ("AWS (botocore)", "botocore/client.py", "_make_api_call"),
    ("Vault (KV requests)", "providers/vault/connection.py", "request"),
    ("issuer requests (urllib3)", "providers/quiva/wire.py", "exchange"),
    ("issuer requests (urllib3)", "providers/quiva/watchdog.py", "_run"),    # the watchdog's thread
    ("issuer requests (urllib3)", "providers/quiva/watchdog.py", "run"),     # a connecting thread
    ("issuer requests (urllib3)", "providers/quiva/client.py", "_fetch"),   # trees before wire.py (httpx)
    # the checks themselves: list_keys would also hold its requests, which now run on its thread
    ("issuer key listings (parsing)", "providers/quiva/answers.py", "listing_page"),
    ("issuer key listings (parsing)", "providers/quiva/answers.py", "listing"),
    ("file store (durable writes, reads)", "providers/file.py", "*"),
    ("logging", "logging/__init__.py", "_log"),
    ("audit trail", "rotator/audit.py", "*"),
    ("record / payload (de)serialisation", "rotator/models.py", "to_dict"),
    ("record / payload (de)serialisation", "rotator/models.py", "from_dict"),
    ("record / payload (de)serialisation", "providers/document.py", "*"),
    ("record / payload (de)serialisation", "providers/aws/sm_payload.py", "*"),
    ("fingerprints", "rotator/models.py", "fingerprint"),
    ("decide / observations", "rotator/machine.py", "decide"),
    ("decide / observations", "rotator/rotation.py", "_observations"),
    ("revoke evidence (reads of every target, survey)", "rotator/evidence.py", "survey"),
)


def measure_cpu(bench: Bench, per_layout: int, rounds: int, workers: int,
                layouts: tuple[tuple[str, ...], ...] = CPU_LAYOUTS, profile: int = 0,
                profile_dir: Path | None = None) -> list[dict[str, Any]]:
    """Own CPU per rotation of rotator and of the sequential peer, one layout at a time.

    Per layout, ``per_layout`` secrets for each side (seeded, adopted and rotated once untimed, so
    the measured rotation is a steady-state one, then all due again), in
    ``rounds`` interleaved rounds (peer, rotator, peer, ...), each a fresh start for both (new
    clients, new session), rotator with ``workers`` workers, grace 0 and info logs in JSON to a
    file, as in the fleet. CPU is ``getrusage`` of this process (every server runs in its own),
    requests are counted by the request hooks per destination. ``profile`` more secrets are then
    rotated by rotator with one worker under cProfile (not part of the CPU numbers): where the
    CPU goes, per component (:data:`PROFILE_BOUNDARIES`)."""
    rows = []
    for index, layout in enumerate(layouts):
        prefix = f"cpu{index}"
        bench.use(f"{prefix}@example.com", f"{prefix}-peer@example.com")
        rot_specs = build(f"{prefix}r", per_layout + profile, [layout])
        peer_specs = build(f"{prefix}p", per_layout, [layout])
        endpoints = bench.endpoints(prefix)
        peer_files = endpoints.files / "peer"
        seeding = bench.runtime(rotator_config(rot_specs, endpoints, workers=workers))
        created = bench.emulator.now() - 70 * DAY
        seed_for_rotator(seeding, bench.emulator, rot_specs, created, user=bench.rotator_user)
        peer = Peer(quiva=endpoints.quiva, admin_key=bench.peer_key, aws=endpoints.aws, vault=endpoints.vault,
                    vault_token=endpoints.vault_token, files=peer_files)
        seed_for_peer(peer, bench.emulator, peer_specs, created, user=bench.peer_user)
        peer.close()
        check(Engine(seeding).run(), f"cpu {layout}: adoption")
        seeding.close()
        bench.shift(10 * DAY)
        # A first rotation, not measured, so the measured one is a steady state (secondaries keep a
        # previous key, records carry history), as every rotation after a secret's first one is.
        warm = bench.runtime(rotator_config(rot_specs, endpoints, workers=workers))
        check(Engine(warm).run(), f"cpu {layout}: first rotation")
        warm.close()
        peer = Peer(quiva=endpoints.quiva, admin_key=bench.peer_key, aws=endpoints.aws, vault=endpoints.vault,
                    vault_token=endpoints.vault_token, files=peer_files)
        assert peer.run((s.name, s.targets) for s in peer_specs) == 0, f"cpu {layout}: the peer's first rotation"
        peer.close()
        bench.shift(80 * DAY)
        sides: dict[str, Any] = {side: {"cpu": 0.0, "sys": 0.0, "switches": 0, "wire": Counter(), "n": 0}
                                 for side in ("peer", "rotator")}
        where = {"issuer": endpoints.quiva, "aws": endpoints.aws, "vault": endpoints.vault}
        statuses: Counter[str] = Counter()
        load = [os.getloadavg()[0]]
        for part in range(rounds):
            peers, rot = peer_specs[part::rounds], rot_specs[:per_layout][part::rounds]
            WireCounter.take()
            before = own_usage()
            peer = Peer(quiva=endpoints.quiva, admin_key=bench.peer_key, aws=endpoints.aws, vault=endpoints.vault,
                        vault_token=endpoints.vault_token, files=peer_files)
            failed = peer.run((s.name, s.targets) for s in peers)
            peer.close()
            _add_usage(sides["peer"], before)
            sides["peer"]["n"] += len(peers)
            sides["peer"]["wire"].update(WireCounter.take())
            assert failed == 0, f"cpu {layout}: the peer failed {failed}"
            with (bench.workdir / f"cpu-{index}-{part}.log").open("w") as stream:
                rotator_log.setup("info", "json", stream=stream)        # as `rotator rotate` logs
                before = own_usage()
                runtime = bench.runtime(rotator_config(rot, endpoints, workers=workers))
                report = Engine(runtime).run()
                runtime.close()
                _add_usage(sides["rotator"], before)
                logging.getLogger().handlers.clear()
            sides["rotator"]["n"] += len(rot)
            sides["rotator"]["wire"].update(WireCounter.take())
            statuses.update(o.status for o in report.outcomes)
            check(report, f"cpu {layout}: rotator round {part + 1}")
        load.append(os.getloadavg()[0])

        def per_rotation(side: str) -> dict[str, Any]:
            got = sides[side]
            n = got["n"]
            requests = {k: round(WireCounter.for_url(got["wire"], url) / n, 2) for k, url in where.items() if url}
            return {"cpu_ms_per_rotation": round(got["cpu"] / n * 1000, 2),
                    "system_cpu_ms_per_rotation": round(got["sys"] / n * 1000, 2),
                    "switches_per_rotation": round(got["switches"] / n, 1), "rotations": n,
                    "requests_per_rotation": {k: v for k, v in requests.items()
                                              if k == "issuer" or k in {"aws" if s == "ssm" else s for s in layout}}}

        peer_row, rotator_row = per_rotation("peer"), per_rotation("rotator")
        row = {"layout": layout_name(layout), "secrets": per_layout, "rounds": rounds, "workers": workers,
               "peer": peer_row, "rotator": rotator_row,
               "ratio": round(rotator_row["cpu_ms_per_rotation"] / peer_row["cpu_ms_per_rotation"], 2),
               "rotator_outcomes": dict(statuses), "load_average_1m": load}
        if profile:
            row["profile"] = _profile_layout(bench, rot_specs[per_layout:], endpoints, layout, index, workers,
                                             profile_dir)
            own = rotator_row["cpu_ms_per_rotation"]
            row["profile"]["components_ms_per_rotation"] = {
                k: round(v * own, 2) for k, v in row["profile"]["components_share"].items()}
        rows.append(row)
        say(f"cpu {row['layout']}: peer {peer_row['cpu_ms_per_rotation']} ms, rotator"
            f" {rotator_row['cpu_ms_per_rotation']} ms per rotation ({row['ratio']}x; system"
            f" {peer_row['system_cpu_ms_per_rotation']} / {rotator_row['system_cpu_ms_per_rotation']}; switches"
            f" {peer_row['switches_per_rotation']} / {rotator_row['switches_per_rotation']}); requests"
            f" {peer_row['requests_per_rotation']} / {rotator_row['requests_per_rotation']}")
    return rows


def _profile_layout(bench: Bench, specs: list[Any], endpoints: Endpoints, layout: tuple[str, ...], index: int,
                    workers: int, profile_dir: Path | None) -> dict[str, Any]:
    """Rotate ``specs`` as the measured rounds do, every thread under cProfile (the workers and
    the issuer client's watchdog and connecting threads; each with its own thread-CPU timer); the CPU per
    component, as shares of the profiled time scaled to the run's own CPU, in ms per rotation."""
    import cProfile
    import pstats

    profilers: list[cProfile.Profile] = []

    def start(frame: Any, event: str, arg: Any) -> None:      # the first event of each new thread
        profiler = cProfile.Profile(time.thread_time)
        profilers.append(profiler)
        profiler.enable()

    with (bench.workdir / f"cpu-{index}-profile.log").open("w") as stream:
        rotator_log.setup("info", "json", stream=stream)
        main = cProfile.Profile(time.thread_time)
        cpu0 = own_cpu()
        threading.setprofile(start)
        main.enable()
        try:
            runtime = bench.runtime(rotator_config(specs, endpoints, workers=workers))
            report = Engine(runtime).run()
            runtime.close()
            _helpers_ended()
        finally:
            main.disable()
            threading.setprofile(None)
        cpu = own_cpu() - cpu0
        logging.getLogger().handlers.clear()
    check(report, f"cpu {layout}: profiled round")
    stats = pstats.Stats(main)
    for profiler in profilers:
        try:
            stats.add(profiler)
        except TypeError:             # a thread that never ran profiled code
            pass
    if profile_dir is not None:
        profile_dir.mkdir(parents=True, exist_ok=True)
        stats.dump_stats(str(profile_dir / f"cpu-{'-'.join(layout)}.pstats"))
    shares = _components(stats)
    n = len(specs)
    return {"rotations": n, "workers": workers, "cpu_ms_per_rotation_profiled": round(cpu / n * 1000, 2),
            "components_share": {k: round(v, 3) for k, v in shares.items()}}


def _helpers_ended(timeout: float = 10.0) -> None:
    """Wait for the issuer clients' threads (watchdog, connecting; helper threads in trees before
    the watchdog), which end at ``close``: a profile taken from a thread still inside a call would
    close that call with the main thread's CPU clock."""
    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if thread.name.endswith(("-http", "-watchdog", "-connect")):
            thread.join(max(0.0, deadline - time.monotonic()))


def _components(stats: Any) -> dict[str, float]:
    """Share of the profiled time per component: the time spent inside each component's boundary
    functions (their cumulative time, minus what nested boundaries of another component took),
    the rest under "engine and everything else"."""
    boundaries: dict[tuple[str, int, str], str] = {}
    for func in stats.stats:
        filename, _, name = func
        path = filename.replace("\\", "/")
        for component, suffix, wanted in PROFILE_BOUNDARIES:
            if path.endswith(suffix) and (wanted == "*" or name == wanted):
                boundaries[func] = component
                break
    total = stats.total_tt or 1e-9
    found: Counter[str] = Counter()
    for func, component in boundaries.items():
        # time entering this boundary from outside any boundary of the same component
        for caller, (_, _, _, cumulative) in stats.stats[func][4].items():
            if boundaries.get(caller) != component:
                found[component] += cumulative
    # a boundary nested in another component's (e.g. a record encoded inside a file write) counts for
    # the inner one only
    for func, component in boundaries.items():
        for caller, (_, _, _, cumulative) in stats.stats[func][4].items():
            outer = _outer_component(stats, caller, boundaries, component)
            if outer is not None:
                found[outer] -= cumulative
    shares = {k: max(v, 0.0) / total for k, v in found.items()}
    shares["engine and everything else"] = max(0.0, 1.0 - sum(shares.values()))
    return dict(sorted(shares.items(), key=lambda kv: -kv[1]))


def _outer_component(stats: Any, func: Any, boundaries: dict[Any, str], inner: str,
                     depth: int = 0, seen: set | None = None) -> str | None:
    """The component of the nearest boundary above ``func`` other than ``inner`` (None: none)."""
    if func in boundaries:
        return boundaries[func] if boundaries[func] != inner else None
    if depth > 12:
        return None
    seen = seen if seen is not None else set()
    if func in seen or func not in stats.stats:
        return None
    seen.add(func)
    for caller in stats.stats[func][4]:
        found = _outer_component(stats, caller, boundaries, inner, depth + 1, seen)
        if found is not None:
            return found
    return None


# --- 3. under a rate limit: benchmarks/rate.py ---------------------------------------------------


# --- behind the proposals ----------------------------------------------------------------------

def measure_probes(bench: Bench, quick: bool) -> dict[str, Any]:
    servers = bench.servers
    found: dict[str, Any] = {}
    if servers.moto:
        found["aws_batch"] = probes.aws_batch(servers.moto.url, servers.moto.pid, 40 if quick else 100)
        found["boto_user_agent"] = probes.boto_user_agent(servers.moto.url, 4 if quick else 8)
    if servers.bao:
        found["hvac_env"] = probes.hvac_env(servers.bao.url, servers.bao.root_token, servers.bao.pid,
                                            100 if quick else 300)
    if servers.moto and servers.bao:
        found["pool"] = probes.pool(servers.moto.url, servers.bao.url, servers.bao.root_token, 16)
    found["file_write"] = probes.file_write(bench.workdir, 100 if quick else 200)
    admin = bench.emulator.add_user("probe@example.com")
    found["issuer_request"] = probes.issuer_request(bench.emulator, bench.emulator.add_user("probe-empty@example.com"),
                                                    100 if quick else 400)
    found["listing"] = probes.listing(bench.emulator, admin, "probe@example.com",
                                      (10, 300) if quick else (10, 300, 1000, 2000))
    say(f"probes: {found}")
    return found


# --- 4. the idle daemon ------------------------------------------------------------------------

def write_file_fleet(workdir: Path, emulator: EmulatorProcess, count: int) -> tuple[Path, str]:
    """``count`` file secrets holding keys made 10 days ago, and a config naming them."""
    admin = emulator.add_user("idle@example.com")
    store = workdir / "store"
    store.mkdir(parents=True, exist_ok=True)
    lines = ['[rotator]\ncheck_interval = "1h"\n', f'[issuers.quiva]\ntype = "quivaworks"\nbase_url = "{emulator.url}"\n'
             'admin_key = { env = "QUIVA_API_KEY" }\n', f'[backends.local]\ntype = "file"\ndirectory = "{store}"\n']
    created = emulator.now() - 10 * DAY
    for i in range(count):
        name = f"svc-{i:03d}"
        value = emulator.create_key("idle@example.com", f"{name} (by hand)", created)
        (store / f"{name}.json").write_text(json.dumps({"api_key": value}) + "\n")
        lines.append(f'[[secrets]]\nname = "{name}"\nissuer = "quiva"\ntargets = [{{ backend = "local", path = "{name}.json" }}]\n')
    config = workdir / "rotator.toml"
    config.write_text("\n".join(lines))
    return config, admin


def rotator_command() -> list[str]:
    """The installed console script, run by this interpreter (no pyenv/virtualenv shim in front)."""
    script = Path(sys.executable).with_name("rotator")
    return [sys.executable, str(script)] if script.exists() else [sys.executable, "-m", "rotator.cli"]


def measure_idle(workdir: Path, seconds: float, secrets: int,
                 then: Any = None) -> tuple[dict[str, Any], Any]:
    """The result, and what ``then(config, admin)`` returns, called with the config and admin key
    the daemon ran with (its secrets now adopted) while the emulator still serves."""
    emulator = EmulatorProcess()
    try:
        config, admin = write_file_fleet(workdir / "idle", emulator, secrets)
        env = {**os.environ, "QUIVA_API_KEY": admin}
        process = subprocess.Popen([*rotator_command(), "--config", str(config), "--log-format", "text", "daemon",
                                    "--http-address", "127.0.0.1:0"], env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(iter(process.stderr.readline, "")), daemon=True)
        reader.start()
        try:
            started = time.monotonic()
            url = None
            while url is None and time.monotonic() - started < 60:
                found = re.search(r"on (http://[\d.:]+)", "".join(lines))
                url = found.group(1) if found else None
                time.sleep(0.05)
            assert url, "".join(lines)[-2000:]
            while time.monotonic() - started < 120:
                try:
                    with urllib.request.urlopen(url + "/readyz", timeout=5) as reply:
                        if reply.status == 200:
                            break
                except OSError:
                    pass
                time.sleep(0.1)
            ready_after = time.monotonic() - started
            time.sleep(1.0)                                    # let the first reconcile's tail settle
            rss_start, cpu_start, switches_start = rss_mib(process.pid), cpu_seconds(process.pid), context_switches(process.pid)
            time.sleep(seconds)
            rss_end, cpu_end, switches_end = rss_mib(process.pid), cpu_seconds(process.pid), context_switches(process.pid)
            threads = len(list(Path(f"/proc/{process.pid}/task").iterdir()))
        finally:
            process.terminate()
            process.wait(30)
            reader.join(5)
            process.stderr.close()
        return {
            "secrets": secrets, "window_seconds": seconds, "ready_after_seconds": round(ready_after, 2),
            "rss_mib_start": round(rss_start, 1), "rss_mib_end": round(rss_end, 1),
            "cpu_seconds": round(cpu_end - cpu_start, 3),
            "wakeups_per_second": round((switches_end - switches_start) / seconds, 2),
            "threads": threads,
        }, (then(config, admin) if then is not None else None)
    finally:
        emulator.close()


# --- 5. cold start -------------------------------------------------------------------------------

def timed(command: list[str], runs: int, env: dict[str, str] | None = None) -> dict[str, Any]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
        times.append(time.perf_counter() - started)
        if result.returncode not in (0, 1):
            raise SystemExit(f"{command}: exit {result.returncode}: {result.stderr[-1000:]}")
    return {"median": round(statistics.median(times), 3), "min": round(min(times), 3),
            "max": round(max(times), 3), "runs": runs}


def import_profile(command: list[str], env: dict[str, str]) -> list[tuple[str, float]]:
    """Top-level packages by cumulative import time (``python -X importtime``)."""
    result = subprocess.run([command[0], "-X", "importtime", *command[1:]], capture_output=True, text=True,
                            env=env, timeout=120)
    totals: dict[str, float] = {}
    for line in result.stderr.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
        if match and len(match.group(2)) == 1:                   # top-level imports only
            totals[match.group(3)] = int(match.group(1)) / 1e6
    return sorted(totals.items(), key=lambda kv: -kv[1])[:8]


def measure_cold(workdir: Path, runs: int, secrets: int, config: Path | None = None,
                 admin: str | None = None) -> dict[str, Any]:
    """``config``: the idle daemon's (its secrets adopted, so ``plan`` parses records); else new.
    ``plan`` lists each issuer's keys once (held revokes, the admin key's expiry), so the emulator
    keeps serving while it is timed."""
    emulator = EmulatorProcess() if config is None else None
    try:
        if emulator is not None:
            config, admin = write_file_fleet(workdir / "cold", emulator, secrets)
        env = {**os.environ, "QUIVA_API_KEY": admin}
        plan = [*rotator_command(), "--config", str(config), "--log-level", "error", "plan"]
        return {
            "python_floor": timed([sys.executable, "-c", "pass"], runs),
            "help": timed([*rotator_command(), "--help"], runs),
            "plan": timed(plan, runs, env),
            "plan_secrets": secrets,
            "plan_imports": [(name, round(s, 3)) for name, s in import_profile(plan, env)],
            "help_imports": [(name, round(s, 3)) for name, s in import_profile([*rotator_command(), "--help"], env)],
        }
    finally:
        if emulator is not None:
            emulator.close()


# --- reporting -------------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": model, "python": platform.python_version(),
            "platform": platform.platform(), "load_average_at_start": os.getloadavg()}


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    calls = results.get("calls")
    if calls:
        for mode, words in (("two_runs", "normal rotation (two runs, 48 h grace)"), ("one_run", "one run (grace 0)")):
            worst = max(calls, key=lambda r: r[mode]["over_minimum"])
            best = min(calls, key=lambda r: r[mode]["over_minimum"])
            rows.append({"target": f"calls per rotation ≤ minimum + 1: {words}",
                         "measured": f"worst {worst['combo']} {worst[mode]['logical_per_rotation']} vs min"
                                     f" {worst[mode]['minimum']}; best {best['combo']}"
                                     f" {best[mode]['logical_per_rotation']} vs {best[mode]['minimum']}",
                         "ratio": f"+{worst[mode]['over_minimum']}",
                         "met": all(r[mode]["over_minimum"] <= 1 for r in calls)})
    batching = results.get("ssm_batching")
    if batching:
        # A read pass's Parameter Store requests: the batches, and the single reads the read-ahead
        # leaves (a batch of one name is sent as a GetParameter). The target: ceil(N/10) in all.
        def requests(r: dict[str, Any], k: str) -> int:
            return r["passes"][k]["GetParameters"] + r["passes"][k]["GetParameter"]
        passes = [(r, k) for r in batching for k in ("revoke", "verify")]
        worst = max(passes, key=lambda rk: requests(*rk) / rk[0]["expected_get_parameters_per_pass"])
        rows.append({"target": "SSM read pass ≤ ceil(N/10) requests (GetParameters, 10 names each)",
                     "measured": "; ".join(f"N={r['secrets']}: {requests(r, 'revoke')} / {requests(r, 'verify')}"
                                           f" vs {r['expected_get_parameters_per_pass']}" for r in batching)
                                 + " (revoke pass, 8 workers / verify pass)",
                     "ratio": f"{requests(*worst) / worst[0]['expected_get_parameters_per_pass']:.2f}",
                     "met": all(requests(r, k) <= r["expected_get_parameters_per_pass"] for r, k in passes)})
    for row in results.get("cpu", []):
        limit = 2.0 if all(s.startswith("file") for s in row["layout"].split(" → ")) else 1.5
        rows.append({"target": f"own CPU per rotation ≤ {limit}× the peer's ({row['layout']})",
                     "measured": f"peer {row['peer']['cpu_ms_per_rotation']} ms, rotator"
                                 f" {row['rotator']['cpu_ms_per_rotation']} ms",
                     "ratio": f"{row['ratio']}×", "met": row["ratio"] <= limit})
    for row in results.get("fleet", []):
        rows.append({"target": f"fleet ≥ 8× the sequential peer ({row['scenario']}, {row['secrets']} secrets)",
                     "measured": f"peer {row['peer_seconds']} s, rotator {row['rotator_seconds']} s",
                     "ratio": f"{row['speedup']}×", "met": row["speedup"] >= 8})
    rate_cells: dict[tuple[str, str, float], list[dict[str, Any]]] = {}
    for row in results.get("rate", []):
        rate_cells.setdefault((row["variant"], row["model"], row["rate_per_second"]), []).append(row)
    for (variant, model, rate), cell in rate_cells.items():
        learnt = variant.startswith("no rate_limit")
        limit = 1.1 if learnt else 1.25
        ratios = [r["ratio_to_bound"] for r in cell]
        shares = [r["share_429_percent"] for r in cell]
        over = [r["worst_window_excess"] for r in cell if r["worst_window_excess"] is not None]
        rows.append({"target": f"≤ {limit}× the bound (calls / R), {variant}, {model} {rate:g}/s"
                               + ("; 429s ≤ 2 %; never more in a retry_after window than the pace" if learnt else ""),
                     "measured": "; ".join(f"{r['seconds']} s vs {r['lower_bound_seconds']} s, {r['answered_429']} × 429"
                                           f" ({r['share_429_percent']} %)" for r in cell),
                     "ratio": f"{min(ratios)}–{max(ratios)}×" if len(cell) > 1 else f"{ratios[0]}×",
                     "met": max(ratios) <= limit and (not learnt or (max(shares) <= 2 and all(x <= 0 for x in over)))})
    idle = results.get("idle")
    if idle:
        rows.append({"target": "idle daemon RSS ≤ 80 MB, no busy polling",
                     "measured": f"{idle['rss_mib_end']} MiB; {idle['cpu_seconds']} CPU s / {idle['window_seconds']:.0f} s;"
                                 f" {idle['wakeups_per_second']} wake-ups/s",
                     "ratio": f"{idle['rss_mib_end'] / 80:.2f}", "met": idle["rss_mib_end"] <= 80 and idle["cpu_seconds"] < 0.05 * idle["window_seconds"] / 60})
    cold = results.get("cold")
    if cold:
        rows.append({"target": "`rotator --help` ≤ 0.3 s", "measured": f"{cold['help']['median']} s (median of {cold['help']['runs']})",
                     "ratio": f"{cold['help']['median'] / 0.3:.2f}", "met": cold["help"]["median"] <= 0.3})
        rows.append({"target": f"`rotator plan` ({cold['plan_secrets']} secrets) ≤ 1 s cold",
                     "measured": f"{cold['plan']['median']} s (median of {cold['plan']['runs']})",
                     "ratio": f"{cold['plan']['median'] / 1.0:.2f}", "met": cold["plan"]["median"] <= 1.0})
    return rows


def markdown(results: dict[str, Any]) -> str:
    out = []
    m = results["machine"]
    out.append(f"Machine: {m['nproc']} CPUs ({m['cpu']}), Python {m['python']}, load average at start"
               f" {', '.join(f'{x:.2f}' for x in m['load_average_at_start'])}; {results['command']}"
               f" ({results['seconds']:.0f} s)\n")
    out.append("| target | measured | ratio | met |\n|---|---|---|---|")
    for row in targets(results):
        out.append(f"| {row['target']} | {row['measured']} | {row['ratio']} | {'yes' if row['met'] else '**no**'} |")
    if results.get("calls"):
        out.append(f"\nCalls per rotation, {results['calls'][0]['secrets']} secrets per row. Each cell: normal"
                   " rotation (two runs: rotate, then revoke after the 48 h grace) / one run (grace 0). Engine calls ="
                   " calls into the provider Protocols, the key listing left out (it is one per issuer per run:"
                   " amortised); wire = HTTP requests + file operations, everything included (session, listing,"
                   " retries) and divided by the secrets of the row:\n")
        out.append("| primary → secondaries | B | minimum | engine calls | over minimum | wire requests | issuer | AWS |"
                   " SSM | Vault | file ops |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for r in results["calls"]:
            two, one = r["two_runs"], r["one_run"]

            def both(key: str, sign: str = "") -> str:
                return f"{sign}{two[key]} / {sign}{one[key]}"
            out.append(f"| {r['combo']} | {r['backends']} | {both('minimum')} | {both('logical_per_rotation')} | "
                       f"{both('over_minimum', '+')} | {both('wire_per_rotation')} | {both('issuer_requests_per_rotation')} | "
                       f"{both('aws_requests_per_rotation')} | {both('ssm_requests_per_rotation')} | "
                       f"{both('vault_requests_per_rotation')} | {both('file_ops_per_rotation')} |")
        ssm_rows = [r for r in results["calls"] if "ssm_wire_minimum" in r["two_runs"]]
        if ssm_rows:
            out.append("\nParameter Store requests per rotation (botocore hook / the backend's own reports), against"
                       " the SSM wire minimum (PutParameter 1 + read-back 1 + each batched read pass"
                       " ceil(N/10)/N), and per run (the backend's reports, whole counts):\n")
            out.append("| primary → secondaries | normal rotation | SSM minimum | one run | SSM minimum |"
                       " runs of the normal rotation | the one run |")
            out.append("|---|---|---|---|---|---|---|")
            for r in ssm_rows:
                two, one = r["two_runs"], r["one_run"]

                def runs(mode: dict[str, Any]) -> str:
                    return " ; ".join(", ".join(f"{op} {c}" for op, c in run.items()) or "none"
                                      for run in mode["ssm_requests_per_run"])
                out.append(f"| {r['combo']} | {two['ssm_requests_per_rotation']} ({'/'.join(map(str, two['ssm_requests_hooks_vs_provider']))})"
                           f" | {two['ssm_wire_minimum']} | {one['ssm_requests_per_rotation']}"
                           f" ({'/'.join(map(str, one['ssm_requests_hooks_vs_provider']))}) | {one['ssm_wire_minimum']} |"
                           f" {runs(two)} | {runs(one)} |")
    if results.get("ssm_batching"):
        out.append("\nParameter Store reads per pass, N secrets file → ssm (the backend's reports; engine read_many"
                   " calls in brackets):\n")
        out.append("| N | ceil(N/10) | rotate: GetParameters / GetParameter / PutParameter |"
                   " revoke pass: GetParameters / GetParameter | verify pass: GetParameters / GetParameter |")
        out.append("|---|---|---|---|---|")
        for r in results["ssm_batching"]:
            rot, rev, ver = (r["passes"][k] for k in ("rotate", "revoke", "verify"))
            out.append(f"| {r['secrets']} | {r['expected_get_parameters_per_pass']} |"
                       f" {rot['GetParameters']} / {rot['GetParameter']} / {rot['PutParameter']} |"
                       f" {rev['GetParameters']} [{rev['engine_read_many']}] / {rev['GetParameter']} |"
                       f" {ver['GetParameters']} [{ver['engine_read_many']}] / {ver['GetParameter']} |")
    if results.get("cpu"):
        r0 = results["cpu"][0]
        out.append(f"\nOwn CPU per rotation, one layout at a time ({r0['secrets']} secrets per side and layout,"
                   f" {r0['rounds']} interleaved rounds, {r0['workers']} workers, grace 0; requests per rotation by"
                   " destination):\n")
        out.append("| layout | peer ms | rotator ms | ratio | of which system, peer / rotator | context switches,"
                   " peer / rotator | requests peer | requests rotator |\n|---|---|---|---|---|---|---|---|")
        for r in results["cpu"]:
            def reqs(side: dict[str, Any]) -> str:
                return ", ".join(f"{k} {v}" for k, v in side["requests_per_rotation"].items())
            p, q = r["peer"], r["rotator"]
            out.append(f"| {r['layout']} | {p['cpu_ms_per_rotation']} | {q['cpu_ms_per_rotation']} | {r['ratio']}× |"
                       f" {p.get('system_cpu_ms_per_rotation', '–')} / {q.get('system_cpu_ms_per_rotation', '–')} |"
                       f" {p.get('switches_per_rotation', '–')} / {q.get('switches_per_rotation', '–')} |"
                       f" {reqs(p)} | {reqs(q)} |")
        profiled = [r for r in results["cpu"] if r.get("profile")]
        if profiled:
            out.append("\nWhere rotator's CPU goes (cProfile of every thread in a further round; each component's"
                       " share of the profiled time applied to the measured ms per rotation):\n")
            for r in profiled:
                p = r["profile"]
                out.append(f"* {r['layout']} ({p['rotations']} rotations profiled): " + ", ".join(
                    f"{k} {v}" for k, v in p["components_ms_per_rotation"].items()))
    if results.get("fleet"):
        out.append("\nFleet (layouts " + ", ".join(results["fleet"][0]["layouts"]) + "; grace 0 so both revoke at once):\n")
        out.append("| scenario | secrets | workers | peer s | rotator s | speed-up | ms/rotation peer / rotator |"
                   " requests/rotation peer / rotator | CPU ms/rotation (all processes) peer / rotator |")
        out.append("|---|---|---|---|---|---|---|---|---|")
        for r in results["fleet"]:
            out.append(f"| {r['scenario']} | {r['secrets']} | {r['workers']} | {r['peer_seconds']} | {r['rotator_seconds']} | "
                       f"{r['speedup']}× | {r['peer_ms_per_rotation']} / {r['rotator_ms_per_rotation']} | "
                       f"{r['peer_requests_per_rotation']} / {r['rotator_requests_per_rotation']} | "
                       f"{r['peer_cpu_ms_per_rotation']} / {r['rotator_cpu_ms_per_rotation']} |")
    if results.get("rate"):
        out.append("\nUnder a rate limit (token bucket: burst 10, retry_after 1 s; fixed window: R per 1 s window):\n")
        out.append("| limiter | R/s | client | run | secrets | s | calls | bound s | ratio | 429s | worst retry_after window"
                   " (over the pace) | outcomes |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in results["rate"]:
            window = "–" if r["worst_window_excess"] is None else \
                f"{r['worst_window_requests']} requests ({r['worst_window_excess']:+g})"
            out.append(f"| {r['model']} | {r['rate_per_second']:g} | {r['variant']} | {r['run']} | {r['secrets']} |"
                       f" {r['seconds']} | {r['calls']} | {r['lower_bound_seconds']} | {r['ratio_to_bound']}× |"
                       f" {r['answered_429']} ({r['share_429_percent']} %) | {window} | {r['outcomes']} |")
    if results.get("cold"):
        c = results["cold"]
        out.append(f"\nCold start (median of {c['help']['runs']}): python -c pass {c['python_floor']['median']} s,"
                   f" rotator --help {c['help']['median']} s, rotator plan ({c['plan_secrets']} secrets)"
                   f" {c['plan']['median']} s. Heaviest imports of plan: "
                   + ", ".join(f"{n} {s:.3f} s" for n, s in c["plan_imports"][:5]))
    return "\n".join(out)


def layouts_argument(text: str) -> tuple[tuple[str, ...], ...]:
    try:
        return parse_layouts(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a couple of minutes")
    parser.add_argument("--fleet", type=int, help="fleet size (default 1000; --quick 120)")
    parser.add_argument("--latency-fleet", type=int, help="fleet size with latency (default: --fleet)")
    parser.add_argument("--fleet-layouts", type=layouts_argument, default=FLEET_LAYOUTS,
                        help="the fleet's layouts, used in turn: primary/secondary,... (stores file, file2, aws,"
                             " vault, ssm; default file/aws,vault/aws,aws/vault)")
    parser.add_argument("--workers", type=int, default=8, help="rotator [rotator] workers (default 8)")
    parser.add_argument("--issuer-latency-ms", type=float, default=25.0)
    parser.add_argument("--backend-latency-ms", type=float, default=10.0)
    parser.add_argument("--rate", type=float, help="one emulator rate limit, requests/s (instead of --rates)")
    parser.add_argument("--rates", default="50,100", help="the rate measurement's limits, requests/s (default 50,100)")
    parser.add_argument("--rate-models", default="token_bucket,fixed_window",
                        help="the emulator's limiter models to measure (default token_bucket,fixed_window)")
    parser.add_argument("--rate-runs", type=int, default=1, help="runs of each rate cell (default 1)")
    parser.add_argument("--rate-clients", default=",".join(CLIENTS),
                        help="rotator with rate_limit = R (configured), without (learnt), or both (default)")
    parser.add_argument("--rate-seconds", type=float, help="each rate job's bound, calls / R (default 11; --quick 4)")
    parser.add_argument("--idle-seconds", type=float, help="idle window (default 60; --quick 10)")
    parser.add_argument("--cpu-secrets", type=int, help="secrets per layout in the CPU measurement (default 200;"
                        " --quick 60)")
    parser.add_argument("--cpu-layouts", type=layouts_argument, default=CPU_LAYOUTS,
                        help="the CPU measurement's layouts (default file/file2,vault/aws,aws/vault)")
    parser.add_argument("--cpu-profile", type=int, default=None, metavar="N",
                        help="per layout, N more secrets rotated with one worker under cProfile (default 100;"
                             " --quick 30; 0: none)")
    parser.add_argument("--profile-dir", type=Path, help="write each layout's cProfile stats there (.pstats)")
    parser.add_argument("--only", default="calls,cpu,fleet,rate,idle,cold,probes")
    parser.add_argument("--out", type=Path, help="default: results.json for a full run, "
                        "results-partial.json with --quick or --only (so they do not replace the full run's)")
    args = parser.parse_args(argv)
    full = not args.quick and set(args.only.split(",")) >= set(parser.get_default("only").split(","))
    args.out = args.out or HERE / ("results.json" if full else "results-partial.json")
    quick = args.quick
    fleet_size = args.fleet or (120 if quick else 1000)
    latency_size = min(fleet_size, args.latency_fleet if args.latency_fleet is not None else fleet_size)
    only = set(args.only.split(","))
    command = " ".join(["python benchmarks/run.py", *(sys.argv[1:] if argv is None else argv)])
    results: dict[str, Any] = {"machine": machine(), "command": command,
                               "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    begun = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rotator-bench-") as tmp:
        workdir = Path(tmp)
        if only & {"calls", "cpu", "fleet", "rate", "probes"}:
            servers = Servers.start()
            try:
                bench = Bench(servers, workdir)
                if "calls" in only:
                    results["calls"] = measure_calls(bench, 4 if quick else 12, args.workers)
                    results["ssm_batching"] = measure_ssm_batching(
                        bench, SSM_BATCH_SIZES[1:4] if quick else SSM_BATCH_SIZES, args.workers)
                if "cpu" in only:
                    profile = args.cpu_profile if args.cpu_profile is not None else (30 if quick else 100)
                    results["cpu"] = measure_cpu(bench, args.cpu_secrets or (60 if quick else 200), 2,
                                                 args.workers, args.cpu_layouts, profile, args.profile_dir)
                if "fleet" in only:
                    results["fleet"] = measure_fleet(bench, fleet_size, latency_size, args.workers,
                                                     args.issuer_latency_ms, args.backend_latency_ms,
                                                     2 if quick else 4, args.fleet_layouts)
                if "rate" in only:
                    rates = [args.rate] if args.rate else [float(r) for r in args.rates.split(",")]
                    results["rate"] = measure_rate(bench, rates, args.rate_models.split(","), args.rate_runs,
                                                   args.rate_seconds or (4 if quick else 11), say=say,
                                                   clients=tuple(args.rate_clients.split(",")))
                if "probes" in only:
                    results["probes"] = measure_probes(bench, quick)
            finally:
                servers.close()
        def cold(config: Path | None = None, admin: str | None = None) -> dict[str, Any]:
            return measure_cold(workdir, 5, 100, config, admin)

        if "idle" in only:
            results["idle"], cold_result = measure_idle(workdir, args.idle_seconds or (10 if quick else 60), 100,
                                                        then=cold if "cold" in only else None)
            say(f"idle: {results['idle']}")
            if cold_result is not None:
                results["cold"] = cold_result
        elif "cold" in only:
            results["cold"] = cold()
        if "cold" in results:
            say(f"cold: help {results['cold']['help']}, plan {results['cold']['plan']}")
    results["seconds"] = time.perf_counter() - begun
    results["targets"] = targets(results)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
