"""jaxmeta vs TensorFlow 1 (and OpenVINO where installed), side by side, in one run.

    .venv/bin/python benchmarks/run.py [--models mlp,resnet50,inception3,lstm,cnn_train,static_lstm]
        [--size 96] [--repeats 10] [--rounds 2] [--quick] [--compile-cache DIR] [--dir DIR]
        [--reuse] [--batches resnet50=128/64,...] [--out benchmarks/results]

For every model (built with TensorFlow by `benchmarks/models.py`, exported as `.meta` + checkpoint
to `--dir`, a temporary directory by default), each framework is measured in its own fresh Python
process, so import time and peak memory are its own — `--rounds` times, in alternating order
(jaxmeta, TF, OpenVINO, then OpenVINO, TF, jaxmeta, ...), with the rounds' samples pooled, so that
a machine whose speed drifts during the run favours no framework:

- module import: `import jaxmeta` (+ backend start) vs `import tensorflow`;
- graph import: `jaxmeta.import_meta_graph` vs `tf.train.import_meta_graph` + `Session()`;
- restore: `graph.saver.restore` until the arrays are ready vs TF's `saver.restore(sess, ...)`,
  warm page cache (the files were just written), and its throughput in GB/s;
- first call at batch 1: jaxmeta's trace + XLA compile + run vs TF's first `sess.run`;
- steady-state latency at batch 1 and throughput at a large batch;
- one training step: the graph's own `train_op`; jaxmeta as
  `jax.jit(graph.step([], feeds, targets=[train_op]), donate_argnums=0)`;
- for jaxmeta, latency, throughput and the train step again with the XLA options
  `jaxmeta.autotune` picks (timed in alternation with XLA's defaults), and the time tuning took;
- inference with frozen variables, each framework's own way: jaxmeta's `jaxmeta.freeze` (the
  variables become constants of the compiled program; autotuned) vs TF's
  `convert_variables_to_constants` graph in a new Session;
- peak resident memory of the process (`ru_maxrss`; for jaxmeta before autotuning);
- on a CPU with several cores, jaxmeta's large batch and train step again in a process of its own
  whose CPU is split into one JAX device per core (`jaxmeta.parallel.cpu_devices`), the batch
  split over them (`parallel.shard_batch`, the variables replicated): XLA runs most of a program on
  one thread, where TF1's Session uses every core.

jaxmeta runs on JAX's default device (a GPU where JAX's CUDA build is installed; the report names
it), TF1 and OpenVINO on the CPU.

jaxmeta is jitted once per signature, inputs are put on the device before timing, every timed
call ends with `jax.block_until_ready`, and nothing leaves the device inside timing loops. Times
are medians of `--repeats` runs per round with [min–max] (fast calls are run more often, until
about a second has passed: `_timed_alternately`); the last column is jaxmeta / TF (below 1: jaxmeta
faster; for GB/s and samples/s above 1 is better). Writes `latest.md` (and `latest.png` when
matplotlib is importable) to `--out`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import models  # noqa: E402  (no TensorFlow at import time)

FRAMEWORKS = ("jaxmeta", "tf", "openvino")
SPLIT = "jaxmeta-split"  # a jaxmeta process with the CPU split into devices: rows of the jaxmeta column
DEFAULT_MODELS = "mlp,resnet50,inception3,lstm,cnn_train,static_lstm"
RESULT_TAG = "BENCH-RESULT "
# Steady-state timings of fast calls are repeated until each group of calls timed in turn has run
# about this long (s), up to this many times --repeats (`_timed_alternately`).
FILL_S = 1.0
MAX_TURNS_FACTOR = 20
# The side of the square matrix product each worker times as its framework's peak rate on the host.
PEAK_SIDE = 2048

# (key, label, unit, lower is better)
METRICS = [
    ("module_import_s", "module import", "s", True),
    ("graph_import_s", "graph import", "s", True),
    ("restore_s", "restore", "s", True),
    ("restore_gbps", "restore throughput", "GB/s", False),
    ("first_call_s", "first call, batch 1 (trace+compile / first run)", "s", True),
    ("latency_ms", "latency, batch 1", "ms", True),
    ("latency_tuned_ms", "latency, batch 1, autotuned XLA options", "ms", True),
    ("throughput", "throughput, large batch", "samples/s", False),
    ("throughput_tuned", "throughput, large batch, autotuned", "samples/s", False),
    ("latency_frozen_ms", "latency, batch 1, frozen variables (jaxmeta: + autotuned)", "ms", True),
    ("throughput_frozen", "throughput, large batch, frozen variables (jaxmeta: + autotuned)", "samples/s", False),
    ("throughput_split", "throughput, large batch, split over the CPU's cores (`parallel.cpu_devices`; + autotuned)",
     "samples/s", False),
    ("train_first_s", "train step, first call", "s", True),
    ("train_step_ms", "train step", "ms", True),
    ("train_step_tuned_ms", "train step, autotuned", "ms", True),
    ("train_step_split_ms", "train step, split over the CPU's cores (+ autotuned)", "ms", True),
    ("train_tflops", "train step, TFLOP/s (XLA's count of the step's work, as lowered for the CPU)", "TFLOP/s", False),
    ("large_batch_gflop", "work of one large batch (XLA's count, as lowered for the CPU)", "GFLOP", None),
    ("train_gflop", "work of one train step (XLA's count, as lowered for the CPU)", "GFLOP", None),
    ("matmul_gflops", f"a {PEAK_SIDE}x{PEAK_SIDE}x{PEAK_SIDE} float32 matrix product, the framework's best rate",
     "GFLOP/s", False),
    ("autotune_s", "autotune (all five, compiles included)", "s", True),
    ("peak_rss_mb", "peak resident memory", "MB", True),
    ("output_abs_sum", "Σ|output| at the large batch (all columns must agree)", "", None),
]
# An autotuned jaxmeta row is compared with TF's own (TF has nothing to tune).
REFERENCE = {"latency_tuned_ms": "latency_ms", "throughput_tuned": "throughput", "train_step_tuned_ms": "train_step_ms",
             "throughput_split": "throughput", "train_step_split_ms": "train_step_ms"}


# -- measuring, inside a worker process -------------------------------------------------------------


def _timed(fn, repeats: int) -> list[float]:
    return _timed_alternately([fn], repeats)[0]


def write_table(lines: list[str], out: str | None) -> None:
    """Prints a markdown report and, with `out`, writes it to that file too."""
    table = "\n".join(lines) + "\n"
    print(table)
    if out:
        with open(out, "w", encoding="utf-8") as f:
            f.write(table)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed_alternately(fns, repeats: int) -> list[list[float]]:
    """Times each of `fns` `repeats` times, taking turns; one list of seconds per function.

    Fast calls get more turns: where the first turn of all `fns` took less than `FILL_S / repeats`,
    they take turns until about `FILL_S` has passed (at most `MAX_TURNS_FACTOR x repeats` turns),
    since the median of 10 sub-millisecond calls moves by a third between runs on a noisy host.
    One turn (`repeats=1`: a first call) stays one."""
    out = [[] for _ in fns]
    turns, turn = repeats, 0
    while turn < turns:
        for fn, times in zip(fns, out):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        if turn == 0 and repeats > 1:
            first = sum(times[0] for times in out)
            turns = max(repeats, min(repeats * MAX_TURNS_FACTOR, math.ceil(FILL_S / max(first, 1e-9))))
        turn += 1
    return out


class Recorder:
    """Collects metric samples; prints them as one JSON line even when a phase fails."""

    def __init__(self):
        self.samples: dict[str, list[float]] = {}
        self.info: dict[str, str] = {}
        self.error: str | None = None

    def put(self, key: str, values, scale: float = 1.0) -> None:
        values = values if isinstance(values, list) else [values]
        self.samples[key] = [v * scale for v in values]

    def emit(self) -> None:
        self.samples.setdefault("peak_rss_mb", [_peak_rss_mb()])
        print(RESULT_TAG + json.dumps({"samples": self.samples, "info": self.info, "error": self.error}), flush=True)


def worker_jaxmeta(rec: Recorder, directory: str, spec: models.ModelSpec, args) -> None:
    t = time.perf_counter()
    import jax
    import jax.numpy as jnp

    import jaxmeta

    device = jax.devices()[0]  # starts the backend
    rec.put("module_import_s", time.perf_counter() - t)
    rec.info["device"] = f"{device.platform} ({device.device_kind})"
    if args.compile_cache:
        jax.config.update("jax_compilation_cache_dir", args.compile_cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

    prefix = os.path.join(directory, "model.ckpt")
    t = time.perf_counter()
    graph = jaxmeta.import_meta_graph(prefix + ".meta")
    rec.put("graph_import_s", time.perf_counter() - t)

    variables = None

    def restore():
        nonlocal variables
        variables = None  # let the previous copy go before reading the next
        variables = jax.block_until_ready(graph.saver.restore(prefix))

    times = _timed(restore, args.repeats)
    rec.put("restore_s", times)
    rec.put("restore_gbps", [spec.checkpoint_bytes / s / 1e9 for s in times])

    feed_names = [f.name for f in spec.infer_feeds]
    f = graph.function(spec.fetch, feeds=feed_names)
    kw = {"key": jax.random.key(0)} if f.program.random else {}
    infer = jax.jit(f)
    x1 = jax.device_put(models.make_inputs(spec.infer_feeds, 1))
    t = time.perf_counter()
    jax.block_until_ready(infer(variables, *x1, **kw))
    rec.put("first_call_s", time.perf_counter() - t)
    big = spec.large_batch
    xb = jax.device_put(models.make_inputs(spec.infer_feeds, big))
    out = jax.block_until_ready(infer(variables, *xb, **kw))  # compiles the large-batch signature
    rec.put("output_abs_sum", float(np.abs(np.asarray(out, np.float64)).sum()))

    s = graph.step([], feeds=[f.name for f in spec.train_feeds], targets=[spec.train_op])
    kw_s = {"key": jax.random.key(0)} if s.program.random else {}
    train = jax.jit(s, donate_argnums=0)
    xt = jax.device_put(models.make_inputs(spec.train_feeds, spec.train_batch))
    states = [dict(variables), None]  # donated: each step consumes its input (the restored arrays first)
    variables = None

    def one_step(i, step):
        _, states[i] = step(states[i], *xt, **kw_s)
        jax.block_until_ready(states[i])

    rec.put("train_first_s", _timed(lambda: one_step(0, train), 1))
    flops = _flops(train, states[0], *xt, **kw_s)
    if flops:
        rec.put("train_gflop", flops / 1e9)
    flops_b = _flops(infer, states[0], *xb, **kw)
    if flops_b:
        rec.put("large_batch_gflop", flops_b / 1e9)
    # What a user's process holds after restore, inference and training; autotuning's extra
    # executables and the second training state below would inflate it.
    rec.put("peak_rss_mb", _peak_rss_mb())

    # XLA's default options and `jaxmeta.autotune`'s choice, timed in alternation so that drift in
    # the machine's speed during the run falls on both alike.
    tuning = time.perf_counter()
    variables = states[0]  # inference from here on reads the trained variables (same shapes)
    tuned1 = jaxmeta.autotune(f, variables, *x1, **kw)
    tuned_b = jaxmeta.autotune(f, variables, *xb, **kw)
    states[1] = jax.tree.map(jnp.copy, states[0])
    tuned_s = jaxmeta.autotune(s, states[1], *xt, jit_kwargs={"donate_argnums": 0}, **kw_s)
    frozen = jaxmeta.freeze(f, variables)
    frozen1 = jaxmeta.autotune(frozen, *x1, **kw)
    frozen_b = jaxmeta.autotune(frozen, *xb, **kw)
    rec.put("autotune_s", time.perf_counter() - tuning)
    rec.info.update(latency=tuned1.choice, throughput=tuned_b.choice, train=tuned_s.choice,
                    frozen_latency=frozen1.choice, frozen_throughput=frozen_b.choice)
    default, tuned, frozen = _timed_alternately([lambda: jax.block_until_ready(infer(variables, *x1, **kw)),
                                                 lambda: jax.block_until_ready(tuned1(variables, *x1, **kw)),
                                                 lambda: jax.block_until_ready(frozen1(*x1, **kw))], args.repeats)
    rec.put("latency_ms", default, 1e3)
    rec.put("latency_tuned_ms", tuned, 1e3)
    rec.put("latency_frozen_ms", frozen, 1e3)
    default, tuned, frozen = _timed_alternately([lambda: jax.block_until_ready(infer(variables, *xb, **kw)),
                                                 lambda: jax.block_until_ready(tuned_b(variables, *xb, **kw)),
                                                 lambda: jax.block_until_ready(frozen_b(*xb, **kw))], args.repeats)
    rec.put("throughput", [big / s for s in default])
    rec.put("throughput_tuned", [big / s for s in tuned])
    rec.put("throughput_frozen", [big / s for s in frozen])
    default, tuned = _timed_alternately([lambda: one_step(0, train), lambda: one_step(1, tuned_s)], args.repeats)
    rec.put("train_step_ms", default, 1e3)
    rec.put("train_step_tuned_ms", tuned, 1e3)
    if flops:
        rec.put("train_tflops", [flops / s / 1e12 for s in default])
    rec.put("matmul_gflops", _matmul_rate_jax(args.repeats))
    if "tensorflow" in sys.modules:  # the jaxmeta process must run without TensorFlow
        raise RuntimeError("the jaxmeta worker imported TensorFlow")


def _matmul_rate_jax(repeats: int) -> list[float]:
    """GFLOP/s of XLA's `PEAK_SIDE`-square float32 matrix product on jaxmeta's device, with the
    XLA options `jaxmeta.autotune` picks for it: the rate the models' own products and
    convolutions are measured against."""
    import jax

    import jaxmeta

    rng = np.random.default_rng(0)
    a, b = (jax.device_put(rng.standard_normal((PEAK_SIDE, PEAK_SIDE), np.float32)) for _ in range(2))
    product = jaxmeta.autotune(jax.numpy.matmul, a, b)
    return [2 * PEAK_SIDE ** 3 / s / 1e9 for s in _timed(lambda: jax.block_until_ready(product(a, b)), repeats)]


def worker_jaxmeta_split(rec: Recorder, directory: str, spec: models.ModelSpec, args) -> None:
    """The large batch and the train step with the CPU split into one device per core and the
    batch split over them, with `jaxmeta.autotune`'s XLA options; no samples where JAX runs on an
    accelerator or the CPU has one core."""
    import jax

    from jaxmeta import parallel

    count = parallel.cpu_devices()
    import jaxmeta

    if jax.default_backend() != "cpu" or count < 2:
        return
    if args.compile_cache:
        jax.config.update("jax_compilation_cache_dir", args.compile_cache)
    prefix = os.path.join(directory, "model.ckpt")
    graph = jaxmeta.import_meta_graph(prefix + ".meta")
    restored = {name: np.asarray(value) for name, value in graph.saver.restore(prefix).items()}
    mesh = parallel.batch_mesh(jax.devices("cpu"))
    variables = parallel.replicate(restored, mesh)
    f = graph.function(spec.fetch, feeds=[f.name for f in spec.infer_feeds])
    kw = {"key": jax.random.key(0)} if f.program.random else {}
    big, chosen = spec.large_batch, []
    if big % count == 0:
        xb = parallel.shard_batch(tuple(models.make_inputs(spec.infer_feeds, big)), mesh)
        infer = jaxmeta.autotune(f, variables, *xb, **kw)
        chosen.append(f"large batch: {infer.choice}")
        rec.put("throughput_split", [big / s for s in _timed(lambda: jax.block_until_ready(infer(variables, *xb, **kw)),
                                                            args.repeats)])
    s = graph.step([], feeds=[f.name for f in spec.train_feeds], targets=[spec.train_op])
    kw_s = {"key": jax.random.key(0)} if s.program.random else {}
    if spec.train_batch % count == 0:
        xt = parallel.shard_batch(tuple(models.make_inputs(spec.train_feeds, spec.train_batch)), mesh)
        state = [parallel.replicate(restored, mesh)]
        train = jaxmeta.autotune(s, state[0], *xt, jit_kwargs={"donate_argnums": 0}, **kw_s)
        chosen.append(f"train: {train.choice}")

        def one_step():
            _, state[0] = train(state[0], *xt, **kw_s)
            jax.block_until_ready(state[0])

        one_step()
        rec.put("train_step_split_ms", _timed(one_step, args.repeats), 1e3)
    rec.info["split"] = f"{count} CPU devices; XLA options {', '.join(chosen)}"


def _flops(jitted, *args, **kwargs) -> float | None:
    """XLA's count of a jitted function's floating-point operations in its program as lowered for
    the CPU, on any backend, with no compile; None where jax cannot say. Compiled programs are no
    use: their convolutions and products become library calls (cuDNN's, oneDNN's) that count no
    work (0.3 of a ResNet-50 step's 1.3 TFLOP), and jax 0.11 no longer counts lowered programs."""
    import jax

    shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype) if hasattr(a, "dtype") else a,
                          (args, kwargs))  # not the arrays: they may be committed to another device
    try:
        lowered = jitted.trace(*shapes[0], **shapes[1]).lower(lowering_platforms=("cpu",))
        if "stablehlo.while" in lowered.as_text():
            return None  # XLA counts a loop's body once, whatever its trip count
        cost = lowered.cost_analysis()
    except Exception:  # noqa: BLE001  (an older jax or a backend without cost analysis: no row)
        return None
    cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
    return float(cost["flops"]) if isinstance(cost, dict) and cost.get("flops") else None


