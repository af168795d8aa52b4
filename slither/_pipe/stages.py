"""What each kind of stage does with the chunks in its inbox (each runs on a thread
of its own; ``run`` is the pipe's ``_Run``): inline handlers, routers, and pool stages
(a streaming Dispatch whose source is the stage's inbox)."""

from __future__ import annotations

import queue
import time

from slither import telemetry
from slither._dispatch import Retry, _Dispatch
from slither._item import Item
from slither._pipe.definition import _ROUTE, _SEQ, EOS, _map_policy, _policy
from slither.errors import DispatchError, PoolDown, StageFailure
from slither.stage import Fail, Routed, Skip


def inline(run, i, st, nxt) -> None:
    while True:
        chunk = run.get(run.inboxes[i])
        if chunk is EOS:
            break
        inline_chunk(run, i, st, chunk, nxt)
    run._end(nxt)


def inline_chunk(run, i, st, chunk, nxt) -> None:
    """One chunk through an inline stage: handlers, policies, then on to ``nxt`` and the outputs."""
    ctx, declared, policy = run.stage_info(i)
    t0 = time.monotonic()
    if st.options:  # a timeout: the run's watchdog looks at what each stage is busy with
        run.busy[i] = (t0, chunk)
    stats = run.stats[st.name]
    stats["in"] += len(chunk)
    fwd, direct, skipped = [], [], []
    with telemetry.span(
        ("slither", "pipe", "stage"),
        {"pipe": run.pipe.pipe_name, "stage": st.name, "batch_size": len(chunk), "session_id": ctx.session_id},
    ):
        if st.batch_handler is not None:
            results, error = _call_batch(run, st, chunk, ctx, policy)
            if error is not None:  # the whole chunk failed: the policy decides per item
                for it in chunk:
                    run._failed_item(st, it, error, direct, skipped)
                results = []
            pairs = list(zip(chunk, results))
        else:
            pairs = [(it, _call_one(run, st, it, ctx, policy)) for it in chunk]
        for item, res in pairs:
            _classify(run, st, item, res, fwd, direct, skipped, declared)
    run.busy.pop(i, None)
    stats["out"] += len(fwd)
    stats["seconds"] += time.monotonic() - t0
    run._emit(direct, skipped)
    run._forward(nxt, fwd)


def _call_one(run, st, item, ctx, policy):
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


def _call_batch(run, st, chunk, ctx, policy):
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


def _classify(run, st, item, res, fwd, direct, skipped, declared) -> None:
    if isinstance(res, _Failed):
        run._failed_item(st, item, res.exc, direct, skipped)
    elif isinstance(res, Fail):
        run._failed_item(st, item, StageFailure(res.reason), direct, skipped)
    elif isinstance(res, Skip):
        skipped.append(item.put_meta({"skipped": True, "error": res.reason, "stage": st.name}))
        run.stats[st.name]["skipped"] += 1
    elif isinstance(res, Routed):
        if res.output not in declared:
            run._failed_item(
                st, item, StageFailure(f"stage {st.name!r} routed to undeclared output {res.output!r}"), direct, skipped
            )
        else:
            direct.append((res.output, item.update_payload(res.payload)))
            run.stats[st.name]["routed"] += 1
    elif st.cardinality == "many":
        if not isinstance(res, (list, tuple)):
            run._failed_item(
                st,
                item,
                StageFailure(f"stage {st.name!r} has cardinality='many' but returned {type(res).__name__}, not a list"),
                direct,
                skipped,
            )
            return
        seq = item.meta.get(_SEQ, ())
        if run.fanout is not None and seq:
            run.fanout(seq, len(res) - 1)  # a long-lived pipe's slots count inputs, not results
        for k, p in enumerate(res):
            fwd.append(Item.wrap(p).put_meta({**item.meta, _SEQ: seq + (k,)}))
    else:
        fwd.append(item.update_payload(res))


def router(run, i, st, nxt) -> None:
    while True:
        chunk = run.get(run.inboxes[i])
        if chunk is EOS:
            break
        route_chunk(run, i, st, chunk, nxt)
    run._end(nxt)


