"""The `ctc` family against TensorFlow: CTCLoss and CTCLossV2 (loss, gradient output, jax.grad of the
loss), CTCBeamSearchDecoder."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from oracle import assert_close, case, compare_with_tf, export_meta, get_tf, ph, run_cases, run_tf

import jaxmeta

pytestmark = pytest.mark.oracle


def randn(*shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def sparse(labels):
    """Sparse (indices int64 [nnz, 2], values int32 [nnz]) of a list of label lists."""
    idx = [(b, j) for b, lab in enumerate(labels) for j in range(len(lab))]
    return np.asarray(idx, np.int64).reshape(-1, 2), np.asarray([v for lab in labels for v in lab], np.int32)


def ctc_feeds(labels, lengths, time, classes, seed, indices=None):
    idx, vals = sparse(labels)
    return {
        "x:0": randn(time, len(lengths), classes, seed=seed) * 2,
        "idx:0": idx if indices is None else np.asarray(indices, np.int64),
        "vals:0": vals,
        "len:0": np.asarray(lengths, np.int32),
    }


def raw_ctc(feeds, op="CTCLoss", **attrs):
    """tf.raw_ops.CTCLoss (or `op`, e.g. CTCLossV2) on the feeds' placeholders: both outputs."""

    def build(tf):
        p = {k[:-2]: ph(tf, k[:-2], v) for k, v in feeds.items()}
        return list(getattr(tf.raw_ops, op)(inputs=p["x"], labels_indices=p["idx"], labels_values=p["vals"],
                                            sequence_length=p["len"], **attrs))

    return build


def case_ctc(labels, lengths, time, classes, seed, *, attrs=None, indices=None):
    """One CTCLoss case: with attrs, tf.raw_ops.CTCLoss (loss and gradient); without, the public
    tf.compat.v1.nn.ctc_loss (loss only). The gradient of the loss is compared in both."""
    feeds = ctc_feeds(labels, lengths, time, classes, seed, indices)
    if attrs is not None:
        return case(raw_ctc(feeds, **attrs), feeds, grads=True, rtol=1e-4, atol=1e-5)

    def build(tf):
        p = {k[:-2]: ph(tf, k[:-2], v) for k, v in feeds.items()}
        dense_shape = tf.constant([len(lengths), max(len(lab) for lab in labels)], tf.int64)
        sp = tf.SparseTensor(p["idx"], p["vals"], dense_shape)
        return tf.compat.v1.nn.ctc_loss(sp, p["x"], p["len"])

    return case(build, feeds, grads=True, rtol=1e-4, atol=1e-5)


def test_ctc_loss():
    run_cases([
        # Variable lengths, repeats, one step; [2, 2] cannot fit in 2 steps: loss inf, gradient softmax.
        case_ctc([[1, 2], [0], [1, 2, 1], [2, 2], [0, 1, 0, 2], [1], [2, 2]], [6, 5, 6, 3, 4, 1, 2], 6, 4, seed=0),
        case_ctc([[3, 3, 3], [0, 4, 2, 1, 1, 4]], [7, 7], 7, 6, seed=1),  # repeats need blanks between them
    ])


ATTRS = [
    dict(preprocess_collapse_repeated=False, ctc_merge_repeated=True, ignore_longer_outputs_than_inputs=False),
    dict(preprocess_collapse_repeated=True, ctc_merge_repeated=True, ignore_longer_outputs_than_inputs=False),
    dict(preprocess_collapse_repeated=False, ctc_merge_repeated=False, ignore_longer_outputs_than_inputs=False),
    dict(preprocess_collapse_repeated=True, ctc_merge_repeated=False, ignore_longer_outputs_than_inputs=True),
    dict(preprocess_collapse_repeated=False, ctc_merge_repeated=True, ignore_longer_outputs_than_inputs=True),
]


def test_ctc_loss_attrs():
    cases = []
    for i, attrs in enumerate(ATTRS):
        # [0, 0] in 2 steps and [1, 1, 1] in 3 are impossible unless collapsed.
        labels, lengths = [[1, 1, 2], [0, 2, 2, 2], [2], [0, 0], [1, 1, 1]], [6, 5, 4, 2, 3]
        if attrs["ignore_longer_outputs_than_inputs"]:
            # Labels longer than their sequence (TF counts before collapsing; the last one is longer
            # than max_time, beyond jaxmeta's static bound under jit), a sequence of 0 steps.
            labels, lengths = labels + [[1, 1, 1, 1], [2], [1, 2, 1, 2, 1, 2, 1]], lengths + [3, 0, 6]
        cases.append(case_ctc(labels, lengths, 6, 4, seed=10 + i, attrs=attrs))
    run_cases(cases)


