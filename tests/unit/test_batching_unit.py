"""Micro-batching (serving/batching.py): concurrent requests share calls, answers stay
with their requests, a bad request fails alone."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from taxi_mlops.serving.batching import MicroBatcher


class SlowModel:
    """Doubles ``x``; each call holds until released, so requests pile up behind it."""

    def __init__(self):
        self.calls: list[int] = []
        self.gate = threading.Event()

    def __call__(self, columns):
        self.gate.wait(5)
        x = columns["x"]
        if np.any(x < 0):
            raise ValueError("negative")
        self.calls.append(len(x))
        return (x * 2).astype(np.float32)


def cols(*values):
    return {"x": np.array(values, dtype=np.float32)}


def test_requests_arriving_during_a_call_share_the_next_one():
    async def scenario():
        model = SlowModel()
        batcher = MicroBatcher(model, max_rows=256)
        first = asyncio.ensure_future(batcher.submit(cols(1)))
        await asyncio.sleep(0.05)  # the first call is running (held by the gate)
        rest = [asyncio.ensure_future(batcher.submit(cols(i, i + 0.5))) for i in range(2, 6)]
        await asyncio.sleep(0.05)
        model.gate.set()
        answers = await asyncio.gather(first, *rest)
        return model.calls, answers

    calls, answers = asyncio.run(scenario())
    assert calls == [1, 8]  # one alone, then the four waiting ones (2 rows each) together
    assert answers[0].tolist() == [2.0]
    for i, answer in zip(range(2, 6), answers[1:]):
        assert answer.tolist() == [2 * i, 2 * i + 1.0]


def test_a_batch_is_capped_at_max_rows():
    async def scenario():
        model = SlowModel()
        batcher = MicroBatcher(model, max_rows=3)
        first = asyncio.ensure_future(batcher.submit(cols(0)))
        await asyncio.sleep(0.05)
        rest = [asyncio.ensure_future(batcher.submit(cols(i))) for i in range(1, 6)]
        await asyncio.sleep(0.05)
        model.gate.set()
        await asyncio.gather(first, *rest)
        return model.calls

    assert asyncio.run(scenario()) == [1, 3, 2]


def test_a_bad_request_fails_alone():
    async def scenario():
        model = SlowModel()
        batcher = MicroBatcher(model)
        first = asyncio.ensure_future(batcher.submit(cols(1)))
        await asyncio.sleep(0.05)
        good = asyncio.ensure_future(batcher.submit(cols(3)))
        bad = asyncio.ensure_future(batcher.submit(cols(-1)))
        await asyncio.sleep(0.05)
        model.gate.set()
        await first
        assert (await good).tolist() == [6.0]
        with pytest.raises(ValueError, match="negative"):
            await bad

    asyncio.run(scenario())


def test_alone_a_request_is_answered_without_waiting():
    async def scenario():
        model = SlowModel()
        model.gate.set()
        batcher = MicroBatcher(model, max_wait_s=5.0)  # the wait applies under load only
        return await asyncio.wait_for(batcher.submit(cols(4)), 1.0)

    assert asyncio.run(scenario()).tolist() == [8.0]


def test_a_lone_small_request_is_predicted_on_the_event_loop_and_a_batch_on_the_thread():
    threads: list[str] = []

    def model(columns):
        threads.append(threading.current_thread().name)
        return (columns["x"] * 2).astype(np.float32)

    async def scenario():
        batcher = MicroBatcher(model, inline_rows=2, name="t")
        alone = await batcher.submit(cols(1, 2))
        large = await batcher.submit(cols(1, 2, 3))  # past inline_rows: the thread
        together = await asyncio.gather(batcher.submit(cols(5)), batcher.submit(cols(6)))
        return alone, large, together, threading.current_thread().name

    alone, large, together, loop_thread = asyncio.run(scenario())
    assert alone.tolist() == [2.0, 4.0] and large.tolist() == [2.0, 4.0, 6.0]
    assert [t.tolist() for t in together] == [[10.0], [12.0]]
    assert threads[0] == loop_thread
    assert threads[1].startswith("predict-t") and threads[2].startswith("predict-t")  # one batch of two
    assert len(threads) == 3
