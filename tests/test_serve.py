"""`slither serve` and `slither status` as a user runs them: real subprocesses, signals,
an HTTP status endpoint, Prometheus metrics, a source that resumes after a restart."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from slither.testing import wait_pids_gone

pytestmark = pytest.mark.timeout(180)
HERE = os.path.dirname(__file__)
SLITHER = [sys.executable, "-m", "slither.cli"]


def _serve(tmp_path, *args, env=None):
    e = {**os.environ, "PYTHONPATH": HERE + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {})}
    e.setdefault("SERVE_OUT", str(tmp_path / "out.jsonl"))
    cmd = [*SLITHER, "serve", "servemod:ServePipe", "--sink", "servemod:write", "--workers", "2", "--status-port", "0", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e, cwd=str(tmp_path))
    for line in proc.stdout:
        m = re.search(r"status on (http://\S+)/status", line)
        if m:
            return proc, m.group(1)
    raise AssertionError(f"serve exited before its status line: {proc.wait()} {proc.stderr.read()}")


def _get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def _status_when(url, cond, timeout=60):
    """The service's /status once ``cond`` holds of it (read as the service reports it)."""
    deadline = time.monotonic() + timeout
    while True:
        st = json.loads(_get(url + "/status"))
        if cond(st):
            return st
        assert time.monotonic() < deadline, f"the service never got there: {st}"
        time.sleep(0.05)  # a scrape interval: the service's progress is what is awaited


def _communicate(proc, timeout):
    """communicate(), but a service that does not exit in time dumps its threads' stacks
    (SIGUSR1, faulthandler) into the failure."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)
        try:
            out, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        raise AssertionError(f"the service did not exit within {timeout}s; its threads:\n{err[-20000:]}") from None


def _outputs(tmp_path, name="out.jsonl"):
    with open(tmp_path / name) as f:
        return [json.loads(line) for line in f]


def _pids(st):
    return [st["runner_pid"], *(p for pool in st["pools"].values() for p in pool["worker_pids"])]


def test_sigterm_drains_every_item_to_the_sink_and_exits_0(tmp_path):
    proc, url = _serve(tmp_path, "--source", "servemod:endless")
    try:
        st = _status_when(url, lambda s: s["delivered"] >= 300)
        assert st["state"] == "running" and st["delivered"] >= 300
        assert set(st["stages"]) == {"tag", "double", "parity"} and st["stages"]["tag"]["per_second"] > 0
        assert all(isinstance(s["queued"], int) for s in st["stages"].values())
        assert st["pools"]["default"]["workers"] == 2 and st["runner_pid"] != proc.pid
        metrics = _get(url + "/metrics")
        status = subprocess.run([*SLITHER, "status", url], capture_output=True, text=True, timeout=30)
        pids = _pids(st)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    m = re.search(r"drained: (\d+) inputs submitted, (\d+) results delivered", out)
    assert m, out
    submitted, delivered = int(m.group(1)), int(m.group(2))
    got = _outputs(tmp_path)
    # Everything the source gave was delivered, once, to the right output.
    assert sorted(r["x"] for r in got) == list(range(submitted)) and delivered == submitted
    assert all(r["y"] == 2 * r["x"] and r["output"] == ("odd" if r["x"] % 2 else "default") for r in got)
    assert re.search(r'slither_pipe_stage_items_in_total\{pipe="ServePipe",stage="tag"\} [1-9]', metrics), metrics
    assert re.search(r'slither_batch_duration_seconds_count\{pipe="ServePipe",pool="default",stage="double"\} [1-9]', metrics)
    assert 'slither_pool_workers{pool="default"} 2.0' in metrics
    assert 'slither_pipe_stage_queued_chunks{pipe="ServePipe",stage="double"}' in metrics
    assert status.returncode == 0 and "stage tag" in status.stdout and "pool default" in status.stdout, status
    assert wait_pids_gone(pids, timeout=10) == []


def test_a_restarted_service_resumes_after_the_sources_last_acknowledged_position(tmp_path):
    ack = tmp_path / "ack"
    env = {"SERVE_ACK": str(ack)}
    proc, url = _serve(tmp_path, "--source", "servemod:resumable", env=env)
    try:
        st = _status_when(url, lambda s: ack.exists() and int(ack.read_text()) >= 300)
        pids = _pids(st)
        os.kill(proc.pid, signal.SIGKILL)  # no drain: what was in flight is lost to this run
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # The tree notices its caller died and stops itself.
    assert wait_pids_gone(pids, timeout=10) == []
    acked = int(ack.read_text())
    first = _outputs(tmp_path)
    assert set(range(acked + 1)) <= {r["x"] for r in first}  # acknowledged means delivered
    limit = acked + 400
    proc, url = _serve(
        tmp_path,
        "--source",
        "servemod:resumable",
        env={**env, "SERVE_LIMIT": str(limit), "SERVE_OUT": str(tmp_path / "again.jsonl")},
    )
    out, err = proc.communicate(timeout=120)  # the source ends: the service drains and exits
    assert proc.returncode == 0, err
    assert (tmp_path / "ack.starts").read_text().split() == ["0", str(acked + 1)]
    assert sorted(r["x"] for r in _outputs(tmp_path, "again.jsonl")) == list(range(acked + 1, limit))
    assert int(ack.read_text()) == limit - 1


def test_a_payload_that_cannot_be_pickled_reaches_the_sink_skipped_and_acks_go_past_it(tmp_path):
    ack = tmp_path / "ack"
    proc, url = _serve(tmp_path, "--source", "servemod:refusing", env={"SERVE_ACK": str(ack), "SERVE_LIMIT": "40"})
    out, err = proc.communicate(timeout=120)  # the source ends: drain, exit
    assert proc.returncode == 0, err
    got = _outputs(tmp_path)
    assert sorted(r["x"] for r in got if r["x"] is not None) == [x for x in range(40) if x != 5]
    assert [r for r in got if r["x"] is None] == [{"output": "skipped", "x": None, "error": "SerializationError"}]
    assert ack.read_text() == "39"  # the refused one ended too: nothing stalls the acknowledgements


def test_a_second_sigint_stops_a_drain_that_cannot_finish(tmp_path):
    proc, url = _serve(tmp_path, "--source", "servemod:stuck")
    try:
        st = _status_when(url, lambda s: s["submitted"] >= 11)  # payload -1 sticks in a handler
        pids = _pids(st)
        proc.send_signal(signal.SIGINT)
        for line in proc.stdout:  # the service says it drains
            if "draining" in line:
                break
        proc.send_signal(signal.SIGINT)
        out, err = _communicate(proc, 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, (out, err)
    assert "stopped:" in out
    assert wait_pids_gone(pids, timeout=10) == []


def test_bad_arguments_name_what_is_wrong(tmp_path):
    e = {**os.environ, "PYTHONPATH": HERE}
    run = lambda *a: subprocess.run([*SLITHER, "serve", *a], capture_output=True, text=True, env=e, timeout=60)  # noqa: E731
    r = run("servemod:Nope", "--source", "servemod:endless", "--sink", "servemod:write")
    assert r.returncode == 2 and "module 'servemod' has no 'Nope'" in r.stderr
    r = run("servemod:ServePipe", "--source", "servemod:endless", "--sink", "default=servemod:write")
    assert r.returncode == 2 and "no --sink for output(s) ['odd', 'skipped']" in r.stderr
    r = run("servemod:ServePipe", "--source", "servemod:endless", "--sink", "even=servemod:write")
    assert r.returncode == 2 and "has no output 'even'" in r.stderr
