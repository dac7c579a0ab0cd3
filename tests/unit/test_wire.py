"""The parameter-server wire format and the pure parts of the ps: validation first."""

import json

import numpy as np
import pytest

from kubelearn.distributed import placement, wire
from kubelearn.distributed.server import ShardState, bind_address
from kubelearn.estimators import optimizers


def _frames(tensors, header=None):
    return [bytes(f) for f in wire.encode(header or {"op": "push"}, tensors)]


def test_round_trip_keeps_names_dtypes_shapes():
    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3),
               "b": np.zeros((0,), np.float64), "c": np.array(7, dtype=np.int64)}
    header, out = wire.decode(_frames(tensors, {"op": "x", "id": 3}))
    assert header == {"op": "x", "id": 3}
    for name, value in tensors.items():
        assert out[name].dtype == value.dtype and out[name].shape == value.shape
        np.testing.assert_array_equal(out[name], value)


def test_non_contiguous_arrays_are_sent_correctly():
    value = np.arange(12, dtype=np.float32).reshape(3, 4).T
    _, out = wire.decode(_frames({"t": value}))
    np.testing.assert_array_equal(out["t"], value)


def test_unsupported_dtype_is_not_sent():
    with pytest.raises(wire.WireError, match="dtype"):
        wire.encode({}, {"o": np.array(["x"], dtype=object)})


EXPECTED = {"w": ("float32", (2, 2))}


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda f: [b"not json", *f[1:]], "not JSON"),
        (lambda f: [json.dumps([1]).encode(), *f[1:]], "JSON object"),
        (lambda f: f[:1], "follow"),
        (lambda f: [f[0], f[1][:-4]], "bytes"),
    ],
)
def test_malformed_frames_are_rejected(mutate, match):
    frames = _frames({"w": np.zeros((2, 2), np.float32)})
    with pytest.raises(wire.WireError, match=match):
        wire.decode(mutate(frames), EXPECTED)


@pytest.mark.parametrize(
    ("tensors", "match"),
    [
        ({"w": np.zeros((2, 2), np.float64)}, "expected float32"),
        ({"w": np.zeros((4,), np.float32)}, r"expected float32 \[2, 2\]"),
        ({"v": np.zeros((2, 2), np.float32)}, "not served"),
    ],
)
def test_name_dtype_shape_checked_against_what_is_served(tensors, match):
    with pytest.raises(wire.WireError, match=match):
        wire.decode(_frames(tensors), EXPECTED)


def test_lying_header_is_rejected():
    frames = _frames({"w": np.zeros((2, 2), np.float32)})
    header = json.loads(frames[0])
    header["tensors"][0]["dtype"] = "object"
    with pytest.raises(wire.WireError, match="not allowed"):
        wire.decode([json.dumps(header).encode(), frames[1]])
    header["tensors"][0].update(dtype="float32", shape=[2, -2])
    with pytest.raises(wire.WireError, match="bad shape"):
        wire.decode([json.dumps(header).encode(), frames[1]])


def test_greedy_placement_by_size_with_global_order():
    shapes = {"big": (100, 10), "small": (10,), "mid": (50, 10), "tiny": (1,)}
    assigned = placement.assign(shapes, 2)
    assert assigned == {"big": 0, "small": 1, "mid": 1, "tiny": 1}
    assert placement.shards(assigned, 2) == [["big"], ["small", "mid", "tiny"]]
    assert set(placement.assign(shapes, 1).values()) == {0}
    with pytest.raises(ValueError):
        placement.assign(shapes, 0)


def _init(state, sync=None):
    header = {"variables": ["w"], "optimizer": optimizers.spec(optimizers.GradientDescent(0.5)),
              "global_step": 10, "sync_replicas": sync}
    state.initialize(header, {"w": np.ones(2, np.float32)})


def test_shard_applies_optimizer_and_counts_steps_on_ps0():
    state = ShardState(holds_global_step=True)
    _init(state)
    assert state.apply({"w": np.array([1.0, 2.0], np.float32)}, count_step=True)
    np.testing.assert_allclose(state.variables["w"], [0.5, 0.0])
    assert state.global_step == 11
    state.apply({"w": np.zeros(2, np.float32)}, count_step=False)
    assert state.global_step == 11


def test_shard_sync_replicas_averages_n_gradients():
    state = ShardState(holds_global_step=True)
    _init(state, sync=2)
    assert not state.apply({"w": np.array([2.0, 0.0], np.float32)}, count_step=True)
    np.testing.assert_allclose(state.variables["w"], [1.0, 1.0])
    assert state.apply({"w": np.array([0.0, 2.0], np.float32)}, count_step=True)
    np.testing.assert_allclose(state.variables["w"], [0.5, 0.5])
    assert state.global_step == 11


