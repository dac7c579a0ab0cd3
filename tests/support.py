"""Helpers shared by the test tiers: a clean environment for runner processes, waiting for a
training step, reading what a run left behind (progress, final evaluation, TensorBoard
events, the series a plot carries) and making em runs. Fixtures are in tests/conftest.py."""

from __future__ import annotations

import contextlib
import json
import os
import re
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RUNNER = str(ROOT / "runner")
#: What a process needs on PYTHONPATH to import the runner from this checkout: the runner
#: and the model it shares with the operator (common/).
RUNNER_PATH = os.pathsep.join([RUNNER, str(ROOT / "common")])


# -- processes ----------------------------------------------------------------------------


def runner_env(drop: tuple[str, ...] = (), **extra: str) -> dict[str, str]:
    """This process's environment without what would make a runner process join another
    cluster (TF_CONFIG, KUBELEARN_*) or anything starting with `drop`, plus `extra`."""
    prefixes = ("TF_CONFIG", "KUBELEARN_", *drop)
    env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    env.update(extra)
    return env


def run_python(code: str, *, cwd: Path | str | None = None, timeout: float = 60,
               **env: str) -> subprocess.CompletedProcess[str]:
    """`python -c code` with the runner importable, its output captured as text."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=RUNNER_PATH, **env), cwd=cwd,
                          timeout=timeout)


class Local:
    """``kubelearn local`` in the background (its own session, stdin closed, the runner of
    this checkout importable), its output collected line by line."""

    def __init__(self, path: Path, model_dir: Path, *, env: dict[str, str] | None = None
                 ) -> None:
        import threading

        self.model_dir = model_dir
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kubelearn.cli", "local", str(path), "--model-dir",
             str(model_dir), "--no-progress"], stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, cwd=path.parent,
            env=env if env is not None else dict(os.environ, PYTHONPATH=RUNNER_PATH),
            start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def said(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def wait_said(self, text: str, timeout: float = 60) -> None:
        from tests.cluster.helpers import wait_for

        wait_for(lambda: self.said(text), timeout,
                 f"{text!r} in the log:\n" + "\n".join(self.lines[-40:]))

    def step(self) -> int:
        return progress(self.model_dir)

    def scale(self, workers: int) -> None:
        out = subprocess.run([sys.executable, "-m", "kubelearn.cli", "scale",
                              str(self.model_dir), "--replicas", str(workers)],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert f"for {workers} workers" in out.stdout

    def finish(self, timeout: float = 240) -> int:
        """Its exit code, once it has exited and its output is read (killed, with its
        process group, if it is still there after ``timeout``)."""
        try:
            code = self.proc.wait(timeout)
        finally:
            self.kill()
        self._reader.join(timeout=10)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            import signal

            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def still_running(proc: subprocess.Popen) -> Callable[[], None]:
    """A check for `wait_step`: fails, with the process's output, once `proc` has exited."""
    def check() -> None:
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"exited with {proc.returncode}:\n{str(out or '')[-3000:]}"
                                 f"{str(err or '')[-3000:]}")
    return check


# -- the API server ----------------------------------------------------------------------


def assert_refused_naming(error: Any, field: str) -> None:
    """The API server's refusal (a kubernetes ApiException) names `field`: as an unknown
    field (strict field validation, 400) or as the first field it names (422; it names a
    schema error before the rules, which it then skips with a cause naming no field)."""
    body = json.loads(error.body)
    causes = (body.get("details") or {}).get("causes") or []
    fields = [f for f in (c.get("field", "") for c in causes) if f and f != "<nil>"]
    message = body.get("message", "")
    assert error.status in (400, 422), error.body
    if error.status == 400:  # strict field validation: an unknown field
        assert f'unknown field "{field}"' in message, message
    else:  # the first field named is the one the model names (it stops at the first)
        assert fields[:1] == [field], error.body


# -- training progress --------------------------------------------------------------------


