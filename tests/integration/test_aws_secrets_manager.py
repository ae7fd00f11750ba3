"""What the AWS Secrets Manager backend does beyond the contract suite: staging labels after each
step, the compare-and-swap on AWSCURRENT against other runners and outside writers, idempotent
ClientRequestTokens, create_if_missing, metadata that never holds a value, error translation,
several regions and replicas, assumed roles, and an application reading AWSCURRENT throughout a
rotation. Everything runs over HTTP against moto server (some through a fault-injecting proxy);
reads always name the stage (or version) explicitly."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from datetime import timedelta

import pytest

from rotator_providers.aws.sm_payload import token
from rotator_providers.aws.secrets_manager import SecretsManagerBackend
from rotator.errors import (
    BackendError,
    BackendPermissionError,
    BackendUnavailable,
    ConfigError,
    Conflict,
    CorruptPayload,
    SecretMissing,
)
from rotator.models import Phase, Snapshot
from rotator.testing import RecordingSleep, provider_context
from tests.integration.aws_support import T0, at, backends, bootstrap, chain, closed_port, rec, ref, secret

ROLE = "arn:aws:iam::123456789012:role/rotator"


# --- helpers -----------------------------------------------------------------------------------

@pytest.fixture
def calls() -> list[tuple[str, str, str]]:
    return []


@pytest.fixture
def make(moto_url, calls):
    """Build a backend on the clean moto server (or ``url``); closed at the end of the test."""
    with backends(SecretsManagerBackend, "aws", moto_url, calls) as make:
        yield make


def stages(moto, secret_id: str) -> dict[str, list[str]]:
    return moto.client().describe_secret(SecretId=secret_id)["VersionIdsToStages"]


def labelled_versions(moto, secret_id: str) -> list[tuple[str, list[str]]]:
    listing = moto.client().list_secret_version_ids(SecretId=secret_id)["Versions"]
    return sorted((v["VersionId"], sorted(v.get("VersionStages", []))) for v in listing)


# --- configuration, without the network --------------------------------------------------------

def test_importing_and_configuring_loads_no_aws_sdk():
    code = (
        "import sys\n"
        "from rotator_providers.aws.secrets_manager import SecretsManagerBackend\n"
        "from rotator.testing import provider_context\n"
        "b = SecretsManagerBackend('aws', {'region': 'eu-west-1', 'role_arn': '" + ROLE + "'}, provider_context())\n"
        "t = b.target({'secret_id': 'prod/web', 'field': 'api_key'})\n"
        "assert t.label == 'aws-sm:eu-west-1/prod/web', t.label\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('boto3', 'botocore')]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.parametrize("settings, expected", [
    ({"region": "Europe"}, "backends.aws.region: expected an AWS region name"),
    ({"colour": "red"}, "backends.aws.colour: unknown field"),
    ({"tags": {"aws:owner": "x"}}, "backends.aws.tags: tag key 'aws:owner'"),
    ({"role_arn": "rotator"}, "backends.aws.role_arn: expected an IAM role ARN"),
    ({"endpoint_url": "localhost:4566"}, "backends.aws.endpoint_url: expected an http"),
    ({"region": "eu-west-1", "replica_regions": ["eu-west-1"]}, "must not include the secret's own region"),
    ({"max_attempts": 0}, "backends.aws.max_attempts"),
    ({"aws_secret_access_key": "x"}, "backends.aws.aws_secret_access_key: unknown field"),
])
def test_bad_settings_name_the_field(settings, expected):
    with pytest.raises(ConfigError) as caught:
        SecretsManagerBackend("aws", settings, provider_context())
    assert expected in str(caught.value)


def test_targets_are_validated_and_take_their_region_from_an_arn():
    backend = SecretsManagerBackend("aws", {"region": "us-east-1"}, provider_context())
    arn = "arn:aws:secretsmanager:eu-central-1:123456789012:secret:prod/web-AbCdEf"
    target = backend.target({"secret_id": arn, "field": "token"})
    assert (target.region, target.field, target.label) == ("eu-central-1", "token", f"aws-sm:{arn}")
    assert backend.target({"secret_id": "a/b", "region": "eu-west-1"}).region == "eu-west-1"
    for spec, expected in [
        ({"secret_id": arn, "region": "us-east-1"}, "differs from the region in the secret's ARN"),
        ({"secret_id": "has space"}, "target.secret_id: expected a secret name"),
        ({"secret_id": "a", "field": "rotator"}, "reserved"),
        ({"secret_id": "a", "path": "x"}, "target.path: unknown field"),
    ]:
        with pytest.raises(ConfigError, match=expected):
            backend.target(spec)


def test_client_request_tokens_are_stable_per_write_and_distinct_per_content():
    first = token("stage", "r-1", "v-1", '{"api_key":"a"}')
    assert first == token("stage", "r-1", "v-1", '{"api_key":"a"}') and 32 <= len(first) <= 64
    assert len({first, token("stage", "r-1", "v-1", '{"api_key":"b"}'), token("stage", "r-2", "v-1", '{"api_key":"a"}'),
                token("stage", "r-1", "v-2", '{"api_key":"a"}'), token("promote", "r-1", "v-1", '{"api_key":"a"}')}) == 5


# --- staging labels ----------------------------------------------------------------------------

def test_staging_labels_after_each_step_of_a_rotation(make, moto_server):
    backend = make()
    target = backend.target({"secret_id": "app/labels"})
    sid = target.secret_id
    old, new, refused = secret("old"), secret("new"), secret("refused")

    version = backend.stage(target, old, rec(Phase.STAGED, pending=ref(old, "r-0")), expect=None)
    assert (at(moto_server, "AWSCURRENT", sid), at(moto_server, "AWSPENDING", sid)) == (None, old.reveal())
    version = backend.promote(target, rec(Phase.IDLE, current=ref(old, "r-0")), expect=version)
    assert at(moto_server, "AWSCURRENT", sid) == old.reveal()
    assert at(moto_server, "AWSPREVIOUS", sid) is None, "the bootstrap head held no key: no previous"
    assert "AWSCURRENT" in stages(moto_server, sid)[version], "the version token is AWSCURRENT's VersionId"

    version = backend.write_record(target, rec(Phase.CLAIMED, current=ref(old, "r-0"), rotation_id="r-1"),
                                   expect=version)
    version = backend.stage(target, new, rec(Phase.STAGED, current=ref(old, "r-0"), pending=ref(new)),
                            expect=version)
    assert at(moto_server, "AWSCURRENT", sid) == old.reveal()
    assert at(moto_server, "AWSPENDING", sid) == new.reveal()

    grace = rec(Phase.GRACE, current=ref(new), previous=ref(old, "r-0"), grace_until=T0)
    version = backend.promote(target, grace, expect=version)
    assert at(moto_server, "AWSCURRENT", sid) == new.reveal()
    assert at(moto_server, "AWSPREVIOUS", sid) == old.reveal()

    version = backend.write_record(target, grace.evolve(last_error="revoke: issuer timed out"), expect=version)
    assert at(moto_server, "AWSPREVIOUS", sid) == old.reveal(), "a note in grace keeps the old key as AWSPREVIOUS"
    assert at(moto_server, "AWSCURRENT", sid) == new.reveal()

    version = backend.write_record(target, rec(Phase.IDLE, current=ref(new)), expect=version)
    assert at(moto_server, "AWSCURRENT", sid) == new.reveal()

    version = backend.stage(target, refused, rec(Phase.STAGED, current=ref(new), pending=ref(refused, "r-2")),
                            expect=version)
    assert at(moto_server, "AWSPENDING", sid) == refused.reveal()
    version = backend.discard_pending(target, rec(Phase.IDLE, current=ref(new)), expect=version)
    assert at(moto_server, "AWSPENDING", sid) is None, "a rolled-back value loses AWSPENDING"
    assert at(moto_server, "AWSCURRENT", sid) == new.reveal()
    assert backend.read(target).version == version
    labelled = [label for labels in stages(moto_server, sid).values() for label in labels]
    assert labelled.count("AWSCURRENT") == 1


# --- compare-and-swap --------------------------------------------------------------------------

def test_cas_against_another_runner_and_an_outside_writer(make, moto_server):
    runner_a, runner_b = make(), make()            # two processes: nothing shared but AWS
    target = runner_a.target({"secret_id": "app/cas"})
    bootstrap(runner_a, target, secret("first"))

    seen_a, seen_b = runner_a.read(target), runner_b.read(target)
    assert seen_a.version == seen_b.version
    runner_a.write_record(target, rec(Phase.CLAIMED, owner="a", rotation_id="r-a"), expect=seen_a.version)
    with pytest.raises(Conflict, match="AWSCURRENT is no longer on version"):
        runner_b.write_record(target, rec(Phase.CLAIMED, owner="b", rotation_id="r-b"), expect=seen_b.version)
    assert runner_b.read(target).record.owner == "a"

    # Both stage from the same version: the loser hands AWSPENDING back to the winner's value.
    base = runner_a.read(target).version
    runner_b.read(target)
    winner, loser = secret("winner"), secret("loser")
    runner_a.stage(target, winner, rec(Phase.STAGED, owner="a", pending=ref(winner, "r-a")), expect=base)
    with pytest.raises(Conflict):
        runner_b.stage(target, loser, rec(Phase.STAGED, owner="b", pending=ref(loser, "r-b")), expect=base)
    assert at(moto_server, "AWSPENDING", target.secret_id) == winner.reveal()
    assert runner_b.read(target).pending == winner

    # A person promoting another version by hand (console-style label move) is caught as well.
    seen = runner_a.read(target)
    client = moto_server.client()
    manual = client.put_secret_value(SecretId=target.secret_id, SecretString=json.dumps({"api_key": "by-hand-1234"}),
                                     VersionStages=["MANUAL"])
    client.update_secret_version_stage(SecretId=target.secret_id, VersionStage="AWSCURRENT",
                                       MoveToVersionId=manual["VersionId"], RemoveFromVersionId=seen.version)
    with pytest.raises(Conflict):
        runner_a.write_record(target, rec(Phase.IDLE, owner=None), expect=seen.version)
    assert at(moto_server, "AWSCURRENT", target.secret_id) == "by-hand-1234"


def test_lost_replies_are_retried_with_the_same_token_and_no_false_conflict(make, fault_proxy, moto_server):
    backend = make(url=fault_proxy.url, sleep=RecordingSleep())
    target = backend.target({"secret_id": "app/lost-replies"})
    version = bootstrap(backend, target, secret("first"))
    before = len(moto_server.client().list_secret_version_ids(SecretId=target.secret_id)["Versions"])

    mark = len(fault_proxy.seen)
    fault_proxy.lose_reply("PutSecretValue").lose_reply("UpdateSecretVersionStage")
    saved = rec(Phase.CLAIMED, owner="a", rotation_id="r-9")
    written = backend.write_record(target, saved, expect=version)

    fresh = make().read(target)
    assert fresh.version == written and fresh.record == saved
    after = moto_server.client().list_secret_version_ids(SecretId=target.secret_id)["Versions"]
    assert len(after) == before + 1, "the retried PutSecretValue reused its ClientRequestToken"
    assert fault_proxy.seen[mark:] == ["PutSecretValue", "PutSecretValue", "UpdateSecretVersionStage",
                                       "UpdateSecretVersionStage", "DescribeSecret"]


def test_a_repeated_deploy_writes_nothing(make, moto_server, calls):
    backend = make()
    target = backend.target({"secret_id": "app/idempotent"})
    old, new = secret("old"), secret("new")
    backend.deploy(target, old, None, ref(old))
    backend.deploy(target, new, old, ref(new, "r-2"))
    versions = labelled_versions(moto_server, target.secret_id)
    calls.clear()
    backend.deploy(target, new, old, ref(new, "r-2"))
    assert calls == [("aws", "GetSecretValue", "ok")]
    assert labelled_versions(moto_server, target.secret_id) == versions
    assert (at(moto_server, "AWSCURRENT", target.secret_id), at(moto_server, "AWSPREVIOUS", target.secret_id)) == (
        new.reveal(), old.reveal())


# --- creating ----------------------------------------------------------------------------------

def test_create_if_missing_off_refuses_to_create_but_fills_an_empty_secret(make, moto_server):
    backend = make(create_if_missing=False)
    missing = backend.target({"secret_id": "app/missing"})
    value = secret("v")
    for attempt in (lambda: backend.deploy(missing, value, None, ref(value)),
                    lambda: backend.stage(missing, value, rec(Phase.STAGED), expect=None),
                    lambda: backend.write_record(missing, rec(), expect=None)):
        with pytest.raises(SecretMissing, match="aws-sm:us-east-1/app/missing: does not exist .create_if_missing is false"):
            attempt()
    assert backend.read(missing) == Snapshot()

    client = moto_server.client()
    client.create_secret(Name="app/empty-1")            # made by Terraform, say: no value yet
    client.create_secret(Name="app/empty-2")
    backend.deploy(backend.target({"secret_id": "app/empty-1"}), value, None, ref(value))
    assert at(moto_server, "AWSCURRENT", "app/empty-1") == value.reveal()
    primary = backend.target({"secret_id": "app/empty-2"})
    backend.stage(primary, value, rec(Phase.STAGED, pending=ref(value)), expect=None)
    snap = backend.read(primary)
    assert (snap.current, snap.pending, snap.record.phase) == (None, value, Phase.STAGED)


def test_create_if_missing_on_creates_with_kms_key_description_and_tags(make, moto_server):
    backend = make(kms_key_id="alias/rotator-keys", description="Quiva key of the web app",
                   tags={"team": "web", "managed-by": "rotator"})
    target = backend.target({"secret_id": "app/created"})
    value = secret("v")
    backend.deploy(target, value, None, ref(value))
    described = moto_server.client().describe_secret(SecretId="app/created")
    assert described["KmsKeyId"] == "alias/rotator-keys"
    assert described["Description"] == "Quiva key of the web app"
    assert sorted((t["Key"], t["Value"]) for t in described["Tags"]) == [("managed-by", "rotator"), ("team", "web")]

    arn = backend.target({"secret_id": "arn:aws:secretsmanager:us-east-1:123456789012:secret:nope-AbCdEf"})
    with pytest.raises(SecretMissing, match="an ARN can only name an existing secret"):
        backend.deploy(arn, value, None, ref(value))


def test_no_value_in_tags_description_labels_or_rotator_section(make, moto_server):
    backend = make(tags={"team": "web"})
    target = backend.target({"secret_id": "app/metadata"})
    old, new = secret("old"), secret("new")
    version = bootstrap(backend, target, old)
    version = backend.stage(target, new, rec(Phase.STAGED, current=ref(old, "r-0"), pending=ref(new)), expect=version)
    backend.promote(target, rec(Phase.GRACE, current=ref(new), previous=ref(old, "r-0")), expect=version)

    client = moto_server.client()
    described = client.describe_secret(SecretId=target.secret_id)
    listing = client.list_secret_version_ids(SecretId=target.secret_id)
    sections = []
    for item in listing["Versions"]:
        payload = json.loads(client.get_secret_value(SecretId=target.secret_id,
                                                     VersionId=item["VersionId"])["SecretString"])
        sections.append(payload["rotator"])
        assert set(payload) <= {"api_key", "rotator"}
    text = json.dumps([described, listing, sections], default=str)
    for value in (old, new):
        assert value.reveal() not in text and value.reveal()[-12:] not in text
    assert new.fingerprint in text, "the metadata describes the key by fingerprint"


# --- errors ------------------------------------------------------------------------------------

ERRORS = [
    ("read", "GetSecretValue", 400, "AccessDeniedException", "User: arn:aws:iam::123456789012:user/rotator is not authorized",
     BackendPermissionError, ["secretsmanager:GetSecretValue", "app/errors", "not authorized"]),
    ("deploy", "PutSecretValue", 400, "AccessDeniedException", "not authorized",
     BackendPermissionError, ["secretsmanager:PutSecretValue", "app/errors"]),
    ("write_record", "UpdateSecretVersionStage", 400, "AccessDeniedException", "not authorized",
     BackendPermissionError, ["secretsmanager:UpdateSecretVersionStage", "app/errors"]),
    ("read", "GetSecretValue", 400, "DecryptionFailure", "KMS key is disabled",
     BackendPermissionError, ["kms:Decrypt", "KMS key alias/web"]),
    ("deploy", "PutSecretValue", 400, "EncryptionFailure", "KMS key is pending deletion",
     BackendPermissionError, ["kms:GenerateDataKey", "KMS key alias/web"]),
    ("read", "GetSecretValue", 400, "AccessDeniedException", "Access to KMS is not allowed",
     BackendPermissionError, ["kms:Decrypt", "KMS key alias/web"]),
    ("read", "GetSecretValue", 400, "ThrottlingException", "Rate exceeded",
     BackendUnavailable, ["3 tries", "ThrottlingException"]),
    ("deploy", "PutSecretValue", 500, "InternalServiceError", "oops",
     BackendUnavailable, ["PutSecretValue failed after 3 tries"]),
    ("read", "GetSecretValue", 400, "UnrecognizedClientException", "The security token included in the request is invalid",
     BackendPermissionError, ["credentials problem", "standard AWS chain"]),
]


@pytest.mark.parametrize("op, operation, status, code, message, kind, fragments", ERRORS,
                         ids=[f"{e[0]}-{e[3]}" for e in ERRORS])
def test_aws_errors_become_clear_rotator_errors(make, fault_proxy, moto_server, op, operation, status, code,
                                                message, kind, fragments):
    sleep = RecordingSleep()
    backend = make(url=fault_proxy.url, sleep=sleep, kms_key_id="alias/web")
    target = backend.target({"secret_id": "app/errors"})
    old, new = secret("old"), secret("new")
    version = bootstrap(backend, target, old)
    fault_proxy.fail(operation, times=10, status=status, code=code, message=message)
    attempts = {
        "read": lambda: backend.read(target),
        "deploy": lambda: backend.deploy(target, new, old, ref(new)),
        "write_record": lambda: backend.write_record(target, rec(Phase.CLAIMED), expect=version),
    }
    with pytest.raises(kind) as caught:
        attempts[op]()
    error = caught.value
    assert str(error).startswith("aws: aws-sm:us-east-1/app/errors: ")
    for fragment in fragments:
        assert fragment in str(error)
    assert error.transient is (kind is BackendUnavailable)
    assert len(sleep.waits) == (2 if error.transient else 0), "only transient errors are retried"
    assert error.__cause__ is None and error.__context__ is None, "nothing foreign is chained"
    for value in (old, new):
        assert value.reveal() not in chain(error)


def test_throttling_is_retried_with_backoff_and_every_attempt_is_reported(make, fault_proxy, calls):
    sleep = RecordingSleep()
    backend = make(url=fault_proxy.url, sleep=sleep)
    target = backend.target({"secret_id": "app/throttled"})
    value = secret("v")
    backend.deploy(target, value, None, ref(value))
    calls.clear()
    fault_proxy.fail("GetSecretValue", times=2)
    assert backend.read(target).current == value
    assert calls == [("aws", "GetSecretValue", "ThrottlingException")] * 2 + [("aws", "GetSecretValue", "ok")]
    assert len(sleep.waits) == 2 and all(0 <= w <= 1.0 for w in sleep.waits)


def test_an_unreachable_endpoint_is_transient(make, calls):
    sleep = RecordingSleep()
    backend = make(url=f"http://127.0.0.1:{closed_port()}", sleep=sleep, connect_timeout=1)
    with pytest.raises(BackendUnavailable, match="GetSecretValue failed after 3 tries .EndpointConnectionError"):
        backend.read(backend.target({"secret_id": "app/x"}))
    assert len(sleep.waits) == 2 and [c[2] for c in calls] == ["EndpointConnectionError"] * 3


def test_no_region_anywhere_is_a_clear_error(make, monkeypatch):
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    backend = make(region=None)
    target = backend.target({"secret_id": "app/x"})
    assert (target.region, target.label) == (None, "aws-sm:app/x")
    with pytest.raises(BackendError, match="no AWS region: set `region` on backends.aws or on the target"):
        backend.read(target)


def test_a_secret_scheduled_for_deletion_and_unreadable_payloads(make, moto_server):
    backend = make()
    client = moto_server.client()
    client.create_secret(Name="app/deleted", SecretString=json.dumps({"api_key": "sk-aws-deleted-0123456789"}))
    client.delete_secret(SecretId="app/deleted", RecoveryWindowInDays=7)
    with pytest.raises(BackendError, match="scheduled for deletion; restore it") as caught:
        backend.read(backend.target({"secret_id": "app/deleted"}))
    assert not isinstance(caught.value, SecretMissing)

    client.create_secret(Name="app/plain", SecretString="sk-aws-plain-string-DONOTECHO")
    client.create_secret(Name="app/binary", SecretBinary=b"\x00\x01")
    client.create_secret(Name="app/number", SecretString=json.dumps({"api_key": 42}))
    for name, expected in [("app/plain", "is not valid JSON"), ("app/binary", "holds a binary value"),
                           ("app/number", "field 'api_key' is a JSON number")]:
        with pytest.raises(CorruptPayload, match=expected) as caught:
            backend.read(backend.target({"secret_id": name}))
        assert "DONOTECHO" not in chain(caught.value)


# --- regions and replicas ----------------------------------------------------------------------

def test_replicas_are_read_in_their_region_and_never_written(make, moto_server):
    sleep = RecordingSleep()
    backend = make(replica_regions=["eu-west-1"], replica_wait=5, sleep=sleep)
    source = backend.target({"secret_id": "app/replicated"})
    replica = backend.target({"secret_id": "app/replicated", "region": "eu-west-1", "replica": True})
    assert replica.label == "aws-sm:eu-west-1/app/replicated" != source.label
    first, second = secret("first"), secret("second")

    backend.deploy(source, first, None, ref(first))     # creates the secret with its replica
    backend.deploy(replica, first, None, ref(first))    # verifies the replica, writes nothing
    assert backend.read(replica).current == first
    assert at(moto_server, "AWSCURRENT", "app/replicated", region="eu-west-1") == first.reveal()
    assert sleep.waits == []

    with pytest.raises(BackendUnavailable, match="has not caught up after 5s"):
        backend.deploy(replica, second, first, ref(second))   # the source was not written
    assert sum(sleep.waits) == pytest.approx(5)
    with pytest.raises(BackendError, match="read-only replica"):
        backend.write_record(replica, rec(), expect=backend.read(replica).version)

    primary = backend.target({"secret_id": "app/replicated-primary"})
    bootstrap(backend, primary, first)
    with pytest.raises(BackendError, match="replica of a rotator primary"):
        backend.deploy(backend.target({"secret_id": "app/replicated-primary", "region": "eu-west-1",
                                       "replica": True}), first, None, ref(first))
    no_replica = make(replica_wait=0).target({"secret_id": "app/none", "region": "eu-west-2", "replica": True})
    with pytest.raises(SecretMissing, match="no replica in eu-west-2"):
        make(replica_wait=0).deploy(no_replica, first, None, ref(first))


def test_the_same_secret_id_in_two_regions_is_two_independent_targets(make, moto_server):
    backend = make()
    east = backend.target({"secret_id": "app/regional"})
    west = backend.target({"secret_id": "app/regional", "region": "eu-west-1"})
    a, b = secret("a"), secret("b")
    backend.deploy(east, a, None, ref(a))
    assert backend.read(west) == Snapshot(), "nothing leaks across regions"
    backend.deploy(west, b, None, ref(b))
    assert (backend.read(east).current, backend.read(west).current) == (a, b)
    assert at(moto_server, "AWSCURRENT", "app/regional", region="eu-west-1") == b.reveal()


# --- credentials -------------------------------------------------------------------------------

def test_assumes_a_role_through_sts(make, moto_url, calls):
    backend = make(role_arn=ROLE, sts_endpoint_url=moto_url, role_session_name="rotator-test")
    target = backend.target({"secret_id": "app/assumed"})
    value = secret("v")
    backend.deploy(target, value, None, ref(value))
    assert backend.read(target).current == value
    assert calls[0] == ("aws", "AssumeRole", "ok") and calls.count(("aws", "AssumeRole", "ok")) == 1


def test_a_refused_assume_role_names_the_role(make, moto_url, fault_proxy):
    fault_proxy.fail("AssumeRole", times=5, status=403, code="AccessDenied", message="not authorized to assume")
    backend = make(role_arn=ROLE, sts_endpoint_url=fault_proxy.url)
    with pytest.raises(BackendPermissionError, match=f"could not assume role {ROLE} .AccessDenied.*sts:AssumeRole"):
        backend.read(backend.target({"secret_id": "app/x"}))


# --- I1: what an application sees --------------------------------------------------------------

def test_an_application_reading_awscurrent_during_a_rotation_always_gets_a_valid_key(
        world, moto_url, moto_server, emulator, clock):
    world.backends["aws"] = {"type": "aws_secrets_manager", "region": "us-east-1", "endpoint_url": moto_url}
    world.add_secret("web", targets=[{"backend": "aws", "secret_id": "prod/web/quiva"},
                                     {"backend": "app", "path": "web.json"}])
    old = world.seed("web", age=timedelta(days=80))
    stop, started = threading.Event(), threading.Event()
    seen: list[str] = []
    refused: list[str | None] = []

    def application() -> None:
        client = moto_server.client()
        while not stop.is_set():
            answer = client.get_secret_value(SecretId="prod/web/quiva", VersionStage="AWSCURRENT")
            key = json.loads(answer["SecretString"]).get("api_key")
            if key is None or not emulator.is_active(key):
                refused.append(key and key[-4:])
            seen.append(key)
            started.set()

    reader = threading.Thread(target=application)
    reader.start()
    try:
        assert started.wait(10)
        assert world.rotate().exit_code == 0                      # adopt, claim, issue, stage ... promote
        clock.advance(timedelta(hours=49))
        assert world.rotate().exit_code == 0                      # revoke the old key, finish
        count = len(seen)
        while len(seen) < count + 3:                              # a few reads after the revocation
            stop.wait(0.01)
    finally:
        stop.set()
        reader.join(10)
    new = world.snapshots("web")["aws:us-east-1/prod/web/quiva"].current.reveal()
    assert not refused, f"the application read a key the issuer refuses: {refused}"
    assert seen[0] == old and seen[-1] == new and set(seen) == {old, new}
    assert not emulator.is_active(old)


def test_a_deploy_starts_from_a_batched_read_made_just_before_and_only_then(make, moto_server, calls, monkeypatch):
    """The engine reads a secondary in a batch right before deploying to it: the deploy starts from
    that head (no GetSecretValue of its own), once; a read older than DEPLOY_BASE_AGE, or a second
    deploy, reads again, so an application's field written meanwhile is kept."""
    from rotator_providers.aws import common

    backend = make()
    targets = [backend.target({"secret_id": f"app/base-{i}"}) for i in range(2)]
    old, new = secret("old"), secret("new")
    for target in targets:
        backend.deploy(target, old, None, ref(old))
    calls.clear()
    backend.read_many(targets)
    backend.deploy(targets[0], new, old, ref(new, "r-2"))
    assert [op for _, op, _ in calls] == ["BatchGetSecretValue", "PutSecretValue"]
    calls.clear()
    backend.deploy(targets[0], new, old, ref(new, "r-2"))            # used once: the next deploy reads
    assert [op for _, op, _ in calls] == ["GetSecretValue"]

    now = common.time.monotonic()
    monkeypatch.setattr(common.time, "monotonic", lambda: now + common.DEPLOY_BASE_AGE + 1)
    client = moto_server.client()
    stored = json.loads(client.get_secret_value(SecretId=targets[1].secret_id)["SecretString"])
    client.put_secret_value(SecretId=targets[1].secret_id, SecretString=json.dumps({**stored, "endpoint": "https://x"}))
    calls.clear()
    backend.deploy(targets[1], new, old, ref(new, "r-2"))            # its batched read is too old now
    assert [op for _, op, _ in calls][:1] == ["GetSecretValue"]
    after = json.loads(client.get_secret_value(SecretId=targets[1].secret_id)["SecretString"])
    assert after["endpoint"] == "https://x" and after["api_key"] == new.reveal()
