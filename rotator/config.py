"""Configuration: a TOML file plus environment overrides, validated with pydantic-settings.

The file comes from ``--config`` or ``ROTATOR_CONFIG``. Any setting can be overridden from the
environment with the ``ROTATOR_`` prefix and ``__`` between levels, each level being a name from
the file upper-cased with ``-`` and ``.`` turned into ``_``: ``ROTATOR_ROTATOR__GRACE=24h``,
``ROTATOR_ISSUERS__QUIVA_PROD__BASE_URL=http://127.0.0.1:8787`` (the issuer ``quiva-prod``),
``ROTATOR_SECRETS__PROD_WEB_APP__GRACE=72h`` (the secret named ``prod-web-app``). The rules are in
:mod:`rotator.overrides`, a pydantic-settings source, and in docs/configuration.md.

:func:`load` validates the core shape (durations, names, references between sections, timing
that needs no issuer) and reports every problem at once, one line each, naming the file and the
field path. Each provider validates its own section and targets when :class:`rotator.runtime.Runtime`
builds it, which also resolves every credential reference and checks timing against each issuer's
key lifetime; it reports all its problems at once the same way. Both happen before any effect.
"""

from __future__ import annotations

import contextvars
import os
import re
import tomllib
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Collection, Literal, Mapping, TypeVar

