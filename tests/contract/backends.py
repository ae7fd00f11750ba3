"""The backends the contract suite runs against: one ``BackendCase`` per implementation.

To add a backend, append a case to ``CASES``:

* ``make(tmp_path)`` returns the backend and ``new_target()``, which hands out a fresh, unused
  target on every call. A case that needs a server (moto, OpenBao) starts it lazily, once per
  session, so running only the file case starts nothing.
* ``teardown(backend)`` (optional) runs after each test, before ``backend.close()``.
* ``app_read(backend, target)`` (optional) reads the target's ``field`` the way an application
  would, without going through ``backend.read``; the suite falls back to ``backend.read``.
* ``marks`` are pytest marks for the whole case (``pytest.mark.slow``, a skipif, ...).

Tests never branch on a case's name: what a backend cannot do is declared in its ``capabilities``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any, Callable

from rotator.interfaces import Backend, Target
from rotator.testing import provider_context

NewTarget = Callable[[], Target]


@dataclass(frozen=True)
class BackendCase:
    name: str
    make: Callable[[Path], tuple[Backend, NewTarget]]
    teardown: Callable[[Backend], None] | None = None
    app_read: Callable[[Backend, Target], str | None] | None = None
    marks: tuple[Any, ...] = ()


def _make_file(tmp_path: Path) -> tuple[Backend, NewTarget]:
    from rotator_providers.file import FileBackend

    backend = FileBackend("contract-file", {"directory": str(tmp_path / "secrets")}, provider_context())
    numbers = count(1)
    return backend, lambda: backend.target({"path": f"app-{next(numbers)}/quiva.json"})


def _app_read_file(backend: Backend, target: Target) -> str | None:
    path = Path(target.label.removeprefix("file:"))
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8")).get(target.field)


CASES: list[BackendCase] = [
    BackendCase(name="file", make=_make_file, app_read=_app_read_file),
]


# --- Vault / OpenBao KV (a session-wide `bao server -dev`, started on first use) ---------------

def _make_vault(kv_version: int) -> Callable[[Path], tuple[Backend, NewTarget]]:
    def make(tmp_path: Path) -> tuple[Backend, NewTarget]:
        import uuid

        from rotator_providers.vault.backend import VaultKVBackend
        from tests.servers.vault import server

        bao = server()
        settings = {"url": bao.url, "kv_version": kv_version,
                    "mount_point": "secret" if kv_version == 2 else bao.kv1_mount,
                    "auth": {"method": "token", "token": {"env": "VAULT_TOKEN"}}}
        context = provider_context(environ={"VAULT_TOKEN": bao.root_token})
        backend = VaultKVBackend(f"contract-vault-kv{kv_version}", settings, context)
        prefix, numbers = f"contract/{uuid.uuid4().hex[:12]}", count(1)
        return backend, lambda: backend.target({"path": f"{prefix}/app-{next(numbers)}"})

    return make


def _app_read_vault(backend: Backend, target: Target) -> str | None:
    """What `bao kv get -field=<field>` would print, through a separate root client."""
    import hvac

    from tests.servers.vault import server

    kv = server().client().secrets.kv
    try:
        if backend.capabilities.extra.get("kv_version") == 1:
            data = kv.v1.read_secret(path=target.path, mount_point=target.mount)["data"]
        else:
            data = kv.v2.read_secret_version(path=target.path, mount_point=target.mount,
                                             raise_on_deleted_version=True)["data"]["data"]
    except hvac.exceptions.InvalidPath:
        return None
    return data.get(target.field)


CASES.append(BackendCase(name="vault-kv2", make=_make_vault(2), app_read=_app_read_vault))
CASES.append(BackendCase(name="vault-kv1", make=_make_vault(1), app_read=_app_read_vault))


# --- AWS Secrets Manager (a session-wide moto server, started on first use) -------------------

def _make_aws(tmp_path: Path) -> tuple[Backend, NewTarget]:
    import uuid

    from rotator_providers.aws.secrets_manager import SecretsManagerBackend
    from tests.servers.aws import dummy_credentials, server

    moto = server()
    env = dummy_credentials()           # the standard chain finds them; undone in _teardown_aws
    backend = SecretsManagerBackend("contract-aws-sm", moto.settings(), provider_context())
    _AWS_ENVS[id(backend)] = env
    prefix, numbers = f"contract/{uuid.uuid4().hex[:12]}", count(1)
    return backend, lambda: backend.target({"secret_id": f"{prefix}/app-{next(numbers)}"})


def _teardown_aws(backend: Backend) -> None:
    _AWS_ENVS.pop(id(backend)).undo()


_AWS_ENVS: dict[int, Any] = {}


def _app_read_aws(backend: Backend, target: Target) -> str | None:
    """What an application reads: GetSecretValue(VersionStage="AWSCURRENT"), then the field."""
    from tests.servers.aws import server

    return server().read_current(target.secret_id, target.field, target.region)


CASES.append(BackendCase(name="aws-sm", make=_make_aws, teardown=_teardown_aws, app_read=_app_read_aws))


# --- AWS Systems Manager Parameter Store (the same session-wide moto server) -------------------
# A secondary-only backend (holds_record=False): the suite skips its primary-write tests and runs
# the reading and deploy contract.

def _make_ssm(tmp_path: Path) -> tuple[Backend, NewTarget]:
    import uuid

    from rotator_providers.aws.ssm import ParameterStoreBackend
    from tests.servers.aws import dummy_credentials, server

    moto = server()
    env = dummy_credentials()           # the standard chain finds them; undone in _teardown_ssm
    env.delenv("AWS_ENDPOINT_URL_SSM", raising=False)
    backend = ParameterStoreBackend("contract-ssm", moto.settings(), provider_context())
    _AWS_ENVS[id(backend)] = env
    prefix, numbers = f"/contract/{uuid.uuid4().hex[:12]}", count(1)
    return backend, lambda: backend.target({"name": f"{prefix}/app-{next(numbers)}"})


def _app_read_ssm(backend: Backend, target: Target) -> str | None:
    """What an application reads: GetParameter(WithDecryption=True), then the field."""
    from tests.servers.aws import server

    client = server().client("ssm", region=target.region)
    try:
        answer = client.get_parameter(Name=target.name, WithDecryption=True)
    except client.exceptions.ParameterNotFound:
        return None
    return json.loads(answer["Parameter"]["Value"]).get(target.field)


CASES.append(BackendCase(name="ssm", make=_make_ssm, teardown=_teardown_aws, app_read=_app_read_ssm))
