"""The JSON a Secrets Manager version holds, and the ClientRequestTokens rotator writes it with.

A version's ``SecretString`` is the application's JSON object: the key in ``field`` (a key made of
several parts: one field per part, as the target's ``fields`` say, :mod:`rotator.values`), any
fields an application put there, and rotator's own section::

    {"api_key": "<key>", "endpoint": "...",
     "rotator": {"format": 1,
                 "meta": {"fingerprint": "...", "last4": "...", "key_id": "...", ...},
                 "pending": {"version": "<VersionId>", "fingerprint": "..."},     # primary only
                 "previous": {"version": "<VersionId>", "fingerprint": "..."},
                 "record": {...}}}                                                 # primary only

``pending`` and ``previous`` point at other versions by id (versions are immutable, so a pointer
is as good as a copy, and no key value is held twice). Nothing under ``rotator`` is a key value.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from typing import Any, Mapping

from rotator.errors import BackendError, CorruptPayload
from rotator.models import RECORD_FORMAT, KeyRef, RotationRecord, Secret
from rotator.timeutil import format_instant
from rotator.values import Layout, LayoutError

from rotator_providers.document import SECTION, kind

PAYLOAD_FORMAT = 1
_TOKENS = uuid.UUID("5d0c7a52-6f0e-4c55-9a3e-2f61b7a0c0de")


class Problem(Exception):
    """Raised inside the backend; becomes ``kind`` (a BackendError class) at the edge."""

    def __init__(self, kind: type[BackendError], message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclasses.dataclass(frozen=True)
class Ref:
    """A pointer to another version of the same secret, and the fingerprint of the key it holds."""

    version: str
    fingerprint: str

    def to_dict(self) -> dict[str, str]:
        return {"version": self.version, "fingerprint": self.fingerprint}

    @classmethod
    def parse(cls, data: Any, where: str) -> Ref | None:
        if data is None:
            return None
        if not (isinstance(data, dict) and isinstance(data.get("version"), str)
                and isinstance(data.get("fingerprint"), str)):
            raise Problem(CorruptPayload, f"'{where}' is not a version pointer"
                                          " ({\"version\": ..., \"fingerprint\": ...})")
        return cls(data["version"], data["fingerprint"])


@dataclasses.dataclass(frozen=True)
class Doc:
    """One version's payload. ``app`` is the JSON object as read (field order kept on write)."""

    app: Mapping[str, Any] = dataclasses.field(default_factory=dict, repr=False)
    current: Secret | None = None
    pending: Ref | None = None
    previous: Ref | None = None
    meta: Mapping[str, Any] | None = None
    record: Mapping[str, Any] | None = None

    @classmethod
    def parse(cls, text: str | None, layout: Layout | str) -> Doc:
        """The payload in ``text``, its key where ``layout`` (or the field it names) says."""
        layout = _layout(layout)
        if text is None:
            raise Problem(CorruptPayload, "holds a binary value (SecretBinary), expected a JSON object string")
        try:
            app = json.loads(text)
        except json.JSONDecodeError as exc:
            raise Problem(CorruptPayload, f"is not valid JSON: {exc.msg} at line {exc.lineno},"
                                          f" column {exc.colno}") from None
        if not isinstance(app, dict):
            raise Problem(CorruptPayload, f"the top level is a JSON {kind(app)}, expected an object")
        section = app.get(SECTION, {})
        if not isinstance(section, dict):
            raise Problem(CorruptPayload, f"'{SECTION}' is a JSON {kind(section)}, expected an object")
        version = section.get("format", PAYLOAD_FORMAT)
        if not isinstance(version, int) or isinstance(version, bool):
            raise Problem(CorruptPayload, f"'{SECTION}.format' is a JSON {kind(version)}, expected an integer")
        if version > PAYLOAD_FORMAT:
            raise Problem(CorruptPayload, f"payload format {version} is newer than this rotator understands"
                                          f" ({PAYLOAD_FORMAT}); upgrade rotator")
        record = section.get("record")
        if record is not None and not isinstance(record, dict):
            raise Problem(CorruptPayload, f"'{SECTION}.record' is a JSON {kind(record)}, expected an object")
        meta = section.get("meta")
        try:
            current = layout.read(app)
        except LayoutError as exc:
            raise Problem(CorruptPayload, str(exc)) from None
        return cls(
            app=app,
            current=current,
            pending=Ref.parse(section.get("pending"), f"{SECTION}.pending"),
            previous=Ref.parse(section.get("previous"), f"{SECTION}.previous"),
            meta=meta if isinstance(meta, dict) else None,
            record=record,
        )

    def evolve(self, **changes: Any) -> Doc:
        return dataclasses.replace(self, **changes)

    def plain(self) -> Doc:
        """The application's part only: same fields, no rotator section (for a new version)."""
        return Doc(app={k: v for k, v in self.app.items() if k != SECTION}, current=self.current)

    def encode(self, layout: Layout | str) -> str:
        """The SecretString to write: the key's fields set (a new field goes first, an existing one
        keeps its place; no key: its fields removed), the application's other fields kept. A key
        that does not fit ``layout`` is a BackendError (a configuration mismatch)."""
        try:
            out = _layout(layout).write(self.app, self.current)
        except LayoutError as exc:
            raise Problem(BackendError, str(exc)) from None
        section: dict[str, Any] = {"format": PAYLOAD_FORMAT}
        if self.meta:
            section["meta"] = dict(self.meta)
        for name in ("pending", "previous"):
            ref = getattr(self, name)
            if ref is not None:
                section[name] = ref.to_dict()
        if self.record is not None:
            section["record"] = dict(self.record)
        out[SECTION] = section
        return json.dumps(out, ensure_ascii=False, separators=(",", ":"))

    def rotation_record(self) -> RotationRecord | None:
        if self.record is None:
            return None
        version = self.record.get("format", RECORD_FORMAT)
        if isinstance(version, int) and version > RECORD_FORMAT:
            raise Problem(CorruptPayload, f"rotation record format {version} is newer than this rotator"
                                          f" understands ({RECORD_FORMAT}); upgrade rotator")
        try:
            return RotationRecord.from_dict(self.record)
        except (KeyError, TypeError, ValueError) as exc:
            raise Problem(CorruptPayload, f"the rotation record is unreadable ({type(exc).__name__})") from None


