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
from rotator.timeutil import parse_duration
from rotator.validation import StrictModel, describe

CONFIG_ENV = "ROTATOR_CONFIG"
DEFAULT_KEY_NAME = "{secret} [{rotation}]"
_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"

Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


class Defaults(StrictModel):
    """``[rotator]``: defaults for every managed secret, and how the runner behaves."""

    lead_time: Duration = timedelta(days=14)
    grace: Duration = timedelta(hours=48)
    check_interval: Duration = timedelta(hours=1)
    lease: Duration = timedelta(minutes=15)
    workers: int = Field(default=4, ge=1, le=64)
    runner_id: str | None = None
    repair_drift: bool = False     # sync (and the daemon's reconcile) repairs drift, as with --repair

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
    """One alert webhook. ``url`` may embed a token (Slack): prefer ``{ env = "NAME" }``."""

    url: str | dict[str, Any]
    format: Literal["generic", "slack"] = "generic"

    @model_validator(mode="after")
    def _url(self) -> WebhookSpec:
        if isinstance(self.url, str):
            if not re.match(r"^https?://[^\s]+$", self.url):
                raise ValueError("url: expected http(s)://... or a reference like { env = \"NAME\" }")
        else:
            kinds = [k for k in ("env", "file", "backend") if k in self.url]
            if len(kinds) != 1:
                raise ValueError("url: give exactly one of env, file or backend")
        return self


class AlertSettings(StrictModel):
    """``[alerts]``: webhook notifications for failures, rollbacks, drift and escalations."""

    webhooks: list[WebhookSpec] = []
    escalate_at: list[Duration] = Field(
        default_factory=lambda: [timedelta(days=13), timedelta(days=10), timedelta(days=7)])
    repeat_after: Duration = timedelta(hours=24)    # re-send a still-open alert after this; 0s: never
    timeout: Duration = timedelta(seconds=5)        # per webhook delivery

    @model_validator(mode="after")
    def _alerts(self) -> AlertSettings:
        if any(t <= timedelta(0) for t in self.escalate_at):
            raise ValueError("escalate_at: every lead time must be positive")
        if self.repeat_after < timedelta(0) or self.timeout <= timedelta(0):
            raise ValueError("repeat_after must not be negative and timeout must be positive")
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
        if problems:
            raise ValueError("; ".join(problems))
        return self

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
            # Cross-reference problems arrive as one "(top level): Value error, a; b" line.
            line = line.replace("(top level): Value error, ", "").replace(": Value error, ", ": ")
            lines.extend(part.strip() for part in line.split("; "))
        raise ConfigError("\n".join(f"{source}: {line}" for line in lines)) from None
