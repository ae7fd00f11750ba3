"""The data rotator reasons about: key values wrapped so they cannot leak, key metadata, the
rotation record (the journal kept in the primary backend) and what a backend read returns.

Everything here is a frozen dataclass. Nothing here does I/O.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timedelta
from typing import Any

from rotator import redact
from rotator.timeutil import format_instant, parse_instant

RECORD_FORMAT = 1
_FINGERPRINT_KEY = b"rotator/fingerprint/v1"


def fingerprint(value: str) -> str:
    """A stable, one-way digest of a key value, safe to store and print (16 hex characters)."""
    return hmac.new(_FINGERPRINT_KEY, value.encode(), hashlib.sha256).hexdigest()[:16]


def shown_id(identifier: str) -> str | None:
    """How the identifying part of a value made of parts (an AWS access key id) is shown in text
    that leaves the process: its first and last four characters ("AKIA…WXYZ"), enough to find it
    in a console; None (masked whole) when it is too short to keep anything of."""
    return f"{identifier[:4]}…{identifier[-4:]}" if len(identifier) >= 16 else None


class Secret:
    """A key value. Its ``str``/``repr`` never show it; only ``reveal()`` does.

    Creating one registers the value with the redactor, so the value is masked in every log
    record, exception message and CLI line this process produces from then on.
    """

    __slots__ = ("_value", "_fingerprint", "_parts", "_load")

    def __init__(self, value: str) -> None:
        if not isinstance(value, str) or not value:
            raise ValueError("a secret must be a non-empty string")
        self._value: str | None = value
        self._fingerprint: str | None = None      # computed once: the machine compares them every step
        self._parts: tuple[tuple[str, str], ...] | None = None
        self._load: Callable[[], Secret] | None = None
        redact.remember(value)

    @classmethod
    def deferred(cls, fingerprint: str, load: Callable[[], Secret]) -> Secret:
        """A value known by its fingerprint, read with ``load`` only when something needs more:
        the value, its parts or last four characters, or equality with another value of the same
        fingerprint (a different fingerprint is a different value, known without reading). A
        store uses it for a value its own pointer describes (an older version of an AWS secret)
        that most runs never look into. ``load`` raises the store's error when it cannot read the
        value; a value read with another fingerprint raises ``ValueError``."""
        secret = cls.__new__(cls)
        secret._value, secret._fingerprint, secret._parts, secret._load = None, fingerprint, None, load
        return secret

    def _read(self) -> str:
        """The value, read first if deferred (two threads may both read it: the same value)."""
        value = self._value
        if value is None:
            assert self._load is not None
            loaded = self._load()
            if loaded.fingerprint != self._fingerprint:
                raise ValueError("the value read does not have the fingerprint it was described by")
            value, self._parts = loaded.reveal(), loaded.parts
            self._value = value
        return value

    @classmethod
    def of_parts(cls, parts: Mapping[str, str] | Iterable[tuple[str, str]]) -> Secret:
        """A value made of several named parts (an AWS access key: its id and its secret), kept
        and compared as one: ``reveal()`` is the parts as one canonical JSON object (sorted names,
        no spaces) and the fingerprint is that string's, so the order the parts arrive in never
        changes it. The first part names the key in messages (``last4``): give the identifying
        part first. Every part is masked wherever text leaves the process."""
        items = tuple(parts.items()) if isinstance(parts, Mapping) else tuple(parts)
        names = [name for name, _ in items]
        if not items or len(set(names)) != len(names):
            raise ValueError("a value of parts needs at least one part, each name once")
        for name, value in items:
            if not isinstance(name, str) or not name or not isinstance(value, str) or not value:
                raise ValueError("each part of a value needs a name and a non-empty string")
        for index, (_, value) in enumerate(items):
            redact.remember(value, shown=shown_id(value) if index == 0 else None)
        secret = cls(json.dumps(dict(sorted(items)), separators=(",", ":"), ensure_ascii=False))
        secret._parts = items
        return secret

    @property
    def parts(self) -> tuple[tuple[str, str], ...] | None:
        """The named parts of a value made of several (``of_parts``), else None."""
        self._read()
        return self._parts

    def part(self, name: str) -> str:
        """One part of a value made of several; KeyError when it has no such part."""
        for key, value in self.parts or ():
            if key == name:
                return value
        raise KeyError(name)

    def reveal(self) -> str:
        return self._read()

    @property
    def last4(self) -> str:
        value = self._read()
        if self._parts:
            return self._parts[0][1][-4:]
        return value[-4:]

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = fingerprint(self._read())
        return self._fingerprint

    def __repr__(self) -> str:
        if self._value is None:                   # deferred: a repr never reads a store
            return f"<secret fp={self._fingerprint}>"
        return f"<secret …{self.last4} fp={self.fingerprint}>"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __eq__(self, other: object) -> bool:
        # bytes: compare_digest refuses str with non-ASCII characters (TypeError), and a stored
        # value, or a part of one, may have them
        if not isinstance(other, Secret):
            return False
        if (self._value is None or other._value is None) and self.fingerprint != other.fingerprint:
            return False                          # deferred: no need to read it
        return hmac.compare_digest(self._read().encode(), other._read().encode())

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __reduce__(self) -> Any:
        raise TypeError("secrets are not picklable")


class Phase(str, enum.Enum):
    """Where a managed secret stands in its rotation (ARCHITECTURE.md §4)."""

    IDLE = "idle"                  # one current key; nothing in flight
    CLAIMED = "claimed"            # a runner holds the lease and is about to issue
    STAGED = "staged"              # the new key is pending in the primary; deploy + verify next
    GRACE = "grace"                # new key is current everywhere; old key still valid until grace_until
    ROLLING_BACK = "rolling_back"  # the new key failed verification; restoring the old one


@dataclass(frozen=True)
class KeyRef:
    """What rotator knows of one key, without its value."""

    fingerprint: str
    last4: str
    key_id: str | None = None
    name: str | None = None
    created_on: datetime | None = None
    expires_on: datetime | None = None
    rotation_id: str | None = None

    @classmethod
    def of(cls, secret: Secret, **meta: Any) -> KeyRef:
        return cls(fingerprint=secret.fingerprint, last4=secret.last4, **meta)

    def label(self) -> str:
        """Short, printable: '…c0de (id 42)'."""
        ident = f" (id {self.key_id})" if self.key_id else ""
        return f"…{self.last4}{ident}"

    def refers_to(self, entry: KeyInfo) -> bool:
        """Is the listing ``entry`` this key? By id when known, else by last 4 (and name)."""
        if self.key_id:
            return self.key_id == entry.key_id
        return self.last4 == entry.last4 and (self.name is None or self.name == entry.name)

    def to_dict(self) -> dict[str, Any]:
        # by hand, not dataclasses.asdict (which deep-copies every field): written on every step
        out = {"fingerprint": self.fingerprint, "last4": self.last4, "key_id": self.key_id, "name": self.name,
               "created_on": format_instant(self.created_on), "expires_on": format_instant(self.expires_on),
               "rotation_id": self.rotation_id}
        return {k: v for k, v in out.items() if v is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KeyRef:
        return cls(
            fingerprint=str(data["fingerprint"]),
            last4=str(data["last4"]),
            key_id=data.get("key_id"),
            name=data.get("name"),
            created_on=_instant(data.get("created_on")),
            expires_on=_instant(data.get("expires_on")),
            rotation_id=data.get("rotation_id"),
        )


@dataclass(frozen=True)
class HeldKey:
    """An old key whose revoke the gate held (another secret still serves it, a consumer has not
    confirmed, the evidence was missing). Each run asks the gate again; the rotation that is the
    last to move away from the key revokes it.

    ``rotation_id``: the rotation that replaced the key (its consumer gates must pass before the
    revoke); ``consumers``: the gate hooks that had not confirmed when it was last asked."""

    key: KeyRef
    reason: str
    since: datetime
    rotation_id: str | None = None
    consumers: tuple[str, ...] = ()
    replaced_at: datetime | None = None     # when its replacement was deployed everywhere (usage evidence)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"key": self.key.to_dict(), "reason": self.reason, "since": format_instant(self.since)}
        if self.rotation_id:
            out["rotation_id"] = self.rotation_id
        if self.consumers:
            out["consumers"] = list(self.consumers)
        if self.replaced_at is not None:
            out["replaced_at"] = format_instant(self.replaced_at)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HeldKey:
        return cls(KeyRef.from_dict(data["key"]), str(data.get("reason", "")),
                   _instant(data.get("since")) or parse_instant("1970-01-01T00:00:00Z"),
                   rotation_id=data.get("rotation_id"), consumers=tuple(data.get("consumers") or ()),
                   replaced_at=_instant(data.get("replaced_at")))


#: Delivery states: ``owed`` (not yet delivered, or failed and retried at ``next_at``), ``done``
#: (the hook succeeded; never repeated), ``given-up`` (a non-gate hook failed ``max_attempts`` times).
DELIVERY_STATES = ("owed", "done", "given-up")


@dataclass(frozen=True)
class Delivery:
    """One hook delivery owed or made, keyed by (rotation id, event, hook): recorded in the
    rotation record in the same compare-and-swap as the effect it reports, so a crash between the
    effect and the hook re-delivers it on resume (at least once), and a finished delivery is never
    repeated by another runner. ``next_at`` is when it may be tried (again); while a runner
    delivers it, ``next_at`` is pushed past the hook's timeout, which keeps other runners off it.
    ``key``/``old_key``/``detail`` are the context the hook is told (never a value)."""

    rotation_id: str
    event: str
    hook: str
    gate: bool = False
    state: str = "owed"
    attempts: int = 0
    next_at: datetime | None = None
    last_error: str | None = None
    done_at: datetime | None = None
    key: KeyRef | None = None
    old_key: KeyRef | None = None
    detail: str | None = None

    @property
    def ident(self) -> tuple[str, str, str]:
        return (self.rotation_id, self.event, self.hook)

    @property
    def owed(self) -> bool:
        return self.state == "owed"

    def due(self, now: datetime) -> bool:
        return self.owed and (self.next_at is None or self.next_at <= now)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rotation_id": self.rotation_id, "event": self.event, "hook": self.hook,
                               "state": self.state, "attempts": self.attempts}
        if self.gate:
            out["gate"] = True
        for name in ("next_at", "done_at"):
            if getattr(self, name) is not None:
                out[name] = format_instant(getattr(self, name))
        for name in ("key", "old_key"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name).to_dict()
        for name in ("last_error", "detail"):
            if getattr(self, name):
                out[name] = getattr(self, name)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Delivery:
        return cls(
            rotation_id=str(data["rotation_id"]), event=str(data["event"]), hook=str(data["hook"]),
            gate=bool(data.get("gate", False)), state=str(data.get("state", "owed")),
            attempts=int(data.get("attempts", 0)), next_at=_instant(data.get("next_at")),
            last_error=data.get("last_error"), done_at=_instant(data.get("done_at")),
            key=KeyRef.from_dict(data["key"]) if data.get("key") else None,
            old_key=KeyRef.from_dict(data["old_key"]) if data.get("old_key") else None,
            detail=data.get("detail"),
        )


@dataclass(frozen=True)
class Pause:
    """``rotator pause``: no rotation starts (and no old key is revoked) while it lasts; an
    in-flight rotation still finishes. Lapses by itself at ``until``."""

    by: str
    at: datetime
    until: datetime | None = None
    reason: str = ""

    def active(self, now: datetime) -> bool:
        return self.until is None or now < self.until

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"by": self.by, "at": format_instant(self.at)}
        if self.until is not None:
            out["until"] = format_instant(self.until)
        if self.reason:
            out["reason"] = self.reason
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Pause:
        return cls(by=str(data.get("by", "?")), at=_instant(data.get("at")) or parse_instant("1970-01-01T00:00:00Z"),
                   until=_instant(data.get("until")), reason=str(data.get("reason", "")))


@dataclass(frozen=True)
class RotationRecord:
    """The journal of one managed secret, stored in its primary backend next to the value.

    Written with compare-and-swap before every effect, so a crash anywhere replays to the same
    outcome. Holds fingerprints and ids, never values.
    """

    phase: Phase = Phase.IDLE
    current: KeyRef | None = None
    pending: KeyRef | None = None
    previous: KeyRef | None = None
    rotation_id: str | None = None
    owner: str | None = None
    lease_until: datetime | None = None
    started_at: datetime | None = None
    verified_at: datetime | None = None
    grace_until: datetime | None = None
    attempts: int = 0
    last_error: str | None = None
    error_since: datetime | None = None     # the first failure of the current streak
    rollback_reason: str | None = None      # why the rotation in ROLLING_BACK is being rolled back
    last_rotated_at: datetime | None = None
    rotations: int = 0
    adoption: str | None = None
    held: tuple[HeldKey, ...] = ()
    deliveries: tuple[Delivery, ...] = ()   # hook deliveries owed and made (rotator.hooks)
    paused: Pause | None = None
    format: int = RECORD_FORMAT

    def evolve(self, **changes: Any) -> RotationRecord:
        return renewed(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": self.format, "phase": self.phase.value}
        for name in ("current", "pending", "previous"):
            ref = getattr(self, name)
            if ref is not None:
                out[name] = ref.to_dict()
        for name in ("started_at", "verified_at", "grace_until", "lease_until", "last_rotated_at", "error_since"):
            if getattr(self, name) is not None:
                out[name] = format_instant(getattr(self, name))
        for name in ("rotation_id", "owner", "last_error", "adoption", "rollback_reason"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        out["attempts"] = self.attempts
        out["rotations"] = self.rotations
        if self.held:
            out["held"] = [h.to_dict() for h in self.held]
        if self.deliveries:
            out["deliveries"] = [d.to_dict() for d in self.deliveries]
        if self.paused is not None:
            out["paused"] = self.paused.to_dict()
        return out

    def paused_now(self, now: datetime) -> Pause | None:
        """The pause in force at ``now`` (a pause lapses by itself at its ``until``)."""
        return self.paused if self.paused is not None and self.paused.active(now) else None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RotationRecord:
        version = int(data.get("format", 1))
        if version > RECORD_FORMAT:
            raise ValueError(
                f"rotation record format {version} is newer than this rotator understands"
                f" ({RECORD_FORMAT}); upgrade rotator"
            )
        refs = {n: KeyRef.from_dict(data[n]) for n in ("current", "pending", "previous") if data.get(n)}
        return cls(
            phase=Phase(data.get("phase", "idle")),
            rotation_id=data.get("rotation_id"),
            owner=data.get("owner"),
            lease_until=_instant(data.get("lease_until")),
            started_at=_instant(data.get("started_at")),
            verified_at=_instant(data.get("verified_at")),
            grace_until=_instant(data.get("grace_until")),
            attempts=int(data.get("attempts", 0)),
            last_error=data.get("last_error"),
            error_since=_instant(data.get("error_since")),
            rollback_reason=data.get("rollback_reason"),
            last_rotated_at=_instant(data.get("last_rotated_at")),
            rotations=int(data.get("rotations", 0)),
            adoption=data.get("adoption"),
            held=tuple(HeldKey.from_dict(h) for h in data.get("held") or ()),
            deliveries=tuple(Delivery.from_dict(d) for d in data.get("deliveries") or ()),
            paused=Pause.from_dict(data["paused"]) if data.get("paused") else None,
            **refs,
        )


@dataclass(frozen=True)
class Snapshot:
    """One read of a backend target.

    ``version`` is an opaque compare-and-swap token (None: the target does not exist). Secondary
    targets may leave ``pending`` and ``record`` empty.
    """

    version: str | None = None
    current: Secret | None = None
    pending: Secret | None = None
    previous: Secret | None = None
    record: RotationRecord | None = None

    @property
    def exists(self) -> bool:
        return self.version is not None


@dataclass(frozen=True)
class IssuedKey:
    """A key just minted. The issuer returns its value once; ``key_id`` is often unknown yet.

    ``maybe_twinned``: an earlier attempt of this issue may also have minted a key (its reply was
    lost, or a 5xx came back), so a twin may exist under the same name. An issuer that cannot tell
    leaves it True. The engine looks for twins in every case (it confirms each new key in a
    listing); this says why one was found, in the audit trail.
    """

    value: Secret
    name: str
    created_on: datetime
    expires_on: datetime
    key_id: str | None = None
    maybe_twinned: bool = True
    note: str | None = None         # why the reported dates were not taken as they came

    def ref(self, rotation_id: str | None = None) -> KeyRef:
        return KeyRef.of(
            self.value,
            key_id=self.key_id,
            name=self.name,
            created_on=self.created_on,
            expires_on=self.expires_on,
            rotation_id=rotation_id,
        )


@dataclass(frozen=True)
class KeyInfo:
    """One entry of an issuer's key listing: metadata, never the value. Validated at the
    provider edge: ``key_id`` is a non-empty string and ``last4`` four characters.

    ``expires_on`` is the expiry to plan with: the earlier of what the issuer reported and what
    its documented key lifetime allows (``created_on`` + lifetime). None when the dates could not
    be trusted (unparseable, implausible): such a key is treated as due, never as dead. ``note``
    says why the reported dates were not taken as they came.
    """

    key_id: str
    name: str
    last4: str
    created_on: datetime | None
    expires_on: datetime | None
    account: str | None = None
    last_used_on: datetime | None = None
    note: str | None = None
    kept: str | None = None         # why the issuer says to leave this key alone unless a record names it

    def label(self) -> str:
        """Short, printable: '…c0de (id 42)'."""
        return f"…{self.last4} (id {self.key_id})"


class Listing(Sequence[KeyInfo]):
    """One complete listing of an issuer user's live keys, validated entry by entry.

    ``problems`` names every contradiction found while validating it (an entry without a usable
    id, two entries with one id, a page that repeats): a listing with problems is never used to
    decide a revoke. It still serves as a read-only view (adoption, review) where the entries that
    passed validation are enough.
    """

    __slots__ = ("keys", "problems")

    def __init__(self, keys: Iterable[KeyInfo] = (), problems: Iterable[str] = ()) -> None:
        self.keys: tuple[KeyInfo, ...] = tuple(keys)
        self.problems: tuple[str, ...] = tuple(problems)

    @property
    def usable(self) -> bool:
        """True when nothing in it contradicts itself: only then may it justify a revoke."""
        return not self.problems

    def by_id(self, key_id: str | None) -> KeyInfo | None:
        if not key_id:
            return None
        for key in self.keys:
            if key.key_id == key_id:
                return key
        return None

    def named(self, name: str) -> list[KeyInfo]:
        return [k for k in self.keys if k.name == name]

    def __getitem__(self, index):  # type: ignore[override]
        return self.keys[index]

    def __len__(self) -> int:
        return len(self.keys)

    def __iter__(self) -> Iterator[KeyInfo]:
        return iter(self.keys)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Listing):
            return self.keys == other.keys and self.problems == other.problems
        if isinstance(other, (list, tuple)):
            return list(self.keys) == list(other) and not self.problems
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        extra = f", problems={list(self.problems)!r}" if self.problems else ""
        return f"Listing({len(self.keys)} keys{extra})"


@dataclass(frozen=True)
class DormantKey:
    """A deactivated key of an issuer whose revoke has two stages (AWS IAM): it can no longer
    sign requests but still exists, so a person can reactivate it. ``deactivated_on``: when
    rotator deactivated it (None: not rotator, or the note of it was lost)."""

    key_id: str
    created_on: datetime
    deactivated_on: datetime | None

    def entry(self, account: str | None, lifetime: timedelta | None) -> KeyInfo:
        """As a listing entry (the gate judges its deletion on a listing of dormant keys)."""
        return KeyInfo(key_id=self.key_id, name="", last4=self.key_id[-4:], created_on=self.created_on,
                       expires_on=self.created_on + lifetime if lifetime else None, account=account,
                       note="inactive")


@dataclass(frozen=True)
class KeyUse:
    """When a key last signed a request, as the issuer knows it (None: never), and where."""

    when: datetime | None
    service: str | None = None
    region: str | None = None

    def describe(self) -> str:
        if self.when is None:
            return "never used"
        where = " ".join(p for p in (self.service and f"by {self.service}", self.region and f"in {self.region}") if p)
        return f"last used {format_instant(self.when)}" + (f" {where}" if where else "")


@dataclass(frozen=True)
class UsagePolicy:
    """An issuer's rule for usage evidence before an old key is revoked (the gate applies it):
    with ``require_unused``, an old key used more than ``slack`` after its replacement was deployed
    everywhere is held until it has gone unused for ``quiet_for``; without, it is revoked anyway
    and the use is reported."""

    require_unused: bool = True
    slack: timedelta = timedelta(hours=1)
    quiet_for: timedelta = timedelta(hours=24)


@dataclass(frozen=True)
class IssuerCapabilities:
    """What an issuer's keys and API are like, as far as the core must know.

    ``reports_last_used``: listing entries carry ``last_used_on`` (and ``last_used`` tells more).
    ``max_keys_per_owner``: a hard limit on live keys per owner (AWS IAM: 2, inactive keys
    included); before issuing, the core makes room by deleting a key nothing relies on, or waits.
    ``value_parts``: (part, default field) pairs when a key is several strings (an AWS access key:
    id and secret); empty for a plain string (see :mod:`rotator.values`).
    ``named_keys``: keys carry the name they were issued with, so a rotation's keys are found by
    it. False (AWS IAM keys have no name): every key of the owner is rotator's to manage, and a key
    no record knows is an orphan, swept under the gate's rules.
    """

    reports_last_used: bool = False
    revoke_by_value: bool = False
    max_keys_per_owner: int | None = None
    value_parts: tuple[tuple[str, str], ...] = ()
    named_keys: bool = True


@dataclass(frozen=True)
class BackendCapabilities:
    holds_record: bool = True       # has compare-and-swap: may be a primary
    keeps_previous: bool = True     # can hold the previous value during the grace window
    extra: Mapping[str, Any] = field(default_factory=dict)


def _instant(value: Any) -> datetime | None:
    return None if value in (None, "") else parse_instant(value)


_PLAIN: dict[type, frozenset[str]] = {}


def renewed(obj: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` for the frozen dataclasses a rotation renews ~40 times (its
    observations, records, snapshots, file documents): the instance's fields copied and
    ``changes`` applied, without going through ``__init__`` — 0.6 against 4.2 µs for
    :class:`rotator.machine.Observations`. A class with ``__post_init__``, ``__slots__`` or a field
    not set by ``__init__``, or an instance holding more than its fields, goes through ``replace``;
    an unknown field name raises TypeError either way."""
    cls = type(obj)
    names = _PLAIN.get(cls)
    if names is None:
        plain = not (hasattr(cls, "__post_init__") or hasattr(cls, "__slots__")
                     or any(not f.init for f in fields(cls)))
        names = _PLAIN[cls] = frozenset(f.name for f in fields(cls)) if plain else frozenset()
    state = getattr(obj, "__dict__", None)
    if not names or state is None or len(state) != len(names):
        return replace(obj, **changes)
    if not changes.keys() <= names:
        unknown = ", ".join(sorted(set(changes) - names))
        raise TypeError(f"{cls.__name__} has no field {unknown}")
    new = object.__new__(cls)
    new.__dict__.update(state)
    new.__dict__.update(changes)
    return new
