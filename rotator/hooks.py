"""Consumer hooks: telling applications that a rotation reached an event, one delivery at a time.

A hook is an ``exec`` command (restart a deployment, refresh an ExternalSecret) or an ``http``
POST (a reload endpoint). This module only *delivers*: given a hook and a :class:`Context` it
runs the hook once and returns a :class:`Result`. When to deliver, retries with back-off, what
is recorded in the rotation record and whether a gate hook holds the revoke are the engine's
business (rotator.deliveries).

What a delivery may carry is deliberately narrow:

* an exec hook runs without a shell, in a new session (so its whole process group can be
  killed), with a *minimal* environment: a few locale/path names, the names the config lists in
  ``inherit_env``, its ``env`` and the ``ROTATOR_*`` context. rotator's own credentials
  (``AWS_*``, ``VAULT_TOKEN``, ``QUIVA_*``...) are never handed on unless named. The key value
  is never in the environment or argv; with ``pass_value`` it is written to stdin, nowhere else.
* an http hook sends the context as JSON (key ids and last 4 characters, never a value),
  signed with HMAC-SHA256 when a signing secret is configured. TLS verification is never off,
  redirects are not followed, and the URL (it may carry a token) is never logged or reported.

A delivery never outlives its timeout, and :meth:`HookRunner.stop` ends running ones promptly
(SIGTERM to the process group, SIGKILL 2 s later; an HTTP request is abandoned).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import signal
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any, Callable, Mapping, Sequence

import httpx

from rotator import __version__
from rotator.clock import SystemClock
from rotator.config import HOOK_SENDS, HookSpec
from rotator.credentials import check_reference
from rotator.errors import ConfigError, RotatorError
from rotator.models import KeyRef, Secret
from rotator.redact import MASK, redact
from rotator.timeutil import format_instant
from rotator.validation import insecure_http_problem

log = logging.getLogger("rotator.hooks")

#: Events in the order a rotation reaches them (the same as rotator.config.HOOK_EVENTS).
#: Events whose key is the new key, still in the primary: the ones ``pass_value`` passes it for
#: (other events get an empty stdin).
VALUE_EVENTS = ("staged", "deployed", "before_revoke")
EVENTS = ("staged", "deployed", "before_revoke", "revoked", "rolled_back", "failed")
SIGNATURE_HEADER = "X-Rotator-Signature"

#: What an exec hook gets from rotator's own environment without asking: enough to find programs,
#: speak the locale and reach the Kubernetes API from a pod (kubectl's in-cluster config).
BASE_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "KUBERNETES_SERVICE_HOST",
            "KUBERNETES_SERVICE_PORT")
#: Headers rotator sets itself: a configured header must not change what the receiver verifies.
RESERVED_HEADERS = ("content-type", "content-length", "host", "x-rotator-event", "x-rotator-delivery",
                    SIGNATURE_HEADER.lower())

TAIL_BYTES = 4096        # of each of stdout and stderr: enough for the last error, bounded memory
DETAIL_CHARS = 300       # of the stderr line in a Result
KILL_GRACE = 2.0         # seconds between SIGTERM and SIGKILL to a hook's process group
DRAIN_GRACE = 0.5        # after the hook exited: for its output to be read before leftovers are killed
POLL = 0.05              # how often a waiting delivery looks at the cancel event and its deadline

_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# --- what a delivery says ------------------------------------------------------------------------

def _key_json(key: KeyRef | None) -> dict[str, Any] | None:
    if key is None:
        return None
    return {"id": key.key_id, "last4": key.last4, "expires_on": format_instant(key.expires_on)}


@dataclass(frozen=True)
class Context:
    """What a hook is told about the event. Key ids and last 4 characters only, never a value."""

    event: str
    secret: str
    hook: str
    rotation_id: str | None
    attempt: int               # 1 for the first try
    at: datetime               # when the delivery is made (UTC)
    issuer: str
    targets: tuple[str, ...]   # target labels, primary first
    runner: str
    key: KeyRef | None = None       # the key the event is about (for rolled_back: the refused one)
    old_key: KeyRef | None = None   # the key it replaces (before_revoke/revoked: the one revoked)
    detail: str | None = None       # failed / rolled_back: why (already redacted)

    def __post_init__(self) -> None:
        if self.event not in EVENTS:
            raise ValueError(f"unknown hook event {self.event!r} (one of {', '.join(EVENTS)})")
        if self.attempt < 1:
            raise ValueError("attempt counts from 1")

    @property
    def delivery_id(self) -> str:
        """The same for every attempt of one (rotation, event, hook), so a receiver can tell a
        retry of a delivery it already acted on (delivery is at least once)."""
        ident = f"{self.rotation_id or '-'}:{self.event}:{self.hook}"
        return hashlib.sha256(ident.encode()).hexdigest()[:24]

    def to_json(self) -> dict[str, Any]:
        """The body of an http hook."""
        return {
            "event": self.event, "secret": self.secret, "hook": self.hook, "rotation_id": self.rotation_id,
            "delivery_id": self.delivery_id, "attempt": self.attempt, "at": format_instant(self.at),
            "issuer": self.issuer, "targets": list(self.targets), "runner": self.runner,
            "key": _key_json(self.key), "old_key": _key_json(self.old_key), "detail": self.detail,
        }

    def to_env(self) -> dict[str, str]:
        """The ``ROTATOR_*`` variables of an exec hook; empty strings for what is not known, so a
        script can test ``[ -n "$ROTATOR_OLD_KEY_ID" ]`` without ``set -u`` tripping."""
        key, old = self.key, self.old_key
        return {
            "ROTATOR_EVENT": self.event,
            "ROTATOR_SECRET": self.secret,
            "ROTATOR_HOOK": self.hook,
            "ROTATOR_ROTATION_ID": self.rotation_id or "",
            "ROTATOR_DELIVERY_ID": self.delivery_id,
            "ROTATOR_ATTEMPT": str(self.attempt),
            "ROTATOR_AT": format_instant(self.at) or "",
            "ROTATOR_ISSUER": self.issuer,
            "ROTATOR_TARGETS": ",".join(self.targets),
            "ROTATOR_RUNNER": self.runner,
            "ROTATOR_KEY_ID": (key.key_id or "") if key else "",
            "ROTATOR_KEY_LAST4": key.last4 if key else "",
            "ROTATOR_KEY_EXPIRES_ON": (format_instant(key.expires_on) or "") if key else "",
            "ROTATOR_OLD_KEY_ID": (old.key_id or "") if old else "",
            "ROTATOR_OLD_KEY_LAST4": old.last4 if old else "",
            "ROTATOR_DETAIL": self.detail or "",
        }


@dataclass(frozen=True)
class Result:
    """One delivery's outcome. ``detail`` is safe to log and record: no value, no URL."""

    ok: bool
    detail: str
    seconds: float


