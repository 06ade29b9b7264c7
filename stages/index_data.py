"""Stage index_data: index the source and target dataset trees in place (nothing is
copied) into the tables every later stage reads, after a validation pass that stops on
a missing root, a wrong layout, an image without its label (or a label without its
image), a label of another size (or handles it by data.size_mismatch), a label value
outside its encoding or absent from the class table, or an unreadable file.
compute.num_workers processes read the files."""

import argparse
import logging
from pathlib import Path

from intrada.cli import run_stage
from intrada.config import class_set_of, get, label_encodings, read_params
from intrada.io import atomic_path, write_parquet
from intrada.layouts import LABELLED, check_images, check_pairs, index_source, index_target

log = logging.getLogger("index_data")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the index tables")
    args = parser.parse_args()
    raw = read_params()
    data = get(raw, "data")
    decode = data.verify == "decode"
    workers = get(raw, "compute").num_workers
    classes = class_set_of(data)
    source_encoding, target_encoding = label_encodings(data)
    # Index everything first (cheap), so a wrong root fails before the slower pass.
    source = index_source(data.name, data.source_root, source_encoding)
    target_train = index_target(data, "train", target_encoding)
    target_val = index_target(data, "val", target_encoding)
    checked, mismatched = check_pairs(source, decode, data.size_mismatch, workers, classes)
    outcome = {"drop": "left out", "resize": "kept, image and label resized independently"}
    log.info(
        "%d source pairs whose label size differs from the image (data.size_mismatch: %s)%s",
        mismatched,
        data.size_mismatch,
        f": {outcome[data.size_mismatch]}" if mismatched else "",
    )
    # Target labels are never resized against their images: any mismatch stops.
    if "label_path" in target_train:
        check_pairs(target_train, decode, workers=workers, classes=classes)
    else:
        check_images(target_train, decode, workers=workers)
        target_train = target_train.assign(label_path=None, label_encoding=None)
    check_pairs(target_val, decode, workers=workers, classes=classes)
    with atomic_path(args.out) as out:
        out.mkdir()
        write_parquet(out / "source.parquet", checked[LABELLED])
        # Training reads target-train's images only; its labels serve the diagnostics.
        write_parquet(out / "target_train.parquet", target_train[["image_id", "image_path"]])
        truth = target_train[target_train["label_path"].notna()]
        write_parquet(
            out / "target_train_gt.parquet", truth[["image_id", "label_path", "label_encoding"]]
        )
        write_parquet(out / "target_val.parquet", target_val[LABELLED])
    log.info(
        "%d source, %d target-train (%s), %d target-val images",
        len(checked),
        len(target_train),
        "labelled" if len(truth) else "no labels",
        len(target_val),
    )


if __name__ == "__main__":
    run_stage(main)
