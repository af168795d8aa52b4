"""Declarative pipelines: inline, pool and router stages, pipelined.

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
from typing import Any

import attrs

from slither import telemetry
from slither._dispatch import Retry, Route, _Dispatch, check_policy, progress_bar
from slither._item import Context, Item
from slither.errors import (
    ConfigurationError,
    DispatchError,
    PipeDefinitionError,
    PipeError,
    PipeFull,
    PoolDown,
    StageFailure,
)
from slither.stage import Fail, Routed, Skip, StageSpec

_SEQ = "_slither_seq"
_ROUTE = "_slither_route"
RESERVED_OUTPUTS = ("skipped",)


class _EOS:
    def __repr__(self):
        return "<end of stream>"


EOS = _EOS()


# -- the Pipe class ---------------------------------------------------------------


class Pipe:
    """Base class of pipelines. Subclass it and declare:

    ``stages`` (a list of ``slither.stage.inline/pool/router``), ``outputs``
    (names; ``"default"`` always exists), ``on_error`` (``{stage or "*":
    "halt" | "skip" | Retry(...) | Route("output")}``), ``stores``
    (``{alias: StoreClass}``; their session views are callable during runs),
    and optionally ``chunk_size`` and ``buffer`` (chunks between stages).

    The definition is checked when the class is created
    (:class:`PipeDefinitionError`).
    """

    stages: list = []
    outputs: list = []
    on_error: dict = {}
    stores: dict = {}
    pipe_name: str = ""
    chunk_size: int = 64
    buffer: int = 4

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if not cls.__dict__.get("pipe_name"):
            cls.pipe_name = cls.__name__
        _validate(cls)


def _validate(cls) -> None:
    name = cls.pipe_name
    if not isinstance(cls.stages, (list, tuple)) or not cls.stages:
        raise PipeDefinitionError(f"pipe {name!r}: stages must be a non-empty list")
    seen = set()
    for st in cls.stages:
        if not isinstance(st, StageSpec):
            raise PipeDefinitionError(f"pipe {name!r}: {st!r} is not a stage; build stages with slither.stage.inline/pool/router")
        if st.name in seen:
            raise PipeDefinitionError(f"pipe {name!r}: duplicate stage name {st.name!r}")
        seen.add(st.name)
    outs = list(cls.outputs)
    for o in outs:
        if not isinstance(o, str) or not o:
            raise PipeDefinitionError(f"pipe {name!r}: output names must be non-empty strings, got {o!r}")
        if o in RESERVED_OUTPUTS:
            raise PipeDefinitionError(f"pipe {name!r}: output name {o!r} is reserved")
    if len(set(outs)) != len(outs):
        raise PipeDefinitionError(f"pipe {name!r}: duplicate output names in {outs}")
    declared = set(outs) | {"default"}
    for st in cls.stages:
        for _, out in st.routes:
            if out not in declared:
                raise PipeDefinitionError(
                    f"pipe {name!r}: router {st.name!r} routes to undeclared output {out!r}; declared: {sorted(declared)}"
                )
    if not isinstance(cls.on_error, dict):
        raise PipeDefinitionError(f"pipe {name!r}: on_error must be a dict of stage name (or '*') to policy")
    for key, pol in cls.on_error.items():
        if key != "*" and key not in seen:
            raise PipeDefinitionError(f"pipe {name!r}: on_error names unknown stage {key!r}; stages: {sorted(seen)}")
        try:
            check_policy(pol, f"pipe {name!r}: on_error[{key!r}]")
        except ConfigurationError as exc:
            raise PipeDefinitionError(str(exc)) from None
        for p in (pol, pol.then if isinstance(pol, Retry) else None):
            if isinstance(p, Route):
                if not isinstance(p.fn, str):
                    raise PipeDefinitionError(f"pipe {name!r}: on_error[{key!r}]: in a pipe, Route takes an output name")
                if p.fn not in declared:
                    raise PipeDefinitionError(f"pipe {name!r}: on_error[{key!r}] routes to undeclared output {p.fn!r}")
    from slither._store import Store

    if not isinstance(cls.stores, dict):
        raise PipeDefinitionError(f"pipe {name!r}: stores must be a dict of alias to Store class")
    for alias, s in cls.stores.items():
        if not (isinstance(s, type) and issubclass(s, Store)):
            raise PipeDefinitionError(f"pipe {name!r}: stores[{alias!r}] is not a Store subclass")
    for attr in ("chunk_size", "buffer"):
        v = getattr(cls, attr)
        if not isinstance(v, int) or v < 1:
            raise PipeDefinitionError(f"pipe {name!r}: {attr} must be a positive int, got {v!r}")


class PipeResult(dict):
    """``{output name: [Item, ...]}`` with every declared output and ``"default"``;
    plus ``.skipped`` (items dropped by skip policies or ``Skip``) and
    ``.stats`` (per stage: items in/out/skipped/routed and busy seconds)."""

    skipped: list
    stats: dict


# -- the engine -------------------------------------------------------------------------


class _Halt(Exception):
    def __init__(self, stage, reason):
        super().__init__(stage, reason)
        self.stage = stage
        self.reason = reason


def _policy(pipe, stage: str):
    return pipe.on_error.get(stage, pipe.on_error.get("*", "halt"))


class _Run:
    """One execution of a pipe: a feeder (or a handle), one thread per stage, an out queue."""

    def __init__(self, pipe, rt, session_id=None, metadata=None, out_maxsize=None):
        self.pipe = pipe
        self.rt = rt
        ctx = Context(pipe=pipe.pipe_name, stores={a: s.store_name for a, s in pipe.stores.items()}, metadata=metadata or {})
        if session_id is not None:
            ctx = attrs.evolve(ctx, session_id=session_id)
        self.ctx = ctx
        n = len(pipe.stages)
        self.inboxes = [queue.Queue(maxsize=pipe.buffer) for _ in range(n)]
        self.out = queue.Queue(maxsize=out_maxsize or pipe.buffer * 4)
        self.cancel = threading.Event()
        self.error: PipeError | None = None
        self.stats = {st.name: {"in": 0, "out": 0, "skipped": 0, "routed": 0, "seconds": 0.0} for st in pipe.stages}
        self.threads: list[threading.Thread] = []
        self._err_lock = threading.Lock()
        self.fanout: Callable[[int, int], None] | None = None  # (input seq, results - 1) at a cardinality="many" stage

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

    def start(self, source: Iterable | None) -> None:
        if source is not None:
            self._spawn(self._feeder, source, name="feeder")
        for i, st in enumerate(self.pipe.stages):
            target = {"inline": self._inline, "pool": self._pool, "router": self._router}[st.kind]
            self._spawn(self._stage_main, i, st, target, name=st.name)

    def _spawn(self, fn, *args, name):
        t = threading.Thread(target=fn, args=args, name=f"slither-pipe-{self.pipe.pipe_name}-{name}", daemon=True)
        self.threads.append(t)
        t.start()

    def _feeder(self, source) -> None:
        n = 0
        chunk = []
        try:
            for x in source:
                item = x if isinstance(x, Item) else Item.wrap(x)
                chunk.append(item.put_meta({_SEQ: (n,)}))
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
            target(i, st, nxt)
        except _Halt as h:
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
            raise _Halt(st.name, reason)

    # -- stage kinds ---------------------------------------------------
    def _inline(self, i, st, nxt) -> None:
        ctx = self.ctx.with_stage(st.name)
        declared = set(self.pipe.outputs) | {"default"}
        policy = _policy(self.pipe, st.name)
        while True:
            chunk = self.get(self.inboxes[i])
            if chunk is EOS:
                break
            t0 = time.monotonic()
            stats = self.stats[st.name]
            stats["in"] += len(chunk)
            fwd, direct, skipped = [], [], []
            with telemetry.span(
                ("slither", "pipe", "stage"),
                {"pipe": self.pipe.pipe_name, "stage": st.name, "batch_size": len(chunk), "session_id": ctx.session_id},
            ):
                if st.batch_handler is not None:
                    results, error = self._call_batch(st, chunk, ctx, policy)
                    if error is not None:  # the whole chunk failed: the policy decides per item
                        for it in chunk:
                            self._failed_item(st, it, error, direct, skipped)
                        results = []
                    pairs = list(zip(chunk, results))
                else:
                    pairs = [(it, self._call_one(st, it, ctx, policy)) for it in chunk]
                for item, res in pairs:
                    self._classify(st, item, res, fwd, direct, skipped, declared)
            stats["out"] += len(fwd)
            stats["seconds"] += time.monotonic() - t0
            self._emit(direct, skipped)
            self._forward(nxt, fwd)
        self._end(nxt)

    def _call_one(self, st, item, ctx, policy):
        attempts = policy.max_attempts if isinstance(policy, Retry) else 1
        for n in range(1, attempts + 1):
            try:
                res = st.handler(item, ctx)
            except Exception as exc:  # noqa: BLE001
                res = _Failed(exc)
            except BaseException as exc:  # noqa: BLE001 - sys.exit() in a handler must not end the stage thread
                res = _Failed(_crashed(st, exc))
            if not isinstance(res, (_Failed, Fail)) or n == attempts:
                return res
            time.sleep(policy.delay(n))  # Retry backoff inside the stage thread
        return res

    def _call_batch(self, st, chunk, ctx, policy):
        """``(results, None)``, or ``([], error)`` once every attempt failed."""
        attempts = policy.max_attempts if isinstance(policy, Retry) else 1
        error = None
        for n in range(1, attempts + 1):
            try:
                results = st.batch_handler(list(chunk), ctx)
                if not isinstance(results, list) or len(results) != len(chunk):
                    got = len(results) if isinstance(results, list) else type(results).__name__
                    raise TypeError(f"stage {st.name!r}: batch_handler returned {got} results for {len(chunk)} items")
                return results, None
            except BaseException as exc:  # noqa: BLE001 - as in _call_one
                error = exc if isinstance(exc, Exception) else _crashed(st, exc)
                if n < attempts:
                    time.sleep(policy.delay(n))  # Retry backoff inside the stage thread
        return [], error

    def _classify(self, st, item, res, fwd, direct, skipped, declared) -> None:
        if isinstance(res, _Failed):
            self._failed_item(st, item, res.exc, direct, skipped)
        elif isinstance(res, Fail):
            self._failed_item(st, item, StageFailure(res.reason), direct, skipped)
        elif isinstance(res, Skip):
            skipped.append(item.put_meta({"skipped": True, "error": res.reason, "stage": st.name}))
            self.stats[st.name]["skipped"] += 1
        elif isinstance(res, Routed):
            if res.output not in declared:
                self._failed_item(
                    st, item, StageFailure(f"stage {st.name!r} routed to undeclared output {res.output!r}"), direct, skipped
                )
            else:
                direct.append((res.output, item.update_payload(res.payload)))
                self.stats[st.name]["routed"] += 1
        elif st.cardinality == "many":
            if not isinstance(res, (list, tuple)):
                self._failed_item(
                    st,
                    item,
                    StageFailure(f"stage {st.name!r} has cardinality='many' but returned {type(res).__name__}, not a list"),
                    direct,
                    skipped,
                )
                return
            seq = item.meta.get(_SEQ, ())
            if self.fanout is not None and seq:
                self.fanout(seq[0], len(res) - 1)  # a long-lived pipe's slots count inputs, not results
            for k, p in enumerate(res):
                fwd.append(Item.wrap(p).put_meta({**item.meta, _SEQ: seq + (k,)}))
        else:
            fwd.append(item.update_payload(res))

    def _router(self, i, st, nxt) -> None:
        while True:
            chunk = self.get(self.inboxes[i])
            if chunk is EOS:
                break
            t0 = time.monotonic()
            fwd, direct, skipped = [], [], []
            for item in chunk:
                try:
                    target = next((out for pred, out in st.routes if pred(item)), None)
                except BaseException as exc:  # noqa: BLE001 - as in _call_one
                    self._failed_item(st, item, exc if isinstance(exc, Exception) else _crashed(st, exc), direct, skipped)
                    continue
                if target is None:
                    fwd.append(item)
                else:
                    direct.append((target, item))
            s = self.stats[st.name]
            s["in"] += len(chunk)
            s["routed"] += len(direct)
            s["out"] += len(fwd)
            s["seconds"] += time.monotonic() - t0
            self._emit(direct, skipped)
            self._forward(nxt, fwd)
        self._end(nxt)

    def _pool(self, i, st, nxt) -> None:
        opts = dict(st.options)
        bs = opts.pop("batch_size", 32)
        strategy = opts.pop("strategy", None)
        policy = _policy(self.pipe, st.name)
        batcher = _InboxBatcher(self, self.inboxes[i], bs, strategy)
        run = _Dispatch(
            [],
            st.fn,
            runtime=self.rt,
            strategy=batcher,
            on_error=_map_policy(policy, st.name),
            context=self.ctx.with_stage(st.name),
            ordering="preserve",
            max_in_flight=opts.pop("max_in_flight", 4),
            **opts,
        )
        run.allow_idle = True
        batcher.run = run
        s = self.stats[st.name]
        t_last = time.monotonic()
        it = iter(run)
        try:
            for batch in it:
                fwd, direct, skipped = [], [], []
                for item in batch:
                    if item.meta.get("skipped"):
                        skipped.append(item.put_meta({"stage": st.name}))
                    elif _ROUTE in item.meta:
                        meta = dict(item.meta)
                        out = meta.pop(_ROUTE)
                        direct.append((out, Item(item.id, item.payload, meta, item.route)))
                    else:
                        fwd.append(item)
                now = time.monotonic()
                s["in"] += len(batch)
                s["out"] += len(fwd)
                s["skipped"] += len(skipped)
                s["routed"] += len(direct)
                s["seconds"] += now - t_last
                telemetry.emit(
                    ("slither", "pipe", "stage", "stop"),
                    {"duration": int((now - t_last) * 1e9)},
                    {"pipe": self.pipe.pipe_name, "stage": st.name, "batch_size": len(batch), "session_id": self.ctx.session_id},
                )
                t_last = now
                self._emit(direct, skipped)
                self._forward(nxt, fwd)
                if self.cancel.is_set():
                    return
        except DispatchError as exc:
            raise _Halt(st.name, exc.reason) from exc
        except PoolDown as exc:
            raise _Halt(st.name, exc) from exc
        finally:
            it.close()
        self._end(nxt)


def _crashed(st, exc: BaseException) -> StageFailure:
    """A handler raised SystemExit (or another BaseException): the item fails, the stage lives on."""
    err = StageFailure(f"stage {st.name!r}: the handler raised {type(exc).__name__}({exc})")
    err.__cause__ = exc
    return err


class _Failed:
    __slots__ = ("exc",)

    def __init__(self, exc):
        self.exc = exc


def _map_policy(policy, stage: str):
    """A pipe policy as a Dispatch policy (Route by output name → meta marker)."""
    if isinstance(policy, Retry):
        return attrs.evolve(policy, then=_map_policy(policy.then, stage))
    if isinstance(policy, Route):
        out = policy.fn
        return Route(lambda item, reason: item.put_meta({_ROUTE: out, "error": reason, "stage": stage}))
    return policy


class _InboxBatcher:
    """A pool stage's strategy: batches of up to ``size`` from whatever its inbox
    holds. Yields None ("no input yet") while the stage has batches in flight,
    so their results are delivered without waiting for more input."""

    def __init__(self, run: _Run, inbox: queue.Queue, size: int, strategy=None):
        self.r = run
        self.inbox = inbox
        self.size = size
        self.strategy = strategy
        self.run = None

    def batches(self, _items):
        buf: list[Item] = []
        done = False
        while not done or buf:
            if not done:
                busy = self.run is not None and self.run.in_flight > 0
                try:
                    chunk = self.inbox.get(timeout=0.005 if (busy or buf) else 0.1)
                except queue.Empty:
                    chunk = None
                if self.r.cancel.is_set():
                    return
                if chunk is EOS:
                    done = True
                elif chunk is not None:
                    buf.extend(chunk)
                    if len(buf) < self.size and not self.inbox.empty():
                        continue
                elif not buf:
                    if busy:
                        yield None
                    continue
            if self.strategy is not None:
                yield from self.strategy.batches(buf)
                buf = []
                continue
            while len(buf) >= self.size or (buf and (done or self.inbox.empty())):
                yield buf[: self.size]
                buf = buf[self.size :]


# -- public entry points -------------------------------------------------------------------


def _check_pipe(pipe) -> None:
    if not (isinstance(pipe, type) and issubclass(pipe, Pipe)):
        raise ConfigurationError(f"expected a slither.Pipe subclass, got {pipe!r}")


def _rt(runtime):
    if runtime is None:
        raise ConfigurationError("a pipe needs a runtime: use slither.run_pipe (and friends) or the Runtime's methods")
    runtime._require()
    return runtime


def _strip(item: Item) -> Item:
    if _SEQ not in item.meta:
        return item
    meta = dict(item.meta)
    meta.pop(_SEQ)
    return Item(item.id, item.payload, meta, item.route)


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


def run_pipe(
    pipe,
    items: Iterable,
    *,
    runtime=None,
    session_id: str | None = None,
    metadata: dict | None = None,
    progress: bool | None = None,
) -> PipeResult:
    """Run ``pipe`` over ``items``; return every output's items.

    Raises:
        PipeError: a stage failed under ``"halt"`` (``.partial_results`` holds
            the outputs gathered so far).
    """
    _check_pipe(pipe)
    rt = _rt(runtime)
    run = _Run(pipe, rt, session_id, metadata)
    result = PipeResult({o: [] for o in ["default", *pipe.outputs]})
    result.skipped = []
    bar = None
    if progress:
        bar = progress_bar(True, len(items) if hasattr(items, "__len__") else None)
    with telemetry.span(("slither", "pipe", "run"), {"pipe": pipe.pipe_name, "session_id": run.ctx.session_id}):
        run.start(items)
        try:
            for name, item in _collect(run):
                (result.skipped if name == "skipped" else result[name]).append(item)
                if bar:
                    bar.update(1)
        except PipeError as exc:
            for k in result:
                result[k] = [_strip(i) for i in result[k]]
            result.skipped = [_strip(i) for i in result.skipped]
            result.stats = run.stats
            exc.partial_results = result
            raise
        finally:
            run.cancel.set()
            if bar:
                bar.close()
    key = lambda it: it.meta.get(_SEQ, ())  # noqa: E731
    for k in result:
        result[k] = [_strip(i) for i in sorted(result[k], key=key)]
    result.skipped = [_strip(i) for i in sorted(result.skipped, key=key)]
    result.stats = run.stats
    return result


def stream_pipe(
    pipe,
    items: Iterable,
    *,
    runtime=None,
    session_id: str | None = None,
    metadata: dict | None = None,
    progress: bool | None = None,
) -> Iterator[tuple[str, Item]]:
    """Run ``pipe`` lazily over a (possibly endless) iterable; yield ``(output, item)``.

    Skipped items come as ``("skipped", item)``. Memory stays bounded: the
    input is read only as fast as results are taken. Closing the iterator
    stops the run. ``progress=True`` shows a tqdm bar on stderr.
    """
    _check_pipe(pipe)
    rt = _rt(runtime)

    def gen():
        bar = progress_bar(progress, len(items) if hasattr(items, "__len__") else None)
        run = _Run(pipe, rt, session_id, metadata)
        run.start(items)
        try:
            for name, item in _collect(run):
                if bar:
                    bar.update(1)
                yield name, _strip(item)
        finally:
            run.cancel.set()
            if bar:
                bar.close()

    return gen()


# -- long-lived pipes --------------------------------------------------------------------------


class PipeHandle:
    """A running long-lived pipe. Made by ``Runtime.start_pipe``; not constructed by users.

    ``submit(payload, timeout=None)`` blocks while the pipe is full (inputs
    submitted but whose results were not yet taken exceed ``max_pending``);
    ``submit_nowait`` raises :class:`PipeFull` instead. ``results()`` yields
    ``(output, item)`` until the pipe stops. ``stop(drain=True)`` finishes
    what was submitted; ``stop(drain=False)`` abandons it.
    """

    def __init__(self, _token, pipe, rt, session_id, metadata, max_pending: int):
        if _token is not _PRIVATE:
            raise TypeError("PipeHandle is created by Runtime.start_pipe()")
        self.pipe = pipe
        self._rt = rt
        self._run = _Run(pipe, rt, session_id, metadata, out_maxsize=max_pending)
        self._slots = threading.BoundedSemaphore(max_pending)
        self._max_pending = max_pending
        self._lock = threading.Lock()
        self._results: list = []
        self._cv = threading.Condition(self._lock)
        self._state = "running"
        self._collected = False  # set when the collector has taken the run's last result
        self._submitted = 0
        self._completed = 0
        self._seq = 0
        self._outstanding: dict[int, int] = {}  # input seq -> its results not yet taken
        self._chunk: list = []
        self._run.fanout = self._fanout
        self._run.start(None)
        self._pump = threading.Thread(target=self._collect, name=f"slither-pipe-{pipe.pipe_name}-results", daemon=True)
        self._pump.start()

    def _collect(self) -> None:
        try:
            for name, item in _collect(self._run):
                seq = item.meta.get(_SEQ, (None,))[0]
                with self._cv:
                    self._results.append((name, _strip(item), seq))
                    self._cv.notify_all()
            final = "stopped"
        except PipeError:
            final = "failed"
        with self._cv:
            self._state = final
            self._collected = True
            self._cv.notify_all()

    def submit(self, payload: Any, timeout: float | None = None) -> Item:
        """Feed one payload (or Item); blocks while the pipe is full.

        Raises:
            TimeoutError: still full after ``timeout`` seconds.
            PipeError: the pipe failed. RuntimeError: it was stopped.
        """
        if self._state != "running":
            self._raise_state()
        if not self._slots.acquire(timeout=timeout):
            raise TimeoutError(f"pipe {self.pipe.pipe_name!r} stayed full for {timeout}s")
        return self._feed(payload)

    def submit_nowait(self, payload: Any) -> Item:
        """Feed one payload, or raise :class:`PipeFull` at once."""
        if self._state != "running":
            self._raise_state()
        if not self._slots.acquire(blocking=False):
            raise PipeFull(f"pipe {self.pipe.pipe_name!r} is full ({self._max_pending} pending)")
        return self._feed(payload)

    def _feed(self, payload) -> Item:
        item = payload if isinstance(payload, Item) else Item.wrap(payload)
        with self._lock:
            seq = self._seq
            self._seq += 1
            self._submitted += 1
            self._outstanding[seq] = 1
        tagged = item.put_meta({_SEQ: (seq,)})
        if not self._run.put(self._run.inboxes[0], [tagged]):
            self._raise_state()
        return item

    def _raise_state(self):
        if self._run.error is not None:
            raise self._run.error
        raise RuntimeError(f"pipe {self.pipe.pipe_name!r} is {self._state}")

    def results(self, timeout: float | None = None) -> Iterator[tuple[str, Item]]:
        """Yield ``(output, item)`` as they are ready, until the pipe stops.

        Raises ``TimeoutError`` when nothing arrives for ``timeout`` seconds,
        and the pipe's ``PipeError`` if it failed.
        """
        while True:
            with self._cv:
                # "draining" is not the end: results keep coming until the collector finishes.
                ok = self._cv.wait_for(lambda: self._results or self._collected or self._state == "stopped", timeout)
                if not ok:
                    raise TimeoutError(f"no result from pipe {self.pipe.pipe_name!r} within {timeout}s")
                if self._results:
                    name, item, seq = self._results.pop(0)
                elif self._state == "failed":
                    raise self._run.error
                else:
                    return
            self._taken(seq, 1)
            yield name, item

    def _fanout(self, seq: int, extra: int) -> None:
        """Input ``seq`` became ``extra + 1`` items at a ``cardinality="many"`` stage."""
        if extra > 0:
            with self._lock:
                if seq in self._outstanding:
                    self._outstanding[seq] += extra
        elif extra < 0:
            self._taken(seq, -extra)  # no result at all: the input is done

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
        self._slots.release()

    def stop(self, drain: bool = True, timeout: float | None = 60.0) -> None:
        """Stop the pipe: with ``drain``, finish everything submitted first."""
        if self._state == "running":
            self._state = "draining" if drain else "stopping"
        if drain:
            self._run.put(self._run.inboxes[0], EOS)
            self._pump.join(timeout)
        self._run.cancel.set()
        self._pump.join(5)
        with self._cv:
            if self._state in ("draining", "stopping", "running"):
                self._state = "stopped"
            self._cv.notify_all()
        if self in self._rt._pipes:
            self._rt._pipes.remove(self)

    def status(self) -> dict:
        """``{"state", "submitted", "completed", "pending", "stages", "error"}``: ``completed``
        counts inputs all of whose results were taken, ``pending`` the others."""
        with self._lock:
            return {
                "state": self._state,
                "submitted": self._submitted,
                "completed": self._completed,
                "pending": self._submitted - self._completed,
                "stages": {k: dict(v) for k, v in self._run.stats.items()},
                "error": self._run.error,
            }


_PRIVATE = object()


def start_pipe(
    pipe, *, runtime=None, session_id: str | None = None, metadata: dict | None = None, max_pending: int = 10_000
) -> PipeHandle:
    """Start a long-lived pipe on the runtime; return its :class:`PipeHandle`.

    ``max_pending`` bounds inputs submitted whose results were not yet taken
    with ``results()``: past it, ``submit`` blocks. The runtime stops the
    pipe at ``shutdown()``.
    """
    _check_pipe(pipe)
    rt = _rt(runtime)
    if not isinstance(max_pending, int) or max_pending < 1:
        raise ConfigurationError(f"max_pending must be a positive int, got {max_pending!r}")
    handle = PipeHandle(_PRIVATE, pipe, rt, session_id, metadata, max_pending)
    rt._pipes.append(handle)
    return handle


__all__ = ["Pipe", "PipeResult", "PipeHandle", "run_pipe", "stream_pipe", "start_pipe"]
