"""Overhead of the runner: Experiment.train versus a bare numpy loop of the same math.

Both paths train the same model on the same batches for the same number of steps; the
ratio (runner time / bare time) is the runner's overhead. Each pair is run alternately
several times and the best times are compared: noise from other work on the machine only
ever adds time, so the minimum is the steadiest estimate of each side.

Each pair also runs ``--long`` times as many steps, which splits the overhead in two: the
cost of each step (the slope between the two lengths, runner over bare) and the cost paid
once per ``fit`` (what is left at zero steps: building the Experiment, the checkpoints at
the first step and at the end, ``training_done``). The durable writes among the latter are
timed on their own too: one checkpoint of the linear model and one ``training_done``.

    python bench/runner_overhead.py [--steps 3000] [--repeats 5] [--long 4]
"""

from __future__ import annotations

import argparse
import itertools
import logging
import tempfile
import time

import numpy as np

from kubelearn import Experiment, RunConfig, checkpoints
from kubelearn.estimators import DNNRegressor, LinearRegressor
from kubelearn.inputs import numpy_input_fn


def make_data(n: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    y = (x @ rng.normal(size=dim) + 0.1 * rng.normal(size=n)).astype(np.float32)
    return x, y


def batches(x: np.ndarray, y: np.ndarray, batch: int):
    """The same batch order as numpy_input_fn(shuffle=False)."""
    n = len(x)
    while True:
        for start in range(0, n, batch):
            yield x[start:start + batch], y[start:start + batch]


def bare_linear(x, y, steps, batch, lr):
    """The linear step as lean as numpy makes it (in place, no Python wrappers): the runner's
    own step uses the same operations, so the ratio measures the loop around them."""
    w = np.zeros((x.shape[1], 1), np.float32)
    b = np.zeros(1, np.float32)
    lr = np.float32(lr)
    it = batches(x, y, batch)
    for _ in range(steps):
        xb, yb = next(it)
        diff = xb @ w
        diff += b
        diff -= yb.reshape(-1, 1)
        flat = diff.ravel()
        loss = float(flat @ flat) / flat.size  # the runner logs it too
        diff *= 2.0 / flat.size
        w -= lr * (xb.T @ diff)
        b -= lr * np.add.reduce(diff, axis=0)
    return w, loss


def bare_dnn(x, y, steps, batch, lr, hidden):
    rng = np.random.default_rng(0)
    sizes = [x.shape[1], *hidden, 1]
    ws = [rng.uniform(-np.sqrt(6 / (i + o)), np.sqrt(6 / (i + o)), (i, o)).astype(np.float32)
          for i, o in itertools.pairwise(sizes)]
    bs = [np.zeros(o, np.float32) for o in sizes[1:]]
    lr = np.float32(lr)
    it = batches(x, y, batch)
    for _ in range(steps):
        xb, yb = next(it)
        acts, pres = [xb], []
        h = xb
        for w, b in zip(ws[:-1], bs[:-1], strict=True):
            z = h @ w
            z += b
            pres.append(z)
            h = np.maximum(z, 0)
            acts.append(h)
        out = h @ ws[-1]
        out += bs[-1]
        out -= yb.reshape(-1, 1)
        flat = out.ravel()
        loss = float(flat @ flat) / flat.size  # the runner logs it too
        out *= 2.0 / flat.size
        delta = out
        for i in range(len(ws) - 1, -1, -1):
            gw, gb = acts[i].T @ delta, np.add.reduce(delta, axis=0)
            if i > 0:
                delta = delta @ ws[i].T
                delta *= pres[i - 1] > 0
            ws[i] -= lr * gw
            bs[i] -= lr * gb
    return ws, loss


def runner(estimator_factory, x, y, steps, batch) -> float:
    """Seconds to build the Experiment and train it. Making and deleting the temporary
    model directory is the benchmark's own work, not the runner's: it is not timed."""
    with tempfile.TemporaryDirectory() as model_dir:
        start = time.perf_counter()
        config = RunConfig(model_dir=model_dir, log_step_count_steps=100)
        exp = Experiment(estimator_factory(config),
                         numpy_input_fn(x, y, batch_size=batch, num_epochs=None, shuffle=False),
                         numpy_input_fn(x, y, batch_size=batch, shuffle=False),
                         train_steps=steps)
        exp.train(delay_secs=0)
        return time.perf_counter() - start


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def durable_writes(repeats: int) -> tuple[float, float]:
    """Seconds of one checkpoint of the linear model (64 features) and of one
    ``training_done`` marker, best of ``repeats``, in a fresh temporary directory."""
    variables = {"linear/kernel": np.zeros((64, 1), np.float32),
                 "linear/bias": np.zeros(1, np.float32)}
    saves, marks = [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as model_dir:
            saves.append(timed(lambda d=model_dir: checkpoints.save(d, variables, 1)))
            marks.append(timed(lambda d=model_dir: checkpoints.mark_training_done(d, 1)))
    return min(saves), min(marks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--long", type=int, default=4,
                        help="the second length, as a multiple of --steps")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    x, y = make_data(8192, 64)

    def linear(steps):
        return (lambda: bare_linear(x, y, steps, 256, 0.01),
                lambda: runner(lambda c: LinearRegressor(config=c, learning_rate=0.01), x, y,
                               steps, 256))

    def dnn(steps):
        return (lambda: bare_dnn(x, y, steps, 256, 0.01, [128, 64]),
                lambda: runner(lambda c: DNNRegressor(hidden_units=[128, 64], config=c,
                                                      optimizer="SGD", learning_rate=0.01),
                               x, y, steps, 256))

    cases = {"linear (64 features, batch 256)": linear, "dnn [128, 64] (batch 256)": dnn}
    short, long = args.steps, args.steps * args.long
    print(f"{'model':34} {'bare s':>8} {'runner s':>9} {'ratio':>6} {'+us/step':>9} "
          f"{'step ratio':>10} {'once ms':>8}")
    for name, case in cases.items():
        best: dict[tuple[str, int], float] = {}
        for _ in range(args.repeats):
            for steps in (short, long):
                bare_fn, runner_fn = case(steps)
                for side, seconds in (("bare", timed(bare_fn)), ("runner", runner_fn())):
                    best[side, steps] = min(best.get((side, steps), np.inf), seconds)
        bare_s, runner_s = best["bare", short], best["runner", short]
        bare_step = (best["bare", long] - bare_s) / (long - short)
        runner_step = (best["runner", long] - runner_s) / (long - short)
        once = (runner_s - runner_step * short) - (bare_s - bare_step * short)
        extra_us = (runner_s - bare_s) / short * 1e6
        print(f"{name:34} {bare_s:8.3f} {runner_s:9.3f} {runner_s / bare_s:6.3f} "
              f"{extra_us:9.1f} {runner_step / bare_step:10.3f} {once * 1e3:8.2f}")
    save_s, mark_s = durable_writes(args.repeats)
    print(f"durable writes: one checkpoint {save_s * 1e3:.2f} ms, training_done "
          f"{mark_s * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
