"""Random ops: stateful draws (keyed per node), the stateless family, `tf.random.Generator`'s ops,
candidate samplers, sampled crops and k-means initialization.

TensorFlow's random streams (Philox with per-op seeds) cannot be reproduced, so jaxmeta draws from
JAX's PRNG instead: the *distributions* match TF's, the values do not.

- Stateful ops (`RandomUniform`, `TruncatedNormal`, `Multinomial`, `RandomCrop`, ...) take their key
  from `ctx.rng(node)`: the call's `key=` folded with the node's name, so results do not depend on
  evaluation order and differ between nodes. The `seed`/`seed2` attributes are ignored (the call's
  key plays their role); without a key the interpreter raises a `FeedError`.
- Stateless ops (`StatelessRandomUniform*`, `StatelessRandom*V2`, `StatelessShuffle`, ...) derive a
  JAX key from their seed input deterministically (same seed, same values; traced seeds are fine),
  but the values differ from TF's Philox streams. `StatelessRandomGetKeyCounter` therefore returns
  jaxmeta's own encoding of the seed (key = [seed0], counter = [seed1, 0]), which the `*V2` ops
  decode. `RandomIndexShuffle` permutes `[0, max_index]` with a Feistel network keyed by its seed.
  `KmeansPlusPlusInitialization` and `KMC2ChainInitialization` follow TF's kernels' algorithms
  with JAX's random numbers from their scalar seed.
- `tf.random.Generator`'s ops (`Stateful*`, `RngSkip`, `RngReadAndSkip`) need no key: they read
  the RNG state variable their resource input names, TF's int64 `[counter_low, counter_high, key]`
  (Philox; ThreeFry's `[counter, key]` too). The state *is* jaxmeta's seed: an op draws with the
  key `StatelessRandom*V2` derive from the state's key word and counter words (so `StatefulUniform`
  and the Generator's `RngReadAndSkip` + `StatelessRandomUniformV2` draw the same numbers from the
  same state), and advances the counter exactly as TF's kernels do: 256 per sample (per unit of
  `delta` for the skips), StatefulRandomBinomial by its reservation, added as `PhiloxRandom::Skip`
  adds. A run is therefore deterministic given the state, and the state after it equals TF's;
  `Graph.step` returns it with the other assigned variables. With x64 off the state's words are
  int32 (their low halves): the counter then carries from its first word into its second, so past
  2**32 (2**24 samples) it differs from TF's but its stream does not repeat.
- `LearnedUnigramCandidateSampler` and `ThreadUnsafeUnigramCandidateSampler` learn their class
  counts from the true classes of every run, as TF's kernels do: the counts are the op's state
  under its node name in the variables dict, which `Graph.step` returns (so use `step`).
- Output shapes must be static: the `shape` input has to be known when the graph is traced
  (a constant or shape arithmetic on static shapes).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxmeta._errors import GraphError
from jaxmeta.ops.registry import checked, known, register, static, static_ints


def _dtype(node, attr: str = "dtype", default=None) -> np.dtype:
    return jax.dtypes.canonicalize_dtype(node.attr_dtype(attr, default))


def _shape(node, shape, what: str = "shape") -> tuple[int, ...]:
    """The static value of a shape input; random ops cannot have data-dependent output shapes."""
    if not static(shape):
        raise GraphError(
            f"node {node.name!r} ({node.type}): its {what} input must be known when the graph is traced "
            "(a constant or arithmetic on static shapes), but it depends on fed or computed values"
        )
    return tuple(int(d) for d in np.reshape(shape, -1))


def _scalar_int(node, x, what: str) -> int:
    if not static(x):
        raise GraphError(f"node {node.name!r} ({node.type}): {what} must be a constant, not a computed value")
    return int(np.reshape(x, -1)[0])


def _float(x, dtype):
    return jnp.asarray(x, dtype)


# -- stateful draws: keys from ctx.rng(node) -------------------------------------------------------


@register("RandomUniform", random=True, context=True)
def _random_uniform(node):
    dtype = _dtype(node)

    def fn(ctx, shape):
        return jax.random.uniform(ctx.rng(node), _shape(node, shape), dtype)

    return fn


@register("RandomStandardNormal", random=True, context=True)
def _random_normal(node):
    dtype = _dtype(node)

    def fn(ctx, shape):
        return jax.random.normal(ctx.rng(node), _shape(node, shape), dtype)

    return fn


@register("TruncatedNormal", random=True, context=True)
def _truncated_normal(node):
    # TF redraws values more than 2 standard deviations from the mean: a normal truncated to [-2, 2].
    dtype = _dtype(node)

    def fn(ctx, shape):
        return jax.random.truncated_normal(ctx.rng(node), -2.0, 2.0, _shape(node, shape), dtype)

    return fn


@register("RandomUniformInt", random=True, context=True)
def _random_uniform_int(node):
    dtype = _dtype(node, "Tout")

    def fn(ctx, shape, minval, maxval):
        return jax.random.randint(
            ctx.rng(node), _shape(node, shape), jnp.asarray(minval, dtype), jnp.asarray(maxval, dtype), dtype
        )

    return fn


@register("NonDeterministicInts", random=True, context=True)
def _non_deterministic_ints(node):
    """Integers over the dtype's whole range (`tf.random.Generator`'s non-deterministic seeds).
    TF seeds each run from the OS; jaxmeta draws from the call's key. With x64 off, int64 and
    uint64 narrow to 32 bits, so the values span the narrowed type's range."""
    dtype = np.dtype(node.attr_dtype("dtype", np.int64))
    if dtype not in (np.int32, np.int64, np.uint32, np.uint64):
        raise GraphError(
            f"node {node.name!r} ({node.type}): dtype {dtype} is not supported (TF's kernel draws int32, "
            "int64, uint32 or uint64)"
        )

    def fn(ctx, shape):
        return _draw_full_int(node, ctx.rng(node), _shape(node, shape))

    return fn


@register("RandomGamma", random=True, context=True)
def _random_gamma(node):
    dtype = _dtype(node, "T")

    def fn(ctx, shape, alpha):
        # Output shape is `shape + alpha.shape`: one draw per alpha for every sample index.
        out_shape = _shape(node, shape) + tuple(np.shape(alpha))
        a = jnp.broadcast_to(_float(alpha, dtype), out_shape)
        return jax.random.gamma(ctx.rng(node), a, out_shape, dtype)

    return fn


@register("RandomGammaGrad")
def _random_gamma_grad(node):
    """d sample / d alpha of a Gamma(alpha, 1) sample (implicit reparameterization: how the sample
    moves as alpha does with its CDF value held), which TF's gradient of tf.random.gamma writes
    into training graphs (Gamma and Dirichlet VAEs)."""

    def fn(alpha, sample):
        alpha, sample = jnp.broadcast_arrays(jnp.asarray(alpha), jnp.asarray(sample))
        return jax.lax.random_gamma_grad(alpha, sample.astype(alpha.dtype))

    return fn


