"""``slither serve``: a long-lived pipe run as a service, and ``slither status``.

::

    slither serve mymod:ScorePipe --source mymod:read_events --sink mymod:write_result --workers 4
    slither status 127.0.0.1:9464

The pipe runs supervised (``Runtime.start_pipe``: a crashed runner is restarted and
loses nothing accepted). A thread reads the source and submits each payload (it waits
while the pipe is full); the main thread takes the results and calls the sinks.

* **Source.** ``--source`` names a callable that returns an iterable of payloads. If
  that iterable has an ``ack(position)`` method (the :class:`Source` protocol) it
  yields ``(position, payload)`` pairs instead, and ``serve`` calls ``ack(position)``
  once that payload and every one before it have left the pipe, each result handed to
  its sink. A source that keeps its last acknowledged position (in a file, a database,
  a broker's offset) starts after it when ``serve`` starts again: at least once, end
  to end, across restarts of the service itself.
* **Sinks.** ``--sink mod:fn`` is called as ``fn(output_name, item)`` for every item
  that leaves the pipe, skipped ones under ``"skipped"`` (a payload the pipe refuses,
  one that cannot be pickled, too), one call at a time. ``--sink NAME=mod:fn`` takes
  output ``NAME`` only; every output needs a sink, checked at start.
* **Stopping.** SIGTERM (or a first SIGINT) drains: no new input, everything in flight
  finished and handed to the sinks, then exit 0 (1 if ``--drain-timeout`` passed
  first). A second SIGINT stops at once (exit 130). A source that ends drains too.
* **Watching.** ``--status-port PORT`` serves ``/status`` (JSON: pools, workers,
  restarts, in-flight work, per-stage counts and throughput, queue depths) and
  ``/metrics`` (Prometheus, with the ``metrics`` extra) on 127.0.0.1.
"""

from __future__ import annotations

import faulthandler
import importlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol, runtime_checkable

from slither._item import Item
from slither._runtime import PoolSpec, Runtime
from slither.errors import ConfigurationError, SerializationError


@runtime_checkable
class Source(Protocol):
    """A source that can resume: iterating it yields ``(position, payload)``; ``ack(position)``
    says that payload and all before it are done (keep it, and start after it next time)."""

    def __iter__(self): ...

    def ack(self, position: Any) -> None: ...


