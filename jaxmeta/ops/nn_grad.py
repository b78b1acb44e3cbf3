"""Gradient ops that `tf.gradients` writes into training graphs (ReluGrad, MaxPoolGrad, ...).

The elementwise ones are their closed-form formulas. The others are the vector-Jacobian product
of a forward computation written here in JAX (`jax.vjp` of a convolution w.r.t. its filter, of a
pool w.r.t. its input, ...), which keeps them exact, differentiable again and jit-able. Shapes
that TF passes as tensors (`filter_sizes`, `orig_input_shape`) must be known at trace time, as
they are when they come from constants or `Shape` of a static tensor. A few follow TF's kernels
step by step instead, where those pick a maximum or a mask their own way (the *WithArgmax pools'
and Dilation2D's gradients, the fake-quantization ones).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxmeta._errors import GraphError
from jaxmeta.ops.image import _nearest_index, _scale
from jaxmeta.ops.nn import (
    _check_unit,
    _fake_quant_attrs,
    _nudge,
    _out_size,
    _tf_pads,
    batch_moments,
    channel_sum,
    convolve,
    first_maxima,
    fractional_max,
    fractional_mean,
    lrn_config,
    max_pool_tangent,
    quantization_range,
    window_counts,
    window_identity,
    window_reduce,
    window_views,
)
from jaxmeta.ops.registry import broadcast_ranks, expect_shape, register, static_ints

# -- elementwise ----------------------------------------------------------------------------------


def _elementwise(f):
    """Builder for an elementwise `(a, b) -> out` gradient op (TF requires equal shapes)."""

    def build(node):
        def fn(a, b):
            a, b = broadcast_ranks(jnp.asarray(a), jnp.asarray(b))
            return f(a, b)

        return fn

    return build


_SELU_SCALE = 1.0507009873554804934193349852946
_SELU_ALPHA = 1.6732632423543772848170429916717


def _zero(x):
    return jnp.zeros((), x.dtype)


def _masked(dy, mask):
    """`dy * mask` as TF's gradient kernels compute it (ReluGrad, the fake-quant gradients: with a
    0/1 float mask): an infinite or NaN `dy` outside the mask gives NaN, not 0. Written as a
    select of `dy * 0`, which XLA keeps, where it rewrites a product with a converted mask into a
    select of 0."""
    return jnp.where(mask, dy, dy * _zero(dy))


# (gradients, features) ops
register("ReluGrad")(_elementwise(lambda g, x: _masked(g, x > 0)))
register("Relu6Grad")(_elementwise(lambda g, x: _masked(g, (x > 0) & (x < 6))))
register("SoftplusGrad")(_elementwise(lambda g, x: g / (jnp.exp(-x) + 1)))
register("SoftsignGrad")(_elementwise(lambda g, x: g / jnp.square(1 + jnp.abs(x))))
# (gradients, outputs) ops
register("EluGrad")(_elementwise(lambda g, y: jnp.where(y < 0, g * (y + 1), g)))
register("SeluGrad")(
    _elementwise(lambda g, y: jnp.where(y < 0, g * (y + _SELU_SCALE * _SELU_ALPHA), g * _SELU_SCALE))
)


def _zero_where_dy_is(f):
    """TF's kernels for these gradients return 0 where `dy` is 0, whatever `y` is (0 * inf or
    0 / 0 would be NaN)."""
    return lambda y, dy: jnp.where(dy == 0, _zero(dy), f(y, dy))


# (y, dy) ops: y is the forward op's output. TF's Python gradients conjugate y for complex types
# before they call TanhGrad and SigmoidGrad, whose kernels then do not; the others conjugate it
# themselves.
register("TanhGrad")(_elementwise(lambda y, dy: dy * (1 - y * y)))
register("SigmoidGrad")(_elementwise(lambda y, dy: dy * (y * (1 - y))))
register("RsqrtGrad")(_elementwise(_zero_where_dy_is(lambda y, dy: dy * jnp.conj(-0.5 * y * y * y))))
register("SqrtGrad")(_elementwise(_zero_where_dy_is(lambda y, dy: dy * 0.5 / jnp.conj(y))))
register("ReciprocalGrad", "InvGrad")(_elementwise(_zero_where_dy_is(lambda y, dy: dy * jnp.conj(-y * y))))


@register("LeakyReluGrad")
def _leaky_relu_grad(node):
    alpha = node.attr_float("alpha", 0.2)

    def fn(g, x):
        g, x = broadcast_ranks(jnp.asarray(g), jnp.asarray(x))
        return jnp.where(x > 0, g, g * jnp.asarray(alpha, g.dtype))

    return fn


# -- bias -----------------------------------------------------------------------------------------


@register("BiasAddGrad", "BiasAddGradV1")
def _bias_add_grad(node):
    data_format = "NHWC" if node.type == "BiasAddGradV1" else node.attr_str("data_format", "NHWC")
    if data_format not in ("NHWC", "NCHW"):
        raise GraphError(f"node {node.name!r} ({node.type}): unsupported data_format {data_format!r}")

    def fn(g):
        g = jnp.asarray(g)
        # BiasAdd's NCHW bias runs along axis 1 (TF's "C" of NC...), for any rank >= 3; a rank-2
        # input has its channels last in both formats.
        channel = 1 if data_format == "NCHW" and g.ndim >= 3 else g.ndim - 1
        # In g's own type, as TF sums (int8 sums wrap; jnp.sum would widen them to int32).
        return channel_sum(g, tuple(i for i in range(g.ndim) if i != channel)).astype(g.dtype)

    return fn


# -- convolutions ---------------------------------------------------------------------------------


def _conv_config(node, spatial: int):
    """(strides, dilations, padding, data_format, channels_first) of a convolution node."""
    data_format = node.attr_str("data_format", "NHWC" if spatial == 2 else "NDHWC")
    channels_first = data_format.startswith("NC")
    if data_format not in ("NHWC", "NCHW", "NDHWC", "NCDHW") or len(data_format) != spatial + 2:
        raise GraphError(f"node {node.name!r} ({node.type}): unsupported data_format {data_format!r}")
    sp = slice(2, None) if channels_first else slice(1, -1)
    strides = node.attr_ints("strides")
    dilations = node.attr_ints("dilations", [1] * (spatial + 2))
    if len(strides) != spatial + 2 or len(dilations) != spatial + 2:
        raise GraphError(f"node {node.name!r} ({node.type}): strides/dilations must have {spatial + 2} entries")
    padding = _padding(node, spatial, channels_first)
    return tuple(strides[sp]), tuple(dilations[sp]), padding, data_format, channels_first


def _padding(node, spatial: int, channels_first: bool):
    padding = node.attr_str("padding")
    if padding in ("SAME", "VALID"):
        return padding  # lax pads SAME as TF does: the odd element goes after
    if padding == "EXPLICIT":
        pads = node.attr_ints("explicit_paddings")
        pairs = [tuple(pads[2 * i: 2 * i + 2]) for i in range(len(pads) // 2)]
        return pairs[2:] if channels_first else pairs[1:-1]
    raise GraphError(f"node {node.name!r} ({node.type}): unsupported padding {padding!r}")


def _conv(x, w, strides, dilations, padding, data_format, groups=1):
    """TF's convolution: `w` is [spatial..., in/groups, out] whatever the data format."""
    spatial = x.ndim - 2
    kernel = "HWIO" if spatial == 2 else "DHWIO"
    return convolve(x, w, strides, padding, dilations, (data_format, kernel, data_format), groups,
                    precision=lax.Precision.HIGHEST)


