"""``kubelearn run``: what every pod of an experiment runs.

Exit codes are a contract with the operator's ExitCode restart policy:

* 0: success;
* 2: bad input (malformed TF_CONFIG or hparams, an experiment function that cannot be
  imported, that refuses its hparams with a ValueError, TypeError or KeyError while it builds
  the Experiment, or that does not build one, an unknown schedule, a checkpoint or
  checkpoint index in the model directory that kubelearn did not write: a symbolic link, a
  FIFO, binary bytes, an entry outside the directory): one line on stderr, no traceback,
  never worth a restart;
* 1: an error while training (with its traceback);
* 3: a model directory URL this process cannot use (an unknown scheme, a known one whose
  filesystem package is not installed, e.g. gs:// without gcsfs, or a store that refuses a
  write: no such bucket, credentials that cannot write): one line on stderr naming
  ``--model-dir`` or ``KUBELEARN_MODEL_DIR`` (spec.modelDir), never worth a restart;
* 128+N: stopped by signal N (SIGTERM is handled and exits with 143, also as a container's
  PID 1; SIGKILL and others kill the process, which a shell and the kubelet report as 128+N).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import ipaddress
import logging
import os
import re
import signal
import sys
import traceback
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any

from kubelearn_spec.contract import (
    ENV_BIND_HOST,
    ENV_CLUSTER_FILE,
    ENV_EXPERIMENT_FN,
    ENV_HPARAMS,
    ENV_MODEL_DIR,
    ENV_PROGRESS_PORT,
    ENV_SCHEDULE,
    EXIT_MODEL_DIR_UNUSABLE,
    MAX_CLUSTER_FILE_BYTES,
)

EXIT_OK = 0
EXIT_TRAINING_ERROR = 1
EXIT_BAD_INPUT = 2

_HOST_RE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?"
                      r"(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*\.?")


class BadInput(Exception):
    """Input that no retry can fix; reported as one line with exit code 2."""


class UnusableModelDir(BadInput):
    """A model directory URL this process cannot use; one line with exit code 3."""


def load_experiment_fn(spec: str) -> Callable[..., Any]:
    """Imports ``module:function``.

    Raises:
      BadInput: for a malformed spec, a module that cannot be imported, or a missing or
        non-callable attribute.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise BadInput(f"experiment function {spec!r} must have the form 'module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BadInput(f"cannot import module {module_name!r} of experiment function "
                       f"{spec!r}: {exc}") from None
    except Exception as exc:  # the module itself fails as it is imported: no retry helps
        raise BadInput(f"importing module {module_name!r} of experiment function {spec!r} "
                       f"failed: {type(exc).__name__}: {_one_line(exc)}") from None
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise BadInput(f"module {module_name!r} has no attribute {attr!r} "
                           f"(experiment function {spec!r})") from None
    if not callable(target):
        raise BadInput(f"experiment function {spec!r} is not callable")
    return target


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "..."


def check_environment(environ: Mapping[str, str]) -> None:
    """Refuses environment input no parser should see: nesting too deep for TF_CONFIG or
    hparams JSON, a Curve key that is not 64 hex digits, a progress port, bind host or ps
    memory limit that does not parse.

    Raises:
      BadInput: naming the variable.
    """
    from kubelearn import bounded_input
    from kubelearn.distributed import curve, memory

    for name in ("TF_CONFIG", ENV_HPARAMS):
        try:
            bounded_input.check_json_depth(environ.get(name) or "", name)
        except ValueError as exc:
            raise BadInput(str(exc)) from None
    try:
        curve.key_from_env(environ)
        memory.limit_from_env(environ)
    except ValueError as exc:
        raise BadInput(str(exc)) from None
    port = environ.get(ENV_PROGRESS_PORT, "").strip()
    if port and not (port.isascii() and port.isdigit() and int(port) <= 65535):
        raise BadInput(f"{ENV_PROGRESS_PORT} must be a port number 0-65535 (0: off), "
                       f"got {port[:40]!r}")
    bind_host = environ.get(ENV_BIND_HOST, "").strip()
    if bind_host:
        try:
            ipaddress.ip_address(bind_host.strip("[]"))
        except ValueError:
            raise BadInput(f"{ENV_BIND_HOST} must be an IP address, got {bind_host[:80]!r}"
                           ) from None


