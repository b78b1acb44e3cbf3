"""Parsing ops, on the host: `tf.train.Example` and `SequenceExample` protos (`tf.io.parse_example`,
`parse_single_example`, `parse_sequence_example`, TF1's `tf.parse_example`), CSV records
(`tf.io.decode_csv`), serialized tensors (`tf.io.parse_tensor`, `serialize_tensor`) and compressed
strings (`tf.io.decode_compressed`).

Like the string ops (`ops/strings.py`), these run with NumPy when their inputs are known: on
constants they fold, and on fed strings they run when the function runs without `jax.jit`
(`Session` does that by itself). A serving graph that parses `tf.train.Example`s therefore runs
as it is; to jit the model behind the parser, feed the parser's outputs instead.
"""

from __future__ import annotations

import dataclasses
import math
import re
import zlib
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError

from jaxmeta import _dtypes, _tensor_util
from jaxmeta._errors import GraphError
from jaxmeta.checkpoint._sstable import get_varint
from jaxmeta.ops.registry import register
from jaxmeta.ops.strings import MAX_STRING_BYTES, _bytes_array, host
from jaxmeta.proto import example_pb2, tensor_pb2

#: The list kind a feature of each output dtype must hold, as TF's parser checks it.
_KINDS = {np.dtype(np.float32): "float_list", np.dtype(np.int64): "int64_list", np.dtype(object): "bytes_list"}
_TYPE_NAMES = {"float_list": "float", "int64_list": "int64", "bytes_list": "string"}


@dataclasses.dataclass(frozen=True)
class _Dense:
    key: str
    dtype: np.dtype
    shape: tuple[int, ...]  # shape[0] == -1: a FixedLenSequenceFeature (padded to the longest)
    default: np.ndarray  # empty: the feature is required

    @property
    def variable(self) -> bool:
        return bool(self.shape) and self.shape[0] == -1


def _dtype(node, enum: int) -> np.dtype:
    dtype = np.dtype(_dtypes.to_numpy(enum, where=f"node {node.name!r}"))
    if dtype not in _KINDS:
        raise GraphError(f"node {node.name!r} ({node.type}): features parse as float32, int64 or string, not {dtype}")
    return dtype


def _shapes(node, count: int, attr: str = "dense_shapes") -> list[tuple[int, ...]]:
    shapes = [_tensor_util.shape_from_proto(s) for s in node.attr_list(attr).shape]
    if len(shapes) != count or any(s is None or any(d < 0 for d in s[1:]) or (s and s[0] < -1) for s in shapes):
        raise GraphError(f"node {node.name!r} ({node.type}): {attr} {shapes} must give {count} shapes, each "
                         f"fully defined but for a first dimension of -1")
    return shapes


def _dense_specs(node, keys, defaults, dtypes, shapes) -> list[_Dense]:
    specs = []
    for key, default, enum, shape in zip(keys, defaults, dtypes, shapes):
        spec = _Dense(key, _dtype(node, enum), tuple(shape), np.asarray(default))
        size = math.prod(shape[1:]) if spec.variable else math.prod(shape)
        if spec.default.size and not (spec.variable or spec.default.size == size):
            raise GraphError(f"node {node.name!r} ({node.type}): the default of dense feature {key!r} has shape "
                             f"{spec.default.shape}, but the feature's shape is {list(shape)}")
        specs.append(spec)
    return specs


def _texts(array) -> list[str]:
    return [k.decode() if isinstance(k, bytes) else str(k) for k in np.asarray(array).reshape(-1).tolist()]


# --- Examples read as columns ---------------------------------------------------------------------
# An op's outputs are built per feature from a `_Column`: which examples hold the feature, how many
# values each holds, and all the values in order. A batch of Examples in the encoding protobuf and
# TF write (fields in order, numbers packed) is read straight from its bytes with NumPy, all
# examples at once (`_WireBatch`); a small batch, or one encoded otherwise, is parsed by protobuf,
# whose Python objects cost about 2 µs per feature of each example.

#: Batches at least this large are read from their bytes.
WIRE_BATCH = 16

_LIST_KINDS = {0x0A: "bytes_list", 0x12: "float_list", 0x1A: "int64_list"}
_LIST_TAGS = {kind: tag for tag, kind in _LIST_KINDS.items()}
_EMPTY_FEATURE = 1  # a Feature with no list; 0: the example lacks the feature


@dataclasses.dataclass(frozen=True)
class _Column:
    """One feature across a batch: `present[i]` where example i holds a list of the feature (of the
    graph's dtype), `lengths[i]` its number of values (0 where absent), `values` all of them."""

    present: np.ndarray
    lengths: np.ndarray
    values: np.ndarray

    @staticmethod
    def from_rows(rows: list, dtype: np.dtype) -> _Column:
        """From each example's values (an array, or a list of bytes), None where it has none."""
        return _Column(np.array([r is not None for r in rows], bool),
                       np.array([0 if r is None else len(r) for r in rows], np.int64),
                       _concat([r for r in rows if r is not None], dtype))


def _concat(rows: list, dtype: np.dtype) -> np.ndarray:
    """Lists of values (arrays for numbers, lists of bytes for strings) as one flat array."""
    if dtype.kind == "O":
        return _array([v for row in rows for v in row], dtype)
    return np.concatenate(rows).astype(dtype, copy=False) if rows else np.zeros(0, dtype)


