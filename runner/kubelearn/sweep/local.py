"""``kubelearn sweep local sweep.yaml``: run a Sweep's trials as local processes.

Each trial is the template Experiment with its hparams merged (``SweepSpec.trial_manifest``),
written next to its model directory and run by ``kubelearn local`` in a child process, so a
trial runs exactly as ``kubelearn local <trial>.yaml`` would, and can be re-run so by hand.
Up to ``parallelism`` trials run at once; :class:`kubelearn_search.Search` picks each
trial's hparams, prunes (early stopping) and says when the sweep is over, as the operator's
controller will. A trial's objective is its chief's final evaluation (the last line of
``<model dir>/eval/results.jsonl``), whose earlier lines are its intermediate values.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, TextIO

import yaml

from kubelearn import bounded_input, fs, hooks
from kubelearn import local as local_launcher
from kubelearn_spec import sweep_model
from kubelearn_spec.names import SWEEP_KIND
from kubelearn_spec.sweep_model import FAILED, PRUNED, RUNNING, STOPPED, SUCCEEDED, SweepSpec
from kubelearn_spec.validate import SpecError

if TYPE_CHECKING:
    from kubelearn_search import Search, TrialRecord

PROG = "kubelearn sweep local"
EXIT_OK = 0
EXIT_NONE_SUCCEEDED = 1
EXIT_BAD_INPUT = local_launcher.EXIT_BAD_INPUT
#: A stopped trial's ``kubelearn local`` gets its own grace to stop its replicas, and some.
STOP_GRACE_SECS = local_launcher.TERMINATE_GRACE_SECS + 5.0
POLL_SECS = 0.2
#: How often the running trials' evaluations are read for early stopping.
PRUNE_POLL_SECS = 1.0
#: How much of a failed trial's log is read for the launcher's verdict.
LOG_TAIL_BYTES = 64 * 1024
RESULTS = os.path.join("eval", "results.jsonl")
#: How much of the end of a trial's results file is read (its last evaluation, and as many
#: before it as fit: far more than a trial writes).
MAX_RESULTS_BYTES = 4 << 20


# -- reading a trial's model directory (pure) ---------------------------------------------
def read_evaluations(text: str) -> list[dict[str, Any]]:
    """The evaluations of a results file, oldest first; a line being written (or cut) is
    skipped, as the file grows while the trial runs, and so is any other line that is not
    a JSON object nested within :data:`kubelearn.bounded_input.MAX_DEPTH` levels."""
    evaluations = []
    for line in text.splitlines():
        try:
            value = bounded_input.load_json(line, RESULTS)
        except ValueError:
            continue
        if isinstance(value, dict):
            evaluations.append(value)
    return evaluations


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:  # an integer beyond any double: JSON has them
        return None


def objective_of(evaluations: Sequence[Mapping[str, Any]], metric: str
                 ) -> tuple[float | None, str]:
    """The objective of a succeeded trial: ``metric`` of its final evaluation, or None and
    why not (no evaluation, no such metric, not a finite number), since a trial without
    a usable objective value tells the search nothing and counts as failed."""
    if not evaluations:
        return None, f"no final evaluation ({RESULTS} is missing or empty)"
    final = evaluations[-1]
    if metric not in final:
        known = ", ".join(sorted(final)) or "none"
        return None, f"the final evaluation has no metric {metric!r} (it has: {known})"
    value = sweep_model.finite(final[metric])
    if value is None:
        return None, sweep_model.not_finite(f"the final evaluation's {metric}", final[metric])
    return value, ""


def intermediate_of(evaluations: Sequence[Mapping[str, Any]], metric: str) -> dict[int, float]:
    """``metric`` of every evaluation by global step (the pruner's intermediate values);
    evaluations without a step or a numeric value are left out."""
    values: dict[int, float] = {}
    for evaluation in evaluations:
        step = sweep_model.finite(evaluation.get("global_step"))
        value = _number(evaluation.get(metric))
        if step is not None and value is not None:
            values[int(step)] = value
    return values


def failure_reason(log: str, experiment: str, code: int) -> str:
    """Why a trial's ``kubelearn local`` failed, from its log: the launcher's own verdict
    (``Experiment <name> failed: ...``) or one-line error, else the exit code."""
    verdicts = (f"Experiment {experiment} failed: ", "kubelearn local: error: ")
    for line in reversed(log.splitlines()):
        for verdict in verdicts:
            if line.startswith(verdict):
                return line[len(verdict):].strip()
    return f"kubelearn local exited with code {code}"


# -- trials --------------------------------------------------------------------------------
@dataclass
class Trial:
    """One trial: its process while it runs, and what is known of it."""

    number: int
    name: str
    hparams: dict[str, Any]
    model_dir: str
    manifest: str
    log: str
    state: str = RUNNING
    objective: float | None = None
    intermediate: dict[int, float] = field(default_factory=dict)
    steps: int | None = None
    reason: str = ""
    seconds: float = 0.0
    process: subprocess.Popen[bytes] | None = None
    started: float = field(default_factory=time.monotonic)
    stop_as: str | None = None  # the state it ends in once stopped (pruned or stopped)
    stop_sent: float | None = None

    def record(self) -> TrialRecord:
        from kubelearn_search import TrialRecord

        # A stopped trial is recorded only once the sweep is over.
        return TrialRecord(self.number, dict(self.hparams),
                           sweep_model.search_state(self.state), self.objective,
                           dict(self.intermediate))

    def facts(self) -> dict[str, Any]:
        return {"number": self.number, "name": self.name, "state": self.state,
                "hparams": self.hparams, "objective": self.objective, "steps": self.steps,
                "reason": self.reason, "seconds": round(self.seconds, 3),
                "model_dir": self.model_dir, "log": self.log}


def read_trial(trial: Trial, metric: str,
               complaints: bounded_input.Complaints | None = None) -> list[dict[str, Any]]:
    """Refreshes the trial's intermediate values and steps from its model directory and
    returns its evaluations (from at most the last MAX_RESULTS_BYTES of its results). A
    file there that cannot be read (not a regular file, not a progress report) is left
    aside and told to ``complaints``."""
    evaluations: list[dict[str, Any]] = []
    results = os.path.join(trial.model_dir, RESULTS)
    try:
        size, data = fs.read_tail(results, MAX_RESULTS_BYTES)
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        if complaints is not None:
            complaints.bad(results, f"{local_launcher.one_line(exc)}; ignored")
    else:
        if size > MAX_RESULTS_BYTES:
            data = data.split(b"\n", 1)[-1]  # the first line is cut
        evaluations = read_evaluations(data.decode("utf-8", "replace"))
    trial.intermediate = intermediate_of(evaluations, metric)
    try:
        progress = hooks.read_progress(trial.model_dir)
    except (OSError, ValueError) as exc:
        if complaints is not None:
            complaints.bad(os.path.join(trial.model_dir, hooks.PROGRESS_FILE),
                           f"{local_launcher.one_line(exc)}; ignored")
    else:
        if progress is not None:
            trial.steps = progress["global_step"]
    if trial.steps is None and trial.intermediate:
        trial.steps = max(trial.intermediate)
    return evaluations


# -- output (pure) -------------------------------------------------------------------------
def _value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def format_table(trials: Sequence[Mapping[str, Any]], parameters: Sequence[str], metric: str,
                 best: int | None) -> list[str]:
    """The trials as aligned text columns: number, name, state, each hparam, the
    objective and the steps; ``*`` marks the best trial."""
    header = ["", "#", "name", "state", *parameters, metric, "steps"]
    rows = [["*" if t["number"] == best else "", str(t["number"]), t["name"], t["state"],
             *(_value(t["hparams"].get(p)) for p in parameters), _value(t["objective"]),
             _value(t["steps"])] for t in sorted(trials, key=lambda t: t["number"])]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    numeric = {1, len(header) - 2, len(header) - 1}
    lines = []
    for row in [header, *rows]:
        cells = [cell.rjust(w) if i in numeric else cell.ljust(w)
                 for i, (cell, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    return lines


# -- the sweep -----------------------------------------------------------------------------
class SweepRunner:
    """Starts, polls and stops the trials of one Sweep until the search says it is done."""

    def __init__(self, spec: SweepSpec, search: Search, directory: str, out: TextIO,
                 python: str = sys.executable):
        self.spec = spec
        self.search = search
        self.directory = directory
        self.out = out
        self.python = python
        self.trials: dict[int, Trial] = {}
        self.stop_reason = ""
        self._signal: int | None = None
        self._last_prune_poll = 0.0
        self._complaints = bounded_input.Complaints(lambda text: self.say(f"warning: {text}"))

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def request_stop(self, signum: int) -> None:
        self._signal = signum

    @property
    def signal(self) -> int | None:
        return self._signal

    def history(self) -> list[TrialRecord]:
        return [t.record() for t in self.trials.values()]

    def running(self) -> list[Trial]:
        return [t for t in self.trials.values() if t.state == RUNNING]

    # -- processes -------------------------------------------------------------------
    def command(self, trial: Trial) -> list[str]:
        """The trial's ``kubelearn local``, on its own model directory."""
        return [self.python, "-m", "kubelearn.cli", "local", trial.manifest,
                "--model-dir", trial.model_dir, "--no-progress"]

    def start(self, number: int) -> None:
        hparams = self.search.suggest(number, self.history())
        name = self.spec.trial_name(number)
        trial = Trial(number, name, hparams, model_dir=os.path.join(self.directory, name),
                      manifest=os.path.join(self.directory, f"{name}.yaml"),
                      log=os.path.join(self.directory, f"{name}.log"))
        with open(trial.manifest, "w", encoding="utf-8") as handle:
            yaml.safe_dump(self.spec.trial_manifest(number, hparams), handle, sort_keys=False)
        self.trials[number] = trial
        with open(trial.log, "wb") as log:
            try:
                # Its own session: a Ctrl-C reaches the sweep only, which stops the trials
                # itself; and the trial dies with the sweep, as replicas with kubelearn local.
                trial.process = subprocess.Popen(
                    self.command(trial), stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                    start_new_session=True, preexec_fn=local_launcher._die_with_parent)
            except OSError as exc:
                self._finish(trial, FAILED, f"could not start: {exc}")
                return
        self.say(f"trial {name} started: {sweep_model.hparams_text(hparams)} (log {trial.log})")

    def stop(self, trial: Trial, state: str, reason: str) -> None:
        """Asks the trial to stop (SIGTERM: kubelearn local stops its replicas); it is
        killed if still there after STOP_GRACE_SECS."""
        if trial.stop_as is not None or trial.process is None:
            return
        trial.stop_as, trial.reason = state, reason
        trial.stop_sent = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            trial.process.send_signal(signal.SIGTERM)

    def _kill_late(self) -> None:
        for trial in self.running():
            if trial.stop_sent is not None and trial.process is not None \
                    and time.monotonic() - trial.stop_sent > STOP_GRACE_SECS:
                with contextlib.suppress(ProcessLookupError):
                    trial.process.kill()

    def stop_all(self, state: str, reason: str) -> None:
        """Stops every running trial and waits until each is gone."""
        for trial in self.running():
            self.stop(trial, state, reason)
        while self.running():
            self._reap()
            self._kill_late()
            time.sleep(POLL_SECS)

    # -- outcomes --------------------------------------------------------------------
    def _finish(self, trial: Trial, state: str, reason: str = "") -> None:
        trial.state, trial.reason = state, reason
        trial.seconds = time.monotonic() - trial.started
        if state == SUCCEEDED and trial.objective is not None:
            result = sweep_model.metric_text(self.spec.objective.metric, trial.objective)
        else:
            result = reason
        self.say(f"trial {trial.name} {state}: {result} (step {_value(trial.steps)}, "
                 f"{trial.seconds:.1f}s)")

    def _reap(self) -> None:
        metric = self.spec.objective.metric
        for trial in self.running():
            assert trial.process is not None
            code = trial.process.poll()
            if code is None:
                continue
            code = 128 - code if code < 0 else code
            evaluations = read_trial(trial, metric, self._complaints)
            if code == 0:
                trial.objective, why = objective_of(evaluations, metric)
                self._finish(trial, sweep_model.final_state(trial.objective), why)
            elif trial.stop_as is not None:
                self._finish(trial, trial.stop_as, trial.reason)
            else:
                log = b""
                with contextlib.suppress(OSError):
                    log = fs.read_tail(trial.log, LOG_TAIL_BYTES)[1]
                self._finish(trial, FAILED, failure_reason(
                    log.decode("utf-8", "replace"), trial.name, code))

    def _prune(self) -> None:
        """Stops the running trials the pruner gives up on, given their evaluations so
        far (read anew about every PRUNE_POLL_SECS)."""
        if self.spec.early_stopping is None \
                or time.monotonic() - self._last_prune_poll < PRUNE_POLL_SECS:
            return
        self._last_prune_poll = time.monotonic()
        for trial in self.running():
            if trial.stop_as is not None:
                continue
            before = dict(trial.intermediate)
            read_trial(trial, self.spec.objective.metric, self._complaints)
            if trial.intermediate and trial.intermediate != before \
                    and self.search.should_prune(trial.record(), self.history()):
                self.stop(trial, PRUNED, sweep_model.prune_reason(
                    self.spec.objective.metric, trial.intermediate,
                    self.spec.early_stopping.algorithm))

    def run(self) -> None:
        """Runs trials until the search is done or a signal asks to stop."""
        while True:
            if self._signal is not None:
                self.stop_reason = f"Stopped by signal {self._signal}"
                self.stop_all(STOPPED, self.stop_reason)
                return
            self._reap()
            self._kill_late()
            self._prune()
            done, reason = self.search.done(self.history())
            if done:
                self.stop_reason = reason
                self.stop_all(STOPPED, sweep_model.sweep_ended(reason))
                return
            while (number := self.search.next_number(self.history())) is not None:
                self.start(number)
            time.sleep(POLL_SECS)

    # -- the end ---------------------------------------------------------------------
    def best(self) -> Trial | None:
        record = self.search.best(self.history())
        return None if record is None else self.trials[record.number]

    def facts(self) -> dict[str, Any]:
        best = self.best()
        trials = [self.trials[n].facts() for n in sorted(self.trials)]
        return {"sweep": self.spec.name, "seed": self.search.seed, "dir": self.directory,
                "objective": {"metric": self.spec.objective.metric,
                              "direction": self.spec.objective.direction},
                "parameters": [{"name": p.name, "type": p.type, "log": p.log}
                               for p in self.spec.parameters],
                "stop_reason": self.stop_reason,
                "best": None if best is None else best.number,
                SUCCEEDED: sum(t["state"] == SUCCEEDED for t in trials),
                "trials": trials}


def summary(facts: Mapping[str, Any], parameters: Sequence[str]) -> list[str]:
    """The sweep's table, the failed trials' reasons, the stop reason and the best trial."""
    lines = format_table(facts["trials"], parameters, facts["objective"]["metric"],
                         facts["best"])
    lines += [f"  {t['name']}: {t['reason']}" for t in facts["trials"]
              if t["state"] != SUCCEEDED and t["reason"]]
    counts = {}
    for t in facts["trials"]:
        counts[t["state"]] = counts.get(t["state"], 0) + 1
    lines.append(f"Sweep {facts['sweep']} finished: {facts['stop_reason']} ("
                 + ", ".join(f"{n} {s}" for s, n in counts.items()) + ")")
    best = next((t for t in facts["trials"] if t["number"] == facts["best"]), None)
    if best is None:
        lines.append("no trial succeeded")
    else:
        result = sweep_model.metric_text(facts["objective"]["metric"], best["objective"])
        lines.append(f"best: {best['name']} {result} ({sweep_model.hparams_text(best['hparams'])}; "
                     f"model dir {best['model_dir']})")
    return lines


# -- the command ---------------------------------------------------------------------------
def load_sweep(path: str) -> SweepSpec:
    """Reads and checks a Sweep manifest (one Sweep, alone or among other documents).

    Raises:
      SpecError: naming the field at fault, or the file's problem.
    """
    try:
        documents = bounded_input.read_yaml_all(path)
    except bounded_input.InputError as exc:
        raise SpecError("", str(exc)) from None
    if len(documents) == 1:
        return sweep_model.parse_sweep(documents[0])
    sweeps = [d for d in documents if isinstance(d, Mapping) and d.get("kind") == SWEEP_KIND]
    if len(sweeps) != 1:
        raise SpecError(path, f"must hold exactly one Sweep, found {len(sweeps)}")
    return sweep_model.parse_sweep(sweeps[0])


def prepare_directory(directory: str, manifest: str, fresh: bool) -> None:
    """Makes the sweep directory (marked as kubelearn's, so ``--fresh`` may empty it) and
    refuses one that holds an earlier sweep's trials: a trial must never resume another
    trial's checkpoints.

    Raises:
      ValueError: trials already there without ``fresh``, or a directory --fresh must not
        delete.
    """
    local_launcher.prepare_model_dir(directory, manifest, fresh)
    leftovers = sorted(set(os.listdir(directory)) - {local_launcher.MARKER_NAME})
    if leftovers:
        raise ValueError(f"sweep dir {directory} already holds {leftovers[0]} (an earlier "
                         f"sweep's trials); pass --fresh to delete them, or --dir")


def _error(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def sweep_local_command(args: argparse.Namespace) -> int:
    """The ``kubelearn sweep local`` command."""
    try:
        spec = load_sweep(args.manifest)
    except SpecError as exc:
        return _error(local_launcher.one_line(exc))
    try:
        from kubelearn_search import Search
    except ImportError:
        return _error("the hyper-parameter search needs optuna: pip install 'kubelearn[sweep]'")
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    try:
        given = fs.local_path(args.dir) if args.dir else None  # file:///p is the path /p
    except fs.ModelDirError as exc:
        return _error(f"--dir: {exc}")
    if given and fs.is_url(given):
        return _error(f"--dir {given}: the sweep directory must be a local path")
    directory = os.path.abspath(given or os.path.join("output", spec.name))
    try:
        prepare_directory(directory, args.manifest, args.fresh)
    except (OSError, ValueError) as exc:
        return _error(local_launcher.one_line(exc))
    search = Search(spec, seed=seed)
    out = sys.stderr if args.json else sys.stdout
    runner = SweepRunner(spec, search, directory, out)
    runner.say(f"Sweep {spec.name}: {spec.algorithm} search, up to {spec.max_trials} trials, "
               f"{spec.parallelism} at a time, seed {search.seed}; dir {directory}")
    previous = {s: signal.signal(s, lambda signum, _frame: runner.request_stop(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        runner.run()
    finally:
        runner.stop_all(STOPPED, "the sweep was interrupted")
        for s, handler in previous.items():
            signal.signal(s, handler)
    facts = runner.facts()
    with open(os.path.join(directory, "sweep.json"), "w", encoding="utf-8") as handle:
        json.dump(facts, handle, indent=2)
    parameters = [p.name for p in spec.parameters]
    if args.json:
        json.dump(facts, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print(summary(facts, parameters), sys.stdout)
    if runner.signal is not None:
        return 128 + runner.signal
    succeeded = any(t["state"] == SUCCEEDED for t in facts["trials"])
    return EXIT_OK if succeeded else EXIT_NONE_SUCCEEDED


def _print(lines: Sequence[str], out: IO[str]) -> None:
    for line in lines:
        out.write(line + "\n")
    out.flush()


DESCRIPTION = ("Runs the trials of a Sweep manifest as local processes, each an Experiment run "
               "by kubelearn local in its own model directory, up to spec.parallelism at once, "
               "and prints a table of the trials. Exit codes: 0 at least one trial succeeded, "
               "1 none did, 2 invalid manifest or sweep directory, or optuna missing.")


def add_action(actions: Any) -> None:
    """Registers ``kubelearn sweep local``."""
    parser = actions.add_parser("local", description=DESCRIPTION,
                                help="run a Sweep manifest's trials as local processes")
    parser.add_argument("manifest", help="Sweep YAML (the file you would kubectl apply)")
    parser.add_argument("--dir", help="the sweep directory: one model directory per trial, "
                                      "with its manifest and log (default: ./output/<name>)")
    parser.add_argument("--fresh", action="store_true",
                        help="delete an earlier sweep's directory first (only one kubelearn "
                             "made)")
    parser.add_argument("--seed", type=int, help="the search's seed when spec.seed is not set "
                                                 "(default: a random one, printed)")
    parser.add_argument("--json", action="store_true",
                        help="print the outcome as JSON (progress lines go to stderr)")
    parser.set_defaults(func=sweep_local_command)
