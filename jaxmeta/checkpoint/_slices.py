"""Tensor slices: TF's `shape_and_slice` strings, TensorSliceProto, and the table keys of slices.

A slice is a tuple of `(start, length)` per dimension; `length == -1` (TF's kFullExtent) takes the
whole dimension. Partitioned variables are saved as slices of their full tensor, each under the key
`EncodeTensorNameSlice(name, slice)` (an OrderedCode string, starting with a zero byte so slice
keys sort before every tensor name).
"""

from __future__ import annotations

import math

from jaxmeta._errors import CheckpointError
from jaxmeta.proto import checkpoint_pb2

FULL = -1

Slice = tuple[tuple[int, int], ...]


def parse_shape_and_slice(spec: str, *, where: str) -> tuple[tuple[int, ...], Slice] | None:
    """Parses `"10 4 0,5:0,4"` (full shape, then the slice); `""` (a whole tensor) gives None.

    Raises:
        CheckpointError: when the string is malformed or the slice falls outside the shape.
    """
    spec = spec.strip()
    if not spec:
        return None
    parts = spec.split(" ")
    try:
        shape = tuple(int(p) for p in parts[:-1])
        extents = parse_slice(parts[-1])
    except ValueError:
        raise CheckpointError(
            f"{where}: malformed shape_and_slice {spec!r}; expected 'D0 D1 ... start,length:...'"
        ) from None
    if len(extents) != len(shape) or any(d < 0 for d in shape):
        raise CheckpointError(f"{where}: shape_and_slice {spec!r} has a slice of the wrong rank")
    return shape, check(extents, shape, where=where)


def parse_slice(text: str) -> Slice:
    """Parses `"0,5:-"`; raises ValueError when malformed."""
    if text == "":
        return ()
    extents = []
    for part in text.split(":"):
        if part == "-":
            extents.append((0, FULL))
            continue
        start, length = part.split(",")
        start_i, length_i = int(start), int(length)
        if start_i < 0 or length_i < 0:
            raise ValueError(part)
        extents.append((start_i, length_i))
    return tuple(extents)


def format_slice(extents: Slice) -> str:
    return ":".join("-" if length == FULL else f"{start},{length}" for start, length in extents)


def shape_and_slice_string(shape, extents: Slice) -> str:
    return " ".join(str(int(d)) for d in shape) + " " + format_slice(extents)


def check(extents: Slice, shape, *, where: str) -> Slice:
    """Checks a slice against a full shape; returns it with full extents made explicit."""
    if len(extents) != len(shape):
        raise CheckpointError(f"{where}: slice {format_slice(extents)!r} does not have rank {len(shape)}")
    out = []
    for (start, length), dim in zip(extents, shape):
        if length == FULL:
            start, length = 0, dim
        if start < 0 or length < 0 or start + length > dim:
            raise CheckpointError(
                f"{where}: slice {format_slice(extents)!r} falls outside the tensor shape {list(shape)}"
            )
        out.append((start, length))
    return tuple(out)


def from_proto(proto: checkpoint_pb2.TensorSliceProto) -> Slice:
    return tuple((e.start, e.length if e.HasField("length") else FULL) for e in proto.extent)


def to_proto(extents: Slice) -> checkpoint_pb2.TensorSliceProto:
    proto = checkpoint_pb2.TensorSliceProto()
    for start, length in extents:
        ext = proto.extent.add()
        if length != FULL or start != 0:
            ext.start = start
        if length != FULL:
            ext.length = length
    return proto


def slice_shape(extents: Slice) -> tuple[int, ...]:
    return tuple(length for _, length in extents)


def num_elements(extents: Slice) -> int:
    return math.prod(length for _, length in extents)


def index(extents: Slice) -> tuple[slice, ...]:
    """NumPy index of a (checked, explicit) slice."""
    return tuple(slice(start, start + length) for start, length in extents)


# --- OrderedCode (tensorflow/core/lib/strings/ordered_code.cc), encoding only --------------------

_HEADER_BITS = [(0, 0), (0x80, 0), (0xC0, 0), (0xE0, 0), (0xF0, 0), (0xF8, 0), (0xFC, 0), (0xFE, 0),
                (0xFF, 0), (0xFF, 0x80), (0xFF, 0xC0)]  # fmt: skip


def _num_increasing(value: int) -> bytes:
    body = value.to_bytes((value.bit_length() + 7) // 8, "big") if value else b""
    return bytes([len(body)]) + body


def _string(value: bytes) -> bytes:
    return _escape(value) + b"\x00\x01"


def _escape(value: bytes) -> bytes:
    out = bytearray()
    for b in value:
        if b == 0x00:
            out += b"\x00\xff"
        elif b == 0xFF:
            out += b"\xff\x00"
        else:
            out.append(b)
    return bytes(out)


def _signed_num_increasing(value: int) -> bytes:
    x = ~value if value < 0 else value
    if x < 64:
        return bytes([(0x80 ^ value) & 0xFF])
    length = x.bit_length() // 7 + 1
    buf = bytearray(value.to_bytes(10, "big", signed=True))
    begin = 10 - length
    buf[begin] ^= _HEADER_BITS[length][0]
    buf[begin + 1] ^= _HEADER_BITS[length][1]
    return bytes(buf[begin:])


def encode_key(name: str, extents: Slice) -> bytes:
    """TF's EncodeTensorNameSlice: the table key of one saved slice of tensor `name`."""
    out = bytearray(_num_increasing(0))
    out += _string(name.encode())
    out += _num_increasing(len(extents))
    for start, length in extents:
        out += _signed_num_increasing(start)
        out += _signed_num_increasing(length)
    return bytes(out)
