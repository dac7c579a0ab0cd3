"""The ``kubelearn`` command line: what every pod runs, and the local launcher.

Sub-commands are registered by the modules that own them, each through an
``add_parser(subparsers)`` function that sets ``func`` on its parser.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


class _Parser(argparse.ArgumentParser):
    """Reports a usage error as one line (exit code 2), not usage plus message."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="kubelearn",
        description="Run tf.contrib.learn-style experiments locally or on Kubernetes.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    from kubelearn import local, run_cli
    from kubelearn.em import cli as em_cli
    from kubelearn.sweep import cli as sweep_cli

    run_cli.add_parser(subparsers)
    local.add_parser(subparsers)
    local.add_scale_parser(subparsers)
    sweep_cli.add_parser(subparsers)
    em_cli.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from kubelearn.redact import RedactingStream

    if not isinstance(sys.stdout, RedactingStream):  # no credentials in anything printed
        sys.stdout = RedactingStream(sys.stdout)  # type: ignore[assignment]
        sys.stderr = RedactingStream(sys.stderr)  # type: ignore[assignment]
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
