"""What the chief reports: a run record, the progress endpoint, the termination message."""

import json
import os
import subprocess
import sys
import time
import urllib.request

from kubelearn import em
from kubelearn.local import free_port
from tests.support import runner_env

LINEAR = "kubelearn.examples.linear:experiment_fn"


def test_chief_records_run_serves_progress_and_writes_termination_message(tmp_path):
    port = free_port()
    termination = tmp_path / "termination-log"
    model_dir = tmp_path / "model"
    proc = subprocess.Popen(
        [sys.executable, "-m", "kubelearn.cli", "run", "--experiment-fn", LINEAR,
         "--model-dir", str(model_dir), "--hparams",
         "train_steps=4000,n_features=1024,batch_size=512,save_checkpoints_steps=500"],
        env=runner_env(drop=("EM_",), KUBELEARN_PROGRESS_PORT=str(port),
                       KUBELEARN_BIND_HOST="127.0.0.1",
                       KUBELEARN_TERMINATION_LOG=str(termination), KUBELEARN_EXPERIMENT="lin",
                       KUBELEARN_TOKEN="tok"),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/progress",
                                         headers={"Authorization": "Bearer tok"})
        try:
            with urllib.request.urlopen(request, timeout=2) as r:
                report = json.load(r)
        except OSError:
            time.sleep(0.1)
            continue
        if report.get("global_step"):
            seen.append(report)
        if len(seen) >= 2 and seen[-1]["global_step"] > seen[0]["global_step"] and \
                "eval" in seen[-1]:
            break
        time.sleep(0.2)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert len(seen) >= 2, out[-3000:]
    assert seen[-1]["global_step"] > seen[0]["global_step"]
    assert seen[-1]["loss"] is not None and seen[-1]["eval"]["loss"] >= 0
    final = json.loads(termination.read_text())
    assert final["global_step"] >= 4000 and final["loss"] < 1e-2 and "rmse" in final
    record = em.load_run(final["run"])
    assert record.name == "lin" and record.status == "Complete"
    assert record.hparams["train_steps"] == 4000
    assert record.last_step() >= 4000
    assert record.series("val", "loss")
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(model_dir))
    # The final export, named in the termination message, is whole and loads.
    export = final["export"]
    assert os.path.dirname(export) == str(model_dir / "export" / "model")
    assert sorted(os.listdir(export)) == ["model.npz", "signature.json"]
    assert not [e for e in os.listdir(os.path.dirname(export)) if not e.isdigit()]


def test_failed_training_reports_the_error(tmp_path):
    termination = tmp_path / "termination-log"
    proc = subprocess.run(
        [sys.executable, "-m", "kubelearn.cli", "run", "--experiment-fn", LINEAR,
         "--model-dir", str(tmp_path / "m"), "--hparams", "train_steps=50,learning_rate=1e6"],
        env=runner_env(drop=("EM_",), KUBELEARN_PROGRESS_PORT="0",
                       KUBELEARN_TERMINATION_LOG=str(termination)),
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    final = json.loads(termination.read_text())
    assert "NanLossDuringTrainingError" in final["error"]
    assert em.load_run(final["run"]).status == "Failed"
