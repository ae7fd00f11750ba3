"""Environment overrides (docs/configuration.md, "Environment overrides"): every documented
example, matching by the file's names, ambiguity and unknown names, JSON for lists and tables."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import pytest

from rotator import config
from rotator.errors import ConfigError
from rotator.runtime import Runtime

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "config.example.toml"
#: the example, plus a backend named "vault" for docs/backends/vault.md's example
EXTRA = '\n[backends.vault]\ntype = "vault_kv"\nurl = "https://vault.internal:8200"\n'


@pytest.fixture(autouse=True)
def _no_outside_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("ROTATOR_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("QUIVA_API_KEY", "admin-key-0001")      # what BASE's issuer signs in with


def load(tmp_path: Path, text: str, env: dict[str, str], name: str = "config.toml") -> config.Settings:
    path = tmp_path / name
    path.write_text(text)
    return config.load(path, environ=env)


def refused(tmp_path: Path, text: str, env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text, env)
    prefix = f"{tmp_path / 'config.toml'}: "
    lines = str(caught.value).splitlines()
    assert all(line.startswith(prefix) for line in lines), lines
    return [line[len(prefix):] for line in lines]


def secret(settings: config.Settings, name: str) -> config.SecretSpec:
    return next(s for s in settings.secrets if s.name == name)


def hook(settings: config.Settings, name: str) -> config.HookSpec:
    return next(h for h in settings.hooks if h.name == name)


# --- every documented example ---------------------------------------------------------------------

Check = Callable[[config.Settings], Any]

#: variable -> (value, check of the settings or the expected error line). Every ROTATOR_X__Y name
#: that README.md, config.example.toml or docs/ mention must be here (see the test after this one).
DOCUMENTED: dict[str, tuple[str, Check | str]] = {
    "ROTATOR_ROTATOR__GRACE": ("24h", lambda s: s.rotator.grace == timedelta(hours=24)),
    "ROTATOR_ISSUERS__QUIVA_PROD__BASE_URL": (
        "http://127.0.0.1:8787", lambda s: s.issuers["quiva-prod"].options()["base_url"] == "http://127.0.0.1:8787"),
    "ROTATOR_ISSUERS__QUIVA_PROD__ADMIN_KEY": (
        '{"env": "OTHER_KEY"}', lambda s: s.issuers["quiva-prod"].options()["admin_key"] == {"env": "OTHER_KEY"}),
    "ROTATOR_BACKENDS__VAULT_PROD__URL": (
        "https://vault.staging:8200", lambda s: s.backends["vault-prod"].options()["url"] == "https://vault.staging:8200"),
    "ROTATOR_BACKENDS__VAULT__URL": (
        "https://vault.other:8200", lambda s: s.backends["vault"].options()["url"] == "https://vault.other:8200"),
    "ROTATOR_SECRETS__PROD_WEB_APP__GRACE": ("72h", lambda s: secret(s, "prod-web-app").grace == timedelta(hours=72)),
    "ROTATOR_SECRETS__PROD_WEB_APP__TARGETS__1__SECRET_ID": (
        "prod/web/key", lambda s: secret(s, "prod-web-app").targets[1].options()["secret_id"] == "prod/web/key"),
    "ROTATOR_SECRETS__PROD_BATCH__TARGETS__1__PATH": (
        "batch/q.json", lambda s: secret(s, "prod-batch").targets[1].options()["path"] == "batch/q.json"),
    "ROTATOR_SECRETS__0__GRACE": ("5h", lambda s: s.secrets[0].grace == timedelta(hours=5)),
    "ROTATOR_HOOKS__OPS_RELOAD__TIMEOUT": ("20s", lambda s: hook(s, "ops-reload").timeout == timedelta(seconds=20)),
    "ROTATOR_DAEMON__HTTP_ADDRESS": ("0.0.0.0:9464", lambda s: s.daemon.http_address == "0.0.0.0:9464"),
    "ROTATOR_DAEMON__SHUTDOWN_TIMEOUT": ("10s", lambda s: s.daemon.shutdown_timeout == timedelta(seconds=10)),
    "ROTATOR_AUDIT__PATH": ("/var/log/rotator/audit.jsonl",
                            lambda s: s.audit.path == Path("/var/log/rotator/audit.jsonl")),
    "ROTATOR_ALERTS__ESCALATE_AT": ('["7d","3d"]', lambda s: s.alerts.escalate_at == [timedelta(days=7),
                                                                                       timedelta(days=3)]),
    "ROTATOR_ALERTS__ESCALATE_AT__0": ("10d", lambda s: s.alerts.escalate_at[0] == timedelta(days=10)),
    "ROTATOR_ALERTS__WEBHOOKS": ('[{"url": {"env": "HOOK_URL"}}]',
                                lambda s: [w.url for w in s.alerts.webhooks] == [{"env": "HOOK_URL"}]),
    "ROTATOR_ALERTS__WEBHOOKS__0__URL": ("https://alerts.example/one",
                                         lambda s: s.alerts.webhooks[0].url == "https://alerts.example/one"),
    # the documented errors
    "ROTATOR_ISSUERS__QUIVA_PRD__BASE_URL": (
        "http://127.0.0.1:8787", "ROTATOR_ISSUERS__QUIVA_PRD__BASE_URL: QUIVA_PRD names no issuer in the file (issuers:"
        " iam-ci-deployer, quiva-prod, quiva-staging); did you mean QUIVA_PROD ('quiva-prod')?"),
    "ROTATOR_ROTATOR__GRAC": ("24h", "ROTATOR_ROTATOR__GRAC: rotator has no setting 'grac' (did you mean"
                                     " ROTATOR_ROTATOR__GRACE?)"),
    "ROTATOR_SECRETS__PROD_WEB_APP__GRAC": (
        "24h", "ROTATOR_SECRETS__PROD_WEB_APP__GRAC: secrets[1] has no setting 'grac' (did you mean"
               " ROTATOR_SECRETS__PROD_WEB_APP__GRACE?)"),
    "ROTATOR_ISSUERS__A_B__URL": (
        "https://x.example", "ROTATOR_ISSUERS__A_B__URL: A_B matches both issuers 'a-b' and 'a.b'; rename one of"
                             " them to override it from the environment"),
}

#: the documented examples that need names the example config does not have
NEEDS = {"ROTATOR_ISSUERS__A_B__URL": '\n[issuers.a-b]\ntype = "quivaworks"\n\n[issuers."a.b"]\ntype = "quivaworks"\n'}


def documented_names() -> set[str]:
    found = set()
    for path in [ROOT / "README.md", EXAMPLE, *sorted((ROOT / "docs").rglob("*.md"))]:
        found |= set(re.findall(r"ROTATOR_[A-Z0-9_]*?__[A-Z0-9_]*[A-Z0-9]", path.read_text()))
    return found


def test_every_override_the_docs_show_is_tested_here():
    # ("ROTATOR_ISSUER__…" in the docs stands for any misspelt section: tested below)
    assert documented_names() - {"ROTATOR_ISSUER__"} <= set(DOCUMENTED), sorted(documented_names() - set(DOCUMENTED))


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_documented_example(tmp_path, name):
    value, expected = DOCUMENTED[name]
    text = EXAMPLE.read_text() + EXTRA + NEEDS.get(name, "")
    if callable(expected):
        settings = load(tmp_path, text, {name: value})
        assert expected(settings)
        where = settings._origins
        assert list(where.values()) == [name]
    else:   # (the example's other references do not resolve here: only the variable's line counts)
        assert [line for line in refused(tmp_path, text, {name: value}) if line.startswith("ROTATOR_")] == [expected]


def test_the_example_headers_overrides_all_at_once(tmp_path):
    """config.example.toml's header lines, as written there (value quoting included)."""
    header = EXAMPLE.read_text().split("\n[", 1)[0]
    env = {}
    for name, value in re.findall(r"^#\s+(ROTATOR_\w+)=(\S+)", header, re.M):
        env[name] = value.strip("'")
    assert len(env) == 6, env
    settings = load(tmp_path, EXAMPLE.read_text(), env)
    assert settings.rotator.grace == timedelta(hours=24)
    assert settings.issuers["quiva-prod"].options()["base_url"] == "http://127.0.0.1:8787"
    assert secret(settings, "prod-web-app").grace == timedelta(hours=72)
    assert secret(settings, "prod-batch").targets[1].options()["path"] == "batch/q.json"
    assert settings.alerts.escalate_at == [timedelta(days=7), timedelta(days=3)]
    assert settings.daemon.http_address == "0.0.0.0:9464"


