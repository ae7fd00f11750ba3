"""Credentials, clients, retries and failures shared by rotator's AWS providers.

* Credentials come from the standard AWS chain (environment, shared config ``profile``, web
  identity / IRSA, container and instance roles), optionally used to assume ``role_arn``
  (refreshed before it expires). Never from rotator's config file.
* One client per (service, region), built on first use under a lock (botocore sessions are not
  thread-safe; clients are). botocore's own retries are switched off, so there is one retry layer:
  this one, which waits through ``ProviderContext.sleep``.
* Each client's connection pool holds ``workers`` connections (at least botocore's 10), so the
  engine's threads never wait for one, nor open and throw away connections beyond the pool.
* Every attempt is reported as ``on_call(provider, operation, "ok" | error code)``.
* A failure leaves as :class:`AwsFailure` (operation, code, status, redacted message, transient);
  each provider turns it into rotator's error tree with the context it has (secret, IAM action).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from rotator import redact
from rotator.retry import Backoff, RetryPolicy

# Error codes that mean "try again later" (the lists botocore's standard retry mode uses, minus
# LimitExceededException, which Secrets Manager uses for quotas, not for throttling).
THROTTLING_CODES = frozenset({
    "Throttling", "ThrottlingException", "ThrottledException", "RequestThrottledException",
    "TooManyRequestsException", "ProvisionedThroughputExceededException", "TransactionInProgressException",
    "RequestLimitExceeded", "BandwidthLimitExceeded", "RequestThrottled", "SlowDown",
    "PriorRequestNotComplete", "EC2ThrottledException",
})
TRANSIENT_CODES = frozenset({
    "RequestTimeout", "RequestTimeoutException", "InternalServiceError", "InternalFailure",
    "InternalError", "ServiceUnavailable", "ServiceUnavailableException", "IDPCommunicationError",
    # Parameter Store: another update of the same parameter is in progress (it allows one at a time)
    "TooManyUpdates",
})
CREDENTIAL_CODES = frozenset({
    "UnrecognizedClientException", "InvalidClientTokenId", "InvalidSignatureException",
    "SignatureDoesNotMatch", "IncompleteSignature", "MissingAuthenticationToken", "ExpiredToken",
    "ExpiredTokenException", "RequestExpired", "AuthFailure",
})
MESSAGE_LIMIT = 300

# botocore sessions cost ~50 ms to build and ~60 ms more to parse a service model; every Runtime
# (each CronJob run, each test) builds new providers. Sessions that only read the standard chain
# are shared per profile; creating clients from them is serialised (sessions are not thread-safe).
_shared_lock = threading.RLock()
_shared_sessions: dict[str | None, Any] = {}
_loader: Any = None


def _new_session(profile: str | None) -> Any:
    import botocore.session

    global _loader
    session = botocore.session.Session(profile=profile)
    if _loader is None:
        _loader = session.get_component("data_loader")
    session.register_component("data_loader", _loader)
    return session


def _shared_session(profile: str | None) -> Any:
    session = _shared_sessions.get(profile)
    if session is None:
        session = _shared_sessions[profile] = _new_session(profile)
    return session


def user_agent() -> str:
    """``rotator/<version> botocore/<version> Python/<version>``: what CloudTrail shows for rotator's
    calls. A fixed string also spares botocore rebuilding its default one (platform, features,
    config) twice per request; ``boto_user_agent`` in benchmarks/probes.py measures the saving."""
    import platform

    import botocore

    from rotator import __version__

    return f"rotator/{__version__} botocore/{botocore.__version__} Python/{platform.python_version()}"


class AwsFailure(Exception):
    """One failed AWS call, after the retries. ``kind``: service | connection | credentials | client."""

    def __init__(self, operation: str, code: str, message: str = "", *, status: int | None = None,
                 transient: bool = False, kind: str = "service", during: str | None = None) -> None:
        self.operation = operation
        self.during = during or operation    # the call that failed: AssumeRole while refreshing credentials
        self.code = code
        self.message = redact.redact(message)[:MESSAGE_LIMIT]
        self.status = status
        self.transient = transient
        self.kind = kind
        self.attempts = 1
        super().__init__(f"{operation}: {code}" + (f" ({self.message})" if self.message else ""))


@dataclass(frozen=True)
class AwsOptions:
    """How to reach AWS. ``endpoints`` maps a service name to an endpoint URL (VPC endpoint, moto).
    ``workers``: how many threads may call at once (``ProviderContext.workers``); sizes the pools."""

    region: str | None = None
    profile: str | None = None
    role_arn: str | None = None
    role_session_name: str = "rotator"
    external_id: str | None = None
    endpoints: Mapping[str, str] = field(default_factory=dict)
    connect_timeout: float = 5.0
    read_timeout: float = 15.0
    max_attempts: int = 5
    workers: int = 1


class AwsClients:
    """Lazily built clients for one provider instance, and :meth:`call` with bounded retries."""

    def __init__(self, provider: str, options: AwsOptions, *, sleep: Callable[[float], None],
                 on_call: Callable[[str, str, str], None]) -> None:
        self.provider = provider
        self.options = options
        self._sleep = sleep
        self._on_call = on_call
        self._policy = RetryPolicy(attempts=options.max_attempts, base=0.5, cap=20.0)
        self._lock = threading.Lock()
        self._session: Any = None
        self._clients: dict[tuple[str, str | None], Any] = {}

    def call(self, service: str, region: str | None, operation: str, *, once: bool = False,
             **params: Any) -> dict[str, Any]:
        """``operation`` (e.g. "GetSecretValue") with retries on throttling, 5xx and connection
        errors. Raises :class:`AwsFailure` (outside any ``except``: nothing foreign is chained).

        ``once``: a single attempt, for a call that is not idempotent (IAM ``CreateAccessKey``:
        a retry after a lost reply would mint a second key); the caller decides what comes next."""
        backoff = Backoff(self._policy, self._sleep)
        while True:
            result, failure = self._attempt(service, region, operation, params)
            if failure is None:
                return result
            failure.attempts = backoff.tries + 1
            if once or not failure.transient:
                raise failure
            backoff.wait(failure)

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
            self._session = None
        for client in clients:
            client.close()

    # --- internals -------------------------------------------------------------------------

    def _attempt(self, service: str, region: str | None, operation: str,
                 params: Mapping[str, Any]) -> tuple[Any, AwsFailure | None]:
        from botocore import xform_name
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectionError as BotoConnectionError,
            CredentialRetrievalError,
            HTTPClientError,
            NoCredentialsError,
            NoRegionError,
            PartialCredentialsError,
            ProfileNotFound,
        )

        try:
            client = self._client(service, region)
            result = getattr(client, xform_name(operation))(**params)
        except ClientError as exc:
            failure = _from_client_error(operation, exc)
        except (BotoConnectionError, HTTPClientError) as exc:
            failure = AwsFailure(operation, type(exc).__name__, str(exc), transient=True, kind="connection")
        except (NoCredentialsError, PartialCredentialsError, ProfileNotFound, CredentialRetrievalError,
                NoRegionError) as exc:
            failure = AwsFailure(operation, type(exc).__name__, str(exc), kind="credentials")
        except BotoCoreError as exc:
            failure = AwsFailure(operation, type(exc).__name__, str(exc), kind="client")
        else:
            self._on_call(self.provider, operation, "ok")
            return result, None
        self._on_call(self.provider, operation, failure.code)
        return None, failure

    def _client(self, service: str, region: str | None) -> Any:
        key = (service, region)
        with self._lock:
            client = self._clients.get(key)
        if client is not None:
            return client
        with _shared_lock, self._lock:
            client = self._clients.get(key)
            if client is None:
                client = self._session_locked().create_client(
                    service, region_name=region, endpoint_url=self.options.endpoints.get(service),
                    config=self._config(region))
                self._clients[key] = client
            return client

    def _config(self, region: str | None) -> Any:
        from botocore.config import Config

        return Config(region_name=region, retries={"total_max_attempts": 1, "mode": "standard"},
                      connect_timeout=self.options.connect_timeout, read_timeout=self.options.read_timeout,
                      max_pool_connections=max(10, self.options.workers), user_agent=user_agent())

    def _session_locked(self) -> Any:
        if self._session is None:
            if self.options.role_arn:     # its own session: the role's credentials are this provider's
                self._session = _new_session(self.options.profile)
                source = _shared_session(self.options.profile)
                self._session.register_component("credential_provider", self._assume_role(source))
            else:
                self._session = _shared_session(self.options.profile)
        return self._session

    def _assume_role(self, source: Any) -> Any:
        """A credential resolver whose only provider assumes ``role_arn`` with ``source``'s
        credentials (the standard chain), refreshing the role's credentials before they expire."""
        from botocore.credentials import (
            AssumeRoleCredentialFetcher,
            CredentialProvider,
            CredentialResolver,
            DeferredRefreshableCredentials,
        )
        from botocore.exceptions import NoCredentialsError

        options, report, provider, config = self.options, self._on_call, self.provider, self._config

        def sts_client(service: str, **kwargs: Any) -> Any:
            with _shared_lock:              # ``source`` is shared; refreshes run in any thread
                return source.create_client(service, region_name=options.region,
                                            endpoint_url=options.endpoints.get("sts"),
                                            config=config(options.region), **kwargs)

        class AssumeRole(CredentialProvider):
            METHOD = "assume-role"
            CANONICAL_NAME = "rotator-assume-role"

            def load(self) -> Any:
                credentials = source.get_credentials()
                if credentials is None:
                    raise NoCredentialsError()
                extra = {"RoleSessionName": options.role_session_name}
                if options.external_id:
                    extra["ExternalId"] = options.external_id
                fetcher = AssumeRoleCredentialFetcher(sts_client, credentials, options.role_arn, extra_args=extra)

                def refresh() -> Any:
                    try:
                        fetched = fetcher.fetch_credentials()
                    except Exception as exc:
                        code = getattr(exc, "response", {}).get("Error", {}).get("Code") or type(exc).__name__
                        report(provider, "AssumeRole", code)
                        raise
                    report(provider, "AssumeRole", "ok")
                    return fetched

                return DeferredRefreshableCredentials(method=self.METHOD, refresh_using=refresh)

        return CredentialResolver(providers=[AssumeRole()])


def _from_client_error(operation: str, exc: Any) -> AwsFailure:
    response = getattr(exc, "response", None) or {}
    error = response.get("Error") or {}
    code = str(error.get("Code") or "Unknown")
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    failed = getattr(exc, "operation_name", None) or operation
    transient = code in THROTTLING_CODES or code in TRANSIENT_CODES or (
        isinstance(status, int) and status >= 500 and status != 501)
    kind = "credentials" if failed == "AssumeRole" or code in CREDENTIAL_CODES else "service"
    return AwsFailure(operation, code, str(error.get("Message") or ""), status=status,
                      transient=transient, kind=kind, during=failed)
