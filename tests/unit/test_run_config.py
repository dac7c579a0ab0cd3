import json

import pytest

from kubelearn import RunConfig


def _tf_config(monkeypatch, value):
    monkeypatch.setenv("TF_CONFIG", value if isinstance(value, str) else json.dumps(value))


CLUSTER = {"ps": ["ps0:2222", "ps1:2222"], "worker": ["w0:2222", "w1:2222", "w2:2222"],
           "master": ["m0:2222"]}


def test_single_machine_defaults(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    config = RunConfig()
    assert config.model_dir is None
    assert config.task_type is None
    assert config.task_id == 0
    assert not config.cluster_spec
    assert config.master == ""
    assert config.environment == "local"
    assert config.is_chief
    assert config.num_ps_replicas == 0
    assert config.num_worker_replicas == 0
    assert config.save_checkpoints_secs == 600
    assert config.keep_checkpoint_max == 5


def test_reads_tf_config(monkeypatch):
    _tf_config(monkeypatch, {"cluster": CLUSTER, "task": {"type": "worker", "index": 2},
                             "environment": "cloud"})
    config = RunConfig(model_dir="/m")
    assert config.task_type == "worker"
    assert config.task_id == 2
    assert config.cluster_spec.as_dict() == CLUSTER
    assert config.num_ps_replicas == 2
    assert config.num_worker_replicas == 4  # workers + masters
    assert config.master == "grpc://w2:2222"
    assert config.environment == "cloud"
    assert not config.is_chief
    assert config.model_dir == "/m"


@pytest.mark.parametrize(
    ("environment", "task", "cluster", "chief"),
    [
        ("cloud", {"type": "master", "index": 0}, CLUSTER, True),
        ("cloud", {"type": "worker", "index": 0}, CLUSTER, False),
        ("cloud", {"type": "chief", "index": 0}, {"chief": ["c:1"], "worker": ["w:1"]}, True),
        ("local", {"type": "worker", "index": 0}, {"ps": ["p:1"], "worker": ["w:1", "w:2"]},
         True),
        ("local", {"type": "worker", "index": 1}, {"ps": ["p:1"], "worker": ["w:1", "w:2"]},
         False),
        ("local", {"type": "ps", "index": 0}, {"ps": ["p:1"], "worker": ["w:1"]}, False),
        ("cloud", {"type": "worker", "index": 0}, {"ps": ["p:1"], "worker": ["w:1", "w:2"]},
         True),
        # Outside the cloud, worker 0 is the chief, even when the cluster has a master.
        ("local", {"type": "worker", "index": 0}, CLUSTER, True),
        ("local", {"type": "master", "index": 0}, CLUSTER, False),
    ],
)
def test_is_chief(monkeypatch, environment, task, cluster, chief):
    _tf_config(monkeypatch, {"cluster": cluster, "task": task, "environment": environment})
    assert RunConfig().is_chief is chief


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ({"cluster": {"worker": ["w:1"]}, "task": {"type": "ps", "index": 0}},
         "ps is not a valid task_type"),
        ({"cluster": {"worker": ["w:1"]}, "task": {"type": "worker", "index": 3}},
         "3 is not a valid task_id"),
        ({"cluster": {"worker": "w:1"}, "task": {"type": "worker", "index": 0}},
         "cluster.worker"),
        ({"cluster": {"worker": ["w1"]}, "task": {"type": "worker", "index": 0}}, "host:port"),
        ({"cluster": {"worker": ["w:1"]}, "task": {"type": "worker", "index": -1}},
         "task.index"),
    ],
)
def test_malformed_tf_config_is_a_clear_value_error(monkeypatch, value, match):
    _tf_config(monkeypatch, value)
    with pytest.raises(ValueError, match=match):
        RunConfig()


def test_replace_returns_new_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    config = RunConfig(model_dir="/a")
    other = config.replace(model_dir="/b", save_checkpoints_steps=10, tf_random_seed=3)
    assert config.model_dir == "/a" and other.model_dir == "/b"
    assert other.save_checkpoints_steps == 10 and other.save_checkpoints_secs is None
    assert other.tf_random_seed == 3
    with pytest.raises(ValueError, match="task_type"):
        config.replace(task_type="ps")


def test_replacing_both_checkpoint_intervals_is_an_error():
    with pytest.raises(ValueError, match="save_checkpoints"):
        RunConfig().replace(save_checkpoints_secs=10, save_checkpoints_steps=10)


