"""Run one rotation in this process and SIGKILL it right after effect K (a real process death).

Usage: python -m tests.faults.crash_child CONFIG_TOML K NOW_ISO [AUDIT_FILE]
"""

from __future__ import annotations

import os
import signal
import sys

from rotator import config
from rotator.audit import AuditSink
from rotator.engine import Engine
from rotator.runtime import Runtime
from rotator.testing import EffectCounter, FakeClock
from rotator.timeutil import parse_instant


def main(path: str, k: int, now: str, audit_file: str | None = None) -> int:
    clock = FakeClock(parse_instant(now))
    runtime = Runtime(config.load(path), clock=clock, sleep=clock.sleep, identity="doomed")
    sink = AuditSink(audit_file) if audit_file else None

    def die(number: int, provider: str, method: str) -> None:
        if number == k:
            os.kill(os.getpid(), signal.SIGKILL)

    EffectCounter(on_effect=die).instrument(runtime)
    report = Engine(runtime, on_event=sink).run()
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), sys.argv[3], *sys.argv[4:5]))
