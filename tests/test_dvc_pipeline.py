"""The real thing: `dvc repro` and `dvc exp run` of the tiny profile in a fresh git repo."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from intrada.checkpoint import load_model
from intrada.dag import copy_pipeline
from tests.conftest import REPO, tiny_params, write_params
from tests.pipeline import dvc_stages

pytestmark = pytest.mark.slow


def run(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    # Stage commands call `python`: the interpreter running the tests must come first.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def ran_stages(result: subprocess.CompletedProcess) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", result.stdout + result.stderr)


def project_repo(root: Path, params: dict) -> Path:
    """A git repository at `root` with the project's pipeline and `params`, committed."""
    copy_pipeline(REPO, root)
    write_params(root, params)
    run(["git", "init", "-q", "-b", "main"], root)
    run(["git", "config", "user.email", "test@example.com"], root)
    run(["git", "config", "user.name", "test"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "project"], root)
    return root


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A git repository holding the project's code and the tiny params, reproduced once."""
    root = project_repo(tmp_path_factory.mktemp("repo"), tiny_params())
    first = run(["dvc", "repro"], root)
    assert ran_stages(first) == list(dvc_stages())  # every stage, in DAG order
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "reproduced"], root)
    return root


def test_repro_builds_every_output(repo):
    easy = pd.read_parquet(repo / "data/splits/easy.parquet")
    assert {"image_id", "image_path", "entropy", "score", "rank", "split"} <= set(easy.columns)
    report = json.loads((repo / "metrics/eval.json").read_text())
    assert set(report) == {"source_only", "inter", "intra", "diagnostics"}


def test_second_repro_with_nothing_changed_runs_nothing(repo):
    result = run(["dvc", "repro"], repo)
    assert ran_stages(result) == []
    assert run(["dvc", "status"], repo).stdout.strip() == "Data and pipelines are up to date."


def test_forced_reruns_record_the_same_hashes(repo):
    """`dvc repro -f` re-runs every stage (training from scratch: a finished checkpoint is
    not resumed) and every output hashes as before."""
    before = yaml.safe_load((repo / "dvc.lock").read_text())
    result = run(["dvc", "repro", "-f"], repo)
    assert ran_stages(result) == list(dvc_stages())
    after = yaml.safe_load((repo / "dvc.lock").read_text())
    assert after == before
    assert run(["git", "status", "--porcelain"], repo).stdout == ""


def test_metrics_show_lists_the_evaluation(repo):
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], repo).stdout)
    (workspace,) = shown.values()  # keyed by revision; the workspace is the only one
    metrics = workspace["data"]["metrics/eval.json"]["data"]
    assert set(metrics) == {"source_only", "inter", "intra", "diagnostics"}


def declared_plots() -> list[str]:
    """Plot ids of dvc.yaml's top-level `plots`, in order (a folder stands for its files)."""
    return [next(iter(p)) if isinstance(p, dict) else p for p in dvc_yaml()["plots"]]


def dvc_yaml() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())


def test_plots_show_draws_every_declared_plot_without_errors(repo):
    result = json.loads(run(["dvc", "plots", "show", "--json"], repo).stdout)
    shown = result["data"]
    assert not result.get("errors"), result["errors"]
    k = tiny_params()["figures"]["gallery_k"]
    for plot in declared_plots():
        if plot.startswith("plots/"):  # a folder of images
            assert any(key.startswith(plot + "/") for key in shown), plot
        else:
            (entry,) = shown[plot]
            assert entry["type"] == "vega" and entry["content"]["data"]["values"], plot
    gallery = [key for key in shown if key.startswith("plots/gallery/")]
    assert len(gallery) == 2 * k + 1  # easiest, hardest and the colour key
    training = [p for p in declared_plots() if p.startswith("Training")]
    # One chart per stage and kind: 3 for source-only, 4 for each adaptation step.
    assert len(training) == 11
    assert "Training inter: target-val mIoU, %" in training
    adversarial = shown["Training inter: adversarial losses on target and discriminator losses"]
    series = {row["field"] for row in adversarial[0]["content"]["data"]["values"]}
    assert len(series) == 4  # both heads' adversarial and discriminator losses


def test_a_new_gallery_size_reruns_only_the_figures(repo):
    params = tiny_params()
    params["figures"]["gallery_k"] = 1
    write_params(repo, params)
    try:
        status = json.loads(run(["dvc", "status", "--json"], repo).stdout)
    finally:
        write_params(repo, tiny_params())
    assert set(status) == {"check_params", "figures"}


def test_report_holds_every_chart_and_image_and_needs_no_network(repo):
    out = run([sys.executable, "-m", "intrada.report", "--out", "report.html"], repo)
    page = (repo / "report.html").read_text()
    figures = re.findall(
        r'<figure data-plot="([^"]+)" data-kind="(\w+)"><img alt="[^"]*" src="([^"]+)"', page
    )
    charts = {plot: uri for plot, kind, uri in figures if kind == "vega"}
    images = {plot for plot, kind, _ in figures if kind == "image"}
    named = [p for p in declared_plots() if not p.startswith("plots/")]
    assert sorted(charts) == sorted(html.escape(p) for p in named)
    for plot, uri in charts.items():  # each an SVG drawing of that chart, with its title
        assert uri.startswith("data:image/svg+xml;base64,")
        svg = base64.b64decode(uri.split(",", 1)[1]).decode()
        assert svg.startswith("<svg") and html.unescape(plot) in html.unescape(svg), plot
        assert "<path" in svg or "<rect" in svg  # marks, not only axes
    k = tiny_params()["figures"]["gallery_k"]
    assert len([p for p in images if p.startswith("plots/gallery/")]) == 2 * k + 1
    assert len([p for p in images if p.startswith("plots/panels/")]) == 2
    assert all(
        uri.startswith("data:image/png;base64,") for p, kind, uri in figures if kind == "image"
    )
    assert f"{len(charts)} charts, {len(images)} images" in out.stdout
    for heading in ("Target-val mIoU (%)", "Ranking diagnostics", "Per-class IoU on target-val"):
        assert heading in page
    # Self-contained: no script, no stylesheet or image fetched from anywhere.
    assert "<script" not in page and not re.search(r'(src|href)="(?!data:)', page)


