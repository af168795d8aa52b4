"""A few seconds of the soak (bench/soak_serve.py runs the ten-minute one): a served
pipe under a steady stream, workers and its runner SIGKILLed on a schedule."""

import pytest

from slither.testing.soak import soak

pytestmark = [pytest.mark.timeout(180), pytest.mark.soak]


def test_a_served_pipe_survives_killed_workers_and_runners_with_every_input_once():
    r = soak(6.0, worker_kill_every=0.3, runner_kill_every=2.0, warm_up=1.5, minute=2.0)
    r.check()
    assert r.worker_kills >= 10 and r.runner_kills >= 2
    assert r.submitted > 1000 and r.delivered == r.submitted
    assert all(n > 0 for n in r.per_minute)  # it kept serving through every slice
