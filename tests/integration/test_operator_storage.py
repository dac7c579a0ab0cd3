"""The model directory's storage on the real API server: the claim the operator makes from
the default StorageClass, an existing claim, and the waits that say what is missing.

There is no provisioner here (the class is kind's default in name only), so claims stay
Pending; the real node's tests (tests/node) write and read them.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
from kubernetes import client

from tests.cluster.fixtures import DEFAULT_STORAGE_CLASS
from tests.cluster.helpers import wait_for

from .conftest import Experiments

pytestmark = pytest.mark.cluster

MINIMAL = {
    "experimentFn": "kubelearn.examples.linear:experiment_fn",
    "replicas": {"worker": 1, "master": 1},
}
NAMES = {"store-master-0", "store-worker-0"}
DEFAULT_ANNOTATION = "storageclass.kubernetes.io/is-default-class"


def _claims(kube_api: client.ApiClient,
            namespace: str) -> dict[str, client.V1PersistentVolumeClaim]:
    core = client.CoreV1Api(kube_api)
    return {c.metadata.name: c
            for c in core.list_namespaced_persistent_volume_claim(namespace).items}


def _model_mount(pod: client.V1Pod) -> tuple[str, str]:
    """(mount path, claim name) of the model directory's volume."""
    volumes = {v.name: v for v in pod.spec.volumes}
    (mount,) = [m for m in pod.spec.containers[0].volume_mounts
                if volumes[m.name].persistent_volume_claim is not None]
    return mount.mount_path, volumes[mount.name].persistent_volume_claim.claim_name


def _storage_condition(experiments: Experiments, name: str) -> dict:
    condition = experiments.condition(name, "StorageReady")
    assert condition is not None, experiments.status(name)
    return condition


def test_default_claim_is_made_mounted_everywhere_and_kept_after_delete(
        experiments: Experiments, namespace: str, start_operator,
        kube_api: client.ApiClient) -> None:
    start_operator(namespace)
    created = experiments.create("store", MINIMAL)
    pods = experiments.wait_pods("store", NAMES)
    claim = _claims(kube_api, namespace)["store-model"]
    assert claim.spec.access_modes == ["ReadWriteOnce"]
    assert claim.spec.resources.requests == {"storage": "1Gi"}
    # Given no class, the API server's admission gave it the default one.
    assert claim.spec.storage_class_name == DEFAULT_STORAGE_CLASS["metadata"]["name"]
    assert not claim.metadata.owner_references  # the trained model outlives the Experiment
    assert claim.metadata.labels == {"kubelearn.dev/experiment": "store"}
    for pod in pods.values():
        assert _model_mount(pod) == (f"/tmp/kubelearn/{namespace}/store", "store-model")
        assert pod.spec.security_context.fs_group == 65532
    status = experiments.status("store")
    assert status["storage"] == {"claimName": "store-model",
                                 "modelDir": f"/tmp/kubelearn/{namespace}/store"}
    assert _storage_condition(experiments, "store")["status"] == "True"
    assert "SuccessfulCreatePersistentVolumeClaim" in experiments.event_reasons("store")

    experiments.delete("store")
    wait_for(lambda: not experiments.exists("store") and not experiments.live_pods("store"),
             60, "the Experiment and its pods gone")
    kept = _claims(kube_api, namespace)["store-model"]
    assert kept.metadata.uid == claim.metadata.uid and kept.metadata.deletion_timestamp is None

    # The same name again resumes on the same claim, as a job pointed at the same model_dir.
    experiments.create("store", MINIMAL)
    experiments.wait_pods("store", NAMES)
    assert _claims(kube_api, namespace)["store-model"].metadata.uid == claim.metadata.uid
    assert created["metadata"]["uid"] != experiments.get("store")["metadata"]["uid"]