def test_uid_is_stable_and_follows_model_dir(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    config = RunConfig(model_dir="/a", tf_random_seed=1)
    assert config.uid() == config.uid()
    moved = config.replace(model_dir="/b")
    assert moved.uid() != config.uid()
    assert moved.uid(whitelist=["model_dir"]) == config.uid(whitelist=["model_dir"])


def test_uid_default_whitelist_ignores_settings_a_user_may_change(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    one = RunConfig(tf_random_seed=1, save_summary_steps=2, save_checkpoints_steps=3,
                    save_checkpoints_secs=4, session_config={"a": 1}, keep_checkpoint_max=6,
                    keep_checkpoint_every_n_hours=7, log_step_count_steps=8)
    two = RunConfig(tf_random_seed=11, save_summary_steps=12, save_checkpoints_steps=13,
                    save_checkpoints_secs=14, session_config={"a": 2}, keep_checkpoint_max=16,
                    keep_checkpoint_every_n_hours=17, log_step_count_steps=18)
    assert one.uid() == two.uid()
    assert one.uid(whitelist=[]) != two.uid(whitelist=[])
    assert one.uid() != two.replace(model_dir="/x").uid()


def test_uid_survives_deepcopy_and_ignores_cluster_order(monkeypatch):
    import copy

    _tf_config(monkeypatch, '{"cluster": {"ps": ["h1:1", "h2:2"], "worker": ["h3:3", "h4:4"]},'
                            ' "task": {"type": "worker", "index": 1}}')
    first = RunConfig(model_dir="/m")
    assert copy.deepcopy(first).uid() == first.uid()
    _tf_config(monkeypatch, '{"cluster": {"worker": ["h3:3", "h4:4"], "ps": ["h1:1", "h2:2"]},'
                            ' "task": {"type": "worker", "index": 1}}')
    assert RunConfig(model_dir="/m").uid() == first.uid()
    _tf_config(monkeypatch, {"cluster": {"ps": ["h1:1"], "worker": ["h3:3", "h4:4"]},
                             "task": {"type": "worker", "index": 1}})
    assert RunConfig(model_dir="/m").uid() != first.uid()


def test_model_dir_from_tf_config(monkeypatch):
    _tf_config(monkeypatch, {"model_dir": "/from/env"})
    assert RunConfig().model_dir == "/from/env"
    assert RunConfig(model_dir="/from/env").model_dir == "/from/env"
    with pytest.raises(ValueError, match=r"`model_dir` provided in RunConfig .* must have the "
                                         r"same value .* in TF_CONFIG"):
        RunConfig(model_dir="/from/env/sub")


def test_explicit_master_is_not_checked_against_the_cluster(monkeypatch):
    _tf_config(monkeypatch, {"cluster": {"ps": ["p:0"], "job": ["j:1", "j:2", "j:0"]},
                             "task": {"type": "worker", "index": 2}})
    config = RunConfig(master="j:0", evaluation_master="j:1")
    assert config.master == "j:0" and config.evaluation_master == "j:1"
    assert config.task_type == "worker" and config.task_id == 2
    assert config.num_ps_replicas == 1
    assert config.num_worker_replicas == 0
    assert not config.is_chief


def test_no_workers_means_zero_worker_replicas(monkeypatch):
    _tf_config(monkeypatch, {"cluster": {"ps": ["p:0", "p:1"]}, "task": {"type": "ps"}})
    assert RunConfig().num_worker_replicas == 0


def test_chief_depends_on_environment(monkeypatch):
    cluster = {"ps": ["p:1"], "master": ["m:1"], "worker": ["w:1", "w:2"]}
    for environment, task, chief in [
        ("cloud", "master", True), ("cloud", "worker", False),
        ("random", "master", False), ("random", "worker", True),
    ]:
        _tf_config(monkeypatch, {"cluster": cluster, "task": {"type": task, "index": 0},
                                 "environment": environment})
        assert RunConfig().is_chief is chief, (environment, task)
    del cluster["master"]
    _tf_config(monkeypatch, {"cluster": cluster, "task": {"type": "worker", "index": 0},
                             "environment": "random"})
    assert RunConfig().is_chief


def test_task_errors_have_tensorflow_messages(monkeypatch):
    cluster = {"ps": ["p:1", "p:2"], "worker": ["w:3", "w:4", "w:5"]}
    _tf_config(monkeypatch, {"cluster": cluster, "task": {"type": "not_in_cluster_spec"}})
    with pytest.raises(ValueError, match="not_in_cluster_spec is not a valid task"):
        RunConfig()
    _tf_config(monkeypatch, {"cluster": cluster, "task": {"type": "worker", "index": 3}})
    with pytest.raises(ValueError, match="3 is not a valid task_id"):
        RunConfig()


def test_both_checkpoint_intervals_accepted_as_in_tensorflow(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    config = RunConfig(save_checkpoints_steps=3, save_checkpoints_secs=4)
    assert (config.save_checkpoints_steps, config.save_checkpoints_secs) == (3, 4)
    assert config.replace(model_dir="/m").save_checkpoints_steps == 3
    assert config.replace(save_checkpoints_steps=5).save_checkpoints_secs is None
