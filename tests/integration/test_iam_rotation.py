"""Rotations of an IAM user's access key (the ``aws_iam`` issuer) on a moto server that checks
request signatures, so STS tells a working key from a deleted one. Each test has its own IAM user.

moto stamps keys with the real time, so the test clock starts at the real time and rotations are
started with ``force`` rather than by advancing the clock past ``max_age``. moto accepts an
inactive key where AWS refuses it: deactivation is proven through ListAccessKeys (``keys()``)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from rotator import survey
from rotator.incident import revoke_compromised
from rotator.errors import UntrustedAnswer
from rotator.models import Phase, Secret
from tests.integration.iam_support import advance, iam_world  # noqa: F401 - fixture

PAYLOAD_FIELDS = {"aws_access_key_id", "aws_secret_access_key"}


def value(key_id: str, secret: str) -> Secret:
    return Secret.of_parts([("access_key_id", key_id), ("secret_access_key", secret)])


def issuer_of(w):
    return w.secret().issuer


def rotate_ok(w, **options):
    report = w.rotate(**options)
    assert report.exit_code == 0, [(o.secret, o.error) for o in report.outcomes]
    return report


def actions(w) -> list[str]:
    return [getattr(e, "action", "") for e in w.events]


def status_of(w, name: str = "ci"):
    runtime = w.runtime()
    found = survey.survey(runtime, [name], w.clock.now())
    return found.secrets[0].assessment


# --- full rotations ----------------------------------------------------------------------------

def test_iam_full_rotation_with_secrets_manager_ssm_and_file_secondaries(iam_world):
    w = iam_world
    w.add_secret("ci", targets=[
        {"backend": "store", "path": "ci.json"},
        {"backend": "sm", "secret_id": f"ci/{w.user}/aws"},
        {"backend": "ssm", "name": f"/ci/{w.user}/aws"},
        {"backend": "app", "path": "ci.json",
         "fields": {"access_key_id": "AWS_ACCESS_KEY_ID", "secret_access_key": "AWS_SECRET_ACCESS_KEY"}},
    ])
    old_id, old_secret = w.seed("ci")
    rotate_ok(w, force=True)
    record = w.record()
    new_id = record.current.key_id
    assert record.phase is Phase.GRACE and record.previous.key_id == old_id
    assert w.keys() == {old_id: "Active", new_id: "Active"}
    served = w.served()
    assert len(set(served.values())) == 1 and next(iter(served.values()))[0] == new_id
    assert w.iam_user.works(*served[next(iter(served))])
    app = w.file_payload("app", "ci.json")
    assert app["AWS_ACCESS_KEY_ID"] == new_id and "aws_access_key_id" not in app
    assert app["rotator"]["previous"] == {"access_key_id": old_id, "secret_access_key": old_secret}
    sm = json.loads(w.iam_user.client("secretsmanager", key=w.iam_user.admin).get_secret_value(
        SecretId=f"ci/{w.user}/aws", VersionStage="AWSCURRENT")["SecretString"])
    assert {k for k in sm if k != "rotator"} == PAYLOAD_FIELDS and sm["aws_access_key_id"] == new_id

    advance(w, hours=47)
    rotate_ok(w)
    assert w.keys()[old_id] == "Active", "both keys stay valid through the grace window"
    advance(w, hours=2)
    rotate_ok(w)
    assert w.keys() == {old_id: "Inactive", new_id: "Active"}, "after grace the old key is deactivated, not deleted"
    assert w.record().phase is Phase.IDLE

    advance(w, days=6)
    rotate_ok(w)
    assert w.keys()[old_id] == "Inactive", "kept inactive until delete_after (7d) has passed"
    advance(w, days=1, hours=1)
    rotate_ok(w)
    assert w.keys() == {new_id: "Active"}
    assert "deleted" in actions(w)
    again = rotate_ok(w)
    assert not again.outcomes[0].actions, "I5: nothing left to do"


def test_iam_second_rotation_reuses_the_freed_slot(iam_world):
    w = iam_world
    w.add_secret("ci")
    first_id, _ = w.seed("ci")
    rotate_ok(w, force=True)
    second_id = w.record().current.key_id
    advance(w, hours=49)
    rotate_ok(w)                       # first key deactivated: the user holds 2 keys
    rotate_ok(w, force=True)           # the deactivated key is deleted to make room, before its delete_after
    third_id = w.record().current.key_id
    assert w.keys() == {second_id: "Active", third_id: "Active"}
    assert first_id not in w.keys()
    assert w.iam_user.works(*w.served()[next(iter(w.served()))])


def test_iam_bootstrap_issues_the_first_key_into_empty_stores(iam_world):
    w = iam_world
    w.add_secret("ci")
    rotate_ok(w)
    record = w.record()
    assert record.phase is Phase.IDLE and record.current.key_id in w.keys()
    key = next(iter(w.served().values()))
    assert w.iam_user.works(*key)
    assert record.current.expires_on - record.current.created_on == timedelta(days=90), "max_age sets the due date"


def test_iam_max_age_makes_an_adopted_key_due_at_its_age(iam_world):
    w = iam_world
    w.issuer["max_age"] = "30d"
    w.add_secret("ci")
    w.seed("ci")
    rotate_ok(w)                       # adopts the key: 30 days to live, due at 16 days
    assert w.record().current.expires_on is not None
    assert status_of(w).health == "healthy"
    advance(w, days=17)
    assert status_of(w).health == "due"


# --- verification with STS ---------------------------------------------------------------------

def test_iam_verify_accepts_the_users_key_and_refuses_a_deleted_one(iam_world):
    w = iam_world
    w.add_secret("ci")
    issuer = issuer_of(w)
    key_id, secret = w.create_key()
    assert issuer.verify(value(key_id, secret)) is True
    w.iam_user.delete_key(key_id)
    assert issuer.verify(value(key_id, secret)) is False, "a key the user no longer has is refused at once"
    assert w.clock.now() - w.clock.now() == timedelta(0)


def test_iam_verify_refuses_a_wrong_secret(iam_world):
    w = iam_world
    w.add_secret("ci")
    w.issuer["propagation_timeout"] = "0s"
    issuer = issuer_of(w)
    key_id, secret = w.create_key()
    wrong = secret[:-4] + ("AAAA" if not secret.endswith("AAAA") else "BBBB")
    assert issuer.verify(value(key_id, wrong)) is False


def test_iam_verify_retries_while_a_new_key_propagates(iam_world, signing_fault_proxy):
    w = iam_world
    w.issuer["sts_endpoint_url"] = signing_fault_proxy.url
    w.add_secret("ci")
    signing_fault_proxy.fail("GetCallerIdentity", times=3, status=403, code="InvalidClientTokenId")
    start = w.clock.now()
    report = w.rotate(force=False)
    assert report.exit_code == 0, [o.error for o in report.outcomes]
    assert signing_fault_proxy.seen.count("GetCallerIdentity") == 4, "refused three times, then verified"
    # full jitter: each wait is drawn from [0, 2^k s), so three may add up to under a second
    assert w.clock.now() > start, "the refusals were waited out with back-off"
    assert w.record().current is not None and "verified" in actions(w)


def test_iam_verify_gives_up_after_the_propagation_timeout_and_rolls_back(iam_world, signing_fault_proxy):
    w = iam_world
    w.issuer["sts_endpoint_url"] = signing_fault_proxy.url
    w.issuer["propagation_timeout"] = "10s"
    w.add_secret("ci")
    old_id, old_secret = w.seed("ci")
    rotate_ok(w)                                     # adopts the key (its check passes)
    signing_fault_proxy.fail("GetCallerIdentity", times=1000, status=403, code="InvalidClientTokenId")
    report = w.rotate(force=True)
    assert report.exit_code != 0
    record = w.record()
    assert record.phase is Phase.IDLE and record.current.key_id == old_id, "the old key stays current"
    assert set(w.served().values()) == {(old_id, old_secret)}, "no store ever served the refused key"
    assert w.keys()[old_id] == "Active"
    others = [k for k in w.keys() if k != old_id]
    assert all(w.keys()[k] == "Inactive" for k in others), "the refused new key is revoked (deactivated)"


def test_iam_verify_refuses_a_key_of_another_principal(iam_world, make_iam_user):
    w = iam_world
    w.add_secret("ci")
    stranger = make_iam_user()
    with pytest.raises(UntrustedAnswer, match="another principal"):
        issuer_of(w).verify(value(stranger.access_key_id, stranger.secret_access_key))


# --- the two-key limit -------------------------------------------------------------------------

def test_iam_two_key_limit_deletes_an_inactive_key_first(iam_world):
    w = iam_world
    w.add_secret("ci")
    current_id, _ = w.seed("ci")
    spare_id, _ = w.create_key()
    w.iam_user.deactivate(spare_id)
    rotate_ok(w, force=True)
    keys = w.keys()
    assert spare_id not in keys and keys[current_id] == "Active" and len(keys) == 2
    assert "made-room" in actions(w)


def test_iam_two_key_limit_deactivates_and_deletes_an_unknown_active_key(iam_world):
    w = iam_world
    w.issuer["max_attempts"] = 2
    w.add_secret("ci")
    current_id, _ = w.seed("ci")
    stray_id, _ = w.create_key()
    advance(w, minutes=5)                 # older than an issue request could still be in flight
    rotate_ok(w, force=True)
    keys = w.keys()
    assert stray_id not in keys and keys[current_id] == "Active" and len(keys) == 2


def test_iam_two_key_limit_never_touches_a_key_another_secret_serves(iam_world):
    w = iam_world
    w.add_secret("ci")
    w.add_secret("ci-copy", targets=[{"backend": "store", "path": "copy.json"}])
    current_id, _ = w.seed("ci")
    other_id, _ = w.seed("ci-copy")
    advance(w, minutes=5)
    report = w.rotate(["ci"], force=True)
    assert report.exit_code != 0
    error = report.outcomes[0].error
    assert "waiting" in error and "ci-copy" in error
    assert w.keys() == {current_id: "Active", other_id: "Active"}, "no key was touched, none minted"
    assessment = status_of(w)
    assert not assessment.healthy and "waiting" in (assessment.last_error or "")


def test_iam_two_key_limit_waits_while_the_old_key_is_held(iam_world):
    w = iam_world
    usage_sensitive(w)
    w.add_secret("ci")
    old_id, old_secret = w.seed("ci")
    rotate_ok(w, force=True)
    new_id = w.record().current.key_id
    assert w.iam_user.works(old_id, old_secret)         # a forgotten consumer still signs with the old key
    advance(w, hours=49)
    rotate_ok(w)                                        # the revoke is held on the usage evidence
    assert w.keys() == {old_id: "Active", new_id: "Active"}
    assert w.record().held and "still used" in w.record().held[0].reason
    report = w.rotate(force=True)                       # a new rotation finds both keys in use
    assert report.exit_code != 0 and "waiting" in report.outcomes[0].error
    assert w.keys() == {old_id: "Active", new_id: "Active"}


# --- usage evidence --------------------------------------------------------------------------

def usage_sensitive(w) -> None:
    """moto stamps a key's last use with the real time, which the test clock does not move:
    a use right after the deploy must count (no slack), and still be recent at the end of grace."""
    w.issuer.update(usage_slack="0s", quiet_for="72h")


def test_iam_usage_evidence_holds_the_revoke_until_the_key_goes_quiet(iam_world):
    w = iam_world
    usage_sensitive(w)
    w.add_secret("ci")
    old_id, old_secret = w.seed("ci")
    rotate_ok(w, force=True)
    w.clock.sleep(0)
    assert w.iam_user.works(old_id, old_secret)     # a forgotten consumer, after the deploy
    advance(w, hours=49)
    rotate_ok(w)
    assert w.keys()[old_id] == "Active", "used after its replacement was deployed: not revoked"
    held = w.record().held
    assert held and "still used after its replacement was deployed" in held[0].reason and "sts" in held[0].reason
    assessment = status_of(w)
    assert assessment.held and "still used" in assessment.held[0].reason
    advance(w, hours=24)                   # quiet_for (72h) since the last use
    rotate_ok(w)
    assert w.keys()[old_id] == "Inactive" and not w.record().held


def test_iam_usage_within_the_slack_does_not_hold(iam_world):
    w = iam_world
    w.add_secret("ci")
    old_id, old_secret = w.seed("ci")
    rotate_ok(w, force=True)
    assert w.iam_user.works(old_id, old_secret)    # used right after the deploy: within usage_slack
    advance(w, hours=49)
    rotate_ok(w)
    assert w.keys()[old_id] == "Inactive"


def test_iam_usage_evidence_off_revokes_and_records_the_use(iam_world):
    w = iam_world
    usage_sensitive(w)
    w.issuer["require_unused"] = False
    w.add_secret("ci")
    old_id, old_secret = w.seed("ci")
    rotate_ok(w, force=True)
    assert w.iam_user.works(old_id, old_secret)
    advance(w, hours=49)
    rotate_ok(w)
    assert w.keys()[old_id] == "Inactive"
    assert "used-after-replacement" in actions(w)


# --- issue failures, orphans, rescue, compromise ---------------------------------------------

def test_iam_lost_create_reply_revokes_the_minted_key_and_never_retries_blindly(iam_world, signing_fault_proxy):
    w = iam_world
    w.issuer["endpoint_url"] = signing_fault_proxy.url
    w.add_secret("ci")
    current_id, _ = w.seed("ci")
    signing_fault_proxy.lose_reply("CreateAccessKey")
    report = w.rotate(force=True)
    assert report.exit_code != 0 and "lost" in report.outcomes[0].error
    keys = w.keys()
    assert len(keys) == 2 and keys[current_id] == "Active", "one key minted by the lost call, no third attempt"
    minted = next(k for k in keys if k != current_id)
    assert keys[minted] == "Inactive", "the key whose secret was lost is deactivated at once"
    assert set(w.served().values()) == {next(iter(w.served().values()))}
    rotate_ok(w, force=True)                          # room: the lost key is deleted, a new one issued
    keys = w.keys()
    assert minted not in keys and len(keys) == 2


def test_iam_takeover_sweeps_the_orphan_of_a_dead_runner(iam_world):
    w = iam_world
    w.add_secret("ci")
    current_id, _ = w.seed("ci")
    rotate_ok(w)                                      # adopt
    secret = w.secret()
    record = w.record()
    started = w.clock.now()
    claimed = record.evolve(phase=Phase.CLAIMED, rotation_id="0" * 32, owner="dead-runner",
                            lease_until=started + timedelta(minutes=5), started_at=started)
    snap = secret.primary.backend.read(secret.primary.target)
    secret.primary.backend.write_record(secret.primary.target, claimed, expect=snap.version)
    orphan_id, orphan_secret = w.create_key()         # minted by the dead runner, never staged
    assert w.rotate().outcomes[0].status != "changed" or w.keys()[orphan_id] == "Active"
    assert w.keys()[orphan_id] == "Active", "the claim is live: nothing of it is swept"
    advance(w, minutes=10)
    rotate_ok(w)
    keys = w.keys()
    assert orphan_id not in keys and keys[current_id] == "Active" and len(keys) == 2
    new = w.record().current
    assert w.record().phase is Phase.GRACE and new.key_id not in (orphan_id, current_id)
    assert all(v[1] != orphan_secret for v in w.served().values() if v)


def test_iam_sweep_deactivates_a_stray_key_no_record_knows(iam_world):
    w = iam_world
    w.add_secret("ci")
    current_id, _ = w.seed("ci")
    rotate_ok(w)
    stray_id, _ = w.create_key()
    rotate_ok(w)
    assert w.keys()[stray_id] == "Active", "too young: an issue request may still be in flight"
    advance(w, minutes=5)
    rotate_ok(w)
    assert w.keys() == {current_id: "Active", stray_id: "Inactive"}


def test_iam_reactivated_key_is_left_alone(iam_world):
    w = iam_world
    w.add_secret("ci")
    old_id, _ = w.seed("ci")
    rotate_ok(w, force=True)
    advance(w, hours=49)
    rotate_ok(w)
    assert w.keys()[old_id] == "Inactive"
    w.iam_user.activate(old_id)                       # a forgotten consumer is rescued by hand
    advance(w, days=8)
    rotate_ok(w)
    assert w.keys()[old_id] == "Active", "neither the sweep nor the purge touches a rescued key"


def test_iam_compromised_revoke_deactivates_and_deletes_at_once(iam_world):
    w = iam_world
    w.add_secret("ci")
    old_id, _ = w.seed("ci")
    rotate_ok(w)                                     # adopted
    engine = w.engine()
    report = revoke_compromised(engine, next(s for s in engine.runtime.secrets if s.name == "ci"))
    assert report.revoked and report.contained
    new_id = w.record().current.key_id
    assert w.keys() == {new_id: "Active"}, "deactivated and deleted at once: no rescue window"
    assert {v[0] for v in w.served().values()} == {new_id}
    assert "deleted" in actions(w)


# --- configuration -------------------------------------------------------------------------

def test_iam_fields_are_refused_for_an_issuer_of_plain_keys(tmp_path):
    from rotator import config
    from rotator.errors import ConfigError
    from rotator.runtime import Runtime

    data = {"issuers": {"q": {"type": "quivaworks", "base_url": "http://127.0.0.1:9", "admin_key": {"env": "X"}}},
            "backends": {"f": {"type": "file", "directory": str(tmp_path)}},
            "secrets": [{"name": "s", "issuer": "q", "targets": [
                {"backend": "f", "path": "s.json", "fields": {"access_key_id": "A"}}]}]}
    with pytest.raises(ConfigError, match=r"secrets\[0\]\.targets\[0\]\.fields"):
        Runtime(config.load(data=data))


def test_iam_unknown_part_in_fields_is_named(iam_world):
    from rotator.errors import ConfigError

    w = iam_world
    w.add_secret("ci", fields={"session_token": "AWS_SESSION_TOKEN"})
    with pytest.raises(ConfigError, match="unknown part 'session_token'"):
        w.runtime()


def test_iam_settings_are_validated_without_the_network(tmp_path):
    from rotator.errors import ConfigError
    from rotator.interfaces import ProviderContext
    from rotator.testing import FakeClock
    from rotator_providers.aws.iam import IamIssuer

    context = ProviderContext(clock=FakeClock(), sleep=lambda s: None, resolve_credential=lambda r, w: None)
    with pytest.raises(ConfigError, match="user_name"):
        IamIssuer("iam", {"user_name": "no spaces allowed"}, context)
    with pytest.raises(ConfigError, match="propagation_timeout"):
        IamIssuer("iam", {"user_name": "ci", "propagation_timeout": "1h"}, context)
    with pytest.raises(ConfigError, match="endpoint_url"):
        IamIssuer("iam", {"user_name": "ci", "endpoint_url": "http://iam.example.com"}, context)


# --- review --------------------------------------------------------------------------------------

def review_rows(w, capsys, monkeypatch) -> tuple[dict[str, dict], str]:
    """``rotator review -o json`` on the world's config and clock: rows by key id as printed (an
    access key id is shown as its first and last four characters, never whole), and the output."""
    from rotator import cli, cli_ops, config as config_module
    from rotator.runtime import Runtime
    from tests.world import to_toml

    monkeypatch.setattr(cli_ops, "_runtime", lambda args, **options: Runtime(
        config_module.load(args.config), clock=w.clock, sleep=w.clock.sleep))
    config = w.root / "rotator.toml"
    config.write_text(to_toml(w.config_data()))
    capsys.readouterr()
    code = cli.main(["review", "-c", str(config), "-o", "json", "--quiet"])
    out = capsys.readouterr().out
    assert code in (0, 1), out
    return {r["key_id"]: r for r in json.loads(out)["keys"]}, out


def shown(key_id: str) -> str:
    return f"{key_id[:4]}…{key_id[-4:]}"


def test_iam_review_lists_keys_with_age_status_last_use(iam_world, capsys, monkeypatch):
    w = iam_world
    w.add_secret("ci")
    old_id, _ = w.seed("ci")
    rotate_ok(w, force=True)
    current_id = w.record().current.key_id
    advance(w, hours=49)
    rotate_ok(w)                                   # the old key is deactivated
    advance(w, days=8)
    rows, out = review_rows(w, capsys, monkeypatch)
    assert set(rows) == {shown(current_id), shown(old_id)}
    current, old = rows[shown(current_id)], rows[shown(old_id)]
    assert current["role"] == "current" and current["status"] == "active" and current["age"]
    assert current["last_use"] and current["created"]
    assert old["status"] == "inactive" and "past-delete-after" in old["flags"]
    served = {v for pair in w.served().values() for v in pair}
    assert not any(v in out for v in served), "no part of a value is printed whole"


def test_iam_review_flags_keys_not_managed_and_deactivated_by_hand(iam_world, capsys, monkeypatch):
    w = iam_world
    w.add_secret("ci")
    current_id, _ = w.seed("ci")
    rotate_ok(w)
    stray_id, stray_secret = w.create_key()
    assert w.iam_user.works(stray_id, stray_secret)
    rows, out = review_rows(w, capsys, monkeypatch)
    stray = rows[shown(stray_id)]
    assert stray["role"] == "orphan" and "not-managed" in stray["flags"] and "sts" in stray["last_use"]
    assert rows[shown(current_id)]["role"] == "current"
    w.iam_user.deactivate(stray_id)
    rows, _ = review_rows(w, capsys, monkeypatch)
    assert "deactivated-by-hand" in rows[shown(stray_id)]["flags"]
    assert stray_secret not in out


# --- rotator check ---------------------------------------------------------------------------

def test_iam_check_reads_the_user_and_its_keys_and_changes_nothing(iam_world, capsys, monkeypatch):
    from rotator import check
    from tests.integration.test_check import _args
    from tests.world import to_toml

    w = iam_world
    w.add_secret("ci")
    key_id, _ = w.seed("ci")
    path = w.root / "rotator.toml"
    path.write_text(to_toml(w.config_data()))
    before = w.keys()
    capsys.readouterr()
    code = check.cmd_check(_args("-c", str(path), "check", "-o", "json"))
    data = json.loads(capsys.readouterr().out)
    assert code == 0, data
    issuer = next(r for r in data["issuers"] if r["issuer"] == "iam")
    checks = {f["check"]: f for f in issuer["findings"]}
    assert checks["sign-in"]["status"] == "ok" and w.user in checks["sign-in"]["detail"]
    assert checks["key limit"]["status"] == "ok" and "1 access key(s), 1 active" in checks["key limit"]["detail"]
    assert w.keys() == before, "check changes nothing at IAM"


def test_iam_check_fails_for_a_user_that_does_not_exist(iam_world, capsys):
    from rotator import check
    from tests.integration.test_check import _args
    from tests.world import to_toml

    w = iam_world
    w.issuer["user_name"] = "no-such-user-anywhere"
    w.add_secret("ci")
    path = w.root / "rotator.toml"
    path.write_text(to_toml(w.config_data()))
    capsys.readouterr()
    code = check.cmd_check(_args("-c", str(path), "check", "-o", "json"))
    data = json.loads(capsys.readouterr().out)
    issuer = next(r for r in data["issuers"] if r["issuer"] == "iam")
    sign_in = next(f for f in issuer["findings"] if f["check"] == "sign-in")
    assert code == 1 and sign_in["status"] == "fail" and "does not exist" in sign_in["detail"]
