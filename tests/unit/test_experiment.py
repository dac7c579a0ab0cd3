"""Experiment: constructor rules, defaults, and each schedule on a real numpy estimator."""

import json
import math

import numpy as np
import pytest

from kubelearn import Experiment, RunConfig, checkpoints, make_export_strategy
from kubelearn.estimators import LinearRegressor
from kubelearn.experiment import POLYAXON_DEFAULTS
from kubelearn.hooks import GlobalStepWaiterHook, Hook
from kubelearn.inputs import numpy_input_fn


class FakeClock:
    def __init__(self):
        self.now = 1000.0
        self.sleeps = []

    def sleep(self, secs):
        self.sleeps.append(secs)
        self.now += secs

    def time(self):
        return self.now


class Recorder:
    """A duck-typed estimator that records how it is called (keyword arguments only)."""

    def __init__(self, config):
        self.config = config
        self.model_dir = config.model_dir
        self.calls = []

    def fit(self, *args, **kwargs):
        assert not args
        self.calls.append(("fit", kwargs))
        return self

    def evaluate(self, *args, **kwargs):
        assert not args
        self.calls.append(("evaluate", kwargs))
        return {"global_step": 0, "loss": 1.0}


def _data(n=256, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5]) + 0.3).astype(np.float32)
    return x, y


def _experiment(tmp_path, clock=None, save_steps=10, **kwargs):
    x, y = _data()
    config = RunConfig(model_dir=str(tmp_path), save_checkpoints_steps=save_steps,
                       tf_random_seed=1, log_step_count_steps=0)
    estimator = LinearRegressor(config=config, learning_rate=0.1)
    exp = Experiment(estimator,
                     numpy_input_fn(x, y, batch_size=32, num_epochs=None, shuffle=True, seed=0),
                     numpy_input_fn(x, y, batch_size=64, num_epochs=1, shuffle=False),
                     **kwargs)
    if clock:
        exp._sleep, exp._time = clock.sleep, clock.time
    return exp


def test_constructor_runs_nothing(tmp_path):
    called = []
    config = RunConfig(model_dir=str(tmp_path))
    exp = Experiment(Recorder(config), lambda: called.append("train"),
                     lambda: called.append("eval"))
    assert called == [] and exp.estimator.calls == []


def test_estimator_without_fit_or_evaluate_is_value_error():
    class NoFit:
        def evaluate(self):
            pass

    class NoEvaluate:
        def fit(self):
            pass

    with pytest.raises(ValueError, match="fit"):
        Experiment(NoFit(), None, None)
    with pytest.raises(ValueError, match="evaluate"):
        Experiment(NoEvaluate(), None, None)


def test_export_strategies_validation(tmp_path):
    est = Recorder(RunConfig(model_dir=str(tmp_path)))
    strategy = make_export_strategy()
    Experiment(est, None, None, export_strategies=None)
    Experiment(est, None, None, export_strategies=strategy)
    Experiment(est, None, None, export_strategies=[strategy, strategy])
    with pytest.raises(ValueError, match="export_strategies"):
        Experiment(est, None, None, export_strategies="model")
    with pytest.raises(ValueError, match="export_strategies"):
        Experiment(est, None, None, export_strategies=[strategy, 3])


def test_tf_defaults_and_polyaxon_reachable(tmp_path):
    est = Recorder(RunConfig(model_dir=str(tmp_path)))
    exp = Experiment(est, None, None)
    assert exp.train_steps is None
    assert exp.eval_steps == 100
    assert exp._eval_delay_secs == 120
    assert exp._continuous_eval_throttle_secs == 60
    assert exp._min_eval_frequency == 1
    pol = Experiment.polyaxon(est, None, None)
    assert pol.eval_steps == POLYAXON_DEFAULTS["eval_steps"] == 10
    assert pol._eval_delay_secs == 0
    assert pol._train_steps_per_iteration == 100
    assert Experiment(est, None, None, eval_every_n_steps=7)._min_eval_frequency == 7
    with pytest.raises(ValueError, match="alias"):
        Experiment(est, None, None, train_monitors=[], train_hooks=[])


