"""AWS providers' shared plumbing (``session``) and the Secrets Manager backend (``secrets_manager``).

Nothing here imports boto3 or botocore at import time: the SDK is loaded by the first call.
"""
