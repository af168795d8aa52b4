"""Shared state: lock-free reads from every process, serialized writes, atomic reload.

::

    any process of the runtime                     StoreServer(S) actor process
    ─────────────────────────                      ───────────────────────────
    S.get / match / select / fold / items  ──▶  LMDB environment (mmap, MVCC)  ◀── single writer
      (one read transaction per call; no          on /dev/shm (ephemeral) or
       actor round trip; a consistent snapshot)   data_dir/<store> (persistent)
    S.put / update / delete / bulk_insert / reload ──Unix socket──▶ write lock → one txn each

* A store is identified by *name* (``Store.store_name``, default the class
  name), so a class defined in ``__main__`` or inside a function works in
  workers and in the server: the class travels by value (cloudpickle).
* Every write is one LMDB transaction, acknowledged after commit. Each
  request carries (client id, sequence number) recorded in the same
  transaction, so a client that retries after the server died gets the
  original reply: an acknowledged write is never lost, and never applied twice.
* ``reload()`` clears every table and re-runs ``load`` in *one* write
  transaction: readers see all old or all new data across all tables. A
  ``load`` that raises aborts the transaction (old data stays) and the
  caller gets ``StoreError``.
* Each process opens the environment itself, keyed by pid: an environment
  inherited across ``fork`` is never used.
"""

from __future__ import annotations

import functools
import os
import pickle
import queue
import secrets
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import attrs
import cloudpickle
import lmdb

from slither import _keys, _net, _wire, telemetry
from slither._sys import free_port, serve_forever
from slither.errors import ConfigurationError, StoreError, ViewNotFound, ViewTimeout
from slither.supervision import SupervisedActor

TABLE_TYPES = ("set", "bag", "ordered_set")
_encode = _keys.encode
_loads = pickle.loads
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


# -- the per-process registry -------------------------------------------------


class _Entry:
    """What this process knows of one started store."""

    def __init__(self, name: str, info: dict, cls: type | None = None):
        self.name = name
        self.path = self.leader_path = info["path"]
        self.sock = info["sock"]
        self.tables: dict[str, str] = dict(info["tables"])
        self.cls_blob = info["cls"]
        self._cls = cls
        self.owner = info.get("owner")
        # On a convention member: reads from this node's replica, writes over TCP to the leader.
        self.remote = tuple(info["tcp"]) if _on_member and info.get("tcp") else None
        self._env = None
        self._env_pid = None
        self._dbs: dict = {}
        self._fast: dict = {}  # table -> (db handle, ordered) for the get() hot path
        self._client = None
        self._lock = threading.Lock()

    @property
    def cls(self) -> type:
        if self._cls is None:
            self._cls = cloudpickle.loads(self.cls_blob)
        return self._cls

    def env(self):
        pid = os.getpid()
        if self._env is None or self._env_pid != pid:
            with self._lock:
                if self._env is None or self._env_pid != pid:
                    if self.remote is not None and self.path == self.leader_path:
                        from slither import _replica

                        self.path = _replica.ensure(self.name, self.remote)
                    env = _server_envs.get(self.path) or lmdb.open(
                        self.path,
                        readonly=True,
                        lock=True,
                        max_dbs=len(self.tables) + 2,
                        map_size=MAP_SIZE,
                        subdir=True,
                        readahead=False,
                        max_readers=2048,
                        create=False,
                    )
                    # A DBI opened inside a read transaction dies with it: open them bare.
                    self._dbs = {t: env.open_db(_dbname(t), create=False) for t in self.tables}
                    self._dbs["__meta__"] = env.open_db(b"__meta__", create=False)
                    self._fast = {t: (env, self._dbs[t], k == "ordered_set") for t, k in self.tables.items() if k != "bag"}
                    self._env, self._env_pid = env, pid
        return self._env

    def db(self, table: str):
        if table not in self.tables:
            raise StoreError(f"store {self.name!r} has no table {table!r}; its tables are {sorted(self.tables)}")
        self.env()
        return self._dbs[table]

    def client(self) -> _Client:
        pid = os.getpid()
        with self._lock:
            if self._client is None or self._client.pid != pid:
                self._client = _Client(self)
            return self._client

    def close(self) -> None:
        shared = _server_envs.get(self.path) is self._env
        if self._env is not None and self._env_pid == os.getpid() and not shared:
            try:
                self._env.close()
            except Exception:  # noqa: BLE001
                pass
        self._env = None
        if self._client is not None:
            self._client.close()


