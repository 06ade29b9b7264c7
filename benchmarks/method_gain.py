"""Does the method work, on every seed? The default pipeline for several seeds, two
controls per seed, and a lambda sweep, printed as tables of target-val mIoU (%).

Per seed it runs, each in its own folder under --workdir:

- `main`: the whole pipeline on params.yaml with `seed` set;
- `source_long`: source-only trained for as many iterations as source-only, inter and
  intra together (is the gain just longer training?);
- `intra_ce`: the intra step without its adversarial term (cross-entropy on the
  pseudo-labels only: does the hard split's adversarial signal matter?);
- `lambda_<x>`: the intra step re-run with another easy fraction; lambda = 1.0 is the
  paper's self-training control (every image pseudo-labelled, no hard split).

A variant re-runs only the stages its change touches and links every other stage's
outputs from `main`. Stages run as the `dvc.yaml` commands, one subprocess each.

    python -m benchmarks.method_gain [--seeds 0 1 2] [--lambdas 0.33 0.5 0.67 0.8 1.0]
        [--workdir runs/method_gain] [--no-controls]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from intrada.dag import resolved_stages, stage_outputs

REPO = Path(__file__).resolve().parents[1]

# Stages that a variant's params change makes stale, in DAG order.
VARIANT_STAGES = {
    "source_long": ("train_source_only", "evaluate"),
    "intra_ce": ("train_intra", "evaluate"),
    "lambda": ("rank_splits", "pseudo_labels", "train_intra", "evaluate"),
}


def dvc_stages(directory: Path) -> dict[str, dict]:
    """dvc.yaml's stages, resolved for the params.yaml in `directory`."""
    params = yaml.safe_load((directory / "params.yaml").read_text())
    return resolved_stages(REPO / "dvc.yaml", params)


def run_stages(directory: Path, names: tuple[str, ...] | list[str], log) -> None:
    """Run stages by their dvc.yaml commands in `directory` (which holds params.yaml)."""
    stages = dvc_stages(directory)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for name in names:
        words = shlex.split(stages[name]["cmd"])
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, *words[1:]], cwd=directory, env=env, capture_output=True, text=True
        )
        log.write(result.stdout + result.stderr)
        if result.returncode:
            sys.exit(f"error: {directory.name}: stage {name} failed:\n{result.stderr[-2000:]}")
        print(f"  {directory.name}: {name} {time.perf_counter() - start:.0f} s", flush=True)


