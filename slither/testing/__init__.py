"""Tools to test code built on Slither, the ones Slither's own suite uses.

* :class:`Rendezvous`: a meeting point between the test and worker code
  (in any process). Worker code calls ``rv.arrive(value)`` and, if asked,
  blocks until the test calls ``rv.release()``; the test waits with
  ``rv.wait()``. No sleeps: the test learns *exactly* when a worker holds a
  batch, and which one (``arrive`` sends its pid).
* :func:`running_runtime`: a context manager giving a started runtime and
  checking at exit that every process it started is gone; :func:`settle`
  returns once every worker of a pool is connected and idle.
* Fault injection: :class:`Faults` (a cross-process plan: crash, kill,
  segfault, raise or hang the n-th batch, or the next ones), and the simpler
  wrappers :func:`kill_worker`, :func:`kill_when`, :func:`crash_when`,
  :func:`hang_when`, :func:`raise_when`, and :func:`kill_store_server`.
* :class:`PipeMachine` (needs hypothesis): a state machine that tests a
  user's own Pipe under random inputs, faults and store reloads.
* Hypothesis strategies in :mod:`slither.testing.strategies` (if hypothesis
  is installed): payloads, items, error policies, fault schedules.
* The pytest plugin (``pytest_slither``, registered when Slither is
  installed): fixtures ``slither_runtime`` and ``slither_faults``, the
  marker ``@pytest.mark.slither(...)`` and ``--slither-chaos=SEED``. See
  docs/testing.md.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from slither._runtime import Runtime
from slither._store.schema import _store_name
from slither.errors import WorkerCrashed
from slither.supervision import pid_alive
from slither.testing.faults import Faults, InjectedFault


class Rendezvous:
    """A Unix-socket meeting point that pickles (cloudpickle) into workers.

    Create it in the test, use it inside batch functions::

        rv = Rendezvous()
        def fn(xs):
            rv.arrive(os.getpid(), wait=True)   # tell the test, then block
            return xs
        ...
        pid = rv.wait(timeout=10)               # a worker holds the batch
        os.kill(pid, signal.SIGKILL)

    ``close()`` (or the context manager) removes the socket and releases waiters.
    """

    def __init__(self):
        self._dir = tempfile.mkdtemp(prefix="slither-rv-")
        self.path = os.path.join(self._dir, "rv.sock")
        self._srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._srv.bind(self.path)
        self._srv.listen(64)
        self._arrivals: list = []
        self._held: list[socket.socket] = []
        self._cv = threading.Condition()
        self._released = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.__dict__.update(state)

    def _serve(self):
        while True:
            try:
                conn, _ = self._srv.accept()
            except OSError:
                return
            try:
                n = struct.unpack("!I", _recv(conn, 4))[0]
                value, wait = pickle.loads(_recv(conn, n))
            except (OSError, EOFError, pickle.UnpicklingError):
                conn.close()
                continue
            with self._cv:
                self._arrivals.append(value)
                if wait and not self._released:
                    self._held.append(conn)
                else:
                    conn.close()
                self._cv.notify_all()

    # -- worker side --------------------------------------------------
    def arrive(self, value: Any = None, wait: bool = False) -> None:
        """Report ``value`` to the test; with ``wait``, block until released
        (or until the test side goes away)."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self.path)
        data = pickle.dumps((value, wait))
        s.sendall(struct.pack("!I", len(data)) + data)
        if wait:
            try:
                s.recv(1)
            except OSError:
                pass
        s.close()

    # -- test side ----------------------------------------------------
    def wait(self, count: int = 1, timeout: float = 30.0) -> Any:
        """Block until ``count`` arrivals; return the last value (TimeoutError otherwise)."""
        with self._cv:
            if not self._cv.wait_for(lambda: len(self._arrivals) >= count, timeout):
                raise TimeoutError(f"Rendezvous: {len(self._arrivals)} of {count} arrivals within {timeout}s")
            return self._arrivals[count - 1]

    @property
    def arrivals(self) -> list:
        with self._cv:
            return list(self._arrivals)

    def release(self) -> None:
        """Let every waiting (and future) ``arrive(wait=True)`` return."""
        with self._cv:
            self._released = True
            held, self._held = self._held, []
        for c in held:
            try:
                c.sendall(b"x")
                c.close()
            except OSError:
                pass

    def close(self) -> None:
        self.release()
        try:
            self._srv.close()
        finally:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            with contextlib.suppress(OSError):
                os.rmdir(self._dir)

    def __enter__(self) -> Rendezvous:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _recv(conn, n):
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise EOFError
        buf += chunk
    return buf


