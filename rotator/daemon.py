"""``rotator daemon``: the engine on a schedule, with health, metrics, an audit trail and alerts.

Layers, each testable alone:

* :class:`Reconciler` — no threads, no APScheduler, clock injected: runs ``Engine.run()`` (the
  code path of ``rotator rotate``) for every secret (*reconcile*) or for the secrets due now
  (*wake*), then observes each secret (planner assessment, drift, provider reachability), feeds
  metrics and alerts, and plans the next wake-up with :class:`rotator.scheduler.WakePlan`.
* :class:`Daemon` — the process: one Runtime (providers keep their sessions), the APScheduler
  jobs, the HTTP endpoint, signals and the shutdown timeout.

Shutdown (SIGTERM/SIGINT): no new run starts; the engine stops every secret at its next step
boundary and releases its lease (``Engine.request_stop``), so the next start resumes at once;
the process exits within ``[daemon].shutdown_timeout`` — if a step is still in flight then, it
exits anyway (status 1) and the rotation is resumed once its lease runs out. A second signal
exits at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from rotator import audit as auditing
from rotator import survey
from rotator.config import Settings
from rotator.engine import Engine, Event, Outcome, RunReport
from rotator.errors import BackendPermissionError, BackendUnavailable, ConfigError
from rotator.models import Listing, Snapshot
from rotator.notify import DRIFTED, UNROTATED, Alerts
from rotator.readahead import ReadAhead
from rotator.redact import redact
from rotator.runtime import ManagedSecret, Runtime
from rotator.scheduler import WakePlan, effective_jitter, escalation_instants
from rotator.timeutil import format_duration, format_instant

log = logging.getLogger("rotator.daemon")

MIN_READY_AGE = timedelta(minutes=1)


def _reachable(outcome: str) -> bool:
    """Did a provider call reach a working provider? (HTTP statuses, or ok/error.)"""
    if outcome == "ok":
        return True
    return outcome.isdigit() and int(outcome) < 500 and int(outcome) not in (401, 403)


class ProviderTracker:
    """``Runtime(on_call=...)``: counts every provider call and remembers who answered."""

    def __init__(self, metrics: Any = None) -> None:
        self.metrics = metrics
        self._answered: set[str] = set()
        self._lock = threading.Lock()

    def on_call(self, provider: str, operation: str, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.on_call(provider, operation, outcome)
        if _reachable(outcome):
            with self._lock:
                self._answered.add(provider)

    def answered_since_reset(self) -> set[str]:
        with self._lock:
            return set(self._answered)

    def reset(self) -> None:
        with self._lock:
            self._answered.clear()


class Reconciler:
    """What the daemon does at each tick; see the module docstring."""

    def __init__(self, runtime: Runtime, *, metrics: Any = None, audit: Any = None,
                 alerts: Alerts | None = None, tracker: ProviderTracker | None = None) -> None:
        settings = runtime.settings
        self.runtime, self.clock = runtime, runtime.clock
        self.metrics, self.audit, self.alerts = metrics, audit, alerts
        self.tracker = tracker or ProviderTracker(metrics)
        self.check_interval = settings.rotator.check_interval
        self.jitter = effective_jitter(settings.daemon.jitter, self.check_interval)
        self.max_age = max(2 * self.check_interval + self.jitter, MIN_READY_AGE)
        self.plan = WakePlan(retry_min=min(settings.daemon.retry_min, self.check_interval),
                             retry_max=self.check_interval)
        self.escalate_at = list(settings.alerts.escalate_at)
        self.engine = Engine(runtime, on_event=self._on_event)
        self.last_ok: datetime | None = None
        self.last_error: str | None = None
        self.providers: dict[str, tuple[str, str | None]] = {}     # name -> (kind, problem or None)
        self.stopping = False
        self._events: list[Event] = []
        self._lock = threading.Lock()

    # --- the two jobs ------------------------------------------------------------------------

    def reconcile(self) -> RunReport | None:
        """Every secret, every provider checked."""
        with self._notifications():
            return self._run(None, "reconcile")

    def wake(self) -> RunReport | None:
        """The secrets whose planned instant has come (None when there are none), and the issuer
        credentials that crossed an escalation lead time."""
        with self._notifications():
            return self._wake()

    def _notifications(self) -> Any:
        """One notification batch per run: a summary channel gets one message for it."""
        return self.alerts.batch() if self.alerts is not None else contextlib.nullcontext()

    def _wake(self) -> RunReport | None:
        now = self.clock.now()
        names = self.plan.due_now(now)
        watched = [name.split(":", 1)[1] for name in self.plan.watches_due(now) if name.startswith("credential:")]
        if names:
            return self._run(names, "wake")
        if watched:
            self._credentials(survey.list_issuers(self.runtime, watched), now)
        return None

    def next_wakeup(self) -> datetime | None:
        return self.plan.next_wakeup(self.clock.now())

    # --- one run -----------------------------------------------------------------------------

    def _run(self, names: list[str] | None, kind: str) -> RunReport | None:
        full = kind == "reconcile"
        started = time.monotonic()
        if full:
            self.tracker.reset()
        try:
            report = self.engine.run(names)
        except Exception as exc:  # noqa: BLE001 - the engine isolates secrets; this is the rest
            self.last_error = redact(str(exc)) or type(exc).__name__
            log.error("%s run failed: %s", kind, self.last_error)
            now = self.clock.now()
            failed = names or [s.name for s in self.runtime.secrets]
            self.plan.update([Outcome(name, status="failed") for name in failed], now)   # back off, no busy loop
            if full and self.metrics is not None:
                self.metrics.reconciled(False, now)
            return None
        now = self.clock.now()
        self.plan.update(report.outcomes, now)
        events = self._drain()
        if self.alerts is not None:
            self.alerts.on_run(events, report.outcomes, now)
        if self.engine.stopping:
            return report
        problems: dict[str, tuple[str, str | None]] = {}
        observed = self.runtime.select(names)
        ahead = ReadAhead(observed, self.clock)       # fresh reads, batched where the backend can
        reads = {secret.name: self._read(secret, full, problems, ahead) for secret in observed}
        # then one listing per issuer (after the reads: a key promoted before a read is in it), for
        # the current keys' standing, the issuers' own credentials and, on a reconcile, reachability
        wanted = list(self.runtime.issuers) if full else [s.issuer.name for s in observed]
        listings = survey.list_issuers(self.runtime, wanted)
        for secret in observed:
            view = listings.get(secret.issuer.name)
            self._observe(secret, reads[secret.name], view.listing if view else None, now, problems)
        self._credentials(listings, now)
        if full:
            for name, view in listings.items():
                down = view.listing is None
                _note(problems, name, "issuer", view.problem if down else None)
            self.providers = problems
            ok = not any(problem for _, problem in problems.values())
            self.last_error = None if ok else "; ".join(
                f"{name}: {problem}" for name, (_, problem) in sorted(problems.items()) if problem)
            if ok:
                self.last_ok = now
            if self.metrics is not None:
                self.metrics.reconciled(ok, now)
                for name, (what, problem) in problems.items():
                    self.metrics.provider(name, what, problem is None)
        else:
            merged = dict(self.providers)          # swapped whole: /readyz reads it from another thread
            for name, entry in problems.items():
                if entry[1] is not None or name not in merged:
                    merged[name] = entry
            self.providers = merged
        if self.metrics is not None:
            self.metrics.run_took(kind, time.monotonic() - started)
        return report

    def _read(self, secret: ManagedSecret, full: bool, problems: dict[str, tuple[str, str | None]],
              ahead: ReadAhead) -> tuple[Snapshot, Any] | Exception:
        """Read one secret's primary (and on a reconcile check its drift); never raises."""
        primary_backend = secret.primary.backend.name
        try:
            if full:
                from rotator import drift

                primary, report = drift.check(secret, ahead)
                if self.runtime.settings.rotator.repair_drift:
                    drift.repair(secret, primary, report)
                    for label in report.repaired:
                        log.warning("%s: repaired drift on %s", secret.name, label)
            else:
                primary, report = ahead.read(secret), None
        except Exception as exc:  # noqa: BLE001 - one secret never stops the others (I6)
            # Unreachable (or refusing us) is the backend's problem; a bad target is the secret's.
            down = isinstance(exc, (BackendUnavailable, BackendPermissionError))
            _note(problems, primary_backend, "backend", survey.describe(exc) if down else None)
            log.warning("%s: cannot read the primary: %s", secret.name, survey.describe(exc))
            return exc
        _note(problems, primary_backend, "backend", None)
        return primary, report

    def _observe(self, secret: ManagedSecret, read: tuple[Snapshot, Any] | Exception, listing: Listing | None,
                 now: datetime, problems: dict[str, tuple[str, str | None]]) -> None:
        """Assess one secret after a run (gauges, escalation, wake-ups), and on a reconcile its
        drift. Any exception is this secret's ``error`` health; the others carry on (I6)."""
        try:
            self._observe_one(secret, read, listing, now, problems)
        except Exception as exc:  # noqa: BLE001 - one secret never stops the others (I6)
            log.error("%s: cannot assess: %s", secret.name, survey.describe(exc))
            if self.metrics is not None:
                self.metrics.unreadable(secret.name, "error")

    def _observe_one(self, secret: ManagedSecret, read: tuple[Snapshot, Any] | Exception, listing: Listing | None,
                     now: datetime, problems: dict[str, tuple[str, str | None]]) -> None:
        if isinstance(read, Exception):
            if self.metrics is not None:
                self.metrics.unreadable(secret.name)
            return
        primary, report = read
        a = survey.assess_secret(secret, primary, listing, now, self.check_interval)
        if a.health == "error":
            if self.metrics is not None:
                self.metrics.unreadable(secret.name, "error")
            return
        unrotated = a.health in UNROTATED
        self.plan.also_at(secret.name, escalation_instants(a.expires_on, self.escalate_at, now) if unrotated else [])
        if self.metrics is not None:
            self.metrics.observe(secret.name, a, self.plan.instant(secret.name, now))
        if self.alerts is not None:
            self.alerts.on_assessment(secret.name, a, now)
        if report is None:
            return
        for target in report.targets:
            if target.target in report.repaired:
                target = replace(target, state="ok", detail="repaired")
            backend = secret.bound(target.target).backend.name
            down = target.state == "unreachable"
            _note(problems, backend, "backend", (target.detail or target.state) if down else None)
            if report.note:          # a rotation in flight: secondaries are expected to differ
                continue
            if self.metrics is not None:
                self.metrics.set_drift(secret.name, backend, target.target, target.state in DRIFTED)
            if self.alerts is not None:
                self.alerts.on_drift(secret.name, target.target, target.state, target.detail, now)

    def _credentials(self, listings: dict[str, survey.IssuerView], now: datetime) -> None:
        """The issuers' own admin keys: the expiry gauge, the alerts for one rotator does not
        manage, and a wake-up at each escalation lead time still ahead."""
        lead_time = self.runtime.settings.rotator.lead_time
        for c in survey.credentials(self.runtime, listings, now):
            try:
                if self.metrics is not None:
                    self.metrics.credential(c)
                if self.alerts is not None:
                    self.alerts.on_credential(c, now, lead_time=lead_time)
                marks = [] if c.managed_as else escalation_instants(
                    c.expires_on, [lead_time, *self.escalate_at], now)
                self.plan.watch(f"credential:{c.issuer}", marks)
            except Exception as exc:  # noqa: BLE001 - one issuer never stops the others
                log.error("issuer %s: cannot assess its admin key: %s", c.issuer, survey.describe(exc))

    # --- events ------------------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        """Engine observer: audit first (durable), metrics, then queue for alerts after the run."""
        if self.audit is not None:
            try:
                self.audit(event)
            except Exception:  # noqa: BLE001 - the engine must not stop; say so loudly
                log.exception("could not write the audit record for %s %s", event.secret, event.action)
        if self.metrics is not None:
            self.metrics.on_event(event)
        with self._lock:
            self._events.append(event)

    def _drain(self) -> list[Event]:
        with self._lock:
            events, self._events = self._events, []
        return events

    # --- readiness ---------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        now = self.clock.now()
        reasons = []
        if self.stopping:
            reasons.append("shutting down")
        if self.last_ok is None:
            reasons.append("no successful reconcile yet" + (f": {self.last_error}" if self.last_error else ""))
        elif now - self.last_ok > self.max_age:
            reasons.append(f"last successful reconcile {format_duration(now - self.last_ok)} ago"
                           f" (limit {format_duration(self.max_age)})")
        for name, (kind, problem) in sorted(self.providers.items()):
            if problem:
                reasons.append(f"{kind} {name} unreachable: {problem}")
        return not reasons, {
            "config": "loaded",
            "runner": self.engine.me,
            "secrets": len(self.runtime.secrets),
            "last_successful_reconcile": format_instant(self.last_ok),
            "next_wakeup": format_instant(self.next_wakeup()),
            "providers": {n: ("ok" if p is None else "unreachable") for n, (_, p) in sorted(self.providers.items())},
            "reasons": reasons,
        }


