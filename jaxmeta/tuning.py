"""Choosing XLA compiler options by measurement: `autotune(fn, *example_args)`.

XLA's CPU backend can hand convolutions, matrix products and elementwise fusions to YNNPACK or
run them with its own kernels (Eigen and generated loops), and which is faster depends on the
model, the batch size and whether the function is a training step: on a 2-core Xeon, turning
YNNPACK off makes TF-slim Inception-v3's batch-8 inference 1.4x faster, while keeping it for
everything but convolutions makes a small CNN's training step 1.5x faster, and both changes
slow other functions down. `autotune` compiles the function with each candidate set of options
for the example arguments, times a few calls of each in turn, and keeps the fastest, much as XLA
autotunes kernels on GPUs. On other backends there is nothing to choose and it returns a plain
`jax.jit`.

Functions that donate arguments (a training step jitted with `donate_argnums=0`) also get
`DONATED_CPU_OPTIONS` on CPU: XLA's default copy insertion cannot prove that the in-place update
of a weight comes after the other reads of it (the input gradient dy @ W^T) and copies the weight
first; its region analysis proves it, which takes TF-slim ResNet-50's training step from 192 to
65 copies and 226 to 186 ms, as fast as the step without donation at half its memory.

On Linux, `autotune` also calls `keep_host_memory`, so that the buffers XLA allocates on every
call reuse memory the process already holds instead of fresh pages from the kernel.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

_YNN = "xla_cpu_experimental_ynn_fusion_type"

# XLA's own loops (elementwise and reduction fusions) with 512-bit vectors where the CPU has them
# (LLVM otherwise keeps to the widest it has): a CNN's batch-128 inference and training step without
# YNNPACK 7-9 % faster, nothing slower on the benchmark's models.
_WIDE = {"xla_cpu_prefer_vector_width": 512}

#: (name, compiler_options) pairs tried on CPU; `None` is XLA's default. The two others also ask
#: for 512-bit vectors in XLA's own loops.
CPU_CANDIDATES: tuple[tuple[str, Mapping[str, Any] | None], ...] = (
    ("XLA default", None),
    ("no YNNPACK", {**_WIDE, _YNN: ""}),
    ("YNNPACK except convolutions", {**_WIDE, _YNN: ",".join(
        "LIBRARY_FUSION_TYPE_" + kind for kind in ("INDIVIDUAL_DOT", "DOT", "ELTWISE", "REDUCE"))}),
)

#: XLA options added to every CPU candidate of a function that donates arguments (see above).
DONATED_CPU_OPTIONS: Mapping[str, Any] = {"xla_cpu_copy_insertion_use_region_analysis": True}


# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def _glibc_mallopt() -> Callable[..., int] | None:
    """glibc's `mallopt`, or None where the C library is not glibc (macOS, Windows, musl)."""
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
        return ctypes.CDLL(None).mallopt
    except (AttributeError, ValueError, OSError):  # no confstr name, no glibc, no mallopt
        return None


def keep_host_memory(limit_bytes: int = 1 << 30) -> bool:
    """Lets freed host buffers of up to `limit_bytes` stay with the process for the next call.

    XLA's CPU runtime allocates a compiled function's temporary buffer (and its outputs) on every
    call and frees them after. glibc's malloc serves allocations over 32 MiB with fresh pages from
    the kernel and hands them back when they are freed, so each call pays a page fault and the
    zeroing of every 4 KiB it touches: a small CNN's batch-128 inference (a 34 MB temporary
    buffer) faulted in 8,400 pages per call, some 5 ms of its 30-40 on a 2-core Xeon. This raises
    malloc's thresholds (`mallopt`'s `M_MMAP_THRESHOLD` and `M_TRIM_THRESHOLD`) so that such
    buffers come from, and return to, the process's heap, as TensorFlow's own allocator keeps its
    memory. The setting is process-wide; the price is that memory freed by anything in the
    process is kept for reuse (up to `limit_bytes` at the heap's top) rather than returned.
    Buffers that XLA allocates on its own threads still come from the kernel when they do not fit
    in what is free of that thread's heap (glibc's per-thread heaps are at most 64 MiB).

    `jaxmeta.autotune` and `jaxmeta.Session` call it; call it yourself when you `jax.jit` graph
    functions directly. Setting the environment variable `JAXMETA_KEEP_HOST_MEMORY=0` turns it
    off everywhere.

    Args:
        limit_bytes: the largest buffer to keep (at most 2 GiB - 1, `mallopt`'s limit).

    Returns:
        True if the thresholds were set; False where there is nothing to set (not glibc, e.g.
        macOS, Windows or musl) or the environment variable turned it off.
    """
    mallopt = _glibc_mallopt()
    if mallopt is None or os.environ.get("JAXMETA_KEEP_HOST_MEMORY", "1") == "0":
        return False
    limit = ctypes.c_int(max(0, min(int(limit_bytes), 2**31 - 1)))
    return bool(mallopt(_M_MMAP_THRESHOLD, limit)) and bool(mallopt(_M_TRIM_THRESHOLD, limit))


