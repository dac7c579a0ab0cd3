"""The pod and service caches: watch-stream decoding and how events change the cache."""

from __future__ import annotations

import json

from kubelearn_operator.informer import Informer
from kubelearn_operator.kube import decode_lines
from kubelearn_spec import names


def test_decode_lines_keeps_the_incomplete_tail() -> None:
    first = json.dumps({"type": "ADDED", "object": {"a": 1}}).encode()
    second = json.dumps({"type": "DELETED", "object": {"b": 2}}).encode()
    events, rest = decode_lines(first + b"\n" + second[:10])
    assert events == [{"type": "ADDED", "object": {"a": 1}}]
    events, rest = decode_lines(rest + second[10:] + b"\n")
    assert events == [{"type": "DELETED", "object": {"b": 2}}] and rest == b""


def _service(name: str, experiment: str | None) -> dict:
    labels = {names.LABEL_EXPERIMENT: experiment} if experiment else {}
    return {"metadata": {"name": name, "labels": labels}}


def test_events_update_the_cache_and_notify_the_experiment() -> None:
    changed: list[tuple[str, str]] = []

    def parse(obj: dict) -> tuple[str, str] | None:
        experiment = obj["metadata"]["labels"].get(names.LABEL_EXPERIMENT)
        return (experiment, obj["metadata"]["name"].upper()) if experiment else None

    informer: Informer[str] = Informer(None, "ns", "services", names.LABEL_EXPERIMENT,  # type: ignore[arg-type]
                                       parse, lambda ns, exp: changed.append((ns, exp)))
    informer._apply("ADDED", _service("a-worker-0", "a"))
    informer._apply("ADDED", _service("b-worker-0", "b"))
    assert informer.get("a") == {"a-worker-0": "A-WORKER-0"}
    informer._apply("MODIFIED", _service("a-worker-0", None))  # label removed: not ours now
    assert informer.get("a") == {}
    informer._apply("DELETED", _service("b-worker-0", "b"))
    assert informer.get("b") == {} and informer.items == {}
    assert changed == [("ns", "a"), ("ns", "b"), ("ns", "a"), ("ns", "b")]
