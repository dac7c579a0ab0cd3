"""A model directory given as a URL: kubelearn.fs and its users, on fsspec's in-process
``memory://`` filesystem (the real S3 server's tests are in tests/runner/test_model_dir_s3.py),
and local paths, which keep their semantics."""

from __future__ import annotations

import io
import json
import secrets
import struct
import time
import zipfile

import numpy as np
import pytest
import yaml

from kubelearn import checkpoints, export, fs
from kubelearn.em.run import Run
from kubelearn.estimators import LinearRegressor
from kubelearn.estimators.estimator import load_exported
from kubelearn.inputs import numpy_input_fn
from kubelearn.run_config import RunConfig
from kubelearn_spec.contract import model_dir_scheme


@pytest.fixture
def url() -> str:
    return f"memory://kubelearn-unit/{secrets.token_hex(6)}"


# -- names ---------------------------------------------------------------------------------
@pytest.mark.parametrize("value, scheme", [
    ("s3://bucket/prefix", "s3"), ("S3://Bucket", "s3"), ("gs://b/x", "gs"),
    ("memory://x", "memory"), ("file:///tmp/x", "file"), ("a+b.c-d://x", "a+b.c-d"),
    ("/tmp/model", None), ("relative/s3://x", None), ("s3:/bucket", None), ("", None),
    ("3s://x", None), ("C:\\models", None)])
def test_model_dir_scheme(value, scheme):
    assert model_dir_scheme(value) == scheme
    assert fs.is_url(value) == (scheme is not None)


def test_join_and_basename():
    assert fs.join("s3://b/p", "export", "model") == "s3://b/p/export/model"
    assert fs.join("s3://b/p/", "/eval/", "results.jsonl") == "s3://b/p/eval/results.jsonl"
    assert fs.join("s3://b/p") == "s3://b/p"
    assert fs.join("/tmp/m", "eval") == "/tmp/m/eval"
    assert fs.basename("s3://b/p/model.ckpt-5") == "model.ckpt-5"
    assert fs.basename("s3://b/p/") == "p"
    assert fs.basename("/tmp/m/x") == "x"


def test_unknown_scheme_and_missing_package_are_one_line_naming_the_source():
    with pytest.raises(fs.ModelDirError) as unknown:
        fs.check("nosuch://bucket/x", "spec.modelDir")
    assert str(unknown.value).startswith("spec.modelDir 'nosuch://bucket/x': unknown URL "
                                         "scheme nosuch://")
    pytest.importorskip("fsspec")
    try:
        import gcsfs  # noqa: F401
    except ImportError:
        with pytest.raises(fs.ModelDirError) as missing:
            fs.check("gs://bucket/x", "--model-dir")
        message = str(missing.value)
        assert message.startswith("--model-dir 'gs://bucket/x': the gs:// filesystem needs "
                                  "the package gcsfs, which is not installed")
        assert "\n" not in message
    fs.check("memory://x/y", "spec.modelDir")
    fs.check("/a/path", "spec.modelDir")


def test_file_urls_are_local_paths(tmp_path):
    location = f"file://{tmp_path}/m"
    assert not fs.is_remote(location)
    checkpoints.save(location, {"w": np.ones(2, np.float32)}, 3)
    assert (tmp_path / "m" / "model.ckpt-3.npz").is_file()
    assert checkpoints.latest_global_step(location) == 3


# -- reading and writing ------------------------------------------------------------------
def test_whole_objects_lists_and_removal(url):
    fs.write_text(fs.join(url, "a", "x.txt"), "one")
    fs.write_bytes(fs.join(url, "a", "y.bin"), b"\0\1")
    fs.write(fs.join(url, "b"), lambda handle: handle.write(b"bee"))
    assert fs.listdir(url) == ["a", "b"]
    assert fs.listdir(fs.join(url, "a")) == ["x.txt", "y.bin"]
    assert fs.read_text(fs.join(url, "a", "x.txt")) == "one"
    assert fs.read_tail(fs.join(url, "b"), 2) == (3, b"ee")
    with pytest.raises(ValueError, match="longer than 2 bytes"):
        fs.read_bytes(fs.join(url, "b"), limit=2)
    with pytest.raises(FileNotFoundError):
        fs.read_bytes(fs.join(url, "missing"))
    with pytest.raises(FileNotFoundError):
        fs.listdir(fs.join(url, "missing"))
    fs.remove(fs.join(url, "b"))
    fs.remove(fs.join(url, "b"))  # already gone: nothing
    fs.remove_tree(fs.join(url, "a"))
    assert not fs.exists(url)
    fs.remove_tree(url)


