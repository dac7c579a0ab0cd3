"""What the chief of an experiment reports, and where.

* A run (``kubelearn.em``) named after the experiment, with its hparams, the training loss
  at the first step and every ``save_summary_steps``, and every evaluation; TensorBoard
  event files in model_dir.
* While training, ``GET /progress`` on the progress port (``KUBELEARN_PROGRESS_PORT``: 2223
  by default in a cluster, off on a single machine; 0 turns it off): global step, loss,
  steps/s and the latest evaluation as JSON. The operator polls it into the Experiment's
  status; the runner needs no API permissions. A request must carry the experiment's
  token (``Authorization: Bearer $KUBELEARN_TOKEN``; without a token the endpoint does not
  start); sockets time out, at most MAX_PROGRESS_THREADS requests are served at once
  (others are closed at once) and a response is at most MAX_PROGRESS_BYTES.
* At the end, the final metrics as JSON in the termination message file
  (``KUBELEARN_TERMINATION_LOG``, e.g. the pod's ``/dev/termination-log``).
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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

MAX_PROGRESS_THREADS = 4
MAX_PROGRESS_BYTES = 16 << 10
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


class BoundedHTTPServer(ThreadingHTTPServer):
    """A thread per request, at most ``max_threads`` of them: a request beyond that is
    closed at once instead of holding one more thread."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], handler: Any,
                 max_threads: int = MAX_PROGRESS_THREADS):
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(max_threads)
        self.refused = 0

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


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
        self._server: BoundedHTTPServer | None = None
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

        class Handler(BaseHTTPRequestHandler):
            timeout = PROGRESS_SOCKET_TIMEOUT_SECS

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

            def log_message(self, *args: Any) -> None:  # no access log in the training log
                pass

        host = os.environ.get(ENV_BIND_HOST) or os.environ.get("POD_IP") or "0.0.0.0"
        try:
            self._server = BoundedHTTPServer((host, port), Handler)
        except OSError as exc:
            log.warning("Progress endpoint not started on %s:%d: %s", host, port, exc)
            return
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

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
            self._server.server_close()


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
