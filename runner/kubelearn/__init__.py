"""kubelearn: tf.contrib.learn's learn_runner and Experiment, in numpy, for Kubernetes."""

from kubelearn import estimators, inputs, learn_runner, sessions  # noqa: F401 (hands in)
from kubelearn.experiment import Experiment
from kubelearn.export import ExportStrategy, make_export_strategy
from kubelearn.hparams import HParams
from kubelearn.learn_runner import run_experiment
from kubelearn.run_config import ClusterSpec, RunConfig

__version__ = "0.1.0"

__all__ = [
    "ClusterSpec",
    "Experiment",
    "ExportStrategy",
    "HParams",
    "RunConfig",
    "estimators",
    "inputs",
    "learn_runner",
    "make_export_strategy",
    "run_experiment",
]
