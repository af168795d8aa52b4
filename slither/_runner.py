"""Actors' dispatches: the ``DispatchSupervisor`` and its ``DispatchRunner`` children.

::

    RootSupervisor ── forwards slither.actors messages (Forwarded) ──▶ DispatchSupervisor
    DispatchSupervisor       one_for_one; one temporary DispatchRunner per Dispatch
    └── DispatchRunner       its own process: the window, ordering, retries, timeouts,
                             demand and credits of one dispatch

A runner owns its data plane: it listens on a Unix socket of its own in the
runtime's private directory, asks the caller's hub for the pool (``("runner",
...)``), and every local worker of that pool connects to it as to its own hub,
serving the caller and every runner in turn (see ``slither._worker``). Its
batches never ride Thespian. The caller forwards each worker's exit report and
the pool's ``PoolDown`` on the registration socket, so failures read as they do
in ``rt.dispatch()``.

The dispatch itself is :func:`slither._dispatch.dispatch_stream`, run on a thread
of the runner. That thread takes a demand credit before it hands each batch over
(blocked, it stops reading the input: the window stays bounded end to end), and
wakes the actor through a pipe the actor watches (``ThespianWatch``): only the
actor's thread may send Thespian messages.
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
import time

import attrs
from thespian.actors import ActorExitRequest, ThespianWatch, WatchMessage

from slither import _dispatch, _protocol, _wire
from slither._actors import Forwarded
from slither._pool import Hub, Pool
from slither._sys import cheap_repr
from slither.actors import Cancel, Credit, Demand, Dispatch, DispatchCancelled, DispatchDone, DispatchFailed, Feed, Results
from slither.errors import ConfigurationError, DispatchError, PoolDown, RunnerDied, RuntimeNotStarted
from slither.supervision import ChildSpec, ExitingNormally, SupervisedActor, Supervisor


@attrs.frozen(repr=False)
class RunnerPlane:
    """What a runner needs to reach the caller's hub (the DispatchSupervisor's init)."""

    hub_path: str
    token: str
    directory: str
    start_timeout: float = 30.0
    __repr__ = cheap_repr


@attrs.frozen(repr=False)
class _Run:
    dispatch: Dispatch
    requester: object
    plane: RunnerPlane
    __repr__ = cheap_repr


class _Record:
    __slots__ = ("ref", "requester", "proc", "done")

    def __init__(self, ref, requester, proc):
        self.ref = ref
        self.requester = requester
        self.proc = proc  # Thespian's multiprocessing.Process for the runner: its exit code names the signal
        self.done = False


class DispatchSupervisor(Supervisor):
    """Starts a ``DispatchRunner`` per ``Dispatch`` (temporary children) and tells the
    requester of a runner that died before it finished (``DispatchFailed(RunnerDied)``)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self._plane: RunnerPlane | None = None
        self._runs: dict[str, _Record] = {}  # child id -> its dispatch
        self._ids = itertools.count(1)

    def on_other_message(self, message, sender) -> None:
        if isinstance(message, Forwarded):
            message, sender = message.message, message.sender
        if isinstance(message, RunnerPlane):
            self._plane = message
        elif isinstance(message, Dispatch):
            self._start_runner(message, sender)
        elif isinstance(message, (Demand, Cancel, Feed)):
            child = self._child_of(message.ref, sender)
            if child is not None:
                self.send(child.address, message)

    def _start_runner(self, d: Dispatch, requester) -> None:
        if self._plane is None:
            reason = RuntimeNotStarted("this runtime's dispatch supervisor is not ready")
            self.send(requester, DispatchFailed(d.ref, reason, sent=0))
            return
        cid = f"dispatch:{next(self._ids)}"
        child = self._add(ChildSpec(cid, DispatchRunner, init=_Run(d, requester, self._plane), restart="temporary"))
        self._runs[cid] = _Record(d.ref, requester, _child_process(self, child.address))

    def _child_of(self, ref, requester):
        for child in self._children:
            run = self._runs.get(child.spec.id)
            if run is not None and run.ref == ref and run.requester == requester and child.address is not None:
                return child
        return None

    def _on_exiting_normally(self, message, sender) -> None:
        for child in self._children:
            if child.address == sender and child.spec.id in self._runs:
                self._runs[child.spec.id].done = True
        super()._on_exiting_normally(message, sender)

    def _exited(self, address, lost: bool = False) -> None:
        child = next((c for c in self._children if c.address is not None and c.address == address), None)
        if child is not None:
            run = self._runs.pop(child.spec.id, None)
            if run is not None and not run.done and not self._stopping:
                reason = RunnerDied(child.pid, _exitcode(run.proc))
                self.send(run.requester, DispatchFailed(run.ref, reason))
        super()._exited(address, lost)


