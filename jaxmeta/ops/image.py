"""Image ops: resizing (TF1's index conventions), crop-and-resize, the gradient ops of both that
TF1 training graphs contain, colour adjustments, non-maximum suppression, region proposals, projective
transforms and glimpses.

Resize ops follow TF's kernels rather than `jax.image.resize`: with `align_corners=False` and
`half_pixel_centers=False` (TF1's default) output pixel `i` samples input position `i * in / out`
(no half-pixel offset); `align_corners=True` uses `(in - 1) / (out - 1)`; `half_pixel_centers`
samples at `(i + 0.5) * scale - 0.5`. Sampling positions and weights depend only on static
shapes, so they are computed with NumPy (float32, as TF does) when the graph is traced.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxmeta._errors import GraphError
from jaxmeta.ops.registry import known, need_known, register, static_ints

# -- resizing -------------------------------------------------------------------------------------


def _static_size(size, node) -> tuple[int, int]:
    return tuple(static_ints(size, node, "the output size", 2))


def _resize_flags(node) -> tuple[bool, bool]:
    align = node.attr_bool("align_corners", False)
    half = node.attr_bool("half_pixel_centers", False)
    if align and half:
        raise GraphError(
            f"node {node.name!r} ({node.type}): align_corners and half_pixel_centers cannot both be set"
        )
    return align, half


def _scale(in_size: int, out_size: int, align: bool) -> np.float32:
    if align and out_size > 1:
        return np.float32(in_size - 1) / np.float32(out_size - 1)
    return np.float32(in_size) / np.float32(out_size)


def _positions(in_size: int, out_size: int, align: bool, half: bool) -> np.ndarray:
    """The input coordinate each output pixel samples (float32, as TF computes it)."""
    scale = _scale(in_size, out_size, align)
    i = np.arange(out_size, dtype=np.float32)
    return (i + np.float32(0.5)) * scale - np.float32(0.5) if half else i * scale


def _gather_axis(x, index: np.ndarray, axis: int):
    return jnp.take(x, jnp.asarray(index, np.int32), axis=axis)


def _weight_shape(w: np.ndarray, axis: int, ndim: int) -> np.ndarray:
    shape = [1] * ndim
    shape[axis] = w.shape[0]
    return w.reshape(shape)


def _linear_axis(x, in_size: int, out_size: int, axis: int, align: bool, half: bool):
    pos = _positions(in_size, out_size, align, half)
    low = np.floor(pos)
    lerp = _weight_shape((pos - low).astype(np.float32), axis, x.ndim)
    lo_idx = np.maximum(low, 0).astype(np.int64)
    hi_idx = np.minimum(np.ceil(pos), in_size - 1).astype(np.int64)
    a, b = _gather_axis(x, lo_idx, axis), _gather_axis(x, hi_idx, axis)
    return a + (b - a) * lerp


@register("ResizeBilinear")
def _resize_bilinear(node):
    align, half = _resize_flags(node)

    def fn(images, size):
        out_h, out_w = _static_size(size, node)
        x = images.astype(jnp.float32)
        x = _linear_axis(x, x.shape[2], out_w, 2, align, half)  # TF interpolates along x first
        return _linear_axis(x, x.shape[1], out_h, 1, align, half)

    return fn


def _nearest_index(in_size: int, out_size: int, align: bool, half: bool) -> np.ndarray:
    scale = _scale(in_size, out_size, align)
    i = np.arange(out_size, dtype=np.float32)
    # TF's nearest-neighbour sampler has no -0.5 in its half-pixel position; it rounds (halves
    # away from zero) with align_corners and floors otherwise.
    pos = (i + np.float32(0.5)) * scale if half else i * scale
    idx = np.floor(pos + np.float32(0.5)) if align else np.floor(pos)
    idx = np.minimum(idx, in_size - 1)
    if half:
        idx = np.maximum(idx, 0)
    return idx.astype(np.int64)


@register("ResizeNearestNeighbor")
def _resize_nearest(node):
    align, half = _resize_flags(node)

    def fn(images, size):
        out_h, out_w = _static_size(size, node)
        x = _gather_axis(images, _nearest_index(images.shape[1], out_h, align, half), 1)
        return _gather_axis(x, _nearest_index(images.shape[2], out_w, align, half), 2)

    return fn


_TABLE_SIZE = 1024


def _cubic_weights(in_size: int, out_size: int, align: bool, half: bool):
    """Indices [out, 4] and weights [out, 4] of TF's bicubic kernel.

    TF samples the Keys cubic kernel from a 1025-entry table (so sub-pixel offsets are rounded to
    1/1024), with a = -0.75 in legacy mode; with half-pixel centers it uses a = -0.5 and gives
    taps outside the image zero weight, renormalizing the rest.
    """
    a = np.float32(-0.5 if half else -0.75)
    pos = _positions(in_size, out_size, align, half)
    base = np.floor(pos)
    delta = pos - base
    offset = np.rint(delta * _TABLE_SIZE).astype(np.int64)  # lrintf: round half to even

    def near(t):  # |t| <= 1
        return ((a + 2) * t - (a + 3)) * t * t + 1

    def far(t):  # 1 <= |t| <= 2
        return ((a * t - 5 * a) * t + 8 * a) * t - 4 * a

    t = offset.astype(np.float32) / np.float32(_TABLE_SIZE)
    u = (_TABLE_SIZE - offset).astype(np.float32) / np.float32(_TABLE_SIZE)
    weights = np.stack([far(t + 1), near(t), near(u), far(u + 1)], axis=1).astype(np.float32)
    taps = base.astype(np.int64)[:, None] + np.arange(-1, 3)[None, :]
    index = np.clip(taps, 0, in_size - 1)
    if half:
        weights = np.where(index == taps, weights, np.float32(0))
        total = weights.sum(axis=1, keepdims=True)
        weights = np.where(np.abs(total) >= 1000 * np.finfo(np.float32).tiny, weights / total, weights)
    return index, weights.astype(np.float32)


def _cubic_axis(x, in_size: int, out_size: int, axis: int, align: bool, half: bool):
    index, weights = _cubic_weights(in_size, out_size, align, half)
    out = 0
    for k in range(4):
        out = out + _gather_axis(x, index[:, k], axis) * _weight_shape(weights[:, k], axis, x.ndim)
    return out


def _bicubic(x, out_h: int, out_w: int, align: bool, half: bool):
    x = x.astype(jnp.float32)
    x = _cubic_axis(x, x.shape[1], out_h, 1, align, half)
    return _cubic_axis(x, x.shape[2], out_w, 2, align, half)


@register("ResizeBicubic")
def _resize_bicubic(node):
    align, half = _resize_flags(node)

    def fn(images, size):
        return _bicubic(images, *_static_size(size, node), align, half)

    return fn


@register("ResizeBicubicGrad")
def _resize_bicubic_grad(node):
    """ResizeBicubicGrad(grads, original_image): the transpose of `ResizeBicubic`.

    TF's kernel scatters each gradient with the same table weights its forward kernel gathers
    with (taps outside the image renormalized away with half-pixel centers), so it is the
    vector-Jacobian product of the forward above; `original_image` gives only shape and dtype.
    """
    align, half = _resize_flags(node)

    def fn(grads, original_image):
        _, out_h, out_w, _ = grads.shape
        zeros = jnp.zeros(np.shape(original_image), jnp.float32)
        _, vjp = jax.vjp(lambda x: _bicubic(x, out_h, out_w, align, half), zeros)
        dtype = jax.dtypes.canonicalize_dtype(original_image.dtype)
        return vjp(jnp.asarray(grads, jnp.float32))[0].astype(dtype)

    return fn


def _area_matrix(in_size: int, out_size: int, align: bool) -> np.ndarray:
    """[out, in] weights of TF's area resampling: the overlap of each output cell with each
    input pixel, divided by the cell's length (cells past the edge repeat the last pixel)."""
    scale = float(_scale(in_size, out_size, align))
    m = np.zeros((out_size, in_size), np.float64)
    for i in range(out_size):
        start, end = i * scale, (i + 1) * scale
        for p in range(int(np.floor(start)), int(np.ceil(end))):
            overlap = min(p + 1, end) - max(p, start)
            m[i, min(p, in_size - 1)] += overlap / scale
    return m.astype(np.float32)