_registry: dict[str, _Entry] = {}
# Environments a store server opened in this process (in-process debug mode runs the
# server here): py-lmdb refuses to open one environment twice, so readers share it.
_server_envs: dict[str, Any] = {}
_inherited: list = []  # environments inherited across fork: never used, never closed


def _after_fork_in_child() -> None:
    # An LMDB environment must not be used across fork; closing it in the child
    # could disturb the parent's reader slots, so keep a reference and reopen.
    for e in _registry.values():
        if e._env is not None:
            _inherited.append(e._env)
            e._env = None
            e._env_pid = None
        e._fast = {}
        e._client = None
    _inherited.extend(_server_envs.values())
    _server_envs.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _dbname(table: str) -> bytes:
    return b"t:" + table.encode()


def _store_name(store) -> str:
    return store if isinstance(store, str) else store.store_name


def _entry(store) -> _Entry:
    name = _store_name(store)
    e = _registry.get(name)
    if e is None:
        raise StoreError(f"store {name!r} is not started in this process; add it to Runtime(stores=[...]) and start the runtime")
    return e


_on_member = False  # set in workers of convention members (see slither.worker.serve)


def _register_paths(paths: dict) -> None:
    """Called in workers with the caller's store registrations."""
    for name, info in paths.items():
        old = _registry.get(name)
        if old is None or old.leader_path != info["path"]:
            _registry[name] = _Entry(name, info)


# -- reads --------------------------------------------------------------------


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
        cur = self.txn.cursor(db=db)
        n = len(k) + 8
        if cur.set_range(k):
            for raw_k, raw_v in cur:
                if not raw_k.startswith(k):
                    break
                if len(raw_k) == n:
                    yield pickle.loads(raw_v)
        cur.close()

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


# -- writes (client side) ------------------------------------------------------


class _Client:
    """One connection per process to a store's server; reconnects and retries
    with the same sequence number, so the server can answer a retry from its
    record instead of applying it twice."""

    RETRY_FOR = 15.0

    def __init__(self, entry: _Entry):
        self.entry = entry
        self.pid = os.getpid()
        self.id = secrets.token_hex(8)
        self.seq = 0
        self.sock: socket.socket | None = None
        self.lock = threading.Lock()

    def request(self, op: tuple):
        with self.lock:
            self.seq += 1
            msg = (self.id, self.seq, op)
            deadline = time.monotonic() + self.RETRY_FOR
            delay = 0.005
            while True:
                try:
                    if self.sock is None:
                        self.sock = self._connect()
                    _wire.send(self.sock, msg)
                    reply = _wire.recv(self.sock)
                    break
                except (OSError, EOFError) as exc:
                    if self.sock is not None:
                        self.sock.close()
                        self.sock = None
                    if time.monotonic() > deadline:
                        raise StoreError(f"store {self.entry.name!r}: server unreachable for {self.RETRY_FOR}s ({exc})") from exc
                    time.sleep(delay)  # waiting for the supervisor to restart the server: no event reaches this process
                    delay = min(0.1, delay * 2)
        if reply[0] == "ok":
            return reply[1]
        raise StoreError(reply[1])

    def _connect(self) -> socket.socket:
        if self.entry.remote is None:
            return _wire.connect(self.entry.sock, timeout=5)
        sock = _net.connect(self.entry.remote, _net.MEMBER.secret, timeout=5)
        sock.settimeout(None)
        return sock

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None


def _encode_kv(e: _Entry, table: str, key, value=_MISSING):
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


