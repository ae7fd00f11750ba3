"""The issuer listings of one run, shared by its threads.

Listing an issuer's keys is how rotator learns ids (issuing returns none) and the only proof that
a revoke took effect or that a key is gone. Every effect that a later decision must see — a key
issued, a key revoked — takes a *ticket*; :meth:`Listings.after` then returns a listing whose
request started after that ticket, so it reflects the effect. Threads that need one at the same
time share a single request (the way a database groups commits), so a run of many rotations pays
for a few listings, not one per key.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from rotator.interfaces import Issuer
from rotator.models import Listing


@dataclass
class _State:
    cond: threading.Condition = field(default_factory=threading.Condition)
    seq: int = 0                       # tickets taken so far
    listing: Listing | None = None
    listing_seq: int = -1              # the ticket count when that listing's request started
    fetching: bool = False
    fetching_seq: int = -1


class Listings:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[str, _State] = {}

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
        else the one in flight if it did, else a new one."""
        state = self._state(issuer)
        with state.cond:
            while True:
                if state.listing is not None and state.listing_seq >= ticket:
                    return state.listing
                if not state.fetching:
                    break
                state.cond.wait()
            state.fetching, state.fetching_seq = True, state.seq
            started = state.seq
        try:
            listing = issuer.list_keys()
        except BaseException:
            with state.cond:
                state.fetching = False
                state.cond.notify_all()
            raise
        with state.cond:
            if started >= state.listing_seq:
                state.listing, state.listing_seq = listing, started
            state.fetching = False
            state.cond.notify_all()
        return listing