@register("ResizeArea")
def _resize_area(node):
    align = node.attr_bool("align_corners", False)

    def fn(images, size):
        out_h, out_w = _static_size(size, node)
        x = images.astype(jnp.float32)
        my, mx = _area_matrix(x.shape[1], out_h, align), _area_matrix(x.shape[2], out_w, align)
        return jnp.einsum("ip,bpqc,jq->bijc", my, x, mx, precision=lax.Precision.HIGHEST)

    return fn


def _crop_method(node, allowed=("bilinear", "nearest")) -> str:
    method = node.attr_str("method", "bilinear")
    if method not in allowed:
        raise GraphError(
            f"node {node.name!r} ({node.type}): method {method!r} is not supported (use one of {list(allowed)})"
        )
    return method


def _as_computed(x):
    """`x` unchanged, but opaque to XLA's float rewrites: divided by `x == x` (one; zero where `x`
    is NaN, which stays NaN). XLA would otherwise fuse a product and the sum it feeds into one
    multiply-add, and turn a division by a constant into a product with its reciprocal: each moves
    a result by an ulp, which for a sampling position can pick another pixel than TF's kernel."""
    if isinstance(x, jax.core.Tracer):
        return x / (x == x).astype(x.dtype)
    return x


def _crop_positions(lo, hi, size: int, crop: int, *, ratio_first: bool = False):
    """Where TF's crop-and-resize kernels sample along one axis: [boxes, crop] float32, rounded
    as TF's float arithmetic rounds (also under jit, see `_as_computed`).

    The normalized coordinate `c` is pixel `c * (size - 1)`; a crop of 1 samples the box's centre.
    The forward and image-gradient kernels step by `(hi - lo) * (size - 1) / (crop - 1)`, the
    box-gradient kernel by `(hi - lo) * ((size - 1) / (crop - 1))` (`ratio_first`): rounded
    differently, and reproduced so that a position on a pixel boundary picks the pixels TF picks.
    """
    if crop == 1:
        return (0.5 * (lo + hi) * (size - 1))[:, None]
    if ratio_first:
        step = _as_computed((hi - lo) * (np.float32(size - 1) / np.float32(crop - 1)))
    else:
        span = _as_computed((hi - lo) * (size - 1))
        # crop - 1 as a value XLA does not know, so that it divides by it as TF does
        step = span / _as_computed(jnp.where(span == span, np.float32(crop - 1), np.float32(1)))
    along = _as_computed(jnp.arange(crop, dtype=jnp.float32)[None, :] * step[:, None])
    return _as_computed(lo * (size - 1))[:, None] + along


def _crop_grid(boxes, height: int, width: int, crop_h: int, crop_w: int, *, ratio_first: bool = False):
    boxes = jnp.asarray(boxes, jnp.float32)
    ys = _crop_positions(boxes[:, 0], boxes[:, 2], height, crop_h, ratio_first=ratio_first)
    xs = _crop_positions(boxes[:, 1], boxes[:, 3], width, crop_w, ratio_first=ratio_first)
    return ys, xs


def _check_box_ind(box_ind, batch: int, node) -> None:
    # TF fails when a box names an image outside the batch; jaxmeta can tell only when box_ind is
    # a constant (a traced one is clamped into the batch).
    if isinstance(box_ind, (np.ndarray, np.generic)) and np.any((box_ind < 0) | (box_ind >= batch)):
        raise GraphError(
            f"node {node.name!r} ({node.type}): box_ind has values outside [0, {batch}): {np.asarray(box_ind)}"
        )


def _crop_sample(image, ys, xs, box_ind, method: str, extrapolation: float):
    """Samples `image[box_ind]` at rows `ys` [B, ch] and columns `xs` [B, cw] as TF's CropAndResize
    kernel does: [B, ch, cw, C] float32, `extrapolation` where a position lies outside the image.

    Differentiable in `image` and in the positions (the pixels a position picks are constants,
    the interpolation weights are not), which is what TF's gradient kernels compute. With
    `nearest`, the positions get the bilinear sampler's gradient, as TF's registered gradient
    approximates it (a nearest sample's own gradient w.r.t. its position is zero).
    """
    batch, h, w, _ = image.shape
    image = image.astype(jnp.float32)
    inside = ((ys >= 0) & (ys <= h - 1))[:, :, None] & ((xs >= 0) & (xs <= w - 1))[:, None, :]
    b = jnp.clip(jnp.asarray(box_ind, jnp.int32), 0, batch - 1)[:, None, None]

    def sample(image, yi, xi):
        yi = jnp.clip(yi, 0, h - 1).astype(jnp.int32)[:, :, None]
        xi = jnp.clip(xi, 0, w - 1).astype(jnp.int32)[:, None, :]
        return image[b, yi, xi]  # [B, ch, cw, C]

    def bilinear(image):
        y0, x0 = jnp.floor(ys), jnp.floor(xs)
        ly, lx = (ys - y0)[:, :, None, None], (xs - x0)[:, None, :, None]
        y1, x1 = jnp.ceil(ys), jnp.ceil(xs)
        tl, tr = sample(image, y0, x0), sample(image, y0, x1)
        bl, br = sample(image, y1, x0), sample(image, y1, x1)
        top = tl + (tr - tl) * lx
        bottom = bl + (br - bl) * lx
        return top + (bottom - top) * ly

    def roundf(v):  # C's roundf (halves up) for v >= 0; floor(v + 0.5) would round 0.49999997 up
        low = jnp.floor(v)
        return jnp.where(v - low >= 0.5, low + 1, low)

    if method == "nearest":
        # Zero in value (also where the image is not finite), the bilinear gradient w.r.t. positions.
        slope = bilinear(lax.stop_gradient(image))
        slope = jnp.where(jnp.isfinite(slope), slope - lax.stop_gradient(slope), 0)
        out = sample(image, roundf(ys), roundf(xs)) + slope
    else:
        out = bilinear(image)
    return jnp.where(inside[..., None], out, jnp.float32(extrapolation))


