"""The ``Runtime``: owns one Thespian actor system, its supervision tree, the
data-plane hub, the pools and the stores. Everything the public API does goes
through one.

::

    Runtime (this process)           the hub's threads; per pool: a timer, a backup reader;
    │                                per long-lived pipe: its handle's link threads
    └── RootSupervisor               actor processes, all in the Thespian admin's
        ├── DispatchSupervisor       process group (never the caller's)
        │   └── DispatchRunner × actors' Dispatch messages (slither._runner)
        ├── PipeSupervisor
        │   └── PipeRunner × long-lived pipes (slither._pipe_runner)
        ├── StoreSupervisor
        │   └── StoreServer × stores
        └── PoolSupervisor × pools
            └── Worker × size        a nanny each, which forks the worker process

Isolation: each runtime has its own admin port (a free one), its own
private 0700 directory (on /dev/shm where present) for sockets and
ephemeral stores, and its own random token. Thespian listens on 127.0.0.1
only (see ``slither._thespian``). ``shutdown()`` waits for every process of
the runtime to exit; ``atexit`` calls it for runtimes left running, and the
root supervisor kills the whole tree if the caller dies without it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import threading
import time
from collections.abc import Mapping
from typing import Any

from loguru import logger
from thespian.actors import ActorSystem

from slither import _aio, _dispatch, _pipe, _thespian, cluster
from slither import _store as store_mod
from slither._actors import FRONT_DOOR, WatchCaller
from slither._executor import Executor
from slither._pipe_runner import PIPES, PipeSupervisor, RemoteEngine
from slither._pool import Hub, Pool, retire
from slither._registry import _current, _live, shut_down_at_exit
from slither._runner import DispatchSupervisor, RunnerPlane
from slither._runtime import pools as pool_start
from slither._runtime import stop
from slither._runtime.spec import PoolSpec
from slither._sys import descendants, pid_alive, pids_in_group, private_dir
from slither.errors import ConfigurationError, RuntimeNotStarted
from slither.supervision import ChildSpec, ChildStarted, Identity, StartChild, SupervisorInit


class Runtime:
    """A running Slither system: pools of worker processes, stores, pipes.

    Args:
        pools: ``{"name": size | PoolSpec | mapping}``; default
            ``{"default": PoolSpec()}``.
        stores: Store subclasses to start.
        base: ``"multiprocTCPBase"`` (default, every actor its own process) or
            ``"simpleSystemBase"`` (actors in this process; debugging only:
            workers become threads, so timeouts cannot kill them).
        data_dir: where ``persistent`` stores keep their data.
        start_timeout: seconds to wait for every worker to connect.
        convention: a :class:`slither.cluster.Convention`: this runtime
            leads a convention that ``slither node --join`` members join
            (see docs/cluster.md).
        actor_system: a ``multiprocTCPBase`` ``ActorSystem`` of your own: the tree
            is built inside it (its root under the global name ``"slither"``)
            instead of in a system of its own, and ``shutdown()`` stops the tree,
            never your system (see docs/actors.md).
        supervisor: the address of a :class:`slither.Supervisor` of yours in
            ``actor_system``: Slither's root becomes its ``temporary`` child
            (stopped with it; a crashed tree is replaced by a new Runtime, which
            owns the caller's side of the pools). The root then has no global name.

    Methods are thread-safe. Use as a context manager, or ``start()`` /
    ``shutdown()``.
    """

    def __init__(
        self,
        pools: Mapping[str, Any] | None = None,
        stores: list | tuple = (),
        *,
        base: str = "multiprocTCPBase",
        data_dir: str | os.PathLike | None = None,
        start_timeout: float = 30.0,
        convention=None,
        actor_system=None,
        supervisor=None,
    ):
        self.pool_specs, self.store_classes = pool_start.check_runtime(pools, stores, base, convention)
        pool_start.check_embedding(actor_system, base, convention, supervisor)
        self._embedded = actor_system
        self._supervisor = supervisor
        self.convention = convention
        self._hub_tcp: tuple | None = None
        self.base = base
        self.data_dir = os.fspath(data_dir) if data_dir is not None else None
        self.start_timeout = start_timeout
        self._lock = threading.RLock()
        self._asys = None
        self._root = None
        self._pgid: int | None = None
        self._root_pid: int | None = None
        self._dir: str | None = None
        self._hub: Hub | None = None
        self._pools: dict[str, Pool] = {}
        self._pool_addrs: dict[str, Any] = {}
        self._stores: dict[str, Any] = {}
        self._capabilities: dict | None = None  # a convention leader's own
        self._replicas = None  # a joining runtime's store replica service
        self._pipes: list = []
        self._pipe_sup = None  # the PipeSupervisor: long-lived pipes' runners
        self._state = "new"
        self._entered: list = []  # contextvars tokens of the with-blocks this runtime is current in
        self.token = secrets.token_hex(16)

    # -- lifecycle -----------------------------------------------------
    @property
    def running(self) -> bool:
        return self._state == "running"

    def __enter__(self) -> Runtime:
        self.start()
        self._entered.append(_current.set(self))
        return self

    def __exit__(self, *exc) -> None:
        if self._entered:
            try:
                _current.reset(self._entered.pop())
            except ValueError:  # left in another context than it was entered in
                _current.set(None)
        self.shutdown()

    def start(self) -> Runtime:
        """Start the actor system, the stores and every pool; wait for the workers.

        Raises:
            RuntimeNotStarted: the runtime was shut down (runtimes do not restart).
            TimeoutError: workers did not connect within ``start_timeout``.
        """
        with self._lock:
            if self._state == "running":
                return self
            if self._state != "new":
                raise RuntimeNotStarted("a Runtime cannot be restarted after shutdown(); create a new one")
            self._state = "starting"
            try:
                self._start()
            except BaseException:
                self._state = "running"  # so shutdown() tears down what exists
                self.shutdown()
                raise
            self._state = "running"
            _live.add(self)
            shut_down_at_exit()
        return self

    def _start(self) -> None:
        t0 = time.monotonic()
        self._dir = private_dir("slither-")
        _thespian.prepare_environment(self._dir)
        conv = self.convention
        caps = pool_start.system_capabilities(self)
        # simpleSystemBase runs in this process: any logDefs would be applied to the caller's
        # own logging (its root set to CRITICAL, its handlers removed); False skips them there.
        log_defs = False if self.base == "simpleSystemBase" else _thespian.QUIET_LOGDEFS
        if self._embedded is not None:
            self._asys = self._embedded
        else:
            with _thespian.creating():  # this system's transports and processes sign their messages
                self._asys = ActorSystem(self.base, caps, logDefs=log_defs, transientUnique=True)
        self._hub = Hub(os.path.join(self._dir, "hub.sock"), self.token, self._store_paths)
        if conv is not None and conv.join:
            self._replicas.start()  # threads only after Thespian forked its admin from this process
            try:
                cluster.await_leader(self._asys, conv.address, self.start_timeout)
            except cluster.NotAccepted as exc:
                raise TimeoutError(str(exc)) from None
        elif conv is not None:
            self._hub_tcp = self._hub.listen_tcp(conv.host, conv.data_port, conv.secret)
        self._root = pool_start.create_root(self)
        ident = self._ask(
            self._root, SupervisorInit(strategy="one_for_one", max_restarts=10, max_seconds=5.0, name="root"), Identity
        )
        if not isinstance(ident, Identity):
            raise RuntimeError(f"root supervisor did not start (got {ident!r})")
        self._pgid = ident.pgid
        self._root_pid = ident.pid
        if self.base != "simpleSystemBase":
            self._asys.tell(self._root, WatchCaller(os.getpid(), os.getpgid(0), self._dir, group=self._embedded is None))
        if self.base != "simpleSystemBase":  # actors' Dispatch messages: runners in processes of their own
            plane = RunnerPlane(self._hub.path, self.token, self._dir, self.start_timeout)
            spec = ChildSpec(FRONT_DOOR, DispatchSupervisor, init=plane)
            if not isinstance(self._ask(self._root, StartChild(spec), ChildStarted), ChildStarted):
                raise RuntimeError("the dispatch supervisor did not start")
            init = SupervisorInit(strategy="one_for_one", name=PIPES)  # each pipe has its own restart intensity
            started = self._ask(self._root, StartChild(ChildSpec(PIPES, PipeSupervisor, init=init)), ChildStarted)
            if not isinstance(started, ChildStarted):
                raise RuntimeError("the pipe supervisor did not start")
            self._pipe_sup = started.address
        if self.store_classes:
            store_mod.start_stores(
                self.store_classes,
                self._stores,
                ask=self._ask,
                root=self._root,
                private_dir=self._dir,
                data_dir=self.data_dir,
                convention=self.convention,
                token=self.token,
            )
        for name, spec in self.pool_specs.items():
            pool_start.start_pool(self, name, spec)
        for pool in self._pools.values():
            if not pool.wait_ready(max(0.1, self.start_timeout - (time.monotonic() - t0))):
                raise TimeoutError(
                    f"pool {pool.name!r}: {len(pool.workers)} of {pool.size} workers connected within {self.start_timeout}s"
                )
        logger.debug("slither runtime started in {:.3f}s (dir {})", time.monotonic() - t0, self._dir)

    def _ask(self, addr, msg, expect: type | tuple = object, timeout: float = 10.0):
        """Ask and wait for a reply of type ``expect``, dropping stale replies
        (an external ActorSystem gets every message sent to it, not only ours)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            reply = self._asys.ask(addr, msg, timeout)
            while reply is not None and not isinstance(reply, expect):
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                reply = self._asys.listen(left)
            return reply

    def _tell(self, addr, msg) -> None:
        """Send an actor a message from this process (a long-lived pipe's Output and Credit)."""
        with self._lock:
            if self._asys is not None:
                self._asys.tell(addr, msg)

    def wait_for_member(self, where: Mapping, timeout: float = 30.0) -> None:
        """Wait until a convention member (or this runtime) offers the capabilities ``where``.

        Raises:
            TimeoutError: none did within ``timeout`` seconds.
        """
        pool_start.wait_for_member(self, where, timeout)

    def restart_pool(self, name: str, spec: PoolSpec | int | None = None, wait: bool = True) -> None:
        """Start pool ``name`` again (after ``PoolDown``), optionally with a new spec."""
        pool_start.restart_pool(self, name, spec, wait)

    def add_pool(self, name: str, spec: PoolSpec | int, wait: bool = True) -> None:
        """Add a new named pool to a running runtime."""
        pool_start.add_pool(self, name, spec, wait)

    def shutdown(self, timeout: float = 2.0) -> None:
        """Stop pipes, pools, stores and the actor system; wait for every process.

        Idempotent. Processes still alive ``timeout`` seconds after Thespian's
        own shutdown, or when none of them has exited for a quarter of
        ``timeout`` (at least 0.5 s) while it waits, are SIGKILLed by process
        group (the actor system's own group, never the caller's), logged at
        INFO (see ``slither._runtime.stop``).
        """
        with self._lock:
            if self._state in ("new", "stopped"):
                self._state = "stopped"
                return
            self._state = "stopping"
            for handle in list(self._pipes):
                try:
                    handle.stop(drain=False)
                except Exception:  # noqa: BLE001
                    logger.exception("stopping a pipe during shutdown")
            for pool in self._pools.values():
                pool.close()
            asys, self._asys = self._asys, None
        deadline = time.monotonic() + timeout
        for name, pool in self._pools.items():
            if self.pool_specs[name].teardown is not None:  # let them tear down before the tree stops
                retire.stop_workers(pool, timeout / 2)
        stall = max(stop.STALL, timeout / 4)
        own_group = (
            self._embedded is None and self._pgid is not None and self._pgid != os.getpgid(0)
        )  # never signal the caller's group
        if self._embedded is not None:
            if asys is not None and self._root is not None:
                stop.stop_embedded_tree(asys, self._root, self._root_pid, deadline)
            stalled = False
        else:
            stalled = asys is not None and stop.stop_actor_system(asys, self._pgid if own_group else None, deadline, stall)
        for pool in self._pools.values():
            pool.disconnect()  # workers exit at once on their socket's EOF, stalled tree or not
        if self._hub is not None:
            self._hub.close()
        if own_group:
            stop.kill_what_is_left(self._pgid, deadline, stalled, f"none exited for {stall}s" if stalled else f"{timeout}s")
        store_mod.forget_stores(self._stores, self.token)
        if self._replicas is not None:
            self._replicas.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
        with self._lock:
            self._state = "stopped"
        _live.discard(self)

    def _require(self) -> None:
        if self._state == "running":
            return
        if self._state == "new":
            raise RuntimeNotStarted("the runtime is not started; call start() first, or use it as a context manager")
        raise RuntimeNotStarted(f"the runtime is {self._state}: it was shut down and cannot restart; create a new Runtime")

    # -- introspection -------------------------------------------------
    @property
    def address(self):
        """The Thespian address of this runtime's tree: where an actor sends
        :class:`slither.actors.Dispatch` (see docs/actors.md)."""
        self._require()
        return self._root

    def pool(self, name: str = "default") -> Pool:
        """The caller-side state of pool ``name`` (for statistics and tests)."""
        self._require()
        try:
            return self._pools[name]
        except KeyError:
            raise ConfigurationError(f"unknown pool {name!r}; this runtime has {sorted(self._pools)}") from None

    def pids(self) -> list[int]:
        """Every live process of this runtime (admin, logger, supervisors, workers, stores;
        embedded in your actor system: its root and every descendant of the root)."""
        if self._embedded is not None:
            return [self._root_pid, *descendants(self._root_pid)] if self._root_pid and pid_alive(self._root_pid) else []
        return pids_in_group(self._pgid) if self._pgid is not None and self._pgid != os.getpgid(0) else []

    def worker_pids(self, pool: str = "default") -> list[int]:
        """The pids of the pool's connected workers."""
        return sorted(pid for _, pid in self.pool(pool).live_workers())

    def _store_paths(self) -> dict:
        return {name: h.paths() for name, h in self._stores.items()}

    # -- the public API, bound to this runtime ---------------------------
    def dispatch(self, items, fn=None, **opts):
        """See :func:`slither.dispatch`."""
        return _dispatch.dispatch(items, fn, runtime=self, **opts)

    def dispatch_stream(self, items, fn=None, **opts):
        """See :func:`slither.dispatch_stream`."""
        return _dispatch.dispatch_stream(items, fn, runtime=self, **opts)

    def call_batch(self, batch, fn=None, **opts):
        """See :func:`slither.call_batch`."""
        return _dispatch.call_batch(batch, fn, runtime=self, **opts)

    def map(self, fn, iterable, **opts):
        """See :func:`slither.map`."""
        return _dispatch.map_values(fn, iterable, runtime=self, **opts)

    # -- asyncio: the same calls, awaited; none of them blocks the event loop (see slither._aio)
    async def adispatch(self, items, fn=None, **opts):
        """``await`` :meth:`dispatch`. Cancelling the awaiting task cancels the dispatch
        (its workers running batches are killed and replaced, as Ctrl-C does)."""
        run = _dispatch.collecting(items, fn, runtime=self, **_dispatch.known_options("adispatch", opts))
        return await _aio.call(_dispatch.collect, run, cancel=run.cancel)

    def adispatch_stream(self, items, fn=None, **opts):
        """``async for item in rt.adispatch_stream(...)``: :meth:`dispatch_stream`, awaited."""
        stream = _dispatch.dispatch_stream(items, fn, runtime=self, **opts)
        return _aio.iterate(stream.batches(), cancel=stream.cancel)

    def amap(self, fn, iterable, **opts):
        """``async for value in rt.amap(fn, iterable)``: :meth:`map`, awaited."""
        stream = _dispatch.map_values(fn, iterable, runtime=self, **opts)
        return _aio.iterate(stream.batches(), cancel=stream.cancel)

    def executor(self, pool: str = "default", *, timeout: float | None = None):
        """A :class:`slither.Executor` (``concurrent.futures``) over pool ``pool`` of this runtime."""
        return Executor(pool, runtime=self, timeout=timeout)

    def run_on_workers(self, fn, pool: str = "default", timeout: float = 30.0) -> list[tuple[int, Any]]:
        """Run ``fn()`` once on every connected worker of ``pool``; ``[(pid, value)]``.

        Useful to collect process-local state (counters, caches) from workers.
        """
        return _dispatch.run_on_workers(self, fn, pool, timeout)

    def run_pipe(self, pipe, items, **opts):
        """See :func:`slither.run_pipe`."""
        return _pipe.run_pipe(pipe, items, runtime=self, **opts)

    def stream_pipe(self, pipe, items, **opts):
        """See :func:`slither.stream_pipe`."""
        return _pipe.stream_pipe(pipe, items, runtime=self, **opts)

    def start_pipe(self, pipe, **opts):
        """See :func:`slither.start_pipe`: a long-lived pipe in a supervised PipeRunner process;
        returns its :class:`slither.PipeHandle`."""
        return _pipe.start_pipe(pipe, runtime=self, **opts)

    def _pipe_engine(self, pipe, name, session_id, metadata, max_pending, restart, max_replays):
        # simpleSystemBase: no processes of its own. A pool placed on convention members: a
        # runner reaches only this host's workers. Either way the stages are threads here.
        placed = any(
            st.kind == "pool" and getattr(self.pool_specs.get(st.options.get("pool", "default")), "where", None) is not None
            for st in pipe.stages
        )
        if self._pipe_sup is None or placed:
            return _pipe.LocalEngine(pipe, self, session_id, metadata, max_pending)
        return RemoteEngine(self, pipe, name, session_id, metadata, max_pending, restart, max_replays)
