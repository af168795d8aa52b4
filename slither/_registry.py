"""The runtimes of this process: those left running (shut down at exit), the one of
the innermost ``with Runtime(...)`` block (a context variable), and how to find the
runtime a call without one should use (``slither._runtime.current`` installs it)."""

from __future__ import annotations

import atexit
import contextvars
import multiprocessing
import multiprocessing.util
import os
import weakref
from collections.abc import Callable

_live: weakref.WeakSet = weakref.WeakSet()
_current: contextvars.ContextVar = contextvars.ContextVar("slither_runtime", default=None)


@atexit.register
def _shutdown_all() -> None:
    for rt in list(_live):
        try:
            rt.shutdown()
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            pass


_finalizing: set[int] = set()  # pids in which _shutdown_all is registered with multiprocessing


def shut_down_at_exit() -> None:
    """Also shut this process's runtimes down when it is a ``multiprocessing`` child (a
    Thespian actor process, say), which ends through ``os._exit`` after its finalizers
    and never runs ``atexit``: a runtime started inside an actor then stops with it."""
    pid = os.getpid()
    if pid not in _finalizing and multiprocessing.parent_process() is not None:
        _finalizing.add(pid)
        multiprocessing.util.Finalize(None, _shutdown_all, exitpriority=100)


_resolver: Callable | None = None


def current_runtime():
    """The runtime of the innermost with-block, else the default one (see
    ``slither._runtime.current.runtime``)."""
    if _resolver is None:  # pragma: no cover - installed when slither is imported
        raise RuntimeError("slither._runtime is not imported")
    return _resolver()
