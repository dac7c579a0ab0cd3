"""CurveZMQ on the ps wire: one key pair per experiment, shared by its replicas.

The experiment's Secret holds a 32-byte secret key (hex, ``KUBELEARN_CURVE_KEY``); every
replica derives the public key from it. Each parameter server is a Curve server with that
key pair and admits, through ZAP, only clients whose public key is the same one. A peer
without the key cannot finish the handshake: it can neither read nor write a variable,
and not one of its frames reaches the ps's request loop.
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Mapping
from typing import Any

from kubelearn.distributed import ENV_CURVE_KEY

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_DOMAIN = "kubelearn"


def new_key() -> str:
    """A fresh secret key, as the Secret stores it (64 hex digits)."""
    return secrets.token_hex(32)


def key_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """The experiment's key from the environment; None when the wire is not encrypted.

    Raises:
      ValueError: when the variable is set but is not 64 hex digits.
    """
    text = (os.environ if environ is None else environ).get(ENV_CURVE_KEY, "").strip()
    if not text:
        return None
    _raw(text)
    return text


def _raw(key: str) -> bytes:
    try:
        raw = bytes.fromhex(key)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise ValueError(f"{ENV_CURVE_KEY} must be 64 hex digits (a 32-byte key)")
    return raw


def keypair(key: str) -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys for ``key`` (64 hex digits)."""
    import zmq
    from zmq.utils import z85

    secret = z85.encode(_raw(key))
    return zmq.curve_public(secret), secret


def client(socket: Any, key: str) -> None:
    """Makes ``socket`` a Curve client of a ps holding ``key`` (before it connects)."""
    public, secret = keypair(key)
    socket.curve_serverkey = public
    socket.curve_publickey = public
    socket.curve_secretkey = secret


class Gate:
    """The ZAP handler of one context: admits Curve clients with the experiment's public
    key, refuses everyone else. Runs in a daemon thread until :meth:`close`."""

    def __init__(self, context: Any, public: bytes):
        import zmq
        from zmq.utils import z85

        self._zmq = zmq
        self._public = z85.decode(public)
        self._socket = context.socket(zmq.REP)
        self._socket.linger = 0
        self._socket.bind(ZAP_ENDPOINT)
        self._stop = threading.Event()
        self.refused = 0
        self._thread = threading.Thread(target=self._serve, name="kubelearn-zap", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        poller = self._zmq.Poller()
        poller.register(self._socket, self._zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(200):
                continue
            frames = self._socket.recv_multipart()
            version, request_id = [*frames, b"", b""][:2]
            allowed = (len(frames) >= 7 and frames[5] == b"CURVE"
                       and frames[6] == self._public)
            if not allowed:
                self.refused += 1
            status = (b"200", b"OK") if allowed else (b"400", b"unknown key")
            self._socket.send_multipart([version, request_id, *status, b"", b""])
        self._socket.close(0)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


def server(socket: Any, key: str) -> Gate:
    """Makes ``socket`` a Curve server for ``key`` (before it binds) that admits only
    clients holding the same key; returns the gate to close with the socket. The socket's
    context must have no other ZAP handler (the ps gives its socket a context of its own)."""
    public, secret = keypair(key)
    socket.curve_server = True
    socket.curve_publickey = public
    socket.curve_secretkey = secret
    socket.zap_domain = ZAP_DOMAIN.encode()
    return Gate(socket.context, public)
