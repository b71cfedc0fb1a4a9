"""taxi-mlops logs: merging JSON and non-JSON log files in time order, filters, follow."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timezone

import pytest

from taxi_mlops.observability import logview
from taxi_mlops.settings import Settings


def _local(text: str, fmt: str) -> float:
    return datetime.strptime(text, fmt).timestamp()  # the machine's local time, like the writers


@pytest.fixture
def settings(tmp_path) -> Settings:
    s = Settings(state_dir=tmp_path)
    s.logs_dir.mkdir(parents=True)
    return s


def _write(settings, name, *lines):
    (settings.logs_dir / f"{name}.log").write_text("\n".join(lines) + "\n")


def test_parse_duration():
    assert logview.parse_duration("30s") == 30
    assert logview.parse_duration("10m") == 600
    assert logview.parse_duration("2h") == 7200
    assert logview.parse_duration("1h30m") == 5400
    assert logview.parse_duration("45") == 45
    for bad in ("", "10x", "m", "-5m", "ten minutes"):
        with pytest.raises(ValueError):
            logview.parse_duration(bad)


def test_merge_orders_json_and_foreign_formats(settings):
    _write(settings, "gateway",
           "",
           '--- start 2026-11-27 20:51:10: /usr/bin/python -m taxi_mlops.gateway',
           '{"ts": "2026-11-27T20:51:12.600Z", "level": "INFO", "component": "gateway", "logger": "g", '
           '"message": "predict", "request_id": "r1", "model_version": "3"}',
           '{"ts": "2026-11-27T20:51:14.000Z", "level": "ERROR", "component": "gateway", "logger": "g", '
           '"message": "boom", "request_id": "r2"}',
           "Traceback (most recent call last):",
           '  File "x.py", line 1')
    _write(settings, "redis",
           "5634:C 27 Nov 2026 20:51:12.531 # oO0OoO0OoO0Oo Redis is starting oO0OoO0OoO0Oo",
           "5634:M 27 Nov 2026 20:51:12.532 * Ready to accept connections tcp")
    _write(settings, "kafka",
           "[2026-11-27 20:51:13,409] INFO [KafkaServer id=1] started (kafka.server.KafkaServer)",
           "[2026-11-27 20:51:13,500] WARN request r1 slow (kafka.network)")
    _write(settings, "prometheus",
           '{"caller":"main.go:1","component":"web","level":"info","msg":"Server is ready","ts":"2026-11-27T20:51:12.700123456Z"}')
    _write(settings, "mlflow", "2026/11/27 20:51:11 INFO mlflow.store.db.utils: Creating tables")
    _write(settings, "pipeline",
           "2026-11-27 20:51:09.503709: E external/local_xla/cuda_fft.cc:479] Unable to register cuFFT factory",
           "W1127 20:51:09.600000 140 trainer.py:12] slow epoch")

    recs = list(logview.merge(settings))
    times = [r["t"] for r in recs]
    assert times == sorted(times)
    utc = lambda s: datetime.fromisoformat(s).replace(tzinfo=timezone.utc).timestamp()
    by_msg = {r["message"]: r for r in recs}
    assert by_msg["predict"]["t"] == utc("2026-11-27T20:51:12.600")
    assert by_msg["predict"]["request_id"] == "r1" and by_msg["predict"]["component"] == "gateway"
    assert by_msg["Server is ready"]["t"] == pytest.approx(utc("2026-11-27T20:51:12.700123"))
    assert by_msg["Server is ready"]["level"] == "INFO"
    # Go servers' "component" is their subsystem: the file still names the service
    assert by_msg["Server is ready"]["component"] == "prometheus"
    assert by_msg["Server is ready"]["subcomponent"] == "web"
    assert [r["message"] for r in logview.merge(settings, component="prometheus")] == ["Server is ready"]
    redis = by_msg["Ready to accept connections tcp"]
    assert redis["format"] == "redis" and redis["component"] == "redis"
    assert redis["t"] == pytest.approx(_local("27 Nov 2026 20:51:12.532", "%d %b %Y %H:%M:%S.%f"))
    assert by_msg["oO0OoO0OoO0Oo Redis is starting oO0OoO0OoO0Oo"]["level"] == "WARNING"
    kafka = by_msg["WARN request r1 slow (kafka.network)".split(" ", 1)[1]]
    assert kafka["level"] == "WARNING" and kafka["format"] == "kafka"
    assert kafka["t"] == pytest.approx(_local("2026-11-27 20:51:13,500", "%Y-%m-%d %H:%M:%S,%f"))
    assert by_msg["mlflow.store.db.utils: Creating tables"]["format"] == "python"
    tf = by_msg["external/local_xla/cuda_fft.cc:479] Unable to register cuFFT factory"]
    assert tf["format"] == "tensorflow" and tf["level"] == "ERROR"
    assert tf["t"] == pytest.approx(_local("2026-11-27 20:51:09.503709", "%Y-%m-%d %H:%M:%S.%f"))
    glog = by_msg["trainer.py:12] slow epoch"]
    assert glog["format"] == "glog" and glog["level"] == "WARNING"
    assert by_msg["start 2026-11-27 20:51:10: /usr/bin/python -m taxi_mlops.gateway"]["format"] == "supervisor"
    # A traceback stays right after its record, at its time.
    boom = [r["message"] for r in recs].index("boom")
    assert [r["message"] for r in recs][boom + 1:boom + 3] == ["Traceback (most recent call last):",
                                                               '  File "x.py", line 1']
    assert recs[boom + 1]["t"] == recs[boom]["t"] and recs[boom + 1]["continuation"]
    assert all(r["ts"].endswith("Z") for r in recs)


def test_filters(settings):
    now = time.time()
    iso = lambda t: datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    _write(settings, "gateway",
           f'{{"ts": "{iso(now - 7200)}", "level": "INFO", "component": "gateway", "message": "old", "request_id": "a"}}',
           f'{{"ts": "{iso(now - 60)}", "level": "INFO", "component": "gateway", "message": "new", "request_id": "a"}}',
           "untimed continuation of new")
    _write(settings, "model_server",
           f'{{"ts": "{iso(now - 30)}", "level": "INFO", "component": "model_server", "message": "infer", "request_id": "a"}}',
           f'{{"ts": "{iso(now - 20)}", "level": "INFO", "component": "model_server", "message": "other", "request_id": "b,c"}}')  # a shared call
    # the untimed line continues "new" (a traceback): it belongs to the same request
    assert [r["message"] for r in logview.merge(settings, request_id="a")] == [
        "old", "new", "untimed continuation of new", "infer"]
    assert [r["message"] for r in logview.merge(settings, request_id="b")] == ["other"]
    assert [r["message"] for r in logview.merge(settings, request_id="c")] == ["other"]
    assert [r["message"] for r in logview.merge(settings, since_s=logview.parse_duration("10m"))] == [
        "new", "untimed continuation of new", "infer", "other"]
    assert [r["message"] for r in logview.merge(settings, component="model_server")] == ["infer", "other"]
    assert [r["message"] for r in logview.merge(settings, component=["gateway"], since_s=600)] == [
        "new", "untimed continuation of new"]
    line = logview.format_record(next(logview.merge(settings, component="model_server")))
    assert "model_server" in line and "[a]" in line and "infer" in line


def test_leading_untimed_lines_take_the_first_time(settings):
    _write(settings, "x", "no time here", "[2026-11-27 20:51:13,409] INFO hello (k)")
    recs = list(logview.merge(settings))
    assert recs[0]["message"] == "no time here" and recs[0]["t"] == recs[1]["t"]


def test_follow_yields_new_lines_in_order_and_stops(settings):
    _write(settings, "gateway", '{"ts": "2026-11-27T20:00:00.000Z", "level": "INFO", "message": "backlog"}')
    stop = threading.Event()
    got: list[dict] = []

    def run():
        for rec in logview.follow(settings, poll_interval_s=0.05, stop=stop.is_set):
            got.append(rec)

    t = threading.Thread(target=run)
    t.start()
    try:
        assert _wait(lambda: [r["message"] for r in got] == ["backlog"])
        with (settings.logs_dir / "gateway.log").open("a") as f:
            f.write('{"ts": "2026-11-27T20:00:02.000Z", "level": "INFO", "message": "second"}\n')
            f.write('{"ts": "2026-11-27T20:00:03.000Z", "level": "INFO", "mess')  # half a line
            f.flush()
            assert _wait(lambda: [r["message"] for r in got] == ["backlog", "second"])
            f.write('age": "third"}\n')
        # a new file appears
        _write(settings, "redis", "1:M 27 Nov 2026 20:00:04.000 * redis line")
        assert _wait(lambda: [r["message"] for r in got][-2:] == ["third", "redis line"])
        # truncation: re-read from the start
        _write(settings, "gateway", '{"ts": "2026-11-27T21:00:00.000Z", "level": "INFO", "message": "after rotate"}')
        assert _wait(lambda: got[-1]["message"] == "after rotate")
    finally:
        stop.set()
        t.join(5)
    assert not t.is_alive()


def test_follow_stops_on_keyboard_interrupt(settings, monkeypatch):
    _write(settings, "gateway", '{"ts": "2026-11-27T20:00:00.000Z", "level": "INFO", "message": "x"}')

    def interrupt(_):
        raise KeyboardInterrupt

    monkeypatch.setattr(logview.time, "sleep", interrupt)
    assert [r["message"] for r in logview.follow(settings, since_s=None)] == ["x"]


def _wait(predicate, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()
