"""What the chief of an experiment reports, and where.

* A run (``kubelearn.em``) named after the experiment, with its hparams, the training loss
  at the first step and every ``save_summary_steps``, and every evaluation; TensorBoard
  event files in model_dir.
* While training, ``GET /progress`` on the progress port (``KUBELEARN_PROGRESS_PORT``: 2223
  by default in a cluster, off on a single machine; 0 turns it off): global step, loss,
  steps/s and the latest evaluation as JSON. The operator polls it into the Experiment's
  status; the runner needs no API permissions. A request must carry the experiment's
  token (``Authorization: Bearer $KUBELEARN_TOKEN``; without a token the endpoint does not
  start). A client has REQUEST_DEADLINE_SECS (2 s) to send its request line and headers or
  is dropped; requests are read by one thread, without blocking, and answered by
  MAX_PROGRESS_THREADS threads (see :class:`ProgressServer`), so clients that send slowly
  cannot keep the operator's request out; a response is at most MAX_PROGRESS_BYTES.
* At the end, the final metrics as JSON in the termination message file
  (``KUBELEARN_TERMINATION_LOG``, e.g. the pod's ``/dev/termination-log``).
"""

from __future__ import annotations

import contextlib
import hmac
import io
import json
import logging
import math
import os
import queue
import re
import selectors
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any

from kubelearn import bounded_input, fs, hooks
from kubelearn_spec.contract import (
    ENV_BIND_HOST,
    ENV_EXPERIMENT,
    ENV_PROGRESS_PORT,
    ENV_TERMINATION_LOG,
    ENV_TOKEN,
)
from kubelearn_spec.contract import PROGRESS_PORT as DEFAULT_PROGRESS_PORT

log = logging.getLogger("kubelearn")

#: Threads answering requests read whole.
MAX_PROGRESS_THREADS = 4
#: A client must have sent its request line and headers this long after it connected, in
#: at most MAX_REQUEST_BYTES, or it is dropped.
REQUEST_DEADLINE_SECS = 2.0
MAX_REQUEST_BYTES = 8 << 10
#: Connections whose requests are being read at once (by one thread); beyond that a new
#: connection drops the oldest.
MAX_PROGRESS_CONNECTIONS = 64
MAX_PROGRESS_BYTES = 16 << 10
#: How long sending an answer may block.
PROGRESS_SOCKET_TIMEOUT_SECS = 5.0
#: Keys a progress report keeps when the whole of it would exceed MAX_PROGRESS_BYTES.
ESSENTIAL_KEYS = ("global_step", "loss", "steps_per_sec", "time")
TERMINATION_LIMIT = 4096  # bytes Kubernetes keeps of a termination message
TRAINING_SCHEDULES = frozenset({"train", "train_and_evaluate", "local_run",
                                "continuous_train_and_evaluate", "continuous_train_and_eval",
                                "test"})


def _finite(value: Any) -> Any:
    return value if not isinstance(value, float) or math.isfinite(value) else None


def progress_body(report: dict[str, Any], limit: int = MAX_PROGRESS_BYTES) -> bytes:
    """The JSON of ``report``, at most ``limit`` bytes: only its essential numbers when
    the whole would be longer."""
    body = json.dumps(report, default=str).encode()
    if len(body) > limit:
        body = json.dumps({k: report[k] for k in ESSENTIAL_KEYS if k in report
                           and isinstance(report[k], (int, float, type(None)))}).encode()
    return body[:limit] if len(body) > limit else body


class _Request:
    """A connection whose request (line and headers) has been read whole, and those bytes."""

    def __init__(self, connection: socket.socket, data: bytes):
        self.connection = connection
        self.data = data


class _Pending:
    __slots__ = ("address", "data", "deadline")

    def __init__(self, address: Any, deadline: float):
        self.address = address
        self.deadline = deadline
        self.data = bytearray()


_END_OF_HEADERS = re.compile(rb"\r?\n\r?\n")


