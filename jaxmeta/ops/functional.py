"""V2 (functional) control flow and function calls: If, Case, While (and their Stateless forms),
PartitionedCall/StatefulPartitionedCall, and the TensorList ops v2 loops use as TensorArrays.

Function bodies come from the graph's FunctionDefLibrary. A `FunctionDef` names its node outputs
`node:output_arg:index` (e.g. `split:output:1`, `add:z:0`) and its inputs by argument name; `_Function`
turns it into a small `Graph` whose tensors are `node:flat_index`, using each body node's OpDef
(from the MetaGraphDef's op list, a library function's signature, or, failing both, the rule
that an op's outputs form one list), and then runs it with the interpreter's own
`build_steps`/`run_steps`.

Lowering follows `ops/control_flow.py`: `If`/`Case` evaluate every branch and select (static
predicates pick one branch only); `While` runs its static part (the loop counter and
`maximum_iterations` that TF adds as the first loop variables, shape-derived limits) in NumPy and
becomes a `lax.scan` when that fixes the trip count or a bound on it (differentiable), otherwise
a `lax.while_loop` (forward only). Variables assigned inside a v2 loop body are not carried
between iterations (a GraphError says so).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxmeta._errors import GraphError
from jaxmeta._graph import Graph, Node, TensorRef
from jaxmeta._interpreter import OpContext, _check_runnable, _prune, build_steps, run_steps
from jaxmeta.ops.control_flow import _carryable, _like, _select, _to_carry
from jaxmeta.ops.registry import known, register, static
from jaxmeta.proto import node_def_pb2

_ARG = "<arg>"  # prefix of the references to a function's arguments (no node can be named so)


class _Function:
    """A FunctionDef made runnable: `fn(ctx, args) -> outputs`."""

    def __init__(self, graph: Graph, name: str):
        if name not in graph.functions:
            raise GraphError(f"function {name!r} is not in the graph's function library")
        fdef = graph.functions[name]
        self.name = name
        self.graph = sub = Graph()
        sub.op_defs, sub.functions = graph.op_defs, graph.functions
        self.arg_refs = [TensorRef(_ARG + a.name, 0) for a in fdef.signature.input_arg]
        args = {a.name for a in fdef.signature.input_arg}
        defs = {n.name: n for n in fdef.node_def}
        for nd in fdef.node_def:
            copy = node_def_pb2.NodeDef()
            copy.CopyFrom(nd)
            del copy.input[:]
            copy.input.extend(self._ref_text(i, args, defs) for i in nd.input)
            sub.nodes[copy.name] = Node(copy, sub)
        self.rets = [TensorRef.parse(self._ref_text(fdef.ret[a.name], args, defs)) for a in fdef.signature.output_arg]
        self.targets = list(fdef.control_ret.values())
        self.fed = set(self.arg_refs)
        self._steps: dict[tuple, list] = {}

    def _ref_text(self, text: str, args: set[str], defs: dict) -> str:
        if text.startswith("^"):
            return text
        parts = text.split(":")
        if len(parts) == 1:
            return f"{_ARG}{text}:0" if text in args else f"{text}:0"
        if len(parts) == 2:
            return text if parts[1].isdigit() else f"{parts[0]}:0"
        node, out_arg, index = parts
        return f"{node}:{_output_index(self.graph, defs[node], out_arg) + int(index)}"

    def steps(self, refs: tuple, data_only: bool = False) -> list:
        key = (refs, data_only)
        if key not in self._steps:
            targets = () if data_only else self.targets
            needed = _prune(self.graph, refs, targets, self.fed, True if data_only else frozenset())
            _check_runnable(self.graph, needed, self.fed)
            self._steps[key] = build_steps(self.graph, needed, self.fed, keep=set(refs))
        return self._steps[key]

    def deps(self, ref: TensorRef) -> set[int]:
        """The arguments `ref` depends on through data edges."""
        index = {r: i for i, r in enumerate(self.arg_refs)}
        found, seen, stack = set(), set(), [ref]
        while stack:
            r = stack.pop()
            if r in index:
                found.add(index[r])
            elif r.node not in seen and r.node in self.graph.nodes:
                seen.add(r.node)
                stack.extend(self.graph.nodes[r.node].inputs)
        return found

    def conjuncts(self, ref: TensorRef) -> list[TensorRef]:
        node = self.graph.nodes.get(ref.node)
        if node is not None and node.type == "LogicalAnd":
            return [c for r in node.inputs for c in self.conjuncts(r)]
        return [ref]

    def __call__(self, ctx: OpContext, args: Any, refs: tuple | None = None, data_only: bool = False) -> list:
        refs = tuple(self.rets) if refs is None else refs
        items = args.items() if isinstance(args, dict) else enumerate(args)
        env = {self.arg_refs[i]: v for i, v in items}
        run_steps(self.steps(refs, data_only), ctx, env, self.fed)
        return [env[r] for r in refs]


def _output_index(graph: Graph, node_def, out_arg: str) -> int:
    """Flat index of the first tensor of output argument `out_arg` of a body node."""
    op_def = graph.op_defs.get(node_def.op)
    if op_def is None and node_def.op in graph.functions:
        op_def = graph.functions[node_def.op].signature
    if op_def is None:
        return 0  # unknown op: its outputs are taken to form a single list
    offset = 0
    defaults = {a.name: a.default_value for a in op_def.attr}
    for arg in op_def.output_arg:
        if arg.name == out_arg:
            return offset
        if arg.number_attr:
            attr = node_def.attr.get(arg.number_attr) or defaults.get(arg.number_attr)
            offset += attr.i
        elif arg.type_list_attr:
            attr = node_def.attr.get(arg.type_list_attr) or defaults.get(arg.type_list_attr)
            offset += len(attr.list.type)
        else:
            offset += 1
    raise GraphError(f"op {node_def.op} has no output {out_arg!r} (node {node_def.name!r} in a function body)")


def _function(graph: Graph, name: str) -> _Function:
    cache = graph.__dict__.setdefault("_function_cache", {})
    if name not in cache:
        cache[name] = _Function(graph, name)
    return cache[name]


def _truthy(x: Any) -> Any:
    """TF's If/While predicate: a bool, or a nonzero number (a non-scalar: non-empty)."""
    if static(x):
        x = np.asarray(x)
        return np.bool_(x.size > 0 if x.ndim else bool(x))
    x = jnp.asarray(x)
    if x.ndim:
        return jnp.asarray(x.size > 0)
    return x if x.dtype == jnp.bool_ else x != 0


