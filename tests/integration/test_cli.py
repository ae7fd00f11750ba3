"""The command line as users meet it: exit codes, config errors that name the field, the
read-only commands, and the demo."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from rotator.cli import main
from tests.world import to_toml


@pytest.fixture
def cli_world(world, clock, tmp_path, monkeypatch, emulator):
    """A world whose config lives in a file, on the real clock (the CLI builds its own runtime),
    signing in with an admin key made now (status counts an admin key close to expiry)."""
    clock.set(datetime.now(timezone.utc))
    monkeypatch.setenv("QUIVA_API_KEY", emulator.add_user("ops@example.com", role="admin"))
    world.add_secret("web")
    world.add_secret("batch")
    path = tmp_path / "rotator.toml"

    def write():
        path.write_text(to_toml(world.config_data()))
        return path

    write()
    monkeypatch.setenv("ROTATOR_CONFIG", str(path))
    world.write_config = write
    return world


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_rotate_then_status_and_plan(cli_world, capsys):
    cli_world.seed("web", age=timedelta(days=85))
    code, out, _ = run(capsys, "--log-level", "warning", "rotate")
    assert code == 0
    assert "web" in out and "changed" in out and "batch" in out        # batch bootstrapped
    assert "2 secret(s): 2 changed, 0 failed" in out

    code, out, _ = run(capsys, "status", "-o", "json")
    data = json.loads(out)
    assert code == 0 and data["unhealthy"] == 0
    states = {s["secret"]: s for s in data["secrets"]}
    assert states["web"]["health"] == "grace" and states["batch"]["health"] == "healthy"

    code, out, _ = run(capsys, "plan", "--at", "2099-01-01T00:00:00Z", "-o", "json")
    plan = {p["secret"]: p for p in json.loads(out)["plan"]}
    assert plan["web"]["next"].startswith("revoke the old key") and plan["batch"]["next"].startswith("rotate now")

    code, out, _ = run(capsys, "plan")
    assert code == 0 and "SECRET" in out and "HEALTH" in out


def test_status_exits_1_until_every_secret_is_managed_and_says_so_in_its_help(cli_world, capsys):
    code, out, _ = run(capsys, "--log-level", "error", "status")
    assert code == 1 and "unmanaged" in out                             # nothing adopted yet
    assert "2 secret(s): 2 not healthy" in out
    assert run(capsys, "--log-level", "error", "rotate")[0] == 0
    code, out, _ = run(capsys, "status")
    assert code == 0 and "2 secret(s): 0 not healthy; 1 issuer credential(s): 0 not healthy" in out
    with pytest.raises(SystemExit) as done:
        main(["status", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "exit status:" in text and "0  every secret is healthy, due, rotating or in grace" in text
    assert "2  usage or configuration error" in text


def test_a_failing_secret_exits_1_and_others_still_run(cli_world, capsys, emulator):
    cli_world.seed("web", age=timedelta(days=85))
    (cli_world.root / "app").mkdir(exist_ok=True)
    (cli_world.root / "store").mkdir(exist_ok=True)
    (cli_world.root / "store" / "batch.json").write_text("{not json")    # batch's primary is corrupt
    code, out, err = run(capsys, "--log-level", "error", "rotate")
    assert code == 1
    assert "1 failed" in out and "batch" in out and "not valid JSON" in out
    assert "web" in out and cli_world.record("web").phase.value == "grace"   # I6: web still rotated


@pytest.mark.parametrize("content, expected", [
    ('[rotator]\nlead_time = "soon"\n', "rotator.lead_time: not a duration"),
    ('[rotator]\ncolour = "blue"\n', "rotator.colour: unknown field"),
    ('[[secrets]]\nname = "x"\nissuer = "nope"\ntargets = [{ backend = "b", path = "p" }]\n',
     "secrets[0].issuer: unknown issuer 'nope'"),
    ('[issuers.q]\ntype = "quivaworks"\nadmin_key = "ms-0123456789abcdef"\n',
     "issuers.q.admin_key: key values never live in the config file"),
    ('[backends.b]\ntype = "nosuch"\n', "backends.b.type: unknown backend type 'nosuch'"),
    ('[backends.b]\ntype = "file"\nmode = "0666"\n', "backends.b"),
    ("this is = = not toml", "not valid TOML"),
])
def test_bad_config_exits_2_naming_file_and_field(tmp_path, capsys, content, expected):
    path = tmp_path / "bad.toml"
    path.write_text(content)
    code, out, err = run(capsys, "--config", str(path), "status")
    assert code == 2
    assert expected in err, err
    assert "ms-0123456789abcdef" not in err + out


def test_missing_config_file(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ROTATOR_CONFIG", raising=False)
    code, _, err = run(capsys, "status")
    assert code == 2 and "--config" in err
    code, _, err = run(capsys, "--config", str(tmp_path / "nope.toml"), "status")
    assert code == 2 and "nope.toml: file not found" in err


def test_environment_overrides_the_file(cli_world, capsys, monkeypatch):
    monkeypatch.setenv("ROTATOR_ROTATOR__LEAD_TIME", "85d")      # makes a 10-day-old key due (85d + 48h grace
    cli_world.seed("web", age=timedelta(days=10))                # still fit the 3-month key lifetime)
    code, out, _ = run(capsys, "plan", "-o", "json")
    plan = {p["secret"]: p for p in json.loads(out)["plan"]}
    assert plan["web"]["next"].startswith("adopt")
    code, out, _ = run(capsys, "--log-level", "error", "rotate", "web")
    assert code == 0 and cli_world.record("web").phase.value == "grace"


def test_unknown_secret_is_a_usage_error(cli_world, capsys):
    code, _, err = run(capsys, "rotate", "nope")
    assert code == 2 and "unknown secret(s): nope" in err


def test_demo_runs_a_year_without_expired_keys_or_outages(capsys):
    from rotator.demo import run_demo

    code = run_demo(days=200, quiet=True)
    out = capsys.readouterr().out
    assert code == 0
    assert "expired keys: 0  outages: 0  failed runs: 0" in out
    rotations = int(out.split("rotations: ")[1].split()[0])
    assert rotations >= 10


def test_help_does_not_import_heavy_modules():
    code = ("import sys; from rotator.cli import _parser\n"
            "try:\n    _parser().parse_args(['--help'])\nexcept SystemExit: pass\n"
            "heavy = [m for m in ('boto3', 'hvac', 'httpx', 'pydantic_settings', 'apscheduler',"
            " 'prometheus_client', 'http.server') if m in sys.modules]\n"
            "assert not heavy, heavy")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_demo_says_whether_it_has_a_vault_target(capsys, monkeypatch):
    import importlib.util

    from rotator.demo import run_demo

    assert run_demo(days=30) == 0
    assert "Vault target: prod-web-app's primary is KV v2 on an OpenBao dev server" in capsys.readouterr().out
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "hvac" else real(name, *a))
    assert run_demo(days=30) == 0
    assert "no Vault target: hvac is not installed" in capsys.readouterr().out