class ProgressServer:
    """A small HTTP server that outside clients cannot hold up.

    One thread reads the requests of every open connection at once, without blocking: a
    client has REQUEST_DEADLINE_SECS from its connection to send its request line and
    headers, at most MAX_REQUEST_BYTES of them, or it is dropped; at most
    MAX_PROGRESS_CONNECTIONS are read at once (a new one beyond that drops the oldest).
    MAX_PROGRESS_THREADS threads answer the requests read whole, in turn, each with
    ``handler`` (a BaseHTTPRequestHandler); a request that finds MAX_PROGRESS_CONNECTIONS
    waiting is dropped. A client that goes away, at any point, is forgotten without a word.

    So clients that send slowly, or never finish, cost a socket each for at most
    REQUEST_DEADLINE_SECS and no thread, and a request sent whole at once (the operator's)
    is answered while they try.
    """

    def __init__(self, address: tuple[str, int], handler: Any):
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._listener = socket.create_server(address, family=family, backlog=64)
        self._listener.setblocking(False)
        self.server_address = self._listener.getsockname()
        self._handler = handler
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        # Only the reader thread puts requests in, at most MAX_PROGRESS_CONNECTIONS waiting.
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._stopping = False
        self.dropped = 0  # connections dropped: too slow, too long, too many, too busy
        self._threads = [threading.Thread(target=self._read_requests, daemon=True,
                                          name="progress-reader")]
        self._threads += [threading.Thread(target=self._answer_requests, daemon=True,
                                           name=f"progress-{i}")
                          for i in range(MAX_PROGRESS_THREADS)]
        for thread in self._threads:
            thread.start()

    # -- reading requests (one thread) ---------------------------------------------------
    def _read_requests(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._listener, selectors.EVENT_READ)
        selector.register(self._wake_read, selectors.EVENT_READ)
        pending: dict[socket.socket, _Pending] = {}  # oldest first

        def drop(connection: socket.socket) -> None:
            selector.unregister(connection)
            del pending[connection]
            self.dropped += 1
            _close(connection)

        try:
            while not self._stopping:
                now = time.monotonic()
                for connection in [c for c, p in pending.items() if p.deadline <= now]:
                    drop(connection)
                timeout = (min(p.deadline for p in pending.values()) - now) if pending else None
                for key, _ in selector.select(timeout):
                    if key.fileobj is self._wake_read:
                        with contextlib.suppress(OSError):
                            self._wake_read.recv(64)
                    elif key.fileobj is self._listener:
                        self._accept(selector, pending, drop)
                    elif key.fileobj in pending:  # not dropped by an accept just now
                        self._receive(key.fileobj, selector, pending, drop)  # type: ignore[arg-type]
        finally:
            for connection in list(pending):
                drop(connection)
            selector.close()

    def _accept(self, selector: selectors.BaseSelector, pending: dict[socket.socket, _Pending],
                drop: Callable[[socket.socket], None]) -> None:
        for _ in range(16):  # a few at a time: what was accepted is read in between
            try:
                connection, address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # a connection reset before it was accepted, out of files...
                return
            if len(pending) >= MAX_PROGRESS_CONNECTIONS:
                drop(next(iter(pending)))
            connection.setblocking(False)
            pending[connection] = _Pending(address, time.monotonic() + REQUEST_DEADLINE_SECS)
            selector.register(connection, selectors.EVENT_READ)

    def _receive(self, connection: socket.socket, selector: selectors.BaseSelector,
                 pending: dict[socket.socket, _Pending],
                 drop: Callable[[socket.socket], None]) -> None:
        state = pending[connection]
        try:
            data = connection.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client went
            drop(connection)
            return
        state.data += data
        if not _END_OF_HEADERS.search(state.data):
            if len(state.data) > MAX_REQUEST_BYTES:
                drop(connection)
            return
        selector.unregister(connection)
        del pending[connection]
        if self._queue.qsize() >= MAX_PROGRESS_CONNECTIONS:  # a flood of whole requests
            self.dropped += 1
            _close(connection)
            return
        self._queue.put(_Request(connection, bytes(state.data)))

    # -- answering them (MAX_PROGRESS_THREADS threads) -----------------------------------
    def _answer_requests(self) -> None:
        while (request := self._queue.get()) is not None:
            try:
                request.connection.setblocking(True)
                request.connection.settimeout(PROGRESS_SOCKET_TIMEOUT_SECS)
                self._handler(request, request.connection.getpeername(), self)
            except OSError:  # the client went, or stopped reading: nothing to say
                pass
            except Exception as exc:  # never a traceback in the training log
                log.warning("Progress endpoint: a request failed: %s: %s",
                            type(exc).__name__, " ".join(str(exc).split())[:300])
            finally:
                _close(request.connection)

    # -- the end -------------------------------------------------------------------------
    def shutdown(self) -> None:
        """Stops reading and answering, closes every connection and the listening socket."""
        self._stopping = True
        with contextlib.suppress(OSError):
            self._wake_write.send(b"x")
        for _ in range(MAX_PROGRESS_THREADS):
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout=PROGRESS_SOCKET_TIMEOUT_SECS + 1)
        while True:  # requests read but never answered
            try:
                request = self._queue.get_nowait()
            except queue.Empty:
                break
            if request is not None:
                _close(request.connection)
        for sock in (self._listener, self._wake_read, self._wake_write):
            _close(sock)


