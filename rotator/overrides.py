"""Environment overrides: ``ROTATOR_ISSUERS__QUIVA_PROD__BASE_URL`` sets ``base_url`` of the issuer
named ``quiva-prod`` in the configuration file. See docs/configuration.md, "Environment overrides".

The rules, as built here:

* A variable takes part when its name starts with ``ROTATOR_`` (the settings' ``env_prefix``); the
  rest is split into levels at ``__`` (``env_nested_delimiter``). Names are matched without regard
  to case.
* A variable with a single level that is not a top-level section (``ROTATOR_CONFIG``, the
  ``ROTATOR_EVENT``... variables rotator hands its hooks) is not an override and is left alone.
* Each level is matched against what the file has at that place, upper-cased with ``-`` and ``.``
  turned into ``_``: the names of ``[issuers.*]`` and ``[backends.*]``, the ``name`` of an entry of a
  list (``[[secrets]]``, ``[[hooks]]``, ``alerts.webhooks``), the keys of a table. A list entry can
  also be picked by its 0-based index (``ROTATOR_SECRETS__0__GRACE``; ``targets`` have no names, so
  only ``ROTATOR_SECRETS__WEB__TARGETS__0__PATH``). A level that matches two names (``a-b`` and
  ``a.b``; an entry named ``1`` and the index 1) is an error naming both.
* A level naming nothing in the file is an error with a "did you mean", unless it names a field the
  program knows at that place, which is then created: ``ROTATOR_ROTATOR__GRACE`` and
  ``ROTATOR_DAEMON__HTTP_ADDRESS`` work whether or not the file has ``[rotator]`` or ``[daemon]``.
  Inside an issuer's or backend's section and a target entry the keys belong to the provider: an
  absent key is created (lower-cased) and the provider's own check refuses it if it knows no such
  setting. Issuers, backends and list entries are never created from the environment.
* Values: a value for a list or a table is JSON (``ROTATOR_ALERTS__ESCALATE_AT='["7d","3d"]'``,
  ``ROTATOR_ALERTS__WEBHOOKS='[{"url": {"env": "HOOK"}}]'``); a value for a field the program knows
  is handed to that field's own validation as the string it is (``"72h"`` to the duration parser,
  ``"true"`` to a boolean, ``"8"`` to an integer); a value for a provider's setting takes the type of
  the value it replaces in the file, and when the file has none, reads like a TOML scalar
  (``true``/``false``, an integer or a float) or else stays a string. An empty value is a value
  (``ROTATOR_DAEMON__HTTP_ADDRESS=`` turns the endpoint off).

Overrides are applied shallow first, so ``ROTATOR_ALERTS__WEBHOOKS`` (the whole list) comes before
``ROTATOR_ALERTS__WEBHOOKS__0__URL``. Every problem is collected; none stops the others.
"""

from __future__ import annotations

import copy
import json
import os
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Mapping, Union

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from rotator.validation import closest, location


def env_level(name: str) -> str:
    """How a name from the file is spelled in a variable: 'quiva-prod' -> 'QUIVA_PROD'."""
    return re.sub(r"[-.]", "_", str(name)).upper()


class _Problem(Exception):
    pass


@dataclass
class _Node:
    """What the configuration expects at one place."""

    kind: str                      # "model", "named" (a dict of named sections), "list", "open", "value"
    model: type[BaseModel] | None = None
    item: Any = None               # the annotation of a dict's values or a list's items
    annotation: Any = None         # for "value": the field's annotation
    noun: str = "entry"            # for messages: "issuer", "backend", "secret"


@dataclass
class Applied:
    """The outcome of applying the environment: what changed, and what was refused."""

    problems: list[str] = field(default_factory=list)
    origins: dict[str, str] = field(default_factory=dict)     # "issuers.quiva-prod.base_url" -> variable
    document: dict[str, Any] | None = None                   # the file's document with the overrides


