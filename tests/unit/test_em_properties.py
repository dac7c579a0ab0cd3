"""Property-based tests of the run-record parsers (``kubelearn.em.files``, ``reader`` and
``values``): whatever a run's files hold, a reader gives a record every command can print
(as a table and as strict JSON) or one error naming the file; never an OverflowError, never
a number no float holds, never a question to the kernel about a pid it cannot hold.

Deterministic (tests/conftest.py loads a derandomized profile with no example database).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from kubelearn.em import cli, files, reader, values  # noqa: E402

HUGE = (st.integers(min_value=-(10**400), max_value=10**400)
        | st.sampled_from([10**400, -(10**309), 2**1024, 2**66]))
NUMBERS = (st.integers() | HUGE | st.floats() | st.booleans()
           | st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "x"]))
JSON_VALUES = st.recursive(st.none() | NUMBERS | st.text(max_size=10),
                           lambda children: st.lists(children, max_size=3)
                           | st.dictionaries(st.text(max_size=6), children, max_size=3),
                           max_leaves=12)


def _json_text(value: object) -> str:
    """JSON text as another writer could produce it: huge ints and 1e400 included."""
    return json.dumps(value, allow_nan=True).replace("Infinity", "1e400").replace(
        "NaN", "1e400")


RAW_LINES = st.lists(
    st.binary(max_size=40)
    | st.builds(lambda step, m: _json_text({"step": step, "metrics": m}).encode(),
                NUMBERS | st.none(), st.dictionaries(st.text(max_size=6), NUMBERS, max_size=3))
    | JSON_VALUES.map(lambda v: _json_text(v).encode()),
    max_size=8)


def _printable(record: reader.RunRecord) -> None:
    """What ``runs list``, ``show`` and ``compare`` do with a record does not raise."""
    json.dumps(record.to_dict(with_metrics=True), allow_nan=False)
    cli._metric_rows(record)
    cli.compare_data([record])
    assert isinstance(record.process_gone(), bool)


@given(lines=RAW_LINES, torn=st.binary(max_size=20))
def test_jsonl_records_hold_only_numbers_a_float_holds(lines, torn):
    data = b"\n".join(lines) + b"\n" + torn.replace(b"\n", b"")
    skipped: list[int] = []
    records = list(files.iter_jsonl(data, "m.jsonl", skipped))
    readable = sum(1 for line in lines if line.strip())
    assert len(records) + len(skipped) == readable
    assert len(set(skipped)) == len(skipped)
    for raw in records:
        metric = reader._metric_record(raw)
        if metric is None:
            continue
        for value in [*metric.metrics.values(), metric.step, metric.epoch]:
            if value is not None:
                assert not isinstance(value, bool)
                float(value)  # never OverflowError


@given(line=st.binary(max_size=80))
def test_a_line_is_a_record_or_none(line):
    record = files.parse_jsonl_line(line, "m.jsonl:1")
    assert record is None or isinstance(record, dict)


@given(value=st.integers() | HUGE | st.booleans() | st.floats() | st.none()
       | st.text(max_size=5))
def test_is_pid_admits_only_what_os_kill_can_be_asked(value):
    if values.is_pid(value):
        assert type(value) is int and 0 < value <= values.PID_MAX < 2**31
    record = reader.RunRecord(id="x", name="x", path=Path("x"), status="Running",
                              host=socket.gethostname(), pid=value)
    assert isinstance(record.process_gone(), bool)


PIDS = (st.integers() | HUGE | st.booleans() | st.floats() | st.text(max_size=4)
        | st.sampled_from([2**66, -1, 0, values.PID_MAX + 1]))
META = st.fixed_dictionaries(
    # On this host and Running: listing asks whether its process is gone.
    {"status": st.just("Running"), "host": st.just(socket.gethostname())},
    optional={key: JSON_VALUES for key in ("id", "name", "labels", "created_at", "upload",
                                           "description", "error")} | {"pid": PIDS})


@given(meta=META | st.dictionaries(st.text(max_size=6), JSON_VALUES, max_size=4)
       | JSON_VALUES, hparams=JSON_VALUES, lines=RAW_LINES, summary=st.booleans())
def test_a_run_reads_into_a_printable_record_or_names_its_file(tmp_path_factory, meta,
                                                               hparams, lines, summary):
    import yaml

    path: Path = tmp_path_factory.mktemp("run")
    (path / "run.yaml").write_text(yaml.safe_dump(meta))
    (path / "hparams.yaml").write_text(yaml.safe_dump(hparams))
    (path / "metrics").mkdir()
    (path / "metrics" / "train.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    warnings: list[str] = []
    try:
        record = reader.load_run(path, tail_bytes=reader.LIST_TAIL_BYTES if summary else None,
                                 warn=warnings.append)
    except reader.MalformedRun as exc:
        assert str(path) in str(exc) and "\n" not in str(exc).strip()
        return
    assert len(warnings) <= 1 and all("train.jsonl" in w for w in warnings)
    _printable(record)
    for metric in record.metrics.get("train", []):
        for value in metric.metrics.values():
            float(value)  # never OverflowError


@given(steps=st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(["loss", "acc"]),
                                st.floats(allow_nan=False)), min_size=1, max_size=20))
def test_a_summary_of_a_whole_file_answers_as_the_whole_run(tmp_path_factory, steps):
    from kubelearn.em.files import JsonlAppender, encode_number

    path: Path = tmp_path_factory.mktemp("run")
    (path / "run.yaml").write_text("id: r\nname: r\nstatus: Complete\n")
    (path / "metrics").mkdir()
    appender = JsonlAppender(path / "metrics" / "train.jsonl", fsync_secs=-1)
    for step, name, value in steps:
        appender.append({"step": step, "metrics": {name: encode_number(value)}})
    appender.close()
    whole = reader.load_run(path)
    summary = reader.load_run(path, tail_bytes=reader.LIST_TAIL_BYTES)
    assert summary.last("train") == whole.last("train")
    assert summary.last_step() == whole.last_step()
    assert os.path.getsize(path / "metrics" / "train.jsonl") < reader.LIST_TAIL_BYTES