@register("CropAndResize")
def _crop_and_resize(node):
    """Crops normalized boxes `[y1, x1, y2, x2]` out of `image[box_ind]` and resizes them to
    `crop_size` (bilinear or nearest); samples outside the image get `extrapolation_value`."""
    method = _crop_method(node)
    extrapolation = node.attr_float("extrapolation_value", 0.0)

    def fn(image, boxes, box_ind, crop_size):
        ch, cw = static_ints(crop_size, node, "crop_size", 2)
        _check_box_ind(box_ind, image.shape[0], node)
        ys, xs = _crop_grid(boxes, image.shape[1], image.shape[2], ch, cw)
        return _crop_sample(image, ys, xs, box_ind, method, extrapolation)

    return fn


@register("CropAndResizeGradImage")
def _crop_and_resize_grad_image(node):
    """CropAndResizeGradImage(grads, boxes, box_ind, image_size): d crops / d image, transposed.

    TF's kernel adds every crop pixel's gradient into the (bilinear: four, nearest: one) pixels
    it was sampled from; samples outside the image contribute nothing. That is the
    vector-Jacobian product of `CropAndResize`'s sampling w.r.t. the image, computed here.

    Raises:
        GraphError: `image_size` is not known when the graph is traced, or does not fit `grads`.
    """
    method = _crop_method(node)
    dtype = jax.dtypes.canonicalize_dtype(node.attr_dtype("T"))

    def fn(grads, boxes, box_ind, image_size):
        batch, h, w, depth = static_ints(image_size, node, "image_size", 4)
        _, ch, cw, grad_depth = grads.shape
        if h <= 0 or w <= 0 or depth != grad_depth or batch < 0:
            raise GraphError(
                f"node {node.name!r} ({node.type}): image_size {[batch, h, w, depth]} does not fit grads of shape "
                f"{list(grads.shape)} (positive height and width, the same depth)"
            )
        _check_box_ind(box_ind, batch, node)
        ys, xs = _crop_grid(boxes, h, w, ch, cw)
        zeros = jnp.zeros((batch, h, w, depth), jnp.float32)
        _, vjp = jax.vjp(lambda image: _crop_sample(image, ys, xs, box_ind, method, 0.0), zeros)
        return vjp(jnp.asarray(grads, jnp.float32))[0].astype(dtype)

    return fn


def _box_grads(position_grads, size: int, crop: int):
    """(d/d lo, d/d hi) of a box's edges from the gradients w.r.t. its sampling positions [B, crop],
    with the weights TF's box-gradient kernel uses: position `i` moves by `(size - 1) - i * ratio`
    per unit of `lo` and by `i * ratio` per unit of `hi` (both by `(size - 1) / 2` for a crop of 1)."""
    if crop > 1:
        along = np.arange(crop, dtype=np.float32) * (np.float32(size - 1) / np.float32(crop - 1))
        lo, hi = np.float32(size - 1) - along, along
    else:
        lo = hi = np.full((1,), 0.5 * (size - 1), np.float32)
    return jnp.sum(position_grads * lo[None, :], axis=1), jnp.sum(position_grads * hi[None, :], axis=1)


@register("CropAndResizeGradBoxes")
def _crop_and_resize_grad_boxes(node):
    """CropAndResizeGradBoxes(grads, image, boxes, box_ind): d crops / d boxes (bilinear only), [B, 4].

    As TF's kernel: the image's slope between the pixels each sample interpolates (zero for a
    sample outside the image), times the incoming gradient, times how the sample moves with each
    box edge.
    """
    _crop_method(node, ("bilinear",))

    def fn(grads, image, boxes, box_ind):
        _, h, w, _ = image.shape
        _, ch, cw, _ = grads.shape
        _check_box_ind(box_ind, image.shape[0], node)
        ys, xs = _crop_grid(boxes, h, w, ch, cw, ratio_first=True)
        _, vjp = jax.vjp(lambda ys, xs: _crop_sample(image, ys, xs, box_ind, "bilinear", 0.0), ys, xs)
        grad_ys, grad_xs = vjp(jnp.asarray(grads, jnp.float32))
        (dy1, dy2), (dx1, dx2) = _box_grads(grad_ys, h, ch), _box_grads(grad_xs, w, cw)
        return jnp.stack([dy1, dx1, dy2, dx2], axis=1)

    return fn


# -- colour ---------------------------------------------------------------------------------------


def _rgb_to_hsv(rgb):
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = jnp.max(rgb, axis=-1)
    spread = v - jnp.min(rgb, axis=-1)
    safe_v = jnp.where(v > 0, v, 1)
    s = jnp.where(v > 0, spread / safe_v, 0)
    safe = jnp.where(spread > 0, spread, 1)
    norm = 1 / (6 * safe)
    h = jnp.where(r == v, norm * (g - b), jnp.where(g == v, norm * (b - r) + 2 / 6, norm * (r - g) + 4 / 6))
    h = jnp.where(spread > 0, h, 0)
    h = jnp.where(h < 0, h + 1, h)
    return jnp.stack([h, s, v], axis=-1)


def _hsv_to_rgb(hsv):
    """Wikipedia's sectors, as TF's AdjustSaturation kernel converts back."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    c = s * v
    m = v - c
    dh = h * 6
    sector = jnp.floor(dh)
    x = c * (1 - jnp.abs(jnp.fmod(dh, 2) - 1))
    zero = jnp.zeros_like(c)
    table = [(c, x, zero), (x, c, zero), (zero, c, x), (zero, x, c), (x, zero, c), (c, zero, x)]
    r, g, b = zero, zero, zero
    for k, (rk, gk, bk) in enumerate(table):
        hit = sector == k
        r, g, b = jnp.where(hit, rk, r), jnp.where(hit, gk, g), jnp.where(hit, bk, b)
    return jnp.stack([r + m, g + m, b + m], axis=-1)


@register("RGBToHSV")
def _rgb_to_hsv_op(node):
    return _rgb_to_hsv


@register("HSVToRGB")
def _hsv_to_rgb_op(node):
    # TF's HSVToRGB kernel: each channel's share of the hue as a clamped tent, for any h (no
    # wrapping into [0, 1], unlike the sectors of `_hsv_to_rgb`).
    def fn(hsv):
        h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
        dh = h * 6
        shares = [jnp.clip(jnp.abs(dh - 3) - 1, 0, 1), jnp.clip(2 - jnp.abs(dh - 2), 0, 1),
                  jnp.clip(2 - jnp.abs(dh - 4), 0, 1)]
        return jnp.stack([((1 - s) + s * d) * v for d in shares], axis=-1)

    return fn


def _contrast(images, factor):
    """Each channel's distance from its mean over height and width, scaled by `factor` (float32)."""
    x = images.astype(jnp.float32)
    mean = jnp.mean(x, axis=(-3, -2), keepdims=True)
    return (x - mean) * factor + mean


@register("AdjustContrastv2")
def _adjust_contrast(node):
    return lambda images, factor: _contrast(images, factor).astype(images.dtype)


@register("AdjustContrast")
def _adjust_contrast_v1(node):
    """The deprecated AdjustContrast (GraphDefs before version 2): a float result clipped to
    `[min_value, max_value]`; TF takes the min first, so `min_value` wins when they cross."""

    def fn(images, factor, min_value, max_value):
        return jnp.maximum(jnp.minimum(_contrast(images, factor), max_value), min_value)

    return fn


