"""Many secrets rotated concurrently against a rate-limited, fault-injecting emulator.

Sixty secrets — file primaries with file secondaries, some with an AWS Secrets Manager secondary
(moto server), some with a Vault KV v2 primary (OpenBao) — are due at once and rotated by one run
with eight workers, while the emulator enforces a real-time token bucket and injects 5xx and 429
answers. Every secret must end rotated exactly once (one issued key each, no twin), every target
must hold a key the issuer accepts after each run (I1, no outage), and the client-side limiter must
keep the emulator from ever refusing a request for going over its rate beyond its burst.

The rate limit is in real time, so this test runs on a real clock (plus an offset for "49 hours
later") instead of the suite's fake clock: pacing and back-off really wait.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import timedelta

import pytest

from rotator_providers.quiva.emulator import Emulator
from rotator_providers.quiva.emulator.state import SettableClock
from rotator.models import KeyRef, Phase, Secret
from tests.world import ADMIN_EMAIL, World

RATE = 50            # emulator: requests per second, all callers together
SERVER_BURST = 10    # emulator: requests it accepts at once
CLIENT_BURST = 4     # rotator's issuer rate_burst: under the server's, so delivery jitter stays inside it
WORKERS = 8
FILE_SECRETS, AWS_SECRETS, VAULT_SECRETS = 48, 6, 6
ISSUE = "POST /accounts/api-key"
REVOKE = "DELETE /accounts/api-key"


class RealClock(SettableClock):
    """Real UTC time plus an offset that moves only when told; sleeping really sleeps."""

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


@pytest.fixture
def fleet(tmp_path, monkeypatch, moto_url, openbao, vault_prefix):
    clock = RealClock()
    emulator = Emulator(port=0, clock=clock).start()
    monkeypatch.setenv("QUIVA_API_KEY", emulator.add_user(ADMIN_EMAIL, role="admin"))
    monkeypatch.setenv("VAULT_TOKEN", openbao.root_token)
    world = World(emulator=emulator, clock=clock, root=tmp_path)
    world.defaults.update(workers=WORKERS)
    world.issuer.update(rate_limit=RATE, rate_burst=CLIENT_BURST, retries=8)
    world.backends["aws"] = {"type": "aws_secrets_manager", "region": "us-east-1", "endpoint_url": moto_url,
                             "max_attempts": 3}
    world.backends["vault"] = {"type": "vault_kv", "url": openbao.url,
                               "auth": {"method": "token", "token": {"env": "VAULT_TOKEN"}}}
    names = []
    for i in range(FILE_SECRETS):
        names.append(f"file-{i:02d}")
        world.add_secret(names[-1])
    for i in range(AWS_SECRETS):
        names.append(f"aws-{i:02d}")
        world.add_secret(names[-1], targets=[{"backend": "store", "path": f"{names[-1]}.json"},
                                             {"backend": "aws", "secret_id": f"{vault_prefix}/{names[-1]}"}])
    for i in range(VAULT_SECRETS):
        names.append(f"vault-{i:02d}")
        world.add_secret(names[-1], targets=[{"backend": "vault", "path": f"{vault_prefix}/{names[-1]}"},
                                             {"backend": "app", "path": f"{names[-1]}.json"}])
    look = Look(world.runtime())
    old = {}
    for name in names:                                            # made by hand 80 days ago: all due now
        info = emulator.create_key(ADMIN_EMAIL, name=f"{name} (by hand)", created_on=clock.now() - timedelta(days=80))
        old[name] = info["key"]
        for bound in look.secrets[name].targets:
            bound.backend.deploy(bound.target, Secret(info["key"]), None, KeyRef.of(Secret(info["key"])))
    yield world, emulator, clock, old, look
    world.close()
    emulator.stop()


class Look:
    """Reads every target through one runtime (the world's helpers build one per call)."""

    def __init__(self, runtime) -> None:
        self.secrets = {s.name: s for s in runtime.secrets}

    def snapshots(self, name: str):
        return {b.label: b.backend.read(b.target) for b in self.secrets[name].targets}

    def record(self, name: str):
        primary = self.secrets[name].primary
        return primary.backend.read(primary.target).record

    def assert_i1(self, emulator: Emulator, name: str) -> None:
        """No outage: every target's current key is accepted by the issuer right now."""
        for label, snap in self.snapshots(name).items():
            assert snap.current is not None, f"{name}: {label} holds no key"
            assert emulator.is_active(snap.current.reveal()), f"{name}: {label} holds a key the issuer refuses"


def issued_per_secret(emulator: Emulator) -> Counter:
    """How many keys rotator issued for each secret (its key names carry ``[r-<rotation>]``)."""
    return Counter(k["name"].split(" [r-")[0] for k in emulator.keys() if " [r-" in k["name"])


def test_a_fleet_rotates_concurrently_under_rate_limit_and_faults_exactly_once(fleet):
    world, emulator, clock, old, look = fleet
    names = list(old)
    emulator.faults.rate_limit(per_second=RATE, burst=SERVER_BURST, retry_after=1)
    emulator.faults.fail_next(2, status=503, path=ISSUE)          # refused before the effect: retried
    emulator.faults.fail_next(1, status=502, path="POST /accounts/auth-with-api-key")
    emulator.faults.throttle_next(2, retry_after=1)               # 429s: every worker pauses, then resumes
    injected_429 = 2
    emulator.reset_counters()

    started = time.monotonic()
    report = world.rotate()
    first_run = time.monotonic() - started

    assert report.exit_code == 0, [(o.secret, o.error) for o in report.failed]
    assert {o.status for o in report.outcomes} == {"changed"}
    counters = emulator.counters()
    assert counters.get("status:429", 0) - injected_429 == 0, f"the client went over the rate limit: {counters}"
    assert counters[ISSUE] == len(names) + 2, counters             # one issue per secret, plus the 2 refused
    assert issued_per_secret(emulator) == Counter({name: 1 for name in names}), "a secret was rotated twice"
    for name in names:
        record = look.record(name)
        assert record.phase is Phase.GRACE and record.rotations == 1, (name, record)
        look.assert_i1(emulator, name)
        assert emulator.is_active(old[name]), f"{name}: old key revoked before the grace window ended"
    # Never faster than the limit allows: the issuer calls were paced (burst aside).
    assert first_run >= (counters.get("status:200", 0) - SERVER_BURST) / RATE

    clock.advance(timedelta(hours=49))
    emulator.faults.fail_next(2, status=503, path=REVOKE)
    emulator.faults.throttle_next(1, retry_after=1)
    emulator.reset_counters()
    done = world.rotate()

    assert done.exit_code == 0, [(o.secret, o.error) for o in done.failed]
    counters = emulator.counters()
    assert counters.get("status:429", 0) - 1 == 0, f"the client went over the rate limit: {counters}"
    assert counters.get(ISSUE, 0) == 0, "no second rotation"
    # every revoke is confirmed by a listing requested after it; workers waiting at the same time
    # share one request, so the run lists fewer times than it revokes
    assert counters.get("GET /accounts/api-keys", 0) < len(names), counters
    assert issued_per_secret(emulator) == Counter({name: 1 for name in names})
    for name in names:
        record = look.record(name)
        assert record.phase is Phase.IDLE and record.rotations == 1 and record.previous is None, (name, record)
        look.assert_i1(emulator, name)
        assert not emulator.is_active(old[name]), f"{name}: old key still live after the grace window"
