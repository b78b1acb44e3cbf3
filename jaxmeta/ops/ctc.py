"""Connectionist temporal classification: `CTCLoss`, `CTCLossV2` and `CTCBeamSearchDecoder`.

`CTCLoss` takes its labels as a sparse tensor. Under `jax.jit` the number of labels `nnz` is
static (the shape of `labels_values`) but the longest label is not, so the label axis is padded to
a static bound of `min(nnz, max_time)` labels, i.e. `2 * min(nnz, max_time) + 1` CTC states. (Every
label the kernel aligns fits: a label longer than its sequence is an error, or ignored with
`ignore_longer_outputs_than_inputs`.) The forward-backward pass costs time and memory
`O(max_time * batch * states)`, so under jit every batch entry pays for `min(nnz, max_time)`
labels instead of the longest one. When the labels and sequence lengths are concrete (no jit, or
constants in the graph) the exact longest label is used.

TF rejects malformed labels (an empty label, a non-blank label after a blank one, negative labels,
unsorted or out-of-range indices, a label longer than its sequence unless ignored): with concrete
labels jaxmeta raises a `GraphError` naming the node; under jit, where it cannot raise, both
outputs are all NaN.

`CTCBeamSearchDecoder` returns sparse tensors whose size depends on the data: like
`CTCGreedyDecoder` it runs on concrete values (NumPy, outside any trace) and raises a `GraphError`
under `jax.jit` with traced inputs.

`CTCLossV2` (blank index 0, the op `ctc_loss_v2` builds for cuDNN) has only a GPU kernel in TF:
jaxmeta runs it as `CTCLoss` with the blank moved from class 0 to the last class, as TF's CPU
route for the same loss does.
"""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxmeta._errors import GraphError
from jaxmeta.ops.registry import OUTPUT_SIZES, need_known, register

# -- labels ---------------------------------------------------------------------------------------


def _count_before_in_row(flags, first):
    """For sparse entries grouped by row (sorted indices): how many earlier entries of the same row
    have `flags` set; `first` is the position of each entry's first row entry."""
    flags = flags.astype(jnp.int32)
    before = jnp.cumsum(flags) - flags
    return before - before[first]


# The helpers below are compiled once per shape: without jit, dispatching their scans and scatters op
# by op would cost far more than the computation.
@functools.partial(jax.jit, static_argnames=("max_time", "classes", "bound", "collapse", "ignore_longer"))
def _labels(indices, values, seq_len, *, max_time, classes, bound, collapse, ignore_longer):
    """TF's `PopulateLPrimes` on a sparse label tensor, vectorized so that it runs under jit.

    Returns `(labels [batch, bound], label_len [batch], raw_len [batch], errors)`: the labels the
    kernel aligns (repeats collapsed with `collapse`, cut at the first label >= classes - 1, padded
    with the blank), their lengths, the number of sparse entries per batch entry (TF checks this
    *raw* length against the sequence length), and `{what: mask}` for the inputs TF rejects (a
    mask per batch entry, or a scalar for the whole tensor).
    """
    batch, n = seq_len.shape[0], values.shape[0]
    rows, cols = indices[:, 0].astype(jnp.int32), indices[:, 1]
    values = values.astype(jnp.int32)
    row_ok = (rows >= 0) & (rows < batch)
    safe_rows = jnp.where(row_ok, rows, 0)
    raw_len = jnp.zeros((batch,), jnp.int32).at[rows].add(1, mode="drop")
    first = (jnp.cumsum(raw_len) - raw_len)[safe_rows]
    keep = jnp.ones((n,), bool)
    if collapse:  # TF compares each label with the previous *raw* label of the same row
        repeat = (rows[1:] == rows[:-1]) & (values[1:] == values[:-1])
        keep = jnp.concatenate([keep[:1], ~repeat])
    null = values >= classes - 1
    after_null = _count_before_in_row(keep & null, first) > 0
    label = keep & ~null & ~after_null
    pos = _count_before_in_row(label, first)
    label_rows = jnp.where(label, safe_rows, batch)  # others are dropped
    labels = jnp.full((batch, bound), classes - 1, jnp.int32).at[label_rows, pos].set(values, mode="drop")
    label_len = jnp.zeros((batch,), jnp.int32).at[label_rows].add(1, mode="drop")

    def rows_where(mask):
        return jnp.zeros((batch,), bool).at[jnp.where(mask, safe_rows, batch)].set(True, mode="drop")

    increasing = (rows[1:] > rows[:-1]) | ((rows[1:] == rows[:-1]) & (cols[1:] > cols[:-1]))
    errors = {
        "labels_indices are out of range or not sorted": ~jnp.all(row_ok & (cols >= 0)) | ~jnp.all(increasing),
        "sequence_length is outside [0, max_time]": (seq_len < 0) | (seq_len > max_time),
        "a label is empty": raw_len == 0,
        "a non-blank label follows a blank one (labels >= num_classes - 1)": rows_where(keep & ~null & after_null),
        "a label is negative": rows_where(label & (values < 0)),
    }
    if not ignore_longer:
        errors["a label is longer than its sequence_length (ignore_longer_outputs_than_inputs=True skips it)"] = (
            raw_len > seq_len)
    return labels, label_len, raw_len, errors


