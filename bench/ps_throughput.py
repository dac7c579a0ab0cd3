"""Parameter-server throughput: a push and a pull of 1, 16 and 64 MB float32 tensors through
the ps (a separate process applying SGD) versus a raw loopback TCP socket moving the same
bytes both ways (a separate echo process), and the ps with CurveZMQ encryption (the
experiment's key) against the ps in plaintext. All run in the same invocation, alternately.
Each side of a comparison makes the same number of round trips: at least ``--repeats``, and
for small tensors as many as move 64 MB each way, since the best of a few sub-millisecond
round trips on a shared machine is mostly noise.

    python bench/ps_throughput.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import socket
import time

import numpy as np

MB = 1 << 20


def _echo_server(port_queue: mp.Queue, size: int, rounds: int) -> None:  # type: ignore[type-arg]
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port_queue.put(server.getsockname()[1])
    conn, _ = server.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray(size)
    view = memoryview(buf)
    for _ in range(rounds):
        got = 0
        while got < size:
            got += conn.recv_into(view[got:], size - got)
        conn.sendall(buf)
    conn.close()


def raw_round_trips(size: int, repeats: int) -> list[float]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_echo_server, args=(queue, size, repeats + 1))
    proc.start()
    client = socket.create_connection(("127.0.0.1", queue.get()))
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    payload = np.ones(size // 4, np.float32).tobytes()
    back = bytearray(size)
    view = memoryview(back)
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        client.sendall(payload)
        got = 0
        while got < size:
            got += client.recv_into(view[got:], size - got)
        if i:  # the first round trip warms the connection up
            times.append(time.perf_counter() - start)
    client.close()
    proc.join()
    return times


def _ps_server(port: int, curve_key: str | None) -> None:
    from kubelearn.distributed.server import ParameterServer

    server = ParameterServer(f"127.0.0.1:{port}", 0, "bench-token", curve_key)
    server.serve_forever()


def ps_round_trips(size: int, repeats: int, curve_key: str | None = None) -> list[float]:
    from kubelearn.distributed.client import PSClient
    from kubelearn.estimators import optimizers

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = mp.get_context("spawn").Process(target=_ps_server, args=(port, curve_key))
    proc.start()
    client = PSClient([f"127.0.0.1:{port}"], "bench-token", request_timeout=60,
                      curve_key=curve_key)
    values = np.zeros(size // 4, np.float32)
    grads = np.ones(size // 4, np.float32)
    client.call(0, "init", {"variables": ["w"], "global_step": 0,
                            "optimizer": optimizers.spec(optimizers.GradientDescent(0.01))},
                {"w": values})
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        header, tensors = client.call(0, "push", {"step": True}, {"w": grads})
        if i:
            times.append(time.perf_counter() - start)
    assert tensors["w"].nbytes == size and header["global_step"] == repeats + 1
    client.call(0, "stop")
    client.close()
    proc.join(timeout=30)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    from kubelearn.distributed import curve

    key = curve.new_key()
    print(f"{'tensor':>7} {'raw MB/s':>9} {'ps MB/s':>9} {'ps/raw':>7} {'curve MB/s':>11} "
          f"{'plain/curve':>12}   (push + pull, best of N)")
    for mb in (1, 16, 64):
        size = mb * MB
        repeats = max(args.repeats, 64 // mb)
        raw = min(raw_round_trips(size, repeats))
        ps = min(ps_round_trips(size, repeats))
        encrypted = min(ps_round_trips(size, repeats, key))
        moved = 2 * mb
        print(f"{mb:>5}MB {moved / raw:9.0f} {moved / ps:9.0f} {raw / ps:7.2f} "
              f"{moved / encrypted:11.0f} {encrypted / ps:12.2f}", flush=True)


if __name__ == "__main__":
    main()
