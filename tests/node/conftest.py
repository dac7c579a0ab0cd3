"""Fixtures for tests on the real node: one node per session, started on first use.

Where the machine cannot run it (not root, no containerd, runc or buildah), its tests skip and
name what is missing, unless KUBELEARN_REQUIRE_NODE=1 (CI), where they fail instead. What the
node needs is built right after collection, before any test runs, so a cold build counts
against no test's timeout. The images build beside the Go binaries: the one is mostly
downloads and unpacking, the other compiling.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import pytest

from tests.cluster.build import ensure_built
from tests.node import images
from tests.node import node as nodes
from tests.session_build import terminal_output

NODE_FIXTURES = ("real_node", "fresh_node_dir")


def _unavailable() -> str | None:
    if reasons := nodes.missing():
        why = "the real node needs: " + "; ".join(reasons)
        if os.environ.get("KUBELEARN_REQUIRE_NODE") == "1":
            pytest.fail(why + " (KUBELEARN_REQUIRE_NODE=1)")
        return why
    return None


class _Prefixed:
    """A line-buffered writer that marks each line, so two builds can share one terminal."""

    def __init__(self, prefix: str, out: TextIO, lock: threading.Lock) -> None:
        self.prefix, self.out, self.lock, self.pending = prefix, out, lock, ""

    def write(self, text: str) -> int:
        *lines, self.pending = (self.pending + text).split("\n")
        if lines:
            with self.lock:
                self.out.writelines(f"{self.prefix}{line}\n" for line in lines)
                self.out.flush()
        return len(text)

    def flush(self) -> None:
        pass


def _build_images(log: TextIO) -> None:
    with contextlib.suppress(Exception):  # the real_node fixture reports a failure
        images.ensure_images(log=log)
        images.ensure_pause(log=log)


def _selects_node(session: pytest.Session) -> bool:
    return any(set(NODE_FIXTURES) & set(getattr(item, "fixturenames", ()))
               for item in session.items)


@pytest.hookimpl(tryfirst=True)  # before the control plane's hook, so both builds overlap
def pytest_collection_finish(session: pytest.Session) -> None:
    if session.config.option.collectonly:
        return
    if nodes.missing():
        if os.environ.get("KUBELEARN_REQUIRE_NODE") == "1" and _selects_node(session):
            # Fail before a long build, not at the first node test half an hour later.
            pytest.exit(f"the real node needs: {'; '.join(nodes.missing())} "
                        "(KUBELEARN_REQUIRE_NODE=1; python3 -m tests.node.host installs it)",
                        returncode=pytest.ExitCode.USAGE_ERROR)
        return
    if _selects_node(session):
        lock = threading.Lock()
        with terminal_output(session.config):
            builder = threading.Thread(target=_build_images, name="images", daemon=True,
                                       args=(_Prefixed("[images] ", sys.stderr, lock),))
            builder.start()
            with contextlib.suppress(Exception):
                ensure_built(progress=_Prefixed("", sys.stderr, lock), node=True)
            builder.join()


@pytest.fixture(scope="session")
def real_node(request: pytest.FixtureRequest) -> Iterator[nodes.Node]:
    """The node with its control plane, for the whole session; down at the end."""
    if why := _unavailable():
        pytest.skip(why)
    with terminal_output(request.config):
        node = nodes.up(progress=sys.stderr)
    atexit.register(nodes.down)  # a crash past the finalizer still cleans up
    try:
        yield node
    finally:
        with terminal_output(request.config):
            nodes.down(progress=sys.stderr)
        atexit.unregister(nodes.down)


@pytest.fixture
def fresh_node_dir() -> Path:
    """For a test that starts and stops a node itself: any node left running is stopped."""
    if why := _unavailable():
        pytest.skip(why)
    nodes.down(quiet=True)
    return nodes.node_dir()
