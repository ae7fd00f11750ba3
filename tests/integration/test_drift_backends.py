"""Drift on real secondaries — a file, AWS Secrets Manager on moto server, Vault KV on OpenBao:
a deleted secret, a value changed by hand, a payload rotator cannot parse, and a backend that is
down during the repair. Reported clearly, never a crash, never the last good key destroyed."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable

import pytest

from rotator import drift
from rotator.models import KeyRef, Secret
from tests.world import ADMIN_EMAIL


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Kind:
    name: str
    setup: Callable[[Any, pytest.FixtureRequest], tuple[dict, dict]]   # -> (target entry, dead target entry)
    corrupt: Callable[[pytest.FixtureRequest, Any], None]               # spoil the target's payload


def _file(world, request):
    blocker = world.root / "not-a-dir"
    blocker.write_text("")
    world.backends["dead"] = {"type": "file", "directory": str(blocker)}   # every write fails: ENOTDIR
    return {"backend": "app", "path": "web.json"}, {"backend": "dead", "path": "web.json"}


def _file_corrupt(request, bound):
    path = bound.target.label.split(":", 1)[1]
    with open(path, "w") as handle:
        handle.write("{ not json")


def _aws(world, request):
    url = request.getfixturevalue("moto_url")
    world.backends["aws"] = {"type": "aws_secrets_manager", "region": "us-east-1", "endpoint_url": url,
                             "max_attempts": 2}
    world.backends["dead"] = {"type": "aws_secrets_manager", "region": "us-east-1",
                              "endpoint_url": f"http://127.0.0.1:{closed_port()}", "max_attempts": 2}
    return {"backend": "aws", "secret_id": "prod/web/quiva"}, {"backend": "dead", "secret_id": "prod/web/quiva"}


def _aws_corrupt(request, bound):
    from tests.servers.aws import server

    server().client().put_secret_value(SecretId=bound.target.secret_id, SecretString="not json at all")


def _vault(world, request):
    bao = request.getfixturevalue("openbao")
    prefix = request.getfixturevalue("vault_prefix")
    request.getfixturevalue("monkeypatch").setenv("VAULT_TOKEN", bao.root_token)
    auth = {"method": "token", "token": {"env": "VAULT_TOKEN"}}
    world.backends["vault"] = {"type": "vault_kv", "url": bao.url, "auth": auth}
    world.backends["dead"] = {"type": "vault_kv", "url": f"http://127.0.0.1:{closed_port()}", "auth": auth}
    return {"backend": "vault", "path": f"{prefix}/web"}, {"backend": "dead", "path": f"{prefix}/web"}


def _vault_corrupt(request, bound):
    from tests.servers.vault import server

    server().client().secrets.kv.v2.create_or_update_secret(
        path=bound.target.path, mount_point="secret", secret={"api_key": {"not": "a string"}})


KINDS = [Kind("file", _file, _file_corrupt), Kind("aws", _aws, _aws_corrupt), Kind("vault", _vault, _vault_corrupt)]


@pytest.fixture(params=KINDS, ids=[k.name for k in KINDS])
def kind(request):
    return request.param


@pytest.fixture
def rotated(world, request, kind):
    """web: file primary + one secondary of ``kind``, rotated once and in step."""
    target, dead = kind.setup(world, request)
    world.add_secret("web", targets=[{"backend": "store", "path": "web.json"}, target])
    world.dead_target = dead
    world.seed("web", age=timedelta(days=80))
    assert world.rotate().exit_code == 0
    secret = world.secret("web")
    primary, report = drift.check(secret)
    assert report.healthy, report
    return world


def secondary(world, runtime=None):
    return world.secret("web", runtime).secondaries[0]


def test_deleted_secret_is_reported_and_repaired(rotated):
    world = rotated
    bound = secondary(world)
    bound.backend.delete(bound.target)
    secret = world.secret("web")
    primary, report = drift.check(secret)
    assert [t.state for t in report.targets] == ["missing"] and not report.healthy
    drift.repair(secret, primary, report)
    assert report.repaired == [bound.label]
    world.assert_i1("web")
    assert drift.check(world.secret("web"))[1].healthy


def test_value_changed_by_hand_is_reported_and_repaired(rotated, emulator):
    world = rotated
    bound = secondary(world)
    other = Secret(emulator.create_key(ADMIN_EMAIL, name="by hand")["key"])
    bound.backend.deploy(bound.target, other, None, KeyRef.of(other))
    secret = world.secret("web")
    primary, report = drift.check(secret)
    assert report.targets[0].state == "different" and f"…{other.last4}" in report.targets[0].detail
    drift.repair(secret, primary, report)
    assert report.repaired == [bound.label]
    world.assert_i1("web")


def test_unparseable_payload_is_reported_never_overwritten(rotated, kind, request):
    world = rotated
    bound = secondary(world)
    kind.corrupt(request, bound)
    secret = world.secret("web")
    primary, report = drift.check(secret)
    assert report.targets[0].state == "corrupt", report.targets
    drift.repair(secret, primary, report)                       # no crash, nothing written
    assert report.repaired == [] and not report.healthy
    assert drift.check(world.secret("web"))[1].targets[0].state == "corrupt"
    current = primary.current.reveal()
    assert world.emulator.is_active(current), "the last good key (in the primary) is untouched"


def test_a_backend_down_during_repair_is_reported_and_the_rest_repaired(rotated):
    world = rotated
    world.secrets[0]["targets"].append(world.dead_target)
    runtime = world.runtime()
    secret = world.secret("web", runtime)
    live = secret.secondaries[0]
    live.backend.delete(live.target)
    primary, report = drift.check(secret)
    states = {t.target: t.state for t in report.targets}
    assert states[live.label] == "missing"
    assert states[secret.secondaries[1].label] in ("unreachable", "error")
    drift.repair(secret, primary, report)
    assert report.repaired == [live.label]
    assert live.backend.read(live.target).current == primary.current


def test_the_daemon_reconcile_repairs_drift_when_configured(world, emulator):
    """[rotator] repair_drift: the daemon's reconcile pushes the primary's key like sync --repair."""
    from rotator.daemon import Reconciler

    world.add_secret("web")
    world.seed("web", age=timedelta(days=10))
    world.defaults["repair_drift"] = True
    runtime = world.runtime()
    Reconciler(runtime).reconcile()                         # adopts; nothing drifted yet
    bound = world.secret("web", runtime).secondaries[0]
    bound.backend.delete(bound.target)
    Reconciler(runtime).reconcile()
    world.assert_i1("web")
    assert drift.check(world.secret("web"))[1].healthy
