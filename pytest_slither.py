"""Slither's pytest plugin, registered by the ``pytest11`` entry point when Slither is installed.

It is inert unless used: importing it imports neither Slither nor Thespian;
nothing starts until a test asks for a fixture. It gives

* ``slither_runtime``: a started multi-process runtime (2 workers in pool
  ``"default"`` unless the marker says otherwise). Its scope is the
  ``slither_runtime_scope`` ini value or ``--slither-scope`` (``function``
  by default; ``module`` or ``session`` share one runtime per distinct
  configuration). When its scope ends it is shut down, and the test fails
  if any process it started outlives it.
* ``slither_faults``: a :class:`slither.testing.Faults` plan (crashes, kills,
  segfaults, hangs, exceptions in chosen batches) with ``.schedules()``, a
  hypothesis strategy of plans.
* ``@pytest.mark.slither(pools=..., stores=..., **runtime_options)``: how
  ``slither_runtime`` is built for that test (its ``Runtime`` arguments).
* ``--slither-chaos=SEED``: tests marked ``slither`` run while a seeded
  chaos monkey SIGKILLs random workers of their ``slither_runtime``.

See docs/testing.md.
"""

from __future__ import annotations

import pytest

_SCOPES = ("function", "module", "session")


def pytest_addoption(parser):
    group = parser.getgroup("slither", "Slither (process pools under test)")
    group.addoption(
        "--slither-chaos",
        metavar="SEED",
        type=int,
        default=None,
        help="run tests marked @pytest.mark.slither while random workers of slither_runtime are SIGKILLed (seeded)",
    )
    group.addoption("--slither-scope", choices=_SCOPES, default=None, help="the scope of the slither_runtime fixture")
    parser.addini(
        "slither_runtime_scope", "the scope of the slither_runtime fixture (function, module, session)", default="function"
    )


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "slither(pools=None, stores=None, **runtime_options): build slither_runtime with these Runtime arguments; "
        "with --slither-chaos, run the test under random worker kills",
    )


def pytest_report_header(config):
    seed = config.getoption("--slither-chaos")
    if seed is not None:
        return f"slither: chaos on (seed {seed}): random worker kills in tests marked slither"
    return None


def _scope(fixture_name, config) -> str:
    scope = config.getoption("--slither-scope") or config.getini("slither_runtime_scope") or "function"
    if scope not in _SCOPES:
        raise pytest.UsageError(f"slither_runtime_scope = {scope!r}: choose one of {', '.join(_SCOPES)}")
    return scope


@pytest.fixture(scope=_scope)
def _slither_runtimes():
    from slither.testing._plugin import Runtimes

    runtimes = Runtimes()
    yield runtimes
    left = runtimes.close()
    if left:
        pytest.fail(f"slither_runtime: processes outlived the runtime's shutdown: {left}", pytrace=False)


@pytest.fixture
def slither_runtime(request, _slither_runtimes):
    """A started Slither runtime, configured by ``@pytest.mark.slither(...)``."""
    from slither.testing._plugin import Chaos, runtime_options

    marker = request.node.get_closest_marker("slither")
    rt = _slither_runtimes.get(runtime_options(marker, request.node.nodeid))
    seed = request.config.getoption("--slither-chaos")
    if seed is None or marker is None:
        yield rt
        return
    with Chaos(rt, seed=f"{seed}:{request.node.nodeid}") as chaos:
        yield rt
    request.node.user_properties.append(("slither_chaos_kills", chaos.kills))


@pytest.fixture
def slither_faults():
    """A fresh :class:`slither.testing.Faults` plan, removed after the test."""
    from slither.testing.faults import Faults

    with Faults() as faults:
        yield faults