# --- matching ----------------------------------------------------------------------------------------

BASE = """
[issuers.quiva-prod]
type = "quivaworks"
base_url = "http://127.0.0.1:9"
retries = 6

[backends.local]
type = "file"
directory = "/tmp/rotator-env-test"
create_if_missing = true

[[secrets]]
name = "1"
issuer = "quiva-prod"
targets = [{ backend = "local", path = "one.json" }]

[[secrets]]
name = "prod-web-app"
issuer = "quiva-prod"
targets = [{ backend = "local", path = "web.json" }]
"""


def test_names_with_dashes_and_dots_are_matched_as_the_file_spells_them(tmp_path):
    settings = load(tmp_path, BASE, {"ROTATOR_ISSUERS__QUIVA_PROD__BASE_URL": "https://api.quiva.ai",
                                     "rotator_secrets__prod_web_app__grace": "3h"})     # any case
    assert settings.issuers["quiva-prod"].options()["base_url"] == "https://api.quiva.ai"
    assert secret(settings, "prod-web-app").grace == timedelta(hours=3)
    assert set(settings.issuers) == {"quiva-prod"}                 # nothing was created beside it


def test_a_name_matching_two_entries_is_an_error_naming_both(tmp_path):
    text = BASE + '\n[backends.a-b]\ntype = "file"\n\n[backends."a.b"]\ntype = "file"\n'
    assert refused(tmp_path, text, {"ROTATOR_BACKENDS__A_B__MODE": "0600"}) == [
        "ROTATOR_BACKENDS__A_B__MODE: A_B matches both backends 'a-b' and 'a.b'; rename one of them to override it"
        " from the environment"]


