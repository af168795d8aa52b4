"""What a pipe is: the ``Pipe`` class users subclass, checked when the class is created,
its policies, and the markers items carry through a run."""

from __future__ import annotations

import threading

import attrs

from slither._dispatch import Retry, Route, check_policy
from slither._store import Store
from slither.errors import ConfigurationError, PipeDefinitionError
from slither.stage import StageSpec

_SEQ = "_slither_seq"
_ROUTE = "_slither_route"
RESERVED_OUTPUTS = ("skipped",)


class _EOS:
    def __repr__(self):
        return "<end of stream>"


EOS = _EOS()


class Pipe:
    """Base class of pipelines. Subclass it and declare:

    ``stages`` (a list of ``slither.stage.inline/pool/router``), ``outputs``
    (names; ``"default"`` always exists), ``on_error`` (``{stage or "*":
    "halt" | "skip" | Retry(...) | Route("output")}``), ``stores``
    (``{alias: StoreClass}``; their session views are callable during runs),
    and optionally ``chunk_size`` and ``buffer`` (chunks between stages).

    The definition is checked when the class is created
    (:class:`PipeDefinitionError`).
    """

    stages: list = []
    outputs: list = []
    on_error: dict = {}
    stores: dict = {}
    pipe_name: str = ""
    chunk_size: int = 64
    buffer: int = 4

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if _loading.active:
            return  # cloudpickle makes the class first and fills it in after: load_pipe checks it
        if not cls.__dict__.get("pipe_name"):
            cls.pipe_name = cls.__name__
        _validate(cls)


_loading = threading.local()
_loading.active = False


def load_pipe(blob: bytes):
    """Unpickle what ``check_handlers_travel``'s caller sent (a pipe class travelling by value
    is rebuilt empty, then filled in), then check the pipe as its class statement would."""
    import cloudpickle

    _loading.active = True
    try:
        value = cloudpickle.loads(blob)
    finally:
        _loading.active = False
    pipe = value[0] if isinstance(value, tuple) else value
    _validate(pipe)
    return value


def _validate(cls) -> None:
    name = cls.pipe_name
    if not isinstance(cls.stages, (list, tuple)) or not cls.stages:
        raise PipeDefinitionError(f"pipe {name!r}: stages must be a non-empty list")
    seen = set()
    for st in cls.stages:
        if not isinstance(st, StageSpec):
            raise PipeDefinitionError(f"pipe {name!r}: {st!r} is not a stage; build stages with slither.stage.inline/pool/router")
        if st.name in seen:
            raise PipeDefinitionError(f"pipe {name!r}: duplicate stage name {st.name!r}")
        seen.add(st.name)
    outs = list(cls.outputs)
    for o in outs:
        if not isinstance(o, str) or not o:
            raise PipeDefinitionError(f"pipe {name!r}: output names must be non-empty strings, got {o!r}")
        if o in RESERVED_OUTPUTS:
            raise PipeDefinitionError(f"pipe {name!r}: output name {o!r} is reserved")
    if len(set(outs)) != len(outs):
        raise PipeDefinitionError(f"pipe {name!r}: duplicate output names in {outs}")
    declared = set(outs) | {"default"}
    for st in cls.stages:
        for _, out in st.routes:
            if out not in declared:
                raise PipeDefinitionError(
                    f"pipe {name!r}: router {st.name!r} routes to undeclared output {out!r}; declared: {sorted(declared)}"
                )
    if not isinstance(cls.on_error, dict):
        raise PipeDefinitionError(f"pipe {name!r}: on_error must be a dict of stage name (or '*') to policy")
    for key, pol in cls.on_error.items():
        if key != "*" and key not in seen:
            raise PipeDefinitionError(f"pipe {name!r}: on_error names unknown stage {key!r}; stages: {sorted(seen)}")
        try:
            check_policy(pol, f"pipe {name!r}: on_error[{key!r}]")
        except ConfigurationError as exc:
            raise PipeDefinitionError(str(exc)) from None
        for p in (pol, pol.then if isinstance(pol, Retry) else None):
            if isinstance(p, Route):
                if not isinstance(p.fn, str):
                    raise PipeDefinitionError(f"pipe {name!r}: on_error[{key!r}]: in a pipe, Route takes an output name")
                if p.fn not in declared:
                    raise PipeDefinitionError(f"pipe {name!r}: on_error[{key!r}] routes to undeclared output {p.fn!r}")
    if not isinstance(cls.stores, dict):
        raise PipeDefinitionError(f"pipe {name!r}: stores must be a dict of alias to Store class")
    for alias, s in cls.stores.items():
        if not (isinstance(s, type) and issubclass(s, Store)):
            raise PipeDefinitionError(f"pipe {name!r}: stores[{alias!r}] is not a Store subclass")
    for attr in ("chunk_size", "buffer"):
        v = getattr(cls, attr)
        if not isinstance(v, int) or v < 1:
            raise PipeDefinitionError(f"pipe {name!r}: {attr} must be a positive int, got {v!r}")


class PipeResult(dict):
    """``{output name: [Item, ...]}`` with every declared output and ``"default"``;
    plus ``.skipped`` (items dropped by skip policies or ``Skip``) and
    ``.stats`` (per stage: items in/out/skipped/routed and busy seconds)."""

    skipped: list
    stats: dict


def _policy(pipe, stage: str):
    return pipe.on_error.get(stage, pipe.on_error.get("*", "halt"))


def _map_policy(policy, stage: str):
    """A pipe policy as a Dispatch policy (Route by output name → meta marker)."""
    if isinstance(policy, Retry):
        return attrs.evolve(policy, then=_map_policy(policy.then, stage))
    if isinstance(policy, Route):
        out = policy.fn
        return Route(lambda item, reason: item.put_meta({_ROUTE: out, "error": reason, "stage": stage}))
    return policy


def check_handlers_travel(pipe) -> None:
    """A supervised pipe's code goes to its PipeRunner process with cloudpickle: by
    reference when importable there, by value otherwise (``__main__``, a function's
    body). Name the stage and the callable that cannot go.

    Raises:
        ConfigurationError: a handler, batch function, route predicate, policy or
            store of the pipe cannot be pickled.
    """
    from slither._pickle import dumps_code

    def check(what: str, obj) -> None:
        try:
            dumps_code(obj)
        except Exception as exc:  # noqa: BLE001
            raise ConfigurationError(
                f"pipe {pipe.pipe_name!r}: {what} {obj!r} cannot travel to the pipe's PipeRunner process "
                f"(pickled with cloudpickle): {type(exc).__name__}: {exc}"
            ) from exc

    for st in pipe.stages:
        for attr in ("handler", "batch_handler", "fn"):
            if getattr(st, attr) is not None:
                check(f"stage {st.name!r}: its {attr}", getattr(st, attr))
        for k, (pred, out) in enumerate(st.routes):
            check(f"stage {st.name!r}: route {k} (to {out!r}), its predicate", pred)
        for key, value in st.options.items():
            check(f"stage {st.name!r}: option {key}=", value)
    for key, pol in pipe.on_error.items():
        check(f"on_error[{key!r}]", pol)
    for alias, s in pipe.stores.items():
        check(f"stores[{alias!r}]", s)
    check("the pipe class", pipe)