@register("RandomPoisson", "RandomPoissonV2", random=True, context=True)
def _random_poisson(node):
    dtype = _dtype(node, "dtype")

    def fn(ctx, shape, rate):
        out_shape = _shape(node, shape) + tuple(np.shape(rate))
        lam = jnp.broadcast_to(jnp.asarray(rate, jnp.float32), out_shape)
        return jax.random.poisson(ctx.rng(node), lam, out_shape).astype(dtype)

    return fn


def _shuffle_rows(key, value):
    """`value` with its first axis permuted (a scalar as it is)."""
    if np.ndim(value) == 0:
        return value
    return jax.random.permutation(key, jnp.asarray(value), axis=0, independent=False)


@register("RandomShuffle", random=True, context=True)
def _random_shuffle(node):
    return lambda ctx, value: _shuffle_rows(ctx.rng(node), value)


@register("RandomCrop", random=True, context=True)
def _random_crop(node):
    """A `size = [height, width]` crop of an `[height, width, channels]` image at a uniform offset:
    the op of TF 0.x graphs (GraphDef version < 8; later versions crop in Python)."""

    def fn(ctx, image, size):
        height, width = static_ints(size, node, "size", 2)
        if np.ndim(image) != 3 or not (
            0 <= height <= np.shape(image)[0] and 0 <= width <= np.shape(image)[1]
        ):
            raise GraphError(
                f"node {node.name!r} ({node.type}): cannot crop {[height, width]} out of an image of "
                f"shape {list(np.shape(image))}; the image must be [height, width, channels] and at "
                "least as large as the crop"
            )
        if (height, width) == np.shape(image)[:2]:
            return image
        k_y, k_x = jax.random.split(ctx.rng(node))
        y = jax.random.randint(k_y, (), 0, np.shape(image)[0] - height + 1)
        x = jax.random.randint(k_x, (), 0, np.shape(image)[1] - width + 1)
        return jax.lax.dynamic_slice(jnp.asarray(image), (y, x, 0), (height, width, np.shape(image)[2]))

    return fn


def _categorical(key, node, logits, num_samples, dtype):
    """`[batch, num_samples]` class indices drawn from each row of `logits`."""
    n = _scalar_int(node, num_samples, "num_samples")
    logits = jnp.asarray(logits)
    draws = jax.random.categorical(key, logits, axis=-1, shape=(n, logits.shape[0]))
    return draws.T.astype(dtype)


@register("Multinomial", random=True, context=True)
def _multinomial(node):
    dtype = _dtype(node, "output_dtype", np.int64)

    def fn(ctx, logits, num_samples):
        return _categorical(ctx.rng(node), node, logits, num_samples, dtype)

    return fn


def _param_truncated_normal(key, shape, dtype, means, stdevs, minvals, maxvals):
    means, stdevs, minvals, maxvals = (_float(p, dtype) for p in (means, stdevs, minvals, maxvals))
    lower = (minvals - means) / stdevs
    upper = (maxvals - means) / stdevs
    z = jax.random.truncated_normal(key, lower, upper, shape, dtype)
    return means + stdevs * z


@register("ParameterizedTruncatedNormal", random=True, context=True)
def _parameterized_truncated_normal(node):
    dtype = _dtype(node)

    def fn(ctx, shape, means, stdevs, minvals, maxvals):
        # Parameters are scalars or one value per batch entry (the first axis of `shape`).
        out_shape = _shape(node, shape)
        params = []
        for p in (means, stdevs, minvals, maxvals):
            if np.size(p) == 1:
                params.append(jnp.reshape(_float(p, dtype), ()))
            else:
                params.append(jnp.reshape(_float(p, dtype), (-1,) + (1,) * (len(out_shape) - 1)))
        return _param_truncated_normal(ctx.rng(node), out_shape, dtype, *params)

    return fn


# -- stateless ops: keys derived from a seed tensor ------------------------------------------------


def _u32(x):
    """Flat uint32 view of integer seed material (static values wrap modulo 2**32, as traced ones do)."""
    if static(x):
        return np.reshape(x, -1).astype(np.int64).astype(np.uint32)
    return jnp.reshape(x, (-1,)).astype(jnp.uint32)


def _key_from_seed(seed):
    """A JAX key from a `[2]` integer seed (the same seed always gives the same key)."""
    return jax.random.wrap_key_data(jnp.asarray(_u32(seed)[:2], jnp.uint32), impl="threefry2x32")


def _high_halves(x):
    """The high 32 bits of 64-bit seed material as uint32 (None for narrower values)."""
    if np.dtype(x.dtype).itemsize != 8:
        return None
    if static(x):
        return (np.reshape(x, -1).astype(np.uint64) >> np.uint64(32)).astype(np.uint32)
    return ((jnp.reshape(x, (-1,)) >> 32) & 0xFFFFFFFF).astype(jnp.uint32)


def _key_from_key_counter(key, counter):
    """Decodes what `StatelessRandomGetKeyCounter` produced (or any key/counter pair).

    The low 32 bits of `key[0]` and `counter[0]` make the key and the other counter words are
    folded in. High halves of 64-bit words are folded in too unless they are all zeros or all
    ones: values that fit in 32 bits give the same key with x64 on or off, and a
    `tf.random.Generator` counter that passes 2**32 does not start its stream over.
    """
    key, counter = (np.asarray(x) if static(x) else jnp.asarray(x) for x in (key, counter))
    highs = [_high_halves(words) for words in (key.reshape(-1)[:1], counter)]
    key, counter = jnp.asarray(_u32(key)), jnp.asarray(_u32(counter))
    k = jax.random.wrap_key_data(jnp.stack([key[0], counter[0]]), impl="threefry2x32")
    for i in range(1, counter.shape[0]):
        k = jax.random.fold_in(k, counter[i])
    for high in (h for words in highs if words is not None for h in words):
        if static(high):  # known now: fold only where it counts
            k = k if high in (0, 0xFFFFFFFF) else jax.random.fold_in(k, high)
            continue
        data = jnp.where(
            (high != 0) & (high != np.uint32(0xFFFFFFFF)),
            jax.random.key_data(jax.random.fold_in(k, high)),
            jax.random.key_data(k),
        )
        k = jax.random.wrap_key_data(data, impl="threefry2x32")
    return k


def _key_from_scalar_seed(seed):
    """The key of a scalar integer `seed` input (the k-means initializers')."""
    return _key_from_key_counter(seed, np.zeros(1, np.uint32))


_PHILOX = np.int32(1)  # TF's RNG_ALG_PHILOX; jaxmeta's streams are its own whatever the value.


