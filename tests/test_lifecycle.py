"""Runtime lifecycle: start, two runtimes at once, shutdown, exits without shutdown."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

import slither
from slither.supervision import pid_alive
from slither.testing import running_runtime, wait_pids_gone

pytestmark = pytest.mark.timeout(60)


def test_two_runtimes_coexist_and_shut_down_cleanly():
    with running_runtime(pools={"default": 1}) as a, running_runtime(pools={"default": 1}) as b:
        assert set(a.pids()).isdisjoint(b.pids())
        assert a._asys is not b._asys and a._dir != b._dir
        pa = a.dispatch([1], lambda xs: [os.getpid()])[0].payload
        pb = b.dispatch([1], lambda xs: [os.getpid()])[0].payload
        assert pa in a.worker_pids() and pb in b.worker_pids() and pa != pb
        pids = a.pids() + b.pids()
    assert not wait_pids_gone(pids, timeout=5)


def test_shutdown_fails_pending_calls_and_rejects_new():
    rt = slither.Runtime(pools={"default": 1}).start()
    rt.shutdown()
    with pytest.raises(slither.errors.RuntimeNotStarted):
        rt.dispatch([1], lambda xs: xs)
    with pytest.raises(slither.errors.RuntimeNotStarted):
        rt.start()
    rt.shutdown()  # idempotent


def test_default_runtime_functions():
    try:
        rt = slither.start(pools={"default": 1})
        assert slither.runtime() is rt
        assert [i.payload for i in slither.dispatch([1, 2], lambda xs: [x * 5 for x in xs])] == [5, 10]
        with pytest.raises(RuntimeError, match="already running"):
            slither.start()
        pids = rt.pids()
    finally:
        slither.shutdown()
    assert not wait_pids_gone(pids)


SCRIPT = textwrap.dedent(
    """
    import os, sys, slither
    rt = slither.Runtime(pools={"default": 2}).start()
    rt.dispatch([1, 2, 3], lambda xs: xs)
    print(" ".join(map(str, rt.pids())), flush=True)
    print(rt._dir, flush=True)
    mode = sys.argv[1]
    if mode == "exit":
        sys.exit(0)          # no shutdown(): atexit must clean up
    elif mode == "hang":
        sys.stdin.read()     # wait to be killed
    """
)


@pytest.mark.chaos
@pytest.mark.parametrize("mode, sig", [("exit", None), ("hang", signal.SIGTERM), ("hang", signal.SIGKILL)])
def test_no_orphans_when_the_caller_goes_away(mode, sig, tmp_path):
    script = tmp_path / "prog.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    p = subprocess.Popen([sys.executable, str(script), mode], stdout=subprocess.PIPE, stdin=subprocess.PIPE, env=env, text=True)
    pids = [int(x) for x in p.stdout.readline().split()]
    private = p.stdout.readline().strip()
    assert os.path.isdir(private)
    assert len(pids) >= 5  # admin, logger, root, pool supervisor, 2 workers
    assert all(pid_alive(x) for x in pids)
    if sig is not None:
        p.send_signal(sig)
    p.wait(30)
    p.stdout.close()
    p.stdin.close()
    assert not wait_pids_gone(pids, timeout=10), "the runtime's processes outlived their caller"
    assert not os.path.exists(private), "the runtime's private directory (sockets, ephemeral stores) was left behind"


def test_named_pools_are_separate():
    with running_runtime(pools={"a": 1, "b": 2}) as rt:
        assert len(rt.worker_pids("a")) == 1 and len(rt.worker_pids("b")) == 2
        assert rt.dispatch([1], lambda xs: xs, pool="b")[0].payload == 1
        with pytest.raises(slither.ConfigurationError, match="unknown pool 'c'"):
            rt.dispatch([1], lambda xs: xs, pool="c")


def test_in_process_debug_mode_runs_dispatch_and_stores():
    class Mem(slither.Store):
        tables = [slither.Table("t")]

        def load(self, tables):
            tables["t"].put("k", 1)

    rt = slither.Runtime(pools={"default": 1}, stores=[Mem], base="simpleSystemBase").start()
    try:
        assert [i.payload for i in rt.dispatch([1, 2], lambda xs: [x + 1 for x in xs])] == [2, 3]
        Mem.put("t", "j", 2)
        assert Mem.get("t", "k") == 1 and Mem.get("t", "j") == 2
        assert rt.dispatch(["j"], lambda ks: [Mem.get("t", k) for k in ks])[0].payload == 2
    finally:
        rt.shutdown()


@pytest.mark.timeout(60)
def test_no_hub_thread_outlives_its_runtime():
    import threading

    before = set(threading.enumerate())
    with slither.Runtime(pools={"default": 1}) as rt:
        started = [t for t in threading.enumerate() if t not in before and t.name.startswith("slither-hub")]
        assert started and rt.running
    for t in started:
        t.join(10)  # blocked in accept() on a closed socket, they would wait forever
    assert not [t.name for t in started if t.is_alive()]
