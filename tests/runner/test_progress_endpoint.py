"""The chief's progress endpoint under hostile clients: the token is required, half-sent
requests are dropped at their deadline, clients that send slowly never keep the operator's
request out, the threads are bounded, a response is size-limited, and clients that go away
leave no traceback."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
import urllib.error
import urllib.request

import pytest

from kubelearn import reporting
from kubelearn.local import free_port
from kubelearn.run_config import RunConfig

TOKEN = "tok-progress"


@pytest.fixture
def endpoint(tmp_path, monkeypatch):
    port = free_port()
    monkeypatch.setenv("KUBELEARN_PROGRESS_PORT", str(port))
    monkeypatch.setenv("KUBELEARN_BIND_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBELEARN_TOKEN", TOKEN)
    monkeypatch.setenv("EM_RUN_PARENT_DIR", str(tmp_path / "runs"))
    monkeypatch.setattr(reporting, "PROGRESS_SOCKET_TIMEOUT_SECS", 1.0)
    (tmp_path / "progress.json").write_text(json.dumps({"global_step": 12, "loss": 0.5}))
    reporter = reporting.Reporter(RunConfig(model_dir=str(tmp_path)), None, "exp")
    yield f"http://127.0.0.1:{port}/progress", port, tmp_path
    reporter.finish()


def _get(url: str, token: str | None) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def test_the_token_is_required(endpoint):
    url, _, _ = endpoint
    assert _get(url, None)[0] == 401
    assert _get(url, "wrong")[0] == 401
    assert _get(url, TOKEN[:-1])[0] == 401
    status, body = _get(url, TOKEN)
    assert status == 200 and json.loads(body)["global_step"] == 12


def test_half_sent_requests_hold_a_bounded_number_of_threads(endpoint):
    url, port, _ = endpoint
    before = threading.active_count()
    stalled = []
    for _ in range(300):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"GET /progress HTTP/1.1\r\nHost: x\r\n")  # never finished
        stalled.append(sock)
    time.sleep(0.5)
    assert threading.active_count() <= before + reporting.MAX_PROGRESS_THREADS
    for sock in stalled:
        sock.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the stalled ones time out; service resumes
        try:
            if _get(url, TOKEN)[0] == 200:
                break
        except OSError:
            time.sleep(0.2)
    else:
        raise AssertionError("the endpoint did not recover")
    assert threading.active_count() <= before + reporting.MAX_PROGRESS_THREADS


def test_a_huge_progress_file_gives_a_bounded_response(endpoint):
    url, _, model_dir = endpoint
    (model_dir / "progress.json").write_text(json.dumps(
        {"global_step": 5, "loss": 0.25, "junk": "x" * (1 << 20)}))
    status, body = _get(url, TOKEN)
    assert status == 200 and len(body) <= reporting.MAX_PROGRESS_BYTES
    (model_dir / "progress.json").write_text(json.dumps(
        {"global_step": 5, "loss": 0.25, "junk": "x" * (4 << 10)}))
    status, body = _get(url, TOKEN)
    assert status == 200 and len(body) <= reporting.MAX_PROGRESS_BYTES
    report = json.loads(body)
    assert report["global_step"] == 5 and report["loss"] == 0.25


def test_progress_body_keeps_the_essentials_when_too_long():
    body = reporting.progress_body({"global_step": 3, "loss": 1.5, "eval": {"x": "y" * 50_000}})
    assert json.loads(body) == {"global_step": 3, "loss": 1.5}


def test_the_operator_fetches_with_the_token_and_reads_a_bounded_body(endpoint):
    import asyncio

    aiohttp = pytest.importorskip("aiohttp")
    from kubelearn_operator import progress

    url = endpoint[0]

    async def fetch(token: str) -> dict | None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            return await progress.fetch(session, url, token)

    assert asyncio.run(fetch("wrong")) is None
    report = asyncio.run(fetch(TOKEN))
    assert report is not None and report["global_step"] == 12


class SlowClients:
    """``count`` clients that never finish a request: each sends its request line and then
    one header byte every ``every`` seconds, and connects again when it is dropped."""

    def __init__(self, port: int, count: int, every: float = 0.5) -> None:
        self.port, self.every = port, every
        self.stop = threading.Event()
        self.dropped = 0  # times the server closed a slow client's connection
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(count)]
        for thread in self.threads:
            thread.start()

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
                    sock.sendall(b"GET /progress HTTP/1.1\r\n")
                    for byte in b"X-Slow: " + b"a" * 1000:
                        if self.stop.wait(self.every):
                            return
                        sock.sendall(bytes([byte]))
            except OSError:
                self.dropped += 1

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=10)


def test_slow_clients_never_keep_the_operator_out(endpoint):
    url, port, _ = endpoint
    before = threading.active_count()
    slow = SlowClients(port, 4 * reporting.MAX_PROGRESS_THREADS)
    try:
        time.sleep(1)  # every slow client connected and sending
        for _ in range(12):  # over several request deadlines
            status, body = _get(url, TOKEN)
            assert status == 200 and json.loads(body)["global_step"] == 12
            time.sleep(0.5)
        assert slow.dropped > 0  # dropped at their deadline, not served one byte at a time
    finally:
        slow.close()
    # The server's own threads (reading one, answering MAX_PROGRESS_THREADS) were there
    # before the slow clients; they added none.
    assert threading.active_count() <= before


def test_clients_that_go_away_leave_no_traceback(endpoint, capfd):
    url, port, _ = endpoint
    linger = struct.pack("ii", 1, 0)  # close with a reset, as a client that vanishes
    for request in (b"GET /progress HTTP/1.1\r\nHost: x\r\n",  # half a request
                    b"GET /progress HTTP/1.1\r\nHost: x\r\n\r\n",  # refused: no token
                    f"GET /progress HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
                    .encode()):
        for reset in (False, True):
            for _ in range(10):
                sock = socket.create_connection(("127.0.0.1", port))
                sock.sendall(request)
                if reset:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                sock.close()
    status, _ = _get(url, TOKEN)
    assert status == 200
    time.sleep(0.5)  # the answers to the clients that went are written, or fail
    assert _get(url, TOKEN)[0] == 200
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Error" not in err, err[-3000:]