def _filter_grad(forward, x, filter_shape, dy):
    """d(sum(dy * forward(x, w)))/dw: the convolution is linear in w, so any point will do."""
    w0 = jnp.zeros(filter_shape, jnp.result_type(x, dy))
    _, vjp = jax.vjp(lambda w: forward(x, w), w0)
    return vjp(jnp.asarray(dy, w0.dtype))[0]


@register("Conv2DBackpropFilter", "Conv2DBackpropFilterV2", "Conv3DBackpropFilterV2", "Conv3DBackpropFilter")
def _conv_backprop_filter(node):
    """dL/dfilter of Conv2D/Conv3D given the input and dL/doutput. Conv3DBackpropFilter (V1, which
    TF runs in graphs before GraphDef version 10) and Conv2DBackpropFilterV2 (which TF 2.21 has no
    CPU or XLA kernel for) take the filter itself: only its shape matters."""
    spatial = 3 if node.type.startswith("Conv3D") else 2
    strides, dilations, padding, data_format, channels_first = _conv_config(node, spatial)

    def fn(x, filter_sizes, dy):
        x = jnp.asarray(x)
        shape = tuple(static_ints(filter_sizes, node, "filter_sizes"))
        channels = x.shape[1 if channels_first else -1]
        if len(shape) != spatial + 2 or shape[-2] <= 0 or channels % shape[-2]:
            raise GraphError(f"node {node.name!r} ({node.type}): filter_sizes {list(shape)} do not fit an input of "
                             f"{channels} channels")
        groups = channels // shape[-2]  # grouped convolutions (Keras's Conv2D(groups=...)): [..., in/groups, out]
        forward = lambda x, w: _conv(x, w, strides, dilations, padding, data_format, groups)  # noqa: E731
        return _filter_grad(forward, x, shape, dy)

    if node.type in ("Conv3DBackpropFilter", "Conv2DBackpropFilterV2"):
        return lambda x, w, dy: fn(x, np.asarray(np.shape(w)), dy)
    return fn