def materialize(directory: str) -> None:
    """Writes the checkpoint of a model exported without one (`model.ckpt.meta` + `spec.json`, as
    carried to a machine where TensorFlow cannot be installed): jaxmeta runs the graph's variable
    initializers and saves them in TF's format; `spec.json`'s checkpoint size is updated."""
    import jaxmeta

    prefix = os.path.join(directory, "model.ckpt")
    graph = jaxmeta.import_meta_graph(prefix + ".meta")
    graph.saver.save(graph.init_variables(), prefix, write_meta_graph=False, write_state=False)
    spec = models.load_spec(directory)
    spec.checkpoint_bytes = models.checkpoint_bytes(prefix)
    models.save_spec(spec, directory)


def worker_tf(rec: Recorder, directory: str, spec: models.ModelSpec, args) -> None:
    t = time.perf_counter()
    import tensorflow as tf

    rec.put("module_import_s", time.perf_counter() - t)
    v1 = models._v1(tf)
    prefix = os.path.join(directory, "model.ckpt")
    graph = tf.Graph()
    t = time.perf_counter()
    with graph.as_default():
        saver = v1.train.import_meta_graph(prefix + ".meta")
    sess = v1.Session(graph=graph)
    rec.put("graph_import_s", time.perf_counter() - t)

    times = _timed(lambda: saver.restore(sess, prefix), args.repeats)
    rec.put("restore_s", times)
    rec.put("restore_gbps", [spec.checkpoint_bytes / s / 1e9 for s in times])

    fetch = graph.get_tensor_by_name(spec.fetch)

    def feed(feeds, batch):
        return {graph.get_tensor_by_name(f.name): v for f, v in zip(feeds, models.make_inputs(feeds, batch))}

    f1 = feed(spec.infer_feeds, 1)
    t = time.perf_counter()
    sess.run(fetch, f1)
    rec.put("first_call_s", time.perf_counter() - t)
    rec.put("latency_ms", _timed(lambda: sess.run(fetch, f1), args.repeats), 1e3)
    big = spec.large_batch
    fb = feed(spec.infer_feeds, big)
    rec.put("output_abs_sum", float(np.abs(sess.run(fetch, fb).astype(np.float64)).sum()))
    rec.put("throughput", [big / s for s in _timed(lambda: sess.run(fetch, fb), args.repeats)])

    # TF1's deployment path: variables folded into constants of a new graph.
    frozen = tf.Graph()
    with frozen.as_default():
        v1.import_graph_def(v1.graph_util.convert_variables_to_constants(
            sess, graph.as_graph_def(), [spec.fetch.rsplit(":", 1)[0]]), name="")
    frozen_sess = v1.Session(graph=frozen)
    frozen_fetch = frozen.get_tensor_by_name(spec.fetch)
    ff1 = {frozen.get_tensor_by_name(k.name): v for k, v in f1.items()}
    ffb = {frozen.get_tensor_by_name(k.name): v for k, v in fb.items()}
    frozen_sess.run(frozen_fetch, ff1)
    rec.put("latency_frozen_ms", _timed(lambda: frozen_sess.run(frozen_fetch, ff1), args.repeats), 1e3)
    frozen_sess.run(frozen_fetch, ffb)
    rec.put("throughput_frozen", [big / s for s in _timed(lambda: frozen_sess.run(frozen_fetch, ffb), args.repeats)])
    frozen_sess.close()

    train_op = graph.get_operation_by_name(spec.train_op)
    ft = feed(spec.train_feeds, spec.train_batch)
    rec.put("train_first_s", _timed(lambda: sess.run(train_op, ft), 1))
    rec.put("train_step_ms", _timed(lambda: sess.run(train_op, ft), args.repeats), 1e3)
    sess.close()

    # TF1's own rate for a large matrix product on this host (its oneDNN kernel), the result left
    # in the Session like jaxmeta's on its device.
    peak = tf.Graph()
    rng = np.random.default_rng(0)
    with peak.as_default():  # variables, not constants, which grappler would fold
        product = v1.matmul(*(v1.Variable(rng.standard_normal((PEAK_SIDE, PEAK_SIDE), np.float32)) for _ in range(2)))
        init = v1.global_variables_initializer()
    with v1.Session(graph=peak) as peak_sess:
        peak_sess.run(init)
        peak_sess.run(product.op)
        rec.put("matmul_gflops", [2 * PEAK_SIDE ** 3 / s / 1e9
                                  for s in _timed(lambda: peak_sess.run(product.op), args.repeats)])


