"""Workers behave like ordinary Python processes: real crashes are crashes, user
exceptions are errors, batches run on the main thread, logging reaches the caller,
classes defined late travel, and nested use never starts a hidden runtime."""

import dataclasses
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import types

import pytest

import slither
from slither import DispatchError, Retry, SerializationError, WorkerCrashed, WorkerError
from slither.testing import Rendezvous

pytestmark = pytest.mark.timeout(60)

HERE = os.path.abspath(__file__)


def _skipped_error(rt, fn, **opts):
    out = rt.dispatch([1], fn, on_error="skip", **opts)
    assert out[0].meta.get("skipped"), out
    return out[0].meta["error"]


# -- crashes are crashes ----------------------------------------------------------


@pytest.mark.chaos
def test_real_segfault_is_a_crash_naming_the_signal_with_the_fault_dump(rt):
    err = _skipped_error(rt, lambda xs: [__import__("ctypes").string_at(0)], timeout=None)  # the segfault
    assert isinstance(err, WorkerCrashed) and err.signal == signal.SIGSEGV
    assert "killed by SIGSEGV" in str(err)
    assert "Segmentation fault" in err.fault
    assert HERE in err.fault  # faulthandler's stack names the user's frame
    assert str(err.__cause__) == err.fault


@pytest.mark.chaos
def test_abort_is_a_crash(rt):
    err = _skipped_error(rt, lambda xs: os.abort())
    assert isinstance(err, WorkerCrashed) and err.signal == signal.SIGABRT and "Aborted" in err.fault


@pytest.mark.chaos
def test_sigsegv_raised_inside_a_batch_is_not_swallowed(rt):
    err = _skipped_error(rt, lambda xs: os.kill(os.getpid(), signal.SIGSEGV) or xs)
    assert isinstance(err, WorkerCrashed) and err.signal == signal.SIGSEGV


@pytest.mark.chaos
@pytest.mark.parametrize("sig", [signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE])
def test_fatal_signal_sent_to_a_worker_is_a_crash(rt, sig):
    with Rendezvous() as rv:

        def held(xs, rv=rv):
            rv.arrive(os.getpid(), wait=True)
            return xs

        result = {}
        t = threading.Thread(target=lambda: result.setdefault("out", rt.dispatch([1], held, on_error="skip", timeout=None)))
        t.start()
        pid = rv.wait(timeout=20)
        os.kill(pid, sig)
        t.join(30)
    err = result["out"][0].meta["error"]
    assert isinstance(err, WorkerCrashed) and err.signal == sig and err.pid == pid


@pytest.mark.parametrize("raiser", [lambda xs: sys.exit(3), lambda xs: (_ for _ in ()).throw(KeyboardInterrupt())])
def test_system_exit_and_keyboard_interrupt_fail_the_batch_and_the_worker_lives(rt, raiser):
    crashes = rt.pool().crashes
    err = _skipped_error(rt, raiser)
    assert isinstance(err, WorkerError) and err.remote_type in ("SystemExit", "KeyboardInterrupt")
    assert rt.pool().crashes == crashes


# -- an ordinary process --------------------------------------------------------


def test_batches_run_on_the_main_thread_and_may_install_signal_handlers(rt):
    def fn(xs):
        previous = signal.signal(signal.SIGALRM, lambda *a: None)
        signal.signal(signal.SIGALRM, previous)
        return [threading.current_thread() is threading.main_thread() for _ in xs]

    assert [i.payload for i in rt.dispatch([1, 2], fn, batch_size=1)] == [True, True]


def test_worker_logging_reaches_the_callers_logger(rt):
    got = []
    handler = logging.Handler()
    handler.emit = got.append
    lg = logging.getLogger("slither_test.worker_logs")
    lg.addHandler(handler)
    try:

        def fn(xs):
            logging.getLogger("slither_test.worker_logs").warning("scored %d items", len(xs))
            return [os.getpid() for _ in xs]

        pid = rt.dispatch([1, 2, 3], fn)[0].payload
    finally:
        lg.removeHandler(handler)
    assert [(r.name, r.levelno, r.getMessage()) for r in got] == [("slither_test.worker_logs", logging.WARNING, "scored 3 items")]
    assert got[0].process == pid and got[0].processName.startswith("slither-worker:default:")


def test_logging_can_be_configured_inside_a_worker(rt, tmp_path):
    path = str(tmp_path / "worker.log")

    def fn(xs, path=path):
        import logging.config

        logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})
        logging.basicConfig(force=True, filename=path, level=logging.INFO, format="%(levelname)s %(message)s")
        logging.getLogger("configured").info("hello from %d", os.getpid())
        logging.basicConfig(force=True)  # leave the worker as it was for the other tests
        return xs

    rt.dispatch([1], fn)
    with open(path) as f:
        assert f.read().startswith("INFO hello from ")


