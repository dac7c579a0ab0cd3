"""Checkpoint save and restore against a plain copy of the same bytes, on a volume and on S3,
in one run.

A checkpoint of ``--mb`` MiB of float32 variables is saved with ``kubelearn.checkpoints.save``
and restored with ``checkpoints.load`` (headers checked, arrays read):

* on a **volume** (``--dir``, e.g. a pod's claim; default a temporary directory): npz written
  to a temporary name, fsynced, renamed, and the index rewritten the same way. The plain copy
  writes the same bytes with one ``write`` plus ``fsync`` and reads them back with one
  ``read``.
* on **S3** (``--s3-url s3://bucket/prefix`` with the ``AWS_*`` variables set; by default a
  versitygw server over a temporary directory, started on loopback from the tests' build
  cache): the checkpoint as one
  object PUT before the index object. The plain copy is one ``pipe_file`` of the same bytes
  and one ``cat_file``.

Each pair runs alternately ``--repeats`` times; the best time of each is compared, as other
work on the machine only ever adds time.

    python bench/checkpoint_io.py [--dir DIR] [--s3-url URL | --no-s3] [--mb 64] [--repeats 5]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kubelearn import checkpoints, fs  # noqa: E402

Timed = tuple[float, float]  # (save seconds, restore seconds)


def variables(megabytes: int) -> dict[str, np.ndarray]:
    """Eight variables of float32 adding up to ``megabytes`` MiB, like a model's layers."""
    rng = np.random.default_rng(0)
    per = (megabytes << 20) // 4 // 8
    return {f"layer_{i}/kernel": rng.standard_normal(per).astype(np.float32) for i in range(8)}


def save_restore(location: str, values: dict[str, np.ndarray], step: int) -> Timed:
    start = time.perf_counter()
    prefix = checkpoints.save(location, values, step, keep_checkpoint_max=2)
    saved = time.perf_counter()
    restored, got = checkpoints.load(prefix)
    done = time.perf_counter()
    assert got == step and all(np.array_equal(restored[k], v) for k, v in values.items())
    return saved - start, done - saved


def plain_copy(directory: str, data: bytes) -> Timed:
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


def plain_object(url: str, data: bytes) -> Timed:
    import fsspec.core

    filesystem, path = fsspec.core.url_to_fs(f"{url}/plain.bin")
    start = time.perf_counter()
    filesystem.pipe_file(path, data)
    written = time.perf_counter()
    back = filesystem.cat_file(path)
    done = time.perf_counter()
    assert len(back) == len(data)
    filesystem.rm_file(path)
    return written - start, done - written


@contextlib.contextmanager
def local_s3() -> Iterator[str]:
    """A bucket on a versitygw server on loopback, with the ``AWS_*`` variables set."""
    from tests.cluster.build import ensure_s3_server
    from tests.s3server import BUCKET, start_server

    binary = ensure_s3_server(progress=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="kubelearn-bench-s3-") as tmp:
        access, secret = "bench", secrets.token_hex(16)
        proc, port = start_server(binary, Path(tmp) / "buckets", access, secret)
        os.environ.update({"AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret,
                           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                           "AWS_DEFAULT_REGION": "us-east-1"})
        try:
            yield f"s3://{BUCKET}"
        finally:
            proc.terminate()
            proc.wait(10)


def alternate(repeats: int, ckpt: Callable[[int], Timed], plain: Callable[[], Timed]
              ) -> tuple[Timed, Timed]:
    """Best (save, restore) of the checkpoint and of the plain copy, run alternately."""
    runs_c, runs_p = [], []
    for step in range(1, repeats + 1):
        runs_c.append(ckpt(step))
        runs_p.append(plain())
    return ((min(t[0] for t in runs_c), min(t[1] for t in runs_c)),
            (min(t[0] for t in runs_p), min(t[1] for t in runs_p)))


def report(where: str, mib: float, repeats: int, ckpt: Timed, plain: Timed) -> None:
    print(f"{mib:.0f} MiB on {where}, best of {repeats}:")
    for name, (write, read) in (("checkpoint", ckpt), ("plain copy", plain)):
        print(f"  {name:<11} save {write * 1000:8.1f} ms   restore {read * 1000:8.1f} ms   "
              f"({mib / write:7.1f} / {mib / read:7.1f} MiB/s)")
    print(f"  ratio       save {ckpt[0] / plain[0]:8.2f}x     restore "
          f"{ckpt[1] / plain[1]:8.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", help="volume directory to write in (default: a temporary "
                                      "directory)")
    parser.add_argument("--s3-url", help="s3://bucket/prefix to write under, with the AWS_* "
                                         "variables set (default: a local versitygw server)")
    parser.add_argument("--no-s3", action="store_true", help="the volume only")
    parser.add_argument("--mb", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    values = variables(args.mb)
    data = b"".join(v.tobytes() for v in values.values())
    mib = len(data) / 2**20
    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        ckpt, plain = alternate(args.repeats, lambda step: save_restore(directory, values, step),
                                lambda: plain_copy(directory, data))
    report(args.dir or "a local disk (temporary directory)", mib, args.repeats, ckpt, plain)
    if args.no_s3:
        return
    with contextlib.ExitStack() as stack:
        base = args.s3_url or stack.enter_context(local_s3())
        url = f"{base.rstrip('/')}/bench-{secrets.token_hex(4)}"
        try:
            ckpt, plain = alternate(args.repeats, lambda step: save_restore(url, values, step),
                                    lambda: plain_object(url, data))
        finally:
            fs.remove_tree(url)
        where = "S3 at " + (os.environ.get("AWS_ENDPOINT_URL") or "AWS") + \
            ("" if args.s3_url else " (versitygw over a local disk)")
        report(where, mib, args.repeats, ckpt, plain)


if __name__ == "__main__":
    main()
