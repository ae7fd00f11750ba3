"""End-to-end rotations with AWS Secrets Manager (moto server over HTTP) as the primary and as a
secondary, the QuivaWorks emulator as the issuer. Reads always name the stage explicitly."""

from __future__ import annotations

import json
from collections import Counter
from datetime import timedelta

import pytest

from rotator.engine import Engine
from rotator.models import Phase
from tests.integration.aws_support import assert_everywhere, at, ops
from tests.servers.aws import REGION

SECRET_ID = "prod/web/quiva"


@pytest.fixture
def aws(world, moto_url, moto_server):
    """``world`` with an ``aws`` backend on the clean moto server; returns the moto server handle."""
    world.backends["aws"] = {"type": "aws_secrets_manager", **moto_server.settings(tags={"team": "web"})}
    return moto_server


def stage_of(moto, label: str, region: str = REGION) -> str | None:
    """The ``api_key`` of SECRET_ID's version holding ``label`` (None if no version holds it)."""
    return at(moto, label, SECRET_ID, region)


def aws_calls(world) -> Counter:
    """The ``aws`` backend's operations by name since the last count."""
    return ops(world.calls, "aws")


def test_aws_primary_with_a_file_secondary_through_grace_and_revoke(world, aws, emulator, clock):
    world.add_secret("web", targets=[{"backend": "aws", "secret_id": SECRET_ID},
                                     {"backend": "app", "path": "web.json"}])
    old = world.seed("web", age=timedelta(days=80))
    assert world.rotate().exit_code == 0                        # adopts the hand-made key, rotates it
    record = world.record("web")
    assert record.phase is Phase.GRACE and record.previous.key_id is not None
    new = stage_of(aws, "AWSCURRENT")
    assert new != old and emulator.is_active(new)
    assert stage_of(aws, "AWSPREVIOUS") == old, "the old key stays readable as AWSPREVIOUS in grace"
    assert stage_of(aws, "AWSPENDING") == new, "as after an AWS rotation: AWSPENDING stays on the new value"
    world.assert_i1("web")
    assert_everywhere(world, "web", current=new, previous=old)

    clock.advance(timedelta(hours=47))
    assert world.rotate().outcomes[0].status == "ok" and emulator.is_active(old)
    assert stage_of(aws, "AWSPREVIOUS") == old

    clock.advance(timedelta(hours=2))
    assert world.rotate().exit_code == 0
    assert not emulator.is_active(old)
    record = world.record("web")
    assert record.phase is Phase.IDLE and record.rotations == 1 and record.current.key_id is not None
    assert stage_of(aws, "AWSCURRENT") == new
    world.assert_i1("web")

    again = world.rotate()                                      # I5: nothing left to do
    assert again.outcomes[0].status == "ok" and not again.outcomes[0].actions


def test_aws_secondary_behind_a_file_primary_through_grace_and_revoke(world, aws, emulator, clock):
    world.add_secret("web", targets=[{"backend": "store", "path": "web.json"},
                                     {"backend": "aws", "secret_id": SECRET_ID}])
    old = world.seed("web", age=timedelta(days=80))
    assert world.rotate().exit_code == 0
    new = stage_of(aws, "AWSCURRENT")
    assert new != old and emulator.is_active(new)
    assert stage_of(aws, "AWSPREVIOUS") == old
    assert world.record("web").phase is Phase.GRACE
    world.assert_i1("web")

    clock.advance(timedelta(hours=49))
    assert world.rotate().exit_code == 0
    assert not emulator.is_active(old) and world.record("web").phase is Phase.IDLE
    assert stage_of(aws, "AWSCURRENT") == new
    world.assert_i1("web")


