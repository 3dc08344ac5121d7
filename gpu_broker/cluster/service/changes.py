"""The cluster's thread: changes run one at a time, in arrival order, and are saved in batches (group commit).

Every change to the cluster (a kernel placed, a cell granted, a host lost) runs here, so the scheduling core and the
host agents never see two changes interleave. What a change did must be on disk before its caller hears of it: a
restarted service must not forget a kernel whose start it confirmed. Saving after each change cost one SQLite
transaction per request; under load, several changes wait here at once, so they run back to back and share one
save, and their callers are answered after it. An idle service saves after every change, as before.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any

_STOP = None  # put on the queue by :meth:`ChangeThread.shutdown`


class ChangeThread:
    """Runs ``fn(*args)`` for :meth:`submit` on one thread; calls ``save`` after each batch, then answers."""

    def __init__(self, loop: asyncio.AbstractEventLoop, save: Callable[[], None]) -> None:
        self._loop = loop
        self._save = save
        self._queue: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._serve, name="cluster", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Queue a change; the future holds its result (or its exception) once the batch it ran in is saved."""
        future: asyncio.Future[Any] = self._loop.create_future()
        self._queue.put((fn, args, future))
        return future

    def shutdown(self) -> None:
        """Run what is queued, save, and end the thread."""
        self._queue.put(_STOP)
        self._thread.join()

    def _serve(self) -> None:
        while True:
            batch, stop = self._take_batch()
            if batch:
                self._run(batch)
            if stop:
                return

    def _take_batch(self) -> tuple[list[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]], bool]:
        """The next change (waiting for it), and every one queued behind it; whether shutdown was asked."""
        first = self._queue.get()
        if first is _STOP:
            return [], True
        batch = [first]
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return batch, False
            if item is _STOP:
                return batch, True
            batch.append(item)

    def _run(self, batch: list[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        for fn, args, future in batch:
            try:
                outcomes.append((future, fn(*args), None))
            except Exception as err:  # the change's refusal, for its caller
                outcomes.append((future, None, err))
        try:
            self._save()  # also after a change that failed half-way: what it did change is kept
        except Exception as err:
            outcomes = [(future, None, failed or err) for future, _, failed in outcomes]
        for future, result, failed in outcomes:
            self._loop.call_soon_threadsafe(_settle, future, result, failed)


def _settle(future: asyncio.Future[Any], result: Any, failed: BaseException | None) -> None:
    if future.cancelled():  # its caller went away (the request's connection closed)
        return
    if failed is not None:
        future.set_exception(failed)
    else:
        future.set_result(result)
