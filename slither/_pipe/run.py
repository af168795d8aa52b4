"""One execution of a pipe: a feeder (or a handle), one thread per stage, an out queue.

Declarative pipelines: inline, pool and router stages, pipelined.

How items travel::

    input ─feeder─▶ [inbox 0] ─stage 0 thread─▶ [inbox 1] ─stage 1─▶ ... ─▶ [out]
     (lazy)          bounded        │                bounded      │            │
                                    └─ Routed / router match / Route policy ─┐ │
                                    └─ Skip / skip policy ─────────────────┐ │ │
                                                                           ▼ ▼ ▼
                                                      collector (run_pipe / stream_pipe /
                                                      PipeHandle.results) in the caller

* Every stage runs in its own thread of the coordinating (caller's)
  process, so stage N works on chunk k while stage N+1 works on chunk k-1.
  Inboxes hold at most ``Pipe.buffer`` chunks of at most ``Pipe.chunk_size``
  items: memory is bounded end to end and the input is read lazily.
* A pool stage is a streaming Dispatch whose source is its inbox: its
  batches go caller → worker → caller with the stage's window, retries and
  timeouts; whatever sits in the inbox is batched at once, so a lone item in
  a long-lived pipe does not wait for a full batch.
* Order within an output follows input order in ``run_pipe`` (each item
  carries its input position until it is collected).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from types import MappingProxyType

import attrs

from slither._dispatch import Retry, Route
from slither._item import _EMPTY, Context, Item, _make, _next_ids
from slither._pipe import stages
from slither._pipe.definition import _SEQ, EOS, _policy
from slither._pipe.stages import _crashed
from slither.errors import PipeError, StageTimeout

_STAGES = {"inline": stages.inline, "pool": stages.pool, "router": stages.router}
_CHUNK = {"inline": stages.inline_chunk, "router": stages.route_chunk}


class _Inbox(queue.Queue):
    """A stage's inbox. A pool stage sets ``waker``: called after each put, it has the new
    input batched at once (by the putting thread itself while the stage waits, see
    ``_Dispatch.wake``, or by the stage's thread, its wait ended)."""

    waker: Callable[[], None] | None = None

    def put(self, item, block=True, timeout=None):
        super().put(item, block, timeout)
        waker = self.waker
        if waker is not None:
            waker()


class _Direct:
    """The inbox of a stage run in its upstream's thread (a router always, and a first
    inline stage when asked): putting a chunk runs the stage on it at once. A router
    is a few predicates; a thread of its own would cost more in wake-ups than it runs."""

    waker = None

    def __init__(self, run: _Run, i: int, st):
        self._run = run
        self._i = i
        self._st = st
        self._fn = _CHUNK[st.kind]
        self._lock = threading.Lock()  # several feeders (a handle's submitters) take turns

    def put(self, msg, block=True, timeout=None) -> None:
        run, i, st = self._run, self._i, self._st
        nxt = run.inboxes[i + 1] if i + 1 < len(run.inboxes) else None
        with self._lock:
            if msg is EOS:
                run._end(nxt)
                return
            try:
                self._fn(run, i, st, msg, nxt)
            except stages.Halt as h:
                run.fail(h.stage, h.reason)
            except BaseException as exc:  # noqa: BLE001 - as in _stage_main: fail the run, never the feeder
                run.fail(st.name, exc if isinstance(exc, Exception) else _crashed(st, exc))

    put_nowait = put

    def qsize(self) -> int:
        return 0


class _Run:
    """One execution of a pipe: a feeder (or a handle), one thread per stage, an out queue."""

    def __init__(self, pipe, rt, session_id=None, metadata=None, out_maxsize=None, fuse_first=False):
        self.pipe = pipe
        self.rt = rt
        ctx = Context(pipe=pipe.pipe_name, stores={a: s.store_name for a, s in pipe.stores.items()}, metadata=metadata or {})
        if session_id is not None:
            ctx = attrs.evolve(ctx, session_id=session_id)
        self.ctx = ctx
        n = len(pipe.stages)
        self.inboxes: list = [_Inbox(maxsize=pipe.buffer) for _ in range(n)]
        for i, st in enumerate(pipe.stages):
            if st.kind == "router" or (fuse_first and i == 0 and st.kind == "inline"):
                self.inboxes[i] = _Direct(self, i, st)
        self._stage_info: dict[int, tuple] = {}
        self.busy: dict[int, tuple] = {}  # inline stage with a timeout -> (since, its chunk)
        # What a stage past its timeout does: fail the run here; a runner reports and exits.
        self.on_hung: Callable[[object, list], None] = self._hung
        self.out = queue.Queue(maxsize=out_maxsize or pipe.buffer * 4)
        self.cancel = threading.Event()
        self.error: PipeError | None = None
        self.stats = {st.name: {"in": 0, "out": 0, "skipped": 0, "routed": 0, "seconds": 0.0} for st in pipe.stages}
        self.threads: list[threading.Thread] = []
        self._err_lock = threading.Lock()
        self.fanout: Callable[[tuple, int], None] | None = None  # (item's seq key, results - 1) at a cardinality="many" stage

    # -- plumbing ------------------------------------------------------
    def put(self, q: queue.Queue, msg) -> bool:
        while not self.cancel.is_set():
            try:
                q.put(msg, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def get(self, q: queue.Queue):
        while not self.cancel.is_set():
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                continue
        return EOS

    def fail(self, stage, reason) -> None:
        with self._err_lock:
            if self.error is None:
                self.error = PipeError(self.pipe.pipe_name, stage, reason)
                self.error.__cause__ = reason if isinstance(reason, BaseException) else None
        self.cancel.set()
        try:
            self.out.put_nowait(("error",))
        except queue.Full:
            pass  # the collector also checks self.error whenever it wakes

    def stage_stats(self) -> dict:
        """Per stage: items in, out, skipped, routed, busy seconds, and ``queued``, the chunks
        waiting in its inbox."""
        return {st.name: {**self.stats[st.name], "queued": self.inboxes[i].qsize()} for i, st in enumerate(self.pipe.stages)}

    def stage_info(self, i: int) -> tuple:
        """Stage ``i``'s (Context, declared outputs, error policy), made once."""
        info = self._stage_info.get(i)
        if info is None:
            st = self.pipe.stages[i]
            info = (self.ctx.with_stage(st.name), set(self.pipe.outputs) | {"default"}, _policy(self.pipe, st.name))
            self._stage_info[i] = info
        return info

    def start(self, source: Iterable | None) -> None:
        if source is not None:
            self._spawn(self._feeder, source, name="feeder")
        for i, st in enumerate(self.pipe.stages):
            if not isinstance(self.inboxes[i], _Direct):
                self._spawn(self._stage_main, i, st, _STAGES[st.kind], name=st.name)
        if any(st.kind == "inline" and st.options.get("timeout") for st in self.pipe.stages):
            self._spawn(self._watchdog, name="watchdog")

    def _watchdog(self) -> None:
        limits = {i: st.options["timeout"] for i, st in enumerate(self.pipe.stages) if st.options.get("timeout")}
        tick = min(0.05, min(limits.values()) / 4)
        while not self.cancel.wait(tick):
            now = time.monotonic()
            for i, (since, chunk) in list(self.busy.items()):
                if now - since > limits[i]:
                    self.on_hung(self.pipe.stages[i], chunk)
                    return

    def _hung(self, st, chunk) -> None:
        self.fail(st.name, StageTimeout(st.name, st.options["timeout"]))

    def _spawn(self, fn, *args, name):
        t = threading.Thread(target=fn, args=args, name=f"slither-pipe-{self.pipe.pipe_name}-{name}", daemon=True)
        self.threads.append(t)
        t.start()

    def _feeder(self, source) -> None:
        n = 0
        chunk = []
        ids = iter(())
        try:
            for x in source:
                if isinstance(x, Item):
                    chunk.append(x.put_meta({_SEQ: (n,)}))
                else:  # one Item, made with its position: ids in blocks of 1024, one lock a block
                    i = next(ids, None)
                    if i is None:
                        ids = iter(_next_ids(1024))
                        i = next(ids)
                    chunk.append(_make(Item, i, x, MappingProxyType({_SEQ: (n,)}), "default"))
                n += 1
                if len(chunk) >= self.pipe.chunk_size:
                    if not self.put(self.inboxes[0], chunk):
                        return
                    chunk = []
                if self.cancel.is_set():
                    return
        except BaseException as exc:  # noqa: BLE001 - the input iterator raised (even SystemExit): fail, never hang
            self.fail(None, exc)
            return
        if chunk:
            self.put(self.inboxes[0], chunk)
        self.put(self.inboxes[0], EOS)

    def _stage_main(self, i, st, target) -> None:
        nxt = self.inboxes[i + 1] if i + 1 < len(self.inboxes) else None
        try:
            target(self, i, st, nxt)
        except stages.Halt as h:
            self.fail(h.stage, h.reason)
        except BaseException as exc:  # noqa: BLE001 - a bug in a stage: halt, never hang
            self.fail(st.name, exc if isinstance(exc, Exception) else _crashed(st, exc))

    def _emit(self, direct, skipped) -> None:
        if direct or skipped:
            self.put(self.out, ("items", direct, skipped))

    def _forward(self, nxt, items) -> None:
        if not items:
            return
        if nxt is None:
            self.put(self.out, ("items", [("default", it) for it in items], []))
        else:
            self.put(nxt, items)

    def _end(self, nxt) -> None:
        if nxt is None:
            self.put(self.out, ("eos",))
        else:
            self.put(nxt, EOS)

    # -- failures ------------------------------------------------------
    def _failed_item(self, st, item, reason, direct, skipped, policy=None) -> None:
        policy = policy if policy is not None else _policy(self.pipe, st.name)
        if isinstance(policy, Retry):
            policy = policy.then
        if policy == "skip":
            skipped.append(item.put_meta({"skipped": True, "error": reason, "stage": st.name}))
            self.stats[st.name]["skipped"] += 1
        elif isinstance(policy, Route):
            direct.append((policy.fn, item.put_meta({"error": reason, "stage": st.name})))
            self.stats[st.name]["routed"] += 1
        else:
            raise stages.Halt(st.name, reason)

    # -- stage kinds ---------------------------------------------------


def _strip(item: Item) -> Item:
    if _SEQ not in item.meta:
        return item
    rest = {k: v for k, v in item.meta.items() if k != _SEQ}
    # _make, not Item(...): attrs' frozen __init__ and converter cost ~5x as much, per result
    return _make(type(item), item.id, item.payload, MappingProxyType(rest) if rest else _EMPTY, item.route)


def _collect(run: _Run) -> Iterator[tuple[str, Item]]:
    """Yield (output, item) from a run until it ends; raise its PipeError."""
    ended = False
    try:
        while True:
            try:
                msg = run.out.get(timeout=0.1)
            except queue.Empty:
                msg = None
            if msg is None:  # raised outside the except: the PipeError keeps its own cause
                if run.error is not None:
                    raise run.error
                if run.cancel.is_set():
                    return  # stopped without draining: nothing more will come
                continue
            if msg[0] == "items":
                for name, item in msg[1]:
                    yield name, item
                for item in msg[2]:
                    yield "skipped", item
            elif msg[0] == "eos":
                ended = True
                if run.error is not None:
                    raise run.error
                return
            elif msg[0] == "error":
                raise run.error
    finally:
        if not ended:
            run.cancel.set()  # the consumer left early, or the run failed: stop every stage
