"""Volumes on the real node, as on kind: a claim that names no StorageClass gets the default,
`local-path`, whose provisioner makes a directory on the node once a pod uses the claim, keeps
it across pods, and removes it with the claim."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.cluster.helpers import wait_for
from tests.node import node as nodes

pytestmark = [pytest.mark.node, pytest.mark.slow]

NS = "storage"
CLAIM = "data"
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted",
              "pod-security.kubernetes.io/enforce-version": "latest"}
UID = 65532  # the runner image's user


class Storage:
    """kubectl in a restricted namespace of the node, and what to show when a wait fails."""

    def __init__(self, node: nodes.Node) -> None:
        self.node = node

    def kubectl(self, *args: str, check: bool = True,
                input: str | None = None) -> str:
        return self.node.kubectl("-n", NS, *args, check=check, input=input).stdout

    def apply(self, manifest: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))

    def get(self, kind: str, name: str) -> dict[str, Any]:
        return json.loads(self.kubectl("get", kind, name, "-o", "json"))

    def diagnostics(self) -> str:
        log = self.node.workdir / "local-path-provisioner.log"
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        events = self.node.kubectl("get", "events", "-A", check=False).stdout
        return f"events:\n{events}\nlocal-path-provisioner.log:\n{tail}"

    def run_to_completion(self, name: str, script: str) -> str:
        """Run `script` in a restricted pod with the claim at /data; its output once it
        succeeded."""
        self.apply(restricted_pod(name, self.node.images["runner"], script))

        def done() -> str | None:
            phase = self.get("pod", name)["status"].get("phase")
            return phase if phase in ("Succeeded", "Failed") else None

        try:
            phase = wait_for(done, timeout=180, description=f"pod {name} done")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.diagnostics()}") from None
        logs = self.kubectl("logs", name, check=False)
        assert phase == "Succeeded", f"pod {name} {phase}:\n{logs}"
        return logs

    def gone(self, kind: str, name: str, namespaced: bool = True) -> bool:
        args = ("get", kind, name, "--ignore-not-found", "-o", "name")
        out = (self.kubectl(*args) if namespaced else self.node.kubectl(*args).stdout)
        return out.strip() == ""


def restricted_pod(name: str, image: str, script: str) -> dict[str, Any]:
    """A pod that passes the restricted Pod Security Standard, running as the image's user."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"restartPolicy": "Never",
                     "securityContext": {"runAsNonRoot": True, "runAsUser": UID,
                                         "runAsGroup": UID,
                                         "seccompProfile": {"type": "RuntimeDefault"}},
                     "containers": [{
                         "name": "main", "image": image, "imagePullPolicy": "Never",
                         "command": ["python3", "-c", script],
                         "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                         "securityContext": {"allowPrivilegeEscalation": False,
                                             "readOnlyRootFilesystem": True,
                                             "capabilities": {"drop": ["ALL"]}}}],
                     "volumes": [{"name": "data",
                                  "persistentVolumeClaim": {"claimName": CLAIM}}]}}


@pytest.fixture(scope="module")
def storage(real_node: nodes.Node) -> Iterator[Storage]:
    real_node.kubectl("apply", "-f", "-", input=yaml.safe_dump(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS, "labels": RESTRICTED}}))
    try:
        yield Storage(real_node)
    finally:
        real_node.kubectl("delete", "namespace", NS, "--wait=false", check=False)


def test_local_path_is_the_only_default_storage_class(storage: Storage) -> None:
    classes = json.loads(storage.node.kubectl("get", "storageclass", "-o", "json").stdout)
    default = [c for c in classes["items"] if c["metadata"].get("annotations", {}).get(
        "storageclass.kubernetes.io/is-default-class") == "true"]
    assert [c["metadata"]["name"] for c in default] == [nodes.STORAGE_CLASS]
    (local_path,) = default
    assert local_path["provisioner"] == nodes.LOCAL_PATH_PROVISIONER
    assert local_path["volumeBindingMode"] == "WaitForFirstConsumer"
    assert local_path["reclaimPolicy"] == "Delete"


def test_claim_is_provisioned_for_its_pod_kept_across_pods_and_deleted_with_it(
        storage: Storage) -> None:
    storage.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                   "metadata": {"name": CLAIM},
                   "spec": {"accessModes": ["ReadWriteOnce"],
                            "resources": {"requests": {"storage": "16Mi"}}}})
    claim = storage.get("pvc", CLAIM)
    assert claim["spec"]["storageClassName"] == nodes.STORAGE_CLASS  # the default, admitted

    # Nothing is provisioned before a pod uses the claim: its node decides where.
    def waiting_for_consumer() -> bool:
        events = json.loads(storage.kubectl(
            "get", "events", "--field-selector",
            f"involvedObject.kind=PersistentVolumeClaim,involvedObject.name={CLAIM}",
            "-o", "json"))["items"]
        return any(e["reason"] == "WaitForFirstConsumer" for e in events)

    wait_for(waiting_for_consumer, timeout=60, description="claim waiting for a consumer")
    assert storage.get("pvc", CLAIM)["status"]["phase"] == "Pending"

    token = secrets.token_hex(8)
    out = storage.run_to_completion("writer", (
        "import os\n"
        f"open('/data/hello.txt', 'w').write({token!r})\n"
        "print(os.getuid())\n"))
    assert out.strip() == str(UID)

    claim = storage.get("pvc", CLAIM)
    assert claim["status"]["phase"] == "Bound"
    volume = claim["spec"]["volumeName"]
    pv = json.loads(storage.node.kubectl("get", "pv", volume, "-o", "json").stdout)
    assert pv["metadata"]["annotations"]["pv.kubernetes.io/provisioned-by"] == \
        nodes.LOCAL_PATH_PROVISIONER
    assert pv["spec"]["storageClassName"] == nodes.STORAGE_CLASS
    assert pv["spec"]["persistentVolumeReclaimPolicy"] == "Delete"
    terms = pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"]
    assert terms[0]["matchExpressions"][0]["values"] == [nodes.NODE_NAME]
    # On the node: a directory of its own under the work dir, with the pod's file in it.
    directory = Path(pv["spec"]["hostPath"]["path"])
    assert directory.parent == storage.node.volumes_dir
    assert directory.stat().st_mode & 0o777 == 0o777
    written = directory / "hello.txt"
    assert written.read_text() == token
    assert written.stat().st_uid == UID

    storage.kubectl("delete", "pod", "writer")
    out = storage.run_to_completion("reader", "print(open('/data/hello.txt').read())")
    assert out.strip() == token

    storage.kubectl("delete", "pod", "reader")
    storage.kubectl("delete", "pvc", CLAIM, "--wait=false")
    try:
        wait_for(lambda: storage.gone("pv", volume, namespaced=False)
                 and not directory.exists(), timeout=120,
                 description=f"volume {volume} and {directory} removed")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{storage.diagnostics()}") from None
    assert storage.gone("pvc", CLAIM)
    # The helper pods that made and removed the directory go too.
    wait_for(lambda: storage.node.kubectl("get", "pods", "-n", nodes.LOCAL_PATH_NAMESPACE,
                                          "-o", "name").stdout.strip() == "",
             timeout=60, description="no helper pod left")
