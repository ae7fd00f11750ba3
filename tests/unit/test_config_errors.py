"""Configuration errors: every problem found before any effect, all reported at once, one line
each naming the file and the field path (docs/configuration.md, "Errors").

Each case is a TOML text written to a file and read the way every command reads it:
``rotator.config.load(path)`` then ``Runtime(settings)``. A few cases also run the installed
``rotator`` entry point on the file and expect exit 2, the file and field named, no traceback.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rotator import config, credentials
from rotator.errors import ConfigError
from rotator.runtime import Runtime

ADMIN_ENV = "ROTATOR_TEST_ADMIN_KEY"

ISSUER = f"""
[issuers.quiva]
type = "quivaworks"
base_url = "http://127.0.0.1:9"
admin_key = {{ env = "{ADMIN_ENV}" }}
"""
BACKEND = """
[backends.local]
type = "file"
directory = "{root}/store"
"""
SECRET = """
[[secrets]]
name = "web"
issuer = "quiva"
targets = [{ backend = "local", path = "web.json" }]
"""
VALID = ISSUER + BACKEND + SECRET


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("ROTATOR_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv(ADMIN_ENV, "admin-key-for-tests-0001")


def write(tmp_path: Path, text: str | bytes, name: str = "config.toml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text.replace("{root}", str(tmp_path)))
    return path


def build(path: Path) -> Runtime:
    runtime = Runtime(config.load(path))
    runtime.close()
    return runtime


def report(path: Path) -> list[str]:
    """The lines of the one ConfigError that loading and building ``path`` raise."""
    with pytest.raises(ConfigError) as caught:
        build(path)
    return str(caught.value).splitlines()


# --- the table: one problem each, the exact line ----------------------------------------------------

CASES = [
    pytest.param(VALID.replace('directory = "{root}/store"', 'directori = "{root}/store"'),
                 ["backends.local.directori: unknown field (did you mean 'directory'?)"], id="provider-unknown-field"),
    pytest.param('[rotator]\nlead_tme = "21d"\n' + VALID,
                 ["rotator.lead_tme: unknown field (did you mean 'lead_time'?)"], id="core-unknown-field"),
    pytest.param('[rotator]\ngrace = "two days"\n' + VALID,
                 ["rotator.grace: not a duration: 'two days' (use e.g. '14d', '48h', '1h30m', '90s')"],
                 id="bad-duration"),
    pytest.param(VALID.replace('issuer = "quiva"', 'issuer = "quivaa"'),
                 ["secrets[0].issuer: unknown issuer 'quivaa' (did you mean 'quiva'? configured: quiva)"],
                 id="unknown-issuer"),
    pytest.param(VALID.replace('backend = "local"', 'backend = "locla"'),
                 ["secrets[0].targets[0].backend: unknown backend 'locla' (did you mean 'local'? configured: local)"],
                 id="unknown-backend"),
    pytest.param(VALID + SECRET.replace("web.json", "other.json"),
                 ["secrets[1].name: duplicate secret name 'web'"], id="duplicate-secret"),
    pytest.param(VALID.replace('path = "web.json"', 'path = "web/"'),
                 ["secrets[0].targets[0].path: names a directory, not a file (give a file's path, e.g."
                  " 'web/quiva.json')"], id="target-path-names-a-directory"),
    pytest.param(VALID.replace('path = "web.json"', 'pth = "web.json"'),
                 ["secrets[0].targets[0].path: Field required",
                  "secrets[0].targets[0].pth: unknown field (did you mean 'path'?)"], id="target-unknown-field"),
    pytest.param(VALID.replace('type = "file"', 'type = "flie"'),
                 ["backends.local.type: unknown backend type 'flie' (installed: aws_secrets_manager, file, ssm_parameter, vault_kv)"],
                 id="unknown-backend-type"),
    pytest.param(VALID.replace("{ env = \"" + ADMIN_ENV + "\" }", '{ backend = "vault", path = "admin" }'),
                 ["issuers.quiva.admin_key.backend: unknown backend 'vault' (configured: local)"],
                 id="backend-reference-to-no-backend"),
]


@pytest.mark.parametrize("text, expected", CASES)
def test_each_malformed_config_is_one_line_naming_the_file_and_the_field(tmp_path, text, expected):
    path = write(tmp_path, text)
    assert report(path) == [f"{path}: {line}" for line in expected]


def test_several_problems_in_one_file_are_all_reported_in_one_error(tmp_path, monkeypatch):
    """Core problems (bad duration, unknown issuer), a provider's (unknown field) and a credential
    reference's (unset variable) in one file: load() fails on the core ones and adds what the
    providers and the references' check find to the same report."""
    monkeypatch.delenv(ADMIN_ENV)
    text = ('[rotator]\ngrace = "soon"\n' + ISSUER + BACKEND.replace("directory", "directori")
            + SECRET.replace('issuer = "quiva"', 'issuer = "nope"'))
    path = write(tmp_path, text)
    assert report(path) == [
        f"{path}: rotator.grace: not a duration: 'soon' (use e.g. '14d', '48h', '1h30m', '90s')",
        f"{path}: secrets[0].issuer: unknown issuer 'nope' (configured: quiva)",
        f"{path}: backends.local.directori: unknown field (did you mean 'directory'?)",
        f"{path}: issuers.quiva.admin_key: environment variable {ADMIN_ENV} is not set",
    ]


