"""The AWS IAM issuer (``type = "aws_iam"``): the access keys of one IAM user.

One instance is one IAM user (``user_name``), the owner of every key it issues; rotator's own AWS
identity (the standard credential chain, a profile, or an assumed ``role_arn``) manages that
user's keys. See docs/issuers/aws-iam.md for the IAM policy it needs.

How IAM keys differ from QuivaWorks keys, and what this issuer does about it:

* **A value of two parts**: the access key id and the secret access key, one
  :meth:`~rotator.models.Secret.of_parts` value (the parts ``access_key_id`` and
  ``secret_access_key``), written to every store together.
* **No expiry, an age policy**: a key is due ``max_age`` (90 days) after its creation; it
  "expires" then for planning, though AWS would still accept it.
* **No name, and at most two keys per user** (inactive ones count): keys are told apart by id;
  every key of the user belongs to rotator, so one that no record knows is an orphan, swept under
  the gate's rules (``named_keys = False``). The core makes room before issuing (it deletes a key
  nothing relies on) or waits.
* **Not idempotent, secret shown once**: ``CreateAccessKey`` is sent once, never retried blindly.
  When its reply is lost, the user's keys are listed: a key that appeared is reported
  (:class:`UnusableKey` with its id) so the engine revokes it; none appeared, and the issue may be
  tried again.
* **Eventual consistency**: a new key may be refused by STS for a few seconds; :meth:`verify`
  retries ``GetCallerIdentity`` with back-off for up to ``propagation_timeout`` after the key's
  creation, and the ARN it answers must be the managed user's.
* **Two-stage revoke**: :meth:`revoke` deactivates (a forgotten consumer can be rescued by
  reactivating the key) and notes the time in a user tag ``rotator:deactivated:<key id>``;
  :meth:`purge` deletes an inactive key, which the engine does ``delete_after`` (7 days) later.
  Only ``Active`` keys are *live* (in :meth:`list_keys`); inactive ones are :meth:`dormant_keys`.
* **Usage evidence**: :meth:`last_used` reads ``GetAccessKeyLastUsed``; the revoke gate holds an
  old key used after its replacement was deployed (``require_unused``).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import AfterValidator, field_validator
from rotator_providers.aws.common import DENIED, Attempts, AwsAccess, Timeout
from rotator_providers.aws.session import AwsClients, AwsFailure

from rotator.errors import (
    IssuerAuthError,
    IssuerError,
    IssuerPermissionError,
    IssuerUnavailable,
    KeyNotFound,
    UntrustedAnswer,
    UnusableKey,
)
from rotator.interfaces import Finding, ProviderContext
from rotator.models import (
    DormantKey,
    IssuedKey,
    IssuerCapabilities,
    KeyInfo,
    KeyUse,
    Listing,
    Secret,
    UsagePolicy,
    shown_id,
)
from rotator.redact import remember
from rotator.retry import Backoff, RetryPolicy
from rotator.timeutil import (
    format_duration,
    format_instant,
    parse_duration,
    parse_instant,
)
from rotator.validation import parse

log = logging.getLogger(__name__)

ID_PART, SECRET_PART = "access_key_id", "secret_access_key"
#: The parts of an access key, with the fields they are stored in unless a target renames them.
VALUE_PARTS = ((ID_PART, "aws_access_key_id"), (SECRET_PART, "aws_secret_access_key"))
#: The user tag noting when rotator deactivated a key: ``rotator:deactivated:<key id>`` = instant.
TAG_PREFIX = "rotator:deactivated:"
#: Why a key rotator deactivated and a person reactivated is left alone.
RESCUED = ("reactivated by hand after rotator deactivated it (a rescue): rotator leaves it alone; deactivate"
           " or delete it once its consumer has moved to the new key")
MAX_KEYS = 2                       # IAM's quota of access keys per user, inactive ones included
_KEY_ID = re.compile(r"[A-Z0-9]{16,128}")
_USER = re.compile(r"[\w+=,.@-]{1,64}")
#: Refusals of a key by STS: unknown id (not yet propagated, or deleted) or a wrong secret.
REFUSED = frozenset({"InvalidClientTokenId", "SignatureDoesNotMatch", "UnrecognizedClientException"})
_MAX_PAGES = 20
#: Creation times later than now by more than this are not believed.
CLOCK_SKEW = timedelta(minutes=5)


def _user_name(text: str) -> str:
    if not _USER.fullmatch(text):
        raise ValueError("expected an IAM user name: 1 to 64 letters, digits and _+=,.@-")
    return text


class IamSettings(AwsAccess):
    """The ``[issuers.<name>]`` section of an ``aws_iam`` issuer (``type`` removed by the core)."""

    user_name: Annotated[str, AfterValidator(_user_name)]
    max_age: timedelta = timedelta(days=90)
    delete_after: timedelta = timedelta(days=7)
    require_unused: bool = True
    usage_slack: timedelta = timedelta(hours=1)
    quiet_for: timedelta = timedelta(hours=24)
    propagation_timeout: timedelta = timedelta(seconds=60)
    max_attempts: Attempts = 5
    connect_timeout: Timeout = 5.0
    read_timeout: Timeout = 15.0
    insecure_http: bool = False    # allow a plain http:// endpoint that is not loopback (warns at every start)

    @field_validator("max_age", "delete_after", "usage_slack", "quiet_for", "propagation_timeout", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> timedelta:
        return parse_duration(value)

    @field_validator("max_age")
    @classmethod
    def _max_age(cls, value: timedelta) -> timedelta:
        if value < timedelta(days=1):
            raise ValueError("must be at least 1d")
        return value

    @field_validator("delete_after", "usage_slack", "quiet_for", "propagation_timeout")
    @classmethod
    def _not_negative(cls, value: timedelta) -> timedelta:
        if value.total_seconds() < 0:
            raise ValueError("must not be negative")
        return value

    @field_validator("propagation_timeout")
    @classmethod
    def _bounded(cls, value: timedelta) -> timedelta:
        if value > timedelta(minutes=15):
            raise ValueError("at most 15m (IAM propagates in seconds; a key refused for longer is not working)")
        return value


@dataclass(frozen=True)
class AccessKey:
    """One entry of ``ListAccessKeys``, checked."""

    key_id: str
    active: bool
    created_on: datetime


class IamIssuer:
    """Issues, lists, verifies, deactivates and deletes the access keys of one IAM user."""

    capabilities = IssuerCapabilities(reports_last_used=True, revoke_by_value=False, max_keys_per_owner=MAX_KEYS,
                                      value_parts=VALUE_PARTS, named_keys=False)
    #: No credential reference of its own: the standard AWS chain (or ``role_arn``) signs in.
    credential = None

    def __init__(self, name: str, settings: Mapping[str, Any], context: ProviderContext) -> None:
        self.name = name
        self.settings = s = parse(IamSettings, settings, f"issuers.{name}")
        self.warnings = s.warnings(f"issuers.{name}")
        self._context = context
        self._aws = AwsClients(name, s.options("iam", context.workers), sleep=context.sleep,
                               on_call=context.on_call)
        self._policy = RetryPolicy(attempts=s.max_attempts, base=0.5, cap=20.0)
        self._lock = threading.Lock()
        self._arn: str | None = None
        self._minted: dict[str, datetime] = {}      # key id -> creation, of keys this process issued

    # --- what the core asks of every issuer ----------------------------------------------------

    @property
    def user(self) -> str:
        return self.settings.user_name

    @property
    def owner(self) -> str | None:
        """The managed user's ARN once known, else its name."""
        return self._arn or f"IAM user {self.user}"

    @property
    def key_lifetime(self) -> timedelta:
        """``max_age``: the core refuses a ``lead_time`` that does not fit in it."""
        return self.settings.max_age

    @property
    def delete_after(self) -> timedelta:
        """How long a deactivated key is kept before :meth:`purge` (a rescue window)."""
        return self.settings.delete_after

    @property
    def in_flight_bound(self) -> timedelta:
        """``CreateAccessKey`` is sent once: its deadline is one connect and read timeout; a
        minute of margin for IAM's own lag."""
        s = self.settings
        return timedelta(seconds=s.connect_timeout + s.read_timeout) + timedelta(minutes=1)

    @property
    def usage_policy(self) -> UsagePolicy:
        s = self.settings
        return UsagePolicy(require_unused=s.require_unused, slack=s.usage_slack, quiet_for=s.quiet_for)

    def issue(self, name: str) -> IssuedKey:
        """``CreateAccessKey`` for the user, sent once (see the module docstring). ``name`` is not
        stored anywhere (IAM keys have none); the key is known by its id."""
        before = {k.key_id for k in self._access_keys()}
        if len(before) >= MAX_KEYS:
            raise IssuerError(f"IAM user {self.user} already has {len(before)} access keys (the most IAM"
                              " allows); rotator makes room before issuing, so another runner or a person"
                              " created one meanwhile; the next run tries again", provider=self.name, transient=True)
        backoff = Backoff(self._policy, self._context.sleep)
        while True:
            try:
                answer = self._aws.call("iam", None, "CreateAccessKey", once=True, UserName=self.user)
                break
            except AwsFailure as failure:
                if failure.code == "LimitExceeded":
                    raise IssuerError(f"IAM user {self.user} already has {MAX_KEYS} access keys (LimitExceeded);"
                                      " the next run makes room or waits", provider=self.name,
                                      transient=True) from None
                if not failure.transient:
                    raise self._error("issue", failure) from None
                minted = self._appeared(before)
                if minted:
                    raise UnusableKey(f"CreateAccessKey for IAM user {self.user} failed ({failure.code}) after"
                                      f" minting {', '.join(minted)}: its secret was returned once and lost; the"
                                      " key is revoked and the issue tried again", provider=self.name, name=name,
                                      key_ids=tuple(minted)) from None
                if backoff.tries + 1 >= self._policy.attempts:
                    raise self._error("issue", failure) from None
                backoff.wait(failure)        # nothing was minted: the same request again is safe
        return self._issued(answer, name)

    def _issued(self, answer: Mapping[str, Any], name: str) -> IssuedKey:
        key = answer.get("AccessKey") if isinstance(answer, Mapping) else None
        where = f"CreateAccessKey for IAM user {self.user}"
        if not isinstance(key, Mapping):
            raise UntrustedAnswer(f"{where}: the answer has no AccessKey", provider=self.name)
        key_id, secret = key.get("AccessKeyId"), key.get("SecretAccessKey")
        if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
            raise UntrustedAnswer(f"{where}: the answer's AccessKeyId is not an access key id; a later"
                                  " run's sweep finds the key by its absence from every record", provider=self.name)
        remember(key_id, shown=shown_id(key_id))
        if key.get("UserName") not in (None, self.user):
            raise UnusableKey(f"{where}: the answer names another user; the key is not used", provider=self.name,
                              name=name, key_ids=(key_id,))
        if not isinstance(secret, str) or not 16 <= len(secret) <= 128 or not secret.isprintable() or " " in secret:
            raise UnusableKey(f"{where}: the answer's SecretAccessKey cannot be used", provider=self.name,
                              name=name, key_ids=(key_id,))
        now = self._context.clock.now()
        created = _aware(key.get("CreateDate"))
        note = None
        if created is None or created > now + CLOCK_SKEW:   # an early date only makes the key due sooner
            note = "CreateDate missing or in the future; the key's age counts from now"
            created = now
        with self._lock:
            self._minted[key_id] = created
        value = Secret.of_parts([(ID_PART, key_id), (SECRET_PART, secret)])
        return IssuedKey(value=value, name=name, created_on=created, expires_on=created + self.settings.max_age,
                         key_id=key_id, maybe_twinned=False, note=note)

    def _appeared(self, before: set[str]) -> list[str]:
        """The keys a lost CreateAccessKey reply may have minted: those listed now and not before.
        When the listing itself fails, the answer is unknown: raise (nothing is retried blindly)."""
        try:
            return sorted(k.key_id for k in self._access_keys() if k.key_id not in before)
        except IssuerError as exc:
            raise IssuerUnavailable(f"CreateAccessKey for IAM user {self.user} failed and the keys could not"
                                    f" be listed to see whether it minted one ({exc}); not retried: a later"
                                    " run's sweep finds any key no record knows", provider=self.name) from None

    def list_keys(self) -> Listing:
        """The user's *active* keys (an inactive key cannot sign requests: it is not live). A key
        rotator deactivated that is active again was reactivated by a person to rescue a consumer:
        it is ``kept`` (no sweep deactivates it again; ``review`` shows it)."""
        user = self.user
        active = [k for k in self._access_keys() if k.active]
        tags = self._tags() if active else {}
        keys = [KeyInfo(key_id=k.key_id, name="", last4=k.key_id[-4:], created_on=k.created_on,
                        expires_on=k.created_on + self.settings.max_age, account=user,
                        kept=RESCUED if TAG_PREFIX + k.key_id in tags else None)
                for k in active]
        return Listing(keys)

    def dormant_keys(self) -> list[DormantKey]:
        """The user's inactive keys, with when rotator deactivated each (from the user's tags)."""
        inactive = [k for k in self._access_keys() if not k.active]
        if not inactive:
            return []
        tags = self._tags()
        return [DormantKey(k.key_id, k.created_on, _aware_text(tags.get(TAG_PREFIX + k.key_id))) for k in inactive]

    def verify(self, value: Secret) -> bool:
        """STS ``GetCallerIdentity`` signed with ``value``. True when the answer's ARN is the
        managed user's; False when STS refuses the key and it is no longer new (a refusal within
        ``propagation_timeout`` of the key's creation is retried with back-off: IAM is eventually
        consistent). An ARN of another principal raises UntrustedAnswer (never "verified")."""
        key_id, secret = self._parts(value)
        expected = self.arn()
        deadline = None
        backoff = Backoff(RetryPolicy(attempts=1000, base=1.0, cap=8.0), self._context.sleep)
        while True:
            try:
                answer = self._sts_identity(key_id, secret)
            except AwsFailure as failure:
                if failure.code not in REFUSED:
                    raise self._error("verify", failure) from None
                if deadline is None:
                    deadline = self._propagated_by(key_id)
                if deadline is None or self._context.clock.now() >= deadline:
                    log.info("%s: STS refused key …%s (%s)", self.name, key_id[-4:], failure.code)
                    return False
                log.debug("%s: STS refused new key …%s (%s); IAM may not have propagated it yet",
                          self.name, key_id[-4:], failure.code)
                backoff.wait(failure)
                continue
            arn = answer.get("Arn") if isinstance(answer, Mapping) else None
            if arn != expected:
                raise UntrustedAnswer(f"GetCallerIdentity with key …{key_id[-4:]} answered another principal"
                                      f" ({arn if isinstance(arn, str) else 'no ARN'}), not IAM user {self.user}"
                                      f" ({expected}): the key is not taken as verified", provider=self.name)
            return True

    def revoke(self, *, key_id: str | None = None, value: Secret | None = None) -> None:
        """Deactivate the key (the first stage), then note the time in a user tag; the key is
        deleted by :meth:`purge` once ``delete_after`` has passed. In this order, a key that is
        active and tagged was always reactivated by a person (a rescue); a failure between the two
        leaves an inactive key without a note, which only a rotation needing room deletes.
        Raises KeyNotFound when IAM does not know the id."""
        if key_id is None:
            if value is None:
                raise ValueError("revoke needs a key id or a value")
            key_id = self._parts(value)[0]
        self._call("revoke", "UpdateAccessKey", UserName=self.user, AccessKeyId=key_id, Status="Inactive")
        now = self._context.clock.now()
        try:
            self._call("revoke", "TagUser", UserName=self.user,
                       Tags=[{"Key": TAG_PREFIX + key_id, "Value": format_instant(now)}])
        except IssuerError as exc:
            log.warning("%s: key …%s deactivated, but the time could not be noted (%s): it is not deleted after"
                        " delete_after; a rotation needing room deletes it", self.name, key_id[-4:], exc)

    def purge(self, key_id: str) -> None:
        """Delete an inactive key for good (the second stage), and its tag. An active key is
        refused: it must be deactivated first (through the revoke gate)."""
        listed = {k.key_id: k for k in self._access_keys()}
        key = listed.get(key_id)
        if key is None:
            self._untag(key_id)
            raise KeyNotFound(f"IAM user {self.user} has no access key {key_id}", provider=self.name)
        if key.active:
            raise IssuerError(f"access key …{key_id[-4:]} of IAM user {self.user} is active again (reactivated"
                              " by hand?); not deleted", provider=self.name)
        self._call("purge", "DeleteAccessKey", UserName=self.user, AccessKeyId=key_id)
        self._untag(key_id)

    def tidy(self) -> None:
        """Drop the deactivation notes of keys that no longer exist (a crash or a failed
        UntagUser after a delete, a key deleted by hand): each takes one of a user's 50 tags."""
        tags = self._tags()
        listed = {k.key_id for k in self._access_keys()}
        for key in tags:
            if key.startswith(TAG_PREFIX) and key[len(TAG_PREFIX):] not in listed:
                self._untag(key[len(TAG_PREFIX):])

    def last_used(self, key_id: str) -> KeyUse:
        """``GetAccessKeyLastUsed`` (on AWS this lags by up to a few hours)."""
        answer = self._call("last-used", "GetAccessKeyLastUsed", AccessKeyId=key_id)
        used = answer.get("AccessKeyLastUsed") if isinstance(answer, Mapping) else None
        if not isinstance(used, Mapping):
            raise UntrustedAnswer(f"GetAccessKeyLastUsed for …{key_id[-4:]}: no AccessKeyLastUsed in the answer",
                                  provider=self.name)
        if answer.get("UserName") not in (None, self.user):
            raise UntrustedAnswer(f"GetAccessKeyLastUsed for …{key_id[-4:]}: the key belongs to another user",
                                  provider=self.name)

        def text(field: str) -> str | None:
            found = used.get(field)
            return found if isinstance(found, str) and found not in ("", "N/A") else None

        return KeyUse(_aware(used.get("LastUsedDate")), text("ServiceName"), text("Region"))

    def arn(self) -> str:
        """The managed user's ARN (``GetUser``, once)."""
        if self._arn is None:
            answer = self._call("sign-in", "GetUser", UserName=self.user)
            arn = (answer.get("User") or {}).get("Arn") if isinstance(answer, Mapping) else None
            if not isinstance(arn, str) or not arn.startswith("arn:"):
                raise UntrustedAnswer(f"GetUser {self.user}: the answer has no ARN", provider=self.name)
            self._arn = arn
        return self._arn

    def check_access(self) -> list[Finding]:
        """``rotator check``: read the user (GetUser) and its keys (ListAccessKeys), and say who
        rotator signs in as. Nothing is created, changed or deleted."""
        lifetime = Finding("key lifetime", "ok", f"max_age {format_duration(self.settings.max_age)}; deactivated"
                                                 f" keys deleted after {format_duration(self.settings.delete_after)}")
        try:
            arn = self.arn()
        except IssuerError as exc:
            return [Finding("sign-in", "fail", str(exc)), lifetime]
        found = [Finding("sign-in", "ok", f"manages the access keys of {arn}"), lifetime]
        try:
            me = self._aws.call("sts", self.settings.region, "GetCallerIdentity").get("Arn")
        except AwsFailure:
            me = None
        if me == arn:
            found.append(Finding("identity", "warn", f"rotator signs in as {arn}, the user whose keys it rotates:"
                                                     " give it its own identity (docs/issuers/aws-iam.md)"))
        try:
            keys = self._access_keys()
        except IssuerError as exc:
            found.append(Finding("key limit", "fail", str(exc)))
            return found
        active = sum(k.active for k in keys)
        found.append(Finding("key limit", "warn" if len(keys) >= MAX_KEYS else "ok",
                             f"{len(keys)} access key(s), {active} active"
                             + ("; at IAM's limit: the next rotation must first delete one" if len(keys) >= MAX_KEYS else "")))
        return found

    def credential_changed(self) -> None:
        """The issuer signs in with the AWS chain, never with a key it rotates."""

    def close(self) -> None:
        self._aws.close()

    # --- helpers -------------------------------------------------------------------------------

    def _access_keys(self) -> list[AccessKey]:
        """Every key of the user (``ListAccessKeys``, following ``Marker``), checked."""
        keys: dict[str, AccessKey] = {}
        marker: str | None = None
        for _ in range(_MAX_PAGES):
            params: dict[str, Any] = {"UserName": self.user}
            if marker:
                params["Marker"] = marker
            answer = self._call("list", "ListAccessKeys", **params)
            entries = answer.get("AccessKeyMetadata") if isinstance(answer, Mapping) else None
            if not isinstance(entries, list):
                raise UntrustedAnswer(f"ListAccessKeys {self.user}: no AccessKeyMetadata list", provider=self.name)
            for entry in entries:
                key = self._checked(entry)
                if key.key_id in keys:
                    raise UntrustedAnswer(f"ListAccessKeys {self.user}: key …{key.key_id[-4:]} listed twice",
                                          provider=self.name)
                keys[key.key_id] = key
            if not answer.get("IsTruncated"):
                return list(keys.values())
            marker = answer.get("Marker")
            if not isinstance(marker, str) or not marker:
                raise UntrustedAnswer(f"ListAccessKeys {self.user}: truncated without a Marker", provider=self.name)
        raise UntrustedAnswer(f"ListAccessKeys {self.user}: did not end after {_MAX_PAGES} pages", provider=self.name)

    def _checked(self, entry: Any) -> AccessKey:
        where = f"ListAccessKeys {self.user}"
        if not isinstance(entry, Mapping):
            raise UntrustedAnswer(f"{where}: an entry is not an object", provider=self.name)
        key_id, status = entry.get("AccessKeyId"), entry.get("Status")
        if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
            raise UntrustedAnswer(f"{where}: an entry has no usable AccessKeyId", provider=self.name)
        remember(key_id, shown=shown_id(key_id))
        if entry.get("UserName") not in (None, self.user):
            raise UntrustedAnswer(f"{where}: key …{key_id[-4:]} belongs to another user", provider=self.name)
        if status not in ("Active", "Inactive"):
            raise UntrustedAnswer(f"{where}: key …{key_id[-4:]} has status {str(status)[:20]!r}", provider=self.name)
        created = _aware(entry.get("CreateDate"))
        if created is None:
            raise UntrustedAnswer(f"{where}: key …{key_id[-4:]} has no CreateDate", provider=self.name)
        return AccessKey(key_id, status == "Active", created)

    def _tags(self) -> dict[str, str]:
        answer = self._call("list", "ListUserTags", UserName=self.user)
        tags = answer.get("Tags") if isinstance(answer, Mapping) else None
        if not isinstance(tags, list):
            raise UntrustedAnswer(f"ListUserTags {self.user}: no Tags list", provider=self.name)
        return {t["Key"]: t["Value"] for t in tags
                if isinstance(t, Mapping) and isinstance(t.get("Key"), str) and isinstance(t.get("Value"), str)}

    def _untag(self, key_id: str) -> None:
        try:
            self._call("purge", "UntagUser", UserName=self.user, TagKeys=[TAG_PREFIX + key_id])
        except IssuerError as exc:        # a stale tag only costs a tag slot; the next sweep's tidy() retries
            log.warning("%s: could not remove the tag of deleted key …%s: %s", self.name, key_id[-4:], exc)

    def _propagated_by(self, key_id: str) -> datetime | None:
        """Until when a refusal of ``key_id`` may be IAM's propagation delay: its creation plus
        ``propagation_timeout``, for a key this process minted or the listing shows active; None
        for a key the user does not have (refused for good)."""
        with self._lock:
            created = self._minted.get(key_id)
        if created is None:
            listed = {k.key_id: k for k in self._access_keys()}.get(key_id)
            if listed is None or not listed.active:
                return None
            created = listed.created_on
        return created + self.settings.propagation_timeout

    def _sts_identity(self, key_id: str, secret: str) -> Mapping[str, Any]:
        """GetCallerIdentity signed with the given key, on a client of its own (never cached:
        it carries the key). Raises AwsFailure."""
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError
        from botocore.session import get_session
        from rotator_providers.aws.session import _from_client_error, user_agent

        s = self.settings
        client = get_session().create_client(
            "sts", region_name=s.region or "us-east-1", endpoint_url=s.sts_endpoint_url,
            aws_access_key_id=key_id, aws_secret_access_key=secret,
            config=Config(retries={"total_max_attempts": 1}, connect_timeout=s.connect_timeout,
                          read_timeout=s.read_timeout, user_agent=user_agent()))
        try:
            answer = client.get_caller_identity()
        except ClientError as exc:
            failure = _from_client_error("GetCallerIdentity", exc)
        except BotoCoreError as exc:
            failure = AwsFailure("GetCallerIdentity", type(exc).__name__, str(exc), transient=True, kind="connection")
        else:
            self._context.on_call(self.name, "GetCallerIdentity", "ok")
            return answer
        finally:
            client.close()
        self._context.on_call(self.name, "GetCallerIdentity", failure.code)
        raise failure

    def _parts(self, value: Secret) -> tuple[str, str]:
        try:
            return value.part(ID_PART), value.part(SECRET_PART)
        except KeyError:
            raise IssuerError(f"value …{value.last4} is not an AWS access key (it needs the parts {ID_PART}"
                              f" and {SECRET_PART}); check the target's fields", provider=self.name) from None

    def _call(self, op: str, operation: str, **params: Any) -> dict[str, Any]:
        try:
            return self._aws.call("iam", None, operation, **params)
        except AwsFailure as failure:
            raise self._error(op, failure) from None

    def _error(self, op: str, failure: AwsFailure) -> IssuerError:
        where = f"{failure.during} for IAM user {self.user} ({op})"
        if failure.code == "NoSuchEntity":
            if failure.operation in ("GetUser",):
                return IssuerError(f"{where}: IAM user {self.user} does not exist (issuers.{self.name}.user_name)",
                                   provider=self.name)
            return KeyNotFound(f"{where}: NoSuchEntity", provider=self.name)
        if failure.kind == "credentials":
            return IssuerAuthError(f"{where}: rotator's AWS credentials: {failure.code} {failure.message}".rstrip(),
                                   provider=self.name)
        if failure.code in DENIED or failure.code == "AccessDenied":
            return IssuerPermissionError(f"{where}: access denied ({failure.code}); rotator's identity needs the"
                                         f" permission iam:{failure.operation} on this user"
                                         " (docs/issuers/aws-iam.md)", provider=self.name)
        message = f"{where}: {failure.code}" + (f" ({failure.message})" if failure.message else "")
        if failure.transient:
            return IssuerUnavailable(message + f" after {failure.attempts} tries", provider=self.name)
        return IssuerError(message, provider=self.name)


def _aware(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if isinstance(value, str):
        return _aware_text(value)
    return None


def _aware_text(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return parse_instant(value)
    except ValueError:
        return None
