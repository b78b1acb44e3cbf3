"""Image ops: resizing (TF1's index conventions), crop-and-resize, colour adjustments and
non-maximum suppression.

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
from jaxmeta.ops.registry import register

# -- resizing -------------------------------------------------------------------------------------


def _static_size(size, node) -> tuple[int, int]:
    if not isinstance(size, (np.ndarray, np.generic, list, tuple)):
        raise GraphError(
            f"node {node.name!r} ({node.type}): the output size must be known when the graph is traced "
            "(a constant), not computed from fed or variable values"
        )
    h, w = (int(v) for v in np.asarray(size).reshape(-1))
    return h, w


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


@register("ResizeBicubic")
def _resize_bicubic(node):
    align, half = _resize_flags(node)

    def fn(images, size):
        out_h, out_w = _static_size(size, node)
        x = images.astype(jnp.float32)
        x = _cubic_axis(x, x.shape[1], out_h, 1, align, half)
        return _cubic_axis(x, x.shape[2], out_w, 2, align, half)

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


@register("CropAndResize")
def _crop_and_resize(node):
    """Crops normalized boxes `[y1, x1, y2, x2]` out of `image[box_ind]` and resizes them to
    `crop_size` (bilinear or nearest); samples outside the image get `extrapolation_value`."""
    method = node.attr_str("method", "bilinear")
    if method not in ("bilinear", "nearest"):
        raise GraphError(f"node {node.name!r} ({node.type}): method {method!r} is not supported")
    extrapolation = node.attr_float("extrapolation_value", 0.0)

    def positions(lo, hi, size: int, crop: int):
        if crop > 1:
            step = (hi - lo) * (size - 1) / (crop - 1)
            return lo[:, None] * (size - 1) + jnp.arange(crop, dtype=jnp.float32)[None, :] * step[:, None]
        return jnp.broadcast_to((0.5 * (lo + hi) * (size - 1))[:, None], (lo.shape[0], crop))

    def fn(image, boxes, box_ind, crop_size):
        ch, cw = _static_size(crop_size, node)
        _, h, w, _ = image.shape
        image = image.astype(jnp.float32)
        boxes = boxes.astype(jnp.float32)
        ys = positions(boxes[:, 0], boxes[:, 2], h, ch)  # [B, ch]
        xs = positions(boxes[:, 1], boxes[:, 3], w, cw)  # [B, cw]
        inside = ((ys >= 0) & (ys <= h - 1))[:, :, None] & ((xs >= 0) & (xs <= w - 1))[:, None, :]
        b = box_ind.astype(jnp.int32)[:, None, None]

        def sample(yi, xi):
            yi = jnp.clip(yi, 0, h - 1).astype(jnp.int32)[:, :, None]
            xi = jnp.clip(xi, 0, w - 1).astype(jnp.int32)[:, None, :]
            return image[b, yi, xi]  # [B, ch, cw, C]

        if method == "nearest":
            out = sample(jnp.floor(ys + 0.5), jnp.floor(xs + 0.5))  # roundf (positions are >= 0 here)
        else:
            y0, x0 = jnp.floor(ys), jnp.floor(xs)
            ly, lx = (ys - y0)[:, :, None, None], (xs - x0)[:, None, :, None]
            y1, x1 = jnp.ceil(ys), jnp.ceil(xs)
            tl, tr, bl, br = sample(y0, x0), sample(y0, x1), sample(y1, x0), sample(y1, x1)
            top = tl + (tr - tl) * lx
            bottom = bl + (br - bl) * lx
            out = top + (bottom - top) * ly
        return jnp.where(inside[..., None], out, jnp.float32(extrapolation))

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
    return _hsv_to_rgb


@register("AdjustContrastv2")
def _adjust_contrast(node):
    def fn(images, factor):
        x = images.astype(jnp.float32)
        mean = jnp.mean(x, axis=(-3, -2), keepdims=True)
        return ((x - mean) * factor + mean).astype(images.dtype)

    return fn


@register("AdjustSaturation")
def _adjust_saturation(node):
    def fn(images, scale):
        hsv = _rgb_to_hsv(images.astype(jnp.float32))
        s = jnp.clip(hsv[..., 1] * scale, 0, 1)
        return _hsv_to_rgb(jnp.stack([hsv[..., 0], s, hsv[..., 2]], axis=-1)).astype(images.dtype)

    return fn


@register("AdjustHue")
def _adjust_hue(node):
    def fn(images, delta):
        hsv = _rgb_to_hsv(images.astype(jnp.float32))
        h = jnp.fmod(hsv[..., 0] + delta, 1.0)
        h = jnp.where(h < 0, h + 1, h)
        return _hsv_to_rgb(jnp.stack([h, hsv[..., 1], hsv[..., 2]], axis=-1)).astype(images.dtype)

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


def _nms_padded(boxes, scores, max_out: int, iou_threshold, score_threshold):
    """Greedy hard NMS, jit-able: (indices padded with 0 to `max_out`, their scores, count)."""
    n = boxes.shape[0]
    scores = scores.astype(jnp.float32)
    if n == 0 or max_out == 0:
        return jnp.zeros((max_out,), jnp.int32), jnp.zeros((max_out,), jnp.float32), jnp.int32(0)
    iou = _pairwise_iou(boxes.astype(jnp.float32))
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
