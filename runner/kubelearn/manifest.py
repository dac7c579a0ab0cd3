"""The Experiment manifest file as ``kubelearn local`` reads it.

The manifest is the same YAML users ``kubectl apply``; :func:`parse` checks it with the
model the CRD is generated from (:mod:`kubelearn_spec`), so it is refused here exactly when
the API server would refuse it, with the same field named (``spec.replicas.worker: ...``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubelearn import bounded_input
from kubelearn_spec import containers as main_containers
from kubelearn_spec.model import ExperimentSpec, parse_manifest
from kubelearn_spec.names import KIND
from kubelearn_spec.validate import SpecError

__all__ = ["ExperimentSpec", "ManifestError", "load_spec", "own_commands", "parse"]


class ManifestError(SpecError):
    """A manifest file that cannot be read: missing, not YAML, or not one Experiment."""


def parse(manifest: Any) -> ExperimentSpec:
    """Validates a manifest (already parsed from YAML) and returns its spec.

    Raises:
      SpecError: naming the first field that is wrong.
    """
    return parse_manifest(manifest)


def load_manifest(path: str) -> tuple[Any, ExperimentSpec]:
    """Reads and validates a manifest file: the Experiment as written, and its spec.

    Raises:
      SpecError: for a missing file, invalid YAML (a :class:`ManifestError`), or an
        invalid field.
    """
    try:
        documents = bounded_input.read_yaml_all(path)
    except bounded_input.InputError as exc:
        raise ManifestError("", str(exc)) from None
    experiments = [d for d in documents if isinstance(d, Mapping) and d.get("kind") == KIND]
    if len(documents) == 1:
        return documents[0], parse(documents[0])
    if len(experiments) != 1:
        raise ManifestError(path, f"must hold exactly one Experiment, found {len(experiments)}")
    return experiments[0], parse(experiments[0])


def load_spec(path: str) -> ExperimentSpec:
    """Reads and validates a manifest file (see :func:`load_manifest`)."""
    return load_manifest(path)[1]


def own_commands(spec: ExperimentSpec) -> dict[str, list[str]]:
    """Without an experiment function, what each role's replicas run locally: the main
    container's command and args ({} with one: every replica runs ``kubelearn run``).
    ``kubelearn local`` runs processes, not images, so an image's ENTRYPOINT is not known.

    Raises:
      SpecError: naming the main container of a role that gives no command.
    """
    if spec.experiment_fn is not None:
        return {}
    commands = {}
    for role, replica in spec.replicas.items():
        if not replica.replicas:
            continue
        containers = main_containers.template_containers(replica.template)
        index = main_containers.main_container_index(containers)
        command = main_containers.own_command(containers[index] if index is not None else {})
        if not command:
            where = f"spec.replicaSpecs.{role}.template"
            if index is not None:
                where += f".spec.containers[{index}].command"
            raise SpecError(where, "a local run needs a command: kubelearn local runs "
                                   "processes, not images (give the main container a "
                                   "command, or spec.experimentFn)")
        commands[role] = [str(part) for part in command]
    return commands
