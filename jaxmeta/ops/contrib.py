"""Kernels from `tf.contrib`'s op libraries (TF 1.x), which TF 2 can neither build nor load, so
graphs that contain them run only here: `GatherTree` (`tf.contrib.seq2seq`'s beam search, e.g.
the NMT tutorial's decoders) in both of its versions, and `Resampler` with `ResamplerGrad`
(`tf.contrib.resampler`, spatial transformer networks). `tf.contrib.image`'s projective transform
is in `ops/image.py`, `tf.contrib.layers`' feature crosses in `ops/sparse.py`.

Each follows the CPU kernel of TF 1.15's contrib library, loop by loop.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxmeta._errors import GraphError
from jaxmeta.ops.registry import checked, register

# -- GatherTree -----------------------------------------------------------------------------------


def _gather_tree(step_ids, parent_ids, lengths, fill):
    """Each beam's ids traced back from its last step (`lengths - 1`) through its parents.

    `step_ids`, `parent_ids`: [time, batch, beam]; `lengths`: [batch, beam], at most `time`.
    Steps at or past a beam's length are `fill`. Returns the beams and, per step, whether the
    parent it read was a valid beam (where it was not, that step and all earlier ones are -1,
    the GPU kernel's rule).
    """
    time, batch, width = step_ids.shape
    beam = jnp.broadcast_to(jnp.arange(width, dtype=jnp.int32), (batch, width))

    def back(carry, t):
        # The last step reads the beam's own entry; earlier ones follow the parent chain.
        index = jnp.where(t >= lengths - 1, beam, carry)
        valid = (index >= 0) & (index < width)
        at = jnp.clip(index, 0, width - 1)
        ids = jnp.take_along_axis(step_ids[t], at, axis=1)
        parents = jnp.take_along_axis(parent_ids[t], at, axis=1)
        out = jnp.where(t < lengths, jnp.where(valid, ids, -1), fill)
        return jnp.where(valid, parents, -1), (out, valid | (t >= lengths))

    _, (beams, ok) = lax.scan(back, beam, jnp.arange(time), reverse=True)
    return beams, ok


@register("GatherTree")
def _gather_tree_op(node):
    """`GatherTree(step_ids, parent_ids, max_sequence_lengths, end_token)` (TF >= 1.3): steps past
    `min(time, max_sequence_lengths[batch])` are `end_token`, and so is every step after a beam's
    first `end_token`. The first version, `GatherTree(step_ids, parent_ids, sequence_length)`
    with a length per beam, fills with -1 and leaves steps after an end token as they are.

    A parent id outside `[0, beam_width)` is an error, as in TF's CPU kernel (which also lets
    `beam_width` itself through and reads past the beam). When the ids are only known at run time
    (under `jax.jit`), such a step and the ones before it are -1 instead, as TF's GPU kernel has it.
    """

    def fn(step_ids, parent_ids, lengths, end_token=None):
        step_ids, parent_ids = jnp.asarray(step_ids), jnp.asarray(parent_ids)
        if step_ids.ndim != 3 or step_ids.shape != parent_ids.shape:
            raise GraphError(f"node {node.name!r} (GatherTree): step_ids and parent_ids must be [time, batch, "
                             f"beam] of one shape, got {step_ids.shape} and {parent_ids.shape}")
        time, batch, width = step_ids.shape
        lengths = jnp.asarray(lengths, jnp.int32)
        first_version = end_token is None
        want = (batch, width) if first_version else (batch,)
        if lengths.shape != want:
            raise GraphError(f"node {node.name!r} (GatherTree): the sequence lengths must be {list(want)}, got "
                             f"{list(lengths.shape)}")
        if not first_version:
            lengths = jnp.broadcast_to(lengths[:, None], (batch, width))
        lengths = jnp.minimum(lengths, time)
        fill = jnp.asarray(-1 if first_version else end_token, step_ids.dtype)
        beams, ok = _gather_tree(step_ids, parent_ids, lengths, fill)
        if checked(parent_ids) is not None and checked(lengths) is not None:
            bad = ~np.asarray(ok)
            if bad.any():  # the first beam with a bad parent, at its last bad step (TF goes backwards)
                b, k = (int(i[0]) for i in np.nonzero(bad.any(axis=0)))
                t = int(np.nonzero(bad[:, b, k])[0][-1])
                raise GraphError(f"node {node.name!r} (GatherTree): invalid parent id at (batch, time, beam) == "
                                 f"({b}, {t}, {k}): parent ids must be in [0, {width})")
        if first_version:
            return beams
        # Every step after a beam's first end token is an end token too.
        ended = jnp.cumsum((beams == fill).astype(jnp.int32), axis=0) - (beams == fill)
        return jnp.where(ended > 0, fill, beams)

    return fn


# -- Resampler ------------------------------------------------------------------------------------


def _resample(data, warp):
    """Bilinear samples of `data` [batch, height, width, channels] at `warp`'s (x, y) points
    [batch, ..., 2], with the image padded by zeros: a point with x in (-1, width) and y in
    (-1, height) mixes its four neighbors (those outside the image read 0); any other point is 0."""
    batch, height, width, channels = data.shape
    points = warp.reshape(batch, -1, 2)
    x, y = points[..., 0], points[..., 1]
    inside = (x > -1) & (y > -1) & (x < width) & (y < height)
    # Points outside (NaN too) sample at the origin, then read 0: their gradients stay finite.
    x, y = jnp.where(inside, x, 0), jnp.where(inside, y, 0)
    fx, fy = jnp.floor(x.astype(jnp.float32)), jnp.floor(y.astype(jnp.float32))
    one = jnp.asarray(1, data.dtype)
    dx, dy = (fx + 1).astype(data.dtype) - x, (fy + 1).astype(data.dtype) - y
    rows = jnp.arange(batch)[:, None]

    def at(px, py):
        px, py = px.astype(jnp.int32), py.astype(jnp.int32)
        valid = (px >= 0) & (py >= 0) & (px <= width - 1) & (py <= height - 1)
        value = data[rows, jnp.clip(py, 0, height - 1), jnp.clip(px, 0, width - 1)]
        return jnp.where(valid[..., None], value, 0)

    wx, wy = dx[..., None], dy[..., None]
    out = (wx * wy * at(fx, fy) + (one - wx) * (one - wy) * at(fx + 1, fy + 1)
           + wx * (one - wy) * at(fx, fy + 1) + (one - wx) * wy * at(fx + 1, fy))
    out = jnp.where(inside[..., None], out, 0)
    return out.reshape(*warp.shape[:-1], channels)


def _check_resampler(node, data, warp):
    if data.ndim != 4 or warp.ndim < 2 or warp.shape[-1] != 2 or warp.shape[0] != data.shape[0]:
        raise GraphError(f"node {node.name!r} ({node.type}): data must be [batch, height, width, channels] and "
                         f"warp [batch, ..., 2] of the same batch, got {data.shape} and {warp.shape}")


@register("Resampler")
def _resampler(node):
    """`tf.contrib.resampler.resampler(data, warp)`: see `_resample`."""

    def fn(data, warp):
        data, warp = jnp.asarray(data), jnp.asarray(warp)
        _check_resampler(node, data, warp)
        return _resample(data, warp)

    return fn


@register("ResamplerGrad")
def _resampler_grad(node):
    """The gradients of `Resampler` with respect to data and warp, which TF1 training graphs hold:
    the vector-Jacobian product of the same interpolation (the floors held fixed, as in TF)."""

    def fn(data, warp, grad_output):
        data, warp = jnp.asarray(data), jnp.asarray(warp)
        _check_resampler(node, data, warp)
        _, vjp = jax.vjp(_resample, data, warp)
        return vjp(jnp.asarray(grad_output, data.dtype))

    return fn
