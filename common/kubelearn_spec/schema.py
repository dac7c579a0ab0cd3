"""The Experiment's OpenAPI schema and cross-field rules: the one source of its validation.

:mod:`.validate` checks a manifest against it in Python (``kubelearn local``, the operator);
:mod:`.crd` writes it into the CRD, where the API server checks the same schema and the rules'
CEL. Each :class:`Rule` carries both forms of one rule side by side, and the case table in
``tests/experiment_cases.py`` runs through both, so they cannot drift apart unnoticed.
Keys that start with ``_`` are the Python validator's own and are left out of the CRD.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from . import containers as main_containers
from . import names

RESTART_POLICIES = ("Never", "OnFailure", "Always", "ExitCode")
CLEAN_POD_POLICIES = ("None", "Running", "All")
SUCCESS_POLICIES = ("", "default", "AllWorkers")

DEFAULT_RESTART_POLICY = "ExitCode"
DEFAULT_CLEAN_POD_POLICY = "Running"
DEFAULT_BACKOFF_LIMIT = 6
DEFAULT_SUCCESS_POLICY = "default"

ACCESS_MODES = ("ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod")
DEFAULT_STORAGE_SIZE = "1Gi"
DEFAULT_ACCESS_MODES = ("ReadWriteOnce",)
#: A resource.Quantity as a PersistentVolumeClaim's storage request takes it.
QUANTITY = r"([0-9]+([.][0-9]*)?|[.][0-9]+)([KMGTPE]i|[kMGTPE]|[eE][-+]?[0-9]+)?"
#: A DNS-1123 subdomain: the names of claims and storage classes.
DNS_1123_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
#: The fields that ask the operator to create the experiment's claim.
NEW_CLAIM_FIELDS = ("size", "storageClassName", "accessModes", "deleteWithExperiment")
#: The fields of spec.storage that put the model directory on a volume.
VOLUME_FIELDS = ("ephemeral", "persistentVolumeClaim", *NEW_CLAIM_FIELDS)

MAX_REPLICAS = 100_000

EXPERIMENT_FN = r"[A-Za-z_][A-Za-z0-9_]*([.][A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*"
SCHEDULE = r"[A-Za-z_][A-Za-z0-9_]*"

#: A hyper-parameter's name, as HParams takes it (``runner/kubelearn/hparams.py``): an
#: attribute name its text grammar (``name=value,...``) can also write, not starting with
#: ``_`` and none of HParams's own attributes (:data:`RESERVED_HPARAM_NAMES`).
HPARAM_NAME = r"[A-Za-z][A-Za-z0-9_]*"
RESERVED_HPARAM_NAMES = (
    "add_hparam", "del_hparam", "get", "get_model_structure", "override_from_dict", "parse",
    "parse_json", "set_hparam", "set_model_structure", "to_json", "values", "from_text")
MAX_HPARAM_NAME = 253
#: Bounds on ``spec.hparams``, which reaches every replica as one environment variable
#: (``KUBELEARN_HPARAMS``, JSON): a variable longer than 128 KiB cannot be passed to a
#: process at all (E2BIG, "argument list too long"), on a node or with ``kubelearn local``.
MAX_HPARAMS = 128
MAX_HPARAM_LENGTH = 4096
MAX_HPARAM_ITEMS = 256
MAX_HPARAMS_BYTES = 64 * 1024


@dataclass(frozen=True)
class Rule:
    """A rule the schema's types cannot say: CEL for the API server, the same test in Python.

    ``path`` is the field the error names (absolute, e.g. ``spec.replicas.worker``; in a
    list's items ``spec.parameters[*].max``, which names ``spec.parameters[2].max`` for the
    third) and ``message`` what is wrong with it; both forms see the object the rule is
    attached to as ``self``. A schema reused elsewhere keeps its paths and says where they
    start with ``_home`` (see :func:`.validate.check`).
    """

    path: str
    message: str
    #: None: a rule the API server cannot check, as its CEL sees no values it has no type
    #: for (the keys of ``spec.hparams``, whose values are of any scalar type); the operator
    #: refuses such an object in its status, ``kubelearn local`` on the command line.
    cel: str | None
    holds: Callable[..., bool]
    #: A rule that also sees the stored object, as CEL's ``oldSelf`` with
    #: ``optionalOldSelf``: ``holds(value, old)``, ``old`` None on create (and where the
    #: stored object has no such field). The API server checks it on every write; in Python
    #: it is checked for a manifest (a create) and skipped for an object already stored,
    #: whose previous value is not known.
    transition: bool = False
    #: A message that says more than ``message`` about the value: ``describe(value)`` in
    #: Python, ``message_cel`` (a CEL string expression, the CRD's messageExpression) for
    #: the API server.
    describe: Callable[..., str] | None = None
    message_cel: str | None = None


def role_count(spec: Mapping[str, Any], role: str) -> int:
    """A role's replica count: ``replicas.<role>``, else ``replicaSpecs.<role>.replicas``, else
    1 when the role has a replica spec, else 0.

    ``replicas.<role>`` comes first because it is where ``kubectl scale`` writes the worker
    count (the scale subresource), whichever form the rest of the spec uses."""
    counts = spec.get("replicas") or {}
    if role in counts:
        return int(counts[role])
    full = spec.get("replicaSpecs") or {}
    entry = full.get(role)
    if isinstance(entry, Mapping) and "replicas" in entry:
        return int(entry["replicas"])
    return 1 if role in full else 0


def _count_cel(spec: str, role: str) -> str:
    """:func:`role_count` in CEL, for the spec at ``spec`` (``self`` or ``self.spec``)."""
    full, counts = f"{spec}.replicaSpecs", f"{spec}.replicas"
    return (f"((has({counts}) && has({counts}.{role})) ? {counts}.{role} : "
            f"((has({full}) && has({full}.{role}) && has({full}.{role}.replicas)) "
            f"? {full}.{role}.replicas : ((has({full}) && has({full}.{role})) ? 1 : 0)))")


def _cel_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _matches(pattern: str) -> str:
    """CEL's ``matches`` finds a match anywhere: anchored, it is Python's ``re.fullmatch``."""
    return f"self.matches({_cel_string('^' + pattern + '$')})"


def _fullmatch(pattern: str, value: Any) -> bool:
    return isinstance(value, str) and re.fullmatch(pattern, value) is not None


def _pattern_rule(path: str, pattern: str, message: str) -> Rule:
    return Rule(path, message, _matches(pattern), lambda value: _fullmatch(pattern, value))


def _matching(path: str, pattern: str, message: str, description: str,
              max_length: int = 253) -> dict[str, Any]:
    """A string field at ``path`` that ``pattern`` must match whole (else ``message``)."""
    return {"type": "string", "maxLength": max_length, "description": description,
            "_rules": (_pattern_rule(path, pattern, message),)}


def _both_given(spec: Mapping[str, Any], role: str) -> bool:
    return (role in (spec.get("replicas") or {})
            and "replicas" in ((spec.get("replicaSpecs") or {}).get(role) or {}))


def _full_count(spec: Mapping[str, Any] | None, role: str) -> Any:
    return ((spec or {}).get("replicaSpecs") or {}).get(role, {}).get("replicas")


def _given_once(role: str) -> Rule:
    """A manifest gives a role's count once. Once stored, ``kubectl scale`` may add
    ``replicas.worker`` to a spec whose worker count is in ``replicaSpecs`` (and then wins
    over it): an update may keep both, as long as ``replicaSpecs.worker.replicas`` does not
    change (a change there would do nothing)."""
    both = (f"has(self.replicas) && has(self.replicas.{role}) && has(self.replicaSpecs) && "
            f"has(self.replicaSpecs.{role}) && has(self.replicaSpecs.{role}.replicas)")
    if role != names.SCALED_ROLE:
        return Rule(f"spec.replicas.{role}",
                    f"is also given as spec.replicaSpecs.{role}.replicas; give the count once",
                    f"!({both})", lambda spec: not _both_given(spec, role))
    old = "oldSelf.value()"
    unchanged = (f"has({old}.replicaSpecs) && has({old}.replicaSpecs.{role}) && "
                 f"has({old}.replicaSpecs.{role}.replicas) && "
                 f"{old}.replicaSpecs.{role}.replicas == self.replicaSpecs.{role}.replicas")
    return Rule(
        f"spec.replicas.{role}",
        f"is also given as spec.replicaSpecs.{role}.replicas; give the count once "
        f"(spec.replicas.{role}, which kubectl scale sets, wins: change that one)",
        f"!({both}) || (oldSelf.hasValue() && {unchanged})",
        lambda spec, old: not _both_given(spec, role) or (
            old is not None and _full_count(old, role) is not None
            and _full_count(old, role) == _full_count(spec, role)),
        transition=True)


def hparam_name_problem(name: str) -> str | None:
    """What is wrong with a hyper-parameter's name (None: nothing): a schema's ``_keys``
    check, which names the key as the field."""
    if len(name) > MAX_HPARAM_NAME:
        return f"is longer than {MAX_HPARAM_NAME} characters"
    if not _fullmatch(HPARAM_NAME, name):
        return ("must be a hyper-parameter name: letters, digits and '_', starting with a "
                "letter")
    if name in RESERVED_HPARAM_NAMES:
        return f"is a name HParams keeps for itself ({', '.join(RESERVED_HPARAM_NAMES)})"
    return None


def _hparams_json(hparams: Mapping[str, Any]) -> int:
    return len(json.dumps(dict(hparams), sort_keys=True).encode())


def _hparams_size_rule(path: str) -> Rule:
    return Rule(path, f"is longer than {MAX_HPARAMS_BYTES} bytes as JSON: every replica is "
                      "given it in one environment variable (KUBELEARN_HPARAMS)",
                None, lambda hparams: _hparams_json(hparams) <= MAX_HPARAMS_BYTES)


#: The value of one hyper-parameter: a string, number or boolean, or a list of them, as
#: HParams takes them. Untyped for the API server (a value may be any of these), which then
#: applies each bound to the values it fits: ``maxLength`` to strings, ``maxItems`` to lists.
#: ``_kinds`` are the JSON types allowed; :mod:`.crd` refuses the others with bounds no value
#: of them meets (an object: ``minProperties`` 1 and ``maxProperties`` 0).
HPARAM_ITEM: dict[str, Any] = {
    "x-kubernetes-preserve-unknown-fields": True,
    "_kinds": ("string", "number", "boolean", "null"),
    "maxLength": MAX_HPARAM_LENGTH,
}
HPARAM_VALUE: dict[str, Any] = {
    "x-kubernetes-preserve-unknown-fields": True,
    "_kinds": ("string", "number", "boolean", "array"),
    "maxLength": MAX_HPARAM_LENGTH,
    "minItems": 1,
    "maxItems": MAX_HPARAM_ITEMS,
    "items": HPARAM_ITEM,
}


def hparams_schema(path: str, description: str) -> dict[str, Any]:
    """``spec.hparams`` (at ``path``): hyper-parameters by name."""
    return {"type": "object", "maxProperties": MAX_HPARAMS, "description": description,
            "additionalProperties": HPARAM_VALUE, "_keys": hparam_name_problem,
            "_rules": (_hparams_size_rule(path),)}


def _scaled_after_finishing(body: Mapping[str, Any], old: Mapping[str, Any] | None) -> bool:
    phase = ((old or {}).get("status") or {}).get("phase")
    return phase in ("Succeeded", "Failed") and (
        role_count(body.get("spec") or {}, "worker")
        != role_count((old or {}).get("spec") or {}, "worker"))


def _name_is_a_label(body: Mapping[str, Any]) -> bool:
    name = body["metadata"].get("name")
    return name is None or _fullmatch(names.DNS_1035, name)


def replica_names_fit(name: str, spec: Mapping[str, Any]) -> bool:
    """Whether every ``<name>-<role>-<index>`` of an Experiment named ``name`` fits."""
    counts = {role: role_count(spec, role) for role in names.ROLES}
    return len(name) <= names.max_name_length(counts)


def tensorboard_name_fits(name: str, spec: Mapping[str, Any]) -> bool:
    """Whether ``<name>-tensorboard`` fits, when the Experiment asks for TensorBoard."""
    return (not spec.get("tensorboard")
            or len(names.tensorboard_name(name)) <= names.MAX_DNS_LABEL)


def _name_fits(body: Mapping[str, Any]) -> bool:
    name = body["metadata"].get("name")
    return name is None or replica_names_fit(name, body["spec"])


def replica_names_fit_cel(spec: str, size: str) -> str:
    """:func:`replica_names_fit` in CEL: the spec at ``spec``, the name's length ``size``."""
    parts = []
    for role in names.ROLES:
        count = _count_cel(spec, role)
        parts.append(f"({count} == 0 || {size} + {len(role) + 2} + "
                     f"size(string({count} - 1)) <= {names.MAX_DNS_LABEL})")
    return "(" + " && ".join(parts) + ")"


