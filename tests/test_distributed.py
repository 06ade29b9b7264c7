"""torchrun / DDP on the CPU (gloo): training, scoring, pseudo-labels and evaluation match
one process."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from intrada.checkpoint import load_model
from intrada.compute import resolve_device, setup
from intrada.config import ComputeParams
from intrada.errors import IntradaError
from tests.conftest import REPO, tiny_params, write_params
from tests.pipeline import dvc_stages, run_stage

pytestmark = pytest.mark.slow

BEFORE_INTER = ("check_params", "generate_data@synthetic", "index_data", "train_source_only")


def run_command(stage: str, directory: Path, torchrun_nproc: int | None = None) -> None:
    """The stage's dvc.yaml command as a subprocess in `directory` (optionally under an
    explicit torchrun), with one thread per process so that runs compare exactly."""
    words = shlex.split(dvc_stages()[stage]["cmd"])
    command = [sys.executable, *words[1:]]
    if torchrun_nproc is not None:
        launcher = ["-m", "torch.distributed.run", "--standalone"]
        command = [sys.executable, *launcher, f"--nproc-per-node={torchrun_nproc}", *words[1:]]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=directory, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Tiny project with everything up to the source-only model."""
    directory = tmp_path_factory.mktemp("ddp")
    params = tiny_params()
    params["inter"].update(iterations=3, batch_size=2)
    write_params(directory, params)
    for name in BEFORE_INTER:
        run_stage(name, directory)
    return directory, params


def train_inter(directory: Path, params: dict, batch_size: int, nproc: int, torchrun=None):
    params = {**params, "inter": {**params["inter"], "batch_size": batch_size}}
    params["compute"] = {**params["compute"], "nproc": nproc}
    write_params(directory, params)
    run_command("train_inter", directory, torchrun)
    model, meta = load_model(directory / "models/inter/model.pt")
    return model.state_dict(), meta


@pytest.fixture(scope="module")
def plain(project) -> dict[str, torch.Tensor]:
    """The inter model's weights from a plain run: one process, batch 2."""
    directory, params = project
    return train_inter(directory, params, batch_size=2, nproc=1)[0]


def test_one_process_under_torchrun_equals_a_plain_run(project, plain):
    directory, params = project
    under_torchrun, meta = train_inter(directory, params, batch_size=2, nproc=1, torchrun=1)
    assert meta["compute"]["processes"] == 1
    assert all(torch.equal(plain[k], under_torchrun[k]) for k in plain)


def test_two_gloo_processes_train_as_one_process_with_both_batches(project, plain):
    directory, params = project
    # compute.nproc = 2: the stage relaunches itself under torchrun; 1 image per process.
    ddp, meta = train_inter(directory, params, batch_size=1, nproc=2)
    assert meta["compute"] == {
        "device": "cpu",
        "amp_bf16": False,
        "compiled": False,
        "processes": 2,
        "threads": 1,  # OMP_NUM_THREADS (run_command) is left to PyTorch
    }
    changed = [k for k in plain if plain[k].is_floating_point()]
    for key in changed:
        torch.testing.assert_close(ddp[key], plain[key], rtol=1e-4, atol=1e-5, msg=key)
    curves = directory / "dvclive/inter/plots/metrics/train/loss_adv_trg_main.tsv"
    assert len(curves.read_text().splitlines()) == 1 + 2  # header + log_every 2 of 3


def outputs(directory: Path, folders: tuple[str, ...]) -> dict[str, bytes]:
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for folder in folders
        for p in sorted((directory / folder).rglob("*"))
        if p.is_file()
    }


def test_two_processes_score_label_and_evaluate_as_one(project):
    """Scoring, pseudo-labels and evaluation with compute.nproc 2 write the files one
    process writes, byte for byte (batch 1: CPU convolutions may round differently in
    batches of other compositions)."""
    directory, params = project
    params = {
        **params,
        "inference": {**params["inference"], "batch_size": 1},
        "pseudo_labels": {**params["pseudo_labels"], "batch_size": 1},
        "evaluate": {**params["evaluate"], "batch_size": 1},
    }
    write_params(directory, params)
    run_stage("train_inter", directory)
    folders = ("data/entropy", "data/pseudo_labels", "metrics", "plots")
    results = {}
    for nproc in (1, 2):
        params["compute"] = {**params["compute"], "nproc": nproc}
        write_params(directory, params)
        run_command("score_entropy", directory)
        if nproc == 1:  # the splits and the intra model evaluated: made once
            run_stage("rank_splits", directory)
        run_command("pseudo_labels", directory)
        if nproc == 1:
            run_stage("train_intra", directory)
        run_command("evaluate", directory)
        results[nproc] = outputs(directory, folders)
    # 10 maps in shards of 4: 3 files per folder; process 0 wrote shards 0 and 2.
    assert sum(k.startswith("data/entropy/maps/shard-") for k in results[1]) == 3
    assert results[1].keys() == results[2].keys()
    assert [k for k in results[1] if results[1][k] != results[2][k]] == []
    assert not list((directory / "data").rglob("*.tmp"))  # no temporary leftovers


def test_cuda_asked_for_without_a_gpu_is_one_line():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(IntradaError, match=r"device = 'cuda' but PyTorch \(.*\) sees no CUDA"):
        resolve_device("cuda")
    compute = setup(
        ComputeParams("auto", amp=True, channels_last=True, compile=True, num_workers=0, nproc=1)
    )
    assert (compute.device.type, compute.amp, compute.channels_last) == ("cpu", False, True)
    assert compute.compile  # torch.compile works on the CPU too
    assert compute.main and not compute.distributed


def test_two_processes_stop_together_when_training_diverges(project):
    # Every process learns of a non-finite loss through one all-reduce per step, so
    # none is left waiting in a collective; the main process says why, once.
    directory, params = project
    params = {**params, "inter": {**params["inter"], "batch_size": 1, "lr": 1.0e6}}
    params["inter"]["iterations"] = 50
    params["compute"] = {**params["compute"], "nproc": 2}
    write_params(directory, params)
    (directory / "models/inter/model.pt").unlink(missing_ok=True)
    words = shlex.split(dvc_stages()["train_inter"]["cmd"])
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, *words[1:]],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: inter:")]
    assert len(errors) == 1, result.stderr[-3000:]
    assert " at iteration " in errors[0] and "training diverged; no model written" in errors[0]
    assert not (directory / "models/inter/model.pt").exists()


def _agree(rank: int, port: int, found: str | None, out: Path) -> None:
    import torch.distributed as dist

    from intrada.compute import Compute
    from intrada.training import agree_on_divergence

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    compute = Compute(torch.device("cpu"), False, False, 0, rank=rank, world=2)
    (out / f"{rank}.txt").write_text(repr(agree_on_divergence(found, compute)))
    dist.destroy_process_group()


def test_a_divergence_on_one_process_stops_both():
    # The test above diverges on both processes at once; here only process 1 sees a
    # non-finite loss, and process 0 must learn it from the all-reduce.
    import multiprocessing
    import socket
    import tempfile

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        context = multiprocessing.get_context("spawn")
        found = {0: None, 1: "loss_seg_src_main = nan"}
        workers = [context.Process(target=_agree, args=(r, port, found[r], out)) for r in (0, 1)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(120)
        assert [w.exitcode for w in workers] == [0, 0]
        assert (out / "0.txt").read_text() == repr("a non-finite value on another process")
        assert (out / "1.txt").read_text() == repr("loss_seg_src_main = nan")
