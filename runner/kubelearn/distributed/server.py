"""The parameter server: serves one shard of the variables and applies the optimiser.

One thread, one ROUTER socket: requests are handled in arrival order, so updates never
race. A peer is admitted at the connection's handshake only with the experiment's token
(ZeroMQ's PLAIN) or, with the experiment's Curve key (``KUBELEARN_CURVE_KEY``), only
holding that key, on an encrypted socket (:mod:`kubelearn.distributed.curve`): a peer
without them is dropped before any of its frames is buffered. Every request carries the
token as well; anything malformed gets an error reply (or, past a size bound, is dropped)
and the server keeps serving: no message from any peer can end it. Routing ids are the
ones ZeroMQ assigns: a newcomer cannot take over another peer's connection. What the ps
holds is bounded (:mod:`kubelearn.distributed.memory`): past the bound it drops every
connection, and its peers connect again and resend.
When the chief says ``stop`` the server answers ``done`` to whoever still asks, then
exits, so the whole job can finish.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import logging
import os
import re
import time
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np

from kubelearn.distributed import ENV_TOKEN, curve, memory, wire
from kubelearn.estimators import optimizers

# An IP the ps binds to instead of every interface when its address is a DNS name (the
# pod's IP when several pods share one host's network, as under a test node agent).
from kubelearn_spec.contract import ENV_BIND_HOST

log = logging.getLogger("kubelearn.ps")

STOP_GRACE_SECS = 2.0
STOP_MAX_SECS = 30.0
#: How many refused peers are remembered (to log each once); older ones are forgotten.
MAX_REFUSED_PEERS = 1024
#: How long the ps tries to bind its address again after dropping its connections.
REBIND_SECS = 10.0
#: How long one receive waits before the loop looks at the time and the memory held.
RECEIVE_WAIT_MS = 25


def bind_address(address: str, bind_host: str | None = None) -> str:
    """``tcp://`` endpoint to bind for ``host:port``: the host itself when it is an IP
    literal, else ``bind_host`` (default ``$KUBELEARN_BIND_HOST``) when set, else every
    interface (a DNS name points at this pod from outside)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        bind_host = bind_host if bind_host is not None else os.environ.get(ENV_BIND_HOST)
        if not bind_host:
            return f"tcp://*:{port}"
        try:
            ip = ipaddress.ip_address(bind_host.strip("[]"))
        except ValueError:
            raise ValueError(f"{ENV_BIND_HOST} must be an IP address, got {bind_host!r}"
                             ) from None
    return f"tcp://[{ip}]:{port}" if ip.version == 6 else f"tcp://{ip}:{port}"


