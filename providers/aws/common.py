"""What rotator's AWS backends (``aws_secrets_manager``, ``ssm_parameter``) share, written once so
a rule changed for one changes for both.

* **Settings** (validated without the network): the region, endpoint, role, KMS key and tag rules,
  the plain-http rule for ``endpoint_url`` / ``sts_endpoint_url`` and its ``insecure_http`` escape,
  as a base model (:class:`AwsSettings`) and field types each backend's models declare.
* **Addresses**: :func:`place_of`, where a backend's calls go and whose account they act in.
* **The backend**: :class:`AwsBackend`, the clients built from the settings, a target's region,
  calls, batched reads by region and their fallback to single reads, ``rotator check``'s describe
  step, and the edge where an :class:`~rotator_providers.aws.session.AwsFailure` becomes a rotator
  error (the session-level failures here; each service adds its own).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from typing import (
    TYPE_CHECKING,
    Annotated,
    Any,
    Callable,
    ClassVar,
    Generic,
    Mapping,
    Protocol,
    Sequence,
    TypeVar,
)

from pydantic import AfterValidator, BaseModel, Field, model_validator

from rotator_providers.addresses import normal_url
from rotator_providers.aws.session import AwsClients, AwsFailure, AwsOptions
from rotator_providers.aws.sm_payload import Problem
from rotator_providers.document import reserved_field
from rotator.errors import BackendError, BackendPermissionError, BackendUnavailable
from rotator.interfaces import Finding, ProviderContext
from rotator.models import Snapshot
from rotator.validation import StrictModel, insecure_http_problem, insecure_http_warning, parse

_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d{1,2}")
_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}")
_URL = re.compile(r"https?://[^\s/]+(/\S*)?")

#: The endpoint settings, and what each sends unencrypted over plain http.
_ENDPOINTS = (("endpoint_url", "every key"), ("sts_endpoint_url", "the assumed role's credentials"))
#: An IAM refusal (the other KMS and resource errors are the service's to explain).
DENIED = frozenset({"AccessDeniedException", "AccessDenied"})
#: Credentials that were valid and have run out: a refresh (the next run) may succeed.
_EXPIRED = frozenset({"ExpiredToken", "ExpiredTokenException", "RequestExpired"})
#: How long what ``read`` / ``read_many`` returned stays the base of a ``deploy`` of the same target
#: (seconds, monotonic): the engine reads a secondary through its batched read-ahead just before
#: deploying to it, so the deploy needs no read of its own (see :meth:`AwsBackend._take_base`).
DEPLOY_BASE_AGE = 10.0
_BASES_KEPT = 1024

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


# --- settings ------------------------------------------------------------------------------------

def region_name(text: str | None) -> str | None:
    """``text`` if it is shaped like an AWS region name (botocore would send anything)."""
    if text is not None and not _REGION.fullmatch(text):
        raise ValueError("expected an AWS region name such as 'eu-west-1'")
    return text


def _url(text: str | None) -> str | None:
    if text is not None and not _URL.fullmatch(text):
        raise ValueError("expected an http:// or https:// URL")
    return text


def _role_arn(text: str | None) -> str | None:
    if text is not None and not _ROLE_ARN.fullmatch(text):
        raise ValueError("expected an IAM role ARN such as 'arn:aws:iam::123456789012:role/rotator'")
    return text


def _tags(tags: dict[str, str]) -> dict[str, str]:
    """AWS's tag rules (the same for both services), checked at load rather than at the first create."""
    for key, value in tags.items():
        if not 1 <= len(key) <= 128 or len(value) > 256:
            raise ValueError("tag keys take 1 to 128 characters, values up to 256")
        if key.lower().startswith("aws:"):
            raise ValueError(f"tag key {key!r}: the 'aws:' prefix is reserved by AWS")
    return tags


#: Field types, so a model keeps its own field order (the order its errors are listed in).
Region = Annotated[str | None, AfterValidator(region_name)]
Attempts = Annotated[int, Field(ge=1, le=20)]
Timeout = Annotated[float, Field(gt=0, le=300)]
TargetField = Annotated[str, Field(min_length=1), AfterValidator(reserved_field)]