def worker_openvino(rec: Recorder, directory: str, spec: models.ModelSpec, args) -> None:
    """OpenVINO CPU inference (f32 precision hint) from the MetaGraphDef; inference rows only.

    OpenVINO's TF frontend reads the `.meta` and its checkpoint; the graph is cut at the inference
    feeds and fetch (its `convert_model(output=...)` does not find inner tensors of a MetaGraph,
    and the training ops around them would not convert).
    """
    t = time.perf_counter()
    import openvino as ov
    from openvino.frontend import FrontEndManager

    rec.put("module_import_s", time.perf_counter() - t)
    prefix = os.path.join(directory, "model.ckpt")
    t = time.perf_counter()
    frontend = FrontEndManager().load_by_framework("tf")
    loaded = frontend.load(prefix + ".meta")
    loaded.override_all_inputs([loaded.get_place_by_tensor_name(f.name) for f in spec.infer_feeds])
    loaded.override_all_outputs([loaded.get_place_by_tensor_name(spec.fetch)])
    model = frontend.convert(loaded)
    rec.put("graph_import_s", time.perf_counter() - t)
    core = ov.Core()
    t = time.perf_counter()
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    x1 = models.make_inputs(spec.infer_feeds, 1)
    compiled(x1)
    rec.put("first_call_s", time.perf_counter() - t)
    rec.put("latency_ms", _timed(lambda: compiled(x1), args.repeats), 1e3)
    big = spec.large_batch
    xb = models.make_inputs(spec.infer_feeds, big)
    out = next(iter(compiled(xb).values()))
    rec.put("output_abs_sum", float(np.abs(np.asarray(out, np.float64)).sum()))
    rec.put("throughput", [big / s for s in _timed(lambda: compiled(xb), args.repeats)])


