"""LevelDB-style sorted string tables, the container of checkpoint `.index` files and V1 checkpoints.

Layout (TensorFlow's `lib/io/table`): data blocks, a metaindex block (empty in TF), an index block
whose values are handles of the data blocks, and a 48-byte footer (two block handles, zero padding,
magic). A block is a run of prefix-compressed entries (`varint shared, varint unshared, varint
value_len, key suffix, value`), an array of uint32 restart offsets, their count, and a 5-byte
trailer: the compression type and the masked CRC-32C of block contents plus that type byte.

The reader checks everything it can: magic, zero footer padding, the CRC of every block, that the
blocks tile the file exactly, strictly increasing keys, and every length against the bytes that are
there, so a corrupt or truncated file is a `CheckpointError`, never an `IndexError` or a huge
allocation.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable

from jaxmeta._errors import CheckpointError
from jaxmeta.checkpoint import _crc32c

MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
_HANDLE_MAX = 20  # two varint64
_TRAILER_SIZE = 5
_NO_COMPRESSION = 0
_SNAPPY = 1

# TensorFlow's table::Options defaults, so files we write match files TF writes byte for byte.
BLOCK_SIZE = 262144
RESTART_INTERVAL = 16


# --- varints -----------------------------------------------------------------------------------


def get_varint(buf, pos: int, end: int, *, limit_bits: int = 64) -> tuple[int, int]:
    """Decodes a little-endian base-128 varint at `pos`; raises ValueError when malformed."""
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise ValueError("varint runs past the end of its buffer")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            if b == 0 and shift:  # TF never writes overlong encodings; one here means corruption
                raise ValueError("non-canonical (overlong) varint")
            break
        shift += 7
        if shift >= limit_bits:
            raise ValueError("varint is too long")
    if result >> limit_bits:
        raise ValueError("varint overflows")
    return result, pos


def put_varint(out: bytearray, value: int) -> None:
    if value < 0:
        raise ValueError(f"varint of a negative number {value}")
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


# --- snappy (read only: TF writes tables uncompressed, old ones may not be) ---------------------


def snappy_decompress(data: bytes) -> bytes:
    """Decompresses a raw snappy block; ValueError on malformed input."""
    length, pos = get_varint(data, 0, len(data), limit_bits=32)
    if length > 64 * len(data) + 64:  # snappy cannot expand more than that
        raise ValueError(f"snappy block claims {length} bytes from {len(data)}")
    out = bytearray()
    n = len(data)
    while pos < n:
        tag = data[pos]
        pos += 1
        kind = tag & 3
        if kind == 0:
            size = tag >> 2
            if size >= 60:
                extra = size - 59
                if pos + extra > n:
                    raise ValueError("truncated snappy literal length")
                size = int.from_bytes(data[pos : pos + extra], "little")
                pos += extra
            size += 1
            if pos + size > n:
                raise ValueError("truncated snappy literal")
            out += data[pos : pos + size]
            pos += size
            continue
        if kind == 1:
            if pos + 1 > n:
                raise ValueError("truncated snappy copy")
            size = ((tag >> 2) & 7) + 4
            offset = ((tag >> 5) << 8) | data[pos]
            pos += 1
        else:
            width = 2 if kind == 2 else 4
            if pos + width > n:
                raise ValueError("truncated snappy copy")
            size = (tag >> 2) + 1
            offset = int.from_bytes(data[pos : pos + width], "little")
            pos += width
        if offset == 0 or offset > len(out):
            raise ValueError("snappy copy offset out of range")
        for _ in range(size):  # copies may overlap their own output
            out.append(out[-offset])
        if len(out) > length:
            raise ValueError("snappy output longer than declared")
    if len(out) != length:
        raise ValueError(f"snappy output is {len(out)} bytes, declared {length}")
    return bytes(out)


# --- reading -----------------------------------------------------------------------------------


class Table:
    """All entries of one table file, in key order, as memoryviews into the file's bytes.

    Args:
        path: the file (read whole; index files are small, and V1 checkpoints are read through).
        data: its bytes, when already in memory.

    Raises:
        CheckpointError: when the file is missing, truncated or corrupt.
    """

    def __init__(self, path: str, data: bytes | None = None):
        self.path = path
        if data is None:
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError as e:
                raise CheckpointError(f"cannot read table file {path}: {e}") from None
        self._data = data
        self._view = memoryview(data)
        self.entries: dict[bytes, memoryview] = {}
        self._load()

    def _error(self, what: str) -> CheckpointError:
        return CheckpointError(
            f"{self.path} is not a valid checkpoint table ({what}); the file is corrupt or truncated, "
            "re-copy or re-save the checkpoint"
        )

    def _load(self) -> None:
        data = self._data
        size = len(data)
        if size < FOOTER_SIZE:
            raise self._error(f"{size} bytes, shorter than the {FOOTER_SIZE}-byte footer")
        footer_at = size - FOOTER_SIZE
        (magic,) = struct.unpack_from("<Q", data, size - 8)
        if magic != MAGIC:
            raise self._error(f"bad magic number {magic:#018x}, expected {MAGIC:#018x}")
        try:
            meta_off, pos = get_varint(data, footer_at, footer_at + 40)
            meta_size, pos = get_varint(data, pos, footer_at + 40)
            index_off, pos = get_varint(data, pos, footer_at + 40)
            index_size, pos = get_varint(data, pos, footer_at + 40)
        except ValueError as e:
            raise self._error(f"footer: {e}") from None
        if any(data[pos : footer_at + 40]):
            raise self._error("footer padding is not zero")
        # TF writes data blocks, then the metaindex block, then the index block, back to back.
        if index_off + index_size + _TRAILER_SIZE != footer_at:
            raise self._error("the index block does not end at the footer")
        if meta_off + meta_size + _TRAILER_SIZE != index_off:
            raise self._error("the metaindex block does not end where the index block starts")
        meta = self._block(meta_off, meta_size, "metaindex block")
        if list(self._entries(meta, "metaindex block")):
            raise self._error("unexpected metaindex entries (filters are not written by TensorFlow)")
        index = self._block(index_off, index_size, "index block")
        expected_offset = 0
        last_key = None
        for _, handle in self._entries(index, "index block"):
            try:
                off, p = get_varint(handle, 0, len(handle))
                bsize, p = get_varint(handle, p, len(handle))
            except ValueError as e:
                raise self._error(f"index block: bad block handle: {e}") from None
            if p != len(handle):
                raise self._error("index block: trailing bytes after a block handle")
            if off != expected_offset:
                raise self._error(f"data block at offset {off}, expected {expected_offset}")
            if off + bsize + _TRAILER_SIZE > meta_off:
                raise self._error(f"data block at {off} of {bsize} bytes runs past the data area")
            expected_offset = off + bsize + _TRAILER_SIZE
            block = self._block(off, bsize, f"data block at offset {off}")
            for key, value in self._entries(block, f"data block at offset {off}"):
                if last_key is not None and key <= last_key:
                    raise self._error(f"keys out of order in data block at offset {off}")
                last_key = key
                self.entries[key] = value
        if expected_offset != meta_off:
            raise self._error("data blocks do not fill the file up to the metaindex block")

    def _block(self, offset: int, size: int, what: str) -> memoryview:
        end = offset + size
        if end + _TRAILER_SIZE > len(self._data):
            raise self._error(f"{what} at {offset} of {size} bytes runs past the end of the file")
        ctype = self._data[end]
        (stored,) = struct.unpack_from("<I", self._data, end + 1)
        actual = _crc32c.extend(0, self._view[offset : end + 1])
        if _crc32c.unmask(stored) != actual:
            raise self._error(f"checksum mismatch in {what}")
        contents = self._view[offset:end]
        if ctype == _NO_COMPRESSION:
            return contents
        if ctype == _SNAPPY:
            try:
                return memoryview(snappy_decompress(bytes(contents)))
            except ValueError as e:
                raise self._error(f"{what}: {e}") from None
        raise self._error(f"{what} has unknown compression type {ctype}")

    def _entries(self, block: memoryview, what: str) -> Iterable[tuple[bytes, memoryview]]:
        n = len(block)
        if n < 4:
            raise self._error(f"{what} is {n} bytes, too short for its restart count")
        (num_restarts,) = struct.unpack_from("<I", block, n - 4)
        if num_restarts > (n - 4) // 4:
            raise self._error(f"{what} claims {num_restarts} restart points in {n} bytes")
        limit = n - 4 - 4 * num_restarts
        restarts = struct.unpack_from(f"<{num_restarts}I", block, limit)
        if num_restarts == 0 and limit != 0:
            raise self._error(f"{what} has entries but no restart points")
        if limit == 0:
            if restarts not in ((), (0,)):
                raise self._error(f"{what}: restart points in an empty block")
            return
        restart_set = set(restarts)
        if any(r >= limit for r in restarts):
            raise self._error(f"{what}: restart point past the entries")
        seen_restarts = 0
        pos = 0
        key = b""
        while pos < limit:
            at_restart = pos in restart_set
            try:
                shared, pos = get_varint(block, pos, limit, limit_bits=32)
                unshared, pos = get_varint(block, pos, limit, limit_bits=32)
                vlen, pos = get_varint(block, pos, limit, limit_bits=32)
            except ValueError as e:
                raise self._error(f"{what}: {e}") from None
            if shared > len(key) or pos + unshared + vlen > limit:
                raise self._error(f"{what}: entry lengths run past the block")
            if at_restart:
                seen_restarts += 1
                if shared:
                    raise self._error(f"{what}: entry at a restart point shares a key prefix")
            key = key[:shared] + bytes(block[pos : pos + unshared])
            pos += unshared
            yield key, block[pos : pos + vlen]
            pos += vlen
        if seen_restarts != num_restarts or restarts[0] != 0:
            raise self._error(f"{what}: restart points do not fall on entry boundaries")


# --- writing -----------------------------------------------------------------------------------


def _shortest_separator(start: bytes, limit: bytes) -> bytes:
    """LevelDB's BytewiseComparator::FindShortestSeparator."""
    n = min(len(start), len(limit))
    i = 0
    while i < n and start[i] == limit[i]:
        i += 1
    if i >= n:
        return start
    byte = start[i]
    if byte < 0xFF and byte + 1 < limit[i]:
        return start[:i] + bytes([byte + 1])
    return start