def test_an_override_problem_comes_with_the_runtimes_findings(tmp_path, monkeypatch):
    """The file validates but a variable is refused: the report still holds the timing and the
    credential problems the runtime would have found."""
    monkeypatch.delenv(ADMIN_ENV)
    monkeypatch.setenv("ROTATOR_DAEMON__HTTP_ADRESS", ":9464")
    path = write(tmp_path, '[rotator]\nlead_time = "100d"\n' + VALID)
    assert report(path) == [
        f"{path}: ROTATOR_DAEMON__HTTP_ADRESS: daemon has no setting 'http_adress' (did you mean"
        " ROTATOR_DAEMON__HTTP_ADDRESS?)",
        f"{path}: rotator.lead_time: lead_time 100d is not shorter than the key lifetime of issuer 'quiva' (89d at"
        " the shortest): every key would be due as soon as it is issued, and every run would rotate it again"
        " (shorten lead_time)",
        f"{path}: issuers.quiva.admin_key: environment variable {ADMIN_ENV} is not set",
    ]


def test_runtime_problems_are_all_reported_together(tmp_path, monkeypatch):
    """Past load(): provider sections, targets, credentials and timing all land in one report."""
    monkeypatch.delenv(ADMIN_ENV)
    text = (ISSUER + BACKEND.replace("directory", "directori") + SECRET + """
[[secrets]]
name = "batch"
issuer = "quiva"
lead_time = "90d"
grace = "1h"
targets = [{ backend = "local", colour = "blue", path = "batch.json" }]

[alerts]
webhooks = [{ url = { file = "{root}/missing-webhook-url" } }]
""")
    path = write(tmp_path, text)
    assert report(path) == [
        f"{path}: backends.local.directori: unknown field (did you mean 'directory'?)",
        f"{path}: secrets[1].lead_time: lead_time 90d is not shorter than the key lifetime of issuer 'quiva'"
        " (89d at the shortest) (secret 'batch'): every key would be due as soon as it is issued, and every"
        " run would rotate it again (shorten lead_time)",
        f"{path}: alerts.webhooks[0].url: cannot read {tmp_path}/missing-webhook-url: No such file or directory",
        f"{path}: issuers.quiva.admin_key: environment variable {ADMIN_ENV} is not set",
    ]


# --- the file itself -------------------------------------------------------------------------------

def test_a_file_that_is_not_utf8_names_line_column_and_byte_offset(tmp_path):
    raw = VALID.replace("{root}", str(tmp_path)).encode()
    at = raw.index(b'"web"')
    path = write(tmp_path, raw[:at] + b'"w\xe9b"' + raw[at + 5:])
    line = raw[:at].count(b"\n") + 1
    column = (at + 2) - raw.rfind(b"\n", 0, at)          # the byte after '"w', counted from 1
    assert report(path) == [f"{path}: line {line}, column {column}: not UTF-8 (byte 0xe9 at offset {at + 2});"
                            " save the file as UTF-8"]


