"""Batched reads of the AWS Secrets Manager backend (``BatchReads``): ``read_many`` answers many
targets with one BatchGetSecretValue per 20 secrets of a region, returns exactly what ``read``
returns, leaves out whatever it cannot answer (for ``read`` to raise the precise error), and
falls back for good (one warning) when the identity may not call BatchGetSecretValue. Also the
connection pool sized to the engine's workers. Everything runs over HTTP against moto server,
some of it through the fault-injecting proxy.

moto's BatchGetSecretValue returns each secret's *default* version, which its
UpdateSecretVersionStage never moves (only CreateSecret and PutSecretValue without labels do);
AWS returns the version labelled AWSCURRENT. rotator's primary writes move AWSCURRENT with
UpdateSecretVersionStage, so the session's moto server runs with ``tests.servers.moto_fidelity``,
which makes moto answer as AWS does; ``test_an_entry_not_labelled_awscurrent_is_left_out`` runs
moto as it is.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from rotator_providers.aws.secrets_manager import SecretsManagerBackend
from rotator import __version__
from rotator.errors import BackendError, CorruptPayload
from rotator.interfaces import BatchReads
from rotator.models import Phase, Secret, Snapshot
from rotator.testing import RecordingSleep
from tests.integration.aws_support import backends, bootstrap, rec, ref, secret

BATCH = "BatchGetSecretValue"
LOGGER = "rotator_providers.aws.secrets_manager"


# --- helpers -----------------------------------------------------------------------------------

@pytest.fixture
def calls() -> list[tuple[str, str, str]]:
    return []


@pytest.fixture
def make(moto_url, calls):
    """Build a backend on the clean moto server (or ``url``); closed at the end of the test."""
    with backends(SecretsManagerBackend, "aws", moto_url, calls) as make:
        yield make


@pytest.fixture
def aws_batch(moto_server):
    """moto answering BatchGetSecretValue with each secret's AWSCURRENT version, as AWS does:
    the session's moto server runs with ``tests.servers.moto_fidelity`` applied."""
    from tests.servers import moto_fidelity

    assert moto_fidelity.ORIGINAL is not None


@pytest.fixture
def plain_moto(moto_server, monkeypatch):
    """moto as it is: BatchGetSecretValue answers with the version it last put as current."""
    from moto.secretsmanager import models

    from tests.servers import moto_fidelity

    monkeypatch.setattr(models.SecretsManagerBackend, "batch_get_secret_value", moto_fidelity.ORIGINAL)


def in_grace_with_pending(backend, target) -> None:
    """A primary whose head has a record, a current key, a previous key and a pending key."""
    old, new, next_ = secret("old"), secret("new"), secret("next")
    version = bootstrap(backend, target, old)
    version = backend.stage(target, new, rec(Phase.STAGED, current=ref(old, "r-0"), pending=ref(new)),
                            expect=version)
    version = backend.promote(target, rec(Phase.GRACE, current=ref(new), previous=ref(old, "r-0")),
                              expect=version)
    backend.stage(target, next_, rec(Phase.STAGED, current=ref(new), previous=ref(old, "r-0"),
                                     pending=ref(next_, "r-2")), expect=version)


def batch_calls(calls: list[tuple[str, str, str]]) -> list[str]:
    return [outcome for _, op, outcome in calls if op == BATCH]


# --- the happy path ----------------------------------------------------------------------------

