"""The operator's API client: kubernetes_asyncio's transport and credentials, plus a client-side
rate limit and a bound on requests in flight.

The operator creates hundreds of objects at once, so requests carry plain JSON (no model
classes) over one aiohttp connection pool. Credentials come from the in-cluster service account
or $KUBECONFIG (token, token file, exec plugin, client certificate) and are loaded again when
the server answers 401, once per stale token however many requests saw it; the in-cluster
token file is also re-read every minute.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes_asyncio import client, config

from kubelearn_spec import names

from . import metrics

#: The Status cause of a create in a namespace that is being deleted (core/v1).
NAMESPACE_TERMINATING = "NamespaceTerminating"
#: Seconds one request may take, from sending it to the last byte of its answer.
REQUEST_TIMEOUT = 60.0
#: Seconds an idle connection to the API server is kept open (client-go's IdleConnTimeout).
KEEPALIVE_SECONDS = 90.0


@dataclass(frozen=True)
class Resource:
    """Where the API server keeps one kind of object: every request path is made here."""

    group: str  # "" for the core group
    version: str
    plural: str
    namespaced: bool = True

    @property
    def group_version(self) -> str:
        """The discovery path of the kind's group and version."""
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    def path(self, namespace: str | None = None, name: str = "", subresource: str = "") -> str:
        """The collection (no ``name``), one object, or one object's subresource."""
        path = self.group_version
        if self.namespaced:
            if not namespace:
                raise ValueError(f"{self.plural} are namespaced: a namespace is needed")
            path += f"/namespaces/{namespace}"
        path += f"/{self.plural}"
        if name:
            path += f"/{name}"
        if subresource:
            path += f"/{subresource}"
        return path


#: The kinds the operator reads or writes, by plural.
RESOURCES: dict[str, Resource] = {r.plural: r for r in (
    Resource("", "v1", "pods"),
    Resource("", "v1", "services"),
    Resource("", "v1", "secrets"),
    Resource("", "v1", "configmaps"),
    Resource("", "v1", "events"),
    Resource("", "v1", "persistentvolumeclaims"),
    Resource("apps", "v1", "deployments"),
    Resource("networking.k8s.io", "v1", "networkpolicies"),
    Resource("storage.k8s.io", "v1", "storageclasses", namespaced=False),
    Resource(names.PODGROUP_GROUP, names.PODGROUP_VERSION, names.PODGROUP_PLURAL),
    Resource(names.GROUP, names.VERSION, names.PLURAL),
    Resource(names.GROUP, names.VERSION, names.SWEEP_PLURAL),
)}
PODS, SERVICES, SECRETS, CONFIGMAPS = (RESOURCES[p] for p in (
    "pods", "services", "secrets", "configmaps"))
EVENTS, CLAIMS, DEPLOYMENTS = (RESOURCES[p] for p in (
    "events", "persistentvolumeclaims", "deployments"))
NETWORK_POLICIES, STORAGE_CLASSES = RESOURCES["networkpolicies"], RESOURCES["storageclasses"]
PODGROUPS = RESOURCES[names.PODGROUP_PLURAL]
EXPERIMENTS, SWEEPS = RESOURCES[names.PLURAL], RESOURCES[names.SWEEP_PLURAL]


class ApiError(Exception):
    def __init__(self, status: int, body: Any, method: str, path: str) -> None:
        reason = body.get("message") if isinstance(body, dict) else body
        super().__init__(f"{method} {path}: {status} {reason}")
        self.status = status
        self.body = body

    def has_cause(self, cause: str) -> bool:
        """Whether the server's Status names this cause, as client-go's HasStatusCause reads
        it (a StatusCause's type is ``reason`` in JSON)."""
        details = self.body.get("details") if isinstance(self.body, dict) else None
        causes = details.get("causes") if isinstance(details, dict) else None
        return any(isinstance(c, dict) and c.get("reason") == cause for c in causes or [])

    @property
    def namespace_terminating(self) -> bool:
        """A create refused because its namespace is being deleted: nothing more can be
        made there (the namespace lifecycle admission plugin's answer)."""
        return self.has_cause(NAMESPACE_TERMINATING)


