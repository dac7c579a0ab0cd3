"""A small asyncio Kubernetes API client with a client-side rate limit.

The operator creates hundreds of objects at once; the synchronous ``kubernetes`` client would
need a thread per request. This client sends plain JSON over one aiohttp connection pool and
bounds both concurrency and queries per second (token bucket), both configurable.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp


class ApiError(Exception):
    def __init__(self, status: int, body: Any, method: str, path: str) -> None:
        reason = body.get("message") if isinstance(body, dict) else body
        super().__init__(f"{method} {path}: {status} {reason}")
        self.status = status
        self.body = body


class RateLimiter:
    """Token bucket: ``qps`` tokens a second, at most ``burst`` saved up."""

    def __init__(self, qps: float, burst: int) -> None:
        self.qps = float(qps)
        self.burst = max(int(burst), 1)
        self._tokens = float(self.burst)
        self._last = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        if self.qps <= 0:
            return
        async with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.qps)
            self._last = now
            if self._tokens < 1:
                await asyncio.sleep((1 - self._tokens) / self.qps)
                self._last = time.monotonic()
                self._tokens = 0.0
            else:
                self._tokens -= 1


@dataclass(frozen=True)
class Connection:
    server: str
    headers: Mapping[str, str]
    ssl_context: ssl.SSLContext | bool


def load_connection() -> Connection:
    """Server and credentials from the in-cluster service account or $KUBECONFIG."""
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        config.load_kube_config(client_configuration=configuration)
    headers = {}
    for setting in configuration.auth_settings().values():
        if setting.get("in") == "header" and setting.get("value"):
            headers[setting["key"].title()] = setting["value"]
    context: ssl.SSLContext | bool
    if configuration.verify_ssl is False:
        context = False
    else:
        context = ssl.create_default_context(cafile=configuration.ssl_ca_cert or None)
        if configuration.cert_file:
            context.load_cert_chain(configuration.cert_file, configuration.key_file)
    return Connection(configuration.host.rstrip("/"), headers, context)


class KubeClient:
    def __init__(self, connection: Connection, *, qps: float = 500.0, burst: int = 1000,
                 concurrency: int = 64) -> None:
        self.connection = connection
        self.limiter = RateLimiter(qps, burst)
        self.semaphore = asyncio.Semaphore(max(concurrency, 1))
        self._session: aiohttp.ClientSession | None = None
        self._concurrency = max(concurrency, 1)

    async def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # Unlimited pool: the semaphore bounds requests, and watches stay open beside them.
            # Long keep-alive: TLS handshakes, not requests, dominate a small burst of creates.
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=300,
                                             ssl=self.connection.ssl_context)
            self._session = aiohttp.ClientSession(
                connector=connector, headers=dict(self.connection.headers),
                timeout=aiohttp.ClientTimeout(total=60))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(self, method: str, path: str, *, body: Any = None,
                      params: Mapping[str, str] | None = None,
                      content_type: str = "application/json") -> Any:
        session = await self.session()
        async with self.semaphore:
            await self.limiter.acquire()
            async with session.request(
                    method, self.connection.server + path, json=body, params=params,
                    headers={"Content-Type": content_type} if body is not None else None,
            ) as response:
                try:
                    data = await response.json(content_type=None)
                except (ValueError, aiohttp.ContentTypeError):
                    data = await response.text()
                if response.status >= 400:
                    raise ApiError(response.status, data, method, path)
                return data

    async def stream(self, path: str, params: Mapping[str, str]) -> AsyncIterator[Any]:
        """The events of a watch, decoded; outside the concurrency bound (it stays open)."""
        from .informer import decode_lines

        session = await self.session()
        await self.limiter.acquire()
        async with session.get(self.connection.server + path, params=params,
                               timeout=aiohttp.ClientTimeout(total=None, sock_read=None),
                               ) as response:
            if response.status >= 400:
                raise ApiError(response.status, await response.text(), "WATCH", path)
            buffer = b""
            async for chunk in response.content.iter_any():
                events, buffer = decode_lines(buffer + chunk)
                for event in events:
                    yield event

    # -- helpers ---------------------------------------------------------------------------
    async def create(self, path: str, body: Mapping[str, Any]) -> bool:
        """POST; False when it already exists (409), which with deterministic names is success."""
        try:
            await self.request("POST", path, body=body)
        except ApiError as error:
            if error.status == 409:
                return False
            raise
        return True

    async def delete(self, path: str, uid: str | None = None) -> bool:
        """DELETE (background propagation); False when already gone or replaced."""
        options: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1",
                                   "propagationPolicy": "Background"}
        if uid:
            options["preconditions"] = {"uid": uid}
        try:
            await self.request("DELETE", path, body=options)
        except ApiError as error:
            if error.status in (404, 409):
                return False
            raise
        return True

    async def merge_patch(self, path: str, body: Mapping[str, Any]) -> Any:
        return await self.request("PATCH", path, body=body,
                                  content_type="application/merge-patch+json")

    async def exists(self, path: str) -> bool:
        try:
            await self.request("GET", path)
        except ApiError as error:
            if error.status == 404:
                return False
            raise
        return True

