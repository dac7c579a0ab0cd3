"""What ``kubelearn sweep plot`` and ``kubelearn runs`` read and write stays inside the
directory they were given: names from files are one path component of their grammar, and a
symlink out of the directory is refused, not followed (:mod:`kubelearn.paths`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kubelearn import cli, paths
from kubelearn.bounded_input import InputError
from kubelearn.em.run import METRICS_DIR
from kubelearn.em.store import RUN_FILE
from tests.support import make_run, plotted_series, run_cli, table

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

ESCAPES = ["..", "../../x", "/tmp/kubelearn-escape", "a/b", "a\0b", "", ".", "x" * 300]


# -- the helper ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ESCAPES)
def test_a_name_from_a_file_must_be_one_component(name):
    with pytest.raises(InputError, match="not a valid name"):
        paths.component(name, r"[^/]*", "trial name")


@given(st.text(max_size=40))
def test_a_component_that_passes_stays_in_the_base(name):
    base = "/base/dir"
    try:
        paths.component(name, r".*", "name")
    except InputError:
        return
    joined = os.path.normpath(os.path.join(base, name))
    assert os.path.dirname(joined) == base and os.path.basename(joined) == name


def test_resolve_refuses_dotdot_and_links_out_and_keeps_links_in(tmp_path):
    base, outside = tmp_path / "base", tmp_path / "outside"
    (base / "sub").mkdir(parents=True)
    outside.mkdir()
    (base / "out").symlink_to(outside)
    (base / "in").symlink_to(base / "sub")
    assert paths.resolve(base, base / "in") == str((base / "sub").resolve())
    for path in (base / ".." / "outside", base / "out", base / "out" / "f"):
        with pytest.raises(paths.OutsideBase, match="outside"):
            paths.resolve(base, path)


def test_read_bytes_refuses_a_fifo_a_link_out_and_more_than_the_limit(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    os.mkfifo(base / "fifo")  # opened without blocking, then refused
    with pytest.raises(InputError, match="not a regular file"):
        paths.read_bytes(base, base / "fifo", 10)
    (tmp_path / "secret").write_text("s")
    (base / "link").symlink_to(tmp_path / "secret")
    with pytest.raises(paths.OutsideBase):
        paths.read_bytes(base, base / "link", 10)
    (base / "f").write_bytes(b"0123456789")
    assert paths.read_bytes(base, base / "f", 10) == b"0123456789"
    with pytest.raises(InputError, match="larger than 9 bytes"):
        paths.read_bytes(base, base / "f", 9)
    assert paths.read_tail(base, base / "f", 3) == (10, b"789")
    with pytest.raises(FileNotFoundError):
        paths.read_bytes(base, base / "none", 10)


def test_replacing_replaces_a_symlink_instead_of_writing_through_it(tmp_path):
    target = tmp_path / "precious"
    target.write_text("keep")
    (tmp_path / "out.png").symlink_to(target)
    with paths.replacing(tmp_path / "out.png") as tmp:
        Path(tmp).write_text("new")
    assert target.read_text() == "keep"
    assert not (tmp_path / "out.png").is_symlink()
    assert (tmp_path / "out.png").read_text() == "new"
    with pytest.raises(RuntimeError), paths.replacing(tmp_path / "b.png") as tmp:
        raise RuntimeError("failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png", "precious"]


# -- kubelearn sweep plot -------------------------------------------------------------------
def _facts(name: str = "sw") -> dict:
    return {"sweep": name, "objective": {"metric": "loss", "direction": "minimize"},
            "best": 0, "trials": [
                {"number": 0, "name": f"{name}-0", "state": "succeeded",
                 "hparams": {"lr": 0.1}, "objective": 0.5},
                {"number": 1, "name": f"{name}-1", "state": "succeeded",
                 "hparams": {"lr": 0.2}, "objective": 0.4}]}


def _pngs(root: Path) -> list[Path]:
    return sorted(root.rglob("*.png"))


@pytest.mark.parametrize("name", ["../../x", "ABS", "a/b", "..", "Upper"])
def test_sweep_plot_refuses_a_sweep_name_that_is_a_path(tmp_path, monkeypatch, capsys, name):
    pytest.importorskip("matplotlib")
    name = str(tmp_path / "abs") if name == "ABS" else name
    sweep, cwd = tmp_path / "sweep", tmp_path / "a" / "b"
    sweep.mkdir()
    cwd.mkdir(parents=True)
    (sweep / "sweep.json").write_text(json.dumps(_facts(name)))
    monkeypatch.chdir(cwd)
    assert cli.main(["sweep", "plot", str(sweep)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("kubelearn sweep plot: sweep.json: sweep ") and "-o" in line
    assert _pngs(tmp_path) == []
    assert cli.main(["sweep", "plot", str(sweep), "-o", "mine"]) == 0  # named by the user
    assert [p.name for p in _pngs(tmp_path)] == ["mine-objective.png", "mine-parallel.png"]


def test_sweep_plot_reads_no_sweep_json_through_a_link_out(tmp_path, monkeypatch, capsys):
    sweep, elsewhere = tmp_path / "sweep", tmp_path / "elsewhere"
    sweep.mkdir()
    elsewhere.mkdir()
    (elsewhere / "sweep.json").write_text(json.dumps(_facts()))
    (sweep / "sweep.json").symlink_to(elsewhere / "sweep.json")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["sweep", "plot", str(sweep)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "outside" in line and "not followed" in line
    assert _pngs(tmp_path) == []


def test_sweep_plot_replaces_a_symlink_at_its_output(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    (tmp_path / "sweep.json").write_text(json.dumps(_facts()))
    precious = tmp_path / "precious"
    precious.write_text("keep")
    (tmp_path / "sw-objective.png").symlink_to(precious)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["sweep", "plot", str(tmp_path)]) == 0
    assert precious.read_text() == "keep"
    assert plotted_series(tmp_path / "sw-objective.png")["numbers"] == [0, 1]


# -- kubelearn runs compare --sweep ---------------------------------------------------------
def _sweep_with_trials(tmp_path: Path, monkeypatch, names: list[str]) -> Path:
    """A sweep directory whose trials are ``names``; trial ``sw-0`` has a run."""
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    trials = [{"number": i, "name": n, "state": "succeeded", "hparams": {}, "objective": 1}
              for i, n in enumerate(names)]
    (sweep / "sweep.json").write_text(json.dumps({**_facts(), "trials": trials}))
    monkeypatch.setenv("EM_RUN_PARENT_DIR", str(sweep / "sw-0" / "runs"))
    make_run("inside", 0.1, 1.0)
    return sweep


def test_compare_sweep_skips_a_trial_named_dotdot(runs_dir, tmp_path, monkeypatch, capsys):
    make_run("outside", 0.5, 2.0)  # in tmp_path/runs, which <sweep>/../runs names
    sweep = _sweep_with_trials(tmp_path, monkeypatch, ["sw-0", "..", "/etc", "sw-0/../.."])
    code, out, err = run_cli(capsys, "runs", "compare", "--sweep", str(sweep), "--json")
    assert code == 0, err
    assert [r["name"] for r in json.loads(out)["runs"]] == ["inside"]
    warnings = err.strip().splitlines()
    assert len(warnings) == 3 and all("is not a valid name" in w for w in warnings), err


def test_compare_sweep_follows_no_trial_directory_out(runs_dir, tmp_path, monkeypatch,
                                                      capsys):
    sweep = _sweep_with_trials(tmp_path, monkeypatch, ["sw-0", "sw-1"])
    monkeypatch.setenv("EM_RUN_PARENT_DIR", str(tmp_path / "elsewhere" / "runs"))
    make_run("outside", 0.5, 2.0)
    (sweep / "sw-1").symlink_to(tmp_path / "elsewhere")
    code, out, err = run_cli(capsys, "runs", "compare", "--sweep", str(sweep), "--json")
    assert code == 0, err
    assert [r["name"] for r in json.loads(out)["runs"]] == ["inside"]
    (warning,) = err.strip().splitlines()
    assert "sw-1" in warning and "outside" in warning


# -- kubelearn runs list / show / plot ------------------------------------------------------
def _link_out(path: Path, outside: Path) -> None:
    """Moves ``path`` to ``outside`` and leaves a symlink to it in its place."""
    outside.parent.mkdir(parents=True, exist_ok=True)
    path.rename(outside)
    path.symlink_to(outside)


@pytest.mark.parametrize("what", ["run directory", RUN_FILE, "hparams.yaml", METRICS_DIR,
                                  "train.jsonl"])
def test_runs_list_follows_no_link_out_of_its_directory(runs_dir, tmp_path, capsys, what):
    good = make_run("good", 0.1, 1.0)
    bad = Path(make_run("bad", 0.1, 1.0).path)
    outside = tmp_path / "outside" / "x"
    target = {"run directory": bad, "train.jsonl": bad / METRICS_DIR / "train.jsonl"}.get(
        what, bad / what)
    _link_out(target, outside)
    code, out, err = run_cli(capsys, "runs", "list")
    assert code == 0
    assert [row[1] for row in table(out)[1:]] == ["good"]
    (warning,) = err.strip().splitlines()
    assert warning.startswith("kubelearn runs: warning: skipping run ") and bad.name in warning
    assert "outside" in warning and "Traceback" not in err
    code, _, err = run_cli(capsys, "runs", "show", good.id)
    assert code == 0 and err == ""  # the bad run is not the one asked for


def test_runs_show_of_a_run_directory_stays_inside_it(runs_dir, tmp_path, capsys):
    run = Path(make_run("r", 0.1, 1.0).path)
    _link_out(run / "hparams.yaml", tmp_path / "outside" / "hparams.yaml")
    code, _, err = run_cli(capsys, "runs", "show", str(run))
    assert code == 2
    (line,) = err.splitlines()
    assert "hparams.yaml" in line and "outside" in line


@pytest.mark.parametrize("run_id", ["../escape", "ABS", "a/b", ".."])
def test_runs_plot_names_no_file_after_an_id_that_is_a_path(runs_dir, tmp_path, monkeypatch,
                                                              capsys, run_id):
    pytest.importorskip("matplotlib")
    run_id = str(tmp_path / "abs") if run_id == "ABS" else run_id
    run = Path(make_run("r", 0.1, 1.0).path)
    meta = (run / RUN_FILE).read_text()
    (run / RUN_FILE).write_text(meta.replace(f"id: {run.name}", f"id: {json.dumps(run_id)}"))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    code, _, err = run_cli(capsys, "runs", "plot", str(run))
    assert code == 2
    (line,) = err.splitlines()
    assert "run id" in line and "-o" in line
    assert _pngs(tmp_path) == []
    code, _, _ = run_cli(capsys, "runs", "plot", str(run), "-o", "mine.png")
    assert code == 0 and (cwd / "mine.png").is_file()


def test_runs_plot_replaces_a_symlink_at_its_output(runs_dir, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    run = make_run("r", 0.1, 1.0)
    precious = tmp_path / "precious"
    precious.write_text("keep")
    (tmp_path / f"{run.id}.png").symlink_to(precious)
    code, _, err = run_cli(capsys, "runs", "plot", run.id)
    assert code == 0, err
    assert precious.read_text() == "keep"
    assert plotted_series(tmp_path / f"{run.id}.png")

