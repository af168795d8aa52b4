"""asyncio front doors: a blocking call or iteration run on a thread, awaited from the loop.

The event loop never blocks: dispatches run as they do for a script (their
loop on a thread of their own, see ``slither._dispatch.engine``), and hand
results to the loop with ``call_soon_threadsafe``. An iteration hands over
whole batches, at most ``AHEAD`` ahead of what the coroutine took (the
dispatch's own window bounds the rest). Cancelling the awaiting task calls
``cancel`` (for a dispatch: its queued batches are dropped and the workers
running its batches are killed, as Ctrl-C does).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterable

AHEAD = 2  # batches a thread may hand to the loop before the coroutine takes them
_END = object()


async def call(fn: Callable, *args, cancel: Callable[[], None] | None = None):
    """``await`` ``fn(*args)`` run on a thread; ``cancel()`` when the awaiting task is cancelled."""
    loop = asyncio.get_running_loop()
    fut = loop.run_in_executor(None, fn, *args)
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        if cancel is not None:
            cancel()
        raise


async def iterate(batches: Iterable[list], cancel: Callable[[], None] | None = None) -> AsyncIterator:
    """Each item of each batch of ``batches`` (iterated on a thread), as an async iterator.

    Leaving early (``break``, ``aclose()``, the task cancelled) calls ``cancel()``.
    """
    loop = asyncio.get_running_loop()
    handed: asyncio.Queue = asyncio.Queue()
    room = threading.Semaphore(AHEAD)
    stop = threading.Event()

    def pump():
        try:
            for batch in batches:
                room.acquire()
                if stop.is_set():
                    return
                loop.call_soon_threadsafe(handed.put_nowait, batch)
            loop.call_soon_threadsafe(handed.put_nowait, _END)
        except BaseException as exc:  # noqa: BLE001 - raised in the coroutine instead
            if not stop.is_set():
                loop.call_soon_threadsafe(handed.put_nowait, exc)

    thread = threading.Thread(target=pump, name="slither-aio", daemon=True)
    thread.start()
    finished = False
    try:
        while True:
            batch = await handed.get()
            if batch is _END:
                finished = True
                return
            if isinstance(batch, BaseException):
                finished = True
                raise batch
            room.release()
            for item in batch:
                yield item
    finally:
        if not finished:
            stop.set()
            room.release()  # a pump waiting for room sees the stop
            if cancel is not None:
                cancel()
