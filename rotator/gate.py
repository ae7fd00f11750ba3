"""The revoke gate. PURE: every revoke rotator makes is decided here, from evidence the engine
gathered; the engine only acts on the verdict.

Revoking is the one dangerous effect: a key revoked while something still uses it is an outage.
So every revoke — the old key after grace, a twin of a retried issue, an orphan of a dead runner,
a refused new key, a stray found by the sweep, a revoke held earlier — asks :func:`judge`, which
returns one of

* ``revoke``: the evidence proves the key is no longer relied on; revoke this listing id;
* ``hold``: something may still rely on it — a target serves it, a record names it, a live claim
  owns it, it is the admin key, a target could not be read (``about_use``: the rotation finishes
  and the revoke waits for a later run) — or the issuer's answer cannot be trusted to name the
  key (a listing that contradicts itself, an ambiguous match: an error); the reason says which;
* ``gone``: a usable, fresh listing no longer shows the key: nothing to revoke.

The evidence a revoke needs (docs/rotation.md, "The revoke gate"):

1. a fresh listing of the issuer's keys that does not contradict itself, in which the key is
   found unambiguously (by id, else by name and last 4 characters);
2. no target of any managed secret of the issuer serves the key, and no record names it as its
   current, pending or in-grace previous key (except the requester's own role that this revoke
   ends);
3. no live claim owns the rotation that minted it (a rotation is taken over by compare-and-swap
   before what it minted is swept);
4. it is not the issuer's own credential (the admin key);
5. every consumer gate has passed;
6. a stray (found by the sweep, not by its own rotation) is older than the longest an issue
   request can still be in flight;
7. where the issuer reports last use (AWS IAM) and requires it: the old key has not been used
   since its replacement was deployed everywhere (beyond a slack), or not for ``quiet_for``;
8. a key found in a listing (not named by a record) that the issuer says to keep (``kept``: a
   key a person reactivated after rotator deactivated it) is left alone.

``revoke --compromised`` skips 2, 3 and 5 on purpose; 1 and 4 hold for every revoke.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Iterable

from rotator.models import KeyInfo, KeyRef, KeyUse, Listing, UsagePolicy
from rotator.timeutil import format_duration

MATCH_SKEW_SECONDS = 120
_ROTATION_TAG = re.compile(r"\br-([0-9a-f]{8})\b")


class Purpose(str, enum.Enum):
    OLD = "old"                  # the previous key, after the grace window
    HELD = "held"                # an old key whose revoke was held by an earlier run
    ROLLBACK = "rollback"        # the new key the issuer refused (or that never verified)
    UNUSABLE = "unusable"        # a key minted with a value rotator cannot use
    LOSER = "loser"              # a key this runner minted but could not stage (another runner won)
    TWIN = "twin"                # a second key minted by a retried issue of the requester's rotation
    ORPHAN = "orphan"            # a key minted by a runner whose claim was taken over
    STRAY = "stray"              # a rotation-named key nothing relies on, found by the run's sweep
    ROOM = "room"                # a key deleted to make room for a new one (an owner's key limit)
    PURGE = "purge"              # a deactivated key deleted for good after ``delete_after``
    REVIEW = "review"            # a person chose it in `rotator audit`: every protection but the age rule
    COMPROMISED = "compromised"  # revoke --compromised: the one revoke allowed to break I1


@dataclass(frozen=True)
class Holder:
    """One place a managed secret relies on a key."""

    secret: str
    role: str                   # serves | pending | current | previous
    where: str                  # a target label, or "record"
    fingerprint: str | None = None
    last4: str | None = None
    key_id: str | None = None

    def describe(self) -> str:
        if self.role == "serves":
            return f"still served by secret {self.secret} at {self.where}"
        if self.role == "previous":
            return f"secret {self.secret} keeps it as its previous key during its grace window"
        return f"it is the {self.role} key of secret {self.secret}"


@dataclass(frozen=True)
class LiveClaim:
    secret: str
    rotation_id: str
    owner: str
    until: datetime


@dataclass(frozen=True)
class Evidence:
    """What the engine knows when it asks. ``unknown``: secrets of the issuer whose targets could
    not be read, so nothing can be proved about them."""

    now: datetime
    listing: Listing | None
    holders: tuple[Holder, ...] = ()
    unknown: tuple[str, ...] = ()
    claims: tuple[LiveClaim, ...] = ()
    admin: KeyRef | None = None
    admin_issuer: str = ""
    in_flight_since: datetime | None = None   # keys created after this may come from an issue in flight
    use: KeyUse | None = None                  # the key's last use, where the issuer reports it
    usage: UsagePolicy | None = None           # the issuer's rule for that evidence (None: not applied)
    # the holders that may rely on a key, given its tokens (``key_tokens``): a superset, in the
    # order of ``holders``; None: ``holders`` is every holder, and each is looked at
    holders_for: Callable[[Iterable[str]], Iterable[Holder]] | None = None

    def may_rely(self, tokens: Iterable[str]) -> Iterable[Holder]:
        return self.holders if self.holders_for is None else self.holders_for(tokens)


def key_tokens(entry: KeyInfo | None, key: KeyRef | None) -> list[str]:
    """What a holder relying on the listed ``entry`` (known as ``key``) shares with it, one of:
    the entry's id, the key's fingerprint, the entry's last 4 (see ``_same_key``)."""
    return _tokens(entry.key_id if entry else None, key.fingerprint if key else None,
                   entry.last4 if entry else None)


