"""pytest plugin: a real S3-compatible server on loopback, one per session (``s3_server``).

The server is gofakes3 (MIT), built with ``go install`` through ``tests/cluster/build.sh s3``
into the build cache; when the selected tests use ``s3_server`` the build runs right after
collection, so a cold build counts against no test's timeout. It keeps objects in memory (as
S3 does, a key can be an object and a prefix of others at once; a PUT replaces an object
whole), listens on a free 127.0.0.1 port, and dies with the session (and with this process
if it is killed outright).

The client side is configured as a pod is, from the environment only: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` and ``AWS_DEFAULT_REGION``, set in this
process for the session and handed to the processes a test starts (``S3Server.env``).
gofakes3 does not check signatures, so the credentials are made up; s3fs needs some to sign.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.build import ensure_s3_server

BUCKET = "kubelearn-test"
_BUILT: dict[str, Path | BaseException] = {}


@dataclasses.dataclass(frozen=True)
class S3Server:
    endpoint: str  # http://127.0.0.1:<port>
    bucket: str
    env: dict[str, str]  # the AWS_* variables a client needs

    def url(self, name: str) -> str:
        """A fresh prefix in the bucket: ``s3://<bucket>/<name>-<random>``."""
        return f"s3://{self.bucket}/{name}-{secrets.token_hex(4)}"


@contextlib.contextmanager
def _terminal_output(config: pytest.Config) -> Iterator[None]:
    capman = config.pluginmanager.getplugin("capturemanager")
    if capman is None:
        yield
        return
    with capman.global_and_fixture_disabled():
        yield


def _binary(config: pytest.Config) -> Path:
    if "result" not in _BUILT:
        with _terminal_output(config):
            try:
                _BUILT["result"] = ensure_s3_server(progress=sys.stderr)
            except Exception as exc:
                _BUILT["result"] = exc
    result = _BUILT["result"]
    if isinstance(result, BaseException):
        raise result
    return result


def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return
    if any("s3_server" in getattr(item, "fixturenames", ()) for item in session.items):
        with contextlib.suppress(Exception):  # reported by the fixture, per test
            _binary(session.config)


def _die_with_parent() -> None:  # runs in the child before exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def start_server(binary: Path, log_path: Path, bucket: str = BUCKET, timeout: float = 30.0,
                 address: str = "127.0.0.1") -> tuple[subprocess.Popen[bytes], int]:
    """Starts gofakes3 on a free port of ``address`` (loopback, or the real node's bridge for
    its pods) with ``bucket``; returns it and its port."""
    log = open(log_path, "wb")  # noqa: SIM115  (the child's stderr, closed below)
    try:
        proc = subprocess.Popen(
            [str(binary), "-backend", "mem", "-host", f"{address}:0", "-initialbucket", bucket,
             "-quiet"], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent)
    finally:
        log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = re.search(r"using port: (\d+)", log_path.read_text(errors="replace"))
        if match:
            return proc, int(match.group(1))
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"gofakes3 did not start: {log_path.read_text(errors='replace')[-2000:]}")


def _clear_fsspec_instances() -> None:
    with contextlib.suppress(ImportError):
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="session")
def s3_server(request: pytest.FixtureRequest) -> Iterator[S3Server]:
    pytest.importorskip("s3fs", reason="install the [s3] extra")
    binary = _binary(request.config)
    with tempfile.TemporaryDirectory(prefix="kubelearn-s3-") as tmp:
        proc, port = start_server(binary, Path(tmp) / "gofakes3.log")
        endpoint = f"http://127.0.0.1:{port}"
        env = {"AWS_ACCESS_KEY_ID": "kubelearn-test",
               "AWS_SECRET_ACCESS_KEY": secrets.token_hex(16),
               "AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1"}
        with pytest.MonkeyPatch.context() as patch:
            for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3",
                         "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
                patch.delenv(name, raising=False)
            for name, value in env.items():
                patch.setenv(name, value)
            _clear_fsspec_instances()
            try:
                yield S3Server(endpoint, BUCKET, env)
            finally:
                _clear_fsspec_instances()
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def client_env(server: S3Server, **extra: str) -> dict[str, str]:
    """This process's environment without the runner's variables, with the server's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_CONFIG", "KUBELEARN_"))}
    env.update(server.env)
    env.update(extra)
    return env
