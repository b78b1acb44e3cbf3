"""CRC-32C (Castagnoli), the checksum of TensorFlow's tables and tensor bundles.

The fast path calls the C library that ships inside the `google-crc32c` wheel through ctypes, so a
NumPy buffer or a memory map is checksummed in place (the wheel's own Python API only takes `bytes`,
which would cost a copy of every tensor) and without holding the GIL. Without that wheel a NumPy
implementation that runs many lanes of the byte-wise algorithm side by side and combines them with
GF(2) matrix shifts takes over: correct, but some 60 times slower (0.2 against 13 GB/s on one
core of a 2-core Xeon VM; restores of ResNet-50's checkpoint on a 16-core GPU host: 0.03 against 3.3
GB/s), so it warns once when it checksums a large buffer.
"""

from __future__ import annotations

import ctypes
import glob
import os
import warnings

import numpy as np

_POLY = 0x82F63B78  # reflected Castagnoli polynomial
_MASK_DELTA = 0xA282EAD8
_U32 = 0xFFFFFFFF


def _make_table() -> np.ndarray:
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(_POLY), table >> 1).astype(np.uint32)
    return table


_TABLE = _make_table()
_TABLE_LIST = [int(v) for v in _TABLE]


def _load_native():
    """The `crc32c_extend` symbol of the C library bundled with google-crc32c, or None."""
    try:
        import google_crc32c
    except ImportError:
        return None
    pkg = os.path.dirname(google_crc32c.__file__)
    candidates = glob.glob(os.path.join(pkg, "..", "google_crc32c.libs", "libcrc32c*"))
    candidates += glob.glob(os.path.join(pkg, "..", "google_crc32c*.dylibs", "libcrc32c*"))
    candidates += glob.glob(os.path.join(pkg, "libcrc32c*"))
    for path in candidates:
        try:
            lib = ctypes.CDLL(path)
            fn = lib.crc32c_extend
        except (OSError, AttributeError):
            continue
        fn.restype = ctypes.c_uint32
        fn.argtypes = [ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t]
        if fn(0, b"123456789", 9) == 0xE3069283:
            return fn
    return None


_native = _load_native()

if _native is not None:
    IMPLEMENTATION = "native"
else:
    try:  # the wheel's Python API (copies non-bytes input) when its library file was not found
        import google_crc32c as _gcrc

        IMPLEMENTATION = "google_crc32c" if _gcrc.implementation == "c" else "numpy"
    except ImportError:
        _gcrc = None
        IMPLEMENTATION = "numpy"


# Buffers this large checksummed by the NumPy fallback get the warning (once per process).
_WARN_BYTES = 8 << 20
_warned = False


def _slow_path(crc: int, arr: np.ndarray) -> int:
    global _warned
    if not _warned and arr.size >= _WARN_BYTES:
        _warned = True
        warnings.warn(
            "jaxmeta checksums checkpoints with its NumPy CRC-32C, some 60 times slower than the C "
            "library, because the google-crc32c wheel (a jaxmeta dependency) is not installed or "
            "its library was not found: `pip install google-crc32c` to restore and save at full "
            "speed",
            RuntimeWarning,
            stacklevel=3,
        )
    return _numpy_extend(crc, arr)


def _as_uint8(data) -> np.ndarray:
    if isinstance(data, np.ndarray):
        arr = data if data.flags.c_contiguous else np.ascontiguousarray(data)
        return arr.reshape(-1).view(np.uint8)
    return np.frombuffer(data, dtype=np.uint8)


def extend(crc: int, data) -> int:
    """Extends a CRC-32C over more bytes (`crc` 0 starts a new checksum).

    Args:
        crc: the checksum of the bytes before `data`.
        data: bytes, bytearray, memoryview, mmap or a (contiguous) NumPy array, read in place.

    Returns:
        The checksum of the concatenation, as an unsigned 32-bit int.
    """
    if _native is not None and type(data) is np.ndarray and data.flags.c_contiguous:
        return int(_native(crc, data.ctypes.data, data.nbytes))  # a tensor read from a checkpoint
    if isinstance(data, bytes):
        if _native is not None:
            return int(_native(crc, data, len(data)))
        if IMPLEMENTATION == "google_crc32c":
            return int(_gcrc.extend(crc, data))
        return _slow_path(crc, np.frombuffer(data, dtype=np.uint8))
    arr = _as_uint8(data)
    if arr.size == 0:
        return crc & _U32
    if _native is not None:
        return int(_native(crc, arr.ctypes.data, arr.size))
    if IMPLEMENTATION == "google_crc32c":
        return int(_gcrc.extend(crc, arr.tobytes()))
    return _slow_path(crc, arr)


def value(data) -> int:
    """CRC-32C of `data` (see `extend`)."""
    return extend(0, data)


def mask(crc: int) -> int:
    """TensorFlow's masked form of a CRC, stored so a CRC of data containing CRCs stays strong."""
    crc &= _U32
    return ((((crc >> 15) | (crc << 17)) & _U32) + _MASK_DELTA) & _U32


def unmask(masked: int) -> int:
    """Inverse of `mask`."""
    rot = (masked - _MASK_DELTA) & _U32
    return ((rot >> 17) | (rot << 15)) & _U32


# --- NumPy fallback ----------------------------------------------------------------------------


def _scalar_raw(state: int, data) -> int:
    """Advances the raw (un-inverted) CRC register over `data` one byte at a time."""
    table = _TABLE_LIST
    for b in bytes(data):
        state = table[(state ^ b) & 0xFF] ^ (state >> 8)
    return state


def _zeros_operator(nbytes: int) -> list[int]:
    """Columns of the GF(2) matrix that advances a raw CRC register over `nbytes` zero bytes."""
    cols = [_scalar_raw(1 << i, b"\0") for i in range(32)]  # one zero byte
    result = [1 << i for i in range(32)]  # identity
    while nbytes:
        if nbytes & 1:
            result = [_apply(cols, r) for r in result]
        cols = [_apply(cols, c) for c in cols]
        nbytes >>= 1
    return result


def _apply(cols: list[int], v: int) -> int:
    out = 0
    i = 0
    while v:
        if v & 1:
            out ^= cols[i]
        v >>= 1
        i += 1
    return out


def _apply_vec(cols: list[int], v: np.ndarray) -> np.ndarray:
    out = np.zeros_like(v)
    for i, col in enumerate(cols):
        out ^= ((v >> np.uint32(i)) & np.uint32(1)) * np.uint32(col)
    return out


def _numpy_extend(crc: int, data: np.ndarray) -> int:
    state = (~crc) & _U32
    n = data.size
    lanes = 1 << max(0, min(16, (n // 256).bit_length() - 1))
    if lanes < 64:
        return (~_scalar_raw(state, data)) & _U32
    length = n // lanes
    main = data[: lanes * length].reshape(lanes, length)
    raw = np.zeros(lanes, dtype=np.uint32)
    table = _TABLE
    for j in range(length):
        raw = table[(raw ^ main[:, j]) & np.uint32(0xFF)] ^ (raw >> np.uint32(8))
    # Combine the lanes pairwise: raw(A || B) = shift(raw(A), len(B)) ^ raw(B).
    seg = length
    while raw.size > 1:
        op = _zeros_operator(seg)
        raw = _apply_vec(op, raw[0::2]) ^ raw[1::2]
        seg *= 2
    state = _apply(_zeros_operator(lanes * length), state) ^ int(raw[0])
    state = _scalar_raw(state, data[lanes * length :])
    return (~state) & _U32