def test_45_targets_in_every_state_take_3_requests_and_equal_read(make, moto_server, calls, aws_batch):
    writer = make()
    client = moto_server.client()
    targets, kinds = [], {}

    def add(kind: str, index: int, **spec: Any):
        target = writer.target({"secret_id": f"batch/{kind}-{index}", **spec})
        targets.append(target)
        kinds[target] = kind
        return target

    for i in range(9):
        add("missing", i)
    for i in range(9):
        target = add("app", i)
        client.create_secret(Name=target.secret_id, SecretString=json.dumps(
            {"api_key": secret("app").reveal(), "endpoint": "https://api.example"}))
    for i in range(9):
        bootstrap(writer, add("primary", i), secret("boot"))
    for i in range(9):
        in_grace_with_pending(writer, add("grace", i))
    for i in range(9):
        first, second = secret("first"), secret("second")
        target = add("secondary", i, field="token")
        writer.deploy(target, first, None, ref(first))
        writer.deploy(target, second, first, ref(second))
    assert len(targets) == 45

    reader = make()                                      # a fresh process: nothing cached
    assert isinstance(reader, BatchReads) and reader.read_batch == 20
    mark = len(calls)
    found = reader.read_many(targets)
    spent = calls[mark:]
    assert batch_calls(spent) == ["ok", "ok", "ok"]      # 45 targets, 20 per request
    # The grace primaries' pending values: read once by VersionId, then cached. The previous
    # values (grace primaries and secondaries) are deferred: known by the fingerprint rotator's
    # pointer names, read only when something needs the value itself.
    assert [op for _, op, _ in spent if op != BATCH] == ["GetSecretValue"] * 9
    deferred = [found[t].previous for t in targets if kinds[t] in ("grace", "secondary")]
    assert all(repr(value).startswith("<secret fp=") for value in deferred)      # nothing read yet
    mark = len(calls)
    assert all(value.last4 for value in deferred)           # needed now: read, each once
    assert [op for _, op, _ in calls[mark:]] == ["GetSecretValue"] * 18

    assert set(found) == {t for t in targets if kinds[t] != "missing"}
    mark = len(calls)
    for target in targets:
        single = make().read(target)                     # a fresh reader each time: no cache shared
        assert found.get(target, Snapshot()) == single, kinds[target]
        assert reader.read(target) == single, kinds[target]
    grace = next(t for t in targets if kinds[t] == "grace")
    snap = found[grace]
    assert snap.record.phase is Phase.STAGED and None not in (snap.current, snap.pending, snap.previous)
    secondary = next(t for t in targets if kinds[t] == "secondary")
    assert found[secondary].previous is not None and found[secondary].record is None
    # The heads read in the batch serve the next CAS write without another read.
    mark = len(calls)
    primary = next(t for t in targets if kinds[t] == "primary")
    reader.write_record(primary, rec(Phase.IDLE, last_error="checked"), expect=found[primary].version)
    assert [op for _, op, _ in calls[mark:]] == ["PutSecretValue", "UpdateSecretVersionStage"]


def test_a_target_named_by_arn_is_matched_and_one_secret_serves_several_targets(make, moto_server, calls,
                                                                                aws_batch):
    backend = make()
    client = moto_server.client()
    value = secret("arn")
    arn = client.create_secret(Name="batch/by-arn", SecretString=json.dumps(
        {"api_key": value.reveal(), "other": "sk-aws-other-0123456789"}))["ARN"]
    by_arn = backend.target({"secret_id": arn})
    by_name = backend.target({"secret_id": "batch/by-arn"})
    other_field = backend.target({"secret_id": "batch/by-arn", "field": "other"})
    replica = backend.target({"secret_id": "batch/by-arn", "region": "eu-west-1", "replica": True})

    found = backend.read_many([by_arn, by_name, other_field, by_arn, replica])
    assert set(found) == {by_arn, by_name, other_field}, "a replica is left to read()"
    assert found[by_arn].current == found[by_name].current == value
    assert found[other_field].current == Secret("sk-aws-other-0123456789")
    for target in found:
        assert found[target] == make().read(target)
    assert batch_calls(calls) == ["ok"]

    assert backend.read_many([replica]) == {}
    assert batch_calls(calls) == ["ok"], "nothing to ask for: no request"


def test_a_previous_pointer_is_read_only_when_needed_and_a_bad_one_fails_then_naming_it(make, moto_server,
                                                                                       calls, aws_batch):
    """A previous version is known by the fingerprint its pointer carries; its value is read only
    when something needs it, and a version gone or holding another key fails that step with the
    precise error, naming the target and the version."""
    from rotator.errors import SecretMissing

    backend = make()
    client = moto_server.client()
    gone = {"version": "v-never-written-" + "0" * 20, "fingerprint": "1" * 16}
    client.create_secret(Name="batch/gone", SecretString=json.dumps({
        "api_key": "sk-aws-r-DONOTECHO6", "rotator": {"format": 1, "previous": gone}}))
    first = client.create_secret(Name="batch/other", SecretString=json.dumps({"api_key": "sk-aws-q-DONOTECHO7"}))
    other = {"version": first["VersionId"], "fingerprint": "2" * 16}     # holds another key
    client.put_secret_value(SecretId="batch/other", SecretString=json.dumps({
        "api_key": "sk-aws-r-DONOTECHO6", "rotator": {"format": 1, "previous": other}}))
    targets = {name: backend.target({"secret_id": f"batch/{name}"}) for name in ("gone", "other")}
    found = backend.read_many(list(targets.values()))
    assert set(found) == set(targets.values()) and batch_calls(calls) == ["ok"]
    assert [op for _, op, _ in calls if op != BATCH] == []             # nothing read by VersionId
    assert found[targets["gone"]].previous.fingerprint == "1" * 16
    with pytest.raises(SecretMissing, match=r"batch/gone.*v-never-.*holds the previous key, is gone"):
        found[targets["gone"]].previous.reveal()
    with pytest.raises(CorruptPayload, match=r"batch/other.*fingerprint mismatch"):
        found[targets["other"]].previous.reveal()