def tensorboard_name_fits_cel(spec: str, size: str) -> str:
    """:func:`tensorboard_name_fits` in CEL."""
    return (f"(!has({spec}.tensorboard) || !{spec}.tensorboard || "
            f"{size} <= {names.MAX_DNS_LABEL - len(names.TENSORBOARD) - 1})")


def _name_fits_cel() -> str:
    return ("!has(self.metadata.name) || "
            + replica_names_fit_cel("self.spec", "size(self.metadata.name)"))


def _name_fits_tensorboard(body: Mapping[str, Any]) -> bool:
    name = body["metadata"].get("name")
    return name is None or tensorboard_name_fits(name, body["spec"])


ROOT_RULES = (
    Rule("spec.replicas.worker",
         "cannot change: the Experiment has finished, and a finished Experiment is not scaled",
         "!oldSelf.hasValue() || !has(oldSelf.value().status) || "
         "!has(oldSelf.value().status.phase) || "
         "!(oldSelf.value().status.phase in ['Succeeded', 'Failed']) || "
         f"{_count_cel('self.spec', 'worker')} == "
         f"{_count_cel('oldSelf.value().spec', 'worker')}",
         lambda body, old: not _scaled_after_finishing(body, old), transition=True),
    Rule("metadata.name",
         "must be a DNS-1035 label (lower-case letters, digits and '-', "
         "starting with a letter): it names the experiment's services",
         f"!has(self.metadata.name) || self.metadata.name.matches("
         f"{_cel_string('^' + names.DNS_1035 + '$')})",
         _name_is_a_label),
    Rule("metadata.name",
         "is too long: every pod and service name <name>-<role>-<index> "
         f"must fit in {names.MAX_DNS_LABEL} characters",
         _name_fits_cel(), _name_fits),
    Rule("metadata.name",
         "is too long for spec.tensorboard: its service <name>-tensorboard must fit in "
         f"{names.MAX_DNS_LABEL} characters",
         "!has(self.metadata.name) || !has(self.spec.tensorboard) || !self.spec.tensorboard "
         f"|| size(self.metadata.name) <= {names.MAX_DNS_LABEL - len(names.TENSORBOARD) - 1}",
         _name_fits_tensorboard),
)

