"""The ``Store`` base class users subclass: reads here, writes through the server."""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import cloudpickle

from slither import _keys, _protocol, telemetry
from slither._item import Context
from slither._store.local import _entry, _registry
from slither._store.reads import _MISSING, _encode, _loads, _read, _Reader
from slither._store.schema import Table, View
from slither._store.views import call_view
from slither.errors import ConfigurationError, StoreError


def _check_unique(store: str, declared, kind: type, what: str) -> None:
    """Every entry of a store's ``tables`` (or ``views``) is a ``kind`` and its name is unique."""
    names = set()
    for d in declared:
        if not isinstance(d, kind):
            raise ConfigurationError(f"store {store!r}: {what}s must be slither.{kind.__name__}, got {d!r}")
        if d.name in names:
            raise ConfigurationError(f"store {store!r}: duplicate {what} {d.name!r}")
        names.add(d.name)


class Store:
    """Base class of stores. Subclass it; list it in ``Runtime(stores=[...])``.

    Class attributes: ``tables`` (list of :class:`Table`), ``views`` (list of
    :class:`View`), ``persistent`` (keep data in ``Runtime(data_dir=...)``
    across restarts), ``store_name`` (default: the class name).

    ``load(self, tables)`` runs in the store server's process, at start (on
    an empty store) and on ``reload()``; ``tables[name].put(key, value)``.

    Reads (classmethods) run in the calling process with no round trip.
    Writes go through the server. Both raise :class:`StoreError` for an
    unknown table, an unstorable key or value, or a store that is not started.
    """

    tables: list = []
    views: list = []
    persistent: bool = False
    store_name: str = ""

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if "store_name" not in cls.__dict__ or not cls.__dict__["store_name"]:
            cls.store_name = cls.__name__
        _check_unique(cls.store_name, cls.tables, Table, "table")
        _check_unique(cls.store_name, cls.views, View, "view")

    def load(self, tables: dict) -> None:
        """Fill the tables. Runs in the store server's process. Default: nothing."""

    # -- reads --------------------------------------------------------
    @classmethod
    def get(cls, table: str, key, default=None):
        """The value under ``key`` (a list of values for bag tables), or ``default``."""
        e = _registry.get(cls.store_name)
        fast = e._fast.get(table) if e is not None else None
        if fast is None:  # first read in this process, a bag table, or an error to report
            with _read(cls) as r:
                return r.get(table, key, default)
        # Hot path (set / ordered_set): one read transaction, one lookup. The
        # at-fork hook empties _fast, so an inherited environment is never used.
        env, db, ordered = fast
        raw = env.begin(db=db).get(_encode(key, ordered))  # the read transaction ends when it is dropped, here
        return default if raw is None else _loads(raw)[1]

    @classmethod
    def fetch(cls, table: str, key):
        """Like :meth:`get`, but raises ``KeyError`` when the key is missing."""
        with _read(cls) as r:
            return r.fetch(table, key)

    @classmethod
    def match(cls, table: str, pattern: tuple) -> list[tuple]:
        """``[(key, value)]`` matching ``(key_pattern, value_pattern)``; ``slither.ANY`` is a wildcard
        (also inside tuples, and as dict values in dict patterns)."""
        with _read(cls) as r:
            return r.match(table, pattern)

    @classmethod
    def select(cls, table: str, predicate: Callable[[Any, Any], bool]) -> list[tuple]:
        """``[(key, value)]`` for which ``predicate(key, value)`` is true."""
        with _read(cls) as r:
            return r.select(table, predicate)

    @classmethod
    def fold(cls, table: str, acc, fn: Callable):
        """``fn((key, value), acc) -> acc`` over every record."""
        with _read(cls) as r:
            return r.fold(table, acc, fn)

    @classmethod
    def size(cls, table: str) -> int:
        """Number of records (for bag tables, of values)."""
        with _read(cls) as r:
            return r.size(table)

    @classmethod
    def items(cls, table: str) -> list[tuple]:
        """Every ``(key, value)``, in key order for ordered_set tables."""
        with _read(cls) as r:
            return list(r.items(table))

    @classmethod
    @contextmanager
    def snapshot(cls) -> Iterator[_Reader]:
        """One consistent view across all tables for several reads::

        with FeatureStore.snapshot() as s:
            a = s.get("t1", k); b = s.get("t2", k)   # same version of both
        """
        with _read(cls) as r:
            yield r

    @classmethod
    def version(cls) -> int:
        """How many times the store was (re)loaded; changes atomically with the data."""
        with _read(cls) as r:
            raw = r.txn.get(b"version", db=r.e._dbs["__meta__"])
            return int(raw or 0)

    # -- writes -------------------------------------------------------
    @classmethod
    def put(cls, table: str, key, value) -> None:
        """Insert or replace (bag: add, unless the same value is already there)."""
        e = _entry(cls)
        k, v = _encode_kv(e, table, key, value)
        _write(cls, _protocol.put(table, k, v), table, "put")

    @classmethod
    def update(cls, table: str, key, fn: Callable[[Any], Any]):
        """Atomically replace the value with ``fn(value)``; return the new value.

        Raises ``KeyError`` when the key is missing. ``fn`` runs in the store
        server's process, inside the write transaction.
        """
        e = _entry(cls)
        k, _ = _encode_kv(e, table, key)
        if e.tables[table] == "bag":
            raise StoreError(f"store {e.name!r}: update is not defined for bag table {table!r}")
        try:
            blob = cloudpickle.dumps(fn)
        except Exception as exc:
            raise StoreError(f"store {e.name!r}: update fn cannot be pickled: {exc}") from exc
        try:
            return _write(cls, _protocol.update(table, k, key, blob), table, "update")
        except KeyError:
            raise KeyError(key) from None

    @classmethod
    def delete(cls, table: str, key) -> None:
        """Remove ``key`` (every value, for bags). A missing key is not an error."""
        e = _entry(cls)
        k, _ = _encode_kv(e, table, key)
        _write(cls, _protocol.delete(table, k), table, "delete")

    @classmethod
    def bulk_insert(cls, table: str, records) -> int:
        """Insert many ``(key, value)`` pairs in one transaction; returns how many."""
        e = _entry(cls)
        rows = []
        for rec in records:
            if not isinstance(rec, tuple) or len(rec) != 2:
                raise StoreError(f"store {e.name!r}: bulk_insert records must be (key, value) tuples, got {rec!r:.80}")
            rows.append(_encode_kv(e, table, rec[0], rec[1]))
        _write(cls, _protocol.bulk(table, rows), table, "bulk_insert", len(rows))
        return len(rows)

    @classmethod
    def reload(cls) -> int:
        """Re-run ``load`` atomically; returns the new version.

        Raises:
            StoreError: ``load`` raised; the old data is kept.
        """
        e = _entry(cls)
        with telemetry.span(("slither", "store", "reload"), {"store": e.name}) if telemetry._forward is None else _nullspan():
            return e.client().request(_protocol.RELOAD)

    @classmethod
    def view(cls, name: str, params=None, ctx=None):
        """Call one of this store's views here (global views, or session views
        with a Context of a pipe that declares the store)."""
        return call_view(name, params if params is not None else {}, ctx or Context(), store=cls.store_name)


