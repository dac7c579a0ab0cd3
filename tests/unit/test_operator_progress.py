"""Progress hook: runner reports lifted from pods, and pod parsing."""

from __future__ import annotations

import json

from kubelearn_operator.pods import pod_state
from kubelearn_operator.progress import progress_from_pods
from kubelearn_spec import names


def _pod(role: str, index: int, *, termination: str | None = None, phase: str = "Running"):
    meta = {"name": f"e-{role}-{index}", "uid": "u",
            "labels": names.replica_labels("e", role, index)}
    status = {"phase": phase, "containerStatuses": [
        {"name": "sidecar", "restartCount": 1, "state": {}},
        {"name": "kubelearn", "restartCount": 2,
         "state": {"terminated": {"exitCode": 0, "message": termination}}
         if termination is not None else {"running": {}}}]}
    return pod_state({"metadata": meta, "status": status})


def test_pod_state_reads_the_main_container() -> None:
    state = _pod("worker", 3, termination="{}", phase="Succeeded")
    assert state is not None
    assert (state.role, state.index, state.phase, state.exit_code) == ("worker", 3,
                                                                       "Succeeded", 0)
    assert state.restart_count == 3  # every container's restarts count
    assert pod_state({"metadata": {"name": "x", "labels": {}}}) is None


def test_worker_zero_reports_without_a_leader_and_garbage_is_ignored() -> None:
    pods = [_pod("worker", 1, termination=json.dumps({"step": 5})),
            _pod("worker", 0, termination=json.dumps({"step": 7}))]
    assert progress_from_pods(pods, None)["step"] == 7
    assert progress_from_pods([_pod("worker", 0, termination="not json")], None) == {}
    nan = progress_from_pods([_pod("worker", 0)], None, {"loss": "NaN", "step": True})
    assert "loss" not in nan and "step" not in nan
    assert progress_from_pods([_pod("worker", 0)], None, None) == {}


def test_polled_progress_while_training_and_termination_message_at_the_end() -> None:
    polled = {"global_step": 700, "loss": 0.5, "steps_per_sec": 90.0, "eval": {"loss": 0.6}}
    running = [_pod("master", 0), _pod("worker", 0)]
    assert progress_from_pods(running, "master", polled) == {
        "metrics": polled, "step": 700, "loss": 0.5}
    done = [_pod("master", 0, termination=json.dumps({"global_step": 900, "loss": 0.1}),
                 phase="Succeeded")]
    assert progress_from_pods(done, "master", polled)["step"] == 900


def test_pod_state_keeps_the_pod_address() -> None:
    pod = {"metadata": {"name": "e-master-0", "uid": "u",
                        "labels": names.replica_labels("e", "master", 0)},
           "status": {"phase": "Running", "podIP": "10.1.2.3"}}
    state = pod_state(pod)
    assert state is not None and state.pod_ip == "10.1.2.3"


def test_status_keeps_a_capped_copy_of_a_hostile_report() -> None:
    from kubelearn_operator.progress import MAX_STATUS_ENTRIES, cap_metrics

    report = {"global_step": 5, "loss": 0.5, "huge": "x" * 100_000, "nan": float("nan"),
              "big": 10**40, "k" * 500: 1, "eval": {"loss": 0.4, "deep": {"a": {"b": 1}}},
              "list": list(range(10_000)),
              **{f"m{i}": i for i in range(1000)}}
    capped = cap_metrics(report)
    assert len(capped) == MAX_STATUS_ENTRIES
    assert capped["global_step"] == 5 and capped["loss"] == 0.5
    assert len(capped["huge"]) == 256
    assert "nan" not in capped and "big" not in capped and "list" not in capped
    assert capped["eval"] == {"loss": 0.4}
    pods = [_pod("master", 0, termination=json.dumps(report))]
    assert len(json.dumps(progress_from_pods(pods, "master"))) < 4096


def test_oversized_or_deep_messages_are_ignored() -> None:
    deep = "[" * 10_000 + "]" * 10_000
    for text in ('{"a": ' + deep + "}", json.dumps({"x": "y" * 20_000}), "\udcff"):
        assert progress_from_pods([_pod("master", 0, termination=text)], "master") == {}


def test_token_from_secret() -> None:
    import base64

    from kubelearn_operator.progress import token_from_secret

    assert token_from_secret({"data": {"token": base64.b64encode(b"tok").decode()}}) == "tok"
    for bad in ({}, {"data": None}, {"data": {"token": "!!notbase64"}}, {"data": {"token": 5}},
                "text"):
        assert token_from_secret(bad) is None


def test_the_loss_column_shows_four_significant_digits_and_metrics_keep_all() -> None:
    polled = {"global_step": 2000, "loss": 0.00010981909567263068}
    result = progress_from_pods([_pod("master", 0)], "master", polled)
    assert result["loss"] == 0.0001098 and repr(result["loss"]) == "0.0001098"
    assert result["metrics"]["loss"] == 0.00010981909567263068
    assert progress_from_pods([_pod("master", 0)], "master", {"loss": 12345.678})["loss"] == \
        12350.0