#: What starts a URL (RFC 3986 scheme and "://"): a model directory is a path or a URL.
URL_SCHEME = r"([A-Za-z][A-Za-z0-9+.-]*)://"
#: The fsspec protocols a model directory URL may use. The runner image reads and writes
#: s3:// (s3fs); the others need their fsspec package (gcsfs, adlfs, pyarrow) in the image.
MODEL_DIR_SCHEMES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "hdfs", "webhdfs")
#: A URL the runner can use: a known scheme, then a bucket (or host), then an optional prefix.
MODEL_DIR_URL = "(" + "|".join(MODEL_DIR_SCHEMES) + r")://[^/\s]+(/\S*)?"


def is_url(model_dir: str | None) -> bool:
    """Whether a model directory is a URL (any scheme), not a path."""
    return model_dir is not None and re.match(URL_SCHEME, model_dir) is not None


URL_RULE = Rule(
    "spec.modelDir",
    "must be a path or a URL of the form <scheme>://<bucket>/<prefix> with a scheme "
    "kubelearn reads and writes through fsspec: " + ", ".join(MODEL_DIR_SCHEMES),
    f"!self.matches({_cel_string('^' + URL_SCHEME)}) || "
    f"self.matches({_cel_string('^' + MODEL_DIR_URL + '$')})",
    lambda value: not is_url(value) or re.fullmatch(MODEL_DIR_URL, value) is not None)