def test_a_file_that_is_not_toml_names_line_and_column_and_hints_at_quotes(tmp_path):
    path = write(tmp_path, "[rotator]\nlead_time = \"14d\"\ngrace = 48h\n")
    assert report(path) == [f'{path}: line 3, column 11: not valid TOML: expected newline or end of document'
                            ' after a statement (a text value needs quotes: grace = "...")']
    path = write(tmp_path, "[rotator]\ngrace = two days\n", "words.toml")
    assert report(path) == [f'{path}: line 2, column 9: not valid TOML: invalid value (a text value needs quotes:'
                            ' grace = "...")']
    path = write(tmp_path, "[audit]\nstdout = True\n", "boolean.toml")
    assert report(path) == [f"{path}: line 2, column 10: not valid TOML: invalid value (TOML's booleans are"
                            " lower-case: stdout = true)"]
    path = write(tmp_path, "[rotator\n", "unclosed.toml")
    assert report(path) == [f"{path}: line 1, column 9: not valid TOML: expected ']' at the end of a table"
                            " declaration"]


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    build(write(tmp_path, b"\xef\xbb\xbf" + VALID.replace("{root}", str(tmp_path)).encode()))


def test_missing_unreadable_and_directory_config_files(tmp_path):
    assert report(tmp_path / "nope.toml") == [f"{tmp_path}/nope.toml: file not found"]
    assert report(tmp_path) == [f"{tmp_path}: is a directory, not a configuration file"]


# --- timing -------------------------------------------------------------------------------------------

TIMING = [
    pytest.param('[rotator]\nlead_time = "100d"\n' + VALID,
                 ["rotator.lead_time: lead_time 100d is not shorter than the key lifetime of issuer 'quiva' (89d at"
                  " the shortest): every key would be due as soon as it is issued, and every run would rotate it"
                  " again (shorten lead_time)"], id="lead-time-beyond-lifetime"),
    pytest.param('[rotator]\nlead_time = "89d"\n' + VALID.replace("[issuers.quiva]", "[issuers.quiva]\nkey_lifetime_months = 4"),
                 [], id="a-longer-lifetime-fits"),
    pytest.param('[rotator]\ngrace = "14d"\n' + VALID,
                 ["rotator.grace: grace 14d is not shorter than lead_time 14d: a key is rotated when it has at most"
                  " lead_time left, so the old key would expire before the grace period ends (shorten grace or"
                  " lengthen lead_time)"], id="grace-not-shorter-than-lead-time"),
    pytest.param('[rotator]\ncheck_interval = "15d"\n' + VALID,
                 ["rotator.check_interval: rotator.check_interval 15d is longer than lead_time 14d: a key could come"
                  " due and expire between two checks (shorten check_interval or lengthen lead_time)"],
                 id="check-interval-longer-than-lead-time"),
    pytest.param(VALID.replace('issuer = "quiva"', 'issuer = "quiva"\nlead_time = "2d"\ngrace = "3d"'),
                 ["secrets[0].grace: grace 3d is not shorter than lead_time 2d (secret 'web'): a key is rotated when"
                  " it has at most lead_time left, so the old key would expire before the grace period ends"
                  " (shorten grace or lengthen lead_time)"], id="per-secret-grace"),
    pytest.param('[rotator]\ncheck_interval = "1d"\n' + VALID.replace('issuer = "quiva"',
                                                                       'issuer = "quiva"\nlead_time = "12h"\ngrace = "1h"'),
                 ["secrets[0].lead_time: rotator.check_interval 1d is longer than lead_time 12h (secret 'web'): a key"
                  " could come due and expire between two checks (shorten check_interval or lengthen lead_time)"],
                 id="per-secret-lead-time-under-check-interval"),
]


@pytest.mark.parametrize("text, expected", TIMING)
def test_impossible_timing_is_an_error_naming_fields_and_values(tmp_path, text, expected):
    path = write(tmp_path, text)
    if not expected:
        build(path)
        return
    assert report(path) == [f"{path}: {line}" for line in expected]


def test_inherited_timing_problems_are_reported_once_on_rotator(tmp_path):
    path = write(tmp_path, '[rotator]\nlead_time = "95d"\n' + VALID + SECRET.replace('"web"', '"batch"')
                 .replace("web.json", "batch.json"))
    lines = report(path)
    assert len(lines) == 1 and lines[0].startswith(f"{path}: rotator.lead_time: lead_time 95d is not shorter")


# --- plain http and TLS ------------------------------------------------------------------------------

def test_plain_http_to_a_remote_issuer_is_refused(tmp_path):
    path = write(tmp_path, VALID.replace("http://127.0.0.1:9", "http://quiva.internal:8787"))
    assert report(path) == [f"{path}: issuers.quiva.base_url: plain http:// to quiva.internal would send the admin"
                            " key and every new key unencrypted: use https://, or set insecure_http = true if the"
                            " network in between is trusted (it then warns at every start)"]