def test_claim_is_deleted_with_the_experiment_when_asked(
        experiments: Experiments, namespace: str, start_operator,
        kube_api: client.ApiClient) -> None:
    start_operator(namespace)
    spec = {**MINIMAL, "storage": {"size": "2Gi", "accessModes": ["ReadWriteMany"],
                                   "deleteWithExperiment": True}}
    created = experiments.create("store", spec)
    experiments.wait_pods("store", NAMES)
    claim = _claims(kube_api, namespace)["store-model"]
    assert claim.spec.resources.requests == {"storage": "2Gi"}
    assert claim.spec.access_modes == ["ReadWriteMany"]
    assert [o.uid for o in claim.metadata.owner_references] == [created["metadata"]["uid"]]
    experiments.delete("store")
    wait_for(lambda: "store-model" not in _claims(kube_api, namespace)
             or _claims(kube_api, namespace)["store-model"].metadata.deletion_timestamp,
             60, "the claim deleted by the garbage collector")


def test_missing_claim_names_the_field_and_no_pods_until_it_exists(
        experiments: Experiments, namespace: str, start_operator,
        kube_api: client.ApiClient) -> None:
    start_operator(namespace)
    experiments.create("store", {**MINIMAL, "storage": {
        "persistentVolumeClaim": {"claimName": "team-models"}}})
    condition = wait_for(
        lambda: (c := experiments.condition("store", "StorageReady")) and
        c["status"] == "False" and c, 30, "StorageReady False")
    assert condition["reason"] == "ClaimNotFound"
    assert condition["message"].startswith(
        "spec.storage.persistentVolumeClaim.claimName: PersistentVolumeClaim team-models "
        f"does not exist in namespace {namespace}")
    assert experiments.status("store")["phase"] == "Created"
    assert experiments.pods("store") == {} and experiments.services("store") == {}
    assert "ClaimNotFound" in experiments.event_reasons("store")
    assert _claims(kube_api, namespace) == {}  # an existing claim is never made

    client.CoreV1Api(kube_api).create_namespaced_persistent_volume_claim(namespace, {
        "metadata": {"name": "team-models"},
        "spec": {"accessModes": ["ReadWriteOnce"],
                 "resources": {"requests": {"storage": "1Gi"}}}})
    pods = experiments.wait_pods("store", NAMES, timeout=60)
    assert {_model_mount(p)[1] for p in pods.values()} == {"team-models"}
    assert _storage_condition(experiments, "store")["status"] == "True"
    assert set(_claims(kube_api, namespace)) == {"team-models"}


@pytest.fixture
def no_default_class(kube_api: client.ApiClient) -> Iterator[None]:
    """The cluster without a default StorageClass for one test."""
    storage = client.StorageV1Api(kube_api)
    name = DEFAULT_STORAGE_CLASS["metadata"]["name"]
    storage.patch_storage_class(name, {"metadata": {"annotations": {
        DEFAULT_ANNOTATION: "false"}}})
    try:
        yield
    finally:
        storage.patch_storage_class(name, copy.deepcopy(
            {"metadata": DEFAULT_STORAGE_CLASS["metadata"]}))


def test_without_a_default_class_it_waits_and_says_how_to_fix_it(
        experiments: Experiments, namespace: str, start_operator,
        kube_api: client.ApiClient, no_default_class: None) -> None:
    start_operator(namespace)
    experiments.create("store", MINIMAL)
    experiments.create("scratch", {**MINIMAL, "storage": {"ephemeral": True}})
    condition = wait_for(
        lambda: (c := experiments.condition("store", "StorageReady")) and
        c["status"] == "False" and c, 30, "StorageReady False")
    assert condition["reason"] == "NoDefaultStorageClass"
    for hint in ("spec.storage.storageClassName", "spec.storage.ephemeral: true",
                 DEFAULT_ANNOTATION):
        assert hint in condition["message"]
    assert experiments.pods("store") == {} and _claims(kube_api, namespace) == {}
    # The explicit opt-out runs at once, with no claim.
    pods = experiments.wait_pods("scratch", {"scratch-master-0", "scratch-worker-0"})
    assert not any(v.persistent_volume_claim for p in pods.values() for v in p.spec.volumes)
    assert experiments.status("scratch")["storage"]["claimName"] == ""

    # A class named in the spec that does not exist names that field.
    experiments.create("named", {**MINIMAL, "storage": {"storageClassName": "fast"}})
    condition = wait_for(
        lambda: (c := experiments.condition("named", "StorageReady")) and
        c["status"] == "False" and c, 30, "StorageReady False")
    assert condition["reason"] == "StorageClassNotFound"
    assert condition["message"].startswith("spec.storage.storageClassName: ")


