"""Alerts: what deserves a page (:class:`Alerts`) and how it is delivered (:class:`Notifier`).

Kinds: ``failure`` (a run failed for a secret: its first error), ``rollback`` (a new key was
refused and rolled back), ``drift`` (a secondary does not hold the primary's key),
``escalation`` (a due key is still not rotated at a configured lead time before expiry, or has
expired), ``rejected`` (the issuer no longer lists a secret's current key), ``credential`` (an
issuer's own admin key that rotator does not manage is within the lead time of its expiry, at
each escalation lead time, or expired) and ``incident`` (events the incident procedure marks as
alerts). *Intent* events (written before an effect, for the audit trail) never alert.

De-duplication: an alert is *open* under the key (secret, kind, step) — step is the escalation
lead time ("13d", ..., "expired"), the drifted target, or the incident action; failures and
rollbacks have one key per secret, because every retry of a failing secret starts a new
rotation id and would otherwise page again. An open alert is not sent again until
``repeat_after`` has passed (0: never); it closes when the condition clears (the secret runs
cleanly, is rotated, or the target is back in sync), and the next occurrence pages again.
The state lives in memory: a restarted daemon re-sends each open alert once.

Delivery: one POST per webhook with a short timeout, generic JSON or a Slack-compatible body.
A delivery failure is logged (never the URL: it may embed a token) and counted, never raised.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable, Sequence

from rotator.engine import Event, Outcome
from rotator.models import Secret
from rotator.planner import Assessment, CredentialAssessment
from rotator.redact import redact
from rotator.timeutil import format_duration, format_instant

log = logging.getLogger("rotator.notify")

#: Health states in which the current key is due and not yet replaced.
UNROTATED = ("due", "rotating", "failing", "expired", "blocked", "expiring", "stale-claim", "rejected")
#: Health states in which the current key has been replaced (escalations close).
ROTATED = ("healthy", "grace", "held")
#: Drift states (from rotator.drift) that raise a drift alert.
DRIFTED = ("missing", "different", "stale-previous", "corrupt")
ROLLBACK_ACTIONS = ("rollback", "rolled-back")


@dataclass(frozen=True)
class Alert:
    kind: str                       # failure | rollback | drift | escalation | rejected | credential | incident
    secret: str                     # the secret; for a credential alert, "<issuer> (admin key)"
    severity: str                   # warning | critical
    summary: str
    at: datetime
    detail: str = ""
    step: str = ""
    rotation_id: str | None = None
    key: str | None = None          # last 4 characters and id, never the value
    expires_on: datetime | None = None
    runner: str | None = None
    repeat: int = 0                 # 0 the first time; n for the n-th reminder
    issuer: str | None = None       # credential alerts: the issuer whose admin key it is


# --- bodies -------------------------------------------------------------------------------------

def generic_body(alert: Alert) -> dict[str, Any]:
    body = asdict(alert)
    body.update(source="rotator", version=1, at=format_instant(alert.at),
                expires_on=format_instant(alert.expires_on))
    return body


def slack_body(alert: Alert) -> dict[str, Any]:
    """A Slack incoming-webhook message (also accepted by Mattermost and Rocket.Chat)."""
    icon = ":rotating_light:" if alert.severity == "critical" else ":warning:"
    again = f" (reminder {alert.repeat})" if alert.repeat else ""
    text = f"{icon} rotator {alert.severity.upper()} {alert.kind}{again}: {alert.summary}"
    context = [f"secret `{alert.secret}`"]
    if alert.rotation_id:
        context.append(f"rotation `{alert.rotation_id[:8]}`")
    if alert.key:
        context.append(f"key {alert.key}")
    if alert.runner:
        context.append(f"runner `{alert.runner}`")
    context.append(format_instant(alert.at) or "")
    blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]
    if alert.detail and alert.detail not in alert.summary:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": alert.detail[:2900]}})
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": " · ".join(context)}]})
    return {"text": text, "blocks": blocks}


BODIES: dict[str, Callable[[Alert], dict[str, Any]]] = {"generic": generic_body, "slack": slack_body}


def encode(alert: Alert, fmt: str) -> bytes:
    """The body as sent: JSON, passed through the redactor."""
    return redact(json.dumps(BODIES[fmt](alert), ensure_ascii=False)).encode("utf-8")


# --- delivery -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Webhook:
    url: Secret                     # a Secret: masked in every log line, never printed
    format: str = "generic"
    index: int = 1

    def describe(self) -> str:
        return f"webhook #{self.index} ({self.format})"


class Notifier:
    """POSTs alerts to every webhook. Never raises; reports each delivery to ``on_delivery``."""

    def __init__(self, webhooks: Sequence[Webhook], *, timeout: float = 5.0,
                 on_delivery: Callable[[Alert, Webhook, bool], None] | None = None,
                 transport: Any = None) -> None:
        self.webhooks = list(webhooks)
        self.timeout = timeout
        self._on_delivery = on_delivery or (lambda alert, hook, ok: None)
        self._transport = transport
        self._client: Any = None
        self._lock = threading.Lock()

    def send(self, alert: Alert) -> bool:
        """Deliver to every webhook; True when all accepted it."""
        ok = True
        for hook in self.webhooks:
            delivered = self._post(hook, alert)
            ok = ok and delivered
            try:
                self._on_delivery(alert, hook, delivered)
            except Exception:  # noqa: BLE001 - a metrics hook never breaks delivery
                log.exception("alert delivery observer failed")
        return ok

    __call__ = send

    def _post(self, hook: Webhook, alert: Alert) -> bool:
        try:
            response = self._http().post(hook.url.reveal(), content=encode(alert, hook.format),
                                         headers={"content-type": "application/json"})
        except Exception as exc:  # noqa: BLE001 - never fatal; the message may carry the URL
            log.warning("alert %s for %s not delivered to %s: %s", alert.kind, alert.secret, hook.describe(),
                        type(exc).__name__)
            return False
        if response.status_code >= 300:
            log.warning("alert %s for %s not delivered to %s: HTTP %s", alert.kind, alert.secret,
                        hook.describe(), response.status_code)
            return False
        log.info("alert %s for %s sent to %s", alert.kind, alert.secret, hook.describe())
        return True

    def _http(self) -> Any:
        with self._lock:
            if self._client is None:
                import httpx

                self._client = httpx.Client(timeout=self.timeout, transport=self._transport,
                                            follow_redirects=False)
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


def webhooks_from_settings(settings: Any, resolve: Callable[[Any, str], Secret]) -> list[Webhook]:
    """Resolve ``[alerts].webhooks`` (URLs given literally or as credential references)."""
    hooks = []
    for index, spec in enumerate(settings.webhooks):
        where = f"alerts.webhooks[{index}].url"
        url = Secret(spec.url) if isinstance(spec.url, str) else resolve(spec.url, where)
        hooks.append(Webhook(url=url, format=spec.format, index=index + 1))
    return hooks


# --- what to send -------------------------------------------------------------------------------

@dataclass
class _Open:
    first_at: datetime
    sent_at: datetime
    repeats: int = 0


class Alerts:
    """Turns events, outcomes, assessments and drift into de-duplicated alerts for ``send``."""

    def __init__(self, send: Callable[[Alert], Any], *, escalate_at: Iterable[timedelta] = (),
                 repeat_after: timedelta = timedelta(hours=24),
                 on_suppressed: Callable[[Alert], None] | None = None) -> None:
        self._send = send
        self.escalate_at = sorted(set(escalate_at), reverse=True)
        self.repeat_after = repeat_after
        self._on_suppressed = on_suppressed or (lambda alert: None)
        self._open: dict[tuple[str, str, str], _Open] = {}
        self._lock = threading.Lock()

    # --- inputs -------------------------------------------------------------------------------

    def on_events(self, events: Iterable[Event]) -> None:
        for e in events:
            if e.result == "intent":          # audit-only: written before an effect
                continue
            if e.action == "failed" and e.result == "error":
                self.raise_(Alert("failure", e.secret, "warning", f"{e.secret}: run failed: {e.detail}", e.at,
                                  detail=e.detail, rotation_id=e.rotation_id, key=e.key, runner=e.runner))
            elif e.action in ROLLBACK_ACTIONS:
                self.raise_(Alert("rollback", e.secret, "warning",
                                  f"{e.secret}: new key refused, rotation rolled back: {e.detail}", e.at,
                                  detail=e.detail, rotation_id=e.rotation_id, key=e.key, runner=e.runner))
            elif e.result == "alert" or e.action.startswith("compromised"):
                self.raise_(Alert("incident", e.secret, "critical", f"{e.secret}: {e.action}: {e.detail}", e.at,
                                  detail=e.detail, step=e.action, rotation_id=e.rotation_id, key=e.key,
                                  runner=e.runner))

    def on_run(self, events: Iterable[Event], outcomes: Iterable[Outcome], now: datetime) -> None:
        """A whole run (the daemon's and ``rotate``'s): a failed secret pages with its outcome's
        *first* error — not a later cleanup's —, rollbacks and incidents from the events, and a
        secret that ran cleanly closes its failure and rollback alerts."""
        events, outcomes = list(events), list(outcomes)
        failed = {o.secret: o for o in outcomes if o.status == "failed"}
        self.on_events(e for e in events if not (e.action == "failed" and e.secret in failed))
        for name, outcome in failed.items():
            event = next((e for e in events if e.secret == name and e.action == "failed" and e.result == "error"),
                         None)
            error = outcome.error or (event.detail if event else "") or outcome.detail or "failed"
            self.raise_(Alert("failure", name, "warning", f"{name}: run failed: {error}",
                              event.at if event else now, detail=error,
                              rotation_id=event.rotation_id if event else None,
                              key=event.key if event else None, runner=event.runner if event else None))
        self.on_outcomes(outcomes)

    def on_outcomes(self, outcomes: Iterable[Outcome]) -> None:
        for o in outcomes:
            if o.status in ("ok", "changed"):
                self.resolve(o.secret, "failure")
                self.resolve(o.secret, "rollback")

    def on_assessment(self, secret: str, a: Assessment, now: datetime) -> None:
        """Escalate a due key that is still not rotated at the configured lead times; page once
        when the issuer no longer lists the current key."""
        if a.health == "rejected":
            self.raise_(Alert("rejected", secret, "critical", f"{secret}: {a.reason}", now,
                              detail=f"{a.reason}; applications reading it fail. Next: {a.action}",
                              key=a.key, expires_on=a.expires_on))
        else:
            self.resolve(secret, "rejected")
        if a.health in ROTATED:
            self.resolve(secret, "escalation")
            return
        if a.health not in UNROTATED or a.expires_on is None or not self.escalate_at:
            return
        step, severity, left = self._step(a.expires_on, now, self.escalate_at)
        if step is None:
            return
        if step == "expired":
            summary = f"{secret}: key {a.key or '-'} has EXPIRED and is still not rotated"
        else:
            summary = (f"{secret}: key {a.key or '-'} expires {format_instant(a.expires_on)}"
                       f" ({format_duration(left)} left) and is still not rotated")
        detail = f"{a.action}; last error: {a.last_error}" if a.last_error else a.action
        self.raise_(Alert("escalation", secret, severity, summary, now, detail=detail, step=step, key=a.key,
                          expires_on=a.expires_on))

    def on_credential(self, c: CredentialAssessment, now: datetime, *, lead_time: timedelta) -> None:
        """An issuer's own admin key that rotator does not manage: warn from ``lead_time`` before
        it expires, escalate at the same lead times as a secret, and critically once expired. A
        managed credential is covered by its secret's alerts."""
        who = f"{c.issuer} (admin key)"
        if c.managed_as or c.expires_on is None or c.health not in ("expiring", "expired"):
            self.resolve(who, "credential")
            return
        marks = sorted(set(self.escalate_at) | {lead_time}, reverse=True)
        step, severity, left = self._step(c.expires_on, now, marks)
        if step is None:
            return
        key = c.key or "-"
        if step == "expired":
            summary = (f"issuer {c.issuer}: its admin key {key} has EXPIRED: every call to the issuer fails and"
                       " no key can be rotated")
        else:
            summary = (f"issuer {c.issuer}: its admin key {key} expires {format_instant(c.expires_on)}"
                       f" ({format_duration(left)} left) and rotator cannot rotate it")
        self.raise_(Alert("credential", who, severity, summary, now, detail=c.reason, step=step, key=c.key,
                          expires_on=c.expires_on, issuer=c.issuer))

    @staticmethod
    def _step(expires_on: datetime, now: datetime, marks: list[timedelta]) -> tuple[str | None, str, timedelta]:
        """The escalation step reached: ('expired', critical), the smallest lead time reached
        (critical for the last one), or None."""
        left = expires_on - now
        if left <= timedelta(0):
            return "expired", "critical", left
        reached = [t for t in marks if left <= t]
        if not reached:
            return None, "", left
        mark = min(reached)
        return format_duration(mark), "critical" if mark == min(marks) else "warning", left

    def on_drift(self, secret: str, target: str, state: str, detail: str, now: datetime) -> None:
        if state in DRIFTED:
            self.raise_(Alert("drift", secret, "warning", f"{secret}: {target} is out of sync ({state}): {detail}",
                              now, detail=detail, step=target))
        elif state == "ok":
            self.resolve(secret, "drift", target)

    # --- de-duplication -----------------------------------------------------------------------

    def raise_(self, alert: Alert) -> bool:
        """Send ``alert`` unless the same one is open and not yet due for a reminder."""
        key = (alert.secret, alert.kind, alert.step)
        with self._lock:
            state = self._open.get(key)
            if state is None:
                self._open[key] = _Open(first_at=alert.at, sent_at=alert.at)
                send = True
            elif self.repeat_after > timedelta(0) and alert.at - state.sent_at >= self.repeat_after:
                state.repeats += 1
                state.sent_at = alert.at
                alert = replace(alert, repeat=state.repeats)
                send = True
            else:
                send = False
        if not send:
            log.debug("alert %s %s for %s is open; suppressed", alert.kind, alert.step, alert.secret)
            self._on_suppressed(alert)
            return False
        try:
            self._send(alert)
        except Exception:  # noqa: BLE001 - alerts are never fatal
            log.exception("alert %s for %s could not be sent", alert.kind, alert.secret)
        return True

    def resolve(self, secret: str, kind: str, step: str | None = None) -> None:
        with self._lock:
            for key in [k for k in self._open if k[0] == secret and k[1] == kind and (step is None or k[2] == step)]:
                del self._open[key]

    def open_alerts(self) -> list[tuple[str, str, str]]:
        with self._lock:
            return sorted(self._open)
