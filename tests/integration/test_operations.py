"""Operations over real backends and the emulator: sync (drift and repair), verify, the audit
review, and the compromised-key incident procedure."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from rotator.cli import main
from tests.world import ADMIN_EMAIL, to_toml


@pytest.fixture
def ops(world, clock, tmp_path, monkeypatch, emulator):
    """Two secrets rotated once, on the real clock, with the config in a file, signing in with an
    admin key made now (verify fails on an admin key close to expiry that rotator does not manage)."""
    clock.set(datetime.now(timezone.utc))
    monkeypatch.setenv("QUIVA_API_KEY", emulator.add_user(ADMIN_EMAIL, role="admin"))
    world.defaults["grace"] = "0s"
    world.add_secret("web")
    world.add_secret("batch", targets=[{"backend": "store", "path": "batch.json"},
                                       {"backend": "app", "path": "batch.json"},
                                       {"backend": "app", "path": "batch-copy.json"}])
    path = tmp_path / "rotator.toml"
    path.write_text(to_toml(world.config_data()))
    monkeypatch.setenv("ROTATOR_CONFIG", str(path))
    assert main(["--log-level", "error", "rotate"]) == 0
    return world


def run(capsys, *argv):
    code = main(["--log-level", "error", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def app_file(world, name):
    return world.root / "app" / name


def targets(out):
    """By (secret, "backend:file name"), e.g. ("web", "app:web.json")."""
    return {(t["secret"], t["target"].split(":")[0] + ":" + t["target"].rsplit("/", 1)[-1]): t
            for t in json.loads(out)["targets"]}


def test_sync_reports_nothing_when_in_step(ops, capsys):
    code, out, _ = run(capsys, "sync", "-o", "json")
    assert code == 0 and all(t["state"] == "ok" for t in json.loads(out)["targets"])


def test_sync_finds_and_repairs_a_deleted_and_a_hand_changed_target(ops, capsys):
    app_file(ops, "web.json").unlink()
    app_file(ops, "batch.json").write_text(json.dumps({"api_key": "ms-" + "0" * 32}))
    code, out, _ = run(capsys, "sync", "-o", "json")
    found = targets(out)
    assert code == 1
    assert found[("web", "app:web.json")]["state"] == "missing"
    assert found[("batch", "app:batch.json")]["state"] == "different"
    code, out, _ = run(capsys, "sync", "--repair", "-o", "json")
    assert code == 0 and {t["state"] for t in json.loads(out)["targets"]} <= {"ok", "repaired"}
    ops.assert_i1("web")
    ops.assert_i1("batch")
    assert run(capsys, "sync")[0] == 0


def test_sync_reports_a_corrupt_payload_and_never_overwrites_it(ops, capsys):
    app_file(ops, "batch.json").write_text("{ this is not json")
    app_file(ops, "batch-copy.json").unlink()
    code, out, _ = run(capsys, "sync", "--repair", "-o", "json")
    found = targets(out)
    assert code == 1
    assert found[("batch", "app:batch.json")]["state"] == "corrupt" and "not valid JSON" in found[("batch", "app:batch.json")]["detail"]
    assert found[("batch", "app:batch-copy.json")]["state"] == "repaired", "the other target is still repaired"
    assert app_file(ops, "batch.json").read_text() == "{ this is not json"


def test_sync_repair_survives_a_target_that_fails_and_keeps_going(ops, capsys):
    app_file(ops, "batch.json").unlink()
    app_file(ops, "batch-copy.json").unlink()
    app_file(ops, "batch-copy.json").mkdir()                     # a write there fails
    code, out, _ = run(capsys, "sync", "--repair", "-o", "json")
    found = targets(out)
    assert code == 1
    assert found[("batch", "app:batch.json")]["state"] == "repaired"
    assert found[("batch", "app:batch-copy.json")]["state"] not in ("ok", "repaired")


def test_sync_refuses_to_repair_from_a_hand_changed_primary(ops, capsys, emulator):
    other = emulator.create_key(ADMIN_EMAIL, name="someone's key")["key"]
    store = ops.root / "store" / "web.json"
    doc = json.loads(store.read_text())
    doc["api_key"] = other
    store.write_text(json.dumps(doc))
    code, out, _ = run(capsys, "sync", "--repair", "-o", "json")
    found = targets(out)
    assert code == 1
    assert found[("web", "store:web.json")]["state"] == "primary changed-by-hand"
    assert found[("web", "store:web.json")]["detail"] == "rotate adopts it"
    assert json.loads(app_file(ops, "web.json").read_text())["api_key"] != other


def test_verify_ok_then_fails_when_the_issuer_refuses_the_key(ops, capsys, emulator):
    code, out, _ = run(capsys, "verify", "-o", "json")
    assert code == 0 and all(s["ok"] for s in json.loads(out)["secrets"])
    web = json.loads((ops.root / "store" / "web.json").read_text())["api_key"]
    key_id = next(r["id"] for r in emulator.keys() if r["name"].startswith("web [") and r["deleted_on"] is None)
    _delete(emulator, key_id)                                       # a person deletes it in the UI
    assert not emulator.is_active(web)
    code, out, _ = run(capsys, "verify", "-o", "json")
    web_row = next(s for s in json.loads(out)["secrets"] if s["secret"] == "web")
    assert code == 1 and any("refuses" in p for p in web_row["problems"])


def test_verify_fails_on_an_admin_key_about_to_expire_that_rotator_does_not_manage(ops, capsys, emulator,
                                                                                   monkeypatch):
    old = emulator.create_key(ADMIN_EMAIL, name="rotator admin",
                              created_on=datetime.now(timezone.utc) - timedelta(days=86))
    monkeypatch.setenv("QUIVA_API_KEY", old["key"])
    code, out, _ = run(capsys, "verify", "-o", "json")
    data = json.loads(out)
    assert code == 1 and all(s["ok"] for s in data["secrets"]) and data["failed"] == 1
    (credential,) = data["credentials"]
    assert credential["health"] == "expiring" and credential["key_id"] == old["id"]
    code, out, _ = run(capsys, "verify")
    assert code == 1 and f"issuer quiva: admin key …{old['key'][-4:]} (id {old['id']}) expiring: not managed" in out
    assert old["key"] not in out


def test_sync_and_verify_report_a_secret_whose_read_raises_and_check_the_others(ops, capsys, monkeypatch):
    from rotator import drift

    real = drift.check

    def check(secret, ahead=None):
        if secret.name == "web":
            raise ValueError("a record no release wrote")
        return real(secret, ahead)

    monkeypatch.setattr(drift, "check", check)
    code, out, _ = run(capsys, "sync", "-o", "json")
    found = targets(out)
    assert code == 1 and found[("web", "store:web.json")]["state"] == "unreadable"
    assert "ValueError: a record no release wrote" in found[("web", "store:web.json")]["detail"]
    assert found[("batch", "app:batch.json")]["state"] == "ok"
    code, out, _ = run(capsys, "verify", "-o", "json")
    rows = {s["secret"]: s for s in json.loads(out)["secrets"]}
    assert code == 1 and rows["web"]["problems"] == ["ValueError: a record no release wrote"] and rows["batch"]["ok"]


def _delete(emulator, key_id):
    import httpx

    session = httpx.post(f"{emulator.url}/accounts/auth-with-api-key",
                         json={"api_key": emulator.add_user("deleter@example.com")}).json()["data"]["auth_token"]
    httpx.request("DELETE", f"{emulator.url}/accounts/api-key", params={"id": key_id},
                  headers={"Authorization": f"Bearer {session}"})


def test_audit_classifies_every_kind_of_key_and_fix_touches_only_orphans(ops, capsys, emulator, clock):
    now = clock.now()
    # an orphan older than the issuer's in-flight bound: `--fix` revokes it as the sweep would
    orphan = emulator.create_key(ADMIN_EMAIL, name="web [r-deadbeef]", created_on=now - timedelta(hours=1))
    unmanaged = emulator.create_key(ADMIN_EMAIL, name="legacy reporting job", created_on=now - timedelta(days=20))
    vague = emulator.create_key(ADMIN_EMAIL, name="API Key", created_on=now - timedelta(days=5))
    expiring = emulator.create_key(ADMIN_EMAIL, name="old integration", created_on=now - timedelta(days=85))
    expired = emulator.create_key(ADMIN_EMAIL, name="very old integration", created_on=now - timedelta(days=120))
    code, out, _ = run(capsys, "audit", "-o", "json")
    keys = {k["key_id"]: k for k in json.loads(out)["keys"]}
    assert code == 0
    roles = {k["role"] for k in keys.values()}
    assert {"current", "orphan", "unmanaged", "credential"} <= roles
    assert keys[orphan["id"]]["role"] == "orphan" and keys[orphan["id"]]["secret"] == "web"
    assert keys[unmanaged["id"]]["role"] == "unmanaged"
    assert "unclear-name" in keys[vague["id"]]["flags"]
    assert "expiring" in keys[expiring["id"]]["flags"]
    assert "expired" in keys[expired["id"]]["flags"]

    code, out, err = run(capsys, "audit", "--fix", "--yes", "-o", "json")
    revoked = {k["key_id"] for k in json.loads(out)["keys"] if k["revoked"]}
    assert revoked == {orphan["id"]}
    live = {r["id"] for r in emulator.keys() if r["deleted_on"] is None}
    assert orphan["id"] not in live and {unmanaged["id"], vague["id"], expiring["id"]} <= live
    for name in ("web", "batch"):
        ops.assert_i1(name)

    code, out, _ = run(capsys, "audit", "--revoke-unmanaged", "--yes", "-o", "json")
    live = {r["id"] for r in emulator.keys() if r["deleted_on"] is None}
    assert unmanaged["id"] not in live
    for name in ("web", "batch"):
        ops.assert_i1(name)              # managed keys and the rotator's own credential survive
    assert run(capsys, "status")[0] == 0

    code, out, _ = run(capsys, "audit", "-o", "markdown")
    assert out.startswith("# Key review") and "| role |" in out.replace(" role ", " role ")


def test_audit_flags_unused_keys_when_the_issuer_reports_last_use(ops, capsys, emulator, clock):
    import httpx

    now = clock.now()
    emulator.report_last_used = True
    try:
        idle = emulator.create_key(ADMIN_EMAIL, name="idle integration", created_on=now - timedelta(days=40))
        busy = emulator.create_key(ADMIN_EMAIL, name="busy integration", created_on=now - timedelta(days=40))
        clock.set(now - timedelta(days=31))
        for key in (idle, busy):                    # both used 31 days ago ...
            assert httpx.get(f"{emulator.url}/v1/agents", headers={"Authorization": f"Bearer {key['key']}"}).status_code == 200
        clock.set(now)
        httpx.get(f"{emulator.url}/v1/agents", headers={"Authorization": f"Bearer {busy['key']}"})   # ... busy again now
        code, out, _ = run(capsys, "audit", "--issuer", "quiva", "-o", "json")
        keys = {k["key_id"]: k for k in json.loads(out)["keys"]}
        assert code == 0
        assert "unused-30d" in keys[idle["id"]]["flags"] and "unused-30d" not in keys[busy["id"]]["flags"]
        code, out, _ = run(capsys, "audit", "--revoke-unused", "--yes", "-o", "json")
    finally:
        emulator.report_last_used = False
    assert not emulator.is_active(idle["key"]) and emulator.is_active(busy["key"])
    for name in ("web", "batch"):
        ops.assert_i1(name)


def test_revoke_compromised_replaces_everywhere_and_kills_the_old_key(ops, capsys, emulator, monkeypatch):
    old = json.loads((ops.root / "store" / "web.json").read_text())["api_key"]
    from tests.integration.test_daemon import WebhookSink

    trail = ops.root / "audit.jsonl"
    monkeypatch.setenv("ROTATOR_AUDIT__PATH", str(trail))
    hook = WebhookSink()
    monkeypatch.setenv("ROTATOR_ALERTS__WEBHOOKS", json.dumps([{"url": f"{hook.url}/incident", "format": "generic"}]))
    try:
        code, out, _ = run(capsys, "revoke", "web", "--compromised", "-o", "json")
    finally:
        hook.close()
    pages = hook.bodies("/incident")
    assert pages and all(p["kind"] == "incident" for p in pages), pages
    assert old not in json.dumps(pages)
    result = json.loads(out)
    assert code == 0 and result["revoked"] and result["contained"] and not result["forced"]
    assert not emulator.is_active(old)
    ops.assert_i1("web")
    assert all(t["holds"].startswith("new key") for t in result["targets"])
    assert old not in out
    records = [json.loads(line) for line in trail.read_text().splitlines()]
    actions = [r["action"] for r in records]
    assert actions[0] == "compromised" and actions[-1] == "revoked-compromised" and "issued" in actions
    assert records[0]["key_last4"] == old[-4:] and records[0]["result"] == "alert"
    assert old not in trail.read_text()


def test_revoke_compromised_with_a_broken_target_needs_force(ops, capsys, emulator):
    old = json.loads((ops.root / "store" / "batch.json").read_text())["api_key"]
    app_file(ops, "batch-copy.json").unlink()
    app_file(ops, "batch-copy.json").mkdir()                     # deploying there fails
    code, out, _ = run(capsys, "revoke", "batch", "--compromised", "-o", "json")
    result = json.loads(out)
    assert code == 1 and not result["revoked"] and emulator.is_active(old)
    holds = {t["target"].rsplit("/", 1)[-1]: t["holds"] for t in result["targets"]}
    assert holds["batch-copy.json"].startswith("unreadable")
    code, out, _ = run(capsys, "revoke", "batch", "--compromised", "--force", "-o", "json")
    result = json.loads(out)
    assert result["revoked"] and result["forced"] and not emulator.is_active(old)
