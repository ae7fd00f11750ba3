"""Backend ``vault_kv``: Vault / OpenBao KV v2 (or v1) through hvac. See docs/backends/vault.md.

One KV secret per target. Its data holds the application's field (``api_key``), any other fields
an application put there (kept by every write) and rotator's section: pending, previous and, on a
primary, the rotation record. Every KV v2 write is a check-and-set with ``cas`` = the version the
caller read (``cas=0`` to create), so the secret itself is the lock between runners. The version
token is the KV version number as a string.

Versions are immutable, so the data of the version a caller read is all a write needs: the backend
keeps the last version it read or wrote per target and builds the next write from it without a
second read (on a miss it reads that exact version). ``custom_metadata`` describes the current key
(id, expiry, rotation id, fingerprint; never a value) and is rewritten, with one extra call, only
when that description changes.

KV v1 has no check-and-set: a v1 backend declares ``holds_record = False`` and only serves as a
secondary (``deploy`` is a read and, when something changed, one write).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Any, Callable, Mapping

from rotator.errors import BackendError, BackendPermissionError, Conflict, CorruptPayload, SecretMissing
from rotator.interfaces import Finding, ProviderContext
from rotator.models import BackendCapabilities, KeyRef, RotationRecord, Secret, Snapshot
from rotator.redact import redact
from rotator.validation import parse
from rotator.values import Layout

from rotator_providers.addresses import normal_url
from rotator_providers.document import LayoutMismatch, frozen_fields, layout_of
from rotator_providers.vault.connection import Call, Connection, api_url, route_problem
from rotator_providers.vault.payload import (
    METADATA_PREFIX,
    Document,
    PayloadError,
    content_version,
    describe,
    merged_custom_metadata,
    meta_fields,
)
from rotator_providers.vault.settings import VaultTargetSpec, load_settings

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class VaultTarget:
    mount: str
    path: str
    field: str
    namespace: str | None = None
    kv_version: int = 2
    #: (part, JSON field) pairs when the value has several parts; None for a plain value.
    fields: tuple[tuple[str, str], ...] | None = None
    #: The server's address (the backend's ``url``), set by the backend's ``target()`` for
    #: :attr:`addresses`; not part of equality or hashing.
    url: str = dataclasses.field(default="", compare=False, repr=False)

    @property
    def label(self) -> str:
        return f"vault:{self._ns}{self.mount}/{self.path}"

    @property
    def layout(self) -> Layout:
        return layout_of(self.field, self.fields)

    @property
    def addresses(self) -> frozenset[tuple[str, ...]]:
        """The secret this target addresses (see :class:`rotator.interfaces.Target`): the server
        (scheme, host and port; no trailing slash) and the path namespace/mount/path, slashes
        trimmed. The KV version is left out (v1 and v2 at one mount and path are one secret), and
        so is the boundary between namespace, mount and path: Vault reads ``/v1/team/secret/...``
        without a namespace header as mount ``secret`` of namespace ``team``."""
        where = "/".join(part.strip("/") for part in (self.namespace or "", self.mount, self.path)
                         if part.strip("/"))
        return frozenset({("vault", normal_url(self.url), where)})

    @property
    def data_path(self) -> str:
        """The API path a policy names (relative to the namespace, as policies inside it are)."""
        middle = "data/" if self.kv_version == 2 else ""
        return f"{self.mount}/{middle}{self.path}"

    @property
    def metadata_path(self) -> str:
        return f"{self.mount}/metadata/{self.path}"

    @property
    def _ns(self) -> str:
        return f"{self.namespace}/" if self.namespace else ""


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One version of a secret as last seen: ``data`` None means that version is deleted."""

    version: int
    data: Mapping[str, Any] | None = dataclasses.field(repr=False)
    custom_metadata: Mapping[str, str]


