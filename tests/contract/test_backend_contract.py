"""The one backend contract suite (rotator/interfaces.py ``Backend``), run against every case in
``backends.CASES``. Every assertion checks real state through ``read`` (or an application's view)."""

from __future__ import annotations

import dataclasses
import threading
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import pytest

from rotator.errors import BackendError, ConfigError, Conflict, CorruptPayload, RotatorError
from rotator.models import KeyRef, Phase, RotationRecord, Secret, Snapshot
from rotator.values import Layout

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
    """The target's field as an application reads it."""
    if case.app_read is not None:
        return (case.app_read(backend, target) or {}).get(target.field)
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


# --- values made of several parts (an AWS access key: id and secret) ---------------------------

DEFAULT_NAMES = {"access_key_id": "aws_access_key_id", "secret_access_key": "aws_secret_access_key"}
RENAMED = {"access_key_id": "aws_access_key_id", "secret_access_key": "AWS_SECRET_ACCESS_KEY"}
APP_FIELDS = {"endpoint": "https://iam.example.test", "profile": "web"}


@pytest.fixture(params=[pytest.param(DEFAULT_NAMES, id="default-names"), pytest.param(RENAMED, id="renamed")])
def names(request: pytest.FixtureRequest) -> dict[str, str]:
    """A target's ``fields``: part -> JSON field, in the issuer's part order (id first)."""
    return request.param


def new_parts() -> Secret:
    return Secret.of_parts({"access_key_id": "AKIA" + uuid.uuid4().hex[:16].upper(),
                            "secret_access_key": f"{uuid.uuid4().hex}/{uuid.uuid4().hex[:12]}"})


def stored(value: Secret, names: dict[str, str]) -> dict[str, str]:
    """The application's fields that hold ``value``: {field: part's string}."""
    return {names[part]: text for part, text in value.parts}


def app_fields(case: BackendCase, backend: Any, target: Any) -> dict[str, Any]:
    """The value's fields as an application reads them (absent ones left out)."""
    if case.app_read is None:
        current = backend.read(target).current
        return {} if current is None else {name: current.part(part) for part, name in target.layout.fields}
    found = case.app_read(backend, target) or {}
    return {name: found[name] for name in target.layout.names if name in found}


def same_parts(found: Secret | None, wanted: Secret) -> bool:
    """The same value, with its parts in the same order (the identifying part first)."""
    return found == wanted and found.parts == wanted.parts and found.fingerprint == wanted.fingerprint


def value_texts(*values: Secret) -> list[str]:
    return [text for value in values for _, text in value.parts]


def assert_no_part_in(error: BaseException, *values: Secret) -> None:
    text = "\n".join(messages(error))
    for part in value_texts(*values):
        assert part not in text
        assert part[-12:] not in text


def needs(case: BackendCase, hook: str) -> Any:
    found = getattr(case, hook)
    if found is None:
        pytest.skip(f"the {case.name} case has no {hook}")
    return found


def test_target_with_parts_is_hashable_and_lays_out_its_parts(backend, new_target, names):
    plain, parted = new_target(), new_target(fields=names)

    assert plain.layout == Layout.of(plain.field)
    assert parted.layout == Layout.of("api_key", names)
    assert parted.layout.names == tuple(names.values())
    assert {parted: 1, plain: 2}[parted] == 1
    unparted = dataclasses.replace(parted, fields=None)
    assert unparted != parted                         # equality includes the fields
    assert unparted.layout.plain


@pytest.mark.parametrize("fields, problem", [
    ({"access_key_id": "aws_access_key_id", "secret_access_key": "rotator"}, "reserved"),
    ({"access_key_id": "aws_access_key_id", "secret_access_key": ""}, "at least 1 character"),
    ({"access_key_id": "key", "secret_access_key": "key"}, "share one field"),
])
def test_target_fields_with_parts_are_checked_like_field(new_target, fields, problem):
    with pytest.raises(ConfigError) as caught:
        new_target(fields=fields)

    assert "fields" in str(caught.value) and problem in str(caught.value)


