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

    Waits are reserved under the lock and slept outside it, so callers queue fairly.
    """

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

    def acquire(self) -> float:
        """Wait for a turn; returns how long it waited."""
        with self._lock:
            now = self._now()
            wait = max(0.0, self._paused_until - now)
            if self.rate:
                if now > self._last:       # after a pause, tokens accrue only from its end
                    self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
                    self._last = now
                self._tokens -= 1
                if self._tokens < 0:
                    wait = max(wait, (self._last - now) + -self._tokens / self.rate)
        if wait > 0:
            self._sleep(wait)
        return wait

    def pause(self, seconds: float) -> None:
        """Everyone waits at least ``seconds`` from now before the next request (a 429)."""
        with self._lock:
            self._paused_until = max(self._paused_until, self._now() + max(0.0, seconds))
            if self.rate:                  # no burst when the pause ends: waiters go out paced
                self._tokens = min(self._tokens, 0.0)
                self._last = max(self._last, self._paused_until)