def _message_values(feature) -> tuple:
    """(kind, values) of a `Feature` message: values an array of numbers or a list of bytes."""
    kind = feature.WhichOneof("kind")
    if kind is None or kind == "bytes_list":
        return kind, None if kind is None else list(feature.bytes_list.value)
    return kind, np.array(getattr(feature, kind).value, np.float32 if kind == "float_list" else np.int64)


def _lazy_example():
    """`tf.train.Example` with each Feature left as bytes (`map<string, bytes>`, the same wire
    format): as in TF's parser, a feature the op does not read is not parsed, so its damage is no
    error (`_WireBatch` reads batches so too)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    field = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="jaxmeta/lazy_example.proto", package="jaxmeta.lazy",
                                              syntax="proto3")
    features = file.message_type.add(name="Features")
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=field.TYPE_BYTES, label=field.LABEL_OPTIONAL)
    features.field.add(name="feature", number=1, type=field.TYPE_MESSAGE, label=field.LABEL_REPEATED,
                       type_name=".jaxmeta.lazy.Features.FeatureEntry")
    example = file.message_type.add(name="Example")
    example.field.add(name="features", number=1, type=field.TYPE_MESSAGE, label=field.LABEL_OPTIONAL,
                      type_name=".jaxmeta.lazy.Features")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("jaxmeta.lazy.Example"))


_LazyExample = _lazy_example()


class _NotCanonical(Exception):
    """The bytes are not encoded as protobuf writes them: protobuf parses them instead."""


def _varints(buf: np.ndarray, pos: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The varints (< 2**35) at positions `pos` of `buf`, each ending before `end`: (values, the
    positions after them). `buf` has 8 bytes of padding past its last `end`."""
    value = np.zeros(len(pos), np.int64)
    after = pos.copy()
    going = np.ones(len(pos), bool)
    for k in range(5):
        byte = buf[pos + k].astype(np.int64)
        value |= np.where(going, (byte & 0x7F) << (7 * k), 0)
        after += going
        going &= byte >= 0x80
        if not going.any():
            break
    else:
        raise _NotCanonical
    if (after > end).any():
        raise _NotCanonical
    return value, after


