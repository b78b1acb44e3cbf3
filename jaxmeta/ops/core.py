"""Graph plumbing: constants, placeholders, identities, no-ops and assertions."""

from __future__ import annotations

import jax
import numpy as np

from jaxmeta import _dtypes
from jaxmeta._errors import GraphError
from jaxmeta._interpreter import ReadAlias, VarRef
from jaxmeta.ops.registry import checked, known, register


@register("Const", "HostConst")
def _const(node):
    value = node.attr_tensor("value")
    return lambda: value


@register("PlaceholderWithDefault")
def _placeholder_with_default(node):
    # Only runs when not fed: the default flows through.
    return lambda default: default


@register("Identity", "Snapshot", "RefIdentity", ref_inputs=True, context=True)
def _identity(node):
    # Identity of a resource handle passes the handle on; RefIdentity keeps the ref. Identity of
    # a ref variable (how `var/read` is built) aliases the variable's buffer in TF, so later
    # in-place updates show through: it becomes a `ReadAlias`, read when consumed. Snapshot copies.
    keep_ref = node.type == "RefIdentity" or node.attr_dtype_enum("T", 0) == _dtypes.RESOURCE
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


@register("DebugIdentity", "DebugIdentityV2", "Copy", "CopyHost")
def _pass_through(node):
    # tfdbg's copies of a watched tensor.
    return lambda x, *rest: x


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