def progress(model_dir: Path) -> int:
    """The chief's global step from model_dir/progress.json (0 before the first write)."""
    from kubelearn.hooks import PROGRESS_FILE

    try:
        return int(json.loads((Path(model_dir) / PROGRESS_FILE).read_text())["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def wait_step(read: Callable[[], int], step: int, timeout: float = 120,
              check: Callable[[], None] | None = None, what: str = "global step") -> int:
    """Poll `read` until it reaches `step` and return what it read; `check` (e.g.
    `still_running(proc)`) runs between polls and fails the wait early."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = read()
        if now >= step:
            return now
        if check is not None:
            check()
        time.sleep(0.05)
    raise AssertionError(f"{what} {step} not reached in {timeout}s; last {read()}")


def wait_progress(model_dir: Path, step: int, timeout: float = 120,
                  check: Callable[[], None] | None = None) -> int:
    """Wait until the chief's progress.json reports `step` (see `wait_step`)."""
    return wait_step(lambda: progress(model_dir), step, timeout, check)


def final_evaluation(model_dir: Path) -> dict[str, Any]:
    """The last line of model_dir/eval/results.jsonl: the final evaluation."""
    return json.loads((Path(model_dir) / "eval" / "results.jsonl").read_text().splitlines()[-1])


# -- files a run writes -------------------------------------------------------------------


def read_events(logdir: Path) -> list[Any]:
    """TensorBoard events, parsed from TFRecord framing: u64 length, u32 crc, payload,
    u32 crc."""
    from tensorboardX.proto import event_pb2

    events = []
    files = sorted(Path(logdir).glob("events.out.tfevents.*"))
    assert files, f"no event file in {logdir}"
    for path in files:
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            payload = data[offset + 12 : offset + 12 + length]
            offset += 12 + length + 4
            event = event_pb2.Event()
            event.ParseFromString(payload)
            events.append(event)
    return events


def scalars(logdir: Path) -> list[tuple[str, int, float]]:
    """(tag, step, value) of every scalar in the event files of `logdir`."""
    return [
        (value.tag, event.step, value.simple_value)
        for event in read_events(logdir)
        for value in event.summary.value
    ]


def png_chunks(path: Path) -> list[tuple[bytes, bytes]]:
    """Parse a PNG strictly: signature, then chunks with correct CRCs, ending in IEND."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    chunks, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert crc == zlib.crc32(kind + body), f"bad CRC in {kind!r}"
        chunks.append((kind, body))
        offset += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    return chunks


def plotted_series(path: Path) -> list[dict]:
    """The series a plot written by kubelearn.em.plot carries in its PNG text chunk."""
    from kubelearn.em.plot import SERIES_KEY

    texts = {}
    for kind, body in png_chunks(path):
        if kind == b"tEXt":
            key, _, value = body.partition(b"\0")
            texts[key.decode("latin-1")] = value.decode("latin-1")
        elif kind == b"iTXt":
            key, _, rest = body.partition(b"\0")
            # compression flag, method, language tag \0, translated keyword \0, text
            flag, rest = rest[0], rest[2:]
            _, _, rest = rest.partition(b"\0")
            _, _, text = rest.partition(b"\0")
            texts[key.decode("latin-1")] = (zlib.decompress(text) if flag else text).decode()
    return json.loads(texts[SERIES_KEY])


# -- training sessions -------------------------------------------------------------------


def session_model(config: Any) -> Any:
    """A one-variable SGD model for a training session, its model dir and config from
    `config`."""
    import numpy as np

    from kubelearn.estimators.optimizers import get
    from kubelearn.estimators.session import SessionModel

    return SessionModel(
        model_dir=config.model_dir, config=config, dtype=np.dtype(np.float32),
        shapes=lambda n: {"w": (n, 1)}, init_params=lambda n: {"w": np.zeros((n, 1))},
        restore=lambda path, n: None, new_optimizer=lambda: get("SGD", 0.1))


# -- em runs and the runs CLI -------------------------------------------------------------


def make_run(name: str, lr: float, scale: float, labels=("digits",), finish=True) -> Any:
    """An em run with train and val series whose losses scale with `scale`."""
    from kubelearn import em

    run = em.create_run(name=name, hparams={"learning_rate": lr, "batch_size": 32},
                        labels=list(labels), description=f"{name} lr={lr}")
    for step in range(10, 60, 10):
        run.log("train", {"loss": scale / step, "accuracy": step / 100}, step=step)
    for step in (20, 50):
        run.log("val", {"loss": 2 * scale / step, "accuracy": step / 120}, step=step)
    if finish:
        run.finish()
    return run


def run_cli(capsys: Any, *argv: str) -> tuple[int, str, str]:
    """`kubelearn` in this process: its exit code, stdout and stderr."""
    from kubelearn.em import cli

    code = cli.main(list(argv))
    assert isinstance(code, int)
    out, err = capsys.readouterr()
    return code, out, err


def table(text: str) -> list[list[str]]:
    """Split a table on runs of two or more spaces."""
    return [re.split(r"\s{2,}", line.strip()) for line in text.strip().splitlines()]


def start_ps(tmp_path: Path, token: str, **env: str) -> tuple[subprocess.Popen, str, Path]:
    """A ps task run as a pod runs it: ``kubelearn run`` with a ps TF_CONFIG and ``token``;
    returns the process, its address and its log."""
    from kubelearn.local import free_port

    port = free_port()
    tf_config = {"cluster": {"ps": [f"127.0.0.1:{port}"], "worker": ["127.0.0.1:1"]},
                 "task": {"type": "ps", "index": 0}, "environment": "cloud"}
    full = runner_env(TF_CONFIG=json.dumps(tf_config), KUBELEARN_TOKEN=token, **env)
    log_path = tmp_path / f"ps-{port}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "kubelearn.cli", "run", "--experiment-fn",
             "kubelearn.examples.linear:experiment_fn", "--model-dir", str(tmp_path / "m")],
            env=full, stdout=log, stderr=subprocess.STDOUT)
    return proc, f"127.0.0.1:{port}", log_path
