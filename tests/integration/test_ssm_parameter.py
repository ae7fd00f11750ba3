"""The SSM Parameter Store backend (``ssm_parameter``) against moto in server mode over HTTP (some
tests through the fault-injecting proxy): SecureString round trips in the shared JSON document,
the previous key, idempotent deploys, the KMS key and tags, create_if_missing, parameter names
checked at load, refused as a primary, full rotations behind a file primary, GetParameters
batching (10 names per request), error translation, and no value in any error or log line.

moto, like AWS, refuses ``Tags`` together with ``Overwrite=True``; unlike AWS it lets an overwrite
change a parameter's type (AWS: HierarchyTypeMismatchException) and accepts any KeyId. The tests
here would pass on AWS too: the backend never relies on those differences.
"""

from __future__ import annotations

import json
import logging
import math
from datetime import timedelta
from typing import Any

import pytest

from rotator import config, drift
from rotator.cli import main
from rotator.errors import (
    BackendError,
    BackendPermissionError,
    BackendUnavailable,
    ConfigError,
    CorruptPayload,
    SecretMissing,
)
from rotator.interfaces import BatchReads
from rotator.models import Phase, RotationRecord, Secret, Snapshot
from rotator.readahead import ReadAhead
from rotator.runtime import Runtime
from rotator.testing import RecordingSleep, provider_context
from rotator_providers.aws.ssm import ParameterStoreBackend
from tests.integration import aws_support
from tests.integration.aws_support import assert_everywhere, backends, chain, closed_port, ops, ref
from tests.world import to_toml

LOGGER = "rotator_providers.aws.ssm"


# --- helpers -----------------------------------------------------------------------------------

@pytest.fixture
def calls() -> list[tuple[str, str, str]]:
    return []


@pytest.fixture
def make(moto_url, calls):
    """Build a backend on the clean moto server (or ``url``); closed at the end of the test."""
    with backends(ParameterStoreBackend, "ssm", moto_url, calls) as make:
        yield make


@pytest.fixture
def ssm(moto_server):
    """A boto3 SSM client on the moto server, for setting up and looking (as an application would)."""
    return moto_server.client("ssm")


@pytest.fixture
def ssm_world(world, moto_url, moto_server):
    """``world`` with an ``ssm`` backend (Parameter Store on the clean moto server)."""
    world.backends["ssm"] = {"type": "ssm_parameter", **moto_server.settings(tags={"team": "web"})}
    return world


def secret(tag: str) -> Secret:
    return aws_support.secret(tag, "ssm")


def stored(ssm, name: str) -> dict[str, Any]:
    """The parameter's JSON document, decrypted, as an application reads it."""
    return json.loads(ssm.get_parameter(Name=name, WithDecryption=True)["Parameter"]["Value"])


# --- round trips ---------------------------------------------------------------------------------

def test_ssm_deploy_then_read_round_trips_a_decrypted_securestring(make, ssm, calls):
    backend = make()
    target = backend.target({"name": "/prod/web/quiva-api-key"})
    assert backend.read(target) == Snapshot()
    value = secret("one")

    backend.deploy(target, value, None, ref(value))

    parameter = ssm.get_parameter(Name=target.name, WithDecryption=True)["Parameter"]
    assert parameter["Type"] == "SecureString" and parameter["Version"] == 1
    document = json.loads(parameter["Value"])
    assert document["api_key"] == value.reveal()
    assert document["rotator"]["format"] == 1 and "previous" not in document["rotator"]
    assert document["rotator"]["meta"] == {"key_id": f"id-{value.last4}", "expires_on": "2026-05-30T12:00:00Z",
                                           "rotation_id": "r-1", "fingerprint": value.fingerprint,
                                           "last4": value.last4}
    snap = backend.read(target)
    assert snap == Snapshot(version="1", current=value)
    assert make().read(target) == snap, "a fresh backend reads the same"
    assert ops(calls, "ssm") == {"GetParameter": 4, "PutParameter": 1}


