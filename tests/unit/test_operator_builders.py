"""Pods, services, secret, PodGroup and TF_CONFIG built from a spec."""

from __future__ import annotations

import base64
import json

from kubelearn_operator.builders import (
    PodBuilder,
    build_model_claim,
    build_pod,
    build_podgroup,
    build_secret,
    build_service,
)
from kubelearn_operator.experiment_plan import parse_spec
from kubelearn_operator.objects import ExperimentRef
from kubelearn_spec import contract, names
from kubelearn_spec.tfconfig import cluster_spec, service_address, tf_config
from tests.experiment_cases import MINIMAL

REF = ExperimentRef("linear", "ml", "uid-1")


def _spec(spec=None, name="linear"):
    return parse_spec(spec or MINIMAL, name=name, namespace="ml", default_image="runner:1")


def _env(container):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_cluster_spec_addresses_and_evaluator_left_out() -> None:
    cluster = cluster_spec({"ps": 1, "worker": 2, "master": 1, "evaluator": 1},
                           service_address("linear", "ml"))
    assert cluster == {
        "master": ["linear-master-0.ml.svc:2222"],
        "ps": ["linear-ps-0.ml.svc:2222"],
        "worker": ["linear-worker-0.ml.svc:2222", "linear-worker-1.ml.svc:2222"],
    }
    assert cluster_spec({"worker": 1}, service_address("e", "n", "cluster.local")) == {
        "worker": ["e-worker-0.n.svc.cluster.local:2222"]}
    assert json.loads(tf_config(cluster, "worker", 1)) == {
        "cluster": cluster, "task": {"type": "worker", "index": 1}, "environment": "cloud"}


def test_pod_of_the_minimal_form() -> None:
    pod = build_pod(REF, _spec(), "worker", 1)
    meta = pod["metadata"]
    assert meta["name"] == "linear-worker-1" and meta["namespace"] == "ml"
    assert meta["labels"] == {names.LABEL_EXPERIMENT: "linear", names.LABEL_ROLE: "worker",
                              names.LABEL_INDEX: "1"}
    assert meta["ownerReferences"] == [{
        "apiVersion": "kubelearn.dev/v1alpha1", "kind": "Experiment", "name": "linear",
        "uid": "uid-1", "controller": True, "blockOwnerDeletion": True}]
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never"  # ExitCode restarts are the operator's
    assert spec["enableServiceLinks"] is False
    (container,) = spec["containers"]
    assert container["name"] == "kubelearn" and container["image"] == "runner:1"
    assert container["command"] == ["kubelearn", "run", "--experiment-fn",
                                    "kubelearn.examples.linear:experiment_fn"]
    assert container["ports"][0] == {"name": "kubelearn-port", "containerPort": 2222,
                                     "protocol": "TCP"}
    env = _env(container)
    assert json.loads(env["TF_CONFIG"])["task"] == {"type": "worker", "index": 1}
    assert json.loads(env["TF_CONFIG"])["cluster"]["worker"][1] == "linear-worker-1.ml.svc:2222"
    assert env["KUBELEARN_EXPERIMENT"] == "linear"
    assert "KUBELEARN_ROLE" not in env and "KUBELEARN_INDEX" not in env  # TF_CONFIG says it
    assert json.loads(env["KUBELEARN_HPARAMS"]) == {"learning_rate": 0.05, "train_steps": 2000}
    assert env["KUBELEARN_MODEL_DIR"] == "/tmp/kubelearn/ml/linear"
    assert env["KUBELEARN_TOKEN"] == {"secretKeyRef": {"name": "linear-kubelearn-token",
                                                       "key": "token"}}
    # The runner's final word lands in the pod status; a crash falls back to the log tail.
    assert env["KUBELEARN_TERMINATION_LOG"] == container["terminationMessagePath"] == \
        "/dev/termination-log"
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_master_is_labelled_job_role_master() -> None:
    pod = build_pod(REF, _spec(), "master", 0)
    assert pod["metadata"]["labels"][names.LABEL_JOB_ROLE] == "master"
    assert names.LABEL_JOB_ROLE not in build_pod(REF, _spec(), "ps", 0)["metadata"]["labels"]