# -- forward-backward -----------------------------------------------------------------------------


def _logsumexp3(a, b, c):
    m = jnp.maximum(jnp.maximum(a, b), c)
    m = jnp.where(jnp.isfinite(m), m, 0)
    return m + jnp.log(jnp.exp(a - m) + jnp.exp(b - m) + jnp.exp(c - m))


def _shift(x, k, fill):
    """x[:, u - k] along the state axis (k > 0: from lower states, k < 0: from higher ones)."""
    pad = jnp.full((x.shape[0], abs(k)), fill, x.dtype)
    return jnp.concatenate([pad, x[:, :-k]], 1) if k > 0 else jnp.concatenate([x[:, -k:], pad], 1)


@functools.partial(jax.jit, static_argnames=("merge_repeated", "ignore_longer"))
def _loss_and_gradient(logits, labels, label_len, raw_len, seq_len, *, merge_repeated, ignore_longer):
    """TF's `CTCLossCalculator` for every batch entry at once.

    Args:
        logits: `[max_time, batch, classes]`; the blank is the last class.
        labels: `[batch, L]` padded labels; label_len: `[batch]` their lengths.
        raw_len: `[batch]` the labels' lengths before collapsing and cutting at a blank.
        seq_len: `[batch]` valid time steps per entry.
        merge_repeated, ignore_longer: `ctc_merge_repeated`, `ignore_longer_outputs_than_inputs`.

    Returns:
        `(loss [batch], gradient [max_time, batch, classes])`: -log p(labels | logits) and
        `softmax(logits) - occupancy`, where a class's posterior occupancy at step t is
        `sum_{u: l'(u) = c} alpha(t, u) beta(t, u) / p`.
    """
    time, batch, classes = logits.shape
    blank = classes - 1
    neg = jnp.asarray(-jnp.inf, logits.dtype)
    # TF's softmax: exp(x - max) / sum, then log; a probability that underflows gives -inf.
    e = jnp.exp(logits - jnp.max(logits, axis=2, keepdims=True))
    y = e / jnp.sum(e, axis=2, keepdims=True)
    log_y = jnp.log(y)
    # l': blank, l1, blank, l2, ..., blank (2L + 1 states; the padding states are never read back).
    states = 2 * labels.shape[1] + 1
    l_prime = jnp.full((batch, states), blank, jnp.int32).at[:, 1::2].set(labels)
    num_states = 2 * label_len + 1
    u = jnp.arange(states)[None, :]
    is_blank = l_prime == blank
    stay = is_blank | merge_repeated  # alpha(u, t-1) -> alpha(u, t)
    skip = ~is_blank & (u >= 2)  # alpha(u-2, t-1) -> alpha(u, t)
    if merge_repeated:
        skip &= l_prime != _shift(l_prime, 2, -1)
    emit = jnp.take_along_axis(log_y, jnp.broadcast_to(l_prime[None], (time, batch, states)), axis=2)

    def forward(alpha, emit_t):
        alpha = emit_t + _logsumexp3(jnp.where(stay, alpha, neg), _shift(alpha, 1, neg),
                                     jnp.where(skip, _shift(alpha, 2, neg), neg))
        return alpha, alpha

    alpha0 = jnp.where(u < 2, emit[0], neg)
    _, alpha = lax.scan(forward, alpha0, emit[1:])
    alpha = jnp.concatenate([alpha0[None], alpha])

    # beta(u, t) excludes step t's emission; it starts at the last step of each entry (t = seq_len - 1).
    last = (u >= num_states[:, None] - 2) & (u < num_states[:, None])
    # TF writes log_beta(U - 2, T - 1) = 0 even when U == 1 (all labels blank): in its column-major
    # matrix that lands on (0, T - 2), which then *starts* at log 1 instead of log 0. Reproduced.
    quirk = (u == 0) & (num_states[:, None] == 1)

    def backward(beta_next, xs):
        t, emit_next = xs
        x = beta_next + emit_next
        beta = _logsumexp3(jnp.where(stay, x, neg), _shift(x, -1, neg), _shift(jnp.where(skip, x, neg), -2, neg))
        beta = jnp.where((t == seq_len - 2)[:, None] & quirk, jnp.logaddexp(beta, 0), beta)
        beta = jnp.where((t == seq_len - 1)[:, None], jnp.where(last, 0, neg), beta)
        beta = jnp.where((t >= seq_len)[:, None], neg, beta)
        return beta, beta

    emit_next = jnp.concatenate([emit[1:], jnp.full((1, batch, states), neg)])
    _, beta = lax.scan(backward, jnp.full((batch, states), neg), (jnp.arange(time), emit_next), reverse=True)

    log_p = jax.nn.logsumexp(alpha[0] + beta[0], axis=1)
    log_p = jnp.where(seq_len > 0, log_p, neg)
    post = jnp.exp(alpha + beta - jnp.where(jnp.isfinite(log_p), log_p, 0)[None, :, None])
    occupancy = jnp.zeros_like(y).at[:, jnp.arange(batch)[:, None], l_prime].add(post)

    active = seq_len > 0
    if ignore_longer:
        active &= raw_len <= seq_len
    steps = (jnp.arange(time)[:, None] < seq_len[None, :]) & active[None, :]
    # No valid alignment: TF returns loss inf and the softmax as the gradient.
    gradient = jnp.where(jnp.isfinite(log_p)[None, :, None], y - occupancy, y)
    gradient = jnp.where(steps[:, :, None], gradient, 0)
    return jnp.where(active, -log_p, 0), gradient


