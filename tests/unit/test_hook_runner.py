"""Hook deliveries without a process or a socket: what a hook is told (environment, JSON body,
delivery id), the signature, what build() refuses, the exec environment's minimality, and the
runner's promises (never raises, nothing starts after stop) — with stand-in hooks."""

from __future__ import annotations

import hashlib
import hmac
import threading
from datetime import datetime, timedelta, timezone

import pytest

from rotator import credentials
from rotator.config import HookSpec
from rotator.errors import ConfigError
from rotator.hooks import (
    EVENTS, SIGNATURE_HEADER, Context, ExecHook, Hook, HookRunner, HttpHook, Result, build, sign,
)
from rotator.models import KeyRef, Secret
from rotator.testing import FakeClock

AT = datetime(2027, 3, 1, 9, 30, 15, 123456, tzinfo=timezone.utc)
EXPIRES = datetime(2027, 6, 1, 0, 0, tzinfo=timezone.utc)
NEW = KeyRef(fingerprint="f" * 16, last4="c0de", key_id="42", expires_on=EXPIRES)
OLD = KeyRef(fingerprint="e" * 16, last4="beef", key_id="41")


def context(**changes) -> Context:
    values = dict(event="deployed", secret="web-api", hook="reload", rotation_id="r-1234abcd", attempt=1,
                  at=AT, issuer="quiva-prod", targets=("vault:kv/web", "aws:web-api"), runner="host:1:abcd",
                  key=NEW, old_key=OLD)
    values.update(changes)
    return Context(**values)


def spec(**values) -> HookSpec:
    values.setdefault("name", "reload")
    values.setdefault("events", ["deployed"])
    if values.get("kind", "exec") == "exec":
        values.setdefault("command", ["/bin/true"])
    return HookSpec(kind=values.pop("kind", "exec"), **values)


def no_resolve(ref, where):
    raise AssertionError("references are resolved at the first delivery, not at build")


# --- what a hook is told -------------------------------------------------------------------------

def test_hook_context_to_env_names_every_variable_and_blanks_what_is_unknown():
    env = context().to_env()
    assert env == {
        "ROTATOR_EVENT": "deployed", "ROTATOR_SECRET": "web-api", "ROTATOR_HOOK": "reload",
        "ROTATOR_ROTATION_ID": "r-1234abcd", "ROTATOR_DELIVERY_ID": context().delivery_id,
        "ROTATOR_ATTEMPT": "1", "ROTATOR_AT": "2027-03-01T09:30:15Z", "ROTATOR_ISSUER": "quiva-prod",
        "ROTATOR_TARGETS": "vault:kv/web,aws:web-api", "ROTATOR_RUNNER": "host:1:abcd",
        "ROTATOR_KEY_ID": "42", "ROTATOR_KEY_LAST4": "c0de", "ROTATOR_KEY_EXPIRES_ON": "2027-06-01T00:00:00Z",
        "ROTATOR_OLD_KEY_ID": "41", "ROTATOR_OLD_KEY_LAST4": "beef", "ROTATOR_DETAIL": "",
    }
    bare = context(event="failed", rotation_id=None, key=None, old_key=None, detail="issuer unavailable").to_env()
    assert all(isinstance(v, str) for v in bare.values())
    assert bare["ROTATOR_ROTATION_ID"] == bare["ROTATOR_KEY_ID"] == bare["ROTATOR_OLD_KEY_LAST4"] == ""
    assert bare["ROTATOR_KEY_EXPIRES_ON"] == ""
    assert bare["ROTATOR_DETAIL"] == "issuer unavailable"


def test_hook_context_to_json_is_the_documented_body_with_utc_instants():
    body = context(attempt=3).to_json()
    assert body == {
        "event": "deployed", "secret": "web-api", "hook": "reload", "rotation_id": "r-1234abcd",
        "delivery_id": context().delivery_id, "attempt": 3, "at": "2027-03-01T09:30:15Z",
        "issuer": "quiva-prod", "targets": ["vault:kv/web", "aws:web-api"], "runner": "host:1:abcd",
        "key": {"id": "42", "last4": "c0de", "expires_on": "2027-06-01T00:00:00Z"},
        "old_key": {"id": "41", "last4": "beef", "expires_on": None}, "detail": None,
    }
    assert context(key=None, old_key=None).to_json()["key"] is None


