"""Long-lived pipes, supervised: the ``PipeSupervisor``, its ``PipeRunner`` children, and
the handle's side of their link (``RemoteEngine``).

::

    RootSupervisor
    └── PipeSupervisor (id "pipes")     one_for_one, transient children, restart intensity per pipe
        └── PipeRunner (id: pipe name)  its own process: the pipe's stage threads (slither._pipe.run)
                                        and, per pool a stage uses, a data plane (slither._runner)

The link. The handle listens on a Unix socket of its own in the runtime's private
directory; every incarnation of the runner connects to it (``hello``), sets itself up
and says ``ready`` (or ``failed``: the start failed, nothing restarts it). Frames::

    handle → runner   ("in", [pickled Item, ...])  ("eos",)
    runner → handle   ("hello", token, pid)  ("ready",)  ("failed", error)
                      ("out", [(output, Item), ...], stats | None)  ("fanout", key, extra)
                      ("event", event, measurements, metadata)  ("eos", stats)
                      ("hung", stage, timeout, [key, ...])   then it exits
    supervisor → handle   ("died", token, pid, exitcode)  ("down", token, message, exitcode)
                          ("actor", token, message, sender)   an actor's Submit, Subscribe, Demand

Nothing accepted is lost. The handle keeps every input (pickled) until the runner has
delivered all of its results. A runner that dies is restarted by the PipeSupervisor;
the new one connects, and the handle sends it every input still unfinished, in order
(and the end of input, when draining). Results carry their key (input position, and
index at each ``cardinality="many"`` stage): the handle drops a key it has delivered
before, so each result reaches the caller once, though its handlers may have run
twice (at least once execution, as with Retry). More restarts than the pipe's
intensity allows: the supervisor stops restarting it and tells the handle ``down``,
which raises :class:`slither.PipeDown` to everyone waiting.

Poison. Each input counts the deaths of the runners it was sent to. In flight at two,
it is sent alone (quarantine: one suspect at a time, the rest waits), so a poison
input dies by itself; past ``max_replays`` it comes out skipped with ``RunnerDied``.
An inline stage past its ``timeout`` reports its chunk (``hung``) and ends the
runner; the stage's policy then decides those inputs (``_verdict``).
"""

from __future__ import annotations

import os
import pickle
import secrets
import sys
import threading
import time
from collections import deque

import attrs
from loguru import logger
from thespian.actors import ActorExitRequest, ThespianWatch, WatchMessage

from slither import _pickle, _wire, telemetry
from slither import _store as store
from slither._actors import PIPES, Forwarded
from slither._dispatch import Retry, Route
from slither._pipe import check_handlers_travel
from slither._pipe.definition import _SEQ, EOS, _policy, load_pipe
from slither._pipe.run import _Run
from slither._runner import RunnerPlane, _child_process, _exitcode, _Plane
from slither._sys import cheap_repr
from slither.actors import PipeFailed
from slither.errors import (
    ConfigurationError,
    PipeDown,
    PipeError,
    RunnerDied,
    SerializationError,
    StageTimeout,
    WorkerCrashed,
)
from slither.supervision import (
    ChildSpec,
    ChildStarted,
    ChildStopped,
    ExitingNormally,
    StartChild,
    StopChild,
    SupervisedActor,
    Supervisor,
)

_FORWARDED = [
    ("slither", "pipe", "stage", "stop"),
    ("slither", "pipe", "stage", "exception"),
    ("slither", "dispatch", "batch", "stop"),
    ("slither", "dispatch", "batch", "exception"),
]


@attrs.frozen(repr=False)
class PipeInit:
    """Everything a PipeRunner needs, sent again at every restart."""

    name: str
    blob: bytes  # cloudpickle of (pipe class, session_id, metadata)
    link: str  # the handle's socket
    token: str
    plane: RunnerPlane
    sys_path: tuple
    cwd: str
    store_paths: dict
    max_restarts: int
    max_seconds: float
    __repr__ = cheap_repr


