"""Builds the live objects from validated settings: providers, targets, managed secrets.

Construction does no network I/O (each provider validates its own section and targets), so a
bad config fails here, before anything is touched. Every problem found while building is
collected and reported at once, one line each, naming the file and the field path: provider
sections and targets, credential references (an unset variable, a missing or unreadable file, a
``backend`` reference to no backend), timing against each issuer's key lifetime, targets shared
by two secrets. Warnings (plain http allowed with ``insecure_http``, TLS verification off, a
credential file others can read) are in :attr:`Runtime.warnings` and logged once per process.
"""

from __future__ import annotations

import logging
import os
import secrets as _random
import socket
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable, Iterable, Mapping

from rotator import credentials, registry
from rotator.clock import SystemClock
from rotator.config import HOOK_EVENTS, SecretSpec, Settings
from rotator.errors import ConfigError, RotatorError
from rotator.interfaces import Backend, Clock, Issuer, ProviderContext, Target
from rotator.lease import keeping_sleep
from rotator.machine import Policy
from rotator.models import Secret
from rotator.timeutil import format_duration
from rotator.validation import did_you_mean
from rotator.values import target_fields

log = logging.getLogger(__name__)


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


def _shared_target_problems(secrets: list[tuple[int, ManagedSecret]]) -> list[str]:
    """One line for every clash of two targets that address the same place.

    Two managed secrets writing one place would overwrite each other's key and rotation record
    (a copy-paste slip in ``[[secrets]]``), and so would one secret listing a place twice. Places
    are compared by what targets address (:class:`rotator.interfaces.Target`'s ``addresses``), so
    two spellings of one file, secret or KV path meet; a target without ``addresses`` is compared
    by its backend's name and its label. An issuer's credential reference is not a target: it
    may point at a managed secret's target (self-rotation). ``secrets`` pairs each secret with its
    index in ``[[secrets]]``.
    """
    owners: dict[tuple[str, ...], list[tuple[int, int]]] = {}
    clashes: dict[tuple[int, int, int], int] = {}     # (secret, target, earlier secret) -> its target
    by_index = dict(secrets)
    for index, secret in secrets:
        for position, bound in enumerate(secret.targets):
            keys = _addresses(bound)
            for key in keys:
                for earlier, at in owners.get(key, ()):
                    if (earlier, at) != (index, position):
                        clashes.setdefault((index, position, earlier), at)
                owners.setdefault(key, []).append((index, position))
    lines = []
    for (index, position, earlier), at in clashes.items():
        secret, other = by_index[index], by_index[earlier]
        here, there = secret.targets[position].label, other.targets[at].label
        spelled = "" if there == here else f", written there as {there}"
        if earlier == index:
            lines.append(f"secrets[{index}] ({secret.name}) lists the target {here} twice"
                         f" (targets[{position}] and targets[{at}]{spelled}); a target belongs to one secret")
        else:
            lines.append(f"secrets[{index}] ({secret.name}) and secrets[{earlier}] ({other.name}) both use the"
                         f" target {here} (targets[{position}] and targets[{at}]{spelled});"
                         " a target belongs to one secret")
    return lines


def _refuse_shared_targets(secrets: list[ManagedSecret]) -> None:
    """Raise ConfigError, listing every clash, when two targets address the same place."""
    lines = _shared_target_problems(list(enumerate(secrets)))
    if lines:
        raise ConfigError("\n".join(lines))


def _lines(exc: ConfigError) -> list[str]:
    return [line for line in str(exc).splitlines() if line.strip()]


def _relocate(exc: ConfigError, backend: str, where: str) -> list[str]:
    """A backend's target error ("backends.local target.pth: unknown field") at the place the
    target was written ("secrets[0].targets[1].pth: unknown field")."""
    prefix = f"backends.{backend} target"
    out = []
    for line in _lines(exc):
        if line.startswith((prefix + ".", prefix + ":")):
            out.append(where + line[len(prefix):])
        elif line.startswith(where):
            out.append(line)
        else:
            out.append(f"{where}: {line}")
    return out


def _build_provider(kind: str, name: str, type_name: str, options: Mapping[str, Any],
                    context: ProviderContext) -> Any:
    cls = registry.load(kind, type_name, f"{kind}s.{name}")
    return cls(name, options, context)


def _declared_references(provider: Any, where: str) -> list[tuple[str, Any]]:
    """The credential references a provider declares (``references``: field path -> reference,
    defaults included), or an issuer's ``credential``."""
    declared = getattr(provider, "references", None)
    if isinstance(declared, Mapping):
        return list(declared.items())
    ref = getattr(provider, "credential", None)
    return [(where, ref)] if ref is not None else []


