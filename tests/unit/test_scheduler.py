"""When the daemon wakes up: the pure wake-up plan, its APScheduler wiring, and a two-year run
of many secrets on a fake clock through the daemon's own Reconciler (the engine, for real, against
the emulator and file backends), waking exactly when the plan says."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from rotator import config
from rotator.daemon import Reconciler
from rotator.engine import Outcome
from rotator.machine import due_at
from rotator.notify import Alerts
from rotator.runtime import Runtime
from rotator.scheduler import (
    JOB_DEFAULTS,
    MIN_GAP,
    Scheduler,
    WakePlan,
    backoff,
    effective_jitter,
    escalation_instants,
    instant_for,
    next_wakeup,
)

T0 = datetime(2027, 3, 1, 12, 0, tzinfo=timezone.utc)
MIN = timedelta(minutes=1)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


# --- pure -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("failures, expected", [(0, 0), (1, 1), (2, 2), (3, 4), (6, 32), (7, 60), (50, 60)])
def test_backoff_doubles_from_retry_min_up_to_the_check_interval(failures, expected):
    assert backoff(failures, MIN, HOUR) == expected * MIN


@pytest.mark.parametrize("outcome, failures, expected", [
    (Outcome("a", status="ok", next_at=T0 + 5 * DAY), 0, T0 + 5 * DAY),              # due instant
    (Outcome("a", status="changed", next_at=T0 + 2 * DAY), 0, T0 + 2 * DAY),         # end of grace
    (Outcome("a", status="waiting", next_at=T0 + 15 * MIN), 0, T0 + 15 * MIN),       # another runner's lease
    (Outcome("a", status="failed", retry=True), 1, T0 + MIN),                        # retry after back-off
    (Outcome("a", status="failed", retry=True), 3, T0 + 4 * MIN),
    (Outcome("a", status="failed", retry=False), 1, None),                           # needs a person
    (Outcome("a", status="waiting"), 0, None),                                       # interrupted
])
def test_instant_for_each_way_a_run_can_end(outcome, failures, expected):
    assert instant_for(outcome, T0, failures, MIN, HOUR) == expected


def test_next_wakeup_is_exactly_the_earliest_instant():
    instants = [T0 + 3 * DAY, None, T0 + timedelta(hours=7, seconds=3), T0 + 90 * DAY]
    assert next_wakeup(instants, T0) == T0 + timedelta(hours=7, seconds=3)
    assert next_wakeup([None, None], T0) is None
    assert next_wakeup([], T0) is None
    # never in the past, never closer than the minimum gap: no busy loop
    assert next_wakeup([T0 - DAY, T0 + 10 * DAY], T0) == T0 + MIN_GAP


def test_escalation_instants_are_the_lead_times_before_expiry_still_ahead():
    expires = T0 + timedelta(days=11)
    marks = escalation_instants(expires, [timedelta(days=13), timedelta(days=10), timedelta(days=7)], T0)
    assert marks == [expires - timedelta(days=10), expires - timedelta(days=7), expires]
    assert escalation_instants(None, [timedelta(days=13)], T0) == []


@pytest.mark.parametrize("year", [1, 9999])
def test_escalation_instants_at_the_edges_of_the_calendar_never_raise(year):
    expires = datetime(year, 1, 1, tzinfo=timezone.utc)
    marks = escalation_instants(expires, [timedelta(days=13), timedelta(days=7)], T0)
    assert marks == ([] if year == 1 else [expires - timedelta(days=13), expires - timedelta(days=7), expires])


def test_watched_instants_wake_the_daemon_but_are_not_secrets():
    plan = WakePlan(retry_min=MIN, retry_max=HOUR)
    plan.update([Outcome("web", next_at=T0 + 30 * DAY)], T0)
    plan.watch("credential:quiva", [T0 + 3 * DAY, T0 + 6 * DAY])
    assert plan.next_wakeup(T0) == T0 + 3 * DAY
    assert plan.due_now(T0 + 3 * DAY) == []                      # never run as a secret
    assert plan.watches_due(T0 + 3 * DAY - MIN) == []
    assert plan.watches_due(T0 + 3 * DAY) == ["credential:quiva"]
    assert plan.watches_due(T0 + 3 * DAY) == []                  # each instant wakes once: no busy loop
    assert plan.next_wakeup(T0 + 3 * DAY) == T0 + 6 * DAY
    plan.watch("credential:quiva", [])
    assert plan.next_wakeup(T0 + 3 * DAY) == T0 + 30 * DAY


def test_wake_plan_tracks_each_secret_and_wakes_at_the_earliest():
    plan = WakePlan(retry_min=MIN, retry_max=HOUR)
    plan.update([Outcome("web", next_at=T0 + 30 * DAY), Outcome("batch", status="changed", next_at=T0 + 2 * DAY),
                 Outcome("broken", status="failed", retry=False)], T0)
    assert plan.next_wakeup(T0) == T0 + 2 * DAY
    assert plan.due_now(T0 + 2 * DAY - timedelta(seconds=1)) == []
    assert plan.due_now(T0 + 2 * DAY) == ["batch"]

    # batch fails (transiently) twice in a row: 1 then 2 minutes; success resets the count
    now = T0 + 2 * DAY
    plan.update([Outcome("batch", status="failed", retry=True)], now)
    assert plan.next_wakeup(now) == now + MIN
    plan.update([Outcome("batch", status="failed", retry=True)], now + MIN)
    assert plan.instant("batch", now) == now + 3 * MIN
    plan.update([Outcome("batch", status="changed", next_at=now + 90 * DAY)], now + 3 * MIN)
    assert plan.failures == {"broken": 1} and plan.next_wakeup(now + 3 * MIN) == T0 + 30 * DAY

    # a key still not rotated adds its escalation instants, and only for that secret
    plan.also_at("broken", [now + 5 * DAY, now + DAY])
    assert plan.next_wakeup(now) == now + DAY
    assert plan.due_now(now + DAY) == ["broken"]
    plan.also_at("broken", [])
    assert plan.next_wakeup(now) == T0 + 30 * DAY


@pytest.mark.parametrize("jitter, interval, expected", [
    (timedelta(minutes=5), HOUR, timedelta(minutes=5)),
    (timedelta(minutes=5), timedelta(minutes=10), MIN),       # capped at a tenth of the interval
    (timedelta(0), HOUR, timedelta(0)),
])
def test_jitter_never_threatens_the_one_interval_promise(jitter, interval, expected):
    assert effective_jitter(jitter, interval) == expected


# --- APScheduler wiring -----------------------------------------------------------------------------

def test_jobs_live_in_memory_coalesce_and_run_one_at_a_time():
    from apscheduler.jobstores.memory import MemoryJobStore

    sched = Scheduler(lambda: None, lambda: None, check_interval=HOUR, jitter=timedelta(minutes=5))
    sched.start(paused=True)
    try:
        assert isinstance(sched.aps._jobstores["default"], MemoryJobStore)
        assert set(sched.aps._jobstores) == {"default"}
        (reconcile,) = sched.aps.get_jobs()
        assert (reconcile.id, reconcile.coalesce, reconcile.max_instances, reconcile.misfire_grace_time) == \
            ("reconcile", True, 1, None)
        assert reconcile.trigger.interval == HOUR and reconcile.trigger.jitter == 300
        assert JOB_DEFAULTS == {"coalesce": True, "max_instances": 1, "misfire_grace_time": None}

        at = datetime.now(timezone.utc) + timedelta(days=3, seconds=7)
        sched.plan_wake(at)
        assert sched.next_wake() == at
        later = at + DAY
        sched.plan_wake(later)                      # re-planned: still exactly one wake job
        wakes = [j for j in sched.aps.get_jobs() if j.name == "wake"]
        assert len(wakes) == 1 and wakes[0].next_run_time == later
        assert (wakes[0].coalesce, wakes[0].max_instances, wakes[0].misfire_grace_time) == (True, 1, None)
        sched.plan_wake(None)
        assert [j.name for j in sched.aps.get_jobs()] == ["reconcile"]
    finally:
        sched.shutdown()


def test_missed_reconciles_after_a_suspend_run_once_at_once():
    """The process was frozen for 100 s with a 10 s interval: ten missed runs become one, now."""
    runs: list[datetime] = []
    done = threading.Event()

    def reconcile():
        runs.append(datetime.now(timezone.utc))
        done.set()

    sched = Scheduler(reconcile, lambda: None, check_interval=timedelta(seconds=10))
    started = datetime.now(timezone.utc)
    sched.start(first_run=started - timedelta(seconds=100))
    try:
        assert done.wait(5), "the missed reconcile did not run"
        time.sleep(0.3)
        assert len(runs) == 1
        assert sched.next_reconcile() > datetime.now(timezone.utc)
    finally:
        sched.shutdown()


# --- two simulated years, many secrets ----------------------------------------------------------------

SECRETS = 12
YEARS_2 = timedelta(days=730)
CHECK = timedelta(days=2)


def _simulate(world, clock, emulator, *, days=YEARS_2, before_run=None):
    """Drive the daemon's Reconciler exactly as its two APScheduler jobs would, on the fake clock."""
    runtime = Runtime(config.load(data=world.config_data()), clock=clock, sleep=clock.sleep, identity="sim-daemon")
    alerts_sent = []
    events = []
    reconciler = Reconciler(runtime, alerts=Alerts(alerts_sent.append, escalate_at=[13 * DAY, 10 * DAY, 7 * DAY]),
                            audit=events.append)
    start, end = clock.now(), clock.now() + days
    next_reconcile = start
    due_before: dict[str, datetime | None] = {}
    first_claims: list[tuple[str, timedelta]] = []     # delay of the first claim after each due instant
    finished: list[tuple[str, timedelta]] = []         # due instant -> new key promoted
    outages: list[str] = []
    seen_dues: set[tuple[str, datetime]] = set()
    runs = 0
    try:
        while clock.now() < end:
            now = clock.now()
            seen = len(events)
            if before_run is not None:
                before_run(now - start)
            if now >= next_reconcile:
                reconciler.reconcile()
                next_reconcile = now + CHECK
            else:
                reconciler.wake()
            runs += 1
            claimed = set()
            for e in events[seen:]:
                due = due_before.get(e.secret)
                if due is None:
                    continue
                if e.action == "claimed" and e.secret not in claimed:
                    claimed.add(e.secret)
                    if (e.secret, due) not in seen_dues:     # not a re-claim after a failure
                        seen_dues.add((e.secret, due))
                        first_claims.append((e.secret, e.at - max(due, start)))
                if e.action == "promoted":
                    finished.append((e.secret, e.at - max(due, start)))
            changed = {e.secret for e in events[seen:]}
            for secret in runtime.secrets:
                # I1 from the outside after every run: the primary's key (its expiry is what time
                # threatens) always; the other targets whenever this run touched the secret.
                snap = secret.primary.backend.read(secret.primary.target)
                due_before[secret.name] = due_at(secret.policy, snap.record) if snap.record else None
                values = [(secret.primary.label, snap.current)]
                if secret.name in changed:
                    values += [(b.label, b.backend.read(b.target).current) for b in secret.secondaries]
                for label, value in values:
                    if value is None or not emulator.is_active(value.reveal()):
                        outages.append(f"{clock.now():%Y-%m-%d %H:%M} {label}")
            wake = reconciler.next_wakeup()
            clock.set(min(w for w in (wake, next_reconcile) if w is not None))
    finally:
        runtime.close()
    return events, first_claims, finished, outages, alerts_sent, runs



