"""Which transport for the parameter server: pyzmq or grpcio?

Round trips of 1, 16 and 64 MB payloads (request carries the bytes, the reply carries them
back: a push and a pull) over loopback, for pyzmq (ROUTER/DEALER, zero-copy frames) and
grpcio (a generic unary method with raw-bytes serializers), beside a raw TCP socket moving
the same bytes. Prints MB/s and each transport's ratio to the raw socket.

    python bench/transport_choice.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import socket
import threading
import time
from concurrent import futures

MB = 1 << 20


def raw_socket_round_trip(size: int, repeats: int) -> list[float]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]

    def echo() -> None:
        conn, _ = server.accept()
        buf = bytearray(size)
        view = memoryview(buf)
        for _ in range(repeats):
            got = 0
            while got < size:
                got += conn.recv_into(view[got:], size - got)
            conn.sendall(buf)
        conn.close()

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()
    client = socket.create_connection(("127.0.0.1", port))
    payload = bytes(size)
    back = bytearray(size)
    view = memoryview(back)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        client.sendall(payload)
        got = 0
        while got < size:
            got += client.recv_into(view[got:], size - got)
        times.append(time.perf_counter() - start)
    client.close()
    thread.join()
    server.close()
    return times


def zmq_round_trip(size: int, repeats: int) -> list[float]:
    import zmq

    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")

    def serve() -> None:
        for _ in range(repeats):
            ident, header, data = router.recv_multipart(copy=False)
            router.send_multipart([ident, header, data], copy=False)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    payload = bytes(size)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        dealer.send_multipart([b"{}", payload], copy=False)
        dealer.recv_multipart(copy=False)
        times.append(time.perf_counter() - start)
    thread.join()
    dealer.close(0)
    router.close(0)
    ctx.term()
    return times


def grpc_round_trip(size: int, repeats: int) -> list[float]:
    import grpc

    def echo(request: bytes, context) -> bytes:
        return request

    identity = lambda b: b  # noqa: E731
    handler = grpc.method_handlers_generic_handler("bench.Echo", {
        "Call": grpc.unary_unary_rpc_method_handler(echo, request_deserializer=identity,
                                                    response_serializer=identity)})
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=options)
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=options)
    call = channel.unary_unary("/bench.Echo/Call", request_serializer=identity,
                               response_deserializer=identity)
    payload = bytes(size)
    call(payload)  # connect
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call(payload)
        times.append(time.perf_counter() - start)
    channel.close()
    server.stop(None)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"{'size':>6} {'raw MB/s':>9} {'zmq MB/s':>9} {'zmq/raw':>8} {'grpc MB/s':>10} "
          f"{'grpc/raw':>9}")
    for mb in (1, 16, 64):
        size = mb * MB
        raw = min(raw_socket_round_trip(size, args.repeats))
        zmq_t = min(zmq_round_trip(size, args.repeats))
        grpc_t = min(grpc_round_trip(size, args.repeats))
        moved = 2 * mb  # the bytes go both ways
        print(f"{mb:>4}MB {moved / raw:9.0f} {moved / zmq_t:9.0f} {raw / zmq_t:8.2f} "
              f"{moved / grpc_t:10.0f} {raw / grpc_t:9.2f}")


if __name__ == "__main__":
    main()
