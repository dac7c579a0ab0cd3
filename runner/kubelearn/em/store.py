"""The run store: a directory tree of folders holding uploaded runs.

On a cluster the store is a mounted volume shared by the pods; locally it is a directory.
Its root is ``$EM_RUN_STORE`` (default ``.em/store``).

Layout: a folder is a directory; a run is a directory named after the run that holds a
``run.yaml``. Folder paths follow the rule of ``t9k.em``: a path that does not start with
'/' is relative to the current user's home folder ``/<user>/`` (user from ``$EM_USER``,
else the login name), so ``folder='cv/mnist'`` is ``<store>/<user>/cv/mnist`` and
``folder='/team/cv'`` is ``<store>/team/cv``. A folder must exist (or be made with
``make_folder=True``), except each user's ``default`` folder, which is made when first used.

A run lands in the store by a single rename of a fully copied staging directory, so a
reader never sees half an upload; later syncs of the same run replace files one by one,
each atomically, ``run.yaml`` last.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import uuid
from pathlib import Path

import yaml

from kubelearn.em.files import atomic_write_text, fsync_dir, read_yaml
from kubelearn.em.values import check_conflict_strategy, check_str

STORE_ENV = "EM_RUN_STORE"
DEFAULT_STORE = ".em/store"
USER_ENV = "EM_USER"
RUN_FILE = "run.yaml"
DEFAULT_FOLDER = "default"
_STAGING = ".staging"
_USER_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_PART_FORBIDDEN = ("\\", "\0")


class UploadConflictError(FileExistsError):
    """A run of the same name is already in the folder and the strategy is 'error'."""


def store_root(store: str | os.PathLike[str] | None = None) -> Path:
    return Path(store if store is not None else os.environ.get(STORE_ENV) or DEFAULT_STORE)


def current_user() -> str:
    """The user whose home folder relative paths name: ``$EM_USER``, else the login name.

    Raises:
      ValueError: when the name is not one safe path component (it could leave the store).
    """
    user = os.environ.get(USER_ENV)
    if not user:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = "default"
    if not _USER_RE.fullmatch(user):
        raise ValueError(f"user {user[:80]!r} (from ${USER_ENV} or the login name) is not a "
                         f"valid folder name: use letters, digits, '.', '_' or '-'")
    return user


def folder_parts(folder: str) -> list[str]:
    """The folder's path inside the store as components, with the '/<user>/' rule applied."""
    check_str("folder", folder)
    parts = [p for p in folder.split("/") if p]
    if not parts:
        raise ValueError(f"folder {folder!r} does not name a folder")
    for part in parts:
        if part in (".", "..") or part.startswith(".") or any(
            c in part for c in _PART_FORBIDDEN
        ) or not part.isprintable():
            raise ValueError(f"folder {folder!r}: component {part!r} is not allowed")
    if not folder.startswith("/"):
        parts.insert(0, current_user())
    return parts


def is_run_dir(path: Path) -> bool:
    return (path / RUN_FILE).is_file()


def stored_run_id(path: Path) -> str | None:
    """The id in the ``run.yaml`` at ``path``, None when there is no readable run."""
    try:
        meta = read_yaml(path / RUN_FILE)
    except (OSError, ValueError, yaml.YAMLError):
        return None
    return meta.get("id") if isinstance(meta, dict) else None


def resolve_folder(
    folder: str, make_folder: bool, store: str | os.PathLike[str] | None = None
) -> Path:
    """The directory of ``folder`` in the store, made when asked to; errors name the folder."""
    root = store_root(store)
    path = root
    parts = folder_parts(folder)
    if parts == [current_user(), DEFAULT_FOLDER]:
        make_folder = True  # every user has a default folder
    for part in parts:
        path = path / part
        if is_run_dir(path):
            raise ValueError(f"folder {folder!r}: {path} is a run, not a folder")
        if path.exists() and not path.is_dir():
            raise ValueError(f"folder {folder!r}: {path} is not a directory")
    if not path.is_dir():
        if not make_folder:
            raise FileNotFoundError(
                f"folder {folder!r} does not exist in the run store {root}"
                " (pass make_folder=True to create it)"
            )
        path.mkdir(parents=True, exist_ok=True)
    return path


def sync_run(local_dir: Path, dest: Path) -> None:
    """Bring ``dest`` up to date with ``local_dir``, file by file, ``run.yaml`` last."""
    files = sorted(p for p in local_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
    files.sort(key=lambda p: p.name == RUN_FILE)
    for src in files:
        target = dest / src.relative_to(local_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, src.read_text(encoding="utf-8"))


def _stage(local_dir: Path, root: Path) -> Path:
    staging = root / _STAGING / uuid.uuid4().hex
    staging.mkdir(parents=True)
    sync_run(local_dir, staging)
    return staging


def _place(staging: Path, dest: Path) -> bool:
    """Rename the staged run to ``dest``; False when something got there first."""
    if dest.exists():
        return False
    try:
        os.rename(staging, dest)
    except OSError:
        return False
    fsync_dir(dest.parent)
    return True


def upload_run(
    local_dir: Path,
    run_id: str,
    name: str,
    folder: str = "default",
    make_folder: bool = False,
    conflict_strategy: str = "new",
    store: str | os.PathLike[str] | None = None,
) -> Path | None:
    """Upload a local run directory into ``folder``; the path it got, or None if skipped.

    A run already uploaded there (same ``id`` in its ``run.yaml``) is synced in place, so
    uploading the same run again is never a conflict with itself.
    """
    check_conflict_strategy(conflict_strategy)
    root = store_root(store)
    parent = resolve_folder(folder, make_folder, root)
    dest = parent / name
    if dest.exists() and stored_run_id(dest) == run_id:
        sync_run(local_dir, dest)
        return dest
    if dest.exists():
        if conflict_strategy == "skip":
            return None
        if conflict_strategy == "error":
            raise UploadConflictError(f"a run named {name!r} already exists in folder {folder!r}")
        if conflict_strategy == "replace" and not is_run_dir(dest):
            raise ValueError(
                f"cannot replace {name!r} in folder {folder!r}: {dest} is a folder, not a run"
            )
    staging = _stage(local_dir, root)
    try:
        if conflict_strategy == "replace" and dest.exists():
            trash = root / _STAGING / f"old-{uuid.uuid4().hex}"
            os.rename(dest, trash)
            shutil.rmtree(trash, ignore_errors=True)
        if _place(staging, dest):
            return dest
        if conflict_strategy != "new":
            raise UploadConflictError(f"a run named {name!r} appeared in folder {folder!r}")
        n = 2
        while True:
            candidate = parent / f"{name}-{n}"
            if candidate.exists() and stored_run_id(candidate) == run_id:
                sync_run(local_dir, candidate)
                return candidate
            if _place(staging, candidate):
                return candidate
            n += 1
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
