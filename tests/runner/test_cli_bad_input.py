"""The exit-code contract of ``kubelearn run`` and ``kubelearn local`` as real processes:
every malformed input is one line on stderr and exit code 2, never a traceback, and
``--fresh`` deletes only a directory kubelearn made."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kubelearn_spec.schema import MAX_REPLICAS

REPO = Path(__file__).resolve().parents[2]
LINEAR = "kubelearn.examples.linear:experiment_fn"
DEEP = "[" * 20_000 + "]" * 20_000


def _cli(args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None,
         timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("TF_CONFIG", "KUBELEARN_"))}
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "kubelearn.cli", *args], capture_output=True,
                          text=True, env=full, cwd=cwd, timeout=timeout)


def _assert_one_line_exit_2(proc: subprocess.CompletedProcess[str], needle: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert needle in lines[0], lines[0]
    assert len(lines[0]) < 1000


def _manifest(**spec_changes) -> dict:
    spec = {"experimentFn": LINEAR, "replicas": {"worker": 1}}
    spec.update(spec_changes)
    return {"apiVersion": "kubelearn.dev/v1alpha1", "kind": "Experiment",
            "metadata": {"name": "linear"}, "spec": spec}


def _own(*containers) -> dict:
    """A manifest without experimentFn whose worker's template has these containers."""
    return _manifest(experimentFn=None, replicas=None, replicaSpecs={"worker": {
        "template": {"spec": {"containers": list(containers)}}}})


def _bomb() -> str:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 10):
        refs = ", ".join([f"*l{i - 1}"] * 9)
        lines.append(f"l{i}: &l{i} [{refs}]")
    return ("\n".join(lines) + "\napiVersion: kubelearn.dev/v1alpha1\nkind: Experiment\n"
            "metadata: {name: *l9}\nspec: {experimentFn: *l9}\n")


LOCAL_CASES = {
    "deep JSON": ("{\"a\": " + DEEP + "}", "nested"),
    "invalid YAML": ("kind: [Experiment\n", "not valid YAML"),
    "binary bytes": (bytes(range(256)) * 8, "not UTF-8"),
    "NUL bytes": (b"kind: Experiment\0\n", "NUL"),
    "alias bomb": (_bomb(), "alias"),
    "replicas above the CRD's limit": (yaml.safe_dump(
        _manifest(replicas={"worker": 1_000_000_000})), "spec.replicas.worker"),
    "replicaSpecs above the CRD's limit": (yaml.safe_dump(
        _manifest(replicas=None, replicaSpecs={"worker": {"replicas": MAX_REPLICAS + 1}})),
        "spec.replicaSpecs.worker.replicas"),
    "name with a trailing newline": (yaml.safe_dump(
        {**_manifest(), "metadata": {"name": "linear\n"}}), "metadata.name"),
    "experimentFn with a trailing newline": (yaml.safe_dump(
        _manifest(experimentFn=LINEAR + "\n")), "spec.experimentFn"),
    "hparams that are not an object": (yaml.safe_dump(_manifest(hparams=[1, 2])),
                                       "spec.hparams"),
    "a !!binary hparam": ("apiVersion: kubelearn.dev/v1alpha1\nkind: Experiment\n"
                          "metadata: {name: x}\nspec: {experimentFn: 'a:b', "
                          "replicas: {worker: 1}, hparams: {b: !!binary aGVsbG8=}}\n",
                          "YAML tag !!binary is not supported"),
    "a !!set hparam": ("apiVersion: kubelearn.dev/v1alpha1\nkind: Experiment\n"
                       "metadata: {name: x}\nspec: {experimentFn: 'a:b', "
                       "replicas: {worker: 1}, hparams: {b: !!set {x: null}}}\n",
                       "YAML tag !!set is not supported"),
    "one large scalar aliased many times": (
        "big: &big " + "x" * (1 << 20) + "\nall: [" + ", ".join(["*big"] * 20) + "]\n",
        "bytes of YAML values with aliases expanded"),
    "an integer of 5000 digits": (yaml.safe_dump(_manifest()).replace(
        "worker: 1", "worker: 1" + "0" * 5000), "value cannot be read"),
    "no experimentFn, the main container runs its image's entrypoint": (yaml.safe_dump(
        _own({"name": "tensorflow", "image": "tensorflow/tensorflow:2.15.0"})),
        "spec.replicaSpecs.worker.template.spec.containers[0].command: a local run needs "
        "a command"),
    "no experimentFn, only spec.image": (yaml.safe_dump(_manifest(
        experimentFn=None, image="tensorflow/tensorflow:2.15.0")),
        "spec.replicaSpecs.worker.template: a local run needs a command"),
    "no experimentFn and nothing to run": (yaml.safe_dump(_own({"name": "tensorflow"})),
                                           "spec.experimentFn: is required unless"),
    "two containers, neither named tensorflow or kubelearn": (yaml.safe_dump(_own(
        {"name": "proxy", "command": ["proxy"]}, {"name": "trainer", "command": ["x"]})),
        "spec.replicaSpecs.worker.template.spec.containers: has several containers"),
    "mixed-type unknown keys": ("apiVersion: kubelearn.dev/v1alpha1\nkind: Experiment\n"
                                "metadata: {name: x}\nspec: {experimentFn: 'a:b', "
                                "replicas: {worker: 1}, 1: a, b: c}\n", "unknown field"),
}