def worker_main(args) -> None:
    directory = os.path.join(args.dir, args.model)
    if args.framework == "materialize":
        materialize(directory)
        return
    spec = models.load_spec(directory)
    rec = Recorder()
    try:
        {"jaxmeta": worker_jaxmeta, SPLIT: worker_jaxmeta_split, "tf": worker_tf, "openvino": worker_openvino}[args.framework](
            rec, directory, spec, args)
    except BaseException as e:  # the table shows the error; earlier metrics are kept
        rec.error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
    rec.emit()


# -- orchestrating, in the parent process (which imports neither jax nor TensorFlow) ----------------


@dataclasses.dataclass
class Result:
    samples: dict[str, list[float]]
    error: str | None
    seconds: float
    info: dict[str, str] = dataclasses.field(default_factory=dict)


def _subprocess(argv: list[str], timeout: float) -> tuple[dict | None, str, float]:
    t = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), *argv], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s", time.perf_counter() - t
    elapsed = time.perf_counter() - t
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):]), "", elapsed
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
    return None, tail[0][:300], elapsed


def measure(model: str, framework: str, args) -> Result:
    argv = ["--worker", "--framework", framework, "--model", model, "--dir", args.dir, "--repeats", str(args.repeats)]
    if args.compile_cache:
        argv += ["--compile-cache", args.compile_cache]
    data, error, elapsed = _subprocess(argv, args.timeout)
    if data is None:
        return Result({}, error, elapsed)
    return Result(data["samples"], data["error"], elapsed, data.get("info", {}))