def _run_branches(ctx: OpContext, branches: list, args: tuple, choose) -> tuple:
    """Runs every branch, then selects outputs and variable/state changes with `choose(values)`."""
    before_vars, before_state = dict(ctx.variables), dict(ctx.state)
    results, effects = [], []
    for fn in branches:
        ctx.variables, ctx.state = dict(before_vars), dict(before_state)
        results.append(fn(ctx, args))
        effects.append((dict(ctx.variables), dict(ctx.state)))
    ctx.variables, ctx.state = dict(before_vars), dict(before_state)
    for store, which in ((ctx.variables, 0), (ctx.state, 1)):
        keys = {k for e in effects for k, v in e[which].items() if v is not (before_vars, before_state)[which].get(k)}
        for k in keys:
            values = [e[which].get(k) for e in effects]
            if any(v is None for v in values):
                raise GraphError(f"{k!r} is created in only some branches of a functional cond")
            store[k] = jax.tree_util.tree_map(lambda *xs: choose(list(xs)), *values)
    return tuple(_choose_optional(outs, choose) for outs in zip(*results))


def _choose_optional(outs: tuple, choose) -> Any:
    shapes = {np.shape(o) for o in outs if _carryable(o)}
    if len(shapes) > 1:
        # Branch outputs of different shapes are TF's gradient intermediates (each branch emits its
        # own and zeros for the other's); the forward pass never reads them.
        return outs[0]
    # TF's v2 conds output their intermediates as optionals (a value in one branch, OptionalNone in
    # the others) for the gradient; the forward pass never reads them, so the value is kept.
    if not all(isinstance(o, _Optional) for o in outs):
        return choose(list(outs))
    present = [o for o in outs if o.components is not None]
    if len(present) == len(outs):
        return _Optional(tuple(_choose_optional(cs, choose) for cs in zip(*(o.components for o in outs))))
    return present[0] if present else outs[0]


class _Optional:
    """An `Optional` value (`OptionalFromValue`/`OptionalNone`): components, or None."""

    def __init__(self, components: tuple | None):
        self.components = components


