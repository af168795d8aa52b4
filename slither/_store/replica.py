"""Store replicas on convention members.

::

    leader host                                   member host (``slither node``)
    ───────────                                   ─────────────────────────────
    StoreServer(S) ── TCP, HMAC handshake ──▶  replica thread of the node process
      commit → change set                       one LMDB transaction per change set
      waits for "ack" before it answers         (a reload: all old or all new)
      the writer                                        │ LMDB files on this host
                                                        ▼
                                               workers here read S.get(...) locally

A worker on a member asks its node's replica service (a Unix socket in the
node's private directory, inherited as :data:`slither._net.MEMBER.replica_sock`)
for the local path of a store on first read; the service starts following
the leader's store server if it does not yet, and answers once the replica
holds a snapshot and every change committed before it. From then on every
write the leader acknowledges has been applied here first (the server waits
for each replica's ``ack`` before it replies; a replica that does not answer
within ``REPLICA_ACK_TIMEOUT`` is cut off and starts again from a snapshot).
A replica never holds a change the leader did not commit: it receives change
sets only after their commit.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import threading

import lmdb
from loguru import logger

from slither import _net, _protocol, _wire
from slither._store.schema import MAP_SIZE
from slither._sys import private_dir, serve_forever
from slither.errors import StoreError

READY_TIMEOUT = 30.0


class _Replica:
    def __init__(self, service: ReplicaService, name: str, address: tuple[str, int]):
        self.service = service
        self.name = name
        self.address = address
        self.path = os.path.join(service.dir, "stores", f"{address[0]}_{address[1]}", name)
        os.makedirs(self.path, exist_ok=True)
        self.env = lmdb.open(self.path, map_size=MAP_SIZE, max_dbs=256, subdir=True, sync=False, metasync=False, max_readers=2048)
        self.dbs: dict[bytes, object] = {}
        self.ready = threading.Event()
        self.error = "not connected yet"
        self.sock: socket.socket | None = None
        self.thread = threading.Thread(target=self._run, name=f"slither-replica-{name}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        delay = 0.05
        while not self.service.closed.is_set():
            try:
                self.sock = _net.connect(self.address, self.service.secret, timeout=10)
                self.sock.settimeout(None)
                _wire.send(self.sock, (secrets.token_hex(8), 0, _protocol.SUBSCRIBE))
                self._follow(_wire.Reader(self.sock).recv)
            except Exception as exc:  # noqa: BLE001 - the leader restarted, the network went away...
                self.error = f"{type(exc).__name__}: {exc}"
                if not self.service.closed.is_set():
                    logger.debug("slither replica {}: {}; reconnecting", self.name, self.error)
            finally:
                if self.sock is not None:
                    self.sock.close()
                    self.sock = None
            # Between attempts: nothing announces that the leader's server is back.
            if self.service.closed.wait(delay):
                break
            delay = min(1.0, delay * 2)

    def _db(self, name: bytes):
        db = self.dbs.get(name)
        if db is None:
            db = self.dbs[name] = self.env.open_db(name)
        return db

    def _follow(self, recv) -> None:
        head = recv()
        if head[0] != "snap":
            raise StoreError(f"replica of {self.name!r}: expected a snapshot, got {head[0]!r}")
        for name in head[1]:  # opened outside the write transaction below
            self._db(name)
        with self.env.begin(write=True) as txn:  # the snapshot replaces everything at once
            for name in head[1]:
                txn.drop(self.dbs[name], delete=False)
            while True:
                msg = recv()
                if msg[0] == "end":
                    break
                db = self.dbs[msg[1]]
                for k, v in msg[2]:
                    txn.put(k, v, db=db)
        while True:
            msg = recv()
            if msg[0] == "chg":
                with self.env.begin(write=True) as txn:  # one change set, one transaction
                    for change in msg[1]:
                        op, db = change[0], self.dbs[change[1]]
                        if op == "p":
                            txn.put(change[2], change[3], db=db)
                        elif op == "d":
                            txn.delete(change[2], db=db)
                        else:
                            txn.drop(db, delete=False)
                _wire.send(self.sock, _protocol.ACK)
            elif msg[0] == "ready":
                self.error = ""
                self.ready.set()

    def close(self) -> None:
        """Stop following the leader's store; the LMDB environment is closed once the thread ends."""
        sock = self.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.thread.join(5)
        if not self.thread.is_alive():
            self.env.close()


class ReplicaService:
    """Runs in the ``slither node`` process: keeps one replica per leader store."""

    def __init__(self, secret: bytes, base: str | None = None):
        self.dir = private_dir("slither-node-", base)
        self.secret = secret
        self.sock_path = os.path.join(self.dir, "replicas.sock")
        self.closed = threading.Event()
        self._replicas: dict[tuple, _Replica] = {}
        self._lock = threading.Lock()
        self._srv = _wire.listen(self.sock_path)

    def start(self) -> None:
        """Accept this node's workers asking for replicas (after Thespian forked its admin)."""
        threading.Thread(
            target=serve_forever,
            args=(self._srv, self._serve, "slither-replica", self.closed.is_set),
            name="slither-replicas",
            daemon=True,
        ).start()

    def _serve(self, conn, _peer=None) -> None:
        try:
            while True:
                _, name, address = _wire.recv(conn)  # ("ensure", store name, (host, port))
                _wire.send(conn, self.ensure(name, tuple(address)))
        except (EOFError, OSError):
            pass
        finally:
            conn.close()

    def ensure(self, name: str, address: tuple) -> tuple:
        """``("ok", path)`` of an in-sync replica of store ``name`` served at ``address``
        (made on first use), or ``("err", reason)``."""
        with self._lock:
            if self.closed.is_set():
                return ("err", "the node is shutting down")
            rep = self._replicas.get((address, name))
            if rep is None:
                rep = self._replicas[(address, name)] = _Replica(self, name, address)
        if rep.ready.wait(READY_TIMEOUT):
            return ("ok", rep.path)
        return ("err", f"no replica of store {name!r} from {address[0]}:{address[1]} within {READY_TIMEOUT}s ({rep.error})")

    def close(self) -> None:
        """Refuse new requests and stop accepting connections."""
        self.closed.set()
        try:
            self._srv.close()
        except OSError:
            pass
        with self._lock:
            reps = list(self._replicas.values())
        for rep in reps:
            rep.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def ensure(name: str, address: tuple) -> str:
    """In a worker on a member: the local path of store ``name``'s replica, in sync."""
    if _net.MEMBER.replica_sock is None:
        raise StoreError(
            f"store {name!r}: this worker runs on a convention member with no replica service; start members with `slither node`"
        )
    s = _wire.connect(_net.MEMBER.replica_sock, timeout=10)
    try:
        s.settimeout(READY_TIMEOUT + 10)
        _wire.send(s, _protocol.ensure(name, tuple(address)))
        status, value = _wire.recv(s)
    finally:
        s.close()
    if status != "ok":
        raise StoreError(f"store {name!r}: {value}")
    return value
