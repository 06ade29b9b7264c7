"""Every command in README.md and docs/*.md runs as written.

Commands are read from fenced `bash`/`sh`/`shell` blocks (each line; `console` blocks:
the lines after `$ `) and from code spans in table rows whose first word is a program
(`make`, `dvc`, `python`, ...). Each one is either

- run here (`RUN`: the cheap ones, in a temporary copy of the project with the installed
  environment; a make target is run with `-o .venv/.installed` so that it never
  reinstalls), or
- marked as needing what this test does not have, with an HTML comment
  `<!-- needs: data | gpu | cluster | long | outputs -->` (one or more words) on the
  line before its block or in its table row: the real datasets, a GPU, a cluster,
  minutes to hours of training, or the outputs of `make repro` in the workspace.

An unmarked command that is not run fails, and so does any command (run, marked, or in
prose) that names a make target, python module, `-S` params key, DVC stage or project
file that does not exist. Relative links and images must resolve too.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
NEEDS = {"data", "gpu", "cluster", "long", "outputs"}
MARKER = re.compile(r"<!--\s*needs:\s*([^>]*?)\s*-->")
PROGRAMS = {
    "make", "dvc", "python", "python3", "git", "torchrun", "srun", "sbatch", "unzip", "ln",
    "mkdir", "source", "cp", "ruff", "pytest", "bash",
}  # fmt: skip
SHELL_BLOCKS = {"bash", "sh", "shell"}


@dataclass(frozen=True)
class Expect:
    returncode: int = 0
    output: str = ""  # a substring of stdout + stderr
    then: str = ""  # a command that restores the copy afterwards


# The cheap commands, run in order in one copy of the project (those that change DVC's
# configuration last). Every one must appear in the pages.
RUN = {
    "make help": Expect(output="evaluate-model"),
    "make report": Expect(output="wrote report.html"),
    "make plots": Expect(),
    "make lint": Expect(),
    "source .venv/bin/activate": Expect(),
    "python -m stages.check_params --stamp data/params.ok": Expect(),
    "python -m intrada.classes gta5": Expect(output="- name: motorcycle"),
    "python -m intrada.rounds --help": Expect(output="Write the stages of intra rounds 2..N"),
    "python -m intrada.rounds": Expect(output="dvc.yaml: stages of 1 round(s) (was 1)"),
    "dvc dag": Expect(output="check_params"),
    "dvc params diff": Expect(),
    "dvc metrics show": Expect(output="metrics/eval.json"),
    "dvc plots show": Expect(output="dvc_plots"),
    "dvc exp show --drop '.*' --keep 'Experiment|.*mIoU$|lambda|seed'": Expect(output="mIoU"),
    "dvc exp run -S lambda=1.5": Expect(
        returncode=255,  # DVC's status for a failed stage
        output="error: params.yaml: lambda = 1.5 is invalid: expected a number in (0, 1]",
        then="git checkout -- params.yaml",
    ),
    "dvc exp run -S intra.rounds=3": Expect(
        returncode=255,
        output="error: params.yaml: intra.rounds = 3 but dvc.yaml holds the stages of 1 "
        "round(s): run `python -m intrada.rounds` to write them",
        then="git checkout -- params.yaml",
    ),
    "dvc remote add -d storage /mnt/shared/intrada-cache": Expect(),
    "dvc config cache.shared group": Expect(),
    "dvc config cache.type hardlink,symlink": Expect(),
    "dvc cache dir /mnt/shared/dvc-cache": Expect(),
}


@dataclass(frozen=True)
class Command:
    text: str  # as shlex reads it, comments dropped
    page: str
    line: int
    needs: frozenset[str]
    kind: str  # "block", "table" or "prose"

    def __str__(self) -> str:
        return f"{self.page}:{self.line}: {self.text}"


def canonical(text: str) -> str:
    return shlex.join(shlex.split(text, comments=True))


def words(text: str) -> list[str]:
    """The command's words after leading VAR=value assignments."""
    tokens = shlex.split(text)
    while tokens and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", tokens[0]):
        tokens = tokens[1:]
    return tokens


def is_command(span: str) -> bool:
    try:
        tokens = words(span)
    except ValueError:
        return False
    return bool(tokens) and tokens[0] in PROGRAMS and len(tokens) > 1


def needs_of(text: str) -> frozenset[str]:
    found = set()
    for match in MARKER.finditer(text):
        found |= set(re.split(r"[\s,|]+", match.group(1).strip()))
    unknown = found - NEEDS
    assert not unknown, f"unknown needs {sorted(unknown)} in: {text.strip()}"
    return frozenset(found)


