"""The asyncio front doors: awaited dispatches never block the event loop, and cancelling
the awaiting task cancels the dispatch and kills the workers running its batches."""

import asyncio
import os
import time

import pytest

import slither
from slither import DispatchError, Pipe, stage
from slither.testing import Rendezvous, wait_pids_gone

pytestmark = [pytest.mark.timeout(60), pytest.mark.asyncio]


async def test_adispatch_returns_the_items(rt):
    out = await rt.adispatch(range(10), lambda xs: [x + 1 for x in xs], batch_size=3)
    assert [i.payload for i in out] == list(range(1, 11))


async def test_adispatch_raises_as_dispatch_does(rt):
    with pytest.raises(DispatchError):
        await rt.adispatch([0], lambda xs: [1 / x for x in xs])


async def test_adispatch_stream_and_amap(rt):
    got = [i.payload async for i in rt.adispatch_stream(range(20), lambda xs: [x * 2 for x in xs], batch_size=4)]
    assert got == [x * 2 for x in range(20)]
    assert [v async for v in rt.amap(lambda x: -x, range(5))] == [0, -1, -2, -3, -4]


async def test_the_event_loop_is_never_blocked(rt):
    gaps = []

    async def heartbeat(stop):
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    stop = asyncio.Event()
    beat = asyncio.create_task(heartbeat(stop))
    t0 = time.perf_counter()
    await rt.adispatch(range(8), lambda xs: time.sleep(0.15) or xs, batch_size=1)
    async for _ in rt.amap(lambda x: time.sleep(0.05) or x, range(8), batch_size=1):
        pass
    elapsed = time.perf_counter() - t0
    stop.set()
    await beat
    assert elapsed > 0.6  # the work took long enough for a blocked loop to show
    assert max(gaps) < 0.25, f"the event loop stalled for {max(gaps):.3f}s"


@pytest.mark.chaos
async def test_cancelling_the_awaiting_task_kills_the_workers_running_its_batches(rt):
    with Rendezvous() as rv:

        def held(xs, rv=rv):
            rv.arrive(os.getpid(), wait=True)
            return xs

        task = asyncio.create_task(rt.adispatch([1], held, timeout=None))
        pid = await asyncio.to_thread(rv.wait, 1, 20)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not await asyncio.to_thread(wait_pids_gone, [pid], 10)
    assert [i.payload for i in await rt.adispatch([7], lambda xs: xs)] == [7]


async def test_leaving_an_async_stream_early_stops_the_dispatch(rt):
    stream = rt.amap(lambda x: x, iter(range(10**9)), batch_size=10, max_in_flight=2)
    got = []
    async for v in stream:
        got.append(v)
        if len(got) == 15:
            break
    await stream.aclose()
    assert got == list(range(15))


async def test_long_lived_pipe_asubmit_and_aresults(rt):
    class Double(Pipe):
        stages = [stage.inline("double", handler=lambda item, ctx: item.payload * 2)]

    handle = rt.start_pipe(Double, max_pending=4)
    try:
        for x in range(3):
            await handle.asubmit(x)
        got = []
        async for name, item in handle.aresults(timeout=10):
            got.append((name, item.payload))
            if len(got) == 3:
                break
    finally:
        handle.stop()
    assert got == [("default", 0), ("default", 2), ("default", 4)]


async def test_slither_runtime_adispatch_from_a_coroutine_without_a_with_block():
    with slither.Runtime(pools={"default": 1}) as rt:
        assert [i.payload for i in await rt.adispatch([1], lambda xs: xs)] == [1]
