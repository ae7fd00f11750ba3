"""A QuivaWorks API emulator: a real HTTP server for tests and ``rotator demo``.

``Emulator(port=0).start()`` serves on a free loopback port; see ``server.Emulator``.
``python -m rotator_providers.quiva.emulator`` runs one standalone. Fault knobs, from failures and
slowness to a misbehaving server (mangled replies, trickled bodies, endless pages, lying
deletes), are ``emu.faults`` (``state.Faults``) and ``POST /_emulator/faults``. A rate limit
(``emu.faults.rate_limit``) follows one of two models: a token bucket (``per_second``, ``burst``;
each 429 says a constant ``retry_after``) or a fixed window (``limit`` per ``window`` seconds; each
429 says the time left until the window resets).
"""

from rotator_providers.quiva.emulator.server import Emulator

__all__ = ["Emulator"]
