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
    assert config.num_worker_replicas == 1
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
        ("local", {"type": "worker", "index": 0}, CLUSTER, False),
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
        ({"cluster": {"worker": ["w:1"]}, "task": {"type": "ps", "index": 0}}, "'ps'"),
        ({"cluster": {"worker": ["w:1"]}, "task": {"type": "worker", "index": 3}},
         "index 3 is out of range"),
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


def test_checkpoint_secs_and_steps_exclusive():
    with pytest.raises(ValueError, match="save_checkpoints"):
        RunConfig(save_checkpoints_secs=10, save_checkpoints_steps=10)
