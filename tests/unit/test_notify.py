"""Alerts: what pages and how often (de-duplication, reminders, escalation lead times), the two
body formats, and delivery over ``httpx.MockTransport`` — failures logged, never raised, and
never a webhook URL or a key value in a log line or a body."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from rotator import config
from rotator.engine import Event, Outcome
from rotator.errors import ConfigError
from rotator.models import Secret
from rotator.notify import Alert, Alerts, Notifier, Webhook, encode, webhooks_from_settings
from rotator.planner import Assessment, CredentialAssessment
from rotator.redact import RedactingFilter

T0 = datetime(2027, 3, 1, 9, 0, tzinfo=timezone.utc)
DAY = timedelta(days=1)
ESCALATE = [timedelta(days=13), timedelta(days=10), timedelta(days=7)]
SLACK_URL = "https://hooks.slack.example/services/T000/B000/sEcReTtOkEn0123"


def alerts_with(sent: list[Alert], **options) -> Alerts:
    options.setdefault("escalate_at", ESCALATE)
    return Alerts(sent.append, **options)


def failed(secret: str, at: datetime, rotation: str, detail: str = "quiva: issuer unavailable (503)") -> Event:
    return Event(at=at, secret=secret, action="failed", detail=detail, rotation_id=rotation, result="error",
                 runner="host:1:abcd")


def assessment(health: str, expires_on: datetime | None, phase: str = "idle") -> Assessment:
    return Assessment(health=health, action="rotate now", at=None, phase=phase, key="…c0de (id 42)",
                      expires_on=expires_on, last_error="quiva: 503" if health == "failing" else None)


# --- de-duplication -----------------------------------------------------------------------------

def test_a_failing_secret_pages_once_not_every_tick_then_reminds_then_clears():
    sent: list[Alert] = []
    alerts = alerts_with(sent, repeat_after=timedelta(hours=24))
    for tick in range(12):                          # every retry claims anew: a new rotation id each time
        now = T0 + tick * timedelta(minutes=30)
        alerts.on_events([failed("web", now, rotation=f"r{tick}")])
        alerts.on_outcomes([Outcome("web", status="failed")])
    assert [(a.kind, a.secret, a.repeat) for a in sent] == [("failure", "web", 0)]

    alerts.on_events([failed("web", T0 + timedelta(hours=24, minutes=1), rotation="r99")])
    assert [(a.kind, a.repeat) for a in sent] == [("failure", 0), ("failure", 1)]       # the daily reminder

    alerts.on_outcomes([Outcome("web", status="changed")])                            # it recovered
    assert alerts.open_alerts() == []
    alerts.on_events([failed("web", T0 + 2 * DAY, rotation="r100")])
    assert len(sent) == 3 and sent[-1].repeat == 0                                    # a new streak pages again


def test_waiting_for_another_runner_is_not_a_recovery():
    sent: list[Alert] = []
    alerts = alerts_with(sent, repeat_after=timedelta(0))                  # 0: never remind
    alerts.on_events([failed("web", T0, "r1")])
    alerts.on_outcomes([Outcome("web", status="waiting")])
    alerts.on_events([failed("web", T0 + 30 * DAY, "r2")])
    assert len(sent) == 1


def test_each_secret_and_kind_has_its_own_alert():
    sent: list[Alert] = []
    alerts = alerts_with(sent)
    alerts.on_events([
        failed("web", T0, "r1"), failed("batch", T0, "r2"),
        Event(T0, "web", "rollback", "the issuer refused the new key", rotation_id="r1", result="error"),
        Event(T0, "web", "rolled-back", "old key …c0de kept", rotation_id="r1", result="error"),
        Event(T0, "web", "verify-failed", "…beef at quiva", result="error"),
    ])
    assert sorted((a.secret, a.kind) for a in sent) == [("batch", "failure"), ("web", "failure"), ("web", "rollback")]


def test_incident_events_page_once_per_action():
    sent: list[Alert] = []
    alerts = alerts_with(sent)
    events = [Event(T0, "web", "compromised", "key …c0de reported compromised", result="alert"),
              Event(T0, "web", "revoked-compromised", "key …c0de revoked", result="alert")]
    alerts.on_events(events)
    alerts.on_events(events)
    assert [(a.kind, a.step, a.severity) for a in sent] == [
        ("incident", "compromised", "critical"), ("incident", "revoked-compromised", "critical")]


def test_intents_are_audit_only_and_never_page():
    sent: list[Alert] = []
    alerts = alerts_with(sent)
    alerts.on_events([Event(T0, "web", "rollback", "restoring the old key", result="intent"),
                      Event(T0, "web", "revoke", "…c0de", result="intent"),
                      Event(T0, "web", "promote", "…beef", result="intent"),
                      Event(T0, "web", "revoke-held", "old key …c0de: still served by secret batch", key="…c0de",
                            result="held")])
    assert [(a.kind, a.event, a.severity) for a in sent] == [("revoke_held", "revoke_held", "info")]   # not the intents


def test_a_failed_run_pages_with_its_first_error_not_the_cleanups():
    sent: list[Alert] = []
    alerts = alerts_with(sent)
    outcome = Outcome("web")
    outcome.fail("store: stage failed: Is a directory")
    outcome.fail("store: write_record failed")                      # the cleanup failed too: not the story
    events = [Event(T0, "web", "issue", "a key named 'web [r-1]'", result="intent"),
              failed("web", T0, "r1", detail="store: write_record failed"),
              Event(T0, "web", "rollback", "refused", rotation_id="r1", result="error")]
    alerts.on_run(events, [outcome, Outcome("batch", status="changed")], T0)
    assert [(a.kind, a.secret) for a in sent] == [("rollback", "web"), ("failure", "web")]
    failure = sent[-1]
    assert failure.summary == "web: run failed: store: stage failed: Is a directory"
    assert failure.rotation_id == "r1" and failure.runner == "host:1:abcd"
    alerts.on_run([], [Outcome("web", status="changed")], T0 + DAY)           # a clean run closes both
    assert alerts.open_alerts() == []


def test_a_failed_outcome_without_a_failed_event_still_pages():
    sent: list[Alert] = []
    outcome = Outcome("web")
    outcome.fail("quiva: 503")
    alerts_with(sent).on_run([], [outcome], T0)
    assert [(a.kind, a.summary, a.at) for a in sent] == [("failure", "web: run failed: quiva: 503", T0)]


def test_a_key_the_issuer_no_longer_lists_pages_once_until_it_is_listed_again():
    sent: list[Alert] = []
    alerts = alerts_with(sent, repeat_after=timedelta(0))
    rejected = replace(assessment("rejected", T0 + 60 * DAY), reason="the issuer no longer lists the current key …c0de")
    alerts.on_assessment("web", rejected, T0)
    alerts.on_assessment("web", rejected, T0 + DAY)
    assert [(a.kind, a.severity) for a in sent] == [("rejected", "critical")]
    assert "no longer lists" in sent[0].summary
    alerts.on_assessment("web", assessment("healthy", T0 + 90 * DAY), T0 + 2 * DAY)
    assert alerts.open_alerts() == []


# --- escalation ---------------------------------------------------------------------------------

def test_escalation_at_each_lead_time_once_then_expiry_then_cleared_by_the_rotation():
    sent: list[Alert] = []
    alerts = alerts_with(sent, repeat_after=timedelta(0))
    expires = T0 + 20 * DAY
    timeline = [  # (days left, health) for a key that is due and keeps failing to rotate
        (14, "due"), (13.5, "failing"), (13, "failing"), (12, "failing"), (10.5, "rotating"), (10, "failing"),
        (8, "failing"), (7, "failing"), (3, "failing"), (0, "expired"), (-2, "expired"),
    ]
    for left, health in timeline:
        now = expires - timedelta(days=left)
        alerts.on_assessment("web", assessment(health, expires), now)
    assert [(a.step, a.severity) for a in sent] == [
        ("13d", "warning"), ("10d", "warning"), ("7d", "critical"), ("expired", "critical")]
    assert "still not rotated" in sent[0].summary and sent[0].expires_on == expires

    alerts.on_assessment("web", assessment("grace", expires + 90 * DAY, "grace"), expires + DAY)
    assert alerts.open_alerts() == []


def test_a_daemon_started_late_sends_only_the_most_urgent_step():
    sent: list[Alert] = []
    alerts = alerts_with(sent)
    expires = T0 + 5 * DAY
    alerts.on_assessment("web", assessment("failing", expires), T0)
    alerts.on_assessment("web", assessment("failing", expires), T0 + timedelta(hours=1))
    assert [a.step for a in sent] == ["7d"]


@pytest.mark.parametrize("health", ["expiring", "stale-claim"])
def test_an_expiring_key_or_a_dead_runners_claim_escalates_like_a_due_key(health):
    sent: list[Alert] = []
    alerts_with(sent).on_assessment("web", assessment(health, T0 + 6 * DAY), T0)
    assert [(a.kind, a.step) for a in sent] == [("escalation", "7d")]


@pytest.mark.parametrize("health", ["healthy", "grace", "unmanaged", "held"])
def test_no_escalation_for_a_key_that_is_not_due(health):
    sent: list[Alert] = []
    alerts = alerts_with(sent)
    # a 7d lead time: 12 days before expiry the key is healthy and must not page at "13d"
    alerts.on_assessment("web", assessment(health, T0 + 12 * DAY), T0)
    assert sent == []


def credential(health: str, expires_on: datetime | None, managed_as: str | None = None) -> CredentialAssessment:
    return CredentialAssessment(issuer="quiva", health=health, reason="not managed: replace it by hand",
                                last4="c0de", key_id="42", expires_on=expires_on, managed_as=managed_as)


def test_an_unmanaged_admin_key_warns_from_the_lead_time_and_escalates_like_a_secret():
    sent: list[Alert] = []
    alerts = alerts_with(sent, repeat_after=timedelta(0))
    expires = T0 + 20 * DAY
    for left, health in [(16, "healthy"), (14, "expiring"), (13.5, "expiring"), (13, "expiring"), (10, "expiring"),
                         (8, "expiring"), (7, "expiring"), (1, "expiring"), (0, "expired"), (-1, "expired")]:
        alerts.on_credential(credential(health, expires), expires - timedelta(days=left), lead_time=14 * DAY)
    assert [(a.kind, a.step, a.severity) for a in sent] == [
        ("credential", "14d", "warning"), ("credential", "13d", "warning"), ("credential", "10d", "warning"),
        ("credential", "7d", "critical"), ("credential", "expired", "critical")]
    first = sent[0]
    assert first.secret == "quiva (admin key)" and first.issuer == "quiva" and first.key == "…c0de (id 42)"
    assert "rotator cannot rotate it" in first.summary and first.expires_on == expires
    assert "EXPIRED" in sent[-1].summary
    alerts.on_credential(credential("healthy", expires + 90 * DAY), expires, lead_time=14 * DAY)   # replaced by hand
    assert alerts.open_alerts() == []


def test_a_managed_admin_key_is_left_to_its_secrets_alerts():
    sent: list[Alert] = []
    alerts_with(sent).on_credential(credential("managed", T0 + 2 * DAY, managed_as="rotator-admin"), T0,
                                    lead_time=14 * DAY)
    assert sent == []


# --- drift --------------------------------------------------------------------------------------

def test_drift_pages_once_per_target_and_again_after_it_was_repaired():
    sent: list[Alert] = []
    alerts = alerts_with(sent)
    for tick in range(5):                                    # hourly reconciles, all within repeat_after
        now = T0 + tick * timedelta(hours=1)
        alerts.on_drift("web", "app:web.json", "different", "holds …beef, primary holds …c0de", now)
        alerts.on_drift("web", "aws:prod/web", "ok", "", now)
    assert [(a.kind, a.step) for a in sent] == [("drift", "app:web.json")]
    alerts.on_drift("web", "app:web.json", "ok", "", T0 + 6 * DAY)
    alerts.on_drift("web", "app:web.json", "missing", "no key", T0 + 7 * DAY)
    assert len(sent) == 2
    alerts.on_drift("web", "vault:kv/web", "unreachable", "vault sealed", T0 + 7 * DAY)   # not drift
    assert len(sent) == 2


# --- bodies and delivery ------------------------------------------------------------------------

def sample_alert(detail: str = "quiva: 503") -> Alert:
    return Alert("failure", "prod-web", "warning", "prod-web: run failed: quiva: 503", T0, detail=detail,
                 rotation_id="7f3c2a1b9d", key="…c0de (id 42)", runner="host:1:abcd")


def test_generic_and_slack_bodies():
    generic = json.loads(encode(sample_alert(), "generic"))
    assert generic["source"] == "rotator" and generic["kind"] == "failure" and generic["secret"] == "prod-web"
    assert generic["at"] == "2027-03-01T09:00:00Z" and generic["rotation_id"] == "7f3c2a1b9d"
    assert generic["key"] == "…c0de (id 42)" and generic["repeat"] == 0
    slack = json.loads(encode(sample_alert(), "slack"))
    assert slack["text"].startswith(":warning: rotator WARNING failure: prod-web: run failed")
    assert slack["blocks"][0]["type"] == "section" and slack["blocks"][-1]["type"] == "context"
    assert "rotation `7f3c2a1b`" in slack["blocks"][-1]["elements"][0]["text"]


def test_bodies_never_carry_a_value_even_if_a_detail_did():
    value = Secret("ms-a1b2c3d4e5f60718293a4b5c6d7e8f90")
    for fmt in ("generic", "slack"):
        body = encode(sample_alert(detail=f"server said: bad key {value.reveal()}"), fmt).decode()
        assert value.reveal() not in body and "[REDACTED]" in body


class Sink:
    def __init__(self, status: int = 200, fail: Exception | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.status, self.fail = status, fail

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.fail is not None:
            raise self.fail
        return httpx.Response(self.status)


def test_notifier_posts_each_format_to_its_webhook():
    sink = Sink()
    hooks = [Webhook(Secret("https://alerts.example/hook"), "generic", 1), Webhook(Secret(SLACK_URL), "slack", 2)]
    deliveries = []
    notifier = Notifier(hooks, transport=httpx.MockTransport(sink),
                        on_delivery=lambda alert, hook, ok: deliveries.append((hook.format, ok)))
    assert notifier.send(sample_alert()) is True
    assert [str(r.url) for r in sink.requests] == ["https://alerts.example/hook", SLACK_URL]
    assert all(r.headers["content-type"] == "application/json" for r in sink.requests)
    assert "kind" in json.loads(sink.requests[0].content) and "text" in json.loads(sink.requests[1].content)
    assert deliveries == [("generic", True), ("slack", True)]
    notifier.close()


@pytest.mark.parametrize("sink", [Sink(status=500), Sink(fail=httpx.ConnectError(f"cannot reach {SLACK_URL}")),
                                  Sink(fail=httpx.ReadTimeout("timed out"))], ids=["500", "refused", "timeout"])
def test_delivery_failures_are_logged_without_the_url_and_never_raised(sink, caplog):
    caplog.handler.addFilter(RedactingFilter())
    hook = Webhook(Secret(SLACK_URL), "slack", 1)
    notifier = Notifier([hook], transport=httpx.MockTransport(sink), sleep=lambda seconds: None)
    with caplog.at_level(logging.INFO, logger="rotator.notify"):
        assert notifier.send(sample_alert()) is False
    assert "not delivered to webhook #1 (slack)" in caplog.text
    assert SLACK_URL not in caplog.text and "sEcReTtOkEn" not in caplog.text
    notifier.close()


def test_alerts_survive_a_send_that_raises(caplog):
    def broken(alert):
        raise RuntimeError("boom")

    alerts = Alerts(broken, escalate_at=ESCALATE)
    with caplog.at_level(logging.ERROR, logger="rotator.notify"):
        alerts.on_events([failed("web", T0, "r1")])
    assert "could not be sent" in caplog.text


# --- settings -----------------------------------------------------------------------------------

def test_webhook_urls_resolve_from_references_and_are_masked(monkeypatch):
    from rotator import credentials
    from rotator.redact import redact

    settings = config.load(data={"alerts": {"webhooks": [
        {"url": "https://alerts.example/generic-hook-0001"},
        {"url": {"env": "SLACK_WEBHOOK_URL"}, "format": "slack"},
    ]}})
    assert [str(t) for t in settings.alerts.escalate_at] == ["13 days, 0:00:00", "10 days, 0:00:00", "7 days, 0:00:00"]
    hooks = webhooks_from_settings(settings.alerts, lambda ref, where: credentials.resolve(
        ref, where, environ={"SLACK_WEBHOOK_URL": SLACK_URL}))
    assert [(h.format, h.index) for h in hooks] == [("generic", 1), ("slack", 2)]
    assert hooks[1].url.reveal() == SLACK_URL
    assert SLACK_URL not in redact(f"posting to {SLACK_URL}") and "webhook #2 (slack)" == hooks[1].describe()
    with pytest.raises(ConfigError, match="SLACK_WEBHOOK_URL is not set"):
        webhooks_from_settings(settings.alerts, lambda ref, where: credentials.resolve(ref, where, environ={}))


@pytest.mark.parametrize("alerts, expected", [
    ({"webhooks": [{"url": "ftp://x"}]}, "alerts.webhooks[0].url: expected http(s)://"),
    ({"webhooks": [{"url": {"env": "A", "file": "/b"}}]}, "exactly one of env, file or backend"),
    ({"webhooks": [{"url": "https://x", "format": "teams"}]}, "alerts.webhooks[0].format"),
    ({"escalate_at": ["7d", "0s"]}, "escalate_at: every lead time must be positive"),
    ({"repeat": "1h"}, "alerts.repeat: unknown field"),
])
def test_bad_alert_settings_name_the_field(alerts, expected):
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        config.load(data={"alerts": alerts})


# --- notifications (issue 15): events, summaries, retries, gates, pauses, apprise ------------------

def test_notification_event_names_match_the_config_and_the_alert_kinds():
    from typing import get_args

    from rotator.notify import DEFAULT_EVENTS, EVENTS

    annotation = config.WebhookSpec.model_fields["events"].annotation          # list[Literal[...]] | None
    (listed,) = [get_args(get_args(arg)[0]) for arg in get_args(annotation) if arg is not type(None)]
    assert listed == EVENTS
    assert DEFAULT_EVENTS == set(EVENTS) - {"rotated", "revoke_held"}
    kinds = {"failure": "failed", "escalation": "expiring", "rollback": "rollback", "drift": "drift",
             "rejected": "rejected", "credential": "credential", "incident": "incident", "rotated": "rotated",
             "revoke_held": "revoke_held", "gate_waiting": "gate_waiting", "paused": "paused"}
    assert {kind: replace(sample_alert(), kind=kind).event for kind in kinds} == kinds
    assert set(kinds.values()) == set(EVENTS)


def test_notification_channels_default_to_every_problem_and_keep_their_own_events():
    from rotator.notify import DEFAULT_EVENTS

    settings = config.load(data={"alerts": {"webhooks": [
        {"url": "https://alerts.example/generic-hook-0001"},
        {"url": "https://alerts.example/changes-0002", "events": ["rotated", "revoke_held"], "summary": True,
         "name": "changes"},
    ]}})
    assert settings.alerts.retries == 3 and settings.alerts.backoff == timedelta(seconds=1)
    first, second = webhooks_from_settings(settings.alerts, lambda ref, where: None)
    assert first.events == DEFAULT_EVENTS and not first.summary and first.channel == "webhook-1"
    assert second.events == {"rotated", "revoke_held"} and second.summary and second.channel == "changes"
    assert second.describe() == "webhook #2 'changes' (generic)"
    rotated = replace(sample_alert(), kind="rotated")
    assert not first.wants(rotated) and second.wants(rotated) and first.wants(sample_alert())


@pytest.mark.parametrize("alerts, expected", [
    ({"webhooks": [{"url": "https://x", "events": ["rotate"]}]}, "alerts.webhooks[0].events[0]: Input should be"),
    ({"webhooks": [{"url": "https://x", "events": []}]}, "alerts.webhooks[0].events: an empty list"),
    ({"webhooks": [{"url": "https://x", "events": ["failed", "failed"]}]}, "alerts.webhooks[0].events: listed twice"),
    ({"webhooks": [{"url": "https://x", "name": "on call"}]}, "alerts.webhooks[0].name"),
    ({"webhooks": [{"url": "json://h/x", "format": "apprise"}]}, "alerts.webhooks[0].url: an apprise URL embeds"),
    ({"retries": 0}, "alerts.retries"),
    ({"backoff": "0s"}, "alerts: backoff must be positive"),
])
def test_notification_bad_channel_settings_name_the_field(alerts, expected):
    import re

    with pytest.raises(ConfigError, match=re.escape(expected)):
        config.load(data={"alerts": alerts})


def test_notification_apprise_not_installed_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "apprise", None)          # import apprise -> ImportError
    settings = config.load(data={"alerts": {"webhooks": [
        {"url": "https://alerts.example/generic-hook-0001"}, {"url": {"env": "CHAT"}, "format": "apprise"}]}})
    with pytest.raises(ConfigError, match=r"alerts\.webhooks\[1\]\.format: apprise is not installed: pip install"
                                          r" 'rotator\[apprise\]'"):
        webhooks_from_settings(settings.alerts, lambda ref, where: Secret("json://chat.example/hook-0123456789"))


def promoted(secret: str, rotation: str, at: datetime = T0) -> Event:
    return Event(at, secret, "promoted", "…beef (id 43) is current", rotation_id=rotation, key="…beef (id 43)")


def test_notification_rotated_once_per_rotation_and_never_from_an_intent():
    sent: list[Alert] = []
    alerts = alerts_with(sent)
    alerts.on_events([Event(T0, "web", "promote", "…beef", rotation_id="r1", result="intent"),
                      promoted("web", "r1"), promoted("web", "r1")])          # the same promotion seen twice
    alerts.on_events([promoted("web", "r2", T0 + 90 * DAY)])
    assert [(a.kind, a.event, a.severity, a.step) for a in sent] == [
        ("rotated", "rotated", "info", "r1"), ("rotated", "rotated", "info", "r2")]
    assert sent[0].summary == "web: rotated: new key …beef (id 43) is current"
    assert alerts.open_alerts() == [("web", "rotated", "r2")]                 # one per secret: memory stays bounded


def held_key(label_id: str, *consumers: str, expires_on: datetime | None = None):
    from rotator.models import HeldKey, KeyRef

    return HeldKey(KeyRef("fp" + label_id, "c0de", key_id=label_id, expires_on=expires_on), "held", T0,
                   rotation_id="r1", consumers=consumers)


def test_notification_revoke_held_closes_once_the_key_is_no_longer_held():
    sent: list[Alert] = []
    alerts = alerts_with(sent, repeat_after=timedelta(0))
    event = Event(T0, "web", "revoke-held", "old key …c0de (id 42): still served by secret batch",
                  key="…c0de (id 42)", result="held")
    alerts.on_events([event])
    alerts.on_assessment("web", replace(assessment("held", T0 + 90 * DAY), held=(held_key("42"),)), T0)
    alerts.on_events([event])                                                 # still held: no second message
    assert [(a.kind, a.step) for a in sent] == [("revoke_held", "…c0de (id 42)")]
    alerts.on_assessment("web", assessment("healthy", T0 + 90 * DAY), T0 + DAY)   # revoked at last
    assert alerts.open_alerts() == []


def test_notification_gate_waiting_without_expiry_or_lead_times_stays_a_warning():
    sent: list[Alert] = []
    alerts = Alerts(sent.append, repeat_after=timedelta(0))                   # no escalate_at
    waiting = replace(assessment("held", T0 + 90 * DAY), held=(held_key("42", "deploy-web"), held_key("41")))
    alerts.on_assessment("web", waiting, T0)
    alerts.on_assessment("web", waiting, T0 + 30 * DAY)
    assert [(a.kind, a.step, a.severity, a.consumers) for a in sent] == [
        ("gate_waiting", "waiting", "warning", ("deploy-web",))]
    alerts.on_assessment("web", replace(waiting, health="error", held=()), T0 + 31 * DAY)   # says nothing
    assert ("web", "gate_waiting", "waiting") in alerts.open_alerts()


def test_notification_paused_uses_escalate_at_too_and_holds_back_the_escalation():
    from rotator.models import Pause

    sent: list[Alert] = []
    alerts = alerts_with(sent, repeat_after=timedelta(0))                     # 13d, 10d, 7d (+ 3d, 1d)
    expires = T0 + 20 * DAY
    pause = Pause(by="alice", at=T0, until=T0 + 60 * DAY)
    for left in (14, 13, 10, 7, 3, 1):
        alerts.on_assessment("web", Assessment(health="paused", action="-", at=None, phase="idle", key="…c0de",
                                               expires_on=expires, paused=pause), expires - left * DAY)
    assert [(a.step, a.severity) for a in sent] == [
        ("13d", "warning"), ("10d", "warning"), ("7d", "warning"), ("3d", "warning"), ("1d", "critical")]
    assert all(a.kind == "paused" for a in sent) and "until 2027-04-30T09:00:00Z" in sent[0].detail
    lapsed = Pause(by="alice", at=T0, until=T0 + DAY)                        # a pause that lapsed is no pause
    alerts.on_assessment("web", Assessment(health="failing", action="-", at=None, phase="idle", key="…c0de",
                                           expires_on=expires, paused=lapsed), expires - 0.5 * DAY)
    assert sent[-1].kind == "escalation" and not any(k[1] == "paused" for k in alerts.open_alerts())


def test_notification_summary_bodies_list_every_alert_most_severe_first():
    from rotator.notify import encode_summary, text_summary

    alerts = [replace(sample_alert(), kind="rotated", severity="info", summary="web: rotated"),
              sample_alert(), replace(sample_alert(), kind="escalation", severity="critical", summary="api: 7d")]
    generic = json.loads(encode_summary(alerts, "generic"))
    assert generic["kind"] == "summary" and generic["count"] == 3 and generic["severity"] == "critical"
    assert [a["event"] for a in generic["alerts"]] == ["expiring", "failed", "rotated"]
    assert generic["summary"] == "rotator: 3 notification(s) from this run (1 critical, 1 warning, 1 info)"
    slack = json.loads(encode_summary(alerts, "slack"))
    assert slack["text"].startswith(":rotating_light: rotator: 3 notification(s)")
    assert slack["blocks"][1]["text"]["text"].splitlines()[2].startswith(":white_check_mark: rotator INFO rotated")
    title, body = text_summary(alerts)
    assert title.startswith("rotator: 3 notification(s)") and body.count("\n- ") == 2


def test_notification_summary_waits_for_the_outermost_run_and_plain_channels_do_not():
    sink = Sink()
    hooks = [Webhook(Secret("https://alerts.example/digest-0001"), "generic", 1, summary=True),
             Webhook(Secret("https://alerts.example/each-0002"), "generic", 2)]
    notifier = Notifier(hooks, transport=httpx.MockTransport(sink), sleep=lambda s: None)
    alerts = Alerts(notifier.send, escalate_at=ESCALATE)
    with alerts.batch():
        alerts.on_run([failed("web", T0, "r1")], [Outcome("web", status="failed")], T0)   # on_run batches inside
        alerts.on_assessment("api", assessment("failing", T0 + 5 * DAY), T0)
        assert [str(r.url) for r in sink.requests] == ["https://alerts.example/each-0002"] * 2
    digest = [json.loads(r.content) for r in sink.requests if "digest" in str(r.url)]
    assert len(digest) == 1 and [a["kind"] for a in digest[0]["alerts"]] == ["escalation", "failure"]
    with alerts.batch():
        pass                                                                  # an empty run sends nothing
    assert len(sink.requests) == 3
    alerts.on_events([failed("batch", T0, "r2")])                            # outside a run: at once
    assert len(sink.requests) == 5 and json.loads(sink.requests[3].content)["count"] == 1
    notifier.close()


def test_notification_retry_backoff_doubles_and_a_metrics_observer_failure_is_contained(caplog):
    answers = iter([httpx.Response(503), httpx.ReadTimeout("slow"), httpx.Response(502), httpx.Response(200)])

    def transport(request):
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    class BrokenMetrics:
        def notification(self, *labels):
            raise RuntimeError("registry closed")

    waits: list[float] = []
    hook = Webhook(Secret(SLACK_URL), "slack", 1)
    notifier = Notifier([hook], transport=httpx.MockTransport(transport), retries=4, backoff=0.5,
                        sleep=waits.append, metrics=BrokenMetrics())
    with caplog.at_level(logging.INFO, logger="rotator.notify"):
        assert notifier.send(sample_alert()) is True
    assert waits == [0.5, 1.0, 2.0]
    assert "try 2 of 4: ReadTimeout" in caplog.text and "observer failed" in caplog.text
    assert "sEcReTtOkEn" not in caplog.text
    notifier.close()


def test_notification_from_settings_builds_nothing_without_channels_and_passes_retries():
    assert Notifier.from_settings(config.load(data={}).alerts, lambda ref, where: None) is None
    settings = config.load(data={"alerts": {"webhooks": [{"url": "https://alerts.example/generic-hook-0001"}],
                                            "retries": 5, "backoff": "3s", "timeout": "2s"}}).alerts
    notifier = Notifier.from_settings(settings, lambda ref, where: None, sleep=lambda s: None)
    assert (notifier.retries, notifier.backoff, notifier.timeout) == (5, 3.0, 2.0)
    alerts = Alerts(notifier.send)
    assert alerts._notifier is notifier                       # batches reach the notifier behind a bound send
