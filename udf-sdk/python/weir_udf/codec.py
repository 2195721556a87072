"""The canonical record encoding of docs/udf-abi.md section 2, in Python.

A batch is a little-endian u32 count followed by that many values; each value
is a tag byte and its payload. Python values map to it as: None -> null,
bool -> bool, int -> i64 (out of range is an error, never wrapped), float ->
f64, str -> string, bytes/bytearray -> bytes, tuple -> tuple, list -> list.
Decoding gives the same types back.
"""

import struct

_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")

TAG_NULL = 0x00
TAG_FALSE = 0x01
TAG_TRUE = 0x02
TAG_I64 = 0x03
TAG_F64 = 0x04
TAG_STR = 0x05
TAG_BYTES = 0x06
TAG_TUPLE = 0x07
TAG_LIST = 0x08

MAX_DEPTH = 64
_I64_MIN = -(1 << 63)
_I64_MAX = (1 << 63) - 1


class EncodingError(ValueError):
    """A value that has no canonical encoding, or bytes that are no batch."""


def decode_value(buf, p, depth=0):
    """Decodes the value at offset p of buf; returns (value, next offset)."""
    tag = buf[p]
    p += 1
    if tag == TAG_STR:
        n = _U32.unpack_from(buf, p)[0]
        p += 4
        return str(buf[p : p + n], "utf-8"), p + n
    if tag == TAG_I64:
        return _I64.unpack_from(buf, p)[0], p + 8
    if tag == TAG_TUPLE or tag == TAG_LIST:
        if depth >= MAX_DEPTH:
            raise EncodingError("nesting deeper than 64 levels")
        n = _U32.unpack_from(buf, p)[0]
        p += 4
        items = []
        for _ in range(n):
            v, p = decode_value(buf, p, depth + 1)
            items.append(v)
        return (tuple(items) if tag == TAG_TUPLE else items), p
    if tag == TAG_F64:
        return _F64.unpack_from(buf, p)[0], p + 8
    if tag == TAG_NULL:
        return None, p
    if tag == TAG_FALSE:
        return False, p
    if tag == TAG_TRUE:
        return True, p
    if tag == TAG_BYTES:
        n = _U32.unpack_from(buf, p)[0]
        p += 4
        return bytes(buf[p : p + n]), p + n
    raise EncodingError(f"unknown tag {tag:#04x} at offset {p - 1}")


def decode_batch(buf):
    """The values of a batch, as a list."""
    n = _U32.unpack_from(buf, 0)[0]
    p = 4
    out = []
    for _ in range(n):
        v, p = decode_value(buf, p)
        out.append(v)
    if p != len(buf):
        raise EncodingError(f"{len(buf) - p} trailing bytes after {n} values")
    return out


def encode_value(out, v, depth=0):
    """Appends the encoding of v to the bytearray out."""
    # bool before int: True is an int in Python.
    t = type(v)
    if t is str:
        b = v.encode("utf-8")
        out.append(TAG_STR)
        out += _U32.pack(len(b))
        out += b
    elif t is int:
        if v < _I64_MIN or v > _I64_MAX:
            raise EncodingError(f"integer {v} is outside the i64 range")
        out.append(TAG_I64)
        out += _I64.pack(v)
    elif t is tuple or t is list:
        if depth >= MAX_DEPTH:
            raise EncodingError("nesting deeper than 64 levels")
        out.append(TAG_TUPLE if t is tuple else TAG_LIST)
        out += _U32.pack(len(v))
        for x in v:
            encode_value(out, x, depth + 1)
    elif t is bool:
        out.append(TAG_TRUE if v else TAG_FALSE)
    elif t is float:
        out.append(TAG_F64)
        out += _F64.pack(v)
    elif v is None:
        out.append(TAG_NULL)
    elif t is bytes or t is bytearray:
        out.append(TAG_BYTES)
        out += _U32.pack(len(v))
        out += v
    elif isinstance(v, bool):
        out.append(TAG_TRUE if v else TAG_FALSE)
    elif isinstance(v, int):
        encode_value(out, int(v), depth)
    elif isinstance(v, float):
        encode_value(out, float(v), depth)
    elif isinstance(v, str):
        encode_value(out, str(v), depth)
    elif isinstance(v, (tuple, list)):
        encode_value(out, (tuple if isinstance(v, tuple) else list)(v), depth)
    else:
        raise EncodingError(
            f"a {t.__name__} has no Weir encoding (use None, bool, int, float, str, bytes, tuple or list)"
        )


def encode_batch(values):
    """The batch of values (any iterable), as bytes."""
    out = bytearray(4)
    n = 0
    for v in values:
        encode_value(out, v)
        n += 1
    out[0:4] = _U32.pack(n)
    return bytes(out)
