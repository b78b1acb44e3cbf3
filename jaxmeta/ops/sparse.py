"""SparseTensor arithmetic: `tf.sparse.add` (of a dense or a sparse operand), the sparse-dense
elementwise ops, `tf.sparse.reduce_sum` / `reduce_max`, `tf.sparse.softmax`, `tf.sparse.reorder`,
`tf.sparse.concat`, feature crosses (`SparseCross`), `tf.sparse.slice`, `tf.sparse.maximum` /
`minimum`, `tf.edit_distance` and the set operations of `tf.sets`.

A SparseTensor is (indices [nnz, rank], values [nnz], dense_shape [rank]). Most of these ops keep
nnz, so they trace under `jax.jit`; where the dense shape sizes an output (`SparseReduce*`), it
must be known when tracing. `SparseAdd` (of two SparseTensors), `SparseCross` and the others
that size their output from the values (slices, maxima, edit distances, sets) need them concrete
(constants, or a run without `jax.jit`; a `Session` runs them on the host by itself). Like TF's
kernels, `SparseSoftmax`, `SparseReorder` and `SparseConcat` return their entries in canonical
(row-major) order. `SparseToDense`, `SparseReshape`,
`SparseTensorDenseMatMul` and the sparse-segment ops live with the segment ops (`ops/segment.py`).

`SerializeSparse`, `SerializeManySparse`, `DeserializeSparse` and `DeserializeManySparse` turn
SparseTensors into strings of TensorProtos and back, byte for byte as TF; like the string ops they
run on the host (see `ops/strings.py`).
"""

from __future__ import annotations

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
from google.protobuf.message import DecodeError

from jaxmeta import _dtypes, _tensor_util
from jaxmeta._errors import GraphError
from jaxmeta.ops.array import SCATTER_UPDATES, scatter_nd_at
from jaxmeta.ops.registry import OUTPUT_SIZES, need_known, register, static_ints, xnp
from jaxmeta.ops.strings import _bytes_array, _limit, host
from jaxmeta.proto import tensor_pb2


def _order(xp, indices):
    """The permutation that sorts sparse indices row-major (lexicographically, no overflow)."""
    rank = indices.shape[1]
    if rank == 0 or indices.shape[0] == 0:
        return xp.arange(indices.shape[0])
    return xp.lexsort([indices[:, k] for k in reversed(range(rank))])


@register("SparseReorder")
def _sparse_reorder(node):
    def fn(indices, values, shape):
        xp = xnp(indices, values)
        order = _order(xp, indices)
        return indices[order], values[order]

    return fn


@register("SparseTensorDenseAdd")
def _sparse_tensor_dense_add(node):
    def fn(indices, values, shape, dense):
        dense = jnp.asarray(dense)
        return SCATTER_UPDATES["Add"](scatter_nd_at(node, dense, indices), jnp.asarray(values, dense.dtype))

    return fn


_CWISE = {"SparseDenseCwiseAdd": jnp.add, "SparseDenseCwiseMul": jnp.multiply, "SparseDenseCwiseDiv": jnp.divide}


@register(*_CWISE)
def _sparse_dense_cwise(node):
    op = _CWISE[node.type]
    integer_div = node.type == "SparseDenseCwiseDiv"

    def fn(indices, values, shape, dense):
        dense = jnp.asarray(dense)
        rank, k = indices.shape[1], dense.ndim
        # The dense operand broadcasts to the sparse shape, aligned on the right.
        columns = jnp.asarray(indices)
        at = tuple(jnp.zeros_like(columns[:, 0]) if dense.shape[j] == 1 else columns[:, rank - k + j] for j in range(k))
        gathered = dense[at] if k else jnp.broadcast_to(dense, np.shape(values))
        if integer_div and jnp.issubdtype(dense.dtype, jnp.integer):
            return jax.lax.div(jnp.asarray(values), gathered)  # C's truncating division, as TF's kernel
        return op(jnp.asarray(values), gathered)

    return fn


def _reduction(node, indices, shape, axes):
    """(segment id of each entry, number of segments, output shape) of a SparseReduce* node."""
    dims = static_ints(shape, node, "the dense shape")
    rank = len(dims)
    listed = {a + rank if a < 0 else a for a in static_ints(axes, node, "the reduction axes")}
    kept = [d for d in range(rank) if d not in listed] if listed else list(range(rank))
    segment = jnp.zeros(np.shape(indices)[0], jnp.int32)
    for d in kept:
        segment = segment * dims[d] + jnp.asarray(indices)[:, d].astype(jnp.int32)
    keep_dims = node.attr_bool("keep_dims", False)
    out_shape = [dims[d] if d in kept else 1 for d in range(rank)] if keep_dims else [dims[d] for d in kept]
    return segment, int(np.prod([dims[d] for d in kept])), out_shape