def _seed_parts(seed):
    """jaxmeta's key/counter encoding of a seed: key = [seed0], counter = [seed1, 0] (uint64 in TF)."""
    flat = _u32(seed)
    if static(seed):
        return flat[:1].astype(np.uint64), np.array([flat[1], 0], np.uint64)
    return flat[:1], jnp.stack([flat[1], jnp.uint32(0)])


@register("StatelessRandomGetKeyCounter")
def _get_key_counter(node):
    return lambda seed: _seed_parts(seed)


@register("StatelessRandomGetKeyCounterAlg")
def _get_key_counter_alg(node):
    return lambda seed: (*_seed_parts(seed), _PHILOX)


@register("StatelessRandomGetAlg")
def _get_alg(node):
    return lambda: _PHILOX


def _stateless(draw, *, v2: bool):
    """Builder for a stateless op: `draw(node, key, shape, *params)` once the key is derived."""

    def build(node):
        if v2:

            def fn(shape, key, counter, alg, *params):
                return draw(node, _key_from_key_counter(key, counter), _shape(node, shape), *params)

        else:

            def fn(shape, seed, *params):
                return draw(node, _key_from_seed(seed), _shape(node, shape), *params)

        return fn

    return build


def _draw_uniform(node, key, shape):
    return jax.random.uniform(key, shape, _dtype(node))


def _draw_normal(node, key, shape):
    return jax.random.normal(key, shape, _dtype(node))


def _draw_truncated(node, key, shape):
    return jax.random.truncated_normal(key, -2.0, 2.0, shape, _dtype(node))


def _draw_uniform_int(node, key, shape, minval, maxval):
    dtype = _dtype(node)
    return jax.random.randint(key, shape, jnp.asarray(minval, dtype), jnp.asarray(maxval, dtype), dtype)


def _unsigned(dtype) -> np.dtype:
    """The unsigned integer type as wide as `dtype`."""
    return np.dtype(np.dtype(dtype).name.replace("u", "").replace("int", "uint"))


def _draw_full_int(node, key, shape):
    dtype = _dtype(node)
    unsigned = _unsigned(dtype)
    bits = jax.random.bits(key, shape, unsigned)
    return bits if unsigned == dtype else jax.lax.bitcast_convert_type(bits, dtype)


def _draw_poisson(node, key, shape, lam):
    lam = jnp.broadcast_to(jnp.asarray(lam, jnp.float32), shape)
    return jax.random.poisson(key, lam, shape).astype(_dtype(node))


def _draw_gamma(node, key, shape, alpha):
    dtype = _dtype(node)
    return jax.random.gamma(key, jnp.broadcast_to(_float(alpha, dtype), shape), shape, dtype)


def _draw_binomial(node, key, shape, counts, probs):
    n = jnp.broadcast_to(jnp.asarray(counts, jnp.float32), shape)
    p = jnp.broadcast_to(jnp.asarray(probs, jnp.float32), shape)
    return jax.random.binomial(key, n, p, shape).astype(_dtype(node))


def _draw_param_truncated(node, key, shape, means, stddevs, minvals, maxvals):
    dtype = _dtype(node)
    params = [jnp.broadcast_to(_float(p, dtype), shape) for p in (means, stddevs, minvals, maxvals)]
    return _param_truncated_normal(key, shape, dtype, *params)


for _v1, _v2, _draw in [
    ("StatelessRandomUniform", "StatelessRandomUniformV2", _draw_uniform),
    ("StatelessRandomNormal", "StatelessRandomNormalV2", _draw_normal),
    ("StatelessTruncatedNormal", "StatelessTruncatedNormalV2", _draw_truncated),
    ("StatelessRandomUniformInt", "StatelessRandomUniformIntV2", _draw_uniform_int),
    ("StatelessRandomUniformFullInt", "StatelessRandomUniformFullIntV2", _draw_full_int),
    ("StatelessRandomGammaV2", "StatelessRandomGammaV3", _draw_gamma),
]:
    register(_v1)(_stateless(_draw, v2=False))
    register(_v2)(_stateless(_draw, v2=True))
register("StatelessRandomPoisson")(_stateless(_draw_poisson, v2=False))
register("StatelessRandomBinomial")(_stateless(_draw_binomial, v2=False))
register("StatelessParameterizedTruncatedNormal")(_stateless(_draw_param_truncated, v2=False))


@register("StatelessMultinomial")
def _stateless_multinomial(node):
    dtype = _dtype(node, "output_dtype", np.int64)

    def fn(logits, num_samples, seed):
        return _categorical(_key_from_seed(seed), node, logits, num_samples, dtype)

    return fn


@register("StatelessShuffle")
def _stateless_shuffle(node):
    return lambda value, key, counter, alg: _shuffle_rows(_key_from_key_counter(key, counter), value)


def _mix32(x):
    """A 32-bit integer hash (`lowbias32`): the round function of `_feistel`."""
    x = (x ^ (x >> 16)) * jnp.uint32(0x7FEB352D)
    x = (x ^ (x >> 15)) * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def _feistel(x, half, round_keys):
    """A balanced Feistel network on the `2 * half` low bits of unsigned `x` (a bijection of them
    whatever the round function): one round per column of `round_keys`."""
    mask = (jnp.ones_like(half) << half) - 1
    left, right = (x >> half).astype(jnp.uint32), (x & mask).astype(jnp.uint32)
    for r in range(round_keys.shape[-1]):
        left, right = right, left ^ (_mix32(right ^ round_keys[:, r]) & mask.astype(jnp.uint32))
    return (left.astype(x.dtype) << half) | right.astype(x.dtype)


@functools.partial(jax.jit, static_argnames="rounds")
def _shuffled_indices(x, bound, seeds, rounds: int):
    """`_random_index_shuffle` on unsigned vectors `x`, `bound` and seeds `[1 or n, 3]`."""
    keys = jax.vmap(lambda s: jax.random.bits(_key_from_key_counter(s[:1], s[1:]), (rounds,), jnp.uint32))(
        seeds
    )
    bits = x.dtype.itemsize * 8 - jax.lax.clz(bound)  # the bits that hold max_index, rounded up to even
    half = (bits + (bits & 1)) >> 1
    y = _feistel(x, half, keys)
    return jax.lax.while_loop(
        lambda y: jnp.any(y > bound), lambda y: jnp.where(y > bound, _feistel(y, half, keys), y), y
    )