@jax.custom_vjp
def _loss_with_gradient(logits, loss, gradient):
    """`loss`, whose derivative with respect to `logits` is `gradient` (as TF's `_CTCLossGrad`)."""
    return loss


def _loss_with_gradient_fwd(logits, loss, gradient):
    return loss, gradient


def _loss_with_gradient_bwd(gradient, g):
    return g[None, :, None] * gradient, jnp.zeros_like(g), jnp.zeros_like(gradient)


_loss_with_gradient.defvjp(_loss_with_gradient_fwd, _loss_with_gradient_bwd)


@register("CTCLoss")
def _ctc_loss(node):
    """CTC loss of time-major logits against sparse labels, as TF's CPU kernel computes it.

    Inputs: inputs `[max_time, batch, num_classes]` (logits; the blank is class num_classes - 1),
    labels_indices `[nnz, 2]` (batch, position; sorted), labels_values `[nnz]`, sequence_length
    `[batch]`. Outputs: loss `[batch]` (-log p(labels | inputs)) and gradient
    `[max_time, batch, num_classes]`, d loss / d inputs (softmax included), zero past each
    sequence_length.

    TF's semantics, kept: labels >= num_classes - 1 end a label (later non-blank ones are an
    error); `preprocess_collapse_repeated` merges repeated labels before the loss;
    `ctc_merge_repeated=False` does not merge repeated non-blank outputs (each emits a label); a
    label with no possible alignment (e.g. repeats needing blanks between them in too few steps)
    gives loss inf and gradient softmax(inputs); with `ignore_longer_outputs_than_inputs`, a label
    with more entries than its sequence_length (TF counts them before collapsing), or a
    sequence_length of 0, gives loss 0 and gradient 0. A label of blanks only gets the value TF's
    kernel computes after an out-of-bounds write (see `_loss_and_gradient`).

    `jax.grad` through `loss` gives `grad_loss * gradient`, exactly TF's registered gradient (also
    where the loss is inf). Like TF, which defines no second derivative, the `gradient` output is
    constant to `jax.grad`.

    Raises:
        GraphError: for labels or sequence lengths TF rejects, when they are concrete (under jit
            the outputs are NaN instead), and for inputs of the wrong rank.
    """
    return _ctc_loss_fn(node, *_ctc_loss_attrs(node))


