"""The method study on the embedded benchmark: the paper's ablation table with AdvEnt and
with AdaptSegNet as the framework, several intra rounds, label-free snapshot selection,
and the two kinds of spread (another benchmark draw, another training run), for seeds
0-5, with the controls and the paired-bootstrap noise of `benchmarks.method_gain`.

Per seed s (benchmark draw s, training seed s), each run in its own folder, re-running
only the stages its change touches (`method_gain.prepare_variant`):

- `main`: the default pipeline with three intra rounds (round 1 is the default DAG;
  rounds 2 and 3 rank with the previous round's model: `intrada.rounds`);
- the controls: `source_long`, `intra_ce`, `oracle` (`benchmarks.method_gain`);
- the ablation rows, AdvEnt framework: AdvEnt (the inter model), `adv_only` (the intra
  step's adversarial term alone: its pseudo-label cross-entropy weighted 0,
  `intra.lambda_seg: 0` -- our reading of the paper's "AdvEnt + intra-domain
  adaptation"), `self_training` (lambda = 1: every image pseudo-labelled, no hard split),
  Ours (main's intra), `normalised` (the ranking normalised by rare classes);
- the same rows with AdaptSegNet as the framework of both steps (`asn`, `asn_adv_only`,
  `asn_self_training`, `asn_normalised`, and its CE-only control `asn_intra_ce`);
- `select_<rule>`: the pipeline when the inter snapshot that ranks and pseudo-labels is
  another rule's (`last`, or a label-free criterion's pick: `intrada.selection`) than
  the default's `inter.select` (skipped where the two pick the same snapshot: the run is
  `main` then).

Then, on benchmark draw 0, the default pipeline for training seeds 1-5 (seed 0 is
seed 0's `main`): the spread over training runs on one fixed benchmark, beside the
spread over draws.

The study runs in phases (`PHASES`: the default pipeline with its controls and the
AdvEnt rows; the AdaptSegNet rows; the selection runs; then the training seeds), each
over every seed, and rewrites `report.md` after each with the tables it can fill. Run
again on the same --workdir, it goes on where it stopped (stages a run folder
completed with the same params are skipped).

    python -m benchmarks.method_study [--seeds 0 1 2 3 4 5] [--train-seeds 1 2 3 4 5]
        [--workdir runs/method_study] [--bootstrap 1000] [--jobs 2]
        [--phase-seeds adaptsegnet=0,1 selection=] [--skip RUN ...] [--report-only]

Writes `report.md` (every table) and `results.json` under --workdir; prints the report.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import yaml

from benchmarks import method_gain as mg
from benchmarks.machine import describe
from intrada.rounds import with_rounds
from intrada.selection import CRITERIA

# The rules of the selection phase: the last snapshot and each label-free criterion.
SELECTIONS = ("last", *CRITERIA)

REPO = mg.REPO
ROUNDS = 3
ROUND_ONE = (
    "check_params",
    "generate_data@synthetic",
    "index_data",
    "train_source_only",
    "train_inter",
    "score_entropy",
    "rank_splits",
    "pseudo_labels",
    "train_intra",
    "evaluate",
)
FROM_INTRA = ("train_intra", "evaluate")
FROM_RANKING = ("rank_splits", "pseudo_labels", "train_intra", "evaluate")
FROM_SCORING = ("score_entropy", *FROM_RANKING)
FROM_INTER = ("train_inter", *FROM_SCORING)


def changed(**changes: Callable[[dict], None]) -> Callable[[dict], dict]:
    """A params transform applying each named change (for the variant table below)."""

    def apply(params: dict) -> dict:
        out = copy.deepcopy(params)
        for change in changes.values():
            change(out)
        return out

    return apply


def set_key(dotted: str, value) -> Callable[[dict], None]:
    def apply(params: dict) -> None:
        *path, last = dotted.split(".")
        node = params
        for part in path:
            node = node[part]
        node[last] = value

    return apply


def inter_weights(params: dict) -> None:
    """The intra step's adversarial weights and discriminator rate set to the inter
    step's (AdvEnt's own 1e-3 / 2e-4, 1e-4), as the released IntraDA code's intra step
    has them; the default's intra values are 30x / 10x, tuned beside the pseudo-labels'
    cross-entropy (docs/method-study.md)."""
    for key in ("lambda_adv_main", "lambda_adv_aux", "lr_disc"):
        params["intra"][key] = params["inter"][key]


def released_sgd(params: dict) -> None:
    """The intra step's network optimiser as the released code's: SGD, lr 2.5e-4,
    momentum 0.9, weight decay 5e-4. With the adversarial term alone Adam (the default's
    optimiser) rescales its small gradient to full-size steps; SGD keeps it small."""
    params["intra"].update(optimizer="sgd", lr=2.5e-4, momentum=0.9, weight_decay=5.0e-4)


def adaptsegnet(params: dict) -> None:
    """AdaptSegNet as the framework of both steps, every other setting as the default's:
    output-space discriminators (softmax maps), the vanilla GAN objective."""
    for section in ("inter", "intra"):
        params[section].update(method="adaptsegnet", gan="vanilla")


# The variants of a framework's pipeline: name: (params change, stages re-run).
FRAMEWORK_VARIANTS = {
    "intra_ce": (changed(m=set_key("intra.method", "source_only")), FROM_INTRA),
    "adv_only": (changed(w=set_key("intra.lambda_seg", 0.0)), FROM_INTRA),
    "adv_only_inter_weights": (
        changed(w=set_key("intra.lambda_seg", 0.0), a=inter_weights),
        FROM_INTRA,
    ),
    "adv_only_released_sgd": (
        changed(w=set_key("intra.lambda_seg", 0.0), a=inter_weights, o=released_sgd),
        FROM_INTRA,
    ),
    "self_training": (changed(lam=set_key("lambda", 1.0)), FROM_RANKING),
    "normalised": (changed(n=set_key("inference.normalize_entropy", True)), FROM_SCORING),
}
# name: (the run it starts from, params change, stages re-run). Each variant with AdvEnt
# (from `main`) and with AdaptSegNet (`asn_<name>`, from `asn`: both steps AdaptSegNet).
VARIANTS = {
    **{name: ("main", *variant) for name, variant in FRAMEWORK_VARIANTS.items()},
    "asn": ("main", changed(asn=adaptsegnet), FROM_INTER),
    **{f"asn_{name}": ("asn", *variant) for name, variant in FRAMEWORK_VARIANTS.items()},
}
# The ablation rows of each framework: (row, run, model in that run's metrics).
ABLATION = {
    "advent": [
        ("AdvEnt", "main", "inter"),
        ("AdvEnt + intra-domain adaptation (adversarial term alone)", "adv_only", "intra"),
        ("AdvEnt + self-training (lambda = 1)", "self_training", "intra"),
        ("Ours (IntraDA)", "main", "intra"),
        ("Ours + entropy normalisation", "normalised", "intra"),
        ("control: intra with cross-entropy alone", "intra_ce", "intra"),
        (
            "control: adversarial term alone at the inter step's weights",
            "adv_only_inter_weights",
            "intra",
        ),
        (
            "control: adversarial term alone, inter step's weights, released SGD",
            "adv_only_released_sgd",
            "intra",
        ),
    ],
    "adaptsegnet": [
        ("AdaptSegNet", "asn", "inter"),
        ("AdaptSegNet + intra-domain adaptation (adversarial term alone)", "asn_adv_only", "intra"),
        ("AdaptSegNet + self-training (lambda = 1)", "asn_self_training", "intra"),
        ("Ours (IntraDA on AdaptSegNet)", "asn", "intra"),
        ("Ours + entropy normalisation", "asn_normalised", "intra"),
        ("control: intra with cross-entropy alone", "asn_intra_ce", "intra"),
        (
            "control: adversarial term alone at the inter step's weights",
            "asn_adv_only_inter_weights",
            "intra",
        ),
        (
            "control: adversarial term alone, inter step's weights, released SGD",
            "asn_adv_only_released_sgd",
            "intra",
        ),
    ],
}
# The paper's GTA5 -> Cityscapes ablation (IntraDA, Pan et al. 2020, released table.png).
PAPER = {
    "AdvEnt": 43.8,
    "AdvEnt + intra-domain adaptation (adversarial term alone)": 45.1,
    "AdvEnt + self-training (lambda = 1)": 45.5,
    "Ours (IntraDA)": 46.3,
    "Ours + entropy normalisation": 47.0,
}
# Gains whose paired-bootstrap noise is measured: (name, run a, model a, run b, model b).
GAINS = [
    ("inter - source-only", "main", "source_only", "main", "inter"),
    ("intra - inter", "main", "inter", "main", "intra"),
    ("intra - intra, CE only", "intra_ce", "intra", "main", "intra"),
    ("intra - adversarial term alone", "adv_only", "intra", "main", "intra"),
    ("intra - self-training", "self_training", "intra", "main", "intra"),
    (
        "adversarial term alone, released SGD - inter",
        "main",
        "inter",
        "adv_only_released_sgd",
        "intra",
    ),
    ("normalised - intra", "main", "intra", "normalised", "intra"),
    ("round 2 - round 1", "main", "intra", "main", "round_2"),
    ("round 3 - round 2", "main", "round_2", "main", "round_3"),
    ("AdaptSegNet intra - inter", "asn", "inter", "asn", "intra"),
]
STAGES = ("source_only", "inter", "intra")


def model_path(root: Path, run: str, model: str) -> Path:
    return root / run / f"models/{model}/model.pt"


def main_params(base: dict, seed: int, draw: int, rounds: int) -> dict:
    params = copy.deepcopy(base)
    params["seed"] = seed
    params["generate"]["synthetic"]["draw"] = draw
    params["intra"]["rounds"] = rounds
    return params


def metrics_of(root: Path, run: str) -> dict:
    """The run's eval.json, with the later rounds' models added under their names."""
    out = mg.metrics(root / run)
    for path in sorted((root / run / "metrics/rounds").glob("round_*.json")):
        out[path.stem] = json.loads(path.read_text())[path.stem]
        out[f"{path.stem}_diagnostics"] = json.loads(path.read_text()).get("diagnostics")
    return out


def validation_of(root: Path, run: str, model: str) -> dict:
    """The validation summary a model file records (curves, picks, selected)."""
    blob = torch.load(model_path(root, run, model), map_location="cpu", weights_only=True)
    return blob["meta"]["validation"]


def seed_params(base: dict, seed: int) -> dict[str, dict]:
    """Every run's params of one seed, by run name (main, the variants, the selections)."""
    runs = {"main": main_params(base, seed, seed, ROUNDS)}
    for name, (start, change, _) in VARIANTS.items():
        runs[name] = change(runs[start])
    for criterion in SELECTIONS:
        runs[f"select_{criterion}"] = changed(s=set_key("inter.select", criterion))(runs["main"])
    return runs


