"""Notifications over real HTTP on loopback: a receiver (ThreadingHTTPServer on 127.0.0.1:0)
records every request and answers from a script, httpx (generic, Slack) or apprise (``json://``)
sends to it. Which channel gets which event, one summary per run (``rotator rotate`` and the
daemon's reconcile), retries with backoff through an injected sleep (no test waits on the wall
clock), giving up without raising and counting it, apprise URLs only as references, gate and
pause alerts, and never a key value or a URL token in a log line."""

from __future__ import annotations

import json
import logging
import socket
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from rotator import config, credentials
from rotator.cli import main
from rotator.engine import Event, Outcome
from rotator.errors import ConfigError
from rotator.metrics import Metrics
from rotator.models import HeldKey, KeyRef, Pause, Secret
from rotator.notify import Alerts, Notifier, webhooks_from_settings
from rotator.planner import Assessment
from tests.world import to_toml

T0 = datetime(2027, 3, 1, 9, 0, tzinfo=timezone.utc)
DAY = timedelta(days=1)
ESCALATE = [timedelta(days=13), timedelta(days=10), timedelta(days=7)]
TOKEN = "hOoKtOkEn-7f3c2a1b9d0e"          # a webhook URL's secret part


class Receiver:
    """A webhook receiver on loopback: records (path, headers, body) and answers each path from a
    script of statuses (then 200)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.script: dict[str, list[tuple[int, dict[str, str]]]] = {}
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver._lock:
                    receiver.requests.append((self.path, dict(self.headers), body))
                    queue = receiver.script.get(self.path.split("?")[0], [])
                    status, headers = queue.pop(0) if queue else (200, {})
                self.send_response(status)
                for name, value in {"content-length": "0", **headers}.items():
                    self.send_header(name, value)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def answer(self, path: str, *statuses: int, headers: dict[str, str] | None = None) -> None:
        self.script[path] = [(status, headers or {}) for status in statuses]

    def hits(self, path: str) -> int:
        return sum(1 for p, _, _ in self.requests if p.split("?")[0] == path)

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return [json.loads(body) for p, _, body in self.requests if p.split("?")[0] == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


class Waits(list):
    """An injected sleep: remembers each wait instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def channels(*entries: dict[str, Any], environ: dict[str, str] | None = None, **alerts: Any):
    """``[alerts]`` as a user writes it, validated and resolved."""
    settings = config.load(data={"alerts": {"webhooks": list(entries), **alerts}}).alerts
    return settings, webhooks_from_settings(
        settings, lambda ref, where: credentials.resolve(ref, where, environ=environ or {}))


def notifier_for(*entries: dict[str, Any], waits: Waits | None = None, metrics: Any = None,
                 environ: dict[str, str] | None = None, **alerts: Any) -> Notifier:
    settings, hooks = channels(*entries, environ=environ, **alerts)
    return Notifier(hooks, timeout=settings.timeout.total_seconds(), retries=settings.retries,
                    backoff=settings.backoff.total_seconds(), sleep=waits if waits is not None else Waits(),
                    metrics=metrics)


def failed(secret: str, at: datetime = T0, detail: str = "quiva: issuer unavailable (503)") -> Event:
    return Event(at=at, secret=secret, action="failed", detail=detail, rotation_id=f"r-{secret}", result="error",
                 runner="host:1:abcd")


def promoted(secret: str, rotation: str = "7f3c2a1b9d", at: datetime = T0) -> Event:
    return Event(at=at, secret=secret, action="promoted", detail="…beef (id 43) is current", rotation_id=rotation,
                 key="…beef (id 43)", runner="host:1:abcd")


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


# --- which channel gets what ---------------------------------------------------------------------

