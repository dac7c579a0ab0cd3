"""Build the project's images from its Dockerfile without a daemon or a registry, and cache them.

No registry is reachable, so the base is a Debian rootfs made by mmdebstrap, committed as a
local image, and passed to the Dockerfile as PYTHON_IMAGE. Each target is built with
`buildah bud --isolation chroot` on vfs storage and exported as a docker-archive tarball under
~/.cache/kubelearn/images/<key>/, where the key hashes every input of the build, so a changed
source rebuilds and an unchanged one costs nothing. The machine's CA bundle is bind-mounted
read-only into the build's RUN steps only (pip reaches the package index through a TLS proxy
that only this bundle trusts); it never lands in a layer.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from tests.node.host import IMAGE_PACKAGES, apt_install

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("KUBELEARN_CACHE", Path.home() / ".cache" / "kubelearn")) / "images"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

# What the host needs; installed by the CI script (tests/node/host.py), never by the build.
APT_PACKAGES = IMAGE_PACKAGES
TOOLS = ("buildah", "mmdebstrap")

# Bump when the way the base is made changes (the key then changes with it).
BASE_RECIPE = "mmdebstrap-minbase-1"
SUITE = "bookworm"
# python-is-python3: the Dockerfile's builder calls `python`.
BASE_PACKAGES = ("python3", "python3-pip", "python3-venv", "python-is-python3", "ca-certificates")
# Debian marks its python3 as externally managed (PEP 668); the images install into it.
BASE_ENV = ("PIP_BREAK_SYSTEM_PACKAGES=1",)

VERSION = "0.1.0"
TARGETS = ("runner", "operator", "tensorboard")
# The files the Dockerfile copies (see .dockerignore) plus the Dockerfile itself.
BUILD_INPUTS = ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md", "runner", "common",
                "operator")


@dataclass(frozen=True)
class Image:
    """One built image: its reference once imported, its tarball, size and build time."""

    name: str
    archive: Path
    size_bytes: int
    build_seconds: float


class ImageBuildError(RuntimeError):
    """A build step failed; the message names the command and carries the tail of its output."""


def missing_tools() -> list[str]:
    """The build tools not on PATH (tests skip, naming them, when any is missing)."""
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def _source_files(root: Path, entries: Iterable[str]) -> Iterator[Path]:
    for entry in entries:
        path = root / entry
        if path.is_file():
            yield path
        elif path.is_dir():
            for sub in sorted(path.rglob("*")):
                parts = set(sub.relative_to(root).parts)
                if (sub.is_file() and "__pycache__" not in parts
                        and not any(p.endswith(".egg-info") for p in parts)
                        and sub.suffix not in (".pyc", ".pyo", ".pyd")):
                    yield sub


def base_key() -> str:
    """Hash of what makes the base image: the recipe's revision, suite, packages and config."""
    digest = hashlib.sha256()
    for part in (BASE_RECIPE, SUITE, *BASE_PACKAGES, *BASE_ENV):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:16]


def images_key(root: Path = REPO) -> str:
    """Hash of every input of the image build: the base key and each file the build reads."""
    digest = hashlib.sha256(base_key().encode())
    for path in _source_files(root, BUILD_INPUTS):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def image_name(target: str) -> str:
    """The reference the chart uses for a target (values.yaml: kubelearn/<target>)."""
    return f"kubelearn/{target}:{VERSION}"


def _run(cmd: list[str], env: dict[str, str], log: TextIO, cwd: Path | None = None) -> str:
    """Run one step, copying its output to `log` as it comes (a cold build takes minutes)."""
    log.write(f"+ {' '.join(cmd)}\n")
    log.flush()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines: list[str] = []
    for line in proc.stdout:
        log.write(line)
        log.flush()
        lines.append(line)
    if (rc := proc.wait()) != 0:
        raise ImageBuildError(f"{cmd[0]} {cmd[1]} exited with {rc}:\n{''.join(lines[-30:])}")
    return "".join(lines)


