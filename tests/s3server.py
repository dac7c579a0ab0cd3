"""pytest plugin: a real S3-compatible server on loopback, one per session (``s3_server``).

The server is versitygw (Apache-2.0), Versity's S3 gateway over a directory, built with
``go install`` through ``tests/cluster/build.sh s3`` into the build cache; when the selected
tests use ``s3_server`` the build runs right after collection, so a cold build counts against
no test's timeout. Each bucket is a directory of a temporary directory (a PUT replaces an
object whole), the server listens on a free 127.0.0.1 port, checks every request's SigV4
signature against the one key pair it was started with, and dies with the session (and with
this process if it is killed outright).

The client side is configured as a pod is, from the environment only: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL`` and ``AWS_DEFAULT_REGION``, set in this
process for the session and handed to the processes a test starts (``S3Server.env``).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import os
import secrets
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.build import ensure_s3_server
from tests.session_build import BuiltOnce

BUCKET = "kubelearn-test"


@dataclasses.dataclass(frozen=True)
class S3Server:
    endpoint: str  # http://127.0.0.1:<port>
    bucket: str
    env: dict[str, str]  # the AWS_* variables a client needs

    def url(self, name: str) -> str:
        """A fresh prefix in the bucket: ``s3://<bucket>/<name>-<random>``."""
        return f"s3://{self.bucket}/{name}-{secrets.token_hex(4)}"


_BINARY = BuiltOnce(lambda progress: ensure_s3_server(progress=progress))


def pytest_collection_finish(session: pytest.Session) -> None:
    _BINARY.before_tests(session, "s3_server")


def _die_with_parent() -> None:  # runs in the child before exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _listening(port: int, address: str) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((address, port)) == 0


def start_server(binary: Path, root: Path, access_key: str, secret_key: str,
                 bucket: str = BUCKET, timeout: float = 30.0, address: str = "127.0.0.1"
                 ) -> tuple[subprocess.Popen[bytes], int]:
    """Starts versitygw on a free port of ``address`` (loopback, or the real node's bridge
    for its pods), serving the directories of ``root`` as buckets, with ``bucket`` made and
    one key pair; returns it and its port. Its output goes to ``root``/../versitygw.log."""
    (root / bucket).mkdir(parents=True, exist_ok=True)
    log_path = root.parent / f"{root.name}-versitygw.log"
    for _ in range(5):  # a port another process took between the probe and the bind
        with socket.socket() as sock:
            sock.bind((address, 0))
            port = sock.getsockname()[1]
        log = open(log_path, "wb")  # noqa: SIM115  (the child's output, closed below)
        try:
            proc = subprocess.Popen(
                [str(binary), "--access", access_key, "--secret", secret_key,
                 "--port", f"{address}:{port}", "--quiet", "posix", str(root)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent)
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if _listening(port, address):
                return proc, port
            time.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            break
    raise RuntimeError(f"versitygw did not start: {log_path.read_text(errors='replace')[-2000:]}")


def _clear_fsspec_instances() -> None:
    with contextlib.suppress(ImportError):
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="session")
def s3_server(request: pytest.FixtureRequest) -> Iterator[S3Server]:
    pytest.importorskip("s3fs", reason="install the [s3] extra")
    binary = _BINARY.get(request.config)
    with tempfile.TemporaryDirectory(prefix="kubelearn-s3-") as tmp:
        access, secret = "kubelearn-test", secrets.token_hex(16)
        proc, port = start_server(binary, Path(tmp) / "buckets", access, secret)
        endpoint = f"http://127.0.0.1:{port}"
        env = {"AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret,
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