def prepare_variant(main: Path, directory: Path, params: dict, rerun: tuple[str, ...]) -> None:
    """A folder whose params are `params` and whose outputs of every stage not in `rerun`
    are links to `main`'s."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for name, stage in dvc_stages(directory).items():
        if name in rerun:
            continue
        for out in stage_outputs(stage):
            link = directory / out
            if not link.is_symlink():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to((main / out).resolve())


def metrics(directory: Path) -> dict:
    return json.loads((directory / "metrics/eval.json").read_text())


def run_seed(base: dict, seed: int, lambdas: list[float], controls: bool, workdir: Path) -> dict:
    """Every run of one seed; returns {variant: eval.json}."""
    params = copy.deepcopy(base)
    params["seed"] = seed
    root = workdir / f"seed_{seed}"
    results = {}
    with open(workdir / f"seed_{seed}.log", "w") as log:
        main = root / "main"
        main.mkdir(parents=True, exist_ok=True)
        (main / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        run_stages(main, list(dvc_stages(main)), log)
        results["main"] = metrics(main)
        variants = []
        if controls:
            long = copy.deepcopy(params)
            long["source_only"]["iterations"] = sum(
                params[s]["iterations"] for s in ("source_only", "inter", "intra")
            )
            variants.append(("source_long", long, VARIANT_STAGES["source_long"]))
            ce = copy.deepcopy(params)
            ce["intra"]["method"] = "source_only"
            variants.append(("intra_ce", ce, VARIANT_STAGES["intra_ce"]))
        for lam in lambdas:
            if lam == params["lambda"]:
                continue
            swept = copy.deepcopy(params)
            swept["lambda"] = lam
            variants.append((f"lambda_{lam}", swept, VARIANT_STAGES["lambda"]))
        for name, variant_params, rerun in variants:
            directory = root / name
            prepare_variant(main, directory, variant_params, rerun)
            run_stages(directory, rerun, log)
            results[name] = metrics(directory)
    return results


def mean_std(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def fmt(value) -> str:
    return "–" if value is None else f"{value:.2f}"


def seed_table(results: dict[int, dict], controls: bool) -> str:
    """Markdown: one row per seed, then mean ± std (sample standard deviation)."""
    columns = ["seed", "source-only", "inter", "intra"]
    if controls:
        columns += ["source-only, long", "intra, CE only"]
    columns += ["inter on easy", "inter on hard", "Spearman(score, error)", "pseudo-label acc."]
    rows = []
    for seed, runs in results.items():
        m = runs["main"]
        d = m["diagnostics"]
        row = [m["source_only"]["mIoU"], m["inter"]["mIoU"], m["intra"]["mIoU"]]
        if controls:
            row += [runs["source_long"]["source_only"]["mIoU"], runs["intra_ce"]["intra"]["mIoU"]]
        row += [
            d["inter_easy_mIoU"],
            d["inter_hard_mIoU"],
            d["score_error_spearman"],
            d["pseudo_label_accuracy"],
        ]
        rows.append([str(seed), *row])
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join([row[0], *map(fmt, row[1:])]) + " |")
    means = [mean_std([r[k] for r in rows]) for k in range(1, len(columns))]
    lines.append("| mean ± std | " + " | ".join(means) + " |")
    return "\n".join(lines)


def lambda_table(results: dict[int, dict], lambdas: list[float], default: float) -> str:
    """Markdown: intra mIoU per lambda and seed, mean ± std, and the split diagnostics."""
    seeds = list(results)
    columns = ["lambda", *[f"intra, seed {s}" for s in seeds], "mean ± std"]
    columns += ["inter on easy", "inter on hard", "pseudo-label acc."]
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for lam in lambdas:
        key = "main" if lam == default else f"lambda_{lam}"
        runs = [results[s][key] for s in seeds]
        intra = [r["intra"]["mIoU"] for r in runs]
        diag = [r["diagnostics"] for r in runs]
        label = f"{lam}" + (" (self-training)" if lam == 1.0 else "")
        lines.append(
            "| "
            + " | ".join(
                [
                    label,
                    *map(fmt, intra),
                    mean_std(intra),
                    mean_std([d["inter_easy_mIoU"] for d in diag]),
                    mean_std([d["inter_hard_mIoU"] for d in diag]),
                    mean_std([d["pseudo_label_accuracy"] for d in diag]),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def checks(results: dict[int, dict]) -> list[tuple[str, bool]]:
    """The conditions the method must meet on the default params (issue 3)."""
    src = [r["main"]["source_only"]["mIoU"] for r in results.values()]
    inter = [r["main"]["inter"]["mIoU"] for r in results.values()]
    intra = [r["main"]["intra"]["mIoU"] for r in results.values()]
    out = [
        (
            "every seed: source-only < inter < intra",
            all(s < a < b for s, a, b in zip(src, inter, intra, strict=True)),
        ),
        ("mean inter >= mean source-only + 2", statistics.mean(inter) >= statistics.mean(src) + 2),
        ("mean intra >= mean inter + 1", statistics.mean(intra) >= statistics.mean(inter) + 1),
    ]
    if all("source_long" in r for r in results.values()):
        long = [r["source_long"]["source_only"]["mIoU"] for r in results.values()]
        ce = [r["intra_ce"]["intra"]["mIoU"] for r in results.values()]
        out += [
            (
                "every seed: long source-only < intra",
                all(x < b for x, b in zip(long, intra, strict=True)),
            ),
            (
                "every seed: intra without adversarial term < intra",
                all(x < b for x, b in zip(ce, intra, strict=True)),
            ),
            (
                "mean: long source-only < intra",
                statistics.mean(long) < statistics.mean(intra),
            ),
            (
                "mean: intra without adversarial term < intra",
                statistics.mean(ce) < statistics.mean(intra),
            ),
        ]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lambdas", type=float, nargs="*", default=[0.33, 0.5, 0.67, 0.8, 1.0])
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--workdir", type=Path, default=REPO / "runs/method_gain")
    parser.add_argument("--no-controls", dest="controls", action="store_false")
    args = parser.parse_args()
    base = yaml.safe_load(args.params.read_text())
    args.workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results = {}
    for seed in args.seeds:
        print(f"seed {seed}", flush=True)
        results[seed] = run_seed(base, seed, args.lambdas, args.controls, args.workdir)
    report = [
        f"## Seeds (default params, target-val mIoU %; {time.perf_counter() - start:.0f} s)",
        "",
        seed_table(results, args.controls),
    ]
    if args.lambdas:
        lambdas = sorted(set(args.lambdas) | {base["lambda"]})
        report += [
            "",
            "## Lambda sweep (intra mIoU %)",
            "",
            lambda_table(results, lambdas, base["lambda"]),
        ]
    report += ["", "## Checks", ""]
    report += [f"- [{'x' if ok else ' '}] {name}" for name, ok in checks(results)]
    text = "\n".join(report)
    print(text)
    (args.workdir / "report.md").write_text(text + "\n")
    (args.workdir / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
