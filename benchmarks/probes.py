"""Small measurements behind the changes proposed in docs/performance.md, each comparing what the
providers do today with the alternative, on the same servers:

* ``aws_batch``    — N ``GetSecretValue`` against ``ceil(N / 20)`` ``BatchGetSecretValue``;
* ``hvac_env``     — hvac reads with requests' per-request environment lookup (``trust_env``, the
  default) against a session whose proxies were resolved once;
* ``listing``      — one QuivaWorks key listing as the account grows (what each extra listing costs):
  the first, every entry checked, and the next, the unchanged entries taken as checked;
* ``issuer_request`` — the QuivaWorks client's CPU per request: as it is (the caller's thread, a
  watchdog bounding each answer by its deadline), with each attempt on a thread of its own (how
  the deadline was kept before), a plain ``httpx.Client.get`` (the peer's way) and a plain urllib3 pool;
* ``pool``         — whether more workers than the HTTP pools hold makes boto3/hvac drop connections;
* ``boto_user_agent`` — boto3's client CPU per request with its default User-Agent (rebuilt twice
  per request) against rotator's fixed one;
* ``file_write``   — process CPU, user and system, per file write: the peer's (atomic, not durable)
  against the file store's durable one, with 1 and 8 threads.

Wall time (``perf_counter``) and CPU (this thread's ``thread_time`` plus the server process).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

from servers import cpu_seconds

from rotator_providers.quiva import answers
from rotator_providers.quiva.issuer import LIST_PATH


def _timed(fn: Any, server_pid: int | None = None) -> dict[str, float]:
    cpu0, server0, started = time.thread_time(), cpu_seconds(server_pid) if server_pid else 0.0, time.perf_counter()
    fn()
    wall, cpu = time.perf_counter() - started, time.thread_time() - cpu0
    server = (cpu_seconds(server_pid) - server0) if server_pid else 0.0
    return {"wall_ms": round(wall * 1000, 1), "client_cpu_ms": round(cpu * 1000, 1), "server_cpu_ms": round(server * 1000, 1)}


def aws_batch(moto_url: str, moto_pid: int, count: int = 100) -> dict[str, Any]:
    import boto3

    client = boto3.client("secretsmanager", region_name="us-east-1", endpoint_url=moto_url,
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    names = [f"probe/batch/{i:04d}" for i in range(count)]
    for name in names:
        client.create_secret(Name=name, SecretString=json.dumps({"api_key": f"ms-{name}"}))
    client.get_secret_value(SecretId=names[0])                  # warm the client

    def one_by_one() -> None:
        for name in names:
            client.get_secret_value(SecretId=name, VersionStage="AWSCURRENT")

    def batched() -> None:
        got = 0
        for i in range(0, count, 20):
            got += len(client.batch_get_secret_value(SecretIdList=names[i:i + 20])["SecretValues"])
        assert got == count

    result = {"secrets": count, "get_secret_value": _timed(one_by_one, moto_pid),
              "batch_get_secret_value": _timed(batched, moto_pid)}
    client.close()
    return result


def _rotators_vault_session(vault_url: str, workers: int) -> Any:
    """The requests session rotator's Vault backend builds (providers/vault/connection.py)."""
    from rotator_providers.vault.connection import Connection
    from rotator_providers.vault.settings import VaultSettings
    from rotator.testing import provider_context

    return Connection("probe", VaultSettings(url=vault_url), provider_context(workers=workers))._new_session()