class _WireBatch:
    """Serialized Examples in one buffer, with where each wanted feature's list lies in each.

    Walks all examples' map entries side by side (entry k of every example at once); raises
    `_NotCanonical` for any other layout than protobuf's (the caller then parses with protobuf).
    """

    def __init__(self, strings: list, keys: set[str]):
        lengths = np.fromiter(map(len, strings), np.int64, len(strings))
        ends = np.cumsum(lengths)
        starts = ends - lengths
        self.data = b"".join(strings) + bytes(8)
        buf = self.buf = np.frombuffer(self.data, np.uint8)
        n = len(strings)
        self.tags = {k: np.zeros(n, np.uint8) for k in keys}  # the list's tag, _EMPTY_FEATURE or 0
        self.spans = {k: (np.zeros(n, np.int64), np.zeros(n, np.int64)) for k in keys}
        wanted = [(k, np.frombuffer(k.encode(), np.uint8)) for k in keys]
        nonempty = np.flatnonzero(lengths)
        if (buf[starts[nonempty]] != 0x0A).any():
            raise _NotCanonical
        size, pos = _varints(buf, starts[nonempty] + 1, ends[nonempty])
        if (pos + size != ends[nonempty]).any():
            raise _NotCanonical
        live = nonempty[pos < ends[nonempty]]
        pos, ends = pos[pos < ends[nonempty]], ends[live]
        while len(live):
            if (buf[pos] != 0x0A).any():
                raise _NotCanonical
            size, pos = _varints(buf, pos + 1, ends)
            stop = pos + size
            if (stop > ends).any() or (buf[pos] != 0x0A).any():
                raise _NotCanonical
            key_size, pos = _varints(buf, pos + 1, stop)
            at = pos + key_size
            if (at >= stop).any() or (buf[at] != 0x12).any() or (self._gather(pos, key_size) >= 0x80).any():
                raise _NotCanonical  # (a key that is not ASCII: protobuf checks it is UTF-8)
            feature_size, feature = _varints(buf, at + 1, stop)
            if (feature + feature_size != stop).any():
                raise _NotCanonical
            full = np.flatnonzero(feature < stop)  # the others hold no list
            tag, first = np.full(len(live), _EMPTY_FEATURE, np.uint8), stop.copy()
            tag[full] = buf[feature[full]]
            list_size, first[full] = _varints(buf, feature[full] + 1, stop[full])
            if (~np.isin(tag[full], (0x0A, 0x12, 0x1A)) | (first[full] + list_size != stop[full])).any():
                raise _NotCanonical
            for key, encoded in wanted:
                match = key_size == len(encoded)
                same = np.flatnonzero(match)
                match[same] = (buf[pos[same, None] + np.arange(len(encoded))] == encoded).all(1)
                which = live[match]  # a key given twice: the last entry wins, as in protobuf's maps
                self.tags[key][which] = tag[match]
                self.spans[key][0][which], self.spans[key][1][which] = first[match], stop[match]
            more = stop < ends
            live, pos, ends = live[more], stop[more], ends[more]

    def column(self, key: str, dtype: np.dtype, error) -> _Column:
        """The feature's `_Column`; `error(i, kind)` makes the error for example i holding another kind."""
        tags, (first, stop) = self.tags[key], self.spans[key]
        tag = _LIST_TAGS[_KINDS[dtype]]
        other = np.flatnonzero((tags > _EMPTY_FEATURE) & (tags != tag))
        if len(other):
            raise error(int(other[0]), _LIST_KINDS[int(tags[other[0]])])
        present = tags == tag
        first, stop = first[present], stop[present]
        if tag == 0x0A:
            rows = [self._strings(a, b) for a, b in zip(first.tolist(), stop.tolist())]
            lengths = np.zeros(len(tags), np.int64)
            lengths[present] = [len(r) for r in rows]
            return _Column(present, lengths, _concat(rows, dtype))
        full = first < stop  # a packed field: its tag, size and bytes
        if (self.buf[first[full]] != 0x0A).any():
            raise _NotCanonical
        size, first[full] = _varints(self.buf, first[full] + 1, stop[full])
        if (first[full] + size != stop[full]).any():
            raise _NotCanonical
        raw = self._gather(first, stop - first)
        lengths = np.zeros(len(tags), np.int64)
        if tag == 0x12:
            if ((stop - first) % 4).any():
                raise _NotCanonical
            lengths[present] = (stop - first) // 4
            return _Column(present, lengths, raw.view("<f4").astype(np.float32, copy=False))
        # int64s: varints, each ending in a byte below 0x80, the last of each list too
        last = raw < 0x80
        bounds = np.cumsum(stop - first)
        if not last[bounds[stop > first] - 1].all():
            raise _NotCanonical
        begins = np.flatnonzero(np.concatenate([[True], last[:-1]]))  # as many as there are last bytes
        shift = np.arange(len(raw)) - begins[np.cumsum(last) - last]
        if (shift > 9).any():
            raise _NotCanonical
        parts = (raw.astype(np.uint64) & np.uint64(0x7F)) << (7 * shift).astype(np.uint64)
        values = np.bitwise_or.reduceat(parts, begins) if len(raw) else np.zeros(0, np.uint64)
        counted = np.concatenate([[0], np.cumsum(last)])[bounds]  # varints up to each list's end
        lengths[present] = np.diff(counted, prepend=0)
        return _Column(present, lengths, values.view(np.int64))

    def _gather(self, first: np.ndarray, sizes: np.ndarray) -> np.ndarray:
        """The bytes buf[first[i]:first[i] + sizes[i]] of every i, in one array."""
        if len(sizes) and (sizes == sizes[0]).all():
            return self.buf[first[:, None] + np.arange(sizes[0])].reshape(-1)
        total = int(sizes.sum())
        return self.buf[np.repeat(first - (np.cumsum(sizes) - sizes), sizes) + np.arange(total)]

    def _strings(self, pos: int, stop: int) -> list:
        """The strings of the BytesList in data[pos:stop]."""
        data, out = self.data, []
        while pos < stop:
            if data[pos] != 0x0A:
                raise _NotCanonical
            try:
                size, pos = get_varint(data, pos + 1, stop, limit_bits=35)
            except ValueError:  # (overlong lengths too: protobuf reads those)
                raise _NotCanonical from None
            if pos + size > stop:
                raise _NotCanonical
            out.append(data[pos:pos + size])
            pos += size
        return out


