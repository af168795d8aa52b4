"""Soak a served pipe: ``slither serve`` under a steady stream while its workers and its
runner are SIGKILLed on a schedule, checking what a service that runs for days needs.

::

    report = soak(seconds=600, worker_kill_every=1.0, runner_kill_every=60.0)
    report.check()          # AssertionError naming what went wrong

It starts ``slither serve slither.testing.soak:SoakPipe`` (inline, then a pool stage
under Retry, then a router) as a subprocess on an endless source, kills only the
processes that service reports as its own (by pid), then stops it with SIGTERM and
reads what reached the sink. ``check()`` asserts:

* every input the service submitted reached the sink exactly once;
* the resident memory of each long-lived process (the service, and each process of
  its tree that lived through the run) grew by less than ``rss_growth_mb`` after the
  warm-up, and the service's open file descriptors and threads did not grow;
* the service exited 0 after its drain.

``bench/soak_serve.py`` runs the ten-minute version and prints throughput per minute;
``tests/test_soak.py`` runs a few seconds of it in the suite.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

import attrs

import slither
from slither import stage


def _tag(item, ctx):
    return {"x": item.payload}


def _work(xs):
    return [{**x, "y": 3 * x["x"]} for x in xs]


class SoakPipe(slither.Pipe):
    """inline → pool (Retry: a killed worker costs a retry, never an item) → router."""

    stages = [
        stage.inline("tag", handler=_tag),
        stage.pool("work", fn="slither.testing.soak:_work", batch_size=16),
        stage.router("parity", routes=[(lambda i: i.payload["x"] % 2, "odd")]),
    ]
    outputs = ["odd"]
    on_error = {"work": slither.Retry(max_attempts=20, backoff=0.0)}


def numbers():
    """The soak's source: 0, 1, 2, ... until the service is stopped."""
    return itertools.count()


_out = None


def record(name, item):
    """The soak's sink: one line per item, the input it came from, in SOAK_OUT."""
    global _out
    if _out is None:
        _out = open(os.environ["SOAK_OUT"], "a", buffering=1 << 16)
    _out.write(f"{item.payload['x']}\n")


def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _count(path: str) -> int | None:
    try:
        return len(os.listdir(path))
    except OSError:
        return None


@attrs.define
class SoakReport:
    """What one :func:`soak` measured: inputs, kills, results per minute, what went missing
    or came twice, and the growth of memory, descriptors and threads."""

    seconds: float
    submitted: int = 0
    delivered: int = 0
    exit_code: int | None = None
    missing: int = 0
    duplicates: int = 0
    worker_kills: int = 0
    runner_kills: int = 0
    per_minute: list = attrs.field(factory=list)  # results delivered in each minute (or each sample, if shorter)
    rss_growth_mb: dict = attrs.field(factory=dict)  # process -> MB grown after warm-up
    fds: tuple = (0, 0)  # the service's open descriptors: after warm-up, at the end
    threads: tuple = (0, 0)
    stderr: str = ""

    def check(self, rss_growth_mb: float = 20.0) -> None:
        """Raise AssertionError naming every promise the run broke (see the module docstring)."""
        problems = []
        if self.exit_code != 0:
            problems.append(f"the service exited {self.exit_code}: {self.stderr[-2000:]}")
        if self.missing or self.duplicates:
            problems.append(f"{self.missing} inputs never reached the sink, {self.duplicates} reached it twice")
        grown = {k: v for k, v in self.rss_growth_mb.items() if v >= rss_growth_mb}
        if grown:
            problems.append(f"resident memory grew by {rss_growth_mb} MB or more after warm-up: {grown}")
        if self.fds[1] > self.fds[0] + 4:
            problems.append(f"the service's file descriptors grew from {self.fds[0]} to {self.fds[1]}")
        if self.threads[1] > self.threads[0] + 2:
            problems.append(f"the service's threads grew from {self.threads[0]} to {self.threads[1]}")
        assert not problems, "; ".join(problems)


def _status(url: str) -> dict:
    with urllib.request.urlopen(url + "/status", timeout=10) as r:
        return json.loads(r.read())


