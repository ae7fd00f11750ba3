"""Bounded exponential back-off with full jitter, honouring server-provided delays.

Providers use one :class:`Backoff` per logical call::

    backoff = Backoff(policy, sleep)
    while True:
        try:
            return do_call()
        except SomethingTransient as exc:
            backoff.wait(exc, retry_after=...)   # raises ``exc`` once the budget is spent
"""

from __future__ import annotations

import math
import random
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5            # total tries, the first included
    base: float = 0.5            # seconds; the n-th wait is drawn from [0, base * 2**n]
    cap: float = 30.0            # longest computed wait
    max_server_wait: float = 300.0   # longest wait a server's Retry-After may impose per try


_JITTER = random.Random()


class Backoff:
    """Counts tries and sleeps between them; raises the last error when tries run out."""

    def __init__(self, policy: RetryPolicy, sleep: Callable[[float], None],
                 rng: random.Random | None = None) -> None:
        self.policy = policy
        self._sleep = sleep
        self._rng = rng or _JITTER        # (seeding a Random of its own per request cost ~20 µs)
        self.tries = 0
        self.waited = 0.0

    def delay(self, retry_after: float | None = None) -> float:
        """The wait before the next try: the server's word if it gave one, else jittered."""
        if retry_after is not None and retry_after >= 0:
            return min(float(retry_after), self.policy.max_server_wait)
        ceiling = min(self.policy.cap, self.policy.base * (2 ** (self.tries - 1)))
        return self._rng.uniform(0, ceiling)

    def wait(self, error: BaseException, retry_after: float | None = None,
             pause: Callable[[float], None] | None = None) -> None:
        """Record a failed try and wait before the next, or re-raise ``error`` if none is left.

        ``pause`` replaces sleeping here (it is given the wait). A 429 holds back only the
        request it refused: the shared :class:`Throttle` cuts the pace of the others instead.
        """
        self.tries += 1
        if self.tries >= self.policy.attempts:
            raise error
        delay = self.delay(retry_after)
        self.waited += delay
        (pause or self._sleep)(delay)


@dataclass
class Ticket:
    """One request's turn through a :class:`Throttle`: the time it may go (``slot``), the pace
    epoch it was reserved under, how long it waited, and when it went (``sent_at``)."""

    slot: float
    epoch: int
    waited: float = 0.0
    sent_at: float | None = None


_NEVER = float("-inf")


