"""Metrics from the CronJob (issue 16, Operations): ``rotator.metrics_export.export_run`` turns a
one-shot run into the daemon's metric families — same names, labels and label values — written
for node-exporter's textfile collector or pushed to a Pushgateway.

Real rotations against the emulator and file backends, then the export: to a file, parsed back
with prometheus_client's parser; and to a small loopback HTTP server that behaves like the
Pushgateway (it stores each pushed group and serves them all on ``GET /metrics`` with the group's
labels), so counters continuing across runs are checked as Prometheus would see them. A
Pushgateway that is down or refuses is a warning, never an exception; bad destinations are
configuration errors.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from rotator import config, survey
from rotator.engine import Engine
from rotator.errors import ConfigError
from rotator.metrics_export import Recorder, check_destinations, export_run
from rotator.report import RunReport
from rotator.runtime import Runtime

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402


# --- helpers --------------------------------------------------------------------------------------

def run(world, recorder: Recorder) -> tuple[RunReport, list, survey.Survey]:
    """One ``rotate`` as the CLI runs it (all secrets), the calls counted, then a survey."""
    runtime = Runtime(config.load(data=world.config_data()), clock=world.clock, sleep=world.clock.sleep,
                      on_call=recorder.on_call)
    events: list = []
    try:
        report = Engine(runtime, on_event=events.append).run()
        found = survey.survey(runtime, None, world.clock.now())
    finally:
        runtime.close()
    return report, events, found


def parse(text: str) -> tuple[dict[str, str], dict[tuple[str, frozenset], float]]:
    """(family name -> type, (sample name, labels) -> value)."""
    types, values = {}, {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            values[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return types, values


def value(values: dict, name: str, **labels: str) -> float | None:
    return values.get((name, frozenset(labels.items())))


def daemon_families() -> dict[str, tuple[str, set[str]]]:
    """What the daemon exports: family name -> (type, label names)."""
    from rotator.metrics import Metrics

    metrics = Metrics(process=False)
    found = {}
    for collector in vars(metrics).values():
        if hasattr(collector, "_labelnames"):             # prometheus_client's metrics (not the registry)
            for family in collector.collect():
                found[family.name] = (family.type, set(collector._labelnames))
    for family in metrics.registry.collect():           # the build info
        found.setdefault(family.name, (family.type, {k for s in family.samples for k in s.labels}))
    return found


def assert_same_families_as_the_daemon(text: str) -> None:
    daemon = daemon_families()
    for family in text_string_to_metric_families(text):
        assert family.name in daemon, f"{family.name}: the daemon exports no such family"
        kind, labels = daemon[family.name]
        assert family.type == kind, f"{family.name}: {family.type} here, {kind} in the daemon"
        for sample in family.samples:
            assert set(sample.labels) - {"le"} <= labels, f"{sample.name}: labels {sorted(sample.labels)}"
        assert not family.name.endswith("_created")


@pytest.fixture
def due_web(world):
    world.add_secret("web")
    world.seed("web", age=timedelta(days=80))
    return world


# --- the textfile ---------------------------------------------------------------------------------

def test_a_rotation_exported_to_a_textfile_has_the_daemons_families_and_values(due_web, emulator, clock, tmp_path):
    world = due_web
    emulator.faults.throttle_next(1)                       # the issuer's first answer is a 429
    recorder = Recorder()
    report, events, found = run(world, recorder)
    assert report.exit_code == 0
    prom = tmp_path / "textfile" / "rotator.prom"
    prom.parent.mkdir()

    export_run(report, events, metrics_file=str(prom), recorder=recorder, survey=found,
               credentials=found.credentials, duration=1.5, now=clock.now())

    text = prom.read_text()
    assert_same_families_as_the_daemon(text)
    types, values = parse(text)
    now = clock.now().timestamp()
    assert value(values, "rotator_rotations_total", secret="web", result="completed") == 1
    assert value(values, "rotator_events_total", action="promoted", result="ok") == 1
    assert value(values, "rotator_events_total", action="issued", result="ok") == 1
    assert not [k for k in values if k[0] == "rotator_events_total" and ("result", "intent") in k[1]]
    assert value(values, "rotator_reconciles_total", result="ok") == 1
    assert value(values, "rotator_last_successful_reconcile_timestamp_seconds") == now
    assert value(values, "rotator_last_run_timestamp_seconds", kind="rotate") == now
    assert value(values, "rotator_run_duration_seconds_count", kind="rotate") == 1
    assert value(values, "rotator_run_duration_seconds_sum", kind="rotate") == 1.5
    assert value(values, "rotator_run_duration_seconds_bucket", kind="rotate", le="5.0") == 1
    assert value(values, "rotator_run_duration_seconds_bucket", kind="rotate", le="1.0") == 0
    # per secret, from the survey after the run: the new key's expiry, grace, its phase
    (web,) = [v.assessment for v in found.secrets if v.secret.name == "web"]
    assert value(values, "rotator_key_expiry_timestamp_seconds", secret="web") == web.expires_on.timestamp()
    assert web.expires_on.timestamp() - now > 80 * 86400, "the new key's expiry, three months ahead"
    assert value(values, "rotator_secret_health", secret="web", health="grace") == 1
    assert value(values, "rotator_secret_health", secret="web", health="failing") == 0
    assert value(values, "rotator_secret_phase", secret="web", phase="grace") == 1
    assert value(values, "rotator_next_action_timestamp_seconds", secret="web") is not None
    assert value(values, "rotator_provider_up", provider="quiva", kind="issuer") == 1
    assert value(values, "rotator_issuer_credential_expiry_timestamp_seconds", issuer="quiva") > now
    # the issuer's 429 and its calls, as the daemon counts them
    throttled = [(dict(k[1]), v) for k, v in values.items()
                 if k[0] == "rotator_provider_calls_total" and ("status", "429") in k[1]]
    assert [(labels["provider"], v) for labels, v in throttled] == [("quiva", 1)]
    assert sum(v for k, v in values.items() if k[0] == "rotator_provider_calls_total") >= 4
    assert types["rotator_rotations"] == "counter" and types["rotator_run_duration_seconds"] == "histogram"
    assert not [p for p in prom.parent.iterdir() if p != prom], "written atomically: no temporary file left"


def test_counters_continue_across_runs_and_a_failed_run_keeps_the_last_success(due_web, emulator, clock, tmp_path):
    """Each CronJob run is a new process: the file's counters are continued, so increase() works."""
    world = due_web
    prom = tmp_path / "rotator.prom"

    report, events, found = run(world, recorder := Recorder())            # 1: web rotates
    export_run(report, events, metrics_file=prom, recorder=recorder, survey=found, duration=2, now=clock.now())
    first_success = clock.now().timestamp()

    clock.advance(timedelta(hours=1))                                      # 2: nothing due
    report, events, found = run(world, recorder := Recorder())
    assert report.exit_code == 0
    export_run(report, events, metrics_file=prom, recorder=recorder, survey=found, duration=1, now=clock.now())
    _, values = parse(prom.read_text())
    assert value(values, "rotator_rotations_total", secret="web", result="completed") == 1, "not counted twice"
    assert value(values, "rotator_reconciles_total", result="ok") == 2
    assert value(values, "rotator_run_duration_seconds_count", kind="rotate") == 2
    assert value(values, "rotator_run_duration_seconds_sum", kind="rotate") == 3
    second_success = clock.now().timestamp()
    assert value(values, "rotator_last_successful_reconcile_timestamp_seconds") == second_success > first_success

    clock.advance(timedelta(hours=1))                                      # 3: a new secret fails to rotate
    world.add_secret("batch")
    world.seed("batch", age=timedelta(days=80))
    emulator.faults.fail_next(100, status=400, path="/accounts/api-key")
    report, events, found = run(world, recorder := Recorder())
    emulator.faults.clear()
    assert report.exit_code == 1
    export_run(report, events, metrics_file=prom, recorder=recorder, survey=found, duration=1, now=clock.now())
    text = prom.read_text()
    assert_same_families_as_the_daemon(text)
    _, values = parse(text)
    assert value(values, "rotator_rotations_total", secret="batch", result="failed") == 1
    assert value(values, "rotator_rotations_total", secret="web", result="completed") == 1, "carried over"
    assert value(values, "rotator_reconciles_total", result="ok") == 2
    assert value(values, "rotator_reconciles_total", result="failed") == 1
    assert value(values, "rotator_last_successful_reconcile_timestamp_seconds") == second_success, \
        "a failed run keeps the last success"
    assert value(values, "rotator_last_run_timestamp_seconds", kind="rotate") == clock.now().timestamp()
    assert value(values, "rotator_secret_health", secret="batch", health="failing") == 1
    assert value(values, "rotator_run_duration_seconds_count", kind="rotate") == 3