def holder_tokens(holder: Holder) -> list[str]:
    """How an index finds ``holder``: the tokens :func:`key_tokens` gives a key it relies on."""
    return _tokens(holder.key_id, holder.fingerprint, holder.last4)


def _tokens(key_id: str | None, fingerprint: str | None, last4: str | None) -> list[str]:
    return [kind + value for kind, value in (("id:", key_id), ("fp:", fingerprint), ("l4:", last4)) if value]


@dataclass(frozen=True)
class Request:
    """A revoke someone wants. ``key``: what the requester knows of it (fingerprint, last 4, id,
    name); ``entry``: the listing entry when the request starts from one (twins, orphans, strays).
    ``own``: the requester's own roles this revoke ends ("previous" for the old key).
    ``claim``: the rotation id the requester itself owns (its claim does not protect the key).
    ``by_value``: the requester holds the value, so when several listed keys end in the same four
    characters the revoke can name this one by value."""

    secret: str
    purpose: Purpose
    key: KeyRef | None = None
    entry: KeyInfo | None = None
    own: frozenset[str] = frozenset()
    claim: str | None = None
    by_value: bool = False       # the requester holds the value: several look-alikes may be told apart by it
    consumers: tuple[str, ...] = ()   # gate hooks that have not confirmed the key's replacement (rotator.hooks)
    replaced_at: datetime | None = None   # when the key's replacement was deployed everywhere (usage evidence)


@dataclass(frozen=True)
class Verdict:
    action: str                       # revoke | hold | gone
    reason: str
    key_id: str | None = None         # revoke: the listing id
    about_use: bool = False           # hold: about who may use the key (False: the listing can't be trusted)
    entry: KeyInfo | None = None

    @property
    def revoke(self) -> bool:
        return self.action == "revoke"

    @property
    def hold(self) -> bool:
        return self.action == "hold"

    @property
    def gone(self) -> bool:
        return self.action == "gone"


def _hold(reason: str, about_use: bool, entry: KeyInfo | None = None) -> Verdict:
    return Verdict("hold", reason, about_use=about_use, entry=entry)


