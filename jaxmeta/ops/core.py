"""Graph plumbing: constants, placeholders, identities, no-ops and assertions."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np

from jaxmeta import _dtypes
from jaxmeta._errors import GraphError
from jaxmeta._interpreter import ReadAlias, VarRef
from jaxmeta.ops.registry import checked, known, register, static
from jaxmeta.proto import types_pb2


@register("Const", "HostConst")
def _const(node):
    value = node.attr_tensor("value")
    return lambda: value


@register("PlaceholderWithDefault")
def _placeholder_with_default(node):
    # Only runs when not fed: the default flows through.
    return lambda default: default


@register("Identity", "Snapshot", "RefIdentity", "DebugGradientRefIdentity", ref_inputs=True, context=True)
def _identity(node):
    # Identity of a resource handle passes the handle on; RefIdentity (and DebugGradientRefIdentity,
    # tfdbg's gradient watch of a ref, whose TF gradient passes dy through) keeps the ref. Identity of
    # a ref variable (how `var/read` is built) aliases the variable's buffer in TF, so later
    # in-place updates show through: it becomes a `ReadAlias`, read when consumed. Snapshot copies.
    keep_ref = node.type in ("RefIdentity", "DebugGradientRefIdentity") or node.attr_dtype_enum("T", 0) == _dtypes.RESOURCE
    alias = node.type == "Identity"

    def fn(ctx, x):
        if keep_ref or not isinstance(x, VarRef):
            return x
        if alias:
            return x if isinstance(x, ReadAlias) else ReadAlias(x.name)
        return ctx.read(x)

    return fn


@register("IdentityN")
def _identity_n(node):
    return lambda *xs: tuple(xs)


@register("StopGradient")
def _stop_gradient(node):
    return jax.lax.stop_gradient


@register("PreventGradient")
def _prevent_gradient(node):
    # TF raises if a gradient is requested through it; JAX users may differentiate anyway.
    return lambda x: x


@register("NoOp", "ControlTrigger")
def _no_op(node):
    return lambda *args: None


@register("Assert")
def _assert(node):
    """TF's Assert, checked where its condition is known (constants, any call without `jax.jit`):
    a false one raises a GraphError with the data, as TF raises. Inside traced code the check would
    need a host round trip, so it is not made (see the README's "What runs")."""
    summarize = node.attr_int("summarize", 3)

    def fn(condition, *data):
        value = checked(condition)
        if value is not None and not np.all(value):
            shown = " ".join(f"[{_summary(known(d), summarize)}]" for d in data)
            raise GraphError(f"node {node.name!r} (Assert): assertion failed: {shown}")

    return fn


def _summary(value, summarize: int) -> str:
    """A value as TF's Assert message shows it: strings as text, at most `summarize` elements."""
    if value is None:
        return "(computed under jax.jit)"
    flat = np.reshape(value, -1)
    items = [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v) for v in flat[:summarize].tolist()]
    return " ".join(items) + ("..." if flat.size > summarize else "")


@register("CheckNumerics", "CheckNumericsV2")
def _check_numerics(node):
    """Forwards x; where x is known (any call without `jax.jit`), NaN or Inf raise a GraphError with
    the op's message, as TF raises (under jit the check would need a host round trip)."""
    message = node.attr_str("message", "")

    def fn(x):
        value = checked(x)
        if value is not None and value.dtype.kind in "fc" and not np.isfinite(value).all():
            what = "NaN" if np.isnan(value).any() else "Inf"
            raise GraphError(f"node {node.name!r} ({node.type}): {message} : Tensor had {what} values")
        return x

    return fn


@register("EnsureShape")
def _ensure_shape(node):
    """Forwards x after checking its (static) shape against the op's `shape` (-1: any size)."""
    want = node.attr_shape("shape")

    def fn(x):
        got = tuple(np.shape(x))
        if want is not None and (len(got) != len(want) or any(w >= 0 and w != g for w, g in zip(want, got))):
            raise GraphError(f"node {node.name!r} (EnsureShape): shape of tensor {got} is not compatible "
                             f"with expected shape {list(want)}")
        return x

    return fn


@register("DebugIdentityV2", "DebugGradientIdentity", "Copy", "CopyHost")
def _pass_through(node):
    # tfdbg's copies of a watched tensor; DebugGradientIdentity marks a tensor whose gradient tfdbg's
    # GradientsDebugger records (its TF gradient passes dy through, as jax.grad does here).
    return lambda x, *rest: x


