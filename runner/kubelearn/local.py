"""``kubelearn local experiment.yaml``: run an Experiment manifest as local processes.

One process per replica, each with the ``TF_CONFIG`` a pod would get (addresses on free
127.0.0.1 ports), a fresh token, and its logs streamed with a ``[role-i]`` prefix. The
restart, back-off, deadline and success policies of the manifest apply as on a cluster.
Ctrl-C or SIGTERM stops every child, also while they are being started; children also die
with the launcher.

A manifest asking for more replicas than :func:`replica_limit` allows (``--max-replicas``,
default :data:`DEFAULT_MAX_REPLICAS`, and never more than the open-file and process limits
leave room for) is refused before anything starts. Above
:data:`~kubelearn_spec.contract.INLINE_CLUSTER_MAX_REPLICAS` replicas the cluster is written
once to a file that every replica's ``TF_CONFIG`` refers to, as the operator puts it in a
ConfigMap: the launch costs O(N), not N copies of N addresses.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from kubelearn import bounded_input, checkpoints, fs, hooks, paths, reporting
from kubelearn.manifest import load_manifest, own_commands
from kubelearn_spec import contract, names, policy
from kubelearn_spec.model import ExperimentSpec, parse_manifest, scaled_manifest
from kubelearn_spec.tfconfig import cluster_json, cluster_spec, tf_config, tf_config_task
from kubelearn_spec.validate import SpecError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_MODEL_DIR_UNUSABLE = contract.EXIT_MODEL_DIR_UNUSABLE
START_ORDER = ("ps", "master", "chief", "worker", "evaluator")
# After the experiment succeeded, how long the other replicas get to finish by themselves.
FINISH_GRACE_SECS = 60.0
TERMINATE_GRACE_SECS = 5.0
#: ``kubelearn scale DIR --replicas N`` writes the worker count here, in the model dir of the
#: running ``kubelearn local``, which reads it as the operator reads ``spec.replicas.worker``.
SCALE_FILE = "scale.json"
#: The most replicas ``kubelearn local`` starts unless ``--max-replicas`` says otherwise: each
#: is a Python process (tens of MB) with a thread of the launcher reading its output.
DEFAULT_MAX_REPLICAS = 256
#: What one replica costs, for the machine's share of :func:`replica_limit`: open files of
#: the launcher (its output pipe, and the pipes of its start), and tasks of the user (its
#: process, the launcher's thread reading it, and its own threads).
FILES_PER_REPLICA = 2
TASKS_PER_REPLICA = 8
#: Open files the launcher keeps for itself.
RESERVED_FILES = 64
CLUSTER_FILE = "cluster-{}.json"
MAX_SCALE_BYTES = 4096
#: Bytes of the end of eval/results.jsonl the summary reads for the final evaluation.
RESULTS_TAIL_BYTES = 64 << 10


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def cluster_for(spec: ExperimentSpec, port: Callable[[], int] = free_port
                ) -> dict[str, list[str]]:
    """The cluster spec: one 127.0.0.1 address per replica of every cluster role."""
    return cluster_spec(spec.counts(), lambda _role, _index: f"127.0.0.1:{port()}")


def task_env(spec: ExperimentSpec, cluster: dict[str, list[str]], role: str, index: int,
             model_dir: str, token: str, curve_key: str = "",
             cluster_file: str | None = None) -> dict[str, str]:
    """The environment of one replica, as the operator gives it to a pod (the Curve key
    empty: the ps wire in plaintext). With ``cluster_file`` (a file holding ``cluster``),
    TF_CONFIG holds only the task and refers to the file, as a pod's refers to the
    cluster's ConfigMap; ``kubelearn run`` puts the cluster back in."""
    if cluster_file is None:
        env = contract.replica_env(spec, tf_config(cluster, role, index), model_dir)
    else:
        env = {**contract.replica_env(spec, tf_config_task(role, index), model_dir),
               contract.ENV_CLUSTER_FILE: cluster_file}
    return {
        **env,
        contract.ENV_TOKEN: token,
        contract.ENV_CURVE_KEY: curve_key,
        contract.ENV_PROGRESS_PORT: "0",  # the launcher reads progress.json directly
        "PYTHONUNBUFFERED": "1",
    }