def _note(problems: dict[str, tuple[str, str | None]], name: str, kind: str, problem: str | None) -> None:
    """Remember a provider's state for this run; a problem is never overwritten by an ok."""
    if problem is not None or name not in problems:
        problems[name] = (kind, problem)


# --- the process -----------------------------------------------------------------------------------

class Daemon:
    def __init__(self, settings: Settings, *, http_address: str | None = None,
                 audit_path: str | None = None) -> None:
        from rotator import notify
        from rotator.metrics import Metrics
        from rotator.scheduler import Scheduler

        self.settings = settings
        self.metrics = Metrics()
        tracker = ProviderTracker(self.metrics)
        self.runtime = Runtime(settings, on_call=tracker.on_call)
        self.audit = auditing.open_sink(settings.audit, audit_path)
        self.notifier = notify.Notifier.from_settings(
            settings.alerts, self.runtime.context.resolve_credential, metrics=self.metrics,
            on_delivery=lambda alert, hook, ok: self.metrics.alert(alert.kind, "sent" if ok else "failed"))
        alerts = Alerts(self.notifier.send if self.notifier else _no_webhook,
                        escalate_at=settings.alerts.escalate_at, repeat_after=settings.alerts.repeat_after,
                        on_suppressed=lambda alert: self.metrics.alert(alert.kind, "suppressed"))
        self.reconciler = Reconciler(self.runtime, metrics=self.metrics, audit=self.audit, alerts=alerts,
                                     tracker=tracker)
        self.scheduler = Scheduler(self._job("reconcile"), self._job("wake"),
                                   check_interval=settings.rotator.check_interval, jitter=settings.daemon.jitter)
        address = settings.daemon.http_address if http_address is None else (http_address or None)
        self.http = None
        if address and address.lower() not in ("off", "none"):
            from rotator.health import HealthServer

            try:
                self.http = HealthServer(address, ready=self.reconciler.readiness, metrics=self.metrics.page)
            except OSError as exc:
                self.runtime.close()
                raise ConfigError(f"daemon.http_address: cannot listen on {address}: {exc.strerror}") from None
        self._gate = threading.Lock()
        self._stopping = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._signalled = threading.Event()

    def _job(self, kind: str):
        def job() -> None:
            with self._gate:
                if self._stopping.is_set():
                    return
                self._idle.clear()
            try:
                getattr(self.reconciler, kind)()
                if not self._stopping.is_set():
                    self.scheduler.plan_wake(self.reconciler.next_wakeup())
            except Exception:  # noqa: BLE001 - a job must never kill the scheduler
                log.exception("%s job failed", kind)
            finally:
                self._idle.set()
        job.__name__ = kind
        return job

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._signalled.is_set():
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            _flush_logs()
            os._exit(128 + signum)
        log.info("%s received: shutting down", signal.Signals(signum).name)
        self._signalled.set()

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; return the exit status."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
        if self.http is not None:
            self.http.start()
            log.info("serving /healthz /readyz /metrics on http://%s", self.http.address)
        self.scheduler.start()
        log.info("daemon started: %d secret(s), reconcile every %s (jitter up to %s), runner %s",
                 len(self.runtime.secrets), format_duration(self.reconciler.check_interval),
                 format_duration(self.reconciler.jitter), self.reconciler.engine.me)
        while not self._signalled.wait(timeout=3600):
            pass
        return self.shutdown()

    def request_shutdown(self) -> None:
        """What a signal does (for embedding and tests)."""
        self._signalled.set()

    def shutdown(self) -> int:
        timeout = self.settings.daemon.shutdown_timeout
        with self._gate:
            self._stopping.set()
        self.reconciler.stopping = True
        self.reconciler.engine.request_stop()
        self.scheduler.shutdown()
        in_flight = not self._idle.is_set()
        if in_flight:
            log.info("waiting up to %s for the step in flight", format_duration(timeout))
        finished = self._idle.wait(timeout.total_seconds())
        if self.http is not None:
            self.http.stop()
        if not finished:
            log.error("shutdown timeout (%s) passed with a step in flight; exiting anyway. The next start"
                      " resumes the rotation once its lease (%s) runs out", format_duration(timeout),
                      format_duration(self.settings.rotator.lease))
            _flush_logs()
            os._exit(1)
        for closing in (self.runtime.close, getattr(self.audit, "close", None),
                        getattr(self.notifier, "close", None)):
            if closing is not None:
                try:
                    closing()
                except Exception:  # noqa: BLE001
                    log.exception("error while closing")
        log.info("stopped")
        return 0


def _no_webhook(alert: Any) -> None:
    log.warning("ALERT %s: %s", alert.kind, alert.summary)


def _flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:  # noqa: BLE001
            pass
    sys.stderr.flush()


def run_daemon(settings: Settings, *, http_address: str | None = None, audit_path: str | None = None) -> int:
    """Build the daemon from validated settings and serve until a signal."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("apscheduler").setLevel(logging.WARNING)
    return Daemon(settings, http_address=http_address, audit_path=audit_path).run()
