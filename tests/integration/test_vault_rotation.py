"""End-to-end rotations with a Vault (OpenBao) backend: the engine, the QuivaWorks emulator over
HTTP, a real `bao server -dev`, and file backends beside it. Counts the requests each rotation
makes to Vault (docs/backends/vault.md, "Requests per rotation")."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest

from rotator.models import Phase

GRACE = timedelta(hours=48)

# One rotation of an adopted, due key: run 1 (issue … promote) and run 2 (after grace: revoke, finish).
PRIMARY_RUN_1 = ["read", "write_record", "stage", "promote", "promote.metadata"]   # no read-back after its CAS
PRIMARY_RUN_2 = ["read", "write_record"]   # the new key's id is known since its issue
SECONDARY_RUN_1 = ["deploy.read", "deploy", "deploy.metadata", "read"]
SECONDARY_RUN_2 = ["read"]


@pytest.fixture
def vault(world, openbao, vault_prefix, monkeypatch):
    """A `vault` backend (KV v2, token from $VAULT_TOKEN) and a `vault1` one (KV v1) in the world."""
    monkeypatch.setenv("VAULT_TOKEN", openbao.root_token)
    auth = {"method": "token", "token": {"env": "VAULT_TOKEN"}}
    world.backends["vault"] = {"type": "vault_kv", "url": openbao.url, "auth": auth}
    world.backends["vault1"] = {"type": "vault_kv", "url": openbao.url, "kv_version": 1,
                                "mount_point": openbao.kv1_mount, "auth": auth}
    return vault_prefix


def vault_ops(world, backend: str = "vault") -> list[str]:
    ops = [op for provider, op, _ in world.calls if provider == backend]
    world.calls.clear()
    return ops


def raw(openbao, path: str, version: int | None = None) -> dict:
    return openbao.client().secrets.kv.v2.read_secret_version(
        path=path, version=version, raise_on_deleted_version=True)["data"]


def test_vault_primary_and_file_secondary_through_grace_and_revoke(world, vault, openbao, emulator, clock):
    path = f"{vault}/apps/web/quiva"
    world.add_secret("web", targets=[{"backend": "vault", "path": path}, {"backend": "app", "path": "web.json"}])
    old = world.seed("web", age=timedelta(days=10))
    assert world.rotate().outcomes[0].actions[0].startswith("adopted")
    clock.advance(timedelta(days=70))                        # 10 days before expiry: due
    world.calls.clear()

    first = world.rotate()
    assert first.exit_code == 0 and first.outcomes[0].status == "changed"
    assert vault_ops(world) == PRIMARY_RUN_1
    record = world.record("web")
    assert record.phase is Phase.GRACE
    world.assert_i1("web")
    assert emulator.is_active(old)
    new = raw(openbao, path)["data"]["api_key"]
    assert new != old and raw(openbao, path)["data"]["rotator"]["previous"] == old
    version = raw(openbao, path)["metadata"]["version"]
    assert raw(openbao, path, version - 1)["data"]["api_key"] == old     # the previous KV version
    meta = openbao.client().secrets.kv.v2.read_secret_metadata(path=path)["data"]["custom_metadata"]
    assert meta["rotator_rotation_id"] == record.rotation_id
    assert meta["rotator_fingerprint"] == record.current.fingerprint
    assert all(new not in v and old not in v for v in meta.values())

    clock.advance(GRACE + timedelta(hours=1))
    world.calls.clear()
    done = world.rotate()
    assert done.exit_code == 0
    assert vault_ops(world) == PRIMARY_RUN_2
    assert not emulator.is_active(old)
    record = world.record("web")
    assert record.phase is Phase.IDLE and record.previous is None and record.rotations == 1
    meta = openbao.client().secrets.kv.v2.read_secret_metadata(path=path)["data"]["custom_metadata"]
    assert meta["rotator_key_id"] == record.current.key_id is not None
    world.assert_i1("web")
    assert len(PRIMARY_RUN_1) + len(PRIMARY_RUN_2) == 7           # as documented

    world.calls.clear()
    again = world.rotate().outcomes[0]                             # I5: nothing more to do
    assert again.status == "ok" and not again.actions and vault_ops(world) == ["read"]


@pytest.mark.parametrize("backend, run_1, run_2", [
    ("vault", SECONDARY_RUN_1, SECONDARY_RUN_2),
    ("vault1", ["deploy.read", "deploy", "read"], ["read"]),          # KV v1: no versions, no metadata
])
def test_file_primary_and_vault_secondary_request_count(world, vault, openbao, clock, backend, run_1, run_2):
    path = f"{vault}/apps/web/quiva"
    world.add_secret("web", targets=[{"backend": "store", "path": "web.json"}, {"backend": backend, "path": path}])
    world.seed("web", age=timedelta(days=80))
    world.rotate()                                                 # adopt + rotate (first run: not counted)
    clock.advance(GRACE + timedelta(hours=1))
    world.rotate()
    clock.advance(timedelta(days=80))
    world.calls.clear()

    assert world.rotate().outcomes[0].status == "changed"
    assert vault_ops(world, backend) == run_1
    clock.advance(GRACE + timedelta(hours=1))
    assert world.rotate().exit_code == 0
    assert vault_ops(world, backend) == run_2
    assert world.record("web").rotations == 2
    world.assert_i1("web")
    current = world.snapshots("web")[f"store:{world.root / 'store' / 'web.json'}"].current.reveal()
    if backend == "vault":
        data = raw(openbao, path)["data"]
    else:
        data = openbao.client().secrets.kv.v1.read_secret(path=path, mount_point=openbao.kv1_mount)["data"]
    assert data["api_key"] == current and "pending" not in data.get("rotator", {})


def test_bootstrap_into_an_empty_vault_with_a_kv1_secondary(world, vault, openbao):
    primary, secondary = f"{vault}/apps/batch/quiva", f"{vault}/apps/batch/quiva"
    world.add_secret("batch", targets=[{"backend": "vault", "path": primary},
                                       {"backend": "vault1", "path": secondary},
                                       {"backend": "app", "path": "batch.json"}])
    report = world.rotate()
    assert report.exit_code == 0, report.outcomes
    record = world.record("batch")
    assert record.phase is Phase.IDLE and record.rotations == 1
    world.assert_i1("batch")
    meta = openbao.client().secrets.kv.v2.read_secret_metadata(path=primary)["data"]
    assert meta["cas_required"] is True
    v1 = openbao.client().secrets.kv.v1.read_secret(path=secondary, mount_point=openbao.kv1_mount)["data"]
    assert v1["api_key"] == raw(openbao, primary)["data"]["api_key"]


def test_two_rotations_in_a_row_keep_one_live_key(world, vault, emulator, clock):
    world.add_secret("web", targets=[{"backend": "vault", "path": f"{vault}/web"},
                                     {"backend": "app", "path": "web.json"}])
    world.seed("web", age=timedelta(days=80))
    for _ in range(2):
        assert world.rotate().exit_code == 0
        world.assert_i1("web")
        clock.advance(GRACE + timedelta(hours=1))
        assert world.rotate().exit_code == 0
        world.assert_i1("web")
        clock.advance(timedelta(days=80))
    assert world.record("web").rotations == 2
    live = [r for r in emulator.keys() if r["name"].startswith("web") and r["deleted_on"] is None]
    assert len(live) == 1


def test_a_read_only_token_fails_clearly_before_issuing_anything(world, vault, openbao, emulator, monkeypatch):
    path = f"{vault}/apps/web/quiva"
    world.add_secret("web", targets=[{"backend": "vault", "path": path}, {"backend": "app", "path": "web.json"}])
    old = world.seed("web", age=timedelta(days=80))
    monkeypatch.setenv("VAULT_TOKEN", openbao.token(f'path "secret/data/{path}" {{ capabilities = ["read"] }}'))

    outcome = world.rotate().outcomes[0]
    assert outcome.status == "failed" and outcome.retry is False
    assert f"needs the 'update' capability on 'secret/data/{path}'" in outcome.error
    assert emulator.counters().get("POST /accounts/api-key", 0) == 0   # nothing minted, nothing orphaned
    assert raw(openbao, path)["data"]["api_key"] == old
    world.assert_i1("web")


def test_no_key_value_or_token_in_debug_logs_events_or_errors(world, vault, openbao, emulator, clock, caplog,
                                                             monkeypatch):
    caplog.set_level(logging.DEBUG)                                # hvac, urllib3 and rotator, unredacted
    path = f"{vault}/apps/web/quiva"
    world.add_secret("web", targets=[{"backend": "vault", "path": path}, {"backend": "app", "path": "web.json"}])
    world.seed("web", age=timedelta(days=80))
    reports = [world.rotate()]
    clock.advance(GRACE + timedelta(hours=1))
    reports.append(world.rotate())
    reader = openbao.token(f'path "secret/data/{path}" {{ capabilities = ["read"] }}')
    monkeypatch.setenv("VAULT_TOKEN", reader)
    reports.append(world.rotate(force=True))                       # fails: permission denied
    assert reports[-1].outcomes[0].status == "failed"

    text = "\n".join([caplog.text, *map(repr, world.events), *(repr(r.outcomes) for r in reports)])
    assert "secret/data/" in text                                  # the log did see the requests
    for value in emulator.issued_values():
        assert value not in text
    assert openbao.root_token not in text and reader not in text