def test_append_line_rewrites_the_object_whole(url):
    path = fs.join(url, "eval", "results.jsonl")
    fs.append_line(path, '{"step": 1}')
    fs.write_bytes(path, fs.read_bytes(path) + b'{"torn')  # a writer killed mid-line
    fs.append_line(path, '{"step": 2}\n')
    assert fs.read_text(path).splitlines() == ['{"step": 1}', '{"torn', '{"step": 2}']


def test_local_writes_leave_no_temporary_files(tmp_path):
    fs.write_text(str(tmp_path / "progress.json"), "{}")
    fs.append_line(str(tmp_path / "r.jsonl"), "1")
    fs.append_line(str(tmp_path / "r.jsonl"), "2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["progress.json", "r.jsonl"]
    assert (tmp_path / "r.jsonl").read_text() == "1\n2\n"


# -- checkpoints ---------------------------------------------------------------------------
def test_checkpoints_round_trip_keep_the_newest_and_mark_done(url):
    for step in (5, 6, 7):
        checkpoints.save(url, {"w": np.full(3, step, np.float32)}, step, keep_checkpoint_max=2)
    assert checkpoints.checkpoint_paths(url) == [fs.join(url, "model.ckpt-6"),
                                                 fs.join(url, "model.ckpt-7")]
    assert sorted(fs.listdir(url)) == ["checkpoint", "model.ckpt-6.npz", "model.ckpt-7.npz"]
    variables, step = checkpoints.load(checkpoints.latest_checkpoint(url))
    assert step == 7 and variables["w"].tolist() == [7, 7, 7]
    assert not checkpoints.training_done(url)
    checkpoints.mark_training_done(url, 7)
    assert checkpoints.training_done(url, 7) and not checkpoints.training_done(url, 8)
    with pytest.raises(FileNotFoundError):
        checkpoints.load(fs.join(url, "model.ckpt-5"))


def test_checkpoint_is_written_before_the_index_that_names_it(url, monkeypatch):
    filesystem, _ = fs._filesystem(url)
    calls: list[tuple[str, str]] = []
    real_pipe, real_rm = filesystem.pipe_file, filesystem.rm_file

    def pipe_file(path, data, **kwargs):
        calls.append(("start", path.rsplit("/", 1)[-1]))
        real_pipe(path, data, **kwargs)
        calls.append(("end", path.rsplit("/", 1)[-1]))

    def rm_file(path, **kwargs):
        calls.append(("rm", path.rsplit("/", 1)[-1]))
        real_rm(path, **kwargs)

    monkeypatch.setattr(filesystem, "pipe_file", pipe_file)
    monkeypatch.setattr(filesystem, "rm_file", rm_file)
    checkpoints.save(url, {"w": np.ones(2, np.float32)}, 1, keep_checkpoint_max=1)
    checkpoints.save(url, {"w": np.ones(2, np.float32)}, 2, keep_checkpoint_max=1)
    assert calls == [("start", "model.ckpt-1.npz"), ("end", "model.ckpt-1.npz"),
                     ("start", "checkpoint"), ("end", "checkpoint"),
                     ("start", "model.ckpt-2.npz"), ("end", "model.ckpt-2.npz"),
                     ("start", "checkpoint"), ("end", "checkpoint"),
                     ("rm", "model.ckpt-1.npz")]


@pytest.mark.parametrize("entry", ["../elsewhere/model.ckpt-35", "/model.ckpt-35",
                                   "sub/../../model.ckpt-35", "s3://other/model.ckpt-35",
                                   "..", "a\\..\\b"])
def test_index_entries_outside_a_url_model_dir_are_refused(url, entry):
    fs.write_text(fs.join(url, "checkpoint"), f'all_model_checkpoint_paths: "{entry}"\n')
    with pytest.raises(checkpoints.CheckpointError, match="outside the model directory"):
        checkpoints.latest_checkpoint(url)


def test_a_crafted_checkpoint_object_is_refused_before_its_data_is_read(url):
    buffer = io.BytesIO()
    np.savez(buffer, w=np.ones(2, np.float32))
    raw = bytearray(buffer.getvalue())
    with zipfile.ZipFile(io.BytesIO(bytes(raw))) as archive:
        member = archive.read("w.npy")
    crafted = io.BytesIO()
    with zipfile.ZipFile(crafted, "w") as archive:
        archive.writestr("w.npy", member.replace(b"'<f4'", b"'|O'"))
    fs.write_bytes(fs.join(url, "model.ckpt-1.npz"), crafted.getvalue())
    with pytest.raises(checkpoints.CheckpointError, match=r"model\.ckpt-1\.npz"):
        checkpoints.load(fs.join(url, "model.ckpt-1"))


# -- exports -------------------------------------------------------------------------------
def _trained(url: str) -> LinearRegressor:
    x = np.random.default_rng(0).normal(size=(64, 3)).astype(np.float32)
    y = x.sum(axis=1)
    estimator = LinearRegressor(config=RunConfig(model_dir=url, save_checkpoints_steps=5))
    estimator.fit(input_fn=numpy_input_fn(x, y, batch_size=16, num_epochs=None,
                                                   shuffle=False), steps=10)
    return estimator


def test_exports_count_only_with_their_marker_and_are_pruned_marker_first(url):
    estimator = _trained(url)
    base = fs.join(url, "export", "model")
    strategy = export.make_export_strategy("model", exports_to_keep=2)
    paths = [strategy.export(estimator, base) for _ in range(3)]
    assert export.list_exports(base) == paths[1:]
    for path in paths[1:]:
        marker = json.loads(fs.read_text(fs.join(path, export.COMPLETE_MARKER)))
        assert marker == {"files": ["model.npz", "signature.json"]}
    assert not fs.exists(paths[0])
    # A writer that died: the files without the marker; a reader does not count it.
    partial = fs.join(base, str(int(time.time() * 1000) + 10**6))
    estimator.export(partial)
    assert export.list_exports(base) == paths[1:]
    with pytest.raises(FileNotFoundError, match="not a whole export"):
        load_exported(partial)
    model = load_exported(paths[-1])
    assert model.predict(np.ones((2, 3), np.float32))["predictions"].shape == (2,)
    # Pruning keeps a recent partial export (another replica may be writing it) and removes
    # a stale one.
    stale = fs.join(base, str(int(time.time() * 1000) - export.STALE_PARTIAL_MS - 1000))
    estimator.export(stale)
    newest = strategy.export(estimator, base)
    assert export.list_exports(base) == [paths[-1], newest]
    assert fs.exists(partial) and not fs.exists(stale)


# -- runs and event files --------------------------------------------------------------------
def test_a_run_under_a_url_is_staged_locally_and_mirrored(url, monkeypatch):
    monkeypatch.setenv("EM_UPLOAD_INTERVAL_SECS", "3600")  # only the create and end uploads
    run = Run("exp", {"lr": 0.1}, ["task=master"], "", parent=fs.join(url, "runs"))
    assert run.location == fs.join(url, "runs", run.id)
    assert yaml.safe_load(fs.read_text(fs.join(run.location, "run.yaml")))["status"] == "Running"
    assert fs.listdir(run.location) == ["hparams.yaml", "run.yaml"]
    for step in range(3):
        run.log("train", {"loss": 1.0 / (step + 1)}, step=step)
    run.finish()
    meta = yaml.safe_load(fs.read_text(fs.join(run.location, "run.yaml")))
    assert meta["status"] == "Complete"
    lines = fs.read_text(fs.join(run.location, "metrics", "train.jsonl")).splitlines()
    assert [json.loads(line)["step"] for line in lines] == [0, 1, 2]
    assert run.path.is_dir() and (run.path / "metrics" / "train.jsonl").read_text() == \
        "\n".join(lines) + "\n"


def test_event_files_under_a_url_are_uploaded_whole_at_each_flush(url):
    pytest.importorskip("tensorboardX")
    from kubelearn.em.tensorboard import EventWriter

    logdir = fs.join(url, "eval")
    writer = EventWriter(logdir, flush_secs=3600)
    writer.scalar("loss", 0.5, 1)
    writer.flush()
    (name,) = fs.listdir(logdir)
    first = fs.read_bytes(fs.join(logdir, name))
    writer.scalar("loss", 0.25, 2)
    writer.close()
    last = fs.read_bytes(fs.join(logdir, name))
    assert name.startswith("events.out.tfevents.") and last.startswith(first)
    assert len(_records(last)) == len(_records(first)) + 1


def _records(data: bytes) -> list[bytes]:
    records, offset = [], 0
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset:offset + 8])
        records.append(data[offset + 12:offset + 12 + length])
        offset += 12 + length + 4
    assert offset == len(data)
    return records


