"""Restore throughput: jaxmeta vs TensorFlow's Saver.restore vs plain file reads, same checkpoint.

    .venv/bin/python benchmarks/restore.py [--mb 400] [--repeats 5] [--dir /tmp/jaxmeta-bench]

Builds a TF1 graph of float32 variables (about `--mb` megabytes), saves it with TF's Saver, then
times, with a warm page cache, the best of `--repeats` runs of:

- plain reads: `readinto` of every data file into preallocated buffers (the floor);
- jaxmeta CheckpointReader: every tensor into NumPy, checksums verified;
- jaxmeta Saver.restore: the same plus the graph's key mapping and `jax.device_put`;
- TF Saver.restore: `tf.compat.v1.train.Saver().restore(sess, prefix)` into the session.

Prints a markdown table with GB/s and ratios.
"""

from __future__ import annotations

import argparse
import glob
import os
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def build(directory: str, megabytes: int) -> str:
    import tensorflow as tf

    tf1 = tf.compat.v1
    prefix = os.path.join(directory, "model.ckpt")
    if os.path.exists(prefix + ".index"):
        return prefix
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(0)
    per_var = 1 << 20  # 1M float32 = 4 MB
    count = max(1, megabytes * (1 << 20) // (4 * per_var))
    with tf.Graph().as_default():
        for i in range(count):
            shape = (1024, per_var // 1024) if i % 2 else (per_var,)
            tf1.get_variable(f"layer{i:03d}/w", initializer=rng.normal(size=shape).astype(np.float32))
        tf1.get_variable("small/bias", initializer=np.zeros(10, np.float32))
        saver = tf1.train.Saver()
        with tf1.Session() as sess:
            sess.run(tf1.global_variables_initializer())
            saver.save(sess, prefix)
    return prefix


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", default="/tmp/jaxmeta-bench")
    args = parser.parse_args()
    prefix = build(args.dir, args.mb)
    data_files = sorted(glob.glob(prefix + ".data-*"))
    nbytes = sum(os.path.getsize(p) for p in data_files)

    def plain():
        for path in data_files:
            buf = np.empty(os.path.getsize(path), np.uint8)
            with open(path, "rb", buffering=0) as f:
                f.readinto(memoryview(buf))

    import jax

    import jaxmeta
    from jaxmeta._saver import Saver
    from jaxmeta.checkpoint import CheckpointReader

    graph = jaxmeta.import_meta_graph(prefix + ".meta")
    saver = Saver(graph)

    def reader():
        with CheckpointReader(prefix) as r:
            r.get_tensors([n for n, _ in r.list_variables()])

    def restore():
        jax.block_until_ready(saver.restore(prefix))

    import tensorflow as tf

    tf1 = tf.compat.v1
    tf_graph = tf.Graph()
    with tf_graph.as_default():
        tf_saver = tf1.train.import_meta_graph(prefix + ".meta")
        sess = tf1.Session(graph=tf_graph)

    def tf_restore():
        with tf_graph.as_default():
            tf_saver.restore(sess, prefix)

    plain()  # warm the page cache
    rows = [("plain file reads", best(plain, args.repeats)),
            ("jaxmeta CheckpointReader (NumPy)", best(reader, args.repeats)),
            ("jaxmeta Saver.restore (jax.Array)", best(restore, args.repeats)),
            ("TF Saver.restore", best(tf_restore, args.repeats))]
    base = rows[0][1]
    tf_time = rows[-1][1]
    print(f"\n{nbytes / 1e6:.0f} MB in {len(data_files)} data file(s), best of {args.repeats}, warm page cache, "
          f"{os.cpu_count()} CPUs\n")
    print("| method | seconds | GB/s | time vs plain reads | speed vs TF |")
    print("|---|---:|---:|---:|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.3f} | {nbytes / seconds / 1e9:.2f} | {seconds / base:.2f}x | "
              f"{tf_time / seconds:.2f}x |")


if __name__ == "__main__":
    main()