class EnvOverrides(PydanticBaseSettingsSource):
    """A pydantic-settings source: the configuration file's document with the environment's
    overrides applied, matched against the names in the document (see the module's rules).

    ``document`` is the file's content (the settings' init kwargs); ``environ`` defaults to
    ``os.environ``. After the call, :attr:`applied` lists the problems and where each overridden
    value came from.
    """

    def __init__(self, settings_cls: type[BaseSettings], document: Mapping[str, Any],
                 environ: Mapping[str, str] | None = None) -> None:
        super().__init__(settings_cls)
        self.document = document
        self.environ = environ
        self.applied = Applied()

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        # the whole document is produced at once by __call__
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        environ = os.environ if self.environ is None else self.environ
        prefix = str(self.config.get("env_prefix") or "").upper()
        delimiter = str(self.config.get("env_nested_delimiter") or "__")
        doc = copy.deepcopy(dict(self.document))
        self.applied = Applied()
        candidates = []
        for name in environ:
            if not name.upper().startswith(prefix) or len(name) == len(prefix):
                continue
            levels = name[len(prefix):].split(delimiter)
            candidates.append((len(levels), name.upper(), name, levels))
        for _, _, name, levels in sorted(candidates):
            try:
                self._apply(doc, name, levels, environ[name], prefix, delimiter)
            except _Problem as problem:
                self.applied.problems.append(f"{name}: {problem}")
        self.applied.document = doc
        return doc

    # --- one variable ---------------------------------------------------------------------------

    def _apply(self, doc: dict[str, Any], name: str, levels: list[str], raw: str, prefix: str,
               delimiter: str) -> None:
        settings = self.settings_cls
        top = {env_level(f): f for f in settings.model_fields}
        if levels[0].upper() not in top:
            if len(levels) == 1:
                return                       # ROTATOR_CONFIG, a hook's ROTATOR_EVENT...: not an override
            hint = closest(levels[0].upper(), top)
            suggestion = f" (did you mean {prefix}{hint}{delimiter}...?)" if hint else ""
            raise _Problem(f"{levels[0]} is not a section of the configuration"
                           f" (sections: {', '.join(settings.model_fields)}){suggestion}")
        if any(not level for level in levels):
            raise _Problem(f"an empty level: levels are joined by a single {delimiter!r}")
        node = _Node("model", model=settings)
        container: Any = doc
        path: list[Any] = []
        for depth, level in enumerate(levels):
            last = depth == len(levels) - 1
            key, node = self._step(container, node, level, path, prefix, delimiter, levels[:depth])
            path.append(key)
            if last:
                container[key] = _value(raw, node, _get(container, key), name)
                self.applied.origins[location(path)] = name
                return
            child = _get(container, key)
            if child is None:
                if node.kind in ("model", "open", "named"):
                    child = {}
                    container[key] = child
                else:
                    raise _Problem(f"{location(path)} is not in the file; set {prefix}"
                                   f"{delimiter.join(levels[:depth + 1])} as a whole (JSON)")
            if not isinstance(child, (dict, list)):
                raise _Problem(f"{location(path)} is not a table in the file; set {prefix}"
                               f"{delimiter.join(levels[:depth + 1])} as a whole")
            if isinstance(child, list) and node.kind != "list":
                node = _Node("list", item=Any)
            elif isinstance(child, dict) and node.kind == "list":
                raise _Problem(f"{location(path)} is a table in the file, not a list")
            container = child

    def _step(self, container: Any, node: _Node, level: str, path: list[Any], prefix: str,
              delimiter: str, before: list[str]) -> tuple[Any, _Node]:
        """The key ``level`` stands for in ``container``, and what is expected under it."""
        wanted = level.upper()
        here = location(path) if path else "the configuration"
        if node.kind == "model":
            model = node.model
            assert model is not None
            fields = {env_level(f): f for f in model.model_fields}
            if wanted in fields:
                name = fields[wanted]
                field = model.model_fields[name]
                # pydantic keeps a field's Annotated metadata (a BeforeValidator) apart: put it back
                annotation = typing.Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation
                return name, _node_of(annotation, name)
            present = _match(container, wanted, here)
            if present is not None:
                return present, _Node("open")
            if model.model_config.get("extra") == "allow":
                return level.lower(), _Node("open")
            hint = closest(wanted, fields)
            guess = f" (did you mean {prefix}{delimiter.join([*before, hint])}?)" if hint else ""
            raise _Problem(f"{here} has no setting {level.lower()!r}{guess}")
        if node.kind == "named":
            found = _match(container, wanted, here, noun=node.noun)
            if found is None:
                names = sorted(map(str, container)) if isinstance(container, dict) else []
                hint = closest(wanted, {env_level(n): n for n in names})
                guess = ""
                if hint:
                    original = next(n for n in names if env_level(n) == hint)
                    guess = f"; did you mean {hint} ({original!r})?"
                listed = ", ".join(names) if names else "none"
                raise _Problem(f"{level} names no {node.noun} in the file ({path[-1]}: {listed}){guess}")
            return found, _node_of(node.item, str(found))
        if node.kind == "list":
            if not isinstance(container, list):
                raise _Problem(f"{here} is not a list in the file")
            return _list_index(container, level, here, node.noun), _node_of(node.item, "")
        # "open": a provider's own keys, or a free-form table
        if not isinstance(container, dict):
            raise _Problem(f"{here} is not a table in the file")
        found = _match(container, wanted, here)
        return (found if found is not None else level.lower()), _Node("open")