def test_ssm_deploy_keeps_the_previous_key_and_the_applications_fields(make, ssm):
    backend = make()
    target = backend.target({"name": "/prod/web/quiva", "field": "token"})
    ssm.put_parameter(Name=target.name, Type="SecureString",
                      Value=json.dumps({"endpoint": "https://api.example", "token": "sk-ssm-by-hand-0123456789"}))
    old, new = Secret("sk-ssm-by-hand-0123456789"), secret("new")
    assert backend.read(target) == Snapshot(version="1", current=old)

    backend.deploy(target, new, old, ref(new))

    snap = backend.read(target)
    assert (snap.version, snap.current, snap.previous) == ("2", new, old)
    document = stored(ssm, target.name)
    assert list(document)[:2] == ["endpoint", "token"], "the application's fields keep their place"
    assert document["endpoint"] == "https://api.example" and document["rotator"]["previous"] == old.reveal()

    backend.deploy(target, new, None, ref(new))          # after the grace window: previous dropped
    snap = backend.read(target)
    assert (snap.version, snap.current, snap.previous) == ("3", new, None)
    assert "previous" not in stored(ssm, target.name)["rotator"]


def test_ssm_deploy_is_idempotent_and_writes_only_what_changed(make, ssm, calls):
    backend = make()
    target = backend.target({"name": "quiva-api-key"})             # a plain name: no hierarchy
    old, new = secret("old"), secret("new")
    backend.deploy(target, new, old, ref(new))
    ops(calls, "ssm")

    for _ in range(3):
        backend.deploy(target, new, old, ref(new))
    assert ops(calls, "ssm") == {"GetParameter": 3}, "nothing changed: no write"
    assert ssm.get_parameter(Name=target.name)["Parameter"]["Version"] == 1
    assert backend.read(target) == Snapshot(version="1", current=new, previous=old)


def test_ssm_kms_key_id_is_passed_on_create_and_on_overwrite(make, ssm, moto_server):
    kms = moto_server.client("kms")
    first = kms.create_key(Description="app secrets")["KeyMetadata"]["KeyId"]
    second = kms.create_key(Description="rotated")["KeyMetadata"]["KeyId"]

    def key_of(name: str) -> str:
        found = ssm.describe_parameters(ParameterFilters=[{"Key": "Name", "Values": [name]}])["Parameters"]
        return found[0]["KeyId"]

    backend = make(kms_key_id=first)
    target = backend.target({"name": "/prod/kms/quiva"})
    value = secret("kms")
    backend.deploy(target, value, None, ref(value))
    assert key_of(target.name) == first

    by_hand = backend.target({"name": "/prod/kms/by-hand"})        # created with the default key
    ssm.put_parameter(Name=by_hand.name, Type="SecureString", Value=json.dumps({"api_key": "sk-ssm-by-hand-00001"}))
    assert key_of(by_hand.name) == "alias/aws/ssm"
    make(kms_key_id=second).deploy(by_hand, value, None, ref(value))
    assert key_of(by_hand.name) == second, "an overwrite names the configured key too"
    assert make().read(by_hand).current == value


def test_ssm_tags_are_applied_on_create_only(make, ssm, calls):
    backend = make(tags={"team": "web", "managed-by": "rotator"})
    target = backend.target({"name": "/prod/tags/quiva"})

    def tags(name: str) -> dict[str, str]:
        listing = ssm.list_tags_for_resource(ResourceType="Parameter", ResourceId=name)["TagList"]
        return {t["Key"]: t["Value"] for t in listing}

    first, second = secret("first"), secret("second")
    backend.deploy(target, first, None, ref(first))
    assert tags(target.name) == {"team": "web", "managed-by": "rotator"}
    assert ops(calls, "ssm") == {"GetParameter": 1, "PutParameter": 1}, "created with its tags in one call"

    ssm.remove_tags_from_resource(ResourceType="Parameter", ResourceId=target.name, TagKeys=["managed-by"])
    ssm.add_tags_to_resource(ResourceType="Parameter", ResourceId=target.name, Tags=[{"Key": "team", "Value": "ops"}])
    backend.deploy(target, second, first, ref(second))               # an overwrite: tags are not touched
    assert tags(target.name) == {"team": "ops"}
    assert ops(calls, "ssm") == {"GetParameter": 1, "PutParameter": 1}
    assert backend.read(target).current == second

    existing = backend.target({"name": "/prod/tags/by-hand"})        # not created by rotator: no tags
    ssm.put_parameter(Name=existing.name, Type="SecureString", Value=json.dumps({"api_key": "sk-ssm-hand-000001"}))
    backend.deploy(existing, first, None, ref(first))
    assert tags(existing.name) == {}


