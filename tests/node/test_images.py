"""The images built daemonless from the Dockerfile: their cache key, and what they run."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.node import images


def _copy_inputs(dest: Path) -> Path:
    for entry in images.BUILD_INPUTS:
        src = images.REPO / entry
        if src.is_dir():
            shutil.copytree(src, dest / entry, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / entry)
    return dest


def test_key_follows_every_build_input_and_ignores_bytecode(tmp_path: Path) -> None:
    root = _copy_inputs(tmp_path)
    key = images.images_key(root)
    assert key == images.images_key(images.REPO)
    cache = root / "runner" / "kubelearn" / "__pycache__"
    cache.mkdir(exist_ok=True)
    (cache / "x.cpython-311.pyc").write_bytes(b"\0")
    assert images.images_key(root) == key
    for changed in ("Dockerfile", "pyproject.toml", "runner/kubelearn/examples/linear.py",
                    "operator/kubelearn_operator/handlers.py"):
        with (root / changed).open("a") as fh:
            fh.write("\n")
        new = images.images_key(root)
        assert new != key, changed
        key = new


def test_names_match_the_chart() -> None:
    values = (images.REPO / "charts" / "kubelearn" / "values.yaml").read_text()
    for target in images.TARGETS:
        assert f"repository: {images.image_name(target).split(':')[0]}" in values


@pytest.fixture(scope="module")
def built() -> dict[str, images.Image]:
    if missing := images.missing_tools():
        pytest.skip(f"building images needs {', '.join(missing)} "
                    f"(apt-get install {' '.join(images.APT_PACKAGES)})")
    return images.ensure_images()


@pytest.fixture
def buildah_env() -> dict[str, str]:
    return images._buildah_env(images._storage(images.CACHE / "buildah"))


@pytest.fixture
def container(buildah_env: dict[str, str]) -> Iterator[object]:
    """Make working containers from the exported archives; remove them afterwards."""
    made: list[str] = []

    def from_archive(image: images.Image) -> str:
        out = subprocess.run(["buildah", "from", "--pull-never", f"docker-archive:{image.archive}"],
                             env=buildah_env, capture_output=True, text=True, check=True)
        made.append(out.stdout.split()[-1])
        return made[-1]

    yield from_archive
    for ctr in made:
        subprocess.run(["buildah", "rm", ctr], env=buildah_env, capture_output=True)


def _run_in(ctr: str, env: dict[str, str], script: str) -> subprocess.CompletedProcess[str]:
    cmd = ["buildah", "run", "--isolation", "chroot", ctr, "--", "sh", "-c", script]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.node
@pytest.mark.slow
def test_runner_image_trains_linear_example_as_uid_65532(built, container, buildah_env) -> None:
    ctr = container(built["runner"])
    proc = _run_in(ctr, buildah_env, "id -u; kubelearn run --experiment-fn "
                   "kubelearn.examples.linear:experiment_fn --hparams train_steps=50 "
                   "--model-dir /tmp/linear; ls /tmp/linear")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[0] == "65532"
    assert "Loss for final step" in proc.stdout + proc.stderr
    # tensorboardX is in the image: the event files TensorBoard reads are written.
    assert "events.out.tfevents" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.node
@pytest.mark.slow
def test_tensorboard_image_runs_tensorboard_as_uid_65532(built, container, buildah_env) -> None:
    ctr = container(built["tensorboard"])
    proc = _run_in(ctr, buildah_env, "id -u; tensorboard --version_tb")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split()[0] == "65532"
    assert re.fullmatch(r"\d+\.\d+\.\d+", proc.stdout.split()[1]), proc.stdout


@pytest.mark.node
@pytest.mark.slow
def test_operator_image_imports_its_handlers(built, container, buildah_env) -> None:
    ctr = container(built["operator"])
    proc = _run_in(ctr, buildah_env, "id -u; python -c 'import kopf, kubelearn_operator.handlers'")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split() == ["65532"]


@pytest.mark.node
@pytest.mark.slow
def test_host_ca_bundle_stays_out_of_the_images(built, container, buildah_env) -> None:
    host = hashlib.sha256(images.CA_BUNDLE.read_bytes()).hexdigest()
    for target in images.TARGETS:
        ctr = container(built[target])
        proc = _run_in(ctr, buildah_env, f"sha256sum {images.CA_BUNDLE} || true")
        assert host not in proc.stdout, target
