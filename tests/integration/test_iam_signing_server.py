"""The signature-checking moto server (tests/servers/aws_signing.py) behaves as the IAM issuer's
tests assume: keys are really checked, the quota and last-use are served, and a lost
CreateAccessKey reply through the fault proxy leaves a key behind that the client never saw."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import boto3
import pytest
from botocore.exceptions import ClientError, ConnectionClosedError

from tests.servers.aws_signing import AwsKey, IamUser, SigningMoto, error_code


def test_iam_fresh_user_key_authenticates_via_sts_and_its_policy_is_enforced(iam_user: IamUser):
    assert iam_user.key is not None and iam_user.access_key_id.startswith("AKIA")
    assert iam_user.works(iam_user.access_key_id, iam_user.secret_access_key)
    assert iam_user.caller_arn() == iam_user.arn
    (row,) = iam_user.keys()
    assert row == (iam_user.access_key_id, "Active", row.created) and row.key_id == iam_user.access_key_id

    iam_user.client("s3").list_buckets()                        # allowed by its policy
    assert iam_user.client("iam").get_user(UserName=iam_user.name)["User"]["Arn"] == iam_user.arn
    with pytest.raises(ClientError) as denied:                  # not in its policy
        iam_user.client("iam").list_users()
    assert error_code(denied.value) == "AccessDenied"


def test_iam_deleted_key_is_refused_with_invalid_client_token_id(iam_user: IamUser):
    key = iam_user.key
    iam_user.delete_key(key.access_key_id)

    assert iam_user.keys() == []
    assert not iam_user.works(key)
    assert iam_user.auth_error(key) == "InvalidClientTokenId"
    with pytest.raises(ClientError) as refused:                 # any service, not only STS
        iam_user.client("s3", key).list_buckets()
    assert error_code(refused.value) == "InvalidAccessKeyId"   # S3's own name for it


def test_iam_wrong_secret_and_unknown_key_id_are_refused(iam_user: IamUser):
    assert iam_user.auth_error(iam_user.access_key_id, "wrong" + iam_user.secret_access_key) == "SignatureDoesNotMatch"
    assert not iam_user.works(iam_user.access_key_id, "")
    assert iam_user.auth_error("AKIA" + "Z" * 16, iam_user.secret_access_key) == "InvalidClientTokenId"
    assert iam_user.works(iam_user.key), "the right secret still works"


def test_iam_two_key_limit_raises_limit_exceeded_with_an_inactive_key_counted(iam_user: IamUser):
    second = iam_user.create_key()
    iam_user.deactivate(iam_user.access_key_id)

    with pytest.raises(ClientError) as full:
        iam_user.create_key()
    assert error_code(full.value) == "LimitExceeded"
    rows = iam_user.keys()
    assert {(row.key_id, row.status) for row in rows} == {
        (iam_user.access_key_id, "Inactive"), (second.access_key_id, "Active")}

    iam_user.delete_key(iam_user.access_key_id)                 # room again once the inactive key is gone
    third = iam_user.create_key()
    assert set(iam_user.key_ids()) == {second.access_key_id, third.access_key_id}


def test_iam_inactive_key_is_still_accepted_by_moto_so_deactivation_shows_only_in_list_access_keys(
        iam_user: IamUser):
    """Pins a moto gap (AWS refuses an Inactive key): if this fails, moto now refuses it and the
    module docstring of tests/servers/aws_signing.py should say so."""
    iam_user.deactivate(iam_user.access_key_id)

    assert iam_user.status(iam_user.access_key_id) == "Inactive"
    assert iam_user.works(iam_user.key)
    iam_user.client("s3").list_buckets()                        # not only by STS
    iam_user.activate(iam_user.access_key_id)
    assert iam_user.status(iam_user.access_key_id) == "Active"


def test_iam_last_used_is_reported_after_the_key_signed_a_request(make_iam_user):
    user = make_iam_user()
    assert user.last_used(user.access_key_id) is None
    before = datetime.now(UTC) - timedelta(seconds=2)

    assert user.works(user.key)

    used = user.last_used(user.access_key_id)
    assert used is not None and used >= before
    assert used >= user.keys()[0].created


def test_iam_request_refused_for_its_signature_still_marks_the_key_used_in_moto(iam_user: IamUser):
    """Pins a moto gap (AWS records authenticated use only): a wrong-secret attempt with a key's id
    counts as that key's last use, so a usage check must not follow refused attempts."""
    assert iam_user.auth_error(iam_user.access_key_id, "wrong") == "SignatureDoesNotMatch"

    assert iam_user.last_used(iam_user.access_key_id) is not None