def test_template_is_kept_and_ours_wins_on_conflicts() -> None:
    spec = _spec({
        "experimentFn": "m:f", "schedule": "train",
        "replicaSpecs": {"worker": {"replicas": 1, "restartPolicy": "OnFailure", "template": {
            "metadata": {"labels": {"team": "a", names.LABEL_ROLE: "spoof"},
                         "annotations": {"note": "x"}},
            "spec": {"nodeSelector": {"gpu": "yes"}, "containers": [
                {"name": "sidecar", "image": "side:1"},
                {"name": "kubelearn", "image": "custom:3",
                 "env": [{"name": "EXTRA", "value": "1"},
                         {"name": "KUBELEARN_EXPERIMENT", "value": "spoof"}],
                 "resources": {"limits": {"cpu": "1"}}}]}}}}})
    pod = build_pod(REF, spec, "worker", 0, restarts=2)
    assert pod["metadata"]["labels"]["team"] == "a"
    assert pod["metadata"]["labels"][names.LABEL_ROLE] == "worker"
    assert pod["metadata"]["annotations"] == {"note": "x", names.ANNOTATION_RESTARTS: "2"}
    assert pod["spec"]["nodeSelector"] == {"gpu": "yes"}
    assert pod["spec"]["restartPolicy"] == "OnFailure"
    sidecar, main = pod["spec"]["containers"]
    assert "env" not in sidecar and sidecar["image"] == "side:1"
    assert main["image"] == "custom:3" and main["resources"] == {"limits": {"cpu": "1"}}
    assert main["command"][-2:] == ["--schedule", "train"]
    env = _env(main)
    assert env["EXTRA"] == "1" and env["KUBELEARN_EXPERIMENT"] == "linear"
    assert [e["name"] for e in main["env"]].count("KUBELEARN_EXPERIMENT") == 1
    # The builder never mutates the spec's template.
    assert spec.replicas["worker"].template["metadata"]["labels"][names.LABEL_ROLE] == "spoof"


def test_pods_meet_the_restricted_pod_security_standard_by_default() -> None:
    pod = build_pod(REF, _spec({**MINIMAL, "storage": {"ephemeral": True}}), "worker", 0)
    spec = pod["spec"]
    assert spec["securityContext"] == {"runAsNonRoot": True,
                                       "seccompProfile": {"type": "RuntimeDefault"}}
    (main,) = spec["containers"]
    assert main["securityContext"] == {"allowPrivilegeEscalation": False,
                                       "readOnlyRootFilesystem": True,
                                       "capabilities": {"drop": ["ALL"]}}
    # The image is read-only: the runner's scratch space (model directory) is an emptyDir.
    assert {"name": "kubelearn-tmp", "mountPath": "/tmp"} in main["volumeMounts"]
    assert {"name": "kubelearn-tmp", "emptyDir": {}} in spec["volumes"]


def test_template_security_settings_win_key_by_key() -> None:
    spec = _spec({"experimentFn": "m:f", "replicaSpecs": {"worker": {"template": {"spec": {
        "securityContext": {"runAsUser": 1000, "runAsNonRoot": False},
        "initContainers": [{"name": "fetch", "image": "busybox"}],
        "volumes": [{"name": "scratch", "emptyDir": {"medium": "Memory"}}],
        "containers": [{"name": "kubelearn",
                        "securityContext": {"readOnlyRootFilesystem": False},
                        "volumeMounts": [{"name": "scratch", "mountPath": "/data"}]}]}}}}})
    pod = build_pod(REF, spec, "worker", 0)["spec"]
    assert pod["securityContext"] == {"runAsNonRoot": False, "runAsUser": 1000,
                                      "seccompProfile": {"type": "RuntimeDefault"},
                                      "fsGroup": 65532, "fsGroupChangePolicy": "OnRootMismatch"}
    # Containers other than the main one are left as written.
    assert pod["initContainers"][0] == {"name": "fetch", "image": "busybox"}
    main = pod["containers"][0]
    assert main["securityContext"]["readOnlyRootFilesystem"] is False
    # A writable image needs no scratch volume; the user's mounts are kept as they are.
    assert main["volumeMounts"] == [
        {"name": "scratch", "mountPath": "/data"},
        {"name": "kubelearn-model", "mountPath": "/tmp/kubelearn/ml/linear"}]
    assert pod["volumes"] == [
        {"name": "scratch", "emptyDir": {"medium": "Memory"}},
        {"name": "kubelearn-model", "persistentVolumeClaim": {"claimName": "linear-model"}}]


