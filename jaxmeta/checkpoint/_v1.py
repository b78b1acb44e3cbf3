"""V1 checkpoints: SavedTensorSlices tables (TF's tensor_slice_reader.cc), one file or several.

Each file is a table. Under the empty key, a SavedTensorSlices with `meta` lists every tensor (name,
shape, dtype, the slices this file holds); every other key is `_slices.encode_key(name, slice)` and
holds a SavedTensorSlices whose `data` carries the slice's values as a TensorProto (typed repeated
fields, or `tensor_content`). A tensor may be split over several files, as sharded V1 savers did.
"""

from __future__ import annotations

import glob
import math
import os

import numpy as np

from jaxmeta import _dtypes, _tensor_util
from jaxmeta._errors import CheckpointError, GraphError
from jaxmeta.checkpoint import _slices
from jaxmeta.checkpoint._sstable import Table
from jaxmeta.proto import checkpoint_pb2, types_pb2

# TF's kTensorSliceVersion / kTensorSliceMinConsumer.
_VERSION = 1


def matching_files(pattern: str) -> list[str]:
    """The V1 files a prefix names: the file itself, else the files its glob pattern matches."""
    if os.path.isfile(pattern):
        return [pattern]
    return sorted(p for p in glob.glob(pattern) if os.path.isfile(p))


