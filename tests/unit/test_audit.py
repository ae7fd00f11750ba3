"""The audit trail: the record format, append-only durability across writers, redaction, and the
same records from the one-shot ``rotator rotate`` as from the daemon's reconcile."""

from __future__ import annotations

import io
import json
import os
import stat
import threading
from datetime import datetime, timedelta, timezone

import pytest

from rotator import config
from rotator.audit import AuditSink, line_of, open_sink, record_of
from rotator.cli import main
from rotator.daemon import Reconciler
from rotator.engine import Event
from rotator.errors import ConfigError
from rotator.models import Secret
from rotator.runtime import Runtime
from tests.world import to_toml

T0 = datetime(2027, 3, 1, 9, 0, 5, tzinfo=timezone.utc)
FIELDS = ["schema", "time", "runner", "secret", "action", "rotation_id", "key_id", "key_last4", "fingerprint",
          "result", "error", "detail"]


def event(**changes) -> Event:
    base = dict(at=T0, secret="prod-web", action="issued", detail="…c0de named 'prod-web [r-7f3c2a1b]'",
                rotation_id="7f3c2a1b00000000", key="…c0de (id 42)", fingerprint="0123456789abcdef",
                key_id="42", last4="c0de", runner="host:12:ab01")
    return Event(**{**base, **changes})


def test_one_record_per_action_with_everything_but_a_value():
    rec = record_of(event())
    assert list(rec) == FIELDS
    assert rec == {
        "schema": "rotator.audit/1", "time": "2027-03-01T09:00:05Z", "runner": "host:12:ab01",
        "secret": "prod-web", "action": "issued", "rotation_id": "7f3c2a1b00000000", "key_id": "42",
        "key_last4": "c0de", "fingerprint": "0123456789abcdef", "result": "ok", "error": None,
        "detail": "…c0de named 'prod-web [r-7f3c2a1b]'",
    }
    failed = record_of(event(action="failed", result="error", detail="quiva: 503", key=None, fingerprint=None,
                             key_id=None, last4=None))
    assert failed["error"] == "quiva: 503" and failed["key_id"] is None and failed["key_last4"] is None
    no_id = record_of(event(key="…beef", key_id=None, last4="beef"))
    assert no_id["key_id"] is None and no_id["key_last4"] == "beef"


def test_a_value_in_a_detail_is_masked():
    value = Secret("ms-00112233445566778899aabbccddeeff")
    line = line_of(event(detail=f"provider echoed {value.reveal()}"))
    assert value.reveal() not in line and "[REDACTED]" in line
    assert line.endswith("\n") and line.count("\n") == 1


def test_appends_to_an_existing_trail_privately_and_durably(tmp_path):
    path = tmp_path / "audit" / "trail.jsonl"
    path.parent.mkdir()
    path.write_text('{"earlier": "record"}\n')
    sink = AuditSink(path)
    sink(event(action="claimed"))
    sink(event(action="issued"))
    sink.close()
    lines = path.read_text().splitlines()
    assert lines[0] == '{"earlier": "record"}'
    assert [json.loads(line)["action"] for line in lines[1:]] == ["claimed", "issued"]
    fresh = tmp_path / "new" / "trail.jsonl"
    AuditSink(fresh).close()
    assert stat.S_IMODE(os.stat(fresh).st_mode) == 0o600


def test_concurrent_writers_never_interleave_records(tmp_path):
    """Two sinks (as two processes would have) and many threads share one file via O_APPEND."""
    path = tmp_path / "trail.jsonl"
    sinks = [AuditSink(path, fsync=False), AuditSink(path, fsync=False)]
    long_detail = "x" * 3000

    def write(n):
        for i in range(100):
            sinks[n % 2](event(secret=f"s{n}", detail=f"{i} {long_detail}"))

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for sink in sinks:
        sink.close()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 800
    assert all(r["detail"].endswith(long_detail) for r in records)