def test_ssm_create_if_missing_false_raises_secret_missing_naming_the_parameter(make, ssm, calls):
    backend = make(create_if_missing=False)
    target = backend.target({"name": "/prod/missing/quiva"})
    value = secret("missing")

    with pytest.raises(SecretMissing) as caught:
        backend.deploy(target, value, None, ref(value))
    message = str(caught.value)
    assert "parameter /prod/missing/quiva does not exist in us-east-1" in message
    assert "create_if_missing is false" in message and value.reveal() not in chain(caught.value)
    assert ops(calls, "ssm") == {"GetParameter": 1}, "nothing written"
    with pytest.raises(ssm.exceptions.ParameterNotFound):
        ssm.get_parameter(Name=target.name)

    ssm.put_parameter(Name=target.name, Type="SecureString", Value=json.dumps({"api_key": "sk-ssm-made-0000001"}))
    backend.deploy(target, value, None, ref(value))                  # an existing one is written
    assert backend.read(target).current == value


def test_ssm_parameter_created_meanwhile_or_by_a_lost_reply_is_overwritten_not_duplicated(make, fault_proxy, ssm):
    backend = make(url=fault_proxy.url, tags={"team": "web"})
    target = backend.target({"name": "/prod/lost/quiva"})
    value = secret("lost")
    fault_proxy.lose_reply("PutParameter")                           # moto creates it, the reply is a 500

    backend.deploy(target, value, None, ref(value))

    assert fault_proxy.seen.count("PutParameter") == 2, "the retry met ParameterAlreadyExists"
    assert fault_proxy.seen[-1] == "GetParameter", "then read it: already as wanted, nothing more to write"
    assert ssm.get_parameter(Name=target.name)["Parameter"]["Version"] == 1
    assert backend.read(target) == Snapshot(version="1", current=value)


def test_ssm_string_parameter_is_refused_not_converted(make, ssm):
    backend = make()
    target = backend.target({"name": "/prod/plain/quiva"})
    ssm.put_parameter(Name=target.name, Type="String", Value=json.dumps({"api_key": "sk-ssm-clear-0000001"}))
    assert backend.read(target).current == Secret("sk-ssm-clear-0000001"), "reading one is fine"
    value = secret("clear")

    with pytest.raises(BackendError) as caught:
        backend.deploy(target, value, None, ref(value))

    assert "is a String parameter: rotator writes keys only to SecureString parameters" in str(caught.value)
    assert not caught.value.transient
    parameter = ssm.get_parameter(Name=target.name)["Parameter"]
    assert (parameter["Type"], parameter["Version"]) == ("String", 1)
    findings = {f.check: f for f in backend.check_access(target, primary=False, exists=True)}
    assert findings["type"].status == "fail" and "String parameter" in findings["type"].detail


# --- configuration -------------------------------------------------------------------------------

def config_with(secret_targets: list[dict[str, Any]], tmp_path, **backend: Any) -> dict[str, Any]:
    return {
        "issuers": {"quiva": {"type": "quivaworks", "base_url": "http://127.0.0.1:9"}},
        "backends": {"store": {"type": "file", "directory": str(tmp_path / "store")},
                     "ssm-prod": {"type": "ssm_parameter", "region": "eu-west-1", **backend}},
        "secrets": [{"name": "web", "issuer": "quiva", "targets": secret_targets}],
    }


@pytest.mark.parametrize("name, problem", [
    ("prod/web/quiva", "a parameter name with a hierarchy starts with '/'"),
    ("/prod/web quiva", "takes only letters, digits and _.-/ (found ' ')"),
    ("/prod/web/quiva:3", "takes only letters, digits and _.-/ (found ':')"),
    ("/aws/reference/x", "must not begin with 'aws' or 'ssm'"),
    ("SSM-key", "must not begin with 'aws' or 'ssm'"),
    ("/prod//quiva", "has no empty level"),
    ("/prod/web/", "has no empty level"),
    ("/" + "/".join(["l"] * 16), "at most 15 levels (this one has 16)"),
    ("/" + "x" * 2048, "at most 2048 characters (this one has 2049)"),
    ("", "a parameter name is required"),
])
def test_bad_parameter_names_are_refused_at_load_with_the_field_path(tmp_path, monkeypatch, name, problem):
    monkeypatch.setenv("QUIVA_API_KEY", "unused-at-load-000000")
    data = config_with([{"backend": "store", "path": "web.json"}, {"backend": "ssm-prod", "name": name}], tmp_path)
    with pytest.raises(ConfigError) as caught:
        Runtime(config.load(data=data), check_references=False)
    message = str(caught.value)
    assert message.startswith("secrets[0].targets[1].name: a parameter ") and problem in message, message