def run_variants(root: Path, runs: dict[str, dict], names: list[str], log) -> None:
    for name in names:
        start, _, rerun = VARIANTS[name]
        mg.prepare_variant(root / start, root / name, runs[name], rerun)
        mg.run_stages(root / name, rerun, log)


# The study in phases, each over every seed before the next starts: a study stopped
# part-way still has complete tables for its first phases, and a study run again goes on
# where it stopped (`method_gain.run_stages` skips the stages a run folder completed).
PHASES = ("core", "adaptsegnet", "selection")


def run_phase(
    phase: str, base: dict, seed: int, workdir: Path, skip: frozenset[str] = frozenset()
) -> None:
    """One phase of one seed; runs named in `skip` are left out (a study cut to fit its
    time: their cells read "–")."""
    root = workdir / f"seed_{seed}"
    runs = seed_params(base, seed)
    main = root / "main"
    with open(workdir / f"seed_{seed}.{phase}.log", "w") as log:
        if phase == "core":
            main.mkdir(parents=True, exist_ok=True)
            (main / "params.yaml").write_text(yaml.safe_dump(runs["main"], sort_keys=False))
            mg.run_stages(main, list(mg.dvc_stages(main)), log)
            # Controls of method_gain: source-only as long as the pipeline, the oracle.
            long = copy.deepcopy(runs["main"])
            long["source_only"]["iterations"] = sum(long[s]["iterations"] for s in STAGES)
            mg.prepare_variant(main, root / "source_long", long, mg.VARIANT_STAGES["source_long"])
            mg.run_stages(root / "source_long", mg.VARIANT_STAGES["source_long"], log)
            mg.prepare_oracle(main, root / "oracle", long)
            mg.run_stages(root / "oracle", mg.VARIANT_STAGES["oracle"], log)
            controls = ["intra_ce", "adv_only", "adv_only_inter_weights", "adv_only_released_sgd"]
            controls.append("self_training")
            names = [*controls, "normalised"]
            run_variants(root, runs, [n for n in names if n not in skip], log)
        elif phase == "adaptsegnet":
            names = [n for n in VARIANTS if n.startswith("asn") and n not in skip]
            run_variants(root, runs, names, log)
        else:
            for criterion in other_selections(validation_of(root, "main", "inter")):
                name = f"select_{criterion}"
                mg.prepare_variant(main, root / name, runs[name], FROM_INTER)
                mg.run_stages(root / name, FROM_INTER, log)