#: A URL's user-info (``user:password@`` before the host): credentials that every message
#: naming the model directory would show, and that the stores' clients do not read there.
URL_USERINFO = URL_SCHEME + r"[^/]*@"
CREDENTIALS_IN_URL = ("must not hold credentials (user:password@ in the URL): give them in "
                      "the environment, from the Secret named by spec.storage.secretName on "
                      "a cluster")


def has_userinfo(model_dir: str | None) -> bool:
    """Whether a model directory URL carries credentials before its host."""
    return model_dir is not None and re.match(URL_USERINFO, model_dir) is not None


CREDENTIALS_RULE = Rule(
    "spec.modelDir", CREDENTIALS_IN_URL,
    f"!self.matches({_cel_string('^' + URL_USERINFO)})",
    lambda value: not has_userinfo(value))


def _has_any(obj: str, fields: tuple[str, ...]) -> str:
    return "(" + " || ".join(f"has({obj}.{f})" for f in fields) + ")"


NOTHING_TO_RUN = ("is required unless the main container of every replica runs a program of "
                  "its own: an image (the template's, or spec.image), a command or args")


def _main_of(spec: Mapping[str, Any], role: str) -> Mapping[str, Any] | None:
    """The main container of a role's template as written ({} without containers; None
    when several containers name none, which the template's own rule refuses)."""
    entry = (spec.get("replicaSpecs") or {}).get(role) or {}
    containers = main_containers.template_containers(entry.get("template"))
    if not containers:
        return {}
    index = main_containers.main_container_index(containers)
    return None if index is None else containers[index]


