"""A small threaded TCP proxy on loopback that adds a fixed delay to every request.

It knows nothing about HTTP: on each connection, the first bytes the client sends after the
server last answered start a new request turn, and that turn is held back ``delay`` seconds before
it is forwarded. For request/response protocols without pipelining (boto3, hvac, httpx all wait
for the answer before sending the next request on a connection) that is exactly "N ms per
request", like a server N ms away. Turns are counted (``requests``).

Run it as a process, so its threads do not share the benchmark's GIL::

    python benchmarks/latency_proxy.py --upstream 127.0.0.1:8200 --delay-ms 10
    # prints "listening on 127.0.0.1:<port>" and runs until SIGTERM
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import threading
import time


class LatencyProxy:
    def __init__(self, upstream: tuple[str, int], delay: float, host: str = "127.0.0.1", port: int = 0) -> None:
        self.upstream = upstream
        self.delay = delay
        self.requests = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server((host, port), backlog=128)
        self.address = self._listener.getsockname()[:2]
        self._closing = threading.Event()

    def serve_forever(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._connection, args=(client,), daemon=True).start()

    def close(self) -> None:
        self._closing.set()
        try:
            self._listener.close()
        except OSError:
            pass

    def _connection(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(self.upstream, timeout=30)
        except OSError:
            client.close()
            return
        for sock in (client, server):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(None)
        answered = threading.Event()
        answered.set()                      # the first bytes from the client start a request
        threading.Thread(target=self._pump, args=(server, client, answered, False), daemon=True).start()
        self._pump(client, server, answered, True)

    def _pump(self, source: socket.socket, sink: socket.socket, answered: threading.Event,
              requests: bool) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if requests:
                    if answered.is_set():   # a new request turn: hold it back once
                        answered.clear()
                        with self._lock:
                            self.requests += 1
                        if self.delay:
                            time.sleep(self.delay)
                else:
                    answered.set()
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="HOST:PORT to forward to")
    parser.add_argument("--delay-ms", type=float, default=10.0)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    host, _, port = args.upstream.rpartition(":")
    proxy = LatencyProxy((host or "127.0.0.1", int(port)), args.delay_ms / 1000.0, port=args.port)
    signal.signal(signal.SIGTERM, lambda *_: proxy.close())
    print(f"listening on {proxy.address[0]}:{proxy.address[1]}", flush=True)
    try:
        proxy.serve_forever()
    except KeyboardInterrupt:
        pass
    print(f"requests {proxy.requests}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
