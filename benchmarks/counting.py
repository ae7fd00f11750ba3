"""Counting calls three ways, so each number is checked by another:

* :class:`WireCounter` — request hooks on the HTTP stacks of this process: botocore's
  ``URLLib3Session.send`` (boto3 → moto), requests' ``HTTPAdapter.send`` (hvac → OpenBao), the
  QuivaWorks issuer's ``Urllib3Wire.exchange`` and httpx's ``Client.send`` (the peer → the QuivaWorks
  emulator), counted per destination ``host:port``. Every
  attempt is counted, retries included; the benchmark's own ``/_emulator/`` knob requests are not.
  botocore's requests are also counted per AWS operation, from their ``X-Amz-Target`` header
  (``AmazonSSM.GetParameters``, ``secretsmanager.PutSecretValue``): Secrets Manager and Parameter
  Store share one moto server, so its ``host:port`` alone cannot tell them apart.
* :class:`ProtocolCounter` — the engine's calls into the provider Protocols (``read``,
  ``write_record``, ``stage``, ``deploy``, ``issue``, ``verify``, ``list_keys``, ...), wrapped on a
  :class:`rotator.runtime.Runtime`: the unit the crash-safe minimum is written in.
* ``Runtime(on_call=...)`` (:class:`OnCall`) — what each provider reports per remote call
  (operation names such as ``PutSecretValue``, ``deploy.metadata``, ``auth``), plus the emulator's
  own ``counters()`` on the server side.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

KNOBS = "/_emulator/"
# read_many (optional, BatchReads) counts once per request however many targets it reads
BACKEND_METHODS = ("read", "read_many", "write_record", "stage", "promote", "discard_pending", "deploy")
ISSUER_METHODS = ("issue", "list_keys", "verify", "revoke")


class WireCounter:
    """HTTP requests sent by this process, per ``host:port``. ``install()`` once; ``take()`` reads
    and clears."""

    _installed = False
    _lock = threading.Lock()
    _counts: Counter[str] = Counter()
    _operations: Counter[str] = Counter()        # botocore requests by X-Amz-Target

    @classmethod
    def install(cls) -> type[WireCounter]:
        if cls._installed:
            return cls
        import botocore.httpsession
        import httpx
        import requests

        def count(url: str, operation: str | None) -> None:
            parts = urlsplit(url)
            if not parts.path.startswith(KNOBS):               # the benchmark driving the emulator
                with cls._lock:
                    cls._counts[f"{parts.hostname}:{parts.port}"] += 1
                    if operation:
                        cls._operations[operation] += 1

        def hook(original: Any, url_of: Any, operation_of: Any = None) -> Any:
            def send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
                count(str(url_of(request)), operation_of(request) if operation_of else None)
                return original(self, request, *args, **kwargs)
            return send

        botocore.httpsession.URLLib3Session.send = hook(botocore.httpsession.URLLib3Session.send, lambda r: r.url,
                                                        _aws_operation)
        # the transport adapter, not Session.send: hvac's requests pass here; the Vault backend's KV
        # requests go to the adapter's urllib3 pool (providers/vault/connection.py, Connection._urlopen)
        requests.adapters.HTTPAdapter.send = hook(requests.adapters.HTTPAdapter.send, lambda r: r.url)
        from rotator_providers.vault.connection import Connection

        urlopen = getattr(Connection, "_urlopen", None)       # (absent from trees before it)

        def counted_urlopen(self: Any, pool: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
            count(url, None)
            return urlopen(self, pool, method, url, *args, **kwargs)

        if urlopen is not None:
            Connection._urlopen = counted_urlopen   # type: ignore[method-assign]
        httpx.Client.send = hook(httpx.Client.send, lambda r: r.url)
        try:
            from rotator_providers.quiva.wire import Urllib3Wire
        except ImportError:                                    # (trees before it used httpx)
            Urllib3Wire = None
        if Urllib3Wire is not None:
            exchange = Urllib3Wire.exchange

            def counted_exchange(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
                count(self.base_url + request.target, None)
                return exchange(self, request, *args, **kwargs)

            Urllib3Wire.exchange = counted_exchange   # type: ignore[method-assign]
        cls._installed = True
        return cls

    @classmethod
    def take(cls) -> Counter[str]:
        """Requests per ``host:port`` since the last take (the per-operation counts are cleared too)."""
        return cls.take_both()[0]

    @classmethod
    def take_both(cls) -> tuple[Counter[str], Counter[str]]:
        """Requests per ``host:port``, and botocore's per operation (``AmazonSSM.GetParameters``), since
        the last take; clears both."""
        with cls._lock:
            counts, cls._counts = cls._counts, Counter()
            operations, cls._operations = cls._operations, Counter()
        return counts, operations

    @staticmethod
    def for_url(counts: Counter[str], url: str | None) -> int:
        if not url:
            return 0
        parts = urlsplit(url)
        return counts.get(f"{parts.hostname}:{parts.port}", 0)


def _aws_operation(request: Any) -> str | None:
    """``AmazonSSM.GetParameters`` / ``secretsmanager.GetSecretValue``: a botocore request's
    X-Amz-Target header (both services speak the JSON protocol, which always sends it)."""
    target = request.headers.get("X-Amz-Target")
    if isinstance(target, bytes):
        target = target.decode("ascii", "replace")
    return target or None


def aws_operations(operations: Counter[str], prefix: str) -> Counter[str]:
    """The operations of one service (``prefix``: ``"AmazonSSM."``), without the prefix."""
    return Counter({k[len(prefix):]: v for k, v in operations.items() if k.startswith(prefix)})


class OnCall:
    """``Runtime(on_call=...)``: (provider, operation, outcome) counted."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: Counter[tuple[str, str, str]] = Counter()

    def __call__(self, provider: str, operation: str, outcome: str) -> None:
        with self._lock:
            self.calls[(provider, operation, outcome)] += 1

    def take(self) -> Counter[tuple[str, str, str]]:
        with self._lock:
            calls, self.calls = self.calls, Counter()
        return calls


class ProtocolCounter:
    """Wraps the Protocol methods of a runtime's providers (in place) and counts them."""

    def __init__(self, runtime: Any) -> None:
        self._lock = threading.Lock()
        self.calls: Counter[tuple[str, str]] = Counter()
        self.seconds: Counter[tuple[str, str]] = Counter()
        self.cpu: Counter[tuple[str, str]] = Counter()
        for backend in runtime.backends.values():
            self._wrap(backend, BACKEND_METHODS)
        for issuer in runtime.issuers.values():
            self._wrap(issuer, ISSUER_METHODS)

    def _wrap(self, provider: Any, methods: tuple[str, ...]) -> None:
        for method in methods:
            original = getattr(provider, method, None)
            if original is None:
                continue

            def wrapped(*args: Any, __original: Any = original, __key: tuple[str, str] = (provider.name, method),
                        **kwargs: Any) -> Any:
                started, cpu = time.perf_counter(), time.thread_time()
                try:
                    return __original(*args, **kwargs)
                finally:
                    elapsed, used = time.perf_counter() - started, time.thread_time() - cpu
                    with self._lock:
                        self.calls[__key] += 1
                        self.seconds[__key] += elapsed
                        self.cpu[__key] += used

            setattr(provider, method, wrapped)

    def take(self) -> Counter[tuple[str, str]]:
        with self._lock:
            calls, self.calls, self.seconds, self.cpu = self.calls, Counter(), Counter(), Counter()
        return calls
