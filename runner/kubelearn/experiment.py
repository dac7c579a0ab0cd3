"""Experiment: everything needed to train and evaluate a model, and the schedules that
each role of a distributed job runs (tf.contrib.learn's and Polyaxon's ``Experiment``).

Defaults are tf.contrib.learn's (``eval_steps=100``, ``eval_delay_secs=120``, ...);
Polyaxon's set is :data:`POLYAXON_DEFAULTS`, used by :meth:`Experiment.polyaxon`.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any

from kubelearn import checkpoints, fs
from kubelearn.estimators.session import CheckpointSaverListener
from kubelearn.export import ExportStrategy
from kubelearn.hooks import GlobalStepWaiterHook, ValidationMonitor
from kubelearn.run_config import Environment, RunConfig

log = logging.getLogger("kubelearn")

_NO_SERVER = ("Could not start server; be sure to specify cluster_spec, task_type, master, "
              "and task in RunConfig or set the TF_CONFIG environment variable.")

POLYAXON_DEFAULTS: dict[str, Any] = {
    "eval_steps": 10,
    "eval_delay_secs": 0,
    "eval_every_n_steps": 1,
    "train_steps_per_iteration": 100,
}


def _standardized_predicate(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Accepts predicates taking ``(eval_results)`` or ``(eval_results, checkpoint_path)``."""
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return lambda results, checkpoint_path=None: fn(results)
    if "checkpoint_path" in parameters or any(
        p.kind == p.VAR_KEYWORD for p in parameters.values()
    ):
        return fn
    return lambda results, checkpoint_path=None: fn(results)


def _saving_listeners(values: Any) -> list[CheckpointSaverListener]:
    if values is None:
        return []
    items = [values] if isinstance(values, CheckpointSaverListener) else values
    try:
        listeners = list(items)
    except TypeError:
        listeners = [items]
    for listener in listeners:
        if not isinstance(listener, CheckpointSaverListener):
            raise ValueError("`saving_listeners` must be a list of CheckpointSaverListener, "
                             f"found {listener!r}.")
    return listeners


class _EvalAndExportListener(CheckpointSaverListener):
    """After each checkpoint that training saves, evaluates it and exports the model (the
    ``checkpoint_and_export`` mode of ``train_and_evaluate``)."""

    def __init__(self, eval_fn: Callable[..., Any], export_fn: Callable[..., Any],
                 model_dir: str | None):
        self._eval_fn = eval_fn
        self._export_fn = export_fn
        self._model_dir = model_dir
        self._latest_path: str | None = None
        self.eval_result: dict[str, Any] | None = None
        self.export_results: list[Any] | None = None

    def after_save(self, session: Any, global_step_value: int) -> None:
        latest = checkpoints.latest_checkpoint(self._model_dir)
        if not latest:
            log.warning("Skipping evaluation and export since model has not been saved yet.")
        elif latest == self._latest_path:
            log.warning("Skipping evaluation due to same latest checkpoint %s.", latest)
        else:
            self._latest_path = latest
            self.eval_result = self._eval_fn(name="intermediate_export", checkpoint_path=latest)
            self.export_results = self._export_fn(self.eval_result, checkpoint_path=latest)


