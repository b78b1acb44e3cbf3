"""Gradient ops (ReluGrad, Conv2DBackpropFilter, MaxPoolGrad, FusedBatchNormGrad, ...) against TF.

The ops are built with `tf.raw_ops` on placeholders, so only the op under test runs; forward
results some of them take (a pool's output, batch-norm reserve spaces) are computed by TF eagerly
and fed.
"""

from __future__ import annotations

import numpy as np
import pytest
from oracle import assert_close, case, compare_with_tf, export_meta, get_tf, run_cases, run_tf

pytestmark = pytest.mark.oracle

RNG = np.random.default_rng(0)


def randn(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


def placeholders(tf, feeds):
    return {k.split(":")[0]: tf.compat.v1.placeholder(tf.as_dtype(v.dtype), v.shape, name=k.split(":")[0])
            for k, v in feeds.items()}


def compare_unrunnable(build, feeds, expected, rtol=1e-4, atol=1e-4):
    """For graphs TF builds but cannot run on CPU (NCHW kernels): jaxmeta vs given results."""
    import jax

    import jaxmeta

    tf = get_tf()
    g = tf.Graph()
    with g.as_default():
        outs = build(tf)
        outs = outs if isinstance(outs, list) else [outs]
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
    f = jaxmeta.import_meta_graph(meta).function([o.name for o in outs], feeds=list(feeds))
    for fn in (f, jax.jit(f)):
        for got, want in zip(fn({}, *feeds.values()), expected):
            np.testing.assert_allclose(np.asarray(got), want, rtol=rtol, atol=atol)


# -- elementwise ----------------------------------------------------------------------------------

# op: (first input, second input, TF defines a gradient of the op)
ELEMENTWISE = {
    "ReluGrad": ("randn", "randn_with_zeros", True),
    "Relu6Grad": ("randn", "wide_with_edges", True),
    "EluGrad": ("randn", "elu_out", True),
    "SeluGrad": ("randn", "elu_out", True),
    "SoftplusGrad": ("randn", "wide", True),
    "SoftsignGrad": ("randn", "randn", False),
    "TanhGrad": ("tanh_out", "randn", True),
    "SigmoidGrad": ("sigmoid_out", "randn", True),
    "RsqrtGrad": ("positive", "randn", True),
    "SqrtGrad": ("positive", "randn", True),
    "ReciprocalGrad": ("randn", "randn", True),
    "InvGrad": ("randn", "randn", True),
}
SHAPES = [(5,), (2, 3, 4)]


def _values(kind, shape):
    x = randn(*shape)
    if kind == "randn_with_zeros":
        x.reshape(-1)[::3] = 0.0
    elif kind == "wide":
        x = x * 8
    elif kind == "wide_with_edges":
        x = x * 5
        x.reshape(-1)[::4] = 6.0
        x.reshape(-1)[1::4] = 0.0
    elif kind == "elu_out":
        x = np.where(x > 0, x, np.expm1(x)).astype(np.float32)
    elif kind == "tanh_out":
        x = np.tanh(x)
    elif kind == "sigmoid_out":
        x = (1 / (1 + np.exp(-x))).astype(np.float32)
    elif kind == "positive":
        x = np.abs(x) + 0.5
    return x.astype(np.float32)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("op", list(ELEMENTWISE))
def test_elementwise_grad(op, shape):
    first, second, has_grad = ELEMENTWISE[op]
    feeds = {"a:0": _values(first, shape), "b:0": _values(second, shape)}
    get_tf()  # the op's signature comes from TF's registry: skipped without TensorFlow
    from tensorflow.python.framework import op_def_registry

    arg_names = [a.name for a in op_def_registry.get(op).input_arg]

    def build(tf):
        ph = placeholders(tf, feeds)
        return getattr(tf.raw_ops, op)(**{arg_names[0]: ph["a"], arg_names[1]: ph["b"]})

    compare_with_tf(build, feeds, grads=has_grad, rtol=1e-5, atol=1e-5)


EDGES = np.array([0.0, -0.0, 1.0, -1.0, 0.5, -2.5, 6.0, 7.5, 1e-30, 1e30, -1e30, np.inf, -np.inf, np.nan],
                 np.float32)


def test_elementwise_grad_edges():
    """Every pair of edge values through every op: TF's rules for them hold, e.g. ReluGrad keeps a
    NaN gradient at a unit that is off NaN (TF multiplies by the mask), SqrtGrad, RsqrtGrad and
    ReciprocalGrad are 0 wherever dy is 0 (even at y = 0 or inf)."""
    feeds = {"a:0": np.repeat(EDGES, EDGES.size), "b:0": np.tile(EDGES, EDGES.size)}
    get_tf()
    from tensorflow.python.framework import op_def_registry

    def build(tf):
        ph = placeholders(tf, feeds)
        outs = []
        for op in ELEMENTWISE:
            first, second = (a.name for a in op_def_registry.get(op).input_arg)
            outs.append(getattr(tf.raw_ops, op)(**{first: ph["a"], second: ph["b"]}))
        return outs

    compare_with_tf(build, feeds, rtol=1e-5, atol=0)


def test_elementwise_grad_complex():
    """TF's Python gradients conjugate y before TanhGrad and SigmoidGrad, whose kernels then do
    not; SqrtGrad, RsqrtGrad and ReciprocalGrad conjugate it themselves."""
    ops = ["TanhGrad", "SigmoidGrad", "SqrtGrad", "RsqrtGrad", "ReciprocalGrad"]
    feeds = {"y:0": (randn(6) + 1j * randn(6)).astype(np.complex64), "dy:0": (randn(6) + 1j * randn(6)).astype(np.complex64)}

    def build(tf):
        ph = placeholders(tf, feeds)
        return [getattr(tf.raw_ops, op)(y=ph["y"], dy=ph["dy"]) for op in ops]

    compare_with_tf(build, feeds, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("alpha", [0.2, 0.01, 1.5])
def test_leaky_relu_grad(alpha):
    feeds = {"a:0": randn(3, 4), "b:0": _values("randn_with_zeros", (3, 4))}

    def build(tf):
        ph = placeholders(tf, feeds)
        return tf.raw_ops.LeakyReluGrad(gradients=ph["a"], features=ph["b"], alpha=alpha)

    compare_with_tf(build, feeds, grads=True)


# -- bias -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,data_format", [
    ((4, 3), "NHWC"), ((2, 3, 4), "NHWC"), ((2, 3, 4), "NCHW"),
    ((2, 3, 4, 5), "NHWC"), ((2, 3, 4, 5), "NCHW"), ((2, 3, 2, 2, 2), "NCHW"),
    ((8, 24, 24, 5), "NHWC"),  # >= 4096 rows: a matrix product (`channel_sum`)
], ids=str)
def test_bias_add_grad(shape, data_format):
    feeds = {"g:0": randn(*shape)}

    def build(tf):
        ph = placeholders(tf, feeds)
        # (BiasAddGradV1, the same as NHWC BiasAddGrad, is no longer in TF's binary to compare with.)
        return tf.raw_ops.BiasAddGrad(out_backprop=ph["g"], data_format=data_format)

    compare_with_tf(build, feeds, grads=True, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int16", "int32"])
def test_bias_add_grad_integers(dtype):
    """Sums in the gradient's own type, wrapping as TF's do (jnp.sum would widen int8 to int32)."""
    feeds = {"g:0": np.full((3, 4, 2), 100, dtype)}
    feeds["g:0"][0, 0, 1] = 7

    def build(tf):
        ph = placeholders(tf, feeds)
        return tf.raw_ops.BiasAddGrad(out_backprop=ph["g"])

    compare_with_tf(build, feeds)


# -- convolutions ---------------------------------------------------------------------------------

CONV2D = [
    # input shape (NHWC), filter shape, strides, padding, dilations
    ((2, 6, 6, 3), (3, 3, 3, 4), (1, 1), "SAME", (1, 1)),
    ((2, 6, 6, 3), (3, 3, 3, 4), (1, 1), "VALID", (1, 1)),
    ((1, 7, 8, 2), (3, 2, 2, 3), (2, 2), "SAME", (1, 1)),
    ((1, 7, 8, 2), (3, 2, 2, 3), (2, 3), "VALID", (1, 1)),
    ((1, 7, 7, 2), (3, 3, 2, 2), (1, 1), "SAME", (2, 2)),
    ((1, 6, 6, 2), (2, 2, 2, 3), (1, 1), [(0, 0), (1, 2), (0, 1), (0, 0)], (1, 1)),
    # 1x1 kernels run as one matrix product (ops/nn.py `convolve`), padded ones as convolutions
    ((2, 5, 6, 4), (1, 1, 4, 3), (1, 1), "SAME", (1, 1)),
    ((2, 7, 5, 4), (1, 1, 4, 3), (2, 3), "VALID", (1, 1)),
    ((1, 7, 7, 3), (1, 1, 3, 2), (2, 2), "SAME", (1, 1)),
    ((1, 5, 5, 3), (1, 1, 3, 2), (1, 1), [(0, 0), (1, 0), (0, 2), (0, 0)], (1, 1)),
    # kernel taps that only meet padding (a small map) are dropped
    ((2, 1, 1, 8), (3, 3, 8, 4), (1, 1), "SAME", (1, 1)),
    ((1, 2, 3, 8), (3, 5, 8, 4), (2, 2), "SAME", (1, 1)),
    # window x in channels > 32, few output positions: gradients as matrix products (`convolve`)
    ((2, 6, 6, 5), (3, 3, 5, 4), (1, 1), "SAME", (1, 1)),
    ((1, 3, 3, 16), (3, 3, 16, 4), (1, 1), "SAME", (1, 1)),
    ((1, 7, 8, 6), (3, 3, 6, 3), (2, 2), "VALID", (1, 1)),
    ((1, 5, 5, 8), (3, 3, 8, 2), (1, 1), "SAME", (2, 2)),
    ((1, 4, 3, 12), (2, 2, 12, 3), (1, 1), [(0, 0), (1, 2), (0, 1), (0, 0)], (1, 1)),
]


def _nhwc_to(shape_or_list, data_format):
    if data_format == "NHWC":
        return list(shape_or_list)
    a = list(shape_or_list)
    return [a[0], a[-1], *a[1:-1]]


def _conv_out(tf, x, w, strides, padding, dilations, data_format="NHWC"):
    return tf.nn.conv2d(x, w, [1, *strides, 1], padding, dilations=[1, *dilations, 1]).numpy()


@pytest.mark.parametrize("data_format", ["NHWC", "NCHW"])
@pytest.mark.parametrize("case", CONV2D, ids=str)
def test_conv2d_backprop_filter(case, data_format):
    tf = get_tf()
    in_shape, f_shape, strides, padding, dilations = case
    x = randn(*in_shape)
    dy_shape = _conv_out(tf, x, randn(*f_shape), strides, padding, dilations).shape
    dy = randn(*dy_shape)
    if data_format == "NCHW":
        x, dy = x.transpose(0, 3, 1, 2), dy.transpose(0, 3, 1, 2)
    feeds = {"x:0": x, "dy:0": dy}
    explicit = []
    if isinstance(padding, list):
        explicit = [p for pair in _nhwc_to(padding, data_format) for p in pair]
        padding = "EXPLICIT"

    def build(tf):
        ph = placeholders(tf, feeds)
        return tf.raw_ops.Conv2DBackpropFilter(
            input=ph["x"], filter_sizes=tf.constant(f_shape), out_backprop=ph["dy"],
            strides=_nhwc_to([1, *strides, 1], data_format), padding=padding, explicit_paddings=explicit,
            data_format=data_format, dilations=_nhwc_to([1, *dilations, 1], data_format))

    if data_format == "NHWC":
        compare_with_tf(build, feeds, grads=True, rtol=1e-4, atol=1e-4)
    else:  # TF's CPU kernel is NHWC-only: check against its NHWC result
        want = tf.raw_ops.Conv2DBackpropFilter(
            input=x.transpose(0, 2, 3, 1), filter_sizes=f_shape, out_backprop=dy.transpose(0, 2, 3, 1),
            strides=[1, *strides, 1], padding=padding,
            explicit_paddings=[p for pair in case[3] for p in pair] if padding == "EXPLICIT" else [],
            dilations=[1, *dilations, 1]).numpy()
        compare_unrunnable(build, feeds, [want])


@pytest.mark.parametrize("case", [
    ((2, 6, 7, 8), (3, 3, 2, 8), (1, 1), "SAME"),  # 4 groups
    ((1, 9, 9, 6), (3, 3, 1, 12), (2, 2), "VALID"),  # one group per channel (Keras ConvNeXt's depthwise)
    ((1, 5, 5, 12), (1, 1, 4, 6), (1, 1), "SAME"),  # 3 groups, 1x1 (RegNet's group convolutions)
], ids=str)
def test_grouped_conv2d_backprop_filter(case):
    """Grouped convolutions (Keras's `Conv2D(groups=...)`): the filter's input channels are the
    input's over the groups, in the forward op and in its filter gradient."""
    in_shape, f_shape, strides, padding = case
    feeds = {"x:0": randn(*in_shape)}
    tf = get_tf()
    dy_shape = tf.nn.conv2d(feeds["x:0"], randn(*f_shape), [1, *strides, 1], padding).shape
    feeds["dy:0"] = randn(*dy_shape)

    def build(tf):
        ph = placeholders(tf, feeds)
        return [tf.raw_ops.Conv2DBackpropFilter(input=ph["x"], filter_sizes=tf.constant(f_shape), out_backprop=ph["dy"],
                                                strides=[1, *strides, 1], padding=padding),
                tf.nn.conv2d(ph["x"], tf.constant(randn(*f_shape)), [1, *strides, 1], padding)]

    compare_with_tf(build, feeds, grads=True, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", [
    ((1, 4, 5, 5, 2), (2, 3, 3, 2, 3), (1, 1, 1), "SAME", (1, 1, 1)),
    ((2, 5, 4, 4, 1), (3, 2, 2, 1, 2), (2, 1, 2), "VALID", (1, 1, 1)),
    ((1, 5, 5, 5, 1), (2, 2, 2, 1, 1), (1, 1, 1), "SAME", (2, 1, 2)),
], ids=str)
def test_conv3d_backprop_filter(case):
    tf = get_tf()
    in_shape, f_shape, strides, padding, dilations = case
    x = randn(*in_shape)
    w = randn(*f_shape)
    dy = randn(*tf.nn.conv3d(x, w, [1, *strides, 1], padding, dilations=[1, *dilations, 1]).shape)
    feeds = {"x:0": x, "dy:0": dy}

    def build(tf):
        ph = placeholders(tf, feeds)
        kw = dict(input=ph["x"], out_backprop=ph["dy"], strides=[1, *strides, 1], padding=padding)
        return tf.raw_ops.Conv3DBackpropFilterV2(filter_sizes=tf.constant(f_shape), **kw,
                                                 dilations=[1, *dilations, 1])

    compare_with_tf(build, feeds, grads=True, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", [
    ((2, 6, 6, 3), (3, 3, 3, 2), (1, 1), "SAME", (1, 1)),
    ((1, 7, 7, 2), (2, 3, 2, 1), (2, 2), "VALID", (1, 1)),
    ((1, 5, 5, 2), (2, 2, 2, 1), (1, 1), [(0, 0), (1, 0), (2, 1), (0, 0)], (1, 1)),
], ids=str)
def test_depthwise_backprop_filter(case):
    # No dilated case: TF's kernel ignores `dilations` here (its forward op honors them), while
    # jaxmeta returns the true gradient of the dilated forward op.
    tf = get_tf()
    in_shape, f_shape, strides, padding, dilations = case
    x = randn(*in_shape)
    explicit = []
    if isinstance(padding, list):
        explicit = [p for pair in padding for p in pair]
        x_padded = np.pad(x, padding)
        out = tf.raw_ops.DepthwiseConv2dNative(input=x_padded, filter=randn(*f_shape), strides=[1, *strides, 1],
                                               padding="VALID")
        padding = "EXPLICIT"
    else:
        out = tf.raw_ops.DepthwiseConv2dNative(input=x, filter=randn(*f_shape), strides=[1, *strides, 1],
                                               padding=padding, dilations=[1, *dilations, 1])
    feeds = {"x:0": x, "dy:0": randn(*out.shape)}

    def build(tf):
        ph = placeholders(tf, feeds)
        return tf.raw_ops.DepthwiseConv2dNativeBackpropFilter(
            input=ph["x"], filter_sizes=tf.constant(f_shape), out_backprop=ph["dy"], strides=[1, *strides, 1],
            padding=padding, explicit_paddings=explicit, dilations=[1, *dilations, 1])

    compare_with_tf(build, feeds, grads=True, rtol=1e-4, atol=1e-4)