def expand_cluster_file(environ: MutableMapping[str, str]) -> None:
    """Puts the cluster of the file ``KUBELEARN_CLUSTER_SPEC_FILE`` names into ``TF_CONFIG``
    (which then holds only the task), as the kubelet expands the cluster's reference in a
    pod: the experiment function, and anything it starts, sees the whole TF_CONFIG.

    Raises:
      BadInput: naming the variable, for a file that cannot be read or is not a JSON object
        of addresses, or a TF_CONFIG that has a cluster already.
    """
    from kubelearn import bounded_input
    from kubelearn_spec.tfconfig import with_cluster

    path = environ.get(ENV_CLUSTER_FILE, "")
    if not path:
        return
    try:
        text = bounded_input.read_text(path, MAX_CLUSTER_FILE_BYTES)
        bounded_input.check_json_depth(text, path)
        bounded_input.check_json_depth(environ.get("TF_CONFIG") or "", "TF_CONFIG")
        environ["TF_CONFIG"] = with_cluster(environ.get("TF_CONFIG", ""), text)
    except ValueError as exc:
        raise BadInput(f"bad {ENV_CLUSTER_FILE}: {_one_line(exc)}") from None
    del environ[ENV_CLUSTER_FILE]


def check_cluster_addresses(cluster: Mapping[str, Sequence[str]]) -> None:
    """Every ``host:port`` of the cluster spec parses: a host name or IP and a port 1-65535.

    Raises:
      BadInput: naming the job and the address.
    """
    for job, addresses in cluster.items():
        for address in addresses:
            host, _, port = address.rpartition(":")
            bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
            valid_host = bool(_HOST_RE.fullmatch(bare))
            if not valid_host:
                try:
                    ipaddress.ip_address(bare)
                    valid_host = True
                except ValueError:
                    pass
            if not valid_host or not (port.isascii() and port.isdigit()
                                      and 1 <= int(port) <= 65535):
                raise BadInput(f"bad TF_CONFIG: cluster.{job} address {address[:200]!r} "
                               f"must be host:port with a port 1-65535")


def check_model_dir(model_dir: str, source: str) -> None:
    """A model directory given as a URL must have a filesystem this process can use.

    Raises:
      UnusableModelDir: naming ``source``, for an unknown scheme, a missing package, or a
        store that refuses a write (no such bucket, credentials that cannot write).
    """
    from kubelearn import fs

    if not fs.is_url(model_dir):
        return
    try:
        fs.check(model_dir, source)
        fs.probe(model_dir, source)
    except fs.ModelDirError as exc:
        raise UnusableModelDir(str(exc)) from None


def build_hparams(env_text: str | None, cli_text: str | None) -> Any:
    """HParams from the environment's JSON (``KUBELEARN_HPARAMS``) overridden by ``--hparams``.

    Raises:
      BadInput: when either cannot be parsed or a value has the wrong type.
    """
    from kubelearn.hparams import HParams

    try:
        hparams = HParams.from_text(env_text or "")
    except (ValueError, TypeError) as exc:
        raise BadInput(f"bad {ENV_HPARAMS}: {_one_line(exc)}") from None
    if cli_text:
        try:
            overrides = HParams.from_text(cli_text)
            for name, value in overrides.values().items():
                if name in hparams:
                    hparams.set_hparam(name, value)
                else:
                    hparams.add_hparam(name, value)
        except (ValueError, KeyError, TypeError) as exc:
            raise BadInput(f"bad --hparams {cli_text[:200]!r}: {_one_line(exc)}") from None
    return hparams