@register("SparseReduceSum")
def _sparse_reduce_sum(node):
    def fn(indices, values, shape, axes):
        segment, count, out_shape = _reduction(node, indices, shape, axes)
        values = jnp.asarray(values)
        return jnp.zeros(count, values.dtype).at[segment].add(values).reshape(out_shape)

    return fn


@register("SparseReduceMax")
def _sparse_reduce_max(node):
    def fn(indices, values, shape, axes):
        segment, count, out_shape = _reduction(node, indices, shape, axes)
        values = jnp.asarray(values)
        lowest = -jnp.inf if jnp.issubdtype(values.dtype, jnp.floating) else jnp.iinfo(values.dtype).min
        maxima = jnp.full(count, lowest, values.dtype).at[segment].max(values)
        present = jnp.zeros(count, bool).at[segment].set(True)
        # TF's output starts at zero: a group with no entries stays 0, not -inf.
        return jnp.where(present, maxima, jnp.zeros((), values.dtype)).reshape(out_shape)

    return fn


@register("SparseSoftmax")
def _sparse_softmax(node):
    def fn(indices, values, shape):
        indices, values = jnp.asarray(indices), jnp.asarray(values)
        n = values.shape[0]
        if n == 0:
            return values
        order = _order(jnp, indices)
        rows, values = indices[order][:, :-1], values[order]
        # A new row starts wherever the leading coordinates change (softmax runs along the last).
        starts = jnp.concatenate([jnp.ones(1, bool), jnp.any(rows[1:] != rows[:-1], axis=1)])
        segment = jnp.cumsum(starts) - 1
        top = jax.ops.segment_max(values, segment, num_segments=n)
        e = jnp.exp(values - top[segment])
        return e / jax.ops.segment_sum(e, segment, num_segments=n)[segment]

    return fn


@register("SparseConcat")
def _sparse_concat(node):
    count = node.attr_int("N")

    def fn(*args):
        indices, values, shapes = args[:count], args[count:2 * count], args[2 * count:]
        rank = np.shape(indices[0])[1]
        dim = node.attr_int("concat_dim")
        dim = dim + rank if dim < 0 else dim
        xp = xnp(*indices, *values, *shapes)
        shifted, offset = [], 0
        for ind, shp in zip(indices, shapes):
            column = ind[:, dim] + offset
            shifted.append(xp.concatenate([ind[:, :dim], column[:, None], ind[:, dim + 1:]], axis=1))
            offset = offset + shp[dim]
        out_indices = xp.concatenate(shifted, axis=0)
        out_values = xp.concatenate([xp.asarray(v) for v in values])
        out_shape = xp.concatenate([shapes[0][:dim], xp.reshape(offset, (1,)), shapes[0][dim + 1:]])
        order = _order(xp, out_indices)
        return out_indices[order], out_values[order], out_shape.astype(shapes[0].dtype)

    return fn


def _hash_combine(a: int, b: int) -> int:
    """`tf.contrib.layers`' first feature-cross hash step, on uint64 values (its `a >> 4` shifts
    the signed value)."""
    signed = a - (1 << 64) if a >> 63 else a
    return (a ^ (b + 0x9E3779B97F4A7800 + (signed << 10) + (signed >> 4))) & ((1 << 64) - 1)


@register("SparseCross", "SparseFeatureCross", "SparseFeatureCrossV2")
def _sparse_cross(node):
    """Feature crosses (`crossed_column`, `tf.sparse.cross(_hashed)`): per row, every combination of
    one feature from each column (sparse columns, then dense; the last changing fastest), as
    `a_X_b` strings or as TF's FingerprintCat64 hash. The output size depends on the values, so
    the inputs must be concrete (strings usually are: see `ops/strings.py`).

    `tf.contrib.layers`' crosses are the same kernel: `SparseFeatureCrossV2` is `SparseCross`, and
    the first `SparseFeatureCross` hashes with `_hash_combine` from a fixed seed (no hash key)."""
    from jaxmeta.ops.strings import _M64, each_once, fingerprint64, fingerprint_cat64, host

    count = node.attr_int("N")
    hashed, buckets = node.attr_bool("hashed_output"), node.attr_int("num_buckets")
    first_version = node.type == "SparseFeatureCross"
    hash_key = 0xDECAFCAFFE if first_version else node.attr_int("hash_key") & _M64
    combine = _hash_combine if first_version else fingerprint_cat64

    def fn(*args):
        arrays = host(node, *args)
        indices, values, shapes, dense = (arrays[:count], arrays[count:2 * count], arrays[2 * count:3 * count],
                                          arrays[3 * count:])
        batch = int(shapes[0][0]) if count else dense[0].shape[0]
        columns = []
        for ind, val in zip(indices, values):
            rows = [[] for _ in range(batch)]
            for r, v in zip(ind[:, 0].tolist(), val.tolist()):
                rows[r].append(v)
            columns.append(rows)
        columns += [[list(row) for row in d.reshape(batch, -1).tolist()] for d in dense]
        if hashed:  # a string feature hashes to its Fingerprint64, an integer is its own hash
            flat = each_once(lambda v: fingerprint64(v) if isinstance(v, bytes) else v & _M64,
                             [v for col in columns for row in col for v in row])
            hashes = iter(flat)
            features = [[[next(hashes) for _ in row] for row in col] for col in columns]
        else:
            features = [[[v if isinstance(v, bytes) else str(v).encode() for v in row] for row in col]
                        for col in columns]
        out_indices, out_values, crossed = [], [], {}  # each distinct combination hashed once
        for r in range(batch):
            for j, combo in enumerate(itertools.product(*(col[r] for col in features))):
                out_indices.append((r, j))
                if hashed:
                    if combo not in crossed:
                        h = hash_key
                        for feature in combo:
                            h = combine(h, feature)
                        # Without buckets TF takes the hash modulo int64's max, so it is never negative.
                        crossed[combo] = h % buckets if buckets > 0 else h % ((1 << 63) - 1)
                    out_values.append(crossed[combo])
                else:
                    out_values.append(b"_X_".join(combo))
        per_row = np.bincount([r for r, _ in out_indices], minlength=batch) if out_indices else np.zeros(batch, int)
        width = int(per_row.max()) if batch else 0
        out = np.empty(len(out_values), object)
        out[:] = out_values
        return (np.array(out_indices, np.int64).reshape(-1, 2), out.astype(np.int64) if hashed else out,
                np.array([batch, width], np.int64))

    return fn


