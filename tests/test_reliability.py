"""Interrupted runs resume bit for bit; failed writes and unsafe files change nothing."""

from __future__ import annotations

import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from intrada.checkpoint import MODEL_FORMAT, load_model
from intrada.errors import IntradaError
from intrada.resume import FILE_NAME
from tests.conftest import REPO, tiny_params, write_params
from tests.pipeline import dvc_stages, run_stage

pytestmark = pytest.mark.slow

BEFORE_INTER = ("check_params", "generate_data@synthetic", "index_data", "train_source_only")


def inter_command(directory: Path) -> tuple[list[str], dict]:
    words = shlex.split(dvc_stages()["train_inter"]["cmd"])
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return [sys.executable, *words[1:]], env


def run_inter(directory: Path) -> subprocess.CompletedProcess:
    command, env = inter_command(directory)
    result = subprocess.run(command, cwd=directory, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def curves(directory: Path) -> dict[str, bytes]:
    live = directory / "dvclive/inter"
    return {p.relative_to(live).as_posix(): p.read_bytes() for p in live.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Everything up to the source-only model; inter trains 200 short iterations with a
    checkpoint every 5."""
    directory = tmp_path_factory.mktemp("resume")
    params = tiny_params()
    params["inter"].update(iterations=200, batch_size=2, log_every=5, checkpoint_every=5)
    write_params(directory, params)
    for name in BEFORE_INTER:
        run_stage(name, directory)
    return directory


def copy_project(project: Path, target: Path) -> Path:
    shutil.copytree(project, target, symlinks=True)
    return target


@pytest.fixture(scope="module")
def finished(project, tmp_path_factory):
    """A copy of the project after one uninterrupted inter run (read only: copy it to run
    in it)."""
    directory = copy_project(project, tmp_path_factory.mktemp("finished") / "project")
    run_inter(directory)
    return directory


def test_a_run_killed_after_a_checkpoint_resumes_to_the_same_model(project, finished, tmp_path):
    uninterrupted = finished
    killed = copy_project(project, tmp_path / "killed")
    command, env = inter_command(killed)
    process = subprocess.Popen(
        command, cwd=killed, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    checkpoint = killed / "checkpoints/inter" / FILE_NAME
    deadline = time.monotonic() + 120
    while not checkpoint.is_file() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    state = torch.load(checkpoint, weights_only=True)
    assert not state["complete"] and 5 <= state["iteration"] < 200  # killed mid-run
    assert not (killed / "models/inter/model.pt").exists()

    resumed = run_inter(killed)
    assert f"resuming at iteration {state['iteration']}" in resumed.stderr
    a, _ = load_model(uninterrupted / "models/inter/model.pt")
    b, _ = load_model(killed / "models/inter/model.pt")
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert curves(killed) == curves(uninterrupted)  # the replayed curves too
    assert torch.load(checkpoint, weights_only=True)["complete"]
    # The last checkpoint too, byte for byte (RNG state and all).
    assert checkpoint.read_bytes() == (uninterrupted / "checkpoints/inter" / FILE_NAME).read_bytes()


def test_a_checkpoint_made_with_other_params_is_never_resumed(project, tmp_path):
    directory = copy_project(project, tmp_path / "other")
    command, env = inter_command(directory)
    process = subprocess.Popen(
        command, cwd=directory, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    checkpoint = directory / "checkpoints/inter" / FILE_NAME
    while not checkpoint.is_file() and process.poll() is None:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    params = tiny_params()
    params["inter"].update(iterations=200, batch_size=2, log_every=5, checkpoint_every=5)
    params["inter"]["lr"] = 5e-5
    write_params(directory, params)
    result = run_inter(directory)
    assert "made by another run" in result.stderr and "resuming" not in result.stderr
    first_logged = (directory / "dvclive/inter/plots/metrics/train/lr.tsv").read_text()
    assert first_logged.splitlines()[1].startswith("5\t")  # trained from iteration 0


def test_a_finished_run_is_rerun_from_scratch_not_resumed(finished, tmp_path):
    directory = copy_project(finished, tmp_path / "again")  # one finished run
    first = (directory / "models/inter/model.pt").read_bytes()
    result = run_inter(directory)  # what `dvc repro -f` does
    assert "resuming" not in result.stderr
    assert (directory / "models/inter/model.pt").read_bytes() == first


def test_a_write_failure_while_maps_are_written_keeps_the_previous_outputs(project, monkeypatch):
    run_stage("train_inter", project)
    run_stage("score_entropy", project)
    entropy = project / "data/entropy"
    before = {p: p.read_bytes() for p in entropy.rglob("*") if p.is_file()}
    import intrada.artifacts as artifacts

    original, calls = artifacts.ShardWriter.add, []

    def add_then_fail(self, position, member, data):
        calls.append(member)
        if len(calls) > 9:  # the first shards (4 maps, 4 predictions) written, then a fifth
            raise OSError(28, "No space left on device")
        original(self, position, member, data)

    monkeypatch.setattr(artifacts.ShardWriter, "add", add_then_fail)
    with pytest.raises(IntradaError) as info:  # one line naming the output and the cause
        run_stage("score_entropy", project)
    assert str(info.value).startswith(
        "data/entropy/predictions: writing failed: No space left on device ("
    )
    after = {p: p.read_bytes() for p in entropy.rglob("*") if p.is_file()}
    assert after == before
    assert not [p for p in entropy.iterdir() if p.name.endswith(".tmp")]


def test_model_files_load_safely(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "model.pt"
    torch.save({"state_dict": {}, "meta": {"format": MODEL_FORMAT}, "x": Payload()}, path)
    with pytest.raises(IntradaError, match=r"model.pt: not a readable model file") as info:
        load_model(path)  # weights_only=True refuses to run the pickled call
    assert "\n" not in str(info.value)


DIVERGED = re.compile(
    r"error: inter: (loss_\w+) = (nan|inf|-inf) at iteration (\d+) of 200 \(lr [^)]+\): "
    r"training diverged; no model written, checkpoints/inter/last\.pt \(iteration (\d+)\) kept"
)


def test_a_diverging_run_stops_at_its_first_non_finite_loss(project, tmp_path):
    directory = copy_project(project, tmp_path / "diverging")
    (directory / "models/inter/model.pt").unlink(missing_ok=True)  # as DVC does first
    params = tiny_params()
    params["inter"].update(iterations=200, batch_size=2, log_every=1, checkpoint_every=1, lr=1.0e6)
    write_params(directory, params)
    command, env = inter_command(directory)
    result = subprocess.run(command, cwd=directory, env=env, capture_output=True, text=True)
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr[-3000:]
    match = DIVERGED.fullmatch(errors[0])
    assert match, errors[0]
    iteration, kept = int(match[3]), int(match[4])
    assert not (directory / "models/inter/model.pt").exists()
    # The checkpoint of the iteration before: written before the divergence, not after.
    state = torch.load(directory / "checkpoints/inter" / FILE_NAME, weights_only=True)
    assert state["iteration"] == kept == iteration - 1 and not state["complete"]
    weights = [v for v in state["model"].values() if v.is_floating_point()]
    assert all(bool(torch.isfinite(v).all()) for v in weights)
    logged = [means for _, means in state["history"]]
    assert len(logged) == iteration - 1  # every iteration before was logged, and finite
    assert all(math.isfinite(v) for means in logged for v in means.values())


def test_non_finite_weights_with_finite_losses_are_never_checkpointed(project, monkeypatch):
    # A non-finite gradient leaves the losses of its own step finite: the weights are
    # checked before each checkpoint, so the step of iteration 10 (a checkpoint is due)
    # stops the run and the checkpoint of iteration 5 stays.
    from intrada.training import AdaptationStep

    directory = project
    original = AdaptationStep.__call__
    calls = []

    def poisoned(self, src, trg):
        losses = original(self, src, trg)
        calls.append(1)
        if len(calls) == 10:
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("nan"))
        return losses

    monkeypatch.setattr(AdaptationStep, "__call__", poisoned)
    shutil.rmtree(directory / "checkpoints/inter", ignore_errors=True)
    (directory / "models/inter/model.pt").unlink(missing_ok=True)  # as DVC does first
    with pytest.raises(IntradaError) as info:
        run_stage("train_inter", directory)
    message = str(info.value)
    assert message.startswith("inter: weights ") and " = nan at iteration 10 of 200" in message
    assert message.endswith("checkpoints/inter/last.pt (iteration 5) kept")
    state = torch.load(directory / "checkpoints/inter" / FILE_NAME, weights_only=True)
    assert state["iteration"] == 5
    assert not (directory / "models/inter/model.pt").exists()
    shutil.rmtree(directory / "checkpoints/inter")
