"""The parameter server session (a worker's, connecting to its ps over TCP) implements the
training session interface, as the local session does."""

import json

from kubelearn import RunConfig
from kubelearn.estimators.session import TrainingSession
from tests.support import session_model, start_ps


def test_both_sessions_implement_the_training_session(tmp_path, monkeypatch):
    from kubelearn.distributed.session import ParameterServerSession
    from kubelearn.estimators.local_session import LocalSession

    monkeypatch.delenv("TF_CONFIG", raising=False)
    local = LocalSession(session_model(RunConfig(model_dir=str(tmp_path))))
    assert isinstance(local, TrainingSession)
    assert local.finished is False and local.stop_requested is False
    monkeypatch.setenv("TF_CONFIG", json.dumps({
        "cluster": {"ps": ["127.0.0.1:9"], "worker": ["127.0.0.1:10", "127.0.0.1:11"]},
        "task": {"type": "worker", "index": 1}}))
    remote = ParameterServerSession(session_model(RunConfig(model_dir=str(tmp_path))))
    try:
        assert isinstance(remote, TrainingSession)
        assert remote.finished is False and remote.stop_requested is False
    finally:
        remote.close()


def test_a_restarted_chief_saves_what_the_workers_trained_while_it_was_away(tmp_path,
                                                                            monkeypatch):
    import numpy as np

    from kubelearn import checkpoints
    from kubelearn.distributed.session import ParameterServerSession

    proc, ps, _ = start_ps(tmp_path, "t")
    monkeypatch.setenv("KUBELEARN_TOKEN", "t")
    cluster = {"ps": [ps], "master": ["127.0.0.1:9"], "worker": ["127.0.0.1:10"]}
    grads = {"w": np.ones((2, 1))}  # the dtype session_model initialises with
    model_dir = tmp_path / "model"

    def session(role: str) -> ParameterServerSession:
        monkeypatch.setenv("TF_CONFIG", json.dumps({
            "cluster": cluster, "task": {"type": role, "index": 0}, "environment": "cloud"}))
        return ParameterServerSession(session_model(RunConfig(model_dir=str(model_dir))))

    try:
        chief = session("master")
        chief.start(2)
        for _ in range(3):
            chief.apply(grads)
        chief.save()
        chief.close()  # the master dies: its last checkpoint is at step 3
        assert checkpoints.latest_global_step(str(model_dir)) == 3
        worker = session("worker")
        worker.start(2)
        for _ in range(5):
            worker.apply(grads)  # the workers train on meanwhile
        worker.close()
        restarted = session("master")
        assert restarted.start(2) == 8
        restarted.close(done=True)  # saves, marks training done and stops the ps
        assert checkpoints.latest_global_step(str(model_dir)) == 8
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
