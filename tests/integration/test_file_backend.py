"""What the file backend does beyond the contract: config, the on-disk format, permissions,
atomicity, locking across processes and error translation. The contract suite covers the slots."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import rotator_providers.file as file_store
from rotator_providers.file import FileBackend
from rotator.errors import (
    BackendError,
    BackendPermissionError,
    ConfigError,
    Conflict,
    CorruptPayload,
    SecretMissing,
)
from rotator.models import KeyRef, Phase, RotationRecord, Secret
from rotator.testing import provider_context

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
LEAKY = "sk-live-0123456789abcdefDONOTECHO"


@pytest.fixture
def calls() -> list[tuple[str, str, str]]:
    return []


@pytest.fixture
def make(tmp_path, calls):
    def make(**settings):
        return FileBackend("files", {"directory": str(tmp_path), **settings}, provider_context(calls=calls))
    return make


@pytest.fixture
def backend(make):
    return make()


@pytest.fixture
def target(backend):
    return backend.target({"path": "app/quiva.json"})


def secret(tag: str) -> Secret:
    return Secret(f"sk-file-test-{tag}-0123456789")


def ref(value: Secret, rotation_id: str = "r-1") -> KeyRef:
    return KeyRef.of(value, key_id=f"id-{rotation_id}", expires_on=T0 + timedelta(days=90), rotation_id=rotation_id)


def load(target) -> dict:
    return json.loads(target.path.read_text(encoding="utf-8"))


def write_raw(target, content: str | bytes) -> None:
    target.path.parent.mkdir(parents=True, exist_ok=True)
    data = content.encode() if isinstance(content, str) else content
    target.path.write_bytes(data)


def put(backend, target, value: Secret) -> str:
    """Make ``value`` current (a secondary write) and return the new version."""
    backend.deploy(target, value, None, ref(value))
    return backend.read(target).version


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- configuration -----------------------------------------------------------------------------

def test_defaults_resolve_relative_paths_against_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    backend = FileBackend("files", {}, provider_context())
    monkeypatch.chdir("/")  # the directory was fixed at construction

    target = backend.target({"path": "sub/quiva.json", "backend": "files"})

    assert target.path == tmp_path / "sub" / "quiva.json"
    assert target.label == f"file:{tmp_path}/sub/quiva.json"
    assert target.field == "api_key"
    assert backend.target({"path": "/etc/app/key.json", "field": "token"}).label == "file:/etc/app/key.json"
    assert backend.capabilities.holds_record and backend.capabilities.keeps_previous


@pytest.mark.parametrize(("settings", "expected"), [
    ({"colour": "blue"}, "backends.files.colour: unknown field"),
    ({"mode": "0644"}, "backends.files.mode"),
    ({"mode": "0400"}, "backends.files.mode"),
    ({"mode": "rw-------"}, "backends.files.mode"),
    ({"mode": 384}, "backends.files.mode"),
    ({"create_if_missing": "perhaps"}, "backends.files.create_if_missing"),
])
def test_invalid_settings_are_refused_with_the_field_path(settings, expected):
    with pytest.raises(ConfigError, match=expected):
        FileBackend("files", settings, provider_context())


@pytest.mark.parametrize(("spec", "expected"), [
    ({"path": "a.json", "colour": "blue"}, "backends.files target.colour: unknown field"),
    ({"field": "api_key"}, "backends.files target.path: Field required"),
    ({"path": ""}, "backends.files target.path"),
    ({"path": "a.json", "field": "rotator"}, "backends.files target.field: .*reserved"),
])
def test_invalid_targets_are_refused_with_the_field_path(backend, spec, expected):
    with pytest.raises(ConfigError, match=expected):
        backend.target(spec)


# --- the payload -------------------------------------------------------------------------------

def test_payload_is_utf8_json_with_the_key_on_top_and_no_empty_slots(backend, target):
    value = secret("current")
    version = backend.stage(target, value, RotationRecord(phase=Phase.STAGED), expect=None)
    backend.promote(target, RotationRecord(current=ref(value)), expect=version)

    text = target.path.read_text(encoding="utf-8")
    doc = json.loads(text)

    assert text.endswith("}\n")
    assert list(doc) == ["api_key", "rotator"]
    assert doc["api_key"] == value.reveal()
    assert set(doc["rotator"]) == {"format", "meta", "record"}  # no pending, no previous
    assert doc["rotator"]["format"] == 1
    assert doc["rotator"]["meta"] == {"key_id": "id-r-1", "expires_on": "2026-05-30T12:00:00Z",
                                      "rotation_id": "r-1", "fingerprint": value.fingerprint,
                                      "last4": value.last4}
    assert value.reveal() not in json.dumps([doc["rotator"]["meta"], doc["rotator"]["record"]])


def test_deploy_records_the_key_metadata_and_rewrites_nothing_when_repeated(backend, target):
    current, previous = secret("new"), secret("old")

    backend.deploy(target, current, previous, ref(current, "r-9"))
    first = target.path.read_bytes()
    backend.deploy(target, current, previous, ref(current, "r-9"))

    assert target.path.read_bytes() == first
    section = load(target)["rotator"]
    assert section["previous"] == previous.reveal()
    assert section["meta"]["rotation_id"] == "r-9"
    assert section["meta"]["fingerprint"] == current.fingerprint


def test_a_file_system_that_reads_short_anywhere_still_reads_the_whole_document(backend, target, monkeypatch):
    """FUSE and network file systems may return fewer bytes than asked at any point, not only
    at the end: the document is read until a read returns nothing, not cut at the first short
    read (which made a whole file look corrupt)."""
    current, previous = secret("new"), secret("old")
    backend.deploy(target, current, previous, ref(current, "r-9"))
    write_raw(target, json.dumps({**load(target), "padding": "x" * 200_000}, indent=2))
    real_read = os.read
    monkeypatch.setattr(file_store.os, "read", lambda fd, size: real_read(fd, min(size, 4093)))

    snapshot = backend.read(target)

    assert snapshot.current == current
    assert snapshot.previous == previous


def test_other_fields_an_application_put_in_the_file_survive_every_write(backend, target):
    old, new = secret("old"), secret("new")
    app_fields = {"endpoint": "https://api.quiva.ai", "api_key": old.reveal(), "options": {"retries": 3}}
    write_raw(target, json.dumps(app_fields))
    version = backend.read(target).version
    writes = [
        lambda v: backend.write_record(target, RotationRecord(phase=Phase.CLAIMED), expect=v),
        lambda v: backend.stage(target, new, RotationRecord(phase=Phase.STAGED), expect=v),
        lambda v: backend.discard_pending(target, RotationRecord(), expect=v),
        lambda v: backend.stage(target, new, RotationRecord(phase=Phase.STAGED), expect=v),
        lambda v: backend.promote(target, RotationRecord(phase=Phase.GRACE), expect=v),
        lambda v: put(backend, target, new),
    ]

    for write in writes:
        version = write(version)
        doc = load(target)
        assert list(doc)[:3] == ["endpoint", "api_key", "options"]
        assert doc["endpoint"] == app_fields["endpoint"] and doc["options"] == app_fields["options"]
    assert doc["api_key"] == new.reveal()


def test_a_configured_field_is_what_applications_read(backend):
    target = backend.target({"path": "token.json", "field": "token"})
    backend.deploy(target, secret("t"), None, ref(secret("t")))

    assert load(target)["token"] == secret("t").reveal()
    assert "api_key" not in load(target)
    assert backend.read(target).current == secret("t")


def test_an_empty_field_reads_as_no_key(backend, target):
    write_raw(target, '{"api_key": ""}')
    assert backend.read(target).current is None


# --- corrupt payloads --------------------------------------------------------------------------

@pytest.mark.parametrize(("content", "expected"), [
    (f'api_key = "{LEAKY}"\n', r"not valid JSON: .* line 1, column \d+"),
    (f'{{"api_key": "{LEAKY}"', r"not valid JSON: .* line 1, column \d+"),
    (f'["{LEAKY}"]', "top level is a JSON array"),
    (f'{{"api_key": ["{LEAKY}"]}}', "field 'api_key' is a JSON array, expected a string"),
    (f'{{"api_key": "x", "rotator": {{"pending": {{"v": "{LEAKY}"}}}}}}', "'rotator.pending' is a JSON object"),
    (f'{{"api_key": "{LEAKY}", "rotator": {{"format": 2}}}}', "payload format 2 is newer .* upgrade rotator"),
    (b'{"api_key": "\xff\xfe"}', "not UTF-8"),
])
def test_a_payload_rotator_cannot_parse_is_refused_and_never_overwritten(backend, target, content, expected):
    write_raw(target, content)
    before = target.path.read_bytes()

    with pytest.raises(CorruptPayload, match=expected) as caught:
        backend.read(target)
    with pytest.raises(CorruptPayload):
        backend.deploy(target, secret("x"), None, ref(secret("x")))

    assert_names_path_without_content(caught.value, target)
    assert target.path.read_bytes() == before


@pytest.mark.parametrize(("record", "expected"), [
    ({"format": 3}, "record format 3 is newer"),
    ({"phase": LEAKY}, "record is unreadable"),
])
def test_an_unreadable_record_is_refused_by_reads_and_replaced_by_the_next_record_write(
        backend, target, record, expected):
    write_raw(target, json.dumps({"api_key": LEAKY, "rotator": {"record": record}}))

    with pytest.raises(CorruptPayload, match=expected) as caught:
        backend.read(target)

    assert_names_path_without_content(caught.value, target)
    version = hashlib.sha256(target.path.read_bytes()).hexdigest()
    backend.write_record(target, RotationRecord(phase=Phase.IDLE), expect=version)
    assert backend.read(target).record == RotationRecord(phase=Phase.IDLE)


def assert_names_path_without_content(error: Exception, target) -> None:
    message = str(error)
    assert str(target.path) in message
    assert LEAKY not in message and "DONOTECHO" not in message
    assert error.__cause__ is None and error.__suppress_context__


# --- values made of several parts ----------------------------------------------------------------

PARTS = {"access_key_id": "aws_access_key_id", "secret_access_key": "aws_secret_access_key"}


def access_key(tag: str) -> Secret:
    return Secret.of_parts({"access_key_id": f"AKIA{tag.upper():0>16}",
                            "secret_access_key": f"wJalrXUtnFEMI/K7MDENG/{tag}/DONOTECHO"})


@pytest.fixture
def parts_target(backend):
    return backend.target({"path": "app/aws.json", "fields": PARTS})


def test_parts_on_disk_shape_is_the_documented_one(backend, parts_target):
    """docs/backends/file.md, "Values with several parts": one field per part, new fields first in
    the issuer's order, pending and previous as objects of parts under ``rotator``."""
    write_raw(parts_target, json.dumps({"region": "eu-west-1"}))
    old, new, pending = access_key("old"), access_key("new"), access_key("next")
    version = backend.read(parts_target).version
    version = backend.stage(parts_target, old, RotationRecord(phase=Phase.STAGED), expect=version)
    version = backend.promote(parts_target, RotationRecord(current=ref(old)), expect=version)
    version = backend.stage(parts_target, new, RotationRecord(phase=Phase.STAGED), expect=version)
    version = backend.promote(parts_target, RotationRecord(current=ref(new)), expect=version)
    backend.stage(parts_target, pending, RotationRecord(phase=Phase.STAGED), expect=version)

    doc = load(parts_target)

    assert list(doc) == ["aws_access_key_id", "aws_secret_access_key", "region", "rotator"]
    assert doc["aws_access_key_id"] == new.part("access_key_id")
    assert doc["aws_secret_access_key"] == new.part("secret_access_key")
    assert doc["rotator"]["previous"] == dict(old.parts)
    assert doc["rotator"]["pending"] == dict(pending.parts)
    assert doc["rotator"]["meta"]["last4"] == new.part("access_key_id")[-4:]
    assert doc["rotator"]["meta"]["fingerprint"] == new.fingerprint
    assert "DONOTECHO" not in json.dumps([doc["rotator"]["meta"], doc["rotator"]["record"]])


