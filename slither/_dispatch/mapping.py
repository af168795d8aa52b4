"""``map``: plain values back, one per input, the tiny-work fast path.

The same engine as ``dispatch`` (window, retries, timeouts, crash isolation),
with no ``Item`` built for a result: each batch's list of values is handed
out as the worker sent it. Unless ``max_in_flight`` is given, its window
follows the pool: twice the pool's capacity (the sum of its workers'
depths, which grow while batches are tiny: see ``slither._pool.scheduler``),
at least ``MAP_WINDOW`` (16) batches, and no more than ``WINDOW_BYTES`` of
them beyond that (see ``_Dispatch._size_window``). ``fn`` is applied to each
input, as with ``multiprocessing.Pool.imap``; a failing input fails its
batch, and the batch's policy applies (under ``"skip"`` every input of that
batch is a :class:`Skipped`: use a smaller ``batch_size`` to confine a
failure).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator

import attrs

from slither import _worker
from slither._dispatch.api import _Stream, known_options
from slither._dispatch.batch import _Batch
from slither._dispatch.engine import _Dispatch
from slither._dispatch.options import resolve_fn
from slither.errors import ConfigurationError


@attrs.frozen
class Skipped:
    """What ``map`` yields for an input whose batch failed under ``on_error="skip"``.

    A marker of its own, not ``None`` (a legitimate result) nor the exception
    itself (a function may return exceptions): test ``isinstance(r, Skipped)``.

    Attributes:
        error: the batch's failure (a ``BatchFailure``: ``WorkerError``, ...).
        attempts: how many times the batch ran.
    """

    error: BaseException
    attempts: int = 1


class _MapRun(_Dispatch):
    """A dispatch whose batches come back as lists of values."""

    def _finish_ok(self, b: _Batch, result, pid) -> list:
        if self.executor is not None:
            return [i.payload for i in result]
        super()._finish_telemetry(b, pid)
        return result

    def _failed(self, b: _Batch, exc: BaseException, pid, retries: list) -> list | None:
        out = super()._failed(b, exc, pid, retries)
        if out is None:
            return None
        return [Skipped(exc, i.meta.get("attempts", b.attempts)) if i.meta.get("skipped") else i.payload for i in out]


# map's smallest default window: twice dispatch's fixed one, so that a reply is
# answered with a batch already packed.
MAP_WINDOW = 16


def map_values(fn, iterable: Iterable, *, runtime=None, **opts) -> Iterator:
    """See :meth:`slither.Runtime.map`."""
    if fn is None or not (callable(fn) or isinstance(fn, str)):
        raise ConfigurationError(f"map: fn must be a callable or 'module:function', got {fn!r}")
    if isinstance(fn, str):
        resolve_fn(fn)  # a missing module or function fails here, before any work
    if "executor" in opts:
        raise ConfigurationError("map: executor= is not supported; use dispatch() with an executor")
    follows = "max_in_flight" not in opts
    opts.setdefault("max_in_flight", MAP_WINDOW)
    run = _MapRun(iterable, functools.partial(_worker.apply_each, fn), runtime=runtime, **known_options("map", opts))
    if follows:
        run.window_floor = MAP_WINDOW
    return _Stream(run)