# --- what is left out ---------------------------------------------------------------------------

def test_missing_deleted_corrupt_and_unreadable_pointers_are_left_out(make, moto_server, calls, caplog,
                                                                      aws_batch):
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    backend = make()
    client = moto_server.client()
    good = backend.target({"secret_id": "batch/good"})
    client.create_secret(Name="batch/good", SecretString=json.dumps({"api_key": "sk-aws-good-DONOTECHO1"}))
    missing = backend.target({"secret_id": "batch/missing"})
    deleted = backend.target({"secret_id": "batch/deleted"})
    client.create_secret(Name="batch/deleted", SecretString=json.dumps({"api_key": "sk-aws-gone-DONOTECHO2"}))
    client.delete_secret(SecretId="batch/deleted", RecoveryWindowInDays=7)
    corrupt = {}
    for name, payload in [("plain", {"SecretString": "sk-aws-plain-string-DONOTECHO3"}),
                          ("binary", {"SecretBinary": b"\x00\x01"}),
                          ("number", {"SecretString": json.dumps({"api_key": 42})}),
                          ("future", {"SecretString": json.dumps({"api_key": "sk-aws-future-DONOTECHO4",
                                                                  "rotator": {"format": 99}})})]:
        client.create_secret(Name=f"batch/{name}", **payload)
        corrupt[name] = backend.target({"secret_id": f"batch/{name}"})
    # A head whose pending pointer names a version holding another key (fingerprint mismatch).
    head = client.create_secret(Name="batch/pointer", SecretString=json.dumps({"api_key": "sk-aws-p-DONOTECHO5"}))
    client.put_secret_value(SecretId="batch/pointer", SecretString=json.dumps({
        "api_key": "sk-aws-p-DONOTECHO5",
        "rotator": {"format": 1, "pending": {"version": head["VersionId"], "fingerprint": "0" * 16}}}))
    pointer = backend.target({"secret_id": "batch/pointer"})

    targets = [good, missing, deleted, *corrupt.values(), pointer]
    found = backend.read_many(targets)
    assert set(found) == {good}
    assert found[good] == backend.read(good)
    assert batch_calls(calls) == ["ok"]

    # What the engine does next with the targets left out: read() alone, with the precise answer.
    assert backend.read(missing) == Snapshot()
    with pytest.raises(BackendError, match="scheduled for deletion"):
        backend.read(deleted)
    for name, expected in [("plain", "is not valid JSON"), ("binary", "holds a binary value"),
                           ("number", "field 'api_key' is a JSON number"), ("future", "format 99 is newer")]:
        with pytest.raises(CorruptPayload, match=expected):
            backend.read(corrupt[name])
    with pytest.raises(CorruptPayload, match="fingerprint mismatch"):
        backend.read(pointer)
    assert "DONOTECHO" not in caplog.text
    assert "batch/plain left to a single read (CorruptPayload)" in caplog.text


def test_a_pending_value_that_cannot_be_read_leaves_only_that_target_out(make, fault_proxy, calls, aws_batch):
    writer = make(url=fault_proxy.url)
    grace = writer.target({"secret_id": "batch/grace"})
    in_grace_with_pending(writer, grace)
    plain = writer.target({"secret_id": "batch/plain"})
    value = secret("plain")
    writer.deploy(plain, value, None, ref(value))

    reader = make(url=fault_proxy.url)
    fault_proxy.fail("GetSecretValue", times=3)          # the pending value, beyond max_attempts
    found = reader.read_many([grace, plain])
    assert set(found) == {plain} and found[plain].current == value
    assert reader.read(grace) == make(url=fault_proxy.url).read(grace)   # read() succeeds later


def test_an_entry_not_labelled_awscurrent_is_left_out(make, plain_moto, calls):
    """moto as it is answers with a primary's first head, no longer AWSCURRENT: never use it."""
    backend = make()
    primary = backend.target({"secret_id": "batch/primary"})
    bootstrap(backend, primary, secret("boot"))
    plain = backend.target({"secret_id": "batch/plain"})
    value = secret("plain")
    backend.deploy(plain, value, None, ref(value))

    found = make().read_many([primary, plain])
    assert set(found) == {plain} and found[plain].current == value
    assert batch_calls(calls) == ["ok"]


# --- when the batch request fails ---------------------------------------------------------------