class Experiment:
    """Holds an estimator, its input functions and the training/evaluation settings.

    The constructor stores everything and runs nothing.

    ``saving_listeners`` (CheckpointSaverListener) are called around every checkpoint
    that training saves; tf.contrib.learn refuses them with its own Estimator, kubelearn's
    Estimator runs them as tf.estimator's does. ``checkpoint_and_export=True`` makes
    ``train_and_evaluate`` evaluate and export after every checkpoint instead of using
    ``min_eval_frequency``. ``check_interval_secs`` is the least time between two looks for
    a new checkpoint during ``train_and_evaluate``.

    Raises:
      ValueError: if ``estimator`` has no callable ``fit`` and ``evaluate``,
        ``export_strategies`` is not None, an ExportStrategy or a list of them, or
        ``saving_listeners`` holds something that is not a CheckpointSaverListener.
    """

    def __init__(
        self,
        estimator: Any,
        train_input_fn: Any,
        eval_input_fn: Any,
        eval_metrics: Any = None,
        train_steps: int | None = None,
        eval_steps: int | None = 100,
        train_monitors: Iterable[Any] | None = None,
        eval_hooks: Iterable[Any] | None = None,
        local_eval_frequency: int | None = None,
        eval_delay_secs: float = 120,
        continuous_eval_throttle_secs: float = 60,
        min_eval_frequency: int | None = None,
        delay_workers_by_global_step: bool = False,
        export_strategies: Any = None,
        train_steps_per_iteration: int | None = None,
        checkpoint_and_export: bool = False,
        saving_listeners: Any = None,
        check_interval_secs: float = 5,
        train_hooks: Iterable[Any] | None = None,
        eval_every_n_steps: int | None = None,
    ):
        if not callable(getattr(estimator, "evaluate", None)):
            raise ValueError("`estimator` must implement `evaluate` (tf.contrib.learn.Evaluable).")
        if not callable(getattr(estimator, "fit", None)):
            raise ValueError("`estimator` must implement `fit` (tf.contrib.learn.Trainable).")
        if train_hooks is not None and train_monitors is not None:
            raise ValueError("Pass `train_monitors` or its alias `train_hooks`, not both.")
        if eval_every_n_steps is not None and min_eval_frequency is not None:
            raise ValueError(
                "Pass `min_eval_frequency` or its alias `eval_every_n_steps`, not both.")
        if train_steps_per_iteration is not None and not isinstance(
            train_steps_per_iteration, int
        ):
            raise ValueError("`train_steps_per_iteration` must be an integer.")
        monitors = train_monitors if train_monitors is not None else train_hooks
        frequency = min_eval_frequency if min_eval_frequency is not None else eval_every_n_steps
        self._estimator = estimator
        self._train_input_fn = train_input_fn
        self._eval_input_fn = eval_input_fn
        self._eval_metrics = eval_metrics
        self._train_steps = train_steps
        self._eval_steps = eval_steps
        self._train_monitors = list(monitors) if monitors else []
        self._eval_hooks = list(eval_hooks) if eval_hooks else []
        self._local_eval_frequency = local_eval_frequency
        self._eval_delay_secs = eval_delay_secs
        self._continuous_eval_throttle_secs = continuous_eval_throttle_secs
        self._min_eval_frequency = frequency if frequency is not None else 1
        self._delay_workers_by_global_step = delay_workers_by_global_step
        self._train_steps_per_iteration = train_steps_per_iteration
        self._checkpoint_and_export = checkpoint_and_export
        self._saving_listeners = _saving_listeners(saving_listeners)
        self._check_interval_secs = check_interval_secs
        self._export_strategies: tuple[ExportStrategy, ...] = ()
        self._set_export_strategies(export_strategies)
        # Injected so that tests need not wait: every delay goes through these.
        self._sleep: Callable[[float], None] = time.sleep
        self._time: Callable[[], float] = time.time

    @classmethod
    def polyaxon(cls, estimator: Any, train_input_fn: Any, eval_input_fn: Any,
                 **kwargs: Any) -> Experiment:
        """An Experiment with Polyaxon's defaults (``eval_steps=10``, ``eval_delay_secs=0``,
        ``eval_every_n_steps=1``, ``train_steps_per_iteration=100``)."""
        merged = dict(POLYAXON_DEFAULTS)
        if "min_eval_frequency" in kwargs:
            merged.pop("eval_every_n_steps")
        merged.update(kwargs)
        return cls(estimator, train_input_fn, eval_input_fn, **merged)

    # -- properties ------------------------------------------------------------------
    @property
    def estimator(self) -> Any:
        return self._estimator

    @property
    def eval_metrics(self) -> Any:
        return self._eval_metrics

    @property
    def train_steps(self) -> int | None:
        return self._train_steps

    @property
    def eval_steps(self) -> int | None:
        return self._eval_steps

    # -- configuration -----------------------------------------------------------------
    def _set_export_strategies(self, values: Any) -> None:
        strategies: list[ExportStrategy] = []
        if values:
            if isinstance(values, ExportStrategy):
                strategies.append(values)
            else:
                try:
                    items = list(values)
                except TypeError:
                    raise ValueError(
                        "`export_strategies` must be an ExportStrategy, an iterable of "
                        f"ExportStrategy, or `None`, found {values}.") from None
                for value in items:
                    if not isinstance(value, ExportStrategy):
                        raise ValueError(
                            "`export_strategies` must be an ExportStrategy, an iterable of "
                            f"ExportStrategy, or `None`, found {value}.")
                    strategies.append(value)
        self._export_strategies = tuple(strategies)

    def extend_train_hooks(self, additional_hooks: Iterable[Any]) -> None:
        """Extends the hooks for training."""
        self._train_monitors.extend(additional_hooks)

    def extend_eval_hooks(self, additional_hooks: Iterable[Any]) -> None:
        """Extends the hooks for evaluation."""
        self._eval_hooks.extend(additional_hooks)

    def reset_export_strategies(self, new_export_strategies: Any = None
                                ) -> tuple[ExportStrategy, ...]:
        """Replaces the export strategies; returns the old ones."""
        old = self._export_strategies
        self._set_export_strategies(new_export_strategies)
        return old

    # -- internal calls (keyword arguments only, as the duck-typed contract says) --------
    def _config(self) -> Any:
        return getattr(self._estimator, "config", None)

    def _model_dir(self) -> str | None:
        model_dir = getattr(self._estimator, "model_dir", None)
        if model_dir is None and self._config() is not None:
            model_dir = getattr(self._config(), "model_dir", None)
        return model_dir

    def _call_train(self, *, input_fn: Any, steps: int | None = None,
                    max_steps: int | None = None, hooks: list[Any] | None = None,
                    saving_listeners: list[CheckpointSaverListener] | None = None) -> Any:
        kwargs: dict[str, Any] = {"input_fn": input_fn, "steps": steps, "max_steps": max_steps,
                                  "monitors": hooks}
        if saving_listeners:  # only estimators that save checkpoints take them
            kwargs["saving_listeners"] = saving_listeners
        return self._estimator.fit(**kwargs)

    def _call_evaluate(self, *, input_fn: Any, steps: int | None, name: str | None,
                       checkpoint_path: str | None = None, hooks: list[Any] | None = None
                       ) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"input_fn": input_fn, "steps": steps, "hooks": hooks,
                                  "name": name, "checkpoint_path": checkpoint_path}
        if self._eval_metrics is not None:
            kwargs["metrics"] = self._eval_metrics
        return self._estimator.evaluate(**kwargs)

    def _maybe_export(self, eval_result: Any, checkpoint_path: str | None = None) -> list[Any]:
        results = []
        base = fs.join(self._model_dir() or ".", "export")
        for strategy in self._export_strategies:
            results.append(strategy.export(self._estimator, fs.join(base, strategy.name),
                                           checkpoint_path=checkpoint_path,
                                           eval_result=eval_result))
        return results

    def _has_training_stopped(self, eval_result: Any) -> bool:
        if not eval_result:
            return False
        global_step = eval_result.get("global_step")
        return bool(global_step and self._train_steps and global_step >= self._train_steps)

    # -- schedules -------------------------------------------------------------------
    def train(self, delay_secs: float | None = None) -> Any:
        """Fits the estimator to ``train_steps`` (a global target) after a start delay.

        Without ``delay_secs``, worker ``i`` waits ``min(60, 5 * i)`` seconds, or with
        ``delay_workers_by_global_step`` until the global step reaches
        ``8000 * ln(i + 1)``.

        Returns:
          The trained estimator.

        Raises:
          ValueError: the config names a cluster and a master in a distributed
            environment but no task type (or is not a RunConfig). TF raises this when it
            starts the task's in-process server here; kubelearn's parameter servers are
            processes of their own, so there is no server to start, but the same config
            is refused the same way.
        """
        self._check_can_train(self._config())
        extra_hooks: list[Any] = []
        if delay_secs is None:
            config = self._config()
            task_id = (getattr(config, "task_id", 0) or 0) if config is not None else 0
            if self._delay_workers_by_global_step:
                extra_hooks.append(GlobalStepWaiterHook(int(8000.0 * math.log(task_id + 1)),
                                                        sleep=self._sleep))
                delay_secs = 0
            else:
                delay_secs = min(60, task_id * 5)
        if delay_secs > 0:
            log.info("Waiting %d secs before starting training.", delay_secs)
            self._sleep(delay_secs)
        return self._call_train(input_fn=self._train_input_fn, max_steps=self._train_steps,
                                hooks=self._train_monitors + extra_hooks,
                                saving_listeners=self._saving_listeners)

    @staticmethod
    def _check_can_train(config: Any) -> None:
        if config is None:
            return
        cluster, master = getattr(config, "cluster_spec", None), getattr(config, "master", None)
        if not isinstance(config, RunConfig):
            if cluster and master:
                raise ValueError("For distributed runtime, Experiment class only works with "
                                 "tf.contrib.learn.RunConfig for now, but provided "
                                 f"{type(config)}")
            return
        if cluster and master and config.environment == Environment.LOCAL:
            log.warning("ClusterSpec and master are provided, but environment is set to "
                        "'local'. Set environment to 'cloud' if you intend to use the "
                        "distributed runtime.")
        if (config.environment not in (Environment.LOCAL, Environment.GOOGLE)
                and cluster and master and (not config.task_type or config.task_id is None)):
            raise ValueError(_NO_SERVER)

    def evaluate(self, delay_secs: float | None = None, name: str | None = None
                 ) -> dict[str, Any]:
        """Evaluates the latest checkpoint on ``eval_steps`` batches after ``delay_secs``
        (default ``eval_delay_secs``); returns the metrics dict."""
        if delay_secs is None:
            delay_secs = self._eval_delay_secs
        if delay_secs:
            log.info("Waiting %d secs before starting eval.", delay_secs)
            self._sleep(delay_secs)
        return self._call_evaluate(input_fn=self._eval_input_fn, steps=self._eval_steps,
                                   name=name or "one_pass", hooks=self._eval_hooks)

    def local_run(self) -> tuple[dict[str, Any], list[Any]]:
        """Deprecated: ``train_and_evaluate`` evaluating every ``local_eval_frequency``."""
        warnings.warn("local_run is deprecated; use train_and_evaluate", DeprecationWarning,
                      stacklevel=2)
        saved = self._min_eval_frequency
        self._min_eval_frequency = self._local_eval_frequency
        try:
            return self.train_and_evaluate()
        finally:
            self._min_eval_frequency = saved

    def train_and_evaluate(self) -> tuple[dict[str, Any], list[Any]]:
        """Trains, evaluating each new checkpoint once at least ``min_eval_frequency`` steps
        have passed, then evaluates the final model.

        Returns:
          ``(eval_result, export_results)``.
        """
        monitors = list(self._train_monitors)
        listeners = list(self._saving_listeners)
        config = self._config()
        export_listener = None
        if self._checkpoint_and_export and config is not None and (
            config.save_checkpoints_secs or config.save_checkpoints_steps
        ):
            export_listener = _EvalAndExportListener(
                eval_fn=lambda name, checkpoint_path: self._call_evaluate(
                    input_fn=self._eval_input_fn, steps=self._eval_steps, name=name,
                    checkpoint_path=checkpoint_path, hooks=self._eval_hooks),
                export_fn=self._maybe_export, model_dir=self._model_dir())
            listeners.append(export_listener)
        elif self._min_eval_frequency:
            monitors.append(ValidationMonitor(
                input_fn=self._eval_input_fn, eval_steps=self._eval_steps,
                every_n_steps=self._min_eval_frequency, metrics=self._eval_metrics,
                hooks=self._eval_hooks, check_interval_secs=self._check_interval_secs,
                clock=self._time))
        saved = self._train_monitors, self._saving_listeners
        self._train_monitors, self._saving_listeners = monitors, listeners
        try:
            self.train(delay_secs=0)
        finally:
            self._train_monitors, self._saving_listeners = saved
        if export_listener is not None:
            # Training ends with a checkpoint, which the listener has evaluated and exported.
            return export_listener.eval_result, export_listener.export_results
        eval_result = self._call_evaluate(input_fn=self._eval_input_fn, steps=self._eval_steps,
                                          name=None, hooks=self._eval_hooks)
        return eval_result, self._maybe_export(eval_result)

    def continuous_train_and_evaluate(
        self, continuous_eval_predicate_fn: Callable[..., Any] | None = None
    ) -> tuple[dict[str, Any] | None, list[Any] | None]:
        """Alternates ``train_steps_per_iteration`` training steps with an evaluation until
        the predicate says stop or ``train_steps`` is reached.

        Raises:
          ValueError: if ``continuous_eval_predicate_fn`` is neither None nor callable.
        """
        if continuous_eval_predicate_fn is not None and not callable(
            continuous_eval_predicate_fn
        ):
            raise ValueError("`continuous_eval_predicate_fn` must be a callable, or None.")
        predicate = (_standardized_predicate(continuous_eval_predicate_fn)
                     if continuous_eval_predicate_fn else None)
        per_iteration = 1000
        if self._train_steps_per_iteration is not None:
            per_iteration = self._train_steps_per_iteration
        elif self._train_steps is not None:
            per_iteration = max(1, int(self._train_steps / 10))
        eval_result: dict[str, Any] | None = None
        export_results: list[Any] | None = None
        latest: str | None = None
        while not predicate or predicate(eval_result,
                                         checkpoint_path=latest if eval_result else None):
            if self._has_training_stopped(eval_result):
                log.info("Stop training model as max steps reached")
                break
            steps = per_iteration
            if self._train_steps is not None and eval_result:
                steps = min(steps, self._train_steps - int(eval_result["global_step"]))
            elif self._train_steps is not None:
                done = checkpoints.latest_global_step(self._model_dir())
                steps = min(steps, max(1, self._train_steps - done))
            self._call_train(input_fn=self._train_input_fn, steps=steps,
                             hooks=self._train_monitors,
                             saving_listeners=self._saving_listeners)
            latest = checkpoints.latest_checkpoint(self._model_dir())
            eval_result = self._call_evaluate(input_fn=self._eval_input_fn,
                                              steps=self._eval_steps, name="one_pass",
                                              checkpoint_path=latest, hooks=self._eval_hooks)
            export_results = self._maybe_export(eval_result)
        return eval_result, export_results

    continuous_train_and_eval = continuous_train_and_evaluate

    def _continuous_eval(self, input_fn: Any, name: str, delay_secs: float | None,
                         throttle_delay_secs: float | None,
                         evaluate_checkpoint_only_once: bool = True,
                         continuous_eval_predicate_fn: Callable[..., Any] | None = None,
                         export: bool = True) -> dict[str, Any] | None:
        if continuous_eval_predicate_fn is not None and not callable(
            continuous_eval_predicate_fn
        ):
            raise ValueError("`continuous_eval_predicate_fn` must be a callable, or None.")
        predicate = (_standardized_predicate(continuous_eval_predicate_fn)
                     if continuous_eval_predicate_fn else None)
        if delay_secs is None:
            delay_secs = self._eval_delay_secs
        if throttle_delay_secs is None:
            throttle_delay_secs = self._continuous_eval_throttle_secs
        if delay_secs:
            log.info("Waiting %f secs before starting eval.", delay_secs)
            self._sleep(delay_secs)
        previous_path: str | None = None
        # What the predicate sees: None at first, {} after a round without a new
        # checkpoint (as in TF), else the last evaluation. What is returned: the last
        # evaluation.
        eval_result: dict[str, Any] | None = None
        last_result: dict[str, Any] | None = None
        last_warning = 0.0
        while not predicate or predicate(eval_result, checkpoint_path=previous_path):
            if self._has_training_stopped(eval_result):
                log.info("Exiting continuous eval, global_step=%s >= train_step=%s",
                         eval_result["global_step"], self._train_steps)  # type: ignore[index]
                return last_result
            start = self._time()
            latest = checkpoints.latest_checkpoint(self._model_dir())
            message = None
            if not latest:
                message = ("Estimator is not fitted yet. "
                           "Will start an evaluation when a checkpoint is ready.")
            elif evaluate_checkpoint_only_once and latest == previous_path:
                if checkpoints.training_done(self._model_dir(), self._train_steps):
                    log.info("Exiting continuous eval: training has finished.")
                    return last_result
                message = "No new checkpoint ready for evaluation."
            if message:
                eval_result = {}
                if start - last_warning > 600:
                    log.warning(message)
                    last_warning = start
            else:
                eval_result = self._call_evaluate(input_fn=input_fn, steps=self._eval_steps,
                                                  name=name, checkpoint_path=latest,
                                                  hooks=self._eval_hooks) or {}
                last_result = eval_result
                if export:
                    self._maybe_export(eval_result, checkpoint_path=latest)
                last_warning = 0.0
                previous_path = latest
            duration = self._time() - start
            if duration < throttle_delay_secs:
                self._sleep(throttle_delay_secs - duration)
        return last_result

    def continuous_eval(self, delay_secs: float | None = None,
                        throttle_delay_secs: float | None = None,
                        evaluate_checkpoint_only_once: bool = True,
                        continuous_eval_predicate_fn: Callable[..., Any] | None = None,
                        name: str = "continuous") -> dict[str, Any] | None:
        """Evaluates each new checkpoint once, at most every ``throttle_delay_secs``, until
        the predicate returns False or training has finished; returns the last result."""
        return self._continuous_eval(
            self._eval_input_fn, name=name, delay_secs=delay_secs,
            throttle_delay_secs=throttle_delay_secs,
            evaluate_checkpoint_only_once=evaluate_checkpoint_only_once,
            continuous_eval_predicate_fn=continuous_eval_predicate_fn)

    def continuous_eval_on_train_data(
        self,
        delay_secs: float | None = None,
        throttle_delay_secs: float | None = None,
        continuous_eval_predicate_fn: Callable[..., Any] | None = None,
        name: str = "continuous_on_train_data",
    ) -> dict[str, Any] | None:
        """``continuous_eval`` on the training data (no export)."""
        return self._continuous_eval(
            self._train_input_fn, name=name, delay_secs=delay_secs,
            throttle_delay_secs=throttle_delay_secs,
            continuous_eval_predicate_fn=continuous_eval_predicate_fn, export=False)

    def run_std_server(self) -> None:
        """Serves this task's shard of the variables and blocks until told to stop.

        Raises:
          ValueError: if the config lacks a cluster spec, task type, index or address.
        """
        config = self._config()
        if (config is None or not getattr(config, "cluster_spec", None)
                or not getattr(config, "task_type", None) or not getattr(config, "master", None)
                or getattr(config, "task_id", None) is None):
            raise ValueError(_NO_SERVER)
        from kubelearn.distributed.server import serve

        serve(config)

    def test(self) -> dict[str, Any]:
        """Trains and evaluates one step each (and exports); returns the evaluation."""
        self._call_train(input_fn=self._train_input_fn, steps=1, hooks=self._train_monitors,
                         saving_listeners=self._saving_listeners)
        eval_result = self._call_evaluate(input_fn=self._eval_input_fn, steps=1,
                                          name="one_pass")
        self._maybe_export(eval_result)
        return eval_result
