"""numpy estimators with the interface of tf.contrib.learn's canned estimators."""

from kubelearn.estimators.canned import (
    DNNClassifier,
    DNNRegressor,
    LinearClassifier,
    LinearRegressor,
)
from kubelearn.estimators.estimator import (
    Estimator,
    ExportedModel,
    NanLossDuringTrainingError,
    NotFittedError,
    load_exported,
)
from kubelearn.estimators.optimizers import Adagrad, Adam, GradientDescent, Momentum, Optimizer

__all__ = [
    "Adagrad",
    "Adam",
    "DNNClassifier",
    "DNNRegressor",
    "Estimator",
    "ExportedModel",
    "GradientDescent",
    "LinearClassifier",
    "LinearRegressor",
    "Momentum",
    "NanLossDuringTrainingError",
    "NotFittedError",
    "Optimizer",
    "load_exported",
]