# -- Conv (TF's generic convolution) and the V2 backprops that take tensors for shapes -------------


def _compare_with_reference(build, reference, feeds, rtol=1e-4, atol=1e-4):
    """jaxmeta's `build(tf)`, one op that TF builds but does not run or differentiate, against
    `reference(tf)`, the same computation from ops TF runs and differentiates: the value, and the
    gradient of sum(weights * output) w.r.t. the float feeds the reference uses, with and without
    jit."""
    import jax
    import jax.numpy as jnp

    import jaxmeta

    ref = run_tf(reference, feeds, grads=True)
    meta, out = export_meta(build)
    f = jaxmeta.import_meta_graph(meta).function([out.name], feeds=list(feeds))
    wrt = list(ref.feed_grads)
    argnums = [list(feeds).index(k) for k in wrt]

    def loss(*values):
        return jnp.sum(f({}, *values)[0] * ref.grad_weights[0])

    for jit in (False, True):
        fn, grad = (jax.jit(f), jax.jit(jax.grad(loss, argnums))) if jit else (f, jax.grad(loss, argnums))
        assert_close(fn({}, *feeds.values())[0], ref.expected[0], rtol=rtol, atol=atol, what=f"value (jit={jit})")
        for k, g in zip(wrt, grad(*feeds.values())):
            assert_close(g, ref.feed_grads[k], rtol=rtol, atol=atol, what=f"d/d{k} (jit={jit})")