def test_pull_policy_applies_unless_the_template_sets_one() -> None:
    assert "imagePullPolicy" not in build_pod(REF, _spec(), "worker", 0)["spec"]["containers"][0]
    builder = PodBuilder(REF, _spec(), image_pull_policy="Never")
    assert builder.pod("worker", 0)["spec"]["containers"][0]["imagePullPolicy"] == "Never"
    spec = _spec({"experimentFn": "m:f", "replicaSpecs": {"worker": {"template": {"spec": {
        "containers": [{"name": "kubelearn", "imagePullPolicy": "Always"}]}}}}})
    pod = PodBuilder(REF, spec, image_pull_policy="Never").pod("worker", 0)
    assert pod["spec"]["containers"][0]["imagePullPolicy"] == "Always"


def test_user_command_is_kept() -> None:
    spec = _spec({"experimentFn": "m:f", "replicaSpecs": {"worker": {"template": {"spec": {
        "containers": [{"name": "kubelearn", "command": ["python", "-m", "x"]}]}}}}})
    assert build_pod(REF, spec, "worker", 0)["spec"]["containers"][0]["command"] == [
        "python", "-m", "x"]


def test_headless_service_publishes_not_ready_addresses() -> None:
    svc = build_service(REF, "ps", 0)
    assert svc["metadata"]["name"] == "linear-ps-0"
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"] == {names.LABEL_EXPERIMENT: "linear",
                                       names.LABEL_ROLE: "ps", names.LABEL_INDEX: "0"}
    assert svc["spec"]["ports"] == [{"name": "kubelearn-port", "port": 2222,
                                     "targetPort": 2222, "protocol": "TCP"}]
    assert svc["metadata"]["ownerReferences"][0]["uid"] == "uid-1"


def test_secret_carries_the_token() -> None:
    secret = build_secret(REF, "s3cret")
    assert secret["metadata"]["name"] == "linear-kubelearn-token"
    assert base64.b64decode(secret["data"]["token"]) == b"s3cret"


def test_gang_scheduling_podgroup_and_pod_fields() -> None:
    spec = _spec({**MINIMAL, "runPolicy": {"schedulingPolicy": {
        "minAvailable": 3, "queue": "research", "priorityClass": "high",
        "scheduleTimeoutSeconds": 30}}})
    group = build_podgroup(REF, spec)
    assert group["apiVersion"] == "scheduling.x-k8s.io/v1alpha1" and group["kind"] == "PodGroup"
    assert group["spec"] == {"minMember": 3, "scheduleTimeoutSeconds": 30}
    assert group["metadata"]["labels"]["kubelearn.dev/queue"] == "research"
    pod = build_pod(REF, spec, "worker", 0, gang=True)
    assert pod["spec"]["schedulerName"] == "scheduler-plugins-scheduler"
    assert pod["spec"]["priorityClassName"] == "high"
    assert pod["metadata"]["labels"]["scheduling.x-k8s.io/pod-group"] == "linear"
    plain = build_pod(REF, spec, "worker", 0, gang=False)
    assert "schedulerName" not in plain["spec"]
    default_min = _spec({**MINIMAL, "runPolicy": {"schedulingPolicy": {}}})
    assert build_podgroup(REF, default_min)["spec"]["minMember"] == 4


def _kubelet_expand(value: str, env: dict[str, str]) -> str:
    """The kubelet's $(VAR) expansion from variables defined earlier (enough for the test)."""
    import re

    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)),
                  value)


