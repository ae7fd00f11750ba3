"""No part of an AWS access key in anything an IAM rotation produces: logs at DEBUG (JSON and
text), CLI output, events, the audit trail and every file but the stores. The secret access key
never appears; the access key id only as its first and last four characters ("AKIA…WXYZ")."""

from __future__ import annotations

import json
import logging
from datetime import timedelta

from rotator import cli_ops, config as config_module
from rotator.cli import main
from rotator.runtime import Runtime
from tests.integration.iam_support import iam_world  # noqa: F401 - fixture
from tests.world import to_toml


def test_iam_no_part_of_any_key_anywhere(iam_world, capsys, monkeypatch, signing_fault_proxy):
    w = iam_world
    w.issuer["sts_endpoint_url"] = signing_fault_proxy.url
    w.defaults.update(grace="0s")
    w.add_secret("ci", targets=[{"backend": "store", "path": "ci.json"}, {"backend": "sm", "secret_id": f"leak/{w.user}"},
                                {"backend": "ssm", "name": f"/leak/{w.user}"}])
    first = w.seed("ci")
    config_file = w.root / "rotator.toml"
    audit = w.root / "audit.jsonl"
    data = w.config_data()
    data["audit"] = {"path": str(audit)}
    config_file.write_text(to_toml(data))
    monkeypatch.setenv("ROTATOR_CONFIG", str(config_file))
    def on_world_clock(args, **options):
        return Runtime(config_module.load(args.config), clock=w.clock, sleep=w.clock.sleep,
                       **{k: v for k, v in options.items() if v is not None})

    monkeypatch.setattr(cli_ops, "_runtime", on_world_clock)
    monkeypatch.setattr(cli_ops, "runtime_for", on_world_clock)

    codes = []
    for fmt in ("json", "text"):
        base = ["--log-level", "debug", "--log-format", fmt]
        codes.append(main([*base, "rotate", "--force"]))               # issue, stage, verify, deploy, revoke
        codes.append(main([*base, "status", "-o", "json"]))
        codes.append(main([*base, "review", "-o", "json"]))
        signing_fault_proxy.fail("GetCallerIdentity", times=1000, status=403, code="InvalidClientTokenId")
        w.clock.advance(timedelta(minutes=5))
        codes.append(main([*base, "rotate", "--force"]))               # verify refused: rolled back
        signing_fault_proxy._rules.clear()
    out, err = capsys.readouterr()
    assert codes[0] == 0 and 1 in codes, codes

    produced = [out, err, json.dumps([e.__dict__ for e in w.events], default=str)]
    for path in w.root.rglob("*"):
        if path.is_file() and path.parent.name not in ("store", "app"):
            produced.append(path.read_text(errors="replace"))
    text = "\n".join(produced)
    assert "promoted" in text and "revoked" in text and '"level": "debug"' in text, "the scan saw real rotations"
    minted = {first}
    for row in w.iam_user.keys():
        minted.add((row.key_id, None))
    secrets = [s for _, s in minted if s] + [v[1] for v in w.served().values() if v]
    ids = {k for k, _ in minted} | {v[0] for v in w.served().values() if v}
    assert len(ids) >= 3, "the scenario minted keys"
    leaked = [s[-4:] for s in secrets if s in text] + [i[-4:] for i in ids if i in text]
    assert not leaked, f"parts of keys leaked (last 4 shown): {leaked}"
    assert any(f"{i[:4]}…{i[-4:]}" in text for i in ids), "ids are shown in their short form"
    logging.getLogger().handlers.clear()
