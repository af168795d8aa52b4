"""Order-preserving key encoding for LMDB.

LMDB sorts keys by bytes. ``encode`` maps ints, floats, bools, None, str,
bytes and tuples of them to bytes whose order is Python's order (10 after 2,
"a" before "ab", (1,) before (1, 2)). Other hashable keys are pickled (tag
0xF0): fine for set and bag tables, refused for ordered_set.

Layout: one tag byte per value. Numbers: tag 0x10, the IEEE double made
sortable, then for ints an exact tie-breaker (two ints beyond 2**53 may
share a double). Strings (0x20) and bytes (0x30): 0x00 escaped as 00 FF,
terminated by 00 01. Tuples: 0x40, the elements, 0x00.
"""

from __future__ import annotations

import pickle
import struct

_D = struct.Struct(">d")
MAX_KEY = 511  # LMDB's default maximum key size
PICKLED = 0xF0


class Unsortable(TypeError):
    pass


def _double(x: float) -> bytes:
    if x != x:
        raise Unsortable("NaN cannot be a key")
    b = bytearray(_D.pack(x + 0.0))  # + 0.0 turns -0.0 into 0.0
    if b[0] & 0x80:
        return bytes(0xFF - c for c in b)
    b[0] |= 0x80
    return bytes(b)


def _exact_int(k: int) -> bytes:
    mag = abs(k).to_bytes((abs(k).bit_length() + 7) // 8 or 1, "big")
    if len(mag) > 250:
        raise Unsortable("int key too large")
    if k >= 0:
        return b"\x01" + bytes([len(mag)]) + mag
    return b"\x00" + bytes([255 - len(mag)]) + bytes(0xFF - c for c in mag)


def _esc(b: bytes) -> bytes:
    return b.replace(b"\x00", b"\x00\xff") + b"\x00\x01"


def _enc(k, out: list) -> None:
    t = type(k)
    if t is int or t is bool:
        try:
            f = float(k)
        except OverflowError:
            f = float("inf") if k > 0 else float("-inf")
        out.append(b"\x10" + _double(f) + _exact_int(int(k)))
    elif t is float:
        out.append(b"\x10" + _double(k))
    elif t is str:
        out.append(b"\x20" + _esc(k.encode("utf-8", "surrogatepass")))
    elif t is bytes:
        out.append(b"\x30" + _esc(k))
    elif t is tuple:
        out.append(b"\x40")
        for e in k:
            _enc(e, out)
        out.append(b"\x00")
    elif k is None:
        out.append(b"\x08")
    else:
        raise Unsortable(f"{t.__name__} keys are not ordered")


def encode(key, ordered: bool) -> bytes:
    """Encode ``key``; ``ordered`` refuses keys that cannot keep Python's order."""
    if type(key) is str and len(key) < 200 and "\x00" not in key:  # the hot path: short string keys
        data = key.encode("utf-8", "surrogatepass")
        if len(data) < 480:
            return b"\x20" + data + b"\x00\x01"
    out: list = []
    try:
        _enc(key, out)
        data = b"".join(out)
    except Unsortable:
        if ordered:
            raise
        data = bytes([PICKLED]) + pickle.dumps(key, protocol=5)
    if len(data) > MAX_KEY - 8:
        raise ValueError(f"key {key!r:.60} is too large ({len(data)} bytes encoded; the limit is {MAX_KEY - 8})")
    return data