def test_hook_delivery_id_is_stable_across_attempts_and_distinct_per_rotation_event_and_hook():
    first = context().delivery_id
    assert first == context(attempt=4, at=AT + timedelta(hours=1), runner="other:2:ffff").delivery_id
    assert first == hashlib.sha256(b"r-1234abcd:deployed:reload").hexdigest()[:24]
    others = {context(rotation_id="r-other").delivery_id, context(event="staged").delivery_id,
              context(hook="restart").delivery_id, context(rotation_id=None).delivery_id}
    assert len(others) == 4 and first not in others
    assert context(rotation_id=None).delivery_id == hashlib.sha256(b"-:deployed:reload").hexdigest()[:24]


def test_hook_context_refuses_an_unknown_event_and_attempt_zero():
    with pytest.raises(ValueError, match="unknown hook event"):
        context(event="rotated")
    with pytest.raises(ValueError, match="attempt"):
        context(attempt=0)
    assert EVENTS == ("staged", "deployed", "before_revoke", "revoked", "rolled_back", "failed")


def test_hook_sign_matches_an_independent_hmac_and_binds_the_timestamp():
    secret, body = b"whsec-0123456789", b'{"event":"deployed"}'
    header = sign(secret, body, 1_800_000_000)
    stamp, mac = (part.split("=", 1)[1] for part in header.split(","))
    assert header.startswith("t=1800000000,v1=") and stamp == "1800000000"
    assert hmac.compare_digest(mac, hmac.new(secret, b"1800000000." + body, hashlib.sha256).hexdigest())
    assert sign(secret, body, 1_800_000_001) != header          # a replay with a fresh timestamp fails
    assert sign(secret, body + b" ", 1_800_000_000) != header
    assert SIGNATURE_HEADER == "X-Rotator-Signature"


# --- build ---------------------------------------------------------------------------------------

def test_hook_build_makes_exec_and_http_hooks_with_the_spec_settings():
    exec_hook = build(spec(gate=True, timeout="90s", backoff="2m", max_attempts=3, pass_value=True,
                           events=["staged", "deployed"]), no_resolve, "hooks[0]")
    assert isinstance(exec_hook, ExecHook) and exec_hook.kind == "exec"
    assert (exec_hook.name, exec_hook.events, exec_hook.gate, exec_hook.timeout, exec_hook.backoff,
            exec_hook.max_attempts, exec_hook.pass_value) == \
        ("reload", ("staged", "deployed"), True, 90.0, timedelta(minutes=2), 3, True)
    http_hook = build(spec(kind="http", url={"env": "HOOK_URL"}, signing_secret={"file": "/run/s"}),
                      no_resolve, "secrets[2].hooks[1]")
    assert isinstance(http_hook, HttpHook) and http_hook.kind == "http" and not http_hook.pass_value


@pytest.mark.parametrize("values, message", [
    (dict(kind="http", url={"env": "HOOK_URL", "path": "x"}), r"hooks\[0\].url: unknown setting"),
    (dict(kind="http", url="https://h.example/", signing_secret={"file": "/f", "mode": "0600"}),
     r"hooks\[0\].signing_secret: unknown setting"),
    (dict(kind="http", url="https://h.example/", headers={"X-Rotator-Signature": "forged"}),
     r"hooks\[0\].headers: X-Rotator-Signature is set by rotator"),
    (dict(kind="http", url="https://h.example/", headers={"content-type": "text/plain"}), "set by rotator"),
    (dict(kind="http", url="https://h.example/", headers={"X-Bad": "a\r\nInjected: 1"}), "not a valid header"),
    (dict(env={"ROTATOR_EVENT": "forged"}), r"hooks\[0\].env: ROTATOR_EVENT"),
    (dict(env={"BAD NAME": "x"}), "not a usable environment variable"),
    (dict(inherit_env=["AWS=1"]), "not an environment variable name"),
])
def test_hook_build_refuses_what_is_wrong_in_the_config(values, message):
    with pytest.raises(ConfigError, match=message):
        build(spec(**values), no_resolve, "hooks[0]")