def picked_iteration(validation: dict, rule: str) -> int | None:
    """The iteration a rule of `SELECTIONS` keeps, from a model's validation record (None
    where the record has no pick for it)."""
    if rule == "last":
        return validation["last_iteration"]
    return validation["picks"].get(rule, {}).get("iteration")


def other_selections(inter: dict) -> list[str]:
    """The rules (`SELECTIONS`) whose inter snapshot is not the one main kept, from the
    inter model's validation record: the pipeline is run again from each of their
    snapshots; a rule picking main's snapshot would repeat `main` itself."""
    picks = {rule: picked_iteration(inter, rule) for rule in SELECTIONS}
    return [r for r, it in picks.items() if it is not None and it != inter["selected_iteration"]]


def collect(workdir: Path, seed: int, draws: int) -> dict:
    """One seed's results from its run folders (what has run so far)."""
    root = workdir / f"seed_{seed}"
    results: dict = {}
    for name in ("main", "source_long", *VARIANTS, *(f"select_{c}" for c in SELECTIONS)):
        if (root / name / "metrics/eval.json").is_file():
            results[name] = metrics_of(root, name)
    if (root / "oracle/models/source_only/model.pt").is_file():
        results["oracle"] = {"mIoU": mg.model_miou(root / "oracle", "source_only")}
    if "main" in results:
        results["validation"] = {s: validation_of(root, "main", s) for s in STAGES}
    if draws and "main" in results:
        results["noise"] = noise(root, draws, results)
    return results


