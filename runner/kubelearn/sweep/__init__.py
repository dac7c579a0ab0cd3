"""Sweeps without a cluster: ``kubelearn sweep local`` and ``kubelearn sweep plot``. The
search itself is :mod:`kubelearn_search` (the ``sweep`` extra, Optuna), which the operator
shares."""
