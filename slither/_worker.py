"""The worker process: how it is started, made ordinary, and its batch loop.

::

    PoolSupervisor ── Worker actor (the nanny: a Thespian actor process)
                          │ fork, on its main thread
                          ▼
                      worker process ── reader thread per dispatcher: frames → one inbox
                          main thread: runs batches in turn, replies on the socket each came by

A worker serves its caller's hub and, told ``("join", path)``, every
``DispatchRunner`` of its pool too (see ``slither._runner``): one connection
and reader each. Only the caller's connection ending ends the worker.

The nanny stays a Thespian actor, and is what the pool supervisor restarts.
The worker it forks is an ordinary Python process: default dispositions for
the fatal signals (with ``faulthandler`` writing to a pipe the nanny reads),
Python's own SIGINT handler, batches on its main thread (so ``signal.signal``
works in user code), and ``logging`` as in any process, its records
forwarded to the caller (see :class:`_Forward`). When the worker dies the
nanny reaps it, reports ``("exit", token, pool, index, pid, exitcode,
faulthandler text)`` to the caller's hub (which names the signal or exit
code in ``WorkerCrashed``), and exits, so its supervisor restarts it.

Every exception a batch function raises, ``SystemExit`` and
``KeyboardInterrupt`` included, fails that batch (``WorkerError``) and the
worker lives on: only a real death of the process is a crash.

A worker ends on purpose when its caller tells it to (``("recycle",)`` after
``max_batches``, or after it said ``("over_rss", bytes)``: under
``PoolSpec(max_rss=)`` it reads its resident memory after every batch, before
the reply) or at shutdown (``("stop",)``), tearing down first.
"""

from __future__ import annotations

import faulthandler
import importlib
import logging
import os
import pickle
import queue
import resource
import signal
import sys
import threading
import time
import traceback
from typing import Any

import cloudpickle

from slither import _net, _pickle, _protocol, _thespian, _wire, telemetry, worker
from slither import _store as store
from slither._item import Context
from slither._sys import ResidentMemory, link_to_parent, node_key, vm_size

_IGNORED_BY_PYTHON = (signal.SIGPIPE, signal.SIGXFSZ)  # what CPython itself ignores at start-up


def _ordinary_signals(fault_fd: int | None) -> None:
    """Undo Thespian's Python-level handlers: a fault kills the process at once."""
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            handler = signal.getsignal(sig)
        except (ValueError, OSError):
            continue
        if callable(handler) or handler is None:
            try:
                signal.signal(sig, signal.SIG_IGN if sig in _IGNORED_BY_PYTHON else signal.SIG_DFL)
            except (OSError, RuntimeError, ValueError):
                pass
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if fault_fd is not None:
        # SIGSEGV, SIGFPE, SIGABRT, SIGBUS, SIGILL: dump every thread's stack, then die of the signal.
        # disable() first: enabled in the caller (pytest does), the state is inherited, and enable()
        # alone would not install its handlers again over the ones reset above.
        faulthandler.disable()
        faulthandler.enable(file=fault_fd, all_threads=True)


class _Forward(logging.Handler):
    """Sends every record that reaches it to the caller, which handles it under the
    same logger name (see ``slither._pool``). The record keeps the worker's pid
    (``record.process``); ``record.processName`` names the pool and worker."""

    def __init__(self, send):
        super().__init__(logging.NOTSET)
        self._send = send

    def emit(self, record: logging.LogRecord) -> None:
        try:
            d = dict(record.__dict__)
            d["msg"] = record.getMessage()
            d["args"] = None
            if record.exc_info:
                d["exc_text"] = logging.Formatter().formatException(record.exc_info)
            d["exc_info"] = None
            d["processName"] = f"slither-worker:{worker._info.get('pool')}:{worker._info.get('index')}"
            self._send(_protocol.log(d))
        except Exception:  # noqa: BLE001 - a log line must never fail a batch
            self.handleError(record)


