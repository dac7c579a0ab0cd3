"""Hyper-parameter search for Sweeps: :mod:`kubelearn.sweep.search` (needs the ``sweep``
extra, Optuna)."""
