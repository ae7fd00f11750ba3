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

import random
import threading
from collections import deque
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5            # total tries, the first included
    base: float = 0.5            # seconds; the n-th wait is drawn from [0, base * 2**n]
    cap: float = 30.0            # longest computed wait
    max_server_wait: float = 300.0   # longest wait a server's Retry-After may impose per try


class Backoff:
    """Counts tries and sleeps between them; raises the last error when tries run out."""

    def __init__(self, policy: RetryPolicy, sleep: Callable[[float], None],
                 rng: random.Random | None = None) -> None:
        self.policy = policy
        self._sleep = sleep
        self._rng = rng or random.Random()
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

        ``pause`` replaces sleeping here: a shared :class:`Throttle` takes the wait instead, so
        every worker of the same API waits it out, this one included.
        """
        self.tries += 1
        if self.tries >= self.policy.attempts:
            raise error
        delay = self.delay(retry_after)
        self.waited += delay
        (pause or self._sleep)(delay)


class Throttle:
    """Client-side pacing shared by every worker talking to one API: a token bucket (``rate``
    requests per second, ``burst`` at most at once; None = unlimited) plus a shared pause, so a
    429 seen by one worker slows all of them instead of each finding out on its own.

    Without a configured ``rate`` (an API's limits are often unpublished) the first 429 makes the
    throttle learn one, the way TCP backs off: pace at 0.7 of the rate that was being sent, one
    request at a time (no burst when the pause ends, so the waiting workers do not all fire at
    once), grow that rate by 5 % a second, cut it again at the next 429 (not when the one request
    sent after a pause is refused again: that is the server still busy, and its pause covers it),
    and stop pacing once it is back above the rate that drew the first 429.

    Waits are reserved under the lock and slept outside it, so callers queue fairly.
    """

    DECREASE = 0.7       # the learned rate after a 429: this share of what was being sent
    GROWTH = 1.05        # ... then it grows this much per second without a 429
    WINDOW = 1.0         # seconds of sending measured to know "what was being sent"
    FLOOR = 0.5          # requests per second: the learned rate never goes below

    def __init__(self, rate: float | None, burst: int, now: Callable[[], float],
                 sleep: Callable[[float], None]) -> None:
        self.rate = rate
        self.burst = max(1, burst)
        self._now = now
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = float(self.burst)
        self._last = now()
        self._paused_until = 0.0
        self.learned: float | None = None      # the pace learnt from 429s when no rate is configured
        self._ceiling = 0.0
        self._grown_at = 0.0
        self._sent: deque[float] = deque()

    def acquire(self) -> float:
        """Wait for a turn; returns how long it waited."""
        with self._lock:
            now = self._now()
            wait = max(0.0, self._paused_until - now)
            rate, burst = self._pace(now)
            if rate:
                if now > self._last:       # after a pause, tokens accrue only from its end
                    self._tokens = min(burst, self._tokens + (now - self._last) * rate)
                    self._last = now
                self._tokens -= 1
                if self._tokens < 0:
                    wait = max(wait, (self._last - now) + -self._tokens / rate)
            if self.rate is None:
                self._sent.append(now + wait)
                while self._sent[0] < now - self.WINDOW:
                    self._sent.popleft()
        if wait > 0:
            self._sleep(wait)
        return wait

    def pause(self, seconds: float) -> None:
        """Everyone waits at least ``seconds`` from now before the next request (a 429)."""
        with self._lock:
            now = self._now()
            if self.rate is None and now >= self._paused_until and not self._refused_on_resume(now):
                self._learn(now)            # the first 429 of this pause, and not a lone retry's
            self._paused_until = max(self._paused_until, now + max(0.0, seconds))
            if self.rate or self.learned:  # no burst when the pause ends: one goes, the rest paced
                if self._last < now:
                    self._tokens = min(self.burst, self._tokens + (now - self._last) * (self.rate or self.learned))
                # one token at the pause's end, no more; a debt means waiters already queued
                self._tokens = 1.0 if self._tokens >= 0 else self._tokens
                self._last = max(self._last, self._paused_until)

    def _pace(self, now: float) -> tuple[float | None, float]:
        """The (rate, burst) in force: the configured one, else the learned one (burst 1)."""
        if self.rate:
            return self.rate, self.burst
        if self.learned is None:
            return None, 1
        start = max(self._grown_at, self._paused_until)
        if now > start:
            self.learned *= self.GROWTH ** (now - start)
            self._grown_at = now
        if self.learned > self._ceiling:
            self.learned = None            # recovered: unlimited again until the next 429
            return None, 1
        return self.learned, 1

    def _refused_on_resume(self, now: float) -> bool:
        """True when the only request sent since the last pause ended drew this 429: the server
        is still throttling whatever we send, so the pause it asks for says all there is — cutting
        the pace again would make a run of lone retries collapse it to the floor."""
        if self.learned is None or now - self._paused_until >= self.WINDOW:
            return False
        resumed = self._paused_until - 1e-6
        return sum(1 for sent in self._sent if sent >= resumed) <= 1

    def _learn(self, now: float) -> None:
        while self._sent and self._sent[0] < now - self.WINDOW:
            self._sent.popleft()
        span = min(self.WINDOW, max(now - self._sent[0], 0.1)) if self._sent else self.WINDOW
        sending = len(self._sent) / span
        if self.learned is None:
            self._ceiling = max(sending, self.FLOOR)
        base = min(sending, self.learned) if self.learned else sending
        self.learned = max(self.FLOOR, base * self.DECREASE)
        self._grown_at = now
        self._tokens = 0.0
        self._last = now
