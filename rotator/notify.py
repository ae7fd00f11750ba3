"""Notifications: what deserves one (:class:`Alerts`) and how it is delivered (:class:`Notifier`).

Events (the names channels subscribe to with ``events = [...]``, docs/notifications.md):

* ``rotated`` — a new key was promoted (engine action ``promoted``); off unless a channel asks;
* ``revoke_held`` — the revoke gate held an old key's revoke (``revoke-held``/``held``); off
  unless a channel asks (the problem among held revokes, consumers that have not confirmed, is
  ``gate_waiting``);
* ``failed`` — a run failed for a secret: its first error (alert kind ``failure``);
* ``rollback`` — a new key was refused and rolled back;
* ``gate_waiting`` — a consumer gate hook has not confirmed the new key, so the old key's revoke
  waits; critical once the old key is within the last ``escalate_at`` lead time of its expiry;
* ``expiring`` — a due key is still not rotated at a configured lead time before expiry, or has
  expired (alert kind ``escalation``);
* ``paused`` — a paused secret's current key nears expiry (7, 3 and 1 days before, and the
  ``escalate_at`` lead times), or has expired;
* ``drift`` — a secondary does not hold the primary's key;
* ``rejected`` — the issuer no longer lists a secret's current key;
* ``credential`` — an issuer's own admin key that rotator does not manage nears its expiry;
* ``incident`` — events the incident procedure marks as alerts.

:class:`Alert` keeps the kinds it had before channels chose events (``failure``, ``escalation``:
metrics labels and the generic body's ``kind``); ``Alert.event`` is the subscribed name. *Intent*
events (written before an effect, for the audit trail) never notify.

De-duplication: an alert is *open* under the key (secret, kind, step) — step is the escalation
lead time ("13d", ..., "expired"), the drifted target, the incident action, the held key or the
rotation id; failures and rollbacks have one key per secret, because every retry of a failing
secret starts a new rotation id and would otherwise page again. An open alert is not sent again
until ``repeat_after`` has passed (0: never); it closes when the condition clears (the secret
runs cleanly, is rotated, the target is back in sync, the held key is revoked, the pause is
lifted), and the next occurrence pages again. The state lives in memory: a restarted daemon
re-sends each open alert once.

Delivery: each channel gets the alerts its ``events`` select, one message each — or, with
``summary = true``, one message per run (:meth:`Alerts.batch`) listing them all. Generic JSON and
Slack bodies are POSTed with httpx; ``apprise`` channels go through apprise. Each delivery is
tried up to ``retries`` times, waiting ``backoff``, then twice that, ... between tries (on
connection errors, timeouts, 429 and 5xx; not on other answers). A delivery that still fails is
logged (never the URL: it may carry a token) and counted, never raised.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import warnings
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta
from typing import Any, Callable, Iterable, Iterator, Sequence
from urllib.parse import parse_qsl, unquote, urlsplit

from rotator.engine import Event, Outcome
from rotator.errors import ConfigError
from rotator.models import Secret
from rotator.planner import Assessment, CredentialAssessment
from rotator.redact import MASK, RedactingFilter, redact
from rotator.timeutil import format_duration, format_instant

log = logging.getLogger("rotator.notify")

#: The events a channel can subscribe to, in the order a rotation meets them.
EVENTS = ("rotated", "revoke_held", "failed", "rollback", "gate_waiting", "expiring", "paused", "drift",
          "rejected", "credential", "incident")
#: Informational events (severity info): a channel receives them only when it lists them.
OPT_IN_EVENTS = frozenset({"rotated", "revoke_held"})
#: What a channel receives when its ``events`` are not given: every problem, nothing informational
#: (what paged before channels chose events, plus gate_waiting and paused).
DEFAULT_EVENTS = frozenset(EVENTS) - OPT_IN_EVENTS
#: Alert kinds named differently from their event (the kinds predate the events).
EVENT_OF_KIND = {"failure": "failed", "escalation": "expiring"}
#: Health states in which the current key is due and not yet replaced.
UNROTATED = ("due", "rotating", "failing", "expired", "blocked", "expiring", "stale-claim", "rejected")
#: Health states in which the current key has been replaced (escalations close).
ROTATED = ("healthy", "grace", "held")
#: Drift states (from rotator.drift) that raise a drift alert.
DRIFTED = ("missing", "different", "stale-previous", "corrupt")
ROLLBACK_ACTIONS = ("rollback", "rolled-back")
#: Lead times before expiry at which a paused secret notifies (with ``escalate_at``).
PAUSE_MARKS = (timedelta(days=7), timedelta(days=3), timedelta(days=1))
#: Assessments that say nothing about held keys or pauses (the secret could not be assessed).
UNASSESSED = ("error", "unreadable")
SEVERITIES = ("info", "warning", "critical")
#: The longest wait a 429's Retry-After may ask for before the next try.
MAX_RETRY_AFTER = 30.0


@dataclass(frozen=True)
class Alert:
    kind: str                       # failure | rollback | drift | escalation | rejected | credential | incident
                                    # | rotated | revoke_held | gate_waiting | paused
    secret: str                     # the secret; for a credential alert, "<issuer> (admin key)"
    severity: str                   # info | warning | critical
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
    consumers: tuple[str, ...] = ()  # gate_waiting: the consumer gate hooks that have not confirmed

    @property
    def event(self) -> str:
        """The name channels subscribe to (:data:`EVENTS`)."""
        return EVENT_OF_KIND.get(self.kind, self.kind)


# --- bodies -------------------------------------------------------------------------------------

def generic_body(alert: Alert) -> dict[str, Any]:
    body = asdict(alert)
    body.update(source="rotator", version=1, event=alert.event, at=format_instant(alert.at),
                expires_on=format_instant(alert.expires_on), consumers=list(alert.consumers))
    return body


def _icon(alert: Alert) -> str:
    if alert.severity == "critical":
        return ":rotating_light:"
    if alert.severity == "warning":
        return ":warning:"
    return ":white_check_mark:" if alert.event == "rotated" else ":information_source:"


def _context(alert: Alert) -> list[str]:
    context = [f"secret `{alert.secret}`"]
    if alert.rotation_id:
        context.append(f"rotation `{alert.rotation_id[:8]}`")
    if alert.key:
        context.append(f"key {alert.key}")
    if alert.runner:
        context.append(f"runner `{alert.runner}`")
    context.append(format_instant(alert.at) or "")
    return context


def _headline(alert: Alert) -> str:
    again = f" (reminder {alert.repeat})" if alert.repeat else ""
    return f"rotator {alert.severity.upper()} {alert.kind}{again}: {alert.summary}"


def slack_body(alert: Alert) -> dict[str, Any]:
    """A Slack incoming-webhook message (also accepted by Mattermost and Rocket.Chat)."""
    text = f"{_icon(alert)} {_headline(alert)}"
    blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]
    if alert.detail and alert.detail not in alert.summary:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": alert.detail[:2900]}})
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": " · ".join(_context(alert))}]})
    return {"text": text, "blocks": blocks}


def text_body(alert: Alert) -> tuple[str, str]:
    """Title and plain-text body (apprise channels)."""
    title = f"rotator {alert.severity.upper()} {alert.event}: {alert.secret}"
    lines = [_headline(alert)]
    if alert.detail and alert.detail not in alert.summary:
        lines.append(alert.detail)
    lines.append(" · ".join(_context(alert)).replace("`", ""))
    return title, "\n".join(lines)


def _worst(alerts: Sequence[Alert]) -> str:
    return max((a.severity for a in alerts), key=lambda s: SEVERITIES.index(s) if s in SEVERITIES else 1)


def _ordered(alerts: Sequence[Alert]) -> list[Alert]:
    """Most severe first; in the order raised within a severity."""
    return sorted(alerts, key=lambda a: -(SEVERITIES.index(a.severity) if a.severity in SEVERITIES else 1))


def _tally(alerts: Sequence[Alert]) -> str:
    counts = [(s, sum(a.severity == s for a in alerts)) for s in reversed(SEVERITIES)]
    return ", ".join(f"{n} {s}" for s, n in counts if n)


def summary_title(alerts: Sequence[Alert]) -> str:
    return f"rotator: {len(alerts)} notification(s) from this run ({_tally(alerts)})"


def generic_summary(alerts: Sequence[Alert]) -> dict[str, Any]:
    ordered = _ordered(alerts)
    return {"source": "rotator", "version": 1, "kind": "summary", "event": "summary",
            "severity": _worst(alerts), "summary": summary_title(alerts), "count": len(alerts),
            "at": format_instant(max(a.at for a in alerts)), "alerts": [generic_body(a) for a in ordered]}


def slack_summary(alerts: Sequence[Alert]) -> dict[str, Any]:
    ordered = _ordered(alerts)
    icon = {"critical": ":rotating_light:", "warning": ":warning:"}.get(_worst(alerts), ":information_source:")
    text = f"{icon} {summary_title(alerts)}"
    lines = [f"{_icon(a)} {_headline(a)}" for a in ordered]
    blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]
    chunk: list[str] = []
    for line in lines:                               # a section holds at most 3,000 characters
        if chunk and sum(len(x) + 1 for x in chunk) + len(line) > 2900:
            blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(chunk)}})
            chunk = []
        chunk.append(line[:2900])
    if chunk:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": "\n".join(chunk)}})
    return {"text": text, "blocks": blocks[:50]}


def text_summary(alerts: Sequence[Alert]) -> tuple[str, str]:
    return summary_title(alerts), "\n".join(f"- {_headline(a)}" for a in _ordered(alerts))


BODIES: dict[str, Callable[[Alert], dict[str, Any]]] = {"generic": generic_body, "slack": slack_body}
SUMMARIES: dict[str, Callable[[Sequence[Alert]], dict[str, Any]]] = {"generic": generic_summary,
                                                                      "slack": slack_summary}


def encode(alert: Alert, fmt: str) -> bytes:
    """The body as sent: JSON, passed through the redactor."""
    return redact(json.dumps(BODIES[fmt](alert), ensure_ascii=False)).encode("utf-8")


def encode_summary(alerts: Sequence[Alert], fmt: str) -> bytes:
    """A summary channel's one message for a run: JSON, passed through the redactor."""
    return redact(json.dumps(SUMMARIES[fmt](alerts), ensure_ascii=False)).encode("utf-8")