def _buildah_env(store: Path) -> dict[str, str]:
    return {**os.environ, "STORAGE_DRIVER": "vfs", "BUILDAH_ISOLATION": "chroot",
            "CONTAINERS_STORAGE_CONF": str(store / "storage.conf")}


def _storage(store: Path) -> Path:
    """A buildah storage of our own under the cache, so nothing touches the host's."""
    store.mkdir(parents=True, exist_ok=True)
    (store / "storage.conf").write_text(
        f'[storage]\ndriver = "vfs"\nrunroot = "{store}/run"\ngraphroot = "{store}/graph"\n')
    return store


def _build_base(env: dict[str, str], work: Path, log: TextIO) -> str:
    rootfs = work / "base.tar"
    _run(["mmdebstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
          SUITE, str(rootfs)], env, log)
    ref = f"localhost/kubelearn-base:{base_key()}"
    ctr = _run(["buildah", "from", "scratch"], env, log).split()[-1]
    try:
        mnt = _run(["buildah", "mount", ctr], env, log).split()[-1]
        _run(["tar", "-C", mnt, "-xf", str(rootfs)], env, log)
        _run(["buildah", "config", *[a for e in BASE_ENV for a in ("--env", e)], ctr], env, log)
        _run(["buildah", "commit", "--rm", ctr, ref], env, log)
    except BaseException:
        subprocess.run(["buildah", "rm", ctr], env=env, capture_output=True)
        raise
    return ref


def _build_target(target: str, base: str, key: str, env: dict[str, str], out: Path,
                  log: TextIO) -> Image:
    """Build one target; VCS_REF=<key> keeps buildah's layer cache from reusing a final stage
    whose bind-mounted wheels changed (the cache does not look at a mount's content)."""
    name = image_name(target)
    start = time.monotonic()
    _run(["buildah", "bud", "--isolation", "chroot", "--layers", "-f", "Dockerfile",
          "--target", target, "--build-arg", f"PYTHON_IMAGE={base}",
          "--build-arg", f"VCS_REF={key}",
          "-v", f"{CA_BUNDLE}:{CA_BUNDLE}:ro", "-t", f"localhost/{name}", "."],
         env, log, cwd=REPO)
    seconds = time.monotonic() - start
    archive = out / f"{target}.tar"
    _run(["buildah", "push", f"localhost/{name}", f"docker-archive:{archive}:{name}"], env, log)
    return Image(name, archive, archive.stat().st_size, round(seconds, 1))


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _load(manifest: Path) -> dict[str, Image]:
    data = json.loads(manifest.read_text())
    return {t: Image(d["name"], manifest.parent / d["archive"], d["size_bytes"], d["build_seconds"])
            for t, d in data["images"].items()}


def ensure_images(log: TextIO | None = None) -> dict[str, Image]:
    """Return the runner, operator and tensorboard images, built once per set of inputs."""
    log = log if log is not None else sys.stderr
    if missing := missing_tools():
        raise ImageBuildError(f"missing build tools: {', '.join(missing)} (apt-get install "
                              f"{' '.join(APT_PACKAGES)})")
    key = images_key()
    final = CACHE / key
    with _locked(CACHE / f"{key}.lock"):
        if (final / "images.json").is_file():
            os.utime(final)  # recently used: kept by _prune_archives
            return _load(final / "images.json")
        env = _buildah_env(_storage(CACHE / "buildah"))
        with tempfile.TemporaryDirectory(dir=CACHE, prefix=f".{key}-",
                                         ignore_cleanup_errors=True) as tmp:
            work = Path(tmp)
            start = time.monotonic()
            base = f"localhost/kubelearn-base:{base_key()}"
            probe = subprocess.run(["buildah", "inspect", "--type", "image", base], env=env,
                                   capture_output=True)
            if probe.returncode != 0:
                base = _build_base(env, work, log)
            base_seconds = round(time.monotonic() - start, 1)
            (work / "base.tar").unlink(missing_ok=True)
            images = {t: _build_target(t, base, key, env, work, log) for t in TARGETS}
            manifest = {"key": key, "base": base, "base_seconds": base_seconds,
                        "images": {t: {"name": i.name, "archive": i.archive.name,
                                       "size_bytes": i.size_bytes,
                                       "build_seconds": i.build_seconds}
                                   for t, i in images.items()}}
            (work / "images.json").write_text(json.dumps(manifest, indent=2) + "\n")
            os.chmod(work, 0o755)
            work.rename(final)
        _prune_archives(keep=KEEP_BUILDS)
        return _load(final / "images.json")


