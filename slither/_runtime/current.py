"""The process-wide default runtime, and which runtime the top-level functions use."""

from __future__ import annotations

import threading

from slither import _registry, worker
from slither._registry import _current
from slither._runtime.runtime import Runtime

_default: Runtime | None = None
_default_lock = threading.Lock()


def start(**kwargs) -> Runtime:
    """Start the process-wide default runtime with ``Runtime(**kwargs)``.

    Raises:
        RuntimeError: a default runtime is already running.
    """
    global _default
    with _default_lock:
        if _default is not None and _default.running:
            raise RuntimeError("the default runtime is already running; call slither.shutdown() first")
        rt = Runtime(**kwargs)
        rt.start()
        _default = rt
        return rt


def shutdown() -> None:
    """Shut down the default runtime, if one is running."""
    global _default
    with _default_lock:
        rt, _default = _default, None
    if rt is not None:
        rt.shutdown()


def runtime() -> Runtime:
    """The runtime the top-level functions use: the one of the innermost
    ``with Runtime(...)`` block of this thread (a context variable, as
    ``decimal.localcontext`` is), else the process-wide default, started with
    defaults on first use.

    Raises:
        RuntimeError: called inside a pool worker with no runtime of its own (a
            batch function calling ``slither.dispatch``): a worker never starts a
            hidden runtime.
    """
    global _default
    current = _current.get()
    if current is not None and current.running:
        return current
    with _default_lock:
        if _default is None or not _default.running:
            info = worker._info
            if info.get("pool") is not None and not info.get("in_process"):
                raise RuntimeError(
                    f"slither's top-level functions were called inside worker {info.get('index')} of pool "
                    f"{info.get('pool')!r} (pid {info.get('pid')}), which has no runtime of its own. A worker does not "
                    "start a hidden one: return the work to the caller and dispatch it there (or pass a pipe stage), "
                    "or start a Runtime explicitly in the worker if you really want a pool of its own."
                )
            _default = Runtime()
            _default.start()
        return _default


_registry._resolver = runtime  # calls without a runtime (Executor, ...) find it here