@register("RandomIndexShuffle")
def _random_index_shuffle(node):
    """The place of `index` in a permutation of `[0, max_index]` that the seed determines
    (`tf.random.experimental.index_shuffle`): a Feistel network on the smallest even number of
    bits that holds `max_index`, whose outputs above `max_index` are encrypted again until they
    fall inside (cycle walking), so each seed gives a bijection of `[0, max_index]`. Its round
    keys come from the seed through JAX's PRNG, so the permutation differs from TF's. Scalars and
    vectors (seeds `[n, 3]`) broadcast along one batch axis as in TF."""
    rounds = node.attr_int("rounds", 4)

    def fn(index, seed, max_index):
        seen, bound = checked(index), checked(max_index)
        if seen is not None and bound is not None and np.any((seen < 0) | (seen > bound)):
            raise GraphError(
                f"node {node.name!r} ({node.type}): index {seen.tolist()} is not in [0, max_index = "
                f"{bound.tolist()}], which TF rejects"
            )
        index, max_index, seed = jnp.asarray(index), jnp.asarray(max_index), jnp.asarray(seed)
        sizes = [np.shape(a)[0] for a in (index, max_index) if np.ndim(a) == 1]
        sizes += [np.shape(seed)[0]] if np.ndim(seed) == 2 else []
        n, unsigned = max(sizes, default=1), _unsigned(index.dtype)
        x, bound = (
            jnp.broadcast_to(jnp.reshape(a, (-1,)), (n,)).astype(unsigned) for a in (index, max_index)
        )
        y = _shuffled_indices(x, bound, jnp.reshape(seed, (-1, np.shape(seed)[-1])), rounds)
        return y.astype(index.dtype).reshape((n,) if sizes else ())

    return fn


# -- tf.random.Generator: draws from an RNG state variable -----------------------------------------

_U32 = jnp.uint32


def _counter_size(node, state) -> int:
    """Words of counter before the key word: ThreeFry's states are `[counter, key]`, Philox's (and
    RNG_ALG_AUTO_SELECT's) `[counter_low, counter_high, key]`."""
    if np.ndim(state) != 1 or np.shape(state)[0] < 2:
        raise GraphError(
            f"node {node.name!r} ({node.type}): an RNG state is a vector of counter words and a key "
            f"word, got shape {np.shape(state)}; check the variable the op's resource input names"
        )
    return 1 if np.shape(state)[0] == 2 else 2


def _state_key(node, state):
    """A state's JAX key: the one `StatelessRandom*V2` derive from its key and counter words, as
    `tf.random.Generator` passes them on after `RngReadAndSkip`."""
    n = _counter_size(node, state)
    return _key_from_key_counter(state[n : n + 1], state[:n])


def _limbs(words) -> list:
    """Counter words as uint32 limbs, least significant first (two per word of an int64 state)."""
    words = jnp.asarray(words)
    if words.dtype.itemsize == 8:
        return [
            limb
            for w in words
            for limb in ((w & 0xFFFFFFFF).astype(_U32), ((w >> 32) & 0xFFFFFFFF).astype(_U32))
        ]
    return list(jax.lax.bitcast_convert_type(words, _U32))


def _from_limbs(limbs, dtype):
    if np.dtype(dtype).itemsize == 8:
        limbs = [
            (hi.astype(jnp.uint64) << 32) | lo.astype(jnp.uint64) for lo, hi in zip(limbs[::2], limbs[1::2])
        ]
    return jax.lax.bitcast_convert_type(jnp.stack(limbs), dtype)


def _count(samples: int):
    """TF's skip for `samples` outputs, 256 counter values each, as (low, high) uint32 limbs."""
    count = samples * 256 % 2**64
    return _U32(count & 0xFFFFFFFF), _U32(count >> 32)


def _count_of_delta(delta):
    """`_count` of an `RngSkip`/`RngReadAndSkip` delta input, whose value may be traced."""
    if static(delta):
        return _count(int(np.reshape(delta, -1)[0]))
    delta = jnp.reshape(delta, ())
    if delta.dtype.itemsize == 8:
        lo, hi = (delta & 0xFFFFFFFF).astype(_U32), ((delta >> 32) & 0xFFFFFFFF).astype(_U32)
    else:  # 32 bits with x64 off: a negative int64 delta's high half is all ones
        lo = jax.lax.bitcast_convert_type(delta, _U32)
        hi = jnp.where(delta < 0, _U32(0xFFFFFFFF), _U32(0))
    return lo << 8, (hi << 8) | (lo >> 24)


def _advance(node, state, count):
    """`state` with its counter skipped by `count` as TF's `PhiloxRandom::Skip` does: a 64-bit add
    into the 128-bit counter (its carry out of the high half of `count` is lost, as in TF)."""
    state = jnp.asarray(state)
    n = _counter_size(node, state)
    (first, *rest), (lo, hi) = _limbs(state[:n]), count
    out = [first + lo]
    hi = hi + (out[0] < lo).astype(_U32)
    carry = None
    for limb in rest:
        out.append(limb + hi if carry is None else limb + carry.astype(_U32))
        carry = out[-1] < hi if carry is None else carry & (out[-1] == 0)
    return jnp.concatenate([_from_limbs(out, state.dtype), state[n:]])


def _binomial_samples(shape, counts, probs) -> int:
    """What TF's StatefulRandomBinomial skips, in samples: it reserves 200 per 4 outputs of a batch."""
    batch = np.broadcast_shapes(np.shape(counts), np.shape(probs))
    per_batch = int(np.prod(shape[: len(shape) - len(batch)]))
    return int(np.prod(batch)) * 2 * 100 * (per_batch + 3) // 4


def _stateful(draw, *, algorithm_input: bool = True, samples=lambda shape, *params: int(np.prod(shape))):
    """Builder for a `tf.random.Generator` op: draws `draw(node, key, shape, *params)` with the key
    of the state the resource variable holds, and advances that state's counter as TF does."""

    def build(node):
        def fn(ctx, ref, *inputs):
            shape, *params = [ctx.value(x) for x in inputs[1 if algorithm_input else 0 :]]
            shape = _shape(node, shape)
            state = jnp.asarray(ctx.read(ref))
            ctx.assign(ref, _advance(node, state, _count(samples(shape, *params))))
            return draw(node, _state_key(node, state), shape, *params)

        return fn

    return build


for _op, _draw in [
    ("StatefulUniform", _draw_uniform),
    ("StatefulStandardNormalV2", _draw_normal),
    ("StatefulTruncatedNormal", _draw_truncated),
    ("StatefulUniformInt", _draw_uniform_int),
    ("StatefulUniformFullInt", _draw_full_int),
]:
    register(_op, assigns=True, context=True)(_stateful(_draw))
register("StatefulStandardNormal", assigns=True, context=True)(_stateful(_draw_normal, algorithm_input=False))
register("StatefulRandomBinomial", assigns=True, context=True)(
    _stateful(_draw_binomial, samples=_binomial_samples)
)


@register("RngSkip", assigns=True, context=True)
def _rng_skip(node):
    def fn(ctx, ref, algorithm, delta):
        ctx.assign(ref, _advance(node, ctx.read(ref), _count_of_delta(ctx.value(delta))))

    return fn