def soak(
    seconds: float = 600.0,
    *,
    workers: int = 2,
    worker_kill_every: float = 1.0,
    runner_kill_every: float = 60.0,
    warm_up: float | None = None,
    minute: float = 60.0,
    seed: int = 0,
) -> SoakReport:
    """Run the soak (see the module docstring) and return what it measured."""
    rng = random.Random(seed)
    warm_up = min(30.0, seconds / 5) if warm_up is None else warm_up
    report = SoakReport(seconds)
    with tempfile.TemporaryDirectory(prefix="slither-soak-") as d:
        out = os.path.join(d, "sink.txt")
        env = {**os.environ, "SOAK_OUT": out}
        cmd = [sys.executable, "-m", "slither.cli", "serve", "slither.testing.soak:SoakPipe"]
        cmd += ["--source", "slither.testing.soak:numbers", "--sink", "slither.testing.soak:record"]
        cmd += ["--workers", str(workers), "--pool-restart", "100000,1", "--restart", "100000,1", "--status-port", "0"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=d)
        try:
            url = None
            for line in proc.stdout:
                m = re.search(r"status on (http://\S+)/status", line)
                if m:
                    url = m.group(1)
                    break
            if url is None:
                raise AssertionError(f"the service did not start: {proc.wait()} {proc.stderr.read()}")
            t0 = time.monotonic()
            next_worker, next_runner, next_minute = t0 + worker_kill_every, t0 + runner_kill_every, t0 + minute
            warm: dict = {}
            last_delivered = 0
            while True:
                now = time.monotonic()
                if now - t0 >= seconds:
                    break
                time.sleep(max(0.0, min(next_worker, next_runner, next_minute, t0 + seconds) - now))  # a schedule
                st = _status(url)
                now = time.monotonic()
                if now >= next_worker:
                    pids = [p for pool in st["pools"].values() for p in pool["worker_pids"]]
                    if pids:
                        _kill(rng.choice(pids))
                        report.worker_kills += 1
                    next_worker += worker_kill_every
                if now >= next_runner:
                    if st["runner_pid"]:
                        _kill(st["runner_pid"])
                        report.runner_kills += 1
                    next_runner += runner_kill_every
                if now >= next_minute:
                    report.per_minute.append(st["delivered"] - last_delivered)
                    last_delivered = st["delivered"]
                    next_minute += minute
                if not warm and now - t0 >= warm_up:
                    warm = _sample(proc.pid, st)
            end = _sample(proc.pid, _status(url))
            report.rss_growth_mb = {k: end["rss"][k] - v for k, v in warm.get("rss", {}).items() if k in end["rss"]}
            report.fds = (warm.get("fds", 0), end["fds"])
            report.threads = (warm.get("threads", 0), end["threads"])
            proc.send_signal(signal.SIGTERM)
            stdout, report.stderr = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        report.exit_code = proc.returncode
        m = re.search(r"(\d+) inputs submitted, (\d+) results delivered", stdout)
        if m:
            report.submitted, report.delivered = int(m.group(1)), int(m.group(2))
        seen: dict[int, int] = {}
        with open(out) as f:
            for line in f:
                x = int(line)
                seen[x] = seen.get(x, 0) + 1
        report.duplicates = sum(n - 1 for n in seen.values() if n > 1)
        report.missing = sum(1 for x in range(report.submitted) if x not in seen)
    return report


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)  # a pid the service reported as its own
    except ProcessLookupError:
        pass


def _sample(service_pid: int, st: dict) -> dict:
    """RSS of the service and of every process of its tree but the workers and the
    runner (those are killed and replaced on purpose); the service's fds and threads."""
    churn = {st["runner_pid"], *(p for pool in st["pools"].values() for p in pool["worker_pids"])}
    rss = {"service": _rss_mb(service_pid)}
    for pid in st.get("pids", []):
        if pid not in churn:
            rss[f"tree pid {pid}"] = _rss_mb(pid)
    return {
        "rss": {k: v for k, v in rss.items() if v is not None},
        "fds": _count(f"/proc/{service_pid}/fd") or 0,
        "threads": _count(f"/proc/{service_pid}/task") or 0,
    }


__all__ = ["soak", "SoakReport", "SoakPipe", "numbers", "record"]