def test_parts_renamed_field_is_what_applications_read(backend):
    target = backend.target({"path": "aws.json",
                             "fields": {**PARTS, "secret_access_key": "AWS_SECRET_ACCESS_KEY"}})
    value = access_key("renamed")
    backend.deploy(target, value, None, ref(value))

    assert load(target)["AWS_SECRET_ACCESS_KEY"] == value.part("secret_access_key")
    assert "aws_secret_access_key" not in load(target) and "api_key" not in load(target)
    assert backend.read(target).current == value


@pytest.mark.parametrize(("section", "expected"), [
    ({"pending": "AKIA0000000000PLAIN"}, "'rotator.pending' is a JSON string, expected an object of parts"),
    ({"previous": {"access_key_id": "AKIA0000000000000001"}},
     "'rotator.previous' does not hold the parts 'access_key_id', 'secret_access_key'"),
    ({"pending": {"access_key_id": "AKIA0000000000000001", "secret_access_key": 7}},
     "'rotator.pending' is a JSON object, expected a string or an object of strings"),
    ({"previous": {"access_key_id": "AKIA0000000000000001", "secret_access_key": "s", "session": "t"}},
     "'rotator.previous' does not hold the parts"),
])
def test_parts_slot_that_does_not_hold_the_targets_parts_is_corrupt(backend, parts_target, section, expected):
    value = access_key("current")
    write_raw(parts_target, json.dumps({"aws_access_key_id": value.part("access_key_id"),
                                        "aws_secret_access_key": value.part("secret_access_key"),
                                        "rotator": section}))

    with pytest.raises(CorruptPayload, match=expected) as caught:
        backend.read(parts_target)

    assert "DONOTECHO" not in str(caught.value) and "AKIA0000" not in str(caught.value)


