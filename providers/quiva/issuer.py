"""The QuivaWorks issuer: maps the :class:`rotator.interfaces.Issuer` Protocol onto the account API.

One instance is one QuivaWorks user (the owner of its admin key); every key it issues belongs to
that user and carries that user's permissions. See docs/issuers/quivaworks.md.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Iterable, Literal, Mapping

from pydantic import Field, field_validator

from rotator import credentials
from rotator.errors import IssuerError, IssuerPermissionError
from rotator.interfaces import ProviderContext
from rotator.models import IssuedKey, IssuerCapabilities, KeyInfo, Secret
from rotator.retry import RetryPolicy, Throttle
from rotator.timeutil import parse_duration, parse_instant
from rotator.validation import StrictModel, parse

from providers.quiva.client import AUTH_PATH, QuivaClient

if TYPE_CHECKING:
    import httpx

log = logging.getLogger(__name__)

KEY_PATH = "/accounts/api-key"
LIST_PATH = "/accounts/api-keys"
AGENTS_PATH = "/v1/agents"
#: Clock skew tolerated between the rotator and QuivaWorks when matching ``created_on``.
MATCH_SKEW = timedelta(seconds=10)
_MAX_PAGES = 1000


class QuivaSettings(StrictModel):
    """The ``[issuers.<name>]`` section (``type`` removed by the core)."""

    base_url: str = "https://api.quiva.ai"
    admin_key: Any = Field(default_factory=lambda: {"env": "QUIVA_API_KEY"})
    timeout: timedelta = timedelta(seconds=10)
    retries: int = Field(default=6, ge=1, le=100)
    max_retry_wait: timedelta = timedelta(minutes=5)
    verify_with: Literal["auth", "agents"] = "auth"
    list_email: str | None = None
    rate_limit: float | None = Field(default=None, gt=0)   # requests per second, all workers together
    rate_burst: int = Field(default=5, ge=1)

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("must start with https:// (or http:// for a local emulator)")
        return value.rstrip("/")

    @field_validator("timeout", "max_retry_wait", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> timedelta:
        return parse_duration(value)

    @field_validator("timeout")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value.total_seconds() <= 0:
            raise ValueError("must be longer than 0s")
        return value


class QuivaIssuer:
    """Issues, lists, verifies and revokes QuivaWorks API keys of one user.

    ``transport`` (keyword only) replaces httpx's network transport, for tests.
    """

    capabilities = IssuerCapabilities(reports_last_used=False, revoke_by_value=True)

    def __init__(self, name: str, settings: Mapping[str, Any], context: ProviderContext, *,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.name = name
        self.settings = parse(QuivaSettings, settings, f"issuers.{name}")
        self._key_where = f"issuers.{name}.admin_key"
        self._admin_ref = credentials.check_reference(self.settings.admin_key, self._key_where)
        self.credential = self._admin_ref
        self._context = context
        self._owner: str | None = None
        self.client = QuivaClient(
            provider=name,
            base_url=self.settings.base_url,
            admin_key=self._resolve_admin_key,
            timeout=self.settings.timeout.total_seconds(),
            policy=RetryPolicy(attempts=self.settings.retries,
                               max_server_wait=self.settings.max_retry_wait.total_seconds()),
            sleep=context.sleep,
            clock=context.clock,
            on_call=context.on_call,
            transport=transport,
            throttle=Throttle(self.settings.rate_limit, self.settings.rate_burst,
                              lambda: context.clock.now().timestamp(), context.sleep),
        )

    @property
    def owner(self) -> str | None:
        """The QuivaWorks account (email) seen in a listing; None before the first listing."""
        return self._owner

    def issue(self, name: str) -> IssuedKey:
        """POST /accounts/api-key. Not idempotent: a retry after a lost response (5xx after the
        effect, timeout) mints a second key with the same name; the engine sweeps it as a twin.
        ``maybe_twinned`` says whether such a retry happened.
        """
        body, doubt = self.client.call_with_doubt("issue", "POST", KEY_PATH, json={"key_name": name})
        data = _data(body)
        if not isinstance(data, Mapping) or not isinstance(data.get("key"), str) or not data["key"]:
            raise IssuerError("issue: the response carried no key value", provider=self.name)
        value = Secret(data["key"])
        expires_on = _instant(data.get("expires_on"))
        if expires_on is None:
            raise IssuerError(f"issue: the response for key …{value.last4} carried no valid"
                              " expires_on", provider=self.name)
        return IssuedKey(value=value, name=str(data.get("name") or name),
                         created_on=_instant(data.get("created_on")) or self._context.clock.now(),
                         expires_on=expires_on, key_id=None, maybe_twinned=doubt)

    def list_keys(self) -> list[KeyInfo]:
        """GET /accounts/api-keys (``email=`` if configured), following a next/cursor if present."""
        params: dict[str, str] = {}
        if self.settings.list_email:
            params["email"] = self.settings.list_email
        path, keys, seen = LIST_PATH, [], set()
        for _ in range(_MAX_PAGES):
            body = self.client.call("list", "GET", path, params=params or None)
            data = _data(body)
            if not isinstance(data, list):
                raise IssuerError(f"list: GET {LIST_PATH} returned no array", provider=self.name)
            keys.extend(self._key_info(entry) for entry in data if isinstance(entry, Mapping))
            cursor = _next_page(body)
            if cursor is None or cursor in seen:
                break
            seen.add(cursor)
            if cursor.startswith(("/", "http://", "https://")):
                path, params = _page_link(cursor, self.settings.base_url, self.name)
            else:
                params = {**params, "cursor": cursor}
        return keys

    def find(self, issued: IssuedKey, listing: Iterable[KeyInfo] | None = None) -> KeyInfo | None:
        """The listing entry of a key just issued (see :func:`match_issued`); lists if needed."""
        keys = self.list_keys() if listing is None else listing
        return match_issued(keys, issued.name, issued.value.last4, issued.created_on)

    def verify(self, value: Secret) -> bool:
        """Authenticate with ``value`` (``verify_with``); leaves the admin session alone."""
        if self.settings.verify_with == "agents":
            method, path, request = "GET", AGENTS_PATH, {
                "headers": {"Authorization": f"Bearer {value.reveal()}"}}
        else:
            method, path, request = "POST", AUTH_PATH, {"json": {"api_key": value.reveal()}}
        answer = self.client.send("verify", method, path, **request)
        if answer.status == 401:
            return False
        if answer.status == 403 and self.settings.verify_with == "agents":
            raise IssuerPermissionError(
                f"verify: {method} {path} returned 403 for key …{value.last4}: it authenticates"
                " but its user may not call this; use verify_with = \"auth\"", provider=self.name)
        self.client.check("verify", method, path, answer)
        return True

    def revoke(self, *, key_id: str | None = None, value: Secret | None = None) -> None:
        """DELETE /accounts/api-key by ``id=`` (preferred) or ``key=``; 404 raises KeyNotFound."""
        if key_id is not None:
            params = {"id": str(key_id)}
        elif value is not None:
            params = {"key": value.reveal()}
        else:
            raise ValueError("revoke needs key_id or value")
        self.client.call("revoke", "DELETE", KEY_PATH, params=params)

    def credential_changed(self) -> None:
        self.client.drop_session()

    def close(self) -> None:
        self.client.close()

    # ---- helpers ---------------------------------------------------------------------------

    def _resolve_admin_key(self) -> Secret:
        return self._context.resolve_credential(self._admin_ref, self._key_where)

    def _key_info(self, entry: Mapping[str, Any]) -> KeyInfo:
        account = entry.get("account")
        if account:
            self._owner = str(account)
        return KeyInfo(
            key_id=str(entry.get("id", "")),
            name=str(entry.get("name", "")),
            last4=str(entry.get("last_4_characters", "")),
            created_on=_instant(entry.get("created_on")),
            expires_on=_instant(entry.get("expires_on")),
            account=str(account) if account else None,
            last_used_on=_instant(entry.get("last_used_on")),
        )


def match_issued(listing: Iterable[KeyInfo], name: str, last4: str,
                 created_on: datetime | None, skew: timedelta = MATCH_SKEW) -> KeyInfo | None:
    """The one listing entry with this name and last 4 characters, or None.

    Several candidates are told apart by ``created_on`` (within ``skew``); if that still leaves
    zero or several, the answer is None: ambiguous entries are never guessed.
    """
    candidates = [k for k in listing if k.name == name and k.last4 == last4]
    if len(candidates) > 1 and created_on is not None:
        candidates = [k for k in candidates if k.created_on is not None
                      and abs(k.created_on - created_on) <= skew]
    return candidates[0] if len(candidates) == 1 else None


def _data(body: Any) -> Any:
    return body.get("data") if isinstance(body, Mapping) else None


def _instant(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    try:
        return parse_instant(value)
    except (TypeError, ValueError, AttributeError):
        log.debug("unparseable instant in a QuivaWorks response ignored")
        return None


def _next_page(body: Any) -> str | None:
    if not isinstance(body, Mapping):
        return None
    for field in ("next", "next_cursor", "cursor"):
        value = body.get(field)
        if value not in (None, "", False):
            return str(value)
    return None


def _page_link(link: str, base_url: str, provider: str) -> tuple[str, dict[str, str]]:
    """A next-page link as (path relative to ``base_url``, query); another origin is refused."""
    import httpx

    url, base = httpx.URL(link), httpx.URL(base_url)
    path = url.path
    if url.is_absolute_url:
        if (url.scheme, url.host, url.port) != (base.scheme, base.host, base.port):
            raise IssuerError("list: the next-page link points to another host", provider=provider)
        prefix = base.path.rstrip("/")
        if prefix and path.startswith(prefix + "/"):
            path = path[len(prefix):]
    return path, dict(url.params)