def prepare(args: argparse.Namespace) -> tuple[Callable[..., Any], Any, Any, str | None]:
    """Checks every input before anything runs; returns (fn, run_config, hparams, schedule).

    Raises:
      BadInput: for anything wrong with the inputs.
    """
    from kubelearn import bounded_input, checkpoints, fs, learn_runner
    from kubelearn.run_config import RunConfig

    spec = args.experiment_fn or os.environ.get(ENV_EXPERIMENT_FN)
    if not spec:
        raise BadInput(f"no experiment function: pass --experiment-fn module:function or set "
                       f"{ENV_EXPERIMENT_FN}")
    model_dir = args.model_dir or os.environ.get(ENV_MODEL_DIR)
    if not model_dir:
        raise BadInput(f"no model directory: pass --model-dir or set {ENV_MODEL_DIR}")
    check_model_dir(model_dir, "--model-dir" if args.model_dir
                    else f"{ENV_MODEL_DIR} (spec.modelDir)")
    expand_cluster_file(os.environ)
    model_dir = fs.local_path(model_dir)  # a file:// URL is its path (checked just above)
    try:
        checkpoints.checkpoint_paths(model_dir)
    except checkpoints.CheckpointError as exc:
        raise BadInput(str(exc)) from None
    check_environment(os.environ)
    if args.hparams:
        try:
            bounded_input.check_json_depth(args.hparams, "--hparams")
        except ValueError as exc:
            raise BadInput(str(exc)) from None
    try:
        run_config = RunConfig(model_dir=model_dir)
    except (ValueError, TypeError, RecursionError) as exc:
        raise BadInput(f"bad TF_CONFIG: {_one_line(exc)}") from None
    check_cluster_addresses(run_config.cluster_spec.as_dict())
    hparams = build_hparams(os.environ.get(ENV_HPARAMS), args.hparams)
    fn = load_experiment_fn(spec)
    try:
        inspect.signature(fn).bind(run_config, hparams)
    except TypeError:
        raise BadInput(f"experiment function {spec!r} must accept (run_config, hparams)") from None
    except ValueError:
        pass  # builtins without a signature: let the call decide
    schedule = args.schedule or os.environ.get(ENV_SCHEDULE) or None
    if schedule is not None:
        name = learn_runner.SCHEDULE_ALIASES.get(schedule, schedule)
        valid = schedules()
        if name not in valid:
            raise BadInput(f"unknown schedule {schedule!r}; valid schedules: "
                           f"{', '.join(valid)}")
    else:
        try:
            learn_runner._get_default_schedule(run_config)
        except ValueError as exc:
            raise BadInput(f"{exc} (task type {run_config.task_type!r}; pass --schedule)"
                           ) from None
    return fn, run_config, hparams, schedule


class Terminated(BaseException):
    """SIGTERM arrived. Raised in the main thread so that clean-up runs; ends in 128+15.

    A handler is needed: as a container's PID 1 (the pod's command replaces the image's
    entrypoint) a process ignores SIGTERM unless it handles it.
    """

    def __init__(self, signum: int):
        super().__init__(f"terminated by signal {signum}")
        self.signum = signum


def _raise_terminated(signum: int, _frame: Any) -> None:
    raise Terminated(signum)


