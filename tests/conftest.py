import os

import pytest
from hypothesis import HealthCheck, settings

from slither.supervision import pid_alive
from slither.testing import running_runtime, wait_pids_gone

settings.register_profile("ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture(scope="module")
def rt():
    """One real multi-process runtime (2 workers) per test module; checks nothing leaks."""
    with running_runtime(pools={"default": {"size": 2, "max_restarts": 50, "max_seconds": 5.0}}) as runtime:
        yield runtime


@pytest.fixture(scope="session", autouse=True)
def _no_leaked_processes():
    before = {int(p) for p in os.listdir("/proc") if p.isdigit()}
    yield
    from slither._runtime import _live

    assert not list(_live), "a runtime was left running at the end of the session"
    after = {int(p) for p in os.listdir("/proc") if p.isdigit()} - before
    mine = []
    for pid in after:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if pid_alive(pid) and b"python" in cmd and pid != os.getpid():
            mine.append(pid)
    assert not wait_pids_gone(mine, timeout=5), f"processes left behind: {mine}"


@pytest.fixture(scope="session", autouse=True)
def _slither_warnings_visible():
    """Show Slither's warnings (e.g. processes that outlived shutdown) in test output."""
    from loguru import logger

    logger.enable("slither")
    hid = logger.add(lambda m: print(m, end="", file=__import__("sys").stderr), level="WARNING")
    yield
    logger.remove(hid)
    logger.disable("slither")
