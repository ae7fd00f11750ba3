"""``rotator review`` (``rotator audit`` before, a deprecated alias for one release): the
monthly key review the QuivaWorks guide asks for, done against each issuer's own key list.

Every key the issuer lists is given a role — ``current`` / ``pending`` / ``previous`` of a managed
secret, ``held`` (an old key whose revoke the gate held; the record says why), ``credential`` (the
key rotator itself signs in with), ``orphan`` (named by rotator for a managed secret, but no record
names it) or ``unmanaged`` — and flags: ``expired``, ``expiring`` (within the lead time),
``unused-30d`` (when the issuer reports last use), ``unclear-name``, ``shared`` (two or more
managed secrets rely on it), ``served`` (a target serves a key no record of its secret names),
and for orphans what the run's sweep would do with it: ``would-sweep`` (older than the issuer's
in-flight bound, nothing relies on it: the next run revokes it) or ``in-flight`` (younger, or its
rotation is still claimed: left alone).

Whether a key could be revoked is not guessed here: :func:`classify` asks the revoke gate
(:func:`rotator.gate.judge`) with the evidence the review read — the listing, every target's
keys, the records, the live claims, the admin key — exactly as a revoke would. A key the gate
would hold is never shown as revocable, and the reason is shown instead.

:func:`classify` is pure; the CLI does the reads and the revocations (through the gate again,
with fresh evidence).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Callable, Iterable, Sequence

from rotator import gate
from rotator.gate import Holder, LiveClaim, Purpose, Request
from rotator.models import DormantKey, HeldKey, KeyInfo, KeyRef, Listing, Phase, RotationRecord, Secret
from rotator.timeutil import format_instant

UNUSED_AFTER = timedelta(days=30)
_VAGUE_NAMES = {"", "default", "key", "api key", "apikey", "new key", "new api key", "my key", "test",
                "untitled", "temp", "tmp"}
MANAGED_ROLES = ("current", "pending", "previous", "credential")
#: Roles a person may choose to revoke (``--fix`` / ``--revoke-unmanaged`` / ``--revoke-unused``).
#: ``held`` is not one: the rotation that moves away from it last revokes it.
REVOCABLE_ROLES = ("orphan", "unmanaged")
_OWNED = (Phase.CLAIMED, Phase.STAGED, Phase.ROLLING_BACK)
UNMANAGED = "(unmanaged)"       # the "secret" of a revoke of a key no managed secret relies on


@dataclass(frozen=True)
class Managed:
    """What the review needs to know of one managed secret (read by the caller; never a value).

    ``primary``: the key the primary serves as current; ``served``: what every readable target
    serves (role ``serves``) and the primary's pending slot (role ``pending``), as the gate's
    holders; ``primary_error``: why the primary could not be read (then nothing can be proved
    about this secret, as for the gate); ``unreadable``: other targets that could not be read."""

    name: str
    key_name: str           # the template, e.g. "{secret} [{rotation}]"
    lead_time: timedelta
    record: RotationRecord | None
    primary: Holder | None = None
    served: tuple[Holder, ...] = ()
    primary_error: str | None = None
    unreadable: tuple[str, ...] = ()


@dataclass(frozen=True)
class Finding:
    issuer: str
    key_id: str
    name: str
    last4: str
    account: str | None
    created_on: datetime | None
    expires_on: datetime | None
    last_used_on: datetime | None
    role: str
    secret: str | None
    flags: tuple[str, ...]
    shared_by: tuple[str, ...] = ()     # every managed secret relying on it, when two or more do
    hold: str | None = None             # why the gate would not revoke it now (revocable roles, held)
    held_since: datetime | None = None  # role "held": since when the record holds the revoke
    status: str = "active"              # active | inactive (deactivated: two-stage revokes, AWS IAM)
    last_use: str | None = None         # where the issuer reports it: when, by which service, where

    @property
    def revocable(self) -> bool:
        """Could a person's choice revoke it now? Only orphans and unmanaged keys the gate would
        not hold on the review's evidence."""
        return self.role in REVOCABLE_ROLES and self.hold is None

    @property
    def owners(self) -> str | None:
        """The secret column: every secret that shares it, else its secret."""
        return ", ".join(self.shared_by) if self.shared_by else self.secret

    @property
    def notes(self) -> list[str]:
        notes = []
        if self.shared_by:
            notes.append("shared by " + ", ".join(self.shared_by))
        if self.role == "held":
            since = f" since {format_instant(self.held_since)}" if self.held_since else ""
            notes.append(f"revoke held{since}: {self.hold}")
        elif self.hold is not None and self.role in REVOCABLE_ROLES:
            notes.append(f"not revocable: {self.hold}")
        if "would-sweep" in self.flags:
            notes.append("the next run's sweep revokes it")
        return notes

    def entry(self) -> KeyInfo:
        """The listing entry this finding was made from (for a revoke request)."""
        return KeyInfo(self.key_id, self.name, self.last4, self.created_on, self.expires_on, self.account,
                       self.last_used_on)

    @property
    def purpose(self) -> Purpose:
        """How a revoke of it is asked of the gate: an orphan as the sweep would (a stray, so
        the in-flight age rule applies); any other key a person chose as a review revoke."""
        return Purpose.STRAY if self.role == "orphan" else Purpose.REVIEW