class VaultKVBackend:
    """Backend ``vault_kv``: a KV v2 (default) or KV v1 secret per target."""

    def __init__(self, name: str, settings: Mapping[str, Any], context: ProviderContext, *,
                 session: Any = None) -> None:
        """``session``: a ``requests.Session`` for hvac (tests inject transports through it)."""
        self.name = name
        where = f"backends.{name}"
        self._settings = load_settings(settings, where)
        v2 = self._settings.kv_version == 2
        self.capabilities = BackendCapabilities(
            holds_record=v2, keeps_previous=True, extra={"kv_version": self._settings.kv_version},
        )
        self._connection = Connection(name, self._settings, context, session)
        self._lock = threading.RLock()
        self._cache: dict[tuple[str, str], _Entry] = {}
        self._mounts_checked: set[str] = set()
        #: credential references by field path (the core checks them before any effect), and
        #: what the section allows but should not (logged at start, shown by ``rotator check``)
        self.references = self._settings.references(where)
        self.warnings = self._settings.warnings(where)

    # --- the Protocol ---------------------------------------------------------------------------

    def target(self, spec: Mapping[str, Any]) -> VaultTarget:
        entry = {key: value for key, value in spec.items() if key != "backend"}
        parsed = parse(VaultTargetSpec, entry, f"backends.{self.name} target")
        return VaultTarget(mount=parsed.mount_point or self._settings.mount_point, path=parsed.path,
                           field=parsed.field, namespace=self._settings.namespace,
                           kv_version=self._settings.kv_version, fields=frozen_fields(parsed.fields),
                           url=self._settings.url)

    def read(self, target: VaultTarget) -> Snapshot:
        if target.kv_version == 1:
            data = self._read_v1("read", target)
            if data is None:
                return Snapshot()
            doc = self._parse(target, data)
            return Snapshot(version=content_version(data), current=doc.current, previous=doc.previous)
        entry = self._fetch("read", target)
        if entry is None or entry.data is None:
            return Snapshot()
        doc = self._parse(target, entry.data)
        return Snapshot(version=str(entry.version), current=doc.current, pending=doc.pending,
                        previous=doc.previous, record=self._record(target, doc))

    def write_record(self, target: VaultTarget, record: RotationRecord, *, expect: str | None) -> str:
        return self._commit("write_record", target, record, expect, lambda doc: doc)

    def stage(self, target: VaultTarget, value: Secret, record: RotationRecord, *,
              expect: str | None) -> str:
        return self._commit("stage", target, record, expect, lambda doc: doc.evolve(pending=value))

    def promote(self, target: VaultTarget, record: RotationRecord, *, expect: str) -> str:
        def promoted(doc: Document) -> Document:
            if doc.pending is None:
                raise BackendError(f"{target.label}: nothing is pending, so there is nothing to promote",
                                   provider=self.name)
            return doc.promoted()

        return self._commit("promote", target, record, expect, promoted)

    def discard_pending(self, target: VaultTarget, record: RotationRecord, *, expect: str) -> str:
        return self._commit("discard_pending", target, record, expect, lambda doc: doc.evolve(pending=None))

    def deploy(self, target: VaultTarget, current: Secret, previous: Secret | None, meta: KeyRef) -> None:
        ref = describe(current, meta)
        if target.kv_version == 1:
            self._deploy_v1(target, current, previous, ref)
        else:
            self._deploy_v2(target, current, previous, ref)

    def delete(self, target: VaultTarget) -> None:
        path = target.data_path if target.kv_version == 1 else target.metadata_path
        self._connection.request(Call("delete", target, "delete", path), lambda c: c.adapter.delete(api_url(path)))
        self._forget(target)

    def close(self) -> None:
        with self._lock:
            self._cache.clear()
        self._connection.close()

    def check_access(self, target: VaultTarget, *, primary: bool, exists: bool) -> list[Finding]:
        """For ``rotator check`` (:class:`rotator.interfaces.BackendAccessCheck`), read-only: the
        mount's kind and KV version (``sys/internal/ui/mounts``), the token's capabilities on the
        paths a write uses (``sys/capabilities-self``: a query, nothing is written) and, on a KV v2
        primary, the secret's metadata (``cas_required``)."""
        findings: list[Finding] = []
        mount = self._mount_finding(target)
        findings.append(mount)
        caps = self._capabilities(target)
        if isinstance(caps, Finding):
            findings.append(caps)
            data_caps: set[str] | None = None
            meta_caps: set[str] | None = None
        else:
            data_caps, meta_caps = caps.get(target.data_path), caps.get(target.metadata_path)
        need = ("update",) if exists else ("create", "update")     # created now, updated by later writes
        if not exists and not self._settings.create_if_missing:
            findings.append(Finding("write", "fail", f"{target.label} does not exist and create_if_missing is"
                                                     " false; create it or set create_if_missing = true"))
        elif data_caps is not None:
            findings.append(_capability_finding("write", data_caps, need, target.data_path, self._settings.namespace))
        if target.kv_version == 2 and meta_caps is not None and (self._settings.custom_metadata or not exists):
            found = _capability_finding("metadata", meta_caps, ("update",), target.metadata_path,
                                        self._settings.namespace)
            if found.status == "fail":     # best effort: the key is written all the same
                found = Finding("metadata", "warn", found.detail + "; without it the key's description"
                                " (custom_metadata) and cas_required are not set")
            findings.append(found)
        if primary:
            findings.append(self._cas_finding(target, mount, exists, meta_caps))
        return findings

    # --- KV v2 writes ---------------------------------------------------------------------------

    def _commit(self, op: str, target: VaultTarget, record: RotationRecord, expect: str | None,
                change: Callable[[Document], Document]) -> str:
        """A primary write: the data of version ``expect``, changed, with ``record``; cas=expect."""
        if target.kv_version != 2:
            raise BackendError(
                f"{target.label}: KV v1 has no check-and-set, so it cannot hold the rotation record;"
                " use this backend as a secondary only", provider=self.name)
        if expect is None:
            if not self._settings.create_if_missing:
                raise SecretMissing(f"{target.label}: does not exist and create_if_missing is false",
                                    provider=self.name)
            self._check_mount(op, target)
            base, created = self._deleted(target), True
        else:
            base, created = self._version(op, target, expect), False
        for attempt in (0, 1):
            doc = change(self._parse(target, base.data if base else None))
            data = self._encode(target, doc.evolve(record=record.to_dict()))
            cas = base.version if base else 0
            try:
                version = self._put(op, target, data, cas)
                break
            except Conflict:
                if not created or attempt:
                    raise
                latest = self._fetch(f"{op}.read", target)      # a deleted latest version is "absent"
                if latest is None or latest.data is not None or latest.version == cas:
                    raise
                base = latest
        entry = _Entry(version, data, dict(base.custom_metadata) if base else {})
        self._remember(target, entry)
        self._sync_metadata(op, target, entry, describe(doc.current, record.current),
                            created=created, primary=True)
        return str(version)

    def _deploy_v2(self, target: VaultTarget, current: Secret, previous: Secret | None,
                   ref: KeyRef | None) -> None:
        """Read-modify-write with cas = the version read; no write when nothing would change."""
        base = self._cached(target)
        fresh = base is None
        if fresh:
            base = self._fetch("deploy.read", target)
        conflicts = 0
        while True:
            exists = base is not None and base.data is not None
            if not exists:
                if not self._settings.create_if_missing:
                    raise SecretMissing(f"{target.label}: does not exist and create_if_missing is false",
                                        provider=self.name)
                self._check_mount("deploy", target)
            doc = self._parse(target, base.data if exists else None)
            data = self._encode(target, doc.evolve(current=current, previous=previous))
            if exists and data == base.data:
                if not fresh:             # the cache says "nothing to do": confirm with a read
                    base, fresh = self._fetch("deploy.read", target), True
                    continue
                self._sync_metadata("deploy", target, base, ref, created=False, primary=False)
                return
            cas = base.version if base is not None else 0
            try:
                version = self._put("deploy", target, data, cas)
            except Conflict:
                conflicts += 1
                if conflicts > 1:
                    raise
                base, fresh = self._fetch("deploy.read", target), True
                continue
            entry = _Entry(version, data, dict(base.custom_metadata) if base else {})
            self._remember(target, entry)
            self._sync_metadata("deploy", target, entry, ref, created=not exists, primary=False)
            return

    def _put(self, op: str, target: VaultTarget, data: Mapping[str, Any], cas: int) -> int:
        call = Call(op, target, "create" if cas == 0 else "update", target.data_path, cas)
        url = api_url(target.data_path)
        body = {"options": {"cas": cas}, "data": dict(data)}
        try:
            response = self._connection.request(call, lambda c: self._connection.send(c, "post", url, json=body))
        except Conflict:
            with self._lock:      # what we remembered is stale now
                known = self._cache.get((target.mount, target.path))
                if known is not None and known.version == cas:
                    del self._cache[(target.mount, target.path)]
            raise
        return int(response["data"]["version"])

    def _sync_metadata(self, op: str, target: VaultTarget, entry: _Entry, ref: KeyRef | None, *,
                       created: bool, primary: bool) -> None:
        """Describe the current key in custom_metadata (one call, only when the text changes);
        on creation also set max_versions and, for a primary, cas_required.

        Best effort: the key is already written, so a failure here is logged, not raised, and
        repaired by the next write that finds the description stale."""
        params: dict[str, Any] = {}
        if created:
            if self._settings.max_versions:
                params["max_versions"] = self._settings.max_versions
            if primary:
                params["cas_required"] = True
        wanted = None
        if self._settings.custom_metadata and not _poorer(ref, entry.custom_metadata):
            wanted = merged_custom_metadata(entry.custom_metadata, ref)
            if wanted != dict(entry.custom_metadata):
                params["custom_metadata"] = wanted
        if not params:
            return
        url = api_url(target.metadata_path)
        try:
            self._connection.request(Call(f"{op}.metadata", target, "update", target.metadata_path),
                                     lambda c: self._connection.send(c, "post", url, json=params))
        except BackendError as exc:
            log.warning("%s: %s: metadata not updated (the key itself was written): %s",
                        self.name, target.label, redact(str(exc)))
            return
        if "custom_metadata" in params:
            with self._lock:
                if self._cache.get((target.mount, target.path)) == entry:
                    self._cache[(target.mount, target.path)] = dataclasses.replace(entry, custom_metadata=wanted)

    # --- KV v2 reads and the version cache ----------------------------------------------------

    def _fetch(self, op: str, target: VaultTarget, version: int | None = None) -> _Entry | None:
        """Read the latest (or one) version; None when there is none. Remembers what it saw."""
        url = api_url(target.data_path)
        params = {"version": version} if version is not None else None

        def call(c: Any) -> Any:
            try:
                return self._connection.send(c, "get", url, params=params, deleted_ok=True)
            except _invalid_path() as exc:
                if route_problem(exc):
                    raise
                return None

        response = self._connection.request(Call(op, target, "read", target.data_path), call)
        if not response:
            if version is None:
                self._forget(target)
            return None
        body = response.get("data") or {}
        meta = body.get("metadata") or {}
        entry = _Entry(int(meta.get("version") or 0), body.get("data"), dict(meta.get("custom_metadata") or {}))
        if version is None:
            self._remember(target, entry)
        return entry

    def _version(self, op: str, target: VaultTarget, expect: str) -> _Entry:
        """The data of version ``expect``: from the cache, else read that exact version."""
        try:
            number = int(expect)
        except (TypeError, ValueError):
            raise BackendError(f"{target.label}: {expect!r} is not a KV v2 version this backend returned",
                               provider=self.name) from None
        cached = self._cached(target)
        if cached is not None and cached.version == number:
            return cached
        entry = self._fetch(f"{op}.read", target, version=number)
        if entry is None or entry.data is None:
            raise Conflict(f"{target.label}: version {number} is no longer readable (deleted or pruned),"
                           " so it is not the latest", provider=self.name)
        return entry

    def _cached(self, target: VaultTarget) -> _Entry | None:
        with self._lock:
            entry = self._cache.get((target.mount, target.path))
        return entry if entry is not None and entry.data is not None else None

    def _deleted(self, target: VaultTarget) -> _Entry | None:
        """A cached 'latest version is deleted' entry: creating over it needs cas = its version."""
        with self._lock:
            entry = self._cache.get((target.mount, target.path))
        return entry if entry is not None and entry.data is None else None

    def _remember(self, target: VaultTarget, entry: _Entry) -> None:
        with self._lock:
            self._cache[(target.mount, target.path)] = entry
            if len(self._cache) > 4096:
                self._cache.pop(next(iter(self._cache)))

    def _forget(self, target: VaultTarget) -> None:
        with self._lock:
            self._cache.pop((target.mount, target.path), None)

    # --- KV v1 --------------------------------------------------------------------------------

    def _read_v1(self, op: str, target: VaultTarget) -> Mapping[str, Any] | None:
        url = api_url(target.data_path)

        def call(c: Any) -> Any:
            try:
                return self._connection.send(c, "get", url)
            except _invalid_path() as exc:
                if route_problem(exc):
                    raise
                return None

        response = self._connection.request(Call(op, target, "read", target.data_path), call)
        return (response or {}).get("data") if response else None

    def _deploy_v1(self, target: VaultTarget, current: Secret, previous: Secret | None,
                   ref: KeyRef | None) -> None:
        data = self._read_v1("deploy.read", target)
        if data is None:
            if not self._settings.create_if_missing:
                raise SecretMissing(f"{target.label}: does not exist and create_if_missing is false",
                                    provider=self.name)
            self._check_mount("deploy", target)
        doc = self._parse(target, data)
        meta = meta_fields(ref) if self._settings.custom_metadata else None
        wanted = self._encode(target, doc.evolve(current=current, previous=previous, meta=meta or None))
        if wanted == data:
            return
        capability = "create" if data is None else "update"
        url = api_url(target.data_path)
        self._connection.request(Call("deploy", target, capability, target.data_path),
                                 lambda c: self._connection.send(c, "post", url, json=wanted))

    # --- shared -------------------------------------------------------------------------------

    def _parse(self, target: VaultTarget, data: Mapping[str, Any] | None) -> Document:
        try:
            return Document.parse(data, target.layout)
        except PayloadError as exc:
            raise CorruptPayload(f"{target.label}: {exc}", provider=self.name) from None

    def _encode(self, target: VaultTarget, doc: Document) -> dict[str, Any]:
        """The KV data to write (no section that would hold only its format)."""
        try:
            return doc.encode(target.layout, section_always=False)
        except LayoutMismatch as exc:
            raise BackendError(f"{target.label}: {exc}", provider=self.name) from None

    def _record(self, target: VaultTarget, doc: Document) -> RotationRecord | None:
        try:
            return doc.rotation_record()
        except PayloadError as exc:
            raise CorruptPayload(f"{target.label}: {exc}", provider=self.name) from None

    def _check_mount(self, op: str, target: VaultTarget) -> None:
        """Before creating a secret, once per mount: is it KV, of the configured version?

        A KV v2 backend pointed at a v1 mount would otherwise write ``<mount>/data/<path>`` as a
        plain v1 secret that no application reads. A token that may not ask is not an error."""
        if target.mount in self._mounts_checked:
            return
        url = api_url(f"/v1/sys/internal/ui/mounts/{target.mount}")
        try:
            response = self._connection.request(
                Call(f"{op}.mount_check", target, "read", f"sys/internal/ui/mounts/{target.mount}"),
                lambda c: c.adapter.get(url))
        except BackendError as exc:
            if exc.transient:
                raise
            log.debug("%s: cannot check mount %s: %s", self.name, target.mount, exc)
            self._mounts_checked.add(target.mount)
            return
        data = (response or {}).get("data") or {}
        kind = data.get("type")
        version = str((data.get("options") or {}).get("version") or "1")
        where = f"{target.label}: mount '{target.mount}'"
        if kind not in ("kv", "generic"):
            raise BackendError(f"{where} is a {kind or 'unknown'} secrets engine, not KV", provider=self.name)
        if version != str(self._settings.kv_version):
            raise BackendError(f"{where} is KV v{version} but backends.{self.name}.kv_version is"
                               f" {self._settings.kv_version}; set kv_version = {version}", provider=self.name)
        self._mounts_checked.add(target.mount)


    # --- rotator check ------------------------------------------------------------------------

    def _mount_finding(self, target: VaultTarget) -> Finding:
        """Is the mount KV, of the configured version? ``unknown`` when the token may not ask."""
        url = api_url(f"/v1/sys/internal/ui/mounts/{target.mount}")
        try:
            response = self._connection.request(
                Call("check.mount", target, "read", f"sys/internal/ui/mounts/{target.mount}"),
                lambda c: c.adapter.get(url))
        except BackendPermissionError:
            return Finding("mount", "unknown", f"the token may not read sys/internal/ui/mounts/{target.mount}:"
                                               " cannot tell the mount's kind and KV version")
        except BackendError as exc:
            return Finding("mount", "fail" if exc.transient else "unknown", redact(str(exc)))
        data = (response or {}).get("data") or {}
        kind = data.get("type")
        version = str((data.get("options") or {}).get("version") or "1")
        where = f"mount '{target.mount}'"
        if kind not in ("kv", "generic"):
            return Finding("mount", "fail", f"{where} is a {kind or 'unknown'} secrets engine, not KV")
        if version != str(self._settings.kv_version):
            return Finding("mount", "fail", f"{where} is KV v{version} but backends.{self.name}.kv_version is"
                                            f" {self._settings.kv_version}; set kv_version = {version}")
        return Finding("mount", "ok", f"{where} is KV v{version}")

    def _capabilities(self, target: VaultTarget) -> dict[str, set[str]] | Finding:
        """The token's capabilities on the data (and metadata) path: ``sys/capabilities-self``."""
        paths = [target.data_path] + ([target.metadata_path] if target.kv_version == 2 else [])
        try:
            response = self._connection.request(
                Call("check.capabilities", target, "update", "sys/capabilities-self"),
                lambda c: c.sys.get_capabilities(paths=paths))
        except BackendError as exc:
            status = "fail" if exc.transient else "unknown"
            return Finding("write", status, f"cannot ask Vault for the token's capabilities: {redact(str(exc))}")
        data = (response or {}).get("data") or response or {}
        return {path: {str(c) for c in (data.get(path) or ())} for path in paths}

    def _cas_finding(self, target: VaultTarget, mount: Finding, exists: bool, meta_caps: set[str] | None) -> Finding:
        """A primary's compare-and-swap: KV v2's check-and-set, plus what the metadata says."""
        if target.kv_version != 2:
            return Finding("cas", "fail", "KV v1 has no check-and-set: it cannot hold the rotation record")
        if mount.status == "fail":
            return Finding("cas", "fail", mount.detail)
        base = "KV v2: every primary write is a check-and-set (cas = the version read)"
        if not exists:
            return Finding("cas", "ok", base + "; the first write creates it with cas_required set")
        if meta_caps is None or not ({"read", "root"} & meta_caps):
            return Finding("cas", "ok", base)
        try:
            response = self._connection.request(
                Call("check.metadata", target, "read", target.metadata_path),
                lambda c: c.secrets.kv.v2.read_secret_metadata(path=target.path, mount_point=target.mount))
        except BackendError as exc:
            return Finding("cas", "ok", f"{base} (metadata not read: {redact(str(exc))})")
        meta = (response or {}).get("data") or {}
        if meta.get("cas_required"):
            return Finding("cas", "ok", base + "; cas_required is set")
        return Finding("cas", "ok", base + "; cas_required is off (rotator sends cas anyway; set it so every"
                                           " writer must)")


