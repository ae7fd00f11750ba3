"""The JSON document a key-value backend stores per target, shared by the file, Vault and
Parameter Store backends.

::

    {"api_key": "<current>", "endpoint": "...",                 # the application's fields, kept
     "rotator": {"format": 1, "pending": "<new>", "previous": "<old>",
                 "meta": {...}, "record": {...}}}

Applications read the configured field; everything rotator needs sits under ``rotator``. A value
made of several parts (an AWS access key) takes one field per part, and its pending and previous
slots are objects of parts (:mod:`rotator.values`)::

    {"aws_access_key_id": "AKIA...", "aws_secret_access_key": "...",
     "rotator": {"format": 1, "previous": {"access_key_id": "...", "secret_access_key": "..."}}}

Parsing raises :class:`PayloadError` whose message names the part that is wrong, never a value.
Nothing here does I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import AfterValidator, Field

from rotator.models import RECORD_FORMAT, KeyRef, RotationRecord, Secret, Snapshot, renewed
from rotator.timeutil import format_instant
from rotator.values import Layout, LayoutError, decode_slot, encode_slot

SECTION = "rotator"
PAYLOAD_FORMAT = 1


class PayloadError(ValueError):
    """The stored data is not what rotator wrote."""


class NothingPending(PayloadError):
    """A promote with an empty pending slot: a caller's mistake, not a corrupt payload."""


class LayoutMismatch(PayloadError):
    """A value that does not fit the target's fields (a value of parts for a plain field, a part
    the target has no field for): a configuration mismatch, not a corrupt payload."""


def reserved_field(text: str) -> str:
    """Validator for a target's ``field``: the section's own name is taken."""
    if text == SECTION:
        raise ValueError(f"'{SECTION}' is reserved for rotator's own section")
    return text


def _distinct(fields: dict[str, str] | None) -> dict[str, str] | None:
    if fields and len(set(fields.values())) != len(fields):
        raise ValueError("two parts cannot share one field")
    return fields or None


#: A field name, checked as every backend checks a target's ``field``.
FieldName = Annotated[str, Field(min_length=1), AfterValidator(reserved_field)]
#: A target's ``fields`` (part -> JSON field) for a value made of several parts; ``None`` (or an
#: empty table) for a plain value.
TargetFields = Annotated[dict[str, FieldName] | None, AfterValidator(_distinct)]


def frozen_fields(fields: Mapping[str, str] | None) -> tuple[tuple[str, str], ...] | None:
    """A target's ``fields`` as (part, field) pairs in the given order: hashable, so targets stay
    usable as dict keys; ``None`` for a plain value."""
    return tuple(fields.items()) if fields else None


def layout_of(field: str, fields: tuple[tuple[str, str], ...] | None) -> Layout:
    """Where a target's value sits: one field per part when it has ``fields``, else ``field``."""
    return Layout(fields) if fields else Layout.of(field)


