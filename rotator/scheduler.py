"""When the daemon runs: a pure wake-up plan, and its APScheduler wiring (daemon mode only).

The scheduler decides *when*; what happens is always ``Engine.run()``, the code path of
``rotator rotate``. Two jobs live in APScheduler's in-memory job store (never a shared store:
two schedulers sharing one run the same job twice; exactly-once comes from the rotation
record's compare-and-swap, I4):

* ``reconcile`` — every ``check_interval`` (plus up to ``jitter``), every secret;
* ``wake`` — one-shot, at the earliest instant something becomes due (``expires_on − lead``,
  the end of a grace window, a retry after back-off, an escalation lead time), for the secrets
  due then; re-planned after every run.

Both coalesce missed runs into one (a laptop lid or a paused pod) and run however late
(``misfire_grace_time=None``), one instance at a time, on a one-thread executor, so runs never
overlap; concurrency across secrets is the engine's bounded worker pool.

:class:`WakePlan` is pure: instants in, instants out, ``now`` passed in.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Mapping

from rotator.engine import Outcome

log = logging.getLogger("rotator.scheduler")

MIN_GAP = timedelta(seconds=1)      # never plan a wake-up closer than this (no busy loop)


# --- the pure part ------------------------------------------------------------------------------

def backoff(failures: int, retry_min: timedelta, retry_max: timedelta) -> timedelta:
    """Delay before retry number ``failures`` (1-based): retry_min, doubling, capped at retry_max."""
    if failures <= 0:
        return timedelta(0)
    return min(retry_max, retry_min * (2 ** min(failures - 1, 30)))


def instant_for(outcome: Outcome, now: datetime, failures: int, retry_min: timedelta,
                retry_max: timedelta) -> datetime | None:
    """When this secret next needs a run, from how its last run ended (None: only the reconcile).

    * failed and retryable → after back-off (``failures`` counts consecutive failed runs);
    * failed and not retryable (needs a person) → None: the periodic reconcile looks again;
    * otherwise → ``outcome.next_at`` (due instant, end of grace, a lease held elsewhere).
    """
    if outcome.status == "failed":
        return now + backoff(max(failures, 1), retry_min, retry_max) if outcome.retry else None
    return outcome.next_at


def escalation_instants(expires_on: datetime | None, thresholds: Iterable[timedelta],
                        now: datetime) -> list[datetime]:
    """Future instants at which an unrotated key crosses an escalation lead time (and expiry).
    Dates at the edge of the calendar (year 1, year 9999) never raise: marks that fall off it
    are dropped."""
    if expires_on is None:
        return []
    marks = [expires_on]
    for t in thresholds:
        try:
            marks.append(expires_on - t)
        except OverflowError:
            continue
    return sorted(m for m in marks if m > now)


def next_wakeup(instants: Iterable[datetime | None], now: datetime, *,
                min_gap: timedelta = MIN_GAP) -> datetime | None:
    """The earliest instant, never earlier than ``now + min_gap``; None when nothing is planned."""
    known = [i for i in instants if i is not None]
    if not known:
        return None
    return max(min(known), now + min_gap)


@dataclass
class WakePlan:
    """Per-secret next instants, updated after every run. Pure: the caller passes ``now``."""

    retry_min: timedelta
    retry_max: timedelta
    min_gap: timedelta = MIN_GAP
    due: dict[str, datetime | None] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    extra: dict[str, list[datetime]] = field(default_factory=dict)
    watches: dict[str, list[datetime]] = field(default_factory=dict)   # not secrets: e.g. issuer credentials

    def update(self, outcomes: Iterable[Outcome], now: datetime) -> None:
        """Record how the secrets of one run ended."""
        for outcome in outcomes:
            if outcome.status == "failed":
                self.failures[outcome.secret] = self.failures.get(outcome.secret, 0) + 1
            elif outcome.status in ("ok", "changed"):
                self.failures.pop(outcome.secret, None)
            self.due[outcome.secret] = instant_for(outcome, now, self.failures.get(outcome.secret, 0),
                                                   self.retry_min, self.retry_max)

    def also_at(self, secret: str, instants: Iterable[datetime]) -> None:
        """Extra instants for ``secret`` (escalation lead times of a key still not rotated)."""
        self.extra[secret] = sorted(instants)

    def watch(self, name: str, instants: Iterable[datetime]) -> None:
        """Instants at which something other than a secret needs a look (an issuer credential
        crossing an escalation lead time). They wake the daemon; :meth:`due_now` never returns them."""
        self.watches[name] = sorted(instants)

    def watches_due(self, now: datetime) -> list[str]:
        """Watches whose instant has come; each is forgotten until :meth:`watch` sets it again."""
        due = sorted(n for n, marks in self.watches.items() if marks and marks[0] <= now)
        for name in due:
            self.watches[name] = [m for m in self.watches[name] if m > now]
        return due

    def instant(self, secret: str, now: datetime) -> datetime | None:
        """The next instant planned for one secret (None: only the periodic reconcile)."""
        extra = [i for i in self.extra.get(secret, ()) if i > now]
        candidates = [i for i in (self.due.get(secret), *extra) if i is not None]
        return min(candidates) if candidates else None

    def next_wakeup(self, now: datetime) -> datetime | None:
        watched = [marks[0] for marks in self.watches.values() if marks]
        return next_wakeup([*(self.instant(s, now) for s in set(self.due) | set(self.extra)), *watched], now,
                           min_gap=self.min_gap)

    def due_now(self, now: datetime) -> list[str]:
        """Secrets whose planned instant has come (what a ``wake`` job runs)."""
        names = set(self.due) | set(self.extra)
        return sorted(s for s in names if (at := self._raw(s)) is not None and at <= now)

    def _raw(self, secret: str) -> datetime | None:
        candidates = [i for i in (self.due.get(secret), *self.extra.get(secret, ())) if i is not None]
        return min(candidates) if candidates else None


def effective_jitter(jitter: timedelta, check_interval: timedelta) -> timedelta:
    """Reconcile jitter, capped at a tenth of the check interval so I7 holds (a rotation starts
    within one check interval of its due instant even when an exact wake-up was missed)."""
    return max(timedelta(0), min(jitter, check_interval / 10))


# --- APScheduler wiring -------------------------------------------------------------------------

JOB_DEFAULTS: Mapping[str, Any] = {"coalesce": True, "max_instances": 1, "misfire_grace_time": None}


class Scheduler:
    """A BackgroundScheduler with an in-memory job store and a one-thread executor.

    ``reconcile`` and ``wake`` are plain callables; this class only decides when they run.
    APScheduler is imported here, lazily, so ``rotator --help`` and ``rotator rotate`` never load it.
    """

    def __init__(self, reconcile: Callable[[], None], wake: Callable[[], None], *,
                 check_interval: timedelta, jitter: timedelta = timedelta(0)) -> None:
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.jobstores.memory import MemoryJobStore
        from apscheduler.schedulers.background import BackgroundScheduler

        self._reconcile, self._wake = reconcile, wake
        self.check_interval = check_interval
        self.jitter = effective_jitter(jitter, check_interval)
        self._aps = BackgroundScheduler(
            jobstores={"default": MemoryJobStore()},
            executors={"default": ThreadPoolExecutor(max_workers=1)},
            job_defaults=dict(JOB_DEFAULTS),
            timezone=timezone.utc,
        )
        self._wake_job: Any = None
        self._wakes = 0

    @property
    def aps(self) -> Any:
        """The underlying APScheduler scheduler (tests inspect its jobs)."""
        return self._aps

    def start(self, *, paused: bool = False, first_run: datetime | None = None) -> None:
        """Start; the first reconcile runs at ``first_run`` (default: at once)."""
        from apscheduler.triggers.interval import IntervalTrigger

        first = first_run or datetime.now(timezone.utc)
        trigger = IntervalTrigger(seconds=self.check_interval.total_seconds(), start_date=first,
                                  jitter=self.jitter.total_seconds() or None, timezone=timezone.utc)
        self._aps.add_job(self._reconcile, trigger, id="reconcile", name="reconcile", next_run_time=first)
        self._aps.start(paused=paused)

    def plan_wake(self, at: datetime | None) -> None:
        """Replace the one-shot wake-up with one at ``at`` (None: none; the reconcile remains).

        Each wake-up gets a fresh job id: replacing a date job from inside its own run could race
        with APScheduler removing the finished job, which would drop the new one.
        """
        from apscheduler.jobstores.base import JobLookupError

        old, self._wake_job = self._wake_job, None
        if old is not None:
            try:
                old.remove()
            except JobLookupError:
                pass
        if at is None:
            return
        self._wakes += 1
        self._wake_job = self._aps.add_job(self._wake, "date", run_date=at, id=f"wake-{self._wakes}",
                                           name="wake")
        log.debug("next wake-up at %s", at.isoformat())

    def next_wake(self) -> datetime | None:
        job = self._wake_job
        return getattr(job, "next_run_time", None) if job is not None else None

    def next_reconcile(self) -> datetime | None:
        job = self._aps.get_job("reconcile")
        return job.next_run_time if job is not None else None

    def shutdown(self) -> None:
        """Stop starting jobs; a job in flight keeps running (the daemon waits for it)."""
        if self._aps.running:
            self._aps.shutdown(wait=False)
