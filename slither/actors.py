"""Slither's message protocol, for Thespian actors that dispatch work (see docs/actors.md).

An actor sends :class:`Dispatch` to ``Runtime.address``, or to the root found by
its global name: ``self.createActor(RootSupervisor, globalName=ROOT_NAME)``. A ``DispatchRunner`` actor of its own
answers, from its own address::

    requester                                   DispatchRunner (its own process)
        │ Dispatch(ref, items, fn, demand=8) ──▶ (via Runtime.address)
        │ ◀── Credit(ref, n)                     streamed input only: room for n items
        │ Feed(ref, items, last, seq) ─────────▶
        │ ◀── Results(ref, items, seq)           one per finished batch, at most the demand granted
        │ Demand(ref, n) ──────────────────────▶ n more Results may come
        │ ◀── DispatchDone(ref, stats) | DispatchFailed(ref, reason)
        │ Cancel(ref) ─────────────────────────▶ stops it (DispatchFailed, reason DispatchCancelled)

Demand is GenStage's: the runner never has more ``Results`` sent than the demand
granted (``Dispatch.demand`` at first, plus every ``Demand``), and with none left
it takes no more batches from the input, so the work in flight stays bounded end to
end. Send ``Demand`` and ``Cancel`` to the runner (the sender of ``Results`` or
``Credit``) or to ``Runtime.address``: both reach it. A dispatch ends with exactly
one ``DispatchDone`` or ``DispatchFailed``, except that a runner killed in the instant
between sending ``DispatchDone`` and exiting may be reported as failed as well:
take the first one and ignore what comes after for that ref.

Thespian does not keep the order of two messages between the same two actors (a
``Results`` may come after ``DispatchDone``): ``Results.seq``, ``Feed.seq``,
``DispatchDone.stats["batches"]`` and ``DispatchFailed.sent`` let either side put
them back in order, and :class:`InOrder` does it for a requester.

Every message is a frozen attrs class with a constant-time repr (Thespian formats
each message it handles). Options are checked where the ``Dispatch`` is built, in
the sender, with the messages of :func:`slither.dispatch`.
"""

from __future__ import annotations

from typing import Any

import attrs
import cloudpickle

from slither._actors import RootSupervisor
from slither._dispatch.options import check_dispatch, resolve_fn
from slither._item import _EMPTY, Context, Item, _make
from slither._sys import cheap_repr, free_port
from slither.errors import ConfigurationError, SlitherError


class DispatchCancelled(SlitherError):
    """The reason of the ``DispatchFailed`` that answers a :class:`Cancel`."""


def _listed(items):
    if items is None:
        return None
    if isinstance(items, (str, bytes)):
        raise ConfigurationError(f"Dispatch: items must be an iterable of payloads or Items, got {type(items).__name__}")
    return items if isinstance(items, list) else list(items)


def _unpickled(self, memo=None):
    # Thespian deep-copies every message an actor receives. A multiprocTCPBase message was
    # just unpickled: nobody else holds it, and copying the items of a batch is pure cost.
    return self