def noise(root: Path, draws: int, results: dict) -> dict[str, float]:
    """Paired-bootstrap standard deviation of each gain in GAINS whose runs have run."""
    gains = [g for g in GAINS if miou(results, g[1], g[2]) is not None]
    gains = [g for g in gains if miou(results, g[3], g[4]) is not None]
    cms: dict[tuple[str, str], np.ndarray] = {}
    for _, *pairs in gains:
        for run, model in (pairs[:2], pairs[2:]):
            if (run, model) not in cms:
                path = model_path(root, run, model)
                cms[(run, model)] = mg.val_confusions(root / run, {model: path})[model]
    return {
        name: mg.paired_bootstrap(cms[(ra, ma)], cms[(rb, mb)], draws)
        for name, ra, ma, rb, mb in gains
    }


def run_training_seed(base: dict, seed: int, workdir: Path) -> dict:
    """The default pipeline (one round) for training seed `seed` on benchmark draw 0,
    the benchmark itself linked from seed 0's main run."""
    params = main_params(base, seed, 0, 1)
    directory = workdir / "draw_0" / f"train_seed_{seed}"
    rerun = [s for s in ROUND_ONE if s not in ("generate_data@synthetic", "index_data")]
    mg.prepare_variant(workdir / "seed_0" / "main", directory, params, tuple(rerun))
    with open(workdir / f"train_seed_{seed}.log", "w") as log:
        mg.run_stages(directory, rerun, log)
    return mg.metrics(directory)