def _ctc_loss_attrs(node) -> tuple[bool, bool, bool]:
    """`preprocess_collapse_repeated`, `ctc_merge_repeated` and `ignore_longer_outputs_than_inputs`
    of a CTCLoss or CTCLossV2 node, with TF's defaults."""
    return (node.attr_bool("preprocess_collapse_repeated", False), node.attr_bool("ctc_merge_repeated", True),
            node.attr_bool("ignore_longer_outputs_than_inputs", False))


def _ctc_loss_fn(node, collapse, merge, ignore_longer, *, blank_first=False):
    """The closure of `CTCLoss` (`blank_first=False`) and `CTCLossV2` (`blank_first=True`: the blank
    is class 0, real labels are 1..num_classes - 1)."""

    def fn(inputs, labels_indices, labels_values, sequence_length):
        if np.ndim(inputs) != 3 or np.shape(labels_indices)[1:] != (2,) or np.ndim(labels_values) != 1:
            raise GraphError(
                f"node {node.name!r} ({node.type}): expected inputs [max_time, batch, num_classes], labels_indices "
                f"[nnz, 2] and labels_values [nnz], got shapes {np.shape(inputs)}, {np.shape(labels_indices)} "
                f"and {np.shape(labels_values)}")
        time, batch, classes = inputs.shape
        if np.shape(sequence_length) != (batch,) or np.shape(labels_indices)[0] != np.shape(labels_values)[0]:
            raise GraphError(
                f"node {node.name!r} ({node.type}): sequence_length must be [batch={batch}] and labels_indices/"
                f"labels_values must have one row per label, got {np.shape(sequence_length)}, "
                f"{np.shape(labels_indices)} and {np.shape(labels_values)}")
        if batch == 0:
            raise GraphError(f"node {node.name!r} ({node.type}): batch_size must not be 0")
        inputs = jnp.asarray(inputs)
        logits = jnp.roll(inputs, -1, axis=2) if blank_first else inputs  # the blank last, as CTCLoss has it
        traced = any(isinstance(x, jax.core.Tracer) for x in (labels_indices, labels_values, sequence_length))
        # Concrete labels (constants in the graph) are analysed eagerly, also inside the caller's jit.
        with contextlib.nullcontext() if traced else jax.ensure_compile_time_eval():
            seq_len = jnp.asarray(sequence_length).astype(jnp.int32)
            values = jnp.asarray(labels_values)
            if blank_first:
                values = values - 1
            labels, label_len, raw_len, errors = _labels(
                jnp.asarray(labels_indices), values, seq_len, max_time=time, classes=classes,
                bound=max(1, min(np.shape(labels_values)[0], time)), collapse=collapse, ignore_longer=ignore_longer)
            if blank_first:  # checked first: V2's blank (0) would otherwise read as the negative label -1
                errors = {"a label is outside [1, num_classes) (class 0 is the blank)":
                          jnp.any((values < 0) | (values >= classes - 1)), **errors}
        if traced:
            bad = jnp.zeros((), bool)
            for mask in errors.values():
                bad |= jnp.any(mask)
        else:
            for what, mask in errors.items():
                mask = np.asarray(mask)
                if mask.any():
                    where = f" (batch entry {int(np.argmax(mask))})" if mask.ndim else ""
                    raise GraphError(f"node {node.name!r} ({node.type}): {what}{where}; TF rejects this input")
            labels = labels[:, :max(1, int(np.max(np.asarray(label_len))))]  # the exact longest label
        loss, gradient = _loss_and_gradient(lax.stop_gradient(logits), labels, label_len, raw_len, seq_len,
                                            merge_repeated=merge, ignore_longer=ignore_longer)
        if blank_first:
            gradient = jnp.roll(gradient, 1, axis=2)
        if traced:
            loss, gradient = jnp.where(bad, jnp.nan, loss), jnp.where(bad, jnp.nan, gradient)
        return _loss_with_gradient(inputs, loss, gradient), gradient

    return fn