def test_probe_writes_and_removes_one_empty_object(url):
    fs.write_text(fs.join(url, "keep"), "x")
    fs.probe(url, "spec.modelDir")
    assert fs.listdir(url) == ["keep"]
    fs.probe("/no/such/local/dir", "--model-dir")  # a path is not probed


def test_probe_gives_up_after_its_patience_naming_the_source(url, monkeypatch):
    import fsspec

    memory = type(fsspec.filesystem("memory"))

    class Clock:  # the probe's clock: its sleeps move it on
        now = 100.0

        def monotonic(self):
            return self.now

        def sleep(self, seconds):
            self.now += seconds

    clock, attempts = Clock(), []

    def unreachable(self, path, value, **kwargs):
        attempts.append(clock.now)
        raise ConnectionError("Could not connect to the endpoint URL")

    monkeypatch.setattr(memory, "pipe_file", unreachable)
    monkeypatch.setattr(fs, "time", clock)
    with pytest.raises(fs.ModelDirError) as caught:
        fs.probe(url, "spec.modelDir", patience=5)
    # Tried again at most 2 s apart, and given up at the attempt that found its patience
    # spent, not before.
    assert attempts == [100.0, 102.0, 104.0, 105.0]
    message = str(caught.value)
    assert message.startswith(f"spec.modelDir {url!r}: cannot write there: ConnectionError")
    assert "\n" not in message


