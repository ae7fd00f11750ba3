"""Turn pydantic validation failures into ConfigErrors that name the field path.

Providers validate their own config section and target entries with a pydantic model and call
:func:`parse` so every message reads the same way: ``backends.vault.url: Field required``, and an
unknown key says what was probably meant: ``backends.local.directori: unknown field (did you mean
'directory'?)``. A model check that finds several problems raises one ``ValueError`` with the
problems joined by ``"; "``; each becomes a line of its own here.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from typing import Any, Iterable, Mapping, TypeVar, Union

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.fields import FieldInfo

from rotator.errors import ConfigError

M = TypeVar("M", bound=BaseModel)

#: pydantic's label for a member of a union in an error location: "str", "HookSpec",
#: "function-after[_kind(), HookSpec]", "list[str]", "dict[str,any]", "literal['always']"...
_MEMBER_LABEL = re.compile(r"^([a-z][a-z0-9_-]*\[.*\]|[a-z]+|[A-Z][A-Za-z0-9_]*)$")


class StrictModel(BaseModel):
    """Base for config models: unknown keys are refused, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def location(parts: Iterable[Any], prefix: str = "") -> str:
    """('secrets', 0, 'targets', 1, 'path') -> 'secrets[0].targets[1].path'."""
    out = prefix
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The one of ``choices`` closest to ``word`` (difflib), when one is close enough."""
    close = difflib.get_close_matches(str(word), sorted(set(map(str, choices))), n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'directory'?)`` when ``word`` is close to one of ``choices``, else ``""``."""
    close = closest(word, choices)
    return f" (did you mean {close!r}?)" if close else ""


def describe(error: ValidationError, prefix: str = "", model: type[BaseModel] | None = None) -> list[str]:
    """One 'path: problem' line per problem, without echoing input values.

    ``model`` (the one that was validated) lets an unknown key be answered with the closest field
    name, and lets the labels pydantic puts in a location for the members of a union
    (``hooks[1].function-after[_kind(), HookSpec].timeout``) be left out of the path. When a value
    fails every member of a union and one member got further (a table with a bad field where a
    string or a table is accepted), only that member's problems are reported.
    """
    items = []
    for item in error.errors(include_input=False, include_url=False):
        loc = tuple(item["loc"])
        shown, parent, labels = _walk(model, loc) if model is not None else (loc, None, ())
        items.append((loc, shown, parent, labels, item))
    deeper = {loc[:at] for loc, _, _, labels, _ in items for at in labels if at < len(loc) - 1}
    lines: list[str] = []
    for loc, shown, parent, labels, item in items:
        if labels and labels[-1] == len(loc) - 1 and loc[:labels[-1]] in deeper:
            continue            # "should be a valid string" when the table form got further
        where = location(shown, prefix)
        if item["type"] == "extra_forbidden":
            hint = did_you_mean(str(loc[-1]), parent.model_fields) if parent is not None else ""
            lines.append(f"{where}: unknown field{hint}")
            continue
        for part in _messages(item):
            # "field: problem" parts of a model's own check join the path ("hooks[0].url: ...")
            match = re.match(r"^([a-z_][a-z0-9_]*(\[\d+\])?): (.*)$", part, re.DOTALL)
            if match and where != "(top level)":
                lines.append(f"{where}.{match.group(1)}: {match.group(3)}")
            elif where == "(top level)" and not prefix:
                lines.append(part)
            else:
                lines.append(f"{where}: {part}")
    return list(dict.fromkeys(lines))


def _messages(item: Mapping[str, Any]) -> list[str]:
    message = str(item["msg"])
    if item["type"] == "value_error":
        message = message.removeprefix("Value error, ")
        return [part.strip() for part in message.split("; ") if part.strip()]
    if item["type"] == "assertion_error":
        return [message.removeprefix("Assertion failed, ")]
    return [message]


def parse(model: type[M], raw: Mapping[str, Any], where: str) -> M:
    """Validate ``raw`` with ``model``; on failure raise ConfigError naming ``where`` + field."""
    try:
        return model.model_validate(dict(raw))
    except ValidationError as exc:
        raise ConfigError("\n".join(describe(exc, where, model))) from None


# --- following an error's location through the model ---------------------------------------------

