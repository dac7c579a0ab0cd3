"""Optimisers that update each variable on its own, so a parameter server can apply them
to just the variables of its shard. Their state (slots) is a flat dict of arrays named
``<variable>/<Slot>`` and is saved in checkpoints beside the variables.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


class Optimizer:
    """Base class: ``apply`` updates ``params`` in place from ``grads``."""

    name = "Optimizer"
    slot_names: tuple[str, ...] = ()

    def __init__(self, learning_rate: float):
        if not learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {learning_rate}")
        self.learning_rate = float(learning_rate)
        self.slots: dict[str, np.ndarray] = {}

    @property
    def learning_rate(self) -> float:
        return self._learning_rate

    @learning_rate.setter
    def learning_rate(self, value: float) -> None:
        self._learning_rate = value
        self._rates: dict[np.dtype, np.ndarray | float] = {}  # made again from the new value

    def _rate_as(self, dtype: np.dtype) -> np.ndarray | float:
        """The learning rate as a 0-d array of a float ``dtype``: a ufunc takes it with
        less work than a Python float, which it converts at every call, and computes the
        same (the Python float would be cast to ``dtype`` too). Other dtypes get the float."""
        rate = self._rates.get(dtype)
        if rate is None:
            rate = self._learning_rate
            if dtype.kind == "f":
                rate = np.array(rate, dtype=dtype)
                rate.flags.writeable = False
            self._rates[dtype] = rate
        return rate

    def _slot(self, var: str, slot: str, like: np.ndarray, fill: float = 0.0) -> np.ndarray:
        key = f"{var}/{slot}"
        value = self.slots.get(key)
        if value is None:
            value = np.full_like(like, fill)
            self.slots[key] = value
        return value

    def apply(self, params: dict[str, np.ndarray], grads: Mapping[str, np.ndarray]) -> None:
        for name, grad in grads.items():
            self.update(name, params[name], grad)

    def update(self, name: str, param: np.ndarray, grad: np.ndarray) -> None:
        raise NotImplementedError

    def update_into_grad(self, name: str, param: np.ndarray, grad: np.ndarray
                         ) -> np.ndarray | None:
        """The updated ``param`` written over ``grad`` (which the caller gives up), or None
        when this optimiser can only update in place. Leaving ``param`` untouched lets a
        reply still sending it go on without a copy."""
        return None

    def state(self) -> dict[str, np.ndarray]:
        return dict(self.slots)

    def load_state(self, slots: Mapping[str, np.ndarray]) -> None:
        self.slots = {k: np.array(v) for k, v in slots.items()}


_CHUNK = 1 << 16  # elements per block of an in-place update: stays in cache


class GradientDescent(Optimizer):
    name = "SGD"

    def apply(self, params: dict[str, np.ndarray], grads: Mapping[str, np.ndarray]) -> None:
        """``update`` for each variable, with the small-variable case inlined: it runs
        for every variable at every step."""
        rates = self._rates
        for name, grad in grads.items():
            param = params[name]
            if param.size <= _CHUNK:
                rate = rates.get(grad.dtype)
                param -= (rate if rate is not None else self._rate_as(grad.dtype)) * grad
            else:
                self.update(name, param, grad)

    def update(self, name: str, param: np.ndarray, grad: np.ndarray) -> None:
        if param.size <= _CHUNK:
            param -= self.learning_rate * grad
            return
        # Large variables (a parameter server's): block by block, without a temporary
        # as large as the variable.
        flat_p, flat_g = param.reshape(-1), grad.reshape(-1)
        scratch = np.empty(_CHUNK, dtype=param.dtype)
        for start in range(0, flat_p.size, _CHUNK):
            block = slice(start, start + _CHUNK)
            out = scratch[: flat_p[block].size]
            np.multiply(flat_g[block], self.learning_rate, out=out)
            flat_p[block] -= out

    def update_into_grad(self, name: str, param: np.ndarray, grad: np.ndarray
                         ) -> np.ndarray:
        """``param - rate * grad`` over ``grad``, block by block, so that it stays in
        cache between the two passes."""
        flat_p, flat_g = param.reshape(-1), grad.reshape(-1)
        rate = -self.learning_rate
        for start in range(0, flat_p.size, _CHUNK):
            block = flat_g[start:start + _CHUNK]
            np.multiply(block, rate, out=block)
            np.add(block, flat_p[start:start + _CHUNK], out=block)
        return grad


class Momentum(Optimizer):
    name = "Momentum"
    slot_names = ("Momentum",)

    def __init__(self, learning_rate: float, momentum: float = 0.9, use_nesterov: bool = False):
        super().__init__(learning_rate)
        self.momentum = float(momentum)
        self.use_nesterov = use_nesterov

    def update(self, name: str, param: np.ndarray, grad: np.ndarray) -> None:
        accum = self._slot(name, "Momentum", param)
        accum *= self.momentum
        accum += grad
        if self.use_nesterov:
            param -= self.learning_rate * (grad + self.momentum * accum)
        else:
            param -= self.learning_rate * accum


class Adagrad(Optimizer):
    name = "Adagrad"
    slot_names = ("Adagrad",)

    def __init__(self, learning_rate: float, initial_accumulator_value: float = 0.1):
        super().__init__(learning_rate)
        self.initial_accumulator_value = float(initial_accumulator_value)

    def update(self, name: str, param: np.ndarray, grad: np.ndarray) -> None:
        accum = self._slot(name, "Adagrad", param, self.initial_accumulator_value)
        accum += grad * grad
        param -= self.learning_rate * grad / np.sqrt(accum)


class Adam(Optimizer):
    name = "Adam"
    slot_names = ("Adam", "Adam_1", "Adam_t")

    def __init__(self, learning_rate: float = 0.001, beta1: float = 0.9, beta2: float = 0.999,
                 epsilon: float = 1e-8):
        super().__init__(learning_rate)
        self.beta1, self.beta2, self.epsilon = float(beta1), float(beta2), float(epsilon)

    def update(self, name: str, param: np.ndarray, grad: np.ndarray) -> None:
        m = self._slot(name, "Adam", param)
        v = self._slot(name, "Adam_1", param)
        t = self.slots.setdefault(f"{name}/Adam_t", np.zeros((), dtype=np.int64))
        t += 1
        m *= self.beta1
        m += (1.0 - self.beta1) * grad
        v *= self.beta2
        v += (1.0 - self.beta2) * grad * grad
        step = int(t)
        lr = self.learning_rate * np.sqrt(1.0 - self.beta2**step) / (1.0 - self.beta1**step)
        param -= (lr * m / (np.sqrt(v) + self.epsilon)).astype(param.dtype, copy=False)


class SyncReplicas(Optimizer):
    """Synchronous training: the parameter servers average ``replicas_to_aggregate``
    gradients into one update per global step and drop stale ones (TF's
    SyncReplicasOptimizer). On a single machine it is the wrapped optimiser."""

    def __init__(self, optimizer: Optimizer, replicas_to_aggregate: int):
        if not isinstance(replicas_to_aggregate, int) or replicas_to_aggregate < 1:
            raise ValueError(
                f"replicas_to_aggregate must be a positive integer, got {replicas_to_aggregate!r}")
        self.inner = optimizer
        self.replicas_to_aggregate = replicas_to_aggregate
        self.name = optimizer.name
        self.learning_rate = optimizer.learning_rate

    @property  # type: ignore[override]
    def slots(self) -> dict[str, np.ndarray]:
        return self.inner.slots

    @slots.setter
    def slots(self, value: dict[str, np.ndarray]) -> None:
        self.inner.slots = value

    def update(self, name: str, param: np.ndarray, grad: np.ndarray) -> None:
        self.inner.update(name, param, grad)


_BY_NAME: dict[str, type[Optimizer]] = {
    "sgd": GradientDescent,
    "gradientdescent": GradientDescent,
    "momentum": Momentum,
    "adagrad": Adagrad,
    "adam": Adam,
}


def get(optimizer: str | Optimizer, learning_rate: float) -> Optimizer:
    """An optimiser from a name (``SGD``, ``Momentum``, ``Adagrad``, ``Adam``) or instance."""
    if isinstance(optimizer, Optimizer):
        return optimizer
    key = str(optimizer).replace("_", "").lower()
    if key not in _BY_NAME:
        raise ValueError(
            f"Unknown optimizer {optimizer!r}; expected one of SGD, Momentum, Adagrad, Adam"
        )
    return _BY_NAME[key](learning_rate)


def spec(optimizer: Optimizer) -> dict[str, float | str | bool]:
    """A JSON-able description from which :func:`from_spec` rebuilds the optimiser."""
    optimizer = getattr(optimizer, "inner", optimizer)
    out: dict[str, float | str | bool] = {"name": optimizer.name,
                                           "learning_rate": optimizer.learning_rate}
    for key in ("momentum", "use_nesterov", "initial_accumulator_value", "beta1", "beta2",
                "epsilon"):
        if hasattr(optimizer, key):
            out[key] = getattr(optimizer, key)
    return out


def from_spec(description: Mapping[str, float | str | bool]) -> Optimizer:
    kwargs = dict(description)
    cls = _BY_NAME.get(str(kwargs.pop("name")).lower())
    if cls is None:
        raise ValueError(f"Unknown optimizer in spec: {description!r}")
    return cls(**kwargs)  # type: ignore[arg-type]


def copy(optimizer: Optimizer) -> Optimizer:
    """A fresh optimiser of the same kind and settings, without slots."""
    if isinstance(optimizer, SyncReplicas):
        return SyncReplicas(copy(optimizer.inner), optimizer.replicas_to_aggregate)
    return from_spec(spec(optimizer))