def runs_something(spec: Mapping[str, Any]) -> bool:
    """Whether every replica runs something: the runner (spec.experimentFn), or the main
    container's own program (its image, spec.image, a command or args)."""
    if spec.get("experimentFn") or spec.get("image"):
        return True
    for role in names.ROLES:
        if role_count(spec, role) == 0:
            continue
        main = _main_of(spec, role)
        if main is not None and not main_containers.runs_something(main, None):
            return False
    return True


def _role_runs_something_cel(role: str) -> str:
    entry = f"self.replicaSpecs.{role}"
    containers = f"{entry}.template.spec.containers"
    given = (f"has(self.replicaSpecs) && has({entry}) && has({entry}.template) && "
             f"has({entry}.template.spec) && has({containers})")
    test = ("(has(c.image) && size(c.image) > 0) || (has(c.command) && size(c.command) > 0)"
            " || (has(c.args) && size(c.args) > 0)")
    several = f"(size({containers}) > 1 && !{main_containers.has_main_container_cel(containers)})"
    return (f"({_count_cel('self', role)} == 0 || ({given} && ({several} || "
            f"{main_containers.main_container_cel(containers, test)})))")


SPEC_RULES = (
    *(_given_once(role) for role in names.ROLES),
    Rule("spec.replicas", "master and chief are exclusive; set one of them",
         f"!({_count_cel('self', 'master')} >= 1 && {_count_cel('self', 'chief')} >= 1)",
         lambda spec: not (role_count(spec, "master") >= 1 and role_count(spec, "chief") >= 1)),
    Rule("spec.tensorboard",
         "needs a shared model directory: TensorBoard reads it from a pod of its own, "
         "and spec.storage.ephemeral gives each replica a private one",
         "!(has(self.tensorboard) && self.tensorboard && has(self.storage) && "
         "has(self.storage.ephemeral) && self.storage.ephemeral)",
         lambda spec: not (spec.get("tensorboard")
                           and (spec.get("storage") or {}).get("ephemeral"))),
    Rule("spec.storage",
         "is not a volume when spec.modelDir is a URL: give only secretName (the Secret "
         "with the credentials of the object store)",
         f"!has(self.modelDir) || !self.modelDir.matches({_cel_string('^' + URL_SCHEME)}) "
         f"|| !has(self.storage) || !{_has_any('self.storage', VOLUME_FIELDS)}",
         lambda spec: not is_url(spec.get("modelDir"))
         or not any(f in (spec.get("storage") or {}) for f in VOLUME_FIELDS)),
    Rule("spec.storage.secretName",
         "needs spec.modelDir to be a URL: the Secret holds the object store's credentials",
         f"!has(self.storage) || !has(self.storage.secretName) || (has(self.modelDir) && "
         f"self.modelDir.matches({_cel_string('^' + URL_SCHEME)}))",
         lambda spec: "secretName" not in (spec.get("storage") or {})
         or is_url(spec.get("modelDir"))),
    Rule("spec.experimentFn", NOTHING_TO_RUN,
         "has(self.experimentFn) || has(self.image) || ("
         + " && ".join(_role_runs_something_cel(role) for role in names.ROLES) + ")",
         lambda spec: runs_something(spec)),
    Rule("spec.replicas", "needs at least one worker or master (or chief)",
         " + ".join(_count_cel("self", role) for role in names.TRAINING_ROLES) + " >= 1",
         lambda spec: sum(role_count(spec, role) for role in names.TRAINING_ROLES) >= 1),
)


