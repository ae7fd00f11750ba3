"""The backends the contract suite runs against: one ``BackendCase`` per implementation.

To add a backend, append a case to ``CASES``:

* ``make(tmp_path)`` returns the backend and ``new_target(**entry)``, which hands out a fresh,
  unused target on every call; ``entry`` adds keys to its ``targets`` entry (``fields={...}`` for
  a value made of several parts). A case that needs a server (moto, OpenBao) starts it lazily, once
  per session, so running only the file case starts nothing.
* ``teardown(backend)`` (optional) runs after each test, before ``backend.close()``.
* ``app_read(backend, target)`` (optional) reads the JSON object an application reads (None when
  the target does not exist), without going through ``backend.read``; the suite falls back to
  ``backend.read``.
* ``app_write(backend, target, obj)`` (optional) stores ``obj`` as the target's content the way an
  application or an operator would (the tests of payloads rotator did not write need it).
* ``count_writes(backend, target)`` (optional) is a context manager: inside it, a call of what it
  yields returns how many writes the store has taken for the target since it was entered (file:
  renames onto the file and writes to it, seen by inotify; Vault KV v2 and Parameter Store: new
  versions; Secrets Manager: new versions of the secret).
* ``history(backend, target)`` (optional) returns every version the store keeps of the target, as
  JSON objects, oldest first (for stores that keep versions).
* ``marks`` are pytest marks for the whole case (``pytest.mark.slow``, a skipif, ...).

Tests never branch on a case's name: what a backend cannot do is declared in its ``capabilities``.
"""

from __future__ import annotations

import ctypes
import json
import os
import struct
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any, Callable, Iterator

from rotator.interfaces import Backend, Target
from rotator.testing import provider_context

NewTarget = Callable[..., Target]
AppObject = dict[str, Any]


@dataclass(frozen=True)
class BackendCase:
    name: str
    make: Callable[[Path], tuple[Backend, NewTarget]]
    teardown: Callable[[Backend], None] | None = None
    app_read: Callable[[Backend, Target], AppObject | None] | None = None
    app_write: Callable[[Backend, Target, AppObject], None] | None = None
    count_writes: Callable[[Backend, Target], AbstractContextManager[Callable[[], int]]] | None = None
    history: Callable[[Backend, Target], list[AppObject]] | None = None
    marks: tuple[Any, ...] = ()


def _make_file(tmp_path: Path) -> tuple[Backend, NewTarget]:
    from rotator_providers.file import FileBackend

    backend = FileBackend("contract-file", {"directory": str(tmp_path / "secrets")}, provider_context())
    numbers = count(1)
    return backend, lambda **entry: backend.target({"path": f"app-{next(numbers)}/quiva.json", **entry})


def _file_path(target: Target) -> Path:
    return Path(target.label.removeprefix("file:"))


def _app_read_file(backend: Backend, target: Target) -> AppObject | None:
    path = _file_path(target)
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _app_write_file(backend: Backend, target: Target, obj: AppObject) -> None:
    path = _file_path(target)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2), encoding="utf-8")
    path.chmod(0o600)


# inotify(7): what the kernel saw happen to the file, so "one atomic replace" is observed, not assumed
_IN_MODIFY, _IN_CLOSE_WRITE, _IN_MOVED_TO, _IN_CREATE = 0x2, 0x8, 0x80, 0x100
_EVENT = struct.Struct("iIII")