@register("OptionalFromValue")
def _optional_from_value(node):
    return lambda *components: _Optional(tuple(components))


@register("OptionalNone")
def _optional_none(node):
    return lambda: _Optional(None)


@register("OptionalHasValue")
def _optional_has_value(node):
    return lambda opt: np.bool_(opt.components is not None)


@register("OptionalGetValue")
def _optional_get_value(node):
    def fn(opt):
        if opt.components is None:
            raise GraphError(f"node {node.name!r} reads an empty Optional")
        return opt.components

    return fn


@register("If", "StatelessIf", context=True, ref_inputs=True)
def _if(node):
    then_name, else_name = node.attr_func("then_branch").name, node.attr_func("else_branch").name

    def fn(ctx, pred, *args):
        then_fn, else_fn = _function(node.graph, then_name), _function(node.graph, else_name)
        pred = _truthy(ctx.value(pred))
        value = known(pred)  # known (a constant, or no jit): only the taken branch runs, as in TF
        if value is not None:
            return tuple((then_fn if bool(value) else else_fn)(ctx, args))
        return _run_branches(ctx, [then_fn, else_fn], args, lambda xs: _select(pred, xs[0], xs[1]))

    return fn


@register("Case", "StatelessCase", context=True, ref_inputs=True)
def _case(node):
    names = [f.name for f in node.attr_list("branches").func]

    def fn(ctx, index, *args):
        branches = [_function(node.graph, n) for n in names]
        index = ctx.value(index)
        value = known(index)
        if value is not None:
            k = int(value)
            return tuple(branches[k if 0 <= k < len(branches) else -1](ctx, args))

        def choose(xs):  # an out-of-range index runs the last branch, as in TF
            out = xs[-1]
            for k in reversed(range(len(xs) - 1)):
                out = _select(jnp.asarray(index) == k, xs[k], out)
            return out

        return _run_branches(ctx, branches, args, choose)

    return fn


@register("PartitionedCall", "StatefulPartitionedCall", context=True, ref_inputs=True)
def _call(node):
    name = node.attr_func("f").name
    return lambda ctx, *args: tuple(_function(node.graph, name)(ctx, args))


@register("While", "StatelessWhile", context=True, ref_inputs=True)
def _while(node):
    cond_name, body_name = node.attr_func("cond").name, node.attr_func("body").name

    def fn(ctx, *inits):
        cond, body = _function(node.graph, cond_name), _function(node.graph, body_name)
        inits = list(inits)
        trips = _static_trips(cond, body, inits)
        bound = None if trips is None else trips[0]
        carried = [j for j, v in enumerate(inits) if _carryable(v) or isinstance(v, (_PendingList, _PushList))]
        fixed = {j: v for j, v in enumerate(inits) if j not in carried}

        def run_body(i, vals):
            sub = ctx.for_iteration(i, bound, ctx.variables, ctx.state)
            outs = body(sub, {**fixed, **dict(zip(carried, vals))})
            if sub.assigned:
                raise GraphError(f"node {node.name!r}: variables assigned inside a v2 while loop are not supported")
            return outs

        def step(carry):
            i, vals = carry
            outs = run_body(i, vals)
            return i + 1, tuple(_carry_like(outs[j], old) for j, old in zip(carried, vals))

        def go(carry):
            i, vals = carry
            sub = ctx.for_iteration(i, bound, ctx.variables, ctx.state)
            (pred,) = cond(sub, {**fixed, **dict(zip(carried, vals))})
            return jnp.reshape(_truthy(pred), ())

        vals = [inits[j] for j in carried]
        pending = [k for k, v in enumerate(vals) if isinstance(v, _PendingList)]
        if pending:  # element shapes of lists the graph left open: from a shape-only trace

            def probe():
                outs = [run_body(jnp.int32(0), vals)[carried[k]] for k in pending]
                return [None if isinstance(o, _PendingList) else o for o in outs]

            for k, s in zip(pending, jax.eval_shape(probe)):
                if s is not None:
                    vals[k] = jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype), s)
            # Lists that stay empty (TF's gradient bookkeeping of not-yet-written lists) stay fixed.
            keep = [k for k, v in enumerate(vals) if not isinstance(v, _PendingList)]
            fixed.update({carried[k]: v for k, v in enumerate(vals) if k not in keep})
            carried[:] = [carried[k] for k in keep]
            vals = [vals[k] for k in keep]
        init = (jnp.int32(0), tuple(jax.tree_util.tree_map(_to_carry, v) for v in vals))
        if trips is not None and trips[1]:
            carry, _ = jax.lax.scan(lambda c, _: (step(c), None), init, None, length=trips[0])
        elif trips is not None:

            def bounded(c, _):
                ok = go(c)
                return jax.tree_util.tree_map(lambda new, old: jnp.where(ok, new, old), step(c), c), None

            carry, _ = jax.lax.scan(bounded, init, None, length=trips[0])
        else:
            carry = jax.lax.while_loop(go, step, init)
        finals = {**fixed, **dict(zip(carried, carry[1])), **(trips[2] if trips else {})}
        return tuple(finals[j] for j in range(len(inits)))

    return fn


