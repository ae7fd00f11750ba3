"""The first hour with rotator, as a new user meets it: the installed ``rotator`` entry point run
as a subprocess. Global options before or after every command, one exit-code scheme (2 for
every configuration, credential and usage error), no traceback for a user's mistake (``--debug``
shows one), ``review`` and its deprecated ``audit`` alias, ``demo -o json``, completion scripts
for bash, zsh and fish, a progress bar only on a terminal, and ``rotator emulator`` printing what
to configure and keeping its state across a restart."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import pytest

from rotator import cli
from tests.world import to_toml, wait_for

ROTATOR = shutil.which("rotator")
pytestmark = pytest.mark.skipif(ROTATOR is None, reason="the rotator entry point is not installed (pip install -e .)")

#: Every command that reads the configuration, with the arguments it needs.
CONFIG_COMMANDS = {
    "rotate": [], "plan": [], "status": [], "sync": [], "verify": [], "review": [], "audit": [],
    "revoke": ["web", "--compromised"], "pause": ["web"], "resume": ["web"], "daemon": [],
}
GLOBALS = [["-c", "{config}"], ["--config", "{config}"], ["--log-level", "error"], ["--log-format", "json"],
           ["--debug"], ["-q"], ["--quiet"]]


def has_check() -> bool:
    import importlib.util

    return importlib.util.find_spec("rotator.check") is not None


def rotator(*argv: str, env: dict[str, str] | None = None, timeout: float = 60, cwd: Path | None = None):
    return subprocess.run([ROTATOR, *argv], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})


def many(calls: list[tuple[str, ...]], **kwargs) -> list[subprocess.CompletedProcess]:
    """Run several command lines at once (each is its own process): keeps the matrix quick."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(lambda argv: rotator(*argv, **kwargs), calls))