def sign(secret: bytes, body: bytes, timestamp: int) -> str:
    """The X-Rotator-Signature value: the timestamp is signed with the body, so a receiver that
    rejects old timestamps cannot be fed a recorded delivery again."""
    digest = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def _seconds(value: float) -> str:
    return f"{value:g}s"


def _mask(text: str, value: Secret | None) -> str:
    """redact(), and the value itself even when it is too short for the redactor to remember."""
    text = redact(text)
    if value is not None and value.reveal() in text:
        text = text.replace(value.reveal(), MASK)
    return text


# --- hooks ---------------------------------------------------------------------------------------

class Hook:
    """A configured hook. :meth:`deliver` runs it once; it never retries (the engine does)."""

    kind = ""

    def __init__(self, spec: HookSpec, where: str) -> None:
        self.name = spec.name
        self.events: tuple[str, ...] = tuple(spec.events)
        self.gate = spec.gate
        self.timeout = spec.timeout.total_seconds()
        self.backoff: timedelta = spec.backoff
        self.max_attempts = spec.max_attempts
        self.pass_value = spec.pass_value
        self.where = where
        if self.timeout <= 0:
            raise ConfigError(f"{where}.timeout: must be positive")
        unknown = [e for e in self.events if e not in EVENTS]
        if unknown or not self.events:
            raise ConfigError(f"{where}.events: expected some of {', '.join(EVENTS)}")

    def deliver(self, context: Context, value: Secret | None, cancel: threading.Event, *,
                clock: Any = None) -> Result:
        """Run once. ``value``: the new key (only an exec hook with ``pass_value`` uses it);
        ``cancel``: set when rotator shuts down; ``clock``: for signature timestamps."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{self.kind} hook {self.name}>"


# exec --------------------------------------------------------------------------------------------

class _Tail:
    """Reads a pipe to its end on a thread of its own, keeping only the last ``TAIL_BYTES``: a
    chatty hook never blocks on a full pipe, and rotator's memory stays bounded."""

    def __init__(self, pipe: IO[bytes], name: str) -> None:
        self.data = bytearray()
        self.truncated = False
        self._thread = threading.Thread(target=self._read, args=(pipe,), name=name, daemon=True)
        self._thread.start()

    def _read(self, pipe: IO[bytes]) -> None:
        with pipe:
            fd = pipe.fileno()
            while chunk := os.read(fd, 65536):
                self.data += chunk
                if len(self.data) > TAIL_BYTES:
                    del self.data[:-TAIL_BYTES]
                    self.truncated = True

    def wait(self, seconds: float) -> bool:
        """True once the pipe is at its end: nobody holds its write end any more."""
        self._thread.join(seconds)
        return not self._thread.is_alive()

    def last_line(self) -> str:
        """The last non-empty line, skipping a first line the 4 KiB cut may have split (it could
        begin with the tail of a value, which the redactor would not recognise)."""
        text = self.data.decode("utf-8", "replace")
        if self.truncated:
            cut = text.find("\n")
            if cut < 0:
                return "…" + text[-(DETAIL_CHARS - 1):].strip()
            text = text[cut + 1:]
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return lines[-1] if lines else ""


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    """Does any live (not zombie) process remain in the group? Zombies count as gone: an orphan
    is reaped by pid 1, and a container's pid 1 may never do it."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            return True
    return False


def _terminate(proc: subprocess.Popen[bytes], tails: Sequence[_Tail]) -> None:
    """SIGTERM to the hook's whole process group (its children too), SIGKILL to what is left after
    ``KILL_GRACE``; returns once the hook is reaped. Never waits long in one sleep."""
    pgid = proc.pid
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + KILL_GRACE
    while time.monotonic() < deadline:
        if proc.poll() is not None and all(t.wait(0) for t in tails) and not _group_alive(pgid):
            break
        time.sleep(POLL)
    _signal_group(pgid, signal.SIGKILL)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:     # stuck in the kernel: nothing more a signal can do
        log.warning("hook process %s did not exit after SIGKILL", proc.pid)


class ExecHook(Hook):
    """Runs ``command`` (argv, no shell) and waits for it; exit 0 is success."""

    kind = "exec"

    def __init__(self, spec: HookSpec, where: str) -> None:
        super().__init__(spec, where)
        if not spec.command or not all(isinstance(a, str) and a for a in spec.command):
            raise ConfigError(f"{where}.command: an exec hook needs a non-empty argv list")
        for name in spec.inherit_env:
            if not _ENV_NAME.match(name):
                raise ConfigError(f"{where}.inherit_env: {name!r} is not an environment variable name")
        for name, value in spec.env.items():
            if not _ENV_NAME.match(name) or "\0" in value:
                raise ConfigError(f"{where}.env: {name!r} is not a usable environment variable")
            if name.startswith("ROTATOR_"):
                raise ConfigError(f"{where}.env: {name}: ROTATOR_* variables are set by rotator")
        self.argv: tuple[str, ...] = tuple(spec.command)
        self.env: dict[str, str] = dict(spec.env)
        self.inherit_env: tuple[str, ...] = tuple(spec.inherit_env)
        self.working_dir: Path | None = spec.working_dir

    def environment(self, context: Context, environ: Mapping[str, str] | None = None) -> dict[str, str]:
        """The hook's whole environment: nothing of rotator's own unless it is harmless
        (``BASE_ENV``) or the config names it (``inherit_env``); ``ROTATOR_*`` win."""
        source = os.environ if environ is None else environ
        env = {name: source[name] for name in (*BASE_ENV, *self.inherit_env) if name in source}
        env.update(self.env)
        env.update(context.to_env())
        return env

    def deliver(self, context: Context, value: Secret | None, cancel: threading.Event, *,
                clock: Any = None) -> Result:
        started = time.monotonic()
        if self.pass_value and value is None and context.event in VALUE_EVENTS:
            return Result(False, "the key's value is not available to pass", 0.0)
        env = self.environment(context)
        if value is not None and len(value.reveal()) >= 8 and any(
                value.reveal() in part for part in (*self.argv, *env.values())):
            return Result(False, "refused: the key's value would be in the hook's argv or environment", 0.0)
        try:
            proc = _REAPER.spawn(lambda: subprocess.Popen(
                self.argv, stdin=subprocess.PIPE if self.pass_value else subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=self.working_dir, env=env,
                start_new_session=True, close_fds=True))
        except OSError as exc:
            return Result(False, f"cannot run: {_mask(str(exc), value)}"[:DETAIL_CHARS],
                          time.monotonic() - started)
        tails = (_Tail(proc.stdout, f"hook-{self.name}-out"),    # type: ignore[arg-type]
                 _Tail(proc.stderr, f"hook-{self.name}-err"))    # type: ignore[arg-type]
        try:
            if self.pass_value:
                self._feed(proc, value)     # type: ignore[arg-type]
            stopped = self._wait(proc, cancel, started)
        finally:
            if proc.returncode is None:       # stopped, timed out, or something above raised
                _terminate(proc, tails)
            _REAPER.done(proc.pid)
        if stopped is None and not all(t.wait(max(0.0, DRAIN_GRACE)) for t in tails):
            # exited, but a child it left behind still holds its output: it would hang the runner
            log.info("hook %s left processes holding its output; stopping them", self.name)
            _terminate(proc, tails)
        for tail in tails:
            tail.wait(1.0)
        seconds = time.monotonic() - started
        if stopped is not None:
            return Result(False, stopped, seconds)
        return self._result(proc.returncode, tails, value, seconds)

    @staticmethod
    def _feed(proc: subprocess.Popen[bytes], value: Secret) -> None:
        """The value and a newline on stdin, then EOF. A key fits the pipe's buffer many times
        over, so this does not block on a hook that never reads it."""
        assert proc.stdin is not None
        try:
            proc.stdin.write(value.reveal().encode() + b"\n")
        except OSError:           # the hook exited (or closed stdin) without reading: its choice
            pass
        finally:
            try:
                proc.stdin.close()
            except OSError:
                pass

    def _wait(self, proc: subprocess.Popen[bytes], cancel: threading.Event, started: float) -> str | None:
        """Wait for the hook in short steps; why it was stopped, or None when it exited."""
        deadline = started + self.timeout
        while True:
            try:
                proc.wait(timeout=POLL)
                return None
            except subprocess.TimeoutExpired:
                pass
            if cancel.is_set():
                return "stopped: shutting down"
            if time.monotonic() >= deadline:
                return f"timed out after {_seconds(self.timeout)}"

    @staticmethod
    def _result(code: int, tails: Sequence[_Tail], value: Secret | None, seconds: float) -> Result:
        how = f"exit {code}" if code >= 0 else f"killed by {_signal_name(-code)}"
        detail = f"{how} in {seconds:.1f}s"
        if code == 0:
            return Result(True, detail, seconds)
        line = tails[1].last_line() or tails[0].last_line()     # stderr; stdout when it said nothing
        if line:
            line = _mask(line, value)
            if len(line) > DETAIL_CHARS:
                line = line[:DETAIL_CHARS - 1] + "…"
            detail = f"{detail}: {line}"
        return Result(False, detail, seconds)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


# http --------------------------------------------------------------------------------------------

def _why(exc: BaseException) -> str:
    """Why a request failed, from the OS or TLS error beneath httpx's: never str(exc) of httpx's
    own errors, which may quote the URL."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"TLS verification failed: {cause.verify_message}"
        if isinstance(cause, ssl.SSLError):
            return f"TLS error: {cause.reason or type(cause).__name__}"
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
        cause = cause.__cause__ or cause.__context__
    return type(exc).__name__