def _debug_watch(node) -> bool:
    """Parses the attributes TF's `BaseDebugOp` kernels (DebugIdentity, DebugIdentityV3,
    DebugNanCount) check: a GraphError for a `tensor_name` TF cannot parse (TF fails when the op
    runs). Returns whether the node's gate is open, i.e. whether it computes its output: with
    `gated_grpc`, TF's kernel outputs an empty `[0]` tensor unless a `debug_urls` entry is not
    `grpc://` (a gRPC debug server could open the gate; jaxmeta talks to none). Nothing is written
    to `debug_urls` (e.g. `file://` dumps): only the values are reproduced."""
    tensor_name = node.attr_str("tensor_name", "")
    parts = tensor_name.split(":")
    slot_ok = len(parts) == 1 or re.fullmatch(r"\s*[+-]?[0-9]+\s*", parts[1]) and -2**31 <= int(parts[1]) < 2**31
    if not tensor_name or len(parts) > 2 or not slot_ok:
        raise GraphError(f"node {node.name!r} ({node.type}): cannot parse tensor_name {tensor_name!r} (expected "
                         "'node' or 'node:output_slot'); TF rejects this when the op runs")
    gated = node.attr_bool("gated_grpc", False)
    return not gated or any(not url.startswith("grpc://") for url in node.attr_strs("debug_urls", []))


@register("DebugIdentity", "DebugIdentityV3")
def _debug_identity(node):
    """tfdbg's watch of a tensor: the tensor itself (or, gated off, an empty `[0]` tensor as TF's
    kernel outputs; see `_debug_watch`). V3 only adds attributes naming the watched node's input
    or output (`io_of_node`, `is_input`, `io_index`), which affect what TF publishes, not the value."""
    if _debug_watch(node):
        return lambda x: x
    return lambda x: np.zeros((0,), getattr(x, "dtype", np.dtype(object)))  # a scalar string arrives as bytes


@register("DebugNanCount")
def _debug_nan_count(node):
    """The number of NaNs in the input, as int64 of shape `[1]` (TF's kernel writes a vector of one
    element, also for a scalar input); `[0]` when gated off (see `_debug_watch`). Integer inputs
    have no NaNs."""
    open_gate = _debug_watch(node)
    i64 = jax.dtypes.canonicalize_dtype(np.int64)

    def fn(x):
        if not open_gate:
            return np.zeros((0,), i64)
        if static(x):
            x = np.asarray(x)
            return np.asarray([np.isnan(x).sum() if jnp.issubdtype(x.dtype, jnp.inexact) else 0], i64)
        return jnp.reshape(jnp.sum(jnp.isnan(x), dtype=i64), (1,))

    return fn


# ToBool's scalar dtypes: TF's kernel rejects the others ("... cannot be converted to a boolean").
_TO_BOOL_SCALARS = frozenset((types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE, types_pb2.DT_INT32, types_pb2.DT_UINT8,
                              types_pb2.DT_INT16, types_pb2.DT_INT8, types_pb2.DT_INT64, types_pb2.DT_BOOL,
                              types_pb2.DT_STRING))


@register("ToBool")
def _to_bool(node):
    """A tensor's truthiness, as TF's `If`/`While` read a non-bool predicate: a scalar is true when
    it is not 0 (NaN is true) or, for a string, not empty; any other tensor is true when it has
    elements (whatever they are: only the shape matters, so the result is static).

    Raises:
        GraphError: for a scalar of a dtype TF's kernel rejects (half, bfloat16, complex, uint16/32/64).
    """
    dtype = node.attr_dtype_enum("T")

    def fn(x):
        if np.ndim(x) > 0:
            return np.asarray(np.size(x) > 0)
        if dtype not in _TO_BOOL_SCALARS:
            raise GraphError(f"node {node.name!r} (ToBool): a {_dtypes.short_name(dtype)} scalar cannot be converted to a "
                             "boolean (TF rejects this); cast it to bool or compare it first")
        if dtype == types_pb2.DT_STRING:
            return np.asarray(len(np.asarray(x, object).item()) > 0)
        return np.asarray(x != 0) if static(x) else jnp.asarray(x) != 0

    return fn


@register("ZerosLike")
def _zeros_like(node):
    from jaxmeta.ops.functional import zeros_like_variant

    def fn(x):
        if isinstance(x, np.ndarray):
            return np.zeros_like(x)
        variant = zeros_like_variant(x, fn)  # TensorLists and Optionals (TF's variants)
        return jax.numpy.zeros_like(x) if variant is None else variant

    return fn


@register("OnesLike")
def _ones_like(node):
    def fn(x):
        return np.ones_like(x) if isinstance(x, np.ndarray) else jax.numpy.ones_like(x)

    return fn
