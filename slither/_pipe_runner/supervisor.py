"""The ``PipeSupervisor``: one transient ``PipeRunner`` per long-lived pipe, each with its
own restart intensity; it tells the pipe's handle of each death (``died``), of the end
(``down``), and passes on actors' messages for the pipe (``actor``). See the package
docstring for the frames."""

from __future__ import annotations

import time
from collections import deque

import attrs

from slither import _wire
from slither._actors import Forwarded
from slither._runner import RunnerPlane, _child_process, _exitcode
from slither._sys import cheap_repr
from slither.actors import PipeFailed
from slither.errors import ConfigurationError
from slither.supervision import StopChild, Supervisor


@attrs.frozen(repr=False)
class PipeInit:
    """Everything a PipeRunner needs, sent again at every restart."""

    name: str
    blob: bytes  # cloudpickle of (pipe class, session_id, metadata)
    link: str  # the handle's socket
    token: str
    plane: RunnerPlane
    sys_path: tuple
    cwd: str
    store_paths: dict
    max_restarts: int
    max_seconds: float
    __repr__ = cheap_repr


class PipeSupervisor(Supervisor):
    """One PipeRunner per long-lived pipe (transient), each with the restart intensity
    of its own pipe; past it, the pipe's handle is told ``down`` and the runner stays dead."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self._times: dict[str, deque] = {}
        self._procs: dict[str, object] = {}

    def _start(self, child) -> None:
        super()._start(child)
        if child.address is not None:
            self._procs[child.spec.id] = _child_process(self, child.address)

    def _allow_restart(self) -> bool:
        return True  # each pipe's own intensity is checked in _exited

    def _exited(self, address, lost: bool = False) -> None:
        child = next((c for c in self._children if c.address is not None and c.address == address), None)
        if child is None or self._stopping or child.normal_exit or not isinstance(child.spec.init, PipeInit):
            super()._exited(address, lost)
            return
        init = child.spec.init
        now = time.monotonic()
        times = self._times.setdefault(child.spec.id, deque())
        times.append(now)
        while times and now - times[0] > init.max_seconds:
            times.popleft()
        if len(times) > init.max_restarts:
            code = _exitcode(self._procs.pop(child.spec.id, None))
            self._children.remove(child)
            how = f" (last exit code {code})" if code is not None else ""
            msg = (
                f"pipe {init.name!r} is down: its PipeRunner died {len(times)} times within {init.max_seconds:g}s, "
                f"more than restart=({init.max_restarts}, {init.max_seconds:g}) allows{how}"
            )
            _notify(init.link, ("down", init.token, msg, code))
            return
        # Before the restart: the handle counts this death against what was in flight.
        _notify(init.link, ("died", init.token, child.pid, _exitcode(self._procs.get(child.spec.id))))
        super()._exited(address, lost)

    def on_other_message(self, message, sender) -> None:
        """An actor's Submit, Subscribe or Demand for a pipe: straight to the pipe's handle,
        which owns the pipe's inputs (this address outlives every runner)."""
        if isinstance(message, Forwarded):
            message, sender = message.message, message.sender
        name = getattr(message, "pipe_target", None)
        child = next((c for c in self._children if c.spec.id == name and isinstance(c.spec.init, PipeInit)), None)
        if child is None:
            running = sorted(c.spec.id for c in self._children)
            reason = ConfigurationError(f"no long-lived pipe named {name!r} runs on this runtime; running: {running}")
            self.send(sender, PipeFailed(getattr(message, "ref", None), reason))
            return
        _notify(child.spec.init.link, ("actor", child.spec.init.token, message, sender))

    def _on_stop_child(self, message: StopChild, sender) -> None:
        self._times.pop(message.id, None)
        self._procs.pop(message.id, None)
        super()._on_stop_child(message, sender)


def _notify(path: str, msg) -> None:
    # Connect, send, close: a socket kept open here would be inherited by every runner forked from here.
    try:
        s = _wire.connect(path, timeout=5)
        try:
            _wire.send(s, msg)
        finally:
            s.close()
    except OSError:
        pass  # the handle is gone: nobody to tell
