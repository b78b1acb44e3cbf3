"""Math ops against TensorFlow: elementwise, casts, selection, scans, reductions, matmul, FFT, linalg."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from oracle import assert_close, compare_with_tf, export_meta, get_tf, ph, run_tf

import jaxmeta
from jaxmeta.ops import registry

pytestmark = pytest.mark.oracle

F32 = np.float32
I32 = np.int32


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _sample(domain: str, shape, dtype=F32, seed: int = 0) -> np.ndarray:
    """Random inputs on a domain where the op (and its gradient) is smooth."""
    r = _rng(seed)
    u = r.uniform(size=shape)
    if domain == "any":
        x = r.standard_normal(shape) * 2
    elif domain == "pos":  # (0.2, 3)
        x = 0.2 + 2.8 * u
    elif domain == "unit":  # (-0.9, 0.9)
        x = 1.8 * u - 0.9
    elif domain == "gt1":  # (1.2, 4)
        x = 1.2 + 2.8 * u
    elif domain == "nonzero":  # |x| in (0.5, 3), either sign
        x = (0.5 + 2.5 * u) * r.choice([-1, 1], size=shape)
    elif domain == "prob":  # (0.05, 0.95)
        x = 0.05 + 0.9 * u
    elif domain == "small":  # (-2, 2), for exp-like ops
        x = 4 * u - 2
    else:
        raise ValueError(domain)
    return np.asarray(x, dtype)


def _ph(tf, dtype, shape, name):
    return tf.compat.v1.placeholder(dtype, shape, name=name)


# -- elementwise unary ----------------------------------------------------------------------------

UNARY = {
    # op: (domain, differentiable in TF)
    "Abs": ("nonzero", True),
    "Neg": ("any", True),
    "Reciprocal": ("nonzero", True),
    "Inv": ("nonzero", True),
    "Square": ("any", True),
    "Sqrt": ("pos", True),
    "Rsqrt": ("pos", True),
    "Exp": ("small", True),
    "Expm1": ("small", True),
    "Log": ("pos", True),
    "Log1p": ("pos", True),
    "Sin": ("any", True),
    "Cos": ("any", True),
    "Tan": ("unit", True),
    "Asin": ("unit", True),
    "Acos": ("unit", True),
    "Atan": ("any", True),
    "Sinh": ("small", True),
    "Cosh": ("small", True),
    "Tanh": ("any", True),
    "Asinh": ("any", True),
    "Acosh": ("gt1", True),
    "Atanh": ("unit", True),
    "Sigmoid": ("any", True),
    "Sign": ("nonzero", True),
    "Floor": ("any", False),
    "Ceil": ("any", False),
    "Round": ("any", False),
    "Rint": ("any", False),
    "Erf": ("any", True),
    "Erfc": ("any", True),
    "Erfinv": ("unit", True),
    "Ndtri": ("prob", True),
    "Lgamma": ("pos", True),
    "Digamma": ("pos", True),
    "BesselI0e": ("any", True),
    "BesselI1e": ("any", True),
    "BesselI0": ("small", True),
    "BesselI1": ("small", True),
    "Spence": ("gt1", True),
    "Expint": ("pos", True),
}


# Special functions built from long XLA loops take minutes op by op (eager, unjitted gradients);
# they are checked under jit only.
HEAVY = {"Ndtri", "Digamma", "Lgamma", "Erfinv", "BesselI0e", "BesselI1e", "BesselI0", "BesselI1", "Spence",
         "Expint", "Igamma", "Igammac", "IgammaGradA", "Zeta"}
JIT_ONLY = (True,)


def _grouped(table, key):
    """Ops sharing inputs and settings run as one graph (one TF session, one compile): much faster
    than a graph per op. Failures still name the op: fetches are named after their op type."""
    groups: dict = {}
    for op in sorted(table):
        groups.setdefault(key(op), []).append(op)
    return [pytest.param(k, ops, id="-".join(ops)) for k, ops in sorted(groups.items(), key=str)]


@pytest.mark.parametrize("group,ops", _grouped(UNARY, lambda op: (*UNARY[op], op in HEAVY)))
def test_unary_float(group, ops):
    domain, differentiable, heavy = group
    x = _sample(domain, (2, 3))
    x64 = _sample(domain, (4,), np.float64, seed=1)

    def build(tf):
        p, p64 = _ph(tf, tf.float32, [2, 3], "x"), _ph(tf, tf.float64, [4], "x64")
        return [getattr(tf.raw_ops, op)(x=v) for op in ops for v in (p, p64)]

    compare_with_tf(build, {"x:0": x, "x64:0": x64}, rtol=2e-5, atol=1e-5, grads=differentiable,
                    jit_modes=JIT_ONLY if heavy else (False, True))


def test_unary_half():
    x = _sample("pos", (2, 3), np.float16)
    ops = ["Abs", "Neg", "Square", "Sign", "Exp", "Sqrt", "Tanh", "Floor", "Sigmoid", "Log", "Reciprocal"]

    def build(tf):
        p = _ph(tf, tf.float16, [2, 3], "x")
        return [getattr(tf.raw_ops, op)(x=p) for op in ops]

    compare_with_tf(build, {"x:0": x}, rtol=2e-3, atol=2e-3)


def test_unary_int():
    x = np.array([[-7, -1, 0], [1, 5, 2**30]], I32)
    ops = ["Abs", "Neg", "Square", "Sign", "Invert", "PopulationCount"]

    def build(tf):
        p = _ph(tf, tf.int32, [2, 3], "x")
        return [getattr(tf.raw_ops, op)(x=v) for op in ops for v in (p, tf.constant(x))]

    compare_with_tf(build, {"x:0": x})


def test_population_count_of_negative_int64():
    # With x64 off an int64 arrives as the int32 of the same value; TF counts its 64 bits.
    x = np.array([-1, -2, -(2**31), 5, 0], np.int64)

    def build(tf):
        return tf.raw_ops.PopulationCount(x=_ph(tf, tf.int64, [5], "x"))

    compare_with_tf(build, {"x:0": x})


def test_expint_domain():
    # TF's Ei is NaN below 0 and -inf at 0 (jax.scipy's expi extends it to negative x).
    x = np.array([-2.0, -0.5, 0.0, -0.0, 0.5, 3.0], F32)

    def build(tf):
        return [tf.raw_ops.Expint(x=_ph(tf, tf.float32, [6], "x")), tf.raw_ops.Expint(x=tf.constant(x.astype(np.float64)))]

    compare_with_tf(build, {"x:0": x})


def test_incomplete_gamma_of_large_a():
    """XLA's series for P(a, x) and Q(a, x) takes about sqrt(a) steps near x = a (hours at 1e30, a
    hang) and loses accuracy as a grows; TF's kernels are as far off there (2e-27 for P(1e30,
    1e30), whose value is 1/2). Past a = 3e3 (float32) or 3e7 (float64) jaxmeta takes Wilson and
    Hilferty's approximation: checked against SciPy (Temme's expansion), not TF."""
    from scipy import special

    a = np.array([1e30, 1e20, 1e12, 1e9, 1e9, 5e7, 1e4, 1e4, 5.0, 1e9, 1e9, 1e9])
    x = np.array([1e30, 1e20 + 1e10, 1e12, 1e9 + 4e4, 1e9 - 6e4, 5e7, 1e4 + 150, 9900, 4.0, np.inf, np.nan, 0.0])
    for dtype, rtol in [(np.float32, 2e-4), (np.float64, 1e-7)]:
        if dtype == np.float64 and not jax.config.jax_enable_x64:
            a64, x64 = a[5:9], x[5:9]  # float64 arrives as float32 with x64 off
            rtol = 2e-4
        else:
            a64, x64 = a, x
        ax, xx = a64.astype(dtype), x64.astype(dtype)

        def build(tf, ax=ax, xx=xx):
            r = tf.raw_ops
            return [r.Igamma(a=tf.constant(ax), x=tf.constant(xx)), r.Igammac(a=tf.constant(ax), x=tf.constant(xx)),
                    r.IgammaGradA(a=tf.constant(ax), x=tf.constant(xx))]

        run = run_tf(build)
        got = run.graph.function(run.fetch_names)({})
        a_, x_ = ax.astype(np.float64), xx.astype(np.float64)
        np.testing.assert_allclose(np.asarray(got[0], np.float64), special.gammainc(a_, x_), rtol=rtol, atol=1e-12)
        np.testing.assert_allclose(np.asarray(got[1], np.float64), special.gammaincc(a_, x_), rtol=rtol, atol=1e-12)
        step = np.minimum(np.sqrt(a_), a_) * 1e-3  # P moves on the scale of sqrt(a)
        slope = (special.gammainc(a_ + step, x_) - special.gammainc(a_ - step, x_)) / (2 * step)
        finite = np.isfinite(slope) & (a_ < 1e21)  # beyond, a +- step is lost in rounding
        np.testing.assert_allclose(np.asarray(got[2], np.float64)[finite], slope[finite], rtol=1e-3, atol=1e-12)


def test_round_half_to_even_and_special_values():
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999997, np.inf, -np.inf, np.nan], F32)

    def build(tf):
        p = _ph(tf, tf.float32, [10], "x")
        r = tf.raw_ops
        outs = [r.Round(x=p), r.Rint(x=p), r.IsFinite(x=p), r.IsInf(x=p), r.IsNan(x=p), r.Sign(x=p)]
        return outs + [r.Round(x=tf.constant(x)), r.IsNan(x=tf.constant(x))]

    compare_with_tf(build, {"x:0": x})


def test_logical_ops():
    a = np.array([[True, False, True]])
    b = np.array([[True], [False]])

    def build(tf):
        x, y = _ph(tf, tf.bool, [1, 3], "a"), _ph(tf, tf.bool, [2, 1], "b")
        r = tf.raw_ops
        return [r.LogicalNot(x=x), r.LogicalAnd(x=x, y=y), r.LogicalOr(x=x, y=y),
                r.LogicalAnd(x=tf.constant(a), y=tf.constant(b))]

    compare_with_tf(build, {"a:0": a, "b:0": b})


# -- elementwise binary ---------------------------------------------------------------------------

# Broadcasting cases: same shape, scalar with matrix, [3,1] with [1,4], rank 3 with rank 1.
SHAPES = [((2, 3), (2, 3)), ((), (2, 3)), ((3, 1), (1, 4)), ((2, 3, 4), (4,))]

BINARY_FLOAT = {
    # op: (x domain, y domain, differentiable)
    "Add": ("any", "any", True),
    "AddV2": ("any", "any", True),
    "Sub": ("any", "any", True),
    "Mul": ("any", "any", True),
    "MulNoNan": ("any", "any", True),
    "Div": ("any", "nonzero", True),
    "RealDiv": ("any", "nonzero", True),
    "DivNoNan": ("any", "nonzero", True),
    "FloorDiv": ("any", "nonzero", False),
    "FloorMod": ("any", "nonzero", True),
    "TruncateDiv": ("any", "nonzero", False),
    "TruncateMod": ("any", "nonzero", False),
    "Mod": ("any", "nonzero", False),
    "Pow": ("pos", "any", True),
    "Maximum": ("any", "any", True),
    "Minimum": ("any", "any", True),
    "SquaredDifference": ("any", "any", True),
    "Atan2": ("any", "nonzero", True),
    "Xlogy": ("any", "pos", True),
    "Xlog1py": ("any", "pos", True),
    "Xdivy": ("any", "nonzero", True),
    "Igamma": ("pos", "pos", True),
    "Igammac": ("pos", "pos", True),
    "IgammaGradA": ("pos", "pos", False),
    "Zeta": ("gt1", "pos", False),
    "NextAfter": ("any", "any", False),
}


ARG_NAMES = {"Igamma": ("a", "x"), "Igammac": ("a", "x"), "IgammaGradA": ("a", "x"), "Zeta": ("x", "q"), "NextAfter": ("x1", "x2")}


@pytest.mark.parametrize("group,ops", _grouped(BINARY_FLOAT, lambda op: (*BINARY_FLOAT[op], op in HEAVY)))
def test_binary_float_broadcasting(group, ops):
    dx, dy, differentiable, heavy = group
    shapes = SHAPES[2:3] if heavy else SHAPES  # broadcasting is shared; keep slow ops small
    feeds = {}
    for i, (sx, sy) in enumerate(shapes):
        feeds[f"x{i}:0"] = _sample(dx, sx, seed=2 * i)
        feeds[f"y{i}:0"] = _sample(dy, sy, seed=2 * i + 1)

    def build(tf):
        ps = [(_ph(tf, tf.float32, sx, f"x{i}"), _ph(tf, tf.float32, sy, f"y{i}")) for i, (sx, sy) in enumerate(shapes)]
        outs = []
        for op in ops:
            kx, ky = ARG_NAMES.get(op, ("x", "y"))
            outs += [getattr(tf.raw_ops, op)(**{kx: x, ky: y}) for x, y in ps]
        return outs

    compare_with_tf(build, feeds, rtol=1e-4, atol=1e-5, grads=differentiable,
                    jit_modes=JIT_ONLY if heavy else (False, True))


def test_binary_float_zero_and_nan_quirks():
    x = np.array([0.0, 0.0, 1.0, np.nan, np.inf, 2.0, -1.0, 1.0], F32)
    y = np.array([0.0, 1.0, 0.0, 0.0, 0.0, np.nan, 1.0, 0.1], F32)

    def build(tf):
        a, b = _ph(tf, tf.float32, [8], "x"), _ph(tf, tf.float32, [8], "y")
        r = tf.raw_ops
        return [r.DivNoNan(x=a, y=b), r.MulNoNan(x=a, y=b), r.Xlogy(x=a, y=b), r.Xdivy(x=a, y=b),
                r.Maximum(x=a, y=b), r.Minimum(x=a, y=b), r.FloorDiv(x=a, y=b)]

    compare_with_tf(build, {"x:0": x, "y:0": y})


def test_maximum_minimum_ties_gradient():
    # TF gives the whole gradient of a tie to x (x >= y), not half to each operand.
    x = np.array([1.0, 2.0, 3.0], F32)
    y = np.array([1.0, 1.0, 4.0], F32)

    def build(tf):
        a, b = _ph(tf, tf.float32, [3], "x"), _ph(tf, tf.float32, [3], "y")
        return [tf.raw_ops.Maximum(x=a, y=b), tf.raw_ops.Minimum(x=a, y=b)]

    compare_with_tf(build, {"x:0": x, "y:0": y}, grads=True)


BINARY_INT = ["Add", "AddV2", "Sub", "Mul", "Div", "FloorDiv", "FloorMod", "TruncateDiv", "TruncateMod",
              "Mod", "Maximum", "Minimum", "SquaredDifference", "BitwiseAnd", "BitwiseOr", "BitwiseXor"]


@pytest.mark.parametrize("op", BINARY_INT)
def test_binary_int(op):
    # Signs in every combination: Div/TruncateDiv/Mod truncate toward zero, FloorDiv/FloorMod floor.
    x = np.array([[7, -7, 7, -7, 0, 6], [13, -13, 1, -1, 5, -9]], I32)
    y = np.array([[2, 2, -2, -2, 3, 3]], I32)

    def build(tf):
        f = getattr(tf.raw_ops, op)
        a, b = _ph(tf, tf.int32, [2, 6], "x"), _ph(tf, tf.int32, [1, 6], "y")
        # Fed (traced) operands, and constants (the NumPy path that shape arithmetic takes).
        return [f(x=a, y=b), f(x=a, y=tf.constant(np.int32(3))),
                f(x=tf.constant(x), y=tf.constant(y)), f(x=tf.constant(x[0, 0]), y=tf.constant(y))]

    compare_with_tf(build, {"x:0": x, "y:0": y})


@pytest.mark.parametrize("static_inputs", [False, True], ids=["fed", "const"])
def test_int_pow_and_shifts(static_inputs):
    x = np.array([2, -3, 0, 1, -8, 8, 5], I32)
    p = np.array([3, 3, 0, 7, 1, 2, 0], I32)
    s = np.array([3, 31, 40, -1, 1, 33, 0], I32)  # shift amounts are clamped to [0, 31]

    def build(tf):
        if static_inputs:
            a, b, c = tf.constant(x), tf.constant(p), tf.constant(s)
        else:
            a, b, c = (_ph(tf, tf.int32, [7], n) for n in "xps")
        r = tf.raw_ops
        return [r.Pow(x=a, y=b), r.LeftShift(x=a, y=c), r.RightShift(x=a, y=c)]

    compare_with_tf(build, {} if static_inputs else {"x:0": x, "p:0": p, "s:0": s})


def test_int64_shape_arithmetic():
    x = np.array([6, 4, 9], np.int64)

    def build(tf):
        a = tf.constant(x)
        r = tf.raw_ops
        return [r.Prod(input=a, axis=0), r.FloorDiv(x=a, y=tf.constant(np.int64(2))),
                r.Maximum(x=a, y=tf.constant(np.int64(5))), r.Mul(x=a, y=a)]

    compare_with_tf(build)


COMPARISONS = ["Equal", "NotEqual", "Less", "LessEqual", "Greater", "GreaterEqual"]


@pytest.mark.parametrize("op", COMPARISONS)
def test_comparisons(op):
    r = _rng(3)
    feeds = {}
    for dtype in ("float32", "int32"):
        for i, (sx, sy) in enumerate(SHAPES):
            feeds[f"x{dtype}{i}:0"] = r.integers(-2, 3, size=sx).astype(dtype)
            feeds[f"y{dtype}{i}:0"] = r.integers(-2, 3, size=sy).astype(dtype)

    def build(tf):
        f = getattr(tf.raw_ops, op)
        outs = [f(x=_ph(tf, dt, sx, f"x{dt}{i}"), y=_ph(tf, dt, sy, f"y{dt}{i}"))
                for dt in ("float32", "int32") for i, (sx, sy) in enumerate(SHAPES)]
        return outs + [f(x=tf.constant(feeds["xint322:0"]), y=tf.constant(feeds["yint322:0"]))]

    compare_with_tf(build, feeds)


def test_equal_strings_and_incompatible_shapes():
    def build(tf):
        a = tf.constant([b"a", b"bc", b""])
        r = tf.raw_ops
        x, y = _ph(tf, tf.float32, [2], "x"), _ph(tf, tf.float32, [3], "y")
        return [r.Equal(x=a, y=tf.constant(b"bc")), r.NotEqual(x=a, y=tf.constant([b"a", b"b", b""])),
                r.Equal(x=x, y=y, incompatible_shape_error=False),
                r.NotEqual(x=x, y=y, incompatible_shape_error=False)]

    compare_with_tf(build, {"x:0": np.ones(2, F32), "y:0": np.ones(3, F32)})


def test_add_concatenates_strings():
    def build(tf):
        return tf.raw_ops.Add(x=tf.constant([b"a", b"bc"]), y=tf.constant(b"!"))

    # Strings are not JAX values: only the eager (non-jit) function returns them.
    compare_with_tf(build, jit_modes=(False,))


def test_approximate_equal_and_next_after():
    x = np.array([1.0, 1.0, 2.0], F32)
    y = np.array([1.0 + 1e-6, 1.1, -3.0], F32)

    def build(tf):
        a, b = _ph(tf, tf.float32, [3], "x"), _ph(tf, tf.float32, [3], "y")
        return [tf.raw_ops.ApproximateEqual(x=a, y=b, tolerance=1e-4), tf.raw_ops.ApproximateEqual(x=a, y=b)]

    compare_with_tf(build, {"x:0": x, "y:0": y})


@pytest.mark.parametrize("op", ["Polygamma", "Betainc"])
def test_special_multi_input(op):
    a = np.array([[0.0, 1.0, 2.0], [1.0, 3.0, 0.0]], F32)
    x = _sample("pos", (2, 3), seed=5) + 0.5

    def build(tf):
        r = tf.raw_ops
        if op == "Polygamma":
            return r.Polygamma(a=_ph(tf, tf.float32, [2, 3], "a"), x=_ph(tf, tf.float32, [2, 3], "x"))
        p = _ph(tf, tf.float32, [2, 3], "p")
        return r.Betainc(a=_ph(tf, tf.float32, [2, 3], "x"), b=tf.constant(np.float32(2.5)), x=p)

    feeds = {"a:0": a, "x:0": x} if op == "Polygamma" else {"x:0": x, "p:0": _sample("prob", (2, 3), seed=6)}
    compare_with_tf(build, feeds, rtol=1e-4, atol=1e-5, grads=op == "Polygamma")


# -- complex numbers ------------------------------------------------------------------------------


def test_complex_parts():
    re, im = _sample("nonzero", (2, 3), seed=1), _sample("nonzero", (2, 3), seed=2)

    def build(tf):
        r = tf.raw_ops
        c = r.Complex(real=_ph(tf, tf.float32, [2, 3], "re"), imag=_ph(tf, tf.float32, [2, 3], "im"))
        return [c, r.Real(input=c), r.Imag(input=c), r.Angle(input=c), r.ComplexAbs(x=c),
                r.Real(input=r.Conj(input=c) * c), r.Imag(input=r.Conj(input=c)),
                r.Real(input=r.Sqrt(x=c)), r.Imag(input=r.Exp(x=c))]

    compare_with_tf(build, {"re:0": re, "im:0": im}, rtol=1e-5, atol=1e-5, grads=True)


# -- casts ----------------------------------------------------------------------------------------

CASTS = [
    ("float32", "int32"), ("float32", "bool"), ("float32", "float16"), ("float32", "bfloat16"),
    ("float32", "int64"), ("float32", "uint8"), ("int32", "float32"), ("int32", "bool"), ("bool", "float32"),
    ("bool", "int32"), ("float64", "float32"), ("int64", "int32"), ("int32", "int8"),
]


@pytest.mark.parametrize("src,dst", CASTS)
def test_cast(src, dst):
    # Float -> int truncates toward zero; int -> narrower int wraps; nonzero -> True.
    values = {
        "float32": [-2.7, -0.5, 0.0, 0.5, 1.5, 2.99, 1e4],
        "float64": [-2.7, -0.5, 0.0, 0.5, 1.5, 2.99, 1e4],
        "int32": [-300, -1, 0, 1, 2, 127, 300],
        "int64": [-300, -1, 0, 1, 2, 127, 300],
        "bool": [True, False, True, True, False, False, True],
    }[src]
    if dst == "uint8":
        values = [abs(v) % 256 for v in values]
    x = np.array(values, src)

    def build(tf):
        return [tf.raw_ops.Cast(x=_ph(tf, src, [7], "x"), DstT=dst), tf.raw_ops.Cast(x=tf.constant(x), DstT=dst)]

    compare_with_tf(build, {"x:0": x}, grads=src.startswith("float") and dst.startswith("float"))


@pytest.mark.parametrize("src", ["float16", "float32", "float64", "bfloat16"])
def test_cast_float_to_int_out_of_range(src):
    """TF's CPU casts wrap where XLA saturates: -1.0 -> uint8 255, 300.0 -> int8 44; NaN and inf
    -> 0 in 8 and 16 bits, the minimum in 32 and 64. From bfloat16 TF clamps to 8 and 16 bits. (TF's
    results for NaN, inf and values past 32 bits in uint32, and from bfloat16, depend on where in
    the array they sit: left out.)"""
    in_range = [-1.0, -2.5, 300.0, -300.0, 70000.0, -70000.0, 255.7, -0.7, 3.0]
    edges = [np.nan, np.inf, -np.inf, 3e9, -1e30] if src != "bfloat16" else []
    dsts = ["int8", "uint8", "int16", "uint16"] + (["int32", "uint32"] if src != "bfloat16" else [])
    if jax.config.jax_enable_x64:
        dsts += ["int64", "uint64"]
    dtype = tf_dtype = src
    if src == "bfloat16":
        import ml_dtypes

        dtype = ml_dtypes.bfloat16
    x = np.array(in_range + edges, np.float32).astype(dtype)

    def build(tf):
        p = _ph(tf, tf_dtype, [x.size], "x")
        outs = []
        for dst in dsts:
            v = p if dst != "uint32" else p[:len(in_range)]  # uint32: values in range only
            outs += [tf.raw_ops.Cast(x=v, DstT=dst), tf.raw_ops.Cast(x=tf.constant(x)[:len(in_range)], DstT=dst)]
        return outs

    compare_with_tf(build, {"x:0": x})


@pytest.mark.parametrize("dst", ["bfloat16", "float16"])
def test_cast_truncate(dst):
    x = np.array([1.00390625 + 2**-9, 65519.0, -3.14159, 1 + 2**-11 + 2**-13, 1e-3, 7.0], F32)

    def build(tf):
        cast = tf.raw_ops.Cast
        return [cast(x=p, DstT=dst, Truncate=t) for p in (_ph(tf, tf.float32, [6], "x"), tf.constant(x))
                for t in (True, False)]

    compare_with_tf(build, {"x:0": x}, rtol=0, atol=0)


def test_cast_complex_to_real():
    def build(tf):
        c = tf.complex(_ph(tf, tf.float32, [3], "re"), tf.constant([1.0, 2.0, 3.0]))
        return [tf.raw_ops.Cast(x=c, DstT=tf.float32), tf.raw_ops.Cast(x=tf.constant([1 + 2j]), DstT=tf.float32)]

    compare_with_tf(build, {"re:0": np.float32([1, -2, 3])})


def test_stochastic_cast_to_int():
    """StochasticCastToInt: integers, NaN (0) and values at or past the target's bounds (those
    bounds as the input's type holds them, cast as TF's x86 casts: 1e10 -> int32's minimum, 40000
    in float16 -> int16's) as TF gives them; the rest rounded down or up, up about as often as the
    fraction says, the same way for the same key and counter (TF's own draws, from its Philox
    stream, are not reproduced)."""
    exact = np.float32([0, 3, -7, np.nan, np.inf, -np.inf, 1e10, -1e10, 127, 128, -129, 40000, -40000])
    fractions = np.float32([2.5, -2.5, 0.3, -0.7, 1000.5, 126.5, -127.5])
    x = np.concatenate([exact, fractions])
    many = np.full(4000, 0.25, np.float32)
    tf = get_tf()
    g = tf.Graph()
    with g.as_default():
        key, counter = tf.constant(np.uint64([7])), tf.constant(np.uint64([1, 2]))

        def cast(value, tout, *state):
            op = g._create_op_internal("StochasticCastToInt", [value, *(state or (key, counter)), tf.constant(1)],
                                       attrs={"Tin": tf.compat.v1.AttrValue(type=value.dtype.as_datatype_enum),
                                              "Tout": tf.compat.v1.AttrValue(type=tout.as_datatype_enum)})
            return op.outputs[0]

        p = tf.compat.v1.placeholder(tf.float32, x.shape, name="x")
        outs = [cast(v, t) for v in (p, tf.cast(p, tf.float16)) for t in (tf.int8, tf.int16, tf.int32)]
        outs += [cast(tf.constant(many), tf.int32), cast(tf.constant(-many), tf.int32),
                 cast(tf.constant(many), tf.int32, tf.constant(np.uint64([7])), tf.constant(np.uint64([1, 3])))]
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
        with tf.compat.v1.Session(graph=g) as sess:
            want = sess.run(outs, {p: x})
    f = jaxmeta.import_meta_graph(meta).function([o.name for o in outs], ["x:0"])
    for fn in (f, jax.jit(f)):
        got = [np.asarray(v) for v in fn({}, x)]
        for g_val, w_val, o in zip(got[:6], want, outs):
            assert g_val.dtype == w_val.dtype, o.name
            np.testing.assert_array_equal(g_val[:exact.size], w_val[:exact.size], err_msg=o.name)
            inputs = fractions.astype(np.float16 if "Cast" in o.op.inputs[0].name else np.float32)
            bounds = np.iinfo(g_val.dtype)
            down, up = (np.clip(r(inputs), bounds.min, bounds.max) for r in (np.floor, np.ceil))
            assert np.all((g_val[exact.size:] == down) | (g_val[exact.size:] == up)), o.name
        up, down, other = got[6:]
        assert abs(up.mean() - 0.25) < 0.04 and abs(down.mean() + 0.25) < 0.04
        assert set(np.unique(up)) == {0, 1} and not np.array_equal(up, other)  # another counter, other draws
    np.testing.assert_array_equal(f({}, x)[6], jax.jit(f)({}, x)[6])  # the same key and counter: the same draws


# -- n-ary and selection --------------------------------------------------------------------------


def test_add_n_and_accumulate():
    xs = {f"x{i}:0": _sample("any", (2, 3), seed=i) for i in range(3)}

    def build(tf):
        ps = [_ph(tf, tf.float32, [2, 3], f"x{i}") for i in range(3)]
        consts = [tf.constant(np.int32([1, 2])), tf.constant(np.int32([3, 4]))]
        return [tf.raw_ops.AddN(inputs=ps), tf.raw_ops.AccumulateNV2(inputs=ps, shape=[2, 3]),
                tf.raw_ops.AddN(inputs=consts), tf.raw_ops.AddN(inputs=ps[:1])]

    compare_with_tf(build, xs, grads=True)


def test_select_v1():
    t, e = _sample("any", (3, 2), seed=1), _sample("any", (3, 2), seed=2)

    def build(tf):
        a, b = _ph(tf, tf.float32, [3, 2], "t"), _ph(tf, tf.float32, [3, 2], "e")
        r = tf.raw_ops
        return [
            r.Select(condition=tf.constant([True, False, True]), x=a, y=b),  # vector picks rows
            r.Select(condition=tf.constant([[True, False]] * 3), x=a, y=b),
            r.Select(condition=tf.constant(False), x=a, y=b),
            r.Select(condition=tf.constant([True, False]), x=tf.constant([1, 2]), y=tf.constant([3, 4])),
        ]

    compare_with_tf(build, {"t:0": t, "e:0": e}, grads=True)


def test_select_v2_broadcasting():
    t, e = _sample("any", (1, 4), seed=1), _sample("any", (), seed=2)
    cond = np.array([[True], [False], [True]])

    def build(tf):
        c = _ph(tf, tf.bool, [3, 1], "c")
        a, b = _ph(tf, tf.float32, [1, 4], "t"), _ph(tf, tf.float32, [], "e")
        r = tf.raw_ops
        return [r.SelectV2(condition=c, t=a, e=b), r.SelectV2(condition=tf.constant(True), t=a, e=b),
                r.SelectV2(condition=tf.constant([True, False]), t=tf.constant(1), e=tf.constant([5, 6]))]

    compare_with_tf(build, {"c:0": cond, "t:0": t, "e:0": e}, grads=True)


def test_clip_by_value():
    x = np.array([[-2.0, -0.5, 0.3], [0.9, 1.7, 3.0]], F32)
    lo = np.array([[-1.0, -1.0, -1.0], [0.0, 0.0, 2.0]], F32)

    def build(tf):
        t = _ph(tf, tf.float32, [2, 3], "x")
        r = tf.raw_ops
        return [r.ClipByValue(t=t, clip_value_min=tf.constant(-1.0), clip_value_max=tf.constant(1.0)),
                r.ClipByValue(t=t, clip_value_min=_ph(tf, tf.float32, [2, 3], "lo"), clip_value_max=tf.constant(2.5)),
                r.ClipByValue(t=t, clip_value_min=tf.constant(1.0), clip_value_max=tf.constant(-1.0)),
                r.ClipByValue(t=tf.constant([1, 5, 9]), clip_value_min=tf.constant(2), clip_value_max=tf.constant(6))]

    compare_with_tf(build, {"x:0": x, "lo:0": lo}, grads=True)


def test_clip_by_value_complex():
    # TF clips a complex number's real and imaginary parts each by the bounds' own.
    x = np.array([1 + 2j, 3 - 1j, -2 + 0.5j, 0.7 + 0.7j], np.complex64)

    def build(tf):
        t = _ph(tf, tf.complex64, [4], "x")
        lo, hi = tf.constant(np.complex64(0.5 + 0.5j)), tf.constant(np.complex64(2 + 1j))
        return [tf.raw_ops.ClipByValue(t=t, clip_value_min=lo, clip_value_max=hi),
                tf.raw_ops.ClipByValue(t=tf.constant(x), clip_value_min=lo, clip_value_max=hi)]

    compare_with_tf(build, {"x:0": x})


# -- scans ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["Cumsum", "Cumprod", "CumulativeLogsumexp"])
def test_scans(op):
    x = _sample("pos" if op == "Cumprod" else "any", (3, 4))
    xi = np.arange(1, 13, dtype=I32).reshape(3, 4)
    flags = [(e, r) for e in (False, True) for r in (False, True)]  # (exclusive, reverse)

    def build(tf):
        f = getattr(tf.raw_ops, op)
        p = _ph(tf, tf.float32, [3, 4], "x")
        outs = [f(x=p, axis=axis, exclusive=e, reverse=r) for e, r in flags for axis in (0, -1)]
        if op != "CumulativeLogsumexp":
            q = _ph(tf, tf.int32, [3, 4], "xi")
            outs += [f(x=tf.constant(xi), axis=1, exclusive=e, reverse=r) for e, r in flags]
            outs += [f(x=q, axis=0, exclusive=e, reverse=r) for e, r in flags]
        return outs

    feeds = {"x:0": x} if op == "CumulativeLogsumexp" else {"x:0": x, "xi:0": xi}
    compare_with_tf(build, feeds, rtol=1e-5, atol=1e-5, grads=True)


# -- reductions -----------------------------------------------------------------------------------

# (axis, keep_dims): scalar and vector axes, negative axes, the empty list (no reduction), all axes.
AXES = [(0, False), (-1, True), ([0, 2], False), ([], True), ([0, 1, 2], False), ([-1, 1], True), ([], False)]


@pytest.mark.parametrize("op", ["Sum", "Mean", "Prod", "Max", "Min", "EuclideanNorm"])
@pytest.mark.parametrize("dtype", ["float32", "int32"])
def test_reductions(op, dtype):
    if dtype == "int32":
        x = _rng(4).integers(-5, 6, size=(2, 3, 4)).astype(dtype)
    else:
        x = _sample("pos" if op == "Prod" else "nonzero", (2, 3, 4))

    def build(tf):
        f = getattr(tf.raw_ops, op)
        p = _ph(tf, dtype, [2, 3, 4], "x")
        # Prod's gradient is costly to compile: fewer cases.
        outs = [f(input=p, axis=axis, keep_dims=keep) for axis, keep in (AXES[1:4] if op == "Prod" else AXES)]
        return outs + [f(input=tf.constant(x), axis=tf.constant([1], tf.int64))]

    compare_with_tf(build, {"x:0": x}, rtol=1e-5, atol=1e-5, grads=dtype == "float32")


@pytest.mark.parametrize("op", ["All", "Any"])
def test_bool_reductions(op):
    x = _rng(5).integers(0, 2, size=(2, 3, 4)).astype(bool)

    def build(tf):
        f = getattr(tf.raw_ops, op)
        p = _ph(tf, tf.bool, [2, 3, 4], "x")
        return [f(input=p, axis=axis, keep_dims=keep) for axis, keep in AXES]

    compare_with_tf(build, {"x:0": x})


def test_reductions_over_empty_axes():
    x = np.zeros((0, 3), F32)
    xi = np.zeros((0, 3), I32)

    def build(tf):
        r = tf.raw_ops
        p, q = _ph(tf, tf.float32, [0, 3], "x"), _ph(tf, tf.int32, [0, 3], "xi")
        return [r.Sum(input=p, axis=0), r.Prod(input=p, axis=0), r.Max(input=p, axis=0), r.Min(input=p, axis=0),
                r.Mean(input=p, axis=0), r.Max(input=q, axis=0), r.Min(input=q, axis=0), r.Mean(input=q, axis=0),
                r.Sum(input=p, axis=[0, 1], keep_dims=True), r.All(input=tf.cast(p, tf.bool), axis=0)]

    compare_with_tf(build, {"x:0": x, "xi:0": xi})


def test_reduction_ties_gradient():
    # TF splits the gradient of Max/Min evenly among tied maxima.
    x = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]], F32)

    def build(tf):
        p = _ph(tf, tf.float32, [2, 3], "x")
        return [tf.raw_ops.Max(input=p, axis=1), tf.raw_ops.Min(input=p, axis=[0, 1])]

    compare_with_tf(build, {"x:0": x}, grads=True)


@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("output_type", ["int32", "int64"])
def test_arg_extremes(op, output_type):
    x = _sample("any", (3, 4))

    def build(tf):
        f = getattr(tf.raw_ops, op)
        p = _ph(tf, tf.float32, [3, 4], "x")
        return [f(input=p, dimension=d, output_type=output_type) for d in (0, 1, -1)] + [
            f(input=tf.constant(np.int32([3, 9, 9, 1])), dimension=0, output_type=output_type)
        ]

    compare_with_tf(build, {"x:0": x})


def test_arg_extremes_skip_nan():
    """TF's comparisons with NaN are false, so it never picks a NaN (an all-NaN row gives 0);
    jnp.argmax would pick the first NaN."""
    nan, inf = np.nan, np.inf
    x = np.array([[nan, 1, 2], [1, nan, 0], [-inf, -inf, nan], [nan, nan, nan], [2, 2, 1], [-inf, nan, -inf],
                  [nan, -inf, 3], [1, 3, 3]], F32)

    def build(tf):
        p = _ph(tf, tf.float32, [8, 3], "x")
        return [tf.raw_ops.ArgMax(input=p, dimension=1), tf.raw_ops.ArgMin(input=p, dimension=1),
                tf.raw_ops.ArgMax(input=tf.constant(x.astype(np.float16)), dimension=1)]

    compare_with_tf(build, {"x:0": x})


def test_integer_mean_and_norm_overflow():
    """TF sums 8- to 32-bit integers in 64 bits for Mean (uint8 [250, 250, 250] -> 250, not a
    wrapped sum), while EuclideanNorm squares and sums in the type itself (int8 [100, 100] -> 5)."""
    u8 = np.array([[250, 250, 250, 3], [1, 2, 3, 4]], np.uint8)
    i8 = np.array([[120, 120, 120, -7], [100, 100, 3, 4]], np.int8)
    i16 = np.array([[30000, 30000, 30000, 1], [-30000, -30000, 5, 0]], np.int16)

    def build(tf):
        r = tf.raw_ops
        outs = []
        for name, v in [("u8", u8), ("i8", i8), ("i16", i16)]:
            p = _ph(tf, v.dtype, list(v.shape), name)
            outs += [r.Mean(input=p, axis=1), r.Mean(input=p, axis=[0, 1]), r.Mean(input=tf.constant(v), axis=1)]
        p = _ph(tf, tf.int8, [2, 4], "n8")
        return outs + [r.EuclideanNorm(input=p, axis=1), r.EuclideanNorm(input=tf.constant(i8), axis=1)]

    compare_with_tf(build, {"u8:0": u8, "i8:0": i8, "i16:0": i16, "n8:0": i8})


def test_fed_axis_works_without_jit_only():
    """An axis is a static shape under XLA: fed, it is known in a call without jit, not under it."""
    x = np.arange(6, dtype=F32).reshape(2, 3)

    def build(tf):
        return tf.raw_ops.Sum(input=_ph(tf, tf.float32, [2, 3], "x"), axis=_ph(tf, tf.int32, [], "axis"))

    run = run_tf(build, {"x:0": x, "axis:0": np.int32(1)})
    f = run.graph.function(run.fetch_names, feeds=["x:0", "axis:0"])
    np.testing.assert_array_equal(f({}, x, np.int32(1))[0], run.expected[0])
    with pytest.raises(jaxmeta.GraphError, match=r"'reduction_indices'.*only known at run time under jax.jit"):
        jax.jit(f)({}, x, np.int32(1))


def test_static_inputs_stay_numpy():
    # Shape arithmetic on constants must stay NumPy, so that it is still known under jit.
    def build(tf):
        a = tf.constant(np.int32([2, 3, 4]), name="a")
        r = tf.raw_ops
        return [r.Prod(input=a, axis=0, name="p"), r.FloorDiv(x=a, y=tf.constant(2), name="fd"),
                r.Cast(x=a, DstT=tf.float32, name="c"), r.Maximum(x=a, y=tf.constant(3), name="m"),
                r.Equal(x=a, y=tf.constant(3), name="eq"), r.Cumprod(x=a, axis=0, name="cp")]

    g = run_tf(build).graph
    for name in ("p", "fd", "c", "m", "eq", "cp"):
        node = g.get_operation_by_name(name)
        inputs = [g.get_operation_by_name(i.node).get_attr("value") for i in node.inputs]
        out = registry.lookup(node.type).build(node)(*inputs)
        assert isinstance(out, (np.ndarray, np.generic)), (name, type(out))


# -- counting -------------------------------------------------------------------------------------


def test_bincount():
    arr = np.array([0, 1, 1, 5, 2, 2, 2], I32)
    w = _sample("pos", (7,))

    def build(tf):
        r = tf.raw_ops
        a = _ph(tf, tf.int32, [7], "arr")
        return [r.Bincount(arr=a, size=4, weights=tf.constant([], tf.float32)),
                r.Bincount(arr=a, size=3, weights=_ph(tf, tf.float32, [7], "w")),
                r.Bincount(arr=a, size=6, weights=tf.constant([], tf.int32))]

    compare_with_tf(build, {"arr:0": arr, "w:0": w})


@pytest.mark.parametrize("binary_output", [False, True])
def test_dense_bincount(binary_output):
    v = np.array([[0, 1, 1, 3], [2, 2, 5, 0]], I32)
    w = _sample("pos", (2, 4))

    def build(tf):
        r = tf.raw_ops
        p = _ph(tf, tf.int32, [2, 4], "v")
        p1 = tf.constant(v[0])
        outs = [r.DenseBincount(input=p, size=4, weights=tf.constant([], tf.float32), binary_output=binary_output),
                r.DenseBincount(input=p1, size=5, weights=tf.constant([], tf.int32), binary_output=binary_output)]
        if not binary_output:
            outs.append(r.DenseBincount(input=p, size=4, weights=_ph(tf, tf.float32, [2, 4], "w")))
        return outs

    compare_with_tf(build, {"v:0": v, "w:0": w} if not binary_output else {"v:0": v})


def test_bucketize_cross_and_popcount():
    x = np.array([[-1.0, 0.5, 2.0], [3.0, 10.0, 1.0]], F32)

    def build(tf):
        p = _ph(tf, tf.float32, [2, 3], "x")
        return [tf.raw_ops.Bucketize(input=p, boundaries=[0.0, 1.0, 2.5]),
                tf.raw_ops.Cross(a=p, b=tf.constant([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]]))]

    compare_with_tf(build, {"x:0": x}, grads=True)


# -- matrix products ------------------------------------------------------------------------------


def test_matmul_transposes():
    feeds = {"a:0": _sample("any", (3, 4), seed=1), "b:0": _sample("any", (4, 5), seed=2),
             "at:0": _sample("any", (4, 3), seed=3), "bt:0": _sample("any", (5, 4), seed=4)}

    def build(tf):
        x, y = _ph(tf, tf.float32, [3, 4], "a"), _ph(tf, tf.float32, [4, 5], "b")
        xt, yt = _ph(tf, tf.float32, [4, 3], "at"), _ph(tf, tf.float32, [5, 4], "bt")
        mm = tf.raw_ops.MatMul
        return [mm(a=x, b=y), mm(a=xt, b=y, transpose_a=True), mm(a=x, b=yt, transpose_b=True),
                mm(a=xt, b=yt, transpose_a=True, transpose_b=True),
                mm(a=tf.constant(np.int32([[1, 2], [3, 4]])), b=tf.constant(np.int32([[5], [6]]))),
                tf.raw_ops.SparseMatMul(a=xt, b=y, transpose_a=True, a_is_sparse=True)]

    compare_with_tf(build, feeds, rtol=1e-5, atol=1e-5, grads=True)


@pytest.mark.parametrize("version", ["BatchMatMul", "BatchMatMulV2", "BatchMatMulV3"])
def test_batch_matmul(version):
    feeds = {}
    for adj_x, adj_y in [(False, False), (True, False), (False, True), (True, True)]:
        xs = (2, 3, 4, 5) if adj_x else (2, 3, 5, 4)
        ys = (3, 6, 4) if adj_y else (1, 3, 4, 6)  # V2/V3 broadcast batch dimensions
        if version == "BatchMatMul":
            ys = (2, 3) + ys[-2:]
        feeds[f"x{adj_x:d}{adj_y:d}:0"] = _sample("any", xs, seed=len(feeds))
        feeds[f"y{adj_x:d}{adj_y:d}:0"] = _sample("any", ys, seed=len(feeds))

    def build(tf):
        f = getattr(tf.raw_ops, version)
        kw = {"Tout": tf.float32} if version == "BatchMatMulV3" else {}
        outs = []
        for adj_x, adj_y in [(False, False), (True, False), (False, True), (True, True)]:
            x = _ph(tf, tf.float32, feeds[f"x{adj_x:d}{adj_y:d}:0"].shape, f"x{adj_x:d}{adj_y:d}")
            y = _ph(tf, tf.float32, feeds[f"y{adj_x:d}{adj_y:d}:0"].shape, f"y{adj_x:d}{adj_y:d}")
            outs.append(f(x=x, y=y, adj_x=adj_x, adj_y=adj_y, **kw))
        return outs

    compare_with_tf(build, feeds, rtol=1e-5, atol=1e-5, grads=True)


def test_batch_matmul_complex_adjoint_and_int_v3():
    def build(tf):
        c = tf.complex(_ph(tf, tf.float32, [2, 3, 3], "re"), _ph(tf, tf.float32, [2, 3, 3], "im"))
        prod = tf.raw_ops.BatchMatMulV2(x=c, y=c, adj_x=True)
        i8 = tf.constant(np.int8([[[1, 2], [3, 4]]]))
        return [tf.math.real(prod), tf.math.imag(prod),
                tf.raw_ops.BatchMatMulV3(x=i8, y=i8, Tout=tf.int32, adj_y=True)]

    feeds = {"re:0": _sample("any", (2, 3, 3)), "im:0": _sample("any", (2, 3, 3), seed=1)}
    compare_with_tf(build, feeds, rtol=1e-5, atol=1e-5, grads=True)


EINSUMS = [
    ("ij,jk->ik", [(3, 4), (4, 5)]),
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]),
    ("...ij,...jk->...ik", [(2, 3, 4), (4, 5)]),
    ("ij->", [(3, 4)]),
    ("i,j->ij", [(3,), (4,)]),
    ("ijk->kji", [(2, 3, 4)]),
    ("bi,bi->b", [(3, 4), (3, 4)]),
]


def test_einsum():
    feeds = {f"x{k}_{i}:0": _sample("any", s, seed=i) for k, (_, shapes) in enumerate(EINSUMS)
             for i, s in enumerate(shapes)}

    def build(tf):
        outs = []
        for k, (equation, shapes) in enumerate(EINSUMS):
            ps = [_ph(tf, tf.float32, s, f"x{k}_{i}") for i, s in enumerate(shapes)]
            outs.append(tf.raw_ops.Einsum(inputs=ps, equation=equation))
        return outs

    compare_with_tf(build, feeds, rtol=1e-5, atol=1e-5, grads=True)


# -- FFT ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_complex_fft(rank):
    suffix = "" if rank == 1 else f"{rank}D"
    shape = (2, 4, 3, 5)
    feeds = {"re:0": _sample("any", shape, seed=1), "im:0": _sample("any", shape, seed=2)}

    def build(tf):
        c = tf.complex(_ph(tf, tf.float32, shape, "re"), _ph(tf, tf.float32, shape, "im"))
        outs = []
        for name in ("FFT", "IFFT"):
            y = getattr(tf.raw_ops, name + suffix)(input=c)
            outs += [y, tf.math.real(y), tf.math.imag(y)]
        return outs

    compare_with_tf(build, feeds, rtol=1e-4, atol=1e-4, grads=True)


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("lengths", ["same", "crop"])
def test_real_fft(rank, lengths):
    suffix = "" if rank == 1 else f"{rank}D"
    shape = (2, 4, 6, 6)
    n = {"same": [4, 6, 6], "crop": [3, 4, 5]}[lengths][-rank:]
    feeds = {"x:0": _sample("any", shape, seed=1)}

    def build(tf):
        r = tf.raw_ops
        x = _ph(tf, tf.float32, shape, "x")
        y = getattr(r, "RFFT" + suffix)(input=x, fft_length=n)
        back = getattr(r, "IRFFT" + suffix)(input=y, fft_length=n)
        return [y, tf.math.real(y), back]

    # TF's RFFT gradient breaks when fft_length crops the input, and IRFFT3D has none.
    compare_with_tf(build, feeds, rtol=1e-4, atol=1e-4, grads=lengths == "same" and rank < 3)


@pytest.mark.parametrize("n", [6, 7])
def test_irfft_lengths(n):
    shape = (3, 4)
    feeds = {"re:0": _sample("any", shape, seed=1), "im:0": _sample("any", shape, seed=2)}

    def build(tf):
        c = tf.complex(_ph(tf, tf.float32, shape, "re"), _ph(tf, tf.float32, shape, "im"))
        return tf.raw_ops.IRFFT(input=c, fft_length=[n])

    compare_with_tf(build, feeds, rtol=1e-4, atol=1e-4)


# TF has kernels for FFTND/IFFTND/RFFTND/IRFFTND on GPUs only (cuFFT). On the CPU TF runs the same
# transforms as its 1/2/3-D ops (zero-padded or cropped first) and transposes, whose results (and
# gradients, where TF has them) jaxmeta's ND ops must match.

_ND_OPS = {"fft": "FFT", "ifft": "IFFT", "rfft": "RFFT", "irfft": "IRFFT"}


def _other(tf, dtype):
    """The other dtype of a real FFT: complex for a real `dtype`, real for a complex one."""
    pairs = [(tf.float32, tf.complex64), (tf.float64, tf.complex128)]
    return {**dict(pairs), **{c: r for r, c in pairs}}[dtype]


def _fit(tf, x, s):
    """`x` cropped or zero-padded to `s` along its innermost len(s) axes."""
    x = x[(Ellipsis,) + tuple(slice(0, n) for n in s)]
    pads = [[0, 0]] * (x.shape.ndims - len(s)) + [[0, max(n - d, 0)] for n, d in zip(s, x.shape[-len(s) :])]
    return tf.pad(x, pads)


def _along_axis_4(tf, op, x):
    """The 1-D complex transform `op` along axis -4 of `x`."""
    perm = list(range(x.shape.ndims))
    perm[-4], perm[-1] = perm[-1], perm[-4]
    return tf.transpose(getattr(tf.raw_ops, op)(input=tf.transpose(x, perm)), perm)


def _fftnd_equivalent(tf, kind, x, s):
    """TF's FFTND (kind "fft", ...) over the innermost len(s) <= 4 axes of `x` by CPU kernels."""
    k, inner = len(s), min(len(s), 3)
    name = _ND_OPS[kind] + ("" if inner == 1 else f"{inner}D")
    outer = "FFT" if kind in ("fft", "rfft") else "IFFT"
    if kind in ("fft", "ifft"):
        x, attrs = _fit(tf, x, s), {}
    else:  # RFFT crops the inner axes itself, and may not pad
        x = x[(Ellipsis,) + tuple(slice(0, n) for n in s[:-inner]) + (slice(None),) * inner]
        attrs = {"fft_length": s[-inner:], ("Treal" if kind == "irfft" else "Tcomplex"): _other(tf, x.dtype)}
    if kind == "irfft" and k == 4:
        x = _along_axis_4(tf, outer, x)
    y = getattr(tf.raw_ops, name)(input=x, **attrs)
    return _along_axis_4(tf, outer, y) if kind != "irfft" and k == 4 else y