def _no_credentials(ref: Any, where: str) -> Secret:
    raise ConfigError(f"{where}: credentials are not resolved while checking a configuration")


def _lifetime_problems(issuers: Mapping[str, Any], secrets: Iterable[tuple[int, SecretSpec]],
                       default_lead: timedelta | None) -> list[str]:
    """``lead_time`` at or beyond an issuer's key lifetime is impossible: every key would be due as
    soon as it is issued, so every run would rotate it again (docs/configuration.md, "Timing"). An
    issuer that does not know its keys' lifetime (``key_lifetime`` None) is not checked. A problem
    with a value a secret inherits is reported once, on ``[rotator]``."""
    problems: list[str] = []
    for index, spec in secrets:
        issuer = issuers.get(spec.issuer)
        lifetime = getattr(issuer, "key_lifetime", None) if issuer is not None else None
        lead = spec.lead_time or default_lead
        if not isinstance(lifetime, timedelta) or lead is None or lead < lifetime:
            continue
        at = f"secrets[{index}].lead_time" if spec.lead_time is not None else "rotator.lead_time"
        whose = f" (secret {spec.name!r})" if spec.lead_time is not None else ""
        problems.append(f"{at}: lead_time {format_duration(lead)} is not shorter than the key lifetime of"
                        f" issuer {spec.issuer!r} ({format_duration(lifetime)} at the shortest){whose}:"
                        " every key would be due as soon as it is issued, and every run would rotate it"
                        " again (shorten lead_time)")
    return list(dict.fromkeys(problems))


def _provider_references(issuers: Mapping[str, Any], backends: Mapping[str, Any]) -> list[tuple[str, Any]]:
    refs: list[tuple[str, Any]] = []
    for name, issuer in issuers.items():
        refs += _declared_references(issuer, f"issuers.{name}")
    for name, backend in backends.items():
        refs += _declared_references(backend, f"backends.{name}")
    return refs


def _reference_problems(refs: Iterable[tuple[str, Any]], backends: Mapping[str, Any], backend_names: Iterable[str],
                        *, resolve: bool, environ: Mapping[str, str] | None = None) -> tuple[list[str], list[str]]:
    """(problems, warnings) of credential references where they are declared: a ``backend``
    reference names a configured backend and a target it accepts (nothing is read from it here);
    with ``resolve``, an ``env`` variable is set and a ``file`` can be read (a warning when others
    may read it). ``backends`` are the built ones, ``backend_names`` every configured name."""
    names = sorted(backend_names)
    problems: list[str] = []
    warnings: list[str] = []
    seen: set[str] = set()
    for where, ref in refs:
        if where in seen:
            continue
        seen.add(where)
        try:
            if isinstance(ref, Mapping) and "backend" in ref:
                credentials.check_reference(ref, where)
                name = str(ref["backend"])
                if name not in names:
                    problems.append(f"{where}.backend: unknown backend {name!r}{did_you_mean(name, names)}"
                                    f" (configured: {', '.join(names) or 'none'})")
                elif name in backends:
                    try:
                        backends[name].target({"field": "api_key", **{k: v for k, v in ref.items() if k != "backend"}})
                    except ConfigError as exc:
                        problems += _relocate(exc, name, where)
                continue
            if not resolve:
                credentials.check_reference(ref, where)
                continue
            warning = credentials.check(ref, where, environ=environ)
            if warning:
                warnings.append(warning)
        except ConfigError as exc:
            problems += _lines(exc)
    return problems, warnings


def target_spec(entry: Mapping[str, Any], field: str, fields: Any, issuer: Any, secret_where: str,
                where: str) -> dict[str, Any]:
    """What a backend's ``target()`` is given for one ``targets`` entry: the entry without
    ``backend``, the secret's ``field``, and, when the issuer's keys have parts (an AWS access
    key), ``fields``: every part's field, the issuer's defaults renamed by the secret's ``fields``
    and then the entry's own (rotator.values). ``fields`` for an issuer of plain keys is an error,
    as is an unknown part."""
    spec = {"field": field, **{k: v for k, v in entry.items() if k != "backend"}}
    own = spec.pop("fields", None)
    parts = issuer.capabilities.value_parts if issuer is not None else ()
    if not parts:
        if issuer is not None and (own is not None or fields is not None):
            at = f"{where}.fields" if own is not None else f"{secret_where}.fields"
            raise ConfigError(f"{at}: issuer {issuer.name!r} issues keys of one string, stored in `field`;"
                              " `fields` is for keys with several parts (aws_iam)")
        return spec
    try:
        spec["fields"] = target_fields(parts, fields, f"{secret_where}.fields")
        if own is not None:
            spec["fields"] = target_fields(parts, {**spec["fields"], **own} if isinstance(own, Mapping) else own,
                                           f"{where}.fields")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return spec