@dataclasses.dataclass
class Tuned:
    """A `jax.jit` of the tuned function, compiled with the fastest candidate's options.

    Attributes:
        fn: the jitted function; calling the `Tuned` object calls it.
        choice: the name of the chosen candidate.
        compiler_options: its XLA options (`None` = XLA's defaults).
        timings_ms: median milliseconds per call for each candidate that compiled; empty when
            there was nothing to choose (one candidate, or a backend other than CPU).
    """

    fn: Callable
    choice: str
    compiler_options: Mapping[str, Any] | None
    timings_ms: dict[str, float]

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


def autotune(fn: Callable, *args, jit_kwargs: Mapping[str, Any] | None = None,
             candidates: Sequence[tuple[str, Mapping[str, Any] | None]] | None = None,
             repeats: int = 5, **kwargs) -> Tuned:
    """Jits `fn` with the XLA compiler options that run it fastest on `args`.

    Args:
        fn: a pure function, e.g. `graph.function(...)` or `graph.step(...)`.
        *args: example arguments, with the shapes and dtypes of the calls to come (the options are
            kept for other shapes too, which compile on first use as usual).
        jit_kwargs: passed to `jax.jit` (e.g. `{"donate_argnums": 0}`); donated example arguments
            are copied before each trial call, so they stay usable.
        candidates: (name, compiler_options) pairs to try; default `CPU_CANDIDATES` on CPU, and
            XLA's defaults alone on other backends. When `jit_kwargs` donates on CPU, each
            candidate's options are merged over `DONATED_CPU_OPTIONS` (copy insertion's
            region analysis: in-place updates without defensive copies).
        repeats: timed calls per candidate, after one warm-up call.
        **kwargs: keyword arguments for `fn` (e.g. `key=`).

    Returns:
        A `Tuned` callable wrapping `jax.jit(fn, compiler_options=best, **jit_kwargs)`, already
        compiled for `args`.

    Example:
        step = jaxmeta.autotune(graph.step([], feeds, targets=["train_op"]), variables, *batch,
                                jit_kwargs={"donate_argnums": 0})
        _, variables = step(variables, *batch)
    """
    jit_kwargs = dict(jit_kwargs or {})
    on_cpu = jax.default_backend() == "cpu"
    if on_cpu:
        keep_host_memory()
    if candidates is None:
        candidates = CPU_CANDIDATES if on_cpu else CPU_CANDIDATES[:1]
    if not candidates:
        raise ValueError("autotune needs at least one candidate, e.g. ('XLA default', None)")
    donating = any(jit_kwargs.get(k) not in (None, (), []) for k in ("donate_argnums", "donate_argnames"))
    if donating and on_cpu:
        candidates = [(name, {**DONATED_CPU_OPTIONS, **(options or {})}) for name, options in candidates]

    def jitted(options):
        return jax.jit(fn, compiler_options=dict(options), **jit_kwargs) if options else jax.jit(fn, **jit_kwargs)

    def fresh():
        if not donating:
            return args, kwargs
        return jax.tree.map(lambda a: a.copy() if isinstance(a, jax.Array) else a, (args, kwargs))

    if len(candidates) == 1:  # nothing to time (a GPU's): compiled and warmed up all the same
        name, options = candidates[0]
        only = jitted(options)
        a, k = fresh()
        jax.block_until_ready(only(*a, **k))
        return Tuned(only, name, options, {})

    compiled, errors = {}, {}
    for name, options in candidates:
        try:
            compiled[name] = (jitted(options), options)
            a, k = fresh()
            jax.block_until_ready(compiled[name][0](*a, **k))  # compile + warm up
        except jax.errors.JaxRuntimeError as e:  # an option this jaxlib does not know
            compiled.pop(name, None)
            errors[name] = str(e).splitlines()[0]
    if not compiled:
        raise RuntimeError(f"autotune: no candidate compiled ({errors}); pass candidates=[('XLA default', None)]")
    samples: dict[str, list[float]] = {name: [] for name in compiled}
    for _ in range(max(1, repeats)):  # round robin, so drift in machine load hits every candidate
        for name, (f, _) in compiled.items():
            a, k = fresh()
            t = time.perf_counter()
            jax.block_until_ready(f(*a, **k))
            samples[name].append(time.perf_counter() - t)
    timings = {name: statistics.median(s) * 1e3 for name, s in samples.items()}
    best = min(timings, key=timings.get)
    return Tuned(compiled[best][0], best, compiled[best][1], timings)
