"""Run a real single-node cluster for development: python -m tests.node up|down|env|apt.

eval "$(python -m tests.node up)"   # build what is missing, start, export KUBECONFIG etc.
kubectl get nodes                    # (an alias for the built kubectl)
python -m tests.node down            # stop it and remove everything it made
python -m tests.node apt             # install the Debian packages it needs (as root)
"""

from __future__ import annotations

import argparse
import shlex
import sys

from tests.node import node as real_node
from tests.node.host import apt_install


def env_lines(node: real_node.Node) -> list[str]:
    lines = [f"export {k}={shlex.quote(v)}" for k, v in node.env.items()]
    lines.append(f"alias kubectl={shlex.quote(shlex.join(node.cp.kubectl))}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.node", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["up", "down", "env", "apt", "watchdog"])
    parser.add_argument("parent", nargs="?", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.command == "watchdog":  # started by a test session's node (node.py)
        return real_node.watchdog(args.parent)
    if args.command == "apt":
        apt_install()
        return 0
    if args.command == "down":
        real_node.down()
        return 0
    if args.command == "up":
        node = real_node.load()
        if node is None or not node.cp.is_ready():
            try:
                node = real_node.up(detach=True)
            except (real_node.NodeError, RuntimeError) as exc:
                print(f"node failed to start: {exc}", file=sys.stderr)
                return 1
        print("\n".join(env_lines(node)))
        return 0
    node = real_node.load()
    if node is None:
        print("no node running; start one with: python -m tests.node up", file=sys.stderr)
        return 1
    print("\n".join(env_lines(node)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
