"""em's JSONL metric files in this process: a torn last line, and the fsync policy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubelearn import em
from kubelearn.em.files import read_jsonl


def test_torn_last_line_is_skipped_and_next_append_starts_clean(tmp_path: Path,
                                                               monkeypatch) -> None:
    monkeypatch.setenv("EM_RUN_PARENT_DIR", str(tmp_path / "runs"))
    run = em.create_run(name="torn")
    run.log("val", {"loss": 1.0}, step=1)
    path = run.path / "metrics" / "val.jsonl"
    with open(path, "ab") as f:  # what a crash in the middle of a write leaves
        f.write(b'{"step":2,"epoch":null,"metrics":{"lo')
    assert [r["step"] for r in read_jsonl(path)] == [1]
    assert em.load_run(run.path).series("val", "loss") == ([1], [1.0])
    # A new writer of the same file (a restarted process) must not glue onto the torn line.
    from kubelearn.em.files import JsonlAppender

    appender = JsonlAppender(path, fsync_secs=0)
    appender.append({"step": 3, "metrics": {"loss": 0.5}})
    appender.close()
    assert [r["step"] for r in read_jsonl(path)] == [1, 3]
    run.finish()


@pytest.mark.parametrize("policy", ["0", "-1"])
def test_fsync_policy_from_environment(tmp_path: Path, monkeypatch, policy: str) -> None:
    monkeypatch.setenv("EM_RUN_PARENT_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("EM_FSYNC_SECS", policy)
    run = em.create_run(name="fs")
    run.log("train", {"loss": 1.0}, step=1)
    run.finish()
    lines = (run.path / "metrics" / "train.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["metrics"] == {"loss": 1.0}
    monkeypatch.setenv("EM_FSYNC_SECS", "often")
    with pytest.raises(ValueError, match="EM_FSYNC_SECS"):
        em.create_run(name="fs")
