"""Storage formats for entropy maps, measured on maps of the trained inter model: bytes
per image, write and read-one times, and the error against the float16 maps that the
pipeline stored before (one `.npy` per image).

Two sets of maps:
- the default benchmark's: the project's inter model on synthetic target images at
  128x64 (stride 4: the map is the softmax of logits upsampled 4x);
- Cityscapes-sized: the same model on synthetic target images drawn at 512x256, its
  logits (128x64) upsampled 8x to 1024x512 as DeepLab-v2's stride-8 logits are on
  Cityscapes. The small model never saw images this size, so its maps are noisier than
  a trained DeepLab's: the sizes are an upper estimate.

    python -m benchmarks.map_formats [--model models/inter/model.pt] [--images 64]
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

from intrada.artifacts import (
    ENTROPY_LEVELS,
    EntropyShards,
    ShardWriter,
    member_name,
    quantise_entropy,
    read_map_member,
    read_member,
    shard_name,
)
from intrada.checkpoint import load_model
from intrada.classes import dataset_classes
from intrada.config import get, read_params
from intrada.data import SegmentationSet, in_order, loader
from intrada.entropy import entropy_map
from intrada.inference import predict_probs
from intrada.layouts import index_cityscapes
from intrada.models import build_model, upsample
from intrada.runs import arch_config
from intrada.synthetic import write_benchmark


@torch.no_grad()
def maps_of(model, dataset: SegmentationSet, out_size: tuple[int, int] | None) -> np.ndarray:
    """(N, H, W) float32 entropy maps of `dataset`, at `out_size` (H, W) or input size."""
    maps = []
    for batch in loader(dataset, in_order(len(dataset), 8)):
        images = batch["image"]
        if out_size is None:
            prob = predict_probs(model, images, tuple(images.shape[-2:]))
        else:
            model.eval()
            _, main = model(images)
            prob = F.softmax(upsample(main.float(), out_size, model.align_corners), dim=1)
        maps.append(entropy_map(prob).numpy())
    return np.concatenate(maps)


def stride_map(entropy: np.ndarray, stride: int) -> np.ndarray:
    """A map averaged over stride x stride cells (float16) and upsampled back on read."""
    t = torch.from_numpy(entropy)[None, None]
    small = F.avg_pool2d(t, stride).half()
    return F.interpolate(small.float(), size=entropy.shape, mode="bilinear")[0, 0].numpy()


@dataclasses.dataclass
class Format:
    name: str
    write: Callable[[Path, np.ndarray], None]  # all maps into a folder
    read: Callable[[Path, int], np.ndarray]  # map i back, float32


def entropy_shards(downsample: int) -> Format:
    """The pipeline's own writer and reader (`intrada.artifacts`)."""

    def write(folder: Path, maps: np.ndarray) -> None:
        shards = EntropyShards(folder, folder, len(maps), downsample)
        for i, m in enumerate(maps):
            shards.add(i, str(i), m)
        shards.close()

    def read(folder: Path, i: int) -> np.ndarray:
        return read_map_member(folder / shard_name(0), member_name(str(i)))

    size = "full size" if downsample == 1 else f"1/{downsample} size, upsampled on read"
    return Format(f"zip of 8-bit PNGs, {size}", write, read)


def png_zip(level: int, bits: int) -> Format:
    """Other PNG settings, through the same zip shard."""
    peak = 2**bits - 1

    def write(folder: Path, maps: np.ndarray) -> None:
        with ShardWriter(folder, len(maps)) as writer:
            for i, m in enumerate(maps):
                q = np.rint(np.clip(m, 0, 1) * peak).astype(np.uint8 if bits == 8 else np.uint16)
                out = io.BytesIO()
                Image.fromarray(q).save(out, format="PNG", compress_level=level)
                writer.add(i, member_name(str(i)), out.getvalue())

    def read(folder: Path, i: int) -> np.ndarray:
        data = read_member(folder / shard_name(0), member_name(str(i)))
        return np.array(Image.open(io.BytesIO(data)), np.float32) / peak

    return Format(f"zip of {bits}-bit PNGs, zlib level {level}", write, read)


def npy_files() -> Format:
    def write(folder: Path, maps: np.ndarray) -> None:
        folder.mkdir()
        for i, m in enumerate(maps):
            np.save(folder / f"{i}.npy", m.astype(np.float16))

    return Format(
        "float16 .npy per image (before)", write, lambda f, i: read_map_member(f / f"{i}.npy")
    )


