"""End to end: an application *process* uses an AWS access key that rotator rotates under it.

The application (``APP`` below, run with ``subprocess``) reads its key from its target file (the
JSON fields ``aws_access_key_id`` / ``aws_secret_access_key``) and signs a real AWS request with
it — STS ``GetCallerIdentity`` against the moto server that checks signatures
(tests/servers/aws_signing.py), whose answer must name the application's IAM user — over and
over, logging every attempt (the key id used, when it was sent, the outcome) to a file. A
well-behaved application reads the file afresh before every request (keeping a client per key);
the control application reads it once at start.

rotator (in this process, on a fake clock that starts at the real time) takes the key through
two full rotations while the applications run: forced start, grace window, deactivation, deletion
``delete_after`` later. The well-behaved application must never fail and must have used each of
the three keys; the first two end deleted at IAM. moto accepts an Inactive key where AWS refuses
it, so the check that would hold on AWS is made too: every request was signed with a key that
was still Active (sent before that key's UpdateAccessKey to Inactive), and whenever rotator
deactivates or deletes a key, the application's file no longer holds it. The control keeps
working only until its key is deleted, then fails with InvalidClientTokenId (on AWS it would fail
from the deactivation on, which the Active-key check reports): the test would catch a rotation
that took a key away from an application. (On AWS, rotator's revoke gate would rather hold the
control's old key, seeing it used after its replacement was deployed; the test turns that
evidence off, see below.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from rotator.models import Phase
from tests.faults.iam_support_faults import IamEffects, Watch
from tests.integration.iam_support import iam_world  # noqa: F401 - fixture
from tests.world import wait_for

GRACE = timedelta(hours=48)
DELETE_AFTER = timedelta(days=7)
INTERVAL = 0.02                     # seconds between the application's requests

APP = r'''
"""An application that signs an AWS request with the key in its target file, again and again."""
import json, os, sys, time

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from botocore.session import get_session

target, endpoint, arn, log_path, stop_path, mode = sys.argv[1:7]
interval = float(sys.argv[7])
session = get_session()
clients = {}
key = None


def client_for(key):
    if key not in clients:
        for old in clients.values():
            old.close()
        clients.clear()
        clients[key] = session.create_client(
            "sts", region_name="us-east-1", endpoint_url=endpoint, aws_access_key_id=key[0],
            aws_secret_access_key=key[1], config=Config(retries={"total_max_attempts": 1}))
    return clients[key]


with open(log_path, "a", buffering=1) as log:
    n = 0
    while not os.path.exists(stop_path):
        entry = {"n": n, "sent": time.time()}
        if key is None or mode == "fresh":
            try:
                with open(target) as f:
                    doc = json.load(f)
                key = (doc["aws_access_key_id"], doc["aws_secret_access_key"])
            except (OSError, ValueError, KeyError) as exc:     # a half-written file would show here
                entry.update(ok=False, code="unreadable: " + type(exc).__name__, key=None)
        if "code" not in entry:
            entry["key"] = key[0]
            try:
                answer = client_for(key).get_caller_identity()
                entry.update(ok=answer.get("Arn") == arn, code=None if answer.get("Arn") == arn else "another principal")
            except ClientError as exc:
                entry.update(ok=False, code=exc.response.get("Error", {}).get("Code", "?"))
            except BotoCoreError as exc:
                entry.update(ok=False, code=type(exc).__name__)
        entry["done"] = time.time()
        log.write(json.dumps(entry) + "\n")
        n += 1
        time.sleep(interval)
'''


@dataclass
class App:
    """One running application process and its log."""

    mode: str
    process: subprocess.Popen
    log: Path
    stop_file: Path

    @classmethod
    def start(cls, root: Path, mode: str, target: Path, endpoint: str, arn: str) -> App:
        script = root / "app.py"
        if not script.exists():
            script.write_text(APP)
        log, stop_file = root / f"app-{mode}.log", root / f"app-{mode}.stop"
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}   # only the key in its file
        env.update(AWS_CONFIG_FILE="/nonexistent/app-config", AWS_SHARED_CREDENTIALS_FILE="/nonexistent/app-creds",
                   AWS_EC2_METADATA_DISABLED="true")
        process = subprocess.Popen([sys.executable, str(script), str(target), endpoint, arn, str(log), str(stop_file),
                                    mode, str(INTERVAL)], env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)
        return cls(mode, process, log, stop_file)

    def requests(self) -> list[dict]:
        if not self.log.exists():
            return []
        lines = self.log.read_text().splitlines()
        return [json.loads(line) for line in lines if line.endswith("}")]     # the last may be half-written

    def wait_for(self, what: str, check, timeout: float = 20.0) -> list[dict]:
        def ready():
            assert self.process.poll() is None, f"the {self.mode} application died: {self.process.stderr.read()}"
            found = self.requests()
            return found if check(found) else None
        return wait_for(ready, timeout=timeout, what=f"the {self.mode} application: {what}")

    def used(self, key_id: str, times: int = 3) -> None:
        """Wait until it has sent ``times`` more requests signed with ``key_id``."""
        before = sum(1 for r in self.requests() if r["key"] == key_id)
        self.wait_for(f"{times} more requests with …{key_id[-4:]}",
                      lambda found: sum(1 for r in found if r["key"] == key_id) >= before + times)

    def more(self, times: int = 3) -> None:
        """Wait until it has sent ``times`` more requests (it ran in the state the test left)."""
        before = len(self.requests())
        self.wait_for(f"{times} more requests", lambda found: len(found) >= before + times)

    def stop(self) -> list[dict]:
        self.stop_file.touch()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        self.process.stderr.close()
        return self.requests()


def test_iam_app_keeps_working_through_two_rotations_and_a_read_once_app_does_not(iam_world, tmp_path):  # noqa: F811
    w = iam_world
    # The revoke gate's usage evidence would hold the control's key on AWS (used after its
    # replacement was deployed: require_unused). moto stamps the last use with the real time, which
    # the fake clock has left behind, so that evidence cannot work here: off, so that what the test
    # relies on is said, not an accident of the clocks.
    w.issuer["require_unused"] = False
    w.add_secret("ci")
    watch = Watch(w)
    key1, _ = w.seed("ci")
    app_file = w.root / "app" / "ci.json"
    arn = w.iam_user.arn
    fresh = App.start(tmp_path, "fresh", app_file, w.endpoint, arn)
    control = App.start(tmp_path, "once", app_file, w.endpoint, arn)
    effects = IamEffects(w.clock, observe=watch.served_ids)

    def rotate(identity: str, *, force: bool = False) -> None:
        engine = w.engine(identity)
        effects.instrument(engine.runtime)
        report = engine.run(force=force)
        assert report.exit_code == 0, [(o.secret, o.error) for o in report.outcomes]
        app_key = json.loads(app_file.read_text())["aws_access_key_id"]
        assert watch.iam_keys().get(app_key) == "Active", f"the application's file holds …{app_key[-4:]}, not Active"

    keys = [key1]
    try:
        fresh.used(key1)
        control.used(key1)
        for rotation in (1, 2):
            old = keys[-1]
            rotate(f"rotation-{rotation}", force=True)                  # issue, stage, deploy, promote
            new = watch.assert_i1()
            assert new != old and record(watch).phase is Phase.GRACE
            keys.append(new)
            fresh.used(new)
            w.clock.advance(GRACE + timedelta(hours=1))
            rotate(f"rotation-{rotation}-grace")                       # the old key deactivated
            assert watch.iam_keys() == {old: "Inactive", new: "Active"}
            fresh.more()
            w.clock.advance(DELETE_AFTER + timedelta(hours=1))
            rotate(f"rotation-{rotation}-delete")                      # ... and deleted
            assert watch.iam_keys() == {new: "Active"}
            fresh.more()
            if rotation == 1:
                control.wait_for("a refusal once its key is deleted",
                                 lambda found: any(not r["ok"] for r in found))
                control.more()
    finally:
        requests, once = fresh.stop(), control.stop()
        watch.close()

    # The well-behaved application: never failed, used each of the three keys, in order.
    failures = [r for r in requests if not r["ok"]]
    assert failures == [], failures[:5]
    used = list(dict.fromkeys(r["key"] for r in requests))
    assert used == keys, (used, keys)
    assert watch.iam_keys() == {keys[2]: "Active"} and keys[0] not in watch.iam_keys() and keys[1] not in watch.iam_keys()
    # What would hold on AWS, where an Inactive key is refused: no request with a key after its
    # deactivation was sent, and no key was deactivated or deleted while the application's file held it.
    deactivations = {e.key_id: e for e in effects.of("UpdateAccessKey", "Inactive")}
    deletions = {e.key_id: e for e in effects.of("DeleteAccessKey")}
    assert set(deactivations) == set(deletions) == {keys[0], keys[1]}
    late = [r for r in requests if r["key"] in deactivations and r["sent"] >= deactivations[r["key"]].sent]
    assert late == [], late[:5]
    for e in (*deactivations.values(), *deletions.values()):
        assert e.key_id not in e.served.values(), f"{e}: a target still held the key: {e.served}"

    # The control read its key once: it worked until that key was deleted, and only until then.
    assert {r["key"] for r in once} == {keys[0]}
    deleted = deletions[keys[0]]
    assert all(r["ok"] for r in once if r["done"] < deleted.sent)
    after = [r for r in once if r["sent"] > deleted.done]
    assert after and all(r["code"] == "InvalidClientTokenId" for r in after), after[:3]
    # ... and on AWS it would have failed from the deactivation on: the Active-key check catches it.
    assert [r for r in once if r["sent"] >= deactivations[keys[0]].sent], "the control never outlived its key"


def record(watch: Watch):
    bound = watch.secret.primary
    return bound.backend.read(bound.target).record
