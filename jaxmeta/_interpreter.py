"""Runs a pruned subgraph as one traced JAX computation.

`Program` is built once per (fetches, feeds, targets): it prunes the graph, checks every op is
supported, orders the nodes and builds each op's closure. Calling it walks that order once: an
environment keyed by `TensorRef`, values freed after their last use, variables threaded through an
`OpContext` so assignments become functional updates. Nothing here touches protobufs at call time.
"""

from __future__ import annotations

import collections
import dataclasses
import zlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxmeta._errors import FeedError, GraphError, SideEffectError, UnsupportedOpError
from jaxmeta._graph import VARIABLE_OPS, Graph, Node, TensorRef
from jaxmeta.ops import registry


@dataclasses.dataclass(frozen=True)
class VarRef:
    """A ref variable's output or a resource handle: names the variable, not its value."""

    name: str


class OpContext:
    """What stateful and random ops see while a program runs: variables and the random key."""

    def __init__(self, graph: Graph, variables: dict[str, Any], key: Any):
        self.graph = graph
        self.variables = dict(variables)
        self.assigned: set[str] = set()
        self._key = key

    def value(self, x: Any) -> Any:
        """The current value of a variable ref, or `x` itself for any other value."""
        return self.read(x) if isinstance(x, VarRef) else x

    def read(self, ref: VarRef) -> Any:
        try:
            return self.variables[ref.name]
        except KeyError:
            raise FeedError(
                f"variable {ref.name!r} has no value: restore a checkpoint (graph.saver.restore) or "
                "initialize it (graph.init_variables), and pass it in the variables dict"
            ) from None

    def assign(self, ref: VarRef, value: Any) -> Any:
        """Stores a new value for the variable (cast to its dtype); returns the stored value."""
        node = self.graph.nodes.get(ref.name)
        if node is not None and node.has_attr("dtype"):
            value = jnp.asarray(value, dtype=_jax_dtype(node.attr_dtype("dtype")))
        else:
            value = jnp.asarray(value)
        old = self.variables.get(ref.name)
        if old is not None and node is not None and node.has_attr("validate_shape"):
            if node.attr_bool("validate_shape") and jnp.shape(old) != jnp.shape(value):
                raise GraphError(f"assigning shape {jnp.shape(value)} to variable {ref.name!r} of shape {jnp.shape(old)}")
        self.variables[ref.name] = value
        self.assigned.add(ref.name)
        return value

    def rng(self, node: Node) -> jax.Array:
        """A key for one random node, derived from the call's key and the node's name.

        Keys are folded per node name, so results do not depend on evaluation order.
        """
        if self._key is None:
            raise FeedError(
                f"node {node.name!r} ({node.type}) draws random numbers: call the function with "
                "key=jax.random.key(seed) (Session takes a seed instead)"
            )
        return jax.random.fold_in(self._key, zlib.crc32(node.name.encode()) & 0x7FFFFFFF)


def _jax_dtype(dtype: np.dtype) -> np.dtype:
    return jax.dtypes.canonicalize_dtype(dtype)


def to_jax(x: Any) -> Any:
    """A NumPy value as a JAX array (64-bit types narrowed when x64 is off, as JAX does)."""
    if isinstance(x, (np.ndarray, np.generic)) and x.dtype != object:
        return jnp.asarray(x, dtype=_jax_dtype(x.dtype))
    return x


@dataclasses.dataclass
class _Step:
    node: Node
    spec: registry.OpSpec
    fn: Any
    inputs: tuple[TensorRef, ...]
    free: tuple[TensorRef, ...] = ()


