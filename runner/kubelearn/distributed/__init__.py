"""Distributed training: parameter servers on the network, workers that train against them.

The wire is ZeroMQ (pyzmq, the ``distributed`` extra): a JSON header frame followed by raw
ndarray buffers, checked against what the receiver expects. Nothing is ever pickled.
"""

ENV_TOKEN = "KUBELEARN_TOKEN"
