"""Optimizer update ops: `ApplyX` (ref variables), `ResourceApplyX` and their sparse variants.

Every optimizer is one *rule*: a function of the named inputs (`var`, the slot variables, the
scalars such as `lr`, and `grad`) returning the new values of `var` and its slots. The dense ops
apply the rule to whole variables; the sparse ops (`SparseApplyX`, `ResourceSparseApplyX`) apply
the same rule to the rows `indices` selects and scatter the results back. The formulas follow
TF's kernels exactly (epsilon placement, `rsqrt` vs `sqrt`, the `l1 > 0` branches).

The ref form returns the updated variable ref (TF's `out`), the resource form returns nothing.
"""

from __future__ import annotations

import types
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxmeta.ops.registry import checked_indices, register

Rule = Callable[[types.SimpleNamespace], dict]


def _sq(x):
    return x * x


def _prox(prox_var, l1, l2, lr):
    """TF's proximal step: soft-threshold by `lr*l1` when `l1 > 0`, then shrink by `1 + lr*l2`."""
    soft = jnp.sign(prox_var) * jnp.maximum(jnp.abs(prox_var) - lr * l1, 0)
    return jnp.where(l1 > 0, soft, prox_var) / (1 + lr * l2)


# -- rules: `rule(a, attrs) -> {slot: new value}` ------------------------------------------------


def _gradient_descent(a, at):
    return {"var": a.var - a.alpha * a.grad}


def _proximal_gradient_descent(a, at):
    return {"var": _prox(a.var - a.alpha * a.grad, a.l1, a.l2, a.alpha)}


def _momentum(a, at):
    accum = a.accum * a.momentum + a.grad
    if at["use_nesterov"]:
        var = a.var - (a.grad * a.lr + accum * a.momentum * a.lr)
    else:
        var = a.var - a.lr * accum
    return {"var": var, "accum": accum}


def _keras_momentum(a, at):
    # Keras' formulation keeps the velocity negative and already scaled by lr.
    accum = a.accum * a.momentum - a.grad * a.lr
    if at["use_nesterov"]:
        var = a.var + (accum * a.momentum - a.grad * a.lr)
    else:
        var = a.var + accum
    return {"var": var, "accum": accum}


def _adam(a, at, amsgrad=False):
    alpha = a.lr * jnp.sqrt(1 - a.beta2_power) / (1 - a.beta1_power)
    m = a.m + (a.grad - a.m) * (1 - a.beta1)
    v = a.v + (_sq(a.grad) - a.v) * (1 - a.beta2)
    out = {"m": m, "v": v}
    if amsgrad:
        out["vhat"] = jnp.maximum(a.vhat, v)
        v = out["vhat"]
    if at.get("use_nesterov"):
        out["var"] = a.var - (a.grad * (1 - a.beta1) + a.beta1 * m) * alpha / (jnp.sqrt(v) + a.epsilon)
    else:
        out["var"] = a.var - m * alpha / (jnp.sqrt(v) + a.epsilon)
    return out


def _adamax(a, at):
    m = a.m + (a.grad - a.m) * (1 - a.beta1)
    v = jnp.maximum(a.beta2 * a.v, jnp.abs(a.grad))
    return {"var": a.var - a.lr / (1 - a.beta1_power) * (m / (v + a.epsilon)), "m": m, "v": v}


def _rms_prop(a, at):
    ms = a.ms + (_sq(a.grad) - a.ms) * (1 - a.rho)
    mom = a.mom * a.momentum + a.grad * a.lr / jnp.sqrt(ms + a.epsilon)
    return {"var": a.var - mom, "ms": ms, "mom": mom}


def _centered_rms_prop(a, at):
    ms = a.ms + (_sq(a.grad) - a.ms) * (1 - a.rho)
    mg = a.mg + (a.grad - a.mg) * (1 - a.rho)
    mom = a.mom * a.momentum + a.grad * a.lr / jnp.sqrt(ms - _sq(mg) + a.epsilon)
    return {"var": a.var - mom, "mg": mg, "ms": ms, "mom": mom}


