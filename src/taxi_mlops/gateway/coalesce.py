"""Concurrent requests share one downstream call: one Feast read, one v2 call per target.

Why: under load the gateway's cost is per call, not per row. A Feast online read of 20 keys
costs about what a read of one does, and so does a v2 request of 20 rows (the model server
batches them into one ``predict``). Each ``/predict`` making its own calls spends the two
cores on HTTP and thread hops; sharing them is what keeps 400 requests/s open loop from
collapsing (README, "Serving performance").

There is no timer: a request is sent at once while fewer than ``max_in_flight`` calls for its
key are running. Past that, requests queue, and the next call takes all of them (up to
``max_items`` items). So the batch size follows the load, and a lightly loaded gateway
does not make a request wait for another's call.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Awaitable, Callable, Hashable


class Coalescer:
    """``await submit(key, items)`` -> one result per item, in order.

    ``call(key, items)`` is awaited with the items of every caller that queued for ``key``;
    it returns one result per item. At most ``max_in_flight`` calls per key run at once: below
    that a request is sent at once, as without sharing; at the limit, requests queue and the
    next call to finish hands its slot to all of them (up to ``max_items`` items). A failed
    call fails every caller that shared it (each then decides for itself: fallback, 503,
    ...). A caller cancelled while queued is dropped. ``max_items`` 1 turns sharing off.
    ``observe(callers)``, if given, is told how many callers each call carried.
    """

    def __init__(self, call: Callable[[Any, list], Awaitable[list]], max_items: int, max_in_flight: int = 1,
                 observe: Callable[[int], None] | None = None):
        if max_items < 1 or max_in_flight < 1:
            raise ValueError(f"max_items and max_in_flight must be at least 1, got {max_items}, {max_in_flight}")
        self._call = call
        self.max_items = max_items
        self.max_in_flight = max_in_flight
        self._queues: dict[Hashable, deque] = {}
        self._in_flight: dict[Hashable, int] = {}
        self._tasks: set[asyncio.Task] = set()
        self._observe = observe or (lambda callers: None)

    async def submit(self, key: Hashable, items: list) -> list:
        if self.max_items == 1 or len(items) >= self.max_items:
            self._observe(1)
            return await self._call(key, items)
        waiter = asyncio.get_running_loop().create_future()
        self._queues.setdefault(key, deque()).append((items, waiter))
        self._pump(key)
        return await waiter

    def _pump(self, key: Hashable) -> None:
        """Start calls for ``key`` while slots are free and requests wait; forget an idle key."""
        queue = self._queues.get(key)
        while queue and self._in_flight.get(key, 0) < self.max_in_flight:
            batch = self._next_batch(queue)
            if not batch:
                break
            self._in_flight[key] = self._in_flight.get(key, 0) + 1
            task = asyncio.get_running_loop().create_task(self._run(key, batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if queue is not None and not queue and not self._in_flight.get(key):
            del self._queues[key]
            self._in_flight.pop(key, None)

    def _next_batch(self, queue: deque) -> list[tuple[list, asyncio.Future]]:
        batch, size = [], 0
        while queue and (not batch or size + len(queue[0][0]) <= self.max_items):
            items, waiter = queue.popleft()
            if waiter.done():  # its caller was cancelled
                continue
            batch.append((items, waiter))
            size += len(items)
        return batch

    async def _run(self, key: Hashable, batch: list[tuple[list, asyncio.Future]]) -> None:
        flat = [item for items, _ in batch for item in items]
        self._observe(len(batch))
        try:
            results = await self._call(key, flat)
            if len(results) != len(flat):
                raise RuntimeError(f"a shared call returned {len(results)} results for {len(flat)} items")
        except asyncio.CancelledError:  # shutdown: the callers are cancelled too
            for _, waiter in batch:
                waiter.cancel()
            raise
        except Exception as exc:
            for _, waiter in batch:
                if not waiter.done():
                    waiter.set_exception(exc)
        else:
            position = 0
            for items, waiter in batch:
                if not waiter.done():
                    waiter.set_result(results[position:position + len(items)])
                position += len(items)
        finally:
            self._in_flight[key] -= 1
            self._pump(key)  # what queued during this call goes now
