"""The canned estimators of tf.contrib.learn, in numpy."""

from __future__ import annotations

from collections.abc import Sequence

from kubelearn.estimators import network as net
from kubelearn.estimators.estimator import Estimator
from kubelearn.estimators.optimizers import Optimizer
from kubelearn.run_config import RunConfig


def _classification_head(n_classes: int) -> tuple[str, int]:
    if not isinstance(n_classes, int) or n_classes < 2:
        raise ValueError(f"n_classes must be an integer >= 2, got {n_classes!r}")
    return (net.BINARY, 1) if n_classes == 2 else (net.MULTICLASS, n_classes)


class LinearRegressor(Estimator):
    """Linear regression with mean squared error."""

    def __init__(self, feature_columns: Sequence[str] | None = None, model_dir: str | None = None,
                 label_dimension: int = 1, optimizer: str | Optimizer = "SGD",
                 learning_rate: float = 0.05, l2_regularization: float = 0.0,
                 config: RunConfig | None = None):
        super().__init__(
            net.Network("linear", net.REGRESSION, label_dimension, l2=l2_regularization),
            model_dir=model_dir, config=config, feature_columns=feature_columns,
            optimizer=optimizer, learning_rate=learning_rate)


class LinearClassifier(Estimator):
    """Logistic (binary) or softmax (multi-class) regression."""

    def __init__(self, feature_columns: Sequence[str] | None = None, model_dir: str | None = None,
                 n_classes: int = 2, optimizer: str | Optimizer = "SGD",
                 learning_rate: float = 0.05, l2_regularization: float = 0.0,
                 config: RunConfig | None = None):
        head, outputs = _classification_head(n_classes)
        super().__init__(
            net.Network("linear", head, outputs, l2=l2_regularization),
            model_dir=model_dir, config=config, feature_columns=feature_columns,
            optimizer=optimizer, learning_rate=learning_rate)


class DNNRegressor(Estimator):
    """A feed-forward network for regression."""

    def __init__(self, hidden_units: Sequence[int], feature_columns: Sequence[str] | None = None,
                 model_dir: str | None = None, label_dimension: int = 1,
                 activation: str = "relu", dropout: float | None = None,
                 optimizer: str | Optimizer = "Adagrad", learning_rate: float = 0.05,
                 l2_regularization: float = 0.0, config: RunConfig | None = None,
                 activation_fn: str | None = None):
        super().__init__(
            net.Network("dnn", net.REGRESSION, label_dimension, tuple(hidden_units),
                        activation_fn or activation, dropout, l2_regularization),
            model_dir=model_dir, config=config, feature_columns=feature_columns,
            optimizer=optimizer, learning_rate=learning_rate)


class DNNClassifier(Estimator):
    """A feed-forward network for binary or multi-class classification."""

    def __init__(self, hidden_units: Sequence[int], feature_columns: Sequence[str] | None = None,
                 model_dir: str | None = None, n_classes: int = 2, activation: str = "relu",
                 dropout: float | None = None, optimizer: str | Optimizer = "Adagrad",
                 learning_rate: float = 0.05, l2_regularization: float = 0.0,
                 config: RunConfig | None = None, activation_fn: str | None = None):
        head, outputs = _classification_head(n_classes)
        super().__init__(
            net.Network("dnn", head, outputs, tuple(hidden_units), activation_fn or activation,
                        dropout, l2_regularization),
            model_dir=model_dir, config=config, feature_columns=feature_columns,
            optimizer=optimizer, learning_rate=learning_rate)
