"""``status`` and ``plan`` tell the truth (I8): each unhealthy state has its own health and reason
and makes ``status`` exit 1; held revokes and shared keys are shown; the issuers' own admin keys
are covered; one secret that cannot be assessed never hides the others (I6); and a failed
``rotate`` is a failure everywhere — exit 1, its first error, a webhook alert, the daemon's metric.

The emulator and the file backends are real; the CLI runs on the real clock (it builds its own
runtime), records are shaped by hand through the backend where a state is hard to reach."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from rotator_providers.quiva.issuer import QuivaIssuer
from rotator import config, planner
from rotator.cli import main
from rotator.daemon import Reconciler
from rotator.models import Phase, RotationRecord
from rotator.notify import Alerts
from rotator.runtime import Runtime
from tests.world import ADMIN_EMAIL, to_toml

ISSUE = "/accounts/api-key"
LIST = "/accounts/api-keys"


@pytest.fixture
def cli(world, clock, tmp_path, monkeypatch, emulator):
    """The world on the real clock, with an admin key made now and the config in a file."""
    clock.set(datetime.now(timezone.utc))
    monkeypatch.setenv("QUIVA_API_KEY", emulator.add_user(ADMIN_EMAIL, role="admin"))
    world.issuer["retries"] = 1                          # a failing listing fails at once
    path = tmp_path / "rotator.toml"

    def write(extra: str = "") -> None:
        path.write_text(to_toml(world.config_data()) + extra)

    world.write_config = write
    monkeypatch.setenv("ROTATOR_CONFIG", str(path))
    return world


def run(capsys, *argv: str) -> tuple[int, str]:
    code = main(["--log-level", "error", *argv])
    return code, capsys.readouterr().out


def status(capsys, *names: str) -> tuple[int, dict, dict]:
    code, out = run(capsys, "status", "-o", "json", *names)
    data = json.loads(out)
    return code, {s["secret"]: s for s in data["secrets"]}, data


def set_record(world, name: str, **changes) -> RotationRecord:
    """Rewrite a secret's rotation record as a crash or a person might have left it."""
    secret = world.secret(name)
    snap = secret.primary.backend.read(secret.primary.target)
    record = replace(snap.record or RotationRecord(), **changes)
    secret.primary.backend.write_record(secret.primary.target, record, expect=snap.version)
    return record


def revoke_by_hand(world, key_id: str) -> None:
    runtime = world.runtime()
    runtime.issuers["quiva"].revoke(key_id=key_id)


# --- every state has its own health and reason ----------------------------------------------------------

def test_a_failed_run_is_failing_with_its_error_and_since_when_until_a_run_succeeds(cli, capsys, emulator):
    cli.add_secret("web")
    cli.add_secret("calm")
    cli.write_config()
    cli.seed("web", age=timedelta(days=85))                      # due
    cli.seed("calm", age=timedelta(days=5))
    emulator.faults.fail_next(5, status=503, path=ISSUE)
    try:
        assert run(capsys, "rotate")[0] == 1
    finally:
        emulator.faults.clear()
    code, rows, data = status(capsys)
    assert code == 1 and data["unhealthy"] == 1 and data["healthy"] is False
    web = rows["web"]
    assert web["health"] == "failing" and web["healthy"] is False
    assert web["error"] and "503" in web["error"] and web["attempts"] == 1 and web["error_since"]
    assert web["reason"].startswith("the last run failed since ") and "503" in web["reason"]
    assert rows["calm"]["health"] == "healthy"
    code, out = run(capsys, "status")
    assert code == 1 and "web: failing: the last run failed since" in out

    assert run(capsys, "rotate")[0] == 0                          # a later run succeeds
    code, rows, _ = status(capsys)
    assert code == 0 and rows["web"]["health"] == "grace" and rows["web"]["error"] is None


def test_a_claim_whose_owner_died_is_a_stale_claim(cli, capsys):
    cli.add_secret("web")
    cli.write_config()
    cli.seed("web", age=timedelta(days=5))
    assert run(capsys, "rotate")[0] == 0                          # adopted, idle
    now = datetime.now(timezone.utc)
    set_record(cli, "web", phase=Phase.CLAIMED, rotation_id="deadbeef" * 4, owner="ghost:1:dead",
               lease_until=now - timedelta(minutes=1), started_at=now - timedelta(minutes=16))
    code, rows, _ = status(capsys)
    assert code == 1
    assert rows["web"]["health"] == "stale-claim" and "ghost:1:dead" in rows["web"]["reason"]
    assert rows["web"]["owner"] == "ghost:1:dead" and rows["web"]["lease_until"]
    _, out = run(capsys, "plan", "-o", "json")
    assert json.loads(out)["plan"][0]["next"].startswith("take the rotation over")

    set_record(cli, "web", lease_until=now + timedelta(minutes=10))    # a live claim is just rotating
    code, rows, _ = status(capsys)
    assert code == 0 and rows["web"]["health"] == "rotating"