def test_a_run_without_a_survey_still_exports_phases_and_counters(due_web, clock, tmp_path):
    """What ``rotate`` has at no extra cost: the events and each secret's outcome."""
    report, events, _ = run(due_web, Recorder())
    prom = tmp_path / "rotator.prom"
    export_run(report, events, metrics_file=prom)
    _, values = parse(prom.read_text())
    assert value(values, "rotator_rotations_total", secret="web", result="completed") == 1
    assert value(values, "rotator_secret_phase", secret="web", phase="grace") == 1
    assert value(values, "rotator_run_duration_seconds_count", kind="rotate") == 1
    assert value(values, "rotator_key_expiry_timestamp_seconds", secret="web") is None, "unknown without a survey"


def test_a_damaged_previous_file_starts_afresh_with_a_warning(due_web, tmp_path, caplog):
    prom = tmp_path / "rotator.prom"
    prom.write_text("this is { not the text format\n")
    report, events, _ = run(due_web, Recorder())
    with caplog.at_level(logging.WARNING, logger="rotator.metrics_export"):
        export_run(report, events, metrics_file=prom)
    _, values = parse(prom.read_text())
    assert value(values, "rotator_rotations_total", secret="web", result="completed") == 1
    assert "counters start from zero" in caplog.text


# --- the Pushgateway ------------------------------------------------------------------------------