@pytest.mark.parametrize("url", ["http://127.0.0.1:9", "http://127.3.4.5:9", "http://[::1]:9", "http://localhost:9"])
def test_plain_http_to_loopback_needs_no_flag_and_warns_nothing(tmp_path, url):
    runtime = build(write(tmp_path, VALID.replace("http://127.0.0.1:9", url)))
    assert runtime.warnings == []


def test_insecure_http_allows_a_remote_host_and_warns_at_every_start(tmp_path, caplog):
    text = VALID.replace("http://127.0.0.1:9", "http://quiva.sidecar:8787").replace(
        "[issuers.quiva]", "[issuers.quiva]\ninsecure_http = true")
    path = write(tmp_path, text)
    expected = ("issuers.quiva: insecure_http = true: the admin key, with every new key, travels unencrypted to"
                " quiva.sidecar (http://quiva.sidecar:8787)")
    with caplog.at_level(logging.WARNING):
        first = build(path)
        second = build(path)
    assert first.warnings == second.warnings == [expected]       # every start (and `rotator check`) sees it
    assert [r.getMessage() for r in caplog.records].count(expected) == 1    # logged once per process


def test_vault_plain_http_and_verify_false_are_refused_or_warned(tmp_path):
    pytest.importorskip("hvac")
    vault = '\n[backends.vault]\ntype = "vault_kv"\nurl = "{url}"\nauth = {{ token = {{ env = "' + ADMIN_ENV + '" }} }}\n'
    path = write(tmp_path, VALID + vault.format(url="http://vault.internal:8200"))
    assert report(path) == [f"{path}: backends.vault.url: plain http:// to vault.internal would send Vault's token and"
                            " every key unencrypted: use https://, or set insecure_http = true if the network in"
                            " between is trusted (it then warns at every start)"]
    runtime = build(write(tmp_path, VALID + vault.format(url="https://vault.internal:8200") + "verify = false\n",
                          "verify.toml"))
    assert runtime.warnings == ["backends.vault: verify = false: Vault's TLS certificate is not checked, so anyone on"
                                " the path can impersonate Vault and read its token and every key; give the CA with"
                                " ca_cert instead"]


# --- credential references ------------------------------------------------------------------------------

def test_an_unset_or_empty_variable_is_named_where_it_is_referenced(tmp_path, monkeypatch):
    monkeypatch.delenv(ADMIN_ENV)
    path = write(tmp_path, VALID)
    assert report(path) == [f"{path}: issuers.quiva.admin_key: environment variable {ADMIN_ENV} is not set"]
    monkeypatch.setenv(ADMIN_ENV, "  ")
    assert report(path) == [f"{path}: issuers.quiva.admin_key: environment variable {ADMIN_ENV} is empty"]


def test_the_default_admin_key_variable_is_checked_too(tmp_path, monkeypatch):
    monkeypatch.delenv("QUIVA_API_KEY", raising=False)
    path = write(tmp_path, VALID.replace(f'admin_key = {{ env = "{ADMIN_ENV}" }}\n', ""))
    assert report(path) == [f"{path}: issuers.quiva.admin_key: environment variable QUIVA_API_KEY is not set"]


def test_missing_unreadable_and_empty_credential_files(tmp_path):
    if os.geteuid() == 0:
        unreadable_line = None                     # root reads anything: only missing and empty here
    else:
        unreadable = tmp_path / "unreadable"
        unreadable.write_text("x")
        unreadable.chmod(0)
        unreadable_line = f"hooks[0].signing_secret: cannot read {unreadable}: Permission denied"
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "empty").chmod(0o600)
    hooks = f"""
[[hooks]]
name = "reload"
kind = "http"
events = ["deployed"]
url = {{ file = "{tmp_path}/missing" }}
signing_secret = {{ file = "{tmp_path / ('unreadable' if unreadable_line else 'empty')}" }}
all_secrets = true
timeout = "1m"

[alerts]
webhooks = [{{ url = {{ file = "{tmp_path}/empty" }} }}]
"""
    path = write(tmp_path, VALID + hooks)
    expected = [f"{path}: hooks[0].url: cannot read {tmp_path}/missing: No such file or directory"]
    expected.append(f"{path}: {unreadable_line}" if unreadable_line
                    else f"{path}: hooks[0].signing_secret: {tmp_path}/empty is empty")
    expected.append(f"{path}: alerts.webhooks[0].url: {tmp_path}/empty is empty")
    assert report(path) == expected


