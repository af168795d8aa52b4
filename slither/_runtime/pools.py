"""Starting a runtime's actor system and pools: the system's capabilities (and this
process readied for its convention role), each pool's caller-side ``Pool``, its
supervisor and workers, and (on a convention) waiting for a member that offers what
a pool needs."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

from thespian.actors import ActorExitRequest, NoCompatibleSystemForActor

from slither import _thespian, cluster
from slither._actors import PlacementProbe, PoolInit, PoolSupervisor, Worker, WorkerInit
from slither._dispatch.options import resolve_fn
from slither._pool import Pool
from slither._runtime.spec import PoolSpec
from slither._sys import free_port, node_key
from slither.errors import ConfigurationError, RuntimeNotStarted
from slither.supervision import ChildSpec, ChildStarted, Identity, StartChild, SupervisorInit


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