@register("AdjustSaturation")
def _adjust_saturation(node):
    def fn(images, scale):
        hsv = _rgb_to_hsv(images.astype(jnp.float32))
        s = jnp.clip(hsv[..., 1] * scale, 0, 1)
        return _hsv_to_rgb(jnp.stack([hsv[..., 0], s, hsv[..., 2]], axis=-1)).astype(images.dtype)

    return fn


def _hue_range(rgb):
    """TF's AdjustHue kernel's form of a colour: hue in [0, 6] and the smallest and largest
    channel (no saturation, so channels outside [0, 1] come back as they were)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    # The kernel's comparisons, in its order: (largest, middle, smallest, hue category).
    r_lt_g = [(g, r, b, 1), (b, g, r, 3), (g, b, r, 2)]  # b < r; b > g; else
    g_le_r = [(r, g, b, 0), (b, r, g, 4), (r, b, g, 5)]  # b < g; b > r; else

    def pick(cases, first, second):
        """The kernel's three-way branch: cases[0] where `first`, cases[1] where `second`, else
        cases[2]."""
        return [jnp.where(first, x, jnp.where(second, y, z)) for x, y, z in zip(*cases)]

    hi1, mid1, lo1, cat1 = pick(r_lt_g, b < r, b > g)
    hi2, mid2, lo2, cat2 = pick(g_le_r, b < g, b > r)
    first = r < g
    hi, mid, lo = (jnp.where(first, x, y) for x, y in ((hi1, hi2), (mid1, mid2), (lo1, lo2)))
    cat = jnp.where(first, cat1, cat2).astype(rgb.dtype)
    span = hi - lo
    ratio = (mid - lo) / jnp.where(span == 0, 1, span)
    even = jnp.fmod(cat, 2) == 0
    h = jnp.where(span == 0, 0, cat + jnp.where(even, ratio, 1 - ratio))
    return h, lo, hi


def _from_hue_range(h, lo, hi):
    cat = jnp.minimum(jnp.floor(h), 5)
    ratio = h - cat
    ratio = jnp.where(jnp.fmod(cat, 2) == 0, ratio, 1 - ratio)
    mid = lo + ratio * (hi - lo)
    table = [(hi, mid, lo), (mid, hi, lo), (lo, hi, mid), (lo, mid, hi), (mid, lo, hi), (hi, lo, mid)]
    out = table[5]
    for k in range(5):
        out = [jnp.where(cat == k, a, b) for a, b in zip(table[k], out)]
    return jnp.stack(out, axis=-1)


@register("AdjustHue")
def _adjust_hue(node):
    def fn(images, delta):
        h, lo, hi = _hue_range(images.astype(jnp.float32))
        h = h + jnp.asarray(delta, jnp.float32) * 6
        h = h - 6 * jnp.floor(h / 6)  # into [0, 6), as the kernel's loops
        h = jnp.where(h >= 6, h - 6, h)
        return _from_hue_range(h, lo, hi).astype(images.dtype)

    return fn


# -- drawing --------------------------------------------------------------------------------------

# TF's colours for boxes when none are given: yellow, blue, red, lime, purple, olive, maroon, navy,
# aqua, fuchsia (RGBA; a grayscale image takes the first channel, which TF sets to 1).
_BOX_COLORS = np.array([[1, 1, 0, 1], [0, 0, 1, 1], [1, 0, 0, 1], [0, 1, 0, 1], [0.5, 0, 0.5, 1], [0.5, 0.5, 0, 1],
                        [0.5, 0, 0, 1], [0, 0, 0.5, 1], [0, 1, 1, 1], [1, 0, 1, 1]], np.float32)


@register("DrawBoundingBoxes", "DrawBoundingBoxesV2")
def _draw_bounding_boxes(node):
    """`tf.image.draw_bounding_boxes` (detection models' image summaries): each box's one-pixel
    outline at TF's pixel rows and columns (the normalized corner times size - 1, truncated),
    clipped to the image, in its colour (`colors` cycling over the boxes, or TF's table); a later
    box paints over an earlier one; inverted boxes and boxes wholly outside are not drawn."""

    def fn(images, boxes, colors=None):
        images, boxes = jnp.asarray(images), jnp.asarray(boxes, jnp.float32)
        if images.ndim != 4 or boxes.ndim != 3 or boxes.shape[-1] != 4 or images.shape[3] not in (1, 3, 4):
            raise GraphError(f"node {node.name!r} ({node.type}): images must be [batch, height, width, 1, 3 or "
                             f"4] and boxes [batch, boxes, 4]; got {images.shape} and {boxes.shape}")
        _, h, w, depth = images.shape
        table = _BOX_COLORS.copy()
        if depth == 1:
            table[:, 0] = 1
        if colors is not None and np.size(colors):
            table = jnp.asarray(colors, jnp.float32)
        table = jnp.asarray(table)[:, :depth]
        scale = jnp.asarray([h - 1, w - 1, h - 1, w - 1], jnp.float32)[None, None, :]
        corners = jnp.clip(jnp.trunc(boxes * scale), -(2**30), 2**30).astype(jnp.int32)  # [batch, boxes, 4]
        r0, c0, r1, c1 = (corners[..., k, None, None] for k in range(4))  # each [batch, boxes, 1, 1]
        drawn = (r0 <= r1) & (c0 <= c1) & (r0 < h) & (r1 >= 0) & (c0 < w) & (c1 >= 0)
        rows, cols = jnp.arange(h)[None, None, :, None], jnp.arange(w)[None, None, None, :]
        across = (cols >= jnp.maximum(c0, 0)) & (cols <= jnp.minimum(c1, w - 1))
        down = (rows >= jnp.maximum(r0, 0)) & (rows <= jnp.minimum(r1, h - 1))
        outline = (((rows == r0) | (rows == r1)) & across) | (((cols == c0) | (cols == c1)) & down)
        paint = drawn & outline  # [batch, boxes, h, w]
        n = boxes.shape[1]
        last = jnp.max(jnp.where(paint, jnp.arange(1, n + 1)[None, :, None, None], 0), axis=1)  # 0: none
        color = table[jnp.maximum(last - 1, 0) % table.shape[0]]  # [batch, h, w, depth]
        return jnp.where((last > 0)[..., None], color.astype(images.dtype), images)

    return fn


# -- non-maximum suppression ----------------------------------------------------------------------


def _pairwise_iou(boxes):
    """TF's IoU of every pair of `[y1, x1, y2, x2]` boxes (corners in either order; a box of
    zero area overlaps nothing)."""
    y_lo, y_hi = jnp.minimum(boxes[:, 0], boxes[:, 2]), jnp.maximum(boxes[:, 0], boxes[:, 2])
    x_lo, x_hi = jnp.minimum(boxes[:, 1], boxes[:, 3]), jnp.maximum(boxes[:, 1], boxes[:, 3])
    area = (y_hi - y_lo) * (x_hi - x_lo)
    ih = jnp.maximum(jnp.minimum(y_hi[:, None], y_hi[None, :]) - jnp.maximum(y_lo[:, None], y_lo[None, :]), 0)
    iw = jnp.maximum(jnp.minimum(x_hi[:, None], x_hi[None, :]) - jnp.maximum(x_lo[:, None], x_lo[None, :]), 0)
    inter = ih * iw
    union = area[:, None] + area[None, :] - inter
    valid = (area[:, None] > 0) & (area[None, :] > 0)
    return jnp.where(valid, inter / jnp.where(valid, union, 1), 0)


def _nms_padded(boxes, scores, max_out: int, iou_threshold, score_threshold, overlaps=None):
    """Greedy hard NMS, jit-able: (indices padded with 0 to `max_out`, their scores, count). With
    `overlaps` ([n, n], NonMaxSuppressionWithOverlaps) those suppress instead of the boxes' IoU."""
    n = scores.shape[0]
    scores = scores.astype(jnp.float32)
    if n == 0 or max_out == 0:
        return jnp.zeros((max_out,), jnp.int32), jnp.zeros((max_out,), jnp.float32), jnp.int32(0)
    iou = _pairwise_iou(boxes.astype(jnp.float32)) if overlaps is None else jnp.asarray(overlaps, jnp.float32)
    active = scores > score_threshold

    def body(i, state):
        active, selected, count = state
        best = jnp.argmax(jnp.where(active, scores, -jnp.inf))  # ties: the lower index, as TF
        ok = active[best]
        selected = selected.at[i].set(jnp.where(ok, best, 0).astype(jnp.int32))
        suppressed = (iou[best] > iou_threshold) | (jnp.arange(n) == best)
        active = jnp.where(ok, active & ~suppressed, active)
        return active, selected, count + ok.astype(jnp.int32)

    init = (active, jnp.zeros((max_out,), jnp.int32), jnp.int32(0))
    _, selected, count = lax.fori_loop(0, max_out, body, init)
    valid = jnp.arange(max_out) < count
    selected = jnp.where(valid, selected, 0)
    return selected, jnp.where(valid, scores[selected], 0), count


def _nms_builder(node, *, iou_attr=False, score_input=False, soft_input=False):
    pad = node.attr_bool("pad_to_max_output_size", False)
    version = node.type

    def run(boxes, scores, max_out, iou_threshold, score_threshold, sigma):
        if not isinstance(max_out, (np.ndarray, np.generic, int)):
            raise GraphError(f"node {node.name!r} ({version}): max_output_size must be a constant")
        if sigma is not None and (not isinstance(sigma, (np.ndarray, np.generic)) or float(sigma) != 0.0):
            raise GraphError(
                f"node {node.name!r} ({version}): soft NMS (soft_nms_sigma != 0) is not supported"
            )
        selected, sel_scores, count = _nms_padded(boxes, scores, int(max_out), iou_threshold, score_threshold)
        if not pad:
            if isinstance(count, jax.core.Tracer):
                raise GraphError(
                    f"node {node.name!r} ({version}): its output size depends on the data, so it cannot run "
                    "under jax.jit; use NonMaxSuppressionV4/V5 with pad_to_max_output_size=True "
                    "(tf.image.non_max_suppression_padded) or run without jit"
                )
            k = int(count)  # a concrete value outside jit
            selected, sel_scores = selected[:k], sel_scores[:k]
        return selected, sel_scores, count

    if version == "NonMaxSuppression":
        iou = node.attr_float("iou_threshold", 0.5)
        return lambda boxes, scores, max_out: run(boxes, scores, max_out, iou, -jnp.inf, None)[0]
    if version == "NonMaxSuppressionV2":
        return lambda boxes, scores, max_out, iou: run(boxes, scores, max_out, iou, -jnp.inf, None)[0]
    if version == "NonMaxSuppressionV3":
        return lambda boxes, scores, max_out, iou, thr: run(boxes, scores, max_out, iou, thr, None)[0]
    if version == "NonMaxSuppressionV4":

        def v4(boxes, scores, max_out, iou, thr):
            selected, _, count = run(boxes, scores, max_out, iou, thr, None)
            return selected, count

        return v4

    return lambda boxes, scores, max_out, iou, thr, sigma: run(boxes, scores, max_out, iou, thr, sigma)


@register(
    "NonMaxSuppression",
    "NonMaxSuppressionV2",
    "NonMaxSuppressionV3",
    "NonMaxSuppressionV4",
    "NonMaxSuppressionV5",
)
def _non_max_suppression(node):
    """Greedy hard non-maximum suppression (TF's ordering: score, then lower index first).

    The padded forms (V4/V5 with `pad_to_max_output_size`) are jit-able; the others have a
    data-dependent output size and run only outside `jax.jit` (a `GraphError` says so inside).
    """
    return _nms_builder(node)


@register("NonMaxSuppressionWithOverlaps")
def _non_max_suppression_with_overlaps(node):
    """Greedy hard NMS by a given [n, n] overlap matrix (`tf.image.non_max_suppression_overlaps`):
    a candidate is dropped when its overlap with a box already selected, `overlaps[candidate,
    selected]`, is above `overlap_threshold`; runs outside `jax.jit` only (its output size depends
    on the data)."""

    def fn(overlaps, scores, max_out, overlap_threshold, score_threshold):
        overlaps = jnp.asarray(overlaps)
        if overlaps.ndim != 2 or overlaps.shape[0] != overlaps.shape[1] or overlaps.shape[0] != jnp.shape(scores)[0]:
            raise GraphError(f"node {node.name!r} (NonMaxSuppressionWithOverlaps): overlaps must be [n, n] for n "
                             f"scores, got {overlaps.shape} and {jnp.shape(scores)}")
        (max_out,) = need_known(node, "max_output_size", "the size of its output depends on", max_out)
        # TF compares a candidate with each box already selected as overlaps[candidate, selected]
        selected, _, count = _nms_padded(None, jnp.asarray(scores), int(max_out), overlap_threshold, score_threshold,
                                         overlaps.T)
        (count,) = need_known(node, "overlaps and scores", "the size of its output depends on", count)
        return selected[:int(count)]

    return fn


# -- region proposals (tf.image.generate_bounding_box_proposals: Faster R-CNN's RPN step) ---------

# TF's kernel caps the decoded log-width/height deltas at log(1000 / 16), computed in double and
# stored in a float.
_BBOX_XFORM_CLIP = np.float32(np.log(1000.0 / 16.0))


def _cub_descending_order(scores):
    """The order of CUB's stable descending radix sort of float32 `scores` along the last axis,
    which TF's GPU kernels sort with: larger first, ties in index order, +0.0 before -0.0, and NaN
    by its bits (a positive NaN first, a negative one last)."""
    bits = lax.bitcast_convert_type(scores, jnp.uint32)
    key = jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(0x80000000))
    return jnp.argsort(~key, axis=-1, stable=True)