def is_v1_table(path: str) -> bool:
    """Whether `path` is a file ending in the table magic (cheap: reads 8 bytes)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() < 48:
                return False
            f.seek(-8, os.SEEK_END)
            return f.read(8) == (0xDB4775248B80FB57).to_bytes(8, "little")
    except OSError:
        return False


class _Tensor:
    def __init__(self, name: str, shape: tuple[int, ...], dtype: int):
        self.name = name
        self.shape = shape
        self.dtype = dtype
        self.slices: list[tuple[_slices.Slice, Table, _slices.Slice]] = []  # checked, table, as stored


class V1Reader:
    """Reads the tensors of a V1 checkpoint (one file, or the files a glob pattern matches).

    Raises:
        CheckpointError: when no file matches, or a file is corrupt or inconsistent with the others.
    """

    def __init__(self, pattern: str):
        self.prefix = pattern
        files = matching_files(pattern)
        if not files:
            raise CheckpointError(f"no V1 checkpoint file matches {pattern!r}")
        self.files = files
        self.tensors: dict[str, _Tensor] = {}
        for path in files:
            table = Table(path)
            raw = table.entries.get(b"")
            meta_msg = checkpoint_pb2.SavedTensorSlices()
            try:
                if raw is None:
                    raise ValueError
                meta_msg.ParseFromString(bytes(raw))
            except Exception:
                raise CheckpointError(f"{path}: no readable tensor-slice metadata; not a V1 checkpoint") from None
            versions = meta_msg.meta.versions
            if versions.min_consumer > _VERSION or _VERSION in versions.bad_consumers:
                raise CheckpointError(f"{path} was written by a newer TensorFlow than jaxmeta can read")
            for tmeta in meta_msg.meta.tensor:
                self._add(path, table, tmeta)

    def _add(self, path: str, table: Table, tmeta: checkpoint_pb2.SavedSliceMeta) -> None:
        where = f"{path}, tensor {tmeta.name!r}"
        shape = _tensor_util.shape_from_proto(tmeta.shape)
        if shape is None or any(d < 0 for d in shape) or math.prod(shape) > 1 << 62:
            raise CheckpointError(f"{where}: unknown or absurd stored shape; the file is corrupt")
        tensor = self.tensors.get(tmeta.name)
        if tensor is None:
            tensor = self.tensors[tmeta.name] = _Tensor(tmeta.name, shape, tmeta.type)
        elif tensor.shape != shape or tensor.dtype != tmeta.type:
            raise CheckpointError(f"{where}: shape or dtype differs between the checkpoint's files")
        for proto in tmeta.slice:
            extents = _slices.from_proto(proto)
            if not extents and shape:  # an empty slice proto means the whole tensor
                extents = tuple((0, _slices.FULL) for _ in shape)
            tensor.slices.append((_slices.check(extents, shape, where=where), table, extents))

    def names(self) -> list[str]:
        return sorted(self.tensors)

    def _tensor(self, name: str) -> _Tensor:
        try:
            return self.tensors[name]
        except KeyError:
            raise CheckpointError(f"tensor {name!r} is not in checkpoint {self.prefix}") from None

    def shape(self, name: str) -> tuple[int, ...]:
        return self._tensor(name).shape

    def dtype_enum(self, name: str) -> int:
        return self._tensor(name).dtype

    def nbytes(self, name: str) -> int:
        t = self._tensor(name)
        return math.prod(t.shape) * (_dtypes.to_numpy(t.dtype).itemsize if t.dtype != types_pb2.DT_STRING else 1)

    def read(self, name: str) -> np.ndarray:
        """The tensor `name`, reassembled from its slices."""
        t = self._tensor(name)
        where = f"checkpoint {self.prefix}, tensor {name!r}"
        try:
            dtype = _dtypes.to_numpy(t.dtype, where=where)
        except GraphError:
            raise CheckpointError(f"{where}: dtype {_dtypes.name(t.dtype)} cannot be read by jaxmeta") from None
        total = math.prod(t.shape)
        covered = sum(_slices.num_elements(ext) for ext, _, _ in t.slices)
        if covered != total:
            raise CheckpointError(f"{where}: the stored slices cover {covered} of {total} elements")
        records = []
        for extents, table, raw_extents in t.slices:
            key = _slices.encode_key(name, raw_extents)
            raw = table.entries.get(key)
            if raw is None:
                raise CheckpointError(f"{where}: slice {_slices.format_slice(raw_extents)!r} is missing from "
                                      f"{table.path}")
            # Every stored value takes at least one byte, so a record this short cannot fill the slice:
            # refuse before allocating what the declared shape promises.
            if _slices.num_elements(extents) > len(raw):
                raise CheckpointError(
                    f"{where}: slice {_slices.format_slice(raw_extents)!r} claims {_slices.num_elements(extents)} "
                    f"values but its record in {table.path} holds {len(raw)} bytes; the file is corrupt"
                )
            records.append((extents, table, raw))
        out = np.empty(t.shape, dtype=dtype) if dtype.kind != "O" else np.full(t.shape, b"", dtype=object)
        for extents, table, raw in records:
            msg = checkpoint_pb2.SavedTensorSlices()
            try:
                msg.ParseFromString(bytes(raw))
            except Exception:
                raise CheckpointError(f"{where}: the slice record in {table.path} does not parse") from None
            if msg.data.name != name:
                raise CheckpointError(f"{where}: the slice record in {table.path} is for {msg.data.name!r}")
            shape = _slices.slice_shape(extents)
            out[_slices.index(extents)] = _decode(msg.data.data, t.dtype, shape, where=f"{where} in {table.path}")
        return out


def _decode(proto, dtype_enum: int, shape: tuple[int, ...], *, where: str) -> np.ndarray:
    """Values of one stored slice; their count must match the slice exactly (no TF fill rules)."""
    count = math.prod(shape)
    field = _tensor_util._TYPED_FIELD.get(_dtypes.base_enum(dtype_enum))
    if not proto.tensor_content:
        have = len(getattr(proto, field)) if field else 0
        want = 2 * count if dtype_enum in (types_pb2.DT_COMPLEX64, types_pb2.DT_COMPLEX128) else count
        if have != want:
            raise CheckpointError(f"{where}: {have} values stored for a slice of shape {list(shape)}")
    fixed = type(proto)()
    fixed.CopyFrom(proto)
    fixed.dtype = dtype_enum
    fixed.tensor_shape.CopyFrom(_tensor_util.shape_to_proto(shape))
    try:
        return _tensor_util.to_numpy(fixed, where=where)
    except GraphError as e:
        raise CheckpointError(str(e)) from None