@attrs.frozen(repr=False)
class Dispatch:
    """Run ``fn`` over ``items`` on pool ``pool``, with the options of :func:`slither.dispatch`.

    Args:
        ref: the requester's name for this dispatch (any picklable, hashable value);
            every answer carries it.
        items: payloads or Items (made a list: the message travels). None: the input
            is streamed with :class:`Feed`, within the :class:`Credit` the runner grants.
        fn: ``"module:function"``, or a callable (sent with cloudpickle).
        demand: the initial grant of ``Results`` messages (see :class:`Demand`).
        max_in_flight: batches taken from the input and not yet sent back as ``Results``.

    Raises:
        ConfigurationError: an option is invalid (raised here, in the sender).
    """

    ref: Any
    items: Any = attrs.field(default=None, converter=_listed)
    fn: Any = None
    pool: str = "default"
    batch_size: Any = 64
    strategy: Any = None
    ordering: str = "preserve"
    on_error: Any = "halt"
    timeout: float | None = 30.0
    context: Context | None = None
    affinity: str = "none"
    demand: int = 8
    max_in_flight: int = 8

    def __attrs_post_init__(self):
        check_dispatch(
            () if self.items is None else self.items,
            self.fn,
            self.pool,
            self.strategy,
            self.batch_size,
            self.max_in_flight,
            self.ordering,
            self.on_error,
            self.timeout,
            self.context,
            self.affinity,
            None,
        )
        if isinstance(self.fn, str):
            resolve_fn(self.fn)  # the module must exist: say so here, not in the runner
        if type(self.demand) is not int or self.demand < 0:
            raise ConfigurationError(f"Dispatch: demand must be an int >= 0, got {self.demand!r}")

    def options(self) -> dict:
        """The keyword options of the dispatch this message asks for."""
        return {
            "pool": self.pool,
            "batch_size": self.batch_size,
            "strategy": self.strategy,
            "ordering": self.ordering,
            "on_error": self.on_error,
            "timeout": self.timeout,
            "context": self.context,
            "affinity": self.affinity,
            "max_in_flight": self.max_in_flight,
        }

    def window_items(self) -> int:
        """How many fed items the runner holds at most: its window of batches."""
        size = self.batch_size if type(self.batch_size) is int else 64
        return self.max_in_flight * size

    def __reduce__(self):
        # fn, a WeightedBatch's weight_fn, a Route's handler may be lambdas: those travel by
        # cloudpickle; the items by the ordinary pickler (fast, and all they need).
        code = cloudpickle.dumps((self.fn, self.strategy, self.on_error))
        rest = (self.ref, self.items, self.pool, self.batch_size, self.ordering, self.timeout, self.context)
        return (_rebuild_dispatch, (code, rest, self.affinity, self.demand, self.max_in_flight))

    __repr__ = cheap_repr
    __deepcopy__ = _unpickled


def _rebuild_dispatch(code: bytes, rest: tuple, affinity: str, demand: int, max_in_flight: int) -> Dispatch:
    fn, strategy, on_error = cloudpickle.loads(code)
    ref, items, pool, batch_size, ordering, timeout, context = rest
    d = object.__new__(Dispatch)  # checked where it was built
    for name, value in (
        ("ref", ref),
        ("items", items),
        ("fn", fn),
        ("pool", pool),
        ("batch_size", batch_size),
        ("strategy", strategy),
        ("ordering", ordering),
        ("on_error", on_error),
        ("timeout", timeout),
        ("context", context),
        ("affinity", affinity),
        ("demand", demand),
        ("max_in_flight", max_in_flight),
    ):
        object.__setattr__(d, name, value)
    return d


@attrs.frozen(repr=False)
class Results:
    """One finished batch of a dispatch: its Items, in the order ``ordering`` asks for.

    ``seq`` counts the ``Results`` of this dispatch from 0.
    """

    ref: Any
    items: list
    seq: int
    __repr__ = cheap_repr
    __deepcopy__ = _unpickled

    def __reduce__(self):
        # In columns: pickling Items one by one (each through Item's own constructor on
        # the way back) cost ~5 µs an item; plain Items with no metadata go as two lists.
        items = self.items
        if all(type(i) is Item and not i.meta and i.route == "default" for i in items):
            return (_results_of, (self.ref, self.seq, [i.id for i in items], [i.payload for i in items]))
        return (Results, (self.ref, items, self.seq))


def _results_of(ref, seq: int, ids: list, payloads: list) -> Results:
    items = [_make(Item, i, p, _EMPTY, "default") for i, p in zip(ids, payloads)]
    return Results(ref, items, seq)