@pytest.mark.parametrize(("index", "delay"), [(0, None), (1, 5), (3, 15), (20, 60)])
def test_worker_start_delay_is_min_60_5_per_task(tmp_path, monkeypatch, index, delay):
    monkeypatch.setenv("TF_CONFIG", json.dumps({
        "cluster": {"ps": ["p:1"], "worker": [f"w:{i}" for i in range(21)]},
        "task": {"type": "worker", "index": index}}))
    est = Recorder(RunConfig(model_dir=str(tmp_path)))
    exp = Experiment(est, "train-fn", None, train_steps=50)
    clock = FakeClock()
    exp._sleep = clock.sleep
    assert exp.train() is est
    assert clock.sleeps == ([] if delay is None else [delay])
    name, kwargs = est.calls[-1]
    assert name == "fit" and kwargs["max_steps"] == 50 and kwargs["input_fn"] == "train-fn"


def test_delay_by_global_step_waits_8000_ln(tmp_path, monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({
        "cluster": {"ps": ["p:1"], "worker": ["w:0", "w:1", "w:2"]},
        "task": {"type": "worker", "index": 2}}))
    est = Recorder(RunConfig(model_dir=str(tmp_path)))
    exp = Experiment(est, None, None, delay_workers_by_global_step=True)
    clock = FakeClock()
    exp._sleep = clock.sleep
    exp.train()
    hooks = est.calls[-1][1]["monitors"]
    waiters = [h for h in hooks if isinstance(h, GlobalStepWaiterHook)]
    assert [w.wait_until_step for w in waiters] == [int(8000 * math.log(3))]
    assert clock.sleeps == []


def test_train_reaches_train_steps_and_returns_estimator(tmp_path):
    exp = _experiment(tmp_path, train_steps=40)
    assert exp.train(delay_secs=0) is exp.estimator
    assert checkpoints.latest_global_step(str(tmp_path)) == 40
    exp.train(delay_secs=0)  # a global target: nothing more to do
    assert checkpoints.latest_global_step(str(tmp_path)) == 40


def test_evaluate_waits_and_returns_metrics(tmp_path):
    clock = FakeClock()
    exp = _experiment(tmp_path, clock, train_steps=20, eval_steps=None, eval_delay_secs=7)
    exp.train(delay_secs=0)
    result = exp.evaluate()
    assert clock.sleeps == [7]
    assert result["global_step"] == 20 and "loss" in result and "rmse" in result
    exp.evaluate(delay_secs=0)
    assert clock.sleeps == [7]


def test_train_and_evaluate_respects_min_eval_frequency(tmp_path):
    evaluated = []

    class Spy(Hook):
        def end(self, context):
            evaluated.append(context.step)

    exp = _experiment(tmp_path, train_steps=60, eval_steps=None, min_eval_frequency=25,
                      eval_hooks=[Spy()], export_strategies=make_export_strategy("best"),
                      check_interval_secs=None)
    result, exports = exp.train_and_evaluate()
    # Checkpoints at the first step, then every 10 steps: 1, 11, ..., 51, and 60 at the end.
    # The first is evaluated at step 1; at step 26 (25 steps later) the newest checkpoint is
    # 21; at step 51, checkpoint 51; then the final pass on checkpoint 60.
    assert evaluated == [1, 21, 51, 60]
    assert result["global_step"] == 60
    assert len(exports) == 1 and (tmp_path / "export" / "best").exists()


def test_continuous_train_and_evaluate(tmp_path):
    with pytest.raises(ValueError, match="continuous_eval_predicate_fn"):
        _experiment(tmp_path).continuous_train_and_evaluate(continuous_eval_predicate_fn=3)
    exp = _experiment(tmp_path, train_steps=50, train_steps_per_iteration=20, eval_steps=None)
    seen = []

    def predicate(results, checkpoint_path=None):
        seen.append(None if results is None else results["global_step"])
        return True

    result, _ = exp.continuous_train_and_evaluate(predicate)
    assert seen == [None, 20, 40, 50]
    assert result["global_step"] == 50


