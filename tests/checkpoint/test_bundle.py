"""V2 tensor bundles: every dtype, slices, shards, and every kind of corruption."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

from jaxmeta import CheckpointError
from jaxmeta.checkpoint import _bundle, _crc32c
from jaxmeta.checkpoint._bundle import BundleReader
from jaxmeta.checkpoint._sstable import Table, build_table
from jaxmeta.proto import checkpoint_pb2

from ._common import FIXTURES, assert_same, copy_fixture, gen, tf_tensor

DTYPES = FIXTURES / "v2_dtypes" / "model.ckpt"


@pytest.mark.parametrize("name", sorted(gen.DTYPE_TENSORS))
def test_every_dtype(name):
    dtype, shape = gen.DTYPE_TENSORS[name]
    assert_same(BundleReader(str(DTYPES)).read(name), gen.value_for(name, dtype, shape))


def test_partitioned_variable_is_reassembled():
    reader = BundleReader(str(FIXTURES / "v2_tf1" / "model.ckpt-7"))
    assert "emb" in reader.names() and not any(n.startswith("\0") for n in reader.names())
    assert_same(reader.read("emb"), gen.value_for("emb", "float32", (10, 4)))


def test_sharded():
    reader = BundleReader(str(FIXTURES / "v2_sharded" / "model.ckpt"))
    assert reader.num_shards == 3
    for name, (dtype, shape, _, _) in gen.GRAPH_VARIABLES.items():
        assert_same(reader.read(name), gen.value_for(name, dtype, shape))


def test_without_preadv(monkeypatch, tmp_path):
    """Platforms without os.preadv (Windows) read through seek + read: same values, same errors."""
    monkeypatch.setattr(_bundle, "_PREADV", None)
    test_sharded()
    for name in gen.DTYPE_TENSORS:
        test_every_dtype(name)
    prefix = str(copy_fixture("v2_tf1", tmp_path) / "model.ckpt-7")
    path = _bundle.data_path(prefix, 0, 1)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 1)
    with pytest.raises(CheckpointError, match="truncated|ended|checksum"):
        _read_all(prefix)


def _read_all(prefix):
    reader = BundleReader(prefix)
    try:
        for name in reader.names():
            reader.read(name)
    finally:
        reader.close()


@pytest.mark.parametrize("fixture", ["v2_tf1/model.ckpt-7", "v2_dtypes/model.ckpt"])
def test_every_data_byte_flip_detected(tmp_path, fixture):
    folder, prefix = fixture.split("/")
    prefix = str(copy_fixture(folder, tmp_path) / prefix)
    path = _bundle.data_path(prefix, 0, 1)
    data = open(path, "rb").read()
    for pos in range(len(data)):
        corrupt = bytearray(data)
        corrupt[pos] ^= 1 << (pos % 8)
        with open(path, "wb") as f:
            f.write(corrupt)
        with pytest.raises(CheckpointError, match="tensor"):
            _read_all(prefix)


def test_every_index_byte_flip_detected(tmp_path):
    prefix = str(copy_fixture("v2_tf1", tmp_path) / "model.ckpt-7")
    path = _bundle.index_path(prefix)
    data = open(path, "rb").read()
    for pos in range(len(data)):
        corrupt = bytearray(data)
        corrupt[pos] ^= 1 << (pos % 8)
        with open(path, "wb") as f:
            f.write(corrupt)
        with pytest.raises(CheckpointError):
            _read_all(prefix)


def test_truncated_data_file(tmp_path):
    prefix = str(copy_fixture("v2_tf1", tmp_path) / "model.ckpt-7")
    path = _bundle.data_path(prefix, 0, 1)
    size = os.path.getsize(path)
    for length in range(size):
        with open(path, "r+b") as f:
            f.truncate(length)
        with pytest.raises(CheckpointError, match="truncated|ended|checksum"):
            _read_all(prefix)


def test_missing_shard_named(tmp_path):
    prefix = str(copy_fixture("v2_sharded", tmp_path) / "model.ckpt")
    os.remove(_bundle.data_path(prefix, 1, 3))
    with pytest.raises(CheckpointError, match=r"data-00001-of-00003"):
        _read_all(prefix)


def _rewrite_entry(prefix, name, **changes):
    table = Table(_bundle.index_path(prefix))
    items = {k: bytes(v) for k, v in table.entries.items()}
    entry = checkpoint_pb2.BundleEntryProto.FromString(items[name.encode()])
    for field, value in changes.items():
        if field == "shape":
            del entry.shape.dim[:]
            for d in value:
                entry.shape.dim.add().size = d
        else:
            setattr(entry, field, value)
    items[name.encode()] = entry.SerializeToString()
    with open(_bundle.index_path(prefix), "wb") as f:
        f.write(build_table(sorted(items.items())))


def test_offset_past_end(tmp_path):
    prefix = str(copy_fixture("v2_tf1", tmp_path) / "model.ckpt-7")
    _rewrite_entry(prefix, "dense/bias", offset=10**6)
    with pytest.raises(CheckpointError, match=r"'dense/bias'.*past the end"):
        BundleReader(prefix).read("dense/bias")


def test_absurd_size_refused_before_allocating(tmp_path):
    prefix = str(copy_fixture("v2_tf1", tmp_path) / "model.ckpt-7")
    _rewrite_entry(prefix, "dense/bias", shape=[1 << 40, 1 << 20])
    with pytest.raises(CheckpointError, match="dense/bias"):
        BundleReader(prefix).read("dense/bias")
    _rewrite_entry(prefix, "vocab", shape=[1 << 40])
    with pytest.raises(CheckpointError, match="vocab"):
        BundleReader(prefix).read("vocab")
    _rewrite_entry(prefix, "dense/kernel", size=1 << 50)
    with pytest.raises(CheckpointError, match="dense/kernel"):
        BundleReader(prefix).read("dense/kernel")


def test_size_shape_mismatch(tmp_path):
    prefix = str(copy_fixture("v2_tf1", tmp_path) / "model.ckpt-7")
    _rewrite_entry(prefix, "dense/kernel", shape=[2, 4])
    with pytest.raises(CheckpointError, match=r"dense/kernel.*bytes stored"):
        BundleReader(prefix).read("dense/kernel")


def test_newer_version_refused(tmp_path):
    prefix = str(copy_fixture("v2_tf1", tmp_path) / "model.ckpt-7")
    table = Table(_bundle.index_path(prefix))
    items = {k: bytes(v) for k, v in table.entries.items()}
    header = checkpoint_pb2.BundleHeaderProto.FromString(items[b""])
    header.version.min_consumer = 99
    items[b""] = header.SerializeToString()
    with open(_bundle.index_path(prefix), "wb") as f:
        f.write(build_table(sorted(items.items())))
    with pytest.raises(CheckpointError, match="newer TensorFlow"):
        BundleReader(prefix)


def test_big_endian(tmp_path):
    """A bundle a big-endian machine wrote: its numbers' bytes swapped, scalars and complex included."""
    from jaxmeta.checkpoint._writer import write_checkpoint

    values = {"c": np.complex64(1 + 2j), "cv": np.complex128([3 - 1j, 0.5j]), "f": np.float32([[1.5, -2]]),
              "i": np.int64(7), "h": np.float16([1, 2, 3]), "b": np.uint8([1, 2]), "s": np.array([b"ab"], object)}
    swapped = {k: v if k in ("b", "s") else _swap(v) for k, v in values.items()}  # bytes stay as they are
    prefix = write_checkpoint(str(tmp_path / "be"), swapped)
    table = Table(_bundle.index_path(prefix))
    items = {k: bytes(v) for k, v in table.entries.items()}
    header = checkpoint_pb2.BundleHeaderProto.FromString(items[b""])
    header.endianness = checkpoint_pb2.BundleHeaderProto.BIG
    items[b""] = header.SerializeToString()
    with open(_bundle.index_path(prefix), "wb") as f:
        f.write(build_table(sorted(items.items())))
    reader = BundleReader(prefix)
    for name, want in values.items():
        got = reader.read(name)
        assert got.dtype == want.dtype and got.shape == np.shape(want), name
        np.testing.assert_array_equal(got, want, err_msg=name)