def merge(rounds: list[Result]) -> Result:
    """One result from several rounds' processes: their samples pooled, the first error, the
    first round's autotune choices (later rounds' differing choices appended)."""
    samples: dict[str, list[float]] = {}
    info: dict[str, str] = {}
    for result in rounds:
        for key, values in result.samples.items():
            samples.setdefault(key, []).extend(values)
        for phase, choice in result.info.items():
            seen = info.get(phase)
            info[phase] = choice if seen is None or choice in seen.split(" / ") else f"{seen} / {choice}"
    error = next((r.error for r in rounds if r.error), None)
    return Result(samples, error, sum(r.seconds for r in rounds), info)


def export(model: str, args) -> str | None:
    """Builds and saves `model` with TF in a subprocess; returns an error message or None.

    With `--reuse`, a model already in `--dir` is kept; one there without its checkpoint's data
    gets a checkpoint of its initializers' values, written by jaxmeta (`materialize`)."""
    directory = os.path.join(args.dir, model)
    if args.reuse and os.path.exists(os.path.join(directory, "spec.json")):
        if os.path.exists(os.path.join(directory, "model.ckpt.index")):
            return None
        _, error, _ = _subprocess(["--worker", "--framework", "materialize", "--model", model, "--dir", args.dir],
                                     args.timeout)
        return None if os.path.exists(os.path.join(directory, "model.ckpt.index")) else f"materialize failed: {error}"
    code = (f"import sys; sys.path.insert(0, {HERE!r}); import models; "
            f"models.export({model!r}, {os.path.join(args.dir, model)!r}, {args.size}, {args.quick})")
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return "export timed out"
    if proc.returncode:
        return "export failed: " + ((proc.stderr.strip().splitlines() or ["?"])[-1])[:300]
    return None


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def cell(result: Result | None, key: str) -> str:
    if result is None:
        return "n/a"
    values = result.samples.get(key)
    if not values:
        return "error" if result.error else "—"
    med = statistics.median(values)
    if len(values) == 1:
        return _fmt(med)
    return f"{_fmt(med)} [{_fmt(min(values))}–{_fmt(max(values))}]"


