"""Speed of the pipeline's hot paths, as ratios measured in one run on this machine.

(a) training-step throughput of our AdvEnt step, as the pipeline runs it on this
    machine (the params' compute settings: NHWC on the CPU), against a straightforward
    re-implementation of the reference loop's structure (the discriminator step
    recomputes softmax and entropy of both domains from the network's outputs and runs
    source and target through each discriminator with separate backward passes; NCHW
    fp32, as the released code), on the same model and data; the median of the ratios
    of alternating timed blocks; goal >= 1.0x. The same step with the released code's
    memory format is reported beside it (the loop's structure alone). On a CPU with
    instructions beyond AVX2, (a) is measured again with PyTorch's AVX2 kernels
    (`ATEN_CPU_CAPABILITY=avx2`, and oneDNN's convolutions with `ONEDNN_MAX_CPU_ISA=AVX2`,
    in a child process), as on an AVX2-only CPU;
(b) entropy scoring (`score_images`: maps, predictions and scores table written)
    against bare forward passes over the same images; goal: overhead <= 15 %;
(c) ranking 1,000,000 scores into the two split files; goal < 2 s;
(d) a no-op `dvc repro` of a tiny copy of the project; goal < 5 s;
(e) a synthetic target of 100,000 small images scored into the layout of one file per
    image (before) and into shards: the scoring stage's seconds, DVC recording its
    outputs, bytes and files, `dvc status`, a no-op `dvc repro` and `dvc checkout` of
    deleted outputs; goals at 100,000 images: no-op `dvc repro` < 5 s, `dvc status`
    < 10 s.

    python -m benchmarks.speed [--params params.yaml] [--steps 20] [--step-rounds 7]
        [--images 256]
        [--scores 1000000] [--skip-dvc] [--scale-images 100000] [--scale-shard-size 1000]
        [--scale-model models/inter/model.pt]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import yaml

from benchmarks.machine import describe, instruction_set
from intrada.artifacts import EntropyShards, LabelShards
from intrada.checkpoint import model_meta, save_model
from intrada.classes import dataset_classes
from intrada.compute import CPU, Compute, setup
from intrada.config import get, read_params
from intrada.dag import copy_pipeline
from intrada.data import SegmentationSet, in_order, loader
from intrada.entropy import self_information
from intrada.inference import predict_probs, score_images
from intrada.io import write_parquet
from intrada.layouts import index_cityscapes
from intrada.losses import SOURCE_LABEL, TARGET_LABEL, adversarial_loss
from intrada.models import build_model
from intrada.ranking import rank_splits
from intrada.runs import arch_config
from intrada.synthetic import write_benchmark
from intrada.training import AdaptationStep, set_batchnorm

REPO = Path(__file__).resolve().parents[1]


class ReferenceStyleStep(AdaptationStep):
    """AdvEnt's reference loop structure: the discriminator step starts again from the
    network's detached outputs (softmax and entropy recomputed for both domains) and
    trains on each domain with its own backward pass."""

    def _forward(self, images):
        outputs = super()._forward(images)
        self._last_logits = outputs  # the target's logits are the last ones computed
        return outputs

    def _discriminator_step(self, pred_src_main, pred_src_aux, info_trg_main, info_trg_aux):
        discs = self.discs
        discs.requires_grad(True)
        discs.optimizer.zero_grad(set_to_none=True)
        pred_trg_aux, pred_trg_main = (p.detach() for p in self._last_logits)
        losses = {}
        for name, disc, pred_src, pred_trg in (
            ("main", discs.main, pred_src_main, pred_trg_main),
            ("aux", discs.aux, pred_src_aux, pred_trg_aux),
        ):
            loss_src = adversarial_loss(
                disc(self_information(F.softmax(pred_src, 1))), SOURCE_LABEL
            )
            (loss_src / 2).backward()
            loss_trg = adversarial_loss(
                disc(self_information(F.softmax(pred_trg, 1))), TARGET_LABEL
            )
            (loss_trg / 2).backward()
            losses[f"loss_d_{name}"] = (loss_src.item() + loss_trg.item()) / 2
        discs.optimizer.step()
        return losses


def make_step(step_class, raw: dict, compute: Compute = CPU):
    """An AdvEnt step of `step_class` on a fresh seeded model, and fixed random batches;
    the network and batches in `compute`'s memory format."""
    data, model_params = get(raw, "data"), get(raw, "model")
    cfg = dataclasses.replace(get(raw, "inter"), method="advent")
    classes = dataset_classes(data.name)
    torch.manual_seed(0)
    model = build_model(model_params.name, len(classes), **arch_config(model_params)).train()
    model = compute.module(model)
    set_batchnorm(model, cfg.batchnorm)
    width, height = data.target_size
    src = {
        "image": torch.rand(cfg.batch_size, 3, height, width),
        "label": torch.randint(0, len(classes), (cfg.batch_size, height, width)),
    }
    trg = {"image": torch.rand(cfg.batch_size, 3, height, width)}
    step = step_class(model, cfg, len(classes), compute)
    return lambda: step(src, trg)


