"""SparseTensor arithmetic: `tf.sparse.add` (of a dense or a sparse operand), the sparse-dense
elementwise ops, `tf.sparse.reduce_sum` / `reduce_max`, `tf.sparse.softmax`, `tf.sparse.reorder`,
`tf.sparse.concat` and feature crosses (`SparseCross`).

A SparseTensor is (indices [nnz, rank], values [nnz], dense_shape [rank]). Most of these ops keep
nnz, so they trace under `jax.jit`; where the dense shape sizes an output (`SparseReduce*`), it
must be known when tracing. `SparseAdd` (of two SparseTensors) and `SparseCross` size their
output from the indices, so those must be concrete (constants, or a run without `jax.jit`). Like TF's kernels, `SparseSoftmax`, `SparseReorder` and `SparseConcat` return
their entries in canonical (row-major) order. `SparseToDense`, `SparseReshape`,
`SparseTensorDenseMatMul` and the sparse-segment ops live with the segment ops (`ops/segment.py`).
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from jaxmeta.ops.registry import OUTPUT_SIZES, need_known, register, static_ints, xnp


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
        return dense.at[tuple(jnp.asarray(indices).T)].add(jnp.asarray(values, dense.dtype))

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


@register("SparseCross")
def _sparse_cross(node):
    """Feature crosses (`crossed_column`, `tf.sparse.cross(_hashed)`): per row, every combination of
    one feature from each column (sparse columns, then dense; the last changing fastest), as
    `a_X_b` strings or as TF's FingerprintCat64 hash. The output size depends on the values, so
    the inputs must be concrete (strings usually are: see `ops/strings.py`)."""
    from jaxmeta.ops.strings import _M64, fingerprint64, fingerprint_cat64, host

    count = node.attr_int("N")
    hashed, buckets = node.attr_bool("hashed_output"), node.attr_int("num_buckets")
    hash_key = node.attr_int("hash_key") & _M64

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
            features = [[[fingerprint64(v) if isinstance(v, bytes) else v & _M64 for v in row] for row in col]
                        for col in columns]
        else:
            features = [[[v if isinstance(v, bytes) else str(v).encode() for v in row] for row in col]
                        for col in columns]
        out_indices, out_values = [], []
        for r in range(batch):
            for j, combo in enumerate(itertools.product(*(col[r] for col in features))):
                out_indices.append((r, j))
                if hashed:
                    h = hash_key
                    for feature in combo:
                        h = fingerprint_cat64(h, feature)
                    # Without buckets TF takes the hash modulo int64's max, so it is never negative.
                    out_values.append(h % buckets if buckets > 0 else h % ((1 << 63) - 1))
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
