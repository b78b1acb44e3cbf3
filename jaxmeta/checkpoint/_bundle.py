"""The V2 tensor bundle (`PREFIX.index` + `PREFIX.data-NNNNN-of-MMMMM`), as TF's tensor_bundle.cc.

The index is a table: the BundleHeaderProto under the empty key, then one BundleEntryProto per
tensor (dtype, shape, shard, offset, size, masked CRC-32C of the bytes). A partitioned variable has
an entry with `slices` and no bytes of its own; each slice is a normal entry under the slice key
(`_slices.encode_key`). Numbers are stored raw and little-endian; a string tensor is
`varint64 length`s, a masked CRC of the lengths, then the bytes.

Every tensor is read with one positioned read straight into the array it is returned in, and its
checksum verified in place.
"""

from __future__ import annotations

import math
import os
import struct
import threading

import numpy as np

from jaxmeta import _dtypes
from jaxmeta._errors import CheckpointError
from jaxmeta.checkpoint import _crc32c, _slices
from jaxmeta.checkpoint._sstable import Table, get_varint, put_varint
from jaxmeta.proto import checkpoint_pb2, tensor_shape_pb2, types_pb2, versions_pb2

HEADER_KEY = b""
# TF's kTensorBundleVersion / kTensorBundleMinConsumer.
VERSION = 1
MIN_PRODUCER = 0
_MAX_SHARDS = 1 << 20


def index_path(prefix: str) -> str:
    return prefix + ".index"


def data_path(prefix: str, shard: int, num_shards: int) -> str:
    return f"{prefix}.data-{shard:05d}-of-{num_shards:05d}"


