"""A QuivaWorks API emulator: a real HTTP server for tests and ``rotator demo``.

``Emulator(port=0).start()`` serves on a free loopback port; see ``server.Emulator``.
``python -m rotator_providers.quiva.emulator`` runs one standalone. Fault knobs, from failures and
slowness to a misbehaving server (mangled replies, trickled bodies, endless pages, lying
deletes), are ``emu.faults`` (``state.Faults``) and ``POST /_emulator/faults``.
"""

from rotator_providers.quiva.emulator.server import Emulator

__all__ = ["Emulator"]
