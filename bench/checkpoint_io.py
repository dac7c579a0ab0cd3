"""Checkpoint save and restore against a plain copy of the same bytes, in one run.

A checkpoint of ``--mb`` megabytes of float32 variables is saved with
``kubelearn.checkpoints.save`` (npz written to a temporary name, fsynced, renamed, the
index rewritten the same way) and restored with ``checkpoints.load`` (headers checked,
arrays read). The baseline writes the same number of bytes with one ``write`` plus
``fsync`` and reads them back with one ``read``. Both run alternately ``--repeats`` times in
the directory given, which can be a mounted volume (a pod's claim) or a local disk; the
best time of each is compared, as other work on the machine only ever adds time.

    python bench/checkpoint_io.py [--dir DIR] [--mb 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

from kubelearn import checkpoints


def variables(megabytes: int) -> dict[str, np.ndarray]:
    """Eight variables of float32 adding up to ``megabytes`` MiB, like a model's layers."""
    rng = np.random.default_rng(0)
    per = (megabytes << 20) // 4 // 8
    return {f"layer_{i}/kernel": rng.standard_normal(per).astype(np.float32) for i in range(8)}


def save_restore(directory: str, values: dict[str, np.ndarray], step: int) -> tuple[float,
                                                                                   float]:
    start = time.perf_counter()
    prefix = checkpoints.save(directory, values, step, keep_checkpoint_max=2)
    saved = time.perf_counter()
    restored, got = checkpoints.load(prefix)
    done = time.perf_counter()
    assert got == step and all(np.array_equal(restored[k], v) for k, v in values.items())
    return saved - start, done - saved


def plain_copy(directory: str, data: bytes) -> tuple[float, float]:
    path = os.path.join(directory, "plain.bin")
    start = time.perf_counter()
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    written = time.perf_counter()
    with open(path, "rb") as handle:
        back = handle.read()
    done = time.perf_counter()
    assert len(back) == len(data)
    os.unlink(path)
    return written - start, done - written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", help="where to write (default: a temporary directory)")
    parser.add_argument("--mb", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    values = variables(args.mb)
    data = b"".join(v.tobytes() for v in values.values())
    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        ckpt, plain = [], []
        for step in range(1, args.repeats + 1):
            ckpt.append(save_restore(directory, values, step))
            plain.append(plain_copy(directory, data))
    best = {name: (min(t[0] for t in runs), min(t[1] for t in runs))
            for name, runs in (("checkpoint", ckpt), ("plain copy", plain))}
    print(f"{len(data) / 2**20:.0f} MiB in {args.dir or 'a temporary directory'}, best of "
          f"{args.repeats}:")
    for name, (write, read) in best.items():
        print(f"  {name:<11} save {write * 1000:8.1f} ms   restore {read * 1000:8.1f} ms")
    (cw, cr), (pw, pr) = best["checkpoint"], best["plain copy"]
    print(f"  ratio       save {cw / pw:8.2f}x     restore {cr / pr:8.2f}x")


if __name__ == "__main__":
    main()
