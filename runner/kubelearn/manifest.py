"""The Experiment manifest (``kubelearn.dev/v1alpha1``) as the runner side reads it.

:func:`load_spec` turns the same YAML users ``kubectl apply`` into an
:class:`ExperimentSpec`, checking every field the local launcher relies on. Errors name
the field (``spec.replicas.worker: ...``), the way the API server's validation does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kubelearn import bounded_input

API_VERSION = "kubelearn.dev/v1alpha1"
KIND = "Experiment"
ROLES = ("ps", "worker", "master", "chief", "evaluator")
# Roles that are part of the cluster spec (TF_CONFIG); an evaluator is not.
CLUSTER_ROLES = ("ps", "worker", "master", "chief")
RESTART_POLICIES = ("Never", "OnFailure", "Always", "ExitCode")
SUCCESS_POLICIES = ("", "default", "AllWorkers")
MAX_NAME = 63
#: The CRD's ``maximum`` for a role's replica count (crds/experiments.kubelearn.dev.yaml).
MAX_REPLICAS = 100_000
_FN_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SPEC_FIELDS = {"experimentFn", "hparams", "replicas", "replicaSpecs", "image", "modelDir",
                "runPolicy", "successPolicy"}
_RUN_POLICY_FIELDS = {"cleanPodPolicy", "backoffLimit", "activeDeadlineSeconds",
                      "ttlSecondsAfterFinished", "suspend", "schedulingPolicy"}


class ManifestError(ValueError):
    """An invalid manifest; the message names the field."""


@dataclass(frozen=True)
class RoleSpec:
    replicas: int
    restart_policy: str = "Never"


@dataclass(frozen=True)
class ExperimentSpec:
    name: str
    namespace: str
    experiment_fn: str
    hparams: dict[str, Any]
    roles: dict[str, RoleSpec]
    model_dir: str | None = None
    backoff_limit: int | None = None
    active_deadline_seconds: int | None = None
    success_policy: str = ""
    raw: dict[str, Any] = field(default_factory=dict, compare=False)

    def replicas(self, role: str) -> int:
        spec = self.roles.get(role)
        return spec.replicas if spec else 0

    def chief_role(self) -> tuple[str, int] | None:
        """The task whose success decides the experiment's (master/chief, else worker 0)."""
        for role in ("master", "chief"):
            if self.replicas(role):
                return role, 0
        return ("worker", 0) if self.replicas("worker") else None


def _fail(path: str, message: str) -> None:
    raise ManifestError(f"{path}: {message}")


