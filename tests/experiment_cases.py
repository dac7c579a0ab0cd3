"""One table of Experiment manifests, valid and invalid, run through the API server (the
generated CRD), the operator's parser and ``kubelearn local``: each path must give the same
verdict and name the same field.

``field`` is the path an invalid case is refused for (None: valid). ``expect`` holds, for a
valid case, values the parsed spec must have (attribute paths of
:class:`kubelearn_spec.model.ExperimentSpec`), the defaults the two parsers share.
``api_server`` False marks an invalid case the API server cannot refuse: its CEL sees no keys
of a map whose values have several types (``spec.hparams``), so it accepts the object and the
operator fails it in its status naming the field, as ``kubelearn local`` refuses it.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

from kubelearn_spec.containers import MAX_CONTAINERS
from kubelearn_spec.schema import MAX_HPARAM_ITEMS, MAX_HPARAM_LENGTH, MAX_HPARAMS

MINIMAL: dict[str, Any] = {
    "experimentFn": "kubelearn.examples.linear:experiment_fn",
    "hparams": {"learning_rate": 0.05, "train_steps": 2000},
    "replicas": {"ps": 1, "worker": 2, "master": 1},
}


@dataclass(frozen=True)
class Case:
    id: str
    name: str
    spec: dict[str, Any]
    field: str | None = None
    expect: dict[str, Any] = dataclasses.field(default_factory=dict)
    api_server: bool = True

    kind = "Experiment"

    def manifest(self) -> dict[str, Any]:
        return {"apiVersion": "kubelearn.dev/v1alpha1", "kind": self.kind,
                "metadata": {"name": self.name}, "spec": copy.deepcopy(self.spec)}


def replaced(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A copy of ``base`` with top-level fields replaced (None removes one)."""
    result = copy.deepcopy(base)
    for key, value in changes.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = value
    return result


def spec(**changes: Any) -> dict[str, Any]:
    """MINIMAL with top-level fields replaced (None removes one)."""
    return replaced(MINIMAL, **changes)


def only(**replica_specs: Any) -> dict[str, Any]:
    """MINIMAL in the full form: ``replicaSpecs`` instead of ``replicas``."""
    return spec(replicas=None, replicaSpecs=replica_specs)


def own(**replica_specs: Any) -> dict[str, Any]:
    """The full form without spec.experimentFn: each main container runs its own program."""
    return replaced(only(**replica_specs), experimentFn=None)


TF_CONTAINER = {"name": "tensorflow", "image": "tensorflow/tensorflow:2.15.0",
                "command": ["python", "/code/train.py"], "args": ["--epochs", "3"]}
SIDECAR = {"name": "proxy", "image": "proxy:1", "args": ["--listen", ":9000"]}

FULL = {
    "experimentFn": "pkg.mod:fn", "image": "runner:2", "modelDir": "/m", "schedule": "train",
    "replicaSpecs": {
        "chief": {"restartPolicy": "ExitCode"},
        "ps": {"replicas": 2, "restartPolicy": "Always"},
        "worker": {"replicas": 4, "restartPolicy": "OnFailure", "template": {
            "metadata": {"labels": {"team": "a"}},
            "spec": {"containers": [{"name": "kubelearn", "resources": {
                "limits": {"cpu": "2"}}}]}}},
        "evaluator": {"replicas": 1, "restartPolicy": "Never"},
    },
    "runPolicy": {"cleanPodPolicy": "All", "backoffLimit": 3, "activeDeadlineSeconds": 600,
                  "ttlSecondsAfterFinished": 60, "suspend": True,
                  "schedulingPolicy": {"minAvailable": 7, "queue": "q",
                                       "priorityClass": "high", "schedulerName": "gang",
                                       "scheduleTimeoutSeconds": 30}},
    "successPolicy": "AllWorkers",
}