@attrs.frozen(repr=False)
class Demand:
    """The requester grants ``n`` more ``Results`` messages (or, with ``pipe`` set, a
    long-lived pipe's subscriber grants ``n`` more ``Output`` messages)."""

    ref: Any
    n: int = attrs.field()
    pipe: str | None = None

    @property
    def pipe_target(self) -> str | None:
        """The long-lived pipe this Demand is for (its subscriber's), or None: a dispatch's."""
        return self.pipe

    @n.validator
    def _positive(self, _attr, value):
        if type(value) is not int or value < 1:
            raise ConfigurationError(f"Demand: n must be an int >= 1, got {value!r}")

    __repr__ = cheap_repr


@attrs.frozen(repr=False)
class Feed:
    """More input for a dispatch whose ``items`` was None; ``last=True`` ends the input.

    ``seq`` counts your ``Feed`` messages of this dispatch from 0. Give it whenever
    more than one may be on its way: Thespian may deliver two messages out of order,
    and the runner then applies them in ``seq`` order (None: as they arrive).
    """

    ref: Any
    items: list = attrs.field(factory=list, converter=list)
    last: bool = False
    seq: int | None = None
    __repr__ = cheap_repr
    __deepcopy__ = _unpickled


@attrs.frozen(repr=False)
class Credit:
    """Room for ``n`` more items: a DispatchRunner's for ``Feed``, or a long-lived pipe's
    for a producer's ``Submit``."""

    ref: Any
    n: int
    __repr__ = cheap_repr


@attrs.frozen(repr=False)
class DispatchDone:
    """The dispatch finished; every ``Results`` was sent before it, though one may arrive
    after it (Thespian does not keep the order of messages): ``stats["batches"]`` says
    how many there are. :class:`InOrder` holds this message back until they all came.

    ``stats``: ``{"items", "batches", "seconds", "pid"}`` (``pid``: the runner's).
    """

    ref: Any
    stats: dict
    __repr__ = cheap_repr


@attrs.frozen(repr=False)
class DispatchFailed:
    """The dispatch ended early. ``reason`` is what :func:`slither.dispatch` would raise or
    carry: a ``BatchFailure`` (``WorkerError`` with its remote traceback, ``BatchTimeout``,
    ``WorkerCrashed``, ``PoolDown``, ...) under ``on_error="halt"``, ``RunnerDied``,
    ``DispatchCancelled``, ``ConfigurationError``. ``batch_ref``: the failing batch, or None.
    ``sent``: how many ``Results`` the runner sent before it (None when its supervisor
    reports a runner that died: it cannot know)."""

    ref: Any
    reason: BaseException
    batch_ref: Any = None
    sent: int | None = None
    __repr__ = cheap_repr


class InOrder:
    """One dispatch's messages back in the protocol's order, for a requester that wants it.

    Thespian may deliver two messages from one actor to another out of order (measured
    here: in about one dispatch of 100 batches in 30, a ``Results`` came after
    ``DispatchDone``). Pass every message of the dispatch through it; it returns those
    now due: ``Results`` in ``seq`` order, then the ``DispatchDone`` or ``DispatchFailed``
    once every ``Results`` sent before it has come. Other messages come back at once::

        def receiveMessage(self, msg, sender):
            for m in self.order(msg):      # self.order = InOrder(), per dispatch
                ...
    """

    def __init__(self):
        self._next = 0
        self._held: dict[int, Results] = {}
        self._end = None

    def __call__(self, msg) -> list:
        if isinstance(msg, Results):
            self._held[msg.seq] = msg
        elif isinstance(msg, (DispatchDone, DispatchFailed)):
            if self._end is not None:
                return []  # the first end stands (see the module docstring)
            self._end = msg
        else:
            return [msg]
        out = []
        while self._next in self._held:
            out.append(self._held.pop(self._next))
            self._next += 1
        end = self._end
        if end is not None and end is not _ENDED:
            owed = end.stats["batches"] if isinstance(end, DispatchDone) else end.sent
            if owed is None or self._next >= owed:
                out.append(end)
                self._end = _ENDED
        return out

    @property
    def complete(self) -> bool:
        """The final message was handed out."""
        return self._end is _ENDED


_ENDED = object()


