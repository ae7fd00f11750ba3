"""The monthly review (`rotator audit`) against the real emulator and file backends: shared keys,
what the run's sweep would revoke, held revokes, and revokes that go through the revoke gate
only (held with the reason, confirmed by the issuer's listing, an unconfirmed one an error)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from rotator.cli import main
from rotator.revoker import DEFAULT_IN_FLIGHT
from tests.world import ADMIN_EMAIL, to_toml


@pytest.fixture
def review(world, clock, tmp_path, monkeypatch):
    """Two secrets, web and batch (primary in store/, a copy in app/), on the real clock, the
    config in a file and the audit trail in audit.jsonl. Nothing rotated yet."""
    clock.set(datetime.now(timezone.utc))
    world.defaults["grace"] = "0s"
    world.add_secret("web")
    world.add_secret("batch")
    path = tmp_path / "rotator.toml"
    path.write_text(to_toml(world.config_data()))
    monkeypatch.setenv("ROTATOR_CONFIG", str(path))
    monkeypatch.setenv("ROTATOR_AUDIT__PATH", str(tmp_path / "audit.jsonl"))
    world.outputs = []
    return world


def run(world, capsys, *argv):
    code = main(["--log-level", "error", *argv])
    out, err = capsys.readouterr()
    world.outputs += [out, err]
    return code, out, err


def audit_json(world, capsys, *argv):
    code, out, err = run(world, capsys, "audit", "-o", "json", *argv)
    return code, {k["key_id"]: k for k in json.loads(out)["keys"]}, err


def trail(world):
    path = world.root / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def assert_no_value_printed(world, emulator, admin_key):
    """No key the emulator minted (nor the admin key) in any output or in the audit trail."""
    seen = "\n".join(world.outputs)
    path = world.root / "audit.jsonl"
    if path.exists():
        seen += path.read_text()
    values = set(emulator.issued_values()) | {admin_key}
    assert values and not [v[-4:] for v in values if v in seen]


def bound(world):
    issuer = world.runtime().issuers["quiva"]
    return getattr(issuer, "in_flight_bound", None) or DEFAULT_IN_FLIGHT


def live(emulator, key_id):
    return any(r["id"] == key_id and r["deleted_on"] is None for r in emulator.keys())


def test_a_key_in_two_secrets_is_flagged_shared_with_both_names(review, capsys, emulator, admin_key):
    raw = review.seed("web", timedelta(days=10))
    review.seed_value("batch", raw)                      # one key copied into two applications
    key_id = next(r["id"] for r in emulator.keys() if r["name"] == "web (by hand)")

    # before adoption: only the primaries hold it (same fingerprint), no record names it
    code, keys, _ = audit_json(review, capsys)
    row = keys[key_id]
    assert "shared" in row["flags"].split(",") and row["shared_by"] == ["web", "batch"]
    assert not row["revocable"] and "still served by secret" in row["hold"]

    # after adoption: both records name it as their current key
    assert run(review, capsys, "rotate")[0] == 0
    code, keys, _ = audit_json(review, capsys)
    row = keys[key_id]
    assert code == 0 and row["role"] == "current"
    assert "shared" in row["flags"].split(",") and row["shared_by"] == ["web", "batch"]
    assert "shared by web, batch" in row["notes"]

    code, out, _ = run(review, capsys, "audit")
    line = next(line for line in out.splitlines() if key_id in line and "…" + raw[-4:] in line)
    assert "web, batch" in line and "shared" in line
    assert "shared by web, batch" in out
    code, out, _ = run(review, capsys, "audit", "-o", "markdown")
    assert "| web, batch | shared" in out and "shared by web, batch" in out

    # keys of one secret only are not shared
    assert not any("shared" in k["flags"] for i, k in keys.items() if i != key_id)
    assert_no_value_printed(review, emulator, admin_key)


def test_orphans_older_than_the_in_flight_bound_would_be_swept_and_younger_ones_not(
        review, capsys, emulator, clock, admin_key):
    assert run(review, capsys, "rotate")[0] == 0
    now = clock.now()
    old = emulator.create_key(ADMIN_EMAIL, name="web [r-0badc0de]",
                              created_on=now - bound(review) - timedelta(minutes=1))
    young = emulator.create_key(ADMIN_EMAIL, name="batch [r-5eedf00d]", created_on=now - timedelta(seconds=30))

    code, keys, _ = audit_json(review, capsys)
    assert code == 0
    assert keys[old["id"]]["role"] == "orphan" and keys[old["id"]]["secret"] == "web"
    assert "would-sweep" in keys[old["id"]]["flags"] and keys[old["id"]]["revocable"]
    assert "the next run's sweep revokes it" in keys[old["id"]]["notes"]
    assert keys[young["id"]]["role"] == "orphan" and keys[young["id"]]["secret"] == "batch"
    assert "in-flight" in keys[young["id"]]["flags"] and "would-sweep" not in keys[young["id"]]["flags"]
    assert not keys[young["id"]]["revocable"] and "in flight" in keys[young["id"]]["hold"]

    # --fix revokes the would-sweep orphan through the gate, as the sweep would, and not the young one
    code, out, err = run(review, capsys, "audit", "--fix", "--yes", "-o", "json")
    keys = {k["key_id"]: k for k in json.loads(out)["keys"]}
    assert code == 0
    assert keys[old["id"]]["revoked"] and keys[old["id"]]["revoke"]["result"] == "revoked"
    assert not keys[young["id"]]["revoked"] and keys[young["id"]]["revoke"]["result"] == "held"
    assert f"revoked: quiva …{old['key'][-4:]} (id {old['id']})" in err
    assert f"not revoked: quiva …{young['key'][-4:]} (id {young['id']}): created recently" in err
    assert not live(emulator, old["id"]) and emulator.delete_count(old["id"]) == 1
    assert live(emulator, young["id"])
    for name in ("web", "batch"):
        review.assert_i1(name)

    records = [r for r in trail(review) if r["key_id"] == old["id"]]
    assert [(r["action"], r["result"]) for r in records] == [("revoke", "intent"), ("revoked", "ok")]
    assert records[0]["secret"] == "web" and "(stray)" in records[0]["detail"]
    assert_no_value_printed(review, emulator, admin_key)


def test_a_key_a_target_serves_is_never_revoked_even_when_a_person_selects_it(
        review, capsys, emulator, clock, admin_key):
    assert run(review, capsys, "rotate")[0] == 0
    now = clock.now()
    served = emulator.create_key(ADMIN_EMAIL, name="hand-made web key", created_on=now - timedelta(days=3))
    spare = emulator.create_key(ADMIN_EMAIL, name="forgotten test key", created_on=now - timedelta(days=3))
    copy = review.root / "app" / "web.json"                 # a person put another key in the copy
    doc = json.loads(copy.read_text())
    doc["api_key"] = served["key"]
    copy.write_text(json.dumps(doc))

    code, keys, _ = audit_json(review, capsys)
    row = keys[served["id"]]
    assert row["role"] == "unmanaged" and "served" in row["flags"] and not row["revocable"]
    assert row["hold"].startswith("still served by secret web at app:")
    code, out, _ = run(review, capsys, "audit")
    assert "not revocable: still served by secret web at app:" in out

    code, out, err = run(review, capsys, "audit", "--revoke-unmanaged", "--yes", "-o", "json")
    keys = {k["key_id"]: k for k in json.loads(out)["keys"]}
    assert code == 0
    assert f"not revoked: quiva …{served['key'][-4:]} (id {served['id']}): still served by secret web at app:" in err
    assert keys[served["id"]]["revoke"] == {"result": "held", "reason": keys[served["id"]]["hold"]}
    assert live(emulator, served["id"]) and emulator.is_active(served["key"])
    assert keys[spare["id"]]["revoked"] and not live(emulator, spare["id"])
    spare_trail = [r for r in trail(review) if r["key_id"] == spare["id"]]
    assert [r["action"] for r in spare_trail] == ["revoke", "revoked"]
    assert spare_trail[0]["secret"] == "(unmanaged)" and "(review)" in spare_trail[0]["detail"]
    assert not [r for r in trail(review) if r["key_id"] == served["id"]]
    assert_no_value_printed(review, emulator, admin_key)


def test_the_gate_has_the_last_word_over_what_the_review_chose(review, capsys, emulator, clock):
    """Even a key the review took for revocable (its reads were stale) is revoked only through
    the gate, which reads every target again and holds it with the reason."""
    from rotator import review as reviewing
    from rotator.cli_ops import _revoke_chosen, _read_managed
    from rotator.engine import Engine, RunShared

    assert run(review, capsys, "rotate")[0] == 0
    served = emulator.create_key(ADMIN_EMAIL, name="hand-made batch key", created_on=clock.now() - timedelta(days=3))
    runtime = review.runtime()
    shared = RunShared(Engine(runtime, on_event=review.events.append))
    issuer = runtime.issuers["quiva"]
    managed = [_read_managed(s, shared, []) for s in runtime.secrets]
    (finding,) = [f for f in reviewing.classify("quiva", issuer.list_keys(), managed, clock.now())
                  if f.key_id == served["id"]]
    assert finding.revocable and finding.purpose.value == "review"
    copy = review.root / "app" / "batch.json"               # meanwhile a person deploys it
    doc = json.loads(copy.read_text())
    doc["api_key"] = served["key"]
    copy.write_text(json.dumps(doc))
    clock.advance(timedelta(seconds=30))                    # the review's reads are no longer fresh

    done = _revoke_chosen(runtime, RunShared(Engine(runtime, on_event=review.events.append)), [finding], True)
    result, reason = done[("quiva", served["id"])]
    assert result == "held" and reason.startswith("still served by secret batch at app:")
    assert live(emulator, served["id"]) and emulator.is_active(served["key"])
    assert "not revoked" in capsys.readouterr().err
    # with the fresh reads of one shared run the review already knows it
    managed = [_read_managed(s, shared, []) for s in runtime.secrets]
    (finding,) = [f for f in reviewing.classify("quiva", issuer.list_keys(), managed, clock.now())
                  if f.key_id == served["id"]]
    assert not finding.revocable and finding.hold.startswith("still served by secret batch")
    assert replace(finding, hold=None).revocable


def test_a_held_revoke_is_listed_as_held_with_its_reason(review, capsys, emulator, admin_key):
    raw = review.seed("web", timedelta(days=10))
    review.seed_value("batch", raw)
    key_id = next(r["id"] for r in emulator.keys() if r["name"] == "web (by hand)")
    assert run(review, capsys, "rotate")[0] == 0
    assert run(review, capsys, "rotate", "web", "--force")[0] == 0    # web moves away; batch still serves it
    assert emulator.is_active(raw)
    assert review.record("web").held, "the gate held the revoke of web's old key"

    code, keys, _ = audit_json(review, capsys)
    row = keys[key_id]
    assert row["role"] == "held" and row["secret"] == "web" and not row["revocable"]
    assert "secret batch" in row["hold"]            # still served by it / it is its current key
    assert any(n.startswith("revoke held since ") and "secret batch" in n for n in row["notes"])

    code, out, _ = run(review, capsys, "audit")
    assert any(key_id in line and " held " in line for line in out.splitlines())
    code, out, _ = run(review, capsys, "audit", "-o", "markdown")
    assert f"| {key_id} |" in out and "| held |" in out and "revoke held since" in out

    # no person's choice revokes it: the rotation that moves away from it last does
    code, out, err = run(review, capsys, "audit", "--fix", "--revoke-unmanaged", "--yes", "-o", "json")
    assert code == 0 and emulator.is_active(raw)
    assert_no_value_printed(review, emulator, admin_key)


def test_an_unconfirmed_revoke_is_an_error(review, capsys, emulator, clock, admin_key):
    assert run(review, capsys, "rotate")[0] == 0
    spare = emulator.create_key(ADMIN_EMAIL, name="forgotten test key", created_on=clock.now() - timedelta(days=3))
    emulator.faults.lying_deletes(1, "ok")          # the DELETE answers 200 and deletes nothing
    code, out, err = run(review, capsys, "audit", "--revoke-unmanaged", "--yes", "-o", "json")
    row = next(k for k in json.loads(out)["keys"] if k["key_id"] == spare["id"])
    assert code == 1
    assert not row["revoked"] and row["revoke"]["result"] == "failed" and "not confirmed" in row["revoke"]["reason"]
    assert "revoke FAILED" in err and live(emulator, spare["id"])
    actions = [(r["action"], r["result"]) for r in trail(review) if r["key_id"] == spare["id"]]
    assert actions == [("revoke", "intent"), ("revoke-failed", "error")]

    code, out, err = run(review, capsys, "audit", "--revoke-unmanaged", "--yes")   # the next try does it
    assert code == 0 and f"revoked: quiva …{spare['key'][-4:]}" in err and not live(emulator, spare["id"])
    assert_no_value_printed(review, emulator, admin_key)


def test_an_unreadable_primary_makes_the_review_incomplete_and_holds_every_revoke(
        review, capsys, emulator, clock, admin_key):
    assert run(review, capsys, "rotate")[0] == 0
    spare = emulator.create_key(ADMIN_EMAIL, name="forgotten test key", created_on=clock.now() - timedelta(days=3))
    primary = review.root / "store" / "batch.json"
    primary.unlink()
    primary.mkdir()                                  # batch's primary cannot be read
    code, out, err = run(review, capsys, "audit", "--revoke-unmanaged", "--yes", "-o", "json")
    doc = json.loads(out)
    row = next(k for k in doc["keys"] if k["key_id"] == spare["id"])
    assert code == 1 and any("batch" in p and "could not be read" in p for p in doc["problems"])
    assert not row["revocable"] and row["hold"].startswith("cannot prove it unused: secret batch")
    assert row["revoke"]["result"] == "held" and live(emulator, spare["id"])
    assert "problem: secret batch" in err
    assert_no_value_printed(review, emulator, admin_key)
