"""The top-level functions (``slither.dispatch``, ``slither.run_pipe``, ...): the same
calls as the ``Runtime`` methods, on the runtime of the innermost ``with
Runtime(...)`` block, else on the process-wide default (see
:func:`slither._runtime.runtime`)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

from slither import _dispatch, _pipe
from slither._item import Item
from slither._runtime import runtime


def _runtime_for(opts: dict):
    rt = opts.pop("runtime", None)
    if rt is None and opts.get("executor") is None:  # an executor runs here: no runtime needed
        rt = runtime()
    return rt


def dispatch(items: Iterable, fn=None, **opts) -> Sequence[Item]:
    """Run ``fn`` over ``items`` in batches on a worker pool; return every item (an
    ``ItemList``: a read-only sequence whose Items are built when read).

    Args:
        items: payloads or :class:`Item` s (payloads are wrapped).
        fn: ``"module:function"`` (imported in the worker) or a callable
            (sent with cloudpickle). ``fn(payloads: list) -> list`` of the
            same length.
        pool, strategy, batch_size, max_in_flight, ordering, on_error,
        timeout, context, affinity, executor, progress: see ``docs/dispatch.md``.

    Raises:
        ConfigurationError: a bad option (before any work starts).
        DispatchError: a batch failed under ``on_error="halt"``.
        PoolDown: the pool went down (restart intensity exceeded).

    Runs in the calling thread; batches run in worker processes.
    """
    return _dispatch.dispatch(items, fn, runtime=_runtime_for(opts), **opts)


def dispatch_stream(items: Iterable, fn=None, **opts) -> Iterator[Item]:
    """Like :func:`dispatch`, but yields items as they are ready.

    Input is consumed lazily: at most ``max_in_flight`` batches are read
    ahead of what the caller has taken. Options are validated now, before
    the first ``next()``. The iterator's ``close()`` (from the iterating
    thread) and ``cancel()`` (from any thread) stop it early.
    """
    return _dispatch.dispatch_stream(items, fn, runtime=_runtime_for(opts), **opts)


def call_batch(batch: Iterable, fn=None, **opts) -> list[Item]:
    """Run one batch as is (no splitting) and return its items."""
    return _dispatch.call_batch(batch, fn, runtime=_runtime_for(opts), **opts)


def map(fn, iterable: Iterable, **opts) -> Iterator:  # noqa: A001 - the name users know
    """``fn`` on every input, in worker processes; an iterator of plain results, one
    per input, in input order (``ordering="as_completed"``: as they finish), like
    ``multiprocessing.Pool.imap``. The fast path for tiny work: no ``Item`` is built.

    Options as for :func:`dispatch` (``batch_size`` (or ``"auto"``), ``max_in_flight``
    (by default twice the pool's capacity, at least 16: the tiny-work path keeps more
    batches on their way), ``ordering``, ``on_error``, ``timeout``, ``pool``, ...). A failing input fails its
    batch; under ``on_error="skip"`` each input of that batch yields a
    :class:`slither.Skipped`. The iterator has ``close()`` and ``cancel()`` (from any thread).
    """
    return _dispatch.map_values(fn, iterable, runtime=_runtime_for(opts), **opts)


def run_pipe(pipe, items: Iterable, **opts):
    """Run ``pipe`` over ``items`` to the end; see :meth:`Runtime.run_pipe`."""
    return _pipe.run_pipe(pipe, items, runtime=_runtime_for(opts), **opts)


def stream_pipe(pipe, items: Iterable, **opts):
    """Yield ``(output, item)`` as they leave ``pipe``; see :meth:`Runtime.stream_pipe`."""
    return _pipe.stream_pipe(pipe, items, runtime=_runtime_for(opts), **opts)


def start_pipe(pipe, **opts):
    """Start a long-lived, supervised pipe; see :meth:`Runtime.start_pipe`."""
    return _pipe.start_pipe(pipe, runtime=_runtime_for(opts), **opts)


__all__ = ["dispatch", "dispatch_stream", "call_batch", "map", "run_pipe", "stream_pipe", "start_pipe"]
