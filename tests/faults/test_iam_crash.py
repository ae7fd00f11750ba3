"""Crash safety of rotations of an AWS IAM user's access keys (the ``aws_iam`` issuer), on the moto
server that checks request signatures (tests/servers/aws_signing.py).

1. Crash replay: a full rotation — issue, stage, deploy to each secondary, promote, deactivate the
   old key after grace, delete it ``delete_after`` later — stopped right after every effect (each
   IAM call that changes the user counts on its own, so a crash also lands between the two calls
   of ``IamIssuer.revoke`` and of ``IamIssuer.purge``), then resumed by fresh engines on a
   schedule, checking I1, I2, I3 and I5 after every run and at the end. It starts from three
   states of IAM's two-keys-per-user limit: the user holds only the current key; the current key
   and a key deactivated by the previous rotation; the current key and an active key no record
   knows.
2. Real SIGKILLs of a child process (tests/faults/iam_support_faults.py run as a module): right
   after CreateAccessKey returned (the new key's secret dies with the process), between the two
   calls of the old key's revoke, and after the revoke, before the deletion.
3. Product bugs found on the way (fixed since; the tests that found them stay as regressions:
   UNNOTED, STALE_TAG; RESCUED applies only if the revoke's order were flipped).

moto stamps keys with the real time, so the fake clock starts at the real time and rotations are
started with ``force``; moto accepts an Inactive key, so deactivation is proved by ListAccessKeys.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import timedelta

import pytest

from rotator.models import Phase, shown_id
from rotator.testing import SimulatedCrash
from rotator.timeutil import format_instant, parse_instant
from tests.faults.iam_support_faults import IAM_EFFECTS, Effect, IamEffects, Watch
from tests.integration.iam_support import iam_world  # noqa: F401 - fixture
from tests.world import to_toml

GRACE = timedelta(hours=48)
DELETE_AFTER = timedelta(days=7)
LEASE = timedelta(minutes=15)
TAG = "rotator:deactivated:"
#: The two IAM calls of ``IamIssuer.revoke``, in its order: deactivate, then note the time in a
#: user tag. (Until commit 17b6308 it tagged first; the bug that order had is kept below: RESCUED.)
REVOKE = ("UpdateAccessKey", "TagUser")
#: When the runs after a crash start (each after the one before): once the dead runner's lease
#: has run out, after a grace window, after delete_after; then once more of each.
RESUMES = [LEASE + timedelta(minutes=1), GRACE + timedelta(hours=1), DELETE_AFTER + timedelta(hours=1),
           LEASE + timedelta(minutes=1), GRACE + timedelta(hours=1), DELETE_AFTER + timedelta(hours=1)]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# --- the product bugs this file found (fixed; kept to document what each test guards) -------

#: With REVOKE = (UpdateAccessKey, TagUser): a crash between the two leaves the key Inactive with no
#: note of when; the next run finds it gone from the live listing ("already revoked") and finishes,
#: and Engine.purge_dormant never deletes a key without a note: it stays Inactive until a later
#: rotation needs room (about max_age - lead_time later), not delete_after.
UNNOTED = ("product bug: a crash between UpdateAccessKey and TagUser in IamIssuer.revoke leaves the old key"
           " Inactive without its rotator:deactivated note; the next run takes it as already revoked, and"
           " Engine.purge_dormant never deletes a key without a note: it is not deleted delete_after later")
#: With REVOKE = (TagUser, UpdateAccessKey): a crash between the two leaves an Active key with the
#: note, which IamIssuer.list_keys reports as kept (a person's rescue): no sweep and no room-making
#: ever removes it, and the next rotation waits for ever at IAM's limit.
RESCUED = ("product bug: a crash between TagUser and UpdateAccessKey in IamIssuer.revoke leaves an Active key"
           " with the rotator:deactivated tag, which list_keys reports as kept (reactivated by hand): orphans"
           " and keys removed for room are never swept and the rotation waits for ever")
STALE_TAG = ("product bug: a crash between DeleteAccessKey and UntagUser in IamIssuer.purge leaves the user tag"
             " rotator:deactivated:<deleted id> for ever: nothing removes the tags of keys that no longer exist"
             " (IamIssuer._untag's comment says the next purge retries, but no purge of that key comes); each"
             " uses one of the 50 tags AWS allows a user; once they are used up every TagUser fails, so no"
             " deactivation is noted any more and no deactivated key is deleted after delete_after (UNNOTED)")
INSIDE_REVOKE_BUG = UNNOTED if REVOKE[0] == "UpdateAccessKey" else RESCUED


def known_bug(reason: str, when: bool = True):
    return [pytest.mark.xfail(strict=True, raises=AssertionError, reason=reason)] if when else []


# --- the world ---------------------------------------------------------------------------------

@pytest.fixture
def w(iam_world):  # noqa: F811 - the fixture
    """One secret ``ci``: a file primary and two file secondaries (each deployed on its own)."""
    iam_world.add_secret("ci", targets=[{"backend": "store", "path": "ci.json"},
                                        {"backend": "app", "path": "ci.json"},
                                        {"backend": "app", "path": "ci-2.json"}])
    return iam_world


@pytest.fixture
def watch(w):
    watcher = Watch(w)
    yield watcher
    watcher.close()


def rotate(world, effects: IamEffects, identity: str, *, force: bool = False):
    engine = world.engine(identity)
    effects.instrument(engine.runtime)
    return engine.run(force=force)


def ok(report) -> None:
    assert report.exit_code == 0, [(o.secret, o.status, o.error) for o in report.outcomes]


def record_of(watch: Watch):
    bound = watch.secret.primary
    return bound.backend.read(bound.target).record


def noted(watch: Watch, key_id: str):
    """When rotator noted it deactivated ``key_id`` (its user tag), or None."""
    value = watch.tags().get(TAG + key_id)
    return parse_instant(value) if value else None


# --- the states a rotation starts from -----------------------------------------------------------

@dataclass
class Start:
    """What a rotation starts from: ``old``: the current key it replaces; ``extra``: other keys of
    the user, gone at the end; ``rotations``: the record's count before; ``before``: the
    deactivations made beforehand (the deletions rely on them)."""

    old: str
    extra: set[str] = field(default_factory=set)
    rotations: int = 0
    before: list[Effect] = field(default_factory=list)


def one_key(world, watch) -> Start:
    """A hand-made key in every target, not adopted yet: the user holds one key."""
    old_id, _ = world.seed("ci")
    return Start(old_id)


def current_and_deactivated(world, watch) -> Start:
    """The hand-made current key, and one a previous rotation deactivated a day ago (Inactive, the
    time noted in the user's tag, within ``delete_after``): two keys, IAM's limit. The rotation
    must delete the deactivated key to make room."""
    old_id, _ = world.seed("ci")
    key_id = world.iam_user.create_key().access_key_id
    at = world.clock.now() - timedelta(days=1)
    world.iam_user.deactivate(key_id)
    world.iam_user.server.client("iam").tag_user(UserName=world.user,
                                                 Tags=[{"Key": TAG + key_id, "Value": format_instant(at)}])
    world.clock.advance(timedelta(minutes=5))   # older than an issue request still in flight
    return Start(old_id, {key_id}, before=[Effect(0, "by-hand", "UpdateAccessKey", at, key_id, "Inactive", {})])


def current_and_unknown(world, watch) -> Start:
    """The hand-made current key and an active key no record and no target knows (a person's, or
    an orphan): at IAM's limit, the rotation must deactivate and delete it."""
    old_id, _ = world.seed("ci")
    world.clock.advance(timedelta(minutes=5))
    stray = world.iam_user.create_key().access_key_id
    return Start(old_id, {stray})


STARTS = {"one-key": one_key, "current+deactivated": current_and_deactivated,
          "current+unknown": current_and_unknown}

#: The effects of a clean rotation from each state: a forced first run, a run after the grace
#: window, one after delete_after. From the states at IAM's limit, up to the stage; what follows
#: is the same as from one key (AFTER_STAGE).
CLEAN = {
    "one-key": [
        "write_record", "write_record",                         # adopt, claim
        "CreateAccessKey", "stage", "deploy", "deploy", "promote",
        *REVOKE, "write_record",                                # deactivate the old key, finish
        "DeleteAccessKey", "UntagUser",                         # delete_after later
    ],
    "current+deactivated": [
        "write_record", "write_record",                         # adopt, claim
        "DeleteAccessKey", "UntagUser",                         # room: the deactivated key goes
        "CreateAccessKey", "stage",
    ],
    "current+unknown": [
        "write_record", "write_record",                         # adopt, claim
        *REVOKE, "DeleteAccessKey", "UntagUser",                # room: the unknown key goes
        "CreateAccessKey", "stage",
    ],
}
AFTER_STAGE = CLEAN["one-key"][CLEAN["one-key"].index("stage") + 1:]
#: Where each rotation crashes: after every effect from one key; from the states at IAM's limit,
#: after each change of the user's keys before the new key is staged (a deletion from one key's
#: to no key's state is the same as from one key, and so is every effect after the issue).
CRASH_AT = {"one-key": range(1, len(CLEAN["one-key"]) + 1), "current+deactivated": (3, 5),
            "current+unknown": (3, 4, 7)}
BUGS = {("current+unknown", 3): known_bug(RESCUED, REVOKE[0] == "TagUser")}
CASES = [pytest.param(start, k, id=f"{start}-{k}-{CLEAN[start][k - 1]}", marks=BUGS.get((start, k), []))
         for start, ks in CRASH_AT.items() for k in ks]


def full_rotation(world, effects: IamEffects, identity: str) -> None:
    """One rotation as scheduled runs see it: forced start, after grace, after delete_after."""
    ok(rotate(world, effects, identity, force=True))
    world.clock.advance(GRACE + timedelta(hours=1))
    ok(rotate(world, effects, identity))
    world.clock.advance(DELETE_AFTER + timedelta(hours=1))
    ok(rotate(world, effects, identity))


# --- 1. crash after every effect -----------------------------------------------------------------

@pytest.mark.parametrize("start", list(CLEAN))
def test_iam_clean_rotation_has_the_expected_effects(w, watch, start):
    begin = STARTS[start](w, watch)
    effects = IamEffects(w.clock, observe=watch.served_ids)
    full_rotation(w, effects, "runner-A")
    assert effects.ops() == CLEAN[start] + ([] if start == "one-key" else AFTER_STAGE)
    new = watch.assert_i1()
    assert watch.iam_keys() == {new: "Active"} and new != begin.old
    check_i3(begin, effects.log, new)


@pytest.mark.parametrize("start, k", CASES)
def test_iam_crash_after_every_effect_then_resume(w, watch, start, k):
    world = w
    begin = STARTS[start](world, watch)

    crashing = IamEffects(world.clock, crash_after=k, observe=watch.served_ids)
    with pytest.raises(SimulatedCrash):
        full_rotation(world, crashing, "runner-A")
    crashed = crashing.crashed
    assert crashed is not None and crashed.op == CLEAN[start][k - 1], crashing.ops()
    watch.assert_i1()                                           # I1 right after the crash
    created = {e.key_id for e in crashing.of("CreateAccessKey")}
    lost = set(created) if crashed.op == "CreateAccessKey" else set()   # its secret died with the run
    assert not any(key_id in watch.stored_text() for key_id in lost), "a key never staged is in a store"

    # Fresh engines, as scheduled runs start them, until the rotation is complete.
    resumed = IamEffects(world.clock, observe=watch.served_ids)
    for attempt, wait in enumerate(RESUMES):
        world.clock.advance(wait)
        record = record_of(watch)
        not_started = record.phase is Phase.IDLE and record.rotations == begin.rotations
        ok(rotate(world, resumed, f"runner-B{attempt}", force=not_started))
        new = watch.assert_i1()                                 # I1 after every run
        record = record_of(watch)
        if (record.phase is Phase.IDLE and record.rotations == begin.rotations + 1
                and watch.iam_keys() == {new: "Active"}):
            break
    else:
        raise AssertionError(f"not complete after a crash after {crashed}: {record_of(watch)}; keys"
                             f" {watch.iam_keys()}; tags {watch.tags()}; effects since {[str(e) for e in resumed.log]}")

    # Every target serves the one key the user has left, Active: nothing Inactive lingers.
    served = watch.served()
    assert set(served.values()) == {served[watch.secret.primary.label]}
    assert new != begin.old and watch.iam_keys() == {new: "Active"}
    # I2: one new key survives. A key minted and not staged (a crash right after CreateAccessKey)
    # was swept; otherwise exactly one key was created. Its id, so its secret, never reached a store.
    created |= {e.key_id for e in resumed.of("CreateAccessKey")}
    assert new in created and len(created) == 1 + len(lost)
    text = watch.stored_text()
    assert not any(key_id in text for key_id in lost)
    for gone in (created - {new}) | begin.extra | {begin.old}:
        assert gone not in watch.iam_keys()
    assert served[watch.secret.primary.label][1] not in repr(world.events), "a secret in the audit trail"
    # I3, over everything the runners of this rotation did.
    check_i3(begin, crashing.log + resumed.log, new)
    # I5: one more run changes nothing.
    world.clock.advance(timedelta(hours=1))
    again = IamEffects(world.clock)
    report = rotate(world, again, "runner-C")
    ok(report)
    assert report.outcomes[0].actions == [] and again.log == [], [str(e) for e in again.log]
    assert watch.iam_keys() == {new: "Active"}


def check_i3(begin: Start, log: list[Effect], new: str) -> None:
    """I3 on an effect log: a key is deactivated only while no target serves it, the old key only
    once the grace window after the promotion is over; a key is deleted only once deactivated and
    while no target serves it, the old key only ``delete_after`` after its (last) deactivation; the
    new key is never touched and no key is ever reactivated."""
    promoted = [e for e in log if e.op == "promote"]
    assert len(promoted) == 1, [str(e) for e in log]
    deactivated: dict[str, Effect] = {e.key_id: e for e in begin.before if e.op == "UpdateAccessKey"}
    for e in log:
        if e.op == "UpdateAccessKey":
            assert e.status == "Inactive", f"{e}: rotator reactivated a key"
            assert e.key_id != new and e.key_id not in e.served.values(), f"{e}: deactivated a served key {e.served}"
            if e.key_id == begin.old:
                assert e.at >= promoted[0].at + GRACE, f"{e}: the old key deactivated before the grace window ended"
            deactivated[e.key_id] = e
        elif e.op == "DeleteAccessKey":
            assert e.key_id in deactivated, f"{e}: deleted a key rotator had not deactivated"
            assert e.key_id != new and e.key_id not in e.served.values(), f"{e}: deleted a served key {e.served}"
            if e.key_id == begin.old:
                assert e.at >= deactivated[e.key_id].at + DELETE_AFTER, f"{e}: deleted before delete_after"
        elif e.op == "TagUser":
            assert e.key_id != new, f"{e}: the new key noted as deactivated"


# --- 2. real SIGKILLs ------------------------------------------------------------------------------

def killed(world, kill_at: str, *, force: bool = False, identity: str = "doomed") -> list[tuple[str, str]]:
    """Run one ``rotate`` in a child process on the world's config and clock, SIGKILLed right after
    the effect ``kill_at`` (tests/faults/iam_support_faults.py); returns the IAM calls it made
    before dying, as (call, key id). Its audit trail goes to ``trail(world)``."""
    config_file = world.root / "rotator.toml"
    config_file.write_text(to_toml(world.config_data()))
    command = [sys.executable, "-m", "tests.faults.iam_support_faults", str(config_file),
               format_instant(world.clock.now()), kill_at, "--identity", identity, "--audit",
               str(world.root / "audit.jsonl"), *(["--force"] if force else [])]
    child = subprocess.run(command, env=dict(os.environ), capture_output=True, text=True, timeout=60, cwd=REPO,
                           check=False)
    assert child.returncode == -signal.SIGKILL, (child.returncode, child.stdout, child.stderr[-3000:])
    return [tuple(line.split()[:2]) for line in child.stdout.splitlines()]


def trail(world) -> list[dict]:
    """The audit trail the killed child wrote (I8: a line for every effect, even across SIGKILL)."""
    return [json.loads(line) for line in (world.root / "audit.jsonl").read_text().splitlines()]


def intents(world, action: str) -> list[dict]:
    return [r for r in trail(world) if r["action"] == action and r["result"] == "intent"]


def iam_calls(effects: IamEffects) -> list[tuple[str, str]]:
    return [(e.op, e.key_id) for e in effects.log if e.op in IAM_EFFECTS]


def test_iam_sigkill_after_create_access_key_then_the_orphan_is_swept(w, watch):
    """The runner dies right after CreateAccessKey returned: the new key exists at IAM, its secret
    died with the process, and the user is at IAM's limit (the current key + the orphan). While
    the dead runner's lease runs nobody touches the orphan; then a new run takes the rotation
    over, deactivates and deletes the orphan (which also makes room for its own key) and
    completes the rotation. The orphan's id, so its secret, is never in any store. (The crash
    replay above crashes there from the other states of the limit too.)"""
    begin = one_key(w, watch)
    calls = killed(w, "CreateAccessKey", force=True)
    assert [call for call, _ in calls] == ["CreateAccessKey"]
    orphan = calls[0][1]
    assert watch.iam_keys() == {begin.old: "Active", orphan: "Active"}
    record = record_of(watch)
    assert record.phase is Phase.CLAIMED and record.owner == "doomed" and record.pending is None
    assert watch.assert_i1() == begin.old and orphan not in watch.stored_text()
    assert len(intents(w, "issue")) == 1 and not [r for r in trail(w) if r["action"] == "issued"]

    early = IamEffects(w.clock)                     # the dead runner's lease still runs
    report = rotate(w, early, "early")
    assert report.outcomes[0].status == "waiting" and early.log == [], [str(e) for e in early.log]
    assert watch.iam_keys() == {begin.old: "Active", orphan: "Active"}

    w.clock.advance(LEASE + timedelta(minutes=1))
    survivor = IamEffects(w.clock, observe=watch.served_ids)
    ok(rotate(w, survivor, "survivor"))
    minted = survivor.of("CreateAccessKey")
    assert len(minted) == 1
    new = minted[0].key_id
    assert iam_calls(survivor) == [*((call, orphan) for call in REVOKE), ("DeleteAccessKey", orphan),
                                   ("UntagUser", orphan), ("CreateAccessKey", new)]
    assert watch.assert_i1() == new
    assert record_of(watch).phase is Phase.GRACE and watch.iam_keys() == {begin.old: "Active", new: "Active"}
    assert orphan not in watch.stored_text()

    w.clock.advance(GRACE + timedelta(hours=1))
    ok(rotate(w, survivor, "survivor-2"))
    assert watch.iam_keys() == {begin.old: "Inactive", new: "Active"}
    w.clock.advance(DELETE_AFTER + timedelta(hours=1))
    ok(rotate(w, survivor, "survivor-3"))
    assert watch.assert_i1() == new and watch.iam_keys() == {new: "Active"}
    assert orphan not in watch.stored_text()
    check_i3(begin, survivor.log, new)


def in_grace(world, watch) -> tuple[str, str]:
    """A hand-made key rotated (forced); the clock then just past the grace window."""
    old, _ = world.seed("ci")
    ok(rotate(world, IamEffects(world.clock), "runner-A", force=True))
    new = watch.assert_i1()
    assert record_of(watch).phase is Phase.GRACE and watch.iam_keys() == {old: "Active", new: "Active"}
    world.clock.advance(GRACE + timedelta(hours=1))
    return old, new


def finishes_and_deletes_on_time(w, watch, old: str, new: str) -> IamEffects:
    """After a runner died in the old key's revoke: the next run finishes the rotation with the old
    key Inactive and its deactivation noted; the key is still there an hour before delete_after
    from that note, gone an hour after; the current key works throughout; nothing else is
    touched. Returns the later runs' effects."""
    later = IamEffects(w.clock, observe=watch.served_ids)
    w.clock.advance(timedelta(hours=1))
    ok(rotate(w, later, "later"))
    record = record_of(watch)
    assert record.phase is Phase.IDLE and record.previous is None and record.rotations == 1
    assert watch.assert_i1() == new and watch.iam_keys() == {old: "Inactive", new: "Active"}
    since = noted(watch, old)
    assert since is not None, f"the deactivation of …{old[-4:]} is not noted: {watch.tags()}"

    w.clock.set(since + DELETE_AFTER - timedelta(hours=1))
    ok(rotate(w, later, "later-2"))
    assert watch.iam_keys() == {old: "Inactive", new: "Active"}, "deleted before delete_after"
    w.clock.advance(timedelta(hours=2))
    ok(rotate(w, later, "later-3"))
    assert watch.assert_i1() == new and watch.iam_keys() == {new: "Active"}
    assert {key for _, key in iam_calls(later)} == {old}, iam_calls(later)
    assert iam_calls(later)[-2:] == [("DeleteAccessKey", old), ("UntagUser", old)]
    assert not [tag for tag in watch.tags() if tag.startswith(TAG)]
    return later


def test_iam_sigkill_after_the_old_keys_revoke_before_its_deletion(w, watch):
    """The runner dies right after the old key's revoke (UpdateAccessKey Inactive and the note),
    before it recorded the end of the rotation. A later run only records it (the key is already
    Inactive); delete_after after the note the key is deleted, and nothing else is touched."""
    old, new = in_grace(w, watch)
    assert killed(w, REVOKE[1]) == [(call, old) for call in REVOKE]
    assert [r["key_id"] for r in intents(w, "revoke")] == [shown_id(old)], "no intent in the audit trail"
    assert watch.iam_keys() == {old: "Inactive", new: "Active"} and record_of(watch).phase is Phase.GRACE
    assert watch.assert_i1() == new and noted(watch, old) is not None
    later = finishes_and_deletes_on_time(w, watch, old, new)
    assert later.ops()[0] == "write_record" and iam_calls(later) == [("DeleteAccessKey", old), ("UntagUser", old)]


def test_iam_sigkill_inside_the_old_keys_revoke_between_its_two_calls(w, watch):
    """The runner dies inside IamIssuer.revoke, after its first IAM call and before its second.
    A later run must end the job: the old key Inactive with its deactivation noted, deleted
    delete_after later; the current key works throughout; nothing else is touched."""
    old, new = in_grace(w, watch)
    assert killed(w, REVOKE[0]) == [(REVOKE[0], old)]
    assert [r["key_id"] for r in intents(w, "revoke")] == [shown_id(old)], "no intent in the audit trail"
    assert record_of(watch).phase is Phase.GRACE and watch.assert_i1() == new
    finishes_and_deletes_on_time(w, watch, old, new)


# --- 3. more crashes --------------------------------------------------------------------------------

@pytest.mark.parametrize("first", [1, 2], ids=list(REVOKE))
def test_iam_crash_inside_the_orphan_sweep(w, watch, first):
    """Runner A dies right after CreateAccessKey (an orphan); runner B takes the rotation over and
    dies in the orphan sweep, after the first or the second call of the orphan's revoke. A later
    run deletes the orphan and completes the rotation. (With REVOKE tagging first, a crash after
    the tag left an Active tagged orphan that counted as a person's rescue: RESCUED.)"""
    old, _ = w.seed("ci")
    with pytest.raises(SimulatedCrash):
        rotate(w, IamEffects(w.clock, crash_after=3), "A", force=True)        # after CreateAccessKey
    orphan = next(key for key in watch.iam_keys() if key != old)
    w.clock.advance(LEASE + timedelta(minutes=1))
    sweeping = IamEffects(w.clock, crash_after=1 + first)                      # the take-over, then IAM
    with pytest.raises(SimulatedCrash):
        rotate(w, sweeping, "B")
    assert (sweeping.crashed.op, sweeping.crashed.key_id) == (REVOKE[first - 1], orphan)
    assert watch.assert_i1() == old
    w.clock.advance(LEASE + timedelta(minutes=1))
    ok(rotate(w, IamEffects(w.clock), "C"))
    new = watch.assert_i1()
    assert orphan not in watch.iam_keys() and watch.iam_keys() == {old: "Active", new: "Active"}
    assert record_of(watch).phase is Phase.GRACE and orphan not in watch.stored_text()


def test_iam_crash_between_delete_and_untag_leaves_no_stale_tag(w, watch):
    old, new = in_grace(w, watch)
    ok(rotate(w, IamEffects(w.clock), "runner-B"))                             # deactivates the old key
    w.clock.advance(DELETE_AFTER + timedelta(hours=1))
    deleting = IamEffects(w.clock, crash_after=1)
    with pytest.raises(SimulatedCrash):
        rotate(w, deleting, "runner-C")
    assert deleting.crashed.op == "DeleteAccessKey" and watch.iam_keys() == {new: "Active"}
    for attempt in range(2):
        w.clock.advance(DELETE_AFTER + timedelta(hours=1))
        ok(rotate(w, IamEffects(w.clock), f"runner-D{attempt}"))
    assert watch.assert_i1() == new
    assert TAG + old not in watch.tags()
