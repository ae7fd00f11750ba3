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
from typing import Annotated, Any, Mapping

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
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


class Settings(BaseSettings):
    """The whole configuration."""

    model_config = SettingsConfigDict(
        env_prefix="ROTATOR_", env_nested_delimiter="__", extra="forbid", frozen=True,
    )

    rotator: Defaults = Defaults()
    issuers: dict[str, ProviderSection] = {}
    backends: dict[str, ProviderSection] = {}
    secrets: list[SecretSpec] = []

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
