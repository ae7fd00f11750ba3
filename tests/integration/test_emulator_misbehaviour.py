"""The emulator's misbehaviour knobs over real HTTP: what a client sees on the wire, and whether
the effect happened in the model.

Each knob is driven once from Python (``emulator.faults.<knob>``) and once through
``POST /_emulator/faults``. Real sleeps are fractions of a second (trickle, latency).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from typing import Any

import httpx
import pytest

from rotator_providers.quiva.emulator import Emulator
from tests.world import ADMIN_EMAIL

ISSUE = "POST /accounts/api-key"
LIST = "GET /accounts/api-keys"
DELETE = "DELETE /accounts/api-key"
AUTH = "POST /accounts/auth-with-api-key"
LISTING_FIELDS = {"id", "name", "last_4_characters", "created_on", "expires_on", "account"}


@pytest.fixture
def client(emulator: Emulator):
    with httpx.Client(base_url=emulator.url, timeout=5, verify=False) as http:
        yield http


@pytest.fixture
def auth(client: httpx.Client, admin_key: str) -> dict[str, str]:
    resp = client.post("/accounts/auth-with-api-key", json={"api_key": admin_key})
    assert resp.status_code == 200, resp.text
    return bearer(resp.json()["data"]["auth_token"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def issue(client: httpx.Client, auth: dict[str, str], name: str = "web app") -> httpx.Response:
    return client.post("/accounts/api-key", json={"key_name": name}, headers=auth)


def listing(client: httpx.Client, auth: dict[str, str], **params: str) -> httpx.Response:
    return client.get("/accounts/api-keys", headers=auth, params=params)


def fp(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def knob(client: httpx.Client, **faults: Any) -> dict[str, Any]:
    """Arm faults over HTTP; returns the snapshot the endpoint answers with."""
    resp = client.post("/_emulator/faults", json=faults)
    assert resp.status_code == 200, resp.text
    return resp.json()["faults"]


def record(emu: Emulator, name: str) -> dict[str, Any]:
    (found,) = [r for r in emu.keys() if r["name"] == name]
    return found


def seed(emu: Emulator, *names: str) -> list[dict[str, Any]]:
    return [emu.create_key(ADMIN_EMAIL, name=n) for n in names]


# --------------------------------------------------------------------------- mangle_next: whole reply

WHOLE_REPLIES = {
    "html": ("text/html", None),
    "not_json": ("text/plain", None),
    "error_200": ("application/json", {"error": "Invalid API key",
                                       "message": "The API key is invalid, deleted or expired"}),
    "empty": ("application/json", {}),
    "data_type": ("application/json", {"data": "unexpected"}),
}


@pytest.mark.parametrize("mode", sorted(WHOLE_REPLIES))
def test_mangled_issue_reply_hides_a_key_that_was_created(emulator, client, auth, mode):
    emulator.faults.mangle_next(1, mode, path=ISSUE)
    resp = issue(client, auth, "mangled")
    content_type, body = WHOLE_REPLIES[mode]
    assert resp.status_code == 200
    assert resp.headers["content-type"] == content_type
    assert int(resp.headers["content-length"]) == len(resp.content)
    if body is not None:
        assert resp.json() == body
    elif mode == "html":
        assert resp.text.startswith("<html>") and "proxy" in resp.text and resp.text.endswith("</html>")
    else:
        with pytest.raises(ValueError):
            json.loads(resp.content)
    created = emulator.issued_values()[-1]
    assert created not in resp.text
    assert record(emulator, "mangled")["value_fingerprint"] == fp(created)
    assert emulator.is_active(created)  # the effect happened

    normal = issue(client, auth, "normal")  # n=1: used up
    assert normal.status_code == 200 and normal.json()["data"]["name"] == "normal"
    assert emulator.faults.snapshot()["mangle_next"] == []


@pytest.mark.parametrize("mode", ["html", "empty", "data_type"])
def test_mangled_listing_and_delete_replies(emulator, client, auth, mode):
    victim = seed(emulator, "victim")[0]
    emulator.faults.mangle_next(2, mode, path="/accounts/api-keys")  # any method on that path
    emulator.faults.mangle_next(1, mode, path=DELETE)
    for _ in range(2):
        resp = listing(client, auth)
        assert resp.status_code == 200 and "victim" not in resp.text
    assert [e["name"] for e in listing(client, auth).json()["data"]] == ["admin", "victim"]

    resp = client.delete("/accounts/api-key", params={"id": victim["id"]}, headers=auth)
    assert resp.status_code == 200 and victim["id"] not in resp.text
    assert not emulator.is_active(victim["key"]) and emulator.delete_count(victim["id"]) == 1


# --------------------------------------------------------------------------- mangle_next: set / drop

@pytest.mark.parametrize("expires_on", [
    "9999-12-31T00:00:00Z", "1970-01-01T00:00:00Z", "0001-01-01T00:00:00Z",
    "2026-11-30T09:00:00.000Z",  # before created_on (the clock reads 2026-12-01T09:00)
])
def test_set_expiry_in_issue_and_listing_replies(emulator, client, auth, expires_on):
    emulator.faults.mangle_next(1, "set", path=ISSUE, field="expires_on", value=expires_on)
    data = issue(client, auth, "dated").json()["data"]
    assert data["expires_on"] == expires_on
    assert data["created_on"] == "2026-12-01T09:00:00.000Z"
    assert set(data) == {"key", "name", "created_on", "expires_on", "creds"}
    real = record(emulator, "dated")
    assert real["expires_on"] == "2027-03-01T09:00:00.000Z" and emulator.is_active(data["key"])

    emulator.faults.mangle_next(1, "set", path=LIST, field="expires_on", value=expires_on, index=1)
    entries = listing(client, auth).json()["data"]
    assert [e["expires_on"] for e in entries] == ["2027-03-01T09:00:00.000Z", expires_on]
    assert listing(client, auth).json()["data"][1]["expires_on"] == real["expires_on"]


def test_set_wrong_types_and_null_ids_on_every_entry_or_one(emulator, client, auth):
    seed(emulator, "a", "b")
    emulator.faults.mangle_next(1, "set", path=LIST, field="id", value=None)       # every entry
    emulator.faults.mangle_next(1, "set", path=LIST, field="created_on", value=12345, index=2)
    emulator.faults.mangle_next(1, "set", path=LIST, field="tags", value={"x": [1, True]}, index=0)
    assert [e["id"] for e in listing(client, auth).json()["data"]] == [None, None, None]
    assert [e["created_on"] for e in listing(client, auth).json()["data"]][2] == 12345
    first = listing(client, auth).json()["data"][0]
    assert first["tags"] == {"x": [1, True]} and first["name"] == "admin"
    assert all(e["id"] and set(e) == LISTING_FIELDS for e in listing(client, auth).json()["data"])
    assert all(r["id"] and r["created_on"] == "2026-12-01T09:00:00.000Z" for r in emulator.keys())


def test_drop_fields_from_issue_listing_and_delete_replies(emulator, client, auth):
    emulator.faults.mangle_next(1, "drop", path=ISSUE, field="expires_on")
    data = issue(client, auth, "undated").json()["data"]
    assert set(data) == {"key", "name", "created_on", "creds"} and emulator.is_active(data["key"])

    emulator.faults.mangle_next(1, "drop", path=LIST, field="last_4_characters")
    emulator.faults.mangle_next(1, "drop", path=LIST, field="id", index=1)
    assert all("last_4_characters" not in e for e in listing(client, auth).json()["data"])
    entries = listing(client, auth).json()["data"]
    assert "id" in entries[0] and set(entries[1]) == LISTING_FIELDS - {"id"}

    victim = record(emulator, "undated")
    emulator.faults.mangle_next(1, "drop", path=DELETE, field="id")
    resp = client.delete("/accounts/api-key", params={"id": victim["id"]}, headers=auth)
    assert resp.status_code == 200 and set(resp.json()["data"]) == LISTING_FIELDS - {"id"}
    assert not emulator.is_active(data["key"])  # deleted all the same


# --------------------------------------------------------------------------- mangle_next: listing entries

def test_duplicate_entry_and_foreign_id(emulator, client, auth):
    a, b = seed(emulator, "a", "b")
    emulator.faults.mangle_next(1, "duplicate_entry", path=LIST)
    emulator.faults.mangle_next(1, "duplicate_entry", path=LIST, index=2)
    names = [e["name"] for e in listing(client, auth).json()["data"]]
    assert names == ["admin", "a", "b", "admin"]
    entries = listing(client, auth).json()["data"]
    assert len(entries) == 4 and entries[3] == entries[2] and entries[3]["id"] == b["id"]

    emulator.faults.mangle_next(1, "foreign_id", path=LIST)               # entry 0 takes entry 1's id
    emulator.faults.mangle_next(1, "foreign_id", path=LIST, index=2)      # last wraps to entry 0
    emulator.faults.mangle_next(1, "foreign_id", path=LIST, index=1, value=b["id"])
    ids = [e["id"] for e in listing(client, auth).json()["data"]]
    admin_id = record(emulator, "admin")["id"]
    assert ids == [a["id"], a["id"], b["id"]]
    assert [e["id"] for e in listing(client, auth).json()["data"]] == [admin_id, a["id"], admin_id]
    entries = listing(client, auth).json()["data"]
    assert [(e["name"], e["id"]) for e in entries] == [("admin", admin_id), ("a", b["id"]), ("b", b["id"])]
    assert [r["id"] for r in emulator.keys()] == [admin_id, a["id"], b["id"]]  # the model is unchanged


# --------------------------------------------------------------------------- mangle_next: swap_value

def test_swap_value_gives_a_random_non_key_while_the_real_key_is_created(emulator, client, auth):
    emulator.faults.mangle_next(1, "swap_value", path=ISSUE)
    data = issue(client, auth, "swapped").json()["data"]
    told = data["key"]
    created = emulator.issued_values()[-1]
    assert told != created and told.startswith("ms-")
    assert not emulator.is_active(told) and emulator.is_active(created)
    assert record(emulator, "swapped")["value_fingerprint"] == fp(created)
    entry = next(e for e in listing(client, auth).json()["data"] if e["name"] == "swapped")
    assert entry["last_4_characters"] == created[-4:] != told[-4:]
    assert client.post("/accounts/auth-with-api-key", json={"api_key": told}).status_code == 401
    assert client.post("/accounts/auth-with-api-key", json={"api_key": created}).status_code == 200


def test_swap_value_with_another_keys_value(emulator, client, auth, admin_key):
    emulator.faults.mangle_next(1, "swap_value", path=ISSUE, value=admin_key)
    assert emulator.faults.snapshot()["mangle_next"][0]["value"] == "<hidden>"
    assert admin_key not in repr(emulator.faults._mangle) + str(emulator.faults.snapshot())
    data = issue(client, auth, "swapped").json()["data"]
    assert data["key"] == admin_key
    created = emulator.issued_values()[-1]
    assert created != admin_key and emulator.is_active(created)
    assert record(emulator, "swapped")["value_fingerprint"] == fp(created)


# --------------------------------------------------------------------------- mangle_next: what uses a rule up

def test_a_rule_is_used_only_by_a_successful_reply_it_can_alter(emulator, client, auth, admin_key):
    emulator.faults.mangle_next(1, "swap_value")                         # any path: waits for an issue
    emulator.faults.mangle_next(1, "set", path=LIST, field="id", value="x", index=5)  # past the end
    emulator.faults.mangle_next(1, "foreign_id", path=LIST)              # needs two entries
    emulator.faults.mangle_next(1, "html", path=LIST)
    assert client.post("/accounts/auth-with-api-key", json={"api_key": admin_key}).status_code == 200
    assert listing(client, bearer("no-such-session")).status_code == 401  # an error is not mangled
    resp = listing(client, auth)
    assert resp.headers["content-type"] == "text/html"                  # the first rule that fits
    assert [(r["mode"], r["n"]) for r in emulator.faults.snapshot()["mangle_next"]] == [
        ("swap_value", 1), ("set", 1), ("foreign_id", 1)]

    emulator.faults.fail_after_effect_next(1, status=502, path=ISSUE)   # a lost reply is not mangled
    assert issue(client, auth, "lost").status_code == 502
    data = issue(client, auth, "swapped").json()["data"]
    assert not emulator.is_active(data["key"]) and emulator.is_active(emulator.issued_values()[-1])
    assert len(emulator.faults.snapshot()["mangle_next"]) == 2


def test_mangle_counts_and_path_filters(emulator, client, auth):
    emulator.faults.mangle_next(2, "empty", path=LIST)
    emulator.faults.mangle_next(0, "html")                               # armed for nothing
    assert issue(client, auth).json()["data"]["name"] == "web app"
    assert [listing(client, auth).json() for _ in range(2)] == [{}, {}]
    assert len(listing(client, auth).json()["data"]) == 2
    emulator.faults.mangle_next(3, "data_type", path=LIST)
    assert emulator.faults.snapshot()["mangle_next"] == [
        {"n": 3, "mode": "data_type", "path": LIST, "field": None, "value": None, "index": None}]
    emulator.faults.clear()
    assert emulator.faults.snapshot()["mangle_next"] == []
    assert len(listing(client, auth).json()["data"]) == 2


@pytest.mark.parametrize("kwargs", [
    {"n": -1, "mode": "html"}, {"n": True, "mode": "html"}, {"n": 1, "mode": "bogus"},
    {"n": 1, "mode": None}, {"n": 1, "mode": "set"}, {"n": 1, "mode": "set", "field": " "},
    {"n": 1, "mode": "drop", "field": 3}, {"n": 1, "mode": "html", "field": "id"},
    {"n": 1, "mode": "html", "value": "x"}, {"n": 1, "mode": "drop", "field": "id", "value": 1},
    {"n": 1, "mode": "set", "field": "id", "value": float("nan")},
    {"n": 1, "mode": "set", "field": "id", "value": {"nested": object()}},
    {"n": 1, "mode": "swap_value", "value": 42}, {"n": 1, "mode": "foreign_id", "value": ""},
    {"n": 1, "mode": "set", "field": "id", "index": -1}, {"n": 1, "mode": "set", "field": "id", "index": "0"},
    {"n": 1, "mode": "swap_value", "index": 0}, {"n": 1, "mode": "empty", "path": ""},
])
def test_mangle_arguments_are_validated(emulator, kwargs):
    with pytest.raises(ValueError) as refused:
        emulator.faults.mangle_next(**kwargs)
    assert "object at 0x" not in str(refused.value)
    assert emulator.faults.snapshot()["mangle_next"] == []


def test_mangle_error_text_and_snapshot_never_show_a_key(emulator, admin_key):
    with pytest.raises(ValueError) as refused:
        emulator.faults.mangle_next(1, "set", field="key", value={admin_key: object()})
    assert admin_key not in str(refused.value)
    emulator.faults.mangle_next(1, "set", path=ISSUE, field="key", value=admin_key)
    emulator.faults.mangle_next(1, "set", path=ISSUE, field="name", value="visible")
    shown = emulator.faults.snapshot()["mangle_next"]
    assert [r["value"] for r in shown] == ["<hidden>", "visible"]
    assert admin_key not in repr(emulator.faults._mangle)


def test_mangle_over_the_knob_endpoint(emulator, client, auth):
    armed = knob(client, mangle_next={"n": 1, "mode": "set", "path": LIST, "field": "id",
                                      "value": None, "index": 0})
    assert armed["mangle_next"] == [{"n": 1, "mode": "set", "path": LIST, "field": "id",
                                     "value": None, "index": 0}]
    assert listing(client, auth).json()["data"][0]["id"] is None
    knob(client, mangle_next={"n": 1, "mode": "html"})
    assert listing(client, auth).headers["content-type"] == "text/html"
    knob(client, mangle_next={"n": 1, "mode": "swap_value", "path": ISSUE})
    told = issue(client, auth).json()["data"]["key"]
    assert not emulator.is_active(told) and emulator.is_active(emulator.issued_values()[-1])
    for bad in ({"n": 1}, {"n": 1, "mode": "set"}, {"n": 1, "mode": "html", "bogus": 1},
                {"n": 1, "mode": "html", "index": 0}, {"n": "1", "mode": "html"}):
        resp = client.post("/_emulator/faults", json={"mangle_next": bad})
        assert resp.status_code == 400 and resp.json()["error"] == "Bad request"
    assert client.get("/_emulator/faults").json()["faults"]["mangle_next"] == []


# --------------------------------------------------------------------------- trickle_next

def _read_slowly(url: str, auth: dict[str, str],
                 read_timeout: float) -> tuple[httpx.Response, bytes, list, float]:
    """GET the listing with a per-read timeout; returns the response, its body, the pieces
    (arrival, size) as they came off the socket, and the whole duration."""
    with httpx.Client(base_url=url, timeout=httpx.Timeout(5, read=read_timeout), verify=False) as slow:
        started = time.monotonic()
        with slow.stream("GET", "/accounts/api-keys", headers=auth) as resp:
            chunks = [(time.monotonic(), chunk) for chunk in resp.iter_raw()]
        took = time.monotonic() - started
    return resp, b"".join(c for _, c in chunks), [(t, len(c)) for t, c in chunks], took


def test_trickle_writes_the_real_body_slowly_with_its_true_length(emulator, client, auth):
    normal = listing(client, auth)
    size = len(normal.content)
    rate = size / 0.4                                    # ~0.4 s for the whole body
    emulator.faults.trickle_next(1, rate, path=LIST)
    resp, body, pieces, took = _read_slowly(emulator.url, auth, read_timeout=0.2)  # < 0.4, > one piece
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/json"
    assert int(resp.headers["content-length"]) == len(body) == size
    assert json.loads(body) == normal.json()
    assert len(pieces) >= 4 and pieces[-1][0] - pieces[0][0] >= 0.2
    assert took >= 0.35
    started = time.monotonic()
    assert listing(client, auth).content == normal.content    # used up: at once
    assert time.monotonic() - started < 0.2
    assert emulator.faults.snapshot()["trickle_next"] == []


def test_trickle_path_filter_and_validation(emulator, client, auth):
    emulator.faults.trickle_next(1, 50, path=DELETE)
    assert emulator.faults.snapshot()["trickle_next"] == [{"n": 1, "bytes_per_second": 50.0, "path": DELETE}]
    started = time.monotonic()
    listing(client, auth)
    issue(client, auth)
    assert time.monotonic() - started < 0.2
    for bad in ({"n": 1, "bytes_per_second": 0}, {"n": 1, "bytes_per_second": -5},
                {"n": 1, "bytes_per_second": "fast"}, {"n": -1, "bytes_per_second": 10}):
        with pytest.raises(ValueError):
            emulator.faults.trickle_next(**bad)
    emulator.faults.clear()
    assert emulator.faults.snapshot()["trickle_next"] == []


def test_trickle_over_the_knob_endpoint(emulator, client, auth):
    size = len(listing(client, auth).content)
    armed = knob(client, trickle_next={"n": 1, "bytes_per_second": size / 0.3, "path": "/accounts/api-keys"})
    assert armed["trickle_next"][0]["n"] == 1
    resp, body, pieces, took = _read_slowly(emulator.url, auth, read_timeout=0.15)
    assert resp.status_code == 200 and len(json.loads(body)["data"]) == 1
    assert len(pieces) >= 3 and took >= 0.25
    assert client.post("/_emulator/faults", json={"trickle_next": {"n": 1}}).status_code == 400
    assert client.post("/_emulator/faults",
                       json={"trickle_next": {"n": 1, "bytes_per_second": 0}}).status_code == 400


# --------------------------------------------------------------------------- endless_pages

def test_endless_pages_new_cursor_each_time(emulator, client, auth):
    seed(emulator, "a")
    first_page = listing(client, auth).json()
    assert "next" not in first_page
    emulator.faults.endless_pages("new")
    assert emulator.faults.snapshot()["endless_pages"] == {"mode": "new", "path": "/accounts/api-keys"}
    cursors, pages = [], []
    params: dict[str, str] = {}
    for _ in range(5):
        body = listing(client, auth, **params).json()
        pages.append(body["data"])
        cursors.append(body["next"])
        params = {"cursor": body["next"]}
    assert len(set(cursors)) == 5 and all(isinstance(c, str) and c for c in cursors)
    assert all(page == first_page["data"] for page in pages)         # cursor= is ignored
    assert "next" not in issue(client, auth).json()                 # only the listing path
    emulator.faults.clear()
    assert "next" not in listing(client, auth, cursor=cursors[-1]).json()
    assert emulator.faults.snapshot()["endless_pages"] is None


def test_endless_pages_repeat_and_off(emulator, client, auth):
    emulator.faults.endless_pages("repeat", path=LIST)
    first = listing(client, auth).json()
    again = listing(client, auth, cursor=first["next"]).json()
    assert first == again and first["next"]
    emulator.faults.mangle_next(1, "set", path=LIST, field="id", value=None)
    mangled = listing(client, auth).json()
    assert mangled["next"] == first["next"] and mangled["data"][0]["id"] is None
    emulator.faults.endless_pages(None)
    assert "next" not in listing(client, auth).json()
    for bad in ("forever", 3, ""):
        with pytest.raises(ValueError):
            emulator.faults.endless_pages(bad)
    with pytest.raises(ValueError):
        emulator.faults.endless_pages("new", path=" ")


def test_endless_pages_over_the_knob_endpoint(emulator, client, auth):
    armed = knob(client, endless_pages={"mode": "repeat"})
    assert armed["endless_pages"] == {"mode": "repeat", "path": "/accounts/api-keys"}
    cursor = listing(client, auth).json()["next"]
    assert listing(client, auth, cursor=cursor).json()["next"] == cursor
    knob(client, endless_pages={"mode": "new", "path": LIST})
    assert listing(client, auth).json()["next"] != listing(client, auth).json()["next"]
    assert knob(client, endless_pages={"mode": None})["endless_pages"] is None
    assert "next" not in listing(client, auth).json()
    for bad in ({}, {"mode": "sometimes"}, {"mode": "new", "n": 1}):
        assert client.post("/_emulator/faults", json={"endless_pages": bad}).status_code == 400


# --------------------------------------------------------------------------- lying_deletes

@pytest.mark.parametrize("by", ["id", "key"])
def test_lying_delete_ok_answers_success_without_deleting(emulator, client, auth, by):
    victim = seed(emulator, "victim")[0]
    entry = next(e for e in listing(client, auth).json()["data"] if e["name"] == "victim")
    emulator.faults.lying_deletes(1, "ok")
    params = {"id": victim["id"]} if by == "id" else {"key": victim["key"]}
    resp = client.delete("/accounts/api-key", params=params, headers=auth)
    assert resp.status_code == 200 and resp.json() == {"data": entry}
    assert emulator.is_active(victim["key"]) and emulator.delete_count(victim["id"]) == 0
    assert record(emulator, "victim")["deleted_on"] is None
    assert "victim" in {e["name"] for e in listing(client, auth).json()["data"]}

    resp = client.delete("/accounts/api-key", params=params, headers=auth)  # used up: real delete
    assert resp.status_code == 200 and not emulator.is_active(victim["key"])
    assert emulator.faults.snapshot()["lying_deletes"] == []


def test_lying_delete_not_found_and_what_uses_it_up(emulator, client, auth):
    victim = seed(emulator, "victim")[0]
    emulator.faults.lying_deletes(2, "not_found")
    gone = client.delete("/accounts/api-key", params={"id": "no-such-id"}, headers=auth)
    assert gone.status_code == 404                                    # real refusal: not used up
    assert client.delete("/accounts/api-key", params={"id": victim["id"]},
                         headers=bearer("stale")).status_code == 401
    assert client.delete("/accounts/api-key", headers=auth).status_code == 400
    assert emulator.faults.snapshot()["lying_deletes"] == [{"n": 2, "mode": "not_found"}]
    for _ in range(2):
        resp = client.delete("/accounts/api-key", params={"id": victim["id"]}, headers=auth)
        assert resp.status_code == 404
        assert resp.json() == {"error": "Not found", "message": "API key not found"}
        assert emulator.is_active(victim["key"])
    assert emulator.delete_count(victim["id"]) == 0
    assert client.delete("/accounts/api-key", params={"id": victim["id"]}, headers=auth).status_code == 200
    assert not emulator.is_active(victim["key"])
    with pytest.raises(ValueError):
        emulator.faults.lying_deletes(1, "maybe")
    with pytest.raises(ValueError):
        emulator.faults.lying_deletes(-1, "ok")


def test_lying_deletes_over_the_knob_endpoint(emulator, client, auth):
    victim = seed(emulator, "victim")[0]
    armed = knob(client, lying_deletes={"n": 1, "mode": "ok"})
    assert armed["lying_deletes"] == [{"n": 1, "mode": "ok"}]
    resp = client.delete("/accounts/api-key", params={"key": victim["key"]}, headers=auth)
    assert resp.status_code == 200 and resp.json()["data"]["id"] == victim["id"]
    assert victim["key"] not in resp.text and emulator.is_active(victim["key"])
    knob(client, lying_deletes={"n": 1, "mode": "not_found"})
    assert client.delete("/accounts/api-key", params={"id": victim["id"]}, headers=auth).status_code == 404
    assert emulator.is_active(victim["key"])
    for bad in ({"n": 1}, {"mode": "ok"}, {"n": 1, "mode": "lie"}, {"n": 1, "mode": "ok", "path": DELETE}):
        assert client.post("/_emulator/faults", json={"lying_deletes": bad}).status_code == 400


# --------------------------------------------------------------------------- latency_next

def test_latency_next_makes_a_late_twin(emulator, client, auth, capfd):
    emulator.faults.latency_next(1, 0.6, path=ISSUE)
    started = time.monotonic()
    with httpx.Client(base_url=emulator.url, timeout=httpx.Timeout(5, read=0.2), verify=False) as impatient:
        with pytest.raises(httpx.ReadTimeout):
            impatient.post("/accounts/api-key", json={"key_name": "twin"}, headers=auth)
        retry = impatient.post("/accounts/api-key", json={"key_name": "twin"}, headers=auth)
    assert retry.status_code == 200 and time.monotonic() - started < 0.55  # served while the first slept
    served_first = retry.json()["data"]["key"]
    assert [r["name"] for r in emulator.keys()] == ["admin", "twin"]      # the slow one: no effect yet

    deadline = time.monotonic() + 3
    while len(emulator.keys()) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert time.monotonic() - started >= 0.6
    admin, first, late = emulator.keys()
    assert (first["name"], late["name"]) == ("twin", "twin")
    assert first["value_fingerprint"] == fp(served_first) != late["value_fingerprint"]
    assert all(r["deleted_on"] is None for r in emulator.keys())
    assert emulator.counters()["POST /accounts/api-key"] == 2
    time.sleep(0.05)  # the late reply meets a closed connection: nothing may be printed
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_latency_next_counts_paths_and_adds_to_latency(emulator, client, auth, admin_key):
    emulator.faults.latency_next(1, 0.3, path="/v1/agents")
    emulator.faults.set_latency(0.1, path="/v1/agents")
    assert emulator.faults.snapshot()["latency_next"] == [{"n": 1, "seconds": 0.3, "path": "/v1/agents"}]

    def timed(call) -> float:
        started = time.monotonic()
        assert call().status_code == 200
        return time.monotonic() - started

    agents = lambda: client.get("/v1/agents", headers=bearer(admin_key))  # noqa: E731
    assert timed(lambda: listing(client, auth)) < 0.1
    assert timed(agents) >= 0.4                                          # both latencies
    assert 0.1 <= timed(agents) < 0.35                                   # latency_next used up
    for bad in ({"n": 1, "seconds": -1}, {"n": 1, "seconds": "1"}, {"n": 1.5, "seconds": 1}):
        with pytest.raises(ValueError):
            emulator.faults.latency_next(**bad)
    emulator.faults.clear()
    assert emulator.faults.snapshot()["latency_next"] == [] and timed(agents) < 0.1


def test_latency_next_does_not_hold_the_lock(emulator, client, auth, admin_key):
    emulator.faults.latency_next(1, 0.3, path=LIST)
    results: list[int] = []
    slow = threading.Thread(target=lambda: results.append(listing(client, auth).status_code))
    started = time.monotonic()
    slow.start()
    time.sleep(0.05)
    assert issue(client, auth, "meanwhile").status_code == 200
    assert client.post("/accounts/auth-with-api-key", json={"api_key": admin_key}).status_code == 200
    fast_done = time.monotonic() - started
    slow.join()
    assert results == [200] and fast_done < 0.25 <= time.monotonic() - started


def test_latency_next_over_the_knob_endpoint(emulator, client, auth):
    armed = knob(client, latency_next={"n": 1, "seconds": 0.2, "path": LIST})
    assert armed["latency_next"] == [{"n": 1, "seconds": 0.2, "path": LIST}]
    started = time.monotonic()
    listing(client, auth)
    assert time.monotonic() - started >= 0.2
    started = time.monotonic()
    listing(client, auth)
    assert time.monotonic() - started < 0.2
    for bad in ({"n": 1}, {"seconds": 1}, {"n": 1, "seconds": -1}, {"n": 1, "seconds": 1, "x": 1}):
        assert client.post("/_emulator/faults", json={"latency_next": bad}).status_code == 400


# --------------------------------------------------------------------------- refused authentication

def test_fail_next_401_refuses_a_valid_key_that_stays_valid(emulator, client, admin_key):
    emulator.faults.fail_next(1, status=401, path=AUTH)
    resp = client.post("/accounts/auth-with-api-key", json={"api_key": admin_key})
    assert resp.status_code == 401
    assert resp.json()["error"] == "Invalid API key" and set(resp.json()) == {"error", "message"}
    assert emulator.is_active(admin_key)
    assert record(emulator, "admin")["last_used_on"] is None and record(emulator, "admin")["deleted_on"] is None
    again = client.post("/accounts/auth-with-api-key", json={"api_key": admin_key})
    assert again.status_code == 200 and again.json()["data"]["auth_token"]


def test_fail_next_401_over_the_knob_endpoint(emulator, client, admin_key):
    knob(client, fail_next={"n": 2, "status": 401, "path": AUTH})
    statuses = [client.post("/accounts/auth-with-api-key", json={"api_key": admin_key}).status_code
                for _ in range(3)]
    assert statuses == [401, 401, 200] and emulator.is_active(admin_key)
    assert client.get("/v1/agents", headers=bearer(admin_key)).status_code == 200


# --------------------------------------------------------------------------- all knobs together

def test_clear_over_http_removes_every_new_knob(emulator, client):
    armed = knob(client, mangle_next={"n": 1, "mode": "empty"}, trickle_next={"n": 1, "bytes_per_second": 10},
                 endless_pages={"mode": "new"}, lying_deletes={"n": 1, "mode": "ok"},
                 latency_next={"n": 1, "seconds": 1})
    for name in ("mangle_next", "trickle_next", "lying_deletes", "latency_next"):
        assert len(armed[name]) == 1, name
    assert armed["endless_pages"]["mode"] == "new"
    cleared = knob(client, clear=True)
    assert (cleared["mangle_next"], cleared["trickle_next"], cleared["lying_deletes"],
            cleared["latency_next"], cleared["endless_pages"]) == ([], [], [], [], None)
