"""Exceptions raised by Slither.

::

    SlitherError (Exception)
    ├── ConfigurationError (ValueError)    bad option or argument, raised before work starts
    ├── RuntimeNotStarted (RuntimeError)   a call on a runtime that is not running
    ├── DispatchError                       a batch failed under on_error="halt"
    ├── PipeError                           a pipe stage failed under "halt"
    ├── PipeDefinitionError (TypeError)     a Pipe class is malformed
    ├── StageFailure                        an inline stage returned Fail(reason)
    ├── PipeFull                            submit_nowait on a full long-lived pipe
    ├── PipeDown                            a long-lived pipe's runner exceeded its restart intensity
    ├── StageTimeout (TimeoutError)         an inline handler ran past its stage's timeout
    ├── RunnerDied                          the DispatchRunner serving an actor's Dispatch died
    ├── StoreError                          a store write or reload failed
    │   ├── ViewNotFound (KeyError)
    │   └── ViewTimeout (TimeoutError)
    ├── BatchFailure                        why one batch failed (the ``reason``)
        ├── WorkerError                     the batch function raised
        ├── WorkerCrashed                   the worker process died under the batch
        ├── BatchTimeout (TimeoutError)     the batch ran past ``timeout``; its worker was killed
        ├── BadBatchResult (TypeError)      not a list, or the wrong length
        ├── SerializationError (TypeError)  an item or result could not be pickled
        └── PoolDown                        the pool exceeded its restart intensity
    RemoteTraceback (Exception)             the ``__cause__`` of a WorkerError (and of a
                                            WorkerCrashed with faulthandler output): its
                                            str is the text the worker formatted

Printed, a ``DispatchError`` shows its whole chain, as CPython's
``ProcessPoolExecutor`` does: the worker's traceback (file, line, source)
as a ``RemoteTraceback``, then the ``WorkerError``, then the
``DispatchError`` raised in the caller.

A ``BatchFailure`` is what ``DispatchError.reason`` holds, what
``meta["error"]`` holds on skipped items, and what ``Route`` handlers get.
``PoolDown`` is also raised directly to every caller waiting on a pool that
went down, and to every new call on it.
"""

from __future__ import annotations

import signal as _signal
from typing import Any


class SlitherError(Exception):
    """Base class of every exception Slither raises."""


class ConfigurationError(SlitherError, ValueError):
    """An option or argument is invalid. Raised before any work starts."""


class RuntimeNotStarted(SlitherError, RuntimeError):
    """The runtime is not running (never started, or already shut down)."""


class BatchFailure(SlitherError):
    """Why a batch failed. Subclasses say how."""

    #: True when retrying the same batch can succeed (a crash, a timeout).
    retryable: bool = True