def hvac_env(vault_url: str, token: str, bao_pid: int, count: int = 300) -> dict[str, Any]:
    import hvac

    writer = hvac.Client(url=vault_url, token=token)
    writer.secrets.kv.v2.create_or_update_secret(path="probe/env", secret={"api_key": "ms-probe"})
    writer.adapter.close()

    def reads(client: Any) -> Any:
        def run() -> None:
            for _ in range(count):
                client.secrets.kv.v2.read_secret_version(path="probe/env", raise_on_deleted_version=True)
        return run

    default = hvac.Client(url=vault_url, token=token)
    resolved = hvac.Client(url=vault_url, token=token, session=_rotators_vault_session(vault_url, 1))
    connection, client = _rotators_vault_connection(vault_url, token)

    def sends() -> None:
        for _ in range(count):
            connection.send(client, "get", "/v1/secret/data/probe/env")

    for run in (reads(default), reads(resolved), sends):
        run()                                                   # warm-up
    result = {"reads": count, "requests defaults (trust_env)": _timed(reads(default), bao_pid),
              "rotator's session (environment read once)": _timed(reads(resolved), bao_pid),
              "rotator's Connection.send (the KV requests of a rotation)": _timed(sends, bao_pid),
              "environment_variables": len(os.environ)}
    default.adapter.close()
    resolved.adapter.close()
    connection.close()
    return result


def _rotators_vault_connection(vault_url: str, token: str) -> tuple[Any, Any]:
    """Rotator's Vault connection (token auth), logged in, and its hvac client."""
    from rotator_providers.vault.connection import Connection
    from rotator_providers.vault.settings import VaultSettings
    from rotator.testing import provider_context

    settings = VaultSettings(url=vault_url, auth={"method": "token", "token": {"env": "PROBE_VAULT_TOKEN"}})
    connection = Connection("probe", settings, provider_context(environ={"PROBE_VAULT_TOKEN": token}))
    return connection, connection._ready()


def listing(emulator: Any, admin_key: str, email: str, sizes: tuple[int, ...] = (10, 1000, 2000)) -> list[dict[str, Any]]:
    """One ``list_keys`` through the real issuer, as the user's key count grows."""
    from rotator.interfaces import ProviderContext
    from rotator.models import Secret

    from rotator_providers.quiva.issuer import QuivaIssuer

    context = ProviderContext(clock=_Clock(), sleep=time.sleep, resolve_credential=lambda ref, where: Secret(admin_key))
    issuer = QuivaIssuer("probe", {"base_url": emulator.url, "admin_key": {"env": "UNUSED"}}, context)
    rows = []
    have = len(emulator.keys(email))
    for size in sizes:
        while have < size:
            emulator.create_key(email, f"probe-{have}", emulator.now() - timedelta(days=1))
            have += 1
        issuer._checked = answers.Checked()                     # nothing checked yet
        issuer.client.call("list", "GET", LIST_PATH)             # warm (session)
        first = _timed(issuer.list_keys, emulator.pid)
        again = _timed(issuer.list_keys, emulator.pid)
        rows.append({"keys": size, **first, "again": again})
    issuer.close()
    return rows


def issuer_request(emulator: Any, admin_key: str, count: int = 400) -> dict[str, Any]:
    """CPU per request of ``GET /accounts/api-keys`` for a user with no keys (``admin_key``'s),
    four ways."""
    import httpx

    from rotator.interfaces import ProviderContext
    from rotator.models import Secret

    from rotator_providers.quiva.issuer import QuivaIssuer

    context = ProviderContext(clock=_Clock(), sleep=time.sleep, resolve_credential=lambda ref, where: Secret(admin_key))
    issuer = QuivaIssuer("probe", {"base_url": emulator.url, "admin_key": {"env": "UNUSED"}}, context)
    client = issuer.client

    def per_request(call: Any) -> float:
        call()
        cpu0 = time.process_time()
        for _ in range(count):
            call()
        return round((time.process_time() - cpu0) / count * 1000, 3)

    listing = lambda: client.call("list", "GET", LIST_PATH)              # noqa: E731
    found = {"as it is (watchdog, no thread per request)": per_request(listing)}
    real_attempt = client._attempt

    def on_a_thread(method: str, path: str, **request: Any) -> Any:
        """The attempt on a thread of its own, the caller waiting for it: before the watchdog."""
        box: list[Any] = []
        worker = threading.Thread(target=lambda: box.append(real_attempt(method, path, **request)))
        worker.start()
        worker.join()
        return box[0]

    client._attempt = on_a_thread
    found["a thread per attempt"] = per_request(listing)
    client._attempt = real_attempt
    token = client._token()[0]
    with httpx.Client(base_url=emulator.url, headers={"Authorization": f"Bearer {token}"}) as plain:
        found["plain httpx.Client.get"] = per_request(lambda: plain.get(LIST_PATH).json())
    import urllib3

    pool = urllib3.connection_from_url(emulator.url, maxsize=4)
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    found["plain urllib3 pool"] = per_request(
        lambda: json.loads(pool.urlopen("GET", LIST_PATH, headers=headers, retries=False).data))
    pool.close()
    issuer.close()
    return {"ms_cpu_per_request": found, "requests": count}