def aligned_empty(shape, dtype) -> np.ndarray:
    """An uninitialized array whose data is 64-byte aligned, which `jax.device_put` on CPU adopts
    without copying (NumPy's own allocations are only 16-byte aligned)."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    raw = np.empty(nbytes + 64, dtype=np.uint8)
    start = (-raw.ctypes.data) % 64
    return raw[start : start + nbytes].view(dtype).reshape(shape)


_PREADV = getattr(os, "preadv", None)  # missing on Windows
_MAX_IOV = 1024  # buffers one preadv takes (POSIX's IOV_MAX on Linux and macOS)
_SEEK_LOCK = threading.Lock()


def _read_at(fd: int, view: memoryview, offset: int) -> int:
    if _PREADV is not None:
        return _PREADV(fd, [view], offset)
    with _SEEK_LOCK:  # without preadv: seek + read (one extra copy), one thread at a time
        os.lseek(fd, offset, os.SEEK_SET)
        data = os.read(fd, len(view))
    view[: len(data)] = data
    return len(data)


def _scatter_read(fd: int, views: list[memoryview], offset: int) -> int:
    """Reads consecutive bytes at `offset` into `views` in turn; returns how many were there."""
    done, total = 0, sum(map(len, views))
    if _PREADV is None:
        for view in views:
            got = _read_view(fd, view, offset + done)
            done += got
            if got < len(view):
                break
        return done
    while done < total:
        n = _PREADV(fd, views, offset + done)
        if n <= 0:
            break
        done += n
        while views and n >= len(views[0]):  # drop the filled views; cut into a part-filled one
            n -= len(views[0])
            views = views[1:]
        if views and n:
            views = [views[0][n:], *views[1:]]
    return done


def _pread_into(fd: int, buf: np.ndarray, offset: int) -> int:
    """Reads `buf.nbytes` bytes at `offset` into `buf`; returns how many were there."""
    return _read_view(fd, memoryview(buf.reshape(-1).view(np.uint8)), offset)


def _read_view(fd: int, view: memoryview, offset: int) -> int:
    done = 0
    total = len(view)
    while done < total:
        n = _read_at(fd, view[done:], offset + done)
        if n <= 0:
            break
        done += n
    return done


class BundleReader:
    """Reads the tensors of one V2 checkpoint.

    Args:
        prefix: the checkpoint prefix (`.../model.ckpt-1000`), without `.index`.

    Raises:
        CheckpointError: when the index is missing or corrupt, or was written by a newer TensorFlow.
    """

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.index_file = index_path(prefix)
        table = Table(self.index_file)
        raw_header = table.entries.get(HEADER_KEY)
        if raw_header is None:
            raise CheckpointError(f"{self.index_file} has no bundle header; it is not a V2 checkpoint index")
        header = checkpoint_pb2.BundleHeaderProto()
        try:
            header.ParseFromString(bytes(raw_header))
        except Exception:
            raise CheckpointError(f"{self.index_file}: the bundle header does not parse") from None
        if header.version.min_consumer > VERSION or VERSION in header.version.bad_consumers:
            raise CheckpointError(
                f"{self.index_file} needs a bundle reader of version >= {header.version.min_consumer}; "
                "it was written by a newer TensorFlow than jaxmeta supports"
            )
        if not 1 <= header.num_shards <= _MAX_SHARDS:
            raise CheckpointError(f"{self.index_file}: the header claims {header.num_shards} data shards")
        self.num_shards = header.num_shards
        self.big_endian = header.endianness == checkpoint_pb2.BundleHeaderProto.BIG
        self.entries: dict[str, checkpoint_pb2.BundleEntryProto] = {}
        self.slice_entries: dict[bytes, checkpoint_pb2.BundleEntryProto] = {}
        for key, raw in table.entries.items():
            if key == HEADER_KEY:
                continue
            entry = checkpoint_pb2.BundleEntryProto()
            try:
                entry.ParseFromString(bytes(raw))
            except Exception:
                raise CheckpointError(f"{self.index_file}: the entry of {key!r} does not parse") from None
            if key[:1] == b"\0":
                self.slice_entries[key] = entry
            else:
                self.entries[key.decode("utf-8", "surrogateescape")] = entry
        # Keys of the slices partitioned tensors point to are not tensors of their own.
        self._files: dict[int, tuple[int, int, str]] = {}  # shard -> (fd, size, path)
        self._shapes: dict[str, tuple[int, ...]] = {}  # parsed once: a restore asks several times
        self._lock = threading.Lock()

    # --- metadata ---

    def names(self) -> list[str]:
        return sorted(self.entries)

    def entry(self, name: str) -> checkpoint_pb2.BundleEntryProto:
        try:
            return self.entries[name]
        except KeyError:
            raise CheckpointError(f"tensor {name!r} is not in checkpoint {self.prefix}") from None

    def shape(self, name: str) -> tuple[int, ...]:
        shape = self._shapes.get(name)
        if shape is None:
            shape = self._shapes[name] = _shape(self.entry(name).shape, where=self._where(name))
        return shape

    def dtype_enum(self, name: str) -> int:
        return self.entry(name).dtype

    def nbytes(self, name: str) -> int:
        entry = self.entry(name)
        if entry.slices:
            return sum(self._slice_entry(name, entry, s).size for s in entry.slices)
        return entry.size

    def _where(self, name: str) -> str:
        return f"checkpoint {self.prefix}, tensor {name!r}"

    # --- data ---

    def close(self) -> None:
        with self._lock:
            for fd, _, _ in self._files.values():
                os.close(fd)
            self._files.clear()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def _file(self, shard: int, name: str) -> tuple[int, int, str]:
        opened = self._files.get(shard)
        if opened is not None:
            return opened
        path = data_path(self.prefix, shard, self.num_shards)
        if not 0 <= shard < self.num_shards:
            raise CheckpointError(f"{self._where(name)}: shard {shard} of {self.num_shards} does not exist")
        with self._lock:
            if shard not in self._files:
                try:
                    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
                except OSError as e:
                    raise CheckpointError(
                        f"{self._where(name)}: cannot open data file {path}: {e.strerror}; the checkpoint "
                        "needs every .data shard beside its .index"
                    ) from None
                self._files[shard] = (fd, os.fstat(fd).st_size, path)
            return self._files[shard]

    def read(self, name: str, out: np.ndarray | None = None) -> np.ndarray:
        """The tensor `name` as a NumPy array (object array of bytes for strings).

        Args:
            name: the checkpoint key.
            out: optional preallocated array of the right shape and dtype to read into.

        Raises:
            CheckpointError: when the key is missing, or its bytes are truncated or corrupt.
        """
        entry = self.entry(name)
        if entry.slices:
            return self._read_sliced(name, entry, out)
        return self._read_entry(name, entry, self.shape(name), out)

    def check_entry(self, name, entry, shape) -> tuple[np.dtype, int, int, str]:
        """Checks an entry's dtype, size and byte range against its data file, without reading.

        Returns:
            (dtype, fd, path's size, path), so that nothing is allocated for bytes that are not there.
        """
        where = self._where(name)
        try:
            dtype = _dtypes.to_numpy(entry.dtype, where=where)
        except Exception:
            raise CheckpointError(
                f"{where}: dtype {_dtypes.name(entry.dtype)} cannot be read by jaxmeta"
            ) from None
        if _dtypes.is_ref(entry.dtype):  # the readers go by the base type, strings included
            raise CheckpointError(
                f"{where}: dtype {_dtypes.name(entry.dtype)} is a reference type, which checkpoints never "
                "store; the index is corrupt"
            )
        count = math.prod(shape)
        fd, file_size, path = self._file(entry.shard_id, name)
        if entry.offset < 0 or entry.size < 0 or entry.offset + entry.size > file_size:
            raise CheckpointError(
                f"{where}: bytes [{entry.offset}, {entry.offset + entry.size}) lie past the end of "
                f"{path} ({file_size} bytes); the data file is truncated or belongs to another checkpoint"
            )
        if entry.dtype == types_pb2.DT_STRING and count > entry.size:  # each needs its length byte
            raise CheckpointError(f"{where}: {count} strings cannot fit in {entry.size} bytes; index corrupt")
        if entry.dtype != types_pb2.DT_STRING and count * dtype.itemsize != entry.size:
            raise CheckpointError(
                f"{where}: {entry.size} bytes stored for shape {list(shape)} of {dtype} "
                f"({count * dtype.itemsize} expected); the index is corrupt"
            )
        return dtype, fd, file_size, path

    def _read_entry(self, name, entry, shape, out=None) -> np.ndarray:
        dtype, fd, _, path = self.check_entry(name, entry, shape)
        count = math.prod(shape)
        if entry.dtype == types_pb2.DT_STRING:
            return self._read_strings(name, entry, shape, count, fd, path)
        if out is None:
            out = aligned_empty(shape, dtype)
        return self._fill(name, entry, out, fd, path)

    def read_checked(self, name: str, out: np.ndarray) -> np.ndarray:
        """Reads the plain numeric tensor `name` into `out`, shaped and typed after an entry that
        `check_entry` passed (so its checks are not run twice), and verifies its checksum."""
        entry = self.entries[name]
        fd, _, path = self._file(entry.shard_id, name)
        return self._fill(name, entry, out, fd, path)

    def _fill(self, name, entry, out, fd, path) -> np.ndarray:
        got = _pread_into(fd, out, entry.offset)
        if got != entry.size:
            raise CheckpointError(f"{self._where(name)}: {path} ended after {got} of {entry.size} bytes")
        self._verify(name, entry, out)
        return out

    def read_together(self, outs: dict[str, np.ndarray]) -> None:
        """Reads plain numeric tensors into their arrays, `outs` (shaped and typed after entries that
        `check_entry` passed), then verifies each checksum.

        Tensors stored back to back (a bundle writes them in key order) come in with one scatter read
        per run: a restore of many small variables is otherwise mostly system calls.
        """
        order = sorted(outs, key=lambda n: (self.entries[n].shard_id, self.entries[n].offset))
        start = 0
        while start < len(order):
            first = self.entries[order[start]]
            stop, end = start + 1, first.offset + first.size
            while stop < len(order) and stop - start < _MAX_IOV:
                entry = self.entries[order[stop]]
                if entry.shard_id != first.shard_id or entry.offset != end:
                    break
                stop, end = stop + 1, end + entry.size
            run = order[start:stop]
            fd = self._file(first.shard_id, run[0])[0]
            views = [memoryview(outs[name].reshape(-1).view(np.uint8)) for name in run]
            if _scatter_read(fd, views, first.offset) != end - first.offset:
                for name in run:  # the file shrank under us: find which tensor, and say so
                    self._read_entry(name, self.entries[name], outs[name].shape, outs[name])
            start = stop
        for name in order:
            self._verify(name, self.entries[name], outs[name])

    def _verify(self, name, entry, out: np.ndarray) -> None:
        if _crc32c.extend(0, out) != _crc32c.unmask(entry.crc32c):
            path = self._file(entry.shard_id, name)[2]
            raise CheckpointError(
                f"{self._where(name)}: checksum mismatch in {path} at offset {entry.offset}; the data file "
                "is corrupt"
            )
        if self.big_endian and out.dtype.itemsize > 1:
            _byteswap(out)

    def _read_strings(self, name, entry, shape, count, fd, path) -> np.ndarray:
        where = self._where(name)
        if count > entry.size:  # every element needs at least its one-byte length
            raise CheckpointError(f"{where}: {count} strings cannot fit in {entry.size} bytes; index corrupt")
        raw = np.empty(entry.size, dtype=np.uint8)
        if _pread_into(fd, raw, entry.offset) != entry.size:
            raise CheckpointError(f"{where}: {path} ended inside the tensor")
        try:
            values, crc = decode_strings(raw.tobytes(), count)
        except ValueError as e:
            raise CheckpointError(f"{where}: malformed string tensor in {path}: {e}") from None
        if crc != _crc32c.unmask(entry.crc32c):
            raise CheckpointError(f"{where}: checksum mismatch in {path} at offset {entry.offset}; corrupt")
        out = np.empty(count, dtype=object)
        out[:] = values
        return out.reshape(shape)

    def _slice_entry(self, name, entry, slice_proto):
        full_shape = self.shape(name)
        extents = _slices.from_proto(slice_proto)
        key = _slices.encode_key(name, extents)
        sentry = self.slice_entries.get(key)
        if sentry is None:
            raise CheckpointError(
                f"{self._where(name)}: slice {_slices.format_slice(extents)!r} is listed but not stored; "
                "the index is incomplete"
            )
        _slices.check(extents, full_shape, where=self._where(name))
        return sentry

    def _read_sliced(self, name, entry, out=None) -> np.ndarray:
        where = self._where(name)
        full_shape = self.shape(name)
        dtype = _dtypes.to_numpy(entry.dtype, where=where)
        plan = []
        for proto in entry.slices:
            sentry = self._slice_entry(name, entry, proto)
            extents = _slices.check(_slices.from_proto(proto), full_shape, where=where)
            if sentry.dtype != entry.dtype or _shape(sentry.shape, where=where) != _slices.slice_shape(extents):
                raise CheckpointError(f"{where}: slice {_slices.format_slice(extents)!r} has the wrong shape or dtype")
            self.check_entry(name, sentry, _slices.slice_shape(extents))  # its bytes exist: safe to allocate
            plan.append((extents, sentry))
        check_cover(plan, full_shape, where)
        if out is None:
            out = aligned_empty(full_shape, dtype) if dtype.kind != "O" else np.empty(full_shape, dtype)
        for extents, sentry in plan:
            region = out[_slices.index(extents)]
            if region.flags.c_contiguous and entry.dtype != types_pb2.DT_STRING:
                self._read_entry(name, sentry, region.shape, region)  # straight into place
            else:
                region[...] = self._read_entry(name, sentry, region.shape)
        return out


def check_cover(plan, full_shape, where: str) -> None:
    total = math.prod(full_shape)
    covered = sum(_slices.num_elements(extents) for extents, _ in plan)
    for i, (a, _) in enumerate(plan):
        for b, _ in plan[:i]:
            if all(sa < sb + lb and sb < sa + la for (sa, la), (sb, lb) in zip(a, b)):
                raise CheckpointError(f"{where}: saved slices {_slices.format_slice(a)!r} and "
                                      f"{_slices.format_slice(b)!r} overlap")
    if covered != total:
        raise CheckpointError(
            f"{where}: the saved slices cover {covered} of {total} elements of shape {list(full_shape)}; "
            "the checkpoint lacks part of this partitioned variable"
        )


def _shape(proto: tensor_shape_pb2.TensorShapeProto, *, where: str) -> tuple[int, ...]:
    if proto.unknown_rank or any(d.size < 0 for d in proto.dim):
        raise CheckpointError(f"{where}: stored shape is unknown or negative; the index is corrupt")
    shape = tuple(int(d.size) for d in proto.dim)
    if math.prod(shape) > 1 << 62:
        raise CheckpointError(f"{where}: absurd stored shape {list(shape)}; the index is corrupt")
    return shape


def _byteswap(arr: np.ndarray) -> None:
    flat = arr.reshape(-1)  # a view (`arr` is contiguous); 0-d arrays cannot change itemsize
    if arr.dtype.kind == "c":  # each half of a complex number on its own
        flat.view(arr.real.dtype).byteswap(inplace=True)
    else:
        flat.view(np.dtype(f"u{arr.dtype.itemsize}")).byteswap(inplace=True)


# --- strings -----------------------------------------------------------------------------------


def _length_crc(crc: int, length: int) -> int:
    # TF checksums each length as a uint32 when it fits (backwards compatibility), else as uint64.
    if length <= 0xFFFFFFFF:
        return _crc32c.extend(crc, struct.pack("<I", length))
    return _crc32c.extend(crc, struct.pack("<Q", length))


def decode_strings(buf: bytes, count: int) -> tuple[list[bytes], int]:
    """Parses a string tensor's bytes (lengths, their masked CRC, the strings); ValueError if bad.

    Returns:
        The strings and the tensor's CRC as TF computes it (over the lengths as integers, not over
        their varint bytes), to compare with the entry's.
    """
    pos = 0
    end = len(buf)
    lengths = []
    crc = 0
    for _ in range(count):
        length, pos = get_varint(buf, pos, end)
        lengths.append(length)
        crc = _length_crc(crc, length)
    if pos + 4 > end:
        raise ValueError("truncated before the length checksum")
    (stored,) = struct.unpack_from("<I", buf, pos)
    if _crc32c.unmask(stored) != crc:
        raise ValueError("string length checksum mismatch")
    crc = _crc32c.extend(crc, buf[pos : pos + 4])
    pos += 4
    if sum(lengths) != end - pos:
        raise ValueError(f"string lengths add up to {sum(lengths)} bytes, {end - pos} present")
    out = []
    for length in lengths:
        out.append(buf[pos : pos + length])
        pos += length
    return out, _crc32c.extend(crc, buf[end - sum(lengths) : end])


def encode_strings(values) -> tuple[bytes, int]:
    """A string tensor's bytes and the running CRC TF stores (unmasked), from an iterable of bytes."""
    items = [v if isinstance(v, bytes) else (v.encode() if isinstance(v, str) else bytes(v)) for v in values]
    lengths = bytearray()
    crc = 0
    for item in items:
        put_varint(lengths, len(item))
        crc = _length_crc(crc, len(item))
    checksum = struct.pack("<I", _crc32c.mask(crc))
    crc = _crc32c.extend(crc, checksum)
    body = b"".join(items)
    crc = _crc32c.extend(crc, body)
    return bytes(lengths) + checksum + body, crc


def header_proto(num_shards: int = 1) -> checkpoint_pb2.BundleHeaderProto:
    return checkpoint_pb2.BundleHeaderProto(
        num_shards=num_shards,
        endianness=checkpoint_pb2.BundleHeaderProto.LITTLE,
        version=versions_pb2.VersionDef(producer=VERSION, min_consumer=MIN_PRODUCER),
    )
