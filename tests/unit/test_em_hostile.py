"""Run files written by someone else, or torn: ``kubelearn runs`` skips a malformed run with
one warning naming it and shows the others; names, folders and EM_USER stay in the store."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from kubelearn import em
from kubelearn.em import cli, reader, store

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8))


def _good_run(name: str = "good") -> Path:
    run = em.create_run(name=name, hparams={"lr": 0.1})
    run.log("train", {"loss": 0.5}, step=1)
    run.finish()
    return Path(run.path)


MALFORMED = {
    "bad YAML": ("run.yaml", "id: [unclosed\n"),
    "not a mapping": ("run.yaml", "- 1\n- 2\n"),
    "wrong types": ("run.yaml", "id: x\nname: [1, 2]\nstatus: {a: 1}\n"),
    "labels not strings": ("run.yaml", "id: x\nlabels: [1, {a: b}]\n"),
    "alias bomb": ("run.yaml", BOMB),
    "binary": ("run.yaml", "\udcff\udcfe\x00"),
    "hparams not a mapping": ("hparams.yaml", "just a string\n"),
    "hparams bad YAML": ("hparams.yaml", "a: : :\n  - [\n"),
}


@pytest.mark.parametrize("label", list(MALFORMED))
def test_a_malformed_run_is_skipped_with_one_warning(runs_dir, capsys, label):
    good = _good_run()
    bad = _good_run("bad")
    name, text = MALFORMED[label]
    (bad / name).write_bytes(text.encode("utf-8", "surrogateescape"))
    code = cli.main(["runs", "list"])
    out, err = capsys.readouterr()
    assert code == 0
    assert good.name in out and bad.name not in out
    warnings = err.strip().splitlines()
    assert len(warnings) == 1 and str(bad) in warnings[0], err
    assert "Traceback" not in err
    code = cli.main(["runs", "show", str(bad)])
    _, err = capsys.readouterr()
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(bad) in err


def test_out_of_range_and_torn_metric_lines_are_skipped(runs_dir, capsys):
    run = _good_run()
    with open(run / "metrics" / "train.jsonl", "a") as handle:
        handle.write('{"step": 2, "metrics": {"loss": 1e400}}\n')
        handle.write('{"step": 3, "metrics": {"loss": 0.25}}\n')
        handle.write('[1, 2]\n')
        handle.write('{"step": 4, "metrics": {"loss": 0.1')  # torn last line
    record = reader.load_run(run)
    assert [r.step for r in record.metrics["train"]] == [1, 3]
    assert cli.main(["runs", "list"]) == 0
    assert "0.25" in capsys.readouterr().out


@pytest.mark.parametrize("user", ["../../escape", "a/b", "..", "x\n", ""])
def test_em_user_cannot_leave_the_store(runs_dir, monkeypatch, user):
    monkeypatch.setenv("EM_USER", user)
    if not user:  # falls back to the login name, which is a valid folder name
        assert store.folder_parts("cv") == [store.current_user(), "cv"]
        return
    with pytest.raises(ValueError, match="EM_USER"):
        store.folder_parts("cv")


@pytest.mark.parametrize("folder", ["../x", "/a/../../b", "a/.hidden", "a\\..\\b", "a\0b"])
def test_folders_cannot_leave_the_store(runs_dir, folder):
    with pytest.raises(ValueError, match="folder"):
        store.folder_parts(folder)


@pytest.mark.parametrize("name", ["../x", "a/b", "x\n", ".hidden", "", "a" * 200])
def test_run_names_cannot_leave_the_run_directory(runs_dir, name):
    with pytest.raises(ValueError, match="name"):
        em.create_run(name=name)
    assert not runs_dir.exists() or not any(runs_dir.iterdir())


@pytest.mark.parametrize("text", ["name: [unclosed\n", BOMB, "\udcff\x00"])
def test_a_config_file_with_bad_yaml_is_a_value_error_naming_it(runs_dir, text):
    config = runs_dir.parent / "run-config.yaml"
    config.write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(ValueError, match=r"run-config\.yaml"):
        em.create_run(config_path=config)


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, text
    path.write_text(text.replace(old, new))


@pytest.mark.parametrize("pid", [2**66, -1, True, "12", 1 << 23, 1.5])
def test_a_run_whose_pid_is_no_process_id_is_skipped_with_one_warning(runs_dir, capsys, pid):
    good = _good_run()
    bad = _good_run("bad")
    meta = bad / "run.yaml"
    _edit(meta, "status: Complete", "status: Running")  # on this host: its pid is asked
    _edit(meta, f"pid: {os.getpid()}", f"pid: {json.dumps(pid)}")
    for argv in (["runs", "list"], ["runs", "list", "--json"]):
        code = cli.main(argv)
        out, err = capsys.readouterr()
        assert code == 0, err
        assert good.name in out and bad.name not in out
        (warning,) = err.strip().splitlines()
        assert str(bad) in warning and "not a process id" in warning


@pytest.mark.parametrize("pid", [2**66, -1, 0, True, None, "x"])
def test_process_gone_never_asks_the_kernel_about_an_impossible_pid(pid):
    record = reader.RunRecord(id="x", name="x", path=Path("x"), status="Running",
                              host=socket.gethostname(), pid=pid)
    assert record.process_gone() is False


@pytest.mark.parametrize("line", [
    f'{{"step": 2, "metrics": {{"loss": {10**400}}}}}',
    f'{{"step": 2, "metrics": {{"loss": -{10**309}}}}}',
    f'{{"step": {10**400}, "metrics": {{"loss": 0.1}}}}',
    '{"step": 2, "metrics": {"loss": 1e400}}',
    '{"step": 2, "metrics": {"loss": ' + "9" * 5000 + "}}",
])
def test_metric_numbers_no_float_holds_are_skipped_with_one_warning(runs_dir, capsys, line):
    run = _good_run()
    with open(run / "metrics" / "train.jsonl", "a") as handle:
        handle.write(line + "\n" + line + "\n")
    for argv in (["runs", "list"], ["runs", "show", str(run)], ["runs", "show", "good"],
                 ["runs", "show", "good", "--json"], ["runs", "compare", "good"]):
        code = cli.main(argv)
        _, err = capsys.readouterr()
        assert code == 0, (argv, err)
        (warning,) = err.strip().splitlines()
        assert "train.jsonl: skipped 2 unreadable lines" in warning, warning
    assert reader.load_run(run).series("train", "loss") == ([1], [0.5])


def test_bools_are_not_metric_values_nor_steps(runs_dir):
    run = _good_run()
    with open(run / "metrics" / "train.jsonl", "a") as handle:
        handle.write('{"step": true, "metrics": {"loss": true, "acc": 0.5}}\n')
    record = reader.load_run(run)
    assert record.metrics["train"][-1].step is None
    assert record.metrics["train"][-1].metrics == {"acc": 0.5}


def test_hparams_no_json_number_holds_are_printed_as_strings(runs_dir, capsys):
    run = _good_run()
    (run / "hparams.yaml").write_text("lr: .inf\nnested: {x: [.nan, -.inf]}\nbig: 1.0e+400\n")
    code = cli.main(["runs", "list", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert json.loads(out)[0]["hparams"] == {"lr": "Infinity", "big": "Infinity",
                                             "nested": {"x": ["NaN", "-Infinity"]}}
    code = cli.main(["runs", "show", "good", "--json"])
    out, err = capsys.readouterr()
    assert code == 0 and json.loads(out)["hparams"]["lr"] == "Infinity", err


def test_list_reads_only_the_end_of_a_long_metrics_file(runs_dir, capsys):
    run = _good_run()
    path = run / "metrics" / "train.jsonl"
    junk = b"{" * (reader.LIST_TAIL_BYTES + 10) + b"\n"  # an unreadable line, far back
    good = b"".join(b'{"step": %d, "metrics": {"loss": %d.5}}\n' % (s, s) for s in range(2, 50))
    path.write_bytes(path.read_bytes() + junk + good)
    assert cli.main(["runs", "list", "--json"]) == 0
    out, err = capsys.readouterr()
    assert err == ""  # the junk line is never read
    (listed,) = json.loads(out)
    assert listed["last_step"] == 49 and listed["last"]["train"] == {"loss": 49.5}
    assert cli.main(["runs", "show", "good"]) == 0  # the whole file: its junk is seen
    (warning,) = capsys.readouterr().err.strip().splitlines()
    assert "skipped 1 unreadable line" in warning and "line 2" in warning


def test_a_summary_answers_last_and_last_step_as_the_whole_run(runs_dir):
    run = em.create_run(name="s")
    run.log("train", {"loss": 0.5, "acc": 0.1}, step=3)
    run.log("train", {"loss": 0.25}, step=7)
    run.log("train", {"loss": 0.75}, step=5)  # steps need not grow
    run.log("val", {"loss": 1.0}, step=4)
    run.finish()
    whole = reader.load_run(run.path)
    summary = reader.load_run(run.path, tail_bytes=reader.LIST_TAIL_BYTES)
    assert summary.summary and not whole.summary
    for kind in ("train", "val"):
        assert summary.last(kind) == whole.last(kind)
    assert summary.last_step() == whole.last_step() == 7
    assert summary.to_dict(with_metrics=False) == {**whole.to_dict(with_metrics=False)}


def test_more_metrics_files_than_are_read_is_one_warning(runs_dir, capsys):
    run = _good_run()
    for i in range(reader.MAX_METRIC_FILES + 5):
        (run / "metrics" / f"extra{i:02d}.jsonl").write_text('{"metrics": {"x": 1}}\n')
    code = cli.main(["runs", "list", "--json"])
    out, err = capsys.readouterr()
    assert code == 0
    (warning,) = err.strip().splitlines()
    assert f"more than {reader.MAX_METRIC_FILES} metrics files" in warning
    assert len(json.loads(out)[0]["last"]) == reader.MAX_METRIC_FILES
    assert "train" in json.loads(out)[0]["last"]


CREDENTIALS = {
    "an INI file": "[default]\naws_access_key_id = AKIAEXAMPLE\n"
                   "aws_secret_access_key = wJalrXUtnFEMI-SECRET\n",
    "a shell file": "export TOKEN=wJalrXUtnFEMI-SECRET\n",
    "a line with a colon": "token: wJalrXUtnFEMI-SECRET: more\n",
    "an undefined alias": "token: *wJalrXUtnFEMI-SECRET\n",
    "a tab": "token:\n\twJalrXUtnFEMI-SECRET\n",
}


@pytest.mark.parametrize("label", list(CREDENTIALS))
def test_a_run_file_linked_to_a_credentials_file_is_never_quoted(runs_dir, capsys, tmp_path,
                                                                  label):
    bad = _good_run("bad")
    secret = tmp_path / "credentials"
    secret.write_text(CREDENTIALS[label])
    (bad / "run.yaml").unlink()
    (bad / "run.yaml").symlink_to(secret)
    assert cli.main(["runs", "list"]) == 0
    _, err = capsys.readouterr()
    code = cli.main(["runs", "show", str(bad)])
    _, show_err = capsys.readouterr()
    assert code == 2
    for message in (err, show_err):
        assert len(message.strip().splitlines()) == 1, message
        assert str(bad / "run.yaml") in message, message
        assert "SECRET" not in message and "AKIA" not in message, message
