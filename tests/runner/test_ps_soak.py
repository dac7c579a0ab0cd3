"""Soak (about 30 s): four peers stream random malformed frames at a real parameter server
while a real worker trains against it: two present the experiment's token at the handshake
(so their messages reach the request loop), two do not (the ps drops them at the handshake,
again and again as they reconnect). Training reaches the same loss as
an undisturbed run, and the ps's resident memory stays within RSS_GROWTH_BOUND of what it
used before the flood."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kubelearn.distributed import curve
from kubelearn.local import free_port

pytestmark = pytest.mark.slow
LINEAR = "kubelearn.examples.linear:experiment_fn"
HPARAMS = "train_steps=300,save_checkpoints_steps=100,learning_rate=0.05"
TOKEN = "soak-token"
PEERS = 4
#: The bound this test states: the ps's RSS may grow by at most this much under the flood
#: (ZeroMQ buffers, the bounded refused-peer log); it does not grow with the flood's length.
RSS_GROWTH_BOUND = 64 << 20
#: The flood runs this long before training starts, then for as long as training takes.
FLOOD_ALONE_SECS = 8.0


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _spawn(tmp_path: Path, role: str, cluster: dict, name: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_CONFIG", "KUBELEARN_"))}
    env.update(TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": role, "index": 0},
                                     "environment": "cloud"}),
               KUBELEARN_TOKEN=TOKEN, KUBELEARN_PROGRESS_PORT="0",
               EM_RUN_PARENT_DIR=str(tmp_path / name / "runs"),
               KUBELEARN_TERMINATION_LOG=str(tmp_path / f"{name}-{role}.json"))
    with open(tmp_path / f"{name}-{role}.log", "w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "kubelearn.cli", "run", "--experiment-fn", LINEAR,
             "--model-dir", str(tmp_path / name / "model"), "--hparams", HPARAMS],
            env=env, stdout=log, stderr=subprocess.STDOUT)


def _malformed(rng: random.Random) -> list[bytes]:
    kind = rng.randrange(7)
    if kind == 0:
        return [rng.randbytes(rng.randrange(1, 2048)) for _ in range(rng.randrange(1, 6))]
    if kind == 1:
        depth = rng.randrange(1, 50_000)
        return [b'{"token":' + b"[" * depth + b"]" * depth + b"}"]
    if kind == 2:
        return [json.dumps({"token": "x" * rng.randrange(40), "op": "push", "id": 1,
                            "tensors": [{"name": "w", "dtype": "float32",
                                         "shape": [2**40, 2**40]}]}).encode(), b"\0" * 64]
    if kind == 3:
        return [b'{"token":"\\udc80","op":"stop"}']
    if kind == 4:
        return [b"{}"] * rng.randrange(1, 3000)
    if kind == 5:
        return [b'{"op":"init","force":true}', rng.randbytes(1 << 16)]
    return [b"", b"\xff" * 10]


def _flood(address: str, stop: threading.Event, seed: int, sent: list[int]) -> None:
    import zmq

    rng = random.Random(seed)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.sndhwm = 100
    if seed % 2 == 0:
        curve.plain_client(sock, TOKEN)
    sock.connect(f"tcp://{address}")
    while not stop.is_set():
        try:
            sock.send_multipart(_malformed(rng), flags=zmq.NOBLOCK)
            sent[0] += 1
        except zmq.Again:
            time.sleep(0.001)
        while sock.poll(0):  # drain the error replies
            sock.recv_multipart()
    sock.close(0)


def _train(tmp_path: Path, name: str, flood: bool) -> tuple[dict, dict]:
    ps_address, worker_address = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    cluster = {"ps": [ps_address], "worker": [worker_address]}
    ps = _spawn(tmp_path, "ps", cluster, name)
    stop = threading.Event()
    sent = [[0] for _ in range(PEERS)]
    peers = [threading.Thread(target=_flood, args=(ps_address, stop, seed, sent[seed]),
                              daemon=True) for seed in range(PEERS)] if flood else []
    stats = {"rss_before": 0, "rss_max": 0}
    try:
        time.sleep(1.5)
        stats["rss_before"] = _rss(ps.pid)
        for peer in peers:
            peer.start()
        if flood:
            time.sleep(FLOOD_ALONE_SECS)
        worker = _spawn(tmp_path, "worker", cluster, name)
        deadline = time.monotonic() + 120
        while worker.poll() is None and time.monotonic() < deadline:
            assert ps.poll() is None, (tmp_path / f"{name}-ps.log").read_text()[-3000:]
            stats["rss_max"] = max(stats["rss_max"], _rss(ps.pid))
            time.sleep(0.2)
        assert worker.wait(timeout=10) == 0, (tmp_path / f"{name}-worker.log").read_text()[-3000:]
    finally:
        stop.set()
        for peer in peers:
            peer.join(timeout=10)
        if ps.poll() is None:
            try:
                ps.wait(timeout=40)
            except subprocess.TimeoutExpired:
                ps.kill()
                ps.wait()
    assert ps.returncode == 0, (tmp_path / f"{name}-ps.log").read_text()[-3000:]
    stats["sent"] = sum(s[0] for s in sent)
    return json.loads((tmp_path / f"{name}-worker.json").read_text()), stats


def test_training_under_a_flood_of_malformed_frames(tmp_path):
    quiet, _ = _train(tmp_path, "quiet", flood=False)
    flooded, stats = _train(tmp_path, "flooded", flood=True)
    assert stats["sent"] > 1000, stats
    assert flooded["global_step"] == quiet["global_step"] >= 300
    assert flooded["loss"] == pytest.approx(quiet["loss"], rel=1e-6), (quiet, flooded)
    assert stats["rss_max"] - stats["rss_before"] <= RSS_GROWTH_BOUND, stats
    print(f"soak: {stats['sent']} malformed messages; ps RSS {stats['rss_before'] >> 20} MiB "
          f"before, at most {stats['rss_max'] >> 20} MiB during (bound +"
          f"{RSS_GROWTH_BOUND >> 20} MiB); loss {flooded['loss']:.6g}")