@pytest.mark.parametrize("label", list(LOCAL_CASES))
def test_local_malformed_manifest_is_one_line_exit_2(tmp_path, label):
    content, needle = LOCAL_CASES[label]
    path = tmp_path / "experiment.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    proc = _cli(["local", str(path), "--model-dir", str(tmp_path / "m")], timeout=60)
    _assert_one_line_exit_2(proc, needle)


@pytest.mark.parametrize(("target", "needle"), [(".", "is a directory"),
                                                ("/dev/null", "not a regular file"),
                                                ("missing.yaml", "no such file")])
def test_local_directory_or_device_as_manifest(tmp_path, target, needle):
    _assert_one_line_exit_2(_cli(["local", target], cwd=tmp_path), needle)


RUN_CASES = {
    "deep TF_CONFIG": ({"TF_CONFIG": DEEP}, [], "TF_CONFIG"),
    "deep hparams": ({"KUBELEARN_HPARAMS": "{\"a\": " + DEEP + "}"}, [], "KUBELEARN_HPARAMS"),
    "deep --hparams": ({}, ["--hparams", DEEP], "--hparams"),
    "port above 65535": ({"TF_CONFIG": '{"cluster": {"ps": ["127.0.0.1:70000"], "worker": '
                                       '["127.0.0.1:2"]}, "task": {"type": "ps", "index": 0}}'},
                         [], "cluster.ps"),
    "port 0": ({"TF_CONFIG": '{"cluster": {"worker": ["127.0.0.1:0"]}, '
                             '"task": {"type": "worker", "index": 0}}'}, [], "cluster.worker"),
    "host that does not parse": ({"TF_CONFIG": '{"cluster": {"ps": ["no host!:2222"], '
                                               '"worker": ["a:1"]}, "task": {"type": "ps", '
                                               '"index": 0}}'}, [], "cluster.ps"),
    "bind host not an IP": ({"KUBELEARN_BIND_HOST": "localhost\n"}, [], "KUBELEARN_BIND_HOST"),
    "progress port": ({"KUBELEARN_PROGRESS_PORT": "65536"}, [], "KUBELEARN_PROGRESS_PORT"),
    "progress port in superscript digits": ({"KUBELEARN_PROGRESS_PORT": "\u00b2"}, [],
                                            "KUBELEARN_PROGRESS_PORT"),
    "progress port in Arabic-Indic digits": ({"KUBELEARN_PROGRESS_PORT": "\u0663" * 4}, [],
                                             "KUBELEARN_PROGRESS_PORT"),
    "curve key": ({"KUBELEARN_CURVE_KEY": "0" * 63}, [], "KUBELEARN_CURVE_KEY"),
    "ps memory limit not bytes": ({"KUBELEARN_PS_MEMORY_LIMIT": "1.5G"}, [],
                                  "KUBELEARN_PS_MEMORY_LIMIT"),
    "ps memory limit too small": ({"KUBELEARN_PS_MEMORY_LIMIT": "1Mi"}, [],
                                  "KUBELEARN_PS_MEMORY_LIMIT"),
    "TF_CONFIG of wrong types": ({"TF_CONFIG": '{"cluster": 5}'}, [], "TF_CONFIG"),
    "TF_CONFIG not UTF-8 JSON": ({"TF_CONFIG": "{\"cluster\": \udcff}"}, [], "TF_CONFIG"),
    "experiment module raising on import": ({"PYTHONPATH": "{tmp}"}, ["--experiment-fn",
                                            "broken_module:fn"], "ZeroDivisionError"),
    "a schedule that needs arguments": ({}, ["--schedule", "extend_train_hooks"],
                                        "unknown schedule 'extend_train_hooks'"),
    "a schedule that builds an Experiment": ({}, ["--schedule", "polyaxon"],
                                             "unknown schedule 'polyaxon'"),
    "an unknown optimizer": ({"KUBELEARN_HPARAMS": '{"optimizer": "Nope"}'}, [],
                             "Unknown optimizer 'Nope'"),
    "a batch size of 0": ({"KUBELEARN_HPARAMS": '{"batch_size": 0}'}, [],
                          "batch_size must be > 0"),
}


