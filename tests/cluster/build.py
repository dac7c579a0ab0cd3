"""Locate (building once if needed) the control-plane binary, helm and a real node's daemons
through build.sh.

The build itself lives in the shell script so that CI can pre-build without Python; this module
only runs it and reads the paths it prints.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

BUILD_SCRIPT = Path(__file__).resolve().parent / "build.sh"


@dataclass(frozen=True)
class Binaries:
    """Paths of the built tools."""

    kubecp: Path
    helm: Path
    coredns: Path | None = None
    netpol: Path | None = None
    local_path: Path | None = None  # rancher's local-path-provisioner, for the node's volumes


class BuildError(RuntimeError):
    """build.sh failed; the message carries its exit code and the tail of its output."""


def ensure_built(progress: TextIO | None = None, node: bool = False,
                 netpol: bool = False) -> Binaries:
    """Run build.sh (a no-op when the cache holds the binaries) and return their paths.

    node=True also builds what a real node needs beside the control plane (CoreDNS and
    local-path-provisioner), and netpol=True kube-network-policies for it.

    build.sh writes progress to stderr, which goes to `progress` (default: this process's
    stderr) line by line, so a cold build of several minutes shows in CI logs as it happens.
    """
    paths = _run_build([*(["node"] if node else []), *(["netpol"] if node and netpol else [])],
                       progress)
    try:
        return Binaries(kubecp=Path(paths["KUBECP"]), helm=Path(paths["HELM"]),
                        coredns=Path(paths["COREDNS"]) if node else None,
                        netpol=Path(paths["NETPOL"]) if node and netpol else None,
                        local_path=Path(paths["LOCAL_PATH"]) if node else None)
    except KeyError as exc:
        raise BuildError(f"{BUILD_SCRIPT} did not print {exc.args[0]}=<path>: {paths!r}") from exc


def ensure_s3_server(progress: TextIO | None = None) -> Path:
    """Run ``build.sh s3`` (a no-op when the cache holds it) and return the path of the
    S3-compatible server, versitygw; nothing else is built."""
    paths = _run_build(["s3"], progress)
    if "S3GW" not in paths:
        raise BuildError(f"{BUILD_SCRIPT} did not print S3GW=<path>: {paths!r}")
    return Path(paths["S3GW"])


def _run_build(args: list[str], progress: TextIO | None) -> dict[str, str]:
    """Runs build.sh with ``args``; the KEY=path lines it printed."""
    out = progress if progress is not None else sys.stderr
    proc = subprocess.Popen(
        ["bash", str(BUILD_SCRIPT), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None and proc.stdout is not None
    tail: list[str] = []
    for line in proc.stderr:
        out.write(line)
        out.flush()
        tail = [*tail[-39:], line]
    stdout = proc.stdout.read()
    rc = proc.wait()
    if rc != 0:
        raise BuildError(f"{BUILD_SCRIPT} exited with {rc}; last output:\n{''.join(tail)}")
    return dict(line.split("=", 1) for line in stdout.splitlines() if "=" in line)