class PipeSupervisor(Supervisor):
    """One PipeRunner per long-lived pipe (transient), each with the restart intensity
    of its own pipe; past it, the pipe's handle is told ``down`` and the runner stays dead."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self._times: dict[str, deque] = {}
        self._procs: dict[str, object] = {}

    def _start(self, child) -> None:
        super()._start(child)
        if child.address is not None:
            self._procs[child.spec.id] = _child_process(self, child.address)

    def _allow_restart(self) -> bool:
        return True  # each pipe's own intensity is checked in _exited

    def _exited(self, address, lost: bool = False) -> None:
        child = next((c for c in self._children if c.address is not None and c.address == address), None)
        if child is None or self._stopping or child.normal_exit or not isinstance(child.spec.init, PipeInit):
            super()._exited(address, lost)
            return
        init = child.spec.init
        now = time.monotonic()
        times = self._times.setdefault(child.spec.id, deque())
        times.append(now)
        while times and now - times[0] > init.max_seconds:
            times.popleft()
        if len(times) > init.max_restarts:
            code = _exitcode(self._procs.pop(child.spec.id, None))
            self._children.remove(child)
            how = f" (last exit code {code})" if code is not None else ""
            msg = (
                f"pipe {init.name!r} is down: its PipeRunner died {len(times)} times within {init.max_seconds:g}s, "
                f"more than restart=({init.max_restarts}, {init.max_seconds:g}) allows{how}"
            )
            _notify(init.link, ("down", init.token, msg, code))
            return
        # Before the restart: the handle counts this death against what was in flight.
        _notify(init.link, ("died", init.token, child.pid, _exitcode(self._procs.get(child.spec.id))))
        super()._exited(address, lost)

    def on_other_message(self, message, sender) -> None:
        """An actor's Submit, Subscribe or Demand for a pipe: straight to the pipe's handle,
        which owns the pipe's inputs (this address outlives every runner)."""
        if isinstance(message, Forwarded):
            message, sender = message.message, message.sender
        name = getattr(message, "pipe_target", None)
        child = next((c for c in self._children if c.spec.id == name and isinstance(c.spec.init, PipeInit)), None)
        if child is None:
            running = sorted(c.spec.id for c in self._children)
            reason = ConfigurationError(f"no long-lived pipe named {name!r} runs on this runtime; running: {running}")
            self.send(sender, PipeFailed(getattr(message, "ref", None), reason))
            return
        _notify(child.spec.init.link, ("actor", child.spec.init.token, message, sender))

    def _on_stop_child(self, message: StopChild, sender) -> None:
        self._times.pop(message.id, None)
        self._procs.pop(message.id, None)
        super()._on_stop_child(message, sender)


def _notify(path: str, msg) -> None:
    # Connect, send, close: a socket kept open here would be inherited by every runner forked from here.
    try:
        s = _wire.connect(path, timeout=5)
        try:
            _wire.send(s, msg)
        finally:
            s.close()
    except OSError:
        pass  # the handle is gone: nobody to tell


class PipeRunner(SupervisedActor):
    """Runs one long-lived pipe (see the module docstring); exits normally once it ends."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self._serve: _Serve | None = None
        self._parent = None
        self._over = False

    def receiveMessage(self, message, sender):
        super().receiveMessage(message, sender)
        if self._serve is not None and not self._over:
            return ThespianWatch([self._serve.wake_r])  # Thespian resets the watch after every message
        return None

    def on_message(self, message, sender) -> None:
        if isinstance(message, PipeInit):
            if self._serve is None:
                self._parent = sender
                self._serve = _Serve(message)
                self._serve.start()
        elif isinstance(message, WatchMessage) and self._serve is not None:
            try:
                os.read(self._serve.wake_r, 4096)
            except BlockingIOError:
                pass
            if self._serve.finished and not self._over:
                self._over = True
                self.send(self._parent, ExitingNormally())
                self.send(self.myAddress, ActorExitRequest())


class _Planes:
    """The runtime a runner's pool stages see: a data plane per pool, made on first use."""

    def __init__(self, plane: RunnerPlane):
        self._plane = plane
        self._planes: dict[str, _Plane] = {}

    def pool(self, name: str):
        if name not in self._planes:
            self._planes[name] = _Plane(self._plane, name)
        return self._planes[name].pool

    def close(self) -> None:
        for p in self._planes.values():
            p.close()


