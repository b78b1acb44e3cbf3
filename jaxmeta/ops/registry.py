"""The op registry: TF op type -> a builder that parses a node once and returns a closure.

A handler is a *builder*: `build(node) -> fn`. It reads the node's attributes (through the typed
`node.attr_*` accessors) at build time and returns a closure over arrays only, so nothing inside
the traced function touches protobufs:

    @register("BiasAdd")
    def _bias_add(node):
        nchw = node.attr_str("data_format", "NHWC") == "NCHW"
        def fn(x, bias):
            ...
        return fn

Closure conventions:
- inputs arrive in the node's input order; a single-output op returns one array, a multi-output
  op returns a tuple (or list) with one entry per output, an op without outputs returns None;
- values are NumPy arrays when known at trace time (constants, shapes) and JAX arrays otherwise;
  handlers keep NumPy in, NumPy out where they can (see `static`), so that shape arithmetic stays
  static and `Reshape` stays jit-able;
- `context=True`: the closure is called as `fn(ctx, *inputs)` with an `OpContext` (variables,
  random keys); `ref_inputs=True`: variable refs/resource handles arrive as `VarRef`s instead of
  their current values (for Assign*, Apply*, Scatter*, ReadVariableOp, ...).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import concrete_or_error

from jaxmeta._errors import GraphError, RunTimeValuesError

OpFn = Callable[..., Any]
Builder = Callable[[Any], OpFn]


@dataclasses.dataclass(frozen=True)
class OpSpec:
    """How to run one op type."""

    op_type: str
    build: Builder
    context: bool = False
    ref_inputs: bool = False
    assigns: bool = False
    random: bool = False


_REGISTRY: dict[str, OpSpec] = {}


#: Ops that pass a resource handle on unchanged.
FORWARDING = ("Identity", "Enter", "RefEnter", "RefIdentity")


def handle_source(node: Any) -> Any:
    """The node that makes the resource handle `node` reads (its input 0), through `FORWARDING`
    ops (a hostile file's cycle of them ends the walk); None where the handle is a function
    body's argument (the handle passed in then names the resource when the op runs)."""
    graph, ref, seen = node.graph, node.inputs[0], set()
    while ref.node in graph.nodes:
        producer = graph.nodes[ref.node]
        if producer.type not in FORWARDING or not producer.inputs or producer.name in seen:
            return producer
        seen.add(producer.name)
        ref = producer.inputs[0]
    return None


def step_assigns(step: Any) -> bool:
    """Whether a built step assigns variables (or a mutable table): its closure says so where it
    knows (`fn.assigns`: v2 function calls and loops whose bodies assign; an import into a static
    table, which changes nothing), else its op type does."""
    return bool(getattr(step.fn, "assigns", step.spec.assigns))

# Op types that read/write files, run Python or talk to the network. jaxmeta never runs them
# implicitly; the value says how to get the effect through jaxmeta's API instead.
SIDE_EFFECT_OPS: dict[str, str] = {}


def register(
    *op_types: str,
    context: bool = False,
    ref_inputs: bool = False,
    assigns: bool = False,
    random: bool = False,
) -> Callable[[Builder], Builder]:
    """Decorator registering a builder for one or more TF op types (registering twice raises)."""

    def deco(build: Builder) -> Builder:
        for op_type in op_types:
            _add(OpSpec(op_type, build, context, ref_inputs or assigns, assigns, random))
        return build

    return deco


def register_op(
    op_type: str,
    build: Builder,
    *,
    context: bool = False,
    ref_inputs: bool = False,
    assigns: bool = False,
    random: bool = False,
    override: bool = False,
) -> None:
    """Registers a user-supplied op: `build(node)` returns the closure that computes it.

    Args:
        op_type: the TF op type (`NodeDef.op`), e.g. `"MyCustomOp"`.
        build: called once per node with the `jaxmeta.Node`; returns `fn(*inputs)` (or
            `fn(ctx, *inputs)` with `context=True`).
        context: pass an `OpContext` (variables, `ctx.rng(node)` for random keys) first.
        ref_inputs: pass variable refs/resource handles as `VarRef`s, not values.
        assigns: the op writes variables (through `ctx.assign`); only `Graph.step` runs it.
        random: the op draws random numbers (needs `key=`).
        override: replace a handler jaxmeta already has (also for side-effect ops such as
            `ReadFile` or `PyFunc`, which jaxmeta refuses unless you supply them deliberately).
    """
    spec = OpSpec(op_type, build, context, ref_inputs or assigns, assigns, random)
    if override:
        _REGISTRY[op_type] = spec
        SIDE_EFFECT_OPS.pop(op_type, None)
    else:
        _add(spec)


def _add(spec: OpSpec) -> None:
    if spec.op_type in _REGISTRY:
        raise ValueError(f"op type {spec.op_type!r} is registered twice; pass override=True to replace it")
    _REGISTRY[spec.op_type] = spec


_PROGRAM_NODES: contextvars.ContextVar[frozenset[str] | None] = contextvars.ContextVar(
    "jaxmeta_program_nodes", default=None)


@contextlib.contextmanager
def _holding(var: contextvars.ContextVar, value: Any) -> Iterator[None]:
    """`var` set to `value` for the duration of the block."""
    token = var.set(value)
    try:
        yield
    finally:
        var.reset(token)


def building(names: Iterable[str]) -> contextlib.AbstractContextManager[None]:
    """While a program's nodes are built: `program_nodes()` returns their names."""
    return _holding(_PROGRAM_NODES, frozenset(names))


def program_nodes() -> frozenset[str] | None:
    """The nodes of the program being built (its pruned subgraph), or None outside a build.

    For a builder that inspects a node's consumers: only those in the program will run.
    """
    return _PROGRAM_NODES.get()


_UNCHECKED: contextvars.ContextVar[bool] = contextvars.ContextVar("jaxmeta_unchecked", default=False)


def unchecked() -> contextlib.AbstractContextManager[None]:
    """While a step of a cond branch that is not known to be taken runs (both branches run, and
    the untaken one's values may well fail a check): checks of values do not raise."""
    return _holding(_UNCHECKED, True)


def checking() -> bool:
    """False while `unchecked()` holds (see `checked`)."""
    return not _UNCHECKED.get()


class _Dead:
    """The value on the side of a cond's `Switch` that its predicate, known when the step runs,
    does not take: TF's dead tensor. A step reading one does not run and its outputs are dead too
    (a `Merge` passes on its live input), so a branch not taken costs nothing and cannot fail on
    values it was never meant to see (TF1's KMeans concatenates its empty centers in one)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<dead: cond branch not taken>"


DEAD = _Dead()


def checked(value: Any) -> np.ndarray | None:
    """`known(value)` for ops that check values as TF's kernels do (indices in range, divisors not
    zero, Assert): None, so nothing is checked, where the value is traced or `unchecked()` holds."""
    return known(value) if checking() else None


def lookup(op_type: str) -> OpSpec | None:
    return _REGISTRY.get(op_type)


#: How a node runs whose op is a function of the graph's library (TF1's `function.Defun` calls
#: the function by its name): set by `jaxmeta.ops.functional`.
FUNCTION_CALL: OpSpec | None = None


def spec_of(node: Any) -> OpSpec | None:
    """How to run `node`: its op type's handler, or a call when its op names a library function."""
    spec = _REGISTRY.get(node.type)
    if spec is None and node.type in getattr(node.graph, "functions", ()):
        return FUNCTION_CALL
    return spec