def _adagrad(a, at):
    accum = a.accum + _sq(a.grad) if at["update_slots"] else a.accum
    return {"var": a.var - a.lr * a.grad * jax.lax.rsqrt(accum), "accum": accum}


def _adagrad_v2(a, at):
    accum = a.accum + _sq(a.grad) if at["update_slots"] else a.accum
    return {"var": a.var - a.lr * a.grad / (jnp.sqrt(accum) + a.epsilon), "accum": accum}


def _adagrad_da(a, at):
    gacc = a.gradient_accumulator + a.grad
    gsq = a.gradient_squared_accumulator + _sq(a.grad)
    step = a.global_step
    shrunk = jnp.sign(gacc) * jnp.maximum(jnp.abs(gacc) - a.l1 * step, 0)
    numer = jnp.where(a.l1 > 0, shrunk, gacc)
    var = -a.lr * numer / (a.l2 * step * a.lr + jnp.sqrt(gsq))
    return {"var": var, "gradient_accumulator": gacc, "gradient_squared_accumulator": gsq}


def _proximal_adagrad(a, at):
    accum = a.accum + _sq(a.grad)
    lr = a.lr * jax.lax.rsqrt(accum)
    return {"var": _prox(a.var - a.grad * lr, a.l1, a.l2, lr), "accum": accum}


def _adadelta(a, at):
    accum = a.accum * a.rho + _sq(a.grad) * (1 - a.rho)
    update = jnp.sqrt(a.accum_update + a.epsilon) * jax.lax.rsqrt(accum + a.epsilon) * a.grad
    accum_update = a.accum_update * a.rho + _sq(update) * (1 - a.rho)
    return {"var": a.var - update * a.lr, "accum": accum, "accum_update": accum_update}


def _ftrl(a, at):
    """FTRL-proximal; FtrlV2 adds `l2_shrinkage` to the gradient used for `linear` only."""
    grad = a.grad
    shrink_grad = grad + 2 * a.l2_shrinkage * a.var if hasattr(a, "l2_shrinkage") else grad
    new_accum = a.accum + _sq(grad)
    # TF's kernel special-cases lr_power == -0.5 with sqrt (not pow), which rounds differently.
    half = a.lr_power == -0.5
    new_pow = jnp.where(half, jnp.sqrt(new_accum), new_accum ** -a.lr_power)
    old_pow = jnp.where(half, jnp.sqrt(a.accum), a.accum ** -a.lr_power)
    if at["multiply_linear_by_lr"]:
        linear = a.linear + shrink_grad * a.lr - (new_pow - old_pow) * a.var
        quadratic = new_pow + 2 * a.l2 * a.lr
        l1 = a.l1 * a.lr
    else:
        linear = a.linear + shrink_grad - (new_pow - old_pow) / a.lr * a.var
        quadratic = new_pow / a.lr + 2 * a.l2
        l1 = a.l1
    var = jnp.where(jnp.abs(linear) > l1, (jnp.sign(linear) * l1 - linear) / quadratic, 0)
    return {"var": var, "accum": new_accum, "linear": linear}


def _add_sign(a, at):
    m = a.m * a.beta + a.grad * (1 - a.beta)
    scale = a.alpha + a.sign_decay * jnp.sign(a.grad) * jnp.sign(m)
    return {"var": a.var - a.lr * scale * a.grad, "m": m}


def _power_sign(a, at):
    m = a.m * a.beta + a.grad * (1 - a.beta)
    scale = jnp.exp(a.logbase * a.sign_decay * jnp.sign(a.grad) * jnp.sign(m))
    return {"var": a.var - a.lr * scale * a.grad, "m": m}


# -- the generic handler --------------------------------------------------------------------------