class _Serve:
    """The runner's work, on threads of its own: the link, the run, its collector."""

    def __init__(self, init: PipeInit):
        self.init = init
        self.wake_r, self._wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        self.finished = False
        self._lock = threading.Lock()
        self._link = None

    def start(self) -> None:
        threading.Thread(target=self._main, name="slither-pipe-runner", daemon=True).start()

    def _send(self, msg) -> bool:
        try:
            chunks = _wire.dumps(msg)
        except Exception:  # noqa: BLE001 - a result (or an error) that cannot travel back
            if msg[0] != "out":
                return False
            chunks = _wire.dumps(("out", [(n, _portable_item(i)) for n, i in msg[1]], msg[2]))
        try:
            with self._lock:
                _wire.send_chunks(self._link, chunks)
            return True
        except OSError:
            return False

    def _finish(self) -> None:
        self.finished = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def _main(self) -> None:
        init = self.init
        try:
            self._link = _wire.connect(init.link, timeout=5)
            _wire.send(self._link, ("hello", init.token, os.getpid()))
        except OSError:
            self._finish()  # the handle is gone: nothing to run for
            return
        planes = _Planes(init.plane)
        try:
            sys.path[:] = list(init.sys_path) + [p for p in sys.path if p not in init.sys_path]
            try:
                os.chdir(init.cwd)
            except OSError:
                pass
            store.register_paths(init.store_paths)
            try:
                pipe, session_id, metadata = load_pipe(init.blob)
            except Exception as exc:  # noqa: BLE001 - named for the caller
                raise ConfigurationError(
                    f"pipe {init.name!r} could not be loaded in its PipeRunner process: {type(exc).__name__}: {exc} "
                    "(a pipe class travels by reference when importable, by value otherwise: is its module "
                    "importable from the caller's sys.path and working directory?)"
                ) from None
            for st in pipe.stages:
                if st.kind == "pool":
                    planes.pool(st.options.get("pool", "default"))
            run = _Run(pipe, planes, session_id, metadata, fuse_first=True)
        except BaseException as exc:  # noqa: BLE001 - every start failure reaches start_pipe
            planes.close()
            self._send(("failed", _portable(exc)))
            self._finish()
            return
        run.fanout = lambda key, extra: self._send(("fanout", key, extra))
        run.out = _LinkOut(self, run)
        run.on_hung = self._hung
        for event in _FORWARDED:
            telemetry.attach(f"slither-runner-{'-'.join(event)}", [event], self._event)
        run.start(None)
        self._send(("ready",))
        threading.Thread(target=self._read, args=(run,), name="slither-pipe-runner-in", daemon=True).start()
        try:
            while not run.out.over.wait(0.1):
                if run.cancel.is_set():  # the handle went away, or a stage failed
                    if run.error is not None:
                        run.out.put(("error",))
                    break
        finally:
            run.cancel.set()
            planes.close()
            self._finish()

    def _hung(self, st, chunk) -> None:
        """An inline handler ran past its stage's timeout: a thread cannot be stopped, so
        the runner ends; the handle applies the stage's policy to these inputs."""
        keys = [it.meta.get(_SEQ) for it in chunk if it.meta.get(_SEQ)]
        self._send(("hung", st.name, st.options["timeout"], keys))
        os._exit(75)

    def _event(self, event, measurements, metadata) -> None:
        self._send(("event", event, dict(measurements), {k: _portable(v) for k, v in metadata.items()}))

    def _read(self, run: _Run) -> None:
        """The handle's inputs into the first inbox, in chunks of the pipe's chunk_size."""
        size = run.pipe.chunk_size
        try:
            while True:
                msg = _wire.recv(self._link)
                if msg[0] == "in":
                    items = [pickle.loads(b) for b in msg[1]]
                    for k in range(0, len(items), size):
                        if not run.put(run.inboxes[0], items[k : k + size]):
                            return
                elif msg[0] == "eos":
                    run.put(run.inboxes[0], EOS)
        except (OSError, EOFError, ValueError):
            run.cancel.set()  # the handle is gone (or stopped the pipe): end