class FakePushgateway:
    """Enough of the Pushgateway: PUT/POST /metrics/job/<job>[/<label>/<value>...] stores the body
    as that group (PUT replaces it); GET /metrics serves every group with its grouping labels."""

    def __init__(self, *, refuse_push: bool = False) -> None:
        self.requests: list[tuple[str, str, str, bytes]] = []       # (method, path, content-type, body)
        self.groups: dict[tuple[tuple[str, str], ...], bytes] = {}
        self.refuse_push = refuse_push
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def _store(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                gateway.requests.append((self.command, self.path, self.headers.get("content-type", ""), body))
                if gateway.refuse_push:
                    self._answer(400, b"pushed metrics are invalid or inconsistent\n")
                    return
                parts = self.path.split("/")[2:]                        # ['job', <job>, 'instance', <i>]
                gateway.groups[tuple(zip(parts[::2], parts[1::2]))] = body
                self._answer(200, b"")

            do_PUT = do_POST = _store  # noqa: N815

            def do_GET(self) -> None:  # noqa: N802
                gateway.requests.append(("GET", self.path, "", b""))
                self._answer(200, gateway.page().encode())

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def page(self) -> str:
        lines = ["# TYPE pushgateway_build_info gauge", 'pushgateway_build_info{version="1.9.0"} 1']
        for group, body in self.groups.items():
            labels = dict(group)
            for family in text_string_to_metric_families(body.decode()):
                name = family.name + ("_total" if family.type == "counter" else "")
                lines.append(f"# TYPE {name} {family.type}")
                for sample in family.samples:
                    merged = {**sample.labels, **labels}
                    inner = ",".join(f'{k}="{v}"' for k, v in sorted(merged.items()))
                    lines.append(f"{sample.name}{{{inner}}} {sample.value}")
            lines.append(f'push_time_seconds{{{",".join(f"{k}={chr(34)}{v}{chr(34)}" for k, v in group)}}} 1.7e9')
        return "\n".join(lines) + "\n"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def pushgateway():
    gateway = FakePushgateway()
    yield gateway
    gateway.close()


def test_a_run_is_pushed_to_its_group_and_counters_continue_from_the_gateway(due_web, clock, pushgateway):
    world = due_web
    # another runner's group, with a much larger count: never mixed into ours
    pushgateway.groups[(("job", "rotator"), ("instance", "elsewhere"))] = (
        b'# TYPE rotator_rotations_total counter\nrotator_rotations_total{secret="web",result="completed"} 7\n')

    report, events, found = run(world, recorder := Recorder())
    export_run(report, events, pushgateway=pushgateway.url, instance="rotator-cronjob", recorder=recorder,
               survey=found, duration=2, now=clock.now())
    method, path, content_type, body = pushgateway.requests[-1]
    assert method == "PUT" and path == "/metrics/job/rotator/instance/rotator-cronjob"
    assert content_type.startswith("text/plain")
    assert_same_families_as_the_daemon(body.decode())
    _, values = parse(body.decode())
    assert value(values, "rotator_rotations_total", secret="web", result="completed") == 1
    assert value(values, "rotator_secret_health", secret="web", health="grace") == 1
    assert pushgateway.requests[0][:2] == ("GET", "/metrics"), "the previous values are read first"

    clock.advance(timedelta(hours=1))
    report, events, found = run(world, recorder := Recorder())
    export_run(report, events, pushgateway=pushgateway.url + "/", instance="rotator-cronjob", recorder=recorder,
               survey=found, duration=1, now=clock.now())
    _, values = parse(pushgateway.requests[-1][3].decode())
    assert value(values, "rotator_rotations_total", secret="web", result="completed") == 1, "continued, not 7 + 1"
    assert value(values, "rotator_reconciles_total", result="ok") == 2
    assert value(values, "rotator_run_duration_seconds_count", kind="rotate") == 2
    assert value(values, "rotator_run_duration_seconds_sum", kind="rotate") == 3
    assert set(pushgateway.groups) == {(("job", "rotator"), ("instance", "elsewhere")),
                                       (("job", "rotator"), ("instance", "rotator-cronjob"))}


def test_the_job_and_the_default_instance_make_the_grouping_key(due_web, pushgateway, monkeypatch):
    import socket

    report, events, _ = run(due_web, Recorder())
    monkeypatch.delenv("ROTATOR_PUSHGATEWAY_INSTANCE", raising=False)
    export_run(report, events, pushgateway=pushgateway.url, job="rotator-cron")
    method, path, _, _ = pushgateway.requests[-1]
    assert method == "PUT" and path == f"/metrics/job/rotator-cron/instance/{socket.gethostname()}"
    # a CronJob's pods each have a new host name: the manifest names the group instead
    monkeypatch.setenv("ROTATOR_PUSHGATEWAY_INSTANCE", "rotator")
    export_run(report, events, pushgateway=pushgateway.url)
    assert pushgateway.requests[-1][:2] == ("PUT", "/metrics/job/rotator/instance/rotator")


def test_a_pushgateway_that_is_down_or_refuses_is_a_warning_only(due_web, tmp_path, caplog):
    report, events, _ = run(due_web, Recorder())
    with socket_closed() as url, caplog.at_level(logging.WARNING, logger="rotator.metrics_export"):
        export_run(report, events, pushgateway=url)                  # must not raise
    assert "is not reachable" in caplog.text and "result is unchanged" in caplog.text

    caplog.clear()
    refusing = FakePushgateway(refuse_push=True)
    try:
        prom = tmp_path / "rotator.prom"
        with caplog.at_level(logging.WARNING, logger="rotator.metrics_export"):
            export_run(report, events, pushgateway=refusing.url, metrics_file=prom)
    finally:
        refusing.close()
    assert "refused this run's metrics (HTTP 400" in caplog.text
    assert prom.exists(), "the file is written whatever the Pushgateway says"


class socket_closed:
    """A loopback URL nothing listens on."""

    def __enter__(self) -> str:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: Any) -> None:
        pass


