"""The peer to beat: what a team writes instead of rotator, following the QuivaWorks guide.

One secret at a time: issue a key, write it to each store the secret lives in (AWS Secrets
Manager with boto3; Parameter Store with boto3, one ``PutParameter`` of the SecureString; Vault
KV v2 with hvac; a JSON file), read each back, check the new key authenticates, delete the old
key. One session token and one key listing (to find the old keys' ids, by name) for the whole
run. Written as a competent engineer would: pooled clients, no sleeps, a small retry on 429/5xx
honouring ``retry_after``, an atomic file write, and nothing it does not need. It is not
crash-safe: a crash between "issue" and "write" loses a key, and nothing stops two copies of it
from rotating the same secret.

Used by ``benchmarks/run.py`` (same process run as rotator); also runnable on its own against
servers you started::

    python benchmarks/baseline.py --quiva http://127.0.0.1:8787 --aws http://127.0.0.1:5000 \\
        --vault http://127.0.0.1:8200 --files /tmp/peer --secrets fleet.json

(``--aws`` serves both Secrets Manager and Parameter Store, as moto does.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

import httpx

REGION = "us-east-1"


class PeerError(RuntimeError):
    pass


class Peer:
    def __init__(self, *, quiva: str, admin_key: str, aws: str | None = None, vault: str | None = None,
                 vault_token: str | None = None, files: Path | None = None) -> None:
        self.admin_key = admin_key
        self.http = httpx.Client(base_url=quiva, timeout=30, headers={"Accept": "application/json"})
        self.files = files
        self._aws_url, self._vault_url, self._vault_token = aws, vault, vault_token
        self._sm: Any = None
        self._ssm: Any = None
        self._vault: Any = None
        self.token: str | None = None
        self.calls = 0

    # --- clients, built on first use ---------------------------------------------------------

    @property
    def sm(self) -> Any:
        if self._sm is None:
            import boto3

            self._sm = boto3.client("secretsmanager", region_name=REGION, endpoint_url=self._aws_url,
                                    aws_access_key_id="testing", aws_secret_access_key="testing")
        return self._sm

    @property
    def ssm(self) -> Any:
        if self._ssm is None:
            import boto3

            self._ssm = boto3.client("ssm", region_name=REGION, endpoint_url=self._aws_url,
                                     aws_access_key_id="testing", aws_secret_access_key="testing")
        return self._ssm

    @property
    def vault(self) -> Any:
        if self._vault is None:
            import hvac

            self._vault = hvac.Client(url=self._vault_url, token=self._vault_token)
        return self._vault

    # --- QuivaWorks --------------------------------------------------------------------------

    def _quiva(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(6):
            self.calls += 1
            reply = self.http.request(method, path, **kwargs)
            if reply.status_code == 429 or reply.status_code >= 500:
                try:
                    wait = float(reply.json().get("retry_after", 0.5))
                except ValueError:
                    wait = 0.5
                time.sleep(min(wait, 60) if reply.status_code == 429 else 0.2 * 2 ** attempt)
                continue
            return reply
        raise PeerError(f"{method} {path}: gave up after retries")

    def sign_in(self) -> None:
        reply = self._quiva("POST", "/accounts/auth-with-api-key", json={"api_key": self.admin_key})
        reply.raise_for_status()
        self.token = reply.json()["data"]["auth_token"]

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def key_ids(self) -> dict[str, str]:
        reply = self._quiva("GET", "/accounts/api-keys", headers=self._auth())
        reply.raise_for_status()
        return {k["name"]: k["id"] for k in reply.json()["data"]}

    def issue(self, name: str) -> str:
        reply = self._quiva("POST", "/accounts/api-key", json={"key_name": name}, headers=self._auth())
        reply.raise_for_status()
        return reply.json()["data"]["key"]

    def authenticates(self, key: str) -> bool:
        reply = self._quiva("POST", "/accounts/auth-with-api-key", json={"api_key": key})
        return reply.status_code == 200

    def delete(self, key_id: str) -> None:
        reply = self._quiva("DELETE", "/accounts/api-key", params={"id": key_id}, headers=self._auth())
        if reply.status_code != 404:
            reply.raise_for_status()

    # --- stores --------------------------------------------------------------------------------

    def create(self, store: str, where: str, value: str) -> None:
        """Seeding (not part of a rotation): the secret as it was before the peer's first run."""
        if store == "aws":
            self.sm.create_secret(Name=where, SecretString=json.dumps({"api_key": value}))
        elif store == "ssm":
            self.ssm.put_parameter(Name=where, Value=json.dumps({"api_key": value}), Type="SecureString",
                                   Overwrite=False)
        else:
            self.write(store, where, value)

    def write(self, store: str, where: str, value: str) -> None:
        self.calls += 1
        if store == "aws":
            self.sm.put_secret_value(SecretId=where, SecretString=json.dumps({"api_key": value}))
        elif store == "ssm":          # the whole value, one PutParameter
            self.ssm.put_parameter(Name=where, Value=json.dumps({"api_key": value}), Type="SecureString",
                                   Overwrite=True)
        elif store == "vault":
            self.vault.secrets.kv.v2.create_or_update_secret(path=where, secret={"api_key": value})
        else:
            assert self.files is not None
            path = self.files / where
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            with os.fdopen(fd, "w") as out:
                json.dump({"api_key": value}, out)
            os.replace(tmp, path)

    def read(self, store: str, where: str) -> str | None:
        self.calls += 1
        if store == "aws":
            answer = self.sm.get_secret_value(SecretId=where, VersionStage="AWSCURRENT")
            return json.loads(answer["SecretString"]).get("api_key")
        if store == "ssm":
            answer = self.ssm.get_parameter(Name=where, WithDecryption=True)
            return json.loads(answer["Parameter"]["Value"]).get("api_key")
        if store == "vault":
            answer = self.vault.secrets.kv.v2.read_secret_version(path=where, raise_on_deleted_version=True)
            return answer["data"]["data"].get("api_key")
        assert self.files is not None
        return json.loads((self.files / where).read_text()).get("api_key")

    # --- the guide, one secret at a time -----------------------------------------------------

    def rotate(self, name: str, targets: Iterable[tuple[str, str]], old_id: str | None) -> None:
        targets = list(targets)
        new = self.issue(name)
        for store, where in targets:
            self.write(store, where, new)
        for store, where in targets:
            if self.read(store, where) != new:
                raise PeerError(f"{name}: {store} does not hold the new key")
        if not self.authenticates(new):
            raise PeerError(f"{name}: the new key does not authenticate")
        if old_id is not None:
            self.delete(old_id)

    def run(self, secrets: Iterable[tuple[str, Iterable[tuple[str, str]]]]) -> int:
        """Rotate every secret in turn; returns how many failed (and carries on, as a script would
        with a try/except around each)."""
        self.sign_in()
        ids = self.key_ids()
        failed = 0
        for name, targets in secrets:
            try:
                self.rotate(name, targets, ids.get(name))
            except Exception as exc:  # noqa: BLE001
                failed += 1
                print(f"peer: {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return failed

    def close(self) -> None:
        self.http.close()
        if self._sm is not None:
            self._sm.close()
        if self._ssm is not None:
            self._ssm.close()
        if self._vault is not None:
            self._vault.adapter.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Rotate a list of secrets one at a time, by the guide.")
    parser.add_argument("--quiva", required=True)
    parser.add_argument("--aws")
    parser.add_argument("--vault")
    parser.add_argument("--files", type=Path)
    parser.add_argument("--secrets", type=Path, required=True,
                        help='JSON: [{"name": "...", "targets": [["aws", "prod/web"], ["vault", "apps/web"],'
                             ' ["ssm", "/prod/web/quiva-api-key"]]}]')
    args = parser.parse_args(argv)
    peer = Peer(quiva=args.quiva, admin_key=os.environ["QUIVA_API_KEY"], aws=args.aws, vault=args.vault,
                vault_token=os.environ.get("VAULT_TOKEN"), files=args.files)
    fleet = [(s["name"], [tuple(t) for t in s["targets"]]) for s in json.loads(args.secrets.read_text())]
    started = time.perf_counter()
    try:
        failed = peer.run(fleet)
    finally:
        peer.close()
    print(f"{len(fleet)} secrets in {time.perf_counter() - started:.2f}s, {peer.calls} calls, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
