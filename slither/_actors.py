"""The runtime's actors and the control messages between them.

::

    RootSupervisor            one_for_one; watches the caller's pid
    ├── DispatchSupervisor     actors' Dispatch messages (slither._runner)
    ├── PipeSupervisor         long-lived pipes' runners (slither._pipe_runner)
    ├── PoolSupervisor(p)      temporary child of the root; restart intensity per PoolSpec
    │   └── Worker × size      permanent; a nanny that forks the worker process and reaps it
    └── StoreSupervisor        one_for_one (see slither._store.service)
        └── StoreServer(S)     the single writer of store S

``run_pipe`` and ``stream_pipe`` run their stages as threads of the caller;
a long-lived pipe's stages run in its PipeRunner. Control (creation,
restarts, exits) rides Thespian; batches, pipe items and store writes ride
Unix sockets (``slither._wire``).
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import traceback

import attrs
from thespian.actors import ActorExitRequest, WakeupMessage

from slither import _protocol, _wire, _worker
from slither._placement import PlacingSupervisor
from slither._sys import cheap_repr, node_key, pid_alive
from slither.supervision import SupervisedActor, Supervisor, offers

_cheap_repr = cheap_repr


@attrs.frozen(repr=False)
class WatchCaller:
    pid: int
    pgid: int
    cleanup: str = ""  # a private directory of the caller's, removed when it dies without shutdown
    group: bool = True  # the tree owns its process group (its own actor system); else it is the user's
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


FRONT_DOOR = "dispatch"  # the root's child that takes the messages it does not know (slither._runner)
PIPES = "pipes"  # the root's child that supervises long-lived pipes' runners (slither._pipe_runner)


@attrs.frozen(repr=False)
class Forwarded:
    """A message the root passed on, with the actor that sent it."""

    message: object
    sender: object
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
                if not self._caller.group:  # embedded: the group is the user's; the tree is linked to this root
                    os._exit(0)
                pgid = os.getpgid(0)
                if pgid != self._caller.pgid:  # never the caller's own group
                    os.killpg(pgid, signal.SIGKILL)
            self._watch_caller()
            return
        super().receiveMessage(message, sender)

    def on_other_message(self, message, sender) -> None:
        # An actor's slither.actors message (Runtime.address is this root's): a long-lived pipe's
        # (it names the pipe) to the pipe supervisor, any other to the front door.
        door = PIPES if isinstance(getattr(message, "pipe_target", None), str) else FRONT_DOOR
        front = next((c.address for c in self._children if c.spec.id == door), None)
        if front is not None:
            self.send(front, Forwarded(message, sender))

    def _watch_caller(self):
        from datetime import timedelta

        self.wakeupAfter(timedelta(seconds=0.2), payload="caller")


class PoolSupervisor(PlacingSupervisor):
    """Supervises one pool's workers; tells the caller's hub when it gives up."""

    _pool: PoolInit | None = None

    def receiveMessage(self, message, sender):
        if isinstance(message, PoolInit):
            self._pool = message
            self._notify(_protocol.pool_up(message.token, message.pool, os.getpid()))
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
            self._notify(_protocol.pool_down(self._pool.token, self._pool.pool, os.getpid()))


class PlacementProbe(SupervisedActor):
    """Created to learn whether some convention member offers given capabilities."""

    actorSystemCapabilityCheck = staticmethod(offers)  # PoolSpec(where=...) becomes the requirements

    def on_message(self, message, sender):
        pass


class Worker(SupervisedActor):
    """The nanny of one pool worker (see ``slither._worker``): forks the worker
    process on its first ``WorkerInit``, reaps it, reports how it ended to the
    caller's hub, and exits so that its supervisor restarts it.

    With ``simpleSystemBase`` (everything in the caller's process, debugging
    only) the worker is a thread of the caller instead."""

    _started = False

    actorSystemCapabilityCheck = staticmethod(offers)  # PoolSpec(where=...) becomes the requirements

    def on_message(self, message, sender):
        if not isinstance(message, WorkerInit) or self._started:
            return
        self._started = True
        if os.getpid() == message.owner_pid:
            threading.Thread(target=_serve_in_process, args=(message,), name="slither-worker", daemon=True).start()
            return
        pid, fault_r = _fork(message)
        threading.Thread(target=_nanny, args=(message, pid, fault_r), name="slither-nanny", daemon=True).start()


def _serve_in_process(init: WorkerInit) -> None:
    try:
        _worker.serve(init.hub_path, init.token, init.pool, init.index, None, in_process=True)
    except BaseException:  # noqa: BLE001
        traceback.print_exc()


def _fork(init: WorkerInit) -> tuple[int, int]:
    """Fork the worker process from the calling thread: (its pid, the read end of its fault pipe).

    The worker dies with the thread that forked it (``PR_SET_PDEATHSIG`` follows the
    thread): the nanny's main thread, or the nanny loop, which outlives its worker.
    """
    fault_r, fault_w = os.pipe()
    nanny = os.getpid()
    pid = os.fork()
    if pid == 0:
        os.close(fault_r)
        _worker.run_forked(init, nanny, fault_w)
    os.close(fault_w)
    return pid, fault_r


def _nanny(init: WorkerInit, pid: int, fault_r: int) -> None:
    """Wait for the worker to end. One that retired (max_batches) is replaced here; one
    that stopped at shutdown is not; otherwise tell the caller's hub how it ended and
    end this nanny (its supervisor restarts it)."""
    while True:
        code, fault = _reap(pid, fault_r)
        if code == _protocol.EXIT_RECYCLE:
            pid, fault_r = _fork(init)
            continue
        if code == _protocol.EXIT_STOP:
            return  # the runtime is stopping: this nanny ends with the tree
        break
    if init.hub_tcp is None or init.leader_node == node_key():  # the hub's Unix socket is on this host
        msg = _protocol.exit_report(init.token, init.pool, init.index, pid, code, fault)
        try:
            s = _wire.connect(init.hub_path, timeout=5)
            try:
                _wire.send(s, msg)
            finally:
                s.close()
        except OSError:
            pass  # the caller is gone or shutting down: nobody to tell
    os._exit(0)


def _reap(pid: int, fault_r: int) -> tuple[int, str]:
    """Wait for ``pid``: (its exit code, what faulthandler wrote)."""
    _, status = os.waitpid(pid, 0)
    os.set_blocking(fault_r, False)
    fault = b""
    try:
        while len(fault) < _FAULT_MAX:
            chunk = os.read(fault_r, 65536)
            if not chunk:
                break
            fault += chunk
    except BlockingIOError:
        pass
    os.close(fault_r)
    return os.waitstatus_to_exitcode(status), fault.decode(errors="replace")


_FAULT_MAX = 256 * 1024  # faulthandler's dump of every thread is a few KB


__all__ = [
    "FRONT_DOOR",
    "PIPES",
    "Forwarded",
    "RootSupervisor",
    "PoolSupervisor",
    "Worker",
    "WorkerInit",
    "PoolInit",
    "WatchCaller",
    "ActorExitRequest",
]
