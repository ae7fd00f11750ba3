"""Run the QuivaWorks emulator standalone: ``rotator emulator`` or ``python -m rotator_providers.quiva.emulator``.

The first line on stdout is always ``QuivaWorks emulator listening on URL``. Then, unless
``--quiet``, what a newcomer needs: the base URL, the admin key to configure and a config to
start from. The admin key is taken from ``QUIVA_API_KEY`` when set (and registered as that user's
key; not printed: you have it), else written to ``--admin-key-file`` (mode 0600; not printed:
the config reads the file), else minted and printed — an emulator's throwaway key, good for
nothing but this emulator.

``--state-file PATH`` keeps users and keys across restarts: loaded at start, saved (atomically,
mode 0600: it holds the emulator's key values) within half a second of any change and at exit.
Sessions, faults, counters and the clock are not kept. Runs until SIGINT or SIGTERM, then exits 0.

A rate limit, in real time, with one of two models (``POST /_emulator/faults`` with
``{"rate_limit": ...}`` sets or changes it while serving):

* ``--token-bucket RATE[,BURST[,RETRY_AFTER]]``: RATE requests a second, BURST at once (default 1);
  a refused request's 429 says RETRY_AFTER seconds (default 1) whatever the refill time;
* ``--fixed-window LIMIT/SECONDS``: LIMIT requests per window of SECONDS, windows aligned on the
  Unix clock; a refused request's 429 says the time left until the window resets.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Sequence

from rotator_providers.quiva.emulator.server import _FAULT_KNOBS, KNOB_PREFIX, Emulator
from rotator_providers.quiva.emulator.state import ROLES, load_state, save_state

_ANY_ADDRESS = ("0.0.0.0", "::", "")


def _parse_args(argv: Sequence[str] | None, prog: str | None = None) -> argparse.Namespace:
    knobs = ", ".join(_FAULT_KNOBS)
    parser = argparse.ArgumentParser(
        prog=prog or "python -m rotator_providers.quiva.emulator",
        description="Serve an emulated QuivaWorks API, and print its URL, an admin key and a config to start from.",
        epilog=f"Knobs (no auth): {KNOB_PREFIX}users, keys, clock, counters, reset, faults. "
               f"POST {KNOB_PREFIX}faults arms faults by name: {knobs}; "
               "e.g. {\"mangle_next\": {\"n\": 1, \"mode\": \"html\", \"path\": \"GET /accounts/api-keys\"}} "
               "or {\"clear\": true}. Rate limits: {\"rate_limit\": {\"per_second\": 50, \"burst\": 10,"
               " \"retry_after\": 1}} (token bucket) or {\"rate_limit\": {\"model\": \"fixed_window\", \"limit\": 50,"
               " \"window\": 1}}; {\"rate_limit\": {\"per_second\": null}} lifts it.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8787, help="default 8787; 0 picks a free port")
    parser.add_argument("--user", default="admin@example.com", help="email of the user to create")
    parser.add_argument("--role", default="admin", choices=ROLES)
    parser.add_argument("--admin-key-file", metavar="PATH",
                        help="where to write a minted key (mode 0600) when QUIVA_API_KEY is unset")
    parser.add_argument("--state-file", metavar="PATH",
                        help="keep users and keys in this file (mode 0600) so they survive a restart")
    limits = parser.add_mutually_exclusive_group()
    limits.add_argument("--token-bucket", metavar="RATE[,BURST[,RETRY_AFTER]]", type=_token_bucket,
                        help="limit requests with a token bucket: RATE per second, BURST at once (default 1);"
                             " a 429 says retry_after = RETRY_AFTER seconds (default 1)")
    limits.add_argument("--fixed-window", metavar="LIMIT/SECONDS", type=_fixed_window,
                        help="limit requests to LIMIT per window of SECONDS (windows aligned on the clock);"
                             " a 429 says retry_after = the time left until the window resets")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the 'listening on' line")
    return parser.parse_args(argv)


def _token_bucket(text: str) -> dict:
    """``50`` / ``50,10`` / ``50,10,1`` → the ``rate_limit`` knob's arguments."""
    parts = text.split(",")
    try:
        if not 1 <= len(parts) <= 3:
            raise ValueError
        spec: dict = {"per_second": float(parts[0])}
        if len(parts) > 1:
            spec["burst"] = int(parts[1])
        if len(parts) > 2:
            spec["retry_after"] = float(parts[2])
        return _checked(spec)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected RATE[,BURST[,RETRY_AFTER]], e.g. 50,10,1{_why(exc)}") from None


def _fixed_window(text: str) -> dict:
    """``50/1`` / ``3000/60`` → the ``rate_limit`` knob's arguments."""
    try:
        limit, _, seconds = text.partition("/")
        return _checked({"model": "fixed_window", "limit": int(limit), "window": float(seconds)})
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected LIMIT/SECONDS, e.g. 50/1 or 3000/60{_why(exc)}") from None


def _checked(spec: dict) -> dict:
    """The knob's own validation, on a throwaway emulator state."""
    from rotator_providers.quiva.emulator.state import Faults

    Faults(threading.RLock()).rate_limit(**spec)
    return spec


def _why(exc: ValueError) -> str:
    return f" ({exc})" if str(exc) and "invalid literal" not in str(exc) else ""