def _walk(model: type[BaseModel], loc: tuple[Any, ...]
          ) -> tuple[tuple[Any, ...], type[BaseModel] | None, tuple[int, ...]]:
    """The location without union-member labels, the model that holds the last key (for a "did
    you mean"), and the positions in ``loc`` that were member labels."""
    shown: list[Any] = []
    labels: list[int] = []
    tp: Any = model
    discriminator: str | None = None
    parent: type[BaseModel] | None = None
    for at, part in enumerate(loc):
        tp, found = _unwrap(tp)
        discriminator = found or discriminator
        members = _members(tp)
        if members is not None:
            chosen = _member(members, part, discriminator)
            if chosen is not None:                  # a label: not part of the path
                labels.append(at)
                tp, discriminator = chosen, None
                continue
            models = [m for m in members if _model(m) is not None]
            tp = models[0] if len(models) == 1 else Any
            tp, _ = _unwrap(tp)
        parent = None
        cls = _model(tp)
        if cls is not None and isinstance(part, str):
            parent = cls
            field = cls.model_fields.get(part)
            shown.append(part)
            if field is None:
                tp, discriminator = Any, None
            else:
                tp, discriminator = field.annotation, field.discriminator if isinstance(
                    field.discriminator, str) else None
                tp = _with_metadata(tp, field)
            continue
        shown.append(part)
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin in (list, tuple, set, frozenset) and args and isinstance(part, int):
            tp = args[0]
        elif origin in (dict, Mapping) and len(args) == 2:
            tp = args[1]
        else:
            tp = Any
        discriminator = None
    return tuple(shown), parent, tuple(labels)


def _with_metadata(tp: Any, field: FieldInfo) -> Any:
    return typing.Annotated[(tp, *field.metadata)] if field.metadata else tp


def _unwrap(tp: Any) -> tuple[Any, str | None]:
    discriminator = None
    while typing.get_origin(tp) is typing.Annotated:
        args = typing.get_args(tp)
        for meta in args[1:]:
            if isinstance(meta, FieldInfo) and isinstance(meta.discriminator, str):
                discriminator = meta.discriminator
        tp = args[0]
    return tp, discriminator


def _members(tp: Any) -> list[Any] | None:
    if typing.get_origin(tp) in (Union, types.UnionType):
        return [_unwrap(m)[0] for m in typing.get_args(tp) if m is not type(None)]
    return None


def _model(tp: Any) -> type[BaseModel] | None:
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _member(members: list[Any], part: Any, discriminator: str | None) -> Any:
    """The member of a union that ``part`` labels, or None when ``part`` is not a label."""
    if not isinstance(part, str):
        return None
    if discriminator is not None:
        for member in members:
            cls = _model(member)
            field = cls.model_fields.get(discriminator) if cls is not None else None
            if field is not None and part in typing.get_args(field.annotation):
                return member
    if not _MEMBER_LABEL.match(part):
        return None
    for member in members:
        cls = _model(member)
        if cls is not None and re.search(rf"\b{re.escape(cls.__name__)}\b", part):
            return member
    for member in members:
        if _model(member) is None:
            name = getattr(typing.get_origin(member) or member, "__name__", "")
            if name and part.lower().startswith(name.lower()):
                return member
    if re.match(r"^[a-z][a-z0-9_-]*\[", part) or part in ("str", "int", "float", "bool", "none", "dict", "list"):
        return Any                               # some other member: a label all the same
    return None


# --- plain http ----------------------------------------------------------------------------------

def plain_http_host(url: str) -> str | None:
    """The host of an ``http://`` URL that is not loopback (127.0.0.0/8, ::1, localhost), i.e.
    one a credential sent to it would cross the network unencrypted to; None otherwise."""
    import ipaddress
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
    except ValueError:
        return None
    if parts.scheme.lower() != "http" or not host:
        return None
    name = host.rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return None
    try:
        if ipaddress.ip_address(name).is_loopback:
            return None
    except ValueError:
        pass
    return host


def insecure_http_problem(url: str, field: str, sends: str) -> str | None:
    """The refusal for plain http to a remote host ("field: ..."), or None when the URL is fine."""
    host = plain_http_host(url)
    if host is None:
        return None
    return (f"{field}: plain http:// to {host} would send {sends} unencrypted: use https://, or set"
            " insecure_http = true if the network in between is trusted (it then warns at every start)")


def insecure_http_warning(url: str, where: str, sends: str) -> str | None:
    """The warning for plain http to a remote host allowed with ``insecure_http = true``."""
    host = plain_http_host(url)
    if host is None:
        return None
    return f"{where}: insecure_http = true: {sends} travels unencrypted to {host} ({url})"