@register("SparseAdd")
def _sparse_add(node):
    """Two SparseTensors merged in canonical order (both inputs canonical, as TF requires): entries
    at the same index are summed and kept when |sum| >= thresh. The output size depends on the
    indices, so they must be concrete."""

    def fn(a_indices, a_values, a_shape, b_indices, b_values, b_shape, thresh):
        a_idx, a_val, b_idx, b_val, limit = need_known(node, "the indices", OUTPUT_SIZES, a_indices, a_values, b_indices, b_values, thresh)
        keys_a, keys_b = [tuple(r) for r in a_idx.tolist()], [tuple(r) for r in b_idx.tolist()]
        out_idx, out_val, i, j = [], [], 0, 0
        while i < len(keys_a) and j < len(keys_b):
            if keys_a[i] < keys_b[j]:
                out_idx.append(keys_a[i]), out_val.append(a_val[i])
                i += 1
            elif keys_a[i] > keys_b[j]:
                out_idx.append(keys_b[j]), out_val.append(b_val[j])
                j += 1
            else:
                total = a_val[i] + b_val[j]
                if np.abs(total) >= limit:
                    out_idx.append(keys_a[i]), out_val.append(total)
                i, j = i + 1, j + 1
        out_idx += keys_a[i:] + keys_b[j:]
        out_val += list(a_val[i:]) + list(b_val[j:])
        rank = a_idx.shape[1]
        return (np.array(out_idx, np.int64).reshape(-1, rank), np.array(out_val, a_val.dtype).reshape(-1),
                a_shape)

    return fn


def _levenshtein(a: np.ndarray, b: np.ndarray) -> int:
    """Edits (insertions, deletions, substitutions) turning sequence `a` into `b`; one NumPy row
    per element of `a` (a row's insertions are a running minimum)."""
    if a.size == 0 or b.size == 0:
        return int(max(a.size, b.size))
    steps = np.arange(b.size + 1)
    row = steps.copy()
    strings = b.dtype == object  # compared in Python: NumPy would read b"a\0" as b"a"
    for i, x in enumerate(a, 1):
        differ = np.fromiter((y != x for y in b.tolist()), bool, b.size) if strings else b != x
        best = np.empty_like(row)
        best[0] = i
        best[1:] = np.minimum(row[1:] + 1, row[:-1] + differ)
        row = np.minimum.accumulate(best - steps) + steps
    return int(row[-1])


def _sequences(indices: np.ndarray, values: np.ndarray) -> dict[tuple, np.ndarray]:
    """A SparseTensor's sequences along its last axis, keyed by the index of the others."""
    groups: dict[tuple, list] = {}
    for k in np.lexsort(indices.T[::-1]) if indices.size else []:
        groups.setdefault(tuple(indices[k, :-1].tolist()), []).append(values[k])
    return {key: np.asarray(v, values.dtype) for key, v in groups.items()}  # object strings stay whole


