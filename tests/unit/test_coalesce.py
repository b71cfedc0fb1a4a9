"""The coalescer: concurrent submits share one call, lone ones go at once, failures reach
every sharer, cancelled callers are dropped."""

from __future__ import annotations

import asyncio

import pytest

from taxi_mlops.gateway.coalesce import Coalescer


class Recorder:
    """A downstream call that records what each call carried and can be held open."""

    def __init__(self, fail_on: set | None = None):
        self.calls: list[tuple] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_on = fail_on or set()

    async def __call__(self, key, items):
        self.calls.append((key, list(items)))
        await self.gate.wait()
        if self.fail_on & set(items):
            raise ConnectionError(f"refused for {sorted(self.fail_on & set(items))}")
        return [f"{key}:{item}" for item in items]


async def settle(turns: int = 3) -> None:
    """Let the tasks just submitted run until each is queued or in flight."""
    for _ in range(turns):
        await asyncio.sleep(0)


async def held_first_call(shared: Coalescer, call: Recorder, key, items) -> asyncio.Future:
    """A first submit whose call is in flight, held at the closed gate."""
    call.gate.clear()
    first = asyncio.ensure_future(shared.submit(key, items))
    while not call.calls:
        await asyncio.sleep(0)
    return first


def test_a_lone_request_is_one_call_of_its_own():
    async def main():
        call = Recorder()
        shared = Coalescer(call, 32)
        assert await shared.submit("a", [1]) == ["a:1"]
        assert await shared.submit("a", [2, 3]) == ["a:2", "a:3"]
        return call.calls

    assert asyncio.run(main()) == [("a", [1]), ("a", [2, 3])]


def test_requests_queued_during_a_call_share_the_next_and_each_gets_its_own_results():
    async def main():
        call, callers = Recorder(), []
        shared = Coalescer(call, 32, observe=callers.append)
        first = await held_first_call(shared, call, "a", [0])
        rest = [asyncio.ensure_future(shared.submit("a", [i, i + 100])) for i in range(1, 6)]
        other = asyncio.ensure_future(shared.submit("b", [7]))  # another key: its own call
        await settle(5)
        call.gate.set()
        return await first, await asyncio.gather(*rest), await other, call.calls, callers

    first, rest, other, calls, callers = asyncio.run(main())
    assert first == ["a:0"] and other == ["b:7"]
    assert rest == [[f"a:{i}", f"a:{i + 100}"] for i in range(1, 6)]
    assert [c for c in calls if c[0] == "a"] == [
        ("a", [0]), ("a", [1, 101, 2, 102, 3, 103, 4, 104, 5, 105])]
    assert callers == [1, 1, 5] and sum(len(items) for _, items in calls) == 12


def test_no_call_carries_more_than_max_items():
    async def main():
        call = Recorder()
        shared = Coalescer(call, 4)
        call.gate.clear()
        futures = [asyncio.ensure_future(shared.submit("k", [i])) for i in range(10)]
        await settle()
        call.gate.set()
        results = await asyncio.gather(*futures)
        return results, call.calls

    results, calls = asyncio.run(main())
    assert results == [[f"k:{i}"] for i in range(10)]
    # the first went at once, alone; the rest queued behind it
    assert [len(items) for _, items in calls] == [1, 4, 4, 1]


def test_a_failed_call_fails_every_request_it_carried_and_no_other():
    async def main():
        call = Recorder(fail_on={2})
        shared = Coalescer(call, 2)
        call.gate.clear()
        futures = [asyncio.ensure_future(shared.submit("k", [i])) for i in range(1, 5)]
        await settle()
        call.gate.set()
        return await asyncio.gather(*futures, return_exceptions=True)

    one, two, three, four = asyncio.run(main())  # calls: [1], [2, 3], [4]
    assert isinstance(two, ConnectionError) and isinstance(three, ConnectionError)
    assert "refused for [2]" in str(three)
    assert one == ["k:1"] and four == ["k:4"]


def test_a_cancelled_caller_is_dropped_and_the_others_still_answered():
    async def main():
        call = Recorder()
        shared = Coalescer(call, 32)
        first = await held_first_call(shared, call, "k", [0])
        gone = asyncio.ensure_future(shared.submit("k", [1]))
        kept = asyncio.ensure_future(shared.submit("k", [2]))
        await asyncio.sleep(0)
        gone.cancel()
        await asyncio.sleep(0)
        call.gate.set()
        with pytest.raises(asyncio.CancelledError):
            await gone
        return await first, await kept, call.calls, shared

    first, kept, calls, shared = asyncio.run(main())
    assert first == ["k:0"] and kept == ["k:2"]
    assert calls == [("k", [0]), ("k", [2])]
    assert not shared._queues and not shared._in_flight and not shared._tasks  # nothing left behind


def test_max_items_one_makes_every_caller_call_on_its_own():
    async def main():
        call = Recorder()
        shared = Coalescer(call, 1)
        call.gate.clear()
        futures = [asyncio.ensure_future(shared.submit("k", [i])) for i in range(3)]
        await asyncio.sleep(0)
        call.gate.set()
        return await asyncio.gather(*futures), call.calls

    results, calls = asyncio.run(main())
    assert results == [["k:0"], ["k:1"], ["k:2"]]
    assert calls == [("k", [0]), ("k", [1]), ("k", [2])]
    with pytest.raises(ValueError, match="at least 1"):
        Coalescer(Recorder(), 0)


def test_below_max_in_flight_a_request_goes_at_once_and_past_it_requests_share_the_next_call():
    async def main():
        call = Recorder()
        shared = Coalescer(call, 32, max_in_flight=2)
        call.gate.clear()
        first = asyncio.ensure_future(shared.submit("k", [1]))
        second = asyncio.ensure_future(shared.submit("k", [2]))  # a slot is free: its own call
        await settle()
        assert call.calls == [("k", [1]), ("k", [2])]
        queued = [asyncio.ensure_future(shared.submit("k", [i])) for i in (3, 4, 5)]
        await settle()
        assert len(call.calls) == 2  # both slots busy: they wait
        call.gate.set()
        return await first, await second, await asyncio.gather(*queued), call.calls

    first, second, queued, calls = asyncio.run(main())
    assert (first, second, queued) == (["k:1"], ["k:2"], [["k:3"], ["k:4"], ["k:5"]])
    assert calls[2:] == [("k", [3, 4, 5])]
