"""What to do about a Sweep, as a pure function of the Sweep and its trial Experiments.

The search keeps no state of its own: every reconcile rebuilds the trials from the child
Experiments (their hparams, phase, final metrics and the intermediate metric the operator
polls from their chiefs) and from ``status.history``, which keeps what the children alone
cannot tell after a restart (the intermediate values seen so far, a deleted trial's outcome).
Suggestions are a pure function of that history and the seed (:mod:`kubelearn_search`), so a
restarted operator asks the same questions and gets the same answers; trial names are
``<sweep>-<number>``, so a create that was already done meets AlreadyExists instead of making
a duplicate.

A trial is stopped (pruned, or because the sweep ended first) by suspending its Experiment
and annotating why: its pods go, its record and model directory stay.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from kubelearn_search import Search, TrialRecord, count
from kubelearn_spec import names
from kubelearn_spec.sweep_model import (
    FAILED,
    FAILURE_REASONS,
    NO_TRIAL_SUCCEEDED,
    PRUNED,
    RUNNING,
    STOP_STATES,
    STOPPED,
    SUCCEEDED,
    TRIAL_STATES,
    SweepSpec,
    final_state,
    finite,
    hparams_text,
    metric_text,
    not_finite,
    parse_sweep_spec,
    prune_reason,
    search_state,
    sweep_ended,
)
from kubelearn_spec.validate import SpecError

from .objects import Event, ExperimentRef
from .status import format_time, get_condition, is_true, phase, set_condition

#: Intermediate values kept per trial in status.history (the newest), so that a Sweep of
#: a thousand trials stays well under the API server's object size.
MAX_INTERMEDIATE = 64
MAX_REASON_CHARS = 256
#: The event of a trial that reached an end, by its state: type and reason.
TRIAL_ENDED = {SUCCEEDED: ("Normal", "TrialSucceeded"), FAILED: ("Warning", "TrialFailed"),
               PRUNED: ("Normal", "TrialPruned"), STOPPED: ("Normal", "TrialStopped")}


@dataclass(frozen=True)
class Stop:
    """Stop trial ``name``: ``state`` is pruned or stopped."""

    name: str
    state: str
    reason: str

    def patch(self) -> dict[str, Any]:
        """The merge patch that stops the trial's Experiment and records why."""
        return {"metadata": {"annotations": {
                    names.ANNOTATION_TRIAL_STOPPED: self.state,
                    names.ANNOTATION_TRIAL_STOP_REASON: self.reason[:MAX_REASON_CHARS]}},
                "spec": {"runPolicy": {"suspend": True}}}


@dataclass
class SweepPlan:
    """The outcome of one reconcile: trial Experiments to create (in number order) and to
    stop, then the status to write and the events to post."""

    creates: list[dict[str, Any]] = field(default_factory=list)
    stops: list[Stop] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)


def trial_number(body: Mapping[str, Any]) -> int | None:
    """The trial number a child Experiment's label gives, or None."""
    value = ((body.get("metadata") or {}).get("labels") or {}).get(names.LABEL_TRIAL, "")
    return int(value) if value.isdigit() else None


def _failure_message(status: Mapping[str, Any]) -> str:
    condition = get_condition(status.get("conditions") or [], "Failed") or {}
    return str(condition.get("message") or "the Experiment failed")


def _no_objective(metrics: Mapping[str, Any], metric: str) -> str:
    """Why final ``metrics`` give no objective value."""
    if metric in metrics:
        return not_finite(f"its final {metric}", metrics[metric])
    known = ", ".join(sorted(k for k in metrics if finite(metrics[k]) is not None))
    return f"its final metrics have no {metric} (they have: {known or 'none'})"


def outcome(body: Mapping[str, Any], metric: str) -> tuple[str, float | None, str]:
    """A trial Experiment's state, its objective value (succeeded trials) and why it did not
    succeed. A trial that succeeded without a finite ``metric`` in its final metrics
    counts as failed: it tells the search nothing."""
    status = body.get("status") or {}
    annotations = (body.get("metadata") or {}).get("annotations") or {}
    if status.get("phase") == "Succeeded":
        metrics = status.get("metrics") or {}
        value = finite(metrics.get(metric))
        why = "" if value is not None else _no_objective(metrics, metric)
        return final_state(value), value, why
    stopped = annotations.get(names.ANNOTATION_TRIAL_STOPPED)
    if stopped in STOP_STATES:
        return stopped, None, str(annotations.get(names.ANNOTATION_TRIAL_STOP_REASON) or "")
    if status.get("phase") == "Failed":
        return FAILED, None, _failure_message(status)[:MAX_REASON_CHARS]
    return RUNNING, None, ""