def _child_process(actor, address):
    """Thespian's ``multiprocessing.Process`` of the child just created at ``address``, or
    None (another base). Thespian keeps it to reap the child; its ``exitcode`` tells how
    the child ended, which ``ChildActorExited`` does not."""
    procs = getattr(getattr(actor, "_myRef", None), "_child_procs", None) or []
    for info in reversed(procs):
        if getattr(info, "childAddr", None) == address:
            return getattr(info, "childProc", None)
    return None


def _exitcode(proc) -> int | None:
    if proc is None:
        return None
    try:
        proc.join(0.1)  # already reaped by Thespian as a rule; this only reads the status
        return proc.exitcode
    except (AssertionError, ValueError, OSError):
        return None


class DispatchRunner(SupervisedActor):
    """Runs one :class:`Dispatch` and answers its requester (see the module docstring)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self._job: _Job | None = None
        self._parent = None

    def receiveMessage(self, message, sender):
        super().receiveMessage(message, sender)
        if self._job is not None and not self._job.finished:
            return ThespianWatch([self._job.wake_r])  # Thespian resets the watch after every message
        return None

    def on_message(self, message, sender) -> None:
        job = self._job
        if isinstance(message, _Run):
            if job is None:
                self._parent = sender
                self._job = _Job(message)
                if message.dispatch.items is None:
                    self.send(message.requester, Credit(message.dispatch.ref, message.dispatch.window_items()))
                self._job.start()
        elif job is None:
            return
        elif isinstance(message, WatchMessage):
            self._drain(job)
        elif isinstance(message, Demand):
            job.grant(message.n)
        elif isinstance(message, Feed):
            job.feed(message)
        elif isinstance(message, Cancel):
            job.cancel()

    def _drain(self, job: _Job) -> None:
        try:
            os.read(job.wake_r, 65536)
        except BlockingIOError:
            pass
        while True:
            try:
                msg = job.out.get_nowait()
            except queue.Empty:
                return
            self.send(job.run.requester, msg)
            if isinstance(msg, (DispatchDone, DispatchFailed)):
                job.finished = True
                job.close()
                self.send(self._parent, ExitingNormally())
                self.send(self.myAddress, ActorExitRequest())
                return


class _Only:
    """The runtime a runner's dispatch sees: one pool, its own."""

    def __init__(self, pool: Pool):
        self._pool = pool

    def pool(self, name: str) -> Pool:
        return self._pool


