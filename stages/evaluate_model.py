"""Evaluate one model file on target-val, training nothing (a command, not a DVC stage).

    python -m stages.evaluate_model --model FILE [--params params.yaml] [--device cpu]
        [--out runs/evaluate_model/<file name>]
    make evaluate-model MODEL=FILE [PARAMS=profiles/gta5_cityscapes.yaml] [DEVICE=cpu]

FILE is a released AdvEnt / IntraDA DeepLab-v2 state dict (built with the params' model
section: deeplabv2, weights_format deeplab) or a model file this pipeline wrote (it
carries its architecture). From the params file it reads `data` (the class set, the
target's labelled val set in its layout, the input size, `verify`), `model`,
`evaluate.batch_size` and `compute`; the source dataset need not be on disk. Target-val
is indexed and validated in place, as index_data does, then scored as the evaluate
stage scores: `metrics.json` (mIoU, per-class IoU, the file's sha256) and
`confusion.csv` under `--out`.
"""

import argparse
import dataclasses
from pathlib import Path

from intrada.cli import run_stage
from intrada.compute import setup
from intrada.config import (
    NO_FILE,
    ParamsError,
    class_set_of,
    get,
    get_target_data,
    label_encodings,
    read_params,
)
from intrada.data import SegmentationSet
from intrada.evaluate_model import evaluate_model_file, write_evaluation
from intrada.layouts import check_pairs, index_target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="the model file")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument(
        "--device", choices=("auto", "cpu", "cuda"), help="instead of compute.device"
    )
    parser.add_argument("--out", type=Path, help="default: runs/evaluate_model/<file name>")
    args = parser.parse_args()
    raw = read_params(args.params)
    data, model_params = get_target_data(raw), get(raw, "model")
    batch_size = get(raw, "evaluate").batch_size
    compute_params = dataclasses.replace(get(raw, "compute"), nproc=1)
    if args.device:
        compute_params = dataclasses.replace(compute_params, device=args.device)
    compute = setup(compute_params)
    if not data.has_target_val:
        raise ParamsError(
            f"{args.params}: data.target_val_labels = {NO_FILE!r}: expected a labelled "
            "target-val to evaluate on"
        )
    classes = class_set_of(data)
    val = index_target(data, "val", label_encodings(data)[1])
    check_pairs(val, data.verify == "decode", workers=compute.num_workers, classes=classes)
    dataset = SegmentationSet(
        val, classes, Path("."), labelled=True, size=data.target_size, resize_labels=False
    )
    report, cm = evaluate_model_file(
        args.model,
        model_params,
        classes,
        dataset,
        batch_size,
        subsets=classes.subsets,
        compute=compute,
    )
    out = args.out or Path("runs/evaluate_model") / args.model.name
    write_evaluation(out, report, cm, classes)
    extra = "".join(f", {k} {v}" for k, v in report.items() if k.startswith("mIoU_"))
    print(
        f"{args.model}: mIoU {report['mIoU']}{extra} over {report['images']} target-val "
        f"images, {len(classes)} classes ({report['model']['stage']}); wrote {out}"
    )


if __name__ == "__main__":
    run_stage(main)