def intermediate(body: Mapping[str, Any], metric: str) -> tuple[int, float] | None:
    """The latest intermediate value the chief reported: ``metric`` of its last evaluation,
    at that evaluation's global step (``status.metrics.eval``)."""
    evaluation = ((body.get("status") or {}).get("metrics") or {}).get("eval")
    if not isinstance(evaluation, Mapping):
        return None
    step, value = finite(evaluation.get("global_step")), finite(evaluation.get(metric))
    if step is None or value is None:
        return None
    return int(step), value


def _searched(spec: SweepSpec, hparams: Any) -> dict[str, Any]:
    hparams = hparams if isinstance(hparams, Mapping) else {}
    return {p.name: hparams[p.name] for p in spec.parameters if p.name in hparams}


def trial_record(body: Mapping[str, Any], number: int, spec: SweepSpec,
                 previous: Mapping[str, Any] | None, now: datetime) -> dict[str, Any]:
    """The history entry of trial ``number`` from its Experiment, carrying over what the
    previous entry knew (its intermediate values and completion time)."""
    previous = previous or {}
    meta = body.get("metadata") or {}
    state, objective, reason = outcome(body, spec.objective.metric)
    record: dict[str, Any] = {
        "number": number, "name": meta.get("name", spec.trial_name(number)), "state": state,
        "hparams": _searched(spec, (body.get("spec") or {}).get("hparams"))}
    if objective is not None:
        record["objective"] = objective
    if reason:
        record["reason"] = reason
    if spec.early_stopping is not None:
        values = {str(k): v for k, v in (previous.get("intermediate") or {}).items()}
        latest = intermediate(body, spec.objective.metric)
        if latest is not None and state == RUNNING:
            values[str(latest[0])] = latest[1]
        step = finite(((body.get("status") or {}).get("metrics") or {}).get("global_step"))
        if objective is not None and step is not None:  # the final evaluation's
            values[str(int(step))] = objective
        kept = sorted(values, key=int)[-MAX_INTERMEDIATE:]
        if kept:
            record["intermediate"] = {k: values[k] for k in kept}
    started = meta.get("creationTimestamp") or previous.get("startTime")
    if started:
        record["startTime"] = started
    if state != RUNNING:
        record["completionTime"] = previous.get("completionTime") or format_time(now)
    return record


def _search_record(entry: Mapping[str, Any]) -> TrialRecord:
    """What the search sees of a history entry: a stopped trial counts as failed."""
    return TrialRecord(int(entry["number"]), dict(entry.get("hparams") or {}),
                       search_state(entry.get("state", RUNNING)),
                       finite(entry.get("objective")),
                       {int(k): float(v) for k, v in (entry.get("intermediate") or {}).items()
                        if finite(v) is not None})


def _events(before: Mapping[int, Mapping[str, Any]], after: Mapping[int, Mapping[str, Any]],
            metric: str) -> list[Event]:
    """One event per trial started, and per trial that reached an end."""
    events = []
    for number in sorted(after):
        entry, old = after[number], before.get(number)
        name, state = entry["name"], entry["state"]
        if old is None:
            events.append(Event("Normal", "TrialStarted",
                                f"Started trial {name}: {hparams_text(entry['hparams'])}"))
            if state == RUNNING:
                continue
        if old is not None and old.get("state") == state:
            continue
        if state not in TRIAL_ENDED:
            continue
        kind, reason = TRIAL_ENDED[state]
        detail = (metric_text(metric, entry["objective"]) if state == SUCCEEDED
                  else entry.get("reason", ""))
        events.append(Event(kind, reason, f"Trial {name} {state}: {detail}"))
    return events


