"""The audit trail survives log rotation (issue 16, Operations).

logrotate either moves the file away and lets a new one be created (``create``, the default) or
copies it and truncates it in place (``copytruncate``). The sink stats its path before every
record and reopens it when the path names another file (``WatchedFileHandler``'s pattern), so no
signal and no daemon change is needed. Checked here on the sink itself (move, delete, truncate, a
path that cannot be reopened, threads writing while the file is rotated over and over) and under a
running ``rotator daemon`` whose file is moved away twice while a rotation is in progress: the
files together hold every record exactly once, in order.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from rotator import audit
from rotator.audit import AuditSink
from rotator.engine import Event
from rotator.models import Phase
from tests.integration.test_daemon import real_time, reader  # noqa: F401 - real_time is a fixture
from tests.world import wait_for

T0 = datetime(2027, 3, 1, 9, 0, tzinfo=timezone.utc)


def event(n: int, secret: str = "web") -> Event:
    return Event(at=T0 + timedelta(seconds=n), secret=secret, action="issued", detail=f"record {n}",
                 rotation_id="7f3c2a1b00000000", runner="host:1:ab01")


def details(path: Path) -> list[str]:
    return [json.loads(line)["detail"] for line in path.read_text().splitlines()]


def logrotate_create(path: Path, rotated: Path, *, create: bool = True) -> None:
    """What logrotate's ``create`` mode does: rename, then make an empty file in its place."""
    os.rename(path, rotated)
    if create:
        path.touch(mode=0o600)


# --- the sink -------------------------------------------------------------------------------------

def test_a_moved_file_is_followed_to_the_new_one(tmp_path):
    path = tmp_path / "audit.jsonl"
    sink = AuditSink(path)
    try:
        for n in range(3):
            sink(event(n))
        logrotate_create(path, tmp_path / "audit.jsonl.1")
        for n in range(3, 6):
            sink(event(n))
    finally:
        sink.close()
    assert details(tmp_path / "audit.jsonl.1") == [f"record {n}" for n in range(3)]
    assert details(path) == [f"record {n}" for n in range(3, 6)]
    assert sink.reopened == 1


def test_a_moved_file_with_no_new_one_is_recreated_privately(tmp_path):
    """logrotate with ``nocreate``, or a person's ``mv``/``rm``: the sink creates the file (0600)."""
    path = tmp_path / "audit.jsonl"
    sink = AuditSink(path)
    try:
        sink(event(0))
        logrotate_create(path, tmp_path / "old.jsonl", create=False)
        sink(event(1))
        path.unlink()                              # deleted outright: the next record starts a new file
        sink(event(2))
    finally:
        sink.close()
    assert details(tmp_path / "old.jsonl") == ["record 0"]
    assert details(path) == ["record 2"]          # record 1 went to the file that was then deleted
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert sink.reopened == 2


def test_copytruncate_continues_at_the_new_end_without_a_hole(tmp_path):
    """``copytruncate``: the file keeps its inode; O_APPEND puts the next record at offset 0 of
    the truncated file (a writer that kept its own offset would leave a run of NUL bytes)."""
    path = tmp_path / "audit.jsonl"
    sink = AuditSink(path)
    try:
        for n in range(3):
            sink(event(n))
        shutil.copyfile(path, tmp_path / "audit.jsonl.1")            # logrotate: copy ...
        with open(path, "r+b") as f:                                 # ... then truncate in place
            f.truncate(0)
        for n in range(3, 5):
            sink(event(n))
    finally:
        sink.close()
    data = path.read_bytes()
    assert b"\0" not in data and data.startswith(b'{"schema":"rotator.audit/1"')
    assert details(path) == ["record 3", "record 4"]
    assert details(tmp_path / "audit.jsonl.1") == ["record 0", "record 1", "record 2"]
    assert sink.reopened == 0, "same inode: nothing to reopen"


def test_a_path_that_cannot_be_reopened_keeps_the_records_in_the_open_file(tmp_path, monkeypatch, caplog):
    path = tmp_path / "audit.jsonl"
    rotated = tmp_path / "audit.jsonl.1"
    sink = AuditSink(path)
    real_open = os.open

    def refusing(file, *args, **kwargs):
        if Path(file) == path:
            raise PermissionError(13, "Permission denied")
        return real_open(file, *args, **kwargs)

    try:
        sink(event(0))
        logrotate_create(path, rotated, create=False)
        monkeypatch.setattr(audit.os, "open", refusing)
        sink(event(1))                               # cannot open the path: kept in the open (moved) file
        monkeypatch.setattr(audit.os, "open", real_open)
        sink(event(2))                               # the next record follows the rotation
    finally:
        sink.close()
    assert details(rotated) == ["record 0", "record 1"]
    assert details(path) == ["record 2"]
    assert "cannot be reopened" in caplog.text


