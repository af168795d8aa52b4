"""The shipped examples pass their own checks; their batch functions behave under faults.

Uses slither.testing (fault injection) and the plugin's slither_runtime
fixture as a user would on their own pipelines.
"""

import importlib.util
from array import array

import pytest
from hypothesis import given
from hypothesis import strategies as st

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


def test_a_batch_holding_poison_fails_before_computing_anything(monkeypatch):
    """Its healthy datasets are re-dispatched one by one after it: computed once in all."""
    computed = []
    real = batch_stats.dataset_stats
    monkeypatch.setattr(batch_stats, "dataset_stats", lambda values: computed.append(values) or real(values))
    monkeypatch.setattr(batch_stats, "_acc", batch_stats.Welford())
    healthy = {"id": 0, "kind": "large", "values": array("d", [1.0, 2.0, 4.0])}
    for k, poison in enumerate(([1.0, None], [1.0, "NaN", 2.0], [])):
        with pytest.raises((TypeError, ValueError)):
            batch_stats.stats_batch([healthy, {"id": k + 1, "kind": "poison", "values": poison}])
    assert computed == [] and batch_stats._acc.n == 0
    (out,) = batch_stats.stats_batch([healthy])
    assert out["n"] == 3 and batch_stats._acc.n == 3


@given(st.lists(st.one_of(st.floats(-1e6, 1e6), st.integers(-(10**6), 10**6), st.none(), st.booleans(), st.text(max_size=3))))
def test_the_up_front_check_rejects_exactly_what_the_statistics_reject(values):
    def raises(fn, arg):
        try:
            fn(arg)
        except (TypeError, ValueError):
            return True
        return False

    assert raises(batch_stats.check_dataset, values) == raises(batch_stats.dataset_stats, values)
    floats = [float(v) for v in values if type(v) in (int, float)]
    assert raises(batch_stats.check_dataset, array("d", floats)) == (not floats)


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