def test_a_key_the_issuer_no_longer_lists_is_rejected_by_id_or_by_name_and_last4(cli, capsys):
    cli.add_secret("web")
    cli.add_secret("batch")
    cli.write_config()
    cli.seed("web", age=timedelta(days=5))
    cli.seed("batch", age=timedelta(days=5))
    assert run(capsys, "rotate")[0] == 0
    web, batch = cli.record("web"), cli.record("batch")
    set_record(cli, "batch", current=replace(batch.current, key_id=None))       # id unknown: name + last 4
    code, rows, _ = status(capsys)
    assert code == 0 and {r["health"] for r in rows.values()} == {"healthy"}

    revoke_by_hand(cli, web.current.key_id)                      # a person deletes them in the UI
    revoke_by_hand(cli, batch.current.key_id)
    code, rows, _ = status(capsys)
    assert code == 1
    assert rows["web"]["health"] == "rejected" and "looked up by id" in rows["web"]["reason"]
    assert rows["batch"]["health"] == "rejected"
    assert "by name and last 4 characters" in rows["batch"]["reason"]


def test_a_key_that_expires_before_the_next_possible_rotation_is_expiring(cli, capsys):
    cli.defaults["check_interval"] = "1h"
    cli.add_secret("web")
    cli.write_config()
    cli.seed("web", age=timedelta(days=5))
    assert run(capsys, "rotate")[0] == 0
    record = cli.record("web")
    soon = datetime.now(timezone.utc) + timedelta(minutes=30)
    set_record(cli, "web", current=replace(record.current, expires_on=soon))
    code, rows, _ = status(capsys)
    assert code == 1 and rows["web"]["health"] == "expiring"
    assert "before the next possible rotation" in rows["web"]["reason"]
    set_record(cli, "web", current=replace(record.current, expires_on=soon - timedelta(hours=1)))
    assert status(capsys)[1]["web"]["health"] == "expired"


def test_a_held_revoke_and_a_shared_key_are_shown_by_plan_and_status(cli, capsys, emulator):
    cli.defaults["grace"] = "0s"
    cli.add_secret("alpha")
    cli.add_secret("beta")
    cli.write_config()
    value = cli.seed("alpha", age=timedelta(days=5))
    cli.seed_value("beta", value)                                # one key copied into two applications
    code, out = run(capsys, "plan")
    assert code == 0
    warning = f"secrets alpha and beta hold the same key …{value[-4:]}: its revoke waits until both have moved away"
    assert warning in out
    _, out = run(capsys, "plan", "-o", "json")
    assert json.loads(out)["warnings"] == [warning]
    _, _, data = status(capsys)
    assert data["warnings"] == [warning]

    assert run(capsys, "rotate")[0] == 0                          # both adopt the same key
    assert run(capsys, "rotate", "alpha", "--force")[0] == 0      # alpha moves away; beta still serves it
    assert emulator.is_active(value), "the shared key was not revoked while beta serves it"
    code, rows, _ = status(capsys)
    assert code == 1
    alpha = rows["alpha"]
    assert alpha["health"] == "held"
    assert alpha["reason"].startswith(f"revoke of old key …{value[-4:]}") and "beta" in alpha["reason"]
    assert alpha["held"] and alpha["held"][0]["last4"] == value[-4:] and alpha["held"][0]["since"]
    assert rows["beta"]["health"] == "healthy"
    code, out = run(capsys, "plan")
    assert code == 0
    alpha_lines = [line for line in out.splitlines() if line.startswith("alpha ")]
    assert len(alpha_lines) == 2, out                             # its next rotation, and the held revoke
    assert f"old …{value[-4:]}" in alpha_lines[1] and "revoke the old key once nothing holds it" in alpha_lines[1]
    assert "next run" in alpha_lines[1]
    assert f"alpha: revoke of old key …{value[-4:]}" in out.split("held revokes:")[1] and "beta" in out


def test_a_failing_listing_is_said_and_no_health_is_invented_from_it(cli, capsys, emulator):
    cli.add_secret("web")
    cli.write_config()
    cli.seed("web", age=timedelta(days=5))
    assert run(capsys, "rotate")[0] == 0
    emulator.faults.fail_next(10, status=503, path=LIST)
    try:
        code, rows, data = status(capsys)
    finally:
        emulator.faults.clear()
    assert code == 1
    assert rows["web"]["health"] == "healthy"                     # not "rejected": nothing was seen
    assert data["problems"] and data["problems"][0].startswith("issuer quiva: cannot list its keys")
    assert data["credentials"][0]["health"] == "unknown"


