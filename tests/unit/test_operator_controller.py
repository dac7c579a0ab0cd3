"""The controller's view of an experiment: cached objects plus those it just created."""

from __future__ import annotations

import asyncio
import time

from kubelearn_operator.aio import cancel
from kubelearn_operator.experiment_controller import Controller
from kubelearn_operator.informer import Informer
from kubelearn_operator.pods import PodState
from kubelearn_operator.settings import Settings


def _controller() -> Controller:
    controller = Controller(Settings(), client=None)  # type: ignore[arg-type]
    controller._pods["ns"] = Informer(None, "ns", "pods", "", lambda o: None,  # type: ignore[arg-type]
                                      lambda ns, e: None)
    controller._services["ns"] = Informer(None, "ns", "services", "", lambda o: None,  # type: ignore[arg-type]
                                          lambda ns, e: None)
    return controller


def test_objects_of_a_deleted_namesake_are_not_ours() -> None:
    controller = _controller()
    controller._pods["ns"].items["exp"] = {
        "exp-worker-0": PodState("exp-worker-0", "p1", "exp", "worker", 0, "Running",
                                 owner_uid="old-uid")}
    controller._services["ns"].items["exp"] = {"exp-worker-0": "old-uid"}
    observed = controller.observed(("ns", "exp"), "new-uid")
    assert observed.pods == {} and observed.services == frozenset()


def test_just_created_objects_count_until_the_cache_shows_them() -> None:
    controller = _controller()
    deadline = time.monotonic() + 30
    controller.executor.expectations.created["uid"] = {
        "pods/exp-worker-1": (deadline, "worker", 1),
        "services/exp-worker-1": (deadline, "worker", 1),
        "pods/exp-worker-2": (time.monotonic() - 1, "worker", 2)}
    observed = controller.observed(("ns", "exp"), "uid")
    assert set(observed.pods) == {"exp-worker-1"}  # the expired expectation is dropped
    assert observed.pods["exp-worker-1"].phase == "Pending"
    assert observed.services == frozenset({"exp-worker-1"})
    # Once the cache has it, the cached state is used and the expectation goes.
    controller._pods["ns"].items["exp"] = {
        "exp-worker-1": PodState("exp-worker-1", "p1", "exp", "worker", 1, "Running",
                                 owner_uid="uid")}
    observed = controller.observed(("ns", "exp"), "uid")
    assert observed.pods["exp-worker-1"].phase == "Running"
    assert set(controller.executor.expectations.created["uid"]) == {"services/exp-worker-1"}


class IdleClient:
    """A client whose requests never answer: the caches just wait."""

    async def request(self, *args: object, **kwargs: object) -> object:
        await asyncio.Event().wait()

    async def stream(self, *args: object, **kwargs: object) -> object:
        await asyncio.Event().wait()

    async def delete(self, *args: object, **kwargs: object) -> bool:
        return True


def experiment(name: str, uid: str, reconciled: bool = True) -> dict[str, object]:
    status = {"conditions": [{"type": "Created", "status": "True"}]} if reconciled else {}
    return {"metadata": {"namespace": "ns", "name": name, "uid": uid, "resourceVersion": "1"},
            "status": status}


def test_a_namespace_caches_start_once_an_experiment_there_has_a_status() -> None:
    async def scenario() -> None:
        controller = Controller(Settings(), client=IdleClient())  # type: ignore[arg-type]
        # A new experiment's first reconcile needs no cache: its creates go first.
        controller.observe_experiment("ADDED", experiment("a", "uid-a", reconciled=False))
        assert "ns" not in controller._pods
        assert controller.observed(("ns", "a"), "uid-a").pods == {}
        controller.observe_experiment("MODIFIED", experiment("a", "uid-a"))
        assert "ns" in controller._pods and "ns" in controller._services
        await cancel(controller._tasks)

    asyncio.run(scenario())


def test_a_namespace_caches_stop_with_its_last_experiment() -> None:
    async def scenario() -> None:
        controller = Controller(Settings(), client=IdleClient())  # type: ignore[arg-type]
        controller.observe_experiment("ADDED", experiment("a", "uid-a"))
        controller.observe_experiment("ADDED", experiment("b", "uid-b"))
        tasks = list(controller._informer_tasks["ns"])
        assert len(tasks) == 2 and "ns" in controller._pods

        controller.observe_experiment("DELETED", experiment("a", "uid-a"))
        await asyncio.sleep(0.01)  # its clean-up runs: "b" still needs the caches
        assert "ns" in controller._pods and not any(t.done() for t in tasks)

        controller.observe_experiment("DELETED", experiment("b", "uid-b"))
        await asyncio.sleep(0.01)
        assert "ns" not in controller._pods and "ns" not in controller._services
        assert all(t.cancelled() for t in tasks)
        assert not set(tasks) & set(controller._tasks)

        controller.observe_experiment("ADDED", experiment("c", "uid-c"))  # they start again
        assert len(controller._informer_tasks["ns"]) == 2
        await cancel(controller._tasks)

    asyncio.run(scenario())


def test_a_cache_keeps_the_newest_version_of_an_object() -> None:
    from kubelearn_operator.experiment_controller import store_newest

    def version(rv: str, uid: str = "u1") -> dict:
        return {"metadata": {"uid": uid, "resourceVersion": rv}}

    bodies: dict = {}
    store_newest(bodies, ("ns", "a"), version("5"))
    store_newest(bodies, ("ns", "a"), version("4"))  # a lagging watch event
    assert bodies[("ns", "a")]["metadata"]["resourceVersion"] == "5"
    store_newest(bodies, ("ns", "a"), version("3", uid="u2"))  # a new object of that name
    assert bodies[("ns", "a")]["metadata"]["uid"] == "u2"
