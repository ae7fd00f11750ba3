"""``rotator check`` against real parts: the QuivaWorks emulator over HTTP, file backends, a moto
server and OpenBao. Most runs call ``cmd_check`` in this process (fast); the ones about exit codes,
a hanging store and the JSON shape run the installed ``rotator`` entry point, as users do."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import time
from datetime import datetime, timedelta, timezone

import pytest

from rotator import check
from rotator.errors import ConfigError
from tests.world import to_toml

LIST = "GET /accounts/api-keys"
WRITES = ("POST /accounts/api-key", "DELETE /accounts/api-key")


def _args(*argv: str) -> argparse.Namespace:
    """``rotator [-c FILE] check ARGV`` parsed by check's own parser, as the CLI registers it."""
    parser = argparse.ArgumentParser(prog="rotator")
    parser.add_argument("-c", "--config")
    sub = parser.add_subparsers(dest="command")
    check.add_parser(sub, lambda p: p.add_argument("-o", "--output", default="text", choices=["text", "json"]))
    return parser.parse_args(list(argv))


@pytest.fixture
def checker(world, clock, emulator, tmp_path, monkeypatch, capsys):
    """Runs ``rotator check`` on the world's config, written to a file: ``checker(*argv)`` in this
    process -> (exit, stdout, stderr); ``checker.cli(*argv)`` through the installed entry point.
    The clock is real time (check builds its own runtime on the system clock)."""
    clock.set(datetime.now(timezone.utc))
    path = tmp_path / "rotator.toml"
    monkeypatch.setenv("ROTATOR_CONFIG", str(path))

    def write() -> None:
        path.write_text(to_toml(world.config_data()))

    def run(*argv: str) -> tuple[int, str, str]:
        write()
        capsys.readouterr()
        code = check.cmd_check(_args("-c", str(path), "check", *argv))
        out, err = capsys.readouterr()
        return code, out, err

    def cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        write()
        exe = shutil.which("rotator")
        assert exe, "the rotator entry point is not installed (pip install -e .)"
        return subprocess.run([exe, "check", *argv], check=False, capture_output=True, text=True, timeout=60,
                              env=env if env is not None else dict(os.environ))

    run.cli = cli
    run.path = path
    return run


@pytest.fixture
def vault(world, openbao, vault_prefix, monkeypatch):
    """A ``vault`` backend (KV v2, root token from $VAULT_TOKEN) in the world; returns the prefix."""
    monkeypatch.setenv("VAULT_TOKEN", openbao.root_token)
    world.backends["vault"] = {"type": "vault_kv", "url": openbao.url, "timeout": "5s",
                               "auth": {"method": "token", "token": {"env": "VAULT_TOKEN"}}}
    return vault_prefix


@pytest.fixture
def aws(world, moto_url):
    world.backends["aws"] = {"type": "aws_secrets_manager", "region": "us-east-1", "endpoint_url": moto_url,
                             "max_attempts": 2}
    return moto_url


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rows(data: dict, kind: str, **match: str) -> list[dict]:
    return [r for r in data[kind] if all(r.get(k) == v for k, v in match.items())]


def finding(row: dict, name: str) -> dict:
    return next(f for f in row["findings"] if f["check"] == name)


# --- everything passes ------------------------------------------------------------------------------