@register("RngReadAndSkip", assigns=True, context=True)
def _rng_read_and_skip(node):
    """The state before the skip, padded to TF's int64[3] (ThreeFry's has two words)."""

    def fn(ctx, ref, algorithm, delta):
        state = jnp.asarray(ctx.read(ref))
        ctx.assign(ref, _advance(node, state, _count_of_delta(ctx.value(delta))))
        state = jnp.pad(state, (0, max(0, 3 - state.shape[0]))) if state.ndim == 1 else state
        return state.astype(jax.dtypes.canonicalize_dtype(np.int64))

    return fn


# -- candidate samplers (sampled_softmax_loss, nce_loss) -------------------------------------------


def _expected_count(p, num_tries, num_sampled: int):
    """TF's expected count of a class in the sample: `p * n` when every try was kept (always so
    without `unique`), else `1 - (1 - p)^num_tries`, computed stably."""
    return jnp.where(num_tries == num_sampled, p * num_sampled, -jnp.expm1(num_tries * jnp.log1p(-p)))


def _sample_unique(key, log_p, num_sampled: int):
    """`num_sampled` distinct classes as TF's rejection sampler draws them, and its number of tries.

    Drawing with replacement and keeping first appearances yields the classes in the order of a
    Gumbel top-k over `log p`. Given that order, the repeats between the j-th and (j+1)-th new
    class are geometric with failure probability `P(first j classes)`, so the number of tries TF
    would have needed is sampled from its exact distribution too.
    """
    k_gumbel, k_tries = jax.random.split(key)
    scores = log_p + jax.random.gumbel(k_gumbel, log_p.shape, log_p.dtype)
    _, sampled = jax.lax.top_k(scores, num_sampled)
    covered = jnp.cumsum(jnp.exp(log_p[sampled]))[:-1]
    u = jax.random.uniform(k_tries, covered.shape, minval=jnp.finfo(jnp.float32).tiny, maxval=1.0)
    covered = jnp.clip(covered, 0.0, 1.0 - 1e-7)
    repeats = jnp.floor(jnp.log(u) / jnp.log(covered))
    num_tries = num_sampled + jnp.sum(jnp.where(covered > 0, repeats, 0.0))
    return sampled, num_tries


def _sampler_attrs(node) -> tuple[int, bool, int]:
    """A candidate sampler's `num_sampled`, `unique` and `range_max`, checked as TF's kernel does."""
    num_sampled, unique, range_max = node.attr_int("num_sampled"), node.attr_bool("unique"), node.attr_int("range_max")
    if unique and num_sampled > range_max:
        raise GraphError(
            f"node {node.name!r} ({node.type}): unique sampling of num_sampled={num_sampled} "
            f"classes out of range_max={range_max} is impossible"
        )
    return num_sampled, unique, range_max


def _candidate_sampler(prob, log_prob_all, sample_with_replacement):
    """Builder for a sampler given `prob(classes)`, `log_prob_all()` (all `range_max` classes) and
    `sample_with_replacement(key, n)`."""

    def build(node):
        num_sampled, unique, _ = _sampler_attrs(node)

        def fn(ctx, true_classes):
            return _draw_candidates(
                ctx.rng(node), true_classes, num_sampled, unique, functools.partial(prob, node),
                lambda: log_prob_all(node), functools.partial(sample_with_replacement, node),
            )

        return fn

    return build


def _draw_candidates(key, true_classes, num_sampled: int, unique: bool, prob, log_prob_all, draw):
    """A candidate sampler's three outputs, from `prob(classes)`, `log_prob_all()` (every class)
    and `draw(key, n)` (`n` classes with replacement)."""
    if unique:
        sampled, num_tries = _sample_unique(key, log_prob_all(), num_sampled)
    else:
        sampled, num_tries = draw(key, num_sampled), float(num_sampled)
    true_p = prob(jnp.asarray(true_classes))
    sampled_p = prob(sampled)
    return (
        sampled.astype(jax.dtypes.canonicalize_dtype(np.int64)),
        _expected_count(true_p, num_tries, num_sampled).astype(jnp.float32),
        _expected_count(sampled_p, num_tries, num_sampled).astype(jnp.float32),
    )


def _uniform_prob(node, classes):
    return jnp.full(jnp.shape(classes), 1.0 / node.attr_int("range_max"), jnp.float32)


def _uniform_log_prob_all(node):
    n = node.attr_int("range_max")
    return jnp.full((n,), -np.log(n), jnp.float32)


def _uniform_draw(node, key, n):
    return jax.random.randint(key, (n,), 0, node.attr_int("range_max"))


def _log_uniform_prob(node, classes):
    # P(class) = log((class + 2) / (class + 1)) / log(range_max + 1): Zipf-like, class 0 most likely.
    c = jnp.asarray(classes).astype(jnp.float32)
    return jnp.log((c + 2.0) / (c + 1.0)) / np.log1p(node.attr_int("range_max"))


def _log_uniform_log_prob_all(node):
    return jnp.log(_log_uniform_prob(node, jnp.arange(node.attr_int("range_max"))))


def _log_uniform_draw(node, key, n):
    range_max = node.attr_int("range_max")
    u = jax.random.uniform(key, (n,))
    value = jnp.floor(jnp.exp(u * np.log1p(range_max))).astype(jnp.int32) - 1
    return jnp.mod(value, range_max)


register("UniformCandidateSampler", random=True, context=True)(
    _candidate_sampler(_uniform_prob, _uniform_log_prob_all, _uniform_draw)
)
register("LogUniformCandidateSampler", random=True, context=True)(
    _candidate_sampler(_log_uniform_prob, _log_uniform_log_prob_all, _log_uniform_draw)
)


def _unigram_probs(node) -> np.ndarray:
    """Class probabilities of a FixedUnigramCandidateSampler from its `unigrams` attribute."""
    if node.attr_str("vocab_file", ""):
        raise GraphError(
            f"node {node.name!r} ({node.type}): vocab_file is not supported (jaxmeta reads no "
            "files); pass the counts through the `unigrams` attribute instead"
        )
    if node.attr_int("num_shards", 1) != 1:
        raise GraphError(f"node {node.name!r} ({node.type}): num_shards != 1 is not supported")
    unigrams = np.asarray(node.attr_floats("unigrams", []), np.float64)
    reserved = node.attr_int("num_reserved_ids", 0)
    weights = np.concatenate([np.zeros(reserved), unigrams ** node.attr_float("distortion", 1.0)])
    if weights.size != node.attr_int("range_max"):
        raise GraphError(
            f"node {node.name!r} ({node.type}): num_reserved_ids + len(unigrams) = "
            f"{weights.size} differs from range_max = {node.attr_int('range_max')}"
        )
    return (weights / weights.sum()).astype(np.float32)


