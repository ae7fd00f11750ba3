"""Issuer and backend plugins that ship with rotator."""
