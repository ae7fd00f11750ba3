"""ReadAhead: the first reads of a run's primaries, batched on backends that can read many."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from types import SimpleNamespace

from rotator.models import Snapshot
from rotator.readahead import ReadAhead
from rotator.runtime import Bound
from rotator.testing import FakeClock


@dataclass(frozen=True)
class T:
    label: str
    field: str = "api_key"


class Store:
    """Answers with a snapshot whose version names the target; counts every target it read."""

    def __init__(self, name: str, batch: int | None = None, *, leave_out: set[str] = frozenset(),
                 fail: bool = False, delay: float = 0.0) -> None:
        self.name = name
        if batch is not None:
            self.read_batch = batch
        self.leave_out, self.fail, self.delay = leave_out, fail, delay
        self.single: Counter[str] = Counter()
        self.batched: Counter[str] = Counter()
        self.batches: list[int] = []
        self._lock = threading.Lock()

    def read(self, target: T) -> Snapshot:
        with self._lock:
            self.single[target.label] += 1
        return Snapshot(version=f"v-{target.label}")

    def read_many(self, targets):
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("batch refused")
        with self._lock:
            self.batches.append(len(targets))
            self.batched.update(t.label for t in targets)
        return {t: Snapshot(version=f"v-{t.label}") for t in targets if t.label not in self.leave_out}


class Plain(Store):
    read_many = None     # type: ignore[assignment]  # no batch reads


def fleet(store: Store, n: int, prefix: str = "s", secondary: Store | None = None) -> list[SimpleNamespace]:
    """``n`` secrets with their primary on ``store`` (and a secondary, ``2nd-<name>``, on ``secondary``)."""
    made = []
    for i in range(n):
        primary = Bound(store, T(f"{prefix}{i}"))
        others = (Bound(secondary, T(f"2nd-{prefix}{i}")),) if secondary is not None else ()
        made.append(SimpleNamespace(name=f"{prefix}{i}", primary=primary, secondaries=others,
                                    targets=(primary, *others)))
    return made


def test_reads_ahead_in_batches_in_run_order():
    store, plain = Store("aws", batch=20), Plain("vault")
    secrets = fleet(store, 45) + fleet(plain, 5, "p")
    ahead = ReadAhead(secrets, FakeClock())
    for secret in secrets:
        assert ahead.read(secret).version == f"v-{secret.name}"
    assert store.batches == [20, 20, 5] and not store.single
    assert plain.single == Counter({f"p{i}": 1 for i in range(5)})


def test_a_target_the_batch_left_out_is_read_alone():
    store = Store("aws", batch=10, leave_out={"s3"})
    secrets = fleet(store, 10)
    ahead = ReadAhead(secrets, FakeClock())
    assert [ahead.read(s).version for s in secrets] == [f"v-s{i}" for i in range(10)]
    assert store.single == Counter({"s3": 1}) and store.batches == [10]


def test_a_failed_batch_falls_back_to_single_reads():
    store = Store("aws", batch=10, fail=True)
    secrets = fleet(store, 4)
    ahead = ReadAhead(secrets, FakeClock())
    assert [ahead.read(s).version for s in secrets] == [f"v-s{i}" for i in range(4)]
    assert store.single == Counter({f"s{i}": 1 for i in range(4)})


def test_a_snapshot_read_ahead_too_long_ago_is_read_again():
    clock = FakeClock()
    store = Store("aws", batch=10)
    secrets = fleet(store, 3)
    ahead = ReadAhead(secrets, clock, max_age=timedelta(seconds=30))
    ahead.read(secrets[0])
    ahead.read(secrets[1])
    clock.advance(timedelta(seconds=31))
    ahead.read(secrets[2])
    assert store.batches == [3] and store.single == Counter({"s2": 1})


def test_many_workers_read_every_primary_exactly_once():
    store = Store("aws", batch=20, delay=0.01)
    secrets = fleet(store, 200)
    ahead = ReadAhead(secrets, FakeClock())
    results: dict[str, str] = {}
    queue = list(reversed(secrets))
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                if not queue:
                    return
                secret = queue.pop()
            results[secret.name] = ahead.read(secret).version

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {s.name: f"v-{s.name}" for s in secrets}
    reads = store.single + store.batched
    assert set(reads) == {s.name for s in secrets} and max(reads.values()) == 1, "no primary read twice"
    assert len(store.batches) <= 200 // 20 + 8 and not store.single


# --- secondaries: read ahead only on demand, apart from the primaries -------------------------------

def test_secondaries_are_batched_on_demand_and_apart_from_primaries():
    """Reading every secret's primary reads no secondary; the first secondary read fetches the
    next ones of the same backend, and never a primary."""
    aws = Store("aws", batch=20)
    secrets = fleet(aws, 45, secondary=aws)
    ahead = ReadAhead(secrets, FakeClock())
    for secret in secrets:
        ahead.read(secret)
    assert store_reads(aws) == Counter({s.name: 1 for s in secrets})
    aws.batches.clear()
    for secret in secrets:
        bound = secret.secondaries[0]
        assert ahead.read_target(secret, bound).version == f"v-2nd-{secret.name}"
    assert aws.batches == [20, 20, 5] and not aws.single
    assert all(n == 1 for n in store_reads(aws).values())


def test_a_secondary_read_ahead_is_evidence_only_while_young():
    """A secondary's snapshot is kept for ``evidence_age`` (shorter than a primary's max_age)."""
    clock = FakeClock()
    aws, files = Store("aws", batch=10), Plain("files")
    secrets = fleet(files, 3, secondary=aws)
    ahead = ReadAhead(secrets, clock, max_age=timedelta(seconds=30), evidence_age=timedelta(seconds=5))
    ahead.read_target(secrets[0], secrets[0].secondaries[0])
    clock.advance(timedelta(seconds=4))
    ahead.read_target(secrets[1], secrets[1].secondaries[0])
    clock.advance(timedelta(seconds=2))
    ahead.read_target(secrets[2], secrets[2].secondaries[0])
    assert aws.batches == [3] and aws.single == Counter({"2nd-s2": 1})
    assert files.single == Counter()                     # primaries on a plain backend: not touched


def test_a_second_read_of_the_same_target_goes_to_the_backend():
    """The engine reads a target ahead at most once per run; any later read is a real one."""
    aws = Store("aws", batch=10)
    secrets = fleet(Plain("files"), 2, secondary=aws)
    ahead = ReadAhead(secrets, FakeClock())
    bound = secrets[0].secondaries[0]
    ahead.read_target(secrets[0], bound)
    ahead.read_target(secrets[0], bound)
    assert aws.batches == [2] and aws.single == Counter({"2nd-s0": 1})


class Gate(Store):
    """A batch-reading store whose batches wait until the test opens the gate."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()

    def read_many(self, targets):
        self.gate.wait(10)
        return super().read_many(targets)


