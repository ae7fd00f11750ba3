"""A moto server that checks request signatures and IAM policies (tests of the AWS IAM issuer).

The session's other moto server (``tests/servers/aws.py``) accepts any credentials. An access-key
issuer needs a server that *refuses* a deleted key or a wrong secret, so this one runs moto with
``INITIAL_NO_AUTH_ACTION_COUNT`` set. moto reads that variable once, when ``moto.settings`` is
imported, and the setting and its request counter are process globals, so the server runs in a
**subprocess** (``python -c`` with ``ThreadedMotoServer``; started in about 0.3 s, about 0.5 s
with the admin user) and never shares the test process's moto.

Start-up (``signing_server()``, the session fixture ``signing_moto``): moto serves the first
``UNCHECKED`` (3) requests unchecked and checks every later one. The fixture spends exactly those
three: CreateUser ``rotator-admin``, PutUserPolicy (``*`` on ``*``), CreateAccessKey, whose key is
the admin credential tests give the issuer. It then proves that signing is enforced (a request
signed with a wrong secret must be refused with SignatureDoesNotMatch, the admin key must be
accepted) and raises if not. The counter is global to the server: nothing else may reach it
before that. ``POST /moto-api/reset`` would clear IAM, the admin user included, so this server is
never reset; each test gets a fresh IAM user with a unique name instead (``make_iam_user`` /
``iam_user``). ``POST /moto-api/reset-auth`` would switch checking off again: do not call it.

Fixtures (available to every test: ``tests/conftest.py`` lists this module in ``pytest_plugins``):

* ``signing_moto`` (session): :class:`SigningMoto` — ``url``, ``admin`` (:class:`AwsKey`),
  ``admin_arn``, ``account``, ``region``, ``client(service, key=None, endpoint_url=None)``.
* ``make_iam_user`` (function): a factory ``make_iam_user(with_key=True, self_manage=False,
  policy=None, name=None) -> IamUser``.
* ``iam_user`` (function): ``make_iam_user()`` — a fresh user with one active key.
* ``signing_admin_env`` (function): the admin key in the standard AWS environment variables for
  this test (what an issuer using the default credential chain signs in with); host config off.
* ``signing_fault_proxy`` (function): a :class:`~tests.servers.aws.FaultProxy` in front of
  ``signing_moto``; it forwards requests unchanged, so signatures still verify. Point a client at
  ``proxy.url`` (``signing_moto.client("iam", endpoint_url=proxy.url)``); rules match the query
  protocol's ``Action`` (``proxy.lose_reply("CreateAccessKey")``). The :class:`IamUser` helpers go
  straight to moto, so they neither pass through the proxy nor use up its rules.

Where this moto (5.2.x) differs from AWS, measured here — write tests that would pass on AWS too:

* **An ``Inactive`` key is still accepted** — by STS ``GetCallerIdentity`` and by every other
  call (moto never looks at a key's status when it checks a signature). AWS refuses it. So
  :meth:`IamUser.works` does NOT prove a deactivation: prove it through ``ListAccessKeys``
  (:meth:`IamUser.keys` shows ``Inactive``).
* **Last use is reported at once** by ``GetAccessKeyLastUsed`` (AWS lags by hours), and it is
  recorded *before* the signature is checked: a request refused with ``SignatureDoesNotMatch``
  still marks the key as used (AWS records authenticated use only).
* **Inactive keys count toward the quota of two keys per user** (``LimitExceeded``, HTTP 409), as
  on AWS. moto also accepts any status string in ``UpdateAccessKey`` (AWS refuses it).
* **No clock check**: a request signed with an ``X-Amz-Date`` years old is accepted (AWS refuses
  one more than 5 minutes off). The ``Host`` header *is* signed and checked.
* **IAM actions are checked against resource ``*``** for users (moto knows only role ARNs as IAM
  resources), so a policy statement scoped to the user's own ARN never matches in moto and the
  call is denied. The per-test user's policy therefore grants its IAM actions on ``*``; on AWS
  scope them to ``arn:aws:iam::<account>:user/<name>``.
* ``sts:GetCallerIdentity`` is always allowed, whatever the policies say (as on AWS).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import select
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

import pytest

from tests.servers.aws import ACCOUNT, CLEARED_ENV, REGION, FaultProxy

UNCHECKED = 3                      # CreateUser, PutUserPolicy, CreateAccessKey of the admin user
ADMIN_USER = "rotator-admin"
START_TIMEOUT = 30.0               # seconds; it takes about 0.3 s
#: STS/IAM error codes that mean "this key was not accepted" (unknown/deleted id, wrong secret).
REFUSALS = frozenset({"InvalidClientTokenId", "SignatureDoesNotMatch"})
#: The environment variables ``signing_admin_env`` removes (besides aws.py's list).
_MORE_CLEARED = ("AWS_ENDPOINT_URL_IAM", "AWS_ENDPOINT_URL_STS", "AWS_CA_BUNDLE", "AWS_MAX_ATTEMPTS",
                 "AWS_RETRY_MODE", "AWS_STS_REGIONAL_ENDPOINTS")

_CHILD = r"""
import logging, sys
from moto.server import ThreadedMotoServer
logging.getLogger("werkzeug").setLevel(logging.WARNING)
handle = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
handle.start()
print(handle.get_host_and_port()[1], flush=True)
sys.stdin.read()          # until the test process closes the pipe (or dies)
handle.stop()
"""


class AwsKey(NamedTuple):
    """An access key: ``key_id, secret = key`` also works."""

    access_key_id: str
    secret_access_key: str


class KeyRow(NamedTuple):
    """One ``ListAccessKeys`` entry: ``(AccessKeyId, Status, CreateDate)``."""

    key_id: str
    status: str
    created: datetime


NO_KEY = AwsKey("", "")


def _allow(actions: list[str], resource: str | list[str] = "*") -> dict[str, Any]:
    return {"Effect": "Allow", "Action": actions, "Resource": resource}


def _policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


# --- boto3 clients that read nothing from the host ---------------------------------------------

_session_lock = threading.RLock()
_boto3_session: Any = None


def _session() -> Any:
    """One boto3 session for every helper client: config and credential files switched off and
    no profile, whatever AWS_* variables the test process has (credentials are always explicit).
    Only one boto3 session may wrap a botocore session (boto3 registers its handlers on it)."""
    global _boto3_session
    with _session_lock:
        if _boto3_session is None:
            import boto3
            import botocore.session
            from botocore.configprovider import ConstantProvider

            session = botocore.session.get_session()
            session.get_component("config_store").set_config_provider("profile", ConstantProvider(None))
            session.set_config_variable("config_file", "/nonexistent/rotator-tests/aws-config")
            session.set_config_variable("credentials_file", "/nonexistent/rotator-tests/aws-credentials")
            _boto3_session = boto3.session.Session(botocore_session=session)
        return _boto3_session


def make_client(service: str, url: str, key: AwsKey) -> Any:
    """A boto3 client for ``service`` at ``url`` signed with ``key``; one attempt, no retries."""
    from botocore.config import Config

    with _session_lock:        # botocore sessions are not thread-safe; clients are
        return _session().client(
            service, region_name=REGION, endpoint_url=url,
            aws_access_key_id=key.access_key_id, aws_secret_access_key=key.secret_access_key,
            config=Config(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=30))


def error_code(error: BaseException) -> str | None:
    """The AWS error code of a botocore ``ClientError`` (None for anything else)."""
    response = getattr(error, "response", None)
    if isinstance(response, dict):
        return response.get("Error", {}).get("Code")
    return None


# --- the server --------------------------------------------------------------------------------

@dataclass
class SigningMoto:
    """The session's signature-checking moto server.

    ``url``: its endpoint (every service); ``admin``: the ``rotator-admin`` key (``*`` on ``*``);
    ``admin_arn``; ``account`` (moto's default, 123456789012); ``region`` (us-east-1).
    """

    process: subprocess.Popen
    url: str
    stderr: Any = None             # the child's stderr (a temporary file), for start-up failures
    admin: AwsKey = NO_KEY
    admin_arn: str = ""
    account: str = ACCOUNT
    region: str = REGION
    _clients: dict[tuple[str, str, AwsKey], Any] = field(default_factory=dict)
    _lock: Any = field(default_factory=threading.Lock)

    def client(self, service: str, key: AwsKey | None = None, endpoint_url: str | None = None) -> Any:
        """A boto3 client signed with ``key`` (default: the admin key), at this server or at
        ``endpoint_url`` (e.g. a fault proxy's url); cached per (service, url, key)."""
        key = key or self.admin
        url = endpoint_url or self.url
        with self._lock:
            client = self._clients.get((service, url, key))
        if client is None:
            client = make_client(service, url, key)
            with self._lock:
                self._clients[(service, url, key)] = client
        return client

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.close()           # the child's sys.stdin.read() returns: it stops
                self.process.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait(timeout=5)
        for stream in (self.process.stdin, self.process.stdout, self.stderr):
            if stream is not None:
                stream.close()


def _start_process() -> SigningMoto:
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("AWS_", "MOTO_")) and name != "TEST_SERVER_MODE"}
    env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(UNCHECKED)
    stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server, closed by stop()
    process = subprocess.Popen([sys.executable, "-c", _CHILD], env=env, cwd=tempfile.gettempdir(),
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True)
    ready, _, _ = select.select([process.stdout], [], [], START_TIMEOUT)
    line = process.stdout.readline() if ready else ""
    if not line.strip().isdigit():
        process.kill()
        process.wait(timeout=5)
        stderr.seek(0)
        output = stderr.read().decode(errors="replace")[-2000:]
        for stream in (process.stdin, process.stdout, stderr):
            stream.close()
        raise RuntimeError(f"the signing moto server did not start within {START_TIMEOUT:.0f} s "
                           f"(exit code {process.returncode}): {output}")
    return SigningMoto(process, f"http://127.0.0.1:{int(line)}", stderr)


