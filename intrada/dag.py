"""The pipeline's stages as dvc.yaml defines them, resolved for a params mapping the way
DVC resolves them: `foreach` stages expanded to `name@key`, `${...}` replaced by values.

For running stages without DVC (the tests, the method-gain benchmark), which must run
exactly the commands DVC would.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import yaml

PLACEHOLDER = re.compile(r"\$\{([^}]+)\}")


def lookup(context: dict[str, Any], dotted: str) -> Any:
    value: Any = context
    for part in dotted.strip().split("."):
        value = value[part]
    return value


def substitute(obj: Any, context: dict[str, Any]) -> Any:
    """`obj` with every `${a.b}` replaced from `context`; a string that is one
    placeholder becomes its value as is (a dict stays a dict)."""
    if isinstance(obj, dict):
        return {substitute(k, context): substitute(v, context) for k, v in obj.items()}
    if isinstance(obj, list):
        return [substitute(v, context) for v in obj]
    if isinstance(obj, str):
        whole = PLACEHOLDER.fullmatch(obj)
        if whole:
            return lookup(context, whole.group(1))
        return PLACEHOLDER.sub(lambda m: str(lookup(context, m.group(1))), obj)
    return obj


def resolved_stages(dvc_yaml: str | Path, params: dict[str, Any]) -> dict[str, dict]:
    """dvc.yaml's stages in file order (a topological order), resolved for `params`."""
    stages = yaml.safe_load(Path(dvc_yaml).read_text())["stages"]
    resolved = {}
    for name, stage in stages.items():
        if "foreach" in stage:
            for key, item in substitute(stage["foreach"], params).items():
                context = {**params, "key": key, "item": item}
                resolved[f"{name}@{key}"] = substitute(stage["do"], context)
        else:
            resolved[name] = substitute(stage, params)
    return resolved


def stage_outputs(stage: dict) -> list[str]:
    """Paths a stage writes (outs and metrics)."""
    return [
        entry if isinstance(entry, str) else next(iter(entry))
        for entry in stage.get("outs", []) + stage.get("metrics", [])
    ]


def declared_outputs(dvc_yaml: str | Path) -> list[tuple[Path, str | None]]:
    """(folder, name) of every output dvc.yaml declares (outs, metrics, plots of its
    stages), without resolving it: a `${...}` in a path stands for any name in the
    folder before it (name None). For sweeping what killed writers left
    (`io.sweep_stale_temps`), with no need of params.yaml."""
    # libyaml's loader where there is one: every stage runs this at its start.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    stages = yaml.load(Path(dvc_yaml).read_text(), Loader=loader).get("stages") or {}
    found: list[tuple[Path, str | None]] = []
    for stage in stages.values():
        stage = stage.get("do", stage)
        for key in ("outs", "metrics", "plots"):
            for entry in stage.get(key) or []:
                parts = Path(entry if isinstance(entry, str) else next(iter(entry))).parts
                templated = [i for i, part in enumerate(parts) if "${" in part]
                if templated:
                    found.append((Path(*parts[: templated[0]]), None))
                else:
                    found.append((Path(*parts[:-1]), parts[-1]))
    return list(dict.fromkeys(found))


# What a working copy of the pipeline needs besides params.yaml (tests and benchmarks
# build throwaway projects from these).
PIPELINE_FILES = (
    "intrada",
    "stages",
    "dvc.yaml",
    ".dvcignore",
    ".gitignore",
    ".dvc/config",
    ".dvc/.gitignore",
    ".dvc/plots",
)


def copy_pipeline(source: Path, target: Path) -> None:
    """The pipeline's code and DVC files from the project at `source` into `target`."""
    for name in PIPELINE_FILES:
        src, dst = source / name, target / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
