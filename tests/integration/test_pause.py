"""rotator pause / resume: stored in the rotation record, so every runner sees it."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from rotator import pausing, survey
from rotator.cli import main
from rotator.errors import UsageError
from rotator.models import Phase
from tests.world import to_toml

ISSUE = "POST /accounts/api-key"


def _pause(world, name="web", **options):
    runtime = world.runtime(identity="ops-laptop")
    (secret,) = runtime.select([name])
    return pausing.pause(secret, by=runtime.identity, now=world.clock.now(), **options)


def test_pause_seen_by_a_second_runner_stops_a_due_rotation(world, emulator, clock):
    world.add_secret("web")
    old = world.seed("web", age=timedelta(days=30))
    world.rotate()                                            # adopted
    _pause(world, reason="change freeze")
    clock.advance(timedelta(days=50))                         # due now
    report = world.rotate(identity="cronjob-pod")
    assert report.exit_code == 0
    assert emulator.counters().get(ISSUE, 0) == 0, "a paused secret was rotated"
    assert "paused by ops-laptop" in report.outcomes[0].detail and "change freeze" in report.outcomes[0].detail
    assert world.record("web").current.last4 == old[-4:]

    runtime = world.runtime()
    (secret,) = runtime.select(["web"])
    record, lifted = pausing.resume(secret)
    assert lifted is not None and lifted.reason == "change freeze" and record.paused is None
    assert world.rotate(identity="cronjob-pod").outcomes[0].status == "changed"


def test_pause_until_lapses_by_itself(world, emulator, clock):
    world.add_secret("web")
    world.seed("web", age=timedelta(days=30))
    world.rotate()
    _pause(world, until=clock.now() + timedelta(days=55))
    clock.advance(timedelta(days=50))
    world.rotate()
    assert emulator.counters().get(ISSUE, 0) == 0
    clock.advance(timedelta(days=6))                          # the pause has lapsed
    assert world.rotate().outcomes[0].status == "changed"


def test_pause_holds_the_old_keys_revoke_but_lets_the_rotation_in_flight_finish(world, emulator, clock):
    world.add_secret("web")
    old = world.seed("web", age=timedelta(days=80))
    world.rotate()                                            # rotated: in grace
    assert world.record("web").phase is Phase.GRACE
    _pause(world)
    clock.advance(timedelta(days=3))                          # grace over
    report = world.rotate()
    assert emulator.is_active(old), "revoked while paused"
    assert "the old key's revoke waits" in report.outcomes[0].detail
    runtime = world.runtime()
    (secret,) = runtime.select(["web"])
    pausing.resume(secret)
    world.rotate()
    assert not emulator.is_active(old)


def test_pause_shown_by_status_and_plan_as_paused_with_the_time_left(world, clock):
    world.add_secret("web")
    world.seed("web", age=timedelta(days=80))
    world.rotate()
    clock.advance(timedelta(days=3))
    world.rotate()
    _pause(world, reason="migration")
    view = survey.survey(world.runtime(), None, clock.now()).secrets[0]
    a = view.assessment
    assert a.health == "paused" and not a.healthy and a.paused.reason == "migration"
    assert "paused by ops-laptop" in a.reason and "left" in a.reason
    assert "rotator resume" in a.action


def test_pause_does_not_stop_revoke_compromised(world, emulator):
    from rotator.engine import Engine
    from rotator.incident import revoke_compromised

    world.add_secret("web")
    bad = world.seed("web", age=timedelta(days=10))
    world.rotate()
    _pause(world, reason="freeze")
    runtime = world.runtime()
    (secret,) = runtime.select(["web"])
    report = revoke_compromised(Engine(runtime), secret, force=False)
    assert report.revoked and not emulator.is_active(bad)
    world.assert_i1("web")


@pytest.mark.parametrize("text, problem", [("2020-01-01T00:00Z", "in the past"), ("next tuesday", "expected"),
                                           ("0s", "in the past")])
def test_pause_until_in_the_past_or_unparsable_is_refused(text, problem):
    from datetime import datetime, timezone

    with pytest.raises(UsageError, match=problem):
        pausing.parse_until(text, datetime(2026, 12, 1, tzinfo=timezone.utc))


def test_pause_and_resume_commands_exit_codes_and_output(world, tmp_path, capsys, monkeypatch):
    world.add_secret("web")
    world.seed("web", age=timedelta(days=10))
    world.rotate()
    path = tmp_path / "rotator.toml"
    path.write_text(to_toml(world.config_data()))
    assert main(["-c", str(path), "pause", "web", "--until", "2020-01-01T00:00Z"]) == 2
    assert "in the past" in capsys.readouterr().err
    assert main(["-c", str(path), "pause", "web", "--until", "30d", "--reason", "freeze", "-o", "json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["paused"]["reason"] == "freeze" and shown["paused"]["until"]
    assert main(["-c", str(path), "status", "web"]) == 1
    assert "paused" in capsys.readouterr().out
    assert main(["-c", str(path), "resume", "web"]) == 0
    assert "resumed" in capsys.readouterr().out
    assert main(["-c", str(path), "resume", "web"]) == 0
    assert "was not paused" in capsys.readouterr().out
