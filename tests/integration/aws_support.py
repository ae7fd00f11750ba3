"""Helpers the AWS backend tests share (Secrets Manager, its batched reads and its rotations, and
Parameter Store), so each is written once: building backends on the session's moto server, keys
and key references, primary records, what a target or a secret's store holds, counted calls, and
the text of an error's whole chain for "no value leaked" checks.

The moto server itself, its fault proxy and the dummy credentials are fixtures in
:mod:`tests.servers.aws`.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections import Counter
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator, Protocol, TypeVar

from rotator.interfaces import ProviderContext
from rotator.models import KeyRef, Phase, RotationRecord, Secret
from rotator.testing import provider_context
from tests.servers.aws import REGION, MotoServer

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)

#: What ``ProviderContext.on_call`` reported: (provider, operation, outcome) per call.
Calls = list[tuple[str, str, str]]


class _Closing(Protocol):
    def close(self) -> None: ...


B = TypeVar("B", bound=_Closing)


@contextmanager
def backends(backend_class: Callable[[str, dict[str, Any], ProviderContext], B], name: str, moto_url: str,
             calls: Calls) -> Iterator[Callable[..., B]]:
    """``make(url=None, sleep=None, workers=1, **settings)``: a ``backend_class`` called ``name`` on
    the moto server at ``moto_url`` (or ``url``), in us-east-1 with 3 attempts, reporting to
    ``calls``. Every backend made is closed when the block ends, so no test leaks connections."""
    made: list[B] = []

    def make(url: str | None = None, sleep: Any = None, workers: int = 1, **settings: Any) -> B:
        options = {"region": REGION, "endpoint_url": url or moto_url, "max_attempts": 3, **settings}
        backend = backend_class(name, options, provider_context(calls=calls, sleep=sleep, workers=workers))
        made.append(backend)
        return backend

    try:
        yield make
    finally:
        for backend in made:
            backend.close()


# --- keys, references, records -------------------------------------------------------------------

def secret(tag: str, service: str = "aws") -> Secret:
    """A fresh key, unique per call, that says which test made it: ``sk-<service>-<tag>-<uuid>``."""
    return Secret(f"sk-{service}-{tag}-{uuid.uuid4().hex}")


def ref(value: Secret, rotation_id: str = "r-1") -> KeyRef:
    """What a record says about ``value``: an issuer id from its last four, 90 days from T0."""
    return KeyRef.of(value, key_id=f"id-{value.last4}", rotation_id=rotation_id, expires_on=T0 + timedelta(days=90))


def rec(phase: Phase = Phase.IDLE, **fields: Any) -> RotationRecord:
    return RotationRecord(phase=phase, **fields)


def bootstrap(backend: Any, target: Any, value: Secret) -> str:
    """A primary holding ``value`` as its current key, staged and promoted as rotator does; the
    version token after the promotion."""
    version = backend.stage(target, value, rec(Phase.STAGED, pending=ref(value, "r-0")), expect=None)
    return backend.promote(target, rec(Phase.IDLE, current=ref(value, "r-0")), expect=version)


# --- what the stores hold --------------------------------------------------------------------------

def at(moto: MotoServer, label: str, secret_id: str, region: str = REGION) -> str | None:
    """The ``api_key`` of the secret's version labelled ``label`` (as an application reads it);
    None when no version has the label."""
    client = moto.client(region=region)
    try:
        answer = client.get_secret_value(SecretId=secret_id, VersionStage=label)
    except client.exceptions.ResourceNotFoundException:
        return None
    return json.loads(answer["SecretString"]).get("api_key")


def assert_everywhere(world: Any, name: str, current: str, previous: str) -> None:
    """Every target of the secret ``name`` reads ``current`` as its key and ``previous`` as the
    one before it (as in a grace window)."""
    snaps = world.snapshots(name)
    assert {s.current.reveal() for s in snaps.values()} == {current}
    assert {s.previous.reveal() for s in snaps.values()} == {previous}


# --- calls and errors ----------------------------------------------------------------------------

def ops(calls: Calls, provider: str) -> Counter:
    """``provider``'s operations by name since the list was last cleared; clears it."""
    counted = Counter(op for who, op, _ in calls if who == provider)
    calls.clear()
    return counted


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released): an endpoint that refuses."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def chain(error: BaseException | None) -> str:
    """Everything an error and its causes say (str, repr and args), to search for a leaked value."""
    out = []
    while error is not None:
        out += [str(error), repr(error), *map(str, error.args)]
        error = error.__cause__ or error.__context__
    return "\n".join(out)