# --- one secret never hides the others (I6) ----------------------------------------------------------------

def test_extreme_dates_a_corrupt_record_and_an_assessment_that_raises_are_their_own_rows(
        cli, capsys, monkeypatch, clock, emulator):
    for name in ("ancient", "far", "corrupt", "boom", "fine"):
        cli.add_secret(name)
        cli.seed(name, age=timedelta(days=5))
    cli.write_config()
    assert run(capsys, "rotate")[0] == 0
    for name, year in (("ancient", 1), ("far", 9999)):
        record = cli.record(name)
        set_record(cli, name, current=replace(record.current,
                                              expires_on=datetime(year, 1, 1, tzinfo=timezone.utc)))
    corrupt = cli.root / "store" / "corrupt.json"
    doc = json.loads(corrupt.read_text())
    doc["rotator"]["record"]["phase"] = "exploded"                # a record no release wrote
    corrupt.write_text(json.dumps(doc))
    real = planner.assess

    def assess(policy, record, primary, now, **options):
        if policy.primary.endswith("boom.json"):
            raise OverflowError("date value out of range")
        return real(policy, record, primary, now, **options)

    monkeypatch.setattr(planner, "assess", assess)
    code, rows, _ = status(capsys)
    assert code == 1
    assert rows["ancient"]["health"] == "expired" and rows["ancient"]["expires"] == "0001-01-01T00:00:00Z"
    assert rows["far"]["health"] == "healthy" and rows["far"]["expires"].startswith("9999-01-01")
    assert rows["corrupt"]["health"] == "unreadable" and "record is unreadable" in rows["corrupt"]["reason"]
    assert rows["boom"]["health"] == "error" and "OverflowError: date value out of range" in rows["boom"]["reason"]
    assert rows["fine"]["health"] == "healthy"
    code, out = run(capsys, "status")
    assert code == 1 and all(name in out for name in ("ancient", "far", "corrupt", "boom", "fine"))
    code, out = run(capsys, "plan", "-o", "json")
    assert code == 0 and len(json.loads(out)["plan"]) == 5

    # the daemon's observation: every other secret still gets its gauges, alerts and wake-ups
    from rotator.metrics import Metrics

    clock.set(datetime.now(timezone.utc))
    metrics, sent = Metrics(process=False), []
    runtime = Runtime(config.load(data=cli.config_data()), clock=clock, sleep=clock.sleep, identity="observer")
    emulator.faults.fail_next(50, status=503, path=ISSUE)        # "ancient" stays expired: it cannot rotate
    try:
        reconciler = Reconciler(runtime, metrics=metrics, alerts=Alerts(sent.append, escalate_at=[timedelta(days=7)]))
        reconciler.reconcile()
    finally:
        emulator.faults.clear()
        runtime.close()

    def health(name: str) -> str:
        return next(h for h in ("healthy", "expired", "unreadable", "error", "failing", "due")
                    if metrics.registry.get_sample_value("rotator_secret_health",
                                                         {"secret": name, "health": h}) == 1)

    assert {n: health(n) for n in ("ancient", "far", "corrupt", "boom", "fine")} == {
        "ancient": "expired", "far": "healthy", "corrupt": "unreadable", "boom": "error", "fine": "healthy"}
    assert [(a.secret, a.step) for a in sent if a.kind == "escalation"] == [("ancient", "expired")]
    assert reconciler.plan.instant("fine", clock.now()) is not None, "the others still get their wake-ups"
    assert metrics.registry.get_sample_value("rotator_key_expiry_timestamp_seconds", {"secret": "far"}) \
        == datetime(9999, 1, 1, tzinfo=timezone.utc).timestamp()


# --- the issuer's own credential ---------------------------------------------------------------------------

def test_an_unmanaged_admin_key_close_to_expiry_makes_status_exit_1(cli, capsys, emulator, monkeypatch):
    cli.add_secret("web")
    cli.write_config()
    cli.seed("web", age=timedelta(days=5))
    old_admin = emulator.create_key(ADMIN_EMAIL, name="rotator admin",
                                    created_on=datetime.now(timezone.utc) - timedelta(days=85))
    monkeypatch.setenv("QUIVA_API_KEY", old_admin["key"])
    code, out = run(capsys, "rotate", "-o", "json")
    assert code == 0                                              # a run is not failed by it ...
    (row,) = json.loads(out)["credentials"]                       # ... but its summary says so
    assert row["health"] == "expiring" and row["key_id"] == old_admin["id"]
    code, rows, data = status(capsys)
    assert code == 1 and rows["web"]["health"] == "healthy"
    (row,) = data["credentials"]
    assert row["last4"] == old_admin["key"][-4:] and row["key_id"] == old_admin["id"] and row["expires"]
    assert row["health"] == "expiring" and row["managed_as"] is None
    assert row["reason"].startswith("not managed: rotator cannot rotate it; replace it by hand before ")
    code, out = run(capsys, "status")
    assert code == 1 and "quiva: not managed: rotator cannot rotate it" in out
    assert old_admin["key"] not in out
    code, out = run(capsys, "plan", "-o", "json")
    assert code == 0 and json.loads(out)["credentials"][0]["health"] == "expiring"


