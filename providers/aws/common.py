"""What rotator's AWS backends (``aws_secrets_manager``, ``ssm_parameter``) share, written once so
a rule changed for one changes for both.

* **Settings** (validated without the network): the region, endpoint, role, KMS key and tag rules,
  the plain-http rule for ``endpoint_url`` / ``sts_endpoint_url`` and its ``insecure_http`` escape,
  as a base model (:class:`AwsSettings`) and field types each backend's models declare.
* **Addresses**: :func:`place_of`, where a backend's calls go and whose account they act in.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated

from pydantic import AfterValidator, Field, model_validator

from rotator_providers.addresses import normal_url
from rotator_providers.aws.session import AwsOptions
from rotator_providers.document import reserved_field
from rotator.validation import StrictModel, insecure_http_problem, insecure_http_warning

_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d{1,2}")
_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}")
_URL = re.compile(r"https?://[^\s/]+(/\S*)?")

#: The endpoint settings, and what each sends unencrypted over plain http.
_ENDPOINTS = (("endpoint_url", "every key"), ("sts_endpoint_url", "the assumed role's credentials"))


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


class AwsSettings(StrictModel):
    """The settings every AWS backend takes; a backend's model adds its own after these and ends
    with ``max_attempts``, ``connect_timeout``, ``read_timeout`` and ``insecure_http``."""

    region: Region = None
    endpoint_url: Annotated[str | None, AfterValidator(_url)] = None
    sts_endpoint_url: Annotated[str | None, AfterValidator(_url)] = None
    profile: str | None = Field(default=None, min_length=1)
    role_arn: Annotated[str | None, AfterValidator(_role_arn)] = None
    role_session_name: str = Field(default="rotator", pattern=r"[\w+=,.@-]{2,64}")
    external_id: str | None = Field(default=None, min_length=2, max_length=1224)
    kms_key_id: str | None = Field(default=None, min_length=1, max_length=2048)
    description: str = Field(default="API key kept current by rotator", max_length=2048)
    tags: Annotated[dict[str, str], Field(max_length=50), AfterValidator(_tags)] = Field(default_factory=dict)
    create_if_missing: bool = True

    if TYPE_CHECKING:            # declared by each backend's model, last (see the class docstring)
        max_attempts: int
        connect_timeout: float
        read_timeout: float
        insecure_http: bool      # allow a plain http:// endpoint that is not loopback (warns at every start)

    @model_validator(mode="after")
    def _consistent(self) -> AwsSettings:
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

    def options(self, service: str, workers: int) -> AwsOptions:
        """How the backend's clients reach AWS: ``endpoint_url`` is ``service``'s endpoint."""
        endpoints = {key: url for key, url in ((service, self.endpoint_url), ("sts", self.sts_endpoint_url)) if url}
        return AwsOptions(region=self.region, profile=self.profile, role_arn=self.role_arn,
                          role_session_name=self.role_session_name, external_id=self.external_id,
                          endpoints=endpoints, connect_timeout=self.connect_timeout,
                          read_timeout=self.read_timeout, max_attempts=self.max_attempts, workers=workers)


# --- addresses -----------------------------------------------------------------------------------

def place_of(endpoint_url: str | None, role_arn: str | None, profile: str | None) -> tuple[str, str]:
    """A backend's targets' ``place``: its endpoint (scheme, host and port; ``""`` for AWS's own)
    and what selects its account (the role it assumes, else its profile, else ``""``: the default
    credential chain). Backends that differ in either are different places, even when they happen
    to reach the same account."""
    endpoint = normal_url(endpoint_url) if endpoint_url else ""
    account = f"role:{role_arn}" if role_arn else f"profile:{profile}" if profile else ""
    return endpoint, account