# --- helpers -------------------------------------------------------------------------------------

def _poorer(ref: KeyRef | None, existing: Mapping[str, str]) -> bool:
    """``ref`` knows only the fingerprint of a key the metadata already describes: keep that."""
    bare = ref is not None and ref.key_id is None and ref.expires_on is None and ref.rotation_id is None
    return bare and existing.get(METADATA_PREFIX + "fingerprint") == ref.fingerprint


def _invalid_path() -> type[Exception]:
    import hvac.exceptions

    return hvac.exceptions.InvalidPath


def _capability_finding(check: str, caps: set[str], need: tuple[str, ...], path: str,
                        namespace: str | None) -> Finding:
    """What ``sys/capabilities-self`` said about ``path``, as a finding: every capability of
    ``need`` there, or which are missing."""
    inside = f" in namespace '{namespace}'" if namespace else ""
    shown = ", ".join(sorted(caps)) or "none"
    missing = [] if "root" in caps else [c for c in need if "deny" in caps or c not in caps]
    if not missing:
        return Finding(check, "ok", f"the token may {' and '.join(need)} '{path}'{inside} ({shown})")
    return Finding(check, "fail", f"no write permission: the token has [{shown}] on '{path}'{inside}; rotator"
                                  f" needs {' and '.join(repr(c) for c in missing)} there (add it to the token's"
                                  " policy)")