class _Parser:
    """Reads the features an op asks for from `tf.train.Example`s (one op's settings, parsed once)."""

    #: The shape of a ragged feature's row splits for one (scalar) example, as TF's kernel makes them.
    unbatched_splits: tuple[int, ...] = (0,)

    def __init__(self, node, sparse, dense, ragged):
        self.node, self.sparse, self.dense, self.ragged = node, sparse, dense, ragged
        self.keys = {k for k, _ in sparse} | {d.key for d in dense} | {k for k, _, _ in ragged}

    def _error(self, text: str) -> GraphError:
        return GraphError(f"node {self.node.name!r} ({self.node.type}): {text}")

    def _kind_error(self, where: str, key: str, kind: str, dtype: np.dtype) -> GraphError:
        return self._error(f"{where}, feature {key!r}: holds {_TYPE_NAMES[kind]} values, but the graph parses it as "
                           f"{_TYPE_NAMES[_KINDS[dtype]]}")

    def feature(self, feature, key: str, dtype: np.dtype, where: str):
        """One `Feature` message's values (an array, or a list of bytes), or None where it holds no list."""
        kind, values = _message_values(feature)
        if kind is not None and kind != _KINDS[dtype]:
            raise self._kind_error(where, key, kind, dtype)
        return values

    def examples(self, serialized: np.ndarray, names: np.ndarray, message=example_pb2.Example) -> list:
        """The messages `serialized` holds: Examples' features (each Feature as bytes, parsed when
        read), or whole SequenceExamples."""
        out = []
        for i, data in enumerate(serialized.reshape(-1).tolist()):
            try:
                parsed = (_LazyExample if message is example_pb2.Example else message).FromString(data)
            except (DecodeError, RuntimeError) as e:
                raise self._not_parsed(i, names, message.__name__, e) from None
            out.append(parsed.features if message is example_pb2.Example else parsed)
        return out

    def _not_parsed(self, i: int, names: Any, what: str, e: Exception) -> GraphError:
        names = _texts(names) if np.size(names) else []
        name = f" ({names[i]!r})" if i < len(names) else ""
        return self._error(f"serialized example {i}{name} is not a tf.train.{what} ({e}); check what is fed to "
                           f"{self.node.inputs[0] if self.node.inputs else 'its input'}")

    def __call__(self, serialized: np.ndarray, names: np.ndarray) -> list:
        if serialized.ndim > 1:
            raise self._error(f"serialized must be a scalar or a vector, got shape {serialized.shape}")
        strings = serialized.reshape(-1).tolist()
        if len(strings) >= WIRE_BATCH and all(type(s) is bytes for s in strings):
            try:
                wire = _WireBatch(strings, self.keys)
                return self.parse(lambda key, dtype: wire.column(
                    key, dtype, lambda i, kind: self._kind_error(f"example {i}", key, kind, dtype)),
                    serialized.ndim == 1)
            except _NotCanonical:
                pass
        return self.parse(self.messages(self.examples(serialized, names), names), serialized.ndim == 1)

    def messages(self, features: list, names: Any = ()):
        """`column(key, dtype)` over parsed `Features`: messages, or the lazy ones `examples` makes
        of Examples (each Feature's bytes parsed here, when read; `names` for its errors)."""

        def value(i: int, features, key: str, dtype: np.dtype):
            if key not in features.feature:
                return None
            found = features.feature[key]
            if isinstance(found, bytes):
                try:
                    found = example_pb2.Feature.FromString(found)
                except (DecodeError, RuntimeError) as e:
                    raise self._not_parsed(i, names, "Example", e) from None
            return self.feature(found, key, dtype, f"example {i}")

        def column(key: str, dtype: np.dtype) -> _Column:
            return _Column.from_rows([value(i, f, key, dtype) for i, f in enumerate(features)], dtype)

        return column

    def parse(self, column, batch: bool) -> list:
        """The op's outputs from `column(key, dtype)` (a `_Column`; `batch`: with a batch axis)."""
        sparse = [self._sparse(column(key, dtype), batch) for key, dtype in self.sparse]
        dense = [self._dense(column(spec.key, spec.dtype), spec, batch) for spec in self.dense]
        ragged = [self._ragged(column(key, dtype), splits, batch) for key, dtype, splits in self.ragged]
        return ([s[0] for s in sparse] + [s[1] for s in sparse] + [s[2] for s in sparse] + dense
                + [r[0] for r in ragged] + [r[1] for r in ragged])

    def _sparse(self, column: _Column, batch):
        values, lengths = column.values, column.lengths
        longest = int(lengths.max(initial=0))
        if batch:
            starts = np.cumsum(lengths) - lengths
            inner = np.arange(len(values), dtype=np.int64) - np.repeat(starts, lengths)
            rows = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
            return np.stack([rows, inner], 1), values, np.array([len(lengths), longest], np.int64)
        return np.arange(len(values), dtype=np.int64).reshape(-1, 1), values, np.array([longest], np.int64)

    def _ragged(self, column: _Column, splits, batch):
        if not batch:
            return column.values, np.zeros(self.unbatched_splits, splits)
        return column.values, np.concatenate([[0], np.cumsum(column.lengths)]).astype(splits)

    def _dense(self, column: _Column, spec: _Dense, batch):
        inner = spec.shape[1:] if spec.variable else spec.shape
        stride = math.prod(inner)
        present, lengths, n = column.present, column.lengths, len(column.present)
        if spec.variable:
            wrong = present & ((lengths % stride != 0) if stride else (lengths != 0))
            missing = np.zeros(n, bool)
        else:
            wrong = present & (lengths != stride)
            missing = ~present if not spec.default.size else np.zeros(n, bool)
        if wrong.any() or missing.any():
            i = int(np.flatnonzero(wrong | missing)[0])
            if missing[i]:
                raise self._error(f"example {i}: feature {spec.key!r} ({spec.dtype}) is required but missing; give "
                                  f"it a default_value in the graph, or feed examples that have it")
            raise self._error(f"example {i}, feature {spec.key!r}: {lengths[i]} values do not fill shape "
                              f"{list(spec.shape)}")
        if not spec.variable:  # every present example holds `stride` values; the others, the default
            if present.all():
                out = column.values.reshape(n, stride)
            else:
                out = np.empty((n, stride), spec.dtype)
                out[present] = column.values.reshape(-1, stride)
                out[~present] = spec.default.astype(spec.dtype).reshape(-1)
            out = out.reshape(n, *inner)
            return out if batch else out[0]
        length = int(lengths.max(initial=0)) // stride if stride else 0
        if not batch:
            return column.values.reshape(length, *inner)
        pad = spec.default.reshape(-1)[0] if spec.default.size else (b"" if spec.dtype.kind == "O" else 0)
        out = np.full((n, length * stride), pad, dtype=spec.dtype)
        out[np.arange(length * stride) < lengths[:, None]] = column.values
        return out.reshape(n, length, *inner)


def _array(values: list, dtype: np.dtype) -> np.ndarray:
    return _bytes_array(values, (len(values),)) if dtype.kind == "O" else np.array(values, dtype).reshape(-1)


def _types(node, name: str) -> list[np.dtype]:
    return [_dtype(node, t) for t in node.attr_dtypes(name)]


