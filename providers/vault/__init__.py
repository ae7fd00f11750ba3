"""Vault / OpenBao KV backend (``type = "vault_kv"``). hvac is imported on first use only."""

from rotator_providers.vault.backend import VaultKVBackend, VaultTarget

__all__ = ["VaultKVBackend", "VaultTarget"]
