"""What batch functions can use inside a worker process, and the worker loop.

Inside a batch function (running in a pool worker)::

    def predict(payloads):
        ctx = slither.worker.context()        # the batch's Context
        tier = slither.worker.view("lookup_feature", {"key": "user:42"})
        ...

Each worker is its own OS process, forked by its pool supervisor. It keeps
its module state between batches (a model loaded once stays loaded), runs
one batch at a time, and talks to the caller over a Unix socket (see
``slither._wire``): a reader thread drains incoming batches so neither side
can block the other, and the main worker thread runs them in order.
"""

from __future__ import annotations

import importlib
import os
import pickle
import queue
import sys
import threading
import traceback
from typing import Any

import cloudpickle

from slither import _wire, telemetry
from slither._item import Context

_current: Context | None = None
_info: dict[str, Any] = {}


def context() -> Context:
    """The Context of the batch being run. Outside a batch: a default Context."""
    return _current if _current is not None else Context(session_id="slither_none")


def info() -> dict:
    """This worker's pool name, index, pid and how many batches it ran."""
    return dict(_info)


def view(name: str, params: dict | None = None) -> dict:
    """Call a Store view by name from worker code (reads the store directly).

    Raises:
        ViewNotFound: no store of this runtime has a view of that name, or
            it is session-scoped and this batch is not part of a pipe run
            that declares its store.
        ViewTimeout: the handler ran past the view's timeout.
    """
    from slither import _store as store

    return store.call_view(name, params or {}, context())


# -- the worker loop (runs in the worker process) ---------------------------

_fn_cache: dict[Any, Any] = {}


def resolve(spec: str):
    """Import ``"package.module:function"`` (the function may be dotted)."""
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(f"fn must be 'module:function' or a callable, got {spec!r}")
    mod_name, _, attr = spec.partition(":")
    obj = importlib.import_module(mod_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{spec!r} is not callable")
    return obj


def _load_fn(key, blob):
    fn = _fn_cache.get(key)
    if fn is None:
        fn = resolve(key[1]) if key[0] == "name" else cloudpickle.loads(blob)
        _fn_cache[key] = fn
    return fn


_contexts: dict[bytes, Context] = {}  # pickled Context -> Context: a dispatch sends the same one with every batch


def _context_of(blob: bytes) -> Context:
    ctx = _contexts.get(blob)
    if ctx is None:
        if len(_contexts) >= 64:
            _contexts.clear()
        ctx = _contexts[blob] = pickle.loads(blob)
    return ctx


def _run_one(msg, sock, lock) -> None:
    """msg = ("batch", ref, fn_key, payloads, pickled Context)."""
    global _current
    _, ref, fn_key, payloads, ctx_blob = msg
    try:
        try:
            _current = _context_of(ctx_blob)  # its metadata may hold objects this worker cannot import
            fn = _load_fn(fn_key, _blobs.get(fn_key))
            results = fn(payloads)
        except BaseException as exc:  # noqa: BLE001 - everything goes back to the caller
            if isinstance(exc, (SystemExit, KeyboardInterrupt)) and not _info.get("in_process"):
                # A batch calling sys.exit() is a crash of this worker, as in a subprocess.
                os._exit(exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int) else 1)
            try:
                reply = ("err", ref, type(exc).__name__, str(exc), traceback.format_exc())
            except MemoryError:  # the frames still hold what exhausted memory: say less
                reply = ("err", ref, type(exc).__name__, "out of memory", "")
        else:
            if not isinstance(results, list):
                reply = ("bad", ref, f"batch function returned {type(results).__name__}, expected a list")
            elif len(results) != len(payloads):
                reply = ("bad", ref, f"batch function returned {len(results)} results for {len(payloads)} items")
            else:
                reply = ("ok", ref, results)
        try:
            chunks = _wire.dumps(reply)
        except Exception as exc:  # noqa: BLE001
            chunks = _wire.dumps(("ser", ref, f"result could not be pickled: {type(exc).__name__}: {exc}"))
        with lock:
            _wire.send_chunks(sock, chunks)
        _info["batches"] = _info.get("batches", 0) + 1
    finally:
        _current = None


_blobs: dict[Any, bytes] = {}


def serve(
    hub_path: str,
    token: str,
    pool: str,
    index: int,
    rlimit_as: int | None,
    in_process: bool = False,
    hub_tcp: tuple | None = None,
    leader_node: str = "",
) -> None:
    """Connect to the caller's hub and run batches until the connection closes."""
    if rlimit_as:
        import resource

        # Address space inherited by fork (thread stacks, malloc arenas of the caller)
        # can already be large: the limit is what the worker may add on top of it.
        limit = _vm_size() + rlimit_as
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    from slither import cluster
    from slither.supervision import node_key

    remote = hub_tcp is not None and (cluster._force_network or node_key() != leader_node)
    if remote:
        sock = cluster.connect(tuple(hub_tcp), cluster._secret)  # a member's worker: the network path
        token = ""  # the handshake authenticated us; the token is for the leader's Unix sockets only
    else:
        sock = _wire.connect(hub_path, timeout=10)
    lock = threading.Lock()
    _wire.send(sock, ("worker", token, pool, index, os.getpid()))
    hello = _wire.recv(sock)  # ("init", sys_path, cwd, store_paths)
    _, sys_path, cwd, store_paths = hello
    sys.path[:] = list(sys_path) + [p for p in sys.path if p not in sys_path]
    try:
        os.chdir(cwd)
    except OSError:
        pass
    from slither import _store as store

    store._on_member = remote  # stores: this node's replicas, writes over TCP to the leader
    store._register_paths(store_paths)
    _info.update(pool=pool, index=index, pid=os.getpid(), batches=0, in_process=in_process)

    def forward(event, measurements, metadata):
        chunks = _wire.dumps(("event", event, measurements, metadata))
        with lock:
            _wire.send_chunks(sock, chunks)

    if not in_process:
        telemetry._forward = forward
    inbox: queue.SimpleQueue = queue.SimpleQueue()

    def reader():
        recv = _wire.Reader(sock).recv
        try:
            while True:
                inbox.put(recv())
        except BaseException:  # noqa: BLE001 - EOF, or e.g. MemoryError while a batch hogs memory
            # Without its reader this worker could never get work again: end it, so the
            # caller sees a crash and the supervisor starts a fresh one.
            os._exit(0) if not in_process else inbox.put(None)

    threading.Thread(target=reader, name="slither-worker-reader", daemon=True).start()
    while True:
        msg = inbox.get()
        if msg is None:
            if in_process:
                return
            os._exit(0)  # the caller went away: nothing left to serve
        kind = msg[0]
        if kind == "batch":
            _run_one(msg, sock, lock)
        elif kind == "fn":
            _blobs[msg[1]] = msg[2]
        elif kind == "probe":
            # ("probe", ref, fn_key): run fn with no payloads, outside a batch, on this worker.
            _run_probe(msg, sock, lock)
        elif kind == "stores":
            store._register_paths(msg[1])


def _run_probe(msg, sock, lock) -> None:
    _, ref, fn_key = msg
    try:
        value = _load_fn(fn_key, _blobs.get(fn_key))()
        reply = ("ok", ref, [value])
    except Exception as exc:  # noqa: BLE001
        reply = ("err", ref, type(exc).__name__, str(exc), traceback.format_exc())
    with lock:
        _wire.send(sock, reply)


def _vm_size() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


__all__ = ["context", "view", "info"]
