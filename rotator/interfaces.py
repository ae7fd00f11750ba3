"""The contracts between rotator's core and its providers. Read this file to write a plugin.

A provider is a class registered under an entry-point group::

    [project.entry-points."rotator.issuers"]
    quivaworks = "rotator_providers.quiva.issuer:QuivaIssuer"

    [project.entry-points."rotator.backends"]
    file = "rotator_providers.file:FileBackend"

Built-in providers are registered exactly like third-party ones. The core never imports a provider
module by name; it asks the registry for the class whose name the config's ``type`` gives.

Life of a provider
------------------
1. **Validate, without the network.** ``cls(name, settings, context)`` receives the raw config
   section (minus ``type``). It validates it and raises :class:`rotator.errors.ConfigError` with
   the offending field's path relative to the section. It must not open connections or import
   heavy SDKs here beyond what validation needs.
2. **Connect lazily.** The first real call builds the client (boto3, hvac, urllib3, ...).
3. **Translate errors at the edge.** Every foreign exception (HTTP status, ``ClientError``,
   ``hvac.exceptions.*``, ``OSError``) becomes a class of :mod:`rotator.errors`, with
   ``transient`` set when trying again later may help. No message may contain a key value.
4. ``close()`` releases connections; it is safe to call twice.

Key values travel only as :class:`rotator.models.Secret`; call ``reveal()`` at the last moment,
when the value goes on the wire, and never put it in a message, a tag, a name or a description.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

from rotator.models import (
    BackendCapabilities,
    DormantKey,
    IssuedKey,
    IssuerCapabilities,
    KeyRef,
    KeyUse,
    Listing,
    RotationRecord,
    Secret,
    Snapshot,
    UsagePolicy,
)


@runtime_checkable
class Clock(Protocol):
    """The source of time. ``now()`` returns an aware UTC datetime."""

    def now(self) -> datetime: ...


@dataclass(frozen=True)
class ProviderContext:
    """What the core hands every provider at construction.

    ``sleep`` is the only way a provider may wait (retry back-off), so tests can run without
    wall-clock waits. ``resolve_credential`` turns a credential reference from the config
    (``{env = "..."}``, ``{file = "..."}``, ``{backend = "...", ...}``) into a Secret.
    ``on_call`` is told about every remote call (provider, operation, outcome) for metrics and
    benchmarks. ``workers`` is how many threads of the engine may call a provider at once: size
    connection pools to it so no thread waits for (or throws away) a connection.
    """

    clock: Clock
    sleep: Callable[[float], None]
    resolve_credential: Callable[[Any, str], Secret]
    on_call: Callable[[str, str, str], None] = field(default=lambda provider, op, outcome: None)
    workers: int = 1


class Target(Protocol):
    """Where one managed secret lives in one backend (a file path, a secret id, a KV path).

    Built by :meth:`Backend.target` from the ``targets`` entry of a managed secret; immutable.
    ``label`` is a short human-readable locator used in messages ("file:/etc/app/quiva.json").
    ``field`` is the name of the JSON field applications read the key from.

    When the issuer's keys have several parts (an AWS access key), the target also carries
    ``layout`` (:class:`rotator.values.Layout`): the JSON field of each part, built from the
    ``fields`` key the core puts in the spec given to :meth:`Backend.target`.

    Optional: ``addresses: frozenset[tuple[str, ...]]``, what this target addresses, as comparable
    keys: two targets sharing any key are the same place. A key says where the target is, not how
    the config spelled it (a file's resolved path; the endpoint, account, region and name of a
    cloud secret; the server and path of a KV secret), and starts with a word naming the kind of
    store ("file", "aws-sm", "vault"), so keys of different stores never meet. Give a target
    several keys when it has several names (an ARN and the name it ends in). The core refuses a
    configuration in which two managed secrets (or one secret twice) use the same place, since
    they would overwrite each other's key and rotation record. A target without ``addresses`` is
    compared by its backend's name and its ``label``. Keep ``addresses`` out of equality and
    hashing (a property, or a dataclass field with ``compare=False``): targets are dict keys.
    """

    @property
    def label(self) -> str: ...

    @property
    def field(self) -> str: ...


class Backend(Protocol):
    """A secret store applications read their key from.

    A target holds three slots, modelled on AWS Secrets Manager's version stages:

    * **current** — what applications read (the payload's ``field``),
    * **pending** — a new key, staged but not yet promoted (primary only),
    * **previous** — the key current was promoted over, kept during the grace window,

    plus, on the **primary** target, the :class:`RotationRecord`. Every primary write is one
    atomic compare-and-swap that carries the record along with the slot change: it succeeds only
    if the target is still at ``expect`` (the ``version`` of the snapshot the caller decided on)
    and raises :class:`rotator.errors.Conflict` otherwise. ``expect=None`` means "create: the
    target must not exist yet". Each primary write returns the new version token.

    Secondary targets are written with :meth:`deploy`, an idempotent overwrite of current and
    previous (the engine orders those writes; the primary's record is the lock).

    Writing never removes fields the backend did not put there (an application's payload may
    carry other fields).
    """

    name: str
    capabilities: BackendCapabilities

    def target(self, spec: Mapping[str, Any]) -> Target:
        """Validate one target entry (without the network); raise ConfigError naming the field.

        ``spec`` always has ``field`` (the JSON field of a plain key, default ``api_key``). For an
        issuer whose keys have parts it also has ``fields``: part -> JSON field, complete, checked
        and in the issuer's order; the value is then read, written and compared as one
        (:class:`rotator.values.Layout` does the reading and writing). A backend that cannot store
        such values refuses ``fields`` as an unknown setting."""
        ...

    def read(self, target: Target) -> Snapshot:
        """Read every slot and the record. A missing target returns ``Snapshot()`` (version None).

        A payload rotator cannot parse raises :class:`rotator.errors.CorruptPayload`.
        """
        ...

    def write_record(self, target: Target, record: RotationRecord, *, expect: str | None) -> str:
        """Replace the record only (claim, lease renewal, failure notes, finish). CAS."""
        ...

    def stage(self, target: Target, value: Secret, record: RotationRecord, *, expect: str | None) -> str:
        """Put ``value`` in the pending slot and save ``record``, atomically. CAS.

        Creates the target when ``expect`` is None (bootstrap of a new secret).
        """
        ...

    def promote(self, target: Target, record: RotationRecord, *, expect: str) -> str:
        """pending → current, current → previous, pending emptied, ``record`` saved. CAS."""
        ...

    def discard_pending(self, target: Target, record: RotationRecord, *, expect: str) -> str:
        """Empty the pending slot and save ``record`` (rollback). CAS."""
        ...

    def deploy(self, target: Target, current: Secret, previous: Secret | None, meta: KeyRef) -> None:
        """Secondary write: set current (and previous), with ``meta`` as the backend's metadata.

        Idempotent: repeating the same call leaves the same state. Creates the target when the
        backend's settings allow it, else raises :class:`rotator.errors.SecretMissing`.
        """
        ...

    def delete(self, target: Target) -> None:
        """Remove the target entirely (tests and clean-up; never called by a rotation)."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class BatchReads(Protocol):
    """Optional for a :class:`Backend`: read many targets in few requests.

    The engine reads every primary at the start of each run (the daemon: each reconcile); a backend
    whose API can return many secrets per request (AWS ``BatchGetSecretValue``) implements this and
    the engine reads the primaries of upcoming secrets in groups of ``read_batch``. Likewise the
    secondaries a run re-reads before revoking an old key (never a read-back after its own write).

    ``read_many`` returns a snapshot, exactly as :meth:`Backend.read` would, for each target it
    could read. It never raises for one target's problem (missing, corrupt, denied): it leaves that
    target out and the engine reads it alone with ``read``, which raises the precise error. When the
    batch request itself fails it returns an empty dict (and may stop batching, e.g. when the
    identity lacks the permission for it).
    """

    read_batch: int

    def read_many(self, targets: Sequence[Target]) -> dict[Target, Snapshot]: ...


#: The statuses of a :class:`Finding`, worst first.
FINDING_STATUSES = ("fail", "warn", "unknown", "ok")


@dataclass(frozen=True)
class Finding:
    """One thing ``rotator check`` looked at and what it found (see :class:`BackendAccessCheck`).

    ``check`` names what was looked at in a word or two: ``"read"``, ``"cas"`` (compare-and-swap
    support), ``"write"`` (permission to write), ``"sign-in"``, ``"mode"``, ... ``status`` is one of
    :data:`FINDING_STATUSES`: ``ok``; ``warn`` (works, but worth a look); ``fail`` (a run would
    fail here: ``rotator check`` exits 1); ``unknown`` (the store cannot say without writing).
    ``detail`` says what was seen and, for anything but ``ok``, what to change. Never a key value.
    """

    check: str
    status: str
    detail: str = ""


@runtime_checkable
class BackendAccessCheck(Protocol):
    """Optional for a :class:`Backend`: what ``rotator check`` can learn about a target beyond a
    read, **without writing anything**.

    ``rotator check`` first reads the target with :meth:`Backend.read` (it exists? it parses? it
    holds a key and, on a primary, a record?) and then asks this method about the rest:

    * ``"cas"`` (``primary`` only): can this place hold the rotation record, i.e. does the
      compare-and-swap every primary write relies on work here (a KV v2 mount, a directory where
      a lock file and an atomic rename work, a secret whose version stages can be moved, ...)?
    * ``"write"``: may rotator's identity write this place, where the store can say so without
      writing (Vault's ``sys/capabilities-self``, a directory's permissions). A store that cannot
      tell returns ``unknown`` and says what the first write will need.
    * anything else worth knowing before a run (a file readable by others, a secret scheduled for
      deletion, a store-side rotation that would fight rotator's).

    ``exists`` is what the read found (False: the first write creates the target, if the
    backend's settings allow it). Read-only calls only, bounded by the provider's own timeouts.
    A problem of the target is a ``fail`` finding, never an exception; a credential reference that
    does not resolve raises :class:`rotator.errors.ConfigError` (``check`` exits 2). Any other
    exception is shown as a failed check. A backend without this method is shown as
    "read only checked" (write permission unknown).
    """

    def check_access(self, target: Target, *, primary: bool, exists: bool) -> list[Finding]: ...


class Issuer(Protocol):
    """Who mints keys: one account / user of an API provider.

    Keys are user-scoped: a key issued through this issuer belongs to its user and carries that
    user's permissions. ``owner`` names that user once known (after the first call).
    """

    name: str
    capabilities: IssuerCapabilities
    #: The credential reference this issuer signs in with (``{env = ...}``, ``{file = ...}``,
    #: ``{backend = ..., ...}``), or None. Lets the core notice when a managed secret IS that
    #: credential (self-rotation), and lets the audit recognise the rotator's own key.
    credential: Mapping[str, Any] | None

    @property
    def owner(self) -> str | None: ...

    # Optional: ``in_flight_bound: timedelta`` — how long after it was sent an issue request may
    # still mint a key (timeouts x retries). The run's sweep of stray keys leaves younger keys
    # alone; without it the core assumes 10 minutes.

    def issue(self, name: str) -> IssuedKey:
        """Mint a key called ``name``. The value is returned this once; ``key_id`` may be None.

        Not idempotent: a retried request may mint twice. ``name`` carries the rotation id so
        any extra key is recognisable as an orphan and revoked later. The answer is checked before
        it is returned: a value that cannot be used raises :class:`rotator.errors.UnusableKey`
        (carrying ``name``, so the caller can find and revoke the minted key); dates that cannot
        be trusted are replaced by what the issuer's documented key lifetime allows and explained
        in ``IssuedKey.note``.
        """
        ...

    def list_keys(self) -> Listing:
        """Every live key of the issuer's user (metadata only; follows paging if the API pages).

        Each entry is validated; contradictions (an entry without a usable id, duplicate ids, a
        page that repeats) are reported in ``Listing.problems`` rather than dropped silently, so
        the caller never revokes on a listing it cannot trust. A listing that cannot be read as a
        whole (pages that never end, a body that is not the documented shape) raises
        :class:`rotator.errors.UntrustedAnswer`.
        """
        ...

    def verify(self, value: Secret) -> bool:
        """Authenticate with ``value``: True only on the documented success answer, False when
        the issuer refuses the key (401).

        Raises a transient error when the answer is unknown (5xx, timeouts, rate limits) or is not
        the documented shape (:class:`rotator.errors.UntrustedAnswer`): "not verified" is never
        read as "verified", and one refusal is never read as "the key is dead" (the caller
        retries, and only the issuer's listing proves a key gone).
        """
        ...

    def revoke(self, *, key_id: str | None = None, value: Secret | None = None) -> None:
        """Delete a key by id (preferred) or by value. Raises :class:`KeyNotFound` on a 404.

        Neither a 2xx nor a 404 proves the key is gone: the engine calls this only through its
        revoke gate and confirms every revoke with a fresh listing.
        """
        ...

    def credential_changed(self) -> None:
        """The credential this issuer signs in with was just rotated (it is a managed secret
        stored in a backend): drop any session so the next call authenticates with the new
        value, before the old one is revoked."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class IssuerAccessCheck(Protocol):
    """Optional for an :class:`Issuer`: ``rotator check``'s look at the issuer, read-only.

    Signs in with the issuer's credential the way every run does (and nothing more: it never
    issues, revokes or changes anything) and returns what it found: a ``"sign-in"``
    :class:`Finding` (``fail`` when the credential is refused or the issuer cannot be reached, so
    the check does not list keys with it), and anything else worth showing (``"key lifetime"``:
    the documented lifetime rotator plans with). ``rotator check`` then lists the keys with
    :meth:`Issuer.list_keys` and assesses the credential's expiry from that listing.

    A credential reference that does not resolve raises :class:`rotator.errors.ConfigError`;
    every other problem is a finding. Bounded by the issuer's own timeouts and retries. An issuer
    without this method is checked by its listing alone (which signs in too).
    """

    def check_access(self) -> list[Finding]: ...


@runtime_checkable
class TwoStageRevoke(Protocol):
    """Optional for an :class:`Issuer` whose revoke only deactivates (AWS IAM): the key stops
    working but can be reactivated by a person to rescue a consumer rotator did not know about.

    * :meth:`Issuer.revoke` deactivates, notes when, and the key leaves :meth:`Issuer.list_keys`
      (which lists *live* keys), so the core confirms the revoke as for any issuer;
    * :meth:`dormant_keys` lists the deactivated keys (with when rotator deactivated each); a key
      a record names that is found deactivated with no time noted (a crash between the two
      steps of a revoke) is revoked again, which notes the time;
    * the end-of-run sweep deletes those rotator deactivated at least ``delete_after`` ago, each
      through the revoke gate, with :meth:`purge`; ``revoke --compromised`` deletes at once;
    * an issuer with a per-owner key limit counts dormant keys toward it (IAM does): deleting one
      is the first way the core makes room for a new key.

    A dormant key that is active again was reactivated by a person: the issuer marks its listing
    entry ``kept`` and the core leaves it alone."""

    delete_after: timedelta

    def dormant_keys(self) -> list[DormantKey]: ...

    def purge(self, key_id: str) -> None:
        """Delete a deactivated key for good; refuse (IssuerError) an active one. KeyNotFound when
        it no longer exists. Confirmed by the caller through :meth:`dormant_keys`."""
        ...

    def tidy(self) -> None:
        """Forget what the issuer noted about keys that no longer exist (the end-of-run sweep
        calls it after the purges)."""
        ...


@runtime_checkable
class UsageEvidence(Protocol):
    """Optional for an :class:`Issuer` that can tell when a key last signed a request (AWS IAM
    ``GetAccessKeyLastUsed``; ``capabilities.reports_last_used``). Before an old key is revoked
    the core asks :meth:`last_used`, and the revoke gate applies ``usage_policy``: an old key used
    after its replacement was deployed everywhere (beyond ``slack``) is held until it has gone
    unused for ``quiet_for`` — or, without ``require_unused``, revoked with the use reported."""

    usage_policy: UsagePolicy

    def last_used(self, key_id: str) -> KeyUse: ...


#: Signature of a registered backend class: ``BackendClass(name, settings, context)``.
BackendFactory = Callable[[str, Mapping[str, Any], ProviderContext], Backend]
#: Signature of a registered issuer class: ``IssuerClass(name, settings, context)``.
IssuerFactory = Callable[[str, Mapping[str, Any], ProviderContext], Issuer]