class _Clock:
    def now(self) -> Any:
        from datetime import datetime, timezone

        return datetime.now(timezone.utc)


def boto_user_agent(moto_url: str, rounds: int = 8, per_round: int = 60) -> dict[str, Any]:
    """Client CPU per ``GetSecretValue``: botocore's default configuration against the one rotator
    builds (``AwsClients._config``, a fixed ``user_agent``). Interleaved rounds, median and best."""
    import statistics

    import boto3
    from botocore.config import Config

    from rotator_providers.aws.session import AwsClients, AwsOptions

    keys = {"region_name": "us-east-1", "endpoint_url": moto_url,
            "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    rotators = AwsClients("probe", AwsOptions(region="us-east-1"), sleep=time.sleep,
                          on_call=lambda *_: None)._config("us-east-1")
    clients = {"defaults": boto3.client("secretsmanager", config=Config(retries={"total_max_attempts": 1}), **keys),
               "rotator": boto3.client("secretsmanager", config=rotators, **keys)}
    clients["defaults"].create_secret(Name="probe/user-agent", SecretString="{}")
    samples: dict[str, list[float]] = {name: [] for name in clients}
    for _ in range(rounds):
        for name, client in clients.items():
            cpu0 = time.thread_time()
            for _ in range(per_round):
                client.get_secret_value(SecretId="probe/user-agent")
            samples[name].append((time.thread_time() - cpu0) / per_round * 1000)
    for client in clients.values():
        client.close()
    return {name: {"median_client_cpu_ms": round(statistics.median(v), 2), "best_client_cpu_ms": round(min(v), 2)}
            for name, v in samples.items()} | {"requests": rounds * per_round}


def pool(moto_url: str, vault_url: str, token: str, workers: int = 16) -> dict[str, Any]:
    """Count urllib3's "Connection pool is full, discarding connection" warnings with ``workers``
    threads sharing one boto3 client and one hvac client: built with the libraries' defaults (both
    pools hold 10) and built as rotator builds them (pools sized to its workers)."""
    import boto3
    import hvac

    from rotator_providers.aws.session import AwsClients, AwsOptions

    class Count(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.WARNING)
            self.count = 0
            self._lock = threading.Lock()

        def emit(self, record: logging.LogRecord) -> None:
            if "pool is full" in record.getMessage():
                with self._lock:
                    self.count += 1

    def discarded(call: Any) -> int:
        handler = Count()
        logger = logging.getLogger("urllib3.connectionpool")
        logger.addHandler(handler)
        propagate, logger.propagate = logger.propagate, False
        try:
            with ThreadPoolExecutor(workers) as executor:
                list(executor.map(lambda _: call(), range(workers * 20)))
        finally:
            logger.removeHandler(handler)
            logger.propagate = propagate
        return handler.count

    keys = {"region_name": "us-east-1", "endpoint_url": moto_url,
            "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    rotators_config = AwsClients("probe", AwsOptions(region="us-east-1", workers=workers),
                                 sleep=time.sleep, on_call=lambda *_: None)._config("us-east-1")
    result: dict[str, Any] = {"workers": workers}
    for variant, sm, vault in (
            ("defaults", boto3.client("secretsmanager", **keys), hvac.Client(url=vault_url, token=token)),
            ("rotator", boto3.client("secretsmanager", config=rotators_config, **keys),
             hvac.Client(url=vault_url, token=token, session=_rotators_vault_session(vault_url, workers)))):
        sm.create_secret(Name=f"probe/pool-{variant}", SecretString="{}")
        vault.secrets.kv.v2.create_or_update_secret(path=f"probe/pool-{variant}", secret={"a": "b"})
        result[f"boto3_connections_discarded_{variant}"] = discarded(
            lambda: sm.get_secret_value(SecretId=f"probe/pool-{variant}"))
        result[f"hvac_connections_discarded_{variant}"] = discarded(
            lambda: vault.secrets.kv.v2.read_secret_version(path=f"probe/pool-{variant}",
                                                            raise_on_deleted_version=True))
        sm.close()
        vault.adapter.close()
    return result


