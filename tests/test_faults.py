"""Faults leave nothing behind: each stage killed (SIGKILL to the whole `dvc repro`
process group) or refused a write at a point inside its writing (`intrada.faults`), then
`dvc repro`, gives the outputs of an uninterrupted run byte for byte, and no temporary
file stays. A refused write is one line naming the output and the cause."""

from __future__ import annotations

import errno
import os
import re
import resource
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from intrada import faults
from intrada.cli import sweep_pipeline_temps
from intrada.dag import declared_outputs, stage_outputs
from intrada.errors import IntradaError
from intrada.io import atomic_path, sweep_stale_temps, temp_pattern
from tests.conftest import REPO, tiny_params
from tests.pipeline import dvc_stages, tree_digest
from tests.test_dvc_pipeline import project_repo, ran_stages

# Where each stage is hit, in DAG order: the last rename of an output (its temporary
# folder complete), inside a shard, inside a checkpoint's or a model file's save, and
# after a checkpoint of an unfinished training run (the re-run resumes from it).
KILLS = {
    "check_params": "check_params:rename",
    "generate_data@synthetic": "generate_data:rename",
    "index_data": "index_data:rename",
    "train_source_only": "train_source_only:checkpoint",
    "train_inter": "train_inter:trained",
    "score_entropy": "score_entropy:shard",
    "rank_splits": "rank_splits:rename",
    "pseudo_labels": "pseudo_labels:shard",
    "train_intra": "train_intra:model",
    "evaluate": "evaluate:rename",
    "figures": "figures:rename",
}
OUTPUT_FOLDERS = ("data", "models", "metrics", "plots", "dvclive", "checkpoints")
SCORE_ENTROPY_OUTS = ("data/entropy/maps", "data/entropy/predictions")
TEMP = temp_pattern()


def fault_params() -> dict:
    """The tiny profile with a checkpoint at iteration 2 of 3: a run killed after it
    resumes from it."""
    params = tiny_params()
    for section in ("source_only", "inter", "intra"):
        params[section]["checkpoint_every"] = 2
    return params