def _carry_like(new: Any, old: Any) -> Any:
    if isinstance(old, _PushList):
        if not isinstance(new, _PushList):
            raise GraphError("a TensorList loop variable changed kind inside a v2 while loop")
        return _PushList(_like(new.buffer, old.buffer), _like(new.count, old.count))
    return _like(new, old)


def _static_trips(cond: _Function, body: _Function, inits: list):
    """(n, exact, static finals) from running the loop's static part in NumPy, or None."""
    deps = [body.deps(r) for r in body.rets]
    live = {j for j, v in enumerate(inits) if static(v)}
    while True:
        keep = {j for j in live if deps[j] <= live}
        if keep == live:
            break
        live = keep
    bounds = []
    for k, ref in enumerate([cond.rets[0], *cond.conjuncts(cond.rets[0])]):
        if not cond.deps(ref) <= live:
            continue
        result = _simulate(cond, body, inits, sorted(live), ref)
        if result is not None and k == 0:
            return result[0], True, result[1]
        if result is not None:
            bounds.append(result[0])
    return (min(bounds), False, {}) if bounds else None


def _simulate(cond: _Function, body: _Function, inits: list, live: list, ref: TensorRef):
    values = {j: inits[j] for j in live}
    ctx = OpContext(body.graph, {}, None)
    refs = tuple(body.rets[j] for j in live)
    try:
        for n in range(100_000):
            (pred,) = cond(ctx, values, (ref,), data_only=True)
            pred = _truthy(pred)
            if not static(pred):
                return None
            if not bool(pred):
                return n, values
            values = dict(zip(live, body(ctx, values, refs, data_only=True)))
            if not all(static(v) for v in values.values()):
                return None
    except Exception:  # anything not computable in NumPy: no static trip count
        return None
    return None


# -- TensorLists (v2 TensorArrays): values, a [size, *element_shape] array ------------------------


class _PendingList:
    """A TensorList whose element shape the graph leaves open (set by the first write); `push`:
    an `EmptyTensorList` that grows by `TensorListPushBack` (size: `max_num_elements` or the
    enclosing loops' static trip count)."""

    def __init__(self, size: int | None, dtype: Any, push: bool = False):
        self.size, self.dtype, self.push = size, dtype, push


@jax.tree_util.register_pytree_node_class
class _PushList:
    """A TensorList grown by `TensorListPushBack`: a `[bound, *element_shape]` buffer and a count
    (TF's v2 gradients accumulate a loop's intermediates in these)."""

    def __init__(self, buffer: Any, count: Any):
        self.buffer, self.count = buffer, count

    def tree_flatten(self):
        return (self.buffer, self.count), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)


@register("EmptyTensorList", context=True)
def _empty_list(node):
    dtype = _list_dtype(node)

    def fn(ctx, element_shape, max_num_elements):
        size = int(max_num_elements) if static(max_num_elements) and int(max_num_elements) >= 0 else None
        return _PendingList(size, dtype, push=True)

    return fn