def test_ctc_loss_label_quirks():
    labels = [[1, 3], [2, 0, 9, 9], [3], [3, 3], [1], [1, 2]]
    indices = [[0, 0], [0, 1], [1, 0], [1, 1], [1, 2], [1, 3], [2, 0], [3, 0], [3, 1], [4, 0], [5, 0], [5, 4]]
    # Labels >= num_classes - 1 end the label (the blank 3, and 9 beyond the classes). A label of
    # blanks only: TF's kernel writes log_beta(-1, T-1), i.e. (0, T-2) (reproduced). The positions
    # (column indices) of the labels only order them: [5, 4] is the second label of entry 5.
    compare_with_tf(*case_ctc(labels, [4, 4, 4, 2, 1, 4], 4, 4, seed=20, attrs={}, indices=indices)[:2],
                    grads=True, rtol=1e-4, atol=1e-5)


def test_ctc_loss_float64():
    feeds = ctc_feeds([[1, 2, 2], [0]], [5, 3], 5, 4, seed=30)
    feeds["x:0"] = feeds["x:0"].astype(np.float64)
    compare_with_tf(raw_ctc(feeds), feeds, grads=True, rtol=1e-4, atol=1e-5)


def test_ctc_loss_jax_grad_is_the_gradient_output():
    feeds = ctc_feeds([[1, 2, 1], [2, 2]], [5, 4], 5, 4, seed=40)
    run = run_tf(raw_ctc(feeds, ignore_longer_outputs_than_inputs=True), feeds)
    f = run.graph.function(run.fetch_names, feeds=list(feeds))
    args = list(feeds.values())
    weights = np.asarray([0.5, -2.0], np.float32)
    grad = jax.grad(lambda x: (f({}, x, *args[1:])[0] * weights).sum())(args[0])
    np.testing.assert_allclose(grad, run.expected[1] * weights[None, :, None], rtol=1e-6, atol=1e-7)


BAD_LABELS = [
    # (labels, lengths, indices, what jaxmeta names)
    ([[1, 2], []], [4, 4], None, "label is empty"),
    ([[1, 2, 0], [1]], [2, 4], None, "is longer than its sequence_length"),
    ([[1, 1, 1], [1]], [2, 4], None, "is longer than its sequence_length"),  # counted before collapsing
    ([[3, 1], [1]], [4, 4], None, "non-blank label follows a blank"),
    ([[-1], [1]], [4, 4], None, "label is negative"),
    ([[1], [2]], [4, 4], [[1, 0], [0, 0]], "not sorted"),
    ([[1, 2], [2]], [4, 4], [[0, 1], [0, 1], [1, 0]], "not sorted"),
    ([[1], [2]], [5, 4], None, "sequence_length is outside"),
]


@pytest.mark.parametrize("labels, lengths, indices, what", BAD_LABELS)
def test_ctc_loss_rejects_what_tf_rejects(labels, lengths, indices, what):
    tf_errors = pytest.importorskip("tensorflow").errors
    feeds = ctc_feeds(labels, lengths, 4, 4, seed=50, indices=indices)
    attrs = dict(preprocess_collapse_repeated=True)
    with pytest.raises(tf_errors.InvalidArgumentError):
        run_tf(raw_ctc(feeds, **attrs), feeds)
    # The same graph with valid labels, for jaxmeta to run on the bad ones.
    good = ctc_feeds([[1], [2]], [4, 4], 4, 4, seed=50)
    run = run_tf(raw_ctc(good, **attrs), good)
    f = run.graph.function(run.fetch_names, feeds=list(feeds))
    with pytest.raises(jaxmeta.GraphError, match=what):
        f({}, *feeds.values())
    for out in jax.jit(f)({}, *feeds.values()):  # under jit it cannot raise: all NaN
        assert np.isnan(np.asarray(out)).all()


def test_ctc_loss_constant_labels():
    """Labels and sequence lengths that are constants of the graph are analysed eagerly, also under
    the caller's jit (the exact longest label, and TF's errors raised as GraphErrors)."""
    x = randn(6, 2, 4, seed=3)

    def build(tf):
        labels = tf.SparseTensor(np.int64([[0, 0], [0, 1], [1, 0]]), np.int32([1, 2, 0]), [2, 2])
        return tf.compat.v1.nn.ctc_loss(labels, ph(tf, "x", x), tf.constant([6, 5], tf.int32))

    compare_with_tf(build, {"x:0": x}, grads=True, rtol=1e-4, atol=1e-5)


# -- CTCLossV2 -----------------------------------------------------------------------------------


def ctc_v2(feeds, **attrs):
    """tf.raw_ops.CTCLossV2 (blank 0) on the feeds' placeholders: both outputs."""
    return raw_ctc(feeds, "CTCLossV2", **attrs)


