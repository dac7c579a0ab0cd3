"""The operator's reading of an Experiment's spec: the model's parser plus the operator's own
defaults (its runner image, the model directory under ``/tmp/kubelearn``).

The CRD's schema and CEL rules reject invalid specs at the API server; they are generated from
the same model (:mod:`kubelearn_spec`), so the operator never acts on a spec the server would
not have accepted (for example one stored before the CRD was updated).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from kubelearn_spec import model
from kubelearn_spec.model import ExperimentSpec
from kubelearn_spec.validate import SpecError

__all__ = ["ExperimentSpec", "SpecError", "parse_spec"]


def model_dir(namespace: str, name: str) -> str:
    """Where an experiment keeps its checkpoints when its spec does not say."""
    return f"/tmp/kubelearn/{namespace}/{name}"


def parse_spec(spec: Any, *, name: str, namespace: str, default_image: str) -> ExperimentSpec:
    """Validate an Experiment's spec and fill in every default, the operator's included.

    Raises:
        SpecError: naming the offending field.
    """
    parsed = model.parse_spec(spec, name=name, namespace=namespace, stored=True)
    return dataclasses.replace(parsed, image=parsed.image or default_image,
                               model_dir=parsed.model_dir or model_dir(namespace, name))