def test_thespians_own_log_lines_never_reach_the_users_root_logger(tmp_path):
    script = tmp_path / "logs.py"
    script.write_text(
        textwrap.dedent(
            """\
            import logging
            logging.basicConfig(level=logging.DEBUG, format="LOG %(name)s %(message)s")
            import slither
            with slither.Runtime(pools={"default": 1}) as rt:
                logging.info("mine")
            """
        )
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "LOG root mine" in proc.stderr
    assert "Actor System" not in proc.stderr and "Thespian" not in proc.stderr


# -- classes defined after the runtime started -----------------------------------


def test_a_class_defined_in_main_after_start_travels_both_ways(rt):
    main = sys.modules["__main__"]
    Point = dataclasses.make_dataclass("SlitherLatePoint", [("x", int), ("y", int)])
    Point.__module__ = "__main__"
    main.SlitherLatePoint = Point
    try:
        out = rt.dispatch([Point(1, -2), Point(3, 4)], lambda ps: [Point(p.y, p.x) for p in ps], batch_size=1)
    finally:
        delattr(main, "SlitherLatePoint")
    assert [i.payload for i in out] == [Point(-2, 1), Point(4, 3)]


def test_a_local_class_travels(rt):
    @dataclasses.dataclass
    class Local:
        v: int

    assert [i.payload.v for i in rt.dispatch([Local(1)], lambda xs: [Local(x.v + 1) for x in xs])] == [2]


@pytest.fixture
def ghost_class():
    """A class of a module that exists in this process only (so not in any worker)."""
    mod = types.ModuleType("slither_test_ghostmod")

    class Ghost:
        pass

    Ghost.__module__ = mod.__name__
    Ghost.__qualname__ = "Ghost"
    mod.Ghost = Ghost
    sys.modules[mod.__name__] = mod
    yield Ghost
    del sys.modules[mod.__name__]


def test_an_unloadable_payload_fails_only_its_batch_naming_its_position(rt, ghost_class):
    crashes = rt.pool().crashes
    items = [0, 1, 2, 3, 4, ghost_class(), 6, 7, 8, 9]
    out = rt.dispatch(items, lambda xs: xs, batch_size=2, on_error=Retry(3, backoff=0, then="skip"))
    skipped = [k for k, i in enumerate(out) if i.meta.get("skipped")]
    assert skipped == [4, 5]
    err = out[5].meta["error"]
    assert isinstance(err, SerializationError) and err.position == 5 and err.item_id == out[5].id
    assert "position 5" in str(err) and "slither_test_ghostmod.Ghost" in str(err)
    assert out[5].meta["attempts"] == 1  # not retried: it cannot succeed
    assert [i.payload for i in out if not i.meta.get("skipped")] == [0, 1, 2, 3, 6, 7, 8, 9]
    assert rt.pool().crashes == crashes and rt.pool().down is None


def test_a_result_the_caller_cannot_unpickle_fails_only_its_batch(rt):
    def fn(xs):
        mod = types.ModuleType("slither_test_worker_only")
        cls = type("OnlyHere", (), {"__module__": mod.__name__})
        mod.OnlyHere = cls
        sys.modules[mod.__name__] = mod
        return [cls() if x == 1 else x for x in xs]

    crashes = rt.pool().crashes
    out = rt.dispatch([0, 1, 2, 3], fn, batch_size=2, on_error="skip")
    assert [i.meta.get("skipped", False) for i in out] == [True, True, False, False]
    assert isinstance(out[0].meta["error"], SerializationError) and "unpickled in the caller" in str(out[0].meta["error"])
    assert rt.pool().crashes == crashes


@pytest.mark.timeout(90)
def test_notebook_order_in_a_real_main_module(tmp_path):
    script = tmp_path / "notebook.py"
    script.write_text(
        textwrap.dedent(
            """\
            import slither
            rt = slither.Runtime(pools={"default": 2}).start()
            from dataclasses import dataclass

            @dataclass
            class Point:
                x: int
                y: int

            out = rt.dispatch([Point(1, -2)] * 10, lambda ps: [Point(p.y, p.x) for p in ps], batch_size=3)
            print([i.payload for i in out] == [Point(-2, 1)] * 10)
            rt.shutdown()
            """
        )
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=80)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True"


# -- nested use -----------------------------------------------------------------


def test_top_level_functions_use_the_runtime_of_the_with_block():
    from slither._runtime import current as _runtime

    assert _runtime._default is None
    with slither.Runtime(pools={"default": 1}) as rt:
        assert slither.runtime() is rt
        assert [i.payload for i in slither.dispatch([1, 2], lambda xs: [x * 10 for x in xs])] == [10, 20]
    assert _runtime._default is None  # no hidden default runtime was started


def test_dispatch_inside_a_worker_raises_a_clear_error(rt):
    with pytest.raises(DispatchError) as ei:
        rt.dispatch([1], lambda xs: slither.dispatch(xs, lambda ys: ys))
    reason = ei.value.reason
    assert reason.remote_type == "RuntimeError" and "inside worker" in reason.remote_message
    assert "does not start a hidden one" in reason.remote_message


def test_an_in_process_runtime_leaves_the_callers_logging_alone():
    root = logging.getLogger()
    handler = logging.NullHandler()
    root.addHandler(handler)
    level = root.level
    try:
        rt = slither.Runtime(pools={"default": 1}, base="simpleSystemBase").start()
        rt.shutdown()
        assert root.level == level and handler in root.handlers
    finally:
        root.removeHandler(handler)