def section_problems(document: Mapping[str, Any], *, secrets: Iterable[tuple[int, SecretSpec]] = (),
                     default_lead: timedelta | None = None, references: Iterable[tuple[str, Any]] = (),
                     resolve: bool = False) -> list[str]:
    """The problems the providers find in a document, for a report :func:`rotator.config.load`
    already has to make: each issuer's and backend's section, every target, ``lead_time`` against
    the key lifetimes, and the credential references (resolved when ``resolve``). Best effort and
    without I/O beyond reading credential files: ``secrets`` are the ``[[secrets]]`` entries that
    validated, ``references`` the core sections' references."""
    problems: list[str] = []
    context = ProviderContext(clock=SystemClock(), sleep=lambda seconds: None,
                              resolve_credential=_no_credentials)
    built: dict[str, dict[str, Any]] = {"issuer": {}, "backend": {}}
    try:
        for kind in ("issuer", "backend"):
            sections = document.get(f"{kind}s")
            if not isinstance(sections, Mapping):
                continue
            for name, raw in sections.items():
                if not isinstance(raw, Mapping) or not isinstance(raw.get("type"), str):
                    continue
                options = {k: v for k, v in raw.items() if k != "type"}
                try:
                    built[kind][str(name)] = _build_provider(kind, str(name), raw["type"], options, context)
                except ConfigError as exc:
                    problems += _lines(exc)
                except Exception:  # noqa: BLE001, S112 - best effort: the core report stands on its own
                    continue
        backends = built["backend"]
        raw_secrets = document.get("secrets")
        for index, secret in enumerate(raw_secrets if isinstance(raw_secrets, list) else []):
            if not isinstance(secret, Mapping) or not isinstance(secret.get("targets"), list):
                continue
            field_name = secret.get("field") if isinstance(secret.get("field"), str) else "api_key"
            issuer = built["issuer"].get(secret.get("issuer")) if isinstance(secret.get("issuer"), str) else None
            for position, entry in enumerate(secret["targets"]):
                if not isinstance(entry, Mapping) or entry.get("backend") not in backends:
                    continue
                backend = backends[entry["backend"]]
                where = f"secrets[{index}].targets[{position}]"
                try:
                    spec = target_spec(entry, field_name, secret.get("fields"), issuer, f"secrets[{index}]", where)
                except ConfigError as exc:
                    problems += _lines(exc)
                    continue
                try:
                    backend.target(spec)
                except ConfigError as exc:
                    problems += _relocate(exc, backend.name, where)
                except Exception:  # noqa: BLE001, S112 - best effort
                    continue
        problems += _lifetime_problems(built["issuer"], secrets, default_lead)
        names = document.get("backends") if isinstance(document.get("backends"), Mapping) else {}
        found, _ = _reference_problems([*references, *_provider_references(built["issuer"], backends)],
                                       backends, [str(n) for n in names], resolve=resolve)
        problems += found
    finally:
        for provider in (*built["issuer"].values(), *built["backend"].values()):
            try:
                provider.close()
            except Exception:  # noqa: BLE001, S110 - closing a provider that never connected
                pass
    return problems