def assert_user_error(result: subprocess.CompletedProcess, *expected: str) -> None:
    """Exit 2, no traceback, and stderr names what is wrong."""
    assert result.returncode == 2, (result.args, result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    for text in expected:
        assert text in result.stderr, (result.args, result.stderr)


@pytest.fixture
def cfg(world, clock, emulator, tmp_path, monkeypatch):
    """Two secrets (web, batch) in file stores, on the real clock; the config in a file that is
    named by -c in each test (ROTATOR_CONFIG unset, so a forgotten -c shows)."""
    clock.set(datetime.now(timezone.utc))
    monkeypatch.setenv("QUIVA_API_KEY", emulator.add_user("ops@example.com", role="admin"))
    monkeypatch.delenv("ROTATOR_CONFIG", raising=False)
    world.add_secret("web")
    world.add_secret("batch")
    path = tmp_path / "rotator.toml"
    path.write_text(to_toml(world.config_data()))
    world.config = path
    return world


# --- options anywhere ------------------------------------------------------------------------

@pytest.mark.parametrize("command", [*CONFIG_COMMANDS, "check", "demo", "completion", "emulator"])
def test_every_global_option_parses_the_same_before_and_after_every_command(command):
    args = {"completion": ["bash"], "demo": ["--days", "3"]}.get(command, CONFIG_COMMANDS.get(command, []))
    names = ("config", "log_level", "log_format", "debug", "quiet")
    for option in GLOBALS:
        option = [word.format(config="c.toml") for word in option]
        before = cli._parse([*option, command, *args])
        after = cli._parse([command, *args, *option])
        assert before.command == after.command == command
        assert {n: getattr(before, n) for n in names} == {n: getattr(after, n) for n in names}, option
        assert [getattr(before, n) for n in names] != [cli.GLOBAL_DEFAULTS[n] for n in names], option
    # given in both places, the one after the command wins; none given: the defaults, once
    assert cli._parse(["-c", "a.toml", "plan", "-c", "b.toml"]).config == "b.toml"
    assert {n: getattr(cli._parse([command, *args]), n) for n in names} == cli.GLOBAL_DEFAULTS
    assert cli._parse(["--log-level", "debug", command, *args]).debug is True      # implied


def test_every_command_reads_the_config_named_before_or_after_it_and_exits_2_when_missing(tmp_path):
    missing = tmp_path / "missing.toml"
    commands = {**CONFIG_COMMANDS, **({"check": []} if has_check() else {})}
    calls = []
    for command, args in commands.items():
        calls.append(("-c", str(missing), command, *args))
        calls.append((command, *args, "--config", str(missing)))
    for result in many(calls):
        assert_user_error(result, "missing.toml")


def test_options_after_the_command_take_effect(cfg):
    config = str(cfg.config)
    plan = rotator("plan", "-o", "json", "-c", config, "--log-format", "json", "--log-level", "debug")
    assert plan.returncode == 0, plan.stderr
    assert {p["secret"] for p in json.loads(plan.stdout)["plan"]} == {"web", "batch"}
    logs = [json.loads(line) for line in plan.stderr.splitlines()]
    assert logs and any(entry["level"] == "debug" for entry in logs)          # --log-level after the command
    rotate = rotator("rotate", "-o", "json", "-c", config, "--log-level", "error")
    assert rotate.returncode == 0, rotate.stderr
    assert rotate.stderr == "" and json.loads(rotate.stdout)["failed"] == 0
    status = rotator("status", "web", "--config", config, "-o", "json", "--log-level", "error")
    assert status.returncode == 0 and [s["secret"] for s in json.loads(status.stdout)["secrets"]] == ["web"]


# --- exit codes and errors ---------------------------------------------------------------------

def test_help_documents_the_exit_codes():
    result = rotator("--help")
    assert result.returncode == 0
    for line in ("0    nothing failed", "1    a run whose rotations failed", "2    configuration, credential or usage",
                 "70   internal error", "130  interrupted"):
        assert line in result.stdout, result.stdout
    assert "2    configuration, credential or usage" in rotator("rotate", "--help").stdout


@pytest.mark.parametrize("content, where, commands", [
    ('[rotator]\nlead_time = "soon"\n', "rotator.lead_time", ["rotate", "daemon", "status", "review", "pause"]),
    ('[backends.b]\ntype = "nosuch"\n', "backends.b.type", ["rotate", "daemon"]),
    ("this is = = not toml", "line 1", ["rotate", "daemon"]),
])
def test_a_bad_config_is_exit_2_with_file_and_field_in_every_command_also_rotate_and_daemon(tmp_path, content, where,
                                                                                             commands):
    path = tmp_path / "bad.toml"
    path.write_text(content)
    results = many([(command, *CONFIG_COMMANDS[command], "-c", str(path)) for command in commands])
    for result in results:
        assert_user_error(result, "bad.toml", where)


def test_a_credential_that_does_not_resolve_is_exit_2_also_for_rotate_and_daemon(cfg, monkeypatch):
    monkeypatch.delenv("QUIVA_API_KEY")
    config = str(cfg.config)
    for result in many([("rotate", "-c", config), ("daemon", "-c", config), ("status", "-c", config)], timeout=30):
        assert_user_error(result, "rotator.toml", "QUIVA_API_KEY")
    assert not (cfg.root / "store").exists()                     # nothing was done


def test_user_errors_are_one_line_without_traceback_and_debug_adds_it(cfg, tmp_path):
    config = str(cfg.config)
    not_utf8 = tmp_path / "latin1.toml"
    not_utf8.write_bytes('[rotator]\nlead_time = "14d" # café\n'.encode("latin-1"))
    results = many([
        ("plan", "--at", "next tuesday", "-c", config),
        ("plan", "-c", str(tmp_path)),                               # a directory
        ("plan", "-c", str(not_utf8)),
        ("rotate", "nope", "-c", config),
        ("review", "--issuer", "nope", "-c", config),
        ("demo", "--days", "0"),
        ("completion", "powershell"),
        ("rotate", "--metrics-file", str(tmp_path / "no" / "such" / "dir" / "rotator.prom"), "-c", config),
        ("rotate", "--pushgateway", "ftp://pushgateway", "-c", config),
    ])
    bad_at, directory, latin1, unknown_secret, unknown_issuer, days, shell, metrics, push = results
    assert_user_error(bad_at, "--at", "next tuesday", "ISO-8601")
    assert_user_error(directory, str(tmp_path))
    assert_user_error(latin1, "latin1.toml")
    assert_user_error(unknown_secret, "unknown secret(s): nope")
    assert_user_error(unknown_issuer, "unknown issuer(s): nope")
    assert_user_error(days, "--days")
    assert_user_error(shell, "powershell")
    assert_user_error(metrics, "--metrics-file", "does not exist")
    assert_user_error(push, "--pushgateway", "not an http(s) URL")
    for result in (directory, latin1, unknown_secret, unknown_issuer, metrics, push):
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    # nothing was done before those errors: no key was issued, no store written
    assert not (cfg.root / "store" / "web.json").exists()
    debug = many([("plan", "-c", str(tmp_path / "missing.toml"), "--debug"),
                  ("--log-level", "debug", "rotate", "nope", "-c", config)])
    for result in debug:
        assert result.returncode == 2 and "Traceback (most recent call last)" in result.stderr, result.stderr


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root reads a file whatever its mode: permission denied cannot happen")
def test_an_unreadable_config_is_exit_2_without_traceback(tmp_path):
    path = tmp_path / "secret.toml"
    path.write_text("[rotator]\n")
    path.chmod(0)
    assert_user_error(rotator("plan", "-c", str(path)), "secret.toml")


@pytest.mark.parametrize("command", ["plan", "rotate"])
def test_ctrl_c_is_exit_130_with_one_line(cfg, emulator, command):
    emulator.faults.set_latency(3)                  # the issuer answers slowly: the command is still waiting
    try:
        # Ctrl-C as a terminal's foreground job gets it: a test run started in the background
        # (``cmd &`` in a script, nohup) hands its children SIGINT ignored, and Python then keeps
        # ignoring it, as it should
        proc = subprocess.Popen([ROTATOR, command, "-c", str(cfg.config), "--log-level", "error"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        wait_for(lambda: sum(emulator.counters().values()), what="the request to reach the emulator")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        emulator.faults.set_latency(0)
    assert proc.returncode == 130, err
    assert err.strip() == "rotator: interrupted", err


def test_a_bug_is_exit_70_in_one_line_that_says_so_and_debug_shows_where(monkeypatch, capsys):
    def broken(args):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setitem(cli.COMMANDS, "plan", broken)
    assert cli.main(["plan"]) == cli.EX_SOFTWARE == 70
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error (a bug in rotator): ZeroDivisionError" in err and "--debug" in err
    assert cli.main(["plan", "--debug"]) == 70
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and 'raise ZeroDivisionError("division by zero")' in err


def test_a_failed_rotation_is_exit_1(cfg):
    (cfg.root / "store").mkdir(exist_ok=True)
    (cfg.root / "store" / "batch.json").write_text("{not json")          # batch's primary is corrupt
    result = rotator("rotate", "-c", str(cfg.config), "--log-level", "error")
    assert result.returncode == 1 and "1 failed" in result.stdout and "Traceback" not in result.stderr


# --- review, demo ------------------------------------------------------------------------------

def test_review_is_the_monthly_review_and_audit_a_deprecated_alias(cfg):
    config = str(cfg.config)
    assert rotator("rotate", "-c", config, "--log-level", "error").returncode == 0
    review, audit = many([("review", "-o", "json", "-c", config, "--log-level", "error"),
                          ("audit", "-o", "json", "-c", config, "--log-level", "error")])
    assert review.returncode == audit.returncode == 0, review.stderr + audit.stderr
    assert review.stderr == ""
    assert audit.stderr.strip() == ("rotator: 'audit' is deprecated, use 'review'; from the next release"
                                    " 'audit' means only the audit trail")
    mine = {k["secret"] for k in json.loads(review.stdout)["keys"] if k["role"] == "current"}
    assert mine == {"web", "batch"}
    def keys(out: str) -> list[dict]:       # "age" is counted from each process's own now
        return [{k: v for k, v in key.items() if k != "age"} for key in json.loads(out)["keys"]]
    assert keys(audit.stdout) == keys(review.stdout)
    listing = rotator("--help").stdout
    assert "review" in listing and "deprecated alias of 'review'" in listing


def test_demo_prints_json_like_every_other_command():
    result = rotator("demo", "--days", "30", "-o", "json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["days"] == 30 and data["ok"] is True
    assert data["totals"]["expired_keys"] == data["totals"]["outages"] == data["totals"]["failed_runs"] == 0
    assert {row["secret"] for row in data["secrets"]} == {"prod-web-app", "prod-batch", "staging-web", "rotator-admin"}


# --- completion ----------------------------------------------------------------------------------

def test_completion_scripts_for_bash_zsh_and_fish_are_valid(tmp_path):
    scripts = dict(zip(("bash", "zsh", "fish"), many([("completion", "bash"), ("completion", "zsh"),
                                                      ("completion", "fish")])))
    checks = {"bash": ["bash", "-n"], "zsh": ["zsh", "-n"], "fish": ["fish", "--no-execute"]}
    for shell, result in scripts.items():
        assert result.returncode == 0 and "rotator" in result.stdout and "review" in result.stdout, shell
        assert "__complete-secrets" in result.stdout
        if shutil.which(checks[shell][0]) is None:
            continue                              # bash is always here; zsh and fish when installed
        path = tmp_path / f"rotator.{shell}"
        path.write_text(result.stdout)
        check = subprocess.run([*checks[shell], str(path)], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, (shell, check.stderr)
    assert shutil.which("bash")


def test_bash_completion_completes_commands_and_the_configs_secret_names(cfg, tmp_path):
    script = tmp_path / "rotator.bash"
    script.write_text(rotator("completion", "bash").stdout)
    probe = tmp_path / "probe.sh"
    probe.write_text(f"""
source {script}
complete_line() {{ COMP_WORDS=("$@"); COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 )); COMPREPLY=(); _shtab_rotator;
                   echo "${{COMPREPLY[*]}}"; }}
complete_line rotator re
complete_line rotator -c {cfg.config} rotate ""
complete_line rotator status --config={cfg.config} w
ROTATOR_CONFIG={cfg.config} complete_line rotator pause ""
""")
    lines = subprocess.run(["bash", str(probe)], capture_output=True, text=True, timeout=30).stdout.splitlines()
    assert lines == ["review revoke resume", "web batch", "web", "web batch"], lines


def test_the_completion_helper_lists_nothing_rather_than_fail(tmp_path):
    hidden = rotator("__complete-secrets", "-c", str(tmp_path / "missing.toml"))
    assert hidden.returncode == 0 and hidden.stdout == hidden.stderr == ""
    assert "__complete-secrets" not in rotator("--help").stdout


# --- progress ------------------------------------------------------------------------------------

def run_on_terminal(*argv: str) -> tuple[int, str, bytes]:
    """``rotator ARGV`` with stderr on a pseudo-terminal (stdout a pipe): exit, stdout, what the
    terminal showed."""
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen([ROTATOR, *argv], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave,
                            env={**os.environ, "TERM": "xterm-256color", "COLUMNS": "120"})
    os.close(slave)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:                           # EIO: the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    out = proc.stdout.read().decode()
    proc.stdout.close()
    return proc.wait(timeout=60), out, shown


@pytest.mark.parametrize("command, label", [("rotate", b"rotating"), ("sync", b"syncing"),
                                            ("verify", b"verifying"), ("review", b"reviewing")])
def test_a_progress_bar_on_a_terminal_and_none_in_logs(cfg, command, label):
    config = str(cfg.config)
    code, out, shown = run_on_terminal(command, "-c", config, "--log-level", "error")
    assert code in (0, 1) and out, out                       # (verify before a rotate finds problems: 1)
    assert label in shown and b"/2" in shown, shown           # "rotating ━━━ 1/2 web"
    assert b"\x1b[" in shown                                  # drawn (and erased: transient)
    assert "\x1b[" not in out and label.decode() not in out  # stdout is the command's output only
    if command != "rotate":
        return                                # (one command is enough for what output.progress decides)
    piped = rotator(command, "-c", config, "--log-level", "error")
    assert piped.stderr == "" or "\x1b[" not in piped.stderr
    assert label.decode() not in piped.stderr
    _, _, quiet = run_on_terminal(command, "-c", config, "--log-level", "error", "--quiet")
    assert label not in quiet


# --- emulator ------------------------------------------------------------------------------------

def start_emulator(tmp_path: Path, *argv: str) -> tuple[subprocess.Popen, list[str]]:
    """``rotator emulator ARGV`` in ``tmp_path``; its stdout up to 'Stop with Ctrl-C.' (with
    --quiet: its one line)."""
    env = {k: v for k, v in os.environ.items() if k != "QUIVA_API_KEY"}
    proc = subprocess.Popen([ROTATOR, "emulator", *argv], cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if line.startswith("Stop with Ctrl-C") or "--quiet" in argv:
            return proc, lines
    proc.kill()
    raise AssertionError("the emulator did not print its welcome: " + "\n".join(lines) + proc.stderr.read())


def stop_emulator(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=10)
    assert proc.returncode == 0


def test_emulator_prints_url_key_and_a_config_that_works_and_its_state_survives_a_restart(tmp_path):
    state = tmp_path / "emulator.json"
    proc, lines = start_emulator(tmp_path, "--port", "0", "--state-file", str(state), "--log-level", "error")
    try:
        url = re.fullmatch(r"QuivaWorks emulator listening on (http://127\.0\.0\.1:\d+)", lines[0]).group(1)
        text = "\n".join(lines)
        assert f"base URL:   {url}" in text
        key = re.search(r"export QUIVA_API_KEY=(ms-\w+)", text).group(1)
        assert f"admin key:  {key}" in text
        snippet = text.split("# rotator.toml", 1)[1].split("Then, in this directory:", 1)[0]
        config = tmp_path / "rotator.toml"
        config.write_text(snippet)
        assert f'base_url = "{url}"' in snippet and 'admin_key = { env = "QUIVA_API_KEY" }' in snippet
        env = {"QUIVA_API_KEY": key}
        rotate = rotator("-c", str(config), "rotate", "--log-level", "error", env=env, cwd=tmp_path)
        assert rotate.returncode == 0, rotate.stdout + rotate.stderr
        stored = tmp_path / "rotator-secrets" / "my-app.json"
        assert stored.exists()
        wait_for(lambda: state.exists() and "my-app" in state.read_text(), what="the state file to be saved")
    finally:
        stop_emulator(proc)
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    port = url.rsplit(":", 1)[1]
    again, lines = start_emulator(tmp_path, "--port", port, "--state-file", str(state))
    try:
        text = "\n".join(lines)
        assert lines[0] == f"QuivaWorks emulator listening on {url}"
        assert f"export QUIVA_API_KEY={key}" in text and "restored" in text     # the same admin key
        verify = rotator("verify", "-c", str(config), "-o", "json", "--log-level", "error", env=env, cwd=tmp_path)
        assert verify.returncode == 0, verify.stdout + verify.stderr          # my-app's key still authenticates
        assert json.loads(verify.stdout)["secrets"][0]["ok"] is True
    finally:
        stop_emulator(again)


def test_emulator_refuses_a_broken_state_file_in_one_line(tmp_path):
    state = tmp_path / "broken.json"
    state.write_text("{not json")
    result = rotator("emulator", "--port", "0", "--state-file", str(state), timeout=20)
    assert result.returncode == 2 and "rotator emulator: --state-file" in result.stderr and "broken.json: not JSON" in result.stderr and "Traceback" not in result.stderr


def test_emulator_with_a_key_file_prints_the_file_not_the_key(tmp_path):
    proc, lines = start_emulator(tmp_path, "--port", "0", "--admin-key-file", "admin.key", "--quiet")
    stop_emulator(proc)
    assert len(lines) == 1 and lines[0].startswith("QuivaWorks emulator listening on ")
    proc, lines = start_emulator(tmp_path, "--port", "0", "--admin-key-file", "admin.key")
    stop_emulator(proc)
    key = (tmp_path / "admin.key").read_text()
    text = "\n".join(lines)
    assert key not in text and f'{{ file = "{tmp_path / "admin.key"}" }}' in text