def test_notification_rotated_is_sent_only_to_the_channel_that_subscribes(world, receiver):
    world.add_secret("web")
    world.seed("web", age=timedelta(days=85))
    report = world.rotate()
    assert [o.status for o in report.outcomes] == ["changed"]
    notifier = notifier_for({"url": f"{receiver.url}/pager"},                                   # default events
                            {"url": f"{receiver.url}/changes", "format": "slack", "events": ["rotated"]})
    Alerts(notifier.send).on_run(world.events, report.outcomes, world.clock.now())
    notifier.close()

    assert receiver.hits("/pager") == 0                  # a successful rotation does not page
    (message,) = receiver.bodies("/changes")
    assert message["text"].startswith(":white_check_mark: rotator INFO rotated: web: rotated: new key …")
    promoted_event = next(e for e in world.events if e.action == "promoted")
    assert promoted_event.key in message["text"] and promoted_event.rotation_id[:8] in json.dumps(message)


def test_notification_channel_events_filter_routes_each_event(receiver):
    notifier = notifier_for({"url": f"{receiver.url}/failures", "events": ["failed"]},
                            {"url": f"{receiver.url}/changes", "events": ["rotated", "drift"], "name": "changes"},
                            {"url": f"{receiver.url}/default"})
    alerts = Alerts(notifier, escalate_at=ESCALATE)
    alerts.on_run([failed("batch"), promoted("web")], [Outcome("batch", status="failed"),
                                                       Outcome("web", status="changed")], T0)
    alerts.on_drift("web", "app:web.json", "different", "holds …beef, primary holds …c0de", T0)
    notifier.close()

    def seen(path):
        return sorted((b["event"], b["kind"], b["secret"]) for b in receiver.bodies(path))

    assert seen("/failures") == [("failed", "failure", "batch")]
    assert seen("/changes") == [("drift", "drift", "web"), ("rotated", "rotated", "web")]
    assert seen("/default") == [("drift", "drift", "web"), ("failed", "failure", "batch")]


# --- one summary per run -------------------------------------------------------------------------

@pytest.fixture
def rotate_cli(world, clock, tmp_path, monkeypatch, emulator):
    """``rotator rotate`` in this process, on the real clock, with a config file."""
    clock.set(datetime.now(timezone.utc))
    monkeypatch.setenv("QUIVA_API_KEY", emulator.add_user("ops@example.com", role="admin"))
    path = tmp_path / "rotator.toml"

    def rotate(alerts_toml: str) -> int:
        path.write_text(to_toml(world.config_data()) + alerts_toml)
        return main(["--log-level", "warning", "--config", str(path), "rotate"])

    return rotate


def test_notification_summary_channel_gets_one_message_per_rotate_run(world, rotate_cli, receiver, capsys):
    world.add_secret("web")
    world.add_secret("api")
    world.add_secret("broken")
    world.seed("web", age=timedelta(days=85))
    world.seed("api", age=timedelta(days=85))
    (world.root / "store" / "broken.json").write_text("{not json")
    code = rotate_cli(f'''
[alerts]
webhooks = [
  {{ url = "{receiver.url}/digest", format = "slack", summary = true, events = ["rotated", "failed"] }},
  {{ url = "{receiver.url}/digest-json", summary = true, events = ["rotated", "failed"] }},
  {{ url = "{receiver.url}/each" }},
]
''')
    capsys.readouterr()
    assert code == 1                                        # broken failed

    (digest,) = receiver.bodies("/digest")                  # one message for the run, everything in it
    assert digest["text"].startswith(":warning: rotator: 3 notification(s) from this run (1 warning, 2 info)")
    listed = "\n".join(block["text"]["text"] for block in digest["blocks"][1:])
    assert "failure: broken: run failed" in listed
    assert "rotated: web: rotated" in listed and "rotated: api: rotated" in listed
    assert listed.index("failure") < listed.index("rotated")              # the most severe first
    (summary,) = receiver.bodies("/digest-json")
    assert summary["kind"] == "summary" and summary["count"] == 3 and summary["severity"] == "warning"
    assert sorted((a["event"], a["secret"]) for a in summary["alerts"]) == [
        ("failed", "broken"), ("rotated", "api"), ("rotated", "web")]
    assert [(b["event"], b["secret"]) for b in receiver.bodies("/each")] == [("failed", "broken")]


