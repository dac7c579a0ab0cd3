"""Keep a control plane running for development: python -m tests.cluster up|down|env|status.

eval "$(python -m tests.cluster up)"   # build if needed, start, export KUBECONFIG etc.
kubectl get ns                          # (an alias for the built kubectl)
python -m tests.cluster down
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
from pathlib import Path

from tests.cluster.build import ensure_built
from tests.cluster.controlplane import STATE_FILE, ControlPlane, start_control_plane


def state_dir() -> Path:
    """Where the running control plane lives (KUBELEARN_DEV_CLUSTER_DIR overrides)."""
    if os.environ.get("KUBELEARN_DEV_CLUSTER_DIR"):
        return Path(os.environ["KUBELEARN_DEV_CLUSTER_DIR"])
    cache = os.environ.get("KUBELEARN_CACHE") or os.path.expanduser("~/.cache/kubelearn")
    return Path(cache) / "dev-cluster"


def load() -> ControlPlane | None:
    path = state_dir() / STATE_FILE
    if not path.is_file():
        return None
    return ControlPlane.from_state(json.loads(path.read_text()))


def env_lines(cp: ControlPlane) -> list[str]:
    lines = [f"export {k}={shlex.quote(v)}" for k, v in cp.env.items()]
    lines.append(f"export HELM={shlex.quote(str(cp.helm))}")
    lines.append(f"alias kubectl={shlex.quote(shlex.join(cp.kubectl))}")
    return lines


def up() -> int:
    cp = load()
    if cp is not None and cp.is_ready():
        print(f"control plane already running at {cp.server}", file=sys.stderr)
    else:
        if cp is not None:
            cp.stop(remove_workdir=False)
        shutil.rmtree(state_dir(), ignore_errors=True)
        binaries = ensure_built()
        cp = start_control_plane(binaries.kubecp, binaries.helm, state_dir(), detach=True)
    print("\n".join(env_lines(cp)))
    return 0


def down() -> int:
    cp = load()
    if cp is None:
        print("no control plane recorded", file=sys.stderr)
    else:
        cp.stop(remove_workdir=False)
        print(f"stopped control plane at {cp.server}", file=sys.stderr)
    shutil.rmtree(state_dir(), ignore_errors=True)
    return 0


def env() -> int:
    cp = load()
    if cp is None:
        print(
            "no control plane running; start one with: python -m tests.cluster up", file=sys.stderr
        )
        return 1
    print("\n".join(env_lines(cp)))
    return 0


def status() -> int:
    cp = load()
    if cp is None:
        print("down")
        return 1
    ready = cp.is_ready()
    print(f"{'ready' if ready else 'not ready'} {cp.server} (logs in {cp.workdir})")
    return 0 if ready else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=["up", "down", "env", "status"])
    args = parser.parse_args(argv)
    return {"up": up, "down": down, "env": env, "status": status}[args.command]()


if __name__ == "__main__":
    sys.exit(main())
