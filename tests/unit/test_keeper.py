"""The keeper's restart policy (pure) and its loop on real processes (no stack): a killed
service comes back with a new pid, a service stopped on purpose stays down, and one that
keeps crashing ends failed, naming its log."""

from __future__ import annotations

import sys
import time

import pytest

from taxi_mlops.settings import Settings
from taxi_mlops.stack import keeper
from taxi_mlops.stack.keeper import Keeper, Policy, RestartState, on_crash, on_restarted
from taxi_mlops.stack.process import Service, Supervisor, pid_alive, wait_for

POLICY = Policy(backoff_s=1.0, backoff_max_s=8.0, max_crashes=5, window_s=300.0)


def test_backoff_doubles_per_crash_in_the_window_and_is_capped():
    st, delays = RestartState(), []
    for i in range(4):
        st = on_crash(st, 100.0 + i, POLICY, "exited", "x.log")
        assert st.state == "backoff"
        delays.append(st.next_attempt - (100.0 + i))
        st = on_restarted(st, 100.0 + i)
    assert delays == [1.0, 2.0, 4.0, 8.0]
    assert st.restarts == 4


def test_the_max_crash_in_the_window_is_failed_and_names_the_log():
    st = RestartState()
    for i in range(POLICY.max_crashes):
        st = on_crash(st, 10.0 * i, POLICY, "exited", "/state/logs/gateway.log")
    assert st.state == "failed" and st.next_attempt is None
    assert "/state/logs/gateway.log" in st.reason and "taxi-mlops up" in st.reason


def test_crashes_older_than_the_window_are_forgotten():
    st = RestartState()
    for i in range(POLICY.max_crashes - 1):
        st = on_crash(st, float(i), POLICY, "exited", "x.log")
    st = on_crash(st, 10_000.0, POLICY, "exited", "x.log")  # long after: a fresh first crash
    assert st.state == "backoff" and len(st.crashes) == 1
    assert st.next_attempt == 10_000.0 + POLICY.backoff_s


@pytest.fixture
def sup(tmp_path):
    settings = Settings(state_dir=tmp_path, restart_backoff_s=0.1, restart_backoff_max_s=0.4,
                        restart_max_crashes=3, restart_window_s=60.0)
    s = Supervisor(settings)
    yield s
    for name in s.wanted():
        s.stop(name, timeout_s=2)


def _sleeper(name: str, seconds: float) -> Service:
    return Service(name=name, command=[sys.executable, "-c", f"import time; time.sleep({seconds})"],
                   healthy=None, url="-")


def _tick_until(k: Keeper, predicate, timeout_s: float = 20.0) -> bool:
    def step() -> bool:
        k.tick()
        return predicate()
    return wait_for(step, timeout_s, 0.05)


def test_a_killed_service_is_restarted_and_counted(sup):
    k = Keeper(sup.settings)
    sup.start(_sleeper("sleeper", 60))
    first = sup.pid("sleeper")
    sup.kill("sleeper")
    assert _tick_until(k, lambda: sup.pid("sleeper") not in (None, first))
    st = keeper.read_state(sup.settings.run_dir, "sleeper")
    restarted = sup.pid("sleeper")
    assert st.state == "ok" and st.restarts == 1 and pid_alive(restarted)
    sup.stop("sleeper", timeout_s=2)  # what `down` does: the restarted process is the one stopped
    assert wait_for(lambda: not pid_alive(restarted), 5, 0.05)


def test_a_service_stopped_on_purpose_stays_down(sup):
    k = Keeper(sup.settings)
    sup.start(_sleeper("sleeper", 60))
    sup.stop("sleeper", timeout_s=2)
    for _ in range(10):
        k.tick()
        time.sleep(0.05)
    assert sup.pid("sleeper") is None and "sleeper" not in sup.wanted()


def test_a_service_that_keeps_crashing_ends_failed_and_is_left_alone(sup):
    k = Keeper(sup.settings)
    sup.start(_sleeper("crasher", 0.3))  # healthy at once, dies 0.3 s later, every time
    assert _tick_until(k, lambda: keeper.read_state(sup.settings.run_dir, "crasher").state == "failed")
    st = keeper.read_state(sup.settings.run_dir, "crasher")
    assert st.restarts == 2 and len(st.crashes) == 3
    assert str(sup.log_path("crasher")) in st.reason
    assert wait_for(lambda: sup.pid("crasher") is None, 5, 0.05)
    for _ in range(10):  # failed: not restarted again
        k.tick()
        time.sleep(0.05)
    assert sup.pid("crasher") is None and "crasher" in sup.wanted()
    sup.start(_sleeper("crasher", 60))  # a person's start clears the failed state
    assert keeper.read_state(sup.settings.run_dir, "crasher").state == "ok"
