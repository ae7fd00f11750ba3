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

    def wait(self, error: BaseException, retry_after: float | None = None) -> None:
        """Record a failed try; sleep before the next, or re-raise ``error`` if none is left."""
        self.tries += 1
        if self.tries >= self.policy.attempts:
            raise error
        pause = self.delay(retry_after)
        self.waited += pause
        self._sleep(pause)
