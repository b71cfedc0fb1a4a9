"""The model server's version repository without MLflow or TensorFlow: the pure plan (what to
load, drop and answer with), and the running repository driven by stand-in fetch/load
functions (hot swap only after a load, failures retried, grace before an unload)."""

from __future__ import annotations

import threading
import time

import pytest

from taxi_mlops.registry.models import VersionInfo
from taxi_mlops.serving import repository as r
from taxi_mlops.serving.repository import FAILED, LOADING, READY, Slot, plan
from taxi_mlops.settings import Settings


def reg(**versions: tuple[str, ...]) -> dict[str, VersionInfo]:
    """reg(v3=("champion",), v4=()) -> a registry snapshot."""
    return {k[1:]: VersionInfo(version=k[1:], aliases=tuple(a), source=f"models:/m/{k[1:]}",
                               run_id="run", tags={"model_family": "keras"})
            for k, a in versions.items()}


def ready(*versions: str) -> dict[str, Slot]:
    return {v: Slot(v, READY, loaded_at=0.0) for v in versions}


# ---- the pure plan ---------------------------------------------------------------------------
def test_first_plan_loads_every_aliased_and_pinned_version_serving_alias_first():
    p = plan({}, reg(v1=(), v2=("previous",), v3=("champion",), v4=("challenger",)), {"1"}, {},
             now=0, grace_s=30, first="champion")
    assert p.load == ("3", "4", "2", "1")
    assert p.aliases == {}  # nothing answers before it is loaded
    assert {v: s.state for v, s in p.slots.items()} == {v: LOADING for v in "1234"}


def test_unaliased_unpinned_and_unregistered_versions_are_not_loaded():
    p = plan({}, reg(v1=(), v2=("champion",)), {"9"}, {}, now=0, grace_s=30)
    assert p.load == ("2",)


def test_an_alias_moves_only_once_its_new_version_is_ready():
    slots = {**ready("3"), "4": Slot("4", LOADING)}
    p = plan(slots, reg(v3=(), v4=("champion",)), set(), {"champion": "3"}, now=10, grace_s=30)
    assert p.aliases == {"champion": "3"}  # still the old one
    assert p.load == () and p.unload == ()
    assert p.slots["3"].unused_since is None  # still answering: no grace clock yet
    p = plan(ready("3", "4"), reg(v3=(), v4=("champion",)), set(), p.aliases, now=11, grace_s=30)
    assert p.aliases == {"champion": "4"}
    assert p.slots["3"].unused_since == 11 and p.unload == ()


def test_a_version_without_alias_drains_for_the_grace_period_then_is_unloaded():
    registry = reg(v3=(), v4=("champion",))
    slots = {**ready("4"), "3": Slot("3", READY, unused_since=100.0)}
    p = plan(slots, registry, set(), {"champion": "4"}, now=129.9, grace_s=30)
    assert p.unload == () and "3" in p.slots
    p = plan(slots, registry, set(), {"champion": "4"}, now=130.0, grace_s=30)
    assert p.unload == ("3",) and "3" not in p.slots


def test_a_version_that_regains_an_alias_stops_draining():
    slots = {**ready("4"), "3": Slot("3", READY, unused_since=100.0)}
    p = plan(slots, reg(v3=("challenger",), v4=("champion",)), set(), {"champion": "4"},
             now=120, grace_s=30)
    assert p.slots["3"].unused_since is None and p.aliases == {"champion": "4", "challenger": "3"}


def test_pinned_versions_stay_without_alias_and_deleted_ones_go():
    p = plan(ready("2", "3"), reg(v2=(), v3=("champion",)), {"2"}, {"champion": "3"}, now=0, grace_s=0)
    assert p.unload == () and set(p.slots) == {"2", "3"}
    p = plan(ready("2", "3"), reg(v3=("champion",)), {"2"}, {"champion": "3"}, now=0, grace_s=0)
    assert p.unload == ("2",)  # pinned but no longer registered


def test_zero_grace_unloads_at_once_and_unready_unwanted_versions_go_at_once():
    p = plan({**ready("3", "4"), "5": Slot("5", FAILED), "6": Slot("6", LOADING)},
             reg(v3=(), v4=("champion",)), set(), {"champion": "4"}, now=0, grace_s=30)
    assert p.unload == ("5", "6") and "3" in p.slots
    p = plan(ready("3", "4"), reg(v3=(), v4=("champion",)), set(), {"champion": "4"}, now=0, grace_s=0)
    assert p.unload == ("3",)


def test_a_failed_version_is_retried_after_its_backoff_keeping_its_failure_count():
    slot = r.failed(Slot("4", LOADING), "boom", now=100.0, base_backoff_s=2.0)
    assert slot.state == FAILED and slot.failures == 1 and slot.retry_at == 102.0
    registry = reg(v3=("champion",), v4=("challenger",))
    p = plan({**ready("3"), "4": slot}, registry, set(), {"champion": "3"}, now=101, grace_s=30)
    assert p.load == () and p.slots["4"].state == FAILED
    assert p.aliases == {"champion": "3"}  # challenger answers with nothing
    p = plan({**ready("3"), "4": slot}, registry, set(), {"champion": "3"}, now=102, grace_s=30)
    assert p.load == ("4",) and p.slots["4"].state == LOADING and p.slots["4"].failures == 1
    again = r.failed(p.slots["4"], "boom", now=102.0, base_backoff_s=2.0)
    assert again.failures == 2 and again.retry_at == 106.0
    assert r.backoff_s(20, 2.0) == r.MAX_BACKOFF_S
    assert r.loaded(again, 5.0).failures == 0 and r.loaded(again, 5.0).state == READY


