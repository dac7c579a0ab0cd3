"""learn_runner.run: build an Experiment and run the schedule of this task."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from kubelearn.experiment import Experiment
from kubelearn.hparams import HParams
from kubelearn.run_config import RunConfig, TaskType

log = logging.getLogger("kubelearn")

# kubelearn extends the original table only where the original raised.
_DEFAULT_SCHEDULES = {
    TaskType.MASTER: "train_and_evaluate",
    TaskType.CHIEF: "train_and_evaluate",
    TaskType.PS: "run_std_server",
    TaskType.WORKER: "train",
    TaskType.EVALUATOR: "continuous_eval",
}

# Names used by older documents of the same schedules.
SCHEDULE_ALIASES = {"serve": "run_std_server", "local_run": "train_and_evaluate"}


class ExperimentFnError(TypeError):
    """The experiment function did not return an Experiment."""


class RunConfigNotUsedError(RuntimeError):
    """The experiment function built its Estimator with another RunConfig than it was given."""


def _is_distributed(config: Any) -> bool:
    """A job is distributed when its cluster spec has more than one task."""
    cluster = getattr(config, "cluster_spec", None)
    if not cluster:
        return False
    return sum(len(cluster.job_tasks(job)) for job in cluster.jobs) > 1


def _get_default_schedule(config: Any) -> str:
    if not config or not _is_distributed(config):
        return "train_and_evaluate"
    if not config.task_type:
        raise ValueError("Must specify a schedule")
    try:
        return _DEFAULT_SCHEDULES[config.task_type]
    except KeyError:
        raise ValueError(f"No default schedule for task type: {config.task_type}") from None


def valid_schedules(experiment: Experiment) -> list[str]:
    return [name for name in dir(experiment)
            if not name.startswith("_") and callable(getattr(experiment, name))]


def _execute_schedule(experiment: Experiment, schedule: str) -> Any:
    name = schedule
    if not hasattr(experiment, name) and name in SCHEDULE_ALIASES:
        name = SCHEDULE_ALIASES[name]
    if not hasattr(experiment, name):
        valid = valid_schedules(experiment)
        log.error("Schedule references non-existent task %s", schedule)
        log.error("Allowed values for this experiment are: %s", valid)
        raise ValueError(f"Schedule references non-existent task {schedule}; "
                         f"valid schedules: {', '.join(valid)}")
    task = getattr(experiment, name)
    if not callable(task):
        log.error("Schedule references non-callable member %s", schedule)
        log.error("Allowed values for this experiment are: %s", valid_schedules(experiment))
        raise TypeError(f"Schedule references non-callable member {schedule}")
    return task()


def _check_experiment(experiment: Any) -> None:
    if not isinstance(experiment, Experiment):
        raise ExperimentFnError("Experiment builder did not return an Experiment instance, "
                                f"got {type(experiment)} instead.")


def check_run_config_used(experiment: Experiment, expected_uid: str) -> None:
    """The Estimator must run with the ``run_config`` given to the experiment function (or a
    copy that changes only whitelisted properties), else the task would not run as
    scheduled.

    Raises:
      RunConfigNotUsedError: (a RuntimeError) it does not.
    """
    config = getattr(experiment.estimator, "config", None)
    if not callable(getattr(config, "uid", None)):
        raise RunConfigNotUsedError(
            "Pass `run_config` argument of the `experiment_fn` to the Estimator in "
            "Experiment. It is likely a different `RunConfig` is passed to `Estimator` or "
            "the `config` constructor argument in `Estimator` is not set.")
    if config.uid() != expected_uid:
        raise RunConfigNotUsedError(
            "`RunConfig` instance is expected to be used by the `Estimator` inside the "
            f"`Experiment`. expected {expected_uid}, but got {config.uid()}")


def run(
    experiment_fn: Callable[..., Experiment],
    output_dir: str | None = None,
    schedule: str | None = None,
    run_config: RunConfig | None = None,
    hparams: HParams | None = None,
) -> Any:
    """Makes an Experiment with ``experiment_fn`` and calls its method named ``schedule``.

    ``experiment_fn(run_config, hparams)`` is the recommended form;
    ``experiment_fn(output_dir=...)`` the deprecated one (then ``hparams`` must be None).
    Without ``schedule`` the task type of the experiment's config picks it: ps →
    ``run_std_server``, worker → ``train``, master and chief → ``train_and_evaluate``,
    evaluator → ``continuous_eval``; a single machine runs ``train_and_evaluate``.

    Returns:
      What the schedule returns.

    Raises:
      ValueError: both or neither of ``output_dir`` and ``run_config``; ``run_config``
        not a RunConfig or with an empty ``model_dir``; ``hparams`` without
        ``run_config`` or not an HParams; no schedule for the task; ``schedule`` not a
        member of the Experiment.
      TypeError: ``experiment_fn`` did not return an Experiment, or ``schedule`` names a
        member that is not callable.
      RuntimeError: the experiment's Estimator does not use ``run_config`` (its
        :meth:`RunConfig.uid` differs, whitelisted properties aside).
    """
    if output_dir is not None and run_config is not None:
        raise ValueError("Cannot provide both `output_dir` and `run_config`")
    if output_dir is None and run_config is None:
        raise ValueError("Must set value for `output_dir` or `run_config`")
    if run_config is not None and not isinstance(run_config, RunConfig):
        raise ValueError("`run_config` must be `tf.contrib.learn.RunConfig` instance")
    if run_config is not None and not run_config.model_dir:
        raise ValueError("Must specify a model directory `model_dir` in `run_config`.")
    if run_config is None and hparams is not None:
        raise ValueError("Must set `hparams` as None for `experiment_fn` with `output_dir`.")
    if hparams is not None and not isinstance(hparams, HParams):
        raise ValueError("`hparams` must be `HParams` instance")
    if not callable(experiment_fn):
        raise TypeError(f'Experiment builder "{experiment_fn}" is not callable.')
    if run_config is not None:
        expected_uid = run_config.uid()
        experiment = experiment_fn(run_config, hparams)
        _check_experiment(experiment)
        check_run_config_used(experiment, expected_uid)
    else:
        if not output_dir:
            raise ValueError("Must specify an output directory")
        experiment = experiment_fn(output_dir=output_dir)
        _check_experiment(experiment)
    if schedule is None:
        config = getattr(experiment.estimator, "config", None) or run_config
        schedule = _get_default_schedule(config)
    return _execute_schedule(experiment, schedule)


def run_experiment(experiment_fn: Callable[..., Experiment], output_dir: str,
                   schedule: str | None = None) -> Any:
    """Polyaxon's form: ``experiment_fn(output_dir=...)`` then the schedule.

    Raises:
      ValueError: ``output_dir`` empty, or the schedule cannot be found or chosen.
    """
    if not output_dir:
        raise ValueError("Must specify an output directory")
    return run(experiment_fn, output_dir=output_dir, schedule=schedule)
