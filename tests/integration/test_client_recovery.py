"""The operator's API client and caches against the real API server, when credentials rotate
and when a watch connection silently stops forwarding: the caches recover on their own.

Each test runs the operator's own KubeClient and Informer in the test's event loop. The
operator asks the server to end each watch after half its resync period, and takes a watch
silent for a whole resync period for dead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from kubelearn_operator.informer import Informer
from kubelearn_operator.kube import KubeClient
from kubelearn_spec import names
from tests.cluster.controlplane import ControlPlane
from tests.cluster.helpers import client_for_token, wait_for

pytestmark = pytest.mark.cluster

RESYNC_SECONDS = 2.0  # as the operator in the other tests


def write_kubeconfig(path: Path, cp: ControlPlane, server: str,
                     user: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server,
                                               "certificate-authority": str(cp.ca_file)}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "c"}))
    return path


def make_pod(core: client.CoreV1Api, namespace: str, name: str) -> None:
    core.create_namespaced_pod(namespace, {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {names.LABEL_EXPERIMENT: "exp"}},
        "spec": {"containers": [{"name": "c", "image": "none"}]}})


def pod_cache(kube: KubeClient, namespace: str, resync_seconds: float) -> Informer[str]:
    def parse(obj: dict[str, Any]) -> tuple[str, str]:
        return obj["metadata"]["labels"][names.LABEL_EXPERIMENT], obj["metadata"]["name"]

    return Informer(kube, namespace, "pods", names.LABEL_EXPERIMENT, parse,
                    lambda ns, experiment: None, resync_seconds / 2)


async def until(check: Any, timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.1)


# -- a token rotated mid-run -------------------------------------------------------------------
def bound_token(core: client.CoreV1Api, namespace: str, account: str,
                secret: client.V1Secret) -> str:
    """A token of the ServiceAccount bound to ``secret``: deleting the Secret revokes it."""
    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
        audiences=[], expiration_seconds=600,
        bound_object_ref=client.V1BoundObjectReference(
            api_version="v1", kind="Secret", name=secret.metadata.name,
            uid=secret.metadata.uid)))
    return core.create_namespaced_service_account_token(account, namespace, request).status.token


def status_of(api: client.ApiClient, namespace: str) -> int:
    try:
        client.CoreV1Api(api).list_namespaced_pod(namespace)
    except client.ApiException as error:
        return error.status
    return 200


def test_token_request_refuses_expiry_shorter_than_ten_minutes(
        kube_api: client.ApiClient, namespace: str) -> None:
    # Why the rotation below revokes the old token instead of waiting for it to expire.
    core = client.CoreV1Api(kube_api)
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=60))
    with pytest.raises(client.ApiException) as error:
        core.create_namespaced_service_account_token("default", namespace, request)
    assert error.value.status == 422 and "10 minutes" in error.value.body


def test_cache_recovers_when_the_token_is_rotated(kube_api: client.ApiClient, namespace: str,
                                                  control_plane: ControlPlane,
                                                  tmp_path: Path) -> None:
    core = client.CoreV1Api(kube_api)
    rbac = client.RbacAuthorizationV1Api(kube_api)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "operator"}})
    rbac.create_namespaced_role(namespace, {
        "metadata": {"name": "pod-reader"},
        "rules": [{"apiGroups": [""], "resources": ["pods"],
                   "verbs": ["get", "list", "watch"]}]})
    rbac.create_namespaced_role_binding(namespace, {
        "metadata": {"name": "operator"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                    "name": "pod-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "operator", "namespace": namespace}]})
    holders = [core.create_namespaced_secret(namespace, {"metadata": {"name": f"holder-{i}"}})
               for i in range(2)]
    first = bound_token(core, namespace, "operator", holders[0])
    token_file = tmp_path / "token"
    token_file.write_text(first)
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", control_plane, control_plane.server,
                                  {"tokenFile": str(token_file)})
    wait_for(lambda: status_of(client_for_token(kube_api, first), namespace) == 200, 30,
             "the ServiceAccount's permissions")

    async def scenario() -> None:
        kube = await KubeClient.connect(str(kubeconfig))
        cache = pod_cache(kube, namespace, RESYNC_SECONDS)
        task = asyncio.get_running_loop().create_task(cache.run())
        try:
            await asyncio.wait_for(cache.synced.wait(), 30)
            make_pod(core, namespace, "before")
            await until(lambda: "before" in cache.get("exp"), 30, "the pod in the cache")

            # Rotate: the new token goes into the file, the old one is revoked.
            second = bound_token(core, namespace, "operator", holders[1])
            token_file.write_text(second)
            core.delete_namespaced_secret(holders[0].metadata.name, namespace)
            old = client_for_token(kube_api, first)
            await until(lambda: status_of(old, namespace) == 401, 30, "the old token refused")
            # Every watch opened from now on must authenticate with the new token.
            await asyncio.sleep(1.5 * RESYNC_SECONDS)
            make_pod(core, namespace, "after")
            await until(lambda: "after" in cache.get("exp"), 5 * RESYNC_SECONDS,
                        "a pod made after the rotation in the cache")
            assert kube.api.configuration.api_key["BearerToken"] == f"Bearer {second}"
            # Plain requests pass too (retried once with the reloaded token).
            listed = await kube.request("GET", f"/api/v1/namespaces/{namespace}/pods")
            assert {p["metadata"]["name"] for p in listed["items"]} == {"before", "after"}
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await kube.close()

    asyncio.run(scenario())


# -- a watch connection that stops forwarding ----------------------------------------------
class FreezingProxy:
    """A TCP proxy on loopback; ``freeze()`` makes every connection open at that moment stop
    forwarding bytes either way, without closing. Later connections forward as usual."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self.connections = 0
        self._frozen: list[asyncio.Event] = []
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def freeze(self) -> None:
        for gate in self._frozen:
            gate.set()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        frozen = asyncio.Event()
        self._frozen.append(frozen)

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            while data := await source.read(65536):
                if frozen.is_set():
                    await asyncio.Event().wait()  # hold the bytes and the socket, forever
                sink.write(data)
                await sink.drain()
            sink.close()

        pumps = [asyncio.ensure_future(pump(reader, upstream_writer)),
                 asyncio.ensure_future(pump(upstream_reader, writer))]
        try:
            await asyncio.gather(*pumps)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            for task in pumps:
                task.cancel()
            writer.close()
            upstream_writer.close()


