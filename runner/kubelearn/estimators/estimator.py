"""The Estimator: fit, evaluate, predict and export a network, with checkpoints in model_dir.

Training runs through a *training session* (:class:`~kubelearn.estimators.session.
TrainingSession`), which owns the variables: the local session keeps them in this process;
the parameter-server session (``kubelearn.distributed``, handed in by ``kubelearn.sessions``)
pulls them from and pushes gradients to the ps tasks of the cluster. The step loop is the same
for both.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from kubelearn import bounded_input, checkpoints, fs
from kubelearn import hooks as hooks_lib
from kubelearn import inputs as inputs_lib
from kubelearn.estimators import metrics as metrics_lib
from kubelearn.estimators import network as net
from kubelearn.estimators import optimizers
from kubelearn.estimators.session import (
    CheckpointSaverListener,
    SessionModel,
    TrainingSession,
    training_session,
)
from kubelearn.hooks import Hook, LoggingHook, ProgressHook, StepContext
from kubelearn.run_config import RunConfig

log = logging.getLogger("kubelearn")


class NotFittedError(ValueError, AttributeError):
    """Raised when evaluating or predicting before any checkpoint exists."""


class NanLossDuringTrainingError(RuntimeError):
    """Raised when the training loss becomes NaN or infinite."""


class Estimator:
    """Base of the canned estimators: a :class:`~kubelearn.estimators.network.Network`
    trained with an optimiser, its checkpoints in ``model_dir``.
    """

    def __init__(
        self,
        network: net.Network,
        model_dir: str | None = None,
        config: RunConfig | None = None,
        feature_columns: Sequence[str] | None = None,
        optimizer: str | optimizers.Optimizer = "SGD",
        learning_rate: float = 0.05,
    ):
        config = config if config is not None else RunConfig()
        model_dir = fs.local_path(model_dir) if model_dir else model_dir
        if model_dir and config.model_dir and _same_dir(model_dir) != _same_dir(
            config.model_dir
        ):
            raise ValueError(
                f"model_dir are set both in constructor and RunConfig, but with different "
                f"values. In constructor: '{model_dir}', in RunConfig: '{config.model_dir}'."
            )
        model_dir = model_dir or config.model_dir
        if not model_dir:
            model_dir = tempfile.mkdtemp(prefix="kubelearn-")
            log.warning("Using temporary folder as model directory: %s", model_dir)
        if config.model_dir != model_dir:
            config = config.replace(model_dir=model_dir)
        self._config = config
        self._model_dir = model_dir
        self._network = network
        self._feature_columns = list(feature_columns) if feature_columns else None
        self._optimizer_arg = optimizer
        self._learning_rate = learning_rate
        if not isinstance(optimizer, optimizers.Optimizer):
            optimizers.get(optimizer, learning_rate)  # validate now, not at the first step
        self._feature_keys: list[str] | None = None
        self._complaints = bounded_input.Complaints(log.warning)

    # -- properties ------------------------------------------------------------------
    @property
    def config(self) -> RunConfig:
        return self._config

    @property
    def model_dir(self) -> str:
        return self._model_dir

    @property
    def network(self) -> net.Network:
        return self._network

    def get_variable_names(self) -> list[str]:
        path = self._latest_or_fail()
        variables, _ = checkpoints.load(path)
        return sorted(variables)

    def get_variable_value(self, name: str) -> np.ndarray:
        variables, _ = checkpoints.load(self._latest_or_fail())
        return variables[name]

    # -- what a training session gets ---------------------------------------------------
    def _session_model(self, saving_listeners: Sequence[CheckpointSaverListener] = ()
                       ) -> SessionModel:
        network = self._network
        return SessionModel(
            model_dir=self._model_dir, config=self._config, dtype=np.dtype(network.dtype),
            shapes=network.shapes,
            init_params=lambda input_dim: network.init_params(input_dim, self._rng("init")),
            restore=self._restore, new_optimizer=self._new_optimizer,
            saving_listeners=tuple(saving_listeners))

    def _new_optimizer(self) -> optimizers.Optimizer:
        """A fresh optimiser (no slots) of the configured kind, for one training session."""
        if isinstance(self._optimizer_arg, optimizers.Optimizer):
            return optimizers.copy(self._optimizer_arg)
        return optimizers.get(self._optimizer_arg, self._learning_rate)

    def _rng(self, purpose: str) -> np.random.Generator:
        seed = self._config.tf_random_seed
        if seed is None:
            return np.random.default_rng()
        offset = {"init": 0, "dropout": 1}.get(purpose, 2)
        return np.random.default_rng([seed, offset, self._config.task_id])

    def _restore(self, path: str | None, input_dim: int
                 ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], int] | None:
        if path is None:
            return None
        variables, step = checkpoints.load(path)
        shapes = self._network.shapes(input_dim)
        params = {}
        for name, shape in shapes.items():
            if name not in variables:
                raise ValueError(f"Checkpoint {path} has no variable {name}; was it written "
                                 f"by a different model?")
            if variables[name].shape != shape:
                raise ValueError(f"Checkpoint {path}: {name} has shape "
                                 f"{variables[name].shape}, the model expects {shape}")
            params[name] = variables[name].astype(self._network.dtype, copy=True)
        slots = {k: v for k, v in variables.items() if k not in shapes}
        log.info("Restored %s at global step %d", path, step)
        return params, slots, step

    @functools.cached_property
    def _dtype(self) -> np.dtype:
        """The network's dtype as a dtype instance: the per-step checks compare against it
        by identity first, which costs less than converting a type to compare."""
        return np.dtype(self._network.dtype)

    def _features(self, features: Any) -> np.ndarray:
        if (type(features) is np.ndarray and features.ndim == 2
                and features.dtype is self._dtype):
            return features  # the common case, checked first: it runs every step
        dtype = self._network.dtype
        if isinstance(features, Mapping):
            keys = self._feature_columns or sorted(features)
            missing = [k for k in keys if k not in features]
            if missing:
                raise ValueError(f"Features are missing columns {missing}")
            if self._feature_keys is None:
                self._feature_keys = list(keys)
            columns = [np.asarray(features[k], dtype=dtype) for k in keys]
            n = len(columns[0])
            return np.concatenate([c.reshape(n, -1) for c in columns], axis=1)
        x = np.asarray(features, dtype=dtype)
        if x.ndim == 1:
            x = x.reshape(-1, 1)
        elif x.ndim > 2:
            x = x.reshape(x.shape[0], -1)
        return x

    def _labels(self, labels: Any) -> np.ndarray:
        if type(labels) is np.ndarray and labels.dtype is self._regression_dtype:
            # The common case, checked first: it runs every step.
            if labels.ndim == 1:
                return labels[:, None]
            return labels if labels.ndim == 2 else labels.reshape(len(labels), -1)
        if labels is None:
            raise ValueError("Training and evaluation need labels; the input_fn gave None")
        y = labels if type(labels) is np.ndarray else np.asarray(labels)
        if self._network.head == net.REGRESSION:
            if y.dtype == self._network.dtype:  # the common case: no conversion
                return y if y.ndim == 2 else y.reshape(len(y), -1)
            return np.asarray(y, dtype=self._network.dtype).reshape(len(y), -1)
        y = y.reshape(-1)
        if y.size and (y.min() < 0 or y.max() >= max(self._n_classes(), 2)):
            raise ValueError(f"Labels must be in [0, {self._n_classes()}), got values from "
                             f"{y.min()} to {y.max()}")
        return y.astype(np.int64)

    def _batch(self, features: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(self._features(features), self._labels(labels))`` in one call, with what a
        regressor gets at every step (arrays of its dtype, labels of one column) checked
        first."""
        if (type(features) is np.ndarray and type(labels) is np.ndarray
                and features.ndim == 2 and labels.ndim == 1
                and features.dtype is self._dtype and labels.dtype is self._regression_dtype):
            return features, labels[:, None]
        return self._features(features), self._labels(labels)

    @functools.cached_property
    def _regression_dtype(self) -> np.dtype | None:
        """The dtype that regression labels need no conversion from; None for a
        classifier, whose labels are checked and converted every time."""
        return self._dtype if self._network.head == net.REGRESSION else None

    def _n_classes(self) -> int:
        return 2 if self._network.head == net.BINARY else self._network.outputs

    def _latest_or_fail(self) -> str:
        path = checkpoints.latest_checkpoint(self._model_dir)
        if path is None:
            raise NotFittedError(f"Couldn't find trained model at {self._model_dir}.")
        return path

    def _load_params(self, checkpoint_path: str | None) -> tuple[dict[str, np.ndarray], int]:
        path = checkpoint_path or self._latest_or_fail()
        variables, step = checkpoints.load(path)
        names = [n for n in variables if n.startswith(f"{self._network.scope}/")
                 and n.rsplit("/", 1)[-1] in ("kernel", "bias")]
        return {n: variables[n] for n in names}, step

    def _training_session(self, saving_listeners: Sequence[CheckpointSaverListener]
                          ) -> TrainingSession:
        return training_session(self._session_model(saving_listeners), self._config)

    # -- the public API ----------------------------------------------------------------
    def fit(
        self,
        x: Any = None,
        y: Any = None,
        input_fn: Any = None,
        steps: int | None = None,
        batch_size: int | None = None,
        monitors: Iterable[Any] | None = None,
        max_steps: int | None = None,
        saving_listeners: Iterable[CheckpointSaverListener] | None = None,
    ) -> Estimator:
        """Trains from ``input_fn`` (or ``x``/``y``) for ``steps`` more steps or up to
        global step ``max_steps``, resuming from the latest checkpoint.

        ``saving_listeners`` are called around each checkpoint this task saves (as with
        tf.estimator's ``train``); only the chief saves.

        Raises:
          ValueError: for both ``steps`` and ``max_steps``, non-positive counts, both
            ``x`` and ``input_fn``, both checkpoint intervals in the RunConfig, or a
            saving listener that is not a CheckpointSaverListener.
        """
        listeners = list(saving_listeners or [])
        for listener in listeners:
            if not isinstance(listener, CheckpointSaverListener):
                raise ValueError(f"saving_listeners must be CheckpointSaverListener "
                                 f"instances, got {type(listener).__name__}")
        if steps is not None and max_steps is not None:
            raise ValueError("Can not provide both steps and max_steps.")
        if steps is not None and steps <= 0:
            raise ValueError(f"Must specify steps > 0, given: {steps}")
        if max_steps is not None and max_steps <= 0:
            raise ValueError(f"Must specify max_steps > 0, given: {max_steps}")
        input_fn = self._input_fn(x, y, input_fn, batch_size, num_epochs=None, shuffle=True)
        hooks = list(monitors or [])
        if self._config.log_step_count_steps:
            hooks.append(LoggingHook(self._config.log_step_count_steps))
        if self._config.is_chief:
            sync = getattr(self._optimizer_arg, "replicas_to_aggregate", None)
            hooks.append(ProgressHook(self._model_dir, sync_replicas=sync))
        self._train(inputs_lib.batches(input_fn), steps, max_steps, hooks, listeners)
        return self

    def _train(self, batch_iter: Iterator[Any], steps: int | None, max_steps: int | None,
               hooks: list[Any], saving_listeners: list[CheckpointSaverListener]) -> None:
        try:
            features, labels = next(batch_iter)
        except StopIteration:
            log.warning("input_fn produced no data; nothing to train")
            return
        x, y = self._batch(features, labels)
        session = self._training_session(saving_listeners)
        session.target_step = max_steps
        step = session.start(x.shape[1])
        if session.finished or (max_steps is not None and step >= max_steps):
            if not session.finished:
                log.info("Skipping training since max_steps has already saved.")
            session.close(done=True)
            return
        target = max_steps if max_steps is not None else (
            step + steps if steps is not None else None)
        context = StepContext(self, session)
        context.step = step
        for hook in hooks:
            hook.begin(context)
        step = context.step = session.refresh()
        rng = self._rng("dropout") if self._network.dropout else None
        # Everything the loop calls, looked up once: on a small model these lookups cost
        # as much as the math. Hooks that keep Hook's empty after_step are not called;
        # the others, and the session's after_step, only from the step or time the first
        # of them is next due (hooks_lib.next_due), each checking its own schedule then.
        loss_and_grads = self._network.loss_and_grads_function()
        params, apply, after_step = session.params, session.apply, session.after_step
        batch_of, isfinite, now = self._batch, math.isfinite, time.monotonic
        step_hook_objects = [hook for hook in hooks if getattr(
            type(hook), "after_step", None) is not Hook.after_step]
        step_hooks = [hook.after_step for hook in step_hook_objects]

        def next_due() -> tuple[float, float]:
            dues = [session.next_due(), *(hooks_lib.next_due(h) for h in step_hook_objects)]
            return min(d[0] for d in dues), min(d[1] for d in dues)

        due_step, due_time = next_due()
        loss = context.loss
        while (target is None or step < target) and not session.finished:
            loss, grads = loss_and_grads(params(), x, y, rng)
            if not isfinite(loss):
                raise NanLossDuringTrainingError(f"NaN loss during training at step {step}.")
            step = apply(grads)
            if step >= due_step or now() >= due_time or session.finished:
                context.step, context.loss = step, loss
                after_step(step)
                for hook_after_step in step_hooks:
                    hook_after_step(context)
                if context.stop_requested or session.stop_requested or session.finished:
                    break
                due_step, due_time = next_due()
            try:
                features, labels = next(batch_iter)
            except StopIteration:
                log.info("Input exhausted at global step %d", step)
                break
            x, y = batch_of(features, labels)
        context.step, context.loss = step, loss
        done = session.finished or (max_steps is not None and step >= max_steps)
        session.close(done=done)
        for hook in hooks:
            hook.end(context)
        log.info("Loss for final step: %s.", context.loss)

    def _input_fn(self, x: Any, y: Any, input_fn: Any, batch_size: int | None,
                  num_epochs: int | None, shuffle: bool) -> Any:
        if input_fn is not None:
            if x is not None or y is not None:
                raise ValueError("Either x/y or input_fn must be given, not both.")
            return input_fn
        if x is None:
            raise ValueError("Either x or input_fn must be provided.")
        return inputs_lib.numpy_input_fn(x, y, batch_size=batch_size or 128,
                                         num_epochs=num_epochs, shuffle=shuffle)

    def evaluate(
        self,
        x: Any = None,
        y: Any = None,
        input_fn: Any = None,
        feed_fn: Any = None,
        batch_size: int | None = None,
        steps: int | None = None,
        metrics: Mapping[str, Any] | None = None,
        name: str | None = None,
        checkpoint_path: str | None = None,
        hooks: Iterable[Any] | None = None,
        log_progress: bool = True,
    ) -> dict[str, Any]:
        """Evaluates a checkpoint (the latest by default) on ``steps`` batches (None: until
        the input is exhausted). Returns metrics with ``loss`` and ``global_step``.

        ``metrics`` maps names to ``fn(predictions, labels) -> float`` computed over the
        whole pass, where ``predictions`` is the dict :meth:`predict` returns as arrays.
        """
        if steps is not None and steps <= 0:
            raise ValueError(f"Must specify steps > 0, given: {steps}")
        input_fn = self._input_fn(x, y, input_fn, batch_size, num_epochs=1, shuffle=False)
        params, global_step = self._load_params(checkpoint_path)
        result = input_fn()
        if isinstance(result, tuple) and len(result) == 2 and isinstance(
            result[0], (np.ndarray, Mapping)
        ):
            batch_iter: Iterator[Any] = iter([result] * (steps or 1))
        else:
            batch_iter = iter(result)
        total_loss, count = 0.0, 0
        all_logits, all_labels = [], []
        hook_list = list(hooks or [])
        for batch_index, (features, labels) in enumerate(batch_iter):
            if steps is not None and batch_index >= steps:
                break
            xb, yb = self._features(features), self._labels(labels)
            logits = self._network.logits(params, xb)
            loss, _ = net.head_loss(self._network.head, logits, yb)
            total_loss += loss * len(xb)
            count += len(xb)
            all_logits.append(logits)
            all_labels.append(yb)
        if count == 0:
            raise ValueError("Evaluation input produced no data")
        logits = np.concatenate(all_logits)
        labels = np.concatenate(all_labels)
        results: dict[str, Any] = {"loss": total_loss / count, "global_step": global_step}
        predictions = self._outputs(logits)
        if self._network.head == net.REGRESSION:
            results.update(metrics_lib.regression(labels, predictions["predictions"]))
        else:
            results.update(metrics_lib.classification(labels, predictions["probabilities"]))
        for metric_name, fn in (metrics or {}).items():
            results[metric_name] = float(fn(predictions, labels))
        context = StepContext(self, None)
        context.step, context.loss = global_step, results["loss"]
        context.results = results
        for hook in hook_list:
            hook.end(context)
        if log_progress:
            log.info("Saving evaluation summary for step %d: %s", global_step,
                     ", ".join(f"{k} = {v:.6g}" for k, v in sorted(results.items())
                               if isinstance(v, float)))
        self._write_eval_summary(name, results)
        return results

    def _write_eval_summary(self, name: str | None, results: Mapping[str, Any]) -> None:
        directory = fs.join(self._model_dir, f"eval_{name}" if name else "eval")
        fs.makedirs(directory)
        line = json.dumps({k: (v if isinstance(v, (int, float)) else str(v))
                           for k, v in results.items()}, sort_keys=True)
        path = fs.join(directory, "results.jsonl")
        try:
            fs.append_line(path, line)
        except bounded_input.InputError as exc:  # a FIFO or a link put there: not fatal
            self._complaints.bad(path, f"Evaluation results not recorded: {exc}")
        else:
            self._complaints.good(path)

    def _outputs(self, logits: np.ndarray) -> dict[str, np.ndarray]:
        if self._network.head == net.REGRESSION:
            preds = logits[:, 0] if logits.shape[1] == 1 else logits
            return {"predictions": preds}
        probs = net.probabilities(self._network.head, logits)
        return {"logits": logits, "probabilities": probs, "classes": probs.argmax(axis=1)}

    def predict(
        self,
        x: Any = None,
        input_fn: Any = None,
        batch_size: int | None = None,
        outputs: Sequence[str] | None = None,
        as_iterable: bool = True,
        checkpoint_path: str | None = None,
    ) -> Any:
        """Predictions of the latest checkpoint: an iterator of per-example dicts, or with
        ``as_iterable=False`` one dict of arrays."""
        input_fn = self._input_fn(x, None, input_fn, batch_size, num_epochs=1, shuffle=False)
        params, _ = self._load_params(checkpoint_path)
        result = input_fn()
        if isinstance(result, tuple) and len(result) == 2:
            result = [result]
        chunks = []
        for features, _labels in result:
            out = self._outputs(self._network.logits(params, self._features(features)))
            if outputs:
                unknown = set(outputs) - set(out)
                if unknown:
                    raise ValueError(f"Unknown outputs {sorted(unknown)}; have {sorted(out)}")
                out = {k: out[k] for k in outputs}
            chunks.append(out)
        if not chunks:
            return iter(()) if as_iterable else {}
        merged = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
        if not as_iterable:
            return merged
        n = len(next(iter(merged.values())))
        return ({k: v[i] for k, v in merged.items()} for i in range(n))

    def export(self, export_dir: str, checkpoint_path: str | None = None) -> str:
        """Writes the trained model (``model.npz`` and ``signature.json``) to ``export_dir``.

        :func:`load_exported` reads it back for prediction, without the estimator.
        """
        params, step = self._load_params(checkpoint_path)
        fs.makedirs(export_dir)
        fs.write(fs.join(export_dir, "model.npz"), lambda handle: np.savez(handle, **params))
        kernel = params[f"{self._network.layer_names()[0]}/kernel"]
        signature = {
            "format": "kubelearn.export/v1",
            "estimator": type(self).__name__,
            "scope": self._network.scope,
            "head": self._network.head,
            "outputs": self._network.outputs,
            "hidden_units": [int(u) for u in self._network.hidden_units],
            "activation": self._network.activation,
            "input_dim": int(kernel.shape[0]),
            "feature_keys": self._feature_keys or self._feature_columns,
            "global_step": step,
        }
        fs.write_text(fs.join(export_dir, "signature.json"),
                      json.dumps(signature, indent=2) + "\n")
        return export_dir


