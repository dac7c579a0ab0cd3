"""``kubelearn runs``: table and JSON contents, PNG plots with the expected series."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from kubelearn import em
from kubelearn.em import cli
from tests.support import make_run, plotted_series, run_cli, table


def test_list_table_and_json(runs_dir: Path, capsys) -> None:
    a = make_run("mnist", 0.1, 10.0)
    b = make_run("mnist", 0.3, 5.0, labels=("digits", "fast"), finish=False)
    code, out, _ = run_cli(capsys, "runs", "list")
    assert code == 0
    rows = table(out)
    assert rows[0] == ["ID", "NAME", "STATUS", "CREATED", "STEP", "LOSS", "VAL LOSS", "LABELS"]
    assert rows[1][:3] == [a.id, "mnist", "Complete"]
    assert rows[1][4:] == ["50", "0.2", "0.4", "digits"]
    assert rows[2][:3] == [b.id, "mnist", "Running"]  # this process: alive
    assert rows[2][4:] == ["50", "0.1", "0.2", "digits, fast"]
    code, out, _ = run_cli(capsys, "runs", "list", "--json")
    data = json.loads(out)
    assert [r["id"] for r in data] == [a.id, b.id]
    assert data[0]["hparams"] == {"learning_rate": 0.1, "batch_size": 32}
    assert data[0]["last"] == {"train": {"loss": 0.2, "accuracy": 0.5},
                               "val": {"loss": 0.4, "accuracy": 50 / 120}}
    assert data[1]["status"] == "Running" and data[1]["last_step"] == 50
    assert "metrics" not in data[0]
    b.finish()


def test_list_of_an_empty_or_other_directory(runs_dir: Path, tmp_path: Path, capsys,
                                             monkeypatch) -> None:
    code, out, _ = run_cli(capsys, "runs", "list")
    assert code == 0 and "no runs in" in out
    code, out, _ = run_cli(capsys, "runs", "list", "--json")
    assert json.loads(out) == []
    other = tmp_path / "other"
    monkeypatch.setenv("EM_RUN_PARENT_DIR", str(other))
    run = make_run("elsewhere", 0.1, 1.0)
    for argv in (("runs", "--dir", str(other), "list", "--json"),
                 ("runs", "list", "--dir", str(other), "--json")):
        code, out, _ = run_cli(capsys, *argv)
        assert [r["id"] for r in json.loads(out)] == [run.id]


def test_show_table_and_json(runs_dir: Path, capsys) -> None:
    run = make_run("mnist", 0.1, 10.0)
    code, out, _ = run_cli(capsys, "runs", "show", run.id)
    assert code == 0
    head, hparams, metrics = out.split("\n\n")
    fields = dict(line.split(":", 1) for line in head.splitlines())
    assert fields["id"].strip() == run.id
    assert fields["status"].strip() == "Complete"
    assert fields["labels"].strip() == "digits"
    assert fields["description"].strip() == "mnist lr=0.1"
    assert table(hparams)[1:] == [["NAME", "VALUE"], ["batch_size", "32"],
                                  ["learning_rate", "0.1"]]
    assert table(metrics)[1:] == [
        ["TYPE", "METRIC", "RECORDS", "LAST STEP", "LAST", "MIN", "MAX"],
        ["train", "loss", "5", "50", "0.2", "0.2", "1"],
        ["train", "accuracy", "5", "50", "0.5", "0.1", "0.5"],
        ["val", "loss", "2", "50", "0.4", "0.4", "1"],
        ["val", "accuracy", "2", "50", "0.416667", "0.166667", "0.416667"],
    ]
    code, out, _ = run_cli(capsys, "runs", "show", "mnist", "--json")
    data = json.loads(out)
    assert data["id"] == run.id
    assert [r["step"] for r in data["metrics"]["train"]] == [10, 20, 30, 40, 50]
    assert data["metrics"]["val"][0]["metrics"] == {"loss": 1.0, "accuracy": 20 / 120}


def test_show_reports_failure_and_nan(runs_dir: Path, capsys) -> None:
    run = em.create_run(name="bad")
    run.log("train", {"loss": float("nan")}, step=1)
    run._fail("FloatingPointError: loss is nan")
    code, out, _ = run_cli(capsys, "runs", "show", "bad")
    assert "error:" in out and "FloatingPointError: loss is nan" in out
    assert ["train", "loss", "1", "1", "nan", "-", "-"] in table(out.split("metrics:")[1])
    code, out, _ = run_cli(capsys, "runs", "show", "bad", "--json")
    assert code == 0
    data = json.loads(out)  # strict JSON even with NaN
    assert data["status"] == "Failed"
    assert data["metrics"]["train"][0]["metrics"]["loss"] == "NaN"


def test_unknown_run_is_exit_code_1(runs_dir: Path, capsys) -> None:
    make_run("mnist", 0.1, 1.0)
    code, out, err = run_cli(capsys, "runs", "show", "cifar")
    assert code == 1 and out == ""
    assert "no run 'cifar'" in err
    code, _, err = run_cli(capsys, "runs", "compare", "mnist", "cifar")
    assert code == 1 and "cifar" in err
    with pytest.raises(SystemExit) as info:
        cli.main(["runs", "frobnicate"])
    assert info.value.code == 2


def test_compare_table_and_json(runs_dir: Path, capsys) -> None:
    a = make_run("mnist", 0.1, 10.0)
    b = make_run("mnist", 0.3, 5.0)
    code, out, _ = run_cli(capsys, "runs", "compare", a.id, b.id)
    assert code == 0
    rows = table(out.split("\n\n")[0])
    assert rows[0] == [a.id, b.id]
    body = {row[0]: row[1:] for row in rows[1:]}
    assert body["status"] == ["Complete", "Complete"]
    assert body["hparams.learning_rate *"] == ["0.1", "0.3"]
    assert body["hparams.batch_size"] == ["32", "32"]
    assert body["train.loss"] == ["0.2", "0.1"]
    assert body["val.loss"] == ["0.4", "0.2"]
    assert "* hyper-parameters that differ" in out
    code, out, _ = run_cli(capsys, "runs", "compare", a.id, b.id, "--json")
    data = json.loads(out)
    assert [r["id"] for r in data["runs"]] == [a.id, b.id]
    assert data["differing_hparams"] == ["learning_rate"]
    assert data["hparams"]["learning_rate"] == {a.id: 0.1, b.id: 0.3}
    assert data["metrics"]["val"]["loss"] == {a.id: 0.4, b.id: 0.2}


# -- plots ------------------------------------------------------------------------------


def drawn_colours(path: Path) -> set[tuple[int, int, int]]:
    with Image.open(path) as image:
        image.load()
        return {pixel[:3] for _, pixel in image.convert("RGB").getcolors(maxcolors=1 << 20)}


C0, C1 = (0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)  # matplotlib's first two colours


def test_plot_one_run_is_a_png_with_train_and_val_series(runs_dir: Path, capsys) -> None:
    run = make_run("mnist", 0.1, 10.0)
    code, out, _ = run_cli(capsys, "runs", "plot", "mnist", "-o", "curves.png")
    assert code == 0 and "wrote curves.png" in out
    png = runs_dir.parent / "curves.png"
    with Image.open(png) as image:
        image.verify()
    series = plotted_series(png)
    assert [(s["metric"], s["type"], s["label"]) for s in series] == [
        ("loss", "train", "train"),
        ("loss", "val", "val"),
        ("accuracy", "train", "train"),
        ("accuracy", "val", "val"),
    ]
    assert series[0]["steps"] == [10, 20, 30, 40, 50]
    assert series[0]["values"] == pytest.approx([1.0, 0.5, 10 / 30, 0.25, 0.2])
    assert series[1]["steps"] == [20, 50] and series[1]["values"] == [1.0, 0.4]
    assert {s["run"] for s in series} == {run.id}
    colours = drawn_colours(png)
    assert C0 in colours and C1 in colours  # the train and val lines were drawn


def test_plot_default_output_and_json(runs_dir: Path, capsys) -> None:
    run = make_run("mnist", 0.1, 10.0)
    code, out, _ = run_cli(capsys, "runs", "plot", run.id, "--json")
    assert code == 0
    data = json.loads(out)
    assert data["output"] == f"{run.id}.png"
    assert (runs_dir.parent / f"{run.id}.png").is_file()
    assert [(s["metric"], s["type"], s["points"]) for s in data["series"]] == [
        ("loss", "train", 5), ("loss", "val", 2), ("accuracy", "train", 5), ("accuracy", "val", 2)]


def test_compare_overlays_runs_in_one_png(runs_dir: Path, capsys) -> None:
    a = make_run("mnist", 0.1, 10.0)
    b = make_run("cifar", 0.3, 5.0)
    code, out, _ = run_cli(capsys, "runs", "compare", a.id, b.id, "-o", "both.png")
    assert code == 0 and "wrote both.png" in out
    series = plotted_series(runs_dir.parent / "both.png")
    loss = [(s["run"], s["type"]) for s in series if s["metric"] == "loss"]
    assert loss == [(a.id, "train"), (a.id, "val"), (b.id, "train"), (b.id, "val")]
    assert series[2]["label"] == f"{b.id} train"
    assert series[2]["values"] == pytest.approx([0.5, 0.25, 5 / 30, 0.125, 0.1])
    assert {C0, C1} <= drawn_colours(runs_dir.parent / "both.png")
    code, out, _ = run_cli(capsys, "runs", "plot", "mnist", "cifar", "-o", "p.png", "--json")
    assert {s["run"] for s in json.loads(out)["series"]} == {a.id, b.id}


def test_plot_without_metrics_or_with_nan(runs_dir: Path, capsys) -> None:
    empty = em.create_run(name="empty")
    empty.finish()
    code, _, err = run_cli(capsys, "runs", "plot", "empty", "-o", "e.png")
    assert code == 1 and "no metrics to plot" in err
    assert not (runs_dir.parent / "e.png").exists()
    run = em.create_run(name="nan")
    run.log("train", {"loss": 1.0}, step=1)
    run.log("train", {"loss": float("nan")}, step=2)
    run.log("train", {"loss": 0.5}, step=3)
    run.finish()
    assert run_cli(capsys, "runs", "plot", "nan", "-o", "n.png")[0] == 0
    assert plotted_series(runs_dir.parent / "n.png")[0]["values"] == [1.0, None, 0.5]


def test_plot_leaves_flat_metrics_out_but_keeps_single_points(runs_dir: Path, capsys) -> None:
    run = em.create_run(name="flat", hparams={})
    for step in range(1, 6):
        run.log("train", {"loss": 1.0 / step, "label/mean": 0.5, "learning_rate": 0.1},
                step=step)
    run.log("val", {"accuracy": 0.9}, step=5)  # one evaluation: a point worth showing
    run.finish()
    code, out, _ = run_cli(capsys, "runs", "plot", "flat", "-o", "flat.png")
    assert code == 0
    assert out.strip() == "wrote flat.png (2 series); flat, not drawn: label/mean, learning_rate"
    drawn = [(s["metric"], s["type"]) for s in plotted_series(runs_dir.parent / "flat.png")]
    assert drawn == [("loss", "train"), ("accuracy", "val")]
    code, out, _ = run_cli(capsys, "runs", "plot", "flat", "-o", "flat.png", "--json")
    assert json.loads(out)["flat"] == ["label/mean", "learning_rate"]


def test_plot_of_nothing_but_flat_metrics_still_draws_them(runs_dir: Path, capsys) -> None:
    run = em.create_run(name="allflat", hparams={})
    for step in range(1, 4):
        run.log("train", {"label/mean": 0.5}, step=step)
    run.finish()
    code, out, _ = run_cli(capsys, "runs", "plot", "allflat", "-o", "allflat.png")
    assert code == 0 and out.strip() == "wrote allflat.png (1 series)"
