"""What a store is made of: tables, views, the ANY wildcard, and how names map to LMDB."""

from __future__ import annotations

from collections.abc import Callable

import attrs

from slither.errors import ConfigurationError

TABLE_TYPES = ("set", "bag", "ordered_set")
MAP_SIZE = 1 << 36  # address space only; files grow as written


class _Any:
    """Wildcard for :meth:`Store.match` patterns."""

    _inst = None

    def __new__(cls):
        if cls._inst is None:
            cls._inst = super().__new__(cls)
        return cls._inst

    def __repr__(self) -> str:
        return "slither.ANY"

    def __reduce__(self):
        return (_Any, ())


ANY = _Any()


@attrs.frozen
class Table:
    """A table of a Store: ``set`` (one value per key), ``bag`` (several
    distinct values per key, in insertion order) or ``ordered_set`` (a set
    iterated in Python's key order)."""

    name: str
    type: str = "set"

    def __attrs_post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ConfigurationError(f"Table name must be a non-empty str, got {self.name!r}")
        if self.type not in TABLE_TYPES:
            raise ConfigurationError(f"table {self.name!r}: type must be one of {TABLE_TYPES}, got {self.type!r}")


@attrs.frozen
class View:
    """A named read function over a store: ``handler(params, ctx) -> dict``.

    ``mode="batch"``: params is a list and the handler returns a list of the
    same length. ``scope="session"``: callable only during a pipe run whose
    pipe declares the store; ``"global"``: always. ``timeout`` in seconds.
    Handlers run in the process that calls the view.
    """

    name: str
    handler: Callable
    mode: str = "scalar"
    scope: str = "session"
    timeout: float | None = 5.0

    def __attrs_post_init__(self):
        if self.mode not in ("scalar", "batch"):
            raise ConfigurationError(f"view {self.name!r}: mode must be 'scalar' or 'batch', got {self.mode!r}")
        if self.scope not in ("session", "global"):
            raise ConfigurationError(f"view {self.name!r}: scope must be 'session' or 'global', got {self.scope!r}")
        if not callable(self.handler):
            raise ConfigurationError(f"view {self.name!r}: handler must be callable")


def _dbname(table: str) -> bytes:
    return b"t:" + table.encode()


def _store_name(store) -> str:
    return store if isinstance(store, str) else store.store_name


def bag_rows(txn, db, k: bytes):
    """``(raw key, raw value)`` of every value of bag key ``k`` (stored as ``k`` + an
    8-byte sequence number; a longer key that starts with ``k`` is another key)."""
    n = len(k) + 8
    cur = txn.cursor(db=db)
    try:
        if cur.set_range(k):
            for raw_k, raw_v in cur:
                if not raw_k.startswith(k):
                    break
                if len(raw_k) == n:
                    yield raw_k, raw_v
    finally:
        cur.close()