# -- the Store base class ---------------------------------------------------------


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
        names = set()
        for t in cls.tables:
            if not isinstance(t, Table):
                raise ConfigurationError(f"store {cls.store_name!r}: tables must be slither.Table, got {t!r}")
            if t.name in names:
                raise ConfigurationError(f"store {cls.store_name!r}: duplicate table {t.name!r}")
            names.add(t.name)
        vnames = set()
        for v in cls.views:
            if not isinstance(v, View):
                raise ConfigurationError(f"store {cls.store_name!r}: views must be slither.View, got {v!r}")
            if v.name in vnames:
                raise ConfigurationError(f"store {cls.store_name!r}: duplicate view {v.name!r}")
            vnames.add(v.name)

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
        _write(cls, ("put", table, k, v), table, "put")

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
            return _write(cls, ("update", table, k, key, blob), table, "update")
        except StoreError as exc:
            if str(exc).startswith("KeyError:"):
                raise KeyError(key) from None
            raise

    @classmethod
    def delete(cls, table: str, key) -> None:
        """Remove ``key`` (every value, for bags). A missing key is not an error."""
        e = _entry(cls)
        k, _ = _encode_kv(e, table, key)
        _write(cls, ("delete", table, k), table, "delete")

    @classmethod
    def bulk_insert(cls, table: str, records) -> int:
        """Insert many ``(key, value)`` pairs in one transaction; returns how many."""
        e = _entry(cls)
        rows = []
        for rec in records:
            if not isinstance(rec, tuple) or len(rec) != 2:
                raise StoreError(f"store {e.name!r}: bulk_insert records must be (key, value) tuples, got {rec!r:.80}")
            rows.append(_encode_kv(e, table, rec[0], rec[1]))
        _write(cls, ("bulk", table, rows), table, "bulk_insert", len(rows))
        return len(rows)

    @classmethod
    def reload(cls) -> int:
        """Re-run ``load`` atomically; returns the new version.

        Raises:
            StoreError: ``load`` raised; the old data is kept.
        """
        e = _entry(cls)
        with telemetry.span(("slither", "store", "reload"), {"store": e.name}) if telemetry._forward is None else _nullspan():
            return e.client().request(("reload",))

    @classmethod
    def view(cls, name: str, params=None, ctx=None):
        """Call one of this store's views here (global views, or session views
        with a Context of a pipe that declares the store)."""
        from slither._item import Context

        return call_view(name, params if params is not None else {}, ctx or Context(), store=cls.store_name)


@contextmanager
def _nullspan():
    yield {}


# -- views --------------------------------------------------------------------------


def call_view(name: str, params, ctx, store: str | None = None):
    found = None
    for e in [_registry[store]] if store in _registry else list(_registry.values()):
        for v in e.cls.views:
            if v.name == name:
                found = (e, v)
                break
        if found:
            break
    if found is None:
        raise ViewNotFound(f"no started store has a view named {name!r}")
    e, v = found
    if v.scope == "session" and e.name not in set((ctx.stores or {}).values()):
        raise ViewNotFound(
            f"view {name!r} of store {e.name!r} is session-scoped: callable only during a pipe run whose pipe declares the store"
        )
    if v.mode == "batch" and not isinstance(params, list):
        raise ValueError(f"view {name!r} is a batch view: params must be a list")
    meta = {"store": e.name, "view": name, "session_id": getattr(ctx, "session_id", None)}
    t0 = time.monotonic_ns()
    telemetry._emit_anywhere(("slither", "store", "view", "start"), {"system_time": time.time_ns()}, meta)
    if v.timeout is None:
        result = v.handler(params, ctx)
    else:
        box: dict = {}

        def run():
            try:
                box["ok"] = v.handler(params, ctx)
            except BaseException as exc:  # noqa: BLE001
                box["err"] = exc

        t = threading.Thread(target=run, name=f"slither-view-{name}", daemon=True)
        t.start()
        t.join(v.timeout)
        if t.is_alive():
            raise ViewTimeout(f"view {name!r} of store {e.name!r} ran past its timeout of {v.timeout}s")
        if "err" in box:
            raise box["err"]
        result = box["ok"]
    if v.mode == "batch" and (not isinstance(result, list) or len(result) != len(params)):
        raise StoreError(f"batch view {name!r} returned {type(result).__name__}; expected a list of {len(params)}")
    telemetry._emit_anywhere(("slither", "store", "view", "stop"), {"duration": time.monotonic_ns() - t0}, meta)
    return result


# -- the server (runs in the StoreServer actor's process) -------------------------------