def test_notification_summary_channel_gets_one_message_per_daemon_reconcile(world, receiver):
    from rotator.daemon import Reconciler

    world.add_secret("web")
    world.add_secret("broken")
    world.seed("web", age=timedelta(days=85))
    (world.root / "store").mkdir(parents=True, exist_ok=True)
    (world.root / "store" / "broken.json").write_text("{not json")
    notifier = notifier_for({"url": f"{receiver.url}/digest", "summary": True, "events": ["rotated", "failed"]},
                            {"url": f"{receiver.url}/each", "events": ["rotated", "failed"]})
    alerts = Alerts(notifier.send, escalate_at=ESCALATE)
    reconciler = Reconciler(world.runtime(), alerts=alerts)
    with alerts.batch():                                    # the wiring the daemon's jobs get (docs/notifications.md)
        reconciler.reconcile()
        assert receiver.hits("/digest") == 0               # nothing before the run ends
    (digest,) = receiver.bodies("/digest")
    assert sorted((a["event"], a["secret"]) for a in digest["alerts"]) == [("failed", "broken"), ("rotated", "web")]
    assert sorted((b["event"], b["secret"]) for b in receiver.bodies("/each")) == [
        ("failed", "broken"), ("rotated", "web")]

    with alerts.batch():                                    # the next run: broken's failure is still open
        reconciler.reconcile()
    assert receiver.hits("/digest") == 1                    # no alert, no message
    notifier.close()


# --- retries -------------------------------------------------------------------------------------

def test_notification_retries_with_backoff_until_the_receiver_recovers(receiver):
    receiver.answer("/hook", 503, 503)
    waits, metrics = Waits(), Metrics(process=False)
    notifier = notifier_for({"url": f"{receiver.url}/hook", "name": "oncall"}, waits=waits, metrics=metrics)
    assert notifier.send(_failure_alert("web")) is True
    assert receiver.hits("/hook") == 3 and waits == [1.0, 2.0]          # 1 s, then 2 s
    assert receiver.bodies("/hook")[0] == receiver.bodies("/hook")[2]    # the same message each time
    assert sample(metrics, "rotator_notifications_total", channel="oncall", event="failed", outcome="sent") == 1
    assert sample(metrics, "rotator_notifications_total", channel="oncall", event="failed", outcome="failed") == 0
    notifier.close()


def _failure_alert(secret: str):
    sent: list = []
    Alerts(sent.append).on_events([failed(secret)])
    return sent[0]


def test_notification_gives_up_after_all_tries_counts_the_failure_and_never_raises(receiver, caplog):
    receiver.answer("/hook", *[500] * 10)
    waits, metrics = Waits(), Metrics(process=False)
    settings, hooks = channels({"url": f"{receiver.url}/hook"}, retries=4, backoff="2s")
    notifier = Notifier(hooks, retries=settings.retries, backoff=settings.backoff.total_seconds(), sleep=waits,
                        metrics=metrics, on_delivery=lambda alert, hook, ok: metrics.alert(
                            alert.kind, "sent" if ok else "failed"))
    alerts = Alerts(notifier.send)
    with caplog.at_level(logging.INFO, logger="rotator.notify"):
        alerts.on_run([failed("web")], [Outcome("web", status="failed")], T0)     # returns: never raises
    assert receiver.hits("/hook") == 4 and waits == [2.0, 4.0, 8.0]
    assert sample(metrics, "rotator_notifications_total", channel="webhook-1", event="failed", outcome="failed") == 1
    assert sample(metrics, "rotator_alerts_total", kind="failure", outcome="failed") == 1
    assert "not delivered to webhook #1 (generic): HTTP 500 (gave up after 4 tries)" in caplog.text
    assert alerts.open_alerts() == [("web", "failure", "")]        # still open: de-duplication is unaffected
    notifier.close()


