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
