"""The runtimes of this process: those left running (shut down at exit), and the one
of the innermost ``with Runtime(...)`` block (a context variable)."""

from __future__ import annotations

import atexit
import contextvars
import weakref

_live: weakref.WeakSet = weakref.WeakSet()
_current: contextvars.ContextVar = contextvars.ContextVar("slither_runtime", default=None)


@atexit.register
def _shutdown_all() -> None:
    for rt in list(_live):
        try:
            rt.shutdown()
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            pass
