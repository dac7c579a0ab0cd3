"""The parameter server's replies on a real loopback socket: a variable a reply still sends
is never updated in place, and a reply is never torn by the next push."""

import numpy as np
import pytest
import zmq

from kubelearn.distributed import curve, wire
from kubelearn.distributed.server import ParameterServer
from kubelearn.local import free_port


class _Tracker:
    def __init__(self, done):
        self.done = done


@pytest.mark.parametrize("in_flight", [True, False])
def test_ps_never_updates_a_variable_that_a_reply_is_still_sending(in_flight):
    server = ParameterServer(f"127.0.0.1:{free_port()}", 0, "t")
    try:
        server.state.initialize(
            {"variables": ["w"], "optimizer": {"name": "SGD", "learning_rate": 0.5}},
            {"w": np.ones(2, np.float32)})
        lent = server.state.variables["w"]
        server._lent = [_Tracker(done=True), _Tracker(done=not in_flight)]
        server._unlend()
        server.state.apply({"w": np.ones(2, np.float32)}, count_step=True)
        np.testing.assert_allclose(server.state.variables["w"], [0.5, 0.5])
        # A buffer still being sent keeps its values; a sent one is updated in place.
        np.testing.assert_allclose(lent, [1.0, 1.0] if in_flight else [0.5, 0.5])
        assert server._lent == []  # sent or no longer shared: nothing left to watch
    finally:
        server.close()


def test_ps_replies_are_never_torn_by_the_next_push():
    port = free_port()
    server = ParameterServer(f"127.0.0.1:{port}", 0, "t")
    client = zmq.Context.instance().socket(zmq.DEALER)
    curve.plain_client(client, "t")
    client.connect(f"tcp://127.0.0.1:{port}")

    def ask(header, tensors=None):
        wire.send(client, wire.encode({"token": "t", "id": 1, **header}, tensors), lend=True)
        server.handle(server._socket.recv_multipart(copy=False))
        assert client.poll(10_000)
        return wire.decode(client.recv_multipart(copy=False))

    try:
        ask({"op": "init", "variables": ["w"],
             "optimizer": {"name": "SGD", "learning_rate": 1.0}},
            {"w": np.zeros(1 << 16, np.float32)})
        _, first = ask({"op": "push", "step": True, "task": "worker:0"},
                       {"w": np.ones(1 << 16, np.float32)})
        held = server.state.variables["w"]
        assert wire.whole_frame(held) is not None  # the pushed frame, now the variable
        _, pulled = ask({"op": "pull"})
        _, second = ask({"op": "push", "step": True}, {"w": np.ones(1 << 16, np.float32)})
        np.testing.assert_array_equal(first["w"], -1.0)
        np.testing.assert_array_equal(pulled["w"], -1.0)
        np.testing.assert_array_equal(held, -1.0)
        np.testing.assert_array_equal(second["w"], -2.0)
        # A gradient in several frames is joined, not reused: the variable is updated in
        # place, after a copy if replies may share it.
        assert server.state.replaced == {"w"}
        server.state.initialize({"variables": ["w", "big"], "optimizer": {
            "name": "SGD", "learning_rate": 1.0}}, {"w": second["w"], "big": np.zeros(
                wire.FRAME_BYTES, np.float32)})
        _, third = ask({"op": "push"}, {"w": np.ones(1 << 16, np.float32),
                                        "big": np.ones(wire.FRAME_BYTES, np.float32)})
        assert server.state.replaced == {"w"}
        big = server.state.variables["big"]
        assert wire.whole_frame(big) is None
        np.testing.assert_array_equal(third["w"], -3.0)
        np.testing.assert_array_equal(third["big"], -1.0)
        server.state.variables["w"] = held
        server._unlend(["w"])
        assert server.state.variables["w"] is not held and not server.state.replaced
        assert server.state.variables["big"] is big
    finally:
        client.close(0)
        server.close()