@attrs.frozen(repr=False)
class StoreInit:
    name: str
    path: str
    sock: str
    cls_blob: bytes
    tables: tuple
    persistent: bool
    tcp: tuple | None = None  # (host, port): replicas and writers on convention members
    secret: bytes | None = None  # the convention's; checked before anything from TCP is unpickled

    def __repr__(self) -> str:
        return f"<StoreInit {self.name}>"


class _TableWriter:
    """What ``load`` gets: ``tables[name].put(key, value)`` inside the reload transaction."""

    def __init__(self, server, txn, table):
        self._s = server
        self._txn = txn
        self.name = table

    def put(self, key, value) -> None:
        kind = self._s.tables[self.name]
        k = _keys.encode(key, kind == "ordered_set")
        self._s._put(self._txn, self.name, k, pickle.dumps((key, value), protocol=5))

    def get(self, key, default=None):
        kind = self._s.tables[self.name]
        raw = self._txn.get(_keys.encode(key, kind == "ordered_set"), db=self._s.dbs[self.name])
        return default if raw is None else pickle.loads(raw)[1]

    def bulk_insert(self, records) -> None:
        for k, v in records:
            self.put(k, v)


class _Recorder:
    """A write transaction that also records what it changes, so that replicas
    can apply the same changes in one transaction of their own. Client records
    (``c:`` keys of ``__meta__``) stay on the leader."""

    __slots__ = ("txn", "names", "meta", "changes", "done")

    def __init__(self, txn, names: dict, meta, record: bool):
        self.txn = txn
        self.names = names
        self.meta = meta
        self.changes: list | None = [] if record else None
        self.done = False

    def put(self, k: bytes, v: bytes, db) -> None:
        self.txn.put(k, v, db=db)
        if self.changes is not None and not (db is self.meta and k.startswith(b"c:")):
            self.changes.append(("p", self.names[id(db)], bytes(k), v))

    def delete(self, k: bytes, db) -> None:
        self.txn.delete(k, db=db)
        if self.changes is not None and not (db is self.meta and k.startswith(b"c:")):
            self.changes.append(("d", self.names[id(db)], bytes(k)))

    def drop(self, db, delete: bool = False) -> None:
        assert not delete
        self.txn.drop(db, delete=False)
        if self.changes is not None:
            self.changes.append(("x", self.names[id(db)]))

    def get(self, k: bytes, db=None):
        return self.txn.get(k, db=db)

    def cursor(self, db=None):
        return self.txn.cursor(db=db)

    def abort(self) -> None:
        if not self.done:
            self.done = True
            self.txn.abort()
            self.changes = None


class _Subscriber:
    """One replica following this server: its queue of committed change sets."""

    def __init__(self, conn):
        self.conn = conn
        self.q: queue.SimpleQueue = queue.SimpleQueue()
        self.synced = False  # after this, writers wait for its acknowledgement
        self.gone = False

    def push(self, changes) -> threading.Event:
        """Queue a committed change set; the event is set once the replica acknowledged it (or is gone)."""
        ev = threading.Event()
        if self.gone:
            ev.set()
        else:
            self.q.put((changes, ev))
        return ev

    def drop(self) -> None:
        """Give up on this replica: writers no longer wait for it."""
        self.gone = True
        try:
            self.conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


REPLICA_ACK_TIMEOUT = 10.0
_SNAPSHOT_ROWS = 2000


