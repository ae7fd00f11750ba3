"""One rooted error tree.

Providers translate foreign errors (HTTP statuses, botocore ``ClientError``, ``hvac.exceptions``)
into these classes at their edge. ``transient`` tells the engine whether trying again later may
succeed; it never decides on its own to give up on work that is safe to finish later.

No message in this tree may carry a key value: build messages from names, paths, statuses and
fingerprints only.
"""

from __future__ import annotations


class RotatorError(Exception):
    """Root of every error rotator raises on purpose."""

    transient: bool = False

    def __init__(self, message: str, *, transient: bool | None = None) -> None:
        super().__init__(message)
        if transient is not None:
            self.transient = transient


class ConfigError(RotatorError):
    """The configuration is unusable. The message names the file, the field path and the problem."""


class UsageError(RotatorError):
    """A command line that cannot be carried out as given (a bad --until, an unknown secret)."""


class ProviderError(RotatorError):
    """Raised by an issuer or a backend; ``provider`` names the configured instance."""

    def __init__(self, message: str, *, provider: str = "", transient: bool | None = None) -> None:
        super().__init__(f"{provider}: {message}" if provider else message, transient=transient)
        self.provider = provider


# --- issuers ---------------------------------------------------------------------------------

class IssuerError(ProviderError):
    """Something went wrong talking to an issuer."""


class IssuerUnavailable(IssuerError):
    """5xx, timeout or connection failure after the bounded retries."""

    transient = True


class RateLimited(IssuerUnavailable):
    """429 storms outlasted the retry budget. Safe to resume later."""

    def __init__(self, message: str, *, provider: str = "", retry_after: float | None = None) -> None:
        super().__init__(message, provider=provider)
        self.retry_after = retry_after


class IssuerAuthError(IssuerError):
    """The rotator's own credential for the issuer was refused (401 after re-authenticating)."""


class IssuerPermissionError(IssuerError):
    """403: the issuer user's role cannot do this. Not retryable."""


class KeyNotFound(IssuerError):
    """The issuer answered 404 for the key. For a revoke this is a claim, not proof: the engine
    confirms with a fresh listing that the key is gone before it counts it as revoked."""


class UntrustedAnswer(IssuerError):
    """An answer that is not the documented shape (an HTML page from a proxy, a 200 carrying an
    error, a missing or mistyped field, a listing that contradicts itself or never ends). Nothing
    is decided on it; the next run asks again."""

    transient = True


class UnusableKey(IssuerError):
    """The issuer minted a key rotator must not deploy (a value that cannot travel in an HTTP
    header, or absurdly long). ``name`` is the name it was issued under: the engine finds it in a
    listing by that name (or by ``key_ids``, when the issuer knows them) and revokes it."""

    def __init__(self, message: str, *, provider: str = "", name: str = "", key_ids: tuple[str, ...] = ()) -> None:
        super().__init__(message, provider=provider)
        self.name = name
        self.key_ids = key_ids      # the minted keys' ids, when the issuer knows them (keys without names)


# --- backends --------------------------------------------------------------------------------

class BackendError(ProviderError):
    """Something went wrong reading or writing a backend."""


class BackendUnavailable(BackendError):
    """Connection failure, 5xx, throttling, sealed Vault: try again later."""

    transient = True


class BackendPermissionError(BackendError):
    """The backend refused the rotator's identity; the message names the path and the permission."""


class SecretMissing(BackendError):
    """The target does not exist and may not be created."""


class CorruptPayload(BackendError):
    """The stored payload is not what rotator wrote (not JSON, wrong field, newer format)."""


class Conflict(BackendError):
    """A compare-and-swap lost: someone else wrote the target since it was read."""

    transient = True


class LeaseLost(Conflict):
    """Renewing this runner's lease failed: another runner has moved the record. The run stops
    before any further effect on that secret, re-reads the record and decides again."""


# --- engine ----------------------------------------------------------------------------------

class RotationError(RotatorError):
    """A rotation cannot proceed for a reason the engine found (not a provider failure)."""


class AdoptionError(RotationError):
    """The key found in the backend cannot be matched to the issuer user's keys."""


class VerificationFailed(RotationError):
    """The new key did not read back from a backend, or did not authenticate."""

    transient = True