def _build_update(rule: Rule, inputs: tuple[str, ...], n_refs: int, bool_attrs: tuple[str, ...] = ()):
    """Builder for one optimizer op.

    Args:
        rule: `rule(a, attrs) -> {name: new value}` for `var` and each slot.
        inputs: the op's input names in order; the first `n_refs` are variables (var and its
            slots); `grad` (`delta` in the gradient-descent ops) is the gradient, `indices` (sparse
            ops) the rows it updates, everything else a scalar hyperparameter.
        n_refs: how many inputs are variables.
        bool_attrs: the op's boolean attributes the rule reads (`use_nesterov`, ...).
    """
    refs = inputs[:n_refs]
    sparse = "indices" in inputs

    def build(node):
        resource = node.type.startswith("Resource")
        attrs = {name: node.attr_bool(name, False) for name in bool_attrs}

        def fn(ctx, *args):
            named = dict(zip(inputs, args))
            state = {name: ctx.read(named[name]) for name in refs}
            dtype = state["var"].dtype
            # Scalars (lr, beta1_power, global_step, ...) may be ref-variable reads; all compute
            # in var's dtype, as TF's kernels cast them to T.
            values = {
                ("grad" if name == "delta" else name): jnp.asarray(ctx.value(named[name]), dtype)
                for name in inputs[n_refs:]
                if name != "indices"
            }
            if sparse:
                rows = checked_indices(node, ctx.value(named["indices"]), state["var"].shape[0])
                new = _sparse_update(rule, attrs, state, values, rows)
            else:
                new = rule(types.SimpleNamespace(**state, **values), attrs)
            for name in refs:
                ctx.assign(named[name], new[name])
            return None if resource else named["var"]

        return fn

    return build


def _sparse_update(rule, attrs, state, values, indices):
    """Applies `rule` to the rows `indices` selects (`checked_indices`: NumPy when known, traced
    ones out of range point past the last row and change nothing).

    TF's sparse kernels walk the indices in order, so a duplicated index is updated twice, the
    second time from the first update's result. Unique indices (what TF's optimizers produce:
    they sum duplicates first) take one vectorized gather-update-scatter; duplicates fall back to
    a sequential loop over the rows.
    """
    known = indices if isinstance(indices, np.ndarray) else None
    indices = jnp.asarray(indices).astype(jnp.int32)
    grad = values["grad"]
    scalars = {k: v for k, v in values.items() if k != "grad"}
    n = indices.shape[0]
    if n == 0:
        return state
    size = state["var"].shape[0]

    def rows_rule(rows, g):
        return rule(types.SimpleNamespace(**rows, **scalars, grad=g), attrs)

    def vectorized(st):
        rows = {k: v.at[indices].get(mode="fill", fill_value=0) for k, v in st.items()}
        new = rows_rule(rows, grad)
        return {k: st[k].at[indices].set(new[k].astype(st[k].dtype), mode="drop") for k in st}

    def sequential(st):
        def body(carry, xs):
            i, g = xs
            rows = {k: jax.lax.dynamic_index_in_dim(v, i, keepdims=False) for k, v in carry.items()}
            new = rows_rule(rows, g)
            return {k: jax.lax.dynamic_update_index_in_dim(
                carry[k], jnp.where(i < size, new[k].astype(carry[k].dtype), rows[k]), i, 0)
                for k in carry}, None

        out, _ = jax.lax.scan(body, st, (indices, grad))
        return out

    if known is not None:  # constant indices: decide at trace time
        return sequential(state) if len(np.unique(known)) < n else vectorized(state)
    if n == 1:
        return vectorized(state)
    ordered = jnp.sort(indices)
    has_duplicates = jnp.any(ordered[1:] == ordered[:-1])
    return jax.lax.cond(has_duplicates, sequential, vectorized, state)


