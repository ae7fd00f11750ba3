"""Batched reads of a run's targets, for backends that can read many at once.

Every secret's run starts by reading its primary. On a backend with a batch read
(:class:`rotator.interfaces.BatchReads`, e.g. AWS ``BatchGetSecretValue``) the first of those reads
also fetches the primaries of the next secrets in run order on the same backend, up to the
backend's ``read_batch``; each of them then finds its snapshot waiting instead of making a request.

The same goes for the secondaries a run reads *before* writing them: the re-read that is I3's
evidence before the old key is revoked (the second run of a rotation). A read-back that follows
this run's own write never uses a snapshot read ahead (it would predate the write); it reads
alone. Secondaries are read ahead only on demand, so a run that reads none pays nothing; one that
reads some may fetch a few that are never used, at no extra request (a batch costs one request
whatever its size).

The revoke's evidence (:mod:`rotator.evidence`) reads every target of the issuer's secrets through
the same read-ahead, once per run, often before most secrets' runs have started. A primary it
reads for a secret whose run has not made its first read yet is *lent* to that first read, on every
backend (batch-reading or not): the run starts from the evidence's snapshot instead of reading the
primary a second time moments later.

Reading just in time (not the whole fleet up front) keeps every snapshot only as old as the time a
few secrets take to start. An old primary snapshot is never a risk anyway: each primary write is a
compare-and-swap on the version read, so a snapshot that changed since loses the write and the
engine reads again. Snapshots older than ``max_age`` by the engine's clock are not used; for a
secondary, whose read is evidence for a revoke rather than the base of a compare-and-swap, the
limit is the shorter ``evidence_age``.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta
from typing import Sequence

from rotator.interfaces import BatchReads, Clock
from rotator.models import Snapshot
from rotator.redact import redact
from rotator.runtime import Bound, ManagedSecret

log = logging.getLogger("rotator.engine")

MAX_AGE = timedelta(seconds=30)
EVIDENCE_AGE = timedelta(seconds=10)

Entry = tuple[str, str]          # (secret name, target label)


class ReadAhead:
    """The targets of one run on batch-reading backends, in run order, and the snapshots read
    ahead for them. Primaries and secondaries queue apart: every primary is read once per run,
    a secondary only when its secret needs it."""

    def __init__(self, secrets: Sequence[ManagedSecret], clock: Clock, max_age: timedelta = MAX_AGE,
                 evidence_age: timedelta = EVIDENCE_AGE) -> None:
        self._clock = clock
        self._primary_age = max_age
        self._lock = threading.Lock()
        queues: dict[tuple[str, bool], list[Entry]] = {}    # (backend, primary?) -> entries, run order
        self._slot: dict[Entry, tuple[list[Entry], int]] = {}   # entry -> its queue and place in it
        self._bound: dict[Entry, Bound] = {}
        self._max_age: dict[Entry, timedelta] = {}
        self._claimed: set[Entry] = set()                   # read or being read (never twice)
        self._ready: dict[Entry, tuple[Snapshot, datetime]] = {}
        self._in_flight: dict[Entry, _Batch] = {}          # entry -> the batch reading it now
        self.batches = 0
        self._names = {secret.name for secret in secrets}
        self._primaries = {(secret.name, secret.primary.label) for secret in secrets}
        self._started: set[Entry] = set()                   # primaries whose run made its first read
        for secret in secrets:
            for bound in secret.targets:
                backend = bound.backend
                if not (isinstance(backend, BatchReads) and getattr(backend, "read_batch", 0) > 1):
                    continue
                primary = bound is secret.primary
                entry = (secret.name, bound.label)
                queue = queues.setdefault((backend.name, primary), [])
                self._slot[entry] = (queue, len(queue))
                queue.append(entry)
                self._bound[entry] = bound
                self._max_age[entry] = max_age if primary else evidence_age

    def knows(self, secret: ManagedSecret) -> bool:
        """Is ``secret`` one of this read-ahead's (its targets read in its batches)?"""
        return any((secret.name, bound.label) in self._bound for bound in secret.targets) \
            or secret.name in self._names

    def batched(self, secret: ManagedSecret, bound: Bound) -> bool:
        """Is ``bound`` read in batches here (a batch-reading backend)?"""
        return (secret.name, bound.label) in self._bound

    def read(self, secret: ManagedSecret) -> Snapshot:
        """The primary's snapshot for the first step of ``secret``'s run: read ahead in a batch,
        or lent by the evidence's read of it, or read now."""
        entry = (secret.name, secret.primary.label)
        with self._lock:
            self._started.add(entry)
            lent = self._take_ready(entry) if entry not in self._bound else None
        if lent is not None:
            return lent
        return self.read_target(secret, secret.primary, first=True)

    def read_batched(self, secret: ManagedSecret, bound: Bound) -> Snapshot | None:
        """``bound``'s snapshot if it comes from a batch (read ahead already, being read by
        another worker's batch, or read now together with other entries of its queue); None,
        reading nothing, when it would be a read of its own. For the read a deploy starts from:
        worth taking from a batch, not worth a request before the deploy's own."""
        entry = (secret.name, bound.label)
        if entry not in self._bound:
            return None
        with self._lock:
            if entry in self._claimed and entry not in self._ready and entry not in self._in_flight:
                return None               # read already (or left out of its batch): the deploy reads
            if entry not in self._claimed and not self._company(entry):
                return None               # a batch of one
        return self.read_target(secret, bound)

    def _company(self, entry: Entry) -> bool:
        """Would a batch taken now for ``entry`` read another entry too?"""
        queue, _ = self._slot[entry]
        return any(other != entry and other not in self._claimed for other in queue)

    def read_target(self, secret: ManagedSecret, bound: Bound, *, first: bool = False) -> Snapshot:
        """``bound``'s snapshot, read ahead (or now, with the next ones of its queue) if it is on a
        batch-reading backend. Call it once per target and run, and never for a read that must
        follow a write of this run. A primary read here before its run's first read (the
        evidence's) is lent to that first read."""
        entry = (secret.name, bound.label)
        if entry not in self._bound:
            snap = bound.backend.read(bound.target)
            if not first:
                self._lend(entry, snap)
            return snap
        with self._lock:
            waiting = self._ready.get(entry)
            snap = self._take_ready(entry)
            if snap is not None:
                if not first and entry in self._primaries and entry not in self._started:
                    self._ready[entry] = waiting      # the evidence read it: still its run's first read
                return snap
            in_flight = self._in_flight.get(entry)
            alone = in_flight is None and entry in self._claimed   # a batch left it out, or read twice
            if in_flight is None and not alone:
                batch = self._take_batch(entry)
        if alone:
            return self._lent_back(entry, bound.backend.read(bound.target), first)
        if in_flight is not None:        # another worker's batch is reading it right now: its
            in_flight.done.wait()        # answer, whoever else takes it (the entry's own reader, or
            snap = in_flight.found.get(entry)      # the one that started the batch for it)
            return self._lent_back(entry, snap if snap is not None else bound.backend.read(bound.target), first)
        snapshots: dict = {}
        try:
            snapshots = self._read_many(bound, batch.entries)
        finally:
            now = self._clock.now()
            with self._lock:
                for member in batch.entries:
                    found = snapshots.get(self._bound[member].target)
                    if found is not None:
                        batch.found[member] = found
                        if member != entry:
                            self._ready[member] = (found, now)
                    self._in_flight.pop(member, None)
            batch.done.set()
        mine = snapshots.get(bound.target)
        return self._lent_back(entry, mine if mine is not None else bound.backend.read(bound.target), first)

    def _lent_back(self, entry: Entry, snap: Snapshot, first: bool) -> Snapshot:
        if not first:
            self._lend(entry, snap)
        return snap

    def _lend(self, entry: Entry, snap: Snapshot) -> None:
        """A primary read for someone else (the evidence) before its own run's first read: keep
        it for that read."""
        if entry not in self._primaries:
            return
        with self._lock:
            if entry not in self._started:
                self._ready[entry] = (snap, self._clock.now())

    def _take_ready(self, entry: Entry) -> Snapshot | None:
        waiting = self._ready.pop(entry, None)
        if waiting is not None and self._clock.now() - waiting[1] <= self._max_age.get(entry, self._primary_age):
            return waiting[0]
        return None

    def _take_batch(self, entry: Entry) -> _Batch:
        """``entry`` and the next entries of its queue not yet read (then, if the batch has room,
        the nearest ones before it: runs started out of order under concurrency), marked as being
        read."""
        size = getattr(self._bound[entry].backend, "read_batch")
        queue, place = self._slot[entry]
        batch = _Batch([entry])
        for other in (*queue[place + 1:], *reversed(queue[:place])):
            if len(batch.entries) >= size:
                break
            if other not in self._claimed:
                batch.entries.append(other)
        for member in batch.entries:
            self._claimed.add(member)
            self._in_flight[member] = batch
        return batch

    def _read_many(self, bound: Bound, batch: list[Entry]) -> dict:
        if len(batch) == 1:
            return {}
        backend = bound.backend
        try:
            found = backend.read_many([self._bound[entry].target for entry in batch])  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - a batch is an optimisation; each target reads alone
            log.debug("batched read on %s failed: %s", backend.name, redact(str(exc)))
            return {}
        self.batches += 1
        return found


class _Batch:
    """One batched read in flight: its entries (the first is the one it was started for), the
    snapshots it found, and "done". A reader that waited for it takes its snapshot from here,
    not from the ones kept for later readers, so two readers of an entry at once (a run's re-read
    and the revoke's evidence) share the one read instead of one of them reading alone."""

    def __init__(self, entries: list[Entry]) -> None:
        self.entries = entries
        self.found: dict[Entry, Snapshot] = {}
        self.done = threading.Event()
