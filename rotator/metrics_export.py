"""A one-shot run's metrics for Prometheus: ``rotator rotate --metrics-file PATH`` (node-exporter's
textfile collector) and ``rotator rotate --pushgateway URL`` (the Prometheus Pushgateway).

A CronJob has no ``/metrics`` to scrape, so after its run ``rotate`` hands its report and events
to :func:`export_run`, which fills the daemon's own :class:`rotator.metrics.Metrics` with them —
the same families, names, labels and label values — so the dashboard
(deploy/grafana/rotator.json) and the alert rules (deploy/prometheus/rotator-rules.yaml) work for
both. What a run exports:

* always: ``rotator_build_info``, ``rotator_events_total`` and ``rotator_rotations_total`` (from
  the events), ``rotator_reconciles_total{result}`` (``ok`` when the run's exit code is 0),
  ``rotator_last_successful_reconcile_timestamp_seconds`` (kept from the previous export while
  runs fail), ``rotator_run_duration_seconds{kind="rotate"}`` and
  ``rotator_last_run_timestamp_seconds{kind="rotate"}``; per secret ``rotator_secret_phase`` and
  ``rotator_next_action_timestamp_seconds`` from its outcome;
* given a :class:`Recorder` fed during the run: ``rotator_provider_calls_total`` (issuer errors,
  429s), ``rotator_notifications_total`` and ``rotator_alerts_total``;
* given the issuers' credential assessments (``rotate``'s summary already has them):
  ``rotator_issuer_credential_expiry_timestamp_seconds``;
* given a :class:`rotator.survey.Survey` made after the run: per secret
  ``rotator_key_expiry_timestamp_seconds``, ``rotator_secret_health`` and the phase and next
  action as the planner sees them, and ``rotator_provider_up`` of each issuer.

**Counters and histograms continue across runs.** A CronJob's process starts from zero every
time, and a Pushgateway group (or a textfile) holds only the last push, so a plain export would
show every counter as 0 or 1 for ever and ``increase()`` would see nothing. So before writing, the
previous values are read back from the same place — the file, or this job's group at the
Pushgateway — and added: ``rotator_rotations_total`` grows run after run exactly as the
daemon's does, and a lost file or a restarted Pushgateway is an ordinary counter reset. Gauges
are this run's (a secret no longer configured drops out), except the last successful run's
timestamp, which a failed run keeps.

**Pushgateway grouping.** ``PUT /metrics/job/<job>/instance/<instance>``: the group is replaced
at every run. ``instance`` is, in this order, the caller's, ``$ROTATOR_PUSHGATEWAY_INSTANCE``, or
the host name — so two hosts running ``rotate`` from cron do not overwrite each other. A
Kubernetes CronJob's pod has a new host name every run, which would leave one stale group per
run behind (and start the counters afresh each time), so the shipped CronJob sets
``ROTATOR_PUSHGATEWAY_INSTANCE`` (deploy/kubernetes/cronjob.yaml). The variable has one level, so
it is not a configuration override.

A Pushgateway that is down or refuses the push is a warning: the run's exit code does not change.
A bad destination (a directory that does not exist or cannot be written, a URL that is not
``http(s)://host[:port][/path]``) is a :class:`rotator.errors.ConfigError`;
:func:`check_destinations` finds it before the run.

prometheus_client is imported only when something is exported.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from rotator.errors import ConfigError
from rotator.redact import redact

if TYPE_CHECKING:
    from rotator.planner import CredentialAssessment
    from rotator.report import Event, RunReport
    from rotator.survey import Survey

log = logging.getLogger("rotator.metrics_export")

#: The ``kind`` label of a one-shot run (the daemon's are ``reconcile`` and ``wake``).
KIND = "rotate"
#: Families whose last value a run without one keeps (a failed run has no new success to report).
STICKY = ("rotator_last_successful_reconcile_timestamp_seconds",)
#: Names the Pushgateway group when the caller does not (a CronJob's pods each have a new host name).
INSTANCE_ENV = "ROTATOR_PUSHGATEWAY_INSTANCE"
#: Seconds to wait for the Pushgateway (read and push each).
TIMEOUT = 10.0

Sample = tuple[str, tuple[tuple[str, str], ...]]          # (sample name, sorted labels)


class Recorder:
    """What a run's events do not say, collected while it runs; no prometheus_client needed.

    ``Runtime(settings, on_call=recorder.on_call)`` counts provider calls (and so the issuer's
    errors and 429s); ``Notifier.from_settings(..., metrics=recorder)`` counts notification
    deliveries; ``on_delivery=recorder.delivered`` counts alerts sent and failed, as the daemon does.
    ``started`` (monotonic) times the run.
    """

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.calls: list[tuple[str, str, str]] = []
        self.notifications: list[tuple[str, str, str]] = []
        self.alerts: list[tuple[str, str]] = []

    def on_call(self, provider: str, operation: str, status: str) -> None:
        self.calls.append((provider, operation, status))

    def notification(self, channel: str, event: str, outcome: str) -> None:
        self.notifications.append((channel, event, outcome))

    def alert(self, kind: str, outcome: str) -> None:
        self.alerts.append((kind, outcome))

    def delivered(self, alert: Any, hook: Any, ok: bool) -> None:
        """``Notifier(on_delivery=...)``: one alert sent or failed."""
        self.alert(alert.kind, "sent" if ok else "failed")


# --- destinations ---------------------------------------------------------------------------------

def check_destinations(*, metrics_file: str | os.PathLike[str] | None = None,
                       pushgateway: str | None = None) -> None:
    """Raise :class:`ConfigError` for a metrics file that cannot be written or a Pushgateway URL
    that is not one; call it before the run so a typo costs nothing (exit 2, no effect)."""
    problems = []
    if metrics_file is not None:
        problems += _file_problems(Path(metrics_file))
    if pushgateway is not None:
        problems += _url_problems(pushgateway)
    if problems:
        raise ConfigError("\n".join(problems))


def _file_problems(path: Path) -> list[str]:
    where = f"--metrics-file {path}"
    if str(path).strip() == "":
        return ["--metrics-file: empty path"]
    if path.is_dir():
        return [f"{where}: is a directory; name a file in it (node-exporter reads *.prom)"]
    directory = path.parent
    if not directory.is_dir():
        return [f"{where}: directory {directory} does not exist"]
    if not os.access(directory, os.W_OK | os.X_OK):
        return [f"{where}: directory {directory} is not writable (the file is replaced atomically,"
                " through a temporary file beside it)"]
    if path.exists() and not path.is_file():
        return [f"{where}: not a regular file"]
    return []


def _url_problems(url: str) -> list[str]:
    shown = redact(url)
    example = "e.g. http://pushgateway.monitoring:9091"
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return [f"--pushgateway {shown}: not a URL ({exc}); {example}"]
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return [f"--pushgateway {shown}: not an http(s) URL; {example}"]
    if parts.username is not None or parts.password is not None:
        return [f"--pushgateway: credentials in the URL are not supported (they would be logged); {example}"]
    if parts.query or parts.fragment:
        return [f"--pushgateway {shown}: no query or fragment (the job's path is appended); {example}"]
    if port == 0:
        return [f"--pushgateway {shown}: port 0; {example}"]
    return []


# --- the export -----------------------------------------------------------------------------------

def export_run(report: RunReport, events: Iterable[Event], *, metrics_file: str | os.PathLike[str] | None = None,
               pushgateway: str | None = None, job: str = "rotator", registry_factory: Callable[[], Any] | None = None,
               instance: str | None = None, recorder: Recorder | None = None,
               credentials: Iterable[CredentialAssessment] | None = None, survey: Survey | None = None,
               duration: float | None = None, now: datetime | None = None) -> None:
    """Export one ``rotate`` run's metrics to ``metrics_file`` and/or ``pushgateway``.

    ``report``/``events``: what the run returned and emitted. ``job`` and ``instance`` (default:
    :func:`instance_name`): the Pushgateway grouping key. ``registry_factory``: makes the
    ``prometheus_client.CollectorRegistry`` that is written or pushed, called once per
    destination (default: a fresh one; tests pass their own to look at it). ``recorder``, ``credentials``, ``survey``: more of what
    the daemon exports, when the caller has it (module docstring). ``duration``: seconds the run
    took (default: since ``recorder.started``, else since the process started). ``now``: when
    it ended (default: the wall clock).

    Raises :class:`ConfigError` for a bad destination or a metrics file that cannot be written;
    never for a Pushgateway that is down (a warning is logged).
    """
    if metrics_file is None and pushgateway is None:
        return
    check_destinations(metrics_file=metrics_file, pushgateway=pushgateway)
    if not job:
        raise ConfigError("metrics export: empty job name")
    ended = now or datetime.now(timezone.utc)
    metrics = _fill(report, list(events), recorder=recorder, credentials=credentials, survey=survey,
                    duration=_duration(duration, recorder), ended=ended)
    if metrics_file is not None:
        _write_file(Path(metrics_file), metrics, registry_factory)
    if pushgateway is not None:
        _push(pushgateway.rstrip("/"), job, instance_name(instance), metrics, registry_factory)


def instance_name(instance: str | None = None) -> str:
    """The Pushgateway grouping key's ``instance``: given, else ``$ROTATOR_PUSHGATEWAY_INSTANCE``,
    else the host name."""
    return instance or os.environ.get(INSTANCE_ENV, "").strip() or socket.gethostname() or "rotator"


def _duration(duration: float | None, recorder: Recorder | None) -> float:
    if duration is not None:
        return max(duration, 0.0)
    if recorder is not None:
        return max(time.monotonic() - recorder.started, 0.0)
    return _process_age()


def _process_age() -> float:
    """Seconds since this process started (a one-shot run's whole life); 0 where unknown."""
    from prometheus_client import ProcessCollector

    for family in ProcessCollector(registry=None).collect():
        for sample in family.samples:
            if sample.name == "process_start_time_seconds":
                return max(time.time() - sample.value, 0.0)
    return 0.0


def _fill(report: RunReport, events: list[Event], *, recorder: Recorder | None,
          credentials: Iterable[CredentialAssessment] | None, survey: Survey | None,
          duration: float, ended: datetime) -> Any:
    """The daemon's Metrics, fed with one run: what the daemon's Reconciler would have fed it."""
    from rotator.metrics import Metrics

    metrics = Metrics(process=False)
    for event in events:
        metrics.on_event(event)
    if recorder is not None:
        for call in recorder.calls:
            metrics.on_call(*call)
        for delivery in recorder.notifications:
            metrics.notification(*delivery)
        for kind, outcome in recorder.alerts:
            metrics.alert(kind, outcome)
    outcomes = {o.secret: o for o in report.outcomes}
    for outcome in report.outcomes:
        metrics.outcome(outcome)
    seen_credentials: set[str] = set()
    if survey is not None:
        for view in survey.secrets:
            name, a = view.secret.name, view.assessment
            if a.health in ("unreadable", "error"):
                metrics.unreadable(name, a.health)
                continue
            outcome = outcomes.get(name)
            metrics.observe(name, a, outcome.next_at if outcome is not None and outcome.next_at else a.at)
        for name, issuer in survey.issuers.items():
            metrics.provider(name, "issuer", issuer.listing is not None)
        for c in survey.credentials:
            metrics.credential(c)
            seen_credentials.add(c.issuer)
    for c in credentials or ():
        if c.issuer not in seen_credentials:
            metrics.credential(c)
    ok = report.exit_code == 0 and not (survey is not None and survey.problems)
    metrics.reconciled(ok, ended)
    metrics.run_took(KIND, duration, ended)
    return metrics


# --- previous values, merged ----------------------------------------------------------------------

class _Continued:
    """A collector: the run's families, with counters and histograms continued from ``previous``
    (the last export's samples, by family) and the sticky gauges kept when the run has none.
    ``*_created`` samples are left out: an exported counter's start is the first export, not
    this process's."""

    def __init__(self, metrics: Any, previous: dict[str, tuple[str, str, list[tuple[Sample, float]]]]) -> None:
        self.metrics = metrics
        self.previous = previous

    def collect(self) -> Iterable[Any]:
        from prometheus_client.metrics_core import Metric

        previous = dict(self.previous)
        for family in self.metrics.registry.collect():
            before = previous.pop(family.name, None)
            carried = {key: value for key, value in before[2]} if before and before[0] == family.type else {}
            out = Metric(family.name, family.documentation, family.type)
            if family.type in ("counter", "histogram"):
                for sample in family.samples:
                    if sample.name.endswith("_created"):
                        continue
                    key = _key(sample.name, sample.labels)
                    out.add_sample(sample.name, sample.labels, sample.value + carried.pop(key, 0.0))
                for (name, labels), value in carried.items():        # series this run did not touch
                    out.add_sample(name, dict(labels), value)
            elif family.name in STICKY and carried and not any(sample.value for sample in family.samples):
                for (name, labels), value in carried.items():        # unset (0) this run: keep the last
                    out.add_sample(name, dict(labels), value)
            else:
                for sample in family.samples:
                    out.add_sample(sample.name, sample.labels, sample.value)
            yield out
        for name, (kind, documentation, samples) in previous.items():     # families gone from this run
            if kind in ("counter", "histogram") and name.startswith("rotator_"):
                out = Metric(name, documentation, kind)
                for (sample_name, labels), value in samples:
                    out.add_sample(sample_name, dict(labels), value)
                yield out


def _key(name: str, labels: dict[str, str]) -> Sample:
    return name, tuple(sorted(labels.items()))


def _previous(text: str, *, where: str, group: dict[str, str] | None = None
              ) -> dict[str, tuple[str, str, list[tuple[Sample, float]]]]:
    """rotator's families in an exposition (a textfile, a Pushgateway's page), by family name;
    with ``group``, only the samples of that grouping key (whose labels are then dropped)."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[str, tuple[str, str, list[tuple[Sample, float]]]] = {}
    try:
        for family in text_string_to_metric_families(text):
            if not family.name.startswith("rotator_"):
                continue
            samples = []
            for sample in family.samples:
                labels = dict(sample.labels)
                if group is not None:
                    if any(labels.get(k, "") != v for k, v in group.items()):
                        continue
                    for k in group:
                        labels.pop(k, None)
                if sample.name.endswith("_created"):
                    continue
                samples.append((_key(sample.name, labels), float(sample.value)))
            if samples:
                found[family.name] = (family.type, family.documentation, samples)
    except Exception as exc:  # noqa: BLE001 - a damaged previous export starts the counters afresh
        log.warning("metrics export: cannot read the previous values from %s (%s); counters start from zero",
                    where, redact(str(exc)) or type(exc).__name__)
        return {}
    return found


def _registry(collector: Any, registry_factory: Callable[[], Any] | None) -> Any:
    from prometheus_client import CollectorRegistry

    registry = registry_factory() if registry_factory is not None else CollectorRegistry()
    registry.register(collector)
    return registry


# --- the textfile ---------------------------------------------------------------------------------

def _write_file(path: Path, metrics: Any, registry_factory: Callable[[], Any] | None) -> None:
    from prometheus_client import write_to_textfile

    if path.suffix != ".prom":
        log.warning("--metrics-file %s: node-exporter's textfile collector reads only *.prom files", path)
    previous: dict[str, Any] = {}
    try:
        previous = _previous(path.read_text(encoding="utf-8"), where=str(path))
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("metrics export: cannot read %s (%s); counters start from zero", path, exc)
    registry = _registry(_Continued(metrics, previous), registry_factory)
    try:
        write_to_textfile(str(path), registry)          # a temporary file beside it, then rename(2)
    except OSError as exc:
        raise ConfigError(f"--metrics-file {path}: cannot write: {exc.strerror or exc}") from None
    log.info("metrics of this run written to %s", path)


# --- the Pushgateway ------------------------------------------------------------------------------

def _push(url: str, job: str, instance: str, metrics: Any, registry_factory: Callable[[], Any] | None) -> None:
    from prometheus_client import push_to_gateway

    group = {"job": job, "instance": instance}
    try:
        with urllib.request.urlopen(urllib.request.Request(url + "/metrics", headers={"Accept": "text/plain"}),
                                    timeout=TIMEOUT) as response:
            page = response.read().decode("utf-8", "replace")
    except (OSError, ValueError) as exc:              # URLError, HTTPError, timeouts are OSErrors
        log.warning("metrics export: the Pushgateway at %s is not reachable (%s); this run's metrics are not"
                    " pushed (the run's result is unchanged)", redact(url), _reason(exc))
        return
    previous = _previous(page, where=f"the Pushgateway at {redact(url)}", group=group)
    registry = _registry(_Continued(metrics, previous), registry_factory)
    try:
        push_to_gateway(url, job=job, registry=registry, grouping_key={"instance": instance}, timeout=TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - a push never fails the run
        log.warning("metrics export: the Pushgateway at %s refused this run's metrics (%s); the run's result is"
                    " unchanged", redact(url), _reason(exc))
        return
    log.info("metrics of this run pushed to %s (job %s, instance %s)", redact(url), job, instance)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        return redact(str(exc.reason))
    return redact(str(exc)) or type(exc).__name__
