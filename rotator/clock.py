"""Where time comes from. Decision code never calls ``datetime.now()``: it is handed ``now``."""

from __future__ import annotations

import time
from datetime import datetime, timezone


class SystemClock:
    """The real clock, in UTC."""

    def now(self) -> datetime:
        return datetime.now(timezone.utc)

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)