def test_large_cluster_spec_comes_from_one_configmap() -> None:
    from kubelearn_operator.builders import PodBuilder

    spec = _spec({"experimentFn": "m:f", "replicas": {"ps": 2, "worker": 100}})
    builder = PodBuilder(REF, spec, inline_max=64)
    configmap = builder.configmap()
    assert configmap is not None
    assert configmap["metadata"]["name"] == "linear-kubelearn-cluster"
    assert configmap["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    pod = builder.pod("worker", 7)
    env = pod["spec"]["containers"][0]["env"]
    order = [e["name"] for e in env]
    assert order.index("KUBELEARN_CLUSTER_SPEC") < order.index("TF_CONFIG")
    assert env[order.index("KUBELEARN_CLUSTER_SPEC")]["valueFrom"] == {"configMapKeyRef": {
        "name": "linear-kubelearn-cluster", "key": "cluster"}}
    raw = env[order.index("TF_CONFIG")]["value"]
    assert len(raw) < 200  # the pod no longer carries the whole cluster
    seen = _kubelet_expand(raw, {"KUBELEARN_CLUSTER_SPEC": configmap["data"]["cluster"]})
    counts = {"ps": 2, "worker": 100}
    assert json.loads(seen) == {"cluster": cluster_spec(counts, service_address("linear", "ml")),
                                "task": {"type": "worker", "index": 7},
                                "environment": "cloud"}
    small = PodBuilder(REF, _spec(), inline_max=64)
    assert small.configmap() is None
    assert "$(" not in _env(small.pod("worker", 0)["spec"]["containers"][0])["TF_CONFIG"]


def test_secret_carries_a_fresh_curve_key_and_pods_read_it() -> None:
    first, second = build_secret(REF, "s3cret"), build_secret(REF, "s3cret")
    key = base64.b64decode(first["data"][contract.CURVE_KEY]).decode()
    assert len(bytes.fromhex(key)) == 32
    assert first["data"][contract.CURVE_KEY] != second["data"][contract.CURVE_KEY]
    given = build_secret(REF, "s3cret", "ab" * 32)
    assert base64.b64decode(given["data"][contract.CURVE_KEY]) == b"ab" * 32
    plain = build_pod(REF, _spec(), "ps", 0)
    assert "KUBELEARN_CURVE_KEY" not in {e["name"] for e in plain["spec"]["containers"][0]["env"]}
    pod = PodBuilder(REF, _spec(), encrypt_wire=True).pod("ps", 0)
    env = {e["name"]: e.get("valueFrom") for e in pod["spec"]["containers"][0]["env"]}
    assert env["KUBELEARN_CURVE_KEY"] == {"secretKeyRef": {
        "name": "linear-kubelearn-token", "key": contract.CURVE_KEY, "optional": True}}


def _mounts(pod):
    main = pod["spec"]["containers"][0]
    volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
    return {m["mountPath"]: volumes[m["name"]] for m in main.get("volumeMounts") or []}


def test_every_replica_mounts_the_model_claim_at_the_model_dir() -> None:
    spec = _spec({**MINIMAL, "replicas": {"ps": 1, "worker": 1, "master": 1, "evaluator": 1}})
    builder = PodBuilder(REF, spec)
    for role in ("ps", "worker", "master", "evaluator"):
        pod = builder.pod(role, 0)
        mounts = _mounts(pod)
        assert mounts["/tmp/kubelearn/ml/linear"] == {
            "name": "kubelearn-model", "persistentVolumeClaim": {"claimName": "linear-model"}}
        assert _env(pod["spec"]["containers"][0])["KUBELEARN_MODEL_DIR"] == \
            "/tmp/kubelearn/ml/linear"
        # The runner image's user (65532) writes it through its group.
        assert pod["spec"]["securityContext"]["fsGroup"] == contract.RUNNER_GID == 65532


def test_an_existing_claim_is_mounted_at_the_spec_model_dir() -> None:
    spec = _spec({**MINIMAL, "modelDir": "/models/run1",
                  "storage": {"persistentVolumeClaim": {"claimName": "team-models"}}})
    mounts = _mounts(build_pod(REF, spec, "master", 0))
    assert mounts["/models/run1"]["persistentVolumeClaim"] == {"claimName": "team-models"}


def test_an_ephemeral_model_dir_mounts_no_claim() -> None:
    pod = build_pod(REF, _spec({**MINIMAL, "storage": {"ephemeral": True}}), "worker", 0)
    assert not any("persistentVolumeClaim" in v for v in pod["spec"]["volumes"])
    assert "fsGroup" not in pod["spec"]["securityContext"]


def test_a_template_mount_at_the_model_dir_wins() -> None:
    spec = _spec({"experimentFn": "m:f", "modelDir": "/data", "replicaSpecs": {"worker": {
        "template": {"spec": {"volumes": [{"name": "nfs", "nfs": {"server": "s", "path": "/"}}],
                              "containers": [{"name": "kubelearn", "volumeMounts": [
                                  {"name": "nfs", "mountPath": "/data/"}]}]}}}}})
    mounts = _mounts(build_pod(REF, spec, "worker", 0))
    assert mounts["/data/"]["name"] == "nfs"
    assert "/data" not in mounts


def test_model_claim_outlives_the_experiment_unless_asked() -> None:
    claim = build_model_claim(REF, _spec())
    assert claim["metadata"] == {"name": "linear-model", "namespace": "ml",
                                 "labels": {names.LABEL_EXPERIMENT: "linear"}}
    assert claim["spec"] == {"accessModes": ["ReadWriteOnce"],
                             "resources": {"requests": {"storage": "1Gi"}}}
    owned = build_model_claim(REF, _spec({**MINIMAL, "storage": {
        "size": "3Gi", "storageClassName": "fast", "accessModes": ["ReadWriteMany"],
        "deleteWithExperiment": True}}))
    assert owned["metadata"]["ownerReferences"] == [REF.owner_reference()]
    assert owned["spec"] == {"accessModes": ["ReadWriteMany"], "storageClassName": "fast",
                             "resources": {"requests": {"storage": "3Gi"}}}


def test_tensorboard_reads_the_claim_read_only_and_is_owned_by_the_experiment() -> None:
    from kubelearn_operator.builders import TensorBoard, build_tensorboard

    spec = _spec({**MINIMAL, "tensorboard": True})
    board = build_tensorboard(REF, spec, "tb:1", "Never")
    deployment, service = board.deployment, board.service
    assert deployment["metadata"]["name"] == service["metadata"]["name"] == "linear-tensorboard"
    assert deployment["metadata"]["ownerReferences"] == [REF.owner_reference()]
    assert service["metadata"]["ownerReferences"] == [REF.owner_reference()]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "tb:1" and container["imagePullPolicy"] == "Never"
    assert container["args"] == ["--logdir", "/tmp/kubelearn/ml/linear", "--bind_all",
                                 "--port", "6006"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    model = mounts["/tmp/kubelearn/ml/linear"]
    assert model["readOnly"] is True
    assert volumes[model["name"]]["persistentVolumeClaim"] == {"claimName": "linear-model",
                                                               "readOnly": True}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    # Not a replica: no role label, so the operator's caches never count it as one.
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert names.LABEL_ROLE not in labels and names.LABEL_ROLE not in service["metadata"]["labels"]
    assert service["spec"]["selector"] == labels
    assert service["spec"]["ports"][0]["port"] == 6006
    assert TensorBoard.url(REF) == "http://linear-tensorboard.ml.svc:6006"


def test_a_url_model_dir_mounts_nothing_and_passes_the_secret_as_environment() -> None:
    spec = _spec({**MINIMAL, "modelDir": "s3://models/run1",
                  "storage": {"secretName": "s3-credentials"}})
    for role in ("ps", "worker", "master"):
        pod = build_pod(REF, spec, role, 0)
        assert not any("persistentVolumeClaim" in v for v in pod["spec"]["volumes"])
        assert "fsGroup" not in pod["spec"]["securityContext"]
        (main,) = pod["spec"]["containers"]
        assert _env(main)["KUBELEARN_MODEL_DIR"] == "s3://models/run1"
        assert main["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
    plain = build_pod(REF, _spec({**MINIMAL, "modelDir": "s3://models/run1"}), "worker", 0)
    assert "envFrom" not in plain["spec"]["containers"][0]


def test_a_template_envfrom_is_kept_beside_the_storage_secret() -> None:
    spec = _spec({"experimentFn": "m:f", "modelDir": "s3://m", "storage": {
        "secretName": "keys"}, "replicaSpecs": {"worker": {"template": {"spec": {
            "containers": [{"name": "kubelearn", "envFrom": [
                {"configMapRef": {"name": "tuning"}}]}]}}}}})
    (main,) = build_pod(REF, spec, "worker", 0)["spec"]["containers"]
    assert main["envFrom"] == [{"configMapRef": {"name": "tuning"}},
                               {"secretRef": {"name": "keys"}}]


def test_tensorboard_over_a_url_reads_it_with_the_same_credentials() -> None:
    from kubelearn_operator.builders import build_tensorboard

    spec = _spec({**MINIMAL, "modelDir": "s3://models/run1", "tensorboard": True,
                  "storage": {"secretName": "s3-credentials"}})
    pod = build_tensorboard(REF, spec, "tb:1").deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"][:2] == ["--logdir", "s3://models/run1"]
    assert not any("persistentVolumeClaim" in v for v in pod.get("volumes", []))
    assert all(m["mountPath"] != "s3://models/run1" for m in container.get("volumeMounts", []))
    assert container["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
    # TensorBoard lists the directory again for new runs: no listing cached for good.
    assert container["env"] == [{"name": "FSSPEC_S3", "value": '{"use_listings_cache": false}'}]


# -- a user's own TensorFlow image (TFJob's conventions) -------------------------------------

def _template_spec(*containers, fn="m:f", **pod):
    spec = {"replicaSpecs": {"worker": {"template": {"spec": {
        **pod, "containers": [dict(c) for c in containers]}}}}}
    if fn:
        spec["experimentFn"] = fn
    return _spec(spec)


SIDECAR = {"name": "proxy", "image": "proxy:1", "args": ["--listen", ":9000"],
           "ports": [{"containerPort": 9000}]}
TF = {"name": "tensorflow", "image": "tensorflow/tensorflow:2.15.0",
      "command": ["python", "/code/train.py"]}


def test_the_container_named_tensorflow_is_the_main_one_and_a_sidecar_is_left_as_written(
        ) -> None:
    pod = build_pod(REF, _template_spec(SIDECAR, {"name": "kubelearn", "image": "x:1"}, TF,
                                        fn=None), "worker", 0)
    sidecar, other, main = pod["spec"]["containers"]
    assert sidecar == SIDECAR and other == {"name": "kubelearn", "image": "x:1"}
    assert json.loads(_env(main)["TF_CONFIG"])["task"] == {"type": "worker", "index": 0}
    assert main["ports"][0]["containerPort"] == contract.PORT
    assert main["command"] == TF["command"] and main["image"] == TF["image"]
    assert main["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert {"name": "kubelearn-model", "mountPath": "/tmp/kubelearn/ml/linear"} in \
        main["volumeMounts"]


def test_the_only_container_is_the_main_one_whatever_its_name() -> None:
    pod = build_pod(REF, _template_spec({"name": "trainer", "image": "mine:1"}, fn=None),
                    "worker", 0)
    (main,) = pod["spec"]["containers"]
    assert "TF_CONFIG" in _env(main) and main["name"] == "trainer"


def test_without_an_experiment_fn_nothing_is_injected_and_the_entrypoint_runs() -> None:
    pod = build_pod(REF, _template_spec({"name": "tensorflow", "image": "mine:1"}, fn=None),
                    "worker", 0)
    (main,) = pod["spec"]["containers"]
    assert "command" not in main and "args" not in main


def test_with_an_experiment_fn_a_main_container_without_a_command_runs_the_runner() -> None:
    pod = build_pod(REF, _template_spec(SIDECAR, {"name": "tensorflow", "image": "mine:1"}),
                    "worker", 0)
    sidecar, main = pod["spec"]["containers"]
    assert main["command"] == ["kubelearn", "run", "--experiment-fn", "m:f"]
    assert sidecar == SIDECAR


def test_a_user_image_gets_only_what_cannot_keep_it_from_starting() -> None:
    pod = build_pod(REF, _template_spec(TF, fn=None), "worker", 0)["spec"]
    assert pod["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"},
                                      "fsGroup": 65532, "fsGroupChangePolicy": "OnRootMismatch"}
    (main,) = pod["containers"]
    assert main["securityContext"] == {"allowPrivilegeEscalation": False,
                                       "capabilities": {"drop": ["ALL"]}}
    assert not any(m["mountPath"] == "/tmp" for m in main["volumeMounts"])
    # The same with an experiment function: the image is still the user's.
    with_fn = build_pod(REF, _template_spec(TF), "worker", 0)["spec"]
    assert "runAsNonRoot" not in with_fn["securityContext"]


def test_a_user_image_gets_what_a_restricted_namespace_enforces() -> None:
    builder = PodBuilder(REF, _template_spec(TF, fn=None), enforce="restricted")
    pod = builder.pod("worker", 0)["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == contract.RUNNER_UID
    assert "readOnlyRootFilesystem" not in pod["containers"][0]["securityContext"]


def test_the_template_security_wins_over_a_user_image_defaults() -> None:
    asked = {**TF, "securityContext": {"readOnlyRootFilesystem": True, "runAsUser": 1000}}
    pod = build_pod(REF, _template_spec(asked, fn=None, securityContext={
        "runAsNonRoot": True}), "worker", 0)["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (main,) = pod["containers"]
    assert main["securityContext"] == {"allowPrivilegeEscalation": False,
                                       "capabilities": {"drop": ["ALL"]},
                                       "readOnlyRootFilesystem": True, "runAsUser": 1000}
    assert {"name": "kubelearn-tmp", "mountPath": "/tmp"} in main["volumeMounts"]


def test_the_runner_image_with_a_sidecar_keeps_the_restricted_profile() -> None:
    pod = build_pod(REF, _template_spec(SIDECAR, {"name": "kubelearn"}), "worker", 0)["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    sidecar, main = pod["containers"]
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    assert main["image"] == "runner:1" and sidecar == SIDECAR
