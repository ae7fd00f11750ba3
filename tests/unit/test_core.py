"""Pure pieces of the core: durations and instants, secrets and redaction, the record format,
configuration validation, credential references."""

from __future__ import annotations

import dataclasses
import logging
import pickle
from datetime import datetime, timedelta, timezone

import pytest

from rotator import config, credentials, redact
from rotator.errors import ConfigError
from rotator.models import KeyRef, Phase, RotationRecord, Secret, fingerprint
from rotator.timeutil import format_duration, format_instant, parse_duration, parse_instant

UTC = timezone.utc


@pytest.mark.parametrize("text, seconds", [
    ("14d", 14 * 86400), ("48h", 48 * 3600), ("1h30m", 5400), ("90s", 90), ("2w", 14 * 86400),
    ("1.5h", 5400), (" 10 m ", 600), (120, 120), (timedelta(hours=1), 3600),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("bad", ["", "soon", "14", "3x", "1d2", True, None])
def test_parse_duration_rejects(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_format_duration():
    assert format_duration(timedelta(days=14)) == "14d"
    assert format_duration(timedelta(seconds=5400)) == "1h30m"
    assert format_duration(timedelta(seconds=-90)) == "-1m30s"
    assert format_duration(timedelta(0)) == "0s"


@pytest.mark.parametrize("text", ["2027-03-01T12:00:00Z", "2027-03-01T12:00:00.123456Z",
                                  "2027-03-01T13:00:00+01:00", "2027-03-01T12:00:00"])
def test_parse_instant_is_lenient_and_utc(text):
    moment = parse_instant(text)
    assert moment.tzinfo is not None and moment.replace(microsecond=0) == datetime(2027, 3, 1, 12, tzinfo=UTC)
    assert format_instant(moment) == "2027-03-01T12:00:00Z"


def test_secret_never_shows_its_value():
    raw = "ms-" + "ab" * 16
    secret = Secret(raw)
    for rendered in (str(secret), repr(secret), f"{secret}", f"{secret!r}", "%s" % secret, str([secret])):
        assert raw not in rendered
    assert secret.last4 == raw[-4:] and secret.fingerprint == fingerprint(raw)
    assert secret == Secret(raw) and secret != Secret(raw + "x")
    with pytest.raises(TypeError):
        pickle.dumps(secret)
    with pytest.raises(ValueError):
        Secret("")


def test_a_deferred_secret_reads_its_value_only_when_more_than_its_fingerprint_is_needed():
    raw, other = "ms-" + "ef" * 16, "ms-" + "01" * 16
    reads: list[int] = []

    def later(value: str = raw) -> Secret:
        return Secret.deferred(fingerprint(raw), lambda: reads.append(1) or Secret(value))

    value = later()
    assert value.fingerprint == fingerprint(raw) and hash(value) == hash(Secret(raw))
    assert value != Secret(other) and repr(value) == f"<secret fp={fingerprint(raw)}>" and not reads
    assert value == Secret(raw) and reads == [1]                  # the same fingerprint: compared
    assert value.reveal() == raw and value.last4 == raw[-4:] and reads == [1]    # read once
    parts = Secret.of_parts({"aws_access_key_id": "AKIAEXAMPLE00000WXYZ", "aws_secret_access_key": "s" * 40})
    whole = Secret.deferred(parts.fingerprint, lambda: parts)
    assert whole.part("aws_secret_access_key") == "s" * 40 and whole.last4 == "WXYZ" and whole == parts
    liar = later(other)                                           # the store holds something else
    with pytest.raises(ValueError):
        liar.reveal()
    with pytest.raises(TypeError):
        pickle.dumps(later())


def test_redaction_masks_remembered_values_and_key_shapes():
    remembered = Secret("opaque-token-value-1234").reveal()
    shaped = "ms-" + "cd" * 16                       # never wrapped: caught by its shape
    text = f"a {remembered} b {shaped} c ms_short"
    masked = redact.redact(text)
    assert remembered not in masked and shaped not in masked and "ms_short" in masked


@pytest.mark.parametrize("value", [
    "a]b^c-d[e\\f^g", "with spaces inside it", "tab\there and\nnewline", "ünïcødé-välüé-1", "x" * 8,
])
def test_redaction_masks_values_of_any_characters_wherever_they_sit(value):
    """Only runs of characters some remembered value contains are scanned: a value is found with
    regex-special characters in it, glued to other text, at either end, or twice in a row."""
    Secret(value).reveal()
    for text in (value, f"pre{value}post", f"{value}{value}", f'{{"m": "{value}"}}', f"a {value}"):
        masked = redact.redact(text)
        assert value not in masked and redact.MASK in masked, text


def test_redacting_filter_covers_args_and_tracebacks(caplog):
    raw = Secret("another-opaque-value-9876").reveal()
    logger = logging.getLogger("test.redact")
    handler_filter = redact.RedactingFilter()
    record = logger.makeRecord("test.redact", logging.ERROR, __file__, 1, "value=%s", (raw,), None)
    handler_filter.filter(record)
    assert raw not in record.getMessage()
    try:
        raise RuntimeError(f"boom {raw}")
    except RuntimeError:
        import sys
        record = logger.makeRecord("test.redact", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    handler_filter.filter(record)
    assert raw not in (record.exc_text or "") and "boom" in record.exc_text


def test_record_round_trip_and_newer_format_refused():
    ref = KeyRef(fingerprint="f", last4="abcd", key_id="1", name="n [r-1]",
                 created_on=datetime(2027, 1, 1, tzinfo=UTC), expires_on=datetime(2027, 4, 1, tzinfo=UTC),
                 rotation_id="1")
    record = RotationRecord(phase=Phase.GRACE, current=ref, previous=ref, rotation_id="1", owner=None,
                            grace_until=datetime(2027, 1, 3, tzinfo=UTC), attempts=2, last_error="x",
                            rotations=4, adoption="matched")
    assert RotationRecord.from_dict(record.to_dict()) == record
    assert set(ref.to_dict()) == {f.name for f in dataclasses.fields(KeyRef)}   # every field is written
    with pytest.raises(ValueError, match="newer"):
        RotationRecord.from_dict({**record.to_dict(), "format": 99})


def _settings(**secret):
    data = {
        "issuers": {"q": {"type": "quivaworks"}},
        "backends": {"f": {"type": "file"}},
        "secrets": [{"name": "web", "issuer": "q", "targets": [{"backend": "f", "path": "w.json"}], **secret}],
    }
    return config.load(data=data)


def test_config_defaults_and_overrides():
    settings = _settings()
    spec = settings.secrets[0]
    assert settings.lead_time(spec) == timedelta(days=14) and settings.grace(spec) == timedelta(hours=48)
    settings = _settings(lead_time="21d", grace="0s")
    spec = settings.secrets[0]
    assert settings.lead_time(spec) == timedelta(days=21) and settings.grace(spec) == timedelta(0)


@pytest.mark.parametrize("secret, message", [
    ({"key_name": "static name"}, "key_name must contain {rotation}"),
    ({"key_name": "{nope} {rotation}"}, "bad template"),
    ({"name": "has space"}, "secrets[0].name"),
    ({"targets": []}, "secrets[0].targets"),
])
def test_config_errors_name_the_field(secret, message):
    with pytest.raises(ConfigError) as caught:
        _settings(**secret)
    assert message in str(caught.value) and str(caught.value).startswith("<embedded>:")


def test_duplicate_secret_names_refused():
    data = {"issuers": {"q": {"type": "quivaworks"}}, "backends": {"f": {"type": "file"}},
            "secrets": [{"name": "a", "issuer": "q", "targets": [{"backend": "f", "path": "1"}]}] * 2}
    with pytest.raises(ConfigError, match="duplicate secret name 'a'"):
        config.load(data=data)


@pytest.mark.parametrize("ref, message", [
    ("ms-literal-value", "never live in the config file"),
    ({"env": "A", "file": "b"}, "exactly one of"),
    ({"env": "A", "extra": 1}, "unknown setting"),
    (42, "expected a table"),
])
def test_credential_reference_shapes(ref, message):
    with pytest.raises(ConfigError, match=message):
        credentials.check_reference(ref, "issuers.q.admin_key")


def test_credential_resolution(tmp_path):
    path = tmp_path / "key"
    path.write_text("file-held-value-0001\n")
    assert credentials.resolve({"file": str(path)}, "w").reveal() == "file-held-value-0001"
    assert credentials.resolve({"env": "K"}, "w", environ={"K": "env-held-value-0002"}).reveal() == "env-held-value-0002"
    with pytest.raises(ConfigError, match="K is not set"):
        credentials.resolve({"env": "K"}, "w", environ={})
    with pytest.raises(ConfigError, match="cannot read"):
        credentials.resolve({"file": str(tmp_path / "missing")}, "w")


def test_redaction_stays_fast_with_thousands_of_values():
    """A fleet run remembers thousands of values and logs between each: no per-value recompiling."""
    import secrets as random_values
    import time

    values = [Secret(f"fleet-{random_values.token_hex(16)}").reveal() for _ in range(3000)]
    started = time.perf_counter()
    masked = [redact.redact(f"line {i}: {values[i]} and …{values[i][-4:]}") for i in range(0, 3000, 3)]
    assert all(values[i * 3] not in line for i, line in enumerate(masked))
    assert time.perf_counter() - started < 2.0     # generous: ~20 ms here; the regex way took ~40 s


def test_listings_after_a_ticket_reflect_the_effect_and_are_shared():
    """A listing "after" a ticket is one whose request started after the ticket was taken: one
    fetched while an issue was in flight does not count; threads waiting together share one."""
    import threading

    from rotator.listings import Listings

    listings = Listings()
    in_flight, release = threading.Event(), threading.Event()

    class Issuer:
        name = "quiva"
        calls = 0

        def list_keys(self):
            Issuer.calls += 1
            number = Issuer.calls
            if number == 1:
                listings.ticket(self)            # another worker's issue completes during the fetch
            if number == 3:
                in_flight.set()
                release.wait(5)                  # keep this fetch in flight while others ask
            return [f"listing {number}"]

    issuer = Issuer()
    assert listings.any(issuer) == ["listing 1"]
    assert listings.any(issuer) == ["listing 1"]                  # amortised: no refetch
    assert listings.after(issuer, 1) == ["listing 2"]             # listing 1 started before ticket 1
    assert listings.after(issuer, 1) == ["listing 2"]
    ticket = listings.ticket(issuer)
    results: list = []
    first = threading.Thread(target=lambda: results.append(listings.after(issuer, ticket)))
    first.start()
    assert in_flight.wait(5)
    others = [threading.Thread(target=lambda: results.append(listings.after(issuer, ticket))) for _ in range(3)]
    for worker in others:
        worker.start()
    release.set()
    for worker in (first, *others):
        worker.join(5)
    assert results == [["listing 3"]] * 4 and Issuer.calls == 3   # four waiters, one request
    assert listings.at_hand(issuer) == ["listing 3"]


def test_a_stalled_listing_is_relieved_by_one_more_and_no_more():
    """A listing request that waits out a 429 does not hold back the threads that need a listing
    after their ticket: once it has taken STALL_FACTOR times the last listing's time, one of them
    starts another; never more than MOST_IN_FLIGHT at once. Before that, they wait for it."""
    import threading

    from rotator import listings as module
    from rotator.listings import Listings

    clock = [100.0]
    listings = Listings(monotonic=lambda: clock[0])
    stalled, release, calls = threading.Event(), threading.Event(), []

    class Issuer:
        name = "quiva"

        def list_keys(self):
            calls.append(len(calls) + 1)
            number = len(calls)
            if number == 2:
                stalled.set()
                release.wait(10)                # waiting out a retry_after
            return [f"listing {number}"]

    issuer = Issuer()
    assert listings.fresh(issuer) == ["listing 1"]           # took 0 s on this clock
    slow = threading.Thread(target=listings.fresh, args=(issuer,))
    slow.start()
    assert stalled.wait(5)
    ticket = listings.ticket(issuer)
    waiting: list = []
    early = threading.Thread(target=lambda: waiting.append(listings.after(issuer, ticket)))
    early.start()
    early.join(0.3)
    assert early.is_alive() and calls == [1, 2]             # not stalled yet: it waits
    clock[0] += module.STALL_MIN + 0.01
    early.join(5)
    assert waiting == [["listing 3"]] and calls == [1, 2, 3]    # relieved while 2 is in flight
    # two in flight at most: with 2 stalled and 4 in flight as well, a fifth waits
    third_gate = threading.Event()
    original = Issuer.list_keys

    def blocking(self):
        calls.append(len(calls) + 1)
        third_gate.wait(10)
        return [f"listing {len(calls)}"]

    Issuer.list_keys = blocking
    clock[0] += 10
    relief = threading.Thread(target=listings.fresh, args=(issuer,))
    relief.start()
    for _ in range(500):
        if len(calls) == 4:
            break
        threading.Event().wait(0.01)
    clock[0] += 10
    extra = threading.Thread(target=listings.fresh, args=(issuer,))
    extra.start()
    extra.join(0.3)
    assert len(calls) == 4 and extra.is_alive()
    Issuer.list_keys = original
    third_gate.set()
    release.set()
    for thread in (slow, relief, extra):
        thread.join(5)
        assert not thread.is_alive()


def test_the_example_config_loads_builds_and_rotates_its_own_admin_key(tmp_path, monkeypatch):
    """config.example.toml stays true to the code: it loads, every provider accepts its section
    (no network), every credential reference it declares resolves once its variables are set and
    its files exist (here under tmp_path instead of /var/run/secrets), and the prod issuer's admin
    key is managed by rotator itself."""
    from pathlib import Path

    from rotator import config
    from rotator.runtime import Runtime

    text = (Path(__file__).parents[2] / "config.example.toml").read_text()
    for name in ("RELOAD_HOOK_URL", "ALERT_WEBHOOK_URL", "SLACK_WEBHOOK_URL"):
        monkeypatch.setenv(name, "https://hooks.example/rotator-example-0001")
    for line in text.splitlines():
        if "{ file = \"/var/run/secrets/" in line and not line.lstrip().startswith("#"):
            relative = line.split("{ file = \"/var/run/secrets/", 1)[1].split("\"", 1)[0]
            secret = tmp_path / relative
            secret.parent.mkdir(parents=True, exist_ok=True)
            secret.write_text("example-credential-0001\n")
            secret.chmod(0o600)
    example = tmp_path / "config.toml"
    example.write_text(text.replace("{ file = \"/var/run/secrets/", f"{{ file = \"{tmp_path}/"))
    runtime = Runtime(config.load(example))
    try:
        managed = {issuer: [s.name for s in runtime.secrets if runtime.issuers[issuer] in s.signs_in]
                   for issuer in runtime.issuers}
        assert managed == {"quiva-prod": ["quiva-prod-admin"], "quiva-staging": [], "iam-ci-deployer": []}
    finally:
        runtime.close()


def test_the_sweeps_reference_lookup_agrees_with_refers_to():
    """engine._referred (sets by id and last 4) answers as any(ref.refers_to(entry)) does: by id
    when the ref has one, else by last 4 and, when the ref has a name, the name."""
    from rotator.engine import _referred
    from rotator.models import KeyInfo

    refs = [KeyRef("f1", "aaaa", key_id="id-1"), KeyRef("f2", "bbbb"), KeyRef("f3", "cccc", name="web [r-1]"),
            KeyRef("f4", "dddd", key_id="id-4", name="ignored")]
    entries = [KeyInfo(key_id, name, last4, None, None) for key_id in ("id-1", "id-4", "id-9", "")
               for name in ("web [r-1]", "other") for last4 in ("aaaa", "bbbb", "cccc", "dddd")]
    refers = _referred(refs)
    for entry in entries:
        assert refers(entry) == any(ref.refers_to(entry) for ref in refs), entry
    assert not _referred([])(entries[0])
