"""Hooks in real rotations: the emulator over HTTP, file stores, real subprocess hooks.

Each hook here is a small Python script that appends what it was told (event, environment,
stdin) to a JSON-lines log and fails while a flag file exists, so a test can make a consumer
refuse and later confirm.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from rotator import rotation
from rotator.models import Phase

HOOK_SCRIPT = r"""
import json, os, sys, time
log, flag = sys.argv[1], sys.argv[2]
stdin = sys.stdin.read()
env = {k: v for k, v in os.environ.items() if k.startswith("ROTATOR_") or k in ("AWS_SECRET_ACCESS_KEY", "QUIVA_API_KEY")}
with open(log, "a") as f:
    f.write(json.dumps({"env": env, "stdin": stdin, "argv": sys.argv[1:]}) + "\n")
if os.path.exists(flag + ".hang"):
    time.sleep(60)
if os.path.exists(flag):
    print("consumer not ready", file=sys.stderr)
    sys.exit(3)
"""


def primary(world, name: str):
    return world.snapshots(name)[world.secret(name).primary.label]


class Consumer:
    """An exec hook and what it saw."""

    def __init__(self, root: Path, name: str = "consumer") -> None:
        self.script = root / "hook.py"
        self.script.write_text(HOOK_SCRIPT)
        self.log = root / f"{name}.jsonl"
        self.flag = root / f"{name}.fail"

    def spec(self, name: str = "restart", events=("deployed",), **options) -> dict:
        return {"name": name, "kind": "exec", "events": list(events),
                "command": [sys.executable, str(self.script), str(self.log), str(self.flag)], "timeout": "20s",
                **options}

    def calls(self) -> list[dict]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def events(self) -> list[str]:
        return [c["env"]["ROTATOR_EVENT"] for c in self.calls()]

    def refuse(self) -> None:
        self.flag.write_text("1")

    def accept(self) -> None:
        self.flag.unlink(missing_ok=True)


@pytest.fixture
def consumer(tmp_path) -> Consumer:
    return Consumer(tmp_path)


def test_hook_events_of_a_rotation_are_delivered_once_each_with_their_context(world, consumer, clock, emulator):
    world.add_secret("web", hooks=[consumer.spec(events=["staged", "deployed", "before_revoke", "revoked"])])
    old = world.seed("web", age=timedelta(days=80))
    assert world.rotate().exit_code == 0
    assert consumer.events() == ["staged", "deployed"]
    clock.advance(timedelta(hours=49))
    assert world.rotate().exit_code == 0
    assert not emulator.is_active(old)
    assert consumer.events() == ["staged", "deployed", "before_revoke", "revoked"]
    assert world.rotate().exit_code == 0                   # nothing owed: nothing repeated
    assert consumer.events() == ["staged", "deployed", "before_revoke", "revoked"]
    record = world.record("web")
    calls = consumer.calls()
    deployed = calls[1]["env"]
    assert deployed["ROTATOR_SECRET"] == "web" and deployed["ROTATOR_KEY_ID"] == record.current.key_id
    assert deployed["ROTATOR_KEY_LAST4"] == record.current.last4
    assert deployed["ROTATOR_OLD_KEY_LAST4"] == old[-4:]
    assert deployed["ROTATOR_TARGETS"] == ",".join(b.label for b in world.secret("web").targets)
    assert len({c["env"]["ROTATOR_DELIVERY_ID"] for c in calls}) == 4
    assert {c["env"]["ROTATOR_ROTATION_ID"] for c in calls} == {record.deliveries[0].rotation_id}
    assert all(d.state == "done" for d in record.deliveries)


def test_hook_never_sees_a_key_value_or_rotator_credentials_unless_asked(world, consumer, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-of-rotator")
    world.add_secret("web", hooks=[consumer.spec(events=["staged", "deployed"])])
    world.rotate()
    values = world.emulator.issued_values()
    for call in consumer.calls():
        text = json.dumps(call)
        assert not any(v in text for v in values), "a key value reached a hook that did not ask for it"
        assert "AWS_SECRET_ACCESS_KEY" not in call["env"] and "QUIVA_API_KEY" not in call["env"]


def test_hook_with_pass_value_gets_the_new_key_on_stdin_only(world, consumer):
    world.add_secret("web", hooks=[consumer.spec(events=["deployed"], pass_value=True)])
    world.rotate()
    (call,) = consumer.calls()
    current = primary(world, "web").current.reveal()
    assert call["stdin"] == current + "\n"
    assert current not in json.dumps(call["env"]) and current not in json.dumps(call["argv"])


def test_gate_hook_that_fails_then_succeeds_holds_the_revoke_until_it_succeeds(world, consumer, clock, emulator):
    world.defaults["grace"] = "1h"
    world.add_secret("web", hooks=[consumer.spec(gate=True, backoff="10m")])
    old = world.seed("web", age=timedelta(days=80))
    consumer.refuse()
    first = world.rotate()
    assert first.exit_code == 0, first.outcomes     # a consumer that refuses does not fail the rotation
    clock.advance(timedelta(hours=2))                 # grace is over ...
    held = world.rotate()
    assert emulator.is_active(old), "revoked while the consumer gate had not passed"
    record = world.record("web")
    assert record.phase is Phase.IDLE and record.held[0].consumers == ("restart",)
    assert record.held[0].reason == "waiting for consumer restart"
    assert "waiting for consumer restart" in held.outcomes[0].detail
    tries = len(consumer.calls())
    world.rotate()                                    # the backoff has not passed: not tried again
    assert len(consumer.calls()) == tries and emulator.is_active(old)

    consumer.accept()
    clock.advance(timedelta(minutes=45))              # past the doubled backoff
    assert world.rotate().exit_code == 0
    assert not emulator.is_active(old), "the gate passed: the old key goes"
    record = world.record("web")
    assert not record.held and all(d.state == "done" for d in record.deliveries)
    world.assert_i1("web")


def test_gate_hook_status_shows_waiting_for_consumer(world, consumer, clock):
    from rotator import survey

    world.defaults["grace"] = "0s"
    world.add_secret("web", hooks=[consumer.spec(gate=True)])
    world.seed("web", age=timedelta(days=80))
    consumer.refuse()
    world.rotate()
    runtime = world.runtime()
    view = survey.survey(runtime, None, clock.now()).secrets[0]
    assert view.assessment.health == "held"
    assert "waiting for consumer restart" in view.assessment.reason


def test_hook_gate_is_bypassed_only_by_a_compromised_revoke(world, consumer, clock, emulator):
    from rotator.engine import Engine
    from rotator.incident import revoke_compromised

    world.defaults["grace"] = "0s"
    world.add_secret("web", hooks=[consumer.spec(gate=True)])
    world.seed("web", age=timedelta(days=80))
    consumer.refuse()
    world.rotate()
    bad = primary(world, "web").current.reveal()
    runtime = world.runtime()
    (secret,) = runtime.select(["web"])
    report = revoke_compromised(Engine(runtime), secret, force=False)
    assert report.revoked and not emulator.is_active(bad)


class Crash(BaseException):
    """Stands for the process dying: nothing after it runs, no except clause catches it."""


def test_hook_crash_after_the_effect_before_the_hook_is_redelivered_once(world, consumer, monkeypatch):
    world.add_secret("web", hooks=[consumer.spec()])
    real = rotation.SecretRun._deliver
    crashes = []

    def crash_once(self, now):
        if not crashes:
            crashes.append(now)
            raise Crash()
        return real(self, now)

    monkeypatch.setattr(rotation.SecretRun, "_deliver", crash_once)
    with pytest.raises(Crash):
        world.rotate()
    record = world.record("web")
    assert record.phase is Phase.IDLE and [d.state for d in record.deliveries] == ["owed"]
    assert consumer.events() == []
    assert world.rotate(identity="another-runner").exit_code == 0
    assert consumer.events() == ["deployed"]
    world.rotate()
    assert consumer.events() == ["deployed"], "a finished delivery is not repeated"


def test_hook_crash_during_the_hook_is_redelivered_after_its_claim_lapses(world, consumer, clock, monkeypatch):
    world.add_secret("web", hooks=[consumer.spec()])
    runtime = world.runtime()
    real = type(runtime.hook_runner).deliver

    def die_while_delivering(self, jobs):
        real(self, jobs)                  # the hook ran ...
        raise Crash()                     # ... and the runner died before recording it

    monkeypatch.setattr(type(runtime.hook_runner), "deliver", die_while_delivering)
    with pytest.raises(Crash):
        world.rotate()
    monkeypatch.setattr(type(runtime.hook_runner), "deliver", real)
    assert consumer.events() == ["deployed"]
    world.rotate()
    assert consumer.events() == ["deployed"], "claimed by a runner that may still be running it: not yet"
    clock.advance(timedelta(minutes=1))   # past the hook's timeout (20 s) + the claim margin
    world.rotate()
    assert consumer.events() == ["deployed", "deployed"], "at least once: delivered again, once"
    world.rotate()
    assert consumer.events() == ["deployed", "deployed"]


def test_failed_hook_is_told_why_a_run_failed_once_per_rotation(world, consumer, emulator):
    world.add_secret("web", hooks=[consumer.spec(events=["failed"])])
    world.seed("web", age=timedelta(days=80))
    emulator.faults.fail_next(2, status=403, path="POST /accounts/api-key")   # the issuer refuses to issue
    report = world.rotate()
    assert report.exit_code == 1
    (call,) = consumer.calls()
    assert call["env"]["ROTATOR_EVENT"] == "failed" and "403" in call["env"]["ROTATOR_DETAIL"]
    emulator.faults.clear()
    assert world.rotate().exit_code == 0
    assert len(consumer.calls()) == 1


def test_rolled_back_hook_is_told_about_the_refused_key(world, consumer, emulator, clock):
    world.issuer.update(verify_with="agents")
    world.add_secret("web", hooks=[consumer.spec(events=["staged", "deployed", "rolled_back"])])
    old = world.seed("web", age=timedelta(days=10))
    world.rotate()                                                      # adopted
    clock.advance(timedelta(days=70))
    emulator.faults.fail_next(8, status=401, path="GET /v1/agents")     # the new key is refused
    report = world.rotate()
    assert report.exit_code == 1
    assert consumer.events() == ["staged", "rolled_back"]
    rolled = consumer.calls()[1]["env"]
    assert rolled["ROTATOR_OLD_KEY_LAST4"] == old[-4:] and rolled["ROTATOR_DETAIL"]
    assert emulator.is_active(old)


def test_hook_that_hangs_is_stopped_by_shutdown_and_does_not_hold_other_secrets(world, consumer):
    world.defaults["workers"] = 2
    consumer.flag.with_suffix(".fail.hang").write_text("1")
    world.add_secret("web", hooks=[consumer.spec(timeout="120s")])
    world.add_secret("batch")
    engine = world.engine()
    done = {}
    runner = threading.Thread(target=lambda: done.setdefault("report", engine.run()))
    runner.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and world.record("batch") is None or not consumer.calls():
        time.sleep(0.05)
    assert world.record("batch").phase is Phase.IDLE, "another secret waited for a hanging hook"
    started = time.monotonic()
    engine.request_stop()
    runner.join(15)
    assert not runner.is_alive() and time.monotonic() - started < 10
    owed = world.record("web").deliveries
    assert owed and owed[0].owed and "shutting down" in (owed[0].last_error or "")


# --- an http hook, signed, verified by the example receiver on loopback ------------------------------

def test_hook_http_signed_delivery_is_verified_by_the_receiver_and_gates_the_revoke(
        world, clock, emulator, tmp_path, monkeypatch):
    from datetime import datetime, timezone

    from tests.deploy.test_hook_examples import SECRET, Receiver, marker_command, reloads

    clock.set(datetime.now(timezone.utc))              # the receiver checks the signature's time on its clock
    command, marker, fail = marker_command.__wrapped__(tmp_path)
    receiver = Receiver(tmp_path, "--reload-command", command)
    try:
        monkeypatch.setenv("HOOK_SIGNING_KEY", SECRET)
        hook = {"name": "reload", "kind": "http", "events": ["deployed"], "gate": True, "url": receiver.url,
                "signing_secret": {"env": "HOOK_SIGNING_KEY"}, "timeout": "10s"}
        world.defaults["grace"] = "0s"
        world.add_secret("web", hooks=[hook])
        old = world.seed("web", age=timedelta(days=80))
        assert world.rotate().exit_code == 0
        (delivery,) = world.record("web").deliveries
        assert delivery.state == "done" and len(reloads(marker)) == 1
        assert not emulator.is_active(old), "the consumer confirmed: the old key was revoked"

        monkeypatch.setenv("HOOK_SIGNING_KEY", "not-the-receivers-secret")   # a forged signature ...
        world.add_secret("batch", hooks=[{**hook, "name": "reload-batch"}])
        old_batch = world.seed("batch", age=timedelta(days=80))
        world.rotate(["batch"])
        record = world.record("batch")
        assert record.held and record.held[0].consumers == ("reload-batch",)
        assert "HTTP 401" in record.deliveries[0].last_error, "... is refused by the receiver"
        assert emulator.is_active(old_batch) and len(reloads(marker)) == 1
    finally:
        receiver.stop()


def test_hook_revoked_is_still_told_when_the_runner_died_between_the_revoke_and_its_record(
        world, consumer, clock, emulator, monkeypatch):
    world.defaults["grace"] = "0s"
    world.add_secret("web", hooks=[consumer.spec(events=["revoked"])])
    old = world.seed("web", age=timedelta(days=80))
    real = rotation.SecretRun._do_Finish

    def die_before_finishing(self, step, now):
        raise Crash()

    monkeypatch.setattr(rotation.SecretRun, "_do_Finish", die_before_finishing)
    with pytest.raises(Crash):
        world.rotate()
    assert not emulator.is_active(old) and consumer.events() == []
    monkeypatch.setattr(rotation.SecretRun, "_do_Finish", real)
    assert world.rotate().exit_code == 0                    # the old key is found gone: told all the same
    assert consumer.events() == ["revoked"]
    assert consumer.calls()[0]["env"]["ROTATOR_OLD_KEY_LAST4"] == old[-4:]


def test_hook_removed_from_the_config_is_given_up_and_releases_its_gate(world, consumer, clock, emulator):
    world.defaults["grace"] = "0s"
    world.add_secret("web", hooks=[consumer.spec(gate=True, backoff="1m")])
    old = world.seed("web", age=timedelta(days=80))
    consumer.refuse()
    world.rotate()
    assert world.record("web").held and emulator.is_active(old)
    world.secrets[0]["hooks"] = []                     # the consumer is gone for good: a person removes it
    clock.advance(timedelta(minutes=5))
    assert world.rotate().exit_code == 0
    record = world.record("web")
    assert [d.state for d in record.deliveries] == ["given-up"] and not record.held
    assert not emulator.is_active(old)
