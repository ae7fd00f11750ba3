"""The QuivaWorks issuer: maps the :class:`rotator.interfaces.Issuer` Protocol onto the account API.

One instance is one QuivaWorks user (the owner of its admin key); every key it issues belongs to
that user and carries that user's permissions. Every answer is checked by
:mod:`providers.quiva.answers` before it is returned. See docs/issuers/quivaworks.md.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any, Iterable, Literal, Mapping
from urllib.parse import parse_qsl, quote, urlsplit

from pydantic import Field, field_validator, model_validator

from rotator import credentials
from rotator.errors import IssuerError, IssuerPermissionError, UntrustedAnswer
from rotator.interfaces import Finding, ProviderContext
from rotator.models import IssuedKey, IssuerCapabilities, KeyInfo, Listing, Secret
from rotator.retry import RetryPolicy, Throttle
from rotator.timeutil import parse_duration, shortest_months
from rotator.validation import StrictModel, insecure_http_problem, insecure_http_warning, parse

from rotator_providers.quiva import answers, wire
from rotator_providers.quiva.client import AUTH_PATH, QuivaClient

log = logging.getLogger(__name__)

KEY_PATH = "/accounts/api-key"
LIST_PATH = "/accounts/api-keys"
AGENTS_PATH = "/v1/agents"
#: Clock skew tolerated between the rotator and QuivaWorks when matching ``created_on``.
MATCH_SKEW = timedelta(seconds=10)


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
    key_lifetime_months: int = Field(default=3, ge=1, le=120)   # the documented key lifetime
    max_pages: int = Field(default=100, ge=1, le=100_000)       # a longer listing is not trusted
    insecure_http: bool = False    # allow plain http:// to a host that is not loopback (warns at every start)

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("must start with https:// (or http:// for a local emulator)")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _no_clear_text(self) -> QuivaSettings:
        problem = insecure_http_problem(self.base_url, "base_url", "the admin key and every new key")
        if problem and not self.insecure_http:
            raise ValueError(problem)
        return self

    def warnings(self, where: str) -> list[str]:
        """What this section allows but should not (plain http with ``insecure_http``)."""
        if not self.insecure_http:
            return []
        warning = insecure_http_warning(self.base_url, where, "the admin key, with every new key,")
        return [warning] if warning else []

    @property
    def key_lifetime(self) -> timedelta:
        """The shortest time ``key_lifetime_months`` can be (3 months: 89 days)."""
        return shortest_months(self.key_lifetime_months)

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

    ``wire`` (keyword only) replaces the network (:class:`~.wire.Wire`), for tests.
    """

    capabilities = IssuerCapabilities(reports_last_used=False, revoke_by_value=True)

    def __init__(self, name: str, settings: Mapping[str, Any], context: ProviderContext, *,
                 wire: wire.Wire | None = None) -> None:
        self.name = name
        self.settings = parse(QuivaSettings, settings, f"issuers.{name}")
        self._key_where = f"issuers.{name}.admin_key"
        self._admin_ref = credentials.check_reference(self.settings.admin_key, self._key_where)
        self.credential = self._admin_ref
        self._context = context
        self._owner: str | None = None
        self._checked = answers.Checked()     # entries of earlier listings, not checked again
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
            wire=wire,
            throttle=Throttle(self.settings.rate_limit, self.settings.rate_burst,
                              lambda: context.clock.now().timestamp(), context.sleep),
        )

    @property
    def key_lifetime(self) -> timedelta | None:
        """How long a key lives at the shortest (``key_lifetime_months``, counted as the shortest
        run of calendar months): the core refuses a ``lead_time`` that does not fit in it."""
        return self.settings.key_lifetime

    @property
    def references(self) -> dict[str, Any]:
        """The credential references of this section, by field path (the default included)."""
        return {self._key_where: self._admin_ref}

    @property
    def warnings(self) -> list[str]:
        """Allowed but unsafe settings, logged at start and shown by ``rotator check``."""
        return self.settings.warnings(f"issuers.{self.name}")

    @property
    def in_flight_bound(self) -> timedelta:
        """How long after it was sent an issue request may still mint a key: every attempt's
        deadline (``timeout`` x ``retries``), plus a minute of margin for the issuer's own lag.
        The sweep leaves younger keys alone, so it never races an issue still in flight."""
        return self.settings.timeout * self.settings.retries + timedelta(minutes=1)

    @property
    def owner(self) -> str | None:
        """The QuivaWorks account (email) seen in a listing; None before the first listing."""
        return self._owner

    def issue(self, name: str) -> IssuedKey:
        """POST /accounts/api-key. Not idempotent: a retry after a lost response (5xx after the
        effect, timeout) mints a second key with the same name; the engine sweeps it as a twin.
        ``maybe_twinned`` says whether such a retry happened. The answer is checked by
        :func:`answers.issued` (UnusableKey for a value that cannot be deployed).
        """
        answer = self.client.call("issue", "POST", KEY_PATH, json={"key_name": name})
        issued = answers.issued(answer.body, requested=name, now=self._context.clock.now(),
                                lifetime_months=self.settings.key_lifetime_months,
                                where=answer.where("issue", "POST", KEY_PATH), provider=self.name)
        key = IssuedKey(value=Secret(issued.value), name=issued.name, created_on=issued.created_on,
                        expires_on=issued.expires_on, key_id=None, maybe_twinned=answer.doubt,
                        note=issued.note)
        if key.note:
            log.info("%s: issued key …%s named %r: %s", self.name, key.value.last4, key.name, key.note)
        return key

    def list_keys(self) -> Listing:
        """GET /accounts/api-keys (``email=`` if configured), following a next/cursor if present.

        Each page is checked by :func:`answers.listing_page`; a cursor that repeats, or more than
        ``max_pages`` pages, raises UntrustedAnswer instead of passing for a complete listing.
        """
        params: dict[str, str] = {}
        if self.settings.list_email:
            params["email"] = self.settings.list_email
        path, pages, seen = LIST_PATH, [], set()
        for number in range(1, self.settings.max_pages + 1):
            answer = self.client.call("list", "GET", path, params=params or None)
            page = answers.listing_page(
                answer.body, now=self._context.clock.now(), page=number,
                lifetime_months=self.settings.key_lifetime_months, provider=self.name,
                where=answer.where("list", "GET", LIST_PATH) + (f" (page {number})" if number > 1 else ""),
                checked=self._checked)
            pages.append(page)
            if page.next is None:
                self._checked.listing_done()
                return self._listed(answers.listing(pages))
            if page.next in seen:
                raise UntrustedAnswer(f"list: GET {LIST_PATH}: the listing's next cursor repeats"
                                      f" (page {number}); the listing is not trusted", provider=self.name)
            seen.add(page.next)
            path, params = self._next_request(page.next, path, params)
        raise UntrustedAnswer(f"list: GET {LIST_PATH}: the listing did not end after"
                              f" {self.settings.max_pages} pages; the listing is not trusted",
                              provider=self.name)

    def find(self, issued: IssuedKey, listing: Iterable[KeyInfo] | None = None) -> KeyInfo | None:
        """The listing entry of a key just issued (see :func:`match_issued`); lists if needed."""
        keys = self.list_keys() if listing is None else listing
        return match_issued(keys, issued.name, issued.value.last4, issued.created_on)

    def verify(self, value: Secret) -> bool:
        """Authenticate with ``value`` (``verify_with``); leaves the admin session alone.

        True only on the documented success answer (checked by :mod:`answers`), False on a 401;
        any other answer raises (UntrustedAnswer, transient, for one that is not documented).
        """
        if self.settings.verify_with == "agents":
            if not answers.header_safe(value.reveal()):
                raise IssuerError(f"verify: key …{value.last4} has characters an Authorization header"
                                  " cannot carry; it cannot be verified as a bearer", provider=self.name)
            method, path, request = "GET", AGENTS_PATH, {
                "headers": {"Authorization": f"Bearer {value.reveal()}"}}
        else:
            method, path, request = "POST", AUTH_PATH, {"json": {"api_key": value.reveal()}}
        answer = self.client.send("verify", method, path, **request)
        where = answer.where("verify", method, path)
        if answer.status == 401:
            return False
        if answer.status == 403:
            if self.settings.verify_with == "agents":
                raise IssuerPermissionError(
                    f"{where} for key …{value.last4}: it authenticates but its user may not call"
                    " this; use verify_with = \"auth\"", provider=self.name)
            self.client.check("verify", method, path, answer)
        if not 200 <= answer.status < 300:
            raise UntrustedAnswer(f"{where}{_paren(answer.error)}: neither the documented success"
                                  " nor a refusal; the key is not taken as verified", provider=self.name)
        if self.settings.verify_with == "agents":
            return answers.verified_by_agents(answer.body, where=where, provider=self.name)
        return answers.verified_by_auth(answer.body, where=where, provider=self.name)

    def revoke(self, *, key_id: str | None = None, value: Secret | None = None) -> None:
        """DELETE /accounts/api-key by ``id=`` (preferred) or ``key=``; 404 raises KeyNotFound."""
        if key_id is not None:
            params = {"id": str(key_id)}
        elif value is not None:
            params = {"key": value.reveal()}
        else:
            raise ValueError("revoke needs key_id or value")
        self.client.call("revoke", "DELETE", KEY_PATH, params=params)   # body not trusted: unread

    def check_access(self) -> list[Finding]:
        """For ``rotator check`` (:class:`rotator.interfaces.IssuerAccessCheck`): sign in with the
        admin key (``POST /accounts/auth-with-api-key``, as every run does; nothing is issued or
        revoked, and the session is not kept) and name the key lifetime rotator plans with."""
        lifetime = Finding("key lifetime", "ok", f"{self.settings.key_lifetime_months} months"
                                                 " (key_lifetime_months)")
        value = self._resolve_admin_key()            # ConfigError: the reference does not resolve
        try:
            answer = self.client.send("check.auth", "POST", AUTH_PATH, json={"api_key": value.reveal()})
        except IssuerError as exc:
            return [Finding("sign-in", "fail", f"cannot reach {self.settings.base_url}: {exc}"), lifetime]
        where = answer.where("sign-in", "POST", AUTH_PATH) + _paren(answer.error)
        if answer.status == 401:
            return [Finding("sign-in", "fail", f"{where}: the admin key …{value.last4} ({self._key_where}) was"
                                               " refused: wrong, deleted or expired; give a valid key"), lifetime]
        if not 200 <= answer.status < 300:
            return [Finding("sign-in", "fail", f"{where}: not the documented success"), lifetime]
        try:
            answers.session(answer.body, where=where, provider=self.name)
        except UntrustedAnswer as exc:
            return [Finding("sign-in", "fail", str(exc)), lifetime]
        return [Finding("sign-in", "ok", f"signed in at {self.settings.base_url} with the admin key"
                                         f" …{value.last4}"), lifetime]

    def credential_changed(self) -> None:
        self.client.drop_session()

    def close(self) -> None:
        self.client.close()

    # ---- helpers ---------------------------------------------------------------------------

    def _resolve_admin_key(self) -> Secret:
        return self._context.resolve_credential(self._admin_ref, self._key_where)

    def _listed(self, listing: Listing) -> Listing:
        """Note the owner (the account the entries name) and log what the checks found."""
        for key in listing:
            if key.account:
                self._owner = key.account
        if listing.problems:
            log.warning("%s: the key listing has %d problem(s): %s", self.name,
                        len(listing.problems), "; ".join(listing.problems[:5]))
        return listing

    def _next_request(self, cursor: str, path: str,
                      params: dict[str, str]) -> tuple[str, dict[str, str]]:
        """Path and query of the next page: a link (same origin only) or ``cursor=``."""
        if cursor.startswith(("/", "http://", "https://")):
            return _page_link(cursor, self.settings.base_url, self.name)
        return path, {**params, "cursor": cursor}


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


def _paren(text: str) -> str:
    return f" ({text})" if text else ""


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _page_link(link: str, base_url: str, provider: str) -> tuple[str, dict[str, str]]:
    """A next-page link as (path relative to ``base_url``, query); another origin is refused."""
    try:
        url, base = urlsplit(link), urlsplit(base_url)
        origin = (url.scheme, url.hostname, url.port or _DEFAULT_PORTS.get(url.scheme))
        home = (base.scheme, base.hostname, base.port or _DEFAULT_PORTS.get(base.scheme))
    except ValueError:
        raise UntrustedAnswer("list: the next-page link is not a URL; the listing is not trusted",
                              provider=provider) from None
    path = quote(url.path, safe="/%!$&'()*+,;=:@-._~")
    if url.scheme or url.netloc:
        if origin != home:
            raise UntrustedAnswer("list: the next-page link points to another host; the listing"
                                  " is not trusted", provider=provider)
        prefix = base.path.rstrip("/")
        if prefix and path.startswith(prefix + "/"):
            path = path[len(prefix):]
    return path, dict(parse_qsl(url.query, keep_blank_values=True))
