"""``kubelearn runs``: table and JSON contents, PNG plots with the expected series."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from PIL import Image

from kubelearn import em
from kubelearn.em import cli
from kubelearn.em.plot import SERIES_KEY

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def runs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    parent = tmp_path / "runs"
    monkeypatch.setenv("EM_RUN_PARENT_DIR", str(parent))
    monkeypatch.chdir(tmp_path)
    return parent


def make_run(name: str, lr: float, scale: float, labels=("digits",), finish=True) -> em.Run:
    run = em.create_run(name=name, hparams={"learning_rate": lr, "batch_size": 32},
                        labels=list(labels), description=f"{name} lr={lr}")
    for step in range(10, 60, 10):
        run.log("train", {"loss": scale / step, "accuracy": step / 100}, step=step)
    for step in (20, 50):
        run.log("val", {"loss": 2 * scale / step, "accuracy": step / 120}, step=step)
    if finish:
        run.finish()
    return run


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    assert isinstance(code, int)
    out, err = capsys.readouterr()
    return code, out, err


def table(text: str) -> list[list[str]]:
    """Split a table on runs of two or more spaces."""
    return [re.split(r"\s{2,}", line.strip()) for line in text.strip().splitlines()]


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


def png_chunks(path: Path) -> list[tuple[bytes, bytes]]:
    """Parse a PNG strictly: signature, then chunks with correct CRCs, ending in IEND."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG signature"
    chunks, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert crc == zlib.crc32(kind + body), f"bad CRC in {kind!r}"
        chunks.append((kind, body))
        offset += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    return chunks


def plotted_series(path: Path) -> list[dict]:
    texts = {}
    for kind, body in png_chunks(path):
        if kind == b"tEXt":
            key, _, value = body.partition(b"\0")
            texts[key.decode("latin-1")] = value.decode("latin-1")
        elif kind == b"iTXt":
            key, _, rest = body.partition(b"\0")
            # compression flag, method, language tag \0, translated keyword \0, text
            flag, rest = rest[0], rest[2:]
            _, _, rest = rest.partition(b"\0")
            _, _, text = rest.partition(b"\0")
            texts[key.decode("latin-1")] = (zlib.decompress(text) if flag else text).decode()
    return json.loads(texts[SERIES_KEY])


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


def test_plot_without_matplotlib_says_what_to_install(runs_dir: Path, tmp_path: Path) -> None:
    make_run("mnist", 0.1, 10.0)
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from kubelearn.em import cli\n"
        "sys.exit(cli.main(['runs', 'plot', 'mnist', '-o', 'x.png']))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO / "runner"))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 1
    assert "kubelearn[plot]" in proc.stderr


def test_kubelearn_command_has_runs(runs_dir: Path, tmp_path: Path) -> None:
    run = make_run("mnist", 0.1, 10.0)
    # The kubelearn command imports kubelearn_spec (common/) for its sweep actions.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(str(REPO / d) for d in ("runner", "common")))
    proc = subprocess.run([sys.executable, "-m", "kubelearn.cli", "runs", "list", "--json"],
                          env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert [r["id"] for r in json.loads(proc.stdout)] == [run.id]


def test_a_killed_run_is_shown_as_such(runs_dir: Path, capsys) -> None:
    proc = subprocess.run(
        [sys.executable, "-c",
         "import os, signal\nfrom kubelearn import em\nem.create_run(name='gone')\n"
         "os.kill(os.getpid(), signal.SIGKILL)\n"],
        env=dict(os.environ, PYTHONPATH=str(REPO / "runner")), timeout=60)
    assert proc.returncode == -9
    code, out, _ = run_cli(capsys, "runs", "list")
    assert code == 0 and table(out)[1][2] == "Running (process gone)"
    code, out, _ = run_cli(capsys, "runs", "show", "gone", "--json")
    assert code == 0
    assert json.loads(out)["status"] == "Running" and json.loads(out)["process_gone"]


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
