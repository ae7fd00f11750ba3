"""Under a rate limit (``python benchmarks/run.py --only rate``): rotator's wall time against the
bound the limit sets, with ``rate_limit`` configured and without it (a pace learnt from 429s),
against each of the emulator's limiter models:

* ``token_bucket``: R requests a second, a burst of 10, and every 429 says ``retry_after`` 1 s
  (whatever the refill time: a token every 20 ms at 50/s);
* ``fixed_window``: R requests per 1 s window (windows on the Unix clock, so a job starts anywhere
  in one); every 429 says the time left until the window resets.

Each job is a fleet of file → file secrets (the issuer is the only remote party), all due, rotated
in one run (grace 0) by 16 workers: about 3 issuer calls per secret, sized so that calls / R is
at least ``seconds`` (11 s by default). *Calls* are the requests the emulator answered other than
429; the lower bound is calls / R. The client is watched (its Throttle's turns and 429s) to check
that no more requests went out inside an announced ``retry_after`` window than the pace in force
when it was announced allowed (pace x window + 1).
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections import Counter
from datetime import timedelta
from typing import Any, Callable

from fleet import build, rotator_config, seed_for_rotator

from rotator.engine import Engine
from rotator.retry import Throttle

MODELS: dict[str, Callable[[float], dict[str, Any]]] = {
    "token_bucket": lambda rate: {"per_second": rate, "burst": 10, "retry_after": 1},
    "fixed_window": lambda rate: {"model": "fixed_window", "limit": int(rate), "window": 1},
}
CLIENT_BURST = 5
WORKERS = 16
DAY = timedelta(days=1)


class Watch:
    """Records what one Throttle let through and what was refused, from the client's side."""

    def __init__(self, throttle: Throttle) -> None:
        self.throttle = throttle
        self.sends: list[float] = []
        self.refusals: list[tuple[float, float | None, float | None]] = []   # (at, retry_after, pace after)
        self._lock = threading.Lock()
        acquire, refused = throttle.acquire, throttle.refused

        def watched_acquire() -> Any:
            ticket = acquire()
            with self._lock:
                self.sends.append(ticket.sent_at)
            return ticket

        def watched_refused(ticket: Any, retry_after: float | None) -> None:
            refused(ticket, retry_after)
            with self._lock:
                self.refusals.append((throttle._now(), retry_after, throttle.pace))

        throttle.acquire = watched_acquire          # type: ignore[method-assign]
        throttle.refused = watched_refused          # type: ignore[method-assign]

    def worst_window(self) -> tuple[float, int]:
        """(excess, requests) of the announced retry_after window where the most requests went out
        over what the pace allowed there (pace x window + 1): <= 0 when none went over."""
        sends = sorted(self.sends)
        worst = (-math.inf, 0)
        for at, wait, pace in self.refusals:
            if not wait or pace is None:
                continue
            inside = bisect.bisect_left(sends, at + wait) - bisect.bisect_right(sends, at)
            worst = max(worst, (inside - (pace * wait + 1), inside))
        return worst


CLIENTS = ("configured", "learnt")


def measure_rate(bench: Any, rates: list[float], models: list[str], runs: int, seconds: float = 11.0,
                 workers: int = WORKERS, say: Callable[[str], None] = print,
                 clients: tuple[str, ...] = CLIENTS) -> list[dict[str, Any]]:
    unknown = set(clients) - set(CLIENTS)
    if unknown:
        raise ValueError(f"rate clients {sorted(unknown)}: expected some of {', '.join(CLIENTS)}")
    rows: list[dict[str, Any]] = []
    for rate in rates:
        variants = {"configured": ("rate_limit = R", {"rate_limit": rate, "rate_burst": CLIENT_BURST}),
                    "learnt": ("no rate_limit (learnt)", {})}
        size = math.ceil(rate * seconds / 3)
        tag = f"rate{rate:g}"
        bench.use(f"{tag}@example.com")
        specs = build(tag, size, [("file", "file2")])
        endpoints = bench.endpoints(tag)
        seeding = bench.runtime(rotator_config(specs, endpoints, workers=workers))
        seed_for_rotator(seeding, bench.emulator, specs, bench.emulator.now() - 70 * DAY, user=bench.rotator_user)
        report = Engine(seeding).run()
        assert not report.failed, [(o.secret, o.error) for o in report.failed]
        seeding.close()
        first = True
        for model in models:
            for label, issuer in (variants[client] for client in clients):
                for run in range(runs):
                    bench.shift(10 * DAY if first else 80 * DAY)        # every key due again
                    first = False
                    rows.append(_job(bench, specs, endpoints, rate, model, label, issuer, workers, run))
                    row = rows[-1]
                    say(f"rate {model} {rate:g}/s, {label}, run {run + 1}: {row['seconds']} s for {row['calls']}"
                        f" calls (bound {row['lower_bound_seconds']} s, {row['ratio_to_bound']}x),"
                        f" {row['answered_429']} x 429 ({row['share_429_percent']} %),"
                        f" worst retry_after window {row['worst_window_excess']} over the pace")
    return rows


def _job(bench: Any, specs: list[Any], endpoints: Any, rate: float, model: str, label: str,
         issuer: dict[str, Any], workers: int, run: int) -> dict[str, Any]:
    settings = rotator_config(specs, endpoints, workers=workers, issuer={**issuer, "retries": 20})
    runtime = bench.runtime(settings)
    throttle = runtime.issuers["quiva"].client.throttle
    watch = Watch(throttle)
    bench.emulator.faults(clear=True, rate_limit=MODELS[model](rate))
    bench.emulator.reset_counters()
    started, wall = time.perf_counter(), throttle._now()
    report = Engine(runtime).run()
    seconds = time.perf_counter() - started
    runtime.close()
    bench.emulator.faults(clear=True)
    served = bench.emulator.counters()
    refused = served.get("status:429", 0)
    calls = sum(v for k, v in served.items() if k.startswith("status:")) - refused
    bound = calls / rate
    excess, inside = watch.worst_window()
    return {
        "model": model, "limit": MODELS[model](rate), "variant": label, "run": run + 1,
        "secrets": len(specs), "workers": workers, "rate_per_second": rate,
        "client_burst": issuer.get("rate_burst"),
        "seconds": round(seconds, 2), "calls": calls, "answered_429": refused,
        "share_429_percent": round(100 * refused / (calls + refused), 2),
        "lower_bound_seconds": round(bound, 2), "ratio_to_bound": round(seconds / bound, 3),
        "worst_window_excess": round(excess, 2) if math.isfinite(excess) else None,
        "worst_window_requests": inside,
        "client_429s": len(watch.refusals), "client_requests": len(watch.sends),
        "refused_at": [round(at - wall, 3) for at, _, _ in watch.refusals][:60],
        "pace": [(round(at - wall, 3), what, None if pace is None else round(pace, 1))
                 for at, what, pace in list(throttle.events)[:40]],
        "outcomes": dict(Counter(o.status for o in report.outcomes)),
        "failed_errors": sorted({o.error or "" for o in report.failed})[:3],
        "issuer_endpoints": dict(sorted(served.items())),
    }