def name_pattern(template: str, secret: str) -> re.Pattern[str]:
    """The names rotator gives this secret's keys: the template with any rotation id."""
    return _names_like(template, re.escape(secret))


def name_owners(secrets: Sequence[tuple[str, str]]) -> Callable[[str | None], str | None]:
    """For a key name, the first of ``secrets`` (name, ``key_name`` template) whose
    :func:`name_pattern` matches it; None if none does. One match per template, not per secret:
    in a template with ``{secret}`` once, everything else (literals, the rotation id) has a fixed
    length, so a name splits one way only and the part where the secret goes names it (secret
    names are one line: ``config._NAME``)."""
    order = {name: index for index, (name, _) in enumerate(secrets)}     # (names are unique)
    shapes: dict[str, tuple[re.Pattern[str], set[str]]] = {}
    others: list[tuple[str, re.Pattern[str]]] = []
    for name, template in secrets:
        if template.count("{secret}") == 1:
            shapes.setdefault(template, (_shape(template), set()))[1].add(name)
        else:
            others.append((name, name_pattern(template, name)))

    def owner(key_name: str | None) -> str | None:
        if not isinstance(key_name, str):
            return None
        found = [n for n, pattern in others if pattern.match(key_name)]
        for shape, names in shapes.values():
            matched = shape.match(key_name)
            if matched is not None and matched.group("secret") in names:
                found.append(matched.group("secret"))
        return min(found, key=order.__getitem__, default=None)

    return owner


def _shape(template: str) -> re.Pattern[str]:
    """:func:`name_pattern` for any secret: the secret's part captured."""
    return _names_like(template, "(?P<secret>.*)")


def _names_like(template: str, secret: str) -> re.Pattern[str]:
    """``template`` as a whole-name pattern: ``secret`` (a pattern) where the secret goes, and any
    rotation id where it goes."""
    literal = re.escape(template).replace(re.escape("{secret}"), secret)
    return re.compile("^" + literal.replace(re.escape("{rotation}"), r"r-[0-9a-f]{8}") + "$")


