"""The single writer of one store (runs in its StoreServer actor's process).

Every write is one LMDB transaction, acknowledged after commit. Each request
carries (client id, sequence number), recorded in the same transaction, so a
client that retries after the server died gets the original reply: an
acknowledged write is never lost, and never applied twice. ``reload()``
clears every table and re-runs ``load`` in one transaction: readers see all
old or all new data across all tables; a ``load`` that raises aborts it.
"""

from __future__ import annotations

import functools
import os
import pickle
import socket
import threading
import time
import traceback
from contextlib import contextmanager

import attrs
import cloudpickle
import lmdb

from slither import _keys, _net, _protocol, _wire
from slither._store import replication
from slither._store.local import _server_envs
from slither._store.replication import Recorder, Subscriber, serve_replica
from slither._store.schema import MAP_SIZE, _dbname, bag_rows
from slither._sys import serve_forever
from slither.errors import StoreError
from slither.supervision import SupervisedActor


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
        self.subs: list[Subscriber] = []
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
        if any(pickle.loads(raw_v)[1] == value for _, raw_v in bag_rows(txn, db, k)):
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
        doomed = [bytes(raw_k) for raw_k, _ in bag_rows(txn, db, k)]
        for dk in doomed:
            txn.delete(dk, db=db)

    @contextmanager
    def _writing(self):
        """One write transaction under the write lock. After it commits, its
        changes go to every replica, and the caller's reply waits until each
        replica in sync has applied them (or is cut off, to resync)."""
        with self.lock:
            rec = Recorder(self.env.begin(write=True), self._names, self.meta, bool(self.subs))
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
        deadline = time.monotonic() + replication.REPLICA_ACK_TIMEOUT
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
            return _protocol.store_ok({"pid": os.getpid(), "load_error": self.load_error})
        if kind == "reload":
            # The reload's own transaction is the atomic unit; its seq is recorded after.
            ck = b"c:" + client.encode()
            with self.env.begin() as txn:
                rec = txn.get(ck, db=self.meta)
            if rec is not None and pickle.loads(rec)[0] == seq:
                return pickle.loads(rec)[1]
            try:
                reply = _protocol.store_ok(self.reload())
            except StoreError as exc:
                reply = _protocol.store_err(_protocol.FAILED, str(exc))
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
                reply = _protocol.store_ok(result)
            except KeyError as exc:
                reply = _protocol.store_err(_protocol.MISSING_KEY, str(exc.args[0]) if exc.args else "")
            except Exception as exc:  # noqa: BLE001
                reply = _protocol.store_err(
                    _protocol.FAILED, f"store {self.init.name!r}: {op[0]} failed: {type(exc).__name__}: {exc}"
                )
            if reply[0] == _protocol.ERR:
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
                    serve_replica(self, conn)
                    return
                _wire.send(conn, self.apply(client, seq, op))
        except (EOFError, OSError):
            pass
        finally:
            conn.close()


class StoreServer(SupervisedActor):
    """The single writer of one store; serves writes on a thread of its own."""

    _started = False

    def on_message(self, message, sender):
        if isinstance(message, StoreInit) and not self._started:
            self._started = True
            _Server(message).start()