class _Server:
    def __init__(self, init: StoreInit):
        self.init = init
        self.tables = dict(init.tables)
        os.makedirs(init.path, exist_ok=True)
        self.env = lmdb.open(
            init.path,
            map_size=MAP_SIZE,
            max_dbs=len(self.tables) + 2,
            subdir=True,
            sync=init.persistent,
            metasync=init.persistent,
            max_readers=2048,
            lock=True,
        )
        _server_envs[init.path] = self.env
        self.meta = self.env.open_db(b"__meta__")
        self.dbs = {t: self.env.open_db(_dbname(t)) for t in self.tables}
        self._names = {id(self.meta): b"__meta__", **{id(db): _dbname(t) for t, db in self.dbs.items()}}
        self.subs: list[_Subscriber] = []
        self.lock = threading.Lock()
        self.cls = cloudpickle.loads(init.cls_blob)
        self.load_error: str | None = None
        with self.env.begin(write=False) as txn:
            loaded = txn.get(b"loaded", db=self.meta)
        if not loaded:
            try:
                self.reload()
            except Exception as exc:  # noqa: BLE001 - reported to the runtime by ping
                self.load_error = str(exc)

    def _put(self, txn, table: str, k: bytes, v: bytes) -> None:
        db = self.dbs[table]
        if self.tables[table] != "bag":
            txn.put(k, v, db=db)
            return
        value = pickle.loads(v)[1]
        cur = txn.cursor(db=db)
        if cur.set_range(k):
            for raw_k, raw_v in cur:
                if not raw_k.startswith(k):
                    break
                if len(raw_k) == len(k) + 8 and pickle.loads(raw_v)[1] == value:
                    return  # a bag holds distinct values
        ck = b"seq:" + table.encode()
        n = int(txn.get(ck, db=self.meta) or 0) + 1
        txn.put(ck, str(n).encode(), db=self.meta)
        txn.put(k + n.to_bytes(8, "big"), v, db=db)

    def _delete(self, txn, table: str, k: bytes) -> None:
        db = self.dbs[table]
        if self.tables[table] != "bag":
            txn.delete(k, db=db)
            return
        cur = txn.cursor(db=db)
        doomed = []
        if cur.set_range(k):
            for raw_k in cur.iternext(keys=True, values=False):
                if not raw_k.startswith(k):
                    break
                if len(raw_k) == len(k) + 8:
                    doomed.append(raw_k)
        for dk in doomed:
            txn.delete(dk, db=db)

    @contextmanager
    def _writing(self):
        """One write transaction under the write lock. After it commits, its
        changes go to every replica, and the caller's reply waits until each
        replica in sync has applied them (or is cut off, to resync)."""
        with self.lock:
            rec = _Recorder(self.env.begin(write=True), self._names, self.meta, bool(self.subs))
            try:
                yield rec
            except BaseException:
                rec.abort()
                raise
            if rec.done:  # aborted inside
                return
            rec.done = True
            rec.txn.commit()
            waits = [(sub, sub.push(rec.changes)) for sub in self.subs] if rec.changes else []
        deadline = time.monotonic() + REPLICA_ACK_TIMEOUT
        for sub, ev in waits:
            if sub.synced and not ev.wait(max(0.0, deadline - time.monotonic())):
                sub.drop()  # it will reconnect and start again from a snapshot

    def reload(self) -> int:
        with self._writing() as txn:
            for t, db in self.dbs.items():
                txn.drop(db, delete=False)
                txn.delete(b"seq:" + t.encode(), db=self.meta)
            writers = {t: _TableWriter(self, txn, t) for t in self.tables}
            had_data = txn.get(b"loaded", db=self.meta) is not None
            try:
                self.cls().load(writers)
            except Exception as exc:
                txn.abort()
                kept = "the old data is kept" if had_data else "the store stays empty (it had no data yet)"
                raise StoreError(
                    f"store {self.init.name!r}: load raised {type(exc).__name__}: {exc}; {kept}\n" + traceback.format_exc()
                ) from exc
            version = int(txn.get(b"version", db=self.meta) or 0) + 1
            txn.put(b"version", str(version).encode(), db=self.meta)
            txn.put(b"loaded", b"1", db=self.meta)
            return version

    def apply(self, client: str, seq: int, op: tuple):
        kind = op[0]
        if kind == "ping":
            return ("ok", {"pid": os.getpid(), "load_error": self.load_error})
        if kind == "reload":
            # The reload's own transaction is the atomic unit; its seq is recorded after.
            ck = b"c:" + client.encode()
            with self.env.begin() as txn:
                rec = txn.get(ck, db=self.meta)
            if rec is not None and pickle.loads(rec)[0] == seq:
                return pickle.loads(rec)[1]
            try:
                reply = ("ok", self.reload())
            except StoreError as exc:
                reply = ("err", str(exc))
            with self.lock, self.env.begin(write=True) as txn:
                txn.put(ck, pickle.dumps((seq, reply)), db=self.meta)
            return reply
        with self._writing() as txn:
            ck = b"c:" + client.encode()
            rec = txn.get(ck, db=self.meta)
            if rec is not None:
                last_seq, last_reply = pickle.loads(rec)
                if last_seq == seq:
                    return last_reply  # a retry of a write we already committed
            try:
                result = self._apply(txn, op)
                reply = ("ok", result)
            except KeyError as exc:
                reply = ("err", f"KeyError: {exc}")
            except Exception as exc:  # noqa: BLE001
                reply = ("err", f"store {self.init.name!r}: {op[0]} failed: {type(exc).__name__}: {exc}")
            if reply[0] == "err":
                txn.abort()
                with self.env.begin(write=True) as t2:
                    t2.put(ck, pickle.dumps((seq, reply)), db=self.meta)
                return reply
            txn.put(ck, pickle.dumps((seq, reply)), db=self.meta)
            return reply

    def _apply(self, txn, op: tuple):
        kind = op[0]
        if kind == "put":
            _, table, k, v = op
            self._put(txn, table, k, v)
            return None
        if kind == "bulk":
            _, table, rows = op
            for k, v in rows:
                self._put(txn, table, k, v)
            return len(rows)
        if kind == "delete":
            _, table, k = op
            self._delete(txn, table, k)
            return None
        if kind == "update":
            _, table, k, key, blob = op
            raw = txn.get(k, db=self.dbs[table])
            if raw is None:
                raise KeyError(key)
            new = cloudpickle.loads(blob)(pickle.loads(raw)[1])
            txn.put(k, pickle.dumps((key, new), protocol=5), db=self.dbs[table])
            return new
        raise ValueError(f"unknown store operation {kind!r}")

    def start(self) -> None:
        """Listen (the Unix socket, and TCP on a convention) and serve on threads of this process."""
        try:
            os.unlink(self.init.sock)
        except FileNotFoundError:
            pass
        self._listeners = [(_wire.listen(self.init.sock), False)]
        if self.init.tcp is not None:
            self._listeners.append((socket.create_server(tuple(self.init.tcp), backlog=64), True))
        for srv, tcp in self._listeners:
            name = f"slither-store-{self.init.name}-{'tcp' if tcp else 'unix'}"
            handle = functools.partial(self._conn, tcp=tcp)
            threading.Thread(target=serve_forever, args=(srv, handle, name), name=name, daemon=True).start()

    def stop(self) -> None:
        """Stop listening and close the environment (tests; a server process just exits)."""
        for srv, _ in self._listeners:
            srv.close()
        with self.lock:
            for sub in list(self.subs):
                sub.drop()
        _server_envs.pop(self.init.path, None)
        self.env.close()

    def _conn(self, conn, _peer=None, tcp: bool = False) -> None:
        try:
            if tcp:
                _net.tune(conn)
                if not _net.server_handshake(conn, self.init.secret):  # before anything is unpickled
                    return
            while True:
                client, seq, op = _wire.recv(conn)
                if op[0] == "subscribe":
                    self._replicate(conn)
                    return
                _wire.send(conn, self.apply(client, seq, op))
        except (EOFError, OSError):
            pass
        finally:
            conn.close()

    def _replicate(self, conn) -> None:
        """Follow-me for one replica: a snapshot, then every committed change in order.

        The snapshot's read transaction and the subscription start under the
        write lock, so each commit is either in the snapshot or in the queue.
        ``ready`` goes through the queue behind whatever committed before it."""
        sub = _Subscriber(conn)
        ev = None
        with self.lock:
            rtxn = self.env.begin()
            self.subs.append(sub)
        try:
            try:
                _wire.send(conn, ("snap", [b"__meta__", *(_dbname(t) for t in self.tables)]))
                for name, db in [(b"__meta__", self.meta), *((_dbname(t), d) for t, d in self.dbs.items())]:
                    rows = []
                    for k, v in rtxn.cursor(db=db):
                        if db is self.meta and k.startswith(b"c:"):
                            continue
                        rows.append((bytes(k), bytes(v)))
                        if len(rows) >= _SNAPSHOT_ROWS:
                            _wire.send(conn, ("rows", name, rows))
                            rows = []
                    if rows:
                        _wire.send(conn, ("rows", name, rows))
                _wire.send(conn, ("end",))
            finally:
                rtxn.abort()
            with self.lock:
                sub.synced = True
                sub.q.put((None, None))
            while True:
                changes, ev = sub.q.get()
                if changes is None:
                    _wire.send(conn, ("ready",))
                    continue
                _wire.send(conn, ("chg", changes))
                if _wire.recv(conn) != ("ack",):
                    return
                ev.set()
                ev = None
        except (EOFError, OSError):
            pass
        finally:
            sub.gone = True
            with self.lock:
                self.subs.remove(sub)
            if ev is not None:  # the change set it was sending when the replica went away
                ev.set()
            while not sub.q.empty():  # nobody waits on a replica that is gone
                _, ev = sub.q.get()
                if ev is not None:
                    ev.set()