@pytest.mark.parametrize("bucket", ["Bad_Bucket!", "a bucket", "a:b"])
def test_probe_does_not_retry_a_location_the_s3_client_refuses(monkeypatch, bucket):
    """botocore refuses an invalid bucket name (ParamValidationError) before it sends
    anything: bad input, not a store that is down, so it is not tried again."""
    pytest.importorskip("s3fs")
    from botocore.exceptions import ParamValidationError

    for key, value in {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "k",
                       "AWS_SECRET_ACCESS_KEY": "s", "AWS_DEFAULT_REGION": "us-east-1"
                       }.items():
        monkeypatch.setenv(key, value)
    url = f"s3://{bucket}/prefix"

    class Clock:  # a sleep would be a retry
        def monotonic(self):
            return 100.0

        def sleep(self, seconds):
            raise AssertionError(f"retried after {seconds} s")

    filesystem, path = fs._filesystem(url)
    with pytest.raises(ParamValidationError):  # the real exception, raised before sending
        filesystem.pipe_file(f"{path}/x", b"")
    monkeypatch.setattr(fs, "time", Clock())
    with pytest.raises(fs.ModelDirError) as refused:
        fs.probe(url, "--model-dir", patience=3600)
    message = str(refused.value)
    assert message.startswith(f"--model-dir {url!r}: not a valid location for this store")
    assert "Invalid bucket name" in message and "\n" not in message


def test_download_tree_copies_runs_and_skips_keys_that_would_escape(url, tmp_path):
    import fsspec

    memory = fsspec.filesystem("memory")
    root = url.removeprefix("memory:/")
    for key in ("runs/a/run.yaml", "runs/a/metrics/train.jsonl", "runs/a/../../../evil",
                "runs//empty-part", "runs/b/c"):
        memory.pipe_file(f"{root}/{key}", key.encode())
    memory.store[f"{root}/runs/b"] = memory.store[f"{root}/runs/b/c"]  # object and prefix
    dest = tmp_path / "copy"
    dest.mkdir()
    assert fs.download_tree(fs.join(url, "runs"), str(dest)) == 3
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["copy/a/metrics/train.jsonl", "copy/a/run.yaml", "copy/b/c"]
    assert (dest / "a" / "run.yaml").read_text() == "runs/a/run.yaml"
    with pytest.raises(ValueError, match="more than the 10 allowed"):
        fs.download_tree(fs.join(url, "runs"), str(tmp_path / "small"), max_bytes=10)
    with pytest.raises(FileNotFoundError):
        fs.download_tree(fs.join(url, "nothing"), str(tmp_path / "none"))