@register("EditDistance")
def _edit_distance(node):
    """`tf.edit_distance`: the Levenshtein distance between the hypothesis and truth sequences
    (the last axis of two SparseTensors) at every index of the other axes, over the larger of the
    two dense shapes; divided by the truth's length with `normalize` (x / 0: inf, 0 / 0: NaN, as
    TF's float division). The sequences are read on the host, so the inputs must be known (the
    output of CTC decoders is anyway)."""
    normalize = node.attr_bool("normalize", True)

    def fn(h_indices, h_values, h_shape, t_indices, t_values, t_shape):
        h_idx, h_val, h_shp, t_idx, t_val, t_shp = need_known(
            node, "both SparseTensors", OUTPUT_SIZES, h_indices, h_values, h_shape, t_indices, t_values, t_shape)
        if h_shp.size != t_shp.size or h_shp.size < 1 or h_idx.shape[-1:] != h_shp.shape or t_idx.shape[-1:] != t_shp.shape:
            raise GraphError(f"node {node.name!r} ({node.type}): the hypothesis (shape {h_shp.tolist()}) and truth "
                             f"(shape {t_shp.tolist()}) must be SparseTensors of one rank")
        out_shape = tuple(int(v) for v in np.maximum(h_shp[:-1], t_shp[:-1]))
        hyp, truth = _sequences(h_idx, h_val), _sequences(t_idx, t_val)
        out = np.zeros(out_shape, np.float32)
        empty = np.zeros(0, t_val.dtype)
        with np.errstate(divide="ignore", invalid="ignore"):
            for key in set(hyp) | set(truth):
                if any(not 0 <= k < n for k, n in zip(key, out_shape)):
                    raise GraphError(f"node {node.name!r} ({node.type}): index {list(key)} is outside the "
                                     f"output's shape {list(out_shape)}, which TF rejects")
                a, b = hyp.get(key, empty), truth.get(key, empty)
                dist = np.float32(_levenshtein(a, b))
                out[key] = dist / np.float32(b.size) if normalize else dist
        return out

    return fn


@register("SparseSlice")
def _sparse_slice(node):
    """`tf.sparse.slice`: the entries inside [start, start + size), their indices from `start`,
    in input order; the dense shape clipped to what the tensor holds past `start`."""

    def fn(indices, values, shape, start, size):
        idx, shp, begin, extent = need_known(node, "the indices and bounds", OUTPUT_SIZES, indices, shape, start, size)
        begin, extent = begin.astype(np.int64), extent.astype(np.int64)
        inside = np.all((idx >= begin) & (idx < begin + extent), axis=1) if idx.size else np.zeros(len(idx), bool)
        keep = np.nonzero(inside)[0]
        out_shape = np.maximum(np.minimum(begin + extent, shp) - begin, 0)
        picked = values[keep] if isinstance(values, np.ndarray) else jnp.asarray(values)[keep]
        return (idx[keep] - begin).astype(np.int64), picked, out_shape.astype(np.int64)

    return fn


@register("SparseSparseMaximum", "SparseSparseMinimum")
def _sparse_sparse_extreme(node):
    """`tf.sparse.maximum/minimum` of two SparseTensors of one shape: every index either holds,
    in canonical order, with the larger (smaller) value, a missing entry counting as 0."""
    pick = np.maximum if node.type == "SparseSparseMaximum" else np.minimum

    def fn(a_indices, a_values, a_shape, b_indices, b_values, b_shape):
        a_idx, a_val, a_shp, b_idx, b_val, b_shp = need_known(
            node, "both SparseTensors", OUTPUT_SIZES, a_indices, a_values, a_shape, b_indices, b_values, b_shape)
        if a_shp.tolist() != b_shp.tolist():
            raise GraphError(f"node {node.name!r} ({node.type}): the shapes {a_shp.tolist()} and {b_shp.tolist()} "
                             "differ, which TF rejects")
        rank = len(a_shp)
        keys = sorted({tuple(r) for r in a_idx.tolist()} | {tuple(r) for r in b_idx.tolist()})
        zero = np.zeros((), a_val.dtype)
        a_map = dict(zip(map(tuple, a_idx.tolist()), a_val))
        b_map = dict(zip(map(tuple, b_idx.tolist()), b_val))
        values = [pick(a_map.get(k, zero), b_map.get(k, zero)) for k in keys]
        return np.array(keys, np.int64).reshape(-1, rank), np.array(values, a_val.dtype).reshape(-1)

    return fn


# -- sets along the last axis (tf.sets) -------------------------------------------------------------


def _dense_sets(x: np.ndarray) -> tuple[dict[tuple, set], tuple]:
    """A dense tensor's sets: every value of the last axis, by the index of the others."""
    lead = x.shape[:-1]
    return {key: set(x[key].tolist()) for key in np.ndindex(*lead)}, lead


def _sparse_sets(indices: np.ndarray, values: np.ndarray, shape: np.ndarray) -> tuple[dict[tuple, set], tuple]:
    """A SparseTensor's sets: its `_sequences`' values, by the index of the other axes."""
    groups = {key: set(seq.tolist()) for key, seq in _sequences(indices, values).items()}
    return groups, tuple(int(d) for d in shape[:-1])