def meta_of(ref: KeyRef) -> dict[str, Any]:
    """What the payload says about the key it holds: ids, dates and a fingerprint; never the value."""
    meta = {
        "fingerprint": ref.fingerprint,
        "last4": ref.last4,
        "key_id": ref.key_id,
        "expires_on": format_instant(ref.expires_on),
        "rotation_id": ref.rotation_id,
    }
    return {key: value for key, value in meta.items() if value is not None}


def describing(value: Secret | None, *refs: KeyRef | None) -> dict[str, Any] | None:
    """Meta for ``value``: from the first ref that is about this value, else from the value."""
    if value is None:
        return None
    for ref in refs:
        if ref is not None and ref.fingerprint == value.fingerprint:
            return meta_of(ref)
    return meta_of(KeyRef.of(value))


def token(kind: str, rotation_id: str | None, base: str | None, content: str) -> str:
    """A ClientRequestToken (36 characters; boto3 wants 32 to 64) for writing ``content``.

    Derived from the rotation id, the step, the version the write starts from and the content:
    repeating the same write is idempotent (same VersionId), and distinct content never reuses a
    token (which real AWS refuses with ResourceExistsException).
    """
    digest = hashlib.sha256(content.encode("utf-8")).hexdigest()
    return str(uuid.uuid5(_TOKENS, f"{kind}\n{rotation_id or '-'}\n{base or '-'}\n{digest}"))


def _layout(layout: Layout | str) -> Layout:
    return Layout.of(layout) if isinstance(layout, str) else layout