def test_a_credential_file_others_can_read_is_warned_about_once_per_process(tmp_path, caplog):
    key = tmp_path / "admin-key"
    key.write_text("admin-key-from-a-file-0001\n")
    key.chmod(0o640)
    path = write(tmp_path, VALID.replace(f'{{ env = "{ADMIN_ENV}" }}', f'{{ file = "{key}" }}'))
    expected = (f"issuers.quiva.admin_key: the credential file {key} can be accessed by its group (mode 0640);"
                f" make it private to rotator's user: chmod 600 {key} (Kubernetes: defaultMode: 0400)")
    with caplog.at_level(logging.WARNING):
        runtime = build(path)
        assert runtime.warnings == [expected]
        assert credentials.resolve({"file": str(key)}, "issuers.quiva.admin_key").reveal() == "admin-key-from-a-file-0001"
        build(path)
    assert [r.getMessage() for r in caplog.records].count(expected) == 1
    key.chmod(0o600)
    assert build(path).warnings == []


def test_settings_built_in_code_skip_the_credential_check_unless_asked(monkeypatch, tmp_path):
    """load(data=...) (rotator demo, tests) may leave references it never uses unresolvable."""
    monkeypatch.delenv(ADMIN_ENV)
    data = {"issuers": {"quiva": {"type": "quivaworks", "base_url": "http://127.0.0.1:9",
                                  "admin_key": {"env": ADMIN_ENV}}},
            "backends": {"local": {"type": "file", "directory": str(tmp_path)}},
            "secrets": [{"name": "web", "issuer": "quiva", "targets": [{"backend": "local", "path": "w.json"}]}]}
    Runtime(config.load(data=data)).close()
    with pytest.raises(ConfigError) as caught:
        Runtime(config.load(data=data), check_references=True)
    assert str(caught.value) == f"issuers.quiva.admin_key: environment variable {ADMIN_ENV} is not set"


# --- the installed command ---------------------------------------------------------------------------------

def _rotator() -> list[str]:
    found = shutil.which("rotator")
    if found:
        return [found]
    return [sys.executable, "-c", "from rotator.cli import main; raise SystemExit(main())"]


def run_rotator(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.upper().startswith("ROTATOR_")}
    environ.update(env or {})
    return subprocess.run([*_rotator(), *args], capture_output=True, text=True, env=environ, timeout=60)


SUBPROCESS = [
    pytest.param(VALID.replace('directory = "{root}/store"', 'directori = "{root}/store"'), {ADMIN_ENV: "k"},
                 "backends.local.directori: unknown field (did you mean 'directory'?)", id="unknown-field"),
    pytest.param(VALID + "grace = 48h\n", {ADMIN_ENV: "k"}, "not valid TOML", id="not-toml"),
    pytest.param(b"[rotator]\ngrace = \"\xff\"\n", {ADMIN_ENV: "k"}, "line 2, column 10: not UTF-8", id="not-utf8"),
    pytest.param('[rotator]\nlead_time = "90d"\n' + VALID, {ADMIN_ENV: "k"},
                 "rotator.lead_time: lead_time 90d is not shorter than the key lifetime", id="timing"),
    pytest.param(VALID.replace("http://127.0.0.1:9", "http://quiva.example:80"), {ADMIN_ENV: "k"},
                 "issuers.quiva.base_url: plain http:// to quiva.example", id="plain-http"),
    pytest.param(VALID + '\n[alerts]\nwebhooks = [{ url = { env = "ROTATOR_TEST_UNSET_HOOK" } }]\n', {ADMIN_ENV: "k"},
                 "alerts.webhooks[0].url: environment variable ROTATOR_TEST_UNSET_HOOK is not set", id="credential"),
]


@pytest.mark.parametrize("text, env, expected", SUBPROCESS)
def test_the_rotator_command_exits_2_naming_file_and_field_without_a_traceback(tmp_path, text, env, expected):
    path = write(tmp_path, text)
    done = run_rotator("--config", str(path), "plan", env=env)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"{path}: " in done.stderr and expected in done.stderr, done.stderr
    assert done.stdout == ""