@register("TensorListPushBack", context=True)
def _list_push(node):
    def fn(ctx, items, item):
        if isinstance(item, _PendingList):
            # Pushing a list nothing was written to yet (TF's v2 gradients record the loop's lists
            # at every step): nothing to record for a forward pass.
            return items
        if isinstance(items, _PendingList):
            size = items.size
            if size is None:
                size = ctx.static_trip_count
                if size is None:
                    raise GraphError(
                        f"node {node.name!r}: TensorListPushBack in a while loop without a static trip-count "
                        "bound; jaxmeta needs one (fixed sequence lengths or maximum_iterations)"
                    )
            item = _items(item)
            dtype = items.dtype or jnp.result_type(item)
            items = _PushList(jnp.zeros((size, *jnp.shape(item)), dtype), jnp.int32(0))
        if not isinstance(items, _PushList):
            raise GraphError(f"node {node.name!r}: TensorListPushBack onto a fixed-size TensorList")
        buffer = items.buffer.at[items.count].set(jnp.asarray(_items(item), items.buffer.dtype))
        return _PushList(buffer, items.count + 1)

    return fn


@register("TensorListPopBack")
def _list_pop(node):
    def fn(items, element_shape):
        if not isinstance(items, _PushList):
            raise GraphError(f"node {node.name!r}: TensorListPopBack needs a list built by TensorListPushBack")
        return _PushList(items.buffer, items.count - 1), items.buffer[items.count - 1]

    return fn


def _element_shape(shape: Any) -> tuple[int, ...] | None:
    if not static(shape):
        return None
    shape = np.asarray(shape)
    if shape.ndim == 0 or np.any(shape < 0):
        return None  # -1: unknown rank; -1 entries: unknown dims
    return tuple(int(d) for d in shape)


def _list_dtype(node: Node) -> Any:
    if node.attr_dtype_enum("element_dtype") == _VARIANT:
        return None  # a list of lists: the element's own dtype
    return jax.dtypes.canonicalize_dtype(node.attr_dtype("element_dtype"))


_VARIANT = 21


@register("TensorListReserve")
def _list_reserve(node):
    dtype = _list_dtype(node)

    def fn(element_shape, num_elements):
        if not static(num_elements) or int(num_elements) < 0:
            raise GraphError(f"node {node.name!r}: a TensorList needs a static number of elements")
        shape = _element_shape(element_shape)
        if shape is None:
            return _PendingList(int(num_elements), dtype)
        return jnp.zeros((int(num_elements), *shape), dtype)

    return fn


@register("TensorListFromTensor")
def _list_from_tensor(node):
    return lambda tensor, element_shape: jnp.asarray(tensor)


@register("TensorListGetItem")
def _list_get(node):
    def fn(items, index, element_shape):
        if isinstance(items, _PendingList):
            shape = _element_shape(element_shape)
            if shape is None:
                raise GraphError(f"node {node.name!r} reads an empty TensorList of unknown element shape")
            return jnp.zeros(shape, items.dtype)
        return _items(items)[jnp.asarray(index)]

    return fn


@register("TensorListSetItem")
def _list_set(node):
    def fn(items, index, item):
        if isinstance(items, _PendingList):
            items = jnp.zeros((items.size or 0, *jnp.shape(item)), items.dtype)
        if isinstance(items, _PushList):
            return _PushList(items.buffer.at[jnp.asarray(index)].set(jnp.asarray(item, items.buffer.dtype)), items.count)
        return items.at[jnp.asarray(index)].set(jnp.asarray(item, items.dtype))

    return fn


@register("TensorListStack")
def _list_stack(node):
    def fn(items, element_shape):
        if isinstance(items, _PendingList):
            shape = _element_shape(element_shape)
            if shape is None:
                raise GraphError(f"node {node.name!r} stacks an empty TensorList of unknown element shape")
            return jnp.zeros((items.size or 0, *shape), items.dtype)
        return _items(items)

    return fn


@register("TensorListGather")
def _list_gather(node):
    return lambda items, indices, element_shape: _items(items)[jnp.asarray(indices)]


@register("TensorListLength")
def _list_length(node):
    def fn(items):
        if isinstance(items, _PushList):
            return items.count
        return np.int32((items.size or 0) if isinstance(items, _PendingList) else items.shape[0])

    return fn


@register("TensorListElementShape")
def _list_element_shape(node):
    dtype = node.attr_dtype("shape_type")
    return lambda items: np.asarray(_items(items).shape[1:], dtype)


def _items(items: Any) -> Any:
    # A pushed list is read whole: full after a loop of exact trip count, as TF's gradients use it.
    return items.buffer if isinstance(items, _PushList) else items