def test_continuous_eval_each_checkpoint_once_and_stops_when_done(tmp_path):
    clock = FakeClock()
    exp = _experiment(tmp_path, clock, train_steps=30, eval_steps=None,
                      continuous_eval_throttle_secs=5)
    exp.train(delay_secs=0)
    steps = []

    def predicate(results):
        if results:
            steps.append(results["global_step"])
        return True

    result = exp.continuous_eval(delay_secs=0, continuous_eval_predicate_fn=predicate)
    assert steps == [30] and result["global_step"] == 30
    assert all(s <= 5 for s in clock.sleeps)


def test_continuous_eval_predicate_stops_and_validation(tmp_path):
    clock = FakeClock()
    exp = _experiment(tmp_path, clock, train_steps=None, eval_steps=None,
                      continuous_eval_throttle_secs=1)
    exp.estimator.fit(input_fn=exp._train_input_fn, steps=10)
    calls = []

    def predicate(results, checkpoint_path=None):
        calls.append(checkpoint_path)
        return len(calls) < 4

    exp.continuous_eval(delay_secs=0, continuous_eval_predicate_fn=predicate)
    assert calls[0] is None and calls[1].endswith("model.ckpt-10") and len(calls) == 4
    with pytest.raises(ValueError, match="callable"):
        exp.continuous_eval(continuous_eval_predicate_fn="yes")


def test_run_std_server_needs_cluster(tmp_path, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="Could not start server"):
        _experiment(tmp_path).run_std_server()


def test_test_schedule_trains_and_evaluates_one_step(tmp_path):
    est = Recorder(RunConfig(model_dir=str(tmp_path)))
    Experiment(est, "t", "e").test()
    assert [(c[0], c[1].get("steps")) for c in est.calls] == [("fit", 1), ("evaluate", 1)]


def test_hooks_and_export_strategy_management(tmp_path):
    est = Recorder(RunConfig(model_dir=str(tmp_path)))
    exp = Experiment(est, "t", "e")
    exp.extend_train_hooks(["h1"])
    exp.extend_eval_hooks(["e1"])
    exp.train(delay_secs=0)
    exp.evaluate(delay_secs=0)
    assert est.calls[0][1]["monitors"] == ["h1"] and est.calls[1][1]["hooks"] == ["e1"]
    first = make_export_strategy("a")
    assert exp.reset_export_strategies(first) == ()
    assert exp.reset_export_strategies() == (first,)


def test_local_run_is_deprecated_alias(tmp_path):
    exp = _experiment(tmp_path, train_steps=20, eval_steps=None)
    with pytest.warns(DeprecationWarning):
        result, _ = exp.local_run()
    assert result["global_step"] == 20


def test_continuous_eval_gives_the_predicate_an_empty_result_without_a_new_checkpoint(
        tmp_path):
    clock = FakeClock()
    exp = _experiment(tmp_path, clock, train_steps=None, eval_steps=None,
                      continuous_eval_throttle_secs=1)
    exp.estimator.fit(input_fn=exp._train_input_fn, steps=10)
    seen = []

    def predicate(results):
        seen.append(results if not results else results["global_step"])
        return len(seen) < 5

    result = exp.continuous_eval(delay_secs=0, continuous_eval_predicate_fn=predicate)
    assert seen == [None, 10, {}, {}, {}]
    assert result["global_step"] == 10  # the last evaluation, not the empty round


class _Steps(Hook):
    """An eval hook that records the global step of each evaluated checkpoint."""

    def __init__(self):
        self.steps = []

    def end(self, context):
        self.steps.append(context.step)


