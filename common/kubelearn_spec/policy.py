"""The run policies as pure functions: restart, back-off, deadline and success.

The operator applies them to pods, ``kubelearn local`` to processes; both call these, so an
experiment restarts, fails and succeeds alike on a cluster and on a laptop.
"""

from __future__ import annotations

from collections.abc import Callable

from .model import ExperimentSpec


def retries_failure(policy: str, exit_code: int | None) -> bool:
    """Whether a failed replica is started again under its role's restart policy.

    ExitCode: 1-127 are the program's own verdict (permanent); 128 and above mean killed by a
    signal (retried); no exit code at all (evicted, lost), or 0 from a replica that failed
    for another reason, is retried too.
    """
    if policy in ("OnFailure", "Always"):
        return True
    if policy == "ExitCode":
        return exit_code is None or exit_code == 0 or exit_code >= 128
    return False


def restarts_after_exit(policy: str, exit_code: int) -> bool:
    """Whether a replica whose process exited is started again (Always: even after success).

    ``exit_code`` is the shell's view: 128+N for a process killed by signal N.
    """
    if exit_code == 0:
        return policy == "Always"
    return retries_failure(policy, exit_code)


def pod_restart_policy(policy: str) -> str:
    """The pod's own restartPolicy: OnFailure and Always are the kubelet's to carry out;
    Never and ExitCode restarts are made by the operator (it recreates the pod)."""
    return policy if policy in ("OnFailure", "Always") else "Never"


def backoff_exceeded(restarts: int, limit: int) -> bool:
    """Whether ``restarts`` (counted across the experiment, the one to make included) are more
    than ``backoffLimit`` allows."""
    return restarts > limit


def deadline_passed(started: float, now: float, deadline: int | None) -> bool:
    """Whether ``activeDeadlineSeconds`` ran out (times in seconds on one clock)."""
    return deadline is not None and now - started >= deadline


def decides_outcome(role: str) -> bool:
    """Evaluators run beside the training: their failure is reported, never decisive."""
    return role != "evaluator"


def succeeded(spec: ExperimentSpec, replica_succeeded: Callable[[str, int], bool]) -> bool:
    """The success policy: the chief/master succeeding when there is one; else worker 0
    (``default``) or every worker (``AllWorkers``)."""
    leader = spec.leader_role
    if leader:
        return replica_succeeded(leader, 0)
    workers = spec.count("worker")
    if spec.success_policy == "AllWorkers":
        return workers > 0 and all(replica_succeeded("worker", i) for i in range(workers))
    return workers > 0 and replica_succeeded("worker", 0)


def scale_refusal(wanted: int, running: int, sync_replicas: object) -> str | None:
    """Why a change of the worker count from ``running`` to ``wanted`` is refused, or None.

    Synchronous training averages ``sync_replicas`` gradients per step, fixed when the ps
    tasks were initialized; a different worker count would change what a step means without
    a word, so the count stays. Asynchronous training takes any count: a worker that joins
    pulls and pushes, one that leaves stops pushing."""
    if wanted == running or not isinstance(sync_replicas, int) or sync_replicas <= 1:
        return None
    return (f"spec.replicas.worker: {wanted} refused: the experiment trains synchronously "
            f"(each step averages {sync_replicas} gradients), so it keeps {running} "
            f"workers; set the count back to {running}")