@contextmanager
def _nullspan():
    yield {}


def _encode_kv(e, table: str, key, value=_MISSING):
    if table not in e.tables:
        raise StoreError(f"store {e.name!r} has no table {table!r}; its tables are {sorted(e.tables)}")
    try:
        k = _keys.encode(key, e.tables[table] == "ordered_set")
    except _keys.Unsortable as exc:
        raise StoreError(f"store {e.name!r}, table {table!r} (ordered_set): key {key!r} cannot be ordered: {exc}") from exc
    except Exception as exc:
        raise StoreError(f"store {e.name!r}, table {table!r}: key {key!r:.80} cannot be stored: {exc}") from exc
    if value is _MISSING:
        return k, None
    try:
        v = pickle.dumps((key, value), protocol=5)
    except Exception as exc:
        raise StoreError(
            f"store {e.name!r}, table {table!r}: value for key {key!r:.80} cannot be pickled: {type(exc).__name__}: {exc}"
        ) from exc
    return k, v


def _write(store, op: tuple, table: str | None, kind: str, count: int = 1):
    e = _entry(store)
    t0 = time.monotonic_ns()
    result = e.client().request(op)
    telemetry._emit_anywhere(
        ("slither", "store", "write"),
        {"duration": time.monotonic_ns() - t0, "count": count},
        {"store": e.name, "table": table, "op": kind},
    )
    return result
