"""What ``dispatch()`` returns: its Items, in order, built when they are read.

A dispatch of tiny work gathers a million results; one ``Item`` each, kept in a
list, costs the caller ~150 B a result and makes Python's garbage collector walk
every one of them at each full collection while the dispatch runs. Here each
batch's results stay as the worker sent them (a range of ids and the list of
values, neither of which the collector walks item by item) and an Item is built
when it is read: by iteration, indexing or comparison. Batches whose Items carry
metadata (a policy's, an executor's) are kept as their Items.

An ``ItemList`` is a read-only ``Sequence``: ``len``, indexing (negative too),
slices (a ``list``), iteration, ``==`` with a list of Items, ``+`` (a ``list``).
Each read of an index builds a new Item equal to the last one.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterator, Sequence

from slither._item import Item, _Fresh


class Columns:
    """One batch's results as the worker sent them: their ids and values."""

    __slots__ = ("ids", "values")

    def __init__(self, ids: range, values: list):
        self.ids = ids
        self.values = values

    def __len__(self) -> int:
        return len(self.values)

    def __iter__(self) -> Iterator[Item]:
        return map(_Fresh, self.ids, self.values)

    def item(self, k: int) -> Item:
        return _Fresh(self.ids[k], self.values[k])


class ItemList(Sequence):
    """The Items of one dispatch, in its order (see the module docstring)."""

    __slots__ = ("_parts", "_starts", "_len")

    def __init__(self, parts: list):
        self._parts = parts  # lists of Items, or Columns
        self._starts = list(itertools.accumulate((len(p) for p in parts), initial=0))
        self._len = self._starts[-1]

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[Item]:
        return itertools.chain.from_iterable(self._parts)

    def __getitem__(self, k):
        if isinstance(k, slice):
            return list(self)[k]
        if not isinstance(k, int):
            raise TypeError(f"ItemList indices must be integers or slices, not {type(k).__name__}")
        if k < 0:
            k += self._len
        if not 0 <= k < self._len:
            raise IndexError("ItemList index out of range")
        p = bisect.bisect_right(self._starts, k) - 1
        part = self._parts[p]
        offset = k - self._starts[p]
        return part.item(offset) if type(part) is Columns else part[offset]

    def __eq__(self, other) -> bool:
        if not isinstance(other, (list, tuple, ItemList)):
            return NotImplemented
        return len(other) == self._len and all(a == b for a, b in zip(self, other))

    __hash__ = None  # type: ignore[assignment] - a sequence of values, as list is

    def __add__(self, other) -> list:
        return [*self, *other]

    def __radd__(self, other) -> list:
        return [*other, *self]

    def __repr__(self) -> str:
        return repr(list(self))

    def __reduce__(self):
        return (list, (list(self),))  # unpickles as a plain list of Items