# --- tables ------------------------------------------------------------------------


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def miou(result: dict, run: str, model: str) -> float | None:
    return (result.get(run) or {}).get(model, {}).get("mIoU")


def ablation_table(results: dict[int, dict], framework: str) -> str:
    seeds = list(results)
    rows = []
    for label, run, model in ABLATION[framework]:
        values = [miou(results[s], run, model) for s in seeds]
        paper = PAPER.get(label) if framework == "advent" else None
        rows.append([label, mg.fmt(paper), mg.mean_std(values), *map(mg.fmt, values)])
    return table(
        [
            "row",
            "paper (GTA5 → Cityscapes)",
            "mean ± std",
            *[f"seed {s}" for s in seeds],
        ],
        rows,
    )


def orderings(
    results: dict[int, dict], framework: str, second_row: tuple[str, str, str] | None = None
) -> list[str]:
    """Each consecutive pair of the paper's rows (its ordering): on how many seeds and
    on the mean it holds here. `second_row` replaces the paper's second row (the
    adversarial term alone) by another reading of it."""
    rows = list(ABLATION[framework][:5])
    if second_row is not None:
        rows[1] = second_row
    lines = []
    for (la, ra, ma), (lb, rb, mb) in zip(rows, rows[1:], strict=False):
        pairs = [(miou(r, ra, ma), miou(r, rb, mb)) for r in results.values()]
        pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
        if not pairs:
            continue
        a, b = [x for x, _ in pairs], [y for _, y in pairs]
        held = sum(x < y for x, y in zip(a, b, strict=True))
        mean_gain = statistics.mean(b) - statistics.mean(a)
        verdict = "holds on the mean" if mean_gain > 0 else "does not hold"
        if held == len(a):
            verdict = "holds on every seed"
        lines.append(f"- {la} < {lb}: {held} of {len(a)} seeds, mean {mean_gain:+.2f} ({verdict})")
    return lines


def rounds_table(results: dict[int, dict]) -> str:
    rows = []
    for k, model in ((1, "intra"), (2, "round_2"), (3, "round_3")):
        values = [miou(r, "main", model) for r in results.values()]
        closed = [
            100
            * (v - r["main"]["source_only"]["mIoU"])
            / (r["oracle"]["mIoU"] - r["main"]["source_only"]["mIoU"])
            for v, r in zip(values, results.values(), strict=True)
        ]
        acc_key = "diagnostics" if k == 1 else f"{model}_diagnostics"
        acc = [
            (r["main"].get(acc_key) or {}).get("pseudo_label_accuracy") for r in results.values()
        ]
        rows.append(
            [k, mg.mean_std(values), mg.mean_std(closed), mg.mean_std(acc), *map(mg.fmt, values)]
        )
    return table(
        ["rounds", "intra mIoU, mean ± std", "gap closed %", "pseudo-label acc.",
         *[f"seed {s}" for s in results]],
        rows,
    )  # fmt: skip


def selection_tables(results: dict[int, dict]) -> tuple[str, str]:
    """(a) per stage and criterion, the pick's target-val mIoU against the best-on-val
    and the last snapshot's; (b) the final intra mIoU when ranking uses the inter pick."""
    rows = []
    for stage in STAGES:
        for criterion in SELECTIONS:
            to_best, to_last, iterations = [], [], []
            for r in results.values():
                v = r["validation"][stage]
                curve = dict(v["curve"])
                last = curve[v["last_iteration"]]
                it = picked_iteration(v, criterion)
                value = curve[it]
                to_best.append(value - v["best_mIoU"])
                to_last.append(value - last)
                iterations.append(it)
            rows.append(
                [stage, criterion, mg.mean_std(to_best), mg.mean_std(to_last),
                 ", ".join(str(i) for i in iterations)]
            )  # fmt: skip
    picks = table(
        ["stage", "snapshot", "minus best on val (mIoU)", "minus last (mIoU)",
         "iteration picked, per seed"],
        rows,
    )  # fmt: skip
    final = []
    for criterion in SELECTIONS:
        values = []
        for r in results.values():
            run = f"select_{criterion}"
            values.append(miou(r, run if run in r else "main", "intra"))
        final.append([criterion, mg.mean_std(values), *map(mg.fmt, values)])
    return picks, table(
        ["inter snapshot that ranks", "final intra mIoU", *[f"seed {s}" for s in results]], final
    )