def _decode_proposals(anchors, deltas, info, min_size):
    """TF's GeneratePreNMSUprightBoxesKernel for one image: anchors `[k, 4]` `[y1, x1, y2, x2]`
    moved by deltas `[k, 4]` `[dy, dx, dh, dw]`, clipped to `[0, width] x [0, height]`; returns
    (y1, x1, y2, x2, keep) with `keep` false for boxes whose shorter side is below
    `min_size * scale`. TF uses fmin/fmax (a NaN loses to a number): so does this."""
    y1, x1, y2, x2 = (anchors[:, i] for i in range(4))
    dy, dx = deltas[:, 0], deltas[:, 1]
    dh, dw = jnp.fmin(deltas[:, 2], _BBOX_XFORM_CLIP), jnp.fmin(deltas[:, 3], _BBOX_XFORM_CLIP)
    half = np.float32(0.5)

    def decode(lo, hi, d, dsize, limit):
        size = hi - lo
        centre = lo + half * size + size * d
        new = size * jnp.exp(dsize)
        lo, hi = centre - half * new, centre + half * new
        return jnp.fmax(jnp.fmin(lo, limit), 0), jnp.fmax(jnp.fmin(hi, limit), 0)

    x1, x2 = decode(x1, x2, dx, dw, info[1])
    y1, y2 = decode(y1, y2, dy, dh, info[0])
    keep = jnp.fmin(x2 - x1, y2 - y1) >= min_size * info[2]
    return y1, x1, y2, x2, keep


