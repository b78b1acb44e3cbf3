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

import numpy as np
from google.protobuf.message import DecodeError

from jaxmeta import _dtypes, _tensor_util
from jaxmeta._errors import GraphError
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


class _Parser:
    """Reads the features an op asks for from `tf.train.Example`s (one op's settings, parsed once)."""

    #: The shape of a ragged feature's row splits for one (scalar) example, as TF's kernel makes them.
    unbatched_splits: tuple[int, ...] = (0,)

    def __init__(self, node, sparse, dense, ragged):
        self.node, self.sparse, self.dense, self.ragged = node, sparse, dense, ragged

    def _error(self, text: str) -> GraphError:
        return GraphError(f"node {self.node.name!r} ({self.node.type}): {text}")

    def values(self, features, key: str, dtype: np.dtype, where: str):
        """The feature's values as a list, or None where the Example lacks it."""
        if key not in features.feature:
            return None
        return self.feature(features.feature[key], key, dtype, where)

    def feature(self, feature, key: str, dtype: np.dtype, where: str):
        """One Feature's values as a list, or None where it holds no list."""
        kind = feature.WhichOneof("kind")
        if kind is None:
            return None
        if kind != _KINDS[dtype]:
            raise self._error(f"{where}, feature {key!r}: holds {_TYPE_NAMES[kind]} values, but the graph parses it "
                              f"as {_TYPE_NAMES[_KINDS[dtype]]}")
        return list(getattr(feature, kind).value)

    def examples(self, serialized: np.ndarray, names: np.ndarray, message=example_pb2.Example) -> list:
        """The messages `serialized` holds (Examples' `features`, or whole SequenceExamples)."""
        names = _texts(names) if np.size(names) else []
        out = []
        for i, data in enumerate(serialized.reshape(-1).tolist()):
            try:
                parsed = message.FromString(data)
            except (DecodeError, RuntimeError) as e:
                name = f" ({names[i]!r})" if i < len(names) else ""
                raise self._error(f"serialized example {i}{name} is not a tf.train.{message.__name__} ({e}); check "
                                  f"what is fed to {self.node.inputs[0] if self.node.inputs else 'its input'}") from None
            out.append(parsed.features if message is example_pb2.Example else parsed)
        return out

    def __call__(self, serialized: np.ndarray, names: np.ndarray) -> list:
        if serialized.ndim > 1:
            raise self._error(f"serialized must be a scalar or a vector, got shape {serialized.shape}")
        return self.parse(self.examples(serialized, names), serialized.ndim == 1)

    def parse(self, examples: list, batch: bool) -> list:
        """The op's outputs from parsed `Features`, one per example (`batch`: with a batch axis)."""
        where = [f"example {i}" for i in range(len(examples))]
        sparse = [self._sparse(examples, where, key, dtype, batch) for key, dtype in self.sparse]
        dense = [self._dense(examples, where, spec, batch) for spec in self.dense]
        ragged = [self._ragged(examples, where, key, dtype, splits, batch) for key, dtype, splits in self.ragged]
        return ([s[0] for s in sparse] + [s[1] for s in sparse] + [s[2] for s in sparse] + dense
                + [r[0] for r in ragged] + [r[1] for r in ragged])

    def _rows(self, examples, where, key, dtype):
        return [self.values(ex, key, dtype, w) or [] for ex, w in zip(examples, where)]

    def _sparse(self, examples, where, key, dtype, batch):
        rows = self._rows(examples, where, key, dtype)
        values = _array([v for row in rows for v in row], dtype)
        longest = max(map(len, rows), default=0)
        if batch:
            indices = np.array([(i, j) for i, row in enumerate(rows) for j in range(len(row))], np.int64).reshape(-1, 2)
            return indices, values, np.array([len(rows), longest], np.int64)
        return np.arange(len(values), dtype=np.int64).reshape(-1, 1), values, np.array([longest], np.int64)

    def _ragged(self, examples, where, key, dtype, splits, batch):
        rows = self._rows(examples, where, key, dtype)
        values = _array([v for row in rows for v in row], dtype)
        if not batch:
            return values, np.zeros(self.unbatched_splits, splits)
        return values, np.cumsum([0] + [len(r) for r in rows]).astype(splits)

    def _dense(self, examples, where, spec: _Dense, batch):
        inner = spec.shape[1:] if spec.variable else spec.shape
        stride = math.prod(inner)
        rows = []
        for ex, w in zip(examples, where):
            values = self.values(ex, spec.key, spec.dtype, w)
            if values is None:
                if spec.variable:
                    values = []
                elif not spec.default.size:
                    raise self._error(f"{w}: feature {spec.key!r} ({spec.dtype}) is required but missing; give it a "
                                      f"default_value in the graph, or feed examples that have it")
            elif (len(values) % stride if spec.variable and stride else len(values) != stride):
                raise self._error(f"{w}, feature {spec.key!r}: {len(values)} values do not fill shape "
                                  f"{list(spec.shape)}")
            rows.append(values)
        if not spec.variable:  # one array from all the values, not one per example
            default = spec.default.astype(spec.dtype).reshape(-1).tolist()
            flat = [v for row in rows for v in (default if row is None else row)]
            out = _array(flat, spec.dtype).reshape(len(rows), *inner)
            return out if batch else out[0]
        length = max((len(r) // stride if stride else 0 for r in rows), default=0)
        if not batch:
            return _array(rows[0], spec.dtype).reshape(length, *inner)
        pad = spec.default.reshape(-1)[0] if spec.default.size else (b"" if spec.dtype.kind == "O" else 0)
        out = np.full((len(rows), length * stride), pad, dtype=spec.dtype)
        for i, row in enumerate(rows):
            out[i, :len(row)] = row
        return out.reshape(len(rows), length, *inner)


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
        context = self.parse([ex.context for ex in examples], batch)
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
        return [self.feature(f, key, dtype, f"{where}, step {t}") or [] for t, f in enumerate(lists[key].feature)]

    def _sparse_list(self, examples, where, key, dtype, batch):
        per = [self._steps(ex, key, dtype, w) or [] for ex, w in zip(examples, where)]
        values = _array([v for steps in per for step in steps for v in step], dtype)
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
            out[i, :len(steps) * stride] = [v for step in steps for v in step]
        lengths = np.array([len(steps) for steps in per], np.int64)
        out = out.reshape(len(per), most, *shape)
        return (out, lengths) if batch else (out[0], lengths[0])

    def _ragged_list(self, examples, where, key, dtype, splits, batch):
        per = [self._steps(ex, key, dtype, w) or [] for ex, w in zip(examples, where)]
        values = _array([v for steps in per for step in steps for v in step], dtype)
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
