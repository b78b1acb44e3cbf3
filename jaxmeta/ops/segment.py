"""Segment reductions, sparse-segment ops, stitch/partition, unique, top-k and small sparse ops.

Many of these ops have *data-dependent output sizes* in TensorFlow, which XLA cannot express.
jaxmeta's policy, op by op:

- `Segment{Sum,Mean,Max,Min,Prod}` (sorted ids): the output has `max(ids) + 1` rows. The ids must
  be known when the graph is traced (constants) or be concrete (running without `jax.jit`); traced
  ids raise a `GraphError`. `UnsortedSegment*`, `SegmentSumV2` etc. take `num_segments` as an input,
  which must be static.
- `DynamicStitch`: output size `max(indices) + 1`, so the indices must be static or concrete (in
  gradient graphs they come from `Range`/`Shape` and are static). `DynamicPartition`: the
  partitions must be static or concrete, with one exception that keeps `embedding_lookup` over a
  partitioned variable jit-able with fed ids: *partition, gather, stitch back*. When every output
  of a `DynamicPartition` goes (through `Identity`/`Cast`) only to a stitch, or to a gather's
  indices whose rows go only to a stitch, and the stitch's indices are the partitioned positions
  `0..n-1`, traced partitions give *masked* outputs: output `p` keeps all n entries, those not in
  partition `p` replaced by -1 (0 for non-integers), and the stitch drops the masked entries and
  has n rows. Each row of the result is then TF's. (TF rejects partition ids outside
  `[0, num_partitions)`; under jit their rows stay zero.) Anything else that reads a partition
  under jit raises a `GraphError`.
- `Unique`, `UniqueV2`, `UniqueWithCounts`: with a known input (a constant, or any call without
  `jax.jit`) the result is TF's exactly. With a traced input the outputs are padded to the
  input's length so they stay jit-able: `y[:k]` are the k unique values in order of first
  appearance and `idx` is exact (so `y[idx] == x`), while the padded entries `y[k:]` hold distinct
  out-of-range values (the dtype's max, max - 1, ...; NaN for floats) and `count[k:] == 0`. Under
  jit, gathers read zeros at out-of-range indices and scatters skip them (`checked_indices`), so
  the TF pattern `Unique -> UnsortedSegmentSum(num_segments=Shape(y)[0]) -> Scatter*/SparseApply*`
  (how TF's optimizers sum duplicate embedding gradients) updates exactly the rows TF updates.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxmeta._errors import GraphError
from jaxmeta.ops.registry import (
    OUTPUT_SIZES,
    checked,
    checked_indices,
    in_host_memory,
    known,
    need_known,
    program_nodes,
    register,
    static,
    xnp,
)

# -- helpers ----------------------------------------------------------------------------------------


def _static_int(node, x, what: str) -> int:
    if not static(x):
        raise GraphError(
            f"node {node.name!r} ({node.type}): {what} sets an output size and must be known when the "
            "graph is traced (a constant or arithmetic on static shapes), not a fed or computed value"
        )
    return int(np.reshape(x, -1)[0])


def _lowest(dtype):
    return jnp.finfo(dtype).min if jnp.issubdtype(dtype, jnp.inexact) else np.iinfo(dtype).min


def _highest(dtype):
    return jnp.finfo(dtype).max if jnp.issubdtype(dtype, jnp.inexact) else np.iinfo(dtype).max


def _sorted_ids(node, ids, num_segments: int):
    """The ids of a sorted segment op, checked as TF checks them (`checked_indices`; known ones
    must also be non-decreasing)."""
    ids = checked_indices(node, ids, num_segments, "segment_ids")
    if isinstance(ids, np.ndarray) and ids.size > 1:
        flat = ids.reshape(-1)
        down = np.diff(flat) < 0
        if down.any():
            k = int(np.argmax(down)) + 1
            raise GraphError(
                f"node {node.name!r} ({node.type}): segment_ids are not sorted (segment_ids[{k}] = "
                f"{flat[k]} follows {flat[k - 1]}), which TF rejects; the Unsorted* segment ops take "
                "ids in any order")
    return ids


def _segment_reduce(kind: str, data, ids, num_segments: int, *, sorted_ids: bool, empty=None):
    """Reduces `data` over segments; `ids` is a prefix of `data`'s shape. Ids outside
    `[0, num_segments)` are dropped, as TF's unsorted ops drop negative ids.

    Args:
        kind: "sum", "mean", "sqrtn", "prod", "max" or "min".
        empty: the value of empty segments for max/min (default: the reduction's identity).
    """
    if _numpy_ok(data, ids):
        return _segment_numpy(kind, data, ids, num_segments, empty)
    data = jnp.asarray(data)
    ids = jnp.asarray(ids).astype(jnp.int32)
    flat_ids = jnp.reshape(ids, (-1,))
    flat = jnp.reshape(data, (flat_ids.shape[0],) + data.shape[ids.ndim:])
    kwargs = dict(num_segments=num_segments, indices_are_sorted=sorted_ids)
    if kind in ("sum", "mean", "sqrtn"):
        out = jax.ops.segment_sum(flat, flat_ids, **kwargs)
    elif kind == "prod":
        out = _segment_prod(flat, flat_ids, num_segments, sorted_ids)
    else:
        out = (jax.ops.segment_max if kind == "max" else jax.ops.segment_min)(flat, flat_ids, **kwargs)
    if kind in ("mean", "sqrtn") or (kind in ("max", "min") and empty is not None):
        count = jax.ops.segment_sum(jnp.ones(flat_ids.shape, jnp.int32), flat_ids, **kwargs)
        count = jnp.reshape(count, count.shape + (1,) * (out.ndim - 1))
        if kind == "mean":
            denom = jnp.maximum(count, 1).astype(out.dtype)
            # Integer means truncate, as TF's kernel divides in the element type.
            out = jax.lax.div(out, denom) if jnp.issubdtype(out.dtype, jnp.integer) else out / denom
        elif kind == "sqrtn":
            out = jnp.where(count > 0, out / jnp.sqrt(jnp.maximum(count, 1).astype(out.dtype)), 0)
        else:
            out = jnp.where(count > 0, out, jnp.asarray(empty, out.dtype))
    return out


#: NumPy's in-place scatters for the reductions `_segment_numpy` runs.
_SCATTERS = {"sum": np.add, "mean": np.add, "sqrtn": np.add, "prod": np.multiply, "max": np.maximum,
             "min": np.minimum}


def _numpy_ok(*xs) -> bool:
    """Compute in NumPy: concrete values in host memory, of dtypes NumPy computes as XLA does."""
    return in_host_memory(*xs) and all(np.asarray(x).dtype.kind in "biuf" for x in xs)


def _segment_numpy(kind: str, data, ids, num_segments: int, empty=None) -> np.ndarray:
    """`_segment_reduce` in NumPy, for concrete values in host memory (a host stage runs it op by
    op: one NumPy call instead of a dozen jax.numpy dispatches). The same results: each segment
    reduced in the order of its ids, as XLA's CPU scatter does."""
    data, ids = np.asarray(data), np.asarray(ids)
    flat_ids = ids.reshape(-1).astype(np.int64)
    flat = data.reshape(flat_ids.shape + data.shape[ids.ndim:])
    keep = (flat_ids >= 0) & (flat_ids < num_segments)
    flat_ids, flat = flat_ids[keep], flat[keep]
    shape = (num_segments,) + flat.shape[1:]
    if kind in ("max", "min"):  # jax's identities for empty segments
        info = np.finfo(data.dtype) if data.dtype.kind == "f" else np.iinfo(data.dtype) if data.dtype.kind in "iu" else None
        start = (-np.inf if kind == "max" else np.inf) if data.dtype.kind == "f" else (
            (info.min if kind == "max" else info.max) if info is not None else kind == "min")
    else:
        start = 1 if kind == "prod" else 0
    out = np.full(shape, start, data.dtype)
    _SCATTERS[kind].at(out, flat_ids, flat)
    if kind in ("mean", "sqrtn") or (kind in ("max", "min") and empty is not None):
        count = np.bincount(flat_ids, minlength=num_segments).reshape((num_segments,) + (1,) * (out.ndim - 1))
        if kind == "mean":
            denom = np.maximum(count, 1).astype(out.dtype)
            if out.dtype.kind in "iu":  # TF divides in the element type: truncating
                quotient = out // denom
                out = quotient + ((out - quotient * denom != 0) & (out < 0)).astype(out.dtype)
            else:
                out = out / denom
        elif kind == "sqrtn":
            out = np.where(count > 0, out / np.sqrt(np.maximum(count, 1).astype(out.dtype)), 0).astype(data.dtype)
        else:
            out = np.where(count > 0, out, np.asarray(empty, out.dtype))
    return out


def _segment_prod(flat, ids, num_segments: int, sorted_ids: bool):
    """Segment product as a segmented scan (differentiable, unlike a scatter-multiply in JAX);
    empty segments are 1."""
    if flat.shape[0] == 0:
        return jnp.ones((num_segments,) + flat.shape[1:], flat.dtype)
    order = jnp.arange(ids.shape[0]) if sorted_ids else jnp.argsort(ids, stable=True)
    values, seg = jnp.take(flat, order, axis=0), ids[order]
    starts = jnp.concatenate([jnp.ones((1,), bool), seg[1:] != seg[:-1]])
    starts = jnp.reshape(starts, starts.shape + (1,) * (flat.ndim - 1))

    def combine(a, b):
        (a_value, a_start), (b_value, b_start) = a, b
        return jnp.where(b_start, b_value, a_value * b_value), a_start | b_start

    running, _ = jax.lax.associative_scan(combine, (values, starts))
    last = jax.ops.segment_max(jnp.arange(seg.shape[0]), seg, num_segments)  # each segment's end
    present = jnp.reshape(last >= 0, (num_segments,) + (1,) * (flat.ndim - 1))
    return jnp.where(present, jnp.take(running, jnp.clip(last, 0), axis=0), jnp.ones((), flat.dtype))


# -- segment reductions ----------------------------------------------------------------------------

_KINDS = {"Sum": "sum", "Mean": "mean", "Max": "max", "Min": "min", "Prod": "prod"}


@register("SegmentSum", "SegmentMean", "SegmentMax", "SegmentMin", "SegmentProd")
def _segment(node):
    """Sorted segment reduction; output rows = max(ids) + 1 (empty segments are 0, as TF)."""
    kind = _KINDS[node.type.removeprefix("Segment")]

    def fn(data, ids):
        value = need_known(node, "segment_ids", "the number of segments (max id + 1) depends on", ids)[0]
        n = int(value.max()) + 1 if value.size else 0
        ids = _sorted_ids(node, value, n)
        # TF's sorted SegmentMax/Min give 0 for empty segments (the unsorted ops give lowest/highest).
        return _segment_reduce(kind, data, ids, n, sorted_ids=True, empty=0 if kind in ("max", "min") else None)

    return fn


@register("SegmentSumV2", "SegmentMaxV2", "SegmentMinV2", "SegmentProdV2")
def _segment_v2(node):
    kind = _KINDS[node.type.removeprefix("Segment").removesuffix("V2")]

    def fn(data, ids, num_segments):
        n = _static_int(node, num_segments, "num_segments")
        ids = _sorted_ids(node, ids, n)
        empty = {"max": lambda d: _lowest(d), "min": lambda d: _highest(d)}.get(kind)
        return _segment_reduce(kind, data, ids, n, sorted_ids=True,
                               empty=None if empty is None else empty(jnp.result_type(data)))

    return fn


@register("UnsortedSegmentSum", "UnsortedSegmentMax", "UnsortedSegmentMin", "UnsortedSegmentProd")
def _unsorted_segment(node):
    """Unsorted segment reduction with a static `num_segments`; negative ids are dropped.

    Empty segments: 0 for sums, 1 for products, the dtype's lowest value for max and highest for
    min (TF's `numeric_limits<T>::lowest()`/`max()`, not +-inf).
    """
    kind = _KINDS[node.type.removeprefix("UnsortedSegment")]

    def fn(data, ids, num_segments):
        n = _static_int(node, num_segments, "num_segments")
        ids = checked_indices(node, ids, n, "segment_ids", negative_ok=True)  # negative ids are dropped
        dtype = jnp.result_type(data)
        empty = {"max": _lowest, "min": _highest}.get(kind)
        return _segment_reduce(kind, data, ids, n, sorted_ids=False,
                               empty=None if empty is None else empty(dtype))

    return fn


# -- sparse segments (embedding combiners) ---------------------------------------------------------


@register("SparseSegmentSum", "SparseSegmentMean", "SparseSegmentSqrtN",
          "SparseSegmentSumWithNumSegments", "SparseSegmentMeanWithNumSegments",
          "SparseSegmentSqrtNWithNumSegments")
def _sparse_segment(node):
    """`output[s] = reduce(data[indices[j]] for j with segment_ids[j] == s)`; empty segments are 0."""
    base = node.type.removeprefix("SparseSegment").removesuffix("WithNumSegments")
    kind = {"Sum": "sum", "Mean": "mean", "SqrtN": "sqrtn"}[base]
    with_num = node.type.endswith("WithNumSegments")

    def fn(data, indices, segment_ids, num_segments=None):
        rows = checked_indices(node, indices, np.shape(data)[0])
        if with_num:
            n = _static_int(node, num_segments, "num_segments")
        else:
            segment_ids = need_known(node, "segment_ids", "the number of segments (max id + 1) depends on",
                                     segment_ids)[0]
            n = int(segment_ids.max()) + 1 if segment_ids.size else 0
        ids = _sorted_ids(node, segment_ids, n)
        if isinstance(rows, np.ndarray) and _numpy_ok(data, ids):  # rows checked: NumPy may index
            return _segment_numpy(kind, np.asarray(data)[rows], ids, n)
        gathered = jnp.take(jnp.asarray(data), jnp.asarray(rows).astype(jnp.int32), axis=0, mode="fill", fill_value=0)
        return _segment_reduce(kind, gathered, ids, n, sorted_ids=True)

    return fn


@register("SparseSegmentSumGrad", "SparseSegmentMeanGrad", "SparseSegmentSqrtNGrad")
def _sparse_segment_grad(node):
    """Gradient of SparseSegment{Sum,Mean,SqrtN} w.r.t. data: scatters `grad[segment_ids]`
    (scaled by 1/count or 1/sqrt(count)) into `output_dim0` rows at `indices`."""
    kind = node.type.removeprefix("SparseSegment").removesuffix("Grad")

    def fn(grad, indices, segment_ids, output_dim0):
        n = _static_int(node, output_dim0, "output_dim0")
        ids = checked_indices(node, segment_ids, np.shape(grad)[0], "segment_ids")
        return _scatter_grad_rows(kind, grad, ids, checked_indices(node, indices, n), n)

    return fn


@register("SparseSegmentSumGradV2", "SparseSegmentMeanGradV2", "SparseSegmentSqrtNGradV2")
def _sparse_segment_grad_v2(node):
    """The sparse form of the gradients above (TF's `sparse_gradient=True`, as in
    `embedding_lookup_sparse`): only the rows at the sorted unique `indices`, and those indices."""
    kind = node.type.removeprefix("SparseSegment").removesuffix("GradV2")

    def fn(grad, indices, segment_ids, dense_output_dim0):
        (idx,) = need_known(node, "indices", OUTPUT_SIZES, indices)
        idx = idx.reshape(-1)
        bound = known(dense_output_dim0)
        if bound is not None:
            checked_indices(node, idx, int(np.reshape(bound, -1)[0]))
        unique, inverse = np.unique(idx, return_inverse=True)
        ids = checked_indices(node, segment_ids, np.shape(grad)[0], "segment_ids")
        return _scatter_grad_rows(kind, grad, ids, inverse.reshape(-1), len(unique)), unique.astype(idx.dtype)

    return fn


def _scatter_grad_rows(kind: str, grad, segment_ids, rows_at, n: int):
    """`n` rows of zeros with `_segment_grad_rows` added at rows `rows_at` (in NumPy on host values)."""
    if isinstance(rows_at, np.ndarray) and isinstance(segment_ids, np.ndarray) and _numpy_ok(grad):
        grad = np.asarray(grad)
        out = np.zeros((n,) + grad.shape[1:], grad.dtype)
        np.add.at(out, np.asarray(rows_at).astype(np.int64), _segment_grad_rows(kind, grad, segment_ids))
        return out
    grad = jnp.asarray(grad)
    out = jnp.zeros((n,) + grad.shape[1:], grad.dtype)
    return out.at[jnp.asarray(rows_at).astype(jnp.int32)].add(_segment_grad_rows(kind, grad, segment_ids), mode="drop")


def _segment_grad_rows(kind: str, grad, segment_ids):
    """`grad[segment_ids]`, scaled by 1/count (Mean) or 1/sqrt(count) (SqrtN) of each segment
    (in NumPy where `grad` is a NumPy array)."""
    if isinstance(grad, np.ndarray):
        ids = np.asarray(segment_ids).astype(np.int64)
        rows = grad[ids]
        if kind != "Sum":
            count = np.bincount(ids, minlength=grad.shape[0])[ids].astype(grad.dtype)  # >= 1 where taken
            scale = np.asarray(1, grad.dtype) / (count if kind == "Mean" else np.sqrt(count))
            rows = rows * scale.reshape(scale.shape + (1,) * (rows.ndim - 1))
        return rows
    segment_ids = jnp.asarray(segment_ids).astype(jnp.int32)
    rows = jnp.take(grad, segment_ids, axis=0, mode="fill", fill_value=0)
    if kind != "Sum":
        count = jax.ops.segment_sum(jnp.ones(segment_ids.shape, grad.dtype), segment_ids, grad.shape[0])
        scale = jnp.take(1.0 / (count if kind == "Mean" else jnp.sqrt(count)), segment_ids, mode="fill", fill_value=0)
        rows = rows * jnp.reshape(scale, scale.shape + (1,) * (rows.ndim - 1))
    return rows


# -- stitch and partition --------------------------------------------------------------------------


@register("DynamicStitch", "ParallelDynamicStitch")
def _dynamic_stitch(node):
    """Interleaves `data[m]` into rows `indices[m]`; a later (m, i) wins over an earlier one.

    The output has `max(indices) + 1` rows, so the indices must be static (as in gradient graphs,
    where they come from Range/Shape) or concrete (no jit). TF's ParallelDynamicStitch leaves the
    winner of a duplicated index unspecified; jaxmeta applies the same last-wins rule to both.
    With duplicated indices, `jax.grad` gives overwritten entries a zero gradient (the true
    derivative), whereas TF's registered gradient gathers the output gradient for them too.
    """

    masked_ok = _stitch_of_partitions(node)

    def fn(*args):
        n = len(args) // 2
        indices, data = args[:n], args[n:]
        if masked_ok and any(isinstance(i, jax.core.Tracer) for i in indices):
            return _stitch_masked(indices, data)
        idx = need_known(node, "indices", "the output size (max index + 1) depends on", *indices)
        flat_idx = np.concatenate([np.reshape(i, -1) for i in idx]).astype(np.int64)
        size = int(flat_idx.max()) + 1 if flat_idx.size else 0
        checked_indices(node, flat_idx, size)  # a negative index: TF's error, not NumPy's wrap-around
        tail = tuple(np.shape(data[0]))[np.ndim(idx[0]):]
        if static(*data):
            out = np.zeros((size,) + tail, np.result_type(*data))
            for i, d in zip(idx, data):
                out[np.reshape(i, -1)] = np.reshape(d, (-1,) + tail)
            return out
        flat_data = jnp.concatenate([jnp.reshape(jnp.asarray(d), (-1,) + tail) for d in data])
        winner = np.full((size,), -1, np.int64)
        winner[flat_idx] = np.arange(flat_idx.size)  # NumPy assignment: the last write wins
        rows = jnp.take(flat_data, np.maximum(winner, 0), axis=0)
        filled = np.reshape(winner >= 0, (size,) + (1,) * len(tail))
        return jnp.where(filled, rows, jnp.zeros((), flat_data.dtype))

    return fn


@register("DynamicPartition")
def _dynamic_partition(node):
    """Splits `data` into `num_partitions` outputs by `partitions` (a prefix of data's shape).

    The output sizes are the partitions' counts, so `partitions` must be static or concrete;
    with traced partitions (e.g. fed ids under jax.jit) a GraphError explains the limitation.
    """
    num = node.attr_int("num_partitions")
    masked_ok, feeds_stitch_indices = _partition_plan(node)

    def fn(data, partitions):
        if masked_ok and known(partitions) is None:
            return _partition_masked(node, data, partitions, num, feeds_stitch_indices)
        if feeds_stitch_indices:
            need_known(node, "data", "its outputs are a DynamicStitch's indices, which need", data)
        (parts,) = need_known(node, "partitions", "each output's size is a count of", partitions)
        flat_parts = np.reshape(parts, -1)
        checked_indices(node, flat_parts, num, "partitions")
        shape = tuple(np.shape(data))
        tail = shape[np.ndim(parts):]
        if static(data):
            flat = np.reshape(data, (-1,) + tail)
            return tuple(flat[flat_parts == p] for p in range(num))
        flat = jnp.reshape(jnp.asarray(data), (-1,) + tail)
        return tuple(jnp.take(flat, np.nonzero(flat_parts == p)[0], axis=0) for p in range(num))

    return fn


# Partition -> gather -> stitch with traced partitions (see the module docstring): which consumers
# keep a masked partition's meaning. Input positions are those that carry the partition's rows.
_PASS_THROUGH = {"Identity": 0, "Cast": 0}
_GATHERS = {"Gather": 1, "GatherV2": 1, "ResourceGather": 1}
_STITCHES = ("DynamicStitch", "ParallelDynamicStitch")


def _uses(node):
    """(consumer node, input position) for every data use of `node`'s outputs in the program
    being built (a training graph's gradient ops do not count when only the forward pass runs)."""
    graph = node.graph
    program = program_nodes()
    for name in dict.fromkeys(graph.consumers(node.name)):
        if program is not None and name not in program:
            continue
        user = graph.nodes[name]
        for k, ref in enumerate(user.inputs):
            if ref.node == node.name:
                yield user, k


def _masked_sinks(node, allow_gather: bool):
    """The (stitch, input position) pairs that `node`'s outputs reach through pass-through ops
    (and at most one gather's indices when `allow_gather`), or None if they reach anything else."""
    sinks = []
    for user, k in _uses(node):
        if user.type in _STITCHES:
            sinks.append((user, k))
            continue
        if _PASS_THROUGH.get(user.type) == k:
            more = _masked_sinks(user, allow_gather)
        elif allow_gather and _GATHERS.get(user.type) == k:
            more = _masked_sinks(user, False)
            if more and any(j < len(s.inputs) // 2 for s, j in more):
                return None  # gathered rows must be stitch data, not stitch indices
        else:
            return None
        if more is None:
            return None
        sinks += more
    return sinks


def _partition_plan(node):
    """(whether traced partitions may give masked outputs, whether they feed a stitch's indices)."""
    sinks = _masked_sinks(node, allow_gather=True)
    if not sinks:
        return False, False
    feeds_indices = any(k < len(s.inputs) // 2 for s, k in sinks)
    return all(_stitch_of_partitions(s) for s, _ in sinks), feeds_indices


def _producer_through_pass(graph, ref):
    producer = graph.nodes.get(ref.node)
    while producer is not None and producer.type in _PASS_THROUGH and producer.inputs:
        producer = graph.nodes.get(producer.inputs[0].node)
    return producer


def _stitch_of_partitions(node) -> bool:
    """Whether each of the stitch's indices is an output of one DynamicPartition node."""
    n = len(node.inputs) // 2
    producers = {_producer_through_pass(node.graph, ref) for ref in node.inputs[:n]}
    names = {p.name if p is not None and p.type == "DynamicPartition" else None for p in producers}
    return n > 0 and None not in names and len(names) == 1


def _partition_masked(node, data, partitions, num: int, feeds_stitch_indices: bool):
    parts = jnp.reshape(jnp.asarray(partitions), (-1,))
    tail = tuple(np.shape(data))[np.ndim(partitions):]
    if feeds_stitch_indices:
        positions = known(data)
        n = parts.shape[0]
        if positions is None or not np.array_equal(np.sort(np.reshape(positions, -1)), np.arange(n)):
            raise GraphError(
                f"node {node.name!r} (DynamicPartition): its partitions are traced and its outputs are a "
                "stitch's indices, which jaxmeta supports under jax.jit only for the positions 0..n-1 "
                "(as embedding_lookup makes them). Run this graph without jax.jit."
            )
    flat = jnp.reshape(jnp.asarray(data), (-1,) + tail)
    fill = jnp.asarray(-1 if jnp.issubdtype(flat.dtype, jnp.signedinteger) else 0, flat.dtype)
    member = jnp.reshape(parts, (-1,) + (1,) * len(tail))
    return tuple(jnp.where(member == p, flat, fill) for p in range(num))


def _stitch_masked(indices, data):
    """Stitches masked partitions: n rows, masked (negative) indices dropped."""
    n = int(np.size(indices[0]))
    tail = tuple(np.shape(data[0]))[np.ndim(indices[0]):]
    dtype = jnp.result_type(*data)
    out = jnp.zeros((n,) + tail, dtype)
    for i, d in zip(indices, data):
        i = jnp.reshape(jnp.asarray(i), (-1,))
        out = out.at[jnp.where(i >= 0, i, n)].set(jnp.reshape(jnp.asarray(d, dtype), (-1,) + tail), mode="drop")
    return out


# -- unique ------------------------------------------------------------------------------------------


def _unique_static(rows: np.ndarray):
    """Exact TF semantics on a NumPy `[n, m]` array: unique rows in order of first appearance."""
    if rows.dtype.kind == "O":  # strings: NumPy's unique cannot sort object rows
        ids: dict = {}
        inverse = np.array([ids.setdefault(row, len(ids)) for row in map(tuple, rows.tolist())], np.int64)
        first = np.zeros(len(ids), np.int64)
        first[inverse[::-1]] = np.arange(len(inverse))[::-1]
        return rows[first], inverse, np.bincount(inverse, minlength=len(ids))
    _, first, inverse, counts = np.unique(rows, axis=0, return_index=True, return_inverse=True,
                                          return_counts=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return rows[first[order]], rank[np.reshape(inverse, -1)], counts[order]


def _unique_traced(rows):
    """Padded, jit-able unique on a `[n, m]` array (see the module docstring)."""
    n = rows.shape[0]
    if n == 0:
        return rows, jnp.zeros((0,), jnp.int32), jnp.zeros((0,), jnp.int32)
    keys = [rows[:, j] for j in range(rows.shape[1] - 1, -1, -1)]
    order = jnp.lexsort(keys) if len(keys) > 1 else jnp.argsort(keys[0], stable=True)
    sorted_rows = rows[order]
    new_group = jnp.concatenate([jnp.ones((1,), bool), jnp.any(sorted_rows[1:] != sorted_rows[:-1], axis=1)])
    group_sorted = jnp.cumsum(new_group) - 1
    # The sort is stable, so a group's first element in sorted order is its first appearance.
    first_pos = jnp.full((n,), n, jnp.int32).at[group_sorted].min(order.astype(jnp.int32))
    by_appearance = jnp.argsort(first_pos, stable=True)
    rank = jnp.zeros((n,), jnp.int32).at[by_appearance].set(jnp.arange(n, dtype=jnp.int32))
    group = jnp.zeros((n,), jnp.int32).at[order].set(group_sorted.astype(jnp.int32))
    idx = rank[group]
    k = jnp.sum(new_group)
    slot = jnp.arange(n)
    y = rows[jnp.clip(first_pos[by_appearance], 0, n - 1)]
    if jnp.issubdtype(rows.dtype, jnp.inexact):
        fill = jnp.full((n,), jnp.nan, rows.dtype)
    elif rows.dtype == jnp.bool_:
        fill = jnp.zeros((n,), rows.dtype)
    else:
        fill = (np.iinfo(rows.dtype).max - slot).astype(rows.dtype)  # distinct, out of range of any table
    y = jnp.where((slot < k)[:, None], y, fill[:, None])
    counts = jax.ops.segment_sum(jnp.ones((n,), jnp.int32), idx, n)
    return y, idx, counts


@register("Unique", "UniqueV2", "UniqueWithCounts", "UniqueWithCountsV2")
def _unique(node):
    """Unique values (or slices along `axis` for the V2 ops) in order of first appearance."""
    idx_dtype = jax.dtypes.canonicalize_dtype(node.attr_dtype("out_idx", np.int32))
    with_counts = node.type.startswith("UniqueWithCounts")
    with_axis = node.type.endswith("V2")

    def fn(x, axis=None):
        value = known(x)
        x = x if value is None else value  # known (no jit): exact, as TF
        x_shape = tuple(np.shape(x))
        if with_axis:
            ax = np.reshape(_static_axis(node, axis), -1)
            a = int(ax[0]) % max(len(x_shape), 1) if ax.size else 0
        else:
            a = 0
        if with_axis and np.size(axis) == 0:
            x = np.reshape(x, -1) if static(x) else jnp.reshape(x, (-1,))
            x_shape = tuple(np.shape(x))
        xp = np if static(x) else jnp
        moved = xp.moveaxis(x, a, 0) if x_shape else xp.reshape(x, (1,))
        rows = xp.reshape(moved, (moved.shape[0], -1))
        if static(x):
            y, idx, counts = _unique_static(np.asarray(rows))
            y_rows = y
        else:
            y_rows, idx, counts = _unique_traced(rows)
        y = xp.moveaxis(xp.reshape(y_rows, (y_rows.shape[0],) + moved.shape[1:]), 0, a)
        idx, counts = idx.astype(idx_dtype), counts.astype(idx_dtype)
        return (y, idx, counts) if with_counts else (y, idx)

    return fn


def _static_axis(node, axis):
    if not static(axis):
        raise GraphError(f"node {node.name!r} ({node.type}): axis must be a constant")
    return np.asarray(axis)


# -- top-k -------------------------------------------------------------------------------------------


def _top_k(x, k: int, axis: int = -1, largest: bool = True):
    """The k largest (or smallest) entries of `x` along `axis`, sorted, ties to the lower index.

    TF's CPU kernel compares with `<`, so -0.0 and 0.0 tie; XLA's top_k orders -0.0 below 0.0: the
    ranking uses a key with zeros made positive, and the values are gathered from `x`.
    """
    x = jnp.moveaxis(jnp.asarray(x), axis, -1)
    key = x
    if jnp.issubdtype(x.dtype, jnp.floating):
        key = jnp.where(x == 0, jnp.zeros_like(x), x)
    _, indices = jax.lax.top_k(key if largest else -key, k)
    values = jnp.take_along_axis(x, indices, axis=-1)
    return jnp.moveaxis(values, -1, axis), jnp.moveaxis(indices, -1, axis)


@register("TopKV2", "TopK")
def _top_k_op(node):
    """The k largest entries along the last axis, sorted (TF's `sorted=False` leaves the order
    unspecified, so sorted output is valid for it too); ties go to the lower index, as in TF."""
    index_dtype = jax.dtypes.canonicalize_dtype(node.attr_dtype("index_type", np.int32))
    k_attr = node.attr_int("k") if node.type == "TopK" else None

    def fn(x, k=None):
        kk = k_attr if k_attr is not None else _static_int(node, k, "k")
        values, indices = _top_k(x, kk)
        return values, indices.astype(index_dtype)

    return fn


@register("ApproxTopK")
def _approx_top_k(node):
    """`k` largest (`is_max_k`) or smallest entries along `reduction_dimension`, exactly.

    TF's CPU kernel for ApproxTopK is TopKV2's (exact, sorted, ties to the lower index, always k
    entries), registered only for `reduction_dimension=-1` and `is_max_k=True`; `recall_target`,
    `aggregate_to_topk` and `reduction_input_size_override` tune the TPU's approximation and change
    nothing there. jaxmeta computes the exact top-k for every dimension and both directions (XLA's
    CPU and GPU fallbacks are exact too), on every backend, TPU included.
    """
    k = node.attr_int("k")
    dim = node.attr_int("reduction_dimension", -1)
    largest = node.attr_bool("is_max_k", True)
    recall = node.attr_float("recall_target", 0.95)
    if not 0.0 < recall <= 1.0:
        raise GraphError(f"node {node.name!r} (ApproxTopK): recall_target {recall} must be in (0, 1]")

    def fn(x):
        rank = np.ndim(x)
        if not -rank <= dim < rank:
            raise GraphError(f"node {node.name!r} (ApproxTopK): reduction_dimension {dim} is out of range "
                             f"for rank {rank}")
        if not 0 <= k <= np.shape(x)[dim]:
            raise GraphError(f"node {node.name!r} (ApproxTopK): k={k} must be in [0, {np.shape(x)[dim]}], "
                             "the size of the reduction dimension")
        values, indices = _top_k(x, k, dim % rank, largest)
        return values, indices.astype(jnp.int32)

    return fn


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _nth_element(x, n: int, reverse: bool):
    ordered = jnp.sort(x, axis=-1)
    return ordered[..., -1 - n] if reverse else ordered[..., n]


@_nth_element.defjvp
def _nth_element_jvp(n, reverse, primals, tangents):
    # TF's gradient: an equal share for every entry equal to the selected value.
    (x,), (t,) = primals, tangents
    y = _nth_element(x, n, reverse)
    hits = (x == y[..., None]).astype(t.dtype)
    return y, jnp.sum(hits * t, axis=-1) / jnp.sum(hits, axis=-1)


@register("NthElement")
def _nth_element_op(node):
    """The n-th smallest (n-th largest with `reverse`) entry of each last-axis vector; `n` must be
    known when the graph is traced (it is in TF's own graphs: a constant)."""
    reverse = node.attr_bool("reverse", False)

    def fn(x, n):
        nn = _static_int(node, n, "n")
        depth = np.shape(x)[-1] if np.ndim(x) else 0
        if not 0 <= nn < depth:
            raise GraphError(f"node {node.name!r} (NthElement): n={nn} must be in [0, {depth}), the size "
                             "of the input's last dimension")
        return _nth_element(jnp.asarray(x), nn, reverse)

    return fn


# -- small sparse ops --------------------------------------------------------------------------------


@register("SparseToDense")
def _sparse_to_dense(node):
    """Scatters `sparse_values` into a dense `output_shape` array filled with `default_value`.

    `validate_indices=True` makes TF reject unsorted or repeated indices at run time; checking
    traced values would need a host round trip, so jaxmeta does not check them (as for Assert).
    """

    def fn(indices, output_shape, values, default):
        shape = tuple(int(d) for d in np.reshape(_static_shape(node, output_shape), -1))
        rank = len(shape)
        idx = checked_indices(node, xnp(indices).reshape(indices, (-1, rank)), shape)
        if static(idx, values, default):
            out = np.full(shape, default, np.asarray(values).dtype)
            out[tuple(idx.T)] = values
            return out
        values = jnp.asarray(values)
        out = jnp.full(shape, default, values.dtype)
        return out.at[tuple(jnp.asarray(idx).astype(jnp.int32).T)].set(
            jnp.broadcast_to(values, idx.shape[:1]), mode="drop")

    return fn


def _static_shape(node, shape):
    if not static(shape):
        raise GraphError(f"node {node.name!r} ({node.type}): the dense shape must be known when the graph is "
                         "traced (a constant or arithmetic on static shapes)")
    return np.asarray(shape)


@register("SparseReshape")
def _sparse_reshape(node):
    """Re-indexes a SparseTensor for a new dense shape (shapes static, one -1 inferred)."""

    def fn(indices, input_shape, new_shape):
        old = np.reshape(_static_shape(node, input_shape), -1).astype(np.int64)
        new = np.reshape(_static_shape(node, new_shape), -1).astype(np.int64)
        if (new == -1).sum() > 1:
            raise GraphError(f"node {node.name!r} (SparseReshape): at most one dimension may be -1")
        if (new == -1).any():
            known = int(np.prod(new[new != -1]))
            new[new == -1] = int(np.prod(old)) // known if known else 0
        if int(np.prod(new)) != int(np.prod(old)):
            raise GraphError(f"node {node.name!r} (SparseReshape): cannot reshape {old.tolist()} to {new.tolist()}")
        old_strides = np.concatenate([np.cumprod(old[::-1])[::-1][1:], [1]]).astype(np.int64)
        new_strides = np.concatenate([np.cumprod(new[::-1])[::-1][1:], [1]]).astype(np.int64)
        if static(indices):
            linear = np.reshape(indices, (-1, old.size)).astype(np.int64) @ old_strides
            return (linear[:, None] // new_strides[None, :]) % np.maximum(new, 1)[None, :], new
        idx = jnp.reshape(jnp.asarray(indices), (-1, old.size)).astype(jnp.int32)
        linear = idx @ jnp.asarray(old_strides, jnp.int32)
        out = (linear[:, None] // jnp.asarray(new_strides[None, :], jnp.int32)) % jnp.asarray(
            np.maximum(new, 1)[None, :], jnp.int32)
        return out, new

    return fn


@register("SparseTensorDenseMatMul")
def _sparse_dense_matmul(node):
    """`A @ B` with A given as (indices, values, dense shape); repeated indices add up, as in TF."""
    adjoint_a = node.attr_bool("adjoint_a", False)
    adjoint_b = node.attr_bool("adjoint_b", False)

    def fn(indices, values, a_shape, b):
        shape = np.reshape(_static_shape(node, a_shape), -1)
        idx = jnp.asarray(checked_indices(node, indices, shape[:2], "a_indices")).astype(jnp.int32)
        rows, cols = idx[:, 0], idx[:, 1]
        values = jnp.asarray(values)
        b = jnp.asarray(b)
        if adjoint_a:
            rows, cols, values = cols, rows, jnp.conj(values)
        if adjoint_b:
            b = jnp.conj(b.T)
        out_rows = int(shape[1] if adjoint_a else shape[0])
        products = values[:, None] * jnp.take(b, cols, axis=0, mode="fill", fill_value=0)
        return jax.ops.segment_sum(products, rows, out_rows)

    return fn


@register("HistogramFixedWidth")
def _histogram_fixed_width(node):
    """Counts of `values` in `nbins` equal bins over `value_range`; outliers go to the end bins."""
    dtype = jax.dtypes.canonicalize_dtype(node.attr_dtype("dtype", np.int32))

    def fn(values, value_range, nbins):
        n = _static_int(node, nbins, "nbins")
        bounds = checked(value_range)
        if n <= 0 or (bounds is not None and not bounds[0] < bounds[1]):
            what = f"nbins = {n} is not positive" if n <= 0 else f"value_range = {bounds.tolist()} is not increasing"
            raise GraphError(f"node {node.name!r} (HistogramFixedWidth): {what}, which TF refuses")
        values = jnp.reshape(jnp.asarray(values), (-1,))
        value_range = jnp.asarray(value_range)
        lo, hi = value_range[0], value_range[1]
        step = (hi - lo) / n
        # Computed in floating point, as TF's kernel does, then clamped into [0, nbins - 1].
        index = jnp.clip(jnp.floor((values - lo) / step), 0, n - 1).astype(jnp.int32)
        return jax.ops.segment_sum(jnp.ones(index.shape, dtype), index, n)

    return fn