def test_ssm_parameter_settings_name_the_field_and_keep_the_plain_http_rule():
    cases = [
        ({"region": "Europe"}, "backends.ssm.region: expected an AWS region name"),
        ({"colour": "red"}, "backends.ssm.colour: unknown field"),
        ({"tags": {"aws:owner": "x"}}, "backends.ssm.tags: tag key 'aws:owner'"),
        ({"role_arn": "rotator"}, "backends.ssm.role_arn: expected an IAM role ARN"),
        ({"endpoint_url": "http://ssm.internal:8080"}, "backends.ssm.endpoint_url: plain http:// to ssm.internal"),
        ({"create_if_missing": "sometimes"}, "backends.ssm.create_if_missing"),
    ]
    for settings, expected in cases:
        with pytest.raises(ConfigError) as caught:
            ParameterStoreBackend("ssm", settings, provider_context())
        assert expected in str(caught.value), (settings, str(caught.value))
    allowed = ParameterStoreBackend("ssm", {"endpoint_url": "http://ssm.internal:8080", "insecure_http": True},
                                    provider_context())
    assert allowed.warnings == ["backends.ssm: insecure_http = true: every key travels unencrypted to"
                                " ssm.internal (http://ssm.internal:8080)"]
    assert ParameterStoreBackend("ssm", {"endpoint_url": "http://127.0.0.1:4566"}, provider_context()).warnings == []


def test_ssm_parameter_refused_as_a_primary_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("QUIVA_API_KEY", "unused-at-load-000000")
    data = config_with([{"backend": "ssm-prod", "name": "/prod/web/quiva-api-key"},
                        {"backend": "store", "path": "web.json"}], tmp_path)
    path = tmp_path / "rotator.toml"
    path.write_text(to_toml(data))

    root = logging.getLogger()
    handlers = list(root.handlers)
    try:
        code = main(["--config", str(path), "plan"])
    finally:                        # main() logs to this test's captured stderr: do not leave it behind
        root.handlers[:] = handlers

    err = capsys.readouterr().err
    assert code == 2
    assert ("secrets[0].targets[0]: backend 'ssm-prod' cannot be a primary (it has no compare-and-swap to hold"
            " the rotation record); list it after one that can") in err
    with pytest.raises(ConfigError, match=r"targets\[0\]: backend 'ssm-prod' cannot be a primary"):
        Runtime(config.load(data=data), check_references=False)
    # The backend refuses primary writes itself too, saying why.
    backend = ParameterStoreBackend("ssm-prod", {"region": "eu-west-1"}, provider_context())
    target = backend.target({"name": "/prod/web/quiva-api-key"})
    with pytest.raises(BackendError, match="Parameter Store has no compare-and-swap"):
        backend.write_record(target, RotationRecord(phase=Phase.IDLE), expect=None)


