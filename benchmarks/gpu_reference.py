"""ResNet-50 training on a GPU: jaxmeta's step of the TF-slim graph against the device's achievable
throughput, in one process.

    python benchmarks/gpu_reference.py --dir MODELS/resnet50 [--batch 64] [--repeats 20] [--torch-compile]

`--dir` holds a ResNet-50 exported by `benchmarks/run.py` (`model.ckpt.meta`, `spec.json` and the
checkpoint; run `run.py --reuse` first where only the `.meta` was carried, to initialize it). The
same step — forward, backward, Momentum update, batch norm frozen as the graph has it — is timed:

- jaxmeta: `jax.jit(graph.step([], feeds, targets=[train_op]), donate_argnums=0)`, as jaxmeta
  arranges convolutions and channel sums (`jaxmeta.ops.nn.ARRANGED`, the default), and again with
  lax's plain convolutions and sums (`ARRANGED = False`);
- the achievable reference: torchvision's ResNet-50 (v1.5: stride in the 3x3 convolutions) in
  PyTorch with cuDNN, channels-last, TF32 allowed as XLA's default precision allows it on the GPU,
  SGD with momentum, batch norm in eval mode; with `--torch-compile` also under `torch.compile`.

Prints a markdown table: images/s, TFLOP/s (each framework's own count of its step's work: XLA's
cost analysis, PyTorch's FlopCounterMode), and jaxmeta's share of the best reference. TF1 is not a
column: its GPU build is not installable on the machines this ran on.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import models  # noqa: E402
from run import _flops  # noqa: E402


def _median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def jaxmeta_step(directory: str, batch: int, repeats: int, arranged: bool) -> tuple[float, float | None]:
    """Seconds per training step and XLA's FLOP count."""
    import jax

    import jaxmeta
    from jaxmeta.ops import nn

    nn.ARRANGED = arranged
    spec = models.load_spec(directory)
    prefix = os.path.join(directory, "model.ckpt")
    graph = jaxmeta.import_meta_graph(prefix + ".meta")
    state = [graph.saver.restore(prefix)]
    step = jax.jit(graph.step([], feeds=[f.name for f in spec.train_feeds], targets=[spec.train_op]),
                   donate_argnums=0)
    x = jax.device_put(models.make_inputs(spec.train_feeds, batch))
    flops = _flops(step, state[0], *x)

    def run():
        _, state[0] = step(state[0], *x)
        jax.block_until_ready(state[0])

    return _median_time(run, repeats), flops


def torch_step(size: int, batch: int, repeats: int, compiled: bool) -> tuple[float, float | None]:
    import torch
    import torchvision
    from torch.utils.flop_counter import FlopCounterMode

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    model = torchvision.models.resnet50(num_classes=1000).cuda().to(memory_format=torch.channels_last).eval()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((batch, 3, size, size), np.float32)).cuda()
    x = x.to(memory_format=torch.channels_last)
    y = torch.from_numpy(rng.integers(0, 1000, batch)).cuda()

    def train(x, y):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss

    fn = torch.compile(train) if compiled else train
    with FlopCounterMode(display=False) as counter:
        train(x, y)
    flops = float(counter.get_total_flops()) or None

    def run():
        fn(x, y)
        torch.cuda.synchronize()

    for _ in range(2):  # cuDNN's autotuning (and torch.compile's compile) before timing
        run()
    return _median_time(run, repeats), flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True, help="an exported resnet50 model directory")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--torch-compile", action="store_true")
    args = parser.parse_args()
    spec = models.load_spec(args.dir)
    size = spec.train_feeds[0].shape[0]
    rows = []
    for label, arranged in (("jaxmeta", True), ("jaxmeta, lax's plain convolutions and sums", False)):
        rows.append((label, *jaxmeta_step(args.dir, args.batch, args.repeats, arranged)))
    refs = [("PyTorch eager (torchvision ResNet-50)", False)] + ([("PyTorch torch.compile", True)]
                                                                  if args.torch_compile else [])
    reference = []
    for label, compiled in refs:
        try:
            reference.append((label, *torch_step(size, args.batch, args.repeats, compiled)))
        except Exception as e:  # noqa: BLE001  (no torch here: the table says so)
            print(f"{label}: {type(e).__name__}: {e}", file=sys.stderr)
    best = min((t for _, t, _ in reference), default=None)
    print(f"ResNet-50 training step, batch {args.batch}, {size}x{size}, float32 (TF32 where the framework's "
          "default allows)\n")
    print("| step | ms | images/s | TFLOP/s | share of the best reference's images/s |")
    print("|---|---:|---:|---:|---:|")
    for label, t, flops in rows + reference:
        share = f"{best / t:.0%}" if best else "n/a"
        tflops = f"{flops / t / 1e12:.1f}" if flops else "n/a"
        print(f"| {label} | {t * 1e3:.1f} | {args.batch / t:.0f} | {tflops} | {share} |")


if __name__ == "__main__":
    main()