def _compare_fftnd(build, feeds, *, rtol, atol, grads=False):
    """`build(tf, nd)` makes FFTND outputs (nd=True) or the same by CPU kernels (in a graph of their
    own: TF places every node of a graph, fetched or not): TF runs the second graph, jaxmeta the
    first, with and without jit; with `grads`, jax.grad of jaxmeta's against tf.gradients of TF's."""

    def build_parts(tf, nd):
        outs = build(tf, nd)
        return outs + [part(o) for o in outs if o.dtype.is_complex for part in (tf.math.real, tf.math.imag)]

    run = run_tf(lambda tf: build_parts(tf, False), feeds, grads=grads)
    meta, nd = export_meta(lambda tf: build_parts(tf, True))
    f = jaxmeta.import_meta_graph(meta).function([t.name for t in nd], feeds=list(feeds))
    weights = run.grad_weights or []
    grad = jax.grad(
        lambda *values: sum((o * w).sum() for o, w in zip(f({}, *values), weights) if w is not None),
        argnums=tuple(range(len(feeds))),
    )
    for jit in (False, True):
        got = (jax.jit(f) if jit else f)({}, *feeds.values())
        for t, g_val, w_val in zip(nd, got, run.expected):
            assert_close(g_val, w_val, rtol=rtol, atol=atol, what=f"{t.name} (jit={jit})")
        if grads:
            got = (jax.jit(grad) if jit else grad)(*feeds.values())
            for k, g_val in zip(feeds, got):
                want = run.feed_grads[k]
                assert_close(g_val, want, rtol=rtol * 10, atol=atol * 10, what=f"d/d{k} (jit={jit})")