def _best(search: Search, history: Sequence[TrialRecord],
          entries: Mapping[int, Mapping[str, Any]]) -> dict[str, Any] | None:
    best = search.best(history)
    if best is None:
        return None
    entry = entries[best.number]
    return {"name": entry["name"], "number": best.number, "hparams": dict(entry["hparams"]),
            "objective": best.objective}


def _invalid(body: Mapping[str, Any], error: SpecError, now: datetime) -> SweepPlan:
    """A Sweep the API server accepted but the model refuses (a CRD older than the
    operator): it fails, naming the field, and nothing is created."""
    status = dict(body.get("status") or {})
    conditions = status.get("conditions") or []
    message = f"Sweep spec is invalid: {error}"
    plan = SweepPlan()
    if not is_true(conditions, "Failed"):
        plan.events.append(Event("Warning", "InvalidSpec", message))
    conditions = set_condition(conditions, "Failed", True, "InvalidSpec", message, now)
    plan.status = {**status, "conditions": conditions, "phase": phase(conditions)}
    return plan


def plan_sweep(body: Mapping[str, Any], children: Sequence[Mapping[str, Any]],
               now: datetime, drawn_seed: int,
               conflicts: Mapping[int, str] | None = None) -> SweepPlan:
    """Trials to create and stop, and the new status, of the Sweep ``body`` whose trial
    Experiments (those it owns) are ``children``.

    ``drawn_seed`` is the seed used when neither the spec nor the status has one: it is
    then kept in ``status.seed``. ``conflicts`` are trials that could not be created, by
    number, and why (their name is taken): they count as failed.
    """
    meta = body.get("metadata") or {}
    old_status = body.get("status") or {}
    try:
        spec = parse_sweep_spec(body.get("spec") or {}, name=meta.get("name", ""),
                                namespace=meta.get("namespace", ""))
    except SpecError as error:
        return _invalid(body, error, now)
    seed = spec.seed if spec.seed is not None else old_status.get("seed", drawn_seed)
    search = Search(spec, seed)
    previous = {int(e["number"]): e for e in old_status.get("history") or []
                if isinstance(e, Mapping) and isinstance(e.get("number"), int)}

    entries: dict[int, dict[str, Any]] = {}
    for child in children:
        number = trial_number(child)
        if number is not None:
            entries[number] = trial_record(child, number, spec, previous.get(number), now)
    for number, old in previous.items():
        if number in entries:
            continue
        entry = dict(old)
        if entry.get("state", RUNNING) == RUNNING:  # its Experiment is gone
            entry.update(state=FAILED, reason="its Experiment was deleted",
                         completionTime=format_time(now))
        entries[number] = entry
    for number, reason in (conflicts or {}).items():
        if number not in entries:
            entries[number] = {"number": number, "name": spec.trial_name(number),
                               "state": FAILED, "hparams": {}, "reason": reason,
                               "completionTime": format_time(now)}

    conditions = list(old_status.get("conditions") or [])
    finished = is_true(conditions, "Succeeded") or is_true(conditions, "Failed")
    plan = SweepPlan()
    history = {n: _search_record(e) for n, e in entries.items()}
    if not finished:
        _prune(spec, search, entries, history, previous, now, plan)
        done, reason = search.done(list(history.values()))
        if done:
            _stop_all(entries, history, reason, now, plan)
            conditions = _finish(search, list(history.values()), reason, conditions, now,
                                 spec.objective.metric, plan)
        else:
            _create(spec, search, entries, history, body, now, plan)
            running = sum(e["state"] == RUNNING for e in entries.values())
            conditions = set_condition(conditions, "Created", True, "SweepCreated",
                                       f"Sweep {spec.name} is created.", now)
            conditions = set_condition(
                conditions, "Running", True, "SweepRunning",
                f"{running} trial(s) running, {len(entries)} of at most {spec.max_trials} "
                "started.", now)
    plan.events[:0] = _events(previous, entries, spec.objective.metric)

    counts = {state: 0 for state in TRIAL_STATES}
    for entry in entries.values():
        counts[entry["state"]] = counts.get(entry["state"], 0) + 1
    finished_trials = len(entries) - counts[RUNNING]
    status: dict[str, Any] = {
        "phase": phase(conditions), "conditions": conditions, "seed": seed,
        "trials": f"{finished_trials}/{spec.max_trials}", "counts": counts,
        "history": [entries[n] for n in sorted(entries)],
        "startTime": old_status.get("startTime") or format_time(now),
        "observedGeneration": meta.get("generation")}
    best = _best(search, list(history.values()), entries)
    if best is not None:
        status["best"] = best
    if is_true(conditions, "Succeeded") or is_true(conditions, "Failed"):
        status["completionTime"] = old_status.get("completionTime") or format_time(now)
    plan.status = status
    return plan


