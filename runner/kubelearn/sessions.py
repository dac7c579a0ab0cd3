"""Which session trains an Estimator: against the cluster's parameter servers for a worker,
master or chief of a cluster that has them, else in the process. The estimators get it handed
in (they never import the ps wire); importing ``kubelearn`` hands it in."""

from __future__ import annotations

from kubelearn.estimators import session as session_lib
from kubelearn.estimators.local_session import LocalSession
from kubelearn.estimators.session import SessionModel, TrainingSession
from kubelearn.run_config import RunConfig, TaskType

_PS_CLIENTS = (TaskType.WORKER, TaskType.MASTER, TaskType.CHIEF)


def training_session(model: SessionModel, config: RunConfig) -> TrainingSession:
    """The session for one ``fit`` of ``model`` under ``config``."""
    if config.num_ps_replicas and config.task_type in _PS_CLIENTS:
        from kubelearn.distributed.session import ParameterServerSession

        return ParameterServerSession(model)
    return LocalSession(model)


session_lib.hand_in_session_factory(training_session)