@pytest.mark.parametrize(
    "shape,axes,fft_length",
    [
        ((2, 4, 6), [1, 2], [4, 6]),
        ((2, 4, 6), [-2, -1], [3, 8]),  # crops one axis, zero-pads the other
        ((2, 4, 6), [-2, 2], [5, 6]),  # negative and non-negative axes mixed
        ((2, 4, 6), [-1], [5]),
        ((3, 2, 4, 5), [1, 2, 3], [2, 3, 7]),
        ((2, 3, 4, 5), [0, 1, 2, 3], [3, 2, 4, 6]),  # rank 4: TF's GPU kernel stops at 3
    ],
)
@pytest.mark.parametrize("dtype", [F32, np.float64])
def test_complex_fftnd(shape, axes, fft_length, dtype):
    feeds = {"re:0": _sample("any", shape, dtype, seed=1), "im:0": _sample("any", shape, dtype, seed=2)}

    def build(tf, nd):
        c = tf.complex(_ph(tf, tf.as_dtype(dtype), shape, "re"), _ph(tf, tf.as_dtype(dtype), shape, "im"))
        if nd:
            args = {"input": c, "fft_length": fft_length, "axes": axes}
            return [tf.raw_ops.FFTND(**args), tf.raw_ops.IFFTND(**args)]
        return [_fftnd_equivalent(tf, kind, c, fft_length) for kind in ("fft", "ifft")]

    _compare_fftnd(build, feeds, rtol=1e-4, atol=1e-4, grads=True)