class Program:
    """A pruned, ordered, built subgraph; call it with variables, feed values and a key."""

    def __init__(
        self,
        graph: Graph,
        fetches: Sequence[TensorRef],
        feeds: Sequence[TensorRef] = (),
        targets: Sequence[str] = (),
    ):
        self.graph = graph
        self.fetches = list(fetches)
        self.feeds = list(feeds)
        self.targets = list(targets)
        for ref in [*self.fetches, *self.feeds]:
            graph.get_tensor_by_name(str(ref))  # raises a GraphError naming unknown tensors
        for name in self.targets:
            graph.get_operation_by_name(name)
        fed = set(self.feeds)
        needed = _prune(graph, self.fetches, self.targets, fed)
        _check_runnable(graph, needed, fed)
        order = _toposort(graph, needed, fed)
        self.steps = [self._build(graph.nodes[name], fed) for name in order]
        self.assigns = [s.node.name for s in self.steps if s.spec.assigns]
        self.random = [s.node.name for s in self.steps if s.spec.random]
        self._plan_frees(fed)
        self.feed_dtypes = [_feed_dtype(graph, ref) for ref in self.feeds]

    def _build(self, node: Node, fed: set[TensorRef]) -> _Step:
        spec = registry.lookup(node.type)
        try:
            fn = spec.build(node)
        except (GraphError, UnsupportedOpError):
            raise
        except Exception as e:  # a handler rejecting the node's attributes
            raise GraphError(f"cannot build node {node.name!r} ({node.type}): {e}") from e
        return _Step(node, spec, fn, tuple(node.inputs))

    def _plan_frees(self, fed: set[TensorRef]) -> None:
        last_use: dict[TensorRef, int] = {}
        for i, step in enumerate(self.steps):
            for ref in step.inputs:
                last_use[ref] = i
        keep = set(self.fetches)
        frees = collections.defaultdict(list)
        for ref, i in last_use.items():
            if ref not in keep and ref not in fed:
                frees[i].append(ref)
        for i, step in enumerate(self.steps):
            step.free = tuple(frees.get(i, ()))

    def __call__(self, variables: dict[str, Any], feed_values: Sequence[Any], key: Any = None):
        """Runs the program; returns (fetched values, variables after the run)."""
        if len(feed_values) != len(self.feeds):
            raise FeedError(f"expected {len(self.feeds)} feed values ({self._feed_names()}), got {len(feed_values)}")
        ctx = OpContext(self.graph, variables, key)
        env: dict[TensorRef, Any] = {}
        for ref, value, dtype in zip(self.feeds, feed_values, self.feed_dtypes):
            env[ref] = value if dtype is None else jnp.asarray(value, dtype)
        fed = set(self.feeds)
        for step in self.steps:
            args = [env[ref] for ref in step.inputs]
            if not step.spec.ref_inputs:
                args = [ctx.read(a) if isinstance(a, VarRef) else a for a in args]
            try:
                out = step.fn(ctx, *args) if step.spec.context else step.fn(*args)
            except (GraphError, FeedError, UnsupportedOpError, SideEffectError):
                raise
            except Exception as e:
                raise GraphError(f"node {step.node.name!r} ({step.node.type}) failed: {type(e).__name__}: {e}") from e
            name = step.node.name
            if isinstance(out, (tuple, list)):
                for i, value in enumerate(out):
                    ref = TensorRef(name, i)
                    if ref not in fed:
                        env[ref] = value
            elif out is not None and TensorRef(name, 0) not in fed:
                env[TensorRef(name, 0)] = out
            for ref in step.free:
                env.pop(ref, None)
        outputs = []
        for ref in self.fetches:
            if ref not in env:
                raise GraphError(f"fetch {ref} was not produced: node {ref.node!r} has no output {ref.index}")
            outputs.append(to_jax(ctx.value(env[ref])))
        return outputs, ctx.variables

    def _feed_names(self) -> str:
        return ", ".join(str(r) for r in self.feeds) or "none"


def _feed_dtype(graph: Graph, ref: TensorRef):
    enum = graph.output_dtype(ref)
    if enum is None:
        return None
    from jaxmeta import _dtypes

    try:
        return _jax_dtype(_dtypes.to_numpy(enum))
    except GraphError:
        return None


def _prune(graph: Graph, fetches, targets, fed: set[TensorRef]) -> set[str]:
    """Names of the nodes the fetches and targets need, stopping at fed tensors."""
    needed: set[str] = set()
    stack = [r.node for r in fetches if r not in fed] + list(targets)
    while stack:
        name = stack.pop()
        if name in needed:
            continue
        needed.add(name)
        node = graph.nodes[name]
        stack.extend(ref.node for ref in node.inputs if ref not in fed)
        stack.extend(node.control_inputs)
    return needed


def _check_runnable(graph: Graph, needed: set[str], fed: set[TensorRef]) -> None:
    """Reports every problem of the pruned subgraph at once, before anything is traced."""
    unsupported = collections.defaultdict(list)
    effects = collections.defaultdict(list)
    missing_feeds = []
    for name in sorted(needed):
        node = graph.nodes[name]
        if node.type in ("Placeholder", "PlaceholderV2"):
            missing_feeds.append(name)
        elif node.type in registry.SIDE_EFFECT_OPS and registry.lookup(node.type) is None:
            effects[node.type].append(name)
        elif registry.lookup(node.type) is None:
            unsupported[node.type].append(name)
    if missing_feeds:
        raise FeedError(
            "these placeholders must be fed: "
            + ", ".join(f"{n}:0" for n in missing_feeds)
            + " (pass them in feeds= / feed_dict)"
        )
    if effects:
        lines = [f"  {op} ({', '.join(names[:3])}): {registry.SIDE_EFFECT_OPS[op]}" for op, names in sorted(effects.items())]
        raise SideEffectError(
            "the fetched subgraph contains ops jaxmeta never runs implicitly (they touch files, run "
            "Python or the network):\n" + "\n".join(lines) + "\nFetch tensors upstream of them, or "
            "supply a handler deliberately with jaxmeta.register_op(..., override=True)."
        )
    if unsupported:
        lines = [
            f"  {op}: {len(names)} node(s), e.g. {', '.join(names[:3])}" for op, names in sorted(unsupported.items())
        ]
        raise UnsupportedOpError(
            f"{len(unsupported)} op type(s) in the fetched subgraph are not supported by jaxmeta:\n"
            + "\n".join(lines)
            + "\nAdd them with jaxmeta.register_op(op_type, build), or fetch a smaller subgraph."
        )