_SET_OPERATIONS = {
    "a-b": lambda a, b: a - b, "b-a": lambda a, b: b - a,
    "intersection": lambda a, b: a & b, "union": lambda a, b: a | b,
}


@register("DenseToDenseSetOperation", "DenseToSparseSetOperation", "SparseToSparseSetOperation")
def _set_operation(node):
    """`tf.sets.intersection/union/difference` over the last axis: a SparseTensor of each group's
    resulting set in ascending order (groups in order, empty ones left out), its last dimension
    the largest set. Run on the host: the result's size depends on the values."""
    name = node.attr_str("set_operation").lower()
    if name not in _SET_OPERATIONS:
        raise GraphError(f"node {node.name!r} ({node.type}): set_operation {name!r} is not one of "
                         f"{sorted(_SET_OPERATIONS)}")
    apply = _SET_OPERATIONS[name]
    kinds = {"DenseToDenseSetOperation": "dd", "DenseToSparseSetOperation": "ds",
             "SparseToSparseSetOperation": "ss"}[node.type]

    def fn(*args):
        values = need_known(node, "both sets", OUTPUT_SIZES, *args)
        if kinds[0] == "d":
            (first, lead1), rest = _dense_sets(values[0]), values[1:]
        else:
            (first, lead1), rest = _sparse_sets(*values[:3]), values[3:]
        second, lead2 = _dense_sets(rest[0]) if kinds[1] == "d" else _sparse_sets(*rest)
        if lead1 != lead2:
            raise GraphError(f"node {node.name!r} ({node.type}): the sets' shapes {list(lead1)} and {list(lead2)} "
                             "differ in their leading dimensions, which TF rejects")
        dtype = np.asarray(values[0] if kinds[0] == "d" else values[1]).dtype
        out_indices, out_values, widest = [], [], 0
        for key in sorted(set(first) | set(second)):
            result = sorted(apply(first.get(key, set()), second.get(key, set())))
            widest = max(widest, len(result))
            out_indices += [(*key, k) for k in range(len(result))]
            out_values += result
        rank = len(lead1) + 1
        return (np.array(out_indices, np.int64).reshape(-1, rank), np.array(out_values, dtype).reshape(-1),
                np.array([*lead1, widest], np.int64))

    return fn


@register("SetSize")
def _set_size(node):
    """`tf.sets.size`: the number of distinct values in each group of a SparseTensor (int32)."""

    def fn(indices, values, shape):
        sets, lead = _sparse_sets(*need_known(node, "the set", "jaxmeta needs", indices, values, shape))
        out = np.zeros(lead, np.int32)
        for key, members in sets.items():
            out[key] = len(members)
        return out

    return fn


@register("SparseAddGrad")
def _sparse_add_grad(node):
    """The gradient of SparseAdd's values: each output entry's gradient goes to the a and b
    entries at its index."""

    def fn(grad, a_indices, b_indices, sum_indices):
        a_idx, b_idx, s_idx = need_known(node, "the indices", OUTPUT_SIZES, a_indices, b_indices, sum_indices)
        position = {tuple(r): k for k, r in enumerate(s_idx.tolist())}

        def routed(idx):
            at = np.array([position.get(tuple(r), -1) for r in idx.tolist()], np.int64)
            found = at >= 0
            picked = jnp.asarray(grad)[jnp.asarray(np.where(found, at, 0))]
            return jnp.where(jnp.asarray(found), picked, jnp.zeros((), picked.dtype))

        return routed(a_idx), routed(b_idx)

    return fn


# --- SparseTensors as strings: SerializeSparse, SerializeManySparse, DeserializeSparse ---------------
#
# A serialized SparseTensor is a vector of 3 strings: its indices, values and dense shape, each a
# TensorProto as TF's `Tensor::AsProtoTensorContent` writes it (the values in tensor_content:
# numbers as little-endian bytes, strings as their varint lengths then their bytes). Reading one
# back follows `Tensor::FromProto`, which also takes the typed fields (int64_val, string_val...).

_INT64 = _dtypes.from_numpy(np.int64)
_INT64_MAX = (1 << 63) - 1
_MAX_DIMS = 254  # TensorShape's limit on the rank


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _tensor_bytes(array: np.ndarray, dtype_enum: int) -> bytes:
    """`array` as the serialized TensorProto TF's `AsProtoTensorContent` makes (no content when empty)."""
    proto = tensor_pb2.TensorProto(dtype=dtype_enum, tensor_shape=_tensor_util.shape_to_proto(array.shape))
    if array.size:
        if dtype_enum == _dtypes.STRING:
            items = array.reshape(-1).tolist()
            proto.tensor_content = b"".join([_varint(len(s)) for s in items]) + b"".join(items)
        else:
            little = _dtypes.to_numpy(dtype_enum).newbyteorder("<")
            proto.tensor_content = np.ascontiguousarray(array, little).tobytes()
    return proto.SerializeToString()