@pytest.mark.parametrize(
    "shape,axes,fft_length",
    [
        ((2, 4, 6), [1, 2], [4, 6]),
        ((2, 4, 6), [-2, -1], [3, 5]),  # crops (RFFTND never pads)
        ((2, 4, 7), [2], [7]),
        ((2, 4, 6), [0, 1, 2], [2, 4, 5]),
        ((2, 3, 4, 6), [-4, -3, -2, -1], [2, 2, 4, 6]),
    ],
)
@pytest.mark.parametrize("dtype", [F32, np.float64])
def test_real_fftnd(shape, axes, fft_length, dtype):
    feeds = {"x:0": _sample("any", shape, dtype, seed=1)}

    def build(tf, nd):
        x = _ph(tf, tf.as_dtype(dtype), shape, "x")
        if nd:
            complex_dtype = tf.complex64 if dtype == F32 else tf.complex128
            y = tf.raw_ops.RFFTND(input=x, fft_length=fft_length, axes=axes, Tcomplex=complex_dtype)
            back = tf.raw_ops.IRFFTND(input=y, fft_length=fft_length, axes=axes, Treal=tf.as_dtype(dtype))
            return [y, back]
        y = _fftnd_equivalent(tf, "rfft", x, fft_length)
        return [y, _fftnd_equivalent(tf, "irfft", y, fft_length)]

    # TF's RFFT gradient breaks when fft_length crops the input, and RFFT3D/IRFFT3D have none.
    _compare_fftnd(build, feeds, rtol=1e-4, atol=1e-4, grads=list(shape[-2:]) == fft_length and len(axes) < 3)


