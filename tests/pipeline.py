"""Run the pipeline's stages in-process, with the commands written in dvc.yaml."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
import shlex
import sys
from pathlib import Path

import yaml

from intrada.dag import resolved_stages
from tests.conftest import REPO, write_params


def dvc_stages(params: dict | None = None, dvc_yaml: Path = REPO / "dvc.yaml") -> dict[str, dict]:
    """dvc.yaml's stages in file order (a topological order), resolved as DVC resolves
    them for `params` (the repository's params.yaml by default)."""
    if params is None:
        params = yaml.safe_load((REPO / "params.yaml").read_text())
    return resolved_stages(dvc_yaml, params)


def stage_argv(stage: dict) -> tuple[str, list[str]]:
    """('stages.x', [args]) from a `python -m stages.x args...` command."""
    words = shlex.split(stage["cmd"])
    assert words[:2] == ["python", "-m"], stage["cmd"]
    return words[2], words[3:]


@contextlib.contextmanager
def working_directory(path: Path):
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def run_stage(
    name: str,
    directory: Path,
    accessed: dict[str, set] | None = None,
    dvc_yaml: Path = REPO / "dvc.yaml",
) -> None:
    """Call one stage's main() in `directory` with its arguments in `dvc_yaml`. If
    `accessed` is given, record the params.yaml keys the stage parsed into
    accessed[name]."""
    params = yaml.safe_load((directory / "params.yaml").read_text())
    module_name, args = stage_argv(dvc_stages(params, dvc_yaml)[name])
    module = importlib.import_module(module_name)
    original_get = getattr(module, "get", None)
    if accessed is not None and original_get is not None:
        seen = accessed.setdefault(name, set())

        def recording_get(raw, key):
            seen.add(key)
            return original_get(raw, key)

        module.get = recording_get
    old_argv = sys.argv
    sys.argv = [module_name, *args]
    try:
        with working_directory(directory):
            module.main()
    finally:
        sys.argv = old_argv
        if original_get is not None:
            module.get = original_get


def run_pipeline(
    directory: Path,
    params: dict,
    accessed: dict[str, set] | None = None,
    dvc_yaml: Path = REPO / "dvc.yaml",
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    write_params(directory, params)
    for name in dvc_stages(params, dvc_yaml):
        run_stage(name, directory, accessed, dvc_yaml)


def tree_digest(directory: Path, folders=("data", "models", "metrics", "plots", "dvclive")):
    """sha256 of every file under the output folders, by relative path."""
    digests = {}
    for folder in folders:
        for path in sorted((directory / folder).rglob("*")):
            if path.is_file():
                digests[path.relative_to(directory).as_posix()] = hashlib.sha256(
                    path.read_bytes()
                ).hexdigest()
    return digests