def _serialized_types(node) -> int:
    """The values' DataType of a Serialize*Sparse node; a GraphError for what jaxmeta cannot write."""
    out_type = node.attr_dtype_enum("out_type", _dtypes.STRING)
    if out_type != _dtypes.STRING:
        raise GraphError(f"node {node.name!r} ({node.type}): out_type {_dtypes.short_name(out_type)} is not "
                         "supported; jaxmeta serializes SparseTensors to strings only (out_type=tf.string: a "
                         "variant holds the tensors themselves, for tf.data, which jaxmeta does not run)")
    value_enum = node.attr_dtype_enum("T")
    _dtypes.to_numpy(value_enum, where=f"node {node.name!r} ({node.type}): the SparseTensor's values")
    return value_enum


def _sparse_inputs(node, indices, values, shape, value_enum: int):
    """A SparseTensor's (indices, values, dense shape) as NumPy in TF's dtypes (JAX may hold 64-bit
    numbers narrowed), checked to be a matrix and two vectors as TF's kernels do."""
    indices, values, shape = host(node, indices, values, shape)
    for what, array, rank in (("indices", indices, 2), ("values", values, 1), ("dense shape", shape, 1)):
        if array.ndim != rank:
            raise GraphError(f"node {node.name!r} ({node.type}): the SparseTensor's {what} must be a "
                             f"{'matrix' if rank == 2 else 'vector'}, got shape {array.shape}")
    if value_enum != _dtypes.STRING:
        values = values.astype(_dtypes.to_numpy(value_enum))
    return indices.astype(np.int64), values, shape.astype(np.int64)


def _check_dims(node, dims: list[int], what: str) -> None:
    """TF's TensorShape checks: no negative size, at most 254 dims, fewer than 2**63 elements."""
    if len(dims) > _MAX_DIMS:
        raise GraphError(f"node {node.name!r} ({node.type}): {what} has {len(dims)} dimensions, more than "
                         f"TF's {_MAX_DIMS}")
    count = 1
    for d in dims:
        if d < 0:
            raise GraphError(f"node {node.name!r} ({node.type}): {what} {dims} has a negative dimension")
        count *= d
        if count > _INT64_MAX:
            raise GraphError(f"node {node.name!r} ({node.type}): {what} {dims} has more than 2**63 - 1 "
                             "elements")


@register("SerializeSparse")
def _serialize_sparse(node):
    """tf.io.serialize_sparse: [indices, values, dense_shape] as 3 serialized TensorProtos. Like
    TF's kernel, it does not check that the three fit together."""
    value_enum = _serialized_types(node)

    def fn(indices, values, shape):
        indices, values, shape = _sparse_inputs(node, indices, values, shape, value_enum)
        return _bytes_array([_tensor_bytes(indices, _INT64), _tensor_bytes(values, value_enum),
                             _tensor_bytes(shape, _INT64)], (3,))

    return fn


def _check_canonical(node, indices: np.ndarray, dims: list[int]) -> None:
    """TF's `SparseTensor::IndicesValid`: every index within the dense shape, in row-major order,
    none repeated."""
    where = f"node {node.name!r} ({node.type}): the SparseTensor's indices"
    outside = ((indices < 0) | (indices >= np.array(dims, np.int64))).any(axis=1)
    if outside.any():
        i = int(outside.argmax())
        raise GraphError(f"{where}[{i}] = {indices[i].tolist()} is out of bounds: need 0 <= index < {dims}")
    if len(indices) > 1:
        step = indices[1:] - indices[:-1]  # no overflow: every index is within the shape
        changed = step != 0
        lead = step[np.arange(len(step)), changed.argmax(axis=1)]
        bad = lead <= 0
        if bad.any():
            i = int(bad.argmax()) + 1
            problem = "is out of order" if changed[i - 1].any() else "is repeated"
            raise GraphError(f"{where}[{i}] = {indices[i].tolist()} {problem}; {node.type} needs them in "
                             "row-major order (use tf.sparse.reorder before it)")