@pytest.mark.parametrize(
    "shape,fft_length",
    [
        ((2, 4, 5), [4, 8]),
        ((2, 4, 5), [4, 9]),
        ((2, 4, 5), [3, 6]),  # crops both axes
        ((2, 3, 4, 4), [2, 3, 4, 6]),
    ],
)
def test_irfftnd_non_hermitian(shape, fft_length):
    """IRFFTND of any complex input, not only one RFFTND made."""
    feeds = {"re:0": _sample("any", shape, seed=1), "im:0": _sample("any", shape, seed=2)}
    axes = list(range(-len(fft_length), 0))

    def build(tf, nd):
        c = tf.complex(_ph(tf, tf.float32, shape, "re"), _ph(tf, tf.float32, shape, "im"))
        if nd:
            return [tf.raw_ops.IRFFTND(input=c, fft_length=fft_length, axes=axes)]
        return [_fftnd_equivalent(tf, "irfft", c, fft_length)]

    _compare_fftnd(build, feeds, rtol=1e-4, atol=1e-4)


def test_fftnd_has_no_tf_gradient():
    tf = get_tf()
    with tf.Graph().as_default():
        x = _ph(tf, tf.float32, [2, 4], "x")
        y = tf.raw_ops.RFFTND(input=x, fft_length=[2, 4], axes=[0, 1])
        with pytest.raises(LookupError, match="RFFTND"):
            tf.compat.v1.gradients(tf.math.real(y), x)


@pytest.mark.parametrize(
    "op,shape,axes,fft_length,match",
    [
        ("FFTND", (2, 4, 6), [2, 1], [6, 4], "axes must be successive, ascending and end with the last axis"),
        ("FFTND", (2, 4, 6), [0, 1], [2, 4], "axes must be successive, ascending and end with the last axis"),
        ("IFFTND", (2, 4, 6), [], [], "non-empty vectors of the same length"),
        ("FFTND", (2, 4, 6), [1, 2], [4], "non-empty vectors of the same length"),
        ("FFTND", (4, 6), [-3, -2, -1], [1, 4, 6], r"rank at least len\(axes\) = 3"),
        ("FFTND", (2, 4, 6), [-1], [-2], "must not be negative"),
        ("RFFTND", (2, 4, 6), [1, 2], [4, 7], r"at least \[4, 7\]"),
        ("IRFFTND", (2, 4, 6), [1, 2], [4, 12], r"at least \[4, 7\]"),
    ],
)
def test_fftnd_refuses_what_tf_refuses(op, shape, axes, fft_length, match):
    dtype = np.float32 if op == "RFFTND" else np.complex64
    x = (_sample("any", shape) + 0).astype(dtype)
    tf = get_tf()
    g = tf.Graph()
    with g.as_default():
        x_ph = tf.compat.v1.placeholder(dtype, shape, name="x")
        out = getattr(tf.raw_ops, op)(input=x_ph, fft_length=fft_length, axes=axes)
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
    f = jaxmeta.import_meta_graph(meta).function([out.name], ["x:0"])
    for fn in (f, jax.jit(f)):
        with pytest.raises(jaxmeta.GraphError, match=rf"\({op}\): .*{match}"):
            fn({}, x)


def test_fftnd_empty_and_fed_lengths():
    """A zero fft_length makes an empty output; fed lengths and axes work without jit only."""
    x = _sample("any", (2, 4, 6))
    tf = get_tf()
    g = tf.Graph()
    with g.as_default():
        ph = tf.compat.v1.placeholder(tf.float32, [2, 4, 6], name="x")
        n = tf.compat.v1.placeholder(tf.int32, [2], name="n")
        outs = [
            tf.raw_ops.RFFTND(input=ph, fft_length=[0, 6], axes=[1, 2]),
            tf.raw_ops.FFTND(input=tf.complex(ph, ph), fft_length=[4, 0], axes=[1, 2]),
            tf.raw_ops.RFFTND(input=ph, fft_length=n, axes=tf.constant([1, 2]) - 3),
        ]
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
    f = jaxmeta.import_meta_graph(meta).function([o.name for o in outs], ["x:0", "n:0"])
    empty_r, empty_c, fed = f({}, x, np.int32([3, 5]))
    assert (empty_r.shape, empty_r.dtype) == ((2, 0, 4), np.complex64)
    assert (empty_c.shape, empty_c.dtype) == ((2, 4, 0), np.complex64)
    np.testing.assert_allclose(fed, np.fft.rfftn(x[:, :3, :5], axes=(1, 2)), rtol=1e-4, atol=1e-4)
    with pytest.raises(jaxmeta.GraphError, match="'fft_length'.*only known at run time under jax.jit"):
        jax.jit(f)({}, x, np.int32([3, 5]))


