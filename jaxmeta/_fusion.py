"""Keeps XLA from recomputing long elementwise chains in every consumer (unrolled recurrences).

XLA fuses a cheap elementwise producer into each of its consumers, duplicating it, unless one
consumer cannot take it (a matrix product, the program's output) or the producer is "expensive"
(a division, an exponential, ...). A TF1 graph that unrolls a recurrence into elementwise ops
(`static_rnn`, `legacy_seq2seq`: an LSTM's cell state `c[t] = f[t] * c[t-1] + i[t] * g[t]`, and the
same chain backwards in its gradient) is such a producer at every step, so each step's consumers
recompute the chain back to its start: code and work quadratic in the number of steps. A 50-step,
two-layer LSTM's training step had 115,000 fused instructions (41 s to compile on CPU).

`plan` finds the values whose chain of fusible ops has grown long and that more than one step
reads; `materialize` turns such a value into the result of a division by one, which XLA does
not duplicate, so it computes the value once. `optimization_barrier` would say this directly, but
XLA's CPU compiler drops barriers before it fuses.
"""

from __future__ import annotations

import collections
from typing import Any

import jax
import jax.numpy as jnp

# TF ops that become elementwise or layout ops (which XLA fuses into their consumers). Reductions,
# products, gathers and control flow end a chain: XLA computes them once.
FUSIBLE = frozenset({
    # unary
    "Abs", "Cast", "Ceil", "Cos", "Elu", "Erf", "Exp", "Expm1", "Floor", "Inv", "IsFinite",
    "IsInf", "IsNan", "LeakyRelu", "Log", "Log1p", "LogicalNot", "Neg", "OnesLike", "Reciprocal",
    "Relu", "Relu6", "Rint", "Round", "Rsqrt", "Selu", "Sigmoid", "Sign", "Sin", "Softplus",
    "Softsign", "Sqrt", "Square", "Tanh", "ZerosLike",
    # binary and n-ary
    "Add", "AddN", "AddV2", "BiasAdd", "ClipByValue", "Div", "DivNoNan", "Equal", "FloorDiv",
    "FloorMod", "Greater", "GreaterEqual", "Less", "LessEqual", "LogicalAnd", "LogicalOr",
    "Maximum", "Minimum", "Mod", "Mul", "MulNoNan", "NotEqual", "Pow", "RealDiv", "Select",
    "SelectV2", "SquaredDifference", "Sub", "TruncateDiv",
    # activation gradients
    "EluGrad", "LeakyReluGrad", "ReciprocalGrad", "Relu6Grad", "ReluGrad", "RsqrtGrad",
    "SeluGrad", "SigmoidGrad", "SoftplusGrad", "SqrtGrad", "TanhGrad",
    # layout
    "BroadcastTo", "Concat", "ConcatV2", "ExpandDims", "Fill", "Identity", "Pack", "Pad",
    "PadV2", "PreventGradient", "Reshape", "Reverse", "ReverseV2", "Slice", "Snapshot", "Split",
    "SplitV", "Squeeze", "StopGradient", "StridedSlice", "Tile", "Transpose", "Unpack",
})

#: Fusible nodes a value may stand on before it is materialized (when read by two steps or more).
MAX_CHAIN = 32


def plan(steps: list[Any]) -> None:
    """Sets `step.materialize` on the steps whose outputs end a long, shared chain of fusible ops.

    A step's chain is the set of fusible nodes its value is computed from since the last value
    XLA computes once (an input, a product, a reduction, a materialized value). A value read by
    two steps or more whose chain exceeds `MAX_CHAIN` nodes is materialized and starts a new one.
    """
    readers = collections.Counter(ref.node for step in steps for ref in set(step.inputs))
    chains: dict[str, set[str]] = {}
    for step in steps:
        step.materialize = False
        name = step.node.name
        if step.outputs is not None or step.node.type not in FUSIBLE:
            continue
        chain = {name}
        for ref in step.inputs:
            chain |= chains.get(ref.node, set())
        if len(chain) > MAX_CHAIN and readers[name] > 1:
            step.materialize = True
        else:
            chains[name] = chain


def materialize(value: Any) -> Any:
    """`value` computed once by XLA: divided by `value == value` (one, or zero where it is NaN,
    which keeps NaN): the same value for every float, infinities and signed zeros included
    (subnormals as any XLA arithmetic leaves them). Only traced real floating arrays change;
    anything else (NumPy constants, integers) is returned as is."""
    if isinstance(value, jax.core.Tracer) and jnp.issubdtype(value.dtype, jnp.floating):
        return value / (value == value).astype(value.dtype)
    return value
