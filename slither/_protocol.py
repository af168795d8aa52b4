"""Every message of the data plane and of the stores, named in one place.

Messages are tuples (the per-batch path builds and unpacks millions of them:
a class per message would cost more than the rest of the frame), tagged by
their first element. Each kind is built by the function of its name here and
read by position where it is handled; the layout of every kind is written
below, and nowhere else. Errors that cross a process boundary travel as
*codes*, never as text to be matched.

Caller → worker (over the worker's socket, see ``slither._worker``)::

    ("batch", ref, fn_key, payloads, pickled Context)
    ("fn", fn_key, cloudpickled function)      sent once per worker before its first batch
    ("probe", ref, fn_key)                      run fn() once on this worker
    ("stores", {name: paths})                   stores started after the worker
    ("recycle",) / ("stop",)                    after its last batch: tear down and end
    ("join", path)                              also serve the dispatcher listening at path (a
                                                DispatchRunner's hub): the worker connects there as
                                                to its own hub, and answers that socket's batches
    ("cancel", [ref, ...])                      batches sent on this socket that their dispatcher
                                                gave up: one not started yet is answered
                                                ("cancelled", ref) instead of run

Worker → caller (replies keep the order of the batches)::

    ("ok", ref, results, run ns)                run ns: how long the batch ran in the worker
                                                (0 for a probe), for the automatic depth
    ("err", ref, type name, message, formatted traceback)
    ("bad", ref, why)                           not a list, or the wrong length
    ("ser", ref, why)                           a result could not be pickled
    ("unloadable", ref, [(position, "module.Class")], why)
    ("cancelled", ref)                          it was cancelled before it started (see "cancel")
    ("event", event, measurements, metadata)    telemetry
    ("log", LogRecord.__dict__)                 a logging record
    ("over_rss", rss bytes)                     once, just before a batch's reply: its resident
                                                memory passed the pool's max_rss (the caller gives
                                                it no new batch and recycles it)

First frame on the hub (a worker, a pool supervisor, a nanny)::

    ("worker", token, pool, index, pid)         answered ("init", sys.path, cwd, store paths,
                                                (setup key, setup blob, teardown key, teardown blob),
                                                max_rss or None),
                                                to which the worker answers ("ready",) once its setup
                                                ran, or ("setup_failed", type, message, traceback)
    ("pool_up", token, pool, supervisor pid)
    ("pool_down", token, pool, supervisor pid)
    ("exit", token, pool, index, pid, exitcode, faulthandler text)
    ("runner", token, pool, path)               a DispatchRunner (its own hub at path) asks for the
                                                pool's workers: answered ("joined", local workers
                                                told to join, PoolDown message or None); the
                                                socket stays open, the caller forwards on it each
                                                ("exit", "", pool, -1, pid, exitcode, fault) and
                                                ("pool_down", "", pool, PoolDown message) of that
                                                pool, and its EOF ends the registration

Store client → server: ``(client id, seq, op)`` with ``op`` one of
``("put", table, key, value)``, ``("bulk", table, rows)``, ``("delete",
table, key)``, ``("update", table, key, raw key, cloudpickled fn)``,
``("reload",)``, ``("ping",)``, ``("subscribe",)``; answered ``("ok",
value)`` or ``("err", code, message)``. Server → replica: ``("snap",
names)``, ``("rows", name, rows)``, ``("ready",)``, ``("chg", changes)``
(acknowledged ``("ack",)``), ``("end",)`` after the snapshot. A worker on a
member asks its node's replica service ``("ensure", store name, (host, port))``.
"""

from __future__ import annotations

# -- caller → worker -------------------------------------------------------------
BATCH = "batch"
FN = "fn"
PROBE = "probe"
STORES = "stores"
CANCEL = "cancel"

# -- worker → caller -------------------------------------------------------------
OK = "ok"
ERR = "err"
BAD = "bad"
SER = "ser"
UNLOADABLE = "unloadable"
CANCELLED = "cancelled"
EVENT = "event"
LOG = "log"
OVER_RSS = "over_rss"
REPLIES = frozenset({OK, ERR, BAD, SER, UNLOADABLE, CANCELLED})

# -- hub greetings ---------------------------------------------------------------
WORKER = "worker"
INIT = "init"
READY = ("ready",)  # a worker's answer to init once its setup ran: batches may come
SETUP_FAILED = "setup_failed"
RECYCLE = ("recycle",)  # caller → worker after its last batch (max_batches): tear down, a fresh one follows
STOP = ("stop",)  # caller → worker at shutdown: tear down and end