def benchmark_step(raw: dict, steps: int, rounds: int = 7) -> str:
    """Median over `rounds` of the ratios of alternating blocks of `steps` steps each
    (the order flips every round, so that drift of the machine's speed hits both
    alike)."""
    pipeline = setup(get(raw, "compute"))  # what `dvc repro` runs with here
    runs = {
        "ours": make_step(AdaptationStep, raw, pipeline),
        "ours, NCHW": make_step(AdaptationStep, raw, CPU),
        "reference": make_step(ReferenceStyleStep, raw, CPU),
    }
    for run in runs.values():
        run(), run()  # warm-up
    seconds = {name: [] for name in runs}
    for r in range(rounds):
        for name in list(runs)[:: 1 if r % 2 == 0 else -1]:
            start = time.perf_counter()
            for _ in range(steps):
                runs[name]()
            seconds[name].append((time.perf_counter() - start) / steps)
    ms = {name: 1000 * float(np.median(v)) for name, v in seconds.items()}
    reference = np.array(seconds["reference"])
    ratio = float(np.median(reference / np.array(seconds["ours"])))
    same_format = float(np.median(reference / np.array(seconds["ours, NCHW"])))
    memory = "NHWC" if pipeline.channels_last else "NCHW"
    return (
        f"(a) [{instruction_set()}] training step (AdvEnt, batch {get(raw, 'inter').batch_size},"
        f" {torch.get_num_threads()} threads): ours {ms['ours']:.1f} ms ({memory}, as the "
        f"pipeline runs), reference-style {ms['reference']:.1f} ms (NCHW) -> {ratio:.2f}x "
        f"(goal >= 1.0x); ours in NCHW {ms['ours, NCHW']:.1f} ms -> {same_format:.2f}x"
    )


def benchmark_step_avx2(params: str, steps: int, rounds: int) -> str | None:
    """(a) again in a child process with PyTorch's AVX2 kernels, when this CPU has more
    (what an AVX2-only CPU runs); None when it has not. ATEN_CPU_CAPABILITY alone only
    lowers ATen's own kernels: the convolutions, most of a step, are oneDNN's, which
    pick their instructions themselves unless ONEDNN_MAX_CPU_ISA caps them."""
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "DEFAULT", "NO AVX"):
        return None
    code = (
        "import sys; from benchmarks.speed import benchmark_step; "
        "from intrada.config import read_params; "
        f"print(benchmark_step(read_params({params!r}), {steps}, {rounds}))"
    )
    env = {
        **os.environ,
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "PYTHONPATH": str(REPO),
    }
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO
    )
    if result.returncode != 0:
        return f"(a) [AVX2] failed: {result.stderr.strip().splitlines()[-1]}"
    return result.stdout.strip()


def synthetic_set(
    raw: dict, directory: Path, count: int, size: tuple[int, int]
) -> tuple[SegmentationSet, pd.DataFrame]:
    """`count` target-train images of the synthetic benchmark written to `directory`,
    read at `size`."""
    synthetic = dataclasses.replace(
        get(raw, "generate").synthetic, num_source=1, num_target_train=count, num_target_val=1
    )
    write_benchmark(0, synthetic, directory / "synthetic")
    table = index_cityscapes(directory / "synthetic/target", "train")[["image_id", "image_path"]]
    classes = dataset_classes("synthetic")
    return SegmentationSet(table, classes, Path("."), labelled=False, size=size), table


