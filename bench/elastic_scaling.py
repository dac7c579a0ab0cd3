"""Steps per second of one asynchronous experiment before and after its workers are scaled,
in one run: ``kubelearn local`` trains the linear example (one ps, a master, 2 workers) and
``kubelearn scale`` changes the worker count while it trains.

    python bench/elastic_scaling.py [--window 8] [--counts 2,4,1]

For each count, once every new worker has pushed (the ps logs each task's first push; worker
i starts training min(60, 5 i) s after it starts, as in TensorFlow), the global step is sampled
from progress.json over ``--window`` seconds. Also reported: the longest time the global step
did not move during the whole run (a stall would show there; progress.json is written once
a second, so about 1 s is the resolution, not a stall). On a machine with few cores
more workers need not mean more steps; the point is that training never stops.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = """\
apiVersion: kubelearn.dev/v1alpha1
kind: Experiment
metadata: {name: elastic}
spec:
  experimentFn: kubelearn.examples.linear:experiment_fn
  hparams: {learning_rate: 0.05, train_steps: 100000000}
  replicas: {ps: 1, worker: WORKERS, master: 1}
"""


class Run:
    def __init__(self, workdir: Path, workers: int) -> None:
        self.model_dir = workdir / "out"
        path = workdir / "elastic.yaml"
        path.write_text(MANIFEST.replace("WORKERS", str(workers)))
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kubelearn.cli", "local", str(path), "--model-dir",
             str(self.model_dir), "--no-progress"], stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, cwd=workdir)
        threading.Thread(target=self._read, daemon=True).start()
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def _sample(self) -> None:
        while not self._stop.is_set():
            step = self.step()
            if step is not None:
                self.samples.append((time.monotonic(), step))
            time.sleep(0.05)

    def step(self) -> int | None:
        try:
            return int(json.loads((self.model_dir / "progress.json").read_text())
                       ["global_step"])
        except (OSError, ValueError, KeyError):
            return None

    def wait_for(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"{text!r} not seen:\n{''.join(self.lines[-30:])}")
            time.sleep(0.1)

    def rate(self, window: float) -> float:
        start = time.monotonic()
        first = self.step() or 0
        time.sleep(window)
        return ((self.step() or 0) - first) / (time.monotonic() - start)

    def scale(self, workers: int) -> None:
        subprocess.run([sys.executable, "-m", "kubelearn.cli", "scale", str(self.model_dir),
                        "--replicas", str(workers)], check=True, stdout=subprocess.DEVNULL)

    def longest_stall(self) -> float:
        """The longest time between two samples that saw the global step move."""
        moves = [t for (_, prev), (t, s) in itertools.pairwise(self.samples) if s > prev]
        return max((b - a for a, b in itertools.pairwise(moves)), default=0.0)

    def stop(self) -> None:
        self._stop.set()
        self.proc.terminate()
        self.proc.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--window", type=float, default=8.0)
    parser.add_argument("--counts", default="2,4,1")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="elastic-") as tmp:
        run = Run(Path(tmp), counts[0])
        try:
            for i, count in enumerate(counts):
                if i:
                    run.scale(count)
                    run.wait_for(f"Workers scaled from {counts[i - 1]} to {count}", 30)
                for index in range(count):
                    run.wait_for(f"First push from worker:{index}", 120)
                rows.append((count, run.rate(args.window)))
                print(f"{count} worker(s): {rows[-1][1]:.0f} steps/s", file=sys.stderr)
            stall = run.longest_stall()
        finally:
            run.stop()
    print(f"| workers | steps/s | vs {counts[0]} workers |\n|---|---|---|")
    for count, rate in rows:
        print(f"| {count} | {rate:.0f} | {rate / rows[0][1]:.2f}x |")
    print(f"\nlongest time the global step did not move: {stall:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
