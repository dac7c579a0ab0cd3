"""``python -m kubelearn_operator``: run the operator with liveness and metrics endpoints."""

from __future__ import annotations

import argparse
import os

import kopf


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m kubelearn_operator")
    parser.add_argument("--namespace", action="append", default=[],
                        help="namespace to serve (repeatable); default: all namespaces")
    parser.add_argument("--liveness", default=os.environ.get(
        "KUBELEARN_LIVENESS_ENDPOINT", "http://0.0.0.0:8080/healthz"))
    args = parser.parse_args()
    from . import handlers  # noqa: F401  (registers the handlers)

    # kopf wants an iterable of namespaces even when serving the whole cluster.
    kopf.run(standalone=True, namespaces=args.namespace, clusterwide=not args.namespace,
             liveness_endpoint=args.liveness)


if __name__ == "__main__":
    main()