def test_hook_build_refuses_a_spec_that_skipped_validation():
    unchecked = HookSpec.model_construct(name="x", kind="exec", events=["deployed"], command=[],
                                         timeout=timedelta(seconds=1), backoff=timedelta(seconds=1),
                                         max_attempts=1, gate=False, pass_value=False, env={}, inherit_env=[],
                                         working_dir=None)
    with pytest.raises(ConfigError, match=r"hooks\[3\].command"):
        build(unchecked, no_resolve, "hooks[3]")


def test_hook_http_url_from_a_missing_variable_fails_the_delivery_not_the_load(monkeypatch):
    monkeypatch.delenv("HOOK_URL_UNSET", raising=False)
    resolved: list[str] = []

    def resolve(ref, where):
        resolved.append(where)
        return credentials.resolve(ref, where)

    hook = build(spec(kind="http", url={"env": "HOOK_URL_UNSET"}), resolve, "secrets[2].hooks[1]")
    assert resolved == []                                          # built without resolving
    result = hook.deliver(context(), None, threading.Event())
    assert not result.ok
    assert result.detail == "secrets[2].hooks[1].url: environment variable HOOK_URL_UNSET is not set"

    monkeypatch.setenv("HOOK_URL_UNSET", "not-a-url-but-a-secret-token")
    result = hook.deliver(context(), None, threading.Event())      # resolved again, and checked
    assert not result.ok and "not an http(s) URL" in result.detail
    assert "secret-token" not in result.detail


def test_hook_plain_http_url_is_refused_unless_loopback_or_insecure_http():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"plain http:// to hooks.example.com"):
        spec(kind="http", url="http://hooks.example.com/rotated")
    assert spec(kind="http", url="http://127.0.0.1:8080/rotated").url.startswith("http://127.0.0.1")
    assert spec(kind="http", url="http://localhost:8080/rotated") is not None       # a sidecar
    assert spec(kind="http", url="http://hooks.example.com/rotated", insecure_http=True).insecure_http


def test_hook_plain_http_url_from_a_reference_fails_the_delivery(monkeypatch):
    monkeypatch.setenv("HOOK_URL_PLAIN", "http://hooks.example.com/rotated?token=abcdefgh12345678")
    hook = build(spec(kind="http", url={"env": "HOOK_URL_PLAIN"}), credentials.resolve, "hooks[0]")
    result = hook.deliver(context(), None, threading.Event())
    assert not result.ok and "plain http://" in result.detail and "abcdefgh12345678" not in result.detail


# --- the exec environment ------------------------------------------------------------------------

