"""List-and-watch caches of an experiment's pods and services.

kopf would watch every pod of a namespace and run its full machinery (diff-bases, progress)
per event; these caches ask the server for the labelled objects only and keep just what the
reconcile reads. One pod and one service cache per namespace that holds Experiments.

A watch asks the server to end it after ``watch_seconds`` and is then opened again from the
last version seen; a watch silent for twice that long is taken for dead (a connection that
stopped forwarding without closing) and the cache lists again, as it does on 410 Gone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from .kube import RESOURCES, ApiError, KubeClient

logger = logging.getLogger("kubelearn_operator")

V = TypeVar("V")
#: (object) -> (experiment name, value), or None to ignore the object.
Parser = Callable[[dict[str, Any]], "tuple[str, V] | None"]


class Gone(Exception):
    """The watch's resourceVersion is too old (410): list again."""


class Silent(Exception):
    """Nothing came over the watch for longer than the server was asked to keep it open."""


class Informer(Generic[V]):
    def __init__(self, client: KubeClient, namespace: str, plural: str, selector: str,
                 parse: Parser[V], changed: Callable[[str, str], None],
                 watch_seconds: float = 300) -> None:
        self.client = client
        self.namespace = namespace
        self.path = RESOURCES[plural].path(namespace)
        self.selector = selector
        self.parse = parse
        self.changed = changed
        self.watch_seconds = watch_seconds
        #: experiment -> object name -> value
        self.items: dict[str, dict[str, V]] = {}
        self._owner: dict[str, str] = {}  # object name -> experiment
        self.synced = asyncio.Event()

    def get(self, experiment: str) -> dict[str, V]:
        return self.items.get(experiment, {})

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                version = await self._list()
                self.synced.set()
                failures = 0
                while True:
                    version = await self._watch(version)
            except asyncio.CancelledError:
                raise
            except (Gone, Silent) as error:
                logger.info("listing %s again: %s", self.path, error)
                continue
            except Exception as error:  # e.g. no RBAC to list here yet: back off, retry
                failures += 1
                delay = min(2.0 ** (failures - 1), 30.0)
                logger.warning("watch of %s failed, listing again in %.0fs: %s",
                               self.path, delay, error)
                await asyncio.sleep(delay)

    async def _list(self) -> str:
        items: list[dict[str, Any]] = []
        params = {"labelSelector": self.selector, "limit": "500"}
        while True:
            page = await self.client.request("GET", self.path, params=params)
            items += page.get("items") or []
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                break
            params = {**params, "continue": token}
        before = set(self._owner)
        seen = set()
        for obj in items:
            seen.add(obj["metadata"]["name"])
            self._apply("MODIFIED", obj)
        for name in before - seen:
            self._remove(name)
        return str((page.get("metadata") or {}).get("resourceVersion") or "")

    async def _watch(self, version: str) -> str:
        params = {"labelSelector": self.selector, "watch": "1", "resourceVersion": version,
                  "allowWatchBookmarks": "true",
                  "timeoutSeconds": str(max(int(self.watch_seconds), 1))}
        silence = 2 * max(self.watch_seconds, 1)
        try:
            async for event in self.client.stream(self.path, params, read_timeout=silence):
                version = self._event(event, version)
        except ApiError as error:
            if error.status == 410:
                raise Gone("the resourceVersion is too old (410 Gone)") from None
            raise
        except asyncio.TimeoutError:
            raise Silent(f"nothing came over the watch for {silence:.0f}s") from None
        return version

    def _event(self, event: dict[str, Any], version: str) -> str:
        """Apply one watch event; the resourceVersion to watch from after it."""
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Gone("the resourceVersion is too old (410 Gone)")
            raise ApiError(int(obj.get("code") or 500), obj, "WATCH", self.path)
        version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            self._apply(kind, obj)
        return version

    def _apply(self, kind: str, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        if kind == "DELETED":
            self._remove(name)
            return
        parsed = self.parse(obj)
        if parsed is None:
            self._remove(name)
            return
        experiment, value = parsed
        old = self._owner.get(name)
        if old is not None and old != experiment:
            self._remove(name)
        self._owner[name] = experiment
        self.items.setdefault(experiment, {})[name] = value
        self.changed(self.namespace, experiment)

    def _remove(self, name: str) -> None:
        experiment = self._owner.pop(name, None)
        if experiment is None:
            return
        objects = self.items.get(experiment, {})
        objects.pop(name, None)
        if not objects:
            self.items.pop(experiment, None)
        self.changed(self.namespace, experiment)


