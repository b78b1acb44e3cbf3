"""Writes V2 checkpoints that TensorFlow reads back bit-exactly.

Both files are written under temporary names, flushed to disk, then renamed (data first, index
last), so a save that dies half-way leaves any earlier checkpoint with the same prefix intact and
never leaves an index pointing at missing bytes. The index is byte-for-byte what TF's BundleWriter
writes for the same tensors.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

from jaxmeta import _dtypes
from jaxmeta._errors import CheckpointError
from jaxmeta._tensor_util import shape_to_proto as _shape_proto
from jaxmeta.checkpoint import _bundle, _crc32c, _slices
from jaxmeta.checkpoint._sstable import build_table
from jaxmeta.proto import checkpoint_pb2, types_pb2


class SliceValue(NamedTuple):
    """One saved slice of a partitioned tensor: the full shape, the slice, the slice's values."""

    full_shape: tuple[int, ...]
    extents: _slices.Slice
    value: np.ndarray


TensorValue = np.ndarray | Sequence[SliceValue]


def _as_array(value, dtype_enum: int | None, *, where: str) -> tuple[np.ndarray, int]:
    arr = np.asarray(value)
    if dtype_enum is None:
        dtype_enum = _dtypes.from_numpy(arr.dtype)
    if dtype_enum == types_pb2.DT_STRING:
        return np.asarray(arr, dtype=object), dtype_enum
    target = _dtypes.to_numpy(dtype_enum, where=where)
    if arr.dtype != target:
        if arr.dtype.kind in "iu" and target.kind in "iu":
            info = np.iinfo(target)
            if arr.size and (arr.min() < info.min or arr.max() > info.max):
                raise CheckpointError(f"{where}: values do not fit {target}; refusing to save them wrapped")
        arr = arr.astype(target)
    return (arr if arr.flags.c_contiguous else arr.copy(order="C")), dtype_enum


class _DataFile:
    def __init__(self, path: str):
        self.path = path
        self.f = open(path, "wb")
        self.offset = 0

    def append(self, key: str, arr: np.ndarray, dtype_enum: int) -> checkpoint_pb2.BundleEntryProto:
        entry = checkpoint_pb2.BundleEntryProto(dtype=dtype_enum, offset=self.offset)
        entry.shape.CopyFrom(_shape_proto(arr.shape))
        if dtype_enum == types_pb2.DT_STRING:
            data, crc = _bundle.encode_strings(arr.reshape(-1))
            self.f.write(data)
            size = len(data)
        else:
            if arr.dtype.byteorder == ">":
                arr = arr.astype(arr.dtype.newbyteorder("<"))
            raw = arr.reshape(-1).view(np.uint8)
            self.f.write(memoryview(raw))
            crc = _crc32c.value(raw)
            size = raw.size
        entry.size = size
        entry.crc32c = _crc32c.mask(crc)
        self.offset += size
        return entry


def write_checkpoint(
    prefix: str,
    tensors: Mapping[str, TensorValue],
    *,
    dtypes: Mapping[str, int] | None = None,
    on_done: Callable[[str, int], None] | None = None,
) -> str:
    """Writes a single-shard V2 checkpoint (`PREFIX.index`, `PREFIX.data-00000-of-00001`).

    Args:
        prefix: the checkpoint prefix; its directory is created if needed.
        tensors: checkpoint key -> array (NumPy, JAX, anything `np.asarray` takes; strings as
            bytes/str object arrays), or a list of `SliceValue` for a partitioned tensor.
        dtypes: optional key -> TF DataType enum to store (values are cast, integer overflow refused).
        on_done: called with (key, bytes) after each tensor, e.g. for a progress bar.

    Returns:
        The prefix.

    Raises:
        CheckpointError: for values that do not fit their dtype, or slices that do not tile.
    """
    prefix = os.fspath(prefix)
    directory = os.path.dirname(prefix)
    if directory:
        os.makedirs(directory, exist_ok=True)
    token = secrets.token_hex(8)
    final_data = _bundle.data_path(prefix, 0, 1)
    final_index = _bundle.index_path(prefix)
    tmp_data = f"{final_data}.tempstate{token}"
    tmp_index = f"{final_index}.tempstate{token}"
    dtypes = dtypes or {}
    entries: dict[bytes, bytes] = {b"": _bundle.header_proto(1).SerializeToString()}
    try:
        data = _DataFile(tmp_data)
        try:
            for key in sorted(tensors):
                where = f"checkpoint {prefix}, tensor {key!r}"
                value = tensors[key]
                if isinstance(value, (list, tuple)) and value and isinstance(value[0], SliceValue):
                    full, pieces = _write_sliced(data, key, value, dtypes.get(key), where)
                    entries[key.encode()] = full
                    entries.update(pieces)
                else:
                    arr, enum = _as_array(value, dtypes.get(key), where=where)
                    entries[key.encode()] = data.append(key, arr, enum).SerializeToString()
                if on_done is not None:
                    on_done(key, data.offset)
            data.f.flush()
            os.fsync(data.f.fileno())
        finally:
            data.f.close()
        index_bytes = build_table(sorted(entries.items()))
        with open(tmp_index, "wb") as f:
            f.write(index_bytes)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_data, final_data)
        os.replace(tmp_index, final_index)
    except BaseException:
        for path in (tmp_data, tmp_index):
            if os.path.exists(path):
                os.unlink(path)
        raise
    _fsync_dir(directory or ".")
    return prefix


def _write_sliced(data: _DataFile, key: str, slices: Sequence[SliceValue], dtype_enum, where):
    """Appends each slice; returns the full entry and {slice key: slice entry}, serialized."""
    full_shape = tuple(int(d) for d in slices[0].full_shape)
    full = checkpoint_pb2.BundleEntryProto()
    full.shape.CopyFrom(_shape_proto(full_shape))
    plan = []
    for piece in slices:
        if tuple(piece.full_shape) != full_shape:
            raise CheckpointError(f"{where}: slices disagree on the full shape")
        extents = _slices.check(piece.extents, full_shape, where=where)
        arr, enum = _as_array(piece.value, dtype_enum, where=where)
        if arr.shape != _slices.slice_shape(extents):
            raise CheckpointError(
                f"{where}: slice {_slices.format_slice(piece.extents)!r} needs shape "
                f"{list(_slices.slice_shape(extents))}, got {list(arr.shape)}"
            )
        dtype_enum = enum
        plan.append((piece.extents, extents, arr))
    _bundle.check_cover([(ext, None) for _, ext, _ in plan], full_shape, where)
    full.dtype = dtype_enum
    out = {}
    for raw_extents, _, arr in plan:
        entry = data.append(key, arr, dtype_enum)
        out[_slices.encode_key(key, raw_extents)] = entry.SerializeToString()
        full.slices.add().CopyFrom(_slices.to_proto(raw_extents))
    return full.SerializeToString(), out


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