def route_chunk(run, i, st, chunk, nxt) -> None:
    """One chunk through a router: the first matching route's output, else on to ``nxt``."""
    t0 = time.monotonic()
    fwd, direct, skipped = [], [], []
    for item in chunk:
        try:
            target = next((out for pred, out in st.routes if pred(item)), None)
        except BaseException as exc:  # noqa: BLE001 - as in _call_one
            run._failed_item(st, item, exc if isinstance(exc, Exception) else _crashed(st, exc), direct, skipped)
            continue
        if target is None:
            fwd.append(item)
        else:
            direct.append((target, item))
    s = run.stats[st.name]
    s["in"] += len(chunk)
    s["routed"] += len(direct)
    s["out"] += len(fwd)
    s["seconds"] += time.monotonic() - t0
    run._emit(direct, skipped)
    run._forward(nxt, fwd)


def pool(run, i, st, nxt) -> None:
    opts = dict(st.options)
    bs = opts.pop("batch_size", 32)
    strategy = opts.pop("strategy", None)
    policy = _policy(run.pipe, st.name)
    batcher = _InboxBatcher(run, run.inboxes[i], bs, strategy)
    disp = _Dispatch(
        [],
        st.fn,
        runtime=run.rt,
        strategy=batcher,
        on_error=_map_policy(policy, st.name),
        context=run.ctx.with_stage(st.name),
        ordering="preserve",
        max_in_flight=opts.pop("max_in_flight", 4),
        **opts,
    )
    disp.allow_idle = disp.wakeable = True
    # New input ends the stage's wait. The thread that put it submits the batch itself when
    # it has nothing else waiting: the stage feeding this one (the nearest with an inbox of
    # its own) has an empty inbox, or is a thread outside the run (a feeder, the link).
    feeder = next((q for q in reversed(run.inboxes[:i]) if isinstance(q, queue.Queue)), None)
    run.inboxes[i].waker = disp.wake if feeder is None else lambda: disp.wake(take=feeder.empty())
    s = run.stats[st.name]
    t_last = time.monotonic()
    it = iter(disp)
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
                {"pipe": run.pipe.pipe_name, "stage": st.name, "batch_size": len(batch), "session_id": run.ctx.session_id},
            )
            t_last = now
            run._emit(direct, skipped)
            run._forward(nxt, fwd)
            if run.cancel.is_set():
                return
    except DispatchError as exc:
        raise Halt(st.name, exc.reason) from exc
    except PoolDown as exc:
        raise Halt(st.name, exc) from exc
    finally:
        it.close()
    run._end(nxt)


def _crashed(st, exc: BaseException) -> StageFailure:
    """A handler raised SystemExit (or another BaseException): the item fails, the stage lives on."""
    err = StageFailure(f"stage {st.name!r}: the handler raised {type(exc).__name__}({exc})")
    err.__cause__ = exc
    return err


class _Failed:
    __slots__ = ("exc",)

    def __init__(self, exc):
        self.exc = exc


class _InboxBatcher:
    """A pool stage's strategy: batches of up to ``size`` from whatever its inbox
    holds. Yields None ("no input yet") when the inbox is empty, so results are
    delivered without waiting for more input; the dispatch then waits for a
    result or for the inbox's wake-up (``_Dispatch.wake``), whichever comes first."""

    def __init__(self, run, inbox: queue.Queue, size: int, strategy=None):
        self.r = run
        self.inbox = inbox
        self.size = size
        self.strategy = strategy

    def batches(self, _items):
        buf: list[Item] = []
        done = False
        while not done or buf:
            if not done:
                try:  # no waiting here: the dispatch waits for results and new input alike
                    chunk = self.inbox.get_nowait()
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
                    yield None
                    continue
            if self.strategy is not None:
                yield from self.strategy.batches(buf)
                buf = []
                continue
            while len(buf) >= self.size or (buf and (done or self.inbox.empty())):
                yield buf[: self.size]
                buf = buf[self.size :]


class Halt(Exception):
    """A stage failed under "halt": the run stops with ``PipeError``."""

    def __init__(self, stage, reason):
        super().__init__(stage, reason)
        self.stage = stage
        self.reason = reason
