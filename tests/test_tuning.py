"""`jaxmeta.autotune`: picks XLA options by timing, computes what a plain `jax.jit` computes."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from oracle import assert_close

import jaxmeta
from jaxmeta import tuning
from jaxmeta.tuning import CPU_CANDIDATES, DONATED_CPU_OPTIONS

MODEL = pathlib.Path(__file__).resolve().parents[1] / "examples" / "model"


@pytest.fixture(scope="module")
def mlp():
    graph = jaxmeta.import_meta_graph(MODEL / "mnist_mlp-100.meta")
    variables = graph.saver.restore(jaxmeta.latest_checkpoint(MODEL))
    rng = np.random.default_rng(0)
    batch = (rng.standard_normal((8, 784)).astype(np.float32), rng.integers(0, 10, 8).astype(np.int32))
    return graph, variables, batch


def test_inference_matches_plain_jit_and_reports_every_candidate(mlp):
    graph, variables, (images, _) = mlp
    f = graph.function(graph.get_collection("logits")[0], feeds=["images:0"])
    tuned = jaxmeta.autotune(f, variables, images, repeats=2)
    if jax.default_backend() == "cpu":
        assert set(tuned.timings_ms) == {name for name, _ in CPU_CANDIDATES}
        assert all(t > 0 for t in tuned.timings_ms.values())
        assert tuned.timings_ms[tuned.choice] == min(tuned.timings_ms.values())
    assert tuned.choice in {name for name, _ in CPU_CANDIDATES}
    assert_close(tuned(variables, images), jax.jit(f)(variables, images), rtol=1e-5, atol=1e-6,
                 what="autotuned logits")


def test_donated_train_step_keeps_the_example_arguments(mlp):
    """Trial calls donate copies: the caller's variables survive, and the chosen step trains like TF's."""
    graph, variables, batch = mlp
    step = graph.step(graph.get_collection("loss")[0], feeds=["images:0", "labels:0"],
                      targets=[graph.get_collection("train_op")[0]])
    state = jax.tree.map(jnp.copy, variables)
    tuned = jaxmeta.autotune(step, state, *batch, jit_kwargs={"donate_argnums": 0}, repeats=2)
    assert not any(a.is_deleted() for a in state.values())
    plain = jax.jit(step, donate_argnums=0)
    loss_a, new_a = tuned(jax.tree.map(jnp.copy, variables), *batch)
    loss_b, new_b = plain(jax.tree.map(jnp.copy, variables), *batch)
    assert_close(loss_a, loss_b, rtol=1e-6, atol=1e-6, what="loss")
    assert int(new_a["global_step"]) == int(variables["global_step"]) + 1
    for name in new_b:
        assert_close(new_a[name], new_b[name], rtol=1e-5, atol=1e-6, what=name)


def test_unknown_options_are_skipped_and_all_bad_is_an_error():
    def f(x):
        return jnp.tanh(x) @ x

    x = jnp.ones((16, 16))
    bad = ("bad", {"xla_cpu_experimental_ynn_fusion_type": "NOT_A_FUSION_TYPE"})
    if jax.default_backend() == "cpu":
        tuned = jaxmeta.autotune(f, x, candidates=[bad, ("XLA default", None)], repeats=1)
        assert tuned.choice == "XLA default" and set(tuned.timings_ms) == {"XLA default"}
        with pytest.raises(RuntimeError, match="no candidate compiled"):
            jaxmeta.autotune(f, x, candidates=[bad, bad], repeats=1)
    one = jaxmeta.autotune(f, x, candidates=[("XLA default", None)])
    assert one.timings_ms == {} and one.compiler_options is None
    assert one.fn._cache_size() == 1  # compiled before it returns, like a tuned choice (a GPU's first call)
    assert_close(one(x), f(x), rtol=1e-6, atol=1e-6, what="f")
    with pytest.raises(ValueError, match="at least one candidate"):
        jaxmeta.autotune(f, x, candidates=[])


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA CPU compiler options")
def test_donated_steps_update_in_place_without_defensive_copies(mlp):
    """Copy insertion's region analysis drops the weight copies and changes no result."""
    graph, variables, batch = mlp
    step = graph.step(graph.get_collection("loss")[0], feeds=["images:0", "labels:0"],
                      targets=[graph.get_collection("train_op")[0]])
    tuned = jaxmeta.autotune(step, jax.tree.map(jnp.copy, variables), *batch,
                             jit_kwargs={"donate_argnums": 0}, repeats=1)
    assert dict(tuned.compiler_options).items() >= DONATED_CPU_OPTIONS.items()

    def compiled(options):
        return jax.jit(step, donate_argnums=0, compiler_options=options).lower(variables, *batch).compile()

    plain, in_place = compiled(None), compiled(dict(DONATED_CPU_OPTIONS))

    def copies(c):
        return sum(" copy(" in line for line in c.as_text().splitlines())

    assert copies(in_place) < copies(plain)
    loss_a, new_a = plain(jax.tree.map(jnp.copy, variables), *batch)
    loss_b, new_b = in_place(jax.tree.map(jnp.copy, variables), *batch)
    np.testing.assert_array_equal(loss_a, loss_b)
    for name in new_a:
        np.testing.assert_array_equal(new_a[name], new_b[name], err_msg=name)


# A fresh process (the setting is process-wide): a jitted function's 40 MB output, allocated by XLA
# on every call and freed, page-faulted in anew each time until `keep_host_memory`. Dispatched on
# the calling thread: on XLA's own threads whether the buffer fits that thread's heap (at most
# 64 MiB) depends on what else that heap holds, so the count would depend on scheduling.
_FAULTS_PER_CALL = """
import resource, jax, jax.numpy as jnp
jax.config.update("jax_cpu_enable_async_dispatch", False)
import jaxmeta
f = jax.jit(lambda x: x * 2.0)
x = jnp.ones((10_000_000,), jnp.float32)
def faults():
    for _ in range(8):  # warm-up: after `keep_host_memory`, the first calls grow the heap
        jax.block_until_ready(f(x))
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(8):
        jax.block_until_ready(f(x))
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / 8
before = faults()
kept = jaxmeta.keep_host_memory()
print(before, kept, faults())
"""


@pytest.mark.skipif(tuning._glibc_mallopt() is None, reason="glibc's malloc only")
@pytest.mark.parametrize("switch", ["1", "0"])
def test_keep_host_memory_reuses_buffers_across_calls(switch):
    env = {**os.environ, "JAXMETA_KEEP_HOST_MEMORY": switch, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", _FAULTS_PER_CALL], env=env, capture_output=True, text=True,
                         check=True, timeout=300)
    before, kept, after = out.stdout.split()
    assert float(before) > 5000  # 40 MB in 4 KiB pages, every call
    assert kept == str(switch == "1")
    if switch == "1":
        assert float(after) < float(before) / 4
    else:
        assert float(after) > 5000