def _die_of_signal(signum: int) -> None:
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def run_command(args: argparse.Namespace) -> int:
    """The ``kubelearn run`` command."""
    from kubelearn import learn_runner, reporting
    from kubelearn.checkpoints import CheckpointError
    from kubelearn.experiment import Experiment
    from kubelearn.learn_runner import ExperimentFnError, RunConfigNotUsedError

    try:
        fn, run_config, hparams, schedule = prepare(args)
    except BadInput as exc:
        message = str(exc).replace("\r", "\\r").replace("\n", "\\n")
        print(f"kubelearn run: error: {message}", file=sys.stderr)
        return EXIT_MODEL_DIR_UNUSABLE if isinstance(exc, UnusableModelDir) else EXIT_BAD_INPUT
    configure_logging(args.log_level)
    signal.signal(signal.SIGTERM, _raise_terminated)
    label = args.experiment_fn or os.environ.get(ENV_EXPERIMENT_FN)
    resolved = learn_runner.SCHEDULE_ALIASES.get(schedule or "", schedule) or \
        learn_runner._get_default_schedule(run_config)
    reporters: list[Any] = []

    def announced_fn(config: Any, hp: Any) -> Any:
        expected_uid = config.uid()
        try:
            experiment = fn(config, hp)
        except (ValueError, TypeError, KeyError) as exc:
            # Building the Experiment depends only on the hparams and the config: what it
            # refuses (an unknown optimizer, a batch size of 0) no restart can fix.
            raise ExperimentFnError(f"experiment function {label} refused its input: "
                                    f"{type(exc).__name__}: {exc}") from exc
        if isinstance(experiment, Experiment):
            learn_runner.check_run_config_used(experiment, expected_uid)  # before any report
            logging.getLogger("kubelearn").info(
                "Running %s as %s:%d (schedule %s) in %s", label,
                config.task_type or "local", config.task_id, resolved, config.model_dir)
            if config.is_chief and resolved in reporting.TRAINING_SCHEDULES:
                try:
                    reporters.append(reporting.Reporter(config, hp))
                    reporters[0].attach(experiment)
                except Exception as exc:  # reporting must never stop training
                    logging.getLogger("kubelearn").warning("Run tracking is off: %s", exc)
        return experiment

    try:
        result = learn_runner.run(announced_fn, run_config=run_config, hparams=hparams,
                                  schedule=schedule)
    except (ExperimentFnError, RunConfigNotUsedError) as exc:
        print(f"kubelearn run: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        _die_of_signal(signal.SIGINT)
        return 128 + signal.SIGINT
    except Terminated as exc:
        logging.getLogger("kubelearn").warning("Stopping: %s", exc)
        for reporter in reporters:
            reporter.finish(error=exc)
        return 128 + exc.signum
    except CheckpointError as exc:  # put in the model directory while this task ran
        print(f"kubelearn run: error: {_one_line(exc, 1000)}", file=sys.stderr)
        for reporter in reporters:
            reporter.finish(error=exc)
        return EXIT_BAD_INPUT
    except Exception as exc:
        traceback.print_exc()
        for reporter in reporters:
            reporter.finish(error=exc)
        return EXIT_TRAINING_ERROR
    for reporter in reporters:
        reporter.finish(result)
    return EXIT_OK


def schedules() -> list[str]:
    """The Experiment's methods a schedule may name: public, and callable with no argument
    (``extend_train_hooks`` needs its hooks; ``polyaxon`` builds an Experiment)."""
    from kubelearn.experiment import Experiment

    names = []
    for name in dir(Experiment):
        member = inspect.getattr_static(Experiment, name)
        if name.startswith("_") or not inspect.isfunction(member):
            continue  # properties, classmethods and staticmethods are not schedules
        try:
            inspect.signature(member).bind(None)
        except TypeError:
            continue
        names.append(name)
    return names


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "run", help="run one task of an experiment (what each pod runs)",
        description="Reads TF_CONFIG, builds RunConfig and HParams and calls "
                    "learn_runner.run. Exit codes: 0 success, 1 training error, 2 bad input, "
                    "3 a model directory URL this process cannot use, 128+N killed by "
                    "signal N.")
    parser.add_argument("--experiment-fn", metavar="MODULE:FUNCTION",
                        help=f"the experiment function (default ${ENV_EXPERIMENT_FN})")
    parser.add_argument("--schedule", help="Experiment method to run (default: by task type)")
    parser.add_argument("--hparams", metavar="NAME=VALUE,...",
                        help=f"hyper-parameters, overriding ${ENV_HPARAMS} (JSON)")
    parser.add_argument("--model-dir", help=f"checkpoint directory, a path or a URL such as "
                                            f"s3://bucket/prefix (default ${ENV_MODEL_DIR})")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    parser.set_defaults(func=run_command)