def test_everything_reachable_exits_0_with_a_row_per_issuer_store_and_secret(world, checker, vault, aws):
    world.add_secret("web", targets=[{"backend": "store", "path": "web.json"},
                                     {"backend": "vault", "path": f"{vault}/web"},
                                     {"backend": "aws", "secret_id": "prod/web"}])
    world.add_secret("batch", targets=[{"backend": "aws", "secret_id": "prod/batch"},
                                       {"backend": "app", "path": "batch.json"}])
    world.add_secret("api", targets=[{"backend": "vault", "path": f"{vault}/api"}])
    world.seed("web", age=timedelta(days=10))
    assert world.rotate().exit_code == 0          # adopts web, bootstraps batch and api

    code, out, err = checker()
    assert code == 0, out + err
    lines = out.splitlines()
    assert [line.split()[0] for line in lines[:2]] == ["ISSUER", "quiva"]
    assert "ok" in lines[1].split()[-1] and "3 months" in lines[1]
    stores = [line for line in lines if line.startswith(("store ", "app ", "vault ", "aws "))]
    assert len(stores) == 6, out                   # one per target
    assert all(line.split()[-1] == "ok" for line in stores), out
    for name in ("web", "batch", "api"):
        assert any(line.startswith(f"{name} ") and line.split()[-1] == "ok" for line in lines), out
    assert "problems:" not in out
    assert "cannot tell without writing:" in out and "aws" in out.split("cannot tell without writing:")[1]
    assert out.rstrip().endswith(": ready")

    code, out, _ = checker("-o", "json")
    data = json.loads(out)
    assert code == 0 and data["ok"] is True
    assert [r["issuer"] for r in data["issuers"]] == ["quiva"]
    assert len(data["backends"]) == 6 and {r["role"] for r in data["backends"]} == {"primary", "secondary"}
    assert {r["secret"] for r in data["secrets"]} == {"web", "batch", "api"}
    vault_primary = rows(data, "backends", backend="vault", role="primary")[0]
    assert finding(vault_primary, "write")["status"] == "ok" and finding(vault_primary, "cas")["status"] == "ok"
    aws_primary = rows(data, "backends", backend="aws", role="primary")[0]
    assert finding(aws_primary, "write")["status"] == "unknown" and finding(aws_primary, "cas")["status"] == "ok"
    file_primary = rows(data, "backends", backend="store", role="primary")[0]
    assert finding(file_primary, "write")["status"] == "ok" and finding(file_primary, "cas")["status"] == "ok"
    web = rows(data, "secrets", secret="web")[0]
    assert web["phase"] == "idle" and web["last4"] and finding(web, "drift")["status"] == "ok"
    assert web["next"].startswith("rotate")
    issuer = data["issuers"][0]
    assert issuer["keys"] >= 3 and issuer["admin_key"]["health"] == "healthy"
    assert finding(issuer, "sign-in")["status"] == "ok"


# --- what fails -------------------------------------------------------------------------------------

def test_an_unreachable_issuer_exits_1_naming_it(world, checker):
    world.issuer.update(base_url=f"http://127.0.0.1:{closed_port()}", retries=2, timeout="2s")
    world.add_secret("web")
    result = checker.cli()
    assert result.returncode == 1, result.stdout + result.stderr
    assert "issuer quiva: sign-in: cannot reach http://127.0.0.1:" in result.stdout
    assert "Traceback" not in result.stderr
    issuer_line = next(line for line in result.stdout.splitlines() if line.startswith("quiva "))
    assert issuer_line.split()[1] == "FAIL" and issuer_line.split()[-1] == "FAIL"
    assert result.stdout.rstrip().endswith("not ready")


def test_a_refused_admin_key_exits_1(world, checker, monkeypatch, emulator):
    monkeypatch.setenv("QUIVA_API_KEY", "ms-" + "0" * 32)
    world.add_secret("web")
    code, out, _ = checker("-o", "json")
    data = json.loads(out)
    assert code == 1 and data["ok"] is False
    sign_in = finding(data["issuers"][0], "sign-in")
    assert sign_in["status"] == "fail" and "refused" in sign_in["detail"]
    assert "issuers.quiva.admin_key" in sign_in["detail"]
    assert "keys" not in [f["check"] for f in data["issuers"][0]["findings"]]   # no listing with a refused key
    assert emulator.counters().get(LIST, 0) == 0


def test_a_vault_token_without_write_capability_says_so(world, checker, vault, openbao, monkeypatch):
    policy = (f'path "secret/data/{vault}/*" {{ capabilities = ["read"] }}\n'
              f'path "secret/metadata/{vault}/*" {{ capabilities = ["read"] }}')
    monkeypatch.setenv("VAULT_RO_TOKEN", openbao.token(policy))
    world.backends["vault_ro"] = {**world.backends["vault"], "auth": {"token": {"env": "VAULT_RO_TOKEN"}}}
    openbao.client().secrets.kv.v2.create_or_update_secret(path=f"{vault}/web", secret={"api_key": "ms-" + "a" * 32})
    world.add_secret("web", targets=[{"backend": "vault_ro", "path": f"{vault}/web"},
                                     {"backend": "app", "path": "web.json"}])
    code, out, _ = checker()
    assert code == 1
    line = next(line for line in out.splitlines() if line.startswith("vault_ro "))
    assert line.split()[-4:] == ["key", "ok", "FAIL", "FAIL"]        # read, cas, write, result
    problem = next(line for line in out.splitlines() if "store vault_ro" in line and ": write:" in line)
    assert "no write permission" in problem and f"secret/data/{vault}/web" in problem and "'update'" in problem


def test_a_vault_backend_set_to_the_wrong_kv_version_fails(world, checker, vault):
    world.backends["vault1"] = {**world.backends["vault"], "kv_version": 1}     # secret/ is KV v2
    world.add_secret("web", targets=[{"backend": "store", "path": "web.json"},
                                     {"backend": "vault1", "path": f"{vault}/web"}])
    code, out, _ = checker("-o", "json")
    assert code == 1
    row = rows(json.loads(out), "backends", backend="vault1")[0]
    assert row["result"] == "fail"
    assert any("kv_version = 2" in f["detail"] for f in row["findings"] if f["status"] == "fail"), row


