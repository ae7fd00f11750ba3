"""QuivaWorks: the issuer client for its API-key endpoints, and an emulator of them for tests."""
