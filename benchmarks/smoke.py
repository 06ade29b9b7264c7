"""Smoke run of a real-dataset profile at the datasets' true sizes, through `dvc repro`.

    make smoke PROFILE=gta5_cityscapes        # or synthia_cityscapes
    python -m benchmarks.smoke --profile gta5_cityscapes [--tiny] [--workdir DIR] [--keep]
        [--out runs/smoke/<profile>]

In a temporary folder outside the workspace it writes:

- dataset trees in the real layouts at the true sizes: GTA5 1914x1052 (`images/`,
  `labels/` of Cityscapes label ids; one label of another size than its image, as a few
  GTA5 pairs are, which the profile's `size_mismatch: resize` keeps) or
  SYNTHIA-RAND-CITYSCAPES 1280x760 (`RGB/`, 16-bit `GT/LABELS/`), and Cityscapes
  2048x1024 (`leftImg8bit/`, `gtFine/*_labelIds.png`): 3 source, 3 target-train and 2
  target-val images, street scenes drawn by the embedded benchmark's renderer;
- a randomly initialised ImageNet ResNet-101 file in the DeepLab (Caffe-converted,
  `Scale.` prefix) layout, conditioned so that activations and losses stay moderate
  (`random_imagenet_file`);
- a throw-away copy of the project (`intrada.dag.copy_pipeline`), committed to a fresh
  git repository (dvclive needs a commit), whose params.yaml is the profile with only
  these changed: the dataset roots and weights file, 2 iterations per training stage,
  validation and a checkpoint at iteration 2, a loss logged every iteration, no
  DataLoader workers (so that a stage's peak memory is its own process's) and
  `compute.device: cpu` (the profiles insist on `cuda`).

Then it runs every stage through DVC, one at a time in DAG order (`dvc repro
--single-item <stage>`, each measured as a child process: wall time and peak RSS from
`os.wait4`, which reports the largest process of the tree, here the stage's Python
process rather than DVC's ~0.2 GB), then a whole `dvc repro`, which must find nothing
left to run. It prints, and writes to `<out>/smoke.md` and `smoke.json`:

1. seconds and peak RSS per stage, and the training losses (all must be finite);
2. bytes per target image of each artifact and the size of each model and checkpoint
   file, projected to the full datasets (24,966 GTA5 or 9,400 SYNTHIA images, 2,975
   Cityscapes train and 500 val);
3. the costs that do not depend on the accelerator, measured on the fixture files and
   projected: the validation pass of `index_data` (per 1,000 pairs, 1 and 2
   processes), reading and resizing the training images per iteration, the validation
   passes during training, and the writes of `score_entropy` and `pseudo_labels`.

`--tiny` divides every size by 16 (the test suite runs it so: GTA5 120x66 files read at
80x45, Cityscapes 128x64 read at 64x32); the rest is the same code path. The exit status
is 1 when a stage fails, a loss is not finite or the final `dvc repro` has work left.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch
import yaml
from torch import nn

from intrada.artifacts import (
    EntropyShards,
    LabelShards,
    read_label_member,
    read_map_member,
    read_member,
)
from intrada.classes import (
    SYNTHIA_ID_TO_CLASS,
    dataset_classes,
    train_id_to_label_id,
)
from intrada.config import CITYSCAPES_TARGET
from intrada.dag import copy_pipeline, resolved_stages
from intrada.data import SegmentationSet, resize_image
from intrada.io import image_checked, read_label, read_rgb, write_label_png, write_rgb_png
from intrada.layouts import check_pairs, index_cityscapes, index_source
from intrada.models.deeplabv2 import DEEPLAB_PREFIX, DeepLabV2
from intrada.synthetic import generate_image

REPO = Path(__file__).resolve().parents[1]
PROFILES = tuple(sorted(p.stem for p in (REPO / "profiles").glob("*.yaml")))
TRAINING = ("source_only", "inter", "intra")
# (source layout folder, file size (width, height), images in the full dataset)
SOURCES = {
    "gta5": ("GTA5", (1914, 1052), 24966),
    "synthia": ("SYNTHIA", (1280, 760), 9400),
    "synscapes": ("Synscapes", (1440, 720), 25000),
}
CITYSCAPES_SIZE = (2048, 1024)
CITYSCAPES_TRAIN, CITYSCAPES_VAL = 2975, 500
COUNTS = {"source": 3, "target_train": 3, "target_val": 2}
TINY = 16  # --tiny divides every size by this
ITERATIONS = 2
# Each residual branch's last BatchNorm gain in the random network, as `benchmarks.
# gpu_check` conditions it: with unit gains a random ResNet-101 is chaotic.
RESIDUAL_GAIN = 0.2
GIB = 1024**3


def scaled(size: tuple[int, int] | list[int], factor: int) -> tuple[int, int]:
    return tuple(max(16, round(s / factor)) for s in size)


# --- fixtures -------------------------------------------------------------------------


def synthia_ids() -> np.ndarray:
    """A 256-entry table: train id -> SYNTHIA class id (0, void, for the rest)."""
    names = {name: synthia_id for synthia_id, name in SYNTHIA_ID_TO_CLASS.items()}
    classes = dataset_classes("gta5")
    lut = np.zeros(256, np.uint16)
    for name, train_id in zip(classes.names, classes.train_ids, strict=True):
        lut[train_id] = names.get(name, 0)
    return lut


def write_synthia_label(path: Path, ids: np.ndarray) -> None:
    """SYNTHIA's 16-bit 3-channel label PNG: class ids in the first channel."""
    path.parent.mkdir(parents=True, exist_ok=True)
    instance = np.ones_like(ids, dtype=np.uint16)
    rgb16 = np.stack([ids.astype(np.uint16), instance, np.zeros_like(instance)], axis=-1)
    cv2.imwrite(str(path), rgb16[:, :, ::-1])  # OpenCV writes BGR order


