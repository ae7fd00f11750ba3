"""The issuer listings of one run, shared by its threads.

Listing an issuer's keys is how rotator learns ids (issuing returns none) and the only proof that
a revoke took effect or that a key is gone. Every effect that a later decision must see — a key
issued, a key revoked — takes a *ticket*; :meth:`Listings.after` then returns a listing whose
request started after that ticket, so it reflects the effect. Threads that need one at the same
time share a single request (the way a database groups commits), so a run of many rotations pays
for a few listings, not one per key.

A listing request that stalls — its answer was a 429 and it waits the server's ``retry_after``,
or the issuer is slow — does not hold back the threads waiting for the next one: once it has taken
``STALL_FACTOR`` times as long as the last listing did (at least ``STALL_MIN`` seconds), one
of them starts another (at most ``MOST_IN_FLIGHT`` at once), which the client paces like any
request. Whichever answers first serves everyone its start covers.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from rotator.interfaces import Issuer
from rotator.models import Listing

STALL_FACTOR = 4.0
STALL_MIN = 0.2            # seconds
MOST_IN_FLIGHT = 2         # per issuer: a stalled listing and the one that relieves it


@dataclass
class _State:
    cond: threading.Condition = field(default_factory=threading.Condition)
    seq: int = 0                       # tickets taken so far
    listing: Listing | None = None
    listing_seq: int = -1              # the ticket count when that listing's request started
    # the requests in flight: the ticket count when each started, and its monotonic start
    fetches: dict[int, tuple[int, float]] = field(default_factory=dict)
    took: float = 0.0                  # how long the last listing took (seconds)


class Listings:
    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, _State] = {}
        self._monotonic = monotonic
        self._fetch_ids = itertools.count()

    def _state(self, issuer: Issuer) -> _State:
        with self._lock:
            return self._states.setdefault(issuer.name, _State())

    def ticket(self, issuer: Issuer) -> int:
        """Call after an effect at ``issuer``: a listing after this ticket reflects it."""
        state = self._state(issuer)
        with state.cond:
            state.seq += 1
            return state.seq

    def any(self, issuer: Issuer) -> Listing:
        """The run's listing of ``issuer`` (the first call fetches it)."""
        return self.after(issuer, 0)

    def fresh(self, issuer: Issuer) -> Listing:
        """A listing requested from now on."""
        return self.after(issuer, self.ticket(issuer))

    def at_hand(self, issuer: Issuer) -> Listing | None:
        """The latest listing of this run, if any; never fetches."""
        state = self._state(issuer)
        with state.cond:
            return state.listing

    def after(self, issuer: Issuer, ticket: int) -> Listing:
        """A listing whose request started after ``ticket`` was taken: the latest if it did,
        else the one in flight if it did, else a new one (started at once when nothing is in
        flight or what is has stalled, else when it ends)."""
        state = self._state(issuer)
        with state.cond:
            while True:
                if state.listing is not None and state.listing_seq >= ticket:
                    return state.listing
                if not state.fetches:
                    break
                if len(state.fetches) >= MOST_IN_FLIGHT:
                    state.cond.wait()
                    continue
                began = max(start for _, start in state.fetches.values())
                left = began + max(STALL_MIN, STALL_FACTOR * state.took) - self._monotonic()
                if left <= 0:                     # the newest request in flight has stalled
                    break
                state.cond.wait(left)
            fetch, started, began = next(self._fetch_ids), state.seq, self._monotonic()
            state.fetches[fetch] = (started, began)
        try:
            listing = issuer.list_keys()
        except BaseException:
            with state.cond:
                del state.fetches[fetch]
                state.cond.notify_all()
            raise
        with state.cond:
            del state.fetches[fetch]
            state.took = self._monotonic() - began
            if started >= state.listing_seq:
                state.listing, state.listing_seq = listing, started
            state.cond.notify_all()
        return listing