# -- linear algebra -------------------------------------------------------------------------------


def _well_conditioned(shape, seed=0):
    n = shape[-1]
    return (_sample("any", shape, seed=seed) * 0.3 + np.eye(n, dtype=F32) * 2).astype(F32)


def test_inverse_and_determinants():
    a = _well_conditioned((2, 3, 3))
    a[1, 0] *= -3  # a negative determinant

    def build(tf):
        r = tf.raw_ops
        x = _ph(tf, tf.float32, [2, 3, 3], "a")
        sign, logdet = r.LogMatrixDeterminant(input=x)
        return [r.MatrixInverse(input=x), r.MatrixInverse(input=x, adjoint=True), r.MatrixDeterminant(input=x),
                sign, logdet]

    compare_with_tf(build, {"a:0": a}, rtol=1e-4, atol=1e-5, grads=True)


def test_cholesky():
    x = _sample("any", (2, 3, 3))

    def build(tf):
        p = _ph(tf, tf.float32, [2, 3, 3], "x")
        spd = tf.matmul(p, p, transpose_b=True) + tf.constant(3 * np.eye(3, dtype=F32))
        junk_above = tf.constant(np.triu(np.full((3, 3), 5.0, F32), 1))  # TF reads the lower triangle only
        return [tf.raw_ops.Cholesky(input=spd), tf.raw_ops.Cholesky(input=spd + junk_above)]

    compare_with_tf(build, {"x:0": x}, rtol=1e-4, atol=1e-5, grads=True)


def test_cholesky_grad_and_lu():
    """TF1's CholeskyGrad op (its Cholesky gradient before TF 1.5 wrote it in Python; only dl's
    lower triangle counts) and tf.linalg.lu (factors and pivots as LAPACK's)."""
    x = _sample("any", (2, 4, 4))
    dl = _sample("any", (2, 4, 4), seed=1)
    singular = np.array([[1, 2, 3], [2, 4, 6], [1, 0, 1]], F32)

    def build(tf):
        p, g = _ph(tf, tf.float32, [2, 4, 4], "x"), _ph(tf, tf.float32, [2, 4, 4], "dl")
        chol = tf.linalg.cholesky(tf.matmul(p, p, transpose_b=True) + tf.constant(2 * np.eye(4, dtype=F32)))
        lu = tf.raw_ops.Lu(input=p)
        lu64 = tf.raw_ops.Lu(input=tf.cast(p, tf.complex64), output_idx_type=tf.int64)
        return [tf.raw_ops.CholeskyGrad(l=chol, grad=g), *lu, *lu64]

    compare_with_tf(build, {"x:0": x, "dl:0": dl}, rtol=1e-4, atol=1e-5)

    # A singular matrix: TF refuses it, and so does jaxmeta where the values are known.
    tf = get_tf()
    g = tf.Graph()
    with g.as_default():
        lu = tf.raw_ops.Lu(input=_ph(tf, tf.float32, [3, 3], "a"))
        with tf.compat.v1.Session(graph=g) as sess, pytest.raises(tf.errors.InvalidArgumentError):
            sess.run(lu, {"a:0": singular})
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
    f = jaxmeta.import_meta_graph(meta).function([lu.lu.name], feeds=["a:0"])
    with pytest.raises(jaxmeta.GraphError, match="not invertible"):
        f({}, singular)
    assert np.asarray(jax.jit(f)({}, singular)[0])[2, 2] == 0


def test_matrix_triangular_solve():
    a = _well_conditioned((2, 3, 3))
    feeds = {"a:0": a, "lo:0": np.tril(a), "up:0": np.triu(a), "b:0": _sample("any", (3, 2), seed=3),
             "bb:0": _sample("any", (2, 3, 2), seed=4)}

    def build(tf):
        m, rhs, rhs_b = _ph(tf, tf.float32, [2, 3, 3], "a"), _ph(tf, tf.float32, [3, 2], "b"), _ph(tf, tf.float32, [2, 3, 2], "bb")
        tris = {True: _ph(tf, tf.float32, [2, 3, 3], "lo"), False: _ph(tf, tf.float32, [2, 3, 3], "up")}
        solve = tf.raw_ops.MatrixTriangularSolve
        # The rhs's batch dimensions broadcast; only the named triangle of the matrix is read.
        return [out for lower in (True, False) for adjoint in (False, True) for out in (
            solve(matrix=tris[lower], rhs=rhs, lower=lower, adjoint=adjoint),
            solve(matrix=m, rhs=rhs_b, lower=lower, adjoint=adjoint))]

    compare_with_tf(build, feeds, rtol=1e-4, atol=1e-5, grads=True)


@pytest.mark.parametrize("adjoint", [False, True])
def test_matrix_solve(adjoint):
    a, b = _well_conditioned((2, 3, 3)), _sample("any", (2, 3, 2), seed=3)

    def build(tf):
        m, rhs = _ph(tf, tf.float32, [2, 3, 3], "a"), _ph(tf, tf.float32, [2, 3, 2], "b")
        return tf.raw_ops.MatrixSolve(matrix=m, rhs=rhs, adjoint=adjoint)

    compare_with_tf(build, {"a:0": a, "b:0": b}, rtol=1e-4, atol=1e-5, grads=True)


MATRIX_SHAPES = [(4, 3), (3, 3), (2, 3, 4)]


@pytest.mark.parametrize("shapes", [[(4, 3), (2, 3, 3)], [(2, 3, 4)]], ids=["tall", "wide"])
def test_matrix_solve_ls(shapes):
    feeds = {}
    for i, shape in enumerate(shapes):
        feeds[f"a{i}:0"], feeds[f"b{i}:0"] = _sample("any", shape, seed=i), _sample("any", shape[:-1] + (2,), seed=9 + i)

    def build(tf):
        r = tf.raw_ops
        outs = []
        for i, shape in enumerate(shapes):
            m, rhs = _ph(tf, tf.float32, shape, f"a{i}"), _ph(tf, tf.float32, shape[:-1] + (2,), f"b{i}")
            outs += [r.MatrixSolveLs(matrix=m, rhs=rhs, l2_regularizer=tf.constant(l2, tf.float64)) for l2 in (0.1, 0.0)]
        return outs

    # TF's gradient of the underdetermined (wide) case is not defined.
    compare_with_tf(build, feeds, rtol=1e-3, atol=1e-4, grads=len(shapes) == 2)


@pytest.mark.parametrize("full_matrices", [False, True])
def test_qr(full_matrices):
    # TF differentiates Qr only for reduced (or square) factors of tall matrices.
    shapes = MATRIX_SHAPES if full_matrices else [(4, 3), (2, 3, 3)]
    feeds = {f"x{i}:0": _sample("any", shape, seed=i) for i, shape in enumerate(shapes)}

    def build(tf):
        outs = []
        for i, shape in enumerate(shapes):
            q, r = tf.raw_ops.Qr(input=_ph(tf, tf.float32, shape, f"x{i}"), full_matrices=full_matrices)
            # Signs of Q's columns are a convention; Q R and |R| are not.
            outs += [tf.matmul(q, r), tf.abs(r), tf.abs(q)]
        return outs

    compare_with_tf(build, feeds, rtol=1e-4, atol=1e-5, grads=not full_matrices)


@pytest.mark.parametrize("full_matrices", [False, True])
def test_svd(full_matrices):
    shapes = MATRIX_SHAPES if full_matrices else [(4, 3), (2, 3, 4)]
    feeds = {f"x{i}:0": _sample("any", shape, seed=i) for i, shape in enumerate(shapes)}

    def build(tf):
        outs = []
        for i, shape in enumerate(shapes):
            p = _ph(tf, tf.float32, shape, f"x{i}")
            s, u, v = tf.raw_ops.Svd(input=p, full_matrices=full_matrices)
            s_only = tf.raw_ops.Svd(input=p, compute_uv=False)[0]
            # Singular vectors are defined up to sign: compare |u|, |v| and the reconstruction.
            outs += [s, tf.abs(u), tf.abs(v), s_only]
            if not full_matrices:
                us = tf.raw_ops.Einsum(inputs=[u, s], equation="...ik,...k->...ik")
                outs.append(tf.raw_ops.Einsum(inputs=[us, v], equation="...ik,...jk->...ij"))
        return outs

    compare_with_tf(build, feeds, rtol=1e-4, atol=1e-4, grads=not full_matrices)


def test_self_adjoint_eig():
    x = _sample("any", (2, 4, 4))

    def build(tf):
        p = _ph(tf, tf.float32, [2, 4, 4], "x")
        sym = p + tf.raw_ops.Einsum(inputs=[p], equation="bij->bji")
        e, v = tf.raw_ops.SelfAdjointEigV2(input=sym)
        e_only = tf.raw_ops.SelfAdjointEigV2(input=sym, compute_v=False)[0]
        ve = tf.raw_ops.Einsum(inputs=[v, e], equation="bik,bk->bik")
        recon = tf.raw_ops.Einsum(inputs=[ve, v], equation="bik,bjk->bij")
        return [e, tf.abs(v), recon, e_only]

    compare_with_tf(build, {"x:0": x}, rtol=1e-4, atol=1e-4, grads=True)


@pytest.mark.parametrize("op", ["FloorDiv", "FloorMod", "TruncateDiv", "TruncateMod", "Div", "Mod"])
def test_integer_division_by_zero_is_refused(op):
    """TF refuses an integer division by zero; jaxmeta too where the divisor is known (under jit
    XLA's result stands)."""
    tf = get_tf()
    x, y = np.int32([7, -7, 5]), np.int32([2, 2, 0])
    g = tf.Graph()
    with g.as_default():
        ph = [tf.compat.v1.placeholder(tf.int32, [3], name=n) for n in "xy"]
        out = getattr(tf.raw_ops, op)(x=ph[0], y=ph[1])
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
    with tf.compat.v1.Session(graph=g) as sess, pytest.raises(tf.errors.OpError):  # TruncateDiv: InternalError
        sess.run(out, {"x:0": x, "y:0": y})
    f = jaxmeta.import_meta_graph(meta).function([out.name], ["x:0", "y:0"])
    with pytest.raises(jaxmeta.GraphError, match=rf"\({op}\): integer division by zero"):
        f({}, x, y)
    assert jax.jit(f)({}, x, y)[0].shape == (3,)
    compare_with_tf(lambda tf: getattr(tf.raw_ops, op)(x=tf.constant(x), y=tf.constant([2, 2, 3])))


def test_integer_to_a_negative_power_is_refused():
    tf = get_tf()
    g = tf.Graph()
    with g.as_default():
        y = tf.compat.v1.placeholder(tf.int32, [2], name="y")
        out = tf.pow(tf.constant([2, 3]), y)
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
    with tf.compat.v1.Session(graph=g) as sess:
        assert sess.run(out, {"y:0": [3, 0]}).tolist() == [8, 1]
        with pytest.raises(tf.errors.InvalidArgumentError):
            sess.run(out, {"y:0": [1, -1]})
    f = jaxmeta.import_meta_graph(meta).function([out.name], ["y:0"])
    assert np.asarray(f({}, np.int32([3, 0]))[0]).tolist() == [8, 1]
    with pytest.raises(jaxmeta.GraphError, match=r"\(Pow\): an integer to a negative power"):
        f({}, np.int32([1, -1]))


# -- matrix functions, general eigendecomposition, banded and tridiagonal systems -----------------