def load(ref: str, what: str):
    """``"module:attribute"`` imported, or a ConfigurationError naming ``what``."""
    mod, sep, attr = ref.partition(":")
    if not sep or not mod or not attr:
        raise ConfigurationError(f"{what}: expected 'module:name', got {ref!r}")
    try:
        obj = importlib.import_module(mod)
    except ImportError as exc:
        raise ConfigurationError(f"{what}: cannot import module {mod!r}: {exc}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigurationError(f"{what}: module {mod!r} has no {attr!r}") from None
    return obj


def sinks_for(pipe, specs: list[str]) -> dict[str, Callable]:
    """``--sink`` values as ``{output: fn}``, covering every output of ``pipe`` and "skipped"."""
    outputs = ["default", *pipe.outputs, "skipped"]
    catch_all, named = None, {}
    for spec in specs:
        name, eq, ref = spec.partition("=")
        if eq and ":" not in name:
            if name not in outputs:
                raise ConfigurationError(f"--sink {spec!r}: pipe {pipe.pipe_name!r} has no output {name!r}; outputs: {outputs}")
            named[name] = load(ref, f"--sink {spec!r}")
        else:
            catch_all = load(spec, f"--sink {spec!r}")
    missing = [o for o in outputs if o not in named and catch_all is None]
    if missing:
        raise ConfigurationError(f"no --sink for output(s) {missing} of pipe {pipe.pipe_name!r}; give --sink mod:fn for all")
    return {o: named.get(o, catch_all) for o in outputs}


class _Acks:
    """The lowest position whose input, and every one before it, has left the pipe."""

    def __init__(self, source):
        self.source = source if isinstance(source, Source) else None
        self.positions: dict[int, Any] = {}
        self.done: set[int] = set()
        self.next = 0
        self.acked: Any = None
        self.lock = threading.Lock()

    def submitted(self, seq: int, position: Any) -> None:
        with self.lock:
            self.positions[seq] = position

    def finished(self, seqs) -> None:
        last = None
        with self.lock:
            self.done.update(seqs)
            while self.next in self.done and self.next in self.positions:
                self.done.discard(self.next)
                last = self.positions.pop(self.next)
                self.next += 1
        if last is not None and self.source is not None:
            self.source.ack(last)
            self.acked = last


class Service:
    """One ``slither serve``: the runtime, the pipe, the feeder, the sinks, the status server."""

    def __init__(self, pipe, source_fn, sinks, *, pools, max_pending=1000, restart=(3, 5.0), drain_timeout=30.0):
        self.pipe = pipe
        self.source_fn = source_fn
        self.sinks = sinks
        self.pools = pools
        self.max_pending = max_pending
        self.restart = restart
        self.drain_timeout = drain_timeout
        self.stopping = threading.Event()
        self.hard = threading.Event()
        self.rt: Runtime | None = None
        self.handle = None
        self.metrics = None
        self.http: ThreadingHTTPServer | None = None
        self.started = time.monotonic()
        self.submitted = self.delivered = 0
        self.drained = True
        self.error: BaseException | None = None
        self._finished: list[int] = []
        self._flock = threading.Lock()
        self._sink_lock = threading.Lock()

    # -- running -------------------------------------------------------
    def run(self, status_port: int | None = None) -> int:
        self.rt = Runtime(pools=self.pools).start()
        try:
            self.handle = self.rt.start_pipe(self.pipe, max_pending=self.max_pending, restart=self.restart)
            self.handle._on_done = self._done  # an input all of whose results were taken
            if status_port is not None:
                self._serve_status(status_port)
            source = self.source_fn()
            acks = self._acks = _Acks(source)
            feeder = threading.Thread(target=self._feed, args=(source, acks), name="slither-serve-source", daemon=True)
            feeder.start()
            while not self.hard.is_set():
                try:
                    # A timeout, so this (the main) thread wakes now and then: Python runs signal
                    # handlers only here, and a signal the kernel gave another thread waits for it.
                    for name, item in self.handle.results(timeout=0.25):
                        self._sink(name, item)
                        self.delivered += 1
                        self._ack()
                        if self.hard.is_set():
                            break
                    break  # the pipe ended
                except TimeoutError:
                    continue
            self._ack()
            feeder.join(5)
        except BaseException as exc:  # noqa: BLE001 - reported and the exit code says so
            self.error = exc
        finally:
            self._close()
        if self.hard.is_set():
            return 130
        if self.error is not None:
            print(f"slither serve: {type(self.error).__name__}: {self.error}", file=sys.stderr, flush=True)
            return 1
        return 0 if self.drained else 1

    def _done(self, seq: int) -> None:
        with self._flock:
            self._finished.append(seq)

    def _ack(self) -> None:
        # Called after the sink of the last result taken: every input finished so far is delivered.
        with self._flock:
            seqs, self._finished = self._finished, []
        if seqs:
            self._acks.finished(seqs)

    def _feed(self, source, acks: _Acks) -> None:
        h = self.handle
        positioned = acks.source is not None
        seq = 0
        try:
            for x in source:
                if self.stopping.is_set():
                    break
                position, payload = x if positioned else (None, x)
                # Known before it can finish: its results may all be taken before submit returns.
                acks.submitted(seq, position)
                while not self.stopping.is_set():
                    try:
                        h.submit(payload, timeout=0.2)
                    except TimeoutError:
                        continue
                    except SerializationError as exc:  # refused, so it ends here, as a skipped input
                        self._sink("skipped", Item.wrap(None).put_meta({"skipped": True, "error": exc}))
                        self._done(seq)
                    else:
                        self.submitted += 1
                    seq += 1  # the handle numbers its inputs the same way, refused ones too
                    break
        except BaseException as exc:  # noqa: BLE001 - the source failed: drain what it gave, then exit 1
            self.error = exc
        self.drained = False
        try:
            self.drained = h.stop(drain=not self.hard.is_set(), timeout=self.drain_timeout)
        except BaseException as exc:  # noqa: BLE001
            self.error = self.error or exc

    def _sink(self, name: str, item) -> None:
        with self._sink_lock:  # one call at a time: the results' thread, or the source's for a refused payload
            self.sinks[name](name, item)

    def stop(self, hard: bool = False) -> None:
        self.stopping.set()
        if hard:
            self.hard.set()
            if self.handle is not None:
                threading.Thread(target=self.handle.stop, kwargs={"drain": False}, daemon=True).start()

    def _close(self) -> None:
        if self.http is not None:
            self.http.shutdown()
            self.http.server_close()
        if self.metrics is not None:
            self.metrics.close()
        if self.rt is not None:
            self.rt.shutdown()

    # -- watching ------------------------------------------------------
    def status(self) -> dict:
        rt, h = self.rt, self.handle
        pools = {}
        for name, pool in list(rt._pools.items()):
            s = pool.stats()
            pools[name] = {
                "size": s.size,
                "workers": s.connected,
                "queued": s.queued,
                "in_flight": s.in_flight,
                "crashes": s.crashes,
                "restarts": s.restarts,
                "down": s.down,
                "worker_pids": rt.worker_pids(name),
            }
        st = h.status() if h is not None else {}
        up = max(1e-9, time.monotonic() - self.started)
        stages = {k: {**v, "per_second": v.get("out", 0) / up} for k, v in st.get("stages", {}).items()}
        return {
            "pipe": h.name if h is not None else None,
            "state": st.get("state"),
            "runner_pid": st.get("runner_pid"),
            "runner_restarts": st.get("restarts"),
            "submitted": st.get("submitted"),
            "completed": st.get("completed"),
            "in_flight": st.get("pending"),
            "delivered": self.delivered,
            "acked": repr(self._acks.acked) if hasattr(self, "_acks") and self._acks.acked is not None else None,
            "uptime_s": up,
            "stages": stages,
            "pools": pools,
            "pids": rt.pids(),
            "error": repr(st.get("error")) if st.get("error") is not None else None,
        }

    def _serve_status(self, port: int) -> None:
        try:
            from slither.metrics import Metrics

            self.metrics = Metrics(self.rt)
        except ConfigurationError:
            self.metrics = None  # /metrics answers 501 without prometheus_client
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                if self.path.split("?")[0] == "/status":
                    body, ctype, code = json.dumps(service.status(), default=repr).encode(), "application/json", 200
                elif self.path.split("?")[0] == "/metrics" and service.metrics is not None:
                    body, ctype, code = service.metrics.exposition(), service.metrics.content_type, 200
                elif self.path.split("?")[0] == "/metrics":
                    body, ctype, code = b"install slither[metrics] (prometheus_client) for /metrics\n", "text/plain", 501
                else:
                    body, ctype, code = b"try /status or /metrics\n", "text/plain", 404
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # quiet: a scrape every few seconds is not news
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.http.daemon_threads = True
        threading.Thread(target=self.http.serve_forever, name="slither-serve-status", daemon=True).start()
        print(f"slither serve: status on http://127.0.0.1:{self.http.server_address[1]}/status", flush=True)


def _intensity(text: str, option: str) -> tuple[int, float]:
    from slither._pipe import check_restart

    try:
        n, secs = text.split(",")
        return check_restart((int(n), float(secs)))
    except (ValueError, ConfigurationError):
        raise ConfigurationError(f"{option} {text!r}: expected MAX_RESTARTS,SECONDS, like 3,5") from None


def serve_main(args) -> int:
    pipe = load(args.pipe, "the pipe")
    from slither._pipe import Pipe

    if not (isinstance(pipe, type) and issubclass(pipe, Pipe)):
        raise ConfigurationError(f"{args.pipe!r} is not a slither.Pipe subclass")
    source_fn = load(args.source, "--source")
    if not callable(source_fn):
        raise ConfigurationError(f"--source {args.source!r} is not callable")
    sinks = sinks_for(pipe, args.sink)
    max_restarts, max_seconds = _intensity(args.pool_restart, "--pool-restart")
    pools: dict = {"default": PoolSpec(size=args.workers, max_restarts=max_restarts, max_seconds=max_seconds)}
    for spec in args.pool or []:
        name, eq, size = spec.partition("=")
        if not eq or not size.isdigit():
            raise ConfigurationError(f"--pool {spec!r}: expected NAME=SIZE")
        pools[name] = PoolSpec(size=int(size), max_restarts=max_restarts, max_seconds=max_seconds)
    restart = _intensity(args.restart, "--restart")
    svc = Service(
        pipe, source_fn, sinks, pools=pools, max_pending=args.max_pending, restart=restart, drain_timeout=args.drain_timeout
    )
    sigints = []

    def say(text: str) -> None:
        os.write(1, text.encode())  # not print(): a signal handler may interrupt a print in progress

    def on_term(signum, frame):
        say("slither serve: SIGTERM: draining\n")
        svc.stop()

    def on_int(signum, frame):
        sigints.append(signum)
        hard = len(sigints) > 1
        say("slither serve: stopping now\n" if hard else "slither serve: draining (Ctrl-C again stops at once)\n")
        svc.stop(hard=hard)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_int)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # kill -USR1: every thread's stack, on stderr
    print(f"slither serve: {pipe.pipe_name} with {args.workers} workers; SIGTERM drains, a second Ctrl-C stops", flush=True)
    code = svc.run(args.status_port)
    print(
        f"slither serve: {'stopped' if code == 130 else 'drained' if code == 0 else 'ended'}: "
        f"{svc.submitted} inputs submitted, {svc.delivered} results delivered"
        + (f", acknowledged up to {svc._acks.acked!r}" if getattr(svc, "_acks", None) and svc._acks.acked is not None else ""),
        flush=True,
    )
    return code