@dataclasses.dataclass(frozen=True)
class Document:
    app: Mapping[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    current: Secret | None = None
    pending: Secret | None = None
    previous: Secret | None = None
    record: Mapping[str, Any] | None = None
    meta: Mapping[str, Any] | None = None       # not read back: every write sets it afresh

    @classmethod
    def parse(cls, data: Any, layout: Layout | str) -> Document:
        """The document in ``data`` (the stored JSON object), its value where ``layout`` (or the
        field it names) says."""
        layout = _layout(layout)
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise PayloadError(f"the top level is a JSON {kind(data)}, expected an object")
        section = data.get(SECTION, {})
        if not isinstance(section, Mapping):
            raise PayloadError(f"'{SECTION}' is a JSON {kind(section)}, expected an object")
        version = section.get("format", PAYLOAD_FORMAT)
        if not isinstance(version, int) or isinstance(version, bool):
            raise PayloadError(f"'{SECTION}.format' is a JSON {kind(version)}, expected an integer")
        if version > PAYLOAD_FORMAT:
            raise PayloadError(f"payload format {version} is newer than this rotator understands"
                               f" ({PAYLOAD_FORMAT}); upgrade rotator")
        record = section.get("record")
        if record is not None and not isinstance(record, Mapping):
            raise PayloadError(f"'{SECTION}.record' is a JSON {kind(record)}, expected an object")
        try:
            current = layout.read(data)
        except LayoutError as exc:
            raise PayloadError(str(exc)) from None
        return cls(
            app=dict(data),
            current=current,
            pending=_slot(section.get("pending"), f"'{SECTION}.pending'", layout),
            previous=_slot(section.get("previous"), f"'{SECTION}.previous'", layout),
            record=record,
        )

    def evolve(self, **changes: Any) -> Document:
        return renewed(self, **changes)

    def promoted(self) -> Document:
        if self.pending is None:
            raise NothingPending("nothing is pending, so there is nothing to promote")
        return self.evolve(current=self.pending, previous=self.current, pending=None)

    def encode(self, layout: Layout | str, *, section_always: bool = True) -> dict[str, Any]:
        """The object to store: a new dict; the application's other fields keep their place (a
        new field goes first). ``section_always`` False leaves out a section that would hold
        nothing but its format. A value that does not fit ``layout`` is a LayoutMismatch."""
        layout = _layout(layout)
        out = {key: value for key, value in self.app.items() if key != SECTION}
        section: dict[str, Any] = {"format": PAYLOAD_FORMAT}
        try:
            if self.current is not None:
                out = layout.write(out, self.current)
            for name in ("pending", "previous"):
                value = getattr(self, name)
                if value is not None:
                    _fits(value, layout, f"'{SECTION}.{name}'")
                    section[name] = encode_slot(value)
        except LayoutError as exc:
            raise LayoutMismatch(str(exc)) from None
        if self.meta:
            section["meta"] = dict(self.meta)
        if self.record:
            section["record"] = dict(self.record)
        if section_always or len(section) > 1:
            out[SECTION] = section
        return out

    def rotation_record(self) -> RotationRecord | None:
        if self.record is None:
            return None
        version = self.record.get("format", RECORD_FORMAT)
        if isinstance(version, int) and version > RECORD_FORMAT:
            raise PayloadError(f"rotation record format {version} is newer than this rotator"
                               f" understands ({RECORD_FORMAT}); upgrade rotator")
        try:
            return RotationRecord.from_dict(self.record)
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:   # its text could quote stored content
            raise PayloadError(f"the rotation record is unreadable ({type(exc).__name__})") from None

    def snapshot(self, version: str) -> Snapshot:
        return Snapshot(version=version, current=self.current, pending=self.pending,
                        previous=self.previous, record=self.rotation_record())


def describe(current: Secret | None, known: KeyRef | None) -> KeyRef | None:
    """The KeyRef describing ``current``: ``known`` when it is that key, else the bare fingerprint."""
    if current is None:
        return None
    if known is not None and known.fingerprint == current.fingerprint:
        return known
    return KeyRef.of(current)


def meta_fields(ref: KeyRef | None, *, last4: bool = False) -> dict[str, str]:
    """What a backend's metadata says about the current key: ids, expiry, fingerprint (and, where
    only the key's readers see it, its last 4 characters). Never a value."""
    if ref is None:
        return {}
    fields = {
        "key_id": ref.key_id,
        "expires_on": format_instant(ref.expires_on),
        "rotation_id": ref.rotation_id,
        "fingerprint": ref.fingerprint,
        "last4": ref.last4 if last4 else None,
    }
    return {key: str(value) for key, value in fields.items() if value is not None}


def kind(value: Any) -> str:
    """The JSON type name of ``value``, for messages that must not quote it."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _layout(layout: Layout | str) -> Layout:
    return Layout.of(layout) if isinstance(layout, str) else layout


def _slot(value: Any, where: str, layout: Layout) -> Secret | None:
    """A pending/previous slot: a string for a plain value, an object of exactly the layout's
    parts otherwise."""
    if value is None or value == "":
        return None
    if layout.plain:
        if not isinstance(value, str):
            raise PayloadError(f"{where} is a JSON {kind(value)}, expected a string")
        return Secret(value)
    if not isinstance(value, Mapping):
        raise PayloadError(f"{where} is a JSON {kind(value)}, expected an object of parts")
    try:
        secret = decode_slot(value, where)
        _fits(secret, layout, where)
    except LayoutError as exc:
        raise PayloadError(str(exc)) from None
    return secret


def _fits(value: Secret, layout: Layout, where: str) -> None:
    """A LayoutError unless ``value`` has exactly the parts of ``layout`` (a plain value for a
    plain layout)."""
    wanted = None if layout.plain else sorted(part for part, _ in layout.fields)
    found = None if value.parts is None else sorted(part for part, _ in value.parts)
    if found == wanted:
        return
    if wanted is None:
        raise LayoutError(f"{where} holds a value of parts, but the target has one field")
    expected = ", ".join(f"'{part}'" for part in wanted)
    if found is None:
        raise LayoutError(f"{where} holds a plain value, expected the parts {expected}")
    raise LayoutError(f"{where} does not hold the parts {expected}")
