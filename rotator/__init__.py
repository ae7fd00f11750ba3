"""rotator: rotates API keys before they expire and keeps every secret store in sync."""

__version__ = "0.1.0"
