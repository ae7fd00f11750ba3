"""Configuration: a TOML file plus environment overrides, validated with pydantic-settings.

The file comes from ``--config`` or ``ROTATOR_CONFIG``. Any setting can be overridden from the
environment with the ``ROTATOR_`` prefix and ``__`` between levels, e.g.
``ROTATOR_ROTATOR__GRACE=24h`` or ``ROTATOR_ISSUERS__QUIVA_PROD__BASE_URL=http://127.0.0.1:8787``.

This module validates the core shape (durations, names, references between sections). Each
provider validates its own section and targets when it is built (see ``rotator.runtime``), so
every error names the file and the field path either way.
"""

from __future__ import annotations

import os
import re
import tomllib
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

from pydantic import (
    BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from rotator.errors import ConfigError
from rotator.timeutil import format_duration, parse_duration
from rotator.validation import StrictModel, describe

CONFIG_ENV = "ROTATOR_CONFIG"
DEFAULT_KEY_NAME = "{secret} [{rotation}]"
_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"

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
        for name in ("lead_time", "check_interval", "lease"):
            if getattr(self, name) <= timedelta(0):
                raise ValueError(f"{name} must be positive")
        if self.grace < timedelta(0):
            raise ValueError("grace must not be negative")
        return self


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
            raise ValueError(f"key_name: bad template ({exc}); use {{secret}} and {{rotation}}") from None
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

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file's content arrives as init kwargs; the environment overrides it.
        return env_settings, init_settings

    @model_validator(mode="after")
    def _references(self) -> Settings:
        problems = []
        for section in ("issuers", "backends"):
            for name in getattr(self, section):
                if not re.match(_NAME, name):
                    problems.append(f"{section}.{name}: names use letters, digits, '.', '_' and '-'")
        seen: set[str] = set()
        for index, secret in enumerate(self.secrets):
            where = f"secrets[{index}]"
            if secret.name in seen:
                problems.append(f"{where}.name: duplicate secret name {secret.name!r}")
            seen.add(secret.name)
            if secret.issuer not in self.issuers:
                problems.append(f"{where}.issuer: unknown issuer {secret.issuer!r}{_known(self.issuers)}")
            for t_index, target in enumerate(secret.targets):
                if target.backend not in self.backends:
                    problems.append(
                        f"{where}.targets[{t_index}].backend: unknown backend"
                        f" {target.backend!r}{_known(self.backends)}"
                    )
        problems.extend(self._hook_problems())
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _hook_problems(self) -> list[str]:
        problems = []
        third = self.rotator.lease / 3
        for where, hook in self._all_hooks():
            if hook.timeout > third:      # a hook runs as one step: the lease is renewed around it, not during
                problems.append(f"{where}.timeout: {format_duration(hook.timeout)} is longer than a third of"
                                f" rotator.lease ({format_duration(self.rotator.lease)}): a rotation's claim could"
                                " run out while the hook runs (shorten the timeout or lengthen the lease)")
        named: dict[str, int] = {}
        for index, hook in enumerate(self.hooks):
            if hook.name in named:
                problems.append(f"hooks[{index}].name: duplicate hook name {hook.name!r}")
            named[hook.name] = index
        used = set()
        for index, secret in enumerate(self.secrets):
            inline = set()
            for h_index, entry in enumerate(secret.hooks):
                where = f"secrets[{index}].hooks[{h_index}]"
                if isinstance(entry, str):
                    if entry not in named:
                        problems.append(f"{where}: unknown hook {entry!r}{_known(named)}")
                    used.add(entry)
                    name = entry
                else:
                    if entry.all_secrets:
                        problems.append(f"{where}.all_secrets: only for [[hooks]]")
                    if entry.name in named:
                        problems.append(f"{where}.name: {entry.name!r} is also a [[hooks]] name; inline hooks"
                                        " need a name of their own")
                    name = entry.name
                if name in inline:
                    problems.append(f"{where}: hook {name!r} listed twice")
                inline.add(name)
        for name, index in named.items():
            if name not in used and not self.hooks[index].all_secrets:
                problems.append(f"hooks[{index}] ({name}): no secret uses it (list it in a secret's hooks or set"
                                " all_secrets = true)")
        return problems

    def _all_hooks(self) -> list[tuple[str, HookSpec]]:
        found = [(f"hooks[{i}]", h) for i, h in enumerate(self.hooks)]
        for index, secret in enumerate(self.secrets):
            found += [(f"secrets[{index}].hooks[{i}]", h) for i, h in enumerate(secret.hooks) if isinstance(h, HookSpec)]
        return found

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


def _known(names: Mapping[str, Any]) -> str:
    return f" (configured: {', '.join(sorted(names))})" if names else " (none configured)"


def load(path: str | os.PathLike[str] | None = None, *, data: Mapping[str, Any] | None = None) -> Settings:
    """Read and validate the configuration; raise ConfigError naming the file and the field.

    ``path`` defaults to ``$ROTATOR_CONFIG``. ``data`` (already-parsed TOML) is for callers that
    build a config in code, such as ``rotator demo``.
    """
    source = "<embedded>"
    if data is None:
        path = path or os.environ.get(CONFIG_ENV)
        if not path:
            raise ConfigError(f"no configuration: pass --config FILE or set {CONFIG_ENV}")
        source = str(path)
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"{source}: file not found") from None
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    try:
        return Settings(**data)
    except ValidationError as exc:
        lines = []
        for line in describe(exc):
            # A model's own checks arrive as one "where: Value error, a; b" line: one line each,
            # and "field: problem" parts join the path ("hooks[0].url: ...").
            where, _, message = line.partition(": ")
            for part in message.removeprefix("Value error, ").split("; "):
                part = part.strip()
                if where == "(top level)":
                    lines.append(part)
                elif re.match(r"^[a-z_]+(\[\d+\])?: ", part):
                    lines.append(f"{where}.{part}")
                else:
                    lines.append(f"{where}: {part}")
        raise ConfigError("\n".join(f"{source}: {line}" for line in lines)) from None