def spread_table(results: dict[int, dict], trained: dict[int, dict]) -> str:
    by_draw = {s: r["main"] for s, r in results.items()}
    by_training = {0: results[0]["main"], **trained} if 0 in results else trained
    rows = []
    for label, pick in (
        ("source-only", lambda m: m["source_only"]["mIoU"]),
        ("inter", lambda m: m["inter"]["mIoU"]),
        ("intra", lambda m: m["intra"]["mIoU"]),
        ("inter - source-only", lambda m: m["inter"]["mIoU"] - m["source_only"]["mIoU"]),
        ("intra - inter", lambda m: m["intra"]["mIoU"] - m["inter"]["mIoU"]),
    ):
        rows.append(
            [label, mg.mean_std([pick(m) for m in by_draw.values()]),
             mg.mean_std([pick(m) for m in by_training.values()])]
        )  # fmt: skip
    return table(
        [
            "target-val mIoU",
            f"draws {', '.join(map(str, by_draw))} (training seed = draw)",
            f"training seeds {', '.join(map(str, by_training))} on draw 0",
        ],
        rows,
    )


def noise_table(results: dict[int, dict]) -> str:
    rows = []
    for name, ra, ma, rb, mb in GAINS:
        cells = []
        for r in results.values():
            a, b = miou(r, ra, ma), miou(r, rb, mb)
            if name not in r.get("noise", {}) or a is None or b is None:
                cells.append("–")
                continue
            gain = b - a
            cells.append(f"{gain:+.2f} ± {r['noise'][name]:.2f}")
        rows.append([name, *cells])
    return table(["gain", *[f"seed {s}" for s in results]], rows)


def cpu_hours(threads: int) -> float:
    return sum(seconds for _, _, seconds in mg.STAGE_SECONDS) * threads / 3600


