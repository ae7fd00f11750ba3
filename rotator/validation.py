"""Turn pydantic validation failures into ConfigErrors that name the field path.

Providers validate their own config section and target entries with a pydantic model and call
:func:`parse` so every message reads the same way: ``backends.vault.url: Field required``.
"""

from __future__ import annotations

from typing import Any, Mapping, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from rotator.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for config models: unknown keys are refused, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def location(parts: tuple[Any, ...], prefix: str = "") -> str:
    """('secrets', 0, 'targets', 1, 'path') -> 'secrets[0].targets[1].path'."""
    out = prefix
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def describe(error: ValidationError, prefix: str = "") -> list[str]:
    """One 'path: problem' line per pydantic error, without echoing input values."""
    lines = []
    for item in error.errors(include_input=False, include_url=False):
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown setting"
        lines.append(f"{location(tuple(item['loc']), prefix)}: {message}")
    return lines


def parse(model: type[M], raw: Mapping[str, Any], where: str) -> M:
    """Validate ``raw`` with ``model``; on failure raise ConfigError naming ``where`` + field."""
    try:
        return model.model_validate(dict(raw))
    except ValidationError as exc:
        raise ConfigError("\n".join(describe(exc, where))) from None