def test_checkpoint_and_export_evaluates_and_exports_after_every_save(tmp_path):
    spy = _Steps()
    exp = _experiment(tmp_path, save_steps=3, train_steps=8, eval_steps=None,
                      checkpoint_and_export=True, eval_hooks=[spy],
                      export_strategies=make_export_strategy("every"))
    exported = []
    export = exp._maybe_export
    exp._maybe_export = lambda result, checkpoint_path=None: exported.append(
        (result["global_step"], checkpoint_path)) or export(result, checkpoint_path)
    result, exports = exp.train_and_evaluate()
    assert spy.steps == [1, 4, 7, 8]  # after steps 1, 4, 7 and the end of training
    assert [step for step, _ in exported] == [1, 4, 7, 8]
    assert all(path.endswith(f"model.ckpt-{step}") for step, path in exported)
    assert result["global_step"] == 8 and len(exports) == 1
    assert (tmp_path / "eval_intermediate_export").is_dir()


def test_check_interval_secs_reaches_the_validation_monitor(tmp_path):
    clock = FakeClock()  # time stands still: a second look comes too soon
    spy = _Steps()
    exp = _experiment(tmp_path, clock, save_steps=5, train_steps=20, eval_steps=None,
                      eval_hooks=[spy], check_interval_secs=5)
    exp.train_and_evaluate()
    assert spy.steps == [1, 20]  # once during training, then the final evaluation
    spy.steps.clear()
    exp = _experiment(tmp_path / "b", clock, save_steps=5, train_steps=20, eval_steps=None,
                      eval_hooks=[spy], check_interval_secs=None)
    exp.train_and_evaluate()
    assert spy.steps == [1, 6, 11, 16, 20]


def _listener(stop_at=None):
    """A CheckpointSaverListener that records its calls and may ask to stop."""
    from kubelearn.estimators.session import CheckpointSaverListener

    class Listener(CheckpointSaverListener):
        def __init__(self):
            self.calls = []

        def begin(self):
            self.calls.append("begin")

        def before_save(self, session, global_step_value):
            self.calls.append(("before", global_step_value))

        def after_save(self, session, global_step_value):
            self.calls.append(("after", global_step_value))
            return global_step_value == stop_at

        def end(self, session, global_step_value):
            self.calls.append(("end", global_step_value))

    return Listener()


def test_saving_listeners_are_called_around_each_checkpoint(tmp_path):
    listener = _listener()
    exp = _experiment(tmp_path, save_steps=3, train_steps=8, saving_listeners=[listener])
    exp.train(delay_secs=0)
    assert listener.calls == ["begin", ("before", 1), ("after", 1), ("before", 4),
                              ("after", 4), ("before", 7), ("after", 7), ("before", 8),
                              ("after", 8), ("end", 8)]


def test_a_saving_listener_may_stop_training(tmp_path):
    exp = _experiment(tmp_path, save_steps=3, train_steps=50,
                      saving_listeners=[_listener(stop_at=4)])
    exp.train(delay_secs=0)
    assert checkpoints.latest_global_step(str(tmp_path)) == 4


def test_saving_listeners_must_be_listeners(tmp_path):
    with pytest.raises(ValueError, match="saving_listeners"):
        _experiment(tmp_path, saving_listeners=[lambda: None])


def test_train_on_a_cloud_cluster_without_task_type_is_value_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TF_CONFIG", json.dumps({
        "cluster": {"ps": ["p:1", "p:2"], "worker": ["w:1", "w:2"]},
        "environment": "cloud", "task": {"index": 1}}))
    est = Recorder(RunConfig(model_dir=str(tmp_path), master="w:2"))
    with pytest.raises(ValueError, match="Could not start server"):
        Experiment(est, "t", "e").train(delay_secs=0)
    assert est.calls == []


def test_train_on_a_cluster_needs_a_run_config(tmp_path):
    class Config:
        cluster_spec = {"worker": ["w:1", "w:2"]}
        master = "grpc://w:1"
        task_id = 0
        model_dir = str(tmp_path)

    est = Recorder(Config())
    with pytest.raises(ValueError, match=r"only works with tf\.contrib\.learn\.RunConfig"):
        Experiment(est, "t", "e").train(delay_secs=0)
