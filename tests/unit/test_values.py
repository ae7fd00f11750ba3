"""rotator.values: where a value made of parts sits in a store's JSON object, and how the pending
and previous slots keep it. Pure: no store, no I/O."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rotator.models import Secret
from rotator.values import Layout, LayoutError, decode_slot, encode_slot, target_fields

ISSUER_PARTS = (("access_key_id", "aws_access_key_id"), ("secret_access_key", "aws_secret_access_key"))
FIELDS = dict(ISSUER_PARTS)
KEY_ID, SECRET = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def access_key(key_id: str = KEY_ID, secret: str = SECRET) -> Secret:
    return Secret.of_parts({"access_key_id": key_id, "secret_access_key": secret})


PARTS_LAYOUT = Layout.of("api_key", FIELDS)
PLAIN = Layout.of("api_key")


# --- Layout.of, names, describe --------------------------------------------------------------------

def test_parts_layout_of_keeps_the_issuers_order_and_ignores_field():
    assert PARTS_LAYOUT.fields == ISSUER_PARTS
    assert not PARTS_LAYOUT.plain
    assert PARTS_LAYOUT.names == ("aws_access_key_id", "aws_secret_access_key")
    assert PARTS_LAYOUT.describe() == "fields 'aws_access_key_id', 'aws_secret_access_key'"
    assert Layout.of("token", FIELDS) == PARTS_LAYOUT


def test_parts_empty_map_is_a_plain_layout():
    assert Layout.of("token", {}) == Layout.of("token", None) == Layout((("", "token"),))
    assert Layout.of("token").plain and Layout.of("token").names == ("token",)
    assert Layout.of("token").describe() == "field 'token'"


def test_parts_layouts_are_hashable_values():
    assert {PARTS_LAYOUT: 1}[Layout.of("x", dict(ISSUER_PARTS))] == 1
    assert PARTS_LAYOUT != Layout.of("x", dict(reversed(ISSUER_PARTS)))   # the order names the key


# --- read ----------------------------------------------------------------------------------------

def test_parts_read_returns_the_value_in_the_layouts_order():
    found = PARTS_LAYOUT.read({"aws_secret_access_key": SECRET, "region": "eu-west-1", "aws_access_key_id": KEY_ID})

    assert found == access_key()
    assert found.parts == (("access_key_id", KEY_ID), ("secret_access_key", SECRET))
    assert found.last4 == KEY_ID[-4:]


def test_parts_read_of_an_object_without_them_is_none():
    assert PARTS_LAYOUT.read({}) is None
    assert PARTS_LAYOUT.read({"api_key": "sk-plain", "aws_access_key_id": ""}) is None
    assert PARTS_LAYOUT.read({"aws_access_key_id": None, "aws_secret_access_key": None}) is None


@pytest.mark.parametrize("data, named", [
    ({"aws_access_key_id": KEY_ID}, "'aws_secret_access_key' is missing"),
    ({"aws_secret_access_key": SECRET, "aws_access_key_id": ""}, "'aws_access_key_id' is missing"),
    ({"aws_access_key_id": KEY_ID, "aws_secret_access_key": None}, "'aws_secret_access_key' is missing"),
])
def test_parts_read_of_an_incomplete_value_names_the_missing_field(data, named):
    with pytest.raises(LayoutError, match=named) as caught:
        PARTS_LAYOUT.read(data)

    assert KEY_ID not in str(caught.value) and SECRET not in str(caught.value)


@pytest.mark.parametrize("wrong, kind", [(42, "number"), ([SECRET], "array"), ({"v": SECRET}, "object"),
                                         (True, "boolean")])
def test_parts_read_of_a_mistyped_part_names_its_field_and_type(wrong, kind):
    with pytest.raises(LayoutError, match=f"field 'aws_secret_access_key' is a JSON {kind}, expected a string") as caught:
        PARTS_LAYOUT.read({"aws_access_key_id": KEY_ID, "aws_secret_access_key": wrong})

    assert KEY_ID not in str(caught.value) and SECRET not in str(caught.value)


def test_parts_plain_layout_reads_a_plain_value():
    found = PLAIN.read({"api_key": "sk-plain-value-1"})

    assert found == Secret("sk-plain-value-1") and found.parts is None
    assert PLAIN.read({"api_key": ""}) is None
    with pytest.raises(LayoutError, match="field 'api_key' is a JSON number"):
        PLAIN.read({"api_key": 7})


# --- write ---------------------------------------------------------------------------------------

def test_parts_write_puts_new_fields_first_in_the_layouts_order():
    out = PARTS_LAYOUT.write({"region": "eu-west-1", "rotator": {"format": 1}}, access_key())

    assert list(out) == ["aws_access_key_id", "aws_secret_access_key", "region", "rotator"]
    assert out["aws_access_key_id"] == KEY_ID and out["aws_secret_access_key"] == SECRET


def test_parts_write_keeps_existing_fields_in_their_place_and_returns_a_new_dict():
    data = {"region": "eu-west-1", "aws_secret_access_key": "old-secret", "timeout": 5,
            "aws_access_key_id": "AKIAOLD0000000000000"}

    out = PARTS_LAYOUT.write(data, access_key())

    assert list(out) == ["region", "aws_secret_access_key", "timeout", "aws_access_key_id"]
    assert out["aws_secret_access_key"] == SECRET and out["aws_access_key_id"] == KEY_ID
    assert data["aws_secret_access_key"] == "old-secret"      # the input is not changed


def test_parts_write_of_one_new_field_puts_only_it_first():
    out = PARTS_LAYOUT.write({"region": "x", "aws_secret_access_key": "old"}, access_key())

    assert list(out) == ["aws_access_key_id", "region", "aws_secret_access_key"]


def test_parts_write_none_removes_only_the_values_fields():
    data = {"aws_access_key_id": KEY_ID, "region": "x", "aws_secret_access_key": SECRET}

    assert PARTS_LAYOUT.write(data, None) == {"region": "x"}
    assert PLAIN.write({"api_key": "k", "region": "x"}, None) == {"region": "x"}


def test_parts_plain_write_is_byte_for_byte_what_a_single_field_was():
    data = {"endpoint": "https://api.quiva.ai"}

    out = PLAIN.write(data, Secret("sk-plain-value-2"))

    assert json.dumps(out) == json.dumps({"api_key": "sk-plain-value-2", "endpoint": "https://api.quiva.ai"})
    assert list(PLAIN.write({"endpoint": "e", "api_key": "old"}, Secret("sk-plain-value-2"))) == ["endpoint", "api_key"]


@pytest.mark.parametrize("layout, value, message", [
    (PLAIN, access_key(), "field 'api_key' takes a plain value, but this value has parts"),
    (PARTS_LAYOUT, Secret("sk-plain-value-3"), "field 'aws_access_key_id' takes part 'access_key_id'"),
    (Layout.of("x", {**FIELDS, "session_token": "token"}), access_key(), "field 'token' takes part 'session_token'"),
    (Layout.of("x", {"access_key_id": "id", "session_token": "token"}), access_key(),
     "part 'secret_access_key' but the target has no field"),
    (Layout.of("x", {"access_key_id": "id"}), access_key(), "part 'secret_access_key' but the target has no field"),
])
def test_parts_write_of_a_value_that_does_not_fit_is_refused_without_its_value(layout, value, message):
    with pytest.raises(LayoutError, match=message) as caught:
        layout.write({}, value)

    for text in (value.reveal(), KEY_ID, SECRET, "sk-plain-value-3"):
        assert text not in str(caught.value)


# --- the pending and previous slots ----------------------------------------------------------------

def test_parts_slot_is_an_object_of_parts_in_their_order():
    assert encode_slot(access_key()) == {"access_key_id": KEY_ID, "secret_access_key": SECRET}
    assert list(encode_slot(access_key())) == ["access_key_id", "secret_access_key"]
    assert encode_slot(Secret("sk-plain-value-4")) == "sk-plain-value-4"
    assert encode_slot(None) is None


def test_parts_slot_round_trips_through_json():
    for value in (access_key(), Secret("sk-plain-value-5")):
        back = decode_slot(json.loads(json.dumps(encode_slot(value))), "'rotator.previous'")
        assert back == value and back.parts == value.parts and back.fingerprint == value.fingerprint


@pytest.mark.parametrize("data", [None, ""])
def test_parts_empty_slot_is_none(data):
    assert decode_slot(data, "'rotator.pending'") is None


@pytest.mark.parametrize("data, kind", [(7, "number"), ([KEY_ID], "array"), ({}, "object"),
                                        ({"access_key_id": KEY_ID, "secret_access_key": 7}, "object"),
                                        ({"access_key_id": KEY_ID, "secret_access_key": ""}, "object")])
def test_parts_slot_of_another_shape_names_where_without_its_value(data, kind):
    with pytest.raises(LayoutError, match=f"'rotator.pending' is a JSON {kind}, expected a string or an object") as caught:
        decode_slot(data, "'rotator.pending'")

    assert KEY_ID not in str(caught.value)


# --- the fingerprint of a value of parts -------------------------------------------------------------

def test_parts_fingerprint_does_not_depend_on_the_order_the_parts_arrive_in():
    forward = access_key()
    backward = Secret.of_parts([("secret_access_key", SECRET), ("access_key_id", KEY_ID)])

    assert forward == backward and forward.fingerprint == backward.fingerprint
    assert forward.last4 == KEY_ID[-4:] and backward.last4 == SECRET[-4:]   # the first part names it
    assert access_key(secret=SECRET + "x").fingerprint != forward.fingerprint


# --- a target's fields -----------------------------------------------------------------------------

def test_parts_target_fields_rename_some_parts_and_keep_the_issuers_order():
    got = target_fields(ISSUER_PARTS, {"secret_access_key": "AWS_SECRET_ACCESS_KEY"}, "secrets[0].fields")

    assert got == {"access_key_id": "aws_access_key_id", "secret_access_key": "AWS_SECRET_ACCESS_KEY"}
    assert list(got) == ["access_key_id", "secret_access_key"]
    assert target_fields(ISSUER_PARTS, None, "f") == FIELDS


@pytest.mark.parametrize("given, message", [
    ({"session_token": "t"}, "unknown part 'session_token'"),
    ({"secret_access_key": "aws_access_key_id"}, "two parts cannot share one field"),
    ({"secret_access_key": ""}, "expected a non-empty field name"),
    ("AWS_SECRET", "expected a table of part = field name"),
])
def test_parts_target_fields_problems_name_where(given, message):
    with pytest.raises(ValueError, match=message) as caught:
        target_fields(ISSUER_PARTS, given, "secrets[0].fields")

    assert str(caught.value).startswith("secrets[0].fields")


# --- properties --------------------------------------------------------------------------------------

_text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=24)
_json = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                     max_leaves=6)


@st.composite
def _layouts_and_values(draw):
    parts = draw(st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=4, unique=True))
    names = draw(st.lists(st.text(min_size=1, max_size=8), min_size=len(parts), max_size=len(parts), unique=True))
    layout = Layout.of("api_key", dict(zip(parts, names)))
    value = Secret.of_parts([(part, draw(_text)) for part in parts])
    app = draw(st.dictionaries(st.text(max_size=8).filter(lambda k: k not in names), _json, max_size=4))
    return layout, value, app


@settings(max_examples=150, deadline=None)
@given(_layouts_and_values())
def test_parts_write_then_read_gives_the_value_back_and_keeps_every_other_field(case):
    layout, value, app = case

    out = layout.write(app, value)
    back = layout.read(json.loads(json.dumps(out)))

    assert back == value and back.parts == value.parts
    assert {k: v for k, v in out.items() if k not in layout.names} == app
    assert layout.write(out, None) == app


def test_parts_with_non_ascii_characters_compare_as_values():
    """Secret equality compares bytes: hmac.compare_digest refuses str with non-ASCII characters."""
    value = Secret.of_parts({"user": "zoë", "password": "pässwörd-ÆØÅ"})

    assert value == Secret.of_parts([("password", "pässwörd-ÆØÅ"), ("user", "zoë")])
    assert value != Secret.of_parts({"user": "zoe", "password": "pässwörd-ÆØÅ"})
    assert Secret("sk-ünïcode-1") == Secret("sk-ünïcode-1") != Secret("sk-unicode-1")