@contextmanager
def _count_writes_file(backend: Backend, target: Target) -> Iterator[Callable[[], int]]:
    """Writes to the file: each rename onto it, and each direct create or write of it (an atomic
    replace is one rename and nothing else)."""
    path = _file_path(target)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)   # the backend accepts an existing one
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "inotify_init1")
    seen: list[int] = []
    try:
        mask = _IN_MODIFY | _IN_CLOSE_WRITE | _IN_MOVED_TO | _IN_CREATE
        if libc.inotify_add_watch(fd, os.fsencode(path.parent), mask) < 0:
            raise OSError(ctypes.get_errno(), "inotify_add_watch")

        def writes() -> int:
            while True:
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    return len(seen)
                offset = 0
                while offset < len(data):
                    _, event, _, size = _EVENT.unpack_from(data, offset)
                    name = data[offset + _EVENT.size: offset + _EVENT.size + size].rstrip(b"\0")
                    offset += _EVENT.size + size
                    if name == os.fsencode(path.name) and event & (_IN_MOVED_TO | _IN_CREATE | _IN_MODIFY):
                        seen.append(event)

        yield writes
    finally:
        os.close(fd)


CASES: list[BackendCase] = [
    BackendCase(name="file", make=_make_file, app_read=_app_read_file, app_write=_app_write_file,
                count_writes=_count_writes_file),
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
        return backend, lambda **entry: backend.target({"path": f"{prefix}/app-{next(numbers)}", **entry})

    return make


def _app_read_vault(backend: Backend, target: Target) -> AppObject | None:
    """What `bao kv get` would show of the data, through a separate root client."""
    import hvac

    from tests.servers.vault import server

    kv = server().client().secrets.kv
    try:
        if backend.capabilities.extra.get("kv_version") == 1:
            return kv.v1.read_secret(path=target.path, mount_point=target.mount)["data"]
        return kv.v2.read_secret_version(path=target.path, mount_point=target.mount,
                                         raise_on_deleted_version=True)["data"]["data"]
    except hvac.exceptions.InvalidPath:
        return None


def _app_write_vault(backend: Backend, target: Target, obj: AppObject) -> None:
    """`bao kv put`, through a separate root client."""
    from tests.servers.vault import server

    kv = server().client().secrets.kv
    if backend.capabilities.extra.get("kv_version") == 1:
        kv.v1.create_or_update_secret(path=target.path, secret=obj, mount_point=target.mount)
    else:
        kv.v2.create_or_update_secret(path=target.path, secret=obj, mount_point=target.mount)


def _kv2_versions(target: Target) -> int:
    import hvac

    from tests.servers.vault import server

    try:
        meta = server().client().secrets.kv.v2.read_secret_metadata(path=target.path, mount_point=target.mount)
    except hvac.exceptions.InvalidPath:
        return 0
    return int(meta["data"]["current_version"])


@contextmanager
def _count_writes_kv2(backend: Backend, target: Target) -> Iterator[Callable[[], int]]:
    """New KV versions (a metadata update is not one)."""
    before = _kv2_versions(target)
    yield lambda: _kv2_versions(target) - before


def _history_kv2(backend: Backend, target: Target) -> list[AppObject]:
    from tests.servers.vault import server

    kv = server().client().secrets.kv.v2
    return [kv.read_secret_version(path=target.path, mount_point=target.mount, version=number,
                                   raise_on_deleted_version=True)["data"]["data"]
            for number in range(1, _kv2_versions(target) + 1)]


CASES.append(BackendCase(name="vault-kv2", make=_make_vault(2), app_read=_app_read_vault,
                         app_write=_app_write_vault, count_writes=_count_writes_kv2, history=_history_kv2))
CASES.append(BackendCase(name="vault-kv1", make=_make_vault(1), app_read=_app_read_vault,
                         app_write=_app_write_vault))


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
    return backend, lambda **entry: backend.target({"secret_id": f"{prefix}/app-{next(numbers)}", **entry})


def _teardown_aws(backend: Backend) -> None:
    _AWS_ENVS.pop(id(backend)).undo()


_AWS_ENVS: dict[int, Any] = {}


def _sm_client(target: Target) -> Any:
    from tests.servers.aws import server

    return server().client(region=target.region)


def _app_read_aws(backend: Backend, target: Target) -> AppObject | None:
    """What an application reads: GetSecretValue(VersionStage="AWSCURRENT"), parsed."""
    client = _sm_client(target)
    try:
        answer = client.get_secret_value(SecretId=target.secret_id, VersionStage="AWSCURRENT")
    except client.exceptions.ResourceNotFoundException:
        return None
    return json.loads(answer["SecretString"])


def _app_write_aws(backend: Backend, target: Target, obj: AppObject) -> None:
    """CreateSecret, or PutSecretValue (a new AWSCURRENT version) when it exists."""
    client = _sm_client(target)
    try:
        client.create_secret(Name=target.secret_id, SecretString=json.dumps(obj))
    except client.exceptions.ResourceExistsException:
        client.put_secret_value(SecretId=target.secret_id, SecretString=json.dumps(obj))


def _sm_versions(target: Target) -> list[dict[str, Any]]:
    """Every version of the secret (deprecated ones too), oldest first."""
    client = _sm_client(target)
    try:
        client.describe_secret(SecretId=target.secret_id)   # moto answers a missing one with a 500 below
    except client.exceptions.ResourceNotFoundException:
        return []
    answer = client.list_secret_version_ids(SecretId=target.secret_id, IncludeDeprecated=True)
    return sorted(answer["Versions"], key=lambda v: v["CreatedDate"])


@contextmanager
def _count_writes_aws(backend: Backend, target: Target) -> Iterator[Callable[[], int]]:
    """New versions of the secret (moving a staging label is not one)."""
    before = len(_sm_versions(target))
    yield lambda: len(_sm_versions(target)) - before


def _history_aws(backend: Backend, target: Target) -> list[AppObject]:
    client = _sm_client(target)
    return [json.loads(client.get_secret_value(SecretId=target.secret_id, VersionId=v["VersionId"])["SecretString"])
            for v in _sm_versions(target)]


CASES.append(BackendCase(name="aws-sm", make=_make_aws, teardown=_teardown_aws, app_read=_app_read_aws,
                         app_write=_app_write_aws, count_writes=_count_writes_aws, history=_history_aws))


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
    return backend, lambda **entry: backend.target({"name": f"{prefix}/app-{next(numbers)}", **entry})


def _ssm_client(target: Target) -> Any:
    from tests.servers.aws import server

    return server().client("ssm", region=target.region)


def _app_read_ssm(backend: Backend, target: Target) -> AppObject | None:
    """What an application reads: GetParameter(WithDecryption=True), parsed."""
    client = _ssm_client(target)
    try:
        answer = client.get_parameter(Name=target.name, WithDecryption=True)
    except client.exceptions.ParameterNotFound:
        return None
    return json.loads(answer["Parameter"]["Value"])


def _app_write_ssm(backend: Backend, target: Target, obj: AppObject) -> None:
    _ssm_client(target).put_parameter(Name=target.name, Value=json.dumps(obj), Type="SecureString",
                                      Overwrite=True)


def _ssm_history(target: Target) -> list[dict[str, Any]]:
    client = _ssm_client(target)
    try:
        pages = client.get_paginator("get_parameter_history").paginate(Name=target.name, WithDecryption=True)
        return sorted((v for page in pages for v in page["Parameters"]), key=lambda v: v["Version"])
    except client.exceptions.ParameterNotFound:
        return []


@contextmanager
def _count_writes_ssm(backend: Backend, target: Target) -> Iterator[Callable[[], int]]:
    """New versions of the parameter."""
    before = len(_ssm_history(target))
    yield lambda: len(_ssm_history(target)) - before


def _history_ssm(backend: Backend, target: Target) -> list[AppObject]:
    return [json.loads(v["Value"]) for v in _ssm_history(target)]


CASES.append(BackendCase(name="ssm", make=_make_ssm, teardown=_teardown_aws, app_read=_app_read_ssm,
                         app_write=_app_write_ssm, count_writes=_count_writes_ssm, history=_history_ssm))