class _LinkOut:
    """A runner's out queue: what the last stages put on it goes straight onto the link to
    the handle, from the stage's own thread (no collector thread in between)."""

    def __init__(self, serve: _Serve, run: _Run):
        self._serve = serve
        self._run = run
        self._last = 0.0
        self.over = threading.Event()  # the end (or the failure) was sent

    def _stats(self, force: bool = False):
        now = time.monotonic()
        if force or now - self._last > 0.2:
            self._last = now
            return self._run.stage_stats()
        return None

    def put(self, msg, block: bool = True, timeout: float | None = None) -> None:
        if self.over.is_set():
            return
        kind = msg[0]
        if kind == "items":
            pairs = [*msg[1], *(("skipped", it) for it in msg[2])]
            if pairs and not self._serve._send(("out", pairs, self._stats())):
                self._run.cancel.set()  # the handle is gone
        elif kind == "eos":
            self._serve._send(("eos", self._stats(force=True)))
            self.over.set()
        elif kind == "error":
            self._serve._send(("failed", _portable(self._run.error)))
            self.over.set()

    put_nowait = put


def _portable(value):
    """``value`` if it pickles, else a RuntimeError that says what it was."""
    try:
        pickle.dumps(value, protocol=5)
        return value
    except Exception:  # noqa: BLE001
        try:
            return pickle.loads(_pickle.dumps_by_value(value))
        except Exception:  # noqa: BLE001
            return RuntimeError(f"{type(value).__name__}: {value}")


def _portable_item(item):
    try:
        pickle.dumps(item, protocol=5)
        return item
    except Exception as exc:  # noqa: BLE001
        meta = {**item.meta, "error": SerializationError(f"the result could not be pickled back to the caller: {exc}")}
        return type(item)(item.id, None, meta, item.route)


class _Input:
    __slots__ = ("blob", "expected", "seen", "fanned", "deaths", "hung", "timeouts", "link")

    def __init__(self, blob: bytes):
        self.blob = blob
        self.expected = 1
        self.seen: set = set()
        self.fanned: set = set()
        self.deaths = 0  # runner deaths while it was in flight
        self.hung: StageTimeout | None = None  # it was in the chunk of a stage past its timeout
        self.timeouts = 0
        self.link = 0  # the runner (its link's number) it was last sent to


_END = object()  # the end of input, in the outgoing queue