def ratio(a: Result | None, b: Result | None, key: str) -> float | None:
    """median(a[key]) / median(b[key]), where b (TF) is read at `REFERENCE`'s key for tuned rows."""
    ref = REFERENCE.get(key, key)
    if a is None or b is None or not a.samples.get(key) or not b.samples.get(ref):
        return None
    den = statistics.median(b.samples[ref])
    return statistics.median(a.samples[key]) / den if den else None


def machine_info() -> list[str]:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass

    def version(name):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return [
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- CPU: {cpu}, {os.cpu_count()} cores; {platform.system()} {platform.release()}; Python {platform.python_version()}",
        f"- jax {version('jax')} / jaxlib {version('jaxlib')}, jaxmeta {version('jaxmeta')}, "
        f"tensorflow {version('tensorflow-cpu') if version('tensorflow') == 'not installed' else version('tensorflow')}, "
        f"tf-slim {version('tf-slim')}, openvino {version('openvino')}",
        f"- load average at the end of the run (1, 5, 15 min): {load}",
    ]


def render(results: dict, specs: dict, args, notes: list[str]) -> str:
    lines = ["# jaxmeta vs TensorFlow 1: benchmark results", "",
             f"`{shlex.join(['python', 'benchmarks/run.py', *sys.argv[1:]])}`", "", *machine_info(), ""]
    ran = [per_fw["jaxmeta"] for per_fw in results.values() if isinstance(per_fw, dict) and per_fw["jaxmeta"]]
    devices = sorted({r.info["device"] for r in ran if "device" in r.info})
    lines += [f"- jaxmeta ran on: {', '.join(devices) or '?'}; TF1 and OpenVINO on the CPU"]
    lines += [f"- {n}" for n in notes]
    lines += ["", f"Medians of {args.repeats} runs (calls faster than {FILL_S / args.repeats:g} s: repeated to fill about "
              f"{FILL_S:g} s, at most {MAX_TURNS_FACTOR * args.repeats} runs) × {args.rounds} rounds, [min–max]; "
              "every (model, framework) "
              "in a fresh process per round, the rounds in alternating framework order. "
              "jaxmeta/TF < 1 means jaxmeta is faster for times, > 1 means better for GB/s and samples/s.", ""]
    lines += summary(results, specs)
    lines += against_peak(results, specs)
    for model, per_fw in results.items():
        spec = specs.get(model)
        header = f"## {model}"
        if spec is not None:
            header += (f" — {spec.description}; {spec.node_count} nodes, checkpoint "
                       f"{spec.checkpoint_bytes / 1e6:.1f} MB, large batch {spec.large_batch}, "
                       f"train batch {spec.train_batch}")
        lines += [header, ""]
        if isinstance(per_fw, str):
            lines += [f"**not measured**: {per_fw}", ""]
            continue
        lines += ["| metric | jaxmeta | TF1 Session | OpenVINO | jaxmeta/TF |", "|---|---:|---:|---:|---:|"]
        for key, label, unit, _ in METRICS:
            r = ratio(per_fw["jaxmeta"], per_fw["tf"], key)
            lines.append(f"| {label}{f' ({unit})' if unit else ''} | {cell(per_fw['jaxmeta'], key)} | {cell(per_fw['tf'], key)} | "
                         f"{cell(per_fw['openvino'], key)} | {'' if r is None else f'{r:.2f}'} |")
        jm = per_fw["jaxmeta"]
        choices = {phase: choice for phase, choice in (jm.info if jm is not None else {}).items()
                   if phase not in ("device", "split")}
        if choices:
            lines.append("\nXLA options chosen by `jaxmeta.autotune`: "
                         + "; ".join(f"{phase}: {choice}" for phase, choice in choices.items()))
        if jm is not None and "split" in jm.info:
            lines.append(f"\nSplit rows (a process of their own, the batch split over the devices): {jm.info['split']}")
        for fw in FRAMEWORKS:
            if per_fw[fw] is not None and per_fw[fw].error:
                lines.append(f"\n**{fw} error**: `{per_fw[fw].error}`")
        lines.append("")
    return "\n".join(lines) + "\n"


def _median(result: Result | None, key: str) -> float | None:
    return statistics.median(result.samples[key]) if result is not None and result.samples.get(key) else None


# Each timed row's variants (XLA's defaults, autotuned, frozen, split); TF fills the ones it has.
LATENCY_KEYS = ("latency_ms", "latency_tuned_ms", "latency_frozen_ms")
THROUGHPUT_KEYS = ("throughput", "throughput_tuned", "throughput_frozen", "throughput_split")
TRAIN_KEYS = ("train_step_ms", "train_step_tuned_ms", "train_step_split_ms")