def _same_dir(model_dir: str) -> str:
    """What two spellings of one model directory have in common (a URL as it is)."""
    return model_dir.rstrip("/") if fs.is_url(model_dir) else os.path.abspath(model_dir)


class ExportedModel:
    """A model loaded from :meth:`Estimator.export` for prediction."""

    def __init__(self, export_dir: str):
        from kubelearn.export import COMPLETE_MARKER, is_complete

        if fs.is_remote(export_dir):
            if not is_complete(export_dir):
                raise FileNotFoundError(f"{export_dir} is not a whole export (no "
                                        f"{COMPLETE_MARKER}: it is being written, or its "
                                        f"writer died)")
            model: Any = io.BytesIO(fs.read_bytes(fs.join(export_dir, "model.npz")))
        else:  # a regular file, never a FIFO that would block
            model = os.fdopen(bounded_input.open_regular(
                fs.local_path(os.path.join(export_dir, "model.npz"))), "rb")
        with model:
            signature = fs.join(export_dir, "signature.json")
            self.signature = bounded_input.load_json(
                fs.read_bytes(signature, bounded_input.MAX_FILE_BYTES), signature)
            with np.load(model, allow_pickle=False) as data:
                self.params = {name: data[name] for name in data.files}
        self.network = net.Network(
            scope=self.signature["scope"], head=self.signature["head"],
            outputs=self.signature["outputs"], hidden_units=tuple(self.signature["hidden_units"]),
            activation=self.signature["activation"],
        )

    def predict(self, features: Any) -> dict[str, np.ndarray]:
        keys = self.signature.get("feature_keys")
        if isinstance(features, Mapping):
            keys = keys or sorted(features)
            n = len(features[keys[0]])
            x = np.concatenate([np.asarray(features[k], np.float32).reshape(n, -1)
                                for k in keys], axis=1)
        else:
            x = np.asarray(features, np.float32)
            x = x.reshape(len(x), -1)
        if x.shape[1] != self.signature["input_dim"]:
            raise ValueError(f"Expected {self.signature['input_dim']} features, got {x.shape[1]}")
        logits = self.network.logits(self.params, x)
        if self.network.head == net.REGRESSION:
            return {"predictions": logits[:, 0] if logits.shape[1] == 1 else logits}
        probs = net.probabilities(self.network.head, logits)
        return {"logits": logits, "probabilities": probs, "classes": probs.argmax(axis=1)}


def load_exported(export_dir: str) -> ExportedModel:
    return ExportedModel(export_dir)