def _ragged_types(node, prefix: str) -> list[tuple[np.dtype, np.dtype]]:
    """(value dtype, row-splits dtype) per ragged feature, from `{prefix}ragged_value/split_types`."""
    splits = [np.dtype(_dtypes.to_numpy(t)) for t in node.attr_dtypes(f"{prefix}ragged_split_types")]
    return list(zip(_types(node, f"{prefix}ragged_value_types"), splits))


@register("ParseExample")
def _parse_example(node):
    """TF1's `tf.parse_example` before TF 1.14: keys as scalar string inputs."""
    n_sparse, n_dense = node.attr_int("Nsparse"), node.attr_int("Ndense")
    sparse_types, dense_types = _types(node, "sparse_types"), node.attr_dtypes("Tdense")
    shapes = _shapes(node, n_dense)

    def fn(serialized, names, *rest):
        serialized, names, *rest = host(node, serialized, names, *rest)
        sparse_keys, dense_keys, defaults = rest[:n_sparse], rest[n_sparse:n_sparse + n_dense], rest[n_sparse + n_dense:]
        if serialized.ndim != 1:
            raise GraphError(f"node {node.name!r} (ParseExample): serialized must be a vector, got shape "
                             f"{serialized.shape}")
        sparse = list(zip([_texts(k)[0] for k in sparse_keys], sparse_types))
        dense = _dense_specs(node, [_texts(k)[0] for k in dense_keys], defaults, dense_types, shapes)
        return _Parser(node, sparse, dense, [])(serialized, names)

    return fn


@register("ParseExampleV2")
def _parse_example_v2(node):
    """`tf.io.parse_example` and `parse_single_example` (a scalar `serialized`), with ragged features."""
    sparse_types, dense_types = _types(node, "sparse_types"), node.attr_dtypes("Tdense")
    ragged = _ragged_types(node, "")
    shapes = _shapes(node, len(dense_types))

    def fn(serialized, names, sparse_keys, dense_keys, ragged_keys, *defaults):
        serialized, names, sparse_keys, dense_keys, ragged_keys, *defaults = host(
            node, serialized, names, sparse_keys, dense_keys, ragged_keys, *defaults)
        sparse_keys, dense_keys, ragged_keys = _texts(sparse_keys), _texts(dense_keys), _texts(ragged_keys)
        if (len(sparse_keys), len(dense_keys), len(ragged_keys)) != (len(sparse_types), len(dense_types), len(ragged)):
            raise GraphError(f"node {node.name!r} (ParseExampleV2): {len(sparse_keys)} sparse, {len(dense_keys)} dense "
                             f"and {len(ragged_keys)} ragged keys for {len(sparse_types)}, {len(dense_types)} and "
                             f"{len(ragged)} outputs")
        dense = _dense_specs(node, dense_keys, defaults, dense_types, shapes)
        parser = _Parser(node, list(zip(sparse_keys, sparse_types)), dense,
                         [(k, t, s) for k, (t, s) in zip(ragged_keys, ragged)])
        return parser(serialized, names)

    return fn


@register("ParseSingleExample")
def _parse_single_example(node):
    """TF1's `tf.parse_single_example` before TF 1.14: one scalar Example, keys as attributes."""
    sparse = list(zip(node.attr_strs("sparse_keys"), _types(node, "sparse_types")))
    dense_keys, dense_types = node.attr_strs("dense_keys"), node.attr_dtypes("Tdense")
    shapes = _shapes(node, len(dense_keys))

    def fn(serialized, *defaults):
        serialized, *defaults = host(node, serialized, *defaults)
        if serialized.ndim:
            raise GraphError(f"node {node.name!r} (ParseSingleExample): serialized must be a scalar, got shape "
                             f"{serialized.shape}")
        dense = _dense_specs(node, dense_keys, defaults, dense_types, shapes)
        return _Parser(node, sparse, dense, [])(serialized, np.array([], object))

    return fn


@dataclasses.dataclass(frozen=True)
class _Lists:
    """The feature lists a sequence op asks for: (key, dtype[, shape | split dtype]) per kind."""

    sparse: list
    dense: list
    ragged: list
    missing_ok: frozenset  # dense feature lists that may be missing (then empty)


