"""dvc.yaml declares, for each stage, all the project code it runs."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

from tests.conftest import REPO
from tests.pipeline import dvc_stages, stage_argv


def module_file(name: str) -> Path | None:
    path = REPO / Path(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return None


def project_imports(module: str) -> set[Path]:
    """Files of the project modules `module` imports, transitively (including imports
    inside functions and parent packages)."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # a module's packages run their __init__ too
            path = module_file(".".join(parts[:i]))
            if path is None or path in seen:
                continue
            seen.add(path)
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    todo += [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    todo.append(node.module)
                    todo += [f"{node.module}.{a.name}" for a in node.names]
    return {p for p in seen if p.parts[len(REPO.parts)] in ("intrada", "stages")}


def covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(REPO)
    return any(rel == Path(d) or Path(d) in rel.parents for d in deps)


def test_every_imported_project_file_is_a_declared_dependency():
    missing = {}
    for name, stage in dvc_stages().items():
        module, _ = stage_argv(stage)
        deps = [d for d in stage["deps"] if isinstance(d, str)]
        absent = sorted(
            str(p.relative_to(REPO))
            for p in project_imports(module)
            if not covered(p, deps) and p != REPO / "stages" / "__init__.py"  # empty
        )
        if absent:
            missing[name] = absent
    assert missing == {}


def test_declared_code_dependencies_exist():
    for name, stage in dvc_stages().items():
        for dep in stage["deps"]:
            if dep.startswith(("intrada", "stages")):
                assert (REPO / dep).exists(), f"{name}: {dep}"


def test_each_training_stage_depends_on_its_init_file():
    # Replacing the file a section starts from (init: file) must re-run its stage; with
    # another init the dependency is the params stamp every stage has anyway.
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["inter"].update(init="file", init_file="weights/advent.pth")
    stages = dvc_stages(params)
    assert "weights/advent.pth" in stages["train_inter"]["deps"]
    for name in ("train_source_only", "train_intra"):
        # The params stamp, and the stand-ins of init_file, model.pretrained and the
        # built-in tables' class_table.
        assert stages[name]["deps"].count("data/params.ok") == 4, name


def test_each_training_stage_depends_on_the_imagenet_file():
    # model.pretrained is a path param: replacing the file in place changes no param, so
    # the file itself must be a dependency of every stage that may load it.
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert params["model"]["pretrained"] == "data/params.ok"  # the default: no such file
    params["model"].update(pretrained="weights/imagenet.pth")
    stages = dvc_stages(params)
    for name in ("train_source_only", "train_inter", "train_intra"):
        assert "weights/imagenet.pth" in stages[name]["deps"], name
    assert [n for n, s in stages.items() if "weights/imagenet.pth" in s["deps"]] == [
        "train_source_only",
        "train_inter",
        "train_intra",
    ]


def test_every_named_plot_can_be_shown_alone():
    """`dvc plots show <id>` matches ids as regular expressions: an id with brackets or
    other special characters could not be asked for by itself."""
    plots = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
    ids = [next(iter(p)) if isinstance(p, dict) else p for p in plots]
    assert [i for i in ids if not re.fullmatch(i, i)] == []
    assert len(ids) == len(set(ids))


def test_dvc_lock_records_only_stages_that_exist():
    # An entry of a removed stage would survive in dvc.lock and mislead whoever reads it.
    locked = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]
    assert sorted(locked) == sorted(dvc_stages())
