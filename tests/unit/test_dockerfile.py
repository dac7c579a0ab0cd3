"""The Dockerfile: the targets, user and entrypoints the chart relies on (hadolint's verdict
is in tests/test_lint.py).

There is no image build here (no container engine); these checks read the file.
"""

from __future__ import annotations

import ast
import json
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
UID = 65532


@dataclass
class Stage:
    base: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"stage {self.name} has no {keyword}"
        return found[-1]


def _logical_lines(text: str) -> list[str]:
    """Instructions with their continuation lines joined; comments dropped."""
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append(current + stripped)
        current = ""
    assert not current, "the Dockerfile ends in a line continuation"
    return lines


def parse(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARGs (name -> default) and the stages in order."""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in _logical_lines(text):
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword == "FROM":
            parts = rest.split()
            assert len(parts) == 3 and parts[1].upper() == "AS", f"unnamed stage: {line}"
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], parts[0])
            stages.append(Stage(base, parts[2]))
        elif not stages:
            assert keyword == "ARG", f"{keyword} before the first FROM"
            name, _, default = rest.partition("=")
            args[name] = default
        else:
            stages[-1].instructions.append((keyword, rest))
    return args, stages


@pytest.fixture(scope="module")
def stages() -> dict[str, Stage]:
    _, parsed = parse(DOCKERFILE.read_text())
    return {s.name: s for s in parsed}


def test_every_hadolint_ignore_is_justified():
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"\s*#\s*hadolint\s+(global\s+)?ignore=", line):
            before = lines[i - 1].strip() if i else ""
            assert before.startswith("#") and len(before) > 10 and "hadolint" not in before, (
                f"line {i + 1}: '{line.strip()}' needs a comment line above it saying why")


def test_three_targets_built_from_one_pinned_slim_python(stages):
    assert list(stages) == ["builder", "base", "runner", "operator", "tensorboard"]
    for stage in ("builder", "base"):
        assert re.fullmatch(r"python:3\.\d+\.\d+-slim-\w+", stages[stage].base), stages[stage].base
    assert stages["builder"].base == stages["base"].base
    assert stages["runner"].base == "base"
    assert stages["operator"].base == "base"
    assert stages["tensorboard"].base == "base"


def test_final_images_run_as_the_fixed_non_root_uid(stages):
    for name in ("runner", "operator", "tensorboard"):
        assert stages[name].last("USER") == f"{UID}:{UID}"
    assert f"--uid {UID}" in " ".join(stages["base"].all("RUN"))


def test_entrypoints(stages):
    runner = json.loads(stages["runner"].last("ENTRYPOINT"))
    operator = json.loads(stages["operator"].last("ENTRYPOINT"))
    # tini as PID 1 passes SIGTERM on, so a stopped replica exits 143 as documented.
    assert runner == ["/usr/bin/tini", "--", "kubelearn"]
    assert json.loads(stages["runner"].last("CMD")) == ["--help"]
    assert operator == ["/usr/bin/tini", "--", "python", "-m", "kubelearn_operator"]
    assert json.loads(stages["operator"].last("CMD")) == [
        "--all-namespaces", "--liveness=http://0.0.0.0:8080/healthz"]
    assert json.loads(stages["tensorboard"].last("ENTRYPOINT")) == [
        "/usr/bin/tini", "--", "tensorboard"]
    # What they start exists: the console script and the operator's __main__.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["kubelearn"] == "kubelearn.cli:main"
    assert (ROOT / "operator" / "kubelearn_operator" / "__main__.py").is_file()
    env = " ".join(stages["base"].all("ENV"))
    assert "PYTHONUNBUFFERED=1" in env  # logs reach `kubectl logs` as they are written


def test_no_compilers_caches_or_wheels_left_in_final_stages(stages):
    for name in ("base", "runner", "operator"):
        runs = " ".join(stages[name].all("RUN"))
        assert "apt-get" not in runs and "gcc" not in runs, f"{name} installs system packages"
        for run in stages[name].all("RUN"):
            if "pip install" in run:
                # Offline, from the builder's wheels, mounted so they stay out of the layers.
                assert "--mount=type=bind,from=builder" in run
                assert "--no-index" in run
        copies = " ".join(stages[name].all("COPY"))
        assert "/wheels" not in copies
    assert "PIP_NO_CACHE_DIR=1" in " ".join(stages["base"].all("ENV"))
    assert "rm -rf /var/lib/apt/lists/*" in " ".join(stages["builder"].all("RUN"))


def test_builder_reads_the_operator_extra_from_pyproject(stages, monkeypatch, capsys):
    run = next(r for r in stages["builder"].all("RUN") if "tomllib" in r)
    command = next(part for part in run.split("&&") if "tomllib" in part)
    argv = shlex.split(command.split(">")[0])
    assert argv[:2] == ["python", "-c"]
    monkeypatch.chdir(ROOT)  # where the build runs it
    exec(compile(argv[2], "<Dockerfile>", "exec"), {})
    out = capsys.readouterr().out.split()
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert out == extras["operator"] + extras["sweep"]
    assert any(name.startswith("kopf") for name in out)
    assert any(name.startswith("optuna") for name in out)
    runs = " ".join(stages["builder"].all("RUN"))
    # The runner: kubelearn with pyzmq, tensorboardX for the event files and s3fs for a
    # model directory on S3.
    assert '".[distributed,tensorboard,s3]"' in runs
    # TensorBoard: one pinned release.
    assert '"tensorboard==${TENSORBOARD_VERSION}"' in runs
    assert re.search(r"^ARG TENSORBOARD_VERSION=\d+\.\d+\.\d+$", DOCKERFILE.read_text(), re.M)


def test_oci_labels_and_version(stages):
    labels = " ".join(stages["base"].all("LABEL"))
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert f"ARG KUBELEARN_VERSION={version}" in DOCKERFILE.read_text()
    for key in ("licenses", "version", "revision"):
        assert f"org.opencontainers.image.{key}=" in labels
    for name in ("runner", "operator"):
        own = " ".join(stages[name].all("LABEL"))
        assert f'org.opencontainers.image.title="kubelearn-{name}"' in own
        assert "org.opencontainers.image.description=" in own


def test_dockerignore_lets_in_only_what_is_copied(stages):
    rules = [r.strip() for r in DOCKERIGNORE.read_text().splitlines()
             if r.strip() and not r.startswith("#")]
    assert rules[0] == "*"  # an allow-list: tests, charts, .git and caches stay out
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    copied = set()
    for stage in stages.values():
        for copy in stage.all("COPY"):
            if copy.startswith("--from="):
                continue
            copied.update(p.rstrip("/") for p in copy.split()[:-1])
    assert copied == allowed
    for path in allowed:
        assert (ROOT / path).exists(), path
    assert "**/__pycache__" in rules


@pytest.mark.parametrize(("package", "third_party"), [
    # The Experiment model, which the operator imports: the standard library alone.
    ("common/kubelearn_spec", set()),
    ("operator/kubelearn_operator",
     {"kubelearn_spec", "kubelearn_search", "kopf", "aiohttp", "kubernetes_asyncio",
      "prometheus_client"}),
    # The Sweep's search, which the operator imports: the model and the [sweep] extra.
    ("common/kubelearn_search", {"kubelearn_spec", "optuna"}),
])
def test_operator_image_leaves_out_what_the_operator_never_imports(stages, package,
                                                                   third_party):
    # The operator image installs its wheels with --no-deps and without the runner's: the
    # operator package may import only the standard library, the model, the search and the
    # [operator] and [sweep] extras' packages.
    run = " ".join(stages["operator"].all("RUN"))
    assert "--no-deps" in run and 'python -c "import kubelearn_operator.handlers"' in run
    allowed = set(sys.stdlib_module_names) | third_party
    for path in sorted((ROOT / package).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                assert top in allowed, (
                    f"{path.name} imports {name}, which the operator image does not install")