def test_threads_writing_while_the_file_is_rotated_over_and_over_lose_nothing(tmp_path):
    path = tmp_path / "audit.jsonl"
    sink = AuditSink(path, fsync=False)
    rotated: list[Path] = []
    writers_done = threading.Event()

    def write(n: int) -> None:
        for i in range(300):
            sink(event(i, secret=f"s{n}"))

    def rotate() -> None:
        while not writers_done.is_set():
            target = tmp_path / f"audit.jsonl.{len(rotated) + 1}"
            if path.exists():
                logrotate_create(path, target, create=len(rotated) % 2 == 0)
                rotated.append(target)
            writers_done.wait(0.002)

    writers = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    rotator_thread = threading.Thread(target=rotate)
    rotator_thread.start()
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    writers_done.set()
    rotator_thread.join()
    sink.close()

    files = rotated + [path]
    records = [json.loads(line) for f in files if f.exists() for line in f.read_text().splitlines()]
    assert len(rotated) >= 3, "the file was rotated several times while being written"
    assert len(records) == 4 * 300
    for n in range(4):                                  # each writer's records once each, in order
        assert [r["detail"] for r in records if r["secret"] == f"s{n}"] == [f"record {i}" for i in range(300)]


# --- under a running daemon -----------------------------------------------------------------------

def audit_lines(lines: list[str]) -> list[str]:
    return [line.rstrip("\n") for line in lines if line.startswith('{"schema":"rotator.audit/')]


def test_moving_the_trail_away_under_a_running_daemon_mid_rotation_loses_no_record(world, emulator, real_time,
                                                                                     tmp_path):
    """logrotate ``create`` twice during one rotation of a running daemon. The daemon also prints
    each record on stdout (``[audit] stdout``), after writing it to the file: the reference."""
    world.defaults.update(check_interval="1h")
    world.add_secret("web")
    world.add_secret("batch")
    world.seed("web", age=timedelta(days=80))
    world.seed("batch", age=timedelta(days=80))
    trail = tmp_path / "log" / "audit.jsonl"
    first, second = tmp_path / "log" / "audit.jsonl.2", tmp_path / "log" / "audit.jsonl.1"
    emulator.faults.set_latency(0.3)                 # every issuer call takes 0.3 s: a rotation takes seconds
    try:
        daemon = real_time(f'\n[audit]\npath = "{trail}"\nstdout = true\nfsync = true\n')

        def written() -> list[dict]:
            return [json.loads(line) for line in trail.read_text().splitlines()] if trail.exists() else []

        # a rotation in progress: claimed, the issue request in flight
        wait_for(lambda: any(r["action"] == "claimed" for r in written()), what="a rotation to start")
        logrotate_create(trail, first)
        wait_for(lambda: any(r["action"] in ("deployed", "verified") for r in written()), timeout=30,
                 what="the rotation to go on in the new file")
        logrotate_create(trail, second, create=False)     # and once more, leaving the daemon to create it
        web, batch = reader(world, "web"), reader(world, "batch")
        wait_for(lambda: all((r := record()) is not None and r.phase is Phase.GRACE for record in (web, batch)),
                 timeout=60, what="both rotations to finish")
        code, _ = daemon.stop()
    finally:
        emulator.faults.clear()
    assert code == 0, daemon.log[-3000:]
    daemon.close()

    reference = audit_lines(daemon.stdout)
    in_files = [line for f in (first, second, trail) for line in f.read_text().splitlines()]
    assert in_files == reference, "every record exactly once, in order, across the rotated files"
    assert len(reference) == len(set(reference)) and len(reference) >= 20
    records = [json.loads(line) for line in reference]
    for name in ("web", "batch"):
        assert "promoted" in [r["action"] for r in records if r["secret"] == name]
    # the first move landed mid-rotation: one rotation's records span the old and the new file
    before = {json.loads(line)["rotation_id"] for line in first.read_text().splitlines()} - {None}
    after = {json.loads(line)["rotation_id"] for line in (second.read_text() + trail.read_text()).splitlines()}
    assert before & after, "a rotation whose records are in both files"
    assert all(f.stat().st_size > 0 for f in (first, second, trail))
    assert daemon.log.count("was rotated: writing to the new file") == 2
