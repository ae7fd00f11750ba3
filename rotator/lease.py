"""Lease keeping: the runner that owns a rotation keeps its lease alive while it works.

A claim on a secret (the rotation record's ``owner`` and ``lease_until``) lets other runners take
the rotation over once the lease has run out: that is how a crashed runner's rotation resumes.
A slow but living owner must therefore renew its lease, or another runner takes over while it
still acts. The engine renews (a compare-and-swap of the record) before each step once a third of
the lease has passed, and — through :func:`keeping_sleep`, which wraps every provider's ``sleep``
— before and during every wait a provider makes on its behalf (a 429's ``retry_after``, a
backoff), in slices of a third of the lease. A renewal that loses its compare-and-swap raises
:class:`rotator.errors.LeaseLost` out of the wait: the run stops before any further effect on
that secret, re-reads the record and decides again.

What no renewal covers is one request in flight: each is bounded by its provider's timeout, and
everything a stale owner could still do after one is either a compare-and-swap (which then fails)
or a revoke (which the revoke gate refuses for a key a live claim owns).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from datetime import timedelta
from typing import Callable, Iterator

from rotator.interfaces import Clock

_local = threading.local()


class LeaseKeeper:
    """Renews one run's lease when due. ``renew()`` performs the compare-and-swap (raising
    LeaseLost when it loses); ``until()`` is the lease's current end, or None when the run holds
    no lease (nothing to keep)."""

    def __init__(self, *, lease: timedelta, clock: Clock, renew: Callable[[], None],
                 until: Callable[[], object]) -> None:
        self.lease = lease
        self.slice = max(lease.total_seconds() / 3, 0.001)
        self._clock = clock
        self._renew = renew
        self._until = until
        self._paused = 0

    def renew_if_due(self, ahead: float = 0.0) -> None:
        """Renew when a third of the lease has passed, or when ``ahead`` seconds from now would
        leave less than a third of it."""
        if self._paused:
            return
        until = self._until()
        if until is None:
            return
        left = (until - self._clock.now()).total_seconds()          # type: ignore[operator]
        third = self.lease.total_seconds() / 3
        if left < 2 * third or left - ahead < third:
            self._renew()

    def wait(self, seconds: float, sleep: Callable[[float], None]) -> None:
        """Sleep ``seconds`` in slices, keeping the lease alive across them."""
        remaining = max(seconds, 0.0)
        while remaining > 0:
            step = min(remaining, self.slice)
            self.renew_if_due(step)
            sleep(step)
            remaining -= step

    @contextmanager
    def paused(self) -> Iterator[None]:
        """No renewal from inside this block (a write of the primary itself is in flight)."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1


@contextmanager
def keeping(keeper: LeaseKeeper) -> Iterator[None]:
    """Provider waits on this thread renew ``keeper``'s lease while the block runs."""
    previous = getattr(_local, "keeper", None)
    _local.keeper = keeper
    try:
        yield
    finally:
        _local.keeper = previous


def keeping_sleep(sleep: Callable[[float], None]) -> Callable[[float], None]:
    """``sleep``, but a wait made while a run keeps a lease on this thread renews it."""
    def lease_aware_sleep(seconds: float) -> None:
        keeper: LeaseKeeper | None = getattr(_local, "keeper", None)
        if keeper is None:
            sleep(seconds)
        else:
            keeper.wait(seconds, sleep)
    return lease_aware_sleep