from pydantic import (
    BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, ValidationError, field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from rotator.errors import ConfigError
from rotator.overrides import Applied, EnvOverrides
from rotator.timeutil import format_duration, parse_duration
from rotator.validation import StrictModel, closest, describe, insecure_http_problem

CONFIG_ENV = "ROTATOR_CONFIG"
DEFAULT_KEY_NAME = "{secret} [{rotation}]"
_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
M = TypeVar("M", bound=BaseModel)

Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
Reference = dict[str, Any]     # a credential reference: { env = ... }, { file = ... } or { backend = ..., ... }

#: Hook events, in the order a rotation reaches them (docs/hooks.md).
HOOK_EVENTS = ("staged", "deployed", "before_revoke", "revoked", "rolled_back", "failed")
#: Events before the old key's revoke: a gate hook must subscribe to one of them.
GATE_EVENTS = ("staged", "deployed", "before_revoke")
ALWAYS = ("always", "any", "none", "off")


def _reference(value: Any, field: str) -> None:
    kinds = [k for k in ("env", "file", "backend") if k in value]
    if len(kinds) != 1:
        raise ValueError(f"{field}: give exactly one of env, file or backend")


class WindowSpec(StrictModel):
    """``window = { days = "mon-fri", start = "09:00", end = "16:00", timezone = "Europe/Amsterdam" }``
    or ``{ cron = "0 9 * * mon-fri", duration = "7h", timezone = ... }``: when rotations may start
    (rotator.window)."""

    days: str | None = None
    start: str | None = None
    end: str | None = None
    cron: str | None = None
    duration: Duration | None = None
    timezone: str = "UTC"

    @model_validator(mode="after")
    def _opens(self) -> WindowSpec:
        self.build()          # every problem (bad day, time, zone, cron; a window that never opens)
        return self

    def build(self) -> Any:
        from rotator.window import Window

        return Window.parse(days=self.days, start=self.start, end=self.end, cron=self.cron,
                            duration=self.duration, timezone=self.timezone)


def _window(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower() in ALWAYS:
        return None
    return value


WindowSetting = Annotated[WindowSpec | None, BeforeValidator(_window)]


class Defaults(StrictModel):
    """``[rotator]``: defaults for every managed secret, and how the runner behaves."""

    lead_time: Duration = timedelta(days=14)
    grace: Duration = timedelta(hours=48)
    check_interval: Duration = timedelta(hours=1)
    lease: Duration = timedelta(minutes=15)
    workers: int = Field(default=4, ge=1, le=64)
    runner_id: str | None = None
    repair_drift: bool = False     # sync (and the daemon's reconcile) repairs drift, as with --repair
    window: WindowSetting = None   # rotations start only inside it (rotator.window)
    safety_margin: Duration = timedelta(days=3)   # ... unless the key would get closer than this to expiry
    hook_concurrency: int = Field(default=4, ge=1, le=64)   # hook deliveries running at once, all secrets

    @model_validator(mode="after")
    def _positive(self) -> Defaults:
        problems = [f"{name}: must be positive" for name in ("lead_time", "check_interval", "lease")
                    if getattr(self, name) <= timedelta(0)]
        if self.grace < timedelta(0):
            problems.append("grace: must not be negative")
        if not problems:
            problems += timing_problems(self.lead_time, self.grace, self.check_interval)
        if problems:
            raise ValueError("; ".join(problems))
        return self


def timing_problems(lead_time: timedelta, grace: timedelta, check_interval: timedelta, *,
                    where: str = "", secret: str = "", own_lead: bool = True, own_grace: bool = True) -> list[str]:
    """Timing that cannot work, whatever the issuer (docs/configuration.md, "Timing"):

    * ``grace`` must be shorter than ``lead_time``: a key is rotated when it has at most
      ``lead_time`` left, so an old key kept for ``grace`` after that would expire first;
    * ``check_interval`` must not be longer than ``lead_time``: a key could come due and reach its
      expiry between two checks.

    ``where`` prefixes the field names (``secrets[1].``); ``own_*`` say which values the secret
    sets itself (a problem of inherited values is reported once, on ``[rotator]``).
    """
    named = f" (secret {secret!r})" if secret else ""
    problems = []
    if (own_lead or own_grace) and grace >= lead_time:
        field = "grace" if own_grace else "lead_time"
        problems.append(
            f"{where}{field}: grace {format_duration(grace)} is not shorter than lead_time"
            f" {format_duration(lead_time)}{named}: a key is rotated when it has at most lead_time left,"
            " so the old key would expire before the grace period ends (shorten grace or lengthen lead_time)")
    if own_lead and check_interval > lead_time:
        field = "lead_time" if where else "check_interval"
        problems.append(
            f"{where}{field}: rotator.check_interval {format_duration(check_interval)} is longer than lead_time"
            f" {format_duration(lead_time)}{named}: a key could come due and expire between two checks"
            " (shorten check_interval or lengthen lead_time)")
    return problems


class ProviderSection(BaseModel):
    """``[issuers.NAME]`` / ``[backends.NAME]``: ``type`` picks the plugin; the rest is its own."""

    model_config = ConfigDict(extra="allow", frozen=True)
    type: str

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class TargetEntry(BaseModel):
    """One entry of a secret's ``targets``: ``backend`` plus that backend's target settings."""

    model_config = ConfigDict(extra="allow", frozen=True)
    backend: str

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


#: What an http hook's request carries, for the plain-http refusal (never a key value).
HOOK_SENDS = "the signed hook body (key ids, dates; its signature is all that protects it)"


class HookSpec(StrictModel):
    """``[[hooks]]`` (named, shared) or an inline entry of a secret's ``hooks``: something to tell
    when a rotation reaches an event (rotator.hooks, docs/hooks.md)."""

    name: str = Field(pattern=_NAME)
    kind: Literal["exec", "http"]
    events: list[Literal["staged", "deployed", "before_revoke", "revoked", "rolled_back", "failed"]] = \
        Field(min_length=1)
    gate: bool = False                 # the old key is revoked only after this hook succeeded
    timeout: Duration = timedelta(seconds=30)
    backoff: Duration = timedelta(minutes=1)    # first wait before a failed delivery is tried again; doubles
    max_attempts: int = Field(default=5, ge=1)  # a non-gate hook gives up after this many; a gate never does
    all_secrets: bool = False          # [[hooks]] only: run for every secret (else for those that list it)
    # exec
    command: list[str] | None = None   # argv, no shell
    env: dict[str, str] = {}           # added to the hook's environment (literals; no credentials here)
    inherit_env: list[str] = []        # names passed through from rotator's own environment
    working_dir: Path | None = None
    pass_value: bool = False           # exec only: the new key's value on stdin (never in the environment)
    # http
    url: str | Reference | None = None
    signing_secret: Reference | None = None   # HMAC-SHA256 of the body: X-Rotator-Signature
    headers: dict[str, str] = {}
    ca_cert: Path | None = None        # TLS verification is always on; this adds a CA bundle
    insecure_http: bool = False        # allow plain http:// to a host that is not loopback

    @model_validator(mode="after")
    def _kind(self) -> HookSpec:
        problems = []
        if self.kind == "exec":
            if not self.command or not all(isinstance(a, str) and a for a in self.command):
                problems.append("command: an exec hook needs a non-empty argv list, e.g. [\"/bin/reload\", \"web\"]")
            for name in ("url", "signing_secret"):
                if getattr(self, name) is not None:
                    problems.append(f"{name}: only for kind = \"http\"")
        else:
            if self.url is None:
                problems.append("url: an http hook needs a url (https://... or a reference)")
            elif isinstance(self.url, str):
                if not re.match(r"^https?://[^\s]+$", self.url):
                    problems.append("url: expected http(s)://... or a reference like { env = \"NAME\" }")
                elif not self.insecure_http and (problem := insecure_http_problem(self.url, "url", HOOK_SENDS)):
                    problems.append(problem)
            else:
                _reference(self.url, "url")
            if self.signing_secret is not None:
                _reference(self.signing_secret, "signing_secret")
            if self.pass_value:
                problems.append("pass_value: only an exec hook can be given the value (on its stdin); an http"
                                " hook never is")
            for name in ("command", "working_dir"):
                if getattr(self, name) is not None:
                    problems.append(f"{name}: only for kind = \"exec\"")
        if self.gate and not set(self.events) & set(GATE_EVENTS):
            problems.append("gate: a gate hook must subscribe to staged, deployed or before_revoke (it must"
                            " run before the old key is revoked)")
        if self.timeout <= timedelta(0) or self.backoff <= timedelta(0):
            problems.append("timeout and backoff must be positive")
        if len(set(self.events)) != len(self.events):
            problems.append("events: listed twice")
        if problems:
            raise ValueError("; ".join(problems))
        return self


class SecretSpec(StrictModel):
    """``[[secrets]]``: one managed secret."""

    name: str = Field(pattern=_NAME)
    issuer: str
    targets: list[TargetEntry] = Field(min_length=1)
    key_name: str = DEFAULT_KEY_NAME
    field: str = "api_key"
    fields: dict[str, str] | None = None   # keys with parts (aws_iam): part -> field, for every target
    lead_time: Duration | None = None
    grace: Duration | None = None
    create_if_missing: bool = True
    window: WindowSetting | Literal["inherit"] = "inherit"   # "always": no window for this secret
    safety_margin: Duration | None = None
    hooks: list[str | HookSpec] = []   # names of [[hooks]], or inline hooks

    @model_validator(mode="after")
    def _key_name_template(self) -> SecretSpec:
        try:
            rendered = self.key_name.format(secret=self.name, rotation="r-00000000")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"key_name: bad template ({exc}): use {{secret}} and {{rotation}}") from None
        if "{rotation}" not in self.key_name or not rendered.strip():
            raise ValueError("key_name must contain {rotation} so stray keys can be recognised")
        return self


# --- daemon mode, audit trail, alerts (see docs/daemon.md) ---------------------------------------

_OFF = ("", "off", "none", "false")


class DaemonSettings(StrictModel):
    """``[daemon]``: how ``rotator daemon`` runs. The one-shot ``rotate`` serves nothing."""

    http_address: str | None = "127.0.0.1:9464"   # /healthz, /readyz, /metrics; "off" disables
    shutdown_timeout: Duration = timedelta(seconds=30)
    jitter: Duration = timedelta(minutes=5)         # reconcile jitter, capped at check_interval / 10
    retry_min: Duration = timedelta(minutes=1)      # first retry after a failed run; doubles up to check_interval

    @field_validator("http_address", mode="before")
    @classmethod
    def _address(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and value.strip().lower() in _OFF):
            return None
        if isinstance(value, str):
            _host, colon, port = value.strip().rpartition(":")
            if colon and port.isdigit() and int(port) <= 65535:
                return value.strip()
        raise ValueError('expected HOST:PORT (e.g. 127.0.0.1:9464, :9464, [::1]:9464) or "off"')

    @model_validator(mode="after")
    def _daemon(self) -> DaemonSettings:
        if self.shutdown_timeout <= timedelta(0) or self.retry_min <= timedelta(0):
            raise ValueError("shutdown_timeout and retry_min must be positive")
        if self.jitter < timedelta(0):
            raise ValueError("jitter must not be negative")
        return self


class AuditSettings(StrictModel):
    """``[audit]``: the append-only JSON-lines audit trail (one record per action, never a value)."""

    path: Path | None = None
    stdout: bool = False
    fsync: bool = True          # fsync after every record (a rotation writes about ten)


class WebhookSpec(StrictModel):
    """One alert channel of ``[alerts].webhooks`` (docs/notifications.md). ``url`` may embed a token
    (Slack): prefer ``{ env = "NAME" }``; an apprise URL must be a reference (its URLs carry tokens)."""

    format: Literal["generic", "slack", "apprise"] = "generic"     # before url: url's check reads it
    url: str | dict[str, Any]
    name: str | None = Field(default=None, pattern=_NAME)          # in logs and the metrics' channel label
    # which notifications this channel receives (rotator.notify.EVENTS); unset: every problem, i.e. all
    # but the informational "rotated" and "revoke_held"
    events: list[Literal["rotated", "revoke_held", "failed", "rollback", "gate_waiting", "expiring", "paused",
                         "drift", "rejected", "credential", "incident"]] | None = None
    summary: bool = False          # at most one message per run, listing every alert of the run

    @field_validator("url")
    @classmethod
    def _url(cls, value: Any, info: Any) -> Any:
        if info.data.get("format") == "apprise" and isinstance(value, str):
            raise ValueError("an apprise URL embeds its service's tokens: give it as a reference like"
                             " { env = \"NAME\" } or { file = \"/path\" }, never literally")
        if isinstance(value, str):
            if not re.match(r"^https?://[^\s]+$", value):
                raise ValueError("expected http(s)://... or a reference like { env = \"NAME\" }")
        elif len([k for k in ("env", "file", "backend") if k in value]) != 1:
            raise ValueError("give exactly one of env, file or backend")
        return value

    @field_validator("events")
    @classmethod
    def _events(cls, value: Any) -> Any:
        if value is not None and not value:
            raise ValueError("an empty list: the channel would receive nothing (leave events out for the default)")
        if value is not None and len(set(value)) != len(value):
            raise ValueError("listed twice")
        return value


class AlertSettings(StrictModel):
    """``[alerts]``: notifications (problems, and rotations on channels that ask) to webhook, Slack and
    apprise channels, with de-duplication, escalation lead times and retries (docs/notifications.md)."""

    webhooks: list[WebhookSpec] = []
    escalate_at: list[Duration] = Field(
        default_factory=lambda: [timedelta(days=13), timedelta(days=10), timedelta(days=7)])
    repeat_after: Duration = timedelta(hours=24)    # re-send a still-open alert after this; 0s: never
    timeout: Duration = timedelta(seconds=5)        # per webhook delivery
    retries: int = Field(default=3, ge=1, le=10)    # tries per delivery, the first included (1: no retry)
    backoff: Duration = timedelta(seconds=1)        # wait before the second try; doubles for each next one

    @model_validator(mode="after")
    def _alerts(self) -> AlertSettings:
        if any(t <= timedelta(0) for t in self.escalate_at):
            raise ValueError("escalate_at: every lead time must be positive")
        if self.repeat_after < timedelta(0) or self.timeout <= timedelta(0):
            raise ValueError("repeat_after must not be negative and timeout must be positive")
        if self.backoff <= timedelta(0):
            raise ValueError("backoff must be positive")
        return self


class Settings(BaseSettings):
    """The whole configuration."""

    model_config = SettingsConfigDict(
        env_prefix="ROTATOR_", env_nested_delimiter="__", extra="forbid", frozen=True,
    )

    rotator: Defaults = Defaults()
    issuers: dict[str, ProviderSection] = {}
    backends: dict[str, ProviderSection] = {}
    secrets: list[SecretSpec] = []
    hooks: list[HookSpec] = []
    daemon: DaemonSettings = DaemonSettings()
    audit: AuditSettings = AuditSettings()
    alerts: AlertSettings = AlertSettings()

    #: the file the settings came from ("<embedded>" for a configuration built in code), and the
    #: variable behind each overridden value ("secrets[1].grace" -> "ROTATOR_SECRETS__WEB__GRACE")
    _source: str = PrivateAttr(default="<embedded>")
    _origins: dict[str, str] = PrivateAttr(default_factory=dict)

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's content arrives as init kwargs; EnvOverrides applies the environment to it,
        # matching each variable against the names in the file (pydantic-settings' own env source
        # cannot map QUIVA_PROD to "quiva-prod", nor a secret's name to its place in the list).
        loading = _LOADING.get()
        source = EnvOverrides(settings_cls, getattr(init_settings, "init_kwargs", {}),
                              environ=loading.environ if loading else None)
        if loading is not None:
            loading.sources.append(source)
        else:
            source = _Strict(source)
        return (source,)

    @property
    def source(self) -> str:
        """The file these settings were read from ("<embedded>" when built in code)."""
        return self._source

    def origin(self, where: str) -> str | None:
        """The environment variable that set ``where`` (or a setting inside or around it)."""
        for path, name in self._origins.items():
            if _within(where, path) or _within(path, where):
                return name
        return None

    @property
    def from_file(self) -> bool:
        """Whether these settings were read from a file (not built in code)."""
        return self._source != "<embedded>"

    def report(self, lines: list[str]) -> str:
        """Problem lines ("path: problem") as one message: each names the file (settings built in
        code have none), and the variable when the value came from the environment."""
        if not self.from_file:
            return "\n".join(_located("", line, self._origins)[2:] for line in lines)
        return "\n".join(_located(self._source, line, self._origins) for line in lines)

    @model_validator(mode="after")
    def _references(self) -> Settings:
        problems = _cross_problems(_Parts.of(self))
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def references(self) -> list[tuple[str, Any]]:
        """The credential references of the core sections, with their field paths: hooks (url,
        signing_secret) and alert webhooks (url). An issuer or backend declares its own (defaults
        included) through its ``references`` attribute; :class:`rotator.runtime.Runtime` checks both."""
        return _core_references(_Parts.of(self))

    def _all_hooks(self) -> list[tuple[str, HookSpec]]:
        return _Parts.of(self).all_hooks()

    def hooks_of(self, secret: SecretSpec) -> list[HookSpec]:
        """The hooks that run for ``secret``: every all_secrets hook, then its own list."""
        by_name = {h.name: h for h in self.hooks}
        out = [h for h in self.hooks if h.all_secrets]
        for entry in secret.hooks:
            hook = by_name[entry] if isinstance(entry, str) else entry
            if hook not in out:
                out.append(hook)
        return out

    def window(self, secret: SecretSpec) -> Any:
        """The secret's rotation window (rotator.window.Window), or None: any time."""
        spec = self.rotator.window if secret.window == "inherit" else secret.window
        return spec.build() if isinstance(spec, WindowSpec) else None

    def safety_margin(self, secret: SecretSpec) -> timedelta:
        return self.rotator.safety_margin if secret.safety_margin is None else secret.safety_margin

    def lead_time(self, secret: SecretSpec) -> timedelta:
        return secret.lead_time or self.rotator.lead_time

    def grace(self, secret: SecretSpec) -> timedelta:
        return self.rotator.grace if secret.grace is None else secret.grace


@dataclass
class _Parts:
    """What the checks across sections look at: the whole settings, or, when they failed to
    validate, the pieces of the raw document that did (so those checks still report)."""

    issuers: Collection[str]
    backends: Collection[str]
    secrets: list[tuple[int, SecretSpec]]
    hooks: list[tuple[int, HookSpec]]
    rotator: Defaults | None
    alerts: AlertSettings | None

    @classmethod
    def of(cls, settings: Settings) -> _Parts:
        return cls(settings.issuers, settings.backends, list(enumerate(settings.secrets)),
                   list(enumerate(settings.hooks)), settings.rotator, settings.alerts)

    @classmethod
    def salvage(cls, document: Mapping[str, Any]) -> _Parts:
        """The pieces of a document that failed validation which validate on their own."""
        def each(model: type[M], key: str) -> list[tuple[int, M]]:
            items = document.get(key)
            found = []
            for index, item in enumerate(items if isinstance(items, list) else []):
                try:
                    found.append((index, model.model_validate(item)))
                except ValidationError:
                    pass
            return found

        def one(model: type[M], key: str) -> M | None:
            try:
                return model.model_validate(document.get(key, {}))
            except ValidationError:
                return None

        def names(key: str) -> list[str]:
            value = document.get(key, {})
            return [str(n) for n in value] if isinstance(value, Mapping) else []

        return cls(names("issuers"), names("backends"), each(SecretSpec, "secrets"), each(HookSpec, "hooks"),
                   one(Defaults, "rotator"), one(AlertSettings, "alerts"))

    def all_hooks(self) -> list[tuple[str, HookSpec]]:
        found = [(f"hooks[{i}]", h) for i, h in self.hooks]
        for index, secret in self.secrets:
            found += [(f"secrets[{index}].hooks[{i}]", h) for i, h in enumerate(secret.hooks) if isinstance(h, HookSpec)]
        return found


def _core_references(parts: _Parts) -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = []
    for where, hook in parts.all_hooks():
        for name in ("url", "signing_secret"):
            value = getattr(hook, name)
            if isinstance(value, Mapping):
                found.append((f"{where}.{name}", value))
    for index, channel in enumerate(parts.alerts.webhooks if parts.alerts else []):
        if isinstance(channel.url, Mapping):
            found.append((f"alerts.webhooks[{index}].url", channel.url))
    return found


def _cross_problems(parts: _Parts) -> list[str]:
    """What no single section shows: names, references between sections, timing per secret."""
    problems = []
    for section in ("issuers", "backends"):
        for name in getattr(parts, section):
            if not re.match(_NAME, name):
                problems.append(f"{section}.{name}: names use letters, digits, '.', '_' and '-'")
    seen: set[str] = set()
    defaults = parts.rotator
    for index, secret in parts.secrets:
        where = f"secrets[{index}]"
        if secret.name in seen:
            problems.append(f"{where}.name: duplicate secret name {secret.name!r}")
        seen.add(secret.name)
        if secret.issuer not in parts.issuers:
            problems.append(f"{where}.issuer: unknown issuer {secret.issuer!r}{_known(parts.issuers, secret.issuer)}")
        for t_index, target in enumerate(secret.targets):
            if target.backend not in parts.backends:
                problems.append(f"{where}.targets[{t_index}].backend: unknown backend"
                                f" {target.backend!r}{_known(parts.backends, target.backend)}")
        if defaults is not None:
            lead = secret.lead_time or defaults.lead_time
            grace = defaults.grace if secret.grace is None else secret.grace
            problems += timing_problems(lead, grace, defaults.check_interval, where=f"{where}.", secret=secret.name,
                                        own_lead=secret.lead_time is not None, own_grace=secret.grace is not None)
            window = defaults.window if secret.window == "inherit" else secret.window
            margin = defaults.safety_margin if secret.safety_margin is None else secret.safety_margin
            if window is not None and margin >= lead:
                problems.append(
                    f"{where}.safety_margin: {format_duration(margin)} is not shorter than lead_time"
                    f" {format_duration(lead)} (secret {secret.name!r}): every rotation would start at its due"
                    " instant, outside the window (shorten safety_margin or lengthen lead_time)")
    for where, ref in _core_references(parts):
        if isinstance(ref, Mapping) and "backend" in ref and ref["backend"] not in parts.backends:
            problems.append(f"{where}.backend: unknown backend {ref['backend']!r}"
                            f"{_known(parts.backends, str(ref['backend']))}")
    problems += _hook_problems(parts)
    return problems


def _hook_problems(parts: _Parts) -> list[str]:
    problems = []
    if parts.rotator is not None:
        lease = parts.rotator.lease
        for where, hook in parts.all_hooks():
            if hook.timeout > lease / 3:   # a hook runs as one step: the lease is renewed around it, not during
                problems.append(f"{where}.timeout: {format_duration(hook.timeout)} is longer than a third of"
                                f" rotator.lease ({format_duration(lease)}): a rotation's claim could"
                                " run out while the hook runs (shorten the timeout or lengthen the lease)")
    named: dict[str, int] = {}
    shared = dict(parts.hooks)
    for index, hook in parts.hooks:
        if hook.name in named:
            problems.append(f"hooks[{index}].name: duplicate hook name {hook.name!r}")
        named[hook.name] = index
    used = set()
    for index, secret in parts.secrets:
        inline = set()
        for h_index, entry in enumerate(secret.hooks):
            where = f"secrets[{index}].hooks[{h_index}]"
            if isinstance(entry, str):
                if entry not in named:
                    problems.append(f"{where}: unknown hook {entry!r}{_known(named, entry)}")
                used.add(entry)
                name = entry
            else:
                if entry.all_secrets:
                    problems.append(f"{where}.all_secrets: only for [[hooks]]")
                if entry.name in named:
                    problems.append(f"{where}.name: {entry.name!r} is also a [[hooks]] name (inline hooks"
                                    " need a name of their own)")
                name = entry.name
            if name in inline:
                problems.append(f"{where}: hook {name!r} listed twice")
            inline.add(name)
    for name, index in named.items():
        if name not in used and not shared[index].all_secrets:
            problems.append(f"hooks[{index}] ({name}): no secret uses it (list it in a secret's hooks or set"
                            " all_secrets = true)")
    return problems


def _known(names: Mapping[str, Any], wrong: str | None = None) -> str:
    if not names:
        return " (none configured)"
    close = closest(wrong, names) if wrong is not None else None
    hint = f"did you mean {close!r}? " if close else ""
    return f" ({hint}configured: {', '.join(sorted(names))})"


def _within(inner: str, outer: str) -> bool:
    """Whether the field path ``inner`` is ``outer`` or lies inside it."""
    return inner == outer or inner.startswith((outer + ".", outer + "[", outer + " "))


def _located(source: str, line: str, origins: Mapping[str, str]) -> str:
    where = line.split(": ", 1)[0]
    names = [name for path, name in origins.items() if _within(where, path) or _within(path, where)]
    note = f" (set by {', '.join(dict.fromkeys(names))})" if names and not line.startswith("ROTATOR_") else ""
    return f"{source}: {line}{note}"


class _Loading:
    """What :func:`load` hands the settings source it is about to run (a context variable, so
    concurrent loads in threads stay apart), and gets back from it."""

    def __init__(self, environ: Mapping[str, str] | None) -> None:
        self.environ = environ
        self.sources: list[EnvOverrides] = []

    @property
    def applied(self) -> Applied:
        return self.sources[-1].applied if self.sources else Applied()


_LOADING: contextvars.ContextVar[_Loading | None] = contextvars.ContextVar("rotator_config_loading", default=None)


class _Strict(PydanticBaseSettingsSource):
    """EnvOverrides outside :func:`load` (``Settings(**data)`` directly): a refused override
    raises at once, since there is no report to add it to."""

    def __init__(self, source: EnvOverrides) -> None:
        super().__init__(source.settings_cls)
        self._source = source

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values = self._source()
        if self._source.applied.problems:
            raise ConfigError("\n".join(f"environment: {p}" for p in self._source.applied.problems))
        return values


def load(path: str | os.PathLike[str] | None = None, *, data: Mapping[str, Any] | None = None,
         environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the configuration; raise one ConfigError listing every problem found,
    one line each, naming the file and the field path (or the environment variable).

    ``path`` defaults to ``$ROTATOR_CONFIG``. ``data`` (already-parsed TOML) is for callers that
    build a config in code, such as ``rotator demo``. Environment overrides (``ROTATOR_...``) apply
    to both; ``environ`` replaces ``os.environ`` for them (``{}``: none).

    Nothing is resolved or contacted here: credential references, provider sections, targets and
    timing against the issuers' key lifetimes are checked when :class:`rotator.runtime.Runtime` is
    built. When this check fails, the providers' checks that can run on the document are added to
    the same report (best effort), so one run shows every problem.
    """
    source = "<embedded>"
    if data is None:
        path = path or os.environ.get(CONFIG_ENV)
        if not path:
            raise ConfigError(f"no configuration: pass --config FILE or set {CONFIG_ENV}")
        source = str(path)
        data = read_document(path)
    loading = _Loading(environ)
    token = _LOADING.set(loading)
    try:
        try:
            settings: Settings | None = Settings(**data)
            lines: list[str] = []
        except ValidationError as exc:
            settings, lines = None, describe(exc, model=Settings)
    finally:
        _LOADING.reset(token)
    applied = loading.applied
    problems = [*applied.problems, *lines]
    if settings is not None and not problems:
        settings._source = source
        settings._origins = dict(applied.origins)
        return settings
    from rotator.runtime import section_problems

    document = applied.document or data
    parts = _Parts.of(settings) if settings is not None else _Parts.salvage(document)
    if settings is None:           # the checks across sections did not run: run them on what validates
        problems += [p for p in _cross_problems(parts) if p not in problems]
    problems += [p for p in section_problems(
        document, secrets=parts.secrets, default_lead=parts.rotator.lead_time if parts.rotator else None,
        references=_core_references(parts), resolve=source != "<embedded>") if p not in problems]
    raise ConfigError("\n".join(_located(source, line, applied.origins) for line in problems))


def read_document(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The TOML document in ``path``; ConfigError naming the file, and the line and column of a
    byte that is not UTF-8 or of what is not TOML."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{source}: file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{source}: is a directory, not a configuration file") from None
    except PermissionError:
        raise ConfigError(f"{source}: cannot read: permission denied") from None
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(f"{source}: line {line}, column {column}: not UTF-8 (byte 0x{raw[exc.start]:02x} at"
                          f" offset {exc.start}); save the file as UTF-8") from None
    text = text.removeprefix("\ufeff")          # a byte-order mark some editors write
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: {_toml_problem(str(exc), text)}") from None


def _toml_problem(message: str, text: str) -> str:
    """tomllib's "Invalid value (at line 3, column 9)" as "line 3, column 9: not valid TOML:
    invalid value", with a hint for the usual slip (a string without quotes)."""
    match = re.search(r"\s*\(at line (\d+), column (\d+)\)\s*$", message)
    if match is None:
        end = re.search(r"\s*\(at end of document\)\s*$", message)
        if end is None:
            return f"not valid TOML: {message}"
        return f"at the end of the file: not valid TOML: {message[:end.start()]}"
    line, column = int(match.group(1)), int(match.group(2))
    problem = message[:match.start()]
    hint = ""
    lines = text.splitlines()
    slips = ("Invalid value", "Expected newline or end of document after a statement")
    if problem.startswith(slips) and 0 < line <= len(lines):
        assignment = re.match(r"\s*([A-Za-z0-9_.\-\"']+)\s*=\s*([^\s\"'\[{#][^#]*?)\s*(#.*)?$", lines[line - 1])
        if assignment is not None:
            key, bare = assignment.group(1), assignment.group(2)
            if bare.lower() in ("true", "false"):
                hint = f" (TOML's booleans are lower-case: {key} = {bare.lower()})"
            else:
                hint = f" (a text value needs quotes: {key} = \"...\")"
    return f"line {line}, column {column}: not valid TOML: {problem[:1].lower()}{problem[1:]}{hint}"
