"""The objects the operator's plans and controllers share: whose objects are built (the
owner of pods, services and trials) and the Events posted about it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubelearn_spec import names


@dataclass(frozen=True)
class ExperimentRef:
    """Identity of the resource that owns the objects being built and that events are
    about: an Experiment, or a Sweep (``kind``) for its trial Experiments."""

    name: str
    namespace: str
    uid: str
    kind: str = names.KIND

    def owner_reference(self) -> dict[str, Any]:
        return {"apiVersion": names.API_VERSION, "kind": self.kind, "name": self.name,
                "uid": self.uid, "controller": True, "blockOwnerDeletion": True}

    def metadata(self, name: str, labels: Mapping[str, str]) -> dict[str, Any]:
        return {"name": name, "namespace": self.namespace, "labels": dict(labels),
                "ownerReferences": [self.owner_reference()]}


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event to post about the experiment."""

    type: str
    reason: str
    message: str
