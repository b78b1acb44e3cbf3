"""Summary ops: `tf.compat.v1.summary.*` and `merge_all` (see `jaxmeta.summary`).

Each op returns a `jaxmeta.summary.Summary`: the arrays to serialize (traced like any value, and
cut to what the summary keeps, e.g. the first `max_images` images) and, as static data, the tags
and options read from the node. Tags must be constants, as `tf.summary.*` makes them. Serializing
happens on the host after the call (`bytes(summary)`; `Session.run` does it).
"""

from __future__ import annotations

import numpy as np

from jaxmeta import summary as _summary
from jaxmeta._errors import GraphError
from jaxmeta.ops.registry import expect_shape, register, static

#: Ops whose string output is a `Summary` pytree, which a jitted function returns like arrays.
OPS = frozenset({"ScalarSummary", "HistogramSummary", "ImageSummary", "AudioSummaryV2", "TensorSummary",
                 "TensorSummaryV2", "MergeSummary"})


def _constant_bytes(node, value, what: str) -> list[bytes]:
    """A constant string tensor's elements (tags, metadata); a GraphError for a computed value."""
    if not (isinstance(value, np.ndarray) and value.dtype == object):
        raise GraphError(
            f"node {node.name!r} ({node.type}): its {what} must be a constant string tensor (as "
            "tf.summary.* makes it), not a computed value"
        )
    return [v if isinstance(v, bytes) else str(v).encode() for v in value.reshape(-1)]


def _strings(node, value, what: str) -> list[str]:
    return [v.decode("utf-8", "replace") for v in _constant_bytes(node, value, what)]


def _tag(node, value) -> str:
    expect_shape(node, "its tag", value, (), "the tag is a scalar string")
    return _strings(node, value, "tag")[0]


def _one(entry: _summary.Entry, *arrays) -> _summary.Summary:
    """The summary of one op; serialized at once when its values are constants (strings and
    64-bit values included, which a jitted function could not return as they are)."""
    summary = _summary.Summary([entry], [tuple(arrays)])
    if all(static(a) for a in arrays):
        return _summary.Summary([_summary.raw_entry(summary.SerializeToString(), entry.node)], [()])
    return summary


def _numbered(base: str, kind: str, count: int, limit: int) -> tuple[str, ...]:
    # TF's tags depend on the number requested, not produced: `tag/image` only for max_images=1.
    return tuple(f"{base}/{kind}" if limit == 1 else f"{base}/{kind}/{i}" for i in range(count))


@register("ScalarSummary")
def _scalar_summary(node):
    def fn(tags, values):
        names = _strings(node, tags, "tags")
        expect_shape(node, "its values", values, np.shape(tags), "tags and values must have the same shape")
        return _one(_summary.Entry("scalar", node.name, tuple(names)), values)

    return fn


@register("HistogramSummary")
def _histogram_summary(node):
    return lambda tag, values: _one(_summary.Entry("histogram", node.name, (_tag(node, tag),)), values)


@register("ImageSummary")
def _image_summary(node):
    max_images = node.attr_int("max_images", 3)
    bad_color = tuple(int(v) for v in np.asarray(node.attr_tensor("bad_color")).reshape(-1)) \
        if node.has_attr("bad_color") else (255, 0, 0, 255)

    def fn(tag, images):
        if np.ndim(images) != 4 or np.shape(images)[-1] not in (1, 3, 4):
            raise GraphError(f"node {node.name!r} (ImageSummary): images must be 4-D with 1, 3 or 4 channels, "
                             f"got shape {np.shape(images)}")
        if len(bad_color) < np.shape(images)[-1]:
            raise GraphError(f"node {node.name!r} (ImageSummary): bad_color has {len(bad_color)} channels, "
                             f"fewer than the images' {np.shape(images)[-1]}")
        count = min(np.shape(images)[0], max_images)
        tags = _numbered(_tag(node, tag), "image", count, max_images)
        return _one(_summary.Entry("image", node.name, tags, (("bad_color", bad_color),)), images[:count])

    return fn


@register("AudioSummaryV2")
def _audio_summary(node):
    max_outputs = node.attr_int("max_outputs", 3)

    def fn(tag, sounds, sample_rate):
        if np.ndim(sounds) not in (2, 3):
            raise GraphError(f"node {node.name!r} ({node.type}): audio must be [batch, frames] or "
                             f"[batch, frames, channels], got shape {np.shape(sounds)}")
        count = min(np.shape(sounds)[0], max_outputs)
        tags = _numbered(_tag(node, tag), "audio", count, max_outputs)
        return _one(_summary.Entry("audio", node.name, tags), sounds[:count], sample_rate)

    return fn


@register("TensorSummaryV2", "TensorSummary")
def _tensor_summary(node):
    dtype = node.attr_dtype("T")
    options = (("dtype", dtype), ("dtype_enum", node.attr_dtype_enum("T")))

    def fn(*args):
        if node.type == "TensorSummaryV2":
            tag, tensor, metadata = args
            entry = _summary.Entry("tensor", node.name, (_tag(node, tag),), (
                *options, ("metadata", _strings(node, metadata, "summary metadata")[0].encode("utf-8", "surrogateescape"))))
        else:
            (tensor,) = args
            entry = _summary.Entry("tensor", node.name, ("",), (*options, ("node_name", node.name)))
        return _one(entry, tensor)

    return fn


@register("MergeSummary")
def _merge_summary(node):
    def fn(*inputs):
        parts = []
        for value in inputs:
            if isinstance(value, _summary.Summary):
                parts.append(value)
            elif isinstance(value, np.ndarray) and value.dtype == object:
                parts.extend(v if isinstance(v, bytes) else str(v).encode() for v in value.reshape(-1))
            else:
                raise GraphError(f"node {node.name!r} (MergeSummary): its inputs must be summaries, got {value!r}")
        return _summary.merge(parts, node=node.name)

    return fn
