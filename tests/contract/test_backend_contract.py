"""The one backend contract suite (rotator/interfaces.py ``Backend``), run against every case in
``backends.CASES``. Every assertion checks real state through ``read`` (or an application's view)."""

from __future__ import annotations

import threading
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import pytest

from rotator.errors import BackendError, Conflict, RotatorError
from rotator.models import KeyRef, Phase, RotationRecord, Secret, Snapshot

from .backends import CASES, BackendCase

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)


# --- fixtures ----------------------------------------------------------------------------------

@pytest.fixture(params=[pytest.param(case, id=case.name, marks=case.marks) for case in CASES])
def case(request: pytest.FixtureRequest) -> BackendCase:
    return request.param


@pytest.fixture
def made(case: BackendCase, tmp_path):
    backend, new_target = case.make(tmp_path)
    try:
        yield backend, new_target
    finally:
        try:
            if case.teardown is not None:
                case.teardown(backend)
        finally:
            backend.close()


@pytest.fixture
def backend(made):
    return made[0]


@pytest.fixture
def new_target(made):
    return made[1]


@pytest.fixture
def target(new_target):
    return new_target()


@pytest.fixture
def primary(backend):
    """The backend, for tests of primary writes (stage, promote, record): needs a record."""
    require(backend, "holds_record")
    return backend


def require(backend: Any, capability: str) -> None:
    if not getattr(backend.capabilities, capability):
        pytest.skip(f"backend {backend.name} does not declare {capability}")


# --- helpers -----------------------------------------------------------------------------------

def new_secret() -> Secret:
    return Secret(f"sk-contract-{uuid.uuid4().hex}")


def ref(secret: Secret, rotation_id: str = "r-0001") -> KeyRef:
    return KeyRef.of(secret, key_id=f"id-{secret.last4}", name=f"contract · {rotation_id}",
                     created_on=T0, expires_on=T0 + timedelta(days=90), rotation_id=rotation_id)


def record(phase: Phase = Phase.IDLE, **fields: Any) -> RotationRecord:
    return RotationRecord(phase=phase, **fields)


def full_record(current: Secret, pending: Secret, previous: Secret, rotation_id: str) -> RotationRecord:
    """A record with every field set (instants in UTC, whole seconds)."""
    return RotationRecord(
        phase=Phase.GRACE,
        current=ref(current, rotation_id),
        pending=ref(pending, rotation_id),
        previous=ref(previous, "r-0000"),
        rotation_id=rotation_id,
        owner="runner-a",
        lease_until=T0 + timedelta(minutes=15),
        started_at=T0,
        verified_at=T0 + timedelta(minutes=2),
        grace_until=T0 + timedelta(hours=48),
        attempts=2,
        last_error="verify: issuer timed out",
        last_rotated_at=T0 - timedelta(days=76),
        rotations=7,
        adoption="matched by last4 and name",
    )


def bootstrap(backend: Any, target: Any, value: Secret) -> str:
    """Bring a fresh target to 'value is current, nothing pending' with primary writes."""
    version = backend.stage(target, value, record(Phase.STAGED, pending=ref(value)), expect=None)
    return backend.promote(target, record(Phase.IDLE, current=ref(value)), expect=version)


def app_view(case: BackendCase, backend: Any, target: Any) -> str | None:
    if case.app_read is not None:
        return case.app_read(backend, target)
    current = backend.read(target).current
    return None if current is None else current.reveal()


def slots(snapshot: Snapshot) -> tuple[Secret | None, Secret | None, Secret | None]:
    return snapshot.current, snapshot.pending, snapshot.previous


# --- reading -----------------------------------------------------------------------------------

def test_missing_target_reads_as_empty_snapshot(backend, target):
    assert backend.read(target) == Snapshot()
    assert not backend.read(target).exists


# --- primary writes ----------------------------------------------------------------------------

def test_stage_with_no_expectation_creates_the_target(primary, target):
    value, saved = new_secret(), record(Phase.STAGED, rotation_id="r-1")
    saved = saved.evolve(pending=ref(value, "r-1"))

    version = primary.stage(target, value, saved, expect=None)

    snap = primary.read(target)
    assert snap.version == version
    assert slots(snap) == (None, value, None)
    assert snap.record == saved


