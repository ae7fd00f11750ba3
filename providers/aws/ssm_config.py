"""Settings and targets of the ``ssm_parameter`` backend, validated without the network.

The settings follow the ``aws_secrets_manager`` backend's (:mod:`rotator_providers.aws.sm_config`):
the same region, role, endpoint, tag and ``insecure_http`` rules, and the same validators.
"""

from __future__ import annotations

import dataclasses
import re

from pydantic import Field, field_validator, model_validator

from rotator_providers.aws.sm_config import _ROLE_ARN, _region, _url, place_of
from rotator_providers.document import reserved_field
from rotator.validation import StrictModel, insecure_http_problem, insecure_http_warning

__all__ = ["NAME_LIMIT", "ParameterStoreSettings", "ParameterTarget", "ParameterTargetSpec", "name_problem",
           "place_of"]

#: PutParameter's own limit on ``Name`` (AWS further limits the parameter's whole ARN to 1011 characters).
NAME_LIMIT = 2048
LEVELS_LIMIT = 15                       # AWS: a hierarchy has at most 15 levels
_NAME_CHARACTERS = re.compile(r"[A-Za-z0-9_./-]+")
_RESERVED_PREFIXES = ("aws", "ssm")     # case-insensitive, with or without the leading "/"


def name_problem(name: str) -> str | None:
    """Why ``name`` is not a Parameter Store name AWS accepts, or None. Never quotes the name
    back beyond what a reader needs (names are not secret, but keep messages short)."""
    if not name:
        return "a parameter name is required"
    if len(name) > NAME_LIMIT:
        return f"a parameter name takes at most {NAME_LIMIT} characters (this one has {len(name)})"
    if not _NAME_CHARACTERS.fullmatch(name):
        bad = sorted({c for c in name if not _NAME_CHARACTERS.fullmatch(c)})
        shown = ", ".join(repr(c) for c in bad[:5])
        return f"a parameter name takes only letters, digits and _.-/ (found {shown})"
    if "/" in name and not name.startswith("/"):
        return "a parameter name with a hierarchy starts with '/' (e.g. '/prod/web/quiva-api-key')"
    if name.startswith("/"):
        levels = name[1:].split("/")
        if name == "/" or "" in levels:
            return "a parameter name has no empty level ('//', or a '/' at the end)"
        if len(levels) > LEVELS_LIMIT:
            return f"a parameter hierarchy has at most {LEVELS_LIMIT} levels (this one has {len(levels)})"
    if name.lstrip("/").lower().startswith(_RESERVED_PREFIXES):
        return "a parameter name must not begin with 'aws' or 'ssm' (any case, after the leading '/'): AWS reserves them"
    return None


class ParameterStoreSettings(StrictModel):
    region: str | None = None
    endpoint_url: str | None = None
    sts_endpoint_url: str | None = None
    profile: str | None = Field(default=None, min_length=1)
    role_arn: str | None = None
    role_session_name: str = Field(default="rotator", pattern=r"[\w+=,.@-]{2,64}")
    external_id: str | None = Field(default=None, min_length=2, max_length=1224)
    kms_key_id: str | None = Field(default=None, min_length=1, max_length=2048)
    description: str = Field(default="API key kept current by rotator", max_length=1024)
    tags: dict[str, str] = Field(default_factory=dict, max_length=50)
    create_if_missing: bool = True
    max_attempts: int = Field(default=5, ge=1, le=20)
    connect_timeout: float = Field(default=5.0, gt=0, le=300)
    read_timeout: float = Field(default=15.0, gt=0, le=300)
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

    @model_validator(mode="after")
    def _plain_http(self) -> ParameterStoreSettings:
        if self.insecure_http:
            return self
        problems = []
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


class ParameterTargetSpec(StrictModel):
    name: str
    field: str = Field(default="api_key", min_length=1)
    region: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, text: str) -> str:
        problem = name_problem(text)
        if problem:
            raise ValueError(problem)
        return text

    @field_validator("region")
    @classmethod
    def _check_region(cls, text: str | None) -> str | None:
        return _region(text)

    @field_validator("field")
    @classmethod
    def _not_reserved(cls, text: str) -> str:
        return reserved_field(text)


@dataclasses.dataclass(frozen=True)
class ParameterTarget:
    """One SecureString parameter in one region."""

    name: str
    region: str | None
    field: str
    #: Where the backend sends its calls and whose account it acts in (see
    #: :func:`rotator_providers.aws.sm_config.place_of`), set by the backend's ``target()`` for
    #: :attr:`addresses`; not part of equality or hashing.
    place: tuple[str, str] = dataclasses.field(default=("", ""), compare=False, repr=False)

    @property
    def label(self) -> str:
        where = f"{self.region}:" if self.region else ""
        return f"aws-ssm:{where}{self.name}"

    @property
    def addresses(self) -> frozenset[tuple[str, ...]]:
        """The parameter this target addresses (see :class:`rotator.interfaces.Target`): endpoint,
        account selector, region and name. Names are case-sensitive and have one spelling
        (``/a/b`` and ``a/b`` cannot both be valid), so the name is compared as written."""
        endpoint, account = self.place
        return frozenset({("aws-ssm", endpoint, account, self.region or "", self.name)})
