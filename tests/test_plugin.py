"""The pytest plugin (pytest_slither) and slither.testing's Faults and PipeMachine, as users adopt them.

The plugin's own fixtures are used here, as a user's suite would, and inner
pytest sessions run in real subprocesses (pytester) for what needs a fresh session.
"""

import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import run_state_machine_as_test

import slither
from slither.testing import Faults, InjectedFault, PipeMachine

pytestmark = pytest.mark.timeout(240)
pytest_plugins = ["pytester"]
HERE = os.path.dirname(__file__)


def double(xs):
    return [2 * x for x in xs]


def test_importing_the_plugin_imports_neither_slither_nor_thespian():
    code = "import sys, pytest_slither; bad = [m for m in ('slither', 'thespian') if m in sys.modules]; print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.slither(pools={"default": 3})
def test_the_marker_configures_slither_runtime(slither_runtime):
    assert len(slither_runtime.worker_pids()) == 3
    assert [i.payload for i in slither_runtime.dispatch([1, 2, 3], double, batch_size=1)] == [2, 4, 6]


@pytest.mark.slither(pools={"default": {"size": 2, "max_restarts": 100, "max_seconds": 1.0}})
def test_faults_driven_by_hypothesis_never_lose_an_item_under_retry(slither_runtime, slither_faults):
    @settings(max_examples=8, deadline=None)
    @given(xs=st.lists(st.integers(-100, 100), max_size=40), plan=slither_faults.schedules(max_batches=8))
    def check(xs, plan):
        slither_faults.reset().schedule(plan)
        retry = slither.Retry(max_attempts=len(plan) + 1, backoff=0.0)
        out = slither_runtime.dispatch(xs, slither_faults.wrap(double), batch_size=4, on_error=retry)
        assert [i.payload for i in out] == [2 * x for x in xs]
        assert {n for n, _ in slither_faults.fired} <= set(plan)

    check()


def test_an_armed_fault_hits_exactly_the_next_batch(rt):
    with Faults() as faults:
        faults.arm("raise")
        out = rt.dispatch(list(range(8)), faults.wrap(double), batch_size=4, on_error="skip", max_in_flight=1)
        skipped = [k for k, i in enumerate(out) if i.meta.get("skipped")]
        assert skipped == [0, 1, 2, 3]
        assert faults.fired == [(0, "raise")] and faults.batches_started == 2
        assert "InjectedFault" in str(out[0].meta["error"])
        with pytest.raises(ValueError, match="unknown fault kind 'explode'"):
            faults.arm("explode")


def test_a_scheduled_kill_and_segfault_cost_one_batch_each(rt):
    with Faults() as faults:
        faults.schedule({1: "kill", 3: "segfault"})
        out = rt.dispatch(
            list(range(20)), faults.wrap("tests.test_plugin:double"), batch_size=4, on_error="skip", max_in_flight=1
        )
        lost = sorted({k // 4 for k, i in enumerate(out) if i.meta.get("skipped")})
        assert lost == [1, 3]
        signals = {out[4 * b].meta["error"].signal.name for b in lost}
        assert signals == {"SIGKILL", "SIGSEGV"}
        assert [i.payload for i in out if not i.meta.get("skipped")] == [
            2 * x for x in (*range(4), *range(8, 12), *range(16, 20))
        ]


def test_injected_fault_is_an_exception_users_can_name():
    assert issubclass(InjectedFault, RuntimeError)


# -- PipeMachine ----------------------------------------------------------------------------------

sys.path.insert(0, HERE)  # pipes_under_test must be importable by the workers, as a user's module is
from pipes_under_test import BuggyPipe, ScorePipe  # noqa: E402

TestScorePipe = PipeMachine.for_pipe(ScorePipe, payloads=st.integers(-50, 50), max_examples=4, steps=5).TestCase


def test_pipe_machine_finds_a_pipe_that_halts_without_any_fault():
    machine = PipeMachine.for_pipe(BuggyPipe, payloads=st.integers(-5, 5), faults=(), max_examples=20, steps=3)
    with pytest.raises(slither.PipeError, match="negative payload"):
        run_state_machine_as_test(machine, settings=machine.TestCase.settings)


def test_pipe_machine_rejects_what_it_cannot_run():
    with pytest.raises(TypeError, match="slither.Pipe subclass"):
        PipeMachine.for_pipe(object, payloads=st.integers())
    with pytest.raises(TypeError, match="hypothesis strategy"):
        PipeMachine.for_pipe(ScorePipe, payloads=[1, 2])
    with pytest.raises(ValueError, match="hang"):
        PipeMachine.for_pipe(ScorePipe, payloads=st.integers(), faults=("hang",))


# -- inner sessions: chaos and the leak check --------------------------------------------------------

CHAOS_TEST = """
import time
import pytest
import slither

def slow_double(xs):
    time.sleep(0.01)
    return [2 * x for x in xs]

@pytest.mark.slither(pools={"default": {"size": 2, "max_restarts": 1000, "max_seconds": 1.0}})
def test_survives_chaos(slither_runtime):
    xs = list(range(600))
    out = slither_runtime.dispatch(xs, slow_double, batch_size=2, on_error=slither.Retry(max_attempts=50, backoff=0.0))
    assert [i.payload for i in out] == [2 * x for x in xs]
"""


def test_chaos_kills_workers_of_marked_tests_and_a_retrying_test_still_passes(pytester):
    pytester.makepyfile(test_chaos_inner=CHAOS_TEST)
    xml = pytester.path / "out.xml"
    result = pytester.runpytest_subprocess("--slither-chaos=7", f"--junitxml={xml}", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*slither: chaos on (seed 7)*"])
    props = {p.get("name"): p.get("value") for p in ET.parse(xml).iter("property")}
    assert int(props["slither_chaos_kills"]) > 0


def test_without_the_option_nothing_is_killed(pytester):
    pytester.makepyfile(test_chaos_inner=CHAOS_TEST)
    xml = pytester.path / "out.xml"
    result = pytester.runpytest_subprocess(f"--junitxml={xml}", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert "slither_chaos_kills" not in xml.read_text()


def test_a_module_scoped_runtime_is_shared_and_stopped(pytester):
    pytester.makeini("[pytest]\nslither_runtime_scope = module\n")
    pytester.makepyfile(
        test_scope_inner="""
        seen = []

        def test_one(slither_runtime):
            seen.append(slither_runtime)

        def test_two(slither_runtime):
            assert seen == [slither_runtime] and slither_runtime.running
        """
    )
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=2)


def test_a_process_left_alive_is_reported():
    from slither.testing._plugin import Runtimes

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        runtimes = Runtimes()
        runtimes.get({"pools": {"default": 1}})
        runtimes._pids.add(sleeper.pid)  # as if the runtime had started it and it survived shutdown
        assert runtimes.close() == [sleeper.pid]
    finally:
        sleeper.kill()
        sleeper.wait()
