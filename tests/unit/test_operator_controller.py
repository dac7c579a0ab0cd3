"""The controller's view of an experiment: cached objects plus those it just created."""

from __future__ import annotations

import time

from kubelearn_operator.controller import Controller
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
