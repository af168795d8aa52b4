"""Reads: one LMDB read transaction per call, in the calling process, no round trip."""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from slither import _keys
from slither._store.local import _Entry, _entry
from slither._store.schema import ANY, bag_rows

_encode = _keys.encode
_loads = pickle.loads


def _match(pattern, value) -> bool:
    if pattern is ANY:
        return True
    if isinstance(pattern, tuple) and isinstance(value, tuple):
        return len(pattern) == len(value) and all(_match(p, v) for p, v in zip(pattern, value))
    if isinstance(pattern, dict) and isinstance(value, dict):
        return all(k in value and _match(p, value[k]) for k, p in pattern.items())
    return pattern == value


class _Reader:
    """Read operations over one read transaction."""

    def __init__(self, entry: _Entry, txn):
        self.e = entry
        self.txn = txn

    def get(self, table: str, key, default=None):
        db = self.e.db(table)
        kind = self.e.tables[table]
        k = _keys.encode(key, kind == "ordered_set")
        if kind == "bag":
            return [v for _, v in self._prefix(db, k)]
        raw = self.txn.get(k, db=db)
        return default if raw is None else pickle.loads(raw)[1]

    def fetch(self, table: str, key):
        db = self.e.db(table)
        kind = self.e.tables[table]
        k = _keys.encode(key, kind == "ordered_set")
        if kind == "bag":
            vals = [v for _, v in self._prefix(db, k)]
            if not vals:
                raise KeyError(key)
            return vals
        raw = self.txn.get(k, db=db)
        if raw is None:
            raise KeyError(key)
        return pickle.loads(raw)[1]

    def _prefix(self, db, k: bytes):
        for _, raw_v in bag_rows(self.txn, db, k):
            yield pickle.loads(raw_v)

    def items(self, table: str) -> Iterator[tuple]:
        db = self.e.db(table)
        with self.txn.cursor(db=db) as cur:
            for raw_v in cur.iternext(keys=False, values=True):
                yield pickle.loads(raw_v)

    def match(self, table: str, pattern) -> list[tuple]:
        if not isinstance(pattern, tuple) or len(pattern) != 2:
            raise ValueError(f"match pattern must be a (key_pattern, value_pattern) tuple, got {pattern!r}")
        kp, vp = pattern
        kind = self.e.tables.get(table)
        if kp is not ANY and kind in ("set", "ordered_set") and not _has_any(kp):
            v = self.get(table, kp, _MISSING)
            return [] if v is _MISSING or not _match(vp, v) else [(kp, v)]
        return [(k, v) for k, v in self.items(table) if _match(kp, k) and _match(vp, v)]

    def select(self, table: str, predicate: Callable[[Any, Any], bool]) -> list[tuple]:
        return [(k, v) for k, v in self.items(table) if predicate(k, v)]

    def fold(self, table: str, acc, fn: Callable):
        for kv in self.items(table):
            acc = fn(kv, acc)
        return acc

    def size(self, table: str) -> int:
        return self.txn.stat(self.e.db(table))["entries"]


_MISSING = object()


def _has_any(p) -> bool:
    if p is ANY:
        return True
    if isinstance(p, tuple):
        return any(_has_any(x) for x in p)
    return False


@contextmanager
def _read(store) -> Iterator[_Reader]:
    e = _entry(store)
    txn = e.env().begin()
    try:
        yield _Reader(e, txn)
    finally:
        txn.abort()
