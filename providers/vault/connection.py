"""The backend's edge: one lazily built hvac client, logged in and re-logged in as needed, every
request reported through ``on_call``, every foreign error translated into rotator's error tree.

hvac (and requests) are imported on the first request, never at import time.

The KV data requests a rotation makes (read a version, write one with ``cas``, set
``custom_metadata``) go out through :meth:`Connection.send`, built here and answered exactly as
hvac's JSON adapter answers (a dict for a 200 with JSON, hvac's exceptions for an error status).
On requests' own adapter and without a proxy they go straight to that adapter's urllib3 pool (the
session's TLS settings applied, the backend's timeout); otherwise through the adapter's ``send``
(a proxy; an adapter a caller mounted). That skips requests' ``Session.request`` machinery
(settings merging, cookie jars, hooks, redirect bookkeeping) and its response building: about
half of hvac's client CPU per KV read (0.25 ms against 0.49 ms with hvac on the same session;
``python benchmarks/run.py --only probes``, ``hvac_env``). A redirect
(a standby node pointing at the active one) or a session carrying cookies takes hvac's own path.
Logins and everything else use hvac.
"""

from __future__ import annotations

import dataclasses
import json as _json
import threading
from typing import Any, Callable, Mapping
from urllib.parse import quote, urlencode, urlsplit

from rotator.errors import BackendError, BackendPermissionError, BackendUnavailable, Conflict, RotatorError
from rotator.interfaces import ProviderContext
from rotator.redact import redact

from rotator_providers.vault import auth as _auth
from rotator_providers.vault.settings import VaultSettings

CAS_MISMATCH = "check-and-set parameter did not match"
NO_ROUTE = "no handler for route"
VERSIONED_PATH = "invalid path for a versioned k/v"
_TRANSIENT = ("VaultDown", "InternalServerError", "BadGateway", "RateLimitExceeded", "VaultNotInitialized",
              "PreconditionFailed", "UnexpectedError")


@dataclasses.dataclass(frozen=True)
class Call:
    """What one request is about: ``op`` for reporting; target, capability and the policy path
    for error messages; ``cas`` for conflicts."""

    op: str
    target: Any | None            # a VaultTarget (its label and mount), None for logins
    capability: str
    path: str
    cas: int | None = None