@pytest.mark.slow
def test_two_years_of_many_secrets_each_rotated_on_time_none_expires(world, emulator, clock):
    world.defaults.update(lead_time="14d", grace="48h", check_interval="2d", workers=1)
    for i in range(SECRETS):
        options = {}
        if i % 4 == 1:
            options["lead_time"] = "21d"
        if i % 4 == 2:
            options["grace"] = "1h"
        if i % 5 == 3:
            options["lead_time"] = "8d"
        world.add_secret(f"s{i:02d}", **options)
        if i % 7 != 6:                                          # a few start with no key at all
            world.seed(f"s{i:02d}", age=timedelta(days=(i * 6.7) % 89, hours=i * 5 % 24))
    # Bursts of issuer failures at two moments; retried after back-off, well inside one interval.
    bursts = [timedelta(days=200), timedelta(days=400)]

    def faults(elapsed):
        if bursts and elapsed >= bursts[0]:
            bursts.pop(0)
            emulator.faults.fail_next(20, status=503, path="/accounts/api-key")

    world.issuer["retries"] = 2
    try:
        events, first_claims, finished, outages, alerts, runs = _simulate(world, clock, emulator, before_run=faults)
    finally:
        emulator.faults.clear()

    assert len(finished) >= SECRETS * 7, len(finished)                  # ~3-month keys over two years
    assert not outages, outages[:5]                                      # no key ever expired, no outage
    # every rotation started exactly at its due instant (an exact wake-up, not the next reconcile) ...
    assert first_claims and all(d == timedelta(0) for _, d in first_claims), \
        [(s, d) for s, d in first_claims if d][:5]
    # ... and finished within one check interval of it, issuer outages and back-off included
    assert all(timedelta(0) <= d <= CHECK for _, d in finished), max(d for _, d in finished)
    failed = [e for e in events if e.action == "failed"]
    assert len({e.secret for e in failed}) >= 1 and any(d > timedelta(0) for _, d in finished), \
        "the injected issuer outages really failed and delayed some rotations"
    assert not [a for a in alerts if a.kind == "escalation"], "no key ever came close to expiring"
    assert len([a for a in alerts if a.kind == "failure"]) <= 2 * len({e.secret for e in failed}), \
        "one failure alert per failing streak, not one per retry"
    assert runs < (YEARS_2 / CHECK) + SECRETS * 9 * 3, runs              # no busy loop: ~one run per event