class StoreServer(SupervisedActor):
    """The single writer of one store; serves writes on a thread of its own."""

    _started = False

    def on_message(self, message, sender):
        if isinstance(message, StoreInit) and not self._started:
            self._started = True
            _Server(message).start()


# -- runtime integration -------------------------------------------------------------------


class _Handle:
    def __init__(self, name, info, rt):
        self.name = name
        self.info = info
        self.rt = rt

    def paths(self) -> dict:
        return self.info

    def server_pid(self) -> int:
        return _registry[self.name].client().request(("ping",))["pid"]


def _start_stores(rt, classes) -> None:
    from slither.supervision import ChildSpec, ChildStarted, Identity, StartChild, Supervisor, SupervisorInit

    specs = []
    seen = set()
    for cls in classes:
        name = cls.store_name
        if name in seen:
            raise ConfigurationError(f"two stores are named {name!r}; set store_name on one of them")
        seen.add(name)
        if cls.persistent:
            if rt.data_dir is None:
                raise ConfigurationError(f"store {name!r} is persistent: give Runtime(data_dir=...)")
            path = os.path.join(rt.data_dir, name)
        else:
            path = os.path.join(rt._dir, "stores", name)
        os.makedirs(path, exist_ok=True)
        try:
            blob = cloudpickle.dumps(cls)
        except Exception as exc:
            raise ConfigurationError(f"store {name!r}: the class cannot be pickled for its server: {exc}") from exc
        tables = tuple((t.name, t.type) for t in cls.tables)
        conv = rt.convention
        # On a convention, members follow the store over TCP: a port fixed for the
        # runtime's life, so a restarted server is found where the old one was.
        tcp = (conv.host, free_port(conv.host)) if conv is not None and not conv.join else None
        info = {
            "path": path,
            "sock": os.path.join(rt._dir, f"store-{len(specs)}.sock"),
            "tables": tables,
            "cls": blob,
            "owner": rt.token,
            "tcp": tcp,
        }
        init = StoreInit(name, path, info["sock"], blob, tables, cls.persistent, tcp, conv.secret if conv else None)
        specs.append((cls, info, ChildSpec(f"store:{name}", StoreServer, init=init)))
    started = rt._ask(rt._root, StartChild(ChildSpec("stores", Supervisor)), ChildStarted)
    rt._ask(
        started.address,
        SupervisorInit(
            strategy="one_for_one", max_restarts=10, max_seconds=5.0, children=tuple(s for _, _, s in specs), name="stores"
        ),
        Identity,
    )
    for cls, info, _ in specs:
        _registry[cls.store_name] = _Entry(cls.store_name, info, cls)
        rt._stores[cls.store_name] = _Handle(cls.store_name, info, rt)
    for cls, _info, _ in specs:
        status = _registry[cls.store_name].client().request(("ping",))
        if status["load_error"]:
            raise StoreError(status["load_error"])


def _forget_stores(rt) -> None:
    for name in list(rt._stores):
        e = _registry.get(name)
        if e is not None and e.owner == rt.token:
            e.close()
            del _registry[name]
        handle = rt._stores[name]
        env = _server_envs.pop(handle.info["path"], None)  # in-process mode: the server ran here
        if env is not None:
            env.close()
    rt._stores.clear()


__all__ = ["Store", "Table", "View", "ANY"]
