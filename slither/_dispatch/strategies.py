"""Batching strategies: how a dispatch cuts its input into batches.

``FixedBatch`` and ``WeightedBatch`` stream (they read the input as batches
are taken); ``KeyPartition`` must read it all to group it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, runtime_checkable

import attrs

from slither._item import Item
from slither.errors import ConfigurationError


@runtime_checkable
class Strategy(Protocol):
    """Splits an iterable of Items into batches (lists of Items)."""

    def batches(self, items: Iterable[Item]) -> Iterator[list[Item]]: ...


def _check_positive(owner: str, name: str, value) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise ConfigurationError(f"{owner}: {name} must be a positive number, got {value!r}")


@attrs.frozen
class FixedBatch:
    """Consecutive chunks of ``size`` items (the last may be shorter). Streams."""

    size: int = 64

    def __attrs_post_init__(self):
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 1:
            raise ConfigurationError(f"FixedBatch: size must be a positive int, got {self.size!r}")

    def batches(self, items: Iterable[Item]) -> Iterator[list[Item]]:
        it = iter(items)
        while True:
            chunk = list(itertools.islice(it, self.size))
            if not chunk:
                return
            yield chunk


@attrs.frozen
class WeightedBatch:
    """Batches whose summed ``weight_fn(item)`` stays within ``max_weight``.

    An item heavier than ``max_weight`` travels alone. Streams.
    """

    max_weight: float
    weight_fn: Callable[[Item], float] = attrs.field(default=lambda item: 1)

    def __attrs_post_init__(self):
        _check_positive("WeightedBatch", "max_weight", self.max_weight)
        if not callable(self.weight_fn):
            raise ConfigurationError(f"WeightedBatch: weight_fn must be callable, got {self.weight_fn!r}")

    def batches(self, items: Iterable[Item]) -> Iterator[list[Item]]:
        batch: list[Item] = []
        total = 0.0
        for item in items:
            w = self.weight_fn(item)
            if not isinstance(w, (int, float)) or w < 0:
                raise ConfigurationError(f"WeightedBatch: weight_fn returned {w!r} for item {item.id!r}; expected a number >= 0")
            if batch and total + w > self.max_weight:
                yield batch
                batch, total = [], 0.0
            batch.append(item)
            total += w
        if batch:
            yield batch


@attrs.frozen
class KeyPartition:
    """One batch per distinct ``key_fn(item)``, in key order.

    Reads the whole input first (it must, to group it). Keys that cannot be
    ordered keep their first-seen order.
    """

    key_fn: Callable[[Item], Any]

    def __attrs_post_init__(self):
        if not callable(self.key_fn):
            raise ConfigurationError(f"KeyPartition: key_fn must be callable, got {self.key_fn!r}")

    def batches(self, items: Iterable[Item]) -> Iterator[list[Item]]:
        groups: dict[Any, list[Item]] = {}
        for item in items:
            groups.setdefault(self.key_fn(item), []).append(item)
        keys = list(groups)
        try:
            keys.sort()
        except TypeError:
            pass
        for k in keys:
            yield groups[k]


class _Single:
    """The strategy of ``call_batch``: the whole input as one batch."""

    def batches(self, items):
        batch = list(items)
        if batch:
            yield batch