@register("SerializeManySparse")
def _serialize_many_sparse(node):
    """tf.io.serialize_many_sparse: row b of the [N, 3] output is the serialized SparseTensor of
    minibatch entry b (its indices without the first column, the dense shape without N)."""
    value_enum = _serialized_types(node)
    value_dtype = _dtypes.to_numpy(value_enum)

    def fn(indices, values, shape):
        indices, values, shape = _sparse_inputs(node, indices, values, shape, value_enum)
        dims = shape.tolist()
        rank = len(dims)
        where = f"node {node.name!r} (SerializeManySparse)"
        if rank < 2:
            raise GraphError(f"{where}: the SparseTensor must have rank 2 or more (its first dimension is "
                             f"the minibatch), got dense shape {dims}")
        if indices.shape[1] != rank or len(indices) != len(values):
            raise GraphError(f"{where}: indices of shape {indices.shape} and {len(values)} values do not fit "
                             f"a SparseTensor of dense shape {dims}")
        _check_dims(node, dims, "the dense shape")
        _check_canonical(node, indices, dims)
        batch = dims[0]
        blank = [_tensor_bytes(np.zeros((0, rank - 1), np.int64), _INT64),
                 _tensor_bytes(np.zeros(0, value_dtype), value_enum), _tensor_bytes(shape[1:], _INT64)]
        _limit(node, batch * sum(map(len, blank)))
        out = np.empty((batch, 3), object)
        for column, text in enumerate(blank):
            out[:, column] = text
        rows = indices[:, 0]
        starts = np.flatnonzero(np.concatenate([[True], rows[1:] != rows[:-1]])) if len(rows) else []
        for start, end in zip(starts, [*starts[1:], len(rows)]):
            b = rows[start]
            out[b, 0] = _tensor_bytes(indices[start:end, 1:], _INT64)
            out[b, 1] = _tensor_bytes(values[start:end], value_enum)
        return out

    return fn


