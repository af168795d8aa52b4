"""A long-lived pipe's handle: submit with backpressure, take results, stop.

The handle owns what the caller sees: the slots (``max_pending``), the results
not yet taken, the counts and the state. Where the pipe runs is its engine's
business: :class:`LocalEngine` runs the stages as threads of this process (the
in-process debugging base); ``slither._pipe_runner`` runs them in a supervised
``PipeRunner`` process. An engine calls back :meth:`PipeHandle._deliver`,
:meth:`PipeHandle._fanout` and :meth:`PipeHandle._ended`.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from slither import _aio
from slither._item import Item
from slither._pipe.definition import _SEQ, EOS
from slither._pipe.run import _collect, _Run, _strip
from slither.actors import Credit, Output, PipeFailed, Submit, Subscribe
from slither.errors import PipeError, PipeFull


class PipeHandle:
    """A running long-lived pipe. Made by ``Runtime.start_pipe``; not constructed by users.

    ``submit(payload, timeout=None)`` blocks while the pipe is full (inputs
    submitted but whose results were not yet taken exceed ``max_pending``);
    ``submit_nowait`` raises :class:`PipeFull` instead. ``results()`` yields
    ``(output, item)`` until the pipe stops. ``stop(drain=True)`` finishes
    what was submitted; ``stop(drain=False)`` abandons it.
    """

    def __init__(self, _token, pipe, rt, max_pending: int, engine, name: str | None = None):
        if _token is not _PRIVATE:
            raise TypeError("PipeHandle is created by Runtime.start_pipe()")
        self.pipe = pipe
        self.name = name or pipe.pipe_name
        self._rt = rt
        self._slots = threading.BoundedSemaphore(max_pending)
        self._max_pending = max_pending
        self._lock = threading.Lock()
        self._results: deque = deque()
        self._cv = threading.Condition(self._lock)
        self._state = "running"
        self._error: BaseException | None = None
        self._collected = False  # set when the engine has delivered the run's last result
        self._waiting = 0  # consumers waiting on _cv for a result (not reading the link themselves)
        self._submitted = 0
        self._completed = 0
        self._seq = 0
        self._outstanding: dict[int, int] = {}  # input seq -> its results not yet taken
        self._on_done: Callable[[int], None] | None = None  # slither serve: input seq's results all taken
        # Actors driving the pipe (slither.actors Submit / Subscribe / Demand, see _actor):
        self._origin: dict[int, tuple] = {}  # input seq -> (producer, ref) of an actor's input
        self._producers: dict[tuple, list] = {}  # (producer, ref) -> [window, in the pipe, credit owed, address, ref]
        self._sub: tuple | None = None  # (subscriber, ref): it takes every result as Output messages
        self._sub_demand = 0
        self._sub_seq = 0
        self._sub_buf: deque = deque()
        self._sub_lock = threading.Lock()  # one thread sends Outputs at a time, in order
        self._engine = engine
        engine.start(self)

    # -- called by the engine ------------------------------------------
    def _deliver(self, name: str, item: Item) -> None:
        seq = item.meta.get(_SEQ, (None,))[0]
        with self._cv:
            if self._sub is not None:
                self._sub_buf.append((name, _strip(item), seq))
            else:
                self._results.append((name, _strip(item), seq))
                if self._waiting:  # a consumer reading the link itself needs no wake-up
                    self._cv.notify_all()
                return
        self._flush_outputs()

    # -- actors: slither.actors messages, passed on by the PipeSupervisor ------------
    def _actor(self, msg, sender) -> None:
        ref = getattr(msg, "ref", None)
        if self._error is not None or self._state not in ("running",):
            self._rt._tell(sender, PipeFailed(ref, self._error or RuntimeError(f"pipe {self.name!r} is {self._state}")))
            return
        if isinstance(msg, Submit):
            key = (str(sender), ref)  # Thespian's addresses do not hash; their text is unique
            with self._lock:
                new = key not in self._producers
                if new:
                    self._producers[key] = [msg.window, 0, 0, sender, ref]
            if new:
                self._rt._tell(sender, Credit(ref, msg.window))
            for payload in msg.payloads:
                self._feed_actor(payload, key)
        elif isinstance(msg, Subscribe):
            with self._cv:
                self._sub = (sender, ref)
                self._sub_demand = msg.demand
                self._sub_seq = 0
            self._flush_outputs()
        elif getattr(msg, "n", None) is not None:  # Demand(ref, n, pipe=...)
            with self._cv:
                if self._sub is not None and self._sub[1] == ref:
                    self._sub_demand += msg.n
            self._flush_outputs()

    def _feed_actor(self, payload, key) -> None:
        item = payload if isinstance(payload, Item) else Item.wrap(payload)
        seq = self._register(key)
        self._engine.send(seq, item.put_meta({_SEQ: (seq,)}))

    def _register(self, origin: tuple | None = None) -> int:
        """A new input's seq, counted as submitted; ``origin``: the actor's (producer, ref)."""
        with self._lock:
            seq = self._seq
            self._seq += 1
            self._submitted += 1
            self._outstanding[seq] = 1
            if origin is not None:
                self._origin[seq] = origin
                self._producers[origin][1] += 1
        return seq

    def _flush_outputs(self) -> None:
        """Send the subscriber what its demand allows: an Output per run of one output's results."""
        with self._sub_lock:
            while True:
                with self._cv:
                    if self._sub is None or self._sub_demand <= 0 or not self._sub_buf:
                        break
                    name = self._sub_buf[0][0]
                    batch = []
                    while self._sub_buf and self._sub_buf[0][0] == name and len(batch) < 256:
                        batch.append(self._sub_buf.popleft())
                    self._sub_demand -= 1
                    seq, self._sub_seq = self._sub_seq, self._sub_seq + 1
                    sub, ref = self._sub
                self._rt._tell(sub, Output(name, [it for _, it, _ in batch], ref, seq))
                for _, _, s in batch:
                    self._taken(s, 1)
        self._give_credit()

    def _give_credit(self) -> None:
        """Credit back to producers: a quarter of their window at a time, or all once idle."""
        due = []
        with self._lock:
            for p in self._producers.values():
                window, inside, owed, producer, ref = p
                if owed and (owed >= max(1, window // 4) or inside == 0):
                    due.append((producer, ref, owed))
                    p[2] = 0
        for producer, ref, n in due:
            self._rt._tell(producer, Credit(ref, n))

    def _fanout(self, key: tuple, extra: int) -> None:
        """Input ``key[0]`` became ``extra + 1`` items more at a ``cardinality="many"`` stage."""
        seq = key[0]
        if extra > 0:
            with self._lock:
                if seq in self._outstanding:
                    self._outstanding[seq] += extra
        elif extra < 0:
            self._taken(seq, -extra)  # fewer results than items: those never come

    def _ended(self, state: str, error: BaseException | None = None) -> None:
        """The engine delivered its last result: the pipe ``"stopped"`` or ``"failed"``."""
        with self._cv:
            if error is not None and self._error is None:
                self._error = error
            self._state = "failed" if self._error is not None else state
            self._collected = True
            self._cv.notify_all()
        if self._error is not None:
            self._wake_submitters()
            self._tell_actors(self._error)

    def _tell_actors(self, error: BaseException) -> None:
        with self._lock:
            actors = [(p[3], p[4]) for p in self._producers.values()] + ([self._sub] if self._sub is not None else [])
        for addr, ref in actors:
            self._rt._tell(addr, PipeFailed(ref, error))

    def _wake_submitters(self) -> None:
        # A submit blocked on a full pipe looks at the state again: release every slot.
        for _ in range(self._max_pending):
            try:
                self._slots.release()
            except ValueError:
                break

    # -- the caller's API --------------------------------------------------
    def submit(self, payload: Any, timeout: float | None = None) -> Item:
        """Feed one payload (or Item); blocks while the pipe is full.

        Raises:
            TimeoutError: still full after ``timeout`` seconds.
            PipeError: the pipe failed. PipeDown: its runner crashed more often than
            its restart intensity allows. RuntimeError: it was stopped.
        """
        if self._state != "running":
            self._raise_state()
        if not self._slots.acquire(timeout=timeout):
            raise TimeoutError(f"pipe {self.name!r} stayed full for {timeout}s")
        return self._feed(payload)

    def submit_nowait(self, payload: Any) -> Item:
        """Feed one payload, or raise :class:`PipeFull` at once."""
        if self._state != "running":
            self._raise_state()
        if not self._slots.acquire(blocking=False):
            raise PipeFull(f"pipe {self.name!r} is full ({self._max_pending} pending)")
        return self._feed(payload)

    def _feed(self, payload) -> Item:
        if self._state != "running":  # it failed while this submit waited for a slot
            self._raise_state()
        item = payload if isinstance(payload, Item) else Item.wrap(payload)
        seq = self._register()
        try:  # outside the lock: a local engine's send blocks while its first inbox is full
            self._engine.send(seq, item.put_meta({_SEQ: (seq,)}))
        except BaseException:
            with self._lock:  # not accepted: as if never submitted (its seq stays unused)
                self._outstanding.pop(seq, None)
                self._submitted -= 1
            self._slots.release()
            raise
        return item

    def _raise_state(self):
        if self._error is not None:
            raise self._error
        raise RuntimeError(f"pipe {self.name!r} is {self._state}")

    def results(self, timeout: float | None = None) -> Iterator[tuple[str, Item]]:
        """Yield ``(output, item)`` as they are ready, until the pipe stops.

        Raises ``TimeoutError`` when nothing arrives for ``timeout`` seconds,
        and the pipe's ``PipeError`` (or ``PipeDown``) if it failed.
        """

        def ready():
            # "draining" is not the end: results keep coming until the engine ends.
            return self._results or self._collected or self._error is not None or self._state == "stopped"

        while True:
            if not self._await(ready, timeout):
                raise TimeoutError(f"no result from pipe {self.name!r} within {timeout}s")
            with self._cv:
                if self._results:
                    name, item, seq = self._results.popleft()
                elif self._error is not None:
                    raise self._error
                elif ready():
                    return
                else:
                    continue  # another consumer took it
            self._taken(seq, 1)
            if self._producers:
                self._give_credit()
            yield name, item

    def _await(self, ready: Callable[[], Any], timeout: float | None) -> bool:
        """Wait until ``ready()``, reading the engine's link in this thread while nobody else
        does (the result then reaches this thread without a switch); False after ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._cv:
                if ready():
                    return True
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                if not self._engine.can_read():  # the thread that reads notifies us (_poke)
                    self._waiting += 1
                    try:
                        self._cv.wait(left)
                    finally:
                        self._waiting -= 1
                    continue
            self._engine.read_until(ready, left)

    def _poke(self) -> None:
        """The engine's link is free to read again: a waiting consumer may take it."""
        with self._cv:  # _waiting is read under the lock: a consumer about to wait is counted
            if self._waiting:
                self._cv.notify_all()

    async def asubmit(self, payload: Any, timeout: float | None = None) -> Item:
        """``await`` :meth:`submit` (waits on a thread while the pipe is full: the loop runs on)."""
        return await _aio.call(self.submit, payload, timeout)

    def aresults(self, timeout: float | None = None):
        """``async for name, item in handle.aresults()``: :meth:`results`, awaited."""
        return _aio.iterate([pair] for pair in self.results(timeout))

    def _taken(self, seq, n: int) -> None:
        """``n`` results of input ``seq`` are out: free its slot once they all are."""
        with self._lock:
            left = self._outstanding.get(seq)
            if left is None:
                return
            if left > n:
                self._outstanding[seq] = left - n
                return
            del self._outstanding[seq]
            self._completed += 1
            key = self._origin.pop(seq, None)
            if key is not None:  # an actor's input: its credit goes back, not a slot
                p = self._producers[key]
                p[1] -= 1
                p[2] += 1
        if self._on_done is not None:
            self._on_done(seq)
        if key is not None:
            return
        try:
            self._slots.release()
        except ValueError:
            pass  # the slots were all released when the pipe failed

    def stop(self, drain: bool = True, timeout: float | None = 60.0) -> bool:
        """Stop the pipe: with ``drain``, finish everything submitted first.

        Returns True when the drain finished: every result of every input submitted
        came out of the pipe (``results()`` still hands out those not taken yet).
        """
        if self._state == "running":
            self._state = "draining" if drain else "stopping"
        drained = self._engine.stop(drain and self._error is None, timeout)
        with self._cv:
            if self._state in ("draining", "stopping", "running"):
                self._state = "stopped"
            self._cv.notify_all()
        if self in self._rt._pipes:
            self._rt._pipes.remove(self)
        return bool(drained) and self._error is None

    def status(self) -> dict:
        """``{"state", "submitted", "completed", "pending", "stages", "error", "runner_pid",
        "restarts", "subscribed", "producers"}``: ``completed`` counts inputs all of whose
        results were taken, ``pending`` the others; ``stages`` has per stage the items in,
        out, skipped and routed, its busy seconds and ``queued`` (chunks in its inbox, as
        the runner last reported); ``runner_pid`` is the process running the stages,
        ``restarts`` how often it was restarted after a crash; ``subscribed`` and
        ``producers``: actors driving it (slither.actors)."""
        with self._lock:
            out = {
                "state": self._state,
                "submitted": self._submitted,
                "completed": self._completed,
                "pending": self._submitted - self._completed,
                "error": self._error,
                "subscribed": self._sub is not None,
                "producers": len(self._producers),
            }
        out.update(self._engine.status())
        return out


class LocalEngine:
    """The stages as threads of this process (the in-process debugging base)."""

    def __init__(self, pipe, rt, session_id, metadata, max_pending: int):
        self._run = _Run(pipe, rt, session_id, metadata, out_maxsize=max_pending)
        self._handle: PipeHandle | None = None
        self._pump: threading.Thread | None = None

    def start(self, handle: PipeHandle) -> None:
        self._handle = handle
        self._run.fanout = handle._fanout
        self._run.start(None)
        self._pump = threading.Thread(target=self._collect, name=f"slither-pipe-{handle.name}-results", daemon=True)
        self._pump.start()

    def _collect(self) -> None:
        try:
            for name, item in _collect(self._run):
                self._handle._deliver(name, item)
        except PipeError as exc:
            self._handle._ended("failed", exc)
            return
        self._handle._ended("stopped")

    def can_read(self) -> bool:
        """Never: results come through the collecting thread's ``_deliver``."""
        return False

    def read_until(self, ready, timeout) -> bool:
        """Nothing to read in the consumer's thread (see :meth:`can_read`)."""
        return False

    def send(self, seq: int, item: Item) -> None:
        if not self._run.put(self._run.inboxes[0], [item]):
            raise self._run.error or RuntimeError(f"pipe {self._handle.name!r} is stopped")

    def stop(self, drain: bool, timeout: float | None) -> bool:
        drained = False
        if drain:
            self._run.put(self._run.inboxes[0], EOS)
            self._pump.join(timeout)
            drained = not self._pump.is_alive()
        self._run.cancel.set()
        self._pump.join(5)
        return drained

    def status(self) -> dict:
        return {"stages": self._run.stage_stats(), "runner_pid": os.getpid(), "restarts": 0}


_PRIVATE = object()
