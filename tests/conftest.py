"""Shared fixtures: one QuivaWorks emulator per session (a real HTTP server on a free loopback
port), a fake clock it shares with the rotator, and a ``world`` builder that wires a config,
a runtime and an engine around them."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from rotator_providers.quiva.emulator import Emulator
from rotator.testing import FakeClock
from tests.world import ADMIN_EMAIL, World

# Session-scoped servers for the AWS (moto server, and a signature-checking one for the IAM issuer)
# and Vault (OpenBao) backends live in their own modules, started lazily by the first test that
# asks for them.
pytest_plugins = ["tests.servers.aws", "tests.servers.aws_signing", "tests.servers.vault"]

START = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="session")
def session_clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture(scope="session")
def emulator_server(session_clock: FakeClock):
    emu = Emulator(port=0, clock=session_clock).start()
    yield emu
    emu.stop()


@pytest.fixture
def clock(session_clock: FakeClock) -> FakeClock:
    session_clock.set(START)
    return session_clock


@pytest.fixture
def emulator(emulator_server: Emulator, clock: FakeClock) -> Emulator:
    """The session's emulator, emptied, with its clock at START and one admin user."""
    emulator_server.reset()
    return emulator_server


@pytest.fixture
def admin_key(emulator: Emulator) -> str:
    return emulator.add_user(ADMIN_EMAIL, role="admin")


@pytest.fixture
def world(emulator: Emulator, clock: FakeClock, admin_key: str, tmp_path, monkeypatch) -> World:
    monkeypatch.setenv("QUIVA_API_KEY", admin_key)
    w = World(emulator=emulator, clock=clock, root=tmp_path)
    yield w
    w.close()
