"""LevelDB-style tables: byte-exact writing, strict reading, every corruption detected."""

from __future__ import annotations

import struct

import pytest

from jaxmeta import CheckpointError
from jaxmeta.checkpoint import _crc32c, _sstable
from jaxmeta.checkpoint._sstable import Table, build_table

from ._common import FIXTURES

INDEX = FIXTURES / "v2_tf1" / "model.ckpt-7.index"


def _items(n):
    return [(f"layer{i // 7:03d}/weights/part_{i:05d}".encode(), bytes([i % 251]) * (i % 50)) for i in range(n)]


def test_roundtrip_many_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(_sstable, "BLOCK_SIZE", 512)  # force many data blocks and index entries
    items = _items(500)
    data = build_table(items)
    path = tmp_path / "t"
    path.write_bytes(data)
    table = Table(str(path))
    assert [(k, bytes(v)) for k, v in table.entries.items()] == items


def test_empty_table(tmp_path):
    path = tmp_path / "t"
    path.write_bytes(build_table([]))
    assert Table(str(path)).entries == {}


def test_writes_what_tensorflow_writes():
    original = INDEX.read_bytes()
    table = Table(str(INDEX))
    assert build_table((k, bytes(v)) for k, v in table.entries.items()) == original


def test_keys_must_increase():
    with pytest.raises(ValueError, match="strictly increasing"):
        build_table([(b"b", b""), (b"a", b"")])


def test_wrong_magic(tmp_path):
    data = bytearray(INDEX.read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / "t").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="magic"):
        Table(str(tmp_path / "t"))


@pytest.mark.parametrize("length", [0, 1, 47, 48, 100])
def test_truncated(tmp_path, length):
    (tmp_path / "t").write_bytes(INDEX.read_bytes()[:length])
    with pytest.raises(CheckpointError, match=str(tmp_path / "t")):
        Table(str(tmp_path / "t"))


def test_every_truncation_detected(tmp_path):
    data = INDEX.read_bytes()
    path = tmp_path / "t"
    for length in range(len(data)):
        path.write_bytes(data[:length])
        with pytest.raises(CheckpointError):
            Table(str(path))


def test_every_byte_flip_detected(tmp_path):
    data = INDEX.read_bytes()
    path = tmp_path / "t"
    for pos in range(len(data)):
        for mask in (0x01, 0x80):
            corrupt = bytearray(data)
            corrupt[pos] ^= mask
            path.write_bytes(bytes(corrupt))
            with pytest.raises(CheckpointError):
                Table(str(path))


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="cannot read"):
        Table(str(tmp_path / "nope"))


def _snappy_literal(raw: bytes) -> bytes:
    out = bytearray()
    _sstable.put_varint(out, len(raw))
    out.append((len(raw) - 1) << 2 if len(raw) <= 60 else 60 << 2)
    if len(raw) > 60:
        out.append(len(raw) - 1)
    return bytes(out) + raw


def test_snappy_decompress():
    assert _sstable.snappy_decompress(_snappy_literal(b"hello")) == b"hello"
    # "abcd" literal then a copy (1-byte offset 4, length 8) -> "abcdabcdabcd"
    stream = bytes([12, (3 << 2) | 0]) + b"abcd" + bytes([((8 - 4) << 2) | 1, 4])
    assert _sstable.snappy_decompress(stream) == b"abcd" * 3
    with pytest.raises(ValueError):
        _sstable.snappy_decompress(bytes([12, (3 << 2) | 0]) + b"abcd" + bytes([((8 - 4) << 2) | 1, 9]))
    with pytest.raises(ValueError):
        _sstable.snappy_decompress(bytes([200, 1]))


def test_reads_snappy_blocks(tmp_path):
    """Tables written with snappy compression (old TF defaults) read the same."""
    plain = build_table([(b"a", b"1"), (b"b", b"22")])
    table = Table("plain", data=plain)
    # Rebuild the file with its data block snappy-compressed (literal-only stream).
    meta_off, meta_size, _, _ = _handles(plain)
    block = plain[:meta_off - 5]
    compressed = _snappy_literal(block)
    out = bytearray(compressed + b"\x01")
    out += struct.pack("<I", _crc32c.mask(_crc32c.value(compressed + b"\x01")))
    handle = bytearray()
    _sstable.put_varint(handle, 0)
    _sstable.put_varint(handle, len(compressed))
    meta_block = plain[meta_off : meta_off + meta_size + 5]
    new_meta_off = len(out)
    out += meta_block
    index_block = _sstable._BlockBuilder(1)
    index_block.add(b"c", bytes(handle))
    contents = index_block.finish()
    new_index_off = len(out)
    out += contents + b"\x00" + struct.pack("<I", _crc32c.mask(_crc32c.value(contents + b"\x00")))
    footer = bytearray()
    for v in (new_meta_off, meta_size, new_index_off, len(contents)):
        _sstable.put_varint(footer, v)
    footer += b"\0" * (40 - len(footer)) + struct.pack("<Q", _sstable.MAGIC)
    out += footer
    assert {k: bytes(v) for k, v in Table("s", data=bytes(out)).entries.items()} == {
        k: bytes(v) for k, v in table.entries.items()
    }


def _handles(data: bytes):
    pos = len(data) - 48
    values = []
    for _ in range(4):
        v, pos = _sstable.get_varint(data, pos, len(data))
        values.append(v)
    return values


def test_varint_errors():
    with pytest.raises(ValueError):
        _sstable.get_varint(b"\x80\x80", 0, 2)
    with pytest.raises(ValueError):
        _sstable.get_varint(b"\xff" * 11, 0, 11)
    assert _sstable.get_varint(b"\xac\x02", 0, 2) == (300, 2)