def test_record_with_every_field_set_round_trips(primary, target):
    a, b, c = new_secret(), new_secret(), new_secret()
    first = full_record(a, b, c, "r-0001")
    version = primary.stage(target, b, first, expect=None)
    assert primary.read(target).record == first

    second = full_record(b, c, a, "r-0002").evolve(phase=Phase.ROLLING_BACK, attempts=5)
    primary.write_record(target, second, expect=version)
    assert primary.read(target).record == second


STALE_WRITES: dict[str, Callable[..., str]] = {
    "stage": lambda b, t, expect: b.stage(t, new_secret(), record(Phase.STAGED), expect=expect),
    "write_record": lambda b, t, expect: b.write_record(t, record(Phase.CLAIMED, owner="late"), expect=expect),
    "promote": lambda b, t, expect: b.promote(t, record(Phase.GRACE), expect=expect),
    "discard_pending": lambda b, t, expect: b.discard_pending(t, record(Phase.IDLE), expect=expect),
}


@pytest.mark.parametrize("op", sorted(STALE_WRITES))
def test_write_with_a_stale_version_conflicts_and_changes_nothing(primary, target, op):
    stale = primary.stage(target, new_secret(), record(Phase.STAGED, owner="first"), expect=None)
    primary.write_record(target, record(Phase.STAGED, owner="second"), expect=stale)
    before = primary.read(target)

    with pytest.raises(Conflict):
        STALE_WRITES[op](primary, target, stale)

    assert primary.read(target) == before


@pytest.mark.parametrize("op", ["stage", "write_record"])
def test_create_on_an_existing_target_conflicts(primary, target, op):
    bootstrap(primary, target, new_secret())
    before = primary.read(target)

    with pytest.raises(Conflict):
        STALE_WRITES[op](primary, target, None)

    assert primary.read(target) == before


def test_promote_moves_pending_to_current_and_current_to_previous(primary, target):
    old, new = new_secret(), new_secret()
    version = bootstrap(primary, target, old)
    version = primary.stage(target, new, record(Phase.STAGED, pending=ref(new)), expect=version)
    saved = record(Phase.GRACE, current=ref(new), previous=ref(old))

    version = primary.promote(target, saved, expect=version)

    snap = primary.read(target)
    assert snap.version == version
    assert (snap.current, snap.pending) == (new, None)
    if primary.capabilities.keeps_previous:
        assert snap.previous == old
    assert snap.record == saved


def test_promote_with_nothing_pending_is_refused(primary, target):
    version = bootstrap(primary, target, new_secret())
    before = primary.read(target)

    with pytest.raises(BackendError) as caught:
        primary.promote(target, record(Phase.GRACE), expect=version)

    assert not isinstance(caught.value, Conflict)
    assert primary.read(target) == before


def test_discard_pending_empties_pending_and_keeps_current(primary, target):
    current = new_secret()
    version = bootstrap(primary, target, current)
    version = primary.stage(target, new_secret(), record(Phase.STAGED), expect=version)
    saved = record(Phase.IDLE, current=ref(current), last_error="rolled back")

    version = primary.discard_pending(target, saved, expect=version)

    snap = primary.read(target)
    assert snap.version == version
    assert (snap.current, snap.pending) == (current, None)
    assert snap.record == saved


def test_write_record_keeps_every_slot(primary, target):
    old, new, pending = new_secret(), new_secret(), new_secret()
    version = bootstrap(primary, target, old)
    version = primary.stage(target, new, record(Phase.STAGED), expect=version)
    version = primary.promote(target, record(Phase.GRACE), expect=version)
    version = primary.stage(target, pending, record(Phase.STAGED), expect=version)
    before = primary.read(target)
    saved = record(Phase.CLAIMED, owner="runner-b", lease_until=T0)

    version = primary.write_record(target, saved, expect=version)

    snap = primary.read(target)
    assert snap.version == version
    assert slots(snap) == slots(before)
    assert snap.record == saved


def test_racing_cas_writes_have_exactly_one_winner(primary, new_target):
    for _ in range(20):
        target = new_target()
        version = primary.stage(target, new_secret(), record(Phase.IDLE), expect=None)
        values = [new_secret(), new_secret()]
        outcomes = race(lambda i: primary.stage(target, values[i], record(Phase.STAGED, owner=f"runner-{i}"),
                                                expect=version), count=2)

        winners = [i for i, outcome in enumerate(outcomes) if not isinstance(outcome, Exception)]
        assert len(winners) == 1, outcomes
        loser = outcomes[1 - winners[0]]
        assert isinstance(loser, Conflict), loser
        snap = primary.read(target)
        assert snap.pending == values[winners[0]]
        assert snap.record.owner == f"runner-{winners[0]}"