def write_datasets(root: Path, dataset: str, factor: int) -> tuple[Path, Path]:
    """The source tree (GTA5, SYNTHIA or Synscapes layout) and the Cityscapes tree under
    `root`."""
    folder, size, _ = SOURCES[dataset]
    width, height = scaled(size, factor)
    source = root / folder
    to_label_id = train_id_to_label_id()
    for i in range(COUNTS["source"]):
        image, label, _ = generate_image(0, "source", i, height, width)
        name = f"{i:05d}.png" if dataset == "gta5" else f"{i:07d}.png"
        if dataset == "gta5":
            (source / "images").mkdir(parents=True, exist_ok=True)
            (source / "labels").mkdir(parents=True, exist_ok=True)
            write_rgb_png(source / "images" / name, image)
            label_ids = to_label_id[label]
            if i == COUNTS["source"] - 1:  # as some GTA5 pairs: a label of another size
                label_ids = cv2.resize(
                    label_ids, (width, height - 7), interpolation=cv2.INTER_NEAREST
                )
            write_label_png(source / "labels" / name, label_ids)
        elif dataset == "synscapes":  # img/rgb/<n>.png, img/class/<n>.png, n from 1
            (source / "img" / "rgb").mkdir(parents=True, exist_ok=True)
            (source / "img" / "class").mkdir(parents=True, exist_ok=True)
            write_rgb_png(source / "img" / "rgb" / f"{i + 1}.png", image)
            write_label_png(source / "img" / "class" / f"{i + 1}.png", to_label_id[label])
        else:
            (source / "RGB").mkdir(parents=True, exist_ok=True)
            write_rgb_png(source / "RGB" / name, image)
            write_synthia_label(source / "GT" / "LABELS" / name, synthia_ids()[label])
    target = root / "cityscapes"
    width, height = scaled(CITYSCAPES_SIZE, factor)
    cities = {"train": "aachen", "val": "frankfurt"}
    for set_name, split in (("target_train", "train"), ("target_val", "val")):
        city = cities[split]
        for i in range(COUNTS[set_name]):
            image, label, _ = generate_image(0, set_name, i, height, width)
            stem = f"{city}_{i:06d}_000019"
            images = target / "leftImg8bit" / split / city
            labels = target / "gtFine" / split / city
            images.mkdir(parents=True, exist_ok=True)
            labels.mkdir(parents=True, exist_ok=True)
            write_rgb_png(images / f"{stem}_leftImg8bit.png", image)
            write_label_png(labels / f"{stem}_gtFine_labelIds.png", to_label_id[label])
    return source, target


def image_batch(paths: list[str], size: tuple[int, int]) -> torch.Tensor:
    """Images read and resized as training reads them, as one float batch in [0, 1]."""
    arrays = [resize_image(read_rgb(p), size) for p in paths]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0)