def page_commands(path: Path) -> tuple[list[Command], list[tuple[int, str]]]:
    """The commands of one page, and its python blocks (line, code)."""
    name = path.relative_to(REPO).as_posix()
    commands, python_blocks = [], []
    pending: frozenset[str] = frozenset()
    pending_line = 0
    fence = None  # the open block's language
    block: list[tuple[int, str]] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        stripped = line.strip()
        if fence is not None:
            if stripped.startswith("```"):
                commands += block_commands(fence, block, name, pending)
                if fence == "python":
                    python_blocks.append((block[0][0] if block else number, "\n".join(
                        text for _, text in block
                    )))  # fmt: skip
                fence, block, pending = None, [], frozenset()
            else:
                block.append((number, line))
            continue
        if stripped.startswith("```"):
            fence = stripped[3:].strip()
            continue
        if MARKER.fullmatch(stripped):
            pending, pending_line = needs_of(stripped), number
            continue
        if pending and stripped:
            raise AssertionError(f"{name}:{pending_line}: a needs marker not followed by a block")
        spans = re.findall(r"`([^`]+)`", line)
        kind = "table" if stripped.startswith("|") else "prose"
        for span in spans:
            if is_command(span):
                commands.append(Command(canonical(span), name, number, needs_of(line), kind))
                if kind == "table":
                    assert "\\|" not in span, (
                        f"{name}:{number}: `\\|` stays in the pasted text; use a code block"
                    )
    return commands, python_blocks


def block_commands(
    fence: str, block: list[tuple[int, str]], page: str, needs: frozenset[str]
) -> list[Command]:
    found = []
    if fence in SHELL_BLOCKS:
        joined, start = "", 0
        for number, line in block:
            if not joined:
                start = number
            if line.rstrip().endswith("\\"):
                joined += line.rstrip()[:-1] + " "
                continue
            text = canonical(joined + line)
            joined = ""
            if text:
                found.append(Command(text, page, start, needs, "block"))
    elif fence == "console":
        for number, line in block:
            if line.startswith("$ "):
                found.append(Command(canonical(line[2:]), page, number, needs, "block"))
    return found


def all_commands() -> list[Command]:
    return [c for page in PAGES for c in page_commands(page)[0]]


# --- what a command names must exist ---------------------------------------------------


@functools.cache
def make_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([a-z][a-z-]*):", text, flags=re.M))


@functools.cache
def params_keys() -> set[str]:
    def keys(tree: dict, prefix: str = "") -> set[str]:
        found = set()
        for key, value in tree.items():
            found.add(f"{prefix}{key}")
            if isinstance(value, dict):
                found |= keys(value, f"{prefix}{key}.")
        return found

    files = [REPO / "params.yaml", *sorted((REPO / "profiles").glob("*.yaml"))]
    return set().union(*(keys(yaml.safe_load(f.read_text())) for f in files))


@functools.cache
def stage_names() -> set[str]:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return set(stages) | {f"{name}@synthetic" for name in stages}


def module_exists(name: str) -> bool:
    path = REPO / Path(*name.split("."))
    if path.with_suffix(".py").is_file() or (path / "__init__.py").is_file():
        return True
    return importlib.util.find_spec(name.split(".")[0]) is not None and (
        importlib.util.find_spec(name) is not None
    )


PROJECT_DIRS = ("profiles/", "stages/", "intrada/", "benchmarks/", "tests/", "docs/", ".ci/")


def missing_names(text: str) -> list[str]:
    """What a command names that does not exist."""
    tokens = shlex.split(text)
    problems = []
    for assignment in [t for t in tokens if re.fullmatch(r"[A-Z_]+=\S+", t)]:
        var, value = assignment.split("=", 1)
        if "<" in value:
            continue
        if var == "PROFILE" and not (REPO / "profiles" / f"{value}.yaml").is_file():
            problems.append(f"profile {value}")
        if var == "PARAMS" and not (REPO / value).is_file():
            problems.append(f"params file {value}")
    tokens = words(text)
    program = tokens[0]
    if program == "make":
        targets = [t for t in tokens[1:] if not t.startswith("-") and "=" not in t]
        problems += [f"make target {t}" for t in targets if t not in make_targets()]
    for flag, value in zip(tokens, tokens[1:], strict=False):
        if flag == "-m" and "<" not in value and not module_exists(value):
            problems.append(f"module {value}")
        if flag in ("-S", "--set-param") and "<" not in value:
            key = value.split("=", 1)[0].lstrip("+")
            if key not in params_keys():
                problems.append(f"params key {key}")
        if flag == "--profile" and not (REPO / "profiles" / f"{value}.yaml").is_file():
            problems.append(f"profile {value}")
        if flag == "--params" and "<" not in value and not (REPO / value).is_file():
            problems.append(f"params file {value}")
        if flag == "-c" and program in ("python", "python3"):
            problems += missing_in_python(value)
    if program == "dvc" and len(tokens) > 2 and tokens[1] in ("repro", "commit", "status"):
        for target in (t for t in tokens[2:] if not t.startswith("-") and "<" not in t):
            if target not in stage_names():
                problems.append(f"DVC stage {target}")
    for token in tokens[1:]:
        named = token.startswith(PROJECT_DIRS) and "<" not in token and "*" not in token
        if named and not (REPO / token).exists():
            problems.append(f"file {token}")
    return problems


