"""The shipped examples pass their own checks; their batch functions behave under faults.

Uses slither.testing (fault injection and the no-leak runtime fixture) as a
user would on their own pipelines.
"""

import importlib.util

import pytest

import slither
from slither.cli import main
from slither.examples import batch_stats, data_etl, text_analysis
from slither.testing import crash_when, once_per, running_runtime

pytestmark = pytest.mark.timeout(300)

has = {m: importlib.util.find_spec(m) is not None for m in ("sklearn", "PIL", "numpy")}


@pytest.mark.parametrize("name", ["text_analysis", "batch_stats", "data_etl"])
def test_example_checks_pass(name, capsys):
    assert main(["example", name, "--no-baseline"]) == 0
    out = capsys.readouterr().out
    assert "check " in out and ": FAIL" not in out


@pytest.mark.skipif(not (has["sklearn"] and has["numpy"]), reason="needs the examples extra (scikit-learn)")
def test_ml_scoring_checks_pass(capsys):
    assert main(["example", "ml_scoring", "--no-baseline"]) == 0


@pytest.mark.skipif(not has["PIL"], reason="needs the examples extra (pillow)")
def test_image_pipeline_checks_pass(capsys):
    assert main(["example", "image_pipeline", "--no-baseline"]) == 0


def test_cli_lists_and_rejects(capsys):
    assert main(["example"]) == 0
    assert "text_analysis" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["example", "nope"])
    assert e.value.code == 2


def test_safe_baselines_pass_and_unsafe_run():
    assert text_analysis.baseline("safe", threads=4)
    assert data_etl.baseline("safe", threads=4)
    batch_stats.baseline("unsafe", threads=4)  # may lose updates; it must run to the end


def test_text_pipe_survives_worker_crashes_with_retry(tmp_path):
    """A user's pattern: wrap the pipe's batch function with injected crashes,
    retry, and check every document is accounted for exactly once."""
    flaky = once_per(str(tmp_path), crash_when, text_analysis.analyze_batch, lambda d: d["n"] % 97 == 1)

    class FlakyText(text_analysis.TextPipe):
        stages = [
            text_analysis.TextPipe.stages[0],
            slither.stage.pool("analyze", fn=flaky, batch_size=50),
            text_analysis.TextPipe.stages[2],
        ]
        on_error = {"analyze": slither.Retry(max_attempts=4, backoff=0)}

    docs = text_analysis.make_documents(600)
    with running_runtime(pools={"default": {"size": 2, "max_restarts": 50}}, stores=[text_analysis.StopwordStore]) as rt:
        out = rt.run_pipe(FlakyText, docs)
    ids = [i.id for v in out.values() for i in v]
    assert len(ids) == len(set(ids)) == 600 and not out.skipped
