"""A test world for the AWS IAM issuer: a config as a user writes it (an ``aws_iam`` issuer for one
IAM user, stores for its access key), a runtime and engine on an injected clock that starts at the
real time (moto stamps keys with the real time), and ways to look at the user's keys as AWS sees
them. The AWS side is a moto server in server mode; with the signing server
(tests/servers/aws_signing.py) a key that does not work is refused, as on AWS."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from rotator.engine import Event
from rotator.models import KeyRef, Secret
from rotator.runtime import ManagedSecret, Runtime
from tests.world import Runs
from rotator.testing import FakeClock

PARTS = ("aws_access_key_id", "aws_secret_access_key")


def real_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


@dataclass
class IamWorld(Runs):
    """``endpoint``: the moto server; ``admin``: (id, secret) rotator signs in with; ``user``: the
    managed IAM user."""

    endpoint: str
    admin: tuple[str, str]
    user: str
    root: Path
    clock: FakeClock = field(default_factory=lambda: FakeClock(real_now()))
    issuer: dict[str, Any] = field(default_factory=dict)
    defaults: dict[str, Any] = field(default_factory=lambda: {"lead_time": "14d", "grace": "48h", "workers": 1})
    backends: dict[str, dict[str, Any]] = field(default_factory=dict)
    secrets: list[dict[str, Any]] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    calls: list[tuple[str, str, str]] = field(default_factory=list)
    iam_user: Any = None
    _runtimes: list[Runtime] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.backends.setdefault("store", {"type": "file", "directory": str(self.root / "store")})
        self.backends.setdefault("app", {"type": "file", "directory": str(self.root / "app")})
        self.issuer = {"type": "aws_iam", "user_name": self.user, "region": "us-east-1",
                       "endpoint_url": self.endpoint, "sts_endpoint_url": self.endpoint, "max_attempts": 2,
                       "propagation_timeout": "20s", **self.issuer}

    # --- configuration ---------------------------------------------------------------------------

    def add_secret(self, name: str = "ci", targets: list[dict[str, Any]] | None = None, **options: Any) -> None:
        targets = targets or [{"backend": "store", "path": f"{name}.json"}, {"backend": "app", "path": f"{name}.json"}]
        self.secrets.append({"name": name, "issuer": "iam", "targets": targets, **options})

    def config_data(self) -> dict[str, Any]:
        return {"rotator": self.defaults, "issuers": {"iam": self.issuer}, "backends": self.backends,
                "secrets": self.secrets}

    # --- AWS as the test sees it -----------------------------------------------------------------

    def iam(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client("iam", region_name="us-east-1", endpoint_url=self.endpoint,
                            aws_access_key_id=self.admin[0], aws_secret_access_key=self.admin[1],
                            config=Config(retries={"total_max_attempts": 1}))

    def keys(self) -> dict[str, str]:
        """The user's keys as IAM lists them: id -> Active/Inactive."""
        listed = self.iam().list_access_keys(UserName=self.user)["AccessKeyMetadata"]
        return {k["AccessKeyId"]: k["Status"] for k in listed}

    def create_key(self) -> tuple[str, str]:
        key = self.iam().create_access_key(UserName=self.user)["AccessKey"]
        return key["AccessKeyId"], key["SecretAccessKey"]

    def seed(self, name: str = "ci") -> tuple[str, str]:
        """A key made by hand, written to every target of ``name`` (as a person would)."""
        key_id, secret = self.create_key()
        value = Secret.of_parts([("access_key_id", key_id), ("secret_access_key", secret)])
        for bound in self.secret(name).targets:
            bound.backend.deploy(bound.target, value, None, KeyRef.of(value))
        return key_id, secret

    def secret(self, name: str = "ci") -> ManagedSecret:
        return next(s for s in self.runtime().secrets if s.name == name)

    def record(self, name: str = "ci"):
        secret = self.secret(name)
        return secret.primary.backend.read(secret.primary.target).record

    def served(self, name: str = "ci") -> dict[str, tuple[str, str] | None]:
        """Each target's current key as (id, secret)."""
        out: dict[str, tuple[str, str] | None] = {}
        for bound in self.secret(name).targets:
            current = bound.backend.read(bound.target).current
            out[bound.label] = (current.part("access_key_id"), current.part("secret_access_key")) if current else None
        return out

    def file_payload(self, backend: str, path: str) -> dict[str, Any]:
        return json.loads((Path(self.backends[backend]["directory"]) / path).read_text())

def advance(world: IamWorld, **delta: float) -> None:
    world.clock.advance(timedelta(**delta))


def fresh_aws_sessions() -> None:
    """Forget botocore sessions shared across providers: they keep the credentials they first
    resolved, and IAM tests sign in with the signing server's admin key, not the dummy one."""
    from rotator_providers.aws import session

    session._shared_sessions.clear()


@pytest.fixture
def iam_world(signing_moto, signing_admin_env, make_iam_user, tmp_path):
    """An :class:`IamWorld` for a fresh IAM user (with no key yet) on the signing moto server;
    every AWS store in it uses the same server, signed with the admin key."""
    fresh_aws_sessions()
    user = make_iam_user(with_key=False)
    world = IamWorld(signing_moto.url, tuple(signing_moto.admin), user.name, tmp_path)
    world.iam_user = user
    world.backends["sm"] = {"type": "aws_secrets_manager", "region": "us-east-1", "endpoint_url": signing_moto.url,
                            "max_attempts": 2}
    world.backends["ssm"] = {"type": "ssm_parameter", "region": "us-east-1", "endpoint_url": signing_moto.url,
                             "max_attempts": 2}
    yield world
    world.close()
    fresh_aws_sessions()
