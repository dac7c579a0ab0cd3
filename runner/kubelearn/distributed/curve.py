"""Who may talk to a ps, decided at the connection's handshake (ZeroMQ's ZAP).

In plaintext, a client presents the experiment's token with ZeroMQ's PLAIN mechanism, and the
ps admits only that token: a peer without it is dropped at the handshake, before one of its
frames is buffered (the token is no more exposed than it already is in every request).

With CurveZMQ, the experiment's Secret holds a 32-byte secret key (hex,
``KUBELEARN_CURVE_KEY``); every replica derives the public key from it. Each parameter server
is a Curve server with that key pair and admits only clients whose public key is the same
one: the wire is encrypted, and a peer without the key cannot finish the handshake.
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from kubelearn.distributed import ENV_CURVE_KEY

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_DOMAIN = "kubelearn"
#: The PLAIN user name a client presents with the token (the password).
PLAIN_USER = b"kubelearn"
#: How many refused addresses are remembered (to log each once).
MAX_REFUSED_ADDRESSES = 1024

log = logging.getLogger("kubelearn.ps")


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


class RecentlySeen:
    """The last ``limit`` keys seen (refused peers, logged once each): memory stays bounded
    however many peers come."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._keys: OrderedDict[bytes, None] = OrderedDict()

    def add(self, key: bytes) -> bool:
        """Remembers ``key``; True when it was not remembered already."""
        if key in self._keys:
            self._keys.move_to_end(key)
            return False
        self._keys[key] = None
        if len(self._keys) > self._limit:
            self._keys.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._keys)


def plain_client(socket: Any, token: str) -> None:
    """Makes ``socket`` present ``token`` at the handshake (before it connects)."""
    socket.plain_username = PLAIN_USER
    socket.plain_password = token.encode("utf-8", "surrogateescape")


class Gate:
    """The ZAP handler of one context: admits the clients that present the experiment's
    credential (its Curve public key, or its token with PLAIN), refuses everyone else.
    Runs in a daemon thread until :meth:`close`."""

    def __init__(self, context: Any, mechanism: bytes, credential: bytes):
        import zmq

        self._zmq = zmq
        self._mechanism = mechanism
        self._credential = credential
        self._refused = RecentlySeen(MAX_REFUSED_ADDRESSES)
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
            allowed = self._admits(frames)
            if not allowed:
                self._refuse(frames[3] if len(frames) > 3 else b"")
            status = (b"200", b"OK") if allowed else (b"400", b"not the experiment's")
            self._socket.send_multipart([version, request_id, *status, b"", b""])
        self._socket.close(0)

    def _refuse(self, address: bytes) -> None:
        """Logs a refused address once; remembers at most MAX_REFUSED_ADDRESSES."""
        self.refused += 1
        if not self._refused.add(address):
            return
        log.warning("Refused a peer at the handshake: it has not the experiment's %s (%s)",
                    "key" if self._mechanism == b"CURVE" else "token",
                    address[:64].decode("ascii", "replace"))

    def _admits(self, frames: list[bytes]) -> bool:
        """ZAP request frames: version, request id, domain, address, identity, mechanism,
        then the mechanism's credentials (Curve: the public key; PLAIN: user, password)."""
        if len(frames) < 7 or frames[5] != self._mechanism:
            return False
        given = frames[7] if self._mechanism == b"PLAIN" and len(frames) >= 8 else frames[6]
        if self._mechanism == b"PLAIN" and frames[6] != PLAIN_USER:
            return False
        return hmac.compare_digest(given, self._credential)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


def gate(context: Any, key: str | None, token: str | None) -> Gate | None:
    """The gate of a ps's context: admits the holders of ``key`` (Curve), else of ``token``
    (PLAIN); None when there is neither. The context must have no other ZAP handler (the ps
    gives its socket a context of its own); its server sockets are set by :func:`secure`."""
    from zmq.utils import z85

    if key:
        return Gate(context, b"CURVE", z85.decode(keypair(key)[0]))
    if token:
        return Gate(context, b"PLAIN", token.encode("utf-8", "surrogateescape"))
    return None


def secure(socket: Any, key: str | None, token: str | None) -> None:
    """Sets a server socket's mechanism before it binds: Curve with ``key``, else PLAIN when
    there is a ``token``, else none. Its context's :func:`gate` admits the peers."""
    if key:
        public, secret = keypair(key)
        socket.curve_server = True
        socket.curve_publickey = public
        socket.curve_secretkey = secret
    elif token:
        socket.plain_server = True
    else:
        return
    socket.zap_domain = ZAP_DOMAIN.encode()