def _to_channels_last(tf, x, axis):
    """`x` with its axis `axis` (channels) moved last."""
    perm = [i for i in range(x.shape.rank) if i != axis] + [axis]
    return tf.transpose(x, perm)


def _from_channels_last(tf, x, axis):
    """`x` with its last axis (channels) moved to `axis`."""
    r = x.shape.rank
    return tf.transpose(x, [*range(axis), r - 1, *range(axis, r - 1)])


def _dilated(tf, w, dilations):
    """The filter `w` with `d - 1` zeros between its taps along each spatial axis dilated by `d`."""
    for axis, d in enumerate(dilations):
        if d > 1:
            k = w.shape[axis]
            w = tf.stack([w] + [tf.zeros_like(w)] * (d - 1), axis=axis + 1)
            shape = w.shape.as_list()
            w = tf.reshape(w, [*shape[:axis], k * d, *shape[axis + 2:]])
            w = w[(slice(None),) * axis + (slice(0, (k - 1) * d + 1),)]
    return w


# input shape (channels last, batch dimensions first), filter shape, strides, padding (EXPLICIT:
# the spatial (before, after) pairs), dilations, batch_dims, groups
CONV = [
    ((2, 6, 6, 3), (3, 3, 3, 4), (1, 1), "SAME", (1, 1), 1, 1),
    ((2, 7, 8, 2), (3, 2, 2, 3), (2, 3), "VALID", (1, 1), 1, 1),
    ((1, 7, 7, 2), (3, 3, 2, 2), (1, 1), "SAME", (2, 2), 1, 1),
    ((1, 8, 7, 2), (3, 2, 2, 3), (2, 1), "SAME", (2, 3), 1, 1),
    ((1, 6, 6, 2), (2, 2, 2, 3), (1, 1), [(1, 2), (0, 1)], (1, 1), 1, 1),
    ((1, 7, 6, 2), (3, 2, 2, 3), (2, 2), [(0, 2), (3, 1)], (2, 1), 1, 1),
    ((2, 5, 6, 4), (1, 1, 4, 3), (1, 1), "SAME", (1, 1), 1, 1),  # 1x1: one matrix product (`convolve`)
    ((2, 1, 1, 8), (3, 3, 8, 4), (1, 1), "SAME", (1, 1), 1, 1),  # taps that meet only padding
    ((1, 5, 5, 8), (3, 3, 8, 2), (1, 1), "SAME", (2, 2), 1, 1),  # few positions: matrix-product gradients
    ((2, 3, 6, 5, 2), (3, 3, 2, 4), (1, 2), "SAME", (1, 1), 2, 1),  # batch dimensions, flattened
    ((2, 2, 3, 5, 5, 2), (2, 3, 2, 3), (1, 1), [(1, 0), (0, 2)], (1, 1), 3, 1),
    ((6, 5, 2), (3, 3, 2, 4), (1, 1), "SAME", (1, 1), 0, 1),  # no batch dimension
    ((2, 6, 7, 8), (3, 3, 2, 8), (1, 1), "SAME", (1, 1), 1, 4),  # groups (TF's kernels refuse them)
    ((1, 9, 9, 6), (3, 3, 1, 12), (2, 2), "VALID", (1, 1), 1, 6),
    ((1, 4, 5, 5, 2), (2, 3, 3, 2, 3), (1, 1, 1), "SAME", (1, 1, 1), 1, 1),  # 3-D
    ((2, 5, 4, 6, 1), (3, 2, 2, 1, 2), (2, 1, 2), "VALID", (1, 1, 1), 1, 1),
    ((1, 6, 5, 6, 2), (2, 2, 2, 2, 2), (1, 1, 1), "SAME", (2, 1, 2), 1, 1),  # (TF's CPU: no 3-D dilations)
    ((2, 2, 4, 4, 4, 2), (2, 2, 2, 2, 3), (1, 2, 1), "SAME", (1, 1, 1), 2, 1),
    ((1, 4, 4, 5, 4), (2, 2, 2, 2, 4), (1, 1, 1), "VALID", (1, 1, 1), 1, 2),
]


@pytest.mark.parametrize("data_format", ["CHANNELS_LAST", "CHANNELS_FIRST"])
@pytest.mark.parametrize("case", CONV, ids=str)
def test_conv(case, data_format):
    """Conv against TF's Conv where TF's CPU kernel runs it (CHANNELS_LAST, one group, 2-D or
    undilated), and everywhere against Conv2D/Conv3D over the flattened batch (the filter dilated
    with zeros, each group on its own), which also gives the gradients (TF defines none for Conv)."""
    in_shape, f_shape, strides, padding, dilations, batch_dims, groups = case
    cf = data_format == "CHANNELS_FIRST"
    x = randn(*in_shape)
    feeds = {"x:0": np.moveaxis(x, -1, batch_dims) if cf else x, "w:0": randn(*f_shape)}
    explicit = []
    if isinstance(padding, list):
        pairs = [(0, 0), (0, 0), *padding] if cf else [(0, 0), *padding, (0, 0)]
        explicit = [p for pair in pairs for p in pair]

    def full(spatial):
        return [1, 1, *spatial] if cf else [1, *spatial, 1]

    def build(tf):
        p = placeholders(tf, feeds)
        return tf.raw_ops.Conv(input=p["x"], filter=p["w"], strides=full(strides), dilations=full(dilations),
                               padding="EXPLICIT" if explicit else padding, explicit_paddings=explicit,
                               data_format=data_format, batch_dims=batch_dims, groups=groups)

    def reference(tf):
        p = placeholders(tf, feeds)
        x = _to_channels_last(tf, p["x"], batch_dims) if cf else p["x"]
        batch = x.shape.as_list()[:batch_dims]
        x = tf.reshape(x, [int(np.prod(batch)), *x.shape.as_list()[batch_dims:]])
        w = _dilated(tf, p["w"], dilations)
        conv = tf.nn.conv2d if len(strides) == 2 else tf.nn.conv3d
        pads = [(0, 0), *padding, (0, 0)] if explicit else padding
        y = tf.concat([conv(xg, wg, [1, *strides, 1], pads)
                       for xg, wg in zip(tf.split(x, groups, axis=-1), tf.split(w, groups, axis=-1))], axis=-1)
        y = tf.reshape(y, [*batch, *y.shape.as_list()[1:]])
        return _from_channels_last(tf, y, batch_dims) if cf else y

    if not cf and groups == 1 and (len(strides) == 2 or dilations == (1,) * 3):
        compare_with_tf(build, feeds, rtol=1e-4, atol=1e-4)
    _compare_with_reference(build, reference, feeds)


