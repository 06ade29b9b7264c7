"""Traps on the way to a real run (docs/datasets.md, docs/released-models.md): a GPU
profile on a machine without a GPU, evaluating a published model file without training,
and queued experiments that cannot see git-ignored dataset links."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from intrada.checkpoint import model_meta, save_model
from intrada.classes import dataset_classes
from intrada.compute import CPU
from intrada.config import NO_FILE, ParamsError, get, read_params
from intrada.data import SegmentationSet
from intrada.evaluation import iou_report
from intrada.layouts import index_cityscapes
from intrada.models.deeplabv2 import DeepLabV2
from intrada.runs import arch_config
from intrada.validation import evaluate_confusion
from tests.conftest import REPO, tiny_params, write_params
from tests.pipeline import working_directory
from tests.real_layouts import write_cityscapes
from tests.test_deeplabv2 import released_layout


def run_main(module_name: str, argv: list[str], directory: Path) -> int:
    """A command's main() in `directory` through the stages' wrapper: its exit status."""
    module = __import__(module_name, fromlist=["main"])
    old_argv = sys.argv
    sys.argv = [module_name, *argv]
    try:
        with working_directory(directory):
            from intrada.cli import run_stage

            run_stage(module.main)
        return 0
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        sys.argv = old_argv


# --- a GPU profile stops at check_params when PyTorch sees no GPU ----------------------


@pytest.fixture
def gta5_profile_project(tmp_path):
    """The GTA5 profile in a folder holding its (empty) dataset roots and weights file."""
    params = yaml.safe_load((REPO / "profiles/gta5_cityscapes.yaml").read_text())
    for key in ("source_root", "target_root"):
        (tmp_path / params["data"][key]).mkdir(parents=True)
    (tmp_path / params["model"]["pretrained"]).touch()
    (tmp_path / "data/params.ok").touch()  # the stand-in files' path, as in a checkout
    write_params(tmp_path, params)
    return tmp_path


@pytest.mark.parametrize("gpu", [False, True])
def test_a_cuda_profile_stops_at_check_params_without_a_gpu(
    gta5_profile_project, monkeypatch, capsys, gpu
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    stamp = gta5_profile_project / "data/params.ok"
    stamp.unlink()
    status = run_main("stages.check_params", ["--stamp", "data/params.ok"], gta5_profile_project)
    if gpu:
        assert status == 0 and stamp.is_file()
        return
    assert status == 1 and not stamp.exists()  # no stage after it runs
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: params.yaml: compute.device = 'cuda' but PyTorch (")
    assert "sees no CUDA device; expected a visible GPU" in lines[0]


def test_auto_and_cpu_never_ask_for_a_gpu(gta5_profile_project, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("auto", "cpu"):
        params = yaml.safe_load((gta5_profile_project / "params.yaml").read_text())
        params["compute"]["device"] = device
        write_params(gta5_profile_project, params)
        argv = ["--stamp", "data/params.ok"]
        assert run_main("stages.check_params", argv, gta5_profile_project) == 0, device


# --- one command evaluates a published model file ---------------------------------------


@pytest.fixture(scope="module")
def deeplab():
    """A DeepLab-v2 in the released code's geometry with random weights and statistics."""
    torch.manual_seed(5)
    model = DeepLabV2(19, "deeplab", align_corners=True)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def evaluation_project(tmp_path: Path) -> tuple[Path, dict]:
    """Params of GTA5 -> Cityscapes with only Cityscapes on disk: no source tree."""
    write_cityscapes(tmp_path / "cityscapes", {"val": 3}, size=(128, 64))
    params = tiny_params()
    params["data"].update(
        name="gta5",
        source_root=str(tmp_path / "GTA5-not-here"),
        target_root=str(tmp_path / "cityscapes"),
        verify="header",
    )
    params["generate"] = {}
    params["model"] = {
        "name": "deeplabv2",
        "weights_format": "deeplab",
        "align_corners": True,
        "pretrained": NO_FILE,
    }
    params["evaluate"]["batch_size"] = 2
    params["compute"]["device"] = "cpu"
    write_params(tmp_path, params)
    return tmp_path, params


