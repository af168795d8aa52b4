"""Batched fan-out to a pool of worker processes, with real backpressure.

How a dispatch travels::

    items (lazy) ─▶ strategy.batches() ─▶ [window: at most max_in_flight batches
                                           taken from the input and not yet
                                           handed back to the caller]
                      │ pickle once per batch (SerializationError names the item)
                      ▼
                  Pool.submit ─▶ worker ─▶ reply ─▶ this thread's queue
                      ▲                              │
                      └── Retry (backoff timer) ◀────┤ failure → on_error
                                                     ▼
                          ordering: "preserve" (a finished batch waiting for an
                          earlier one still holds its window slot) or "as_completed"

Tunables and their trade-offs:

* ``batch_size`` (FixedBatch): larger batches amortise the per-batch cost
  (~tens of µs here) but coarsen load balancing, retries and timeouts.
* ``max_in_flight``: how much input is read ahead. It bounds memory; it
  should be at least ``2 × workers`` to keep every worker fed.
* ``timeout``: per batch, counted from when the batch starts on a worker.
  A late batch's worker is SIGKILLed and replaced.
* ``on_error``: "halt" | "skip" | ``Retry(...)`` | ``Route(fn)``.
"""

from __future__ import annotations

import collections
import difflib
import hashlib
import heapq
import importlib.util
import inspect
import itertools
import pickle
import queue
import time
from collections.abc import Callable, Iterable, Iterator
from itertools import repeat
from typing import Any, Protocol, runtime_checkable

import attrs

from slither import _pickle, _wire, telemetry
from slither._item import _EMPTY, Context, Item, _ItemSlots, _make, _next_ids
from slither._pool import Task, new_ref
from slither.errors import (
    BadBatchResult,
    BatchFailure,
    ConfigurationError,
    DispatchError,
    PoolDown,
    SerializationError,
    WorkerError,
)

# -- strategies -------------------------------------------------------------


@runtime_checkable
class Strategy(Protocol):
    """Splits an iterable of Items into batches (lists of Items)."""

    def batches(self, items: Iterable[Item]) -> Iterator[list[Item]]: ...


def _check_positive(owner: str, name: str, value) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise ConfigurationError(f"{owner}: {name} must be a positive number, got {value!r}")


@attrs.frozen
class FixedBatch:
    """Consecutive chunks of ``size`` items (the last may be shorter). Streams."""

    size: int = 64

    def __attrs_post_init__(self):
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 1:
            raise ConfigurationError(f"FixedBatch: size must be a positive int, got {self.size!r}")

    def batches(self, items: Iterable[Item]) -> Iterator[list[Item]]:
        it = iter(items)
        while True:
            chunk = list(itertools.islice(it, self.size))
            if not chunk:
                return
            yield chunk


@attrs.frozen
class WeightedBatch:
    """Batches whose summed ``weight_fn(item)`` stays within ``max_weight``.

    An item heavier than ``max_weight`` travels alone. Streams.
    """

    max_weight: float
    weight_fn: Callable[[Item], float] = attrs.field(default=lambda item: 1)

    def __attrs_post_init__(self):
        _check_positive("WeightedBatch", "max_weight", self.max_weight)
        if not callable(self.weight_fn):
            raise ConfigurationError(f"WeightedBatch: weight_fn must be callable, got {self.weight_fn!r}")

    def batches(self, items: Iterable[Item]) -> Iterator[list[Item]]:
        batch: list[Item] = []
        total = 0.0
        for item in items:
            w = self.weight_fn(item)
            if not isinstance(w, (int, float)) or w < 0:
                raise ConfigurationError(f"WeightedBatch: weight_fn returned {w!r} for item {item.id!r}; expected a number >= 0")
            if batch and total + w > self.max_weight:
                yield batch
                batch, total = [], 0.0
            batch.append(item)
            total += w
        if batch:
            yield batch