def _string(description: str, max_length: int) -> dict[str, Any]:
    return {"type": "string", "minLength": 1, "maxLength": max_length,
            "description": description}


def _integer(description: str | None = None, minimum: int = 0,
             maximum: int | None = None) -> dict[str, Any]:
    node: dict[str, Any] = {"type": "integer", "minimum": minimum}
    if maximum is not None:
        node["maximum"] = maximum
    if description:
        node["description"] = description
    return node


def _most(role: str) -> int:
    """At most one chief or master; any number of the other roles, up to the cap."""
    return 1 if role in names.LEADER_ROLES else MAX_REPLICAS


def _replica_spec(role: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": f"The {role} role's replicas: count, restart policy and pod template.",
        "properties": {
            "replicas": _integer("Number of replicas (default 1).", 0, _most(role)),
            "restartPolicy": {
                "type": "string", "enum": list(RESTART_POLICIES),
                "description": "Never, OnFailure, Always, or ExitCode (exit codes 1-127 are "
                               "permanent failures, 128 and above are retried); restarts "
                               "count against runPolicy.backoffLimit. Default "
                               f"{DEFAULT_RESTART_POLICY}."},
            "template": _template(role),
        },
    }


def _template(role: str) -> dict[str, Any]:
    """A PodTemplateSpec, open but for what decides its main container and what it runs:
    its containers' names, images, commands and args (see :mod:`.containers`)."""
    path = f"spec.replicaSpecs.{role}.template.spec.containers"
    strings = {"type": "array", "items": {"type": "string"}}
    container = {
        "type": "object", "x-kubernetes-preserve-unknown-fields": True,
        "properties": {
            "name": {"type": "string", "maxLength": main_containers.MAX_CONTAINER_NAME},
            "image": {"type": "string"},
            "command": strings,
            "args": strings,
        },
    }
    return {
        "type": "object", "x-kubernetes-preserve-unknown-fields": True,
        "description": "PodTemplateSpec. Its main container is the one named tensorflow, "
                       "else kubelearn, else the only one; only it gets TF_CONFIG, the "
                       "kubelearn environment, the port and the model directory. Other "
                       "containers are left as written.",
        "properties": {"spec": {
            "type": "object", "x-kubernetes-preserve-unknown-fields": True,
            "properties": {"containers": {
                "type": "array", "maxItems": main_containers.MAX_CONTAINERS,
                "items": container,
                "_rules": (Rule(path, main_containers.NO_MAIN_CONTAINER,
                                main_containers.has_main_container_cel("self"),
                                main_containers.has_main_container),),
            }},
        }},
    }


def _storage_forms(storage: Mapping[str, Any]) -> int:
    """How many of the three forms a storage spec gives."""
    return (bool(storage.get("ephemeral")) + ("persistentVolumeClaim" in storage)
            + any(f in storage for f in NEW_CLAIM_FIELDS))


STORAGE_RULES = (
    Rule("spec.storage",
         "give one of ephemeral: true, persistentVolumeClaim (an existing claim), or size, "
         "storageClassName, accessModes and deleteWithExperiment (a claim the operator "
         "creates)",
         "(has(self.ephemeral) && self.ephemeral ? 1 : 0) + "
         "(has(self.persistentVolumeClaim) ? 1 : 0) + "
         f"({_has_any('self', NEW_CLAIM_FIELDS)} ? 1 : 0) <= 1",
         lambda storage: _storage_forms(storage) <= 1),
)