def test_plots_page_draws_offline_with_the_inlined_template(repo):
    template = repo / ".dvc/tmp/offline_plots.html"
    run([sys.executable, "-m", "intrada.report", "--offline-template", str(template)], repo)
    run(["dvc", "plots", "show", "--html-template", str(template)], repo)
    page = (repo / "dvc_plots/index.html").read_text()
    assert "cdn.jsdelivr" not in page and "window.vegaEmbed=" in page
    assert page.count("vegaEmbed('#") == len(
        [p for p in declared_plots() if not p.startswith("plots/")]
    )


def test_changing_lambda_reruns_only_what_lambda_touches(repo):
    before = (repo / "models/inter/model.pt").read_bytes()
    intra_before = load_model(repo / "models/intra/model.pt")[0].state_dict()
    result = run(["dvc", "exp", "run", "-S", "lambda=0.5"], repo)
    # check_params re-validates the file (a constant stamp, so it invalidates nothing).
    assert ran_stages(result) == [
        "check_params",
        "rank_splits",
        "pseudo_labels",
        "train_intra",
        "evaluate",
        "figures",
    ]
    assert len(pd.read_parquet(repo / "data/splits/easy.parquet")) == 5
    assert (repo / "models/inter/model.pt").read_bytes() == before
    intra_after, meta = load_model(repo / "models/intra/model.pt")
    assert meta["params"]["lambda"] == 0.5
    assert any(not torch.equal(v, intra_after.state_dict()[k]) for k, v in intra_before.items())
    shown = run(["dvc", "exp", "show", "--csv"], repo).stdout
    header = shown.splitlines()[0].split(",")
    for column in ("intra.mIoU", "diagnostics.inter_easy_mIoU", "diagnostics.score_error_spearman"):
        assert column in header  # diagnostics listed next to the mIoUs


def test_invalid_lambda_stops_the_pipeline_before_any_output_is_removed(repo):
    easy = (repo / "data/splits/easy.parquet").read_bytes()
    result = run(["dvc", "exp", "run", "-S", "lambda=1.5"], repo, check=False)
    assert result.returncode != 0
    assert ran_stages(result) == ["check_params"]
    assert "error: params.yaml: lambda = 1.5 is invalid" in result.stderr + result.stdout
    assert (repo / "data/splits/easy.parquet").read_bytes() == easy
    run(["git", "checkout", "params.yaml"], repo)


def experiment_refs(repo: Path) -> int:
    """Experiments with results: refs/exps/<2 hex>/<baseline>/<name> (the queue's own refs,
    refs/exps/celery/..., have one part less)."""
    refs = run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], repo).stdout
    return sum(len(ref.split("/")) == 5 for ref in refs.split())


def wait_for_queue(repo: Path, finished: int, timeout: float = 600) -> str:
    """`dvc queue status` once no task is queued or running. Until `finished` experiments
    have results, a git call each second says whether to ask: each `dvc queue status` is
    a DVC start-up taken from the experiment running beside it, so it is asked only every
    30 s in between (to see a failed task)."""
    deadline = time.monotonic() + timeout
    asked = time.monotonic()
    while time.monotonic() < deadline:
        if experiment_refs(repo) >= finished or time.monotonic() - asked > 30:
            status = run(["dvc", "queue", "status"], repo).stdout
            if not re.search(r"\b(Queued|Running)\b", status):
                return status
            asked = time.monotonic()
        time.sleep(1)
    return run(["dvc", "queue", "status"], repo).stdout


# Each queued experiment runs in a copy without the git-ignored checkpoints/, so the
# whole pipeline runs twice: minutes, so in `make test-long`.
@pytest.mark.long
def test_a_queued_lambda_sweep_runs_and_is_compared_in_exp_show(repo):
    run(["git", "checkout", "params.yaml"], repo)
    before = experiment_refs(repo)
    for lam in ("0.33", "0.8"):
        run(["dvc", "exp", "run", "--queue", "-S", f"lambda={lam}"], repo)
    run(["dvc", "queue", "start", "-j", "1"], repo)
    status = wait_for_queue(repo, before + 2)
    assert not re.search(r"\b(Queued|Running)\b", status), status
    assert "Failed" not in status, status
    rows = list(csv.DictReader(io.StringIO(run(["dvc", "exp", "show", "--csv"], repo).stdout)))
    swept = {row["lambda"]: row for row in rows if row["lambda"] in ("0.33", "0.8")}
    assert set(swept) == {"0.33", "0.8"}, rows
    assert all(float(row["intra.mIoU"]) > 0 for row in swept.values())
    run(["dvc", "queue", "stop"], repo, check=False)