def _swap(v):
    v = np.array(v)
    flat = v.reshape(-1)
    if v.dtype.kind == "c":
        return flat.view(v.real.dtype).byteswap().view(v.dtype).reshape(v.shape)
    return v.byteswap()


def test_missing_key_named():
    with pytest.raises(CheckpointError, match="'nope' is not in checkpoint"):
        BundleReader(str(DTYPES)).read("nope")


def test_strings_roundtrip_and_checksum():
    values = [b"", b"a", b"\x00" * 300, "é".encode()]
    data, crc = _bundle.encode_strings(values)
    decoded, crc2 = _bundle.decode_strings(data, len(values))
    assert decoded == values and crc == crc2
    broken = bytearray(data)
    broken[0] ^= 1
    with pytest.raises(ValueError):
        _bundle.decode_strings(bytes(broken), len(values))


def test_crc32c_known_values():
    assert _crc32c.value(b"123456789") == 0xE3069283
    assert _crc32c.value(b"") == 0
    assert _crc32c.unmask(_crc32c.mask(0xDEADBEEF)) == 0xDEADBEEF


@pytest.mark.parametrize("n", [0, 1, 63, 64, 1000, 100_003])
def test_crc32c_numpy_fallback_matches(n):
    data = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8)
    expected = _crc32c.value(data)
    assert _crc32c._numpy_extend(0, data) == expected
    assert _crc32c._numpy_extend(7, data) == _crc32c.extend(7, data.tobytes())