def _unigram_prob(node, classes):
    return jnp.asarray(_unigram_probs(node))[classes]


def _unigram_log_prob_all(node):
    return jnp.log(jnp.asarray(_unigram_probs(node)))


def _unigram_draw(node, key, n):
    return jax.random.categorical(key, _unigram_log_prob_all(node), shape=(n,))


register("FixedUnigramCandidateSampler", random=True, context=True)(
    _candidate_sampler(_unigram_prob, _unigram_log_prob_all, _unigram_draw)
)


_INT32_MAX = int(np.iinfo(np.int32).max)


@register(
    "LearnedUnigramCandidateSampler", "ThreadUnsafeUnigramCandidateSampler", random=True, context=True, assigns=True
)
def _learned_unigram_candidate_sampler(node):
    """Samples from a unigram distribution that the op learns from the true classes it is given.

    TF's kernel keeps an int32 count per class, all 1 at first (so its first run samples
    uniformly), samples class c with probability count[c] / total, computes both expected counts
    from those probabilities, and only then adds 1 to the count of every true class of the batch
    (stopping where the total would pass 2**31 - 1). The two op types differ only in TF's locking.

    jaxmeta keeps the counts as the op's state, `variables[node.name]` (int32 `[range_max]`, all
    ones where the dict has none): `Graph.step` returns them updated and a `Session` carries them
    from run to run, so successive runs see the distributions TF's do. Like TF's, they are not
    variables (savers ignore them). The op therefore assigns: `Graph.function` refuses graphs that
    run it; use `Graph.step`. Out-of-range true classes raise where their values are known; traced
    ones (which TF would reject) are not counted.
    """
    num_sampled, unique, range_max = _sampler_attrs(node)
    num_true = node.attr_int("num_true")
    where = f"node {node.name!r} ({node.type})"
    if range_max >= _INT32_MAX:
        raise GraphError(f"{where}: range_max must be less than 2**31 - 1 for unigram samplers, got {range_max}")

    def fn(ctx, true_classes):
        true_classes = ctx.value(true_classes)
        if np.ndim(true_classes) != 2 or np.shape(true_classes)[1] != num_true:
            raise GraphError(
                f"{where}: true_classes must be a [batch_size, num_true = {num_true}] matrix, got shape "
                f"{list(np.shape(true_classes))}"
            )
        seen = checked(true_classes)
        if seen is not None and np.any((seen < 0) | (seen >= range_max)):
            bad = seen[(seen < 0) | (seen >= range_max)]
            raise GraphError(f"{where}: true classes {bad.tolist()} are outside [0, range_max = {range_max}), "
                             "which TF rejects")
        counts = _unigram_counts(ctx, node, range_max)
        total = jnp.sum(counts, dtype=jnp.int32)
        p = counts.astype(jnp.float32) / total.astype(jnp.float32)  # TF: float(count) / int32 total
        log_p = jnp.log(p)
        outputs = _draw_candidates(
            ctx.rng(node), true_classes, num_sampled, unique, lambda classes: p[classes], lambda: log_p,
            lambda key, n: jax.random.categorical(key, log_p, shape=(n,)),
        )
        ctx.put(node.name, _count_classes(counts, total, true_classes, range_max))
        return outputs

    return fn


def _unigram_counts(ctx, node, range_max: int):
    """A learned unigram sampler's class counts in this run: TF's initial all-ones where the
    variables dict has none."""
    counts = ctx.variables.get(node.name)
    if counts is None:
        return jnp.ones((range_max,), jnp.int32)
    if jnp.shape(counts) != (range_max,) or not jnp.issubdtype(jnp.result_type(counts), jnp.integer):
        raise GraphError(
            f"variables[{node.name!r}] must hold the class counts of node {node.name!r} ({node.type}): "
            f"integers of shape [range_max = {range_max}], as graph.step returned them, got "
            f"{jnp.result_type(counts)} of shape {list(jnp.shape(counts))}; drop the entry to start from TF's "
            "initial counts"
        )
    return jnp.asarray(counts, jnp.int32)


def _count_classes(counts, total, classes, range_max: int):
    """`counts` + 1 for each of `classes`, as TF's `Update` adds them: only the first
    `2**31 - 1 - total` of them, so that the int32 total cannot overflow."""
    classes = jnp.reshape(jnp.asarray(classes), (-1,))
    room = _INT32_MAX - total
    keep = (jnp.arange(classes.shape[0]) < room) & (classes >= 0) & (classes < range_max)
    return counts.at[jnp.where(keep, classes, range_max)].add(1, mode="drop")


@register("AllCandidateSampler")
def _all_candidate_sampler(node):
    # Samples every class 0..num_sampled-1 exactly once: deterministic, no key needed.
    num_sampled = node.attr_int("num_sampled")

    def fn(true_classes):
        return (
            np.arange(num_sampled, dtype=np.int64),
            np.ones(np.shape(true_classes), np.float32),
            np.ones((num_sampled,), np.float32),
        )

    return fn


@register("ComputeAccidentalHits")
def _compute_accidental_hits(node):
    """Marks sampled candidates that equal one of a row's true classes.

    TF returns only the hits (a data-dependent count). jaxmeta returns every (row, sample) pair,
    with weight -FLT_MAX for hits and 0 otherwise. `sampled_softmax_loss`/`nce_loss` scatter these
    with `SparseToDense(default_value=0)` and add the result to the logits, which is then exactly
    TF's result, while the output sizes stay static.
    """
    num_true = node.attr_int("num_true")

    def fn(true_classes, sampled):
        true_classes = jnp.reshape(jnp.asarray(true_classes), (-1, num_true))
        sampled = jnp.asarray(sampled)
        batch, n = true_classes.shape[0], sampled.shape[0]
        hit = jnp.any(true_classes[:, :, None] == sampled[None, None, :], axis=1)
        weights = jnp.where(hit, -np.finfo(np.float32).max, 0.0).astype(jnp.float32)
        rows = jnp.repeat(jnp.arange(batch, dtype=jnp.int32), n)
        ids = jnp.tile(jnp.arange(n), batch).astype(jax.dtypes.canonicalize_dtype(np.int64))
        return rows, ids, jnp.reshape(weights, (-1,))

    return fn


# -- sampled crops (Inception-style preprocessing) -------------------------------------------------