class _SequenceParser(_Parser):
    """Reads `tf.train.SequenceExample`s: the context as `_Parser` reads Examples, then the feature
    lists, each a list of steps."""

    unbatched_splits = ()

    def __init__(self, node, context: _Parser, lists: _Lists, lengths: bool):
        super().__init__(node, context.sparse, context.dense, context.ragged)
        self.lists, self.lengths = lists, lengths

    def __call__(self, serialized: np.ndarray, names: np.ndarray) -> list:
        if serialized.ndim > 1:
            raise self._error(f"serialized must be a scalar or a vector, got shape {serialized.shape}")
        batch = serialized.ndim == 1
        examples = self.examples(serialized, names, example_pb2.SequenceExample)
        context = self.parse(self.messages([ex.context for ex in examples]), batch)
        where = [f"example {i}" for i in range(len(examples))]
        sparse = [self._sparse_list(examples, where, key, dtype, batch) for key, dtype in self.lists.sparse]
        dense = [self._dense_list(examples, where, key, dtype, shape, batch) for key, dtype, shape in self.lists.dense]
        ragged = [self._ragged_list(examples, where, key, dtype, splits, batch)
                  for key, dtype, splits in self.lists.ragged]
        lists = ([s[0] for s in sparse] + [s[1] for s in sparse] + [s[2] for s in sparse] + [d[0] for d in dense]
                 + ([d[1] for d in dense] if self.lengths else []))
        return context + lists + [r[0] for r in ragged] + [r[1] for r in ragged] + [r[2] for r in ragged]

    def _steps(self, example, key, dtype, where):
        """The feature list's steps, each a list of values; None where the SequenceExample lacks it."""
        lists = example.feature_lists.feature_list
        if key not in lists:
            return None
        steps = [self.feature(f, key, dtype, f"{where}, step {t}") for t, f in enumerate(lists[key].feature)]
        empty = [] if dtype.kind == "O" else np.zeros(0, dtype)
        return [empty if step is None else step for step in steps]

    def _sparse_list(self, examples, where, key, dtype, batch):
        per = [self._steps(ex, key, dtype, w) or [] for ex, w in zip(examples, where)]
        values = _concat([step for steps in per for step in steps], dtype)
        index = [(i, t, j) for i, steps in enumerate(per) for t, step in enumerate(steps) for j in range(len(step))]
        longest = max((len(step) for steps in per for step in steps), default=0)
        most = max(map(len, per), default=0)
        if batch:
            return np.array(index, np.int64).reshape(-1, 3), values, np.array([len(per), most, longest], np.int64)
        return np.array([i[1:] for i in index], np.int64).reshape(-1, 2), values, np.array([most, longest], np.int64)

    def _dense_list(self, examples, where, key, dtype, shape, batch):
        stride = math.prod(shape)
        per = []
        for ex, w in zip(examples, where):
            steps = self._steps(ex, key, dtype, w)
            if steps is None:
                if key not in self.lists.missing_ok:
                    raise self._error(f"{w}: feature list {key!r} is required but missing; mark it allow_missing in "
                                      f"the graph, or feed examples that have it")
                steps = []
            for t, step in enumerate(steps):
                if len(step) != stride:
                    raise self._error(f"{w}, feature list {key!r}, step {t}: {len(step)} values do not fill shape "
                                      f"{list(shape)}")
            per.append(steps)
        most = max(map(len, per), default=0)
        out = np.full((len(per), most * stride), b"" if dtype.kind == "O" else 0, dtype)
        for i, steps in enumerate(per):
            out[i, :len(steps) * stride] = _concat(steps, dtype)
        lengths = np.array([len(steps) for steps in per], np.int64)
        out = out.reshape(len(per), most, *shape)
        return (out, lengths) if batch else (out[0], lengths[0])

    def _ragged_list(self, examples, where, key, dtype, splits, batch):
        per = [self._steps(ex, key, dtype, w) or [] for ex, w in zip(examples, where)]
        values = _concat([step for steps in per for step in steps], dtype)
        inner = np.cumsum([0] + [len(step) for steps in per for step in steps]).astype(splits)
        outer = np.cumsum([0] + [len(steps) for steps in per]).astype(splits)
        return values, (outer if batch else np.zeros(self.unbatched_splits, splits)), inner


def _sequence_lists(node, dense_shapes_attr: str, sparse_keys, sparse_types, dense_keys, dense_types, ragged,
                    missing_ok) -> _Lists:
    shapes = [_tensor_util.shape_from_proto(s) for s in node.attr_list(dense_shapes_attr).shape]
    if len(shapes) != len(dense_keys) or any(s is None or any(d < 0 for d in s) for s in shapes):
        raise GraphError(f"node {node.name!r} ({node.type}): {dense_shapes_attr} {shapes} must give "
                         f"{len(dense_keys)} fully defined shapes")
    return _Lists(list(zip(sparse_keys, sparse_types)),
                  [(k, _dtype(node, t), tuple(s)) for k, t, s in zip(dense_keys, dense_types, shapes)],
                  ragged, frozenset(missing_ok))


@register("ParseSequenceExampleV2")
def _parse_sequence_example_v2(node):
    """`tf.io.parse_sequence_example` and `parse_single_sequence_example` (a scalar `serialized`)."""
    ctx_sparse_types, ctx_dense_types = _types(node, "context_sparse_types"), node.attr_dtypes("Tcontext_dense")
    ctx_ragged = _ragged_types(node, "context_")
    ctx_shapes = _shapes(node, len(ctx_dense_types), "context_dense_shapes")
    fl_sparse_types, fl_dense_types = _types(node, "feature_list_sparse_types"), node.attr_dtypes("feature_list_dense_types")
    fl_ragged = _ragged_types(node, "feature_list_")

    def fn(serialized, names, ctx_sparse_keys, ctx_dense_keys, ctx_ragged_keys, fl_sparse_keys, fl_dense_keys,
           fl_ragged_keys, missing_ok, *defaults):
        serialized, names, *keys, missing_ok = host(node, serialized, names, ctx_sparse_keys, ctx_dense_keys,
                                                    ctx_ragged_keys, fl_sparse_keys, fl_dense_keys, fl_ragged_keys,
                                                    missing_ok)
        defaults = host(node, *defaults)
        keys = [_texts(k) for k in keys]
        counts = [len(ctx_sparse_types), len(ctx_dense_types), len(ctx_ragged), len(fl_sparse_types),
                  len(fl_dense_types), len(fl_ragged)]
        if [len(k) for k in keys] != counts or missing_ok.size != counts[4]:
            raise GraphError(f"node {node.name!r} (ParseSequenceExampleV2): {[len(k) for k in keys]} keys of each "
                             f"kind for {counts} outputs")
        context = _Parser(node, list(zip(keys[0], ctx_sparse_types)),
                          _dense_specs(node, keys[1], defaults, ctx_dense_types, ctx_shapes),
                          [(k, t, s) for k, (t, s) in zip(keys[2], ctx_ragged)])
        lists = _sequence_lists(node, "feature_list_dense_shapes", keys[3], fl_sparse_types, keys[4], fl_dense_types,
                                [(k, t, s) for k, (t, s) in zip(keys[5], fl_ragged)],
                                [k for k, ok in zip(keys[4], missing_ok.reshape(-1).tolist()) if ok])
        return _SequenceParser(node, context, lists, lengths=True)(serialized, names)

    return fn