@pytest.mark.parametrize("dtype", ["float64", "float16", "bfloat16", "int32"])
def test_conv_dtypes(dtype):
    tf = get_tf()
    x, w = randn(2, 5, 6, 3), randn(3, 2, 3, 4)
    x3, w3 = randn(1, 3, 4, 5, 2), randn(2, 2, 3, 2, 3)
    if dtype == "int32":
        x, w, x3, w3 = (np.round(a * 3) for a in (x, w, x3, w3))
    feeds = {k: tf.cast(v, dtype).numpy() for k, v in {"x:0": x, "w:0": w, "x3:0": x3, "w3:0": w3}.items()}

    def build(tf):
        p = placeholders(tf, feeds)
        return [tf.raw_ops.Conv(input=p["x"], filter=p["w"], strides=[1, 2, 1, 1], padding="SAME"),
                tf.raw_ops.Conv(input=p["x"], filter=p["w"], strides=[1, 1, 1, 1], padding="EXPLICIT",
                                explicit_paddings=[0, 0, 1, 0, 2, 1, 0, 0], dilations=[1, 1, 2, 1]),
                tf.raw_ops.Conv(input=p["x3"], filter=p["w3"], strides=[1, 1, 1, 2, 1], padding="VALID")]

    tol = {"float16": 1e-2, "bfloat16": 5e-2}.get(dtype, 1e-5)
    compare_with_tf(build, feeds, rtol=tol, atol=tol)


@pytest.mark.parametrize("x_shape,batch_dims,pads", [
    ((2, 0, 5, 5, 2), 2, None),
    ((0, 5, 2), 0, None),
    ((2, 3, 0, 5, 2), 2, None),
    ((0, 4, 4, 2), 1, None),
    ((2, 1, 0, 3, 2), 2, [(2, 2), (1, 1)]),  # an empty input whose padding makes a nonempty output
], ids=str)
def test_conv_empty(x_shape, batch_dims, pads):
    """TF's kernel returns an empty output (and the zeros an empty input's padding makes) with its
    batch dimensions flattened into one, whatever its shape function says: jaxmeta does too."""
    feeds = {"x:0": np.zeros(x_shape, np.float32)}
    explicit = [p for pair in [(0, 0), *pads, (0, 0)] for p in pair] if pads else []

    def build(tf):
        return tf.raw_ops.Conv(input=placeholders(tf, feeds)["x"], filter=tf.constant(randn(3, 3, 2, 3)),
                               strides=[1, 1, 1, 1], padding="EXPLICIT" if pads else "SAME",
                               explicit_paddings=explicit, batch_dims=batch_dims)

    run = compare_with_tf(build, feeds)
    assert len(run.expected[0].shape) == 4  # flattened


def _edit_attr(meta, op_type, name, value):
    """Sets attribute `name` of the graph's `op_type` node (to an int, string or list of ints)."""
    node = next(n for n in meta.graph_def.node if n.op == op_type)
    if isinstance(value, str):
        node.attr[name].s = value.encode()
    elif isinstance(value, int):
        node.attr[name].i = value
    else:
        node.attr[name].list.Clear()
        node.attr[name].list.i.extend(value)


@pytest.mark.parametrize("x_shape,w_shape,attrs,match", [
    ((1, 5, 5, 4), (3, 3, 2, 3), {}, "does not fit an input of 4 channels in 1 group"),
    ((1, 5, 5, 4), (3, 3, 2, 3), dict(groups=2), "output channels a multiple"),
    ((1, 5, 5, 4), (3, 3, 4, 3), dict(data_format="NHWC"), "data_format 'NHWC'"),
    ((1, 5, 4), (3, 4, 3), dict(strides=[1, 1, 1]), "4 or 5 entries"),
    ((1, 5, 5, 4), (3, 3, 4, 3), dict(dilations=[1, 2, 1]), "dilations"),
    ((1, 4, 5, 5, 4), (2, 3, 3, 4, 3), dict(padding="EXPLICIT", explicit_paddings=[0] * 10), "3-D convolution"),
    ((1, 5, 5, 4), (3, 3, 4, 3), dict(padding="EXPLICIT", explicit_paddings=[1, 0, 1, 1, 1, 1, 0, 0]),
     "zero in the batch"),
    ((1, 5, 5, 4), (3, 3, 4, 3), dict(padding="EXPLICIT", explicit_paddings=[0, 0, 1, 1]), "8"),
    ((1, 5, 5, 4), (3, 3, 4, 3), dict(batch_dims=2), "ranks 5 and 4"),
])
def test_conv_errors(x_shape, w_shape, attrs, match):
    """Conv nodes jaxmeta cannot run as TF would (most of them TF cannot build or run either: the
    attributes are set on the exported graph) fail with a GraphError naming the problem."""
    import jaxmeta

    feeds = {"x:0": randn(*x_shape), "w:0": randn(*w_shape)}
    rank = len(w_shape)

    def build(tf):  # shapes left unknown: TF's shape function does not check them
        x, w = (tf.compat.v1.placeholder(tf.float32, None, name=k) for k in ("x", "w"))
        return tf.raw_ops.Conv(input=x, filter=w, strides=[1] * rank, padding="VALID")

    meta, out = export_meta(build)
    for name, value in attrs.items():
        _edit_attr(meta, "Conv", name, value)
    with pytest.raises(jaxmeta.GraphError, match=match):
        jaxmeta.import_meta_graph(meta).function(out.name, feeds=list(feeds))({}, *feeds.values())


@pytest.mark.parametrize("data_format", ["NHWC", "NCHW"])
@pytest.mark.parametrize("case", CONV2D + [((2, 6, 7, 8), (3, 3, 2, 8), (1, 1), "SAME", (1, 1))], ids=str)
def test_conv2d_backprops_v2(case, data_format):
    """Conv2DBackpropFilterV2 and Conv2DBackpropInputV2 (the filter, resp. the input, in place of
    its shape), for which TF has no CPU kernel and no gradient: against Conv2DBackpropFilter and
    Conv2DBackpropInput on the NHWC tensors, with their gradients. The last case is grouped."""
    tf = get_tf()
    in_shape, f_shape, strides, padding, dilations = case
    x, w = randn(*in_shape), randn(*f_shape)
    dy = randn(*_conv_out(tf, x, w, strides, padding, dilations).shape)
    nchw = data_format == "NCHW"
    feeds = {"x:0": x, "w:0": w, "dy:0": dy}
    if nchw:
        feeds.update({"x:0": x.transpose(0, 3, 1, 2), "dy:0": dy.transpose(0, 3, 1, 2)})
    explicit = [p for pair in padding for p in pair] if isinstance(padding, list) else []
    attrs = dict(strides=[1, *strides, 1], padding="EXPLICIT" if explicit else padding, explicit_paddings=explicit,
                 dilations=[1, *dilations, 1])

    def nchw_attrs():
        def to(a):
            return _nhwc_to(a, "NCHW")
        pairs = _nhwc_to(padding, "NCHW") if explicit else []
        return dict(attrs, strides=to(attrs["strides"]), dilations=to(attrs["dilations"]), data_format="NCHW",
                    explicit_paddings=[p for pair in pairs for p in pair])

    for kind in ("Filter", "Input"):
        def build(tf, kind=kind):
            p = placeholders(tf, feeds)
            op = getattr(tf.raw_ops, f"Conv2DBackprop{kind}V2")
            return op(input=p["x"], filter=p["w"], out_backprop=p["dy"], **(nchw_attrs() if nchw else attrs))

        def reference(tf, kind=kind):
            p = placeholders(tf, feeds)
            x, dy = (_to_channels_last(tf, p[k], 1) for k in ("x", "dy")) if nchw else (p["x"], p["dy"])
            if kind == "Filter":
                return tf.raw_ops.Conv2DBackpropFilter(input=x, filter_sizes=f_shape, out_backprop=dy, **attrs)
            out = tf.raw_ops.Conv2DBackpropInput(input_sizes=in_shape, filter=p["w"], out_backprop=dy, **attrs)
            return _from_channels_last(tf, out, 1) if nchw else out

        _compare_with_reference(build, reference, feeds)


# -- pooling --------------------------------------------------------------------------------------