def report(
    results: dict[int, dict], trained: dict[int, dict], done: list[str], draws: int, header: str
) -> str:
    """Every table whose runs have finished (`done`: the phases completed)."""
    parts = [header, "", f"Phases done: {', '.join(done)}.", ""]
    if "core" in done:
        parts += [
            "## Seeds: default pipeline and controls (target-val mIoU %)",
            "",
            mg.seed_table(results, controls=True),
            "",
            "## Checks",
            "",
            *[f"- [{'x' if ok else ' '}] {name}" for name, ok in mg.checks(results)],
            "",
            "## Intra rounds (main, target-val mIoU %; gap closed: of source-only -> oracle)",
            "",
            rounds_table(results),
            "",
            "## Ablation, AdvEnt as the framework (target-val mIoU %)",
            "",
            ablation_table(results, "advent"),
            "",
            *orderings(results, "advent"),
            "",
            "The same with the adversarial term alone under the released SGD:",
            "",
            *orderings(results, "advent", ABLATION["advent"][-1]),
            "",
            f"## Noise of one seed's gains (paired bootstrap, {draws} draws: gain ± std)",
            "",
            noise_table(results),
            "",
            "## Label-free snapshot selection: each stage's pick (target-val mIoU)",
            "",
            selection_tables(results)[0],
            "",
        ]
    if "adaptsegnet" in done:
        parts += [
            "## Ablation, AdaptSegNet as the framework (target-val mIoU %)",
            "",
            ablation_table(results, "adaptsegnet"),
            "",
            *orderings(results, "adaptsegnet"),
            "",
            "The same with the adversarial term alone under the released SGD:",
            "",
            *orderings(results, "adaptsegnet", ABLATION["adaptsegnet"][-1]),
            "",
        ]
    if "selection" in done:
        parts += [
            "## Label-free snapshot selection: the pipeline's intra mIoU when the inter pick ranks",
            "",
            selection_tables(results)[1],
            "",
        ]
    if trained:
        parts += ["## Two kinds of spread (mean ± std)", "", spread_table(results, trained), ""]
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=mg.SEEDS)
    parser.add_argument("--train-seeds", type=int, nargs="*", default=[1, 2, 3, 4, 5])
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml")
    parser.add_argument("--workdir", type=Path, default=REPO / "runs/method_study")
    parser.add_argument("--bootstrap", type=int, default=1000, help="paired-bootstrap draws")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (cores / jobs threads)")
    parser.add_argument(
        "--phase-seeds",
        nargs="*",
        default=[],
        metavar="PHASE=S,S",
        help="run a phase on these seeds only (e.g. adaptsegnet=0,1; empty: skip the phase)",
    )
    parser.add_argument(
        "--skip", nargs="*", default=[], metavar="RUN", help="variant runs to leave out"
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: write the report from the run folders --workdir already holds",
    )
    args = parser.parse_args()
    phase_seeds = {phase: list(args.seeds) for phase in PHASES}
    for item in args.phase_seeds:
        phase, _, seeds = item.partition("=")
        if phase not in PHASES:
            parser.error(f"--phase-seeds: unknown phase {phase!r} (expected one of {PHASES})")
        phase_seeds[phase] = [int(s) for s in seeds.split(",") if s]
    skip = frozenset(args.skip)
    if args.train_seeds and 0 not in args.seeds:
        parser.error("--train-seeds needs seed 0 (its benchmark draw is shared)")
    base = yaml.safe_load(args.params.read_text())
    args.workdir.mkdir(parents=True, exist_ok=True)
    # The DAG with the later rounds, as `python -m intrada.rounds 3` writes it.
    dvc_yaml = args.workdir / "dvc.yaml"
    dvc_yaml.write_text(with_rounds((REPO / "dvc.yaml").read_text(), ROUNDS))
    mg.DVC_YAML = dvc_yaml
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    mg.THREAD_ENV.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    torch.set_num_threads(threads)
    start = time.perf_counter()
    done: list[str] = []
    trained: dict[int, dict] = {}
    ran: dict[str, list[int]] = {}

    def write(final: bool) -> None:
        results = {s: collect(args.workdir, s, args.bootstrap if final else 0) for s in args.seeds}
        hours = (time.perf_counter() - start) / 3600
        header = (
            f"Machine: {describe()}; {hours:.1f} h wall, {cpu_hours(threads):.1f} CPU-hours "
            f"(stage seconds x {threads} thread(s)) in this invocation, --jobs {args.jobs}."
            + "".join(f" Phase {p}: seeds {', '.join(map(str, v))}." for p, v in ran.items())
            + (f" Runs left out: {', '.join(sorted(skip))}." if skip else "")
        )
        text = report(results, trained, done, args.bootstrap, header)
        (args.workdir / "report.md").write_text(text + "\n")
        payload = {"seeds": results, "training_seeds_on_draw_0": trained}
        (args.workdir / "results.json").write_text(json.dumps(payload, indent=1))
        if final:
            print(text)

    if args.report_only:
        # What a study stopped part-way (or run piecewise) has measured so far.
        for phase, runs in (
            ("core", ["main"]),
            ("adaptsegnet", ["asn"]),
            ("selection", [f"select_{c}" for c in SELECTIONS]),
        ):
            seeds = [
                s
                for s in args.seeds
                if any((args.workdir / f"seed_{s}/{r}/metrics/eval.json").is_file() for r in runs)
            ]
            if seeds:
                done.append(phase)
                ran[phase] = seeds
        for seed in args.train_seeds:
            directory = args.workdir / "draw_0" / f"train_seed_{seed}"
            if (directory / "metrics/eval.json").is_file():
                trained[seed] = mg.metrics(directory)
        write(final=True)
        return
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for phase in PHASES:
            seeds = phase_seeds[phase]
            if not seeds:
                continue
            list(pool.map(lambda s, p=phase: run_phase(p, base, s, args.workdir, skip), seeds))
            done.append(phase)
            ran[phase] = seeds
            write(final=False)
            print(f"phase {phase} done", flush=True)
        trained.update(
            zip(
                args.train_seeds,
                pool.map(lambda s: run_training_seed(base, s, args.workdir), args.train_seeds),
                strict=True,
            )
        )
    done.append("training seeds")
    write(final=True)


if __name__ == "__main__":
    main()
