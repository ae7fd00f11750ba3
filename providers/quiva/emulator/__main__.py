"""Run the QuivaWorks emulator standalone: ``python -m providers.quiva.emulator``.

The user's key is taken from ``QUIVA_API_KEY`` when set (and registered as that user's key),
otherwise minted and written to ``--admin-key-file`` (mode 0600). A key is never printed.
Runs until SIGINT or SIGTERM, then exits 0.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Sequence

from providers.quiva.emulator.server import _FAULT_KNOBS, KNOB_PREFIX, Emulator
from providers.quiva.emulator.state import ROLES


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    knobs = ", ".join(_FAULT_KNOBS)
    parser = argparse.ArgumentParser(
        prog="python -m providers.quiva.emulator", description="Serve an emulated QuivaWorks API.",
        epilog=f"Knobs (no auth): {KNOB_PREFIX}users, keys, clock, counters, reset, faults. "
               f"POST {KNOB_PREFIX}faults arms faults by name: {knobs}; "
               "e.g. {\"mangle_next\": {\"n\": 1, \"mode\": \"html\", \"path\": \"GET /accounts/api-keys\"}} "
               "or {\"clear\": true}.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8787, help="0 picks a free port")
    parser.add_argument("--user", default="admin@example.com", help="email of the user to create")
    parser.add_argument("--role", default="admin", choices=ROLES)
    parser.add_argument("--admin-key-file", metavar="PATH",
                        help="where to write a minted key (mode 0600) when QUIVA_API_KEY is unset")
    return parser.parse_args(argv)


def write_secret_file(path: str, value: str) -> None:
    """Write ``value`` to ``path`` readable by the owner only (also when the file existed)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, value.encode("utf-8"))
    finally:
        os.close(fd)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    supplied = os.environ.get("QUIVA_API_KEY") or None
    emu = Emulator(host=args.host, port=args.port)
    value = emu.add_user(args.user, role=args.role, key=supplied)
    if supplied is None:
        if args.admin_key_file:
            write_secret_file(args.admin_key_file, value)
        else:
            print("note: no QUIVA_API_KEY and no --admin-key-file: the minted key is not kept; "
                  "mint one with POST /_emulator/users", file=sys.stderr)
    del value

    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    emu.start()
    print(f"QuivaWorks emulator listening on {emu.url}", flush=True)
    try:
        while not stopping.wait(0.5):
            pass
    finally:
        emu.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
