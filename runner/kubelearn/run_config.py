"""RunConfig: where a task stands in the cluster, read from ``TF_CONFIG`` when constructed.

``TF_CONFIG`` is JSON: ``{"cluster": {"ps": ["h:p"], "worker": [...]}, "task": {"type":
"worker", "index": 0}, "environment": "cloud"}``. Every problem with it is a ``ValueError``
that names what is wrong, so a pod with a broken environment fails at once and legibly.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

log = logging.getLogger("kubelearn")

# Properties a user may change without changing where and how the job runs; ``uid()``
# leaves them out by default (tf.contrib.learn's ``_DEFAULT_UID_WHITE_LIST``).
DEFAULT_UID_WHITELIST = (
    "tf_random_seed", "save_summary_steps", "save_checkpoints_steps", "save_checkpoints_secs",
    "session_config", "keep_checkpoint_max", "keep_checkpoint_every_n_hours",
    "log_step_count_steps",
)


class TaskType:
    MASTER = "master"
    CHIEF = "chief"
    PS = "ps"
    WORKER = "worker"
    EVALUATOR = "evaluator"


class Environment:
    LOCAL = "local"
    CLOUD = "cloud"
    GOOGLE = "google"


class ClusterSpec:
    """An immutable map from job name to the list of its task addresses."""

    def __init__(self, cluster: Mapping[str, Any] | ClusterSpec | None):
        if isinstance(cluster, ClusterSpec):
            cluster = cluster.as_dict()
        jobs: dict[str, list[str]] = {}
        for job, tasks in (cluster or {}).items():
            if not isinstance(job, str) or not job:
                raise ValueError(f"TF_CONFIG cluster has an invalid job name: {job!r}")
            if isinstance(tasks, str) or not isinstance(tasks, (list, tuple)):
                raise ValueError(
                    f"TF_CONFIG cluster.{job} must be a list of 'host:port' addresses, "
                    f"got {tasks!r}"
                )
            for address in tasks:
                if not isinstance(address, str) or ":" not in address:
                    raise ValueError(
                        f"TF_CONFIG cluster.{job} has an invalid address {address!r} "
                        f"(expected 'host:port')"
                    )
            jobs[job] = list(tasks)
        self._jobs = jobs

    @property
    def jobs(self) -> list[str]:
        return list(self._jobs)

    def job_tasks(self, job_name: str) -> list[str]:
        return list(self._jobs[job_name])

    def num_tasks(self, job_name: str) -> int:
        return len(self._jobs.get(job_name, []))

    def task_address(self, job_name: str, task_index: int) -> str:
        return self._jobs[job_name][task_index]

    def as_dict(self) -> dict[str, list[str]]:
        return {job: list(tasks) for job, tasks in self._jobs.items()}

    def __iter__(self) -> Iterator[str]:
        return iter(self._jobs)

    def __bool__(self) -> bool:
        return bool(self._jobs)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ClusterSpec):
            return self._jobs == other._jobs
        if isinstance(other, Mapping):
            return self._jobs == {k: list(v) for k, v in other.items()}
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ClusterSpec({self._jobs!r})"


def parse_tf_config(text: str | None) -> dict[str, Any]:
    """Parses and checks the ``TF_CONFIG`` JSON text; empty or None means a single machine."""
    if text is None or not text.strip():
        return {}
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"TF_CONFIG is not valid JSON: {exc.msg} at position {exc.pos}") from None
    if not isinstance(config, dict):
        raise ValueError(f"TF_CONFIG must be a JSON object, got {type(config).__name__}")
    cluster = config.get("cluster")
    if cluster is not None and not isinstance(cluster, dict):
        raise ValueError("TF_CONFIG cluster must be an object of job name to address list")
    task = config.get("task")
    if task is not None and not isinstance(task, dict):
        raise ValueError("TF_CONFIG task must be an object with 'type' and 'index'")
    return config


class RunConfig:
    """Configuration of one task of an experiment, modelled on tf.contrib.learn's RunConfig.

    Cluster, task and environment come from ``TF_CONFIG``, and ``model_dir`` too when the
    argument is None (both set must agree); everything else from the arguments. Both
    checkpoint intervals may be given here, as in tf.contrib.learn, but training refuses
    them together. Use :meth:`replace` to derive a changed copy, :meth:`uid` to compare.
    """

    _REPLACEABLE = (
        "model_dir", "tf_random_seed", "save_summary_steps", "save_checkpoints_secs",
        "save_checkpoints_steps", "keep_checkpoint_max", "keep_checkpoint_every_n_hours",
        "log_step_count_steps", "session_config", "num_cores", "gpu_memory_fraction",
        "log_device_placement", "evaluation_master", "master",
    )

    def __init__(
        self,
        master: str | None = None,
        num_cores: int = 0,
        log_device_placement: bool = False,
        gpu_memory_fraction: float = 1.0,
        tf_random_seed: int | None = None,
        save_summary_steps: int = 100,
        save_checkpoints_secs: float | object | None = "default",
        save_checkpoints_steps: int | None = None,
        keep_checkpoint_max: int = 5,
        keep_checkpoint_every_n_hours: float = 10000,
        log_step_count_steps: int = 100,
        evaluation_master: str = "",
        model_dir: str | None = None,
        session_config: Any = None,
    ):
        if save_checkpoints_secs == "default":
            save_checkpoints_secs = None if save_checkpoints_steps is not None else 600
        if keep_checkpoint_max is not None and keep_checkpoint_max < 0:
            raise ValueError(f"keep_checkpoint_max must be >= 0, got {keep_checkpoint_max}")
        tf_config = parse_tf_config(os.environ.get("TF_CONFIG"))
        self._init_task(tf_config, master)
        self.num_cores = num_cores
        self.log_device_placement = log_device_placement
        self.gpu_memory_fraction = gpu_memory_fraction
        self.evaluation_master = evaluation_master or ""
        self._tf_random_seed = tf_random_seed
        self._save_summary_steps = save_summary_steps
        self._save_checkpoints_secs = save_checkpoints_secs
        self._save_checkpoints_steps = save_checkpoints_steps
        self._keep_checkpoint_max = keep_checkpoint_max
        self._keep_checkpoint_every_n_hours = keep_checkpoint_every_n_hours
        self._log_step_count_steps = log_step_count_steps
        self._session_config = session_config
        self._model_dir = _model_dir(model_dir or None, tf_config)

    def _init_task(self, config: Mapping[str, Any], master: str | None) -> None:
        self._cluster_spec = ClusterSpec(config.get("cluster") or {})
        task = config.get("task") or {}
        self._environment = config.get("environment", Environment.LOCAL)
        self._task_type: str | None = task.get("type")
        raw_index = task.get("index", 0)
        if isinstance(raw_index, bool) or not isinstance(raw_index, int) or raw_index < 0:
            raise ValueError(f"TF_CONFIG task.index must be a non-negative integer, got "
                             f"{raw_index!r}")
        self._task_id = raw_index
        if self._task_type is not None and not isinstance(self._task_type, str):
            raise ValueError(f"TF_CONFIG task.type must be a string, got {self._task_type!r}")
        if self._task_type is not None and not self._cluster_spec:
            raise ValueError(f"TF_CONFIG names task type {self._task_type!r} but has no cluster")
        # An explicit master is taken as given: the task is looked up (and checked against
        # the cluster) only to derive the master, as in tf.contrib.learn.
        self._master = master if master is not None else self._master_from_cluster()
        self._is_chief = self._compute_is_chief()

    def _outside_cluster(self) -> bool:
        """An evaluator is not part of the cluster it evaluates (as in TF's estimator)."""
        return (self._task_type == TaskType.EVALUATOR
                and self._task_type not in self._cluster_spec.jobs)

    def _master_from_cluster(self) -> str:
        """``grpc://`` address of this task; '' when local, for a cluster of one task, or
        without a task type.

        Raises:
          ValueError: the task type is not a job of the cluster, or the index is out of
            range (tf.contrib.learn's messages, on one line).
        """
        cluster = self._cluster_spec
        if not cluster or not self._task_type or self._outside_cluster():
            return ""
        if self._task_type not in cluster.jobs:
            raise ValueError(
                f"{self._task_type} is not a valid task_type in the cluster_spec: {cluster}. "
                "Note that these values may be coming from the TF_CONFIG environment variable.")
        addresses = cluster.job_tasks(self._task_type)
        if self._task_id >= len(addresses):
            raise ValueError(
                f"{self._task_id} is not a valid task_id for task_type {self._task_type} in "
                f"the cluster_spec: {cluster}. Note that these values may be coming from the "
                "TF_CONFIG environment variable.")
        jobs = cluster.jobs
        if len(jobs) == 1 and len(cluster.job_tasks(jobs[0])) == 1:
            return ""  # a cluster of one task runs locally
        return f"grpc://{addresses[self._task_id]}"

    def _compute_is_chief(self) -> bool:
        """tf.contrib.learn's rule: without a task type, task 0; in the ``cloud``
        environment master 0; in any other environment worker 0, even when the cluster has
        a master.

        kubelearn adds ``chief`` 0 beside master 0 in the cloud, and, in the cloud, worker 0
        of a cluster that has neither master nor chief, so that worker-only jobs have one.
        """
        if self._task_type is None:
            return self._task_id == 0
        if self._environment == Environment.CLOUD:
            head_roles = (TaskType.MASTER, TaskType.CHIEF)
            if any(self._cluster_spec.num_tasks(role) for role in head_roles):
                return self._task_type in head_roles and self._task_id == 0
        return self._task_type == TaskType.WORKER and self._task_id == 0

    # Cluster and task.
    @property
    def cluster_spec(self) -> ClusterSpec:
        return self._cluster_spec

    @property
    def task_type(self) -> str | None:
        return self._task_type

    @property
    def task_id(self) -> int:
        return self._task_id

    @property
    def environment(self) -> str:
        return self._environment

    @property
    def master(self) -> str:
        return self._master

    @property
    def is_chief(self) -> bool:
        return self._is_chief

    @property
    def num_ps_replicas(self) -> int:
        return self._cluster_spec.num_tasks(TaskType.PS)

    @property
    def num_worker_replicas(self) -> int:
        return sum(
            self._cluster_spec.num_tasks(role)
            for role in (TaskType.WORKER, TaskType.MASTER, TaskType.CHIEF)
        )

    @property
    def task_address(self) -> str | None:
        """``host:port`` of this task in the cluster, or None when it has none."""
        if (not self._cluster_spec or self._task_type is None
                or self._task_type not in self._cluster_spec.jobs
                or self._task_id >= self._cluster_spec.num_tasks(self._task_type)):
            return None
        return self._cluster_spec.task_address(self._task_type, self._task_id)

    # Training settings.
    @property
    def model_dir(self) -> str | None:
        return self._model_dir

    @property
    def tf_random_seed(self) -> int | None:
        return self._tf_random_seed

    @property
    def save_summary_steps(self) -> int:
        return self._save_summary_steps

    @property
    def save_checkpoints_secs(self) -> float | None:
        return self._save_checkpoints_secs  # type: ignore[return-value]

    @property
    def save_checkpoints_steps(self) -> int | None:
        return self._save_checkpoints_steps

    @property
    def keep_checkpoint_max(self) -> int:
        return self._keep_checkpoint_max

    @property
    def keep_checkpoint_every_n_hours(self) -> float:
        return self._keep_checkpoint_every_n_hours

    @property
    def log_step_count_steps(self) -> int:
        return self._log_step_count_steps

    @property
    def session_config(self) -> Any:
        return self._session_config

    def replace(self, **kwargs: Any) -> RunConfig:
        """Returns a copy with the given properties changed.

        Raises:
          ValueError: for a property that cannot be replaced.
        """
        for key in kwargs:
            if key not in self._REPLACEABLE:
                raise ValueError(f"{key} is not a replaceable property of RunConfig")
        new = object.__new__(RunConfig)
        new.__dict__.update(self.__dict__)
        for key, value in kwargs.items():
            if key in ("num_cores", "gpu_memory_fraction", "log_device_placement",
                       "evaluation_master"):
                setattr(new, key, value)
            elif key == "master":
                new._master = value
            else:
                setattr(new, f"_{key}", value)
        # As tf.estimator's replace: setting one checkpoint interval clears the other;
        # setting both to values is an error.
        steps, secs = new._save_checkpoints_steps, new._save_checkpoints_secs
        if "save_checkpoints_steps" in kwargs and "save_checkpoints_secs" in kwargs:
            if steps is not None and secs is not None:
                raise ValueError(
                    "Can not provide both save_checkpoints_secs and save_checkpoints_steps.")
        elif "save_checkpoints_steps" in kwargs and steps is not None:
            new._save_checkpoints_secs = None
        elif "save_checkpoints_secs" in kwargs and secs is not None:
            new._save_checkpoints_steps = None
        return new

    def uid(self, whitelist: Iterable[str] | None = None) -> str:
        """A string that identifies this configuration, to check that the RunConfig given
        to an experiment function is the one its Estimator uses.

        Every property counts except those in ``whitelist`` (default
        :data:`DEFAULT_UID_WHITELIST`, the ones a user may change freely). The cluster
        counts by content: job order does not matter, and a deep copy has the same uid.
        """
        if whitelist is None:
            whitelist = DEFAULT_UID_WHITELIST
        state = {k: v for k, v in self.__dict__.items() if not k.startswith("__")}
        for name in whitelist:
            state.pop(f"_{name}", None)
        if "_cluster_spec" in state:
            state["_cluster_spec"] = dict(sorted(self._cluster_spec.as_dict().items()))
        return ", ".join(f"{k}={v!r}" for k, v in sorted(state.items()))

    def __repr__(self) -> str:
        return (
            f"RunConfig(task_type={self._task_type!r}, task_id={self._task_id}, "
            f"environment={self._environment!r}, model_dir={self._model_dir!r}, "
            f"is_chief={self._is_chief})"
        )


def _model_dir(model_dir: str | None, tf_config: Mapping[str, Any]) -> str | None:
    """``model_dir``, or ``TF_CONFIG["model_dir"]`` when it is None; a ``file://`` URL
    as the path it names (:func:`kubelearn.fs.local_path`).

    Raises:
      ValueError: both are set and differ, or a ``file://`` URL names no local path.
    """
    from kubelearn.fs import local_path

    model_dir = local_path(model_dir) if model_dir is not None else None
    from_tf_config = tf_config.get("model_dir")
    if from_tf_config is None:
        return model_dir
    if not isinstance(from_tf_config, str):
        raise ValueError(f"TF_CONFIG model_dir must be a string, got {from_tf_config!r}")
    from_tf_config = local_path(from_tf_config)
    if model_dir is not None and model_dir != from_tf_config:
        raise ValueError(
            "`model_dir` provided in RunConfig construct, if set, must have the same value as "
            f"the model_dir in TF_CONFIG. model_dir: {model_dir}, "
            f'TF_CONFIG["model_dir"]: {from_tf_config}.')
    log.info("Using model_dir in TF_CONFIG: %s", from_tf_config)
    return model_dir or from_tf_config