@attrs.frozen
class KeyPartition:
    """One batch per distinct ``key_fn(item)``, in key order.

    Reads the whole input first (it must, to group it). Keys that cannot be
    ordered keep their first-seen order.
    """

    key_fn: Callable[[Item], Any]

    def __attrs_post_init__(self):
        if not callable(self.key_fn):
            raise ConfigurationError(f"KeyPartition: key_fn must be callable, got {self.key_fn!r}")

    def batches(self, items: Iterable[Item]) -> Iterator[list[Item]]:
        groups: dict[Any, list[Item]] = {}
        for item in items:
            groups.setdefault(self.key_fn(item), []).append(item)
        keys = list(groups)
        try:
            keys.sort()
        except TypeError:
            pass
        for k in keys:
            yield groups[k]


class _Single:
    """The strategy of ``call_batch``: the whole input as one batch."""

    def batches(self, items):
        batch = list(items)
        if batch:
            yield batch


# -- error policies -----------------------------------------------------------


@attrs.frozen
class Route:
    """On failure, replace each item of the batch with ``fn(item, reason) -> Item``."""

    fn: Callable[[Item, BaseException], Item]

    def __attrs_post_init__(self):
        if not callable(self.fn) and not isinstance(self.fn, str):
            raise ConfigurationError(f"Route: expected a callable (or, in a pipe, an output name), got {self.fn!r}")


def _check_then(inst, attr, value):
    if value not in ("halt", "skip") and not isinstance(value, Route):
        raise ConfigurationError(f"Retry.then must be 'halt', 'skip' or a Route, got {value!r}")


@attrs.frozen
class Retry:
    """Re-dispatch a failed batch, possibly to another worker.

    Attempt ``n`` (from 2) waits ``min(max_backoff, backoff * 2 ** (n - 2))``
    seconds. After ``max_attempts``, or for a failure retrying cannot fix
    (bad result, serialization), ``then`` applies. Items carry
    ``meta["attempts"]``.
    """

    max_attempts: int = 3
    backoff: float = 0.1
    max_backoff: float = 5.0
    then: Any = attrs.field(default="halt", validator=_check_then)

    def __attrs_post_init__(self):
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ConfigurationError(f"Retry: max_attempts must be an int >= 1, got {self.max_attempts!r}")
        if self.backoff < 0 or self.max_backoff < 0:
            raise ConfigurationError("Retry: backoff and max_backoff must be >= 0")

    def delay(self, attempt: int) -> float:
        return min(self.max_backoff, self.backoff * (2 ** max(0, attempt - 1)))


def check_policy(policy, where: str = "on_error") -> None:
    if policy in ("halt", "skip") or isinstance(policy, (Retry, Route)):
        return
    raise ConfigurationError(f"{where}: expected 'halt', 'skip', Retry(...) or Route(...), got {policy!r}")


# -- executors ------------------------------------------------------------------


class InlineExecutor:
    """Runs ``fn(payloads) -> list`` in the calling process (no isolation, no timeout).

    Useful for debugging and for tests of the batching logic.
    """

    def __init__(self, fn: Callable[[list], list]):
        if not callable(fn):
            raise ConfigurationError(f"InlineExecutor: fn must be callable, got {fn!r}")
        self.fn = fn

    def execute_batch(self, batch: list[Item], ctx: Context) -> list[Item]:
        from slither import worker

        prev, worker._current = worker._current, ctx
        try:
            results = self.fn([i.payload for i in batch])
        finally:
            worker._current = prev
        _check_results(results, len(batch))
        return [i.update_payload(r) for i, r in zip(batch, results)]


def _check_results(results, n) -> None:
    if not isinstance(results, list):
        raise BadBatchResult(f"batch function returned {type(results).__name__}, expected a list")
    if len(results) != n:
        raise BadBatchResult(f"batch function returned {len(results)} results for {n} items")


# -- the runner -------------------------------------------------------------------

ORDERINGS = ("preserve", "as_completed")
AFFINITIES = ("none", "session")


