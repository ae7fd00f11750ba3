"""How the backend gets a Vault token: a token from the environment or a file, AppRole, or
Kubernetes service-account login. Each method can be asked for a fresh token again when the
current one expires or Vault says it is gone.

Nothing here keeps a token in a message: tokens and secret ids are :class:`Secret` values (so the
redactor masks them everywhere) and travel to hvac only at the last moment.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rotator.errors import BackendError, BackendPermissionError
from rotator.models import Secret

from rotator_providers.vault.settings import AppRoleAuth, KubernetesAuth, TokenAuth

#: Monotonic seconds; a module attribute so tests can move it.
monotonic: Callable[[], float] = time.monotonic


@dataclass(frozen=True)
class Login:
    token: Secret
    ttl: float | None = None          # seconds; None: unknown or never expires
    obtained: float = 0.0             # monotonic seconds

    def refresh_due(self, now: float) -> bool:
        """Log in again a little before the token expires (10 % of its life, at most a minute)."""
        if not self.ttl:
            return False
        return now >= self.obtained + self.ttl - min(60.0, self.ttl / 10)


class Authenticator:
    """Base: ``login(client)`` returns a fresh :class:`Login` or raises a BackendError."""

    method = ""

    def __init__(self, provider: str, where: str, resolve: Callable[[Any, str], Secret]) -> None:
        self.provider = provider
        self.where = where
        self._resolve = resolve

    def login(self, client: Any) -> Login:
        raise NotImplementedError

    @property
    def login_path(self) -> str | None:
        """The Vault path ``login`` calls (None: no call, the token comes from elsewhere)."""
        return None

    def describe(self) -> str:
        return self.method


class TokenAuthenticator(Authenticator):
    method = "token"

    def __init__(self, settings: TokenAuth, provider: str, where: str,
                 resolve: Callable[[Any, str], Secret]) -> None:
        super().__init__(provider, where, resolve)
        self._ref = settings.token

    def login(self, client: Any) -> Login:
        # Re-read on every login: Vault Agent (or a person) may have replaced the token file.
        return Login(self._resolve(self._ref, f"{self.where}.token"), None, monotonic())

    def describe(self) -> str:
        kind, source = next(iter(self._ref.items()))
        return f"token from {'environment variable' if kind == 'env' else kind} {source}"


class _MountedAuthenticator(Authenticator):
    """An auth method mounted at ``settings.mount_point``, logged in at ``auth/<mount>/login``."""

    def __init__(self, settings: Any, provider: str, where: str,
                 resolve: Callable[[Any, str], Secret]) -> None:
        super().__init__(provider, where, resolve)
        self._settings = settings

    @property
    def login_path(self) -> str:
        return f"auth/{self._settings.mount_point}/login"


class AppRoleAuthenticator(_MountedAuthenticator):
    method = "approle"
    _settings: AppRoleAuth

    def login(self, client: Any) -> Login:
        role_id = self._resolve(self._settings.role_id, f"{self.where}.role_id")
        secret_id = self._resolve(self._settings.secret_id, f"{self.where}.secret_id")
        response = client.auth.approle.login(
            role_id=role_id.reveal(), secret_id=secret_id.reveal(), use_token=False,
            mount_point=self._settings.mount_point,
        )
        return _login_from(response, self.provider, self.login_path)


class KubernetesAuthenticator(_MountedAuthenticator):
    method = "kubernetes"
    _settings: KubernetesAuth

    def login(self, client: Any) -> Login:
        path = Path(self._settings.jwt_file)
        try:
            jwt = path.read_text().strip()   # re-read each time: the kubelet rotates it
        except OSError as exc:
            raise BackendError(
                f"cannot read the service-account token {path} for Kubernetes login:"
                f" {exc.strerror or type(exc).__name__} (is a service account mounted?)",
                provider=self.provider,
            ) from None
        if not jwt:
            raise BackendError(f"the service-account token file {path} is empty", provider=self.provider)
        Secret(jwt)   # registers it with the redactor
        response = client.auth.kubernetes.login(
            role=self._settings.role, jwt=jwt, use_token=False, mount_point=self._settings.mount_point,
        )
        return _login_from(response, self.provider, self.login_path)

    def describe(self) -> str:
        return f"kubernetes role {self._settings.role!r}"


def authenticator(settings: Any, provider: str, where: str,
                  resolve: Callable[[Any, str], Secret]) -> Authenticator:
    kinds = {TokenAuth: TokenAuthenticator, AppRoleAuth: AppRoleAuthenticator,
             KubernetesAuth: KubernetesAuthenticator}
    return kinds[type(settings)](settings, provider, where, resolve)


def _login_from(response: Any, provider: str, path: str) -> Login:
    auth = response.get("auth") if isinstance(response, dict) else None
    token = auth.get("client_token") if isinstance(auth, dict) else None
    if not token:
        raise BackendPermissionError(f"login at {path} returned no token", provider=provider)
    ttl = auth.get("lease_duration") or None
    return Login(Secret(token), float(ttl) if ttl else None, monotonic())