def classify(issuer: str, listing: Sequence[KeyInfo], secrets: list[Managed], now: datetime,
             credential: Secret | None = None, in_flight: timedelta | None = None, *,
             named_keys: bool = True) -> list[Finding]:
    """A finding for every listed key. ``in_flight``: the issuer's in-flight bound (keys younger
    than it may come from an issue request still in flight; the sweep leaves them alone).
    ``named_keys`` False (AWS IAM): keys have no names, every key of the owner is rotator's, so a
    key no record names is an orphan (flagged ``not-managed``), and names are not judged."""
    if in_flight is None:
        from rotator.revoker import DEFAULT_IN_FLIGHT

        in_flight = DEFAULT_IN_FLIGHT
    if not isinstance(listing, Listing):
        listing = Listing(listing)
    evidence = _evidence(issuer, listing, secrets, now, credential, in_flight)
    default_lead = min((s.lead_time for s in secrets), default=timedelta(days=14))
    findings = []
    for key in listing:
        role, owner, lead, held = "unmanaged", None, default_lead, None
        named = _named_by(secrets, key)
        holding = _held_by(secrets, key)
        if holding is not None:        # a revoke held earlier: the record says why
            owner_secret, held = holding
            role, owner, lead = "held", owner_secret.name, owner_secret.lead_time
        elif named:
            secret, role = named[0]
            owner, lead = secret.name, secret.lead_time
        elif credential is not None and key.last4 == credential.last4:
            role = "credential"
        elif not named_keys and secrets:
            role, owner, lead = "orphan", secrets[0].name, secrets[0].lead_time
        else:
            for secret in secrets:
                if name_pattern(secret.key_name, secret.name).match(key.name):
                    role, owner, lead = "orphan", secret.name, secret.lead_time
                    break
        users = _shared_by(secrets, key, named, listing)
        flags = [f for f in _flags(key, now, lead) if named_keys or f != "unclear-name"]
        if not named_keys and role == "orphan":
            flags.append("not-managed")
        if key.kept:
            flags.append("rescued")
        if len(users) > 1:
            flags.append("shared")
        hold = held.reason if held is not None else None
        if role in REVOCABLE_ROLES:
            served = [h for h in _serving(secrets) if _serves(h, key)]
            if served:
                flags.append("served")
            request = Request(owner or UNMANAGED, Purpose.STRAY if role == "orphan" else Purpose.REVIEW, entry=key)
            verdict = gate.judge(request, evidence)
            if not verdict.revoke:
                hold = verdict.reason
            if role == "orphan":
                if verdict.revoke:
                    flags.append("would-sweep")
                elif _young(key, evidence.in_flight_since) or _claimed(key, evidence.claims, now) \
                        or (not named_keys and any(c.until > now for c in evidence.claims)):
                    flags.append("in-flight")
        findings.append(Finding(issuer, key.key_id, key.name, key.last4, key.account, key.created_on,
                                key.expires_on, key.last_used_on, role, owner, tuple(flags),
                                shared_by=tuple(users) if len(users) > 1 else (), hold=hold,
                                held_since=held.since if held is not None else None))
    return findings


def dormant(issuer: str, keys: Iterable[DormantKey], secrets: list[Managed], now: datetime,
            delete_after: timedelta | None) -> list[Finding]:
    """Findings for an issuer's deactivated keys (two-stage revokes, AWS IAM): role ``inactive``,
    flagged ``deactivated-by-hand`` (rotator did not deactivate it: the sweep leaves it, though a
    rotation needing room at the owner's key limit deletes it) or ``past-delete-after`` (deleted
    by the next run's sweep, or waiting on the gate)."""
    found = []
    for key in keys:
        flags = []
        deactivated = key.deactivated_on
        if deactivated is None:
            flags.append("deactivated-by-hand")
        elif delete_after is not None and deactivated + delete_after <= now:
            flags.append("past-delete-after")
        info = KeyInfo(key.key_id, "", key.key_id[-4:], key.created_on, None)
        owner = next((s.name for s, _ in _named_by(secrets, info)), None)
        found.append(Finding(issuer, key.key_id, "", key.key_id[-4:], None, key.created_on, None, None,
                             "inactive", owner, tuple(flags), status="inactive",
                             hold=f"deactivated {format_instant(deactivated)}" if deactivated else None))
    return found


# --- what the managed secrets rely on ------------------------------------------------------------

