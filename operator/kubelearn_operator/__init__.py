"""kubelearn operator: runs Experiment and Sweep resources as pods, services and trials.

The kopf handlers in :mod:`kubelearn_operator.handlers` are thin. The decisions live in pure
plans (:mod:`.experiment_plan`, :mod:`.sweep_plan`) over pure builders (:mod:`.builders`), so
they are tested without a cluster; the controllers (:mod:`.experiment_controller`,
:mod:`.sweep_controller`) observe the cluster and carry the plans out through :mod:`.kube`.
"""

__version__ = "0.1.0"
