"""Settings and targets of the ``aws_secrets_manager`` backend, validated without the network."""

from __future__ import annotations

import dataclasses
import re

from pydantic import Field, field_validator, model_validator

from rotator_providers.addresses import normal_url
from rotator_providers.document import reserved_field
from rotator.validation import StrictModel, insecure_http_problem, insecure_http_warning

_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d{1,2}")
_NAME = re.compile(r"[A-Za-z0-9/_+=.@-]{1,512}")
ARN_PATTERN = re.compile(r"arn:aws[a-z-]*:secretsmanager:(?P<region>[a-z0-9-]+):\d{12}:secret:(?P<name>[A-Za-z0-9/_+=.@-]+)")
_ARN_SUFFIX = re.compile(r"(?P<name>.+)-[A-Za-z0-9]{6}")   # the "-AbCdEf" AWS appends to a name in an ARN
_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}")
_URL = re.compile(r"https?://[^\s/]+(/\S*)?")


def _region(text: str | None) -> str | None:
    if text is not None and not _REGION.fullmatch(text):
        raise ValueError("expected an AWS region name such as 'eu-west-1'")
    return text


def _url(text: str | None) -> str | None:
    if text is not None and not _URL.fullmatch(text):
        raise ValueError("expected an http:// or https:// URL")
    return text


class SecretsManagerSettings(StrictModel):
    region: str | None = None
    endpoint_url: str | None = None
    sts_endpoint_url: str | None = None
    profile: str | None = Field(default=None, min_length=1)
    role_arn: str | None = None
    role_session_name: str = Field(default="rotator", pattern=r"[\w+=,.@-]{2,64}")
    external_id: str | None = Field(default=None, min_length=2, max_length=1224)
    kms_key_id: str | None = Field(default=None, min_length=1, max_length=2048)
    description: str = Field(default="API key kept current by rotator", max_length=2048)
    tags: dict[str, str] = Field(default_factory=dict, max_length=50)
    create_if_missing: bool = True
    replica_regions: list[str] = Field(default_factory=list)
    max_attempts: int = Field(default=5, ge=1, le=20)
    connect_timeout: float = Field(default=5.0, gt=0, le=300)
    read_timeout: float = Field(default=15.0, gt=0, le=300)
    replica_wait: float = Field(default=30.0, ge=0, le=900)
    insecure_http: bool = False    # allow a plain http:// endpoint that is not loopback (warns at every start)

    @field_validator("region")
    @classmethod
    def _check_region(cls, text: str | None) -> str | None:
        return _region(text)

    @field_validator("endpoint_url", "sts_endpoint_url")
    @classmethod
    def _check_url(cls, text: str | None) -> str | None:
        return _url(text)

    @field_validator("role_arn")
    @classmethod
    def _role(cls, text: str | None) -> str | None:
        if text is not None and not _ROLE_ARN.fullmatch(text):
            raise ValueError("expected an IAM role ARN such as 'arn:aws:iam::123456789012:role/rotator'")
        return text

    @field_validator("tags")
    @classmethod
    def _tags(cls, tags: dict[str, str]) -> dict[str, str]:
        for key, value in tags.items():
            if not 1 <= len(key) <= 128 or len(value) > 256:
                raise ValueError("tag keys take 1 to 128 characters, values up to 256")
            if key.lower().startswith("aws:"):
                raise ValueError(f"tag key {key!r}: the 'aws:' prefix is reserved by AWS")
        return tags

    @field_validator("replica_regions")
    @classmethod
    def _replicas(cls, regions: list[str]) -> list[str]:
        for region in regions:
            _region(region)
        if len(set(regions)) != len(regions):
            raise ValueError("a region is listed twice")
        return regions

    @model_validator(mode="after")
    def _replicas_elsewhere(self) -> SecretsManagerSettings:
        problems = []
        if self.region is not None and self.region in self.replica_regions:
            problems.append("replica_regions must not include the secret's own region")
        if not self.insecure_http:
            for field, sends in (("endpoint_url", "every key"), ("sts_endpoint_url", "the assumed role's credentials")):
                url = getattr(self, field)
                problem = insecure_http_problem(url, field, sends) if url else None
                if problem:
                    problems.append(problem)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def warnings(self, where: str) -> list[str]:
        """What this section allows but should not (a plain http endpoint with ``insecure_http``)."""
        if not self.insecure_http:
            return []
        found = [insecure_http_warning(url, where, what) for url, what in (
            (self.endpoint_url, "every key"), (self.sts_endpoint_url, "the assumed role's credentials")) if url]
        return [w for w in found if w]


class SecretsManagerTargetSpec(StrictModel):
    secret_id: str = Field(min_length=1, max_length=2048)
    field: str = Field(default="api_key", min_length=1)
    region: str | None = None
    replica: bool = False

    @field_validator("region")
    @classmethod
    def _check_region(cls, text: str | None) -> str | None:
        return _region(text)

    @field_validator("secret_id")
    @classmethod
    def _secret_id(cls, text: str) -> str:
        if not (_NAME.fullmatch(text) or ARN_PATTERN.fullmatch(text)):
            raise ValueError("expected a secret name (letters, digits and /_+=.@-) or a Secrets Manager ARN")
        return text

    @field_validator("field")
    @classmethod
    def _not_reserved(cls, text: str) -> str:
        return reserved_field(text)


@dataclasses.dataclass(frozen=True)
class SecretsManagerTarget:
    """One secret in one region. ``replica``: a read-only replica, verified but never written."""

    secret_id: str
    region: str | None
    field: str
    replica: bool = False
    #: Where the backend sends its calls and whose account it acts in, set by the backend's
    #: ``target()`` for :attr:`addresses`; not part of equality or hashing (see :func:`place_of`).
    place: tuple[str, str] = dataclasses.field(default=("", ""), compare=False, repr=False)

    @property
    def label(self) -> str:
        if ARN_PATTERN.fullmatch(self.secret_id):
            return f"aws-sm:{self.secret_id}"
        return f"aws-sm:{self.region}/{self.secret_id}" if self.region else f"aws-sm:{self.secret_id}"

    @property
    def is_arn(self) -> bool:
        return bool(ARN_PATTERN.fullmatch(self.secret_id))

    @property
    def addresses(self) -> frozenset[tuple[str, ...]]:
        """The secret this target addresses (see :class:`rotator.interfaces.Target`): endpoint,
        account selector, region and name. An ARN addresses its resource name and, when that ends
        in AWS's six-character suffix, the name without it, so it meets the plain name. A replica
        target addresses the replica: the same name in its own region."""
        arn = ARN_PATTERN.fullmatch(self.secret_id)
        names = {self.secret_id}
        if arn is not None:
            names = {arn["name"]}
            bare = _ARN_SUFFIX.fullmatch(arn["name"])
            if bare is not None:
                names.add(bare["name"])
        endpoint, account = self.place
        return frozenset(("aws-sm", endpoint, account, self.region or "", name) for name in names)


def place_of(endpoint_url: str | None, role_arn: str | None, profile: str | None) -> tuple[str, str]:
    """A backend's :attr:`SecretsManagerTarget.place`: its endpoint (scheme, host and port; ``""``
    for AWS's own) and what selects its account (the role it assumes, else its profile, else
    ``""``: the default credential chain). Backends that differ in either are different places,
    even when they happen to reach the same account."""
    endpoint = normal_url(endpoint_url) if endpoint_url else ""
    account = f"role:{role_arn}" if role_arn else f"profile:{profile}" if profile else ""
    return endpoint, account


