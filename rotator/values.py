"""Where a key value sits in a store's JSON payload: one field, or one field per part.

Most keys are one string (a QuivaWorks API key) and live in one field of the application's JSON
object (``api_key`` by default). Some are several strings that only work together (an AWS access
key: ``access_key_id`` and ``secret_access_key``); an issuer whose keys have parts declares them in
:attr:`rotator.models.IssuerCapabilities.value_parts`, with each part's default field name, and
each target may rename them (``fields = {secret_access_key = "AWS_SECRET_ACCESS_KEY"}``). The parts
are written together in one store write, read back together, and compared as one fingerprint
(:meth:`rotator.models.Secret.of_parts`).

A :class:`Layout` is what a backend's payload code needs: it reads the value out of the
application's object, writes it back in (a new field goes first, an existing one keeps its place),
and encodes the *pending* and *previous* slots kept in rotator's own section (a string for a plain
value, an object of parts otherwise). Messages name fields, never values. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rotator.models import Secret


class LayoutError(ValueError):
    """The payload does not hold the value the way the layout says (the message names the field)."""


@dataclass(frozen=True)
class Layout:
    """``fields``: (part, JSON field) pairs in the issuer's order; one pair with part ``""`` for a
    plain value."""

    fields: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, field: str, parts: Mapping[str, str] | None = None) -> Layout:
        """The layout of a target: ``parts`` (part -> field) when the value has parts, else ``field``."""
        if parts:
            return cls(tuple(parts.items()))
        return cls((("", field),))

    @property
    def plain(self) -> bool:
        return len(self.fields) == 1 and self.fields[0][0] == ""

    @property
    def names(self) -> tuple[str, ...]:
        """The JSON fields the value occupies."""
        return tuple(name for _, name in self.fields)

    def describe(self) -> str:
        """"field 'api_key'" or "fields 'aws_access_key_id', 'aws_secret_access_key'" (for messages)."""
        if self.plain:
            return f"field '{self.fields[0][1]}'"
        return "fields " + ", ".join(f"'{name}'" for name in self.names)

    def read(self, data: Mapping[str, Any]) -> Secret | None:
        """The value in ``data`` (the application's object); None when none of its fields is set.
        A field of the wrong type, or a value with some parts but not all, is a LayoutError."""
        found: list[tuple[str, str]] = []
        missing: list[str] = []
        for part, name in self.fields:
            value = data.get(name)
            if value is None or value == "":
                missing.append(name)
                continue
            if not isinstance(value, str):
                raise LayoutError(f"field '{name}' is a JSON {_kind(value)}, expected a string")
            found.append((part, value))
        if not found:
            return None
        if missing:
            raise LayoutError("the value is incomplete: " + ", ".join(f"'{name}'" for name in missing)
                              + " " + ("is" if len(missing) == 1 else "are") + " missing while "
                              + ", ".join(f"'{n}'" for p, n in self.fields if n not in missing) + " is set")
        if self.plain:
            return Secret(found[0][1])
        return Secret.of_parts(found)

    def write(self, data: Mapping[str, Any], value: Secret | None) -> dict[str, Any]:
        """``data`` with the value's fields set (``None``: removed). New fields go first, in the
        layout's order; existing ones keep their place; every other field is kept."""
        out = dict(data)
        if value is None:
            for name in self.names:
                out.pop(name, None)
            return out
        if value.parts is not None and not self.plain:
            extra = [part for part, _ in value.parts if part not in {p for p, _ in self.fields}]
            if extra:       # written, they would be lost, and the value read back would differ
                raise LayoutError("this value has " + ", ".join(f"part '{p}'" for p in extra)
                                  + f" but the target has no field for it ({self.describe()})")
        new = {name: None for name in self.names if name not in out}
        if new:
            out = {**new, **out}
        for part, name in self.fields:
            out[name] = self._part(value, part, name)
        return out

    def _part(self, value: Secret, part: str, name: str) -> str:
        if part == "":
            if value.parts is not None:
                raise LayoutError(f"field '{name}' takes a plain value, but this value has parts"
                                  f" ({', '.join(p for p, _ in value.parts)}): set the target's fields")
            return value.reveal()
        try:
            return value.part(part)
        except KeyError:
            raise LayoutError(f"field '{name}' takes part '{part}', which this value does not have") from None


def encode_slot(value: Secret | None) -> str | dict[str, str] | None:
    """A pending/previous slot as stored in rotator's section: the string, or an object of parts."""
    if value is None:
        return None
    if value.parts is not None:
        return dict(value.parts)
    return value.reveal()


def decode_slot(data: Any, where: str) -> Secret | None:
    """The inverse of :func:`encode_slot`; a LayoutError naming ``where`` when it is neither."""
    if data is None or data == "":
        return None
    if isinstance(data, str):
        return Secret(data)
    if isinstance(data, Mapping) and data and all(isinstance(k, str) and k and isinstance(v, str) and v
                                                  for k, v in data.items()):
        return Secret.of_parts(data)
    raise LayoutError(f"{where} is a JSON {_kind(data)}, expected a string or an object of strings")


def _kind(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def target_fields(parts: tuple[tuple[str, str], ...], given: Any, where: str) -> dict[str, str]:
    """A target's part -> field map: the issuer's defaults (``parts``: part, default field),
    renamed by ``given`` (the target's or secret's ``fields``). Raises ValueError naming the
    problem: an unknown part, a name used twice, an empty name."""
    if given is None:
        given = {}
    if not isinstance(given, Mapping):
        raise ValueError(f"{where}: expected a table of part = field name")
    known = [part for part, _ in parts]
    unknown = [k for k in given if k not in known]
    if unknown:
        raise ValueError(f"{where}: unknown part {unknown[0]!r}; this issuer's keys have the parts "
                         + ", ".join(repr(p) for p in known))
    out = {part: given.get(part, default) for part, default in parts}
    for part, name in out.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}.{part}: expected a non-empty field name")
    if len(set(out.values())) != len(out):
        raise ValueError(f"{where}: two parts cannot share one field")
    return out
