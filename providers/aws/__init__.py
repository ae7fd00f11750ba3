"""rotator's AWS providers: the Secrets Manager backend (``secrets_manager``), the Parameter Store
backend (``ssm``), what both share (``common``: settings, addresses, the backend's edge) and their
session plumbing (``session``: credentials, clients, retries).

Nothing here imports boto3 or botocore at import time: the SDK is loaded by the first call.
"""