def dvc(args: list[str], cwd: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    """`dvc <args>` in its own process group (a fault's SIGKILL takes the group: dvc and
    the stage, not the tests)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    env.pop(faults.ENV, None)
    if fault is not None:
        env[faults.ENV] = fault
    return subprocess.run(
        ["dvc", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        start_new_session=True,
        timeout=900,
    )


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def temps(root: Path) -> list[str]:
    """Every hidden `.tmp` entry in the project, outside git's and DVC's own folders."""
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob(".*.tmp")
        if p.relative_to(root).parts[0] not in (".git", ".dvc")
    )


def outputs(root: Path) -> dict[str, str]:
    """sha256 of every file under the output folders, temporary folders left out."""
    digest = tree_digest(root, OUTPUT_FOLDERS)
    return {k: v for k, v in digest.items() if not any(TEMP.fullmatch(p) for p in k.split("/"))}


def git_status(root: Path) -> set[str]:
    return set(
        ok(
            subprocess.run(
                ["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True
            )
        ).stdout.splitlines()
    )


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [
        line for line in (result.stdout + result.stderr).splitlines() if line.startswith("error:")
    ]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """The project and the tiny params committed in a git repository, not yet run."""
    return project_repo(tmp_path_factory.mktemp("faults") / "pristine", fault_params())


@pytest.fixture(scope="module")
def reference(pristine, tmp_path_factory) -> dict:
    """An uninterrupted `dvc repro` in a copy of `pristine` (the same commit: model files
    record it); a repository of its own, so its run cache hides nothing elsewhere."""
    root = tmp_path_factory.mktemp("faults") / "reference"
    shutil.copytree(pristine, root, symlinks=True)
    ok(dvc(["repro"], root))
    return {
        "root": root,
        "digest": outputs(root),
        "lock": yaml.safe_load((root / "dvc.lock").read_text()),
        "status": git_status(root),
    }


@pytest.mark.slow
@pytest.mark.faults
def test_a_kill_inside_each_stage_leaves_nothing_once_repro_completes(
    pristine, reference, tmp_path
):
    """Stage by stage in DAG order: `dvc repro` re-runs the stage killed before (its
    outputs were never recorded) and is killed inside the next one."""
    root = tmp_path / "faulted"
    shutil.copytree(pristine, root, symlinks=True)
    stages = dvc_stages(fault_params())
    assert list(KILLS) == list(stages)  # every stage, each of which writes
    previous = None
    for stage, fault in KILLS.items():
        result = dvc(["repro"], root, fault=fault)
        assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
        if previous is not None:  # its temporary folders went when it ran again
            assert not [t for t in temps(root) if owner(t, stages[previous])], temps(root)
        left = temps(root)
        assert [t for t in left if owner(t, stages[stage])], (stage, left)  # a kill mid-write
        previous = stage
    final = ok(dvc(["repro"], root))
    assert ran_stages(final) == ["figures"]
    assert temps(root) == []
    assert outputs(root) == reference["digest"]
    assert yaml.safe_load((root / "dvc.lock").read_text()) == reference["lock"]
    assert git_status(root) == reference["status"]


def owner(temp: str, stage: dict) -> bool:
    """Whether a temporary folder is that of one of `stage`'s outputs (or inside it)."""
    parts = Path(temp).parts
    for out in stage_outputs(stage):
        out = Path(out)
        if parts[: len(out.parent.parts)] == out.parent.parts and temp_pattern(out.name).fullmatch(
            parts[len(out.parent.parts)]
        ):
            return True
    return False


@pytest.mark.slow
@pytest.mark.faults
def test_a_killed_forced_run_restored_from_the_run_cache_is_swept_by_the_next_stage(reference):
    """`dvc repro -f -s score_entropy` killed, then `dvc repro`: DVC restores the outputs
    from its run cache without running the stage, so the stage cannot sweep its own
    temporary folders: git and DVC ignore them, and the next stage that runs removes
    them."""
    root = reference["root"]
    killed = dvc(["repro", "-f", "-s", "score_entropy"], root, fault="score_entropy:shard")
    assert killed.returncode == -signal.SIGKILL
    left = temps(root)
    assert [Path(t).name.split(".")[1] for t in left] == ["maps", "predictions"], left
    restored = ok(dvc(["repro"], root))
    assert "Stage 'score_entropy' is cached - skipping run" in restored.stdout
    assert outputs(root) == reference["digest"]
    assert git_status(root) == reference["status"]  # ignored by git
    assert "up to date" in ok(dvc(["status"], root)).stdout  # and never hashed by DVC
    assert temps(root) == left
    ok(dvc(["repro", "-f", "-s", "check_params"], root))  # any stage sweeps them
    assert temps(root) == []


@pytest.mark.slow
@pytest.mark.faults
def test_no_space_inside_scoring_is_one_line_and_the_next_repro_completes(reference):
    root = reference["root"]
    # The 5th member written: the first of data/entropy/maps' maps, after predictions too.
    failed = dvc(["repro", "-f", "-s", "score_entropy"], root, fault="score_entropy:shard@5:enospc")
    assert failed.returncode != 0 and "Traceback" not in failed.stderr
    (line,) = error_lines(failed)
    assert re.fullmatch(
        r"error: data/entropy/maps: writing failed: No space left on device "
        r"\(\d+\.\d [KMGT]iB free on /\S*\)",
        line,
    ), line
    assert temps(root) == []
    assert not any((root / out).exists() for out in SCORE_ENTROPY_OUTS)  # DVC removed them
    ok(dvc(["repro"], root))
    assert outputs(root) == reference["digest"]


@pytest.mark.slow
@pytest.mark.faults
def test_a_file_size_limit_while_scoring_is_one_line_and_changes_nothing(reference):
    """A real refused write: the stage run with `ulimit -f` below its first shard's size
    (Python ignores SIGXFSZ, so the write fails with EFBIG)."""
    root = reference["root"]
    words = shlex.split(dvc_stages(fault_params())["score_entropy"]["cmd"])
    limit = 1024  # bytes; each tiny shard holds a few KiB

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    result = subprocess.run(
        [sys.executable, *words[1:]],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        preexec_fn=limited,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert error_lines(result) == [
        "error: data/entropy/maps: writing failed: File too large (file-size limit 1.0 KiB: "
        "ulimit -f)"
    ]
    assert temps(root) == []
    assert outputs(root) == reference["digest"]


# ---------------------------------------------------------------------------------------
# The pieces, without DVC.


def test_a_stale_temporary_folder_is_swept_and_a_live_one_kept(tmp_path):
    stale = tmp_path / ".model.pt.k3x9_q0a.tmp"  # tempfile.mkdtemp's characters
    (stale / "model.pt").mkdir(parents=True)
    names = (".model.pt.abc.tmp", ".model.pt.abcdefgh.tmp2", ".other.pt.abcdefgh.tmp")
    strangers = [tmp_path / name for name in names]
    for path in strangers:
        path.mkdir()
    strangers.append(tmp_path / ".model.pt.abcdefgh.tmp")  # a file: never one of ours
    strangers[-1].write_text("mine")
    pattern = temp_pattern("model.pt")
    with atomic_path(tmp_path / "model.pt") as target:
        assert not stale.exists()  # swept before writing
        (live,) = [p for p in tmp_path.iterdir() if pattern.fullmatch(p.name) and p.is_dir()]
        assert sweep_stale_temps(tmp_path) == [tmp_path / names[2]]  # the live one is locked
        target.write_bytes(b"weights")
    assert (tmp_path / "model.pt").read_bytes() == b"weights" and not live.exists()
    assert all(p.exists() for p in strangers[:2] + strangers[3:])


def test_every_declared_output_folder_is_swept(tmp_path):
    stages = dvc_stages(tiny_params())
    outputs = [Path(o) for stage in stages.values() for o in stage_outputs(stage)]
    for out in outputs:
        (tmp_path / out.parent / f".{out.name}.0123abcd.tmp").mkdir(parents=True)
    (tmp_path / "data/.keep.txt").write_text("not ours")
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    removed = sweep_pipeline_temps(tmp_path / "dvc.yaml")
    assert len(removed) == len(outputs) and temps(tmp_path) == []
    assert (tmp_path / "data/.keep.txt").exists()
    assert (Path("data"), None) in declared_outputs(REPO / "dvc.yaml")  # data/${key}


def test_a_fault_spec_is_checked_in_one_line():
    assert faults.parse("score_entropy:shard@5:enospc") == faults.Fault(
        "score_entropy", "shard", 5, "enospc"
    )
    for spec in ("score_entropy", "score_entropy:nowhere", "x:shard:explode", "x:shard@0"):
        with pytest.raises(IntradaError, match=r"^INTRADA_FAULT = .*expected <stage>:<point>"):
            faults.parse(spec)


def test_a_fault_fires_only_in_its_stage_at_its_nth_point(tmp_path):
    try:
        assert faults.arm("rank_splits", {}) is None  # unset: nothing armed
        faults.point("shard")
        assert faults.arm("rank_splits", {faults.ENV: "score_entropy:shard"}) is None
        faults.arm("score_entropy", {faults.ENV: "score_entropy:shard@2:enospc"})
        faults.point("rename")  # another point
        faults.point("shard")  # the first time
        with pytest.raises(OSError) as info:
            faults.point("shard", tmp_path / "x.zip")
        assert info.value.errno == errno.ENOSPC and info.value.filename == str(tmp_path / "x.zip")
        faults.point("shard")  # fired once only
    finally:
        faults.arm("none", {})


def test_a_model_file_over_the_file_size_limit_is_one_line(tmp_path):
    """PyTorch's writer reports a refused write without its cause; `io.save_torch`
    infers it (here: the file reached `ulimit -f`)."""
    script = (
        "import torch\n"
        "from intrada.checkpoint import save_model\n"
        "from intrada.errors import IntradaError\n"
        "try:\n"
        "    save_model('models/model.pt', torch.nn.Linear(100, 100), {})\n"
        "except IntradaError as exc:\n"
        "    print(exc)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (16384, 16384)),
    )
    assert result.stdout.splitlines() == [
        "models/model.pt: writing failed: File too large (file-size limit 16.0 KiB: ulimit -f)"
    ], result.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == []
