"""A raw ZMTP 3.0 peer on a TCP socket, for hostile tests of the parameter server.

A ZeroMQ socket keeps the frames of an unfinished message in the sender until its last
frame, so it can never send a message that does not end. An attacker is not bound by that:
this peer writes ZMTP's frames itself, with the NULL or the PLAIN mechanism, as it likes.
"""

from __future__ import annotations

import socket
import struct

MORE, LONG, COMMAND = 1, 2, 4


def _greeting(mechanism: bytes) -> bytes:
    return (b"\xff" + b"\0" * 8 + b"\x7f" + bytes([3, 0]) + mechanism.ljust(20, b"\0")
            + b"\0" + b"\0" * 31)


def _frame(body: bytes, flags: int = 0) -> bytes:
    if len(body) > 255:
        return bytes([flags | LONG]) + struct.pack(">Q", len(body)) + body
    return bytes([flags, len(body)]) + body


def _command(name: bytes, data: bytes = b"") -> bytes:
    return _frame(bytes([len(name)]) + name + data, COMMAND)


def _metadata(**properties: bytes) -> bytes:
    out = b""
    for name, value in properties.items():
        key = name.replace("_", "-").encode()
        out += bytes([len(key)]) + key + struct.pack(">I", len(value)) + value
    return out


class RawZmtpPeer:
    """Connects to ``address`` (``host:port``) and completes the handshake as a DEALER:
    with PLAIN when ``token`` is given (user ``user``), else with NULL. ``admitted`` says
    whether the other side let it through."""

    def __init__(self, address: str, token: str | None = None, user: bytes = b"kubelearn",
                 timeout: float = 10.0) -> None:
        host, _, port = address.rpartition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        mechanism = b"PLAIN" if token is not None else b"NULL"
        self.admitted = False
        try:
            self.sock.sendall(_greeting(mechanism))
            self._read_exactly(64)
            if token is not None:
                password = token.encode()
                self.sock.sendall(_command(b"HELLO", bytes([len(user)]) + user
                                           + bytes([len(password)]) + password))
                if self._read_command() != b"WELCOME":
                    return
                self.sock.sendall(_command(b"INITIATE", _metadata(Socket_Type=b"DEALER")))
            else:
                self.sock.sendall(_command(b"READY", _metadata(Socket_Type=b"DEALER")))
            self.admitted = self._read_command() == b"READY"
        except OSError:  # refused: the other side closed the connection
            self.admitted = False

    def _read_exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed by the other side")
            data += chunk
        return data

    def _read_command(self) -> bytes:
        """The name of the next command the other side sends."""
        flags = self._read_exactly(1)[0]
        size = (struct.unpack(">Q", self._read_exactly(8))[0] if flags & LONG
                else self._read_exactly(1)[0])
        body = self._read_exactly(size)
        return body[1:1 + body[0]]

    def send_unfinished(self, frames: int, size: int = 1 << 20) -> int:
        """Sends ``frames`` frames of ``size`` bytes, each flagged "more", so the message
        never ends; returns how many went out before the other side closed."""
        frame = _frame(b"\0" * size, MORE)
        for sent in range(frames):
            try:
                self.sock.sendall(frame)
            except OSError:
                return sent
        return frames

    def close(self) -> None:
        self.sock.close()
