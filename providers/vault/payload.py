"""Vault-specific parts of a KV secret's data; the document itself is :mod:`providers.document`
(shared with the file backend). Nothing here does I/O.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

from rotator.models import KeyRef

from rotator_providers.document import Document, PayloadError, describe, meta_fields

__all__ = ["METADATA_PREFIX", "Document", "PayloadError", "content_version", "describe",
           "merged_custom_metadata", "meta_fields"]

METADATA_PREFIX = "rotator_"


def merged_custom_metadata(existing: Mapping[str, Any] | None, ref: KeyRef | None) -> dict[str, str]:
    """``existing`` with rotator's keys (``rotator_*``) replaced; other people's keys kept."""
    out = {k: str(v) for k, v in (existing or {}).items() if not str(k).startswith(METADATA_PREFIX)}
    out.update({METADATA_PREFIX + key: value for key, value in meta_fields(ref).items()})
    return out


def content_version(data: Mapping[str, Any]) -> str:
    """KV v1 has no versions: a digest of the content stands in for one."""
    raw = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return "sha256:" + hashlib.sha256(raw).hexdigest()[:32]