def _proposal_overlaps(y1, x1, y2, x2, threshold):
    """[k, k] true where TF's GPU NMS (`OverThreshold`, boxes not flipped) suppresses one box
    with the other: `intersection > union * threshold`, never for a box of zero area."""
    area = (x2 - x1) * (y2 - y1)

    def side(lo, hi):
        lo = jnp.maximum(lo[:, None], lo[None, :])
        hi = jnp.minimum(hi[:, None], hi[None, :])
        return jnp.where(hi > lo, hi - lo, 0)  # fdimf

    inter = side(x1, x2) * side(y1, y2)
    over = inter > (area[:, None] + area[None, :] - inter) * threshold
    return over & (area[:, None] != 0) & (area[None, :] != 0)


@register("GenerateBoundingBoxProposals")
def _generate_bounding_box_proposals(node):
    """Region proposals as TF's (GPU-only) kernel makes them, per image: the `pre_nms_topn` best
    scores (a stable sort: ties in `[height, width, anchor]` order), their anchors decoded with
    `bbox_deltas` and clipped to the image, boxes whose shorter side is below `min_size *
    image_info[:, 2]` dropped (after the top-n cut: they leave gaps, not room for more), greedy NMS
    at `nms_threshold`, the first `post_nms_topn` kept as `rois` `[y1, x1, y2, x2]` and
    `roi_probabilities`, zero-padded. `anchors` holds one box per position and anchor (TF reads it
    flat as `[height * width * num_anchors, 4]`, the same for every image). Jit-able: the output
    shapes depend on `post_nms_topn` only; a `pre_nms_topn` fed at run time costs NMS over every
    box instead of the top n. TF registers no gradient (NotDifferentiable): none flows here.
    """
    def error(message):
        return GraphError(f"node {node.name!r} (GenerateBoundingBoxProposals): {message}")

    post = node.attr_int("post_nms_topn", 300)
    if post <= 0:
        raise error(f"post_nms_topn must be > 0, got {post}")

    def fn(scores, bbox_deltas, image_info, anchors, nms_threshold, pre_nms_topn, min_size):
        scores, bbox_deltas, image_info, anchors = (
            lax.stop_gradient(jnp.asarray(x, jnp.float32)) for x in (scores, bbox_deltas, image_info, anchors)
        )
        if scores.ndim != 4 or bbox_deltas.ndim != 4 or anchors.ndim != 3 or image_info.ndim != 2:
            raise error(f"expected scores [N, H, W, A], bbox_deltas [N, H, W, 4A], image_info [N, 5] and anchors "
                        f"[H, W, 4A], got shapes {scores.shape}, {bbox_deltas.shape}, {image_info.shape}, "
                        f"{anchors.shape}")
        num_images, height, width, num_anchors = scores.shape
        n = height * width * num_anchors
        if num_anchors == 0 or anchors.shape[2] // num_anchors != 4:
            raise error(f"anchors' last dimension must be 4 x num_anchors = {4 * num_anchors}, got {anchors.shape}")
        if anchors.size < 4 * n or bbox_deltas.size < 4 * n * num_images or image_info.shape[0] < num_images:
            raise error(f"anchors {anchors.shape}, bbox_deltas {bbox_deltas.shape} or image_info "
                        f"{image_info.shape} are too small for scores {scores.shape} (TF would read past them): "
                        "anchors must be [H, W, 4A], bbox_deltas [N, H, W, 4A] and image_info [N, 5]")
        threshold, topn, min_size = (known(v) for v in (nms_threshold, pre_nms_topn, min_size))
        for value, what in ((threshold, "nms_threshold"), (topn, "pre_nms_topn"), (min_size, "min_size")):
            if value is not None and value.shape != ():
                raise error(f"{what} must be a scalar, got shape {value.shape}")
        if threshold is not None and not 0 <= float(threshold) <= 1:
            raise error(f"nms_threshold must be in [0, 1], got {float(threshold)}")
        if topn is not None and int(topn) <= 0:
            raise error(f"pre_nms_topn must be > 0, got {int(topn)}")
        k = n if topn is None else min(n, int(topn))
        nms_threshold = jnp.asarray(nms_threshold, jnp.float32)
        min_size = jnp.asarray(min_size, jnp.float32)

        anchors = anchors.reshape(-1)[: 4 * n].reshape(n, 4)
        deltas = bbox_deltas.reshape(-1)[: 4 * n * num_images].reshape(num_images, n, 4)
        scores = scores.reshape(num_images, n)

        def one_image(scores, deltas, info):
            order = _cub_descending_order(scores)[:k]
            y1, x1, y2, x2, keep = _decode_proposals(anchors[order], deltas[order], info, min_size)
            if topn is None:  # fed at run time: the boxes past the top n take no part
                keep = keep & (jnp.arange(k) < pre_nms_topn)
            # _nms_padded picks the highest active score first: the sorted position, as a score
            rank = jnp.where(keep, jnp.arange(k, 0, -1, dtype=jnp.float32), 0)
            over = _proposal_overlaps(y1, x1, y2, x2, nms_threshold).astype(jnp.float32)
            selected, _, count = _nms_padded(None, rank, post, 0.5, 0.0, over)
            valid = jnp.arange(post) < count
            rois = jnp.stack([y1, x1, y2, x2], axis=-1)[selected] if k else jnp.zeros((post, 4), jnp.float32)
            probs = scores[order][selected] if k else jnp.zeros((post,), jnp.float32)
            return jnp.where(valid[:, None], rois, 0), jnp.where(valid, probs, 0)

        return jax.vmap(one_image)(scores, deltas, image_info[:num_images])

    return fn


# -- projective transforms (tf.raw_ops.ImageProjectiveTransformV2/V3: Keras's RandomRotation,
# RandomZoom, RandomTranslation; tf.contrib.image.transform) --------------------------------------


def _map_coordinate(c, size: int, mode: str):
    """TF's MapCoordinate: an input coordinate outside [0, size - 1] reflected, wrapped, clamped
    or left as it is (CONSTANT), in TF's float and integer steps."""
    if mode == "CONSTANT":
        return c
    if size <= 1:
        return jnp.zeros_like(c)
    top = np.float32(size - 1)
    if mode == "REFLECT":
        twice = 2 * size
        low = (twice * jnp.trunc(-c / twice)).astype(c.dtype) + c
        low = jnp.where(low < -size, low + twice, -low - 1)
        high = c - (twice * jnp.trunc(c / twice)).astype(c.dtype)
        high = jnp.where(high >= size, twice - high - 1, high)
        c = jnp.where(c < 0, low, jnp.where(c > top, high, c))
    elif mode == "WRAP":
        span = size - 1
        low = c + (size * (jnp.trunc(-c / span) + 1)).astype(c.dtype)
        high = c - (size * jnp.trunc(c / span)).astype(c.dtype)
        c = jnp.where(c < 0, low, jnp.where(c > top, high, c))
    return jnp.clip(c, 0, top)


