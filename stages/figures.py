"""Stage figures: pictures of the ranking and the errors for `dvc plots show` and
`make report`: a gallery of the easiest and hardest target-train images, the score
histogram with the lambda cut, and the confusion matrices as heat-map tables. It only
draws from earlier stages' outputs, so a new gallery size re-runs nothing else."""

import argparse
import logging
from pathlib import Path

import pandas as pd

from intrada.cli import run_stage
from intrada.config import class_set_of, get, read_params
from intrada.errors import IntradaError
from intrada.figures import write_figures
from intrada.io import read_parquet

MODELS = ("source_only", "inter", "intra")
log = logging.getLogger("figures")
SPLIT_COLUMNS = ("image_id", "image_path", "score", "rank", "split", "map_path", "prediction_path")


def read_confusion(path: Path, names: tuple[str, ...]) -> pd.DataFrame:
    """A confusion matrix CSV of `evaluate`, checked against the class set in use."""
    if not path.is_file():
        raise IntradaError(f"{path}: file not found; expected a confusion matrix CSV")
    table = pd.read_csv(path, index_col=0)
    if list(table.index) != list(names) or list(table.columns) != list(names):
        raise IntradaError(
            f"{path}: classes {list(table.columns)}; expected {list(names)} (the class set "
            "of data.name / data.class_table)"
        )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--easy", type=Path, required=True, help="easy split table")
    parser.add_argument("--hard", type=Path, required=True, help="hard split table")
    parser.add_argument("--pseudo-labels", type=Path, required=True, help="pseudo-label index")
    parser.add_argument("--confusion", type=Path, required=True, help="evaluate's matrices")
    parser.add_argument("--gallery-dir", type=Path, required=True)
    parser.add_argument("--ranking-dir", type=Path, required=True)
    parser.add_argument("--heatmap-dir", type=Path, required=True)
    args = parser.parse_args()
    raw = read_params()
    data, cfg = get(raw, "data"), get(raw, "figures")
    classes = class_set_of(data)
    easy = read_parquet(args.easy, SPLIT_COLUMNS)
    hard = read_parquet(args.hard, SPLIT_COLUMNS)
    pseudo = read_parquet(args.pseudo_labels, ("image_id", "label_path"))
    confusion = {}
    if any(args.confusion.glob("*.csv")):
        confusion = {m: read_confusion(args.confusion / f"{m}.csv", classes.names) for m in MODELS}
    else:  # the target has no labelled val: evaluate wrote no matrices
        log.info("no confusion matrices (no labelled target-val): no heat-map tables")
    write_figures(
        easy,
        hard,
        pseudo,
        confusion,
        classes,
        gallery_k=cfg.gallery_k,
        tile_width=cfg.tile_width,
        score_bins=cfg.score_bins,
        gallery_dir=args.gallery_dir,
        ranking_dir=args.ranking_dir,
        confusion_dir=args.heatmap_dir,
    )


if __name__ == "__main__":
    run_stage(main)
