"""Executors: what runs a batch instead of a pool (``executor=``)."""

from __future__ import annotations

from collections.abc import Callable

from slither import _protocol, worker
from slither._item import Context, Item
from slither.errors import BadBatchResult, ConfigurationError


class InlineExecutor:
    """Runs ``fn(payloads) -> list`` in the calling process (no isolation, no timeout).

    Useful for debugging and for tests of the batching logic.
    """

    def __init__(self, fn: Callable[[list], list]):
        if not callable(fn):
            raise ConfigurationError(f"InlineExecutor: fn must be callable, got {fn!r}")
        self.fn = fn

    def execute_batch(self, batch: list[Item], ctx: Context) -> list[Item]:
        prev, worker._current = worker._current, ctx
        try:
            results = self.fn([i.payload for i in batch])
        finally:
            worker._current = prev
        problem = _protocol.result_problem(results, len(batch))
        if problem is not None:
            raise BadBatchResult(problem)
        return [i.update_payload(r) for i, r in zip(batch, results)]
