"""The ``vault_kv`` backend's settings and target entries, validated without the network.

Credentials (a token, an AppRole secret id) are never values in the config: they are references
(``{ env = "VAULT_TOKEN" }``, ``{ file = "/path" }``) checked here and resolved on first use.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any, Literal, Mapping, Union

from pydantic import BeforeValidator, Field, field_validator, model_validator

from rotator.credentials import check_reference
from rotator.timeutil import parse_duration
from rotator.validation import StrictModel, insecure_http_problem, insecure_http_warning, parse

from rotator_providers.document import TargetFields, reserved_field

DEFAULT_JWT_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"


def _mount(text: str) -> str:
    cleaned = text.strip().strip("/")
    if not cleaned:
        raise ValueError("must name a mount, e.g. 'secret'")
    if any(part in ("", ".", "..") for part in cleaned.split("/")):
        raise ValueError("must not contain empty, '.' or '..' segments")
    return cleaned


def _seconds(value: Any) -> float:
    delta = parse_duration(value)
    seconds = delta.total_seconds() if isinstance(delta, timedelta) else float(delta)
    if not 0 < seconds <= 600:
        raise ValueError("must be between 0 and 10 minutes, e.g. '10s'")
    return seconds


Mount = Annotated[str, BeforeValidator(lambda v: _mount(v) if isinstance(v, str) else v)]


class TokenAuth(StrictModel):
    """A token made elsewhere (Vault Agent, a CI job): read from the environment or a file."""

    method: Literal["token"] = "token"
    token: Any = Field(default_factory=lambda: {"env": "VAULT_TOKEN"})


class AppRoleAuth(StrictModel):
    method: Literal["approle"]
    role_id: Any
    secret_id: Any
    mount_point: Mount = "approle"


class KubernetesAuth(StrictModel):
    method: Literal["kubernetes"]
    role: str = Field(min_length=1)
    jwt_file: str = Field(default=DEFAULT_JWT_FILE, min_length=1)
    mount_point: Mount = "kubernetes"


def _default_method(value: Any) -> Any:
    if isinstance(value, Mapping) and "method" not in value:
        return {"method": "token", **value}
    return value


Auth = Annotated[
    Union[TokenAuth, AppRoleAuth, KubernetesAuth],
    Field(discriminator="method"),
    BeforeValidator(_default_method),
]


class VaultSettings(StrictModel):
    url: str
    kv_version: Literal[1, 2] = 2
    mount_point: Mount = "secret"
    namespace: str | None = None
    max_versions: int | None = Field(default=None, ge=2, le=1000)
    create_if_missing: bool = True
    custom_metadata: bool = True
    verify: bool = True            # false: Vault's certificate is not checked (warned about at every start)
    insecure_http: bool = False    # allow plain http:// to a host that is not loopback (warned about too)
    ca_cert: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    timeout: Annotated[float, BeforeValidator(_seconds)] = 10.0
    auth: Auth = Field(default_factory=TokenAuth)

    @field_validator("url")
    @classmethod
    def _http_url(cls, text: str) -> str:
        text = text.strip().rstrip("/")
        if not text.startswith(("http://", "https://")) or len(text.split("://", 1)[1]) == 0:
            raise ValueError("expected an http:// or https:// URL, e.g. 'https://vault.internal:8200'")
        return text

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, text: str | None) -> str | None:
        if text is None:
            return None
        cleaned = text.strip().strip("/")
        return cleaned or None

    @model_validator(mode="after")
    def _tls(self) -> VaultSettings:
        problems = []
        if (self.client_cert is None) != (self.client_key is None):
            problems.append("client_cert and client_key go together: give both or neither")
        if self.ca_cert is not None and not self.verify:
            problems.append("ca_cert is set but verify = false turns verification off; drop one")
        clear = insecure_http_problem(self.url, "url", "Vault's token and every key")
        if clear and not self.insecure_http:
            problems.append(clear)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def warnings(self, where: str) -> list[str]:
        """What this section allows but should not: plain http with ``insecure_http``, and TLS
        verification turned off with ``verify = false``."""
        found = []
        if self.insecure_http:
            warning = insecure_http_warning(self.url, where, "Vault's token, with every key,")
            if warning:
                found.append(warning)
        if not self.verify and self.url.lower().startswith("https://"):
            found.append(f"{where}: verify = false: Vault's TLS certificate is not checked, so anyone on the"
                         " path can impersonate Vault and read its token and every key; give the CA with"
                         " ca_cert instead")
        return found

    def references(self, where: str) -> dict[str, Any]:
        """The credential references of this section, by field path (the default token included)."""
        auth = self.auth
        if isinstance(auth, TokenAuth):
            return {f"{where}.auth.token": auth.token}
        if isinstance(auth, AppRoleAuth):
            return {f"{where}.auth.role_id": auth.role_id, f"{where}.auth.secret_id": auth.secret_id}
        return {}

    @property
    def tls_verify(self) -> bool | str:
        return self.ca_cert if self.ca_cert else self.verify

    @property
    def tls_cert(self) -> tuple[str, str] | None:
        if self.client_cert and self.client_key:
            return (self.client_cert, self.client_key)
        return None


def load_settings(raw: Mapping[str, Any], where: str) -> VaultSettings:
    settings = parse(VaultSettings, raw, where)
    auth = settings.auth
    if isinstance(auth, TokenAuth):
        check_reference(auth.token, f"{where}.auth.token")
    elif isinstance(auth, AppRoleAuth):
        check_reference(auth.role_id, f"{where}.auth.role_id")
        check_reference(auth.secret_id, f"{where}.auth.secret_id")
    return settings


class VaultTargetSpec(StrictModel):
    path: str = Field(min_length=1)
    field: str = Field(default="api_key", min_length=1)
    fields: TargetFields = None
    mount_point: Mount | None = None

    @field_validator("path")
    @classmethod
    def _path(cls, text: str) -> str:
        cleaned = text.strip().strip("/")
        if not cleaned:
            raise ValueError("must name a secret, e.g. 'apps/web/quiva'")
        if any(part in ("", ".", "..") for part in cleaned.split("/")):
            raise ValueError("must not contain empty, '.' or '..' segments")
        if any(ch in cleaned for ch in "\0?#"):
            raise ValueError("must not contain NUL, '?' or '#'")
        return cleaned

    @field_validator("field")
    @classmethod
    def _not_reserved(cls, text: str) -> str:
        return reserved_field(text)
