"""Stage evaluate: per-class IoU and mIoU on target-val of the models given (the
source-only, inter and intra models; in a later intra round, the model it ranked with
and the one it trained), their confusion matrices, image panels, and the ranking
diagnostics (against target-train's held-back ground truth). A target without a labelled val set
or without target-train labels gets a metrics file that says which numbers it lacks."""

import argparse
import logging
from pathlib import Path

from intrada.checkpoint import load_model
from intrada.cli import run_stage
from intrada.compute import processes
from intrada.config import class_set_of, get, read_params
from intrada.data import SegmentationSet, load_index
from intrada.diagnostics import DIAGNOSTICS, split_report
from intrada.errors import IntradaError
from intrada.evaluation import write_report
from intrada.io import read_parquet

NO_VAL = "no labelled target-val (data.target_val_images, data.target_val_labels)"
NO_TRAIN_LABELS = "target-train has no labels (data.target_train_labels)"

log = logging.getLogger("evaluate")


def model_paths(pairs: list[str]) -> dict[str, Path]:
    """`NAME=PATH` arguments as {name: path}, in their order."""
    paths = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path or name in paths:
            raise IntradaError(f"--model {pair}: expected NAME=PATH with a new name")
        paths[name] = Path(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="NAME=PATH",
        help="a model file and its name in the metrics (repeat; in the panels' order)",
    )
    parser.add_argument("--val", type=Path, required=True, help="labelled index table")
    parser.add_argument(
        "--target-train-gt", type=Path, required=True, help="target-train ground-truth index"
    )
    parser.add_argument("--easy", type=Path, required=True, help="easy split table")
    parser.add_argument("--hard", type=Path, required=True, help="hard split table")
    parser.add_argument("--pseudo-labels", type=Path, required=True, help="pseudo-label index")
    parser.add_argument("--metrics", type=Path, required=True, help="JSON file")
    parser.add_argument("--confusion-dir", type=Path, required=True)
    parser.add_argument("--iou-dir", type=Path, required=True)
    parser.add_argument("--panels-dir", type=Path, required=True)
    args = parser.parse_args()
    paths = model_paths(args.model)
    raw = read_params()
    data, cfg = get(raw, "data"), get(raw, "evaluate")
    classes = class_set_of(data)
    val = read_parquet(args.val)
    truth = read_parquet(args.target_train_gt, ("image_id", "label_path", "label_encoding"))
    not_available = {}
    if val.empty:
        not_available["mIoU"] = f"{NO_VAL}: no mIoU, per-class IoU, confusion or val panels"
    if truth.empty:
        not_available["diagnostics"] = f"{NO_TRAIN_LABELS}: no ranking diagnostics"
    if not_available:
        log.info("not available: %s", "; ".join(not_available.values()))
    # Predictions are upsampled to each label's own resolution (Cityscapes: 2048x1024).
    dataset = None
    if not val.empty:
        dataset = SegmentationSet(
            load_index(args.val, labelled=True),
            classes,
            Path("."),
            labelled=True,
            size=data.target_size,
            resize_labels=False,
        )
    split_columns = ("image_id", "score", "prediction_path")
    easy = read_parquet(args.easy, split_columns)
    hard = read_parquet(args.hard, split_columns)
    pseudo = read_parquet(args.pseudo_labels, ("image_id", "label_path"))
    # With compute.nproc > 1, torchrun processes evaluate a share of the images each.
    with processes(get(raw, "compute"), __spec__.name) as compute:
        if truth.empty:
            diagnostics = dict.fromkeys(DIAGNOSTICS)
        else:
            diagnostics = split_report(easy, hard, truth, pseudo, classes, compute=compute)
        loaded = {name: load_model(path, classes) for name, path in paths.items()}
        models = {name: compute.module(model) for name, (model, _) in loaded.items()}
        report = write_report(
            models,
            dataset,
            classes,
            cfg.batch_size,
            cfg.num_panels,
            args.metrics,
            args.confusion_dir,
            args.iou_dir,
            args.panels_dir,
            diagnostics,
            subsets=classes.subsets,
            compute=compute,
            validations={name: meta.get("validation") for name, (_, meta) in loaded.items()},
            not_available=not_available,
        )
    if not compute.main:
        return
    for name in paths:
        extra = " ".join(
            f"{k} {v}" for k, v in report[name].items() if k.startswith(("mIoU_", "best_val_"))
        )
        print(f"{name:12s} mIoU {report[name]['mIoU']} {extra}".rstrip())
    for key, value in diagnostics.items():
        print(f"{key:24s} {value}")


if __name__ == "__main__":
    run_stage(main)