def _crop_attempts(key, height, width, attempts: int, area_range, aspect_range):
    """`attempts` random crops as TF's `GenerateRandomCrop` makes them, each with its validity.

    Every attempt draws an aspect ratio in `aspect_range`, a height between the heights of the
    smallest and largest allowed areas at that ratio (the width is the height times the ratio,
    rounded), nudges the size by one pixel when rounding left the area outside `area_range`, then
    places the crop uniformly in the image. Returns int32 arrays `y, x, h, w` and a bool `valid`
    of shape `[attempts]`. Everything is float32, as in the kernel, but for one bound the kernel
    computes in double (`(width + 0.5 - 1e-7) / ratio`), so at exact ties the largest height may
    differ by a pixel; every crop still satisfies the op's constraints.
    """
    k_ratio, k_h, k_y, k_x = jax.random.split(key, 4)
    f32, i32 = jnp.float32, jnp.int32
    height_f, width_f = height.astype(f32), width.astype(f32)
    ratio = jax.random.uniform(k_ratio, (attempts,), f32) * f32(aspect_range[1] - aspect_range[0]) + f32(
        aspect_range[0]
    )
    min_area = f32(area_range[0]) * width_f * height_f
    max_area = f32(area_range[1]) * width_f * height_f

    def rint(x):  # lrintf: to nearest, ties to even
        return jnp.round(x).astype(i32)

    h = rint(jnp.sqrt(min_area / ratio))
    max_h = rint(jnp.sqrt(max_area / ratio))
    too_wide = rint(max_h.astype(f32) * ratio) > width
    fit = ((width_f + f32(0.5)) / ratio).astype(i32)
    fit = jnp.where(rint(fit.astype(f32) * ratio) > width, fit - 1, fit)
    max_h = jnp.minimum(jnp.where(too_wide, fit, max_h), height)
    h = jnp.minimum(h, max_h)
    h = h + jax.random.randint(k_h, (attempts,), 0, jnp.maximum(max_h - h + 1, 1))
    w = rint(h.astype(f32) * ratio)
    area = (w * h).astype(f32)
    grow = area < min_area
    h = jnp.where(grow, h + 1, h)
    w = jnp.where(grow, rint(h.astype(f32) * ratio), w)
    area = (w * h).astype(f32)
    shrink = area > max_area
    h = jnp.where(shrink, h - 1, h)
    w = jnp.where(shrink, rint(h.astype(f32) * ratio), w)
    area = (w * h).astype(f32)
    valid = ~((area < min_area) | (area > max_area) | (w > width) | (h > height) | (w <= 0) | (h <= 0))
    valid &= (width > 0) & (height > 0) & (ratio > 0)
    y = jax.random.randint(k_y, (attempts,), 0, jnp.maximum(height - h, 1))
    x = jax.random.randint(k_x, (attempts,), 0, jnp.maximum(width - w, 1))
    return y, x, h, w, valid


def _covers_an_object(y, x, h, w, boxes, min_covered):
    """TF's `SatisfiesOverlapConstraints` for each attempt: the crop has an area of at least one
    pixel and covers at least `min_covered` of some box whose own area is at least one pixel.
    `boxes` are int32 `[n, 4]` rows `(ymin, xmin, ymax, xmax)` in pixels."""
    y0, x0, y1, x1 = (boxes[:, i][None, :] for i in range(4))
    cy0, cx0, cy1, cx1 = y[:, None], x[:, None], (y + h)[:, None], (x + w)[:, None]
    iy0, ix0 = jnp.maximum(cy0, y0), jnp.maximum(cx0, x0)
    iy1, ix1 = jnp.minimum(cy1, y1), jnp.minimum(cx1, x1)
    empty = (ix0 > ix1) | (iy0 > iy1)
    inter = jnp.where(empty, 0, (ix1 - ix0) * (iy1 - iy0)).astype(jnp.float32)
    object_area = ((x1 - x0) * (y1 - y0)).astype(jnp.float32)
    covered = (object_area >= 1) & (inter / jnp.where(object_area >= 1, object_area, 1) >= min_covered)
    return ((w * h).astype(jnp.float32) >= 1) & jnp.any(covered, axis=1)


def _sample_distorted_bounding_box(node, *, min_covered_input: bool, stateless: bool):
    """SampleDistortedBoundingBox(V2) and StatelessSampleDistortedBoundingBox: a random crop of an
    image of `image_size` covering enough of one of the given boxes, as `(begin, size, bboxes)`
    for `tf.slice` and `draw_bounding_boxes`.

    The kernel's algorithm on JAX's random numbers (so the crop differs from TF's for the same
    seed, its distribution does not): the attempts are drawn at once and the first one that
    fits is taken, the whole image when none does. Box coordinates outside [0, 1] are refused
    when their values are known; traced ones are used as they are.
    """
    attempts = node.attr_int("max_attempts", 100)
    area_range = node.attr_floats("area_range", [0.05, 1.0])
    aspect_range = node.attr_floats("aspect_ratio_range", [0.75, 1.33])
    use_image = node.attr_bool("use_image_if_no_bounding_boxes", False)
    problems = []
    if attempts <= 0:
        problems.append(f"max_attempts must be positive, got {attempts}")
    if len(area_range) != 2 or not all(0 < a <= 1 for a in area_range):
        problems.append(f"area_range must be two values in (0, 1], got {list(area_range)}")
    if len(aspect_range) != 2 or not all(a > 0 for a in aspect_range):
        problems.append(f"aspect_ratio_range must be two positive values, got {list(aspect_range)}")
    if not min_covered_input and node.attr_float("min_object_covered", 0.1) < 0:
        problems.append("min_object_covered must be non-negative")
    if problems:
        raise GraphError(f"node {node.name!r} ({node.type}): " + "; ".join(problems))
    dtype = _dtype(node, "T")

    def crop(key, image_size, boxes, min_covered):
        if np.shape(image_size) != (3,):
            raise GraphError(
                f"node {node.name!r} ({node.type}): image_size must be [height, width, "
                f"channels], got shape {np.shape(image_size)}"
            )
        if np.ndim(boxes) != 3 or np.shape(boxes)[-1] != 4:
            raise GraphError(
                f"node {node.name!r} ({node.type}): bounding_boxes must have shape "
                f"[batch, boxes, 4], got {np.shape(boxes)}"
            )
        seen = known(boxes)
        if seen is not None and not np.all((seen >= 0) & (seen <= 1)):
            raise GraphError(
                f"node {node.name!r} ({node.type}): every bounding box coordinate must be in "
                f"[0, 1], got {seen[~((seen >= 0) & (seen <= 1))][0]}"
            )
        cover = known(min_covered)
        if cover is not None and cover < 0:
            raise GraphError(
                f"node {node.name!r} ({node.type}): min_object_covered must be non-negative, got {cover}"
            )
        size = jnp.asarray(image_size).astype(jnp.int32)
        height, width = size[0], size[1]
        boxes = jnp.reshape(jnp.asarray(boxes, jnp.float32), (-1, 4))
        if boxes.shape[0] == 0:
            if not use_image:
                raise GraphError(
                    f"node {node.name!r} ({node.type}): no bounding boxes given; set "
                    "use_image_if_no_bounding_boxes=True to crop from the whole image"
                )
            pixels = jnp.stack([jnp.int32(0), jnp.int32(0), height, width])[None]
        else:
            scale = jnp.stack([height, width, height, width]).astype(jnp.float32)
            pixels = (boxes * scale[None]).astype(jnp.int32)
        y, x, h, w, valid = _crop_attempts(key, height, width, attempts, area_range, aspect_range)
        ok = valid & _covers_an_object(y, x, h, w, pixels, jnp.asarray(min_covered, jnp.float32))
        first, found = jnp.argmax(ok), jnp.any(ok)
        y, x = jnp.where(found, y[first], 0), jnp.where(found, x[first], 0)
        h, w = jnp.where(found, h[first], height), jnp.where(found, w[first], width)
        zero = jnp.int32(0)
        begin = jnp.stack([y, x, zero]).astype(dtype)
        extent = jnp.stack([h, w, jnp.int32(-1)]).astype(dtype)
        corners = jnp.stack([y, x, y + h, x + w]).astype(jnp.float32)
        bbox = corners / jnp.stack([height, width, height, width]).astype(jnp.float32)
        return begin, extent, bbox.reshape(1, 1, 4)

    if stateless:
        return lambda image_size, boxes, min_covered, seed: crop(
            _key_from_seed(seed), image_size, boxes, min_covered
        )
    if min_covered_input:
        return lambda ctx, image_size, boxes, min_covered: crop(ctx.rng(node), image_size, boxes, min_covered)
    min_covered = np.float32(node.attr_float("min_object_covered", 0.1))
    return lambda ctx, image_size, boxes: crop(ctx.rng(node), image_size, boxes, min_covered)


