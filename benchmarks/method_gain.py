"""Does the method work, on every seed? The default pipeline for several seeds, three
controls per seed, and a lambda sweep, printed as tables of target-val mIoU (%).

Per seed it runs, each in its own folder under --workdir:

- `main`: the whole pipeline on params.yaml with `seed` set;
- `source_long`: source-only trained for as many iterations as source-only, inter and
  intra together (is the gain just longer training? It also tells whether the baseline
  has converged: more iterations should not help it);
- `intra_ce`: the intra step without its adversarial term (cross-entropy on the
  pseudo-labels only: does the hard split's adversarial signal matter?);
- `oracle`: the network trained on target-train *with its ground truth*, from scratch,
  with source-only's settings for as many iterations as the whole pipeline trains: the
  target-supervised bound that domain-adaptation papers report (a share of the
  source-only -> oracle gap closed is reported for inter and intra);
- `lambda_<x>`: the intra step re-run with another easy fraction; lambda = 1.0 is the
  paper's self-training control (every image pseudo-labelled, no hard split).

A variant re-runs only the stages its change touches and links every other stage's
outputs from `main`. Stages run as the `dvc.yaml` commands, one subprocess each.

Besides the seed-to-seed spread, the noise of one number is measured on its own:
target-val has a few hundred images, so each seed's gains (inter - source-only,
intra - inter, intra - intra without adversarial term) come with the standard deviation
of a paired bootstrap over target-val images (the same resampled images for both models).

    python -m benchmarks.method_gain [--seeds 0 1 2 3 4 5] [--lambdas 0.33 0.67 1.0]
        [--workdir runs/method_gain] [--no-controls] [--bootstrap 1000] [--jobs 1]

With `--jobs N` N seeds run at once, each stage with cores / N threads (PyTorch's
threads do not scale on small images: two one-thread runs finish sooner than two
two-thread runs one after the other). mIoU moves in the second decimal with the thread
count, so compare tables made with the same `--jobs` on the same kind of CPU.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from intrada.dag import resolved_stages, stage_outputs

REPO = Path(__file__).resolve().parents[1]

# Stages that a variant's params change makes stale, in DAG order.
VARIANT_STAGES = {
    "source_long": ("train_source_only", "evaluate"),
    "intra_ce": ("train_intra", "evaluate"),
    "oracle": ("train_source_only",),
    "lambda": ("rank_splits", "pseudo_labels", "train_intra", "evaluate"),
}
MODELS = ("source_only", "inter", "intra")
SEEDS = [0, 1, 2, 3, 4, 5]  # the tuning and reporting set
# Set by --jobs: the thread count of every stage when seeds run side by side. Results
# depend on it (other reduction orders), so the report names it.
THREAD_ENV: dict[str, str] = {}
# The DAG the runs follow (benchmarks.method_study points it at one with later rounds).
DVC_YAML = REPO / "dvc.yaml"
# (run folder, stage, seconds) of every stage run: the CPU time a study took.
STAGE_SECONDS: list[tuple[str, str, float]] = []


def dvc_stages(directory: Path) -> dict[str, dict]:
    """dvc.yaml's stages, resolved for the params.yaml in `directory`."""
    params = yaml.safe_load((directory / "params.yaml").read_text())
    return resolved_stages(DVC_YAML, params)


# Stages a run folder has completed, with the params they ran with: a benchmark run again
# on the same folder goes on where it stopped (the stages are deterministic).
DONE = ".stages_done.json"


def run_stages(directory: Path, names: tuple[str, ...] | list[str], log) -> None:
    """Run stages by their dvc.yaml commands in `directory` (which holds params.yaml),
    skipping those an earlier run of the benchmark completed there with the same params
    (and the same thread count)."""
    stages = dvc_stages(directory)
    env = {**os.environ, "PYTHONPATH": str(REPO), **THREAD_ENV}
    key = hashlib.sha256(
        (directory / "params.yaml").read_bytes() + json.dumps(THREAD_ENV).encode()
    ).hexdigest()
    done_file = directory / DONE
    done = json.loads(done_file.read_text()) if done_file.is_file() else {}
    for name in names:
        if done.get(name) == key:
            print(f"  {directory.parent.name}/{directory.name}: {name} done before", flush=True)
            continue
        words = shlex.split(stages[name]["cmd"])
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, *words[1:]], cwd=directory, env=env, capture_output=True, text=True
        )
        log.write(result.stdout + result.stderr)
        if result.returncode:
            sys.exit(f"error: {directory.name}: stage {name} failed:\n{result.stderr[-2000:]}")
        seconds = time.perf_counter() - start
        STAGE_SECONDS.append((str(directory), name, seconds))
        done[name] = key
        done_file.write_text(json.dumps(done))
        print(f"  {directory.parent.name}/{directory.name}: {name} {seconds:.0f} s", flush=True)


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