def test_parts_slot_on_a_plain_target_is_corrupt(backend, target):
    write_raw(target, json.dumps({"api_key": "x", "rotator": {"previous": dict(access_key("p").parts)}}))

    with pytest.raises(CorruptPayload, match="'rotator.previous' is a JSON object, expected a string"):
        backend.read(target)


# --- compare-and-swap and atomicity ------------------------------------------------------------

def test_a_hand_edit_between_read_and_write_is_a_conflict(backend, target):
    put(backend, target, secret("a"))
    seen = backend.read(target)
    doc = load(target)
    doc["note"] = "edited by hand"
    write_raw(target, json.dumps(doc))

    with pytest.raises(Conflict):
        backend.write_record(target, RotationRecord(phase=Phase.CLAIMED), expect=seen.version)

    assert load(target)["note"] == "edited by hand"


def test_a_failure_before_the_rename_leaves_the_old_file_and_no_temp_file(backend, target, monkeypatch):
    put(backend, target, secret("a"))
    before, listing = target.path.read_bytes(), sorted(os.listdir(target.path.parent))

    def fail(src, dst):
        raise OSError(errno.EIO, "Input/output error", str(src))
    monkeypatch.setattr(os, "replace", fail)

    with pytest.raises(BackendError, match="Input/output error") as caught:
        backend.stage(target, secret("b"), RotationRecord(), expect=backend.read(target).version)

    assert caught.value.transient
    assert target.path.read_bytes() == before
    assert sorted(os.listdir(target.path.parent)) == listing