def _best_seconds(result: Result | None, keys: tuple[str, ...], batch: int) -> float | None:
    """The fastest of `result`'s medians at `keys`, as seconds per call (samples/s at `batch`)."""
    times = [v / 1e3 if key.endswith("_ms") else batch / v for key in keys if (v := _median(result, key))]
    return min(times, default=None)


def summary(results: dict, specs: dict) -> list[str]:
    """The issue's targets per model: jaxmeta time <= 0.8 x TF for steady inference and the train
    step, judged on each framework's best (jaxmeta: XLA's defaults, autotuned, or frozen and
    autotuned; TF: its Session, or its frozen graph); restore >= 1 GB/s and not slower than TF
    (judged on checkpoints of 50 MB or more only: below that, fixed per-call costs dominate and
    GB/s says little)."""
    lines = ["## Summary against the targets", "",
             "Time ratios jaxmeta/TF: XLA's default options / autotuned (`jaxmeta.autotune`) / frozen variables "
             "(`jaxmeta.freeze` + autotune, against TF's frozen graph) / split over the CPU's cores "
             "(`jaxmeta.parallel.cpu_devices` + autotune; large batch and train step); the target ≤ 0.8 is judged on "
             "the best "
             "time of each framework; restore in GB/s (target ≥ 1 and ≥ TF, judged on checkpoints of 50 MB or "
             "more).", "",
             "| model | latency b1 | large-batch time | train step | best / best | restore GB/s jaxmeta / TF | targets met |",
             "|---|---:|---:|---:|---:|---:|---|"]

    def show(x):
        return "error" if x is None else f"{x:.2f}"

    for model, per_fw in results.items():
        if isinstance(per_fw, str):
            lines.append(f"| {model} | — | — | — | — | — | not measured |")
            continue
        jm, tf = per_fw["jaxmeta"], per_fw["tf"]
        if tf is None:
            lines.append(f"| {model} | — | — | — | — | — | no TF1 column to judge against |")
            continue
        cells, best = [], []
        for keys in (LATENCY_KEYS, THROUGHPUT_KEYS, TRAIN_KEYS):
            inverse = keys is THROUGHPUT_KEYS  # samples/s: the time ratio is its inverse
            shown = [ratio(jm, tf, k) for k in keys]
            shown = [1 / x if inverse and x else x for x in shown]
            cells.append(" / ".join(show(x) for x in shown if x is not None) or "error")
            times = [_best_seconds(r, keys, specs[model].large_batch) for r in (jm, tf)]
            best.append(None if None in times else times[0] / times[1])
        gb = [_median(r, "restore_gbps") for r in (jm, tf)]
        checks = [x is not None and x <= 0.8 for x in best]
        big = specs[model].checkpoint_bytes >= 50e6
        checks.append(not big or (gb[0] is not None and gb[1] is not None and gb[0] >= 1 and gb[0] >= gb[1]))
        missed = [name for name, ok in zip(("latency", "throughput", "train", "restore"), checks) if not ok]
        lines.append(f"| {model} | {' | '.join(cells)} | {' / '.join(show(x) for x in best)} | "
                     f"{show(gb[0])} / {show(gb[1])} | {'all' if not missed else 'missed: ' + ', '.join(missed)} |")
    return [*lines, ""]


def against_peak(results: dict, specs: dict) -> list[str]:
    """Each framework's best large batch and train step as GFLOP/s (XLA's count of the work, the
    same graph for both), the rate jaxmeta would need for 0.8 x TF's best time, and each
    framework's rate for a large matrix product on this host: a target that asks for more than
    XLA's own matrix product reaches cannot be met by arranging XLA's work."""
    rows = []
    for model, per_fw in results.items():
        if isinstance(per_fw, str) or per_fw["tf"] is None:
            continue
        jm, tf = per_fw["jaxmeta"], per_fw["tf"]
        big = specs[model].large_batch
        cells = []
        for work_key, keys in (("large_batch_gflop", THROUGHPUT_KEYS), ("train_gflop", TRAIN_KEYS)):
            work = _median(jm, work_key)
            best = [_best_seconds(r, keys, big) for r in (jm, tf)]  # one batch's best time, each
            if work is None or None in best:
                cells.append("— | —")
                continue
            cells.append(f"{work / best[0]:.0f} / {work / best[1]:.0f} | {work / best[1] / 0.8:.0f}")
        peaks = [_median(r, "matmul_gflops") for r in (jm, tf)]
        shown = " / ".join("—" if p is None else f"{p:.0f}" for p in peaks)
        rows.append(f"| {model} | {' | '.join(cells)} | {shown} |")
    if not rows:
        return []
    return ["## Against the host's peak", "",
            "GFLOP/s at XLA's count of each graph's work (as lowered for the CPU; the same graph for both "
            "frameworks), each framework's best variant; \"≤ 0.8 needs\": the rate jaxmeta must reach for 0.8 × TF's "
            f"best time; last column: a {PEAK_SIDE}×{PEAK_SIDE}×{PEAK_SIDE} float32 matrix product in each framework "
            "(XLA with the best of `autotune`'s options; TF1's oneDNN). A model that needs more than XLA's matrix "
            "product reaches is beyond what arranging XLA's work can do on this host.", "",
            "| model | large batch GFLOP/s jaxmeta / TF | ≤ 0.8 needs | train step GFLOP/s jaxmeta / TF | ≤ 0.8 needs "
            "| matrix product GFLOP/s XLA / TF1 |",
            "|---|---:|---:|---:|---:|---:|", *rows, ""]