def _close(connection: socket.socket) -> None:
    with contextlib.suppress(OSError):
        connection.close()


class _Handler(BaseHTTPRequestHandler):
    """Answers a request the server read whole (``request`` is a :class:`_Request`)."""

    def setup(self) -> None:
        self.connection = self.request.connection
        self.rfile = io.BytesIO(self.request.data)
        self.wfile = socketserver._SocketWriter(self.connection)  # type: ignore[attr-defined]

    def log_message(self, *args: Any) -> None:  # no access log in the training log
        pass


class Reporter:
    """Run tracking, the progress endpoint and the termination message of one chief task."""

    def __init__(self, run_config: Any, hparams: Any, experiment_name: str | None = None):
        from kubelearn import em
        from kubelearn.em.tensorboard import EventWriter
        from kubelearn.em.training import EvaluationRecorder, TrainingRecorder

        self.model_dir = run_config.model_dir
        name = experiment_name or os.environ.get(ENV_EXPERIMENT) or (
            fs.basename(self.model_dir) if fs.is_url(self.model_dir)
            else os.path.basename(os.path.normpath(self.model_dir))) or "default"
        os.environ.setdefault("EM_RUN_PARENT_DIR", fs.join(self.model_dir, "runs"))
        values = hparams.values() if hparams is not None else {}
        self.run = em.create_run(name=name, hparams=values,
                                 labels=[f"task={run_config.task_type or 'local'}"])
        self._writers = [EventWriter(self.model_dir),
                         EventWriter(fs.join(self.model_dir, "eval"))]
        every = max(1, int(run_config.save_summary_steps or 100))
        self.train_hook = TrainingRecorder(self.run, self._writers[0], every_n_steps=every)
        self.eval_hook = EvaluationRecorder(self.run, self._writers[1])
        self._server: ProgressServer | None = None
        self._complaints = bounded_input.Complaints(log.warning)
        self._in_cluster = bool(run_config.cluster_spec)
        self._start_server()
        log.info("Recording run %s in %s", self.run.name, self.run.location)

    def attach(self, experiment: Any) -> None:
        experiment.extend_train_hooks([self.train_hook])
        experiment.extend_eval_hooks([self.eval_hook])

    # -- the progress endpoint -------------------------------------------------------
    def progress(self) -> dict[str, Any]:
        report: dict[str, Any] = {}
        source = fs.join(self.model_dir, hooks.PROGRESS_FILE)
        try:
            report = hooks.read_progress(self.model_dir) or {}
        except (OSError, ValueError) as exc:
            self._complaints.bad(source, f"{_one_line(exc)}; not reported until it is fixed")
        else:
            self._complaints.good(source)
        if self.eval_hook.last:
            report["eval"] = {k: _finite(v) for k, v in self.eval_hook.last.items()}
        if evaluator := evaluator_result(self.model_dir, self._complaints):
            report["evaluator"] = evaluator
        report["run"] = self.run.location
        return report

    def _start_server(self) -> None:
        # On by default only in a cluster, where the operator polls it; a single-machine
        # run opens no port unless asked to.
        default = DEFAULT_PROGRESS_PORT if self._in_cluster else 0
        port = int(os.environ.get(ENV_PROGRESS_PORT, default) or 0)
        if not port:
            return
        token = os.environ.get(ENV_TOKEN, "").encode("utf-8", "surrogateescape")
        if not token:
            log.warning("Progress endpoint not started: %s is not set", ENV_TOKEN)
            return
        reporter = self

        class Handler(_Handler):
            def _authorized(self) -> bool:
                given = self.headers.get("Authorization", "")
                scheme, _, value = given.partition(" ")
                return scheme == "Bearer" and hmac.compare_digest(
                    value.strip().encode("utf-8", "surrogateescape"), token)

            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/progress":
                    self.send_error(404)
                    return
                if not self._authorized():
                    self.send_error(401)
                    return
                body = progress_body(reporter.progress())
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        host = os.environ.get(ENV_BIND_HOST) or os.environ.get("POD_IP") or "0.0.0.0"
        try:
            self._server = ProgressServer((host, port), Handler)
        except OSError as exc:
            log.warning("Progress endpoint not started on %s:%d: %s", host, port, exc)

    # -- the end ---------------------------------------------------------------------
    def final_metrics(self, result: Any) -> dict[str, Any]:
        evaluation = result[0] if isinstance(result, tuple) and result else result
        metrics: dict[str, Any] = {}
        if isinstance(evaluation, dict):
            for key, value in evaluation.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    metrics[key] = _finite(float(value) if isinstance(value, float) else value)
        elif self.eval_hook.last:
            metrics.update(self.eval_hook.last)
        if "global_step" not in metrics:
            progress = self.progress()
            metrics["global_step"] = progress.get("global_step")
            metrics.setdefault("loss", progress.get("loss"))
        if isinstance(metrics.get("global_step"), float):
            metrics["global_step"] = int(metrics["global_step"])
        if evaluator := evaluator_result(self.model_dir, self._complaints):
            metrics["evaluator"] = evaluator
        metrics["run"] = self.run.location
        exports = result[1] if isinstance(result, tuple) and len(result) > 1 else None
        if isinstance(exports, list) and exports and isinstance(exports[-1], (str, bytes)):
            last = exports[-1]
            metrics["export"] = last.decode() if isinstance(last, bytes) else last
        return metrics

    def finish(self, result: Any = None, error: BaseException | None = None) -> None:
        if error is None:
            self.run.finish()
        else:
            self.run.fail(error)
        payload = self.final_metrics(result) if error is None else {
            **{k: v for k, v in self.progress().items() if k in ("global_step", "loss")},
            "error": f"{type(error).__name__}: {error}"[:500], "run": self.run.location}
        write_termination_message(payload)
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.shutdown()