def test_an_entry_name_that_is_also_an_index_is_ambiguous(tmp_path):
    assert refused(tmp_path, BASE, {"ROTATOR_SECRETS__1__GRACE": "1h"}) == [
        "ROTATOR_SECRETS__1__GRACE: 1 matches both the entry named '1' (0) and the entry at index 1 of secrets;"
        " use the other one's name or index"]
    settings = load(tmp_path, BASE, {"ROTATOR_SECRETS__0__GRACE": "1h"})      # no entry is named "0"
    assert secret(settings, "1").grace == timedelta(hours=1)


def test_names_that_match_nothing_are_errors_with_a_suggestion(tmp_path):
    assert refused(tmp_path, BASE, {
        "ROTATOR_SECRETS__PROD_WEB__GRACE": "1h",
        "ROTATOR_SECRETS__7__GRACE": "1h",
        "ROTATOR_BACKENDS__LOCAL2__MODE": "0600",
        "ROTATOR_DAEMON__HTTP_ADRESS": ":9464",
        "ROTATOR_ALERT__TIMEOUT": "5s",
    }) == [
        # shallow variables first, then by name
        "ROTATOR_ALERT__TIMEOUT: ALERT is not a section of the configuration (sections: rotator, issuers, backends,"
        " secrets, hooks, daemon, audit, alerts) (did you mean ROTATOR_ALERTS__...?)",
        "ROTATOR_DAEMON__HTTP_ADRESS: daemon has no setting 'http_adress' (did you mean ROTATOR_DAEMON__HTTP_ADDRESS?)",
        "ROTATOR_BACKENDS__LOCAL2__MODE: LOCAL2 names no backend in the file (backends: local); did you mean LOCAL"
        " ('local')?",
        "ROTATOR_SECRETS__7__GRACE: 7 names no secret of secrets (1, prod-web-app; indexes 0 to 1)",
        "ROTATOR_SECRETS__PROD_WEB__GRACE: PROD_WEB names no secret of secrets (1, prod-web-app; indexes 0 to 1);"
        " did you mean PROD_WEB_APP?",
    ]