def test_two_secrets_on_one_ssm_parameter_are_refused_but_another_region_is_another_parameter(tmp_path, monkeypatch):
    monkeypatch.setenv("QUIVA_API_KEY", "unused-at-load-000000")
    monkeypatch.delenv("AWS_ENDPOINT_URL_SSM", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    data = config_with([{"backend": "store", "path": "web.json"}, {"backend": "ssm-prod", "name": "/prod/shared"}],
                       tmp_path)
    data["secrets"].append({"name": "batch", "issuer": "quiva", "targets": [
        {"backend": "store", "path": "batch.json"},
        {"backend": "ssm-prod", "name": "/prod/shared", "region": "eu-west-1"}]})
    with pytest.raises(ConfigError, match=r"secrets\[1\] \(batch\) and secrets\[0\] \(web\) both use the target"
                                          r" ssm-prod:eu-west-1:/prod/shared"):
        Runtime(config.load(data=data), check_references=False)
    data["secrets"][1]["targets"][1]["region"] = "eu-central-1"      # another region: another parameter
    runtime = Runtime(config.load(data=data), check_references=False)
    try:
        labels = [b.label for s in runtime.secrets for b in s.targets]
        assert "ssm-prod:eu-central-1:/prod/shared" in labels and "ssm-prod:eu-west-1:/prod/shared" in labels
    finally:
        runtime.close()


# --- rotations ------------------------------------------------------------------------------------

def test_ssm_secondary_behind_a_file_primary_through_grace_and_revoke(ssm_world, emulator, clock, ssm):
    world = ssm_world
    name = "/prod/web/quiva-api-key"
    world.add_secret("web", targets=[{"backend": "store", "path": "web.json"}, {"backend": "ssm", "name": name}])
    old = world.seed("web", age=timedelta(days=80))
    assert stored(ssm, name)["api_key"] == old

    assert world.rotate().exit_code == 0                             # adopts the hand-made key, rotates it
    document = stored(ssm, name)
    new = document["api_key"]
    assert new != old and emulator.is_active(new)
    assert document["rotator"]["previous"] == old, "the old key stays readable through the grace window"
    assert world.record("web").phase is Phase.GRACE
    world.assert_i1("web")
    assert_everywhere(world, "web", current=new, previous=old)

    clock.advance(timedelta(hours=47))
    assert world.rotate().outcomes[0].status == "ok" and emulator.is_active(old)
    assert stored(ssm, name)["rotator"]["previous"] == old

    clock.advance(timedelta(hours=2))
    assert world.rotate().exit_code == 0                             # grace over: revoke
    assert not emulator.is_active(old)
    record = world.record("web")
    assert record.phase is Phase.IDLE and record.rotations == 1
    document = stored(ssm, name)
    assert document["api_key"] == new
    assert document["rotator"]["meta"]["fingerprint"] == record.current.fingerprint
    world.assert_i1("web")
    tags = ssm.list_tags_for_resource(ResourceType="Parameter", ResourceId=name)["TagList"]
    assert tags == [{"Key": "team", "Value": "web"}]

    again = world.rotate()                                           # nothing left to do
    assert again.outcomes[0].status == "ok" and not again.outcomes[0].actions


def test_ssm_and_secrets_manager_secondaries_of_one_secret_rotate_together(ssm_world, emulator, clock, ssm,
                                                                          moto_server):
    world = ssm_world
    world.backends["aws"] = {"type": "aws_secrets_manager", **moto_server.settings()}
    world.add_secret("web", targets=[{"backend": "aws", "secret_id": "prod/web/quiva"},
                                     {"backend": "ssm", "name": "/prod/web/quiva"},
                                     {"backend": "app", "path": "web.json"}])
    world.seed("web", age=timedelta(days=80))
    assert world.rotate().exit_code == 0
    clock.advance(timedelta(hours=49))
    assert world.rotate().exit_code == 0
    world.assert_i1("web")
    snaps = world.snapshots("web")
    assert len({s.current.reveal() for s in snaps.values()}) == 1


def test_ssm_targets_are_read_with_one_get_parameters_per_10_in_a_run(ssm_world, clock, ssm):
    world = ssm_world
    count = 23
    names = [f"app{i:02}" for i in range(count)]
    for app in names:
        world.add_secret(app, targets=[{"backend": "store", "path": f"{app}.json"},
                                       {"backend": "ssm", "name": f"/prod/{app}/quiva"}])
    for i, app in enumerate(names):
        world.seed(app, age=timedelta(days=80 if i < 3 else 10))    # three are due
    assert world.rotate().exit_code == 0                             # adopts all, rotates three
    assert [world.record(app).phase for app in names[:4]] == [Phase.GRACE] * 3 + [Phase.IDLE]

    # A pass over every secret (sync, verify, the daemon's reconcile) reads each SSM target once.
    world.calls.clear()
    runtime = world.runtime()
    secrets = runtime.select(None)
    ahead = ReadAhead(secrets, runtime.clock)
    reports = [drift.check(s, ahead)[1] for s in secrets]
    assert all(r.healthy for r in reports), [r for r in reports if not r.healthy][:1]
    assert ops(world.calls, "ssm") == {"GetParameters": math.ceil(count / 10)}, "no single GetParameter"
    assert ahead.batches == math.ceil(count / 10)
    assert isinstance(runtime.backends["ssm"], BatchReads) and runtime.backends["ssm"].read_batch == 10

    # The run that revokes the three old keys reads every SSM target as evidence, batched the same.
    clock.advance(timedelta(hours=49))
    world.calls.clear()
    assert world.rotate().exit_code == 0
    assert all(world.record(app).phase is Phase.IDLE for app in names)
    assert ops(world.calls, "ssm") == {"GetParameters": math.ceil(count / 10)}, "and nothing else"


def test_ssm_read_many_equals_read_and_leaves_out_what_it_cannot_parse(make, ssm, calls, caplog):
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    writer = make()
    targets, expected_out = [], set()
    for i in range(12):
        target = writer.target({"name": f"/batch/east-{i}"})
        if i % 3 != 2:                                               # every third one is missing
            value = secret(f"east{i}")
            writer.deploy(target, value, None, ref(value))
        targets.append(target)
    west = [writer.target({"name": f"/batch/west-{i}", "region": "eu-west-1"}) for i in range(3)]
    for target in west:
        value = secret("west")
        writer.deploy(target, value, None, ref(value))
    corrupt = writer.target({"name": "/batch/corrupt"})
    ssm.put_parameter(Name=corrupt.name, Type="SecureString", Value="sk-ssm-plain-DONOTECHO-0001")
    expected_out.add(corrupt)
    other_field = writer.target({"name": "/batch/east-0", "field": "other"})
    calls.clear()

    reader = make()
    found = reader.read_many([*targets, *west, corrupt, other_field, targets[0]])

    assert [op for _, op, _ in calls] == ["GetParameters"] * 3, "14 names east (2 requests), 3 west (1)"
    assert set(found) == set(targets) | set(west) | {other_field}
    for target in found:
        assert found[target] == make().read(target)
    assert found[targets[2]] == Snapshot(), "a missing parameter reads as missing, as read() says"
    assert found[other_field] == Snapshot(version="1"), "exists, but its field is empty"
    with pytest.raises(CorruptPayload):
        reader.read(corrupt)
    assert "DONOTECHO" not in caplog.text
    assert "aws-ssm:us-east-1:/batch/corrupt left to a single read (CorruptPayload)" in caplog.text
    assert reader.read_many([]) == {} and calls.count(("ssm", "GetParameters", "ok")) == 3


def test_ssm_get_parameters_denied_stops_batching_with_one_warning(make, fault_proxy, moto_server, calls, caplog):
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    backend = make(url=fault_proxy.url)
    targets = [backend.target({"name": f"/denied/app-{i}"}) for i in range(25)]
    for i, target in enumerate(targets):
        moto_server.client("ssm").put_parameter(Name=target.name, Type="SecureString",
                                                Value=json.dumps({"api_key": f"sk-ssm-DONOTECHO-{i:04}"}))
    fault_proxy.fail("GetParameters", times=1, status=400, code="AccessDeniedException",
                     message="User: arn:aws:sts::123456789012:assumed-role/rotator is not authorized to perform:"
                             " ssm:GetParameters")

    assert backend.read_many(targets) == {}
    assert backend.read_many(targets) == {}
    assert fault_proxy.seen.count("GetParameters") == 1, "not retried, no further chunk, no batch once denied"
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "ssm:GetParameters" in warnings[0].getMessage()
    assert backend.read(targets[0]).current == Secret("sk-ssm-DONOTECHO-0000"), "single reads still work"
    assert "DONOTECHO" not in caplog.text


# --- errors ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("sk-ssm-plain-DONOTECHO-0002", "is not valid JSON"),
    (json.dumps(["sk-ssm-array-DONOTECHO-0003"]), "the top level is a JSON array, expected an object"),
    (json.dumps({"api_key": 42}), "field 'api_key' is a JSON number, expected a string"),
    (json.dumps({"api_key": "sk-ssm-future-DONOTECHO-0004", "rotator": {"format": 9}}), "format 9 is newer"),
    (json.dumps({"api_key": "sk-ssm-prev-DONOTECHO-0005", "rotator": {"previous": ["sk-ssm-DONOTECHO-0006"]}}),
     "'rotator.previous' is a JSON array"),
])
def test_ssm_corrupt_payload_is_corrupt_payload_without_the_value(make, ssm, text, expected):
    backend = make()
    target = backend.target({"name": "/corrupt/quiva"})
    ssm.put_parameter(Name=target.name, Type="SecureString", Value=text)
    value = secret("fresh")

    for attempt in (lambda: backend.read(target), lambda: backend.deploy(target, value, None, ref(value))):
        with pytest.raises(CorruptPayload) as caught:
            attempt()
        assert f"ssm: aws-ssm:us-east-1:/corrupt/quiva: version 1" in str(caught.value)
        assert expected in str(caught.value)
        assert "DONOTECHO" not in chain(caught.value) and value.reveal() not in chain(caught.value)
    assert ssm.get_parameter(Name=target.name)["Parameter"]["Version"] == 1, "never overwritten"