def missing_in_python(code: str) -> list[str]:
    """Python that does not compile, or imports a project name that does not exist."""
    try:
        tree = ast.parse(code)
    except SyntaxError as exc:
        return [f"python: {exc}"]
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("intrada"):
            module = importlib.import_module(node.module)
            problems += [
                f"{node.module}.{a.name}" for a in node.names if not hasattr(module, a.name)
            ]
        elif isinstance(node, ast.Import):
            problems += [
                f"module {a.name}"
                for a in node.names
                if a.name.startswith("intrada") and not module_exists(a.name)
            ]
    return problems


# --- the tests -------------------------------------------------------------------------


def test_every_command_is_run_or_marked():
    unmarked = [
        str(c) for c in all_commands() if c.kind != "prose" and c.text not in RUN and not c.needs
    ]
    assert unmarked == []


def test_every_command_names_what_exists():
    broken = {str(c): missing_names(c.text) for c in all_commands()}
    assert {k: v for k, v in broken.items() if v} == {}


def test_python_blocks_compile_and_import_what_exists():
    broken = {}
    for page in PAGES:
        for line, code in page_commands(page)[1]:
            problems = missing_in_python(textwrap.dedent(code))
            if problems:
                broken[f"{page.name}:{line}"] = problems
    assert broken == {}


def test_every_run_command_is_in_the_pages():
    shown = {c.text for c in all_commands()}
    assert [c for c in RUN if canonical(c) not in shown] == []


def slug(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_and_images_resolve():
    broken = []
    for page in PAGES:
        text = page.read_text()
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # a web address
            path, _, anchor = target.partition("#")
            file = (page.parent / path) if path else page
            if not file.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and file.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", file.read_text(), flags=re.M)
                if anchor not in {slug(h) for h in headings}:
                    broken.append(f"{page.name}: {target} (no such heading)")
    assert broken == []


@pytest.fixture(scope="module")
def ran(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    """RUN's commands in a copy of the project's files (tracked and not ignored) that is
    its own git repository, with the installed environment as its .venv."""
    if not (REPO / ".git").exists():
        pytest.skip("the project is not a git checkout")
    copy = tmp_path_factory.mktemp("docs") / "project"
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, (n.decode() for n in listed)):
        source = REPO / name
        if source.is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    (copy / ".venv").symlink_to(Path(sys.prefix))
    git = ["git", "-c", "user.name=docs", "-c", "user.email=docs@example.com"]
    for command in (["git", "init", "-q"], ["git", "add", "-A"], [*git, "commit", "-qm", "docs"]):
        subprocess.run(command, cwd=copy, check=True, capture_output=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    # Run as a user types them: under `make test` the suite inherits make's recursion
    # variables, and a nested make would print "Entering directory" lines.
    for name in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES"):
        env.pop(name, None)
    results = {}
    for text, expect in RUN.items():
        command = text
        if text.startswith("make "):
            command = "make -o .venv/.installed " + text.removeprefix("make ")
        started = time.perf_counter()
        results[text] = subprocess.run(
            ["bash", "-c", command], cwd=copy, env=env, capture_output=True, text=True, timeout=300
        )
        print(f"{time.perf_counter() - started:5.1f} s  {text}")
        if expect.then:
            subprocess.run(["bash", "-c", expect.then], cwd=copy, env=env, check=True)
    return results


@pytest.mark.parametrize("text", list(RUN))
def test_cheap_command_runs_as_written(ran, text):
    result, expect = ran[text], RUN[text]
    output = result.stdout + result.stderr
    assert result.returncode == expect.returncode, output[-3000:]
    assert expect.output in output, output[-3000:]


def test_make_help_lists_every_target(ran):
    listed = {line.split()[0] for line in ran["make help"].stdout.splitlines() if line.strip()}
    assert listed == make_targets()


def test_licence_and_citation_agree_with_the_package_and_readme():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"]["text"] == "MIT"
    assert (REPO / "LICENSE").read_text().startswith("MIT License")
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert (cff["cff-version"], cff["license"], cff["version"]) == (
        "1.2.0",
        "MIT",
        project["version"],
    )
    # README's BibTeX cites the same two papers as CITATION.cff's references.
    bibtex = re.findall(
        r"^\s*title\s*=\s*\{(.+?)\},", (REPO / "README.md").read_text(), re.S | re.M
    )
    assert sorted(" ".join(t.split()) for t in bibtex) == sorted(
        r["title"] for r in cff["references"]
    )