_RULES: dict[str, tuple[Rule, tuple[str, ...], int, tuple[str, ...]]] = {
    # name: (rule, inputs of the dense op, number of variable inputs, bool attributes)
    "GradientDescent": (_gradient_descent, ("var", "alpha", "delta"), 1, ()),
    "ProximalGradientDescent": (_proximal_gradient_descent, ("var", "alpha", "l1", "l2", "delta"), 1, ()),
    "Momentum": (_momentum, ("var", "accum", "lr", "grad", "momentum"), 2, ("use_nesterov",)),
    "KerasMomentum": (_keras_momentum, ("var", "accum", "lr", "grad", "momentum"), 2, ("use_nesterov",)),
    "Adam": (_adam, ("var", "m", "v", "beta1_power", "beta2_power", "lr", "beta1", "beta2", "epsilon", "grad"),
             3, ("use_nesterov",)),
    "AdamWithAmsgrad": (
        lambda a, at: _adam(a, at, amsgrad=True),
        ("var", "m", "v", "vhat", "beta1_power", "beta2_power", "lr", "beta1", "beta2", "epsilon", "grad"), 4, ()),
    "AdaMax": (_adamax, ("var", "m", "v", "beta1_power", "lr", "beta1", "beta2", "epsilon", "grad"), 3, ()),
    "RMSProp": (_rms_prop, ("var", "ms", "mom", "lr", "rho", "momentum", "epsilon", "grad"), 3, ()),
    "CenteredRMSProp": (_centered_rms_prop, ("var", "mg", "ms", "mom", "lr", "rho", "momentum", "epsilon", "grad"),
                        4, ()),
    "Adagrad": (_adagrad, ("var", "accum", "lr", "grad"), 2, ("update_slots",)),
    "AdagradV2": (_adagrad_v2, ("var", "accum", "lr", "epsilon", "grad"), 2, ("update_slots",)),
    "AdagradDA": (_adagrad_da, ("var", "gradient_accumulator", "gradient_squared_accumulator", "grad", "lr", "l1",
                                "l2", "global_step"), 3, ()),
    "ProximalAdagrad": (_proximal_adagrad, ("var", "accum", "lr", "l1", "l2", "grad"), 2, ()),
    "Adadelta": (_adadelta, ("var", "accum", "accum_update", "lr", "rho", "epsilon", "grad"), 3, ()),
    "Ftrl": (_ftrl, ("var", "accum", "linear", "grad", "lr", "l1", "l2", "lr_power"), 3, ("multiply_linear_by_lr",)),
    "FtrlV2": (_ftrl, ("var", "accum", "linear", "grad", "lr", "l1", "l2", "l2_shrinkage", "lr_power"), 3,
               ("multiply_linear_by_lr",)),
    "AddSign": (_add_sign, ("var", "m", "lr", "alpha", "sign_decay", "beta", "grad"), 2, ()),
    "PowerSign": (_power_sign, ("var", "m", "lr", "logbase", "sign_decay", "beta", "grad"), 2, ()),
}

# Ops TF only defines in the resource form.
_RESOURCE_ONLY = {"KerasMomentum", "AdamWithAmsgrad"}

# Sparse variants (`indices` follows `grad`, except where TF puts it elsewhere).
_SPARSE = {
    "Adagrad", "AdagradV2", "AdagradDA", "ProximalAdagrad", "ProximalGradientDescent", "Momentum",
    "KerasMomentum", "RMSProp", "CenteredRMSProp", "Adadelta", "Ftrl", "FtrlV2",
}


def _sparse_inputs(inputs: tuple[str, ...]) -> tuple[str, ...]:
    """The sparse op's inputs: the dense op's with `indices` right after the gradient."""
    out = []
    for name in inputs:
        out.append("grad" if name == "delta" else name)  # the sparse ops call it grad
        if name in ("grad", "delta"):
            out.append("indices")
    return tuple(out)


for _name, (_rule, _inputs, _n_refs, _bools) in _RULES.items():
    _dense = [f"ResourceApply{_name}"] + ([] if _name in _RESOURCE_ONLY else [f"Apply{_name}"])
    register(*_dense, assigns=True, context=True)(_build_update(_rule, _inputs, _n_refs, _bools))
    if _name in _SPARSE:
        _sparse = [f"ResourceSparseApply{_name}"] + ([] if _name in _RESOURCE_ONLY else [f"SparseApply{_name}"])
        register(*_sparse, assigns=True, context=True)(
            _build_update(_rule, _sparse_inputs(_inputs), _n_refs, _bools)
        )