@pytest.fixture
def quiet_asyncio() -> Iterator[None]:
    level = logging.getLogger("asyncio").level
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # the frozen sockets left behind
    yield
    logging.getLogger("asyncio").setLevel(level)


def test_cache_recovers_when_a_watch_silently_stops(kube_api: client.ApiClient, namespace: str,
                                                   control_plane: ControlPlane, tmp_path: Path,
                                                   quiet_asyncio: None,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    # The default resync period: the watch that brought the first pod is surely still open
    # when the proxy freezes it.
    resync = 10.0
    caplog.set_level(logging.INFO, logger="kubelearn_operator")
    core = client.CoreV1Api(kube_api)
    server = urllib.parse.urlsplit(control_plane.server)

    async def scenario() -> None:
        proxy = FreezingProxy(server.hostname or "127.0.0.1", server.port or 443)
        await proxy.start()
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", control_plane,
                                      f"https://127.0.0.1:{proxy.port}",
                                      {"token": control_plane.admin_token})
        kube = await KubeClient.connect(str(kubeconfig))
        cache = pod_cache(kube, namespace, resync)
        task = asyncio.get_running_loop().create_task(cache.run())
        try:
            await asyncio.wait_for(cache.synced.wait(), 30)
            make_pod(core, namespace, "before")
            await until(lambda: "before" in cache.get("exp"), 30, "the pod in the cache")
            # Cut the watch that brought it: no byte more, and no close either.
            opened = proxy.connections
            proxy.freeze()
            make_pod(core, namespace, "after")
            await until(lambda: "after" in cache.get("exp"), 3 * resync,
                        "a pod made behind the frozen watch in the cache")
            assert proxy.connections > opened  # listed and watched again on a new connection
            assert any("nothing came over the watch" in r.getMessage() for r in caplog.records)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await kube.close()
            await proxy.close()

    asyncio.run(scenario())
