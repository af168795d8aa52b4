"""Starting a runtime's actor system and pools: the system's capabilities (and this
process readied for its convention role), each pool's caller-side ``Pool``, its
supervisor and workers, and (on a convention) waiting for a member that offers what
a pool needs."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

from thespian.actors import ActorExitRequest, ActorSystem, NoCompatibleSystemForActor

from slither import _thespian, cluster
from slither._actors import PlacementProbe, PoolInit, PoolSupervisor, RootSupervisor, Worker, WorkerInit
from slither._dispatch.options import resolve_fn
from slither._pool import Pool
from slither._runtime.spec import PoolSpec, as_spec
from slither._store import Store
from slither._sys import free_port, node_key
from slither.actors import ROOT_NAME
from slither.cluster import Convention
from slither.errors import ConfigurationError, RuntimeNotStarted
from slither.supervision import (
    ChildSpec,
    ChildStarted,
    ChildStopped,
    Identity,
    StartChild,
    StopChild,
    SupervisorInit,
    WhichChildren,
)

BASES = ("multiprocTCPBase", "simpleSystemBase")


def check_where(convention, name: str, spec: PoolSpec) -> None:
    """A pool placed on convention members needs a runtime that leads one."""
    if spec.where is not None and (convention is None or convention.join):
        raise ConfigurationError(
            f"pool {name!r}: where={spec.where!r} needs a runtime that leads a convention (Runtime(convention=...))"
        )


def wait_for_member(rt, where: Mapping, timeout: float = 30.0) -> None:
    """Wait until a convention member (or this runtime) offers the capabilities ``where``.

    Raises:
        TimeoutError: none did within ``timeout`` seconds.
    """
    if rt._asys is None:
        raise RuntimeNotStarted("the runtime is not started")
    deadline = time.monotonic() + timeout
    while True:
        try:
            with rt._lock:
                probe = rt._asys.createActor(PlacementProbe, targetActorRequirements=dict(where))
                rt._asys.tell(probe, ActorExitRequest())
            return
        except NoCompatibleSystemForActor:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no convention member offers {dict(where)!r} within {timeout}s") from None
            time.sleep(0.1)  # members announce themselves to the leader; nothing here to wait on


def start_pool(rt, name: str, spec: PoolSpec) -> Pool:
    """Start pool ``name``: its caller-side state, its supervisor and its workers (not waited for)."""
    check_where(rt.convention, name, spec)
    if spec.where is not None:
        for req in {tuple(sorted(r.items())) for r in spec.placements}:
            try:
                wait_for_member(rt, dict(req), rt.start_timeout)
            except TimeoutError as exc:
                raise TimeoutError(f"pool {name!r}: {exc}") from None
    pool = Pool(name, spec.size, depth=spec.depth)
    pool.max_batches = spec.max_batches
    pool.max_rss = spec.max_rss
    if spec.setup is not None or spec.teardown is not None:
        setup = resolve_fn(spec.setup) if spec.setup is not None else (None, None)
        teardown = resolve_fn(spec.teardown) if spec.teardown is not None else (None, None)
        pool.worker_setup = (*setup, *teardown)
    rt._hub.pools[name] = pool
    rt._pools[name] = pool
    started = rt._ask(rt._root, StartChild(ChildSpec(f"pool:{name}", PoolSupervisor, restart="temporary")), ChildStarted)
    if not isinstance(started, ChildStarted):
        raise RuntimeError(f"pool {name!r}: supervisor did not start (got {started!r})")
    addr = started.address
    rt._pool_addrs[name] = addr
    workers = tuple(
        ChildSpec(
            f"worker-{i}",
            Worker,
            init=WorkerInit(rt._hub.path, rt.token, name, i, spec.max_memory, os.getpid(), rt._hub_tcp, node_key()),
            requirements=req,
        )
        for i, req in enumerate(spec.placements)
    )
    with rt._lock:
        rt._asys.tell(addr, PoolInit(rt._hub.path, rt.token, name))
    ident = rt._ask(
        addr,
        SupervisorInit(
            strategy="one_for_one",
            max_restarts=spec.max_restarts,
            max_seconds=spec.max_seconds,
            children=workers,
            name=name,
            capabilities=rt._capabilities,  # a leader places workers on live members itself
        ),
        Identity,
    )
    if isinstance(ident, Identity) and rt.base != "simpleSystemBase":
        with pool.lock:
            pool.sup_pid = ident.pid
    return pool


def system_capabilities(rt) -> dict:
    """The actor system's capabilities, and this process readied for its convention role."""
    conv = rt.convention
    if conv is not None and conv.join:
        # A member, like `slither node`: the leader may place workers here; they read
        # stores from replicas this process keeps (see slither._store.replica).
        port, caps, rt._replicas = cluster._member_setup(
            conv.address, conv.secret, conv.capabilities, conv.name, 0, conv.listen, rt._dir
        )
        return {"Admin Port": port, **caps}
    if conv is not None:
        _thespian.bind_to(conv.host)
        _thespian.add_key(conv.secret)  # Thespian messages between hosts are signed with it
        caps = {"Admin Port": conv.port, "node": "leader", **{str(k): str(v) for k, v in conv.capabilities.items()}}
        rt._capabilities = {k: v for k, v in caps.items() if k != "Admin Port"}
        return caps
    return {"Admin Port": free_port()}