def _decode_string_list(content: bytes, count: int) -> list[bytes] | None:
    """TF's `port::DecodeStringList`: `count` varint32 lengths, then exactly that many bytes."""
    sizes, pos, end = [], 0, len(content)
    for _ in range(count):  # every length takes a byte at least, so a short string ends this soon
        value, shift = 0, 0
        while True:
            if pos >= end or shift > 28:
                return None
            byte = content[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                break
            shift += 7
        sizes.append(value & 0xFFFFFFFF)
    if sum(sizes) != end - pos:
        return None
    out = []
    for size in sizes:
        out.append(content[pos:pos + size])
        pos += size
    return out


def _parse_tensor(node, data: bytes, where: str, want: int) -> np.ndarray:
    """TF's `Tensor::FromProto` of a serialized TensorProto that must hold `want` (a DataType)."""
    prefix = f"node {node.name!r} ({node.type}): {where}"
    try:
        proto = tensor_pb2.TensorProto.FromString(data)
    except (DecodeError, RuntimeError) as e:
        raise GraphError(f"{prefix} is not a serialized TensorProto ({e}); feed strings made by "
                         "tf.io.serialize_sparse or tf.io.serialize_many_sparse") from None
    if not proto.dtype:
        raise GraphError(f"{prefix} holds no tensor (its dtype is DT_INVALID); feed strings made by "
                         "tf.io.serialize_sparse or tf.io.serialize_many_sparse")
    if proto.dtype != want:
        attr = " (the node's dtype attribute)" if want != _INT64 else ""
        raise GraphError(f"{prefix} holds {_dtypes.short_name(proto.dtype)} values, expected "
                         f"{_dtypes.short_name(want)}{attr}")
    if proto.tensor_shape.unknown_rank:
        raise GraphError(f"{prefix} has an unknown rank")
    dims = [int(d.size) for d in proto.tensor_shape.dim]
    _check_dims(node, dims, f"{where}'s shape")
    count = math.prod(dims)
    dtype = _dtypes.to_numpy(want)
    if count == 0:
        return np.empty(dims, dtype)
    content = proto.tensor_content
    if content:
        if want == _dtypes.STRING:
            items = _decode_string_list(content, count)
            if items is None:
                raise GraphError(f"{prefix}: its tensor_content does not hold {count} strings")
            return _bytes_array(items, dims)
        if len(content) != count * dtype.itemsize:
            raise GraphError(f"{prefix}: its tensor_content holds {len(content)} bytes, but shape {dims} of "
                             f"{dtype} needs {count * dtype.itemsize}")
        return np.frombuffer(content, dtype.newbyteorder("<")).astype(dtype).reshape(dims)
    field = _tensor_util._TYPED_FIELD.get(want)
    if field is not None:  # TF ignores values beyond the shape's count (and repeats the last, as to_numpy)
        keep = count * (2 if dtype.kind == "c" else 1)
        if len(getattr(proto, field)) > keep:
            trimmed = tensor_pb2.TensorProto()
            trimmed.CopyFrom(proto)
            del getattr(trimmed, field)[keep:]
            proto = trimmed
    return _tensor_util.to_numpy(proto, where=prefix)


def _deserialize_one(node, row: list[bytes], i: int, value_enum: int):
    """SparseTensor i of a DeserializeSparse input: (indices, values, dense shape), checked as TF's
    `GetAndValidateSparseTensor` does."""
    where = f"node {node.name!r} ({node.type}): SparseTensor[{i}]"
    indices = _parse_tensor(node, row[0], f"serialized_sparse[{i}, 0] (indices)", _INT64)
    if indices.ndim != 2:
        raise GraphError(f"{where}: its indices must be a matrix, got shape {indices.shape}")
    values = _parse_tensor(node, row[1], f"serialized_sparse[{i}, 1] (values)", value_enum)
    if values.ndim != 1:
        raise GraphError(f"{where}: its values must be a vector, got shape {values.shape}")
    if len(values) != len(indices):
        raise GraphError(f"{where}: it has {len(indices)} indices but {len(values)} values")
    shape = _parse_tensor(node, row[2], f"serialized_sparse[{i}, 2] (dense shape)", _INT64)
    if shape.ndim != 1:
        raise GraphError(f"{where}: its dense shape must be a vector, got shape {shape.shape}")
    if len(shape) != indices.shape[1]:
        raise GraphError(f"{where}: its indices have {indices.shape[1]} columns but its dense shape "
                         f"{shape.tolist()} has {len(shape)} dimensions")
    return indices, values, shape


def _reshape_indices(indices: np.ndarray, in_dims: list[int], out_dims: list[int]) -> np.ndarray:
    """TF's `ReshapeSparseTensor` of indices: each entry's row-major offset in `in_dims`, unravelled
    in `out_dims`, in int64 with C's division (so an index beyond its shape lands where TF puts it)."""

    def strides(dims):
        out, step = [], 1
        for d in reversed(dims):
            out.append(step)
            step *= d
        return out[::-1]

    offset = (indices * np.array(strides(in_dims), np.int64)).sum(axis=1, dtype=np.int64)  # wraps, as TF's
    out = np.empty((len(indices), len(out_dims)), np.int64)
    for j, step in enumerate(strides(out_dims)):
        quotient = offset // step
        rest = offset - quotient * step
        ahead = (rest != 0) & (offset < 0)  # C rounds toward zero (the strides are positive)
        quotient[ahead] += 1
        rest[ahead] -= step
        out[:, j], offset = quotient, rest
    return out


@register("DeserializeSparse", "DeserializeManySparse")
def _deserialize_sparse(node):
    """tf.io.deserialize_many_sparse / DeserializeSparse, as TF's one kernel for both: serialized
    [d0, ..., dk, 3] gives one SparseTensor of dense shape [d0, ..., dk, *max of the entries'
    shapes], entries in input order; a single [3] vector gives its SparseTensor as stored."""
    value_enum = node.attr_dtype_enum("dtype")
    _dtypes.to_numpy(value_enum, where=f"node {node.name!r} ({node.type}): dtype")
    if node.attr_dtype_enum("Tserialized", _dtypes.STRING) != _dtypes.STRING:
        raise GraphError(f"node {node.name!r} ({node.type}): serialized SparseTensors of type variant "
                         "(tf.data's) are not supported; jaxmeta reads the string form "
                         "(tf.io.serialize_sparse's default)")

    def fn(serialized):
        (serialized,) = host(node, serialized)
        where = f"node {node.name!r} ({node.type})"
        if serialized.dtype != object or not serialized.ndim or serialized.shape[-1] != 3:
            raise GraphError(f"{where}: serialized_sparse must be strings of shape [..., 3], got "
                             f"{serialized.dtype} of shape {serialized.shape}")
        lead = list(serialized.shape[:-1])
        count = math.prod(lead)
        if count == 0:
            raise GraphError(f"{where}: serialized_sparse of shape {serialized.shape} holds no SparseTensor")
        rows = serialized.reshape(-1, 3).tolist()
        if serialized.ndim == 1:  # TF's kernel returns the one SparseTensor as it is
            return list(_deserialize_one(node, rows[0], 0, value_enum))
        parts = [_deserialize_one(node, row, i, value_enum) for i, row in enumerate(rows)]
        merged = None
        for i, (_, _, shape) in enumerate(parts):
            dims = shape.tolist()
            _check_dims(node, [1, *dims], f"SparseTensor[{i}]'s dense shape")
            if merged is None:
                merged = dims
            elif len(dims) != len(merged):
                raise GraphError(f"{where}: SparseTensor[{i}] has rank {len(dims)}, but the ones before it "
                                 f"have rank {len(merged)}")
            else:  # the smallest dense shape that bounds every entry, as TF's kernel
                merged = [max(a, b) for a, b in zip(merged, dims)]
        in_dims, out_dims = [count, *merged], [*lead, *merged]
        _check_dims(node, in_dims, "the merged dense shape")
        indices = np.concatenate([np.concatenate([np.full((len(ind), 1), i, np.int64), ind], axis=1)
                                  for i, (ind, _, _) in enumerate(parts)])
        values = np.concatenate([v for _, v, _ in parts])
        if len(lead) == 1:  # the batched shape is the merged one: TF keeps the indices as they are
            return indices, values, np.array(in_dims, np.int64)
        if len(indices) and not math.prod(in_dims):
            raise GraphError(f"{where}: {len(indices)} entries in SparseTensors of dense shape {merged}, "
                             "which has no elements")
        return _reshape_indices(indices, in_dims, out_dims), values, np.array(out_dims, np.int64)

    return fn