def test_notification_connection_refused_and_timeouts_are_retried():
    with socket.socket() as probe:                            # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    waits = Waits()
    notifier = notifier_for({"url": f"http://127.0.0.1:{port}/hook"}, waits=waits)
    assert notifier.send(_failure_alert("web")) is False
    assert waits == [1.0, 2.0]                                # three tries
    notifier.close()


def test_notification_client_errors_are_not_retried_but_429_is(receiver):
    receiver.answer("/bad", 400)
    receiver.answer("/gone", 404)
    receiver.answer("/busy", 429, headers={"retry-after": "7"})
    waits = Waits()
    notifier = notifier_for({"url": f"{receiver.url}/bad"}, {"url": f"{receiver.url}/gone"}, waits=waits)
    assert notifier.send(_failure_alert("web")) is False
    assert receiver.hits("/bad") == 1 and receiver.hits("/gone") == 1 and waits == []
    busy = notifier_for({"url": f"{receiver.url}/busy"}, waits=waits)
    assert busy.send(_failure_alert("web")) is True
    assert receiver.hits("/busy") == 2 and waits == [7.0]     # its Retry-After, longer than the backoff
    notifier.close()
    busy.close()


def test_notification_a_dead_channel_is_tried_once_per_alert_for_the_rest_of_the_run(receiver):
    receiver.answer("/dead", *[503] * 20)
    waits = Waits()
    notifier = notifier_for({"url": f"{receiver.url}/dead"}, {"url": f"{receiver.url}/alive"}, waits=waits)
    alerts = Alerts(notifier)
    with alerts.batch():
        alerts.on_events([failed("a"), failed("b"), failed("c")])
    assert receiver.hits("/dead") == 3 + 1 + 1 and waits == [1.0, 2.0]   # a run is not held 3 x 3 tries
    assert receiver.hits("/alive") == 3
    with alerts.batch():                                     # the next run tries it fully again
        alerts.on_events([failed("d")])
    assert receiver.hits("/dead") == 8
    notifier.close()


# --- apprise -------------------------------------------------------------------------------------

def test_notification_apprise_channel_delivers_through_an_env_reference(receiver):
    url = f"json://127.0.0.1:{receiver.port}/apprise/{TOKEN}"
    receiver.answer(f"/apprise/{TOKEN}", 503)                   # apprise's failures are retried too
    waits, metrics = Waits(), Metrics(process=False)
    notifier = notifier_for({"url": {"env": "APPRISE_URL"}, "format": "apprise", "events": ["rotated", "failed"],
                             "name": "chat"}, environ={"APPRISE_URL": url}, waits=waits, metrics=metrics)
    alerts = Alerts(notifier)
    alerts.on_events([promoted("web"), failed("batch")])
    notifier.close()

    bodies = receiver.bodies(f"/apprise/{TOKEN}")
    assert len(bodies) == 3 and waits == [1.0]                 # 503 then 200, then the failure at once
    rotated, failure = bodies[1], bodies[2]
    assert rotated["type"] == "success" and rotated["title"] == "rotator INFO rotated: web"
    assert "web: rotated: new key …beef (id 43) is current" in rotated["message"]
    assert failure["type"] == "warning" and "batch: run failed: quiva: issuer unavailable" in failure["message"]
    assert sample(metrics, "rotator_notifications_total", channel="chat", event="rotated", outcome="sent") == 1


def test_notification_apprise_url_given_literally_is_a_config_error_naming_the_field(receiver, caplog):
    with pytest.raises(ConfigError, match=r"alerts\.webhooks\[1\]\.url: an apprise URL embeds its service's tokens"):
        config.load(data={"alerts": {"webhooks": [
            {"url": f"{receiver.url}/generic"},
            {"url": f"json://127.0.0.1:{receiver.port}/apprise/{TOKEN}", "format": "apprise"}]}})
    with pytest.raises(ConfigError, match=r"alerts\.webhooks\[0\]\.url: apprise does not accept this URL"
                                          r" \(scheme 'bogus'"):
        channels({"url": {"env": "APPRISE_URL"}, "format": "apprise"}, environ={"APPRISE_URL": f"bogus://{TOKEN}"})
    assert "Unparseable URL" in caplog.text and TOKEN not in caplog.text      # apprise's own error line, masked


