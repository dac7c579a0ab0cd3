"""Distributed training: parameter servers on the network, workers that train against them.

The wire is ZeroMQ (pyzmq, the ``distributed`` extra): a JSON header frame followed by raw
ndarray buffers, checked against what the receiver expects. Nothing is ever pickled.
"""

ENV_TOKEN = "KUBELEARN_TOKEN"
#: The experiment's CurveZMQ secret key, 64 hex digits; when set, ps traffic is encrypted
#: and only peers holding the key can connect (see :mod:`kubelearn.distributed.curve`).
ENV_CURVE_KEY = "KUBELEARN_CURVE_KEY"
