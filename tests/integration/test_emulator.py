"""The QuivaWorks emulator over real HTTP: faithful to the reference, and its knobs work."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest

from rotator_providers.quiva.emulator import Emulator

UTC = timezone.utc
REPO_ROOT = Path(__file__).resolve().parents[2]
ADMIN = "admin@example.com"
MEMBER = "member@example.com"
VIEWER = "viewer@example.com"
LISTING_FIELDS = {"id", "name", "last_4_characters", "created_on", "expires_on", "account"}
ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture(scope="module")
def server():
    with Emulator(port=0) as emu:
        yield emu


@pytest.fixture
def emu(server):
    server.reset()
    return server


def http_client(url: str) -> httpx.Client:
    """A client for the plain-http emulator (``verify=False`` only skips building a TLS context)."""
    return httpx.Client(base_url=url, timeout=5, verify=False)


@pytest.fixture(scope="module")
def shared_client(server):
    with http_client(server.url) as http:
        yield http


@pytest.fixture
def client(emu, shared_client):
    return shared_client


def login(client: httpx.Client, key: str) -> dict:
    """Authenticate with an API key; returns the session data (auth_token, refresh_token...)."""
    resp = client.post("/accounts/auth-with-api-key", json={"api_key": key})
    assert resp.status_code == 200, resp.text
    return resp.json()["data"]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def session_for(client: httpx.Client, key: str) -> dict[str, str]:
    return bearer(login(client, key)["auth_token"])


def issue(client: httpx.Client, auth: dict[str, str], name: str = "ci deploy") -> httpx.Response:
    return client.post("/accounts/api-key", json={"key_name": name}, headers=auth)


def listing(client: httpx.Client, auth: dict[str, str], **params: str) -> list[dict]:
    resp = client.get("/accounts/api-keys", params=params, headers=auth)
    assert resp.status_code == 200, resp.text
    return resp.json()["data"]


# --------------------------------------------------------------------------- issue and list

def test_issued_value_is_shown_once_and_nowhere_else(emu, client):
    auth = session_for(client, emu.add_user(ADMIN))
    resp = issue(client, auth)
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json"
    data = resp.json()["data"]
    assert set(data) == {"key", "name", "created_on", "expires_on", "creds"}  # no id on issue
    value = data["key"]
    assert re.fullmatch(r"ms-[0-9a-f]{32}", value)

    others = [client.get("/accounts/api-keys", headers=auth), client.get("/accounts/api-keys", headers=auth),
              client.post("/accounts/auth-with-api-key", json={"api_key": value}),
              client.get("/v1/agents", headers=bearer(value))]
    entry = next(e for e in others[0].json()["data"] if e["name"] == "ci deploy")
    others.append(client.delete("/accounts/api-key", params={"id": entry["id"]}, headers=auth))
    for other in others:
        assert other.status_code == 200
        assert value not in other.text
    assert value in emu.issued_values()
    assert all("key" not in e for e in others[1].json()["data"])


def test_listing_fields_and_last_four(emu, client):
    auth = session_for(client, emu.add_user(ADMIN))
    data = issue(client, auth, "billing").json()["data"]
    entries = listing(client, auth)
    assert {e["name"] for e in entries} == {"admin", "billing"}
    entry = next(e for e in entries if e["name"] == "billing")
    assert set(entry) == LISTING_FIELDS  # no last_used_on unless asked for
    assert entry["last_4_characters"] == data["key"][-4:]
    assert entry["account"] == ADMIN
    assert (entry["created_on"], entry["expires_on"]) == (data["created_on"], data["expires_on"])
    assert ISO_Z.match(entry["created_on"]) and ISO_Z.match(entry["expires_on"])
    record = next(r for r in emu.keys(ADMIN) if r["id"] == entry["id"])
    assert record["deleted_on"] is None
    assert record["value_fingerprint"] == hashlib.sha256(data["key"].encode()).hexdigest()
    assert data["key"] not in str(emu.keys())


def test_expiry_is_three_calendar_months_with_clamped_day(emu, client):
    emu.add_user(ADMIN)
    seeded = emu.create_key(ADMIN, name="old", created_on=datetime(2026, 11, 30, 9, 0, tzinfo=UTC))
    assert seeded["expires_on"] == "2027-02-28T09:00:00.000Z"
    assert seeded["created_on"] == "2026-11-30T09:00:00.000Z" and "id" in seeded
    emu.clock.set(datetime(2027, 11, 30, 14, 0, 0, 123000, tzinfo=UTC))
    auth = session_for(client, emu.add_user(MEMBER, role="member"))
    data = issue(client, auth).json()["data"]
    assert data["created_on"].startswith("2027-11-30T14:00:00")
    assert data["expires_on"].startswith("2028-02-29T14:00:00")  # leap year


def test_expired_key_is_refused_but_still_listed(emu, client):
    admin_key = emu.add_user(ADMIN)
    auth_before = session_for(client, admin_key)
    old = emu.create_key(ADMIN, name="old", created_on=emu.clock.now() - timedelta(days=80))
    assert client.get("/v1/agents", headers=bearer(old["key"])).status_code == 200
    emu.clock.advance(timedelta(days=15))
    for resp in (client.post("/accounts/auth-with-api-key", json={"api_key": old["key"]}),
                 client.get("/v1/agents", headers=bearer(old["key"]))):
        assert resp.status_code == 401
        assert resp.json()["error"] == "Invalid API key"
    assert not emu.is_active(old["key"]) and emu.is_active(admin_key)
    assert client.get("/accounts/api-keys", headers=auth_before).status_code == 401  # session aged too
    names = {e["name"] for e in listing(client, session_for(client, admin_key))}
    assert names == {"admin", "old"}


def test_last_used_is_reported_only_when_enabled():
    with Emulator(report_last_used=True) as emu, http_client(emu.url) as client:
        key = emu.add_user(ADMIN)
        spare = emu.create_key(ADMIN, name="never used")
        entries = {e["name"]: e for e in listing(client, session_for(client, key))}
    assert ISO_Z.match(entries["admin"]["last_used_on"])
    assert entries[spare["name"]]["last_used_on"] is None


# --------------------------------------------------------------------------- delete

@pytest.mark.parametrize("by", ["id", "key"])
def test_delete_revokes_at_once(emu, client, by):
    auth = session_for(client, emu.add_user(ADMIN))
    value = issue(client, auth, "victim").json()["data"]["key"]
    entry = next(e for e in listing(client, auth) if e["name"] == "victim")
    assert client.get("/v1/agents", headers=bearer(value)).status_code == 200

    params = {"id": entry["id"]} if by == "id" else {"key": value}
    resp = client.delete("/accounts/api-key", params=params, headers=auth)
    assert resp.status_code == 200
    assert resp.json()["data"] == entry
    assert client.post("/accounts/auth-with-api-key", json={"api_key": value}).status_code == 401
    assert client.get("/v1/agents", headers=bearer(value)).status_code == 401
    assert "victim" not in {e["name"] for e in listing(client, auth)}
    assert emu.delete_count(entry["id"]) == 1
    assert not emu.is_active(value)
    assert next(r for r in emu.keys() if r["id"] == entry["id"])["deleted_on"] is not None


def test_delete_unknown_or_foreign_key_is_404(emu, client):
    admin = session_for(client, emu.add_user(ADMIN))
    member = session_for(client, emu.add_user(MEMBER, role="member"))
    foreign = emu.create_key(ADMIN, name="not yours")
    cases = [(admin, {"id": "no-such-id"}), (admin, {"key": "ms-" + "0" * 32}),
             (member, {"id": foreign["id"]}), (member, {"key": foreign["key"]})]
    for auth, params in cases:
        resp = client.delete("/accounts/api-key", params=params, headers=auth)
        assert resp.status_code == 404
        assert resp.json() == {"error": "Not found", "message": "API key not found"}
    assert emu.is_active(foreign["key"])
    assert client.delete("/accounts/api-key", params={"id": foreign["id"]}, headers=admin).status_code == 200
    again = client.delete("/accounts/api-key", params={"id": foreign["id"]}, headers=admin)
    assert again.status_code == 404 and emu.delete_count(foreign["id"]) == 1
    assert client.delete("/accounts/api-key", headers=admin).status_code == 400


# --------------------------------------------------------------------------- sessions, roles, errors

def test_session_expires_and_refresh_gives_a_working_pair(emu, client):
    session = login(client, emu.add_user(ADMIN))
    assert set(session) == {"auth_token", "refresh_token", "passkey_enabled", "totp_enabled"}
    assert session["passkey_enabled"] is False and session["totp_enabled"] is False
    emu.clock.advance(timedelta(minutes=31))
    expired = client.get("/accounts/api-keys", headers=bearer(session["auth_token"]))
    assert expired.status_code == 401
    assert expired.json() == {"error": "Invalid API key", "message": "Session token expired"}

    resp = client.post("/accounts/refresh-token", json={"auth_token": session["auth_token"],
                                                        "refresh_token": session["refresh_token"]})
    assert resp.status_code == 200
    fresh = resp.json()["data"]
    assert fresh["auth_token"] != session["auth_token"]
    assert len(listing(client, bearer(fresh["auth_token"]))) == 1


def test_refresh_token_is_single_use(emu, client):
    session = login(client, emu.add_user(ADMIN))
    pair = {"auth_token": session["auth_token"], "refresh_token": session["refresh_token"]}
    assert client.post("/accounts/refresh-token", json=pair).status_code == 200
    reused = client.post("/accounts/refresh-token", json=pair)
    assert reused.status_code == 401 and reused.json()["error"] == "Invalid API key"
    mismatched = {"auth_token": "x", "refresh_token": login(client, emu.issued_values()[0])["refresh_token"]}
    assert client.post("/accounts/refresh-token", json=mismatched).status_code == 401


def test_viewer_cannot_issue_or_delete_but_can_list(emu, client):
    auth = session_for(client, emu.add_user(VIEWER, role="viewer"))
    own = emu.keys(VIEWER)[0]
    for resp in (issue(client, auth),
                 client.delete("/accounts/api-key", params={"id": own["id"]}, headers=auth)):
        assert resp.status_code == 403
        assert resp.json()["error"] == "Insufficient permissions"
    assert [e["id"] for e in listing(client, auth)] == [own["id"]]
    assert len(emu.keys(VIEWER)) == 1 and emu.delete_count(own["id"]) == 0


def test_email_parameter_is_admin_only(emu, client):
    admin = session_for(client, emu.add_user(ADMIN))
    member = session_for(client, emu.add_user(MEMBER, role="member"))
    forbidden = client.get("/accounts/api-keys", params={"email": ADMIN}, headers=member)
    assert forbidden.status_code == 403 and forbidden.json()["error"] == "Insufficient permissions"
    assert [e["account"] for e in listing(client, member, email=MEMBER)] == [MEMBER]
    assert [e["account"] for e in listing(client, admin, email=MEMBER)] == [MEMBER]


def test_request_errors_are_json(emu, client):
    auth = session_for(client, emu.add_user(ADMIN))
    for body in ({}, {"key_name": ""}, {"key_name": "   "}):
        resp = client.post("/accounts/api-key", json=body, headers=auth)
        assert resp.status_code == 400 and resp.json()["error"] == "Bad request"
    garbled = [{}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer"},
               {"Authorization": "Bearer not-a-session"}]
    for headers in garbled:
        resp = client.get("/accounts/api-keys", headers=headers)
        assert resp.status_code == 401 and resp.json()["error"] == "Invalid API key"
    for api_key in ("", None, 42, "ms-unknown"):
        resp = client.post("/accounts/auth-with-api-key", json={"api_key": api_key})
        assert resp.status_code == 401 and set(resp.json()) == {"error", "message"}
    bad_json = client.post("/accounts/auth-with-api-key", content=b"{nope",
                           headers={"Content-Type": "application/json"})
    assert bad_json.status_code == 400
    unknown = client.get("/accounts/nothing-here")
    assert unknown.status_code == 404 and unknown.headers["content-type"] == "application/json"
    assert unknown.json()["error"] == "Not found"
    assert client.put("/accounts/api-key").status_code == 405


def test_chunked_request_body_is_read(emu, client):
    key = emu.add_user(ADMIN)
    chunks = iter([b'{"api_key": ', f'"{key}"}}'.encode()])  # no length known: chunked upload
    resp = client.post("/accounts/auth-with-api-key", content=chunks)
    assert resp.status_code == 200 and resp.json()["data"]["auth_token"]


# --------------------------------------------------------------------------- faults

def test_throttle_next_returns_429_with_retry_after(emu, client):
    key = emu.add_user(ADMIN)
    emu.faults.throttle_next(1, retry_after=7)
    resp = client.post("/accounts/auth-with-api-key", json={"api_key": key})
    assert resp.status_code == 429
    assert resp.json()["error"] == "Rate limit exceeded" and resp.json()["retry_after"] == 7
    assert resp.headers["Retry-After"] == "7"
    emu.faults.throttle_next(1, retry_after=3, header=False)
    resp = client.get("/v1/agents", headers=bearer(key))
    assert resp.status_code == 429 and "Retry-After" not in resp.headers
    assert resp.json()["retry_after"] == 3
    assert client.get("/v1/agents", headers=bearer(key)).status_code == 200


def test_rate_limit_token_bucket(emu, client):
    key = emu.add_user(ADMIN)
    emu.faults.rate_limit(per_second=5, burst=2, retry_after=5)
    statuses = [client.get("/v1/agents", headers=bearer(key)).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    limited = client.get("/v1/agents", headers=bearer(key))
    assert limited.json()["retry_after"] == 5 and limited.headers["Retry-After"] == "5"
    time.sleep(0.25)  # refills one token at 5/s
    assert client.get("/v1/agents", headers=bearer(key)).status_code == 200
    emu.faults.rate_limit(None)
    assert all(client.get("/v1/agents", headers=bearer(key)).status_code == 200 for _ in range(5))


def test_fail_next_fails_without_effect(emu, client):
    auth = session_for(client, emu.add_user(ADMIN))
    emu.faults.fail_next(2, status=503, path="/accounts/api-key")
    assert client.get("/accounts/api-keys", headers=auth).status_code == 200  # other path unaffected
    for _ in range(2):
        resp = issue(client, auth)
        assert resp.status_code == 503
        assert resp.json()["error"] == "Internal error" and "message" in resp.json()
    assert [r["name"] for r in emu.keys()] == ["admin"]
    assert issue(client, auth).status_code == 200
    assert len(emu.keys()) == 2


def test_fail_next_can_target_one_method(emu, client):
    auth = session_for(client, emu.add_user(ADMIN))
    emu.faults.fail_next(1, status=500, path="DELETE /accounts/api-key")
    assert issue(client, auth, "survivor").status_code == 200
    entry = next(e for e in listing(client, auth) if e["name"] == "survivor")
    assert client.delete("/accounts/api-key", params={"id": entry["id"]}, headers=auth).status_code == 500
    assert emu.delete_count(entry["id"]) == 0


def test_fail_after_effect_performs_the_action(emu, client):
    auth = session_for(client, emu.add_user(ADMIN))
    emu.faults.fail_after_effect_next(1, status=502, path="/accounts/api-key")
    lost = issue(client, auth, "lost response")
    assert lost.status_code == 502 and "ms-" not in lost.text
    created = next(r for r in emu.keys() if r["name"] == "lost response")
    assert created["deleted_on"] is None

    emu.faults.fail_after_effect_next(1, path="DELETE /accounts/api-key")
    resp = client.delete("/accounts/api-key", params={"id": created["id"]}, headers=auth)
    assert resp.status_code == 503
    assert emu.delete_count(created["id"]) == 1
    retry = client.delete("/accounts/api-key", params={"id": created["id"]}, headers=auth)
    assert retry.status_code == 404 and emu.delete_count(created["id"]) == 1


def test_latency_sleeps_outside_the_lock(emu, client):
    key = emu.add_user(ADMIN)
    emu.faults.set_latency(0.3, path="/v1/agents")
    results: list[int] = []
    slow = threading.Thread(target=lambda: results.append(
        client.get("/v1/agents", headers=bearer(key)).status_code))
    started = time.monotonic()
    slow.start()
    time.sleep(0.05)
    assert client.post("/accounts/auth-with-api-key", json={"api_key": key}).status_code == 200
    fast_done = time.monotonic() - started
    slow.join()
    assert results == [200]
    assert fast_done < 0.25 <= time.monotonic() - started


def test_concurrent_issues_are_consistent(emu, client):
    auth = session_for(client, emu.add_user(ADMIN))

    statuses: list[int] = []

    def worker(i: int) -> None:  # httpx.Client is thread-safe: one pool, many threads
        statuses.append(issue(client, auth, f"k{i}").status_code)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 16
    assert len(listing(client, auth)) == 17
    assert len(set(emu.issued_values())) == 17
    assert emu.counters()["POST /accounts/api-key"] == 16


# --------------------------------------------------------------------------- counters and knobs

def test_counters_per_endpoint_and_status(emu, client):
    key = emu.add_user(ADMIN)
    auth = session_for(client, key)
    issue(client, auth)
    issue(client, auth, "")
    client.get("/accounts/api-keys", headers=auth)
    client.get("/_emulator/counters")  # knob calls are not counted
    assert emu.counters() == {
        "POST /accounts/auth-with-api-key": 1, "POST /accounts/api-key": 2,
        "GET /accounts/api-keys": 1, "status:200": 3, "status:400": 1,
    }
    emu.reset_counters()
    assert emu.counters() == {}


def test_knob_endpoints_over_http(emu, client):
    minted = client.post("/_emulator/users", json={"email": ADMIN, "role": "admin"}).json()
    assert minted["email"] == ADMIN and minted["role"] == "admin"
    assert emu.is_active(minted["key"])
    registered = client.post("/_emulator/users", json={"email": MEMBER, "role": "member",
                                                       "admin_key": "ms_supplied_value"})
    assert registered.json() == {"email": MEMBER, "role": "member"}
    assert emu.is_active("ms_supplied_value")

    seeded = client.post("/_emulator/keys", json={"email": MEMBER, "name": "seed",
                                                  "created_on": "2026-01-31T00:00:00Z"}).json()["data"]
    assert seeded["expires_on"] == "2026-04-30T00:00:00.000Z" and seeded["id"]
    records = client.get("/_emulator/keys", params={"email": MEMBER}).json()["keys"]
    assert {r["name"] for r in records} == {"admin", "seed"}
    assert all(len(r["value_fingerprint"]) == 64 for r in records)
    assert "ms_supplied_value" not in client.get("/_emulator/keys").text

    now = client.post("/_emulator/clock", json={"now": "2030-05-01T12:00:00Z"}).json()["now"]
    assert now.startswith("2030-05-01T12:00:0")
    later = client.post("/_emulator/clock", json={"advance_seconds": 3600}).json()["now"]
    assert later.startswith("2030-05-01T13:00:0") and ISO_Z.match(later)
    assert client.get("/_emulator/clock").json()["now"].startswith("2030-05-01T13:00")
    assert not emu.is_active(seeded["key"])  # expired by the moved clock

    armed = client.post("/_emulator/faults", json={"fail_next": {"n": 1, "status": 500}}).json()
    assert armed["faults"]["fail_next"] == [{"n": 1, "status": 500, "path": None}]
    assert client.get("/v1/agents", headers=bearer(minted["key"])).status_code == 500
    client.post("/_emulator/faults", json={"throttle_next": {"n": 1, "retry_after": 2}})
    assert client.get("/v1/agents", headers=bearer(minted["key"])).status_code == 429
    client.post("/_emulator/faults", json={"throttle_next": {"n": 5}, "clear": False})
    client.post("/_emulator/faults", json={"clear": True, "latency": {"seconds": 0}})
    assert client.get("/v1/agents", headers=bearer(minted["key"])).status_code == 401  # clock moved

    assert client.post("/_emulator/faults", json={"bogus": {}}).status_code == 400
    assert client.post("/_emulator/faults", json={"fail_next": {"n": -1}}).status_code == 400
    assert client.post("/_emulator/users", json={"email": "x@example.com", "role": "god"}).status_code == 400

    counters = client.get("/_emulator/counters").json()["counters"]
    assert counters == {"GET /v1/agents": 3, "status:500": 1, "status:429": 1, "status:401": 1}
    assert client.post("/_emulator/counters/reset").json() == {"counters": {}}
    assert client.post("/_emulator/reset").status_code == 200
    assert emu.keys() == [] and client.get("/_emulator/keys").json() == {"keys": []}


def test_external_clock_is_used_and_set_by_the_knob():
    class ManualClock:
        def __init__(self) -> None:
            self.moment = datetime(2026, 6, 1, tzinfo=UTC)

        def now(self) -> datetime:
            return self.moment

        def set(self, moment: datetime) -> None:
            self.moment = moment

    clock = ManualClock()
    with Emulator(clock=clock) as emu, http_client(emu.url) as client:
        assert emu.clock is clock
        emu.add_user(ADMIN)
        assert emu.keys()[0]["created_on"] == "2026-06-01T00:00:00.000Z"
        client.post("/_emulator/clock", json={"advance_seconds": 86400})
        assert clock.moment == datetime(2026, 6, 2, tzinfo=UTC)
        assert client.get("/_emulator/clock").json() == {"now": "2026-06-02T00:00:00.000Z"}


def test_stop_closes_kept_alive_connections():
    emu = Emulator().start()
    key = emu.add_user(ADMIN)
    with http_client(emu.url) as client:
        assert client.get("/v1/agents", headers=bearer(key)).status_code == 200
        emu.stop()
        with pytest.raises(httpx.TransportError):
            client.get("/v1/agents", headers=bearer(key))


def test_server_never_logs_requests_or_values(emu, client, capfd):
    auth = session_for(client, emu.add_user(ADMIN))
    value = issue(client, auth).json()["data"]["key"]
    client.delete("/accounts/api-key", params={"key": value}, headers=auth)
    client.get("/nope?key=" + value)
    out, err = capfd.readouterr()
    assert value not in out + err
    assert "GET" not in err and "DELETE" not in err


# --------------------------------------------------------------------------- CLI

def _start_cli(tmp_path: Path, env_key: str | None) -> tuple[subprocess.Popen, str]:
    env = {k: v for k, v in os.environ.items() if k != "QUIVA_API_KEY"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    if env_key is not None:
        env["QUIVA_API_KEY"] = env_key
    proc = subprocess.Popen(
        [sys.executable, "-m", "rotator_providers.quiva.emulator", "--port", "0", "--user", "ops@example.com",
         "--admin-key-file", str(tmp_path / "admin.key")],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    match = re.fullmatch(r"QuivaWorks emulator listening on (http://127\.0\.0\.1:\d+)\n", line)
    assert match, line
    return proc, match.group(1)


def _stop_cli(proc: subprocess.Popen) -> tuple[str, str]:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=5)
    assert proc.returncode == 0
    return out, err


def test_cli_mints_key_into_private_file_and_exits_on_sigterm(tmp_path):
    proc, url = _start_cli(tmp_path, env_key=None)
    try:
        key_file = tmp_path / "admin.key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        key = key_file.read_text()
        with http_client(url) as client:
            data = login(client, key)
            entries = listing(client, bearer(data["auth_token"]))
        assert [(e["account"], e["name"]) for e in entries] == [("ops@example.com", "admin")]
    finally:
        out, err = _stop_cli(proc)
    assert key not in out + err


def test_cli_registers_key_from_environment(tmp_path):
    supplied = "ms-" + "ab" * 16
    proc, url = _start_cli(tmp_path, env_key=supplied)
    try:
        assert not (tmp_path / "admin.key").exists()
        with http_client(url) as client:
            resp = client.get("/v1/agents", headers=bearer(supplied))
        assert resp.status_code == 200 and resp.json() == {"data": []}
    finally:
        out, err = _stop_cli(proc)
    assert supplied not in out + err
