"""The ``PipeRunner`` actor: in a process of its own, it links to the pipe's handle, loads
the pipe, runs its stages (``slither._pipe.run``) with a data plane per pool they use, and
puts what leaves the last stages straight onto the link (``_LinkOut``)."""

from __future__ import annotations

import os
import pickle
import sys
import threading
import time

from thespian.actors import ActorExitRequest, ThespianWatch, WatchMessage

from slither import _pickle, _wire, telemetry
from slither import _store as store
from slither._pipe.definition import _SEQ, EOS, load_pipe
from slither._pipe.run import _Run
from slither._pipe_runner.supervisor import PipeInit
from slither._runner import RunnerPlane, _Plane
from slither.errors import ConfigurationError, SerializationError
from slither.supervision import ExitingNormally, SupervisedActor

FORWARDED = [
    ("slither", "pipe", "stage", "stop"),
    ("slither", "pipe", "stage", "exception"),
    ("slither", "dispatch", "batch", "stop"),
    ("slither", "dispatch", "batch", "exception"),
]


class PipeRunner(SupervisedActor):
    """Runs one long-lived pipe (see the module docstring); exits normally once it ends."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self._serve: _Serve | None = None
        self._parent = None
        self._over = False

    def receiveMessage(self, message, sender):
        super().receiveMessage(message, sender)
        if self._serve is not None and not self._over:
            return ThespianWatch([self._serve.wake_r])  # Thespian resets the watch after every message
        return None

    def on_message(self, message, sender) -> None:
        if isinstance(message, PipeInit):
            if self._serve is None:
                self._parent = sender
                self._serve = _Serve(message)
                self._serve.start()
        elif isinstance(message, WatchMessage) and self._serve is not None:
            try:
                os.read(self._serve.wake_r, 4096)
            except BlockingIOError:
                pass
            if self._serve.finished and not self._over:
                self._over = True
                self.send(self._parent, ExitingNormally())
                self.send(self.myAddress, ActorExitRequest())


class _Planes:
    """The runtime a runner's pool stages see: a data plane per pool, made on first use."""

    def __init__(self, plane: RunnerPlane):
        self._plane = plane
        self._planes: dict[str, _Plane] = {}

    def pool(self, name: str):
        if name not in self._planes:
            self._planes[name] = _Plane(self._plane, name)
        return self._planes[name].pool

    def close(self) -> None:
        for p in self._planes.values():
            p.close()


