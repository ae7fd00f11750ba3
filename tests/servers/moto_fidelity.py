"""One correction to moto, so it answers BatchGetSecretValue as AWS does.

AWS's ``BatchGetSecretValue(SecretIdList=...)`` returns each secret's AWSCURRENT version. moto 5.2
returns the version it last *put* as current, which ``UpdateSecretVersionStage`` never moves (the
same divergence as ``GetSecretValue`` without ``VersionStage``, see
shared/reference/test-components.md). rotator moves AWSCURRENT with UpdateSecretVersionStage on
every primary write, so against plain moto the backend must leave every such primary out of a
batch (it checks ``VersionStages``) and read it alone. With this correction moto serves what AWS
serves; ``ORIGINAL`` stays available for the test that shows the backend's own guard.

Used by the moto server of the test session (``tests/servers/aws.py``) and of the benchmarks
(``python -m tests.servers.moto_fidelity -H ... -p ...`` runs moto's server with it).
"""

from __future__ import annotations

import sys
from typing import Any

ORIGINAL: Any = None


def apply() -> None:
    """Patch moto's Secrets Manager backend (idempotent)."""
    global ORIGINAL
    from moto.secretsmanager import models
    from moto.secretsmanager.exceptions import SecretsManagerClientError

    if ORIGINAL is not None:
        return
    ORIGINAL = original = models.SecretsManagerBackend.batch_get_secret_value

    def batch_get_secret_value(self, secret_id_list=None, filters=None, max_results=None, next_token=None):
        if not secret_id_list or filters:
            return original(self, secret_id_list, filters, max_results, next_token)
        values, errors = [], []
        for secret_id in secret_id_list:
            try:
                values.append(self.get_secret_value(secret_id, None, "AWSCURRENT"))
            except SecretsManagerClientError as error:
                errors.append({"SecretId": secret_id, "ErrorCode": error.error_type, "Message": error.message})
        return values, errors, None

    models.SecretsManagerBackend.batch_get_secret_value = batch_get_secret_value


if __name__ == "__main__":
    apply()
    from moto.server import main

    main(sys.argv[1:])
