"""``slither.Executor``: a ``concurrent.futures.Executor`` over a Slither pool.

Each ``submit`` is one task of one call, sent to the pool as dispatch sends a
batch (no thread of its own: the pool's reader completes the future). What
changes against ``ProcessPoolExecutor``:

* a worker that dies fails only the future of the call it ran
  (``WorkerCrashed``), never the executor (no ``BrokenProcessPool``); the
  supervisor replaces the worker;
* ``Future.cancel()`` also works on a call that is running: the worker
  running it is killed and replaced (only that call is lost). A call already
  sent to a worker, waiting behind the one it runs, is skipped there;
* ``timeout=`` bounds every call (the late worker is killed: ``BatchTimeout``);
* lambdas and closures work (cloudpickle).

A call that raises fails its future with that exception (its ``__cause__`` is
the worker's traceback, a ``RemoteTraceback``), as ``ProcessPoolExecutor`` does.

A future never reports ``running()``: it is pending until its result comes.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import pickle
import threading

from slither import _protocol, _registry, _wire, _worker
from slither._dispatch import check_options, map_values
from slither._dispatch.options import resolve_fn
from slither._item import Context
from slither._pool import Task, new_ref
from slither.errors import ConfigurationError, RemoteTraceback


class _Future(cf.Future):
    """A future whose ``cancel()`` also stops a running call (see the module docstring)."""

    def __init__(self, pool):
        super().__init__()
        self._pool = pool
        self._settle = threading.Lock()  # cancel() and the completion never interleave

    def cancel(self) -> bool:
        with self._settle:
            if not super().cancel():
                return False
            self.set_running_or_notify_cancel()  # CANCELLED_AND_NOTIFIED: wait() and as_completed() see it done
        # Queued: dropped. Running: its worker is killed. Already in a worker's socket behind
        # another call: it still runs, and its result is dropped.
        self._pool.cancel(self, kill_running=True)
        return True

    def _start_settling(self) -> bool:
        """False when it was cancelled (the result is dropped); else it is now running."""
        with self._settle:
            return not self.cancelled() and self.set_running_or_notify_cancel()


class Executor(cf.Executor):
    """Run calls on a Slither pool as a ``concurrent.futures.Executor``.

    Args:
        pool: the pool's name.
        runtime: a running :class:`slither.Runtime`; default the one the top-level
            functions use (the innermost ``with`` block's, else the default runtime).
        timeout: seconds any one call may run (None: no limit).

    Works with ``concurrent.futures.wait`` / ``as_completed`` and with
    ``loop.run_in_executor``. ``shutdown()`` does not stop the runtime.
    """

    def __init__(self, pool: str = "default", runtime=None, *, timeout: float | None = None):
        check_options("Executor", pool=pool, timeout=timeout)
        self._rt = runtime if runtime is not None else _registry.current_runtime()
        self._pool_name = pool
        self._pool = self._rt.pool(pool)
        self._timeout = timeout
        self._ctx_blob = pickle.dumps(Context(), protocol=5)
        self._fns: dict = {}  # fn -> (fn_key, blob) of its call wrapper, pickled once
        self._lock = threading.Lock()
        self._pending: set[_Future] = set()
        self._shut = False

    def _wrapper(self, fn):
        try:
            return self._fns[fn]
        except (KeyError, TypeError):  # TypeError: an unhashable callable
            pass
        key_blob = resolve_fn(functools.partial(_worker.call_each, fn))
        try:
            if len(self._fns) >= 256:
                self._fns.clear()
            self._fns[fn] = key_blob
        except TypeError:
            pass
        return key_blob

    def submit(self, fn, /, *args, **kwargs) -> cf.Future:
        """Schedule ``fn(*args, **kwargs)`` in a worker; its :class:`concurrent.futures.Future`.

        Raises:
            RuntimeError: the executor was shut down.
            SerializationError: the arguments cannot be pickled.
        """
        if not callable(fn) and not isinstance(fn, str):
            raise ConfigurationError(f"Executor.submit: fn must be callable or 'module:function', got {fn!r}")
        with self._lock:
            if self._shut:
                raise RuntimeError("cannot schedule new futures after shutdown")
            fut = _Future(self._pool)
            self._pending.add(fut)
        fn_key, blob = self._wrapper(fn)
        ref = new_ref()
        chunks = _wire.dumps(_protocol.batch(ref, fn_key, [(args, kwargs)], self._ctx_blob))
        self._pool.submit(Task(fn_key, blob, chunks, ref=ref, timeout=self._timeout, callback=self._done, owner=fut, meta=fut))
        return fut

    def _done(self, task, result, error, pid) -> None:
        fut = task.meta
        with self._lock:
            self._pending.discard(fut)
        if not fut._start_settling():
            return  # cancelled meanwhile
        if error is not None:
            fut.set_exception(error)  # the worker died (WorkerCrashed), the call ran late (BatchTimeout), ...
            return
        value = result[0]
        if isinstance(value, _worker.Raised):  # the call raised: its own exception, the worker's frames as cause
            value.exc.__cause__ = RemoteTraceback(value.traceback)
            fut.set_exception(value.exc)
        else:
            fut.set_result(value)

    def map(self, fn, *iterables, timeout: float | None = None, chunksize: int = 1):
        """``fn`` over the zipped iterables, results in order, ``chunksize`` calls a batch.

        Without ``timeout`` it is :meth:`slither.Runtime.map` (the input read lazily);
        with one, every call is submitted at once and each result awaited until
        ``timeout`` seconds after this call, as ``concurrent.futures`` does.
        """
        if timeout is not None:
            return super().map(fn, *iterables, timeout=timeout, chunksize=chunksize)
        star = functools.partial(_worker.call_star, fn)
        return map_values(
            star, zip(*iterables), runtime=self._rt, pool=self._pool_name, batch_size=chunksize, timeout=self._timeout
        )

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Refuse new calls; with ``cancel_futures`` cancel those not finished (running
        ones included: their workers are killed); with ``wait``, wait for the rest."""
        with self._lock:
            self._shut = True
            pending = list(self._pending)
        if cancel_futures:
            for fut in pending:
                fut.cancel()
        if wait:
            cf.wait(pending)


__all__ = ["Executor"]