def test_ssm_unreachable_endpoint_and_throttling_are_backend_unavailable(make, fault_proxy, calls):
    sleep = RecordingSleep()
    backend = make(url=f"http://127.0.0.1:{closed_port()}", sleep=sleep, max_attempts=2, connect_timeout=1)
    target = backend.target({"name": "/down/quiva"})
    value = secret("down")
    for attempt in (lambda: backend.read(target), lambda: backend.deploy(target, value, None, ref(value))):
        with pytest.raises(BackendUnavailable) as caught:
            attempt()
        assert caught.value.transient and "GetParameter failed after 2 tries" in str(caught.value)
    assert len(sleep.waits) == 2, "one back-off per call, waited through the context's sleep"

    throttled = make(url=fault_proxy.url, max_attempts=3)
    fault_proxy.fail("PutParameter", times=3, status=400, code="ThrottlingException")
    with pytest.raises(BackendUnavailable, match=r"PutParameter failed after 3 tries \(ThrottlingException\)"):
        throttled.deploy(target, value, None, ref(value))
    fault_proxy.fail("PutParameter", times=2, status=400, code="TooManyUpdates")
    throttled.deploy(target, value, None, ref(value))                # retried through, then written
    assert throttled.read(target).current == value
    assert [o for _, op, o in calls if op == "PutParameter"] == ["ThrottlingException"] * 3 + ["TooManyUpdates"] * 2 + ["ok"]