def ctc_v2_on_cpu(feeds):
    """CTCLossV2's loss and gradient as TF's CPU route for the same loss computes them (`ctc_loss_v2`
    without cuDNN): CTCLoss with class 0 (the blank) moved last, every label less one, and the
    gradient output moved back."""

    def build(tf):
        p = {k[:-2]: ph(tf, k[:-2], v) for k, v in feeds.items()}
        x = tf.concat([p["x"][:, :, 1:], p["x"][:, :, :1]], 2)
        loss, grad = tf.raw_ops.CTCLoss(inputs=x, labels_indices=p["idx"], labels_values=p["vals"] - 1,
                                        sequence_length=p["len"])
        return [loss, tf.concat([grad[:, :, -1:], grad[:, :, :-1]], 2)]

    return build


def compare_ctc_v2(feeds, rtol=1e-4, atol=1e-5):
    """jaxmeta's CTCLossV2 (with and without jit, and jax.grad of both outputs) against TF.

    TF has no CPU kernel for CTCLossV2 (only cuDNN's), so TF's values come from `ctc_v2_on_cpu`;
    jaxmeta runs a graph with the CTCLossV2 node itself."""
    tf = get_tf()
    with pytest.raises(tf.errors.InvalidArgumentError, match="No OpKernel"):  # else compare with TF's kernel
        run_tf(ctc_v2(feeds), feeds)
    run = run_tf(ctc_v2_on_cpu(feeds), feeds, grads=True)
    meta, outs = export_meta(ctc_v2(feeds))
    assert outs[0].op.type == "CTCLossV2"
    f = jaxmeta.import_meta_graph(meta).function([o.name for o in outs], feeds=list(feeds))
    for jit in (False, True):
        fn = jax.jit(f) if jit else f
        for name, got, want in zip(["loss", "gradient"], fn({}, *feeds.values()), run.expected):
            assert_close(got, want, rtol=rtol, atol=atol, what=f"{name} (jit={jit})")

        def weighted(*values):
            return sum((o * w).sum() for o, w in zip(f({}, *values), run.grad_weights))

        grad = (jax.jit(jax.grad(weighted)) if jit else jax.grad(weighted))(*feeds.values())
        assert_close(grad, run.feed_grads["x:0"], rtol=rtol * 10, atol=atol * 10, what=f"d/dx (jit={jit})")


def test_ctc_loss_v2():
    # Labels 1..3 (0 is the blank): variable lengths, repeats, one step; [2, 2] cannot fit in 2 steps
    # (loss inf, gradient softmax).
    compare_ctc_v2(ctc_feeds([[1, 2], [3], [1, 2, 1], [2, 2], [3, 1, 3, 2], [1], [2, 2]],
                             [6, 5, 6, 3, 4, 1, 2], 6, 4, seed=60))
    compare_ctc_v2(ctc_feeds([[3, 3, 3], [5, 4, 2, 1, 1, 4]], [7, 7], 7, 6, seed=61))


def test_ctc_loss_v2_rejects_what_tf_rejects():
    # TF's (cuDNN) kernel takes only its default attributes.
    feeds = ctc_feeds([[1, 2], [3]], [4, 4], 4, 4, seed=62)
    meta, outs = export_meta(ctc_v2(feeds, ctc_merge_repeated=False))
    with pytest.raises(jaxmeta.GraphError, match=r"'CTCLossV2' \(CTCLossV2\): .*ctc_merge_repeated=True"):
        jaxmeta.import_meta_graph(meta).function([o.name for o in outs], feeds=list(feeds))({}, *feeds.values())
    # Labels: 0 is the blank, num_classes is out of range; the rest as CTCLoss.
    meta, outs = export_meta(ctc_v2(feeds))
    f = jaxmeta.import_meta_graph(meta).function([o.name for o in outs], feeds=list(feeds))
    for labels, lengths, what in [([[1, 0], [3]], [4, 4], r"outside \[1, num_classes\)"),
                                  ([[4], [3]], [4, 4], r"outside \[1, num_classes\)"),
                                  ([[1, 2], []], [4, 4], "label is empty"),
                                  ([[1, 2, 3], [1]], [2, 4], "longer than its sequence_length")]:
        bad = ctc_feeds(labels, lengths, 4, 4, seed=63)
        with pytest.raises(jaxmeta.GraphError, match=what):
            f({}, *bad.values())
        for out in jax.jit(f)({}, *bad.values()):  # under jit it cannot raise: all NaN
            assert np.isnan(np.asarray(out)).all()


# -- CTCBeamSearchDecoder -------------------------------------------------------------------------


