"""Backend ``ssm_parameter``: each target is one AWS Systems Manager Parameter Store parameter.
See docs/backends/ssm.md.

The parameter is a ``SecureString`` whose value is the JSON document the file and Vault backends
store (:mod:`rotator_providers.document`)::

    {"api_key": "<current>", "rotator": {"format": 1, "previous": "<old>", "meta": {...}}}

Applications read the parameter (``WithDecryption``) and take the field; the application's other
fields in the document are kept by every write.

**A secondary only.** ``PutParameter`` has no conditional write (nothing like Secrets Manager's
version stages or Vault's ``cas``), so a parameter cannot be the compare-and-swap that serialises
runners: the backend declares ``holds_record=False`` and configuration refuses it as a primary.
Each ``deploy`` is a read and, when something would change, one ``PutParameter(Overwrite=True)``;
the secret's primary record orders those writes. The version token is the parameter's ``Version``.

**Creating.** A missing parameter is created with ``Overwrite=False`` (AWS refuses ``Tags``
together with ``Overwrite``), carrying ``tags``, ``description`` and ``kms_key_id``; tags are
never touched again. ``create_if_missing = false`` makes a missing parameter ``SecretMissing``.
A parameter that exists with another type (``String``, ``StringList``) is refused, not converted:
AWS cannot change a parameter's type, and rotator does not write keys in clear text.

**Batched reads** (:class:`rotator.interfaces.BatchReads`): ``GetParameters`` returns up to 10
parameters per request, decrypted, and names the ones that do not exist in ``InvalidParameters``
(read as "missing", as ``read`` would). A parameter whose value rotator cannot parse is left out
and read alone with ``read``, which raises the precise error.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Mapping

from rotator_providers.aws.common import DENIED, AwsBackend, in_region
from rotator_providers.aws.session import AwsFailure
from rotator_providers.aws.sm_payload import Problem
from rotator_providers.aws.ssm_config import ParameterStoreSettings, ParameterTarget, ParameterTargetSpec
from rotator_providers.document import Document, LayoutMismatch, PayloadError, frozen_fields, kind, meta_fields
from rotator.errors import (
    BackendError,
    BackendPermissionError,
    BackendUnavailable,
    CorruptPayload,
    SecretMissing,
)
from rotator.interfaces import Finding
from rotator.models import BackendCapabilities, KeyRef, RotationRecord, Secret, Snapshot

log = logging.getLogger(__name__)

SERVICE = "ssm"
SECURE = "SecureString"
BATCH_GET = "GetParameters"
BATCH_SIZE = 10                    # AWS's limit on Names per GetParameters request
#: Errors whose AWS message is shown even for a PutParameter (whose other messages are withheld:
#: a validation message may quote the value it refused).
_SAFE_PUT_MESSAGES = DENIED
NO_CAS = ("Parameter Store has no compare-and-swap (PutParameter has no conditional write), so a parameter"
          " cannot hold the rotation record")


class ParameterStoreBackend(AwsBackend[ParameterTarget]):
    """Backend ``ssm_parameter``: a SecureString parameter per target, secondary only."""

    capabilities = BackendCapabilities(holds_record=False, keeps_previous=True,
                                       extra={"service": SERVICE, "batch_read": BATCH_GET})
    read_batch = BATCH_SIZE
    service = SERVICE
    endpoint_variable = "AWS_ENDPOINT_URL_SSM"
    settings_model = ParameterStoreSettings
    log = log                       # the base class logs under this module's name
    batch_get = BATCH_GET
    batch_denied = ("ssm:GetParameters on some of these parameters; reading them one by one (GetParameter)"
                    " from now on. Grant it to read 10 parameters per request")
    items = "parameters"
    default_key = "the account's default key for Parameter Store (alias/aws/ssm)"
    _settings: ParameterStoreSettings

    def target(self, spec: Mapping[str, Any]) -> ParameterTarget:
        parsed = self._target_spec(ParameterTargetSpec, spec)
        return ParameterTarget(parsed.name, self._region(parsed.region), parsed.field,
                               fields=frozen_fields(parsed.fields), place=self._place)

    # --- the Protocol ------------------------------------------------------------------------

    def read(self, target: ParameterTarget) -> Snapshot:
        return self._guard("read", target, lambda: self._read(target))

    def deploy(self, target: ParameterTarget, current: Secret, previous: Secret | None, meta: KeyRef) -> None:
        self._guard("deploy", target, lambda: self._deploy(target, current, previous, meta))

    def delete(self, target: ParameterTarget) -> None:
        def delete() -> None:
            try:
                self._call(target, "DeleteParameter", Name=target.name)
            except AwsFailure as failure:
                if failure.code != "ParameterNotFound":
                    raise

        self._guard("delete", target, delete)

    # Primary writes: never called (configuration refuses this backend as a primary); refused
    # here too, so a caller that skips the configuration check gets a clear error.

    def write_record(self, target: ParameterTarget, record: RotationRecord, *, expect: str | None) -> str:
        raise self._not_primary(target)

    def stage(self, target: ParameterTarget, value: Secret, record: RotationRecord, *, expect: str | None) -> str:
        raise self._not_primary(target)

    def promote(self, target: ParameterTarget, record: RotationRecord, *, expect: str) -> str:
        raise self._not_primary(target)

    def discard_pending(self, target: ParameterTarget, record: RotationRecord, *, expect: str) -> str:
        raise self._not_primary(target)

    def check_access(self, target: ParameterTarget, *, primary: bool, exists: bool) -> list[Finding]:
        """For ``rotator check`` (:class:`rotator.interfaces.BackendAccessCheck`), read-only:
        DescribeParameters (the parameter's type and KMS key). Write permission is ``unknown``:
        PutParameter has no dry run, so only a write would tell."""
        no_dry_run = ("Parameter Store has no dry run, so this shows at the first write (the IAM policy is in"
                      " docs/backends/ssm.md)")
        findings: list[Finding] = []
        if primary:
            findings.append(Finding("cas", "fail", f"{NO_CAS}; list a file, aws_secrets_manager or vault_kv"
                                                   " (KV v2) target first and this one after it"))
        if not exists:
            if not self._settings.create_if_missing:
                return findings + [Finding("write", "fail", f"parameter {target.name} does not exist{in_region(target)}"
                                                            " and create_if_missing is false; create it as a"
                                                            " SecureString, or set create_if_missing = true")]
            tagging = ", ssm:AddTagsToResource (for the tags)" if self._settings.tags else ""
            return findings + [Finding("write", "unknown", f"parameter {target.name} does not exist{in_region(target)}:"
                                                           " the first deploy creates it as a SecureString"
                                                           f" (ssm:PutParameter{tagging}, kms:Encrypt on"
                                                           f" {self._key}); {no_dry_run}")]
        described = self._described(target, findings, "DescribeParameters", ParameterFilters=[
            {"Key": "Name", "Option": "Equals", "Values": [target.name]}])
        parameter = next((p for p in described.get("Parameters") or () if p.get("Name") == target.name), None)
        if parameter is not None:
            found_type = parameter.get("Type")
            if found_type != SECURE:
                findings.append(Finding("type", "fail", _not_secure(target, found_type)))
            else:
                key = parameter.get("KeyId") or "the account's default key (alias/aws/ssm)"
                findings.append(Finding("type", "ok", f"SecureString, encrypted with {key}"))
        findings.append(Finding("write", "unknown", "whether rotator's identity may ssm:PutParameter here (and"
                                                    f" kms:Encrypt on {self._key}): {no_dry_run}"))
        return findings

    # --- reading -------------------------------------------------------------------------------

    def _read(self, target: ParameterTarget) -> Snapshot:
        parameter = self._get(target)
        if parameter is None:
            return Snapshot()
        snapshot = _snapshot(self._parse(parameter, target))
        self._keep_base(target, parameter)
        return snapshot

    def _get(self, target: ParameterTarget) -> dict[str, Any] | None:
        """GetParameter(WithDecryption=True): the parameter, or None when it does not exist."""
        try:
            answer = self._call(target, "GetParameter", Name=target.name, WithDecryption=True)
        except AwsFailure as failure:
            if failure.code == "ParameterNotFound":
                return None
            raise
        return answer["Parameter"]

    def _parse(self, parameter: Mapping[str, Any], target: ParameterTarget) -> tuple[str, Document, Any]:
        """(version, document, the JSON object as stored) of a GetParameter(s) entry."""
        version = str(parameter.get("Version"))
        text = parameter.get("Value")
        if not isinstance(text, str):
            raise Problem(CorruptPayload, f"version {version} has no string value")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise Problem(CorruptPayload, f"version {version} is not valid JSON: {exc.msg} at line {exc.lineno},"
                                          f" column {exc.colno} (rotator stores a JSON object, see"
                                          " docs/backends/ssm.md)") from None
        if not isinstance(data, dict):
            raise Problem(CorruptPayload, f"version {version}: the top level is a JSON {kind(data)},"
                                          " expected an object")
        try:
            doc = Document.parse(data, target.layout)
        except PayloadError as exc:
            raise Problem(CorruptPayload, f"version {version}: {exc}") from None
        return version, doc, data

    # --- batched reading -----------------------------------------------------------------------

    def _batch_name(self, target: ParameterTarget) -> str | None:
        return target.name

    def _read_batch(self, region: str | None, chunk: Mapping[str, list[ParameterTarget]]
                    ) -> tuple[dict[ParameterTarget, Snapshot], bool]:
        answer = self._batch_get(region, list(chunk))
        if answer is None:
            return {}, False
        found: dict[ParameterTarget, Snapshot] = {}
        for parameter in answer.get("Parameters") or ():
            for target in chunk.get(parameter.get("Name"), ()):
                snapshot = self._snapshot_of(target, parameter)
                if snapshot is not None:
                    found[target] = snapshot
        for missing in answer.get("InvalidParameters") or ():
            for target in chunk.get(missing, ()):
                found[target] = Snapshot()      # what ``read`` returns for a missing parameter
        return found, True

    def _batch_get(self, region: str | None, names: list[str]) -> dict[str, Any] | None:
        """GetParameters(Names=names, WithDecryption=True); None when the request failed."""
        log.debug("%s: %s %d parameters in %s", self.name, BATCH_GET, len(names), region)
        try:
            return self._aws.call(SERVICE, region, BATCH_GET, Names=names, WithDecryption=True)
        except AwsFailure as failure:
            self._batch_failed(region, failure)
            return None

    def _snapshot_of(self, target: ParameterTarget, parameter: Mapping[str, Any]) -> Snapshot | None:
        """What ``read`` would return for ``target``, from its GetParameters entry; None when it
        cannot say (left to ``read``, which raises the precise error)."""
        try:
            snapshot = _snapshot(self._parse(parameter, target))
        except Problem as problem:
            log.debug("%s: %s left to a single read (%s)", self.name, target.label, problem.kind.__name__)
            return None
        self._keep_base(target, parameter)
        return snapshot

    # --- writing -------------------------------------------------------------------------------

    def _deploy(self, target: ParameterTarget, current: Secret, previous: Secret | None, meta: KeyRef) -> None:
        # what read / read_many found moments ago (the engine's batched read before the deploy), else a read
        parameter = self._take_base(target) or self._get(target)
        described = meta_fields(meta, last4=True) or None
        if parameter is None:
            if not self._settings.create_if_missing:
                raise Problem(SecretMissing, f"parameter {target.name} does not exist{in_region(target)} and"
                                             " create_if_missing is false; create it as a SecureString, or"
                                             " set create_if_missing = true")
            wanted = Document().evolve(current=current, previous=previous, meta=described)
            content = _text(_encode(wanted, target))
            try:
                self._put(target, content, create=True)
                return
            except AwsFailure as failure:
                if failure.code != "ParameterAlreadyExists":
                    raise
            # Created meanwhile: by another writer, or by an earlier try of ours whose reply was lost.
            parameter = self._get(target)
            if parameter is None:
                raise Problem(BackendUnavailable, "was created and deleted again while rotator wrote it;"
                                                  " try again")
        if parameter.get("Type") != SECURE:
            raise Problem(BackendError, _not_secure(target, parameter.get("Type")))
        _, doc, stored = self._parse(parameter, target)
        data = _encode(doc.evolve(current=current, previous=previous, meta=described), target)
        if data == stored:
            return                                       # already so: nothing to write
        self._put(target, _text(data), create=False)

    def _put(self, target: ParameterTarget, content: str, *, create: bool) -> None:
        """PutParameter as a SecureString: a new parameter with its tags and description, or an
        overwrite of an existing one (no tags: AWS refuses them together with Overwrite)."""
        settings = self._settings
        params: dict[str, Any] = {"Name": target.name, "Value": content, "Type": SECURE, "Overwrite": not create}
        if settings.kms_key_id:
            params["KeyId"] = settings.kms_key_id
        if create:
            params["Description"] = settings.description
            if settings.tags:
                params["Tags"] = [{"Key": k, "Value": v} for k, v in settings.tags.items()]
        self._call(target, "PutParameter", **params)

    # --- the edge ------------------------------------------------------------------------------

    def _not_primary(self, target: ParameterTarget) -> BackendError:
        return BackendError(f"{target.label}: {NO_CAS}; use this backend as a secondary only", provider=self.name)

    def _detail(self, failure: AwsFailure) -> str:
        """A PutParameter's message is withheld (a validation message may quote the value it refused)."""
        shown = failure.operation != "PutParameter" or failure.code in _SAFE_PUT_MESSAGES
        return super()._detail(failure) if shown else ""

    def _service_error(self, op: str, target: ParameterTarget, failure: AwsFailure,
                       detail: str) -> BackendError | None:
        where, code, name = target.label, failure.code, self.name
        # About KMS? Not because the parameter's own name (quoted in an ARN) happens to say "kms".
        about = failure.message.replace(target.name, "").replace(target.name.lstrip("/"), "").lower()
        kms = "kms" in about or code.upper().startswith("KMS") or code == "InvalidKeyId"
        if code in DENIED and not kms:
            return BackendPermissionError(
                f"{where}: access denied during {op}: rotator needs ssm:{failure.operation} on parameter"
                f" {target.name}{in_region(target)}{detail}", provider=name)
        if kms:
            need = "kms:Decrypt" if failure.operation in ("GetParameter", BATCH_GET) else "kms:Encrypt"
            return BackendPermissionError(
                f"{where}: KMS refused {self._key} during {op} ({code}){detail}; rotator needs {need} on it,"
                " and the key must exist and be enabled", provider=name)
        if code == "ParameterNotFound":
            return SecretMissing(f"{where}: parameter {target.name} not found{in_region(target)}", provider=name)
        if code == "HierarchyTypeMismatchException":
            return BackendError(f"{where}: {_not_secure(target, 'another')}", provider=name)
        if code == "ParameterLimitExceeded":
            return BackendError(f"{where}: the account's quota of parameters{in_region(target)} is reached;"
                                " delete unused ones or ask AWS for more", provider=name)
        if code == "ParameterMaxVersionLimitExceeded":
            return BackendError(f"{where}: the parameter has 100 versions and the oldest carries a label,"
                                " so AWS will not drop it; remove that label (aws ssm"
                                " unlabel-parameter-version)", provider=name)
        return None


def _snapshot(parsed: tuple[str, Document, Any]) -> Snapshot:
    """A secondary's snapshot: current and previous (pending and a record belong to primaries)."""
    version, doc, _ = parsed
    return Snapshot(version=version, current=doc.current, previous=doc.previous)


def _encode(doc: Document, target: ParameterTarget) -> dict[str, Any]:
    """The JSON object to store (no section that would hold only its format)."""
    try:
        return doc.encode(target.layout, section_always=False)
    except LayoutMismatch as exc:
        raise Problem(BackendError, str(exc)) from None


def _text(data: Mapping[str, Any]) -> str:
    """A parameter's value: the object as compact JSON."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def _not_secure(target: ParameterTarget, found_type: Any) -> str:
    return (f"parameter {target.name} is a {found_type} parameter: rotator writes keys only to SecureString"
            " parameters, and AWS cannot change a parameter's type; delete it (rotator then creates it as a"
            " SecureString) or name another parameter")
