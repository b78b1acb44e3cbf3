"""Math ops: elementwise arithmetic and comparisons, casts, reductions, scans, matmul, FFT, linalg.

Static (NumPy) inputs stay NumPy wherever NumPy computes the same thing as TF (`xnp`, the NumPy half
of `unary`/`binary`), so shape arithmetic such as `Prod(Shape(x))` or `FloorDiv(size, 2)` stays known
at trace time.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import jax.scipy.special as jsp
import ml_dtypes
import numpy as np
from jax import lax

from jaxmeta._errors import GraphError
from jaxmeta.ops.random import _key_from_key_counter
from jaxmeta.ops.registry import (
    binary,
    broadcast_ranks,
    checked,
    need_known,
    register,
    register_table,
    static,
    static_ints,
    unary,
    xnp,
)

# -- helpers --------------------------------------------------------------------------------------


def _dtype(x) -> np.dtype:
    """The dtype of a NumPy value, Python scalar or JAX array/tracer (without converting it)."""
    return np.dtype(x.dtype) if hasattr(x, "dtype") else np.result_type(x)


def _is_int(x) -> bool:
    return np.issubdtype(_dtype(x), np.integer)


def _floating(dtype) -> bool:
    """True for real floating dtypes, bfloat16 and float8 included (NumPy sees those as void)."""
    return jnp.issubdtype(dtype, jnp.floating)


def _is_float(x) -> bool:
    return jnp.issubdtype(_dtype(x), jnp.inexact)


def _const(node, value, what: str):
    """The NumPy value of an input that must be known when the op runs (axes, sizes, fft lengths):
    a constant, or any value in a call without jit; a GraphError under jit otherwise."""
    return need_known(node, f"its input {what!r}", "jaxmeta needs", value)[0]


def _out_dtype(node, name: str, default=None):
    """The canonical dtype of an output-type attribute (`Tout`, `output_type`, ...), if present."""
    if not node.has_attr(name):
        return default
    return node.attr_dtype(name)


def _cast(x, dtype):
    if dtype is None:
        return x
    if static(x):
        return np.asarray(x).astype(dtype)
    return jnp.asarray(x).astype(jax.dtypes.canonicalize_dtype(dtype))


def _same_dtype(x, y):
    """Both operands as JAX arrays of their promoted dtype (lax ops need equal dtypes)."""
    x, y = jnp.asarray(x), jnp.asarray(y)
    dtype = jnp.promote_types(x.dtype, y.dtype)
    return x.astype(dtype), y.astype(dtype)


# XLA's incomplete gamma functions sum a series of about sqrt(a) terms where x is near a (8 ms
# at a = 1e10 in float64, hours at 1e30: a hang, on input a graph can hold), and lose accuracy as
# a grows (relative error against SciPy at x = a + k sqrt(a): float64 2e-8 at a = 1e7, 5e-2 at
# 1e9; float32 7e-4 at 1e3, 0.6 at 1e6; TF's own kernels are as far off). Past these `a` they take
# Wilson and Hilferty's normal approximation instead, whose relative error is about 0.2 / a
# (float64 7e-9 at 3e7; float32 1e-4 at 3e3, 3e-6 from 1e6 on).
_IGAMMA_SERIES_LIMIT = {np.dtype(np.float64): 3e7}
_IGAMMA_SERIES_LIMIT_NARROW = 3e3


def _wilson_hilferty(a, x):
    """z such that P(a, x) ~ Phi(z) for large a."""
    root = jnp.sqrt(a)
    # cbrt(x / a) - 1, accurate for x near a in float32 too
    return 3 * root * jnp.expm1(jnp.log1p((x - a) / a) / 3) + 1 / (3 * root)


def _large_a(small, large):
    """`small(a, x)` (XLA's series) for a up to `_IGAMMA_SERIES_LIMIT`, `large(z)` of Wilson and
    Hilferty's z beyond; `large=None`: dP/da there (IgammaGradA)."""

    def f(a, x):
        a, x = jnp.broadcast_arrays(*_same_dtype(a, x))
        limit = _IGAMMA_SERIES_LIMIT.get(np.dtype(a.dtype), _IGAMMA_SERIES_LIMIT_NARROW)
        big = (a > limit) & jnp.isfinite(a)
        one = jnp.ones_like(a)
        series = small(jnp.where(big, one, a), jnp.where(big, one, x))
        a_big = jnp.where(big, a, 2 * limit * one)
        x_big = jnp.where(big & (x >= 0), x, a_big)  # a safe point in lanes it does not answer
        if large is None:  # d Phi(z(a, x)) / da
            z, dz = jax.jvp(lambda a_: _wilson_hilferty(a_, x_big), (a_big,), (one,))
            approx = jnp.exp(-0.5 * z * z) / jnp.sqrt(2 * jnp.pi).astype(a.dtype) * dz
            approx = jnp.where(jnp.abs(z) > 40, jnp.zeros_like(z), approx)  # x = 0 or inf: dz is not finite
        else:
            approx = large(_wilson_hilferty(a_big, x_big))
        approx = jnp.where((x < 0) | jnp.isnan(x), jnp.nan, approx)
        return jnp.where(big, approx, series)

    return f


# -- elementwise unary ----------------------------------------------------------------------------


def _expint(x):
    """TF's Ei(x) is defined for x >= 0 only: NaN below, -inf at 0 (jax.scipy's expi extends it
    to negative x and is NaN at 0)."""
    x = jnp.asarray(x)
    nan, minus_inf = jnp.asarray(jnp.nan, x.dtype), jnp.asarray(-jnp.inf, x.dtype)
    return jnp.where(x < 0, nan, jnp.where(x == 0, minus_inf, jsp.expi(x)))


def _with_tout(f_jnp, f_np=None, attr: str = "Tout"):
    """Unary builder whose output dtype comes from an attribute (Real, Imag, Angle, ComplexAbs)."""

    def build(node):
        dtype = _out_dtype(node, attr)

        def fn(x):
            y = f_np(x) if f_np is not None and static(x) else f_jnp(x)
            return _cast(y, dtype)

        return fn

    return build


@jax.custom_jvp
def _spence(x):
    return jsp.spence(x)


@_spence.defjvp
def _spence_jvp(primals, tangents):
    # jax.scipy's own derivative is NaN at some points under jit; d/dx spence(x) = log(x) / (1 - x).
    (x,), (t,) = primals, tangents
    safe = jnp.where(x == 1, 2, x)
    return _spence(x), jnp.where(x == 1, -1, jnp.log(safe) / (1 - safe)).astype(x.dtype) * t


# Bessel J, Y, K (orders 0 and 1), Dawson's integral and the Fresnel integrals: TF's kernels are
# Eigen's ports of Cephes (Eigen's BesselFunctionsImpl.h, TF's special_math_op_misc_impl.h), one
# coefficient set for float and one for double (Dawsn and Fresnel share theirs); float16 runs in
# float32 and rounds, as Eigen does. Ported term for term, branches as `jnp.where`; derivatives
# are TF's gradient formulas.


def _polevl(x, coefs):
    """Cephes' polevl: the polynomial with these coefficients (highest degree first) at x."""
    y = jnp.full_like(x, coefs[0])
    for c in coefs[1:]:
        y = y * x + c
    return y


def _chbevl(x, coefs):
    """Cephes' chbevl: the Chebyshev series with these coefficients at x."""
    b0, b1, b2 = jnp.full_like(x, coefs[0]), jnp.zeros_like(x), jnp.zeros_like(x)
    for c in coefs[1:]:
        b2, b1 = b1, b0
        b0 = x * b1 - b2 + c
    return 0.5 * (b0 - b2)


def _cephes(f32, f64):
    """An elementwise function from its float and double ports; narrower floats run as float32."""

    def f(x):
        x = jnp.asarray(x)
        if x.dtype == jnp.float64:
            return f64(x)
        return f32(x.astype(jnp.float32)).astype(x.dtype)

    return f


def _with_derivative(f, df):
    """`f` with d f / dx = df(x, f(x)) (TF's gradient formula)."""
    g = jax.custom_jvp(f)

    @g.defjvp
    def _jvp(primals, tangents):
        (x,), (t,) = primals, tangents
        y = g(x)
        return y, (df(x, y) * t).astype(y.dtype)

    return g


_PI_4 = 0.7853981633974483096
_3PI_4 = 2.35619449019234492885
_2_PI = 0.636619772367581343075535
_SQRT_2_PI = 7.9788456080286535587989e-1
# float: J0/Y0 (MO, PH) and J1/Y1 (MO1, PH1) for x > 2
_MO = (-6.838999669318810e-2, 1.864949361379502e-1, -2.145007480346739e-1, 1.197549369473540e-1,
       -3.560281861530129e-3, -4.969382655296620e-2, -3.355424622293709e-6, 7.978845717621440e-1)
_PH = (3.242077816988247e1, -3.630592630518434e1, 1.756221482109099e1, -4.974978466280903e0,
       1.001973420681837e0, -1.939906941791308e-1, 6.490598792654666e-2, -1.249992184872738e-1)
_MO1 = (6.913942741265801e-2, -2.284801500053359e-1, 3.138238455499697e-1, -2.102302420403875e-1,
        5.435364690523026e-3, 1.493389585089498e-1, 4.976029650847191e-6, 7.978845453073848e-1)
_PH1 = (-4.497014141919556e1, 5.073465654089319e1, -2.485774108720340e1, 7.222973196770240e0,
        -1.544842782180211e0, 3.503787691653334e-1, -1.637986776941202e-1, 3.749989509080821e-1)
# double: J0/Y0 (PP0 ... QQ0) and J1/Y1 (PP1 ... QQ1) for x > 5
_PP0 = (7.96936729297347051624e-4, 8.28352392107440799803e-2, 1.23953371646414299388e0, 5.44725003058768775090e0,
        8.74716500199817011941e0, 5.30324038235394892183e0, 9.99999999999999997821e-1)
_PQ0 = (9.24408810558863637013e-4, 8.56288474354474431428e-2, 1.25352743901058953537e0, 5.47097740330417105182e0,
        8.76190883237069594232e0, 5.30605288235394617618e0, 1.00000000000000000218e0)
_QP0 = (-1.13663838898469149931e-2, -1.28252718670509318512e0, -1.95539544257735972385e1,
        -9.32060152123768231369e1, -1.77681167980488050595e2, -1.47077505154951170175e2,
        -5.14105326766599330220e1, -6.05014350600728481186e0)
_QQ0 = (1.0, 6.43178256118178023184e1, 8.56430025976980587198e2, 3.88240183605401609683e3,
        7.24046774195652478189e3, 5.93072701187316984827e3, 2.06209331660327847417e3, 2.42005740240291393179e2)
_PP1 = (7.62125616208173112003e-4, 7.31397056940917570436e-2, 1.12719608129684925192e0, 5.11207951146807644818e0,
        8.42404590141772420927e0, 5.21451598682361504063e0, 1.00000000000000000254e0)
_PQ1 = (5.71323128072548699714e-4, 6.88455908754495404082e-2, 1.10514232634061696926e0, 5.07386386128601488557e0,
        8.39985554327604159757e0, 5.20982848682361821619e0, 9.99999999999999997461e-1)
_QP1 = (5.10862594750176621635e-2, 4.98213872951233449420e0, 7.58238284132545283818e1, 3.66779609360150777800e2,
        7.10856304998926107277e2, 5.97489612400613639965e2, 2.11688757100572135698e2, 2.52070205858023719784e1)
_QQ1 = (1.0, 7.42373277035675149943e1, 1.05644886038262816351e3, 4.98641058337653607651e3,
        9.56231892404756170795e3, 7.99704160447350683650e3, 2.82619278517639096600e3, 3.36093607810698293419e2)


def _asymptotic_f32(y, mo, ph, shift):
    """sqrt(2 / (pi y)) P(y) and the phase y - shift + Q(y) of J and Y beyond 2 (float)."""
    q = 1 / y
    p = lax.rsqrt(y) * _polevl(q, mo)
    return p, q * _polevl(q * q, ph) - shift + y


def _asymptotic_f64(y, order: int, *, second_kind: bool = False):
    """J (or Y) of `order` 0 or 1 beyond 5 (double): sqrt(2 / (pi y)) (P cos(phase) - 5 / y Q sin(phase))
    with phase = y - pi / 4 (order 0) or y - 3 pi / 4 (order 1); Y swaps sin and cos and adds."""
    pp, pq, qp, qq, shift = (_PP0, _PQ0, _QP0, _QQ0, _PI_4) if order == 0 else (_PP1, _PQ1, _QP1, _QQ1, _3PI_4)
    s = 25 / (y * y)
    p, q, phase = _polevl(s, pp) / _polevl(s, pq), _polevl(s, qp) / _polevl(s, qq), y - shift
    if second_kind:
        p = p * jnp.sin(phase) + (5 / y) * (q * jnp.cos(phase))
    else:
        p = p * jnp.cos(phase) + (-5 / y) * (q * jnp.sin(phase))
    return p * (_SQRT_2_PI * lax.rsqrt(y))


def _j0_f32(x):
    y = jnp.abs(x)
    z = y * y
    small = jnp.where(y < 1e-3, z * -0.25 + 1,
                      (z - 5.78318596294678452118) * _polevl(z, (-6.068350350393235e-8, 6.388945720783375e-6,
                                                                 -3.969646342510940e-4, 1.332913422519003e-2,
                                                                 -1.729150680240724e-1)))
    p, phase = _asymptotic_f32(y, _MO, _PH, _PI_4)
    return jnp.where(y <= 2, small, p * jnp.cos(phase))


def _j0_f64(x):
    y = jnp.abs(x)
    z = y * y
    rp = (-4.79443220978201773821e9, 1.95617491946556577543e12, -2.49248344360967716204e14, 9.70862251047306323952e15)
    rq = (1.0, 4.99563147152651017219e2, 1.73785401676374683123e5, 4.84409658339962045305e7,
          1.11855537045356834862e10, 2.11277520115489217587e12, 3.10518229857422583814e14,
          3.18121955943204943306e16, 1.71086294081043136091e18)
    small = jnp.where(y < 1e-5, z * -0.25 + 1,
                      (z - 5.78318596294678452118) * (z - 3.04712623436620863991e1) * (_polevl(z, rp) / _polevl(z, rq)))
    return jnp.where(y <= 5, small, _asymptotic_f64(y, 0))


def _j1_f32(x):
    y = jnp.abs(x)
    z = y * y
    small = (z - 1.46819706421238932572e1) * (x * _polevl(z, (-4.878788132172128e-9, 6.009061827883699e-7,
                                                                -4.541343896997497e-5, 1.937383947804541e-3,
                                                                -3.405537384615824e-2)))
    p, phase = _asymptotic_f32(y, _MO1, _PH1, _3PI_4)
    big = p * jnp.cos(phase)
    return jnp.where(y <= 2, small, jnp.where(x < 0, -big, big))


def _j1_f64(x):
    y = jnp.abs(x)
    z = y * y
    rp = (-8.99971225705559398224e8, 4.52228297998194034323e11, -7.27494245221818276015e13, 3.68295732863852883286e15)
    rq = (1.0, 6.20836478118054335476e2, 2.56987256757748830383e5, 8.35146791431949253037e7,
          2.21511595479792499675e10, 4.74914122079991414898e12, 7.84369607876235854894e14,
          8.95222336184627338078e16, 5.32278620332680085395e18)
    small = _polevl(z, rp) / _polevl(z, rq) * x * (z - 1.46819706421238932572e1) * (z - 4.92184563216946036703e1)
    big = _asymptotic_f64(y, 1)
    return jnp.where(y <= 5, small, jnp.where(x < 0, -big, big))


def _y0_f32(x):
    z = x * x
    small = _2_PI * (jnp.log(x) * _j0_f32(x)) + (z - 0.43221455686510834878) * _polevl(
        z, (9.454583683980369e-8, -9.413212653797057e-6, 5.344486707214273e-4, -1.584289289821316e-2,
            1.707584643733568e-1))
    small = jnp.where(x <= 0, -jnp.inf, small)
    p, phase = _asymptotic_f32(x, _MO, _PH, _PI_4)
    return jnp.where(x <= 2, small, p * jnp.sin(phase))


def _y0_f64(x):
    z = x * x
    yp = (1.55924367855235737965e4, -1.46639295903971606143e7, 5.43526477051876500413e9, -9.82136065717911466409e11,
          8.75906394395366999549e13, -3.46628303384729719441e15, 4.42733268572569800351e16, -1.84950800436986690637e16)
    yq = (1.0, 1.04128353664259848412e3, 6.26107330137134956842e5, 2.68919633393814121987e8,
          8.64002487103935000337e10, 2.02979612750105546709e13, 3.17157752842975028269e15, 2.50596256172653059228e17)
    small = (_2_PI * jnp.log(x)) * _j0_f64(x) + _polevl(z, yp) / _polevl(z, yq)
    small = jnp.where(x <= 0, -jnp.inf, small)
    return jnp.where(x <= 5, small, _asymptotic_f64(x, 0, second_kind=True))


def _y1_f32(x):
    # TF's float kernel answers NaN at 0 (its double kernel -inf)
    z = x * x
    small = (z - 4.66539330185668857532) * _polevl(z, (8.061978323326852e-9, -9.496460629917016e-7,
                                                         6.719543806674249e-5, -2.641785726447862e-3,
                                                         4.202369946500099e-2))
    small = small * x + _2_PI * (_j1_f32(x) * jnp.log(x) + -1 / x)
    small = jnp.where(x < 0, -jnp.inf, small)
    p, phase = _asymptotic_f32(x, _MO1, _PH1, _3PI_4)
    return jnp.where(x <= 2, small, p * jnp.sin(phase))


def _y1_f64(x):
    z = x * x
    yp = (1.26320474790178026440e9, -6.47355876379160291031e11, 1.14509511541823727583e14,
          -8.12770255501325109621e15, 2.02439475713594898196e17, -7.78877196265950026825e17)
    yq = (1.0, 5.94301592346128195359e2, 2.35564092943068577943e5, 7.34811944459721705660e7,
          1.87601316108706159478e10, 3.88231277496238566008e12, 6.20557727146953693363e14,
          6.87141087355300489866e16, 3.97270608116560655612e18)
    small = _polevl(z, yp) / _polevl(z, yq) * x + _2_PI * (_j1_f64(x) * jnp.log(x) + -1 / x)
    small = jnp.where(x <= 0, -jnp.inf, small)
    return jnp.where(x <= 5, small, _asymptotic_f64(x, 1, second_kind=True))


# K0 and K1: Chebyshev series in x^2 - 2 up to 2 (A), in 8 / x - 2 beyond (B); the float series
# are the double's last terms.
_K0_A = (1.37446543561352307156e-16, 4.25981614279661018399e-14, 1.03496952576338420167e-11,
         1.90451637722020886025e-9, 2.53479107902614945675e-7, 2.28621210311945178607e-5,
         1.26461541144692592338e-3, 3.59799365153615016266e-2, 3.44289899924628486886e-1,
         -5.35327393233902768720e-1)
_K0_B = (5.30043377268626276149e-18, -1.64758043015242134646e-17, 5.21039150503902756861e-17,
         -1.67823109680541210385e-16, 5.51205597852431940784e-16, -1.84859337734377901440e-15,
         6.34007647740507060557e-15, -2.22751332699166985548e-14, 8.03289077536357521100e-14,
         -2.98009692317273043925e-13, 1.14034058820847496303e-12, -4.51459788337394416547e-12,
         1.85594911495471785253e-11, -7.95748924447710747776e-11, 3.57739728140030116597e-10,
         -1.69753450938905987466e-9, 8.57403401741422608519e-9, -4.66048989768794782956e-8,
         2.76681363944501510342e-7, -1.83175552271911948767e-6, 1.39498137188764993662e-5,
         -1.28495495816278026384e-4, 1.56988388573005337491e-3, -3.14481013119645005427e-2,
         2.44030308206595545468e0)
_K1_A = (-7.02386347938628759343e-18, -2.42744985051936593393e-15, -6.66690169419932900609e-13,
         -1.41148839263352776110e-10, -2.21338763073472585583e-8, -2.43340614156596823496e-6,
         -1.73028895751305206302e-4, -6.97572385963986435018e-3, -1.22611180822657148235e-1,
         -3.53155960776544875667e-1, 1.52530022733894777053e0)
_K1_B = (-5.75674448366501715755e-18, 1.79405087314755922667e-17, -5.68946255844285935196e-17,
         1.83809354436663880070e-16, -6.05704724837331885336e-16, 2.03870316562433424052e-15,
         -7.01983709041831346144e-15, 2.47715442448130437068e-14, -8.97670518232499435011e-14,
         3.34841966607842919884e-13, -1.28917396095102890680e-12, 5.13963967348173025100e-12,
         -2.12996783842756842877e-11, 9.21831518760500529508e-11, -4.19035475934189648750e-10,
         2.01504975519703286596e-9, -1.03457624656780970260e-8, 5.74108412545004946722e-8,
         -3.50196060308781257119e-7, 2.40648494783721712015e-6, -1.93619797416608296024e-5,
         1.95215518471351631108e-4, -2.85781685962277938680e-3, 1.03923736576817238437e-1,
         2.72062619048444266945e0)


# Eigen's float I0 and I1 up to 8 (K0 and K1 take them up to 2): exp(x) times a Chebyshev series
_I0_A_F32 = (-1.30002500998624804212e-8, 6.04699502254191894932e-8, -2.67079385394061173391e-7,
             1.11738753912010371815e-6, -4.41673835845875056359e-6, 1.64484480707288970893e-5,
             -5.75419501008210370398e-5, 1.88502885095841655729e-4, -5.76375574538582365885e-4,
             1.63947561694133579842e-3, -4.32430999505057594430e-3, 1.05464603945949983183e-2,
             -2.37374148058994688156e-2, 4.93052842396707084878e-2, -9.49010970480476444210e-2,
             1.71620901522208775349e-1, -3.04682672343198398683e-1, 6.76795274409476084995e-1)
_I1_A_F32 = (9.38153738649577178388e-9, -4.44505912879632808065e-8, 2.00329475355213526229e-7,
             -8.56872026469545474066e-7, 3.47025130813767847674e-6, -1.32731636560394358279e-5,
             4.78156510755005422638e-5, -1.61760815825896745588e-4, 5.12285956168575772895e-4,
             -1.51357245063125314899e-3, 4.15642294431288815669e-3, -1.05640848946261981558e-2,
             2.47264490306265168283e-2, -5.29459812080949914269e-2, 1.02643658689847095384e-1,
             -1.76416518357834055153e-1, 2.52587186443633654823e-1)


def _i0_f32(x):
    """Eigen's float I0 for 0 <= x <= 8."""
    return jnp.exp(x) * _chbevl(0.5 * x - 2, _I0_A_F32)


def _i1_f32(x):
    """Eigen's float I1 for 0 <= x <= 8."""
    return jnp.exp(x) * (x * _chbevl(0.5 * x - 2, _I1_A_F32))


def _bessel_k(order: int, scaled: bool):
    """K0, K0e, K1 or K1e: +inf for x <= 0 (as TF), Eigen's series beyond."""
    a_all, b_all = (_K0_A, _K0_B) if order == 0 else (_K1_A, _K1_B)

    def port(a, b):
        def f(x):
            i0, i1 = (jsp.i0, jsp.i1) if x.dtype == jnp.float64 else (_i0_f32, _i1_f32)
            if order == 0:
                small = i0(x) * -jnp.log(0.5 * x) + _chbevl(x * x - 2, a)
            else:
                small = i1(x) * jnp.log(0.5 * x) + _chbevl(x * x - 2, a) / x
            big = _chbevl(8 / x - 2, b) * lax.rsqrt(x)
            if scaled:
                small = small * jnp.exp(x)
            else:
                big = big * jnp.exp(-x)
            return jnp.where(x <= 0, jnp.inf, jnp.where(x <= 2, small, big))

        return f

    return _cephes(port(a_all[-7:], b_all[-10:]), port(a_all, b_all))


def _safe_x(x):
    """x, with 1 for 0 (TF's gradient formulas divide by x; the lanes at 0 take another answer)."""
    return jnp.where(x == 0, jnp.ones_like(x), x)


_bessel_j0 = _with_derivative(_cephes(_j0_f32, _j0_f64), lambda x, y: -_bessel_j1(x))
_bessel_j1 = _with_derivative(_cephes(_j1_f32, _j1_f64),
                              lambda x, y: jnp.where(x == 0, 0.5, _bessel_j0(x) - y / _safe_x(x)))
_bessel_y0 = _with_derivative(_cephes(_y0_f32, _y0_f64), lambda x, y: -_bessel_y1(x))
_bessel_y1 = _with_derivative(_cephes(_y1_f32, _y1_f64), lambda x, y: _bessel_y0(x) - y / x)
_bessel_k0 = _with_derivative(_bessel_k(0, False), lambda x, y: -_bessel_k1(x))
_bessel_k0e = _with_derivative(_bessel_k(0, True), lambda x, y: y - _bessel_k1e(x))
_bessel_k1 = _with_derivative(_bessel_k(1, False), lambda x, y: -_bessel_k0(x) - y / x)
_bessel_k1e = _with_derivative(_bessel_k(1, True), lambda x, y: y * (1 - 1 / x) - _bessel_k0e(x))


def _dawsn_f(x):
    """Dawson's integral as TF computes it (one coefficient set, in the input's precision). Past
    |x| = 1e9 TF's kernel answers 0.5 / |x| for either sign: kept."""
    ax = jnp.abs(x)
    x2 = ax * ax
    an = (1.13681498971755972054e-11, 8.49262267667473811108e-10, 1.94434204175553054283e-8,
          9.53151741254484363489e-7, 3.07828309874913200438e-6, 3.52513368520288738649e-4,
          -8.50149846724410912031e-4, 4.22618223005546594270e-2, -9.17480371773452345351e-2,
          9.99999999999999994612e-1)
    ad = (2.40372073066762605484e-11, 1.48864681368493396752e-9, 5.21265281010541664570e-8,
          1.27258478273186970203e-6, 2.32490249820789513991e-5, 3.25524741826057911661e-4,
          3.48805814657162590916e-3, 2.79448531198828973716e-2, 1.58874241960120565368e-1,
          5.74918629489320327824e-1, 1.00000000000000000539e0)
    bn = (5.08955156417900903354e-1, -2.44754418142697847934e-1, 9.41512335303534411857e-2,
          -2.18711255142039025206e-2, 3.66207612329569181322e-3, -4.23209114460388756528e-4,
          3.59641304793896631888e-5, -2.14640351719968974225e-6, 9.10010780076391431042e-8,
          -2.40274520828250956942e-9, 3.59233385440928410398e-11)
    bd = (1.0, -6.31839869873368190192e-1, 2.36706788228248691528e-1, -5.31806367003223277662e-2,
          8.48041718586295374409e-3, -9.47996768486665330168e-4, 7.81025592944552338085e-5,
          -4.55875153252442634831e-6, 1.89100358111421846170e-7, -4.91324691331920606875e-9,
          7.18466403235734541950e-11)
    cn = (-5.90592860534773254987e-1, 6.29235242724368800674e-1, -1.72858975380388136411e-1,
          1.64837047825189632310e-2, -4.86827613020462700845e-4)
    cd = (1.0, -2.69820057197544900361e0, 1.73270799045947845857e0, -3.93708582281939493482e-1,
          3.44278924041233391079e-2, -9.73655226040941223894e-4)
    d1 = ax * _polevl(x2, an) / _polevl(x2, ad)
    inv = 1 / ax
    inv2 = inv * inv
    d2 = 0.5 * (inv2 * (_polevl(inv2, bn) / (ax * _polevl(inv2, bd))) + inv)
    d3 = 0.5 * (inv2 * (_polevl(inv2, cn) / (ax * _polevl(inv2, cd))) + inv)
    d = jnp.where(ax < 3.25, d1, jnp.where(ax < 6.25, d2, jnp.where(ax < 1e9, d3, 0.5 / x)))
    return jnp.where(x < 0, -d, d)


def _fresnel(use_sin: bool):
    """S(x) or C(x) as TF computes them (one coefficient set, in the input's precision)."""
    if use_sin:
        n1 = (-2.99181919401019853726e3, 7.08840045257738576863e5, -6.29741486205862506537e7,
              2.54890880573376359104e9, -4.42979518059697779103e10, 3.18016297876567817986e11)
        d1 = (1.0, 2.81376268889994315696e2, 4.55847810806532581675e4, 5.17343888770096400730e6,
              4.19320245898111231129e8, 2.24411795645340920940e10, 6.07366389490084639049e11)
    else:
        n1 = (-4.98843114573573548651e-8, 9.50428062829859605134e-6, -6.45191435683965050962e-4,
              1.88843319396703850064e-2, -2.05525900955013891793e-1, 9.99999999999999998822e-1)
        d1 = (3.99982968972495980367e-12, 9.15439215774657478799e-10, 1.25001862479598821474e-7,
              1.22262789024179030997e-5, 8.68029542941784300606e-4, 4.12142090722199792936e-2,
              1.00000000000000000118e0)
    fn = (4.21543555043677546506e-1, 1.43407919780758885261e-1, 1.15220955073585758835e-2,
          3.45017939782574027900e-4, 4.63613749287867322088e-6, 3.05568983790257605827e-8,
          1.02304514164907233465e-10, 1.72010743268161828879e-13, 1.34283276233062758925e-16,
          3.76329711269987889006e-20)
    fd = (1.0, 7.51586398353378947175e-1, 1.16888925859191382142e-1, 6.44051526508858611005e-3,
          1.55934409164153020873e-4, 1.84627567348930545870e-6, 1.12699224763999035261e-8,
          3.60140029589371370404e-11, 5.88754533621578410010e-14, 4.52001434074129701496e-17,
          1.25443237090011264384e-20)
    gn = (5.04442073643383265887e-1, 1.97102833525523411709e-1, 1.87648584092575249293e-2,
          6.84079380915393090172e-4, 1.15138826111884280931e-5, 9.82852443688422223854e-8,
          4.45344415861750144738e-10, 1.08268041139020870318e-12, 1.37555460633261799868e-15,
          8.36354435630677421531e-19, 1.86958710162783235106e-22)
    gd = (1.0, 1.47495759925128324529e0, 3.37748989120019970451e-1, 2.53603741420338795122e-2,
          8.14679107184306179049e-4, 1.27545075667729118702e-5, 1.04314589657571990585e-7,
          4.60680728146520428211e-10, 1.10273215066240270757e-12, 1.38796531259578871258e-15,
          8.39158816283118707363e-19, 1.86958710162783236342e-22)

    def f(x):
        ax = jnp.abs(x)
        x2 = ax * ax
        x4 = x2 * x2
        small = (ax * x2 if use_sin else ax) * _polevl(x4, n1) / _polevl(x4, d1)
        t = 1 / (np.pi * x2)
        u = t * t
        fa = 1 - u * (_polevl(u, fn) / _polevl(u, fd))
        ga = t * _polevl(u, gn) / _polevl(u, gd)
        c, s = jnp.cos(np.pi / 2 * x2), jnp.sin(np.pi / 2 * x2)
        r = 1 / (np.pi * ax)
        big = 0.5 - (fa * c + ga * s) * r if use_sin else 0.5 + (fa * s - ga * c) * r
        v = jnp.where(ax > 36974.0, 0.5, jnp.where(x * x < 2.5625, small, big))
        return jnp.where(x < 0, -v, v)

    return f


_dawsn = _with_derivative(_cephes(_dawsn_f, _dawsn_f), lambda x, y: 1 - 2 * x * y)
_fresnel_cos = _with_derivative(_cephes(_fresnel(False), _fresnel(False)), lambda x, y: jnp.cos(np.pi / 2 * jnp.square(x)))
_fresnel_sin = _with_derivative(_cephes(_fresnel(True), _fresnel(True)), lambda x, y: jnp.sin(np.pi / 2 * jnp.square(x)))


def _np_rsqrt(x):
    return (1 / np.sqrt(x)).astype(x.dtype)


register_table({
    "Abs": unary(jnp.abs, np.abs),
    "Neg": unary(jnp.negative, np.negative),
    "Reciprocal": unary(jnp.reciprocal, np.reciprocal),
    "Inv": unary(jnp.reciprocal, np.reciprocal),  # deprecated name of Reciprocal (old graphs)
    "Square": unary(jnp.square, np.square),
    "Sqrt": unary(jnp.sqrt, np.sqrt),
    "Rsqrt": unary(lax.rsqrt, _np_rsqrt),
    "Exp": unary(jnp.exp, np.exp),
    "Expm1": unary(jnp.expm1, np.expm1),
    "Log": unary(jnp.log, np.log),
    "Log1p": unary(jnp.log1p, np.log1p),
    "Sin": unary(jnp.sin, np.sin),
    "Cos": unary(jnp.cos, np.cos),
    "Tan": unary(jnp.tan, np.tan),
    "Asin": unary(jnp.arcsin, np.arcsin),
    "Acos": unary(jnp.arccos, np.arccos),
    "Atan": unary(jnp.arctan, np.arctan),
    "Sinh": unary(jnp.sinh, np.sinh),
    "Cosh": unary(jnp.cosh, np.cosh),
    "Tanh": unary(jnp.tanh, np.tanh),
    "Asinh": unary(jnp.arcsinh, np.arcsinh),
    "Acosh": unary(jnp.arccosh, np.arccosh),
    "Atanh": unary(jnp.arctanh, np.arctanh),
    "Sigmoid": unary(jax.nn.sigmoid),
    "Sign": unary(jnp.sign, np.sign),
    "Floor": unary(jnp.floor, np.floor),
    "Ceil": unary(jnp.ceil, np.ceil),
    # TF rounds half to even, as NumPy and jax.numpy do.
    "Round": unary(jnp.round, np.round),
    "Rint": unary(jnp.rint, np.rint),
    "Erf": unary(jsp.erf),
    "Erfc": unary(jsp.erfc),
    "Erfinv": unary(jsp.erfinv),
    "Ndtri": unary(jsp.ndtri),
    "Lgamma": unary(jsp.gammaln),
    "Digamma": unary(jsp.digamma),
    "BesselI0": unary(jsp.i0),
    "BesselI1": unary(jsp.i1),
    "BesselI0e": unary(jsp.i0e),
    "BesselI1e": unary(jsp.i1e),
    "Spence": unary(lambda x: _spence(x)),
    "Expint": unary(_expint),
    "BesselJ0": unary(lambda x: _bessel_j0(x)),
    "BesselJ1": unary(lambda x: _bessel_j1(x)),
    "BesselY0": unary(lambda x: _bessel_y0(x)),
    "BesselY1": unary(lambda x: _bessel_y1(x)),
    "BesselK0": unary(lambda x: _bessel_k0(x)),
    "BesselK0e": unary(lambda x: _bessel_k0e(x)),
    "BesselK1": unary(lambda x: _bessel_k1(x)),
    "BesselK1e": unary(lambda x: _bessel_k1e(x)),
    "Dawsn": unary(lambda x: _dawsn(x)),
    "FresnelCos": unary(lambda x: _fresnel_cos(x)),
    "FresnelSin": unary(lambda x: _fresnel_sin(x)),
    "IsFinite": unary(jnp.isfinite, np.isfinite),
    "IsInf": unary(jnp.isinf, np.isinf),
    "IsNan": unary(jnp.isnan, np.isnan),
    "LogicalNot": unary(jnp.logical_not, np.logical_not),
    "Invert": unary(jnp.invert, np.invert),
    "Conj": unary(jnp.conj, np.conj),
    "Real": _with_tout(jnp.real, np.real),
    "Imag": _with_tout(jnp.imag, np.imag),
    "Angle": _with_tout(jnp.angle, np.angle),
    "ComplexAbs": _with_tout(jnp.abs, np.abs),
})


@register("PopulationCount")
def _population_count(node):
    # With x64 off an int64 arrives as the int32 of the same value: a negative one has its 32
    # upper bits set in TF's int64.
    upper = 32 if node.attr_dtype("T") == np.int64 and not jax.config.jax_enable_x64 else 0

    def fn(x):
        x = jnp.asarray(x)
        bits = lax.population_count(x).astype(jnp.uint8)
        return bits + (x < 0).astype(jnp.uint8) * upper if upper else bits

    return fn


# -- elementwise binary ---------------------------------------------------------------------------


def _np_truncdiv(x, y):
    q = np.floor_divide(x, y)
    if np.result_type(q).kind == "i":
        q = q + ((np.remainder(x, y) != 0) & ((x < 0) != (y < 0))).astype(q.dtype)
    return q


def _div(x, y):
    # Integer Div/TruncateDiv follow C: the quotient is truncated toward zero (7 / -2 == -3), unlike
    # Python's floor division (FloorDiv). Floats divide exactly.
    if _is_int(x) and _is_int(y):
        if static(x, y):
            return _np_truncdiv(x, y)
        return lax.div(*_same_dtype(x, y))
    return xnp(x, y).true_divide(x, y)


def _truncate_div(x, y):
    if _is_int(x) and _is_int(y):
        return _div(x, y)
    return xnp(x, y).trunc(x / y)


def _floor_div(x, y):
    if _is_int(x) and _is_int(y):
        return xnp(x, y).floor_divide(x, y)
    # TF floors the rounded quotient, floor(x / y): FloorDiv(1.0, 0.1) == 10 (NumPy says 9).
    return xnp(x, y).floor(x / y)


def _maximum(x, y):
    if not _is_float(x):
        return xnp(x, y).maximum(x, y)
    m = xnp(x, y)
    # NaN propagates (as TF's); on ties the gradient goes to x, as TF's MaximumGrad (x >= y) does.
    return m.where((x >= y) | m.isnan(x), x, y)


def _minimum(x, y):
    if not _is_float(x):
        return xnp(x, y).minimum(x, y)
    m = xnp(x, y)
    return m.where((x <= y) | m.isnan(x), x, y)


def _squared_difference(x, y):
    d = x - y
    return d * xnp(x, y).conj(d)


def _shift(f):
    # TF clamps the shift amount to [0, bits - 1] (shifting by the width or more is undefined in C).
    def op(x, y):
        m = xnp(x, y)
        bits = _dtype(x).itemsize * 8
        y = m.clip(y, 0, bits - 1).astype(_dtype(y))
        return f(m)(x, y)

    return op


def _xlogy(log):
    # 0 where x == 0 (even where log(y) is -inf); the gradient is safe there too.
    def op(x, y):
        m = xnp(x, y)
        zero = x == 0
        return m.where(zero, m.zeros_like(x), x * log(m, m.where(zero, m.ones_like(y), y)))

    return op


def _xdivy(x, y):
    m = xnp(x, y)
    zero = x == 0
    return m.where(zero, m.zeros_like(x), x / m.where(zero, m.ones_like(y), y))


def _div_no_nan(x, y):
    m = xnp(x, y)
    zero = y == 0
    return m.where(zero, m.zeros_like(x), _div(x, m.where(zero, m.ones_like(y), y)))


def _mul_no_nan(x, y):
    # 0 where y == 0, even where x is inf or NaN.
    m = xnp(x, y)
    return m.where(y == 0, m.zeros_like(x * y), x * y)


def _refusing(refuses: Callable[[np.ndarray], bool], what: str):
    """`binary(f_jnp, f_np or f_jnp)` for an integer op whose kernel in TF refuses some values of
    `y` (`refuses(y)`): they raise a GraphError saying `what` where `y` is known (constants, any
    call without jit). Under jit XLA's result stands (x / 0 == -1, x % 0 == x, x ** -1 == 0)."""

    def wrap(f_jnp, f_np=None):
        inner = binary(f_jnp, f_np or f_jnp)

        def build(node):
            fn = inner(node)

            def op(x, y):
                if _is_int(y):
                    value = checked(y)
                    if value is not None and refuses(value):
                        raise GraphError(f"node {node.name!r} ({node.type}): {what}, which TF refuses; check "
                                         "the values of its second input")
                return fn(x, y)

            return op

        return build

    return wrap


_division = _refusing(lambda y: not np.all(y), "integer division by zero")
_int_power = _refusing(lambda y: bool(np.any(y < 0)), "an integer to a negative power")


def _polygamma(a, x):
    # TF returns NaN for a non-integer order.
    a, x = _same_dtype(a, x)
    n = jnp.round(a)
    y = jsp.polygamma(n.astype(jnp.int32), x)
    return jnp.where(n == a, y, jnp.nan).astype(x.dtype)


register_table({
    # Add also concatenates strings (NumPy object arrays).
    "Add": binary(jnp.add, np.add),
    "AddV2": binary(jnp.add, np.add),
    "Sub": binary(jnp.subtract, np.subtract),
    "Mul": binary(jnp.multiply, np.multiply),
    "MulNoNan": binary(_mul_no_nan, _mul_no_nan),
    "Div": _division(_div),
    "RealDiv": _division(_div),
    "DivNoNan": binary(_div_no_nan, _div_no_nan),
    "FloorDiv": _division(_floor_div),
    # TF's FloorMod takes the sign of y, as Python's % (jnp/np.remainder) does.
    "FloorMod": _division(jnp.remainder, np.remainder),
    "TruncateDiv": _division(_truncate_div),
    # Mod is C's %/fmod (sign of x), not Python's: Mod(-7, 2) == -1.
    "TruncateMod": _division(jnp.fmod, np.fmod),
    "Mod": _division(jnp.fmod, np.fmod),
    "Pow": _int_power(jnp.power, np.power),
    "Maximum": binary(_maximum, _maximum),
    "Minimum": binary(_minimum, _minimum),
    "SquaredDifference": binary(_squared_difference, _squared_difference),
    "Atan2": binary(jnp.arctan2, np.arctan2),  # inputs (y, x)
    "Xlogy": binary(_xlogy(lambda m, y: m.log(y)), _xlogy(lambda m, y: m.log(y))),
    "Xlog1py": binary(_xlogy(lambda m, y: m.log1p(y)), _xlogy(lambda m, y: m.log1p(y))),
    "Xdivy": binary(_xdivy, _xdivy),
    "Igamma": binary(_large_a(jsp.gammainc, lambda z: jsp.ndtr(z))),
    "Igammac": binary(_large_a(jsp.gammaincc, lambda z: jsp.ndtr(-z))),
    "IgammaGradA": binary(_large_a(lax.igamma_grad_a, None)),
    "Zeta": binary(jsp.zeta),
    "Polygamma": binary(_polygamma),
    "NextAfter": binary(jnp.nextafter, np.nextafter),
    "BitwiseAnd": binary(jnp.bitwise_and, np.bitwise_and),
    "BitwiseOr": binary(jnp.bitwise_or, np.bitwise_or),
    "BitwiseXor": binary(jnp.bitwise_xor, np.bitwise_xor),
    "LeftShift": binary(_shift(lambda m: m.left_shift), _shift(lambda m: m.left_shift)),
    "RightShift": binary(_shift(lambda m: m.right_shift), _shift(lambda m: m.right_shift)),
    "LogicalAnd": binary(jnp.logical_and, np.logical_and),
    "LogicalOr": binary(jnp.logical_or, np.logical_or),
    "Less": binary(jnp.less, np.less),
    "LessEqual": binary(jnp.less_equal, np.less_equal),
    "Greater": binary(jnp.greater, np.greater),
    "GreaterEqual": binary(jnp.greater_equal, np.greater_equal),
})


def _np_equal(f):
    # NumPy compares object (string) arrays elementwise but may return an object array.
    return lambda x, y: np.asarray(f(x, y), dtype=bool)


@register("Equal", "NotEqual")
def _equal(node):
    """Elementwise (in)equality, strings included. With `incompatible_shape_error=False`, operands
    whose shapes do not broadcast give a scalar: False for Equal, True for NotEqual."""
    equal = node.type == "Equal"
    strict = node.attr_bool("incompatible_shape_error", True)
    f_jnp = jnp.equal if equal else jnp.not_equal
    f_np = _np_equal(np.equal if equal else np.not_equal)

    def fn(x, y):
        if not strict:
            try:
                np.broadcast_shapes(np.shape(x), np.shape(y))
            except ValueError:
                # incompatible_shape_error=False: shapes that do not broadcast compare as a scalar
                # "all different".
                return np.bool_(not equal)
        x, y = broadcast_ranks(x, y)
        return f_np(x, y) if static(x, y) else f_jnp(x, y)

    return fn


@register("ApproximateEqual")
def _approximate_equal(node):
    tolerance = node.attr_float("tolerance", 1e-5)

    def fn(x, y):
        x, y = broadcast_ranks(x, y)
        return xnp(x, y).abs(x - y) < tolerance

    return fn


@register("Complex")
def _complex(node):
    dtype = _out_dtype(node, "Tout", np.dtype(np.complex64))

    def fn(real, imag):
        real, imag = broadcast_ranks(real, imag)
        if static(real, imag):
            return (real + 1j * imag).astype(dtype)
        return lax.complex(*_same_dtype(real, imag)).astype(jax.dtypes.canonicalize_dtype(dtype))

    return fn


@register("Betainc")
def _betainc(node):
    def fn(a, b, x):
        a, b, x = broadcast_ranks(a, b, x)
        shape = jnp.broadcast_shapes(jnp.shape(a), jnp.shape(b), jnp.shape(x))
        return jsp.betainc(*(jnp.broadcast_to(v, shape) for v in (a, b, x)))

    return fn


@register("Cross")
def _cross(node):
    return lambda a, b: xnp(a, b).cross(a, b)


@register("Bucketize")
def _bucketize(node):
    boundaries = np.asarray(node.attr_floats("boundaries"), np.float32)

    def fn(x):
        m = xnp(x)
        return m.searchsorted(boundaries, x, side="right").astype(np.int32)

    return fn


# -- n-ary, casts, selection ----------------------------------------------------------------------


@register("AddN", "AccumulateNV2")
def _add_n(node):
    def fn(*xs):
        if static(*xs):
            return functools.reduce(np.add, xs)
        return functools.reduce(jnp.add, xs)

    return fn


def _truncate_mantissa(x, src: np.dtype, dst: np.dtype):
    """Zeroes the mantissa bits `dst` cannot hold, so the cast truncates instead of rounding."""
    drop = ml_dtypes.finfo(src).nmant - ml_dtypes.finfo(dst).nmant
    if drop <= 0:
        return x
    uint = {2: np.uint16, 4: np.uint32, 8: np.uint64}[src.itemsize]
    mask = uint(~((1 << drop) - 1) & ((1 << (8 * src.itemsize)) - 1))
    if static(x):
        return (np.asarray(x).view(uint) & mask).view(src)
    return lax.bitcast_convert_type(lax.bitcast_convert_type(x, uint) & mask, src)


def _float_to_int(m, x, target: np.dtype):
    """TF's float -> integer cast as its x86 CPU kernels compute it (C's conversion as compiled
    there), for NumPy or jax.numpy `m`: truncation toward zero to 32 bits (64 for 64-bit types),
    then the low bits the target holds, e.g. -1.0 -> uint8 255 and 300.0 -> int8 44; NaN and values
    past that range give its minimum (0 once wrapped to 8 or 16 bits); uint32 and uint64 also take
    the values only they hold. From bfloat16 to 8- and 16-bit types TF clamps the 32-bit value
    instead (NaN and -inf: 0). XLA's convert saturates (-1.0 -> uint8 0, 300.0 -> int8 127)."""
    from_bfloat16 = x.dtype == jnp.bfloat16
    wide = np.dtype(np.int64) if target.itemsize == 8 else np.dtype(np.int32)
    wide = np.dtype(jax.dtypes.canonicalize_dtype(wide)) if m is jnp else wide
    lo = np.iinfo(wide).min
    x = m.trunc(x.astype(np.float32) if x.dtype.itemsize < 4 else x)
    inside = (x >= lo) & (x < -float(lo))  # NaN: False
    out = m.where(inside, m.where(inside, x, 0).astype(wide), wide.type(lo))
    if from_bfloat16 and target.itemsize <= 2:
        info = np.iinfo(target)
        out = m.where(m.isnan(x) | (x == -np.inf), wide.type(0), m.clip(out, info.min, info.max))
    if target.kind == "u" and np.iinfo(target).bits == 8 * wide.itemsize:
        unsigned = (x >= -float(lo)) & (x < -2.0 * lo)
        return m.where(unsigned, m.where(unsigned, x, 0).astype(target), out.astype(target))
    return out.astype(target)


@register("Cast")
def _cast_op(node):
    """Casts to `DstT` with C semantics: float -> int truncates toward zero, nonzero -> True,
    complex -> real keeps the real part. `Truncate=True` truncates float mantissas instead of
    rounding to nearest (float -> bfloat16/half).
    """
    dst = node.attr_dtype("DstT")
    truncate = node.attr_bool("Truncate", False)
    if dst.kind in "OSU":
        raise GraphError(f"node {node.name!r} (Cast): casting to strings is not supported (DstT={dst})")

    def fn(x):
        if static(x):
            x = np.asarray(x)
            if x.dtype.kind in "OSU":
                raise GraphError(f"node {node.name!r} (Cast): casting strings to numbers is not supported")
            if x.dtype.kind == "c" and dst.kind != "c":
                x = x.real
            if truncate and _is_float(x) and _floating(dst):
                x = _truncate_mantissa(x, x.dtype, dst)
            if _is_float(x) and dst.kind in "iu":
                with np.errstate(invalid="ignore"):
                    return np.asarray(_float_to_int(np, x, dst))
            return x.astype(dst)
        x = jnp.asarray(x)
        if jnp.iscomplexobj(x) and dst.kind != "c":
            x = jnp.real(x)
        target = jax.dtypes.canonicalize_dtype(dst)
        if truncate and _is_float(x) and _floating(target):
            x = _truncate_mantissa(x, np.dtype(x.dtype), np.dtype(target))
        if _is_float(x) and target.kind in "iu":
            return _float_to_int(jnp, x, np.dtype(target))
        return x.astype(target)

    return fn


@register("StochasticCastToInt")
def _stochastic_cast_to_int(node):
    """StochasticCastToInt(input, key, counter, alg): each float rounded down or up to an integer,
    up with probability its distance from the integer below, as TF's kernel rounds (`floor(x + u)`
    below zero, `floor(x + 1 - u)` above, u uniform in [0, 1) in the input's type; integers stay);
    NaN gives 0 and values at or past the bounds of `Tout` (as the input's type holds them: 2**31
    in float32 for int32) those bounds, then cast as TF's CPU kernels cast (`_float_to_int`: 2**31
    becomes int32's minimum on x86). The draws come from a JAX key made of `key` and `counter` as
    the stateless random ops make theirs (`random.py`): the same key and counter give the same
    rounding, though not TF's (its Philox stream cannot be reproduced); `alg` is not read."""
    target = np.dtype(jax.dtypes.canonicalize_dtype(node.attr_dtype("Tout")))
    info = np.iinfo(target)

    def fn(x, key, counter, alg):
        x = jnp.asarray(x)
        u = jax.random.uniform(_key_from_key_counter(key, counter), x.shape, x.dtype)
        with np.errstate(over="ignore"):  # int32's bounds in float16 are infinite
            lo, hi = (np.asarray(b).astype(x.dtype) for b in (info.min, info.max))
        up = jnp.floor(x + jnp.ones((), x.dtype) - u)
        rounded = jnp.where(jnp.floor(x) == x, x, jnp.where(x < 0, jnp.floor(x + u), up))
        rounded = jnp.where(x >= hi, hi, jnp.where(x <= lo, lo, rounded))
        return _float_to_int(jnp, jnp.where(jnp.isnan(x), jnp.zeros((), x.dtype), rounded), target)

    return fn


@register("Select")
def _select(node):
    # The original Select does not broadcast, except that a vector condition picks rows
    # (slices along the first axis) of higher-rank branches.
    def fn(cond, t, e):
        if np.ndim(cond) == 1 and np.ndim(t) > 1:
            shape = (-1,) + (1,) * (np.ndim(t) - 1)
            cond = np.reshape(cond, shape) if static(cond) else jnp.reshape(cond, shape)
        cond, t, e = broadcast_ranks(cond, t, e)
        return xnp(cond, t, e).where(cond, t, e)

    return fn


@register("SelectV2")
def _select_v2(node):
    def fn(cond, t, e):
        cond, t, e = broadcast_ranks(cond, t, e)
        return xnp(cond, t, e).where(cond, t, e)

    return fn


@register("ClipByValue")
def _clip_by_value(node):
    # TF computes max(min(t, hi), lo) (lo wins when lo > hi); `where` gives TF's gradient: none
    # for t outside [lo, hi], all of it to the bound that was taken.
    def clip(t, lo, hi):
        m = xnp(t, lo, hi)
        t = m.where(t > hi, hi, t)
        return m.where(t < lo, lo, t)

    def fn(t, lo, hi):
        t, lo, hi = broadcast_ranks(t, lo, hi)
        if jnp.iscomplexobj(t):
            # TF clips a complex number's real and imaginary parts each by the bounds' own.
            m = xnp(t, lo, hi)
            re = clip(m.real(t), m.real(lo), m.real(hi))
            im = clip(m.imag(t), m.imag(lo), m.imag(hi))
            if m is np:
                out = np.empty(np.shape(re), np.asarray(t).dtype)
                out.real, out.imag = re, im
                return out
            return lax.complex(re, im)
        return clip(t, lo, hi)

    return fn


# -- scans ----------------------------------------------------------------------------------------


def _scan(node, jnp_scan, np_scan, identity):
    """Cumsum/Cumprod/CumulativeLogsumexp along a constant `axis`.

    `exclusive` shifts the scan by one (the first output is `identity`); `reverse` scans from the
    end. NumPy computes static inputs.
    """
    exclusive = node.attr_bool("exclusive", False)
    reverse = node.attr_bool("reverse", False)

    def fn(x, axis):
        axis = int(_const(node, axis, "axis"))
        rank = np.ndim(x)
        if not -rank <= axis < rank:
            raise GraphError(f"node {node.name!r} ({node.type}): axis {axis} out of range for rank {rank}")
        axis %= rank
        m = xnp(x)
        if reverse:
            x = m.flip(x, axis)
        if exclusive and x.shape[axis] > 0:
            pad_shape = list(x.shape)
            pad_shape[axis] = 1
            first = m.full(pad_shape, identity, dtype=x.dtype)
            rest = lax.slice_in_dim(x, 0, x.shape[axis] - 1, axis=axis) if m is jnp else np.take(
                x, np.arange(x.shape[axis] - 1), axis=axis
            )
            x = m.concatenate([first, rest], axis=axis)
        y = np_scan(x, axis) if m is np else jnp_scan(x, axis)
        return m.flip(y, axis) if reverse else y

    return fn


@register("Cumsum")
def _cumsum(node):
    return _scan(node, lambda x, a: lax.cumsum(x, a), lambda x, a: np.cumsum(x, a, dtype=x.dtype), 0)


@register("Cumprod")
def _cumprod(node):
    return _scan(node, lambda x, a: lax.cumprod(x, a), lambda x, a: np.cumprod(x, a, dtype=x.dtype), 1)


@register("CumulativeLogsumexp")
def _cumulative_logsumexp(node):
    return _scan(
        node,
        lambda x, a: lax.cumlogsumexp(x, a),
        lambda x, a: np.logaddexp.accumulate(x, axis=a).astype(x.dtype),
        -np.inf,
    )


# -- reductions -----------------------------------------------------------------------------------


def _axes(node, axis, rank: int) -> tuple[int, ...]:
    axis = _const(node, axis, "reduction_indices").reshape(-1)
    out = []
    for a in axis.tolist():
        if not -rank <= a < max(rank, 1):
            raise GraphError(f"node {node.name!r} ({node.type}): axis {a} out of range for rank {rank}")
        out.append(a % rank if rank else 0)
    return tuple(sorted(set(out))) if rank else ()


def _reduction(reduce):
    """Builder for Sum/Prod/Max/...: `reduce(m, x, axes)` with m = numpy or jax.numpy.

    The axis input must be a constant (scalar or vector, negative values count from the end; an
    empty list reduces nothing); `keep_dims` keeps reduced axes with size 1. Sums and products keep
    the input dtype (TF does not widen small integers).
    """

    def build(node):
        keep = node.attr_bool("keep_dims", False)

        def fn(x, axis):
            axes = _axes(node, axis, np.ndim(x))
            m = xnp(x)
            y = reduce(m, x, axes)
            if keep:
                y = m.reshape(y, [1 if i in axes else d for i, d in enumerate(np.shape(x))])
            return y

        return fn

    return build


def _reduced_size(x, axes) -> int:
    return int(np.prod([np.shape(x)[a] for a in axes], dtype=np.int64))


def _sum(m, x, axes):
    return m.sum(x, axis=axes, dtype=x.dtype)


def _prod(m, x, axes):
    return m.prod(x, axis=axes, dtype=x.dtype)


def _mean(m, x, axes):
    n = _reduced_size(x, axes)
    if _is_int(x):
        # Integer Mean divides the integer sum by the count, truncating (TF's Div). TF sums types
        # up to 32 bits in 64 (int64 wraps); without x64, 8- and 16-bit types sum in 32.
        wide = np.dtype(np.int64 if x.dtype.kind == "i" else np.uint64)
        if m is jnp and not jax.config.jax_enable_x64:
            wide = np.dtype(np.int32 if x.dtype.kind == "i" else np.uint32)
        wide = max(wide, np.dtype(x.dtype), key=lambda d: d.itemsize)
        total = m.sum(x, axis=axes, dtype=wide)
        return _div(total, np.asarray(max(n, 1), wide)).astype(x.dtype)
    if n == 0:
        return m.full([d for i, d in enumerate(np.shape(x)) if i not in axes], np.nan, x.dtype)
    return m.mean(x, axis=axes, dtype=x.dtype)


def _extreme(which):
    def reduce(m, x, axes):
        f = m.max if which == "max" else m.min
        if _reduced_size(x, axes) == 0:
            # An empty reduction gives the identity: the lowest (highest) value of the dtype.
            if _is_float(x):
                init = -np.inf if which == "max" else np.inf
            else:
                info = np.iinfo(x.dtype)
                init = info.min if which == "max" else info.max
            return f(x, axis=axes, initial=init)
        return f(x, axis=axes)

    return reduce


def _euclidean_norm(m, x, axes):
    if m.iscomplexobj(x):
        return m.sqrt(m.sum(x * m.conj(x), axis=axes))
    if _is_int(x):
        # TF squares and sums in the integer type (wrapping) and truncates the square root.
        s = m.sum(x * x, axis=axes, dtype=x.dtype)
        return _float_to_int(m, m.sqrt(s.astype(np.float64 if m is np else jnp.float32)), np.dtype(x.dtype))
    return m.sqrt(m.sum(x * x, axis=axes, dtype=x.dtype))


register_table({
    "Sum": _reduction(_sum),
    "Prod": _reduction(_prod),
    "Mean": _reduction(_mean),
    "Max": _reduction(_extreme("max")),
    "Min": _reduction(_extreme("min")),
    "All": _reduction(lambda m, x, axes: m.all(x, axis=axes)),
    "Any": _reduction(lambda m, x, axes: m.any(x, axis=axes)),
    "EuclideanNorm": _reduction(_euclidean_norm),
})


@register("ArgMax", "ArgMin")
def _arg_extreme(node):
    dtype = _out_dtype(node, "output_type", np.dtype(np.int64))
    is_max = node.type == "ArgMax"

    def fn(x, dimension):
        axis = int(_const(node, dimension, "dimension"))
        m = xnp(x)
        if _floating(_dtype(x)):
            # TF never picks a NaN (its comparisons with NaN are false): NaN ranks as -inf
            # (ArgMax) or inf (ArgMin), and a tie goes to the first, as in jnp.
            x = m.where(m.isnan(x), -np.inf if is_max else np.inf, x).astype(_dtype(x))
        y = (m.argmax if is_max else m.argmin)(x, axis=axis)
        return _cast(y, dtype)

    return fn


# -- counting -------------------------------------------------------------------------------------


def _count(values, size: int, weights, dtype, binary_output: bool):
    """Counts (or sums weights of) values in [0, size) along the last axis; others are dropped."""
    values = jnp.asarray(values)
    if weights is None or np.size(weights) == 0:
        weights = jnp.ones(values.shape, dtype)
    weights = jnp.asarray(weights).astype(dtype)
    # Out-of-range values (TF rejects negatives, ignores values >= size) land in a dropped bin.
    idx = jnp.where((values >= 0) & (values < size), values, size)
    if values.ndim == 1:
        if binary_output:
            return jnp.zeros((size,), dtype).at[idx].max(jnp.ones_like(weights), mode="drop")
        return jnp.zeros((size,), dtype).at[idx].add(weights, mode="drop")
    rows = jnp.broadcast_to(jnp.arange(values.shape[0])[:, None], values.shape)
    if binary_output:
        return jnp.zeros((values.shape[0], size), dtype).at[rows, idx].max(jnp.ones_like(weights), mode="drop")
    return jnp.zeros((values.shape[0], size), dtype).at[rows, idx].add(weights, mode="drop")


def _non_negative(node, values) -> None:
    """TF's bincount kernels refuse negative values (checked where they are known; under jit they
    are dropped)."""
    value = checked(values)
    if value is not None and value.size and value.min() < 0:
        raise GraphError(f"node {node.name!r} ({node.type}): a value is negative ({value.min()}), which TF "
                         "refuses to count")


@register("Bincount")
def _bincount(node):
    dtype = jax.dtypes.canonicalize_dtype(node.attr_dtype("T"))

    def fn(arr, size, weights):
        n = int(_const(node, size, "size"))
        _non_negative(node, arr)
        return _count(jnp.reshape(arr, (-1,)), n, jnp.reshape(weights, (-1,)), dtype, False)

    return fn


@register("DenseBincount")
def _dense_bincount(node):
    dtype = jax.dtypes.canonicalize_dtype(node.attr_dtype("T"))
    binary_output = node.attr_bool("binary_output", False)

    def fn(values, size, weights):
        n = int(_const(node, size, "size"))
        if np.ndim(values) not in (1, 2):
            raise GraphError(f"node {node.name!r} (DenseBincount): input must be rank 1 or 2")
        _non_negative(node, values)
        return _count(values, n, weights, dtype, binary_output)

    return fn


# -- matrix products ------------------------------------------------------------------------------


def _adjoint(x, conj: bool = True):
    x = jnp.swapaxes(x, -1, -2)
    return jnp.conj(x) if conj and jnp.iscomplexobj(x) else x


@register("MatMul", "SparseMatMul")
def _matmul(node):
    # SparseMatMul is MatMul with sparsity hints (and possibly bfloat16 inputs, float32 output).
    ta = node.attr_bool("transpose_a", False)
    tb = node.attr_bool("transpose_b", False)
    sparse = node.type == "SparseMatMul"

    def fn(a, b):
        a, b = jnp.asarray(a), jnp.asarray(b)
        if sparse:
            a, b = a.astype(jnp.float32), b.astype(jnp.float32)
        if ta:
            a = a.T
        if tb:
            b = b.T
        return jnp.matmul(a, b)

    return fn


@register("BatchMatMul", "BatchMatMulV2", "BatchMatMulV3")
def _batch_matmul(node):
    """Batched matrix product; `adj_x`/`adj_y` take conjugate transposes. V2/V3 broadcast the
    batch dimensions; V3 casts the product to `Tout`."""
    adj_x = node.attr_bool("adj_x", False)
    adj_y = node.attr_bool("adj_y", False)
    dtype = _out_dtype(node, "Tout")

    def fn(x, y):
        x, y = jnp.asarray(x), jnp.asarray(y)
        if dtype is not None:
            x, y = x.astype(dtype), y.astype(dtype)
        if adj_x:
            x = _adjoint(x)
        if adj_y:
            y = _adjoint(y)
        x, y = broadcast_ranks(x, y)
        return jnp.matmul(x, y)

    return fn


@register("Einsum")
def _einsum(node):
    equation = node.attr_str("equation")

    def fn(*xs):
        return jnp.einsum(equation, *xs)

    return fn


# -- FFT ------------------------------------------------------------------------------------------


def _fft(kind: str, rank: int | None):
    """Builder for FFT/IFFT/RFFT/IRFFT over the innermost `rank` axes, or (rank None) for their ND
    forms FFTND/IFFTND/RFFTND/IRFFTND, whose third input names the axes; `fft_length` (and `axes`)
    must be constant."""

    def build(node):
        real_dtype = _out_dtype(node, "Treal", np.dtype(np.float32))
        complex_dtype = _out_dtype(node, "Tcomplex", np.dtype(np.complex64))

        def transform(x, s, axes):
            # jnp.fft crops or zero-pads each axis to its length in `s` first (irfftn the last one
            # to s[-1] // 2 + 1), as TF's kernels and FFTND's documentation do.
            if kind == "fft":
                return jnp.fft.fftn(x, s=s, axes=axes)
            if kind == "ifft":
                return jnp.fft.ifftn(x, s=s, axes=axes)
            if kind == "rfft":
                return _cast(jnp.fft.rfftn(x, s=s, axes=axes), complex_dtype)
            return _cast(jnp.fft.irfftn(x, s=s, axes=axes), real_dtype)

        if rank is not None:
            axes = tuple(range(-rank, 0))
            if kind in ("fft", "ifft"):
                return lambda x: transform(x, None, axes)
            return lambda x, fft_length: transform(
                x, [int(n) for n in _const(node, fft_length, "fft_length").reshape(-1)], axes
            )

        def fn(x, fft_length, axes):
            shape = np.shape(x)
            s = _fftnd_lengths(node, kind, shape, fft_length, axes)
            if 0 in s:  # an empty output (TF's shape), which jnp.fft refuses to make
                dims = list(s)
                if kind == "rfft" and dims[-1]:
                    dims[-1] = dims[-1] // 2 + 1
                dtype = {"rfft": complex_dtype, "irfft": real_dtype}.get(kind, _dtype(x))
                return jnp.zeros(tuple(shape[: len(shape) - len(s)]) + tuple(dims), dtype)
            return transform(x, s, tuple(range(-len(s), 0)))

        return fn

    return build


def _fftnd_lengths(node, kind: str, shape, fft_length, axes) -> list[int]:
    """The FFT lengths of an FFTND/IFFTND/RFFTND/IRFFTND node, after the checks of TF's kernel,
    which transforms only the innermost axes: `axes` (negative ones count from the end) must be
    successive and ascending and end with the last axis. TF's only kernel (cuFFT, GPU) also
    refuses more than 3 axes; jaxmeta transforms any number."""
    where = f"node {node.name!r} ({node.type})"
    lengths = np.asarray(_const(node, fft_length, "fft_length"))
    axes = np.asarray(_const(node, axes, "axes"))
    rank = len(shape)
    if axes.ndim != 1 or axes.size == 0 or lengths.shape != axes.shape:
        raise GraphError(
            f"{where}: axes and fft_length must be non-empty vectors of the same length, got axes "
            f"{axes.tolist()} and fft_length {lengths.tolist()}"
        )
    k = axes.size
    if k > rank:
        raise GraphError(f"{where}: the input must have rank at least len(axes) = {k}, got shape {shape}")
    if [int(a) + rank if a < 0 else int(a) for a in axes] != list(range(rank - k, rank)):
        raise GraphError(
            f"{where}: TF transforms only the innermost axes: axes must be successive, ascending and end "
            f"with the last axis (-1), got {axes.tolist()} for rank {rank}; transpose the input first"
        )
    s = [int(n) for n in lengths]
    if min(s) < 0:
        raise GraphError(f"{where}: fft_length must not be negative, got {s}")
    if kind in ("rfft", "irfft"):
        # Real transforms crop but never pad (tf.signal.rfftnd pads before): TF's kernel refuses
        # an input shorter than fft_length (the last axis of IRFFTND's: fft_length // 2 + 1).
        need = s[:-1] + [s[-1] // 2 + 1 if kind == "irfft" else s[-1]]
        have = list(shape[rank - k :])
        if any(0 < h < n for h, n in zip(have, need)):
            raise GraphError(
                f"{where}: the input's innermost dimensions {have} must be at least {need} (from "
                f"fft_length {s}); pad the input first"
            )
    return s


for _kind in ("fft", "ifft", "rfft", "irfft"):
    for _rank, _suffix in ((1, ""), (2, "2D"), (3, "3D"), (None, "ND")):
        register(_kind.upper() + _suffix)(_fft(_kind, _rank))


# -- linear algebra -------------------------------------------------------------------------------


@register("MatrixInverse", "BatchMatrixInverse")
def _matrix_inverse(node):
    adjoint = node.attr_bool("adjoint", False)

    def fn(x):
        x = jnp.asarray(x)
        return jnp.linalg.inv(_adjoint(x) if adjoint else x)

    return fn


@register("MatrixDeterminant", "BatchMatrixDeterminant")
def _matrix_determinant(node):
    return lambda x: jnp.linalg.det(x)


@register("LogMatrixDeterminant")
def _log_matrix_determinant(node):
    def fn(x):
        sign, logdet = jnp.linalg.slogdet(x)
        return sign, logdet.astype(sign.dtype)

    return fn


@register("Cholesky", "BatchCholesky")
def _cholesky(node):
    # TF reads only the lower triangle (the upper one may hold anything): mirror it before factoring.
    def fn(x):
        x = jnp.asarray(x)
        return lax.linalg.cholesky(jnp.tril(x) + _adjoint(jnp.tril(x, -1)), symmetrize_input=False)

    return fn


@register("CholeskyGrad", "BatchCholeskyGrad")
def _cholesky_grad(node):
    """TF1's gradient op of Cholesky (Murray's "Differentiation of the Cholesky algorithm"): from
    l = cholesky(a) and dl (only its lower triangle is read), the symmetrized da, in the closed form
    TF's later Python gradient writes: L^-H Phi(L^H dl) L^-1, Phi keeping the lower triangle with its
    diagonal halved, then (x + x^H) / 2."""

    def fn(factor, grad):
        factor, grad = jnp.asarray(factor), jnp.asarray(grad)
        middle = jnp.tril(_adjoint(factor) @ jnp.tril(grad))
        middle = middle - 0.5 * jnp.tril(jnp.triu(middle))  # the diagonal halved
        # L^-H middle L^-1 as two triangular solves
        left = lax.linalg.triangular_solve(factor, middle, left_side=True, lower=True, transpose_a=True,
                                           conjugate_a=True)
        out = lax.linalg.triangular_solve(factor, left, left_side=False, lower=True)
        return 0.5 * (out + _adjoint(out))

    return fn


@register("Lu")
def _lu(node):
    """`tf.linalg.lu`: the packed LU factors of P A (partial pivoting, as LAPACK's getrf) and the
    permutation P as row indices. TF refuses a singular matrix (a zero pivot): so does jaxmeta
    where the values are known; under jit the factors keep their zero."""
    index_dtype = jax.dtypes.canonicalize_dtype(node.attr_dtype("output_idx_type", np.dtype(np.int32)))

    def fn(x):
        lu, _, permutation = lax.linalg.lu(jnp.asarray(x))
        factors = checked(lu)
        if factors is not None and (np.diagonal(factors, axis1=-2, axis2=-1) == 0).any():
            raise GraphError(f"node {node.name!r} ({node.type}): the matrix is not invertible (a zero pivot), "
                             "which TF rejects")
        return lu, permutation.astype(index_dtype)

    return fn


def _broadcast_batch(a, b):
    """Broadcasts the batch dimensions (all but the last two) of two matrix stacks."""
    a, b = broadcast_ranks(jnp.asarray(a), jnp.asarray(b))
    batch = jnp.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    return jnp.broadcast_to(a, batch + a.shape[-2:]), jnp.broadcast_to(b, batch + b.shape[-2:])


@register("MatrixTriangularSolve", "BatchMatrixTriangularSolve")
def _matrix_triangular_solve(node):
    lower = node.attr_bool("lower", True)
    adjoint = node.attr_bool("adjoint", False)

    def fn(matrix, rhs):
        matrix, rhs = _broadcast_batch(matrix, rhs)
        return lax.linalg.triangular_solve(
            matrix, rhs, left_side=True, lower=lower, transpose_a=adjoint, conjugate_a=adjoint
        )

    return fn


@register("MatrixSolve", "BatchMatrixSolve")
def _matrix_solve(node):
    adjoint = node.attr_bool("adjoint", False)

    def fn(matrix, rhs):
        matrix = jnp.asarray(matrix)
        if adjoint:
            matrix = _adjoint(matrix)
        return jnp.linalg.solve(matrix, jnp.asarray(rhs))

    return fn


@register("MatrixSolveLs")
def _matrix_solve_ls(node):
    """Regularized least squares through the normal equations (TF's `fast=True` path)."""
    if not node.attr_bool("fast", True):
        raise GraphError(
            f"node {node.name!r} (MatrixSolveLs): fast=False (complete orthogonal decomposition) is not "
            "supported; only fast=True (normal equations, as TF's default)"
        )

    def fn(matrix, rhs, l2_regularizer):
        a, b = jnp.asarray(matrix), jnp.asarray(rhs)
        m, n = a.shape[-2:]
        l2 = jnp.asarray(l2_regularizer).astype(a.dtype)
        ah = _adjoint(a)
        if m >= n:
            return _cholesky_solve(_add_diagonal(ah @ a, l2), ah @ b)
        return ah @ _cholesky_solve(_add_diagonal(a @ ah, l2), b)

    return fn


def _add_diagonal(x, value):
    i = jnp.arange(x.shape[-1])
    return x.at[..., i, i].add(value)


def _cholesky_solve(gram, rhs):
    chol = lax.linalg.cholesky(gram, symmetrize_input=False)
    y = lax.linalg.triangular_solve(chol, rhs, left_side=True, lower=True)
    return lax.linalg.triangular_solve(chol, y, left_side=True, lower=True, transpose_a=True, conjugate_a=True)


@register("Qr")
def _qr(node):
    mode = "complete" if node.attr_bool("full_matrices", False) else "reduced"
    return lambda x: tuple(jnp.linalg.qr(x, mode=mode))


@register("Svd")
def _svd(node):
    """Singular values `s` and, with `compute_uv`, `u` and `v` (TF returns v, not v^H)."""
    compute_uv = node.attr_bool("compute_uv", True)
    full = node.attr_bool("full_matrices", False)

    def fn(x):
        x = jnp.asarray(x)
        if not compute_uv:
            s = jnp.linalg.svd(x, compute_uv=False)
            # TF leaves u and v unset (scalars of undefined value) without compute_uv.
            return s, jnp.zeros((), x.dtype), jnp.zeros((), x.dtype)
        u, s, vh = jnp.linalg.svd(x, full_matrices=full)
        return s, u, _adjoint(vh)

    return fn


def _eigh(x, compute_v: bool):
    """Eigenvalues (ascending) and, with `compute_v`, eigenvectors of self-adjoint matrices. TF's
    kernels (Eigen's SelfAdjointEigenSolver) read the lower triangle only: it is mirrored first,
    so the gradient of the upper triangle is zero, as TF's. Without `compute_v` TF leaves `v` unset
    (a scalar at run time)."""
    x = jnp.asarray(x)
    x = jnp.tril(x) + _adjoint(jnp.tril(x, -1))
    if not compute_v:
        return jnp.linalg.eigvalsh(x), jnp.zeros((), x.dtype)
    e, v = jnp.linalg.eigh(x)
    return e, v


@register("SelfAdjointEigV2", "BatchSelfAdjointEigV2")
def _self_adjoint_eig(node):
    compute_v = node.attr_bool("compute_v", True)
    return lambda x: _eigh(x, compute_v)


@register("SelfAdjointEig", "BatchSelfAdjointEig")
def _self_adjoint_eig_v1(node):
    """TF1's eigendecomposition: ONE tensor [..., N+1, N], the eigenvalues (ascending) in its first
    row and the eigenvectors (columns) below them. TF removed it at GraphDef version 11 (it runs it
    only in graphs that old); it defines no gradient for it."""

    def fn(x):
        e, v = _eigh(x, compute_v=True)
        return jnp.concatenate([e.astype(v.dtype)[..., None, :], v], axis=-2)

    return fn


# -- matrix functions: square root, exponential, logarithm ----------------------------------------


def _mm(a, b):
    # Full float32 precision (no TF32 or bfloat16 passes on accelerators) inside the iterations.
    return jnp.matmul(a, b, precision=lax.Precision.HIGHEST)


def _eye_like(x):
    """Identity matrices of x's shape [..., n, n] and dtype."""
    return jnp.broadcast_to(jnp.eye(x.shape[-1], dtype=x.dtype), x.shape)


def _norm_fro(x):
    return jnp.sqrt(jnp.sum(jnp.abs(x) ** 2, axis=(-2, -1)))


def _norm_1(x):
    return jnp.max(jnp.sum(jnp.abs(x), axis=-2), axis=-1)


def _at_matrix(mask):
    """A per-matrix boolean mask [...] as [..., 1, 1], to select whole matrices."""
    return mask[..., None, None]


def _sqrtm_triu(t):
    """The principal square root of upper-triangular matrices (Bjorck and Hammarling's recurrence,
    as Eigen's `matrix_sqrt_triangular`), one column per step: column j above the diagonal solves
    the triangular system (U[:j, :j] + U[j, j] I) u = T[:j, j]. A zero denominator (two zero
    eigenvalues) gives inf/NaN, as in Eigen."""
    n = t.shape[-1]
    idx = jnp.arange(n)
    u = jnp.sqrt(jnp.diagonal(t, axis1=-2, axis2=-1))
    r = jnp.zeros_like(t).at[..., idx, idx].set(u)

    def column(j, r):
        lead = idx < j
        block = jnp.where(lead[:, None] & lead[None, :], r, 0)
        block = block.at[..., idx, idx].set(jnp.where(lead, u + u[..., j, None], 1))
        rhs = jnp.where(lead, t[..., :, j], 0)[..., None]
        col = lax.linalg.triangular_solve(block, rhs, left_side=True, lower=False)[..., 0]
        return r.at[..., :, j].set(jnp.where(lead, col, r[..., :, j]))

    return lax.fori_loop(1, n, column, r)


def _sqrtm_schur(a):
    """sqrtm through the complex Schur form (LAPACK's gees: the CPU only); a real matrix's comes
    from its real Schur form (rsf2csf: much faster than a complex gees). A real matrix with a
    negative real eigenvalue has no real square root: NaN, as TF's real Schur method gives."""
    if jnp.iscomplexobj(a):
        t, z = lax.linalg.schur(a)
        return _mm(_mm(z, _sqrtm_triu(t)), _adjoint(z))
    quasi, z = lax.linalg.schur(a)
    # The real Schur form shows real eigenvalues exactly: its 1x1 diagonal blocks.
    d = jnp.diagonal(quasi, axis1=-2, axis2=-1)
    sub = jnp.diagonal(quasi, -1, axis1=-2, axis2=-1) != 0
    pad = jnp.zeros(sub.shape[:-1] + (1,), bool)
    in_pair = jnp.concatenate([sub, pad], -1) | jnp.concatenate([pad, sub], -1)
    negative = jnp.any((d < 0) & ~in_pair, axis=-1)
    t, z = jax.scipy.linalg.rsf2csf(quasi, z)
    root = _mm(_mm(z, _sqrtm_triu(t)), _adjoint(z)).real.astype(a.dtype)
    return jnp.where(_at_matrix(negative), jnp.nan, root)


def _converge(step, state, err, n: int, max_steps: int = 100):
    """Runs `state, err = step(state, err)` on every n x n matrix of a batch until each one's error
    is at the rounding level (or stops falling there); returns the state and the final errors."""
    tol = 10 * n * float(np.finfo(err.dtype).eps)

    def cond(carry):
        k, _, _, active = carry
        return (k < max_steps) & jnp.any(active)

    def body(carry):
        k, state, err, active = carry
        new_state, new_err = step(state, err)
        keep = _at_matrix(active)
        state = jax.tree.map(lambda new, old: jnp.where(keep, new, old), new_state, state)
        stalled = (new_err >= err) & (err < 1e-2)
        err = jnp.where(active, new_err, err)
        return k + 1, state, err, active & (err > tol) & ~stalled

    _, state, err, _ = lax.while_loop(cond, body, (0, state, err, jnp.ones(err.shape, bool)))
    return state, err


def _sqrtm_newton(a):
    """sqrtm by the scaled product-form Denman-Beavers iteration (Higham, "Functions of Matrices",
    (6.29) with determinant scaling): matmuls and inverses only, so it runs on every backend. It
    needs a matrix without eigenvalues on the closed negative real axis (zero included); where the
    iteration cannot converge the result is NaN."""
    n = a.shape[-1]
    eye = _eye_like(a)

    def step(state, err):
        m, y = state
        m_inv = jnp.linalg.inv(m)
        logdet = jnp.linalg.slogdet(m)[1]
        mu = jnp.where(err > 1e-2, jnp.exp(-logdet / (2 * n)), 1).astype(a.dtype)[..., None, None]
        scaled_inv = m_inv / (mu * mu)
        m = 0.5 * (eye + 0.5 * (mu * mu * m + scaled_inv))
        y = 0.5 * mu * _mm(y, eye + scaled_inv)
        return (m, y), _norm_fro(m - eye)

    (_, y), err = _converge(step, (a, a), _norm_fro(a - eye), n)
    return jnp.where(_at_matrix(err < 0.5), y, jnp.nan)


def _sylvester_sign(r, c):
    """X with R X + X R = C for R with eigenvalues in the open right half plane, by the scaled
    Newton iteration for sign([[R, C], [0, -R]]) (Roberts' method): matmuls and inverses only."""
    n = r.shape[-1]
    eye = _eye_like(r)

    def step(state, err):
        rk, ck = state
        inv = jnp.linalg.inv(rk)
        mu = jnp.where(err > 1e-2, jnp.exp(-jnp.linalg.slogdet(rk)[1] / n), 1).astype(r.dtype)[..., None, None]
        rk = 0.5 * (mu * rk + inv / mu)
        ck = 0.5 * (mu * ck + _mm(_mm(inv, ck), inv) / mu)
        return (rk, ck), _norm_fro(rk - eye)

    (_, ck), _ = _converge(step, (r, c), _norm_fro(r - eye), n)
    return 0.5 * ck


@jax.custom_jvp
def _sqrtm(a):
    if a.shape[-1] == 0:
        return a
    return lax.platform_dependent(a, cpu=_sqrtm_schur, default=_sqrtm_newton)


@_sqrtm.defjvp
def _sqrtm_jvp(primals, tangents):
    # dR solves the Sylvester equation R dR + dR R = dA (as TF's gradient, which solves it through
    # an N^2 x N^2 Kronecker system); as a custom linear solve it transposes for reverse mode.
    (a,), (da,) = primals, tangents
    r = _sqrtm(a)
    if a.shape[-1] == 0:
        return r, da
    rt = jnp.swapaxes(r, -1, -2)
    dr = lax.custom_linear_solve(
        lambda x: _mm(r, x) + _mm(x, r), da,
        solve=lambda _, b: _sylvester_sign(r, b),
        transpose_solve=lambda _, b: _sylvester_sign(rt, b))
    return r, dr


@register("MatrixSquareRoot")
def _matrix_square_root(node):
    """`tf.linalg.sqrtm`: the principal square root. On the CPU through the complex Schur form, as
    TF's kernel (Eigen's MatrixSquareRoot). jax's Schur decomposition (LAPACK's gees) runs on the
    CPU only: other backends take the Denman-Beavers iteration (`_sqrtm_newton`), which gives NaN
    for a matrix with an eigenvalue on the closed negative real axis (zero included), where TF's
    complex kernel returns a square root. A real matrix with a negative real eigenvalue has no real
    square root: NaN on every backend, as TF's. The gradient solves R dR + dR R = dA, as TF's (a
    Kronecker-product solve there, Newton's sign iteration here, on every backend)."""
    return _sqrtm


def _pade_log1p(x):
    """log(I + X) for ||X|| <= 1/4 by the [8/8] Pade approximant in partial fractions (Gauss-Legendre
    nodes on [0, 1]; Higham, "Functions of Matrices", (11.18)): sum_j w_j X (I + t_j X)^-1."""
    nodes, weights = np.polynomial.legendre.leggauss(8)
    eye = _eye_like(x)
    out = jnp.zeros_like(x)
    for t, w in zip((nodes + 1) / 2, weights / 2):
        out = out + w * jnp.linalg.solve(eye + t * x, x)
    return out


def _logm_iss(a, sqrt):
    """log(A) by inverse scaling and squaring: k square roots until ||A^(1/2^k) - I||_1 <= 1/4,
    then 2^k log(I + (A^(1/2^k) - I)) by a Pade approximant. NaN where the roots do not approach I
    (a zero eigenvalue) within 64 steps."""
    eye = _eye_like(a)

    def cond(carry):
        k, _, _, active = carry
        return (k < 64) & jnp.any(active)

    def body(carry):
        k, x, steps, active = carry
        x = jnp.where(_at_matrix(active), sqrt(x), x)
        steps = steps + active
        return k + 1, x, steps, active & ~(_norm_1(x - eye) <= 0.25)

    active = ~(_norm_1(a - eye) <= 0.25)
    _, x, steps, active = lax.while_loop(cond, body, (0, a, jnp.zeros(active.shape, jnp.int32), active))
    scale = jnp.exp2(steps.astype(jnp.finfo(a.dtype).dtype)).astype(a.dtype)
    return jnp.where(_at_matrix(active), jnp.nan, _at_matrix(scale) * _pade_log1p(x - eye))


def _logm_schur(a):
    # Inverse scaling and squaring on the triangular Schur factor (Higham's ISS-Schur; CPU only).
    t, z = lax.linalg.schur(a)
    return _mm(_mm(z, _logm_iss(t, _sqrtm_triu)), _adjoint(z))


@register("MatrixLogarithm")
def _matrix_logarithm(node):
    """`tf.linalg.logm` (complex64/complex128 only, as TF): the principal logarithm by inverse
    scaling and squaring with an [8/8] Pade approximant. On the CPU it works on the triangular Schur
    factor; jax's Schur decomposition runs on the CPU only, so other backends take Denman-Beavers
    square roots of the whole matrix, which give NaN for an eigenvalue on the closed negative real
    axis (TF returns the logarithm there, imaginary part pi). TF's kernel (Eigen's MatrixLogarithm,
    Schur-Parlett) agrees to rounding. A singular matrix gives NaN (TF: infinities and NaN). TF
    defines no gradient for it; jaxmeta's cannot be reverse-differentiated (a while loop)."""
    return _logm


def _logm(x):
    if x.shape[-1] == 0:
        return x
    return lax.platform_dependent(x, cpu=_logm_schur, default=lambda a: _logm_iss(a, _sqrtm_newton))


@register("MatrixExponential")
def _matrix_exponential(node):
    """TF1's `tf.linalg.expm` op (removed at GraphDef version 27; TF runs it only in graphs that
    old, and later builds expm from other ops): jax.scipy.linalg.expm, the same scaling and
    squaring Pade method as TF's kernel (Eigen's MatrixExponential). jax squares at most 16 times:
    matrices whose 1-norm is past 2^16 * 3.9 (float32; 5.4 for float64) come back NaN where TF
    squares on (and mostly overflows). TF defines no gradient for the op; jaxmeta's is jax's."""

    def fn(x):
        x = jnp.asarray(x)
        if x.shape[-1] == 0:
            return x
        return jax.scipy.linalg.expm(x)

    return fn


# -- general eigendecomposition -------------------------------------------------------------------


@register("Eig")
def _eig(node):
    """`tf.linalg.eig`: complex eigenvalues and (with `compute_v`) unit-norm right eigenvectors,
    by LAPACK's geev (jax.lax.linalg.eig: the CPU, and GPUs through jax's host/MAGMA/cuSOLVER
    kernels). TF's kernel (Eigen's ComplexEigenSolver) returns the same eigenpairs, but the order of
    the eigenvalues is the order each QR algorithm finds them in (they may come permuted against
    TF's), and each eigenvector's complex phase differs (LAPACK makes its largest component real).
    Gradients: jax's, for distinct eigenvalues (as TF's); they agree with TF's for losses that do not
    depend on the eigenvectors' phases. Without `compute_v` TF leaves `v` unset (a scalar)."""
    compute_v = node.attr_bool("compute_v", True)
    dtype = jax.dtypes.canonicalize_dtype(node.attr_dtype("Tout"))
    return lambda x: _eig_jit(jnp.asarray(x), compute_v=compute_v, dtype=dtype)


def _eig_jit(x, *, compute_v: bool, dtype):
    if x.shape[-1] == 0:
        return jnp.zeros(x.shape[:-1], dtype), jnp.zeros(x.shape if compute_v else (), dtype)
    if not compute_v:
        (w,) = lax.linalg.eig(x, compute_left_eigenvectors=False, compute_right_eigenvectors=False)
        return w.astype(dtype), jnp.zeros((), dtype)
    w, v = lax.linalg.eig(x, compute_left_eigenvectors=False, enable_eigvec_derivs=True)
    return w.astype(dtype), v.astype(dtype)


# -- banded and tridiagonal systems ---------------------------------------------------------------


def _shift(v, d: int):
    """v[..., i - d] along the last axis (zeros where that is outside), d of either sign."""
    m = v.shape[-1]
    if abs(d) >= m:
        return jnp.zeros_like(v)
    pad = [(0, 0)] * (v.ndim - 1)
    if d >= 0:
        return jnp.pad(v[..., :m - d], pad + [(d, 0)])
    return jnp.pad(v[..., -d:], pad + [(0, -d)])


def _substitute(coef, diag, rhs):
    """Forward substitution for a banded lower-triangular system: row i reads
    diag[i] x[i] + sum_d coef[..., d - 1, i] x[i - d] = rhs[i] (coef [..., K, M], diag [..., M],
    rhs [..., M, N]), one row per scan step, as TF's CPU kernels go."""
    if coef.shape[-2] == 0:
        return rhs / diag[..., None]
    window = jnp.zeros(rhs.shape[:-2] + (coef.shape[-2], rhs.shape[-1]), rhs.dtype)

    def row(window, args):
        c, d, b = args
        x = (b - jnp.sum(c[..., None] * window, axis=-2)) / d[..., None]
        return jnp.concatenate([x[..., None, :], window[..., :-1, :]], axis=-2), x

    _, xs = lax.scan(row, window, (jnp.moveaxis(coef, -1, 0), jnp.moveaxis(diag, -1, 0), jnp.moveaxis(rhs, -2, 0)))
    return jnp.moveaxis(xs, 0, -2)


def _banded_solve(bands, rhs, *, lower: bool, adjoint: bool):
    """The banded triangular solve on broadcast bands [..., K+1, M] and rhs [..., M, N] (see
    `_banded_triangular_solve` for the layout)."""
    k, m = bands.shape[-2] - 1, bands.shape[-1]
    conj = (lambda v: jnp.conj(v)) if adjoint and jnp.iscomplexobj(bands) else (lambda v: v)
    # coef[d - 1, i]: the coefficient of x[i -/+ d] in row i of the system solved, going forward
    # (x[i - d]) for lower non-adjoint and upper adjoint, backward (x[i + d]) otherwise.
    forward = lower != adjoint
    band = (lambda d: bands[..., d, :]) if lower else (lambda d: bands[..., k - d, :])
    if adjoint:  # A^H[i, i -/+ d] = conj(A[i -/+ d, i]): the band shifted
        coef = [conj(_shift(band(d), d if forward else -d)) for d in range(1, k + 1)]
    else:
        idx = jnp.arange(m)
        inside = (lambda d: idx >= d) if forward else (lambda d: idx + d < m)
        coef = [jnp.where(inside(d), band(d), 0) for d in range(1, k + 1)]
    coef = jnp.stack(coef, axis=-2) if coef else jnp.zeros(bands.shape[:-2] + (0, m), bands.dtype)
    diag = conj(bands[..., 0 if lower else k, :])
    if forward:
        return _substitute(coef, diag, rhs)
    return jnp.flip(_substitute(jnp.flip(coef, -1), jnp.flip(diag, -1), jnp.flip(rhs, -2)), -2)


@register("BandedTriangularSolve")
def _banded_triangular_solve(node):
    """`tf.linalg.banded_triangular_solve`: `bands` [..., K+1, M] holds a triangular band matrix
    (LEFT_RIGHT alignment): with `lower`, row 0 is the diagonal and row d the d-th subdiagonal,
    right-aligned (A[i, i-d] = bands[d, i]; its first d entries are padding); otherwise row K is
    the diagonal and row K-d the d-th superdiagonal, left-aligned (A[i, i+d] = bands[K-d, i]; its
    last d entries are padding). `adjoint` solves A^H X = rhs. Batch dimensions broadcast; bands
    past the matrix's size are ignored (TF's kernel runs them where shapes were unknown). TF
    refuses a zero on the diagonal of the FIRST matrix of the batch (only that one): so does
    jaxmeta where the values are known; elsewhere zeros give inf/NaN."""
    lower = node.attr_bool("lower", True)
    adjoint = node.attr_bool("adjoint", False)

    def fn(bands, rhs):
        bands, rhs = _broadcast_batch(bands, rhs)
        dtype = jnp.result_type(bands.dtype, rhs.dtype)
        bands, rhs = bands.astype(dtype), rhs.astype(dtype)
        if rhs.size == 0:
            return rhs
        first = checked(bands)
        diag = 0 if lower else bands.shape[-2] - 1
        if first is not None and (first.reshape((-1,) + first.shape[-2:])[0, diag] == 0).any():
            raise GraphError(f"node {node.name!r} ({node.type}): the matrix is not invertible (a zero on its "
                             "diagonal), which TF rejects")
        return _banded_solve(bands, rhs, lower=lower, adjoint=adjoint)

    return fn


@register("TridiagonalMatMul")
def _tridiagonal_mat_mul(node):
    """`tf.linalg.tridiagonal_matmul` with the diagonals as [..., 1, M] rows: superdiag[i] =
    A[i, i+1] (its last entry ignored), subdiag[i] = A[i, i-1] (its first entry ignored)."""

    def fn(superdiag, maindiag, subdiag, rhs):
        sup, main, sub = (jnp.swapaxes(jnp.asarray(d), -1, -2) for d in (superdiag, maindiag, subdiag))
        rhs = jnp.asarray(rhs)
        pad = [(0, 0)] * (rhs.ndim - 2)
        above = jnp.pad(sup[..., :-1, :] * rhs[..., 1:, :], pad + [(0, 1), (0, 0)])
        below = jnp.pad(sub[..., 1:, :] * rhs[..., :-1, :], pad + [(1, 0), (0, 0)])
        return main * rhs + above + below

    return fn


def _thomas(sup, main, sub, rhs):
    """TF's CPU solve without pivoting (the Thomas algorithm), step for step: a zero pivot makes
    the whole solution NaN, as TF (which logs a warning) does."""
    rows = [jnp.moveaxis(v, -1, 0) for v in (sup, main, sub)]
    rhs_rows = jnp.moveaxis(rhs, -2, 0)
    u0, x0 = rows[0][0] / rows[1][0], rhs_rows[0] / rows[1][0][..., None]

    def forward(carry, args):
        u, x, bad = carry
        above, d, below, b = args
        denom = d - below * u
        u, x = above / denom, (b - below[..., None] * x) / denom[..., None]
        return (u, x, bad | (denom == 0)), (u, x)

    (_, _, bad), (us, xs) = lax.scan(forward, (u0, x0, rows[1][0] == 0),
                                     (rows[0][1:], rows[1][1:], rows[2][1:], rhs_rows[1:]))
    us = jnp.concatenate([u0[None], us])
    xs = jnp.concatenate([x0[None], xs])

    def backward(x_next, args):
        u, x = args
        x = x - u[..., None] * x_next
        return x, x

    _, head = lax.scan(backward, xs[-1], (us[:-1], xs[:-1]), reverse=True)
    out = jnp.moveaxis(jnp.concatenate([head, xs[-1:]]), 0, -2)
    return jnp.where(_at_matrix(bad), jnp.nan, out)


@register("TridiagonalSolve")
def _tridiagonal_solve(node):
    """`tf.linalg.tridiagonal_solve` on the compact [..., 3, M] diagonals (superdiagonal, diagonal,
    subdiagonal; the superdiagonal's last and the subdiagonal's first entries are ignored) and
    rhs [..., M, K]. With `partial_pivoting` (TF's default) jax.lax.linalg.tridiagonal_solve: on the
    CPU LAPACK's gtsv, the elimination with row interchanges that TF's CPU kernel follows; on GPUs
    cuSPARSE's gtsv2; on other backends jax's Thomas algorithm, WITHOUT pivoting (fine for
    diagonally dominant systems, less stable otherwise). `perturb_singular` is jax's port of TF's
    (CPU and GPU only). Without pivoting TF's Thomas algorithm, step for step. A singular matrix
    (a zero pivot) gives NaN, as TF's CPU kernel does (it logs a warning)."""
    pivoting = node.attr_bool("partial_pivoting", True)
    perturb = node.attr_bool("perturb_singular", False)
    if perturb and not pivoting:
        raise GraphError(f"node {node.name!r} ({node.type}): perturb_singular requires partial_pivoting, as TF "
                         "requires; set partial_pivoting=True")

    return lambda diagonals, rhs: _tridiagonal_solve_jit(jnp.asarray(diagonals), jnp.asarray(rhs),
                                                         pivoting=pivoting, perturb=perturb)


def _tridiagonal_solve_jit(diagonals, rhs, *, pivoting: bool, perturb: bool):
    if rhs.size == 0:
        return rhs
    sup, main, sub = diagonals[..., 0, :], diagonals[..., 1, :], diagonals[..., 2, :]
    sup, sub = sup.at[..., -1].set(0), sub.at[..., 0].set(0)
    if pivoting:
        return lax.linalg.tridiagonal_solve(sub, main, sup, rhs, perturb_singular=perturb)
    return _thomas(sup, main, sub, rhs)


# -- quasi-random sequences -----------------------------------------------------------------------

#: TF's SobolSample takes at most this many dimensions.
_SOBOL_MAX_DIM = 21200


@functools.lru_cache(maxsize=8)
def _sobol_directions(dim: int) -> np.ndarray:
    """The direction numbers of the Sobol sequence's first `dim` dimensions, [dim, 31] uint32, each
    shifted to 31 bits: Joe and Kuo's (new-joe-kuo-6.21201), the table TF uses, as SciPy (which JAX
    depends on) ships it in its Sobol engine."""
    from scipy.stats import qmc

    directions = getattr(qmc.Sobol(dim, scramble=False, bits=31), "_sv", None)
    if directions is None or np.shape(directions) != (dim, 31):
        raise GraphError("SobolSample needs the Joe-Kuo direction numbers of SciPy's Sobol engine "
                         "(scipy.stats.qmc.Sobol), which this SciPy version does not expose as jaxmeta reads them")
    return np.asarray(directions, np.uint32)


@register("SobolSample")
def _sobol_sample(node):
    """`tf.math.sobol_sample`: points `skip + 1` to `skip + num_results` of the unscrambled Sobol
    sequence in `dim` dimensions (in Gray-code order, its first point, zero, left out), exactly as
    TF computes them (`_sobol_directions`). `dim` and `num_results` set the output's shape and must
    be known when the graph is traced; `skip` may be computed.

    TF scales the points' integers by `1. / (1 << digits)`, `digits` the bits of `skip +
    num_results + 1`: with 31 of them (from 2**30 on) C's `1 << 31` is int32's minimum and every
    point comes out negated. jaxmeta gives TF's values there too."""
    dtype = jax.dtypes.canonicalize_dtype(node.attr_dtype("dtype", np.dtype(np.float32)))

    def fn(dim, num_results, skip):
        (d,), (n,) = static_ints(dim, node, "dim", 1), static_ints(num_results, node, "num_results", 1)
        if not (1 <= d <= _SOBOL_MAX_DIM and n >= 1):
            raise GraphError(f"node {node.name!r} ({node.type}): dim {d} must be in [1, {_SOBOL_MAX_DIM}] and "
                             f"num_results {n} at least one, as TF requires")
        value = checked(skip)
        if value is not None and not 0 <= int(value) < 2**31 - 1 - n:
            raise GraphError(f"node {node.name!r} ({node.type}): skip {int(value)} must be non-negative and "
                             f"num_results + skip less than 2**31 - 1, as TF requires")
        m = np if static(skip) else jnp
        first = m.asarray(skip).astype(np.uint32) + np.uint32(1)
        index = first + np.arange(n, dtype=np.uint32)
        gray = index ^ (index >> np.uint32(1))
        # the bits the points' Gray codes can have: those of the last index (31 when computed)
        bits = (int(skip) + n).bit_length() if m is np else 31
        directions = _sobol_directions(d)
        points = m.zeros((n, d), np.uint32)
        for k in range(bits):
            points = points ^ m.where(((gray >> np.uint32(k)) & np.uint32(1))[:, None] == 1, directions[:, k],
                                      np.uint32(0))
        scale = m.where(skip >= 2**30 - 1 - n, -(2.0**-31), 2.0**-31).astype(dtype)
        return points.astype(dtype) * scale

    return fn