register("SampleDistortedBoundingBox", random=True, context=True)(
    lambda node: _sample_distorted_bounding_box(node, min_covered_input=False, stateless=False)
)
register("SampleDistortedBoundingBoxV2", random=True, context=True)(
    lambda node: _sample_distorted_bounding_box(node, min_covered_input=True, stateless=False)
)
register("StatelessSampleDistortedBoundingBox")(
    lambda node: _sample_distorted_bounding_box(node, min_covered_input=True, stateless=True)
)


# -- k-means initialization (tf.compat.v1.estimator.experimental.KMeans, clustering_ops) ------------


@functools.partial(jax.jit, static_argnames=("k", "tries"))
def _kmeans_plus_plus_rows(key, points, k: int, tries: int):
    """The indices of `k` distinct rows picked as TF's kernel picks them.

    The first row is uniform, each later one drawn in proportion to its half squared distance to
    the nearest row picked so far (uniform among those left when all such distances are zero or
    NaN), by the kernel's inverse-CDF draw over the cumulative sums of those weights. With
    retries, `tries` candidates are drawn each time (the first one too) and the one leaving the
    smallest sum of distances wins. Distances use TF's expansion `|x|²/2 - x·y + |y|²/2`, clamped
    at zero (rounding can make a row's distance to itself negative).
    """
    n = points.shape[0]
    half_norm = 0.5 * jnp.sum(points * points, axis=1)
    draws = jax.random.uniform(key, (k, tries), jnp.float32)

    def distances_to(rows):
        dots = jnp.dot(points[rows], points.T, precision=jax.lax.Precision.HIGHEST)
        return jnp.maximum(half_norm[None, :] - dots + half_norm[rows][:, None], 0.0)

    def pick(i, carry):
        nearest, taken, picked = carry
        weights = jnp.where(taken, 0.0, nearest)
        weights = jnp.where((i == 0) | ~(jnp.sum(weights) > 0), jnp.where(taken, 0.0, 1.0), weights)
        cumulative = jnp.cumsum(weights)
        last = n - 1 - jnp.argmax(weights[::-1] > 0)  # where rounding at the top end lands
        candidates = jnp.searchsorted(cumulative, draws[i] * cumulative[-1], side="right")
        candidates = jnp.minimum(candidates, last)
        after = jnp.minimum(nearest[None, :], distances_to(candidates))
        best = jnp.argmin(jnp.sum(after, axis=1))
        return after[best], taken.at[candidates[best]].set(True), picked.at[i].set(candidates[best])

    start = (jnp.full((n,), jnp.inf, jnp.float32), jnp.zeros((n,), bool), jnp.zeros((k,), jnp.int32))
    return jax.lax.fori_loop(0, k, pick, start)[2]


@register("KmeansPlusPlusInitialization")
def _kmeans_plus_plus_initialization(node):
    """`num_to_sample` rows of `points` chosen by k-means++ (see `_kmeans_plus_plus_rows`), with
    JAX's random numbers from the seed input. `num_to_sample` and `num_retries_per_sample` must be
    known when the graph is traced (they size the output and the search); a negative number of
    retries means TF's `2 + floor(log(num_to_sample))`."""

    def fn(points, num_to_sample, seed, num_retries_per_sample):
        k = _scalar_int(node, num_to_sample, "num_to_sample")
        retries = _scalar_int(node, num_retries_per_sample, "num_retries_per_sample")
        if np.ndim(points) != 2 or not 0 < k <= np.shape(points)[0]:
            raise GraphError(
                f"node {node.name!r} ({node.type}): points must be a matrix of at least num_to_sample = "
                f"{k} > 0 rows, got shape {np.shape(points)}"
            )
        tries = 1 + (retries if retries >= 0 else 2 + int(np.log(k)))
        points = jnp.asarray(points, jnp.float32)
        return points[_kmeans_plus_plus_rows(_key_from_scalar_seed(seed), points, k, tries)]

    return fn


@jax.jit
def _kmc2_chain(key, distances):
    draws = jax.random.uniform(key, (distances.shape[0] - 1,), jnp.float32)

    def step(current, candidate):
        i, distance, u = candidate
        move = distance > u * current[1]
        return (jnp.where(move, i, current[0]), jnp.where(move, distance, current[1])), None

    candidates = (jnp.arange(1, distances.shape[0], dtype=jnp.int32), distances[1:], draws)
    return jax.lax.scan(step, (jnp.int32(0), distances[0]), candidates)[0][0]


@register("KMC2ChainInitialization")
def _kmc2_chain_initialization(node):
    """One k-MC² Markov chain over candidates with squared distances `distances` to the centers
    so far: starting at candidate 0, it moves to candidate i with probability
    `min(1, distances[i] / distances[current])`; returns where it ends."""

    def fn(distances, seed):
        if np.ndim(distances) != 1 or np.shape(distances)[0] == 0:
            raise GraphError(
                f"node {node.name!r} ({node.type}): distances must be a non-empty vector, got shape "
                f"{np.shape(distances)}"
            )
        chosen = _kmc2_chain(_key_from_scalar_seed(seed), jnp.asarray(distances, jnp.float32))
        return chosen.astype(jax.dtypes.canonicalize_dtype(np.int64))

    return fn