def test_tensorboard_is_served_from_the_claim_and_goes_with_the_experiment(
        experiments: Experiments, namespace: str, start_operator,
        kube_api: client.ApiClient) -> None:
    start_operator(namespace)
    created = experiments.create("board", {**MINIMAL, "tensorboard": True,
                                           "replicas": {"worker": 1, "master": 1}})
    experiments.wait_pods("board", {"board-master-0", "board-worker-0"})
    apps, core = client.AppsV1Api(kube_api), client.CoreV1Api(kube_api)
    deployment = wait_for(lambda: apps.read_namespaced_deployment("board-tensorboard",
                                                                  namespace), 30,
                          "the TensorBoard Deployment")
    assert [o.uid for o in deployment.metadata.owner_references] == [created["metadata"]["uid"]]
    pod = deployment.spec.template.spec
    (volume,) = [v for v in pod.volumes if v.persistent_volume_claim]
    assert (volume.persistent_volume_claim.claim_name,
            volume.persistent_volume_claim.read_only) == ("board-model", True)
    assert pod.containers[0].image == "kubelearn/tensorboard:0.1.0"
    # Created right after the Deployment, not with it.
    service = wait_for(lambda: core.read_namespaced_service("board-tensorboard", namespace),
                       30, "the TensorBoard Service")
    assert service.spec.ports[0].port == 6006
    assert experiments.status("board")["tensorboard"] == {
        "service": "board-tensorboard", "url": f"http://board-tensorboard.{namespace}.svc:6006"}
    # Scaling the replicas leaves TensorBoard's service alone (it is not a replica's).
    experiments.patch_spec("board", {"replicas": {"worker": 2, "master": 1}})
    experiments.wait_pods("board", {"board-master-0", "board-worker-0", "board-worker-1"})
    assert core.read_namespaced_service("board-tensorboard", namespace).metadata.uid == \
        service.metadata.uid
    experiments.delete("board")

    def gone() -> bool:
        try:
            apps.read_namespaced_deployment("board-tensorboard", namespace)
        except client.ApiException as error:
            return error.status == 404
        return False

    wait_for(gone, 60, "the TensorBoard Deployment removed with the Experiment")


def test_tensorboard_turned_off_goes_and_one_not_ours_stays(
        experiments: Experiments, namespace: str, start_operator,
        kube_api: client.ApiClient) -> None:
    apps, core = client.AppsV1Api(kube_api), client.CoreV1Api(kube_api)
    # Someone else's Service with the name the operator would give TensorBoard's.
    foreign = core.create_namespaced_service(namespace, client.V1Service(
        metadata=client.V1ObjectMeta(name="toggle-tensorboard"),
        spec=client.V1ServiceSpec(ports=[client.V1ServicePort(port=6006)])))
    start_operator(namespace)
    experiments.create("toggle", {**MINIMAL, "tensorboard": True})
    experiments.wait_pods("toggle", {"toggle-master-0", "toggle-worker-0"})
    deployment = wait_for(lambda: apps.read_namespaced_deployment("toggle-tensorboard",
                                                                  namespace), 30,
                          "the TensorBoard Deployment")
    experiments.patch_spec("toggle", {"tensorboard": False})

    def deployment_gone() -> bool:
        try:
            apps.read_namespaced_deployment("toggle-tensorboard", namespace)
        except client.ApiException as error:
            return error.status == 404
        return False

    wait_for(deployment_gone, 30, "the TensorBoard Deployment removed")
    wait_for(lambda: "tensorboard" not in experiments.status("toggle"), 30,
             "status.tensorboard cleared")
    # The Service was not the operator's: it stays, untouched.
    kept = core.read_namespaced_service("toggle-tensorboard", namespace)
    assert kept.metadata.uid == foreign.metadata.uid and not kept.metadata.owner_references
    # Turned on again, TensorBoard comes back.
    experiments.patch_spec("toggle", {"tensorboard": True})
    again = wait_for(lambda: apps.read_namespaced_deployment("toggle-tensorboard", namespace),
                     30, "the TensorBoard Deployment made again")
    assert again.metadata.uid != deployment.metadata.uid
