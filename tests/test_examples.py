"""The shipped examples pass their own checks; their batch functions behave under faults.

Uses slither.testing (fault injection) and the plugin's slither_runtime
fixture as a user would on their own pipelines.
"""

import importlib.util

import pytest

import slither
from slither.cli import main
from slither.examples import batch_stats, data_etl, text_analysis
from slither.testing import crash_when, once_per

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


@pytest.mark.slither(pools={"default": {"size": 2, "max_restarts": 50}}, stores=[text_analysis.StopwordStore])
def test_text_pipe_survives_worker_crashes_with_retry(tmp_path, slither_runtime):
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
    out = slither_runtime.run_pipe(FlakyText, docs)
    ids = [i.id for v in out.values() for i in v]
    assert len(ids) == len(set(ids)) == 600 and not out.skipped


def test_cli_prints_a_table_and_writes_json_in_the_documented_shape(tmp_path):
    """A real `slither` subprocess: the table names each baseline's real thread count, and
    --json holds the same figures."""
    import json
    import subprocess
    import sys

    path = tmp_path / "figures.json"
    p = subprocess.run(
        [sys.executable, "-m", "slither.cli", "example", "data_etl", "--workers", "2", "--json", str(path)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    doc = json.loads(path.read_text())
    (ex,) = doc["examples"]
    assert ex["name"] == "data_etl" and ex["checks_passed"] is True and ex["slither_s"] > 0
    assert [(b["mode"], b["threads"], b["checks_passed"]) for b in ex["baselines"]] == [("unsafe", 2, True), ("safe", 2, True)]
    assert all(b["seconds"] > 0 for b in ex["baselines"])
    assert "comparison for data_etl" in p.stdout and "threads (safe), 2" in p.stdout
    safe = ex["baselines"][1]["seconds"] / ex["slither_s"]
    assert f"{safe:.2f}x faster" in p.stdout or f"{1 / safe:.2f}x slower" in p.stdout
    assert "summary, slither against safe threads: data_etl" in p.stdout


def test_a_segfaulting_batch_costs_slither_one_batch_and_the_threaded_process_everything(slither_runtime):
    from slither.examples._common import Checks

    checks = Checks("isolation")
    ours, theirs = batch_stats._fault_isolation(slither_runtime, checks)
    assert checks.passed, checks.results
    assert "cost 10 of" in ours and "SIGSEGV" in ours
    assert "killed by SIGSEGV" in theirs


def test_ml_scoring_prints_state_isolation_as_findings():
    pytest.importorskip("sklearn")
    from slither.examples import ml_scoring

    unsafe = ml_scoring.baseline("unsafe")
    assert unsafe.threads == 2 and len(unsafe.findings) == 1
    assert unsafe.findings[0].startswith("state isolation, threads sharing one model slot")


def test_examples_show_a_progress_bar_when_stderr_is_a_terminal(monkeypatch, capsys):
    pytest.importorskip("tqdm")
    import slither.cli

    monkeypatch.setattr(slither.cli, "progress_wanted", lambda: True)
    assert main(["example", "data_etl", "--no-baseline"]) == 0
    err = capsys.readouterr().err
    assert "item" in err and "/" in err  # tqdm's "n/total [..., item/s]"