class RemoteTraceback(Exception):
    """A traceback formatted in another process, chained as ``__cause__`` so that it
    prints with the caller's own (``str()`` is the text, as the worker formatted it)."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


class WorkerError(BatchFailure):
    """The batch function raised in the worker.

    Attributes:
        remote_type: name of the exception type raised remotely.
        remote_message: its ``str()``.
        remote_traceback: the formatted traceback text from the worker (also
            ``__cause__``, a :class:`RemoteTraceback`, so that it prints).
    """

    def __init__(self, remote_type: str, remote_message: str, remote_traceback: str = ""):
        super().__init__(f"{remote_type}: {remote_message}")
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback
        if remote_traceback:
            self.__cause__ = RemoteTraceback(remote_traceback)

    def __reduce__(self):
        return (type(self), (self.remote_type, self.remote_message, self.remote_traceback))


class WorkerCrashed(BatchFailure):
    """The worker process died while it held the batch (exit, signal, OOM).

    Attributes:
        pid: the worker's pid.
        exitcode: as ``multiprocessing`` gives it: the exit code, or minus the
            signal number for a death by signal; None when it is not known
            (a worker on another host of a convention).
        signal: the :class:`signal.Signals` that killed it, or None.
        fault: what ``faulthandler`` wrote in the worker (every thread's stack
            at a segfault, abort, ...); also ``__cause__``, so that it prints.
    """

    def __init__(self, message: str, pid: int | None = None, exitcode: int | None = None, fault: str = ""):
        super().__init__(message)
        self.pid = pid
        self.exitcode = exitcode
        self.fault = fault
        if fault:
            self.__cause__ = RemoteTraceback(fault)

    @property
    def signal(self) -> _signal.Signals | None:
        if self.exitcode is None or self.exitcode >= 0:
            return None
        try:
            return _signal.Signals(-self.exitcode)
        except ValueError:
            return None

    @staticmethod
    def how(exitcode: int | None) -> str:
        """``"was killed by SIGKILL"``, ``"exited with code 3"``: how a process with this exit code ended."""
        if exitcode is None:
            return "died (exit status unknown)"
        if exitcode < 0:
            try:
                return f"was killed by {_signal.Signals(-exitcode).name}"
            except ValueError:
                return f"was killed by signal {-exitcode}"
        return f"exited with code {exitcode}"

    def __reduce__(self):
        return (type(self), (str(self), self.pid, self.exitcode, self.fault))


class BatchTimeout(BatchFailure, TimeoutError):
    """The batch ran longer than its ``timeout``; the worker was killed and replaced."""


class BadBatchResult(BatchFailure, TypeError):
    """The batch function returned something other than a list of the batch's length."""

    retryable = False


class SerializationError(BatchFailure, TypeError):
    """An item, a function or a result could not be pickled, or unpickled on the other side.

    Attributes:
        item_id: the id of the offending item, when one item is to blame.
        position: that item's position in the dispatch's input, when known
            (batches cut by ``FixedBatch``, the default).
    """

    retryable = False

    def __init__(self, message: str, item_id: Any = None, position: int | None = None):
        super().__init__(message)
        self.item_id = item_id
        self.position = position

    def __reduce__(self):
        return (type(self), (str(self), self.item_id, self.position))


class PoolDown(BatchFailure):
    """The pool exceeded its restart intensity and no longer serves work.

    Every caller waiting on the pool gets it at once; new calls get it
    immediately. Start the pool again with ``Runtime.restart_pool(name)``.
    """

    retryable = False

    def __init__(self, pool: str, message: str | None = None):
        super().__init__(message or f"pool {pool!r} is down: restart intensity exceeded")
        self.pool = pool

    def __reduce__(self):
        return (type(self), (self.pool, str(self)))


class DispatchError(SlitherError):
    """A batch failed and the error policy was ``"halt"``.

    Attributes:
        reason: the :class:`BatchFailure` (also set as ``__cause__``).
        batch_ref: the failing batch's reference (its index in the dispatch).
        partial_results: items finished before the failure, in the order
            the dispatch would have returned them.
    """

    def __init__(self, reason: BaseException, batch_ref: Any = None, partial_results: list | None = None):
        super().__init__(f"batch {batch_ref} failed: {type(reason).__name__}: {reason}")
        self.reason = reason
        self.batch_ref = batch_ref
        self.partial_results = list(partial_results or [])


class PipeError(SlitherError):
    """A pipe stage failed under the ``"halt"`` policy.

    Attributes: ``pipe``, ``stage``, ``reason`` (also ``__cause__``),
    ``partial_results`` (the outputs mapping gathered so far).
    """

    def __init__(self, pipe: str, stage: str | None, reason: BaseException, partial_results: Any = None):
        super().__init__(f"pipe {pipe!r}, stage {stage!r}: {type(reason).__name__}: {reason}")
        self.pipe = pipe
        self.stage = stage
        self.reason = reason
        self.partial_results = partial_results


