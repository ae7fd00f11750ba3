"""Settings and targets of the ``aws_secrets_manager`` backend, validated without the network."""

from __future__ import annotations

import dataclasses
import re

from pydantic import Field, field_validator

from rotator_providers.aws.common import (
    Attempts,
    AwsSettings,
    Region,
    TargetField,
    Timeout,
    place_of,
    region_name,
)
from rotator_providers.document import TargetFields, layout_of
from rotator.validation import StrictModel
from rotator.values import Layout

__all__ = ["ARN_PATTERN", "SecretsManagerSettings", "SecretsManagerTarget", "SecretsManagerTargetSpec", "place_of"]

_NAME = re.compile(r"[A-Za-z0-9/_+=.@-]{1,512}")
ARN_PATTERN = re.compile(r"arn:aws[a-z-]*:secretsmanager:(?P<region>[a-z0-9-]+):\d{12}:secret:(?P<name>[A-Za-z0-9/_+=.@-]+)")
_ARN_SUFFIX = re.compile(r"(?P<name>.+)-[A-Za-z0-9]{6}")   # the "-AbCdEf" AWS appends to a name in an ARN


class SecretsManagerSettings(AwsSettings):
    """The shared AWS settings, then the replicas AWS keeps of a secret rotator creates."""

    replica_regions: list[str] = Field(default_factory=list)
    max_attempts: Attempts = 5
    connect_timeout: Timeout = 5.0
    read_timeout: Timeout = 15.0
    replica_wait: float = Field(default=30.0, ge=0, le=900)
    insecure_http: bool = False    # allow a plain http:// endpoint that is not loopback (warns at every start)

    @field_validator("replica_regions")
    @classmethod
    def _replicas(cls, regions: list[str]) -> list[str]:
        for region in regions:
            region_name(region)
        if len(set(regions)) != len(regions):
            raise ValueError("a region is listed twice")
        return regions

    def _problems(self) -> list[str]:
        """A replica in the secret's own region (listed first), then the shared problems."""
        problems = []
        if self.region is not None and self.region in self.replica_regions:
            problems.append("replica_regions must not include the secret's own region")
        return problems + super()._problems()


class SecretsManagerTargetSpec(StrictModel):
    secret_id: str = Field(min_length=1, max_length=2048)
    field: TargetField = "api_key"
    fields: TargetFields = None
    region: Region = None
    replica: bool = False

    @field_validator("secret_id")
    @classmethod
    def _secret_id(cls, text: str) -> str:
        if not (_NAME.fullmatch(text) or ARN_PATTERN.fullmatch(text)):
            raise ValueError("expected a secret name (letters, digits and /_+=.@-) or a Secrets Manager ARN")
        return text


@dataclasses.dataclass(frozen=True)
class SecretsManagerTarget:
    """One secret in one region. ``replica``: a read-only replica, verified but never written."""

    secret_id: str
    region: str | None
    field: str
    replica: bool = False
    #: (part, JSON field) pairs when the value has several parts; None for a plain value.
    fields: tuple[tuple[str, str], ...] | None = None
    #: Where the backend sends its calls and whose account it acts in, set by the backend's
    #: ``target()`` for :attr:`addresses`; not part of equality or hashing (see :func:`place_of`).
    place: tuple[str, str] = dataclasses.field(default=("", ""), compare=False, repr=False)

    @property
    def label(self) -> str:
        if ARN_PATTERN.fullmatch(self.secret_id):
            return f"aws-sm:{self.secret_id}"
        return f"aws-sm:{self.region}/{self.secret_id}" if self.region else f"aws-sm:{self.secret_id}"

    @property
    def layout(self) -> Layout:
        return layout_of(self.field, self.fields)

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
