"""Stage rank_splits: sort target-train by entropy score; the first `lambda` fraction is
the easy split, the rest the hard split."""

import argparse
from pathlib import Path

from intrada.cli import run_stage
from intrada.config import get, read_params
from intrada.io import read_parquet, write_parquet
from intrada.ranking import rank_splits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scores", type=Path, required=True)
    parser.add_argument("--easy", type=Path, required=True)
    parser.add_argument("--hard", type=Path, required=True)
    args = parser.parse_args()
    lam = get(read_params(), "lambda")
    scores = read_parquet(args.scores, ("image_id", "image_path", "entropy", "score"))
    easy, hard = rank_splits(scores, lam)
    write_parquet(args.easy, easy)
    write_parquet(args.hard, hard)


if __name__ == "__main__":
    run_stage(main)