@register("DepthwiseConv2dNativeBackpropFilter")
def _depthwise_backprop_filter(node):
    """dL/dfilter of DepthwiseConv2dNative; the filter is [H, W, in_channels, multiplier].

    Deliberately not TF-exact for `dilations > 1`: TF's kernels ignore the attribute in this op
    (though the forward op honors it); jaxmeta returns the gradient of the dilated convolution.
    `tf.nn.depthwise_conv2d` never emits it (it dilates with SpaceToBatch instead).
    """
    strides, dilations, padding, data_format, channels_first = _conv_config(node, 2)

    def fn(x, filter_sizes, dy):
        x = jnp.asarray(x)
        h, w, cin, mult = static_ints(filter_sizes, node, "filter_sizes")

        def forward(x, f):
            return _conv(x, f.reshape(h, w, 1, cin * mult), strides, dilations, padding, data_format, groups=cin)

        return _filter_grad(forward, x, (h, w, cin, mult), dy)

    return fn


# -- pooling --------------------------------------------------------------------------------------


def _pool_config(node, ksize=None, strides=None):
    """(window, strides, padding) over every axis, in the node's data format."""
    ksize = list(node.attr_ints("ksize")) if ksize is None else ksize
    strides = list(node.attr_ints("strides")) if strides is None else strides
    data_format = node.attr_str("data_format", "NHWC" if len(ksize) == 4 else "NDHWC")
    padding = node.attr_str("padding")
    if padding in ("SAME", "VALID"):
        pads = padding
    elif padding == "EXPLICIT":
        flat = node.attr_ints("explicit_paddings")
        pads = [tuple(flat[2 * i: 2 * i + 2]) for i in range(len(flat) // 2)]
    else:
        raise GraphError(f"node {node.name!r} ({node.type}): unsupported padding {padding!r}")
    # ksize, strides and explicit paddings list every axis in the data format's order, which is
    # what reduce_window takes, so the format itself only needs checking.
    if data_format not in ("NHWC", "NCHW", "NDHWC", "NCDHW") or len(ksize) != len(strides):
        raise GraphError(
            f"node {node.name!r} ({node.type}): unsupported data_format {data_format!r} or ksize {ksize} / "
            f"strides {strides}"
        )
    return tuple(ksize), tuple(strides), pads


def _dynamic_pool_config(node, ksize, strides):
    """`_pool_config` of a V2 pool gradient, whose ksize and strides are (constant) inputs."""
    return _pool_config(node, static_ints(ksize, node, "ksize"), static_ints(strides, node, "strides"))


def _pads(shape, window, strides, padding) -> list[tuple[int, int]]:
    """A pool's (low, high) padding per axis: `padding` is "SAME", "VALID" or already the pairs."""
    return lax.padtype_to_pads(shape, window, strides, padding) if isinstance(padding, str) else padding


def _avg_pool(x, window, strides, padding):
    """TF's average pool: padded positions are not counted in the divisor."""
    pads = _pads(x.shape, window, strides, padding)
    total = window_reduce(x, "sum", window, strides, pads)
    if padding == "VALID":
        return total / np.prod(window)
    return total / window_counts(x.shape, window, strides, pads).astype(x.dtype)


def _max_pool_grad_fn(node, window, strides, padding):
    def fn(x, _orig_output, dy):
        """Each window's gradient to its first maximum (TF's CPU tie rule), through the transpose
        of the windows (`first_maxima`); the routing is piecewise constant in x, so no gradient
        flows back to it."""
        x = jnp.asarray(x)
        windows, hit, axis = first_maxima(x, window, strides, _pads(x.shape, window, strides, padding))
        routed = jnp.where(hit, jnp.expand_dims(jnp.asarray(dy, x.dtype), axis), jnp.zeros((), x.dtype))
        return jax.linear_transpose(windows, x)(routed)[0]

    return fn


@register("MaxPoolGrad")
def _max_pool_grad(node):
    """MaxPoolGrad(orig_input, orig_output, grad): grad routed to each window's first maximum."""
    return _max_pool_grad_fn(node, *_pool_config(node))


@register("MaxPool3DGrad")
def _max_pool3d_grad(node):
    """MaxPool3DGrad(orig_input, orig_output, grad): unlike the 2-D op, TF's kernel gives each
    window's gradient to EVERY input equal to the window's output (ties all get it in full)."""
    window, strides, padding = _pool_config(node)

    def fn(x, y, dy):
        x = lax.stop_gradient(jnp.asarray(x))
        views = _window_slices(x, window, strides, padding, window_identity("max", x.dtype))
        is_max = views == lax.stop_gradient(jnp.asarray(y, x.dtype))[None]
        dy = jnp.asarray(dy, x.dtype)
        routed = jnp.where(is_max, dy[None], jnp.zeros((), x.dtype))
        _, vjp = jax.vjp(lambda v: _window_slices(v, window, strides, padding, 0), jnp.zeros_like(x))
        return vjp(routed)[0]

    return fn


@register("MaxPoolGradV2")
def _max_pool_grad_v2(node):
    def fn(x, orig_output, dy, ksize, strides):
        return _max_pool_grad_fn(node, *_dynamic_pool_config(node, ksize, strides))(x, orig_output, dy)

    return fn


def _window_slices(x, window, strides, padding, fill):
    """Every window position's strided view of `x`, stacked in row-major window order."""
    return window_views(x, window, strides, _pads(x.shape, window, strides, padding), fill)


def _max_pool_grad_grad_fn(node, window, strides, padding):
    def fn(x, _orig_output, ddx):
        """Each window's ddx at its first maximum in row-major order, as TF's kernel picks it:
        the max pool's tangent (`first_maxima`)."""
        x = jnp.asarray(x)
        return max_pool_tangent(x, jnp.asarray(ddx, x.dtype), window, strides, _pads(x.shape, window, strides, padding))

    return fn


@register("MaxPoolGradGrad", "MaxPool3DGradGrad")
def _max_pool_grad_grad(node):
    return _max_pool_grad_grad_fn(node, *_pool_config(node))


@register("MaxPoolGradGradV2")
def _max_pool_grad_grad_v2(node):
    def fn(x, orig_output, ddx, ksize, strides):
        return _max_pool_grad_grad_fn(node, *_dynamic_pool_config(node, ksize, strides))(x, orig_output, ddx)

    return fn


@register("AvgPoolGrad", "AvgPool3DGrad")
def _avg_pool_grad(node):
    """AvgPoolGrad(orig_input_shape, grad): each window's gradient spread evenly over it."""
    window, strides, padding = _pool_config(node)

    def fn(orig_input_shape, dy):
        shape = tuple(static_ints(orig_input_shape, node, "orig_input_shape"))
        dy = jnp.asarray(dy)
        _, vjp = jax.vjp(lambda v: _avg_pool(v, window, strides, padding), jnp.zeros(shape, dy.dtype))
        return vjp(dy)[0]

    return fn


def _nhwc_window_attrs(node, names: tuple[str, str]) -> tuple[tuple[int, int], tuple[int, int], str]:
    """The spatial (rows, cols) of an NHWC-only window op's two 4-entry attributes (ksize and strides,
    or strides and rates) and its padding, which must be SAME or VALID (as TF's kernels check)."""
    values = []
    for name in names:
        v = node.attr_ints(name)
        if len(v) != 4:
            raise GraphError(f"node {node.name!r} ({node.type}): {name} {v} must have 4 entries (NHWC)")
        _check_unit(node, name, v, False)
        values.append((v[1], v[2]))
    padding = node.attr_str("padding")
    if padding not in ("SAME", "VALID"):
        raise GraphError(f"node {node.name!r} ({node.type}): padding {padding!r} is not supported")
    return values[0], values[1], padding


def _window_geometry(shape, window, strides, padding, rates=(1, 1)):
    """Where the windows of an NHWC window op over `shape` start: (tops [out rows], lefts [out cols]);
    TF's padding, so a SAME window may start before the image."""
    _, h, w, _ = shape
    (pt, pb), (pl, pr) = _tf_pads(padding, (h, w), window, strides, rates)
    oh = max(_out_size(h, pt, pb, window[0], rates[0], strides[0]), 0)
    ow = max(_out_size(w, pl, pr, window[1], rates[1], strides[1]), 0)
    return np.arange(oh) * strides[0] - pt, np.arange(ow) * strides[1] - pl


def _expect_shape(node, what: str, value, want) -> None:
    expect_shape(node, what, value, want, "the op's input and attributes give that shape: the graph is inconsistent "
                 "(was it edited by hand?)")


def _argmax_config(node):
    """(pooled shape of an input shape, flat input positions of an argmax) of a *WithArgmax gradient."""
    window, strides, padding = _nhwc_window_attrs(node, ("ksize", "strides"))
    with_batch = node.attr_bool("include_batch_in_index", False)

    def pooled(shape):
        if len(shape) != 4:
            raise GraphError(f"node {node.name!r} ({node.type}): input {shape} must be [batch, rows, cols, depth]")
        tops, lefts = _window_geometry(shape, window, strides, padding)
        return shape[0], tops.size, lefts.size, shape[3]

    def positions(argmax, shape):
        """`argmax` as positions in the flattened input of `shape`, the batch offset added where
        MaxPoolWithArgmax left it out; one that MaxPoolWithArgmax cannot produce (outside the image)
        becomes the input's size, which scatters drop and gathers fill (TF's CPU kernel aborts)."""
        n, per_image = shape[0], math.prod(shape[1:])
        idx = jnp.asarray(argmax).reshape(n, math.prod(np.shape(argmax)[1:]))
        if with_batch:
            inside = (idx >= 0) & (idx < n * per_image)
        else:
            inside = (idx >= 0) & (idx < per_image)
            idx = idx + (np.arange(n) * per_image).astype(idx.dtype)[:, None]
        return jnp.where(inside, idx, n * per_image).reshape(-1)

    return pooled, positions


@register("MaxPoolGradWithArgmax")
def _max_pool_grad_with_argmax(node):
    """MaxPoolGradWithArgmax(input, grad, argmax): each grad summed into the input position its
    argmax names, as MaxPoolWithArgmax flattens it (`((b * height + y) * width + x) * channels + c`,
    without the `b` term unless `include_batch_in_index`)."""
    pooled, positions = _argmax_config(node)

    def fn(x, dy, argmax):
        shape = tuple(np.shape(x))
        _expect_shape(node, "grad", dy, pooled(shape))
        _expect_shape(node, "argmax", argmax, pooled(shape))
        dy = jnp.asarray(dy, jnp.result_type(x))
        out = jnp.zeros(math.prod(shape), dy.dtype).at[positions(argmax, shape)].add(dy.reshape(-1), mode="drop")
        return out.reshape(shape)

    return fn


@register("MaxPoolGradGradWithArgmax")
def _max_pool_grad_grad_with_argmax(node):
    """MaxPoolGradGradWithArgmax(input, grad, argmax): `grad` (shaped like the input) read at each
    argmax, the pool's tangent (TF has a GPU kernel only)."""
    pooled, positions = _argmax_config(node)

    def fn(x, ddx, argmax):
        shape = tuple(np.shape(x))
        _expect_shape(node, "grad", ddx, shape)
        _expect_shape(node, "argmax", argmax, pooled(shape))
        ddx = jnp.asarray(ddx, jnp.result_type(x)).reshape(-1)
        return jnp.take(ddx, positions(argmax, shape), mode="fill", fill_value=0).reshape(pooled(shape))

    return fn



def _fractional_gaps(node, in_shape, out_shape) -> tuple[int, int]:
    """The longest gap between a fractional pool's boundaries as TF draws them."""
    if len(in_shape) != 4 or len(out_shape) != 4 or min(out_shape[1:3]) < 1:
        raise GraphError(f"node {node.name!r} ({node.type}): expected NHWC input and output gradient, got "
                         f"shapes {tuple(in_shape)} and {tuple(out_shape)}")
    return in_shape[1] // out_shape[1] + 1, in_shape[2] // out_shape[2] + 1


@register("FractionalMaxPoolGrad")
def _fractional_max_pool_grad(node):
    """The output gradient sent to each window's first maximum (summed where overlapping windows
    share it), between the forward op's boundaries."""
    overlapping = node.attr_bool("overlapping", False)

    def fn(orig_input, orig_output, grad, rows, cols):
        x = jnp.asarray(orig_input)
        gaps = _fractional_gaps(node, x.shape, np.shape(grad))
        _, pull = jax.vjp(lambda v: fractional_max(v, rows, cols, overlapping, gaps), x)
        return pull(jnp.asarray(grad, x.dtype))[0]

    return fn


@register("FractionalAvgPoolGrad")
def _fractional_avg_pool_grad(node):
    """The output gradient spread evenly over each window, between the forward op's boundaries."""
    overlapping = node.attr_bool("overlapping", False)

    def fn(orig_input_shape, grad, rows, cols):
        shape = tuple(static_ints(orig_input_shape, node, "orig_input_tensor_shape", 4))
        grad = jnp.asarray(grad)
        gaps = _fractional_gaps(node, shape, grad.shape)
        _, pull = jax.vjp(lambda v: fractional_mean(v, rows, cols, overlapping, gaps), jnp.zeros(shape, grad.dtype))
        return pull(grad)[0]

    return fn

# -- morphology -----------------------------------------------------------------------------------


def _dilation_routes(x, filt, strides, rates, padding):
    """Where each output of Dilation2D(x, filt) takes its maximum, as TF's CPU gradient kernels scan
    the window: row-major over the filter taps inside the image, a tap winning when its `x + filter`
    is strictly greater than every one before it AND than the dtype's lowest value (NaN never wins).

    Returns:
        (tap, found, tops, lefts): `tap` [batch, out rows, out cols, depth] the winning tap's flat
        index `row * filter_cols + col`; `found` False where no tap won (the gradient kernels then
        use their starting position: tap (0, 0), input (max(top, 0), max(left, 0))); the windows'
        first input rows and columns (TF's padding, negative before the image).
    """
    x, filt = lax.stop_gradient(jnp.asarray(x)), lax.stop_gradient(jnp.asarray(filt))
    n, h, w, c = x.shape
    kh, kw = filt.shape[:2]
    tops, lefts = _window_geometry(x.shape, (kh, kw), strides, padding, rates)
    ys = tops[:, None] + np.arange(kh) * rates[0]  # [out rows, kh]
    xs = lefts[:, None] + np.arange(kw) * rates[1]  # [out cols, kw]
    inside = (((ys >= 0) & (ys < h))[:, None, :, None] & ((xs >= 0) & (xs < w))[None, :, None, :])[None, ..., None]
    patches = x[:, np.clip(ys, 0, h - 1)[:, None, :, None], np.clip(xs, 0, w - 1)[None, :, None, :], :]
    values = patches + filt[None, None, None]  # [n, out rows, out cols, kh, kw, c]
    if jnp.issubdtype(x.dtype, jnp.floating):
        lowest = jnp.finfo(x.dtype).min
        values = jnp.where(inside & ~jnp.isnan(values), values, -jnp.inf)
    else:
        lowest = jnp.iinfo(x.dtype).min
        values = jnp.where(inside, values, lowest)
    values = values.reshape(n, tops.size, lefts.size, kh * kw, c)
    tap = jnp.argmax(values, axis=3)  # the first maximum
    found = jnp.max(values, axis=3) > lowest
    return tap, found, tops, lefts


def _dilation_grad(node, route):
    """A Dilation2D gradient op: `route(x, filt, dy, tap, found, tops, lefts, rates)` sends each `dy`
    to its window's winner (`_dilation_routes`)."""
    strides, rates, padding = _nhwc_window_attrs(node, ("strides", "rates"))

    def fn(x, filt, dy):
        if np.ndim(x) != 4 or np.ndim(filt) != 3 or np.shape(filt)[2] != np.shape(x)[3]:
            raise GraphError(
                f"node {node.name!r} ({node.type}): input {np.shape(x)} must be [batch, rows, cols, depth] and filter "
                f"{np.shape(filt)} [rows, cols, depth]"
            )
        tap, found, tops, lefts = _dilation_routes(x, filt, strides, rates, padding)
        _expect_shape(node, "out_backprop", dy, tap.shape)
        return route(x, filt, jnp.asarray(dy, jnp.result_type(x)), tap, found, tops, lefts, rates)

    return fn


@register("Dilation2DBackpropInput")
def _dilation2d_backprop_input(node):
    """Dilation2DBackpropInput(input, filter, out_backprop): each output's gradient summed into the
    input pixel of its window's maximum of `input + filter`."""

    def route(x, filt, dy, tap, found, tops, lefts, rates):
        kw = np.shape(filt)[1]
        tops, lefts = tops[None, :, None, None], lefts[None, None, :, None]
        rows = jnp.where(found, tops + (tap // kw) * rates[0], np.maximum(tops, 0))
        cols = jnp.where(found, lefts + (tap % kw) * rates[1], np.maximum(lefts, 0))
        batch, depth = np.arange(dy.shape[0])[:, None, None, None], np.arange(dy.shape[3])[None, None, None, :]
        return jnp.zeros(np.shape(x), dy.dtype).at[batch, rows, cols, depth].add(dy, mode="drop")

    return _dilation_grad(node, route)


@register("Dilation2DBackpropFilter")
def _dilation2d_backprop_filter(node):
    """Dilation2DBackpropFilter(input, filter, out_backprop): each output's gradient summed into the
    filter tap of its window's maximum of `input + filter`."""

    def route(x, filt, dy, tap, found, tops, lefts, rates):
        kh, kw, c = np.shape(filt)
        taps = jnp.where(found, tap, 0)
        depth = np.arange(c)[None, None, None, :]
        return jnp.zeros((kh * kw, c), dy.dtype).at[taps, depth].add(dy).reshape(kh, kw, c)

    return _dilation_grad(node, route)


# -- normalization --------------------------------------------------------------------------------


@register("FusedBatchNormGrad", "FusedBatchNormGradV2", "FusedBatchNormGradV3")
def _fused_batch_norm_grad(node):
    """(x_backprop, scale_backprop, offset_backprop, 2 unused outputs) of FusedBatchNorm.

    Training mode normalizes with the batch statistics, so the gradient also flows through the
    mean and variance; they are recomputed from `x` (TF's reserve spaces hold the same batch mean
    and biased variance on CPU). Inference mode uses the population statistics passed in
    `reserve_space_1/2` as constants.
    """
    epsilon = node.attr_float("epsilon", 1e-4)
    data_format = node.attr_str("data_format", "NHWC")
    is_training = node.attr_bool("is_training", True)
    if data_format not in ("NHWC", "NCHW", "NDHWC", "NCDHW"):
        raise GraphError(f"node {node.name!r} ({node.type}): unsupported data_format {data_format!r}")
    channels_first = data_format.startswith("NC")

    def fn(dy, x, scale, mean, variance, *_reserve_space_3):
        x = jnp.asarray(x)
        scale = jnp.asarray(scale)
        u = scale.dtype  # statistics and parameter gradients are in U (float32 for half inputs)
        axes = tuple(i for i in range(x.ndim) if i != (1 if channels_first else x.ndim - 1))

        def per_channel(v):
            return v.reshape([-1 if i not in axes else 1 for i in range(x.ndim)])

        # Closed form, as TF's kernels: two reductions and one elementwise pass (autodiff of the
        # forward materializes broadcasts of every per-channel intermediate).
        xf, dyf = x.astype(u), jnp.asarray(dy, u)
        n = math.prod(x.shape[i] for i in axes)
        if is_training:
            m, var = map(per_channel, batch_moments(xf, axes))
        else:
            m, var = per_channel(jnp.asarray(mean, u)), per_channel(jnp.asarray(variance, u))
        inv = lax.rsqrt(var + epsilon)
        x_hat = (xf - m) * inv
        doffset = channel_sum(dyf, axes)
        dscale = channel_sum(dyf * x_hat, axes)
        if is_training:
            dx = (per_channel(scale) * inv) * (dyf - (per_channel(doffset) + x_hat * per_channel(dscale)) / n)
        else:
            dx = dyf * (per_channel(scale) * inv)
        empty = jnp.zeros((), u)
        return dx.astype(x.dtype), dscale, doffset, empty, empty

    return fn


@register("BatchNormWithGlobalNormalizationGrad")
def _batch_norm_global_grad(node):
    """(dx, dm, dv, db, dg) of BatchNormWithGlobalNormalization(t, m, v, beta, gamma), in TF's
    closed form; the channels are the last axis. Without `scale_after_normalization` gamma is
    unused and dg is zeros."""
    eps = node.attr_float("variance_epsilon")
    scale_after = node.attr_bool("scale_after_normalization")

    def fn(t, m, v, gamma, dy):
        t = jnp.asarray(t)
        m, v, gamma, dy = (jnp.asarray(a, t.dtype) for a in (m, v, gamma, dy))
        axes = tuple(range(t.ndim - 1))
        inv = lax.rsqrt(v + eps)
        db = channel_sum(dy, axes)
        centered = channel_sum(dy * (t - m[(None,) * len(axes)]), axes)
        scale = inv * gamma if scale_after else inv
        dx = dy * scale[(None,) * len(axes)]
        dv_scale = inv * -0.5 / (v + eps)  # d rsqrt(v + eps) / dv
        dv = centered * (dv_scale * gamma if scale_after else dv_scale)
        dg = centered * inv if scale_after else jnp.zeros_like(gamma)
        return dx, -db * scale, dv, db, dg

    return fn


@register("LRNGrad")
def _lrn_grad(node):
    """LRNGrad(input_grads, input_image, output_image) of local response normalization."""
    radius, bias, alpha, beta = lrn_config(node)

    def lrn(x):
        sq = jnp.square(x.astype(jnp.float32))
        depth = x.shape[-1]
        pads = [(0, 0)] * (x.ndim - 1) + [(radius, radius)]
        csum = jnp.cumsum(jnp.pad(sq, pads), axis=-1)
        csum = jnp.pad(csum, [(0, 0)] * (x.ndim - 1) + [(1, 0)])
        window = csum[..., 2 * radius + 1: 2 * radius + 1 + depth] - csum[..., :depth]
        return (x.astype(jnp.float32) * (bias + alpha * window) ** -beta).astype(x.dtype)

    def fn(dy, x, _y):
        x = jnp.asarray(x)
        _, vjp = jax.vjp(lrn, x)
        return vjp(jnp.asarray(dy, x.dtype))[0]

    return fn


# -- fake quantization ----------------------------------------------------------------------------


def _fake_quant_grad_range(node) -> tuple[float, float]:
    """A FakeQuant gradient's quantized range (quant_min, quant_max) from num_bits and narrow_range."""
    bits, narrow = _fake_quant_attrs(node)
    if not 2 <= bits <= 16:
        raise GraphError(f"node {node.name!r} ({node.type}): num_bits is {bits}; TF allows 2 to 16")
    return (1.0 if narrow else 0.0), float(2**bits - 1)


def _fake_quant_backprops(dy, x, lo, hi, quant_range):
    """TF's straight-through estimator of FakeQuantWithMinMaxVars(PerChannel): dy to the inputs
    inside the nudged [min, max], the rest summed into min (below it) and max (above it), over
    every axis but min's (the channel axis, per channel), masked as TF masks (`_masked`). Where
    min == max == 0 TF passes dy through whole (its forward op outputs zeros there), min and max
    get 0."""
    dy, x = jnp.asarray(dy, jnp.float32), jnp.asarray(x, jnp.float32)
    with np.errstate(divide="ignore", invalid="ignore"):  # constant min == max == 0: NaN, not used
        _, _, nmin, nmax = _nudge(lo, hi, *quant_range)
    off = (jnp.asarray(lo) == 0) & (jnp.asarray(hi) == 0)
    axes = tuple(range(x.ndim - np.ndim(lo)))
    xb, nmin, nmax, off_b = broadcast_ranks(x, nmin, nmax, off)

    dx = jnp.where(off_b, dy, _masked(dy, (xb >= nmin) & (xb <= nmax)))
    zero = jnp.zeros((), jnp.float32)
    dmin = jnp.where(off, zero, jnp.sum(_masked(dy, xb < nmin), axis=axes))
    dmax = jnp.where(off, zero, jnp.sum(_masked(dy, xb > nmax), axis=axes))
    return dx, dmin, dmax


@register("FakeQuantWithMinMaxArgsGradient")
def _fake_quant_args_grad(node):
    """FakeQuantWithMinMaxArgsGradient(gradients, inputs): gradients where the inputs lie inside the
    nudged [min, max] (min and max are attributes: no gradient for them)."""
    lo, hi = np.float32(node.attr_float("min", -6.0)), np.float32(node.attr_float("max", 6.0))
    if not lo < hi:
        raise GraphError(f"node {node.name!r} ({node.type}): min {lo} must be smaller than max {hi}")
    _, _, nmin, nmax = _nudge(lo, hi, *_fake_quant_grad_range(node))

    def fn(dy, x):
        dy, x = jnp.asarray(dy, jnp.float32), jnp.asarray(x, jnp.float32)
        return _masked(dy, (x >= nmin) & (x <= nmax))

    return fn


@register("FakeQuantWithMinMaxVarsGradient")
def _fake_quant_vars_grad(node):
    """FakeQuantWithMinMaxVarsGradient(gradients, inputs, min, max) -> (dinputs, dmin, dmax), min and
    max scalars (`_fake_quant_backprops`)."""
    quant_range = _fake_quant_grad_range(node)

    def fn(dy, x, lo, hi):
        if np.ndim(lo) or np.ndim(hi):
            raise GraphError(f"node {node.name!r} ({node.type}): min {np.shape(lo)} and max {np.shape(hi)} must be "
                             "scalars")
        return _fake_quant_backprops(dy, x, lo, hi, quant_range)

    return fn


@register("FakeQuantWithMinMaxVarsPerChannelGradient")
def _fake_quant_vars_per_channel_grad(node):
    """FakeQuantWithMinMaxVarsPerChannelGradient(gradients, inputs, min, max) -> (dinputs, dmin,
    dmax), min and max one per channel (the inputs' last axis) (`_fake_quant_backprops`)."""
    quant_range = _fake_quant_grad_range(node)

    def fn(dy, x, lo, hi):
        depth = np.shape(x)[-1:]
        if np.shape(lo) != depth or np.shape(hi) != depth:
            raise GraphError(f"node {node.name!r} ({node.type}): min {np.shape(lo)} and max {np.shape(hi)} must have "
                             f"one entry per channel of the inputs {np.shape(x)}")
        return _fake_quant_backprops(dy, x, lo, hi, quant_range)

    return fn


# -- image resizing -------------------------------------------------------------------------------


def _bilinear_weights(in_size, out_size, align_corners, half_pixel):
    """TF's (lower, upper, lerp) for every output position, computed in float32 as TF does."""
    scale = _scale(in_size, out_size, align_corners)
    pos = np.arange(out_size, dtype=np.float32)
    src = (pos + np.float32(0.5)) * scale - np.float32(0.5) if half_pixel else pos * scale
    floor = np.floor(src)
    lower = np.maximum(floor, 0).astype(np.int32)
    upper = np.minimum(np.ceil(src), in_size - 1).astype(np.int32)
    return lower, upper, (src - floor).astype(np.float32)


@register("ResizeBilinearGrad")
def _resize_bilinear_grad(node):
    """ResizeBilinearGrad(grads, original_image): the transpose of bilinear resizing (NHWC)."""
    align_corners = node.attr_bool("align_corners", False)
    half_pixel = node.attr_bool("half_pixel_centers", False)

    def fn(dy, image):
        dy = jnp.asarray(dy, jnp.float32)
        _, in_h, in_w, _ = np.shape(image)
        _, out_h, out_w, _ = dy.shape
        y0, y1, ly = _bilinear_weights(in_h, out_h, align_corners, half_pixel)
        x0, x1, lx = _bilinear_weights(in_w, out_w, align_corners, half_pixel)

        def resize(img):
            top, bottom = img[:, y0], img[:, y1]
            ly_ = ly[None, :, None, None]
            lx_ = lx[None, None, :, None]

            def row(r):
                return r[:, :, x0] + (r[:, :, x1] - r[:, :, x0]) * lx_

            t, b = row(top), row(bottom)
            return t + (b - t) * ly_

        zeros = jnp.zeros(np.shape(image), jnp.float32)
        _, vjp = jax.vjp(resize, zeros)
        return vjp(dy)[0].astype(image.dtype)

    return fn


@register("ResizeNearestNeighborGrad")
def _resize_nearest_grad(node):
    """ResizeNearestNeighborGrad(grads, size): sums each output pixel's gradient into its source."""
    align_corners = node.attr_bool("align_corners", False)
    half_pixel = node.attr_bool("half_pixel_centers", False)

    def fn(dy, size):
        dy = jnp.asarray(dy)
        in_h, in_w = static_ints(size, node, "size")
        n, out_h, out_w, c = dy.shape
        iy = _nearest_index(in_h, out_h, align_corners, half_pixel)
        ix = _nearest_index(in_w, out_w, align_corners, half_pixel)
        out = jnp.zeros((n, in_h, in_w, c), dy.dtype)
        return out.at[:, iy[:, None], ix[None, :], :].add(dy)

    return fn


@register("QuantizeAndDequantizeV4Grad")
def _quantize_and_dequantize_v4_grad(node):
    """(gradients, input, input_min, input_max) -> dy where input_min <= input <= input_max (per
    slice along `axis`, or whole), and zeros for the range, as TF's kernel."""
    axis = node.attr_int("axis", -1)

    def fn(dy, x, lo, hi):
        dy, x = jnp.asarray(dy), jnp.asarray(x)
        _, lo_b, hi_b = quantization_range(node, x, axis, lo, hi)
        return _masked(dy, (x >= lo_b) & (x <= hi_b)), jnp.zeros(np.shape(lo), dy.dtype), jnp.zeros(np.shape(hi), dy.dtype)

    return fn

