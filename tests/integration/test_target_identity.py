"""Issue 13, path 2: two ``[[secrets]]`` that list one place (a copy-paste slip) would overwrite
each other's key and rotation record, so the configuration is refused when it loads, naming both
secrets and the target. Places are compared by what a target addresses, not by how the config
spells it: a file's resolved path; AWS endpoint + account selector + region + name (an ARN meets
its name); Vault server + namespace/mount/path.

Building a Runtime does no network I/O, so none of these tests needs a server.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from rotator import config
from rotator.cli import main
from rotator.errors import ConfigError
from rotator.runtime import Runtime
from tests.world import to_toml

ISSUER = {"quiva": {"type": "quivaworks", "base_url": "http://127.0.0.1:9",
                    "admin_key": {"env": "QUIVA_API_KEY"}}}
ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/web/quiva-AbCdEf"
ROLE_A = "arn:aws:iam::123456789012:role/rotator"
ROLE_B = "arn:aws:iam::210987654321:role/rotator"


@pytest.fixture(autouse=True)
def _quiet_aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The AWS backend falls back to these variables, as botocore does: keep them out."""
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
                 "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_SECRETS_MANAGER"):
        monkeypatch.delenv(name, raising=False)


def data(backends: dict[str, dict[str, Any]], *targets: list[dict[str, Any]],
         issuers: dict[str, Any] | None = None) -> dict[str, Any]:
    """A config with one secret per ``targets`` list: web, batch, cron, ..."""
    names = ["web", "batch", "cron", "jobs", "api", "admin"]
    return {
        "issuers": issuers or ISSUER,
        "backends": backends,
        "secrets": [{"name": names[i], "issuer": "quiva", "targets": entries}
                    for i, entries in enumerate(targets)],
    }


def build(settings: dict[str, Any]) -> Runtime:
    runtime = Runtime(config.load(data=settings))
    runtime.close()
    return runtime