def judge(request: Request, evidence: Evidence) -> Verdict:
    """Revoke, hold or gone — with the reason. See the module docstring for the rules."""
    listing = evidence.listing
    if listing is None:
        return _hold("no listing of the issuer's keys to check it against", about_use=False)
    if not listing.usable:
        return _hold("the issuer's listing contradicts itself (" + "; ".join(listing.problems[:3])
                     + "): no revoke is decided on it", about_use=False)
    entries, problem = candidates(request, listing)
    if problem is not None:
        return _hold(problem, about_use=False)
    if not entries:
        return Verdict("gone", "no longer in the issuer's listing")
    if len(entries) > 1 and not (request.by_value and request.key is not None and request.key.fingerprint):
        assert request.key is not None
        return _hold(f"{len(entries)} listed keys could be {request.key.label()}; not guessing which to revoke",
                     about_use=False)
    if len(entries) > 1:       # revoked by value: what relies on the value itself is what counts
        reason = _value_relied_on(request, evidence)
        if reason is not None:
            return _hold(reason, about_use=True)
    else:
        reason = _relied_on(request, entries[0], evidence)
        if reason is not None:
            return _hold(reason, about_use=True, entry=entries[0])
    if request.purpose is not Purpose.COMPROMISED and evidence.unknown:
        return _hold("cannot prove it unused: " + "; ".join(evidence.unknown[:3]), about_use=True)
    if len(entries) > 1:
        return Verdict("revoke", f"{len(entries)} listed keys end like it; revoked by value, which names"
                       " exactly this one", key_id=None)
    return Verdict("revoke", "nothing relies on it", key_id=entries[0].key_id, entry=entries[0])


def _relied_on(request: Request, entry: KeyInfo, evidence: Evidence) -> str | None:
    """Why ``entry`` must not be revoked now, or None."""
    if _is_admin(entry, request.key, evidence.admin):
        return (f"it may be the admin key of issuer {evidence.admin_issuer or '?'}"
                " (the key rotator itself signs in with)")
    if request.purpose is Purpose.COMPROMISED:
        return None
    for holder in evidence.may_rely(key_tokens(entry, request.key)):
        if holder.secret == request.secret and holder.role in request.own:
            continue
        if _same_key(holder, entry, request.key):
            return holder.describe()
    claim = _owning_claim(entry, request, evidence.claims, evidence.now)
    if claim is not None:
        return (f"minted by rotation {claim.rotation_id[:8]} of secret {claim.secret}, which"
                f" {claim.owner} still owns")
    if request.consumers:
        return waiting_for(request.consumers)
    if entry.kept and request.purpose in _FOUND:
        return entry.kept
    if request.purpose in (Purpose.STRAY, Purpose.ROOM):
        return _young(entry, evidence.in_flight_since)
    return still_used(request, evidence)


#: Revokes of keys found in a listing rather than named by a record: an issuer's ``kept`` reason
#: (a key a person reactivated) protects them.
_FOUND = frozenset({Purpose.STRAY, Purpose.ORPHAN, Purpose.ROOM})


def still_used(request: Request, evidence: Evidence) -> str | None:
    """Usage evidence (I3): the old key signed a request more than the issuer's slack after its
    replacement was deployed everywhere, and less than ``quiet_for`` ago: something still uses it.
    Only where the issuer reports last use and requires it unused; None: no such evidence."""
    use, policy = evidence.use, evidence.usage
    if (use is None or use.when is None or policy is None or request.replaced_at is None
            or request.purpose not in (Purpose.OLD, Purpose.HELD)):
        return None
    if use.when <= request.replaced_at + policy.slack:
        return None
    if not policy.require_unused or evidence.now - use.when >= policy.quiet_for:
        return None
    return (f"still used after its replacement was deployed: {use.describe()}; revoked once it has gone"
            f" unused for {format_duration(policy.quiet_for)}")


def _value_relied_on(request: Request, evidence: Evidence) -> str | None:
    key = request.key
    assert key is not None
    admin = evidence.admin
    if admin is not None and admin.fingerprint == key.fingerprint:
        return f"it is the admin key of issuer {evidence.admin_issuer or '?'}"
    if request.purpose is Purpose.COMPROMISED:
        return None
    for holder in evidence.may_rely(key_tokens(None, key)):
        if holder.secret == request.secret and holder.role in request.own:
            continue
        if holder.fingerprint == key.fingerprint:
            return holder.describe()
    if request.consumers:
        return waiting_for(request.consumers)
    return None