# Exit codes a worker ends with on purpose (its nanny acts on them, see slither._actors).
EXIT_RECYCLE = 86  # the nanny forks a fresh worker (not a restart of its supervisor's)
EXIT_STOP = 87  # the nanny waits for its own end
POOL_UP = "pool_up"
POOL_DOWN = "pool_down"
EXIT = "exit"
RUNNER = "runner"
JOINED = "joined"
JOIN = "join"

# -- store error codes -----------------------------------------------------------
MISSING_KEY = "missing_key"  # update() of a key that is not there: KeyError in the caller
FAILED = "failed"  # the write or reload raised: StoreError with the message


def batch(ref: int, fn_key, payloads: list, ctx_blob: bytes) -> tuple:
    return (BATCH, ref, fn_key, payloads, ctx_blob)


def fn(fn_key, blob: bytes) -> tuple:
    return (FN, fn_key, blob)


def probe(ref: int, fn_key) -> tuple:
    return (PROBE, ref, fn_key)


def cancel(refs: list) -> tuple:
    return (CANCEL, refs)


def cancelled(ref: int) -> tuple:
    return (CANCELLED, ref)


def ok(ref: int, results, run_ns: int = 0) -> tuple:
    return (OK, ref, results, run_ns)


def err(ref: int, type_name: str, message: str, traceback_text: str) -> tuple:
    return (ERR, ref, type_name, message, traceback_text)


def bad(ref: int, why: str) -> tuple:
    return (BAD, ref, why)


def ser(ref: int, why: str) -> tuple:
    return (SER, ref, why)


def unloadable(ref: int, positions: list, why: str) -> tuple:
    return (UNLOADABLE, ref, positions, why)


def event(name: tuple, measurements: dict, metadata: dict) -> tuple:
    return (EVENT, name, measurements, metadata)


def log(record: dict) -> tuple:
    return (LOG, record)


def hello_worker(token: str, pool: str, index: int, pid: int) -> tuple:
    return (WORKER, token, pool, index, pid)


def init(sys_path: list, cwd: str, store_paths: dict, setup: tuple, max_rss: int | None) -> tuple:
    return (INIT, sys_path, cwd, store_paths, setup, max_rss)


def over_rss(rss: int) -> tuple:
    return (OVER_RSS, rss)


def setup_failed(type_name: str, message: str, traceback_text: str) -> tuple:
    return (SETUP_FAILED, type_name, message, traceback_text)


def pool_up(token: str, pool: str, pid: int) -> tuple:
    return (POOL_UP, token, pool, pid)


def pool_down(token: str, pool: str, pid: int) -> tuple:
    return (POOL_DOWN, token, pool, pid)


def exit_report(token: str, pool: str, index: int, pid: int, exitcode: int, fault: str) -> tuple:
    return (EXIT, token, pool, index, pid, exitcode, fault)


def runner(token: str, pool: str, path: str) -> tuple:
    return (RUNNER, token, pool, path)


def joined(count: int, down: str | None) -> tuple:
    return (JOINED, count, down)


def join(path: str) -> tuple:
    return (JOIN, path)


def result_problem(results, n: int) -> str | None:
    """What is wrong with a batch function's ``results`` for ``n`` payloads (None: nothing).
    The one rule, applied in the worker and by executors in the caller."""
    if not isinstance(results, list):
        return f"batch function returned {type(results).__name__}, expected a list"
    if len(results) != n:
        return f"batch function returned {len(results)} results for {n} items"
    return None


# -- stores ------------------------------------------------------------------------


def put(table: str, key: bytes, value: bytes) -> tuple:
    return ("put", table, key, value)


def bulk(table: str, rows: list) -> tuple:
    return ("bulk", table, rows)


def delete(table: str, key: bytes) -> tuple:
    return ("delete", table, key)


def update(table: str, key: bytes, raw_key, fn_blob: bytes) -> tuple:
    return ("update", table, key, raw_key, fn_blob)


RELOAD = ("reload",)
PING = ("ping",)
SUBSCRIBE = ("subscribe",)
ACK = ("ack",)
SYNCED = ("ready",)  # a replica has the snapshot and every change before it
END = ("end",)


def snap(names: list) -> tuple:
    return ("snap", names)


def rows(name: bytes, rows: list) -> tuple:
    return ("rows", name, rows)


def chg(changes: list) -> tuple:
    return ("chg", changes)


def ensure(name: str, address: tuple) -> tuple:
    return ("ensure", name, address)


def store_ok(value=None) -> tuple:
    return (OK, value)


def store_err(code: str, message: str) -> tuple:
    return (ERR, code, message)