class HttpHook(Hook):
    """POSTs the context as JSON; any 2xx is success. The URL and the signing secret may be
    credential references: they are resolved at the first delivery (and again after a failure),
    so a variable missing at start fails that delivery, not the daemon's start."""

    kind = "http"

    def __init__(self, spec: HookSpec, resolve: Callable[[Any, str], Secret], where: str) -> None:
        super().__init__(spec, where)
        if spec.pass_value:
            raise ConfigError(f"{where}.pass_value: an http hook is never given the value")
        if spec.url is None:
            raise ConfigError(f"{where}.url: an http hook needs a url")
        if not isinstance(spec.url, str):
            check_reference(spec.url, f"{where}.url")
        if spec.signing_secret is not None:
            check_reference(spec.signing_secret, f"{where}.signing_secret")
        for name, value in spec.headers.items():
            if not _HEADER_NAME.match(name) or any(c in value for c in "\r\n\0"):
                raise ConfigError(f"{where}.headers: {name!r} is not a valid header")
            if name.lower() in RESERVED_HEADERS:
                raise ConfigError(f"{where}.headers: {name} is set by rotator")
        self._spec_url = spec.url
        self._spec_signing = spec.signing_secret
        self.headers: dict[str, str] = dict(spec.headers)
        self.ca_cert: Path | None = spec.ca_cert
        self.insecure_http = spec.insecure_http
        self._resolve = resolve
        self._lock = threading.Lock()
        self._url: Secret | None = Secret(spec.url) if isinstance(spec.url, str) else None   # masked in logs
        self._signing: Secret | None = None
        self._tls: ssl.SSLContext | None = None

    def _prepare(self) -> tuple[Secret, Secret | None, ssl.SSLContext]:
        """URL, signing secret and TLS context, resolved once they resolve (ConfigError/
        RotatorError/OSError otherwise, retried at the next delivery)."""
        with self._lock:
            if self._url is None:
                url = self._resolve(self._spec_url, f"{self.where}.url")
                if not re.match(r"^https?://\S+$", url.reveal()):
                    raise ConfigError(f"{self.where}.url: the referenced value is not an http(s) URL")
                if not self.insecure_http and insecure_http_problem(url.reveal(), "url", HOOK_SENDS):
                    raise ConfigError(f"{self.where}.url: the referenced URL is plain http:// to a host that is"
                                      " not loopback: use https://, or set insecure_http = true if the network"
                                      " in between is trusted")
                self._url = url
            if self._signing is None and self._spec_signing is not None:
                self._signing = self._resolve(self._spec_signing, f"{self.where}.signing_secret")
            if self._tls is None:
                tls = httpx.create_ssl_context(verify=True)
                if self.ca_cert is not None:
                    try:
                        tls.load_verify_locations(cafile=str(self.ca_cert))
                    except (OSError, ssl.SSLError) as exc:
                        raise ConfigError(f"{self.where}.ca_cert: cannot load {self.ca_cert}: "
                                          f"{getattr(exc, 'strerror', None) or exc}") from None
                self._tls = tls
            return self._url, self._signing, self._tls

    def request_headers(self, context: Context, body: bytes, signing: Secret | None,
                        now: datetime) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "User-Agent": f"rotator/{__version__}",
                   "X-Rotator-Event": context.event, "X-Rotator-Delivery": context.delivery_id,
                   **self.headers}
        if signing is not None:
            headers[SIGNATURE_HEADER] = sign(signing.reveal().encode(), body, int(now.timestamp()))
        return headers

    def deliver(self, context: Context, value: Secret | None, cancel: threading.Event, *,
                clock: Any = None) -> Result:
        started = time.monotonic()
        try:
            url, signing, tls = self._prepare()
        except RotatorError as exc:
            return Result(False, redact(str(exc)), time.monotonic() - started)
        body = json.dumps(context.to_json()).encode()
        headers = self.request_headers(context, body, signing, (clock or SystemClock()).now())
        outcome: dict[str, Any] = {}
        done = threading.Event()

        def post() -> None:
            try:
                with httpx.Client(timeout=self.timeout, verify=tls, follow_redirects=False) as client:
                    outcome["status"] = client.post(url.reveal(), content=body, headers=headers).status_code
            except Exception as exc:  # noqa: BLE001 - reported as the delivery's result
                outcome["error"] = exc
            finally:
                done.set()

        # On a thread of its own so that a shutdown or the overall deadline ends the delivery at
        # once: httpx's timeout bounds each phase of the request, not the whole of it.
        threading.Thread(target=post, name=f"hook-{self.name}", daemon=True).start()
        deadline = started + self.timeout
        while not done.wait(POLL):
            if cancel.is_set():
                return Result(False, "stopped: shutting down", time.monotonic() - started)
            if time.monotonic() >= deadline:
                return Result(False, f"timed out after {_seconds(self.timeout)}", time.monotonic() - started)
        seconds = time.monotonic() - started
        if "error" in outcome:
            error = outcome["error"]
            if isinstance(error, httpx.TimeoutException):
                return Result(False, f"timed out after {_seconds(self.timeout)}", seconds)
            return Result(False, f"http hook {self.name}: {_why(error)} after {seconds:.1f}s", seconds)
        status = outcome["status"]
        return Result(200 <= status < 300, f"HTTP {status} in {seconds:.1f}s", seconds)


