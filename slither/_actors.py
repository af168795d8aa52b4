"""The runtime's actors and the control messages between them.

::

    RootSupervisor            one_for_one; watches the caller's pid
    ├── PoolSupervisor(p)      temporary child of the root; restart intensity per PoolSpec
    │   └── Worker × size      permanent; each serves batches over the data plane
    ├── StoreSupervisor        one_for_one
    │   └── StoreServer(S)     the single writer of store S
    └── PipeSupervisor         (pipes' long-lived runners live in the caller; see pipe.py)

Control (creation, restarts, exits) rides Thespian; batches and store writes
ride Unix sockets (``slither._wire``).
"""

from __future__ import annotations

import os
import shutil
import signal
import threading

import attrs
from thespian.actors import ActorExitRequest, WakeupMessage

from slither import _wire
from slither.supervision import SupervisedActor, Supervisor, offers, pid_alive


def _cheap_repr(self) -> str:
    return f"<{type(self).__name__}>"


@attrs.frozen(repr=False)
class WatchCaller:
    pid: int
    pgid: int
    cleanup: str = ""  # a private directory of the caller's, removed when it dies without shutdown
    __repr__ = _cheap_repr


@attrs.frozen(repr=False)
class WorkerInit:
    hub_path: str
    token: str
    pool: str
    index: int
    rlimit_as: int | None = None
    owner_pid: int = 0  # the caller's pid: a worker running inside it (simpleSystemBase) must never exit it
    hub_tcp: tuple | None = None  # a convention leader's data-plane (host, port), for workers on members
    leader_node: str = ""  # node_key() of the leader: a worker on the same node takes the Unix socket
    __repr__ = _cheap_repr


@attrs.frozen(repr=False)
class PoolInit:
    hub_path: str
    token: str
    pool: str
    __repr__ = _cheap_repr


class RootSupervisor(Supervisor):
    """The root of the tree. Also the backstop for a caller that died without
    ``shutdown()``: when the caller's pid is gone it kills its own process
    group (the admin's, which every actor shares, and never the caller's)."""

    _caller: WatchCaller | None = None

    def receiveMessage(self, message, sender):
        if isinstance(message, WatchCaller):
            self._caller = message
            self._watch_caller()
            return
        if isinstance(message, WakeupMessage) and message.payload == "caller":
            if self._caller is not None and not pid_alive(self._caller.pid):
                if self._caller.cleanup:  # ephemeral stores, sockets, replicas: nobody else removes them
                    shutil.rmtree(self._caller.cleanup, ignore_errors=True)
                pgid = os.getpgid(0)
                if pgid != self._caller.pgid:  # never the caller's own group
                    os.killpg(pgid, signal.SIGKILL)
            self._watch_caller()
            return
        super().receiveMessage(message, sender)

    def _watch_caller(self):
        from datetime import timedelta

        self.wakeupAfter(timedelta(seconds=0.2), payload="caller")


class PoolSupervisor(Supervisor):
    """Supervises one pool's workers; tells the caller's hub when it gives up."""

    _pool: PoolInit | None = None

    def receiveMessage(self, message, sender):
        if isinstance(message, PoolInit):
            self._pool = message
            self._notify(("pool_up", message.token, message.pool, os.getpid()))
            return
        super().receiveMessage(message, sender)

    def _notify(self, msg) -> None:
        # Connect, send, close: a socket kept open here would be inherited by
        # every worker this supervisor forks, and its EOF would never come.
        try:
            s = _wire.connect(self._pool.hub_path, timeout=5)
            try:
                _wire.send(s, msg)
            finally:
                s.close()
        except OSError:
            pass

    def on_give_up(self) -> None:
        if self._pool is not None:
            self._notify(("pool_down", self._pool.token, self._pool.pool, os.getpid()))


class PlacementProbe(SupervisedActor):
    """Created to learn whether some convention member offers given capabilities."""

    actorSystemCapabilityCheck = staticmethod(offers)  # PoolSpec(where=...) becomes the requirements

    def on_message(self, message, sender):
        pass


class Worker(SupervisedActor):
    """A pool worker: one OS process, serving batches on a thread of its own so
    Thespian's message loop (and its transmit timeouts) is never blocked by
    user code."""

    _started = False

    actorSystemCapabilityCheck = staticmethod(offers)  # PoolSpec(where=...) becomes the requirements

    def on_message(self, message, sender):
        if isinstance(message, WorkerInit) and not self._started:
            self._started = True
            from slither import worker

            in_process = os.getpid() == message.owner_pid

            def run():
                try:
                    worker.serve(
                        message.hub_path,
                        message.token,
                        message.pool,
                        message.index,
                        None if in_process else message.rlimit_as,
                        in_process=in_process,
                        hub_tcp=message.hub_tcp,
                        leader_node=message.leader_node,
                    )
                except BaseException:  # noqa: BLE001
                    import traceback

                    traceback.print_exc()
                if not in_process:
                    os._exit(0)

            threading.Thread(target=run, name="slither-worker", daemon=True).start()

    def handles_system(self, message) -> bool:
        return False


__all__ = ["RootSupervisor", "PoolSupervisor", "Worker", "WorkerInit", "PoolInit", "WatchCaller", "ActorExitRequest"]
