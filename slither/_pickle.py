"""How user code and user data are pickled on their way to and from workers.

* Code (batch functions, handlers, Store classes) goes by value with
  cloudpickle, keeping each function's real file name: cloudpickle 3.1.3
  and later rename every pickled code object to ``"<dynamic-code>"``, which
  would leave a worker's traceback with no file and no source line.
* Data (payloads, results) goes with the C pickler first, the fast path.
  Only what it cannot do, or what the other side cannot load (a class
  defined in ``__main__`` after the workers started, a local class), goes
  again by value with cloudpickle (:func:`dumps_by_value`).
* :func:`find_unloadable` tells which payloads of a batch the worker could
  not unpickle, by loading the batch again with missing classes replaced by
  placeholders, so the error can name the item.
"""

from __future__ import annotations

import io
import pickle
import types
from collections import ChainMap

import cloudpickle

_code_reduce = cloudpickle.Pickler.dispatch_table[types.CodeType]


def _code_at(ctor, args, filename: str):
    """Rebuild a code object with its real file name (the tracebacks name the user's file)."""
    return ctor(*args).replace(co_filename=filename)


def _reduce_code(code: types.CodeType):
    ctor, args = _code_reduce(code)
    return _code_at, (ctor, args, code.co_filename)


class _CodePickler(cloudpickle.Pickler):
    dispatch_table = ChainMap({types.CodeType: _reduce_code}, cloudpickle.Pickler.dispatch_table)


def dumps_by_value(obj, buffer_callback=None) -> bytes:
    """Pickle ``obj`` with classes and functions of ``__main__`` (or not importable) by value,
    keeping the file names of their code."""
    with io.BytesIO() as f:
        _CodePickler(f, protocol=5, buffer_callback=buffer_callback).dump(obj)
        return f.getvalue()


dumps_code = dumps_by_value  # code (a function, a class): the same pickler, named for what it sends


class Missing:
    """What a class that cannot be imported becomes in :func:`find_unloadable`."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


class _Tolerant(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except (AttributeError, ImportError, ModuleNotFoundError):
            return type(name, (Missing,), {"__module__": module, "missing": f"{module}.{name}"})


def loads_tolerant(data, buffers=()):
    """Unpickle ``data`` with every class that cannot be found replaced by a :class:`Missing` subclass."""
    return _Tolerant(io.BytesIO(bytes(data)), buffers=buffers).load()


def find_unloadable(values: list) -> list[tuple[int, str]]:
    """``(position, "module.Name")`` of each value that holds a :class:`Missing` (see :func:`loads_tolerant`)."""
    out = []
    for k, v in enumerate(values):
        name = _missing_in(v, 0)
        if name:
            out.append((k, name))
    return out


def _missing_in(v, depth: int) -> str:
    if depth > 50:
        return ""
    if isinstance(v, type) and issubclass(v, Missing):
        return v.missing
    if isinstance(v, Missing):
        return type(v).missing
    if isinstance(v, (list, tuple, set, frozenset)):
        for x in v:
            found = _missing_in(x, depth + 1)
            if found:
                return found
        return ""
    if isinstance(v, dict):
        for kv in v.items():
            found = _missing_in(kv, depth + 1)
            if found:
                return found
        return ""
    state = getattr(v, "__dict__", None)
    if isinstance(state, dict):
        return _missing_in(state, depth + 1)
    return ""
