"""Concurrent requests share one downstream call: one Feast read, one v2 call per target.

Why: under load the gateway's cost is per call, not per row. A Feast online read of 20 keys
costs about what a read of one does, and so does a v2 request of 20 rows (the model server
batches them into one ``predict``). Each ``/predict`` making its own calls spends the two
cores on HTTP and thread hops; sharing them is what keeps 400 requests/s open loop from
collapsing (README, "Serving performance").

There is no timer: a request that arrives alone is sent at once. While a call is in flight,
requests for the same key queue; the next call takes all of them (up to ``max_items``
items). So the batch size follows the load and idle latency is unchanged.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Awaitable, Callable, Hashable


class Coalescer:
    """``await submit(key, items)`` -> one result per item, in order.

    ``call(key, items)`` is awaited with the items of every caller that queued for ``key``
    while the previous call ran; it returns one result per item. A failed call fails every
    caller that shared it (each then decides for itself: fallback, 503, ...). A caller that
    is cancelled while queued is dropped from the next call. ``max_items`` 1 turns sharing
    off: each caller makes its own call.
    """

    def __init__(self, call: Callable[[Any, list], Awaitable[list]], max_items: int):
        if max_items < 1:
            raise ValueError(f"max_items must be at least 1, got {max_items}")
        self._call = call
        self.max_items = max_items
        self._queues: dict[Hashable, deque] = {}
        self._drains: dict[Hashable, asyncio.Task] = {}
        self.calls = 0  # calls made, and items carried: their ratio is the sharing achieved
        self.items = 0

    async def submit(self, key: Hashable, items: list) -> list:
        if self.max_items == 1 or len(items) >= self.max_items:
            self.calls += 1
            self.items += len(items)
            return await self._call(key, items)
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self._queues.setdefault(key, deque()).append((items, waiter))
        if key not in self._drains:
            self._drains[key] = loop.create_task(self._drain(key))
        return await waiter

    def _next_batch(self, queue: deque) -> list[tuple[list, asyncio.Future]]:
        batch, size = [], 0
        while queue and (not batch or size + len(queue[0][0]) <= self.max_items):
            items, waiter = queue.popleft()
            if waiter.done():  # its caller was cancelled
                continue
            batch.append((items, waiter))
            size += len(items)
        return batch

    async def _drain(self, key: Hashable) -> None:
        """Calls for ``key`` until its queue is empty; the queue is read between calls only,
        so whatever arrived during a call goes in the next one."""
        queue = self._queues[key]
        try:
            while queue:
                batch = self._next_batch(queue)
                if not batch:
                    continue
                flat = [item for items, _ in batch for item in items]
                self.calls += 1
                self.items += len(flat)
                try:
                    results = await self._call(key, flat)
                except asyncio.CancelledError:
                    for _, waiter in batch:
                        waiter.cancel()
                    raise
                except Exception as exc:
                    for _, waiter in batch:
                        if not waiter.done():
                            waiter.set_exception(exc)
                    continue
                if len(results) != len(flat):
                    error = RuntimeError(f"a shared call returned {len(results)} results for {len(flat)} items")
                    for _, waiter in batch:
                        if not waiter.done():
                            waiter.set_exception(error)
                    continue
                position = 0
                for items, waiter in batch:
                    if not waiter.done():
                        waiter.set_result(results[position:position + len(items)])
                    position += len(items)
        finally:
            for _, waiter in queue:  # only when the drain itself was cancelled (shutdown)
                if not waiter.done():
                    waiter.cancel()
            del self._queues[key]
            del self._drains[key]
