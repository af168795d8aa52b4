"""Structured telemetry events, in the style of Erlang's ``:telemetry``.

Events are tuples such as ``("slither", "dispatch", "batch", "stop")``.
Handlers run in the user's (caller's) process, in the thread that emitted
the event or, for events that originate in a worker, in the runtime's I/O
thread. A handler that raises is detached and logged, never propagated.

    attach("my-handler", [("slither", "dispatch", "batch", "stop")], fn)
    fn(event, measurements, metadata)
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from loguru import logger

Event = tuple
Handler = Callable[[Event, Mapping, Mapping], None]

_lock = threading.Lock()
_handlers: dict[str, tuple[frozenset, Handler]] = {}
_by_event: dict[Event, list[tuple[str, Handler]]] = {}
_watchers: list[Callable[[], None]] = []  # called after every attach and detach (_watch)


def _rebuild() -> None:
    index: dict[Event, list[tuple[str, Handler]]] = {}
    for hid, (events, fn) in _handlers.items():
        for ev in events:
            index.setdefault(ev, []).append((hid, fn))
    global _by_event
    _by_event = index


def attach(handler_id: str, events: Iterable[Event], fn: Handler) -> None:
    """Call ``fn(event, measurements, metadata)`` for each of ``events``.

    Raises:
        ValueError: ``handler_id`` is already attached.
    """
    evs = frozenset(tuple(e) for e in events)
    with _lock:
        if handler_id in _handlers:
            raise ValueError(f"telemetry handler {handler_id!r} is already attached")
        _handlers[handler_id] = (evs, fn)
        _rebuild()
    _changed()


def detach(handler_id: str) -> bool:
    """Remove a handler. Returns False if it was not attached."""
    with _lock:
        found = _handlers.pop(handler_id, None) is not None
        _rebuild()
    _changed()
    return found


def _watch(fn: Callable[[], None], on: bool = True) -> None:
    """Call ``fn()`` after every attach and detach (``on=False``: no more). A process
    that emits on this one's behalf (a pipe's runner) learns this way what to send."""
    with _lock:
        if on:
            _watchers.append(fn)
        elif fn in _watchers:
            _watchers.remove(fn)


def _changed() -> None:
    for fn in list(_watchers):
        try:
            fn()
        except Exception:
            logger.exception("telemetry watcher {!r} raised", fn)


def has_handlers(event: Event) -> bool:
    """True when some handler listens for ``event`` (lets hot paths skip work)."""
    return event in _by_event


def emit(event: Event, measurements: Mapping[str, Any] | None = None, metadata: Mapping[str, Any] | None = None) -> None:
    """Deliver ``event`` to the handlers attached to it, in this process."""
    handlers = _by_event.get(tuple(event))
    if not handlers:
        return
    for hid, fn in handlers:
        try:
            fn(tuple(event), measurements or {}, metadata or {})
        except Exception:
            logger.exception("telemetry handler {!r} raised; detaching it", hid)
            detach(hid)


@contextlib.contextmanager
def span(prefix: Event, metadata: Mapping[str, Any] | None = None) -> Iterator[dict]:
    """Emit ``prefix + ("start",)``, then ``("stop",)`` or ``("exception",)``.

    ``stop`` and ``exception`` carry ``duration`` in nanoseconds. The dict
    yielded is merged into the stop metadata.
    """
    prefix = tuple(prefix)
    meta = dict(metadata or {})
    extra: dict = {}
    t0 = time.monotonic_ns()
    emit(prefix + ("start",), {"system_time": time.time_ns()}, meta)
    try:
        yield extra
    except BaseException as exc:
        emit(prefix + ("exception",), {"duration": time.monotonic_ns() - t0}, {**meta, **extra, "error": exc})
        raise
    emit(prefix + ("stop",), {"duration": time.monotonic_ns() - t0}, {**meta, **extra})


# Worker processes forward their events to the caller instead of emitting
# locally; the worker module installs the forwarder.
_forward: Callable[[Event, Mapping, Mapping], None] | None = None


def _emit_anywhere(event: Event, measurements: Mapping, metadata: Mapping) -> None:
    if _forward is not None:
        _forward(tuple(event), dict(measurements), dict(metadata))
    else:
        emit(event, measurements, metadata)


__all__ = ["attach", "detach", "emit", "span", "has_handlers"]