def test_a_failed_new_champion_leaves_the_old_one_answering():
    slots = {**ready("3"), "4": r.failed(Slot("4", LOADING), "boom", 0.0, 2.0)}
    p = plan(slots, reg(v3=(), v4=("champion",)), set(), {"champion": "3"}, now=1, grace_s=0)
    assert p.aliases == {"champion": "3"} and "3" in p.slots and p.unload == ()


# ---- the running repository with stand-ins ---------------------------------------------------
class FakeRegistry:
    def __init__(self, **versions):
        self.snapshot = reg(**versions)
        self.down = False

    def __call__(self):
        if self.down:
            raise ConnectionError("registry down")
        return self.snapshot


class FakeLoader:
    """Loads block until released, so a test sees the 'loading' state; some versions fail."""

    def __init__(self, fail: set[str] = frozenset()):
        self.fail = set(fail)
        self.gate = threading.Event()
        self.gate.set()
        self.calls: list[str] = []

    def __call__(self, info: VersionInfo):
        self.calls.append(info.version)
        assert self.gate.wait(10)
        if info.version in self.fail:
            raise RuntimeError(f"cannot load {info.version}")
        return f"model-{info.version}"


def repo(registry, loader, **settings) -> r.VersionRepository:
    s = Settings(registry_poll_s=0.05, unload_grace_s=settings.pop("unload_grace_s", 0.2), **settings)
    return r.VersionRepository(s, registry, loader)


def test_repository_serves_only_loaded_versions_and_swaps_after_the_load():
    registry, loader = FakeRegistry(v3=("champion",)), FakeLoader()
    rp = repo(registry, loader)
    try:
        assert rp.poll() and rp.wait_settled(5)
        assert rp.resolve("champion") == ("3", "model-3") and rp.resolve("3") == ("3", "model-3")
        loader.gate.clear()
        registry.snapshot = reg(v3=(), v4=("champion",))
        rp.poll()
        with pytest.raises(r.NotReady, match="loading"):
            rp.resolve("4")
        assert rp.resolve("champion") == ("3", "model-3")  # the old one answers meanwhile
        assert rp.listing()["versions"]["4"]["state"] == LOADING
        loader.gate.set()
        assert rp.wait_settled(5)
        assert rp.resolve("champion") == ("4", "model-4")
        listing = rp.listing()
        assert listing["aliases"] == {"champion": "4"}
        assert listing["versions"]["4"]["aliases"] == ["champion"]
        assert listing["versions"]["4"]["family"] == "keras" and listing["versions"]["4"]["loaded_at"]
        assert listing["versions"]["3"]["aliases"] == [] and not listing["versions"]["3"]["pinned"]
        with pytest.raises(r.UnknownRef, match="'nope'"):
            rp.resolve("nope")
        with pytest.raises(r.UnknownRef, match="'99'"):
            rp.resolve("99")
        deadline = time.monotonic() + 5
        while "3" in rp.listing()["versions"] and time.monotonic() < deadline:
            time.sleep(0.05)
            rp.poll()
        assert "3" not in rp.listing()["versions"]  # dropped after the grace period
        with pytest.raises(r.UnknownRef, match="not served"):
            rp.resolve("3")
    finally:
        rp.stop()


def test_repository_marks_a_failed_load_and_retries_it():
    registry, loader = FakeRegistry(v3=("champion",), v4=("challenger",)), FakeLoader(fail={"4"})
    rp = repo(registry, loader)
    try:
        rp.poll()
        assert rp.wait_settled(5)
        assert rp.listing()["versions"]["4"]["state"] == FAILED
        assert "cannot load 4" in rp.listing()["versions"]["4"]["error"]
        with pytest.raises(r.NotReady, match="failed"):
            rp.resolve("challenger")
        assert rp.resolve("champion")[0] == "3"
        loader.fail.clear()
        rp.start()
        deadline = time.monotonic() + 5
        while rp.state("4") != READY and time.monotonic() < deadline:
            time.sleep(0.05)
        assert rp.resolve("challenger") == ("4", "model-4")
        assert loader.calls.count("4") == 2
    finally:
        rp.stop()


def test_repository_keeps_serving_when_the_registry_is_down():
    registry, loader = FakeRegistry(v3=("champion",)), FakeLoader()
    rp = repo(registry, loader)
    try:
        rp.poll()
        assert rp.wait_settled(5)
        registry.down = True
        assert rp.poll() is False
        assert rp.resolve("champion") == ("3", "model-3")
    finally:
        rp.stop()


def test_repository_publishes_model_info_per_version_and_alias():
    from prometheus_client import CollectorRegistry

    from taxi_mlops.serving.metrics import ModelServerMetrics

    metrics = ModelServerMetrics(CollectorRegistry())
    registry = FakeRegistry(v2=(), v3=("champion", "previous"), v4=("challenger",))
    s = Settings(registry_poll_s=0.05, unload_grace_s=0, serving_versions="2")
    rp = r.VersionRepository(s, registry, FakeLoader(), metrics=metrics)
    try:
        rp.poll()
        assert rp.wait_settled(5)
        info = {tuple(sorted(sample.labels.items())) for family in metrics.model_info.collect()
                for sample in family.samples}
        name = s.model_name
        assert info == {(("alias", a), ("model_name", name), ("model_version", v))
                        for v, a in [("2", ""), ("3", "champion"), ("3", "previous"), ("4", "challenger")]}
        assert rp.listing()["versions"]["2"]["pinned"] is True
    finally:
        rp.stop()