def _toposort(graph: Graph, needed: set[str], fed: set[TensorRef]) -> list[str]:
    """Kahn's algorithm; among ready nodes, those that do not assign run first, so that reads of a
    variable unordered with its assignment see the old value, as in a TF step."""
    indegree = {name: 0 for name in needed}
    users = collections.defaultdict(list)
    for name in needed:
        node = graph.nodes[name]
        deps = {ref.node for ref in node.inputs if ref not in fed} | set(node.control_inputs)
        for dep in deps & needed:
            indegree[name] += 1
            users[dep].append(name)
    ready_pure = collections.deque()
    ready_assign = collections.deque()

    def push(name):
        spec = registry.lookup(graph.nodes[name].type)
        (ready_assign if spec is not None and spec.assigns else ready_pure).append(name)

    for name in sorted(needed, key=lambda n: _graph_position(graph, n)):
        if indegree[name] == 0:
            push(name)
    order = []
    while ready_pure or ready_assign:
        name = ready_pure.popleft() if ready_pure else ready_assign.popleft()
        order.append(name)
        for user in users[name]:
            indegree[user] -= 1
            if indegree[user] == 0:
                push(user)
    if len(order) != len(needed):
        stuck = sorted(n for n in needed if indegree[n] > 0)
        raise GraphError(
            f"the graph has a cycle through {len(stuck)} node(s), e.g. {', '.join(stuck[:5])}; only v1 "
            "while loops (Enter/Merge/NextIteration) may form cycles"
        )
    return order


def _graph_position(graph: Graph, name: str) -> int:
    positions = getattr(graph, "_positions", None)
    if positions is None or len(positions) != len(graph.nodes):
        positions = {n: i for i, n in enumerate(graph.nodes)}
        graph._positions = positions
    return positions[name]


# -- fetch/feed structures ------------------------------------------------------------------------


def resolve_fetches(graph: Graph, fetches: Any):
    """Flattens a fetch structure; returns (leaves as TensorRef-or-op-name, treedef)."""
    from jaxmeta._graph import Tensor, Variable

    leaves, treedef = jax.tree_util.tree_flatten(fetches)
    resolved = []
    for leaf in leaves:
        if isinstance(leaf, Variable):
            leaf = leaf.name
        element = graph.as_graph_element(leaf)
        if isinstance(element, Tensor):
            resolved.append(element.ref)
        else:
            resolved.append(element.name)
    return resolved, treedef


def resolve_feeds(graph: Graph, feeds: Any) -> list[TensorRef]:
    from jaxmeta._graph import Tensor

    if isinstance(feeds, (str, Tensor)):
        feeds = [feeds]
    refs = []
    for feed in feeds:
        element = graph.as_graph_element(feed)
        if not isinstance(element, Tensor):
            raise FeedError(f"cannot feed operation {element.name!r}: feed one of its outputs, e.g. {element.name}:0")
        refs.append(element.ref)
    return refs


def make_program(graph: Graph, fetches: Any, feeds: Any = (), targets: Any = ()):
    """Returns (program, treedef, leaf kinds) for a fetch structure."""
    leaves, treedef = resolve_fetches(graph, fetches)
    fetch_refs = [leaf for leaf in leaves if isinstance(leaf, TensorRef)]
    target_names = [leaf for leaf in leaves if isinstance(leaf, str)]
    t_leaves, _ = resolve_fetches(graph, list(targets) if isinstance(targets, (list, tuple)) else [targets])
    for leaf in t_leaves:
        target_names.append(leaf.node if isinstance(leaf, TensorRef) else leaf)
    program = Program(graph, fetch_refs, resolve_feeds(graph, feeds), target_names)
    return program, treedef, leaves


def unflatten(treedef, leaves, values):
    it = iter(values)
    out = [next(it) if isinstance(leaf, TensorRef) else None for leaf in leaves]
    return jax.tree_util.tree_unflatten(treedef, out)


def is_variable_node(node: Node) -> bool:
    return node.type in VARIABLE_OPS