class Throttle:
    """Client-side pacing shared by every worker talking to one API.

    The pace is a rate (requests per second, all workers together; ``None``: unpaced), kept as a
    token bucket: ``burst`` at once at the configured ``rate``, one at a time at any other pace.
    Each request takes a turn (:meth:`acquire`) and reports its answer (:meth:`answered`, or
    :meth:`refused` for a 429 with its ``retry_after``).

    **A 429 holds back only the request it refused**: that request waits its ``retry_after``
    (the caller sleeps it, then takes a turn again). Every other worker keeps to the pace, which
    429s adjust as TCP adjusts its window (AIMD), without a limit being configured:

    * **Multiplicative decrease**, at most once per ``INTERVAL``, and only once the requests
      sent since the last cut brought ``SAMPLES`` answers or ``REFUSED`` 429s (a refusal of a
      request sent before the last cut was answered by that cut). With ``REFUSED`` 429s or more
      the pace goes to ``MARGIN`` of the share of those requests the server let through (never
      below ``DEEPEST`` of itself at once), and that share of it is the rate the server takes;
      with fewer, the pace was only just over that rate: one ``DECREASE`` step, and the rate is
      taken as ``HALFWAY`` of the pace (``SAMPLES`` 429s and nothing let through: half). Either
      cut goes no higher than ``MARGIN`` of the rate the server accepted over the last ``SPAN``
      (workers waiting on other things may send well under the pace), nor the rate above it,
      when ``SAMPLES`` requests or more went in it. An unpaced client's first 429 cuts to
      ``FIRST_CUT`` of the rate it was sending (over the last ``SPAN`` or, if higher, the last
      ``SHORTEST``), a guess: it regrows by ``FIRST_GROWTH`` of that rate a second until the
      next 429. Once a pace has grown past that rate and let go (unpaced again), a 429 at under
      ``AGAIN`` times it is no new guess: the limit is just under the rate the workers reach,
      so one ``DECREASE`` step, regrowing to ``HALFWAY`` of that rate (workers that barely
      outrun a distant limit were otherwise cut to ``FIRST_CUT`` every few seconds). Nor is a
      429 to a burst sent faster than that while the server took no more than ``AGAIN`` times
      it over the last ``SPAN`` (the workers the pace held back, let go at once): one
      ``DECREASE`` step from that rate.
    * **Additive increase**: a cut's pace grows by a constant step, ``GROWTH`` of it per second,
      up to the rate the server took; then not at all for ``PLATEAU`` seconds, then by ``PROBE``
      of the step. It grows only while the pace is what holds requests back, and never while a
      ``retry_after`` window any 429 announced is still open: inside one, no more requests go out
      than the pace in force when it was announced allows.
    * **A closed window** (a fixed-window limit, used up): nothing accepted since the last cut,
      and ``CLOSED_AFTER`` 429s naming the same end — their ``retry_after`` shrinking as time
      passes, unlike a limiter that says "1 s" every time. Nobody sends until the latest end
      named, and the pace becomes what the window allowed (the requests accepted since the
      previous closed window ended, or since sending began, over the time to this one's end;
      ``WINDOW_MARGIN`` of it): one cut per window, and no regrowing into it once a window has
      closed on a known start (the previous one's end). The first of a period of sending is
      counted from the first request, which may have gone in an earlier window only partly
      used: a guess, so the pace regrows from it until a window closes again. Refusals of
      requests sent before that end only extend the hold to the end they name.

    With ``rate`` configured the pace starts there and never goes above it (its burst comes back
    with it); at that rate the burst is also counted on the times requests actually went, so
    turns overslept after a stall do not all go at once. Without, the client starts each period
    of sending (after ``IDLE`` seconds without a request) slowly: ``START_BURST`` turns at once,
    then ``START`` a second, doubled every ``DOUBLING`` until ``OPEN`` (0.2 s): sixteen workers
    set off together would otherwise all be in flight when a limiter's burst runs out, and all
    be refused. Then it sends as fast as its workers go until the first 429, and goes back to
    unpaced once the pace has grown above the rate that drew that 429. Unpaced, only a burst is
    held back: ``UNPACED_BURST`` turns at once, the rest ``AHEAD`` times as fast as the rate sent
    over the last ``SPAN`` (workers released together, by a shared key listing say, otherwise
    all go within a few ms, and all are in flight when a limiter runs out: the first 429 comes
    back too late to stop any of them). A steady sender never waits for it.

    Turns are reserved under the lock and slept outside it, so callers queue fairly; a cut or a
    hold makes every waiting turn take a new place at the new pace. Outside announced windows a
    learnt pace lets up to ``LEARNT_BURST`` turns go at once, to make up turns nobody took.
    ``events`` keeps the last changes of pace (time, why, pace) for traces.
    """

    INTERVAL = 0.1       # seconds: at most one cut per interval ...
    SAMPLES = 12         # ... once this many answers to requests sent at the pace it set
    REFUSED = 3          # ... or this many 429s: enough to tell what the server lets through
    FIRST_CUT = 0.45     # the first 429 of an unpaced client: this share of what it was sending
    FIRST_GROWTH = 0.25  # ... then it grows by this share of that a second until the next 429
    AGAIN = 1.25         # unpaced again, then refused sending under this times what drew the last
                         # first 429: the limit is just under it, one DECREASE step (not FIRST_CUT)
    DECREASE = 0.95      # a cut after fewer than REFUSED 429s (or the configured rate's first) ...
    HALFWAY = 0.975      # ... then the rate the server takes is taken as this share of the pace
    MARGIN = 0.95        # a cut after REFUSED: this share of what the server let through
    DEEPEST = 0.5        # ... never below this share of the pace at once
    GROWTH = 0.02        # per second: this share of the pace the last cut set, up to the rate
    PLATEAU = 30.0       # ... the server took; then no growth for this many seconds ...
    PROBE = 0.25         # ... then this share of the step
    CLOSED_AFTER = 2     # refusals in a row, none accepted, that make a window closed
    WINDOW_MARGIN = 0.97 # a closed window: this share of what it allowed, then no regrowing into it
    FLOOR = 0.5          # requests per second: the pace never goes below
    LEARNT_BURST = 3     # turns a learnt pace lets go at once, to make up missed ones
    SPAN = 1.0           # seconds of sending measured to know "what was being sent"
    SHORTEST = 0.1       # ... over this many seconds at least
    IDLE = 5.0           # seconds without a request that end a period of sending
    START_BURST = 8      # an unpaced client's slow start: this many turns at once, ...
    START = 40.0         # ... then this many a second, ...
    DOUBLING = 0.05      # ... doubled every this many seconds ...
    OPEN = 640.0         # ... until this: unpaced, but for bursts: UNPACED_BURST turns at once,
    UNPACED_BURST = 4    # then at AHEAD times the rate sent over the last SPAN
    AHEAD = 3.0
    MEMORY = 60.0        # seconds of accepted requests kept to measure a window

    def __init__(self, rate: float | None, burst: int, now: Callable[[], float],
                 sleep: Callable[[float], None]) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self._now = now
        self._sleep = sleep
        self._lock = threading.Lock()
        self.pace: float | None = rate
        self._tat = _NEVER              # the pace's next free turn (GCRA "theoretical arrival time")
        self._spread = _NEVER           # the same, unpaced: a burst spread out
        self._went = _NEVER             # the same, counted on the times requests went (configured rate)
        self._last_slot = _NEVER        # the latest turn given
        self._epoch = 0                 # a cut or a closed window renews it: waiting turns re-queue
        self._cut_at = _NEVER
        self._run: _Run | None = None   # the 429s since the last cut
        self._step = 0.0                # additive growth, requests per second per second
        self._grown_at = _NEVER
        self._window_end = _NEVER       # the latest end announced by any 429
        self._hold_until = _NEVER       # a closed window: nobody sends before
        self._closed_at = _NEVER       # when the last closed window was seen
        self._boundary: float | None = None     # where that window ended: the next one began
        self._accepted = 0              # answers, other than 429, to requests sent since the last cut
        self._refused = 0               # 429s to requests sent since the last cut
        self._sent: deque[float] = deque()       # send times, the last SPAN
        self._accepts: deque[float] = deque()    # send times of accepted requests, this period
        self._last_sent = _NEVER
        self._ramp_from = _NEVER        # when the slow start of this period of sending began
        self._ceiling: float | None = None
        self._known: float | None = None    # the rate the server took at the last cut
        self.refusals = 0
        self.events: deque[tuple[float, str, float | None]] = deque(maxlen=1024)   # (time, what, pace)

    @property
    def learned(self) -> float | None:
        """The pace learnt from 429s (None: unpaced, or at the configured rate)."""
        return None if self.pace == self.rate else self.pace

    # ---- taking a turn ----------------------------------------------------------------------

    def acquire(self) -> Ticket:
        """Wait for a turn; the ticket says how long it waited. Report its answer with
        :meth:`answered` or :meth:`refused`."""
        ticket: Ticket | None = None
        waited = 0.0
        while True:
            wait, ticket = self.turn(ticket)
            if wait <= 0:
                ticket.waited = waited
                return ticket
            self._sleep(wait)
            waited += wait

    def turn(self, ticket: Ticket | None = None) -> tuple[float, Ticket]:
        """One step of :meth:`acquire` without sleeping: ``(0, ticket)`` when the request goes now
        (it is counted as sent), else ``(wait, ticket)``: sleep ``wait``, then call again with the
        ticket, which then goes unless a cut or a closed window came in between (a simulation
        drives this itself)."""
        with self._lock:
            now = self._now()
            if ticket is not None and ticket.epoch == self._epoch:
                return self._send(ticket, now)      # slept until its turn: the pace still stands
            pace = self._current(now)
            ramp = self._ramp(now) if pace is None else None
            start = max(now, self._hold_until)
            if pace is None and ramp is None:    # unpaced: only a burst is spread out
                spacing = 1.0 / (self.AHEAD * max(self._sending(now), self.START))
                slot, self._spread = self._reserve(self._spread, start, spacing,
                                                   (self.UNPACED_BURST - 1) * spacing)
            else:
                pace = pace or ramp
                spacing = 1.0 / pace
                if pace == self.rate:
                    tolerance = (self.burst - 1) * spacing
                elif ramp is not None:
                    tolerance = (self.START_BURST - 1) * spacing
                elif start > self._window_end:   # a learnt pace: turns missed may be made up, a few
                    tolerance = (self.LEARNT_BURST - 1) * spacing
                else:                            # (but not inside an announced retry_after window)
                    tolerance = 0.0
                slot, self._tat = self._reserve(self._tat, start, spacing, tolerance)
            ticket = Ticket(slot, self._epoch, ticket.waited if ticket else 0.0)
            if slot <= now:
                return self._send(ticket, now)
            return slot - now, ticket

    def _reserve(self, tat: float, start: float, spacing: float, tolerance: float) -> tuple[float, float]:
        """The next turn from ``start`` at ``spacing``, ``tolerance`` early at most (GCRA on the
        theoretical arrival time ``tat``), after every turn already given: (slot, the new tat)."""
        slot = max(start, tat - tolerance)
        if slot > start:                         # a turn to come: after every one already given
            slot = max(slot, self._last_slot + spacing)
        self._last_slot = max(self._last_slot, slot)
        return slot, max(tat, slot) + spacing

    def _send(self, ticket: Ticket, now: float) -> tuple[float, Ticket]:
        """The turn goes now (``(0, ticket)``, counted as sent), unless at the configured rate it
        would exceed ``burst`` at ``rate`` counted on the times requests actually went, as the
        server's bucket counts them: then it waits that long. Turns are reserved ahead; workers
        that overslept theirs (a GC pause, a busy machine) would otherwise all go at once."""
        if self.rate is not None and self.pace == self.rate:
            soon = self._went - (self.burst - 1) / self.rate - now
            if soon > 0:
                return soon, ticket
            self._went = max(self._went, now) + 1.0 / self.rate
        if now - self._last_sent > self.IDLE:
            self._accepts.clear()           # a new period of sending
            self._boundary = None
        ticket.sent_at = self._last_sent = now
        self._sent.append(now)
        while self._sent[0] < now - self.SPAN:
            self._sent.popleft()
        return 0.0, ticket

    # ---- answers ----------------------------------------------------------------------------

    def answered(self, ticket: Ticket) -> None:
        """The request got an answer other than 429: the server had room for it."""
        with self._lock:
            sent = self._sent_at(ticket)
            self._accepts.append(sent)
            while self._accepts[0] < sent - self.MEMORY:
                self._accepts.popleft()
            if sent >= self._cut_at:
                self._accepted += 1

    def refused(self, ticket: Ticket, retry_after: float | None) -> None:
        """The request got a 429 saying ``retry_after`` (None: no usable hint). The caller waits
        for that request itself; this adjusts the pace everyone else keeps to."""
        with self._lock:
            now = self._now()
            self.refusals += 1
            end = now + retry_after if retry_after is not None else now
            self._window_end = max(self._window_end, end)
            pace = self._current(now)
            if pace is None:                # unpaced until now: the first 429
                # the rate sent lately: a slow start sends faster and faster; a sparse sender's
                # last SHORTEST may hold nothing at all
                sending = max(self._sending(now), self._sending(now, self.SHORTEST))
                drew = self._again(now, sending)
                self._ceiling = sending if drew is None else drew
                if drew is not None:        # refused at about the rate a learnt pace grew past
                    self._cut(now, drew * self.DECREASE, end, "429 again")
                    self._known = drew * self.HALFWAY
                else:
                    self._cut(now, sending * self.FIRST_CUT, end, "first 429")
                    self._step = self.FIRST_GROWTH * sending    # a guess: regrow fast until the next 429
                self._run = _Run(now, retry_after, end)
                return
            if self._cut_at == self._closed_at and self._sent_at(ticket) < self._hold_until:
                # sent before the closed window's end: the same window, its end told once more
                # (each answer's own delay moves it a little): hold until the latest named
                self._boundary = min(self._boundary or end, end)
                if end > self._hold_until:
                    self._hold_until = end
                    self._epoch += 1
                return
            run = self._run = self._run or _Run(now, retry_after, end, count=0)
            run.add(end)
            if self._accepted == 0 and run.count >= self.CLOSED_AFTER and run.names_one_end(now, retry_after, end):
                self._close(now, run)
                return
            if self._sent_at(ticket) < self._cut_at:
                return                      # sent at the pace before the last cut: that cut answered it
            self._refused += 1
            if self._cut_at == _NEVER:      # the configured rate's first 429
                self._cut(now, pace * self.DECREASE, end, "429")
            elif not self._accepted and self._refused >= self.SAMPLES:
                self._cut(now, pace * self.DEEPEST, end, "429")   # nothing got through at this pace
            elif self._accepted and now - self._cut_at >= self.INTERVAL \
                    and (self._accepted + self._refused >= self.SAMPLES or self._refused >= self.REFUSED):
                # what the server let through of what was sent at this pace since the last cut
                # (one more accepted than counted: an estimate too high costs a 429 where one too
                # low costs time until it regrows)
                through = (self._accepted + 1) / (self._accepted + self._refused + 1)
                if self._refused >= self.REFUSED:   # enough refused to tell what the server takes
                    known, share = pace * through, self.MARGIN * through
                else:                                # just over it: a step down, and back up halfway
                    known, share = pace * self.HALFWAY, self.DECREASE
                took = self._taken(now)
                if took is not None:                 # what the server accepted lately, if it says much
                    share, known = min(share, self.MARGIN * took / pace), min(known, took)
                self._cut(now, pace * max(self.DEEPEST, share), end, "429")
                self._known = max(known, self.pace)

    def _again(self, now: float, sending: float) -> float | None:
        """Unpaced again after a learnt pace let go, and refused: the rate the limit is just under
        (None: no such rate, the first 429 is a new guess). That is the rate sent, when it is
        under AGAIN times the one that drew the last first 429 (the ceiling); else the ceiling
        itself, when the server took no more than that over the last SPAN: the workers the pace
        held back, let go at once, sent a burst well over the rate the server goes on taking."""
        ceiling = self._ceiling
        if ceiling is None:
            return None
        if sending <= ceiling * self.AGAIN:
            return sending
        took = self._taken(now)
        return ceiling if took is not None and took <= ceiling * self.AGAIN else None

    # ---- the pace ---------------------------------------------------------------------------

    def _sent_at(self, ticket: Ticket) -> float:
        return ticket.sent_at if ticket.sent_at is not None else self._now()

    def _sending(self, now: float, span: float | None = None) -> float:
        """Requests per second sent over the last ``span`` (default: SPAN, or since sending
        began, over SHORTEST at least)."""
        if not self._sent:
            return self.FLOOR
        if span is not None:
            return sum(1 for sent in self._sent if sent >= now - span) / span
        span = min(self.SPAN, max(now - self._sent[0], self.SHORTEST))
        return len(self._sent) / span

    def _ramp(self, now: float) -> float | None:
        """An unpaced client's slow start: the first turns of a period of sending (after IDLE
        without a request) go START_BURST at once, then at START a second, doubled every
        DOUBLING, until OPEN; None from then on (unpaced)."""
        if now - self._last_sent > self.IDLE:
            self._ramp_from = now
            self.events.append((now, "slow start", self.START))
        doublings = (now - self._ramp_from) / self.DOUBLING
        if doublings >= math.log2(self.OPEN / self.START):     # (2.0 ** 1024 would overflow)
            return None
        return self.START * 2.0 ** doublings

    def _taken(self, now: float) -> float | None:
        """Requests per second the server accepted, by their send times, over the last SPAN;
        None when fewer than SAMPLES requests went in it (a sparse sender's says little)."""
        if len(self._sent) < self.SAMPLES:
            return None
        count = 0
        for sent in reversed(self._accepts):
            if sent < now - self.SPAN:
                break
            count += 1
        return count / min(self.SPAN, max(now - self._sent[0], self.SHORTEST))

    def _current(self, now: float) -> float | None:
        """The pace in force, grown since the last look (only while the pace held requests back,
        and never inside an announced retry_after window)."""
        pace = self.pace
        if pace is None or not self._step:
            return pace
        since = max(self._grown_at, self._window_end, self._hold_until)
        if now > since:
            if self._tat >= now - 1.0 / pace:          # the pace is what limits the sending
                if self._known is None or pace < self._known:
                    pace = min(pace + self._step * (now - since), self._known or math.inf)
                elif now - self._cut_at > self.PLATEAU:  # at the rate the server took: a while, then probe
                    pace += self._step * self.PROBE * (now - max(since, self._cut_at + self.PLATEAU))
            self._grown_at = now
            if self.rate is not None and pace >= self.rate:
                pace, self._step = self.rate, 0.0      # back at the configured rate, burst and all
                self.events.append((now, "back at the configured rate", pace))
            elif self.rate is None and self._ceiling is not None and pace > self._ceiling:
                pace, self._step = None, 0.0           # above what drew the first 429: unpaced again
                self.events.append((now, "unpaced again", None))
            self.pace = pace
        return pace

    def _cut(self, now: float, pace: float, end: float, why: str) -> None:
        pace = max(self.FLOOR, pace)
        if self.rate is not None:
            pace = min(pace, self.rate)
        self.pace = pace
        self._step = self.GROWTH * pace
        self._epoch += 1
        self._cut_at = self._grown_at = now
        self._run = None
        self._accepted = self._refused = 0
        self._known = None
        # one at a time from here: the next turn one spacing after the last request went
        self._tat = max(now, self._hold_until, self._last_sent + 1.0 / pace)
        self._last_slot = self._last_sent
        self.events.append((now, why, pace))

    def _close(self, now: float, run: _Run) -> None:
        """Nothing got through since the cut and the 429s name one end: the window is closed.
        Nobody sends before the latest end they named, and the pace becomes what the window
        allowed: the requests accepted since the previous closed window ended over the time to
        this one's end, and no regrowing into it. With no previous window, since this period of
        sending began: a guess (too high if the window began before, too low if an earlier
        window only partly used is in the count: 0.89 of the limit with a slow start), so the
        pace regrows until a window closes on a known start. (Each 429 names the end a little
        late, by its answer's delay: the earliest named is the closest.)"""
        end = run.low
        counted = self._boundary is not None     # from a known start
        start = self._boundary if counted else (self._accepts[0] if self._accepts else now)
        accepted = sum(1 for sent in self._accepts if sent >= start)
        allowed = pace = self.pace or self._sending(now)
        if end - start >= self.INTERVAL:    # (not a window of a few answers' delays)
            allowed = min(accepted / (end - start), max(pace, self._sending(now)))
        self._hold_until, self._closed_at, self._boundary = run.high, now, end
        self._cut(now, allowed * self.WINDOW_MARGIN, run.high, "closed window")
        self._known = self.pace if counted else None


@dataclass
class _Run:
    """The 429s since the last cut: when the first came, its wait and end, how many, and the
    earliest and latest end they named."""

    at: float
    wait: float | None
    end: float
    count: int = 1
    low: float = field(default=float("inf"))
    high: float = _NEVER

    def __post_init__(self) -> None:
        self.low, self.high = min(self.low, self.end), max(self.high, self.end)

    def add(self, end: float) -> None:
        self.count += 1
        self.low, self.high = min(self.low, end), max(self.high, end)

    def names_one_end(self, now: float, wait: float | None, end: float) -> bool:
        """Every 429 names the same end, with a wait that shrank as time passed: the end moved
        less than half the time between the first and this one (a limiter that says "1 s" to
        each moves it as fast as time goes, and names no end)."""
        return wait is not None and wait != self.wait and abs(end - self.end) <= (now - self.at) / 2