def _legacy_linalg(tf, op_type, x, producer):
    """`op_type` on `x`, for ops TF removed at GraphDef version `producer + 1` (it runs them only in
    graphs that old): a stand-in node imported as a GraphDef of version `producer`."""
    stand_in = tf.Graph()
    with stand_in.as_default():
        tf.identity(tf.compat.v1.placeholder(x.dtype, x.shape, name="in"), name="op")
    graph_def = stand_in.as_graph_def()
    node = next(n for n in graph_def.node if n.name == "op")
    node.op = op_type
    node.attr.clear()
    node.attr["T"].type = x.dtype.as_datatype_enum
    graph_def.versions.producer = producer
    (out,) = tf.compat.v1.import_graph_def(graph_def, {"in:0": x}, return_elements=["op:0"], name=op_type)
    return out


def _positive_spectrum(shape, dtype=F32, seed=0):
    """Well-conditioned matrices, not symmetric, whose eigenvalues have positive real parts."""
    n = shape[-1]
    x = np.eye(n) * 2 + _sample("any", shape, np.float64, seed) * 0.25
    if np.dtype(dtype).kind == "c":
        x = x + 0.25j * _sample("any", shape, np.float64, seed + 1)
    return x.astype(dtype)


def test_matrix_square_root():
    # One shape per dtype class keeps the compilations few: symmetric positive definite, general,
    # and complex eigenvalues (1 +- 2i: still a real root).
    a = _sample("any", (3, 3))
    real = np.stack([a @ a.T + np.eye(3), _positive_spectrum((3, 3), np.float64, seed=1),
                     [[1.0, -2.0, 0.5], [2.0, 1.0, 0.0], [0.0, 0.3, 3.0]]])
    feeds = {"f32:0": real.astype(F32), "c64:0": _positive_spectrum((3, 3, 3), np.complex64, seed=3)}

    def build(tf):
        return [tf.raw_ops.MatrixSquareRoot(input=ph(tf, k[:-2], v)) for k, v in feeds.items()]

    compare_with_tf(build, feeds, rtol=1e-4, atol=1e-5, grads=True, grad_rtol=1e-3, grad_atol=1e-4)


def test_matrix_square_root_edge_cases():
    """float64 and complex128; a real matrix with a negative eigenvalue has no real square root
    (NaN, as TF's); a complex one's eigenvalue on the negative axis gets i sqrt(|lambda|); empty
    matrices stay empty. (The shapes of the test above: the compilations are reused.)"""
    q = np.linalg.qr(_sample("any", (3, 3), np.float64))[0]
    negative = np.stack([q @ np.diag([4.0, -1.0, 2.0]) @ q.T, np.diag([-1.0, -2.0, 3.0]),
                         _positive_spectrum((3, 3), np.float64)])

    def build(tf):
        r = tf.raw_ops
        return [r.MatrixSquareRoot(input=tf.constant(negative.astype(F32))),
                r.MatrixSquareRoot(input=tf.constant(negative.astype(np.complex64))),
                r.MatrixSquareRoot(input=tf.constant(_positive_spectrum((3, 3, 3), np.float64, seed=2))),
                r.MatrixSquareRoot(input=tf.constant(_positive_spectrum((3, 3, 3), np.complex128, seed=4))),
                r.MatrixSquareRoot(input=tf.zeros([2, 0, 0]))]

    compare_with_tf(build, rtol=1e-4, atol=1e-5)


def test_matrix_logarithm():
    """Complex only, as in TF; TF defines no gradient. Matrices near I, far from it (several square
    roots), and one with an eigenvalue on the negative real axis (imaginary part pi)."""
    q = np.linalg.qr(_sample("any", (3, 3), np.float64))[0]
    c64 = np.stack([_positive_spectrum((3, 3), np.complex128), _positive_spectrum((3, 3), np.complex128, seed=1) * 30,
                    q @ np.diag([-2.0, 0.5, 3.0]) @ q.T])
    feeds = {"c64:0": c64.astype(np.complex64), "c128:0": _positive_spectrum((3, 3, 3), np.complex128, seed=2)}

    def build(tf):
        return [tf.raw_ops.MatrixLogarithm(input=ph(tf, k[:-2], v)) for k, v in feeds.items()]

    compare_with_tf(build, feeds, rtol=1e-4, atol=1e-5)


def test_matrix_functions_without_schur():
    """Off the CPU (jax's Schur decomposition is CPU-only) sqrtm and logm take Denman-Beavers square
    roots: those code paths, called directly here, against TF's values. They give NaN for an
    eigenvalue on the negative real axis (TF: a root, a logarithm)."""
    from jaxmeta.ops import math as ops_math

    a = _sample("any", (3, 3))
    real = np.stack([a @ a.T + np.eye(3), _positive_spectrum((3, 3), np.float64, seed=1),
                     [[1.0, -2.0, 0.5], [2.0, 1.0, 0.0], [0.0, 0.3, 3.0]]]).astype(F32)
    cplx = np.stack([_positive_spectrum((3, 3), np.complex128, seed=2),
                     _positive_spectrum((3, 3), np.complex128, seed=3) * 30]).astype(np.complex64)

    def build(tf):
        r = tf.raw_ops
        return [r.MatrixSquareRoot(input=tf.constant(real)), r.MatrixSquareRoot(input=tf.constant(cplx)),
                r.MatrixLogarithm(input=tf.constant(cplx))]

    want = run_tf(build).expected
    sqrtm, logm = jax.jit(ops_math._sqrtm_newton), jax.jit(lambda x: ops_math._logm_iss(x, ops_math._sqrtm_newton))
    for got, expected in zip([sqrtm(real), sqrtm(cplx), logm(cplx)], want):
        assert_close(got, expected, rtol=1e-4, atol=1e-5)
    negative = np.diag([-1.0, 2.0]).astype(np.complex64)
    assert np.isnan(np.asarray(sqrtm(negative))).all() and np.isnan(np.asarray(logm(negative))).all()


def test_matrix_exponential():
    """TF1's MatrixExponential op (removed at GraphDef version 27; TF defines no gradient for it)."""
    feeds = {
        "a:0": _sample("any", (2, 3, 3)),  # 1-norms up to ~10: several squarings
        "b:0": _sample("unit", (2, 3, 3), np.float64, seed=1),  # (float32 in jax: a's compilation)
        "c:0": (_sample("any", (3, 3), seed=2) + 1j * _sample("any", (3, 3), seed=3)).astype(np.complex64),
    }

    def build(tf):
        return [_legacy_linalg(tf, "MatrixExponential", ph(tf, k[:-2], v), producer=26) for k, v in feeds.items()]

    compare_with_tf(build, feeds, rtol=1e-4, atol=1e-5)


def test_self_adjoint_eig_v1_and_lower_triangle():
    """TF1's SelfAdjointEig (and its Batch* twins, removed at GraphDef version 11): one [..., N+1, N]
    tensor, eigenvalues above the eigenvectors. Every variant reads the input's lower triangle only
    (the upper one here is junk)."""
    x = _sample("any", (2, 4, 4))

    def build(tf):
        p = _ph(tf, tf.float32, [2, 4, 4], "x")
        outs = []
        for op in ("SelfAdjointEig", "BatchSelfAdjointEig"):
            y = _legacy_linalg(tf, op, p, producer=10)
            outs += [y[:, :1, :], tf.abs(y[:, 1:, :])]  # eigenvectors' signs are a convention
        e, v = _legacy_linalg(tf, "BatchSelfAdjointEigV2", p, producer=10).op.outputs
        e2, v2 = tf.raw_ops.SelfAdjointEigV2(input=p)
        outs += [e, tf.abs(v), e2, tf.abs(v2)]
        return outs

    compare_with_tf(build, {"x:0": x}, rtol=1e-4, atol=1e-4)

    def build_v2(tf):  # the gradient (of the lower triangle only, as TF's)
        e, v = tf.raw_ops.SelfAdjointEigV2(input=_ph(tf, tf.float32, [2, 4, 4], "x"))
        return [e, tf.abs(v)]

    compare_with_tf(build_v2, {"x:0": x}, rtol=1e-4, atol=1e-4, grads=True, grad_rtol=1e-3, grad_atol=1e-3)


def test_eig():
    """Eigenvalue order and eigenvector phases are each solver's own: eigenpairs compare matched by
    eigenvalue (|v| and A v = lambda v), and gradients through functions blind to order and phase."""
    feeds = {"x:0": _sample("any", (2, 4, 4)), "c:0": _positive_spectrum((3, 3), np.complex64, seed=5)}
    run = run_tf(lambda tf: [out for k, v in feeds.items()
                             for out in tf.raw_ops.Eig(input=ph(tf, k[:-2], v), Tout=tf.complex64)]
                 + [tf.raw_ops.Eig(input=tf.compat.v1.get_default_graph().get_tensor_by_name("x:0"),
                                   Tout=tf.complex64, compute_v=False).e], feeds)
    f = run.graph.function(run.fetch_names, feeds=list(feeds))
    for fn in (f, jax.jit(f)):
        got = [np.asarray(g) for g in fn({}, *feeds.values())]
        for (x, i) in ((feeds["x:0"], 0), (feeds["c:0"], 2)):
            (w, v), (tw, tv) = got[i:i + 2], run.expected[i:i + 2]
            assert w.dtype == np.complex64 and v.dtype == np.complex64
            np.testing.assert_allclose(np.einsum("...ij,...jk->...ik", x, v), v * w[..., None, :], atol=1e-5)
            np.testing.assert_allclose(np.linalg.norm(v, axis=-2), 1, rtol=1e-5)
            for b in np.ndindex(w.shape[:-1]):  # TF's eigenpairs, matched by eigenvalue
                match = np.abs(w[b][:, None] - tw[b][None, :]).argmin(axis=0)
                np.testing.assert_allclose(w[b][match], tw[b], rtol=1e-5, atol=1e-5)
                np.testing.assert_allclose(np.abs(v[b][:, match]), np.abs(tv[b]), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.sort_complex(got[4]), np.sort_complex(run.expected[4]), rtol=1e-5)

    def build(tf):
        p = _ph(tf, tf.float32, [2, 4, 4], "x")
        e, v = tf.raw_ops.Eig(input=p, Tout=tf.complex64)
        powers = [tf.reduce_sum(e ** k, axis=-1) for k in (1, 2, 3)]
        return [tf.math.real(s) for s in powers] + [tf.reduce_sum(tf.abs(v) ** 4, axis=-1)]

    compare_with_tf(build, {"x:0": feeds["x:0"]}, rtol=1e-4, atol=1e-4, grads=True, grad_rtol=1e-3, grad_atol=1e-3)


def _tridiagonal(shape, dtype=F32, seed=0):
    """[..., 3, M] compact diagonals, diagonally dominant, with junk in the two ignored entries."""
    d = _sample("any", shape, np.float64, seed)
    d[..., 1, :] = np.abs(d[..., 1, :]) + 3
    d[..., 0, -1] = d[..., 2, 0] = 1e4
    if np.dtype(dtype).kind == "c":
        d = d + 0.5j * _sample("any", shape, np.float64, seed + 1)
    return d.astype(dtype)


def test_tridiagonal_solve():
    """With partial pivoting (TF's default; the last system needs row swaps) and without."""
    pivots = np.array([[1.0, 2.0, 3.0, 1.0], [0.01, 1.0, 1.0, 2.0], [0.0, 3.0, 0.5, 1.0]], F32)
    feeds = {
        "d:0": _tridiagonal((2, 3, 6)), "b:0": _sample("any", (2, 6, 2), seed=1),
        "dc:0": _tridiagonal((3, 5), np.complex64, seed=4),
        "bc:0": (_sample("any", (5, 2), seed=6) + 1j * _sample("any", (5, 2), seed=7)).astype(np.complex64),
        "dp:0": pivots, "bp:0": _sample("any", (4, 3), seed=8),
    }

    def build(tf):
        r = tf.raw_ops
        p = {k[:-2]: ph(tf, k[:-2], v) for k, v in feeds.items()}
        return [r.TridiagonalSolve(diagonals=p["d" + s], rhs=p["b" + s], partial_pivoting=pivoting)
                for s, pivoting in (("", True), ("", False), ("c", True), ("c", False), ("p", True))]

    compare_with_tf(build, feeds, rtol=1e-4, atol=1e-5, grads=True, grad_rtol=1e-3, grad_atol=1e-4)