def check_embedding(actor_system, base: str, convention, supervisor=None) -> None:
    """``Runtime(actor_system=..., supervisor=...)``: a multiprocTCPBase system, no convention of its own."""
    if actor_system is None:
        if supervisor is not None:
            raise ConfigurationError("supervisor: needs actor_system=, the system that supervisor runs in")
        return
    if not isinstance(actor_system, ActorSystem):
        raise ConfigurationError(f"actor_system: expected a thespian ActorSystem, got {type(actor_system).__name__}")
    if base != "multiprocTCPBase":
        raise ConfigurationError("actor_system: the tree runs in your system, which must be multiprocTCPBase; leave base alone")
    if convention is not None:
        raise ConfigurationError("actor_system and convention cannot be combined: a convention needs a system of its own")


def create_root(rt):
    """The root supervisor, under the global name ``"slither"`` of its system. In a user's
    system that already runs one, a second runtime's root gets no name (and is told apart
    by its children: a fresh root has none). With ``supervisor=``, a temporary child of
    that supervisor (of the user's), with no global name."""
    if rt.base == "simpleSystemBase":
        return rt._asys.createActor(RootSupervisor)
    if rt._supervisor is not None:  # the root is a temporary child of the user's own Supervisor
        # No global name here: Thespian hands back an existing actor of that name instead
        # of creating one, and the supervisor would then own another runtime's root.
        spec = ChildSpec(f"slither-{rt.token[:8]}", RootSupervisor, restart="temporary")
        started = rt._ask(rt._supervisor, StartChild(spec), ChildStarted)
        if not isinstance(started, ChildStarted):
            raise RuntimeError(f"your supervisor did not start Slither's root (got {started!r})")
        return started.address
    root = rt._asys.createActor(RootSupervisor, globalName=ROOT_NAME)
    if rt._ask(root, WhichChildren(), list) not in ([], None):
        root = rt._asys.createActor(RootSupervisor)  # "slither" is taken by another runtime
    return root


def check_runtime(pools, stores, base: str, convention) -> tuple[dict, list]:
    """A Runtime's arguments checked: (its pool specs by name, its Store classes).

    Raises:
        ConfigurationError: naming the argument and what it got.
    """
    if base not in BASES:
        raise ConfigurationError(f"base must be one of {BASES}, got {base!r}")
    if convention is not None and not isinstance(convention, Convention):
        raise ConfigurationError(f"convention: expected a slither.cluster.Convention, got {type(convention).__name__}")
    if convention is not None and base != "multiprocTCPBase":
        raise ConfigurationError("convention: needs base='multiprocTCPBase'")
    pools = {"default": PoolSpec()} if pools is None else dict(pools)
    specs = {n: as_spec(n, v) for n, v in pools.items()}
    for n, spec in specs.items():
        check_where(convention, n, spec)
    classes = list(stores)
    for s in classes:
        if not (isinstance(s, type) and issubclass(s, Store)):
            raise ConfigurationError(f"stores: expected Store subclasses, got {s!r}")
    return specs, classes


def restart_pool(rt, name: str, spec: PoolSpec | int | None = None, wait: bool = True) -> None:
    """Start pool ``name`` again (after ``PoolDown``), optionally with a new spec."""
    rt._require()
    with rt._lock:
        spec = as_spec(name, spec) if spec is not None else rt.pool_specs[name]
        old = rt._pools.pop(name, None)
        if old is not None:
            old.close()
            rt._ask(rt._root, StopChild(f"pool:{name}"), ChildStopped)
        rt.pool_specs[name] = spec
        pool = start_pool(rt, name, spec)
    if wait and not pool.wait_ready(rt.start_timeout):
        raise TimeoutError(f"pool {name!r}: workers did not connect within {rt.start_timeout}s")


def add_pool(rt, name: str, spec: PoolSpec | int, wait: bool = True) -> None:
    """Add a new named pool to a running runtime."""
    rt._require()
    with rt._lock:
        if name in rt._pools:
            raise ConfigurationError(f"pool {name!r} already exists")
        spec = as_spec(name, spec)
        rt.pool_specs[name] = spec
        pool = start_pool(rt, name, spec)
    if wait and not pool.wait_ready(rt.start_timeout):
        raise TimeoutError(f"pool {name!r}: workers did not connect within {rt.start_timeout}s")