def test_known_settings_are_created_but_issuers_and_entries_never_are(tmp_path):
    settings = load(tmp_path, BASE, {"ROTATOR_DAEMON__HTTP_ADDRESS": "0.0.0.0:9464",     # no [daemon] in BASE
                                     "ROTATOR_ROTATOR__LEAD_TIME": "21d",
                                     "ROTATOR_SECRETS__PROD_WEB_APP__FIELD": "token"})
    assert settings.daemon.http_address == "0.0.0.0:9464" and settings.rotator.lead_time == timedelta(days=21)
    assert secret(settings, "prod-web-app").field == "token"
    assert refused(tmp_path, BASE, {"ROTATOR_ISSUERS__QUIVA_STAGING__TYPE": "quivaworks"}) == [
        "ROTATOR_ISSUERS__QUIVA_STAGING__TYPE: QUIVA_STAGING names no issuer in the file (issuers: quiva-prod)"]
    assert refused(tmp_path, BASE, {"ROTATOR_SECRETS__BATCH__ISSUER": "quiva-prod"}) == [
        "ROTATOR_SECRETS__BATCH__ISSUER: BATCH names no secret of secrets (1, prod-web-app; indexes 0 to 1)"]


def test_variables_that_are_not_overrides_are_left_alone(tmp_path):
    settings = load(tmp_path, BASE, {"ROTATOR_CONFIG": "/elsewhere.toml", "ROTATOR_EVENT": "deployed",
                                     "ROTATOR_SECRET": "web", "ROTATOR_DELIVERY_ID": "d-1", "ROTATORX__Y": "1"})
    assert settings._origins == {}


# --- values ------------------------------------------------------------------------------------------

def test_provider_settings_take_the_type_of_the_files_value(tmp_path):
    settings = load(tmp_path, BASE, {"ROTATOR_ISSUERS__QUIVA_PROD__RETRIES": "2",
                                     "ROTATOR_BACKENDS__LOCAL__CREATE_IF_MISSING": "false",
                                     "ROTATOR_BACKENDS__LOCAL__MODE": "0640",
                                     "ROTATOR_ISSUERS__QUIVA_PROD__RATE_LIMIT": "2.5",     # not in the file
                                     "ROTATOR_ISSUERS__QUIVA_PROD__VERIFY_WITH": "agents"})
    quiva, local = settings.issuers["quiva-prod"].options(), settings.backends["local"].options()
    assert quiva["retries"] == 2 and quiva["rate_limit"] == 2.5 and quiva["verify_with"] == "agents"
    assert local["create_if_missing"] is False and local["mode"] == "0640"


def test_lists_and_tables_are_json(tmp_path):
    settings = load(tmp_path, BASE, {
        "ROTATOR_ALERTS__ESCALATE_AT": '["7d", "3d"]',
        "ROTATOR_SECRETS__PROD_WEB_APP__TARGETS": '[{"backend": "local", "path": "elsewhere.json"}]',
        "ROTATOR_ROTATOR__WINDOW": '{"days": "mon-fri", "start": "09:00", "end": "17:00"}',
    })
    assert settings.alerts.escalate_at == [timedelta(days=7), timedelta(days=3)]
    assert secret(settings, "prod-web-app").targets[0].options() == {"path": "elsewhere.json"}
    assert settings.rotator.window is not None and settings.rotator.window.days == "mon-fri"
    # a value that takes a string as well as a table stays a string when it is not JSON
    settings = load(tmp_path, BASE, {"ROTATOR_ROTATOR__WINDOW": "always",
                                     "ROTATOR_DAEMON__HTTP_ADDRESS": "[::1]:9464"})
    assert settings.rotator.window is None and settings.daemon.http_address == "[::1]:9464"


def test_a_list_given_without_json_or_broken_json_is_refused(tmp_path):
    assert refused(tmp_path, BASE, {"ROTATOR_ALERTS__ESCALATE_AT": "7d",
                                    "ROTATOR_ALERTS__WEBHOOKS": '[{"url": }]'}) == [
        "ROTATOR_ALERTS__ESCALATE_AT: expects a list, given as JSON, e.g. '[\"7d\", \"3d\"]'",
        "ROTATOR_ALERTS__WEBHOOKS: not valid JSON (Expecting value at column 10); a list or a table is given as"
        " JSON, e.g. '[\"7d\", \"3d\"]'",
    ]