def _bootstrap(moto: SigningMoto) -> None:
    """Spend the unchecked requests on the admin user, then prove that signing is enforced."""
    from botocore.exceptions import ClientError

    anyone = AwsKey("AKIAUNCHECKEDSETUP00", "unchecked")     # any key will do while unchecked
    iam = make_client("iam", moto.url, anyone)
    moto.admin_arn = iam.create_user(UserName=ADMIN_USER)["User"]["Arn"]                      # 1
    iam.put_user_policy(UserName=ADMIN_USER, PolicyName="admin",
                        PolicyDocument=_policy(_allow(["*"])))                               # 2
    created = iam.create_access_key(UserName=ADMIN_USER)["AccessKey"]                         # 3
    moto.admin = AwsKey(created["AccessKeyId"], created["SecretAccessKey"])

    wrong = AwsKey(moto.admin.access_key_id, "wrong-" + moto.admin.secret_access_key)
    try:
        make_client("sts", moto.url, wrong).get_caller_identity()
    except ClientError as error:
        if error_code(error) != "SignatureDoesNotMatch":
            raise RuntimeError(f"the signing moto server refused a wrong secret with {error_code(error)}, "
                               "expected SignatureDoesNotMatch") from error
    else:
        raise RuntimeError("the signing moto server accepted a request signed with a wrong secret: "
                           f"moto is not checking signatures (INITIAL_NO_AUTH_ACTION_COUNT={UNCHECKED} "
                           "not honoured, or more than the admin set-up reached it first)")
    arn = moto.client("sts").get_caller_identity()["Arn"]
    if arn != moto.admin_arn:
        raise RuntimeError(f"the admin key signs in as {arn}, expected {moto.admin_arn}")
    moto.client("iam").get_user(UserName=ADMIN_USER)      # the admin policy is in force


