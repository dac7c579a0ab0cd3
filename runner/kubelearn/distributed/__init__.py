"""Distributed training: parameter servers on the network, workers that train against them.

The wire is ZeroMQ (pyzmq, the ``distributed`` extra): a JSON header frame followed by raw
ndarray buffers, checked against what the receiver expects. Nothing is ever pickled.
"""

# The experiment's token, and its CurveZMQ secret key (64 hex digits): when that is set, ps
# traffic is encrypted and only peers holding the key can connect (see
# :mod:`kubelearn.distributed.curve`).
from kubelearn_spec.contract import ENV_CURVE_KEY, ENV_TOKEN

__all__ = ["ENV_CURVE_KEY", "ENV_TOKEN"]