def test_hook_exec_environment_is_minimal_and_hands_on_no_credentials(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-do-not-pass")
    monkeypatch.setenv("VAULT_TOKEN", "hvs.do-not-pass")
    monkeypatch.setenv("QUIVA_API_KEY", "ms-donotpass0123456789")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.delenv("TZ", raising=False)
    hook = build(spec(env={"APP": "web"}), no_resolve, "hooks[0]")
    env = hook.environment(context())
    assert "AWS_SECRET_ACCESS_KEY" not in env and "VAULT_TOKEN" not in env and "QUIVA_API_KEY" not in env
    assert env["PATH"] == "/usr/bin:/bin" and env["KUBERNETES_SERVICE_HOST"] == "10.0.0.1"
    assert "TZ" not in env                                         # only what is set
    assert env["APP"] == "web" and env["ROTATOR_EVENT"] == "deployed"
    extra = set(env) - {"PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "KUBERNETES_SERVICE_HOST",
                        "KUBERNETES_SERVICE_PORT", "APP"}
    assert extra == set(context().to_env())


def test_hook_exec_environment_passes_what_inherit_env_names_and_rotator_variables_win(monkeypatch):
    monkeypatch.setenv("VAULT_TOKEN", "hvs.the-hook-needs-this")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-still-not-passed")
    hook = build(spec(inherit_env=["VAULT_TOKEN", "NOT_SET_ANYWHERE"]), no_resolve, "hooks[0]")
    env = hook.environment(context(), environ={"VAULT_TOKEN": "hvs.the-hook-needs-this",
                                                "ROTATOR_EVENT": "forged", "PATH": "/bin"})
    assert env["VAULT_TOKEN"] == "hvs.the-hook-needs-this"
    assert "NOT_SET_ANYWHERE" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    assert env["ROTATOR_EVENT"] == "deployed"
    assert hook.environment(context())["VAULT_TOKEN"] == "hvs.the-hook-needs-this"    # from os.environ


def test_hook_exec_pass_value_without_a_value_fails_without_running(tmp_path):
    marker = tmp_path / "ran"
    hook = build(spec(command=["/bin/touch", str(marker)], pass_value=True), no_resolve, "hooks[0]")
    result = hook.deliver(context(), None, threading.Event())
    assert result == Result(False, "the key's value is not available to pass", 0.0)
    assert not marker.exists()


def test_hook_exec_refuses_when_the_value_would_be_in_argv():
    value = Secret("ms-argvleak0123456789abcdef")
    hook = build(spec(command=["/bin/echo", value.reveal()]), no_resolve, "hooks[0]")
    result = hook.deliver(context(), value, threading.Event())
    assert not result.ok and "refused" in result.detail and value.reveal() not in result.detail


# --- the runner ----------------------------------------------------------------------------------

class Scripted(Hook):
    """A hook that does what the test says, without a process or a socket."""

    kind = "exec"

    def __init__(self, name: str, act) -> None:
        super().__init__(spec(name=name), f"hooks[{name}]")
        self.act = act
        self.calls: list[tuple[Context, object]] = []

    def deliver(self, context, value, cancel, *, clock=None):
        self.calls.append((context, clock))
        return self.act(context, value, cancel)


def test_hook_runner_returns_results_in_job_order_and_turns_a_crash_into_a_redacted_result():
    value = Secret("ms-crashleak0123456789abcdef")

    def crash(context, value, cancel):
        raise RuntimeError(f"boom with {value.reveal()}")

    clock = FakeClock(AT)
    hooks = [Scripted("a", lambda c, v, e: Result(True, "exit 0 in 0.0s", 0.0)),
             Scripted("b", crash),
             Scripted("c", lambda c, v, e: Result(False, "HTTP 503 in 0.0s", 0.0))]
    runner = HookRunner(concurrency=2, clock=clock)
    results = runner.deliver([(h, context(hook=h.name), value) for h in hooks])
    assert [r.ok for r in results] == [True, False, False]
    assert results[0].detail == "exit 0 in 0.0s" and results[2].detail == "HTTP 503 in 0.0s"
    assert results[1].detail.startswith("error: RuntimeError: boom with [REDACTED]")
    assert value.reveal() not in results[1].detail
    assert all(call[1] is clock for h in hooks for call in h.calls)     # the runner's clock signs
    assert runner.deliver([]) == []


def test_hook_runner_logs_each_delivery_without_a_value(caplog):
    value = Secret("ms-logleak0123456789abcdef")
    hook = Scripted("reload", lambda c, v, e: Result(False, "exit 3 in 0.1s: bad", 0.1))
    with caplog.at_level("INFO", logger="rotator.hooks"):
        HookRunner().deliver([(hook, context(), value)])
    assert [r.getMessage() for r in caplog.records] == \
        ["hook reload deployed for web-api: failed (exit 3 in 0.1s: bad)"]


def test_hook_runner_after_stop_runs_nothing_and_says_so():
    hook = Scripted("a", lambda c, v, e: pytest.fail("a stopped runner must not deliver"))
    runner = HookRunner(concurrency=1)
    runner.stop()
    assert runner.stopped
    assert runner.deliver([(hook, context(), None)] * 3) == [Result(False, "not run: shutting down", 0.0)] * 3
    assert hook.calls == []


def test_hook_runner_stop_releases_jobs_waiting_for_a_slot():
    started = threading.Event()

    def hold(context, value, cancel):
        started.set()
        cancel.wait(5)                      # a running delivery sees the cancel event
        return Result(False, "stopped: shutting down", 0.0)

    runner = HookRunner(concurrency=1)
    hooks = [Scripted("first", hold), Scripted("second", hold)]
    out: list[list[Result]] = []
    thread = threading.Thread(target=lambda: out.append(runner.deliver([(h, context(), None) for h in hooks])))
    thread.start()
    assert started.wait(5)
    runner.stop()
    thread.join(5)
    assert not thread.is_alive()
    assert sorted(r.detail for r in out[0]) == ["not run: shutting down", "stopped: shutting down"]
    assert sum(len(h.calls) for h in hooks) == 1            # whichever got the slot; the other never ran