_lock = threading.Lock()
_server: SigningMoto | None = None


def signing_server() -> SigningMoto:
    """The session's signing moto server, started (and bootstrapped) on first use."""
    global _server
    with _lock:
        if _server is None:
            moto = _start_process()
            try:
                _bootstrap(moto)
            except BaseException:
                moto.stop()
                raise
            _server = moto
        return _server


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    global _server
    with _lock:
        if _server is not None:
            _server.stop()
            _server = None


# --- per-test IAM users ------------------------------------------------------------------------

@dataclass
class IamUser:
    """A fresh IAM user on the signing server.

    Attributes: ``name``, ``arn``, ``url`` (the server's endpoint, every service), ``region``,
    ``admin`` (:class:`AwsKey` of ``rotator-admin``), ``key`` (the initial :class:`AwsKey` or None)
    with ``access_key_id`` / ``secret_access_key`` as shortcuts (None without an initial key).
    Helpers go straight to the server (never through a proxy); the key-management ones
    (``keys``, ``key_ids``, ``status``, ``last_used``, ``create_key``, ``deactivate``, ``activate``,
    ``delete_key``) are signed with the admin key, ``works`` / ``auth_error`` / ``caller_arn`` /
    ``client`` with the key given (default: the initial key).
    """

    server: SigningMoto
    name: str
    arn: str
    key: AwsKey | None

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def region(self) -> str:
        return self.server.region

    @property
    def admin(self) -> AwsKey:
        return self.server.admin

    @property
    def access_key_id(self) -> str | None:
        return self.key.access_key_id if self.key else None

    @property
    def secret_access_key(self) -> str | None:
        return self.key.secret_access_key if self.key else None

    @property
    def _iam(self) -> Any:
        return self.server.client("iam")

    def keys(self) -> list[KeyRow]:
        """ListAccessKeys: ``(AccessKeyId, Status, CreateDate)`` of each of the user's keys."""
        rows: list[KeyRow] = []
        for page in self._iam.get_paginator("list_access_keys").paginate(UserName=self.name):
            rows += [KeyRow(k["AccessKeyId"], k["Status"], k["CreateDate"]) for k in page["AccessKeyMetadata"]]
        return rows

    def key_ids(self) -> list[str]:
        """The ids of the user's keys, active or not, in ListAccessKeys order."""
        return [row.key_id for row in self.keys()]

    def status(self, access_key_id: str) -> str | None:
        """The key's status from ListAccessKeys (``Active``/``Inactive``), None if it is gone."""
        return next((row.status for row in self.keys() if row.key_id == access_key_id), None)

    def auth_error(self, access_key_id: str | AwsKey, secret: str | None = None) -> str | None:
        """STS GetCallerIdentity signed with the key: None if accepted, else the refusal's code
        (``InvalidClientTokenId``, ``SignatureDoesNotMatch``). Any other failure is raised.
        In moto an Inactive key is accepted (see the module docstring)."""
        from botocore.exceptions import ClientError

        key = access_key_id if isinstance(access_key_id, AwsKey) else AwsKey(access_key_id, secret or "")
        try:
            self.server.client("sts", key).get_caller_identity()
        except ClientError as error:
            if error_code(error) in REFUSALS:
                return error_code(error)
            raise
        return None

    def works(self, access_key_id: str | AwsKey, secret: str | None = None) -> bool:
        """Whether STS GetCallerIdentity signed with this key succeeds (False when refused with
        InvalidClientTokenId / SignatureDoesNotMatch; anything else is raised). Not a proof of
        deactivation in moto: an Inactive key works here."""
        return self.auth_error(access_key_id, secret) is None

    def caller_arn(self, key: AwsKey | None = None) -> str:
        """The ARN STS GetCallerIdentity answers for ``key`` (default: the initial key)."""
        return self.server.client("sts", key or self._initial()).get_caller_identity()["Arn"]

    def last_used(self, access_key_id: str) -> datetime | None:
        """GetAccessKeyLastUsed's ``LastUsedDate`` (None: never used). Immediate in moto."""
        answer = self._iam.get_access_key_last_used(AccessKeyId=access_key_id)
        return answer["AccessKeyLastUsed"].get("LastUsedDate")

    def create_key(self) -> AwsKey:
        """CreateAccessKey for this user, as the admin (LimitExceeded beyond two keys)."""
        created = self._iam.create_access_key(UserName=self.name)["AccessKey"]
        return AwsKey(created["AccessKeyId"], created["SecretAccessKey"])

    def deactivate(self, access_key_id: str) -> None:
        self._iam.update_access_key(UserName=self.name, AccessKeyId=access_key_id, Status="Inactive")

    def activate(self, access_key_id: str) -> None:
        self._iam.update_access_key(UserName=self.name, AccessKeyId=access_key_id, Status="Active")

    def delete_key(self, access_key_id: str) -> None:
        self._iam.delete_access_key(UserName=self.name, AccessKeyId=access_key_id)

    def client(self, service: str, key: AwsKey | None = None, endpoint_url: str | None = None) -> Any:
        """A boto3 client signed with ``key`` (default: the user's initial key)."""
        return self.server.client(service, key or self._initial(), endpoint_url)

    def settings(self, **extra: Any) -> dict[str, Any]:
        """An ``aws_iam`` issuer section for this user on this server: IAM and STS both at ``url``
        (moto serves every service on one port); credentials come from the environment
        (``signing_admin_env``)."""
        return {"user_name": self.name, "region": self.region, "endpoint_url": self.url,
                "sts_endpoint_url": self.url, **extra}

    def _initial(self) -> AwsKey:
        if self.key is None:
            raise ValueError(f"IAM user {self.name} was made without an initial key")
        return self.key