# --- channels -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Webhook:
    """One channel of ``[alerts].webhooks``."""

    url: Secret                     # a Secret: masked in every log line, never printed
    format: str = "generic"         # generic | slack | apprise
    index: int = 1
    events: frozenset[str] = DEFAULT_EVENTS
    summary: bool = False
    name: str | None = None

    def describe(self) -> str:
        named = f" {self.name!r}" if self.name else ""
        return f"webhook #{self.index}{named} ({self.format})"

    @property
    def channel(self) -> str:
        """The metrics label: the name, else ``webhook-<n>``."""
        return self.name or f"webhook-{self.index}"

    def wants(self, alert: Alert) -> bool:
        return alert.event in self.events


@dataclass
class _Try:
    ok: bool
    retry: bool = False
    why: str = ""
    wait: float | None = None       # a 429's Retry-After, in seconds


class Notifier:
    """Delivers alerts to the channels that subscribe to them. Never raises; reports each delivery
    to ``on_delivery(alert, hook, ok)`` and, given ``metrics``, to
    ``metrics.notification(channel, event, outcome)``.

    ``retries``: tries per delivery (the first included); ``backoff``: seconds before the second
    try, doubled for each next one; ``sleep``: how to wait (tests pass a recorder). A channel
    that gave up once in a run is tried only once more in that run (a dead receiver must not hold
    the run for ``retries`` × ``timeout`` per alert).
    """

    def __init__(self, webhooks: Sequence[Webhook], *, timeout: float = 5.0,
                 on_delivery: Callable[[Alert, Webhook, bool], None] | None = None,
                 transport: Any = None, retries: int = 3, backoff: float = 1.0,
                 sleep: Callable[[float], Any] = time.sleep, metrics: Any = None) -> None:
        self.webhooks = list(webhooks)
        self.timeout = timeout
        self.retries = max(1, int(retries))
        self.backoff = max(0.0, float(backoff))
        self._on_delivery = on_delivery or (lambda alert, hook, ok: None)
        self._transport = transport
        self._sleep = sleep
        self._metrics = metrics
        self._client: Any = None
        self._apprise: dict[int, Any] = {}
        self._lock = threading.Lock()
        self._depth = 0                                  # open batches (runs)
        self._pending: dict[int, list[Alert]] = {}       # summary channel index -> this run's alerts
        self._gave_up: set[int] = set()                  # channels that failed every try in this run
        quiet_url_loggers(("httpx", "httpcore"))         # they log each request's URL at INFO/DEBUG
        if any(hook.format == "apprise" for hook in self.webhooks):
            guard_apprise_logs()

    @classmethod
    def from_settings(cls, settings: Any, resolve: Callable[[Any, str], Secret], **options: Any) -> Notifier | None:
        """The notifier of ``[alerts]`` (None when it lists no channel): its channels, ``timeout``,
        ``retries`` and ``backoff``; ``options`` (``on_delivery``, ``metrics``, ``sleep``, ...)
        are passed on."""
        hooks = webhooks_from_settings(settings, resolve)
        if not hooks:
            return None
        options.setdefault("timeout", settings.timeout.total_seconds())
        options.setdefault("retries", getattr(settings, "retries", 3))
        backoff = getattr(settings, "backoff", None)
        options.setdefault("backoff", backoff.total_seconds() if backoff is not None else 1.0)
        return cls(hooks, **options)

    # --- sending ------------------------------------------------------------------------------

    def send(self, alert: Alert) -> bool:
        """Deliver to every channel that subscribes to the alert's event (a summary channel, while
        a run is open, collects it for :meth:`end_run`); True when every delivery made succeeded."""
        ok = True
        for hook in self.webhooks:
            if not hook.wants(alert):
                continue
            if hook.summary:
                with self._lock:
                    if self._depth:
                        self._pending.setdefault(hook.index, []).append(alert)
                        continue
            ok = self._deliver(hook, [alert]) and ok
        return ok

    __call__ = send

    def begin_run(self) -> None:
        """A run starts: summary channels collect until the matching :meth:`end_run` (nested
        calls count; the outermost end sends)."""
        with self._lock:
            if self._depth == 0:
                self._pending, self._gave_up = {}, set()
            self._depth += 1

    def end_run(self) -> bool:
        """The run is over: each summary channel gets one message listing the run's alerts for
        it (none when there were none). Never raises."""
        with self._lock:
            if self._depth == 0:
                return True
            self._depth -= 1
            if self._depth:
                return True
            pending, self._pending = self._pending, {}
        ok = True
        try:
            for hook in self.webhooks:
                if pending.get(hook.index):
                    ok = self._deliver(hook, pending[hook.index]) and ok
        finally:
            with self._lock:
                if self._depth == 0:
                    self._gave_up = set()
        return ok

    @contextlib.contextmanager
    def batch(self) -> Iterator[Notifier]:
        self.begin_run()
        try:
            yield self
        finally:
            self.end_run()

    # --- one delivery, with retries -----------------------------------------------------------

    def _deliver(self, hook: Webhook, alerts: list[Alert]) -> bool:
        """One message (an alert, or a summary when the channel asks) to one channel."""
        what = (f"summary of {len(alerts)} alert(s)" if hook.summary
                else f"alert {alerts[0].kind} for {alerts[0].secret}")
        with self._lock:
            tries = 1 if hook.index in self._gave_up else self.retries
        result = _Try(False, why="not tried")
        for attempt in range(1, tries + 1):
            try:
                result = self._try(hook, alerts)
            except Exception as exc:  # noqa: BLE001 - never fatal; the message may carry the URL
                result = _Try(False, retry=False, why=type(exc).__name__)
            if result.ok or not result.retry or attempt == tries:
                break
            wait = self.backoff * 2 ** (attempt - 1)
            if result.wait is not None:
                wait = max(wait, min(result.wait, MAX_RETRY_AFTER))
            log.info("%s not delivered to %s (try %d of %d: %s); trying again in %s", what, hook.describe(),
                     attempt, tries, result.why, format_duration(timedelta(seconds=wait)) or f"{wait:g}s")
            try:
                self._sleep(wait)
            except Exception:  # noqa: BLE001 - an interrupted wait ends the retries, not the run
                break
        if result.ok:
            log.info("%s sent to %s", what, hook.describe())
            with self._lock:
                self._gave_up.discard(hook.index)
        else:
            log.warning("%s not delivered to %s: %s%s", what, hook.describe(), result.why,
                        f" (gave up after {attempt} tries)" if attempt > 1 else "")
            with self._lock:
                if self._depth and result.retry:
                    self._gave_up.add(hook.index)
        for alert in alerts:
            self._report(alert, hook, result.ok)
        return result.ok

    def _report(self, alert: Alert, hook: Webhook, ok: bool) -> None:
        try:
            self._on_delivery(alert, hook, ok)
            if self._metrics is not None:
                self._metrics.notification(hook.channel, alert.event, "sent" if ok else "failed")
        except Exception:  # noqa: BLE001 - a metrics hook never breaks delivery
            log.exception("alert delivery observer failed")

    def _try(self, hook: Webhook, alerts: list[Alert]) -> _Try:
        if hook.format == "apprise":
            return self._try_apprise(hook, alerts)
        body = encode_summary(alerts, hook.format) if hook.summary else encode(alerts[0], hook.format)
        import httpx

        try:
            response = self._http().post(hook.url.reveal(), content=body,
                                         headers={"content-type": "application/json"})
        except httpx.TransportError as exc:          # connection refused or reset, timeouts, protocol errors
            return _Try(False, retry=True, why=type(exc).__name__)
        status = response.status_code
        if status < 300:
            return _Try(True)
        retry = status == 429 or status >= 500
        return _Try(False, retry=retry, why=f"HTTP {status}", wait=_retry_after(response) if status == 429 else None)

    def _try_apprise(self, hook: Webhook, alerts: list[Alert]) -> _Try:
        client = self._apprise_client(hook)
        if client is None:
            return _Try(False, retry=False, why="apprise does not accept the URL")
        import apprise

        title, body = text_summary(alerts) if hook.summary else text_body(alerts[0])
        worst = _worst(alerts)
        kind = (apprise.NotifyType.FAILURE if worst == "critical" else apprise.NotifyType.WARNING
                if worst == "warning" else apprise.NotifyType.SUCCESS if all(a.event == "rotated" for a in alerts)
                else apprise.NotifyType.INFO)
        result = client.notify(body=redact(body), title=redact(title), notify_type=kind)
        # apprise does not say why a delivery failed (its log does, at WARNING): every failure is retried
        return _Try(True) if result else _Try(False, retry=True, why="apprise could not deliver it")

    def _apprise_client(self, hook: Webhook) -> Any:
        with self._lock:
            if hook.index not in self._apprise:
                self._apprise[hook.index] = apprise_client(hook.url)
            return self._apprise[hook.index]

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
            self._apprise.clear()


