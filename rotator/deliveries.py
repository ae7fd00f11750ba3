"""PURE: the bookkeeping of hook deliveries in the rotation record (no I/O, ``now`` is an argument).

A delivery is keyed by (rotation id, event, hook) and lives in the record from the write of the
effect it reports until it is settled and a later rotation starts. Its life:

* **owed**: written in the same compare-and-swap as the effect (``machine.owe``), so a crash
  after the effect still owes it: the next run delivers it (at least once);
* **claimed** (:func:`claim`): before delivering, a runner counts the attempt and pushes
  ``next_at`` past the hook's timeout, in one compare-and-swap: no other runner delivers it while
  it runs, and if this runner dies the claim lapses and the next run delivers it again;
* **settled** (:func:`settle`): ``done`` on success — never repeated —, else owed again after a
  backoff that doubles (``backoff`` × 2^(attempts−1), at most :data:`RETRY_CAP`); a hook that is
  not a gate gives up after ``max_attempts``. A gate never gives up: the old key stays unrevoked
  until its consumer confirms (or ``revoke --compromised``).

A success of a gate-capable event supersedes the same hook's older owed deliveries of that event
(a consumer restarted for a newer key no longer uses the key an older rotation replaced).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, Iterable, Mapping

from rotator.models import Delivery

#: Longest wait between two tries of a failed delivery.
RETRY_CAP = timedelta(hours=6)
#: A claimed delivery is not taken by another runner until the hook's timeout plus this.
CLAIM_MARGIN = timedelta(seconds=30)
#: Settled deliveries kept in the record (the newest; owed ones are always kept).
KEEP_SETTLED = 24
#: Events whose later success stands for an older rotation's (a consumer that took the newer key).
SUPERSEDING = ("staged", "deployed", "before_revoke")

#: How a delivery stopped or not started by a shutdown ends its result (rotator.hooks): it does not
#: count as an attempt.
SHUTTING_DOWN = "shutting down"

Ident = tuple[str, str, str]


def claim(deliveries: Iterable[Delivery], idents: set[Ident], now: datetime,
          timeouts: Mapping[str, timedelta]) -> tuple[Delivery, ...]:
    """Count an attempt of each delivery in ``idents`` and keep other runners off it until its
    hook's timeout (plus a margin) has passed."""
    return tuple(replace(d, attempts=d.attempts + 1, next_at=now + timeouts.get(d.hook, timedelta(0)) + CLAIM_MARGIN)
                 if d.ident in idents else d for d in deliveries)


def settle(deliveries: Iterable[Delivery], results: Mapping[Ident, tuple[bool, str]], now: datetime,
           hooks: Mapping[str, Any]) -> tuple[Delivery, ...]:
    """Apply delivery results (ident -> (ok, detail)). ``hooks``: the configured hooks by name
    (``backoff``, ``max_attempts``); a delivery whose hook is no longer configured is given up."""
    out = list(deliveries)
    for index, d in enumerate(out):
        if not d.owed:
            continue
        hook = hooks.get(d.hook)
        if hook is None:
            out[index] = replace(d, state="given-up", next_at=None, last_error="hook no longer configured")
            continue
        if d.ident not in results:
            continue
        ok, detail = results[d.ident]
        if not ok and detail.endswith(SHUTTING_DOWN):    # not the hook's failure: try again at the next run
            out[index] = replace(d, attempts=max(d.attempts - 1, 0), next_at=None, last_error=detail)
            continue
        if ok:
            out[index] = replace(d, state="done", done_at=now, next_at=None, last_error=None)
            if d.event in SUPERSEDING:
                for older in range(index):
                    o = out[older]
                    if o.owed and o.event == d.event and o.hook == d.hook and o.rotation_id != d.rotation_id:
                        out[older] = replace(o, state="done", done_at=now, next_at=None,
                                             last_error=f"superseded by rotation {d.rotation_id[:8]}")
        elif d.gate or d.attempts < hook.max_attempts:
            wait = min(hook.backoff * (2 ** max(d.attempts - 1, 0)), RETRY_CAP)
            out[index] = replace(d, next_at=now + wait, last_error=detail[:300])
        else:
            out[index] = replace(d, state="given-up", next_at=None, last_error=detail[:300])
    return trim(out)


def settled_away(deliveries: Iterable[Delivery], keep: str | None = None) -> tuple[Delivery, ...]:
    """What a new rotation carries over: every owed delivery (an older rotation's gate may still
    hold a key) and the settled ones of rotation ``keep`` only."""
    return tuple(d for d in deliveries if d.owed or d.rotation_id == keep)


def forget_failures(deliveries: Iterable[Delivery]) -> tuple[Delivery, ...]:
    """A secret that runs cleanly again: settled ``failed`` deliveries are dropped, so the next
    failure of the same rotation is told again."""
    return tuple(d for d in deliveries if d.owed or d.event != "failed")


def trim(deliveries: list[Delivery]) -> tuple[Delivery, ...]:
    """Bound the record: keep every owed delivery and the newest :data:`KEEP_SETTLED` settled ones."""
    settled = [i for i, d in enumerate(deliveries) if not d.owed]
    drop = set(settled[:-KEEP_SETTLED]) if len(settled) > KEEP_SETTLED else set()
    return tuple(d for i, d in enumerate(deliveries) if i not in drop)
