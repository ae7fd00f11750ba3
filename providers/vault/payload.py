"""The data of one KV secret: the application's fields plus rotator's own section.

::

    {"api_key": "<current>", "endpoint": "...",                 # the application's fields, kept
     "rotator": {"format": 1, "pending": "<new>", "previous": "<old>", "record": {...}}}

``pending`` and ``previous`` are left out when empty, and the whole section is left out when it
would hold nothing but its format. Nothing here does I/O.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Mapping

from rotator.models import RECORD_FORMAT, KeyRef, RotationRecord, Secret
from rotator.timeutil import format_instant

from providers.vault.settings import SECTION

PAYLOAD_FORMAT = 1
METADATA_PREFIX = "rotator_"


class PayloadError(ValueError):
    """The stored data is not what rotator wrote; the message names the part, never a value."""


@dataclasses.dataclass(frozen=True)
class Document:
    app: Mapping[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    current: Secret | None = None
    pending: Secret | None = None
    previous: Secret | None = None
    record: Mapping[str, Any] | None = None
    meta: Mapping[str, Any] | None = None        # KV v1 only: v2 keeps it in custom_metadata

    @classmethod
    def parse(cls, data: Mapping[str, Any] | None, field: str) -> Document:
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise PayloadError(f"the data is a JSON {_kind(data)}, expected an object")
        section = data.get(SECTION, {})
        if not isinstance(section, Mapping):
            raise PayloadError(f"'{SECTION}' is a JSON {_kind(section)}, expected an object")
        version = section.get("format", PAYLOAD_FORMAT)
        if not isinstance(version, int) or isinstance(version, bool):
            raise PayloadError(f"'{SECTION}.format' is a JSON {_kind(version)}, expected an integer")
        if version > PAYLOAD_FORMAT:
            raise PayloadError(f"payload format {version} is newer than this rotator understands"
                               f" ({PAYLOAD_FORMAT}); upgrade rotator")
        record = section.get("record")
        if record is not None and not isinstance(record, Mapping):
            raise PayloadError(f"'{SECTION}.record' is a JSON {_kind(record)}, expected an object")
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
            raise PayloadError("nothing is pending, so there is nothing to promote")
        return self.evolve(current=self.pending, previous=self.current, pending=None)

    def encode(self, field: str) -> dict[str, Any]:
        """The data to write: a new dict; the application's other fields keep their place."""
        out = {key: value for key, value in self.app.items() if key != SECTION}
        if self.current is not None:
            if field not in out:
                out = {field: None, **out}
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
        if len(section) > 1:
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
        except (KeyError, TypeError, ValueError) as exc:
            raise PayloadError(f"the rotation record is unreadable ({type(exc).__name__})") from None


def describe(current: Secret | None, known: KeyRef | None) -> KeyRef | None:
    """The KeyRef describing ``current``: ``known`` when it is that key, else the bare fingerprint."""
    if current is None:
        return None
    if known is not None and known.fingerprint == current.fingerprint:
        return known
    return KeyRef.of(current)


def meta_fields(ref: KeyRef | None) -> dict[str, str]:
    """What the metadata says about the current key: ids, expiry, fingerprint. Never a value."""
    if ref is None:
        return {}
    fields = {
        "key_id": ref.key_id,
        "expires_on": format_instant(ref.expires_on),
        "rotation_id": ref.rotation_id,
        "fingerprint": ref.fingerprint,
    }
    return {key: str(value) for key, value in fields.items() if value is not None}


def merged_custom_metadata(existing: Mapping[str, Any] | None, ref: KeyRef | None) -> dict[str, str]:
    """``existing`` with rotator's keys (``rotator_*``) replaced; other people's keys kept."""
    out = {k: str(v) for k, v in (existing or {}).items() if not str(k).startswith(METADATA_PREFIX)}
    out.update({METADATA_PREFIX + key: value for key, value in meta_fields(ref).items()})
    return out


def content_version(data: Mapping[str, Any]) -> str:
    """KV v1 has no versions: a digest of the content stands in for one."""
    raw = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return "sha256:" + hashlib.sha256(raw).hexdigest()[:32]


def _slot(value: Any, where: str) -> Secret | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise PayloadError(f"{where} is a JSON {_kind(value)}, expected a string")
    return Secret(value)


def _kind(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)
