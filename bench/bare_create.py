"""The floor for bench/operator_scale.py: the objects kubelearn's operator makes for one
Experiment, created by a bare client with the operator's concurrency and nothing else.

The objects are the operator's own plan for the Experiment (its pure builders, with the
operator's default settings), read from the API server, so they are byte for byte what the
operator sends: the cluster ConfigMap (large jobs), the pods, then the services, in that order
as the operator sends them. The client is one aiohttp session over TLS with the bearer token,
no rate limit, at most ``--concurrency`` requests in flight, each body serialized beforehand.
What it takes is what this API server allows on this machine.

Run by operator_scale.py as a subprocess, so its CPU is not the bench's: it prints ``ready``
once its connections are open and the bodies built, creates everything when a line arrives on
stdin, then prints the seconds it took and exits.

    python bench/bare_create.py SERVER CA_FILE TOKEN NAMESPACE EXPERIMENT [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT / "operator", ROOT / "common", ROOT / "runner", ROOT):
    sys.path.insert(0, str(_path))

from kubelearn_operator.experiment_plan import Observed, plan  # noqa: E402
from kubelearn_operator.settings import Settings  # noqa: E402


def requests_for(body: dict[str, Any]) -> list[list[tuple[str, bytes]]]:
    """The operator's creates for a new Experiment, as (path, JSON body), in two waves: the
    ConfigMap and pods together, then the services."""
    namespace = body["metadata"]["namespace"]
    result = plan(body, Observed(), datetime.now(timezone.utc), Settings())
    base = f"/api/v1/namespaces/{namespace}"
    first = [(f"{base}/configmaps", result.configmap)] if result.configmap else []
    first += [(f"{base}/pods", pod) for pod in result.create_pods]
    second = [(f"{base}/services", service) for service in result.create_services]
    return [[(path, json.dumps(obj).encode()) for path, obj in wave] for wave in (first, second)]


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name in ("server", "ca_file", "token", "namespace", "experiment"):
        parser.add_argument(name)
    parser.add_argument("--concurrency", type=int, default=Settings.create_concurrency)
    args = parser.parse_args()
    headers = {"Authorization": f"Bearer {args.token}", "Content-Type": "application/json",
               "Accept": "application/json"}
    context = ssl.create_default_context(cafile=args.ca_file)
    limit = asyncio.Semaphore(args.concurrency)
    async with aiohttp.ClientSession(args.server, headers=headers, trust_env=False,
                                     connector=aiohttp.TCPConnector(ssl=context, limit=0)) as http:
        path = (f"/apis/kubelearn.dev/v1alpha1/namespaces/{args.namespace}/experiments/"
                f"{args.experiment}")
        async with http.get(path) as response:
            response.raise_for_status()
            waves = requests_for(await response.json())

        async def send(method: str, path: str, data: bytes | None = None) -> None:
            async with limit, http.request(method, path, data=data) as response:
                await response.read()
                if response.status >= 400:
                    raise RuntimeError(f"{method} {path}: {response.status}")

        # As many open connections as the operator warms up (controller.Controller._warm_up).
        await asyncio.gather(*(send("GET", "/version")
                               for _ in range(min(args.concurrency, 16))))
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        started = time.perf_counter()
        for wave in waves:
            await asyncio.gather(*(send("POST", path, data) for path, data in wave))
        print(f"{time.perf_counter() - started:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
