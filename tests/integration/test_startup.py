"""Start-up stays light: ``rotator --help`` and a file-only ``rotator plan`` run in a fresh
interpreter without importing the AWS or Vault SDKs, the daemon's scheduler and metrics, or any
HTTP server (plan and status list each issuer's keys once, over urllib3: not even httpx).
Providers are imported only when the config names them; SDKs on the first request."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.world import to_toml

#: Never imported unless the config or the command needs them.
HEAVY = ("boto3", "botocore", "hvac", "requests", "apscheduler", "prometheus_client", "http.server",
         "socketserver", "rotator.daemon", "rotator.health", "rotator.metrics", "rotator.scheduler",
         "rotator_providers.aws", "rotator_providers.vault",
         "rotator_providers.quiva.emulator", "moto", "werkzeug", "flask", "httpx", "httpcore")

PROBE = """
import json, sys
from rotator.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
heavy = json.loads({heavy!r})
loaded = sorted(m for m in sys.modules if any(m == h or m.startswith(h + ".") for h in heavy))
print(json.dumps({{"code": code, "loaded": loaded}}), file=sys.stderr)
"""


def run_cli(*args: str, env: dict[str, str] | None = None) -> dict:
    """``rotator ARGS`` in a fresh interpreter; its exit code and the heavy modules it imported."""
    result = subprocess.run([sys.executable, "-c", PROBE.format(heavy=json.dumps(HEAVY)), *args],
                            capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})
    return json.loads(result.stderr.strip().splitlines()[-1])


def file_only_config(tmp_path: Path, count: int = 20) -> Path:
    store = tmp_path / "store"
    store.mkdir()
    for i in range(count):
        (store / f"s{i:03d}.json").write_text(json.dumps({"api_key": f"ms-{i:032x}"}) + "\n")
    data = {
        "issuers": {"quiva": {"type": "quivaworks", "base_url": "http://127.0.0.1:9",
                              "admin_key": {"env": "QUIVA_API_KEY"}}},
        "backends": {"local": {"type": "file", "directory": str(store)}},
        "secrets": [{"name": f"s{i:03d}", "issuer": "quiva", "targets": [{"backend": "local", "path": f"s{i:03d}.json"}]}
                    for i in range(count)],
    }
    path = tmp_path / "rotator.toml"
    path.write_text(to_toml(data))
    return path


def test_help_imports_no_provider_sdk_scheduler_or_server():
    probe = run_cli("--help")
    assert probe["code"] == 0
    assert probe["loaded"] == []


@pytest.mark.parametrize("command, code", [("plan", 0), ("status", 1)])
def test_a_file_only_read_command_imports_no_provider_sdk_scheduler_or_server(tmp_path, command, code):
    """(status exits 1: nothing adopted yet, and the issuer it lists is unreachable.)"""
    config = file_only_config(tmp_path)
    probe = run_cli("--config", str(config), "--log-level", "error", command, "-o", "json",
                    env={"QUIVA_API_KEY": "ms-unused", "ROTATOR_ISSUERS__QUIVA__RETRIES": "1"})
    assert probe["code"] == code
    assert probe["loaded"] == []


def test_naming_a_provider_imports_only_that_provider(tmp_path):
    config = file_only_config(tmp_path)
    config.write_text(config.read_text() + '\n[backends.vault]\ntype = "vault_kv"\nurl = "http://127.0.0.1:9"\n')
    probe = run_cli("--config", str(config), "--log-level", "error", "plan", "-o", "json",
                    env={"QUIVA_API_KEY": "ms-unused", "VAULT_TOKEN": "unused"})
    assert probe["code"] == 0
    assert "rotator_providers.vault" in probe["loaded"]
    assert not [m for m in probe["loaded"] if m.split(".")[0] in ("boto3", "botocore", "hvac", "requests")], \
        "hvac is imported on the first request, not when the backend is configured"
    assert not [m for m in probe["loaded"] if m.startswith(("rotator_providers.aws", "apscheduler", "prometheus_client"))]
