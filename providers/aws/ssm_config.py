"""Settings and targets of the ``ssm_parameter`` backend, validated without the network.

The settings are the ones every AWS backend takes (:class:`rotator_providers.aws.common.AwsSettings`):
the same region, role, endpoint, tag and ``insecure_http`` rules as ``aws_secrets_manager``'s.
"""

from __future__ import annotations

import dataclasses
import re

from pydantic import Field, field_validator

from rotator_providers.aws.common import Attempts, AwsSettings, Region, TargetField, Timeout, place_of
from rotator_providers.document import TargetFields, layout_of
from rotator.validation import StrictModel
from rotator.values import Layout

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


class ParameterStoreSettings(AwsSettings):
    """The shared AWS settings, with Parameter Store's shorter limit on ``description``."""

    description: str = Field(default="API key kept current by rotator", max_length=1024)
    max_attempts: Attempts = 5
    connect_timeout: Timeout = 5.0
    read_timeout: Timeout = 15.0
    insecure_http: bool = False    # allow a plain http:// endpoint that is not loopback (warns at every start)


class ParameterTargetSpec(StrictModel):
    name: str
    field: TargetField = "api_key"
    fields: TargetFields = None
    region: Region = None

    @field_validator("name")
    @classmethod
    def _name(cls, text: str) -> str:
        problem = name_problem(text)
        if problem:
            raise ValueError(problem)
        return text


@dataclasses.dataclass(frozen=True)
class ParameterTarget:
    """One SecureString parameter in one region."""

    name: str
    region: str | None
    field: str
    #: (part, JSON field) pairs when the value has several parts; None for a plain value.
    fields: tuple[tuple[str, str], ...] | None = None
    #: Where the backend sends its calls and whose account it acts in (see
    #: :func:`rotator_providers.aws.common.place_of`), set by the backend's ``target()`` for
    #: :attr:`addresses`; not part of equality or hashing.
    place: tuple[str, str] = dataclasses.field(default=("", ""), compare=False, repr=False)

    @property
    def label(self) -> str:
        where = f"{self.region}:" if self.region else ""
        return f"aws-ssm:{where}{self.name}"

    @property
    def layout(self) -> Layout:
        return layout_of(self.field, self.fields)

    @property
    def addresses(self) -> frozenset[tuple[str, ...]]:
        """The parameter this target addresses (see :class:`rotator.interfaces.Target`): endpoint,
        account selector, region and name. Names are case-sensitive and have one spelling
        (``/a/b`` and ``a/b`` cannot both be valid), so the name is compared as written."""
        endpoint, account = self.place
        return frozenset({("aws-ssm", endpoint, account, self.region or "", self.name)})