def waiting_for(consumers: Iterable[str]) -> str:
    """The hold reason of a consumer gate (status shows it as it is)."""
    return "waiting for consumer " + ", ".join(consumers)


def candidates(request: Request, listing: Listing) -> tuple[list[KeyInfo], str | None]:
    """The listing entries the request may mean (none: it is not listed); a problem when the
    listing and what rotator knows of the key disagree."""
    key = request.key
    if request.entry is not None:
        current = listing.by_id(request.entry.key_id)
        if current is not None and current.last4 != request.entry.last4:
            return [], f"listing id {current.key_id} now shows other last 4 characters; not revoking"
        return ([current] if current else []), None
    if key is None:
        return [], "nothing identifies the key"
    if key.key_id:
        found = listing.by_id(key.key_id)
        if found is not None and found.last4 != key.last4:
            return [], (f"listing id {key.key_id} ends in …{found.last4}, but the key recorded under"
                        f" that id ends in …{key.last4}: the listing carries another key's id")
        return ([found] if found else []), None
    return matching(key, listing), None


def matching(ref: KeyRef, listing: Iterable[KeyInfo]) -> list[KeyInfo]:
    """Listing entries that may be ``ref`` (whose id is unknown): last 4, name (+ creation time)."""
    found = [k for k in listing if k.last4 == ref.last4 and (ref.name is None or k.name == ref.name)]
    if len(found) > 1 and ref.created_on is not None:
        found = [k for k in found if k.created_on is not None
                 and abs((k.created_on - ref.created_on).total_seconds()) <= MATCH_SKEW_SECONDS]
    return found


def _same_key(holder: Holder, entry: KeyInfo, key: KeyRef | None) -> bool:
    """Could ``holder`` be relying on the listed ``entry``? A record naming the entry's id always
    does (even if the fingerprints disagree: then the listing carries another key's id). Else
    exact by fingerprint when both sides know it; by last 4 characters otherwise, which errs on
    the side of holding."""
    if holder.key_id and holder.key_id == entry.key_id:
        return True
    if key is not None and holder.fingerprint and key.fingerprint:
        return holder.fingerprint == key.fingerprint
    if holder.key_id and entry.key_id:
        return False
    return holder.last4 is not None and holder.last4 == entry.last4


def _is_admin(entry: KeyInfo, key: KeyRef | None, admin: KeyRef | None) -> bool:
    """Is the entry the admin key? By id when the admin key's id is known; by value when both
    fingerprints are; else by last 4 characters (erring on the side of holding)."""
    if admin is None:
        return False
    if admin.key_id and entry.key_id == admin.key_id:
        return True
    if key is not None and key.fingerprint and admin.fingerprint:
        return key.fingerprint == admin.fingerprint
    return admin.key_id is None and entry.last4 == admin.last4


def rotation_tag(name: str | None) -> str | None:
    """The short rotation id ("7f3c2a1b") a key name carries, if any."""
    found = _ROTATION_TAG.search(name or "")
    return found.group(1) if found else None


def _owning_claim(entry: KeyInfo, request: Request, claims: Iterable[LiveClaim],
                  now: datetime) -> LiveClaim | None:
    """The live claim of another runner whose rotation may have minted ``entry``: by the rotation
    tag of its name; for a key without a name (AWS IAM) found in a listing, any live claim of
    another runner on a secret of the issuer (it may have minted the key and not staged it yet)."""
    tag = rotation_tag(entry.name)
    wanted = {tag} if tag else set()
    if request.key is not None and request.key.rotation_id:
        wanted.add(request.key.rotation_id[:8])
    unnamed = not entry.name and request.key is None
    own = request.claim[:8] if request.claim else None
    for claim in claims:
        short = claim.rotation_id[:8]
        if (short in wanted or unnamed) and short != own and claim.until > now:
            return claim
    return None


def _young(entry: KeyInfo, since: datetime | None) -> str | None:
    if since is None:
        return None
    if entry.created_on is None:
        return "its creation time is unknown, so an issue request may still be in flight"
    if entry.created_on > since:
        return "created recently: the issue request that minted it may still be in flight"
    return None