def prepare_oracle(main: Path, directory: Path, params: dict) -> None:
    """A variant whose "source" index is target-train with its held-back ground truth
    (everything else linked from `main`): train_source_only then trains the oracle."""
    prepare_variant(main, directory, params, VARIANT_STAGES["oracle"] + ("index_data",))
    index = directory / "data/index"
    index.mkdir(parents=True, exist_ok=True)
    for table in (main / "data/index").iterdir():
        if table.name != "source.parquet" and not (index / table.name).exists():
            (index / table.name).symlink_to(table.resolve())
    images = pd.read_parquet(main / "data/index/target_train.parquet")
    truth = pd.read_parquet(main / "data/index/target_train_gt.parquet")
    images.merge(truth, on="image_id", validate="one_to_one").to_parquet(
        index / "source.parquet", index=False
    )


def val_confusions(directory: Path, models: dict[str, Path]) -> dict[str, np.ndarray]:
    """Per-image (C, C) confusion matrices of each model on the run's target-val, as the
    evaluate stage counts them (labels at their resolution)."""
    from intrada.checkpoint import load_model  # imported here: torch is slow to load
    from intrada.classes import dataset_classes
    from intrada.data import SegmentationSet, load_index
    from intrada.inference import predict_probs, top_class
    from intrada.metrics import confusion_matrix

    params = yaml.safe_load((directory / "params.yaml").read_text())
    classes = dataset_classes(params["data"]["name"])
    table = load_index(directory / "data/index/target_val.parquet", labelled=True)
    dataset = SegmentationSet(
        table,
        classes,
        directory,
        labelled=True,
        size=params["data"]["target_size"],
        resize_labels=False,
    )
    out = {}
    for name, path in models.items():
        model, _ = load_model(path, classes)
        per_image = []
        for i in range(len(dataset)):
            sample = dataset[(i, False)]
            label = sample["label"]
            pred = top_class(predict_probs(model, sample["image"][None], tuple(label.shape)))
            per_image.append(confusion_matrix(label.numpy(), pred[0].numpy(), len(classes)))
        out[name] = np.stack(per_image)
    return out


def miou_of(cm: np.ndarray) -> float:
    from intrada.metrics import iou_per_class, mean_iou

    return 100.0 * mean_iou(iou_per_class(cm))


def paired_bootstrap(a: np.ndarray, b: np.ndarray, draws: int, seed: int = 0) -> float:
    """Standard deviation of mIoU(b) - mIoU(a) over `draws` resamplings of the images
    (with replacement; both models scored on the same resampled images)."""
    rng = np.random.default_rng(seed)
    n = len(a)
    diffs = []
    for _ in range(draws):
        pick = rng.integers(0, n, n)
        diffs.append(miou_of(b[pick].sum(0)) - miou_of(a[pick].sum(0)))
    return float(np.std(diffs))


def seed_noise(root: Path, controls: bool, draws: int) -> dict[str, float]:
    """Paired-bootstrap standard deviations of one seed's gains."""
    main = root / "main"
    models = {name: main / f"models/{name}/model.pt" for name in MODELS}
    if controls:
        models["intra_ce"] = root / "intra_ce/models/intra/model.pt"
    cms = val_confusions(main, models)
    noise = {
        "inter - source-only": paired_bootstrap(cms["source_only"], cms["inter"], draws),
        "intra - inter": paired_bootstrap(cms["inter"], cms["intra"], draws),
    }
    if controls:
        noise["intra - intra, CE only"] = paired_bootstrap(cms["intra_ce"], cms["intra"], draws)
    return noise


def model_miou(directory: Path, name: str) -> float:
    """mIoU (%) of one model of a run folder on its target-val (as evaluate computes it)."""
    path = directory / f"models/{name}/model.pt"
    return round(miou_of(val_confusions(directory, {name: path})[name].sum(0)), 4)


def run_seed(
    base: dict, seed: int, lambdas: list[float], controls: bool, workdir: Path, draws: int
) -> dict:
    """Every run of one seed; returns {variant: eval.json} (the oracle: {"mIoU": %}),
    and under "noise" the paired-bootstrap deviations of its gains."""
    params = copy.deepcopy(base)
    params["seed"] = seed
    # Seed s is benchmark draw s trained with seed s, as before the draw had its own key.
    if params["generate"].get("synthetic") is not None:
        params["generate"]["synthetic"]["draw"] = seed
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
        if controls:
            oracle = copy.deepcopy(params)
            oracle["source_only"]["iterations"] = long["source_only"]["iterations"]
            directory = root / "oracle"
            prepare_oracle(main, directory, oracle)
            run_stages(directory, VARIANT_STAGES["oracle"], log)
            results["oracle"] = {"mIoU": model_miou(directory, "source_only")}
        if draws:
            results["noise"] = seed_noise(root, controls, draws)
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


def gap_closed(model: float, source: float, oracle: float) -> float:
    """Share (%) of the source-only -> oracle gap that a model closes."""
    return 100.0 * (model - source) / (oracle - source)


