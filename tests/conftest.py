import os
import secrets

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


# Which processes this test session started: a forked descendant shares this process's
# environment block (/proc/<pid>/environ, fixed at exec), an exec'd one inherits the marker.
# Another test run on the same machine (a CI clone, say) is neither, and is not counted.
_MARKER = f"SLITHER_TEST_SESSION={os.getpid()}-{secrets.token_hex(4)}"
os.environ["SLITHER_TEST_SESSION"] = _MARKER.partition("=")[2]


def _environ(pid) -> bytes | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read()
    except OSError:
        return None


def _started_here(pid, own_env: bytes | None) -> bool:
    env = _environ(pid)
    if env is None:
        return False
    return env == own_env or _MARKER.encode() + b"\0" in env


@pytest.fixture(scope="session", autouse=True)
def _no_leaked_processes():
    before = {int(p) for p in os.listdir("/proc") if p.isdigit()}
    own_env = _environ("self")
    yield
    from slither._runtime import _live

    assert not list(_live), "a runtime was left running at the end of the session"
    after = {int(p) for p in os.listdir("/proc") if p.isdigit()} - before
    mine = [pid for pid in after if pid != os.getpid() and pid_alive(pid) and _started_here(pid, own_env)]
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