@pytest.mark.parametrize(
    ("header", "match"),
    [
        ({"variables": ["w"]}, "optimizer"),
        ({"variables": ["w"], "optimizer": {"name": "Nope", "learning_rate": 1}}, "optimizer"),
        ({"variables": ["x"], "optimizer": {"name": "SGD", "learning_rate": 1}}, "missing"),
        ({"variables": ["w"], "optimizer": {"name": "SGD", "learning_rate": 1},
          "global_step": -1}, "global_step"),
    ],
)
def test_shard_init_validation(header, match):
    with pytest.raises(wire.WireError, match=match):
        ShardState(True).initialize(header, {"w": np.ones(2, np.float32)})


def test_bind_address():
    assert bind_address("127.0.0.5:2222") == "tcp://127.0.0.5:2222"
    assert bind_address("exp-ps-0.ns.svc:2222") == "tcp://*:2222"
    assert bind_address("[::1]:9") == "tcp://[::1]:9"


def test_large_tensor_travels_in_frames_and_is_joined():
    value = np.arange(700_000, dtype=np.float64)  # 5.6 MB: six frames
    frames = wire.encode({"op": "push"}, {"big": value, "small": np.ones(3, np.float32)})
    assert len(frames) == 1 + 6 + 1
    assert max(len(memoryview(f).cast("B")) for f in frames[1:]) <= wire.FRAME_BYTES
    _, out = wire.decode([bytes(f) for f in frames])
    np.testing.assert_array_equal(out["big"], value)
    np.testing.assert_array_equal(out["small"], np.ones(3, np.float32))
    header = json.loads(bytes(frames[0]))
    header["tensors"][0]["frames"] = 5  # a lying frame count
    with pytest.raises(wire.WireError, match="follow"):
        wire.decode([json.dumps(header).encode(), *[bytes(f) for f in frames[1:]]])
    header["tensors"][0]["frames"] = 0
    with pytest.raises(wire.WireError, match="positive"):
        wire.decode([json.dumps(header).encode(), *[bytes(f) for f in frames[1:]]])


def test_decode_with_an_already_parsed_header_validates_the_same():
    frames = _frames({"w": np.ones((2, 2), np.float32)}, {"op": "push", "step": True})
    header = wire.decode_header(frames[0])
    got_header, tensors = wire.decode(frames, EXPECTED, header=header)
    assert got_header == {"op": "push", "step": True}
    np.testing.assert_array_equal(tensors["w"], np.ones((2, 2), np.float32))
    lying = wire.decode_header(frames[0])
    lying["tensors"][0]["shape"] = [4]
    with pytest.raises(wire.WireError, match="expected float32"):
        wire.decode(frames, EXPECTED, header=lying)
    with pytest.raises(wire.WireError, match="bytes"):
        wire.decode([frames[0], frames[1][:-4]], EXPECTED,
                    header=wire.decode_header(frames[0]))


def _pair():
    import zmq

    context = zmq.Context()
    sender, receiver = context.socket(zmq.PAIR), context.socket(zmq.PAIR)
    sender.bind("inproc://wire-test")
    receiver.connect("inproc://wire-test")
    return context, sender, receiver


