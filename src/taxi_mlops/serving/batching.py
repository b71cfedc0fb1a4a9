"""Adaptive micro-batching: concurrent requests to one model version share one model call.

Profiled under load (issue 11), most of the model server's CPU per request is TensorFlow's
fixed cost per call (argument binding, eager tensor conversion, op dispatch), not the rows:
one call for 8 rows costs about what one call for 1 row does. So requests that arrive while
a call is running wait for it to finish and then go together in the next one.

Adaptive: alone, a request is predicted at once (no added wait); under load, the batch is
whatever queued during the previous call, so the wait is bounded by one call's time, plus
at most ``max_wait_s`` spent gathering (only when the previous call was shared, i.e. under
load) while fewer than ``max_rows`` rows wait.
Calls run one at a time on a thread of their own (TensorFlow releases the GIL, so the event
loop keeps parsing requests meanwhile), except a lone small request (``inline_rows``): it is
predicted on the event loop itself. The hand-over to the thread and back cost 0.17-0.18 ms of
CPU per call in-process (0.82-0.84 against 0.64-0.68 ms for a one-row call), and a lone
request has nobody to let in meanwhile; requests that arrive during it wait in the socket
and form the next batch, which goes to the thread. A batch that fails is retried request by
request, so one bad request fails alone.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Callable

import numpy as np

Columns = dict[str, np.ndarray]


class MicroBatcher:
    def __init__(self, predict: Callable[[Columns], np.ndarray], max_rows: int = 256,
                 max_wait_s: float = 0.0, name: str = "model", inline_rows: int = 0):
        self.predict, self.max_rows, self.max_wait_s = predict, max(1, max_rows), max(0.0, max_wait_s)
        self.inline_rows = max(0, inline_rows)
        self._pending: list = []
        self._drain: asyncio.Task | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"predict-{name}")
        self.calls = 0
        self.requests = 0

    async def submit(self, columns: Columns) -> np.ndarray:
        """The model's answer for ``columns`` (equally long arrays), computed with whatever
        other requests are waiting."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((columns, _rows(columns), future))
        if self._drain is None or self._drain.done():  # a task: a cancelled caller stops nothing
            self._drain = loop.create_task(self._run(loop))
        return await future

    async def _run(self, loop) -> None:
        """Batches until nothing waits (then the task ends: an idle version holds no task)."""
        concurrent_before = False
        while self._pending:
            if concurrent_before and self.max_wait_s and _total(self._pending) < self.max_rows:
                await asyncio.sleep(self.max_wait_s)  # under load only: gather a little more
            batch, rows = [], 0
            while self._pending and (not batch or rows + self._pending[0][1] <= self.max_rows):
                item = self._pending.pop(0)
                batch.append(item)
                rows += item[1]
            concurrent_before = len(batch) > 1 or bool(self._pending)
            await self._answer(loop, batch)

    async def _answer(self, loop, batch: list) -> None:
        self.calls += 1
        self.requests += len(batch)
        if len(batch) == 1:
            columns, rows, future = batch[0]
            await self._settle(loop, future, columns, inline=rows <= self.inline_rows and not self._pending)
            return
        names = batch[0][0].keys()
        joined = {n: np.concatenate([c[n] for c, _, _ in batch]) for n in names}
        try:
            out = await loop.run_in_executor(self._executor, self.predict, joined)
        except Exception:  # one bad request must not fail its neighbours: one call each
            for columns, _, future in batch:
                await self._settle(loop, future, columns)
            return
        start = 0
        for _, n, future in batch:
            if not future.done():  # the caller may have gone (cancelled)
                future.set_result(out[start:start + n])
            start += n

    async def _settle(self, loop, future: asyncio.Future, columns: Columns, inline: bool = False) -> None:
        try:
            if inline:
                result = self.predict(columns)
            else:
                result = await loop.run_in_executor(self._executor, self.predict, columns)
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(result)

    def close(self) -> None:
        self._executor.shutdown(wait=False)


def _total(pending: list) -> int:
    return sum(n for _, n, _ in pending)


def _rows(columns: Columns) -> int:
    return len(next(iter(columns.values()))) if columns else 0