def _short_successor(key: bytes) -> bytes:
    """LevelDB's BytewiseComparator::FindShortSuccessor."""
    for i, byte in enumerate(key):
        if byte != 0xFF:
            return key[:i] + bytes([byte + 1])
    return key


class _BlockBuilder:
    def __init__(self, restart_interval: int):
        self.interval = restart_interval
        self.reset()

    def reset(self) -> None:
        self.buf = bytearray()
        self.restarts = [0]
        self.counter = 0
        self.last_key = b""

    def add(self, key: bytes, value: bytes) -> None:
        shared = 0
        if self.counter < self.interval:
            n = min(len(self.last_key), len(key))
            while shared < n and self.last_key[shared] == key[shared]:
                shared += 1
        else:
            self.restarts.append(len(self.buf))
            self.counter = 0
        put_varint(self.buf, shared)
        put_varint(self.buf, len(key) - shared)
        put_varint(self.buf, len(value))
        self.buf += key[shared:]
        self.buf += value
        self.last_key = key
        self.counter += 1

    def size_estimate(self) -> int:
        return len(self.buf) + 4 * len(self.restarts) + 4

    def finish(self) -> bytes:
        out = self.buf + struct.pack(f"<{len(self.restarts)}I", *self.restarts)
        out += struct.pack("<I", len(self.restarts))
        return bytes(out)

    @property
    def empty(self) -> bool:
        return not self.buf


