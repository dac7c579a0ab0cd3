"""Parameter-server throughput: a push and a pull of 1, 16 and 64 MB float32 tensors through
the ps (a separate process applying SGD) versus a raw loopback TCP socket moving the same
bytes both ways (a separate echo process); the ps with CurveZMQ encryption (the
experiment's key) against the ps in plaintext; and the plaintext ps, whose peers present
the token at the handshake (ZeroMQ's PLAIN, checked by the ps's ZAP handler), against a ps
that admits every connection and checks only the token each request carries. All run in
the same invocation, in turns of a few round trips each (raw, ps, Curve ps, raw, ...), so
that a busy spell on a shared machine falls on each of them alike. Each side of a
comparison makes the same number of round trips: at least ``--repeats``, and for small
tensors as many as move ``--volume`` MB (256) each way, since the best of a few
sub-millisecond round trips on a shared machine is mostly noise.

The raw side is the least a request/response protocol over TCP must do, and no more: each
message carries an 8-byte length header (sent with its body in one gathered write), the
receiver reads the header and then exactly that many bytes, and a round trip ends only
once the whole reply is in. Without the header the echo would rely on knowing the size in
advance, which no real protocol can; it costs one small read per message, nothing more.
The ps side also applies SGD to the pushed tensor before it replies: that is part of what
a push and pull through the ps costs. The ZeroMQ echo with the same SGD step and no
protocol (``floor``) shows how much of the gap to the raw socket is ZeroMQ and the update,
and how much is the ps's own request handling.

    python bench/ps_throughput.py [--repeats 7] [--volume 256]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import socket
import time

import numpy as np

MB = 1 << 20


def _recv_exactly(conn: socket.socket, view: memoryview) -> None:
    got = 0
    while got < len(view):
        n = conn.recv_into(view[got:], len(view) - got)
        if not n:
            raise ConnectionError("peer closed the connection")
        got += n


def _recv_message(conn: socket.socket, header: memoryview, body: memoryview) -> int:
    """Reads one length-prefixed message into ``body``; returns its length."""
    _recv_exactly(conn, header)
    length = int.from_bytes(header, "little")
    if length > len(body):
        raise ValueError(f"message of {length} bytes exceeds the buffer")
    _recv_exactly(conn, body[:length])
    return length


def _send_message(conn: socket.socket, body: memoryview) -> None:
    """One length-prefixed message, header and body in one gathered write."""
    header = len(body).to_bytes(8, "little")
    sent = conn.sendmsg([header, body])
    if sent < len(header):
        conn.sendall(header[sent:])
        sent = len(header)
    if sent - len(header) < len(body):
        conn.sendall(body[sent - len(header):])


def _echo_server(port_queue: mp.Queue, size: int) -> None:  # type: ignore[type-arg]
    """Echoes length-prefixed messages until the client closes the connection."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port_queue.put(server.getsockname()[1])
    conn, _ = server.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    header, body = memoryview(bytearray(8)), memoryview(bytearray(size))
    try:
        while True:
            _send_message(conn, body[:_recv_message(conn, header, body)])
    except ConnectionError:
        conn.close()


