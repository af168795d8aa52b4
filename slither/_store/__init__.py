"""Shared state: lock-free reads from every process, serialized writes, atomic reload.

::

    any process of the runtime                     StoreServer(S) actor process
    ─────────────────────────                      ───────────────────────────
    S.get / match / select / fold / items  ──▶  LMDB environment (mmap, MVCC)  ◀── single writer
      (one read transaction per call; no          on /dev/shm (ephemeral) or
       actor round trip; a consistent snapshot)   data_dir/<store> (persistent)
    S.put / update / delete / bulk_insert / reload ──Unix socket──▶ write lock → one txn each

One job a module: ``schema`` (tables, views, ANY), ``local`` (the stores this
process knows, their environments), ``reads``, ``client`` (a process's
connection to a server), ``store`` (the ``Store`` base class), ``views``,
``server`` (the single writer), ``replication`` (the leader's side) and
``replica`` (a member's), ``service`` (starting a runtime's stores).

A store is identified by *name* (``Store.store_name``, default the class
name), so a class defined in ``__main__`` or inside a function works in
workers and in the server: the class travels by value (cloudpickle).
"""

from slither._store.local import register_paths, use_replicas
from slither._store.schema import ANY, Table, View
from slither._store.service import StoreHandle, forget_stores, start_stores
from slither._store.store import Store
from slither._store.views import call_view

__all__ = [
    "ANY",
    "Store",
    "StoreHandle",
    "Table",
    "View",
    "call_view",
    "forget_stores",
    "register_paths",
    "start_stores",
    "use_replicas",
]