def _prune(spec: SweepSpec, search: Search, entries: dict[int, dict[str, Any]],
           history: dict[int, TrialRecord], previous: Mapping[int, Mapping[str, Any]],
           now: datetime, plan: SweepPlan) -> None:
    """Stops the running trials the pruner gives up on, asked again only when a trial
    reported a new intermediate value."""
    if spec.early_stopping is None:
        return
    for number in sorted(entries):
        entry = entries[number]
        if entry["state"] != RUNNING or not entry.get("intermediate"):
            continue
        if entry.get("intermediate") == (previous.get(number) or {}).get("intermediate"):
            continue
        if not search.should_prune(history[number], list(history.values())):
            continue
        reason = prune_reason(spec.objective.metric, entry["intermediate"],
                              spec.early_stopping.algorithm)
        plan.stops.append(Stop(entry["name"], PRUNED, reason))
        entry.update(state=PRUNED, reason=reason, completionTime=format_time(now))
        history[number] = _search_record(entry)


def _stop_all(entries: dict[int, dict[str, Any]], history: dict[int, TrialRecord],
              reason: str, now: datetime, plan: SweepPlan) -> None:
    for number, entry in sorted(entries.items()):
        if entry["state"] == RUNNING:
            why = sweep_ended(reason)
            plan.stops.append(Stop(entry["name"], STOPPED, why))
            entry.update(state=STOPPED, reason=why, completionTime=format_time(now))
            history[number] = _search_record(entry)


def _finish(search: Search, history: Sequence[TrialRecord], reason: str,
            conditions: Sequence[Mapping[str, Any]], now: datetime, metric: str,
            plan: SweepPlan) -> list[dict[str, Any]]:
    best = search.best(history)
    conditions = set_condition(conditions, "Running", False, reason,
                               "The sweep is over.", now)
    if reason in FAILURE_REASONS or best is None:
        why = reason if reason in FAILURE_REASONS else NO_TRIAL_SUCCEEDED
        message = (f"{count(history, FAILED)} trials failed, more than maxFailedTrials allows."
                   if why in FAILURE_REASONS else "No trial succeeded.")
        plan.events.append(Event("Warning", "SweepFailed", f"Sweep failed ({why}): {message}"))
        return set_condition(conditions, "Failed", True, why, message, now)
    message = (f"Best trial {search.spec.trial_name(best.number)}: "
               f"{metric_text(metric, best.objective)} ({hparams_text(best.hparams)}).")
    plan.events.append(Event("Normal", "SweepSucceeded", f"Sweep succeeded ({reason}): "
                                                          f"{message}"))
    return set_condition(conditions, "Succeeded", True, reason, message, now)


def _create(spec: SweepSpec, search: Search, entries: dict[int, dict[str, Any]],
            history: dict[int, TrialRecord], body: Mapping[str, Any], now: datetime,
            plan: SweepPlan) -> None:
    """Trials to start now, each suggested knowing the ones started before it."""
    meta = body.get("metadata") or {}
    owner = ExperimentRef(spec.name, spec.namespace, meta.get("uid", ""), names.SWEEP_KIND)
    while (number := search.next_number(list(history.values()))) is not None:
        try:
            hparams = search.suggest(number, list(history.values()))
        except IndexError:  # past the grid's last point
            return
        manifest = spec.trial_manifest(number, hparams)
        manifest["metadata"]["ownerReferences"] = [owner.owner_reference()]
        plan.creates.append(manifest)
        entries[number] = {"number": number, "name": spec.trial_name(number),
                           "state": RUNNING, "hparams": hparams,
                           "startTime": format_time(now)}
        history[number] = TrialRecord(number, hparams)
