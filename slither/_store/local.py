"""The stores this process knows (the per-process registry) and their LMDB environments.

Each process opens an environment itself, keyed by pid: one inherited across
``fork`` is never used (and never closed: that could disturb the parent's
reader slots).
"""

from __future__ import annotations

import os
import threading
from typing import Any

import cloudpickle
import lmdb

from slither._store import replica
from slither._store.client import Client
from slither._store.schema import MAP_SIZE, _dbname, _store_name
from slither.errors import StoreError


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
                        self.path = replica.ensure(self.name, self.remote)
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

    def client(self) -> Client:
        pid = os.getpid()
        with self._lock:
            if self._client is None or self._client.pid != pid:
                self._client = Client(self)
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


def _entry(store) -> _Entry:
    name = _store_name(store)
    e = _registry.get(name)
    if e is None:
        raise StoreError(f"store {name!r} is not started in this process; add it to Runtime(stores=[...]) and start the runtime")
    return e


_on_member = False  # a worker of a convention member: reads this node's replicas (see use_replicas)


def use_replicas(on: bool) -> None:
    """In a worker on a convention member: read this node's replicas, write over TCP to the leader."""
    global _on_member
    _on_member = on


def register_paths(paths: dict) -> None:
    """Called in workers with the caller's store registrations."""
    for name, info in paths.items():
        old = _registry.get(name)
        if old is None or old.leader_path != info["path"]:
            _registry[name] = _Entry(name, info)