def test_a_bad_value_names_the_field_and_the_variable_that_set_it(tmp_path):
    assert refused(tmp_path, BASE, {"ROTATOR_ROTATOR__GRACE": "soon"}) == [
        "rotator.grace: not a duration: 'soon' (use e.g. '14d', '48h', '1h30m', '90s') (set by ROTATOR_ROTATOR__GRACE)"]


def test_a_provider_setting_set_by_a_variable_is_checked_by_the_provider(tmp_path):
    settings = load(tmp_path, BASE, {"ROTATOR_ISSUERS__QUIVA_PROD__RETRYS": "2"})
    with pytest.raises(ConfigError) as caught:
        Runtime(settings)
    assert str(caught.value) == (f"{tmp_path / 'config.toml'}: issuers.quiva-prod.retrys: unknown field"
                                 " (did you mean 'retries'?) (set by ROTATOR_ISSUERS__QUIVA_PROD__RETRYS)")


def test_overrides_and_file_problems_are_reported_together(tmp_path):
    text = BASE.replace("retries = 6", "retries = 6\ntimeout = \"ten seconds\"").replace(
        'issuer = "quiva-prod"\ntargets = [{ backend = "local", path = "one.json" }]',
        'issuer = "quiva-prd"\ntargets = [{ backend = "local", path = "one.json" }]')
    assert refused(tmp_path, text, {"ROTATOR_ROTATOR__GRAC": "1h"}) == [
        "ROTATOR_ROTATOR__GRAC: rotator has no setting 'grac' (did you mean ROTATOR_ROTATOR__GRACE?)",
        "secrets[0].issuer: unknown issuer 'quiva-prd' (did you mean 'quiva-prod'? configured: quiva-prod)",
        "issuers.quiva-prod.timeout: not a duration: 'ten seconds' (use e.g. '14d', '48h', '1h30m', '90s')",
    ]


def test_configs_built_in_code_take_overrides_unless_told_not_to(monkeypatch):
    monkeypatch.setenv("ROTATOR_ROTATOR__GRACE", "5h")
    assert config.load(data={}).rotator.grace == timedelta(hours=5)
    assert config.load(data={}, environ={}).rotator.grace == timedelta(hours=48)
    monkeypatch.setenv("ROTATOR_ROTATOR__GRAC", "5h")
    with pytest.raises(ConfigError, match=r"^<embedded>: ROTATOR_ROTATOR__GRAC: rotator has no setting 'grac'"):
        config.load(data={})
    with pytest.raises(ConfigError, match=r"^environment: ROTATOR_ROTATOR__GRAC: "):   # Settings(...) outside load
        config.Settings()


# --- the installed command ---------------------------------------------------------------------------------

def run_rotator(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [shutil.which("rotator")] if shutil.which("rotator") else [
        sys.executable, "-c", "from rotator.cli import main; raise SystemExit(main())"]
    environ = {k: v for k, v in os.environ.items() if not k.upper().startswith("ROTATOR_")}
    environ.update(env)
    return subprocess.run([*command, "--config", str(path), "plan"], capture_output=True, text=True,
                          env=environ, timeout=60)


def test_the_rotator_command_names_the_bad_override_and_exits_2(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(BASE)
    done = run_rotator(path, {"QUIVA_API_KEY": "admin-key-0001",
                              "ROTATOR_ISSUERS__QUIVA_PRD__BASE_URL": "https://x.example",
                              "ROTATOR_ISSUERS__QUIVA_PROD__BASE_URL": "http://quiva.example:8787"})
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"{path}: ROTATOR_ISSUERS__QUIVA_PRD__BASE_URL: QUIVA_PRD names no issuer" in done.stderr
    assert (f"{path}: issuers.quiva-prod.base_url: plain http:// to quiva.example would send the admin key"
            in done.stderr and "(set by ROTATOR_ISSUERS__QUIVA_PROD__BASE_URL)" in done.stderr), done.stderr