# --- gate waiting, paused ------------------------------------------------------------------------

def held(expires_on: datetime, *consumers: str) -> HeldKey:
    old = KeyRef(fingerprint="9e1f0c6d2b7a4e13", last4="c0de", key_id="42", expires_on=expires_on)
    reason = f"waiting for consumer {', '.join(consumers)}" if consumers else "still served by secret batch"
    return HeldKey(old, reason, T0 - DAY, rotation_id="7f3c2a1b9d", consumers=consumers)


def assessment(health: str, expires_on: datetime | None, *, held_keys: tuple[HeldKey, ...] = ()) -> Assessment:
    return Assessment(health=health, action="nothing to do", at=None, phase="idle", key="…beef (id 43)",
                      expires_on=expires_on, held=held_keys)


def test_notification_gate_waiting_is_raised_escalated_near_the_old_keys_expiry_and_closed(receiver):
    notifier = notifier_for({"url": f"{receiver.url}/hook"})
    alerts = Alerts(notifier, escalate_at=ESCALATE, repeat_after=timedelta(0))
    old_expires = T0 + 20 * DAY
    new_expires = T0 + 110 * DAY
    waiting = (held(old_expires, "deploy-web", "cache-flush"),)
    for day in (0, 1, 12, 13, 14, 21):                      # the old key expires on day 20
        alerts.on_assessment("web", assessment("held", new_expires, held_keys=waiting), T0 + day * DAY)
    alerts.on_assessment("web", assessment("held", new_expires, held_keys=(held(old_expires),)), T0 + 22 * DAY)
    assert alerts.open_alerts() == []                        # the consumers confirmed: closed
    again = (held(T0 + 60 * DAY, "deploy-web"),)              # the next rotation's old key waits: pages again
    alerts.on_assessment("web", assessment("held", new_expires, held_keys=again), T0 + 23 * DAY)
    notifier.close()

    bodies = receiver.bodies("/hook")
    assert [(b["event"], b["step"], b["severity"]) for b in bodies] == [
        ("gate_waiting", "waiting", "warning"), ("gate_waiting", "7d", "critical"),
        ("gate_waiting", "expired", "critical"), ("gate_waiting", "waiting", "warning")]
    first = bodies[0]
    assert first["consumers"] == ["cache-flush", "deploy-web"] and first["key"] == "…c0de (id 42)"
    assert "waits for consumer(s) cache-flush, deploy-web to confirm the new key" in first["summary"]
    assert "(7d left)" in bodies[1]["summary"] and "EXPIRED" in bodies[2]["summary"]
    assert first["expires_on"] == "2027-03-21T09:00:00Z"     # the old key's expiry, not the new one's


def test_notification_paused_secret_notifies_at_7_3_and_1_days_then_closes_when_resumed(receiver):
    notifier = notifier_for({"url": f"{receiver.url}/hook"})
    alerts = Alerts(notifier, escalate_at=[timedelta(days=7)], repeat_after=timedelta(0))
    expires = T0 + 10 * DAY
    pause = Pause(by="alice", at=T0, reason="change freeze")
    paused = Assessment(health="paused", action="nothing until resumed", at=None, phase="idle",
                              key="…c0de (id 42)", expires_on=expires, paused=pause)
    for left in (9, 7, 6, 3, 2.5, 1, 0.5, 0, -1):
        alerts.on_assessment("web", paused, expires - timedelta(days=left))
    bodies = receiver.bodies("/hook")
    assert [(b["event"], b["step"], b["severity"]) for b in bodies] == [
        ("paused", "7d", "warning"), ("paused", "3d", "warning"), ("paused", "1d", "critical"),
        ("paused", "expired", "critical")]
    assert "rotation is paused and key …c0de (id 42) expires" in bodies[0]["summary"]
    assert "paused by alice" in bodies[0]["detail"] and "change freeze" in bodies[0]["detail"]
    assert not any(b["event"] == "expiring" for b in bodies)   # the pause is the story, not the escalation

    alerts.on_assessment("web", Assessment(health="expired", action="rotate now", at=None, phase="idle",
                                                 key="…c0de (id 42)", expires_on=expires), expires + DAY)
    assert ("web", "paused", "expired") not in alerts.open_alerts()         # resumed: closed
    assert receiver.bodies("/hook")[-1]["event"] == "expiring"              # and the key's own escalation
    notifier.close()