class ShardState:
    """Variables, optimiser and step counter of one ps task; pure, no I/O."""

    def __init__(self, holds_global_step: bool):
        self.holds_global_step = holds_global_step
        self.initialized = False
        self.variables: dict[str, np.ndarray] = {}
        self.expected: dict[str, tuple[str, tuple[int, ...]]] = {}
        self.optimizer: optimizers.Optimizer | None = None
        self.global_step = 0
        self.sync_replicas: int | None = None
        self._accum: dict[str, np.ndarray] = {}
        self._accum_count = 0
        #: Variables whose buffers ``apply`` took from their gradients.
        self.replaced: set[str] = set()

    def initialize(self, header: Mapping[str, Any], tensors: Mapping[str, np.ndarray]) -> None:
        spec = header.get("optimizer")
        if not isinstance(spec, dict):
            raise wire.WireError("init needs an 'optimizer' spec")
        names = header.get("variables")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise wire.WireError("init needs the list of 'variables'")
        missing = [n for n in names if n not in tensors]
        if missing:
            raise wire.WireError(f"init is missing values for {missing}")
        for name, value in tensors.items():
            if name not in names and name.rsplit("/", 1)[0] not in names:
                raise wire.WireError(f"init tensor {name!r} is neither a variable nor a slot")
            if value.dtype.name not in ("float32", "float64", "int64"):
                raise wire.WireError(f"init tensor {name!r} has dtype {value.dtype.name}")
        try:
            optimizer = optimizers.from_spec(spec)
        except (TypeError, ValueError) as exc:
            raise wire.WireError(f"bad optimizer spec: {exc}") from None
        step = header.get("global_step", 0)
        if not isinstance(step, int) or step < 0:
            raise wire.WireError(f"bad global_step {step!r}")
        sync = header.get("sync_replicas")
        if sync is not None and (not isinstance(sync, int) or sync < 1):
            raise wire.WireError(f"bad sync_replicas {sync!r}")
        self.variables = {n: np.array(tensors[n]) for n in names}
        self.expected = {n: (v.dtype.name, v.shape) for n, v in self.variables.items()}
        optimizer.load_state({k: np.array(v) for k, v in tensors.items() if k not in names})
        self.optimizer = optimizer
        self.global_step = step
        self.sync_replicas = sync
        self._accum, self._accum_count = {}, 0
        self.replaced = set()
        self.initialized = True

    @property
    def updates_in_place(self) -> bool:
        """Whether :meth:`apply` writes every update into the variables' buffers, whatever
        gradient buffers it may reuse."""
        if self.sync_replicas and self.sync_replicas > 1:
            return True
        into_grad = type(self.optimizer).update_into_grad
        return into_grad is optimizers.Optimizer.update_into_grad

    def in_place(self, grads: Mapping[str, np.ndarray], reuse: Collection[str]) -> list[str]:
        """The variables that ``apply(grads, ..., reuse)`` updates in place."""
        if self.updates_in_place:
            return list(grads)
        return [name for name in grads if name not in reuse]

    def apply(self, grads: Mapping[str, np.ndarray], count_step: bool,
              reuse: Collection[str] = ()) -> bool:
        """Applies (or, with sync replicas, accumulates) gradients. Returns True when the
        variables changed. ``reuse`` names gradients whose buffers (writable, of their
        variables' dtypes and shapes, held by no one else) the update may write over; such
        a variable is then replaced by its gradient's buffer, the old one left as it was
        (see :meth:`in_place`)."""
        assert self.optimizer is not None
        if self.updates_in_place:
            reuse = ()
        if self.sync_replicas and self.sync_replicas > 1:
            for name, grad in grads.items():
                if name in self._accum:
                    self._accum[name] += grad
                else:
                    self._accum[name] = np.array(grad, dtype=self.variables[name].dtype)
            self._accum_count += 1
            if self._accum_count < self.sync_replicas:
                return False
            scale = 1.0 / self._accum_count
            grads = {n: g * scale for n, g in self._accum.items()}
            self._accum, self._accum_count = {}, 0
            self.global_step += 1
        else:
            if count_step:
                self.global_step += 1
        for name, grad in grads.items():
            if name in reuse:
                self._replace(name, grad)
            else:
                self.optimizer.update(name, self.variables[name], grad)
        return True

    def _replace(self, name: str, grad: np.ndarray) -> None:
        """The variable becomes its updated gradient buffer; the old one is not written."""
        assert self.optimizer is not None
        updated = self.optimizer.update_into_grad(name, self.variables[name], grad)
        assert updated is not None
        self.variables[name] = updated
        self.replaced.add(name)

    def snapshot(self) -> dict[str, np.ndarray]:
        """Variables and optimiser slots. The slots are copies: they are updated in place,
        and a snapshot may still be on its way to the chief when the next push comes."""
        assert self.optimizer is not None
        slots = {k: np.array(v) for k, v in self.optimizer.state().items()}
        return {**self.variables, **slots}


#: A task as a push names it, and how many are remembered.
TASK_NAME = re.compile(r"[a-z]{1,16}:[0-9]{1,6}")
MAX_PUSHERS = 4096