def _positive_int(where: str, name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigurationError(f"{where}: {name} must be a positive int, got {value!r}")


def check_options(
    where: str,
    *,
    pool: str = "default",
    strategy=None,
    batch_size: int = 64,
    max_in_flight: int = 8,
    ordering: str = "preserve",
    timeout: float | None = None,
    affinity: str = "none",
) -> None:
    """Check dispatch options (also a pool stage's, when its Pipe class is created).

    Raises:
        ConfigurationError: naming ``where``, the option and what it got.
    """
    if not isinstance(pool, str) or not pool:
        raise ConfigurationError(f"{where}: pool must be a pool name, got {pool!r}")
    if strategy is not None and not hasattr(strategy, "batches"):
        raise ConfigurationError(f"{where}: strategy must be an object with batches(items), got {strategy!r}")
    _positive_int(where, "batch_size", batch_size)
    _positive_int(where, "max_in_flight", max_in_flight)
    if ordering not in ORDERINGS:
        raise ConfigurationError(f"{where}: ordering must be one of {ORDERINGS}, got {ordering!r}")
    if timeout is not None:
        _check_positive(where, "timeout", timeout)
    if affinity not in AFFINITIES:
        raise ConfigurationError(f"{where}: affinity must be one of {AFFINITIES}, got {affinity!r}")


def _resolve_fn(fn) -> tuple[Any, bytes | None]:
    if isinstance(fn, str):
        mod, sep, attr = fn.partition(":")
        if not sep or not mod or not attr:
            raise ConfigurationError(f"fn: expected 'module:function', got {fn!r}")
        try:
            found = importlib.util.find_spec(mod)
        except (ImportError, ValueError) as exc:
            raise ConfigurationError(f"fn {fn!r}: module {mod!r} cannot be found: {exc}") from exc
        if found is None:
            raise ConfigurationError(f"fn {fn!r}: no module named {mod!r} on sys.path")
        _check_named(fn, mod, attr)
        return ("name", fn), None
    if callable(fn):
        try:
            blob = _pickle.dumps_code(fn)
        except Exception as exc:
            raise SerializationError(f"fn {fn!r} could not be pickled: {type(exc).__name__}: {exc}") from exc
        return ("pickled", hashlib.blake2b(blob, digest_size=16).hexdigest()), blob
    raise ConfigurationError(f"fn: expected 'module:function' or a callable, got {fn!r}")


_checked_names: set[str] = set()


def _check_named(fn: str, mod: str, attr: str) -> None:
    """Import ``mod`` here once and check that it has a callable ``attr`` (dotted), so a
    misspelt function fails before any work, as a missing module does. A module that
    fails to import here is left to the worker, whose error says why."""
    if fn in _checked_names:
        return
    try:
        obj = importlib.import_module(mod)
    except Exception:  # noqa: BLE001
        return
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigurationError(f"fn {fn!r}: module {mod!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise ConfigurationError(f"fn {fn!r}: {attr!r} of module {mod!r} is not callable (it is {type(obj).__name__})")
    _checked_names.add(fn)


class _Batch:
    """One batch of a dispatch.

    A batch cut from raw payloads (the common case) keeps the payloads and
    a range of fresh ids, and builds its input Items only if something needs
    them (a failure policy, an executor): the result Items carry the same ids.
    """

    __slots__ = ("seq", "_items", "ids", "payloads", "attempts", "chunks", "t0", "start", "by_value")

    def __init__(self, seq, items, ids=None, payloads=None):
        self.seq = seq
        self._items = items
        self.ids = ids
        self.payloads = payloads
        self.attempts = 0
        self.chunks = None
        self.t0 = 0
        self.start: int | None = None  # position of its first item in the input (FixedBatch)
        self.by_value = False  # pickled with cloudpickle (see slither._pickle)

    @property
    def items(self) -> list[Item]:
        if self._items is None:
            self._items = list(map(_ItemSlots, self.ids, self.payloads, repeat(_EMPTY), repeat("default")))
        return self._items

    def __len__(self) -> int:
        return len(self.payloads) if self._items is None else len(self._items)


class _RawChunk:
    """What ``_fixed_batches`` yields for a chunk of payloads (no Items yet)."""

    __slots__ = ("ids", "payloads")

    def __init__(self, ids, payloads):
        self.ids = ids
        self.payloads = payloads


class _Dispatch:
    """One dispatch call. Validates everything in ``__init__`` (before any work)."""

    def __init__(
        self,
        items,
        fn=None,
        *,
        runtime=None,
        pool: str = "default",
        strategy=None,
        batch_size: int = 64,
        max_in_flight: int = 8,
        ordering: str = "preserve",
        on_error="halt",
        timeout: float | None = None,
        context: Context | None = None,
        affinity: str = "none",
        executor=None,
        progress: bool | None = None,
        total: int | None = None,
    ):
        check_options(
            "dispatch",
            pool=pool,
            strategy=strategy,
            batch_size=batch_size,
            max_in_flight=max_in_flight,
            ordering=ordering,
            timeout=timeout,
            affinity=affinity,
        )
        if strategy is None:
            strategy = FixedBatch(batch_size)
        check_policy(on_error)
        if isinstance(on_error, Route) and not callable(on_error.fn):
            raise ConfigurationError("on_error=Route(...) in a dispatch needs a callable fn(item, reason) -> Item")
        if context is not None and not isinstance(context, Context):
            raise ConfigurationError(f"context must be a slither.Context, got {type(context).__name__}")
        if isinstance(items, (str, bytes)) or not isinstance(items, Iterable):
            raise ConfigurationError(f"items must be an iterable of payloads or Items, got {type(items).__name__}")
        self.executor = executor
        if executor is not None:
            if not hasattr(executor, "execute_batch"):
                raise ConfigurationError(f"executor: expected an object with execute_batch(batch, ctx), got {executor!r}")
            self.fn_key, self.fn_blob = None, None
            self.pool = None
        else:
            if fn is None:
                raise ConfigurationError("dispatch needs fn ('module:function' or a callable) unless executor= is given")
            self.fn_key, self.fn_blob = _resolve_fn(fn)
            if runtime is None:
                from slither._runtime import runtime as default_runtime

                runtime = default_runtime()
            self.pool = runtime.pool(pool)
            if self.pool.down is not None:
                raise self.pool.down_error()
        self.pool_name = pool
        self.items = items
        self.strategy = strategy
        self.max_in_flight = max_in_flight
        self.ordering = ordering
        self.on_error = on_error
        self.timeout = timeout
        self.ctx = context if context is not None else Context()
        self._ctx_blob: bytes | None = None
        self.by_value = False  # once a batch needed cloudpickle, the rest of the dispatch uses it
        self.session = self.ctx.session_id if affinity == "session" else None
        self.progress = progress
        self.total = total if total is not None or not hasattr(items, "__len__") else len(items)
        self.in_flight = 0
        self.cancelled = False
        self._q: queue.SimpleQueue | None = None  # the queue __iter__ waits on (cancel() wakes it)
        self.allow_idle = False  # pipe stages set it: their strategy may yield None for "no input yet"

    # ---------------------------------------------------------------
    def _wrapped(self):
        # Ids come in blocks of 1024: one lock per block, not per item.
        ids = iter(())
        for x in self.items:
            if isinstance(x, Item):
                yield x
                continue
            i = next(ids, None)
            if i is None:
                ids = iter(_next_ids(1024))
                i = next(ids)
            yield _make(Item, i, x, _EMPTY, "default")

    def _fixed_batches(self, size: int):
        """FixedBatch over the input (the hot path): a chunk of payloads stays unwrapped."""
        it = iter(self.items)
        while True:
            chunk = list(itertools.islice(it, size))
            if not chunk:
                return
            ids = _next_ids(len(chunk))
            if not any(issubclass(t, Item) for t in set(map(type, chunk))):  # C-speed scan: usually one type
                yield _RawChunk(ids, chunk)
                continue
            ids = iter(ids)
            yield [x if isinstance(x, Item) else _ItemSlots(next(ids), x, _EMPTY, "default") for x in chunk]

    def _pickle(self, b: _Batch, ref: int) -> list:
        payloads = b.payloads if b.payloads is not None else [i.payload for i in b.items]
        if self._ctx_blob is None:  # the Context is the same for every batch: pickled once
            try:
                self._ctx_blob = pickle.dumps(self.ctx, protocol=5)
            except Exception:  # noqa: BLE001 - metadata holding a local class, say
                self._ctx_blob = _pickle.dumps_by_value(self.ctx)
        msg = ("batch", ref, self.fn_key, payloads, self._ctx_blob)
        if not (b.by_value or self.by_value):
            try:
                return _wire.dumps(msg)
            except Exception:  # noqa: BLE001 - a local class, a lambda in a payload: cloudpickle can
                self.by_value = True  # the rest of this dispatch goes by value at once
        b.by_value = True
        try:
            return _wire.dumps(msg, by_value=True)
        except Exception as exc:
            for k, item in enumerate(b.items):
                try:
                    _pickle.dumps_by_value(item.payload)
                except Exception as inner:  # noqa: BLE001
                    raise self._bad_item(b, k, f"could not be pickled: {type(inner).__name__}: {inner}") from inner
            raise SerializationError(f"batch {b.seq} could not be pickled: {type(exc).__name__}: {exc}") from exc

    def _bad_item(self, b: _Batch, k: int, why: str) -> SerializationError:
        """The error naming item ``k`` of batch ``b``: its id, and its position in the input when known."""
        item = b.items[k]
        pos = None if b.start is None else b.start + k
        where = f"at position {pos} of the input" if pos is not None else f"{k} of batch {b.seq}"
        return SerializationError(f"item {item.id!r} ({where}) {why}", item_id=item.id, position=pos)

    def _unloadable(self, b: _Batch, exc: SerializationError, q) -> SerializationError | None:
        """The worker could not unpickle ``b``: send it again by value (None), unless it
        went so already; then the error names the item (it cannot succeed: not retried)."""
        if not b.by_value:
            self.by_value = True
            b.attempts -= 1  # not an attempt of the policy's: the batch never ran
            self._submit(b, q)
            return None
        if exc.unloadable:
            k, name = exc.unloadable[0]
            return self._bad_item(b, k, f"could not be unpickled in the worker: class {name} cannot be imported there")
        return exc

    def _batch_meta(self, b: _Batch, **extra) -> dict:
        """Metadata of a dispatch batch event (built only when a handler listens)."""
        return {
            "pool": self.pool_name,
            "batch_ref": b.seq,
            "batch_size": len(b),
            "session_id": self.ctx.session_id,
            "attempt": b.attempts,
            "pipe": self.ctx.pipe,
            "stage": self.ctx.stage,
            **extra,
        }

    def _submit(self, b: _Batch, q: queue.SimpleQueue) -> None:
        b.attempts += 1
        b.t0 = time.monotonic_ns()
        if telemetry.has_handlers(("slither", "dispatch", "batch", "start")):
            telemetry.emit(("slither", "dispatch", "batch", "start"), {"system_time": time.time_ns()}, self._batch_meta(b))
        if self.executor is not None:
            try:
                out = self.executor.execute_batch(b.items, self.ctx)
                if not isinstance(out, list) or len(out) != len(b.items) or not all(isinstance(i, Item) for i in out):
                    raise BadBatchResult(
                        f"executor {type(self.executor).__name__} returned {type(out).__name__} "
                        f"of {len(out) if hasattr(out, '__len__') else '?'}; expected a list of {len(b.items)} Items"
                    )
                q.put((b, out, None, None))
            except BatchFailure as exc:
                q.put((b, None, exc, None))
            except Exception as exc:  # noqa: BLE001
                import traceback

                q.put((b, None, WorkerError(type(exc).__name__, str(exc), traceback.format_exc()), None))
            return
        ref = new_ref()
        try:
            chunks = self._pickle(b, ref)
        except SerializationError as exc:
            q.put((b, None, exc, None))
            return

        def done(task, result, error, pid, _b=b, _q=q):
            _q.put((_b, result, error, pid))

        self.pool.submit(
            Task(
                self.fn_key,
                self.fn_blob,
                chunks,
                ref=ref,
                session=self.session,
                timeout=self.timeout,
                callback=done,
                owner=self,
                meta=b.seq,
            )
        )

    def _finish_ok(self, b: _Batch, result, pid) -> list[Item]:
        if self.executor is not None:
            out = result
        elif b._items is None:
            # map() over the columns: about 30% less than a comprehension over zip() (no tuples, no frame)
            out = list(map(_ItemSlots, b.ids, result, repeat(_EMPTY), repeat("default")))
        else:
            out = [_make(Item, i.id, r, i.meta, i.route) for i, r in zip(b._items, result)]
        if isinstance(self.on_error, Retry):
            out = [i.put_meta({"attempts": b.attempts}) for i in out]
        if telemetry.has_handlers(("slither", "dispatch", "batch", "stop")):
            telemetry.emit(
                ("slither", "dispatch", "batch", "stop"),
                {"duration": time.monotonic_ns() - b.t0},
                self._batch_meta(b, worker=pid),
            )
        return out

    def _failed(self, b: _Batch, exc: BaseException, pid, retries: list) -> list[Item] | None:
        """Apply the policy. Returns replacement items, None when retried; raises for halt."""
        if telemetry.has_handlers(("slither", "dispatch", "batch", "exception")):
            telemetry.emit(
                ("slither", "dispatch", "batch", "exception"),
                {"duration": time.monotonic_ns() - b.t0},
                self._batch_meta(b, worker=pid, error=exc),
            )
        if isinstance(exc, PoolDown):
            raise exc
        policy = self.on_error
        if isinstance(policy, Retry):
            if getattr(exc, "retryable", True) and b.attempts < policy.max_attempts:
                heapq.heappush(retries, (time.monotonic() + policy.delay(b.attempts), b.seq, b))
                return None
            policy = policy.then
        if policy == "skip":
            return [i.put_meta({"skipped": True, "error": exc, "attempts": b.attempts}) for i in b.items]
        if isinstance(policy, Route):
            out = []
            for i in b.items:
                r = policy.fn(i, exc)
                if not isinstance(r, Item):
                    raise ConfigurationError(f"Route fn returned {type(r).__name__} for item {i.id!r}; expected an Item")
                out.append(r)
            return out
        raise DispatchError(exc, batch_ref=b.seq, partial_results=None) from exc

    def cancel(self) -> None:
        """Stop this dispatch from any thread: nothing more is taken from the input or
        handed out, queued batches are dropped and the workers running its batches are
        killed (and replaced), as Ctrl-C does."""
        self.cancelled = True
        if self.pool is not None:
            self.pool.cancel(self, kill_running=True)
        q = self._q
        if q is not None:
            q.put(_CANCELLED)
            if self.pool is not None:
                self.pool.wake()  # a thread reading the pool's sockets looks at its queue

    def __iter__(self) -> Iterator[list[Item]]:
        """Yield each batch's result Items (a list per batch), as the ordering allows."""
        q: queue.SimpleQueue = queue.SimpleQueue()
        self._q = q
        if type(self.strategy) is FixedBatch:
            batches = self._fixed_batches(self.strategy.size)
        else:
            batches = iter(self.strategy.batches(self._wrapped()))
        preserve = self.ordering == "preserve"
        ready: dict[int, list[Item]] = {}
        retries: list = []
        next_out = 0
        seq = 0
        window = 0
        exhausted = False
        interrupted = False
        fixed = type(self.strategy) is FixedBatch
        taken = 0
        bar = _progress(self.progress, self.total)
        try:
            while not self.cancelled:
                if preserve:
                    while next_out in ready:
                        out = ready.pop(next_out)
                        next_out += 1
                        window -= 1
                        if bar is not None:
                            bar.update(len(out))
                        yield out
                idle = False
                while not exhausted and window < self.max_in_flight:
                    self.in_flight = window - len(ready)
                    try:
                        items = next(batches)
                    except StopIteration:
                        exhausted = True
                        break
                    if type(items) is _RawChunk:
                        b = _Batch(seq, None, items.ids, items.payloads)
                    else:
                        if items is None and self.allow_idle:
                            idle = True  # a pipe stage's source has nothing right now: deliver results meanwhile
                            break
                        if not isinstance(items, list) or not items:
                            raise ConfigurationError(
                                f"strategy {type(self.strategy).__name__} produced {items!r} as batch {seq}; "
                                "expected a non-empty list of Items"
                            )
                        b = _Batch(seq, items)
                    if fixed:
                        b.start = taken
                        taken += len(b)
                    seq += 1
                    window += 1
                    self._submit(b, q)
                if exhausted and window == 0:
                    return
                if window - len(ready) == 0 and not retries:
                    continue  # nothing in flight: go take more input
                wait = None
                if retries:
                    wait = max(0.0, retries[0][0] - time.monotonic())
                if idle:
                    wait = 0.0 if wait is None else min(wait, 0.0)
                try:
                    # Sliced waits keep the caller responsive to signals (Ctrl-C) whatever the platform.
                    timeout = 0.5 if wait is None else min(wait, 0.5)
                    msg = q.get(timeout=timeout) if self.pool is None else self.pool.wait(q, timeout)
                except queue.Empty:
                    msg = None
                now = time.monotonic()
                while retries and retries[0][0] <= now:
                    _, _, rb = heapq.heappop(retries)
                    self._submit(rb, q)
                if msg is None or msg is _CANCELLED or self.cancelled:
                    continue
                b, result, error, pid = msg
                if error is not None and getattr(error, "unloadable", None) is not None:
                    error = self._unloadable(b, error, q)
                    if error is None:
                        continue
                if error is None:
                    out = self._finish_ok(b, result, pid)
                else:
                    try:
                        out = self._failed(b, error, pid, retries)
                    except DispatchError as exc:
                        exc.partial_results = [i for k in sorted(ready) for i in ready[k]]
                        raise
                    if out is None:
                        continue
                if preserve:
                    ready[b.seq] = out
                else:
                    window -= 1
                    if bar is not None:
                        bar.update(len(out))
                    yield out
        except (KeyboardInterrupt, SystemExit):
            interrupted = True
            raise
        finally:
            if bar is not None:
                bar.close()
            if self.pool is not None:
                self.pool.cancel(self, kill_running=interrupted)


_CANCELLED = object()  # put on a dispatch's queue by cancel()


def _progress(progress, total):
    """A tqdm bar on stderr, or None: of ``total`` items, or with no end shown when it is None."""
    import sys

    if not progress:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="item", file=sys.stderr, leave=False)


# -- public functions -----------------------------------------------------------

_OPTIONS = frozenset(inspect.signature(_Dispatch.__init__).parameters) - {"self", "items", "fn"}


def _known(name: str, opts: dict) -> dict:
    """``opts``, once every key is an option of ``name`` (the error names the caller's function, not ours)."""
    for key in opts:
        if key not in _OPTIONS:
            close = difflib.get_close_matches(key, _OPTIONS, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; the options are {sorted(_OPTIONS - {'runtime'})}"
            raise TypeError(f"{name}() got an unexpected keyword argument {key!r}{hint}")
    return opts


def dispatch(items: Iterable, fn=None, **opts) -> list[Item]:
    """Run ``fn`` over ``items`` in batches on a worker pool; return every item.

    Args:
        items: payloads or :class:`Item` s (payloads are wrapped).
        fn: ``"module:function"`` (imported in the worker) or a callable
            (sent with cloudpickle). ``fn(payloads: list) -> list`` of the
            same length.
        pool, strategy, batch_size, max_in_flight, ordering, on_error,
        timeout, context, affinity, executor, progress: see the module
            docstring and ``docs/dispatch.md``.

    Raises:
        ConfigurationError: a bad option (before any work starts).
        DispatchError: a batch failed under ``on_error="halt"``.
        PoolDown: the pool went down (restart intensity exceeded).

    Runs in the calling thread; batches run in worker processes.
    """
    run = _Dispatch(items, fn, **_known("dispatch", opts))
    got: list[Item] = []
    try:
        for batch in run:
            got.extend(batch)
    except DispatchError as exc:
        exc.partial_results = got + exc.partial_results
        raise
    return got


class _Stream:
    """What :func:`dispatch_stream` returns: an iterator of Items, ``close()`` and ``cancel()``.

    Iterating it runs through each batch's Items at C speed (a ``chain`` over
    the batches), where a generator would resume once per item. ``close()``
    stops at once, as closing a generator would: the dispatch ends (batches
    not started are dropped) and no further item is handed out, even to a
    loop already inside a batch. ``close()`` belongs to the iterating thread;
    ``cancel()`` may come from any thread.
    """

    __slots__ = ("_run", "_batches", "_items", "_current")

    def __init__(self, run: _Dispatch):
        self._run = run
        self._batches = iter(run)
        self._current: list = [iter(())]  # the iterator over the batch being handed out (a holder: no cycle via self)
        self._items = itertools.chain.from_iterable(_noting(self._batches, self._current))

    def __iter__(self) -> Iterator[Item]:
        return self._items  # next() on either takes from the same sequence

    def __next__(self) -> Item:
        return next(self._items)

    def close(self) -> None:
        """Stop the dispatch; nothing more is handed out (from the iterating thread)."""
        self._batches.close()
        collections.deque(self._current[0], maxlen=0)  # the chain's iterator over this batch is spent

    def cancel(self) -> None:
        """Stop the dispatch from any thread, killing the workers running its batches
        (they are replaced); the iterating thread's loop ends at its next item."""
        self._run.cancel()
        collections.deque(self._current[0], maxlen=0)

    @property
    def cancelled(self) -> bool:
        return self._run.cancelled


def _noting(batches, holder: list):
    """Each batch as an iterator the chain takes items from, noted in ``holder``."""
    for out in batches:
        holder[0] = it = iter(out)
        yield it


def dispatch_stream(items: Iterable, fn=None, **opts) -> Iterator[Item]:
    """Like :func:`dispatch`, but yields items as they are ready.

    Input is consumed lazily: at most ``max_in_flight`` batches are read
    ahead of what the caller has taken. Options are validated now, before
    the first ``next()``. ``close()`` on the returned iterator stops early.
    """
    return _Stream(_Dispatch(items, fn, **_known("dispatch_stream", opts)))


def call_batch(batch: Iterable, fn=None, **opts) -> list[Item]:
    """Run one batch as is (no splitting) and return its items."""
    opts.pop("strategy", None)
    items = list(batch)
    if not items:
        return []
    return dispatch(items, fn, strategy=_Single(), **opts)


def run_on_workers(rt, fn, pool: str, timeout: float) -> list[tuple[int, Any]]:
    p = rt.pool(pool)
    fn_key, blob = _resolve_fn(fn)
    q: queue.SimpleQueue = queue.SimpleQueue()
    workers = p.live_workers()
    for index, _pid in workers:
        ref = new_ref()
        t = Task(
            fn_key,
            blob,
            _wire.dumps(("probe", ref, fn_key)),
            ref=ref,
            callback=lambda task, result, error, pid: q.put((pid, result, error)),
        )
        t.pinned = index
        p.submit(t)
    out = []
    deadline = time.monotonic() + timeout
    for _ in workers:
        pid, result, error = p.wait(q, max(0.0, deadline - time.monotonic()))
        if error is not None:
            raise error
        out.append((pid, result[0]))
    return out


__all__ = [
    "dispatch",
    "dispatch_stream",
    "call_batch",
    "FixedBatch",
    "WeightedBatch",
    "KeyPartition",
    "Strategy",
    "Retry",
    "Route",
    "InlineExecutor",
]