@register("ParseSequenceExample", "ParseSingleSequenceExample")
def _parse_sequence_example_v1(node):
    """TF1's `tf.parse_single_sequence_example` (keys as inputs) and batched `ParseSequenceExample`
    (keys as attributes), without ragged features."""
    single = node.type == "ParseSingleSequenceExample"
    counts = [node.attr_int(a) for a in ("Ncontext_sparse", "Ncontext_dense", "Nfeature_list_sparse",
                                         "Nfeature_list_dense")]
    ctx_sparse_types, ctx_dense_types = _types(node, "context_sparse_types"), node.attr_dtypes("Tcontext_dense")
    ctx_shapes = _shapes(node, counts[1], "context_dense_shapes")
    fl_sparse_types, fl_dense_types = _types(node, "feature_list_sparse_types"), node.attr_dtypes("feature_list_dense_types")

    def fn(serialized, *rest):
        serialized, *rest = host(node, serialized, *rest)
        if single:
            missing_ok, rest = _texts(rest[0]), rest[1:]
            keys, at = [], 0
            for n in counts:
                keys.append([_texts(k)[0] for k in rest[at:at + n]])
                at += n
            defaults, names = rest[at:-1], rest[-1]
            if serialized.ndim:
                raise GraphError(f"node {node.name!r} ({node.type}): serialized must be a scalar, got shape "
                                 f"{serialized.shape}")
        else:
            names, defaults = rest[0], rest[1:]
            keys = [node.attr_strs(a) for a in ("context_sparse_keys", "context_dense_keys", "feature_list_sparse_keys",
                                                "feature_list_dense_keys")]
            missing_ok = node.attr_strs("feature_list_dense_missing_assumed_empty")
            if serialized.ndim != 1:
                raise GraphError(f"node {node.name!r} ({node.type}): serialized must be a vector, got shape "
                                 f"{serialized.shape}")
        context = _Parser(node, list(zip(keys[0], ctx_sparse_types)),
                          _dense_specs(node, keys[1], defaults, ctx_dense_types, ctx_shapes), [])
        lists = _sequence_lists(node, "feature_list_dense_shapes", keys[2], fl_sparse_types, keys[3], fl_dense_types,
                                [], missing_ok)
        return _SequenceParser(node, context, lists, lengths=not single)(serialized, np.atleast_1d(names))

    return fn


# --- CSV -------------------------------------------------------------------------------------------

_INT = re.compile(rb"[+-]?[0-9]+")
_FLOAT = re.compile(rb"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf(?:inity)?|nan)", re.IGNORECASE)
_RANGES = {np.dtype(np.int32): (-(1 << 31), (1 << 31) - 1), np.dtype(np.int64): (-(1 << 63), (1 << 63) - 1)}


def _csv_fields(node, record: bytes, index: int, delim: bytes, quoted: bool) -> list[bytes]:
    """The fields of one CSV record, as TF's DecodeCSV splits them (RFC 4180 quotes when `quoted`)."""
    fields, i, n = [], 0, len(record)
    while True:
        if quoted and record[i:i + 1] == b'"':
            field, i = bytearray(), i + 1
            while True:
                if i >= n:
                    raise GraphError(f"node {node.name!r} (DecodeCSV): record {index} ends inside a quoted field; "
                                     f"quotes must come in pairs: {record!r}")
                c = record[i:i + 1]
                if c == b'"':
                    if record[i + 1:i + 2] == b'"':
                        field += b'"'
                        i += 2
                        continue
                    i += 1
                    if i < n and record[i:i + 1] != delim:
                        raise GraphError(f"node {node.name!r} (DecodeCSV): quote inside a string has to be escaped "
                                         f"by another quote, in record {index}: {record!r}")
                    break
                field += c
                i += 1
            fields.append(bytes(field))
        else:
            end = record.find(delim, i)
            end = n if end < 0 else end
            field = record[i:end]
            if quoted and b'"' in field:
                raise GraphError(f"node {node.name!r} (DecodeCSV): unquoted fields cannot have quotes inside, in "
                                 f"record {index}: {record!r}")
            fields.append(field)
            i = end
        if i >= n:
            return fields
        i += 1  # the delimiter; one at the very end leaves an empty last field
        if i == n:
            fields.append(b"")
            return fields


def _csv_value(node, field: bytes, dtype: np.dtype, column: int, index: int):
    if dtype.kind == "O":
        return field
    text = field.strip(b" \t\n\v\f\r")
    if dtype.kind == "i":
        if _INT.fullmatch(text) and _RANGES[dtype][0] <= int(text) <= _RANGES[dtype][1]:
            return int(text)
    elif _FLOAT.fullmatch(text):
        return float(text)
    raise GraphError(f"node {node.name!r} (DecodeCSV): field {column} in record {index} is not a valid "
                     f"{dtype.name}: {field!r}")


