"""A model directory on S3 (``s3://bucket/prefix``), against a real S3-compatible server on
loopback (tests/s3server.py): distributed training with real processes (resumed by a new
launch, and a killed ps restored from the checkpoint on S3), the order of a checkpoint and
its index, export completion markers, ``kubelearn runs`` over the URL, and the exit code of a
model directory URL that cannot be used: an unknown scheme, a missing package, a missing
bucket, credentials the store refuses."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from kubelearn import checkpoints, export, fs
from kubelearn.estimators import LinearRegressor
from kubelearn.estimators.estimator import load_exported
from kubelearn.inputs import numpy_input_fn
from kubelearn.local import MARKER_NAME, RefusedDelete, prepare_model_dir
from kubelearn.run_config import RunConfig
from kubelearn_spec.contract import EXIT_MODEL_DIR_UNUSABLE
from tests.processes import pids_with_env
from tests.s3server import client_env
from tests.support import runner_env

ROOT = Path(__file__).resolve().parents[2]
_INDEX_RE = re.compile(r'^all_model_checkpoint_paths:\s*"(.*)"\s*$', re.M)


def _manifest(tmp_path: Path, name: str, hparams: dict, evaluator: bool = False) -> Path:
    specs = {role: {"replicas": 1, "restartPolicy": "ExitCode"}
             for role in ("ps", "worker", "master")}
    if evaluator:
        specs["evaluator"] = {"replicas": 1, "restartPolicy": "OnFailure"}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "apiVersion": "kubelearn.dev/v1alpha1", "kind": "Experiment",
        "metadata": {"name": name},
        "spec": {"experimentFn": "kubelearn.examples.linear:experiment_fn",
                 "hparams": hparams, "replicaSpecs": specs,
                 "runPolicy": {"backoffLimit": 4}}}))
    return path


def _local(manifest: Path, model_dir: str, env: dict[str, str], *extra: str,
           timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubelearn.cli", "local", str(manifest), "--model-dir",
         model_dir, "--no-progress", *extra], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, timeout=timeout, start_new_session=True)


HP = {"train_steps": 400, "n_features": 8, "batch_size": 64, "n_examples": 2048,
      "learning_rate": 0.05, "save_checkpoints_steps": 100, "eval_throttle_secs": 0.5}


def test_distributed_training_on_s3_checkpoints_exports_and_resumes(s3_server, tmp_path):
    model_dir = s3_server.url("distributed")
    env = client_env(s3_server)
    manifest = _manifest(tmp_path, "s3exp", HP, evaluator=True)
    first = _local(manifest, model_dir, env)
    assert first.returncode == 0, first.stdout[-5000:]
    out = first.stdout
    assert "Experiment s3exp Succeeded" in out
    assert re.search(r"replica exit codes: ps-0=0, master-0=0, worker-0=0, evaluator-0=0",
                     out), out[-3000:]
    assert f"checkpoint: {model_dir}/model.ckpt-" in out
    assert re.search(r"final evaluation: .*global_step = \d+", out), out[-3000:]
    assert f"run: {model_dir}/runs/s3exp_" in out
    # Nothing went to a local directory named after the URL.
    assert not Path("s3:").exists() and not (tmp_path / "s3:").exists()

    names = fs.listdir(model_dir)
    for name in ("checkpoint", "training_done", "progress.json", "export", "eval",
                 "eval_continuous", "runs", MARKER_NAME):
        assert name in names, names
    assert any(n.startswith("events.out.tfevents.") for n in names), names
    assert any(n.startswith("events.out.tfevents.") for n in fs.listdir(f"{model_dir}/eval"))
    step = checkpoints.latest_global_step(model_dir)
    assert step >= HP["train_steps"] and checkpoints.training_done(model_dir, step)
    variables, loaded_step = checkpoints.load(checkpoints.latest_checkpoint(model_dir))
    assert loaded_step == step and any(name.endswith("/kernel") for name in variables)
    final = json.loads(fs.read_text(f"{model_dir}/eval/results.jsonl").splitlines()[-1])
    assert final["global_step"] >= HP["train_steps"] and final["loss"] < 0.05
    assert fs.read_text(f"{model_dir}/eval_continuous/results.jsonl").strip()
    assert json.loads(fs.read_text(f"{model_dir}/progress.json"))["global_step"] >= step - 1

    exports = export.list_exports(f"{model_dir}/export/model")
    assert 1 <= len(exports) <= 3
    for path in exports:
        assert fs.exists(f"{path}/{export.COMPLETE_MARKER}")
    model = load_exported(exports[-1])
    assert model.predict(np.zeros((2, 8), np.float32))["predictions"].shape == (2,)

    (run_id,) = fs.listdir(f"{model_dir}/runs")
    meta = yaml.safe_load(fs.read_text(f"{model_dir}/runs/{run_id}/run.yaml"))
    assert meta["status"] == "Complete" and meta["name"] == "s3exp"
    assert fs.read_text(f"{model_dir}/runs/{run_id}/metrics/train.jsonl").strip()
    # Each replica's write probe left nothing behind.
    assert not [n for n in fs.listdir(model_dir) if n.startswith(".kubelearn-probe")]

    # kubelearn runs reads the runs under the URL, and shows them by the URL.
    listed = _run(["runs", "--dir", f"{model_dir}/runs", "list", "--json"], **env)
    assert listed.returncode == 0, listed.stderr
    (row,) = json.loads(listed.stdout)
    assert row["id"] == run_id and row["path"] == f"{model_dir}/runs/{run_id}", row
    shown = _run(["runs", "--dir", f"{model_dir}/runs", "show", "s3exp"], **env)
    assert shown.returncode == 0 and f"{model_dir}/runs/{run_id}" in shown.stdout, shown
    assert "kubelearn-runs-" not in shown.stdout + shown.stderr
    missing = _run(["runs", "--dir", f"{model_dir}/runs", "show", "nosuch"], **env)
    assert missing.returncode == 1
    assert missing.stderr.strip() == f"kubelearn runs: no run 'nosuch' in {model_dir}/runs"

    # A new launch (a restarted master and ps) resumes from the checkpoint on S3.
    manifest = _manifest(tmp_path, "s3exp", {**HP, "train_steps": 2 * HP["train_steps"]})
    second = _local(manifest, model_dir, env)
    assert second.returncode == 0, second.stdout[-5000:]
    restored = re.findall(r"Restoring ps \[0\] from (\S+) \(global step (\d+)\)",
                          second.stdout)
    assert restored, second.stdout[-3000:]
    assert restored[0] == (f"{model_dir}/model.ckpt-{step}", str(step))
    assert checkpoints.latest_global_step(model_dir) >= 2 * HP["train_steps"]
    assert pids_with_env(f"KUBELEARN_MODEL_DIR={model_dir}") == []


def _ps_pids(model_dir: str) -> list[int]:
    found = []
    for pid in pids_with_env(f"KUBELEARN_MODEL_DIR={model_dir}"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            for entry in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                if entry.startswith(b"TF_CONFIG=") and json.loads(
                        entry[len(b"TF_CONFIG="):])["task"]["type"] == "ps":
                    found.append(pid)
    return found


def test_a_restarted_ps_is_restored_from_the_checkpoint_on_s3(s3_server, tmp_path):
    model_dir = s3_server.url("killps")
    hp = {**HP, "train_steps": 6000, "n_features": 256, "batch_size": 256, "n_examples": 8192,
          "learning_rate": 0.02, "save_checkpoints_steps": 300}
    manifest = _manifest(tmp_path, "killps", hp)
    proc = subprocess.Popen(
        [sys.executable, "-m", "kubelearn.cli", "local", str(manifest), "--model-dir",
         model_dir, "--no-progress"], env=client_env(s3_server), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while checkpoints.latest_global_step(model_dir) < 900:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        (victim,) = _ps_pids(model_dir)
        os.kill(victim, signal.SIGKILL)
        out, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, out[-5000:]
    assert f"exited with code {128 + signal.SIGKILL}; restarting" in out
    restored = re.findall(r"Restoring ps \[0\] from (\S+) \(global step (\d+)\)", out)
    assert restored, out[-3000:]
    path, step = restored[0]
    assert path == f"{model_dir}/model.ckpt-{step}" and int(step) >= 900
    final = json.loads(fs.read_text(f"{model_dir}/eval/results.jsonl").splitlines()[-1])
    assert final["global_step"] >= hp["train_steps"] and final["loss"] < 1e-2


WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from kubelearn import checkpoints

    model_dir, saves = sys.argv[1], int(sys.argv[2])
    rng = np.random.default_rng(0)
    # About 2 MB a checkpoint: a PUT that takes a while.
    variables = {"w": rng.normal(size=(512, 512)).astype(np.float64)}
    for step in range(1, saves + 1):
        checkpoints.save(model_dir, variables, step, keep_checkpoint_max=2)
    print("saved", saves)
""")