POOL2D = [
    # input shape (NHWC), ksize, strides, padding
    ((2, 6, 6, 3), (2, 2), (2, 2), "VALID"),
    ((2, 6, 6, 3), (3, 3), (2, 2), "SAME"),
    ((1, 7, 5, 2), (3, 2), (1, 1), "SAME"),
    ((1, 7, 5, 2), (3, 3), (2, 1), "VALID"),
    ((1, 5, 5, 1), (3, 3), (1, 1), "SAME"),
]


# Windows that tile the input (strides == ksize, no padding): MaxPoolGrad's scatter-free path.
# (POOL2D's first case is one too.) The last case has SAME padding that does not divide evenly, so it takes the general path.
MAX_POOL_TILED = [
    ((2, 6, 6, 3), (2, 2), (2, 2), "SAME"),
    ((2, 7, 5, 3), (2, 2), (2, 2), "VALID"),  # the last row and column get no gradient
    ((1, 6, 9, 2), (3, 3), (3, 3), "SAME"),
    ((1, 6, 4, 2), (3, 1), (3, 1), "VALID"),
    ((2, 4, 4, 2), (1, 1), (1, 1), "SAME"),
    ((1, 7, 5, 2), (2, 2), (2, 2), "SAME"),
]


def _pool_input(shape, ties):
    if ties:  # many equal maxima: the gradient must go to the first one in each window
        return RNG.integers(0, 3, shape).astype(np.float32)
    return randn(*shape)


@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("case", POOL2D + MAX_POOL_TILED, ids=str)
def test_max_pool_grad(case, ties):
    tf = get_tf()
    shape, ksize, strides, padding = case
    x = _pool_input(shape, ties)
    k, s = [1, *ksize, 1], [1, *strides, 1]
    y = tf.nn.max_pool2d(x, k, s, padding).numpy()
    feeds = {"x:0": x, "y:0": y, "dy:0": randn(*y.shape), "ddx:0": randn(*shape)}

    def build(tf):
        ph = placeholders(tf, feeds)
        return [
            tf.raw_ops.MaxPoolGrad(orig_input=ph["x"], orig_output=ph["y"], grad=ph["dy"], ksize=k, strides=s,
                                   padding=padding),
            tf.raw_ops.MaxPoolGradV2(orig_input=ph["x"], orig_output=ph["y"], grad=ph["dy"], ksize=tf.constant(k),
                                     strides=tf.constant(s), padding=padding),
            tf.raw_ops.MaxPoolGradGrad(orig_input=ph["x"], orig_output=ph["y"], grad=ph["ddx"], ksize=k,
                                       strides=s, padding=padding),
            tf.stop_gradient(  # TF defines no gradient for it
                tf.raw_ops.MaxPoolGradGradV2(orig_input=ph["x"], orig_output=ph["y"], grad=ph["ddx"],
                                             ksize=tf.constant(k), strides=tf.constant(s), padding=padding)),
        ]

    compare_with_tf(build, feeds, grads=not ties)


@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("case", [((2, 6, 6, 3), (3, 3), (2, 2), "SAME"), *MAX_POOL_TILED], ids=str)
def test_max_pool_grad_nchw_layout_attrs(case, ties):
    """NCHW MaxPoolGrad has no CPU kernel in TF; check it equals the transposed NHWC result."""
    import jax.numpy as jnp

    from jaxmeta.ops import registry

    shape, ksize, strides, padding = case
    k, s = [1, *ksize, 1], [1, *strides, 1]

    class FakeNode:
        name, type = "mpg", "MaxPoolGrad"

        def attr_ints(self, name, default=None):
            nchw = {"ksize": [1, 1, *ksize], "strides": [1, 1, *strides], "explicit_paddings": []}
            return nchw[name]

        def attr_str(self, name, default=None):
            return {"data_format": "NCHW", "padding": padding}[name]

    tf = get_tf()
    x = _pool_input(shape, ties)
    y = tf.nn.max_pool2d(x, k, s, padding).numpy()
    dy = randn(*y.shape)
    want = tf.raw_ops.MaxPoolGrad(orig_input=x, orig_output=y, grad=dy, ksize=k, strides=s,
                                  padding=padding).numpy()
    fn = registry.lookup("MaxPoolGrad").build(FakeNode())
    got = fn(jnp.asarray(x.transpose(0, 3, 1, 2)), None, jnp.asarray(dy.transpose(0, 3, 1, 2)))
    np.testing.assert_allclose(np.asarray(got).transpose(0, 2, 3, 1), want, rtol=1e-6)


@pytest.mark.parametrize("case", POOL2D, ids=str)
def test_avg_pool_grad(case):
    tf = get_tf()
    shape, ksize, strides, padding = case
    k, s = [1, *ksize, 1], [1, *strides, 1]
    y = tf.nn.avg_pool2d(randn(*shape), k, s, padding)
    feeds = {"dy:0": randn(*y.shape)}

    def build(tf):
        ph = placeholders(tf, feeds)
        return tf.raw_ops.AvgPoolGrad(orig_input_shape=tf.constant(shape), grad=ph["dy"], ksize=k, strides=s,
                                      padding=padding)

    compare_with_tf(build, feeds, grads=True)


def test_avg_pool_grad_divides_by_a_numpy_count():
    """No pool of ones in the program: XLA constant-folded it at compile time (over a second per
    3x3 pool of Inception-v3's training step)."""
    import jax
    import jax.numpy as jnp

    from jaxmeta.ops import nn_grad

    def pool(v):
        return nn_grad._avg_pool(v, (1, 3, 3, 1), (1, 1, 1, 1), "SAME")

    text = str(jax.make_jaxpr(pool)(jnp.zeros((2, 9, 9, 4))))
    assert "reduce_window" not in text and text.count("= pad[") == 1  # the input's padding only


POOL3D = [
    ((1, 4, 4, 4, 2), (2, 2, 2), (2, 2, 2), "VALID"),
    ((2, 5, 4, 3, 1), (3, 2, 2), (1, 2, 1), "SAME"),
]


@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize("case", POOL3D, ids=str)
def test_pool3d_grads(case, ties):
    tf = get_tf()
    shape, ksize, strides, padding = case
    k, s = [1, *ksize, 1], [1, *strides, 1]
    x = _pool_input(shape, ties)
    y = tf.nn.max_pool3d(x, k, s, padding).numpy()
    feeds = {"x:0": x, "y:0": y, "dy:0": randn(*y.shape), "ddx:0": randn(*shape)}

    def build(tf):
        ph = placeholders(tf, feeds)
        return [
            tf.raw_ops.MaxPool3DGrad(orig_input=ph["x"], orig_output=ph["y"], grad=ph["dy"], ksize=k, strides=s,
                                     padding=padding),
            tf.raw_ops.MaxPool3DGradGrad(orig_input=ph["x"], orig_output=ph["y"], grad=ph["ddx"], ksize=k,
                                         strides=s, padding=padding),
            tf.raw_ops.AvgPool3DGrad(orig_input_shape=tf.constant(shape), grad=ph["dy"], ksize=k, strides=s,
                                     padding=padding),
        ]

    compare_with_tf(build, feeds, grads=not ties)


# MaxPoolWithArgmax's gradients; the inputs are continuous random values, so no window has tied maxima.
ARGMAX_POOLS = [
    # input shape (NHWC), ksize, strides, padding
    ((2, 6, 6, 3), (2, 2), (2, 2), "VALID"),
    ((2, 5, 7, 2), (3, 3), (2, 2), "SAME"),
    ((1, 7, 5, 2), (3, 2), (1, 2), "SAME"),
    ((2, 7, 6, 1), (2, 3), (2, 1), "VALID"),
]


def case_max_pool_grad_with_argmax(shape, ksize, strides, padding, with_batch):
    # int64 argmax: TF's CPU kernel of MaxPoolGradWithArgmax has no other (MaxPoolWithArgmax has int32 too)
    tf = get_tf()
    attrs = dict(ksize=[1, *ksize, 1], strides=[1, *strides, 1], padding=padding, include_batch_in_index=with_batch)
    x = randn(*shape)
    _, argmax = tf.raw_ops.MaxPoolWithArgmax(input=x, **attrs)
    feeds = {"x:0": x, "dy:0": randn(*argmax.shape), "argmax:0": argmax.numpy()}

    def build(tf):
        p = placeholders(tf, feeds)
        pooled, index = tf.raw_ops.MaxPoolWithArgmax(input=p["x"], **attrs)
        (dx,) = tf.compat.v1.gradients(pooled, p["x"], grad_ys=p["dy"])
        assert dx.op.type == "MaxPoolGradWithArgmax"
        direct = tf.raw_ops.MaxPoolGradWithArgmax(input=p["x"], grad=p["dy"], argmax=p["argmax"], **attrs)
        # TF defines no gradient of the gradient op; jax.grad of jaxmeta's MaxPoolWithArgmax is checked
        # against TF's MaxPoolGradWithArgmax through `pooled`.
        return [pooled, index, tf.stop_gradient(dx), tf.stop_gradient(direct)]

    return case(build, feeds, grads=True)