def test_lent_frames_are_tracked_until_sent_and_copied_frames_are_not_lent():
    context, sender, receiver = _pair()
    try:
        value = np.arange(3 * wire.FRAME_BYTES // 4, dtype=np.float32)  # three frames
        tracker = wire.send(sender, wire.encode({"op": "x"}, {"v": value}), lend=True,
                            track=True)
        _, out = wire.decode(receiver.recv_multipart(copy=False))
        np.testing.assert_array_equal(out["v"], value)
        tracker.wait(10)
        assert tracker.done
        small = np.arange(4, dtype=np.float32)
        wire.send(sender, wire.encode({"op": "y"}, {"v": small}), lend=False)
        small += 100  # after a copying send, the sender may change its buffer at once
        _, out = wire.decode(receiver.recv_multipart(copy=False))
        np.testing.assert_array_equal(out["v"], np.arange(4, dtype=np.float32))
    finally:
        sender.close(0)
        receiver.close(0)
        context.term()


def test_a_tracked_message_copies_its_small_frames_and_tracks_its_large_ones():
    import zmq

    context, sender, receiver = _pair()
    try:
        identity = bytearray(b"peer-identity")
        large = np.arange(zmq.COPY_THRESHOLD // 4, dtype=np.float32)  # lent, not copied
        tracker = wire.send(sender, [identity, *wire.encode({"op": "x"}, {"v": large})],
                            lend=True, track=True)
        identity[:] = b"X" * len(identity)  # copied at once: the message keeps the old one
        frames = receiver.recv_multipart(copy=False)
        assert frames[0].bytes == b"peer-identity"
        _, out = wire.decode(frames[1:])
        np.testing.assert_array_equal(out["v"], large)
        del frames, out  # inproc: the receiver's frames share the sender's buffer
        tracker.wait(10)
        assert tracker.done
        # A message with nothing to lend has nothing to wait for.
        small = wire.send(sender, wire.encode({"op": "y"}, {"v": np.ones(4, np.float32)}),
                          lend=True, track=True)
        receiver.recv_multipart()
        assert small.done
    finally:
        sender.close(0)
        receiver.close(0)
        context.term()


def test_snapshot_slots_are_copies():
    state = ShardState(holds_global_step=True)
    state.initialize({"variables": ["w"],
                      "optimizer": {"name": "Momentum", "learning_rate": 0.1}},
                     {"w": np.zeros(2, np.float32)})
    state.apply({"w": np.ones(2, np.float32)}, count_step=True)
    snapshot = state.snapshot()
    before = snapshot["w/Momentum"].copy()
    state.apply({"w": np.ones(2, np.float32)}, count_step=True)
    np.testing.assert_array_equal(snapshot["w/Momentum"], before)


def test_a_tensor_that_is_a_whole_received_frame_is_sent_as_that_frame():
    import zmq

    context, sender, receiver = _pair()
    try:
        value = np.arange(1024, dtype=np.float32).reshape(32, 32)
        wire.send(sender, wire.encode({"op": "x"}, {"v": value}), lend=True)
        _, out = wire.decode(receiver.recv_multipart(copy=False))
        frame = wire.whole_frame(out["v"])
        assert isinstance(frame, zmq.Frame)
        frames = wire.encode({"op": "y"}, {"v": out["v"]})
        assert frames[1] is frame  # shared with ZeroMQ, not copied
        # Part of a frame, or a tensor that was joined from several, goes out as views.
        assert wire.whole_frame(out["v"][1:]) is None
        assert wire.whole_frame(out["v"].reshape(-1)[:512]) is None
        assert wire.whole_frame(value) is None
        big = np.arange(3 * wire.FRAME_BYTES // 4, dtype=np.float32)
        wire.send(sender, wire.encode({"op": "z"}, {"v": big}), lend=True)
        _, out = wire.decode(receiver.recv_multipart(copy=False))
        assert wire.whole_frame(out["v"]) is None
        # A shared frame and lent buffers in one tracked send: the tracker covers the
        # lent ones.
        _, small = wire.decode([bytes(f) for f in wire.encode({}, {"v": value})])
        tracker = wire.send(sender, [b"", *wire.encode({}, {"a": value, "b": small["v"]})],
                            lend=True, track=True)
        tracker.wait(10)
        received = receiver.recv_multipart(copy=False)
        _, back = wire.decode(received[1:])
        np.testing.assert_array_equal(back["a"], value)
        np.testing.assert_array_equal(back["b"], value)
    finally:
        sender.close(0)
        receiver.close(0)
        context.term()


def test_other_byte_order_is_sent_in_native_order():
    value = np.arange(5, dtype=">f4")
    _, out = wire.decode(_frames({"v": value}))
    assert out["v"].dtype == np.dtype("float32")
    np.testing.assert_array_equal(out["v"], np.arange(5, dtype=np.float32))
    with pytest.raises(wire.WireError, match="dtype int8"):
        wire.encode({}, {"v": np.zeros(2, ">i1")})


def _sgd_state(rate=0.5, **extra):
    state = ShardState(holds_global_step=True)
    state.initialize({"variables": ["w"], "global_step": 0,
                      "optimizer": {"name": "SGD", "learning_rate": rate}, **extra},
                     {"w": np.arange(4, dtype=np.float32)})
    return state


def test_sgd_with_reused_gradients_replaces_the_variable_and_leaves_the_old_one():
    state = _sgd_state()
    state.variables["v"] = np.zeros(4, np.float32)
    old, old_v = state.variables["w"], state.variables["v"]
    grad = np.full(4, 2.0, np.float32)
    grads = {"w": grad, "v": np.ones(4, np.float32)}
    assert not state.updates_in_place
    assert state.in_place(grads, {"w"}) == ["v"]
    assert state.apply(grads, count_step=True, reuse={"w"})
    assert state.variables["w"] is grad and state.replaced == {"w"}
    np.testing.assert_array_equal(grad, np.arange(4, dtype=np.float32) - 1.0)
    np.testing.assert_array_equal(old, np.arange(4, dtype=np.float32))  # untouched
    assert state.variables["v"] is old_v  # not reused: updated in place
    np.testing.assert_array_equal(old_v, -0.5)
    assert state.global_step == 1
    # The same values as an update in place.
    in_place = _sgd_state()
    in_place.apply({"w": np.full(4, 2.0, np.float32)}, count_step=True)
    np.testing.assert_array_equal(in_place.variables["w"], state.variables["w"])


@pytest.mark.parametrize("optimizer, sync", [("Momentum", None), ("Adam", None),
                                             ("SGD", 2)])
def test_other_updates_stay_in_place_even_with_reused_gradients(optimizer, sync):
    state = ShardState(holds_global_step=True)
    state.initialize({"variables": ["w"], "sync_replicas": sync,
                      "optimizer": {"name": optimizer, "learning_rate": 0.1}},
                     {"w": np.zeros(2, np.float32)})
    assert state.updates_in_place
    assert state.in_place({"w": np.ones(2, np.float32)}, {"w"}) == ["w"]
    old = state.variables["w"]
    for _ in range(sync or 1):
        state.apply({"w": np.ones(2, np.float32)}, count_step=True, reuse={"w"})
    assert state.variables["w"] is old and not state.replaced
    assert (old != 0).all()