def seed_table(results: dict[int, dict], controls: bool) -> str:
    """Markdown: one row per seed, then mean ± std (sample standard deviation)."""
    columns = ["seed", "source-only", "inter", "intra"]
    if controls:
        columns += [
            "source-only, long",
            "intra, CE only",
            "oracle",
            "inter: gap closed %",
            "intra: gap closed %",
        ]
    columns += ["inter on easy", "inter on hard", "Spearman(score, error)", "pseudo-label acc."]
    rows = []
    for seed, runs in results.items():
        m = runs["main"]
        d = m["diagnostics"]
        src, inter, intra = (m[name]["mIoU"] for name in MODELS)
        row = [src, inter, intra]
        if controls:
            oracle = runs["oracle"]["mIoU"]
            row += [
                runs["source_long"]["source_only"]["mIoU"],
                runs["intra_ce"]["intra"]["mIoU"],
                oracle,
                gap_closed(inter, src, oracle),
                gap_closed(intra, src, oracle),
            ]
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


def noise_table(results: dict[int, dict]) -> str:
    """Markdown: each seed's gains and, ±, their paired-bootstrap standard deviation."""
    pairs = {
        "inter - source-only": ("source_only", "main", "inter", "main"),
        "intra - inter": ("inter", "main", "intra", "main"),
        "intra - intra, CE only": ("intra", "intra_ce", "intra", "main"),
    }
    keys = [k for k in pairs if all(k in r.get("noise", {}) for r in results.values())]
    lines = ["| seed | " + " | ".join(keys) + " |", "|" + " --- |" * (len(keys) + 1)]
    for seed, runs in results.items():
        cells = []
        for key in keys:
            model_a, run_a, model_b, run_b = pairs[key]
            gain = runs[run_b][model_b]["mIoU"] - runs[run_a][model_a]["mIoU"]
            cells.append(f"{gain:+.2f} ± {runs['noise'][key]:.2f}")
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def checks(results: dict[int, dict]) -> list[tuple[str, bool]]:
    """The conditions the method must meet on the default params (issues 3 and 11)."""
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
        gains = [x - s for x, s in zip(long, src, strict=True)]
        ce_wins = sum(x < b for x, b in zip(ce, intra, strict=True))
        # At least 5 of 6: one seed in six may go the other way (scaled to other counts).
        needed = len(ce) - len(ce) // 6
        out += [
            (
                "converged baseline: long source-only gains <= 0.5 on the mean",
                statistics.mean(gains) <= 0.5,
            ),
            ("converged baseline: long source-only gains <= 1.0 on every seed", max(gains) <= 1.0),
            (
                "every seed: long source-only < intra",
                all(x < b for x, b in zip(long, intra, strict=True)),
            ),
            (
                f"intra without adversarial term < intra on at least {needed} of {len(ce)} seeds"
                f" ({ce_wins})",
                ce_wins >= needed,
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
    parser.add_argument("--seeds", type=int, nargs="+", default=SEEDS)
    parser.add_argument("--lambdas", type=float, nargs="*", default=[0.33, 0.67, 1.0])
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--workdir", type=Path, default=REPO / "runs/method_gain")
    parser.add_argument("--no-controls", dest="controls", action="store_false")
    parser.add_argument(
        "--bootstrap", type=int, default=1000, help="paired-bootstrap draws (0: skip)"
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="seeds run at once, each with cores / jobs threads"
    )
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error(f"--jobs: expected a positive integer, got {args.jobs}")
    base = yaml.safe_load(args.params.read_text())
    args.workdir.mkdir(parents=True, exist_ok=True)
    threads = "default"
    if args.jobs > 1:
        threads = str(max(1, (os.cpu_count() or 1) // args.jobs))
        THREAD_ENV.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        import torch  # the bootstrap's forwards run in this process

        torch.set_num_threads(int(threads))
    start = time.perf_counter()

    def one_seed(seed: int) -> dict:
        print(f"seed {seed}", flush=True)
        return run_seed(base, seed, args.lambdas, args.controls, args.workdir, args.bootstrap)

    # Threads suffice: every stage is its own subprocess.
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = dict(sorted(zip(args.seeds, pool.map(one_seed, args.seeds), strict=True)))
    report = [
        f"## Seeds (default params, target-val mIoU %; {time.perf_counter() - start:.0f} s,"
        f" --jobs {args.jobs}, threads per stage: {threads})",
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
    if args.bootstrap:
        report += [
            "",
            f"## Noise of one seed's gains (paired bootstrap over target-val images, "
            f"{args.bootstrap} draws: gain ± standard deviation)",
            "",
            noise_table(results),
        ]
    report += ["", "## Checks", ""]
    report += [f"- [{'x' if ok else ' '}] {name}" for name, ok in checks(results)]
    text = "\n".join(report)
    print(text)
    (args.workdir / "report.md").write_text(text + "\n")
    (args.workdir / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
