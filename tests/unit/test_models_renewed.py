"""``rotator.models.renewed``: the same instance ``dataclasses.replace`` would build, faster, and
``replace`` itself wherever a shortcut would skip something ``__init__`` does."""

from __future__ import annotations

import dataclasses
import functools

import pytest

from rotator.machine import Observations
from rotator.models import RotationRecord, renewed


def test_renewed_equals_replace_and_leaves_the_original():
    obs = Observations(me="web", record=RotationRecord(rotations=2))
    new = renewed(obs, rotated=True, deployed=frozenset({"a"}))
    assert new == dataclasses.replace(obs, rotated=True, deployed=frozenset({"a"}))
    assert type(new) is Observations and obs.rotated is False and obs.deployed == frozenset()
    with pytest.raises(dataclasses.FrozenInstanceError):
        new.rotated = False                                     # still frozen
    record = RotationRecord(rotations=2)
    assert record.evolve(rotations=3) == RotationRecord(rotations=3)


def test_an_unknown_field_is_refused_like_replace():
    with pytest.raises(TypeError, match="no field colour"):
        renewed(RotationRecord(), colour="red")


@dataclasses.dataclass(frozen=True)
class Checked:
    size: int

    def __post_init__(self) -> None:
        if self.size < 0:
            raise ValueError("size below 0")


@dataclasses.dataclass(frozen=True)
class Cached:
    size: int

    @functools.cached_property
    def double(self) -> int:
        return self.size * 2


def test_post_init_still_runs():
    with pytest.raises(ValueError, match="size below 0"):
        renewed(Checked(1), size=-1)


def test_an_instance_holding_more_than_its_fields_is_not_copied_whole():
    cached = Cached(1)
    assert cached.double == 2                                   # now in the instance's __dict__
    assert renewed(cached, size=5).double == 10
