"""OpenBao server fixtures (Vault KV backend tests)."""