def test_ssm_access_denied_and_kms_refusals_name_the_permission(make, fault_proxy):
    backend = make(url=fault_proxy.url, kms_key_id="alias/app-secrets")
    target = backend.target({"name": "/denied/kms-team/quiva"})         # "kms" in a name is not about KMS
    value = secret("denied")
    fault_proxy.fail("PutParameter", code="AccessDeniedException",
                     message="User: arn:aws:sts::123456789012:assumed-role/rotator is not authorized to perform:"
                             " ssm:PutParameter on resource:"
                             " arn:aws:ssm:us-east-1:123456789012:parameter/denied/kms-team/quiva")
    with pytest.raises(BackendPermissionError) as caught:
        backend.deploy(target, value, None, ref(value))
    assert ("access denied during deploy: rotator needs ssm:PutParameter on parameter /denied/kms-team/quiva in"
            " us-east-1") in str(caught.value)

    fault_proxy.fail("GetParameter", code="AccessDeniedException",
                     message="The ciphertext refers to a customer master key that does not exist or that you"
                             " do not have kms:Decrypt access to")
    with pytest.raises(BackendPermissionError, match=r"KMS refused KMS key alias/app-secrets during read"
                                                     r" \(AccessDeniedException\).*rotator needs kms:Decrypt"):
        backend.read(target)
    fault_proxy.fail("PutParameter", code="InvalidKeyId", message="Invalid keyId alias/app-secrets")
    with pytest.raises(BackendPermissionError, match="rotator needs kms:Encrypt on it"):
        backend.deploy(target, value, None, ref(value))


