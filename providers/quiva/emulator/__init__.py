"""A QuivaWorks API emulator: a real HTTP server for tests and ``rotator demo``.

``Emulator(port=0).start()`` serves on a free loopback port; see ``server.Emulator``.
``python -m providers.quiva.emulator`` runs one standalone.
"""

from providers.quiva.emulator.server import Emulator

__all__ = ["Emulator"]