def benchmark_inference(
    raw: dict, count: int, deeplab_size: tuple[int, int] | None = None, rounds: int = 5
) -> str:
    """The params' model at the params' size, or DeepLab-v2 (random weights) at
    `deeplab_size`: the per-image file costs are the same, the forward far heavier.
    Median over `rounds` alternating rounds of each."""
    cfg = get(raw, "inference")
    classes = dataset_classes("synthetic")
    torch.manual_seed(0)
    if deeplab_size is None:
        model_params, size = get(raw, "model"), get(raw, "data").target_size
        model = build_model(model_params.name, len(classes), **arch_config(model_params))
        label = f"{model_params.name} model at {size[0]}x{size[1]}"
    else:
        model, size = (
            build_model("deeplabv2", len(classes), weights_format="torchvision"),
            deeplab_size,
        )
        label = f"DeepLab-v2 ResNet-101 at {size[0]}x{size[1]}"
    model.eval()
    batch_size = cfg.batch_size if deeplab_size is None else 4
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        dataset, table = synthetic_set(raw, tmp, count, size)

        def bare() -> None:
            for batch in loader(dataset, in_order(len(dataset), batch_size)):
                images = batch["image"]
                predict_probs(model, images, tuple(images.shape[-2:]))

        def scored() -> None:
            out = tmp / f"out_{time.perf_counter_ns()}"
            score_images(
                model,
                dataset,
                table,
                classes,
                batch_size,
                EntropyShards(out / "maps", out / "maps", cfg.shard_size),
                LabelShards(out / "preds", out / "preds", cfg.shard_size, "prediction"),
                rare_classes=cfg.rare_classes,
            )

        bare()  # warm-up: file cache, first-call allocations
        # Alternating rounds, so that the machine's drift (other jobs) hits both alike;
        # the overhead is the median of the rounds' ratios.
        timings = {"bare": [], "scored": []}
        for _ in range(rounds):
            for name, fn in (("bare", bare), ("scored", scored)):
                start = time.perf_counter()
                fn()
                timings[name].append(time.perf_counter() - start)
    base, full = (float(np.median(timings[n])) for n in ("bare", "scored"))
    ratio = float(np.median(np.array(timings["scored"]) / np.array(timings["bare"])))
    return (
        f"(b) [{instruction_set()}] inference, {label}, {count} images: bare forwards "
        f"{base:.2f} s, scoring "
        f"with maps, predictions and table {full:.2f} s -> overhead "
        f"{100 * (ratio - 1):.1f} % (goal <= 15 %)"
    )


def benchmark_ranking(count: int) -> str:
    rng = np.random.default_rng(0)
    ids = [f"img_{i:07d}" for i in range(count)]
    scores = pd.DataFrame(
        {
            "image_id": ids,
            "image_path": [f"data/{i}.png" for i in ids],
            "entropy": rng.random(count),
            "score": rng.random(count),
        }
    )
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        easy, hard = rank_splits(scores, 0.67)
        write_parquet(Path(tmp) / "easy.parquet", easy)
        write_parquet(Path(tmp) / "hard.parquet", hard)
        seconds = time.perf_counter() - start
    return f"(c) ranking {count:,} scores into split files: {seconds:.2f} s (goal < 2 s)"