@pytest.mark.parametrize("with_batch", [False, True], ids=["per_image_index", "include_batch_in_index"])
def test_max_pool_grad_with_argmax(with_batch):
    run_cases([case_max_pool_grad_with_argmax(*c, with_batch) for c in ARGMAX_POOLS])


@pytest.mark.parametrize("targmax", ["int64", "int32"])
@pytest.mark.parametrize("with_batch", [False, True], ids=["per_image_index", "include_batch_in_index"])
@pytest.mark.parametrize("pool", ARGMAX_POOLS, ids=str)
def test_max_pool_grad_grad_with_argmax(pool, with_batch, targmax):
    """TF runs MaxPoolGradGradWithArgmax on GPUs only: compare it with TF's MaxPoolGradGrad, the
    same tangent (each window's grad at its maximum) for inputs without tied maxima."""
    tf = get_tf()
    shape, ksize, strides, padding = pool
    attrs = dict(ksize=[1, *ksize, 1], strides=[1, *strides, 1], padding=padding)
    x, ddx = randn(*shape), randn(*shape)
    y, argmax = tf.raw_ops.MaxPoolWithArgmax(input=x, Targmax=getattr(tf, targmax), include_batch_in_index=with_batch,
                                             **attrs)
    want = tf.raw_ops.MaxPoolGradGrad(orig_input=x, orig_output=y, grad=ddx, **attrs).numpy()
    feeds = {"x:0": x, "ddx:0": ddx, "argmax:0": argmax.numpy()}

    def build(tf):
        p = placeholders(tf, feeds)
        return tf.raw_ops.MaxPoolGradGradWithArgmax(input=p["x"], grad=p["ddx"], argmax=p["argmax"],
                                                    include_batch_in_index=with_batch, **attrs)

    compare_unrunnable(build, feeds, [want], rtol=0, atol=0)


# -- morphology -----------------------------------------------------------------------------------

# Continuous random inputs and filters: no window has two equal maxima of input + filter.
DILATION2D = [
    # input shape (NHWC), filter rows and cols, strides, rates, padding
    ((2, 5, 5, 3), (3, 3), (1, 1), (1, 1), "SAME"),
    ((1, 6, 7, 2), (2, 3), (2, 2), (1, 1), "VALID"),
    ((1, 7, 6, 2), (2, 2), (1, 2), (2, 1), "SAME"),
    ((2, 8, 8, 1), (3, 2), (2, 1), (2, 3), "VALID"),
]


def case_dilation2d_grads(shape, fsize, strides, rates, padding, forward=False, non_finite=False):
    tf = get_tf()
    attrs = dict(strides=[1, *strides, 1], rates=[1, *rates, 1], padding=padding)
    x, f = randn(*shape), randn(*fsize, shape[3])
    if non_finite:  # TF's scan: NaN never wins, nor -inf (not above the lowest float)
        x.reshape(-1)[::3] = np.nan
        x.reshape(-1)[1::4] = -np.inf
    feeds = {"x:0": x, "f:0": f, "dy:0": randn(*tf.raw_ops.Dilation2D(input=x, filter=f, **attrs).shape)}

    def build(tf):
        p = placeholders(tf, feeds)
        y = tf.raw_ops.Dilation2D(input=p["x"], filter=p["f"], **attrs)
        dx, df = tf.compat.v1.gradients(y, [p["x"], p["f"]], grad_ys=p["dy"])
        assert (dx.op.type, df.op.type) == ("Dilation2DBackpropInput", "Dilation2DBackpropFilter")
        return [y] * forward + [tf.stop_gradient(dx), tf.stop_gradient(df)]

    return case(build, feeds, grads=True)


def test_dilation2d_grads():
    run_cases([
        # with the forward output once: jax.grad of jaxmeta's Dilation2D checked against TF's gradient ops
        case_dilation2d_grads(*DILATION2D[0], forward=True),
        *(case_dilation2d_grads(*c) for c in DILATION2D[1:]),
        # No window has a row inside the image (rows -1 and 2 of 1): TF's kernels send each gradient to
        # their starting position, input (0, max(left, 0)) and filter tap (0, 0). (The forward op, the
        # lowest float there, is left out: jax.grad of it sends nothing from such windows; test_nn checks it.)
        case_dilation2d_grads((1, 1, 4, 2), (2, 2), (1, 1), (3, 1), "SAME"),
        # Windows of NaN and -inf only send their gradients to the starting position too.
        case_dilation2d_grads((2, 4, 5, 2), (2, 2), (1, 1), (1, 1), "SAME", non_finite=True),
    ])


def test_dilation2d_grads_integers():
    """Integer inputs, where TF's scan starts from the dtype's lowest value. Each input is a distinct
    multiple of 100 and each filter tap a distinct value below 100: no window has tied maxima."""
    tf = get_tf()
    attrs = dict(strides=[1, 2, 1, 1], rates=[1, 1, 2, 1], padding="SAME")
    x = (RNG.permutation(2 * 5 * 6 * 2).reshape(2, 5, 6, 2) * 100 - 1000).astype(np.int32)
    f = RNG.permutation(99)[:3 * 2 * 2].reshape(3, 2, 2).astype(np.int32)
    dy = RNG.integers(-9, 10, tf.raw_ops.Dilation2D(input=x, filter=f, **attrs).shape).astype(np.int32)
    feeds = {"x:0": x, "f:0": f, "dy:0": dy}

    def build(tf):
        p = placeholders(tf, feeds)
        return [tf.raw_ops.Dilation2DBackpropInput(input=p["x"], filter=p["f"], out_backprop=p["dy"], **attrs),
                tf.raw_ops.Dilation2DBackpropFilter(input=p["x"], filter=p["f"], out_backprop=p["dy"], **attrs)]

    compare_with_tf(build, feeds)


# -- normalization --------------------------------------------------------------------------------


@pytest.mark.parametrize("is_training", [True, False], ids=["training", "inference"])
@pytest.mark.parametrize("version,shape,data_format", [
    ("", (4, 3, 3, 2), "NHWC"), ("V2", (2, 5, 2, 3), "NHWC"), ("V3", (4, 3, 3, 2), "NHWC"), ("V3", (3, 2, 4, 4), "NCHW"),
    ("V3", (8, 24, 24, 5), "NHWC"),  # >= 4096 rows: channel sums as a matrix product (`channel_sum`)
], ids=str)
def test_fused_batch_norm_grad(version, is_training, shape, data_format):
    tf = get_tf()
    channels = shape[1] if data_format == "NCHW" else shape[-1]
    x = randn(*shape)
    scale = np.abs(randn(channels)) + 0.5
    if is_training:
        x_nhwc = x.transpose(0, 2, 3, 1) if data_format == "NCHW" else x
        _, _, _, r1, r2, r3 = tf.raw_ops.FusedBatchNormV3(
            x=x_nhwc, scale=scale, offset=np.zeros_like(scale), mean=np.zeros(0, np.float32),
            variance=np.zeros(0, np.float32), is_training=True, epsilon=1e-3)
        r1, r2, r3 = r1.numpy(), r2.numpy(), r3.numpy()
    else:
        r1, r2, r3 = randn(channels), np.abs(randn(channels)) + 0.2, np.zeros(0, np.float32)
    feeds = {"dy:0": randn(*shape), "x:0": x, "scale:0": scale, "r1:0": r1, "r2:0": r2}
    def build(tf):
        ph = placeholders(tf, feeds)
        op = getattr(tf.raw_ops, f"FusedBatchNormGrad{version}")
        extra = {"reserve_space_3": tf.constant(r3)} if version == "V3" else {}
        outs = op(y_backprop=ph["dy"], x=ph["x"], scale=ph["scale"], reserve_space_1=ph["r1"],
                  reserve_space_2=ph["r2"], epsilon=1e-3, data_format=data_format, is_training=is_training, **extra)
        return list(outs)

    if data_format == "NCHW" and is_training:  # no CPU kernel in TF: check against its NHWC result
        t = (0, 2, 3, 1)
        want = tf.raw_ops.FusedBatchNormGradV3(
            y_backprop=feeds["dy:0"].transpose(t), x=x.transpose(t), scale=scale, reserve_space_1=r1,
            reserve_space_2=r2, reserve_space_3=r3, epsilon=1e-3, is_training=True)
        want = [w.numpy() for w in want]
        compare_unrunnable(build, feeds, [want[0].transpose(0, 3, 1, 2), *want[1:3]])
    else:
        compare_with_tf(build, feeds, rtol=1e-4, atol=1e-4, grads=True, grad_rtol=2e-3, grad_atol=2e-3)