def test_crc32c_numpy_fallback_warns_once_on_large_buffers(monkeypatch):
    """Without google-crc32c's library, restores are some 60 times slower: the user hears why."""
    monkeypatch.setattr(_crc32c, "_native", None)
    monkeypatch.setattr(_crc32c, "IMPLEMENTATION", "numpy")
    monkeypatch.setattr(_crc32c, "_warned", False)
    monkeypatch.setattr(_crc32c, "_WARN_BYTES", 1000)
    data = np.random.default_rng(0).integers(0, 256, 1000, dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _crc32c.extend(0, data[:999]) == _crc32c._numpy_extend(0, data[:999])  # small: no warning
    with pytest.warns(RuntimeWarning, match="pip install google-crc32c"):
        assert _crc32c.extend(0, data) == _crc32c._numpy_extend(0, data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _crc32c.extend(0, data.tobytes())  # once per process


@pytest.mark.oracle
@pytest.mark.parametrize("prefix", ["v2_dtypes/model.ckpt", "v2_tf1/model.ckpt-7", "v2_tf1/renamed.ckpt",
                                    "v2_sharded/model.ckpt"])
def test_matches_tensorflow(prefix):
    tf = pytest.importorskip("tensorflow")
    path = str(FIXTURES / prefix)
    theirs = tf.train.load_checkpoint(path)
    ours = BundleReader(path)
    assert sorted(theirs.get_variable_to_shape_map()) == ours.names()
    for name in ours.names():
        assert_same(ours.read(name), tf_tensor(theirs, name))


def _plain_outs(reader: BundleReader) -> dict[str, np.ndarray]:
    """Arrays for the plain numeric tensors, as `CheckpointReader.get_tensors` makes them."""
    outs = {}
    for name in reader.names():
        entry = reader.entries[name]
        if not entry.slices and entry.dtype != _bundle.types_pb2.DT_STRING:
            dtype = reader.check_entry(name, entry, reader.shape(name))[0]
            outs[name] = _bundle.aligned_empty(reader.shape(name), dtype)
    return outs


@pytest.mark.parametrize("limit", [None, 7])
def test_read_together_one_scatter_read_per_run(monkeypatch, limit):
    """Tensors stored back to back come in with one preadv; reads that stop short are resumed."""
    calls = []

    def preadv(fd, views, offset):
        calls.append(len(views))
        if limit is None:
            return os.preadv(fd, views, offset)
        return os.preadv(fd, [views[0][:limit]], offset)  # a read that stops after a few bytes

    monkeypatch.setattr(_bundle, "_PREADV", preadv)
    reader = BundleReader(str(DTYPES))
    outs = _plain_outs(reader)
    assert len(outs) > 3
    reader.read_together(outs)
    if limit is None:  # one call per run of back-to-back tensors (a string tensor breaks a run)
        spans = sorted((reader.entries[n].offset, reader.entries[n].size) for n in outs)
        runs = 1 + sum(a + n != b for (a, n), (b, _) in zip(spans, spans[1:]))
        assert len(calls) == runs < len(outs) / 4
    for name, value in outs.items():
        dtype, shape = gen.DTYPE_TENSORS[name]
        assert_same(value, gen.value_for(name, dtype, shape))


def test_read_together_without_preadv(monkeypatch):
    monkeypatch.setattr(_bundle, "_PREADV", None)
    reader = BundleReader(str(DTYPES))
    outs = _plain_outs(reader)
    reader.read_together(outs)
    for name, value in outs.items():
        dtype, shape = gen.DTYPE_TENSORS[name]
        assert_same(value, gen.value_for(name, dtype, shape))


@pytest.mark.parametrize("damage", ["shrink", "flip"])
def test_read_together_names_the_damaged_tensor(tmp_path, damage):
    """A data file that shrinks after the entries were checked, or a flipped byte, names the tensor."""
    prefix = str(copy_fixture("v2_dtypes", tmp_path) / "model.ckpt")
    reader = BundleReader(prefix)
    outs = _plain_outs(reader)
    last = max((n for n in outs if reader.entries[n].size), key=lambda n: reader.entries[n].offset)
    path = _bundle.data_path(prefix, 0, 1)
    with open(path, "r+b") as f:
        if damage == "shrink":
            f.truncate(reader.entries[last].offset)
        else:
            f.seek(reader.entries[last].offset)
            byte = f.read(1)[0]
            f.seek(reader.entries[last].offset)
            f.write(bytes([byte ^ 1]))
    with pytest.raises(CheckpointError, match=f"tensor '{last}'.*(ended|checksum)"):
        reader.read_together(outs)