class RateLimiter:
    """Token bucket: ``qps`` tokens a second, at most ``burst`` saved up, shared by two kinds
    of request: essential ones (the default) and background ones (Events, clean-up the
    garbage collector also does).

    A background request waits while any essential one waits, and takes a token only from a
    full bucket, so it leaves ``burst - 1`` saved for the next essential burst: background
    traffic delays essential requests by at most one token, yet still flows at ``qps`` while
    nothing else needs the budget. All requests draw on the one bucket, so together they stay
    within ``qps`` and ``burst``.
    """

    def __init__(self, qps: float, burst: int, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.qps = float(qps)
        self.burst = max(int(burst), 1)
        self.clock = clock
        self.sleep = sleep
        self._tokens = float(self.burst)
        self._last = clock()
        self._lock = asyncio.Lock()  # essential requests, first come first served
        self._background = asyncio.Lock()  # background requests, one contending at a time
        self._essential = 0  # essential requests waiting for (or taking) a token
        self._idle = asyncio.Event()  # set while no essential request waits
        self._idle.set()

    def _refill(self) -> None:
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.qps)
        self._last = now

    async def acquire(self, *, background: bool = False) -> None:
        if self.qps <= 0:
            return
        if background:
            await self._acquire_background()
            return
        self._essential += 1
        self._idle.clear()
        try:
            async with self._lock:
                self._refill()
                if self._tokens < 1:
                    await self.sleep((1 - self._tokens) / self.qps)
                    self._last = self.clock()
                    self._tokens = 0.0
                else:
                    self._tokens -= 1
        finally:
            self._essential -= 1
            if not self._essential:
                self._idle.set()

    async def _acquire_background(self) -> None:
        async with self._background:
            while True:
                if self._essential:
                    await self._idle.wait()
                    continue
                self._refill()
                # A full bucket, give or take rounding in the refill.
                if self._tokens >= self.burst - 1e-6:
                    self._tokens -= 1
                    return
                await self.sleep((self.burst - self._tokens) / self.qps)


async def load_configuration(kubeconfig: str | None = None) -> client.Configuration:
    """Server and credentials from ``kubeconfig``, else the in-cluster service account, else
    $KUBECONFIG."""
    configuration = client.Configuration()
    if kubeconfig is None:
        try:
            config.load_incluster_config(client_configuration=configuration)
            return configuration
        except config.ConfigException:
            pass
    await config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    return configuration


def decode_lines(buffer: bytes) -> tuple[list[dict[str, Any]], bytes]:
    """Complete JSON lines of a watch stream, and the incomplete rest."""
    *lines, rest = buffer.split(b"\n")
    return [json.loads(line) for line in lines if line.strip()], rest