def machine_replica_limit() -> tuple[int | None, str]:
    """How many replicas this machine's limits leave room for (None: no limit), and the
    limit that decides it: open files (``ulimit -n``) or the user's processes (``ulimit
    -u``), at :data:`FILES_PER_REPLICA` and :data:`TASKS_PER_REPLICA` per replica."""
    import resource

    found: tuple[int | None, str] = (None, "")
    for which, per, reserved, *what in (
            (resource.RLIMIT_NOFILE, FILES_PER_REPLICA, RESERVED_FILES, "open-file", "-n"),
            (resource.RLIMIT_NPROC, TASKS_PER_REPLICA, 0, "process", "-u")):
        soft = resource.getrlimit(which)[0]
        if soft == resource.RLIM_INFINITY or soft < 0:
            continue
        room = max(0, (soft - reserved) // per)
        if found[0] is None or room < found[0]:
            found = (room, f"the {what[0]} limit (ulimit {what[1]} {soft})")
    return found


def replica_limit(requested: int | None) -> tuple[int, str]:
    """The most replicas ``kubelearn local`` starts: ``--max-replicas`` (``requested``) or
    :data:`DEFAULT_MAX_REPLICAS`, and never more than :func:`machine_replica_limit`; with
    what to tell a user who asks for more."""
    limit = DEFAULT_MAX_REPLICAS if requested is None else requested
    room, why = machine_replica_limit()
    if room is not None and room < limit:
        return room, f"{why} leaves room for no more"
    if requested is None:
        return limit, "--max-replicas N raises it"
    return limit, "the limit of --max-replicas"


def wire_encrypted() -> bool:
    """Whether ``$KUBELEARN_WIRE_ENCRYPTION`` asks for CurveZMQ (off by default: more than
    2x the cost in ps throughput, see README) and this pyzmq has it; the operator's setting
    of the same name.

    Raises:
        ValueError: when the variable is neither ``curve`` nor ``none`` nor empty.
    """
    if not contract.wire_encryption(os.environ.get(contract.ENV_WIRE_ENCRYPTION, "")):
        return False
    try:
        import zmq
    except ImportError:
        return False
    return bool(zmq.has("curve"))


def _die_with_parent() -> None:  # runs in the child before exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Replica:
    role: str
    index: int
    env: dict[str, str]
    policy: str
    process: subprocess.Popen[str] | None = None
    restarts: int = 0
    exit_code: int | None = None
    finished: bool = False  # exited and will not be restarted
    threads: list[threading.Thread] = field(default_factory=list)

    @property
    def name(self) -> str:
        return names.replica_task(self.role, self.index)


class Console:
    """Prefixed log lines on stdout and a progress line that does not get in their way."""

    def __init__(self, out: TextIO, progress_tty: bool):
        self._out = out
        self._tty = progress_tty
        self._lock = threading.Lock()
        self._bar = ""
        self._last_plain = 0.0

    def line(self, text: str) -> None:
        with self._lock:
            if self._tty and self._bar:
                self._out.write("\r\x1b[2K")
            self._out.write(text + "\n")
            if self._tty and self._bar:
                self._out.write(self._bar)
            self._out.flush()

    def progress(self, step: int, total: int | None, loss: float | None, rate: float) -> None:
        loss_text = "-" if loss is None else f"{loss:.6g}"
        if self._tty:
            width = 30
            done = int(width * min(step / total, 1.0)) if total else 0
            bar = "#" * done + "." * (width - done) if total else ""
            of = f"/{total}" if total else ""
            text = f"[{bar}] step {step}{of}  loss {loss_text}  {rate:.1f} steps/s"
            with self._lock:
                self._bar = text[: shutil.get_terminal_size((100, 20)).columns - 1]
                self._out.write("\r\x1b[2K" + self._bar)
                self._out.flush()
        elif time.monotonic() - self._last_plain >= 5.0:
            self._last_plain = time.monotonic()
            of = f"/{total}" if total else ""
            self.line(f"progress: global step {step}{of}, loss {loss_text}, {rate:.1f} steps/s")

    def end_progress(self) -> None:
        with self._lock:
            if self._tty and self._bar:
                self._out.write("\n")
                self._out.flush()
            self._bar = ""


class Launcher:
    """Starts, watches and restarts the replicas of one experiment."""

    def __init__(self, spec: ExperimentSpec, model_dir: str, console: Console,
                 python: str = sys.executable, manifest: Any = None,
                 encrypt_wire: bool | None = None, max_replicas: int | None = None,
                 inline_max: int = contract.INLINE_CLUSTER_MAX_REPLICAS):
        self.spec = spec
        #: Above this many replicas, the cluster is in a file (as in the operator's setting).
        self.inline_max = inline_max
        #: The most replicas a scale may bring (None: as many as the manifest allows).
        self.max_replicas = max_replicas
        #: Where the cluster files are (made when the first is written), and how many.
        self._cluster_dir: str | None = None
        self._cluster_files = 0
        self.manifest = manifest  # as written: a scale is checked as an update of it
        self.leaving: list[tuple[Replica, float]] = []  # scaled down, given SIGTERM at
        self._scale_seen: Any = None
        self._next_scale = 0.0
        self.model_dir = model_dir
        self._remote = fs.is_remote(model_dir)
        self._next_progress = 0.0
        self.console = console
        self.python = python
        self.token = secrets.token_hex(16)
        # The ps wire encrypted (CurveZMQ) when asked for, as the operator's setting does
        # (None: as $KUBELEARN_WIRE_ENCRYPTION asks).
        if encrypt_wire is None:
            encrypt_wire = wire_encrypted()
        self.curve_key = secrets.token_hex(32) if encrypt_wire else ""
        self.cluster = cluster_for(spec)
        cluster_file = self._cluster_file(spec)
        self.replicas = [
            Replica(role, i, task_env(spec, self.cluster, role, i, model_dir, self.token,
                                      self.curve_key, cluster_file),
                    spec.replicas[role].restart_policy)
            for role in START_ORDER for i in range(spec.count(role))
        ]
        self.total_restarts = 0
        self._last_report: dict[str, Any] | None = None
        self.failure: str | None = None
        self.started = time.monotonic()
        self._signal: int | None = None
        # What is wrong with a file polled in model_dir, said once (never its content).
        self._complaints = bounded_input.Complaints(
            lambda message: self.console.line(f"Warning: {message}"))

    # -- the cluster -----------------------------------------------------------------
    def _cluster_file(self, spec: ExperimentSpec) -> str | None:
        """Above ``inline_max`` replicas, the current cluster written once to a new file
        that the replicas started from now on refer to (those running keep theirs, as pods
        keep the environment they started with); None below, where TF_CONFIG holds it."""
        if spec.total_replicas <= self.inline_max:
            return None
        if self._cluster_dir is None:
            self._cluster_dir = tempfile.mkdtemp(prefix=f"kubelearn-{spec.name}-cluster-")
        path = os.path.join(self._cluster_dir, CLUSTER_FILE.format(self._cluster_files))
        self._cluster_files += 1
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(cluster_json(self.cluster))
        return path

    def close(self) -> None:
        """Removes the cluster files (run() does, as it ends)."""
        if self._cluster_dir is not None:
            shutil.rmtree(self._cluster_dir, ignore_errors=True)
            self._cluster_dir = None

    # -- processes -------------------------------------------------------------------
    def command(self, role: str | None = None) -> list[str]:
        """What a replica of ``role`` runs: the pod's ``kubelearn run ...`` with this Python,
        or without an experiment function the main container's own command and args."""
        if self.spec.experiment_fn is None:
            assert role is not None, "without an experiment function, each role has its own"
            return own_commands(self.spec)[role]
        return [self.python, "-m", "kubelearn.cli", *contract.runner_command(self.spec)[1:]]

    def _spawn(self, replica: Replica) -> bool:
        """Starts the replica's process; False (and the experiment failed) when the system
        refuses (no process or file left, or an environment too large)."""
        env = {**os.environ, **replica.env}
        try:
            replica.process = subprocess.Popen(
                self.command(replica.role), env=env, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True,
                preexec_fn=_die_with_parent)
        except OSError as exc:
            replica.finished = True
            self.failure = self.failure or f"{replica.name} could not start: {one_line(exc)}"
            return False
        replica.exit_code = None
        thread = threading.Thread(target=self._pump, args=(replica, replica.process),
                                  daemon=True)
        thread.start()
        replica.threads.append(thread)
        return True

    def _pump(self, replica: Replica, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.console.line(f"[{replica.name}] {line.rstrip()}")

    def start(self) -> None:
        self.console.line(f"Experiment {self.spec.name}: "
                          + ", ".join(f"{r} x{self.spec.count(r)}" for r in START_ORDER
                                      if self.spec.count(r))
                          + f"; model dir {self.model_dir}")
        for started, replica in enumerate(self.replicas):
            # A signal stops the launch where it is: the replicas started go with the rest.
            if self._signal is not None:
                self.console.line(f"Launch stopped by signal {self._signal} after {started} "
                                  f"of {len(self.replicas)} replicas")
                return
            if not self._spawn(replica):
                return

    def terminate(self) -> None:
        """SIGTERM every live replica, SIGKILL whoever is still there after a grace."""
        everyone = self.replicas + [r for r, _ in self.leaving]
        live = [r.process for r in everyone if r.process and r.process.poll() is None]
        for proc in live:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + TERMINATE_GRACE_SECS
        for proc in live:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        for replica in everyone:
            code = replica.process.returncode if replica.process else None
            if code is not None and replica.exit_code is None:  # for the summary
                replica.exit_code = 128 - code if code < 0 else code
            for thread in replica.threads:
                thread.join(timeout=2)

    # -- scaling ---------------------------------------------------------------------
    def scale_request(self) -> int | None:
        """The worker count ``kubelearn scale`` asked for, if it changed since last read
        (read every loop from a path, at most once a second from an object store, where each
        read is a GET)."""
        if self._remote:
            if time.monotonic() < self._next_scale:
                return None
            self._next_scale = time.monotonic() + 1.0
        path = fs.join(self.model_dir, SCALE_FILE)
        try:  # a path: not through a link out of the model dir, nor from a FIFO
            data = (fs.read_bytes(path, MAX_SCALE_BYTES) if fs.is_url(self.model_dir)
                    else paths.read_bytes(self.model_dir, path, MAX_SCALE_BYTES))
            request = bounded_input.load_json(data, path)
        except FileNotFoundError:
            self._complaints.good(path)
            return None
        except (OSError, ValueError) as exc:
            self._complaints.bad(path, f"{one_line(exc)}; ignored until it is fixed")
            return None
        self._complaints.good(path)
        if request == self._scale_seen:
            return None
        self._scale_seen = request
        workers = request.get("replicas") if isinstance(request, dict) else None
        if isinstance(workers, bool) or not isinstance(workers, int):
            self.console.line(f"Scale refused: {SCALE_FILE} must hold {{\"replicas\": N}}")
            return None
        return workers

    def scale(self, workers: int, report: dict[str, Any] | None) -> None:
        """Runs ``workers`` workers from now on, as the operator does after ``kubectl
        scale``: new ones get the current cluster, the highest-index ones get SIGTERM, no
        other replica is restarted; refused (one line) as the API server or the operator
        would refuse it."""
        running = self.spec.count(names.SCALED_ROLE)
        if workers == running:
            return
        try:
            manifest = scaled_manifest(self.manifest, workers)
            spec = parse_manifest(manifest, old=self.manifest)
        except (SpecError, TypeError) as exc:
            self.console.line(f"Scale refused: {one_line(exc)}")
            return
        if why := policy.scale_refusal(workers, running, (report or {}).get("sync_replicas")):
            self.console.line(f"Scale refused: {why}")
            return
        if self.max_replicas is not None and spec.total_replicas > self.max_replicas:
            self.console.line(f"Scale refused: {spec.total_replicas} replicas in all; "
                              f"kubelearn local starts at most {self.max_replicas} here")
            return
        self.manifest, self.spec = manifest, spec
        role = names.SCALED_ROLE
        if workers > running:
            self.cluster.setdefault(role, [])
            self.cluster[role] += [f"127.0.0.1:{free_port()}" for _ in range(running, workers)]
            cluster_file = self._cluster_file(spec)
            for index in range(running, workers):
                replica = Replica(role, index, task_env(spec, self.cluster, role, index,
                                                        self.model_dir, self.token,
                                                        self.curve_key, cluster_file),
                                  spec.replicas[role].restart_policy)
                self.replicas.append(replica)
                if self._signal is not None or not self._spawn(replica):
                    break
            self.console.line(f"Workers scaled from {running} to {workers}")
            return
        leaving = [r for r in self.replicas if r.role == role and r.index >= workers]
        self.replicas = [r for r in self.replicas if r not in leaving]
        del self.cluster[role][workers:]
        for replica in leaving:
            replica.finished = True
            if replica.process is not None and replica.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    replica.process.send_signal(signal.SIGTERM)
            self.leaving.append((replica, time.monotonic()))
        self.console.line(f"Workers scaled from {running} to {workers}: "
                          + ", ".join(r.name for r in leaving) + " stop")

    def _reap_leaving(self) -> None:
        """Scaled-down workers: SIGKILL after the grace; their exit decides nothing."""
        for replica, since in list(self.leaving):
            proc = replica.process
            if proc is None or proc.poll() is not None:
                self.leaving.remove((replica, since))
            elif time.monotonic() - since > TERMINATE_GRACE_SECS:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()

    # -- policies --------------------------------------------------------------------
    def _reap(self) -> None:
        for replica in self.replicas:
            proc = replica.process
            if proc is None or replica.finished or proc.poll() is None:
                continue
            code = proc.returncode
            code = 128 - code if code < 0 else code
            replica.exit_code = code
            experiment_over = self._succeeded()
            if not experiment_over and policy.restarts_after_exit(replica.policy, code):
                limit = self.spec.run_policy.backoff_limit
                if policy.backoff_exceeded(self.total_restarts + 1, limit):
                    replica.finished = True
                    self.failure = (f"{replica.name} exited with code {code} and the back-off "
                                    f"limit of {limit} restarts is reached")
                    continue
                self.total_restarts += 1
                replica.restarts += 1
                self.console.line(f"[{replica.name}] exited with code {code}; restarting "
                                  f"({replica.policy}, restart {replica.restarts})")
                self._spawn(replica)
                continue
            replica.finished = True
            if code != 0 and policy.decides_outcome(replica.role) and not experiment_over:
                self.failure = f"{replica.name} failed with exit code {code}"

    def _succeeded(self) -> bool:
        done = {(r.role, r.index) for r in self.replicas if r.finished and r.exit_code == 0}
        return policy.succeeded(self.spec, lambda role, index: (role, index) in done)

    def _all_done(self) -> bool:
        return all(r.process is None or r.process.poll() is not None for r in self.replicas)

    def request_stop(self, signum: int) -> None:
        self._signal = signum

    def progress(self, now: bool = False) -> dict[str, Any] | None:
        """The chief's progress report (:func:`kubelearn.hooks.read_progress`), read at most
        every second from an object store (each read is a GET) and every loop from a path;
        ``now`` reads it regardless. A file that is not such a report is ignored, said once."""
        if not now and time.monotonic() < self._next_progress:
            return None
        self._next_progress = time.monotonic() + (1.0 if self._remote else 0.0)
        path = fs.join(self.model_dir, hooks.PROGRESS_FILE)
        try:
            report = hooks.read_progress(self.model_dir)
        except (OSError, ValueError) as exc:
            self._complaints.bad(path, f"{one_line(exc)}; ignored until it is fixed")
            return None
        self._complaints.good(path)
        return report

    def run(self) -> int:
        """Runs until the experiment succeeds or fails; returns the launcher's exit code."""
        total = self.spec.hparams.get("train_steps")
        total = total if isinstance(total, int) else None
        success_at: float | None = None
        try:
            self.start()
            while True:
                time.sleep(0.2)
                if self._signal is not None:
                    self.console.end_progress()
                    self.console.line(f"Stopping every replica (signal {self._signal})")
                    self.terminate()
                    return 128 + self._signal
                self._reap()
                self._reap_leaving()
                report = self.progress()
                if report is not None:
                    self._last_report = report
                if success_at is None and (workers := self.scale_request()) is not None:
                    self.scale(workers, self._last_report)
                if report and success_at is None:
                    self.console.progress(int(report.get("global_step", 0)), total,
                                          report.get("loss"),
                                          float(report.get("steps_per_sec") or 0.0))
                deadline = self.spec.run_policy.active_deadline_seconds
                if policy.deadline_passed(self.started, time.monotonic(), deadline) \
                        and not self.failure:
                    self.failure = f"active deadline of {deadline}s exceeded"
                if self.failure:
                    self.console.end_progress()
                    self.console.line(f"Experiment {self.spec.name} failed: {self.failure}")
                    self.terminate()
                    return EXIT_FAILED
                if success_at is None and self._succeeded():
                    success_at = time.monotonic()
                    self.console.end_progress()
                if success_at is not None and (
                    self._all_done() or time.monotonic() - success_at > FINISH_GRACE_SECS
                ):
                    self.terminate()
                    return EXIT_OK
        finally:
            self.console.end_progress()
            self.close()

    # -- the end ---------------------------------------------------------------------
    def summary(self) -> list[str]:
        lines = []
        results = fs.join(self.model_dir, "eval", "results.jsonl")
        final = None
        with contextlib.suppress(OSError, ValueError):
            final = reporting.last_evaluation(results, RESULTS_TAIL_BYTES)
        if final:
            lines.append("final evaluation: " + ", ".join(
                f"{k} = {v:.6g}" if isinstance(v, float) else f"{k} = {v}"
                for k, v in sorted(final.items())))
        report = self.progress(now=True)
        elapsed = time.monotonic() - self.started
        if report:
            lines.append(f"global step {report.get('global_step')} in {elapsed:.1f}s "
                         f"({float(report.get('steps_per_sec') or 0):.1f} steps/s at the end)")
        latest = None
        with contextlib.suppress(OSError, ValueError):
            latest = checkpoints.latest_checkpoint(self.model_dir)
        if latest:
            lines.append(f"checkpoint: {latest}")
        runs_dir = fs.join(self.model_dir, "runs")
        if fs.is_remote(runs_dir):
            with contextlib.suppress(OSError):
                # A run's id ends with the time it was made (<name>_<yymmdd>_<HHMMSS>_<6>).
                names = sorted(fs.listdir(runs_dir), key=lambda n: n.split("_")[-3:-1])
                if names:
                    lines.append(f"run: {fs.join(runs_dir, names[-1])}")
        else:
            with contextlib.suppress(OSError):
                runs = sorted(os.scandir(runs_dir), key=lambda e: e.stat().st_mtime)
                if runs:
                    lines.append(f"run: {runs[-1].path} (kubelearn runs --dir {runs_dir} show "
                                 f"{runs[-1].name})")
        exits = ", ".join(f"{r.name}={r.exit_code}" for r in self.replicas)
        lines.append(f"replica exit codes: {exits}; restarts: {self.total_restarts}")
        return lines


#: A file kubelearn puts in every model directory it creates: only a directory holding it
#: is ever deleted (``--fresh``).
MARKER_NAME = ".kubelearn-model-dir"
MARKER_TEXT = "A model directory made by kubelearn local; --fresh may delete it.\n"


class RefusedDelete(ValueError):
    """A directory --fresh must not delete; the message says why."""


def one_line(exc: BaseException) -> str:
    """An error message as one line of stderr, whatever the input put in it."""
    return str(exc).replace("\r", "\\r").replace("\n", "\\n")


def _is_within(path: str, other: str) -> bool:
    """Whether ``other`` is ``path`` or inside it."""
    return other == path or other.startswith(path.rstrip(os.sep) + os.sep)


def check_deletable(model_dir: str, manifest: str) -> None:
    """Refuses to delete what kubelearn did not create, or what holds the user's files.

    Raises:
      RefusedDelete: when ``model_dir`` is a symbolic link, lacks kubelearn's marker, or is
        (or contains) the working directory, the manifest, the home directory or ``/``.
    """
    if os.path.islink(model_dir):
        raise RefusedDelete(f"--fresh: {model_dir} is a symbolic link; not deleting it")
    real = os.path.realpath(model_dir)
    protected = {"/": "/", os.path.realpath(os.getcwd()): "the working directory",
                 os.path.realpath(os.path.expanduser("~")): "the home directory",
                 os.path.realpath(manifest): "the manifest"}
    for path, what in protected.items():
        if _is_within(real, path):
            raise RefusedDelete(f"--fresh: {model_dir} is or contains {what}; not deleting it")
    if not os.path.isfile(os.path.join(real, MARKER_NAME)):
        raise RefusedDelete(f"--fresh: {model_dir} was not created by kubelearn (no "
                            f"{MARKER_NAME} in it); not deleting it")


def prepare_model_dir(model_dir: str, manifest: str, fresh: bool) -> None:
    """Creates ``model_dir`` (marked as kubelearn's) or, with ``fresh``, empties a directory
    kubelearn created before.

    On an object store (a URL), the same with objects: the marker is an object under the
    prefix, written when nothing is there yet, and ``fresh`` removes every object under a
    prefix that holds the marker."""
    if fs.is_remote(model_dir):
        marker = fs.join(model_dir, MARKER_NAME)
        if fresh and fs.exists(model_dir):
            if not fs.exists(marker):
                raise RefusedDelete(f"--fresh: {model_dir} was not created by kubelearn (no "
                                    f"{MARKER_NAME} in it); not deleting it")
            fs.remove_tree(model_dir)
        if not fs.exists(model_dir):
            fs.write_text(marker, MARKER_TEXT)
        return
    if fresh and os.path.lexists(model_dir):
        check_deletable(model_dir, manifest)
        shutil.rmtree(model_dir)
    if not os.path.exists(model_dir) or (os.path.isdir(model_dir)
                                         and not os.listdir(model_dir)):
        os.makedirs(model_dir, exist_ok=True)
        with open(os.path.join(model_dir, MARKER_NAME), "w", encoding="utf-8") as handle:
            handle.write(MARKER_TEXT)
    elif not os.path.isdir(model_dir):
        raise NotADirectoryError(f"model dir {model_dir} is not a directory")


def local_command(args: argparse.Namespace) -> int:
    """The ``kubelearn local`` command."""
    try:
        encrypt_wire = wire_encrypted()
    except ValueError as exc:  # refused as the operator refuses it
        print(f"kubelearn local: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.max_replicas is not None and args.max_replicas < 1:
        print(f"kubelearn local: error: --max-replicas must be >= 1, got {args.max_replicas}",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        manifest, spec = load_manifest(args.manifest)
        own_commands(spec)
    except SpecError as exc:
        print(f"kubelearn local: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    limit, how = replica_limit(args.max_replicas)
    if spec.total_replicas > limit:
        print(f"kubelearn local: error: spec.replicas: {spec.total_replicas} replicas in all; "
              f"kubelearn local starts at most {limit}: {how}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        import zmq  # noqa: F401  (the parameter servers need it)
    except ImportError:
        if spec.count("ps"):
            print("kubelearn local: error: parameter servers need pyzmq: "
                  "pip install 'kubelearn[distributed]'", file=sys.stderr)
            return EXIT_BAD_INPUT
    ephemeral = spec.storage.ephemeral and not args.model_dir
    given = args.model_dir or spec.model_dir
    if given and not ephemeral and fs.is_url(given):
        try:
            source = "--model-dir" if args.model_dir else "spec.modelDir"
            fs.check(given, source)
            fs.probe(given, source)
            given = fs.local_path(given)  # a file:// URL is the path it names
        except fs.ModelDirError as exc:
            print(f"kubelearn local: error: {one_line(exc)}", file=sys.stderr)
            return EXIT_MODEL_DIR_UNUSABLE
    try:
        if ephemeral:  # as in a pod: a directory of this run's own, gone at its end
            model_dir = tempfile.mkdtemp(prefix=f"kubelearn-{spec.name}-")
        elif given and fs.is_url(given):  # an object store, kept as a claim is
            model_dir = given
        else:  # as a claim: kept, and the next run resumes from its checkpoints
            model_dir = os.path.abspath(given or os.path.join("output", spec.name))
        prepare_model_dir(model_dir, args.manifest, args.fresh)
        # Refused here, once, rather than by every replica: an index or a checkpoint
        # kubelearn did not write (binary bytes, a symbolic link out of the directory...).
        checkpoints.checkpoint_paths(model_dir)
    except (OSError, ValueError) as exc:
        print(f"kubelearn local: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    console = Console(sys.stdout, progress_tty=sys.stdout.isatty() and not args.no_progress)
    launcher: Launcher | None = None
    pending: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        if launcher is None:
            pending.append(signum)  # the launcher stops before it starts anything
        else:
            launcher.request_stop(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        launcher = Launcher(spec, model_dir, console, manifest=manifest,
                            encrypt_wire=encrypt_wire, max_replicas=limit)
        if pending:
            launcher.request_stop(pending[0])
        code = launcher.run()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if launcher is not None:
            launcher.close()
    outcome = {EXIT_OK: "Succeeded", EXIT_FAILED: "Failed"}.get(code, "Stopped")
    console.line(f"Experiment {spec.name} {outcome}")
    for line in launcher.summary():
        console.line(f"  {line}")
    if ephemeral:
        shutil.rmtree(model_dir, ignore_errors=True)
        console.line(f"  model dir {model_dir} removed (spec.storage.ephemeral)")
    return code


DESCRIPTION = ("Starts one process per replica of the manifest with TF_CONFIG on 127.0.0.1, "
               "streams their logs and exits with the experiment's outcome (0 succeeded, "
               "1 failed, 2 invalid manifest or more replicas than --max-replicas, 3 a model "
               "directory URL this machine cannot use: unknown scheme or filesystem package "
               "not installed).")


def add_parser(subparsers: Any) -> None:
    """Registers ``kubelearn local`` with the CLI."""
    parser = subparsers.add_parser("local", description=DESCRIPTION, help="run an Experiment "
                                   "manifest as local processes (no cluster)")
    parser.add_argument("manifest", help="Experiment YAML (the file you would kubectl apply)")
    parser.add_argument("--model-dir", help="checkpoints and results: a path or a URL such as "
                                            "s3://bucket/prefix (default: spec.modelDir "
                                            "or ./output/<name>)")
    parser.add_argument("--fresh", action="store_true",
                        help="delete the model dir first instead of resuming from it (only "
                             "a directory kubelearn local created)")
    parser.add_argument("--no-progress", action="store_true",
                        help="plain progress lines even on a terminal")
    parser.add_argument("--max-replicas", type=int, metavar="N",
                        help=f"start at most N replicas (default {DEFAULT_MAX_REPLICAS}); a "
                             "manifest asking for more is refused, and so is one the "
                             "machine's open-file or process limit leaves no room for")
    parser.set_defaults(func=local_command)


def scale_command(args: argparse.Namespace) -> int:
    """The ``kubelearn scale`` command: asks the ``kubelearn local`` running on a model dir
    for another worker count (``kubectl scale exp/NAME --replicas=N`` without a cluster)."""
    try:
        model_dir = fs.local_path(args.model_dir)  # a file:// URL is the path it names
    except fs.ModelDirError as exc:
        print(f"kubelearn scale: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.replicas < 0:
        print(f"kubelearn scale: error: --replicas must be >= 0, got {args.replicas}",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    if not fs.is_url(model_dir):
        model_dir = os.path.abspath(model_dir)
        if not os.path.isfile(os.path.join(model_dir, MARKER_NAME)):
            print(f"kubelearn scale: error: {model_dir} is not the model dir of a kubelearn "
                  f"local run (no {MARKER_NAME} in it)", file=sys.stderr)
            return EXIT_BAD_INPUT
    request = {"replicas": args.replicas, "time": time.time()}
    try:
        fs.write_text(fs.join(model_dir, SCALE_FILE), json.dumps(request), durable=False)
    except OSError as exc:
        print(f"kubelearn scale: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"Asked the kubelearn local running on {model_dir} for {args.replicas} workers; "
          "its log says whether they run (or why not).")
    return EXIT_OK


def add_scale_parser(subparsers: Any) -> None:
    """Registers ``kubelearn scale`` with the CLI."""
    parser = subparsers.add_parser(
        "scale", help="change the worker count of a running kubelearn local",
        description="Asks the kubelearn local running on MODEL_DIR (printed when it starts) "
                    "to run N workers, as kubectl scale exp/NAME --replicas=N does on a "
                    "cluster: new workers join the training, the highest-index ones stop, "
                    "nothing else restarts. Refused (in its log) for synchronous training "
                    "and for counts the manifest's rules refuse. Exit codes: 0 asked, "
                    "2 invalid arguments.")
    parser.add_argument("model_dir", metavar="MODEL_DIR",
                        help="the model dir of the running kubelearn local")
    parser.add_argument("--replicas", type=int, required=True, help="worker count")
    parser.set_defaults(func=scale_command)
