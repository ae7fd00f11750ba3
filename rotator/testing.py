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
                     calls: list[tuple[str, str, str]] | None = None, workers: int = 1) -> ProviderContext:
    """A ProviderContext for tests: fake clock, recorded sleeps, credentials from ``environ``."""
    clock = clock or FakeClock()
    sleep = sleep or RecordingSleep()

    def resolve(ref: Any, where: str):
        return credentials.resolve(ref, where, environ=environ)

    def on_call(provider: str, op: str, outcome: str) -> None:
        if calls is not None:
            calls.append((provider, op, outcome))

    return ProviderContext(clock=clock, sleep=sleep, resolve_credential=resolve, on_call=on_call,
                           workers=workers)


# --- fault injection ---------------------------------------------------------------------------

#: Protocol methods that change state somewhere (reads and authentication checks are not effects).
BACKEND_EFFECTS = ("write_record", "stage", "promote", "discard_pending", "deploy")
ISSUER_EFFECTS = ("issue", "revoke")


class SimulatedCrash(BaseException):
    """Raised right after an effect to stop a run the way a killed process stops: nothing after
    it runs, not even the engine's failure handling (it is not an ``Exception``)."""


class EffectCounter:
    """Counts effects across a runtime's providers and can stop the run after the k-th.

    ``on_effect`` is called with (number, provider, method) after each effect; by default it
    raises :class:`SimulatedCrash` at ``crash_after``. A test that wants a real process death
    passes ``on_effect=lambda n, *_: os.kill(os.getpid(), signal.SIGKILL) if n == k else None``.
    """

    def __init__(self, crash_after: int | None = None, on_effect: Any = None) -> None:
        self.crash_after = crash_after
        self.count = 0
        self.log: list[tuple[str, str]] = []
        self.crashed = False
        self._lock = threading.Lock()
        self._on_effect = on_effect

    def instrument(self, runtime: Any) -> EffectCounter:
        """Wrap the effect methods of every issuer and backend of ``runtime`` (in place)."""
        for provider in runtime.backends.values():
            self._wrap(provider, BACKEND_EFFECTS)
        for provider in runtime.issuers.values():
            self._wrap(provider, ISSUER_EFFECTS)
        return self

    def _wrap(self, provider: Any, methods: tuple[str, ...]) -> None:
        for method in methods:
            original = getattr(provider, method)

            def wrapped(*args: Any, __original: Any = original, __method: str = method, **kwargs: Any) -> Any:
                result = __original(*args, **kwargs)
                with self._lock:
                    self.count += 1
                    number = self.count
                    self.log.append((provider.name, __method))
                if self._on_effect is not None:
                    self._on_effect(number, provider.name, __method)
                elif number == self.crash_after:
                    self.crashed = True
                    raise SimulatedCrash(f"simulated crash after effect {number}: {provider.name}.{__method}")
                return result

            setattr(provider, method, wrapped)
