"""Random ops: TF's streams cannot be matched, so these tests check distributions, shapes, dtypes,
keys and determinism, and compare with TF exactly where randomness cancels out (dropout with
keep_prob=1, sampled softmax with given samples, AllCandidateSampler)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from oracle import compare_with_tf, export_meta, get_tf, run_tf

import jaxmeta

pytestmark = pytest.mark.oracle

N = 100_000
KEY = jax.random.key(0)


def _draws(build, feeds=None, key=KEY, jit=True):
    """Runs `build` in TF (for shapes and dtypes) and in jaxmeta; returns (jaxmeta values, TF's)."""
    feeds = dict(feeds or {})
    run = run_tf(build, feeds)
    f = run.graph.function(run.fetch_names, feeds=list(feeds))
    f = jax.jit(f) if jit else f
    got = [np.asarray(v) for v in f({}, *feeds.values(), key=key)]
    for g, w, name in zip(got, run.expected, run.fetch_names):
        assert g.shape == np.shape(w), name
        assert g.dtype == jax.dtypes.canonicalize_dtype(np.asarray(w).dtype), name
    return got, run.expected


def _moments(x, mean, std, tol=0.02):
    x = np.asarray(x, np.float64)
    assert abs(x.mean() - mean) < tol * max(std, 1.0), (x.mean(), mean)
    assert abs(x.std() - std) < tol * max(std, 1.0), (x.std(), std)


# -- distributions of the stateful ops -------------------------------------------------------------

# (name, build, check(values)); each builds one op of N draws.
TRUNC_STD = 0.8796256610342398  # std of a standard normal truncated to [-2, 2]
CASES = [
    (
        "uniform_f32",
        lambda tf: tf.random.uniform([N]),
        lambda x: (x.min() >= 0, x.max() < 1, _moments(x, 0.5, 12**-0.5)),
    ),
    (
        "uniform_f16",
        lambda tf: tf.random.uniform([200, 500], dtype=tf.float16),
        lambda x: _moments(x, 0.5, 12**-0.5),
    ),
    (
        "uniform_f64",
        lambda tf: tf.random.uniform([N], -3.0, 5.0, dtype=tf.float64),
        lambda x: _moments(x, 1.0, 8 / 12**0.5),
    ),
    (
        "uniform_int",
        lambda tf: tf.random.uniform([N], -3, 7, dtype=tf.int32),
        lambda x: (set(np.unique(x)) == set(range(-3, 7)), _moments(x, 1.5, (99 / 12) ** 0.5)),
    ),
    (
        "uniform_int64",
        lambda tf: tf.random.uniform([N], 0, 4, dtype=tf.int64),
        lambda x: set(np.unique(x)) == {0, 1, 2, 3},
    ),
    ("normal", lambda tf: tf.random.normal([N], 2.0, 3.0), lambda x: _moments(x, 2.0, 3.0)),
    (
        "normal_bf16",
        lambda tf: tf.random.normal([N], dtype=tf.bfloat16),
        lambda x: _moments(x.astype(np.float32), 0.0, 1.0),
    ),
    (
        "truncated",
        lambda tf: tf.random.truncated_normal([N]),
        lambda x: (np.abs(x).max() <= 2.0, _moments(x, 0.0, TRUNC_STD)),
    ),
    (
        "truncated_scaled",
        lambda tf: tf.random.truncated_normal([N], 1.0, 0.5),
        lambda x: (x.min() >= 0.0, x.max() <= 2.0, _moments(x, 1.0, 0.5 * TRUNC_STD)),
    ),
    (
        "gamma",
        lambda tf: tf.random.gamma([N], [2.0, 0.5]),
        lambda x: (
            x.shape == (N, 2),
            x.min() >= 0,
            _moments(x[:, 0], 2.0, 2**0.5),
            _moments(x[:, 1], 0.5, 0.5**0.5),
        ),
    ),
    ("poisson", lambda tf: tf.random.poisson([N], 3.0), lambda x: _moments(x, 3.0, 3**0.5)),
    (
        "poisson_int",
        lambda tf: tf.random.poisson([N], [1.0, 5.0], dtype=tf.int32),
        lambda x: (_moments(x[:, 0], 1.0, 1.0), _moments(x[:, 1], 5.0, 5**0.5)),
    ),
    (
        "multinomial",
        lambda tf: tf.random.categorical(tf.math.log([[0.2, 0.8], [0.5, 0.5]]), N),
        lambda x: (x.shape == (2, N), abs(x[0].mean() - 0.8) < 0.01, abs(x[1].mean() - 0.5) < 0.01),
    ),
    (
        "multinomial_int32",
        lambda tf: tf.random.categorical([[0.0, 0.0, -np.inf]], 1000, dtype=tf.int32),
        lambda x: set(np.unique(x)) == {0, 1},
    ),
    (
        "param_truncated",
        lambda tf: tf.raw_ops.ParameterizedTruncatedNormal(
            shape=[2, N // 2], means=[0.0, 5.0], stdevs=[1.0, 2.0], minvals=[-1.0, 5.0], maxvals=[1.0, 100.0]
        ),
        lambda x: (
            x[0].min() >= -1,
            x[0].max() <= 1,
            x[1].min() >= 5,
            abs(x[1].mean() - (5 + 2 * (2 / np.pi) ** 0.5)) < 0.05,
        ),
    ),
    (
        "param_truncated_scalar",
        lambda tf: tf.raw_ops.ParameterizedTruncatedNormal(
            shape=[N], means=[0.0], stdevs=[1.0], minvals=[-2.0], maxvals=[2.0]
        ),
        lambda x: _moments(x, 0.0, TRUNC_STD),
    ),
]


@pytest.mark.parametrize("name,build,check", CASES, ids=[c[0] for c in CASES])
def test_distribution(name, build, check):
    (x,), _ = _draws(build)
    result = check(x)
    for r in result if isinstance(result, tuple) else (result,):
        assert r is None or bool(r), name


def test_shuffle_is_a_permutation_of_rows():
    x = np.arange(20, dtype=np.float32).reshape(10, 2)

    def build(tf):
        return tf.random.shuffle(tf.compat.v1.placeholder(tf.float32, [10, 2], name="x"))

    (got,), _ = _draws(build, {"x:0": x})
    assert not np.array_equal(got, x)
    np.testing.assert_array_equal(np.sort(got[:, 0]), x[:, 0])
    np.testing.assert_array_equal(got[:, 1], got[:, 0] + 1)  # rows move whole


def test_dtype_attr_and_integer_shape_dtypes():
    def build(tf):
        return [
            tf.random.uniform(tf.constant([3, 2], tf.int64), dtype=tf.float16),
            tf.random.normal(tf.constant([4], tf.int32), dtype=tf.float64),
            tf.raw_ops.RandomUniformInt(
                shape=[2], minval=tf.constant(0, tf.int64), maxval=tf.constant(9, tf.int64)
            ),
        ]

    _draws(build)


# -- keys -------------------------------------------------------------------------------------------


def _two_uniforms(tf):
    return [tf.random.uniform([1000], name="a"), tf.random.uniform([1000], name="b")]


def test_same_key_same_values_different_nodes_different_values():
    (a1, b1), _ = _draws(_two_uniforms)
    (a2, b2), _ = _draws(_two_uniforms, jit=False)
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(b1, b2)
    assert not np.allclose(a1, b1)
    (a3, _), _ = _draws(_two_uniforms, key=jax.random.key(1))
    assert not np.allclose(a1, a3)
    (a4, _), _ = _draws(_two_uniforms, key=jax.random.PRNGKey(0))  # raw uint32 keys work too
    assert a4.shape == (1000,)


def test_values_do_not_depend_on_what_else_is_fetched():
    run = run_tf(_two_uniforms)
    both = run.graph.function(run.fetch_names)({}, key=KEY)
    only_b = run.graph.function(run.fetch_names[1])({}, key=KEY)
    np.testing.assert_array_equal(both[1], only_b)


def test_error_without_key():
    run = run_tf(_two_uniforms)
    with pytest.raises(jaxmeta.FeedError, match="key="):
        run.graph.function(run.fetch_names)({})


def test_static_shape_required():
    def build(tf):
        n = tf.compat.v1.placeholder(tf.int32, [1], name="n")
        return tf.random.uniform(n)

    run = run_tf(build, {"n:0": np.int32([3])})
    f = run.graph.function(run.fetch_names, feeds=["n:0"])
    with pytest.raises(jaxmeta.GraphError, match="shape input must be known"):
        f({}, np.int32([3]), key=KEY)


def test_initializers_use_the_key():
    def build(tf):
        tf.compat.v1.get_variable(
            "w", [300, 300], initializer=tf.compat.v1.truncated_normal_initializer(0.0, 0.1)
        )
        return tf.constant(0.0)

    g = run_tf(build).graph
    w = np.asarray(g.init_variables(key=KEY)["w"])
    assert np.abs(w).max() <= 0.2 and abs(w.std() - 0.1 * TRUNC_STD) < 0.005


# -- dropout ----------------------------------------------------------------------------------------

X = np.random.default_rng(0).uniform(1.0, 2.0, (400, 250)).astype(np.float32)


def _dropout_graph(keep_prob, as_tensor):
    def build(tf):
        x = tf.compat.v1.placeholder(tf.float32, X.shape, name="x")
        kp = (
            tf.compat.v1.placeholder_with_default(np.float32(keep_prob), [], name="kp")
            if as_tensor
            else keep_prob
        )
        return tf.compat.v1.nn.dropout(x, keep_prob=kp)

    return build


@pytest.mark.parametrize("as_tensor", [False, True])
def test_dropout_keep_all_matches_tf(as_tensor):
    compare_with_tf(_dropout_graph(1.0, as_tensor), {"x:0": X}, grads=True, key=KEY)


@pytest.mark.parametrize("as_tensor", [False, True])
def test_dropout_half(as_tensor):
    (y,), _ = _draws(_dropout_graph(0.5, as_tensor), {"x:0": X})
    kept = y != 0
    assert abs(kept.mean() - 0.5) < 0.01
    np.testing.assert_allclose(y[kept], 2.0 * X[kept], rtol=1e-6)
    # The gradient is the same mask, scaled.
    run = run_tf(_dropout_graph(0.5, as_tensor), {"x:0": X})
    f = run.graph.function(run.fetch_names, feeds=["x:0"])
    grad = jax.jit(jax.grad(lambda x: jnp.sum(f({}, x, key=KEY)[0])))(X)
    np.testing.assert_allclose(np.asarray(grad), np.where(kept, 2.0, 0.0))


# -- stateless ops ----------------------------------------------------------------------------------


STATELESS = [
    ("uniform", lambda tf, s: tf.random.stateless_uniform([N], seed=s), lambda x: _moments(x, 0.5, 12**-0.5)),
    (
        "uniform_int",
        lambda tf, s: tf.random.stateless_uniform([N], seed=s, minval=2, maxval=6, dtype=tf.int32),
        lambda x: set(np.unique(x)) == {2, 3, 4, 5},
    ),
    (
        "full_int",
        lambda tf, s: tf.random.stateless_uniform([N], seed=s, minval=None, maxval=None, dtype=tf.int32),
        lambda x: (x.min() < -(2**30), x.max() > 2**30),
    ),
    (
        "normal",
        lambda tf, s: tf.random.stateless_normal([N], seed=s, mean=1.0, stddev=2.0),
        lambda x: _moments(x, 1.0, 2.0),
    ),
    (
        "truncated",
        lambda tf, s: tf.random.stateless_truncated_normal([N], seed=s),
        lambda x: (np.abs(x).max() <= 2, _moments(x, 0.0, TRUNC_STD)),
    ),
    (
        "categorical",
        lambda tf, s: tf.random.stateless_categorical(tf.math.log([[0.25, 0.75]]), N, seed=s),
        lambda x: abs(x.mean() - 0.75) < 0.01,
    ),
    (
        "poisson",
        lambda tf, s: tf.random.stateless_poisson([N], seed=s, lam=2.0),
        lambda x: _moments(x, 2.0, 2**0.5),
    ),
    (
        "gamma",
        lambda tf, s: tf.random.stateless_gamma([N], seed=s, alpha=3.0),
        lambda x: _moments(x, 3.0, 3**0.5),
    ),
    (
        "binomial",
        lambda tf, s: tf.random.stateless_binomial([N], seed=s, counts=10.0, probs=0.3),
        lambda x: _moments(x, 3.0, 2.1**0.5),
    ),
    (
        "v1_uniform",
        lambda tf, s: tf.raw_ops.StatelessRandomUniform(shape=[N], seed=s),
        lambda x: _moments(x, 0.5, 12**-0.5),
    ),
    (
        "v1_normal",
        lambda tf, s: tf.raw_ops.StatelessRandomNormal(shape=[N], seed=s),
        lambda x: _moments(x, 0.0, 1.0),
    ),
    (
        "v1_truncated",
        lambda tf, s: tf.raw_ops.StatelessTruncatedNormal(shape=[N], seed=s),
        lambda x: np.abs(x).max() <= 2,
    ),
    (
        "param_truncated",
        lambda tf, s: tf.raw_ops.StatelessParameterizedTruncatedNormal(
            shape=[N], seed=s, means=0.0, stddevs=1.0, minvals=0.0, maxvals=np.inf
        ),
        lambda x: (x.min() >= 0, abs(x.mean() - (2 / np.pi) ** 0.5) < 0.01),
    ),
]


@pytest.mark.parametrize("name,build,check", STATELESS, ids=[c[0] for c in STATELESS])
def test_stateless(name, build, check):
    def graph(tf):
        seed = tf.compat.v1.placeholder(tf.int64, [2], name="seed")
        return [
            build(tf, tf.constant([1, 2], tf.int64)),
            build(tf, tf.constant([1, 3], tf.int64)),
            build(tf, seed),
        ]

    # No key needed: the seed input determines the values.
    (a, b, c), _ = _draws(graph, {"seed:0": np.int64([1, 2])}, key=None)
    result = check(a)
    for r in result if isinstance(result, tuple) else (result,):
        assert r is None or bool(r), name
    np.testing.assert_array_equal(a, c)  # same seed (constant or fed, under jit) -> same values
    assert not np.array_equal(a, b)
    (a2, _, _), _ = _draws(graph, {"seed:0": np.int64([1, 2])}, key=None, jit=False)
    np.testing.assert_allclose(
        a, a2, rtol=1e-5, atol=1e-6
    )  # jit may round transcendental functions differently


# -- candidate samplers -----------------------------------------------------------------------------

TRUE = np.int64([[0, 3], [7, 1], [9, 9]])


def _sampler(kind, unique, num_sampled=5, range_max=10, **kwargs):
    def build(tf):
        labels = tf.constant(TRUE)
        fn = getattr(tf.random, f"{kind}_candidate_sampler")
        return list(fn(labels, 2, num_sampled, unique, range_max, **kwargs))

    return build


def _probs(kind, range_max=10):
    k = np.arange(range_max)
    if kind == "uniform":
        return np.full(range_max, 1.0 / range_max)
    if kind == "log_uniform":
        return np.log((k + 2) / (k + 1)) / np.log(range_max + 1)
    w = np.arange(1.0, range_max + 1) ** 0.75
    return w / w.sum()


UNIGRAM_KW = {"unigrams": list(np.arange(1.0, 11)), "distortion": 0.75}


@pytest.mark.parametrize("kind", ["uniform", "log_uniform", "fixed_unigram"])
@pytest.mark.parametrize("unique", [False, True])
def test_candidate_sampler(kind, unique):
    kw = UNIGRAM_KW if kind == "fixed_unigram" else {}
    build = _sampler(kind, unique, **kw)
    run = run_tf(build)
    f = jax.jit(run.graph.function(run.fetch_names))
    p = _probs(kind)
    tries = []
    for seed in range(50):
        sampled, true_count, sampled_count = (np.asarray(v) for v in f({}, key=jax.random.key(seed)))
        assert sampled.shape == (5,) and true_count.shape == (3, 2) and sampled_count.shape == (5,)
        assert sampled.dtype == np.int32 and true_count.dtype == np.float32
        assert ((sampled >= 0) & (sampled < 10)).all()
        if not unique:
            np.testing.assert_allclose(true_count, p[TRUE] * 5, rtol=1e-5)
            np.testing.assert_allclose(sampled_count, p[sampled] * 5, rtol=1e-5)
            continue
        assert len(set(sampled.tolist())) == 5
        # Both outputs come from one number of tries n: count = 1 - (1 - p)^n, or p * 5 if n == 5.
        if np.allclose(sampled_count, p[sampled] * 5, rtol=1e-5):
            n, want = 5.0, p * 5
        else:
            n = np.log1p(-sampled_count[0]) / np.log1p(-p[sampled[0]])
            want = -np.expm1(n * np.log1p(-p))
        tries.append(n)
        np.testing.assert_allclose(true_count, want[TRUE], rtol=1e-3)
        np.testing.assert_allclose(sampled_count, want[sampled], rtol=1e-3)
    if unique and kind != "uniform":
        assert np.mean(tries) > 5  # rejections happen with skewed distributions


@pytest.mark.parametrize("kind", ["uniform", "log_uniform"])
def test_candidate_sampler_frequencies(kind):
    # Without `unique`, classes are drawn with the sampler's probabilities.
    (sampled, _, _), _ = _draws(_sampler(kind, False, num_sampled=N))
    freq = np.bincount(sampled, minlength=10) / N
    np.testing.assert_allclose(freq, _probs(kind), atol=0.005)


def test_unique_sampler_expected_counts_match_tf_on_average():
    # TF's unique sampler counts its rejection-sampling tries; the mean expected count over many
    # draws checks that jaxmeta samples that number with the right distribution.
    tf = get_tf()
    build = _sampler("log_uniform", True, num_sampled=6, range_max=12)
    run = run_tf(build)
    g = tf.Graph()
    with g.as_default():
        outs = build(tf)
        with tf.compat.v1.Session(graph=g) as sess:
            tf_counts = np.mean([sess.run(outs[1]) for _ in range(400)], axis=0)
    f = jax.jit(jax.vmap(lambda k: run.graph.function(run.fetch_names)({}, key=k)[1]))
    ours = np.asarray(f(jax.random.split(KEY, 4000))).mean(axis=0)
    np.testing.assert_allclose(ours, tf_counts, rtol=0.05)


def test_all_candidate_sampler_matches_tf():
    compare_with_tf(lambda tf: list(tf.random.all_candidate_sampler(tf.constant(TRUE), 2, 10, True)))


def test_sampled_softmax_loss_with_given_samples_matches_tf():
    # With the samples given, sampled_softmax_loss is deterministic: it checks ComputeAccidentalHits
    # (padded to all pairs, weight 0 for non-hits) + SparseToDense against TF exactly.
    rng = np.random.default_rng(1)
    weights = rng.standard_normal((10, 4)).astype(np.float32)
    inputs = rng.standard_normal((3, 4)).astype(np.float32)

    def build(tf):
        w = tf.compat.v1.placeholder(tf.float32, [10, 4], name="w") * 1.0  # a dense gradient for the oracle
        x = tf.compat.v1.placeholder(tf.float32, [3, 4], name="x")
        sampled = (
            tf.constant([3, 0, 7, 5], tf.int64),
            tf.constant(np.full((3, 2), 0.3, np.float32)),
            tf.constant([0.2, 0.4, 0.1, 0.3]),
        )
        loss = tf.nn.sampled_softmax_loss(
            w, tf.zeros([10]), tf.constant(TRUE), x, 4, 10, num_true=2, sampled_values=sampled
        )
        return loss

    compare_with_tf(build, {"w:0": weights, "x:0": inputs}, grads=True)


def test_sampled_softmax_loss_runs_with_sampler():
    def build(tf):
        w = tf.constant(np.random.default_rng(2).standard_normal((50, 4)).astype(np.float32))
        x = tf.constant(np.ones((3, 4), np.float32))
        return tf.nn.sampled_softmax_loss(w, tf.zeros([50]), tf.constant(TRUE), x, 8, 50, num_true=2)

    (loss,), (want,) = _draws(build)
    assert np.isfinite(loss).all() and loss.shape == want.shape


# -- learned unigram samplers: a distribution learned from the true classes, run after run ---------

LEARNED_OPS = ["LearnedUnigramCandidateSampler", "ThreadUnsafeUnigramCandidateSampler"]
LEARNED_FEEDS = [TRUE, np.int64([[9, 9], [9, 2]]), np.int64([[0, 0]]), np.zeros((0, 2), np.int64), TRUE]


def _learned(op, unique, num_sampled=5, range_max=10, num_true=2):
    def build(tf):
        labels = tf.compat.v1.placeholder(tf.int64, [None, num_true], name="labels")
        if op == "LearnedUnigramCandidateSampler":  # through TF1's Python API
            return list(tf.compat.v1.nn.learned_unigram_candidate_sampler(
                labels, num_true, num_sampled, unique, range_max))
        return list(getattr(tf.raw_ops, op)(
            true_classes=labels, num_true=num_true, num_sampled=num_sampled, unique=unique, range_max=range_max))

    return build


def _tf_runs(build, feeds):
    """The graph `build` makes, and TF's fetches run after run (one session: the op's state goes on)."""
    tf = get_tf()
    g = tf.Graph()
    with g.as_default():
        outs = build(tf)
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
        with tf.compat.v1.Session(graph=g) as sess:
            runs = [sess.run(outs, {"labels:0": f}) for f in feeds]
    return jaxmeta.import_meta_graph(meta), [o.name for o in outs], runs


def _learned_probs(feeds, range_max=10):
    """The class probabilities TF's kernel samples with in each run: counts start at 1 and every
    run adds its true classes after sampling."""
    counts, probs = np.ones(range_max, np.int32), []
    for f in feeds:
        probs.append(counts.astype(np.float32) / np.float32(counts.sum()))
        np.add.at(counts, f.reshape(-1), 1)
    return probs, counts


def _check_counts(sampled, true_count, sampled_count, p, unique, labels, num_sampled=5):
    """Shapes, range, uniqueness, and both expected counts from the probabilities `p`."""
    assert sampled.shape == (num_sampled,) and sampled_count.shape == (num_sampled,)
    assert true_count.shape == labels.shape and true_count.dtype == np.float32
    assert ((sampled >= 0) & (sampled < len(p))).all()
    if not unique:
        np.testing.assert_allclose(true_count, p[labels] * num_sampled, rtol=1e-6)
        np.testing.assert_allclose(sampled_count, p[sampled] * num_sampled, rtol=1e-6)
        return
    assert len(set(sampled.tolist())) == num_sampled
    # Both outputs come from one number of tries n: count = 1 - (1 - p)^n, or p * num_sampled if n is num_sampled.
    if np.allclose(sampled_count, p[sampled] * num_sampled, rtol=1e-6):
        want = p * num_sampled
    else:
        n = np.log1p(-sampled_count[0]) / np.log1p(-p[sampled[0]].astype(np.float64))
        want = -np.expm1(np.round(n) * np.log1p(-p.astype(np.float64)))
    np.testing.assert_allclose(true_count, want[labels], rtol=1e-5)
    np.testing.assert_allclose(sampled_count, want[sampled], rtol=1e-5)


@pytest.mark.parametrize("unique", [False, True])
@pytest.mark.parametrize("op", LEARNED_OPS)
def test_learned_unigram_sampler_learns_as_tf_does(op, unique):
    """Run after run, both expected counts come from the probabilities TF's kernel holds then
    (counts from 1, plus every true class of the earlier runs), in TF and in jaxmeta; without
    `unique` they equal TF's exactly. graph.step returns the counts, with and without jit."""
    graph, names, want = _tf_runs(_learned(op, unique), LEARNED_FEEDS)
    probs, final = _learned_probs(LEARNED_FEEDS)
    for tf_run, p, labels in zip(want, probs, LEARNED_FEEDS):  # TF's own outputs, as modelled
        _check_counts(*tf_run, p, unique, labels)
    step = graph.step(names, ["labels:0"])
    for jit in (False, True):
        fn, state = jax.jit(step) if jit else step, {}
        for i, (tf_run, p, labels) in enumerate(zip(want, probs, LEARNED_FEEDS)):
            got, state = fn(state, labels, key=jax.random.key(i))
            got = [np.asarray(v) for v in got]
            assert got[0].dtype == jax.dtypes.canonicalize_dtype(np.int64)
            _check_counts(*got, p, unique, labels)
            if not unique:
                np.testing.assert_array_equal(got[1], tf_run[1])
        assert list(state) == [op]
        np.testing.assert_array_equal(state[op], final)
        assert state[op].dtype == np.int32


def test_learned_unigram_sampler_in_a_session():
    """A Session carries the sampler's counts from run to run, as TF's session does."""
    graph, names, want = _tf_runs(_learned(LEARNED_OPS[0], False), LEARNED_FEEDS)
    for jit in (False, True):
        with jaxmeta.Session(graph, jit=jit, seed=3) as sess:
            for labels, tf_run in zip(LEARNED_FEEDS, want):
                np.testing.assert_array_equal(sess.run(names[1], {"labels:0": labels}), tf_run[1])


def test_learned_unigram_sampler_frequencies_match_tf():
    """After a run has taught it skewed classes, the sampler draws them with their learned
    frequencies (here drawn by a run without true classes, which learns nothing), as TF does."""
    rng = np.random.default_rng(0)
    teach = rng.choice(10, size=(2000, 1), p=np.arange(1, 11) / 55).astype(np.int64)
    feeds = [teach, np.zeros((0, 1), np.int64)]
    graph, names, want = _tf_runs(_learned(LEARNED_OPS[1], False, num_sampled=N, num_true=1), feeds)
    p = _learned_probs(feeds)[0][1]
    (got, _, _), state = jax.jit(graph.step(names, ["labels:0"]))({}, teach, key=KEY)
    (got, _, counts), _ = jax.jit(graph.step(names, ["labels:0"]))(state, feeds[1], key=jax.random.key(1))
    for sampled in (np.asarray(got), want[1][0]):
        np.testing.assert_allclose(np.bincount(sampled, minlength=10) / N, p, atol=0.005)
    np.testing.assert_allclose(np.asarray(counts), p[np.asarray(got)] * N, rtol=1e-6)


def test_learned_unigram_unique_sampler_matches_tf_in_distribution():
    """With `unique`, how often each class is among the samples and the mean expected count (which
    follows the number of tries) agree with TF's over many runs from the same learned counts."""
    feeds = [np.int64([[0], [0], [0], [0], [0], [1], [1], [2]]), *[np.zeros((0, 1), np.int64)] * 1000]
    graph, names, want = _tf_runs(_learned(LEARNED_OPS[0], True, num_sampled=4, num_true=1), feeds)
    step = graph.step(names, ["labels:0"])
    _, state = step({}, feeds[0], key=KEY)
    draw = jax.jit(jax.vmap(lambda k: step(state, feeds[1], key=k)[0]))
    sampled, _, counts = (np.asarray(v) for v in draw(jax.random.split(KEY, 10_000)))
    tf_sampled = np.stack([r[0] for r in want[1:]])
    tf_counts = np.stack([r[2] for r in want[1:]])

    def inclusion(s):
        return np.bincount(s.reshape(-1), minlength=10) / len(s)

    np.testing.assert_allclose(inclusion(sampled), inclusion(tf_sampled), atol=0.05)
    np.testing.assert_allclose(counts.mean(), tf_counts.mean(), rtol=0.03)


def test_learned_unigram_sampler_stops_counting_at_int32_max():
    """TF's Update adds only as many classes as keep the int32 total within 2**31 - 1."""
    graph, names, _ = _tf_runs(_learned(LEARNED_OPS[1], False), [])
    start = np.ones(10, np.int32)
    start[5] = 2**31 - 1 - 9 - 2  # room for two more
    _, state = graph.step(names, ["labels:0"])({LEARNED_OPS[1]: start}, TRUE, key=KEY)
    want = start.copy()
    want[[0, 3]] += 1  # TRUE's first two classes
    np.testing.assert_array_equal(state[LEARNED_OPS[1]], want)


def test_learned_unigram_sampler_errors():
    graph, names, _ = _tf_runs(_learned(LEARNED_OPS[0], False), [])
    with pytest.raises(jaxmeta.GraphError, match="graph.step"):
        graph.function(names, ["labels:0"])
    step = graph.step(names, ["labels:0"])
    with pytest.raises(jaxmeta.GraphError, match=r"outside \[0, range_max = 10\)"):
        step({}, np.int64([[0, 10]]), key=KEY)
    with pytest.raises(jaxmeta.GraphError, match="class counts"):
        step({LEARNED_OPS[0]: np.ones(3, np.int32)}, TRUE, key=KEY)
    meta, _ = export_meta(lambda tf: tf.raw_ops.ThreadUnsafeUnigramCandidateSampler(
        true_classes=tf.constant(TRUE), num_true=2, num_sampled=2, unique=False, range_max=2**31 - 1))
    with pytest.raises(jaxmeta.GraphError, match="range_max must be less than"):
        jaxmeta.import_meta_graph(meta).step(["ThreadUnsafeUnigramCandidateSampler:1"])


# -- NonDeterministicInts ---------------------------------------------------------------------------


@pytest.mark.parametrize("x64", [False, True], ids=["x64_off", "x64_on"])
@pytest.mark.parametrize("dtype", ["int32", "int64", "uint32", "uint64"])
def test_non_deterministic_ints(dtype, x64):
    """Shape and dtype as TF's (64-bit types narrow with x64 off) and every bit of the narrowed
    type a fair coin: the values span the type's whole range."""
    def build(tf):
        shape = tf.constant([200, 500], tf.int32 if dtype == "int32" else tf.int64)
        return tf.raw_ops.NonDeterministicInts(shape=shape, dtype=getattr(tf, dtype))

    with jax.enable_x64(x64):
        (got,), _ = _draws(build)
        (again,), _ = _draws(build, jit=False)
    np.testing.assert_array_equal(got, again)  # the key decides the values
    bits = 8 * got.dtype.itemsize
    assert bits == (64 if x64 and dtype.endswith("64") else 32)
    words = got.reshape(-1).view(f"uint{bits}")
    ones = (words[:, None] >> np.arange(bits, dtype=words.dtype)) & 1
    np.testing.assert_allclose(ones.mean(axis=0), 0.5, atol=0.01)
    (other,), _ = _draws(build, key=jax.random.key(1))
    assert (other != got).mean() > 0.99


def test_non_deterministic_ints_refuses_other_dtypes():
    meta, out = export_meta(lambda tf: tf.raw_ops.NonDeterministicInts(shape=[3], dtype=tf.float32))
    with pytest.raises(jaxmeta.GraphError, match="float32 is not supported"):
        jaxmeta.import_meta_graph(meta).function(out.name)({}, key=KEY)


def test_random_gamma_grad():
    """RandomGammaGrad (tf.random.gamma's gradient op in training graphs): d sample / d alpha,
    against TF over small and large alphas and samples in both tails."""
    alpha = np.array([0.1, 0.5, 1.0, 2.5, 7.0, 30.0, 200.0, 0.8], np.float32)
    sample = np.array([0.01, 0.3, 1.0, 4.0, 5.5, 35.0, 190.0, 1e-6], np.float32)

    def build(tf):
        a = tf.compat.v1.placeholder(tf.float32, [8], name="a")
        s = tf.compat.v1.placeholder(tf.float32, [8], name="s")
        return [
            tf.raw_ops.RandomGammaGrad(alpha=a, sample=s),
            tf.raw_ops.RandomGammaGrad(alpha=tf.cast(a, tf.float64), sample=tf.cast(s, tf.float64)),
        ]

    compare_with_tf(build, {"a:0": alpha, "s:0": sample}, rtol=2e-4, atol=1e-6)


# -- sampled crops ---------------------------------------------------------------------------------

IMAGE = (120, 200, 3)
BOX = [[[0.1, 0.2, 0.5, 0.6]]]


def _crop_graph(tf, op="stateless", boxes=BOX, **attrs):
    """A crop sampler over an IMAGE-sized placeholder; stateless ones read the `seed:0` feed."""
    image = tf.compat.v1.placeholder(tf.uint8, IMAGE, name="image")
    boxes = tf.constant(boxes, tf.float32, shape=np.shape(boxes) if np.size(boxes) else [1, 0, 4])
    if op == "stateless":
        seed = tf.compat.v1.placeholder(tf.int32, [2], name="seed")
        return tf.image.stateless_sample_distorted_bounding_box(tf.shape(image), boxes, seed=seed, **attrs)
    if op == "v1":
        return tf.raw_ops.SampleDistortedBoundingBox(
            image_size=tf.shape(image), bounding_boxes=boxes, **attrs
        )
    return tf.compat.v1.image.sample_distorted_bounding_box(tf.shape(image), boxes, **attrs)


def _crop_summary(begin, size):
    """Mean area fraction, aspect ratio, offsets and the share of whole-image crops."""
    begin, size = np.asarray(begin, np.float64), np.asarray(size, np.float64)
    area = size[:, 0] * size[:, 1] / (IMAGE[0] * IMAGE[1])
    return {
        "area": area.mean(),
        "aspect": (size[:, 1] / size[:, 0]).mean(),
        "y": begin[:, 0].mean() / IMAGE[0],
        "x": begin[:, 1].mean() / IMAGE[1],
        "whole": (area == 1).mean(),
    }


@pytest.mark.parametrize(
    "attrs",
    [
        {"min_object_covered": 0.3},
        {
            "min_object_covered": 0.9,
            "aspect_ratio_range": (0.5, 2.0),
            "area_range": (0.02, 0.5),
            "max_attempts": 20,
        },
    ],
    ids=["default_ranges", "hard_constraints"],
)
def test_sample_distorted_bounding_box_matches_tf_in_distribution(attrs):
    """The crops of 1000 seeds, drawn at once with jax.vmap, against TF's crops of 1000 seeds:
    the same mean size, shape, place and rate of falling back to the whole image."""
    tf = get_tf()
    n = 1000
    g = tf.Graph()
    with g.as_default():
        begin, size, bbox = _crop_graph(tf, **attrs)
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
        with tf.compat.v1.Session(graph=g) as sess:
            want = [sess.run([begin, size], {"seed:0": [i, 3]}) for i in range(n)]
    f = jaxmeta.import_meta_graph(meta).function([begin.name, size.name, bbox.name], feeds=["seed:0"])
    seeds = np.stack([np.arange(n), np.full(n, 3)], axis=1).astype(np.int32)
    got_begin, got_size, got_bbox = (
        np.asarray(v) for v in jax.jit(jax.vmap(f, in_axes=(None, 0)))({}, seeds)
    )
    got, want = _crop_summary(got_begin, got_size), _crop_summary(*map(np.array, zip(*want)))
    for stat, tol in [("area", 0.03), ("aspect", 0.05), ("y", 0.02), ("x", 0.02), ("whole", 0.04)]:
        assert abs(got[stat] - want[stat]) < tol, (stat, got, want)
    # Every crop lies in the image, keeps the channels, and its box says where it is.
    h, w, _ = IMAGE
    assert np.all(got_begin[:, 2] == 0) and np.all(got_size[:, 2] == -1)
    assert np.all(got_begin[:, :2] >= 0) and np.all(got_begin[:, :2] + got_size[:, :2] <= [h, w])
    corners = np.concatenate([got_begin[:, :2], got_begin[:, :2] + got_size[:, :2]], axis=1) / [h, w, h, w]
    np.testing.assert_allclose(got_bbox[:, 0, 0], corners, rtol=1e-6)
    # A crop that is not the whole image meets the constraints it was drawn under.
    drawn = got_size[:, 0] * got_size[:, 1] < h * w
    area = got_size[drawn, 0] * got_size[drawn, 1] / (h * w)
    low, high = attrs.get("area_range", (0.05, 1.0))
    assert np.all(area >= low - 1e-6) and np.all(area <= high + 1e-6)
    y0, x0, y1, x1 = 12, 40, 60, 120  # BOX in pixels
    inter = [
        max(0, min(b[0] + s[0], y1) - max(b[0], y0)) * max(0, min(b[1] + s[1], x1) - max(b[1], x0))
        for b, s in zip(got_begin[drawn], got_size[drawn])
    ]
    assert np.all(np.array(inter) / ((y1 - y0) * (x1 - x0)) >= attrs["min_object_covered"])


@pytest.mark.parametrize("case", ["whole_area", "no_boxes", "unreachable_cover"])
def test_sample_distorted_bounding_box_whole_image_matches_tf(case):
    """Where the constraints leave one answer (the whole image), TF's and jaxmeta's agree exactly."""
    attrs = {
        "whole_area": {"area_range": (1.0, 1.0), "aspect_ratio_range": (0.5, 3.0)},
        "no_boxes": {"boxes": [], "use_image_if_no_bounding_boxes": True, "area_range": (1.0, 1.0)},
        # The box is 2x2 pixels and must be covered whole by a crop of at most 5 % of the image
        # that also lies in a thin band elsewhere: impossible, so the whole image.
        "unreachable_cover": {
            "boxes": [[[0.0, 0.0, 0.02, 0.01]]],
            "min_object_covered": 1.0,
            "area_range": (0.3, 0.31),
            "aspect_ratio_range": (50.0, 60.0),
        },
    }[case]
    feeds = {"seed:0": np.array([5, 9], np.int32)}
    compare_with_tf(lambda tf: _crop_graph(tf, **attrs), feeds)


@pytest.mark.parametrize("op", ["v1", "v2"])
def test_stateful_crop_samplers_use_the_key(op):
    tf = get_tf()
    g = tf.Graph()
    with g.as_default():
        extra = {"min_object_covered": 0.2} if op == "v1" else {"min_object_covered": tf.constant(0.2)}
        begin, size, _ = _crop_graph(tf, op, **extra)
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
    f = jax.jit(jaxmeta.import_meta_graph(meta).function([begin.name, size.name]))
    crops = {tuple(np.concatenate([np.asarray(v) for v in f({}, key=jax.random.key(i))])) for i in range(20)}
    assert len(crops) > 10  # different keys, different crops
    np.testing.assert_array_equal(
        np.concatenate(f({}, key=jax.random.key(4))), np.concatenate(f({}, key=jax.random.key(4)))
    )
    with pytest.raises(jaxmeta.FeedError, match="draws random numbers"):
        f({})


def test_crop_sampler_refuses_what_tf_refuses():
    tf = get_tf()
    g = tf.Graph()
    with g.as_default():
        no_boxes = _crop_graph(tf, boxes=[])
        outside = _crop_graph(tf, boxes=[[[0.1, 0.2, 1.5, 0.6]]])
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
    graph = jaxmeta.import_meta_graph(meta)
    seed = np.array([1, 2], np.int32)
    with pytest.raises(jaxmeta.GraphError, match="use_image_if_no_bounding_boxes"):
        graph.function(no_boxes[0].name, feeds=["seed:0"])({}, seed)
    with pytest.raises(jaxmeta.GraphError, match=r"in \[0, 1\], got 1.5"):
        graph.function(outside[0].name, feeds=["seed_1:0"])({}, seed)


def test_inception_crop_preprocessing_runs_eagerly():
    """TF-slim's Inception preprocessing crops with the sampled box, then resizes: the crop's size
    is data-dependent, so the function runs without jax.jit (and says so under it)."""
    tf = get_tf()
    g = tf.Graph()
    with g.as_default():
        image = tf.compat.v1.placeholder(tf.float32, IMAGE, name="image")
        begin, size, _ = tf.compat.v1.image.sample_distorted_bounding_box(
            tf.shape(image), tf.constant(BOX), min_object_covered=0.1, use_image_if_no_bounding_boxes=True
        )
        crop = tf.slice(image, begin, size)
        out = tf.compat.v1.image.resize_bilinear(crop[None], [64, 64])[0]
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
    graph = jaxmeta.import_meta_graph(meta)
    f = graph.function([out.name, crop.name, begin.name], feeds=["image:0"])
    pixels = np.random.default_rng(0).uniform(0, 255, IMAGE).astype(np.float32)
    resized, cropped, offset = (np.asarray(v) for v in f({}, pixels, key=jax.random.key(1)))
    assert resized.shape == (64, 64, 3)
    y, x = offset[:2]
    np.testing.assert_array_equal(cropped, pixels[y : y + cropped.shape[0], x : x + cropped.shape[1]])
    with pytest.raises(jaxmeta.RunTimeValuesError, match="without jax.jit"):
        jax.jit(f)({}, pixels, key=jax.random.key(1))


# -- tf.random.Generator: ops on an RNG state variable ------------------------------------------------


def _alg(tf):
    return tf.constant(1, tf.int64)  # RNG_ALG_PHILOX


def _uniform_op(shape):
    return lambda tf, h: tf.raw_ops.StatefulUniform(resource=h, algorithm=_alg(tf), shape=shape)


def _skip_op(delta, read=False):
    if read:
        return lambda tf, h: tf.raw_ops.RngReadAndSkip(
            resource=h, alg=tf.constant(1), delta=tf.constant(delta, tf.uint64)
        )
    return lambda tf, h: tf.raw_ops.RngSkip(
        resource=h, algorithm=_alg(tf), delta=tf.constant(delta, tf.int64)
    )


M = 20_000
# (name, build(tf, state handle) -> output or op, check(jaxmeta's output) or None, the state it starts from).
GENERATOR_CASES = [
    (
        "uniform",
        _uniform_op([M]),
        lambda x: (x.min() >= 0, x.max() < 1, _moments(x, 0.5, 12**-0.5)),
        [1, 0, 7],
    ),
    (
        "uniform_f64",
        lambda tf, h: tf.raw_ops.StatefulUniform(resource=h, algorithm=_alg(tf), shape=[7], dtype=tf.float64),
        None,
        [2, 0, 7],
    ),
    (
        "normal",
        lambda tf, h: tf.raw_ops.StatefulStandardNormalV2(resource=h, algorithm=_alg(tf), shape=[M]),
        lambda x: _moments(x, 0.0, 1.0),
        [3, 0, 7],
    ),
    (
        "truncated",
        lambda tf, h: tf.raw_ops.StatefulTruncatedNormal(resource=h, algorithm=_alg(tf), shape=[M]),
        lambda x: (np.abs(x).max() <= 2, _moments(x, 0.0, TRUNC_STD)),
        [4, 0, 7],
    ),
    (
        "uniform_int",
        lambda tf, h: tf.raw_ops.StatefulUniformInt(
            resource=h,
            algorithm=_alg(tf),
            shape=[M],
            minval=tf.constant(-2, tf.int64),
            maxval=tf.constant(3, tf.int64),
        ),
        lambda x: set(np.unique(x)) == {-2, -1, 0, 1, 2},
        [5, 0, 7],
    ),
    (
        "full_int",
        lambda tf, h: tf.raw_ops.StatefulUniformFullInt(
            resource=h, algorithm=_alg(tf), shape=[M], dtype=tf.int32
        ),
        lambda x: (x.min() < -(2**30), x.max() > 2**30),
        [6, 0, 7],
    ),
    (
        "full_uint64",
        lambda tf, h: tf.raw_ops.StatefulUniformFullInt(
            resource=h, algorithm=_alg(tf), shape=[3, 2], dtype=tf.uint64
        ),
        None,
        [7, 0, 7],
    ),
    (
        "binomial",
        lambda tf, h: tf.raw_ops.StatefulRandomBinomial(
            resource=h, algorithm=_alg(tf), shape=[M // 2, 2], counts=[10.0, 4.0], probs=0.3, dtype=tf.int32
        ),
        lambda x: (_moments(x[:, 0], 3.0, 2.1**0.5), _moments(x[:, 1], 1.2, 0.84**0.5)),
        [8, 0, 7],
    ),
    ("read_and_skip", _skip_op(3, read=True), None, [9, 0, 7]),
    ("carry", _uniform_op([5]), None, [-256, 7, 9]),  # the counter's low word overflows into its high word
    ("skip", _skip_op(7), None, [10, 0, 7]),
    ("negative_skip", _skip_op(-1), None, [-256, 7, 9]),  # TF's Skip loses this carry
]
X64_CASES = [  # counters past 2**32, which only int64 states hold
    ("uniform", _uniform_op([5]), None, [2**33 + 1, 2**40, 5]),
    ("read_and_skip", _skip_op(2**40 + 3, read=True), None, [9, 0, 7]),
    ("carry", _uniform_op([5]), None, [-256, -1, 9]),
    ("negative_skip", _skip_op(-1), None, [-256, 7, 9]),
]


def _generator_graph(cases):
    """`cases` on generators of their own (from_state) in one TF graph, run once after a first
    skip of 0 (without one, TF's StatefulRandomBinomial kernel writes the advanced state into the
    initial value's buffer, not the variable's). Returns (graph, states before, states after,
    fetched outputs, output names, target names); outputs come in the order of `cases`."""
    tf = get_tf()
    g = tf.Graph()
    with g.as_default():
        gens = [tf.random.Generator.from_state(np.array(c[3], np.int64), alg="philox") for c in cases]
        made = [c[1](tf, gen.state.handle) for c, gen in zip(cases, gens)]
        warm = [
            tf.raw_ops.RngSkip(resource=gen.state.handle, algorithm=_alg(tf), delta=tf.constant(0, tf.int64))
            for gen in gens
        ]
        reads = {gen.state.op.name: gen.state.read_value() for gen in gens}
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
        outputs = [m for m in made if isinstance(m, tf.Tensor)]
        targets = [m.name for m in made if not isinstance(m, tf.Tensor)]
        with tf.compat.v1.Session(graph=g) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            sess.run(warm)
            before = sess.run(reads)
            fetched = sess.run([outputs, targets])[0]
            after = sess.run(reads)
    return jaxmeta.import_meta_graph(meta), before, after, fetched, [o.name for o in outputs], targets


@pytest.mark.parametrize("x64", [False, True], ids=["x64_off", "x64_on"])
def test_generator_ops_advance_the_state_as_tf_does(x64):
    """Every Stateful* op, RngSkip and RngReadAndSkip leaves exactly the state TF leaves (the
    counter moves 256 per sample, StatefulRandomBinomial's by its own reservation, with TF's
    128-bit carry), draws the distribution TF draws, and graph.step returns the new state."""
    cases = X64_CASES if x64 else GENERATOR_CASES
    graph, before, after, want, names, targets = _generator_graph(cases)
    with jax.enable_x64(x64):
        variables = {k: jnp.asarray(v) for k, v in before.items()}
        got, new = jax.jit(graph.step(names, targets=targets))(variables)
        # Without jit: the ops whose draws are cheap to compile one by one.
        few = [n for n in names if "RngReadAndSkip" in n or n.startswith("StatefulUniform:")]
        (unjitted, *_), new_unjitted = graph.step(few, targets=targets)(variables)
    assert sorted(new) == sorted(after)
    for name, want_state in after.items():
        np.testing.assert_array_equal(np.asarray(new[name]), want_state.astype(new[name].dtype), err_msg=name)
    moved = [name for name in after if not np.array_equal(new_unjitted[name], variables[name])]
    assert len(moved) == len(few) + len(targets)  # the generators of those ops, moved as with jit
    for name in moved:
        np.testing.assert_array_equal(new_unjitted[name], new[name], err_msg=name)
    np.testing.assert_allclose(unjitted, got[names.index(few[0])], rtol=1e-6)
    for name, g_value, w_value in zip(names, got, want):
        assert g_value.shape == w_value.shape, name
        assert g_value.dtype == (w_value.dtype if x64 else jax.dtypes.canonicalize_dtype(w_value.dtype)), name
        if "RngReadAndSkip" in name:  # the state before the skip
            np.testing.assert_array_equal(g_value, w_value)
    for (case, _, check, _), value in zip(cases, got):
        if check is not None:
            result = check(np.asarray(value))
            assert all(r is None or bool(r) for r in (result if isinstance(result, tuple) else (result,))), (
                case
            )


def test_generator_counter_past_32_bits_with_x64_off():
    """With x64 off a state has 32-bit words: a counter past 2**32 carries into the next word,
    so it differs from TF's there but keeps its low word (and its stream does not repeat)."""
    graph, before, after, _, names, _ = _generator_graph([X64_CASES[1]])
    (old,), new = graph.step(names)({k: jnp.asarray(v) for k, v in before.items()})
    ((name, want),) = after.items()
    assert (
        np.asarray(new[name])[0] == want.astype(np.int32)[0] and np.asarray(new[name])[1] == 2**16
    )  # 2**48 >> 32
    np.testing.assert_array_equal(old, before[name])


def _normal_draw(tf):
    gen = tf.random.Generator.from_seed(5)
    return gen, tf.raw_ops.StatefulStandardNormalV2(resource=gen.state.handle, algorithm=_alg(tf), shape=[4])


def test_generator_session_runs_draw_afresh_and_repeat_from_the_same_state():
    meta, (gen, draw) = export_meta(_normal_draw)
    graph = jaxmeta.import_meta_graph(meta)
    start = graph.init_variables()
    with jaxmeta.Session(graph, start) as sess:
        first, second = sess.run(draw.name), sess.run(draw.name)
    assert not np.allclose(first, second)  # the state moved on
    with jaxmeta.Session(graph, start, jit=False) as sess:  # the same state, the same draws (no key needed)
        np.testing.assert_allclose(sess.run(draw.name), first, rtol=1e-6)
        np.testing.assert_allclose(sess.run(draw.name), second, rtol=1e-6)
    (values,), state = graph.step([draw.name])(start)
    np.testing.assert_allclose(values, first, rtol=1e-6)
    np.testing.assert_array_equal(state[gen.state.op.name], [5 + 4 * 256, 0, 0])


def test_stateful_standard_normal_v1():
    """The first StatefulStandardNormal (no algorithm input; TF no longer builds it): the draws of
    its V2 on the same state, and the same skip."""
    meta, (gen, draw) = export_meta(_normal_draw)
    v2 = jaxmeta.import_meta_graph(meta)
    node = next(n for n in meta.graph_def.node if n.op == "StatefulStandardNormalV2")
    node.op = "StatefulStandardNormal"
    del node.input[1]  # the algorithm
    v1 = jaxmeta.import_meta_graph(meta)
    assert v1.nodes[draw.op.name].type == "StatefulStandardNormal"
    start = v2.init_variables()
    (want,), want_state = jax.jit(v2.step([draw.name]))(start)
    (got,), state = v1.step([draw.name])(start)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_array_equal(state[gen.state.op.name], want_state[gen.state.op.name])


@pytest.mark.parametrize("x64", [False, True], ids=["x64_off", "x64_on"])
def test_generator_methods(x64):
    """tf.random.Generator's methods (RngReadAndSkip, then the state's key and counter through
    Bitcast into StatelessRandom*V2): the distributions, and the state TF leaves."""
    tf = get_tf()
    g = tf.Graph()
    with g.as_default():
        gen = tf.random.Generator.from_seed(3)
        draws = [gen.uniform([M], 1.0, 3.0), gen.normal([M]), gen.uniform([M], 0, 4, dtype=tf.int32)]
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
        with tf.compat.v1.Session(graph=g) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            start = sess.run(gen.state.read_value())
            sess.run(draws)
            end = sess.run(gen.state.read_value())
    graph = jaxmeta.import_meta_graph(meta)
    with jax.enable_x64(x64):
        step = jax.jit(graph.step([d.name for d in draws]))
        (uniform, normal, ints), state = step({gen.state.op.name: jnp.asarray(start)})
        np.testing.assert_array_equal(state[gen.state.op.name], end)
    _moments(uniform, 2.0, 2 / 12**0.5)
    _moments(normal, 0.0, 1.0)
    assert set(np.unique(ints)) == {0, 1, 2, 3}


# -- stateless shuffles ---------------------------------------------------------------------------------

ROWS = np.arange(24, dtype=np.float32).reshape(8, 3)


def test_stateless_shuffle():
    def graph(tf):
        seed = tf.compat.v1.placeholder(tf.int64, [2], name="seed")
        x = tf.constant(ROWS)
        shuffle = tf.random.experimental.stateless_shuffle
        return [
            shuffle(x, seed=[4, 2]),
            shuffle(x, seed=[4, 3]),
            shuffle(x, seed=seed),
            shuffle(tf.constant(3.0), seed=seed),
            shuffle(tf.zeros([0, 2]), seed=seed),
        ]

    feeds = {"seed:0": np.int64([4, 2])}
    (a, b, c, scalar, empty), want = _draws(graph, feeds, key=None)
    (a2, *_), _ = _draws(graph, feeds, key=None, jit=False)
    for x in (a, b):  # whole rows, permuted
        np.testing.assert_array_equal(np.sort(x[:, 0]), ROWS[:, 0])
        np.testing.assert_array_equal(x[:, 1:], x[:, :1] + [1, 2])
    np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(a, a2)
    assert not np.array_equal(a, b) and not np.array_equal(a, ROWS)
    assert scalar == want[3] and empty.shape == (0, 2)


def _index_shuffle(tf, index, seed, max_index, dtype=None, rounds=4):
    dtype = dtype or tf.int32
    return tf.raw_ops.RandomIndexShuffle(
        index=tf.constant(index, dtype),
        seed=tf.constant(seed, tf.int64),
        max_index=tf.constant(max_index, dtype),
        rounds=rounds,
    )


MAX_INDICES = [0, 9, 1000]


def test_random_index_shuffle_is_a_bijection():
    """For a seed, index -> index_shuffle(index) permutes [0, max_index] (enumerated), in TF and
    in jaxmeta; a seed per index ([n, 3]) gives the same; other seeds other permutations; each
    element can have its own max_index."""

    def build(tf):
        outs = []
        for m in MAX_INDICES:
            every = np.arange(m + 1)
            outs += [
                _index_shuffle(tf, every, [1, 2, 3], m),
                _index_shuffle(tf, every, [1, 2, 4], m, tf.uint32, rounds=6),
                _index_shuffle(tf, every, [[1, 2, 3]] * (m + 1), m, tf.int64),
            ]
        return [
            *outs,
            _index_shuffle(tf, 0, [[1, 2, i] for i in range(50)], 1000),
            _index_shuffle(tf, 3, [1, 2, 3], 9),
            _index_shuffle(tf, [3, 3], [1, 2, 3], [9, 5]),
        ]

    run = run_tf(build)
    got = [np.asarray(v) for v in jax.jit(run.graph.function(run.fetch_names))({})]
    for g_value, w_value in zip(got, run.expected):
        assert g_value.shape == w_value.shape and g_value.dtype == jax.dtypes.canonicalize_dtype(
            w_value.dtype
        )
    for i, m in enumerate(MAX_INDICES):
        a, b, per_index = got[3 * i : 3 * i + 3]
        for perm in (a, b, run.expected[3 * i], run.expected[3 * i + 1]):
            np.testing.assert_array_equal(np.sort(perm), np.arange(m + 1))
        np.testing.assert_array_equal(per_index, a)
        if m >= 9:
            assert not np.array_equal(a, np.arange(m + 1)) and not np.array_equal(a, b)
    firsts, scalar, pair = got[-3:]
    assert ((firsts >= 0) & (firsts <= 1000)).all() and len(set(firsts.tolist())) > 40
    assert scalar.shape == () and scalar == got[3][3]  # index 3 of max_index 9 with seed [1, 2, 3]
    assert pair[0] == scalar and 0 <= pair[1] <= 5  # each element has its own max_index
    unjitted = run.graph.function([run.fetch_names[6], run.fetch_names[-1]])(
        {}
    )  # max_index 1000, and the pair
    np.testing.assert_array_equal(unjitted[0], got[6])
    np.testing.assert_array_equal(unjitted[1], pair)


def test_random_index_shuffle_checks_its_index():
    meta, out = export_meta(lambda tf: _index_shuffle(tf, 12, [1, 2, 3], 9))
    with pytest.raises(jaxmeta.GraphError, match=r"index 12 is not in \[0, max_index = 9\]"):
        jaxmeta.import_meta_graph(meta).function(out.name)({})


def test_random_index_shuffle_64_bits():
    """The whole uint64 range with x64 on: a Feistel network on 32-bit halves."""

    def build(tf):
        index = tf.compat.v1.placeholder(tf.uint64, [None], name="index")
        return tf.raw_ops.RandomIndexShuffle(
            index=index, seed=tf.constant([7, 8, 9], tf.uint64), max_index=tf.constant(2**64 - 1, tf.uint64)
        )

    meta, out = export_meta(build)
    with jax.enable_x64(True):
        f = jaxmeta.import_meta_graph(meta).function(out.name, feeds=["index:0"])
        indices = np.array([0, 1, 2, 2**32, 2**63, 2**64 - 1], np.uint64)
        got = np.asarray(jax.jit(f)({}, indices))
    assert got.dtype == np.uint64 and len(set(got.tolist())) == len(indices)
    assert (got >> np.uint64(32)).any()  # the high half is shuffled too


# -- RandomCrop (TF 0.x graphs) --------------------------------------------------------------------------

IMAGE_5x6 = np.arange(60, dtype=np.float32).reshape(5, 6, 2)


def _random_crop_meta(size, run=True):
    """A MetaGraphDef with a RandomCrop node, and TF's crop of IMAGE_5x6 (`run`): TF builds and
    runs the op only in graphs of GraphDef version < 8 (later ones crop in Python), so the graph
    says it was written by producer 7."""
    tf = get_tf()
    from tensorflow.core.protobuf import meta_graph_pb2

    g = tf.Graph()
    with g.as_default():
        tf.compat.v1.placeholder(tf.float32, IMAGE_5x6.shape, name="image")
        tf.constant(size, tf.int64, name="size")
    meta = meta_graph_pb2.MetaGraphDef()
    meta.graph_def.CopyFrom(g.as_graph_def())
    meta.graph_def.versions.producer = 7
    node = meta.graph_def.node.add(name="crop", op="RandomCrop", input=["image", "size"])
    node.attr["T"].type = tf.float32.as_datatype_enum
    if not run:
        return meta, None
    with tf.Graph().as_default():
        tf.compat.v1.import_graph_def(meta.graph_def, name="")
        with tf.compat.v1.Session() as sess:
            return meta, sess.run("crop:0", {"image:0": IMAGE_5x6})


def _crop_offset(crop):
    y, x = np.argwhere(IMAGE_5x6[..., 0] == crop[0, 0, 0])[0]
    np.testing.assert_array_equal(crop, IMAGE_5x6[y : y + crop.shape[0], x : x + crop.shape[1]])
    return int(y), int(x)


def test_random_crop():
    meta, want = _random_crop_meta([2, 3])
    _crop_offset(want)  # TF's is a window of the image too
    f = jaxmeta.import_meta_graph(meta).function("crop:0", feeds=["image:0"])
    keys = jax.random.split(KEY, 200)
    crops = np.asarray(jax.jit(jax.vmap(lambda k: f({}, IMAGE_5x6, key=k)))(keys))
    assert crops.shape[1:] == want.shape and crops.dtype == want.dtype
    np.testing.assert_array_equal(f({}, IMAGE_5x6, key=keys[7]), crops[7])
    assert {_crop_offset(crop) for crop in crops} == {
        (y, x) for y in range(4) for x in range(4)
    }  # every place
    meta, want = _random_crop_meta([5, 6])
    f = jaxmeta.import_meta_graph(meta).function("crop:0", feeds=["image:0"])
    np.testing.assert_array_equal(f({}, IMAGE_5x6, key=KEY), want)
    meta, _ = _random_crop_meta([6, 3], run=False)
    with pytest.raises(jaxmeta.GraphError, match="at least as large as the crop"):
        jaxmeta.import_meta_graph(meta).function("crop:0", feeds=["image:0"])({}, IMAGE_5x6, key=KEY)


# -- k-means initialization (clustering_ops) ----------------------------------------------------------

CLUSTERS = (
    (np.random.default_rng(3).normal(0, 0.1, (3, 10, 2)) + np.array([[0, 0], [50, 0], [0, 50]])[:, None])
    .reshape(30, 2)
    .astype(np.float32)
)


def _kmeans_pp(tf, points, k, retries):
    return tf.raw_ops.KmeansPlusPlusInitialization(
        points=points,
        num_to_sample=tf.constant(k, tf.int64),
        seed=tf.compat.v1.get_default_graph().get_tensor_by_name("seed:0"),
        num_retries_per_sample=tf.constant(retries, tf.int64),
    )


def _per_seed(build, seeds):
    """The outputs of `build(tf)` (which reads a scalar int64 placeholder `seed:0`) for each seed,
    in TF and in jaxmeta (jax.vmap over the seeds, jitted; without jit for the first output and
    seed, the same). Returns (jaxmeta's, TF's): lists over outputs of arrays over seeds."""
    tf = get_tf()
    g = tf.Graph()
    with g.as_default():
        tf.compat.v1.placeholder(tf.int64, [], name="seed")
        outs = build(tf)
        meta = tf.compat.v1.train.export_meta_graph(graph=g)
        with tf.compat.v1.Session(graph=g) as sess:
            want = [sess.run(outs, {"seed:0": s}) for s in seeds]
    graph = jaxmeta.import_meta_graph(meta)
    f = graph.function([o.name for o in outs], feeds=["seed:0"])
    got = [np.asarray(v) for v in jax.jit(jax.vmap(f, in_axes=(None, 0)))({}, np.asarray(seeds, np.int32))]
    np.testing.assert_array_equal(
        graph.function(outs[0].name, feeds=["seed:0"])({}, np.int64(seeds[0])), got[0][0]
    )
    return got, [np.stack(w) for w in zip(*want)]


def test_kmeans_plus_plus_matches_tf():
    """Three far-apart clusters, three centers: one from each, without retries and with the
    heuristic's, in TF and in jaxmeta; rows of the input; other seeds, other rows.

    Points 0..9 on a line. k=1 with 3 retries: the best of 4 uniform draws by the sum of
    distances, so central points are likely; k=2 without retries: the second point in proportion
    to its squared distance from the first. Frequencies over 400 seeds agree with TF's. Six of
    six rows: each row once."""
    line = np.arange(10, dtype=np.float32)[:, None]
    six = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
    got, want = _per_seed(
        lambda tf: [
            _kmeans_pp(tf, CLUSTERS, 3, 0),
            _kmeans_pp(tf, CLUSTERS, 3, -1),
            _kmeans_pp(tf, line, 1, 3),
            _kmeans_pp(tf, line, 2, 0),
            _kmeans_pp(tf, six, 6, 1),
        ],
        list(range(400)),
    )
    for picks in (*got[:2], *want[:2]):
        rows = np.argmin(np.abs(CLUSTERS[None, None] - picks[:, :, None]).sum(-1), axis=-1)
        np.testing.assert_array_equal(picks, CLUSTERS[rows])  # rows of the input
        np.testing.assert_array_equal(
            np.sort(rows // 10, axis=1), np.tile([0, 1, 2], (400, 1))
        )  # one per cluster
    assert len({tuple(p.ravel()) for p in got[0]}) > 100
    (one, two, every), (tf_one, tf_two, tf_every) = got[2:], want[2:]
    np.testing.assert_allclose(
        np.bincount(one[:, 0, 0].astype(int), minlength=10) / 400,
        np.bincount(tf_one[:, 0, 0].astype(int), minlength=10) / 400,
        atol=0.06,
    )
    assert (two[:, 0] != two[:, 1]).all() and (tf_two[:, 0] != tf_two[:, 1]).all()
    gaps = [np.abs(x[:, 0, 0] - x[:, 1, 0]).mean() for x in (two, tf_two)]
    assert abs(gaps[0] - gaps[1]) < 0.4, gaps
    for picks in (every, tf_every):
        np.testing.assert_array_equal(
            np.sort(picks, axis=1), np.broadcast_to(np.sort(six, axis=0), picks.shape)
        )


def test_kmeans_plus_plus_checks_num_to_sample():
    meta, out = export_meta(
        lambda tf: tf.raw_ops.KmeansPlusPlusInitialization(
            points=CLUSTERS,
            num_to_sample=tf.constant(31, tf.int64),
            seed=tf.constant(0, tf.int64),
            num_retries_per_sample=tf.constant(0, tf.int64),
        )
    )
    with pytest.raises(jaxmeta.GraphError, match="at least num_to_sample = 31"):
        jaxmeta.import_meta_graph(meta).function(out.name)({})


def test_kmc2_chain_initialization():
    """The chain's end over 400 seeds has TF's distribution; with one positive distance after
    zeros the chain moves there for sure, as in TF."""
    distances = np.array([1.0, 4.0, 0.5, 2.0, 8.0, 1.0, 3.0], np.float32)

    def build(tf):
        seed = tf.compat.v1.get_default_graph().get_tensor_by_name("seed:0")
        return [
            tf.raw_ops.KMC2ChainInitialization(distances=distances, seed=seed),
            tf.raw_ops.KMC2ChainInitialization(distances=[0.0, 0.0, 5.0, 0.0], seed=seed),
        ]

    (got, sure), (want, tf_sure) = _per_seed(build, list(range(400)))
    assert got.dtype == jax.dtypes.canonicalize_dtype(np.int64) and ((got >= 0) & (got < 7)).all()
    np.testing.assert_allclose(
        np.bincount(got, minlength=7) / 400, np.bincount(want, minlength=7) / 400, atol=0.07
    )
    assert (sure == 2).all() and (tf_sure == 2).all()