_sequence = itertools.count(1)


def new_iam_user(server: SigningMoto, *, with_key: bool = True, self_manage: bool = False,
                 policy: str | dict[str, Any] | None = None, name: str | None = None,
                 hint: str = "") -> IamUser:
    """Create a user with a unique name (signed as the admin) and its inline policy ``self``.

    The default policy allows ``sts:GetCallerIdentity`` and ``s3:ListAllMyBuckets`` (resource
    ``*``, as on AWS) and ``iam:GetUser``; ``self_manage`` adds the calls a key needs to rotate
    itself (Create/Delete/Update/ListAccessKeys, GetAccessKeyLastUsed). IAM actions are granted
    on ``*`` because moto checks them against ``*`` (see the module docstring). ``policy``
    replaces the default (a JSON string or a dict); ``with_key`` creates one initial key.
    """
    slug = re.sub(r"[^\w+=,.@-]", "-", hint)
    name = name or f"t{next(_sequence)}-{slug}".rstrip("-")[:64]
    iam = server.client("iam")
    arn = iam.create_user(UserName=name, Tags=[{"Key": "rotator-test", "Value": "signing"}])["User"]["Arn"]
    if policy is None:
        iam_actions = ["iam:GetUser"]
        if self_manage:
            iam_actions += ["iam:CreateAccessKey", "iam:DeleteAccessKey", "iam:UpdateAccessKey",
                            "iam:ListAccessKeys", "iam:GetAccessKeyLastUsed"]
        policy = _policy(_allow(["sts:GetCallerIdentity", "s3:ListAllMyBuckets"]), _allow(iam_actions))
    elif isinstance(policy, dict):
        policy = json.dumps(policy)
    iam.put_user_policy(UserName=name, PolicyName="self", PolicyDocument=policy)
    user = IamUser(server, name, arn, None)
    if with_key:
        user.key = user.create_key()
    return user


