"""The control lease and the server's clock as plain objects: no sockets, times given by the test.

The server tests (test_lease.py, test_realtime.py) check the same rules through real processes;
these pin the arithmetic down at the edges, where a process test cannot place a request exactly.
"""
import pytest

from robot_env.bridge.clock import Clock
from robot_env.bridge.lease import Lease, check_token
from robot_env.errors import RequestError

A, B = "a" * 16, "b" * 16


def refused(fn, *args, code="not_controller"):
    with pytest.raises(RequestError) as info:
        fn(*args)
    assert info.value.code == code
    return info.value.message


# -- lease -------------------------------------------------------------------------------------
def test_a_free_lease_is_taken_by_the_first_motion_request_and_held_against_others():
    lease = Lease(0.25)
    assert lease.free(0.0)
    lease.claim(A, "step", 0.0)
    assert lease.controller == A and not lease.free(0.1)
    assert "another client holds control" in refused(lease.claim, B, "step", 0.1)
    lease.seen = 0.2  # A's next command
    assert not lease.free(0.45) and lease.free(0.46)  # lapses `timeout` after the last command


def test_a_tokenless_request_moves_only_a_free_lease_and_never_holds_it():
    lease = Lease(0.25)
    lease.claim(None, "step", 0.0)
    assert lease.controller is None and lease.free(0.0)
    lease.claim(A, "step", 0.0)
    refused(lease.claim, None, "step", 0.1)


def test_the_lease_does_not_lapse_while_the_estop_or_a_fault_is_latched():
    latched = [True]
    lease = Lease(0.25, latched=lambda: latched[0])
    lease.claim(A, "step", 0.0)
    assert not lease.free(100.0)
    refused(lease.claim, B, "reset_faults", 100.0)
    latched[0] = False
    assert lease.free(100.0)


def test_forced_takeover_and_the_loser_is_told_once():
    lease = Lease(None)  # never lapses
    lease.claim(A, "step", 0.0)
    assert not lease.free(1e9)
    refused(lease.acquire, B, False, 1.0)
    info = lease.acquire(B, True, 1.0)
    assert info["yours"] and lease.controller == B
    assert "taken over" in refused(lease.claim, A, "step", 2.0)
    assert "another client holds control" in refused(lease.claim, A, "step", 2.0)  # told once, then plain


def test_a_lapsed_lease_passes_on_and_release_frees_it():
    lease = Lease(0.25)
    lease.claim(A, "step", 0.0)
    lease.claim(B, "step", 1.0)  # A lapsed
    assert lease.controller == B
    assert "lease lapsed" in refused(lease.claim, A, "step", 1.1)
    assert lease.release(A, 1.1)[0] is False
    released, info = lease.release(B, 1.1)
    assert released and not info["held"] and lease.free(1.1)


def test_snapshot_restore_undoes_a_claim():
    lease = Lease(0.25)
    snap = lease.snapshot()
    lease.claim(A, "reset", 0.0)
    lease.restore(snap)
    assert lease.controller is None


def test_tokens_and_force_are_checked():
    for bad in ("short", 5, "x" * 129, b"bytes" * 4):
        refused(check_token, bad, code="bad_request")
    assert check_token(None) is None
    refused(check_token, None, True, code="bad_request")
    refused(Lease(1.0).acquire, A, "yes", 0.0, code="bad_request")


# -- clock -------------------------------------------------------------------------------------
def test_a_tick_per_period_and_no_burst_after_falling_behind():
    c = Clock("realtime", 0.04, 0.25, now=0.0)
    assert not c.tick_due(0.039) and c.tick_due(0.04) and not c.tick_due(0.05)
    assert c.tick_due(1.0)  # 24 periods late: one tick, counted, then back on the period
    assert c.overruns == 1 and c.next_tick == pytest.approx(1.04)
    assert c.poll_timeout(1.0) == pytest.approx(0.04)


def test_elapsed_advances_once_and_never_backwards():
    c = Clock("realtime", 0.04, 0.25, now=10.0)
    assert c.elapsed(10.1) == pytest.approx(0.1)
    assert c.elapsed(10.1) == 0.0 and c.elapsed(10.05) == 0.0


def test_the_watchdog_trips_once_after_its_timeout_and_not_while_estopped():
    c = Clock("realtime", 0.04, 0.25, now=0.0)
    assert not c.watchdog_trips(100.0, False)  # no command yet: idle
    c.commanded(1.0)
    assert not c.watchdog_trips(1.25, False) and not c.watchdog_trips(1.3, True)
    assert c.watchdog_trips(1.3, False) and c.watchdog_tripped
    assert not c.watchdog_trips(2.0, False)  # once
    c.commanded(2.0)
    assert not c.watchdog_tripped


def test_a_step_answered_late_restarts_the_watchdog():
    """A client stepping on the realtime clock sends its next command only after the reply: a server
    that answers late (starved) must not trip the watchdog on it."""
    c = Clock("realtime", 0.04, 0.25, now=0.99)
    c.commanded(1.0)
    c.defer(1.0, "reply")
    assert c.due_steps(1.025) == [] and c.poll_timeout(1.025) == pytest.approx(0.005)  # the tick at 1.03 first
    late = c.due_steps(1.4)  # answered 0.36 s late
    assert late == [(pytest.approx(0.36), "reply")]
    assert not c.watchdog_trips(1.6, False) and c.watchdog_trips(1.66, False)


def test_flush_makes_every_deferred_step_due():
    c = Clock("realtime", 0.04, 0.25, now=0.0)
    c.defer(0.0, 1)
    c.defer(0.01, 2)
    c.flush(0.02)
    assert [p for _, p in c.due_steps(0.02)] == [1, 2]


def test_only_the_two_clocks():
    with pytest.raises(ValueError):
        Clock("wallclock", 0.04, 0.25, now=0.0)
