"""A dispatch's batches: how they are cut from the input and pickled for a worker.

A batch cut from raw payloads (the common case) keeps the payloads and a
range of fresh ids, and builds its input Items only if something needs them
(a failure policy, an executor): the result Items carry the same ids.

Whether a chunk of the input holds Items is found while it is pickled, not by
a scan before (20 ns an input, the largest cost of cutting a batch): pickling
an Item goes through ``Item.__reduce__``, which notes it (see
``slither._item.pickled_item``). Only then is the chunk looked at, and made a
batch of Items if it holds some. Where an Item could pickle without that
(a subclass with a reduce of its own, a ``copyreg`` entry), every chunk is
scanned, as before.
"""

from __future__ import annotations

import copyreg
import itertools
import pickle

from slither import _item, _pickle, _protocol, _wire
from slither._item import Item, _Fresh, _next_ids
from slither.errors import SerializationError


class _Batch:
    """One batch of a dispatch.

    A batch cut from raw payloads (the common case) keeps the payloads and
    a range of fresh ids, and builds its input Items only if something needs
    them (a failure policy, an executor): the result Items carry the same ids.
    """

    __slots__ = ("seq", "_items", "ids", "payloads", "attempts", "chunks", "t0", "start", "by_value")

    def __init__(self, seq, items, ids=None, payloads=None):
        self.seq = seq
        self._items = items
        self.ids = ids
        self.payloads = payloads
        self.attempts = 0
        self.chunks = None
        self.t0 = 0
        self.start: int | None = None  # position of its first item in the input (FixedBatch)
        self.by_value = False  # pickled with cloudpickle (see slither._pickle)

    @property
    def items(self) -> list[Item]:
        if self._items is None:
            self._items = _as_items(self.ids, self.payloads)
        return self._items

    def hold_items(self) -> None:
        """The payloads held Items after all (found when pickled): make it a batch of Items."""
        self._items = _as_items(self.ids, self.payloads)
        self.ids = self.payloads = None

    def __len__(self) -> int:
        return len(self.payloads) if self._items is None else len(self._items)


def _as_items(ids, payloads: list) -> list[Item]:
    """A raw chunk as Items: an Item of the input is itself, a payload gets its fresh id."""
    return [x if isinstance(x, Item) else _Fresh(i, x) for i, x in zip(ids, payloads)]


class _RawChunk:
    """What ``fixed_batches`` yields for a chunk of payloads (no Items yet)."""

    __slots__ = ("ids", "payloads")

    def __init__(self, ids, payloads):
        self.ids = ids
        self.payloads = payloads


def wrapped(items):
    """The input as Items (raw payloads wrapped). Ids come in blocks of 1024: one lock
    per block, not per item."""
    ids = iter(())
    for x in items:
        if isinstance(x, Item):
            yield x
            continue
        i = next(ids, None)
        if i is None:
            ids = iter(_next_ids(1024))
            i = next(ids)
        yield _Fresh(i, x)


_ID_BLOCK = 4096  # ids a dispatch takes at once (one lock), and hands out chunk after chunk


def fixed_batches(items, size: int, sizer=None):
    """FixedBatch over the input (the hot path): each chunk as it is, not looked at
    (the packer finds Items among it). With ``sizer`` (an AutoBatch) each chunk takes
    its current size."""
    it = iter(items)
    block = range(0)
    while True:
        chunk = list(itertools.islice(it, size if sizer is None else sizer.size))
        if not chunk:
            return
        n = len(chunk)
        if len(block) < n:
            block = _next_ids(max(n, _ID_BLOCK))  # unique, and increasing through the dispatch
        yield _RawChunk(block[:n], chunk)
        block = block[n:]


def bad_item(b: _Batch, k: int, why: str) -> SerializationError:
    """The error naming item ``k`` of batch ``b``: its id, and its position in the input when known."""
    item = b.items[k]
    pos = None if b.start is None else b.start + k
    where = f"at position {pos} of the input" if pos is not None else f"{k} of batch {b.seq}"
    return SerializationError(f"item {item.id!r} ({where}) {why}", item_id=item.id, position=pos)


class Packer:
    """Pickles a dispatch's batches into frames: with the C pickler while it can, by
    value (cloudpickle) for the rest of the dispatch once a batch needed it."""

    __slots__ = ("fn_key", "ctx", "_ctx_blob", "by_value", "scan")

    def __init__(self, fn_key, ctx):
        self.fn_key = fn_key
        self.ctx = ctx
        self._ctx_blob: bytes | None = None
        self.by_value = False
        # An Item that may pickle without Item.__reduce__: raw chunks are scanned instead.
        self.scan = _item.opaque_items or any(isinstance(t, type) and issubclass(t, Item) for t in copyreg.dispatch_table)

    def pack(self, b: _Batch, ref: int) -> list:
        """The frame of ``b``. Raises ``SerializationError`` naming the item that cannot be pickled."""
        if b.payloads is not None:  # a raw chunk: does it hold Items?
            if self.scan:
                if not any(isinstance(x, Item) for x in b.payloads):
                    return self._pack(b, ref, b.payloads)
            else:
                seen = _item.pickled_item
                seen.flag = False
                chunks = self._pack(b, ref, b.payloads)
                if not (seen.flag and any(isinstance(x, Item) for x in b.payloads)):  # or one inside a payload
                    return chunks
            b.hold_items()
        return self._pack(b, ref, [i.payload for i in b.items])

    def _pack(self, b: _Batch, ref: int, payloads: list) -> list:
        if self._ctx_blob is None:  # the Context is the same for every batch: pickled once
            try:
                self._ctx_blob = pickle.dumps(self.ctx, protocol=5)
            except Exception:  # noqa: BLE001 - metadata holding a local class, say
                self._ctx_blob = _pickle.dumps_by_value(self.ctx)
        msg = _protocol.batch(ref, self.fn_key, payloads, self._ctx_blob)
        if not (b.by_value or self.by_value):
            try:
                return _wire.dumps(msg)
            except Exception:  # noqa: BLE001 - a local class, a lambda in a payload: cloudpickle can
                self.by_value = True  # the rest of this dispatch goes by value at once
        b.by_value = True
        try:
            return _wire.dumps(msg, by_value=True)
        except Exception as exc:
            for k, item in enumerate(b.items):
                try:
                    _pickle.dumps_by_value(item.payload)
                except Exception as inner:  # noqa: BLE001
                    raise bad_item(b, k, f"could not be pickled: {type(inner).__name__}: {inner}") from inner
            raise SerializationError(f"batch {b.seq} could not be pickled: {type(exc).__name__}: {exc}") from exc