#: Where the evaluator (``continuous_eval``) appends its evaluations, in the shared model dir.
EVALUATOR_RESULTS = os.path.join("eval_continuous", "results.jsonl")
EVALUATOR_TAIL_BYTES = 4096


def _number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return abs(value) < 1 << 63
    return isinstance(value, float) and math.isfinite(value)


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "..."


def last_evaluation(location: str, tail_bytes: int = EVALUATOR_TAIL_BYTES
                    ) -> dict[str, Any] | None:
    """The last evaluation in a ``results.jsonl``: its finite numbers only (at most 16, keys
    cut to 64 characters), from at most the file's last ``tail_bytes``; lines that are not
    such JSON (nested too deeply, cut by the tail or being written) are skipped. None when
    there is none.

    Raises:
      FileNotFoundError: when there is no such file.
      OSError, ValueError: for one that cannot be read (a path that is not a regular file).
    """
    size, tail = fs.read_tail(location, tail_bytes)
    lines = tail.split(b"\n")
    for line in reversed(lines[1:] if size > tail_bytes else lines):
        try:
            value = bounded_input.load_json(line, location)
        except ValueError:
            continue
        if isinstance(value, dict):
            result = {str(k)[:64]: v for k, v in value.items() if _number(v)}
            return dict(list(result.items())[:16]) or None
    return None


def evaluator_result(model_dir: str, complaints: bounded_input.Complaints | None = None
                     ) -> dict[str, Any] | None:
    """The evaluator's latest evaluation, read from the model directory it shares with the
    chief (:func:`last_evaluation`: it is another pod's output, so nothing more of it is
    trusted). A file that cannot be read is told to ``complaints``, once."""
    location = fs.join(model_dir, EVALUATOR_RESULTS)
    try:
        result = last_evaluation(location)
    except FileNotFoundError:
        result = None
    except (OSError, ValueError) as exc:
        if complaints is not None:
            complaints.bad(location, f"{_one_line(exc)}; not reported until it is fixed")
        return None
    if complaints is not None:
        complaints.good(location)
    return result


def write_termination_message(payload: dict[str, Any]) -> None:
    """Writes ``payload`` as JSON to ``$KUBELEARN_TERMINATION_LOG`` when that is set."""
    path = os.environ.get(ENV_TERMINATION_LOG)
    if not path:
        return
    text = json.dumps(payload, separators=(",", ":"), sort_keys=True)
    if len(text.encode()) > TERMINATION_LIMIT:
        text = json.dumps({k: payload[k] for k in ("global_step", "loss", "evaluator", "run",
                                                    "export", "error")
                           if k in payload}, separators=(",", ":"))
    try:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as exc:
        log.warning("Could not write the termination message to %s: %s", path, exc)