def test_calls_per_rotation_match_the_documented_counts(world, aws, clock):
    """docs/backends/aws-secrets-manager.md, "API calls": a fresh runtime per run (CronJob) for
    ``web`` and ``batch``; one runtime kept across runs (the daemon) for ``web2`` and ``batch2``."""
    for name in ("web", "web2"):
        world.add_secret(name, targets=[{"backend": "aws", "secret_id": f"prod/{name}/quiva"},
                                        {"backend": "app", "path": f"{name}.json"}])
    for name in ("batch", "batch2"):
        world.add_secret(name, targets=[{"backend": "store", "path": f"{name}.json"},
                                        {"backend": "aws", "secret_id": f"prod/{name}/quiva"}])
    for name in ("web", "web2", "batch", "batch2"):
        world.seed(name, age=timedelta(days=80))
    world.rotate()                                              # first rotation after adoption
    clock.advance(timedelta(hours=49))
    world.rotate()                                              # revoke + finish
    clock.advance(timedelta(days=80))                           # the next rotation: a steady state
    daemon = world.runtime("daemon")
    aws_calls(world)

    assert world.rotate(["web"]).exit_code == 0
    assert aws_calls(world) == {"GetSecretValue": 1, "PutSecretValue": 4, "UpdateSecretVersionStage": 3}
    assert world.rotate(["batch"]).exit_code == 0
    assert aws_calls(world) == {"GetSecretValue": 2, "PutSecretValue": 1}     # deploy, then read back
    assert Engine(daemon).run(["web2", "batch2"]).exit_code == 0
    aws_calls(world)

    # The revoke needs evidence that no other secret of the issuer serves the old key: the run
    # reads the targets of the other three (their AWS ones: one batch), once per run whatever the
    # number of revokes in it. The versions their pointers name as previous are not read: the
    # evidence compares fingerprints, which the pointers carry (Secret.deferred).
    evidence = {"BatchGetSecretValue": 1}
    clock.advance(timedelta(hours=49))
    assert world.rotate(["web"]).exit_code == 0
    assert aws_calls(world) == Counter({"GetSecretValue": 2, "PutSecretValue": 1, "UpdateSecretVersionStage": 1}) \
        + Counter(evidence)
    assert world.rotate(["batch"]).exit_code == 0
    assert aws_calls(world) == Counter({"GetSecretValue": 2}) + Counter(evidence)
    assert Engine(daemon).run(["web2"]).exit_code == 0
    assert aws_calls(world) == Counter({"GetSecretValue": 2, "PutSecretValue": 1, "UpdateSecretVersionStage": 1}) \
        + Counter(evidence)
    assert Engine(daemon).run(["batch2"]).exit_code == 0
    assert aws_calls(world) == Counter({"GetSecretValue": 2}) + Counter(evidence)
    for name in ("web", "web2", "batch", "batch2"):
        world.assert_i1(name)
        assert world.record(name).rotations == 2


def test_bootstrap_creates_the_secret_with_tags_and_description_but_no_value_in_them(world, aws):
    world.add_secret("web", targets=[{"backend": "aws", "secret_id": SECRET_ID},
                                     {"backend": "app", "path": "web.json"}])
    report = world.rotate()
    assert report.exit_code == 0, report.outcomes
    world.assert_i1("web")
    value = stage_of(aws, "AWSCURRENT")
    described = aws.client().describe_secret(SecretId=SECRET_ID)
    assert {"Key": "team", "Value": "web"} in described["Tags"]
    assert "rotator" in described["Description"]
    assert value not in json.dumps(described, default=str)
    assert world.record("web").phase is Phase.IDLE and world.record("web").rotations == 1


def test_fields_an_application_put_in_the_secret_survive_a_rotation(world, aws, emulator, clock):
    world.add_secret("web", targets=[{"backend": "aws", "secret_id": SECRET_ID},
                                     {"backend": "app", "path": "web.json"}])
    old = emulator.create_key("ops@example.com", name="web (by hand)", created_on=clock.now() - timedelta(days=80))["key"]
    aws.client().create_secret(Name=SECRET_ID, SecretString=json.dumps(
        {"endpoint": "https://api.quiva.ai", "api_key": old, "timeout": 5}))
    world.seed_value("web", old)                        # the file secondary; the secret keeps its fields

    assert world.rotate().exit_code == 0
    payload = json.loads(aws.client().get_secret_value(SecretId=SECRET_ID, VersionStage="AWSCURRENT")["SecretString"])
    assert payload["endpoint"] == "https://api.quiva.ai" and payload["timeout"] == 5
    assert list(payload)[:3] == ["endpoint", "api_key", "timeout"], "fields keep their places"
    assert payload["api_key"] != old and emulator.is_active(payload["api_key"])
    pending = json.loads(aws.client().get_secret_value(SecretId=SECRET_ID, VersionStage="AWSPENDING")["SecretString"])
    assert pending["endpoint"] == "https://api.quiva.ai", "the pending version has the same shape"
    world.assert_i1("web")