def build(spec: HookSpec, resolve: Callable[[Any, str], Secret], where: str) -> Hook:
    """The hook for ``spec``. Raises ConfigError for what is wrong in the config itself; what
    is missing at run time (an unset variable behind a reference) fails deliveries instead."""
    if spec.kind == "exec":
        return ExecHook(spec, where)
    if spec.kind == "http":
        return HttpHook(spec, resolve, where)
    raise ConfigError(f"{where}.kind: expected exec or http, not {spec.kind!r}")


# --- the runner ----------------------------------------------------------------------------------

NOT_RUN = "not run: shutting down"


class _OrphanReaper:
    """The image has no init: rotator runs as PID 1, and a process a hook leaves behind (a
    daemonised child, ``kubectl``'s helpers) is re-parented to it when the hook exits. As PID 1,
    rotator reaps those orphans once a second — never a hook it waits for itself: it only peeks
    (``WNOWAIT``) and leaves its own hooks to ``subprocess``, which must see their exit status."""

    def __init__(self) -> None:
        self._own: set[int] = set()
        self._lock = threading.Lock()
        self._started = False

    def spawn(self, start: Callable[[], subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
        """Start a hook's process and count it as one of ours in one breath: the reaper holds the
        same lock, so it cannot take a hook that exits at once for an orphan."""
        with self._lock:
            proc = start()
            self._own.add(proc.pid)
            if not self._started and os.getpid() == 1:
                self._started = True
                threading.Thread(target=self._loop, name="orphan-reaper", daemon=True).start()
            return proc

    def done(self, pid: int) -> None:
        with self._lock:
            self._own.discard(pid)

    def _loop(self) -> None:
        while True:
            time.sleep(1.0)
            self.reap()

    def reap(self) -> int:
        """Reap the exited children that are not a running hook; how many."""
        reaped = 0
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return reaped
            if info is None:
                return reaped
            with self._lock:
                if info.si_pid in self._own:       # a hook's own exit: subprocess collects it
                    return reaped
                try:
                    os.waitpid(info.si_pid, 0)
                    reaped += 1
                except ChildProcessError:
                    return reaped


_REAPER = _OrphanReaper()


class HookRunner:
    """Delivers hooks in parallel, at most ``concurrency`` at once across every caller: the
    secrets' worker threads share it, so a fleet rotating at once cannot fork a hundred
    ``kubectl`` processes. Never raises."""

    def __init__(self, *, concurrency: int = 4, clock: Any = None) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.concurrency = concurrency
        self.clock = clock or SystemClock()
        self._slots = threading.Semaphore(concurrency)
        self._cancel = threading.Event()
        self._active = 0
        self._idle = threading.Condition()

    def deliver(self, jobs: Sequence[tuple[Hook, Context, Secret | None]]) -> list[Result]:
        """Run every job; results in job order. The caller's thread runs the first job itself."""
        jobs = list(jobs)
        results: list[Result | None] = [None] * len(jobs)

        def run(index: int) -> None:
            results[index] = self._one(*jobs[index])

        threads = [threading.Thread(target=run, args=(i,), name=f"hook-{jobs[i][0].name}", daemon=True)
                   for i in range(1, len(jobs))]
        for thread in threads:
            thread.start()
        if jobs:
            run(0)
        for thread in threads:
            thread.join()
        return [r if r is not None else Result(False, "error: the delivery did not finish", 0.0)
                for r in results]

    def _one(self, hook: Hook, context: Context, value: Secret | None) -> Result:
        started = time.monotonic()
        with self._idle:
            self._active += 1
        try:
            result = self._run(hook, context, value, started)
            self._log(hook, context, result)
            return result
        except Exception as exc:  # noqa: BLE001 - even logging failed: still a result
            return Result(False, f"error: {type(exc).__name__}: {_mask(str(exc), value)}",
                          time.monotonic() - started)
        finally:
            with self._idle:
                self._active -= 1
                self._idle.notify_all()

    def _run(self, hook: Hook, context: Context, value: Secret | None, started: float) -> Result:
        while not self._slots.acquire(timeout=POLL):
            if self._cancel.is_set():
                return Result(False, NOT_RUN, 0.0)
        try:
            if self._cancel.is_set():
                return Result(False, NOT_RUN, 0.0)
            return hook.deliver(context, value, self._cancel, clock=self.clock)
        except Exception as exc:  # noqa: BLE001 - a hook's bug is that delivery's failure
            return Result(False, f"error: {type(exc).__name__}: {_mask(str(exc), value)}",
                          time.monotonic() - started)
        finally:
            self._slots.release()

    @staticmethod
    def _log(hook: Hook, context: Context, result: Result) -> None:
        log.info("hook %s %s for %s: %s (%s)", hook.name, context.event, context.secret,
                 "ok" if result.ok else "failed", result.detail)

    def stop(self, wait: float = 5.0) -> None:
        """Shutting down: running hooks are stopped (exec: SIGTERM to the group, SIGKILL 2 s
        later; http: abandoned), none starts. Waits up to ``wait`` seconds for the running
        deliveries to end, so the daemon does not exit before its hooks' processes are killed."""
        self._cancel.set()
        deadline = time.monotonic() + wait
        with self._idle:
            while self._active and (left := deadline - time.monotonic()) > 0:
                self._idle.wait(min(left, POLL))

    @property
    def stopped(self) -> bool:
        return self._cancel.is_set()
