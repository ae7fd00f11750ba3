"""Entry point of the ``aws_secrets_manager`` backend (the code lives in :mod:`providers.aws`)."""

from providers.aws.secrets_manager import (
    SecretsManagerBackend,
    SecretsManagerSettings,
    SecretsManagerTarget,
)

__all__ = ["SecretsManagerBackend", "SecretsManagerSettings", "SecretsManagerTarget"]