def _storage() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "Where the model directory lives (checkpoints, exports, runs, event "
                       "files). Default: a claim <name>-model from the cluster's default "
                       "StorageClass, kept after the Experiment is deleted. ReadWriteOnce "
                       "pins the experiment to one node; use ReadWriteMany to spread it.",
        "_rules": STORAGE_RULES,
        "properties": {
            "ephemeral": {"type": "boolean",
                          "description": "true: a directory private to each pod, lost with "
                                         "it (a throwaway run)."},
            "persistentVolumeClaim": {
                "type": "object", "required": ["claimName"],
                "description": "An existing claim, mounted at the model directory.",
                "properties": {"claimName": _matching(
                    "spec.storage.persistentVolumeClaim.claimName", DNS_1123_SUBDOMAIN,
                    "must be the name of a PersistentVolumeClaim (a DNS-1123 subdomain)",
                    "Name of a PersistentVolumeClaim in the Experiment's namespace.")}},
            "size": _matching("spec.storage.size", QUANTITY,
                              "must be a quantity such as 1Gi or 500Mi",
                              "Storage request of the claim the operator creates "
                              f"(default {DEFAULT_STORAGE_SIZE}).", 64),
            "storageClassName": _matching(
                "spec.storage.storageClassName", DNS_1123_SUBDOMAIN,
                "must be the name of a StorageClass",
                "StorageClass of the claim the operator creates (default: the cluster's "
                "default class)."),
            "accessModes": {
                "type": "array", "minItems": 1, "maxItems": len(ACCESS_MODES),
                "x-kubernetes-list-type": "set",
                "description": "Access modes of the claim the operator creates (default "
                               "ReadWriteOnce).",
                "items": {"type": "string", "enum": list(ACCESS_MODES)}},
            "secretName": _matching(
                "spec.storage.secretName", DNS_1123_SUBDOMAIN, "must be the name of a Secret",
                "With a URL in spec.modelDir: a Secret in the Experiment's namespace whose "
                "keys become environment variables of every replica and of TensorBoard, e.g. "
                "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_ENDPOINT_URL for s3://."),
            "deleteWithExperiment": {
                "type": "boolean",
                "description": "true: the claim the operator created is deleted with the "
                               "Experiment. Default false: the trained model outlives it."},
        },
    }


SPEC: dict[str, Any] = {
    "type": "object",
    "_home": "spec",  # its rules' paths, also where a Sweep holds it (spec.experiment)
    "_rules": SPEC_RULES,
    "properties": {
        "experimentFn": _matching(
            "spec.experimentFn", EXPERIMENT_FN,
            "must be of the form module:function, e.g. kubelearn.examples.linear:experiment_fn",
            "module:function returning the Experiment: the main container of a replica "
            "without a command runs kubelearn run --experiment-fn with it. Optional: "
            "without it, nothing is injected and each main container runs its image's "
            "ENTRYPOINT/CMD (or its command)."),
        "hparams": hparams_schema(
            "spec.hparams",
            "Hyper-parameters, passed to every replica as KUBELEARN_HPARAMS (JSON): at most "
            f"{MAX_HPARAMS}, each a string (up to {MAX_HPARAM_LENGTH} characters), number or "
            f"boolean, or a list of up to {MAX_HPARAM_ITEMS} of them; named as HParams takes "
            f"them (letters, digits and '_', starting with a letter), {MAX_HPARAMS_BYTES} "
            "bytes as JSON in all. The names and the size are checked by the operator (the "
            "Experiment fails, naming the key) and kubelearn local, as the API server cannot "
            "see the keys of a map of values of several types."),
        "image": _string("Image of every main container whose template gives none; default "
                         "is the operator's setting (the runner image).", 1024),
        "modelDir": {**_string("Model directory: a path, or a URL such as "
                               "s3://bucket/prefix read and written through fsspec (then "
                               "spec.storage gives only the credentials' secretName). "
                               "Default /tmp/kubelearn/<namespace>/<name> on a cluster, "
                               "where spec.storage is mounted, and ./output/<name> with "
                               "kubelearn local.", 4096),
                     "_rules": (URL_RULE, CREDENTIALS_RULE)},
        "storage": _storage(),
        "tensorboard": {
            "type": "boolean",
            "description": "true: the operator serves the model directory with TensorBoard "
                           "(a Deployment and a Service <name>-tensorboard on port "
                           f"{names.TENSORBOARD_PORT}, reading the claim read-only), removed "
                           "with the Experiment."},
        "schedule": _matching(
            "spec.schedule", SCHEDULE, "must be the name of an Experiment method, e.g. train",
            "Experiment method to run (kubelearn run --schedule); default by role."),
        "replicas": {
            "type": "object",
            "description": "Minimal form: replicas per role.",
            "properties": {role: _integer(None, 0, _most(role)) for role in names.ROLES},
        },
        "replicaSpecs": {
            "type": "object",
            "description": "Full form: per-role replicas, restart policy and pod template.",
            "properties": {role: _replica_spec(role) for role in names.ROLES},
        },
        "runPolicy": {
            "type": "object",
            "properties": {
                "cleanPodPolicy": {
                    "type": "string", "enum": list(CLEAN_POD_POLICIES),
                    "description": "Pods deleted when the experiment finishes: None, Running "
                                   f"or All (default {DEFAULT_CLEAN_POD_POLICY})."},
                "backoffLimit": _integer("Restarts allowed across the experiment before it "
                                         f"fails (default {DEFAULT_BACKOFF_LIMIT})."),
                "activeDeadlineSeconds": _integer(
                    "Fail the experiment this many seconds after it started.", 1),
                "ttlSecondsAfterFinished": _integer(
                    "Delete the experiment this many seconds after it finished."),
                "suspend": {"type": "boolean", "description": "Delete the pods while true; "
                            "recreate them when false again."},
                "schedulingPolicy": {
                    "type": "object",
                    "description": "Gang scheduling through a scheduler-plugins PodGroup.",
                    "properties": {
                        "minAvailable": _integer(None, 1),
                        "queue": {"type": "string"},
                        "priorityClass": {"type": "string"},
                        "schedulerName": {
                            "type": "string", "description": "Scheduler for the pods "
                            f"(default {names.DEFAULT_GANG_SCHEDULER})."},
                        "scheduleTimeoutSeconds": _integer(None, 1),
                    },
                },
            },
        },
        "successPolicy": {
            "type": "string", "enum": list(SUCCESS_POLICIES),
            "description": "default: the master/chief succeeding, else worker 0; AllWorkers: "
                           "every worker succeeding."},
    },
}