def test_index_never_names_a_checkpoint_that_cannot_be_read(s3_server):
    """A reader polling the raw ``checkpoint`` index object while another process saves
    checkpoints (and removes old ones) can read every checkpoint the index names, for as
    long as the index names it."""
    model_dir = s3_server.url("ordering")
    saves = 25
    writer = subprocess.Popen([sys.executable, "-c", WRITER, model_dir, str(saves)],
                              env=client_env(s3_server), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    index = f"{model_dir}/checkpoint"
    seen: set[int] = set()
    checked = 0
    deadline = time.monotonic() + 180
    while writer.poll() is None and time.monotonic() < deadline:
        try:
            text = fs.read_text(index)
        except FileNotFoundError:
            time.sleep(0.01)
            continue
        names = _INDEX_RE.findall(text)
        assert names, text
        newest = names[-1]
        try:
            _, step = checkpoints.load(f"{model_dir}/{newest}")
        except FileNotFoundError:
            # Only a checkpoint the index has stopped naming may be gone.
            assert newest not in _INDEX_RE.findall(fs.read_text(index)), newest
            continue
        assert f"model.ckpt-{step}" == newest
        seen.add(step)
        checked += 1
    out = writer.communicate(timeout=60)[0]
    assert writer.returncode == 0, out[-3000:]
    assert checked >= 5 and len(seen) >= 3, (checked, sorted(seen))
    assert checkpoints.latest_global_step(model_dir) == saves
    assert sorted(fs.listdir(model_dir)) == ["checkpoint", f"model.ckpt-{saves - 1}.npz",
                                             f"model.ckpt-{saves}.npz"]


def test_checkpoint_put_returns_before_the_index_put_starts(s3_server, monkeypatch):
    model_dir = s3_server.url("order")
    filesystem, _ = fs._filesystem(model_dir)
    calls: list[tuple[str, str]] = []
    real_pipe = filesystem.pipe_file

    def pipe_file(path, data, **kwargs):
        calls.append(("start", path.rsplit("/", 1)[-1]))
        real_pipe(path, data, **kwargs)
        calls.append(("end", path.rsplit("/", 1)[-1]))

    monkeypatch.setattr(filesystem, "pipe_file", pipe_file)
    checkpoints.save(model_dir, {"w": np.ones(4, np.float32)}, 3)
    assert calls == [("start", "model.ckpt-3.npz"), ("end", "model.ckpt-3.npz"),
                     ("start", "checkpoint"), ("end", "checkpoint")]
    assert checkpoints.latest_checkpoint(model_dir) == f"{model_dir}/model.ckpt-3"


def test_exports_on_s3_end_with_their_marker(s3_server):
    model_dir = s3_server.url("exports")
    x = np.random.default_rng(1).normal(size=(64, 4)).astype(np.float32)
    estimator = LinearRegressor(config=RunConfig(model_dir=model_dir))
    estimator.fit(input_fn=numpy_input_fn(x, x.sum(axis=1), batch_size=16, num_epochs=None,
                                          shuffle=False), steps=20)
    base = f"{model_dir}/export/best"
    strategy = export.make_export_strategy("best", exports_to_keep=2)
    paths = [strategy.export(estimator, base) for _ in range(3)]
    assert export.list_exports(base) == paths[1:] and not fs.exists(paths[0])
    for path in paths[1:]:
        assert sorted(fs.listdir(path)) == sorted([export.COMPLETE_MARKER, "model.npz",
                                                  "signature.json"])
    # The files of an export whose writer died before its marker: not an export.
    partial = f"{base}/{int(time.time() * 1000) + 60_000}"
    estimator.export(partial)
    assert export.list_exports(base) == paths[1:]
    with pytest.raises(FileNotFoundError, match="not a whole export"):
        load_exported(partial)
    assert load_exported(paths[-1]).signature["global_step"] == 20


def test_fresh_empties_only_a_prefix_kubelearn_local_marked(s3_server, tmp_path):
    manifest = tmp_path / "m.yaml"
    manifest.write_text("")
    foreign = s3_server.url("foreign")
    fs.write_text(f"{foreign}/data.csv", "a,b\n")
    with pytest.raises(RefusedDelete, match="not created by kubelearn"):
        prepare_model_dir(foreign, str(manifest), fresh=True)
    assert fs.exists(f"{foreign}/data.csv")
    ours = s3_server.url("ours")
    prepare_model_dir(ours, str(manifest), fresh=False)
    fs.write_text(f"{ours}/checkpoint", "")
    prepare_model_dir(ours, str(manifest), fresh=True)
    assert fs.listdir(ours) == [MARKER_NAME]


def test_s3fs_takes_its_endpoint_and_credentials_from_the_environment(s3_server):
    import s3fs

    filesystem = s3fs.S3FileSystem(skip_instance_cache=True)  # no options: the environment
    name = f"{s3_server.bucket}/env-check-{time.monotonic_ns()}"
    filesystem.pipe_file(name, b"ok")
    assert filesystem.cat_file(name) == b"ok"


# -- a model directory URL that cannot be used ------------------------------------------------
def _run(argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kubelearn.cli", *argv], capture_output=True,
                          text=True, timeout=60, env=runner_env(**env))


@pytest.mark.parametrize("url, why", [
    ("nosuch://bucket/x", "unknown URL scheme nosuch://"),
    ("gs://bucket/x", "the gs:// filesystem needs the package gcsfs, which is not installed"),
])
def test_unusable_model_dir_url_exits_3_with_one_line(tmp_path, url, why):
    if url.startswith("gs:"):
        try:
            import gcsfs  # noqa: F401
            pytest.skip("gcsfs is installed")
        except ImportError:
            pass
    manifest = _manifest(tmp_path, "bad", HP)
    local = _run(["local", str(manifest), "--model-dir", url])
    assert local.returncode == EXIT_MODEL_DIR_UNUSABLE == 3
    (line,) = local.stderr.splitlines()
    assert line.startswith(f"kubelearn local: error: --model-dir '{url}': {why}"), line
    tf_config = json.dumps({"cluster": {"worker": ["127.0.0.1:1"]},
                            "task": {"type": "worker", "index": 0}})
    run = _run(["run", "--experiment-fn", "kubelearn.examples.linear:experiment_fn"],
               TF_CONFIG=tf_config, KUBELEARN_MODEL_DIR=url)
    assert run.returncode == 3
    (line,) = run.stderr.splitlines()
    assert line.startswith(
        f"kubelearn run: error: KUBELEARN_MODEL_DIR (spec.modelDir) '{url}': {why}"), line
    flag = _run(["run", "--experiment-fn", "kubelearn.examples.linear:experiment_fn",
                 "--model-dir", url], TF_CONFIG=tf_config)
    assert flag.returncode == 3 and flag.stderr.startswith(
        f"kubelearn run: error: --model-dir '{url}': ")


def test_a_missing_bucket_stops_every_replica_at_its_start_with_exit_3(s3_server, tmp_path):
    url = f"s3://no-such-bucket-{secrets.token_hex(3)}/exp"
    env = client_env(s3_server)
    local = _local(_manifest(tmp_path, "nobucket", HP), url, env, timeout=60)
    assert local.returncode == EXIT_MODEL_DIR_UNUSABLE, local.stdout
    (line,) = local.stdout.splitlines()
    assert line.startswith(f"kubelearn local: error: --model-dir '{url}': the bucket does not "
                           f"exist"), line
    tf_config = json.dumps({"cluster": {"worker": ["127.0.0.1:1"]},
                            "task": {"type": "worker", "index": 0}})
    run = _run(["run", "--experiment-fn", "kubelearn.examples.linear:experiment_fn"],
               **{**s3_server.env, "TF_CONFIG": tf_config, "KUBELEARN_MODEL_DIR": url})
    assert run.returncode == EXIT_MODEL_DIR_UNUSABLE
    (line,) = run.stderr.splitlines()
    assert line.startswith(f"kubelearn run: error: KUBELEARN_MODEL_DIR (spec.modelDir) '{url}': "
                           f"the bucket does not exist"), line


def test_credentials_the_store_refuses_stop_every_replica_at_its_start(s3_server, tmp_path):
    url = s3_server.url("refused")
    env = client_env(s3_server, AWS_SECRET_ACCESS_KEY="not-the-secret")
    local = _local(_manifest(tmp_path, "refused", HP), url, env, timeout=60)
    assert local.returncode == EXIT_MODEL_DIR_UNUSABLE, local.stdout
    (line,) = local.stdout.splitlines()
    assert line.startswith(f"kubelearn local: error: --model-dir '{url}': access denied; check "
                           f"the credentials (The request signature we calculated does not "
                           f"match"), line
    tf_config = json.dumps({"cluster": {"worker": ["127.0.0.1:1"]},
                            "task": {"type": "worker", "index": 0}})
    run = _run(["run", "--experiment-fn", "kubelearn.examples.linear:experiment_fn",
                "--model-dir", url],
               **{**s3_server.env, "AWS_SECRET_ACCESS_KEY": "x", "TF_CONFIG": tf_config})
    assert run.returncode == EXIT_MODEL_DIR_UNUSABLE
    assert run.stderr.startswith(f"kubelearn run: error: --model-dir '{url}': access denied"), \
        run.stderr
    assert not fs.exists(url)  # nothing was written
