"""``python -m kubelearn_operator``: the operator, as the image and the tests start it.

    python -m kubelearn_operator [--namespace NS]... [--all-namespaces] [--liveness URL]

Serves the given namespaces, or all of them; the liveness endpoint also serves the
controller's probe. Settings come from the environment (settings.py; ``--help`` lists them).
"""

from __future__ import annotations

import argparse
import gc

import kopf

from . import settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m kubelearn_operator", formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=f"settings (environment variables):\n{settings.help_text()}")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("--namespace", action="append", default=[],
                       help="namespace to serve (repeatable)")
    scope.add_argument("--all-namespaces", action="store_true",
                       help="serve every namespace (the default when none is named)")
    parser.add_argument("--liveness", default=settings.read("liveness_endpoint"),
                        help="kopf's liveness endpoint (default: $KUBELEARN_LIVENESS_ENDPOINT)")
    return parser.parse_args(argv)


#: Allocations between two collections of the youngest generation (Python's default: 700),
#: and collections of each generation between two of the next.
GC_THRESHOLDS = (50_000, 20, 20)


def tune_gc() -> None:
    """Planning and creating a thousand pods makes millions of short-lived objects, nearly all
    freed by reference counting; at the default thresholds the cycle collector ran thousands
    of times per such job, full collections over the whole heap among them, and took about
    half the operator's CPU. What start-up made lives as long as the process: frozen, it is
    never scanned again; and the young generations are collected far less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from . import handlers  # noqa: F401  (registers the handlers)

    tune_gc()

    kopf.configure()  # INFO, as `kopf run` logs
    # kopf wants an iterable of namespaces even when serving the whole cluster.
    kopf.run(standalone=True, namespaces=args.namespace, clusterwide=not args.namespace,
             liveness_endpoint=args.liveness)


if __name__ == "__main__":
    main()