@torch.no_grad()
def condition(model: DeepLabV2, batches: list[torch.Tensor]) -> None:
    """Random weights made well-behaved: each residual branch's last BatchNorm gain set
    to RESIDUAL_GAIN, then every BatchNorm's running statistics estimated by a train-mode
    pass over `batches` (a cumulative average: each batch counts alike), so that an
    eval-mode forward (validation, scoring, evaluation) normalises as training does."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for block in model.backbone.modules():
        if hasattr(block, "bn3"):
            block.bn3.weight.fill_(RESIDUAL_GAIN)
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for batch in batches:
        model(batch)
    for m in norms:
        m.momentum = 0.1
    model.eval()


def random_imagenet_file(path: Path, batches: list[torch.Tensor], seed: int = 0) -> None:
    """A random ResNet-101 in the layout of `DeepLab_resnet_pretrained_imagenet.pth`:
    `Scale.`-prefixed backbone tensors without step counters, and its own 21-class
    classifier under `Scale.layer5` (ignored by the loader)."""
    torch.manual_seed(seed)
    model = DeepLabV2(19, weights_format="deeplab")
    condition(model, batches)
    state = {
        f"{DEEPLAB_PREFIX}{k}": v.clone()
        for k, v in model.backbone.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    generator = torch.Generator().manual_seed(seed)
    for i in range(4):
        weight = torch.randn(21, 2048, 3, 3, generator=generator) * 0.01
        state[f"{DEEPLAB_PREFIX}layer5.conv2d_list.{i}.weight"] = weight
        state[f"{DEEPLAB_PREFIX}layer5.conv2d_list.{i}.bias"] = torch.zeros(21)
    torch.save(state, path)


def smoke_params(profile: str, source: Path, target: Path, weights: Path, factor: int) -> dict:
    """The profile with only what must change to be short."""
    params = yaml.safe_load((REPO / "profiles" / f"{profile}.yaml").read_text())
    data = params["data"]
    data.update(source_root=str(source), target_root=str(target))
    for key, sub in CITYSCAPES_TARGET.items():  # the layout's folders under the new root
        data[key] = f"{target}/{sub}"
    data["source_size"] = list(scaled(data["source_size"], factor))
    data["target_size"] = list(scaled(data["target_size"], factor))
    params["model"]["pretrained"] = str(weights)
    for section in TRAINING:
        params[section].update(
            iterations=ITERATIONS, eval_every=ITERATIONS, checkpoint_every=ITERATIONS, log_every=1
        )
    params["compute"]["num_workers"] = 0
    # The profiles insist on CUDA (compute.device: cuda); the smoke run measures the CPU.
    params["compute"]["device"] = "cpu"
    return params


def make_project(root: Path, params: dict) -> Path:
    copy_pipeline(REPO, root)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.name=smoke", "-c", "user.email=smoke@example.com"]
    for command in (["git", "init", "-q"], ["git", "add", "-A"], [*git, "commit", "-qm", "smoke"]):
        subprocess.run(command, cwd=root, check=True, capture_output=True)
    return root


# --- running and measuring ------------------------------------------------------------


@dataclass
class Measured:
    command: str
    returncode: int
    seconds: float  # the command's wall time (DVC's start-up and hashing included)
    stage_seconds: float  # the stage process's own wall time (to within POLL_S)
    stage_peak_rss_bytes: int  # its peak RSS (VmHWM); with several, the largest


POLL_S = 0.05


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def stage_memory(pid: int) -> int | None:
    """Peak RSS (VmHWM, bytes) of a `python -m stages.<name>` process; None otherwise.
    VmHWM belongs to the process's own address space, so unlike `ru_maxrss` it does not
    inherit the parent's memory at fork (DVC's, or this driver's)."""
    try:
        if b"stages." not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return None
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def run_measured(command: list[str], cwd: Path, log: Path) -> Measured:
    """Run `command` as a child, watching the stage processes below it every POLL_S:
    their peak RSS (VmHWM, which only grows: the last reading misses at most the last
    POLL_S) and how long they lived."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    peak: dict[int, int] = {}
    first: dict[int, float] = {}
    last: dict[int, float] = {}
    start = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        while process.poll() is None:
            now = time.perf_counter()
            for pid in descendants(process.pid):
                rss = stage_memory(pid)
                if rss is not None:
                    peak[pid] = max(rss, peak.get(pid, 0))
                    first.setdefault(pid, now)
                    last[pid] = now
            time.sleep(POLL_S)
    seconds = time.perf_counter() - start
    lived = [last[p] - first[p] for p in first]
    return Measured(
        command=" ".join(command),
        returncode=process.returncode,
        seconds=seconds,
        stage_seconds=max(lived, default=0.0),
        stage_peak_rss_bytes=max(peak.values(), default=0),
    )


def run_stages(project: Path, logs: Path) -> dict[str, Measured]:
    """Every stage through `dvc repro --single-item`, in dvc.yaml's (topological) order;
    stops at the first failure."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    measured = {}
    for name in resolved_stages(project / "dvc.yaml", params):
        print(f"  {name} ...", end="", flush=True)
        result = run_measured(
            ["dvc", "repro", "--single-item", name], project, logs / f"{name}.log"
        )
        measured[name] = result
        print(
            f" {result.stage_seconds:.1f} s in the stage ({result.seconds:.1f} s with DVC), "
            f"{result.stage_peak_rss_bytes / GIB:.2f} GiB",
            flush=True,
        )
        if result.returncode != 0:
            break
    return measured


