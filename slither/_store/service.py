"""Starting a runtime's stores under its supervision tree, and forgetting them at shutdown."""

from __future__ import annotations

import os

import cloudpickle

from slither import _protocol
from slither._store.local import _Entry, _registry, _server_envs
from slither._store.server import StoreInit, StoreServer
from slither._sys import free_port
from slither.errors import ConfigurationError, StoreError
from slither.supervision import ChildSpec, ChildStarted, Identity, StartChild, Supervisor, SupervisorInit


class StoreHandle:
    """What a runtime keeps of one of its stores."""

    def __init__(self, name: str, info: dict):
        self.name = name
        self.info = info

    def paths(self) -> dict:
        return self.info

    def server_pid(self) -> int:
        return _registry[self.name].client().request(_protocol.PING)["pid"]


def start_stores(classes, handles: dict, *, ask, root, private_dir: str, data_dir, convention, token: str) -> None:
    """Start a server for each Store class under a ``stores`` supervisor of ``root``
    (``ask(address, message, reply type)`` talks to the tree); ``handles`` gets a
    :class:`StoreHandle` per store.

    Raises:
        ConfigurationError: two stores with one name, a persistent store without
            ``data_dir``, a class that cannot be pickled for its server.
        StoreError: a store's first ``load`` failed.
    """
    specs = []
    seen = set()
    for cls in classes:
        name = cls.store_name
        if name in seen:
            raise ConfigurationError(f"two stores are named {name!r}; set store_name on one of them")
        seen.add(name)
        if cls.persistent:
            if data_dir is None:
                raise ConfigurationError(f"store {name!r} is persistent: give Runtime(data_dir=...)")
            path = os.path.join(data_dir, name)
        else:
            path = os.path.join(private_dir, "stores", name)
        os.makedirs(path, exist_ok=True)
        try:
            blob = cloudpickle.dumps(cls)
        except Exception as exc:
            raise ConfigurationError(f"store {name!r}: the class cannot be pickled for its server: {exc}") from exc
        tables = tuple((t.name, t.type) for t in cls.tables)
        conv = convention
        # On a convention, members follow the store over TCP: a port fixed for the
        # runtime's life, so a restarted server is found where the old one was.
        tcp = (conv.host, free_port(conv.host)) if conv is not None and not conv.join else None
        info = {
            "path": path,
            "sock": os.path.join(private_dir, f"store-{len(specs)}.sock"),
            "tables": tables,
            "cls": blob,
            "owner": token,
            "tcp": tcp,
        }
        init = StoreInit(name, path, info["sock"], blob, tables, cls.persistent, tcp, conv.secret if conv else None)
        specs.append((cls, info, ChildSpec(f"store:{name}", StoreServer, init=init)))
    started = ask(root, StartChild(ChildSpec("stores", Supervisor)), ChildStarted)
    ask(
        started.address,
        SupervisorInit(
            strategy="one_for_one", max_restarts=10, max_seconds=5.0, children=tuple(s for _, _, s in specs), name="stores"
        ),
        Identity,
    )
    for cls, info, _ in specs:
        _registry[cls.store_name] = _Entry(cls.store_name, info, cls)
        handles[cls.store_name] = StoreHandle(cls.store_name, info)
    for cls, _info, _ in specs:
        status = _registry[cls.store_name].client().request(_protocol.PING)
        if status["load_error"]:
            raise StoreError(status["load_error"])


def forget_stores(handles: dict, token: str) -> None:
    """Close this process's view of the stores in ``handles`` (those of the runtime ``token``)."""
    for name in list(handles):
        e = _registry.get(name)
        if e is not None and e.owner == token:
            e.close()
            del _registry[name]
        handle = handles[name]
        env = _server_envs.pop(handle.info["path"], None)  # in-process mode: the server ran here
        if env is not None:
            env.close()
    handles.clear()
