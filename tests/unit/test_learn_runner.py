"""Every row of the learn_runner contract: checks in order, default schedules, aliases."""

import json

import pytest

from kubelearn import Experiment, HParams, RunConfig, learn_runner, run_experiment
from kubelearn.learn_runner import ExperimentFnError


class FakeEstimator:
    def __init__(self, config=None):
        self.config = config or RunConfig(model_dir="/tmp/fake")
        self.model_dir = self.config.model_dir

    def fit(self, input_fn=None, steps=None, max_steps=None, monitors=None):
        return self

    def evaluate(self, input_fn=None, steps=None, hooks=None, name=None, checkpoint_path=None):
        return {"global_step": 0, "loss": 0.0}


class NamedScheduleExperiment(Experiment):
    """Schedules return their own names, so the test sees which one ran."""

    def train(self, delay_secs=None):
        return "train"

    def train_and_evaluate(self):
        return "train_and_evaluate"

    def run_std_server(self):
        return "run_std_server"

    def continuous_eval(self, *args, **kwargs):
        return "continuous_eval"

    def evaluate(self, delay_secs=None, name=None):
        return "evaluate"

    not_callable = 42


def _experiment_fn(run_config, hparams):
    return NamedScheduleExperiment(FakeEstimator(run_config), None, None)


def _with_tf_config(monkeypatch, task_type, index=0, cluster=None):
    cluster = cluster or {"ps": ["p:1"], "worker": ["w:1", "w:2"], "master": ["m:1"],
                          "chief": ["c:1"], "evaluator": ["e:1"]}
    task = {"type": task_type, "index": index} if task_type else {}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": task,
                                                "environment": "cloud"}))


def test_both_output_dir_and_run_config_is_value_error():
    with pytest.raises(ValueError, match="both"):
        learn_runner.run(_experiment_fn, output_dir="/o", run_config=RunConfig(model_dir="/m"))


def test_neither_output_dir_nor_run_config_is_value_error():
    with pytest.raises(ValueError, match=r"output_dir.*run_config"):
        learn_runner.run(_experiment_fn)


def test_run_config_without_model_dir_is_value_error():
    with pytest.raises(ValueError, match="model_dir"):
        learn_runner.run(_experiment_fn, run_config=RunConfig())


def test_hparams_without_run_config_is_value_error():
    with pytest.raises(ValueError, match="hparams"):
        learn_runner.run(lambda output_dir: None, output_dir="/o", hparams=HParams(a=1))


def test_check_order_model_dir_before_hparams_before_build():
    calls = []

    def fn(*args, **kwargs):
        calls.append(args)
        return "not an experiment"

    # 1 before 2: both set wins over the empty model_dir.
    with pytest.raises(ValueError, match="both"):
        learn_runner.run(fn, output_dir="/o", run_config=RunConfig())
    # 2 is checked before the builder is called.
    with pytest.raises(ValueError, match="model_dir"):
        learn_runner.run(fn, run_config=RunConfig(), hparams=HParams(a=1))
    assert calls == []


def test_builder_forms_and_non_experiment_type_error():
    seen = {}

    def new_form(run_config, hparams):
        seen["new"] = (run_config, hparams)
        return NamedScheduleExperiment(FakeEstimator(run_config), None, None)

    def old_form(output_dir):
        seen["old"] = output_dir
        return NamedScheduleExperiment(FakeEstimator(), None, None)

    config, hp = RunConfig(model_dir="/m"), HParams(a=1)
    learn_runner.run(new_form, run_config=config, hparams=hp, schedule="train")
    assert seen["new"] == (config, hp)
    learn_runner.run(new_form, run_config=config, schedule="train")
    assert seen["new"] == (config, None)
    learn_runner.run(old_form, output_dir="/out", schedule="train")
    assert seen["old"] == "/out"
    with pytest.raises(TypeError, match="Experiment"):
        learn_runner.run(lambda c, h: object(), run_config=config)
    assert issubclass(ExperimentFnError, TypeError)


@pytest.mark.parametrize(
    ("task_type", "expected"),
    [
        ("ps", "run_std_server"),
        ("worker", "train"),
        ("master", "train_and_evaluate"),
        ("chief", "train_and_evaluate"),
        ("evaluator", "continuous_eval"),
    ],
)
def test_default_schedule_by_task_type(monkeypatch, task_type, expected):
    _with_tf_config(monkeypatch, task_type)
    assert learn_runner.run(_experiment_fn, run_config=RunConfig(model_dir="/m")) == expected