def test_several_regions_are_several_targets_each_verified_and_repaired_independently(world, aws, emulator, clock):
    world.add_secret("web", targets=[{"backend": "store", "path": "web.json"},
                                     {"backend": "aws", "secret_id": SECRET_ID, "region": "us-east-1"},
                                     {"backend": "aws", "secret_id": SECRET_ID, "region": "eu-west-1"}])
    old = world.seed("web", age=timedelta(days=80))
    assert world.rotate().exit_code == 0
    new = stage_of(aws, "AWSCURRENT")
    assert stage_of(aws, "AWSCURRENT", region="eu-west-1") == new != old
    assert {label for label in world.snapshots("web")} == {
        "store:" + str(world.root / "store" / "web.json"), "aws:us-east-1/prod/web/quiva", "aws:eu-west-1/prod/web/quiva"}

    # Someone puts the old key back in one region during the grace window: only that region is
    # found drifted and re-deployed; the old key is revoked once both regions hold the new one.
    aws.client(region="eu-west-1").put_secret_value(SecretId=SECRET_ID, SecretString=json.dumps({"api_key": old}))
    clock.advance(timedelta(hours=49))
    world.calls.clear()
    report = world.rotate()
    assert report.exit_code == 0, report.outcomes
    assert any(a.startswith("deployed") and "eu-west-1" in a and "us-east-1" not in a
               for a in report.outcomes[0].actions), report.outcomes[0].actions
    assert stage_of(aws, "AWSCURRENT", region="eu-west-1") == new
    assert not emulator.is_active(old)
    world.assert_i1("web")


def test_a_replica_region_is_verified_in_its_own_region(world, aws, emulator, clock):
    world.backends["aws"]["replica_regions"] = ["eu-west-1"]
    world.add_secret("web", targets=[{"backend": "store", "path": "web.json"},
                                     {"backend": "aws", "secret_id": SECRET_ID},
                                     {"backend": "aws", "secret_id": SECRET_ID, "region": "eu-west-1",
                                      "replica": True}])
    report = world.rotate(["web"])                     # bootstrap: creates the secret with its replica
    assert report.exit_code == 0, report.outcomes
    replica = aws.client(region="eu-west-1").describe_secret(SecretId=SECRET_ID)
    assert replica["PrimaryRegion"] == "us-east-1"
    first = stage_of(aws, "AWSCURRENT", region="eu-west-1")
    assert first == stage_of(aws, "AWSCURRENT") and emulator.is_active(first)
    labels = set(world.snapshots("web"))
    assert "aws:eu-west-1/prod/web/quiva" in labels
    world.assert_i1("web")

    assert world.rotate(["web"], force=True).exit_code == 0
    assert stage_of(aws, "AWSCURRENT", region="eu-west-1") == stage_of(aws, "AWSCURRENT") != first
    assert stage_of(aws, "AWSPREVIOUS", region="eu-west-1") == first
    world.assert_i1("web")


def test_a_run_reads_aws_primaries_twenty_per_request(world, aws, emulator, clock):
    """The start-of-run read of every primary is batched (BatchGetSecretValue, 20 secrets per
    request), in a rotation run and in an idle one, with several workers; nothing else changes."""
    world.defaults["workers"] = 4
    for i in range(45):
        world.add_secret(f"fleet-{i:02d}", targets=[{"backend": "aws", "secret_id": f"fleet/{i:02d}"},
                                                   {"backend": "app", "path": f"fleet-{i:02d}.json"}])
        world.seed(f"fleet-{i:02d}", age=timedelta(days=10))
    aws_calls(world)
    first = world.rotate()                                      # adopts all 45
    assert first.exit_code == 0 and {o.status for o in first.outcomes} == {"changed"}
    calls = aws_calls(world)
    assert calls["BatchGetSecretValue"] == 3
    assert calls["GetSecretValue"] == 0, calls                 # adoption writes against the cached head

    idle = world.rotate()                                       # nothing due: one request per 20 secrets
    assert {o.status for o in idle.outcomes} == {"ok"}
    assert aws_calls(world) == Counter({"BatchGetSecretValue": 3})

    clock.advance(timedelta(days=70))                           # all due: rotate in one run
    world.defaults["grace"] = "0s"
    done = world.rotate()
    assert done.exit_code == 0 and {o.status for o in done.outcomes} == {"changed"}
    assert aws_calls(world)["BatchGetSecretValue"] == 3
    for i in range(45):
        world.assert_i1(f"fleet-{i:02d}")