TIME = {"type": "string", "format": "date-time"}

CONDITIONS: dict[str, Any] = {"type": "array", "items": {
    "type": "object", "required": ["type", "status"],
    "properties": {"type": {"type": "string"}, "status": {"type": "string"},
                   "reason": {"type": "string"}, "message": {"type": "string"},
                   "lastUpdateTime": TIME, "lastTransitionTime": TIME}}}

STATUS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "phase": {"type": "string"},
        "replicas": {"type": "string", "description": "active/total replicas."},
        "workers": {
            "type": "object",
            "description": "The scale subresource's view of the workers: the count the "
                           "operator runs (desired), the workers running (active) and their "
                           "label selector.",
            "properties": {"desired": {"type": "integer"}, "active": {"type": "integer"},
                           "selector": {"type": "string"}}},
        "step": {"type": "integer"},
        "loss": {"type": "number"},
        "metrics": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        "conditions": CONDITIONS,
        "replicaStatuses": {"type": "object", "additionalProperties": {
            "type": "object",
            "properties": {key: {"type": "integer"}
                           for key in ("active", "succeeded", "failed", "restarts")}}},
        "podRestarts": {
            "type": "object", "x-kubernetes-preserve-unknown-fields": True,
            "description": "Per pod: restarts made by the operator and the last failed pod "
                           "replaced."},
        "tensorboard": {
            "type": "object",
            "description": "Where TensorBoard answers (spec.tensorboard): its Service and URL "
                           "in the cluster.",
            "properties": {key: {"type": "string"} for key in ("service", "url")}},
        "storage": {
            "type": "object",
            "description": "Where the model directory is: the claim holding it (empty when "
                           "ephemeral), its path in the replicas, and the final export's "
                           "path there.",
            "properties": {key: {"type": "string"}
                           for key in ("claimName", "modelDir", "export")}},
        "podGroup": {"type": "object", "properties": {"name": {"type": "string"},
                                                      "message": {"type": "string"}}},
        "startTime": TIME,
        "completionTime": TIME,
        "lastReconcileTime": TIME,
        "observedGeneration": {"type": "integer"},
        "kopf": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
    },
}

def resource_root(description: str, rules: tuple[Rule, ...], spec: dict[str, Any],
                  status: dict[str, Any]) -> dict[str, Any]:
    """The schema of a whole kubelearn object around its spec and status."""
    return {
        "type": "object",
        "description": description,
        "required": ["spec"],
        "_open": True,  # the API server owns apiVersion, kind and the rest of metadata
        "_rules": rules,
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object", "_open": True,
                         "properties": {"name": {"type": "string"}}},
            "spec": spec,
            "status": status,
        },
    }


ROOT = resource_root("A distributed ML experiment run as one pod and one headless service "
                     "per replica.", ROOT_RULES, SPEC, STATUS)
