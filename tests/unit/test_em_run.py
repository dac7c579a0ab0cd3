"""create_run / Run: files on disk, config precedence, validation, status."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from kubelearn import em
from kubelearn.em.files import read_jsonl


def _meta(run: em.Run) -> dict:
    return yaml.safe_load((run.path / "run.yaml").read_text())


def test_run_directory_name_and_files(runs_dir: Path) -> None:
    run = em.create_run(name="cnn_keras", hparams={"lr": 0.001, "layers": [64, 32]},
                        labels=["Keras"], description="digits")
    assert run.path.parent == runs_dir
    assert re.fullmatch(r"cnn_keras_\d{6}_\d{6}_[a-z0-9]{6}", run.path.name)
    assert run.id == run.path.name
    assert sorted(p.name for p in run.path.iterdir()) == ["hparams.yaml", "metrics", "run.yaml"]
    meta = _meta(run)
    assert meta["name"] == "cnn_keras"
    assert meta["status"] == "Running"
    assert meta["labels"] == ["Keras"]
    assert meta["description"] == "digits"
    assert meta["finished_at"] is None
    assert yaml.safe_load((run.path / "hparams.yaml").read_text()) == {
        "lr": 0.001, "layers": [64, 32]}
    run.finish()


def test_default_parent_dir_is_dot_em_runs(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("EM_RUN_PARENT_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    run = em.create_run()
    assert run.name == "default"
    assert run.path.parent.resolve() == (tmp_path / ".em" / "runs").resolve()
    run.finish()


def test_two_runs_of_one_name_get_distinct_directories(runs_dir: Path) -> None:
    a, b = em.create_run(name="x"), em.create_run(name="x")
    assert a.path != b.path
    a.finish()
    b.finish()


def test_status_running_then_complete(runs_dir: Path) -> None:
    run = em.create_run(name="s")
    assert run.status == "Running"
    run.finish()
    assert run.status == "Complete"
    meta = _meta(run)
    assert meta["status"] == "Complete"
    assert meta["finished_at"]
    run.finish()  # idempotent
    assert _meta(run)["finished_at"] == meta["finished_at"]


def test_with_block_fails_the_run_on_exception(runs_dir: Path) -> None:
    with pytest.raises(KeyError), em.create_run(name="w") as run:
        raise KeyError("missing")
    assert run.status == "Failed"
    assert _meta(run)["error"] == "KeyError: 'missing'"
    with em.create_run(name="ok") as ok:
        pass
    assert ok.status == "Complete"


def test_log_writes_jsonl_per_type_with_aliases(runs_dir: Path) -> None:
    run = em.create_run(name="m")
    run.log("train", {"loss": 1.5, "accuracy": 0.25}, step=10, epoch=1)
    run.log("training", {"loss": 1.0}, step=20)
    for alias in ("val", "validate", "validation", "evaluate", "EVALUATE"):
        run.log(alias, {"loss": 0.5}, step=20)
    run.log("testing", {"accuracy": 0.9})
    run.log("test", {"accuracy": 0.95})
    run.finish()
    files = sorted(p.name for p in (run.path / "metrics").iterdir())
    assert files == ["test.jsonl", "train.jsonl", "val.jsonl"]
    lines = (run.path / "metrics" / "train.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    assert first["step"] == 10 and first["epoch"] == 1
    assert first["metrics"] == {"loss": 1.5, "accuracy": 0.25}
    assert first["time"]
    assert json.loads(lines[1])["epoch"] is None
    assert len(list(read_jsonl(run.path / "metrics" / "val.jsonl"))) == 5
    assert [r["step"] for r in read_jsonl(run.path / "metrics" / "test.jsonl")] == [None, None]


def test_numpy_scalars_and_nan_are_numbers(runs_dir: Path) -> None:
    run = em.create_run(name="np")
    run.log("train", {"a": np.float32(0.5), "b": np.int64(3), "c": np.array(2.0),
                      "nan": float("nan"), "inf": np.float64("inf"), "ninf": -math.inf},
            step=np.int32(4))
    run.finish()
    raw = (run.path / "metrics" / "train.jsonl").read_text()
    record = json.loads(raw)  # strict JSON: no NaN literal
    assert "NaN" not in raw.replace('"NaN"', "")
    assert record["metrics"] == {"a": 0.5, "b": 3, "c": 2.0, "nan": "NaN", "inf": "Infinity",
                                 "ninf": "-Infinity"}
    loaded = em.load_run(run.path)
    values = loaded.metrics["train"][0].metrics
    assert math.isnan(values["nan"]) and values["inf"] == math.inf
    assert values["ninf"] == -math.inf and values["b"] == 3
    assert loaded.metrics["train"][0].step == 4


@pytest.mark.parametrize(
    ("metrics", "needle"),
    [
        ({"loss": "0.5"}, "loss='0.5'"),
        ({"loss": 1.0, "acc": None}, "acc=None"),
        ({"flag": True}, "flag=True"),
        ({"vec": [1.0, 2.0]}, "vec=[1.0, 2.0]"),
        ({"c": 1j}, "c=1j"),
        ({"arr": np.zeros(3)}, "arr="),
    ],
)
def test_metrics_that_are_not_numbers_raise_naming_them(runs_dir, metrics, needle) -> None:
    run = em.create_run(name="bad")
    with pytest.raises(ValueError, match="not numbers") as info:
        run.log("train", metrics, step=1)
    assert needle in str(info.value)
    run.finish()
    assert not (run.path / "metrics" / "train.jsonl").exists()


def test_bad_log_arguments(runs_dir: Path) -> None:
    run = em.create_run(name="bad")
    with pytest.raises(ValueError, match="unknown log type 'eval'"):
        run.log("eval", {"loss": 1.0})
    with pytest.raises(ValueError, match="metrics must be a mapping"):
        run.log("train", [("loss", 1.0)])
    with pytest.raises(ValueError, match="at least one"):
        run.log("train", {})
    with pytest.raises(ValueError, match="step"):
        run.log("train", {"loss": 1.0}, step=1.5)
    with pytest.raises(ValueError, match="epoch"):
        run.log("train", {"loss": 1.0}, epoch=-1)
    run.finish()
    with pytest.raises(RuntimeError, match="Complete"):
        run.log("train", {"loss": 1.0})


def test_hparams_dict_like_saved_and_frozen_once_training_starts(runs_dir: Path) -> None:
    run = em.create_run(name="h", hparams={"lr": 0.1})
    run.hparams["batch_size"] = np.int64(32)
    run.hparams.update({"hidden": (64, 32)})
    del run.hparams["lr"]
    assert dict(run.hparams) == {"batch_size": 32, "hidden": [64, 32]}
    assert yaml.safe_load((run.path / "hparams.yaml").read_text()) == dict(run.hparams)
    run.log("val", {"loss": 1.0})  # evaluation alone does not start training
    run.hparams["lr"] = 0.2
    run.log("train", {"loss": 1.0}, step=1)
    with pytest.raises(RuntimeError, match="after training started"):
        run.hparams["lr"] = 0.3
    assert yaml.safe_load((run.path / "hparams.yaml").read_text())["lr"] == 0.2
    run.finish()


def test_hparams_accepts_an_object_with_values(runs_dir: Path) -> None:
    class HP:
        def values(self):
            return {"learning_rate": 0.3}

    run = em.create_run(name="hp", hparams=HP())
    assert dict(run.hparams) == {"learning_rate": 0.3}
    with pytest.raises(ValueError, match=r"hparams\['f'\]"):
        run.hparams["f"] = object()
    run.finish()


def test_labels_and_description_are_saved(runs_dir: Path) -> None:
    run = em.create_run(name="l")
    run.labels = ["a", "b"]
    run.description = "changed"
    assert _meta(run)["labels"] == ["a", "b"]
    assert _meta(run)["description"] == "changed"
    run.finish()


def test_config_file_wins_over_arguments(runs_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "run_config.yaml"
    config.write_text(
        "name: cnn_keras\nhparams:\n  batch_size: 32\n  learning_rate: 0.001\n"
        "labels:\n- Keras\ndescription: Train a simple CNN.\n"
    )
    run = em.create_run(config_path=str(config), name="ignored", hparams={"batch_size": 8},
                        labels=["x"], description="arg")
    assert run.name == "cnn_keras"
    assert dict(run.hparams) == {"batch_size": 32, "learning_rate": 0.001}
    assert run.labels == ["Keras"]
    assert run.description == "Train a simple CNN."
    run.finish()
    partial = tmp_path / "partial.yaml"
    partial.write_text("description: from file\n")
    run = em.create_run(config_path=partial, name="from_arg", labels=["y"])
    assert (run.name, run.labels, run.description) == ("from_arg", ["y"], "from file")
    run.finish()


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("nmae: typo\n", "unknown keys nmae"),
        ("- a\n- b\n", "expected a mapping"),
        ("conflict_strategy: merge\n", "conflict_strategy 'merge'"),
        ("name: has space\n", "name 'has space'"),
        ("labels: one\n", "labels"),
        ("auto_upload: 'yes'\n", "auto_upload"),
    ],
)
def test_bad_config_values_raise_value_error(runs_dir, tmp_path, text, match) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(text)
    with pytest.raises(ValueError, match=match):
        em.create_run(config_path=config)


def test_bad_arguments_raise_value_error(runs_dir: Path) -> None:
    with pytest.raises(ValueError, match="conflict_strategy 'overwrite'"):
        em.create_run(conflict_strategy="overwrite")
    with pytest.raises(ValueError, match=r"name '\.\./x'"):
        em.create_run(name="../x")
    with pytest.raises(ValueError, match="hparams must be a mapping"):
        em.create_run(hparams=[1, 2])
    with pytest.raises(FileNotFoundError):
        em.create_run(config_path="/nonexistent/run.yaml")
    assert not runs_dir.exists() or not any(runs_dir.iterdir())


def test_no_temporary_files_are_left(runs_dir: Path) -> None:
    run = em.create_run(name="t", hparams={"a": 1})
    for i in range(20):
        run.hparams[f"k{i}"] = i
        run.description = f"d{i}"
    run.finish()
    leftovers = [p for p in run.path.rglob("*") if p.name.startswith(".")]
    assert leftovers == []


def test_reader_round_trip_and_list(runs_dir: Path) -> None:
    a = em.create_run(name="a", hparams={"lr": 0.1}, labels=["x"])
    for step in (1, 2, 3):
        a.log("train", {"loss": 1.0 / step}, step=step)
    a.log("val", {"loss": 0.4, "accuracy": 0.8}, step=3)
    a.finish()
    b = em.create_run(name="b")
    runs = em.list_runs(runs_dir)
    assert [r.id for r in runs] == [a.id, b.id]
    ra = em.load_run(a.path)
    assert (ra.name, ra.status, ra.labels, ra.hparams) == ("a", "Complete", ["x"], {"lr": 0.1})
    assert ra.series("train", "loss") == ([1, 2, 3], [1.0, 0.5, 1.0 / 3])
    assert ra.last("val") == {"loss": 0.4, "accuracy": 0.8}
    assert ra.metric_names("val") == ["loss", "accuracy"]
    assert ra.last_step() == 3
    assert json.loads(json.dumps(ra.to_dict()))["last"]["val"]["accuracy"] == 0.8
    assert em.find_run("a", runs_dir).id == a.id
    assert em.find_run(b.id[:-3], runs_dir).id == b.id
    with pytest.raises(KeyError, match="no run 'zzz'"):
        em.find_run("zzz", runs_dir)
    with pytest.raises(FileNotFoundError):
        em.load_run(runs_dir)
    b.finish()
    assert em.list_runs(runs_dir / "missing") == []


def test_fail_records_the_error(runs_dir: Path) -> None:
    run = em.create_run(name="f")
    run.fail(ZeroDivisionError("division by zero"))
    assert run.status == "Failed"
    assert run.error == "ZeroDivisionError: division by zero"
    run.finish()  # an ended run stays as it ended
    run.fail("again")
    meta = _meta(run)
    assert (meta["status"], meta["error"]) == ("Failed", "ZeroDivisionError: division by zero")
    with pytest.raises(RuntimeError, match="Failed"):
        run.log("train", {"loss": 1.0})


def test_the_documented_examples(runs_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    run = em.create_run(name="cnn_keras", folder="cv/image-classification/mnist")
    assert run.name == "cnn_keras"
    run.finish()
    hparams = {"batch_size": 32, "epochs": 1, "learning_rate": 0.001, "conv_channels1": 32}
    # The t9k example spells the folder argument folder_path.
    run = em.create_run(name="cnn_keras", hparams=hparams,
                        folder_path="cv/image-classification/mnist", auto_upload=True,
                        make_folder=True)
    assert run.uploaded_to.parent.name == "mnist"
    assert dict(run.hparams) == hparams
    run.finish()
    with pytest.raises(ValueError, match="disagree"):
        em.create_run(folder="a", folder_path="b")
    config = tmp_path / "run_config.yaml"
    config.write_text(
        "name: cnn_keras\nhparams:\n  batch_size: 32\n  epochs: 1\nlabels:\n- Keras\n"
        "description: Train a simple CNN model that classifies images of handwritten digits.\n"
    )
    run = em.create_run(config_path="./run_config.yaml")
    assert (run.name, run.labels) == ("cnn_keras", ["Keras"])
    assert run.description.startswith("Train a simple CNN")
    run.finish()
