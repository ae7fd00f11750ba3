"""The JSON document a key-value backend stores per target, shared by the file and Vault backends.

::

    {"api_key": "<current>", "endpoint": "...",                 # the application's fields, kept
     "rotator": {"format": 1, "pending": "<new>", "previous": "<old>",
                 "meta": {...}, "record": {...}}}

Applications read the configured field; everything rotator needs sits under ``rotator``. Parsing
raises :class:`PayloadError` whose message names the part that is wrong, never a value. Nothing
here does I/O.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from rotator.models import RECORD_FORMAT, KeyRef, RotationRecord, Secret, Snapshot
from rotator.timeutil import format_instant

SECTION = "rotator"
PAYLOAD_FORMAT = 1


class PayloadError(ValueError):
    """The stored data is not what rotator wrote."""


class NothingPending(PayloadError):
    """A promote with an empty pending slot: a caller's mistake, not a corrupt payload."""


def reserved_field(text: str) -> str:
    """Validator for a target's ``field``: the section's own name is taken."""
    if text == SECTION:
        raise ValueError(f"'{SECTION}' is reserved for rotator's own section")
    return text


@dataclasses.dataclass(frozen=True)
class Document:
    app: Mapping[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    current: Secret | None = None
    pending: Secret | None = None
    previous: Secret | None = None
    record: Mapping[str, Any] | None = None
    meta: Mapping[str, Any] | None = None       # not read back: every write sets it afresh

    @classmethod
    def parse(cls, data: Any, field: str) -> Document:
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
        return cls(
            app=dict(data),
            current=_slot(data.get(field), f"field '{field}'"),
            pending=_slot(section.get("pending"), f"'{SECTION}.pending'"),
            previous=_slot(section.get("previous"), f"'{SECTION}.previous'"),
            record=record,
        )

    def evolve(self, **changes: Any) -> Document:
        return dataclasses.replace(self, **changes)

    def promoted(self) -> Document:
        if self.pending is None:
            raise NothingPending("nothing is pending, so there is nothing to promote")
        return self.evolve(current=self.pending, previous=self.current, pending=None)

    def encode(self, field: str, *, section_always: bool = True) -> dict[str, Any]:
        """The object to store: a new dict; the application's other fields keep their place.
        ``section_always`` False leaves out a section that would hold nothing but its format."""
        out = {key: value for key, value in self.app.items() if key != SECTION}
        if self.current is not None:
            if field not in out:
                out = {field: None, **out}      # a new field goes first; an existing one keeps its place
            out[field] = self.current.reveal()
        section: dict[str, Any] = {"format": PAYLOAD_FORMAT}
        for name in ("pending", "previous"):
            value = getattr(self, name)
            if value is not None:
                section[name] = value.reveal()
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


def _slot(value: Any, where: str) -> Secret | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise PayloadError(f"{where} is a JSON {kind(value)}, expected a string")
    return Secret(value)
