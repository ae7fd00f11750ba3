"""Fault injection for rotations of AWS IAM access keys (the ``aws_iam`` issuer), on the signing
moto server of tests/servers/aws_signing.py and the :class:`~tests.integration.iam_support.IamWorld`.

:class:`IamEffects` instruments a runtime: its *effects* are the backends' state-changing methods
(``write_record``, ``stage``, ``promote``, ``discard_pending``, ``deploy``) and every IAM call of the
issuer that changes the user (``CreateAccessKey``, ``TagUser``, ``UpdateAccessKey``,
``DeleteAccessKey``, ``UntagUser``), counted at the AWS call, so a crash can land *inside*
``IamIssuer.revoke`` (between its UpdateAccessKey and its TagUser) or ``IamIssuer.purge`` (after
``DeleteAccessKey``, before ``UntagUser``). After the k-th effect it raises
:class:`~rotator.testing.SimulatedCrash` (nothing after it runs, as in a killed process), or calls
``on_effect`` (the child below SIGKILLs itself there). Each effect is logged with the fake clock's
time, the key id it touched and, before a deactivation or deletion, what every target served then
(``observe``), so the tests can check I3 after the fact.

Run as a module, this file is the child process of the SIGKILL tests::

    python -m tests.faults.iam_support_faults CONFIG_TOML NOW_ISO KILL_AT [--force] [--identity ID] [--audit FILE]

It runs one ``rotate`` on a fake clock set to NOW_ISO and kills itself with SIGKILL right after the
effect KILL_AT returns: ``CreateAccessKey``, ``TagUser``, ``UpdateAccessKey`` or ``DeleteAccessKey``
(an IAM call, first occurrence, or ``NAME#n`` for the n-th), or a backend method (``stage``, ...).
It prints each IAM call it made and the key id (never a secret) on stdout as it goes, so the test
knows which key the lost reply minted; ``--audit`` writes the audit trail (rotator.audit) there.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from rotator.testing import BACKEND_EFFECTS, SimulatedCrash

#: The IAM calls that change the managed user: the issuer's effects.
IAM_EFFECTS = ("CreateAccessKey", "TagUser", "UpdateAccessKey", "DeleteAccessKey", "UntagUser")


@dataclass(frozen=True)
class Effect:
    """One effect as it happened. ``op``: a backend method or an IAM call; ``at``: the fake clock;
    ``key_id``: the access key it created or touched (IAM calls); ``status``: UpdateAccessKey's new
    status; ``served``: for deactivations and deletions, each target's current key id at that
    moment; ``sent``/``done``: the real time (``time.time()``) an IAM call was sent and answered,
    to compare with what a process outside the test did meanwhile."""

    number: int
    provider: str
    op: str
    at: datetime
    key_id: str | None = None
    status: str | None = None
    served: dict[str, str | None] | None = None
    sent: float | None = None
    done: float | None = None

    def __str__(self) -> str:
        extra = f" {self.key_id[-4:]}" if self.key_id else ""
        return f"{self.number}:{self.provider}.{self.op}{extra}{' ' + self.status if self.status else ''}"


@dataclass
class IamEffects:
    """Counts (and logs) the effects of every runtime it instruments; crashes after the
    ``crash_after``-th, or calls ``on_effect(effect)`` after each when given.

    ``observe()``: each target's current key id, called *before* a deactivation or deletion is
    sent (the state the revoke was decided on)."""

    clock: Any
    crash_after: int | None = None
    on_effect: Callable[[Effect], None] | None = None
    observe: Callable[[], dict[str, str | None]] | None = None
    log: list[Effect] = field(default_factory=list)
    crashed: Effect | None = None
    _lock: Any = field(default_factory=threading.Lock)

    @property
    def count(self) -> int:
        return len(self.log)

    def instrument(self, runtime: Any) -> IamEffects:
        for backend in runtime.backends.values():
            for method in BACKEND_EFFECTS:
                self._wrap_method(backend, method)
        for issuer in runtime.issuers.values():
            aws = getattr(issuer, "_aws", None)
            if aws is not None:
                self._wrap_iam(issuer.name, aws)
        return self

    def ops(self) -> list[str]:
        return [e.op for e in self.log]

    def of(self, op: str, status: str | None = None) -> list[Effect]:
        return [e for e in self.log if e.op == op and (status is None or e.status == status)]

    # --- internals -------------------------------------------------------------------------------

    def _wrap_method(self, provider: Any, method: str) -> None:
        original = getattr(provider, method)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            self._after(Effect(0, provider.name, method, self.clock.now()))
            return result

        setattr(provider, method, wrapped)

    def _wrap_iam(self, name: str, aws: Any) -> None:
        original = aws.call

        def call(service: str, region: Any, operation: str, *args: Any, **params: Any) -> Any:
            if service != "iam" or operation not in IAM_EFFECTS:
                return original(service, region, operation, *args, **params)
            served = None
            if operation in ("UpdateAccessKey", "DeleteAccessKey") and self.observe is not None:
                served = self.observe()
            sent = time.time()
            answer = original(service, region, operation, *args, **params)
            done = time.time()
            key_id = params.get("AccessKeyId")
            if operation == "CreateAccessKey":
                key_id = answer["AccessKey"]["AccessKeyId"]
            elif operation in ("TagUser", "UntagUser"):
                keys = [t["Key"] for t in params.get("Tags", ())] + list(params.get("TagKeys", ()))
                key_id = keys[0].rsplit(":", 1)[-1] if keys else None
            self._after(Effect(0, name, operation, self.clock.now(), key_id, params.get("Status"), served, sent, done))
            return answer

        aws.call = call

    def _after(self, effect: Effect) -> None:
        with self._lock:
            effect = replace(effect, number=len(self.log) + 1)
            self.log.append(effect)
        if self.on_effect is not None:
            self.on_effect(effect)
        elif effect.number == self.crash_after:
            self.crashed = effect
            raise SimulatedCrash(f"simulated crash after effect {effect}")


# --- looking at a world ---------------------------------------------------------------------------

class Watch:
    """One runtime of ``world`` (an :class:`~tests.integration.iam_support.IamWorld`) kept for
    looking: what each target of ``secret`` serves, every stored byte, the I1 check. (The world's
    own ``served()`` builds a runtime per call.)"""

    def __init__(self, world: Any, secret: str = "ci") -> None:
        self.world = world
        self.runtime = world.runtime("watch")
        self.secret = next(s for s in self.runtime.secrets if s.name == secret)

    def served(self) -> dict[str, tuple[str, str] | None]:
        """Each target's current key as (id, secret)."""
        out: dict[str, tuple[str, str] | None] = {}
        for bound in self.secret.targets:
            current = bound.backend.read(bound.target).current
            out[bound.label] = (current.part("access_key_id"), current.part("secret_access_key")) if current else None
        return out

    def served_ids(self) -> dict[str, str | None]:
        return {label: key[0] if key else None for label, key in self.served().items()}

    def assert_i1(self) -> str:
        """I1: every target serves one key, which STS accepts and IAM lists as Active (moto
        accepts Inactive keys, so the listing is what proves it). Returns its id."""
        served = self.served()
        assert None not in served.values(), f"a target serves no key: {served.keys()}"
        keys = self.iam_keys()
        for label, (key_id, _) in served.items():          # type: ignore[misc]
            assert keys.get(key_id) == "Active", f"{label} serves …{key_id[-4:]}, which IAM lists as {keys.get(key_id)}"
        for key_id, secret in set(served.values()):        # type: ignore[misc]
            assert self.world.iam_user.works(key_id, secret), f"STS refuses …{key_id[-4:]}, which a target serves"
        return served[self.secret.primary.label][0]        # type: ignore[index]

    def iam_keys(self) -> dict[str, str]:
        """The user's keys as IAM lists them: id -> Active/Inactive (on a cached client)."""
        return {row.key_id: row.status for row in self.world.iam_user.keys()}  # noqa: SIM118 - not a dict

    def tags(self) -> dict[str, str]:
        """The user's tags (rotator notes deactivations there)."""
        iam = self.world.iam_user.server.client("iam")
        return {t["Key"]: t["Value"] for t in iam.list_user_tags(UserName=self.world.user)["Tags"]}

    def stored_text(self) -> str:
        """Everything the world's stores hold, as text: every file under the file backends'
        directories, every version of the Secrets Manager secrets the world's secrets target (not
        every secret: the signing server is never reset, other tests' secrets are there too)."""
        from pathlib import Path

        parts: list[str] = []
        for backend in self.world.backends.values():
            if backend["type"] == "file":
                root = Path(backend["directory"])
                parts += [p.read_text() for p in sorted(root.rglob("*")) if p.is_file()] if root.exists() else []
        sm = self.world.iam_user.server.client("secretsmanager")
        for spec in self.world.secrets:
            for target in spec["targets"]:
                if self.world.backends[target["backend"]]["type"] != "aws_secrets_manager":
                    continue
                versions = sm.list_secret_version_ids(SecretId=target["secret_id"], IncludeDeprecated=True)
                for version in versions["Versions"]:
                    parts.append(sm.get_secret_value(SecretId=target["secret_id"], VersionId=version["VersionId"])
                                 .get("SecretString", ""))
        return "\n".join(parts)

    def close(self) -> None:
        self.runtime.close()


