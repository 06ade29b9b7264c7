"""Entropy ranking: the easy / hard split of the target images."""

from __future__ import annotations

import numpy as np
import pandas as pd

from intrada.errors import IntradaError


def rank_splits(scores: pd.DataFrame, lam: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Sort by ascending `score` (ties broken by `image_id`, so the order is total) and
    call the first int(N * lam) images easy, the rest hard. At lam = 1 (self-training on
    every image) the hard table is empty, with the same columns.

    Both tables keep every input column and add `rank` (0 = lowest score) and `split`.
    """
    if scores["score"].isna().any():
        bad = scores.loc[scores["score"].isna(), "image_id"].iloc[0]
        raise IntradaError(
            f"scores: image {bad!r} has score NaN (a diverged model?); "
            "expected finite scores for every image"
        )
    num_easy = int(len(scores) * lam)
    if num_easy == 0 or (num_easy == len(scores) and lam < 1):
        raise IntradaError(
            f"lambda = {lam} leaves a split empty for {len(scores)} images "
            f"(easy = int(N * lambda) = {num_easy}); expected both non-empty"
        )
    ranked = scores.sort_values(["score", "image_id"], kind="stable").reset_index(drop=True)
    ranked["rank"] = np.arange(len(ranked), dtype=np.int64)
    ranked["split"] = np.where(ranked["rank"] < num_easy, "easy", "hard")
    easy = ranked.iloc[:num_easy].reset_index(drop=True)
    hard = ranked.iloc[num_easy:].reset_index(drop=True)
    return easy, hard