def test_the_second_run_rereads_aws_secondaries_twenty_per_request(world, aws, emulator, clock):
    """I3's re-read of the secondaries before the old key is revoked is batched like the primaries,
    and so is the read each deploy starts from; the read-back right after the first run's deploy is
    not (it must follow the write). The old key's version is not read: its pointer's fingerprint
    is all the evidence needs."""
    world.defaults["workers"] = 4
    names = [f"fleet-{i:02d}" for i in range(45)]
    for name in names:
        world.add_secret(name, targets=[{"backend": "app", "path": f"{name}.json"},
                                        {"backend": "aws", "secret_id": f"fleet/{name}"}])
        world.seed(name, age=timedelta(days=80))
    daemon = world.engine()                                     # one process for both runs
    aws_calls(world)
    first = daemon.run()                                        # adopt, issue, deploy, read back
    assert first.exit_code == 0 and all(world.record(n).phase is Phase.GRACE for n in names)
    calls = aws_calls(world)
    assert calls["BatchGetSecretValue"] == 3, calls            # the deploys' reads: 20 per request
    assert calls["GetSecretValue"] == 45, calls                 # each read-back alone, after its deploy
    assert calls["PutSecretValue"] == 45, calls

    clock.advance(timedelta(hours=49))
    done = daemon.run()                                         # re-read, revoke the old keys, finish
    assert done.exit_code == 0 and all(world.record(n).phase is Phase.IDLE for n in names)
    assert aws_calls(world) == Counter({"BatchGetSecretValue": 3}), "no single read, no write"
    for name in names:
        world.assert_i1(name)


def test_a_cronjob_second_run_reads_in_batches_and_not_the_old_keys_versions(world, aws, emulator, clock):
    """A fresh process (a CronJob) re-reads in batches too; the old key's version, which each
    pointer describes by its fingerprint, is not read (Secret.deferred)."""
    for i in range(25):
        world.add_secret(f"job-{i:02d}", targets=[{"backend": "app", "path": f"job-{i:02d}.json"},
                                                  {"backend": "aws", "secret_id": f"job/{i:02d}"}])
        world.seed(f"job-{i:02d}", age=timedelta(days=80))
    assert world.rotate().exit_code == 0
    clock.advance(timedelta(hours=49))
    aws_calls(world)
    assert world.rotate().exit_code == 0
    assert aws_calls(world) == Counter({"BatchGetSecretValue": 2})


def test_a_secondary_that_drifted_is_seen_by_the_batched_reread(world, aws, emulator, clock):
    """The batched re-read is real evidence: a secondary that lost the new key during the grace
    window is repaired before the old key is revoked."""
    world.add_secret("web", targets=[{"backend": "app", "path": "web.json"},
                                     {"backend": "aws", "secret_id": "drift/web"}])
    world.add_secret("api", targets=[{"backend": "app", "path": "api.json"},
                                     {"backend": "aws", "secret_id": "drift/api"}])
    old = {name: world.seed(name, age=timedelta(days=80)) for name in ("web", "api")}
    assert world.rotate().exit_code == 0
    aws.client().put_secret_value(SecretId="drift/web", SecretString=json.dumps({"api_key": old["web"]}))
    clock.advance(timedelta(hours=49))
    aws_calls(world)
    done = world.rotate()
    assert done.exit_code == 0, [(o.secret, o.error) for o in done.outcomes]
    assert aws_calls(world)["BatchGetSecretValue"] == 1
    web = next(o for o in done.outcomes if o.secret == "web")
    assert any(a.startswith("deployed") for a in web.actions), web.actions     # repaired first
    for name in ("web", "api"):
        assert not emulator.is_active(old[name])
        world.assert_i1(name)


def test_the_daemons_drift_pass_reads_aws_targets_twenty_per_request(world, aws, emulator, clock):
    """Each reconcile reads every target for drift; on AWS 45 secondaries cost 3 requests, and a
    target changed by hand is still seen as drifted."""
    from rotator.daemon import Reconciler

    class Gauges:
        def __init__(self) -> None:
            self.drift: dict[str, bool] = {}

        def set_drift(self, secret: str, backend: str, target: str, drifted: bool) -> None:
            self.drift[secret] = drifted

        def __getattr__(self, name: str):
            return lambda *args, **kwargs: None

    for i in range(45):
        world.add_secret(f"d-{i:02d}", targets=[{"backend": "app", "path": f"d-{i:02d}.json"},
                                                {"backend": "aws", "secret_id": f"drift/{i:02d}"}])
        world.seed(f"d-{i:02d}", age=timedelta(days=10))
    gauges = Gauges()
    reconciler = Reconciler(world.runtime(), metrics=gauges)
    reconciler.reconcile()                                      # adopts every secret
    aws.client().put_secret_value(SecretId="drift/07", SecretString=json.dumps({"api_key": "ms-by-hand-0000000000"}))
    aws_calls(world)
    reconciler.reconcile()                                      # nothing due: the drift pass only
    assert aws_calls(world) == Counter({"BatchGetSecretValue": 3})
    assert len(gauges.drift) == 45 and [name for name, drifted in gauges.drift.items() if drifted] == ["d-07"]