@register("DecodeCSV")
def _decode_csv(node):
    types = [np.dtype(_dtypes.to_numpy(t, where=f"node {node.name!r}")) for t in node.attr_dtypes("OUT_TYPE")]
    delim = node.attr_bytes("field_delim") if node.has_attr("field_delim") else b","
    quoted = node.attr_bool("use_quote_delim", True)
    na_value = node.attr_bytes("na_value") if node.has_attr("na_value") else b""
    select = node.attr_ints("select_cols", [])
    if len(delim) != 1:
        raise GraphError(f"node {node.name!r} (DecodeCSV): field_delim must be one character, got {delim!r}")
    if select and (len(select) != len(types) or any(b <= a for a, b in zip(select, select[1:])) or select[0] < 0):
        raise GraphError(f"node {node.name!r} (DecodeCSV): select_cols {select} must be {len(types)} increasing "
                         f"non-negative column indices")

    def fn(records, *defaults):
        records, *defaults = host(node, records, *defaults)
        for column, default in enumerate(defaults):
            if default.size > 1:
                raise GraphError(f"node {node.name!r} (DecodeCSV): record_defaults[{column}] must hold one value or "
                                 f"none, got shape {default.shape}")
        wanted = select[-1] + 1 if select else len(types)
        columns = [[] for _ in types]
        for index, record in enumerate(records.reshape(-1).tolist()):
            fields = _csv_fields(node, record, index, delim, quoted)
            if (len(fields) < wanted) if select else (len(fields) != wanted):
                raise GraphError(f"node {node.name!r} (DecodeCSV): expected {wanted} fields but record {index} has "
                                 f"{len(fields)}: {record!r}")
            for column, (field, dtype, default) in enumerate(zip([fields[c] for c in select] if select else fields,
                                                                 types, defaults)):
                if field == na_value or (not field and dtype.kind != "O") or (not field and default.size):
                    if not default.size:
                        raise GraphError(f"node {node.name!r} (DecodeCSV): field {column} is required but missing in "
                                         f"record {index}; give it a default in record_defaults")
                    columns[column].append(default.reshape(-1)[0])
                else:
                    columns[column].append(_csv_value(node, field, dtype, column, index))
        return [(_bytes_array(col, records.shape) if dtype.kind == "O" else np.array(col, dtype).reshape(records.shape))
                for col, dtype in zip(columns, types)]

    return fn


# --- tensors and compressed strings ----------------------------------------------------------------


@register("ParseTensor")
def _parse_tensor(node):
    dtype_enum = node.attr_dtype_enum("out_type")

    def fn(serialized):
        (serialized,) = host(node, serialized)
        if serialized.ndim:
            raise GraphError(f"node {node.name!r} (ParseTensor): serialized must be a scalar, got shape "
                             f"{serialized.shape}")
        try:
            proto = tensor_pb2.TensorProto.FromString(serialized.item())
        except (DecodeError, RuntimeError) as e:
            raise GraphError(f"node {node.name!r} (ParseTensor): the string is not a serialized TensorProto "
                             f"({e})") from None
        if _dtypes.base_enum(proto.dtype) != dtype_enum:
            raise GraphError(f"node {node.name!r} (ParseTensor): the string holds a {_dtypes.name(proto.dtype)} "
                             f"tensor, but out_type is {_dtypes.name(dtype_enum)}")
        return _tensor_util.to_numpy(proto, where=f"node {node.name!r} (ParseTensor)")

    return fn


@register("SerializeTensor")
def _serialize_tensor(node):
    dtype_enum = node.attr_dtype_enum("T")

    def fn(x):
        (x,) = host(node, x)
        return np.array(_tensor_util.from_numpy(x, dtype_enum).SerializeToString(), object)

    return fn


_WBITS = {"": None, "ZLIB": 15, "GZIP": 31}


@register("DecodeCompressed")
def _decode_compressed(node):
    kind = node.attr_str("compression_type", "")
    if kind not in _WBITS:
        raise GraphError(f"node {node.name!r} (DecodeCompressed): compression_type {kind!r} is not '', 'ZLIB' or "
                         f"'GZIP'")
    wbits = _WBITS[kind]

    def decompress(i: int, data: bytes) -> bytes:
        if wbits is None:
            return data
        stream = zlib.decompressobj(wbits)
        try:  # at most MAX_STRING_BYTES out: a small hostile string must not expand without bound
            out = stream.decompress(data, MAX_STRING_BYTES)
        except zlib.error as e:
            raise GraphError(f"node {node.name!r} (DecodeCompressed): string {i} is not {kind} data ({e})") from None
        if stream.unconsumed_tail:
            raise GraphError(f"node {node.name!r} (DecodeCompressed): string {i} expands to more than jaxmeta's "
                             f"limit of {MAX_STRING_BYTES} bytes")
        if not stream.eof:
            raise GraphError(f"node {node.name!r} (DecodeCompressed): string {i} is truncated {kind} data")
        return out

    def fn(x):
        (x,) = host(node, x)
        return _bytes_array([decompress(i, s) for i, s in enumerate(x.reshape(-1).tolist())], x.shape)

    return fn