class CountingEvent(threading.Event):
    """An Event that counts the threads that started waiting on it."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = 0

    def wait(self, timeout=None):
        self.waiting += 1
        return super().wait(timeout)


def test_readers_waiting_on_a_batch_share_its_read():
    """A run's re-read and the revoke's evidence may ask for a secondary while a batch is reading
    it: each takes the batch's snapshot (the entry it was started for too), none reads alone, and
    the entry's snapshot is still there for its own reader after them."""
    aws = Gate("aws", batch=10)
    secrets = fleet(Plain("files"), 3, secondary=aws)
    ahead = ReadAhead(secrets, FakeClock())
    bound = [s.secondaries[0] for s in secrets]
    got: dict[str, list[str]] = {"s0": [], "s1": []}

    def read(i: int) -> None:
        got[f"s{i}"].append(ahead.read_target(secrets[i], bound[i]).version)

    first = threading.Thread(target=read, args=(0,))      # starts the batch for s0, s1, s2
    first.start()
    for _ in range(1000):
        if ("s0", bound[0].label) in ahead._in_flight:
            break
        time.sleep(0.001)
    batch = ahead._in_flight[("s0", bound[0].label)]
    batch.done = CountingEvent()
    waiters = [threading.Thread(target=read, args=(i,)) for i in (0, 1, 1)]   # s0's, and s1 twice
    for thread in waiters:
        thread.start()
    for _ in range(1000):
        if batch.done.waiting == 3:
            break
        time.sleep(0.001)
    assert batch.done.waiting == 3
    aws.gate.set()
    for thread in (first, *waiters):
        thread.join(10)
    assert got == {"s0": ["v-2nd-s0"] * 2, "s1": ["v-2nd-s1"] * 2}
    assert ahead.read_target(secrets[2], bound[2]).version == "v-2nd-s2"
    assert aws.batches == [3] and aws.single == Counter()


