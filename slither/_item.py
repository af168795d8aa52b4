"""The work envelope (:class:`Item`) and the run context (:class:`Context`)."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

import attrs

_next_id = 1
_ids_lock = threading.Lock()


def _next_ids(n: int) -> range:
    # One lock-protected bump per wrap_many keeps ids unique and increasing
    # across threads without a lock per item.
    global _next_id
    with _ids_lock:
        start = _next_id
        _next_id += n
    return range(start, start + n)


_EMPTY: Mapping = MappingProxyType({})


def _freeze(mapping: Mapping | None) -> Mapping:
    if not mapping:
        return _EMPTY
    if type(mapping) is MappingProxyType:
        return mapping  # already read-only: share it (items are immutable)
    return MappingProxyType(dict(mapping))


_set = object.__setattr__

# Item.__reduce__ sets ``pickled_item.flag`` on the thread pickling: how a dispatch
# learns that a chunk of its input held Items without scanning every chunk for them
# (see slither._dispatch.batch). ``opaque_items``: a subclass pickles without it.
pickled_item = threading.local()
opaque_items = False


class _ItemSlots:
    """The storage of :class:`Item`, with a plain (fast) ``__init__``.

    ``Item`` is an attrs frozen class that adds no slots to this base, so an
    instance built here can become an ``Item`` by ``__class__`` assignment:
    about twice as fast as the frozen ``__init__`` (which must go through
    ``object.__setattr__``). Dispatch builds one Item per result this way.
    """

    __slots__ = ("id", "payload", "meta", "route", "__weakref__")

    def __init__(self, id, payload, meta, route):
        self.id = id
        self.payload = payload
        self.meta = meta
        self.route = route
        self.__class__ = Item


class _Fresh(_ItemSlots):
    """An Item with no meta and the default route (every result of a dispatch that
    adds none): two arguments to pass instead of four, ~10 % less per Item built."""

    __slots__ = ()

    def __init__(self, id, payload):
        self.id = id
        self.payload = payload
        self.meta = _EMPTY
        self.route = "default"
        self.__class__ = Item


def _make(cls, id, payload, meta, route):
    # The hot-path constructor: every field is already valid (meta frozen), so
    # skip attrs' __init__ and converters.
    if cls is Item:
        return _ItemSlots(id, payload, meta, route)
    obj = object.__new__(cls)  # a user's subclass of Item: its layout may differ
    _set(obj, "id", id)
    _set(obj, "payload", payload)
    _set(obj, "meta", meta)
    _set(obj, "route", route)
    return obj


@attrs.frozen(repr=False, slots=True)
class Item(_ItemSlots):
    """One unit of work travelling through dispatches and pipes.

    Immutable: ``update_payload`` and ``put_meta`` return new items with the
    same ``id``. ``meta`` is a read-only mapping; Slither writes
    ``"skipped"``, ``"error"``, ``"stage"`` and ``"attempts"`` into it.
    """

    id: Any
    payload: Any
    meta: Mapping = attrs.field(factory=dict, converter=_freeze)
    route: str = "default"

    @classmethod
    def wrap(cls, payload: Any) -> Item:
        """Wrap one payload in a new item with a fresh id."""
        return _make(cls, _next_ids(1)[0], payload, _EMPTY, "default")

    @classmethod
    def wrap_many(cls, payloads: Iterable[Any]) -> list[Item]:
        """Wrap payloads in items whose ids are unique and increasing."""
        payloads = list(payloads)
        if cls is Item:
            return list(map(_Fresh, _next_ids(len(payloads)), payloads))
        return [_make(cls, i, p, _EMPTY, "default") for i, p in zip(_next_ids(len(payloads)), payloads)]

    def update_payload(self, payload: Any) -> Item:
        """A copy with a new payload (same id, meta and route)."""
        return _make(type(self), self.id, payload, self.meta, self.route)

    def put_meta(self, mapping: Mapping) -> Item:
        """A copy whose meta is this item's meta updated with ``mapping``."""
        return _make(type(self), self.id, self.payload, MappingProxyType({**self.meta, **mapping}), self.route)

    def with_route(self, route: str) -> Item:
        """A copy routed to ``route``."""
        return _make(type(self), self.id, self.payload, self.meta, route)

    def __reduce__(self):
        # MappingProxyType does not pickle; send a plain dict.
        pickled_item.flag = True
        return (Item, (self.id, self.payload, dict(self.meta), self.route))

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__reduce__" in cls.__dict__ or "__reduce_ex__" in cls.__dict__:
            global opaque_items
            opaque_items = True  # its instances may pickle without a word: dispatch scans its input

    def __repr__(self) -> str:
        p = repr(self.payload)
        if len(p) > 60:
            p = p[:57] + "..."
        meta = f", meta={dict(self.meta)!r}" if self.meta else ""
        route = f", route={self.route!r}" if self.route != "default" else ""
        return f"Item(id={self.id!r}, payload={p}{meta}{route})"


def _session_id() -> str:
    return "slither_" + secrets.token_hex(8)


@attrs.frozen
class Context:
    """What a stage or batch function knows about the run it is part of.

    ``session_id`` keys session affinity and session-scoped store views.
    ``stores`` maps the pipe's store aliases to store names.
    """

    pipe: str | None = None
    stage: str | None = None
    session_id: str = attrs.field(factory=_session_id)
    stores: Mapping = attrs.field(factory=dict, converter=_freeze)
    metadata: Mapping = attrs.field(factory=dict, converter=_freeze)
    runtime: Mapping = attrs.field(factory=dict, converter=_freeze)

    def with_stage(self, name: str | None) -> Context:
        """A copy naming the stage ``name``."""
        return attrs.evolve(self, stage=name)

    def put_metadata(self, mapping: Mapping) -> Context:
        """A copy whose metadata is updated with ``mapping``."""
        return attrs.evolve(self, metadata={**self.metadata, **mapping})

    def __reduce__(self):
        return (
            Context,
            (self.pipe, self.stage, self.session_id, dict(self.stores), dict(self.metadata), dict(self.runtime)),
        )