class RawEcho:
    """A client of the echo process: one round trip moves ``size`` bytes each way."""

    def __init__(self, size: int):
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        self._proc = ctx.Process(target=_echo_server, args=(queue, size))
        self._proc.start()
        self._client = socket.create_connection(("127.0.0.1", queue.get()))
        self._client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._payload = memoryview(np.ones(size // 4, np.float32)).cast("B")
        self._header, self._back = memoryview(bytearray(8)), memoryview(bytearray(size))
        self.round_trip()  # warms the connection up

    def round_trip(self) -> None:
        _send_message(self._client, self._payload)
        assert _recv_message(self._client, self._header, self._back) == len(self._payload)

    def close(self) -> None:
        self._client.close()
        self._proc.join()


def _ps_server(port: int, token: str, curve_key: str | None) -> None:
    from kubelearn.distributed.server import ParameterServer

    # An empty token: no handshake mechanism, and each request's (empty) token checked.
    server = ParameterServer(f"127.0.0.1:{port}", 0, token or None, curve_key)
    server.serve_forever()


class PSPush:
    """A worker of a one-task ps: one round trip pushes ``size`` bytes of gradient and
    gets the updated variable back. ``token=""`` leaves out the handshake's check (the
    ps as it was before it authenticated connections)."""

    def __init__(self, size: int, curve_key: str | None = None, token: str = "bench-token"):
        from kubelearn.distributed.client import PSClient
        from kubelearn.estimators import optimizers

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self._proc = mp.get_context("spawn").Process(target=_ps_server,
                                                 args=(port, token, curve_key))
        self._proc.start()
        self._client = PSClient([f"127.0.0.1:{port}"], token, request_timeout=60,
                                curve_key=curve_key)
        self._size = size
        self._grads = np.ones(size // 4, np.float32)
        self._client.call(0, "init", {
            "variables": ["w"], "global_step": 0,
            "optimizer": optimizers.spec(optimizers.GradientDescent(0.01))},
            {"w": np.zeros(size // 4, np.float32)})
        self._steps = 0
        self.round_trip()  # warms the connection up

    def round_trip(self) -> None:
        header, tensors = self._client.call(0, "push", {"step": True, "task": "worker:0"},
                                            {"w": self._grads})
        self._steps += 1
        assert tensors["w"].nbytes == self._size and header["global_step"] == self._steps

    def close(self) -> None:
        self._client.call(0, "stop")
        self._client.close()
        self._proc.join(timeout=30)


def _zmq_sgd_server(port: int, size: int) -> None:
    """Echoes each message on a ZeroMQ ROUTER after the SGD step the ps applies (the
    gradient frame becomes ``variable - rate * gradient``), with nothing else: no header to
    parse or check, no token, no tensor spec."""
    import zmq

    from kubelearn.estimators import optimizers

    sgd = optimizers.GradientDescent(0.01)
    variable = np.zeros(size // 4, np.float32)
    sock = zmq.Context.instance().socket(zmq.ROUTER)
    sock.bind(f"tcp://127.0.0.1:{port}")
    while True:
        ident, header, body = sock.recv_multipart(copy=False)
        if header.bytes == b"stop":
            break
        grad = np.frombuffer(body.buffer, np.float32)
        variable = sgd.update_into_grad("w", variable, grad)
        sock.send_multipart([ident, header, body], copy=False)
    sock.close()


class ZmqSGDEcho:
    """The ps's floor on this machine: a ZeroMQ round trip (zero-copy both ways, as the ps
    and its client send) with the same SGD step in the middle, and no protocol."""

    def __init__(self, size: int):
        import zmq

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self._proc = mp.get_context("spawn").Process(target=_zmq_sgd_server, args=(port, size))
        self._proc.start()
        self._sock = zmq.Context.instance().socket(zmq.DEALER)
        self._sock.connect(f"tcp://127.0.0.1:{port}")
        self._grads = np.ones(size // 4, np.float32)
        self._size = size
        self.round_trip()  # warms the connection up

    def round_trip(self) -> None:
        self._sock.send_multipart([b"push", self._grads], copy=False)
        _, body = self._sock.recv_multipart(copy=False)
        assert len(body) == self._size

    def close(self) -> None:
        self._sock.send_multipart([b"stop", b""])
        self._proc.join(timeout=30)
        self._sock.close()


#: Bytes a side moves each way before the next one takes its turn: for small tensors
#: enough round trips to run warm (processes awake, buffers in cache), few enough to share
#: busy spells; a large tensor's round trip is long enough to take turns one by one.
BURST_BYTES = 8 * MB


def best_times(size: int, repeats: int, curve_key: str) -> list[float]:
    """Best round-trip times of the raw socket, the ZeroMQ echo with SGD, the ps, the ps
    with Curve and the ps without the handshake's check, measured in turns of BURST_BYTES
    each, so that a busy spell on a shared machine falls on all of them alike."""
    sides = [RawEcho(size), ZmqSGDEcho(size), PSPush(size), PSPush(size, curve_key),
             PSPush(size, token="")]
    best = [float("inf")] * len(sides)
    burst = max(1, BURST_BYTES // size)
    try:
        for done in range(0, repeats, burst):
            for i, side in enumerate(sides):
                for _ in range(min(burst, repeats - done)):
                    start = time.perf_counter()
                    side.round_trip()
                    best[i] = min(best[i], time.perf_counter() - start)
    finally:
        for side in sides:
            side.close()
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--volume", type=int, default=256,
                        help="MB each side moves each way, at least, per tensor size")
    args = parser.parse_args()
    from kubelearn.distributed import curve

    key = curve.new_key()
    print(f"{'tensor':>7} {'raw MB/s':>9} {'zmq+sgd MB/s':>13} {'ps MB/s':>9} {'ps/raw':>7} "
          f"{'floor/raw':>10} {'curve MB/s':>11} {'curve/plain':>12} {'open MB/s':>10} "
          f"{'plain/open':>11}   (push + pull, best of N)")
    for mb in (1, 16, 64):
        raw, floor, ps, encrypted, unchecked = best_times(
            mb * MB, max(args.repeats, args.volume // mb), key)
        moved = 2 * mb
        print(f"{mb:>5}MB {moved / raw:9.0f} {moved / floor:13.0f} {moved / ps:9.0f} "
              f"{raw / ps:7.2f} {raw / floor:10.2f} {moved / encrypted:11.0f} "
              f"{encrypted / ps:12.2f} {moved / unchecked:10.0f} {ps / unchecked:11.3f}",
              flush=True)


if __name__ == "__main__":
    main()