def store_reads(store: Store) -> Counter:
    return store.single + store.batched


# --- the evidence's reads of primaries, lent to their runs' first reads ----------------------------

def test_a_primary_the_evidence_read_before_its_run_started_is_not_read_again():
    """The revoke's evidence reads every target once, often before most runs started: a primary
    it read is the first read of its run (any backend), unless that run had already read it."""
    clock = FakeClock()
    plain, aws = Plain("vault"), Store("aws", batch=20)
    secrets = fleet(plain, 3) + fleet(aws, 3, "a")
    ahead = ReadAhead(secrets, clock)
    ahead.read(secrets[0])                                   # this run started before the evidence
    for secret in secrets:                                   # the evidence, as rotator.evidence reads
        for bound in secret.targets:
            ahead.read_target(secret, bound)
    clock.advance(timedelta(seconds=5))
    for secret in secrets[1:]:
        assert ahead.read(secret).version == f"v-{secret.name}"
    assert plain.single == Counter({"s0": 2, "s1": 1, "s2": 1})     # s0: its own read, then the evidence's
    assert aws.batches == [3] and not aws.single


def test_a_lent_primary_older_than_max_age_is_read_again():
    clock = FakeClock()
    plain = Plain("vault")
    secrets = fleet(plain, 2)
    ahead = ReadAhead(secrets, clock, max_age=timedelta(seconds=30))
    ahead.read_target(secrets[1], secrets[1].primary)
    clock.advance(timedelta(seconds=31))
    ahead.read(secrets[1])
    assert plain.single == Counter({"s1": 2})


def test_a_batch_also_takes_unread_entries_before_the_asking_one():
    """Runs start out of order under concurrency: the first to ask reads its neighbours on both sides."""
    aws = Store("aws", batch=4)
    secrets = fleet(aws, 6)
    ahead = ReadAhead(secrets, FakeClock())
    ahead.read(secrets[4])                                   # s4 asks first: s4, s5, then s3, s2
    for secret in secrets[:4] + secrets[5:]:
        ahead.read(secret)
    assert aws.batches == [4, 2] and not aws.single


# --- the read a deploy starts from: from a batch, or not at all -------------------------------------

def test_read_batched_reads_only_in_company():
    """Before a deploy the engine takes the target from a batch; a read that would be alone is left
    to the deploy (which reads for itself: no request more than before)."""
    aws = Store("aws", batch=20)
    secrets = fleet(Plain("files"), 3, secondary=aws)
    ahead = ReadAhead(secrets, FakeClock())
    bound = [s.secondaries[0] for s in secrets]
    assert ahead.read_batched(secrets[0], bound[0]).version == "v-2nd-s0"     # s0, s1, s2 in one request
    assert ahead.read_batched(secrets[2], bound[2]).version == "v-2nd-s2"     # read ahead
    assert ahead.read_batched(secrets[2], bound[2]) is None                   # taken already: not again
    assert aws.batches == [3] and not aws.single
    alone = ReadAhead(secrets[:1], FakeClock())
    assert alone.read_batched(secrets[0], bound[0]) is None and aws.batches == [3] and not aws.single
    assert ahead.read_batched(secrets[0], secrets[0].primary) is None         # a plain backend: nothing