def refused(settings: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        build(settings)
    return str(caught.value)


def clash(message: str, later: str, earlier: str) -> bool:
    """``message`` reports that secret ``later`` uses a target ``earlier`` already uses."""
    return any(f"({later}) and " in line and f"({earlier}) both use the target" in line
               for line in message.splitlines())


# --- file -------------------------------------------------------------------------------------

@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    (root / "a").mkdir(parents=True)
    (root / "b.json").write_text('{"api_key": ""}\n')
    (tmp_path / "link").symlink_to(root, target_is_directory=True)
    return root


@pytest.mark.parametrize("spelling", ["b.json", "./b.json", "a/../b.json", "ABSOLUTE", "LINKED"])
def test_file_spellings_of_one_file_collide(store: Path, spelling: str) -> None:
    path = {"ABSOLUTE": str(store / "b.json"), "LINKED": str(store.parent / "link" / "b.json")}.get(spelling, spelling)
    message = refused(data({"local": {"type": "file", "directory": str(store)}},
                           [{"backend": "local", "path": "b.json"}],
                           [{"backend": "local", "path": path}]))
    here, there = f"local:{os.path.abspath(store / path)}", f"local:{store / 'b.json'}"
    spelled = "" if here == there else f", written there as {there}"
    assert message.splitlines() == [
        f"secrets[1] (batch) and secrets[0] (web) both use the target {here}"
        f" (targets[0] and targets[0]{spelled}); a target belongs to one secret"
    ]


def test_file_backends_with_different_directories_reaching_one_file_collide(store: Path) -> None:
    message = refused(data({"here": {"type": "file", "directory": str(store)},
                            "there": {"type": "file", "directory": str(store.parent / "link" / "a")}},
                           [{"backend": "here", "path": "b.json"}],
                           [{"backend": "there", "path": "../b.json"}]))
    assert clash(message, "batch", "web")
    assert "here:" in message and "there:" in message


def test_file_different_files_do_not_collide(store: Path) -> None:
    runtime = build(data({"local": {"type": "file", "directory": str(store)}},
                         [{"backend": "local", "path": "b.json"}],
                         [{"backend": "local", "path": "a/b.json"}],
                         [{"backend": "local", "path": "c.json"}]))
    assert [s.name for s in runtime.secrets] == ["web", "batch", "cron"]


def test_file_target_equality_and_hash_are_unchanged(store: Path) -> None:
    from rotator_providers.file import FileTarget

    one, two = FileTarget(store / "b.json", "api_key"), FileTarget(store / "a" / ".." / "b.json", "api_key")
    assert one != two and len({one, two}) == 2          # dict keys keep their meaning
    assert one.addresses == two.addresses == frozenset({("file", os.path.realpath(store / "b.json"))})


def test_one_secret_listing_one_file_twice_is_refused(store: Path) -> None:
    message = refused(data({"local": {"type": "file", "directory": str(store)}},
                           [{"backend": "local", "path": "b.json"},
                            {"backend": "local", "path": str(store.parent / "link" / "b.json")}]))
    assert message == (f"secrets[0] (web) lists the target local:{store.parent / 'link' / 'b.json'} twice"
                       f" (targets[1] and targets[0], written there as local:{store / 'b.json'});"
                       " a target belongs to one secret")


def test_one_secret_listing_the_same_spelling_twice_keeps_its_message(store: Path) -> None:
    message = refused(data({"local": {"type": "file", "directory": str(store)}},
                           [{"backend": "local", "path": "b.json"}, {"backend": "local", "path": "b.json"}]))
    assert "secrets[0].targets: the same target is listed twice" in message


# --- AWS Secrets Manager ------------------------------------------------------------------------

def sm(**settings: Any) -> dict[str, Any]:
    return {"type": "aws_secrets_manager", "region": "us-east-1", **settings}


@pytest.mark.parametrize("first, second", [
    ({"secret_id": "prod/web/quiva"}, {"secret_id": "prod/web/quiva"}),
    ({"secret_id": "prod/web/quiva"}, {"secret_id": "prod/web/quiva", "region": "us-east-1"}),
    ({"secret_id": "prod/web/quiva"}, {"secret_id": ARN}),                          # suffixed ARN
    ({"secret_id": "prod/web/quiva-AbCdEf"}, {"secret_id": ARN}),                   # its full name
    ({"secret_id": "prod/web/quiva"}, {"secret_id": ARN.removesuffix("-AbCdEf")}),  # partial ARN
    ({"secret_id": "prod/web/quiva", "region": "eu-west-1"},
     {"secret_id": "prod/web/quiva", "region": "eu-west-1", "replica": True}),    # the replica's region
])
def test_aws_spellings_of_one_secret_collide(first: dict[str, Any], second: dict[str, Any]) -> None:
    message = refused(data({"aws": sm()}, [{"backend": "aws", **first}], [{"backend": "aws", **second}]))
    assert clash(message, "batch", "web"), message
    assert len(message.splitlines()) == 1


def test_aws_backends_with_the_same_place_collide() -> None:
    """Two backends that talk to the same endpoint as the same role are one place; the endpoint
    compares by scheme, host and port, whatever the case, default port or trailing slash."""
    message = refused(data({"one": sm(endpoint_url="http://LocalHost:4566/", role_arn=ROLE_A),
                            "two": sm(endpoint_url="http://localhost:4566", role_arn=ROLE_A, region="eu-west-1")},
                           [{"backend": "one", "secret_id": "prod/web/quiva"}],
                           [{"backend": "two", "secret_id": "prod/web/quiva", "region": "us-east-1"}]))
    assert message == ("secrets[1] (batch) and secrets[0] (web) both use the target two:us-east-1/prod/web/quiva"
                       " (targets[0] and targets[0], written there as one:us-east-1/prod/web/quiva);"
                       " a target belongs to one secret")


def test_aws_profile_from_the_environment_is_the_profile_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_PROFILE", "prod")
    message = refused(data({"one": sm(profile="prod"), "two": sm()},
                           [{"backend": "one", "secret_id": "prod/web/quiva"}],
                           [{"backend": "two", "secret_id": "prod/web/quiva"}]))
    assert clash(message, "batch", "web")


@pytest.mark.parametrize("backends, first, second", [
    ({"aws": sm()}, {"secret_id": "prod/web/quiva"}, {"secret_id": "prod/web/quiva", "region": "eu-west-1"}),
    ({"aws": sm()}, {"secret_id": "prod/web/quiva"}, {"secret_id": "prod/web/other"}),
    ({"aws": sm()}, {"secret_id": "prod/web/quiva"},
     {"secret_id": "prod/web/quiva", "region": "eu-west-1", "replica": True}),      # a replica elsewhere
    ({"aws": sm()}, {"secret_id": ARN}, {"secret_id": ARN.replace("us-east-1", "us-west-2")}),
    ({"aws": sm(role_arn=ROLE_A), "other": sm(role_arn=ROLE_B)},
     {"secret_id": "prod/web/quiva"}, {"backend": "other", "secret_id": "prod/web/quiva"}),
    ({"aws": sm(role_arn=ROLE_A), "other": sm()},
     {"secret_id": "prod/web/quiva"}, {"backend": "other", "secret_id": "prod/web/quiva"}),
    ({"aws": sm(profile="prod"), "other": sm(profile="staging")},
     {"secret_id": "prod/web/quiva"}, {"backend": "other", "secret_id": "prod/web/quiva"}),
    ({"aws": sm(endpoint_url="http://127.0.0.1:4566"), "other": sm(endpoint_url="http://127.0.0.1:4567")},
     {"secret_id": "prod/web/quiva"}, {"backend": "other", "secret_id": "prod/web/quiva"}),
    ({"aws": sm(endpoint_url="http://127.0.0.1:4566"), "other": sm()},
     {"secret_id": "prod/web/quiva"}, {"backend": "other", "secret_id": "prod/web/quiva"}),
])
def test_aws_different_places_do_not_collide(backends: dict[str, Any], first: dict[str, Any],
                                             second: dict[str, Any]) -> None:
    runtime = build(data(backends, [{"backend": "aws", **first}], [{"backend": "aws", **second}]))
    assert len(runtime.secrets) == 2


def test_aws_one_name_in_several_regions_of_one_secret_is_fine() -> None:
    runtime = build(data({"aws": sm()}, [{"backend": "aws", "secret_id": "prod/web/quiva"},
                                         {"backend": "aws", "secret_id": "prod/web/quiva", "region": "eu-west-1"}]))
    assert len(runtime.secrets[0].targets) == 2


def test_aws_target_equality_and_hash_are_unchanged() -> None:
    from rotator_providers.aws.sm_config import SecretsManagerTarget, place_of

    one = SecretsManagerTarget("prod/web/quiva", "us-east-1", "api_key", place=place_of(None, ROLE_A, None))
    two = SecretsManagerTarget("prod/web/quiva", "us-east-1", "api_key", place=place_of(None, ROLE_B, None))
    assert one == two and hash(one) == hash(two)       # as before: the place only adds addresses
    assert not one.addresses & two.addresses


# --- Vault ------------------------------------------------------------------------------------

def kv(**settings: Any) -> dict[str, Any]:
    return {"type": "vault_kv", "url": "https://vault.internal:8200", **settings}


@pytest.mark.parametrize("backends, first, second", [
    ({"v": kv()}, {"path": "apps/web/quiva"}, {"path": "/apps/web/quiva/"}),
    ({"v": kv(), "w": kv(url="https://Vault.Internal:8200/")},
     {"path": "apps/web/quiva"}, {"backend": "w", "path": "apps/web/quiva"}),
    ({"v": kv(url="https://vault.internal"), "w": kv(url="https://vault.internal:443")},
     {"path": "apps/web/quiva"}, {"backend": "w", "path": "apps/web/quiva"}),
    ({"v": kv(), "w": kv(mount_point="kv")},
     {"path": "apps/web/quiva"}, {"backend": "w", "path": "apps/web/quiva", "mount_point": "/secret/"}),
    ({"v": kv(namespace="team"), "w": kv(namespace="/team/")},
     {"path": "apps/web/quiva"}, {"backend": "w", "path": "apps/web/quiva"}),
    ({"v": kv(namespace="team"), "w": kv()},                                      # namespace in the path
     {"path": "apps/web/quiva"}, {"backend": "w", "path": "apps/web/quiva", "mount_point": "team/secret"}),
])
def test_vault_spellings_of_one_secret_collide(backends: dict[str, Any], first: dict[str, Any],
                                               second: dict[str, Any]) -> None:
    message = refused(data(backends, [{"backend": "v", **first}], [{"backend": "v", **second}]))
    assert clash(message, "batch", "web"), message


def test_vault_kv_v1_and_v2_at_one_mount_and_path_collide() -> None:
    message = refused(data({"v": kv(), "w": kv(kv_version=1)},
                           [{"backend": "v", "path": "apps/web/quiva"}],
                           [{"backend": "v", "path": "apps/batch/quiva"},      # a KV v1 target is a secondary
                            {"backend": "w", "path": "apps/web/quiva"}]))
    assert message == ("secrets[1] (batch) and secrets[0] (web) both use the target w:secret/apps/web/quiva"
                       " (targets[1] and targets[0], written there as v:secret/apps/web/quiva);"
                       " a target belongs to one secret")


@pytest.mark.parametrize("backends, first, second", [
    ({"v": kv(), "w": kv(url="https://vault-dr.internal:8200")},
     {"path": "apps/web/quiva"}, {"backend": "w", "path": "apps/web/quiva"}),
    ({"v": kv(), "w": kv(url="https://vault.internal:8201")},
     {"path": "apps/web/quiva"}, {"backend": "w", "path": "apps/web/quiva"}),
    ({"v": kv(), "w": kv(url="http://vault.internal:8200", insecure_http=True)},
     {"path": "apps/web/quiva"}, {"backend": "w", "path": "apps/web/quiva"}),
    ({"v": kv()}, {"path": "apps/web/quiva"}, {"path": "apps/web/quiva", "mount_point": "kv"}),
    ({"v": kv(), "w": kv(namespace="team")},
     {"path": "apps/web/quiva"}, {"backend": "w", "path": "apps/web/quiva"}),
    ({"v": kv()}, {"path": "apps/web/quiva"}, {"path": "apps/batch/quiva"}),
])
def test_vault_different_places_do_not_collide(backends: dict[str, Any], first: dict[str, Any],
                                               second: dict[str, Any]) -> None:
    runtime = build(data(backends, [{"backend": "v", **first}], [{"backend": "v", **second}]))
    assert len(runtime.secrets) == 2


# --- every clash at once, third-party targets, self-rotation, the CLI ----------------------------

def test_every_clash_is_reported_at_once(store: Path) -> None:
    message = refused(data(
        {"local": {"type": "file", "directory": str(store)}, "aws": sm(), "v": kv()},
        [{"backend": "local", "path": "b.json"}, {"backend": "aws", "secret_id": "prod/web/quiva"}],
        [{"backend": "local", "path": "./b.json"}],
        [{"backend": "v", "path": "apps/x"}, {"backend": "aws", "secret_id": ARN}],
        [{"backend": "v", "path": "/apps/x"}, {"backend": "local", "path": "c.json"}],
        [{"backend": "local", "path": "d.json"}, {"backend": "local", "path": "../link/d.json"}],
    ))
    assert message.splitlines() == [
        f"secrets[1] (batch) and secrets[0] (web) both use the target local:{store / 'b.json'}"
        " (targets[0] and targets[0]); a target belongs to one secret",
        f"secrets[2] (cron) and secrets[0] (web) both use the target aws:{ARN} (targets[1] and targets[1],"
        " written there as aws:us-east-1/prod/web/quiva); a target belongs to one secret",
        "secrets[3] (jobs) and secrets[2] (cron) both use the target v:secret/apps/x"
        " (targets[0] and targets[0]); a target belongs to one secret",
        f"secrets[4] (api) lists the target local:{store.parent / 'link' / 'd.json'} twice (targets[1] and"
        f" targets[0], written there as local:{store / 'd.json'}); a target belongs to one secret",
    ]


def test_three_secrets_on_one_target_report_each_pair(store: Path) -> None:
    message = refused(data({"local": {"type": "file", "directory": str(store)}},
                           *([{"backend": "local", "path": "b.json"}] for _ in range(3))))
    assert len(message.splitlines()) == 3
    assert clash(message, "batch", "web") and clash(message, "cron", "web") and clash(message, "cron", "batch")


class _PluginTarget:
    """A third-party target without ``addresses``: compared by backend name and label."""

    def __init__(self, where: str) -> None:
        self.where, self.field = where, "api_key"

    @property
    def label(self) -> str:
        return f"plugin:{self.where}"


def test_targets_without_addresses_are_compared_by_backend_and_label() -> None:
    from types import SimpleNamespace

    from rotator.runtime import Bound, ManagedSecret, _refuse_shared_targets

    one, two = SimpleNamespace(name="one"), SimpleNamespace(name="two")

    def secret(name: str, *bound: Bound) -> ManagedSecret:
        spec = SimpleNamespace(name=name)
        return ManagedSecret(spec, None, bound[0], tuple(bound[1:]), None)  # type: ignore[arg-type]

    _refuse_shared_targets([secret("web", Bound(one, _PluginTarget("a"))),      # type: ignore[arg-type]
                            secret("batch", Bound(two, _PluginTarget("a"))),     # type: ignore[arg-type]
                            secret("cron", Bound(one, _PluginTarget("b")))])     # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"secrets\[1\] \(batch\) and secrets\[0\] \(web\) both use the"
                                          r" target one:a \(targets\[0\] and targets\[0\]\)"):
        _refuse_shared_targets([secret("web", Bound(one, _PluginTarget("a"))),  # type: ignore[arg-type]
                                secret("batch", Bound(one, _PluginTarget("a")))])  # type: ignore[arg-type]