def test_an_admin_key_kept_in_a_store_is_managed_as_a_secret(cli, capsys, emulator, monkeypatch):
    admin = emulator.create_key(ADMIN_EMAIL, name="rotator admin",
                                created_on=datetime.now(timezone.utc) - timedelta(days=5))
    cli.issuer["admin_key"] = {"backend": "store", "path": "rotator-admin.json"}
    cli.add_secret("rotator-admin", targets=[{"backend": "store", "path": "rotator-admin.json"}])
    cli.write_config()
    cli.seed_value("rotator-admin", admin["key"])
    monkeypatch.delenv("QUIVA_API_KEY")
    assert run(capsys, "rotate")[0] == 0
    code, rows, data = status(capsys)
    assert code == 0 and rows["rotator-admin"]["health"] == "healthy"
    (row,) = data["credentials"]
    assert row["health"] == "managed" and row["managed_as"] == "rotator-admin" and row["key_id"] == admin["id"]


# --- a failed run is a failure everywhere ------------------------------------------------------------------

def test_a_run_that_fails_after_issuing_exits_1_with_its_first_error_alerts_and_counts(
        cli, capsys, emulator, monkeypatch, clock):
    from tests.integration.test_daemon import WebhookSink

    sink = WebhookSink()
    cli.add_secret("web")
    cli.add_secret("calm")
    cli.seed("web", age=timedelta(days=85))
    cli.seed("calm", age=timedelta(days=5))
    cli.write_config(f'\n[alerts]\nwebhooks = [{{ url = "{sink.url}/hook" }}]\n')
    lock = cli.root / "store" / ".web.json.lock"
    real_issue = QuivaIssuer.issue

    def issue_then_break_the_primary(self, name):
        issued = real_issue(self, name)
        if name.startswith("web ["):                 # the primary becomes unwritable before staging
            lock.unlink(missing_ok=True)
            lock.mkdir()
        return issued

    monkeypatch.setattr(QuivaIssuer, "issue", issue_then_break_the_primary)

    def mend() -> None:
        """Writable again, and the claim the failed run could not release released by hand."""
        if lock.is_dir():
            lock.rmdir()
        set_record(cli, "web", owner=None, lease_until=None)

    try:
        code, out = run(capsys, "rotate", "-o", "json")
        data = json.loads(out)
        outcomes = {o["secret"]: o for o in data["outcomes"]}
        assert code == 1 and data["failed"] == 1
        web = outcomes["web"]
        assert web["result"] == "failed"
        assert "stage failed" in web["error"], web["error"]       # the first error, not the cleanup's
        assert outcomes["calm"]["result"] in ("ok", "changed")
        (alert,) = sink.bodies("/hook")
        assert alert["kind"] == "failure" and alert["secret"] == "web" and "stage failed" in alert["summary"]
        # the unstaged key is revoked as cleanup, or left (named with its rotation) to a later run's sweep
        minted = [k for k in emulator.keys() if k["name"].startswith("web [r-")]
        assert len(minted) == 1
        cli.assert_i1("web")

        mend()
        code, out = run(capsys, "rotate")                         # the text summary names the first error
        assert code == 1
        summary = out.split("1 failed\n", 1)[1]
        assert summary.startswith("  web: ") and "stage failed" in summary, out

        # the daemon: the same failure moves its failure metric and pages once
        from rotator.metrics import Metrics

        mend()
        clock.set(datetime.now(timezone.utc))
        metrics, sent = Metrics(process=False), []
        runtime = Runtime(config.load(data=cli.config_data()), clock=clock, sleep=clock.sleep, identity="daemon")
        try:
            Reconciler(runtime, metrics=metrics, alerts=Alerts(sent.append)).reconcile()
        finally:
            runtime.close()
        assert metrics.registry.get_sample_value("rotator_rotations_total",
                                                 {"secret": "web", "result": "failed"}) == 1
        assert [(a.kind, a.secret) for a in sent] == [("failure", "web")]
        assert "stage failed" in sent[0].summary
        assert metrics.registry.get_sample_value("rotator_events_total",
                                                 {"action": "issue", "result": "intent"}) is None
        assert metrics.registry.get_sample_value("rotator_events_total", {"action": "issued", "result": "ok"}) == 1
    finally:
        sink.close()
        if lock.is_dir():
            lock.rmdir()