def test_one_command_evaluates_a_released_state_dict_or_a_model_file(tmp_path, deeplab):
    project, params = evaluation_project(tmp_path)
    classes = dataset_classes("gta5")
    released = project / "gta2cityscapes_intrada.pth"
    torch.save(released_layout(deeplab.state_dict()), released)
    ours = project / "model.pt"
    model_params = get(read_params(project / "params.yaml"), "model")
    meta = model_meta(
        arch="deeplabv2",
        arch_config=arch_config(model_params),
        classes=classes,
        stage="intra",
        params={},
        init_from=None,
    )
    save_model(ours, deeplab, meta)

    reports = {}
    for path in (released, ours):
        out = project / "evaluated" / path.stem
        argv = ["--model", str(path), "--out", str(out)]
        assert run_main("stages.evaluate_model", argv, project) == 0, path
        reports[path.stem] = json.loads((out / "metrics.json").read_text())
        assert (out / "confusion.csv").is_file()
    by_released, by_ours = reports[released.stem], reports[ours.stem]
    assert by_released["model"]["stage"] == "released" and by_ours["model"]["stage"] == "intra"
    assert by_released["images"] == 3 and len(by_released["IoU"]) == 19
    # What the evaluate stage computes for the same weights on the same images.
    val = index_cityscapes(project / "cityscapes", "val")
    dataset = SegmentationSet(val, classes, Path("."), True, (64, 32), resize_labels=False)
    cm = evaluate_confusion(deeplab, dataset, 2, CPU, show_progress=False)
    expected = iou_report(cm, classes)
    for report in (by_released, by_ours):
        assert (report["mIoU"], report["IoU"]) == (expected["mIoU"], expected["IoU"])


def test_evaluating_a_file_of_another_kind_is_one_line(tmp_path, capsys):
    project, _ = evaluation_project(tmp_path)
    bad = project / "notes.pth"
    bad.write_text("not a model")
    assert run_main("stages.evaluate_model", ["--model", str(bad)], project) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}: not a readable model file")


# --- experiments in temporary copies see datasets by absolute path ---------------------


def dvc(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    dvc_bin = Path(sys.executable).with_name("dvc")
    result = subprocess.run([str(dvc_bin), *args], cwd=cwd, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def test_a_temporary_experiment_reads_a_dataset_by_absolute_root_not_by_ignored_link(tmp_path):
    """`dvc exp run --temp` and queued runs (`--queue`, the same temporary-copy executor)
    copy tracked files only: a root reached through the git-ignored `data/raw/` link is
    missing there, an absolute root is not (docs/datasets.md, docs/scaling.md)."""
    dataset = tmp_path / "datasets" / "GTA5"
    dataset.mkdir(parents=True)
    (dataset / "00001.png").write_text("an image")
    repo = tmp_path / "project"
    (repo / "data/raw").mkdir(parents=True)
    (repo / "data/raw/GTA5").symlink_to(dataset)
    (repo / ".gitignore").write_text("/data/raw/\n")
    (repo / "params.yaml").write_text("source_root: data/raw/GTA5\n")
    (repo / "dvc.yaml").write_text(
        "stages:\n  list:\n    cmd: ls ${source_root} > listing.txt\n"
        '    deps: ["${source_root}"]\n    outs: [listing.txt]\n'
    )
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc(["init", "-q"], repo)
    dvc(["config", "core.analytics", "false"], repo)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "project"], cwd=repo, check=True)
    dvc(["repro"], repo)  # in the workspace the link works

    linked = dvc(["exp", "run", "--temp", "-S", "source_root=data/raw/GTA5"], repo, check=False)
    assert linked.returncode != 0
    assert "No such file or directory" in linked.stderr and "data/raw/GTA5" in linked.stderr
    dvc(["exp", "run", "--temp", "-n", "absolute", "-S", f"source_root={dataset}"], repo)
    shown = dvc(["exp", "show", "--no-pager", "--csv"], repo).stdout
    assert "absolute" in shown and str(dataset) in shown
    shutil.rmtree(repo / "data/raw")


def test_a_missing_relative_root_says_what_queued_experiments_need(tmp_path):
    params = tiny_params()
    params["data"].update(name="gta5", source_root="data/raw/GTA5", target_root=str(tmp_path))
    params["generate"] = {}
    with pytest.raises(
        ParamsError, match=r"source_root = 'data/raw/GTA5' .* need an absolute path"
    ):
        get(read_params(write_params(tmp_path, params)), "data")
