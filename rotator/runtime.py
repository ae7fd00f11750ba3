"""Builds the live objects from validated settings: providers, targets, managed secrets.

Construction does no network I/O (each provider validates its own section and targets), so a
bad config fails here, before anything is touched, with an error naming the field.
"""

from __future__ import annotations

import os
import secrets as _random
import socket
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from rotator import credentials, registry
from rotator.clock import SystemClock
from rotator.config import HOOK_EVENTS, SecretSpec, Settings
from rotator.errors import ConfigError, RotatorError
from rotator.interfaces import Backend, Clock, Issuer, ProviderContext, Target
from rotator.lease import keeping_sleep
from rotator.machine import Policy
from rotator.models import Secret


@dataclass(frozen=True)
class Bound:
    """A backend together with one of its targets."""

    backend: Backend
    target: Target

    @property
    def label(self) -> str:
        return f"{self.backend.name}:{self.target.label.split(':', 1)[-1]}"


@dataclass(frozen=True)
class ManagedSecret:
    spec: SecretSpec
    issuer: Issuer
    primary: Bound
    secondaries: tuple[Bound, ...]
    policy: Policy
    signs_in: tuple[Issuer, ...] = ()   # issuers whose own credential is this secret (self-rotation)
    hooks: Mapping[str, Any] = field(default_factory=dict)   # name -> rotator.hooks.Hook

    @property
    def gates(self) -> frozenset[str]:
        """The names of the hooks that gate the old key's revoke."""
        return frozenset(name for name, hook in self.hooks.items() if hook.gate)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def targets(self) -> tuple[Bound, ...]:
        return (self.primary, *self.secondaries)

    def bound(self, label: str) -> Bound:
        for item in self.targets:
            if item.label == label:
                return item
        raise KeyError(label)

    def key_name(self, rotation_id: str) -> str:
        return self.spec.key_name.format(secret=self.spec.name, rotation=short_id(rotation_id))


def short_id(rotation_id: str) -> str:
    """The readable form carried in key names: 'r-7f3c2a1b'."""
    return f"r-{rotation_id[:8]}"


def runner_identity(configured: str | None = None) -> str:
    """Unique per process: two processes on one host must never look like the same runner."""
    base = configured or socket.gethostname() or "rotator"
    return f"{base}:{os.getpid()}:{_random.token_hex(2)}"


def _addresses(bound: Bound) -> frozenset[tuple[str, ...]]:
    """What ``bound`` addresses (``Target.addresses``), or its backend name and label."""
    return (getattr(bound.target, "addresses", None)
            or frozenset({("backend", bound.backend.name, bound.target.label)}))


def _refuse_shared_targets(secrets: list[ManagedSecret]) -> None:
    """Raise ConfigError, listing every clash, when two targets address the same place.

    Two managed secrets writing one place would overwrite each other's key and rotation record
    (a copy-paste slip in ``[[secrets]]``), and so would one secret listing a place twice. Places
    are compared by what targets address (:class:`rotator.interfaces.Target`'s ``addresses``), so
    two spellings of one file, secret or KV path meet; a target without ``addresses`` is compared
    by its backend's name and its label. An issuer's credential reference is not a target: it
    may point at a managed secret's target (self-rotation).
    """
    owners: dict[tuple[str, ...], list[tuple[int, int]]] = {}
    clashes: dict[tuple[int, int, int], int] = {}     # (secret, target, earlier secret) -> its target
    for index, secret in enumerate(secrets):
        for position, bound in enumerate(secret.targets):
            keys = _addresses(bound)
            for key in keys:
                for earlier, at in owners.get(key, ()):
                    if (earlier, at) != (index, position):
                        clashes.setdefault((index, position, earlier), at)
                owners.setdefault(key, []).append((index, position))
    lines = []
    for (index, position, earlier), at in clashes.items():
        secret, other = secrets[index], secrets[earlier]
        here, there = secret.targets[position].label, other.targets[at].label
        spelled = "" if there == here else f", written there as {there}"
        if earlier == index:
            lines.append(f"secrets[{index}] ({secret.name}) lists the target {here} twice"
                         f" (targets[{position}] and targets[{at}]{spelled}); a target belongs to one secret")
        else:
            lines.append(f"secrets[{index}] ({secret.name}) and secrets[{earlier}] ({other.name}) both use the"
                         f" target {here} (targets[{position}] and targets[{at}]{spelled});"
                         " a target belongs to one secret")
    if lines:
        raise ConfigError("\n".join(lines))


