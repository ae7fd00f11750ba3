"""Test helpers shipped with rotator, so plugin authors can test against the same tools.

``FakeClock`` is the injected clock; ``RecordingSleep`` replaces real waits in retry loops;
``provider_context`` builds a :class:`ProviderContext` wired to both.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

from rotator import credentials
from rotator.interfaces import ProviderContext


class FakeClock:
    """A clock that only moves when told. Thread-safe."""

    def __init__(self, start: datetime | None = None) -> None:
        self._now = start or datetime(2026, 1, 1, tzinfo=timezone.utc)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def set(self, moment: datetime) -> None:
        with self._lock:
            self._now = moment.astimezone(timezone.utc)

    def advance(self, delta: timedelta | float) -> datetime:
        if not isinstance(delta, timedelta):
            delta = timedelta(seconds=delta)
        with self._lock:
            self._now += delta
            return self._now

    def sleep(self, seconds: float) -> None:
        """Sleeping on a fake clock moves it forward instantly."""
        self.advance(max(seconds, 0))


class RecordingSleep:
    """A ``sleep`` that records the requested waits instead of waiting."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.waits: list[float] = []
        self._clock = clock

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        if self._clock is not None:
            self._clock.advance(max(seconds, 0))


def provider_context(clock: Any = None, sleep: Any = None,
                     environ: Mapping[str, str] | None = None,
                     calls: list[tuple[str, str, str]] | None = None) -> ProviderContext:
    """A ProviderContext for tests: fake clock, recorded sleeps, credentials from ``environ``."""
    clock = clock or FakeClock()
    sleep = sleep or RecordingSleep()

    def resolve(ref: Any, where: str):
        return credentials.resolve(ref, where, environ=environ)

    def on_call(provider: str, op: str, outcome: str) -> None:
        if calls is not None:
            calls.append((provider, op, outcome))

    return ProviderContext(clock=clock, sleep=sleep, resolve_credential=resolve, on_call=on_call)