# --- bad destinations, and nothing asked ----------------------------------------------------------

@pytest.mark.parametrize("url, message", [
    ("pushgateway.monitoring:9091", r"not an http\(s\) URL"),
    ("ftp://pushgateway:9091", r"not an http\(s\) URL"),
    ("http://", r"not an http\(s\) URL"),
    ("http://user:secret@pushgateway:9091", "credentials in the URL are not supported"),
    ("http://pushgateway:9091/?x=1", "no query or fragment"),
    ("http://pushgateway:99999", "not a URL"),
])
def test_a_bad_pushgateway_url_is_a_configuration_error(url, message):
    with pytest.raises(ConfigError, match=message) as raised:
        export_run(RunReport([]), [], pushgateway=url)
    assert "secret" not in str(raised.value)


def test_a_bad_metrics_file_is_a_configuration_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        check_destinations(metrics_file=tmp_path / "missing" / "rotator.prom")
    with pytest.raises(ConfigError, match="is a directory"):
        check_destinations(metrics_file=tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="does not exist"):
        export_run(RunReport([]), [], metrics_file=blocker / "rotator.prom")
    check_destinations(metrics_file=tmp_path / "rotator.prom", pushgateway="https://pushgateway.example:9091/base")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only directories")
def test_an_unwritable_metrics_directory_is_a_configuration_error(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(ConfigError, match="not writable"):
        check_destinations(metrics_file=locked / "rotator.prom")


def test_nothing_asked_nothing_loaded():
    """Without a destination the one-shot run never imports prometheus_client."""
    code = ("import sys\nfrom rotator.metrics_export import export_run\nfrom rotator.report import RunReport\n"
            "export_run(RunReport([]), [])\nassert 'prometheus_client' not in sys.modules, 'loaded'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr


# --- from the command line ------------------------------------------------------------------------

def rotator_command(world, tmp_path: Path, *args: str, env: dict[str, str] | None = None
                    ) -> subprocess.CompletedProcess[str]:
    """The installed ``rotator`` entry point, as a CronJob runs it, on the real clock."""
    from tests.world import to_toml

    config_file = tmp_path / "rotator.toml"
    config_file.write_text(to_toml(world.config_data()))
    entry = Path(sys.executable).parent / "rotator"
    return subprocess.run([str(entry), "--config", str(config_file), "--log-format", "text", *args],
                          capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})


@pytest.fixture
def due_now(world, clock):
    from datetime import datetime, timezone

    clock.set(datetime.now(timezone.utc))                 # the subprocess runs on the real clock
    world.add_secret("web")
    world.seed("web", age=timedelta(days=80))
    return world


def test_rotate_exports_its_run_to_a_file_and_a_pushgateway(due_now, tmp_path, pushgateway):
    prom = tmp_path / "rotator.prom"
    result = rotator_command(due_now, tmp_path, "rotate", "--metrics-file", str(prom),
                             "--pushgateway", pushgateway.url, env={"ROTATOR_PUSHGATEWAY_INSTANCE": "cron"})
    assert result.returncode == 0, result.stderr[-3000:]
    _, values = parse(prom.read_text())
    assert value(values, "rotator_rotations_total", secret="web", result="completed") == 1
    assert value(values, "rotator_reconciles_total", result="ok") == 1
    assert value(values, "rotator_issuer_credential_expiry_timestamp_seconds", issuer="quiva") is not None
    assert value(values, "rotator_run_duration_seconds_count", kind="rotate") == 1
    record = due_now.record("web")                 # per secret, as the daemon: assessed after the run
    assert value(values, "rotator_key_expiry_timestamp_seconds", secret="web") == record.current.expires_on.timestamp()
    assert value(values, "rotator_secret_health", secret="web", health="grace") == 1
    calls = {labels for name, labels in values if name == "rotator_provider_calls_total"}
    assert any(("provider", "quiva") in labels for labels in calls), "the run's issuer calls are counted"
    method, path, _, body = pushgateway.requests[-1]
    assert (method, path) == ("PUT", "/metrics/job/rotator/instance/cron")
    assert value(parse(body.decode())[1], "rotator_rotations_total", secret="web", result="completed") == 1


def test_rotate_with_a_bad_destination_stops_before_any_effect(due_now, tmp_path):
    result = rotator_command(due_now, tmp_path, "rotate", "--pushgateway", "pushgateway:9091")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "--pushgateway" in result.stderr and "Traceback" not in result.stderr
    assert due_now.record("web") is None, "nothing adopted or rotated"
    result = rotator_command(due_now, tmp_path, "rotate", "--metrics-file", str(tmp_path / "no" / "such.prom"))
    assert result.returncode == 2 and "does not exist" in result.stderr, result.stderr[-3000:]
    assert due_now.record("web") is None


def test_rotate_with_a_pushgateway_down_still_exits_with_the_runs_status(due_now, tmp_path):
    with socket_closed() as url:
        result = rotator_command(due_now, tmp_path, "rotate", "--pushgateway", url)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "is not reachable" in result.stderr
    assert due_now.record("web").rotations == 1


def test_registry_factory_gets_one_registry_per_destination(due_web, tmp_path, pushgateway):
    from prometheus_client import CollectorRegistry, generate_latest

    made: list[CollectorRegistry] = []

    def factory() -> CollectorRegistry:
        made.append(CollectorRegistry())
        return made[-1]

    report, events, _ = run(due_web, Recorder())
    export_run(report, events, metrics_file=tmp_path / "rotator.prom", pushgateway=pushgateway.url,
               registry_factory=factory)
    assert len(made) == 2
    assert generate_latest(made[0]) == (tmp_path / "rotator.prom").read_bytes()
    assert generate_latest(made[1]) == pushgateway.requests[-1][3]