def test_parts_stage_promote_read_round_trip(case, primary, new_target, names):
    target = new_target(fields=names)
    old, new = new_parts(), new_parts()

    version = bootstrap(primary, target, old)
    assert same_parts(primary.read(target).current, old)
    assert app_fields(case, primary, target) == stored(old, names)

    version = primary.stage(target, new, record(Phase.STAGED, rotation_id="r-2", pending=ref(new, "r-2")),
                            expect=version)
    snap = primary.read(target)
    assert same_parts(snap.current, old) and same_parts(snap.pending, new)
    assert app_fields(case, primary, target) == stored(old, names)      # the app sees the old key until promote

    saved = record(Phase.GRACE, rotation_id="r-2", current=ref(new, "r-2"), previous=ref(old))
    version = primary.promote(target, saved, expect=version)
    snap = primary.read(target)
    assert snap.version == version and snap.record == saved
    assert same_parts(snap.current, new) and snap.pending is None
    if primary.capabilities.keeps_previous:
        assert same_parts(snap.previous, old)
    assert app_fields(case, primary, target) == stored(new, names)


def test_parts_pending_and_previous_slots_keep_parts(primary, new_target, names):
    target = new_target(fields=names)
    a, b, c = new_parts(), new_parts(), new_parts()
    version = bootstrap(primary, target, a)
    version = primary.stage(target, b, record(Phase.STAGED), expect=version)
    version = primary.promote(target, record(Phase.GRACE), expect=version)
    version = primary.stage(target, c, record(Phase.STAGED), expect=version)

    version = primary.write_record(target, record(Phase.CLAIMED, owner="runner-b"), expect=version)

    snap = primary.read(target)
    assert same_parts(snap.current, b) and same_parts(snap.pending, c)
    if primary.capabilities.keeps_previous:
        assert same_parts(snap.previous, a)

    version = primary.discard_pending(target, record(Phase.IDLE), expect=version)
    assert primary.read(target).pending is None and same_parts(primary.read(target).current, b)


def test_parts_deploy_round_trip_and_repeat_writes_nothing(case, backend, new_target, names):
    target = new_target(fields=names)
    first, second = new_parts(), new_parts()

    backend.deploy(target, first, None, ref(first))
    snap = backend.read(target)
    assert same_parts(snap.current, first) and snap.previous is None
    assert app_fields(case, backend, target) == stored(first, names)

    backend.deploy(target, second, first, ref(second, "r-0002"))
    snap = backend.read(target)
    assert same_parts(snap.current, second)
    if backend.capabilities.keeps_previous:
        assert same_parts(snap.previous, first)
    assert app_fields(case, backend, target) == stored(second, names)

    if case.count_writes is not None:
        with case.count_writes(backend, target) as writes:
            backend.deploy(target, second, first, ref(second, "r-0002"))
            assert writes() == 0


def test_parts_are_written_in_one_store_write(case, backend, new_target, names):
    count_writes = needs(case, "count_writes")
    target = new_target(fields=names)
    first, second = new_parts(), new_parts()

    with count_writes(backend, target) as writes:
        backend.deploy(target, first, None, ref(first))
        assert writes() == 1
    with count_writes(backend, target) as writes:
        backend.deploy(target, second, first, ref(second, "r-0002"))
        assert writes() == 1
    assert app_fields(case, backend, target) == stored(second, names)


def test_parts_are_never_stored_half_written(case, primary, new_target, names):
    """Every version the store kept through a rotation holds all of a value's fields or none."""
    history = needs(case, "history")
    target = new_target(fields=names)
    old, new = new_parts(), new_parts()
    version = bootstrap(primary, target, old)
    version = primary.stage(target, new, record(Phase.STAGED, pending=ref(new)), expect=version)
    primary.promote(target, record(Phase.GRACE, current=ref(new), previous=ref(old)), expect=version)

    versions = history(primary, target)
    assert versions
    for data in versions:
        present = [name for name in names.values() if name in data]
        assert present in ([], list(names.values())), present
        if present:
            value = Secret.of_parts({part: data[name] for part, name in names.items()})
            assert value in (old, new)


