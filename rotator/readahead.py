"""Batched first reads of the primaries of a run, for backends that can read many at once.

Every secret's run starts by reading its primary. On a backend with a batch read
(:class:`rotator.interfaces.BatchReads`, e.g. AWS ``BatchGetSecretValue``) the first of those reads
also fetches the primaries of the next secrets in run order on the same backend, up to the
backend's ``read_batch``; each of them then finds its snapshot waiting instead of making a request.

Reading just in time (not the whole fleet up front) keeps every snapshot only as old as the time a
few secrets take to start, and an old snapshot is never a risk anyway: each primary write is a
compare-and-swap on the version read, so a snapshot that changed since loses the write and the
engine reads again. Snapshots older than ``max_age`` by the engine's clock are not used.
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


class ReadAhead:
    """The primaries of one run, in run order, and the snapshots read ahead for them."""

    def __init__(self, secrets: Sequence[ManagedSecret], clock: Clock, max_age: timedelta = MAX_AGE) -> None:
        self._clock = clock
        self._max_age = max_age
        self._lock = threading.Lock()
        self._queues: dict[str, list[str]] = {}            # backend name -> secret names, run order
        self._position: dict[str, int] = {}                 # secret name -> index in its queue
        self._bound: dict[str, Bound] = {}
        self._claimed: set[str] = set()                     # read or being read (never twice)
        self._ready: dict[str, tuple[Snapshot, datetime]] = {}
        self._in_flight: dict[str, threading.Event] = {}   # secret name -> its batch's "done"
        self.batches = 0
        for secret in secrets:
            backend = secret.primary.backend
            if isinstance(backend, BatchReads) and getattr(backend, "read_batch", 0) > 1:
                queue = self._queues.setdefault(backend.name, [])
                self._position[secret.name] = len(queue)
                queue.append(secret.name)
                self._bound[secret.name] = secret.primary

    def read(self, secret: ManagedSecret) -> Snapshot:
        """The primary's snapshot for the first step of ``secret``'s run."""
        bound = secret.primary
        if secret.name not in self._bound:
            return bound.backend.read(bound.target)
        with self._lock:
            snap = self._take_ready(secret.name)
            if snap is not None:
                return snap
            in_flight = self._in_flight.get(secret.name)
            alone = in_flight is None and secret.name in self._claimed   # a batch left it out
            if in_flight is None and not alone:
                batch = self._take_batch(secret.name, bound)
        if alone:
            return bound.backend.read(bound.target)
        if in_flight is not None:        # another worker's batch is reading it right now
            in_flight.wait()
            with self._lock:
                snap = self._take_ready(secret.name)
            return snap if snap is not None else bound.backend.read(bound.target)
        snapshots: dict = {}
        try:
            snapshots = self._read_many(bound, batch)
        finally:
            now = self._clock.now()
            with self._lock:
                for name in batch[1:]:
                    found = snapshots.get(self._bound[name].target)
                    if found is not None:
                        self._ready[name] = (found, now)
                done = self._in_flight.pop(secret.name)
                for name in batch[1:]:
                    self._in_flight.pop(name, None)
            done.set()
        mine = snapshots.get(bound.target)
        return mine if mine is not None else bound.backend.read(bound.target)

    def _take_ready(self, name: str) -> Snapshot | None:
        waiting = self._ready.pop(name, None)
        if waiting is not None and self._clock.now() - waiting[1] <= self._max_age:
            return waiting[0]
        return None

    def _take_batch(self, name: str, bound: Bound) -> list[str]:
        """``name`` and the next secrets of its backend not yet read, marked as being read."""
        size = getattr(bound.backend, "read_batch")
        queue = self._queues[bound.backend.name]
        batch = [name]
        for other in queue[self._position[name] + 1:]:
            if len(batch) >= size:
                break
            if other not in self._claimed:
                batch.append(other)
        event = threading.Event()
        for member in batch:
            self._claimed.add(member)
            self._in_flight[member] = event
        return batch

    def _read_many(self, bound: Bound, batch: list[str]) -> dict:
        if len(batch) == 1:
            return {}
        backend = bound.backend
        try:
            found = backend.read_many([self._bound[name].target for name in batch])  # type: ignore[attr-defined]
        except Exception as exc:  # noqa: BLE001 - a batch is an optimisation; each secret reads alone
            log.debug("batched read on %s failed: %s", backend.name, redact(str(exc)))
            return {}
        self.batches += 1
        return found