@pytest.mark.parametrize("label", list(RUN_CASES))
def test_run_malformed_input_is_one_line_exit_2(tmp_path, label):
    env, args, needle = RUN_CASES[label]
    (tmp_path / "broken_module.py").write_text("1 / 0\n")
    env = {k: v.replace("{tmp}", str(tmp_path)) for k, v in env.items()}
    if "--experiment-fn" not in args:
        args = ["--experiment-fn", LINEAR, *args]
    proc = _cli(["run", *args, "--model-dir", str(tmp_path / "m")], env=env)
    _assert_one_line_exit_2(proc, needle)


@pytest.mark.parametrize("value", ["tls", "curve25519", "on\n"])
def test_local_refuses_a_wire_encryption_the_operator_refuses(tmp_path, value):
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(_manifest()))
    proc = _cli(["local", str(path), "--model-dir", str(tmp_path / "m")],
                env={"KUBELEARN_WIRE_ENCRYPTION": value})
    _assert_one_line_exit_2(proc, "KUBELEARN_WIRE_ENCRYPTION must be curve or none, got ")
    assert not (tmp_path / "m").exists()


def test_fresh_never_deletes_the_working_directory(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "precious.txt").write_text("keep me")
    (work / "experiment.yaml").write_text(yaml.safe_dump(_manifest(modelDir=".")))
    proc = _cli(["local", "experiment.yaml", "--fresh"], cwd=work)
    _assert_one_line_exit_2(proc, "--fresh")
    assert (work / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize("where", ["parent", "home", "unmarked"])
def test_fresh_deletes_only_a_marked_directory(tmp_path, where):
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    (work / "sub" / "experiment.yaml").write_text(yaml.safe_dump(_manifest()))
    (tmp_path / "unmarked").mkdir()
    (tmp_path / "unmarked" / "data.txt").write_text("keep me")
    model_dir = {"parent": work, "home": tmp_path, "unmarked": tmp_path / "unmarked"}[where]
    if where != "unmarked":
        (model_dir / ".kubelearn-model-dir").write_text("")
    proc = _cli(["local", str(work / "sub" / "experiment.yaml"), "--fresh", "--model-dir",
                 str(model_dir)], env={"HOME": str(tmp_path)}, cwd=tmp_path / "unmarked")
    _assert_one_line_exit_2(proc, "not deleting")
    assert (work / "sub" / "experiment.yaml").exists()
    assert (tmp_path / "unmarked" / "data.txt").exists()


def test_fresh_deletes_a_directory_kubelearn_made(tmp_path):
    from kubelearn.local import MARKER_NAME, prepare_model_dir

    manifest = tmp_path / "experiment.yaml"
    manifest.write_text("")
    model_dir = tmp_path / "output" / "linear"
    prepare_model_dir(str(model_dir), str(manifest), fresh=False)
    assert (model_dir / MARKER_NAME).is_file()
    (model_dir / "model.ckpt-5.npz").write_text("old")
    prepare_model_dir(str(model_dir), str(manifest), fresh=True)
    assert sorted(os.listdir(model_dir)) == [MARKER_NAME]


def test_crd_replica_limit_is_the_one_the_validators_use():
    crd = yaml.safe_load((REPO / "crds" / "experiments.kubelearn.dev.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    props = schema["properties"]
    for role in ("ps", "worker", "evaluator"):
        assert props["replicas"]["properties"][role]["maximum"] == MAX_REPLICAS
        replica_spec = props["replicaSpecs"]["properties"][role]["properties"]["replicas"]
        assert replica_spec["maximum"] == MAX_REPLICAS


@pytest.mark.parametrize("args", [
    ["local", "{manifest}", "--model-dir", "s3://KEY:SECRET@bucket/x"],
    ["run", "--experiment-fn", LINEAR, "--model-dir", "s3://KEY:SECRET@bucket/x"],
    ["runs", "--dir", "s3://KEY:SECRET@bucket/x", "list"],
])
def test_credentials_in_a_url_are_never_printed(tmp_path, args):
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(_manifest()))
    proc = _cli([a.replace("{manifest}", str(path)) for a in args], timeout=120)
    assert proc.returncode != 0
    assert "SECRET" not in proc.stdout + proc.stderr, proc.stderr[-2000:]
    assert "s3://bucket/x" in proc.stdout + proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize("command", ["local", "run"])
def test_a_bucket_name_s3_refuses_is_one_line_exit_3_at_once(tmp_path, command):
    """botocore refuses it before sending anything (ParamValidationError): not a store that
    is down, so the replica is not kept waiting for it."""
    pytest.importorskip("s3fs")
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(_manifest()))
    url = "s3://Bad_Bucket!/x"
    args = (["local", str(path), "--model-dir", url] if command == "local"
            else ["run", "--experiment-fn", LINEAR, "--model-dir", url])
    proc = _cli(args, env={"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "k",
                           "AWS_SECRET_ACCESS_KEY": "s", "AWS_DEFAULT_REGION": "us-east-1"},
                timeout=120)
    assert proc.returncode == 3, proc.stderr[-2000:]
    (line,) = proc.stderr.strip().splitlines()
    assert "not a valid location for this store" in line and "Invalid bucket name" in line


def test_local_reads_no_scale_request_through_a_link_out_of_its_model_dir(tmp_path):
    """``kubelearn scale`` writes scale.json by renaming a new file onto it (a symlink there
    is replaced, not written through); ``kubelearn local`` reads it only from inside the
    model dir, and a FIFO there does not stop it."""
    from kubelearn.local import MARKER_NAME, SCALE_FILE, Console, Launcher
    from kubelearn_spec.model import parse_manifest

    model_dir, elsewhere = tmp_path / "m", tmp_path / "elsewhere.json"
    model_dir.mkdir()
    (model_dir / MARKER_NAME).write_text("")
    elsewhere.write_text('{"replicas": 5}')
    (model_dir / SCALE_FILE).symlink_to(elsewhere)
    launcher = Launcher(parse_manifest(_manifest()), str(model_dir),
                        Console(io.StringIO(), progress_tty=False))
    assert launcher.scale_request() is None
    (model_dir / SCALE_FILE).unlink()
    os.mkfifo(model_dir / SCALE_FILE)
    assert launcher.scale_request() is None
    (model_dir / SCALE_FILE).unlink()
    (model_dir / SCALE_FILE).symlink_to(elsewhere)
    proc = _cli(["scale", str(model_dir), "--replicas", "3"])
    assert proc.returncode == 0, proc.stderr
    assert elsewhere.read_text() == '{"replicas": 5}'
    assert not (model_dir / SCALE_FILE).is_symlink()
    assert launcher.scale_request() == 3


def test_local_runs_the_main_container_command_without_an_experiment_fn(tmp_path):
    """Without experimentFn, ``kubelearn local`` runs each main container's command and args
    with TF_CONFIG, as a pod runs a user's own TensorFlow program."""
    check = ("import json, os, sys; task = json.loads(os.environ['TF_CONFIG'])['task']; "
             "sys.exit(0 if task == {'type': 'worker', 'index': 0} and "
             "sys.argv[1:] == ['--epochs', '3'] else 7)")
    manifest = tmp_path / "experiment.yaml"
    manifest.write_text(yaml.safe_dump(_own(
        {"name": "proxy", "image": "proxy:1", "command": ["false"]},
        {"name": "tensorflow", "image": "tensorflow/tensorflow:2.15.0",
         "command": [sys.executable, "-c", check], "args": ["--epochs", "3"]})))
    proc = _cli(["local", str(manifest), "--model-dir", str(tmp_path / "m"), "--no-progress"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Succeeded" in proc.stdout