def logged_losses(project: Path) -> dict[str, dict[str, list[float]]]:
    """Every training loss dvclive logged, per stage, in iteration order."""
    losses: dict[str, dict[str, list[float]]] = {}
    for stage in TRAINING:
        folder = project / "dvclive" / stage / "plots/metrics/train"
        for tsv in sorted(folder.glob("*.tsv")):
            if tsv.stem != "lr":
                table = pd.read_csv(tsv, sep="\t")
                losses.setdefault(stage, {})[tsv.stem] = table[tsv.stem].astype(float).tolist()
    return losses


# --- artifacts ------------------------------------------------------------------------


def artifact_sizes(project: Path) -> dict[str, dict[str, float]]:
    """Bytes per image of each per-image artifact and per file of the models.

    Entropy maps, predictions and pseudo-labels live in shards (`intrada.artifacts`):
    per image counts the shard files' bytes over the images they hold (the zip's own
    overhead included), and `member_bytes` the image's PNG as the reader API returns it.
    """
    scores = pd.read_parquet(project / "data/entropy/scores.parquet")
    pseudo = pd.read_parquet(project / "data/pseudo_labels/index.parquet")
    sizes = {}
    for name, table, kind in (
        ("entropy maps", scores, "map"),
        ("predictions", scores, "prediction"),
        ("pseudo-labels", pseudo, "label"),
    ):
        shards = {project / p for p in table[f"{kind}_path"]}
        members = [
            len(read_member(project / path, member))
            for path, member in zip(table[f"{kind}_path"], table[f"{kind}_member"], strict=True)
        ]
        sizes[name] = {
            "files": len(table),
            "bytes_per_file": sum(f.stat().st_size for f in shards) / len(table),
            "member_bytes": float(np.mean(members)),
        }

    def per_file(pattern: str) -> dict[str, float]:
        files = sorted(project.glob(pattern))
        sizes = [f.stat().st_size for f in files]
        return {"files": len(files), "bytes_per_file": float(np.mean(sizes)) if sizes else 0.0}

    sizes["model file"] = per_file("models/*/model.pt")
    sizes["training checkpoint"] = per_file("checkpoints/*/last.pt")
    sizes["evaluation panel"] = per_file("plots/panels/*.png")
    return sizes


def disk_projection(sizes: dict, lam: float) -> list[tuple[str, int, float]]:
    """(artifact, files at full scale, bytes) for the full datasets."""
    easy = int(CITYSCAPES_TRAIN * lam)
    counts = {
        "entropy maps": CITYSCAPES_TRAIN,
        "predictions": CITYSCAPES_TRAIN,
        "pseudo-labels": easy,
        "model file": len(TRAINING),
        "training checkpoint": len(TRAINING),
    }
    return [(name, n, n * sizes[name]["bytes_per_file"]) for name, n in counts.items()]


# --- costs that do not depend on the accelerator --------------------------------------


def seconds_per_call(fn: Callable[[], Any], calls: int) -> float:
    fn()  # warm: imports, file cache
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def procs(workers: int) -> str:
    return "1 process" if workers <= 1 else f"{workers} processes"


