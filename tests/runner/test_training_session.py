"""The parameter server session (a worker's, connecting to its ps over TCP) implements the
training session interface, as the local session does."""

import json

from kubelearn import RunConfig
from kubelearn.estimators.session import TrainingSession
from tests.support import session_model


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