def test_access_denied_stops_batching_for_good_with_one_warning(make, moto_server, fault_proxy, calls, caplog):
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    backend = make(url=fault_proxy.url)
    targets = []
    for i in range(45):
        target = backend.target({"secret_id": f"batch/denied-{i}"})
        moto_server.client().create_secret(Name=target.secret_id,
                                           SecretString=json.dumps({"api_key": f"sk-aws-DONOTECHO-{i:04}"}))
        targets.append(target)
    fault_proxy.fail(BATCH, times=1, status=400, code="AccessDeniedException",
                     message="User: arn:aws:sts::123456789012:assumed-role/rotator is not authorized to"
                             " perform: secretsmanager:BatchGetSecretValue")

    assert backend.read_many(targets) == {}
    assert fault_proxy.seen.count(BATCH) == 1, "denied is not retried, and the other 2 chunks are not sent"
    assert batch_calls(calls) == ["AccessDeniedException"]
    for _ in range(3):
        assert backend.read_many(targets) == {}
    assert fault_proxy.seen.count(BATCH) == 1, "no batch request once denied"
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "secretsmanager:BatchGetSecretValue" in warnings[0].getMessage()
    assert "DONOTECHO" not in caplog.text
    assert backend.read(targets[0]).current == Secret("sk-aws-DONOTECHO-0000")   # single reads still work
    assert make(url=fault_proxy.url).read_many(targets[:2]).keys() == set(targets[:2]), \
        "a new backend object tries again"


@pytest.mark.parametrize("status, code", [(400, "ThrottlingException"), (503, "ServiceUnavailable"),
                                          (500, "InternalServiceError")])
def test_a_transient_failure_returns_nothing_and_batching_goes_on(make, moto_server, fault_proxy, calls,
                                                                  caplog, status, code):
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    sleep = RecordingSleep()
    backend = make(url=fault_proxy.url, sleep=sleep)
    targets = []
    for i in range(25):
        target = backend.target({"secret_id": f"batch/busy-{i}"})
        moto_server.client().create_secret(Name=target.secret_id, SecretString=json.dumps({"api_key": f"sk-{i:04}"}))
        targets.append(target)
    fault_proxy.fail(BATCH, times=3, status=status, code=code)      # max_attempts is 3

    assert backend.read_many(targets) == {}
    assert batch_calls(calls) == [code] * 3 and len(sleep.waits) == 2, "retried with back-off, then given up"
    assert fault_proxy.seen.count(BATCH) == 3, "the second chunk is not sent after the first failed"
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

    found = backend.read_many(targets)
    assert set(found) == set(targets)
    assert batch_calls(calls)[3:] == ["ok", "ok"]


def test_a_failure_in_one_region_leaves_the_other_regions_batched(make, moto_server, fault_proxy, calls):
    backend = make(url=fault_proxy.url)
    east = [backend.target({"secret_id": f"batch/east-{i}"}) for i in range(3)]
    west = [backend.target({"secret_id": f"batch/west-{i}", "region": "eu-west-1"}) for i in range(3)]
    for target in east + west:
        moto_server.client(region=target.region).create_secret(
            Name=target.secret_id, SecretString=json.dumps({"api_key": f"sk-{target.secret_id}"}))
    fault_proxy.fail(BATCH, times=3)                     # the first region's request, every try

    found = backend.read_many(east + west)
    assert set(found) == set(west)
    assert all(found[t] == backend.read(t) for t in west)
    assert batch_calls(calls) == ["ThrottlingException"] * 3 + ["ok"]


# --- the connection pool and the User-Agent ---------------------------------------------------

@pytest.mark.parametrize("workers, pool", [(1, 10), (10, 10), (32, 32)])
def test_the_connection_pool_is_sized_to_the_workers(make, workers, pool):
    backend = make(workers=workers)
    backend.read(backend.target({"secret_id": "batch/pool"}))
    client = backend._aws._client("secretsmanager", "us-east-1")
    assert client.meta.config.max_pool_connections == pool


def test_requests_carry_rotators_user_agent(make):
    """CloudTrail names rotator as the caller; botocore's default string is not rebuilt per request."""
    backend = make()
    client = backend._aws._client("secretsmanager", "us-east-1")
    sent: list[str] = []
    client.meta.events.register("before-send", lambda request, **_: sent.append(request.headers["User-Agent"]))
    backend.read(backend.target({"secret_id": "batch/user-agent"}))
    agents = {agent.decode() if isinstance(agent, bytes) else agent for agent in sent}
    assert len(agents) == 1 and agents.pop().startswith(f"rotator/{__version__} botocore/")