def test_iam_users_are_unique_and_not_reset_between_tests(make_iam_user, signing_moto: SigningMoto):
    first, second = make_iam_user(), make_iam_user(with_key=False)

    assert first.name != second.name and second.key is None and second.keys() == []
    assert signing_moto.client("sts").get_caller_identity()["Arn"] == signing_moto.admin_arn
    users = {u["UserName"] for u in signing_moto.client("iam").list_users()["Users"]}
    assert {"rotator-admin", first.name, second.name} <= users


def test_iam_self_managing_user_may_rotate_its_own_key(make_iam_user):
    user = make_iam_user(self_manage=True)
    iam = user.client("iam")

    created = iam.create_access_key(UserName=user.name)["AccessKey"]
    new = AwsKey(created["AccessKeyId"], created["SecretAccessKey"])
    user.client("iam", new).delete_access_key(UserName=user.name, AccessKeyId=user.access_key_id)

    assert user.key_ids() == [new.access_key_id]
    assert user.works(new) and not user.works(user.key)


def test_iam_admin_env_signs_in_through_the_default_credential_chain(signing_admin_env: AwsKey,
                                                                     signing_moto: SigningMoto):
    sts = boto3.session.Session().client("sts", endpoint_url=signing_moto.url)   # env credentials

    assert signing_admin_env == signing_moto.admin
    assert sts.get_caller_identity()["Arn"] == signing_moto.admin_arn


@pytest.mark.parametrize("close", [False, True], ids=["answered-500", "connection-closed"])
def test_iam_lost_create_access_key_reply_through_the_proxy_still_creates_the_key(
        make_iam_user, signing_moto: SigningMoto, signing_fault_proxy, close: bool):
    user = make_iam_user()
    iam = signing_moto.client("iam", endpoint_url=signing_fault_proxy.url)     # admin, via the proxy
    assert iam.list_access_keys(UserName=user.name)["AccessKeyMetadata"], "a signed request passes the proxy"

    signing_fault_proxy.lose_reply("CreateAccessKey", close=close)
    with pytest.raises((ClientError, ConnectionClosedError)) as lost:
        iam.create_access_key(UserName=user.name)
    if close:
        assert isinstance(lost.value, ConnectionClosedError)
    else:
        assert error_code(lost.value) == "InternalServiceError"

    keys = user.keys()
    assert len(keys) == 2, "moto applied the CreateAccessKey whose reply was lost"
    assert [row.status for row in keys] == ["Active", "Active"]
    assert signing_fault_proxy.seen == ["ListAccessKeys", "CreateAccessKey"]
    with pytest.raises(ClientError) as full:                    # the rule is used up: answered again
        iam.create_access_key(UserName=user.name)
    assert error_code(full.value) == "LimitExceeded"


def test_iam_proxy_fail_rule_answers_without_reaching_moto(iam_user: IamUser, signing_moto: SigningMoto,
                                                           signing_fault_proxy):
    iam = signing_moto.client("iam", endpoint_url=signing_fault_proxy.url)
    signing_fault_proxy.fail("CreateAccessKey", status=400, code="Throttling")

    with pytest.raises(ClientError) as throttled:
        iam.create_access_key(UserName=iam_user.name)

    assert error_code(throttled.value) == "Throttling"
    assert iam_user.key_ids() == [iam_user.access_key_id], "no key was created"
    sts = iam_user.client("sts", endpoint_url=signing_fault_proxy.url)
    assert sts.get_caller_identity()["Arn"] == iam_user.arn, "the user's own key signs through the proxy too"