class _Job:
    """One dispatch on the runner's thread: results on ``out``, the actor woken through a pipe."""

    def __init__(self, run: _Run):
        self.run = run
        self.out: queue.SimpleQueue = queue.SimpleQueue()
        self.wake_r, self._wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._credits = threading.Semaphore(run.dispatch.demand)
        self._fed: queue.SimpleQueue = queue.SimpleQueue()
        self._held: dict[int, Feed] = {}  # Feeds that came before one with a lower seq
        self._next_feed = 0
        self._stream = None
        self._cancelled = False
        self.finished = False  # read and set by the actor's thread only
        self._plane: _Plane | None = None

    def start(self) -> None:
        threading.Thread(target=self._work, name="slither-dispatch-runner", daemon=True).start()

    # -- from the actor's thread ------------------------------------------
    def grant(self, n: int) -> None:
        self._credits.release(n)

    def feed(self, msg: Feed) -> None:
        if msg.seq is None:
            self._apply(msg)
            return
        self._held[msg.seq] = msg  # Thespian may deliver Feeds out of order: apply them in seq order
        while self._next_feed in self._held:
            self._apply(self._held.pop(self._next_feed))
            self._next_feed += 1

    def _apply(self, msg: Feed) -> None:
        if msg.items:
            self._fed.put(msg.items)
        if msg.last:
            self._fed.put(None)

    def cancel(self) -> None:
        self._cancelled = True
        stream = self._stream
        if stream is not None:
            stream.cancel()
        self._fed.put(None)
        self._credits.release(1)  # a thread waiting for demand looks again

    def close(self) -> None:
        if self._plane is not None:
            self._plane.close()
        for fd in (self.wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    # -- the dispatch's thread --------------------------------------------
    def _put(self, msg) -> None:
        self.out.put(msg)
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass  # the pipe is full: the actor is woken already

    def _work(self) -> None:
        d = self.run.dispatch
        t0 = time.monotonic()
        items = batches = 0
        try:
            self._plane = _Plane(self.run.plane, d.pool)
            source = d.items if d.items is not None else self._fed_items(d.ref)
            stream = _dispatch.dispatch_stream(source, d.fn, runtime=_Only(self._plane.pool), **d.options())
            self._stream = stream
            if self._cancelled:
                stream.cancel()
            for out in stream.batches():
                self._credits.acquire()
                if self._cancelled:
                    break
                self._put(Results(d.ref, list(out), batches))
                batches += 1
                items += len(out)
            if self._cancelled:
                raise DispatchCancelled(f"dispatch {d.ref!r} was cancelled")
            self._put(
                DispatchDone(d.ref, {"items": items, "batches": batches, "seconds": time.monotonic() - t0, "pid": os.getpid()})
            )
        except DispatchError as exc:
            self._put(DispatchFailed(d.ref, exc.reason, exc.batch_ref, sent=batches))
        except Exception as exc:  # noqa: BLE001 - every failure reaches the requester
            if self._cancelled and not isinstance(exc, DispatchCancelled):
                exc = DispatchCancelled(f"dispatch {d.ref!r} was cancelled")
            self._put(DispatchFailed(d.ref, exc, sent=batches))

    def _fed_items(self, ref):
        """The input of a streamed dispatch: what ``Feed`` brings, with credit given back
        for each chunk once the dispatch has taken it."""
        while True:
            chunk = self._fed.get()
            if chunk is None or self._cancelled:
                return
            yield from chunk
            self._put(Credit(ref, len(chunk)))


_PLANES = itertools.count(1)  # a runner may own several planes (a pipe's pools)


class _Plane:
    """A runner's data plane: its own hub and pool, the workers of the caller's pool joined to it."""

    def __init__(self, plane: RunnerPlane, name: str):
        path = os.path.join(plane.directory, f"runner-{os.getpid()}-{next(_PLANES)}.sock")
        self.pool = Pool(name, 0)
        self.hub = Hub(path, plane.token, dict)
        self.hub.pools[name] = self.pool
        self._reg = _wire.connect(plane.hub_path, timeout=5)
        try:
            _wire.send(self._reg, _protocol.runner(plane.token, name, path))
            _, count, down = _wire.recv(self._reg)
        except (OSError, EOFError):
            self.close()
            raise RuntimeNotStarted("the runtime is shutting down: its hub did not answer") from None
        if down is not None:
            self.close()
            raise (ConfigurationError(down) if down.startswith("no pool named") else PoolDown(name, down))
        self.pool.size = count
        threading.Thread(target=self._forwarded, name="slither-runner-reg", daemon=True).start()
        if count == 0:
            self.close()
            raise PoolDown(
                name, f"pool {name!r} has no worker on this host for a runner (an actor's Dispatch, a long-lived pipe) to use"
            )
        if not self._first_worker(plane.start_timeout):
            self.close()
            raise TimeoutError(f"pool {name!r}: none of its {count} workers joined the runner within {plane.start_timeout}s")

    def _first_worker(self, timeout: float) -> bool:
        """Wait for one worker to join (the others join as they finish what they run:
        the dispatch starts with the first, and takes the rest on as they come)."""
        deadline = time.monotonic() + timeout
        with self.pool.lock:
            while not self.pool.scheduler.workers and self.pool.down is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.pool.changed.wait(left)
        return True

    def _forwarded(self) -> None:
        """What the caller forwards: each worker's exit report, the pool going down."""
        try:
            while True:
                msg = _wire.recv(self._reg)
                if msg[0] == _protocol.EXIT:
                    self.pool.exited(msg[4], msg[5], msg[6])
                elif msg[0] == _protocol.POOL_DOWN:
                    self.pool.mark_down(msg[3])
        except (OSError, EOFError, ValueError):
            pass

    def close(self) -> None:
        self.pool.close()
        self.pool.disconnect()
        self.hub.close()
        try:
            self._reg.close()
        except OSError:
            pass


__all__ = ["DispatchSupervisor", "DispatchRunner", "RunnerPlane"]