class Runtime:
    """Everything a run needs, built once from the settings."""

    def __init__(self, settings: Settings, *, clock: Clock | None = None,
                 sleep: Callable[[float], None] | None = None,
                 on_call: Callable[[str, str, str], None] | None = None,
                 identity: str | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.identity = identity or runner_identity(settings.rotator.runner_id)
        # a wait a provider makes for a run that holds a claim renews the claim's lease (rotator.lease)
        self._sleep = keeping_sleep(sleep or SystemClock().sleep)
        self.context = ProviderContext(
            clock=self.clock,
            sleep=self._sleep,
            resolve_credential=self._resolve_credential,
            on_call=on_call or (lambda provider, op, outcome: None),
            workers=settings.rotator.workers,
        )
        self.backends: dict[str, Backend] = {
            name: self._build("backend", name, section.type, section.options())
            for name, section in settings.backends.items()
        }
        self.issuers: dict[str, Issuer] = {
            name: self._build("issuer", name, section.type, section.options())
            for name, section in settings.issuers.items()
        }
        self._built_hooks: dict[str, tuple[Any, Any]] = {}
        self._hook_runner: Any = None
        self.secrets: list[ManagedSecret] = [self._manage(i, spec) for i, spec in enumerate(settings.secrets)]
        _refuse_shared_targets(self.secrets)

    def _build(self, kind: str, name: str, type_name: str, options: Mapping[str, Any]) -> Any:
        where = f"{kind}s.{name}"
        cls = registry.load(kind, type_name, where)
        return cls(name, options, self.context)

    def _bind(self, entry: Mapping[str, Any], field: str, where: str) -> Bound:
        backend = self.backends[entry["backend"]]
        spec = {"field": field, **{k: v for k, v in entry.items() if k != "backend"}}
        try:
            return Bound(backend, backend.target(spec))
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    def _manage(self, index: int, spec: SecretSpec) -> ManagedSecret:
        bound = [
            self._bind({"backend": t.backend, **t.options()}, spec.field, f"secrets[{index}].targets[{i}]")
            for i, t in enumerate(spec.targets)
        ]
        labels = [b.label for b in bound]
        if len(set(labels)) != len(labels):
            raise ConfigError(f"secrets[{index}].targets: the same target is listed twice")
        primary = bound[0]
        if not primary.backend.capabilities.holds_record:
            raise ConfigError(
                f"secrets[{index}].targets[0]: backend {primary.backend.name!r} cannot be a primary"
                " (it has no compare-and-swap to hold the rotation record); list it after one that can"
            )
        hooks = self._hooks(index, spec)
        policy = Policy(
            lead_time=self.settings.lead_time(spec),
            grace=self.settings.grace(spec),
            lease=self.settings.rotator.lease,
            create_if_missing=spec.create_if_missing,
            primary=primary.label,
            secondaries=tuple(labels[1:]),
            window=self.settings.window(spec),
            safety_margin=self.settings.safety_margin(spec),
            hook_events=tuple((event, tuple(h.name for h in hooks.values() if event in h.events))
                              for event in HOOK_EVENTS),
        )
        return ManagedSecret(spec, self.issuers[spec.issuer], primary, tuple(bound[1:]), policy,
                             signs_in=self._issuers_signing_in_with(bound), hooks=hooks)

    def _hooks(self, index: int, spec: SecretSpec) -> dict[str, Any]:
        """The secret's hooks, built once (a shared [[hooks]] entry is one object for all)."""
        if not self.settings.hooks and not spec.hooks:
            return {}
        from rotator import hooks

        out = {}
        for hook in self.settings.hooks_of(spec):
            if hook.name not in self._built_hooks or self._built_hooks[hook.name][0] is not hook:
                where = next((f"hooks[{i}]" for i, h in enumerate(self.settings.hooks) if h is hook),
                             f"secrets[{index}].hooks ({hook.name})")
                self._built_hooks[hook.name] = (hook, hooks.build(hook, self._resolve_credential, where))
            out[hook.name] = self._built_hooks[hook.name][1]
        return out

    def _issuers_signing_in_with(self, bound: list[Bound]) -> tuple[Issuer, ...]:
        """Issuers whose credential reference points at one of these targets (compared by what
        they address, so an ARN and a plain name, or a path through a symlink, still meet)."""
        places = {key for b in bound for key in _addresses(b)}
        found = []
        for issuer in self.issuers.values():
            ref = getattr(issuer, "credential", None)
            if isinstance(ref, Mapping) and ref.get("backend") in self.backends:
                backend = self.backends[ref["backend"]]
                spec = {"field": "api_key", **{k: v for k, v in ref.items() if k != "backend"}}
                if places & _addresses(Bound(backend, backend.target(spec))):
                    found.append(issuer)
        return tuple(found)

    def _resolve_credential(self, ref: Any, where: str) -> Secret:
        return credentials.resolve(ref, where, read_backend=self._read_backend_credential)

    def _read_backend_credential(self, backend_name: str, spec: Mapping[str, Any]) -> Secret:
        backend = self.backends.get(backend_name)
        if backend is None:
            raise ConfigError(f"credential reference: unknown backend {backend_name!r}")
        target = backend.target({"field": "api_key", **spec})
        value = backend.read(target).current
        if value is None:
            raise ConfigError(f"credential reference: {target.label} holds no key")
        return value

    def credential_of(self, issuer: str) -> Secret | None:
        """The value issuer ``issuer`` signs in with, when its reference resolves (else None)."""
        ref = getattr(self.issuers[issuer], "credential", None)
        if ref is None:
            return None
        try:
            return self._resolve_credential(ref, f"issuers.{issuer}")
        except (ConfigError, RotatorError):
            return None

    def select(self, names: list[str] | None) -> list[ManagedSecret]:
        if not names:
            return list(self.secrets)
        known = {s.name: s for s in self.secrets}
        missing = [n for n in names if n not in known]
        if missing:
            raise ConfigError(f"unknown secret(s): {', '.join(missing)} (configured: {', '.join(known)})")
        return [known[n] for n in names]

    @property
    def hook_runner(self) -> Any:
        """Delivers hooks for every secret of this runtime: one concurrency bound for all."""
        if self._hook_runner is None:
            from rotator.hooks import HookRunner

            self._hook_runner = HookRunner(concurrency=self.settings.rotator.hook_concurrency, clock=self.clock)
        return self._hook_runner

    def stop_hooks(self) -> None:
        """Shutting down: running hooks are stopped, none starts. Does not wait: the run that
        delivers them ends once they are killed, and the daemon waits for that run within
        ``shutdown_timeout``."""
        if self._hook_runner is not None:
            self._hook_runner.stop(wait=0)

    def close(self) -> None:
        for provider in (*self.issuers.values(), *self.backends.values()):
            provider.close()