def _decode(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return data.decode(errors="replace")


class KubeClient:
    def __init__(self, configuration: client.Configuration, *, qps: float = 500.0,
                 burst: int = 1000, concurrency: int = 64,
                 reload: Callable[[], Awaitable[client.Configuration]] = load_configuration,
                 ) -> None:
        # Unlimited pool: the semaphore bounds requests, and watches stay open beside them.
        configuration.connection_pool_maxsize = 0
        self.api = client.ApiClient(configuration)
        # The library's session looks up proxy variables and ~/.netrc on every request, which
        # doubles a create's client-side cost; the same connector (TLS, pool) serves a session
        # that does not (a kubeconfig's proxy-url still applies: it is passed per request).
        rest = self.api.rest_client
        connector = rest.pool_manager.connector
        # Idle connections are kept as long as client-go keeps them (90 s), not aiohttp's 15 s:
        # an experiment created after a quiet quarter of a minute would otherwise pay a TLS
        # handshake per request in flight. aiohttp takes this only in its constructor, and the
        # connector is the library's (its TLS settings); tests/unit/test_kube_client.py checks
        # that the attribute is still the one aiohttp reads.
        connector._keepalive_timeout = KEEPALIVE_SECONDS
        rest.pool_manager.detach()
        rest.pool_manager = aiohttp.ClientSession(connector=connector, trust_env=False,
                                                  read_bufsize=2**21)
        self.limiter = RateLimiter(qps, burst)
        self.semaphore = asyncio.Semaphore(max(concurrency, 1))
        self._reload = reload
        self._refreshing = asyncio.Lock()

    @classmethod
    async def connect(cls, kubeconfig: str | None = None, **limits: Any) -> KubeClient:
        return cls(await load_configuration(kubeconfig),
                   reload=lambda: load_configuration(kubeconfig), **limits)

    async def close(self) -> None:
        await self.api.close()

    def _token(self) -> str | None:
        return self.api.configuration.api_key.get("BearerToken")

    async def refresh_credentials(self, stale: str | None) -> None:
        """Load the credentials again, unless another request already did since ``stale``
        was sent (a burst of 401s reloads once)."""
        async with self._refreshing:
            if self._token() != stale:
                return
            fresh = await self._reload()
            current = self.api.configuration
            current.api_key = dict(fresh.api_key)
            current.refresh_api_key_hook = fresh.refresh_api_key_hook

    async def _send(self, method: str, path: str, *, body: Any, params: Mapping[str, str] | None,
                    content_type: str, timeout: aiohttp.ClientTimeout,
                    ) -> aiohttp.ClientResponse:
        """One request, sent again once with reloaded credentials if the server says 401;
        the caller reads (and releases) a successful response, errors raise ApiError."""
        for attempt in (1, 2):
            token = self._token()
            try:
                response = await self.api.call_api(
                    path, method, query_params=list((params or {}).items()),
                    header_params={"Content-Type": content_type, "Accept": "application/json"},
                    body=body, auth_settings=["BearerToken"], _preload_content=False,
                    _request_timeout=timeout)
            except Exception:
                metrics.API_REQUESTS.labels(method=method, code="<error>").inc()
                raise
            metrics.API_REQUESTS.labels(method=method, code=str(response.status)).inc()
            if response.status < 400:
                return response
            async with response:
                data = _decode(await response.read())
            if response.status == 401 and attempt == 1:
                await self.refresh_credentials(token)
                continue
            raise ApiError(response.status, data, method, path)
        raise AssertionError("unreachable")

    async def request(self, method: str, path: str, *, body: Any = None,
                      params: Mapping[str, str] | None = None,
                      content_type: str = "application/json", background: bool = False,
                      decode: bool = True) -> Any:
        """One request within the rate limit; ``background`` ones (Events, clean-up) go only
        when no other request waits (RateLimiter). Without ``decode`` the answer of a
        successful request is read and dropped (None)."""
        if background:
            # Waiting for the budget outside the concurrency bound: a queue of background
            # requests never holds the slots essential ones need.
            await self.limiter.acquire(background=True)
            async with self.semaphore:
                return await self._request(method, path, body, params, content_type, decode)
        async with self.semaphore:
            await self.limiter.acquire()
            return await self._request(method, path, body, params, content_type, decode)

    async def _request(self, method: str, path: str, body: Any,
                       params: Mapping[str, str] | None, content_type: str,
                       decode: bool) -> Any:
        response = await self._send(method, path, body=body, params=params,
                                    content_type=content_type,
                                    timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT))
        async with response:
            data = await response.read()
        return _decode(data) if decode else None

    async def stream(self, path: str, params: Mapping[str, str],
                     read_timeout: float) -> AsyncIterator[dict[str, Any]]:
        """The events of a watch, decoded; outside the concurrency bound (it stays open).
        No byte for ``read_timeout`` seconds raises ``asyncio.TimeoutError``: a connection
        that silently stopped forwarding never freezes a cache."""
        await self.limiter.acquire()
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=REQUEST_TIMEOUT,
                                        sock_read=read_timeout)
        response = await self._send("GET", path, body=None, params=params,
                                    content_type="application/json", timeout=timeout)
        async with response:
            buffer = b""
            async for chunk in response.content.iter_any():
                events, buffer = decode_lines(buffer + chunk)
                for event in events:
                    yield event

    # -- helpers ---------------------------------------------------------------------------
    async def create(self, path: str, body: Mapping[str, Any]) -> bool:
        """POST; False when it already exists (409), which with deterministic names is success.
        The created object that the server sends back is not decoded: a pod's is kilobytes of
        JSON, and the caches see it anyway."""
        try:
            await self.request("POST", path, body=body, decode=False)
        except ApiError as error:
            if error.status == 409:
                return False
            raise
        return True

    async def delete(self, path: str, uid: str | None = None, *,
                     background: bool = False) -> bool:
        """DELETE (background propagation); False when already gone or replaced.
        ``background``: at the rate limiter's low priority (RateLimiter)."""
        options: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1",
                                   "propagationPolicy": "Background"}
        if uid:
            options["preconditions"] = {"uid": uid}
        try:
            await self.request("DELETE", path, body=options, background=background)
        except ApiError as error:
            if error.status in (404, 409):
                return False
            raise
        return True

    async def merge_patch(self, path: str, body: Mapping[str, Any]) -> Any:
        return await self.request("PATCH", path, body=body,
                                  content_type="application/merge-patch+json")