def _retry_after(response: Any) -> float | None:
    try:
        return max(0.0, float(response.headers.get("retry-after", "")))
    except ValueError:
        return None


# --- apprise ------------------------------------------------------------------------------------

APPRISE_MISSING = "apprise is not installed: pip install 'rotator[apprise]'"


def _import_apprise() -> Any:
    guard_apprise_logs()                  # before the import: it logs already
    try:
        import apprise
    except ImportError:
        return None
    return apprise


def apprise_client(url: Secret) -> Any:
    """An ``apprise.Apprise`` holding ``url``, or None when apprise does not accept it."""
    apprise = _import_apprise()
    if apprise is None:
        raise ConfigError(APPRISE_MISSING)
    guard_apprise_logs(url)
    client = apprise.Apprise()
    with warnings.catch_warnings():       # its first add() loads every plugin; some import deprecated modules
        warnings.simplefilter("ignore", DeprecationWarning)
        added = client.add(url.reveal())
    return client if added else None


def quiet_url_loggers(names: Iterable[str]) -> None:
    """Keep HTTP client loggers that print request URLs (a webhook URL may carry a token) to
    warnings at least, as ``rotator.log.setup`` does, also when rotator runs embedded."""
    for name in names:
        logger = logging.getLogger(name)
        if logger.level < logging.WARNING:
            logger.setLevel(logging.WARNING)