def write_secret_file(path: str, value: str) -> None:
    """Write ``value`` to ``path`` readable by the owner only (also when the file existed)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, value.encode("utf-8"))
    finally:
        os.close(fd)


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    args = _parse_args(argv, prog)
    me = prog or "emulator"
    supplied = os.environ.get("QUIVA_API_KEY") or None
    emu = Emulator(host=args.host, port=args.port)
    limit = args.token_bucket or args.fixed_window
    if limit:
        emu.faults.rate_limit(**limit)
    if args.state_file:
        try:
            restored = load_state(emu.state, args.state_file)
        except ValueError as exc:
            print(f"{me}: --state-file {exc}", file=sys.stderr)
            return 2
    else:
        restored = False
    # the user's admin key: QUIVA_API_KEY (registered once), or the one the state file kept, or a new one
    if supplied is not None:
        if not emu.state.is_registered(supplied):
            emu.add_user(args.user, role=args.role, key=supplied)
        value = supplied
    else:
        value = (emu.state.live_key_named(args.user, "admin") if emu.state.has_user(args.user) else None) \
            or emu.add_user(args.user, role=args.role)
        if args.admin_key_file:
            write_secret_file(args.admin_key_file, value)

    if args.state_file:                 # written now: a path that cannot be written fails before serving
        try:
            save_state(emu.state, args.state_file)
        except OSError as exc:
            print(f"{me}: --state-file {args.state_file}: cannot write: {exc.strerror or exc}", file=sys.stderr)
            return 2
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    try:
        emu.start()
    except OSError as exc:
        print(f"{me}: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}"
              " (--port 0 picks a free port)", file=sys.stderr)
        return 1
    print(f"QuivaWorks emulator listening on {emu.url}", flush=True)
    if not args.quiet:
        print(_welcome(emu, args, supplied is not None, value, restored), flush=True)
    del value
    saved = emu.state.dump() if args.state_file else None
    try:
        while not stopping.wait(0.5):
            saved = _save_if_changed(emu, args.state_file, saved)
    finally:
        emu.stop()
        _save_if_changed(emu, args.state_file, saved)
    return 0


def _save_if_changed(emu: Emulator, path: str | None, saved: dict | None) -> dict | None:
    """Save when users or keys changed since ``saved``; what is saved now. A failed save is said
    once and tried again at the next change."""
    if not path:
        return None
    now = emu.state.dump()
    if now != saved:
        try:
            save_state(emu.state, path)
        except OSError as exc:
            print(f"emulator: cannot save the state to {path}: {exc.strerror or exc}", file=sys.stderr)
    return now


def _welcome(emu: Emulator, args: argparse.Namespace, from_env: bool, value: str, restored: bool) -> str:
    """What to do next: the URL, the key and a config that works against this emulator."""
    host = "127.0.0.1" if args.host in _ANY_ADDRESS else args.host
    url = f"http://{host}:{emu.port}" if ":" not in host else f"http://[{host}]:{emu.port}"
    if from_env:
        key_line = "from $QUIVA_API_KEY (registered for this user)"
        reference, export = '{ env = "QUIVA_API_KEY" }', None
    elif args.admin_key_file:
        path = os.path.abspath(args.admin_key_file)
        key_line = f"written to {path} (mode 0600)"
        reference, export = f'{{ file = "{_toml(path)}" }}', None
    else:
        key_line = f"{value}  (an emulator key: it works nowhere else)"
        reference, export = '{ env = "QUIVA_API_KEY" }', f"export QUIVA_API_KEY={value}"
    if args.state_file:
        state_line = (f"{os.path.abspath(args.state_file)} ({'restored; ' if restored else ''}"
                      "users and keys survive a restart)")
    else:
        state_line = "in memory only (--state-file PATH keeps users and keys across restarts)"
    secrets_dir = os.path.abspath("rotator-secrets")
    remote = "" if args.host not in _ANY_ADDRESS else \
        "\n# reached from another host, the issuer also needs insecure_http = true (plain http)"
    lines = [
        "",
        f"base URL:   {url}",
        f"admin key:  {key_line}",
        f"user:       {args.user} (role {args.role})",
        f"state:      {state_line}",
        "",
        "A config to start from (save it as rotator.toml):",
        "",
        "# rotator.toml" + remote,
        "[issuers.quiva]",
        'type = "quivaworks"',
        f'base_url = "{url}"',
        f"admin_key = {reference}",
        "",
        "[backends.local]",
        'type = "file"',
        f'directory = "{_toml(secrets_dir)}"',
        "",
        "[[secrets]]",
        'name = "my-app"',
        'issuer = "quiva"',
        'targets = [{ backend = "local", path = "my-app.json" }]',
        "",
        "Then, in this directory:",
        *([f"  {export}"] if export else []),
        "  rotator -c rotator.toml check     # configuration, credential, issuer and store: all reachable?",
        "  rotator -c rotator.toml plan      # what would happen",
        "  rotator -c rotator.toml rotate    # issue my-app's key into the file store",
        "",
        "Stop with Ctrl-C.",
    ]
    return "\n".join(lines)


def _toml(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


if __name__ == "__main__":
    sys.exit(main())
