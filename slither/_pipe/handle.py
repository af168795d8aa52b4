"""A long-lived pipe's handle: submit with backpressure, take results, stop."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

from slither import _aio
from slither._item import Item
from slither._pipe.definition import _SEQ, EOS
from slither._pipe.run import _collect, _Run, _strip
from slither.errors import PipeError, PipeFull


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

    async def asubmit(self, payload: Any, timeout: float | None = None) -> Item:
        """``await`` :meth:`submit` (waits on a thread while the pipe is full: the loop runs on)."""
        return await _aio.call(self.submit, payload, timeout)

    def aresults(self, timeout: float | None = None):
        """``async for name, item in handle.aresults()``: :meth:`results`, awaited."""
        return _aio.iterate([pair] for pair in self.results(timeout))

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