def test_single_machine_runs_train_and_evaluate(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert learn_runner.run(_experiment_fn, run_config=RunConfig(model_dir="/m")) == \
        "train_and_evaluate"
    monkeypatch.setenv("TF_CONFIG", json.dumps({"task": {}}))
    assert learn_runner.run(_experiment_fn, run_config=RunConfig(model_dir="/m")) == \
        "train_and_evaluate"


def test_cluster_without_task_type_must_specify_schedule(monkeypatch):
    _with_tf_config(monkeypatch, None)
    with pytest.raises(ValueError, match="Must specify a schedule"):
        learn_runner.run(_experiment_fn, run_config=RunConfig(model_dir="/m"))


def test_unknown_task_type_has_no_default(monkeypatch):
    _with_tf_config(monkeypatch, "sidecar", cluster={"sidecar": ["s:1"], "worker": ["w:1"]})
    with pytest.raises(ValueError, match="No default schedule for task type: sidecar"):
        learn_runner.run(_experiment_fn, run_config=RunConfig(model_dir="/m"))


def test_unknown_schedule_names_it_and_lists_valid(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="non-existent task bogus") as info:
        learn_runner.run(_experiment_fn, run_config=RunConfig(model_dir="/m"), schedule="bogus")
    assert "train_and_evaluate" in str(info.value)


def test_non_callable_schedule_is_type_error(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(TypeError, match="non-callable member not_callable"):
        learn_runner.run(_experiment_fn, run_config=RunConfig(model_dir="/m"),
                         schedule="not_callable")


def test_aliases_serve_and_local_run(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    config = RunConfig(model_dir="/m")
    assert learn_runner.run(_experiment_fn, run_config=config, schedule="serve") == \
        "run_std_server"


def test_returns_schedule_result_and_polyaxon_form():
    assert run_experiment(lambda output_dir: NamedScheduleExperiment(FakeEstimator(), None, None),
                          "/o", schedule="evaluate") == "evaluate"
    with pytest.raises(ValueError, match="output directory"):
        run_experiment(lambda output_dir: None, "")


class _NotARunConfig:
    model_dir = "/m"


def test_run_config_that_is_not_a_run_config_is_value_error():
    with pytest.raises(ValueError, match=r"`run_config` must be `tf\.contrib\.learn\.RunConfig`"):
        learn_runner.run(_experiment_fn, run_config=_NotARunConfig())


@pytest.mark.parametrize("hparams", [{"learning_rate": 0.1}, "learning_rate=0.1", 3])
def test_hparams_that_are_not_hparams_is_value_error(hparams):
    built = []

    def experiment_fn(run_config, hp):
        built.append(hp)
        return _experiment_fn(run_config, hp)

    with pytest.raises(ValueError, match="`hparams` must be `HParams` instance"):
        learn_runner.run(experiment_fn, run_config=RunConfig(model_dir="/m"), hparams=hparams,
                         schedule="train")
    assert built == []


def test_estimator_with_another_run_config_is_runtime_error(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)

    def own_config(run_config, hparams):
        return NamedScheduleExperiment(FakeEstimator(RunConfig(model_dir="/elsewhere")),
                                       None, None)

    with pytest.raises(RuntimeError, match="`RunConfig` instance is expected to be used"):
        learn_runner.run(own_config, run_config=RunConfig(model_dir="/m"), schedule="train")


def test_estimator_without_a_config_is_runtime_error():
    class NoConfig(FakeEstimator):
        config = None

        def __init__(self):
            pass

    def no_config(run_config, hparams):
        return NamedScheduleExperiment(NoConfig(), None, None)

    with pytest.raises(RuntimeError, match="Pass `run_config` argument"):
        learn_runner.run(no_config, run_config=RunConfig(model_dir="/m"), schedule="train")


def test_estimator_may_change_whitelisted_properties_of_the_run_config():
    def tuned(run_config, hparams):
        config = run_config.replace(save_checkpoints_steps=7, tf_random_seed=3,
                                    keep_checkpoint_max=2)
        return NamedScheduleExperiment(FakeEstimator(config), None, None)

    assert learn_runner.run(tuned, run_config=RunConfig(model_dir="/m"),
                            schedule="train") == "train"
