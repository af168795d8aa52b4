"""What a user sees when a batch fails: the worker's frames (file, line, source) in the
printed traceback, and how a dead worker ended (signal or exit code)."""

import os
import signal
import subprocess
import sys
import textwrap
import traceback

import cloudpickle
import pytest

import slither
from slither import DispatchError, Pipe, PipeError, WorkerCrashed, stage
from slither.errors import RemoteTraceback

pytestmark = pytest.mark.timeout(60)

HERE = os.path.abspath(__file__)


def _printed(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


def _line_of(text: str) -> int:
    with open(HERE) as f:
        for n, line in enumerate(f, 1):
            if text in line and "_line_of" not in line:
                return n
    raise AssertionError(text)


def test_lambda_failure_prints_the_tests_file_line_and_source(rt):
    with pytest.raises(DispatchError) as ei:
        rt.dispatch([1, 0], lambda xs: [1 / x for x in xs])  # the lambda's line
    printed = _printed(ei.value)
    assert f'File "{HERE}", line {_line_of("# the lambda" + chr(39) + "s line")}' in printed
    assert "rt.dispatch([1, 0], lambda xs: [1 / x for x in xs])" in printed
    assert "ZeroDivisionError: division by zero" in printed
    assert "<dynamic-code>" not in printed


def test_closure_failure_prints_its_line(rt):
    divisor = 0

    def scale(xs):
        return [x / divisor for x in xs]  # the closure's line

    with pytest.raises(DispatchError) as ei:
        rt.dispatch([1, 2], scale)
    printed = _printed(ei.value)
    assert f"line {_line_of('# the closure' + chr(39) + 's line')}, in scale" in printed
    assert "return [x / divisor for x in xs]" in printed


def test_named_function_failure_prints_its_module_file(rt):
    with pytest.raises(DispatchError) as ei:
        rt.dispatch([1, 0], "fnmod:invert")
    printed = _printed(ei.value)
    assert os.path.join(os.path.dirname(HERE), "fnmod.py") in printed
    assert "return [1 / x for x in xs]" in printed


def test_worker_error_cause_is_the_remote_traceback(rt):
    with pytest.raises(DispatchError) as ei:
        rt.dispatch([0], lambda xs: [1 // x for x in xs])
    reason = ei.value.reason
    assert ei.value.__cause__ is reason
    assert isinstance(reason.__cause__, RemoteTraceback)
    assert str(reason.__cause__) == reason.remote_traceback
    assert reason.remote_type == "ZeroDivisionError" and reason.remote_message == "integer division or modulo by zero"
    assert "_run_one" not in reason.remote_traceback  # starts at the user's frames


def test_worker_error_keeps_its_cause_through_pickling():
    err = slither.WorkerError("KeyError", "'k'", "Traceback (most recent call last):\n  boom\n")
    back = cloudpickle.loads(cloudpickle.dumps(err))
    assert isinstance(back.__cause__, RemoteTraceback) and str(back.__cause__) == err.remote_traceback


def test_function_pickles_keep_their_file_name():
    from slither import _pickle

    def f():
        return 1

    assert cloudpickle.loads(_pickle.dumps_code(f)).__code__.co_filename == HERE


def test_exit_code_is_named(rt):
    out = rt.dispatch([1], lambda xs: os._exit(3), on_error="skip")
    err = out[0].meta["error"]
    assert isinstance(err, WorkerCrashed)
    assert err.exitcode == 3 and err.signal is None
    assert f"worker {err.pid} of pool 'default' exited with code 3" in str(err)


def test_signal_is_named(rt):
    out = rt.dispatch([1], lambda xs: os.kill(os.getpid(), signal.SIGKILL), on_error="skip")
    err = out[0].meta["error"]
    assert err.exitcode == -signal.SIGKILL and err.signal == signal.SIGKILL
    assert f"worker {err.pid} of pool 'default' was killed by SIGKILL" in str(err)


def test_pipe_inline_failure_prints_the_handlers_line(rt):
    class Inline(Pipe):
        stages = [stage.inline("div", handler=lambda item, ctx: 10 // item.payload)]  # the handler's line

    with pytest.raises(PipeError) as ei:
        rt.run_pipe(Inline, [0])
    printed = _printed(ei.value)
    assert f'File "{HERE}", line {_line_of("# the handler" + chr(39) + "s line")}' in printed
    assert "10 // item.payload" in printed


def test_pipe_pool_stage_failure_prints_the_workers_frames(rt):
    class Pooled(Pipe):
        stages = [stage.pool("div", fn=lambda xs: [10 // x for x in xs])]  # the pool fn's line

    with pytest.raises(PipeError) as ei:
        rt.run_pipe(Pooled, [0])
    printed = _printed(ei.value)
    assert "RemoteTraceback" in printed
    assert f'File "{HERE}", line {_line_of("# the pool fn" + chr(39) + "s line")}' in printed


@pytest.mark.timeout(90)
def test_uncaught_failure_in_a_script_names_the_script(tmp_path):
    script = tmp_path / "divide.py"
    script.write_text(
        textwrap.dedent(
            """\
            import slither

            with slither.Runtime(pools={"default": 1}) as rt:
                rt.dispatch([1, 0], lambda xs: [1 / x for x in xs])
            """
        )
    )
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=80, cwd=tmp_path)
    assert proc.returncode == 1
    assert f'File "{script}", line 4, in <lambda>' in proc.stderr
    assert "rt.dispatch([1, 0], lambda xs: [1 / x for x in xs])" in proc.stderr
    assert "slither.errors.DispatchError" in proc.stderr
