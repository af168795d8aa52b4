"""What batch functions can use inside a worker process.

Inside a batch function (running in a pool worker)::

    def predict(payloads):
        ctx = slither.worker.context()        # the batch's Context
        tier = slither.worker.view("lookup_feature", {"key": "user:42"})
        ...

Each worker is an ordinary OS process (see ``slither._worker``): it keeps
its module state between batches (a model loaded once stays loaded), runs
one batch at a time on its main thread, and its ``logging`` records reach
the caller's ``logging`` under the same logger names.
"""

from __future__ import annotations

from typing import Any

from slither import _store as store
from slither._item import Context

_current: Context | None = None
_info: dict[str, Any] = {}
_state: Any = None


def state() -> Any:
    """What this pool's ``PoolSpec(setup=...)`` returned in this worker (None without one).

    The place for what a worker loads once: a model, a connection.
    """
    return _state


def context() -> Context:
    """The Context of the batch being run. Outside a batch: a default Context."""
    return _current if _current is not None else Context(session_id="slither_none")


def info() -> dict:
    """This worker's pool name, index, pid and how many batches it ran."""
    return dict(_info)


def view(name: str, params: dict | None = None) -> dict:
    """Call a Store view by name from worker code (reads the store directly).

    Raises:
        ViewNotFound: no store of this runtime has a view of that name, or
            it is session-scoped and this batch is not part of a pipe run
            that declares its store.
        ViewTimeout: the handler ran past the view's timeout.
    """
    return store.call_view(name, params or {}, context())


__all__ = ["context", "view", "info", "state"]
