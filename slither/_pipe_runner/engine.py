"""The handle's side of a supervised pipe (``RemoteEngine``): the link's listener, the
inputs kept until they are done and replayed to a restarted runner, the deduplication of
results, and the verdicts on poison and hung inputs.

Reading the link. The thread waiting in ``PipeHandle.results()`` reads the link itself
(:meth:`RemoteEngine.read_until`), so a result reaches its consumer without a thread
switch; the link's own thread reads only what arrives while nobody waits (a subscriber
actor's outputs, telemetry, the end). One reader at a time: the link's reading right
(``_Link.take``)."""

from __future__ import annotations

import os
import pickle
import secrets
import select
import sys
import threading
import time
from collections import deque

from loguru import logger

from slither import _pickle, _wire, telemetry
from slither._dispatch import Retry, Route
from slither._pipe import check_handlers_travel
from slither._pipe.definition import _SEQ, _policy
from slither._pipe_runner.runner import FORWARDED, PipeRunner
from slither._pipe_runner.supervisor import PipeInit
from slither._runner import RunnerPlane
from slither.errors import PipeDown, PipeError, RunnerDied, SerializationError, StageTimeout, WorkerCrashed
from slither.supervision import ChildSpec, ChildStarted, ChildStopped, StartChild, StopChild


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