def settle(runtime: Runtime, pool: str = "default", timeout: float = 30.0) -> None:
    """Return once every worker of ``pool`` is connected and has run all it was given.

    A test that needs each worker to take one of its batches starts from here: a
    worker still busy with an earlier test's batches, or not yet back from a
    restart, would leave the others to take them all. A probe queues behind
    whatever each worker holds, so its answer is the event to wait for. A worker
    found dead on the way (killed just before, say) is waited for again.
    """
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not runtime.pool(pool).wait_ready(left):
            raise TimeoutError(f"pool {pool!r}: its workers were not all connected and idle within {timeout}s")
        try:
            runtime.run_on_workers(_nothing, pool=pool, timeout=max(0.1, deadline - time.monotonic()))
            return
        except WorkerCrashed:
            continue


def _nothing() -> None:
    return None


def wait_pids_gone(pids, timeout: float = 10.0) -> list[int]:
    """Wait until none of ``pids`` is alive; return those still alive at the deadline."""
    deadline = time.monotonic() + timeout
    alive = [p for p in pids if pid_alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.01)  # no event exists for the exit of a process we are not the parent of
        alive = [p for p in alive if pid_alive(p)]
    return alive


@contextlib.contextmanager
def running_runtime(**kwargs) -> Iterator:
    """Start ``Runtime(**kwargs)``; at exit shut it down and assert nothing is left.

    Raises:
        AssertionError: some process of the runtime outlived ``shutdown()``.
    """
    rt = Runtime(**kwargs).start()
    pids: set[int] = set()
    try:
        pids.update(rt.pids())
        yield rt
        pids.update(rt.pids() if rt.running else [])
    finally:
        if rt.running:
            pids.update(rt.pids())
        rt.shutdown()
        left = wait_pids_gone(pids, timeout=5)
        assert not left, f"processes left behind by the runtime: {left}"


# -- fault injection -----------------------------------------------------------


def kill_worker(pid: int) -> None:
    """SIGKILL one worker (by pid, as every kill here: never by name)."""
    os.kill(pid, signal.SIGKILL)


def _matches(when, payloads) -> bool:
    return any(when(p) for p in payloads)


def crash_when(fn: Callable, when: Callable[[Any], bool], exitcode: int = 1) -> Callable:
    """Wrap a batch function: the worker process exits (``os._exit``) on a batch
    holding a payload for which ``when(payload)`` is true."""

    def wrapped(payloads):
        if _matches(when, payloads):
            os._exit(exitcode)
        return fn(payloads)

    return wrapped


def kill_when(fn: Callable, when: Callable[[Any], bool]) -> Callable:
    """Like :func:`crash_when`, but the worker dies of SIGKILL (as the OOM killer does)."""

    def wrapped(payloads):
        if _matches(when, payloads):
            os.kill(os.getpid(), signal.SIGKILL)
        return fn(payloads)

    return wrapped


def hang_when(fn: Callable, when: Callable[[Any], bool], seconds: float = 3600.0) -> Callable:
    """The batch sleeps ``seconds`` (a hang) when ``when`` matches; use with ``timeout=``."""

    def wrapped(payloads):
        if _matches(when, payloads):
            time.sleep(seconds)
        return fn(payloads)

    return wrapped


def raise_when(fn: Callable, when: Callable[[Any], bool], exc: BaseException | None = None) -> Callable:
    """The batch raises ``exc`` (default RuntimeError) when ``when`` matches."""

    def wrapped(payloads):
        if _matches(when, payloads):
            raise exc if exc is not None else RuntimeError(f"injected failure on {payloads!r}")
        return fn(payloads)

    return wrapped


def once_per(marker_dir: str, fault: Callable[[Callable, Callable], Callable], fn: Callable, when: Callable) -> Callable:
    """Apply ``fault`` only the first time a matching payload is seen (across
    processes: a marker file per payload in ``marker_dir``), so ``Retry`` succeeds."""

    def first_time(p):
        if not when(p):
            return False
        path = os.path.join(marker_dir, f"seen-{abs(hash(repr(p)))}")
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        os.close(fd)
        return True

    return fault(fn, first_time)


def kill_store_server(rt, store) -> int:
    """SIGKILL the server process of ``store`` (a Store class or name); return its pid."""
    handle = rt._stores[_store_name(store)]
    pid = handle.server_pid()
    os.kill(pid, signal.SIGKILL)
    return pid


def __getattr__(name: str):
    if name == "PipeMachine":  # needs hypothesis, which only the test extra installs
        from slither.testing.machine import PipeMachine

        return PipeMachine
    raise AttributeError(f"module 'slither.testing' has no attribute {name!r}")


__all__ = [
    "Faults",
    "InjectedFault",
    "PipeMachine",
    "Rendezvous",
    "running_runtime",
    "wait_pids_gone",
    "settle",
    "kill_worker",
    "crash_when",
    "kill_when",
    "hang_when",
    "raise_when",
    "once_per",
    "kill_store_server",
]