class RunnerDied(SlitherError):
    """A runner died. The ``DispatchRunner`` serving a :class:`slither.actors.Dispatch`
    (``DispatchFailed.reason``): results already sent stand, the rest was not run to the
    end; send the ``Dispatch`` again and a new runner serves it. Or a long-lived pipe's
    ``PipeRunner``, with an input in flight at more deaths than ``start_pipe(max_replays=)``
    allows: that input comes out skipped, with this as its ``meta["error"]``.

    Attributes:
        pid: the runner's process id (None if it never reported one).
        exitcode: its exit code, negative for a signal (``-9`` for SIGKILL), or None.
    """

    def __init__(self, pid: int | None = None, exitcode: int | None = None, message: str | None = None):
        if message is None:
            how = WorkerCrashed.how(exitcode) if exitcode is not None else "died (exit status unknown)"
            message = f"the DispatchRunner (pid {pid}) {how} before the dispatch finished"
        super().__init__(message)
        self.pid = pid
        self.exitcode = exitcode

    @property
    def signal(self) -> _signal.Signals | None:
        """The signal that killed the runner, or None."""
        return WorkerCrashed.signal.fget(self)

    def __reduce__(self):
        return (type(self), (self.pid, self.exitcode, str(self)))


class PipeDefinitionError(SlitherError, TypeError):
    """A Pipe subclass is malformed (raised when the class is created)."""


class StageFailure(SlitherError):
    """An inline stage returned ``Fail(reason)``; ``reason`` is kept as ``.reason``."""

    def __init__(self, reason):
        super().__init__(str(reason))
        self.reason = reason


class PipeFull(SlitherError):
    """``PipeHandle.submit_nowait`` found the pipe full."""


class StageTimeout(SlitherError, TimeoutError):
    """An inline stage's handler ran past the stage's ``timeout`` (``stage.inline(...,
    timeout=seconds)``). In a long-lived pipe its runner was killed and restarted, and
    the stage's policy decided the input's fate; in ``run_pipe`` the run fails.

    Attributes:
        stage: the stage's name. timeout: its timeout in seconds.
    """

    def __init__(self, stage: str, timeout: float, message: str | None = None):
        super().__init__(message or f"stage {stage!r}: the handler ran past its timeout of {timeout:g}s")
        self.stage = stage
        self.timeout = timeout

    def __reduce__(self):
        return (type(self), (self.stage, self.timeout, str(self)))


class PipeDown(SlitherError):
    """A long-lived pipe's ``PipeRunner`` crashed more often than the pipe's restart
    intensity allows (``start_pipe(restart=(max_restarts, max_seconds))``): the pipe's
    equivalent of :class:`PoolDown`. ``submit`` and ``results()`` raise it at once.

    Attributes:
        pipe: the pipe's name (``start_pipe(name=...)``).
        exitcode: how the last runner ended (negative: the signal), or None.
    """

    def __init__(self, pipe: str, message: str | None = None, exitcode: int | None = None):
        super().__init__(message or f"pipe {pipe!r} is down: its runner exceeded the restart intensity")
        self.pipe = pipe
        self.exitcode = exitcode

    def __reduce__(self):
        return (type(self), (self.pipe, str(self), self.exitcode))


class StoreError(SlitherError):
    """A store write, reload or read setup failed."""


class ViewNotFound(StoreError, KeyError):
    """No view of that name is callable here (unknown, or session-scoped outside its pipe run)."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want the sentence.
        return str(self.args[0]) if self.args else ""


class ViewTimeout(StoreError, TimeoutError):
    """A view handler ran past its timeout."""


__all__ = [
    "SlitherError",
    "ConfigurationError",
    "RuntimeNotStarted",
    "BatchFailure",
    "WorkerError",
    "RemoteTraceback",
    "WorkerCrashed",
    "BatchTimeout",
    "BadBatchResult",
    "SerializationError",
    "PoolDown",
    "DispatchError",
    "PipeError",
    "PipeDefinitionError",
    "StoreError",
    "StageFailure",
    "PipeFull",
    "PipeDown",
    "StageTimeout",
    "ViewNotFound",
    "ViewTimeout",
]
