"""The chief's progress endpoint under hostile clients: the token is required, half-sent
requests time out, the threads serving them are bounded and a response is size-limited."""

from __future__ import annotations

import json
import socket
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