def npz_shard() -> Format:
    def write(folder: Path, maps: np.ndarray) -> None:
        folder.mkdir()
        np.savez_compressed(
            folder / "shard.npz", **{str(i): quantise_entropy(m) for i, m in enumerate(maps)}
        )

    def read(folder: Path, i: int) -> np.ndarray:
        with np.load(folder / "shard.npz") as z:
            return z[str(i)].astype(np.float32) / ENTROPY_LEVELS

    return Format("npz (deflated uint8 arrays)", write, read)


def array_shard() -> Format:
    def write(folder: Path, maps: np.ndarray) -> None:
        folder.mkdir()
        np.save(folder / "shard.npy", np.stack([quantise_entropy(m) for m in maps]))

    def read(folder: Path, i: int) -> np.ndarray:
        return np.load(folder / "shard.npy", mmap_mode="r")[i].astype(np.float32) / ENTROPY_LEVELS

    return Format("one uint8 array per shard (.npy, mmap)", write, read)


def stride_shard(stride: int) -> Format:
    shape: list[tuple[int, int]] = []

    def write(folder: Path, maps: np.ndarray) -> None:
        folder.mkdir()
        shape[:] = [maps.shape[1:]]
        t = torch.from_numpy(maps)[:, None]
        np.save(folder / "shard.npy", F.avg_pool2d(t, stride)[:, 0].half().numpy())

    def read(folder: Path, i: int) -> np.ndarray:
        small = torch.from_numpy(np.load(folder / "shard.npy", mmap_mode="r")[i].astype(np.float32))
        return F.interpolate(small[None, None], size=shape[0], mode="bilinear")[0, 0].numpy()

    return Format(
        f"float16 at stride {stride}, one array per shard, upsampled on read", write, read
    )


def measure(maps: np.ndarray, formats: list[Format]) -> pd.DataFrame:
    today = maps.astype(np.float16).astype(np.float32)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, fmt in enumerate(formats):
            folder = Path(tmp) / str(k)
            start = time.perf_counter()
            fmt.write(folder, maps)
            write_ms = (time.perf_counter() - start) * 1000 / len(maps)
            size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            reads, errors = [], []
            for i in range(len(maps)):
                start = time.perf_counter()
                back = fmt.read(folder, i)
                reads.append(time.perf_counter() - start)
                errors.append(np.abs(back - today[i]))
            errors = np.stack(errors)
            rows.append(
                {
                    "format": fmt.name,
                    "KB per image": round(size / len(maps) / 1024, 1),
                    "write ms/image": round(write_ms, 2),
                    "read one ms": round(float(np.median(reads)) * 1000, 2),
                    "max abs error": float(f"{errors.max():.2g}"),
                    "mean abs error": float(f"{errors.mean():.2g}"),
                }
            )
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--model", type=Path, default=Path("models/inter/model.pt"))
    parser.add_argument("--images", type=int, default=64, help="maps per set")
    args = parser.parse_args()
    raw = read_params(args.params)
    classes = dataset_classes(get(raw, "data").name)
    if args.model.is_file():
        model, _ = load_model(args.model, classes)
        print(f"maps of {args.model}")
    else:  # the sizes then say little: untrained maps are nearly uniform
        model_params = get(raw, "model")
        torch.manual_seed(0)
        model = build_model(model_params.name, len(classes), **arch_config(model_params))
        print(f"{args.model} not found: maps of an untrained model")
    formats = [
        npy_files(),
        entropy_shards(1),
        entropy_shards(2),
        png_zip(9, 8),
        png_zip(1, 16),
        npz_shard(),
        array_shard(),
        stride_shard(8),
    ]
    sets = {}
    with tempfile.TemporaryDirectory() as tmp:
        default = get(raw, "generate").synthetic
        for name, (width, height), out_size in (
            ("default benchmark", (default.width, default.height), None),
            ("Cityscapes-sized", (512, 256), (512, 1024)),
        ):
            synthetic = dataclasses.replace(
                default,
                width=width,
                height=height,
                num_source=1,
                num_target_train=args.images,
                num_target_val=1,
            )
            write_benchmark(0, synthetic, Path(tmp) / name)
            table = index_cityscapes(Path(tmp) / name / "target", "train")
            maps = maps_of(model, SegmentationSet(table, classes, Path("."), False), out_size)
            sets[f"{name}, {args.images} maps of {maps.shape[2]}x{maps.shape[1]}"] = maps
    pd.set_option("display.width", 200)
    print(f"{os.cpu_count()} CPU cores, torch {torch.__version__}")
    for name, maps in sets.items():
        print(f"\n{name} (entropy mean {maps.mean():.3f})")
        print(measure(maps, formats).to_string(index=False))


if __name__ == "__main__":
    main()
