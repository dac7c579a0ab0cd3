"""Run files written by someone else, or torn: ``kubelearn runs`` skips a malformed run with
one warning naming it and shows the others; names, folders and EM_USER stay in the store."""

from __future__ import annotations

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
