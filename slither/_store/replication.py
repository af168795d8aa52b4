"""The leader's side of store replication (the member's side is ``replica``).

A replica subscribes to a store's server: it gets a snapshot, then every
committed change set in order, each acknowledged. Writers wait for every
replica in sync to acknowledge (at most ``REPLICA_ACK_TIMEOUT``; a replica
that does not is cut off and starts again from a snapshot).
"""

from __future__ import annotations

import queue
import socket
import threading

from slither import _protocol, _wire
from slither._store.schema import _dbname

REPLICA_ACK_TIMEOUT = 10.0
_SNAPSHOT_ROWS = 2000


class Recorder:
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


class Subscriber:
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


def serve_replica(server, conn) -> None:
    """Follow-me for one replica: a snapshot, then every committed change in order.

    The snapshot's read transaction and the subscription start under the
    write lock, so each commit is either in the snapshot or in the queue.
    ``ready`` goes through the queue behind whatever committed before it."""
    sub = Subscriber(conn)
    ev = None
    with server.lock:
        rtxn = server.env.begin()
        server.subs.append(sub)
    try:
        try:
            _wire.send(conn, _protocol.snap([b"__meta__", *(_dbname(t) for t in server.tables)]))
            for name, db in [(b"__meta__", server.meta), *((_dbname(t), d) for t, d in server.dbs.items())]:
                rows = []
                for k, v in rtxn.cursor(db=db):
                    if db is server.meta and k.startswith(b"c:"):
                        continue
                    rows.append((bytes(k), bytes(v)))
                    if len(rows) >= _SNAPSHOT_ROWS:
                        _wire.send(conn, _protocol.rows(name, rows))
                        rows = []
                if rows:
                    _wire.send(conn, _protocol.rows(name, rows))
            _wire.send(conn, _protocol.END)
        finally:
            rtxn.abort()
        with server.lock:
            sub.synced = True
            sub.q.put((None, None))
        while True:
            changes, ev = sub.q.get()
            if changes is None:
                _wire.send(conn, _protocol.SYNCED)
                continue
            _wire.send(conn, _protocol.chg(changes))
            if _wire.recv(conn) != _protocol.ACK:
                return
            ev.set()
            ev = None
    except (EOFError, OSError):
        pass
    finally:
        sub.gone = True
        with server.lock:
            server.subs.remove(sub)
        if ev is not None:  # the change set it was sending when the replica went away
            ev.set()
        while not sub.q.empty():  # nobody waits on a replica that is gone
            _, ev = sub.q.get()
            if ev is not None:
                ev.set()
