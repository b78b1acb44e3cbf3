"""TensorFlow DataType enum values <-> NumPy dtypes."""

from __future__ import annotations

import ml_dtypes
import numpy as np

from jaxmeta._errors import GraphError, PrecisionError
from jaxmeta.proto import types_pb2

REF_OFFSET = 100

_TO_NUMPY: dict[int, np.dtype] = {
    types_pb2.DT_FLOAT: np.dtype(np.float32),
    types_pb2.DT_DOUBLE: np.dtype(np.float64),
    types_pb2.DT_INT32: np.dtype(np.int32),
    types_pb2.DT_UINT8: np.dtype(np.uint8),
    types_pb2.DT_INT16: np.dtype(np.int16),
    types_pb2.DT_INT8: np.dtype(np.int8),
    types_pb2.DT_STRING: np.dtype(object),
    types_pb2.DT_COMPLEX64: np.dtype(np.complex64),
    types_pb2.DT_INT64: np.dtype(np.int64),
    types_pb2.DT_BOOL: np.dtype(np.bool_),
    types_pb2.DT_QINT8: np.dtype(np.int8),
    types_pb2.DT_QUINT8: np.dtype(np.uint8),
    types_pb2.DT_QINT32: np.dtype(np.int32),
    types_pb2.DT_BFLOAT16: np.dtype(ml_dtypes.bfloat16),
    types_pb2.DT_QINT16: np.dtype(np.int16),
    types_pb2.DT_QUINT16: np.dtype(np.uint16),
    types_pb2.DT_UINT16: np.dtype(np.uint16),
    types_pb2.DT_COMPLEX128: np.dtype(np.complex128),
    types_pb2.DT_HALF: np.dtype(np.float16),
    types_pb2.DT_UINT32: np.dtype(np.uint32),
    types_pb2.DT_UINT64: np.dtype(np.uint64),
    types_pb2.DT_FLOAT8_E5M2: np.dtype(ml_dtypes.float8_e5m2),
    types_pb2.DT_FLOAT8_E4M3FN: np.dtype(ml_dtypes.float8_e4m3fn),
    types_pb2.DT_FLOAT8_E4M3FNUZ: np.dtype(ml_dtypes.float8_e4m3fnuz),
    types_pb2.DT_FLOAT8_E4M3B11FNUZ: np.dtype(ml_dtypes.float8_e4m3b11fnuz),
    types_pb2.DT_FLOAT8_E5M2FNUZ: np.dtype(ml_dtypes.float8_e5m2fnuz),
    types_pb2.DT_INT4: np.dtype(ml_dtypes.int4),
    types_pb2.DT_UINT4: np.dtype(ml_dtypes.uint4),
}

# The first TF enum value wins for dtypes several values share (quantized types map to ints).
_FROM_NUMPY: dict[np.dtype, int] = {}
for _enum, _dt in sorted(_TO_NUMPY.items(), key=lambda kv: kv[0] in (11, 12, 13, 15, 16)):
    _FROM_NUMPY.setdefault(_dt, _enum)

RESOURCE = types_pb2.DT_RESOURCE
VARIANT = types_pb2.DT_VARIANT
STRING = types_pb2.DT_STRING


def base_enum(dtype_enum: int) -> int:
    """Strips the `_REF` part of a DataType enum value."""
    return dtype_enum - REF_OFFSET if dtype_enum > REF_OFFSET else dtype_enum


def is_ref(dtype_enum: int) -> bool:
    return dtype_enum > REF_OFFSET


def to_numpy(dtype_enum: int, *, where: str = "") -> np.dtype:
    """The NumPy dtype of a TF DataType enum value (ref types map to their base type).

    Raises:
        GraphError: for resource, variant and unknown types.
    """
    dt = _TO_NUMPY.get(base_enum(int(dtype_enum)))
    if dt is None:
        raise GraphError(f"{where}: DataType {name(dtype_enum)} has no array representation")
    return dt


def from_numpy(dtype) -> int:
    """The TF DataType enum value of a NumPy (or JAX) dtype."""
    dt = np.dtype(dtype)
    if dt.kind in "SUO":
        return types_pb2.DT_STRING
    try:
        return _FROM_NUMPY[dt]
    except KeyError:
        raise GraphError(f"dtype {dt} has no TensorFlow DataType") from None


def name(dtype_enum: int) -> str:
    """`DT_FLOAT`-style name of an enum value, or its number if unknown."""
    try:
        return types_pb2.DataType.Name(int(dtype_enum))
    except ValueError:
        return f"DataType({int(dtype_enum)})"


def short_name(dtype_enum: int) -> str:
    """TF's Python spelling: `float32`, `int64_ref`, `resource`."""
    base = base_enum(int(dtype_enum))
    if base == RESOURCE:
        text = "resource"
    elif base == VARIANT:
        text = "variant"
    elif base == STRING:
        text = "string"
    elif base in _TO_NUMPY:
        text = str(_TO_NUMPY[base])
    else:
        text = name(base)
    return text + ("_ref" if is_ref(dtype_enum) else "")


def canonical(value: np.ndarray, what: str) -> np.ndarray:
    """`value` in the dtype JAX holds it as (a copy only when the dtype changes); `what` names it.

    Raises:
        PrecisionError: integers that do not fit the 32-bit type JAX uses with x64 off.
    """
    import jax

    target = jax.dtypes.canonicalize_dtype(value.dtype)
    if target != value.dtype:
        if value.dtype.kind in "iu" and value.size:
            info = np.iinfo(target)
            if value.min() < info.min or value.max() > info.max:
                raise PrecisionError(
                    f"{what}: its {value.dtype} values do not fit {target}, the type JAX uses "
                    "with x64 off; enable it with jax.config.update('jax_enable_x64', True)"
                )
        with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf, as in JAX
            value = value.astype(target)
    return value