def test_workers_writing_together_share_fsyncs_and_each_record_is_synced_before_write_returns(tmp_path, monkeypatch):
    """A group commit: every write returns only after an fsync that began once its record was in the
    file has completed; writers arriving together share one."""
    import rotator.audit as audit_module

    path = tmp_path / "trail.jsonl"
    sink = AuditSink(path)
    done: list[int] = []                     # for each completed fsync: records in the file when it began
    lock = threading.Lock()
    real_fsync = os.fsync

    def slow_fsync(fd):
        before = len(path.read_bytes().splitlines())
        threading.Event().wait(0.01)
        real_fsync(fd)
        with lock:
            done.append(before)

    monkeypatch.setattr(audit_module.os, "fsync", slow_fsync)
    unsynced: list[str] = []

    def write(n):
        for i in range(10):
            tag = f"s{n}-{i}"
            sink(event(secret=f"s{n}", detail=tag))
            place = next(k for k, line in enumerate(path.read_text().splitlines(), 1) if f'"{tag}"' in line)
            with lock:
                if not done or max(done) < place:
                    unsynced.append(tag)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sink.close()
    assert len(path.read_text().splitlines()) == 80 and not unsynced
    assert 1 <= sink.fsyncs == len(done) < 80


def test_stdout_and_off():
    stream = io.StringIO()
    sink = AuditSink(stream=stream)
    sink(event())
    assert json.loads(stream.getvalue())["action"] == "issued"
    off = config.load(data={}).audit
    assert open_sink(off) is None


def test_an_unwritable_trail_is_a_configuration_error(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("")
    settings = config.load(data={"audit": {"path": str(blocked / "trail.jsonl")}}).audit
    with pytest.raises(ConfigError, match="audit.path: cannot open"):
        open_sink(settings)


def test_rotate_and_the_daemon_write_the_same_records(world, emulator, clock, tmp_path, monkeypatch, capsys):
    clock.set(datetime.now(timezone.utc))                     # the CLI runs on the real clock
    world.add_secret("web")
    world.add_secret("batch")
    values = [world.seed("web", age=timedelta(days=85)), world.seed("batch", age=timedelta(days=85))]
    one_shot, daemon_trail = tmp_path / "rotate.jsonl", tmp_path / "daemon.jsonl"
    config_file = tmp_path / "rotator.toml"
    config_file.write_text(to_toml(world.config_data()) + f'\n[audit]\npath = "{one_shot}"\n')
    monkeypatch.setenv("ROTATOR_CONFIG", str(config_file))

    assert main(["--log-level", "error", "rotate", "web"]) == 0             # the one-shot, [audit] path
    capsys.readouterr()

    runtime = Runtime(config.load(config_file), clock=clock)
    sink = AuditSink(daemon_trail)
    try:
        Reconciler(runtime, audit=sink).engine.run(["batch"])           # what a daemon tick runs
    finally:
        sink.close()
        runtime.close()

    rotate = [json.loads(line) for line in one_shot.read_text().splitlines()]
    daemon = [json.loads(line) for line in daemon_trail.read_text().splitlines()]
    assert [(r["action"], r["result"]) for r in rotate] == [
        ("adopt", "intent"), ("adopted", "ok"), ("claim", "intent"), ("claimed", "ok"),
        ("issue", "intent"), ("issued", "ok"), ("stage", "intent"), ("staged", "ok"),
        ("verified", "ok"),                                  # verified live before any secondary sees it
        ("deploy", "intent"), ("deployed", "ok"), ("promote", "intent"), ("promoted", "ok"),
    ]
    assert [(r["action"], r["result"]) for r in daemon] == [(r["action"], r["result"]) for r in rotate]
    assert all(list(r) == FIELDS for r in rotate + daemon)
    assert {r["secret"] for r in rotate} == {"web"} and {r["secret"] for r in daemon} == {"batch"}
    issued = next(r for r in rotate if r["action"] == "issued")
    assert issued["key_last4"] and issued["fingerprint"] and issued["rotation_id"]
    text = one_shot.read_text() + daemon_trail.read_text()
    assert not [v[-4:] for v in emulator.issued_values() + values if v in text]
