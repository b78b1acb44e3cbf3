"""TensorProto <-> NumPy, with every declared size checked before anything is allocated."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from jaxmeta import _dtypes
from jaxmeta._errors import GraphError
from jaxmeta.proto import tensor_pb2, tensor_shape_pb2, types_pb2

# A Const whose shape promises more than this, filled from a few repeated values, is refused
# (a hostile file could otherwise ask for terabytes with a dozen bytes). Constants carried as raw
# bytes are limited by the bytes actually present instead.
MAX_FILLED_BYTES = 1 << 32

_TYPED_FIELD = {
    types_pb2.DT_FLOAT: "float_val",
    types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_INT32: "int_val",
    types_pb2.DT_UINT8: "int_val",
    types_pb2.DT_INT16: "int_val",
    types_pb2.DT_INT8: "int_val",
    types_pb2.DT_UINT16: "int_val",
    types_pb2.DT_QINT8: "int_val",
    types_pb2.DT_QUINT8: "int_val",
    types_pb2.DT_QINT16: "int_val",
    types_pb2.DT_QUINT16: "int_val",
    types_pb2.DT_QINT32: "int_val",
    types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_BOOL: "bool_val",
    types_pb2.DT_UINT32: "uint32_val",
    types_pb2.DT_UINT64: "uint64_val",
    types_pb2.DT_HALF: "half_val",
    types_pb2.DT_BFLOAT16: "half_val",
    types_pb2.DT_COMPLEX64: "scomplex_val",
    types_pb2.DT_COMPLEX128: "dcomplex_val",
    types_pb2.DT_STRING: "string_val",
}


def shape_from_proto(shape: tensor_shape_pb2.TensorShapeProto) -> tuple[int, ...] | None:
    """Dims of a TensorShapeProto (`-1` for unknown ones), or None for unknown rank."""
    if shape.unknown_rank:
        return None
    return tuple(int(d.size) for d in shape.dim)


def shape_to_proto(shape: Sequence[int] | None) -> tensor_shape_pb2.TensorShapeProto:
    proto = tensor_shape_pb2.TensorShapeProto()
    if shape is None:
        proto.unknown_rank = True
    else:
        for d in shape:
            proto.dim.add().size = -1 if d is None else int(d)
    return proto


def num_elements(shape: Sequence[int], *, where: str) -> int:
    if any(d < 0 for d in shape):
        raise GraphError(f"{where}: tensor shape {list(shape)} has a negative or unknown dimension")
    return math.prod(shape)


def to_numpy(proto: tensor_pb2.TensorProto, *, where: str = "tensor") -> np.ndarray:
    """Converts a TensorProto into a NumPy array, as `tf.make_ndarray` does.

    Args:
        proto: the tensor.
        where: the node or tensor it belongs to, for error messages.

    Raises:
        GraphError: when the declared shape does not fit the values present, or is absurd.
    """
    shape = shape_from_proto(proto.tensor_shape) or ()
    count = num_elements(shape, where=where)
    dtype_enum = _dtypes.base_enum(proto.dtype)
    dtype = _dtypes.to_numpy(dtype_enum, where=where)

    if dtype_enum == types_pb2.DT_STRING:
        values = list(proto.string_val)
        return _fill(np.array(values, dtype=object) if values else np.array([], object), count, shape, where)

    if proto.tensor_content:
        raw = proto.tensor_content
        if len(raw) != count * dtype.itemsize:
            raise GraphError(
                f"{where}: tensor_content holds {len(raw)} bytes but shape {list(shape)} of "
                f"{dtype} needs {count * dtype.itemsize}"
            )
        return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype, copy=True).reshape(shape)

    if dtype_enum in (types_pb2.DT_FLOAT8_E5M2, types_pb2.DT_FLOAT8_E4M3FN) and proto.float8_val:
        values = np.frombuffer(proto.float8_val, dtype=np.uint8).view(dtype)
        return _fill(values, count, shape, where)

    field = _TYPED_FIELD.get(dtype_enum)
    if field is None:
        raise GraphError(f"{where}: cannot decode a TensorProto of type {_dtypes.name(dtype_enum)}")
    values = getattr(proto, field)
    if dtype_enum in (types_pb2.DT_HALF, types_pb2.DT_BFLOAT16):
        arr = np.array(values, dtype=np.uint16).view(dtype)
    elif dtype_enum in (types_pb2.DT_COMPLEX64, types_pb2.DT_COMPLEX128):
        if len(values) % 2:
            raise GraphError(f"{where}: {field} holds {len(values)} numbers; complex values take (real, imaginary) pairs")
        pairs = np.array(values, dtype=np.float64).reshape(-1, 2)
        arr = (pairs[:, 0] + 1j * pairs[:, 1]).astype(dtype)
    else:
        arr = np.array(values).astype(dtype)
    return _fill(arr, count, shape, where)


def _fill(values: np.ndarray, count: int, shape, where: str) -> np.ndarray:
    """TF's rule: fewer values than elements repeat the last one; none means zeros. An empty tensor
    ignores its values (`tf.zeros([0, 3], tf.string)` is a Const with one)."""
    if count == 0:
        return np.zeros(shape, values.dtype)
    if values.size > count:
        raise GraphError(f"{where}: {values.size} values for shape {list(shape)} ({count} elements)")
    if values.size == count:
        return values.reshape(shape)
    nbytes = count * max(values.dtype.itemsize, 1)
    if nbytes > MAX_FILLED_BYTES:
        raise GraphError(
            f"{where}: shape {list(shape)} promises {nbytes} bytes from {values.size} values; refusing "
            f"to allocate more than {MAX_FILLED_BYTES} bytes for a filled constant"
        )
    if values.dtype == object:
        out = np.full(count, values[-1] if values.size else b"", dtype=object)
    else:
        out = np.zeros(count, dtype=values.dtype)
        if values.size:
            out[: values.size] = values
            out[values.size :] = values[-1]
    return out.reshape(shape)


def from_numpy(value, dtype_enum: int | None = None) -> tensor_pb2.TensorProto:
    """Converts an array (or scalar) into a TensorProto, raw bytes for numeric types."""
    arr = np.asarray(value)
    enum = dtype_enum if dtype_enum is not None else _dtypes.from_numpy(arr.dtype)
    proto = tensor_pb2.TensorProto(dtype=enum, tensor_shape=shape_to_proto(arr.shape))
    if enum == types_pb2.DT_STRING:
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in arr.ravel())
    else:
        np_dtype = _dtypes.to_numpy(enum)
        proto.tensor_content = np.ascontiguousarray(arr, dtype=np_dtype.newbyteorder("<")).tobytes()
    return proto
