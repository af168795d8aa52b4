"""The dispatch calls a ``Runtime`` makes (``dispatch``, ``dispatch_stream``,
``call_batch``, ``run_on_workers``): each is given its runtime (or an
executor); the top-level ``slither.dispatch`` finds it (``slither._api``).
"""

from __future__ import annotations

import collections
import difflib
import inspect
import itertools
import queue
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from slither import _protocol, _wire
from slither._dispatch.engine import _Dispatch
from slither._dispatch.items import Columns, ItemList
from slither._dispatch.options import resolve_fn
from slither._dispatch.policies import Retry
from slither._dispatch.strategies import _Single
from slither._item import Item
from slither._pool import Task, new_ref
from slither.errors import DispatchError


def progress_bar(progress, total):
    """A tqdm bar on stderr, or None: of ``total`` items, or with no end shown when it is None."""
    if not progress:
        return None
    try:
        import tqdm  # an optional extra: imported when a bar is asked for
    except ImportError:
        return None
    return tqdm.tqdm(total=total, unit="item", file=sys.stderr, leave=False)


def _batches(run: _Dispatch):
    """``run``'s batches, counted on its progress bar when it has one."""
    bar = progress_bar(run.progress, run.total)
    if bar is None:
        return iter(run)
    return _counted(run, bar)


def _counted(run: _Dispatch, bar):
    try:
        for out in run:
            bar.update(len(out))
            yield out
    finally:
        bar.close()


_OPTIONS = frozenset(inspect.signature(_Dispatch.__init__).parameters) - {"self", "items", "fn"}


def known_options(name: str, opts: dict) -> dict:
    """``opts``, once every key is an option of ``name`` (the error names the caller's function, not ours)."""
    for key in opts:
        if key not in _OPTIONS:
            close = difflib.get_close_matches(key, _OPTIONS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; the options are {sorted(_OPTIONS - {'runtime'})}"
            raise TypeError(f"{name}() got an unexpected keyword argument {key!r}{hint}")
    return opts


def dispatch(items: Iterable, fn=None, **opts) -> Sequence[Item]:
    """The dispatch of :func:`slither.dispatch` (documented there), on ``runtime=``."""
    return collect(collecting(items, fn, **known_options("dispatch", opts)))


class _Collecting(_Dispatch):
    """A dispatch gathered whole: a batch of plain results stays as the worker sent it."""

    def _finish_ok(self, b, result, pid):
        if self.executor is not None or b._items is not None or isinstance(self.on_error, Retry):
            return super()._finish_ok(b, result, pid)  # its Items carry ids of their own, or metadata
        self._finish_telemetry(b, pid)
        return Columns(b.ids, result)


def collecting(items: Iterable, fn=None, **opts) -> _Dispatch:
    """A dispatch for :func:`collect` (options already checked by the caller's name).
    Without ``max_in_flight`` its window follows the pool (twice its capacity, at
    least 8): the caller takes nothing before the end, so a deeper read-ahead costs
    no laziness it could see, and keeps tiny batches' workers from running dry."""
    run = _Collecting(items, fn, **opts)
    if "max_in_flight" not in opts:
        run.window_floor = run.max_in_flight
    return run


def collect(run: _Dispatch) -> ItemList:
    """Every Item of ``run``, in order (``DispatchError.partial_results`` gets what came before)."""
    parts: list = []
    try:
        for batch in _batches(run):
            parts.append(batch)
    except DispatchError as exc:
        exc.partial_results = [*ItemList(parts), *exc.partial_results]
        raise
    return ItemList(parts)


class _Stream:
    """What :func:`dispatch_stream` returns: an iterator of Items, ``close()`` and ``cancel()``.

    Iterating it runs through each batch's Items at C speed (a ``chain`` over
    the batches), where a generator would resume once per item. ``close()``
    stops at once, as closing a generator would: the dispatch ends (batches
    not started are dropped) and no further item is handed out, even to a
    loop already inside a batch. ``close()`` belongs to the iterating thread;
    ``cancel()`` may come from any thread.
    """

    __slots__ = ("_run", "_batches", "_items", "_current")

    def __init__(self, run: _Dispatch):
        self._run = run
        self._batches = _batches(run)
        self._current: list = [iter(())]  # the iterator over the batch being handed out (a holder: no cycle via self)
        self._items = itertools.chain.from_iterable(_noting(self._batches, self._current))

    def __iter__(self) -> Iterator[Item]:
        return self._items  # next() on either takes from the same sequence

    def __next__(self) -> Item:
        return next(self._items)

    def close(self) -> None:
        """Stop the dispatch; nothing more is handed out (from the iterating thread)."""
        self._batches.close()
        collections.deque(self._current[0], maxlen=0)  # the chain's iterator over this batch is spent

    def batches(self) -> Iterator[list]:
        """The same results, a list per batch (what the async front doors hand over)."""
        return self._batches

    def cancel(self) -> None:
        """Stop the dispatch from any thread, killing the workers running its batches
        (they are replaced); the iterating thread's loop ends at its next item."""
        self._run.cancel()
        collections.deque(self._current[0], maxlen=0)

    @property
    def cancelled(self) -> bool:
        return self._run.cancelled


def _noting(batches, holder: list):
    """Each batch as an iterator the chain takes items from, noted in ``holder``."""
    for out in batches:
        holder[0] = it = iter(out)
        yield it


def dispatch_stream(items: Iterable, fn=None, **opts) -> Iterator[Item]:
    """Like :func:`dispatch`, but yields items as they are ready.

    Input is consumed lazily: at most ``max_in_flight`` batches are read
    ahead of what the caller has taken. Options are validated now, before
    the first ``next()``. ``close()`` on the returned iterator stops early.
    """
    return _Stream(_Dispatch(items, fn, **known_options("dispatch_stream", opts)))


def call_batch(batch: Iterable, fn=None, **opts) -> list[Item]:
    """Run one batch as is (no splitting) and return its items."""
    opts.pop("strategy", None)
    items = list(batch)
    if not items:
        return []
    return dispatch(items, fn, strategy=_Single(), **opts)


def run_on_workers(rt, fn, pool: str, timeout: float) -> list[tuple[int, Any]]:
    """``fn()`` once on every connected worker of ``pool``: ``[(pid, value)]``."""
    p = rt.pool(pool)
    fn_key, blob = resolve_fn(fn)
    q: queue.SimpleQueue = queue.SimpleQueue()
    workers = p.live_workers()
    for index, _pid in workers:
        ref = new_ref()
        t = Task(
            fn_key,
            blob,
            _wire.dumps(_protocol.probe(ref, fn_key)),
            ref=ref,
            callback=lambda task, result, error, pid: q.put((pid, result, error)),
        )
        t.pinned = index
        p.submit(t)
    out = []
    deadline = time.monotonic() + timeout
    for _ in workers:
        pid, result, error = p.wait(q, max(0.0, deadline - time.monotonic()))
        if error is not None:
            raise error
        out.append((pid, result[0]))
    return out


__all__ = ["collect", "collecting", "dispatch", "dispatch_stream", "call_batch", "run_on_workers", "progress_bar"]