# --- matching --------------------------------------------------------------------------------

def _match(container: Any, wanted: str, here: str, noun: str = "key") -> str | None:
    """The one key of ``container`` spelled ``wanted`` as a variable level; two are an error."""
    if not isinstance(container, dict):
        return None
    hits = [k for k in container if env_level(k) == wanted]
    if len(hits) > 1:
        both = " and ".join(repr(h) for h in sorted(hits))
        of = "" if noun != "key" else f" of {here}"
        raise _Problem(f"{wanted} matches both {noun}s {both}{of}; rename one of them to override it"
                       " from the environment")
    return hits[0] if hits else None


def _list_index(items: list[Any], level: str, here: str, noun: str) -> int:
    wanted = level.upper()
    by_name = [i for i, item in enumerate(items)
               if isinstance(item, dict) and isinstance(item.get("name"), str) and env_level(item["name"]) == wanted]
    by_index = [int(level)] if level.isdigit() and int(level) < len(items) else []
    hits = list(dict.fromkeys(by_name + by_index))
    if len(hits) > 1:
        described = " and ".join(_describe_entry(items, i, i in by_name) for i in hits)
        raise _Problem(f"{level} matches both {described} of {here}; use the other one's name or index")
    if hits:
        return hits[0]
    names = [item["name"] for item in items if isinstance(item, dict) and isinstance(item.get("name"), str)]
    hint = closest(wanted, {env_level(n): n for n in names})
    guess = f"; did you mean {hint}?" if hint else ""
    listed = ", ".join(names) if names else "no names"
    extent = f"indexes 0 to {len(items) - 1}" if items else "the list is empty"
    raise _Problem(f"{level} names no {noun} of {here} ({listed}; {extent}){guess}")


def _describe_entry(items: list[Any], index: int, named: bool) -> str:
    if named:
        return f"the entry named {items[index]['name']!r} ({index})"
    return f"the entry at index {index}"


def _get(container: Any, key: Any) -> Any:
    if isinstance(container, list):
        return container[key] if isinstance(key, int) and 0 <= key < len(container) else None
    return container.get(key) if isinstance(container, dict) else None


# --- what a place expects --------------------------------------------------------------------

_NOUNS = {"issuers": "issuer", "backends": "backend", "secrets": "secret", "hooks": "hook",
          "webhooks": "webhook", "targets": "target"}