class Runtime:
    """Everything a run needs, built once from the settings.

    Building checks the whole configuration before anything is contacted and raises one
    ConfigError listing every problem (see the module's docstring).

    ``check_references``: whether every ``env`` and ``file`` credential reference must resolve
    now. By default it is checked for settings read from a file (every command of the CLI) and not
    for settings built in code (``rotator demo``, tests), which may leave references they never use
    unresolvable. ``environ`` replaces ``os.environ`` for that check (the providers resolve the
    references later, when they need them, from ``os.environ``).
    """

    def __init__(self, settings: Settings, *, clock: Clock | None = None,
                 sleep: Callable[[float], None] | None = None,
                 on_call: Callable[[str, str, str], None] | None = None,
                 identity: str | None = None, check_references: bool | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.identity = identity or runner_identity(settings.rotator.runner_id)
        #: what the configuration allows but should not (plain http with insecure_http, TLS
        #: verification off, a credential file others can read): logged once per process here,
        #: shown by ``rotator check``
        self.warnings: list[str] = []
        # a wait a provider makes for a run that holds a claim renews the claim's lease (rotator.lease)
        self._sleep = keeping_sleep(sleep or SystemClock().sleep)
        self.context = ProviderContext(
            clock=self.clock,
            sleep=self._sleep,
            resolve_credential=self._resolve_credential,
            on_call=on_call or (lambda provider, op, outcome: None),
            workers=settings.rotator.workers,
        )
        problems: list[str] = []
        self.backends: dict[str, Backend] = {}
        self.issuers: dict[str, Issuer] = {}
        for kind, built, sections in (("backend", self.backends, settings.backends),
                                      ("issuer", self.issuers, settings.issuers)):
            for name, section in sections.items():
                try:
                    built[name] = self._build(kind, name, section.type, section.options())
                except ConfigError as exc:
                    problems += _lines(exc)
        self._built_hooks: dict[str, tuple[Any, Any]] = {}
        self._hook_runner: Any = None
        managed: list[tuple[int, ManagedSecret]] = []
        for index, spec in enumerate(settings.secrets):
            secret = self._manage(index, spec, problems)
            if secret is not None:
                managed.append((index, secret))
        self.secrets: list[ManagedSecret] = [secret for _, secret in managed]
        problems += _shared_target_problems(managed)
        problems += self._timing_problems()
        if check_references is None:
            check_references = settings.from_file
        problems += self._reference_problems(environ, resolve=check_references)
        for provider in (*self.issuers.values(), *self.backends.values()):
            self.warnings += [str(w) for w in getattr(provider, "warnings", ()) or ()]
        self.warnings = list(dict.fromkeys(self.warnings))
        if problems:
            self.close()
            raise ConfigError(settings.report(list(dict.fromkeys(problems))))
        for warning in self.warnings:
            credentials.warn_once(warning)

    def _build(self, kind: str, name: str, type_name: str, options: Mapping[str, Any]) -> Any:
        return _build_provider(kind, name, type_name, options, self.context)

    def _bind(self, entry: Mapping[str, Any], spec: SecretSpec, secret_where: str, where: str) -> Bound:
        backend = self.backends[entry["backend"]]
        target = target_spec(entry, spec.field, spec.fields, self.issuers.get(spec.issuer), secret_where, where)
        try:
            return Bound(backend, backend.target(target))
        except ConfigError as exc:
            raise ConfigError("\n".join(_relocate(exc, backend.name, where))) from None

    def _manage(self, index: int, spec: SecretSpec, problems: list[str]) -> ManagedSecret | None:
        """The managed secret, or None with its problems added to ``problems`` (a secret whose
        issuer or backend failed to build is skipped: that failure is reported already)."""
        where = f"secrets[{index}]"
        bound: list[Bound] = []
        complete = spec.issuer in self.issuers
        for i, t in enumerate(spec.targets):
            if t.backend not in self.backends:
                complete = False
                continue
            try:
                bound.append(self._bind({"backend": t.backend, **t.options()}, spec, where, f"{where}.targets[{i}]"))
            except ConfigError as exc:
                problems += _lines(exc)
                complete = False
        try:
            hooks = self._hooks(index, spec)
        except ConfigError as exc:
            problems += _lines(exc)
            complete = False
        if not complete:
            return None
        labels = [b.label for b in bound]
        if len(set(labels)) != len(labels):
            problems.append(f"{where}.targets: the same target is listed twice")
            return None
        primary = bound[0]
        if not primary.backend.capabilities.holds_record:
            problems.append(
                f"{where}.targets[0]: backend {primary.backend.name!r} cannot be a primary"
                " (it has no compare-and-swap to hold the rotation record); list it after one that can"
            )
            return None
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

    def _timing_problems(self) -> list[str]:
        return _lifetime_problems(self.issuers, enumerate(self.settings.secrets), self.settings.rotator.lead_time)

    def _reference_problems(self, environ: Mapping[str, str] | None, *, resolve: bool) -> list[str]:
        refs = [*self.settings.references(), *_provider_references(self.issuers, self.backends)]
        problems, warnings = _reference_problems(refs, self.backends, self.settings.backends, resolve=resolve,
                                                 environ=environ)
        self.warnings += warnings
        return problems

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
                try:
                    target = backend.target(spec)
                except ConfigError:
                    continue            # reported by the references' check
                if places & _addresses(Bound(backend, target)):
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