# --- the child process of the SIGKILL tests ------------------------------------------------------

def _matches(effect: Effect, spec: str, seen: dict[str, int]) -> bool:
    op, _, nth = spec.partition("#")
    if effect.op != op:
        return False
    seen[op] = seen.get(op, 0) + 1
    return seen[op] == int(nth or 1)


def main(argv: list[str] | None = None) -> int:
    from rotator import config
    from rotator.audit import AuditSink
    from rotator.engine import Engine
    from rotator.runtime import Runtime
    from rotator.testing import FakeClock
    from rotator.timeutil import parse_instant

    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("now")
    parser.add_argument("kill_at")
    parser.add_argument("--force", action="store_true")
    parser.add_argument("--identity", default="doomed")
    parser.add_argument("--audit")
    args = parser.parse_args(argv)

    clock = FakeClock(parse_instant(args.now))
    runtime = Runtime(config.load(args.config), clock=clock, sleep=clock.sleep, identity=args.identity)
    seen: dict[str, int] = {}

    def die(effect: Effect) -> None:
        if effect.key_id:
            print(f"{effect.op} {effect.key_id} {effect.status or ''}".rstrip(), flush=True)
        if _matches(effect, args.kill_at, seen):
            os.kill(os.getpid(), signal.SIGKILL)

    IamEffects(clock, on_effect=die).instrument(runtime)
    sink = AuditSink(args.audit) if args.audit else None
    report = Engine(runtime, on_event=sink).run(force=args.force)
    print("finished without reaching", args.kill_at, [o.error for o in report.outcomes], flush=True)
    return 3


if __name__ == "__main__":
    sys.exit(main())
