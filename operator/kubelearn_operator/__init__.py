"""kubelearn operator: runs Experiment resources as pods and headless services.

The kopf handlers in :mod:`kubelearn_operator.handlers` are thin; the decisions live in pure
modules (:mod:`.spec`, :mod:`.manifests`, :mod:`.tfconfig`, :mod:`.status`, :mod:`.reconcile`) so
they can be tested without a cluster.
"""

__version__ = "0.1.0"
