"""``rotator audit``: the monthly key review the QuivaWorks guide asks for, done against each
issuer's own key list.

Every key the issuer lists is given a role — ``current`` / ``pending`` / ``previous`` of a managed
secret, ``credential`` (the key rotator itself signs in with), ``orphan`` (named by rotator for a
secret that no longer references it) or ``unmanaged`` — and flags: ``expired``, ``expiring``
(within the lead time), ``unused-30d`` (when the issuer reports last use) and ``unclear-name``.
:func:`classify` is pure; the CLI does the reads and the optional revocations.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from rotator.models import KeyInfo, KeyRef, RotationRecord, Secret

UNUSED_AFTER = timedelta(days=30)
_VAGUE_NAMES = {"", "default", "key", "api key", "apikey", "new key", "new api key", "my key", "test",
                "untitled", "temp", "tmp"}
MANAGED_ROLES = ("current", "pending", "previous", "credential")


@dataclass(frozen=True)
class Managed:
    """What the review needs to know of one managed secret."""

    name: str
    key_name: str           # the template, e.g. "{secret} [{rotation}]"
    lead_time: timedelta
    record: RotationRecord | None


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

    @property
    def revocable(self) -> bool:
        return self.role not in MANAGED_ROLES


def name_pattern(template: str, secret: str) -> re.Pattern[str]:
    """The names rotator gives this secret's keys: the template with any rotation id."""
    literal = re.escape(template).replace(re.escape("{secret}"), re.escape(secret))
    return re.compile("^" + literal.replace(re.escape("{rotation}"), r"r-[0-9a-f]{8}") + "$")


def classify(issuer: str, listing: list[KeyInfo], secrets: list[Managed], now: datetime,
             credential: Secret | None = None) -> list[Finding]:
    findings = []
    for key in listing:
        role, owner, lead = "unmanaged", None, min((s.lead_time for s in secrets), default=timedelta(days=14))
        for secret in secrets:
            found = _role_in(secret, key)
            if found:
                role, owner, lead = found, secret.name, secret.lead_time
                break
        if role == "unmanaged":
            if credential is not None and key.last4 == credential.last4:
                role = "credential"
            else:
                for secret in secrets:
                    if name_pattern(secret.key_name, secret.name).match(key.name):
                        role, owner, lead = "orphan", secret.name, secret.lead_time
                        break
        findings.append(Finding(issuer, key.key_id, key.name, key.last4, key.account, key.created_on,
                                key.expires_on, key.last_used_on, role, owner, _flags(key, now, lead)))
    return findings


def _role_in(secret: Managed, key: KeyInfo) -> str | None:
    record = secret.record
    if record is None:
        return None
    for role, ref in (("current", record.current), ("pending", record.pending), ("previous", record.previous)):
        if ref is not None and _is(ref, key):
            return role
    return None


def _is(ref: KeyRef, key: KeyInfo) -> bool:
    if ref.key_id:
        return ref.key_id == key.key_id
    return ref.last4 == key.last4 and (ref.name is None or ref.name == key.name)


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


def selected_for_revocation(findings: list[Finding], *, orphans: bool, unmanaged: bool,
                            unused: bool) -> list[Finding]:
    """What ``--fix`` / ``--revoke-unmanaged`` / ``--revoke-unused`` would revoke. Keys a managed
    secret or the rotator itself relies on are never selected."""
    chosen = []
    for f in findings:
        if not f.revocable:
            continue
        if (orphans and f.role == "orphan") or (unmanaged and f.role == "unmanaged") \
                or (unused and "unused-30d" in f.flags):
            chosen.append(f)
    return chosen


def markdown(findings: list[Finding], now: datetime) -> str:
    """The review as a Markdown report, one table per issuer."""
    lines = [f"# Key review — {now:%Y-%m-%d %H:%M}Z", ""]
    issuers = sorted({f.issuer for f in findings})
    for issuer in issuers:
        mine = [f for f in findings if f.issuer == issuer]
        accounts = ", ".join(sorted({f.account for f in mine if f.account})) or "unknown"
        lines += [f"## Issuer `{issuer}` (user: {accounts})", "",
                  "| key id | name | last 4 | expires | role | secret | flags |",
                  "|---|---|---|---|---|---|---|"]
        for f in mine:
            expires = f"{f.expires_on:%Y-%m-%d}" if f.expires_on else "-"
            lines.append(f"| {f.key_id} | {f.name or '(empty)'} | …{f.last4} | {expires} | {f.role} |"
                         f" {f.secret or '-'} | {', '.join(f.flags) or '-'} |")
        lines.append("")
    attention = [f for f in findings if f.role in ("orphan", "unmanaged") or f.flags]
    lines += ["## Needs attention", ""]
    lines += [f"- `{f.issuer}` key {f.key_id} ({f.name or '(empty)'}): {f.role}"
              f"{' — ' + ', '.join(f.flags) if f.flags else ''}" for f in attention] or ["- nothing"]
    return "\n".join(lines) + "\n"
