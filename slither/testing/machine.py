"""``PipeMachine``: a hypothesis state machine over a user's own :class:`slither.Pipe`.

::

    from hypothesis import strategies as st
    from slither.testing import PipeMachine

    TestScorePipe = PipeMachine.for_pipe(ScorePipe, payloads=st.integers()).TestCase

Each hypothesis example starts a real runtime (the pools the pipe's pool
stages name, the stores it declares) and then runs random steps:

* ``feed``: ``run_pipe`` over a random list of payloads;
* ``inject_fault``: the next batch of a pool stage crashes, is SIGKILLed or
  raises (one fault per step: a retried batch runs clean);
* ``reload_stores``: every store of the pipe is reloaded.

After every ``feed`` it checks what the docs promise: each input comes out
exactly once, in an output or in ``skipped``, and in input order within each
output. A ``PipeError`` is accepted only when a fault was injected into that
run and a pool stage's policy may halt (``"halt"``, or a ``Retry`` that ends
in ``"halt"``); otherwise it is the pipe's bug and fails the test. At the end
of each example the runtime is shut down and no process it started may be
left. A pipe with a ``cardinality="many"`` stage makes new items, so for it
the check is that no output item appears twice.
"""

from __future__ import annotations

from typing import Any

import attrs
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule
from hypothesis.strategies import SearchStrategy

from slither._dispatch import Retry
from slither._item import Item
from slither._pipe.definition import Pipe, _policy
from slither._runtime import Runtime
from slither.errors import PipeError
from slither.testing import wait_pids_gone
from slither.testing.faults import KINDS, Faults


class PipeMachine(RuleBasedStateMachine):
    """Build one with :meth:`for_pipe`; its ``.TestCase`` is what pytest collects."""

    pipe: type[Pipe]
    runtime_options: dict = {}

    @classmethod
    def for_pipe(
        cls,
        pipe: type[Pipe],
        payloads: SearchStrategy,
        *,
        faults: tuple[str, ...] = ("crash", "kill", "raise"),
        max_inputs: int = 20,
        workers: int = 2,
        runtime_options: dict | None = None,
        max_examples: int = 10,
        steps: int = 6,
    ) -> type[PipeMachine]:
        """A state machine class over ``pipe`` fed with lists of ``payloads``."""
        if not (isinstance(pipe, type) and issubclass(pipe, Pipe)):
            raise TypeError(f"PipeMachine.for_pipe: pipe must be a slither.Pipe subclass, got {pipe!r}")
        if not isinstance(payloads, SearchStrategy):
            raise TypeError(f"PipeMachine.for_pipe: payloads must be a hypothesis strategy, got {payloads!r}")
        bad = [k for k in faults if k not in KINDS or k == "hang"]
        if bad:
            raise ValueError(
                f"PipeMachine.for_pipe: faults {bad} unknown or unsupported; choose from crash, kill, segfault, raise"
            )
        pool_stages = [s.name for s in pipe.stages if s.kind == "pool"]
        pools = sorted({s.options.get("pool", "default") for s in pipe.stages if s.kind == "pool"} or {"default"})
        opts = {
            "pools": {p: {"size": workers, "max_restarts": 10_000, "max_seconds": 1.0} for p in pools},
            "stores": list(pipe.stores.values()),
            **(runtime_options or {}),
        }
        inputs = st.lists(payloads, max_size=max_inputs)
        body: dict[str, Any] = {"pipe": pipe, "runtime_options": opts}
        body["feed"] = rule(payloads=inputs)(_named("feed", lambda self, payloads: self._feed(payloads)))
        if pool_stages and faults:
            body["inject_fault"] = rule(kind=st.sampled_from(faults), stage=st.sampled_from(pool_stages))(
                _named("inject_fault", lambda self, kind, stage: self._inject(kind, stage))
            )
        if pipe.stores:
            body["reload_stores"] = rule()(_named("reload_stores", lambda self: self._reload()))
        machine = type(f"{pipe.__name__}Machine", (cls,), body)
        machine.TestCase.settings = settings(
            max_examples=max_examples,
            stateful_step_count=steps,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        return machine

    def __init__(self):
        super().__init__()
        self.faults = Faults()
        self.plans = {name: Faults(f"{self.faults.path}/{name}") for name in self._pool_stage_names()}
        self.faulty = self._faulty_pipe()
        self.rt = Runtime(**self.runtime_options).start()
        self._pids = set(self.rt.pids())

    # -- steps -------------------------------------------------------------------
    def _feed(self, payloads: list) -> None:
        fired_before = sum(len(f.fired) for f in self.plans.values())
        try:
            out = self.rt.run_pipe(self.faulty, [Item(k, p) for k, p in enumerate(payloads)])
        except PipeError:
            fired = sum(len(f.fired) for f in self.plans.values()) > fired_before
            if fired and self._may_halt():
                return  # an injected fault under a halting policy: the pipe did what it says
            raise
        finally:
            self._pids.update(self.rt.pids())
            for f in self.plans.values():
                f.disarm()  # a fault not taken by this run must not land in the next one
        self._check(out, len(payloads))

    def _inject(self, kind: str, stage: str) -> None:
        self.plans[stage].arm(kind)

    def _reload(self) -> None:
        for store in self.pipe.stores.values():
            store.reload()

    # -- checks ------------------------------------------------------------------
    def _check(self, out, n: int) -> None:
        seen: list[int] = []
        for name, items in out.items():
            ids = [i.id for i in items]
            assert ids == sorted(ids), f"output {name!r} out of input order: ids {ids}"
            seen += ids
        seen += [i.id for i in out.skipped]
        assert len(seen) == len(set(seen)), f"an input came out twice: ids {sorted(seen)}"
        if not any(s.cardinality == "many" for s in self.pipe.stages if s.kind == "inline"):
            missing = sorted(set(range(n)) - set(seen))
            assert not missing, f"inputs lost (neither in an output nor in skipped): ids {missing}"

    def teardown(self) -> None:
        try:
            if self.rt.running:
                self._pids.update(self.rt.pids())
                self.rt.shutdown()
            left = wait_pids_gone(self._pids, timeout=5)
            assert not left, f"processes left behind by the pipe's runtime: {left}"
        finally:
            self.faults.close()

    # -- helpers -----------------------------------------------------------------
    def _pool_stage_names(self) -> list[str]:
        return [s.name for s in self.pipe.stages if s.kind == "pool"]

    def _faulty_pipe(self) -> type[Pipe]:
        stages = [attrs.evolve(s, fn=self.plans[s.name].wrap(s.fn)) if s.kind == "pool" else s for s in self.pipe.stages]
        return type(self.pipe.__name__, (self.pipe,), {"stages": stages, "pipe_name": self.pipe.pipe_name})

    def _may_halt(self) -> bool:
        for name in self._pool_stage_names():
            policy = _policy(self.pipe, name)
            if policy == "halt" or (isinstance(policy, Retry) and policy.then == "halt"):
                return True
        return False


def _named(name: str, fn):
    fn.__name__ = fn.__qualname__ = name  # hypothesis prints the steps of a failing case by these names
    return fn