def test_a_temp_file_left_by_a_crash_is_removed_by_the_next_write(backend, target):
    put(backend, target, secret("a"))
    leftover = target.path.with_name(f".{target.path.name}.rotator.tmp")
    leftover.write_text("half a payload")

    backend.deploy(target, secret("b"), None, ref(secret("b")))

    assert not leftover.exists()


def test_files_are_private_and_the_temp_file_is_never_readable_by_others(make, target, monkeypatch):
    backend = make(mode="0640")
    real_replace, temp_modes = os.replace, []

    def spy(src, dst):
        temp_modes.append(mode_of(Path(src)))
        real_replace(src, dst)
    monkeypatch.setattr(os, "replace", spy)
    old_umask = os.umask(0o077)
    try:
        backend.deploy(target, secret("a"), None, ref(secret("a")))
    finally:
        os.umask(old_umask)

    assert temp_modes == [0o640]
    assert mode_of(target.path) == 0o640
    assert mode_of(target.path.with_name(".quiva.json.lock")) == 0o600
    assert mode_of(target.path.parent) == 0o700


def test_default_mode_is_0600(backend, target):
    put(backend, target, secret("a"))
    assert mode_of(target.path) == 0o600
    assert mode_of(target.path.with_name(".quiva.json.lock")) == 0o600


