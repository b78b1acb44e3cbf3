"""Neural-network ops (forward/inference): convolutions, pooling, normalization, activations, losses.

Layouts follow TF's `data_format` attribute; spatial padding follows TF's rules (`SAME` pads
`max((out - 1) * stride + (k - 1) * dilation + 1 - in, 0)` with the smaller half before, `VALID`
pads nothing, `EXPLICIT` reads `explicit_paddings`). Transposed convolutions
(`Conv2DBackpropInput` & co., as `conv2d_transpose` emits them in inference graphs) live here;
the other gradient kernels are in `nn_grad.py`.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.custom_derivatives import SymbolicZero

from jaxmeta._errors import GraphError
from jaxmeta.ops.array import _paddings
from jaxmeta.ops.image import _linear_axis
from jaxmeta.ops.registry import (
    broadcast_ranks,
    checked_indices,
    register,
    register_table,
    static,
    static_ints,
    unary,
)

# -- layout and padding helpers ---------------------------------------------------------------------

_CHANNELS_LAST = {"NHWC": 4, "NDHWC": 5, "NWC": 3}
_CHANNELS_FIRST = {"NCHW": 4, "NCDHW": 5, "NCW": 3}


def _layout(node, default: str, rank: int) -> tuple[str, bool]:
    """(data_format, channels_first) for a node; rejects formats jaxmeta cannot run."""
    fmt = node.attr_str("data_format", default)
    if _CHANNELS_LAST.get(fmt) == rank:
        return fmt, False
    if _CHANNELS_FIRST.get(fmt) == rank:
        return fmt, True
    raise GraphError(f"node {node.name!r} ({node.type}): data_format {fmt!r} is not supported")


def _spatial(values: list[int], channels_first: bool) -> list[int]:
    """The spatial entries of a full-rank attribute list (strides, ksize, dilations)."""
    return list(values[2:]) if channels_first else list(values[1:-1])


def _full(spatial: list, channels_first: bool, fill=1) -> list:
    """A full-rank list from spatial entries (batch and channel entries set to `fill`)."""
    return [fill, fill, *spatial] if channels_first else [fill, *spatial, fill]


def _check_unit(node, name: str, values: list[int], channels_first: bool) -> None:
    outer = (values[0], values[1]) if channels_first else (values[0], values[-1])
    if any(v != 1 for v in outer):
        raise GraphError(
            f"node {node.name!r} ({node.type}): {name} {values} must be 1 in the batch and channel dimensions"
        )


def _padding_attr(node) -> tuple[str, list[tuple[int, int]] | None]:
    padding = node.attr_str("padding")
    if padding not in ("SAME", "VALID", "EXPLICIT"):
        raise GraphError(f"node {node.name!r} ({node.type}): padding {padding!r} is not supported")
    explicit = None
    if padding == "EXPLICIT":
        flat = node.attr_ints("explicit_paddings", [])
        if len(flat) % 2:
            raise GraphError(f"node {node.name!r} ({node.type}): explicit_paddings {flat} must hold (before, after) "
                             "pairs, one per dimension")
        explicit = [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
    return padding, explicit


def _tf_pads(padding: str, sizes, window, strides, dilations, explicit=None) -> list[tuple[int, int]]:
    """TF's (before, after) padding of each spatial dimension."""
    if padding == "VALID":
        return [(0, 0)] * len(sizes)
    if padding == "EXPLICIT":
        return list(explicit)
    pads = []
    for n, k, s, d in zip(sizes, window, strides, dilations):
        out = -(-n // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - n, 0)
        pads.append((total // 2, total - total // 2))
    return pads


# -- convolutions ---------------------------------------------------------------------------------


# Stacked windows (positions x window x in channels) up to which a few-input-channel convolution's
# gradients are matrix products too; beyond it XLA's convolution gradients are faster.
_WINDOWS_FOR_MATMUL_GRADS = 1 << 18

# Output positions (batch x spatial) from which a few-input-channel convolution's forward pass is a
# sum of its taps (`_tap_sum`) rather than its stacked windows times the kernel.
_POSITIONS_FOR_TAP_SUM = 4096

# Which forms `convolve`, `channel_sum` and `batch_moments` take, read when a graph is traced:
# True (the default): the forms below, made for XLA's CPU backend and faster on a GPU too (an
#     H100: a ResNet-50 training step at batch 64 in 26.7 instead of 33.8 ms, batch-1 inference in
#     1.2 instead of 2.0 ms; few-channel stems' sum of taps, which came later, is as fast there
#     as the stacked windows: the CNN's and Inception-v3's steps within 3 %);
# "gradients": XLA's convolution forward, these forms for the gradients only (on the H100:
#     ResNet-50's and Inception-v3's batch-128 inference 8-10 % faster, its training step as fast
#     and compiled in 17 instead of 53 s, batch-1 inference as slow as with False);
# False: lax's plain convolutions and reductions (`benchmarks/gpu_reference.py` compares).
ARRANGED: bool | str = True


def convolve(x, w, strides, padding, dilation, dimension_numbers, groups=1, precision=None):
    """`lax.conv_general_dilated`, arranged for XLA's CPU backend (and kept on a GPU, where they
    are faster too: see `ARRANGED`), for ungrouped channels-last convolutions with
    [spatial..., in, out] kernels (TF's layout):

    - an unpadded 1x1 kernel (most of a ResNet's) is one matrix product, forward and both
      gradients (2-3x faster);
    - a kernel over few input channels (an RGB image's first layer) is, over many output
      positions, a sum of its taps (`_tap_sum`), over few, its shifted windows stacked along the
      channels times the kernel; its gradients are matrix products of the stacked windows while
      those are few, XLA's convolution gradients beyond (transposing millions of stacked windows
      for the filter gradient tripled a 64x32x32x3 CNN stem's backward pass);
    - where output positions (batch x spatial) are few, at most window x in channels (deep layers,
      small maps), XLA's convolution runs forward and both gradients are matrix products (see
      `_differentiated_as`): XLA's own input gradient reverses and transposes the whole kernel on every
      call, 4.5 ms of a ResNet-50 training step for each 3x3x512x512 kernel on a 2-core Xeon,
      against 1.2 ms as a product;
    - anything else is XLA's convolution.
    """
    nsp = x.ndim - 2
    window = tuple(w.shape[:nsp])
    lhs, rhs, out = dimension_numbers
    if groups != 1 or lhs[-1] != "C" or lhs != out or rhs[-2:] != "IO" or not ARRANGED:
        return lax.conv_general_dilated(x, w, strides, padding, rhs_dilation=dilation,
                                        dimension_numbers=dimension_numbers, feature_group_count=groups,
                                        precision=precision)
    span = [(k - 1) * d + 1 for k, d in zip(window, dilation)]
    pads = lax.padtype_to_pads(x.shape[1:-1], span, strides, padding) if isinstance(padding, str) else padding
    w, pads = _crop_to_reach(w, x.shape[1:-1], [tuple(int(v) for v in p) for p in pads], strides, dilation)
    window = tuple(w.shape[:nsp])
    config = (tuple(strides), tuple(pads), tuple(dilation), tuple(dimension_numbers), precision)
    conv_forward = ARRANGED == "gradients"
    if window == (1,) * nsp and all(p == (0, 0) for p in pads):
        if conv_forward:
            return _conv_with_matmul_grads(x, w, *config)
        x = x[(slice(None), *(slice(None, None, s) for s in strides), slice(None))]
        return _matmul(x, w, precision)
    sizes = [_out_size(n, lo, hi, k, d, s) for n, (lo, hi), k, d, s in zip(x.shape[1:-1], pads, window, dilation, strides)]
    positions = x.shape[0] * math.prod(sizes)
    window_size = math.prod(window) * w.shape[-2]  # a stacked window's length: taps x in channels
    if 1 < window_size <= 32:
        small = positions * window_size <= _WINDOWS_FOR_MATMUL_GRADS
        if conv_forward:
            return (_conv_with_matmul_grads if small else _xla_conv)(x, w, *config)
        if positions >= _POSITIONS_FOR_TAP_SUM and x.dtype == w.dtype == jnp.float32:
            return (_tap_sum_with_matmul_grads if small else _tap_sum_with_conv_grads)(x, w, *config)
        return (_window_matmul if small else _matmul_with_conv_grads)(x, w, *config)
    if positions <= window_size:
        return _conv_with_matmul_grads(x, w, *config)
    return lax.conv_general_dilated(x, w, strides, pads, rhs_dilation=dilation, dimension_numbers=dimension_numbers,
                                    precision=precision)


def _out_size(n, lo, hi, k, d, s):
    """Output length of a window of k taps, dilation d, stride s over n inputs padded by lo, hi."""
    return (n + lo + hi - (k - 1) * d - 1) // s + 1


def _matmul(x, w, precision):
    """x[..., in] @ w[..., in, out] with w's leading (spatial) axes flattened into `in`."""
    return lax.dot_general(x, jnp.reshape(w, (-1, w.shape[-1])), (((x.ndim - 1,), (0,)), ((), ())),
                           precision=precision)


def _zero_padded(x, pads):
    """`x` [batch, spatial..., channels] padded with zeros along its spatial axes."""
    return lax.pad(x, jnp.zeros((), x.dtype), [(0, 0, 0), *((lo, hi, 0) for lo, hi in pads), (0, 0, 0)])


def _window_matmul(x, w, strides, pads, dilation, dimension_numbers, precision):
    """The convolution as one matrix product: the kernel's shifted, strided windows of padded `x`
    stacked along the channels ([..., window position * in channels]) times the flat kernel. Its
    transposes (the gradients) are a matrix product and a sum of padded slices.

    The windows are stacked one spatial axis at a time, last first (a 3x3 kernel: 3 slices along
    the width, then 3 along the height of their stack): XLA copies few, wide slices faster than
    one slice per tap (a 128x32x32x3 CNN stem 1.3-1.6x faster on a 2-core Xeon)."""
    window = w.shape[:-2]
    x = _zero_padded(x, pads)
    for axis in reversed(range(1, x.ndim - 1)):
        k, d, s = window[axis - 1], dilation[axis - 1], strides[axis - 1]
        n = _out_size(x.shape[axis], 0, 0, k, d, s)
        x = jnp.concatenate([lax.slice_in_dim(x, t * d, t * d + (n - 1) * s + 1, s, axis) for t in range(k)], axis=-1)
    return _matmul(x, w, precision)


def _tap_sum(x, w, strides, pads, dilation, dimension_numbers, precision):
    """The convolution as the sum, over its taps and input channels, of each shifted, strided
    window's channel times that tap's kernel row (broadcast along the output channels): XLA fuses
    the whole sum into one loop over the output, never writing the stacked windows out. For few
    input channels (at most 32 products per output, an RGB image's 3x3 stem: 27) over many
    positions it is 1.3-3x faster than the stacked windows times the kernel on a 2-core Xeon (a
    128x32x32x3 CNN stem 5.9 -> 3.3 ms without YNNPACK); each product and sum is a float32 one,
    as in the matrix product, in another order."""
    window = w.shape[:-2]
    x = _zero_padded(x, pads)
    sizes = [_out_size(n, 0, 0, k, d, s) for n, k, d, s in zip(x.shape[1:-1], window, dilation, strides)]
    out = None
    for tap in np.ndindex(*window):
        start = [t * d for t, d in zip(tap, dilation)]
        view = lax.slice(x, (0, *start, 0), (x.shape[0], *(b + (n - 1) * s + 1 for b, n, s in zip(start, sizes, strides)),
                                             x.shape[-1]), (1, *strides, 1))
        for c in range(x.shape[-1]):
            term = view[..., c:c + 1] * w[(*tap, c)].reshape((1,) * (x.ndim - 1) + (-1,))
            out = term if out is None else out + term
    return out


def _xla_conv(x, w, strides, pads, dilation, dimension_numbers, precision):
    return lax.conv_general_dilated(x, w, strides, pads, rhs_dilation=dilation,
                                    dimension_numbers=dimension_numbers, precision=precision)


def _differentiated_as(forward, tangent, differentiated_forward=None):
    """The convolution computed by `forward`, differentiated through `tangent` (the same
    convolution computed another way): a `jax.custom_jvp` whose tangent is `tangent(dx, w) +
    tangent(x, dw)`, so reverse mode (its transpose) is the transpose of `tangent`'s form. Forward
    mode and higher orders go through it too. Where it is differentiated, the value itself comes
    from `differentiated_forward` if given (`tangent`'s own form: one set of stacked windows for
    the value and the filter gradient)."""
    fn = jax.custom_jvp(forward, nondiff_argnums=(2, 3, 4, 5, 6))

    def jvp(strides, pads, dilation, dimension_numbers, precision, primals, tangents):
        x, w = primals
        dx, dw = tangents
        config = (strides, pads, dilation, dimension_numbers, precision)
        parts = []
        if not isinstance(dx, SymbolicZero):
            parts.append(tangent(dx, w, *config))
        if not isinstance(dw, SymbolicZero):
            parts.append(tangent(x, dw, *config))
        y = (differentiated_forward or fn)(x, w, *config)
        return y, sum(parts[1:], parts[0]) if parts else jnp.zeros_like(y)

    fn.defjvp(jvp, symbolic_zeros=True)
    return fn


# XLA's convolution forward, gradients as matrix products: the input gradient is dy @ kernel^T
# scattered back by padded slices, never a reversed, transposed copy of the kernel; the filter
# gradient is the stacked windows of x (few: see `convolve`) times dy.
_conv_with_matmul_grads = _differentiated_as(_xla_conv, _window_matmul)
# The stacked-windows product forward, XLA's convolution gradients: for few input channels and many
# output positions, where transposing the stacked windows for the filter gradient is slow.
_matmul_with_conv_grads = _differentiated_as(_window_matmul, _xla_conv)
# The sum of taps forward (few input channels, many positions), gradients as above by the stacked
# windows' count; where the gradients are products of the stacked windows, a value that JAX
# differentiates (`jax.grad` through `graph.function`) is their product too, since its filter
# gradient needs them anyway. (TF's own gradient ops differentiate a separate copy of the
# convolution: `ops/nn_grad.py`.)
_tap_sum_with_matmul_grads = _differentiated_as(_tap_sum, _window_matmul, _window_matmul)
_tap_sum_with_conv_grads = _differentiated_as(_tap_sum, _xla_conv)


def channel_sum(x, axes):
    """`jnp.sum(x, axis=axes)`; a large float32 sum over every axis but the last (batch norm's
    gradients, bias gradients) runs as matrix products: without YNNPACK, XLA's CPU reduction of a
    128x32x32x32 activation to its 32 channels takes 22 ms, the product 1.7 ms (with YNNPACK 1.1
    and 1.5 ms). The rows are summed in up to 64 blocks at once (a batched ones @ x[block]), then
    the blocks' sums: 2.6x faster than one ones @ x of 131,072 rows, and 40x closer to float64's
    sum (3e-7 instead of 1e-5 relative error)."""
    x = jnp.asarray(x)
    rows, channels = math.prod(x.shape[:-1]), x.shape[-1]
    if not _many_rows(x, axes):
        return jnp.sum(x, axis=axes)
    blocks = math.gcd(rows, 64)
    partial = lax.dot_general(jnp.ones((blocks, rows // blocks), x.dtype), x.reshape(blocks, rows // blocks, channels),
                              (((1,), (1,)), ((0,), (0,))), precision=lax.Precision.HIGHEST)
    return partial.sum(axis=0)


def _many_rows(x, axes) -> bool:
    """Whether `x`'s sum over `axes` is a float32 sum of 4096 rows or more to its last axis."""
    return (x.dtype == jnp.float32 and tuple(axes) == tuple(range(x.ndim - 1)) and math.prod(x.shape[:-1]) >= 4096
            and ARRANGED)


def batch_moments(x, axes):
    """Per-channel mean and biased variance of `x` over `axes` (batch norm's batch statistics).

    Over every axis but the last, a large float32 `x`'s sums run over rows of several pixels'
    channels (x[rows / k, k * channels], about 512 wide), then over the k: XLA fuses the squared
    deviations into that reduction rather than writing them out for `channel_sum`'s product (a
    CNN's batch-128 inference 13 % faster with YNNPACK, the same without); the statistics are
    within 2e-7 of float64's for 131,072 rows. Gradient sums stay `channel_sum`'s products: with
    their longer fused producers, the reduction was the slower (a CNN's training step 10 %)."""
    count = math.prod(x.shape[i] for i in axes)
    keep = [1 if i in axes else d for i, d in enumerate(x.shape)]
    mean = _wide_sum(x, axes) / count
    return mean, _wide_sum(jnp.square(x - mean.reshape(keep)), axes) / count


def _wide_sum(x, axes):
    """`channel_sum(x, axes)`, as a reduction over rows about 512 wide where it is one (see
    `batch_moments`)."""
    rows, channels = math.prod(x.shape[:-1]), x.shape[-1]
    k = math.gcd(rows, max(1, 512 // max(channels, 1)))  # no channels: one row at a time
    if not _many_rows(x, axes) or k == 1:
        return channel_sum(x, axes)
    return jnp.sum(x.reshape(rows // k, k * channels), axis=0).reshape(k, channels).sum(axis=0)


def _crop_to_reach(w, sizes, pads, strides, dilation):
    """Drops the kernel taps that only ever meet padding (a 3x3 SAME kernel over a 1x1 map uses its
    centre alone), adjusting the padding so the output is unchanged."""
    for axis, (n, (lo, hi), s, d) in enumerate(zip(sizes, pads, strides, dilation)):
        k = w.shape[axis]
        out = _out_size(n, lo, hi, k, d, s)
        taps = [t for t in range(k) if any(0 <= o * s - lo + t * d < n for o in range(out))]
        if not taps or (taps[0], taps[-1]) == (0, k - 1):
            continue
        first, last = taps[0], taps[-1]
        w = lax.slice_in_dim(w, first, last + 1, axis=axis)
        pads = [*pads[:axis], (lo - first * d, hi - (k - 1 - last) * d), *pads[axis + 1:]]
    return w, pads


def _conv_builder(node, rank: int, depthwise: bool = False, channels_first: bool | None = None):
    """Parses a Conv2D/Conv3D/DepthwiseConv2dNative node (or, given `channels_first`, a node whose
    layout its caller has read: `Conv`'s); returns (conv(x, w), channels_first)."""
    if channels_first is None:
        _, cf = _layout(node, "NHWC" if rank == 4 else "NDHWC", rank)
    else:
        cf = channels_first
    strides = node.attr_ints("strides")
    dilations = node.attr_ints("dilations", []) or [1] * rank  # Conv's default is [] (all ones)
    for name, values in (("strides", strides), ("dilations", dilations)):
        if len(values) != rank:
            raise GraphError(f"node {node.name!r} ({node.type}): {name} {values} must have {rank} entries, one per "
                             f"dimension of the input")
    _check_unit(node, "strides", strides, cf)
    _check_unit(node, "dilations", dilations, cf)
    padding, explicit = _padding_attr(node)
    sp_strides, sp_dil = _spatial(strides, cf), _spatial(dilations, cf)
    if explicit is not None:
        explicit = _spatial(explicit, cf)
    spatial = "HW" if rank == 4 else "DHW"
    lhs = ("NC" + spatial) if cf else ("N" + spatial + "C")
    dn = (lhs, spatial + "IO", lhs)
    nsp = rank - 2

    def conv(x, w):
        sizes = _spatial(list(x.shape), cf)
        groups = 1
        if depthwise:
            # [H, W, in, multiplier] -> [H, W, 1, in * multiplier]: output channel c * mult + m.
            groups = w.shape[-2]
            w = jnp.reshape(w, (*w.shape[:-2], 1, w.shape[-2] * w.shape[-1]))
        else:
            in_ch = x.shape[1] if cf else x.shape[-1]
            groups = in_ch // w.shape[-2]  # TF allows grouped convolutions through Conv2D
        pads = _tf_pads(padding, sizes, w.shape[:nsp], sp_strides, sp_dil, explicit)
        return convolve(x, w, sp_strides, pads, sp_dil, dn, groups)

    return conv, cf


@register("Conv2D")
def _conv2d(node):
    conv, _ = _conv_builder(node, 4)
    return conv


@register("Conv3D")
def _conv3d(node):
    conv, _ = _conv_builder(node, 5)
    return conv


@register("DepthwiseConv2dNative")
def _depthwise_conv2d(node):
    conv, _ = _conv_builder(node, 4, depthwise=True)
    return conv


_CONV_LAYOUTS = {"CHANNELS_LAST": False, "CHANNELS_FIRST": True}


@register("Conv")
def _conv(node):
    """TF's generic convolution (`tf.raw_ops.Conv`): Conv2D's or Conv3D's over `batch_dims` leading
    batch dimensions (0: one example without a batch dimension), flattened into one around the
    convolution as TF's kernel does. The number of spatial dimensions (2 or 3) is `len(strides) - 2`.

    TF's CPU kernel runs CHANNELS_LAST only (jaxmeta runs CHANNELS_FIRST too, as it does NCHW
    Conv2D), and no TF kernel runs `groups` > 1, which TF's shape function types as Conv2D's grouped
    convolution (the filter [..., in_channels / groups, out_channels]): jaxmeta runs it as that.
    """
    where = f"node {node.name!r} ({node.type})"
    fmt = node.attr_str("data_format", "CHANNELS_LAST")
    if fmt not in _CONV_LAYOUTS:
        raise GraphError(f"{where}: data_format {fmt!r} is not supported (CHANNELS_LAST or CHANNELS_FIRST)")
    cf = _CONV_LAYOUTS[fmt]
    rank = len(node.attr_ints("strides"))  # spatial dimensions + 2
    if rank not in (4, 5):
        raise GraphError(f"{where}: strides must have 4 or 5 entries (a convolution over 2 or 3 spatial dimensions, "
                         f"as TF's kernel runs), not {rank}")
    padding, explicit = _padding_attr(node)
    if explicit is not None:
        if rank == 5:
            raise GraphError(f"{where}: EXPLICIT padding of a 3-D convolution is not supported (TF rejects it too); "
                             "pad the input with Pad instead")
        outer = [explicit[0], explicit[1] if cf else explicit[-1]] if len(explicit) == rank else []
        if len(explicit) != rank or min(min(pair) for pair in explicit) < 0 or any(max(pair) for pair in outer):
            raise GraphError(f"{where}: explicit_paddings {node.attr_ints('explicit_paddings')} must hold {2 * rank} "
                             "nonnegative entries, zero in the batch and channel dimensions")
    batch_dims, groups = node.attr_int("batch_dims", 1), node.attr_int("groups", 1)
    if batch_dims < 0 or groups < 1:
        raise GraphError(f"{where}: batch_dims {batch_dims} must be >= 0 and groups {groups} >= 1")
    conv, _ = _conv_builder(node, rank, channels_first=cf)

    def fn(x, w):
        if np.ndim(x) != batch_dims + rank - 1 or np.ndim(w) != rank:
            raise GraphError(f"{where}: an input of rank {np.ndim(x)} and a filter of rank {np.ndim(w)} do not make a "
                             f"{rank - 2}-D convolution over {batch_dims} batch dimensions (ranks "
                             f"{batch_dims + rank - 1} and {rank})")
        batch = x.shape[:batch_dims]
        x = jnp.reshape(x, (math.prod(batch), *x.shape[batch_dims:]))
        channels = x.shape[1 if cf else -1]
        if channels != groups * w.shape[-2] or w.shape[-1] % groups:
            raise GraphError(f"{where}: a filter of shape {tuple(w.shape)} does not fit an input of {channels} channels "
                             f"in {groups} group(s): its input channels must be the input's over the groups, its "
                             "output channels a multiple of the groups")
        y = conv(x, w)
        if x.size == 0 or y.size == 0:
            # TF's kernel returns an empty output, and an empty input's padding convolved (zeros),
            # before it restores the batch dimensions (which its shape function promises).
            return y
        return jnp.reshape(y, (*batch, *y.shape[1:]))

    return fn


def _transpose_of(conv, cf: bool, node):
    """The input-gradient of `conv` (a transposed convolution), for a static input shape."""

    def fn(input_sizes, w, dy):
        shape = tuple(static_ints(input_sizes, node, "input_sizes"))
        if len(shape) == dy.ndim - 2:  # spatial sizes only: batch from dy, channels from the filter
            shape = (dy.shape[0], w.shape[-2], *shape) if cf else (dy.shape[0], *shape, w.shape[-2])
        # conv is linear in x, so its VJP at any point is the transposed convolution. JAX does
        # not differentiate integers: those (TF has int32 kernels) go through floats.
        dtype = np.dtype(dy.dtype)
        exact = jnp.issubdtype(dtype, jnp.inexact)
        work = dtype if exact else np.dtype(jax.dtypes.canonicalize_dtype(np.float64))
        _, vjp = jax.vjp(lambda x: conv(x, w.astype(work)), jnp.zeros(shape, work))
        out = vjp(dy.astype(work))[0]
        return out if exact else jnp.round(out).astype(dtype)

    return fn


@register("Conv2DBackpropInput")
def _conv2d_backprop_input(node):
    return _transpose_of(*_conv_builder(node, 4), node)


@register("Conv2DBackpropInputV2")
def _conv2d_backprop_input_v2(node):
    # Takes the input tensor itself in place of its shape (only the shape matters). TF 2.21 has
    # no CPU kernel for it, nor an XLA one.
    fn = _transpose_of(*_conv_builder(node, 4), node)
    return lambda x, w, dy: fn(np.asarray(np.shape(x)), w, dy)


@register("DepthwiseConv2dNativeBackpropInput")
def _depthwise_backprop_input(node):
    return _transpose_of(*_conv_builder(node, 4, depthwise=True), node)


@register("Conv3DBackpropInputV2")
def _conv3d_backprop_input_v2(node):
    return _transpose_of(*_conv_builder(node, 5), node)


@register("Conv3DBackpropInput")
def _conv3d_backprop_input(node):
    # V1 takes the input tensor itself (only its shape matters).
    fn = _transpose_of(*_conv_builder(node, 5), node)
    return lambda x, w, dy: fn(np.asarray(x.shape), w, dy)


def _fused_conv_pads(n: int, k: int, s: int, padding: str) -> tuple[int, int]:
    """The (before, after) zero padding (negative: cropping) that places a fused convolution's
    windows as TF's FusedResizeConv2DUsingGemmOp does: it offsets them by the excess of their reach
    over `n` halved (VALID: plus one), with C's truncation toward zero. That is Conv2D's placement
    except where strides leave rows unread (an excess of -2 or less with SAME, -3 or less with
    VALID): the windows then start a row (or more) into the image, not at its first row."""
    out = -(-n // s) if padding == "SAME" else (n - k) // s + 1
    excess = (out - 1) * s + k - n
    offset = int((excess + (padding == "VALID")) / 2)
    return offset, excess - offset


def _fused_pad_conv(resize: bool):
    """Builder of FusedPadConv2D(input, paddings, filter) and FusedResizeAndPadConv2D(input, size,
    paddings, filter), which TF's graph-transform tool (fold_old_batch_norms / fuse_pad_and_conv,
    fuse_resize_pad_and_conv) makes of ResizeBilinear -> MirrorPad -> Conv2D: NHWC, the image
    resized as ResizeBilinear resizes it (half_pixel_centers off), in the input's type, then
    mirror-padded along its rows and columns (REFLECT or SYMMETRIC), then convolved.

    Deliberately not TF-exact for batches of several images: TF's kernel keeps the resized and
    padded rows in a cache that it does not refill for the second image on, so every image gets
    the first one's result (all of it while the cache holds the whole image). jaxmeta convolves
    each image; the tool's graphs (mobile inference) run one image at a time."""

    def build(node):
        strides = node.attr_ints("strides")
        if len(strides) != 4:
            raise GraphError(f"node {node.name!r} ({node.type}): strides {strides} must have 4 entries")
        _check_unit(node, "strides", strides, False)
        padding = node.attr_str("padding")
        if padding not in ("SAME", "VALID"):
            raise GraphError(f"node {node.name!r} ({node.type}): padding {padding!r} is not supported")
        mode = node.attr_str("mode")
        if mode not in ("REFLECT", "SYMMETRIC"):
            raise GraphError(f"node {node.name!r} ({node.type}): mode {mode!r} is not REFLECT or SYMMETRIC")
        align = node.attr_bool("resize_align_corners", False) if resize else False

        def fn(x, *args):
            size, paddings, w = args if resize else (None, *args)
            x, w = jnp.asarray(x), jnp.asarray(w)
            if x.ndim != 4 or w.ndim != 4 or w.shape[2] != x.shape[3]:
                raise GraphError(f"node {node.name!r} ({node.type}): input {x.shape} must be NHWC and filter "
                                 f"{w.shape} [rows, cols, input channels, output channels]")
            if resize:
                out_h, out_w = static_ints(size, node, "size", 2)
                resized = _linear_axis(x, x.shape[2], out_w, 2, align, False)  # along x first, as TF
                x = _linear_axis(resized, x.shape[1], out_h, 1, align, False).astype(x.dtype)  # (float16: float32)
            pads = _paddings(node, paddings, 4)
            reach = x.shape if mode == "SYMMETRIC" else [d - 1 for d in x.shape]
            if pads[0] != (0, 0) or pads[3] != (0, 0) or any(min(p) < 0 or max(p) > r for p, r in zip(pads, reach)):
                raise GraphError(f"node {node.name!r} ({node.type}): paddings {pads} must pad only the rows and "
                                 f"columns of the (resized) image {x.shape}, by at most its size ({mode} less one)")
            x = jnp.pad(x, pads, mode=mode.lower())
            window = [_fused_conv_pads(n, k, s, padding) for n, k, s in zip(x.shape[1:3], w.shape[:2], strides[1:3])]
            x = lax.pad(x, np.zeros((), x.dtype), [(0, 0, 0), *((lo, hi, 0) for lo, hi in window), (0, 0, 0)])
            return convolve(x, w, strides[1:3], "VALID", (1, 1), ("NHWC", "HWIO", "NHWC"))

        return fn

    return build


register("FusedPadConv2D")(_fused_pad_conv(False))
register("FusedResizeAndPadConv2D")(_fused_pad_conv(True))


# -- pooling --------------------------------------------------------------------------------------


def _pool_attrs(node, rank: int, ksize=None, strides=None):
    default = "NHWC" if rank == 4 else "NDHWC"
    _, cf = _layout(node, default, rank)
    padding, explicit = _padding_attr(node)
    if padding == "EXPLICIT" and node.type != "MaxPool":  # only MaxPool has explicit padding
        raise GraphError(f"node {node.name!r} ({node.type}): padding {padding!r} is not supported")
    if ksize is not None:
        _check_unit(node, "ksize", ksize, cf)
        _check_unit(node, "strides", strides, cf)
    return cf, padding, explicit and _spatial(explicit, cf)


def _pool(x, kind: str, ksize: list[int], strides: list[int], padding: str, cf: bool, explicit=None):
    """Max or average pooling with TF's padding; `ksize`/`strides` are full rank."""
    sizes = _spatial(list(x.shape), cf)
    ones = [1] * len(sizes)
    sp_pads = _tf_pads(padding, sizes, _spatial(ksize, cf), _spatial(strides, cf), ones, explicit)
    pads = _full(sp_pads, cf, (0, 0))
    if kind == "max":
        x, finish = _tf_max_inputs(x)
        return finish(window_reduce(x, "max", ksize, strides, pads))
    total = window_reduce(x, "sum", ksize, strides, pads)
    return total / window_counts(x.shape, ksize, strides, pads).astype(x.dtype)


def _tf_max_inputs(x):
    """TF's max pools compare with `>` from the dtype's lowest finite value: a NaN never wins a
    window and a window of NaN or -inf alone gives that lowest value. Returns `x` with NaN as -inf
    and the function that lifts the pooled result to at least the lowest value."""
    if not jnp.issubdtype(x.dtype, jnp.floating):
        return x, lambda out: out
    lowest = np.array(jnp.finfo(x.dtype).min, x.dtype)
    return jnp.where(jnp.isnan(x), np.array(-np.inf, x.dtype), x), lambda out: jnp.maximum(out, lowest)


def window_reduce(x, kind: str, window, strides, pads):
    """`lax.reduce_window`'s max or sum of `x` over full-rank `window` and `strides` with (low,
    high) `pads`, as elementwise maxima or sums of strided slices, one axis at a time (an axis
    whose one window spans it all is reduced directly): XLA's CPU `reduce_window` is 2-7x slower
    for pools (a CNN's 2x2 max pools: 5.2 vs 0.7 ms without YNNPACK; Inception-v3's 3x3 ones).
    Sums may round differently from `reduce_window`'s. A floating max differentiates as
    `reduce_window`'s does: each window's gradient goes to its first maximum."""
    window, strides = tuple(int(k) for k in window), tuple(int(s) for s in strides)
    pads = tuple((int(lo), int(hi)) for lo, hi in pads)
    if any(n + lo + hi < k for n, k, (lo, hi) in zip(x.shape, window, pads)):  # no whole window: empty
        return lax.reduce_window(x, window_identity(kind, x.dtype), lax.max if kind == "max" else lax.add,
                                 window, strides, pads)
    if kind == "max" and jnp.issubdtype(x.dtype, jnp.floating):
        return _window_max(x, window, strides, pads)
    return _sliced_reduce(x, kind, window, strides, pads)


def window_identity(kind: str, dtype) -> np.ndarray:
    """The value a window's max or sum starts from (and padding holds): 0, or the dtype's lowest."""
    if kind == "sum":
        return np.array(0, dtype)
    return np.array(-np.inf if jnp.issubdtype(dtype, jnp.floating) else jnp.iinfo(dtype).min, dtype)


def _sliced_reduce(x, kind: str, window, strides, pads):
    op = lax.max if kind == "max" else lax.add
    init = window_identity(kind, x.dtype)
    if any(p != (0, 0) for p in pads):
        x = lax.pad(x, init, [(lo, hi, 0) for lo, hi in pads])
    for axis, (k, s) in enumerate(zip(window, strides)):
        n = (x.shape[axis] - k) // s + 1
        if k == x.shape[axis] and k > 1:
            x = jnp.expand_dims(lax.reduce(x, init, op, (axis,)), axis)
        elif k > 1 or s > 1:
            x = functools.reduce(op, [lax.slice_in_dim(x, t, t + (n - 1) * s + 1, s, axis) for t in range(k)])
    return x


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3))
def _window_max(x, window, strides, pads):
    return _sliced_reduce(x, "max", window, strides, pads)


@_window_max.defjvp
def _window_max_jvp(window, strides, pads, primals, tangents):
    (x,), (dx,) = primals, tangents
    return _window_max(x, window, strides, pads), max_pool_tangent(x, dx, window, strides, pads)


def max_pool_tangent(x, dx, window, strides, pads):
    """The tangent of a max pool of `x` along `dx`: each window's `dx` at its first maximum."""
    windows, hit, axis = first_maxima(x, window, strides, pads)
    return jnp.sum(jnp.where(hit, windows(dx), jnp.zeros((), dx.dtype)), axis)


def first_maxima(x, window, strides, pads):
    """Where each window of a max pool over `x` has its first maximum in row-major window order
    (TF's CPU tie rule, and `reduce_window`'s): `(windows, hit, axis)`, with `windows(v)` the
    windows of any `v` shaped like `x` (linear in `v`), `hit` the mask of first maxima over them and
    `axis` the windows' axis. Where the windows tile `x` (strides == window, no padding) they are
    its rows as [outputs..., window size] (transposed, a reshape), else the stacked strided views
    [window size, outputs...] (transposed, pads and adds): XLA's CPU compiles `reduce_window`'s
    derivative into serial scatters, 40x slower for 2x2 pools. A max pool's tangent is
    `sum(where(hit, windows(dx), 0), axis)`, its gradient the transpose of that."""
    x = lax.stop_gradient(x)
    if tuple(strides) == tuple(window) and all(tuple(p) == (0, 0) for p in pads):
        def windows(v):
            return window_tiles(v, window)

        views, axis = windows(x), -1
    else:
        def windows(v):
            return window_views(v, window, strides, pads, 0)

        # padding holds the lowest value: it only wins a window of lowest values, as in XLA's
        # select-and-scatter
        views, axis = window_views(x, window, strides, pads, window_identity("max", x.dtype)), 0
    first = jnp.expand_dims(jnp.argmax(views, axis=axis), axis)
    hit = first == lax.broadcasted_iota(first.dtype, views.shape, views.ndim - 1 if axis == -1 else 0)
    return windows, hit, axis


def window_tiles(x, window):
    """The windows of a pool whose windows tile `x` (strides == window, no padding) as rows:
    [outputs..., window size], in row-major window order; what lies past the last whole window is
    left out."""
    rank = x.ndim
    out = [n // k for n, k in zip(x.shape, window)]
    tiles = lax.slice(x, (0,) * rank, [m * k for m, k in zip(out, window)])
    tiles = tiles.reshape([d for m, k in zip(out, window) for d in (m, k)])
    # [m0, k0, m1, k1, ...] -> [m0, m1, ..., k0, k1, ...] -> [m0, m1, ..., K]
    tiles = tiles.transpose([2 * i for i in range(rank)] + [2 * i + 1 for i in range(rank)])
    return tiles.reshape(*out, math.prod(window))


def window_views(x, window, strides, pads, fill):
    """Every window position's strided view of `x` padded with `fill`, stacked in row-major
    window order: [window size, outputs...]."""
    xp = lax.pad(x, np.array(fill, x.dtype), [(lo, hi, 0) for lo, hi in pads])
    out = [(n - k) // s + 1 for n, k, s in zip(xp.shape, window, strides)]
    views = []
    for offset in np.ndindex(*window):
        views.append(lax.slice(xp, offset, [o + (m - 1) * s + 1 for o, m, s in zip(offset, out, strides)], strides))
    return jnp.stack(views)


def window_counts(shape, window, strides, pads) -> np.ndarray:
    """How many in-bounds elements each window of a pool over `shape` covers (TF's average pools
    divide by it, not by the window size), as a NumPy constant broadcastable to the pooled shape.
    Computed here rather than as a pool of ones, which XLA constant-folds at compile time in its
    slow evaluator (over a second for each of Inception-v3's 3x3 average pools' gradients)."""
    count = np.ones((), np.float64)
    for n, k, s, (lo, hi) in zip(shape, window, strides, pads):
        start = np.arange((n + lo + hi - k) // s + 1) * s - lo
        per_dim = np.minimum(start + k, n) - np.maximum(start, 0)
        uniform = per_dim.size and np.all(per_dim == per_dim[0])  # one entry broadcasts
        count = np.multiply.outer(count, per_dim[:1] if uniform else per_dim)
    return count


def _pool_op(kind: str, rank: int):
    def build(node):
        ksize, strides = node.attr_ints("ksize"), node.attr_ints("strides")
        cf, padding, explicit = _pool_attrs(node, rank, ksize, strides)
        return lambda x: _pool(x, kind, ksize, strides, padding, cf, explicit)

    return build


register("MaxPool")(_pool_op("max", 4))
register("AvgPool")(_pool_op("avg", 4))
register("MaxPool3D")(_pool_op("max", 5))
register("AvgPool3D")(_pool_op("avg", 5))


@register("MaxPoolV2")
def _max_pool_v2(node):
    cf, padding, _ = _pool_attrs(node, 4)

    def fn(x, ksize, strides):
        ksize = static_ints(ksize, node, "ksize")
        strides = static_ints(strides, node, "strides")
        _check_unit(node, "ksize", ksize, cf)
        _check_unit(node, "strides", strides, cf)
        return _pool(x, "max", ksize, strides, padding, cf)

    return fn


@register("MaxPoolWithArgmax")
def _max_pool_with_argmax(node):
    """MaxPoolWithArgmax (NHWC): the max and the flat index of the (first) maximum of each window.

    The index is `(y * width + x) * channels + c`, plus `b * height * width * channels` when
    `include_batch_in_index` is set (TF's convention).
    """
    ksize, strides = node.attr_ints("ksize"), node.attr_ints("strides")
    _check_unit(node, "ksize", ksize, False)
    _check_unit(node, "strides", strides, False)
    padding = node.attr_str("padding")
    if padding not in ("SAME", "VALID"):
        raise GraphError(f"node {node.name!r} ({node.type}): padding {padding!r} is not supported")
    with_batch = node.attr_bool("include_batch_in_index", False)
    index_dtype = jax.dtypes.canonicalize_dtype(node.attr_dtype("Targmax", np.dtype(np.int64)))
    (kh, kw), (sh, sw) = ksize[1:3], strides[1:3]

    def fn(x):
        n, h, w, c = x.shape
        (pt, _), (pl, _) = _tf_pads(padding, (h, w), (kh, kw), (sh, sw), (1, 1))
        oh = -(-h // sh) if padding == "SAME" else (h - kh) // sh + 1
        ow = -(-w // sw) if padding == "SAME" else (w - kw) // sw + 1
        ys = (np.arange(oh) * sh - pt)[:, None, None, None] + np.arange(kh)[None, None, :, None]
        xs = (np.arange(ow) * sw - pl)[None, :, None, None] + np.arange(kw)[None, None, None, :]
        valid = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)  # [oh, ow, kh, kw]
        patches = x[:, np.clip(ys, 0, h - 1), np.clip(xs, 0, w - 1), :]  # [n, oh, ow, kh, kw, c]
        patches = jnp.where(valid[None, ..., None], patches, window_identity("max", x.dtype))
        patches = patches.reshape(n, oh, ow, kh * kw, c)
        # TF's kernel takes each window's first tap, then any strictly greater one: a NaN first
        # tap stays, a later NaN never wins, and a window of -inf answers its first tap.
        first = np.argmax(valid.reshape(oh, ow, kh * kw), axis=-1)[None, :, :, None]  # [1, oh, ow, 1]
        if jnp.issubdtype(x.dtype, jnp.floating):
            head = jnp.take_along_axis(patches, first[..., None], axis=3)[:, :, :, 0]
            ranked = jnp.where(jnp.isnan(patches), -jnp.inf, patches)
            k = jnp.argmax(ranked, axis=3)
            out = jnp.max(ranked, axis=3)
            keep_first = jnp.isnan(head) | (out == -jnp.inf)
            k = jnp.where(keep_first, first, k)
            out = jnp.where(jnp.isnan(head), head, out)
        else:
            k = jnp.argmax(patches, axis=3)  # the first maximum, as TF's strict `>` scan
            out = jnp.max(patches, axis=3)
        flat = (ys * w + xs).reshape(oh, ow, kh * kw)  # [oh, ow, kh*kw]
        idx = jnp.take_along_axis(jnp.asarray(flat)[None, :, :, :, None], k[:, :, :, None, :], axis=3)[
            :, :, :, 0
        ]
        idx = idx * c + jnp.arange(c)[None, None, None, :]
        if with_batch:
            idx = idx + (jnp.arange(n) * (h * w * c))[:, None, None, None]
        return out, idx.astype(index_dtype)

    return fn



# -- fractional pools (Graham's fractional max pooling) -------------------------------------------


def pooling_sequence(key, n_in: int, n_out: int, pseudo_random: bool):
    """TF's `GeneratePoolingSequence`: `n_out + 1` window boundaries from 0 to `n_in` whose gaps
    are `n_in // n_out` or one more, in random order, or (pseudo-random) at `ceil(alpha * (i + u))`
    for one random `u` (computed as `q + ceil(r / n_out + alpha * u)` with `alpha * i = q + r / n_out`
    exact, so the boundaries do not depend on float rounding). `key` is called for only when
    `n_out` does not divide `n_in`."""
    k, extra = divmod(n_in, n_out)
    if extra == 0:  # every gap is k, whatever is drawn: no key needed
        return np.arange(0, n_in + 1, k, dtype=np.int32)
    ends = jnp.full((1,), n_in, jnp.int32)
    if pseudo_random:
        alpha = n_in / n_out
        max_u = min((k + 2) / alpha - 1, (n_in + 1 - k) / alpha - (n_out - 1))
        t = jax.random.uniform(key, (), jnp.float32) * np.float32(max_u * alpha)
        q, r = np.divmod(n_in * np.arange(1, n_out), n_out)
        inner = q + jnp.ceil(np.float32(r / n_out) + t).astype(jnp.int32) - 1
        return jnp.concatenate([jnp.zeros((1,), jnp.int32), inner.astype(jnp.int32), ends])
    gaps = jax.random.permutation(key, np.repeat(np.int32([k + 1, k]), [extra, n_out - extra]))
    return jnp.concatenate([jnp.zeros((1,), jnp.int32), jnp.cumsum(gaps).astype(jnp.int32)])


def fractional_windows(x, rows, cols, overlapping: bool, max_gaps: tuple[int, int]):
    """The windows of a fractional pool over `x` (NHWC) between the boundaries `rows` and `cols`:
    `(patches, valid)` shaped [batch, out rows, out cols, channels, window] with each window in
    row-major order. A window spans a gap (and the next boundary's row/column when `overlapping`,
    but not past the input); `max_gaps` bounds the gaps (TF's sequences: `n_in // n_out + 1`)."""

    def along(seq, n_in, gap):
        seq = jnp.asarray(seq).astype(jnp.int32)
        end = jnp.minimum(seq[1:] - (0 if overlapping else 1), n_in - 1)
        index = seq[:-1, None] + jnp.arange(gap + int(overlapping))[None]
        return jnp.clip(index, 0, n_in - 1), index <= end[:, None]

    (r_index, r_valid), (c_index, c_valid) = along(rows, x.shape[1], max_gaps[0]), along(cols, x.shape[2], max_gaps[1])
    patches = x[:, r_index][:, :, :, c_index]  # [batch, out rows, row window, out cols, col window, channels]
    batch, n_r, l_r, n_c, l_c, channels = patches.shape
    patches = jnp.transpose(patches, (0, 1, 3, 5, 2, 4)).reshape(batch, n_r, n_c, channels, l_r * l_c)
    valid = r_valid[:, None, :, None] & c_valid[None, :, None, :]  # [out rows, out cols, row window, col window]
    return patches, valid.reshape(1, n_r, n_c, 1, l_r * l_c)


def fractional_max(x, rows, cols, overlapping: bool, max_gaps: tuple[int, int]):
    """Each window's first maximum in row-major order (TF's strict `<` scan), taken from `x`, so
    that a gradient reaches that element only, as in TF's FractionalMaxPoolGrad."""
    patches, valid = fractional_windows(x, rows, cols, overlapping, max_gaps)
    ranked = jnp.where(valid, lax.stop_gradient(patches), window_identity("max", x.dtype))
    first = jnp.argmax(ranked, axis=-1)[..., None]
    return jnp.take_along_axis(patches, first, axis=-1)[..., 0]


def fractional_mean(x, rows, cols, overlapping: bool, max_gaps: tuple[int, int]):
    """Each window's mean (integers: its sum divided with truncation, as Eigen divides)."""
    patches, valid = fractional_windows(x, rows, cols, overlapping, max_gaps)
    total = jnp.sum(jnp.where(valid, patches, jnp.zeros((), x.dtype)), axis=-1)
    count = jnp.sum(valid, axis=-1).astype(x.dtype)
    return lax.div(total, count) if jnp.issubdtype(x.dtype, jnp.integer) else total / count


def _fractional_pool(reduce):
    """Builder of FractionalMaxPool / FractionalAvgPool: `(output, row boundaries, column
    boundaries)`. The boundaries are drawn from the call's key, or, for `deterministic` ops with
    seeds, from a key made of the seeds (the same sequences on every call, no key needed); at
    integer ratios they are fixed and need no key either."""

    def build(node):
        ratio = node.attr_floats("pooling_ratio")
        if len(ratio) != 4 or ratio[0] != 1 or ratio[3] != 1 or min(ratio) < 1:
            raise GraphError(f"node {node.name!r} ({node.type}): pooling_ratio must be [1, rows, cols, 1] with "
                             f"ratios of at least 1, got {list(ratio)} (TF pools neither the batch nor the channels)")
        pseudo, overlapping = node.attr_bool("pseudo_random", False), node.attr_bool("overlapping", False)
        seeds = (node.attr_int("seed", 0), node.attr_int("seed2", 0))
        fixed = node.attr_bool("deterministic", False) and any(seeds)

        def fn(ctx, x):
            x = jnp.asarray(x)
            if x.ndim != 4:
                raise GraphError(f"node {node.name!r} ({node.type}): the input must be NHWC, got shape {x.shape}")
            outs = [int(np.floor(np.float32(n) / np.float32(r))) for n, r in zip(x.shape[1:3], ratio[1:3])]
            if any(n < r for n, r in zip(x.shape[1:3], ratio[1:3])) or min(outs) < 1:
                raise GraphError(f"node {node.name!r} ({node.type}): pooling ratios {list(ratio)} exceed the "
                                 f"input's rows and columns {x.shape[1:3]}")
            keys = (None, None)
            if any(n % m for n, m in zip(x.shape[1:3], outs)):
                key = jax.random.fold_in(jax.random.key(seeds[0]), seeds[1]) if fixed else ctx.rng(node)
                keys = jax.random.split(key)
            rows = pooling_sequence(keys[0], x.shape[1], outs[0], pseudo)
            cols = pooling_sequence(keys[1], x.shape[2], outs[1], pseudo)
            gaps = (x.shape[1] // outs[0] + 1, x.shape[2] // outs[1] + 1)
            index = jax.dtypes.canonicalize_dtype(np.int64)
            return reduce(x, rows, cols, overlapping, gaps), rows.astype(index), cols.astype(index)

        return fn

    return build


register("FractionalMaxPool", random=True, context=True)(_fractional_pool(fractional_max))
register("FractionalAvgPool", random=True, context=True)(_fractional_pool(fractional_mean))

# -- bias, normalization --------------------------------------------------------------------------


@register("BiasAdd")
def _bias_add(node):
    nchw = node.attr_str("data_format", "NHWC") in ("NCHW", "NCDHW", "NCW")

    def fn(x, bias):
        if nchw:
            # TF's NCHW BiasAdd adds along axis 1, not the last axis.
            bias = jnp.reshape(bias, (-1,) + (1,) * (x.ndim - 2))
            bias = jnp.broadcast_to(bias, x.shape[1:])
        return x + jnp.broadcast_to(bias, x.shape)

    return fn


@register("BiasAddV1")
def _bias_add_v1(node):
    return lambda x, bias: x + jnp.broadcast_to(bias, x.shape)


@register("FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3")
def _fused_batch_norm(node):
    """FusedBatchNorm{,V2,V3}: y plus (running) mean/variance and reserve spaces.

    Inference (`is_training=False`) normalizes with the given mean/variance and passes them
    through. Training normalizes with the batch's (biased) variance but, as TF, outputs the
    *unbiased* (Bessel-corrected) variance; with V3's `exponential_avg_factor` f != 1 the
    outputs are `(1 - f) * running + f * batch`. Reserve spaces hold the batch mean and the
    biased variance (V3's third one is empty, as on TF's CPU).
    """
    fmt = node.attr_str("data_format", "NHWC")
    if fmt not in ("NHWC", "NCHW", "NDHWC", "NCDHW"):
        raise GraphError(f"node {node.name!r} ({node.type}): data_format {fmt!r} is not supported")
    cf = fmt.startswith("NC")
    eps = node.attr_float("epsilon", 1e-4)
    training = node.attr_bool("is_training", True)
    factor = node.attr_float("exponential_avg_factor", 1.0)
    v3 = node.type == "FusedBatchNormV3"

    def fn(x, scale, offset, mean, variance):
        axis = 1 if cf else x.ndim - 1
        axes = tuple(i for i in range(x.ndim) if i != axis)
        shape = [1] * x.ndim
        shape[axis] = x.shape[axis]
        xf = x.astype(jnp.float32)
        if training:
            count = math.prod(x.shape) // x.shape[axis]
            batch_mean, batch_var = batch_moments(xf, axes)
            m, v = batch_mean, batch_var
            unbiased = batch_var * (count / max(count - 1, 1))
            if factor != 1.0:
                out_mean = (1.0 - factor) * mean + factor * batch_mean
                out_var = (1.0 - factor) * variance + factor * unbiased
            else:
                out_mean, out_var = batch_mean, unbiased
            reserve = (batch_mean, batch_var)
        else:
            m, v = mean, variance
            out_mean, out_var = mean, variance
            reserve = (mean, variance)
        inv = lax.rsqrt(v + eps) * scale
        y = (xf - m.reshape(shape)) * inv.reshape(shape) + offset.reshape(shape)
        outs = (y.astype(x.dtype), out_mean, out_var, *reserve)
        if v3:
            outs = (*outs, jnp.zeros((0,), jnp.float32))
        return outs

    return fn


@register("BatchNormWithGlobalNormalization")
def _batch_norm_global(node):
    """The pre-FusedBatchNorm op of old graphs: `(t - m) / sqrt(v + eps) * gamma + beta`."""
    eps = node.attr_float("variance_epsilon")
    scale_after = node.attr_bool("scale_after_normalization")

    def fn(t, m, v, beta, gamma):
        inv = lax.rsqrt(v + eps)
        if scale_after:
            inv = inv * gamma
        return (t - jnp.broadcast_to(m, t.shape)) * jnp.broadcast_to(inv, t.shape) + jnp.broadcast_to(
            beta, t.shape
        )

    return fn


def lrn_config(node) -> tuple[int, float, float, float]:
    """An LRN or LRNGrad node's (depth_radius, bias, alpha, beta), with TF's defaults."""
    return (node.attr_int("depth_radius", 5), node.attr_float("bias", 1.0), node.attr_float("alpha", 1.0),
            node.attr_float("beta", 0.5))


@register("LRN")
def _lrn(node):
    """Local response normalization over the last axis: `x / (bias + alpha * sum(x^2)) ** beta`."""
    r, bias, alpha, beta = lrn_config(node)

    def fn(x):
        window = (1,) * (x.ndim - 1) + (2 * r + 1,)
        pads = ((0, 0),) * (x.ndim - 1) + ((r, r),)
        sq = lax.reduce_window(jnp.square(x), np.array(0, x.dtype), lax.add, window, (1,) * x.ndim, pads)
        return x / (bias + alpha * sq) ** beta

    return fn


# -- activations ----------------------------------------------------------------------------------


def _leaky_relu(node):
    alpha = node.attr_float("alpha", 0.2)
    return lambda x: jnp.where(x > 0, x, x * jnp.asarray(alpha, x.dtype))


def _relu(x):
    if jnp.issubdtype(x.dtype, jnp.integer):
        return jnp.maximum(x, 0)
    return jax.nn.relu(x)  # gradient 0 at 0, as TF's ReluGrad


def _relu6(x):
    if jnp.issubdtype(x.dtype, jnp.integer):
        return jnp.clip(x, 0, 6)
    return jax.nn.relu6(x)


register_table(
    {
        "Relu": unary(_relu),
        "Relu6": unary(_relu6),
        "Elu": unary(lambda x: jnp.where(x > 0, x, jnp.expm1(jnp.minimum(x, 0)))),
        "Selu": unary(jax.nn.selu),
        "Softplus": unary(jax.nn.softplus),
        "Softsign": unary(lambda x: x / (1 + jnp.abs(x))),
        "Softmax": unary(lambda x: jax.nn.softmax(x, axis=-1)),
        "LogSoftmax": unary(lambda x: jax.nn.log_softmax(x, axis=-1)),
        "L2Loss": unary(lambda x: jnp.sum(jnp.square(x)) / 2),
        "LeakyRelu": _leaky_relu,
    }
)


# -- losses and metrics ---------------------------------------------------------------------------


@register("SoftmaxCrossEntropyWithLogits")
def _softmax_xent(node):
    """(loss, backprop) = (-sum(labels * log_softmax(logits)), softmax(logits) - labels)."""

    def fn(logits, labels):
        logits, labels = broadcast_ranks(logits, labels)
        shape = jnp.broadcast_shapes(logits.shape, labels.shape)
        logits, labels = jnp.broadcast_to(logits, shape), jnp.broadcast_to(labels, shape)
        logp = jax.nn.log_softmax(logits, axis=-1)
        return -jnp.sum(labels * logp, axis=-1), jnp.exp(logp) - labels

    return fn


@register("SparseSoftmaxCrossEntropyWithLogits")
def _sparse_softmax_xent(node):
    """Like SoftmaxCrossEntropyWithLogits with one-hot labels. An out-of-range label raises where
    the labels are known (no jit), as TF's CPU kernel does, and gives NaN under jit (TF's GPU)."""

    def fn(logits, labels):
        n = logits.shape[-1]
        checked_indices(node, labels, n, "labels")
        logp = jax.nn.log_softmax(logits, axis=-1)
        onehot = jax.nn.one_hot(labels, n, dtype=logits.dtype)
        bad = (labels < 0) | (labels >= n)
        loss = -jnp.sum(onehot * logp, axis=-1)
        loss = jnp.where(bad, jnp.nan, loss)
        backprop = jnp.where(bad[..., None], jnp.nan, jnp.exp(logp) - onehot)
        return loss, backprop

    return fn


def _in_top_k(predictions, targets, k):
    n = predictions.shape[-1]
    valid = (targets >= 0) & (targets < n)
    t = jnp.clip(targets, 0, n - 1).astype(jnp.int32)
    target = jnp.take_along_axis(predictions, t[:, None], axis=1)
    # In the top k when fewer than k predictions are strictly larger (ties count as in).
    larger = jnp.sum(predictions > target, axis=1)
    return valid & jnp.isfinite(target[:, 0]) & (larger < k)


@register("InTopK")
def _in_top_k_op(node):
    k = node.attr_int("k")
    return lambda predictions, targets: _in_top_k(predictions, targets, k)


@register("InTopKV2")
def _in_top_k_v2(node):
    return lambda predictions, targets, k: _in_top_k(predictions, targets, k)


# -- isotonic regression --------------------------------------------------------------------------


def _pava_row(y):
    """TF's pool-adjacent-violators scan of one row: each element starts a pool (its sum, mean and
    first column on a stack); while the last pool's mean exceeds the one before it, the two merge
    (the sums added in that order, the mean their sum over the count, in y's type). Returns the
    pools' means per element and the elements' pool ids. Lax loops: it traces, so it runs under
    jax.jit, in as many steps as the row has elements (and merges)."""
    n = y.shape[0]

    def push(j, stack):
        sums, means, starts, top = stack
        sums, means, starts = sums.at[top].set(y[j]), means.at[top].set(y[j]), starts.at[top].set(j)

        def violated(stack):
            _, means, _, top = stack
            return (top > 1) & (means[top - 1] > means[top - 2])

        def merge(stack):
            sums, means, starts, top = stack
            total = sums[top - 2] + sums[top - 1]
            count = (j + 1 - starts[top - 2]).astype(y.dtype)
            return sums.at[top - 2].set(total), means.at[top - 2].set(total / count), starts, top - 1

        return lax.while_loop(violated, merge, (sums, means, starts, top + 1))

    stack = (jnp.zeros_like(y), jnp.zeros_like(y), jnp.zeros(n, jnp.int32), jnp.int32(0))
    _, means, starts, top = lax.fori_loop(0, n, push, stack)
    pools = jnp.arange(n)
    first = jnp.zeros(n, jnp.int32).at[jnp.where(pools < top, starts, n)].set(1, mode="drop")
    segments = jnp.cumsum(first) - 1
    return means[segments], segments.astype(jnp.int32)


@jax.custom_jvp
def _isotonic(rows):
    return _pava_rows(rows)


# Compiled once per shape: run op by op, lax loops would otherwise trace their bodies every call.
_pava_rows = jax.jit(jax.vmap(_pava_row))


@_isotonic.defjvp
def _isotonic_jvp(primals, tangents):
    """Each output is its pool's mean, so its tangent is the mean of the input tangents over the
    pool (TF's gradient: the incoming gradient averaged over each segment); the pools themselves
    are piecewise constant in the inputs."""
    (rows,), (d_rows,) = primals, tangents
    values, segments = _isotonic(rows)
    count, n = rows.shape
    ids = (segments + jnp.arange(count, dtype=jnp.int32)[:, None] * n).reshape(-1)
    totals = jax.ops.segment_sum(d_rows.reshape(-1), ids, count * n)
    sizes = jax.ops.segment_sum(jnp.ones(count * n, rows.dtype), ids, count * n)
    means = (totals / jnp.maximum(sizes, 1))[ids].reshape(count, n)
    return (values, segments), (means, np.zeros(segments.shape, jax.dtypes.float0))


@register("IsotonicRegression")
def _isotonic_regression(node):
    """`tf.nn.isotonic_regression`'s op: along the last axis, the non-increasing sequence closest to
    the input in squared error (`output`, in `output_dtype`: the input's float type, float32 for
    8- and 16-bit integers, float64 for wider ones) and each element's segment, the run of
    elements that share one value (`segments`, numbered from 0 in each row). TF's increasing
    form and `axis` are negations and transposes around the op."""
    out_dtype = jax.dtypes.canonicalize_dtype(node.attr_dtype("output_dtype", np.dtype(np.float32)))

    def fn(x):
        x = jnp.asarray(x).astype(out_dtype)
        shape = x.shape
        if x.size == 0:
            return x, jnp.zeros(shape, jnp.int32)
        values, segments = _isotonic(x.reshape(-1, shape[-1] if shape else 1))
        return values.reshape(shape), segments.reshape(shape)

    return fn


# -- fake quantization ----------------------------------------------------------------------------


def _nudge(lo, hi, qmin: float, qmax: float):
    """TF's nudged (scale, inverse scale, min, max), so that zero is exactly representable."""
    if static(lo, hi):
        f32, xp = np.float32, np
        lo, hi = np.asarray(lo, f32), np.asarray(hi, f32)
        span = f32(qmax - qmin)
    else:
        f32, xp = jnp.float32, jnp
        lo, hi = lax.stop_gradient(jnp.asarray(lo, f32)), lax.stop_gradient(jnp.asarray(hi, f32))
        # XLA turns division by a constant into multiplication by its reciprocal, which moves
        # exact halves (zero points such as 127.5) by an ulp; the barrier keeps a true division.
        span = lax.optimization_barrier(jnp.asarray(qmax - qmin, f32))
    scale = (hi - lo) / span
    if xp is jnp:  # keep XLA from reassociating lo / ((hi - lo) / span) below
        scale = lax.optimization_barrier(scale)
    inv_scale = span / (hi - lo)  # TF computes the inverse directly, not as 1 / scale
    zp_from_min = f32(qmin) - lo / scale
    # std::round: halves away from zero (zp_from_min is >= qmin >= 0 where it is used).
    zp = xp.where(
        zp_from_min < qmin,
        f32(qmin),
        xp.where(zp_from_min > qmax, f32(qmax), xp.floor(zp_from_min + f32(0.5))),
    )
    return scale, inv_scale, (f32(qmin) - zp) * scale, (f32(qmax) - zp) * scale


def _fake_quant(x, lo, hi, num_bits: int, narrow: bool):
    """TF's fake quantization with its zero-point nudging; gradients as TF's straight-through
    estimator (to x inside [nudged_min, nudged_max], to min below it, to max above it)."""
    qmin = 1.0 if narrow else 0.0
    qmax = float(2**num_bits - 1)
    scale, inv_scale, nmin, nmax = _nudge(lo, hi, qmin, qmax)
    lo, hi = jnp.asarray(lo, jnp.float32), jnp.asarray(hi, jnp.float32)
    x, nmin, nmax, lo, hi, scale, inv_scale = broadcast_ranks(x, nmin, nmax, lo, hi, scale, inv_scale)
    below = lo + lax.stop_gradient(nmin - lo)
    above = hi + lax.stop_gradient(nmax - hi)
    clamped = jnp.where(x < nmin, below, jnp.where(x > nmax, above, x))
    # Distributing inv_scale (c * inv - nmin * inv) reproduces TF's rounding at most exact halves.
    q = jnp.floor(lax.stop_gradient(clamped) * inv_scale - nmin * inv_scale + 0.5) * scale + nmin
    out = clamped + lax.stop_gradient(q - clamped)
    # TF's kernels output zeros where min == max == 0 (an unset range) and pass the gradient through.
    finite = jnp.where(jnp.isfinite(x), x, jnp.zeros((), x.dtype))
    return jnp.where((lo == 0) & (hi == 0), finite - lax.stop_gradient(finite), out)


def _fake_quant_attrs(node):
    return node.attr_int("num_bits", 8), node.attr_bool("narrow_range", False)


@register("FakeQuantWithMinMaxArgs")
def _fake_quant_args(node):
    lo, hi = node.attr_float("min", -6.0), node.attr_float("max", 6.0)
    bits, narrow = _fake_quant_attrs(node)
    return lambda x: _fake_quant(x, np.float32(lo), np.float32(hi), bits, narrow)


@register("FakeQuantWithMinMaxVars")
def _fake_quant_vars(node):
    bits, narrow = _fake_quant_attrs(node)
    return lambda x, lo, hi: _fake_quant(x, lo, hi, bits, narrow)


@register("FakeQuantWithMinMaxVarsPerChannel")
def _fake_quant_vars_per_channel(node):
    bits, narrow = _fake_quant_attrs(node)
    return lambda x, lo, hi: _fake_quant(x, lo, hi, bits, narrow)


def _quantize_and_dequantize(node, x, lo, hi, *, bits: int, signed: bool, range_given: bool, half_up: bool,
                            narrow: bool, axis: int, grad: str):
    """TF's QuantizeAndDequantize kernels: x scaled onto the integer grid of `bits` bits that keeps
    0 exact and covers [lo, hi] (x's own range unless `range_given`, then x is clamped to the range
    as widened to the grid), rounded (half to even, or half up) and scaled back; per slice along
    `axis`, or whole (-1). `grad`: "straight" (V2, V3: TF's gradient passes dy through) or "range"
    (V4: dy where lo <= x <= hi)."""
    x = jnp.asarray(x)
    dtype = x.dtype
    axis, given_lo, given_hi = quantization_range(node, x, axis, lo, hi)
    if range_given:
        lo, hi = given_lo, given_hi
    else:
        axes = tuple(i for i in range(x.ndim) if i != axis)
        lo, hi = (lax.stop_gradient(f(x, axis=axes, keepdims=True)) for f in (jnp.min, jnp.max))
    qmin = (-(2 ** (bits - 1)) + int(narrow)) if signed else 0
    qmax = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    big = jnp.asarray(jnp.finfo(dtype).max, dtype)
    from_min = jnp.where(qmin * lo > 0, qmin / jnp.where(lo == 0, 1, lo), big)
    from_max = jnp.where(qmax * hi > 0, qmax / jnp.where(hi == 0, 1, hi), big)
    use_min = from_min < from_max
    scale = jnp.where(use_min, from_min, from_max)
    inverse = jnp.where(use_min, lo / (qmin or 1), hi / qmax)
    lo, hi = jnp.where(use_min, lo, qmin * inverse), jnp.where(use_min, qmax * inverse, hi)
    v = jnp.clip(x, lo, hi) if range_given else x
    scaled = v * scale
    out = (jnp.floor(scaled + jnp.asarray(0.5, dtype)) if half_up else jnp.round(scaled)) * inverse
    through = x
    if grad == "range":
        through = jnp.where((x >= given_lo) & (x <= given_hi), x, lax.stop_gradient(x))
    return (through + lax.stop_gradient(out - through)).astype(dtype)


def quantization_range(node, x, axis: int, lo, hi):
    """A QuantizeAndDequantize op's `axis` (-1: the whole tensor, else made non-negative) and its
    `lo`, `hi` (scalars, or one per slice along `axis`) shaped to broadcast against `x`."""
    shape = [1] * x.ndim
    if axis != -1:
        if not -x.ndim <= axis < x.ndim:
            raise GraphError(f"node {node.name!r} ({node.type}): axis is outside the input's {x.ndim} dimensions")
        axis %= x.ndim
        shape[axis] = x.shape[axis]
    lo, hi = (jnp.reshape(jnp.asarray(v, x.dtype), shape) for v in (lo, hi))
    return axis, lo, hi


def _qdq_round(node) -> bool:
    mode = node.attr_str("round_mode", "HALF_TO_EVEN")
    if mode not in ("HALF_TO_EVEN", "HALF_UP"):
        raise GraphError(f"node {node.name!r} ({node.type}): round_mode {mode!r} is not one of TF's")
    return mode == "HALF_UP"


def _qdq_bits(node, bits: int) -> int:
    signed = node.attr_bool("signed_input", True)
    if not (0 < bits < 64 and (bits > 1 or not signed)):
        raise GraphError(f"node {node.name!r} ({node.type}): num_bits is {bits}, which TF rejects")
    return bits


@register("QuantizeAndDequantizeV2", "QuantizeAndDequantizeV4")
def _quantize_and_dequantize_v2(node):
    opts = dict(bits=_qdq_bits(node, node.attr_int("num_bits", 8)), signed=node.attr_bool("signed_input", True),
                range_given=node.attr_bool("range_given", False), half_up=_qdq_round(node),
                narrow=node.attr_bool("narrow_range", False), axis=node.attr_int("axis", -1),
                grad="range" if node.type == "QuantizeAndDequantizeV4" else "straight")
    return lambda x, lo, hi: _quantize_and_dequantize(node, x, lo, hi, **opts)


@register("QuantizeAndDequantizeV3")
def _quantize_and_dequantize_v3(node):
    """V3: the number of bits is an input (it must be known: a constant in practice)."""
    opts = dict(signed=node.attr_bool("signed_input", True), range_given=node.attr_bool("range_given", True),
                half_up=False, narrow=node.attr_bool("narrow_range", False), axis=node.attr_int("axis", -1),
                grad="straight")

    def fn(x, lo, hi, num_bits):
        bits = _qdq_bits(node, static_ints(num_bits, node, "num_bits", 1)[0])
        return _quantize_and_dequantize(node, x, lo, hi, bits=bits, **opts)

    return fn


@register("QuantizeAndDequantize")
def _quantize_and_dequantize_v1(node):
    """V1 (TF runs it in graphs before GraphDef version 22): V2 with its range as the attributes
    `input_min` and `input_max`, the whole tensor over one range, rounding half to even."""
    signed = node.attr_bool("signed_input", True)
    bits = _qdq_bits(node, node.attr_int("num_bits", 8))
    if bits >= (62 if signed else 63):
        raise GraphError(f"node {node.name!r} ({node.type}): num_bits is {bits}, which TF rejects")
    lo, hi = np.float32(node.attr_float("input_min", 0.0)), np.float32(node.attr_float("input_max", 0.0))
    range_given = node.attr_bool("range_given", False)
    if range_given and not lo <= hi:
        raise GraphError(f"node {node.name!r} ({node.type}): invalid range: input_min {lo} > input_max {hi}")
    opts = dict(bits=bits, signed=signed, range_given=range_given, half_up=False, narrow=False, axis=-1,
                grad="straight")
    return lambda x: _quantize_and_dequantize(node, x, lo, hi, **opts)


@register("Dilation2D")
def _dilation2d(node):
    """Grayscale morphological dilation (NHWC): the max over the window of `x + filter`."""
    strides, rates = node.attr_ints("strides"), node.attr_ints("rates")
    _check_unit(node, "strides", strides, False)
    _check_unit(node, "rates", rates, False)
    padding = node.attr_str("padding")
    if padding not in ("SAME", "VALID"):
        raise GraphError(f"node {node.name!r} ({node.type}): padding {padding!r} is not supported")
    (sh, sw), (rh, rw) = strides[1:3], rates[1:3]

    def fn(x, filt):
        n, h, w, c = x.shape
        kh, kw, _ = filt.shape
        (pt, _), (pl, _) = _tf_pads(padding, (h, w), (kh, kw), (sh, sw), (rh, rw))
        eff_h, eff_w = (kh - 1) * rh + 1, (kw - 1) * rw + 1
        oh = -(-h // sh) if padding == "SAME" else (h - eff_h) // sh + 1
        ow = -(-w // sw) if padding == "SAME" else (w - eff_w) // sw + 1
        ys = (np.arange(oh) * sh - pt)[:, None, None, None] + (np.arange(kh) * rh)[None, None, :, None]
        xs = (np.arange(ow) * sw - pl)[None, :, None, None] + (np.arange(kw) * rw)[None, None, None, :]
        valid = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)  # [oh, ow, kh, kw]
        patches = x[:, np.clip(ys, 0, h - 1), np.clip(xs, 0, w - 1), :]  # [n, oh, ow, kh, kw, c]
        # TF's kernel starts each window at the dtype's lowest value and takes a tap only where it
        # is greater: a window without a tap in the image, or of -inf and NaN only, gives lowest.
        lowest = jnp.asarray(jnp.finfo(x.dtype).min if jnp.issubdtype(x.dtype, jnp.floating)
                             else jnp.iinfo(x.dtype).min, x.dtype)
        values = patches + filt[None, None, None]
        values = jnp.where(valid[None, ..., None] & (values == values), values, lowest)
        return jnp.maximum(jnp.max(values.reshape(n, oh, ow, kh * kw, c), axis=3), lowest)

    return fn