@register("CTCLossV2")
def _ctc_loss_v2(node):
    """`CTCLoss` with the blank at class 0 (labels 1..num_classes - 1): the op TF's `ctc_loss_v2` /
    `tf.nn.ctc_loss` builds for cuDNN, float32 only.

    TF has only a GPU (cuDNN) kernel for it. jaxmeta computes it as TF's CPU route for the same loss
    does (`ctc_loss_v2` without cuDNN): `CTCLoss` with class 0 moved last and every label less one,
    the gradient output moved back. The outputs are CTCLoss's (loss `[batch]`, gradient
    `[max_time, batch, num_classes]`, zero past each sequence_length) and so is `jax.grad`
    (TF's `_CTCLossV2Grad` is `_CTCLossGrad`). Where cuDNN's own rules could differ (an empty label,
    a label that needs more steps than its sequence has) jaxmeta follows the CPU kernel, as TF's
    CPU route would.

    Raises:
        GraphError: for attributes other than TF's GPU kernel accepts (`preprocess_collapse_repeated`
            False, `ctc_merge_repeated` True, `ignore_longer_outputs_than_inputs` False), and as
            `CTCLoss` for inputs TF rejects, labels outside [1, num_classes) included.
    """
    collapse, merge, ignore_longer = _ctc_loss_attrs(node)
    if collapse or not merge or ignore_longer:
        raise GraphError(
            f"node {node.name!r} (CTCLossV2): TF's kernel (cuDNN) requires preprocess_collapse_repeated=False, "
            f"ctc_merge_repeated=True and ignore_longer_outputs_than_inputs=False, got {collapse}, {merge} and "
            f"{ignore_longer}; use CTCLoss (blank last) for the others")
    return _ctc_loss_fn(node, collapse, merge, ignore_longer, blank_first=True)


# -- CTCBeamSearchDecoder -------------------------------------------------------------------------
# TF's CPU kernel runs a prefix beam search over a tree of `BeamEntry`s kept in a `gtl::TopN`, whose
# order among equal scores comes from libstdc++'s heap and sort algorithms. They are reproduced
# step by step below (with TF's float arithmetic) so that ties, pruning and the order of the top
# paths match TF's, not only the scores.


class _BeamProbability:
    __slots__ = ("total", "blank", "label")

    def __init__(self, neg):
        self.total = self.blank = self.label = neg

    def reset(self, neg):
        self.total = self.blank = self.label = neg

    def copy_from(self, other):
        self.total, self.blank, self.label = other.total, other.blank, other.label


class _BeamEntry:
    __slots__ = ("parent", "label", "children", "oldp", "newp")

    def __init__(self, parent, label, neg):
        self.parent, self.label, self.children = parent, label, {}
        self.oldp, self.newp = _BeamProbability(neg), _BeamProbability(neg)

    def label_seq(self, merge_repeated):
        labels, prev, c = [], -1, self
        while c.parent is not None:  # the root has no label
            if not merge_repeated or c.label != prev:
                labels.append(c.label)
            prev, c = c.label, c.parent
        return labels[::-1]


def _better(a, b):
    """TF's `BeamComparer`: a greater-than on the entries' current total log-probability."""
    return a.newp.total > b.newp.total


def _push_heap_hole(xs, hole, top, value):
    parent = (hole - 1) // 2
    while hole > top and _better(xs[parent], value):
        xs[hole] = xs[parent]
        hole, parent = parent, (parent - 1) // 2
    xs[hole] = value