def _refs(record: RotationRecord | None) -> list[tuple[str, KeyRef]]:
    if record is None:
        return []
    return [(role, ref) for role, ref in (("current", record.current), ("pending", record.pending),
                                          ("previous", record.previous)) if ref is not None]


def _named_by(secrets: Iterable[Managed], key: KeyInfo) -> list[tuple[Managed, str]]:
    """Every (secret, role) whose record names ``key`` as its current, pending or previous key."""
    return [(secret, role) for secret in secrets for role, ref in _refs(secret.record) if ref.refers_to(key)]


def _held_by(secrets: Iterable[Managed], key: KeyInfo) -> tuple[Managed, HeldKey] | None:
    for secret in secrets:
        for held in (secret.record.held if secret.record is not None else ()):
            if held.key.refers_to(key):
                return secret, held
    return None


def _shared_by(secrets: list[Managed], key: KeyInfo, named: list[tuple[Managed, str]],
               listing: Listing) -> list[str]:
    """The secrets relying on ``key``: their records name it, or their primary holds it (same
    fingerprint as another secret's primary; which listed key that is, is told by a record
    naming that fingerprint, else by its last 4 characters)."""
    users = [secret.name for secret, _ in named]
    by_value: dict[str, list[Managed]] = {}
    for secret in secrets:
        if secret.primary is not None and secret.primary.fingerprint:
            by_value.setdefault(secret.primary.fingerprint, []).append(secret)
    for fingerprint, group in by_value.items():
        if len(group) < 2:
            continue
        refs = [ref for s in secrets for _, ref in _refs(s.record) if ref.fingerprint == fingerprint]
        if refs:
            its = any(ref.refers_to(key) for ref in refs)
        else:
            its = key.last4 == group[0].primary.last4     # type: ignore[union-attr]
        if its:
            users += [s.name for s in group]
    return list(dict.fromkeys(users))


def _serving(secrets: Iterable[Managed]) -> list[Holder]:
    return [h for s in secrets for h in ((s.primary,) if s.primary else ()) + s.served]


def _serves(holder: Holder, key: KeyInfo) -> bool:
    """As the gate matches a target against a listing entry: by its last 4 characters."""
    return holder.last4 is not None and holder.last4 == key.last4


# --- the gate's evidence, from what the review read ----------------------------------------------

def _evidence(issuer: str, listing: Listing, secrets: list[Managed], now: datetime,
              credential: Secret | None, in_flight: timedelta) -> gate.Evidence:
    """What a revoke at this moment would be judged on (as :class:`rotator.evidence.Usage` and
    :meth:`rotator.revoker.Revoker.evidence` gather it)."""
    holders: list[Holder] = []
    unknown: list[str] = []
    claims: list[LiveClaim] = []
    for secret in secrets:
        if secret.primary_error is not None:
            unknown.append(f"secret {secret.name}: its primary could not be read ({secret.primary_error})")
            continue
        record = secret.record
        if record is not None:
            roles = [("current", record.current), ("pending", record.pending)]
            if record.phase is Phase.GRACE:
                roles.append(("previous", record.previous))
            holders += [Holder(secret.name, role, "record", ref.fingerprint, ref.last4, ref.key_id)
                        for role, ref in roles if ref is not None]
            if record.phase in _OWNED and record.owner and record.rotation_id and record.lease_until is not None:
                claims.append(LiveClaim(secret.name, record.rotation_id, record.owner, record.lease_until))
        elif secret.unreadable:
            unknown += [f"secret {secret.name}: {label} could not be read" for label in secret.unreadable]
        holders += _serving([secret])
    holders.sort(key=lambda h: h.role != "serves")     # as the run's evidence: a serving target named first
    admin = KeyRef.of(credential) if credential is not None else None
    if admin is not None:
        ids = {h.key_id for h in holders if h.fingerprint == admin.fingerprint and h.key_id}
        if len(ids) == 1:
            admin = replace(admin, key_id=ids.pop())
    return gate.Evidence(now=now, listing=listing, holders=tuple(holders), unknown=tuple(unknown),
                         claims=tuple(claims), admin=admin, admin_issuer=issuer, in_flight_since=now - in_flight)