def test_an_issuer_credential_on_a_managed_target_is_self_rotation_not_a_clash(store: Path) -> None:
    issuers = {"quiva": {**ISSUER["quiva"], "admin_key": {"backend": "local", "path": "admin.json"}}}
    runtime = build(data({"local": {"type": "file", "directory": str(store)}},
                         [{"backend": "local", "path": "admin.json"}],
                         [{"backend": "local", "path": "b.json"}], issuers=issuers))
    assert [s.name for s in runtime.secrets] == ["web", "batch"]
    assert [i.name for i in runtime.secrets[0].signs_in] == ["quiva"]


def test_the_cli_exits_2_naming_both_secrets_and_the_target(store: Path, tmp_path: Path, capsys) -> None:
    path = tmp_path / "rotator.toml"
    path.write_text(to_toml(data({"local": {"type": "file", "directory": str(store)}, "aws": sm()},
                                 [{"backend": "local", "path": "b.json"}],
                                 [{"backend": "aws", "secret_id": "prod/web/quiva"}],
                                 [{"backend": "local", "path": "a/../b.json"}],
                                 [{"backend": "aws", "secret_id": ARN}])))
    code = main(["--config", str(path), "plan"])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert "configuration error" in err
    assert f"secrets[2] (cron) and secrets[0] (web) both use the target local:{store / 'b.json'}" in err
    assert f"secrets[3] (jobs) and secrets[1] (batch) both use the target aws:{ARN}" in err
