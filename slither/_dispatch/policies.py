"""Error policies: what a failed batch becomes (``"halt"``, ``"skip"``, ``Retry``, ``Route``)."""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from typing import Any

import attrs

from slither._item import Item
from slither.errors import ConfigurationError, DispatchError, PoolDown


@attrs.frozen
class Route:
    """On failure, replace each item of the batch with ``fn(item, reason) -> Item``."""

    fn: Callable[[Item, BaseException], Item]

    def __attrs_post_init__(self):
        if not callable(self.fn) and not isinstance(self.fn, str):
            raise ConfigurationError(f"Route: expected a callable (or, in a pipe, an output name), got {self.fn!r}")


def _check_then(inst, attr, value):
    if value not in ("halt", "skip") and not isinstance(value, Route):
        raise ConfigurationError(f"Retry.then must be 'halt', 'skip' or a Route, got {value!r}")


@attrs.frozen
class Retry:
    """Re-dispatch a failed batch, possibly to another worker.

    Attempt ``n`` (from 2) waits ``min(max_backoff, backoff * 2 ** (n - 2))``
    seconds. After ``max_attempts``, or for a failure retrying cannot fix
    (bad result, serialization), ``then`` applies. Items carry
    ``meta["attempts"]``.
    """

    max_attempts: int = 3
    backoff: float = 0.1
    max_backoff: float = 5.0
    then: Any = attrs.field(default="halt", validator=_check_then)

    def __attrs_post_init__(self):
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ConfigurationError(f"Retry: max_attempts must be an int >= 1, got {self.max_attempts!r}")
        if self.backoff < 0 or self.max_backoff < 0:
            raise ConfigurationError("Retry: backoff and max_backoff must be >= 0")

    def delay(self, attempt: int) -> float:
        return min(self.max_backoff, self.backoff * (2 ** max(0, attempt - 1)))


def check_policy(policy, where: str = "on_error") -> None:
    if policy in ("halt", "skip") or isinstance(policy, (Retry, Route)):
        return
    raise ConfigurationError(f"{where}: expected 'halt', 'skip', Retry(...) or Route(...), got {policy!r}")


def apply_policy(policy, b, exc: BaseException, retries: list) -> list[Item] | None:
    """What failed batch ``b`` becomes: replacement items, or None when it was put on
    ``retries`` (a heap of (when, seq, batch)). Raises ``DispatchError`` for halt, and
    ``PoolDown`` as it is: no policy serves a pool that is gone."""
    if isinstance(exc, PoolDown):
        raise exc
    if isinstance(policy, Retry):
        if getattr(exc, "retryable", True) and b.attempts < policy.max_attempts:
            heapq.heappush(retries, (time.monotonic() + policy.delay(b.attempts), b.seq, b))
            return None
        policy = policy.then
    if policy == "skip":
        return [i.put_meta({"skipped": True, "error": exc, "attempts": b.attempts}) for i in b.items]
    if isinstance(policy, Route):
        out = []
        for i in b.items:
            r = policy.fn(i, exc)
            if not isinstance(r, Item):
                raise ConfigurationError(f"Route fn returned {type(r).__name__} for item {i.id!r}; expected an Item")
            out.append(r)
        return out
    raise DispatchError(exc, batch_ref=b.seq, partial_results=None) from exc