def file_write(directory: Path, files: int = 200, rounds: int = 7) -> dict[str, Any]:
    """Process CPU (user and system) per write to one of ``files`` JSON files in one directory,
    single-threaded and with 8 threads: the peer's own write (``Peer.write``: ``mkstemp``,
    ``json.dump``, ``os.replace``: atomic, not durable) against the file store's ``deploy`` (flock, read,
    exclusive temp file, ``fsync``, rename, ``fsync`` of the directory). Rounds alternate between
    the two (the disk's own state moves the cost by several times); the median round of each.
    What the durable writes of a rotation cost on this disk, before any of rotator's own work."""
    import resource
    import statistics
    import tempfile

    from baseline import Peer

    from rotator.models import KeyRef, Secret
    from rotator.testing import provider_context
    from rotator_providers.file import FileBackend

    result: dict[str, Any] = {"files": files, "rounds": rounds}
    peers = []
    for threads in (1, 8):
        writers = {}
        for variant in ("peer", "durable"):
            where = Path(tempfile.mkdtemp(dir=directory, prefix=f"probe-{variant}-"))
            backend = FileBackend("probe", {"directory": str(where)}, provider_context())
            peer = Peer(quiva="http://127.0.0.1:9", admin_key="", files=where)     # its files only
            peers.append(peer)
            targets = [backend.target({"path": f"s{i:04d}.json"}) for i in range(files)]

            def write(part: int, round_: int, variant: str = variant, backend: Any = backend,
                      peer: Any = peer, targets: list[Any] = targets) -> None:
                for target in targets[part::threads]:
                    value = Secret(f"probe-{round_}-{target.path.name}-0123456789abcdef")
                    if variant == "peer":
                        peer.write("file", target.path.name, value.reveal())
                    else:
                        backend.deploy(target, value, None, KeyRef.of(value, rotation_id="probe"))

            for part in range(threads):                  # the files exist before anything is timed
                write(part, -1)
            writers[variant] = write
        samples: dict[str, list[tuple[float, float]]] = {variant: [] for variant in writers}
        for round_ in range(rounds):
            for variant, write in writers.items():
                usage0 = resource.getrusage(resource.RUSAGE_SELF)
                with ThreadPoolExecutor(threads) as pool:
                    list(pool.map(lambda part: write(part, round_), range(threads)))
                usage = resource.getrusage(resource.RUSAGE_SELF)
                samples[variant].append(((usage.ru_utime - usage0.ru_utime) / files * 1e6,
                                         (usage.ru_stime - usage0.ru_stime) / files * 1e6))
        for variant, got in samples.items():
            result[f"{variant}_{threads}_threads"] = {
                "user_us_per_write": round(statistics.median(u for u, _ in got)),
                "system_us_per_write": round(statistics.median(s for _, s in got))}
    for peer in peers:
        peer.close()
    return result
