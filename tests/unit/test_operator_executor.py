"""The executor's creates when the namespace is being deleted (a stub client, no cluster)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from typing import Any

from kubelearn_operator.events import EventRecorder
from kubelearn_operator.executor import Executor
from kubelearn_operator.experiment_plan import Plan
from kubelearn_operator.kube import ApiError
from kubelearn_operator.objects import Event, ExperimentRef

#: What the API server answers a create in a namespace being deleted (the namespace
#: lifecycle admission plugin).
TERMINATING = {
    "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403,
    "message": 'pods "exp-worker-0" is forbidden: unable to create new content in namespace '
               "ns because it is being terminated",
    "details": {"name": "exp-worker-0", "kind": "pods", "causes": [{
        "reason": "NamespaceTerminating", "field": "metadata.namespace",
        "message": "namespace ns is being terminated"}]}}
QUOTA = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden",
         "code": 403, "message": "exceeded quota"}


class StubClient:
    """Refuses the first create with ``first``; the others would take a while (as behind
    the rate limiter) and then succeed."""

    def __init__(self, first: dict[str, Any]) -> None:
        self.first = first
        self.started: list[str] = []
        self.finished: list[str] = []

    async def create(self, path: str, body: dict[str, Any]) -> bool:
        name = body["metadata"]["name"]
        self.started.append(name)
        if len(self.started) == 1:
            await asyncio.sleep(0)
            raise ApiError(403, self.first, "POST", path)
        await asyncio.sleep(0.05)
        self.finished.append(name)
        return True


def manifest(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {}}}


def run(first: dict[str, Any]) -> tuple[StubClient, Executor, EventRecorder, Any]:
    client = StubClient(first)
    clock = lambda: datetime(2026, 1, 1, tzinfo=timezone.utc)  # noqa: E731
    events = EventRecorder(client, clock)  # type: ignore[arg-type]
    executor = Executor(client, events, clock, lambda key, body: None)  # type: ignore[arg-type]
    plan = Plan(create_services=[manifest(f"exp-worker-{i}") for i in range(10)],
                create_pods=[manifest(f"exp-worker-{i}") for i in range(10)])
    ref = ExperimentRef("exp", "ns", "uid")

    async def scenario() -> Any:
        try:
            await executor._create_all(ref, plan)
        except ApiError as error:
            return error
        return None

    return client, executor, events, asyncio.run(scenario())


def test_a_namespace_being_deleted_stops_the_creates_quietly() -> None:
    client, executor, events, raised = run(TERMINATING)
    assert raised is None  # nothing to retry: the namespace and the Experiment are going
    assert client.finished == []  # the creates still waiting were cancelled
    assert events._queue.empty()  # no FailedCreate, no SuccessfulCreate
    assert "uid" in executor.expectations.doomed
    assert not executor.expectations.reported


def test_nothing_more_is_done_for_an_experiment_in_a_going_namespace() -> None:
    client, executor, _, _ = run(TERMINATING)
    started = len(client.started)
    asyncio.run(executor._create_all(ExperimentRef("exp", "ns", "uid"),
                                     Plan(create_pods=[manifest("exp-worker-0")])))
    assert len(client.started) == started
    # Nor is its status written (the stub has no merge_patch), its pods deleted or told of.
    body = {"metadata": {"name": "exp", "namespace": "ns", "uid": "uid"}, "status": {}}
    asyncio.run(executor.execute(("ns", "exp"), body, Plan(
        status={"phase": "Running"}, create_pods=[manifest("exp-worker-0")],
        delete_pods=[("exp-worker-1", "pod-uid")], events=[Event("Normal", "X", "x")])))
    assert len(client.started) == started and executor.events._queue.empty()
    executor.expectations.forget("uid")  # the Experiment is gone: a namesake starts afresh
    assert "uid" not in executor.expectations.doomed


def test_any_other_refusal_is_told_and_retried_and_the_rest_are_made() -> None:
    client, executor, events, raised = run(QUOTA)
    assert isinstance(raised, ApiError) and raised.status == 403
    assert len(client.finished) == 19
    assert not executor.expectations.doomed
    reasons = set()
    while not events._queue.empty():
        reasons.add(events._queue.get_nowait()["reason"])
    # Pods go first: the refused one is a pod.
    assert reasons == {"FailedCreatePod", "SuccessfulCreatePod", "SuccessfulCreateService"}


def test_namespace_terminating_is_read_from_the_status_causes() -> None:
    assert ApiError(403, TERMINATING, "POST", "/p").namespace_terminating
    assert not ApiError(403, QUOTA, "POST", "/p").namespace_terminating
    assert not ApiError(403, "forbidden", "POST", "/p").namespace_terminating
    assert not ApiError(500, {"details": {"causes": None}}, "POST", "/p").namespace_terminating