def beam_logits(time, batch, classes, seed, *, ties=False, dtype=np.float32):
    """Peaked random logits (repeats and blanks matter); with `ties`, small integers: equal scores."""
    rng = np.random.default_rng(seed)
    if ties:
        return rng.integers(0, 2, (time, batch, classes)).astype(dtype)
    x = rng.standard_normal((time, batch, classes))
    x[np.arange(time)[:, None], np.arange(batch)[None, :], rng.integers(0, classes, (time, batch))] += 2.0
    return x.astype(dtype)


def case_beam(time, classes, lengths, seed, *, raw=True, ties=False, dtype=np.float32, **attrs):
    """One CTCBeamSearchDecoder case: tf.raw_ops with `attrs`, or the tf.compat.v1.nn API."""
    x, lengths = beam_logits(time, len(lengths), classes, seed, ties=ties, dtype=dtype), np.int32(lengths)
    feeds = {"x:0": x, "len:0": lengths}

    def build(tf):
        inputs, seq_len = ph(tf, "x", x), ph(tf, "len", lengths)
        if raw:
            out = tf.raw_ops.CTCBeamSearchDecoder(inputs=inputs, sequence_length=seq_len, **attrs)
            return [*out.decoded_indices, *out.decoded_values, *out.decoded_shape, out.log_probability]
        decoded, log_prob = tf.compat.v1.nn.ctc_beam_search_decoder(inputs, seq_len, **attrs)
        return [t for sp in decoded for t in (sp.indices, sp.values, sp.dense_shape)] + [log_prob]

    return case(build, feeds, rtol=1e-5, atol=1e-5, jit_modes=(False,))


def test_ctc_beam_search_decoder():
    cases = [
        case_beam(6, 4 + i % 2, [6, 3, 5][:2 + i % 2], seed=i, beam_width=beam, top_paths=top, merge_repeated=merge)
        for i, (beam, top, merge) in enumerate([(1, 1, True), (2, 2, False), (3, 1, True), (4, 3, False),
                                                (5, 3, True), (7, 2, True), (10, 3, False)])
    ]
    cases += [
        case_beam(7, 4, [7, 5, 2], seed=20, raw=False, beam_width=3, top_paths=2),  # merge_repeated=True
        case_beam(7, 4, [7, 6], seed=21, raw=False, beam_width=4, top_paths=3, merge_repeated=False),
        # More than 16 leaves: TF's std::sort partitions (introsort) before its insertion sort.
        case_beam(6, 6, [6, 6], seed=22, beam_width=24, top_paths=3, merge_repeated=False),
        case_beam(5, 3, [5, 0, -1], seed=23, beam_width=2, top_paths=1, merge_repeated=True),  # no steps when <= 0
    ]
    run_cases(cases)


def test_ctc_beam_search_decoder_ties_and_float64():
    # Equal logits give equal scores: the order of the paths is TF's TopN order (libstdc++ heaps, sort).
    run_cases([
        case_beam(5, 3, [5, 4], seed=30, ties=True, beam_width=4, top_paths=3, merge_repeated=False),
        case_beam(6, 4, [6, 6, 3], seed=31, ties=True, beam_width=20, top_paths=3, merge_repeated=True),
        case_beam(4, 4, [4, 2], seed=32, ties=True, beam_width=3, top_paths=2, merge_repeated=True),
        case_beam(6, 4, [6, 5], seed=33, dtype=np.float64, beam_width=4, top_paths=2, merge_repeated=False),
    ])


def test_ctc_beam_search_decoder_errors():
    tf_errors = pytest.importorskip("tensorflow").errors
    # An empty sequence leaves only the empty path in the beam: TF rejects top_paths=2.
    build, feeds, _ = case_beam(3, 4, [3, 0], seed=40, beam_width=3, top_paths=2)
    with pytest.raises(tf_errors.InvalidArgumentError):
        run_tf(build, feeds)
    good = dict(feeds, **{"len:0": np.int32([3, 3])})
    run = run_tf(build, good)
    f = run.graph.function(run.fetch_names, feeds=list(feeds))
    with pytest.raises(jaxmeta.GraphError, match="top_paths"):
        f({}, *feeds.values())
    # Traced inputs: the output size depends on them.
    with pytest.raises(jaxmeta.GraphError, match="jax.jit"):
        jax.jit(f)({}, *good.values())
    # top_paths > beam_width.
    build, feeds, _ = case_beam(3, 4, [3, 2], seed=41, beam_width=2, top_paths=3)
    with pytest.raises(tf_errors.InvalidArgumentError):
        run_tf(build, feeds)
    tf = get_tf()
    g = tf.Graph()
    with g.as_default():  # TF builds the graph and rejects it only when it runs
        build(tf)
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
    with pytest.raises(jaxmeta.GraphError, match="top_paths <= beam_width"):
        jaxmeta.import_meta_graph(meta).function(["CTCBeamSearchDecoder:0"], feeds=list(feeds))({}, *feeds.values())