class _AppriseGuard(RedactingFilter):
    """On apprise's logger: every line redacted, and the token-like parts of the apprise URLs in
    use masked (apprise prints hosts, and at debug level whole URLs)."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: tuple[str, ...] = ()

    def add(self, parts: Iterable[str]) -> None:
        self.parts = tuple(sorted(set(self.parts) | set(parts), key=len, reverse=True))

    def filter(self, record: logging.LogRecord) -> bool:
        super().filter(record)
        for part in self.parts:
            record.msg = str(record.msg).replace(part, MASK)
            if record.exc_text:
                record.exc_text = record.exc_text.replace(part, MASK)
        return True


_guard = _AppriseGuard()


def guard_apprise_logs(url: Secret | None = None) -> None:
    """Keep apprise's logger from leaking a URL into rotator's logs: its debug lines (and those of
    urllib3, under it) print the URLs it posts to, so both are kept to warnings at least, and
    every line it writes is redacted, with the token-like parts of ``url`` (user, password, a
    host name without a dot — ``slack://TokenA/...`` —, path segments, query values) masked."""
    quiet_url_loggers(("apprise", "urllib3"))      # urllib3 (under requests) logs each request line
    logger = logging.getLogger("apprise")
    if _guard not in logger.filters:
        logger.addFilter(_guard)
    if url is not None:
        _guard.add(_token_parts(url.reveal()))


def _token_parts(url: str) -> list[str]:
    try:
        parts = urlsplit(url)
        user, password, host = parts.username, parts.password, parts.hostname
    except ValueError:
        return [url]
    out = [user or "", password or "", parts.fragment]
    if host and "." not in host and ":" not in host and host != "localhost":
        out.append(host)                                  # slack://TokenA/...: the "host" is a token
    out.extend(parts.path.split("/"))
    out.extend(value for _, value in parse_qsl(parts.query))
    found = {unquote(p) for p in out if len(unquote(p)) >= 4} | {p for p in out if len(p) >= 4}
    return sorted(found, key=len, reverse=True)


# --- settings -----------------------------------------------------------------------------------

def webhooks_from_settings(settings: Any, resolve: Callable[[Any, str], Secret]) -> list[Webhook]:
    """Resolve ``[alerts].webhooks`` (URLs given literally or as credential references; apprise
    URLs only as references). Raises ConfigError naming the field."""
    hooks = []
    for index, spec in enumerate(settings.webhooks):
        where = f"alerts.webhooks[{index}]"
        fmt = getattr(spec, "format", "generic")
        if fmt == "apprise" and isinstance(spec.url, str):
            raise ConfigError(f"{where}.url: an apprise URL embeds its service's tokens: give it as a reference"
                              " like { env = \"NAME\" }, never literally")
        if fmt == "apprise" and _import_apprise() is None:
            raise ConfigError(f"{where}.format: {APPRISE_MISSING}")
        url = Secret(spec.url) if isinstance(spec.url, str) else resolve(spec.url, f"{where}.url")
        if fmt == "apprise" and apprise_client(url) is None:
            scheme = url.reveal().partition("://")[0] if "://" in url.reveal() else "?"
            raise ConfigError(f"{where}.url: apprise does not accept this URL (scheme {scheme[:20]!r}; see"
                              " https://github.com/caronc/apprise/wiki)")
        events = getattr(spec, "events", None)
        hooks.append(Webhook(url=url, format=fmt, index=index + 1,
                             events=frozenset(events) if events else DEFAULT_EVENTS,
                             summary=bool(getattr(spec, "summary", False)), name=getattr(spec, "name", None)))
    return hooks


# --- what to send -------------------------------------------------------------------------------

@dataclass
class _Open:
    first_at: datetime
    sent_at: datetime
    repeats: int = 0


class Alerts:
    """Turns events, outcomes, assessments and drift into de-duplicated alerts for ``send``.

    ``send`` is usually a :class:`Notifier` (or its ``send``): then :meth:`batch` (or
    :meth:`begin_run`/:meth:`end_run`) around a run gives each summary channel one message for
    the run. :meth:`on_run` opens a batch of its own, so a caller that only calls it (``rotator
    rotate``) needs nothing more.
    """

    def __init__(self, send: Callable[[Alert], Any], *, escalate_at: Iterable[timedelta] = (),
                 repeat_after: timedelta = timedelta(hours=24),
                 on_suppressed: Callable[[Alert], None] | None = None,
                 pause_marks: Iterable[timedelta] = PAUSE_MARKS) -> None:
        self._send = send
        self.escalate_at = sorted(set(escalate_at), reverse=True)
        self.pause_marks = sorted(set(pause_marks) | set(self.escalate_at), reverse=True)
        self.repeat_after = repeat_after
        self._on_suppressed = on_suppressed or (lambda alert: None)
        self._open: dict[tuple[str, str, str], _Open] = {}
        self._lock = threading.Lock()
        owner = send if isinstance(send, Notifier) else getattr(send, "__self__", None)
        self._notifier = owner if isinstance(owner, Notifier) else None

    # --- runs ---------------------------------------------------------------------------------

    def begin_run(self) -> None:
        if self._notifier is not None:
            self._notifier.begin_run()

    def end_run(self) -> None:
        if self._notifier is not None:
            try:
                self._notifier.end_run()
            except Exception:  # noqa: BLE001 - alerts are never fatal
                log.exception("the run's summary could not be sent")

    @contextlib.contextmanager
    def batch(self) -> Iterator[Alerts]:
        """One run: summary channels get one message for everything raised inside."""
        self.begin_run()
        try:
            yield self
        finally:
            self.end_run()

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
            elif e.action == "promoted" and e.result == "ok":
                step = e.rotation_id or format_instant(e.at) or ""
                self._close_others(e.secret, "rotated", step)      # one open per secret: bounded memory
                self.raise_(Alert("rotated", e.secret, "info",
                                  f"{e.secret}: rotated: new key {e.key or '-'} is current", e.at,
                                  detail=e.detail, step=step, rotation_id=e.rotation_id, key=e.key,
                                  runner=e.runner))
            elif e.action == "revoke-held" and e.result == "held":
                self.raise_(Alert("revoke_held", e.secret, "info", f"{e.secret}: revoke held: {e.detail}", e.at,
                                  detail=e.detail, step=e.key or e.key_id or e.last4 or "",
                                  rotation_id=e.rotation_id, key=e.key, runner=e.runner))
                if "waiting for consumer" in e.detail:     # one-shot runs see no assessment: page here
                    self.raise_(Alert("gate_waiting", e.secret, "warning",
                                      f"{e.secret}: old key revoke {e.detail.split(': ', 1)[-1]}", e.at,
                                      detail=e.detail, step="waiting", rotation_id=e.rotation_id, key=e.key,
                                      runner=e.runner))

    def on_run(self, events: Iterable[Event], outcomes: Iterable[Outcome], now: datetime) -> None:
        """A whole run (the daemon's and ``rotate``'s): a failed secret pages with its outcome's
        *first* error — not a later cleanup's —, rollbacks, rotations, held revokes and incidents
        from the events, and a secret that ran cleanly closes its failure and rollback alerts."""
        events, outcomes = list(events), list(outcomes)
        with self.batch():
            failed = {o.secret: o for o in outcomes if o.status == "failed"}
            self.on_events(e for e in events if not (e.action == "failed" and e.secret in failed))
            for name, outcome in failed.items():
                event = next((e for e in events if e.secret == name and e.action == "failed"
                              and e.result == "error"), None)
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
        when the issuer no longer lists the current key; a held revoke that waits for consumer
        gates (``gate_waiting``); a paused secret nearing expiry (``paused``)."""
        if a.health in UNASSESSED:
            return
        if a.health == "rejected":
            self.raise_(Alert("rejected", secret, "critical", f"{secret}: {a.reason}", now,
                              detail=f"{a.reason}; applications reading it fail. Next: {a.action}",
                              key=a.key, expires_on=a.expires_on))
        else:
            self.resolve(secret, "rejected")
        self._held(secret, a, now)
        if self._paused(secret, a, now):
            return
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

    def _held(self, secret: str, a: Assessment, now: datetime) -> None:
        """Held revokes: close the ``revoke_held`` alerts of keys no longer held; ``gate_waiting``
        while a held key waits for consumer gates, critical within the last ``escalate_at`` lead
        time of that (old) key's expiry and once it expired."""
        held = tuple(getattr(a, "held", ()) or ())
        labels = {h.key.label() for h in held}
        self._close_where(secret, "revoke_held", lambda step: step not in labels)
        waiting = [h for h in held if h.consumers]
        if not waiting:
            self.resolve(secret, "gate_waiting")
            return
        consumers = tuple(sorted({c for h in waiting for c in h.consumers}))
        dated = [h.key.expires_on for h in waiting if h.key.expires_on is not None]
        expires = min(dated) if dated else None
        step, severity, left = "waiting", "warning", None
        if expires is not None:
            reached, _, left = self._step(expires, now, self.escalate_at[-1:])
            if reached is not None:
                step, severity = reached, "critical"
        keys = ", ".join(h.key.label() for h in waiting)
        since = min(h.since for h in waiting)
        who = ", ".join(consumers)
        summary = (f"{secret}: revoke of old key {keys} waits for consumer(s) {who} to confirm the new key"
                   f" (since {format_instant(since)})")
        if step == "expired":
            summary += "; the old key has EXPIRED: consumers still using it fail"
        elif step != "waiting" and left is not None:
            summary += f"; the old key expires {format_instant(expires)} ({format_duration(left)} left)"
        reasons = "; ".join(dict.fromkeys(h.reason for h in waiting if h.reason))
        detail = (f"{reasons}. The old key stays valid until every gate hook confirms (or the old key"
                  " expires); check the consumers' hook deliveries")
        self.raise_(Alert("gate_waiting", secret, severity, summary, now, detail=detail, step=step,
                          rotation_id=waiting[0].rotation_id, key=waiting[0].key.label(), expires_on=expires,
                          consumers=consumers))

    def _paused(self, secret: str, a: Assessment, now: datetime) -> bool:
        """A paused secret: notify as its current key nears expiry (the pause marks, critical at the
        last and once expired); True while paused (its ``expiring`` alerts wait: the pause is the
        story). A lifted pause closes the alert."""
        pause = getattr(a, "paused", None)
        active = getattr(pause, "active", None)
        if pause is None or (callable(active) and not active(now)):
            self.resolve(secret, "paused")
            return False
        if a.expires_on is None or not self.pause_marks:
            return True
        step, severity, left = self._step(a.expires_on, now, self.pause_marks)
        if step is None:
            return True
        by = getattr(pause, "by", "?")
        since = format_instant(getattr(pause, "at", None))
        until = getattr(pause, "until", None)
        reason = getattr(pause, "reason", "")
        if step == "expired":
            summary = f"{secret}: key {a.key or '-'} has EXPIRED while rotation is paused"
        else:
            summary = (f"{secret}: rotation is paused and key {a.key or '-'} expires"
                       f" {format_instant(a.expires_on)} ({format_duration(left)} left)")
        detail = (f"paused by {by} at {since}" + (f" until {format_instant(until)}" if until else "")
                  + (f": {reason}" if reason else "") + "; no rotation starts until the pause is lifted")
        self.raise_(Alert("paused", secret, severity, summary, now, detail=detail, step=step, key=a.key,
                          expires_on=a.expires_on))
        return True

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
        self._close_where(secret, kind, lambda s: step is None or s == step)

    def _close_others(self, secret: str, kind: str, step: str) -> None:
        self._close_where(secret, kind, lambda s: s != step)

    def _close_where(self, secret: str, kind: str, closes: Callable[[str], bool]) -> None:
        with self._lock:
            for key in [k for k in self._open if k[0] == secret and k[1] == kind and closes(k[2])]:
                del self._open[key]

    def open_alerts(self) -> list[tuple[str, str, str]]:
        with self._lock:
            return sorted(self._open)