#: Image sets kept in the cache: each is ~650 MB of archives, and a source edit makes a new one.
KEEP_BUILDS = 3


def _prune_archives(keep: int) -> None:
    """Remove all but the `keep` newest image sets (the archives; buildah's layer cache stays)."""
    sets = sorted((p for p in CACHE.iterdir() if p.is_dir() and (p / "images.json").is_file()),
                  key=lambda p: p.stat().st_mtime, reverse=True)
    for old in sets[keep:]:
        shutil.rmtree(old, ignore_errors=True)
        (CACHE / f"{old.name}.lock").unlink(missing_ok=True)


PAUSE_SOURCE = Path(__file__).resolve().parent / "pause.c"
PAUSE_IMAGE = "kubelearn/pause:1"


def _tar_bytes(files: dict[str, tuple[bytes, int]]) -> bytes:
    """A reproducible tar (fixed owner and times) of name -> (content, mode)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, (data, mode) in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def ensure_pause(log: TextIO | None = None) -> Image:
    """The pod sandbox image: pause.c compiled static with gcc, in a docker-archive made here.

    It needs neither buildah nor a registry, only gcc and a static libc (libc6-dev).
    """
    log = log if log is not None else sys.stderr
    source = PAUSE_SOURCE.read_bytes()
    key = hashlib.sha256(b"pause-1\0" + source).hexdigest()[:16]
    final = CACHE / f"pause-{key}"
    archive = final / "pause.tar"
    with _locked(CACHE / f"pause-{key}.lock"):
        if archive.is_file():
            return Image(PAUSE_IMAGE, archive, archive.stat().st_size, 0.0)
        start = time.monotonic()
        with tempfile.TemporaryDirectory(dir=CACHE, prefix=".pause-") as tmp:
            binary = Path(tmp) / "pause"
            _run(["gcc", "-static", "-Os", "-s", "-o", str(binary), str(PAUSE_SOURCE)],
                 dict(os.environ), log)
            layer = _tar_bytes({"pause": (binary.read_bytes(), 0o755)})
            layer_id = hashlib.sha256(layer).hexdigest()
            config = json.dumps({
                "architecture": "amd64", "os": "linux",
                "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
                "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_id}"]},
                "history": [{"created_by": "gcc -static pause.c"}],
            }, sort_keys=True).encode()
            config_id = hashlib.sha256(config).hexdigest()
            manifest = json.dumps([{"Config": f"{config_id}.json", "RepoTags": [PAUSE_IMAGE],
                                    "Layers": [f"{layer_id}/layer.tar"]}]).encode()
            out = Path(tmp) / "out"
            out.mkdir()
            (out / "pause.tar").write_bytes(_tar_bytes({
                f"{layer_id}/layer.tar": (layer, 0o644),
                f"{config_id}.json": (config, 0o644),
                "manifest.json": (manifest, 0o644),
            }))
            out.rename(final)
        return Image(PAUSE_IMAGE, archive, archive.stat().st_size,
                     round(time.monotonic() - start, 1))


def main(argv: list[str]) -> int:
    """`python -m tests.node.images [apt]`: install the host tools, or build and print paths."""
    if argv[:1] == ["apt"]:
        apt_install()
        return 0
    try:
        images = ensure_images()
    except ImageBuildError as exc:
        print(f"image build failed: {exc}", file=sys.stderr)
        return 1
    for target, image in images.items():
        print(f"{target.upper()}={image.archive}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