def cpu_costs(project: Path, params: dict, full_source: int, repeat: int) -> dict[str, Any]:
    """Per-file costs measured on the fixture trees, in this process."""
    data = params["data"]
    source = index_source(data["name"], data["source_root"])
    val = index_cityscapes(data["target_root"], "val")
    train = index_cityscapes(data["target_root"], "train")
    files = {}
    for name, table in (("source", source), ("Cityscapes", val)):
        image, label, encoding = table.iloc[0][["image_path", "label_path", "label_encoding"]]
        files[f"{name} label: decode (always)"] = seconds_per_call(
            lambda label=label, encoding=encoding: read_label(label, encoding), 4 * repeat
        )
        files[f"{name} image: header and checksums (`header`)"] = seconds_per_call(
            lambda image=image: image_checked(image), 4 * repeat
        )
        files[f"{name} image: decode (`decode`)"] = seconds_per_call(
            lambda image=image: read_rgb(image), 4 * repeat
        )
    validation = {}
    for mode in ("header", "decode"):
        for workers in (0, 2):
            for name, table in (("source", source), ("cityscapes", val)):
                many = pd.concat([table] * repeat, ignore_index=True)

                def check(rows: pd.DataFrame, mode=mode, workers=workers) -> float:
                    start = time.perf_counter()
                    check_pairs(rows, mode == "decode", "resize", workers)
                    return time.perf_counter() - start

                check(many)  # warm: the file cache
                # Per pair, without the fixed cost (starting the processes).
                per_pair = (check(many) - check(many[:1])) / (len(many) - 1)
                validation[f"{name}, {mode}, {procs(workers)}"] = max(per_pair, 0.0)
    classes = dataset_classes(data["name"])
    root = Path(".")
    src_set = SegmentationSet(source, classes, root, True, size=tuple(data["source_size"]))
    trg_set = SegmentationSet(train, classes, root, False, size=tuple(data["target_size"]))
    val_set = SegmentationSet(
        val, classes, root, True, size=tuple(data["target_size"]), resize_labels=False
    )
    calls = max(2, repeat)
    read = {
        "source pair (decode, resize image and label)": seconds_per_call(
            lambda: src_set[(0, False)], calls
        ),
        "target image (decode, resize)": seconds_per_call(lambda: trg_set[(0, False)], calls),
        "val pair (decode, resize image; label at its size)": seconds_per_call(
            lambda: val_set[(0, False)], calls
        ),
    }
    # The pipeline's own per-image writes: an entropy map (reduced by
    # inference.map_downsample, quantised, PNG-encoded) and a label PNG into shards.
    scores = pd.read_parquet(project / "data/entropy/scores.parquet")
    first = scores.iloc[0]
    entropy = read_map_member(project / first["map_path"], first["map_member"])
    prediction = read_label_member(project / first["prediction_path"], first["prediction_member"])
    inference = params["inference"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        maps = EntropyShards(out / "maps", out, 1000, inference["map_downsample"])
        labels = LabelShards(out / "labels", out, 1000, "label")
        written = [0]

        def add(shards: EntropyShards, array: np.ndarray) -> None:
            written[0] += 1
            shards.add(written[0], f"image{written[0]}", array)

        writes = {
            f"entropy map (8-bit PNG at 1/{inference['map_downsample']} size, into a shard)": (
                seconds_per_call(lambda: add(maps, entropy), calls)
            ),
            "label PNG (prediction or pseudo-label, into a shard)": seconds_per_call(
                lambda: add(labels, prediction), calls
            ),
        }
        maps.close()
        labels.close()
    return {
        "file_s": files,
        "validation_s_per_pair": validation,
        "read_s": read,
        "write_s": writes,
        "full_source": full_source,
    }


def cost_projection(costs: dict, params: dict) -> list[tuple[str, str, float]]:
    """(what, at what scale, hours of CPU time) for the full datasets and the profile's
    iterations and validation interval."""
    v, r, w = costs["validation_s_per_pair"], costs["read_s"], costs["write_s"]
    cityscapes_pairs = CITYSCAPES_TRAIN + CITYSCAPES_VAL
    rows = []
    for mode in ("header", "decode"):
        for workers in (0, 2):
            seconds = (
                costs["full_source"] * v[f"source, {mode}, {procs(workers)}"]
                + cityscapes_pairs * v[f"cityscapes, {mode}, {procs(workers)}"]
            )
            rows.append(
                (
                    f"index_data validation pass, `verify: {mode}`, {procs(workers)} (wall hours)",
                    f"{costs['full_source']:,} source + {cityscapes_pairs:,} Cityscapes pairs",
                    seconds / 3600,
                )
            )
    src, trg = r["source pair (decode, resize image and label)"], r["target image (decode, resize)"]
    per_iteration = {"source_only": src, "inter": src + trg, "intra": 2 * trg}
    for stage in TRAINING:
        cfg = params[stage]
        rows.append(
            (
                f"{stage}: reading training images",
                f"{cfg['iterations']:,} iterations x batch {cfg['batch_size']}",
                per_iteration[stage] * cfg["iterations"] * cfg["batch_size"] / 3600,
            )
        )
    val = r["val pair (decode, resize image; label at its size)"]
    cfg = params["inter"]
    passes = cfg["iterations"] // cfg["eval_every"] if cfg["eval_every"] else 0
    rows.append(
        (
            "validation during one training stage: reading val pairs",
            f"{passes} passes x {CITYSCAPES_VAL} images",
            passes * CITYSCAPES_VAL * val / 3600,
        )
    )
    map_s, png_s = w.values()
    rows.append(
        (
            "score_entropy: writing maps and predictions",
            f"{CITYSCAPES_TRAIN:,} images",
            CITYSCAPES_TRAIN * (map_s + png_s) / 3600,
        )
    )
    rows.append(
        (
            "pseudo_labels: writing label PNGs",
            f"{int(CITYSCAPES_TRAIN * params['lambda']):,} images",
            int(CITYSCAPES_TRAIN * params["lambda"]) * png_s / 3600,
        )
    )
    return rows


# --- report ---------------------------------------------------------------------------


def fmt_bytes(n: float) -> str:
    for unit, size in (("GiB", GIB), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def report(result: dict) -> str:
    lines = [
        f"# Smoke run: {result['profile']}{' (tiny: sizes / 16)' if result['tiny'] else ''}",
        "",
        result["machine"],
        "",
        "| stage | stage process, s | with `dvc repro -s`, s | peak RSS of the stage |",
        "| --- | --- | --- | --- |",
    ]
    for name, m in result["stages"].items():
        lines.append(
            f"| {name} | {m['stage_seconds']:.1f} | {m['seconds']:.1f} | "
            f"{m['stage_peak_rss_bytes'] / GIB:.2f} GiB |"
        )
    lines += ["", "| stage | loss | iteration 1 | iteration 2 |", "| --- | --- | --- | --- |"]
    for stage, losses in result["losses"].items():
        for name, values in losses.items():
            cells = " | ".join(f"{v:.4g}" for v in values)
            lines.append(f"| {stage} | {name} | {cells} |")
    lines += [
        "",
        "| artifact | files | bytes per file | files at full scale | projected |",
        "| --- | --- | --- | --- | --- |",
    ]
    projected = {name: (n, b) for name, n, b in result["disk_projection"]}
    for name, size in result["artifacts"].items():
        n, b = projected.get(name, (None, None))
        lines.append(
            f"| {name} | {size['files']} | {fmt_bytes(size['bytes_per_file'])} | "
            f"{'' if n is None else f'{n:,}'} | {'' if b is None else fmt_bytes(b)} |"
        )
    total = sum(b for _, _, b in result["disk_projection"])
    lines.append(f"| total | | | | {fmt_bytes(total)} |")
    costs = result["cpu_costs"]
    lines += [
        "",
        "| cost per file or pair (this machine's CPU) | ms (= s per 1,000) |",
        "| --- | --- |",
    ]
    groups = {
        "file_s": "",
        "validation_s_per_pair": "`check_pairs` per pair: ",
        "read_s": "training reads: ",
        "write_s": "writing: ",
    }
    for group, prefix in groups.items():
        for name, seconds in costs[group].items():
            lines.append(f"| {prefix}{name} | {seconds * 1000:.1f} |")
    lines += [
        "",
        "| projected to the full datasets | scale | hours (one core unless said) |",
        "| --- | --- | --- |",
    ]
    for what, scale, hours in result["cost_projection"]:
        lines.append(f"| {what} | {scale} | {hours:.3g} |")
    return "\n".join(lines) + "\n"


# --- the run --------------------------------------------------------------------------


def run_smoke(profile: str, workdir: Path, tiny: bool = False) -> dict:
    """Build the fixtures and the project under `workdir`, run the DAG and measure.
    Raises RuntimeError when a stage fails, a loss is not finite or the final `dvc
    repro` has work left (the log of the failing stage in the message)."""
    factor = TINY if tiny else 1
    profile_params = yaml.safe_load((REPO / "profiles" / f"{profile}.yaml").read_text())
    dataset = profile_params["data"]["name"]
    started = time.perf_counter()
    print(f"fixtures under {workdir}", flush=True)
    source, target = write_datasets(workdir / "datasets", dataset, factor)
    weights = workdir / "DeepLab_resnet_pretrained_imagenet.pth"
    params = smoke_params(profile, source, target, weights, factor)
    data = params["data"]
    source_table = index_source(dataset, source)
    train_table = index_cityscapes(target, "train")
    batches = [
        image_batch(source_table["image_path"].tolist(), tuple(data["source_size"])),
        image_batch(train_table["image_path"].tolist(), tuple(data["target_size"])),
    ]
    random_imagenet_file(weights, batches)
    del batches
    project = make_project(workdir / "project", params)
    logs = workdir / "logs"
    logs.mkdir()
    print(f"fixtures and weights: {time.perf_counter() - started:.1f} s; stages:", flush=True)
    stages = run_stages(project, logs)
    failed = [name for name, m in stages.items() if m.returncode != 0]
    if failed:
        tail = (logs / f"{failed[0]}.log").read_text()[-4000:]
        raise RuntimeError(f"stage {failed[0]} failed:\n{tail}")
    final = run_measured(["dvc", "repro"], project, logs / "repro.log")
    final_log = (logs / "repro.log").read_text()
    if final.returncode != 0 or "Running stage" in final_log:
        raise RuntimeError(f"the final dvc repro had work left:\n{final_log}")
    losses = logged_losses(project)
    bad = [
        f"{stage}.{name}"
        for stage, values in losses.items()
        for name, series in values.items()
        if not np.all(np.isfinite(series))
    ]
    if bad or set(losses) != set(TRAINING):
        raise RuntimeError(f"losses not logged or not finite: {bad or losses}")
    sizes = artifact_sizes(project)
    full_source = SOURCES[dataset][2]
    with_cwd = Path.cwd()
    try:
        os.chdir(project)
        costs = cpu_costs(project, params, full_source, repeat=2 if tiny else 8)
    finally:
        os.chdir(with_cwd)
    machine = (
        f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads in this process; stages ran with "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), "
        f"CUDA {'yes' if torch.cuda.is_available() else 'no'}; "
        f"{time.perf_counter() - started:.0f} s in all"
    )
    full_params = yaml.safe_load((REPO / "profiles" / f"{profile}.yaml").read_text())
    return {
        "profile": profile,
        "tiny": tiny,
        "machine": machine,
        "project": str(project),
        "params": params,
        "stages": {name: asdict(m) for name, m in stages.items()},
        "final_repro_seconds": final.seconds,
        "losses": losses,
        "artifacts": sizes,
        "disk_projection": disk_projection(sizes, full_params["lambda"]),
        "cpu_costs": costs,
        "cost_projection": cost_projection(costs, full_params),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=PROFILES, required=True)
    parser.add_argument("--tiny", action="store_true", help="every size divided by 16")
    parser.add_argument("--workdir", type=Path, help="where to build (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--out", type=Path, help="report folder (default runs/smoke/<profile>)")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix=f"intrada-smoke-{args.profile}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    out = args.out or REPO / "runs" / "smoke" / (args.profile + ("_tiny" if args.tiny else ""))
    try:
        result = run_smoke(args.profile, workdir, args.tiny)
    except RuntimeError as exc:
        print(f"smoke run failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    text = report(result)
    out.mkdir(parents=True, exist_ok=True)
    (out / "smoke.md").write_text(text)
    (out / "smoke.json").write_text(json.dumps(result, indent=2) + "\n")
    print(text)
    print(f"wrote {out / 'smoke.md'} and smoke.json", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
