"""Prometheus metrics of the daemon, on a private registry (documented in docs/daemon.md).

prometheus_client is imported when :class:`Metrics` is built — by the daemon, and by ``rotate``
only when asked to export its run (:mod:`rotator.metrics_export`: the same families under the
same names) — so the one-shot commands never load it otherwise. Labels carry names and ids
(secret, backend, target, provider, operation, status, phase, health, result), never a key
value or a fragment of one.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from rotator import __version__
from rotator.engine import Event
from rotator.models import Phase
from rotator.planner import PRECEDENCE, Assessment, CredentialAssessment

if TYPE_CHECKING:
    from rotator.report import Outcome

PHASES = tuple(p.value for p in Phase) + ("none",)
#: Every health a secret can have (rotator.planner.PRECEDENCE), in a stable order.
HEALTHS = ("healthy", "due", "rotating", "grace", "failing", "expired", "unmanaged", "blocked", "unreadable",
           "held", "stale-claim", "rejected", "expiring", "error", "paused")
assert set(HEALTHS) == set(PRECEDENCE), "metrics.HEALTHS must list every planner health"
#: Engine actions that end a rotation attempt, and the ``result`` label they count under.
ROTATION_RESULTS = {"promoted": "completed", "rolled-back": "rolled_back", "failed": "failed"}


class Metrics:
    """Every metric the daemon exports, and the functions that update them."""

    def __init__(self, *, process: bool = True) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

        self.registry = CollectorRegistry()
        r = self.registry
        if process:
            ProcessCollector(registry=r)       # process_resident_memory_bytes, process_cpu_seconds_total, ...
        Gauge("rotator_build_info", "Version of the running rotator.", ["version"], registry=r).labels(__version__).set(1)
        self.key_expiry = Gauge(
            "rotator_key_expiry_timestamp_seconds",
            "Unix time at which the current key of each managed secret expires (issuer's expires_on).",
            ["secret"], registry=r)
        self.next_action = Gauge(
            "rotator_next_action_timestamp_seconds",
            "Unix time of the next scheduled run for each secret (due instant, end of grace, retry,"
            " escalation); absent when only the periodic reconcile is planned.",
            ["secret"], registry=r)
        self.phase = Gauge("rotator_secret_phase", "Rotation phase of each secret (1 for the current phase).",
                           ["secret", "phase"], registry=r)
        self.health = Gauge("rotator_secret_health", "Health of each secret (1 for the current state).",
                            ["secret", "health"], registry=r)
        self.rotations = Counter(
            "rotator_rotations_total",
            "Rotation attempts by result: completed (new key promoted), rolled_back, failed (a failed run).",
            ["secret", "result"], registry=r)
        self.events = Counter("rotator_events_total", "Engine actions (the audit trail's records), by action and result.",
                              ["action", "result"], registry=r)
        self.drift = Gauge("rotator_backend_drift",
                           "1 when a secondary target does not hold the primary's key (outside a rotation).",
                           ["secret", "backend", "target"], registry=r)
        self.calls = Counter("rotator_provider_calls_total",
                             "Calls to issuers and backends by provider, operation and status.",
                             ["provider", "operation", "status"], registry=r)
        self.last_reconcile = Gauge("rotator_last_successful_reconcile_timestamp_seconds",
                                    "Unix time of the last reconcile that completed with every provider reachable.",
                                    registry=r)
        self.reconciles = Counter("rotator_reconciles_total", "Reconcile runs by result (ok, failed).",
                                  ["result"], registry=r)
        self.run_seconds = Histogram("rotator_run_duration_seconds",
                                     "Duration of runs by kind (daemon: reconcile, wake; one-shot: rotate).",
                                     ["kind"], registry=r, buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300))
        self.last_run = Gauge("rotator_last_run_timestamp_seconds",
                              "Unix time at which the last run of each kind ended (reconcile, wake, rotate).",
                              ["kind"], registry=r)
        self.provider_up = Gauge("rotator_provider_up", "1 when the provider answered at the last check.",
                                 ["provider", "kind"], registry=r)
        self.alerts = Counter("rotator_alerts_total", "Alerts by kind and outcome (sent, failed, suppressed).",
                              ["kind", "outcome"], registry=r)
        self.notifications = Counter(
            "rotator_notifications_total",
            "Notification deliveries by channel (its name, else webhook-<n>), event and outcome (sent, failed:"
            " every try failed); a summary message counts each alert it carries.",
            ["channel", "event", "outcome"], registry=r)
        self.credential_expiry = Gauge(
            "rotator_issuer_credential_expiry_timestamp_seconds",
            "Unix time at which the admin key each issuer signs in with expires (from the issuer's listing);"
            " absent while unknown.", ["issuer"], registry=r)

    # --- updates ----------------------------------------------------------------------------------

    def on_event(self, event: Event) -> None:
        if event.result == "intent":          # audit-only, written before an effect: counted by its result
            return
        self.events.labels(event.action, event.result).inc()
        result = ROTATION_RESULTS.get(event.action)
        if result is not None:
            self.rotations.labels(event.secret, result).inc()

    def on_call(self, provider: str, operation: str, status: str) -> None:
        self.calls.labels(provider, operation, status).inc()

    def observe(self, secret: str, assessment: Assessment, next_at: datetime | None) -> None:
        """Per-secret gauges from a planner assessment and the planned next run."""
        _set_or_drop(self.key_expiry, secret, assessment.expires_on)
        _set_or_drop(self.next_action, secret, next_at)
        self._one_hot(self.phase, secret, PHASES, assessment.phase or "none")
        self._one_hot(self.health, secret, HEALTHS, assessment.health)

    def outcome(self, outcome: Outcome) -> None:
        """Per-secret gauges from a run's outcome alone, when no assessment was made (the one-shot
        ``rotate``): the phase it left and the next run it asked for. Health and expiry need an
        assessment (:meth:`observe`)."""
        _set_or_drop(self.next_action, outcome.secret, outcome.next_at)
        self._one_hot(self.phase, outcome.secret, PHASES, outcome.phase if outcome.phase in PHASES else "none")

    def unreadable(self, secret: str, health: str = "unreadable") -> None:
        """A secret that could not be assessed (``unreadable`` or ``error``): no expiry is known."""
        _remove(self.key_expiry, secret)
        self._one_hot(self.health, secret, HEALTHS, health)

    def credential(self, c: CredentialAssessment) -> None:
        _set_or_drop(self.credential_expiry, c.issuer, c.expires_on)

    def set_drift(self, secret: str, backend: str, target: str, drifted: bool) -> None:
        self.drift.labels(secret, backend, target).set(1 if drifted else 0)

    def provider(self, name: str, kind: str, up: bool) -> None:
        self.provider_up.labels(name, kind).set(1 if up else 0)

    def reconciled(self, ok: bool, at: datetime) -> None:
        self.reconciles.labels("ok" if ok else "failed").inc()
        if ok:
            self.last_reconcile.set(at.timestamp())

    def run_took(self, kind: str, seconds: float, ended: datetime | None = None) -> None:
        """A run of ``kind`` ended (now, or at ``ended``) after ``seconds``."""
        self.run_seconds.labels(kind).observe(seconds)
        self.last_run.labels(kind).set(ended.timestamp() if ended is not None else time.time())

    def alert(self, kind: str, outcome: str) -> None:
        self.alerts.labels(kind, outcome).inc()

    def notification(self, channel: str, event: str, outcome: str) -> None:
        """One delivery to one channel (``rotator.notify.Notifier(metrics=...)``)."""
        self.notifications.labels(channel, event, outcome).inc()

    # --- the page ---------------------------------------------------------------------------------

    def page(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    @staticmethod
    def _one_hot(gauge: Any, secret: str, values: tuple[str, ...], current: str) -> None:
        for value in values:
            gauge.labels(secret, value).set(1 if value == current else 0)


def _set_or_drop(gauge: Any, secret: str, moment: datetime | None) -> None:
    if moment is None:
        _remove(gauge, secret)
        return
    try:
        value = moment.timestamp()
    except (OverflowError, ValueError, OSError):     # a date no gauge can hold: say nothing rather than fail
        _remove(gauge, secret)
        return
    gauge.labels(secret).set(value)


def _remove(gauge: Any, *labels: str) -> None:
    try:
        gauge.remove(*labels)
    except KeyError:
        pass
