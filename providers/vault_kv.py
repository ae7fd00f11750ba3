"""Entry point of the ``vault_kv`` backend (``providers.vault_kv:VaultKVBackend``).

The implementation lives in :mod:`providers.vault`; see docs/backends/vault.md.
"""

from providers.vault.backend import VaultKVBackend, VaultTarget

__all__ = ["VaultKVBackend", "VaultTarget"]