CASES = [
    # -- valid ---------------------------------------------------------------------------
    Case("minimal", "linear", spec(), expect={
        "counts()": {"ps": 1, "worker": 2, "master": 1}, "leader_role": "master",
        "replicas.worker.restart_policy": "ExitCode"}),
    Case("full-form", "full", FULL, expect={
        "counts()": {"chief": 1, "ps": 2, "worker": 4, "evaluator": 1},
        "replicas.worker.restart_policy": "OnFailure", "run_policy.backoff_limit": 3,
        "run_policy.scheduling.min_available": 7, "success_policy": "AllWorkers",
        "image": "runner:2", "model_dir": "/m"}),
    # The six places where the launcher and the cluster used to disagree:
    Case("default-restart-policy-is-exit-code", "defaults", only(worker={}), expect={
        "replicas.worker.restart_policy": "ExitCode"}),
    Case("default-backoff-limit-is-6", "defaults", spec(), expect={
        "run_policy.backoff_limit": 6}),
    Case("schedule-is-accepted", "scheduled", spec(schedule="train"), expect={
        "schedule": "train"}),
    Case("name-starting-with-a-digit", "1linear", spec(), "metadata.name"),
    Case("count-and-restart-policy-in-two-forms", "twoforms",
         spec(replicaSpecs={"worker": {"restartPolicy": "OnFailure"}}), expect={
             "counts()": {"ps": 1, "worker": 2, "master": 1},
             "replicas.worker.restart_policy": "OnFailure"}),
    Case("experiment-fn-empty-module-part", "badfn", spec(experimentFn="a..b:c"),
         "spec.experimentFn"),
    # More valid ones:
    Case("longest-name-that-fits", "w" * 51, spec(replicas={"worker": 1000})),
    Case("longest-name-with-a-master", "m" * 54, spec(replicas={"master": 1})),
    Case("chief-alone-in-full-form", "chief", only(chief={}), expect={
        "counts()": {"chief": 1}, "leader_role": "chief"}),
    Case("zero-ps", "nops", spec(replicas={"ps": 0, "worker": 1})),
    Case("null-field-is-absent", "nulls", spec(runPolicy=None, image=None)),
    Case("hparam-lists", "lists", spec(hparams={"layers": [8, 4], "mix": [1, 2.5],
                                                "names": ["a"], "flag": True})),
    Case("hparams-at-their-bounds", "hpmax", spec(hparams={
        **{f"h{i}": i for i in range(MAX_HPARAMS - 3)}, "text": "x" * MAX_HPARAM_LENGTH,
        "layers": list(range(MAX_HPARAM_ITEMS)), "names": ["x" * MAX_HPARAM_LENGTH, None]}),
         expect={"hparams.text": "x" * MAX_HPARAM_LENGTH}),
    Case("empty-success-policy-is-default", "emptysuccess", spec(successPolicy=""),
         expect={"success_policy": "default"}),
    Case("tensorboard", "board", spec(tensorboard=True), expect={"tensorboard": True}),
    Case("longest-name-with-tensorboard", "t" * 51, spec(tensorboard=True,
                                                         replicas={"worker": 1})),
    Case("model-dir-with-a-colon-is-a-path", "colon", spec(modelDir="/data/run:1//x"),
         expect={"model_dir": "/data/run:1//x"}),
    Case("storage-default-is-a-new-claim", "store", spec(), expect={
        "storage.creates_claim": True, "storage.size": "1Gi", "storage.storage_class": None,
        "storage.access_modes": ("ReadWriteOnce",), "storage.delete_with_experiment": False}),
    Case("storage-ephemeral", "store", spec(storage={"ephemeral": True}), expect={
        "storage.ephemeral": True, "storage.creates_claim": False}),
    Case("storage-ephemeral-false-is-the-default", "store",
         spec(storage={"ephemeral": False, "size": "5Gi"}), expect={
             "storage.creates_claim": True, "storage.size": "5Gi"}),
    Case("storage-existing-claim", "store", spec(storage={
        "persistentVolumeClaim": {"claimName": "team.models"}}), expect={
            "storage.claim_name": "team.models", "storage.creates_claim": False}),
    Case("storage-new-claim", "store", spec(storage={
        "size": "500Mi", "storageClassName": "fast", "accessModes": ["ReadWriteMany"],
        "deleteWithExperiment": True}), expect={
            "storage.size": "500Mi", "storage.storage_class": "fast",
            "storage.access_modes": ("ReadWriteMany",),
            "storage.delete_with_experiment": True}),
    Case("model-dir-s3-url", "objstore", spec(modelDir="s3://models/team/run-1"), expect={
        "model_dir": "s3://models/team/run-1", "storage.object_store": True,
        "storage.on_volume": False, "storage.creates_claim": False,
        "storage.secret_name": None}),
    Case("model-dir-url-with-credentials", "objstore", spec(
        modelDir="s3://models", storage={"secretName": "s3-credentials"},
        tensorboard=True), expect={
            "storage.secret_name": "s3-credentials", "storage.object_store": True}),
    Case("model-dir-hdfs-url-with-port", "objstore",
         spec(modelDir="hdfs://namenode:8020/user/x"), expect={
             "storage.object_store": True}),
    # A user's own TensorFlow program (TFJob's conventions):
    Case("no-experiment-fn-with-an-image-and-a-command", "tfown",
         own(worker={"replicas": 2, "template": {"spec": {"containers": [TF_CONTAINER]}}}),
         expect={"experiment_fn": None, "counts()": {"worker": 2}}),
    Case("no-experiment-fn-image-entrypoint", "tfentry",
         own(worker={"template": {"spec": {"containers": [{"image": "mine:1"}]}}}),
         expect={"experiment_fn": None}),
    Case("no-experiment-fn-spec-image", "tfimage", spec(experimentFn=None, image="mine:1"),
         expect={"experiment_fn": None, "image": "mine:1"}),
    Case("sidecar-first-and-a-tensorflow-container", "tfside",
         only(worker={"template": {"spec": {"containers": [SIDECAR, TF_CONTAINER]}}}),
         expect={"experiment_fn": "kubelearn.examples.linear:experiment_fn"}),
    Case("sidecar-first-and-a-kubelearn-container", "klside",
         only(worker={"template": {"spec": {"containers": [SIDECAR, {"name": "kubelearn"}]}}})),
    Case("no-experiment-fn-zero-ps-without-a-template", "tfnops",
         own(worker={"template": {"spec": {"containers": [TF_CONTAINER]}}}, ps={"replicas": 0})),
    # -- invalid -------------------------------------------------------------------------
    Case("two-containers-neither-named", "twoc",
         only(worker={"template": {"spec": {"containers": [SIDECAR, {"name": "trainer"}]}}}),
         "spec.replicaSpecs.worker.template.spec.containers"),
    Case("too-many-containers", "manyc",
         only(worker={"template": {"spec": {"containers": [
             {"name": f"c{i}"} for i in range(MAX_CONTAINERS)] + [TF_CONTAINER]}}}),
         "spec.replicaSpecs.worker.template.spec.containers"),
    Case("no-experiment-fn-and-nothing-to-run", "tfnone",
         own(worker={"template": {"spec": {"containers": [{"name": "tensorflow", "env": [
             {"name": "X", "value": "1"}]}]}}}), "spec.experimentFn"),
    Case("no-experiment-fn-and-an-empty-command", "tfempty",
         own(worker={"template": {"spec": {"containers": [
             {"name": "tensorflow", "command": []}]}}}), "spec.experimentFn"),
    Case("no-experiment-fn-a-sidecar-runs-but-not-the-main-container", "tfsidenone",
         own(worker={"template": {"spec": {"containers": [
             SIDECAR, {"name": "tensorflow"}]}}}), "spec.experimentFn"),
    Case("no-experiment-fn-a-role-without-a-template", "tfps",
         own(worker={"template": {"spec": {"containers": [TF_CONTAINER]}}}, ps={}),
         "spec.experimentFn"),
    Case("negative-replicas", "neg", spec(replicas={"worker": -1, "master": 1}),
         "spec.replicas.worker"),
    Case("replicas-not-an-integer", "two", spec(replicas={"worker": "two"}),
         "spec.replicas.worker"),
    Case("replicas-over-the-cap", "many", spec(replicas={"worker": 100_001}),
         "spec.replicas.worker"),
    Case("two-masters", "twomasters", spec(replicas={"worker": 1, "master": 2}),
         "spec.replicas.master"),
    Case("two-chiefs", "twochiefs", only(worker={"replicas": 1}, chief={"replicas": 2}),
         "spec.replicaSpecs.chief.replicas"),
    Case("master-and-chief", "both", spec(replicas={"worker": 1, "master": 1, "chief": 1}),
         "spec.replicas"),
    Case("master-and-chief-in-full-form", "both", only(master={}, chief={}), "spec.replicas"),
    Case("no-worker-or-master", "nobody", spec(replicas={"ps": 2}), "spec.replicas"),
    Case("experiment-fn-form", "badfn", spec(experimentFn="kubelearn.examples.linear"),
         "spec.experimentFn"),
    Case("experiment-fn-missing", "nofn", spec(experimentFn=None), "spec.experimentFn"),
    Case("unknown-role", "badrole", spec(replicas={"Worker": 1}), "spec.replicas.Worker"),
    Case("unknown-role-in-full-form", "badrole", only(driver={}),
         "spec.replicaSpecs.driver"),
    Case("count-given-twice", "twice", spec(replicaSpecs={"ps": {"replicas": 3}}),
         "spec.replicas.ps"),
    # The worker count too, in a manifest; once stored, kubectl scale may add
    # spec.replicas.worker to it (tests/unit/test_scale_rules.py).
    Case("worker-count-given-twice", "twice", spec(replicaSpecs={"worker": {"replicas": 3}}),
         "spec.replicas.worker"),
    Case("name-too-long", "a" * 55, spec(), "metadata.name"),
    Case("name-too-long-for-1000-workers", "w" * 53, spec(replicas={"worker": 1000}),
         "metadata.name"),
    Case("name-not-dns-label", "lin.ear", spec(), "metadata.name"),
    Case("name-upper-case", "Linear", spec(), "metadata.name"),
    Case("restart-policy", "badpolicy", only(worker={"restartPolicy": "Sometimes"}),
         "spec.replicaSpecs.worker.restartPolicy"),
    Case("template-not-an-object", "badtemplate", only(worker={"template": "pod"}),
         "spec.replicaSpecs.worker.template"),
    Case("unknown-spec-field", "unknown", spec(learningRate=0.1), "spec.learningRate"),
    Case("unknown-run-policy-field", "unknown", spec(runPolicy={"backoff": 1}),
         "spec.runPolicy.backoff"),
    Case("success-policy", "badsuccess", spec(successPolicy="Any"), "spec.successPolicy"),
    Case("backoff-limit-negative", "badbackoff", spec(runPolicy={"backoffLimit": -3}),
         "spec.runPolicy.backoffLimit"),
    Case("deadline-zero", "baddeadline", spec(runPolicy={"activeDeadlineSeconds": 0}),
         "spec.runPolicy.activeDeadlineSeconds"),
    Case("clean-pod-policy", "badclean", spec(runPolicy={"cleanPodPolicy": "Some"}),
         "spec.runPolicy.cleanPodPolicy"),
    Case("suspend-not-a-boolean", "badsuspend", spec(runPolicy={"suspend": "yes"}),
         "spec.runPolicy.suspend"),
    Case("min-available-zero", "badgang", spec(runPolicy={
        "schedulingPolicy": {"minAvailable": 0}}), "spec.runPolicy.schedulingPolicy.minAvailable"),
    Case("model-dir-empty", "baddir", spec(modelDir=""), "spec.modelDir"),
    Case("model-dir-unknown-url-scheme", "baddir", spec(modelDir="ftp://bucket/models"),
         "spec.modelDir"),
    Case("model-dir-url-without-bucket", "baddir", spec(modelDir="s3://"), "spec.modelDir"),
    Case("model-dir-file-url", "baddir", spec(modelDir="file:///tmp/m"), "spec.modelDir"),
    Case("model-dir-url-with-credentials", "baddir",
         spec(modelDir="s3://KEY:SECRET@bucket/models"), "spec.modelDir"),
    Case("model-dir-url-with-a-claim", "badstorage", spec(
        modelDir="s3://models", storage={"persistentVolumeClaim": {"claimName": "m"}}),
         "spec.storage"),
    Case("model-dir-url-ephemeral", "badstorage", spec(
        modelDir="s3://models", storage={"ephemeral": True}), "spec.storage"),
    Case("secret-without-a-url", "badstorage", spec(storage={"secretName": "s3"}),
         "spec.storage.secretName"),
    Case("secret-name-invalid", "badstorage", spec(
        modelDir="s3://models", storage={"secretName": "S3 keys"}),
         "spec.storage.secretName"),
    Case("model-dir-url-any-scheme", "baddir", spec(modelDir="Foo+bar.1://x"),
         "spec.modelDir"),
    Case("storage-two-forms", "badstorage", spec(storage={
        "ephemeral": True, "size": "2Gi"}), "spec.storage"),
    Case("storage-claim-and-size", "badstorage", spec(storage={
        "persistentVolumeClaim": {"claimName": "models"}, "storageClassName": "fast"}),
         "spec.storage"),
    Case("storage-claim-without-name", "badstorage", spec(storage={
        "persistentVolumeClaim": {}}), "spec.storage.persistentVolumeClaim.claimName"),
    Case("storage-claim-name", "badstorage", spec(storage={
        "persistentVolumeClaim": {"claimName": "Models_1"}}),
         "spec.storage.persistentVolumeClaim.claimName"),
    Case("storage-size", "badstorage", spec(storage={"size": "lots"}), "spec.storage.size"),
    Case("storage-access-mode", "badstorage", spec(storage={"accessModes": ["ReadWrite"]}),
         "spec.storage.accessModes[0]"),
    Case("storage-no-access-modes", "badstorage", spec(storage={"accessModes": []}),
         "spec.storage.accessModes"),
    Case("tensorboard-on-ephemeral-storage", "board", spec(
        tensorboard=True, storage={"ephemeral": True}), "spec.tensorboard"),
    Case("name-too-long-for-tensorboard", "t" * 52, spec(tensorboard=True,
                                                         replicas={"worker": 1}),
         "metadata.name"),
    Case("tensorboard-not-a-boolean", "board", spec(tensorboard="yes"), "spec.tensorboard"),
    Case("storage-access-mode-twice", "badstorage", spec(storage={
        "accessModes": ["ReadWriteOnce", "ReadWriteOnce"]}), "spec.storage.accessModes[1]"),
    Case("storage-unknown-field", "badstorage", spec(storage={"claimName": "m"}),
         "spec.storage.claimName"),
    Case("schedule-not-a-method-name", "badschedule", spec(schedule="train now"),
         "spec.schedule"),
    Case("hparams-not-an-object", "badhp", spec(hparams=[1, 2]), "spec.hparams"),
    # Hyper-parameters are what HParams takes: scalars, or lists of them, bounded so that
    # KUBELEARN_HPARAMS can be passed to a process (a 200 KB value is E2BIG).
    Case("hparam-of-200-kb", "badhp", spec(hparams={"text": "x" * 200_000}),
         "spec.hparams.text"),
    Case("hparam-nested-object", "badhp", spec(hparams={"nested": {"a": [1, "x"]}}),
         "spec.hparams.nested"),
    Case("hparam-empty-object", "badhp", spec(hparams={"nested": {}}), "spec.hparams.nested"),
    Case("hparam-empty-list", "badhp", spec(hparams={"layers": []}), "spec.hparams.layers"),
    Case("hparam-list-too-long", "badhp", spec(hparams={
        "layers": [1] * (MAX_HPARAM_ITEMS + 1)}), "spec.hparams.layers"),
    Case("hparam-list-of-lists", "badhp", spec(hparams={"layers": [[8, 4]]}),
         "spec.hparams.layers[0]"),
    Case("hparam-list-of-objects", "badhp", spec(hparams={"layers": [{"units": 8}]}),
         "spec.hparams.layers[0]"),
    Case("hparam-long-string-in-a-list", "badhp", spec(hparams={
        "names": ["a", "x" * (MAX_HPARAM_LENGTH + 1)]}), "spec.hparams.names[1]"),
    Case("too-many-hparams", "badhp", spec(hparams={f"h{i}": i for i in
                                                    range(MAX_HPARAMS + 1)}), "spec.hparams"),
    # Names and the size in all: the operator and kubelearn local only (see api_server).
    Case("hparam-name-not-an-identifier", "badhp", spec(hparams={"learning-rate": 0.1}),
         "spec.hparams.learning-rate", api_server=False),
    Case("hparam-name-starting-with-a-digit", "badhp", spec(hparams={"1x": 1}),
         "spec.hparams.1x", api_server=False),
    Case("hparam-name-starting-with-underscore", "badhp", spec(hparams={"_x": 1}),
         "spec.hparams._x", api_server=False),
    Case("hparam-name-hparams-keeps", "badhp", spec(hparams={"values": 1}),
         "spec.hparams.values", api_server=False),
    Case("hparams-over-64-kib-in-all", "badhp", spec(hparams={
        f"h{i}": "x" * MAX_HPARAM_LENGTH for i in range(17)}), "spec.hparams",
         api_server=False),
]

VALID = [c for c in CASES if c.field is None]
INVALID = [c for c in CASES if c.field is not None]


def ids(cases: list[Case]) -> list[str]:
    return [c.id for c in cases]


def attribute(obj: Any, path: str) -> Any:
    """``replicas.worker.restart_policy`` or ``parameters.0.grid()`` on a spec (an
    Experiment's or a Sweep's): attributes, mapping keys, list indexes, ``f()`` calls."""
    for part in path.split("."):
        if part.endswith("()"):
            obj = getattr(obj, part[:-2])()
        elif part.isdigit() and isinstance(obj, (list, tuple)):
            obj = obj[int(part)]
        elif isinstance(obj, dict) or hasattr(obj, "keys"):
            obj = obj[part]
        else:
            obj = getattr(obj, part)
    return obj
