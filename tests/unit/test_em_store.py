"""Upload to the run store: folders, make_folder, the four conflict strategies, auto_upload."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml

from kubelearn import em
from kubelearn.em.store import folder_parts, resolve_folder


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EM_RUN_PARENT_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("EM_RUN_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("EM_USER", "alice")
    monkeypatch.setenv("EM_UPLOAD_INTERVAL_SECS", "0.05")
    return tmp_path / "store"


def _stored_id(path: Path) -> str:
    return yaml.safe_load((path / "run.yaml").read_text())["id"]


def _finished_run(name: str = "cnn", loss: float = 1.0) -> em.Run:
    run = em.create_run(name=name, hparams={"lr": 0.1})
    run.log("train", {"loss": loss}, step=1)
    run.finish()
    return run


def test_folder_paths_follow_the_current_user_rule(store: Path) -> None:
    assert folder_parts("cv/mnist") == ["alice", "cv", "mnist"]
    assert folder_parts("/team/cv/") == ["team", "cv"]
    assert folder_parts("default") == ["alice", "default"]
    for bad in ("", "/", "a/../b", "a/.hidden"):
        with pytest.raises(ValueError, match="folder"):
            folder_parts(bad)


def test_upload_needs_the_folder_unless_make_folder(store: Path) -> None:
    run = _finished_run()
    with pytest.raises(FileNotFoundError, match="folder 'cv/mnist' does not exist"):
        run.upload(folder="cv/mnist")
    dest = run.upload(folder="cv/mnist", make_folder=True)
    assert dest == store / "alice" / "cv" / "mnist" / "cnn"
    assert _stored_id(dest) == run.id
    assert yaml.safe_load((dest / "hparams.yaml").read_text()) == {"lr": 0.1}
    assert em.load_run(dest).series("train", "loss") == ([1], [1.0])
    assert em.load_run(dest).status == "Complete"
    assert run.uploaded_to == dest.resolve()
    # The folder now exists: another run goes there without make_folder.
    other = _finished_run("rnn")
    assert other.upload(folder="cv/mnist") == store / "alice" / "cv" / "mnist" / "rnn"
    # Absolute folder paths skip the user folder.
    assert other.upload(folder="/shared/x", make_folder=True) == store / "shared" / "x" / "rnn"
    assert not list((store / ".staging").iterdir())


def test_uploading_the_same_run_again_updates_it(store: Path) -> None:
    run = em.create_run(name="cnn")
    dest = run.upload(folder="f", make_folder=True, conflict_strategy="error")
    run.log("train", {"loss": 0.5}, step=2)
    run.finish()
    assert run.upload(folder="f", conflict_strategy="error") == dest
    assert em.load_run(dest).status == "Complete"
    assert em.load_run(dest).series("train", "loss") == ([2], [0.5])


def test_conflict_skip(store: Path) -> None:
    first, second = _finished_run(loss=1.0), _finished_run(loss=2.0)
    dest = first.upload(folder="f", make_folder=True)
    assert second.upload(folder="f", conflict_strategy="skip") is None
    assert _stored_id(dest) == first.id
    assert second.uploaded_to is None


def test_conflict_error(store: Path) -> None:
    first, second = _finished_run(), _finished_run()
    first.upload(folder="f", make_folder=True)
    with pytest.raises(em.UploadConflictError, match="'cnn' already exists in folder 'f'"):
        second.upload(folder="f", conflict_strategy="error")
    assert issubclass(em.UploadConflictError, FileExistsError)


def test_conflict_new_uses_alternative_names(store: Path) -> None:
    runs = [_finished_run(loss=float(i)) for i in range(3)]
    dests = [r.upload(folder="f", make_folder=True, conflict_strategy="new") for r in runs]
    assert [d.name for d in dests] == ["cnn", "cnn-2", "cnn-3"]
    assert [_stored_id(d) for d in dests] == [r.id for r in runs]
    # Re-uploading the second run finds its own copy instead of making cnn-4.
    assert runs[1].upload(folder="f") == dests[1]


def test_conflict_replace(store: Path) -> None:
    first, second = _finished_run(loss=1.0), _finished_run(loss=2.0)
    dest = first.upload(folder="f", make_folder=True)
    assert second.upload(folder="f", conflict_strategy="replace") == dest
    assert _stored_id(dest) == second.id
    assert em.load_run(dest).last("train") == {"loss": 2.0}
    assert sorted(p.name for p in dest.parent.iterdir()) == ["cnn"]


def test_a_folder_is_never_replaced_by_a_run(store: Path) -> None:
    resolve_folder("f/cnn", make_folder=True)
    run = _finished_run()
    with pytest.raises(ValueError, match="is a folder, not a run"):
        run.upload(folder="f", conflict_strategy="replace")
    dest = run.upload(folder="f", conflict_strategy="new")
    assert dest.name == "cnn-2"
    with pytest.raises(ValueError, match="is a run, not a folder"):
        run.upload(folder="f/cnn-2/x", make_folder=True)


def test_upload_validates_arguments(store: Path) -> None:
    run = _finished_run()
    with pytest.raises(ValueError, match="conflict_strategy 'merge'"):
        run.upload(folder="f", make_folder=True, conflict_strategy="merge")
    with pytest.raises(ValueError, match="make_folder"):
        run.upload(folder="f", make_folder="yes")
    assert not store.exists()


def _wait(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_auto_upload_follows_the_run_in_the_background(store: Path) -> None:
    run = em.create_run(name="auto", auto_upload=True, folder="cv", make_folder=True)
    dest = store / "alice" / "cv" / "auto"
    assert em.load_run(dest).status == "Running"  # first upload happens at creation
    run.log("train", {"loss": 1.0}, step=1)
    run.log("train", {"loss": 0.5}, step=2)

    def caught_up() -> bool:
        return em.load_run(dest).series("train", "loss")[0] == [1, 2]

    _wait(caught_up)
    run.description = "later"
    _wait(lambda: em.load_run(dest).description == "later")
    run.finish()
    stored = em.load_run(dest)
    assert stored.status == "Complete"
    assert stored.upload["path"] == str(dest.resolve())


def test_auto_upload_errors_surface_at_creation(store: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="folder 'nope'"):
        em.create_run(name="auto", auto_upload=True, folder="nope")
    assert em.list_runs(tmp_path / "runs") == []  # the half-made run is gone
    existing = em.create_run(name="auto", auto_upload=True, folder="cv", make_folder=True)
    with pytest.raises(em.UploadConflictError):
        em.create_run(name="auto", auto_upload=True, folder="cv", conflict_strategy="error")
    skipped = em.create_run(name="auto", auto_upload=True, folder="cv",
                            conflict_strategy="skip")
    assert skipped.uploaded_to is None
    existing.finish()
    skipped.finish()


def test_auto_upload_false_ignores_upload_arguments(store: Path) -> None:
    run = em.create_run(name="local", folder="does/not/exist")
    run.finish()
    assert not store.exists()


def test_auto_upload_stops_when_its_copy_is_replaced(store: Path) -> None:
    first = em.create_run(name="cnn", auto_upload=True, folder="f", make_folder=True)
    dest = first.uploaded_to
    second = _finished_run()
    assert second.upload(folder="f", conflict_strategy="replace") == dest
    first.log("train", {"loss": 9.0}, step=1)
    first.finish()
    assert _stored_id(dest) == second.id  # not taken back by the first run
    assert em.load_run(dest).last("train") == {"loss": 1.0}


def test_a_corrupt_stored_run_counts_as_another_run(store: Path) -> None:
    run = _finished_run()
    broken = resolve_folder("f", make_folder=True) / "cnn"
    broken.mkdir()
    (broken / "run.yaml").write_text("id: [unclosed\n")
    assert run.upload(folder="f").name == "cnn-2"


def test_the_default_folder_needs_no_make_folder(store: Path) -> None:
    run = _finished_run()
    assert run.upload() == store / "alice" / "default" / "cnn"
    with pytest.raises(FileNotFoundError):
        run.upload(folder="/default")  # only the user's own default folder