def supported_ops() -> list[str]:
    return sorted(_REGISTRY)


def side_effect(op_types: dict[str, str]) -> None:
    """Declares op types that are never executed implicitly, with the advice to give instead."""
    SIDE_EFFECT_OPS.update(op_types)


# -- helpers shared by op families ----------------------------------------------------------------


def static(*xs: Any) -> bool:
    """True when every value is known at trace time (NumPy/Python), so NumPy can compute it."""
    return all(isinstance(x, (np.ndarray, np.generic, int, float, bool)) for x in xs)


def known(value: Any) -> np.ndarray | None:
    """`value` as NumPy when it is known now: static, a concrete array (outside jit), or a tracer
    wrapping a concrete value (e.g. under `jax.grad` without jit); None when only known at run time."""
    if static(value) or not isinstance(value, jax.core.Tracer):
        return np.asarray(value)
    try:
        return np.asarray(concrete_or_error(None, value, ""))
    except jax.errors.ConcretizationTypeError:
        return None


#: `need_known`'s `why` for ops whose output sizes depend on input values (sparse, CTC decoders).
OUTPUT_SIZES = "the size of its outputs depends on"


def need_known(node: Any, what: str, why: str, *values: Any, hint: str = "") -> list[np.ndarray]:
    """`values` as NumPy, for ops whose output sizes (or host work) depend on them; a GraphError
    naming the node when one is only known at run time (traced under `jax.jit`).

    `what` names the values ("segment_ids", "its shape"), `why` says what needs them (it reads
    "{why} the values of {what}"), `hint` adds advice of the op family's own.
    """
    out = [known(v) for v in values]
    if any(v is None for v in out):
        raise RunTimeValuesError(
            f"node {node.name!r} ({node.type}): {why} the values of {what}, which are only known at run "
            f"time under jax.jit (XLA's shapes are static). Compute {what} in the graph from constants or "
            "tensor shapes (tf.shape), or call the function without jax.jit "
            f"(Session(graph, jit=False)){hint}."
        )
    return out


def static_ints(value: Any, node: Any, what: str, count: int | None = None) -> list[int]:
    """`value` (a shape, sizes, window) as ints known when the graph is traced; a GraphError naming
    the node when it is computed from fed or variable values, or has not `count` elements."""
    if not (static(value) or isinstance(value, (list, tuple))):
        raise GraphError(
            f"node {node.name!r} ({node.type}): {what} must be known when the graph is traced (a constant "
            "or the Shape of a statically shaped tensor), not computed from fed or variable values"
        )
    ints = [int(v) for v in np.asarray(value).reshape(-1)]
    if count is not None and len(ints) != count:
        raise GraphError(f"node {node.name!r} ({node.type}): {what} must have {count} elements, got {ints}")
    return ints


