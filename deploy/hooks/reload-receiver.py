#!/usr/bin/env python3
"""A receiver for rotator's http hooks that reloads a process when a new key is in place.

Standard library only; it does not import rotator. It checks X-Rotator-Signature (HMAC-SHA256 of
"<t>." + body with the shared signing secret, compared in constant time, t within 300 s of this
clock), answers 401 to a missing, bad or stale signature, 400 to a bad body, and on a `deployed`
or `staged` event reloads: SIGHUP (or --signal) to the pid in --reload-pid-file, or runs
--reload-command (split with shlex, no shell). 200 only once the reload succeeded, so the hook
can be a gate; 500 otherwise (rotator retries). A delivery already done answers 200 again without
a second reload (delivery is at least once). Remembered in memory only: after a restart of this
receiver a re-delivered event reloads once more. See deploy/hooks/README.md and docs/hooks.md.

    HOOK_SIGNING_SECRET=... reload-receiver.py --reload-pid-file /run/nginx.pid
    reload-receiver.py --secret-file /etc/hook/secret --reload-command "systemctl reload myapp"
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOLERANCE = 300            # seconds between the signature's timestamp and this clock
MAX_BODY = 64 * 1024       # rotator's bodies are well under 2 KiB
RELOAD_EVENTS = {"deployed", "staged"}
REMEMBERED = 10_000        # delivery ids kept for de-duplication


def log(message: str) -> None:
    print(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "reload-receiver:", message,
          file=sys.stderr, flush=True)


def signature_problem(secret: bytes, header: str, body: bytes, now: float) -> str | None:
    """Why X-Rotator-Signature does not vouch for body, or None when it does."""
    if not header:
        return "missing signature"
    parts = dict(p.strip().split("=", 1) for p in header.split(",") if "=" in p)
    stamp, given = parts.get("t", ""), parts.get("v1", "")
    if not stamp.isdigit() or not given:
        return "malformed signature"
    if abs(now - int(stamp)) > TOLERANCE:
        return "stale signature timestamp"
    expected = hmac.new(secret, stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return None if hmac.compare_digest(expected, given) else "bad signature"


def reload(args: argparse.Namespace, event: dict) -> str | None:
    """Reload the process; None when it worked, else why not."""
    if args.reload_pid_file:
        try:
            with open(args.reload_pid_file) as f:
                pid = int(f.read().strip())
            os.kill(pid, args.signum)
            return None
        except (OSError, ValueError) as exc:
            return f"cannot signal the pid in {args.reload_pid_file}: {exc}"
    env = dict(os.environ, ROTATOR_EVENT=event["event"], ROTATOR_SECRET=str(event.get("secret", "")),
               ROTATOR_DELIVERY_ID=event["delivery_id"])
    try:
        done = subprocess.run(shlex.split(args.reload_command), env=env, stdin=subprocess.DEVNULL,
                              timeout=args.reload_timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"reload command failed: {exc}"
    return None if done.returncode == 0 else f"reload command exited with {done.returncode}"


class Handler(BaseHTTPRequestHandler):
    server_version = "reload-receiver"
    timeout = 10                              # a client that stalls mid-request is dropped

    def do_POST(self) -> None:
        args, done = self.server.args, self.server.done
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return self.answer(411, "Content-Length required")
        if length < 0 or length > MAX_BODY:
            return self.answer(413, f"body over {MAX_BODY} bytes")
        body = self.rfile.read(length)
        problem = signature_problem(args.secret, self.headers.get("X-Rotator-Signature", ""), body, time.time())
        if problem:
            return self.answer(401, problem)
        try:
            event = json.loads(body)
        except ValueError:
            event = None
        if not (isinstance(event, dict) and isinstance(event.get("event"), str)
                and isinstance(event.get("delivery_id"), str) and event["delivery_id"]):
            return self.answer(400, "bad JSON body: expected an object with event and delivery_id")
        delivery = event["delivery_id"]            # signed, unlike the header: the header must agree
        if self.headers.get("X-Rotator-Delivery", delivery) != delivery:
            return self.answer(400, "X-Rotator-Delivery differs from the body's delivery_id", event)
        if event["event"] not in RELOAD_EVENTS:
            return self.answer(200, "ignored: not a reload event", event)
        with self.server.lock:                # one reload at a time: a duplicate waits, then sees it done
            if delivery in done:
                return self.answer(200, "already done", event)
            problem = reload(args, event)
            if problem:
                return self.answer(500, problem, event)
            done[delivery] = None
            while len(done) > REMEMBERED:
                done.popitem(last=False)
        self.answer(200, "reloaded", event)

    def do_GET(self) -> None:
        if self.path == "/healthz":
            return self.answer(200, "ok")
        self.answer(405, "POST only")

    def answer(self, status: int, message: str, event: dict | None = None) -> None:
        about = f" event={event.get('event')} secret={event.get('secret')} delivery={event.get('delivery_id')}" \
            if event else ""
        log(f"{self.client_address[0]} {status} {message}{about}")
        data = (message + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args) -> None:  # one line per request is written by answer()
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:9465", help="HOST:PORT (port 0: any free port)")
    parser.add_argument("--secret-file", help="file holding the signing secret (else $HOOK_SIGNING_SECRET)")
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--reload-pid-file", help="send --signal to the pid in this file")
    how.add_argument("--reload-command", help='run this command, e.g. "nginx -s reload" (no shell)')
    parser.add_argument("--signal", default="HUP", help="signal for --reload-pid-file (default: HUP)")
    parser.add_argument("--reload-timeout", type=float, default=20.0, help="seconds (default: 20)")
    parser.add_argument("--once", action="store_true", help="serve one request, then exit")
    args = parser.parse_args(argv)

    if args.secret_file:
        with open(args.secret_file) as f:
            secret = f.read().strip()
    else:
        secret = os.environ.get("HOOK_SIGNING_SECRET", "").strip()
    if not secret:
        parser.error("no signing secret: give --secret-file or set HOOK_SIGNING_SECRET")
    args.secret = secret.encode()
    args.signum = getattr(signal, "SIG" + args.signal.upper().removeprefix("SIG"), None)
    if not isinstance(args.signum, signal.Signals):
        parser.error(f"--signal: unknown signal {args.signal!r}")
    host, _, port = args.listen.rpartition(":")
    if not port.isdigit():
        parser.error("--listen: expected HOST:PORT, e.g. 127.0.0.1:9465 or [::1]:9465")
    host = host.strip("[]") or "0.0.0.0"

    class Server(ThreadingHTTPServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    server = Server((host, int(port)), Handler)
    server.args, server.done, server.lock = args, OrderedDict(), threading.Lock()
    log(f"listening on {host}:{server.server_address[1]}")
    signal.signal(signal.SIGTERM, signal.default_int_handler)   # SIGTERM stops like Ctrl-C
    try:
        if args.once:
            server.handle_request()
        else:
            server.serve_forever()
    except KeyboardInterrupt:
        pass
    server.server_close()
    log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
