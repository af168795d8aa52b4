"""Stage constructors for :class:`slither.Pipe` and the inline handler results.

* ``inline(name, handler=fn)``: ``fn(item, ctx)`` runs in the coordinating
  (caller's) process. Returns a payload, ``Skip(reason)``, ``Fail(reason)``
  (or raises), ``Routed(output, payload)``; with ``cardinality="many"`` a
  list of payloads, each becoming a new item. ``batch_handler=fn(items, ctx)``
  takes a whole chunk and returns one result per item (same forms).
* ``pool(name, fn=...)``: batches go to a worker pool through Dispatch, with
  its options (``pool``, ``batch_size``, ``max_in_flight``, ``timeout``,
  ``affinity``, ``strategy``).
* ``router(name, routes=[(predicate, output), ...])``: the first predicate
  that matches sends the item to that output; others continue.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from slither._dispatch import check_options
from slither.errors import ConfigurationError, PipeDefinitionError

KINDS = ("inline", "pool", "router")


@attrs.frozen
class Skip:
    """Drop this item (it lands in ``.skipped`` with the reason)."""

    reason: Any = None


@attrs.frozen
class Fail:
    """Fail this item; the stage's ``on_error`` policy decides what happens."""

    reason: Any = None


@attrs.frozen
class Routed:
    """Send this item straight to ``output`` with ``payload``."""

    output: str
    payload: Any


@attrs.frozen
class StageSpec:
    """A stage of a pipe. Build it with :func:`inline`, :func:`pool` or :func:`router`."""

    name: str
    kind: str
    handler: Callable | None = None
    batch_handler: Callable | None = None
    cardinality: str = "one"
    fn: Any = None
    options: dict = attrs.field(factory=dict)
    routes: tuple = ()

    def __attrs_post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise PipeDefinitionError(f"stage name must be a non-empty str, got {self.name!r}")
        if self.kind not in KINDS:
            raise PipeDefinitionError(f"stage {self.name!r}: unknown stage kind {self.kind!r}; expected one of {KINDS}")


def inline(
    name: str,
    handler: Callable | None = None,
    *,
    batch_handler: Callable | None = None,
    cardinality: str = "one",
    timeout: float | None = None,
) -> StageSpec:
    """A stage run in the pipe's coordinating process (a long-lived pipe's runner, or the
    caller for ``run_pipe``): ``handler(item, ctx)`` per item, or ``batch_handler(items,
    ctx)`` per chunk.

    ``timeout``: seconds a chunk may take. Past it, a long-lived pipe's runner is killed
    and restarted, and the stage's ``on_error`` policy takes the chunk's inputs (skip,
    route, retry, halt) with :class:`slither.errors.StageTimeout`; ``run_pipe`` and
    ``stream_pipe`` fail with it (a thread cannot be killed).
    """
    if (handler is None) == (batch_handler is None):
        raise PipeDefinitionError(f"stage {name!r}: give exactly one of handler= or batch_handler=")
    if not callable(handler or batch_handler):
        raise PipeDefinitionError(f"stage {name!r}: the handler must be callable")
    if cardinality not in ("one", "many"):
        raise PipeDefinitionError(f"stage {name!r}: cardinality must be 'one' or 'many', got {cardinality!r}")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0):
        raise PipeDefinitionError(f"stage {name!r}: timeout must be a number of seconds > 0, got {timeout!r}")
    options = {} if timeout is None else {"timeout": float(timeout)}
    return StageSpec(name, "inline", handler=handler, batch_handler=batch_handler, cardinality=cardinality, options=options)


_POOL_OPTIONS = {"pool", "batch_size", "max_in_flight", "timeout", "affinity", "strategy"}


def pool(name: str, fn: Any = None, **options) -> StageSpec:
    """A stage whose batches run in worker processes (``fn(payloads) -> list``)."""
    if fn is None:
        raise PipeDefinitionError(f"stage {name!r}: a pool stage needs fn= ('module:function' or a callable)")
    if not (isinstance(fn, str) or callable(fn)):
        raise PipeDefinitionError(f"stage {name!r}: fn must be 'module:function' or a callable, got {fn!r}")
    unknown = set(options) - _POOL_OPTIONS
    if unknown:
        raise PipeDefinitionError(
            f"stage {name!r}: unknown pool stage options {sorted(unknown)}; allowed: {sorted(_POOL_OPTIONS)}"
        )
    try:
        check_options(f"stage {name!r}", **{"batch_size": 32, "max_in_flight": 4, **options})
    except ConfigurationError as exc:
        raise PipeDefinitionError(str(exc)) from None
    return StageSpec(name, "pool", fn=fn, options=dict(options))


def router(name: str, routes) -> StageSpec:
    """A stage sending each item to the output of the first matching ``(predicate, output)``."""
    routes = tuple(routes)
    for r in routes:
        if not (isinstance(r, tuple) and len(r) == 2 and callable(r[0]) and isinstance(r[1], str)):
            raise PipeDefinitionError(f"stage {name!r}: routes must be (predicate, output_name) pairs, got {r!r}")
    return StageSpec(name, "router", routes=routes)


__all__ = ["inline", "pool", "router", "Skip", "Fail", "Routed", "StageSpec"]