@pytest.mark.parametrize("depth_radius,bias,alpha,beta", [(2, 1.0, 1.0, 0.5), (1, 2.0, 0.1, 0.75),
                                                          (5, 0.5, 0.3, 1.0)])
def test_lrn_grad(depth_radius, bias, alpha, beta):
    tf = get_tf()
    x = randn(2, 3, 2, 7)
    y = tf.nn.local_response_normalization(x, depth_radius, bias, alpha, beta).numpy()
    feeds = {"dy:0": randn(*x.shape), "x:0": x, "y:0": y}

    def build(tf):
        ph = placeholders(tf, feeds)
        return tf.raw_ops.LRNGrad(input_grads=ph["dy"], input_image=ph["x"], output_image=ph["y"],
                                  depth_radius=depth_radius, bias=bias, alpha=alpha, beta=beta)

    compare_with_tf(build, feeds, rtol=1e-4, atol=1e-5)


def _legacy_op(tf, op_type, inputs, **attrs):
    """`op_type` on `inputs`, for ops TF removed at GraphDef version 9 or later (it builds and runs
    them only in graphs of older versions): a stand-in node imported as a version-8 GraphDef, which
    lowers the whole graph's version, so that TF runs it and `tf.compat.v1.gradients` can build its
    gradient op. Attributes: bools, floats, ints, strings and lists of ints."""
    stand_in = tf.Graph()
    with stand_in.as_default():
        tf.raw_ops.IdentityN(input=[tf.compat.v1.placeholder(t.dtype, t.shape, name=f"in{i}")
                                    for i, t in enumerate(inputs)], name="op")
    graph_def = stand_in.as_graph_def()
    node = next(n for n in graph_def.node if n.name == "op")
    node.op = op_type
    node.attr.clear()
    node.attr["T"].type = inputs[0].dtype.as_datatype_enum
    for key, value in attrs.items():
        if isinstance(value, bool):
            node.attr[key].b = value
        elif isinstance(value, int):
            node.attr[key].i = value
        elif isinstance(value, str):
            node.attr[key].s = value.encode()
        elif isinstance(value, list):
            node.attr[key].list.i.extend(value)
        else:
            node.attr[key].f = value
    graph_def.versions.producer = 8
    (out,) = tf.compat.v1.import_graph_def(graph_def, {f"in{i}:0": t for i, t in enumerate(inputs)},
                                           return_elements=["op:0"], name=op_type)
    return out


@pytest.mark.parametrize("scale_after", [False, True], ids=["unscaled", "scale_after_normalization"])
@pytest.mark.parametrize("shape", [(2, 3, 3, 4), (1, 2, 5, 3)], ids=str)  # TF: rank 4
def test_batch_norm_with_global_normalization_grad(shape, scale_after):
    depth = shape[-1]
    feeds = {"t:0": randn(*shape), "m:0": randn(depth), "v:0": np.abs(randn(depth)) + 0.1, "beta:0": randn(depth),
             "gamma:0": randn(depth), "dy:0": randn(*shape)}

    def build(tf):
        p = placeholders(tf, feeds)
        params = [p[k] for k in ("t", "m", "v", "beta", "gamma")]
        y = _legacy_op(tf, "BatchNormWithGlobalNormalization", params, variance_epsilon=0.01,
                       scale_after_normalization=scale_after)
        grads = tf.compat.v1.gradients(y, params, grad_ys=p["dy"])  # dx, dm, dv, db, dg: one grad op's outputs
        assert {g.op.type for g in grads} == {"BatchNormWithGlobalNormalizationGrad"}
        # The forward output: jax.grad of jaxmeta's op checked against TF's gradient op.
        return [y, *(tf.stop_gradient(g) for g in grads)]

    compare_with_tf(build, feeds, rtol=1e-5, atol=1e-5, grads=True, grad_rtol=1e-4, grad_atol=1e-4)


