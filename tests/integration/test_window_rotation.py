"""Rotation windows in real runs: the emulator over HTTP, file stores, the injected clock."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from rotator import survey
from rotator.cli import main
from tests.world import to_toml

ISSUE = "POST /accounts/api-key"
SATURDAY = datetime(2026, 12, 5, 10, 0, tzinfo=timezone.utc)
MONDAY_0900_AMSTERDAM = datetime(2026, 12, 7, 8, 0, tzinfo=timezone.utc)     # CET = UTC+1 in December
OFFICE_HOURS = {"days": "mon-fri", "start": "09:00", "end": "16:00", "timezone": "Europe/Amsterdam"}


def _plan(world, clock):
    return survey.survey(world.runtime(), None, clock.now()).secrets[0].assessment


def test_window_a_due_key_waits_for_the_window_then_rotates(world, emulator, clock):
    clock.set(SATURDAY)
    world.add_secret("web", window=OFFICE_HOURS)
    world.seed("web", age=timedelta(days=80))                # due since days, expires in ~11 days
    outcome = world.rotate().outcomes[0]
    assert emulator.counters().get(ISSUE, 0) == 0, "rotated outside the window"
    assert "waiting for the rotation window" in outcome.detail and outcome.next_at == MONDAY_0900_AMSTERDAM
    planned = _plan(world, clock)
    assert planned.at == MONDAY_0900_AMSTERDAM and not planned.outside_window
    assert planned.health == "due" and "waiting for the rotation window" in planned.reason   # not "healthy"

    clock.set(MONDAY_0900_AMSTERDAM - timedelta(minutes=1))
    world.rotate()
    assert emulator.counters().get(ISSUE, 0) == 0
    clock.set(MONDAY_0900_AMSTERDAM)
    assert world.rotate().outcomes[0].status == "changed"
    world.assert_i1("web")


def test_window_in_rotator_section_applies_to_every_secret_unless_it_says_always(world, emulator, clock):
    clock.set(SATURDAY)
    world.defaults["window"] = OFFICE_HOURS
    world.add_secret("web")
    world.add_secret("batch", window="always")
    world.seed("web", age=timedelta(days=80))
    world.seed("batch", age=timedelta(days=80))
    world.rotate()
    assert world.record("web").rotations == 0 and world.record("batch").rotations == 1


def test_window_that_opens_too_late_rotates_at_the_safety_margin_and_plan_says_so_in_advance(world, emulator, clock):
    clock.set(SATURDAY)
    new_year = {"cron": "0 3 1 1 *", "duration": "1h", "timezone": "Europe/Amsterdam"}
    world.add_secret("web", window=new_year, safety_margin="3d")
    world.seed("web", age=timedelta(days=80))
    world.rotate()                                           # adopted, not rotated: the margin is days away
    assert emulator.counters().get(ISSUE, 0) == 0
    planned = _plan(world, clock)
    assert planned.outside_window and "OUTSIDE the rotation window" in planned.action
    deadline = planned.at
    assert deadline is not None and deadline > clock.now()
    assert planned.expires_on - deadline == timedelta(days=3)
    clock.set(deadline)
    outcome = world.rotate().outcomes[0]
    assert outcome.status == "changed", outcome
    assert any("rotating outside it" in action for action in outcome.actions)
    world.assert_i1("web")


def test_window_does_not_hold_back_a_forced_rotation_or_an_expired_key(world, emulator, clock):
    clock.set(SATURDAY)
    world.add_secret("web", window=OFFICE_HOURS)
    world.seed("web", age=timedelta(days=10))
    assert world.rotate(force=True).outcomes[0].status == "changed"   # a person asked: now
    world.add_secret("old", window=OFFICE_HOURS)
    world.seed("old", age=timedelta(days=100))                       # already expired
    assert world.rotate(["old"]).outcomes[0].status == "changed"


def test_window_that_never_opens_is_a_configuration_error_exit_2(world, tmp_path, capsys):
    world.add_secret("web", window={"cron": "0 0 30 2 *", "duration": "1h"})
    path = tmp_path / "rotator.toml"
    path.write_text(to_toml(world.config_data()))
    assert main(["-c", str(path), "plan"]) == 2
    err = capsys.readouterr().err
    assert "secrets[0].window" in err and "never opens" in err


def test_window_with_a_safety_margin_not_shorter_than_the_lead_time_is_a_configuration_error(world):
    import pytest

    from rotator import config
    from rotator.errors import ConfigError

    world.add_secret("web", window=OFFICE_HOURS, safety_margin="14d")      # = lead_time: the window never counts
    with pytest.raises(ConfigError, match=r"secrets\[0\]\.safety_margin: 14d is not shorter than lead_time 14d"):
        config.load(data=world.config_data(), environ={})


def test_window_forced_outside_is_a_warning_of_plan_in_json_too(world, emulator, clock, tmp_path, capsys):
    import json

    clock.set(SATURDAY)
    world.add_secret("web", window={"cron": "0 3 1 1 *", "duration": "1h", "timezone": "Europe/Amsterdam"})
    world.seed("web", age=timedelta(days=80))
    world.rotate()
    path = tmp_path / "rotator.toml"
    path.write_text(to_toml(world.config_data()))
    assert main(["-c", str(path), "plan", "-o", "json", "--at", SATURDAY.isoformat()]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["plan"][0]["outside_window"] is True
    assert any("OUTSIDE the rotation window" in w for w in shown["warnings"])