def plot(results: dict, path: str) -> bool:
    """A bar chart of jaxmeta/TF time ratios per model and metric; False when matplotlib is missing."""
    if importlib.util.find_spec("matplotlib") is None:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [(k, label) for k, label, _, lower in METRICS if lower]
    names = [m for m, r in results.items() if not isinstance(r, str)]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(names) * 1.2), 4.5))
    width = 0.8 / len(keys)
    for i, (key, label) in enumerate(keys):
        heights = [ratio(results[m]["jaxmeta"], results[m]["tf"], key) or 0.0 for m in names]
        ax.bar([j + i * width for j in range(len(names))], heights, width, label=label)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.axhline(0.8, color="g", lw=0.8, ls="--")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names)
    ax.set_ylabel("jaxmeta time / TF1 time (lower is better)")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _parse_batches(text: str, parser) -> dict[str, tuple[int, int]]:
    out = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        try:
            model, sizes = item.split("=")
            large, train = (int(v) for v in sizes.split("/"))
        except ValueError:
            parser.error(f"--batches: {item!r} is not MODEL=LARGE/TRAIN, e.g. resnet50=128/64")
        out[model.strip()] = (large, train)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=DEFAULT_MODELS, help=f"comma-separated, from {DEFAULT_MODELS}")
    parser.add_argument("--size", type=int, default=96, help="input side of ResNet-50 / Inception-v3")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2,
                        help="fresh processes per framework and model, in alternating order; samples pooled")
    parser.add_argument("--quick", action="store_true", help="small models and batches, 3 repeats, 75 px, 1 round")
    parser.add_argument("--compile-cache", default=None, help="XLA persistent compilation cache directory")
    parser.add_argument("--dir", default=None, help="where to export the models (default: a temp dir)")
    parser.add_argument("--out", default=os.path.join(HERE, "results"), help="where latest.md/.png go")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per subprocess")
    parser.add_argument("--note", action="append", default=[], help="a line added to the report")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--reuse", action="store_true",
                        help="keep models already exported to --dir (without TensorFlow: export them elsewhere, "
                             "optionally without the checkpoint's data, which jaxmeta then initializes)")
    parser.add_argument("--batches", default="",
                        help="per-model batch sizes, e.g. resnet50=128/64 (large batch / train batch)")
    parser.add_argument("--framework", choices=(*FRAMEWORKS, SPLIT, "materialize"), help=argparse.SUPPRESS)
    parser.add_argument("--no-split", action="store_true",
                        help="skip the rows with the CPU split into one JAX device per core")
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker_main(args)
        return
    if args.quick:
        args.size = min(args.size, 75)
        args.repeats = min(args.repeats, 3)
        args.rounds = 1
    args.rounds = max(1, args.rounds)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in models.MODELS]
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {', '.join(models.MODELS)}")
    tmp = None
    if args.dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="jaxmeta-bench-")
        args.dir = tmp.name
    have = {fw: fw == "jaxmeta" or importlib.util.find_spec({"tf": "tensorflow"}.get(fw, fw)) is not None
            for fw in FRAMEWORKS}
    notes = list(args.note)
    for fw, module in (("tf", "tensorflow"), ("openvino", "openvino")):
        if not have[fw]:
            notes.append(f"{fw} column: n/a — `{module}` is not importable in this environment.")
    batches = _parse_batches(args.batches, parser)
    if args.compile_cache:
        notes.append(f"XLA persistent compilation cache: {args.compile_cache}")
    results: dict = {}
    specs: dict = {}
    for model in names:
        t = time.perf_counter()
        error = export(model, args)
        print(f"[{model}] exported in {time.perf_counter() - t:.1f} s" + (f": {error}" if error else ""),
              file=sys.stderr, flush=True)
        if error:
            results[model] = error
            continue
        spec = specs[model] = models.load_spec(os.path.join(args.dir, model))
        if model in batches:
            spec.large_batch, spec.train_batch = batches[model]
            models.save_spec(spec, os.path.join(args.dir, model))  # what the workers read
        frameworks = [fw for fw in FRAMEWORKS if have[fw]]
        if not args.no_split and (os.cpu_count() or 1) > 1:
            frameworks.insert(1, SPLIT)
        rounds: dict[str, list[Result]] = {fw: [] for fw in frameworks}
        for r in range(args.rounds):
            # Odd rounds run the frameworks in reverse order, so that a machine that speeds up or
            # slows down during the run favours none of them.
            for fw in frameworks if r % 2 == 0 else frameworks[::-1]:
                result = measure(model, fw, args)
                rounds[fw].append(result)
                print(f"[{model}] round {r + 1} {fw}: {result.seconds:.1f} s" + (f", error: {result.error}"
                      if result.error else ""), file=sys.stderr, flush=True)
        if SPLIT in rounds:  # its rows belong to the jaxmeta column
            rounds["jaxmeta"] = rounds["jaxmeta"] + rounds.pop(SPLIT)
        results[model] = {fw: merge(rounds[fw]) if fw in rounds else None for fw in FRAMEWORKS}
    table = render(results, specs, args, notes)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "latest.md"), "w", encoding="utf-8") as f:
        f.write(table)
    png = os.path.join(args.out, "latest.png")
    if plot(results, png):
        print(f"wrote {png}", file=sys.stderr)
    else:
        print("matplotlib is not importable: no PNG written", file=sys.stderr)
    print(table)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
