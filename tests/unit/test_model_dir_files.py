"""What the runner and the launcher read from a model directory, as outside input: only
regular files (a FIFO is refused at once instead of blocking the reader), a bounded number
of bytes, JSON parsed within the depth limit; a ``file://`` URL is the path it names.
The processes that poll these files are tested in tests/runner/test_model_dir_hostile.py."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubelearn import bounded_input, em, fs, hooks, reporting
from kubelearn.run_config import RunConfig
from kubelearn.sweep.local import Trial, read_evaluations, read_trial

DEEP = "[" * 2000 + "]" * 2000


# -- regular files only --------------------------------------------------------------------
@pytest.mark.timeout(30)  # without O_NONBLOCK, opening a FIFO blocks: the test would hang
@pytest.mark.parametrize("read", [
    lambda p: bounded_input.read_bytes(p),
    lambda p: fs.read_bytes(p, 100),
    lambda p: fs.read_text(p),
    lambda p: fs.read_tail(p, 100),
    lambda p: hooks.read_progress(os.path.dirname(p)),
    lambda p: reporting.last_evaluation(p),
])
def test_a_fifo_is_refused_at_once(tmp_path: Path, read) -> None:
    path = tmp_path / hooks.PROGRESS_FILE
    os.mkfifo(path)
    with pytest.raises(bounded_input.InputError, match="is a FIFO"):
        read(str(path))


def test_devices_directories_and_links_where_refused(tmp_path: Path) -> None:
    with pytest.raises(bounded_input.InputError, match="not a regular file"):
        fs.read_bytes("/dev/zero", 10)
    with pytest.raises(bounded_input.InputError, match="a directory"):
        fs.read_tail(str(tmp_path), 10)
    (tmp_path / "target").write_text("{}")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    assert bounded_input.read_regular(tmp_path / "link") == b"{}"
    with pytest.raises(bounded_input.InputError, match="symbolic link"):
        bounded_input.read_regular(tmp_path / "link", follow_symlinks=False)


def test_reads_are_bounded(tmp_path: Path) -> None:
    (tmp_path / hooks.PROGRESS_FILE).write_text(
        json.dumps({"global_step": 1, "pad": "x" * hooks.MAX_PROGRESS_FILE_BYTES}))
    with pytest.raises(bounded_input.InputError, match="larger than"):
        hooks.read_progress(str(tmp_path))


@pytest.mark.timeout(30)
def test_a_line_is_never_appended_to_a_fifo_or_through_a_link(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo.jsonl")
    with pytest.raises(bounded_input.InputError, match="FIFO"):
        fs.append_line(str(tmp_path / "fifo.jsonl"), "{}")
    (tmp_path / "bashrc").write_text("keep\n")
    (tmp_path / "results.jsonl").symlink_to(tmp_path / "bashrc")
    with pytest.raises(bounded_input.InputError, match="symbolic link"):
        fs.append_line(str(tmp_path / "results.jsonl"), "{}")
    assert (tmp_path / "bashrc").read_text() == "keep\n"
    fs.append_line(str(tmp_path / "new.jsonl"), "{}")
    assert (tmp_path / "new.jsonl").read_text() == "{}\n"


def test_complaints_are_said_once_until_the_source_is_fine_again() -> None:
    said: list[str] = []
    complaints = bounded_input.Complaints(said.append)
    for _ in range(3):
        complaints.bad("a", "a is bad")
    complaints.bad("b", "b is bad")
    complaints.good("a")
    complaints.bad("a", "a is bad again")
    assert said == ["a is bad", "b is bad", "a is bad again"]


# -- the parsers -----------------------------------------------------------------------------
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats()
                    | st.text(max_size=8),
                    lambda children: st.lists(children, max_size=3)
                    | st.dictionaries(st.text(max_size=8), children, max_size=3),
                    max_leaves=12)
PROGRESS_LIKE = st.fixed_dictionaries({}, optional={
    key: JSON | st.integers(-2, 2 ** 64) | st.floats()
    for key in ("global_step", "loss", "steps_per_sec", "time", "sync_replicas", "other")})


@given(st.binary(max_size=200) | JSON.map(lambda v: json.dumps(v).encode())
       | PROGRESS_LIKE.map(lambda v: json.dumps(v).encode())
       | st.integers(1, 5000).map(lambda n: ("[" * n + "]" * n).encode()))
def test_parse_progress_gives_a_typed_report_or_one_error(data: bytes) -> None:
    try:
        report = hooks.parse_progress(data, "progress.json")
    except bounded_input.InputError as exc:
        assert str(exc).startswith("progress.json: ") and "\n" not in str(exc)
        return
    assert set(report) <= {"global_step", "loss", "steps_per_sec", "time", "sync_replicas"}
    assert isinstance(report["global_step"], int) and report["global_step"] >= 0
    for key in ("loss", "steps_per_sec", "time"):
        value = report.get(key)
        assert value is None or (isinstance(value, (int, float)) and math.isfinite(value))
    # What the launcher does with it.
    int(report["global_step"])
    float(report.get("steps_per_sec") or 0.0)
    if report.get("loss") is not None:
        assert f"{report['loss']:.6g}"


def test_progress_nested_thousands_deep_is_refused() -> None:
    with pytest.raises(bounded_input.InputError, match="nested deeper"):
        hooks.parse_progress(('{"global_step": ' + DEEP + "}").encode(), "progress.json")


@given(st.lists(st.binary(max_size=60) | JSON.map(json.dumps).map(str.encode)
                | st.integers(100, 3000).map(lambda n: ("[" * n + "]" * n).encode()),
                max_size=6))
def test_results_lines_give_evaluations_whatever_they_hold(lines: list[bytes]) -> None:
    text = b"\n".join(lines).decode("utf-8", "replace")
    evaluations = read_evaluations(text)
    assert all(isinstance(e, dict) for e in evaluations)


def test_a_deep_last_evaluation_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_text('{"global_step": 5, "loss": 0.5}\n{"x": ' + DEEP[:3000] + "}\n")
    assert reporting.last_evaluation(str(path)) == {"global_step": 5, "loss": 0.5}


# -- file:// URLs ----------------------------------------------------------------------------
@pytest.mark.parametrize(("url", "path"), [
    ("file:///abs/path", "/abs/path"), ("FILE:///abs/path", "/abs/path"),
    ("file://localhost/abs/path", "/abs/path"), ("/plain/path", "/plain/path"),
    ("relative/path", "relative/path"), ("s3://bucket/x", "s3://bucket/x")])
def test_a_file_url_is_the_path_it_names(url: str, path: str) -> None:
    assert fs.local_path(url) == path


@pytest.mark.parametrize("url", ["file://host/abs/path", "file://relative", "file://"])
def test_a_file_url_naming_no_local_path_is_refused(url: str) -> None:
    with pytest.raises(fs.ModelDirError, match="file:///abs/path"):
        fs.local_path(url)
    with pytest.raises(fs.ModelDirError):
        fs.check(url, "--model-dir")


def test_nothing_named_file_is_made_for_a_file_url(tmp_path: Path, monkeypatch) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    url = f"file://{tmp_path}/m"
    assert RunConfig(model_dir=url).model_dir == f"{tmp_path}/m"
    monkeypatch.setenv("EM_RUN_PARENT_DIR", f"{url}/runs")
    run = em.create_run(name="r")
    run.finish()
    assert Path(run.path).parent == tmp_path / "m" / "runs"
    assert em.run.parent_dir(f"{url}/runs") == tmp_path / "m" / "runs"
    assert list(work.iterdir()) == []


@pytest.mark.timeout(30)
def test_a_sweep_reads_a_trial_past_bad_files_saying_so_once(tmp_path: Path) -> None:
    model_dir = tmp_path / "trial-0"
    (model_dir / "eval").mkdir(parents=True)
    os.mkfifo(model_dir / "eval" / "results.jsonl")
    (model_dir / hooks.PROGRESS_FILE).write_text('{"global_step": ' + DEEP + "}")
    trial = Trial(0, "trial-0", {}, str(model_dir), str(tmp_path / "t.yaml"),
                  str(tmp_path / "t.log"))
    said: list[str] = []
    complaints = bounded_input.Complaints(said.append)
    for _ in range(3):
        assert read_trial(trial, "loss", complaints) == []
    assert trial.steps is None
    assert len(said) == 2 and "is a FIFO" in said[0] and "nested deeper" in said[1], said
