"""What a target addresses, for comparing two spellings of one place (see ``Target.addresses``)."""

from __future__ import annotations

from urllib.parse import urlsplit


def normal_url(url: str) -> str:
    """``scheme://host:port/path`` with the scheme and host in lower case, the default port
    spelled out and no trailing slash: two spellings of one server compare equal."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    try:
        port = parts.port or {"http": 80, "https": 443}.get(scheme)
    except ValueError:                      # a port that is not a number: compare it as written
        return f"{scheme}://{parts.netloc.lower()}{parts.path.rstrip('/')}"
    host = (parts.hostname or "").lower()
    host = f"[{host}]" if ":" in host else host       # IPv6
    return f"{scheme}://{host}:{port}{parts.path.rstrip('/')}"