@pytest.mark.parametrize("case", [
    ((1, 4, 5, 5, 2), (2, 3, 3, 2, 3), (1, 1, 1), "SAME"),
    ((2, 5, 4, 4, 1), (3, 2, 2, 1, 2), (2, 1, 2), "VALID"),
], ids=str)
def test_conv3d_backprops_v1(case):
    """Conv3DBackpropFilter and Conv3DBackpropInput (removed at GraphDef version 10): the filter
    and the input themselves in place of their shapes."""
    tf = get_tf()
    in_shape, f_shape, strides, padding = case
    x, w = randn(*in_shape), randn(*f_shape)
    dy = randn(*tf.nn.conv3d(x, w, [1, *strides, 1], padding).shape)
    feeds = {"x:0": x, "w:0": w, "dy:0": dy}

    def build(tf):
        p = placeholders(tf, feeds)
        attrs = dict(strides=[1, *strides, 1], padding=padding)
        return [_legacy_op(tf, f"Conv3DBackprop{kind}", [p["x"], p["w"], p["dy"]], **attrs)
                for kind in ("Filter", "Input")]

    compare_with_tf(build, feeds, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("attrs", [
    {}, dict(range_given=True, input_min=-1.0, input_max=2.0),
    dict(signed_input=False, num_bits=4), dict(range_given=True, input_min=0.0, input_max=1.5, num_bits=3),
], ids=str)
def test_quantize_and_dequantize_v1(attrs):
    """QuantizeAndDequantize (removed at GraphDef version 22): V2 with its range as attributes;
    TF's gradient passes dy through."""
    x = randn(4, 3) * 1.5
    x[0, 0] = 0.5 / 127  # a half step

    def build(tf):
        return _legacy_op(tf, "QuantizeAndDequantize", [placeholders(tf, {"x:0": x})["x"]], **attrs)

    compare_with_tf(build, {"x:0": x}, grads=True)


# -- image resizing -------------------------------------------------------------------------------

RESIZE = [
    # (in h, w), (out h, w), align_corners, half_pixel_centers
    ((4, 5), (8, 10), False, False),
    ((4, 5), (7, 3), False, False),
    ((4, 5), (8, 10), True, False),
    ((5, 3), (2, 7), True, False),
    ((4, 5), (8, 10), False, True),
    ((6, 6), (4, 9), False, True),
    ((3, 3), (1, 1), True, False),
]


@pytest.mark.parametrize("case", RESIZE, ids=str)
def test_resize_grads(case):
    (ih, iw), (oh, ow), align, half = case
    feeds = {"dy:0": randn(2, oh, ow, 3), "img:0": randn(2, ih, iw, 3)}

    def bilinear(tf):
        ph = placeholders(tf, feeds)
        return tf.raw_ops.ResizeBilinearGrad(grads=ph["dy"], original_image=ph["img"], align_corners=align,
                                             half_pixel_centers=half)

    def nearest(tf):
        ph = placeholders(tf, {"dy:0": feeds["dy:0"]})
        return tf.raw_ops.ResizeNearestNeighborGrad(grads=ph["dy"], size=tf.constant([ih, iw]), align_corners=align,
                                                    half_pixel_centers=half)

    compare_with_tf(bilinear, feeds, rtol=1e-5, atol=1e-5, grads=True)
    compare_with_tf(nearest, {"dy:0": feeds["dy:0"]}, rtol=1e-5, atol=1e-5)


# -- fake quantization ----------------------------------------------------------------------------

FAKE_QUANT = [
    # min, max, num_bits, narrow_range
    (-6.0, 6.0, 8, False),
    (-1.0, 3.0, 8, True),
    (-3.7, 5.1, 7, True),
    (-2.3, -0.2, 5, False),
    (0.1, 2.5, 4, False),
    (-0.5, 1.0, 16, False),
    (0.0, 1.0, 2, True),
]


def _fake_quant_feeds(shape, **extra):
    # Random points (none at the nudged bounds); a few infinite gradients, which TF's masks
    # multiply: inf * 0 is NaN outside the range.
    x = np.random.default_rng(0).uniform(-8, 8, shape).astype(np.float32)
    dy = randn(*shape)
    dy.reshape(-1)[::17] = np.inf
    return {"x:0": x, "dy:0": dy, **extra}


def case_fake_quant_args_grad(lo, hi, bits, narrow):
    feeds = _fake_quant_feeds((40,))
    attrs = dict(min=lo, max=hi, num_bits=bits, narrow_range=narrow)

    def build(tf):
        p = placeholders(tf, feeds)
        y = tf.raw_ops.FakeQuantWithMinMaxArgs(inputs=p["x"], **attrs)
        (dx,) = tf.compat.v1.gradients(y, p["x"], grad_ys=p["dy"])
        assert dx.op.type == "FakeQuantWithMinMaxArgsGradient"
        return tf.stop_gradient(dx)

    return case(build, feeds)


def case_fake_quant_vars_grad(lo, hi, bits, narrow, per_channel_shape=None):
    shape = per_channel_shape or (40,)
    if per_channel_shape:  # per channel: min and max shifted by up to 0.5 from channel to channel
        shift = RNG.uniform(-0.5, 0.5, shape[-1]).astype(np.float32)
        lo, hi = np.float32(lo) + shift, np.float32(hi) + shift
        lo[-1] = hi[-1] = 0  # TF passes the gradient through where min == max == 0
    feeds = _fake_quant_feeds(shape, **{"lo:0": np.float32(lo), "hi:0": np.float32(hi)})
    op = "FakeQuantWithMinMaxVarsPerChannel" if per_channel_shape else "FakeQuantWithMinMaxVars"

    def build(tf):
        p = placeholders(tf, feeds)
        y = getattr(tf.raw_ops, op)(inputs=p["x"], min=p["lo"], max=p["hi"], num_bits=bits, narrow_range=narrow)
        grads = tf.compat.v1.gradients(y, [p["x"], p["lo"], p["hi"]], grad_ys=p["dy"])
        assert {g.op.type for g in grads} == {op + "Gradient"}
        direct = getattr(tf.raw_ops, op + "Gradient")(gradients=p["dy"], inputs=p["x"], min=p["lo"], max=p["hi"],
                                                      num_bits=bits, narrow_range=narrow)
        return [tf.stop_gradient(g) for g in (*grads, *direct)]

    return case(build, feeds)


def test_fake_quant_grads():
    run_cases(
        [case_fake_quant_args_grad(*c) for c in FAKE_QUANT]
        + [case_fake_quant_vars_grad(*c) for c in FAKE_QUANT]
        # TF passes the gradient through where min == max == 0 (its forward op outputs zeros there)
        + [case_fake_quant_vars_grad(0.0, 0.0, 8, False)]
        + [case_fake_quant_vars_grad(*c, per_channel_shape=s) for c, s in zip(
            FAKE_QUANT, [(5,), (6, 3), (2, 3, 2, 4), (4, 2), (3, 2, 2, 3), (7, 2), (2, 5)])]
    )


def test_fake_quant_grads_agree_with_jax_grad_of_the_forward_ops():
    """On a graph holding both, jaxmeta's gradient ops give what jax.grad of its forward ops gives."""
    import jax
    import jax.numpy as jnp

    import jaxmeta

    tf = get_tf()
    feeds = _fake_quant_feeds((2, 3, 4), **{"lo:0": np.float32([-1.5, -0.4, 0.2, -6]),
                                            "hi:0": np.float32([1.0, 3.0, 2.5, 6])})
    feeds["dy:0"] = randn(2, 3, 4)  # finite: jax.grad multiplies, 0 * inf would be NaN
    g = tf.Graph()
    with g.as_default():
        p = placeholders(tf, feeds)
        y = tf.raw_ops.FakeQuantWithMinMaxVarsPerChannel(inputs=p["x"], min=p["lo"], max=p["hi"], num_bits=6,
                                                         narrow_range=True, name="y")
        grads = tf.compat.v1.gradients(y, [p["x"], p["lo"], p["hi"]], grad_ys=p["dy"])
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
    graph = jaxmeta.import_meta_graph(meta)
    forward = graph.function("y:0", feeds=["x:0", "lo:0", "hi:0"])
    grad_ops = graph.function([t.name for t in grads], feeds=list(feeds))
    x, lo, hi, dy = (jnp.asarray(feeds[k]) for k in ("x:0", "lo:0", "hi:0", "dy:0"))
    want = jax.grad(lambda *a: jnp.sum(forward({}, *a) * dy), argnums=(0, 1, 2))(x, lo, hi)
    for got in (grad_ops({}, x, dy, lo, hi), jax.jit(grad_ops)({}, x, dy, lo, hi)):
        for a, b in zip(got, want):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("op,attrs,match", [
    ("FakeQuantWithMinMaxArgsGradient", dict(min=1.0, max=1.0), "smaller than max"),
    ("FakeQuantWithMinMaxArgsGradient", dict(num_bits=17), "num_bits"),
    ("FakeQuantWithMinMaxVarsGradient", dict(num_bits=1), "num_bits"),
    ("FakeQuantWithMinMaxVarsPerChannelGradient", dict(num_bits=20), "num_bits"),
])
def test_fake_quant_grad_attributes_are_checked(op, attrs, match):
    import jaxmeta

    tf = get_tf()
    x = randn(4)
    g = tf.Graph()
    with g.as_default():
        p = placeholders(tf, {"x:0": x})
        if "Vars" in op:  # min and max are inputs: scalars, or one per channel
            bounds = [-1.0, 1.0] if "PerChannel" not in op else [[-1.0] * 4, [1.0] * 4]
            attrs = dict(attrs, min=tf.constant(bounds[0]), max=tf.constant(bounds[1]))
        out = getattr(tf.raw_ops, op)(gradients=p["x"], inputs=p["x"], **attrs)
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
    name = (out[0] if isinstance(out, (list, tuple)) else out).name
    with pytest.raises(jaxmeta.GraphError, match=match):
        jaxmeta.import_meta_graph(meta).function(name, feeds=["x:0"])({}, x)


# -- fractional pools ------------------------------------------------------------------------------


@pytest.mark.parametrize("reduce", ["max", "avg"])
@pytest.mark.parametrize("overlapping", [False, True])
def test_fractional_pool_grads_match_tf(reduce, overlapping):
    """TF's gradient ops fed TF's own boundaries: the same input gradient exactly. Inputs with
    ties (ReLU's zeros, repeated values) check that the first maximum of a window takes it all."""
    x = np.maximum(np.round(randn(2, 11, 13, 3) * 2) / 2, 0).astype(np.float32)
    op = "FractionalMaxPool" if reduce == "max" else "FractionalAvgPool"
    out, rows, cols = run_tf(lambda tf: getattr(tf.raw_ops, op)(
        value=tf.constant(x), pooling_ratio=[1.0, 1.6, 1.4, 1.0], overlapping=overlapping, pseudo_random=True,
        deterministic=True, seed=1, seed2=2)).expected
    feeds = {"x:0": x, "out:0": out, "grad:0": randn(*out.shape), "rows:0": rows, "cols:0": cols}

    def build(tf):
        p = placeholders(tf, feeds)
        if reduce == "max":
            return tf.raw_ops.FractionalMaxPoolGrad(orig_input=p["x"], orig_output=p["out"], out_backprop=p["grad"],
                                                    row_pooling_sequence=p["rows"], col_pooling_sequence=p["cols"],
                                                    overlapping=overlapping)
        return tf.raw_ops.FractionalAvgPoolGrad(orig_input_tensor_shape=x.shape, out_backprop=p["grad"],
                                                row_pooling_sequence=p["rows"], col_pooling_sequence=p["cols"],
                                                overlapping=overlapping)

    compare_with_tf(build, feeds)