class _Serve:
    """The runner's work, on threads of its own: the link, the run, its collector."""

    def __init__(self, init: PipeInit):
        self.init = init
        self.wake_r, self._wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        self.finished = False
        self._lock = threading.Lock()
        self._link = None
        self._forwarding: set = set()  # the FORWARDED events the caller listens to (_listen)

    def start(self) -> None:
        threading.Thread(target=self._main, name="slither-pipe-runner", daemon=True).start()

    def _send(self, msg) -> bool:
        try:
            chunks = _wire.dumps(msg)
        except Exception:  # noqa: BLE001 - a result (or an error) that cannot travel back
            if msg[0] != "out":
                return False
            chunks = _wire.dumps(("out", [(n, _portable_item(i)) for n, i in msg[1]], msg[2]))
        try:
            with self._lock:
                _wire.send_chunks(self._link, chunks)
            return True
        except OSError:
            return False

    def _finish(self) -> None:
        self.finished = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def _main(self) -> None:
        init = self.init
        try:
            self._link = _wire.connect(init.link, timeout=5)
            _wire.send(self._link, ("hello", init.token, os.getpid()))
        except OSError:
            self._finish()  # the handle is gone: nothing to run for
            return
        planes = _Planes(init.plane)
        try:
            sys.path[:] = list(init.sys_path) + [p for p in sys.path if p not in init.sys_path]
            try:
                os.chdir(init.cwd)
            except OSError:
                pass
            store.register_paths(init.store_paths)
            try:
                pipe, session_id, metadata = load_pipe(init.blob)
            except Exception as exc:  # noqa: BLE001 - named for the caller
                raise ConfigurationError(
                    f"pipe {init.name!r} could not be loaded in its PipeRunner process: {type(exc).__name__}: {exc} "
                    "(a pipe class travels by reference when importable, by value otherwise: is its module "
                    "importable from the caller's sys.path and working directory?)"
                ) from None
            for st in pipe.stages:
                if st.kind == "pool":
                    planes.pool(st.options.get("pool", "default"))
            run = _Run(pipe, planes, session_id, metadata, fuse_first=True)
        except BaseException as exc:  # noqa: BLE001 - every start failure reaches start_pipe
            planes.close()
            self._send(("failed", _portable(exc)))
            self._finish()
            return
        run.fanout = lambda key, extra: self._send(("fanout", key, extra))
        run.out = _LinkOut(self, run)
        run.on_hung = self._hung
        run.start(None)
        self._send(("ready",))
        threading.Thread(target=self._read, args=(run,), name="slither-pipe-runner-in", daemon=True).start()
        try:
            while not run.out.over.wait(0.1):
                if run.cancel.is_set():  # the handle went away, or a stage failed
                    if run.error is not None:
                        run.out.put(("error",))
                    break
        finally:
            run.cancel.set()
            planes.close()
            self._finish()

    def _hung(self, st, chunk) -> None:
        """An inline handler ran past its stage's timeout: a thread cannot be stopped, so
        the runner ends; the handle applies the stage's policy to these inputs."""
        keys = [it.meta.get(_SEQ) for it in chunk if it.meta.get(_SEQ)]
        self._send(("hung", st.name, st.options["timeout"], keys))
        os._exit(75)

    def _listen(self, events) -> None:
        """Forward exactly the events the caller has handlers for: the others cost the
        stages their metadata and the link a frame each, for nobody."""
        for event in FORWARDED:
            hid = f"slither-runner-{'-'.join(event)}"
            if event in events and event not in self._forwarding:
                telemetry.attach(hid, [event], self._event)
                self._forwarding.add(event)
            elif event not in events and event in self._forwarding:
                telemetry.detach(hid)
                self._forwarding.discard(event)

    def _event(self, event, measurements, metadata) -> None:
        self._send(("event", event, dict(measurements), {k: _portable(v) for k, v in metadata.items()}))

    def _read(self, run: _Run) -> None:
        """The handle's inputs into the first inbox, in chunks of the pipe's chunk_size."""
        size = run.pipe.chunk_size
        try:
            while True:
                msg = _wire.recv(self._link)
                if msg[0] == "in":
                    items = [pickle.loads(b) for b in msg[1]]
                    for k in range(0, len(items), size):
                        if not run.put(run.inboxes[0], items[k : k + size]):
                            return
                elif msg[0] == "eos":
                    run.put(run.inboxes[0], EOS)
                elif msg[0] == "listen":
                    self._listen(msg[1])
        except (OSError, EOFError, ValueError):
            run.cancel.set()  # the handle is gone (or stopped the pipe): end


class _LinkOut:
    """A runner's out queue: what the last stages put on it goes straight onto the link to
    the handle, from the stage's own thread (no collector thread in between)."""

    def __init__(self, serve: _Serve, run: _Run):
        self._serve = serve
        self._run = run
        self._last = 0.0
        self.over = threading.Event()  # the end (or the failure) was sent

    def _stats(self, force: bool = False):
        now = time.monotonic()
        if force or now - self._last > 0.2:
            self._last = now
            return self._run.stage_stats()
        return None

    def put(self, msg, block: bool = True, timeout: float | None = None) -> None:
        if self.over.is_set():
            return
        kind = msg[0]
        if kind == "items":
            pairs = [*msg[1], *(("skipped", it) for it in msg[2])]
            if pairs and not self._serve._send(("out", pairs, self._stats())):
                self._run.cancel.set()  # the handle is gone
        elif kind == "eos":
            self._serve._send(("eos", self._stats(force=True)))
            self.over.set()
        elif kind == "error":
            self._serve._send(("failed", _portable(self._run.error)))
            self.over.set()

    put_nowait = put


def _portable(value):
    """``value`` if it pickles, else a RuntimeError that says what it was."""
    try:
        pickle.dumps(value, protocol=5)
        return value
    except Exception:  # noqa: BLE001
        try:
            return pickle.loads(_pickle.dumps_by_value(value))
        except Exception:  # noqa: BLE001
            return RuntimeError(f"{type(value).__name__}: {value}")


def _portable_item(item):
    try:
        pickle.dumps(item, protocol=5)
        return item
    except Exception as exc:  # noqa: BLE001
        meta = {**item.meta, "error": SerializationError(f"the result could not be pickled back to the caller: {exc}")}
        return type(item)(item.id, None, meta, item.route)
