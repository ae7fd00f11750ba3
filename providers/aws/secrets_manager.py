"""Backend ``aws_secrets_manager``: each target is one AWS Secrets Manager secret.
See docs/backends/aws-secrets-manager.md.

How the slots map onto versions and staging labels:

* **current** — the version labelled AWSCURRENT (the *head*): the key in ``field``, the fields an
  application put there, and rotator's section (the record on a primary, pointers to the pending
  and previous versions, metadata about the key). Applications read only this version.
* **pending** — its own version, labelled AWSPENDING, written with a ClientRequestToken derived
  from the rotation id before the head points at it.
* **previous** — the version AWSCURRENT was moved away from at promotion (AWS labels it
  AWSPREVIOUS), kept through the grace window.

Every primary write puts a new head (labelled ``ROTATOR_NEXT`` so it is not an orphan) and then
moves AWSCURRENT onto it with ``UpdateSecretVersionStage(RemoveFromVersionId=expect)``: AWS refuses
the move when AWSCURRENT is no longer on ``expect``, which makes it a compare-and-swap. The
version token is the head's VersionId. Versions are immutable, so heads and values read once are
cached by VersionId.

Batched reads (:class:`rotator.interfaces.BatchReads`): ``BatchGetSecretValue`` returns the
AWSCURRENT version of up to 20 secrets per request, so the engine's read of every primary at the
start of a run costs one request per 20 secrets (plus the pending/previous values this process has
not seen). Whatever the batch cannot answer (an error entry, a replica, a payload rotator cannot
parse) is left out and read alone with ``read``, which raises the precise error.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import OrderedDict
from typing import Any, Callable, Iterable, Mapping

from rotator_providers.aws.common import DENIED, AwsBackend, in_region
from rotator_providers.aws.session import AwsFailure
from rotator_providers.aws.sm_config import (
    ARN_PATTERN,
    SecretsManagerSettings,
    SecretsManagerTarget,
    SecretsManagerTargetSpec,
)
from rotator_providers.aws.sm_payload import Doc, Problem, Ref, describing, meta_of, token
from rotator_providers.document import frozen_fields
from rotator.errors import (
    BackendError,
    BackendPermissionError,
    BackendUnavailable,
    ConfigError,
    Conflict,
    CorruptPayload,
    SecretMissing,
)
from rotator.interfaces import Finding, ProviderContext
from rotator.models import BackendCapabilities, KeyRef, RotationRecord, Secret, Snapshot

log = logging.getLogger(__name__)

SERVICE = "secretsmanager"
CURRENT, PENDING, PREVIOUS = "AWSCURRENT", "AWSPENDING", "AWSPREVIOUS"
SCRATCH = "ROTATOR_NEXT"           # keeps a freshly put head labelled until AWSCURRENT moves onto it
LABEL_REFUSED = frozenset({"InvalidParameterException", "InvalidRequestException", "ResourceNotFoundException"})
_VALUES_KEPT = 512
BATCH_GET = "BatchGetSecretValue"
BATCH_SIZE = 20                    # AWS's limit on SecretIdList per BatchGetSecretValue request


@dataclasses.dataclass(frozen=True)
class _Head:
    """The version labelled AWSCURRENT when last seen (or written) by this process."""

    version: str
    doc: Doc


class SecretsManagerBackend(AwsBackend[SecretsManagerTarget]):
    """Backend ``aws_secrets_manager``: a primary (record + CAS) or a secondary, in any region."""

    capabilities = BackendCapabilities(holds_record=True, keeps_previous=True,
                                       extra={"service": SERVICE, "replicas": True})
    read_batch = BATCH_SIZE
    service = SERVICE
    endpoint_variable = "AWS_ENDPOINT_URL_SECRETS_MANAGER"
    settings_model = SecretsManagerSettings
    log = log                       # the base class logs under this module's name
    batch_get = BATCH_GET
    batch_denied = ("secretsmanager:BatchGetSecretValue; reading secrets one by one (GetSecretValue) from now"
                    " on. Grant it to read 20 secrets per request")
    items = "secrets"
    default_key = "the secret's KMS key (aws/secretsmanager unless the secret names another)"
    _settings: SecretsManagerSettings

    def __init__(self, name: str, settings: Mapping[str, Any], context: ProviderContext) -> None:
        super().__init__(name, settings, context)
        self._sleep = context.sleep
        self._heads: dict[SecretsManagerTarget, _Head] = {}
        self._values: OrderedDict[tuple[str | None, str, str], Secret] = OrderedDict()

    def target(self, spec: Mapping[str, Any]) -> SecretsManagerTarget:
        parsed = self._target_spec(SecretsManagerTargetSpec, spec)
        arn = ARN_PATTERN.fullmatch(parsed.secret_id)
        region = parsed.region
        if arn is not None:
            if region is not None and region != arn["region"]:
                raise ConfigError(f"backends.{self.name} target.region: {region!r} differs from the"
                                  f" region in the secret's ARN ({arn['region']})")
            region = arn["region"]
        return SecretsManagerTarget(parsed.secret_id, self._region(region), parsed.field, parsed.replica,
                                    fields=frozen_fields(parsed.fields), place=self._place)

    # --- the Protocol ------------------------------------------------------------------------

    def read(self, target: SecretsManagerTarget) -> Snapshot:
        return self._guard("read", target, lambda: self._read(target))

    def write_record(self, target: SecretsManagerTarget, record: RotationRecord, *, expect: str | None) -> str:
        return self._guard("write_record", target, lambda: self._write_record(target, record, expect))

    def stage(self, target: SecretsManagerTarget, value: Secret, record: RotationRecord, *,
              expect: str | None) -> str:
        return self._guard("stage", target, lambda: self._stage(target, value, record, expect))

    def promote(self, target: SecretsManagerTarget, record: RotationRecord, *, expect: str) -> str:
        return self._guard("promote", target, lambda: self._promote(target, record, expect))

    def discard_pending(self, target: SecretsManagerTarget, record: RotationRecord, *, expect: str) -> str:
        return self._guard("discard_pending", target, lambda: self._discard_pending(target, record, expect))

    def deploy(self, target: SecretsManagerTarget, current: Secret, previous: Secret | None, meta: KeyRef) -> None:
        self._guard("deploy", target, lambda: self._deploy(target, current, previous, meta))

    def delete(self, target: SecretsManagerTarget) -> None:
        self._guard("delete", target, lambda: self._delete(target))

    def close(self) -> None:
        super().close()
        with self._lock:
            self._heads.clear()
            self._values.clear()

    def check_access(self, target: SecretsManagerTarget, *, primary: bool, exists: bool) -> list[Finding]:
        """For ``rotator check`` (:class:`rotator.interfaces.BackendAccessCheck`), read-only:
        DescribeSecret (deletion scheduled? Secrets Manager's own rotation on? a replica?). Write
        permission is ``unknown``: PutSecretValue, UpdateSecretVersionStage and CreateSecret have
        no dry run, so only a write would tell."""
        no_dry_run = ("Secrets Manager has no dry run, so this shows at the first write (the IAM policy is in"
                      " docs/backends/aws-secrets-manager.md)")
        if target.replica:
            if primary:
                return [Finding("cas", "fail", "a read-only replica cannot be a primary; list the secret in its"
                                               " primary region first")]
            return [Finding("write", "ok", f"a replica{in_region(target)}: AWS replication writes it, rotator only reads it")]
        if not exists:
            if target.is_arn or not self._settings.create_if_missing:
                why = "an ARN can only name an existing secret" if target.is_arn else "create_if_missing is false"
                findings = [Finding("write", "fail", f"secret {target.secret_id} does not exist{in_region(target)} ({why});"
                                                     " create it first, or set create_if_missing = true")]
                return findings + ([Finding("cas", "fail", "no secret to hold the rotation record")] if primary else [])
            return [Finding("write", "unknown", f"secret {target.secret_id} does not exist{in_region(target)}: the first"
                                                " write creates it (secretsmanager:CreateSecret, PutSecretValue,"
                                                f" UpdateSecretVersionStage); {no_dry_run}")] + (
                [Finding("cas", "ok", "version stages: once created, AWSCURRENT moves only off the version read")]
                if primary else [])
        findings: list[Finding] = []
        described = self._described(target, findings, "DescribeSecret", SecretId=target.secret_id)
        if described.get("DeletedDate"):
            findings.append(Finding("write", "fail", f"secret {target.secret_id} is scheduled for deletion; restore"
                                                     " it (aws secretsmanager restore-secret)"))
        if described.get("RotationEnabled"):
            findings.append(Finding("rotation", "warn", "Secrets Manager's own rotation is enabled on this secret: its"
                                                        " Lambda would replace the key rotator manages; turn it off"
                                                        " (aws secretsmanager cancel-rotate-secret)"))
        home = described.get("PrimaryRegion")
        if primary and home and target.region and home != target.region:
            findings.append(Finding("cas", "fail", f"this is a replica of the secret in {home}: a replica cannot be"
                                                   f" a primary; list the secret in {home} first"))
        elif primary:
            findings.append(Finding("cas", "ok", "version stages: UpdateSecretVersionStage moves AWSCURRENT only off"
                                                 " the version read (compare-and-swap)"))
        findings.append(Finding("write", "unknown", "whether rotator's identity may PutSecretValue and"
                                                    f" UpdateSecretVersionStage here: {no_dry_run}"))
        return findings

    # --- reading -------------------------------------------------------------------------------

    def _read(self, target: SecretsManagerTarget) -> Snapshot:
        head = self._fetch_head(target)
        if head is None:
            return Snapshot()
        snapshot = self._snapshot(target, head)
        self._keep_base(target, head)
        return snapshot

    def _snapshot(self, target: SecretsManagerTarget, head: _Head) -> Snapshot:
        return Snapshot(version=head.version, current=head.doc.current,
                        pending=self._value(target, head.doc.pending),
                        previous=self._later(target, head.doc.previous),
                        record=head.doc.rotation_record())

    def _fetch_head(self, target: SecretsManagerTarget) -> _Head | None:
        """GetSecretValue(VersionStage=AWSCURRENT); None when the secret (or its value) is missing."""
        try:
            answer = self._call(target, "GetSecretValue", SecretId=target.secret_id, VersionStage=CURRENT)
        except AwsFailure as failure:
            if failure.code != "ResourceNotFoundException":
                raise
            self._forget(target)
            return None
        return self._head_from(target, answer)

    def _head_from(self, target: SecretsManagerTarget, answer: Mapping[str, Any]) -> _Head:
        """The head an AWSCURRENT answer (GetSecretValue, or a BatchGetSecretValue entry) shows."""
        head = _Head(answer["VersionId"], _parse(answer, target))
        self._remember(target, head)
        return head

    # --- batched reading -----------------------------------------------------------------------

    def _batch_name(self, target: SecretsManagerTarget) -> str | None:
        return None if target.replica else target.secret_id     # replicas are read (and checked) in ``read``

    def _read_batch(self, region: str | None, chunk: Mapping[str, list[SecretsManagerTarget]]
                    ) -> tuple[dict[SecretsManagerTarget, Snapshot], bool]:
        found: dict[SecretsManagerTarget, Snapshot] = {}
        entries, complete = self._batch_get(region, list(chunk))
        for entry in entries:
            for target in _matching(entry, chunk):
                snapshot = self._snapshot_of(target, entry)
                if snapshot is not None:
                    found[target] = snapshot
        return found, complete

    def _batch_get(self, region: str | None, ids: list[str]) -> tuple[list[Mapping[str, Any]], bool]:
        """BatchGetSecretValue(SecretIdList=ids): the SecretValues entries, and False when the
        request failed (after the retries). AWS pages only with Filters; a NextToken is followed."""
        log.debug("%s: %s %d secrets in %s", self.name, BATCH_GET, len(ids), region)
        entries: list[Mapping[str, Any]] = []
        params: dict[str, Any] = {"SecretIdList": ids}
        for _ in range(len(ids)):               # bounded: a page holds at least one entry or error
            try:
                answer = self._aws.call(SERVICE, region, BATCH_GET, **params)
            except AwsFailure as failure:
                self._batch_failed(region, failure)
                return entries, False
            entries.extend(answer.get("SecretValues") or ())
            for error in answer.get("Errors") or ():
                log.debug("%s: %s left %s to a single read (%s)", self.name, BATCH_GET,
                          error.get("SecretId"), error.get("ErrorCode"))
            next_token = answer.get("NextToken")
            if not next_token:
                break
            params = {"SecretIdList": ids, "NextToken": next_token}
        return entries, True

    def _snapshot_of(self, target: SecretsManagerTarget, entry: Mapping[str, Any]) -> Snapshot | None:
        """What ``read`` would return for ``target``, from its BatchGetSecretValue entry; None
        when it cannot say (left to ``read``, which raises the precise error)."""
        if not entry.get("VersionId") or CURRENT not in entry.get("VersionStages", (CURRENT,)):
            return None
        try:
            head = self._head_from(target, entry)
            snapshot = self._snapshot(target, head)
            self._keep_base(target, head)
            return snapshot
        except Problem as problem:
            why = problem.kind.__name__
        except AwsFailure as failure:
            why = failure.code
        log.debug("%s: %s left to a single read (%s)", self.name, target.label, why)
        return None

    def _value(self, target: SecretsManagerTarget, ref: Ref | None) -> Secret | None:
        """The key held by the version ``ref`` points at (by VersionId; cached: versions are immutable)."""
        if ref is None:
            return None
        cached = self._kept_value(target, ref.version)
        if cached is not None:
            return cached
        try:
            answer = self._call(target, "GetSecretValue", SecretId=target.secret_id, VersionId=ref.version)
        except AwsFailure as failure:
            if failure.code == "ResourceNotFoundException":
                return None          # never written (a crash mid-stage) or expired by AWS's version clean-up
            raise
        value = _parse(answer, target).current
        if value is None or value.fingerprint != ref.fingerprint:
            raise Problem(CorruptPayload, f"version {_short(ref.version)} does not hold the key rotator's"
                                          " pointer describes (fingerprint mismatch)")
        self._keep_value(target, ref.version, value)
        return value

    def _later(self, target: SecretsManagerTarget, ref: Ref | None) -> Secret | None:
        """The key ``ref`` points at, read only when something needs more than its fingerprint
        (:meth:`Secret.deferred`): a run that compares fingerprints, as most do, never reads the
        older version (a fresh process saves one GetSecretValue per target and read)."""
        if ref is None:
            return None
        cached = self._kept_value(target, ref.version)
        if cached is not None:
            return cached

        def read() -> Secret:
            value = self._value(target, ref)
            if value is None:
                raise Problem(SecretMissing, f"version {_short(ref.version)}, which holds the previous key,"
                                             " is gone")
            return value

        return Secret.deferred(ref.fingerprint, lambda: self._guard("read", target, read))

    def _base(self, target: SecretsManagerTarget, expect: str | None) -> Doc:
        """The payload of version ``expect`` (what the caller decided on): cached, else by VersionId."""
        if expect is None:
            return Doc()
        with self._lock:
            head = self._heads.get(target)
        if head is not None and head.version == expect:
            return head.doc
        try:
            answer = self._call(target, "GetSecretValue", SecretId=target.secret_id, VersionId=expect)
        except AwsFailure as failure:
            if failure.code == "ResourceNotFoundException":
                raise Problem(Conflict, f"version {_short(expect)} is gone; the secret changed since it was read")
            raise
        return _parse(answer, target)

    # --- primary writes ----------------------------------------------------------------------

    def _write_record(self, target: SecretsManagerTarget, record: RotationRecord, expect: str | None) -> str:
        self._writable(target)
        base = self._base(target, expect)
        doc = base.evolve(record=record.to_dict(), meta=_meta(base, base.current, record.current))
        version = self._swap(target, doc, record, expect, "record")
        self._keep_previous_label(target, doc, record, expect)
        return version

    def _stage(self, target: SecretsManagerTarget, value: Secret, record: RotationRecord,
               expect: str | None) -> str:
        self._writable(target)
        base = self._base(target, expect)
        pending = base.plain().evolve(current=value, meta=describing(value, record.pending))
        content = pending.encode(target.layout)
        pending_id = token("pending", record.rotation_id, expect, content)
        doc = base.evolve(pending=Ref(pending_id, value.fingerprint), record=record.to_dict(),
                          meta=_meta(base, base.current, record.current))
        if expect is None:                      # the secret must exist before a version can be added
            version = self._swap(target, doc, record, None, "stage")
            self._put(target, content, pending_id, [PENDING])
        else:
            try:
                self._put(target, content, pending_id, [PENDING])   # the value is durable first (I2)
            except AwsFailure as failure:
                if failure.code == "ResourceNotFoundException":
                    raise Problem(Conflict, "was deleted since it was read")
                raise
            try:
                version = self._swap(target, doc, record, expect, "stage")
            except Problem as problem:
                if problem.kind is Conflict:
                    self._return_pending_label(target, pending_id)
                raise
            self._keep_previous_label(target, doc, record, expect)
        self._keep_value(target, pending_id, value)
        return version

    def _promote(self, target: SecretsManagerTarget, record: RotationRecord, expect: str) -> str:
        self._writable(target)
        base = self._base(target, expect)
        if base.pending is None:
            raise Problem(BackendError, "nothing is pending, so there is nothing to promote")
        value = self._value(target, base.pending)
        if value is None:
            raise Problem(BackendError, f"the pending version {_short(base.pending.version)} is gone;"
                                        " nothing to promote")
        previous = Ref(expect, base.current.fingerprint) if base.current is not None else None
        doc = base.evolve(current=value, pending=None, previous=previous, record=record.to_dict(),
                          meta=describing(value, record.current, record.pending))
        version = self._swap(target, doc, record, expect, "promote")   # AWS moves AWSPREVIOUS to ``expect``
        if base.current is None:
            self._unlabel(target, PREVIOUS, expect)     # the old head held no key: no previous
        else:
            self._keep_value(target, expect, base.current)
        return version

    def _discard_pending(self, target: SecretsManagerTarget, record: RotationRecord, expect: str) -> str:
        self._writable(target)
        base = self._base(target, expect)
        doc = base.evolve(pending=None, record=record.to_dict(), meta=_meta(base, base.current, record.current))
        version = self._swap(target, doc, record, expect, "discard")
        if base.pending is not None:
            self._unlabel(target, PENDING, base.pending.version)
        self._keep_previous_label(target, doc, record, expect)
        return version

    def _swap(self, target: SecretsManagerTarget, doc: Doc, record: RotationRecord | None,
              expect: str | None, kind: str) -> str:
        """Write ``doc`` as the new head: create the secret (``expect`` None), or put a version
        and move AWSCURRENT onto it from ``expect`` — the compare-and-swap."""
        content = doc.encode(target.layout)
        version = token(kind, record.rotation_id if record else None, expect, content)
        if expect is None:
            self._create(target, content, version, first_only=True)
        else:
            try:
                self._put(target, content, version, [SCRATCH])
            except AwsFailure as failure:
                if failure.code == "ResourceNotFoundException":
                    raise Problem(Conflict, "was deleted since it was read")
                raise
            self._move_current(target, version, expect)
        self._remember(target, _Head(version, doc))
        return version

    def _move_current(self, target: SecretsManagerTarget, to: str, expect: str) -> None:
        try:
            self._call(target, "UpdateSecretVersionStage", SecretId=target.secret_id, VersionStage=CURRENT,
                       MoveToVersionId=to, RemoveFromVersionId=expect)
        except AwsFailure as failure:
            if failure.code not in LABEL_REFUSED:
                raise
            if failure.attempts > 1 and self._labelled(target, CURRENT, to):
                return                                   # an earlier try of ours landed
            raise Problem(Conflict, f"changed since it was read ({CURRENT} is no longer on version"
                                    f" {_short(expect)})")

    def _create(self, target: SecretsManagerTarget, content: str, version: str, *, first_only: bool) -> None:
        """CreateSecret with ``content`` as its first version. A secret that exists without any
        value (made by Terraform, say) gets ``content`` as its first version instead. With
        ``first_only``, a secret that already has a value is a Conflict; otherwise it is overwritten."""
        settings = self._settings
        if settings.create_if_missing and not target.is_arn:
            params: dict[str, Any] = {"Name": target.secret_id, "SecretString": content,
                                      "ClientRequestToken": version, "Description": settings.description}
            if settings.kms_key_id:
                params["KmsKeyId"] = settings.kms_key_id
            if settings.tags:
                params["Tags"] = [{"Key": k, "Value": v} for k, v in settings.tags.items()]
            if settings.replica_regions:
                params["AddReplicaRegions"] = [{"Region": r, **({"KmsKeyId": settings.kms_key_id}
                                                                if settings.kms_key_id else {})}
                                               for r in settings.replica_regions]
            try:
                self._call(target, "CreateSecret", **params)
                return
            except AwsFailure as failure:
                if failure.code != "ResourceExistsException":
                    raise
        try:
            answer = self._put(target, content, version, [SCRATCH] if first_only else None)
        except AwsFailure as failure:
            if failure.code != "ResourceNotFoundException":
                raise
            why = ("an ARN can only name an existing secret" if target.is_arn
                   else "create_if_missing is false")
            raise Problem(SecretMissing, f"does not exist ({why})")
        if first_only and CURRENT not in answer.get("VersionStages", ()):
            raise Problem(Conflict, "already exists (it was expected not to)")

    def _return_pending_label(self, target: SecretsManagerTarget, ours: str) -> None:
        """A stage lost its compare-and-swap after putting its value as AWSPENDING: move the label
        to the winner's pending value, or take it off ours. Only moves it if ours still holds it."""
        try:
            head = self._fetch_head(target)
        except (AwsFailure, Problem):
            head = None
        winner = head.doc.pending.version if head is not None and head.doc.pending is not None else None
        if winner is not None and winner != ours:
            self._relabel(target, PENDING, winner, ours)
        else:
            self._unlabel(target, PENDING, ours)

    def _keep_previous_label(self, target: SecretsManagerTarget, doc: Doc, record: RotationRecord,
                             expect: str | None) -> None:
        """Moving AWSCURRENT makes AWS move AWSPREVIOUS to ``expect``. During a grace window (the
        record names a previous key) put it back on the version holding the old key."""
        if expect is None or record.previous is None or doc.previous is None or doc.previous.version == expect:
            return
        self._relabel(target, PREVIOUS, doc.previous.version, expect)

    # --- secondary writes ----------------------------------------------------------------------

    def _deploy(self, target: SecretsManagerTarget, current: Secret, previous: Secret | None, meta: KeyRef) -> None:
        if target.replica:
            self._await_replica(target, current)
            return
        head = self._deploy_base(target)
        base = head.doc if head is not None else Doc()
        wanted_meta = describing(current, meta)
        if (head is not None and base.current == current and base.meta == wanted_meta
                and _fp(base.previous) == _fp(previous)):
            return                                       # already so: nothing to write
        prev_ref, prev_put = self._previous_for(target, head, previous, meta)
        doc = base.evolve(current=current, previous=prev_ref, meta=wanted_meta)
        if head is None:
            content = doc.encode(target.layout)
            version = token("deploy", meta.rotation_id, None, content)
            self._create(target, content, version, first_only=False)
            self._remember(target, _Head(version, doc))
        elif base.record is not None:                    # a primary's head: change it by CAS too
            self._swap(target, doc, None, head.version, "deploy")
        else:
            content = doc.encode(target.layout)
            version = token("deploy", meta.rotation_id, head.version, content)
            self._put(target, content, version, None)    # AWSCURRENT here, AWSPREVIOUS to the old head
            self._remember(target, _Head(version, doc))
        if prev_put is not None:
            self._put(target, prev_put[1], prev_ref.version, [PREVIOUS])
            self._keep_value(target, prev_ref.version, previous)
        elif head is not None and prev_ref is None and base.current is not None:
            self._unlabel(target, PREVIOUS, head.version)
        elif head is not None and prev_ref is not None and prev_ref.version != head.version:
            self._relabel(target, PREVIOUS, prev_ref.version, head.version)

    def _deploy_base(self, target: SecretsManagerTarget) -> _Head | None:
        """The head a deploy starts from: the one ``read`` / ``read_many`` found moments ago (the
        engine's batched read before the deploy; see ``AwsBackend._take_base``) if nothing of this
        process replaced it since, else a fresh GetSecretValue."""
        head = self._take_base(target)
        with self._lock:
            still = head is not None and self._heads.get(target) is head
        return head if still else self._fetch_head(target)

    def _previous_for(self, target: SecretsManagerTarget, head: _Head | None, previous: Secret | None,
                      meta: KeyRef) -> tuple[Ref | None, tuple[str, str] | None]:
        """Where ``previous`` will live: the old head (the usual case), the version already
        holding it, or a new version to put (returned as (version, content))."""
        if previous is None:
            return None, None
        if head is not None and head.doc.current == previous:
            self._keep_value(target, head.version, previous)
            return Ref(head.version, previous.fingerprint), None
        if head is not None and _fp(head.doc.previous) == previous.fingerprint:
            return head.doc.previous, None
        base = head.doc.plain() if head is not None else Doc()
        content = base.evolve(current=previous, meta=describing(previous)).encode(target.layout)
        version = token("previous", meta.rotation_id, head.version if head else None, content)
        return Ref(version, previous.fingerprint), (version, content)

    def _await_replica(self, target: SecretsManagerTarget, current: Secret) -> None:
        """A replica is written by AWS replication, not by rotator: wait (bounded) until it shows
        ``current``, so it is verified on its own in its own region."""
        waited, pause = 0.0, 0.5
        while True:
            head = self._fetch_head(target)
            if head is not None and head.doc.record is not None:
                raise Problem(BackendError, "is a replica of a rotator primary: it follows that primary's"
                                            " promotions by itself; remove it from the targets")
            if head is not None and head.doc.current == current:
                return
            if waited >= self._settings.replica_wait:
                if head is None:
                    raise Problem(SecretMissing, f"no replica in {target.region}; add that region to the"
                                                 " source secret's replication")
                raise Problem(BackendUnavailable, f"the replica has not caught up after {waited:.0f}s"
                                                  " (replica_wait); the source is written, try again later")
            step = min(pause, self._settings.replica_wait - waited)
            self._sleep(step)
            waited, pause = waited + step, min(pause * 2, 10.0)

    def _delete(self, target: SecretsManagerTarget) -> None:
        self._forget(target)
        if target.replica:
            return
        try:
            described = self._call(target, "DescribeSecret", SecretId=target.secret_id)
        except AwsFailure as failure:
            if failure.code == "ResourceNotFoundException":
                return
            raise
        replicas = [r["Region"] for r in described.get("ReplicationStatus", ()) if r.get("Region")]
        if replicas:
            self._call(target, "RemoveRegionsFromReplication", SecretId=target.secret_id,
                       RemoveReplicaRegions=replicas)
        self._call(target, "DeleteSecret", SecretId=target.secret_id, ForceDeleteWithoutRecovery=True)

    # --- calls and labels ----------------------------------------------------------------------

    def _put(self, target: SecretsManagerTarget, content: str, version: str,
             stages: list[str] | None) -> dict[str, Any]:
        params: dict[str, Any] = {"SecretId": target.secret_id, "ClientRequestToken": version,
                                  "SecretString": content}
        if stages is not None:
            params["VersionStages"] = stages
        return self._call(target, "PutSecretValue", **params)

    def _labelled(self, target: SecretsManagerTarget, label: str, version: str) -> bool:
        described = self._call(target, "DescribeSecret", SecretId=target.secret_id)
        return label in described.get("VersionIdsToStages", {}).get(version, ())

    def _unlabel(self, target: SecretsManagerTarget, label: str, version: str) -> None:
        """Take ``label`` off ``version`` if it is still there. Cosmetic: rotator reads by pointer."""
        self._best_effort(label, lambda: self._call(
            target, "UpdateSecretVersionStage", SecretId=target.secret_id, VersionStage=label,
            RemoveFromVersionId=version))

    def _relabel(self, target: SecretsManagerTarget, label: str, to: str, frm: str) -> None:
        self._best_effort(label, lambda: self._call(
            target, "UpdateSecretVersionStage", SecretId=target.secret_id, VersionStage=label,
            MoveToVersionId=to, RemoveFromVersionId=frm))

    def _best_effort(self, label: str, move: Callable[[], Any]) -> None:
        try:
            move()
        except AwsFailure as failure:
            log.warning("%s: could not adjust the %s label (%s); rotator reads by version pointer,"
                        " so only direct readers of %s are affected", self.name, label, failure.code, label)

    def _writable(self, target: SecretsManagerTarget) -> None:
        if target.replica:
            raise Problem(BackendError, "is a read-only replica and cannot be a primary; list the secret"
                                        " in its primary region first")

    # --- caches ------------------------------------------------------------------------------

    def _remember(self, target: SecretsManagerTarget, head: _Head) -> None:
        with self._lock:
            self._heads[target] = head
        if head.doc.current is not None:
            self._keep_value(target, head.version, head.doc.current)

    def _forget(self, target: SecretsManagerTarget) -> None:
        with self._lock:
            self._heads.pop(target, None)

    def _kept_value(self, target: SecretsManagerTarget, version: str) -> Secret | None:
        with self._lock:
            return self._values.get((target.region, target.secret_id, version))

    def _keep_value(self, target: SecretsManagerTarget, version: str, value: Secret) -> None:
        with self._lock:
            self._values[(target.region, target.secret_id, version)] = value
            while len(self._values) > _VALUES_KEPT:
                self._values.popitem(last=False)

    # --- the edge ------------------------------------------------------------------------------

    def _service_error(self, op: str, target: SecretsManagerTarget, failure: AwsFailure,
                       detail: str) -> BackendError | None:
        where, code, name = target.label, failure.code, self.name
        if code in DENIED and "kms" not in failure.message.lower():
            return BackendPermissionError(
                f"{where}: access denied during {op}: rotator needs secretsmanager:{failure.operation}"
                f" on secret {target.secret_id}{in_region(target)}{detail}", provider=name)
        if code in DENIED or code in ("DecryptionFailure", "EncryptionFailure") or code.upper().startswith("KMS"):
            need = "kms:Decrypt" if code == "DecryptionFailure" or op == "read" else "kms:GenerateDataKey and kms:Decrypt"
            return BackendPermissionError(
                f"{where}: KMS refused {self._key} during {op} ({code}){detail}; rotator needs {need} on it,"
                " and the key must be enabled", provider=name)
        if code == "ResourceNotFoundException":
            return SecretMissing(f"{where}: secret {target.secret_id} not found{in_region(target)}{detail}",
                                 provider=name)
        if code == "InvalidRequestException" and "delet" in failure.message.lower():
            return BackendError(
                f"{where}: secret {target.secret_id} is scheduled for deletion; restore it (aws"
                f" secretsmanager restore-secret) or wait until it is gone{detail}", provider=name)
        if code == "LimitExceededException":
            return BackendError(f"{where}: a Secrets Manager quota was reached during {op}{detail}",
                                provider=name, transient=True)
        return None


def _matching(entry: Mapping[str, Any], chunk: Mapping[str, list[SecretsManagerTarget]]
              ) -> Iterable[SecretsManagerTarget]:
    """The targets a BatchGetSecretValue entry answers: those whose secret_id is its Name or ARN."""
    ids = dict.fromkeys(key for key in (entry.get("Name"), entry.get("ARN")) if key)
    return dict.fromkeys(target for key in ids for target in chunk.get(key, ())).keys()


def _parse(answer: Mapping[str, Any], target: SecretsManagerTarget) -> Doc:
    try:
        return Doc.parse(answer.get("SecretString"), target.layout)
    except Problem as problem:
        raise Problem(problem.kind, f"version {_short(str(answer.get('VersionId')))} {problem}") from None


def _meta(base: Doc, value: Secret | None, *refs: KeyRef | None) -> dict[str, Any] | None:
    """Describe the head's key: from the record when it knows that key, else keep what was there."""
    if value is None:
        return None
    for ref in refs:
        if ref is not None and ref.fingerprint == value.fingerprint:
            return meta_of(ref)
    if base.meta and base.meta.get("fingerprint") == value.fingerprint:
        return dict(base.meta)
    return describing(value)


def _fp(item: Ref | Secret | None) -> str | None:
    return None if item is None else item.fingerprint


def _short(version: str) -> str:
    return version[:8]
