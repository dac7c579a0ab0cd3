"""A real parameter server process on loopback, fed hostile and broken messages: each one
gets an error reply or is dropped, and the ps keeps serving the experiment's own peers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from kubelearn.distributed import curve, wire
from kubelearn.distributed.client import PSClient, PSError
from kubelearn.estimators import optimizers
from kubelearn.local import free_port
from tests.support import start_ps
from tests.zmtp import RawZmtpPeer

pytestmark = pytest.mark.slow
TOKEN = "s3cret"


@pytest.fixture
def ps_with(tmp_path):
    """Starts a ps with the given environment; whatever is left running is killed."""
    started = []

    def start(**env: str):
        started.append(start_ps(tmp_path, TOKEN, **env))
        return started[-1]

    yield start
    for proc, _, _ in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture
def ps(ps_with):
    return ps_with()


def _stop(client: PSClient, proc: subprocess.Popen) -> None:
    """Tells the ps to stop, as the chief does: it exits 0."""
    client.call(0, "stop")
    client.close()
    assert proc.wait(timeout=30) == 0


class RawPeer:
    """A DEALER socket that sends whatever frames it is given; it presents ``token`` at the
    handshake (PLAIN), or holds the Curve ``key``, or neither."""

    def __init__(self, address: str, key: str | None = None, token: str | None = None,
                 routing_id: bytes | None = None):
        import zmq

        self._zmq = zmq
        self.socket = zmq.Context.instance().socket(zmq.DEALER)
        self.socket.linger = 0
        if key:
            curve.client(self.socket, key)
        elif token is not None:
            curve.plain_client(self.socket, token)
        if routing_id is not None:
            self.socket.routing_id = routing_id
        self.socket.connect(f"tcp://{address}")

    def ask(self, frames: list[bytes], timeout_ms: int = 10_000) -> dict | None:
        """The reply's header, or None when the ps dropped the message (or the connection:
        once the handshake is refused, ZeroMQ has nowhere to send and does not try again)."""
        self.socket.sndtimeo = timeout_ms
        try:
            self.socket.send_multipart(frames)
        except self._zmq.Again:
            return None
        if not self.socket.poll(timeout_ms):
            return None
        header, _ = wire.decode(self.socket.recv_multipart())
        return header

    def close(self) -> None:
        self.socket.close(0)


def _init(client: PSClient) -> None:
    spec = optimizers.spec(optimizers.GradientDescent(0.5))
    client.call(0, "init", {"variables": ["w"], "optimizer": spec, "global_step": 0},
                {"w": np.ones((2, 3), np.float32)})


def _authed(header: dict) -> bytes:
    return json.dumps({"token": TOKEN, "id": 7, **header}).encode()


DEEP = b"[" * 200_000 + b"]" * 200_000
HOSTILE_UNAUTHENTICATED = {
    "deep header": [b'{"a":' + DEEP + b"}"],
    "deep token": [b'{"token":' + DEEP + b"}"],
    "token not valid UTF-8": [b'{"token":"\\udc80","op":"status"}'],
    "header not valid UTF-8": [b'{"token":"\xff\xfe","op":"status"}'],
    "binary header": [bytes(range(256))],
    "header not an object": [b"[1,2,3]"],
    "huge integer": [b'{"id":' + b"9" * 100_000 + b"}"],
    "empty message": [b""],
    "huge id echoed": [json.dumps({"id": "x" * 100_000}).encode()],
    "many frames": [b"{}"] + [b"x"] * 5000,
}
HOSTILE_AUTHENTICATED = {
    "overflowing shape": [_authed({"op": "push", "tensors": [
        {"name": "w", "dtype": "float32", "shape": [2**62, 2**62, 2**62]}]}), b"\0" * 24],
    "shape beyond int64": [_authed({"op": "push", "tensors": [
        {"name": "w", "dtype": "float32", "shape": [10**40]}]}), b"\0" * 24],
    "negative frames": [_authed({"op": "push", "tensors": [
        {"name": "w", "dtype": "float32", "shape": [2, 3], "frames": -1}]})],
    "frames count a float": [_authed({"op": "push", "tensors": [
        {"name": "w", "dtype": "float32", "shape": [2, 3], "frames": 1.5}]}), b"\0" * 24],
    "object dtype": [_authed({"op": "push", "tensors": [
        {"name": "w", "dtype": "object", "shape": [2, 3]}]}), b"\0" * 24],
    "tensors not a list": [_authed({"op": "push", "tensors": {"w": 1}})],
    "unknown op": [_authed({"op": ["x"] * 1000})],
    "deep optimizer spec": [_authed({"op": "init", "force": True, "variables": ["w"],
                                     "optimizer": {"name": "sgd", "learning_rate": "x"},
                                     "tensors": [{"name": "w", "dtype": "float32",
                                                  "shape": [2, 3]}]}), b"\0" * 24],
    "bad global step": [_authed({"op": "init", "force": True, "variables": ["w"],
                                 "global_step": -5,
                                 "optimizer": optimizers.spec(optimizers.GradientDescent(1.0)),
                                 "tensors": [{"name": "w", "dtype": "float32",
                                              "shape": [2, 3]}]}), b"\0" * 24],
}


def test_every_hostile_message_gets_an_error_and_the_ps_keeps_serving(ps):
    proc, address, log_path = ps
    client = PSClient([address], token=TOKEN, request_timeout=10, deadline=60)
    _init(client)
    peer = RawPeer(address, token=TOKEN)  # admitted at the handshake; its messages are not
    for label, frames in {**HOSTILE_UNAUTHENTICATED, **HOSTILE_AUTHENTICATED}.items():
        reply = peer.ask(frames)
        assert reply is not None and reply["ok"] is False, (label, reply)
        assert reply["code"] in ("bad_request", "unauthenticated"), (label, reply)
        assert reply.get("id") in (None, 7), (label, reply)
        assert proc.poll() is None, (label, log_path.read_text()[-3000:])
    peer.close()
    header, tensors = client.call(0, "push", {"step": True},
                                  {"w": np.ones((2, 3), np.float32)})
    assert header["global_step"] == 1
    np.testing.assert_allclose(tensors["w"], 0.5)
    _stop(client, proc)
    assert "Traceback" not in log_path.read_text()


def test_an_oversized_frame_is_refused_before_it_is_buffered(ps):
    proc, address, _ = ps
    peer = RawPeer(address, token=TOKEN)
    # One frame longer than any the protocol uses: ZeroMQ drops the connection (MAXMSGSIZE)
    # and nothing reaches the request loop.
    assert peer.ask([b"{}", b"\0" * (wire.MAX_FRAME_BYTES + 1)], timeout_ms=3000) is None
    peer.close()
    client = PSClient([address], token=TOKEN, request_timeout=10, deadline=60)
    assert client.call(0, "status")[0]["ok"] is True
    _stop(client, proc)


def _memory_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field}")


def test_a_peer_without_the_token_is_dropped_at_the_handshake(ps):
    proc, address, log_path = ps
    for intruder in (RawPeer(address), RawPeer(address, token="wrong")):
        # A well-formed request with the right token in its header gets no answer: the
        # connection never got past the handshake.
        assert intruder.ask([_authed({"op": "status"})], timeout_ms=2000) is None
        intruder.close()
    client = PSClient([address], token=TOKEN, request_timeout=10, deadline=60)
    assert client.call(0, "status")[0]["ok"] is True
    before = _memory_kib(proc.pid)
    # A message that never ends, 1 MiB frames flagged "more", written as ZMTP by hand (a
    # ZeroMQ socket would keep them until the last frame): from a peer without the token,
    # with no mechanism or a wrong one, not one frame is buffered by the ps.
    for token in (None, "wrong"):
        flood = RawZmtpPeer(address, token)
        assert not flood.admitted
        flood.send_unfinished(400)
        flood.close()
    assert client.call(0, "status")[0]["ok"] is True  # the ps has had time to read them
    grown_mib = (_memory_kib(proc.pid) - before) / 1024
    assert grown_mib < 32, grown_mib
    log = log_path.read_text()
    assert "Refused a peer at the handshake" in log
    assert "without the experiment token" not in log  # nothing reached the request loop
    _stop(client, proc)


def test_an_endless_message_from_a_peer_with_the_token_stays_within_the_ps_bound(ps_with):
    """ZeroMQ keeps the frames of an unfinished message without limit, so the ps keeps its
    own: past KUBELEARN_PS_MEMORY_LIMIT it drops every connection, and its peers resend."""
    limit_mib = 192
    proc, address, log_path = ps_with(KUBELEARN_PS_MEMORY_LIMIT=f"{limit_mib}Mi")
    client = PSClient([address], token=TOKEN, request_timeout=2, deadline=60)
    _init(client)
    sent = drops = 0
    while sent < 1536 and drops < 50:  # 1.5 GiB, connecting again after each drop
        try:
            flood = RawZmtpPeer(address, TOKEN)
        except ConnectionRefusedError:  # the ps is binding its address again
            time.sleep(0.05)
            continue
        if flood.admitted:
            sent += flood.send_unfinished(1536 - sent)
        flood.close()
        drops += 1
    # The experiment's own peers are served again (after a resend at most).
    header, _ = client.call(0, "push", {"step": True}, {"w": np.ones((2, 3), np.float32)})
    assert header["global_step"] == 1
    peak_mib = _memory_kib(proc.pid, "VmHWM") / 1024
    # The bound counts what the ps has allocated; its resident set adds the runtime's
    # own memory, and up to one check's worth of frames arrives past the bound.
    assert peak_mib < limit_mib + 160, (sent, drops, peak_mib)
    assert "dropping every connection" in log_path.read_text()
    _stop(client, proc)


def test_no_peer_can_take_over_another_peers_connection(ps):
    proc, address, _ = ps
    victim = RawPeer(address, token=TOKEN, routing_id=b"victim")
    assert victim.ask([_authed({"op": "status"})])["ok"] is True
    # Another peer with the token that claims the same routing id is refused, and the first
    # keeps its connection.
    thief = RawPeer(address, token=TOKEN, routing_id=b"victim")
    assert thief.ask([_authed({"op": "status"})], timeout_ms=2000) is None
    assert victim.ask([_authed({"op": "status"})])["ok"] is True
    thief.close()
    victim.close()
    client = PSClient([address], token=TOKEN, request_timeout=10, deadline=60)
    _stop(client, proc)


def test_curve_admits_only_peers_holding_the_experiments_key(ps_with):
    key = curve.new_key()
    proc, address, _ = ps_with(KUBELEARN_CURVE_KEY=key)
    for intruder_key in (None, curve.new_key()):  # plaintext, then another key
        peer = RawPeer(address, intruder_key)
        # Even with the token, a peer without the key gets no answer at all.
        assert peer.ask([_authed({"op": "status"})], timeout_ms=2000) is None
        peer.close()
    client = PSClient([address], token=TOKEN, request_timeout=10, deadline=60,
                      curve_key=key)
    _init(client)
    header, tensors = client.call(0, "push", {"step": True},
                                  {"w": np.ones((2, 3), np.float32)})
    assert header["global_step"] == 1
    np.testing.assert_allclose(tensors["w"], 0.5)
    # Tensors in full-size frames pass the frame cap with Curve's envelope around them.
    big = np.arange(3 * wire.FRAME_BYTES // 4, dtype=np.float32)
    spec = optimizers.spec(optimizers.GradientDescent(0.5))
    client.call(0, "init", {"variables": ["w"], "optimizer": spec, "force": True}, {"w": big})
    _, tensors = client.call(0, "pull")
    np.testing.assert_array_equal(tensors["w"], big)
    with pytest.raises(PSError, match="unauthenticated"):  # the key alone is not enough
        PSClient([address], token="wrong", request_timeout=10, deadline=60,
                 curve_key=key).call(0, "status")
    _stop(client, proc)


def test_refused_peers_are_remembered_within_a_bound():
    from kubelearn.distributed.server import MAX_REFUSED_PEERS, ParameterServer

    server = ParameterServer(f"127.0.0.1:{free_port()}", 0, TOKEN)
    try:
        for i in range(3 * MAX_REFUSED_PEERS):
            server.handle([i.to_bytes(5, "big"), b'{"op":"status"}'])
        assert len(server._refused) == MAX_REFUSED_PEERS
        assert server.refused_count == 3 * MAX_REFUSED_PEERS
    finally:
        server.close()


def test_local_experiment_trains_over_an_encrypted_wire(tmp_path):
    import yaml

    manifest = tmp_path / "exp.yaml"
    manifest.write_text(yaml.safe_dump({
        "apiVersion": "kubelearn.dev/v1alpha1", "kind": "Experiment",
        "metadata": {"name": "curve"},
        "spec": {"experimentFn": "kubelearn.examples.linear:experiment_fn",
                 "hparams": {"train_steps": 200, "save_checkpoints_steps": 100},
                 "replicas": {"ps": 1, "worker": 1}}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_CONFIG", "KUBELEARN_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "kubelearn.cli", "local", str(manifest), "--model-dir",
         str(tmp_path / "m"), "--no-progress"],
        env={**env, "KUBELEARN_WIRE_ENCRYPTION": "curve"}, capture_output=True, text=True,
        timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "Succeeded" in proc.stdout
    assert "(CurveZMQ)" in proc.stdout, proc.stdout[-3000:]