def benchmark_noop_repro() -> str:
    """A tiny copy of the project, reproduced once, then `dvc repro` with nothing to do."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        copy_pipeline(REPO, root)
        params = yaml.safe_load((REPO / "params.yaml").read_text())
        params["generate"]["synthetic"].update(
            height=32, width=64, num_source=12, num_target_train=10, num_target_val=4
        )
        params["data"].update(source_size=[64, 32], target_size=[64, 32])
        params["model"]["width"] = 4
        for section in ("source_only", "inter", "intra"):
            params[section].update(iterations=3, batch_size=2)
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        # dvclive (inside the training stages) needs a repository with a commit.
        git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.com"]
        for command in (
            ["git", "init", "-q"],
            ["git", "add", "-A"],
            [*git, "commit", "-qm", "tiny project"],
            ["dvc", "repro", "-q"],
        ):
            subprocess.run(command, cwd=root, env=env, check=True, capture_output=True)
        start = time.perf_counter()
        result = subprocess.run(["dvc", "repro"], cwd=root, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        assert "Running stage" not in result.stdout, result.stdout
    return f"(d) no-op dvc repro: {seconds:.2f} s (goal < 5 s)"


SCALE_SIZE = (64, 32)  # (width, height) of the images of (e): small, so scoring is quick
SCALE_DISTINCT = 64  # distinct images of (e); the others are hard links to them


def scale_images(raw: dict, folder: Path, count: int) -> pd.DataFrame:
    """`count` target images in `folder` (a few distinct synthetic ones, hard-linked
    over and over: cheap to make, each a file of its own to read and hash), indexed."""
    distinct = min(count, SCALE_DISTINCT)
    synthetic = dataclasses.replace(
        get(raw, "generate").synthetic,
        width=SCALE_SIZE[0],
        height=SCALE_SIZE[1],
        num_source=1,
        num_target_train=distinct,
        num_target_val=1,
    )
    write_benchmark(0, synthetic, folder.parent / "synthetic")
    sources = index_cityscapes(folder.parent / "synthetic/target", "train")["image_path"]
    folder.mkdir(parents=True)
    ids = [f"img_{i:07d}" for i in range(count)]
    for i, image_id in enumerate(ids):
        os.link(sources.iloc[i % distinct], folder / f"{image_id}.png")
    return pd.DataFrame(
        {"image_id": ids, "image_path": [(folder / f"{i}.png").as_posix() for i in ids]}
    )


def scale_model(raw: dict, path: Path, model_path: Path | None) -> str:
    """The inter model at `model_path` (its maps compress as trained maps do) copied to
    `path`, or a seeded untrained one when there is none."""
    if model_path is not None and model_path.is_file():
        shutil.copy(model_path, path)
        return f"inter model {model_path}"
    model_params, classes = get(raw, "model"), dataset_classes(get(raw, "data").name)
    torch.manual_seed(0)
    model = build_model(model_params.name, len(classes), **arch_config(model_params))
    meta = model_meta(
        arch=model_params.name,
        arch_config=arch_config(model_params),
        classes=classes,
        stage="inter",
        params={},
        init_from=None,
    )
    save_model(path, model, meta)
    return "untrained model (no inter model found)"


def files_and_bytes(paths: list[Path]) -> tuple[int, int, int]:
    """Files, bytes in them, and bytes the file system allocates for them."""
    files = [f for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file()]
    stats = [f.stat() for f in files]
    return len(files), sum(s.st_size for s in stats), sum(s.st_blocks * 512 for s in stats)


def measure_layout(
    root: Path, layout: str, table: pd.DataFrame, raw: dict, model: Path, shard_size: int
) -> dict[str, float]:
    """A one-stage DVC project scoring `table` into `layout`; seconds of each step."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(REPO),
    }
    for name in (".dvc/config", ".dvc/.gitignore", ".dvcignore"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, root / name)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["target_size"] = list(SCALE_SIZE)
    params["inference"].update(shard_size=shard_size, map_downsample=1)
    params["compute"].update(nproc=1, num_workers=0)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    write_parquet(root / "target.parquet", table)
    shutil.copy(model, root / "model.pt")
    module = "stages.score_entropy" if layout == "shards" else "benchmarks.legacy_layout"
    outs = ["data/entropy/maps", "data/entropy/predictions", "data/entropy/scores.parquet"]
    command = (
        f"python -m {module} --model model.pt --target target.parquet --maps {outs[0]} "
        f"--predictions {outs[1]} --scores {outs[2]}"
    )
    stage = {
        "cmd": command,
        # As in the pipeline, the images are a dependency: both layouts hash them alike.
        "deps": ["model.pt", "target.parquet", Path(table["image_path"][0]).parent.as_posix()],
        "params": ["data.target_size", "inference"],
        "outs": outs,
    }
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"score_entropy": stage}}))

    def timed(*command: str) -> float:
        start = time.perf_counter()
        result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {result.stderr[-2000:]}")
        if command[:2] == ("dvc", "repro") and "Running stage" in result.stdout:
            raise RuntimeError(f"a no-op dvc repro ran the stage: {result.stdout[-2000:]}")
        return seconds

    git = ("git", "-c", "user.name=bench", "-c", "user.email=bench@example.com")
    timed("git", "init", "-q")
    timed("git", "add", "-A")
    timed(*git, "commit", "-qm", "project")
    result = {"scoring stage": timed(*shlex.split(command))}
    result["dvc commit (hash, cache)"] = timed("dvc", "commit", "-f", "-q", "score_entropy")
    files, size, allocated = files_and_bytes([root / p for p in outs])
    result |= {"files": files, "MB": size / 2**20, "MB allocated": allocated / 2**20}
    result["dvc status"] = timed("dvc", "status")
    result["no-op dvc repro"] = timed("dvc", "repro")
    for out in outs[:2]:
        shutil.rmtree(root / out)
    result["dvc checkout (outputs deleted)"] = timed("dvc", "checkout", "-q")
    if files_and_bytes([root / p for p in outs])[0] != files:
        raise RuntimeError("dvc checkout did not restore every output file")
    return result