def build_table(items: Iterable[tuple[bytes, bytes]]) -> bytes:
    """Serializes sorted (key, value) pairs as an uncompressed table, exactly as TF's TableBuilder.

    Raises:
        ValueError: when the keys are not strictly increasing.
    """
    out = bytearray()
    data_block = _BlockBuilder(RESTART_INTERVAL)
    index_block = _BlockBuilder(1)
    last_key = None
    pending_handle = None

    def write_block(block: _BlockBuilder) -> bytes:
        contents = block.finish()
        handle = bytearray()
        put_varint(handle, len(out))
        put_varint(handle, len(contents))
        out.extend(contents)
        out.append(_NO_COMPRESSION)
        crc = _crc32c.extend(_crc32c.value(contents), b"\0")
        out.extend(struct.pack("<I", _crc32c.mask(crc)))
        block.reset()
        return bytes(handle)

    for key, value in items:
        if last_key is not None and key <= last_key:
            raise ValueError(f"table keys must be strictly increasing: {key!r} after {last_key!r}")
        if pending_handle is not None:
            index_block.add(_shortest_separator(last_key, key), pending_handle)
            pending_handle = None
        data_block.add(key, bytes(value))
        last_key = key
        if data_block.size_estimate() >= BLOCK_SIZE:
            pending_handle = write_block(data_block)
    if not data_block.empty:
        pending_handle = write_block(data_block)
    meta_handle = write_block(_BlockBuilder(RESTART_INTERVAL))
    if pending_handle is not None:
        index_block.add(_short_successor(last_key), pending_handle)
    index_handle = write_block(index_block)
    footer = bytearray(meta_handle + index_handle)
    footer += b"\0" * (2 * _HANDLE_MAX - len(footer))
    footer += struct.pack("<Q", MAGIC)
    out += footer
    return bytes(out)


def write_table(path: str, items: Iterable[tuple[bytes, bytes]]) -> None:
    """Writes `build_table(items)` to `path` (the caller handles temporary names)."""
    data = build_table(items)
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