def _adjust_heap(xs, hole, n, value):
    top, child = hole, hole
    while child < (n - 1) // 2:
        child = 2 * (child + 1)
        if _better(xs[child], xs[child - 1]):
            child -= 1
        xs[hole] = xs[child]
        hole = child
    if n % 2 == 0 and child == (n - 2) // 2:
        child = 2 * (child + 1)
        xs[hole] = xs[child - 1]
        hole = child - 1
    _push_heap_hole(xs, hole, top, value)


def _make_heap(xs, n):
    for parent in range((n - 2) // 2, -1, -1):
        _adjust_heap(xs, parent, n, xs[parent])


def _pop_heap(xs, n):
    """libstdc++ `pop_heap(xs, xs + n)`: the heap's top moves to xs[n - 1]."""
    if n > 1:
        value = xs[n - 1]
        xs[n - 1] = xs[0]
        _adjust_heap(xs, 0, n - 1, value)


def _sort_heap(xs, n):
    while n > 1:
        n -= 1
        value = xs[n]
        xs[n] = xs[0]
        _adjust_heap(xs, 0, n, value)


def _linear_insert(xs, i):
    value, j = xs[i], i - 1
    while _better(value, xs[j]):
        xs[i] = xs[j]
        i, j = j, j - 1
    xs[i] = value


def _insertion_sort(xs, lo, hi):
    for i in range(lo + 1, hi):
        if _better(xs[i], xs[lo]):
            value = xs[i]
            xs[lo + 1:i + 1] = xs[lo:i]
            xs[lo] = value
        else:
            _linear_insert(xs, i)


def _introsort_loop(xs, lo, hi, depth):
    while hi - lo > 16:
        if depth == 0:  # partial_sort(lo, hi, hi): a heap sort
            part = xs[lo:hi]
            _make_heap(part, len(part))
            _sort_heap(part, len(part))
            xs[lo:hi] = part
            return
        depth -= 1
        a, b, c = lo + 1, lo + (hi - lo) // 2, hi - 1  # the median of three moves to xs[lo]
        if _better(xs[a], xs[b]):
            m = b if _better(xs[b], xs[c]) else c if _better(xs[a], xs[c]) else a
        else:
            m = a if _better(xs[a], xs[c]) else c if _better(xs[b], xs[c]) else b
        xs[lo], xs[m] = xs[m], xs[lo]
        first, last = lo + 1, hi
        while True:
            while _better(xs[first], xs[lo]):
                first += 1
            last -= 1
            while _better(xs[lo], xs[last]):
                last -= 1
            if not first < last:
                break
            xs[first], xs[last] = xs[last], xs[first]
            first += 1
        _introsort_loop(xs, first, hi, depth)
        hi = first


def _std_sort(xs):
    """libstdc++ `std::sort` (introsort, then insertion sort): TF's order among equal scores."""
    n = len(xs)
    if n > 1:
        _introsort_loop(xs, 0, n, 2 * (n.bit_length() - 1))
        if n > 16:
            _insertion_sort(xs, 0, 16)
            for i in range(16, n):
                _linear_insert(xs, i)
        else:
            _insertion_sort(xs, 0, n)


class _TopN:
    """TF's `gtl::TopN` with the `BeamComparer`: the `limit` best entries, an unordered vector
    until it overflows, then a heap whose front is the worst entry."""

    def __init__(self, limit):
        self.limit, self.xs, self.heap_sorted, self.bottom_known = limit, [], False, False

    def push(self, v):
        xs = self.xs
        if self.limit == 0:
            return
        if not self.heap_sorted:
            xs.append(v)
            if len(xs) == self.limit + 1:
                _make_heap(xs, len(xs))
                _pop_heap(xs, len(xs))
                xs.pop()
                self.heap_sorted = True
            elif self.bottom_known and not _better(xs[-1], xs[0]):
                xs[0], xs[-1] = xs[-1], xs[0]
        elif _better(v, xs[0]):
            _pop_heap(xs, len(xs))
            xs[-1] = v
            _push_heap_hole(xs, len(xs) - 1, 0, v)

    def peek_bottom(self):
        xs = self.xs
        if not self.heap_sorted and not self.bottom_known:
            m = 0
            for i in range(1, len(xs)):
                if _better(xs[m], xs[i]):
                    m = i
            xs[0], xs[m] = xs[m], xs[0]
            self.bottom_known = True
        return xs[0]

    def extract(self):
        xs, self.xs = self.xs, []
        if self.heap_sorted:
            _sort_heap(xs, len(xs))
        else:
            _std_sort(xs)
        self.heap_sorted = self.bottom_known = False
        return xs


@functools.cache
def _libm():
    """The C library's exp and log functions, which TF's kernel calls: NumPy's own float32 exp
    and log can differ in the last bit, which reorders paths with (nearly) equal scores."""
    import ctypes
    import ctypes.util
    import math

    try:
        lib = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
        fns = []
        for name in ("expf", "logf", "log1pf"):
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = [ctypes.c_float], ctypes.c_float
            fns.append(fn)
    except (OSError, AttributeError):  # no C library to call: NumPy's (may differ in the last bit)
        fns = [np.exp, np.log, np.log1p]
    expf, logf, log1pf = fns
    return {
        np.float32: (lambda x: np.float32(expf(x)), lambda x: np.float32(logf(x))),
        np.float64: (lambda x: np.float64(math.exp(x)), lambda x: np.float64(math.log(x))),
        "log1p_exp_f": lambda x: np.float32(log1pf(np.float32(expf(x)))),
    }


def _log_sum_exp(a, b, neg):
    """TF's `LogSumExp`, whose log1p and exp are float functions also for double inputs."""
    if a == neg:
        return b
    if b == neg:
        return a
    hi, lo = (a, b) if a > b else (b, a)
    return hi + hi.dtype.type(_libm()["log1p_exp_f"](np.float32(lo - hi)))


def _beam_search(logits, beam_width, top_paths, merge_repeated, node):
    """TF's `CTCBeamSearchDecoder::Step` over one batch entry's `[steps, classes]` logits, then
    `TopPaths`: the `top_paths` best label sequences, best first, and their log-probabilities."""
    dtype = logits.dtype.type
    exp, log = _libm()[dtype]
    neg = dtype(-np.inf)
    classes = logits.shape[1]
    blank = classes - 1
    root = _BeamEntry(None, -1, neg)
    root.newp.total = root.newp.blank = dtype(0)
    leaves = _TopN(beam_width)
    leaves.push(root)
    for raw in logits:
        max_coeff = raw.max()
        norm = dtype(0)
        for v in raw:  # TF sums exp(logit - max) one class after the other
            norm += exp(v - max_coeff)
        norm = max_coeff + log(norm)
        branches = leaves.extract()
        for b in branches:
            b.oldp.copy_from(b.newp)
        for b in branches:
            if b.parent is not None:
                if b.parent.newp.total != neg:  # the parent is active
                    prev = b.parent.oldp.blank if b.label == b.parent.label else b.parent.oldp.total
                    b.newp.label = _log_sum_exp(b.newp.label, prev, neg)
                b.newp.label = b.newp.label + (raw[b.label] - norm)
            b.newp.blank = b.oldp.total + raw[blank] - norm
            b.newp.total = _log_sum_exp(b.newp.blank, b.newp.label, neg)
            leaves.push(b)

        def is_candidate(p):
            return p.total > neg and (len(leaves.xs) < beam_width or p.total > leaves.peek_bottom().newp.total)

        for b in branches:
            if not is_candidate(b.oldp):
                continue
            for label in range(classes - 1):
                c = b.children.get(label)
                if c is None:
                    c = b.children[label] = _BeamEntry(b, label, neg)
                if c.newp.total != neg:  # already in the beam
                    continue
                c.newp.blank = neg
                prev = b.oldp.blank if label == b.label else b.oldp.total
                c.newp.label = c.newp.total = raw[label] - norm + prev
                if is_candidate(c.newp):
                    if len(leaves.xs) == beam_width:
                        leaves.peek_bottom().newp.reset(neg)  # it leaves the beam
                    leaves.push(c)
                else:
                    c.oldp.reset(neg)
                    c.newp.reset(neg)
    if top_paths > len(leaves.xs):
        raise GraphError(
            f"node {node.name!r} ({node.type}): fewer paths in the beam ({len(leaves.xs)}) than top_paths="
            f"{top_paths}, which TF rejects (\"Less leaves in the beam search than requested\"); lower top_paths")
    best = _TopN(top_paths)
    for e in leaves.xs:
        best.push(e)
    best = best.extract()
    return [e.label_seq(merge_repeated) for e in best], [e.newp.total for e in best]


@register("CTCBeamSearchDecoder")
def _ctc_beam_search_decoder(node):
    """Prefix beam search over `[max_time, batch, num_classes]` logits, as TF's CPU kernel.

    Each step log-softmaxes the logits; the blank is the last class; no language model (TF's
    default scorer). Each batch entry runs `sequence_length` steps (none when negative); the
    beam keeps `beam_width` prefixes, pruned and ordered as TF's `TopN` does, ties included.
    With `merge_repeated`, repeated labels of a path are merged in the output (TF merges them
    only when it writes the path: a repeat that the search put after a blank is merged too).

    Outputs, in TF's order: `top_paths` decoded_indices, `top_paths` decoded_values, `top_paths`
    decoded_shape (one sparse tensor per rank of path, its size data-dependent: concrete inputs
    only) and log_probability `[batch, top_paths]`, the paths' log-probabilities.

    Raises:
        GraphError: under jit with traced inputs; for top_paths > beam_width, beam_width or
            top_paths < 1, bad input shapes, a sequence_length > max_time, or fewer paths in the
            beam than top_paths (all rejected by TF).
    """
    beam_width = node.attr_int("beam_width")
    top_paths = node.attr_int("top_paths")
    merge = node.attr_bool("merge_repeated", True)
    if not 1 <= top_paths <= beam_width:
        raise GraphError(f"node {node.name!r} (CTCBeamSearchDecoder): need 1 <= top_paths <= beam_width, got "
                         f"top_paths={top_paths} and beam_width={beam_width}; TF rejects this")

    def fn(inputs, sequence_length):
        inputs, sequence_length = need_known(node, "inputs and sequence_length", OUTPUT_SIZES, inputs, sequence_length)
        if inputs.ndim != 3 or inputs.size == 0 or sequence_length.shape != inputs.shape[1:2]:
            raise GraphError(
                f"node {node.name!r} (CTCBeamSearchDecoder): expected non-empty inputs [max_time, batch, "
                f"num_classes] and sequence_length [batch], got shapes {inputs.shape} and {sequence_length.shape}")
        time, batch, _ = inputs.shape
        if np.any(sequence_length > time):
            raise GraphError(f"node {node.name!r} (CTCBeamSearchDecoder): sequence_length "
                             f"{sequence_length.tolist()} exceeds max_time={time}; TF rejects this")
        paths, log_prob = [], np.zeros((batch, top_paths), inputs.dtype)
        for b in range(batch):
            steps = max(0, int(sequence_length[b]))
            seqs, log_prob[b] = _beam_search(inputs[:steps, b], beam_width, top_paths, merge, node)
            paths.append(seqs)
        i64 = jax.dtypes.canonicalize_dtype(np.int64)
        indices, values, shapes = [], [], []
        for p in range(top_paths):
            decoded = [paths[b][p] for b in range(batch)]
            idx = [(b, j) for b, labels in enumerate(decoded) for j in range(len(labels))]
            indices.append(np.asarray(idx, np.int64).reshape(-1, 2).astype(i64))
            values.append(np.asarray([v for labels in decoded for v in labels], np.int64).astype(i64))
            shapes.append(np.asarray([batch, max(len(lab) for lab in decoded)], np.int64).astype(i64))
        return (*indices, *values, *shapes, log_prob.astype(jax.dtypes.canonicalize_dtype(inputs.dtype)))

    return fn