def test_tridiagonal_solve_singular():
    """A zero pivot: NaN from TF's CPU kernel (it logs a warning), with or without pivoting;
    perturb_singular perturbs it into a finite result instead (and needs partial pivoting). And
    1 x 1 systems."""
    singular = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 1.0, 1.0]], F32)  # rows 0 and 1 equal
    diagonals = np.stack([np.diagonal(singular, 1).tolist() + [0], np.diagonal(singular),
                          [0] + np.diagonal(singular, -1).tolist()]).astype(F32)
    rhs = np.array([[1.0], [2.0], [3.0]], F32)

    def build(tf):
        r = tf.raw_ops
        d, b = tf.constant(diagonals), tf.constant(rhs)
        return [r.TridiagonalSolve(diagonals=d, rhs=b), r.TridiagonalSolve(diagonals=d, rhs=b, partial_pivoting=False),
                r.TridiagonalSolve(diagonals=tf.zeros([3, 1]), rhs=tf.ones([1, 2])),
                r.TridiagonalSolve(diagonals=tf.constant([[5.0], [2.0], [7.0]]), rhs=tf.ones([1, 2]),
                                   partial_pivoting=False),
                r.TridiagonalSolve(diagonals=d, rhs=b, perturb_singular=True)]

    run = compare_with_tf(build, rtol=1e-4, atol=1e-5)
    assert all(np.isnan(run.expected[i]).all() for i in (0, 1, 2)) and np.isfinite(run.expected[4]).all()

    tf = get_tf()
    g = tf.Graph()
    with g.as_default():
        out = tf.raw_ops.TridiagonalSolve(diagonals=tf.constant(diagonals), rhs=tf.constant(rhs),
                                          partial_pivoting=False, perturb_singular=True)
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
    with pytest.raises(jaxmeta.GraphError, match="perturb_singular requires partial_pivoting"):
        jaxmeta.import_meta_graph(meta).function([out.name])({})


def test_tridiagonal_mat_mul():
    feeds = {f"{k}:0": _sample("any", (2, 1, 5), seed=i) for i, k in enumerate(("sup", "main", "sub"))}
    feeds["rhs:0"] = _sample("any", (2, 5, 3), seed=3)
    complex_feeds = {f"c{k}": (v + 1j * v[..., ::-1]).astype(np.complex64) for k, v in feeds.items()}

    def build(tf):
        p = {k[:-2]: ph(tf, k[:-2], v) for k, v in {**feeds, **complex_feeds}.items()}
        return [tf.raw_ops.TridiagonalMatMul(superdiag=p[c + "sup"], maindiag=p[c + "main"], subdiag=p[c + "sub"],
                                             rhs=p[c + "rhs"]) for c in ("", "c")]

    compare_with_tf(build, {**feeds, **complex_feeds}, rtol=1e-5, atol=1e-5, grads=True)


def test_banded_triangular_solve():
    """Both band layouts (`lower`, with junk in the padding entries) and both `adjoint`s, with
    broadcast batch dimensions; complex bands (conjugated by `adjoint`); a single band."""

    def bands(shape, lower, seed, dtype=F32):
        x = _sample("any", shape, np.float64, seed)
        diag = 0 if lower else shape[-2] - 1
        x[..., diag, :] = np.abs(x[..., diag, :]) + 2
        for d in range(1, shape[-2]):  # the padding: d entries at the start (lower) or end (upper)
            if lower:
                x[..., d, :d] = 1e4
            else:
                x[..., shape[-2] - 1 - d, shape[-1] - d:] = 1e4
        if np.dtype(dtype).kind == "c":
            x = x + 0.5j * _sample("any", shape, np.float64, seed + 1)
        return x.astype(dtype)

    feeds = {"lo:0": bands((2, 3, 5), True, 1), "up:0": bands((2, 3, 5), False, 2),
             "b:0": _sample("any", (3, 1, 5, 2), seed=3),
             "clo:0": bands((2, 4), True, 5, np.complex64),
             "bc:0": (_sample("any", (4, 2), seed=7) + 1j * _sample("any", (4, 2), seed=8)).astype(np.complex64)}

    def build(tf):
        p = {k[:-2]: ph(tf, k[:-2], v) for k, v in feeds.items()}
        solve = tf.raw_ops.BandedTriangularSolve
        return ([solve(matrix=p[a], rhs=p["b"], lower=a == "lo", adjoint=adj) for a in ("lo", "up") for adj in (False, True)]
                + [solve(matrix=p["clo"], rhs=p["bc"], lower=True, adjoint=True)])

    # (TF's gradient fails for a single band, the diagonal alone: that case runs without gradients.)
    compare_with_tf(build, feeds, rtol=1e-4, atol=1e-5, grads=True, grad_rtol=1e-3, grad_atol=1e-4)
    diagonal = {"a:0": bands((1, 5), True, 0), "b:0": _sample("any", (5, 2), seed=3)}

    def build_diagonal(tf):
        a, b = ph(tf, "a", diagonal["a:0"]), ph(tf, "b", diagonal["b:0"])
        return [tf.raw_ops.BandedTriangularSolve(matrix=a, rhs=b, lower=lower, adjoint=adj)
                for lower in (True, False) for adj in (False, True)]

    compare_with_tf(build_diagonal, diagonal, rtol=1e-5, atol=1e-6)

    # More bands than the matrix has diagonals: TF's shape check refuses them where shapes are
    # known; its kernel ignores the extra ones.
    extra = {"a:0": bands((4, 3), True, 9), "b:0": _sample("any", (3, 2), seed=10)}

    def build_extra(tf):
        a = tf.compat.v1.placeholder(tf.float32, [None, None], name="a")
        b = ph(tf, "b", extra["b:0"])
        return [tf.raw_ops.BandedTriangularSolve(matrix=a, rhs=b, lower=lower) for lower in (True, False)]

    compare_with_tf(build_extra, extra, rtol=1e-5, atol=1e-6)


def test_banded_triangular_solve_zero_diagonal_is_refused():
    """TF refuses a zero on the diagonal of the batch's first matrix; jaxmeta too where the values
    are known (under jit the solution holds inf/NaN)."""
    tf = get_tf()
    bands = np.array([[2.0, 0.0, 1.0], [9.0, 1.0, 1.0]], F32)
    g = tf.Graph()
    with g.as_default():
        out = tf.raw_ops.BandedTriangularSolve(matrix=_ph(tf, tf.float32, [2, 3], "a"), rhs=tf.ones([3, 1]))
        with tf.compat.v1.Session(graph=g) as sess, pytest.raises(tf.errors.InvalidArgumentError):
            sess.run(out, {"a:0": bands})
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
    f = jaxmeta.import_meta_graph(meta).function([out.name], feeds=["a:0"])
    with pytest.raises(jaxmeta.GraphError, match="not invertible"):
        f({}, bands)
    assert not np.isfinite(np.asarray(jax.jit(f)({}, bands)[0])).all()


# -- Bessel J, Y, K, Dawson's and the Fresnel integrals (Eigen's ports of Cephes) --------------------

CEPHES = {  # op: a domain where it and its gradient are smooth
    "BesselJ0": "any", "BesselJ1": "any", "BesselY0": "pos", "BesselY1": "pos",
    "BesselK0": "pos", "BesselK0e": "pos", "BesselK1": "pos", "BesselK1e": "pos",
    "Dawsn": "any", "FresnelCos": "any", "FresnelSin": "any",
}
BESSEL_JYK = [op for op in CEPHES if op.startswith("Bessel")]  # the ones with a float16 kernel


def _cephes_points(dtype=F32) -> np.ndarray:
    """Every branch of the ports and their edges: 0 (both signs), tiny and huge arguments, the
    branch points (2, 5, 3.25, 6.25, sqrt(2.5625), 36974, 1e9), inf and NaN, either sign."""
    edges = [0.0, -0.0, 1e-30, 1e-6, -1e-4, 1e-3, 0.5, -1.5, 1.6, 1.6008, 2.0, 2.0001, -3.25, 5.0, 5.0001, 6.25,
             -6.3, 12.0, 30.0, -85.0, 100.0, 1e4, -1e4, 36974.0, 36975.0, -4e4, 1e9, -2e9, np.inf, -np.inf, np.nan]
    return np.concatenate([np.linspace(-40, 40, 161), edges]).astype(dtype)


def test_cephes_special_float32():
    x = _cephes_points()

    def build(tf):
        p = _ph(tf, tf.float32, x.shape, "x")
        return [getattr(tf.raw_ops, op)(x=p) for op in CEPHES]

    # (near the zeros of J and Y the relative error of either kernel is larger: atol)
    compare_with_tf(build, {"x:0": x}, rtol=2e-6, atol=5e-7)


def test_cephes_special_grads():
    # TF's gradient formulas (J0' = -J1, K0e' = K0e - K1e, Dawsn' = 1 - 2x Dawsn, ...); float64
    # arrives as float32 (x64 off) and is checked at float32's precision
    feeds = {f"{d}:0": _sample(d, (2, 3), seed=i) for i, d in enumerate(["any", "pos"])}
    feeds |= {f"{d}64:0": _sample(d, (4,), np.float64, seed=i + 2) for i, d in enumerate(["any", "pos"])}

    def build(tf):
        p = {k[:-2]: _ph(tf, tf.as_dtype(v.dtype), v.shape, k[:-2]) for k, v in feeds.items()}
        return [getattr(tf.raw_ops, op)(x=p[d + s]) for op, d in CEPHES.items() for s in ("", "64")]

    compare_with_tf(build, feeds, rtol=1e-5, atol=1e-6, grads=True)


def test_cephes_special_half_and_double():
    """float16 (Bessel J, Y, K only; TF runs them in float32 and rounds) and float64 (TF's double
    kernels against jaxmeta's float ones with x64 off: arguments within 40, tiny ones aside; Y1(0)
    is -inf in TF's double kernel, NaN in its float one and in jaxmeta's, so not checked)."""
    x16 = _cephes_points(np.float16)
    feeds = {"x16:0": x16}

    def build16(tf):
        p = _ph(tf, tf.float16, x16.shape, "x16")
        return [getattr(tf.raw_ops, op)(x=p) for op in BESSEL_JYK]

    compare_with_tf(build16, feeds, rtol=2e-3, atol=1e-3)
    x64 = np.concatenate([np.linspace(-40, 40, 161), [0.0, -0.0, 1e-6, 2.0, 5.0, 5.0001, np.inf, -np.inf, np.nan]])
    feeds = {"x64:0": x64, "y1:0": x64[x64 != 0]}

    def build64(tf):
        p = {k[:-2]: _ph(tf, tf.float64, v.shape, k[:-2]) for k, v in feeds.items()}
        return [getattr(tf.raw_ops, op)(x=p["y1" if op == "BesselY1" else "x64"]) for op in CEPHES]

    compare_with_tf(build64, feeds, rtol=2e-5, atol=2e-6)


# -- quasi-random sequences -----------------------------------------------------------------------


def test_sobol_sample():
    """tf.math.sobol_sample, exactly: small and large dimensions (up to TF's 21200), skips, a fed
    skip (traced under jit), float64 (float32 here, as exact: fewer than 24 bits), and skips from
    which TF's points come out negated (`skip + num_results + 1 >= 2**30`)."""
    feeds = {"skip:0": np.int32(123456), "far:0": np.int32(2**30 - 3)}

    def build(tf):
        skip, far = (tf.compat.v1.placeholder(tf.int32, [], name=k[:-2]) for k in feeds)
        return [tf.math.sobol_sample(1, 5), tf.math.sobol_sample(3, 8, dtype=tf.float64),
                tf.math.sobol_sample(7, 20, skip=3), tf.math.sobol_sample(40, 9, skip=1000),
                tf.math.sobol_sample(21200, 2, skip=5), tf.math.sobol_sample(5, 6, skip=skip),
                tf.math.sobol_sample(3, 4, skip=2**30 - 5), tf.math.sobol_sample(2, 3, skip=far),
                tf.math.sobol_sample(2, 3, skip=2**31 - 5)]

    compare_with_tf(build, feeds, rtol=0, atol=0)