def _young(key: KeyInfo, since: datetime | None) -> bool:
    return since is not None and (key.created_on is None or key.created_on > since)


def _claimed(key: KeyInfo, claims: Iterable[LiveClaim], now: datetime) -> bool:
    tag = gate.rotation_tag(key.name)
    return tag is not None and any(c.rotation_id[:8] == tag and c.until > now for c in claims)


def _flags(key: KeyInfo, now: datetime, lead: timedelta) -> tuple[str, ...]:
    flags = []
    if key.expires_on is not None:
        if key.expires_on <= now:
            flags.append("expired")
        elif key.expires_on - lead <= now:
            flags.append("expiring")
    if key.last_used_on is not None and now - key.last_used_on >= UNUSED_AFTER:
        flags.append("unused-30d")
    if key.name.strip().lower() in _VAGUE_NAMES or len(key.name.strip()) < 4:
        flags.append("unclear-name")
    return tuple(flags)


# --- choosing ------------------------------------------------------------------------------------

def _wanted(f: Finding, orphans: bool, unmanaged: bool, unused: bool) -> bool:
    return (orphans and f.role == "orphan") or (unmanaged and f.role == "unmanaged") \
        or (unused and "unused-30d" in f.flags)


def selected_for_revocation(findings: list[Finding], *, orphans: bool, unmanaged: bool,
                            unused: bool) -> list[Finding]:
    """What ``--fix`` / ``--revoke-unmanaged`` / ``--revoke-unused`` would revoke. Keys a managed
    secret or the rotator itself relies on are never selected, nor keys the gate would hold."""
    return [f for f in findings if f.revocable and _wanted(f, orphans, unmanaged, unused)]


def withheld(findings: list[Finding], *, orphans: bool, unmanaged: bool, unused: bool) -> list[Finding]:
    """Keys the flags ask for that are not revoked, each with its reason (``hold``): held
    revokes, and orphans or unmanaged keys the gate would hold (served by a target, the admin
    key, in flight, ...). Keys a managed secret uses as current/pending/previous and the
    credential are left out silently, as they always were."""
    return [f for f in findings if _wanted(f, orphans, unmanaged, unused) and not f.revocable
            and f.hold is not None]


# --- Markdown ------------------------------------------------------------------------------------

def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(findings: list[Finding], now: datetime) -> str:
    """The review as a Markdown report, one table per issuer."""
    lines = [f"# Key review — {now:%Y-%m-%d %H:%M}Z", ""]
    issuers = sorted({f.issuer for f in findings})
    for issuer in issuers:
        mine = [f for f in findings if f.issuer == issuer]
        accounts = ", ".join(sorted({f.account for f in mine if f.account})) or "unknown"
        lines += [f"## Issuer `{issuer}` (user: {accounts})", "",
                  "| key id | name | last 4 | expires | role | secret | flags | note |",
                  "|---|---|---|---|---|---|---|---|"]
        for f in mine:
            expires = f"{f.expires_on:%Y-%m-%d}" if f.expires_on else "-"
            lines.append(f"| {f.key_id} | {_cell(f.name or '(empty)')} | …{f.last4} | {expires} | {f.role} |"
                         f" {f.owners or '-'} | {', '.join(f.flags) or '-'} | {_cell('; '.join(f.notes)) or '-'} |")
        lines.append("")
    attention = [f for f in findings if f.role in ("orphan", "unmanaged", "held") or f.flags]
    lines += ["## Needs attention", ""]
    lines += [f"- `{f.issuer}` key {f.key_id} ({_cell(f.name or '(empty)')}): {f.role}"
              f"{' — ' + ', '.join(f.flags) if f.flags else ''}"
              f"{' — ' + '; '.join(f.notes) if f.notes else ''}" for f in attention] or ["- nothing"]
    return "\n".join(lines) + "\n"