class _Link:
    """One runner's link socket and the right to read it (``reader``: who holds it).

    A consumer takes the right while it waits for results. The link's own thread takes
    it only once nobody has for a while (``IDLE``), and hands it back as soon as a
    consumer asks (``wanted``, and a byte on its wake pipe), as a pool's receiver does;
    so, while a consumer keeps coming back, one thread is woken per frame, not two.

    The right is a flag under a condition, not a Lock tried without blocking: a thread
    woken with such a lock holds it before it has the GIL back to mark it held, so
    ``locked()`` says free while a try fails, and a consumer looping on the two would
    spin for a whole GIL switch interval (5 ms) instead of reading."""

    __slots__ = ("sock", "cv", "reader", "taken", "wanted", "lost", "wake_r", "wake_w")

    IDLE = 0.01  # seconds without a consumer before the link's thread reads

    def __init__(self, sock):
        self.sock = sock
        self.cv = threading.Condition(threading.Lock())
        self.reader: str | None = None  # "consumer", "backup" (the link's thread) or "gone"
        self.taken = 0  # how often a consumer took the right
        self.wanted = False  # a consumer asks the link's thread for the right
        self.lost = False
        # Ends the poll() of whoever holds the right: the link's thread when a consumer asks
        # for it, a consumer when the pipe ends. The link's thread closes it, last.
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)

    def take(self, timeout: float | None) -> bool:
        """The right for a consumer: at once if free, after a hand-over from the link's
        thread if it reads; False if another consumer has it (or the link is gone)."""
        with self.cv:
            if self.reader == "backup":
                self.wanted = True
                self._nudge()
                self.cv.wait_for(lambda: self.reader != "backup", timeout)
            if self.reader is not None or self.lost:
                return False
            self.reader = "consumer"
            self.taken += 1
            return True

    def wake(self) -> None:
        """End the wait of whoever reads (the handle's state changed)."""
        with self.cv:
            self._nudge()

    def _nudge(self) -> None:
        if self.reader == "gone":
            return  # its wake pipe is closed
        try:
            os.write(self.wake_w, b"\0")
        except OSError:
            pass  # full: a wake-up is pending anyway

    def give(self) -> None:
        with self.cv:
            backup, self.reader = self.reader == "backup", None
            # Consumers may wait for the link's thread to hand over; that thread waits for a
            # consumer only to close a lost link (its idle wait must not wake at every result).
            if backup or self.lost:
                self.cv.notify_all()


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
        self._tail: tuple | None = None  # (link, the unsent rest of a frame): the sender writes it first
        self._conn = None
        self._link: _Link | None = None  # the current runner's (its socket is _conn)
        self._listen: tuple | None = None  # events to tell the runner to forward (_listen_changed), not sent yet
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
        telemetry._watch(self._listen_changed)

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
        link = _Link(s)
        with self._cv:
            old, self._conn, self._link = self._conn, s, link
            self._runner_pid = pid
            self._links += 1
            self._gone.clear()
            self._probe = None
            self._tail = None  # the rest of a frame for the link it replaces
            verdicts = [(seq, rec, self._verdict(rec)) for seq, rec in sorted(self._inflight.items())]
            again = [(seq, rec) for seq, rec, v in verdicts if v is None]
            self._quarantine = deque(seq for seq, rec in again if rec.deaths >= 2)
            self._outgoing = deque((seq, rec.blob) for seq, rec in again if rec.deaths < 2)
            if self._draining:
                self._outgoing.append(_END)
            self._listen = tuple(e for e in FORWARDED if telemetry.has_handlers(e))  # before any input
            self._cv.notify_all()
        if old is not None:
            _shutdown(old)  # its reader thread closes it
        for _, rec, v in verdicts:
            if v is not None:
                self._give_up(rec, *v)
        threading.Thread(target=self._reader, args=(link,), name=f"slither-pipe-{self.name}-out", daemon=True).start()
        self._handle._poke()  # a consumer waiting while there was no link reads this one

    def _listen_changed(self) -> None:
        """A telemetry handler came or went in this process: tell the runner what to forward."""
        with self._cv:
            self._listen = tuple(e for e in FORWARDED if telemetry.has_handlers(e))
            self._cv.notify_all()

    def _can_send(self) -> bool:
        if self._conn is None or self._busy:
            return False
        if self._tail is not None or self._listen is not None:
            return True  # the rest of a frame a submitter could not write at once, or what to forward: first
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
                bufs: list = []
                if self._tail is not None:  # (_attach drops the tail of a link it replaces)
                    (_, bufs), self._tail = self._tail, None
                listen, self._listen = (self._listen, None) if not bufs else (None, self._listen)
                blobs: list = []
                end = False
                if not bufs and self._quarantine:  # a suspect alone; the rest waits for it
                    seq = self._quarantine.popleft()
                    rec = self._inflight.get(seq)
                    if rec is not None:
                        self._probe = seq
                        rec.link = link
                        blobs.append(rec.blob)
                while not bufs and not self._quarantine and self._probe is None and self._outgoing and len(blobs) < 256:
                    entry = self._outgoing.popleft()
                    if entry is _END:
                        end = True
                        break
                    seq, blob = entry
                    rec = self._inflight.get(seq)
                    if rec is not None:
                        rec.link = link
                        blobs.append(blob)
            frames = ([("listen", listen)] if listen is not None else []) + ([("in", blobs)] if blobs else [])
            frames += [("eos",)] if end else []
            self._write_buffers(conn, bufs + [b for f in frames for b in _wire.dumps(f)], block=True)

    def _reader(self, link: _Link) -> None:
        """The link's own thread: it reads while no consumer has for a while (a subscriber
        actor's outputs, telemetry, the end, a runner's death), until one asks."""
        idle = 0.0  # at first it reads at once: the runner's "ready" comes before any consumer
        try:
            while not link.lost:
                with link.cv:
                    taken = link.taken
                    if idle:  # no event says "no consumer took the right for a while": look again then
                        link.cv.wait_for(lambda: link.lost, idle)
                    idle = _Link.IDLE
                    if link.lost or link.reader is not None or link.taken != taken:
                        continue
                    link.reader, link.wanted = "backup", False
                try:
                    while not link.lost and not link.wanted:
                        self._read_frame(link, 0.25, link.wake_r)
                finally:
                    link.give()
                self._handle._poke()  # a consumer waiting on the handle may take the right now
        finally:
            with link.cv:
                link.cv.wait_for(lambda: link.reader is None)  # no consumer polls the socket now
                link.reader = "gone"
                for fd in (link.wake_r, link.wake_w):
                    os.close(fd)
            link.sock.close()

    def read_until(self, ready, timeout: float | None) -> bool:
        """Read the link in the calling thread until ``ready()`` or ``timeout`` seconds
        pass; False at once when another thread has the reading right or there is no link
        (it, or the next link's reader, wakes the handle's waiters)."""
        with self._cv:
            link = self._link
            if self._closed or link is None or link.lost:
                return False
        if not link.take(timeout):
            return False
        try:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not link.lost and not self._over.is_set() and not ready():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                if not self._read_frame(link, left, link.wake_r):
                    break  # woken: the handle's state may have changed
        finally:
            link.give()
            self._handle._poke()
        return True

    def can_read(self) -> bool:
        """A consumer may take the reading right now (no other consumer holds it)."""
        link = self._link
        return link is not None and not link.lost and link.reader != "consumer" and not self._over.is_set()

    def _wake(self) -> None:
        """The pipe ended: a consumer reading the link looks at the handle again."""
        link = self._link
        if link is not None:
            link.wake()

    def _read_frame(self, link: _Link, timeout: float | None, wake_r: int) -> bool:
        """Handle the next frame on ``link`` (holding its right), waiting at most
        ``timeout``; False when nothing came, or on a byte on ``wake_r``."""
        s = link.sock
        try:
            poller = select.poll()
            poller.register(s, select.POLLIN)
            poller.register(wake_r, select.POLLIN)
            events = poller.poll(None if timeout is None else max(0, int(timeout * 1000 + 0.999)))
            if not any(fd == s.fileno() for fd, _ in events):
                try:
                    while os.read(wake_r, 4096):
                        pass
                except OSError:
                    pass
                return False
            self._frame(_wire.recv(s))
            return True
        except (OSError, EOFError, ValueError):
            self._lost(link)
            return False

    def _lost(self, link: _Link) -> None:
        """The link closed, or failed: the runner is gone (its replacement gets a new one)."""
        with self._cv:
            if link.lost:
                return
            link.lost = True
            if self._link is link:
                self._link = None
                self._conn = None
                self._gone.set()
        _shutdown(link.sock)  # its reader thread wakes, and closes it
        with link.cv:
            link.cv.notify_all()

    def _frame(self, msg) -> None:
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
            self._wake()

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
            idle = not self._busy and self._tail is None and self._listen is None and not self._outgoing
            idle = idle and not self._quarantine and self._probe is None
            conn = self._conn if idle else None
            if conn is None:
                self._outgoing.append((seq, blob))  # the sender thread takes it, in turn
                self._cv.notify_all()
                return
            self._busy = True
            rec.link = self._links
        # The link is idle: from the submitting thread, one thread switch fewer. Never blocking
        # it: what the socket will not take at once (a runner stuck in a handler reads nothing)
        # is left to the sender thread, and submit keeps its own timeout.
        self._write_buffers(conn, _wire.dumps(("in", [blob])), block=False)

    def _write_buffers(self, conn, bufs: list, block: bool) -> None:
        """Bytes onto the link by the thread that set ``_busy``; then the link is free again
        (for the sender thread first, if some of them are left)."""
        rest: list = []
        try:
            rest = _wire.send_buffers(conn, bufs, block=block)
        except OSError:
            pass  # that runner died: its replacement is sent everything unfinished
        finally:
            with self._cv:
                if rest and conn is self._conn:  # a link replaced meanwhile gets everything again anyway
                    self._tail = (conn, rest)
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
        telemetry._watch(self._listen_changed, on=False)
        with self._cv:
            self._closed = True
            conn, self._conn, link = self._conn, None, self._link
            self._cv.notify_all()
        _shutdown(self._listener)
        _close(self._listener)
        if link is not None:
            self._lost(link)  # a consumer reading it wakes; its reader thread closes the socket
        elif conn is not None:
            _shutdown(conn)
        try:
            os.unlink(self._path)
        except OSError:
            pass

    def status(self) -> dict:
        stages = {k: dict(v) for k, v in self._stats.items()}
        return {"stages": stages, "runner_pid": self._runner_pid, "restarts": max(0, self._links - 1)}


def _shutdown(s) -> None:
    """Ends every wait on ``s`` (its reader sees the end); closing it is the reader's."""
    try:
        s.shutdown(2)
    except OSError:
        pass


def _close(s) -> None:
    try:
        s.close()
    except OSError:
        pass