@attrs.frozen(repr=False)
class Cancel:
    """Stop the dispatch ``ref``: batches not started are dropped, the workers running
    its batches are killed and replaced; it ends with ``DispatchFailed(DispatchCancelled)``."""

    ref: Any
    __repr__ = cheap_repr


# -- long-lived pipes (Runtime.start_pipe(P, name=...)) --------------------------------


def _check_window(_self, _attr, value) -> None:
    if type(value) is not int or value < 1:
        raise ConfigurationError(f"window must be an int >= 1, got {value!r}")


class _NamesAPipe:
    """A message for the pipe named ``pipe``, or ``ref`` when ``pipe`` is None."""

    __slots__ = ()

    def __attrs_post_init__(self):
        target = self.pipe_target
        if not isinstance(target, str) or not target:
            raise ConfigurationError(
                f"{type(self).__name__}: name the long-lived pipe (start_pipe(name=...)) as ref, or as pipe=; got {target!r}"
            )

    @property
    def pipe_target(self) -> Any:
        """The name of the pipe the message is for: ``pipe``, or ``ref`` when ``pipe`` is None."""
        return self.pipe if self.pipe is not None else self.ref


@attrs.frozen(repr=False)
class Submit(_NamesAPipe):
    """Payloads (or Items) for a long-lived pipe, sent to ``Runtime.address``. The pipe is
    ``pipe``, or ``ref`` when ``pipe`` is None (``Submit("scores", payloads)``).

    The first ``Submit`` of a ``(sender, ref)`` is answered with ``Credit(ref, window)``:
    that many of its payloads may be in the pipe at once. Each that comes out (all its
    results delivered) gives its credit back. What the pipe accepted is never lost,
    whatever happens to its runner (see docs/actors.md).
    """

    ref: Any
    payloads: list = attrs.field(factory=list, converter=list)
    pipe: str | None = None
    window: int = attrs.field(default=64, validator=_check_window)
    __repr__ = cheap_repr
    __deepcopy__ = _unpickled


@attrs.frozen(repr=False)
class Subscribe(_NamesAPipe):
    """Make the sender the subscriber of a long-lived pipe (``pipe``, or ``ref`` when
    ``pipe`` is None): from now on every result goes to it as ``Output`` messages (the
    handle's ``results()`` gets none), at most ``demand`` of them before it grants more
    with ``Demand(ref, n, pipe=...)``."""

    ref: Any
    demand: int = attrs.field(default=8, validator=_check_window)
    pipe: str | None = None
    __repr__ = cheap_repr


@attrs.frozen(repr=False)
class Output:
    """Results of a long-lived pipe for its subscriber: ``items`` left output
    ``output_name`` (``"skipped"`` for skipped ones). ``ref`` is the subscription's;
    ``seq`` counts its Outputs from 0."""

    output_name: str
    items: list
    ref: Any = None
    seq: int = 0
    __repr__ = cheap_repr
    __deepcopy__ = _unpickled


@attrs.frozen(repr=False)
class PipeFailed:
    """The pipe a ``Submit``, ``Subscribe`` or ``Demand`` named is unknown, or it ended:
    ``reason`` is a ``ConfigurationError``, ``PipeDown`` or ``PipeError``."""

    ref: Any
    reason: BaseException
    __repr__ = cheap_repr


def capabilities(**extra) -> dict:
    """Capabilities for a ``multiprocTCPBase`` ActorSystem of your own: a free admin port
    (Thespian's default, 1900, is shared by every program on the host that uses it:
    a second system there silently joins the first), plus ``extra``."""
    return {"Admin Port": free_port(), **extra}


ROOT_NAME = "slither"  # the global name of the root in its actor system

__all__ = [
    "ROOT_NAME",
    "RootSupervisor",
    "capabilities",
    "Dispatch",
    "Results",
    "Demand",
    "Feed",
    "Credit",
    "DispatchDone",
    "DispatchFailed",
    "InOrder",
    "Cancel",
    "DispatchCancelled",
    "Submit",
    "Subscribe",
    "Output",
    "PipeFailed",
]