def test_an_aws_secret_missing_with_create_if_missing_false_fails(world, checker, aws):
    world.backends["aws"]["create_if_missing"] = False
    world.add_secret("web", targets=[{"backend": "store", "path": "web.json"},
                                     {"backend": "aws", "secret_id": "prod/web"}])
    world.add_secret("batch", targets=[{"backend": "aws", "secret_id": "prod/batch"}])
    code, out, _ = checker("-o", "json")
    data = json.loads(out)
    assert code == 1
    secondary = rows(data, "backends", backend="aws", secret="web")[0]
    primary = rows(data, "backends", backend="aws", secret="batch")[0]
    for row in (secondary, primary):
        assert row["result"] == "fail" and row["exists"] is False
        assert "does not exist" in finding(row, "write")["detail"]
        assert "create_if_missing is false" in finding(row, "write")["detail"]
    assert finding(primary, "cas")["status"] == "fail"
    assert rows(data, "backends", backend="store")[0]["result"] == "ok"


def test_a_primary_that_may_not_be_created_fails_the_secret(world, checker):
    world.add_secret("web", create_if_missing=False)
    code, out, _ = checker("-o", "json")
    assert code == 1
    web = json.loads(out)["secrets"][0]
    assert web["result"] == "fail" and web["health"] == "blocked"
    assert "create_if_missing is false" in finding(web, "health")["detail"]


def test_a_directory_rotator_cannot_write_fails(world, checker, tmp_path):
    if os.geteuid() == 0:
        directory = "/proc/self"          # root ignores permission bits, not procfs
        if os.access(directory, os.W_OK):
            pytest.skip("running as root and /proc/self is writable here: no directory root cannot write")
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        directory = str(locked)
    world.backends["ro"] = {"type": "file", "directory": directory}
    world.add_secret("web", targets=[{"backend": "store", "path": "web.json"}, {"backend": "ro", "path": "web.json"}])
    code, out, _ = checker()
    assert code == 1
    line = next(line for line in out.splitlines() if line.startswith("ro "))
    assert line.split()[-2:] == ["FAIL", "FAIL"]
    assert f"directory {directory} is not writable" in out


def test_an_unset_credential_variable_is_a_configuration_error(world, checker, monkeypatch):
    world.add_secret("web")
    monkeypatch.delenv("QUIVA_API_KEY")
    with pytest.raises(ConfigError, match="QUIVA_API_KEY is not set"):
        checker()
    result = checker.cli()
    assert result.returncode == 2, result.stdout + result.stderr
    assert "QUIVA_API_KEY is not set" in result.stderr and "issuers.quiva" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_a_hanging_store_does_not_hold_check_past_its_timeout(world, checker, monkeypatch):
    with socket.socket() as silent:              # accepts connections (the kernel does), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        monkeypatch.setenv("VAULT_TOKEN", "s.check-test-token")
        world.backends["slow"] = {"type": "vault_kv", "url": f"http://127.0.0.1:{silent.getsockname()[1]}",
                                  "timeout": "30s"}
        world.add_secret("web", targets=[{"backend": "slow", "path": "apps/web"}])
        started = time.monotonic()
        result = checker.cli("--timeout", "1s", "-o", "json")
        elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    assert elapsed < 10, f"check took {elapsed:.1f}s"
    data = json.loads(result.stdout)
    store = rows(data, "backends", backend="slow")[0]
    assert store["result"] == "fail" and "no answer within 1s" in store["findings"][0]["detail"]
    assert data["issuers"][0]["result"] == "ok"          # the other checks still report


def test_a_store_timeout_of_its_own_is_reported_as_unreachable(world, checker, monkeypatch):
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        monkeypatch.setenv("VAULT_TOKEN", "s.check-test-token")
        world.backends["slow"] = {"type": "vault_kv", "url": f"http://127.0.0.1:{silent.getsockname()[1]}",
                                  "timeout": "1s"}
        world.add_secret("web", targets=[{"backend": "slow", "path": "apps/web"}])
        code, out, _ = checker("-o", "json")
    assert code == 1
    store = json.loads(out)["backends"][0]
    assert "cannot reach Vault" in finding(store, "read")["detail"]


# --- warnings ---------------------------------------------------------------------------------------

def test_a_listing_that_contradicts_itself_is_flagged_not_failed(world, checker, emulator):
    world.add_secret("web")
    emulator.faults.mangle_next(1, "duplicate_entry", path=LIST)
    code, out, _ = checker("-o", "json")
    issuer = json.loads(out)["issuers"][0]
    assert code == 0 and issuer["result"] == "warn"
    keys = finding(issuer, "keys")
    assert keys["status"] == "warn" and "contradicts itself" in keys["detail"]