class ParameterServer:
    """Serves a :class:`ShardState` on a ZeroMQ ROUTER socket."""

    def __init__(self, address: str, task_index: int, token: str | None,
                 curve_key: str | None = None, memory_limit: int | None = None):
        import zmq

        self._zmq = zmq
        self.state = ShardState(holds_global_step=task_index == 0)
        self.task_index = task_index
        self._token = (token or "").encode()
        self._token_text, self._curve_key = token, curve_key
        # A context of its own: the gate is the only ZAP handler in it.
        self._context = zmq.Context()
        self._encrypted = bool(curve_key)
        self._gate = curve.gate(self._context, curve_key, token)
        self.endpoint = bind_address(address)
        self._socket = self._open()
        self._memory = memory.Watch(memory.limit_from_env() if memory_limit is None
                                    else memory_limit)
        self.shed_count = 0
        self._refused = curve.RecentlySeen(MAX_REFUSED_PEERS)
        self._pushers: set[str] = set()  # tasks that pushed: a new one is logged once
        self.refused_count = 0
        self._stopping_since: float | None = None
        self._last_request = time.monotonic()
        self._waiting: list[tuple[bytes, dict[str, Any]]] = []
        # Replies lend the variables' buffers to ZeroMQ instead of copying them; until
        # these trackers are done, a variable is copied before it is updated in place.
        self._lent: list[Any] = []

    def _open(self, patience: float = 0.0) -> Any:
        """The ROUTER socket, bound; tries for ``patience`` seconds while the address is
        still held by a socket just closed."""
        zmq = self._zmq
        sock = self._context.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 1000)
        sock.setsockopt(zmq.IPV6, 1)
        wire.bound_socket(sock)
        curve.secure(sock, self._curve_key, self._token_text)
        deadline = time.monotonic() + patience
        while True:
            try:
                sock.bind(self.endpoint)
                return sock
            except zmq.ZMQError as exc:
                if exc.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                    sock.close(0)
                    raise
                time.sleep(0.01)

    def _shed(self, held: int) -> None:
        """Drops every connection (ZeroMQ frees what they held, whole messages or not);
        the peers connect again and resend their requests."""
        self.shed_count += 1
        log.warning("Holding %d MiB, over the bound of %d MiB (%s): dropping every "
                    "connection; the peers connect again", held >> 20,
                    self._memory.limit >> 20, memory.ENV_PS_MEMORY_LIMIT)
        self._socket.close(0)
        self._waiting = []  # their peers resend after their time-out
        memory.give_back()
        self._socket = self._open(patience=REBIND_SECS)
        self._socket.setsockopt(self._zmq.RCVTIMEO, RECEIVE_WAIT_MS)

    # -- replies ---------------------------------------------------------------------
    def _send(self, ident: bytes, header: dict[str, Any],
              tensors: Mapping[str, np.ndarray] | None = None) -> None:
        wire.send(self._socket, [ident, *wire.encode(header, tensors)])

    def _send_lent(self, ident: bytes, header: dict[str, Any],
                   tensors: Mapping[str, np.ndarray]) -> None:
        """Sends ``tensors`` without copying them; :meth:`_unlend` keeps them unchanged
        until ZeroMQ has sent them."""
        self._lent = [tracker for tracker in self._lent if not tracker.done]
        self._lent.append(wire.send(self._socket, [ident, *wire.encode(header, tensors)],
                                    lend=True, track=True))

    def _unlend(self, names: Collection[str] | None = None) -> None:
        """Before variables (``names``, default all) change in place: if replies may still
        be sending any variable, all are replaced by copies (the replies keep the old
        buffers), so no reply is torn by an update. A variable that replaced its buffer
        by its gradient's (:meth:`ShardState.apply`) may be a received frame that replies
        share untracked, so it is copied before it changes in place."""
        variables, replaced = self.state.variables, self.state.replaced
        self._lent = [tracker for tracker in self._lent if not tracker.done]
        if self._lent:
            for name in variables:
                variables[name] = variables[name].copy()
            replaced.clear()
            self._lent = []
            return
        for name in variables if names is None else names:
            if name in replaced:
                variables[name] = variables[name].copy()
                replaced.discard(name)

    def _error(self, ident: bytes, request_id: Any, code: str, message: str) -> None:
        self._send(ident, {"id": request_id, "ok": False, "code": code, "error": message})

    def _values_reply(self, ident: bytes, request_id: Any) -> None:
        self._send_lent(ident, {"id": request_id, "ok": True,
                                "global_step": self.state.global_step, "initialized": True},
                        self.state.variables)

    # -- requests --------------------------------------------------------------------
    def _authorized(self, ident: bytes, header: Mapping[str, Any]) -> bool:
        given = header.get("token")
        if isinstance(given, str):
            try:
                if hmac.compare_digest(given.encode(), self._token):
                    return True
            except UnicodeEncodeError:  # lone surrogates: not a token anyone was given
                pass
        self._refuse(ident)
        return False

    def _refuse(self, ident: bytes) -> None:
        """Logs a refused peer once; remembers at most MAX_REFUSED_PEERS of them."""
        self.refused_count += 1
        if not self._refused.add(ident):
            return
        log.warning("Refused a peer without the experiment token (%s)", ident[:16].hex())

    def _note_pusher(self, task: Any) -> None:
        """Logs the first push of each task (``worker:3``): how a worker that joined a
        running experiment shows in the ps's log. The name is the peer's word, so only a
        short ``<type>:<index>`` is taken, and at most MAX_PUSHERS are remembered."""
        if (isinstance(task, str) and TASK_NAME.fullmatch(task)
                and task not in self._pushers and len(self._pushers) < MAX_PUSHERS):
            self._pushers.add(task)
            log.info("First push from %s at global step %d", task, self.state.global_step)

    def handle(self, frames: list[Any]) -> None:
        """Answers one request; whatever the peer sent, the server keeps serving."""
        ident = bytes(frames[0]) if frames else b""
        self._last_request = time.monotonic()
        try:
            self._handle(ident, frames[1:])
        except Exception as exc:  # a bug must not let one peer end the whole job
            log.exception("Could not handle a request")
            with contextlib.suppress(Exception):  # the peer is gone: drop the reply
                self._error(ident, None, "internal", f"{type(exc).__name__}")

    def _handle(self, ident: bytes, body: list[Any]) -> None:
        try:
            wire.check_frames(body[:1])
            header = wire.decode_header(body[0]) if body else {}
        except wire.WireError as exc:
            self._refuse(ident)
            self._error(ident, None, "bad_request", str(exc))
            return
        request_id = wire.request_id(header)
        if not self._authorized(ident, header):
            self._error(ident, request_id, "unauthenticated", "missing or wrong token")
            return
        op = header.get("op")
        if not isinstance(op, str) or len(op) > 32:
            op = repr(op)[:32]
        state = self.state
        try:
            if op == "status":
                self._send(ident, {"id": request_id, "ok": True,
                                   "initialized": state.initialized,
                                   "global_step": state.global_step,
                                   "done": self._stopping_since is not None})
            elif op == "stop":
                if self._stopping_since is None:
                    log.info("Told to stop at global step %d", state.global_step)
                    self._stopping_since = time.monotonic()
                waiting, self._waiting = self._waiting, []
                for waiter, meta in waiting:  # pushes held for a sync step that never comes
                    self._send(waiter, {"id": meta["id"], "ok": True, "done": True,
                                        "global_step": state.global_step})
                self._send(ident, {"id": request_id, "ok": True})
            elif self._stopping_since is not None and op != "snapshot":
                self._send(ident, {"id": request_id, "ok": True, "done": True,
                                   "global_step": state.global_step})
            elif op == "init":
                if state.initialized and not header.get("force"):
                    self._send(ident, {"id": request_id, "ok": True, "initialized": True,
                                       "changed": False, "global_step": state.global_step})
                    return
                _, tensors = wire.decode(body)
                state.initialize(header, tensors)
                log.info("Initialized %d variables at global step %d",
                         len(state.variables), state.global_step)
                self._send(ident, {"id": request_id, "ok": True, "changed": True,
                                   "global_step": state.global_step})
            elif not state.initialized:
                self._error(ident, request_id, "uninitialized", "variables not initialized")
            elif op == "pull":
                self._values_reply(ident, request_id)
            elif op == "push":
                self._push(ident, request_id, header, body)
            elif op == "snapshot":
                self._send_lent(ident, {"id": request_id, "ok": True,
                                        "global_step": state.global_step}, state.snapshot())
            else:
                self._error(ident, request_id, "bad_request", f"unknown op {op!r}")
        except wire.WireError as exc:
            log.warning("Rejected %s request: %s", op, exc)
            self._error(ident, request_id, "bad_request", str(exc))

    def _push(self, ident: bytes, request_id: Any, header: Mapping[str, Any],
              body: list[Any]) -> None:
        state = self.state
        _, grads = wire.decode(body, state.expected, header=dict(header))
        self._note_pusher(header.get("task"))
        sync = state.sync_replicas and state.sync_replicas > 1
        if sync:
            pulled = header.get("pulled_step")
            if isinstance(pulled, int) and pulled < state.global_step:
                self._values_reply(ident, request_id)  # stale gradient: dropped, as TF does
                return
        # A gradient that came in one frame is the server's own: SGD writes the new values
        # over it and it becomes the variable, going back as that same frame, so replies
        # still sending the old values need neither a copy nor a wait.
        reuse = {name for name, grad in grads.items() if wire.whole_frame(grad) is not None}
        in_place = state.in_place(grads, reuse)
        if in_place:
            self._unlend(in_place)
        changed = state.apply(grads, count_step=bool(header.get("step")), reuse=reuse)
        if not sync:
            self._values_reply(ident, request_id)
            return
        self._waiting.append((ident, {"id": request_id}))
        if changed:
            waiting, self._waiting = self._waiting, []
            for waiter, meta in waiting:
                self._values_reply(waiter, meta["id"])

    # -- loop ------------------------------------------------------------------------
    def finished(self) -> bool:
        if self._stopping_since is None:
            return False
        now = time.monotonic()
        return (now - self._last_request >= STOP_GRACE_SECS
                or now - self._stopping_since >= STOP_MAX_SECS)

    def serve_forever(self) -> None:
        log.info("Parameter server %d listening on %s (%s)", self.task_index, self.endpoint,
                 "CurveZMQ" if self._encrypted else "plaintext")
        # A receive that gives up after a while (to look at finished() and at what the ps
        # holds): one wait inside ZeroMQ per request, not a poll and then a receive.
        self._socket.setsockopt(self._zmq.RCVTIMEO, RECEIVE_WAIT_MS)
        while not self.finished():
            with contextlib.suppress(self._zmq.Again):
                self.handle(self._socket.recv_multipart(copy=False))
            if (held := self._memory.over()) is not None:
                self._shed(held)
        log.info("Parameter server %d exiting", self.task_index)

    def close(self) -> None:
        self._socket.close()
        if self._gate is not None:
            self._gate.close()
        self._context.term()


def serve(config: Any) -> None:
    """Runs the parameter server of ``config``'s task until the chief stops it."""
    address = config.task_address or config.master.replace("grpc://", "")
    token = os.environ.get(ENV_TOKEN)
    if not token:
        log.warning("%s is not set: the parameter server accepts only peers without a token",
                    ENV_TOKEN)
    server = ParameterServer(address, config.task_id, token, curve.key_from_env())
    try:
        server.serve_forever()
    finally:
        server.close()
