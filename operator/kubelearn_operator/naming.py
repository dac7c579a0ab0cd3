"""The model's names and ports under the name some operator modules still import them by.

They live in :mod:`kubelearn_spec.names` and :mod:`kubelearn_spec.contract`; import them
from there.
"""

from __future__ import annotations

from kubelearn_spec.contract import CLUSTER_KEY, PROGRESS_PATH, PROGRESS_PORT
from kubelearn_spec.names import (
    API_VERSION,
    GROUP,
    KIND,
    LABEL_EXPERIMENT,
    LABEL_INDEX,
    LABEL_ROLE,
    PLURAL,
    PODGROUP_GROUP,
    PODGROUP_PLURAL,
    PODGROUP_VERSION,
    VERSION,
)

__all__ = ["API_VERSION", "CLUSTER_KEY", "GROUP", "KIND", "LABEL_EXPERIMENT", "LABEL_INDEX",
           "LABEL_ROLE", "PLURAL", "PODGROUP_GROUP", "PODGROUP_PLURAL", "PODGROUP_VERSION",
           "PROGRESS_PATH", "PROGRESS_PORT", "VERSION"]