def _ordinary_logging(send) -> None:
    """Give this process the caller's logging tree back (Thespian replaced the root with
    its forwarder, which refuses handlers), with the caller's levels as they were when
    the runtime started, and every record sent to the caller instead of the caller's
    handlers (which would write to the caller's files and terminal a second time)."""
    root, manager = _thespian.CALLER_LOGGING
    if type(root).addHandler is not logging.Logger.addHandler:
        # Slither was first imported inside an actor process (a Runtime embedded in an actor
        # system created before it): the tree it saw is Thespian's forwarder. Start a plain one.
        root = logging.RootLogger(logging.WARNING)
        manager = logging.Manager(root)
    logging.root = logging.Logger.root = root
    logging.Logger.manager = manager
    forward = _Forward(send)
    for lg in [root, *(v for v in list(manager.loggerDict.values()) if isinstance(v, logging.Logger))]:
        for h in list(lg.handlers):
            lg.removeHandler(h)
        if lg is root or not lg.propagate:
            lg.addHandler(forward)


# -- batches -------------------------------------------------------------------

_fn_cache: dict[Any, Any] = {}
_blobs: dict[Any, bytes] = {}


def resolve(spec: str):
    """Import ``"package.module:function"`` (the function may be dotted)."""
    if not isinstance(spec, str) or ":" not in spec:
        raise ValueError(f"fn must be 'module:function' or a callable, got {spec!r}")
    mod_name, _, attr = spec.partition(":")
    obj = importlib.import_module(mod_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{spec!r} is not callable")
    return obj


def _load_fn(key, blob):
    fn = _fn_cache.get(key)
    if fn is None:
        fn = resolve(key[1]) if key[0] == "name" else cloudpickle.loads(blob)
        _fn_cache[key] = fn
    return fn


_contexts: dict[bytes, Context] = {}  # pickled Context -> Context: a dispatch sends the same one with every batch


def _context_of(blob: bytes) -> Context:
    ctx = _contexts.get(blob)
    if ctx is None:
        if len(_contexts) >= 64:
            _contexts.clear()
        ctx = _contexts[blob] = pickle.loads(blob)
    return ctx


def _error_reply(ref, exc: BaseException) -> tuple:
    try:
        message = str(exc)
        if isinstance(exc, MemoryError) and not message:
            limit = worker._info.get("max_memory")
            message = f"out of memory (max_memory={limit} bytes beyond the worker's start)" if limit else "out of memory"
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename == __file__:  # start at the user's frames
            tb = tb.tb_next
        text = "".join(traceback.format_exception(type(exc), exc, tb))
        return _protocol.err(ref, type(exc).__name__, message, text)
    except MemoryError:  # the frames still hold what exhausted memory: say less
        return _protocol.err(ref, type(exc).__name__, "out of memory", "")


def _reply_chunks(reply) -> list:
    """The reply's frame; by value when the C pickler cannot (a class only this worker has)."""
    try:
        return _wire.dumps(reply)
    except Exception:  # noqa: BLE001
        pass
    try:
        return _wire.dumps(reply, by_value=True)
    except Exception as exc:  # noqa: BLE001
        return _wire.dumps(_protocol.ser(reply[1], f"result could not be pickled: {type(exc).__name__}: {exc}"))


def _run_one(msg, send, rss: _RssWatch | None = None) -> None:
    """msg = ("batch", ref, fn_key, payloads, pickled Context)."""
    _, ref, fn_key, payloads, ctx_blob = msg
    try:
        try:
            worker._current = _context_of(ctx_blob)  # its metadata may hold objects this worker cannot import
            fn = _load_fn(fn_key, _blobs.get(fn_key))
            t0 = time.perf_counter_ns()  # a function's first load is no batch's run time
            results = fn(payloads)
        except BaseException as exc:  # noqa: BLE001 - SystemExit and KeyboardInterrupt too: the batch fails, not the worker
            reply = _error_reply(ref, exc)
        else:
            problem = _protocol.result_problem(results, len(payloads))
            reply = _protocol.ok(ref, results, time.perf_counter_ns() - t0) if problem is None else _protocol.bad(ref, problem)
        if rss is not None:
            rss.after_batch()  # before the reply: the caller gives this worker nothing more on it
        send(_reply_chunks(reply))
        worker._info["batches"] = worker._info.get("batches", 0) + 1
    finally:
        worker._current = None


def _unloadable(failed: _wire.UnpicklingFailed):
    """What to answer for a frame this worker could not unpickle: the batch fails
    (naming the items) and the worker lives on. None when not even its ref can be read."""
    try:
        msg = _pickle.loads_tolerant(failed.main, failed.buffers)
    except Exception:  # noqa: BLE001
        return None
    if not isinstance(msg, tuple) or not msg or msg[0] not in (_protocol.BATCH, _protocol.PROBE):
        return None
    positions = _pickle.find_unloadable(msg[3]) if msg[0] == _protocol.BATCH and isinstance(msg[3], list) else []
    return _protocol.unloadable(msg[1], positions, str(failed))


def _run_probe(msg, send) -> None:
    _, ref, fn_key = msg
    try:
        reply = _protocol.ok(ref, [_load_fn(fn_key, _blobs.get(fn_key))()])
    except Exception as exc:  # noqa: BLE001
        reply = _error_reply(ref, exc)
    send(_reply_chunks(reply))


def serve(
    hub_path: str,
    token: str,
    pool: str,
    index: int,
    rlimit_as: int | None,
    in_process: bool = False,
    hub_tcp: tuple | None = None,
    leader_node: str = "",
) -> None:
    """Connect to the caller's hub and run batches until the connection closes."""
    if rlimit_as:
        # Address space inherited by fork (thread stacks, malloc arenas of the caller)
        # can already be large: the limit is what the worker may add on top of it.
        limit = vm_size() + rlimit_as
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    remote = hub_tcp is not None and (_net.MEMBER.force_network or node_key() != leader_node)
    if remote:
        sock = _net.connect(tuple(hub_tcp), _net.MEMBER.secret)  # a member's worker: the network path
        token = ""  # the handshake authenticated us; the token is for the leader's Unix sockets only
    else:
        try:
            sock = _wire.connect(hub_path, timeout=10)
        except (ConnectionRefusedError, FileNotFoundError):
            # The hub is gone: its runtime's process ended (an actor process that exited with
            # its actor system, say) and the root is about to stop the tree. Nothing to serve.
            os._exit(0) if not in_process else None
            return
    lock = threading.Lock()

    def send(chunks) -> None:
        with lock:
            _wire.send_chunks(sock, chunks)

    _wire.send(sock, _protocol.hello_worker(token, pool, index, os.getpid()))
    _, sys_path, cwd, store_paths, setup, max_rss = _wire.recv(sock)
    sys.path[:] = list(sys_path) + [p for p in sys.path if p not in sys_path]
    try:
        os.chdir(cwd)
    except OSError:
        pass
    store.use_replicas(remote)  # on a member: this node's replicas, writes over TCP to the leader
    store.register_paths(store_paths)
    worker._info.update(pool=pool, index=index, pid=os.getpid(), batches=0, in_process=in_process, max_memory=rlimit_as)
    if not in_process:
        telemetry._forward = lambda event, measurements, metadata: send(
            _wire.dumps(_protocol.event(event, measurements, metadata))
        )
        _ordinary_logging(lambda msg: send(_wire.dumps(msg)))
    teardown = _set_up(setup, send)
    inbox: queue.SimpleQueue = queue.SimpleQueue()
    _hello.update(token=token, pool=pool, index=index, inbox=inbox)
    threading.Thread(target=_read, args=(sock, inbox, send, in_process), name="slither-worker-reader", daemon=True).start()
    _loop(inbox, in_process, teardown, _RssWatch(max_rss, send) if max_rss and not in_process else None)


def _set_up(setup: tuple | None, send):
    """Run the pool's ``setup`` (its value is ``slither.worker.state()``) and tell the caller
    this worker is ready; a setup that raises sends its traceback and ends the worker
    (its supervisor counts that against the pool's restart intensity). The teardown, or None."""
    if setup is None:
        send(_wire.dumps(_protocol.READY))
        return None
    setup_key, setup_blob, teardown_key, teardown_blob = setup
    if setup_key is not None:
        try:
            worker._state = _load_fn(setup_key, setup_blob)()
        except BaseException as exc:  # noqa: BLE001 - reported, then this worker ends
            _, _, type_name, message, text = _error_reply(None, exc)
            send(_wire.dumps(_protocol.setup_failed(type_name, message, text)))
            os._exit(3)
    send(_wire.dumps(_protocol.READY))
    return _load_fn(teardown_key, teardown_blob) if teardown_key is not None else None


def _tear_down(teardown) -> None:
    if teardown is not None:
        try:
            teardown()
        except Exception:  # noqa: BLE001 - nobody waits for it: say it, and end anyway
            traceback.print_exc()


def _read(sock, inbox: queue.SimpleQueue, send, in_process: bool, primary: bool = True) -> None:
    """A reader thread: frames from one dispatcher onto the inbox as ``(reply, frame,
    cancelled)``, so neither side can block the other and each batch is answered on the
    socket it came by. A "cancel" frame goes in ``cancelled`` (this socket's refs) at once:
    the main thread skips those batches when their turn comes."""
    recv = _wire.Reader(sock).recv
    cancelled: set = set()
    try:
        while True:
            try:
                msg = recv()
                if msg[0] == _protocol.CANCEL:
                    cancelled.update(msg[1])
                    continue
                inbox.put((send, msg, cancelled))
            except _wire.UnpicklingFailed as failed:
                answer = _unloadable(failed)
                if answer is None:
                    raise
                inbox.put((send, answer, cancelled))  # answered in turn by the main thread: replies keep the batches' order
    except BaseException:  # noqa: BLE001 - EOF, or e.g. MemoryError while a batch hogs memory
        if not primary:
            sock.close()  # a DispatchRunner finished (or died): this worker serves on
            return
        # Without its reader this worker could never get work again: end it, so the
        # caller sees a crash and the supervisor starts a fresh one.
        os._exit(0) if not in_process else inbox.put(None)


_hello: dict = {}  # token, pool, index and the inbox of this worker: what joining a dispatcher needs


def _join(path: str, in_process: bool) -> None:
    """Serve the DispatchRunner whose hub is at ``path`` too (see ``slither._runner``): greet it
    as a worker greets its caller, then read its batches onto the same inbox, in turn with the
    caller's (each dispatcher keeps at most its depth of batches here, so turns stay fair)."""
    try:
        sock = _wire.connect(path, timeout=5)
        _wire.send(sock, _protocol.hello_worker(_hello["token"], _hello["pool"], _hello["index"], os.getpid()))
        _wire.recv(sock)  # its init: sys.path, stores and setup are the caller's, already applied
        _wire.send(sock, _protocol.READY)
    except (OSError, EOFError):
        return  # the runner is already gone
    lock = threading.Lock()

    def send(chunks) -> None:
        try:
            with lock:
                _wire.send_chunks(sock, chunks)
        except OSError:
            pass  # that runner went away mid-batch: its reply has nobody to go to, and this worker lives on

    _read(sock, _hello["inbox"], send, in_process, primary=False)


class _RssWatch:
    """``PoolSpec.max_rss``: after each batch (before its reply), this worker's resident
    memory; the first time it is above the limit, the caller is told (on its own
    connection, whoever sent the batch), and recycles this worker once it has answered
    what it holds."""

    def __init__(self, limit: int, send):
        self.limit = limit
        self.send = send
        self.memory = ResidentMemory()
        self.told = False

    def after_batch(self) -> None:
        if self.told:
            return
        rss = self.memory.bytes()
        if rss > self.limit:
            self.told = True
            self.send(_wire.dumps(_protocol.over_rss(rss)))


def _loop(inbox: queue.SimpleQueue, in_process: bool, teardown=None, rss: _RssWatch | None = None) -> None:
    """The main thread: every message in turn, until the caller goes away or retires it."""
    while True:
        got = inbox.get()
        if got is None:
            _tear_down(teardown)
            if in_process:
                return
            os._exit(0)  # the caller went away: nothing left to serve
        send, msg, cancelled = got
        if msg == _protocol.RECYCLE or msg == _protocol.STOP:
            _tear_down(teardown)
            if in_process:
                return
            os._exit(_protocol.EXIT_RECYCLE if msg == _protocol.RECYCLE else _protocol.EXIT_STOP)
        kind = msg[0]
        if kind == _protocol.BATCH:
            if cancelled and _skipped(msg[1], cancelled):
                send(_wire.dumps(_protocol.cancelled(msg[1])))
                continue
            _run_one(msg, send, rss)
        elif kind == _protocol.FN:
            _blobs[msg[1]] = msg[2]
        elif kind == _protocol.PROBE:  # run fn() with no payloads, outside a batch, on this worker
            _run_probe(msg, send)
        elif kind == _protocol.STORES:
            store.register_paths(msg[1])
        elif kind == _protocol.JOIN:
            threading.Thread(target=_join, args=(msg[1], in_process), name="slither-worker-join", daemon=True).start()
        elif kind == _protocol.UNLOADABLE:
            send(_wire.dumps(msg))


def _skipped(ref, cancelled: set) -> bool:
    """Whether batch ``ref`` was cancelled. A socket's batches come in increasing refs: a
    cancelled ref below this one was running or done when its cancel came, and is dropped."""
    if ref in cancelled:
        cancelled.discard(ref)
        return True
    for r in [r for r in list(cancelled) if r < ref]:  # list(): one step, while the reader may add
        cancelled.discard(r)
    return False


def run_forked(init, nanny_pid: int, fault_fd: int | None) -> None:
    """The body of a forked worker process (see the module docstring). Never returns."""
    code = 0
    try:
        link_to_parent(nanny_pid)
        _ordinary_signals(fault_fd)
        serve(
            init.hub_path, init.token, init.pool, init.index, init.rlimit_as, hub_tcp=init.hub_tcp, leader_node=init.leader_node
        )
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        code = 70
    finally:
        os._exit(code)


def apply_each(fn, payloads: list) -> list:
    """The batch function of ``map``: ``fn`` (a callable, or ``"module:function"``) on each payload."""
    if isinstance(fn, str):
        fn = _fn_cache.get(("each", fn)) or _fn_cache.setdefault(("each", fn), resolve(fn))
    return [fn(p) for p in payloads]


class Raised:
    """What ``call_each`` returns for a call that raised: the exception and the worker's traceback."""

    __slots__ = ("exc", "traceback")

    def __init__(self, exc: BaseException, traceback_text: str):
        self.exc = exc
        self.traceback = traceback_text

    def __reduce__(self):
        return (Raised, (self.exc, self.traceback))


def call_each(fn, calls: list) -> list:
    """The batch function of ``Executor.submit``: each ``(args, kwargs)`` called, an
    exception of a call standing in its place as :class:`Raised`."""
    out = []
    for args, kwargs in calls:
        try:
            out.append(fn(*args, **kwargs))
        except Exception as exc:  # noqa: BLE001 - the future gets it
            tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None  # start at the user's frame
            out.append(Raised(exc, "".join(traceback.format_exception(type(exc), exc, tb))))
    return out


def call_star(fn, args: tuple):
    """The per-input function of ``Executor.map``: ``fn(*args)``."""
    return fn(*args)