def test_no_value_in_any_ssm_error_or_log_line(make, fault_proxy, ssm, caplog):
    caplog.set_level(logging.DEBUG)
    backend = make(url=fault_proxy.url, max_attempts=2)
    target = backend.target({"name": "/leak/quiva"})
    old, new = secret("old"), secret("new")
    backend.deploy(target, old, None, ref(old))
    backend.deploy(target, new, old, ref(new))
    backend.read_many([target, backend.target({"name": "/leak/other"})])
    errors = []
    # AWS (and moto) quote a refused value in some validation messages: a PutParameter's are withheld.
    fault_proxy.fail("PutParameter", code="ValidationException",
                     message=f"1 validation error detected: Value '{{\"api_key\":\"{new.reveal()}\"...' at 'value'"
                             " failed to satisfy constraint")
    fault_proxy.fail("PutParameter", times=2, status=500, code="InternalServerError",
                     message=f"boom {old.reveal()[:20]}")
    third = secret("third")
    for attempt in (lambda: backend.deploy(target, third, new, ref(third)),
                    lambda: backend.deploy(target, third, new, ref(third)),
                    lambda: backend.read(target)):
        if len(errors) == 2:
            fault_proxy.fail("GetParameter", code="ValidationException", message="Parameter name is not valid")
        with pytest.raises(BackendError) as caught:
            attempt()
        errors.append(caught.value)
    assert "(ValidationException)" in str(errors[0]) and "at 'value'" not in str(errors[0])
    assert isinstance(errors[1], BackendUnavailable)
    assert "Parameter name is not valid" in str(errors[2]), "other operations' messages are shown"
    text = "\n".join([caplog.text, *map(chain, errors)])
    for value in (old, new, third):
        assert value.reveal() not in text and value.reveal()[-12:] not in text and value.reveal()[:20] not in text


def test_ssm_check_access_reports_without_writing(make, ssm, calls):
    backend = make(tags={"team": "web"})
    target = backend.target({"name": "/check/quiva"})
    missing = {f.check: f for f in backend.check_access(target, primary=False, exists=False)}
    assert missing["write"].status == "unknown"
    assert "ssm:PutParameter, ssm:AddTagsToResource (for the tags), kms:Encrypt" in missing["write"].detail
    strict = {f.check: f for f in make(create_if_missing=False).check_access(target, primary=False, exists=False)}
    assert strict["write"].status == "fail" and "create_if_missing is false" in strict["write"].detail

    value = secret("check")
    backend.deploy(target, value, None, ref(value))
    calls.clear()
    found = {f.check: f for f in backend.check_access(target, primary=False, exists=True)}
    assert found["type"].status == "ok" and "SecureString, encrypted with alias/aws/ssm" in found["type"].detail
    assert found["write"].status == "unknown" and "no dry run" in found["write"].detail
    assert [op for _, op, _ in calls] == ["DescribeParameters"], "read-only"
    as_primary = {f.check: f for f in backend.check_access(target, primary=True, exists=True)}
    assert as_primary["cas"].status == "fail" and "cannot hold the rotation record" in as_primary["cas"].detail
    assert ssm.get_parameter(Name=target.name)["Parameter"]["Version"] == 1


def test_ssm_calls_per_rotation_match_the_documented_counts(ssm_world, clock):
    """docs/backends/ssm.md, "API calls": one secondary behind a file primary, a fresh runtime per
    run (as in a CronJob)."""
    world = ssm_world
    world.add_secret("web", targets=[{"backend": "store", "path": "web.json"},
                                     {"backend": "ssm", "name": "/prod/web/quiva"}])
    world.seed("web", age=timedelta(days=80))
    world.calls.clear()
    for _ in range(2):                                               # the first rotation, then the next one
        assert world.rotate().exit_code == 0                         # deploy (read, put), read back alone
        assert ops(world.calls, "ssm") == {"GetParameter": 2, "PutParameter": 1}
        clock.advance(timedelta(hours=49))
        assert world.rotate().exit_code == 0                         # re-read before the revoke
        assert ops(world.calls, "ssm") == {"GetParameter": 1}
        assert world.record("web").phase is Phase.IDLE
        clock.advance(timedelta(days=80))


def test_ssm_deploy_starts_from_a_batched_read_made_just_before(make, ssm, calls):
    """The engine reads SSM targets in a GetParameters right before deploying: each deploy starts
    from its parameter as read there (no GetParameter of its own), once."""
    backend = make()
    targets = [backend.target({"name": f"/app/base/{i}"}) for i in range(3)]
    old, new = secret("old"), secret("new")
    for target in targets:
        backend.deploy(target, old, None, ref(old))
    calls.clear()
    backend.read_many(targets)
    for target in targets:
        backend.deploy(target, new, old, ref(new))
    assert [op for _, op, _ in calls] == ["GetParameters", "PutParameter", "PutParameter", "PutParameter"]
    calls.clear()
    backend.deploy(targets[0], new, old, ref(new))                   # used once: this one reads
    assert [op for _, op, _ in calls] == ["GetParameter"]
    assert all(backend.read(t).current == new and backend.read(t).previous == old for t in targets)