def test_parts_keep_the_applications_other_fields(case, backend, new_target, names):
    app_write = needs(case, "app_write")
    target = new_target(fields=names)
    app_write(backend, target, dict(APP_FIELDS))
    first, second = new_parts(), new_parts()

    backend.deploy(target, first, None, ref(first))
    backend.deploy(target, second, first, ref(second, "r-0002"))

    seen = case.app_read(backend, target)
    assert {key: seen.get(key) for key in APP_FIELDS} == APP_FIELDS
    assert app_fields(case, backend, target) == stored(second, names)
    assert same_parts(backend.read(target).current, second)


def test_parts_fingerprint_does_not_depend_on_part_order(case, backend, new_target, names):
    app_write = needs(case, "app_write")
    target = new_target(fields=names)
    key_id, secret = "AKIA" + uuid.uuid4().hex[:16].upper(), uuid.uuid4().hex * 2
    # written by hand, secret first: the stored order is not the issuer's order
    app_write(backend, target, {names["secret_access_key"]: secret, names["access_key_id"]: key_id, **APP_FIELDS})

    current = backend.read(target).current

    in_order = Secret.of_parts({"access_key_id": key_id, "secret_access_key": secret})
    reversed_order = Secret.of_parts([("secret_access_key", secret), ("access_key_id", key_id)])
    assert current.fingerprint == in_order.fingerprint == reversed_order.fingerprint
    assert current == in_order == reversed_order
    assert current.parts == in_order.parts            # the layout's order: the id first
    assert current.last4 == key_id[-4:]


def _half(names: dict[str, str], value: Secret) -> dict[str, Any]:
    return {names["access_key_id"]: value.part("access_key_id"), **APP_FIELDS}


def _wrong_type(names: dict[str, str], value: Secret) -> dict[str, Any]:
    return {names["access_key_id"]: value.part("access_key_id"), names["secret_access_key"]: 918273645,
            **APP_FIELDS}


def _wrong_type_first(names: dict[str, str], value: Secret) -> dict[str, Any]:
    return {names["access_key_id"]: [value.part("access_key_id")],
            names["secret_access_key"]: value.part("secret_access_key"), **APP_FIELDS}


@pytest.mark.parametrize("payload, named", [
    pytest.param(_half, "secret_access_key", id="incomplete"),
    pytest.param(_wrong_type, "secret_access_key", id="number"),
    pytest.param(_wrong_type_first, "access_key_id", id="array"),
])
def test_parts_payload_incomplete_or_mistyped_is_corrupt(case, backend, new_target, names, payload, named):
    app_write = needs(case, "app_write")
    target = new_target(fields=names)
    value = new_parts()
    app_write(backend, target, payload(names, value))

    error = raised(lambda: backend.read(target))

    assert isinstance(error, CorruptPayload), error
    assert f"'{names[named]}'" in str(error)
    assert_no_part_in(error, value)
    assert "918273645" not in "\n".join(messages(error))


@pytest.mark.parametrize("fields, value_of", [
    pytest.param(None, new_parts, id="parts-for-a-plain-field"),
    pytest.param(DEFAULT_NAMES, new_secret, id="plain-for-parts"),
    pytest.param({"access_key_id": "aws_access_key_id"}, new_parts, id="more-parts-than-fields"),
])
def test_parts_a_value_that_does_not_fit_the_fields_is_refused_before_any_write(backend, new_target, fields,
                                                                               value_of):
    target = new_target(fields=fields) if fields else new_target()
    value = value_of()

    error = raised(lambda: backend.deploy(target, value, None, ref(value)))

    assert isinstance(error, BackendError) and not isinstance(error, (Conflict, CorruptPayload)), error
    assert any(f"'{name}'" in str(error) for name in target.layout.names)
    text = "\n".join(messages(error))
    assert value.reveal() not in text
    assert all(part not in text for _, part in value.parts or ())
    assert backend.read(target) == Snapshot()
