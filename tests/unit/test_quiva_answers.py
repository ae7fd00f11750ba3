"""The QuivaWorks answer parsers (providers/quiva/answers.py): any JSON in any field, and any
JSON as the whole body, gives a validated value or a rotator error with a clear message — never
another exception. Then the rules, one example at a time: extreme dates, ids, key values.

Pure: no sockets, no clock but the ``now`` passed in, no waits.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rotator_providers.quiva import answers
from rotator.errors import RotatorError, UnusableKey, UntrustedAnswer
from rotator.models import KeyInfo, Listing

UTC = timezone.utc
NOW = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
KEY = "ms-5ecre7c0ffee5ecre7c0ffee0123c0de"
WHERE = "op: GET /path returned 200"
FAST = settings(max_examples=100, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# ---- strategies -------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10)

offsets = st.timedeltas(min_value=-timedelta(hours=23, minutes=59), max_value=timedelta(hours=23, minutes=59)) \
    .map(lambda d: timezone(timedelta(minutes=int(d.total_seconds() // 60))))
moments = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59),
                       timezones=offsets)
# a day inside the range at each end: moved to UTC by an offset of up to 24 h, they stay in it
inner_moments = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30, 23, 59, 59),
                             timezones=offsets)
instant_texts = st.one_of(
    moments.map(lambda m: m.isoformat()),
    inner_moments.map(lambda m: m.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:23] + "Z")
    .filter(lambda t: t[:4].isdigit()),
    st.sampled_from(["0001-01-01T00:00:00Z", "0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59Z",
                     "9999-12-31T23:59:59-05:00", "9999-12-31T23:59:59.999999999Z", "2026-02-30T00:00:00Z",
                     "2026-01-01", "2026-01-01T00:00:00", "2026-01-01T24:00:00Z", "2026-01-01T00:00:00+24:00",
                     "", " 2026-01-01T00:00:00Z", "1999-12-31T23:59:59Z", "2000-01-01T00:00:00Z"]),
)
field_values = json_values | instant_texts
any_now = st.just(NOW) | st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59),
                                      timezones=st.just(UTC))
months = st.integers(min_value=1, max_value=120)


def entry(**overrides: Any) -> dict[str, Any]:
    base = {"id": "k1", "name": "web r-1", "last_4_characters": "c0de", "created_on": "2026-11-01T00:00:00.000Z",
            "expires_on": "2027-02-01T00:00:00.000Z", "account": "svc@example.com"}
    return {**base, **overrides}


def issue_data(**overrides: Any) -> dict[str, Any]:
    base = {"key": KEY, "name": "web r-1", "created_on": "2026-12-01T09:00:00.000Z",
            "expires_on": "2027-03-01T09:00:00.000Z", "creds": "opaque"}
    return {**base, **overrides}


def outcome(call: Callable[[], Any], *secrets: str) -> Any:
    """Run a parser: its value, or the RotatorError it raised after checking the message is
    clear (non-empty, printable, no secret). Any other exception fails the test."""
    try:
        return call()
    except RotatorError as exc:
        message = str(exc)
        assert message.strip() and message.isprintable(), message
        for secret in secrets:
            assert secret not in message and secret not in repr(exc)
        return exc


def clear(text: str | None) -> None:
    assert text is None or (text.strip() and text.isprintable()), text


def check_key_info(info: KeyInfo, now: datetime, lifetime: int) -> None:
    assert isinstance(info.key_id, str) and info.key_id and info.key_id.strip() == info.key_id
    assert isinstance(info.last4, str) and len(info.last4) == 4
    assert isinstance(info.name, str)
    assert info.account is None or isinstance(info.account, str)
    if info.created_on is not None:
        assert answers.FLOOR <= info.created_on <= answers._shift(now, answers.SKEW)
    if info.expires_on is not None:
        assert info.expires_on.tzinfo is not None
        if info.created_on is not None:
            assert info.created_on < info.expires_on <= answers.add_months(info.created_on, lifetime)
    clear(info.note)


# ---- any JSON anywhere --------------------------------------------------------------------

@FAST
@given(body=json_values)
def test_every_parser_takes_any_top_level_json(body):
    for parse in (lambda: answers.session(body, where=WHERE, provider="p"),
                  lambda: answers.verified_by_auth(body, where=WHERE, provider="p"),
                  lambda: answers.verified_by_agents(body, where=WHERE, provider="p"),
                  lambda: answers.issued(body, requested="web r-1", now=NOW, lifetime_months=3,
                                         where=WHERE, provider="p"),
                  lambda: answers.listing_page(body, now=NOW, lifetime_months=3, where=WHERE, provider="p"),
                  lambda: answers.listing_entry(body, now=NOW, lifetime_months=3)):
        result = outcome(parse)
        assert result is True or isinstance(result, (RotatorError, answers.Session, answers.Issued,
                                                     answers.Page, KeyInfo))
    assert isinstance(answers.error_text(body), str)
    wait = answers.retry_after(body)
    assert wait is None or (wait >= 0 and wait != float("inf"))


@FAST
@given(field=st.sampled_from(["auth_token", "refresh_token", "passkey_enabled"]), value=json_values,
       wrap=st.booleans())
def test_session_any_field(field, value, wrap):
    data = {"auth_token": "tok-1", "refresh_token": "re-1", field: value}
    body = {"data": data} if wrap else {"data": data, "error": value}
    result = outcome(lambda: answers.session(body, where=WHERE, provider="p"), "tok-1", "re-1")
    if isinstance(result, answers.Session):
        assert isinstance(result.auth_token, str) and result.auth_token
        assert isinstance(result.refresh_token, str) and result.refresh_token
        assert "tok" not in repr(result)
    else:
        assert isinstance(result, UntrustedAnswer)


@FAST
@given(value=json_values, agents=st.booleans())
def test_verify_any_data(value, agents):
    body = {"data": value}
    parse = answers.verified_by_agents if agents else answers.verified_by_auth
    result = outcome(lambda: parse(body, where=WHERE, provider="p"))
    assert result is True or isinstance(result, UntrustedAnswer)
    if result is True and not agents:
        assert isinstance(value, dict) and isinstance(value.get("auth_token"), str) and value["auth_token"]


@FAST
@given(field=st.sampled_from(["key", "name", "created_on", "expires_on", "creds"]), value=field_values,
       now=any_now, lifetime=months)
def test_issue_any_field(field, value, now, lifetime):
    body = {"data": issue_data(**{field: value})}
    result = outcome(lambda: answers.issued(body, requested="web r-1", now=now, lifetime_months=lifetime,
                                            where=WHERE, provider="p"), KEY)
    if isinstance(result, answers.Issued):
        assert answers.key_value_problem(result.value) is None
        assert isinstance(result.name, str) and result.name
        assert result.created_on.tzinfo is not None and result.expires_on.tzinfo is not None
        assert result.expires_on >= result.created_on
        assert result.expires_on <= answers.add_months(result.created_on, lifetime)
        assert abs(result.created_on - now) <= answers.SKEW
        clear(result.note)
        assert KEY not in (result.note or "") and KEY not in repr(result)
    else:
        assert isinstance(result, UnusableKey) and field == "key"
        assert result.name == "web r-1"


@FAST
@given(value=st.text(max_size=600) | json_values)
def test_issue_any_key_value(value):
    body = {"data": issue_data(key=value)}
    result = outcome(lambda: answers.issued(body, requested="web r-1", now=NOW, lifetime_months=3,
                                            where=WHERE, provider="p"))
    if isinstance(result, answers.Issued):
        assert 8 <= len(result.value) <= 512 and all("!" <= c <= "~" for c in result.value)
    else:
        assert isinstance(result, UnusableKey) and result.name == "web r-1"


@FAST
@given(field=st.sampled_from(["id", "name", "last_4_characters", "created_on", "expires_on", "account",
                              "last_used_on"]),
       value=field_values, now=any_now, lifetime=months)
def test_listing_entry_any_field(field, value, now, lifetime):
    result = outcome(lambda: answers.listing_entry(entry(**{field: value}), now=now, lifetime_months=lifetime))
    if isinstance(result, KeyInfo):
        check_key_info(result, now, lifetime)
    else:
        assert isinstance(result, UntrustedAnswer) and field in ("id", "last_4_characters")


@FAST
@given(entries=st.lists(st.fixed_dictionaries({}, optional={
           "id": st.sampled_from(["a", "b", 3, None, "", " c"]) | json_values,
           "name": field_values, "last_4_characters": st.just("c0de") | json_values,
           "created_on": field_values, "expires_on": field_values}) | json_values, max_size=6),
       cursor=st.none() | json_values, cursor_field=st.sampled_from(["next", "next_cursor", "cursor"]),
       now=any_now)
def test_listing_page_any_entries(entries, cursor, cursor_field, now):
    body = {"data": entries, cursor_field: cursor}
    page = outcome(lambda: answers.listing_page(body, now=now, lifetime_months=3, where=WHERE, provider="p"))
    if isinstance(page, RotatorError):
        assert isinstance(page, UntrustedAnswer) and cursor is not None
        return
    assert len(page.entries) + len(page.problems) == len(entries)
    assert page.next is None or (isinstance(page.next, str) and page.next)
    listing = answers.listing([page, page]) if entries else answers.listing([page])
    assert isinstance(listing, Listing)
    ids = [k.key_id for k in listing]
    assert len(ids) == len(set(ids))
    for info in listing:
        check_key_info(info, now, 3)
    for problem in listing.problems:
        clear(problem)
    if entries and page.entries:
        assert not listing.keys and not listing.usable     # every id of a doubled page appears twice


def _compared(result: Any) -> Any:
    return ("refused", str(result)) if isinstance(result, RotatorError) else result


@FAST
@given(pages=st.lists(st.lists(st.fixed_dictionaries({}, optional={
           "id": st.sampled_from(["a", "b", "c", 1, 3, True, 1.0, None, ""]),
           "name": st.sampled_from(["web", "", None, 1]), "last_4_characters": st.sampled_from(["c0de", "beef", 1]),
           "created_on": st.sampled_from(["2026-11-01T00:00:00Z", "2026-12-10T00:00:00Z", "garbage"]) | instant_texts,
           "expires_on": st.sampled_from(["2027-02-01T00:00:00Z", "2126-02-01T00:00:00Z", "9999-12-31T23:59:59Z"])
           | instant_texts}), max_size=5), min_size=1, max_size=6),
       nows=st.lists(any_now | st.sampled_from([NOW - timedelta(days=20), NOW + timedelta(days=5)]),
                     min_size=6, max_size=6),
       lifetimes=st.lists(st.sampled_from([3, 120]), min_size=6, max_size=6))
def test_checked_entries_give_exactly_what_checking_them_again_gives(pages, nows, lifetimes):
    """Taking an unchanged entry from :class:`answers.Checked` is exact: whatever the listings,
    the order of ``now`` (backwards too) and the lifetime, a page parsed with it equals the page
    parsed from scratch, problems and messages included."""
    checked = answers.Checked()
    for data, now, lifetime in zip(pages, nows, lifetimes):
        body = {"data": data}
        fresh = outcome(lambda: answers.listing_page(body, now=now, lifetime_months=lifetime, where=WHERE,
                                                     provider="p"))
        reused = outcome(lambda: answers.listing_page(body, now=now, lifetime_months=lifetime, where=WHERE,
                                                      provider="p", checked=checked))
        assert _compared(reused) == _compared(fresh)
        checked.listing_done()


def test_an_unchanged_entry_is_not_checked_again_but_a_changed_one_is(monkeypatch):
    checked, calls = answers.Checked(), []
    real = answers.listing_entry
    monkeypatch.setattr(answers, "listing_entry", lambda raw, **kw: calls.append(raw["id"]) or real(raw, **kw))
    first = {"data": [entry(id="a"), entry(id="b"), entry(id="c", name=7), entry(id=5)]}
    for body, now in ((first, NOW), (first, NOW + timedelta(hours=1)), (first, NOW - timedelta(hours=1)),
                      ({"data": [entry(id="a", name="renamed"), entry(id="b"), entry(id=True), entry(id=5.0)]}, NOW)):
        answers.listing_page(body, now=now, lifetime_months=3, where=WHERE, provider="p", checked=checked)
        checked.listing_done()
    # a: checked, reused, checked again (an earlier now), changed; b and 5 (an integer id): the same
    # but reused at the end; c carries a note (its name is not a string): always checked; true and
    # 5.0 equal 5 in Python but are other JSON values: checked (and refused)
    assert calls == ["a", "b", "c", 5, "c", "a", "b", "c", 5, "a", True, 5.0]


@FAST
@given(content=st.binary(max_size=64) | json_values.map(lambda v: json.dumps(v).encode()))
def test_decode_never_raises(content):
    body = answers.decode(content)
    assert body is answers.NOT_JSON or json.dumps(body, allow_nan=False) is not None


@FAST
@given(text=instant_texts | st.text(max_size=40) | json_values)
def test_instant_is_strict_and_total(text):
    result = outcome(lambda: answers.instant(text, "created_on"))
    if isinstance(result, datetime):
        assert result.tzinfo is UTC and isinstance(text, str)
        assert text[-1] in "Zz" or "+" in text[-6:] or "-" in text[-6:]
    else:
        assert isinstance(result, UntrustedAnswer) and "created_on" in str(result)


@FAST
@given(moment=moments)
def test_instant_reads_what_isoformat_writes(moment):
    try:
        expected = moment.astimezone(UTC)
    except OverflowError:
        expected = None
    result = outcome(lambda: answers.instant(moment.isoformat(), "expires_on"))
    assert result == expected if expected is not None else isinstance(result, UntrustedAnswer)


@FAST
@given(moment=st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.just(UTC)),
       count=st.integers(min_value=-200, max_value=200))
def test_add_months_never_raises(moment, count):
    later = answers.add_months(moment, count)
    assert later.tzinfo is not None
    assert (later >= moment) if count >= 0 else (later <= moment)


# ---- dates, one rule at a time -------------------------------------------------------------

def listed(**fields: Any) -> KeyInfo:
    return answers.listing_entry(entry(**fields), now=NOW, lifetime_months=3)


@pytest.mark.parametrize("text, expected", [
    ("2026-01-01T00:00:00Z", datetime(2026, 1, 1, tzinfo=UTC)),
    ("2026-01-01T00:00:00.123Z", datetime(2026, 1, 1, 0, 0, 0, 123000, tzinfo=UTC)),
    ("2026-01-01T00:00:00.123456789Z", datetime(2026, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)),
    ("2026-01-01T02:00:00+02:00", datetime(2026, 1, 1, tzinfo=UTC)),
    ("2025-12-31T19:00:00-0500", datetime(2026, 1, 1, tzinfo=UTC)),
    ("2026-01-01t00:00z", datetime(2026, 1, 1, tzinfo=UTC)),
    ("9999-12-31T23:59:59Z", datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)),
    ("0001-01-01T00:00:00Z", datetime(1, 1, 1, tzinfo=UTC)),
])
def test_instants_that_are_read(text, expected):
    assert answers.instant(text, "x") == expected


@pytest.mark.parametrize("value", [
    "2026-01-01", "2026-01-01T00:00:00", "2026-01-01 00:00:00Z", "20260101T000000Z", "2026-13-01T00:00:00Z",
    "2026-02-30T00:00:00Z", "2026-01-01T24:00:00Z", "2026-01-01T00:00:60Z", "2026-01-01T00:00:00+24:00",
    "0000-01-01T00:00:00Z", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", " 2026-01-01T00:00:00Z",
    "2026-01-01T00:00:00Z\n", "２０２６-01-01T00:00:00Z", "", "garbage", 1767225600, 1.5, True, None, {}, [],
])
def test_instants_that_are_refused(value):
    with pytest.raises(UntrustedAnswer):
        answers.instant(value, "x")


def test_a_listed_expiry_is_capped_by_the_documented_lifetime():
    info = listed(created_on="2026-12-01T00:00:00Z", expires_on="9999-12-31T00:00:00Z")
    assert info.expires_on == datetime(2027, 3, 1, tzinfo=UTC)      # never "never": the lifetime bounds it
    assert "implausible" in info.note and "planning with created_on + 3 months = 2027-03-01" in info.note
    info = listed(created_on=None, expires_on="9999-12-31T00:00:00Z")
    assert info.expires_on is None and "treated as due" in info.note   # nothing to bound it with
    info = listed(created_on="2026-12-01T00:00:00Z", expires_on="2030-12-31T00:00:00Z")
    assert info.expires_on == datetime(2027, 3, 1, tzinfo=UTC)
    assert info.note == "reported expires_on 2030-12-31; planning with created_on + 3 months = 2027-03-01"


def test_a_listed_expiry_within_a_day_of_the_lifetime_needs_no_note():
    info = listed(created_on="2026-11-30T00:00:00Z", expires_on="2027-02-28T12:00:00Z")
    assert info.expires_on == datetime(2027, 2, 28, tzinfo=UTC) and info.note is None   # Nov 30 + 3 = Feb 28


def test_an_earlier_reported_expiry_is_honoured():
    info = listed(created_on="2026-11-01T00:00:00Z", expires_on="2026-12-01T00:00:00Z")
    assert info.expires_on == datetime(2026, 12, 1, tzinfo=UTC)
    assert "planning with it" in info.note


@pytest.mark.parametrize("fields, created, note", [
    ({"created_on": "2027-06-01T00:00:00Z"}, None, "created_on 2027-06-01 is in the future"),
    ({"created_on": "1999-01-01T00:00:00Z"}, None, "is before 2000-01-01"),
    ({"created_on": "0001-01-01T00:00:00Z"}, None, "is before 2000-01-01"),
    ({"created_on": 1767225600}, None, "created_on is a number"),
    ({"created_on": None}, None, "created_on is null"),
    ({"created_on": "2026-12-02T08:00:00Z", "expires_on": "2027-03-02T08:00:00Z"},       # clock skew
     datetime(2026, 12, 2, 8, tzinfo=UTC), None),
])
def test_listed_creation_dates(fields, created, note):
    info = listed(**fields)
    assert info.created_on == created
    assert (note is None and info.note is None) or note in info.note


@pytest.mark.parametrize("expires_on, note", [
    ("garbage", "'garbage' is not an ISO-8601 instant"),
    ("2026-10-01T00:00:00Z", "is not after created_on 2026-11-01"),
    ("2026-11-01T00:00:00Z", "is not after created_on"),
    ("1999-01-01T00:00:00Z", "not after created_on"),
    ("0001-01-01T00:00:00Z", "not after created_on"),
    (None, "expires_on is null"),
    ("", "is not an ISO-8601 instant"),
    (False, "expires_on is a boolean"),
])
def test_untrusted_listed_expiry_is_none_and_explained(expires_on, note):
    info = listed(expires_on=expires_on)
    assert info.expires_on is None
    assert note in info.note and "treated as due" in info.note


def test_without_a_creation_date_a_plausible_expiry_is_taken_as_reported():
    info = listed(created_on="not a date", expires_on="2027-01-15T00:00:00Z")
    assert info.created_on is None and info.expires_on == datetime(2027, 1, 15, tzinfo=UTC)
    info = listed(created_on="not a date", expires_on="1999-01-15T00:00:00Z")
    assert info.expires_on is None and "implausible" in info.note


@pytest.mark.parametrize("now", [datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
                                 datetime(2026, 1, 1)])
def test_extreme_clocks_do_not_raise(now):
    for fields in ({}, {"created_on": "9999-12-31T23:59:59Z", "expires_on": "9999-12-31T23:59:59Z"},
                   {"created_on": "0001-01-01T00:00:00Z", "expires_on": "0001-01-02T00:00:00+01:00"}):
        check_key_info(answers.listing_entry(entry(**fields), now=now, lifetime_months=120), now.replace(tzinfo=UTC), 120)
        body = {"data": issue_data(**fields)}
        issued = answers.issued(body, requested="web r-1", now=now, lifetime_months=120, where=WHERE, provider="p")
        assert issued.expires_on >= issued.created_on


def test_last_used_is_optional_and_strict():
    assert listed().last_used_on is None and listed().note is None
    assert listed(last_used_on=None).note is None
    assert listed(last_used_on="2026-11-20T10:00:00Z").last_used_on == datetime(2026, 11, 20, 10, tzinfo=UTC)
    info = listed(last_used_on="2027-05-01T00:00:00Z")
    assert info.last_used_on is None and "last_used_on 2027-05-01 is in the future" in info.note


# ---- ids, names, last 4 ------------------------------------------------------------------

@pytest.mark.parametrize("value, key_id", [("k1", "k1"), (0, "0"), (42, "42"), ("ab-12", "ab-12")])
def test_ids_that_are_taken(value, key_id):
    assert listed(id=value).key_id == key_id


@pytest.mark.parametrize("value, problem", [
    (None, "id is null"), (True, "id is a boolean"), (1.0, "id is a floating-point number"),
    (-1, "id is a negative number"), ("", "id is an empty string"), (" k1", "has surrounding whitespace"),
    ("k1\n", "has surrounding whitespace"), ("k\x001", "has control characters"), ({}, "id is an object"),
    ([1], "id is an array"), (10 ** 50, "implausibly large"),
])
def test_ids_that_are_refused(value, problem):
    with pytest.raises(UntrustedAnswer, match=problem):
        listed(id=value)


def test_an_entry_without_an_id_is_refused():
    body = entry()
    del body["id"]
    with pytest.raises(UntrustedAnswer, match="id is missing"):
        answers.listing_entry(body, now=NOW, lifetime_months=3)


@pytest.mark.parametrize("value", ["c0d", "c0dee", "", 1234, None])
def test_last_4_must_be_four_characters(value):
    with pytest.raises(UntrustedAnswer, match="last_4_characters"):
        listed(last_4_characters=value)


def test_names_and_accounts_are_repaired_with_a_note():
    body = entry()
    del body["name"]
    info = answers.listing_entry(body, now=NOW, lifetime_months=3)
    assert info.name == "" and info.note == 'name is missing; taken as ""'
    info = listed(name=["x"], account=7)
    assert (info.name, info.account) == ("", None)
    assert info.note == 'name is an array; taken as ""; account is a number, not a string; ignored'
    assert listed(account=None).account is None and listed(account=None).note is None


def test_a_listing_page_reports_refused_entries_and_the_listing_duplicate_ids():
    body = {"data": [entry(id="a"), entry(id=None), entry(id="b"), entry(id="b"), entry(id="c", last_4_characters="x")]}
    page = answers.listing_page(body, now=NOW, lifetime_months=3, where=WHERE, provider="p")
    listing = answers.listing([page])
    assert [k.key_id for k in listing] == ["a"]
    assert listing.problems == ("entry 1: id is null", "entry 4: last_4_characters has 1 characters, not 4",
                                "id 'b' appears twice")


@pytest.mark.parametrize("body, message", [
    ({"data": {}}, "data is an object, not an array"),
    ({"keys": []}, "the body has no data member"),
    ({"data": [], "error": "Rate limit exceeded"}, "the body carries an error (Rate limit exceeded)"),
    ([], "the body is an array, not a JSON object"),
    (answers.NOT_JSON, "the body is not JSON"),
    ({"data": [], "next": {"page": 2}}, "next is an object, not a cursor"),
    ({"data": [], "cursor": True}, "cursor is a boolean, not a cursor"),
    ({"data": [], "next_cursor": " c2"}, "next_cursor ' c2' is not a usable cursor"),
])
def test_listing_bodies_that_are_refused(body, message):
    with pytest.raises(UntrustedAnswer) as info:
        answers.listing_page(body, now=NOW, lifetime_months=3, where=WHERE, provider="quiva")
    assert str(info.value) == f"quiva: {WHERE}: {message}; the answer is not trusted"


@pytest.mark.parametrize("body, cursor", [({"data": []}, None), ({"data": [], "next": None, "cursor": ""}, None),
                                          ({"data": [], "next": False}, None), ({"data": [], "cursor": 3}, "3"),
                                          ({"data": [], "next_cursor": "c2"}, "c2")])
def test_listing_cursors(body, cursor):
    assert answers.listing_page(body, now=NOW, lifetime_months=3, where=WHERE, provider="p").next == cursor


# ---- key values, sessions, errors -----------------------------------------------------------

@pytest.mark.parametrize("value, problem", [
    (KEY, None), ("!" * 8, None), ("~" * 512, None), ("a" * 7, "has 7 characters"), ("a" * 513, "has 513 characters"),
    ("ms-abc def", "has whitespace at position 6"), ("ms-abcdef\t", "has whitespace"), ("ms-abc\x7fdef", "a control character"),
    ("ms-abcdéf1", "a non-ASCII character at position 7"), ("ms-abc\u00a0def", "has whitespace"), (None, "is null"),
    (["ms-abcdefgh"], "is an array"),
])
def test_key_values(value, problem):
    assert answers.key_value_problem(value) == problem or problem in answers.key_value_problem(value)


def test_an_unusable_key_never_shows_its_value_even_when_the_reply_echoes_it():
    bad = "ms-0123456789 abcdef"
    body = {"data": issue_data(key=bad, name=f"web r-1 {bad}")}
    with pytest.raises(UnusableKey) as info:
        answers.issued(body, requested="web r-1", now=NOW, lifetime_months=3, where=WHERE, provider="p")
    assert bad not in str(info.value) and "(…cdef)" in str(info.value)
    echoed = answers.issued({"data": issue_data(name=f"x {KEY}")}, requested="web r-1", now=NOW,
                            lifetime_months=3, where=WHERE, provider="p")
    assert KEY not in echoed.note


def test_last_4_are_shown_only_when_printable_and_the_value_is_long_enough():
    for value, shown in (("ms-abc de\x01\x02", False), ("abc", False), ("ms-abc def1", True)):
        with pytest.raises(UnusableKey) as info:
            answers.issued({"data": issue_data(key=value)}, requested="n", now=NOW, lifetime_months=3,
                           where=WHERE, provider="p")
        assert ("(…" in str(info.value)) is shown


def test_session_needs_both_tokens_and_a_header_safe_auth_token():
    ok = answers.session({"data": {"auth_token": "a.b-c", "refresh_token": "r"}}, where=WHERE, provider="p")
    assert (ok.auth_token, ok.refresh_token) == ("a.b-c", "r")
    for data, problem in (({"auth_token": "a"}, "data.refresh_token is missing"),
                          ({"auth_token": None, "refresh_token": "r"}, "data.auth_token is null"),
                          ({"auth_token": "a b", "refresh_token": "r"}, "cannot carry")):
        with pytest.raises(UntrustedAnswer, match=problem):
            answers.session({"data": data}, where=WHERE, provider="p")


@pytest.mark.parametrize("body, text", [
    ({"error": "Invalid API key", "message": "m"}, "Invalid API key"), ({"error": 5}, ""), ({}, ""),
    (answers.NOT_JSON, ""), ({"error": "bad\nline\x00"}, "bad?line?"), ({"error": "too long " * 60}, ("too long " * 60)[:200]),
    ({"error": f"bad key {'ms-' + 'a' * 32}"}, "bad key [REDACTED]"),
])
def test_error_text(body, text):
    assert answers.error_text(body) == text


@pytest.mark.parametrize("value, wait", [(7, 7.0), ("3", 3.0), (0, 0.0), (-1, None), (True, None), ("soon", None),
                                         (float("inf"), None), (10 ** 400, None), ("1e999", None), ([1], None)])
def test_retry_after(value, wait):
    assert answers.retry_after({"retry_after": value}) == wait


@pytest.mark.parametrize("content", [b"", b"   ", b"<html>", b"\xff\xfe", b"NaN", b'{"a": Infinity}',
                                     b"[" * 100_000, b"1" * 5000])
def test_bodies_that_are_not_json(content):
    assert answers.decode(content) is answers.NOT_JSON