def expect_shape(node: Any, what: str, value: Any, want: Iterable[int], hint: str) -> None:
    """A GraphError naming the node when `value` has another shape than `want` (TF's kernels reject
    it at run time; JAX would fail less clearly); `hint` says what to check."""
    if tuple(np.shape(value)) != tuple(want):
        raise GraphError(f"node {node.name!r} ({node.type}): {what} has shape {tuple(np.shape(value))}, "
                         f"expected {tuple(want)}; {hint}")


def checked_indices(node: Any, indices: Any, bounds: Any, what: str = "indices", *,
                    negative_ok: bool = False) -> Any:
    """`indices` into axes of sizes `bounds`, checked as TF's CPU kernels check them.

    A scalar `bounds` checks every value; a sequence checks `indices[..., k]` against `bounds[k]`
    (GatherNd's coordinates). Values known now (constants, or any value outside `jax.jit`) come
    back as NumPy int64, and one outside `[0, bound)` raises a GraphError naming the node and the
    first bad position, as TF does (`negative_ok`: negative values are allowed, as in
    `UnsortedSegment*`, which drops them). Traced values cannot raise (nor do values while
    `unchecked()` holds): they come back as a jax array where each one outside its range,
    negative ones included, is `bound`, which gathers with `mode="fill"` read as zeros and
    scatters with `mode="drop"` skip (TF's GPU kernels' rule). NumPy and jax.numpy would instead
    wrap negative indices and clamp or fill large ones.
    """
    value = checked(indices)
    sizes = np.asarray(bounds, np.int64)
    if value is None:  # traced or unchecked: out-of-range values (negative ones too) become the bound
        indices = jnp.asarray(indices)
        limit = jnp.broadcast_to(jnp.asarray(sizes, indices.dtype), indices.shape)
        return jnp.where((indices < 0) | (indices >= limit), limit, indices)
    value = value.astype(np.int64)
    bad = (value >= sizes) if negative_ok else (value < 0) | (value >= sizes)
    if bad.any():
        at = np.unravel_index(int(np.argmax(bad.reshape(-1))), bad.shape)
        at = at[:-1] if sizes.ndim else at  # a whole coordinate for GatherNd's indices
        if sizes.ndim:
            where = f"does not index into shape {sizes.tolist()}"
        else:
            where = f"is not below {int(sizes)}" if negative_ok else f"is not in [0, {int(sizes)})"
        position = [int(a) for a in at] if at else ""
        raise GraphError(
            f"node {node.name!r} ({node.type}): {what}{position} = {value[at].tolist()} {where}, which TF "
            "rejects. Check the ids fed to the graph against the size of what they index")
    return value


def in_host_memory(*xs: Any) -> bool:
    """True when no value is traced and every JAX array among them is in the CPU's memory: an op
    running op by op (a host stage of `_staging`, an unjitted call) may then compute in NumPy
    instead of dispatching jax.numpy ops one at a time. Traced values, and arrays on an
    accelerator (which NumPy would copy back), keep jax.numpy."""
    for x in xs:
        if isinstance(x, jax.core.Tracer):
            return False
        if isinstance(x, jax.Array) and any(d.platform != "cpu" for d in x.devices()):
            return False
    return True


def xnp(*xs: Any):
    """NumPy for static inputs (keeps shape arithmetic static), jax.numpy otherwise."""
    return np if static(*xs) else jnp


def broadcast_ranks(*xs: Any) -> list[Any]:
    """Left-pads ranks with size-1 axes, as TF's implicit broadcasting does (rank promotion is
    explicit here so handlers also run under `jax_numpy_rank_promotion="raise"`)."""
    rank = max(np.ndim(x) for x in xs)
    out = []
    for x in xs:
        if np.ndim(x) < rank:
            shape = (1,) * (rank - np.ndim(x)) + tuple(np.shape(x))
            x = x.reshape(shape) if hasattr(x, "reshape") else np.reshape(x, shape)
        out.append(x)
    return out


def unary(f_jnp: Callable, f_np: Callable | None = None) -> Builder:
    """Builder for an elementwise one-input op: `"Exp": unary(jnp.exp, np.exp)`."""

    def build(node):
        if f_np is None:
            return f_jnp

        def fn(x):
            return f_np(x) if static(x) else f_jnp(x)

        return fn

    return build


def binary(f_jnp: Callable, f_np: Callable | None = None) -> Builder:
    """Builder for an elementwise two-input op with TF (NumPy-style) broadcasting."""

    def build(node):
        def fn(x, y):
            x, y = broadcast_ranks(x, y)
            if f_np is not None and static(x, y):
                return np.asarray(f_np(x, y))
            return f_jnp(x, y)

        return fn

    return build


def register_table(table: dict[str, Builder], **flags: Any) -> None:
    """Registers several trivial ops at once: `register_table({"Exp": unary(jnp.exp)})`."""
    for op_type, build in table.items():
        register(op_type, **flags)(build)
