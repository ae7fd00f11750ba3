"""The QuivaWorks client's reused helper threads (providers/quiva/client.py ``_Helpers``): a job
never waits behind a stuck one, an idle helper takes the next job instead of a new thread, and
idle helpers end. Events, not sleeps, order the threads."""

from __future__ import annotations

import threading

from rotator_providers.quiva.client import _Helpers


def _threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == name and t.is_alive()]


def test_a_stuck_helper_never_delays_the_next_job():
    helpers = _Helpers("test-stuck", linger=5)
    release, second = threading.Event(), threading.Event()
    helpers.run(release.wait)                 # a server trickling its answer
    helpers.run(second.set)
    assert second.wait(5), "the second job waited behind the stuck one"
    release.set()


def test_an_idle_helper_is_reused():
    helpers = _Helpers("test-reuse", linger=5)
    ran: list[str] = []
    for _ in range(20):
        done = threading.Event()
        helpers.run(lambda: (ran.append(threading.current_thread().name), done.set()))
        assert done.wait(5)
        # the helper counts itself idle right after the job; wait for that before the next one
        for _ in range(1000):
            with helpers._lock:
                if helpers._idle:
                    break
            threading.Event().wait(0.001)
    assert len(ran) == 20 and len(_threads("test-reuse")) == 1


def test_idle_helpers_end_and_a_promised_one_stays_for_its_job():
    helpers = _Helpers("test-linger", linger=0.05)
    gates = [threading.Event() for _ in range(3)]
    finished = [threading.Event() for _ in range(3)]
    for gate, done in zip(gates, finished):
        helpers.run(lambda gate=gate, done=done: (gate.wait(), done.set()))
    assert len(_threads("test-linger")) == 3
    for gate in gates:
        gate.set()
    assert all(done.wait(5) for done in finished)
    for _ in range(500):                        # each ends once idle for `linger`
        if not _threads("test-linger"):
            break
        threading.Event().wait(0.01)
    assert not _threads("test-linger")
    done = threading.Event()
    helpers.run(done.set)                       # none idle: a new helper takes it
    assert done.wait(5)


def test_close_ends_every_helper_once_its_job_is_done_and_later_jobs_still_run():
    helpers = _Helpers("test-close", linger=30)
    gate, stuck_done = threading.Event(), threading.Event()
    helpers.run(lambda: (gate.wait(), stuck_done.set()))      # busy when closed
    idle_done = threading.Event()
    helpers.run(lambda: idle_done.set())
    assert idle_done.wait(5)
    helpers.close()
    gate.set()
    assert stuck_done.wait(5)
    after = threading.Event()
    helpers.run(after.set)
    assert after.wait(5)
    for _ in range(500):
        if not _threads("test-close"):
            break
        threading.Event().wait(0.01)
    assert not _threads("test-close")