def test_writes_are_fsynced_file_then_directory(backend, target, monkeypatch):
    real_fsync, synced = os.fsync, []

    def spy(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)
    monkeypatch.setattr(os, "fsync", spy)

    backend.deploy(target, secret("a"), None, ref(secret("a")))

    assert synced == [False, True]


def test_nothing_is_created_when_create_if_missing_is_false(make, tmp_path):
    backend = make(create_if_missing=False)
    target = backend.target({"path": "absent/quiva.json"})

    with pytest.raises(SecretMissing):
        backend.deploy(target, secret("a"), None, ref(secret("a")))
    with pytest.raises(SecretMissing):
        backend.stage(target, secret("a"), RotationRecord(), expect=None)
    assert not (tmp_path / "absent").exists()

    (tmp_path / "absent").mkdir()
    with pytest.raises(SecretMissing):
        backend.deploy(target, secret("a"), None, ref(secret("a")))
    assert os.listdir(tmp_path / "absent") == [".quiva.json.lock"]


def test_a_missing_directory_is_made_once_by_concurrent_first_writes(backend):
    targets = [backend.target({"path": f"new/deeper/s{i}.json"}) for i in range(8)]
    start = threading.Barrier(len(targets))

    def first_write(target):
        start.wait()
        backend.deploy(target, secret("a"), None, ref(secret("a")))

    with ThreadPoolExecutor(len(targets)) as pool:
        list(pool.map(first_write, targets))       # re-raises any writer's failure

    assert all(backend.read(t).current.reveal() == secret("a").reveal() for t in targets)


def test_a_directory_made_by_another_writer_between_the_attempts_is_used(backend, target, monkeypatch):
    real_lock, attempts = file_store._lock, []

    def lock_after_a_rival(path):
        attempts.append(path)
        if len(attempts) == 1:               # missing at the first attempt; a rival makes it now
            path.parent.mkdir(parents=True)
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))
        return real_lock(path)
    monkeypatch.setattr(file_store, "_lock", lock_after_a_rival)

    backend.deploy(target, secret("a"), None, ref(secret("a")))

    assert len(attempts) == 2
    assert backend.read(target).current.reveal() == secret("a").reveal()


def test_delete_removes_the_file_and_its_lock_file(backend, target):
    put(backend, target, secret("a"))
    backend.delete(target)
    backend.delete(target)

    assert os.listdir(target.path.parent) == []
    assert not backend.read(target).exists
    backend.close()
    backend.close()