class RemoteEngine:
    """The handle's side of a supervised pipe (see the module docstring)."""

    def __init__(
        self, rt, pipe, name: str, session_id, metadata, max_pending: int, restart: tuple[int, float], max_replays: int = 2
    ):
        check_handlers_travel(pipe)
        self._rt = rt
        self.name = name
        self._pipe = pipe
        self._max_replays = max_replays
        self._death: RunnerDied | None = None  # the last one
        blob = _pickle.dumps_code((pipe, session_id, metadata))
        self._path = os.path.join(rt._dir, f"pipe-{secrets.token_hex(4)}.sock")
        self._token = rt.token
        self._init = PipeInit(
            name,
            blob,
            self._path,
            self._token,
            RunnerPlane(rt._hub.path, rt.token, rt._dir, rt.start_timeout),
            tuple(sys.path),
            os.getcwd(),
            rt._store_paths(),
            restart[0],
            restart[1],
        )
        self._cv = threading.Condition()
        self._inflight: dict[int, _Input] = {}
        self._outgoing: deque = deque()  # (seq, pickled Item), or _END
        self._quarantine: deque = deque()  # seqs of inputs in flight at two runner deaths or more
        self._probe: int | None = None  # the suspect now in flight: the next waits for it
        self._busy = False  # a thread is writing to the link: the others queue (frames stay in order)
        self._conn = None
        self._draining = False
        self._closed = False
        self._ready = threading.Event()
        self._over = threading.Event()  # the pipe ended: drained, failed or down
        self._gone = threading.Event()  # the current runner's link closed
        self._eos = threading.Event()  # the runner drained: every input's results came
        self._start_error: BaseException | None = None
        self._runner_pid: int | None = None
        self._links = 0
        self._stats: dict = {}
        self._handle = None
        self._listener = _wire.listen(self._path)

    # -- start ---------------------------------------------------------
    def start(self, handle) -> None:
        self._handle = handle
        threading.Thread(target=self._accept, name=f"slither-pipe-{self.name}-link", daemon=True).start()
        threading.Thread(target=self._sender, name=f"slither-pipe-{self.name}-in", daemon=True).start()
        spec = ChildSpec(self.name, PipeRunner, init=self._init, restart="transient")
        started = self._rt._ask(self._rt._pipe_sup, StartChild(spec), ChildStarted)
        if not isinstance(started, ChildStarted):
            self._close()
            raise RuntimeError(f"pipe {self.name!r}: the pipe supervisor did not start its runner (got {started!r})")
        if not self._ready.wait(self._rt.start_timeout + 5) or self._start_error is not None:
            err = self._start_error or TimeoutError(
                f"pipe {self.name!r}: its PipeRunner was not ready within {self._rt.start_timeout + 5:g}s"
            )
            self._stop_runner()
            self._close()
            raise err

    # -- the link ------------------------------------------------------
    def _accept(self) -> None:
        while True:
            try:
                s, _ = self._listener.accept()
            except OSError:
                return
            try:
                first = _wire.recv(s)
            except (OSError, EOFError, ValueError):
                s.close()
                continue
            if not isinstance(first, tuple) or len(first) < 2 or first[1] != self._token:
                s.close()
            elif first[0] == "down":
                s.close()
                self._down(PipeDown(self.name, first[2], first[3]))
            elif first[0] == "died":
                s.close()
                with self._cv:
                    self._death = RunnerDied(first[2], first[3])
                    for rec in self._inflight.values():
                        if rec.link == self._links:  # sent to the runner that died
                            rec.deaths += 1
            elif first[0] == "hello":
                self._attach(s, first[2])
            elif first[0] == "actor":
                s.close()
                try:
                    self._handle._actor(first[2], first[3])
                except Exception:  # noqa: BLE001 - one actor's bad message must not end the link
                    logger.exception("pipe {!r}: an actor's message could not be handled", self.name)

    def _attach(self, s, pid: int) -> None:
        """A runner (the first, or one restarted after a crash) connected: it gets every
        input not finished yet, in order. Those in flight at two deaths or more go first
        and one at a time (quarantine), so a poison input dies alone and its neighbours
        are not blamed for it."""
        if self._conn is not None:
            self._gone.wait(2.0)  # the dead runner's last frames (a "hung") are read first
        with self._cv:
            old, self._conn = self._conn, s
            self._runner_pid = pid
            self._links += 1
            self._gone.clear()
            self._probe = None
            verdicts = [(seq, rec, self._verdict(rec)) for seq, rec in sorted(self._inflight.items())]
            again = [(seq, rec) for seq, rec, v in verdicts if v is None]
            self._quarantine = deque(seq for seq, rec in again if rec.deaths >= 2)
            self._outgoing = deque((seq, rec.blob) for seq, rec in again if rec.deaths < 2)
            if self._draining:
                self._outgoing.append(_END)
            self._cv.notify_all()
        if old is not None:
            _close_socket(old)
        for _, rec, v in verdicts:
            if v is not None:
                self._give_up(rec, *v)
        threading.Thread(target=self._reader, args=(s,), name=f"slither-pipe-{self.name}-out", daemon=True).start()

    def _can_send(self) -> bool:
        if self._conn is None or self._busy:
            return False
        if self._quarantine:
            return self._probe is None  # one suspect at a time, each once the last came out
        return bool(self._outgoing) and self._probe is None

    def _sender(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._closed or self._can_send())
                if self._closed:
                    return
                conn, link = self._conn, self._links
                self._busy = True
                blobs: list = []
                end = False
                if self._quarantine:  # a suspect alone; the rest waits for it
                    seq = self._quarantine.popleft()
                    rec = self._inflight.get(seq)
                    if rec is not None:
                        self._probe = seq
                        rec.link = link
                        blobs.append(rec.blob)
                while not self._quarantine and self._probe is None and self._outgoing and len(blobs) < 256:
                    entry = self._outgoing.popleft()
                    if entry is _END:
                        end = True
                        break
                    seq, blob = entry
                    rec = self._inflight.get(seq)
                    if rec is not None:
                        rec.link = link
                        blobs.append(blob)
            try:
                if blobs:
                    _wire.send(conn, ("in", blobs))
                if end:
                    _wire.send(conn, ("eos",))
            except OSError:
                pass  # that runner died: its replacement is sent everything unfinished
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()

    def _reader(self, s) -> None:
        try:
            while True:
                msg = _wire.recv(s)
                kind = msg[0]
                if kind == "out":
                    for name, item in msg[1]:
                        self._result(name, item)
                    if msg[2] is not None:
                        self._stats = msg[2]
                elif kind == "fanout":
                    self._fanout(msg[1], msg[2])
                elif kind == "event":
                    telemetry.emit(msg[1], msg[2], {**msg[3], "runner": self.name})
                elif kind == "ready":
                    self._ready.set()
                elif kind == "hung":
                    err = StageTimeout(msg[1], msg[2])
                    with self._cv:
                        for key in msg[3]:
                            rec = self._inflight.get(key[0])
                            if rec is not None:
                                rec.hung = err
                elif kind == "eos":
                    if msg[1] is not None:
                        self._stats = msg[1]
                    self._eos.set()
                    self._end("stopped")
                elif kind == "failed":
                    if not self._ready.is_set():
                        self._start_error = msg[1]
                        self._ready.set()
                    self._end("failed", msg[1])
        except (OSError, EOFError, ValueError):
            pass
        finally:
            with self._cv:
                if self._conn is s:
                    self._conn = None
                    self._gone.set()
            _close_socket(s)

    def _verdict(self, rec: _Input):
        """None to run ``rec`` again in the new runner, else (output, error, stage) it ends in."""
        if rec.hung is not None:
            err, rec.hung = rec.hung, None
            rec.timeouts += 1
            policy = _policy(self._pipe, err.stage)
            if isinstance(policy, Retry):
                if rec.timeouts < policy.max_attempts:
                    return None
                policy = policy.then
            if policy == "skip":
                return "skipped", err, err.stage
            if isinstance(policy, Route):
                return policy.fn, err, err.stage
            return "halt", err, err.stage
        if rec.deaths > self._max_replays:
            d = self._death or RunnerDied(None, None)
            how = WorkerCrashed.how(d.exitcode) if d.exitcode is not None else "died"
            err = RunnerDied(
                d.pid,
                d.exitcode,
                f"the PipeRunner {how} with this input in flight {rec.deaths} times; it was not run again "
                f"(start_pipe(max_replays={self._max_replays}))",
            )
            return "skipped", err, None
        return None

    def _give_up(self, rec: _Input, output: str, err: BaseException, stage: str | None) -> None:
        """End an input without running it again: in ``output`` (or skipped), or halt the pipe."""
        if output == "halt":
            failure = PipeError(self.name, stage, err)
            failure.__cause__ = err
            self._end("failed", failure)
            return
        item = pickle.loads(rec.blob)
        meta = {"error": err, "stage": stage} if output != "skipped" else {"skipped": True, "error": err, "stage": stage}
        with self._cv:
            never = rec.expected - len(rec.seen) - 1  # results of a fan-out that will not come
            rec.expected = len(rec.seen) + 1  # what it had delivered stands; this ends it
        if never > 0:
            self._handle._fanout(item.meta[_SEQ], -never)
        self._result(output, item.put_meta(meta))

    def _done(self, seq: int) -> None:
        """Input ``seq`` delivered all its results (under the lock)."""
        del self._inflight[seq]
        if self._probe == seq:
            self._probe = None
            self._cv.notify_all()

    def _result(self, name: str, item) -> None:
        key = item.meta.get(_SEQ)
        with self._cv:
            rec = self._inflight.get(key[0]) if key else None
            if rec is None or key in rec.seen:
                return  # delivered before the runner that made it again was restarted
            rec.seen.add(key)
            if len(rec.seen) >= rec.expected:
                self._done(key[0])
        self._handle._deliver(name, item)

    def _fanout(self, key: tuple, extra: int) -> None:
        with self._cv:
            rec = self._inflight.get(key[0])
            if rec is None or key in rec.fanned:
                return
            rec.fanned.add(key)
            rec.expected += extra
            if len(rec.seen) >= rec.expected:
                self._done(key[0])
        self._handle._fanout(key, extra)

    def _down(self, err: PipeDown) -> None:
        if not self._ready.is_set():
            self._start_error = err
            self._ready.set()
        self._end("failed", err)

    def _end(self, state: str, error: BaseException | None = None) -> None:
        if not self._over.is_set():
            self._over.set()
            self._handle._ended(state, error)

    # -- the handle's calls ----------------------------------------------
    def send(self, seq: int, item) -> None:
        try:
            blob = pickle.dumps(item, protocol=5)
        except Exception as exc:  # noqa: BLE001
            raise SerializationError(
                f"pipe {self.name!r}: input #{seq} ({type(item.payload).__name__}) cannot be pickled to reach its "
                f"PipeRunner: {type(exc).__name__}: {exc}"
            ) from exc
        with self._cv:
            rec = self._inflight[seq] = _Input(blob)
            idle = not self._busy and not self._outgoing and not self._quarantine and self._probe is None
            conn = self._conn if idle else None
            if conn is None:
                self._outgoing.append((seq, blob))  # the sender thread takes it, in turn
                self._cv.notify_all()
                return
            self._busy = True
            rec.link = self._links
        try:  # the link is idle: straight from the submitting thread, one thread switch fewer
            _wire.send(conn, ("in", [blob]))
        except OSError:
            pass  # that runner died: its replacement is sent everything unfinished
        finally:
            with self._cv:
                self._busy = False
                self._cv.notify_all()

    def stop(self, drain: bool, timeout: float | None) -> bool:
        drained = False
        if drain and not self._over.is_set():
            with self._cv:
                self._draining = True
                self._outgoing.append(_END)
                self._cv.notify_all()
            self._over.wait(timeout)
            drained = self._eos.is_set()  # not a failure, nor another thread's stop(drain=False)
            if drained:
                self._gone.wait(5)  # the runner exits by itself once it has drained
        self._stop_runner()
        self._close()
        if not self._over.is_set():
            self._end("stopped")
        return drained

    def _stop_runner(self) -> None:
        if self._rt._asys is not None:
            self._rt._ask(self._rt._pipe_sup, StopChild(self.name), ChildStopped)

    def _close(self) -> None:
        with self._cv:
            self._closed = True
            conn, self._conn = self._conn, None
            self._cv.notify_all()
        _close_socket(self._listener)
        if conn is not None:
            _close_socket(conn)
        try:
            os.unlink(self._path)
        except OSError:
            pass

    def status(self) -> dict:
        stages = {k: dict(v) for k, v in self._stats.items()}
        return {"stages": stages, "runner_pid": self._runner_pid, "restarts": max(0, self._links - 1)}


def _close_socket(s) -> None:
    try:
        s.shutdown(2)
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass


__all__ = ["PIPES", "PipeSupervisor", "PipeRunner", "PipeInit", "RemoteEngine"]