class Connection:
    def __init__(self, provider: str, settings: VaultSettings, context: ProviderContext,
                 session: Any = None) -> None:
        self.provider = provider
        self._settings = settings
        self._context = context
        self._session = session
        self._auth = _auth.authenticator(settings.auth, provider, f"backends.{provider}.auth",
                                         context.resolve_credential)
        self._lock = threading.RLock()
        self._client: Any = None
        self._login: _auth.Login | None = None
        self._kept_pool: tuple[tuple[Any, ...], Any] | None = None    # (what it was for, urllib3 pool)

    def request(self, call: Call, send: Callable[[Any], Any]) -> Any:
        """``send(client)`` once: log in first if needed; report it; translate its failure. When
        Vault says 403 and lookup-self shows the token itself is gone, log in again, retry once."""
        client = self._ready()
        for attempt in (0, 1):
            used = client.token
            try:
                result = send(client)
            except Exception as exc:
                self._report(call.op, "error")
                if attempt == 0 and is_hvac(exc, "Forbidden"):
                    if client.token != used:             # another thread logged in meanwhile
                        continue
                    if self._token_is_dead(client):
                        self._relogin(client, used)
                        continue
                translated = self.translate(call, exc)
                if translated is None:
                    raise
                raise translated from None
            self._report(call.op, "ok")
            return result
        raise AssertionError("unreachable")

    def send(self, client: Any, method: str, path: str, *, params: Mapping[str, Any] | None = None,
             json: Any = None, deleted_ok: bool = False) -> Any:
        """One Vault request (``path``: ``/v1/...``, already quoted) through the session's
        adapter, answered as hvac's JSON adapter answers: the JSON of a 200, the response of any
        other 2xx, hvac's exception for an error status. ``deleted_ok``: a 404 for a deleted KV v2
        version returns its JSON (hvac's ``raise_on_deleted_version=False``). For ``request``'s
        ``send`` callbacks."""
        import requests

        adapter = client.adapter
        session = adapter.session
        url = adapter.base_uri.rstrip("/") + path
        if params:
            url += "?" + urlencode(params)
        if session.cookies:                       # a load balancer's cookies: requests keeps them
            return self._hvac_send(client, method, path, params, json, deleted_ok)
        headers = dict(session.headers)
        headers["X-Vault-Request"] = "true"
        if adapter.token:
            headers["X-Vault-Token"] = adapter.token
        if adapter.namespace:
            headers["X-Vault-Namespace"] = adapter.namespace
        body = None
        if json is not None:
            body = _json.dumps(json).encode("utf-8")
            headers["Content-Type"] = "application/json"
            headers["Content-Length"] = str(len(body))
        elif method.upper() in ("POST", "PUT", "PATCH"):
            headers["Content-Length"] = "0"
        transport = session.get_adapter(url)
        pool = self._pool(transport, session, url)
        if pool is not None:
            response: Any = self._urlopen(pool, method.upper(), url, body, headers)
        else:                                     # a proxy, or an adapter of the caller's own: its send
            prepared = requests.PreparedRequest()
            prepared.method, prepared.url, prepared.hooks = method.upper(), url, {"response": []}
            prepared._cookies = None              # type: ignore[attr-defined]
            prepared.body, prepared.headers = body, requests.structures.CaseInsensitiveDict(headers)
            response = transport.send(prepared, timeout=self._settings.timeout, verify=session.verify,
                                      cert=session.cert, proxies=session.proxies)
        if response.is_redirect:                  # requests follows redirects: let hvac do it
            response.close()
            return self._hvac_send(client, method, path, params, json, deleted_ok)
        if response.status_code == 200:
            try:
                return response.json()
            except ValueError:
                return response
        if response.ok:
            return response
        error = _vault_error(method, url, response)
        if deleted_ok and is_hvac(error, "InvalidPath") and _deleted_version(error.json):
            return error.json
        raise error

    def _pool(self, transport: Any, session: Any, url: str) -> Any:
        """The urllib3 pool requests' own adapter would send ``url`` on (its TLS settings
        applied), kept while the adapter and settings stay the same; None with a proxy or an
        adapter of the caller's own (it is sent through that adapter)."""
        import requests

        if type(transport) is not requests.adapters.HTTPAdapter or session.proxies \
                or not hasattr(transport, "get_connection_with_tls_context"):
            return None
        split = urlsplit(url)
        key = (id(transport), split.scheme, split.netloc, str(session.verify), str(session.cert))
        kept = self._kept_pool
        if kept is not None and kept[0] == key and kept[1].pool is not None:    # (None: closed)
            return kept[1]
        prepared = requests.PreparedRequest()
        prepared.url = url
        pool = transport.get_connection_with_tls_context(prepared, session.verify, None, session.cert)
        self._kept_pool = (key, pool)
        return pool

    def _urlopen(self, pool: Any, method: str, url: str, body: bytes | None, headers: dict[str, str]) -> _Answer:
        """The request on that pool, without requests' response building (cookie jar, header
        dict, encoding guess): ~0.1 ms of CPU less per request. urllib3's errors are raised as
        the requests errors they stand for (``translate`` knows those)."""
        import requests
        import urllib3

        split = urlsplit(url)
        target = split.path + ("?" + split.query if split.query else "")
        timeout = self._settings.timeout
        try:
            raw = pool.urlopen(method, target, body=body, headers=headers, redirect=False, assert_same_host=False,
                               preload_content=True, decode_content=True, retries=False,
                               timeout=urllib3.Timeout(connect=timeout, read=timeout))
        except urllib3.exceptions.SSLError as exc:
            raise requests.exceptions.SSLError(exc) from None
        except urllib3.exceptions.ConnectTimeoutError as exc:
            raise requests.exceptions.ConnectTimeout(exc) from None
        except urllib3.exceptions.ReadTimeoutError as exc:
            raise requests.exceptions.ReadTimeout(exc) from None
        except urllib3.exceptions.HTTPError as exc:
            raise requests.exceptions.ConnectionError(exc) from None
        return _Answer(raw.status, raw.headers, raw.data)

    def _hvac_send(self, client: Any, method: str, path: str, params: Mapping[str, Any] | None, json: Any,
                   deleted_ok: bool) -> Any:
        """The same request through hvac (requests' whole session: redirects, cookies)."""
        try:
            return client.adapter.request(method, path, params=dict(params) if params else None, json=json)
        except Exception as exc:
            if deleted_ok and is_hvac(exc, "InvalidPath") and _deleted_version(getattr(exc, "json", None)):
                return exc.json  # type: ignore[attr-defined]
            raise

    def close(self) -> None:
        with self._lock:
            client, self._client, self._login = self._client, None, None
            self._kept_pool = None
        if client is not None:
            client.adapter.close()

    # --- client and login ------------------------------------------------------------------------

    def _ready(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._build()
            if self._login is None or self._login.refresh_due(_auth.monotonic()):
                self._log_in(self._client)
            return self._client

    def _build(self) -> Any:
        import hvac

        settings = self._settings
        session = self._session if self._session is not None else self._new_session()
        if self._session is not None:      # hvac prefers an injected session's own TLS settings
            session.verify, session.cert = settings.tls_verify, settings.tls_cert
        # token="" (not None): hvac would otherwise pick up $VAULT_TOKEN or ~/.vault-token by itself.
        return hvac.Client(url=settings.url, token="", namespace=settings.namespace,
                           verify=session.verify, cert=settings.tls_cert,
                           timeout=settings.timeout, session=session)

    def _new_session(self) -> Any:
        """A requests session that reads the environment once, here, not on every request.

        By default requests looks up proxies, ``no_proxy`` and the CA bundle in the environment
        (and ~/.netrc) on each request: about a third of hvac's client CPU per KV read. The same
        settings are resolved now and the per-request lookup is turned off. The connection pool is
        sized to the engine's workers so no thread throws its connection away.
        """
        import os

        import requests
        from requests.adapters import HTTPAdapter
        from requests.utils import get_environ_proxies

        settings = self._settings
        session = requests.Session()
        session.trust_env = False
        session.proxies = get_environ_proxies(settings.url)
        verify = settings.tls_verify
        if verify is True:                 # what requests would have taken from the environment
            verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
        session.verify, session.cert = verify, settings.tls_cert
        pool = max(10, self._context.workers)
        for prefix in ("http://", "https://"):
            session.mount(prefix, HTTPAdapter(pool_connections=pool, pool_maxsize=pool))
        return session

    def _log_in(self, client: Any) -> None:
        path = self._auth.login_path
        if path is None:                   # a token from the environment or a file: no request
            login = self._auth.login(client)
        else:
            try:
                login = self._auth.login(client)
            except RotatorError:
                self._report("login", "error")
                raise
            except Exception as exc:
                self._report("login", "error")
                raise self.translate(Call("login", None, "update", path), exc, login=True) or exc from None
            self._report("login", "ok")
        client.token = login.token.reveal()
        self._login = login

    def _token_is_dead(self, client: Any) -> bool:
        """After a 403: is the token itself gone (expired, revoked)? One lookup-self request."""
        try:
            client.auth.token.lookup_self()
        except Exception as exc:
            self._report("lookup_self", "error")
            return is_hvac(exc, "Forbidden")
        self._report("lookup_self", "ok")
        return False

    def _relogin(self, client: Any, dead: str) -> None:
        with self._lock:
            if client.token != dead:                     # another thread already did
                return
            self._log_in(client)
            if client.token == dead:
                raise BackendPermissionError(
                    f"the Vault token ({self._auth.describe()}) is no longer valid (expired or revoked)"
                    " and its source still holds the same token; renew it", provider=self.provider)

    def _report(self, op: str, outcome: str) -> None:
        self._context.on_call(self.provider, op, outcome)

    # --- errors -------------------------------------------------------------------------------

    def translate(self, call: Call, exc: BaseException, *, login: bool = False) -> RotatorError | None:
        """``exc`` as a rotator error (None: not a Vault or HTTP error; let it propagate)."""
        import requests

        if isinstance(exc, RotatorError):
            return exc
        url, provider = self._settings.url, self.provider
        where = call.target.label if call.target is not None else f"{provider} ({url})"
        inside = f" in namespace '{self._settings.namespace}'" if self._settings.namespace else ""
        detail = _detail(exc)
        if isinstance(exc, requests.exceptions.SSLError):
            return BackendError(f"{where}: TLS verification of {url} failed ({detail}); set ca_cert to the CA"
                                " bundle that signed Vault's certificate", provider=provider)
        if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
            return BackendUnavailable(f"{where}: cannot reach Vault at {url} ({type(exc).__name__})",
                                      provider=provider)
        if not is_hvac(exc, "VaultError"):
            return None
        if login and is_hvac(exc, "InvalidRequest", "Forbidden", "Unauthorized"):
            return BackendPermissionError(f"{self._auth.method} login at {call.path}{inside} refused: {detail}",
                                          provider=provider)
        if is_hvac(exc, "Forbidden", "Unauthorized"):
            return BackendPermissionError(
                f"{where}: permission denied: the Vault token ({self._auth.describe()}) needs the"
                f" '{call.capability}' capability on '{call.path}'{inside} (during {call.op})", provider=provider)
        if is_hvac(exc, "InvalidRequest") and CAS_MISMATCH in detail.lower():
            expected = "absent" if call.cas == 0 else f"at version {call.cas}"
            return Conflict(f"{where}: changed since it was read (check-and-set expected it {expected})",
                            provider=provider)
        if is_hvac(exc, "InvalidPath"):
            mount = call.target.mount if call.target is not None else "?"
            text = raw_text(exc).lower()
            if VERSIONED_PATH in text:
                return BackendError(f"{where}: mount '{mount}' is KV v2; set backends.{provider}.kv_version = 2",
                                    provider=provider)
            if NO_ROUTE in text:
                return BackendError(f"{where}: no secrets engine is mounted at '{mount}'{inside}",
                                    provider=provider)
            return BackendError(f"{where}: {call.path} not found during {call.op}", provider=provider)
        if is_hvac(exc, "VaultDown"):
            return BackendUnavailable(f"{where}: Vault is sealed or in maintenance ({detail})", provider=provider)
        if is_hvac(exc, *_TRANSIENT):
            return BackendUnavailable(f"{where}: Vault answered {type(exc).__name__} during {call.op} ({detail})",
                                      provider=provider)
        return BackendError(f"{where}: {call.op} refused by Vault: {type(exc).__name__} ({detail})",
                            provider=provider)


def is_hvac(exc: BaseException, *names: str) -> bool:
    """isinstance against hvac exception classes, by name."""
    import hvac.exceptions as errors

    return any(isinstance(exc, getattr(errors, name)) for name in names)


def route_problem(exc: BaseException) -> bool:
    """An InvalidPath that is not "no such secret": no mount there, or the wrong KV version."""
    text = raw_text(exc).lower()
    return NO_ROUTE in text or VERSIONED_PATH in text


def raw_text(exc: BaseException) -> str:
    return " ".join(str(e) for e in (getattr(exc, "errors", None) or [])) + " " + str(exc)


def api_url(path: str) -> str:
    """``/v1/<path>`` with each segment percent-encoded (slashes stay), ``//`` made one as hvac does."""
    url = "/v1/" + quote(path.removeprefix("/v1/").encode("utf-8"))
    while "//" in url:
        url = url.replace("//", "/")
    return url


class _Answer:
    """What :meth:`Connection.send` and :func:`_vault_error` read of a response, from urllib3's."""

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status_code, self.headers, self.content = status, headers, body

    @property
    def ok(self) -> bool:
        return self.status_code < 400

    @property
    def is_redirect(self) -> bool:
        return "location" in self.headers and self.status_code in (301, 302, 303, 307, 308)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return _json.loads(self.content)

    def close(self) -> None:
        pass


def _vault_error(method: str, url: str, response: Any) -> Exception:
    """hvac's exception for an error response (as ``RawAdapter._raise_for_error`` builds it)."""
    import hvac.exceptions

    text = errors = body = None
    try:
        text = response.text
    except Exception:  # noqa: BLE001 - as hvac: a body that cannot be decoded is no message
        pass
    if response.headers.get("Content-Type") == "application/json":
        try:
            body = response.json()
        except Exception:  # noqa: BLE001
            pass
        else:
            errors = body.get("errors") if isinstance(body, dict) else None
    return hvac.exceptions.VaultError.from_status(response.status_code, text if errors is None else None,
                                                  errors=errors, method=method, url=url, text=text, json=body)


def _deleted_version(body: Any) -> bool:
    """A 404 answering a read of a deleted KV v2 version (hvac: ``raise_on_deleted_version=False``)."""
    try:
        return body is not None and body["data"]["metadata"]["deletion_time"] != ""
    except (KeyError, TypeError):
        return False


def _detail(exc: BaseException) -> str:
    """Vault's own words, tidied and redacted; a raw JSON body is not repeated."""
    errors = getattr(exc, "errors", None)
    text = "; ".join(str(e) for e in errors) if errors else str(exc)
    text = " ".join(text.replace("\t", " ").replace("*", " ").split())
    if text.startswith("{"):
        text = "unexpected response"
    return redact(text)[:300] or type(exc).__name__