def _int(value: Any, path: str, minimum: int = 0, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _fail(path, f"must be an integer >= {minimum}, got {_short(value)}")
    if maximum is not None and value > maximum:
        _fail(path, f"must be at most {maximum}, got {value}")
    return value


def _key(value: Any, limit: int = 60) -> str:
    """A mapping key as it appears in a field path, cut."""
    text = str(value)
    text = text if text.isprintable() else repr(text)
    return text if len(text) <= limit else text[:limit] + "..."


def _short(value: Any, limit: int = 100) -> str:
    """``repr(value)``, cut: an error message never grows with the input."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _check_hparams(hparams: Any) -> dict[str, Any]:
    if hparams is None:
        return {}
    if not isinstance(hparams, Mapping):
        _fail("spec.hparams", f"must be a mapping of name to value, got {type(hparams).__name__}")
    for key, value in hparams.items():
        path = f"spec.hparams.{_key(key)}"
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z][\w.]*", key):
            _fail(path, "must be a name of letters, digits and underscores")
        items = value if isinstance(value, list) else [value]
        if isinstance(value, list) and not value:
            _fail(path, "a list must not be empty")
        for item in items:
            if not isinstance(item, (int, float, str, bool)):
                _fail(path, f"must be a number, string, bool or a list of them, got "
                            f"{_short(item)}")
        if isinstance(value, list) and len({type(i) for i in value}) > 1 and not all(
            isinstance(i, (int, float)) and not isinstance(i, bool) for i in value
        ):
            _fail(path, f"list items must share one type, got {_short(value)}")
    return dict(hparams)


def parse(manifest: Any) -> ExperimentSpec:
    """Validates a manifest (already parsed from YAML) and returns its spec.

    Raises:
      ManifestError: naming the first field that is wrong.
    """
    if not isinstance(manifest, Mapping):
        raise ManifestError("manifest: must be a YAML mapping (an Experiment object)")
    if manifest.get("apiVersion") != API_VERSION:
        _fail("apiVersion", f"must be {API_VERSION}, got {_short(manifest.get('apiVersion'))}")
    if manifest.get("kind") != KIND:
        _fail("kind", f"must be {KIND}, got {_short(manifest.get('kind'))}")
    metadata = manifest.get("metadata")
    if not isinstance(metadata, Mapping):
        _fail("metadata", "must be a mapping with a name")
    name = metadata.get("name")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        _fail("metadata.name", f"must be a DNS label (lower-case letters, digits and '-'), "
                               f"got {_short(name)}")
    namespace = metadata.get("namespace", "default")
    spec = manifest.get("spec")
    if not isinstance(spec, Mapping):
        _fail("spec", "must be a mapping")
    unknown = sorted((k for k in spec if k not in _SPEC_FIELDS), key=str)
    if unknown:
        _fail(f"spec.{_key(unknown[0])}",
              f"unknown field (known: {', '.join(sorted(_SPEC_FIELDS))})")
    fn = spec.get("experimentFn")
    if not isinstance(fn, str) or not _FN_RE.fullmatch(fn):
        _fail("spec.experimentFn", f"must have the form 'module:function', got {_short(fn)}")
    hparams = _check_hparams(spec.get("hparams"))
    roles: dict[str, RoleSpec] = {}
    replicas = spec.get("replicas") or {}
    if not isinstance(replicas, Mapping):
        _fail("spec.replicas", "must be a mapping of role to replica count")
    for role, count in replicas.items():
        if role not in ROLES:
            _fail(f"spec.replicas.{_key(role)}", f"unknown role (roles: {', '.join(ROLES)})")
        roles[role] = RoleSpec(_int(count, f"spec.replicas.{role}", maximum=MAX_REPLICAS))
    replica_specs = spec.get("replicaSpecs") or {}
    if not isinstance(replica_specs, Mapping):
        _fail("spec.replicaSpecs", "must be a mapping of role to replica spec")
    for role, role_spec in replica_specs.items():
        path = f"spec.replicaSpecs.{_key(role)}"
        if role not in ROLES:
            _fail(path, f"unknown role (roles: {', '.join(ROLES)})")
        if role in roles:
            _fail(path, f"role also given in spec.replicas.{role}; use one form")
        if not isinstance(role_spec, Mapping):
            _fail(path, "must be a mapping")
        policy = role_spec.get("restartPolicy", "Never")
        if policy not in RESTART_POLICIES:
            _fail(f"{path}.restartPolicy", f"must be one of {', '.join(RESTART_POLICIES)}, "
                                           f"got {_short(policy)}")
        template = role_spec.get("template")
        if template is not None and not isinstance(template, Mapping):
            _fail(f"{path}.template", "must be a PodTemplateSpec mapping")
        roles[role] = RoleSpec(_int(role_spec.get("replicas", 1), f"{path}.replicas",
                                    maximum=MAX_REPLICAS), policy)
    heads = [r for r in ("master", "chief") if roles.get(r) and roles[r].replicas]
    if len(heads) > 1:
        _fail("spec.replicas", "must not have both a master and a chief")
    for role in ("master", "chief"):
        if roles.get(role) and roles[role].replicas > 1:
            _fail(f"spec.replicas.{role}", f"must be at most 1, got {roles[role].replicas}")
    if not any(roles.get(r) and roles[r].replicas for r in ("worker", "master", "chief")):
        _fail("spec.replicas", "needs at least one worker or master")
    longest = max((len(f"{name}-{role}-{spec_.replicas - 1}") for role, spec_ in roles.items()
                   if spec_.replicas), default=0)
    if longest > MAX_NAME:
        _fail("metadata.name", f"is too long: pod names '<name>-<role>-<index>' must fit "
                               f"{MAX_NAME} characters (longest would be {longest})")
    run_policy = spec.get("runPolicy") or {}
    if not isinstance(run_policy, Mapping):
        _fail("spec.runPolicy", "must be a mapping")
    unknown = sorted((k for k in run_policy if k not in _RUN_POLICY_FIELDS), key=str)
    if unknown:
        _fail(f"spec.runPolicy.{_key(unknown[0])}", "unknown field")
    backoff = run_policy.get("backoffLimit")
    if backoff is not None:
        backoff = _int(backoff, "spec.runPolicy.backoffLimit")
    deadline = run_policy.get("activeDeadlineSeconds")
    if deadline is not None:
        deadline = _int(deadline, "spec.runPolicy.activeDeadlineSeconds", minimum=1)
    success = spec.get("successPolicy", "") or ""
    if success not in SUCCESS_POLICIES:
        _fail("spec.successPolicy", f"must be one of default, AllWorkers, got {_short(success)}")
    model_dir = spec.get("modelDir")
    if model_dir is not None and (not isinstance(model_dir, str) or not model_dir
                                  or "\0" in model_dir):
        _fail("spec.modelDir", "must be a non-empty path")
    return ExperimentSpec(name=name, namespace=str(namespace), experiment_fn=fn,
                          hparams=hparams, roles=roles, model_dir=model_dir,
                          backoff_limit=backoff, active_deadline_seconds=deadline,
                          success_policy=success, raw=dict(manifest))


def load_spec(path: str) -> ExperimentSpec:
    """Reads and validates a manifest file.

    Raises:
      ManifestError: for a missing file, invalid YAML, or an invalid field.
    """
    try:
        documents = bounded_input.read_yaml_all(path)
    except bounded_input.InputError as exc:
        raise ManifestError(str(exc)) from None
    experiments = [d for d in documents if isinstance(d, Mapping) and d.get("kind") == KIND]
    if len(documents) == 1:
        return parse(documents[0])
    if len(experiments) != 1:
        raise ManifestError(f"{path}: must hold exactly one Experiment, found "
                            f"{len(experiments)}")
    return parse(experiments[0])
