"""Connections from a worker (or the chief) to the parameter servers.

Requests to all shards go out together and the replies are collected afterwards, so a
step costs one round trip, not one per shard. A ps that does not answer (restarting,
not up yet) is retried with a fresh socket until a deadline; its absence is logged once.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from kubelearn.distributed import curve, wire

log = logging.getLogger("kubelearn")

REQUEST_TIMEOUT_SECS = 5.0
UNAVAILABLE_DEADLINE_SECS = 600.0
#: How often a client that waits for a reply looks whether the ps refused it at the handshake.
ADMISSION_CHECK_SECS = 0.5


class PSError(RuntimeError):
    """The parameter server answered with an error."""

    def __init__(self, task: int, code: str, message: str):
        super().__init__(f"ps {task}: {message} ({code})")
        self.task, self.code = task, code


class PSUnavailable(RuntimeError):
    """A parameter server did not answer before the deadline."""


class PSConnection:
    """A DEALER socket to one ps task, recreated after a timeout."""

    def __init__(self, context: Any, task: int, address: str, token: str,
                 curve_key: str | None = None):
        import zmq

        self._zmq = zmq
        self._context = context
        self.task = task
        self.address = address
        self._token = token
        self._curve_key = curve_key
        self._ids = itertools.count(1)
        self._pending: int | None = None
        self._socket = self._connect()

    def _connect(self) -> Any:
        zmq = self._zmq
        sock = self._context.socket(zmq.DEALER)
        sock.setsockopt(self._zmq.LINGER, 0)
        sock.setsockopt(self._zmq.MAXMSGSIZE, wire.MAX_FRAME_BYTES)
        if self._curve_key:
            curve.client(sock, self._curve_key)
        elif self._token:
            curve.plain_client(sock, self._token)
        # The ps refuses a wrong token or key at the handshake and says so only there.
        self._monitor = sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH)
        sock.connect(f"tcp://{self.address}")
        self._wait_ms = -1  # the socket's RCVTIMEO: blocks until told otherwise
        return sock

    def _close(self) -> None:
        self._socket.disable_monitor()
        self._monitor.close(0)
        self._socket.close(0)

    def _check_admitted(self) -> None:
        """Raises PSError when the ps refused this client at the handshake."""
        from zmq.utils.monitor import recv_monitor_message

        while self._monitor.poll(0):
            event = recv_monitor_message(self._monitor, self._zmq.NOBLOCK)
            if event["event"] == self._zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self.reset()  # ZeroMQ does not connect again after a refusal
                raise PSError(self.task, "unauthenticated",
                              "the ps refused this client's token or key at the handshake")

    def reset(self) -> None:
        self._close()
        self._socket = self._connect()
        self._pending = None

    def send(self, op: str, header: Mapping[str, Any] | None = None,
             tensors: Mapping[str, np.ndarray] | None = None) -> None:
        request_id = next(self._ids)
        full = {**(header or {}), "op": op, "id": request_id, "token": self._token}
        # The tensors are lent to ZeroMQ, not copied: the caller leaves them alone until
        # the reply, which comes only once the ps has received all of them.
        wire.send(self._socket, wire.encode(full, tensors), lend=True)
        self._pending = request_id

    def receive(self, timeout: float) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
        """The reply to the last request, or None after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            frames = self._recv(min(left, ADMISSION_CHECK_SECS))
            if frames is None:
                self._check_admitted()
                if left <= ADMISSION_CHECK_SECS:
                    return None
                continue
            try:
                header, tensors = wire.decode(frames)
            except wire.WireError as exc:
                raise PSError(self.task, "bad_reply", str(exc)) from None
            if header.get("id") != self._pending:
                continue  # a late reply to a request we gave up on
            self._pending = None
            if not header.get("ok"):
                raise PSError(self.task, str(header.get("code")), str(header.get("error")))
            return header, tensors

    def _recv(self, timeout: float) -> list[Any] | None:
        """The next message within ``timeout`` seconds, or None. A blocking receive with a
        time-out: one wait inside ZeroMQ instead of a poll and then a receive."""
        wait_ms = int(timeout * 1000)
        if wait_ms <= 0:
            return None
        if wait_ms != self._wait_ms:
            self._socket.setsockopt(self._zmq.RCVTIMEO, wait_ms)
            self._wait_ms = wait_ms
        try:
            return self._socket.recv_multipart(copy=False)
        except self._zmq.Again:
            return None

    def close(self) -> None:
        self._close()


class PSClient:
    """All ps tasks of the cluster, addressed by task index."""

    def __init__(self, addresses: Sequence[str], token: str,
                 request_timeout: float = REQUEST_TIMEOUT_SECS,
                 deadline: float = UNAVAILABLE_DEADLINE_SECS,
                 give_up: Callable[[], bool] | None = None,
                 curve_key: str | None = None):
        import zmq

        self._context = zmq.Context.instance()
        self.connections = [PSConnection(self._context, i, a, token, curve_key)
                            for i, a in enumerate(addresses)]
        self.request_timeout = request_timeout
        self.deadline = deadline
        self.give_up = give_up  # asked after each time-out: stop waiting for good?
        self._absent: set[int] = set()

    def call_many(
        self, requests: Mapping[int, tuple[str, Mapping[str, Any] | None,
                                           Mapping[str, np.ndarray] | None]]
    ) -> dict[int, tuple[dict[str, Any], dict[str, np.ndarray]]]:
        """Sends each task its request, then gathers the replies, resending to tasks that
        time out until :attr:`deadline`."""
        start = time.monotonic()
        for task, (op, header, tensors) in requests.items():
            self.connections[task].send(op, header, tensors)
        replies: dict[int, tuple[dict[str, Any], dict[str, np.ndarray]]] = {}
        waiting = list(requests)
        while waiting:
            task = waiting[0]
            conn = self.connections[task]
            reply = conn.receive(self.request_timeout)
            if reply is not None:
                if task in self._absent:
                    self._absent.discard(task)
                    log.info("ps %d (%s) is answering again", task, conn.address)
                replies[task] = reply
                waiting.pop(0)
                continue
            if time.monotonic() - start > self.deadline or (self.give_up and self.give_up()):
                raise PSUnavailable(f"ps {task} at {conn.address} did not answer in "
                                    f"{time.monotonic() - start:.0f}s")
            if task not in self._absent:
                self._absent.add(task)
                log.warning("ps %d (%s) is not answering; retrying", task, conn.address)
            conn.reset()
            op, header, tensors = requests[task]
            conn.send(op, header, tensors)
        return replies

    def call(self, task: int, op: str, header: Mapping[str, Any] | None = None,
             tensors: Mapping[str, np.ndarray] | None = None
             ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        return self.call_many({task: (op, header, tensors)})[task]

    def close(self) -> None:
        for conn in self.connections:
            conn.close()
