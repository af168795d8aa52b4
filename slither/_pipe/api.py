"""Running a pipe: to the end (``run_pipe``), as a stream (``stream_pipe``), or for
as long as you like (``start_pipe``: a :class:`PipeHandle`)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

from slither import telemetry
from slither._dispatch import progress_bar
from slither._item import Item
from slither._pipe.definition import _SEQ, Pipe, PipeResult
from slither._pipe.handle import _PRIVATE, PipeHandle
from slither._pipe.run import _collect, _Run, _strip
from slither.errors import ConfigurationError, PipeError


def _check_pipe(pipe) -> None:
    if not (isinstance(pipe, type) and issubclass(pipe, Pipe)):
        raise ConfigurationError(f"expected a slither.Pipe subclass, got {pipe!r}")


def _rt(runtime):
    if runtime is None:
        raise ConfigurationError("a pipe needs a runtime: use slither.run_pipe (and friends) or the Runtime's methods")
    runtime._require()
    return runtime


def run_pipe(
    pipe,
    items: Iterable,
    *,
    runtime=None,
    session_id: str | None = None,
    metadata: dict | None = None,
    progress: bool | None = None,
) -> PipeResult:
    """Run ``pipe`` over ``items``; return every output's items.

    Raises:
        PipeError: a stage failed under ``"halt"`` (``.partial_results`` holds
            the outputs gathered so far).
    """
    _check_pipe(pipe)
    rt = _rt(runtime)
    run = _Run(pipe, rt, session_id, metadata)
    result = PipeResult({o: [] for o in ["default", *pipe.outputs]})
    result.skipped = []
    bar = None
    if progress:
        bar = progress_bar(True, len(items) if hasattr(items, "__len__") else None)
    with telemetry.span(("slither", "pipe", "run"), {"pipe": pipe.pipe_name, "session_id": run.ctx.session_id}):
        run.start(items)
        try:
            for name, item in _collect(run):
                (result.skipped if name == "skipped" else result[name]).append(item)
                if bar:
                    bar.update(1)
        except PipeError as exc:
            for k in result:
                result[k] = [_strip(i) for i in result[k]]
            result.skipped = [_strip(i) for i in result.skipped]
            result.stats = run.stats
            exc.partial_results = result
            raise
        finally:
            run.cancel.set()
            if bar:
                bar.close()
    key = lambda it: it.meta.get(_SEQ, ())  # noqa: E731
    for k in result:
        result[k] = [_strip(i) for i in sorted(result[k], key=key)]
    result.skipped = [_strip(i) for i in sorted(result.skipped, key=key)]
    result.stats = run.stats
    return result


def stream_pipe(
    pipe,
    items: Iterable,
    *,
    runtime=None,
    session_id: str | None = None,
    metadata: dict | None = None,
    progress: bool | None = None,
) -> Iterator[tuple[str, Item]]:
    """Run ``pipe`` lazily over a (possibly endless) iterable; yield ``(output, item)``.

    Skipped items come as ``("skipped", item)``. Memory stays bounded: the
    input is read only as fast as results are taken. Closing the iterator
    stops the run. ``progress=True`` shows a tqdm bar on stderr.
    """
    _check_pipe(pipe)
    rt = _rt(runtime)

    def gen():
        bar = progress_bar(progress, len(items) if hasattr(items, "__len__") else None)
        run = _Run(pipe, rt, session_id, metadata)
        run.start(items)
        try:
            for name, item in _collect(run):
                if bar:
                    bar.update(1)
                yield name, _strip(item)
        finally:
            run.cancel.set()
            if bar:
                bar.close()

    return gen()


def start_pipe(
    pipe,
    *,
    runtime=None,
    session_id: str | None = None,
    metadata: dict | None = None,
    max_pending: int = 10_000,
    name: str | None = None,
    restart=(3, 5.0),
    max_replays: int = 2,
) -> PipeHandle:
    """Start a long-lived pipe on the runtime; return its :class:`PipeHandle`.

    The stages run in a ``PipeRunner`` process of their own, supervised: one that
    crashes is restarted, and what it had not finished is run again (see
    docs/pipe.md). ``restart=(max_restarts, max_seconds)`` is the pipe's restart
    intensity: more restarts than that within that time and the handle raises
    :class:`slither.PipeDown`. ``name`` names the pipe in the tree and in
    ``status()`` (default: the pipe's ``pipe_name``, made unique).

    An input in flight at more than ``max_replays`` runner deaths (a poison input that
    kills each runner, or a neighbour of one) is not run again: it comes out skipped,
    with :class:`slither.errors.RunnerDied` as its ``meta["error"]``. An inline stage
    past its ``timeout`` kills the runner too; the stage's policy then decides.

    ``max_pending`` bounds inputs submitted whose results were not yet taken
    with ``results()``: past it, ``submit`` blocks. The runtime stops the
    pipe at ``shutdown()``. With ``base="simpleSystemBase"`` (debugging) the
    stages are threads of this process and nothing restarts them.
    """
    _check_pipe(pipe)
    rt = _rt(runtime)
    if not isinstance(max_pending, int) or isinstance(max_pending, bool) or max_pending < 1:
        raise ConfigurationError(f"max_pending must be a positive int, got {max_pending!r}")
    intensity = check_restart(restart)
    if type(max_replays) is not int or max_replays < 0:
        raise ConfigurationError(f"max_replays must be an int >= 0, got {max_replays!r}")
    if name is not None and (not isinstance(name, str) or not name):
        raise ConfigurationError(f"name must be a non-empty string, got {name!r}")
    taken = {h.name for h in rt._pipes}
    if name is None:
        names = (pipe.pipe_name if k == 1 else f"{pipe.pipe_name}-{k}" for k in itertools.count(1))
        name = next(n for n in names if n not in taken)
    elif name in taken:
        raise ConfigurationError(f"a pipe named {name!r} is already running on this runtime; give start_pipe another name=")
    engine = rt._pipe_engine(pipe, name, session_id, metadata, max_pending, intensity, max_replays)
    handle = PipeHandle(_PRIVATE, pipe, rt, max_pending, engine, name)
    rt._pipes.append(handle)
    return handle


def check_restart(restart) -> tuple[int, float]:
    """``restart=(max_restarts, max_seconds)`` checked (a mapping with those keys works too)."""
    if isinstance(restart, dict):
        unknown = set(restart) - {"max_restarts", "max_seconds"}
        if unknown:
            raise ConfigurationError(f"restart: unknown keys {sorted(unknown)}; use max_restarts and max_seconds")
        restart = (restart.get("max_restarts", 3), restart.get("max_seconds", 5.0))
    ok = isinstance(restart, (tuple, list)) and len(restart) == 2
    if ok:
        n, secs = restart
        ok = isinstance(n, int) and not isinstance(n, bool) and n >= 0
        ok = ok and isinstance(secs, (int, float)) and not isinstance(secs, bool) and secs > 0
    if not ok:
        raise ConfigurationError(
            f"restart must be (max_restarts, max_seconds): an int >= 0 and a number of seconds > 0, got {restart!r}"
        )
    return int(restart[0]), float(restart[1])
