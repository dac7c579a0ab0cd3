"""``kubelearn sweep ACTION``: hyper-parameter sweeps from the command line.

One command with actions, so that actions besides ``local`` (on a cluster, say) can join
it without another top-level command.
"""

from __future__ import annotations

from typing import Any

from kubelearn.sweep import local, plot


def add_parser(subparsers: Any) -> None:
    """Registers ``kubelearn sweep`` and its actions with the CLI."""
    parser = subparsers.add_parser("sweep", help="hyper-parameter sweeps (Sweep manifests)",
                                   description="Run hyper-parameter sweeps.")
    actions = parser.add_subparsers(dest="sweep_command", metavar="ACTION")
    actions.required = True
    local.add_action(actions)
    plot.add_action(actions)