# --- nothing leaks -------------------------------------------------------------------------------

def test_notification_logs_carry_no_key_value_and_no_url_token(receiver, caplog):
    value = Secret("ms-9f8e7d6c5b4a39281706f5e4d3c2b1a0")
    receiver.answer(f"/generic/{TOKEN}", *[502] * 5)
    receiver.answer(f"/apprise/{TOKEN}", *[503] * 5)
    notifier = notifier_for(
        {"url": f"{receiver.url}/generic/{TOKEN}"},
        {"url": {"env": "APPRISE_URL"}, "format": "apprise"},
        {"url": f"http://127.0.0.1:9/{TOKEN}"},                              # refused
        environ={"APPRISE_URL": f"json://127.0.0.1:{receiver.port}/apprise/{TOKEN}"})
    alerts = Alerts(notifier)
    with caplog.at_level(logging.DEBUG):                     # no redacting filter on caplog: nothing to mask
        alerts.on_events([failed("web", detail=f"issuer said: bad key {value.reveal()}")])
        notifier.close()
    assert receiver.hits(f"/generic/{TOKEN}") == 3 and receiver.hits(f"/apprise/{TOKEN}") == 3
    text = "\n".join(f"{r.name}: {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert "not delivered to webhook #1 (generic)" in text and "not delivered to webhook #2 (apprise)" in text
    assert "not delivered to webhook #3 (generic)" in text
    assert TOKEN not in text and value.reveal() not in text and "/generic/" not in text
    sent = b"".join(body for _, _, body in receiver.requests).decode()
    assert value.reveal() not in sent and "[REDACTED]" in sent


def test_notification_a_paused_secret_pages_from_the_daemons_reconcile_as_its_key_nears_expiry(world, receiver):
    from rotator import pausing
    from rotator.daemon import Reconciler

    world.add_secret("web")
    world.seed("web", age=timedelta(days=30))
    world.rotate()                                                     # adopted
    expires = world.record("web").current.expires_on
    runtime = world.runtime(identity="ops-laptop")
    (secret,) = runtime.select(["web"])
    pausing.pause(secret, by="ops-laptop", now=world.clock.now(), reason="change freeze")
    notifier = notifier_for({"url": f"{receiver.url}/hook"})
    alerts = Alerts(notifier, escalate_at=[timedelta(days=7)], repeat_after=timedelta(0))
    reconciler = Reconciler(world.runtime(), alerts=alerts)
    for left in (8, 6, 2.5, 0.5):
        world.clock.set(expires - timedelta(days=left))
        with alerts.batch():
            reconciler.reconcile()
    bodies = receiver.bodies("/hook")
    assert [(b["event"], b["step"], b["severity"]) for b in bodies] == [
        ("paused", "7d", "warning"), ("paused", "3d", "warning"), ("paused", "1d", "critical")]
    assert "paused by ops-laptop" in bodies[0]["detail"] and "change freeze" in bodies[0]["detail"]
    assert world.record("web").current.expires_on == expires          # paused: not rotated

    pausing.resume(secret)
    with alerts.batch():
        reconciler.reconcile()                                         # resumed: it rotates, the alert closes
    assert not any(kind == "paused" for _, kind, _ in alerts.open_alerts())
    notifier.close()
