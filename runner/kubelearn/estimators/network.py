"""Feed-forward networks with analytic gradients: the math behind every estimator.

A linear model is a network without hidden layers. Parameters live in a flat dict
``{name: ndarray}`` so that the same names serve checkpoints, the parameter servers and
the optimisers. The functions here are pure: parameters and batches in, loss and
gradients out.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

REGRESSION = "regression"
BINARY = "binary"
MULTICLASS = "multiclass"

_ACTIVATIONS = ("relu", "tanh", "sigmoid", "elu", "linear")


def _sigmoid(z: np.ndarray) -> np.ndarray:
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


def _softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def _activate(name: str, z: np.ndarray) -> np.ndarray:
    if name == "relu":
        return np.maximum(z, 0)
    if name == "tanh":
        return np.tanh(z)
    if name == "sigmoid":
        return _sigmoid(z)
    if name == "elu":
        return np.where(z > 0, z, np.expm1(np.minimum(z, 0)))
    return z


def _activation_grad(name: str, z: np.ndarray, a: np.ndarray) -> np.ndarray:
    """The activation's derivative, as a factor of the gradient; relu's is a boolean mask,
    which multiplies as 0 and 1 without a pass to convert it."""
    if name == "relu":
        return z > 0
    if name == "tanh":
        return 1.0 - a * a
    if name == "sigmoid":
        return a * (1.0 - a)
    if name == "elu":
        return np.where(z > 0, 1.0, a + 1.0).astype(z.dtype)
    return np.ones_like(z)


@dataclass(frozen=True)
class Network:
    """Shape and head of a feed-forward network.

    Args:
      scope: prefix of every parameter name (``linear`` or ``dnn``).
      head: ``regression``, ``binary`` or ``multiclass``.
      outputs: logits per example (label dimension, 1 for binary, classes for multiclass).
      hidden_units: sizes of the hidden layers; empty for a linear model.
      activation: activation of the hidden layers.
      dropout: probability of dropping a hidden unit while training, or None.
      l2: L2 penalty on kernels (``l2 * sum(w**2)`` added to the loss).
      dtype: float dtype of parameters and computation.
    """

    scope: str
    head: str
    outputs: int
    hidden_units: Sequence[int] = field(default_factory=tuple)
    activation: str = "relu"
    dropout: float | None = None
    l2: float = 0.0
    dtype: type = np.float32

    def __post_init__(self) -> None:
        if self.head not in (REGRESSION, BINARY, MULTICLASS):
            raise ValueError(f"Unknown head: {self.head!r}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(
                f"Unknown activation {self.activation!r}; expected one of {_ACTIVATIONS}"
            )
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if any(int(u) <= 0 for u in self.hidden_units):
            raise ValueError(f"hidden_units must be positive, got {list(self.hidden_units)}")
        if self.outputs <= 0:
            raise ValueError(f"outputs must be positive, got {self.outputs}")

    def layer_names(self) -> list[str]:
        return list(self._layer_names)

    @functools.cached_property
    def _layer_names(self) -> tuple[str, ...]:
        names = [f"{self.scope}/hiddenlayer_{i}" for i in range(len(self.hidden_units))]
        return (*names, f"{self.scope}/logits")

    @functools.cached_property
    def _param_keys(self) -> tuple[tuple[str, str], ...]:
        """(kernel, bias) names of each layer, built once: the step loop looks them up
        every step."""
        return tuple((f"{layer}/kernel", f"{layer}/bias") for layer in self._layer_names)

    @functools.cached_property
    def _regression(self) -> bool:
        """Whether the head is regression, asked at every linear step."""
        return self.head == REGRESSION

    def shapes(self, input_dim: int) -> dict[str, tuple[int, ...]]:
        """Parameter names and shapes for inputs of ``input_dim`` features, in layer order."""
        sizes = [input_dim, *[int(u) for u in self.hidden_units], self.outputs]
        shapes: dict[str, tuple[int, ...]] = {}
        pairs = itertools.pairwise(sizes)
        for layer, (fan_in, fan_out) in zip(self.layer_names(), pairs, strict=True):
            shapes[f"{layer}/kernel"] = (fan_in, fan_out)
            shapes[f"{layer}/bias"] = (fan_out,)
        return shapes

    def init_params(self, input_dim: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Glorot-uniform kernels for a DNN, zeros for a linear model; zero biases."""
        params: dict[str, np.ndarray] = {}
        for name, shape in self.shapes(input_dim).items():
            if name.endswith("/kernel") and self.hidden_units:
                limit = np.sqrt(6.0 / (shape[0] + shape[1]))
                params[name] = rng.uniform(-limit, limit, size=shape).astype(self.dtype)
            else:
                params[name] = np.zeros(shape, dtype=self.dtype)
        return params

    def logits(self, params: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
        """Forward pass without dropout (evaluation and prediction)."""
        h = x
        *hidden, (kernel, bias) = self._param_keys
        for layer_kernel, layer_bias in hidden:
            h = _activate(self.activation, h @ params[layer_kernel] + params[layer_bias])
        return h @ params[kernel] + params[bias]

    def loss_and_grads(
        self,
        params: dict[str, np.ndarray],
        x: np.ndarray,
        y: np.ndarray,
        rng: np.random.Generator | None = None,
    ) -> tuple[float, dict[str, np.ndarray]]:
        """Training loss of one batch and its gradient for every parameter.

        Dropout is applied when ``self.dropout`` is set and ``rng`` is given.
        """
        if self._is_linear:
            return self._linear_loss_and_grads(params, x, y, rng)
        keys = self._param_keys
        inputs = [x]  # what each layer consumes (after dropout)
        pre: list[np.ndarray] = []
        post: list[np.ndarray] = []
        masks: list[np.ndarray | None] = []
        h = x
        for kernel, bias in keys[:-1]:
            z = h @ params[kernel]
            z += params[bias]
            a = _activate(self.activation, z)
            mask = None
            if self.dropout and rng is not None:
                keep = 1.0 - self.dropout
                mask = (rng.random(a.shape) < keep).astype(a.dtype) / keep
            h = a if mask is None else a * mask
            pre.append(z)
            post.append(a)
            masks.append(mask)
            inputs.append(h)
        kernel, bias = keys[-1]
        logits = h @ params[kernel]
        logits += params[bias]
        loss, delta = head_loss(self.head, logits, y)
        grads: dict[str, np.ndarray] = {}
        for i in range(len(keys) - 1, -1, -1):
            kernel, bias = keys[i]
            grads[kernel] = inputs[i].T @ delta
            grads[bias] = _sum_rows(delta)
            if i > 0:
                delta = delta @ params[kernel].T  # a new array: scaled in place below
                if masks[i - 1] is not None:
                    delta *= masks[i - 1]
                delta *= _activation_grad(self.activation, pre[i - 1], post[i - 1])
        if self.l2:
            for kernel, _ in keys:
                value = params[kernel]
                loss += float(self.l2 * np.sum(value * value))
                grads[kernel] = grads[kernel] + 2.0 * self.l2 * value
        return float(loss), grads

    @functools.cached_property
    def _is_linear(self) -> bool:
        """Whether the step takes the linear shortcut: no hidden layers and no L2."""
        return len(self._param_keys) == 1 and not self.l2

    def loss_and_grads_function(
        self,
    ) -> Callable[[dict[str, np.ndarray], np.ndarray, np.ndarray, np.random.Generator | None],
                  tuple[float, dict[str, np.ndarray]]]:
        """:meth:`loss_and_grads`, or the linear shortcut it would take, chosen once for a
        step loop rather than at every step."""
        return self._linear_loss_and_grads if self._is_linear else self.loss_and_grads

    def _linear_loss_and_grads(
        self,
        params: dict[str, np.ndarray],
        x: np.ndarray,
        y: np.ndarray,
        rng: np.random.Generator | None = None,
    ) -> tuple[float, dict[str, np.ndarray]]:
        """The same math as the general path for a network without hidden layers or L2,
        without its per-layer bookkeeping, which would cost as much as the math on small
        batches; the logits are turned into their gradient in place."""
        kernel, bias = self._param_keys[0]
        logits = x @ params[kernel]
        logits += params[bias]
        if self._regression and y.shape == logits.shape:  # head_loss, inlined
            logits -= y
            flat = logits.ravel()
            loss = float(flat @ flat) / flat.size
            logits *= 2.0 / flat.size
            delta = logits
        else:
            loss, delta = head_loss(self.head, logits, y)
        return loss, {kernel: x.T @ delta, bias: _sum_rows(delta)}


def _sum_rows(delta: np.ndarray) -> np.ndarray:
    """``delta.sum(axis=0)`` (the bias gradient) without the Python wrapper that
    ``ndarray.sum`` goes through: the same reduction, bitwise."""
    return np.add.reduce(delta, axis=0)


def head_loss(head: str, logits: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean loss over the batch and its gradient with respect to the logits."""
    n = logits.shape[0]
    if head == REGRESSION:
        diff = logits - (y if y.shape == logits.shape else y.reshape(logits.shape))
        flat = diff.ravel()
        loss = float(flat @ flat) / flat.size
        return loss, (2.0 / flat.size) * diff
    if head == BINARY:
        z = logits[:, 0]
        labels = y.reshape(-1).astype(logits.dtype)
        # log(1 + exp(z)) - y z, computed without overflow.
        loss = float(np.mean(np.maximum(z, 0) - z * labels + np.log1p(np.exp(-np.abs(z)))))
        return loss, ((_sigmoid(z) - labels) / n)[:, None].astype(logits.dtype)
    probs = _softmax(logits)
    labels = y.reshape(-1).astype(np.int64)
    picked = probs[np.arange(n), labels]
    loss = float(-np.mean(np.log(np.maximum(picked, np.finfo(probs.dtype).tiny))))
    grad = probs.copy()
    grad[np.arange(n), labels] -= 1.0
    return loss, grad / n


def probabilities(head: str, logits: np.ndarray) -> np.ndarray:
    """Class probabilities ``[batch, classes]`` for a classification head."""
    if head == BINARY:
        p = _sigmoid(logits[:, 0])
        return np.stack([1.0 - p, p], axis=1)
    return _softmax(logits)
