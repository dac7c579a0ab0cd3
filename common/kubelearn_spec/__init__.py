"""The Experiment (``kubelearn.dev/v1alpha1``): one model for the CRD, the operator and
``kubelearn local``.

Types, defaults and validation (:mod:`.model`), the schema and CEL rules the CRD is generated
from (:mod:`.schema`, :mod:`.crd`), every deterministic name (:mod:`.names`), what a replica is
given (:mod:`.contract`, :mod:`.tfconfig`) and the policies that decide restarts and the outcome
(:mod:`.policy`). Standard library only: the operator image has no numpy.
"""
