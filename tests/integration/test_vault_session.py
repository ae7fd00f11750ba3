"""The Vault backend's HTTP session: the environment is read once (not per request), proxies and
CA bundle from it still apply, and the connection pool is as large as the engine's worker pool."""

from __future__ import annotations

import threading

import pytest

from rotator_providers.vault.backend import VaultKVBackend
from rotator.errors import BackendUnavailable
from rotator.models import KeyRef, Secret
from rotator.testing import provider_context


def build(openbao, workers: int = 1, **settings) -> VaultKVBackend:
    context = provider_context(environ={"VAULT_TOKEN": openbao.root_token}, workers=workers)
    return VaultKVBackend("vault", {"url": openbao.url, "timeout": "2s", **settings}, context)


def test_requests_do_not_scan_the_environment_and_the_pool_fits_the_workers(openbao, vault_prefix, monkeypatch):
    import requests.sessions

    backend = build(openbao, workers=16)
    target = backend.target({"path": f"{vault_prefix}/apps/pool/quiva"})
    scans = []
    original = requests.sessions.Session.merge_environment_settings

    def counting(self, *args, **kwargs):
        if self.trust_env:
            scans.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(requests.sessions.Session, "merge_environment_settings", counting)
    value = Secret("sk-pool-check-0001")
    threads = [threading.Thread(target=backend.deploy, args=(target, value, None, KeyRef.of(value)))
               for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert backend.read(target).current == value
    assert scans == [], "no per-request environment lookup"
    session = backend._connection._client.adapter.session
    assert session.trust_env is False
    adapter = session.get_adapter(openbao.url)
    assert adapter._pool_maxsize == 16
    backend.close()


def test_proxy_settings_from_the_environment_still_apply(openbao, vault_prefix, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")     # nothing listens there
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    through_proxy = build(openbao)
    with pytest.raises(BackendUnavailable):
        through_proxy.read(through_proxy.target({"path": f"{vault_prefix}/apps/proxy/quiva"}))
    through_proxy.close()
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    direct = build(openbao)
    assert direct.read(direct.target({"path": f"{vault_prefix}/apps/proxy/quiva"})).version is None
    direct.close()