def _unwrap(tp: Any) -> Any:
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _members(tp: Any) -> list[Any]:
    tp = _unwrap(tp)
    if typing.get_origin(tp) in (Union, types.UnionType):
        out = []
        for member in typing.get_args(tp):
            if member is not type(None):
                out.extend(_members(member))
        return out
    return [tp]


def _node_of(annotation: Any, name: str) -> _Node:
    if annotation is Any:
        return _Node("open")
    members = _members(annotation)
    models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
    for member in members:
        origin = typing.get_origin(member)
        args = typing.get_args(member)
        if origin is dict and len(args) == 2 and models == [] and name in _NOUNS:
            return _Node("named", item=args[1], noun=_NOUNS[name], annotation=annotation)
        if origin is list and args:
            return _Node("list", item=args[0], noun=_NOUNS.get(name, "entry"), annotation=annotation)
    if len(models) == 1:
        return _Node("model", model=models[0], annotation=annotation)
    if any(typing.get_origin(m) in (dict, Mapping) or m is Any for m in members):
        return _Node("open", annotation=annotation)
    return _Node("value", annotation=annotation)


# --- values ----------------------------------------------------------------------------------

def _accepts_text(annotation: Any) -> bool:
    """Whether a string may be handed to this field as it is (a validator that runs first, such
    as the window's "always", may turn it into something else)."""
    if typing.get_origin(annotation) is typing.Annotated and any(
            type(meta).__name__ in ("BeforeValidator", "PlainValidator", "WrapValidator")
            for meta in typing.get_args(annotation)[1:]):
        return True
    for member in _members(annotation):
        if member in (str, Path, timedelta, Any) or typing.get_origin(member) is typing.Literal:
            return True
        if typing.get_origin(member) is typing.Annotated and _accepts_text(member):
            return True
    return False


def _structured(annotation: Any) -> bool:
    for member in _members(annotation):
        if typing.get_origin(member) in (list, dict, tuple, set, Mapping) or member in (list, dict):
            return True
        if isinstance(member, type) and issubclass(member, BaseModel):
            return True
    return False


def _value(raw: str, node: _Node, current: Any, name: str) -> Any:
    """The value a variable gives (see the module's rules)."""
    text = raw.strip()
    looks_json = text[:1] in ("[", "{")
    annotation = node.annotation
    if annotation is not None:                 # a field the program knows
        if not _structured(annotation):
            return raw                         # its own validation reads the string
        if looks_json:
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                if _accepts_text(annotation):
                    return raw
                raise _Problem(f"not valid JSON ({exc.msg} at column {exc.colno}); a list or a table"
                               " is given as JSON, e.g. '[\"7d\", \"3d\"]'") from None
        if _accepts_text(annotation):
            return raw
        example = "'[\"7d\", \"3d\"]'" if node.kind == "list" else "'{\"key\": \"value\"}'"
        what = "a list" if node.kind == "list" else "a table"
        raise _Problem(f"expects {what}, given as JSON, e.g. {example}")
    # a provider's setting: the file's value says what type it is
    if isinstance(current, bool):
        return {"true": True, "false": False}.get(text.lower(), raw)
    if isinstance(current, (int, float)):
        number = _toml_scalar(text)
        return number if isinstance(number, (int, float)) and not isinstance(number, bool) else raw
    if isinstance(current, str):
        return raw
    if isinstance(current, (list, dict)) or looks_json:
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            if current is None:
                return raw
            kind = "list" if isinstance(current, list) else "table"
            raise _Problem(f"not valid JSON ({exc.msg} at column {exc.colno}); the file has a {kind}"
                           " here, and a list or a table is given as JSON") from None
    scalar = _toml_scalar(text)
    return scalar if scalar is not None else raw


def _toml_scalar(text: str) -> bool | int | float | None:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if not re.fullmatch(r"[+-]?(\d[\d_]*)(\.\d[\d_]*)?([eE][+-]?\d+)?|0x[0-9A-Fa-f_]+|0o[0-7_]+|0b[01_]+", text):
        return None
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return None
    return value if isinstance(value, (int, float)) else None