def _round_half_away(x):
    return jnp.sign(x) * jnp.floor(jnp.abs(x) + 0.5)


@register("ImageProjectiveTransform", "ImageProjectiveTransformV2", "ImageProjectiveTransformV3")
def _image_projective_transform(node):
    """Each output pixel (x, y) reads the input at ((a0 x + a1 y + a2) / k, (b0 x + b1 y + b2) / k),
    k = c0 x + c1 y + 1, with one 8-vector per image (or one for all), nearest (half away from
    zero) or bilinear, and TF's fill modes; a pixel whose k is 0, or which reads outside the image
    in CONSTANT mode, gets the fill value (0 for V2). `tf.contrib.image`'s first version has no
    output size (the input's) and, before TF 1.4, no interpolation attribute (nearest); its V2 has
    no fill mode (CONSTANT)."""
    interpolation = node.attr_str("interpolation", "NEAREST")
    mode = node.attr_str("fill_mode", "CONSTANT")
    if interpolation not in ("NEAREST", "BILINEAR") or mode not in ("REFLECT", "WRAP", "CONSTANT", "NEAREST"):
        raise GraphError(f"node {node.name!r} ({node.type}): interpolation {interpolation!r} / fill_mode {mode!r} is not "
                         "one of TF's")

    def fn(images, transforms, output_shape=None, fill_value=0.0):
        images, transforms = jnp.asarray(images), jnp.asarray(transforms, jnp.float32)
        batch, height, width, _ = images.shape
        out_h, out_w = (height, width) if output_shape is None else static_ints(output_shape, node, "output_shape")
        if transforms.ndim != 2 or transforms.shape[1] != 8 or transforms.shape[0] not in (1, batch):
            raise GraphError(f"node {node.name!r} ({node.type}): transforms must be [1 or {batch}, 8], got "
                             f"{transforms.shape}")
        t = [transforms[:, i].reshape(-1, 1, 1) for i in range(8)]
        ys = jnp.arange(out_h, dtype=jnp.float32).reshape(1, -1, 1)
        xs = jnp.arange(out_w, dtype=jnp.float32).reshape(1, 1, -1)
        k = t[6] * xs + t[7] * ys + 1
        x = (t[0] * xs + t[1] * ys + t[2]) / k
        y = (t[3] * xs + t[4] * ys + t[5]) / k
        # TF fills where k is 0. XLA may compute k with a fused multiply-add in one place and without
        # in another, so a k that is 0 in the division shows as a non-finite coordinate instead.
        degenerate = (k == 0) | ~jnp.isfinite(x) | ~jnp.isfinite(y)
        x, y = _map_coordinate(x, width, mode), _map_coordinate(y, height, mode)
        fill = jnp.asarray(fill_value, jnp.float32)
        b = jnp.broadcast_to(jnp.arange(batch).reshape(-1, 1, 1), (batch, out_h, out_w))

        def read(yi, xi):
            inside = (yi >= 0) & (yi < height) & (xi >= 0) & (xi < width)
            yc = jnp.clip(yi, 0, height - 1).astype(jnp.int32)
            xc = jnp.clip(xi, 0, width - 1).astype(jnp.int32)
            yc, xc = jnp.broadcast_to(yc, b.shape), jnp.broadcast_to(xc, b.shape)
            value = images[b, yc, xc].astype(jnp.float32)
            return jnp.where(jnp.broadcast_to(inside, b.shape)[..., None], value, fill)

        if interpolation == "NEAREST":
            out = read(_round_half_away(y), _round_half_away(x))
        else:
            y0, x0 = jnp.floor(y), jnp.floor(x)
            y1, x1 = y0 + 1, x0 + 1
            top = ((x1 - x)[..., None] * read(y0, x0) + (x - x0)[..., None] * read(y0, x1))
            bottom = ((x1 - x)[..., None] * read(y1, x0) + (x - x0)[..., None] * read(y1, x1))
            out = (y1 - y)[..., None] * top + (y - y0)[..., None] * bottom
        out = jnp.where(jnp.broadcast_to(degenerate, b.shape)[..., None], fill, out)
        if not jnp.issubdtype(images.dtype, jnp.floating):
            out = jnp.trunc(out)
        return out.astype(images.dtype)

    return fn


# -- ScaleAndTranslate (tf.image.resize with antialias or lanczos/gaussian/mitchell kernels,
# tf.image.scale_and_translate) ----------------------------------------------------------------------


def _lanczos(radius: float):
    def kernel(x):
        pi = np.float32(3.14159265359)
        safe = np.maximum(x, np.float32(1e-3))
        value = np.float32(radius) * np.sin(pi * safe) * np.sin(pi * safe / np.float32(radius)) / (pi * pi * safe * safe)
        return np.where(x > radius, 0, np.where(x <= 1e-3, 1, value)).astype(np.float32)

    return kernel, radius


def _cubic(a: tuple, b: tuple):
    def kernel(x):
        outer = ((a[0] * x + a[1]) * x + a[2]) * x + a[3]
        inner = ((b[0] * x + b[1]) * x) * x + b[2]
        return np.where(x >= 2, 0, np.where(x >= 1, outer, inner)).astype(np.float32)

    return kernel, 2.0


_SAMPLING_KERNELS = {  # TF's sampling_kernels.h, in float32: (function of |x|, radius)
    "lanczos1": _lanczos(1.0), "lanczos3": _lanczos(3.0), "lanczos5": _lanczos(5.0),
    "gaussian": (lambda x: np.where(x >= 1.5, 0, np.exp((-x * x).astype(np.float64) / 0.5)).astype(np.float32), 1.5),
    "box": (lambda x: np.where(x < 0.5, 1, np.where(x == 0.5, 0.5, 0)).astype(np.float32), 1.0),
    "triangle": (lambda x: np.where(x < 1, 1 - x, 0).astype(np.float32), 1.0),
    "keyscubic": _cubic(tuple(np.float32(v) for v in (-0.5, 2.5, -4.0, 2.0)),
                        tuple(np.float32(v) for v in (1.5, -2.5, 1.0))),
    "mitchellcubic": _cubic(tuple(np.float32(v) for v in (-7 / 18, 2.0, -10 / 3, 16 / 9)),
                            tuple(np.float32(v) for v in (7 / 6, -2.0, 8 / 9))),
}