def race(call: Callable[[int], Any], count: int) -> list[Any]:
    """Run ``call(i)`` in ``count`` threads released together; return each result or exception."""
    barrier = threading.Barrier(count)
    outcomes: list[Any] = [None] * count

    def run(i: int) -> None:
        barrier.wait()
        try:
            outcomes[i] = call(i)
        except Exception as exc:  # noqa: BLE001 - the outcome is what the test inspects
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return outcomes


# --- secondary writes --------------------------------------------------------------------------

def test_deploy_creates_sets_current_and_previous_and_is_idempotent(case, backend, target):
    first, second = new_secret(), new_secret()

    backend.deploy(target, first, None, ref(first))
    created = backend.read(target)
    assert (created.current, created.previous) == (first, None)
    assert app_view(case, backend, target) == first.reveal()

    backend.deploy(target, second, first, ref(second, "r-0002"))
    once = backend.read(target)
    backend.deploy(target, second, first, ref(second, "r-0002"))
    twice = backend.read(target)

    assert once.current == twice.current == second
    if backend.capabilities.keeps_previous:
        assert once.previous == twice.previous == first
    assert app_view(case, backend, target) == second.reveal()


# --- what applications and operators see -------------------------------------------------------

def test_application_always_reads_a_valid_key_through_a_rotation(case, primary, target):
    old, new = new_secret(), new_secret()
    version = bootstrap(primary, target, old)
    seen = [app_view(case, primary, target)]

    def step(write: Callable[[str], str]) -> None:
        nonlocal version
        version = write(version)
        seen.append(app_view(case, primary, target))

    step(lambda v: primary.write_record(target, record(Phase.CLAIMED, rotation_id="r-2", owner="a"), expect=v))
    step(lambda v: primary.stage(target, new, record(Phase.STAGED, rotation_id="r-2", pending=ref(new)), expect=v))
    with pytest.raises(Conflict):
        primary.write_record(target, record(Phase.STAGED, owner="b"), expect=None)
    seen.append(app_view(case, primary, target))
    step(lambda v: primary.write_record(target, record(Phase.STAGED, rotation_id="r-2", verified_at=T0), expect=v))
    step(lambda v: primary.promote(target, record(Phase.GRACE, rotation_id="r-2", current=ref(new)), expect=v))
    step(lambda v: primary.write_record(target, record(Phase.IDLE, current=ref(new), rotations=1), expect=v))

    assert seen == [old.reveal()] * 5 + [new.reveal()] * 2


def test_no_value_appears_in_any_exception_message(primary, target):
    a, b, c = new_secret(), new_secret(), new_secret()
    stale = primary.stage(target, a, record(Phase.STAGED), expect=None)
    version = primary.promote(target, record(Phase.IDLE), expect=stale)
    version = primary.stage(target, b, record(Phase.STAGED), expect=version)

    errors = [raised(attempt) for attempt in (
        lambda: primary.stage(target, c, record(Phase.STAGED), expect=None),
        lambda: primary.stage(target, c, record(Phase.STAGED), expect=stale),
        lambda: primary.write_record(target, record(Phase.CLAIMED), expect=stale),
        lambda: primary.promote(target, record(Phase.GRACE), expect=stale),
        lambda: primary.discard_pending(target, record(Phase.IDLE), expect=stale),
    )]
    version = primary.discard_pending(target, record(Phase.IDLE), expect=version)
    errors.append(raised(lambda: primary.promote(target, record(Phase.GRACE), expect=version)))

    assert all(isinstance(error, RotatorError) for error in errors), errors
    for error in errors:
        text = "\n".join(messages(error))
        for value in (a, b, c):
            assert value.reveal() not in text
            assert value.reveal()[-12:] not in text


def raised(call: Callable[[], Any]) -> BaseException:
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - inspected by the caller
        return exc
    raise AssertionError("the call was expected to fail")


def messages(error: BaseException | None) -> list[str]:
    """str and repr of an exception and of everything chained to it."""
    out: list[str] = []
    while error is not None:
        out += [str(error), repr(error), *map(str, error.args)]
        error = error.__cause__ or error.__context__
    return out