@pytest.fixture(scope="session")
def signing_moto() -> SigningMoto:
    """The session's signature-checking moto server (never reset; see the module docstring)."""
    return signing_server()


@pytest.fixture
def make_iam_user(signing_moto: SigningMoto, request: pytest.FixtureRequest) -> Callable[..., IamUser]:
    """``make_iam_user(with_key=True, self_manage=False, policy=None, name=None) -> IamUser``."""

    def make(**options: Any) -> IamUser:
        options.setdefault("hint", request.node.name)
        return new_iam_user(signing_moto, **options)

    return make


@pytest.fixture
def iam_user(make_iam_user: Callable[..., IamUser]) -> IamUser:
    """A fresh IAM user with the default policy and one active initial key."""
    return make_iam_user()


@pytest.fixture
def signing_admin_env(signing_moto: SigningMoto, monkeypatch: pytest.MonkeyPatch) -> AwsKey:
    """The admin key in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY for this test, region us-east-1,
    shared config files and instance metadata off, other AWS_* credential variables removed."""
    for name in (*CLEARED_ENV, *_MORE_CLEARED):
        monkeypatch.delenv(name, raising=False)
    for name, value in {
        "AWS_ACCESS_KEY_ID": signing_moto.admin.access_key_id,
        "AWS_SECRET_ACCESS_KEY": signing_moto.admin.secret_access_key,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": "/nonexistent/rotator-tests/aws-config",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/rotator-tests/aws-credentials",
    }.items():
        monkeypatch.setenv(name, value)
    return signing_moto.admin


@pytest.fixture
def signing_fault_proxy(signing_moto: SigningMoto):
    """A :class:`FaultProxy` in front of the signing server, for this test only (no reset)."""
    proxy = FaultProxy(signing_moto.url).start()
    yield proxy
    proxy.stop()