def status_main(args) -> int:
    import urllib.request

    target = args.address if "://" in args.address else f"http://{args.address}"
    if target.count(":") < 2 and target.startswith("http://") and args.address.isdigit():
        target = f"http://127.0.0.1:{args.address}"
    url = target.rstrip("/") + ("" if target.rstrip("/").endswith("/status") else "/status")
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            st = json.loads(r.read())
    except OSError as exc:
        print(f"slither status: no service answers at {url}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(st, indent=2))
        return 0
    print(f"pipe {st['pipe']}: {st['state']}, runner pid {st['runner_pid']} (restarts {st['runner_restarts']})")
    print(
        f"  inputs submitted {st['submitted']}, completed {st['completed']}, in flight {st['in_flight']}; "
        f"results delivered {st['delivered']}; up {st['uptime_s']:.0f}s"
    )
    for name, s in st["stages"].items():
        print(
            f"  stage {name:<16} in {s['in']:>9} out {s['out']:>9} skipped {s['skipped']:>6} "
            f"{s['per_second']:>9.1f}/s  queued {s.get('queued', 0)}"
        )
    for name, p in st["pools"].items():
        print(
            f"  pool {name:<17} workers {p['workers']}/{p['size']} queued {p['queued']} in flight {p['in_flight']} "
            f"crashes {p['crashes']} restarts {p['restarts']}{' DOWN' if p['down'] else ''}"
        )
    return 0
