"""Training hooks (tf.contrib.learn's monitors): code that runs around training steps.

A hook sees a :class:`StepContext` after every step (or, if it says when it is next due,
after the steps it is due) and may ask training to stop.
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

from kubelearn import bounded_input, fs

log = logging.getLogger("kubelearn")


class StepContext:
    """What a hook sees: the estimator, the current global step and loss, the session."""

    def __init__(self, estimator: Any, session: Any):
        self.estimator = estimator
        self.session = session
        self.step = 0
        self.loss = math.nan
        self.stop_requested = False
        self.results: dict[str, Any] | None = None  # set for evaluation hooks

    @property
    def last_checkpoint(self) -> str | None:
        return self.session.last_checkpoint

    def request_stop(self) -> None:
        self.stop_requested = True


Due = tuple[float, float]
"""When something is next due: a global step and a ``time.monotonic()`` time, whichever
comes first (``math.inf`` for never)."""

EVERY_STEP: Due = (-math.inf, -math.inf)


class Hook:
    """Base class; override what you need."""

    def begin(self, context: StepContext) -> None:
        """Called once before the first step."""

    def after_step(self, context: StepContext) -> None:
        """Called after every step."""

    def end(self, context: StepContext) -> None:
        """Called once when training ends normally."""


def next_due(hook: Any) -> Due:
    """When ``hook.after_step`` next has something to do. A hook may say so with a
    ``next_due()`` method defined in the same class as its ``after_step``; the step loop
    then skips calling it on steps before that, which costs a small model a good part of
    its step. Any other hook is due at every step, as TF calls it."""
    for cls in type(hook).__mro__:
        if "after_step" in vars(cls):
            schedule = vars(cls).get("next_due")
            return schedule(hook) if schedule is not None else EVERY_STEP
    return EVERY_STEP


class StopAtStepHook(Hook):
    """Stops after ``num_steps`` more steps or at global step ``last_step``."""

    def __init__(self, num_steps: int | None = None, last_step: int | None = None):
        if (num_steps is None) == (last_step is None):
            raise ValueError("One of num_steps or last_step must be specified.")
        self._num_steps, self._last_step = num_steps, last_step

    def begin(self, context: StepContext) -> None:
        if self._num_steps is not None:
            self._last_step = context.step + self._num_steps

    def after_step(self, context: StepContext) -> None:
        if self._last_step is not None and context.step >= self._last_step:
            context.request_stop()

    def next_due(self) -> Due:
        return (math.inf if self._last_step is None else self._last_step), math.inf


class LoggingHook(Hook):
    """Logs the global step, loss and steps per second every ``every_n_steps``."""

    def __init__(self, every_n_steps: int = 100):
        self.every_n_steps = every_n_steps
        self._last_step = 0
        self._last_time = 0.0
        self._next_step: float = every_n_steps or math.inf  # the step of the next line

    def begin(self, context: StepContext) -> None:
        self._last_step, self._last_time = context.step, time.monotonic()
        self._next_step = context.step + self.every_n_steps if self.every_n_steps else math.inf

    def after_step(self, context: StepContext) -> None:
        if context.step >= self._next_step:
            self._log(context.step, context.loss)

    def next_due(self) -> Due:
        return self._next_step, math.inf

    def _log(self, step: int, loss: float) -> None:
        now = time.monotonic()
        rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
        log.info("global_step = %d, loss = %.6g (%.1f steps/sec)", step, loss, rate)
        self._last_step, self._last_time = step, now
        self._next_step = step + self.every_n_steps


class GlobalStepWaiterHook(Hook):
    """Delays the start of training until the global step reaches ``wait_until_step``."""

    def __init__(self, wait_until_step: int, poll_secs: float = 0.5, sleep=time.sleep):
        self.wait_until_step = wait_until_step
        self._poll_secs = poll_secs
        self._sleep = sleep

    def begin(self, context: StepContext) -> None:
        if self.wait_until_step <= 0:
            return
        logged = False
        while True:
            step = context.session.global_step()
            if step >= self.wait_until_step:
                return
            if not logged:
                log.info("Waiting for global step %d before starting training (now %d).",
                         self.wait_until_step, step)
                logged = True
            self._sleep(self._poll_secs)


class ValidationMonitor(Hook):
    """Evaluates each new checkpoint once at least ``every_n_steps`` steps have passed.

    It looks for a new checkpoint at most every ``check_interval_secs`` seconds (None:
    after every step), so that fast steps do not poll the model directory.
    """

    def __init__(self, input_fn: Any, eval_steps: int | None = None, every_n_steps: int = 1,
                 metrics: Any = None, name: str | None = None, hooks: Any = None,
                 check_interval_secs: float | None = 5, clock=time.time):
        self.input_fn = input_fn
        self.check_interval_secs = check_interval_secs
        self._clock = clock
        self._last_check_time: float | None = None
        self.eval_steps = eval_steps
        self.every_n_steps = every_n_steps
        self.metrics = metrics
        self.name = name
        self.hooks = hooks
        self.last_evaluated_step: int | None = None
        self.last_checkpoint: str | None = None
        self.results: dict[str, Any] | None = None

    def after_step(self, context: StepContext) -> None:
        if (self.last_evaluated_step is not None
                and context.step - self.last_evaluated_step < self.every_n_steps):
            return
        now = self._clock()
        if (self.check_interval_secs is not None and self._last_check_time is not None
                and now - self._last_check_time <= self.check_interval_secs):
            return
        self._last_check_time = now
        path = context.last_checkpoint
        if path is None or path == self.last_checkpoint:
            return
        kwargs: dict[str, Any] = {"input_fn": self.input_fn, "steps": self.eval_steps,
                                  "name": self.name, "checkpoint_path": path,
                                  "hooks": self.hooks}
        if self.metrics is not None:
            kwargs["metrics"] = self.metrics
        self.results = context.estimator.evaluate(**kwargs)
        self.last_evaluated_step = context.step
        self.last_checkpoint = path
        log.info("Validation (step %d): %s", context.step, _format(self.results))


def _format(results: dict[str, Any] | None) -> str:
    if not results:
        return "{}"
    return ", ".join(
        f"{k} = {v:.6g}" if isinstance(v, float) else f"{k} = {v}" for k, v in
        sorted(results.items())
    )


PROGRESS_FILE = "progress.json"
#: Bytes of progress.json a reader takes (the chief writes about a hundred).
MAX_PROGRESS_FILE_BYTES = 16 << 10


def _number(value: Any, minimum: float = -math.inf) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and minimum <= value and abs(value) < 2 ** 63)


#: What a progress report holds: each entry's check. Other entries are left out.
_PROGRESS_ENTRIES = {
    "global_step": lambda v: isinstance(v, int) and _number(v, 0),
    "loss": lambda v: v is None or _number(v),
    "steps_per_sec": lambda v: _number(v, 0),
    "time": lambda v: _number(v),
    "sync_replicas": lambda v: v is None or (isinstance(v, int) and _number(v, 2)),
}


def parse_progress(data: bytes, source: str) -> dict[str, Any]:
    """A progress report from the bytes of a ``progress.json``, taken as outside input
    (any pod that shares the model directory can write there): JSON nested no deeper than
    :data:`kubelearn.bounded_input.MAX_DEPTH`, an object with an integer ``global_step``
    whose other entries the chief writes have the types it writes them with; entries it
    does not write are left out.

    Raises:
      kubelearn.bounded_input.InputError: naming ``source`` (never quoting the data).
    """
    value = bounded_input.load_json(data, source)
    if not isinstance(value, dict):
        raise bounded_input.InputError(f"{source}: not a JSON object")
    if "global_step" not in value:
        raise bounded_input.InputError(f"{source}: no global_step")
    for key, valid in _PROGRESS_ENTRIES.items():
        if key in value and not valid(value[key]):
            raise bounded_input.InputError(f"{source}: {key} is not what the chief writes "
                                           f"(a {type(value[key]).__name__})")
    return {key: value[key] for key in _PROGRESS_ENTRIES if key in value}


def read_progress(model_dir: str) -> dict[str, Any] | None:
    """The chief's progress report, ``model_dir/progress.json`` (see :func:`parse_progress`);
    None before the chief wrote one. A path must be a regular file of at most
    MAX_PROGRESS_FILE_BYTES (see :func:`kubelearn.fs.read_bytes`).

    Raises:
      ValueError: naming the file, for one that is not such a report.
      OSError: when it cannot be read.
    """
    path = fs.join(model_dir, PROGRESS_FILE)
    try:
        data = fs.read_bytes(path, MAX_PROGRESS_FILE_BYTES)
    except FileNotFoundError:
        return None
    return parse_progress(data, path)


class ProgressHook(Hook):
    """Keeps ``model_dir/progress.json`` current (global step, loss, steps/sec, at most once a
    second): what ``kubelearn local`` shows and what the operator reads into status.

    ``sync_replicas`` (synchronous training: the gradients averaged per step) is reported
    too, as both refuse to change the worker count of such an experiment."""

    def __init__(self, model_dir: str, every_secs: float = 1.0,
                 sync_replicas: int | None = None):
        self.path = fs.join(model_dir, PROGRESS_FILE)
        self.every_secs = every_secs
        self.sync_replicas = (sync_replicas if isinstance(sync_replicas, int)
                              and sync_replicas > 1 else None)
        self._next = -math.inf  # when the next write is due (monotonic seconds)
        self._rate_from: tuple[float, int] | None = None

    def begin(self, context: StepContext) -> None:
        self._rate_from = (time.monotonic(), context.step)

    def after_step(self, context: StepContext) -> None:
        now = time.monotonic()
        if now >= self._next:
            self._write(context, now)

    def next_due(self) -> Due:
        return math.inf, self._next

    def end(self, context: StepContext) -> None:
        self._write(context, time.monotonic())

    def _write(self, context: StepContext, now: float) -> None:
        start_time, start_step = self._rate_from or (now, context.step)
        rate = (context.step - start_step) / (now - start_time) if now > start_time else 0.0
        record = {"global_step": context.step,
                  "loss": context.loss if math.isfinite(context.loss) else None,
                  "steps_per_sec": round(rate, 3), "time": time.time()}
        if self.sync_replicas:
            record["sync_replicas"] = self.sync_replicas
        try:
            # Replaced atomically but not fsynced: it is rewritten every second, readers
            # take a missing or stale one in their stride, and two fsyncs per write would
            # cost a small model more than its training steps.
            fs.write_text(self.path, json.dumps(record), durable=False)
        except OSError as exc:  # progress is best effort; training goes on
            log.debug("Could not write %s: %s", self.path, exc)
        self._next = now + self.every_secs