class AwsAccess(StrictModel):
    """How any AWS provider reaches AWS: region, endpoints, profile and role. A provider's model
    adds its own fields after these and ends with ``max_attempts``, ``connect_timeout``,
    ``read_timeout`` and ``insecure_http``."""

    region: Region = None
    endpoint_url: Annotated[str | None, AfterValidator(_url)] = None
    sts_endpoint_url: Annotated[str | None, AfterValidator(_url)] = None
    profile: str | None = Field(default=None, min_length=1)
    role_arn: Annotated[str | None, AfterValidator(_role_arn)] = None
    role_session_name: str = Field(default="rotator", pattern=r"[\w+=,.@-]{2,64}")
    external_id: str | None = Field(default=None, min_length=2, max_length=1224)

    if TYPE_CHECKING:            # declared by each provider's model, last (see the class docstring)
        max_attempts: int
        connect_timeout: float
        read_timeout: float
        insecure_http: bool      # allow a plain http:// endpoint that is not loopback (warns at every start)

    @model_validator(mode="after")
    def _consistent(self) -> AwsAccess:
        problems = self._problems()
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _problems(self) -> list[str]:
        """What is wrong across fields: a plain http endpoint that is not loopback, unless
        ``insecure_http``. A backend's model adds its own problems to the list."""
        if self.insecure_http:
            return []
        found = (insecure_http_problem(getattr(self, field), field, sends)
                 for field, sends in _ENDPOINTS if getattr(self, field))
        return [problem for problem in found if problem]

    def warnings(self, where: str) -> list[str]:
        """What this section allows but should not (a plain http endpoint with ``insecure_http``)."""
        if not self.insecure_http:
            return []
        found = [insecure_http_warning(getattr(self, field), where, sends)
                 for field, sends in _ENDPOINTS if getattr(self, field)]
        return [w for w in found if w]

    def options(self, service: str, workers: int, *, max_attempts: int | None = None) -> AwsOptions:
        """How the backend's clients reach AWS: ``endpoint_url`` is ``service``'s endpoint."""
        endpoints = {key: url for key, url in ((service, self.endpoint_url), ("sts", self.sts_endpoint_url)) if url}
        return AwsOptions(region=self.region, profile=self.profile, role_arn=self.role_arn,
                          role_session_name=self.role_session_name, external_id=self.external_id,
                          endpoints=endpoints, connect_timeout=self.connect_timeout,
                          read_timeout=self.read_timeout, workers=workers,
                          max_attempts=self.max_attempts if max_attempts is None else max_attempts)


class AwsSettings(AwsAccess):
    """The settings every AWS backend takes: how to reach AWS, then how its secrets are created."""

    kms_key_id: str | None = Field(default=None, min_length=1, max_length=2048)
    description: str = Field(default="API key kept current by rotator", max_length=2048)
    tags: Annotated[dict[str, str], Field(max_length=50), AfterValidator(_tags)] = Field(default_factory=dict)
    create_if_missing: bool = True


# --- addresses -----------------------------------------------------------------------------------

def place_of(endpoint_url: str | None, role_arn: str | None, profile: str | None) -> tuple[str, str]:
    """A backend's targets' ``place``: its endpoint (scheme, host and port; ``""`` for AWS's own)
    and what selects its account (the role it assumes, else its profile, else ``""``: the default
    credential chain). Backends that differ in either are different places, even when they happen
    to reach the same account."""
    endpoint = normal_url(endpoint_url) if endpoint_url else ""
    account = f"role:{role_arn}" if role_arn else f"profile:{profile}" if profile else ""
    return endpoint, account


class AwsTarget(Protocol):
    """What :class:`AwsBackend` needs of a target: a label for messages and its region."""

    @property
    def label(self) -> str: ...

    @property
    def region(self) -> str | None: ...


def in_region(target: AwsTarget) -> str:
    """`` in eu-west-1`` for a message, or nothing when the region is botocore's to find."""
    return f" in {target.region}" if target.region else ""


# --- the backend ---------------------------------------------------------------------------------

TargetT = TypeVar("TargetT", bound=AwsTarget)