def benchmark_scale(raw: dict, count: int, shard_size: int, model_path: Path | None) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        table = scale_images(raw, tmp / "images", count)
        model = tmp / "model.pt"
        model_name = scale_model(raw, model, model_path)
        results = {}
        for layout in ("one file per image", "shards"):
            (tmp / layout).mkdir()
            results[layout] = measure_layout(tmp / layout, layout, table, raw, model, shard_size)
    before, after = results.values()
    lines = [
        f"(e) {count:,} images of {SCALE_SIZE[0]}x{SCALE_SIZE[1]}, {model_name}: one file "
        f"per image (before) vs shards of {shard_size:,}"
    ]
    for key in before:
        unit = "" if key in ("files", "MB", "MB allocated") else " s"
        digits = 0 if key == "files" else 1 if key.startswith("MB") else 2
        line = f"(e)   {key}: {before[key]:,.{digits}f}{unit} vs {after[key]:,.{digits}f}{unit}"
        goal = {"dvc status": " (goal < 10 s)", "no-op dvc repro": " (goal < 5 s)"}
        lines.append(line + goal.get(key, ""))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per block")
    parser.add_argument("--step-rounds", type=int, default=7, help="alternating blocks of each")
    parser.add_argument("--images", type=int, default=256, help="images scored in (b)")
    parser.add_argument(
        "--deeplab-images", type=int, default=16, help="images scored with DeepLab-v2 (0: skip)"
    )
    parser.add_argument("--scores", type=int, default=1_000_000, help="scores ranked in (c)")
    parser.add_argument("--skip-dvc", action="store_true", help="leave out (d) and (e)")
    parser.add_argument("--scale-images", type=int, default=100_000, help="images of (e) (0: skip)")
    parser.add_argument("--scale-shard-size", type=int, default=1000, help="shard size of (e)")
    parser.add_argument(
        "--scale-model",
        type=Path,
        default=Path("models/inter/model.pt"),
        help="model scoring (e); an untrained one if the file is absent",
    )
    args = parser.parse_args()
    raw = read_params(args.params)
    print(describe(), flush=True)
    print(benchmark_step(raw, args.steps, args.step_rounds), flush=True)
    avx2 = benchmark_step_avx2(str(args.params), args.steps, args.step_rounds)
    if avx2 is not None:
        print(avx2, flush=True)
    print(benchmark_inference(raw, args.images), flush=True)
    if args.deeplab_images:
        print(benchmark_inference(raw, args.deeplab_images, deeplab_size=(256, 128)), flush=True)
    print(benchmark_ranking(args.scores), flush=True)
    if not args.skip_dvc:
        print(benchmark_noop_repro(), flush=True)
        if args.scale_images:
            for line in benchmark_scale(
                raw, args.scale_images, args.scale_shard_size, args.scale_model
            ):
                print(line, flush=True)


if __name__ == "__main__":
    main()
