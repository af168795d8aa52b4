"""Faults injected into chosen batches, across processes: :class:`Faults`.

A ``Faults`` is a directory of small files, so it pickles into workers (by
its path) and every process sees the same plan. ``wrap(fn)`` gives a batch
function that, before it runs ``fn``, claims the next *batch number* (the
n-th batch any wrapped function started, counted from 0 across every
process, by an exclusive file create) and looks up what to do:

* ``schedule({batch_number: kind})``: a fault for those batch numbers;
* ``arm(kind, n)``: a fault for the next ``n`` batches to start.

A batch number is used once, so a batch retried after its fault runs
clean: under ``Retry`` every input still comes out. ``fired`` lists what was
injected, ``(batch_number, kind)``, in order.

Kinds: ``"crash"`` (``os._exit(1)``), ``"kill"`` (SIGKILL, as the OOM killer
does), ``"segfault"`` (a NULL dereference), ``"raise"`` (a ``RuntimeError``
the error policy sees) and ``"hang"`` (sleeps an hour: give the dispatch or
stage a ``timeout``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any

KINDS = ("crash", "kill", "segfault", "raise", "hang")


class InjectedFault(RuntimeError):
    """What a ``"raise"`` fault raises in the batch function."""


class Faults:
    """A plan of faults for wrapped batch functions. See the module docstring."""

    def __init__(self, directory: str | None = None):
        self._owned = directory is None
        self.path = directory or tempfile.mkdtemp(prefix="slither-faults-")
        for sub in ("seq", "plan", "armed", "fired"):
            os.makedirs(os.path.join(self.path, sub), exist_ok=True)

    def __getstate__(self):
        return {"path": self.path, "_owned": False}

    def __setstate__(self, state):
        self.__dict__.update(state)

    # -- the test's side -------------------------------------------------
    def schedule(self, plan: Mapping[int, str]) -> Faults:
        """Fault the batches numbered ``plan``'s keys with its values (kinds)."""
        for number, kind in plan.items():
            if kind == "none":  # slither.testing.strategies.fault_schedules draws it: no fault
                continue
            _check_kind(kind)
            if not isinstance(number, int) or number < 0:
                raise ValueError(f"Faults.schedule: batch numbers are ints >= 0, got {number!r}")
            _write(os.path.join(self.path, "plan", str(number)), kind)
        return self

    def arm(self, kind: str, n: int = 1) -> Faults:
        """Fault the next ``n`` batches that start, with ``kind``."""
        _check_kind(kind)
        for _ in range(n):
            _write(os.path.join(self.path, "armed", f"{time.monotonic_ns()}-{os.urandom(4).hex()}"), kind)
        return self

    def schedules(self, max_batches: int = 20, kinds=("crash", "kill", "raise")):
        """A hypothesis strategy of plans for :meth:`schedule`: ``{batch_number: kind}``."""
        from slither.testing.strategies import fault_schedules

        for kind in kinds:
            _check_kind(kind)
        return fault_schedules(max_batches=max_batches, kinds=tuple(kinds))

    def reset(self) -> Faults:
        """Forget everything: the plan, what fired, the batch count (one hypothesis example each)."""
        for sub in ("seq", "plan", "armed", "fired"):
            for name in os.listdir(os.path.join(self.path, sub)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.path, sub, name))
        return self

    def disarm(self) -> None:
        """Drop every armed and scheduled fault that has not fired."""
        for sub in ("plan", "armed"):
            for name in os.listdir(os.path.join(self.path, sub)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.path, sub, name))

    @property
    def fired(self) -> list[tuple[int, str]]:
        """What was injected so far: ``(batch_number, kind)``, in batch order."""
        out = []
        for name in os.listdir(os.path.join(self.path, "fired")):
            if not name.isdigit():  # a write in progress
                continue
            with contextlib.suppress(FileNotFoundError), open(os.path.join(self.path, "fired", name)) as f:
                out.append((int(name), f.read()))
        return sorted(out)

    @property
    def batches_started(self) -> int:
        """How many batches the wrapped functions have started (numbered 0 up)."""
        return len(os.listdir(os.path.join(self.path, "seq")))

    def wrap(self, fn: Callable | str) -> Callable:
        """``fn`` (a batch function, or ``"module:function"``) with this plan's faults."""
        return _Faulty(self, fn)

    def close(self) -> None:
        if self._owned:
            shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self) -> Faults:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the worker's side -----------------------------------------------
    def _next_number(self) -> int:
        seq = os.path.join(self.path, "seq")
        n = len(os.listdir(seq))
        while True:
            try:
                os.close(os.open(os.path.join(seq, str(n)), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                return n
            except FileExistsError:
                n += 1

    def _fault_for(self, number: int) -> str | None:
        planned = os.path.join(self.path, "plan", str(number))
        with contextlib.suppress(FileNotFoundError):
            with open(planned) as f:
                kind = f.read()
            os.unlink(planned)
            return kind
        armed = os.path.join(self.path, "armed")
        for name in sorted(os.listdir(armed)):
            if "." in name:  # a write in progress, or claimed by another batch
                continue
            claimed = os.path.join(armed, name + ".claimed")
            try:
                os.rename(os.path.join(armed, name), claimed)  # atomic: one batch claims it
            except FileNotFoundError:
                continue
            with open(claimed) as f:
                kind = f.read()
            os.unlink(claimed)
            return kind
        return None

    def _inject(self, payloads: list) -> None:
        number = self._next_number()
        kind = self._fault_for(number)
        if kind is None:
            return
        _write(os.path.join(self.path, "fired", str(number)), kind)
        if kind == "crash":
            os._exit(1)
        if kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if kind == "segfault":
            import ctypes

            ctypes.string_at(0)
        if kind == "hang":
            time.sleep(3600)
        raise InjectedFault(f"fault injected into batch {number} ({len(payloads)} payloads)")


class _Faulty:
    """A batch function with a fault plan (a class, so it pickles by reference and the
    wrapped function travels as the dispatch would send it)."""

    def __init__(self, faults: Faults, fn: Callable | str):
        if not (callable(fn) or isinstance(fn, str)):
            raise TypeError(f"Faults.wrap: fn must be a callable or 'module:function', got {fn!r}")
        self.faults = faults
        self.fn = fn
        self.__name__ = f"faulty({getattr(fn, '__name__', fn)})"

    def __call__(self, payloads: list) -> Any:
        self.faults._inject(payloads)
        fn = self.fn
        if isinstance(fn, str):
            from slither._worker import resolve

            fn = self.fn = resolve(fn)
        return fn(payloads)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown fault kind {kind!r}; choose one of {', '.join(KINDS)}")


def _write(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