class AwsBackend(Generic[TargetT]):
    """The part of an AWS backend that does not depend on the service.

    A backend sets the class attributes below and implements :meth:`_batch_name`,
    :meth:`_read_batch` and :meth:`_service_error`; its own module's logger is ``log`` so its
    messages keep their logger name.
    """

    service: ClassVar[str]                      # botocore's name: "secretsmanager", "ssm"
    endpoint_variable: ClassVar[str]            # the service's own endpoint environment variable
    settings_model: ClassVar[type[AwsSettings]]
    log: ClassVar[logging.Logger]
    #: BatchReads: targets per ``read_many`` group the engine forms (one request each).
    read_batch: ClassVar[int]
    batch_get: ClassVar[str]                    # the batched read: "BatchGetSecretValue", "GetParameters"
    #: Ends the one warning when ``batch_get`` is denied: the permission missing, what is read instead.
    batch_denied: ClassVar[str]
    items: ClassVar[str]                        # what a target is, plural: "secrets", "parameters"
    default_key: ClassVar[str]                  # the KMS key used when ``kms_key_id`` is not set

    def __init__(self, name: str, settings: Mapping[str, Any], context: ProviderContext) -> None:
        self.name = name
        self._settings = s = parse(self.settings_model, settings, f"backends.{name}")
        self.warnings = s.warnings(f"backends.{name}")   # logged at start, shown by ``rotator check``
        self._aws = AwsClients(name, s.options(self.service, context.workers), sleep=context.sleep,
                               on_call=context.on_call)
        self._lock = threading.Lock()
        self._batching = True       # False once ``batch_get`` was denied: read one by one
        self._bases: dict[Any, tuple[Any, float]] = {}     # target -> (what a read found, when)

    def close(self) -> None:
        self._aws.close()

    # --- targets ---------------------------------------------------------------------------------

    def _target_spec(self, model: type[M], spec: Mapping[str, Any]) -> M:
        """A ``targets`` entry validated by ``model`` (without ``backend``, the core's key)."""
        entry = {key: value for key, value in spec.items() if key != "backend"}
        return parse(model, entry, f"backends.{self.name} target")

    def _region(self, region: str | None) -> str | None:
        """A target's region: its own, else the backend's, else botocore's environment variables."""
        return (region or self._settings.region or os.environ.get("AWS_REGION")
                or os.environ.get("AWS_DEFAULT_REGION"))

    @property
    def _place(self) -> tuple[str, str]:
        """The endpoint and account selector this backend's targets address (botocore's choice
        when the settings leave them out: the endpoint and profile environment variables)."""
        s = self._settings
        env = os.environ
        endpoint = s.endpoint_url or env.get(self.endpoint_variable) or env.get("AWS_ENDPOINT_URL")
        profile = s.profile or env.get("AWS_DEFAULT_PROFILE") or env.get("AWS_PROFILE")   # botocore's order
        return place_of(endpoint, s.role_arn, profile)

    @property
    def _key(self) -> str:
        """The KMS key the backend's writes use, for messages."""
        return f"KMS key {self._settings.kms_key_id}" if self._settings.kms_key_id else self.default_key

    # --- batched reading -------------------------------------------------------------------------

    def read_many(self, targets: Sequence[TargetT]) -> dict[TargetT, Snapshot]:
        """BatchReads: what ``read`` returns for each target, from one ``batch_get`` per
        ``read_batch`` names of a region. Never raises: a target it cannot answer for is left out
        (a failed request leaves the rest of its region, a denied one everything, to ``read``)."""
        found: dict[TargetT, Snapshot] = {}
        regions: dict[str | None, dict[str, list[TargetT]]] = {}
        for target in dict.fromkeys(targets):
            name = self._batch_name(target)
            if name is not None:
                regions.setdefault(target.region, {}).setdefault(name, []).append(target)
        for region, by_name in regions.items():
            names = list(by_name)
            for start in range(0, len(names), self.read_batch):
                if not self._batching:
                    return found
                chunk = {name: by_name[name] for name in names[start:start + self.read_batch]}
                answered, complete = self._read_batch(region, chunk)
                found.update(answered)
                if not complete:
                    break                       # the rest of this region is read one by one
        return found

    def _batch_name(self, target: TargetT) -> str | None:
        """The name ``batch_get`` asks for ``target`` by; None: read it alone."""
        raise NotImplementedError

    def _read_batch(self, region: str | None, chunk: Mapping[str, list[TargetT]]
                    ) -> tuple[dict[TargetT, Snapshot], bool]:
        """One ``batch_get`` for ``chunk`` (name -> targets): the snapshots it answers, and False
        when the request failed (see :meth:`_batch_failed`)."""
        raise NotImplementedError

    def _batch_failed(self, region: str | None, failure: AwsFailure) -> None:
        """A denied ``batch_get`` is denied for good (IAM does not change mid-run): warn once and
        stop batching; any other failure leaves only this region's rest to single reads."""
        if failure.code in DENIED and failure.kind == "service":
            with self._lock:
                first, self._batching = self._batching, False
            if first:
                self.log.warning("%s: access denied to %s (%s): the identity lacks the IAM permission %s",
                                 self.name, self.batch_get, failure.code, self.batch_denied)
            return
        self.log.debug("%s: %s failed in %s after %d tries (%s); reading those %s one by one",
                       self.name, self.batch_get, region, failure.attempts, failure.code, self.items)

    # --- the base of a deploy ------------------------------------------------------------------

    def _keep_base(self, target: TargetT, found: Any) -> None:
        """``read`` or ``read_many`` found ``found`` (the service's answer for ``target``) just now."""
        now = time.monotonic()
        with self._lock:
            self._bases.pop(target, None)
            self._bases[target] = (found, now)
            if len(self._bases) > _BASES_KEPT:          # reads never followed by a deploy: drop the oldest
                for stale in list(self._bases)[:len(self._bases) - _BASES_KEPT]:
                    del self._bases[stale]

    def _take_base(self, target: TargetT) -> Any:
        """What a ``read`` / ``read_many`` of ``target`` found at most :data:`DEPLOY_BASE_AGE` ago
        (once: a deploy uses it, the next one reads), else None.

        A secondary's deploy is not a compare-and-swap (the services have no conditional write),
        so it rewrites the target from a read of it: the application's other fields are kept and a
        deploy that would change nothing writes nothing. The engine reads the secondary through its
        read-ahead right before deploying (one batched request for many secrets instead of one
        read per deploy); an application writing another field in those few seconds could lose it,
        as it could in the milliseconds between a read of the deploy's own and its write."""
        with self._lock:
            kept = self._bases.pop(target, None)
        if kept is None or time.monotonic() - kept[1] > DEPLOY_BASE_AGE:
            return None
        return kept[0]

    # --- calls -----------------------------------------------------------------------------------

    def _call(self, target: TargetT, operation: str, **params: Any) -> dict[str, Any]:
        self.log.debug("%s: %s %s", self.name, operation, target.label)
        return self._aws.call(self.service, target.region, operation, **params)

    def _described(self, target: TargetT, findings: list[Finding], operation: str, **params: Any
                   ) -> Mapping[str, Any]:
        """For ``rotator check``: ``operation``'s answer. When it fails, a ``describe`` finding
        saying why (``fail`` if it is transient, else ``warn``) and an empty answer, so the checks
        that do not need it still run."""
        try:
            return self._call(target, operation, **params)
        except AwsFailure as failure:
            error = self._translate("check", target, failure)
            findings.append(Finding("describe", "fail" if error.transient else "warn", str(error)))
            return {}

    # --- the edge --------------------------------------------------------------------------------

    def _guard(self, op: str, target: TargetT, action: Callable[[], T]) -> T:
        """Run ``action``; anything that goes wrong leaves as a rotator error naming the target."""
        try:
            return action()
        except Problem as problem:
            error: BackendError = problem.kind(f"{target.label}: {problem}", provider=self.name)
        except AwsFailure as failure:
            error = self._translate(op, target, failure)
        raise error from None

    def _translate(self, op: str, target: TargetT, failure: AwsFailure) -> BackendError:
        """``failure`` as rotator's error: the session's failures (retries spent, no region, the
        role, credentials), then the service's own, else a BackendError naming the operation."""
        detail = self._detail(failure)
        return (self._session_error(op, target, failure, detail)
                or self._service_error(op, target, failure, detail)
                or BackendError(f"{target.label}: {failure.operation} failed during {op} ({failure.code}){detail}",
                                provider=self.name))

    def _detail(self, failure: AwsFailure) -> str:
        """AWS's message (redacted by the session) to append to an error; a backend may withhold it."""
        return f": {failure.message}" if failure.message else ""

    def _session_error(self, op: str, target: TargetT, failure: AwsFailure, detail: str) -> BackendError | None:
        where, code, name = target.label, failure.code, self.name
        if failure.transient:
            return BackendUnavailable(f"{where}: {failure.operation} failed after {failure.attempts}"
                                      f" tries ({code}){detail}", provider=name)
        if code == "NoRegionError":
            return BackendError(f"{where}: no AWS region: set `region` on backends.{name} or on the target"
                                " (or AWS_REGION in the environment)", provider=name)
        if failure.during == "AssumeRole":
            return BackendPermissionError(
                f"{where}: could not assume role {self._settings.role_arn} ({code}){detail}; rotator's own"
                " identity needs sts:AssumeRole on it and the role's trust policy must allow that identity",
                provider=name)
        if failure.kind == "credentials":
            return BackendPermissionError(
                f"{where}: AWS credentials problem during {op} ({code}){detail}. rotator takes credentials"
                " from the standard AWS chain (environment, profile, web identity / IRSA, container or"
                " instance role), never from its config file", provider=name, transient=code in _EXPIRED)
        return None

    def _service_error(self, op: str, target: TargetT, failure: AwsFailure, detail: str) -> BackendError | None:
        """The service's own translation of ``failure``; None: the generic one."""
        raise NotImplementedError
