"""Every exchange with the issuer ends by its deadline, without a thread per exchange.

A per-read timeout never fires on a server that sends one byte a second, so an exchange is bounded
as a whole, in two parts:

* **Connecting** (name resolution, TCP, TLS handshake, a proxy's tunnel) runs on a thread of its
  own, and the exchange waits for it only until the deadline (:func:`connect_by`). Connections are
  kept alive in the pool, so this happens once per pooled connection, not per request.
* **The exchange itself** (sending, the status line, the headers, the body) runs on the caller's
  thread. A :class:`Watchdog` thread shuts down the socket of an exchange still running at its
  deadline; the blocked read then returns at once, and the exchange reports itself late.

The watchdog sleeps until the earliest deadline it holds and is woken only by an earlier one (rare:
every exchange of a wire has the same timeout). It never touches a connection that another exchange
has taken up since (``_owner``), and an exchange it cut never returns its connection to the pool.
Before this, every exchange ran on a helper thread: ~0.16 ms of CPU a request for the hand-off
(``python benchmarks/run.py --only probes``, ``issuer_request``).
"""

from __future__ import annotations

import heapq
import itertools
import math
import socket
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable


class Watch:
    """One exchange's claim: its deadline and the connection it is using."""

    __slots__ = ("deadline", "conn", "done", "cut")

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.conn: Any = None
        self.done = False
        self.cut = False


class Watchdog:
    def __init__(self, name: str) -> None:
        self._name = name
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, Watch]] = []
        self._order = itertools.count()
        self._wake_at = math.inf
        self._thread: threading.Thread | None = None
        self._closed = False
        self._local = threading.local()

    # ---- the exchange's side ---------------------------------------------------------------

    def watch(self, deadline: float) -> Watch:
        """Start watching this thread's next exchange; end with :meth:`over`."""
        watch = Watch(deadline)
        with self._cond:
            heapq.heappush(self._heap, (deadline, next(self._order), watch))
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name=f"{self._name}-watchdog",
                                                daemon=True)
                self._thread.start()
            elif deadline < self._wake_at:
                self._cond.notify()
        self._local.watch = watch
        return watch

    def current(self) -> Watch | None:
        """The watch of the exchange running on this thread, if any."""
        return getattr(self._local, "watch", None)

    def claim(self, conn: Any) -> None:
        """This thread's exchange is using ``conn`` now (it may be one another exchange used)."""
        watch = self.current()
        if watch is None:
            return
        with self._cond:
            watch.conn = conn
            conn._owner = watch

    def over(self, watch: Watch) -> bool:
        """The exchange ended; True if the watchdog cut it (its connection must not be reused)."""
        self._local.watch = None
        with self._cond:
            watch.done = True
            return watch.cut

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    # ---- the watchdog's thread ---------------------------------------------------------------

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                while self._heap and (self._heap[0][2].done or self._heap[0][0] <= now):
                    watch = heapq.heappop(self._heap)[2]
                    if not watch.done:
                        self._cut(watch)
                self._wake_at = self._heap[0][0] if self._heap else math.inf
                self._cond.wait(None if not self._heap else self._wake_at - now)
            self._thread = None

    @staticmethod
    def _cut(watch: Watch) -> None:
        watch.cut = True
        conn = watch.conn
        if conn is None or getattr(conn, "_owner", None) is not watch:
            return
        sock = getattr(conn, "sock", None)
        if sock is not None:
            try:
                socket.socket.shutdown(sock, socket.SHUT_RDWR)   # the fd itself, TLS or not
            except OSError:
                pass


class ConnectTimedOut(Exception):
    """Connecting did not finish by the deadline."""


def connect_by(deadline: float, connect: Callable[[], None], abandon: Callable[[], None],
               name: str) -> None:
    """Run ``connect`` on a thread of its own and wait for it until ``deadline``; past it, raise
    :class:`ConnectTimedOut`, and ``abandon`` runs once ``connect`` has ended (to close what it
    opened). Name resolution has no timeout of its own, and a TLS handshake reads as often as the
    server makes it."""
    box: Future[None] = Future()
    late = threading.Event()
    lock = threading.Lock()

    def run() -> None:
        try:
            connect()
            box.set_result(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller, if still there
            box.set_exception(exc)
        with lock:
            if late.is_set():
                abandon()

    threading.Thread(target=run, name=f"{name}-connect", daemon=True).start()
    try:
        box.result(timeout=max(0.0, deadline - time.monotonic()))
    except TimeoutError:
        with lock:
            if not box.done():
                late.set()
                raise ConnectTimedOut() from None
        box.result()                 # it finished while the wait ended: its own outcome