def test_drift_between_targets_is_a_warning_with_the_fix(world, checker):
    world.add_secret("web")
    world.seed("web", age=timedelta(days=10))
    world.rotate()
    (world.root / "app" / "web.json").write_text(json.dumps({"api_key": "ms-" + "b" * 32}))
    code, out, _ = checker()
    assert code == 0
    line = next(line for line in out.splitlines() if line.startswith("web "))
    assert "1 target(s)" in line and line.split()[-1] == "warn"
    assert "different" in out and "rotator sync --repair" in out


def test_runtime_warnings_and_insecure_http_are_shown(world, emulator):
    world.add_secret("web")
    runtime = world.runtime()
    note = "backends.store: credential file /etc/x is readable by its group"
    if isinstance(getattr(runtime, "warnings", None), list):
        runtime.warnings.append(note)
    else:
        runtime.warnings = [note]
    report = check.run_check(runtime, timeout=10)
    assert note in report.warnings and note in check.render(report)
    assert report.to_json()["warnings"] == report.warnings

    world.issuer["insecure_http"] = True
    try:
        runtime = world.runtime()
    except ConfigError:
        pytest.skip("this build's issuer settings do not take insecure_http")
    report = check.run_check(runtime, timeout=10)
    assert any("insecure_http" in w and "issuers.quiva" in w for w in report.warnings)
    assert report.issuers[0].find("transport").status == "warn"


# --- never a value, never a write -------------------------------------------------------------------

def test_no_key_value_in_any_output(world, checker, vault, aws, openbao, emulator, monkeypatch):
    world.add_secret("web", targets=[{"backend": "store", "path": "web.json"},
                                     {"backend": "vault", "path": f"{vault}/web"},
                                     {"backend": "aws", "secret_id": "prod/web"}])
    world.seed("web", age=timedelta(days=80))
    world.rotate()                                 # adopted and rotated: grace, two keys in every store
    outputs = [checker(), checker("-o", "json")]
    result = checker.cli("-o", "json")
    outputs.append((result.returncode, result.stdout, result.stderr))
    monkeypatch.setenv("QUIVA_API_KEY", "ms-" + "c" * 32)          # a refused key is not printed either
    outputs.append(checker())
    values = set(emulator.issued_values()) | {openbao.root_token, "ms-" + "c" * 32}
    assert len(values) >= 4
    for _code, out, err in outputs:
        for value in values:
            assert value not in out and value not in err
            assert value[-8:] not in out, "more than the last 4 characters shown"
    assert json.loads(outputs[1][1])["secrets"][0]["phase"] == "grace"


def test_check_writes_nothing(world, checker, vault, aws, openbao, moto_server, emulator):
    world.add_secret("web", targets=[{"backend": "store", "path": "web.json"},
                                     {"backend": "vault", "path": f"{vault}/web"},
                                     {"backend": "aws", "secret_id": "prod/web"}])
    world.add_secret("fresh", targets=[{"backend": "aws", "secret_id": "prod/fresh"},       # nothing exists yet
                                       {"backend": "vault", "path": f"{vault}/fresh"},
                                       {"backend": "app", "path": "fresh.json"}])
    world.seed("web", age=timedelta(days=80))
    world.rotate(["web"])
    client = moto_server.client()

    def state() -> dict:
        files = {str(p.relative_to(world.root)): (p.read_bytes(), p.stat().st_mtime_ns)
                 for p in sorted(world.root.rglob("*")) if p.is_file() and p.suffix != ".toml"}
        kv = {}
        for path in (f"{vault}/web", f"{vault}/fresh"):
            try:
                meta = openbao.client().secrets.kv.v2.read_secret_metadata(path=path)["data"]
                kv[path] = (meta["current_version"], meta["updated_time"], meta["custom_metadata"])
            except Exception as exc:  # noqa: BLE001 - absent
                kv[path] = type(exc).__name__
        secrets = {s["Name"]: sorted((v["VersionId"], tuple(sorted(v.get("VersionStages", ()))))
                                     for v in client.list_secret_version_ids(SecretId=s["Name"])["Versions"])
                   for s in client.list_secrets()["SecretList"]}
        return {"files": files, "vault": kv, "aws": secrets}

    before = state()
    assert "fresh.json" not in str(before["files"]) and "prod/fresh" not in before["aws"]
    emulator.reset_counters()
    code, out, err = checker()
    assert code == 0, out + err
    checker.cli()
    assert state() == before
    counters = emulator.counters()
    assert all(counters.get(write, 0) == 0 for write in WRITES), counters
    assert counters.get(LIST, 0) == 2                               # one listing per run