def test_two_processes_racing_a_cas_write_have_exactly_one_winner(backend, target, tmp_path):
    version = backend.stage(target, secret("base"), RotationRecord(), expect=None)
    racers = [start_racer(tmp_path, target, version, f"p{i}") for i in range(2)]
    for racer in racers:
        assert racer.stdout.readline().strip() == "ready"
    for racer in racers:
        racer.stdin.write("go\n")
        racer.stdin.flush()
    outcomes = [racer.communicate(timeout=30)[0].strip() for racer in racers]

    assert sorted(outcomes) == ["lost", "won"], outcomes
    winner = f"p{outcomes.index('won')}"
    snap = backend.read(target)
    assert snap.record.owner == winner
    assert snap.pending.reveal() == f"sk-race-{winner}-0123456789"


RACER = """
import sys
from rotator_providers.file import FileBackend
from rotator.errors import Conflict
from rotator.models import RotationRecord, Secret
from rotator.testing import provider_context

directory, path, expect, owner = sys.argv[1:]
backend = FileBackend("race", {"directory": directory}, provider_context())
target = backend.target({"path": path})
print("ready", flush=True)
sys.stdin.readline()
try:
    backend.stage(target, Secret(f"sk-race-{owner}-0123456789"), RotationRecord(owner=owner), expect=expect)
except Conflict:
    print("lost")
else:
    print("won")
"""


def start_racer(directory: Path, target, expect: str, owner: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, "-c", RACER, str(directory), str(target.path), expect, owner],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)


# --- errors at the edge ------------------------------------------------------------------------

def deny(monkeypatch, denied: Path) -> None:
    """Make the kernel's answer for ``denied`` EACCES, as it is for a non-root user without access."""
    real_open = os.open

    def guarded(path, flags, *args, **kwargs):
        if Path(os.fsdecode(path)) == denied:
            raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))
        return real_open(path, flags, *args, **kwargs)
    monkeypatch.setattr(os, "open", guarded)


def test_a_refused_read_names_the_path_and_the_access_needed(backend, target, monkeypatch, calls):
    put(backend, target, secret("a"))
    deny(monkeypatch, target.path)

    with pytest.raises(BackendPermissionError, match=f"permission denied on {target.path}.*needs read permission"):
        backend.read(target)
    assert calls[-1] == ("files", "read", "error")


def test_a_refused_write_names_the_path_and_the_access_needed(backend, target, monkeypatch):
    target.path.parent.mkdir()
    deny(monkeypatch, target.lock_path)

    with pytest.raises(BackendPermissionError, match=f"needs read and write permission on the directory {target.path.parent}"):
        backend.deploy(target, secret("a"), None, ref(secret("a")))


def test_an_unreadable_file_is_a_permission_error(backend, target):
    put(backend, target, secret("a"))
    target.path.chmod(0)
    if os.access(target.path, os.R_OK):
        pytest.skip("file modes do not bind this user (root with CAP_DAC_OVERRIDE); see the os.open variants")

    with pytest.raises(BackendPermissionError, match="needs read permission"):
        backend.read(target)


def test_other_os_errors_name_the_path_and_the_reason(backend, target, calls):
    target.path.mkdir(parents=True)

    with pytest.raises(BackendError, match=f"read failed on {target.path}: Is a directory") as caught:
        backend.read(target)

    assert not isinstance(caught.value, BackendPermissionError)
    assert calls == [("files", "read", "error")]


def test_a_full_disk_is_transient(backend, target, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", full)

    with pytest.raises(BackendError, match="No space left on device") as caught:
        backend.deploy(target, secret("a"), None, ref(secret("a")))

    assert caught.value.transient
    assert os.listdir(target.path.parent) == [".quiva.json.lock"]


def test_every_call_is_reported(backend, target, calls):
    version = backend.stage(target, secret("a"), RotationRecord(), expect=None)
    backend.read(target)
    with pytest.raises(Conflict):
        backend.stage(target, secret("b"), RotationRecord(), expect=None)
    backend.promote(target, RotationRecord(), expect=version)

    assert calls == [("files", "stage", "ok"), ("files", "read", "ok"),
                     ("files", "stage", "error"), ("files", "promote", "ok")]