def _span_weights(kind: str, out_size: int, in_size: int, scale: float, translate: float, antialias: bool):
    """TF's ComputeSpansCore as an [out_size, in_size] float32 matrix: each output pixel's kernel
    weights over the input pixels of its span, normalized to sum to 1 (no weights when it samples
    outside the input)."""
    kernel, radius = _SAMPLING_KERNELS[kind]
    f32 = np.float32
    inv_scale = f32(1.0 / f32(scale))
    inv_translate = -inv_scale * f32(translate)
    kernel_scale = max(inv_scale, f32(1)) if antialias else f32(1)
    reach = f32(radius) * kernel_scale
    matrix = np.zeros((out_size, in_size), np.float32)
    for x in range(out_size):
        sample = (f32(x) + f32(0.5)) * inv_scale + inv_translate
        if sample < 0 or sample > in_size:
            continue
        start = min(max(int(np.ceil(sample - reach - f32(0.5))), 0), in_size - 1)
        end = min(max(int(np.floor(sample + reach - f32(0.5))), 0), in_size - 1) + 1
        positions = np.arange(start, end).astype(np.float32) + f32(0.5) - sample
        weights = kernel(np.abs(positions * (f32(1) / kernel_scale)))
        total = np.float32(0)
        for w in weights:
            total = np.float32(total + w)
        if abs(total) >= 1000 * np.finfo(np.float32).tiny:
            matrix[x, start:end] = weights * (f32(1) / total)
    return matrix


def _scale_translate_config(node, scale, translation, in_h: int, in_w: int, out_h: int, out_w: int):
    kind = node.attr_str("kernel_type", "lanczos3")
    if kind not in _SAMPLING_KERNELS:
        raise GraphError(f"node {node.name!r} ({node.type}): unrecognized kernel type {kind!r}")
    scale, translation = need_known(node, "scale and translation", "its sampling weights are built from",
                                    scale, translation)
    if scale.shape != (2,) or translation.shape != (2,) or not (scale > 0).all():
        raise GraphError(f"node {node.name!r} ({node.type}): scale (positive) and translation must have 2 values, "
                         f"got {scale.tolist()} and {translation.tolist()}")
    antialias = node.attr_bool("antialias", True)
    rows = _span_weights(kind, out_h, in_h, float(scale[0]), float(translation[0]), antialias)
    cols = _span_weights(kind, out_w, in_w, float(scale[1]), float(translation[1]), antialias)
    return rows, cols


@register("ScaleAndTranslate")
def _scale_and_translate(node):
    def fn(images, size, scale, translation):
        images = jnp.asarray(images)
        out_h, out_w = static_ints(size, node, "size")
        if images.ndim != 4 or out_h <= 0 or out_w <= 0 or 0 in images.shape[1:3]:
            raise GraphError(f"node {node.name!r} (ScaleAndTranslate): images must be 4-D and non-empty and the size "
                             f"positive, got {images.shape} and {[out_h, out_w]}")
        rows, cols = _scale_translate_config(node, scale, translation, images.shape[1], images.shape[2], out_h, out_w)
        x = images.astype(jnp.float32)
        x = jnp.einsum("oh,bhwc->bowc", rows, x, precision=lax.Precision.HIGHEST)
        return jnp.einsum("pw,bowc->bopc", cols, x, precision=lax.Precision.HIGHEST)

    return fn


@register("ScaleAndTranslateGrad")
def _scale_and_translate_grad(node):
    def fn(grads, original_image, scale, translation):
        grads, original = jnp.asarray(grads), jnp.asarray(original_image)
        rows, cols = _scale_translate_config(node, scale, translation, original.shape[1], original.shape[2],
                                             grads.shape[1], grads.shape[2])
        x = jnp.einsum("pw,bopc->bowc", cols, grads.astype(jnp.float32), precision=lax.Precision.HIGHEST)
        return jnp.einsum("oh,bowc->bhwc", rows, x, precision=lax.Precision.HIGHEST)

    return fn


# -- glimpses (recurrent attention models) ---------------------------------------------------------


def _glimpse_noise_mode(node) -> str:
    """TF's choice of fill for the parts of a glimpse outside the image."""
    uniform, noise = node.attr_bool("uniform_noise", True), node.attr_str("noise", "uniform")
    if uniform and noise not in ("", "uniform"):
        raise GraphError(f"node {node.name!r} ({node.type}): uniform_noise=True and noise={noise!r} cannot be "
                         "given together")
    if uniform or noise == "uniform":
        return "uniform"
    if noise in ("", "gaussian", "zero"):
        return noise or "gaussian"
    raise GraphError(f"node {node.name!r} ({node.type}): unknown noise {noise!r} (uniform, gaussian or zero)")


def _glimpse_noise(key, images, mode: str, shape: tuple[int, ...]):
    """What fills a glimpse outside its image: each image's own range (uniform), a normal draw with
    each channel's mean and deviation clipped to the channel's range (gaussian), or zeros."""
    if mode == "zero":
        return jnp.zeros(shape, images.dtype)
    if mode == "uniform":
        lo = jnp.min(images, axis=(1, 2, 3), keepdims=True)
        hi = jnp.max(images, axis=(1, 2, 3), keepdims=True)
        return lo + jax.random.uniform(key, shape, images.dtype) * (hi - lo)
    mean = jnp.mean(images, axis=(1, 2), keepdims=True)
    sigma = jnp.sqrt(jnp.mean(jnp.square(images - mean), axis=(1, 2), keepdims=True))
    lo, hi = jnp.min(images, axis=(1, 2), keepdims=True), jnp.max(images, axis=(1, 2), keepdims=True)
    return jnp.clip(mean + jax.random.normal(key, shape, images.dtype) * sigma, lo, hi)


@register("ExtractGlimpse", "ExtractGlimpseV2", random=True, context=True)
def _extract_glimpse(node):
    """Windows of `size` around per-image `offsets` (y, x), placed as TF's kernel places them: V1
    halves centered offsets and subtracts half the window whether or not they are normalized, V2
    (TF's fix) only for normalized ones. Pixels outside the image are noise drawn from the call's
    key (none is needed with noise='zero')."""
    version = 1 if node.type == "ExtractGlimpse" else 2
    centered, normalized = node.attr_bool("centered", True), node.attr_bool("normalized", True)
    mode = _glimpse_noise_mode(node)

    def fn(ctx, images, size, offsets):
        glimpse_h, glimpse_w = _static_size(size, node)
        images = jnp.asarray(images, jnp.float32)
        batch, height, width, channels = images.shape
        offsets = jnp.asarray(offsets, jnp.float32)
        y, x = offsets[:, 0], offsets[:, 1]
        if normalized:
            y, x = y * np.float32(height), x * np.float32(width)
        if centered and (normalized or version == 1):
            y = y / np.float32(2) + np.float32(height / 2) - np.float32(glimpse_h / 2)
            x = x / np.float32(2) + np.float32(width / 2) - np.float32(glimpse_w / 2)
        elif centered:
            y, x = y + np.float32(height / 2), x + np.float32(width / 2)
        elif version == 1:
            y, x = y - np.float32(glimpse_h / 2), x - np.float32(glimpse_w / 2)
        rows = y.astype(jnp.int32)[:, None] + jnp.arange(glimpse_h)[None]  # truncated toward zero, as (Index)y
        cols = x.astype(jnp.int32)[:, None] + jnp.arange(glimpse_w)[None]
        inside = (((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :])[..., None]
        picked = images[jnp.arange(batch)[:, None, None], jnp.clip(rows, 0, height - 1)[:, :, None],
                        jnp.clip(cols, 0, width - 1)[:, None, :]]
        if mode == "zero":
            return jnp.where(inside, picked, np.float32(0))
        noise = _glimpse_noise(ctx.rng(node), images, mode, (batch, glimpse_h, glimpse_w, channels))
        return jnp.where(inside, picked, noise)

    return fn