def test_a_failed_run_is_retried_after_backoff_not_at_the_next_reconcile(world, emulator, clock):
    world.defaults.update(check_interval="1d", workers=1)
    world.issuer["retries"] = 1
    world.add_secret("web")
    world.seed("web", age=timedelta(days=85))
    data = world.config_data()
    data["daemon"] = {"retry_min": "2m"}
    runtime = Runtime(config.load(data=data), clock=clock, sleep=clock.sleep, identity="sim-daemon")
    reconciler = Reconciler(runtime)
    try:
        emulator.faults.fail_next(2, status=503, path="/accounts/api-key")
        start = clock.now()
        reconciler.reconcile()                                   # adopts, claims, issue fails
        assert reconciler.plan.failures == {"web": 1}
        assert reconciler.next_wakeup() == start + 2 * MIN
        clock.set(start + 2 * MIN)
        assert reconciler.wake().outcomes[0].status == "failed"
        assert reconciler.next_wakeup() == start + 2 * MIN + 4 * MIN
        clock.set(start + 6 * MIN)
        report = reconciler.wake()
        assert report.outcomes[0].status == "changed" and world.record("web").phase.value == "grace"
        assert reconciler.next_wakeup() == world.record("web").grace_until    # then exactly at the end of grace
        assert reconciler.plan.failures == {}
    finally:
        emulator.faults.clear()
        runtime.close()
