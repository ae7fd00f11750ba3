"""No key value in anything a run produces: logs at DEBUG (JSON and text), CLI output of every
command, error messages, events, and files other than the backends themselves."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timedelta, timezone

from rotator.cli import main
from tests.world import to_toml


def test_no_key_value_anywhere(world, emulator, clock, admin_key, tmp_path, capsys, monkeypatch):
    clock.set(datetime.now(timezone.utc))                  # the CLI runs on the real clock
    world.defaults.update(grace="0s")
    world.issuer["retries"] = 2                             # failing runs fail fast on the real clock
    careless = tmp_path / "careless-hook.py"             # a hook that prints the value it is given
    careless.write_text("import sys\nv = sys.stdin.read()\nprint(v)\nprint('got', v, file=sys.stderr)\nsys.exit(1)\n")
    world.add_secret("web", hooks=[{"name": "careless", "kind": "exec", "events": ["staged", "deployed", "failed"],
                                    "pass_value": True, "command": [sys.executable, str(careless)],
                                    "max_attempts": 1}])
    world.add_secret("batch")
    world.seed("web", age=timedelta(days=85))
    world.seed("batch", age=timedelta(days=3))
    config_file = tmp_path / "rotator.toml"
    config_file.write_text(to_toml(world.config_data()))
    monkeypatch.setenv("ROTATOR_CONFIG", str(config_file))

    codes = []
    for fmt in ("json", "text"):
        base = ["--log-level", "debug", "--log-format", fmt]
        codes.append(main([*base, "rotate"]))                   # adopt + full rotation of web
        codes.append(main([*base, "rotate", "--force", "batch", "-o", "json"]))
        codes.append(main([*base, "status"]))
        codes.append(main([*base, "status", "-o", "json"]))
        codes.append(main([*base, "plan", "--at", "2030-01-01T00:00:00Z", "-o", "json"]))
        emulator.faults.fail_next(50, status=503)               # a failing run prints errors
        codes.append(main([*base, "rotate", "--force", "web"]))
        emulator.faults.clear()
        codes.append(main([*base, "rotate"]))
    out, err = capsys.readouterr()
    assert codes.count(1) >= 2 and codes[0] == 0, codes       # the failures really happened

    produced = [out, err, json.dumps([e.__dict__ for e in world.events], default=str)]
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.parent.name not in ("store", "app"):
            produced.append(path.read_text(errors="replace"))
    text = "\n".join(produced)
    minted = emulator.issued_values()
    assert len(minted) >= 6, "the scenario minted keys: admin, two by hand, rotations"
    assert "promoted" in text and '"level": "debug"' in text, "the scan saw a real rotation at DEBUG"
    assert "careless" in text and "exit 1" in text, "the scan saw the hook fail with the value on its stderr"
    leaked = [v[-4:] for v in minted if v in text]
    assert not leaked, f"key values leaked (last 4 shown): {leaked}"
    logging.getLogger().handlers.clear()
